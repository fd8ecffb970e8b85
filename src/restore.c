/* SPDX-License-Identifier: MIT */
/*
 * The restore object (uffd.h section 9): options, regions, start, the
 * wait for the end, freeing, and the statistics. The shared page states
 * and resolutions are restore-state.c's; the loop-side handlers
 * restore-fault.c's; the restore thread restore-io.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "restore-internal.h"

#define DEFAULT_DEPTH 32
#define DEFAULT_MAX_READ (256u << 10)
#define FLAGS_ALL (UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH | UFFD_RESTORE_RECORD | UFFD_RESTORE_NO_AROUND)
#define DEFAULT_AROUND (64u << 10)	/* the kernel's fault_around_bytes; bench/RESULTS.md, issue 24 */
#define AROUND_MAX (1u << 20)
/* sizeof(struct uffd_restore_stats) in 0.3, which ended with complete_ns */
#define STATS_03 (offsetof(struct uffd_restore_stats, complete_ns) + sizeof(uint64_t))

/* ---- the API ---- */

static int check_opts(struct uffd_restore_opts *o)
{
	if (o->flags & ~FLAGS_ALL)
		return uffd__err(-EINVAL, "uffd_restore_new: unknown flags 0x%x", o->flags & ~FLAGS_ALL);
	if (o->queue_depth > 4096)
		return uffd__err(-EINVAL, "uffd_restore_new: queue_depth %u is above 4096", o->queue_depth);
	if (o->max_read > (64u << 20))
		return uffd__err(-EINVAL, "uffd_restore_new: max_read %zu is above 64 MiB", o->max_read);
	if (o->fault_around > AROUND_MAX || (o->fault_around & (o->fault_around - 1)))
		return uffd__err(-EINVAL, "uffd_restore_new: fault_around %zu is not a power of two up to 1 MiB (0: the default)",
				 o->fault_around);
	if (o->replay_block > AROUND_MAX || (o->replay_block & (o->replay_block - 1)) ||
	    (o->max_read && o->replay_block > o->max_read) || (!o->max_read && o->replay_block > DEFAULT_MAX_READ))
		return uffd__err(-EINVAL, "uffd_restore_new: replay_block %zu is not a power of two up to max_read "
				 "and 1 MiB (0: the default)", o->replay_block);
	if (!o->fault_around)
		o->fault_around = DEFAULT_AROUND;
	if (o->flags & UFFD_RESTORE_NO_AROUND)
		o->fault_around = 0;
	if (!o->queue_depth)
		o->queue_depth = DEFAULT_DEPTH;
	if (!o->max_read)
		o->max_read = DEFAULT_MAX_READ;
	return 0;
}

/* uffd_restore_wait() times out on the monotonic clock. */
static void init_cond(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

UFFD_EXPORT int uffd_restore_new(struct uffd_restore **out, const struct uffd_restore_opts *o)
{
	struct uffd_restore_opts opts = { .size = sizeof(opts) };
	struct uffd_restore *rs;
	int err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_restore_new: out is NULL");
	*out = NULL;
	if (o && (err = uffd__opts_copy(&opts, sizeof(opts), o, o->size, "uffd_restore_opts")))
		return err;
	if ((err = check_opts(&opts)))
		return err;
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return uffd__err(-ENOMEM, "uffd_restore_new: out of memory");
	rs->o = opts;
	rs->efd = -1;
	rs->recording = opts.flags & UFFD_RESTORE_RECORD;
	atomic_store(&rs->rec_on, rs->recording);
	pthread_mutex_init(&rs->qlock, NULL);
	pthread_mutex_init(&rs->lock, NULL);
	pthread_mutex_init(&rs->rec_lock, NULL);
	init_cond(&rs->cond);
	*out = rs;
	return 0;
}
UFFD_EXPORT_OWN(restore_new);

/* The region of r in rs, or NULL. */
static struct rs_region *region_of(struct uffd_restore *rs, const struct uffd_region *r)
{
	for (unsigned i = 0; i < rs->nregs; i++)
		if (rs->regs[i].r == r)
			return &rs->regs[i];
	return NULL;
}

/* What every region needs, whatever serves it. */
static int check_region(const char *call, struct uffd_restore *rs, struct uffd_region *r, uint64_t offset)
{
	if (!rs || !r)
		return uffd__err(-EINVAL, "%s: %s is NULL", call, rs ? "region" : "restore");
	if (rs->started)
		return uffd__err(-EINVAL, "%s: the restore is started; add regions before uffd_restore_start", call);
	if (!(r->modes & (UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR)))
		return uffd__err(-EINVAL, "%s: the region at %p has neither MISSING nor MINOR mode; a restore serves those faults",
				 call, uffd_region_base(r));
	if ((r->modes & UFFDIO_REGISTER_MODE_MINOR) && !r->alias)
		return uffd__err(-EINVAL, "%s: the MINOR region at %p has no alias view to read the file into; create it without UFFD_REGION_NO_ALIAS and with its fd",
				 call, uffd_region_base(r));
	if (offset % r->page_size)
		return uffd__err(-EINVAL, "%s: offset 0x%llx is not a multiple of the region's page size %zu",
				 call, (unsigned long long)offset, r->page_size);
	if (__atomic_load_n(&r->loop, __ATOMIC_ACQUIRE) || region_of(rs, r))
		return uffd__err(-EBUSY, "%s: the region at %p is in a loop or a restore already", call, uffd_region_base(r));
	return 0;
}

static int regs_grow(const char *call, struct uffd_restore *rs)
{
	struct rs_region *v;
	unsigned cap = rs->regs_cap ? rs->regs_cap * 2 : 4;

	if (rs->nregs < rs->regs_cap)
		return 0;
	v = realloc(rs->regs, cap * sizeof(*v));
	if (!v)
		return uffd__err(-ENOMEM, "%s: out of memory", call);
	rs->regs = v;
	rs->regs_cap = cap;
	return 0;
}

static int add_source(const char *call, struct uffd_restore *rs, struct uffd_region *r,
		      struct uffd_source *src, uint64_t offset)
{
	uint64_t size = uffd_source_length(src);
	struct rs_region *g;
	int err;

	if (!src)
		return uffd__err(-EINVAL, "%s: source is NULL", call);
	if (size < offset || size - offset < r->length)
		return uffd__err(-EINVAL, "%s: %s (%llu bytes) does not cover the region: %zu bytes from offset %llu",
				 call, uffd_source_name(src), (unsigned long long)size, r->length,
				 (unsigned long long)offset);
	if (atomic_load(&src->env))
		return uffd__err(-EBUSY, "%s: %s serves a started restore; give each restore its own source",
				 call, uffd_source_name(src));
	if ((err = regs_grow(call, rs)))
		return err;
	g = &rs->regs[rs->nregs];
	*g = (struct rs_region){ .rs = rs, .r = r, .idx = rs->nregs, .offset = offset, .ps = r->page_size,
				 .npages = r->length / r->page_size,
				 .cont = (r->modes & UFFDIO_REGISTER_MODE_MINOR) != 0 };
	if (!(g->st = calloc(g->npages, sizeof(*g->st))))
		return uffd__err(-ENOMEM, "%s: out of memory", call);
	g->src = uffd_source_ref(src);
	rs->total += g->npages;
	if (g->ps > rs->maxps)
		rs->maxps = g->ps;
	rs->nregs++;
	return 0;
}

UFFD_EXPORT int uffd_restore_add_region_source(struct uffd_restore *rs, struct uffd_region *r,
					       struct uffd_source *src, uint64_t offset)
{
	const char *call = "uffd_restore_add_region_source";
	int err;

	if ((err = check_region(call, rs, r, offset)))
		return err;
	return add_source(call, rs, r, src, offset);
}
UFFD_EXPORT_OWN(restore_add_region_source);

/* The 0.3 call: a file source over the whole of fd. */
UFFD_EXPORT int uffd_restore_add_region(struct uffd_restore *rs, struct uffd_region *r,
					int fd, uint64_t offset)
{
	const char *call = "uffd_restore_add_region";
	struct uffd_source *src;
	char why[256];
	int err;

	if ((err = check_region(call, rs, r, offset)))
		return err;
	if ((err = uffd_source_file(&src, fd, NULL))) {
		snprintf(why, sizeof(why), "%s", uffd_last_error());
		return uffd__err(err, "%s: %s", call, why);
	}
	err = add_source(call, rs, r, src, offset);
	uffd_source_unref(src);
	return err;
}
UFFD_EXPORT_OWN(restore_add_region);

/* Leaves the loop: once this returns, no handler of ours runs any more. */
static void leave_loop(struct uffd_restore *rs)
{
	for (unsigned i = 0; i < rs->nregs; i++) {
		struct rs_region *g = &rs->regs[i];

		if (__atomic_load_n(&g->r->loop, __ATOMIC_ACQUIRE) == rs->loop) {
			uffd__loop_forget_region(g->r);
			uffd__region_unpin_wait(g->r);
		}
		/* out of the loop, with no hook running: it may go */
		__atomic_store_n(&g->r->given_back, NULL, __ATOMIC_RELEASE);
	}
}

/* Deferred faults fault again, and get the loop's default resolution. */
static void wake_all(struct uffd_restore *rs)
{
	for (unsigned i = 0; i < rs->nregs; i++)
		uffd_wake(uffd_region_uffd(rs->regs[i].r), uffd_region_base(rs->regs[i].r),
			  uffd_region_length(rs->regs[i].r));
}

UFFD_EXPORT int uffd_restore_start(struct uffd_restore *rs, struct uffd_loop *l)
{
	int err = 0;

	if (!rs || !l)
		return uffd__err(-EINVAL, "uffd_restore_start: %s is NULL", rs ? "loop" : "restore");
	if (rs->started)
		return uffd__err(-EINVAL, "uffd_restore_start: started already");
	if (!rs->nregs)
		return uffd__err(-EINVAL, "uffd_restore_start: no region; add them with uffd_restore_add_region first");
	rs->started = true;
	rs->loop = l;
	rs->start_ns = rs__now_ns();
	uffd__gate_init();
	for (unsigned i = 0; i < rs->nregs && !err; i++)
		err = rs__holes(rs, &rs->regs[i]);
	if (err || (err = rs__trace_start(rs)) || (err = rs__io_start(rs)))
		goto fail;
	for (unsigned i = 0; i < rs->nregs && !err; i++) {
		/* given-back pages are heard of when read, not when the gate lets the handlers run */
		__atomic_store_n(&rs->regs[i].r->given_back, rs__given_back, __ATOMIC_RELEASE);
		err = uffd_loop_add_region(l, rs->regs[i].r, &rs__handlers, &rs->regs[i]);
	}
	if (!err)
		return 0;
fail:
	atomic_store(&rs->stop, true);
	leave_loop(rs);
	rs__io_stop(rs);
	wake_all(rs);
	return err;
}
UFFD_EXPORT_OWN(restore_start);

/*
 * The flag first, then the look at complete_ns: a restore thread that has
 * not begun rs__finish() yet will see the flag and detach; one that has
 * begun is waited for; a restore that completed without detaching is
 * detached here.
 */
UFFD_EXPORT int uffd_restore_finish(struct uffd_restore *rs)
{
	const char *c = "uffd_restore_finish";

	if (!rs)
		return uffd__err(-EINVAL, "%s: restore is NULL", c);
	if (!rs->started)
		return uffd__err(-EINVAL, "%s: the restore is not started; call uffd_restore_start first", c);
	atomic_store(&rs->finishing, true);
	if (!atomic_load(&rs->complete_ns)) {
		rs__io_poke(rs);
		return 0;
	}
	pthread_mutex_lock(&rs->lock);
	while (!rs->finished && !rs->err)
		pthread_cond_wait(&rs->cond, &rs->lock);
	pthread_mutex_unlock(&rs->lock);
	if (!atomic_load(&rs->detached) && rs->err)
		return uffd__err(rs->err, "%s: the restore ended without completing (%s); the regions are still registered",
				 c, rs->err == -ESRCH ? "the owner exited" : "a page could not be read");
	/* Complete before the call (every page came in by demand): detach now, as asked. */
	rs__detach_late(rs);
	return 0;
}
UFFD_EXPORT_OWN(restore_finish);

UFFD_EXPORT int uffd_restore_wait(struct uffd_restore *rs, int timeout_ms)
{
	struct timespec dl;
	int err = 0;

	if (!rs || !rs->started)
		return uffd__err(-EINVAL, "uffd_restore_wait: %s", rs ? "the restore is not started" : "restore is NULL");
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += timeout_ms / 1000;
	dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (dl.tv_nsec >= 1000000000) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&rs->lock);
	while (!rs->finished && !rs->err && err != ETIMEDOUT)
		err = timeout_ms < 0 ? pthread_cond_wait(&rs->cond, &rs->lock)
				     : pthread_cond_timedwait(&rs->cond, &rs->lock, &dl);
	err = rs->finished ? 0 : rs->err ? rs->err : -ETIMEDOUT;
	pthread_mutex_unlock(&rs->lock);
	if (err == -ETIMEDOUT)
		return uffd__err(err, "uffd_restore_wait: %llu of %llu pages present after %d ms",
				 (unsigned long long)atomic_load(&rs->done), (unsigned long long)rs->total, timeout_ms);
	if (err == -ESRCH)
		return uffd__err(err, "uffd_restore_wait: the process owning the memory exited before the restore completed");
	if (err == -EIO && uffd__env_why(&rs->env))
		return uffd__err(err, "uffd_restore_wait: %llu reads of the source failed or came back short; the restore cannot complete; the first: %s",
				 (unsigned long long)atomic_load(&rs->read_errors), uffd__env_why(&rs->env));
	if (err == -EIO)
		return uffd__err(err, "uffd_restore_wait: %llu reads of the source failed or came back short; the restore cannot complete",
				 (unsigned long long)atomic_load(&rs->read_errors));
	return err;
}
UFFD_EXPORT_OWN(restore_wait);

UFFD_EXPORT int uffd_restore_stats(const struct uffd_restore *rsc, struct uffd_restore_stats *s)
{
	struct uffd_restore *rs = (struct uffd_restore *)rsc;	/* atomics are read, not changed */
	struct uffd_restore_stats v = { .size = sizeof(v) };

	if (!rs || !s)
		return uffd__err(-EINVAL, "uffd_restore_stats: %s is NULL", rs ? "stats" : "restore");
	if (s->size < STATS_03)
		return uffd__err(-EINVAL, "uffd_restore_stats: size %zu is smaller than struct uffd_restore_stats ever was (%zu); set it to sizeof(struct uffd_restore_stats)",
				 s->size, STATS_03);
	for (int k = 0; k < 3; k++) {
		v.faults[k] = atomic_load(&rs->faults[k]);
		for (int b = 0; b < UFFD_HIST_BUCKETS; b++)
			v.latency[k][b] = atomic_load(&rs->lat[k][b]);
	}
	v.pages_total = rs->total;
	v.pages_present = atomic_load(&rs->done);
	v.pages_demand = atomic_load(&rs->pages_demand);
	v.pages_prefetched = atomic_load(&rs->pages_prefetched);
	v.pages_filled = atomic_load(&rs->pages_filled);
	v.pages_zero = atomic_load(&rs->pages_zero);
	v.bytes_read = atomic_load(&rs->bytes_read);
	v.inflight_hits = atomic_load(&rs->inflight_hits);
	v.read_errors = atomic_load(&rs->read_errors);
	v.pages_recorded = rs__recorded(rs);
	v.complete_ns = atomic_load(&rs->complete_ns);
	v.pages_hole = atomic_load(&rs->pages_hole);
	v.pages_around = atomic_load(&rs->pages_around);
	v.size = s->size;
	memcpy(s, &v, s->size < sizeof(v) ? s->size : sizeof(v));	/* a 0.3 caller's fields */
	if (s->size > sizeof(v))
		memset((char *)s + sizeof(v), 0, s->size - sizeof(v));	/* a newer caller's fields */
	return 0;
}
UFFD_EXPORT_OWN(restore_stats);

UFFD_EXPORT uint64_t uffd_hist_quantile(const uint64_t *h, double q)
{
	uint64_t total = 0, need, seen = 0;

	if (!h || !(q > 0 && q <= 1))
		return 0;
	for (int b = 0; b < UFFD_HIST_BUCKETS; b++)
		total += h[b];
	if (!total)
		return 0;
	need = (uint64_t)(q * (double)total + 0.999999);
	if (need < 1)
		need = 1;
	for (int b = 0; b < UFFD_HIST_BUCKETS; b++) {
		seen += h[b];
		if (seen >= need)
			return b + 1 < 64 ? (uint64_t)1 << (b + 1) : UINT64_MAX;
	}
	return (uint64_t)1 << UFFD_HIST_BUCKETS;
}
UFFD_EXPORT_OWN(hist_quantile);

UFFD_EXPORT void uffd_restore_free(struct uffd_restore *rs)
{
	if (!rs)
		return;
	if (rs->started) {
		atomic_store(&rs->stop, true);
		leave_loop(rs);
		rs__io_stop(rs);
		wake_all(rs);
	}
	for (unsigned i = 0; i < rs->nregs; i++) {
		uffd_source_unref(rs->regs[i].src);
		if (!rs->regs[i].st_map)
			free(rs->regs[i].st);
	}
	rs__trace_free(rs);
	free(rs->regs);
	pthread_mutex_destroy(&rs->qlock);
	pthread_mutex_destroy(&rs->lock);
	pthread_mutex_destroy(&rs->rec_lock);
	pthread_cond_destroy(&rs->cond);
	free(rs);
}
UFFD_EXPORT_OWN(restore_free);
