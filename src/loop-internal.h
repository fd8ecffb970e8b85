/* SPDX-License-Identifier: MIT */
/*
 * The event loop's private structures, shared by loop.c (the loop object,
 * its watches and threads), loop-ring.c (rings and waits) and
 * loop-dispatch.c (messages to handlers, resolution batching, retries).
 *
 * Memory rule (ARCHITECTURE.md, hard rule 1): everything a loop thread
 * uses between arming a read and arming the next is allocated beforehand
 * by the thread that adds a watch or starts the loop. A loop thread
 * allocates, frees or runs user code only inside a fork-gate section
 * (forkgate.c); while a fork() closes the gate it keeps reading and queues
 * (or keeps a read in place), and drops exited fork children without
 * allocating. A handler that forks gets a stand-in reader (loop-forkread.c).
 */
#ifndef LIBUFFD_LOOP_INTERNAL_H
#define LIBUFFD_LOOP_INTERNAL_H

#include <liburing.h>
#include <poll.h>
#include <time.h>

#include "internal.h"

#define LOOP_MAX_WATCHES 4096	/* per loop, adopted fork children included */
#define LOOP_ERRQ 32		/* error reports waiting for the gate */

/* One watched uffd. Lives on l->watches until removed. */
struct loop_watch {
	struct uffd *u;
	struct uffd_handlers h;
	void *ctx;
	atomic_bool has_handlers; /* set once, after h and ctx: uffd_loop_add() */
	struct uffd_watch_opts wo;	/* event callback, owner fd (uffd_loop_add_opts) */
	atomic_bool owner_fired;	/* owner_fd became readable: one runner claims it */
	bool exited;		/* the owner's exit is handled: unlinked, callback run */
	bool owned;		/* an adopted fork child: closed with the watch */
	bool removed;		/* runners let go of it; freed at holders == 0 */
	bool broken;		/* its read failed for good: no runner reads it again */
	unsigned holders;	/* slots for it (under l->lock) */
	atomic_uint pending;	/* its messages read but waiting (gate queue, kept): not reaped */
	struct loop_watch *next;
};

/* One watch's request in one runner's ring; allocated with the watch. */
struct loop_slot {
	struct loop_watch *w;
	struct uffd_msg *buf;	/* batch messages */
	bool busy;		/* a request is in flight */
	bool polled;		/* it is a poll: read(2) follows (poll mode, a gated handle) */
	bool owner_busy;	/* the poll of the watch's owner_fd is in flight */
	bool dying;		/* let go of on its next completion */
	bool cancelled;		/* the cancel request is submitted */
	bool owner_cancelled;
	size_t kept;		/* messages left in buf for the fork gate: not re-armed until handled */
	long long pause_until;	/* EMFILE on a FORK read: re-arm after this (µs) */
	unsigned pause_us;
	struct loop_slot *next;
};

/* Counters of one runner; summed by uffd_loop_stats() and uffd_loop_counters(). */
struct loop_counters {
	atomic_uint_fast64_t minor, wp, missing, events, reads, ioctls,
			     deferred, errors, owner_gone, poisoned, retried,
			     queued, adopted, reaped;
};

/* How a run of pages is resolved. Sorted in this order. */
enum loop_op {
	LOOP_CONTINUE,
	LOOP_CONTINUE_WP,	/* the page was write-protected: keep it so */
	LOOP_UNPROTECT,
	LOOP_ZEROPAGE,
	LOOP_COPY_ZERO,		/* hugetlb has no zero page */
	LOOP_COPY_ZERO_WP,	/* MISSING|WP: a zero page that keeps the protection */
	LOOP_COPY_SRC,		/* MISSING in a region with a page source: copy from it */
	LOOP_COPY_SRC_WP,
	LOOP_POISON,
};

/* A range to resolve: a RESOLVE verdict, a poisoning or a retry. */
struct loop_res {
	struct loop_watch *w;
	uintptr_t addr, end;
	size_t ps;
	enum loop_op op;
	long long since;	/* retries: first attempt (µs) */
	uintptr_t src;		/* LOOP_COPY_SRC*: the source of addr */
};

/* Fixed capacity, allocated with the runner: a full vector is flushed. */
struct loop_vec {
	struct loop_res *v;
	size_t n, cap;
};

/* A page some thread is faulting on, in this wake: failures poison only these. */
struct loop_fpage {
	struct loop_watch *w;
	uintptr_t addr;
	size_t ps;
};

/* A message waiting: for the fork gate, or a fault whose handler said RETRY. */
struct loop_qmsg {
	struct loop_watch *w;
	struct uffd_msg m;
	long long since;	/* first queued (µs) */
	long long due;		/* not before (µs) */
	unsigned tries;
};

/* A ring buffer of messages; fixed capacity. */
struct loop_msgq {
	struct loop_qmsg *v;
	size_t head, n, cap;
};

/* An error report waiting for the gate (the hook runs user code). */
struct loop_errrep {
	int err;
	bool has_fault;
	struct uffd_fault f;
	char text[512];
};

/* A thread's view of the loop: one ring with a request per watch. */
struct loop_runner {
	struct uffd_loop *l;
	struct io_uring ring;
	int efd;		/* uffd_loop_stop() and watch-set changes */
	uint64_t efd_buf;
	bool efd_busy;
	unsigned gen;		/* l->gen the slots reflect */
	atomic_uint armed_gen;	/* gen whose reads are in the kernel */
	atomic_bool active;	/* a thread drives it */
	struct loop_slot *slots;
	struct loop_slot *incoming;	/* new slots, under l->lock */
	struct pollfd *pfd;	/* without io_uring: 2 * LOOP_MAX_WATCHES + 1 */
	uintptr_t *pfd_tag;	/* the slot of each pfd entry, | 1 for an owner fd */
	struct loop_vec res;	/* RESOLVE verdicts of this wake */
	struct loop_vec retry;	/* -EAGAIN with no progress: after the events */
	struct loop_fpage *fpages;	/* the pages faulted on, this wake */
	size_t nfpages, fpages_cap;
	struct loop_msgq gated;	/* waiting for the fork gate */
	struct loop_msgq refault;	/* UFFD_RETRY verdicts */
	struct loop_errrep errq[LOOP_ERRQ];
	unsigned nerrq;
	unsigned remaps_behind;	/* REMAPs read but not moved yet (__atomic: uffd_loop_sync reads it) */
	atomic_uint_fast64_t passes;	/* wakes handled to the end: uffd_loop_sync() */
	bool wants_gate;	/* its queue fills: forks not yet begun wait (forkgate.c) */
	struct uffd__gate_reader reader;	/* loop-forkread.c, for forks from its handlers */
	bool want_reap;		/* a read hit EMFILE: look for exited children */
	bool owner_pending;	/* an owner_fd fired: handle the exit */
	unsigned backoff_us;
	int fail;		/* first unreported failure, -errno */
	unsigned handled;	/* messages handled since the caller reset it */
	pthread_mutex_t drive;	/* held by the thread driving the ring */
	pthread_t thread;
	bool joinable;
	struct loop_counters c;
	_Atomic(struct loop_runner *) next; /* push-only list, read by stop */
};

struct uffd_loop {
	struct uffd_loop_opts o;
	bool poll_mode;		/* poll request + read(2) */
	bool plain;		/* io_uring refused: poll(2) + read(2), no rings */
	pthread_mutex_t api;	/* watch-set changes and runner creation */
	pthread_mutex_t join;	/* one thread joins the loop's threads at a time */
	pthread_mutex_t lock;	/* watches, slots, regions: held briefly, never allocating */
	pthread_cond_t cond;	/* a watch's holders dropped to 0 */
	struct loop_watch *watches;
	unsigned nwatches;
	struct loop_watch *zombies;	/* removed by the loop, freed at holders == 0 */
	struct loop_slot *dead_slots;	/* let go of by runners, freed by collect */
	atomic_uint garbage;	/* dead slots and zombies added since the last collect */
	struct uffd_region **regions;	/* added with uffd_loop_add_region */
	size_t nregions, regions_cap;
	atomic_uint gen;	/* bumped on every watch-set change */
	atomic_int stop;
	atomic_bool driving;	/* a thread is in uffd_loop_run*() */
	atomic_llong next_reap;	/* µs: next look for exited fork children */
	atomic_llong fd_short_until;	/* µs: a read hit EMFILE; runners drop dead queued FORKs */
	atomic_uint nowned;
	_Atomic(struct loop_runner *) runners;
	struct loop_runner *caller;	/* the ring of uffd_loop_run*() */
	struct loop_runner **threads;	/* uffd_loop_start()'s */
	unsigned nthreads;
	atomic_uint live_threads;
	void *zero;		/* zeroed huge page for hugetlb MISSING faults */
	size_t zero_len;
};

/* loop-ring.c */
/* Whether io_uring reads a uffd without a worker thread (probed once). */
bool loop__nowait_reads(void);
int loop__runner_new(struct uffd_loop *l, struct loop_runner **out);
void loop__runner_free(struct loop_runner *rn);
bool loop__has_slot(const struct loop_runner *rn, const struct loop_watch *w);
/* Frees a chain of slots (linked by ->next) and their buffers. */
void loop__slots_free(struct loop_slot *s);
/* With l->lock: s, unlinked by the caller, goes to l->dead_slots for loop__collect(). */
void loop__slot_bury(struct uffd_loop *l, struct loop_slot *s);
/* One wake: wait up to timeout_ms, handle what came, resolve, retry. 0 or fatal -errno. */
int loop__step(struct loop_runner *rn, int timeout_ms);
/* Finishes queued work and cancels every request; slots stay for later. */
void loop__drain(struct loop_runner *rn);
long long loop__now_us(void);

/* loop.c */
/* h NULL: watched for a region only, no uffd handlers (yet). wo may be NULL. */
int loop__watch_add(struct uffd_loop *l, struct uffd *u,
		    const struct uffd_handlers *h, void *ctx,
		    const struct uffd_watch_opts *wo, bool owned);
/* On a loop thread, in a gate section: watches whose owner is gone leave. */
void loop__owner_exits(struct loop_runner *rn);
void loop__wake_runners(struct uffd_loop *l);
/* Frees slots and zombie watches that runners let go of (l->api held). */
void loop__collect(struct uffd_loop *l);
/* On a loop thread, gate or not (no allocation): drops fork children that exited. */
void loop__reap(struct loop_runner *rn, bool force);
/* Gate or not (no allocation): closes the fds of dropped children no runner holds. */
void loop__close_dead(struct uffd_loop *l);
/* Whether the process behind a fork child's userfaultfd has exited (one ioctl). */
bool loop__child_exited(int fd);

/* loop-dispatch.c */
/* Allocates the runner's vectors and queues from l->o (batch). */
int loop__dispatch_init(struct loop_runner *rn);
void loop__dispatch_free(struct loop_runner *rn);
/*
 * Right after n messages of w were read, once, on the reading thread,
 * before anything else: REMAPs move the regions, REMOVEs reach the
 * regions' given_back hooks. Lock-free and allocation-free.
 */
void loop__read_early(struct loop_runner *rn, struct loop_watch *w, struct uffd_msg *m, size_t n);
/*
 * Decodes and dispatches n messages of w; resolutions go to rn->res.
 * False: a fork holds the gate shut and the queue has no room for their
 * events; nothing was taken, the caller keeps them in place and reads w no
 * more until they are handled (loop__run_kept()).
 */
bool loop__handle_msgs(struct loop_runner *rn, struct loop_watch *w,
		       const struct uffd_msg *m, size_t n);
/* Runs what waited for the gate or for events, then the slots' kept messages. */
void loop__run_queued(struct loop_runner *rn);
/* Queues n messages of w for the gate, events first (they must fit: see below). */
void loop__queue_msgs(struct loop_runner *rn, struct loop_watch *w,
		      const struct uffd_msg *m, size_t n);
/* Room in rn's fork-gate queue for the events of this process's own handles. */
size_t loop__gate_room_own(const struct loop_runner *rn);
/* Whether a slot of rn keeps messages for the gate. */
bool loop__has_kept(const struct loop_runner *rn);
/* Messages that will never be handled: FORK fds closed (no leak). */
void loop__close_forks(const struct uffd_msg *m, size_t n);
/* Whether this thread is handling messages of l (a handler or callback runs). */
bool loop__in_handlers(const struct uffd_loop *l);
/* Resolves rn->res, sorted and merged; -EAGAIN runs go to rn->retry. */
void loop__resolve(struct loop_runner *rn);
/* Retries rn->retry once; fails entries older than the limit. */
void loop__retry(struct loop_runner *rn);
/*
 * Gate or not (no allocation): FORK messages waiting for the gate whose
 * child exited go, their fds closed (a fork at the descriptor limit waits
 * for one). Counted as reaped; the fork handler never sees those children.
 */
void loop__drop_dead_forks(struct loop_runner *rn);
/* Drops queued messages of a watch that leaves (l->lock held). */
void loop__forget_watch(struct loop_runner *rn, struct loop_watch *w);
/* A problem that is no fault's: counted, reported to the hook. */
void loop__fail(struct loop_runner *rn, int err, const char *fmt, ...)
	UFFD_PRINTF(3, 4);
/* Delivers error reports that waited for the gate. */
void loop__flush_errors(struct loop_runner *rn);

/* loop-forkread.c: the stand-in reader while a handler of rn forks (forkgate.c hooks). */
void *loop__fork_reader_start(void *rn);
void loop__fork_reader_stop(void *token);

#endif /* LIBUFFD_LOOP_INTERNAL_H */
