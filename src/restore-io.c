/* SPDX-License-Identifier: MIT */
/*
 * The restore thread and its io_uring: demand reads first (never
 * limited but by their slots, and looked for between two prefetch runs
 * and two completions), then the trace's pages (a dense block of it
 * whole), then the fill, merged into runs of adjacent absent pages;
 * read-ahead hints a window
 * ahead of the replay; each completed read resolved with one COPY (from
 * its bounce buffer) or CONTINUE (it was read into the alias view), and
 * the part of a run that arrived first resolved before the rest when the
 * source says so (partial). Reads go to the regions' page sources, which
 * run in this thread's ring (source-env.c): their own requests, their
 * descriptors polled, their process calls.
 * Everything it uses is allocated by rs__io_start(): it allocates nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "restore-internal.h"

#define TAG_EFD    1ull			/* low 3 bits not 0, POLL or IGNORE: see source-internal.h */
#define ADVISE_WINDOW (8u << 20)	/* bytes of the trace hinted ahead of the replay */
#define ADVISE_RUN (1u << 20)		/* bytes per hint at most */
#define RETRY_NS 200000ull		/* a resolution that met pending events: again after this */
#define LBUFS 4				/* loop threads reading at once without queueing */
#define QCAP 4096			/* demand faults queued */
#define WAITERS 1024			/* deferred faults whose latency is recorded */
#define REFUSED_NS 1000000ull		/* a read the source refused: again after this at the latest */
#define AROUND_SEQ_MAX (256u << 10)	/* a sequential fault-around window grows up to this */
#define STOP_NS 2000000000ull		/* at the end, how long sources may take to complete their reads */
#define SLICE_NS 1000000ull		/* prefetch installed in one turn at most, then the loop's other work */
/*
 * Prefetch fetches of a mapped source waiting on the disk at once: each
 * takes an io_uring worker, and a demand fault's fetch queues behind
 * every one of them when the workers (4 per CPU) are all taken.
 */
#define FETCH_MAX 4
#define DENSE_PCT 75			/* a replay block this dense in the trace is read whole */
#define REPLAY_BLOCK (64u << 10)		/* bytes of a block-wise replay's blocks (bench/RESULTS.md, issue 24) */
/*
 * Untraced bytes a replay's block read covers at most between two traced
 * pages (or a block's edge): a larger gap splits the read. About a round
 * trip's worth of a remote link (1 ms x 1.6 GiB/s, curl through the 1 ms
 * relay of bench/remote-bench.sh): fetching less costs less than a request.
 */
#define REPLAY_GAP (1u << 20)

/* ---- demand queue (any loop thread -> the restore thread) ---- */

static void poke(struct uffd_restore *rs)
{
	uint64_t one = 1;

	if (write(rs->efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is full, so the thread is being woken anyway */
	}
}

void rs__io_poke(struct uffd_restore *rs)
{
	poke(rs);
}

bool rs__io_demand(struct uffd_restore *rs, const struct rs_fault *f)
{
	bool ok;

	pthread_mutex_lock(&rs->qlock);
	ok = rs->qn < rs->qcap;
	if (ok) {
		rs->q[(rs->qhead + rs->qn++) % rs->qcap] = *f;
		atomic_fetch_add(&rs->dq, 1);
	}
	pthread_mutex_unlock(&rs->qlock);
	if (ok)
		poke(rs);
	return ok;
}

static bool demand_pop(struct uffd_restore *rs, struct rs_fault *f)
{
	bool ok;

	pthread_mutex_lock(&rs->qlock);
	ok = rs->qn > 0;
	if (ok) {
		*f = rs->q[rs->qhead];
		rs->qhead = (rs->qhead + 1) % rs->qcap;
		rs->qn--;
		atomic_fetch_sub(&rs->dq, 1);
	}
	pthread_mutex_unlock(&rs->qlock);
	return ok;
}

/* ---- submitting ---- */

static struct io_uring_sqe *sqe_get(struct uffd_restore *rs)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&rs->ring);

	if (!sqe) {	/* the ring is sized for every slot: only a full SQ waits for a submit */
		io_uring_submit(&rs->ring);
		sqe = io_uring_get_sqe(&rs->ring);
	}
	return sqe;
}

static void arm_efd(struct uffd_restore *rs)
{
	struct io_uring_sqe *sqe;

	if (rs->efd_armed || !(sqe = sqe_get(rs)))
		return;
	io_uring_prep_read(sqe, rs->efd, &rs->efd_val, sizeof(rs->efd_val), 0);
	io_uring_sqe_set_data64(sqe, TAG_EFD);
	rs->efd_armed = true;
}

static void read_done(struct uffd_restore *rs, struct rs_read *s, int res);
static void on_partial(struct uffd_source_req *req, size_t ready);

static void on_done(struct uffd_source_req *req, int res)
{
	struct rs_read *s = (struct rs_read *)(void *)req;
	struct uffd_restore *rs = req->ctx;

	if (s->counted)
		rs->fetching--;
	s->fetching = s->counted = false;
	read_done(rs, s, res);
}

/*
 * Hands the slot's run to its source; a refusal (-EAGAIN) is tried again
 * later. A COPY from a source with a mapping of its file (the file source)
 * installs from that mapping, the page cache: the source only makes sure
 * the pages are in (at once when cached), and no byte goes through the
 * bounce buffer. A CONTINUE region's read goes straight into the alias
 * view: one copy either way.
 */
static void issue(struct uffd_restore *rs, struct rs_read *s)
{
	struct rs_region *g = s->g;
	uint64_t off = g->offset + s->first * g->ps, len = s->n * g->ps;
	const char *map = g->cont ? NULL : uffd__source_map(g->src, off, len);
	int err;

	s->refused = false;
	s->from = map ? map : s->buf;
	s->req = (struct uffd_source_req){
		.off = off, .len = len,
		.buf = g->cont ? (char *)uffd_region_alias(g->r) + s->first * g->ps : s->buf,
		.done = on_done, .partial = on_partial, .ctx = rs };
	s->fetching = map != NULL;
	s->counted = false;
	err = map ? uffd__source_fetch(g->src, &s->req) : uffd_source_read(g->src, &s->req);
	if (!err && s->fetching && s->why != RD_DEMAND) {	/* not done at once: it waits on the disk */
		s->counted = true;
		rs->fetching++;
	}
	if (err)
		s->fetching = false;
	if (err == -EAGAIN)
		s->refused = true;
	else if (err)
		read_done(rs, s, err);
}

static void submit_read(struct uffd_restore *rs, struct rs_read *s)
{
	s->busy = true;
	s->retry = false;
	s->done = 0;
	if (s->why != RD_DEMAND)
		rs->prefetch_busy++;
	issue(rs, s);
}

/* Reads the sources refused: again now; *wait_ns bounded while some remain. */
static void resubmit(struct uffd_restore *rs, uint64_t *wait_ns)
{
	for (unsigned i = 0; i < rs->nrd; i++)
		if (rs->rd[i].busy && rs->rd[i].refused)
			issue(rs, &rs->rd[i]);
	for (unsigned i = 0; i < rs->nrd; i++)
		if (rs->rd[i].busy && rs->rd[i].refused && *wait_ns > REFUSED_NS)
			*wait_ns = REFUSED_NS;
}

static struct rs_read *free_slot(struct uffd_restore *rs, bool demand)
{
	unsigned from = demand ? rs->o.queue_depth : 0, to = demand ? rs->nrd : rs->o.queue_depth;

	for (unsigned i = from; i < to; i++)
		if (!rs->rd[i].busy)
			return &rs->rd[i];
	return NULL;
}

/*
 * Reads queued in the ring go to the kernel now. A read of cached pages
 * is done inside the submit (the copy happens there): submitted one by
 * one, not as a batch of queue_depth, each costs one run's copy before
 * the next look at the demand queue.
 */
static void flush_sq(struct uffd_restore *rs)
{
	if (io_uring_sq_ready(&rs->ring))
		io_uring_submit(&rs->ring);
}

/* Demand faults queued by the loop threads: each its page, read now. */
static void submit_demand(struct uffd_restore *rs)
{
	struct rs_read *s;
	struct rs_fault f;

	while ((s = free_slot(rs, true)) && demand_pop(rs, &f)) {
		s->g = f.g;
		s->first = f.first;
		s->n = f.n;
		s->why = RD_DEMAND;
		s->f = f;
		submit_read(rs, s);
	}
	flush_sq(rs);
}

/*
 * Claims the absent pages following the n claimed at page of g (file bytes
 * contiguous) into a run, up to the end of its block (blk bytes, aligned in
 * the source; 0: the slot's length): for the replay only pages of the
 * trace, wherever they are in its order; for the fill and a replay's whole
 * block every one. Runs also end where the source's blocks do.
 */
static size_t extend_run(struct uffd_restore *rs, struct rs_region *g, size_t page, size_t n, bool traced,
			 size_t blk, size_t end)
{
	size_t max = rs->slot_len / g->ps, block = uffd_source_block_size(g->src);
	bool align = block > g->ps && block <= rs->slot_len;	/* runs end where the source's blocks do */

	while (n < max && page + n < end &&
	       !(align && (g->offset + (page + n) * g->ps) % block == 0) &&
	       !(blk && (g->offset + (page + n) * g->ps) % blk == 0) &&
	       (!traced || trace__has(&rs->replay, g->idx, page + n)) &&
	       rs__page_cas(rs, g, page + n, PG_ABSENT, PG_INFLIGHT))
		n++;
	return n;
}

/*
 * The block a replay's read of page widens to, in bytes (0: none: the
 * run takes the trace's pages only). A source whose blocks are larger
 * than a page (a compressed frame) gives a whole block for about the cost
 * of one page of it (the decompression), and a replay's trace visits a
 * block's pages at many moments: the read of a traced page takes the
 * absent pages of its whole block with it, so that a block is read once,
 * not once per trace run in it. Block-wise replay: where the trace is
 * dense (at least DENSE_PCT of the pages of the aligned replay block are
 * in it), the block is read and resolved whole, its few untraced pages
 * with it: one read and one ioctl instead of one per trace run. With
 * the option replay_block, every traced page's block is read whole.
 */
static size_t replay_block(struct uffd_restore *rs, struct rs_region *g, size_t page)
{
	size_t block = uffd_source_block_size(g->src), b = rs->replay_block / g->ps, lo, n = 0;

	if (block > g->ps && block <= rs->slot_len)
		return block;
	if (rs->o.replay_block)		/* whole blocks asked for, dense or not */
		return rs->o.replay_block > g->ps && rs->o.replay_block <= rs->slot_len ? rs->o.replay_block : 0;
	if (b < 2 || rs->replay_block > rs->slot_len)
		return 0;
	lo = page - (g->offset / g->ps + page) % b;
	for (size_t p = lo; p < lo + b && p < g->npages; p++)
		n += trace__has(&rs->replay, g->idx, p);
	return n * 100 >= b * DENSE_PCT ? rs->replay_block : 0;
}

/*
 * The pages [*lo, *hi) of page's block (blk bytes) a replay's read covers:
 * the traced pages around page with no gap of more than REPLAY_GAP between
 * two of them, and the block's edges when as near. A sparse trace in a
 * large block (a remote source's chunk) is not read whole.
 */
static void replay_span(struct uffd_restore *rs, struct rs_region *g, size_t page, size_t blk, size_t *lo,
			size_t *hi)
{
	size_t gap = REPLAY_GAP / g->ps, into = (g->offset + page * g->ps) % blk / g->ps;
	size_t b0 = into > page ? 0 : page - into, b1 = page - into + blk / g->ps, t = page, p;

	b1 = b1 < g->npages ? b1 : g->npages;
	for (p = page; p > b0 && t - p <= gap;)	/* back: p - 1 is at most gap pages before t */
		if (trace__has(&rs->replay, g->idx, --p))
			t = p;
	*lo = t - b0 <= gap ? b0 : t;
	for (t = page, p = page + 1; p < b1 && p - t - 1 <= gap; p++)
		if (trace__has(&rs->replay, g->idx, p))
			t = p;
	*hi = b1 - t - 1 <= gap ? b1 : t + 1;
}

/* Claims the absent pages before page back to its block's start (blk bytes), not before lo; the first page of the run. */
static size_t widen_to_block(struct uffd_restore *rs, struct rs_region *g, size_t page, size_t blk, size_t lo)
{
	while (blk && page > lo && (g->offset + page * g->ps) % blk &&
	       rs__page_cas(rs, g, page - 1, PG_ABSENT, PG_INFLIGHT))
		page--;
	return page;
}

/* The next absent page of the trace, claimed; false at its end. */
static bool next_traced(struct uffd_restore *rs, struct rs_region **g, size_t *page)
{
	while (rs__replay_at(rs, rs->replay_next, g, page)) {
		rs->replay_next++;
		if (rs__page_cas(rs, *g, *page, PG_ABSENT, PG_INFLIGHT))
			return true;
	}
	return false;
}

/* The next absent page in address order, claimed; false when the fill is through. */
static bool next_unfilled(struct uffd_restore *rs, struct rs_region **g, size_t *page)
{
	for (unsigned i = 0; i < rs->nregs; i++) {
		struct rs_region *r = &rs->regs[i];

		while (r->fill_next < r->npages) {
			size_t p = r->fill_next++;

			if (rs__page_cas(rs, r, p, PG_ABSENT, PG_INFLIGHT)) {
				*g = r;
				*page = p;
				return true;
			}
		}
	}
	return false;
}

/* Whether the fill's rate allows a read now; else *wait_ns says when. */
static bool fill_allowed(struct uffd_restore *rs, uint64_t now, uint64_t *wait_ns)
{
	if (!rs->o.fill_rate || atomic_load(&rs->finishing) || rs->fill_due_ns <= now)
		return true;
	if (rs->fill_due_ns - now < *wait_ns)
		*wait_ns = rs->fill_due_ns - now;
	return false;
}

static void fill_charge(struct uffd_restore *rs, uint64_t now, uint64_t bytes)
{
	if (!rs->o.fill_rate)
		return;
	if (rs->fill_due_ns < now)
		rs->fill_due_ns = now;
	rs->fill_due_ns += bytes * 1000000000ull / rs->o.fill_rate;
}

/*
 * Trace pages, then (UFFD_RESTORE_FILL) the rest, while prefetch slots are
 * free. Demand faults queued meanwhile go first, between two runs: a run
 * of a cached mapped source is installed at once, in this loop.
 */
static void submit_prefetch(struct uffd_restore *rs, uint64_t *wait_ns)
{
	bool fill = (rs->o.flags & UFFD_RESTORE_FILL) || atomic_load(&rs->finishing);
	struct rs_region *g;
	struct rs_read *s;
	size_t page, blk, lo, hi;
	uint64_t t0 = rs__now_ns();

	while (rs->fetching < FETCH_MAX && (s = free_slot(rs, false))) {
		uint64_t now = rs__now_ns();

		if (atomic_load(&rs->dq))	/* demand first: a fault waits for one run at most */
			submit_demand(rs);
		if (now - t0 > SLICE_NS) {	/* runs installed at once (cached): the rest next turn */
			*wait_ns = 0;
			return;
		}
		if (next_traced(rs, &g, &page))
			s->why = RD_PREFETCH;
		else if (fill && fill_allowed(rs, now, wait_ns) && next_unfilled(rs, &g, &page))
			s->why = RD_FILL;
		else
			return;
		blk = s->why == RD_PREFETCH ? replay_block(rs, g, page) : 0;
		lo = 0;
		hi = g->npages;
		if (blk > REPLAY_GAP)
			replay_span(rs, g, page, blk, &lo, &hi);
		s->g = g;
		s->first = widen_to_block(rs, g, page, blk, lo);
		s->n = extend_run(rs, g, s->first, page - s->first + 1, s->why == RD_PREFETCH && !blk, blk, hi);
		if (s->why == RD_FILL)
			fill_charge(rs, now, s->n * g->ps);
		submit_read(rs, s);
		flush_sq(rs);
	}
}

/* WILLNEED hints on the trace's absent pages a window ahead of the replay. */
static void submit_advice(struct uffd_restore *rs)
{
	size_t window = ADVISE_WINDOW / (rs->maxps ? rs->maxps : 4096);
	struct rs_region *g, *h;
	size_t page, next;

	if (rs->advise_next < rs->replay_next)
		rs->advise_next = rs->replay_next;
	while (rs->advise_next < rs->replay_next + window &&
	       rs__replay_at(rs, rs->advise_next, &g, &page)) {
		size_t n = 1;

		rs->advise_next++;
		if (rs__page(g, page) != PG_ABSENT)
			continue;
		while (n * g->ps < ADVISE_RUN && rs__replay_at(rs, rs->advise_next, &h, &next) &&
		       h == g && next == page + n) {
			n++;
			rs->advise_next++;
		}
		uffd_source_advise(g->src, g->offset + page * g->ps, n * g->ps);
	}
}

/* ---- completions ---- */

static void count_pages(struct uffd_restore *rs, enum rs_why why, uint64_t n)
{
	atomic_uint_fast64_t *c = why == RD_DEMAND ? &rs->pages_demand
				  : why == RD_PREFETCH ? &rs->pages_prefetched : &rs->pages_filled;

	atomic_fetch_add(c, n);
}

/*
 * A fault-around window failed before its faulting page was in: a
 * neighbour's bytes may be what failed, so the neighbours go back to
 * absent (their own faults read them alone) and the faulting page, still
 * in flight, is read again alone in the same slot: only its own failure
 * fails it.
 */
static void window_failed(struct uffd_restore *rs, struct rs_read *s, size_t upto)
{
	struct rs_fault *f = &s->f;

	rs__demand_end(rs, f, upto, PG_INFLIGHT);	/* the faulting page stays ours */
	f->first = f->page;
	f->n = 1;
	s->first = f->page;
	s->n = 1;
	s->retry = false;
	s->done = 0;
	issue(rs, s);
}

/*
 * The run is over: pages before `upto` are in; the rest failed (back to
 * absent for a later demand fault, or bad when a demand read failed) and
 * their waiters are woken to fault again; a failure counts as a read
 * error unless the owner exited (-ESRCH: nothing failed to read). Then
 * the slot is free.
 */
static void run_end(struct uffd_restore *rs, struct rs_read *s, size_t upto, int err)
{
	struct rs_region *g = s->g;
	bool ending = atomic_load(&rs->stop);	/* reads cancelled at the end are no failure */
	uint64_t in = 0;

	if (s->why == RD_DEMAND && upto < s->n && s->n > 1 && !ending && err != -ESRCH &&
	    s->f.page >= s->first + upto) {
		window_failed(rs, s, upto);
		return;
	}
	if (upto < s->n && !ending && err != -ESRCH)
		rs__io_failed(rs);
	if (s->why == RD_DEMAND) {	/* its fault-around neighbours go back to absent */
		rs__demand_end(rs, &s->f, upto, ending ? PG_ABSENT : PG_BAD);
		rs__latency(rs, s->f.kind, s->f.t0);
		s->busy = false;
		s->refused = false;
		return;
	}
	for (size_t i = 0; i < s->n; i++) {
		enum rs_page to = i < upto ? PG_PRESENT : PG_ABSENT;

		in += rs__page_cas(rs, g, s->first + i, PG_INFLIGHT, to) && to == PG_PRESENT;
	}
	if (upto < s->n)
		uffd_wake(uffd_region_uffd(g->r), (void *)rs__addr(g, s->first + upto),
			  (s->n - upto) * g->ps);
	count_pages(rs, s->why, in);
	rs__waiters_done(rs, g, s->first, s->n);
	rs->prefetch_busy--;
	s->busy = false;
	s->refused = false;
}

/* Resolves the run (again, after -EAGAIN), or schedules a retry. */
static void install_run(struct uffd_restore *rs, struct rs_read *s)
{
	int err = rs__install(rs, s->g, s->first, s->n, s->g->cont ? NULL : s->from, &s->done);

	if (err == -EAGAIN) {
		s->retry = true;
		s->retry_ns = rs__now_ns() + RETRY_NS;
		return;
	}
	if (err == -ESRCH)
		rs__owner_gone(rs);
	run_end(rs, s, err ? s->done / s->g->ps : s->n, err);
}

static void read_done(struct uffd_restore *rs, struct rs_read *s, int res)
{
	if (!res) {
		atomic_fetch_add(&rs->bytes_read, (uint64_t)(s->n * s->g->ps));
		install_run(rs, s);
	} else {
		run_end(rs, s, s->done / s->g->ps, res);	/* what arrived in part is in; the rest failed */
	}
}

/* The first bytes of the run are there: resolve their pages now, and wake their waiters. */
static void on_partial(struct uffd_source_req *req, size_t ready)
{
	struct rs_read *s = (struct rs_read *)(void *)req;
	struct uffd_restore *rs = req->ctx;
	struct rs_region *g = s->g;
	size_t n = ready / g->ps, was = s->done / g->ps;
	int err;

	if (n > s->n)
		n = s->n;
	if (s->retry || n <= was)
		return;
	err = rs__install(rs, g, s->first, n, g->cont ? NULL : s->from, &s->done);
	if (err == -ESRCH)
		rs__owner_gone(rs);
	if (s->done / g->ps > was)
		rs__waiters_done(rs, g, s->first + was, s->done / g->ps - was);
}

static void reap(struct uffd_restore *rs)
{
	struct io_uring_cqe *cqe;

	while (io_uring_peek_cqe(&rs->ring, &cqe) == 0) {
		uint64_t tag = io_uring_cqe_get_data64(cqe);
		int res = cqe->res;

		io_uring_cqe_seen(&rs->ring, cqe);
		if (tag == TAG_EFD)
			rs->efd_armed = false;
		else
			uffd__env_cqe(&rs->env, tag, res);
		if (atomic_load(&rs->dq))	/* demand first: not behind the other completions' installs */
			submit_demand(rs);
	}
}

/*
 * Runs whose resolution is due again; every retry still pending after
 * that, the ones that just met -EAGAIN again included, bounds *wait_ns:
 * the thread's wait must end by the earliest one, or the run's pages stay
 * in flight and their faults wait forever.
 */
static void retry_due(struct uffd_restore *rs, uint64_t *wait_ns)
{
	uint64_t now = rs__now_ns();

	for (unsigned i = 0; i < rs->nrd; i++) {
		struct rs_read *s = &rs->rd[i];

		if (!s->busy || !s->retry)
			continue;
		if (s->retry_ns <= now) {
			install_run(rs, s);
			if (!s->busy || !s->retry)
				continue;
		}
		if (s->retry_ns <= now)
			*wait_ns = 0;
		else if (s->retry_ns - now < *wait_ns)
			*wait_ns = s->retry_ns - now;
	}
}

static void wait_cqe(struct uffd_restore *rs, uint64_t wait_ns)
{
	struct __kernel_timespec ts = { .tv_sec = (long long)(wait_ns / 1000000000u),
					.tv_nsec = (long long)(wait_ns % 1000000000u) };
	struct io_uring_cqe *cqe;

	io_uring_submit_and_wait_timeout(&rs->ring, &cqe, 1, wait_ns == UINT64_MAX ? NULL : &ts, NULL);
}

/* Slots whose source still has their read. */
static bool reads_busy(const struct uffd_restore *rs)
{
	for (unsigned i = 0; i < rs->nrd; i++)
		if (rs->rd[i].busy && !rs->rd[i].retry && !rs->rd[i].refused)
			return true;
	return false;
}

/* Slots not handed to a source (refused, or waiting to resolve again) end here. */
static void end_idle_slots(struct uffd_restore *rs)
{
	for (unsigned i = 0; i < rs->nrd; i++) {
		struct rs_read *s = &rs->rd[i];

		if (s->busy && (s->refused || s->retry))
			run_end(rs, s, s->done / s->g->ps, -ECANCELED);
	}
}

/*
 * The end: the sources are detached (each completes what it can, with
 * -ECANCELED), then every read still out is waited for: those of the
 * ring always (they write into our buffers), those of other sources for
 * STOP_NS at most -- past it the buffers are kept, never freed under a
 * late write.
 */
static void drain(struct uffd_restore *rs)
{
	uint64_t until = rs__now_ns() + STOP_NS;

	uffd__env_detach(&rs->env);
	end_idle_slots(rs);
	while (rs->env.ring_inflight || (reads_busy(rs) && rs__now_ns() < until)) {
		wait_cqe(rs, 10000000);
		reap(rs);
		uffd__env_process(&rs->env);
		end_idle_slots(rs);
	}
	rs->keep_bufs = reads_busy(rs);
}

static void *thread_main(void *arg)
{
	struct uffd_restore *rs = arg;

	while (!atomic_load(&rs->stop)) {
		uint64_t wait_ns = UINT64_MAX;

		arm_efd(rs);
		resubmit(rs, &wait_ns);
		submit_demand(rs);
		retry_due(rs, &wait_ns);
		submit_prefetch(rs, &wait_ns);
		retry_due(rs, &wait_ns);	/* runs installed at once just now may have met -EAGAIN */
		if (rs->has_replay)
			submit_advice(rs);
		if (rs__all_done(rs))
			rs__finish(rs);
		uffd__env_prepare(&rs->env, &wait_ns);
		wait_cqe(rs, wait_ns);
		reap(rs);
		uffd__env_process(&rs->env);
	}
	drain(rs);
	return NULL;
}

/* ---- start and stop ---- */

static unsigned demand_slots(size_t len)
{
	size_t n = (8u << 20) / len;

	return n < 4 ? 4 : n > 64 ? 64 : (unsigned)n;
}

/* One mapping: the read slots' buffers, the loop threads' buffers, the zero page. */
static int buffers(struct uffd_restore *rs)
{
	size_t ps = rs->maxps, slot = rs->o.max_read > ps ? rs->o.max_read : ps;
	size_t slots_len, lbufs_len;
	char *p;

	rs->slot_len = (slot + ps - 1) / ps * ps;
	slots_len = (size_t)rs->o.queue_depth * rs->slot_len + (size_t)rs->ndemand * rs->dlen;
	lbufs_len = LBUFS * ps;	/* the handlers read single pages only */
	rs->bufs_len = slots_len + lbufs_len + ps;
	p = mmap(NULL, rs->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return uffd__err(-ENOMEM, "uffd_restore_start: cannot map %zu bytes of read buffers", rs->bufs_len);
	rs->bufs = p;
	for (unsigned i = 0; i < rs->nrd; i++)
		rs->rd[i].buf = i < rs->o.queue_depth ? p + (size_t)i * rs->slot_len
			: p + (size_t)rs->o.queue_depth * rs->slot_len + (size_t)(i - rs->o.queue_depth) * rs->dlen;
	rs->lbufs = p + slots_len;
	rs->nlbufs = LBUFS;
	rs->zero = p + slots_len + lbufs_len;	/* never written */
	return 0;
}

/*
 * A source with a read depth (a remote one: a round trip costs what a
 * large read does) is read a whole block at a time: the prefetch slots
 * grow to its block, and their number becomes its depth (the largest
 * among the regions' sources), so that the bytes in flight are what it
 * asked for, not queue_depth blocks. With the slots a block long, a
 * replay's read of a traced page takes the absent pages of its block
 * (widen_to_block) and the fill's reads are whole blocks (extend_run).
 */
static void fit_sources(struct uffd_restore *rs)
{
	size_t slot = rs->o.max_read;
	unsigned depth = 0;

	for (unsigned i = 0; i < rs->nregs; i++) {
		struct uffd_source *s = rs->regs[i].src;

		if (!s->depth || s->block <= rs->o.max_read)
			continue;
		if (s->block > slot)
			slot = s->block;
		if (s->depth > depth)
			depth = s->depth;
	}
	if (!depth)
		return;
	rs->o.max_read = slot;
	rs->o.queue_depth = depth;
}

static int tables(struct uffd_restore *rs)
{
	rs->replay_block = REPLAY_BLOCK;
	size_t seq = rs->o.fault_around > AROUND_SEQ_MAX ? rs->o.fault_around : AROUND_SEQ_MAX;

	rs->around_max = rs->o.fault_around ? seq : 0;	/* fault_around <= around_max <= dlen */
	rs->dlen = rs->around_max > rs->maxps ? rs->around_max : rs->maxps;
	rs->ndemand = demand_slots(rs->dlen);
	rs->nrd = rs->o.queue_depth + rs->ndemand;
	rs->rd = calloc(rs->nrd, sizeof(*rs->rd));
	rs->q = calloc(QCAP, sizeof(*rs->q));
	rs->waiters = calloc(WAITERS, sizeof(*rs->waiters));
	rs->lbusy = calloc(LBUFS, sizeof(*rs->lbusy));
	if (!rs->rd || !rs->q || !rs->waiters || !rs->lbusy)
		return uffd__err(-ENOMEM, "uffd_restore_start: out of memory");
	rs->qcap = QCAP;
	rs->wcap = WAITERS;
	return 0;
}

static int ring(struct uffd_restore *rs)
{
	unsigned entries = 16;
	int err;

	while (entries < rs->nrd + 16)
		entries *= 2;
	rs->efd = eventfd(0, EFD_CLOEXEC);	/* blocking: io_uring polls it */
	if (rs->efd < 0)
		return uffd__err(-errno, "uffd_restore_start: eventfd: %s", uffd__errname(-errno));
	err = io_uring_queue_init(entries, &rs->ring, 0);
	if (err)
		return uffd__err(err, "uffd_restore_start: io_uring_queue_init: %s; io_uring may be disabled (sysctl kernel.io_uring_disabled)",
				 uffd__errname(err));
	rs->ring_ok = true;
	rs->env.ring = &rs->ring;
	rs->env.efd = rs->efd;
	return 0;
}

/* Each region's source joins this restore's thread (once, however many regions it serves). */
static int attach(struct uffd_restore *rs)
{
	int err;

	rs->env_ok = true;
	for (unsigned i = 0; i < rs->nregs; i++)
		if ((err = uffd_source_attach(rs->regs[i].src, &rs->env)))
			return err;
	return 0;
}

static int spawn(struct uffd_restore *rs)
{
	sigset_t all, old;
	int err;

	/* Signals go to the application's threads, not to ours. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(&rs->thread, NULL, thread_main, rs);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err)
		return uffd__err(-err, "uffd_restore_start: cannot create the restore thread (%s)", uffd__errname(-err));
	rs->thread_ok = true;
	return 0;
}

int rs__io_start(struct uffd_restore *rs)
{
	int err;

	fit_sources(rs);
	if ((err = tables(rs)) || (err = buffers(rs)) || (err = ring(rs)) || (err = attach(rs)) ||
	    (err = spawn(rs)))
		return err;
	return 0;
}

void rs__io_stop(struct uffd_restore *rs)
{
	atomic_store(&rs->stop, true);
	if (rs->thread_ok) {
		poke(rs);
		pthread_join(rs->thread, NULL);
		rs->thread_ok = false;
	}
	if (rs->env_ok) {
		uffd__env_detach(&rs->env);	/* no-op when the thread detached them */
		uffd__env_free(&rs->env);	/* the sources may serve another restore now */
		rs->env = (struct uffd_source_env){ 0 };
		rs->env_ok = false;
	}
	if (rs->ring_ok)
		io_uring_queue_exit(&rs->ring);	/* after the thread waited for its reads */
	rs->ring_ok = false;
	if (rs->efd >= 0)
		close(rs->efd);
	rs->efd = -1;
	if (rs->bufs && !rs->keep_bufs)	/* kept: a source never completed a read into them */
		munmap(rs->bufs, rs->bufs_len);
	rs->bufs = NULL;
	free(rs->rd);
	free(rs->q);
	free(rs->waiters);
	free(rs->lbusy);
	rs->rd = NULL;
	rs->q = NULL;
	rs->waiters = NULL;
	rs->lbusy = NULL;
	rs->nrd = 0;
	rs->nlbufs = 0;
}
