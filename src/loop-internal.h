/* SPDX-License-Identifier: MIT */
/*
 * The event loop's private structures, shared by loop.c (the loop object,
 * its rings and threads) and loop-dispatch.c (messages to handlers,
 * resolution batching, the retry queue).
 */
#ifndef LIBUFFD_LOOP_INTERNAL_H
#define LIBUFFD_LOOP_INTERNAL_H

#include <liburing.h>
#include <time.h>

#include "internal.h"

/* One watched uffd. Lives on l->watches until uffd_loop_remove(). */
struct loop_watch {
	struct uffd *u;
	struct uffd_handlers h;
	void *ctx;
	atomic_bool has_handlers; /* set once, after h and ctx: uffd_loop_add() */
	bool owned;		/* an adopted fork child: closed with the watch */
	bool removed;		/* runners let go of it; freed at holders == 0 */
	bool broken;		/* its read failed: no runner watches it again */
	unsigned holders;	/* runners with a slot for it (under l->lock) */
	struct loop_watch *next;
};

/* One watch's request in one runner's ring. */
struct loop_slot {
	struct loop_watch *w;
	struct uffd_msg *buf;	/* batch messages */
	bool busy;		/* a request is in flight */
	bool dying;		/* let go of on its next completion */
	bool cancelled;		/* the cancel request is submitted */
	struct loop_slot *next;
};

/* Counters of one runner; summed by uffd_loop_stats(). */
struct loop_counters {
	atomic_uint_fast64_t minor, wp, missing, events, reads, ioctls,
			     deferred, errors;
};

/* How a run of pages is resolved. Sorted in this order. */
enum loop_op {
	LOOP_CONTINUE,
	LOOP_CONTINUE_WP,	/* the page was write-protected: keep it so */
	LOOP_UNPROTECT,
	LOOP_ZEROPAGE,
	LOOP_COPY_ZERO,		/* hugetlb has no zero page */
	LOOP_POISON,
};

/* A range to resolve: a RESOLVE verdict, a poisoning or a retry. */
struct loop_res {
	struct loop_watch *w;
	uintptr_t addr, end;
	size_t ps;
	enum loop_op op;
};

struct loop_vec {
	struct loop_res *v;
	size_t n, cap;
};

/* A thread's view of the loop: one ring with a request per watch. */
struct loop_runner {
	struct uffd_loop *l;
	struct io_uring ring;
	int efd;		/* uffd_loop_stop() and watch-set changes */
	uint64_t efd_buf;
	bool efd_busy;
	unsigned gen;		/* l->gen the slots reflect */
	struct loop_slot *slots;
	struct loop_vec res;	/* RESOLVE verdicts of this wake */
	struct loop_vec retry;	/* -EAGAIN with no progress: after the events */
	unsigned backoff_us;
	struct timespec retry_since;
	int fail;		/* first unreported failure, -errno */
	unsigned handled;	/* messages handled since the caller reset it */
	pthread_mutex_t drive;	/* held by the thread driving the ring */
	pthread_t thread;
	bool threaded, joinable;
	struct loop_counters c;
	_Atomic(struct loop_runner *) next; /* push-only list, read by stop */
};

struct uffd_loop {
	struct uffd_loop_opts o;
	bool poll_mode;		/* poll request + read(2) */
	bool plain;		/* io_uring refused: poll(2) + read(2), no rings */
	pthread_mutex_t lock;	/* watches, regions, threads */
	pthread_cond_t cond;	/* a watch's holders dropped to 0 */
	struct loop_watch *watches;
	struct uffd_region **regions;	/* added with uffd_loop_add_region */
	size_t nregions, regions_cap;
	atomic_uint gen;	/* bumped on every watch-set change */
	atomic_int stop;
	atomic_bool driving;	/* a thread is in uffd_loop_run*() */
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
/* One wake: wait up to timeout_ms, handle what came, resolve, retry. 0 or fatal -errno. */
int loop__step(struct loop_runner *rn, int timeout_ms);
/* Finishes queued work and lets go of every watch. */
void loop__drain(struct loop_runner *rn);
long long loop__now_us(void);

/* loop.c */
/* h NULL: watched for a region only, no uffd handlers (yet). */
int loop__watch_add(struct uffd_loop *l, struct uffd *u,
		    const struct uffd_handlers *h, void *ctx, bool owned);
void loop__wake_runners(struct uffd_loop *l);

/* loop-dispatch.c */
/* Decodes and dispatches n messages of w; resolutions go to rn->res. */
void loop__handle_msgs(struct loop_runner *rn, struct loop_watch *w,
		       const struct uffd_msg *m, size_t n);
/* Resolves rn->res, sorted and merged; -EAGAIN runs go to rn->retry. */
void loop__resolve(struct loop_runner *rn);
/* Retries rn->retry once; gives up on entries older than the limit. */
void loop__retry(struct loop_runner *rn);
/* A fatal problem with a watch (its read failed): counted and reported. */
void loop__fail(struct loop_runner *rn, int err, const char *fmt, ...)
	UFFD_PRINTF(3, 4);
void loop__vec_free(struct loop_vec *v);

#endif /* LIBUFFD_LOOP_INTERNAL_H */
