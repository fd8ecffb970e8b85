/* SPDX-License-Identifier: MIT */
/*
 * The restore's handlers, on loop threads inside a fork-gate section:
 * demand faults (resolved at once when the source has the page at hand,
 * e.g. in the file's page cache, else queued for the restore thread, or
 * deferred on a read in flight), pages the owner gives back (REMOVE, heard
 * of as soon as it is read) and ranges it unmaps.
 * Cheap and non-blocking: one non-blocking read, one resolution.
 */
#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "restore-internal.h"

/* A bounce buffer of the loop threads' pool, or NULL when all are taken. */
static char *lbuf_take(struct uffd_restore *rs)
{
	for (unsigned i = 0; i < rs->nlbufs; i++)
		if (!atomic_exchange(&rs->lbusy[i], true))
			return rs->lbufs + (size_t)i * rs->maxps;
	return NULL;
}

static void lbuf_put(struct uffd_restore *rs, char *b)
{
	if (b)
		atomic_store(&rs->lbusy[(size_t)(b - rs->lbufs) / rs->maxps], false);
}

/*
 * A page that is present, or given back: MINOR -> CONTINUE (the page cache
 * has it: shared memory keeps its contents on MADV_DONTNEED); MISSING -> a
 * zero page (copied on huge pages, which have none). Mapped already: the
 * thread is only woken (a fault that raced the resolution).
 */
static int serve_zero(struct uffd_restore *rs, struct rs_region *g, size_t page, int kind)
{
	struct uffd *u = uffd_region_uffd(g->r);
	uintptr_t a = rs__addr(g, page);
	enum rs_page was = rs__page(g, page);
	int err;

	if (kind == UFFD_FAULT_MINOR)
		err = uffd__resolve(u, UFFD_OP_CONTINUE, a, 0, g->ps, UFFD_SKIP_EXISTING, g->ps, NULL);
	else if (g->ps > u->page_size)
		err = uffd__resolve(u, UFFD_OP_COPY, a, (uintptr_t)rs->zero, g->ps, UFFD_SKIP_EXISTING, g->ps, NULL);
	else
		err = uffd__resolve(u, UFFD_OP_ZEROPAGE, a, 0, g->ps, UFFD_SKIP_EXISTING, g->ps, NULL);
	if (!err && was == PG_ZERO && rs__page_cas(rs, g, page, PG_ZERO, PG_PRESENT) &&
	    kind != UFFD_FAULT_MINOR)
		atomic_fetch_add(&rs->pages_zero, 1);
	if (!err && was == PG_HOLE)	/* counted in pages_hole at the start */
		rs__page_cas(rs, g, page, PG_HOLE, PG_PRESENT);
	return err;
}

/*
 * Waits for the read in flight: the resolution of its run wakes the thread.
 * The waiter is registered, then the state looked at again under the same
 * lock the completion takes after changing it: false when the read ended
 * meanwhile (the caller looks at the page again).
 */
static bool defer_on(struct uffd_restore *rs, struct rs_region *g, size_t page,
		     const struct rs_fault *f)
{
	bool still;

	pthread_mutex_lock(&rs->qlock);
	still = rs__page(g, page) == PG_INFLIGHT;
	if (still && rs->nwaiters < rs->wcap)
		rs->waiters[rs->nwaiters++] = *f;
	pthread_mutex_unlock(&rs->qlock);
	return still;
}

/* The read gave the whole run: resolve it. */
static int install_now(struct uffd_restore *rs, struct rs_region *g, const char *buf,
		       const struct rs_fault *f)
{
	size_t done = 0;
	int err = rs__install(rs, g, f->first, f->n, buf, &done);

	rs__demand_end(rs, f, err ? done / g->ps : f->n, PG_ABSENT);
	if (err == -ESRCH)
		rs__owner_gone(rs);
	if (err)
		return err == -EAGAIN ? UFFD_RETRY : err;
	atomic_fetch_add(&rs->bytes_read, f->n * g->ps);
	rs__latency(rs, f->kind, f->t0);
	return UFFD_HANDLED;
}

/*
 * Demand fault-around: the faulting page (claimed) and the absent pages
 * next to it in its aligned window, claimed too (INFLIGHT). The window
 * stops at the first page that is not ABSENT on either side (a page
 * present, given back, a hole or in flight never gets a read) and at the
 * region's end. A fault on the page right after the previous window is a
 * sequential one: the window doubles, forward from it, up to around_max.
 * None while recording: a page brought in around a fault is never
 * faulted on, and the trace must name every page the guest touched.
 * None in a region whose owner gives pages back: a window reads pages
 * no thread waits for, which the owner may be giving back right then
 * (reads for nothing; the resolve gate keeps their bytes off pages given
 * back either way, see rs__install()); a page a thread faults on is
 * rarely given back meanwhile.
 * seq_next and seq_win are hints shared by the loop threads: a race only
 * changes a window's size.
 */
static void claim_around(struct uffd_restore *rs, struct rs_region *g, struct rs_fault *f)
{
	size_t win = rs->o.fault_around / g->ps, lo, hi;

	f->first = f->page;
	f->n = 1;
	if (win < 2 || atomic_load(&rs->rec_on) || atomic_load(&g->gave_back))
		return;
	if (f->page && f->page == atomic_load_explicit(&g->seq_next, memory_order_relaxed)) {
		size_t w = atomic_load_explicit(&g->seq_win, memory_order_relaxed) * 2, max = rs->around_max / g->ps;

		win = w < win ? win : w > max ? max : w;
		lo = f->page;
	} else {
		lo = f->page - f->page % win;
	}
	hi = g->npages - lo < win ? g->npages : lo + win;
	while (f->first > lo && rs__page_cas(rs, g, f->first - 1, PG_ABSENT, PG_INFLIGHT)) {
		f->first--;
		f->n++;
	}
	while (f->first + f->n < hi && rs__page_cas(rs, g, f->first + f->n, PG_ABSENT, PG_INFLIGHT))
		f->n++;
	atomic_store_explicit(&g->seq_next, f->first + f->n, memory_order_relaxed);
	atomic_store_explicit(&g->seq_win, win, memory_order_relaxed);
}

/*
 * The run is ours to read (INFLIGHT). A single page at once when its
 * source has the bytes at hand (a page-cache hit, a cached frame: a COPY
 * straight from the page cache when the source maps its file), else
 * on the restore thread; when that thread's queue is full the fault comes
 * back later. A fault-around window always goes to the restore thread:
 * installed here, on the loop thread, windows left KVM guests hanging on
 * a fault that was never woken (17 of 100 restores of the kvm suite's
 * hundred test, with a balloon giving pages back; none through the
 * restore thread). The cause is not understood yet.
 */
static int read_run(struct uffd_restore *rs, struct rs_region *g, const struct rs_fault *f)
{
	uint64_t off = g->offset + f->first * g->ps, len = f->n * g->ps;
	bool now = f->n == 1;
	const char *map = now && !g->cont && uffd__source_cached(g->src, off, len) ?
			  uffd__source_map(g->src, off, len) : NULL;
	char *buf = g->cont || !now || map ? NULL : lbuf_take(rs);
	char *dst = !now || map ? NULL : g->cont ? (char *)uffd_region_alias(g->r) + f->first * g->ps : buf;
	int err = map ? 0 : dst ? uffd_source_read_nowait(g->src, off, len, dst) : -EAGAIN;
	int v;

	if (!err)
		v = install_now(rs, g, map ? map : buf, f);
	else if (err != -EAGAIN) {
		rs__demand_end(rs, f, 0, PG_BAD);
		rs__io_failed(rs);
		v = uffd__err(err, "restore: reading pages %zu-%zu of region %u from %s failed (%s)",
			      f->first, f->first + f->n - 1, g->idx, uffd_source_name(g->src),
			      uffd__errname(err));
	} else if (rs__io_demand(rs, f))
		v = UFFD_DEFER;
	else {
		rs__demand_end(rs, f, 0, PG_ABSENT);
		v = UFFD_RETRY;	/* the queue is full: once the restore thread caught up */
	}
	lbuf_put(rs, buf);
	return v;
}

/* The loop calls it for faults in g's region only: uf->offset is g's. */
static int on_fault(void *ctx, struct uffd_fault *uf)
{
	struct rs_region *g = ctx;
	struct uffd_restore *rs = g->rs;
	struct rs_fault f = { .g = g, .page = uf->offset / g->ps, .t0 = rs__now_ns(),
			      .kind = uf->kind };
	atomic_fetch_add(&rs->faults[f.kind], 1);
	if (rs->recording)
		rs__record(rs, g, f.page);
	for (;;) {
		switch (rs__page(g, f.page)) {
		case PG_PRESENT:
		case PG_ZERO:
		case PG_HOLE: {
			int err = serve_zero(rs, g, f.page, f.kind);

			if (err == -EAGAIN)
				return UFFD_RETRY;
			if (err == -ESRCH)
				rs__owner_gone(rs);
			if (!err)
				rs__latency(rs, f.kind, f.t0);
			return err ? err : UFFD_HANDLED;
		}
		case PG_INFLIGHT:
			if (!defer_on(rs, g, f.page, &f))
				continue;
			atomic_fetch_add(&rs->inflight_hits, 1);
			return UFFD_DEFER;
		case PG_BAD:
			return uffd__err(-EIO, "restore: page %zu of region %u could not be read from %s",
					 f.page, g->idx, uffd_source_name(g->src));
		case PG_ABSENT:
			if (rs__page_cas(rs, g, f.page, PG_ABSENT, PG_INFLIGHT)) {
				claim_around(rs, g, &f);
				return read_run(rs, g, &f);
			}
			continue;
		}
	}
}

/* Pages [first, last) of g covered by [start, start+len). */
static bool span(const struct rs_region *g, void *start, size_t len, size_t *first, size_t *last)
{
	uintptr_t base = (uintptr_t)uffd_region_base(g->r), s = (uintptr_t)start;
	uintptr_t end = s + len, rend = base + g->npages * g->ps;

	if (end <= base || s >= rend)
		return false;
	s = s < base ? base : s;
	end = end > rend ? rend : end;
	*first = (s - base) / g->ps;
	*last = (end - base + g->ps - 1) / g->ps;
	return true;
}

/* fn on every page of the regions of rs that [start, start+len) covers. */
static void each_page(struct uffd_restore *rs, void *start, size_t len,
		      void (*fn)(struct uffd_restore *, struct rs_region *, size_t))
{
	size_t first, last;

	for (unsigned i = 0; i < rs->nregs; i++)
		if (span(&rs->regs[i], start, len, &first, &last))
			for (size_t p = first; p < last; p++)
				fn(rs, &rs->regs[i], p);
}

/*
 * Given back: zeros from now on (a read in flight must not install file
 * data on them). Called by the loop thread that read the REMOVE, in the
 * same step of the resolve gate as the read, before the fork gate and any
 * handler (see rs__install()): only atomic stores, no lock, no allocation.
 */
void rs__given_back(void *ctx, uint64_t off, uint64_t len)
{
	struct rs_region *g = ctx;
	size_t first = (size_t)(off / g->ps), last = (size_t)((off + len + g->ps - 1) / g->ps);

	atomic_store(&g->gave_back, true);
	for (size_t p = first; p < last && p < g->npages; p++)
		rs__page_zero(g->rs, g, p);
}

/* Unmapped: nothing to bring in there any more; they count as present. */
static void on_unmap(void *ctx, void *start, size_t len)
{
	each_page(((struct rs_region *)ctx)->rs, start, len, rs__page_gone);
}

const struct uffd_handlers rs__handlers = {
	.missing = on_fault,
	.minor = on_fault,
	.unmap = on_unmap,
};
