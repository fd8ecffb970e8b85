/* SPDX-License-Identifier: MIT */
/*
 * The io_uring event loop: the loop object, its watches, and its runners.
 *
 * A runner is one ring driven by one thread (the caller of uffd_loop_run*()
 * or a thread of uffd_loop_start()). It keeps a request in flight per
 * watched uffd -- a read into a buffer of `batch` messages, or a poll
 * request followed by read(2) where io_uring cannot read a uffd without a
 * worker thread -- and a read of its eventfd, written by uffd_loop_stop()
 * and by watch-set changes. Runners read the same uffds; the kernel gives
 * each message to one reader. Messages go to loop-dispatch.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "loop-internal.h"

#define TAG_EFD    1ull		/* user_data of the eventfd read */
#define TAG_CANCEL 2ull		/* user_data of cancel requests */
#define DEFAULT_DEPTH 64
#define DEFAULT_BATCH 64
#define MAX_DEPTH 4096
#define MAX_BATCH 4096
#define MAX_THREADS 64
#define MAX_SPIN_US 1000000
#define BACKOFF_MAX_US 2000
#define ZERO_LEN (1ul << 30)	/* zeroed source for hugetlb MISSING faults */
#define LOOP_FLAGS (UFFD_LOOP_POISON_ON_ERROR | UFFD_LOOP_FORCE_POLL)

/* The runner whose handlers this thread is running, to refuse re-entry. */
static __thread struct loop_runner *tl_runner;

/* ---- can io_uring read a uffd without a worker thread? ---- */

static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	if (uname(&u) || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma > major || (ma == major && mi >= minor);
}

/* An io-wq worker created for this thread ("iou-wrk-<tid>")? */
static bool have_worker(void)
{
	char want[32], path[300], comm[32];
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	bool found = false;

	if (!d)
		return false;
	snprintf(want, sizeof(want), "iou-wrk-%d", gettid());
	while (!found && (e = readdir(d))) {
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		f = fopen(path, "re");
		if (f && fgets(comm, sizeof(comm), f))
			found = strncmp(comm, want, strlen(want)) == 0;
		if (f)
			fclose(f);
	}
	closedir(d);
	return found;
}

/*
 * Linux 6.10 made uffd reads non-blocking for io_uring (read_iter and
 * FMODE_NOWAIT). Before that a read either completes at once with -EAGAIN
 * or sits in an io-wq worker. Probe: a read on an idle throwaway uffd must
 * stay pending without a worker; uname is the fallback.
 */
static bool probe_nowait(void)
{
	static struct uffd_msg sink;	/* outlives the ring's teardown */
	struct uffd_opts o = { .size = sizeof(o) };
	struct __kernel_timespec ts = { .tv_nsec = 2000000 };
	struct io_uring_cqe *cqe;
	struct io_uring ring;
	struct uffd *u;
	bool ok;

	if (uffd_open(&u, &o))
		return kernel_at_least(6, 10);
	if (io_uring_queue_init(2, &ring, 0)) {
		uffd_close(u);
		return kernel_at_least(6, 10);
	}
	io_uring_prep_read(io_uring_get_sqe(&ring), u->fd, &sink, sizeof(sink), 0);
	ok = io_uring_submit(&ring) == 1 &&
	     io_uring_wait_cqe_timeout(&ring, &cqe, &ts) == -ETIME && !have_worker();
	io_uring_queue_exit(&ring);
	uffd_close(u);
	return ok;
}

static bool nowait_reads(void)
{
	static atomic_int state;	/* 0: not probed, 1: yes, 2: no */
	int s = atomic_load(&state);

	if (!s) {
		s = probe_nowait() ? 1 : 2;
		atomic_store(&state, s);
	}
	return s == 1;
}

/* ---- runners ---- */

static void wake(struct loop_runner *rn)
{
	uint64_t one = 1;

	if (write(rn->efd, &one, sizeof(one)) < 0) {
		/* the counter is full: the runner is awake anyway */
	}
}

void loop__wake_runners(struct uffd_loop *l)
{
	for (struct loop_runner *rn = atomic_load(&l->runners); rn; rn = atomic_load(&rn->next))
		wake(rn);
}

static int runner_new(struct uffd_loop *l, struct loop_runner **out)
{
	struct loop_runner *rn = calloc(1, sizeof(*rn));
	int err;

	if (!rn)
		return uffd__err(-ENOMEM, "uffd loop: out of memory");
	rn->l = l;
	rn->gen = ~0u;
	rn->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (rn->efd < 0) {
		err = -errno;
		free(rn);
		return uffd__err(err, "uffd loop: eventfd failed: %s", strerror(-err));
	}
	err = io_uring_queue_init(l->o.queue_depth, &rn->ring, 0);
	if (err) {
		close(rn->efd);
		free(rn);
		return uffd__err(err, "uffd loop: io_uring_setup with %u entries failed: %s; "
				 "io_uring may be disabled (sysctl kernel.io_uring_disabled) or "
				 "RLIMIT_MEMLOCK too low", l->o.queue_depth, strerror(-err));
	}
	pthread_mutex_init(&rn->drive, NULL);
	/* Push-only: uffd_loop_stop() walks the list from signal handlers. */
	rn->next = atomic_load(&l->runners);
	while (!atomic_compare_exchange_weak(&l->runners, (struct loop_runner **)&rn->next, rn))
		;
	*out = rn;
	return 0;
}

static void runner_free(struct loop_runner *rn)
{
	io_uring_queue_exit(&rn->ring);
	close(rn->efd);
	loop__vec_free(&rn->res);
	loop__vec_free(&rn->retry);
	pthread_mutex_destroy(&rn->drive);
	free(rn);
}

static struct io_uring_sqe *get_sqe(struct loop_runner *rn)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&rn->ring);

	if (!sqe) {		/* full: make room; the caller retries next wake if still none */
		io_uring_submit(&rn->ring);
		sqe = io_uring_get_sqe(&rn->ring);
	}
	return sqe;
}

/* ---- slots: a watch's request in a runner's ring ---- */

static bool has_slot(const struct loop_runner *rn, const struct loop_watch *w)
{
	for (struct loop_slot *s = rn->slots; s; s = s->next)
		if (s->w == w)
			return true;
	return false;
}

/* With l->lock held. */
static void slot_release_locked(struct loop_runner *rn, struct loop_slot *s)
{
	struct loop_slot **p = &rn->slots;

	while (*p != s)
		p = &(*p)->next;
	*p = s->next;
	if (!--s->w->holders && s->w->removed)
		pthread_cond_broadcast(&rn->l->cond);
	free(s->buf);
	free(s);
}

static void slot_release(struct loop_runner *rn, struct loop_slot *s)
{
	pthread_mutex_lock(&rn->l->lock);
	slot_release_locked(rn, s);
	pthread_mutex_unlock(&rn->l->lock);
}

static void slot_new_locked(struct loop_runner *rn, struct loop_watch *w)
{
	struct loop_slot *s = calloc(1, sizeof(*s));

	if (s)
		s->buf = malloc(rn->l->o.batch * sizeof(struct uffd_msg));
	if (!s || !s->buf) {
		free(s);
		rn->gen = ~0u;	/* out of memory: try again next wake */
		return;
	}
	s->w = w;
	w->holders++;
	s->next = rn->slots;
	rn->slots = s;
}

static void slot_arm(struct loop_runner *rn, struct loop_slot *s)
{
	struct io_uring_sqe *sqe = get_sqe(rn);
	int fd = s->w->u->fd;

	if (!sqe)
		return;
	if (s->dying) {
		io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)s, 0);
		io_uring_sqe_set_data64(sqe, TAG_CANCEL);
		s->cancelled = true;
		return;
	}
	if (rn->l->poll_mode)
		io_uring_prep_poll_add(sqe, fd, POLLIN);
	else
		io_uring_prep_read(sqe, fd, s->buf, rn->l->o.batch * sizeof(struct uffd_msg), 0);
	io_uring_sqe_set_data(sqe, s);
	s->busy = true;
}

/* Bytes of messages a completed request brought, or -errno for a broken uffd. */
static ssize_t slot_bytes(struct loop_runner *rn, struct loop_slot *s, int res)
{
	ssize_t n;

	if (res == -ECANCELED || res == -EAGAIN || res == -EINTR)
		return 0;
	if (res < 0 || !rn->l->poll_mode)
		return res;
	if (res & (POLLERR | POLLNVAL))
		return -EBADF;
	n = read(s->w->u->fd, s->buf, rn->l->o.batch * sizeof(struct uffd_msg));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;	/* another runner took them */
	return n < 0 ? -errno : n;
}

static void slot_done(struct loop_runner *rn, struct loop_slot *s, int res)
{
	ssize_t n = slot_bytes(rn, s, res);

	s->busy = false;
	if (n > 0) {
		atomic_fetch_add_explicit(&rn->c.reads, 1, memory_order_relaxed);
		loop__handle_msgs(rn, s->w, s->buf, (size_t)n / sizeof(struct uffd_msg));
	} else if (n < 0) {
		loop__fail(rn, (int)n, "uffd loop: reading userfaultfd %d failed: %s (%s); "
			   "the loop stops watching it", s->w->u->fd, strerror((int)-n),
			   uffd__errname((int)n));
		pthread_mutex_lock(&rn->l->lock);
		s->w->broken = true;
		pthread_mutex_unlock(&rn->l->lock);
		s->dying = true;
	}
	if (s->dying)
		slot_release(rn, s);
}

/* Brings the slots in line with l->watches. */
static void runner_sync(struct loop_runner *rn)
{
	struct uffd_loop *l = rn->l;
	struct loop_slot *s, *next;

	if (atomic_load(&l->gen) == rn->gen)
		return;
	pthread_mutex_lock(&l->lock);
	rn->gen = atomic_load(&l->gen);
	for (s = rn->slots; s; s = next) {
		next = s->next;
		if (!s->w->removed || s->dying)
			continue;
		s->dying = true;
		if (!s->busy)
			slot_release_locked(rn, s);
	}
	for (struct loop_watch *w = l->watches; w; w = w->next)
		if (!w->broken && !has_slot(rn, w))
			slot_new_locked(rn, w);
	pthread_mutex_unlock(&l->lock);
}

/* Requests for idle slots, cancels for dying ones, the eventfd read. */
static void runner_arm(struct loop_runner *rn)
{
	for (struct loop_slot *s = rn->slots; s; s = s->next)
		if (s->dying ? s->busy && !s->cancelled : !s->busy)
			slot_arm(rn, s);
	if (!rn->efd_busy) {
		struct io_uring_sqe *sqe = get_sqe(rn);

		if (sqe) {
			io_uring_prep_read(sqe, rn->efd, &rn->efd_buf, sizeof(rn->efd_buf), 0);
			io_uring_sqe_set_data64(sqe, TAG_EFD);
			rn->efd_busy = true;
		}
	}
}

static void runner_reap(struct loop_runner *rn)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;

	io_uring_for_each_cqe(&rn->ring, head, cqe) {
		uint64_t tag = cqe->user_data;

		seen++;
		if (tag == TAG_EFD)
			rn->efd_busy = false;
		else if (tag != TAG_CANCEL)
			slot_done(rn, (struct loop_slot *)(uintptr_t)tag, cqe->res);
	}
	io_uring_cq_advance(&rn->ring, seen);
}

static long long now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000ll + t.tv_nsec / 1000;
}

/* Submits, then spins (spin_us) and sleeps up to timeout_ms; 0 when a completion waits. */
static int runner_wait(struct loop_runner *rn, int timeout_ms)
{
	struct io_uring *ring = &rn->ring;
	long long wait_us = timeout_ms < 0 ? -1 : timeout_ms * 1000ll;
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts;
	int err;

	if (rn->retry.n) {	/* -EAGAIN can outlive its event: back off briefly */
		rn->backoff_us = rn->backoff_us ? rn->backoff_us * 2 : 50;
		if (rn->backoff_us > BACKOFF_MAX_US)
			rn->backoff_us = BACKOFF_MAX_US;
		if (wait_us < 0 || wait_us > rn->backoff_us)
			wait_us = rn->backoff_us;
	}
	if (io_uring_cq_ready(ring) || !wait_us || rn->l->o.spin_us) {
		err = io_uring_submit(ring);
		if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY)
			return err;
		if (io_uring_cq_ready(ring))
			return 0;
	}
	if (rn->l->o.spin_us && wait_us) {
		long long end = now_us() + rn->l->o.spin_us;

		/*
		 * Completions may wait as task work: entering the kernel
		 * without blocking runs it.
		 */
		while (now_us() < end) {
			if (!io_uring_peek_cqe(ring, &cqe))
				return 0;
			io_uring_get_events(ring);
		}
	}
	if (!wait_us)
		return -ETIME;
	/* One syscall submits and sleeps. */
	if (wait_us < 0) {
		err = io_uring_submit_and_wait(ring, 1);
	} else {
		ts.tv_sec = wait_us / 1000000;
		ts.tv_nsec = (wait_us % 1000000) * 1000;
		err = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
	}
	return err < 0 ? err : 0;
}

/* One wake: wait, handle what came, resolve, retry. 0 or a fatal -errno. */
static int runner_step(struct loop_runner *rn, int timeout_ms)
{
	int err;

	runner_sync(rn);
	runner_arm(rn);
	err = runner_wait(rn, timeout_ms);
	if (err && err != -ETIME && err != -EINTR)
		return uffd__err(err, "uffd loop: waiting on the io_uring failed: %s", strerror(-err));
	runner_reap(rn);
	loop__resolve(rn);
	loop__retry(rn);
	if (!rn->retry.n)
		rn->backoff_us = 0;
	return 0;
}

/* Finishes queued work and lets go of every watch (the runner stops). */
static void runner_drain(struct loop_runner *rn)
{
	while (rn->retry.n && runner_step(rn, 10) == 0)
		;
	pthread_mutex_lock(&rn->l->lock);
	for (struct loop_slot *s = rn->slots, *next; s; s = next) {
		next = s->next;
		s->dying = true;
		if (!s->busy)
			slot_release_locked(rn, s);
	}
	rn->gen = ~0u;		/* resync when driven again */
	pthread_mutex_unlock(&rn->l->lock);
	for (int i = 0; rn->slots && i < 1000; i++) {	/* bounded if the ring fails */
		runner_arm(rn);
		if (runner_wait(rn, 100) == 0)
			runner_reap(rn);
		loop__resolve(rn);
	}
}

/* ---- the loop ---- */

static bool called_from_handler(const struct uffd_loop *l)
{
	return tl_runner && tl_runner->l == l;
}

static int check_opts(struct uffd_loop_opts *o)
{
	if (o->flags & ~LOOP_FLAGS)
		return uffd__err(-EINVAL, "uffd_loop_new: unknown flags 0x%x", o->flags & ~LOOP_FLAGS);
	if (o->queue_depth > MAX_DEPTH || o->batch > MAX_BATCH || o->spin_us > MAX_SPIN_US)
		return uffd__err(-EINVAL, "uffd_loop_new: queue_depth %u, batch %u or spin_us %u too large "
				 "(limits %u, %u, %u)", o->queue_depth, o->batch, o->spin_us,
				 MAX_DEPTH, MAX_BATCH, MAX_SPIN_US);
	if (!o->queue_depth)
		o->queue_depth = DEFAULT_DEPTH;
	if (!o->batch)
		o->batch = DEFAULT_BATCH;
	return 0;
}

static bool env_force_poll(void)
{
	const char *v = getenv("LIBUFFD_LOOP_FORCE_POLL");

	return v && strcmp(v, "1") == 0;
}

UFFD_EXPORT int uffd_loop_new(struct uffd_loop **out, const struct uffd_loop_opts *opts)
{
	struct uffd_loop *l;
	int err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_loop_new: out is NULL");
	*out = NULL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return uffd__err(-ENOMEM, "uffd_loop_new: out of memory");
	l->o.size = sizeof(l->o);
	if ((opts && (err = uffd__opts_copy(&l->o, sizeof(l->o), opts, opts->size, "uffd_loop_opts"))) ||
	    (err = check_opts(&l->o)))
		goto fail;
	l->poll_mode = (l->o.flags & UFFD_LOOP_FORCE_POLL) || env_force_poll() || !nowait_reads();
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	l->zero = mmap(NULL, ZERO_LEN, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	l->zero_len = l->zero == MAP_FAILED ? 0 : ZERO_LEN;
	if (l->zero == MAP_FAILED)
		l->zero = NULL;
	if ((err = runner_new(l, &l->caller))) {
		if (l->zero)
			munmap(l->zero, l->zero_len);
		goto fail;
	}
	*out = l;
	return 0;
fail:
	free(l);
	return err;
}

static struct loop_watch *find_watch(struct uffd_loop *l, const struct uffd *u)
{
	for (struct loop_watch *w = l->watches; w; w = w->next)
		if (w->u == u)
			return w;
	return NULL;
}

int loop__watch_add(struct uffd_loop *l, struct uffd *u,
		    const struct uffd_handlers *h, void *ctx, bool owned)
{
	struct loop_watch *w;
	int err = 0;

	pthread_mutex_lock(&l->lock);
	w = find_watch(l, u);
	if (w && h && atomic_load(&w->has_handlers)) {
		err = uffd__err(-EEXIST, "uffd_loop_add: userfaultfd %d is already watched by this loop", u->fd);
	} else if (!w && !(w = calloc(1, sizeof(*w)))) {
		err = uffd__err(-ENOMEM, "uffd_loop_add: out of memory");
	} else if (!w->u) {	/* new */
		w->u = u;
		w->owned = owned;
		w->next = l->watches;
		l->watches = w;
		atomic_fetch_add(&l->gen, 1);
	}
	if (!err && h) {	/* publish the handlers after they are written */
		w->h = *h;
		w->ctx = ctx;
		atomic_store_explicit(&w->has_handlers, true, memory_order_release);
	}
	pthread_mutex_unlock(&l->lock);
	if (!err)
		loop__wake_runners(l);
	return err;
}

static int check_uffd(const char *call, struct uffd_loop *l, const struct uffd *u)
{
	int fl;

	if (!l || !u)
		return uffd__err(-EINVAL, "%s: %s is NULL", call, l ? "the handle" : "the loop");
	fl = fcntl(u->fd, F_GETFL);
	if (fl < 0 || !(fl & O_NONBLOCK))
		return uffd__err(-EINVAL, "%s: userfaultfd %d is not open or not O_NONBLOCK; "
				 "the loop needs a non-blocking uffd (as uffd_open() makes)", call, u->fd);
	if ((l->o.flags & UFFD_LOOP_POISON_ON_ERROR) && !(u->features & UFFD_FEATURE_POISON))
		return uffd__err(-EOPNOTSUPP, "%s: the loop has UFFD_LOOP_POISON_ON_ERROR but userfaultfd %d "
				 "was opened without UFFD_FEATURE_POISON; open it with that feature", call, u->fd);
	return 0;
}

UFFD_EXPORT int uffd_loop_add(struct uffd_loop *l, struct uffd *u,
			      const struct uffd_handlers *h, void *ctx)
{
	static const struct uffd_handlers none;
	int err = check_uffd("uffd_loop_add", l, u);

	return err ? err : loop__watch_add(l, u, h ? h : &none, ctx, false);
}

static int regions_push(struct uffd_loop *l, struct uffd_region *r)
{
	if (l->nregions == l->regions_cap) {
		size_t cap = l->regions_cap ? l->regions_cap * 2 : 16;
		struct uffd_region **v = realloc(l->regions, cap * sizeof(*v));

		if (!v)
			return uffd__err(-ENOMEM, "uffd_loop_add_region: out of memory");
		l->regions = v;
		l->regions_cap = cap;
	}
	l->regions[l->nregions++] = r;
	return 0;
}

UFFD_EXPORT int uffd_loop_add_region(struct uffd_loop *l, struct uffd_region *r,
				     const struct uffd_handlers *h, void *ctx)
{
	static const struct uffd_handlers none;
	struct uffd_loop *cur;
	int err;

	if (!r)
		return uffd__err(-EINVAL, "uffd_loop_add_region: region is NULL");
	if ((err = check_uffd("uffd_loop_add_region", l, r->uffd)))
		return err;
	pthread_mutex_lock(&l->lock);
	cur = __atomic_load_n(&r->loop, __ATOMIC_ACQUIRE);
	if (cur)
		err = uffd__err(cur == l ? -EEXIST : -EBUSY, "uffd_loop_add_region: the region at %p is "
				"already added to %s loop", r->base, cur == l ? "this" : "another");
	else if (!(err = regions_push(l, r))) {
		r->loop_handlers = h ? *h : none;
		r->loop_ctx = ctx;
		__atomic_store_n(&r->loop, l, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&l->lock);
	if (!err && (err = loop__watch_add(l, r->uffd, NULL, NULL, false))) {
		uffd__loop_forget_region(r);
		return err;
	}
	return err;
}

void uffd__loop_forget_region(struct uffd_region *r)
{
	struct uffd_loop *l = r ? __atomic_load_n(&r->loop, __ATOMIC_ACQUIRE) : NULL;

	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	for (size_t i = 0; i < l->nregions; i++)
		if (l->regions[i] == r)
			l->regions[i] = l->regions[--l->nregions];
	__atomic_store_n(&r->loop, NULL, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&l->lock);
}

/* With l->lock: regions of u (all when u is NULL) leave the loop. */
static void regions_drop(struct uffd_loop *l, const struct uffd *u)
{
	size_t k = 0;

	for (size_t i = 0; i < l->nregions; i++) {
		struct uffd_region *r = l->regions[i];

		if (u && r->uffd != u)
			l->regions[k++] = r;
		else
			__atomic_store_n(&r->loop, NULL, __ATOMIC_RELEASE);
	}
	l->nregions = k;
}

/*
 * Waits until no runner holds w. Runners that a thread drives let go by
 * themselves; the caller's ring, when nobody drives it, is settled here.
 */
static void wait_released(struct uffd_loop *l, struct loop_watch *w)
{
	struct loop_runner *c = l->caller;

	pthread_mutex_lock(&l->lock);
	while (w->holders) {
		struct timespec t;

		pthread_mutex_unlock(&l->lock);
		if (!pthread_mutex_trylock(&c->drive)) {
			tl_runner = c;
			while (has_slot(c, w))
				runner_step(c, 10);
			tl_runner = NULL;
			pthread_mutex_unlock(&c->drive);
		}
		pthread_mutex_lock(&l->lock);
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_nsec += 10000000;
		if (t.tv_nsec >= 1000000000) {
			t.tv_sec++;
			t.tv_nsec -= 1000000000;
		}
		if (w->holders)
			pthread_cond_timedwait(&l->cond, &l->lock, &t);
	}
	pthread_mutex_unlock(&l->lock);
}

static void watch_free(struct loop_watch *w)
{
	if (w->owned)
		uffd_close(w->u);
	free(w);
}

UFFD_EXPORT int uffd_loop_remove(struct uffd_loop *l, struct uffd *u)
{
	struct loop_watch **p, *w;

	if (!l || !u)
		return uffd__err(-EINVAL, "uffd_loop_remove: %s is NULL", l ? "the handle" : "the loop");
	if (called_from_handler(l))
		return uffd__err(-EDEADLK, "uffd_loop_remove: called from a handler of the same loop; "
				 "remove the uffd from another thread");
	pthread_mutex_lock(&l->lock);
	for (p = &l->watches; *p && (*p)->u != u; p = &(*p)->next)
		;
	w = *p;
	if (w) {
		*p = w->next;
		w->removed = true;
		regions_drop(l, u);
		atomic_fetch_add(&l->gen, 1);
	}
	pthread_mutex_unlock(&l->lock);
	if (!w)
		return uffd__err(-ENOENT, "uffd_loop_remove: userfaultfd %d is not watched by this loop", u->fd);
	loop__wake_runners(l);
	wait_released(l, w);
	watch_free(w);
	return 0;
}

/* ---- driving ---- */

/* Takes the caller's ring for uffd_loop_run*(); -EBUSY/-EDEADLK when it cannot. */
static int drive_begin(struct uffd_loop *l, const char *call)
{
	if (!l)
		return uffd__err(-EINVAL, "%s: the loop is NULL", call);
	if (called_from_handler(l))
		return uffd__err(-EDEADLK, "%s: called from a handler of the same loop", call);
	if (atomic_load(&l->live_threads) || atomic_exchange(&l->driving, true))
		return uffd__err(-EBUSY, "%s: the loop is already driven by %s", call,
				 atomic_load(&l->live_threads) ? "its own threads (uffd_loop_start)"
							       : "another thread");
	pthread_mutex_lock(&l->caller->drive);
	tl_runner = l->caller;
	return 0;
}

static void drive_end(struct uffd_loop *l)
{
	tl_runner = NULL;
	pthread_mutex_unlock(&l->caller->drive);
	atomic_store(&l->driving, false);
}

UFFD_EXPORT int uffd_loop_run(struct uffd_loop *l)
{
	int err = drive_begin(l, "uffd_loop_run");
	struct loop_runner *rn;

	if (err)
		return err;
	rn = l->caller;
	while (!err && !atomic_exchange(&l->stop, 0)) {
		err = runner_step(rn, -1);
		if (!err && rn->fail) {
			err = rn->fail;		/* its sentence is this thread's last error */
			rn->fail = 0;
		}
	}
	drive_end(l);
	return err;
}

UFFD_EXPORT int uffd_loop_run_once(struct uffd_loop *l, int timeout_ms)
{
	struct loop_runner *rn;
	long long end;
	int err;

	if (l && timeout_ms < -1)
		return uffd__err(-EINVAL, "uffd_loop_run_once: timeout_ms %d (use -1 for no timeout)", timeout_ms);
	if ((err = drive_begin(l, "uffd_loop_run_once")))
		return err;
	rn = l->caller;
	rn->handled = 0;
	end = timeout_ms < 0 ? -1 : now_us() + timeout_ms * 1000ll;
	/* Wakes that bring no message (watch-set changes) do not end the wait. */
	while (!err && !rn->handled && !rn->fail && !atomic_exchange(&l->stop, 0)) {
		long long left = end < 0 ? -1 : end - now_us();

		err = runner_step(rn, left < 0 ? (end < 0 ? -1 : 0) : (int)((left + 999) / 1000));
		if (end >= 0 && now_us() >= end)
			break;
	}
	/* Retries of this wake are finished here, after the events they wait for. */
	while (!err && rn->retry.n && !atomic_load(&l->stop))
		err = runner_step(rn, 0);
	if (!err && rn->fail)
		err = rn->fail;
	rn->fail = 0;
	drive_end(l);
	return err ? err : (int)rn->handled;
}

static void *thread_main(void *arg)
{
	struct loop_runner *rn = arg;
	struct uffd_loop *l = rn->l;

	pthread_mutex_lock(&rn->drive);
	tl_runner = rn;
	while (!atomic_load(&l->stop)) {
		if (runner_step(rn, -1))
			break;	/* the ring failed: counted, nothing else to do */
		rn->fail = 0;	/* counted in stats.errors; no caller to return to */
	}
	runner_drain(rn);
	tl_runner = NULL;
	pthread_mutex_unlock(&rn->drive);
	if (atomic_fetch_sub(&l->live_threads, 1) == 1)
		atomic_store(&l->stop, 0);	/* the stop is consumed */
	return NULL;
}

static void join_threads(struct uffd_loop *l)
{
	for (unsigned i = 0; i < l->nthreads; i++)
		if (l->threads[i]->joinable) {
			pthread_join(l->threads[i]->thread, NULL);
			l->threads[i]->joinable = false;
		}
}

static int threads_alloc(struct uffd_loop *l, unsigned n)
{
	struct loop_runner **v;
	int err;

	if (n <= l->nthreads)
		return 0;
	v = realloc(l->threads, n * sizeof(*v));
	if (!v)
		return uffd__err(-ENOMEM, "uffd_loop_start: out of memory");
	l->threads = v;
	for (; l->nthreads < n; l->nthreads++)
		if ((err = runner_new(l, &l->threads[l->nthreads])))
			return err;
	return 0;
}

static int threads_spawn(struct uffd_loop *l, unsigned n)
{
	sigset_t all, old;
	int err = 0;

	/* Signals go to the application's threads; faults in handlers stay deadly. */
	sigfillset(&all);
	sigdelset(&all, SIGSEGV);
	sigdelset(&all, SIGBUS);
	sigdelset(&all, SIGFPE);
	sigdelset(&all, SIGILL);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (unsigned i = 0; i < n && !err; i++) {
		struct loop_runner *rn = l->threads[i];

		atomic_fetch_add(&l->live_threads, 1);
		err = -pthread_create(&rn->thread, NULL, thread_main, rn);
		if (err)
			atomic_fetch_sub(&l->live_threads, 1);
		rn->joinable = !err;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err ? uffd__err(err, "uffd_loop_start: pthread_create failed: %s", strerror(-err)) : 0;
}

static void stop_threads(struct uffd_loop *l)
{
	if (atomic_load(&l->live_threads)) {
		atomic_store(&l->stop, 1);
		loop__wake_runners(l);
	}
	join_threads(l);
}

UFFD_EXPORT int uffd_loop_start(struct uffd_loop *l, unsigned nthreads)
{
	int err;

	if (!l || !nthreads || nthreads > MAX_THREADS)
		return uffd__err(-EINVAL, "uffd_loop_start: %s", !l ? "the loop is NULL"
				 : "nthreads must be between 1 and 64");
	if ((err = drive_begin(l, "uffd_loop_start")))
		return err;
	/* The caller's ring must not keep reads that nobody would handle. */
	runner_drain(l->caller);
	drive_end(l);
	join_threads(l);	/* threads of an earlier start, already stopped */
	err = threads_alloc(l, nthreads);
	if (!err)
		err = threads_spawn(l, nthreads);
	if (err)
		stop_threads(l);
	return err;
}

UFFD_EXPORT int uffd_loop_stop(struct uffd_loop *l)
{
	if (!l)
		return uffd__err_const(-EINVAL, "uffd_loop_stop: the loop is NULL");
	atomic_store(&l->stop, 1);
	loop__wake_runners(l);
	return 0;
}

UFFD_EXPORT void uffd_loop_stats(const struct uffd_loop *l, struct uffd_loop_stats *s)
{
	if (!s)
		return;
	memset(s, 0, sizeof(*s));
	if (!l)
		return;
	for (struct loop_runner *rn = atomic_load(&((struct uffd_loop *)l)->runners); rn;
	     rn = atomic_load(&rn->next)) {
		s->faults_minor += atomic_load(&rn->c.minor);
		s->faults_wp += atomic_load(&rn->c.wp);
		s->faults_missing += atomic_load(&rn->c.missing);
		s->events += atomic_load(&rn->c.events);
		s->reads += atomic_load(&rn->c.reads);
		s->resolve_ioctls += atomic_load(&rn->c.ioctls);
		s->deferred += atomic_load(&rn->c.deferred);
		s->errors += atomic_load(&rn->c.errors);
	}
}

UFFD_EXPORT void uffd_loop_free(struct uffd_loop *l)
{
	struct loop_runner *rn, *next;
	struct loop_watch *w, *wn;

	if (!l)
		return;
	stop_threads(l);
	pthread_mutex_lock(&l->caller->drive);
	tl_runner = l->caller;
	runner_drain(l->caller);
	tl_runner = NULL;
	pthread_mutex_unlock(&l->caller->drive);
	pthread_mutex_lock(&l->lock);
	regions_drop(l, NULL);
	pthread_mutex_unlock(&l->lock);
	for (w = l->watches; w; w = wn) {
		wn = w->next;
		watch_free(w);
	}
	for (rn = atomic_load(&l->runners); rn; rn = next) {
		next = atomic_load(&rn->next);
		runner_free(rn);
	}
	if (l->zero)
		munmap(l->zero, l->zero_len);
	free(l->threads);
	free(l->regions);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->lock);
	free(l);
}
