/* SPDX-License-Identifier: MIT */
/*
 * What the loop-side handlers (restore-fault.c), the restore thread
 * (restore-io.c) and the object (restore.c) share: page states, counters
 * and latencies, faults waiting on reads, resolving a run of pages, and
 * the end of a restore (detach, on_complete, the waiters of
 * uffd_restore_wait()). It calls none of them.
 */
#include <errno.h>
#include <time.h>

#include "restore-internal.h"

uint64_t rs__now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- page states ---- */

enum rs_page rs__page(const struct rs_region *g, size_t page)
{
	return (enum rs_page)atomic_load(&g->st[page]);
}

static bool is_done(enum rs_page s)
{
	return s == PG_PRESENT || s == PG_ZERO || s == PG_HOLE;
}

/* A page went from not done to done: count it (the last one ends the restore). */
static void count_done(struct uffd_restore *rs, enum rs_page from, enum rs_page to)
{
	if (!is_done(from) && is_done(to))
		atomic_fetch_add(&rs->done, 1);
}

bool rs__page_cas(struct uffd_restore *rs, struct rs_region *g, size_t page,
		  enum rs_page from, enum rs_page to)
{
	unsigned char want = (unsigned char)from;

	if (!atomic_compare_exchange_strong(&g->st[page], &want, (unsigned char)to))
		return false;
	count_done(rs, from, to);
	return true;
}

static void page_set(struct uffd_restore *rs, struct rs_region *g, size_t page, enum rs_page to)
{
	count_done(rs, (enum rs_page)atomic_exchange(&g->st[page], (unsigned char)to), to);
}

/*
 * Pages wholly inside ranges the source says are zeros or not there: HOLE,
 * done from the start, served as zero pages, never read, and left alone by
 * a detach (an absent page reads zeros, as a served one would).
 */
int rs__holes(struct uffd_restore *rs, struct rs_region *g)
{
	uint64_t off = g->offset, end = g->offset + (uint64_t)g->npages * g->ps, run;

	while (off < end) {
		int kind = uffd_source_extent(g->src, off, end - off, &run);

		if (kind < 0)
			return kind;
		if (kind != UFFD_EXTENT_DATA) {
			size_t first = (size_t)((off - g->offset + g->ps - 1) / g->ps);
			size_t last = (size_t)((off + run - g->offset) / g->ps);

			for (size_t p = first; p < last; p++)
				if (rs__page_cas(rs, g, p, PG_ABSENT, PG_HOLE))
					atomic_fetch_add(&rs->pages_hole, 1);
		}
		off += run;
	}
	return 0;
}

void rs__page_zero(struct uffd_restore *rs, struct rs_region *g, size_t page)
{
	page_set(rs, g, page, PG_ZERO);
}

void rs__page_gone(struct uffd_restore *rs, struct rs_region *g, size_t page)
{
	page_set(rs, g, page, PG_PRESENT);
}

uintptr_t rs__addr(const struct rs_region *g, size_t page)
{
	return (uintptr_t)uffd_region_base(g->r) + page * g->ps;
}

bool rs__all_done(struct uffd_restore *rs)
{
	return atomic_load(&rs->done) == rs->total;
}

/* ---- counters ---- */

static unsigned bucket(uint64_t ns)
{
	unsigned b = ns ? 63 - (unsigned)__builtin_clzll(ns) : 0;

	return b < UFFD_HIST_BUCKETS ? b : UFFD_HIST_BUCKETS - 1;
}

void rs__latency(struct uffd_restore *rs, int kind, uint64_t t0)
{
	uint64_t now = rs__now_ns();

	if (kind >= 0 && kind < 3)
		atomic_fetch_add(&rs->lat[kind][bucket(now > t0 ? now - t0 : 0)], 1);
}

void rs__waiters_done(struct uffd_restore *rs, struct rs_region *g, size_t first, size_t n)
{
	size_t k = 0;

	pthread_mutex_lock(&rs->qlock);
	for (size_t i = 0; i < rs->nwaiters; i++) {
		struct rs_fault *w = &rs->waiters[i];

		if (w->g == g && w->page >= first && w->page < first + n)
			rs__latency(rs, w->kind, w->t0);
		else
			rs->waiters[k++] = *w;
	}
	rs->nwaiters = k;
	pthread_mutex_unlock(&rs->qlock);
}

/* The end: wake uffd_restore_wait() with err unless it has a result already. */
static void settle(struct uffd_restore *rs, int err)
{
	pthread_mutex_lock(&rs->lock);
	if (!rs->finished && !rs->err)
		rs->err = err;
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
}

void rs__io_failed(struct uffd_restore *rs)
{
	atomic_fetch_add(&rs->read_errors, 1);
	settle(rs, -EIO);
}

void rs__owner_gone(struct uffd_restore *rs)
{
	atomic_store(&rs->stop, true);
	pthread_mutex_lock(&rs->lock);
	rs->err = -ESRCH;	/* stronger than -EIO: nothing can complete now */
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
}

/* ---- resolving a run ---- */

/*
 * One resolution of pages [first, first+n) from byte *done of the run
 * on: COPY from src or CONTINUE. A page that is no longer mapped
 * (-ENOENT: unmapped under us) counts as present and is stepped over.
 */
static int resolve(struct uffd_restore *rs, struct rs_region *g, size_t first, size_t n,
		   const char *src, size_t *done)
{
	struct uffd *u = uffd_region_uffd(g->r);
	size_t len = n * g->ps, d;
	int err = 0;

	while (*done < len) {
		uintptr_t dst = rs__addr(g, first) + *done;

		err = g->cont ? uffd__resolve(u, UFFD_OP_CONTINUE, dst, 0, len - *done,
					      UFFD_SKIP_EXISTING, g->ps, &d)
			      : uffd__resolve(u, UFFD_OP_COPY, dst, (uintptr_t)src + *done,
					      len - *done, UFFD_SKIP_EXISTING, g->ps, &d);
		*done += d;
		if (err != -ENOENT)
			break;
		rs__page_gone(rs, g, first + *done / g->ps);	/* woken by the call */
		*done += g->ps;
		err = 0;
	}
	return err;
}

/*
 * Pages of the run that became ZERO while their read was in flight get no
 * file data: their resolution is skipped (a CONTINUE region's alias gets
 * its hole back) and their waiters are woken, to fault again for a zero
 * page. The remaining window: a REMOVE event the loop has read but not yet
 * handed to restore_remove() while this COPY runs -- the kernel then zaps
 * the page after the copy (MADV_DONTNEED waits only for the event's read),
 * so the owner still sees zeros; only a COPY landing between the zap and
 * the callback could map file data on a given-back page.
 */
int rs__install(struct uffd_restore *rs, struct rs_region *g, size_t first, size_t n,
		const char *src, size_t *done)
{
	struct uffd *u = uffd_region_uffd(g->r);
	size_t i = *done / g->ps;
	int err = 0;

	while (!err && i < n) {
		size_t j = i, sub = 0;

		if (rs__page(g, first + i) == PG_ZERO) {
			if (g->cont)
				uffd_region_discard(g->r, (first + i) * g->ps, g->ps);
			uffd_wake(u, (void *)rs__addr(g, first + i), g->ps);
			*done = ++i * g->ps;
			continue;
		}
		while (j < n && rs__page(g, first + j) != PG_ZERO)
			j++;
		err = resolve(rs, g, first + i, j - i, src ? src + i * g->ps : NULL, &sub);
		*done = i * g->ps + sub;
		i = j;
	}
	return err;
}

/* ---- the end ---- */

/* Unregisters every region (the owner's addresses for foreign ones). */
static void detach(struct uffd_restore *rs)
{
	for (unsigned i = 0; i < rs->nregs; i++) {
		struct rs_region *g = &rs->regs[i];

		uffd_unregister(uffd_region_uffd(g->r), uffd_region_base(g->r),
				uffd_region_length(g->r));
	}
}

/*
 * Pages left ZERO need nothing before detaching: an unregistered page that
 * is absent reads zeros (anonymous memory, a hole in a file) or keeps its
 * page-cache contents (MADV_DONTNEED on shared memory), exactly what a
 * fault served by the restore would have given.
 */
void rs__finish(struct uffd_restore *rs)
{
	struct timespec nap = { .tv_nsec = 50000 };

	if (atomic_load(&rs->complete_ns))
		return;
	atomic_store(&rs->complete_ns, rs__now_ns() - rs->start_ns ?: 1);
	/* Unregistering may allocate (the handle's range table) and on_complete is user code. */
	while (!uffd__gate_enter())
		nanosleep(&nap, NULL);
	if (rs->o.flags & UFFD_RESTORE_DETACH)
		detach(rs);
	if (rs->o.on_complete)
		rs->o.on_complete(rs->o.ctx, rs);
	uffd__gate_leave();
	pthread_mutex_lock(&rs->lock);
	rs->finished = true;
	rs->err = 0;
	pthread_cond_broadcast(&rs->cond);
	pthread_mutex_unlock(&rs->lock);
}
