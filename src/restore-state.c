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
#include <unistd.h>

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

/*
 * A page went from not done to done: count it. The last one ends the
 * restore, and only the restore thread ends it: whoever made that page
 * done (a loop thread serving a demand fault, too) wakes it, or it may
 * sleep on with nothing left to read.
 */
static void count_done(struct uffd_restore *rs, enum rs_page from, enum rs_page to)
{
	uint64_t one = 1;

	if (is_done(from) || !is_done(to) || atomic_fetch_add(&rs->done, 1) + 1 != rs->total)
		return;
	if (write(rs->efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is full, so the thread is being woken anyway */
	}
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

void rs__demand_end(struct uffd_restore *rs, const struct rs_fault *f, size_t upto,
		    enum rs_page bad_to)
{
	struct rs_region *g = f->g;
	uint64_t in = 0, around = 0;

	for (size_t i = 0; i < f->n; i++) {
		size_t p = f->first + i;
		enum rs_page to = i < upto ? PG_PRESENT : p == f->page ? bad_to : PG_ABSENT;

		if (rs__page_cas(rs, g, p, PG_INFLIGHT, to) && to == PG_PRESENT) {
			in++;
			around += p != f->page;
		}
	}
	if (upto < f->n)	/* faults deferred on them come again */
		uffd_wake(uffd_region_uffd(g->r), (void *)rs__addr(g, f->first + upto), (f->n - upto) * g->ps);
	atomic_fetch_add(&rs->pages_demand, in);
	atomic_fetch_add(&rs->pages_around, around);
	rs__waiters_done(rs, g, f->first, f->n);
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
 * Pages [i, j) of the run from `first` on, seen not ZERO just before:
 * one ioctl, COPY from src or CONTINUE. Returns 0 or -errno; *k pages
 * were resolved, or stepped over (mapped already: a fault raced us, or
 * gone: unmapped under us, counted present), their threads woken.
 */
static int resolve(struct uffd_restore *rs, struct rs_region *g, size_t first, size_t i,
		   size_t j, const char *src, size_t *k)
{
	struct uffd *u = uffd_region_uffd(g->r);
	uintptr_t dst = rs__addr(g, first + i);
	int64_t count = 0;
	int err = uffd__op_ioctl(u->fd, g->cont ? UFFD_OP_CONTINUE : UFFD_OP_COPY, dst,
				 src ? (uintptr_t)src + i * g->ps : 0, (j - i) * g->ps, 0, &count);

	*k = err ? 0 : j - i;
	if (err && count > 0) {	/* partial progress: the rest is looked at again */
		*k = (size_t)count / g->ps;
		return 0;
	}
	if (err == -EEXIST || err == -ENOENT) {
		if (err == -ENOENT)
			rs__page_gone(rs, g, first + i);
		uffd_wake(u, (void *)dst, g->ps);
		*k = 1;
		return 0;
	}
	if (err && err != -EAGAIN)	/* -EAGAIN: pending events, retried */
		return uffd__err(err, "restore: %s of page %zu of region %u: %s", g->cont ? "UFFDIO_CONTINUE" : "UFFDIO_COPY",
				 first + i, g->idx, uffd__errname(err));
	return err;
}

/*
 * A page given back (ZERO) must never get the file's contents again, and
 * the kernel zaps it when the REMOVE message is *read*, before anyone
 * could look at it. The loop thread that reads the message marks its
 * pages ZERO (rs__given_back()) in the same step of the handle's resolve
 * gate as the read (resolve-gate.c), and each run here, the look at its
 * pages' states and its ioctl, is a section of that gate: the two never
 * overlap. Every ioctl covers only pages seen not ZERO in its section,
 * looked at again after any partial progress. For a page of a run,
 * against a REMOVE covering it:
 *  - read after our section: our ioctl is over before the read, and the
 *    zap, which follows the read, removes what it mapped;
 *  - read before our section: its reading step, hooks included, ended
 *    before our look, which sees the page ZERO and skips it.
 * (And a REMOVE queued but unread during the ioctl fails it with -EAGAIN
 * through mmap_changing; the retry looks again.) A page mapped in another
 * process cannot be taken back: this is why the order is enforced before
 * the ioctl, not checked after it.
 * ZERO pages get no file data: their resolution is skipped (a CONTINUE
 * region's alias gets its hole back) and their waiters are woken, to
 * fault again for a zero page.
 */
int rs__install(struct uffd_restore *rs, struct rs_region *g, size_t first, size_t n,
		const char *src, size_t *done)
{
	struct uffd *u = uffd_region_uffd(g->r);
	size_t i = *done / g->ps;

	while (i < n) {
		size_t j = i, k = 0;
		int err = 0;

		uffd__rgate_install_begin(u);
		while (j < n && rs__page(g, first + j) != PG_ZERO)
			j++;
		if (j > i)
			err = resolve(rs, g, first, i, j, src, &k);
		uffd__rgate_install_end(u);
		if (j == i) {
			if (g->cont)
				uffd_region_discard(g->r, (first + i) * g->ps, g->ps);
			uffd_wake(u, (void *)rs__addr(g, first + i), g->ps);
			*done = ++i * g->ps;
			continue;
		}
		i += k;
		*done = i * g->ps;
		if (err)
			return err;
	}
	return 0;
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

void rs__detach_late(struct uffd_restore *rs)
{
	struct timespec nap = { .tv_nsec = 50000 };

	if (atomic_exchange(&rs->detached, true))
		return;
	while (!uffd__gate_enter())
		nanosleep(&nap, NULL);
	detach(rs);
	uffd__gate_leave();
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
	if (((rs->o.flags & UFFD_RESTORE_DETACH) || atomic_load(&rs->finishing)) &&
	    !atomic_exchange(&rs->detached, true))
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
