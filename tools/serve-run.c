/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: serving one VM. Its userfaultfd becomes a handle, each row of
 * its table a foreign region served from the snapshot by the library's
 * restore engine on a loop; the VM's pidfd (or the connection, at EOF) tells
 * when it is gone. The main thread only waits: for that, for the detach, for
 * a signal, or for the record window to end.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "serve.h"

#define TICK_MS 100		/* how often the main thread looks at the restore */
#define ERRORS_SHOWN 5		/* failures printed; the rest are counted */

struct serve {
	const struct serve_opts *o;
	struct fc_handshake *h;
	struct uffd *u;
	struct uffd_region **r;
	size_t nr;		/* regions created */
	struct uffd_restore *rs;
	struct uffd_loop *l;
	int done_fd;		/* eventfd written when the VM exits or the restore completes */
	atomic_int end;		/* enum serve_end + 1 of the first callback; 0: none */
	atomic_uint errors;	/* on_error reports */
	uint64_t t0, first_fault_ns;
	bool trace_saved;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* From a loop or restore thread: the first reason to end wins; the main thread wakes. */
static void signal_end(struct serve *sv, enum serve_end why)
{
	int none = 0;

	atomic_compare_exchange_strong(&sv->end, &none, (int)why + 1);
	(void)!write(sv->done_fd, &(uint64_t){ 1 }, sizeof(uint64_t));
}

static void on_owner_exit(void *ctx, struct uffd *u)
{
	(void)u;
	signal_end(ctx, END_VM_EXIT);
}

static void on_complete(void *ctx, struct uffd_restore *rs)
{
	(void)rs;
	signal_end(ctx, END_DETACHED);
}

static void on_error(void *ctx, const struct uffd_fault *f, int err, const char *sentence)
{
	struct serve *sv = ctx;
	unsigned n;

	if (err == -ESRCH)	/* the VM exited: its exit ends the serve */
		return;
	n = atomic_fetch_add(&sv->errors, 1);
	if (n < ERRORS_SHOWN)
		fprintf(stderr, PROG ": serving%s: %s\n", f ? "" : " (watch)", sentence);
}

/*
 * Features of the received fd as the handle's contract. Firecracker asks
 * only for EVENT_REMOVE, yet registers hugetlbfs memory: MISSING_HUGETLBFS
 * and MISSING_SHMEM are announcements the kernel never checks, so they are
 * granted where the kernel has them.
 */
static uint64_t handle_features(const struct fc_handshake *h)
{
	uint64_t avail = 0;

	if (uffd_probe(&avail))
		avail = 0;
	return h->features | (avail & (UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MISSING_SHMEM));
}

static int lib_fail(const char *what, int err)
{
	return serve_fail(EXIT_SERVE, "%s: %s (%s)", what, strerror(-err), uffd_last_error());
}

/* The handle and one foreign region per row, each served from the snapshot's source. */
static int setup_regions(struct serve *sv, struct uffd_source *src)
{
	const struct fc_handshake *h = sv->h;
	int err;

	if ((err = uffd_open_fd(&sv->u, h->uffd, handle_features(h))))
		return lib_fail("taking the VM's userfaultfd", err);
	sv->h->uffd = -1;	/* the handle owns it now */
	if (!(h->features & UFFD_FEATURE_EVENT_REMOVE))
		fprintf(stderr, PROG ": note: the VM's userfaultfd lacks EVENT_REMOVE: pages its balloon gives back would be served from the snapshot again\n");
	if (!(sv->r = calloc(h->n, sizeof(*sv->r))))
		return serve_fail(EXIT_SERVE, "out of memory");
	for (size_t i = 0; i < h->n; i++, sv->nr++) {
		const struct fc_region *g = &h->r[i];
		struct uffd_foreign_opts fo = { .size = sizeof(fo), .owner_addr = g->addr, .length = g->size,
						.page_size = g->page_size, .modes = UFFDIO_REGISTER_MODE_MISSING,
						.fd = -1 };

		if ((err = uffd_region_create_foreign(sv->u, &fo, &sv->r[i])))
			return lib_fail("declaring a region", err);
		if ((err = uffd_restore_add_region_source(sv->rs, sv->r[i], src, g->offset)))
			return lib_fail("serving a region from the snapshot", err);
	}
	return 0;
}

static int setup_restore(struct serve *sv)
{
	const struct serve_opts *o = sv->o;
	struct uffd_restore_opts ro = {
		.size = sizeof(ro), .fill_rate = o->fill_rate, .record_ms = o->record_ms,
		.flags = (o->fill ? UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH : 0) |
			 (o->record ? UFFD_RESTORE_RECORD : 0),
		.on_complete = o->fill ? on_complete : NULL, .ctx = sv,
	};
	int err = uffd_restore_new(&sv->rs, &ro);

	return err ? lib_fail("creating the restore", err) : 0;
}

static int load_traces(struct serve *sv)
{
	for (size_t i = 0; i < sv->o->nreplay; i++) {
		int err = uffd_restore_load_trace(sv->rs, sv->o->replay[i]);

		if (err)
			return serve_fail(EXIT_SETUP, "cannot replay %s: %s (%s)", sv->o->replay[i],
					  strerror(-err), uffd_last_error());
	}
	return 0;
}

/* The loop, watching the VM: its exit stops the loop and wakes the main thread. */
static int start_loop(struct serve *sv, int conn)
{
	struct uffd_loop_opts lo = { .size = sizeof(lo), .spin_us = sv->o->spin_us, .on_error = on_error,
				     .error_ctx = sv };
	struct uffd_watch_opts wo = {
		.size = sizeof(wo), .owner_fd = sv->h->pidfd >= 0 ? sv->h->pidfd : conn,
		.flags = UFFD_WATCH_OWNER | UFFD_WATCH_STOP_LOOP, .owner_exit = on_owner_exit,
	};
	int err;

	if ((err = uffd_loop_new(&sv->l, &lo)))
		return lib_fail("creating the loop", err);
	if ((err = uffd_loop_add_opts(sv->l, sv->u, NULL, sv, &wo)))
		return lib_fail("watching the VM's userfaultfd", err);
	if ((err = uffd_restore_start(sv->rs, sv->l)))
		return lib_fail("starting the restore", err);
	if ((err = uffd_loop_start(sv->l, sv->o->threads)))
		return lib_fail("starting the loop threads", err);
	return 0;
}

static int save_trace(struct serve *sv)
{
	int err = uffd_restore_save_trace(sv->rs, sv->o->record);

	sv->trace_saved = true;
	if (err)
		return serve_fail(EXIT_SERVE, "cannot write the trace %s: %s (%s)", sv->o->record,
				  strerror(-err), uffd_last_error());
	return 0;
}

/* Every tick: the end of the record window, and a restore that cannot complete. */
static int tick(struct serve *sv)
{
	struct uffd_restore_stats st = { .size = sizeof(st) };

	if (uffd_restore_wait(sv->rs, 0) == -EIO)
		return serve_fail(EXIT_SERVE, "a page of the snapshot cannot be read: %s", uffd_last_error());
	if (!sv->o->record_ms || sv->trace_saved || uffd_restore_stats(sv->rs, &st))
		return 0;
	if (!sv->first_fault_ns && st.faults[0] + st.faults[1] + st.faults[2])
		sv->first_fault_ns = now_ns();
	/* The engine stops recording record_ms after the first fault; save what it has then. */
	if (sv->first_fault_ns && now_ns() - sv->first_fault_ns > (sv->o->record_ms + TICK_MS) * 1000000ull)
		return save_trace(sv);
	return 0;
}

/* Waits for the end; returns how it ended. */
static enum serve_end wait_end(struct serve *sv, int sigfd)
{
	struct pollfd p[2] = { { .fd = sv->done_fd, .events = POLLIN }, { .fd = sigfd, .events = POLLIN } };
	struct signalfd_siginfo si;

	for (;;) {
		int n = poll(p, 2, TICK_MS);

		if (n < 0 && errno != EINTR)
			return END_ERROR;
		if (n > 0 && p[0].revents)
			return (enum serve_end)(atomic_load(&sv->end) - 1);
		if (n > 0 && p[1].revents) {
			(void)!read(sigfd, &si, sizeof(si));
			return END_SIGNAL;
		}
		if (tick(sv))
			return END_ERROR;
	}
}

static void histogram_sum(const struct uffd_restore_stats *st, uint64_t *h)
{
	for (int k = 0; k < 3; k++)
		for (int b = 0; b < UFFD_HIST_BUCKETS; b++)
			h[b] += st->latency[k][b];
}

static void summarize(const struct serve *sv, struct serve_summary *s)
{
	struct uffd_restore_stats st = { .size = sizeof(st) };
	struct uffd_loop_counters lc = { .size = sizeof(lc) };
	uint64_t h[UFFD_HIST_BUCKETS] = { 0 };

	for (size_t i = 0; i < sv->h->n; i++)
		s->bytes += sv->h->r[i].size;
	s->pid = sv->h->pid;
	s->nregions = sv->h->n;
	s->served_ns = now_ns() - sv->t0;
	s->errors = atomic_load(&sv->errors);
	if (sv->rs && !uffd_restore_stats(sv->rs, &st)) {
		memcpy(s->faults, st.faults, sizeof(s->faults));
		s->pages_total = st.pages_total;
		s->pages_present = st.pages_present;
		s->pages_demand = st.pages_demand;
		s->pages_replay = st.pages_prefetched;
		s->pages_fill = st.pages_filled;
		s->pages_zero = st.pages_zero;
		s->pages_hole = st.pages_hole;
		s->bytes_read = st.bytes_read;
		s->inflight_hits = st.inflight_hits;
		s->read_errors = st.read_errors;
		s->pages_recorded = st.pages_recorded;
		s->complete_ns = st.complete_ns;
		histogram_sum(&st, h);
		s->p50_ns = uffd_hist_quantile(h, 0.5);
		s->p99_ns = uffd_hist_quantile(h, 0.99);
	}
	if (sv->l && !uffd_loop_counters(sv->l, &lc))
		s->removes = lc.events;
}

/* The restore leaves the loop before the loop goes; the regions before their handle. */
static void teardown(struct serve *sv)
{
	if (sv->l)
		uffd_loop_stop(sv->l);
	uffd_restore_free(sv->rs);
	uffd_loop_free(sv->l);
	for (size_t i = 0; i < sv->nr; i++)
		uffd_region_destroy(sv->r[i]);
	free(sv->r);
	uffd_close(sv->u);
	if (sv->done_fd >= 0)
		close(sv->done_fd);
}

int serve_vm(const struct serve_opts *o, struct fc_handshake *h, struct uffd_source *src, int sigfd,
	     int conn, struct serve_summary *s)
{
	struct serve sv = { .o = o, .h = h, .t0 = now_ns(),
			    .done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
	int rc = sv.done_fd < 0 ? serve_fail(EXIT_SERVE, "eventfd: %s", strerror(errno)) : 0;

	*s = (struct serve_summary){ .end = END_ERROR };
	if (!rc)
		rc = setup_restore(&sv);
	if (!rc)
		rc = setup_regions(&sv, src);
	if (!rc)
		rc = load_traces(&sv);
	if (!rc)
		rc = start_loop(&sv, conn);
	if (!rc)
		s->end = wait_end(&sv, sigfd);
	if (s->end == END_DETACHED)
		fprintf(stderr, PROG ": detached: every page of the VM is present; it no longer needs this process\n");
	if (!rc && o->record)	/* again at exit: the trace holds every page recorded */
		rc = save_trace(&sv);
	summarize(&sv, s);
	/* Once the VM is gone, what the restore could not finish no longer matters. */
	if (!rc && (s->end == END_ERROR || s->errors ||
		    (s->end != END_VM_EXIT && uffd_restore_wait(sv.rs, 0) == -EIO)))
		rc = EXIT_SERVE;
	teardown(&sv);
	return rc;
}
