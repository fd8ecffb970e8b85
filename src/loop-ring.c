/* SPDX-License-Identifier: MIT */
/*
 * The loop's rings: per runner, a request in flight for every watched uffd
 * (an io_uring read, or a poll request plus read(2) where io_uring would
 * need a worker thread), an eventfd read for stops and watch-set changes,
 * and the wait that spins (spin_us), then sleeps.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "loop-internal.h"

#define TAG_EFD    1ull		/* user_data of the eventfd read */
#define TAG_CANCEL 2ull		/* user_data of cancel requests */
#define BACKOFF_MAX_US 2000
#define REAP_WAKE_US 1000000ll	/* with fork children watched: wake this often */

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

bool loop__nowait_reads(void)
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

/* io_uring_setup failures that mean "not allowed or not available here". */
static bool refused(int err)
{
	return err == -EPERM || err == -EACCES || err == -ENOMEM || err == -ENOSYS;
}

/*
 * COOP_TASKRUN: a completion's task work (a uffd read finishing) waits for
 * the thread's next kernel entry instead of an IPI into a running thread;
 * a sleeping thread is still woken. On a virtual machine that IPI costs
 * tens of microseconds per fault. TASKRUN_FLAG lets the spin loop see
 * pending work in the ring's flags without a system call. Linux 5.19+.
 */
static int ring_init(struct io_uring *ring, unsigned depth)
{
	int err = io_uring_queue_init(depth, ring, IORING_SETUP_COOP_TASKRUN |
						   IORING_SETUP_TASKRUN_FLAG);

	return err == -EINVAL ? io_uring_queue_init(depth, ring, 0) : err;
}

int loop__runner_new(struct uffd_loop *l, struct loop_runner **out)
{
	struct loop_runner *rn = calloc(1, sizeof(*rn)), *head;
	int err;

	if (!rn)
		return uffd__err(-ENOMEM, "uffd loop: out of memory");
	rn->l = l;
	rn->gen = ~0u;
	rn->reader = (struct uffd__gate_reader){ loop__fork_reader_start, loop__fork_reader_stop, rn };
	rn->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (rn->efd < 0) {
		err = -errno;
		free(rn);
		return uffd__err(err, "uffd loop: eventfd failed: %s (%s)", strerror(-err), uffd__errname(err));
	}
	if ((err = loop__dispatch_init(rn))) {
		close(rn->efd);
		free(rn);
		return uffd__err(err, "uffd loop: out of memory");
	}
	err = l->plain ? 0 : ring_init(&rn->ring, l->o.queue_depth);
	if (err && !l->caller && refused(err)) {
		/* The loop's first ring: the whole loop does without io_uring. */
		l->plain = l->poll_mode = true;
		uffd__err(err, "uffd_loop_new: io_uring_setup with %u entries failed: %s (%s); io_uring "
			  "may be disabled (sysctl kernel.io_uring_disabled, seccomp) or RLIMIT_MEMLOCK "
			  "too low; the loop falls back to poll(2) and read(2), which works but costs "
			  "more system calls per fault", l->o.queue_depth, strerror(-err),
			  uffd__errname(err));
		err = 0;
	} else if (err) {
		loop__dispatch_free(rn);
		close(rn->efd);
		free(rn);
		return uffd__err(err, "uffd loop: io_uring_setup with %u entries failed: %s (%s); %s",
				 l->o.queue_depth, strerror(-err), uffd__errname(err),
				 err == -EMFILE || err == -ENFILE
				 ? "too many open files: close descriptors or raise RLIMIT_NOFILE"
				 : "io_uring may be disabled (sysctl kernel.io_uring_disabled) or "
				   "RLIMIT_MEMLOCK too low");
	}
	/* poll(2) fallback: entries for every possible watch and owner, never reallocated. */
	if (l->plain && (!(rn->pfd = calloc(2 * LOOP_MAX_WATCHES + 1, sizeof(*rn->pfd))) ||
			 !(rn->pfd_tag = calloc(2 * LOOP_MAX_WATCHES + 1, sizeof(*rn->pfd_tag))))) {
		free(rn->pfd);
		loop__dispatch_free(rn);
		close(rn->efd);
		free(rn);
		return uffd__err(-ENOMEM, "uffd loop: out of memory");
	}
	pthread_mutex_init(&rn->drive, NULL);
	/* Push-only: uffd_loop_stop() walks the list from signal handlers. */
	head = atomic_load(&l->runners);
	do
		atomic_store(&rn->next, head);
	while (!atomic_compare_exchange_weak(&l->runners, &head, rn));
	*out = rn;
	return 0;
}

void loop__slots_free(struct loop_slot *s)
{
	while (s) {
		struct loop_slot *next = s->next;

		loop__close_forks(s->buf, s->kept);
		free(s->buf);
		free(s);
		s = next;
	}
}

void loop__runner_free(struct loop_runner *rn)
{
	uffd__gate_want(&rn->wants_gate, false);
	if (!rn->l->plain)
		io_uring_queue_exit(&rn->ring);
	close(rn->efd);
	loop__slots_free(rn->slots);
	loop__slots_free(rn->incoming);
	loop__dispatch_free(rn);
	free(rn->pfd);
	free(rn->pfd_tag);
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

bool loop__has_slot(const struct loop_runner *rn, const struct loop_watch *w)
{
	for (struct loop_slot *s = rn->slots; s; s = s->next)
		if (s->w == w)
			return true;
	return false;
}

void loop__slot_bury(struct uffd_loop *l, struct loop_slot *s)
{
	loop__close_forks(s->buf, s->kept);	/* its watch left: never handled */
	atomic_fetch_sub(&s->w->pending, (unsigned)s->kept);
	s->kept = 0;
	if (!--s->w->holders)
		pthread_cond_broadcast(&l->cond);
	s->next = l->dead_slots;
	l->dead_slots = s;
	atomic_fetch_add(&l->garbage, 1);
}

/* With l->lock held: unlinks s and leaves it to loop__collect(). */
static void slot_release_locked(struct loop_runner *rn, struct loop_slot *s)
{
	struct loop_slot **p = &rn->slots;

	while (*p != s)
		p = &(*p)->next;
	*p = s->next;
	loop__slot_bury(rn->l, s);
}

static void slot_release(struct loop_runner *rn, struct loop_slot *s)
{
	pthread_mutex_lock(&rn->l->lock);
	slot_release_locked(rn, s);
	pthread_mutex_unlock(&rn->l->lock);
}

/* Whether s may get a request now (not paused after EMFILE). */
static bool slot_ready(const struct loop_slot *s, long long now)
{
	return !s->pause_until || now >= s->pause_until;
}

#define OWNER_TAG 1ull	/* slot | OWNER_TAG: the poll of the watch's owner_fd */

static bool has_owner(const struct loop_slot *s)
{
	return s->w->wo.flags & UFFD_WATCH_OWNER;
}

/* No request of s in flight: it may be let go of. */
static bool slot_idle(const struct loop_slot *s)
{
	return !s->busy && !s->owner_busy;
}

static bool prep_cancel(struct loop_runner *rn, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(rn);

	if (!sqe)
		return false;
	io_uring_prep_cancel64(sqe, tag, 0);
	io_uring_sqe_set_data64(sqe, TAG_CANCEL);
	return true;
}

/* Cancels what s has in flight; false when no entry was free. */
static bool slot_cancel(struct loop_runner *rn, struct loop_slot *s)
{
	if (s->busy && !s->cancelled) {
		if (!prep_cancel(rn, (uint64_t)(uintptr_t)s))
			return false;
		s->cancelled = true;
	}
	if (s->owner_busy && !s->owner_cancelled) {
		if (!prep_cancel(rn, (uint64_t)(uintptr_t)s | OWNER_TAG))
			return false;
		s->owner_cancelled = true;
	}
	return true;
}

/*
 * An io_uring read of s armed before its handle became gated (a region
 * with a given_back hook joined the loop): cancelled, and armed again as
 * a poll once it completes. False until then, so that the API call that
 * gated the handle (waiting for this runner to publish) waits for it.
 */
static bool slot_regate(struct loop_runner *rn, struct loop_slot *s)
{
	if (!s->cancelled && prep_cancel(rn, (uint64_t)(uintptr_t)s))
		s->cancelled = true;
	return false;
}

/* A read (or poll) for s, and a poll of its owner_fd; false when no entry was free. */
static bool slot_arm(struct loop_runner *rn, struct loop_slot *s, long long now)
{
	struct io_uring_sqe *sqe;

	if (has_owner(s) && !s->owner_busy && !atomic_load(&s->w->owner_fired)) {
		if (!(sqe = get_sqe(rn)))
			return false;
		io_uring_prep_poll_add(sqe, s->w->wo.owner_fd, POLLIN);
		io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)s | OWNER_TAG);
		s->owner_busy = true;
	}
	if (s->busy && !s->polled && uffd__rgate_used(s->w->u))
		return slot_regate(rn, s);
	if (s->busy || s->kept || !slot_ready(s, now))
		return true;
	if (!(sqe = get_sqe(rn)))
		return false;
	/* A gated handle is read by read(2) after a poll, in a step of its gate. */
	s->polled = rn->l->poll_mode || uffd__rgate_used(s->w->u);
	if (s->polled)
		io_uring_prep_poll_add(sqe, s->w->u->fd, POLLIN);
	else
		io_uring_prep_read(sqe, s->w->u->fd, s->buf, rn->l->o.batch * sizeof(struct uffd_msg), 0);
	io_uring_sqe_set_data(sqe, s);
	s->busy = true;
	s->pause_until = 0;
	return true;
}

/* The owner_fd of s is readable: its owner is gone. One runner claims it. */
static void owner_fired(struct loop_runner *rn, struct loop_slot *s, int res)
{
	if (res > 0 && !s->dying && !atomic_exchange(&s->w->owner_fired, true))
		rn->owner_pending = true;
}

/* A userfaultfd never reads 0 bytes or a part of a message: not a uffd (any more). */
static bool whole_msgs(ssize_t n)
{
	return n > 0 && n % sizeof(struct uffd_msg) == 0;
}

/*
 * read(2) after a poll said s's handle is readable. On a gated handle the
 * read and the early step of what it brought (the given_back hooks) are
 * one step of the resolve gate, which no install overlaps; *early says
 * the step ran. Bytes, 0 when another runner took the messages, -errno.
 */
static ssize_t slot_read(struct loop_runner *rn, struct loop_slot *s, bool *early)
{
	struct uffd *u = s->w->u;
	bool gated = uffd__rgate_used(u);
	ssize_t n;
	int err;

	if (gated)
		uffd__rgate_read_begin(u);
	n = read(u->fd, s->buf, rn->l->o.batch * sizeof(struct uffd_msg));
	err = n < 0 ? errno : 0;
	if (gated && whole_msgs(n)) {
		loop__read_early(rn, s->w, s->buf, (size_t)n / sizeof(struct uffd_msg));
		*early = true;
	}
	if (gated)
		uffd__rgate_read_end(u);
	if (err == EAGAIN || err == EINTR)
		return 0;	/* another runner took them */
	return err ? -err : whole_msgs(n) ? n : -EIO;
}

/* Bytes of messages a completed request brought, or -errno for a broken uffd. */
static ssize_t slot_bytes(struct loop_runner *rn, struct loop_slot *s, int res, bool *early)
{
	if (res == -ECANCELED || res == -EAGAIN || res == -EINTR)
		return 0;
	if (res < 0)
		return res;
	if (rn->l->plain || s->polled)
		return res & (POLLERR | POLLNVAL) ? -EBADF : slot_read(rn, s, early);
	return whole_msgs(res) ? res : -EIO;
}

/*
 * A FORK message could not be read: no descriptor for the child's uffd
 * (EMFILE, ENFILE). The kernel keeps the message; the parent's watch stays,
 * exited children are dropped, and the read is tried again after a pause.
 */
static void slot_pause(struct loop_runner *rn, struct loop_slot *s, int err)
{
	s->pause_us = s->pause_us ? s->pause_us * 2 : 1000;
	if (s->pause_us > 100000)
		s->pause_us = 100000;
	s->pause_until = loop__now_us() + s->pause_us;
	rn->want_reap = true;
	/* Every runner looks at its queued FORKs: a dead child's fd is the one to free. */
	atomic_store(&rn->l->fd_short_until, s->pause_until + 1000000);
	loop__wake_runners(rn->l);
	loop__fail(rn, err, "uffd loop: reading userfaultfd %d failed: %s; a fork child's userfaultfd "
		   "needs a descriptor: the loop drops exited children and tries again in %u ms; "
		   "raise RLIMIT_NOFILE or close descriptors", s->w->u->fd, uffd__errname(err),
		   s->pause_us / 1000);
}

static void slot_done(struct loop_runner *rn, struct loop_slot *s, int res)
{
	bool early = false;
	ssize_t n = slot_bytes(rn, s, res, &early);

	s->busy = false;
	s->cancelled = false;
	if (n > 0) {
		s->pause_us = 0;
		atomic_fetch_add_explicit(&rn->c.reads, 1, memory_order_relaxed);
		if (!early)
			loop__read_early(rn, s->w, s->buf, (size_t)n / sizeof(struct uffd_msg));
		if (!loop__handle_msgs(rn, s->w, s->buf, (size_t)n / sizeof(struct uffd_msg))) {
			s->kept = (size_t)n / sizeof(struct uffd_msg);	/* no read until handled */
			atomic_fetch_add(&s->w->pending, (unsigned)s->kept);
		}
	} else if (n == -EMFILE || n == -ENFILE) {
		slot_pause(rn, s, (int)n);
	} else if (n < 0) {
		loop__fail(rn, (int)n, "uffd loop: reading userfaultfd %d failed: %s; "
			   "the loop stops watching it%s", s->w->u->fd, uffd__errname((int)n),
			   n == -EBADF || n == -EIO ? " (closed or replaced while watched? call "
			   "uffd_loop_remove() before uffd_close())" : "");
		pthread_mutex_lock(&rn->l->lock);
		if (!s->w->broken) {	/* the other runners let go of it too */
			s->w->broken = true;
			atomic_fetch_add(&rn->l->gen, 1);
		}
		pthread_mutex_unlock(&rn->l->lock);
		s->dying = true;
	}
	if (s->dying && slot_idle(s))
		slot_release(rn, s);
}

static void owner_done(struct loop_runner *rn, struct loop_slot *s, int res)
{
	s->owner_busy = false;
	s->owner_cancelled = false;
	owner_fired(rn, s, res);
	if (s->dying && slot_idle(s))
		slot_release(rn, s);
}

/* Brings the slots in line with l->watches: links new ones, lets go of gone ones. */
static void runner_sync(struct loop_runner *rn)
{
	struct uffd_loop *l = rn->l;
	struct loop_slot *s, *next;

	/* Slots come with a gen bump (a new runner starts at ~0): gen alone says when to look. */
	if (atomic_load(&l->gen) == rn->gen)
		return;
	pthread_mutex_lock(&l->lock);
	rn->gen = atomic_load(&l->gen);
	for (s = rn->incoming; s; s = next) {
		next = s->next;
		s->next = rn->slots;
		rn->slots = s;
	}
	rn->incoming = NULL;
	for (s = rn->slots; s; s = next) {
		next = s->next;
		if (!(s->w->removed || s->w->broken) || s->dying)
			continue;
		loop__forget_watch(rn, s->w);
		s->dying = true;
		if (slot_idle(s))
			slot_release_locked(rn, s);
	}
	pthread_mutex_unlock(&l->lock);
}

/*
 * Requests for idle slots, cancels for dying ones (for all busy ones when
 * draining), the eventfd read; false when an entry was missing.
 */
static bool runner_arm(struct loop_runner *rn, bool draining)
{
	long long now = loop__now_us();
	bool all = true;

	for (struct loop_slot *s = rn->slots; s; s = s->next)
		all &= s->dying || draining ? slot_cancel(rn, s) : slot_arm(rn, s, now);
	if (!rn->efd_busy) {
		struct io_uring_sqe *sqe = get_sqe(rn);

		if (sqe) {
			io_uring_prep_read(sqe, rn->efd, &rn->efd_buf, sizeof(rn->efd_buf), 0);
			io_uring_sqe_set_data64(sqe, TAG_EFD);
			rn->efd_busy = true;
		} else {
			all = false;
		}
	}
	return all;
}

/* The reads of rn->gen are in the kernel: API calls waiting for that may return. */
static void publish(struct loop_runner *rn)
{
	if (atomic_load(&rn->armed_gen) != rn->gen)
		atomic_store(&rn->armed_gen, rn->gen);
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
		else if (tag & OWNER_TAG)
			owner_done(rn, (struct loop_slot *)(uintptr_t)(tag & ~OWNER_TAG), cqe->res);
		else if (tag != TAG_CANCEL)
			slot_done(rn, (struct loop_slot *)(uintptr_t)tag, cqe->res);
	}
	io_uring_cq_advance(&rn->ring, seen);
}

long long loop__now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000ll + t.tv_nsec / 1000;
}

/* Microseconds to sleep: timeout_ms, shortened while work waits for a retry or a pause. */
static long long wait_budget_us(struct loop_runner *rn, int timeout_ms)
{
	long long wait_us = timeout_ms < 0 ? -1 : timeout_ms * 1000ll, now = loop__now_us();
	long long cap = -1;

	if (rn->retry.n || rn->refault.n || rn->gated.n || rn->nerrq || loop__has_kept(rn)) {
		/* -EAGAIN can outlive its event, a fork can take a while: back off briefly */
		rn->backoff_us = rn->backoff_us ? rn->backoff_us * 2 : 50;
		if (rn->backoff_us > BACKOFF_MAX_US)
			rn->backoff_us = BACKOFF_MAX_US;
		cap = rn->backoff_us;
	}
	for (struct loop_slot *s = rn->slots; s; s = s->next)
		if (!s->busy && !s->dying && s->pause_until)
			cap = cap < 0 || s->pause_until - now < cap ? s->pause_until - now : cap;
	if (atomic_load(&rn->l->nowned) && (cap < 0 || cap > REAP_WAKE_US))
		cap = REAP_WAKE_US;	/* look for exited children now and then */
	if (cap >= 0 && (wait_us < 0 || wait_us > cap))
		wait_us = cap < 0 ? 0 : cap;
	return wait_us;
}

/* Submits, then spins (spin_us) and sleeps up to timeout_ms; 0 when a completion waits. */
static int runner_wait(struct loop_runner *rn, int timeout_ms)
{
	struct io_uring *ring = &rn->ring;
	long long wait_us = wait_budget_us(rn, timeout_ms);
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts;
	int err;

	if (io_uring_cq_ready(ring) || !wait_us || rn->l->o.spin_us) {
		err = io_uring_submit(ring);
		if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY)
			return err;
		if (io_uring_cq_ready(ring))
			return 0;
	}
	if (rn->l->o.spin_us && wait_us) {
		long long end = loop__now_us() + rn->l->o.spin_us;

		/*
		 * Completions may wait as task work: entering the kernel
		 * without blocking runs it, only when the ring says some is
		 * pending (or cannot say: a ring without TASKRUN_FLAG).
		 */
		while (loop__now_us() < end) {
			if (!io_uring_peek_cqe(ring, &cqe))
				return 0;
			if (!(ring->flags & IORING_SETUP_TASKRUN_FLAG) ||
			    (IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN))
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

/* ---- without io_uring: poll(2) on the eventfd and the uffds, then read(2) ---- */

/* Fills rn->pfd (allocated for every possible watch and owner); returns the count. */
static size_t plain_fill(struct loop_runner *rn)
{
	long long now = loop__now_us();
	size_t n = 1;

	rn->pfd[0] = (struct pollfd){ .fd = rn->efd, .events = POLLIN };
	for (struct loop_slot *s = rn->slots; s; s = s->next) {
		/* A negative fd is skipped by poll(2): a paused slot, or one keeping messages. */
		rn->pfd[n] = (struct pollfd){ .fd = slot_ready(s, now) && !s->kept ? s->w->u->fd : -1,
					      .events = POLLIN };
		rn->pfd_tag[n++] = (uintptr_t)s;
		if (has_owner(s) && !atomic_load(&s->w->owner_fired)) {
			rn->pfd[n] = (struct pollfd){ .fd = s->w->wo.owner_fd, .events = POLLIN };
			rn->pfd_tag[n++] = (uintptr_t)s | OWNER_TAG;
		}
	}
	return n;
}

static int plain_wait(struct loop_runner *rn, int timeout_ms)
{
	long long wait_us = wait_budget_us(rn, timeout_ms);
	size_t n = plain_fill(rn);
	int ready;

	publish(rn);
	ready = poll(rn->pfd, n, wait_us < 0 ? -1 : (int)((wait_us + 999) / 1000));
	if (ready < 0)
		return errno == EINTR ? 0 : -errno;
	if (!ready)
		return 0;
	if (rn->pfd[0].revents && read(rn->efd, &rn->efd_buf, sizeof(rn->efd_buf)) < 0) {
		/* EAGAIN: another runner emptied it */
	}
	/* An owner entry follows its slot's: handle it first, slot_done() may release the slot. */
	for (size_t i = n; --i > 0;) {
		struct loop_slot *s = (struct loop_slot *)(rn->pfd_tag[i] & ~(uintptr_t)OWNER_TAG);

		if (!rn->pfd[i].revents)
			continue;
		if (rn->pfd_tag[i] & OWNER_TAG)
			owner_fired(rn, s, rn->pfd[i].revents);
		else
			slot_done(rn, s, rn->pfd[i].revents);
	}
	return 0;
}

/*
 * Exited children first, with the gate shut too: a fork that waits for a
 * descriptor keeps it shut, and only their closing frees one. Then, inside
 * a gate section: error reports, owners that exited, memory let go of.
 */
static void housekeeping(struct loop_runner *rn)
{
	struct uffd_loop *l = rn->l;

	long long short_until = atomic_load(&l->fd_short_until);

	if (short_until && loop__now_us() < short_until)
		loop__drop_dead_forks(rn);
	if (!rn->nerrq && !rn->want_reap && !rn->owner_pending && !atomic_load(&l->nowned) &&
	    !atomic_load(&l->garbage))
		return;
	loop__reap(rn, rn->want_reap);
	rn->want_reap = false;
	if (atomic_load(&l->garbage))
		loop__close_dead(l);
	if (!uffd__gate_enter())
		return;
	if (rn->owner_pending) {
		rn->owner_pending = false;
		loop__owner_exits(rn);
	}
	loop__flush_errors(rn);
	if (atomic_load(&l->garbage) && !pthread_mutex_trylock(&l->api)) {
		loop__collect(l);
		pthread_mutex_unlock(&l->api);
	}
	uffd__gate_leave();
}

/* After a wait: queued work, resolutions, retries, housekeeping. */
static void step_finish(struct loop_runner *rn)
{
	loop__run_queued(rn);
	loop__resolve(rn);
	loop__retry(rn);
	housekeeping(rn);
	if (!rn->retry.n && !rn->refault.n && !rn->gated.n && !loop__has_kept(rn))
		rn->backoff_us = 0;
	atomic_fetch_add(&rn->passes, 1);	/* what this wake brought is handled */
}

/* One wake: wait, handle what came, resolve, retry. 0 or a fatal -errno. */
int loop__step(struct loop_runner *rn, int timeout_ms)
{
	int err;

	runner_sync(rn);
	if (rn->l->plain) {
		err = plain_wait(rn, timeout_ms);
		if (err)
			return uffd__err(err, "uffd loop: poll failed: %s", uffd__errname(err));
		step_finish(rn);
		return 0;
	}
	if (runner_arm(rn, false) && atomic_load(&rn->armed_gen) != rn->gen) {
		/* A new watch set: its reads go in now, then API calls may return. */
		err = io_uring_submit(&rn->ring);
		if (err >= 0)
			publish(rn);
	}
	err = runner_wait(rn, timeout_ms);
	if (err && err != -ETIME && err != -EINTR)
		return uffd__err(err, "uffd loop: waiting on the io_uring failed: %s", uffd__errname(err));
	runner_reap(rn);
	step_finish(rn);
	return 0;
}

/* Finishes queued work and cancels every request; the slots stay for a later drive. */
void loop__drain(struct loop_runner *rn)
{
	for (int i = 0; (rn->retry.n || rn->refault.n || rn->gated.n || loop__has_kept(rn)) && i < 1000; i++)
		if (loop__step(rn, 10))
			break;
	for (int i = 0; !rn->l->plain && i < 1000; i++) {	/* bounded if the ring fails */
		bool busy = false;

		for (struct loop_slot *s = rn->slots; s; s = s->next)
			busy |= !slot_idle(s);
		if (!busy)
			break;
		runner_arm(rn, true);
		if (runner_wait(rn, 100) == 0)
			runner_reap(rn);
		loop__resolve(rn);
	}
	rn->gen = ~0u;		/* resync when driven again */
}
