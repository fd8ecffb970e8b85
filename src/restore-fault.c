/* SPDX-License-Identifier: MIT */
/*
 * The restore's handlers, on loop threads inside a fork-gate section:
 * demand faults (resolved at once when the source has the page at hand,
 * e.g. in the file's page cache, else queued for the restore thread, or deferred on a read in
 * flight), pages the owner gives back (REMOVE) and ranges it unmaps.
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

/* The read gave the whole page: resolve it. */
static int install_one(struct uffd_restore *rs, struct rs_region *g, size_t page,
		       const char *buf, const struct rs_fault *f)
{
	size_t done = 0;
	int err = rs__install(rs, g, page, 1, buf, &done);

	if (err) {
		rs__page_cas(rs, g, page, PG_INFLIGHT, PG_ABSENT);
		if (err == -ESRCH)
			rs__owner_gone(rs);
		return err == -EAGAIN ? UFFD_RETRY : err;
	}
	if (rs__page_cas(rs, g, page, PG_INFLIGHT, PG_PRESENT))
		atomic_fetch_add(&rs->pages_demand, 1);
	atomic_fetch_add(&rs->bytes_read, g->ps);
	rs__latency(rs, f->kind, f->t0);
	return UFFD_HANDLED;
}

/*
 * The page is ours to read (INFLIGHT). At once when its source has the
 * bytes at hand (a page-cache hit, a cached frame), else on the restore
 * thread; when that thread's queue is full the fault comes back later.
 */
static int read_page(struct uffd_restore *rs, struct rs_region *g, size_t page,
		     const struct rs_fault *f)
{
	char *buf = g->cont ? NULL : lbuf_take(rs);
	char *dst = g->cont ? (char *)uffd_region_alias(g->r) + page * g->ps : buf;
	int err = dst ? uffd_source_read_nowait(g->src, g->offset + page * g->ps, g->ps, dst) : -EAGAIN;
	int v;

	if (!err)
		v = install_one(rs, g, page, buf, f);
	else if (err != -EAGAIN) {
		rs__page_cas(rs, g, page, PG_INFLIGHT, PG_BAD);
		rs__io_failed(rs);
		v = uffd__err(err, "restore: reading page %zu of region %u from %s failed (%s)",
			      page, g->idx, uffd_source_name(g->src), uffd__errname(err));
	} else if (rs__io_demand(rs, f))
		v = UFFD_DEFER;
	else {
		rs__page_cas(rs, g, page, PG_INFLIGHT, PG_ABSENT);
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
			if (rs__page_cas(rs, g, f.page, PG_ABSENT, PG_INFLIGHT))
				return read_page(rs, g, f.page, &f);
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

/* Given back: zeros from now on (a read in flight must not install file data on them). */
static void on_remove(void *ctx, void *start, size_t len)
{
	each_page(((struct rs_region *)ctx)->rs, start, len, rs__page_zero);
}

/* Unmapped: nothing to bring in there any more; they count as present. */
static void on_unmap(void *ctx, void *start, size_t len)
{
	each_page(((struct rs_region *)ctx)->rs, start, len, rs__page_gone);
}

const struct uffd_handlers rs__handlers = {
	.missing = on_fault,
	.minor = on_fault,
	.remove = on_remove,
	.unmap = on_unmap,
};
