/* SPDX-License-Identifier: MIT */
/*
 * The restore's private structures, shared by restore.c (the object: its
 * options, regions, start, wait and statistics), restore-fault.c (the
 * handlers running on loop threads), restore-io.c (the restore thread and
 * its io_uring), restore-trace.c (record and replay) and restore-state.c
 * (page states, counters, resolving a run, the end); restore-adopt.c (the
 * caller's page-state map, uffd_restore_region_state) calls none of them.
 * Calls go one way:
 * restore.c -> restore-fault.c -> restore-io.c -> restore-trace.c ->
 * restore-state.c (a file may skip steps, never go back); all of them may
 * call the page sources (source-internal.h), which call none of them.
 *
 * Memory rule: the restore thread allocates nothing after start (a fork()
 * may hold malloc's lock while it waits for the loop); what it needs is
 * allocated by uffd_restore_start(), and user code (on_complete) and the
 * calls that may allocate (unregistering) run inside a fork-gate section.
 */
#ifndef LIBUFFD_RESTORE_INTERNAL_H
#define LIBUFFD_RESTORE_INTERNAL_H

#include <liburing.h>
#include <stdatomic.h>

#include "internal.h"
#include "source-internal.h"
#include "trace.h"

/* A page's state, one atomic byte per page. */
enum rs_page {
	PG_ABSENT,	/* nobody brought it in yet */
	PG_INFLIGHT,	/* a read for it is under way (demand or prefetch) */
	PG_PRESENT,	/* mapped with the file's contents or a zero page; or gone */
	PG_ZERO,	/* given back by the owner (REMOVE): zeros from now on */
	PG_BAD,		/* its demand read failed: faults on it fail (-EIO) */
	PG_HOLE,	/* the source holds no data for it: a zero page, never a read */
};

/* One served region. */
struct rs_region {
	struct uffd_restore *rs;	/* the restore it belongs to */
	struct uffd_region *r;	/* its handlers get this rs_region as ctx */
	unsigned idx;		/* in the restore's order (traces name it so) */
	struct uffd_source *src;	/* a reference */
	uint64_t offset;	/* of the region's page 0 in the source */
	size_t ps;		/* page size */
	size_t npages;
	bool cont;		/* MINOR with alias: read into the alias, CONTINUE */
	atomic_uchar *st;	/* enum rs_page per page */
	bool st_map;		/* st is the caller's (uffd_restore_region_state): not ours to free */
	size_t fill_next;	/* restore thread: the fill's cursor */
	atomic_size_t seq_next;	/* the page after the last fault-around window (a hint) */
	atomic_size_t seq_win;	/* that window's pages */
	atomic_bool gave_back;	/* the owner gave pages back (REMOVE): no fault-around from then on */
};

/* What a run of pages was read for. */
enum rs_why { RD_DEMAND, RD_PREFETCH, RD_FILL };

/* A demand fault queued for the restore thread, or deferred on a read in flight. */
struct rs_fault {
	struct rs_region *g;
	size_t page;
	size_t first, n;	/* the run claimed for it (INFLIGHT): page and its fault-around window */
	uint64_t t0;		/* handler entry, CLOCK_MONOTONIC ns */
	int kind;		/* enum uffd_fault_kind */
};

/* One read slot of the restore thread (its buffer, if MISSING, is its own). */
struct rs_read {
	struct uffd_source_req req;	/* ctx: the restore */
	struct rs_region *g;
	size_t first, n;	/* pages */
	char *buf;		/* bounce buffer; the read goes to the alias when cont */
	const char *from;	/* what a COPY installs from: buf, or the source's mapping */
	enum rs_why why;
	bool busy;		/* a read or a retry is pending */
	bool refused;		/* the source said -EAGAIN: submit again after a completion */
	bool retry;		/* resolution hit -EAGAIN: resolve again at retry_ns */
	bool fetching;		/* a fetch of the source's mapping is under way */
	bool counted;		/* ... in rs->fetching (a prefetch's, waiting on the disk) */
	uint64_t retry_ns;
	size_t done;		/* bytes resolved before the retry */
	struct rs_fault f;	/* RD_DEMAND: the fault that asked */
};

struct uffd_restore {
	struct uffd_restore_opts o;
	struct rs_region *regs;
	unsigned nregs, regs_cap;
	uint64_t total;		/* pages of all regions */
	bool started;
	struct uffd_loop *loop;
	uint64_t start_ns;

	/* counters */
	atomic_uint_fast64_t faults[3], lat[3][UFFD_HIST_BUCKETS];
	atomic_uint_fast64_t pages_demand, pages_prefetched, pages_filled, pages_zero, pages_hole;
	atomic_uint_fast64_t pages_around;	/* of pages_demand, around the faulting page */
	atomic_uint_fast64_t bytes_read, inflight_hits, read_errors;
	atomic_uint_fast64_t done;	/* pages PRESENT or ZERO */
	atomic_uint_fast64_t complete_ns;

	/* demand faults for the restore thread, and faults waiting on reads */
	pthread_mutex_t qlock;
	struct rs_fault *q;	/* ring of qcap */
	size_t qhead, qn, qcap;
	atomic_uint dq;		/* demand faults queued: the restore thread looks between runs */
	struct rs_fault *waiters;
	size_t nwaiters, wcap;
	int efd;		/* eventfd: demand queued, or stop */

	/* the loop threads' bounce buffers for non-blocking reads */
	char *lbufs;
	atomic_bool *lbusy;
	unsigned nlbufs;
	size_t maxps;		/* the largest page size of the regions */
	size_t around_max;	/* bytes of the widest fault-around window; 0: none */
	size_t dlen;		/* bytes of a demand buffer: maxps, or around_max when larger */
	char *zero;		/* maxps zero bytes, for huge zero pages */

	/* the restore thread */
	struct io_uring ring;
	bool ring_ok;
	pthread_t thread;
	bool thread_ok;
	atomic_bool stop;
	char *bufs;		/* the read slots' bounce buffers */
	size_t bufs_len, slot_len;
	bool keep_bufs;		/* a source kept reads into them past the end */
	struct rs_read *rd;	/* queue_depth prefetch slots, then demand slots */
	unsigned nrd, ndemand;
	unsigned prefetch_busy;
	unsigned fetching;	/* prefetch fetches waiting on the disk (an io_uring worker each) */
	uint64_t efd_val;
	bool efd_armed;
	struct uffd_source_env env;	/* the sources attached to this restore */
	bool env_ok;
	uint64_t fill_due_ns;	/* token bucket of the fill */

	/* end */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool finished;		/* complete (and detached, on_complete called) */
	atomic_bool finishing;	/* uffd_restore_finish(): fill at full speed, then detach */
	atomic_bool detached;	/* the regions were unregistered */
	int err;		/* -ESRCH, -EIO: what uffd_restore_wait() returns */

	/* traces (restore-trace.c) */
	bool recording;		/* UFFD_RESTORE_RECORD */
	atomic_bool rec_on;	/* until saved, without record_ms */
	pthread_mutex_t rec_lock;
	struct trace rec;
	atomic_uint_fast64_t rec_first_ns;	/* first fault; 0 until then */
	bool has_replay;
	struct trace replay;
	size_t replay_next, advise_next;
	size_t replay_block;	/* bytes of a block-wise replay's blocks; 0: none */
};

/* ---- restore-state.c ---- */

uint64_t rs__now_ns(void);
/* A fault's service time, from t0 to now, into the kind's histogram. */
void rs__latency(struct uffd_restore *rs, int kind, uint64_t t0);
/* CAS of one page's state; on success to PRESENT/ZERO from ABSENT/INFLIGHT, the page counts as done. */
bool rs__page_cas(struct uffd_restore *rs, struct rs_region *g, size_t page,
		  enum rs_page from, enum rs_page to);
/* Start: pages of g its source holds no data for become HOLE (done, no read). -errno. */
int rs__holes(struct uffd_restore *rs, struct rs_region *g);
/* Marks a page ZERO whatever it was (a REMOVE). */
void rs__page_zero(struct uffd_restore *rs, struct rs_region *g, size_t page);
/* Marks a page PRESENT whatever it was (unmapped: nothing to bring in). */
void rs__page_gone(struct uffd_restore *rs, struct rs_region *g, size_t page);
/* The page's state. */
enum rs_page rs__page(const struct rs_region *g, size_t page);
/* Base view address of a page (moves with REMAP events). */
uintptr_t rs__addr(const struct rs_region *g, size_t page);
/* Records a failed read: counted, and uffd_restore_wait() reports -EIO. */
void rs__io_failed(struct uffd_restore *rs);
/* The owner exited: the restore thread stops, uffd_restore_wait() returns -ESRCH. */
void rs__owner_gone(struct uffd_restore *rs);
/* Whether every page is PRESENT or ZERO. */
bool rs__all_done(struct uffd_restore *rs);
/* Wakes the restore thread (uffd_restore_finish()). */
void rs__io_poke(struct uffd_restore *rs);
/* Restore thread: detach (UFFD_RESTORE_DETACH), on_complete, wake the waiters. Once. */
void rs__finish(struct uffd_restore *rs);
/* A restore complete without detaching: unregister its regions now (uffd_restore_finish). Once. */
void rs__detach_late(struct uffd_restore *rs);
/* Waiters on pages [first, first+n) of g: their latency is recorded and they leave. */
void rs__waiters_done(struct uffd_restore *rs, struct rs_region *g, size_t first, size_t n);
/* Resolves [first, first+n) of g from data at src (COPY) or the alias (CONTINUE), skipping ZERO pages. */
int rs__install(struct uffd_restore *rs, struct rs_region *g, size_t first, size_t n,
		const char *src, size_t *done);

/*
 * Demand read [f->first, f->first+f->n) of g is over: pages before `upto`
 * are in (counted), the rest go back to ABSENT and are woken (their faults
 * come again), the faulting page to `bad_to` when not in; waiters of the
 * run leave.
 */
void rs__demand_end(struct uffd_restore *rs, const struct rs_fault *f, size_t upto,
		    enum rs_page bad_to);

/* ---- restore-fault.c ---- */

/* The handlers of every region; their ctx is the region's struct rs_region. */
extern const struct uffd_handlers rs__handlers;
/* The regions' given_back hook (struct uffd_region): ctx is the struct rs_region. */
void rs__given_back(void *ctx, uint64_t off, uint64_t len);

/* ---- restore-io.c ---- */

/* Ring, slots and buffers; then the thread. 0 or -errno (text set). */
int rs__io_start(struct uffd_restore *rs);
/* Stops and joins the thread, waits for every read in flight, frees. */
void rs__io_stop(struct uffd_restore *rs);
/* A demand fault for the restore thread; false when the queue is full. */
bool rs__io_demand(struct uffd_restore *rs, const struct rs_fault *f);

/* ---- restore-trace.c ---- */

/* uffd_restore_start(): sorts the replay, prepares the recording. 0 or -errno. */
int rs__trace_start(struct uffd_restore *rs);
/* Restore thread: entry i of the replay order, or false past its end. */
bool rs__replay_at(struct uffd_restore *rs, size_t i, struct rs_region **g, size_t *page);
/* Loop thread: a demand fault's first touch, recorded within the window. */
void rs__record(struct uffd_restore *rs, const struct rs_region *g, size_t page);
void rs__trace_free(struct uffd_restore *rs);
/* Pages in the trace being recorded. */
uint64_t rs__recorded(struct uffd_restore *rs);

#endif /* LIBUFFD_RESTORE_INTERNAL_H */
