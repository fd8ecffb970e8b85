/* SPDX-License-Identifier: MIT */
/*
 * The io_uring event loop: the loop object, its watches, and its threads.
 *
 * A runner is one ring driven by one thread (the caller of uffd_loop_run*()
 * or a thread of uffd_loop_start()). It keeps a request in flight per
 * watched uffd -- a read into a buffer of `batch` messages, or a poll
 * request followed by read(2) where io_uring cannot read a uffd without a
 * worker thread -- and a read of its eventfd, written by uffd_loop_stop()
 * and by watch-set changes. Runners read the same uffds; the kernel gives
 * each message to one reader. Rings are in loop-ring.c, messages go to
 * loop-dispatch.c.
 *
 * Watch-set changes are made here, by the thread that calls the API (or a
 * loop thread inside a fork-gate section, for fork children): it allocates
 * a slot per runner and hands them over under l->lock; runners only link
 * them in. Calls that change the set return once every driven runner has
 * its reads armed for the new set ("ready means ready").
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "loop-internal.h"

#define DEFAULT_DEPTH 64
#define DEFAULT_BATCH 64
#define MAX_DEPTH 4096
#define MAX_BATCH 4096
#define MAX_THREADS 64
#define MAX_SPIN_US 1000000
#define ZERO_LEN (1ul << 30)	/* zeroed source for hugetlb MISSING faults */
#define LOOP_FLAGS (UFFD_LOOP_POISON_ON_ERROR | UFFD_LOOP_FORCE_POLL)
#define REAP_EVERY_US 1000000ll	/* look for exited fork children */
#define PROBE_ADDR 0x1000000ul	/* above any mmap_min_addr; see child_exited() */

/* The runner whose handlers this thread is running, to refuse re-entry. */
static __thread struct loop_runner *tl_runner;

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
	if (!o->on_error && o->error_ctx)
		return uffd__err(-EINVAL, "uffd_loop_new: error_ctx is set but on_error is NULL");
	if (!o->queue_depth)
		o->queue_depth = DEFAULT_DEPTH;
	if (!o->batch)
		o->batch = DEFAULT_BATCH;
	return 0;
}

static bool env_is_1(const char *name)
{
	const char *v = getenv(name);

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
	uffd__gate_init();
	/* LIBUFFD_LOOP_NO_URING: the fallback without io_uring, on purpose (tests, valgrind). */
	l->plain = env_is_1("LIBUFFD_LOOP_NO_URING");
	l->poll_mode = l->plain || (l->o.flags & UFFD_LOOP_FORCE_POLL) ||
		       env_is_1("LIBUFFD_LOOP_FORCE_POLL") || !loop__nowait_reads();
	pthread_mutex_init(&l->api, NULL);
	pthread_mutex_init(&l->join, NULL);
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	l->zero = mmap(NULL, ZERO_LEN, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	l->zero_len = l->zero == MAP_FAILED ? 0 : ZERO_LEN;
	if (l->zero == MAP_FAILED)
		l->zero = NULL;
	if ((err = loop__runner_new(l, &l->caller))) {
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
UFFD_EXPORT_OWN(loop_new);

static struct loop_watch *find_watch(struct uffd_loop *l, const struct uffd *u)
{
	for (struct loop_watch *w = l->watches; w; w = w->next)
		if (w->u == u)
			return w;
	return NULL;
}

/*
 * Waits until every runner that a thread drives has armed its reads for
 * the current watch set. Not from a handler: its own runner arms after it
 * returns, and another runner may be in a handler waiting for this one.
 */
static void wait_ready(struct uffd_loop *l)
{
	unsigned target = atomic_load(&l->gen);

	if (tl_runner)
		return;

	for (struct loop_runner *rn = atomic_load(&l->runners); rn; rn = atomic_load(&rn->next)) {
		struct timespec nap = { .tv_nsec = 10000 };

		while (atomic_load(&rn->active) &&
		       (int)(atomic_load(&rn->armed_gen) - target) < 0) {
			nanosleep(&nap, NULL);
			if (nap.tv_nsec < 1000000)
				nap.tv_nsec *= 2;
		}
	}
}

/* A slot of w with its message buffer, not linked; NULL when out of memory. */
static struct loop_slot *slot_alloc(struct uffd_loop *l, struct loop_watch *w)
{
	struct loop_slot *s = calloc(1, sizeof(*s));

	/* Zeroed: valgrind cannot see io_uring's writes into it. */
	if (s && !(s->buf = calloc(l->o.batch, sizeof(struct uffd_msg)))) {
		free(s);
		s = NULL;
	}
	if (s)
		s->w = w;
	return s;
}

/* Slots of w, one per runner in list order (l->api held: the list is stable). */
static struct loop_slot **slots_alloc(struct uffd_loop *l, struct loop_watch *w)
{
	struct loop_runner *rn;
	struct loop_slot **v;
	size_t n = 0, i = 0;

	for (rn = atomic_load(&l->runners); rn; rn = atomic_load(&rn->next))
		n++;
	v = calloc(n + 1, sizeof(*v));
	if (!v)
		return NULL;
	for (rn = atomic_load(&l->runners); rn; rn = atomic_load(&rn->next), i++)
		if (!(v[i] = slot_alloc(l, w))) {
			while (i--)
				loop__slots_free(v[i]);
			free(v);
			return NULL;
		}
	return v;
}

/* With l->lock: gives each runner its slot from slots_alloc(). */
static void slots_hand_over(struct uffd_loop *l, struct loop_slot **v)
{
	size_t i = 0;

	for (struct loop_runner *rn = atomic_load(&l->runners); rn; rn = atomic_load(&rn->next), i++) {
		v[i]->next = rn->incoming;
		rn->incoming = v[i];
		v[i]->w->holders++;
	}
}

static int watch_limit(struct uffd_loop *l, const struct uffd *u)
{
	return uffd__err(-ENOSPC, "uffd_loop_add: the loop already watches %u userfaultfds (the limit), "
			 "userfaultfd %d not added; remove some, or use another loop", l->nwatches, u->fd);
}

int loop__watch_add(struct uffd_loop *l, struct uffd *u,
		    const struct uffd_handlers *h, void *ctx,
		    const struct uffd_watch_opts *wo, bool owned)
{
	struct loop_watch *w, *nw = NULL;
	struct loop_slot **slots = NULL;
	int err = 0;

	pthread_mutex_lock(&l->api);
	loop__collect(l);
	pthread_mutex_lock(&l->lock);
	w = find_watch(l, u);
	if (w && h && atomic_load(&w->has_handlers))
		err = uffd__err(-EEXIST, "uffd_loop_add: userfaultfd %d is already watched by this loop", u->fd);
	else if (!w && l->nwatches >= LOOP_MAX_WATCHES)
		err = watch_limit(l, u);
	pthread_mutex_unlock(&l->lock);
	/* Allocate with no l->lock held: loop threads take it on their reading path. */
	if (!err && !w) {
		nw = calloc(1, sizeof(*nw));
		slots = nw ? slots_alloc(l, nw) : NULL;
		if (!slots) {
			free(nw);
			err = uffd__err(-ENOMEM, "uffd_loop_add: out of memory");
		}
	}
	if (!err && nw) {
		w = nw;
		if (wo)
			w->wo = *wo;
		if (h) {	/* before any runner can see it: its first fault needs them */
			w->h = *h;
			w->ctx = ctx;
			atomic_store(&w->has_handlers, true);
		}
		pthread_mutex_lock(&l->lock);
		w->u = u;
		w->owned = owned;
		w->next = l->watches;
		l->watches = w;
		l->nwatches++;
		slots_hand_over(l, slots);
		atomic_fetch_add(&l->gen, 1);
		pthread_mutex_unlock(&l->lock);
		if (owned)
			atomic_fetch_add(&l->nowned, 1);
	}
	if (!err && h && !nw) {	/* publish the handlers after they are written */
		w->h = *h;
		w->ctx = ctx;
		atomic_store_explicit(&w->has_handlers, true, memory_order_release);
	}
	pthread_mutex_unlock(&l->api);
	free(slots);
	if (!err && nw)
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

#define WATCH_FLAGS (UFFD_WATCH_OWNER | UFFD_WATCH_STOP_LOOP)

static int check_watch_opts(const struct uffd_watch_opts *o)
{
	const char *c = "uffd_loop_add_opts";

	if (o->flags & ~WATCH_FLAGS)
		return uffd__err(-EINVAL, "%s: unknown flags 0x%x", c, o->flags & ~WATCH_FLAGS);
	if (!(o->flags & UFFD_WATCH_OWNER) && (o->owner_exit || (o->flags & UFFD_WATCH_STOP_LOOP)))
		return uffd__err(-EINVAL, "%s: owner_exit or UFFD_WATCH_STOP_LOOP need UFFD_WATCH_OWNER "
				 "and an owner_fd (a pidfd or the control socket)", c);
	if ((o->flags & UFFD_WATCH_OWNER) && (o->owner_fd < 0 || fcntl(o->owner_fd, F_GETFD) < 0))
		return uffd__err(-EBADF, "%s: owner_fd %d is not an open file descriptor", c, o->owner_fd);
	return 0;
}

UFFD_EXPORT int uffd_loop_add_opts(struct uffd_loop *l, struct uffd *u,
				   const struct uffd_handlers *h, void *ctx,
				   const struct uffd_watch_opts *opts)
{
	static const struct uffd_handlers none;
	struct uffd_watch_opts o = { .size = sizeof(o), .owner_fd = -1 };
	int err = check_uffd("uffd_loop_add", l, u);

	if (!err && opts && !(err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_watch_opts")))
		err = check_watch_opts(&o);
	if (!err)
		err = loop__watch_add(l, u, h ? h : &none, ctx, opts ? &o : NULL, false);
	if (!err)
		wait_ready(l);
	return err;
}
UFFD_EXPORT_OWN(loop_add_opts);

UFFD_EXPORT int uffd_loop_add(struct uffd_loop *l, struct uffd *u,
			      const struct uffd_handlers *h, void *ctx)
{
	return uffd_loop_add_opts(l, u, h, ctx, NULL);
}
UFFD_EXPORT_OWN(loop_add);

/* With l->api: l->regions is the API side's alone. */
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

/*
 * With l->api: a region with a given_back hook in the loop, on a handle
 * that hears of pages given back (EVENT_REMOVE), makes that handle's reads
 * steps of the resolve gate (resolve-gate.c: no install overlaps a read
 * and the hooks of what it brought). True when counted.
 */
static bool region_gate(struct uffd_region *r, bool joins)
{
	if (joins == r->reads_gated ||
	    (joins && (!__atomic_load_n(&r->given_back, __ATOMIC_ACQUIRE) ||
		       !(r->uffd->features & UFFD_FEATURE_EVENT_REMOVE))))
		return false;
	r->reads_gated = joins;
	uffd__rgate_use(r->uffd, joins);
	return true;
}

UFFD_EXPORT int uffd_loop_add_region(struct uffd_loop *l, struct uffd_region *r,
				     const struct uffd_handlers *h, void *ctx)
{
	static const struct uffd_handlers none;
	struct uffd_loop *cur;
	bool gate = false;
	int err;

	if (!r)
		return uffd__err(-EINVAL, "uffd_loop_add_region: region is NULL");
	if ((err = check_uffd("uffd_loop_add_region", l, r->uffd)))
		return err;
	pthread_mutex_lock(&l->api);
	cur = __atomic_load_n(&r->loop, __ATOMIC_ACQUIRE);
	if (cur)
		err = uffd__err(cur == l ? -EEXIST : -EBUSY, "uffd_loop_add_region: the region at %p is "
				"already added to %s loop", r->base, cur == l ? "this" : "another");
	else if (!(err = regions_push(l, r))) {
		r->loop_handlers = h ? *h : none;
		r->loop_ctx = ctx;
		r->leave_loop = uffd__loop_forget_region;
		gate = region_gate(r, true);
		__atomic_store_n(&r->loop, l, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&l->api);
	if (!err && (err = loop__watch_add(l, r->uffd, NULL, NULL, NULL, false))) {
		uffd__loop_forget_region(r);
		return err;
	}
	if (!err && gate) {	/* reads armed before: each runner replaces them with polls */
		atomic_fetch_add(&l->gen, 1);
		loop__wake_runners(l);
	}
	if (!err)
		wait_ready(l);
	return err;
}
UFFD_EXPORT_OWN(loop_add_region);

void uffd__loop_forget_region(struct uffd_region *r)
{
	struct uffd_loop *l = r ? __atomic_load_n(&r->loop, __ATOMIC_ACQUIRE) : NULL;

	if (!l)
		return;
	pthread_mutex_lock(&l->api);
	for (size_t i = 0; i < l->nregions; i++)
		if (l->regions[i] == r)
			l->regions[i] = l->regions[--l->nregions];
	__atomic_store_n(&r->loop, NULL, __ATOMIC_RELEASE);
	region_gate(r, false);
	pthread_mutex_unlock(&l->api);
}

/* With l->api: regions of u (all when u is NULL) leave the loop. */
static void regions_drop(struct uffd_loop *l, const struct uffd *u)
{
	size_t k = 0;

	for (size_t i = 0; i < l->nregions; i++) {
		struct uffd_region *r = l->regions[i];

		if (u && r->uffd != u) {
			l->regions[k++] = r;
		} else {
			__atomic_store_n(&r->loop, NULL, __ATOMIC_RELEASE);
			region_gate(r, false);
		}
	}
	l->nregions = k;
}

/* With rn->drive held (nobody drives rn): its slots of w with no request in flight go. */
static bool bury_idle(struct loop_runner *rn, struct loop_watch *w)
{
	struct loop_slot **lists[] = { &rn->incoming, &rn->slots };
	struct uffd_loop *l = rn->l;
	bool busy = false;

	pthread_mutex_lock(&l->lock);
	for (int i = 0; i < 2; i++)
		for (struct loop_slot **p = lists[i]; *p;) {
			struct loop_slot *s = *p;

			if (s->w != w || s->busy || s->owner_busy) {
				busy |= s->w == w;
				p = &s->next;
				continue;
			}
			*p = s->next;
			loop__slot_bury(l, s);
		}
	pthread_mutex_unlock(&l->lock);
	return busy;
}

/*
 * Lets go of w in every runner that no thread drives (the others do it
 * themselves). may_step: an API call may drive a ring with reads in flight
 * to cancel them; a loop thread leaves those for later.
 */
static void release_undriven(struct uffd_loop *l, struct loop_watch *w, bool may_step)
{
	for (struct loop_runner *rn = atomic_load(&l->runners); rn; rn = atomic_load(&rn->next)) {
		if (pthread_mutex_trylock(&rn->drive))
			continue;
		if (bury_idle(rn, w) && may_step) {
			/* Reads in flight (a ring left armed by uffd_loop_run_once): cancel them. */
			struct loop_runner *was = tl_runner;

			tl_runner = rn;
			while (loop__has_slot(rn, w))
				loop__step(rn, 10);
			tl_runner = was;
		}
		pthread_mutex_unlock(&rn->drive);
	}
}

/* Waits until no runner holds w: driven ones let go by themselves, the others are settled here. */
static void wait_released(struct uffd_loop *l, struct loop_watch *w)
{
	pthread_mutex_lock(&l->lock);
	while (w->holders) {
		struct timespec t;

		pthread_mutex_unlock(&l->lock);
		release_undriven(l, w, true);
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
		uffd_close(w->u);	/* its fd is -1 when loop__close_dead() closed it */
	free(w);
}

/*
 * Closes the userfaultfds of fork children that left the loop and that no
 * runner holds any more: a close, no allocation, so this runs with the
 * fork gate shut too; the structs are freed later by loop__collect().
 * That is what lets a fork at the descriptor limit go on: its FORK
 * message needs a descriptor, and the fork keeps the gate shut.
 */
void loop__close_dead(struct uffd_loop *l)
{
	pthread_mutex_lock(&l->lock);
	for (struct loop_watch *w = l->zombies; w; w = w->next)
		if (w->owned && !w->holders && w->u->fd >= 0) {
			close(w->u->fd);
			w->u->fd = -1;	/* the number may be reused at once: never close it again */
		}
	pthread_mutex_unlock(&l->lock);
}

/* Frees what runners let go of: dead slots, and zombies no runner holds (l->api held). */
void loop__collect(struct uffd_loop *l)
{
	struct loop_watch *gone = NULL;
	struct loop_slot *dead;

	pthread_mutex_lock(&l->lock);
	dead = l->dead_slots;
	l->dead_slots = NULL;
	atomic_store(&l->garbage, 0);
	for (struct loop_watch **p = &l->zombies; *p;) {
		struct loop_watch *w = *p;

		if (w->holders) {
			p = &w->next;
			continue;
		}
		*p = w->next;
		w->next = gone;
		gone = w;
	}
	pthread_mutex_unlock(&l->lock);
	loop__slots_free(dead);
	while (gone) {
		struct loop_watch *next = gone->next;

		watch_free(gone);
		gone = next;
	}
}

/* With l->lock: the zombie of u whose owner exited, unlinked from the zombies; NULL if none. */
static struct loop_watch *zombie_take(struct uffd_loop *l, const struct uffd *u)
{
	for (struct loop_watch **p = &l->zombies; *p; p = &(*p)->next)
		if ((*p)->u == u && !(*p)->owned) {
			struct loop_watch *w = *p;

			*p = w->next;
			return w;
		}
	return NULL;
}

/* With l->lock: w leaves the watch set (its slots are let go of by the runners). */
static void watch_unlink(struct uffd_loop *l, struct loop_watch *w)
{
	struct loop_watch **p;

	for (p = &l->watches; *p != w; p = &(*p)->next)
		;
	*p = w->next;
	w->removed = true;
	l->nwatches--;
	atomic_fetch_add(&l->gen, 1);
}

UFFD_EXPORT int uffd_loop_remove(struct uffd_loop *l, struct uffd *u)
{
	struct loop_watch *w;

	if (!l || !u)
		return uffd__err(-EINVAL, "uffd_loop_remove: %s is NULL", l ? "the handle" : "the loop");
	if (called_from_handler(l))
		return uffd__err(-EDEADLK, "uffd_loop_remove: called from a handler of the same loop; "
				 "remove the uffd from another thread");
	pthread_mutex_lock(&l->api);
	pthread_mutex_lock(&l->lock);
	w = find_watch(l, u);
	if (w)
		watch_unlink(l, w);
	else	/* its owner exited: the loop let go of it already, or is doing so */
		w = zombie_take(l, u);
	pthread_mutex_unlock(&l->lock);
	if (w)
		regions_drop(l, u);
	pthread_mutex_unlock(&l->api);
	if (!w)
		return uffd__err(-ENOENT, "uffd_loop_remove: userfaultfd %d is not watched by this loop", u->fd);
	loop__wake_runners(l);
	wait_released(l, w);
	pthread_mutex_lock(&l->api);
	loop__collect(l);
	pthread_mutex_unlock(&l->api);
	if (w->owned)
		atomic_fetch_sub(&l->nowned, 1);
	watch_free(w);
	return 0;
}
UFFD_EXPORT_OWN(loop_remove);

/* ---- fork children that exited ---- */

/*
 * Whether the process behind a fork child's uffd has exited: every
 * resolving ioctl answers ESRCH once its mm is gone. A COPY from address
 * 0 can change nothing in a live child: it fails with ENOENT (nothing
 * registered there), EFAULT (the source) or EEXIST.
 */
bool loop__child_exited(int fd)
{
	struct uffdio_copy c = { .dst = PROBE_ADDR, .src = 0, .len = uffd__base_page_size(),
				 .mode = UFFDIO_COPY_MODE_DONTWAKE };

	return ioctl(fd, UFFDIO_COPY, &c) < 0 && errno == ESRCH;
}

/*
 * On a loop thread, gate or not (it allocates and frees nothing): unlinks
 * owned watches whose process exited; their fds are closed by
 * loop__close_dead() once every runner let go of them, the structs freed
 * by loop__collect(). Runs when a fork arrives, when a read hits EMFILE
 * (force) and at most once a second otherwise.
 */
void loop__reap(struct loop_runner *rn, bool force)
{
	struct uffd_loop *l = rn->l;
	long long now = loop__now_us(), due = atomic_load(&l->next_reap);
	struct loop_watch *reaped[16];
	size_t n = 0;

	if (!atomic_load(&l->nowned) || (!force && (now < due ||
	    !atomic_compare_exchange_strong(&l->next_reap, &due, now + REAP_EVERY_US))))
		return;
	if (pthread_mutex_trylock(&l->api))
		return;		/* an API call is changing the set: next time */
	pthread_mutex_lock(&l->lock);
	for (struct loop_watch *w = l->watches, *next; w && n < 16; w = next) {
		next = w->next;
		/* Not while events it sent before exiting wait for the gate: they would be lost. */
		if (!w->owned || atomic_load(&w->pending) || !loop__child_exited(w->u->fd))
			continue;
		watch_unlink(l, w);
		w->next = l->zombies;
		l->zombies = w;
		atomic_fetch_add(&l->garbage, 1);
		reaped[n++] = w;
		atomic_fetch_sub(&l->nowned, 1);
		atomic_fetch_add_explicit(&rn->c.reaped, 1, memory_order_relaxed);
	}
	pthread_mutex_unlock(&l->lock);
	for (size_t i = 0; i < n; i++)
		release_undriven(l, reaped[i], false);
	pthread_mutex_unlock(&l->api);
	if (n) {
		loop__close_dead(l);	/* those no runner held */
		loop__wake_runners(l);	/* the others let go, then their fds close */
	}
}

/* ---- owners that exited ---- */

/*
 * On a loop thread, inside a gate section: the watches whose owner_fd
 * fired leave the loop (their regions too), then hear of it. They wait
 * among the zombies for uffd_loop_remove(), which the application still
 * calls before uffd_close().
 */
void loop__owner_exits(struct loop_runner *rn)
{
	struct uffd_loop *l = rn->l;
	struct loop_watch *gone[16];
	size_t n = 0;
	bool stop = false;

	pthread_mutex_lock(&l->api);
	pthread_mutex_lock(&l->lock);
	for (struct loop_watch *w = l->watches, *next; w && n < 16; w = next) {
		next = w->next;
		if (!atomic_load(&w->owner_fired) || w->exited)
			continue;
		w->exited = true;
		watch_unlink(l, w);
		w->next = l->zombies;
		l->zombies = w;
		atomic_fetch_add(&l->garbage, 1);
		gone[n++] = w;
		stop |= w->wo.flags & UFFD_WATCH_STOP_LOOP;
	}
	pthread_mutex_unlock(&l->lock);
	for (size_t i = 0; i < n; i++) {
		regions_drop(l, gone[i]->u);
		release_undriven(l, gone[i], false);
	}
	pthread_mutex_unlock(&l->api);
	loop__wake_runners(l);	/* the others let go of their slots */
	for (size_t i = 0; i < n; i++)
		if (gone[i]->wo.owner_exit)
			gone[i]->wo.owner_exit(gone[i]->ctx, gone[i]->u);
	if (stop)
		uffd_loop_stop(l);
}

/* ---- driving ---- */

static void set_active(struct loop_runner *rn, bool on)
{
	if (on)		/* not ready until it arms the current set */
		atomic_store(&rn->armed_gen, atomic_load(&rn->l->gen) - 1);
	atomic_store(&rn->active, on);
}

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
	uffd__gate_set_reader(&l->caller->reader);
	set_active(l->caller, true);
	return 0;
}

static void drive_end(struct uffd_loop *l)
{
	uffd__gate_want(&l->caller->wants_gate, false);	/* nobody drains it now */
	set_active(l->caller, false);
	uffd__gate_set_reader(NULL);
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
		err = loop__step(rn, -1);
		if (!err && rn->fail) {
			err = rn->fail;		/* its sentence is this thread's last error */
			rn->fail = 0;
		}
	}
	drive_end(l);
	return err;
}
UFFD_EXPORT_OWN(loop_run);

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
	end = timeout_ms < 0 ? -1 : loop__now_us() + timeout_ms * 1000ll;
	/* Wakes that bring no message (watch-set changes) do not end the wait. */
	while (!err && !rn->handled && !rn->fail && !atomic_exchange(&l->stop, 0)) {
		long long left = end < 0 ? -1 : end - loop__now_us();

		err = loop__step(rn, left < 0 ? (end < 0 ? -1 : 0) : (int)((left + 999) / 1000));
		if (end >= 0 && loop__now_us() >= end)
			break;
	}
	/* Retries of this wake are finished here, after the events they wait for. */
	while (!err && (rn->retry.n || rn->refault.n || rn->gated.n || loop__has_kept(rn)) &&
	       !atomic_load(&l->stop))
		err = loop__step(rn, 10);	/* sleeps the back-off, no spinning */
	if (!err && rn->fail)
		err = rn->fail;
	rn->fail = 0;
	drive_end(l);
	return err ? err : (int)rn->handled;
}
UFFD_EXPORT_OWN(loop_run_once);

static void *thread_main(void *arg)
{
	struct loop_runner *rn = arg;
	struct uffd_loop *l = rn->l;

	pthread_mutex_lock(&rn->drive);
	tl_runner = rn;
	uffd__gate_set_reader(&rn->reader);
	while (!atomic_load(&l->stop)) {
		if (loop__step(rn, -1))
			break;	/* the ring failed: counted, nothing else to do */
		rn->fail = 0;	/* reported to the hook and counted; no caller to return to */
	}
	loop__drain(rn);
	uffd__gate_want(&rn->wants_gate, false);	/* nobody drains it now */
	set_active(rn, false);
	tl_runner = NULL;
	pthread_mutex_unlock(&rn->drive);
	if (atomic_fetch_sub(&l->live_threads, 1) == 1)
		atomic_store(&l->stop, 0);	/* the stop is consumed */
	return NULL;
}

static void join_threads(struct uffd_loop *l)
{
	pthread_mutex_lock(&l->join);
	for (unsigned i = 0; i < l->nthreads; i++)
		if (l->threads[i]->joinable) {
			pthread_join(l->threads[i]->thread, NULL);
			l->threads[i]->joinable = false;
		}
	pthread_mutex_unlock(&l->join);
}

/* A new runner gets a slot of every watch (l->api held). */
static int runner_fill(struct uffd_loop *l, struct loop_runner *rn)
{
	for (struct loop_watch *w = l->watches; w; w = w->next) {
		struct loop_slot *s = slot_alloc(l, w);

		if (!s)
			return uffd__err(-ENOMEM, "uffd_loop_start: out of memory");
		pthread_mutex_lock(&l->lock);
		s->next = rn->incoming;
		rn->incoming = s;
		w->holders++;
		pthread_mutex_unlock(&l->lock);
	}
	return 0;
}

/* With l->api. */
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
	for (; l->nthreads < n; l->nthreads++) {
		if ((err = loop__runner_new(l, &l->threads[l->nthreads])))
			return err;
		if ((err = runner_fill(l, l->threads[l->nthreads])))
			return err;
	}
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
		set_active(rn, true);
		err = -pthread_create(&rn->thread, NULL, thread_main, rn);
		if (err) {
			set_active(rn, false);
			atomic_fetch_sub(&l->live_threads, 1);
		}
		rn->joinable = !err;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err ? uffd__err(err, "uffd_loop_start: pthread_create failed: %s", uffd__errname(err)) : 0;
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
	if (called_from_handler(l))
		return uffd__err(-EDEADLK, "uffd_loop_start: called from a handler of the same loop");
	if (atomic_load(&l->stop) && atomic_load(&l->live_threads))
		join_threads(l);	/* stopped, still finishing: wait for them */
	if ((err = drive_begin(l, "uffd_loop_start")))
		return err;
	/* The caller's ring must not keep reads that nobody would handle. */
	loop__drain(l->caller);
	drive_end(l);
	join_threads(l);	/* threads of an earlier start, already stopped */
	pthread_mutex_lock(&l->api);
	err = threads_alloc(l, nthreads);
	if (!err)
		err = threads_spawn(l, nthreads);
	pthread_mutex_unlock(&l->api);
	if (err)
		stop_threads(l);
	else
		wait_ready(l);
	return err;
}
UFFD_EXPORT_OWN(loop_start);

UFFD_EXPORT int uffd_loop_join(struct uffd_loop *l)
{
	if (!l)
		return uffd__err(-EINVAL, "uffd_loop_join: the loop is NULL");
	if (called_from_handler(l))
		return uffd__err(-EDEADLK, "uffd_loop_join: called from a handler of the same loop, "
				 "whose thread would wait for itself; join from another thread");
	join_threads(l);
	return 0;
}
UFFD_EXPORT_OWN(loop_join);

UFFD_EXPORT int uffd_loop_stop(struct uffd_loop *l)
{
	if (!l)
		return uffd__err_const(-EINVAL, "uffd_loop_stop: the loop is NULL");
	atomic_store(&l->stop, 1);
	loop__wake_runners(l);
	return 0;
}
UFFD_EXPORT_OWN(loop_stop);

/* Until rn handled one more wake (woken for it) or stopped; false at the deadline. */
static bool one_pass(struct uffd_loop *l, struct loop_runner *rn, long long end)
{
	struct timespec nap = { .tv_nsec = 20000 };
	uint_fast64_t g = atomic_load(&rn->passes);

	loop__wake_runners(l);
	while (atomic_load(&rn->passes) == g && atomic_load(&rn->active)) {
		if (end >= 0 && loop__now_us() >= end)
			return false;
		nanosleep(&nap, NULL);
	}
	return true;
}

/*
 * The kernel lets mremap() (munmap, madvise, fork) return once a loop
 * thread read its message, in the thread's io_uring task work, which ends
 * before the thread is back in user space: a pass that thread finishes
 * after the call began started after the message was read, so the pass
 * after it handled the message. REMAPs that the reading path could not
 * apply (they waited for the fork gate) are waited for too.
 */
UFFD_EXPORT int uffd_loop_sync(struct uffd_loop *l, int timeout_ms)
{
	long long end;

	if (!l)
		return uffd__err(-EINVAL, "uffd_loop_sync: the loop is NULL");
	if (timeout_ms < -1)
		return uffd__err(-EINVAL, "uffd_loop_sync: timeout_ms %d: pass -1 to wait without limit", timeout_ms);
	if (loop__in_handlers(l))
		return uffd__err(-EDEADLK, "uffd_loop_sync: called from a handler of this loop, which would wait for its own "
				 "thread; the messages read before the handler's are handled already");
	end = timeout_ms < 0 ? -1 : loop__now_us() + timeout_ms * 1000ll;
	for (struct loop_runner *rn = atomic_load(&l->runners); rn; rn = atomic_load(&rn->next)) {
		struct timespec nap = { .tv_nsec = 20000 };
		bool ok = true;

		for (int pass = 0; pass < 2 && ok && atomic_load(&rn->active); pass++)
			ok = one_pass(l, rn, end);
		while (ok && __atomic_load_n(&rn->remaps_behind, __ATOMIC_ACQUIRE) && atomic_load(&rn->active)) {
			ok = end < 0 || loop__now_us() < end;
			nanosleep(&nap, NULL);
		}
		if (!ok)
			return uffd__err(-ETIMEDOUT, "uffd_loop_sync: a loop thread did not come round within %d ms "
					 "(busy in a handler, or the process is starved of CPU)", timeout_ms);
	}
	return 0;
}
UFFD_EXPORT_OWN(loop_sync);

/* Sums a counter over the runners. */
#define SUM(l, field) ({                                                             \
	uint64_t sum_ = 0;                                                           \
	for (struct loop_runner *rn_ = atomic_load(&((struct uffd_loop *)(l))->runners); \
	     rn_; rn_ = atomic_load(&rn_->next))                                     \
		sum_ += atomic_load(&rn_->c.field);                                  \
	sum_; })

UFFD_EXPORT void uffd_loop_stats(const struct uffd_loop *l, struct uffd_loop_stats *s)
{
	if (!s)
		return;
	memset(s, 0, sizeof(*s));
	if (!l)
		return;
	s->faults_minor = SUM(l, minor);
	s->faults_wp = SUM(l, wp);
	s->faults_missing = SUM(l, missing);
	s->events = SUM(l, events);
	s->reads = SUM(l, reads);
	s->resolve_ioctls = SUM(l, ioctls);
	s->deferred = SUM(l, deferred);
	s->errors = SUM(l, errors);
}
UFFD_EXPORT_OWN(loop_stats);

UFFD_EXPORT int uffd_loop_counters(const struct uffd_loop *l, struct uffd_loop_counters *c)
{
	struct uffd_loop_counters all = { .size = sizeof(all) };
	struct uffd_loop_stats s;
	size_t size;

	if (!l || !c)
		return uffd__err(-EINVAL, "uffd_loop_counters: %s is NULL", l ? "the counters" : "the loop");
	size = c->size;
	if (size < offsetof(struct uffd_loop_counters, owner_gone) || size % 8)
		return uffd__err(-EINVAL, "uffd_loop_counters: size is %zu; set it to sizeof(struct "
				 "uffd_loop_counters)", size);
	uffd_loop_stats(l, &s);
	all.faults_minor = s.faults_minor;
	all.faults_wp = s.faults_wp;
	all.faults_missing = s.faults_missing;
	all.events = s.events;
	all.reads = s.reads;
	all.resolve_ioctls = s.resolve_ioctls;
	all.deferred = s.deferred;
	all.errors = s.errors;
	all.owner_gone = SUM(l, owner_gone);
	all.poisoned = SUM(l, poisoned);
	all.retried = SUM(l, retried);
	all.gated = SUM(l, queued);
	all.children_adopted = SUM(l, adopted);
	all.children_reaped = SUM(l, reaped);
	/* A newer caller's larger struct: the fields this library knows, zeros after. */
	memset(c, 0, size);
	memcpy(c, &all, size < sizeof(all) ? size : sizeof(all));
	c->size = size < sizeof(all) ? size : sizeof(all);
	return 0;
}
UFFD_EXPORT_OWN(loop_counters);

#define WAITING_EVENTS (UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | \
			UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP)

/*
 * Handles left watched at free whose events make the application wait
 * for a reader: said in uffd_last_error(). Neither refused nor sent to the
 * error hook: free-then-close is a safe and common order (uffd-serve's),
 * which must neither leak the loop nor log an error.
 */
static void warn_unread(struct uffd_loop *l)
{
	for (struct loop_watch *w = l->watches; w; w = w->next) {
		if (w->owned || !(w->u->features & WAITING_EVENTS))
			continue;
		uffd__err(-EBUSY, "uffd_loop_free: userfaultfd %d is still watched and has event features "
			  "(0x%llx): with nobody reading it, fork(), mremap(), munmap() and madvise() on its "
			  "registered ranges wait until it is closed; uffd_close() it, or "
			  "uffd_loop_remove() it and read it otherwise, before freeing the loop",
			  w->u->fd, (unsigned long long)(w->u->features & WAITING_EVENTS));
	}
}

UFFD_EXPORT void uffd_loop_free(struct uffd_loop *l)
{
	struct loop_runner *rn, *next;
	struct loop_watch *lists[2], *w, *wn;

	if (!l)
		return;
	stop_threads(l);
	warn_unread(l);
	pthread_mutex_lock(&l->caller->drive);
	tl_runner = l->caller;
	loop__drain(l->caller);
	tl_runner = NULL;
	pthread_mutex_unlock(&l->caller->drive);
	pthread_mutex_lock(&l->api);
	regions_drop(l, NULL);
	loop__collect(l);
	pthread_mutex_unlock(&l->api);
	/* The slots still held go with their runners, then the watches. */
	for (rn = atomic_load(&l->runners); rn; rn = next) {
		next = atomic_load(&rn->next);
		loop__runner_free(rn);
	}
	lists[0] = l->watches;
	lists[1] = l->zombies;
	for (int i = 0; i < 2; i++)
		for (w = lists[i]; w; w = wn) {
			wn = w->next;
			watch_free(w);
		}
	if (l->zero)
		munmap(l->zero, l->zero_len);
	free(l->threads);
	free(l->regions);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->lock);
	pthread_mutex_destroy(&l->join);
	pthread_mutex_destroy(&l->api);
	free(l);
}
UFFD_EXPORT_OWN(loop_free);
