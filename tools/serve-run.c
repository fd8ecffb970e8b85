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
	_Atomic uint64_t failed_ns;	/* when the first failure was seen; 0: none */
	atomic_bool finishing;	/* uffd_restore_finish() called (drain, or --fill after --record): it detaches */
	uint64_t t0, first_fault_ns;
	bool trace_saved, record_failed;
	struct slot *slot;	/* --metrics */
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

static void failed(struct serve *sv)
{
	uint64_t none = 0;

	atomic_compare_exchange_strong(&sv->failed_ns, &none, now_ns());
}

static void on_owner_exit(void *ctx, struct uffd *u)
{
	(void)u;
	signal_end(ctx, END_VM_EXIT);
}

/*
 * Every page present. The regions are unregistered by now when the restore
 * was made to detach (--fill without --record) or was asked to finish
 * before; a completion by demand faults alone leaves them registered and
 * the serve goes on. A finish asked after this call is seen by finished().
 */
static void on_complete(void *ctx, struct uffd_restore *rs)
{
	struct serve *sv = ctx;

	(void)rs;
	if ((sv->o->fill && !sv->o->record) || atomic_load(&sv->finishing))
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
		serve_log(LOG_ERR, "serving%s: %s", f ? "" : " (watch)", sentence);
	failed(sv);
	/* A page the snapshot cannot give: its fault will never be resolved. Decide now, not at the tick. */
	if (err == -EIO) {
		/* the restore says why its read failed (a corrupt frame: the file or URL, the frame) */
		if (sv->rs && uffd_restore_wait(sv->rs, 0) == -EIO && n < ERRORS_SHOWN)
			serve_log(LOG_ERR, "a page of the snapshot cannot be read: %s", uffd_last_error());
		signal_end(sv, END_ERROR);
	}
}

static int lib_fail(const char *what, int err)
{
	return serve_fail(EXIT_SERVE, "%s: %s (%s)", what, strerror(-err), uffd_last_error());
}

/* The handle and one foreign region per row, each served from the snapshot. */
static int setup_regions(struct serve *sv, struct uffd_source *src)
{
	const struct fc_handshake *h = sv->h;
	size_t pages = 0;
	int err;

	if ((err = uffd_open_fd(&sv->u, h->uffd, h->features)))
		return lib_fail("taking the VM's userfaultfd", err);
	sv->h->uffd = -1;	/* the handle owns it now */
	if (!(h->features & UFFD_FEATURE_EVENT_REMOVE))
		serve_log(LOG_WARNING, "note: the VM's userfaultfd lacks EVENT_REMOVE: pages its balloon gives back would be served from the snapshot again");
	if (!(sv->r = calloc(h->n, sizeof(*sv->r))))
		return serve_fail(EXIT_SERVE, "out of memory");
	for (size_t i = 0; i < h->n; i++, sv->nr++) {
		const struct uffd_fc_region *g = &h->r[i];
		struct uffd_foreign_opts fo = { .size = sizeof(fo), .owner_addr = g->owner_addr, .length = g->length,
						.page_size = g->page_size, .modes = UFFDIO_REGISTER_MODE_MISSING,
						.fd = -1 };

		if ((err = uffd_region_create_foreign(sv->u, &fo, &sv->r[i])))
			return lib_fail("declaring a region", err);
		if ((err = uffd_restore_add_region_source(sv->rs, sv->r[i], src, g->offset)))
			return lib_fail("serving a region from the snapshot", err);
		/* --supervise: the states live in the supervisor's memfd; what a dead worker did is adopted */
		if (h->pstate && (err = uffd_restore_region_state(sv->rs, sv->r[i], h->pstate + pages,
								  g->length / g->page_size)))
			return lib_fail("adopting the page states", err);
		pages += g->length / g->page_size;
	}
	return 0;
}

static int setup_restore(struct serve *sv)
{
	const struct serve_opts *o = sv->o;
	struct uffd_restore_opts ro = {
		.size = sizeof(ro), .fill_rate = o->fill_rate, .record_ms = o->record_ms,
		/* While recording, no fill: it starts when the window ends (tick). */
		.flags = (o->fill && !o->record ? UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH : 0) |
			 (o->record ? UFFD_RESTORE_RECORD : 0) |
			 (o->fault_around_set && !o->fault_around ? UFFD_RESTORE_NO_AROUND : 0),
		.fault_around = o->fault_around, .replay_block = o->replay_block,
		.on_complete = on_complete, .ctx = sv,
	};
	int err = uffd_restore_new(&sv->rs, &ro);

	return err ? lib_fail("creating the restore", err) : 0;
}

/*
 * The traces passed the checks at start; what remains is the VM's layout.
 * A trace that does not fit it is left out (the library keeps what was
 * loaded before): the VM is served all the same, by demand paging.
 */
static void load_traces(struct serve *sv)
{
	for (size_t i = 0; i < sv->o->nreplay; i++) {
		int err = uffd_restore_load_trace(sv->rs, sv->o->replay[i]);

		if (err)
			serve_fail(0, "warning: the trace %s does not fit this VM: %s (%s); serving without it (demand paging)",
				   sv->o->replay[i], strerror(-err), uffd_last_error());
	}
}

/*
 * --threads N is refused for a VM whose userfaultfd has EVENT_REMOVE (every
 * Firecracker VM: its balloon): the kernel lets the balloon's madvise go on
 * as soon as one thread has *read* the REMOVE, so another thread may read
 * the next fault on that page and serve it from the snapshot before the
 * first has marked it removed -- the guest would see old contents where
 * zeros belong. One thread handles the REMOVE before it reads further.
 */
static unsigned loop_threads(const struct serve *sv)
{
	if (sv->o->threads > 1 && (sv->h->features & UFFD_FEATURE_EVENT_REMOVE)) {
		serve_fail(0, "warning: --threads %u refused for VM pid %d: its userfaultfd has EVENT_REMOVE, and a fault read by one thread could be served from the snapshot before another handled the REMOVE of its page (stale contents where zeros belong); serving with 1 thread",
			   sv->o->threads, (int)sv->h->pid);
		return 1;
	}
	return sv->o->threads;
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
	if ((err = uffd_loop_start(sv->l, loop_threads(sv))))
		return lib_fail("starting the loop threads", err);
	/* Faults the dead worker had read and never resolved: raised again, to this loop. */
	for (size_t i = 0; sv->h->adopted && i < sv->nr; i++)
		uffd_wake(sv->u, uffd_region_base(sv->r[i]), uffd_region_length(sv->r[i]));
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

static void summarize(const struct serve *sv, struct serve_summary *s);

/* --metrics: this VM's numbers, every tick. */
static void publish(struct serve *sv)
{
	struct serve_summary s = { .end = END_VM_EXIT };

	if (!sv->slot)
		return;
	summarize(sv, &s);
	metrics_update(sv->slot, &s, atomic_load(&sv->end) == END_DETACHED + 1);
}

/*
 * uffd_restore_finish(): 0 when it was taken. A restore that had completed
 * before (every page by demand: on_complete came and went without ending
 * the serve) is detached by the call itself, before it returns; one that
 * completes later detaches, then calls on_complete, which sees finishing.
 */
static int finish(struct serve *sv)
{
	atomic_store(&sv->finishing, true);
	return uffd_restore_finish(sv->rs);
}

/* After finish(): every page is present and the regions are unregistered. */
static bool finished(struct serve *sv)
{
	return uffd_restore_wait(sv->rs, 0) == 0;
}

/* The VM exited: the loop said so, or its pidfd is readable and the loop has not read it yet. */
static bool vm_gone(struct serve *sv)
{
	struct pollfd p = { .fd = sv->h->pidfd, .events = POLLIN };

	return atomic_load(&sv->end) == END_VM_EXIT + 1 || (p.fd >= 0 && poll(&p, 1, 0) == 1);
}

/* Every tick: the end of the record window, and a restore that cannot complete. */
static int tick(struct serve *sv)
{
	struct uffd_restore_stats st = { .size = sizeof(st) };

	if (uffd_restore_wait(sv->rs, 0) == -EIO) {
		failed(sv);
		return serve_fail(EXIT_SERVE, "a page of the snapshot cannot be read: %s", uffd_last_error());
	}
	if (!sv->o->record_ms || sv->trace_saved || uffd_restore_stats(sv->rs, &st))
		return 0;
	if (!sv->first_fault_ns && st.faults[0] + st.faults[1] + st.faults[2])
		sv->first_fault_ns = now_ns();
	/* The engine stops recording record_ms after the first fault; save what it has then. */
	/* A trace that cannot be written is no reason to stop serving the VM: the exit status says it. */
	if (sv->first_fault_ns && now_ns() - sv->first_fault_ns > (sv->o->record_ms + TICK_MS) * 1000000ull) {
		sv->record_failed = save_trace(sv) != 0;
		/* The recording is over: now the fill (every page, then detach). */
		if (sv->o->fill && !finish(sv) && finished(sv))
			signal_end(sv, END_DETACHED);
	}
	return 0;
}

/* Waits for the end; returns how it ended. */
static enum serve_end wait_end(struct serve *sv, int sigfd)
{
	struct pollfd p[3] = { { .fd = sv->done_fd, .events = POLLIN }, { .fd = sigfd, .events = POLLIN },
			       { .fd = metrics_fd(sv->o->metrics), .events = POLLIN } };
	struct signalfd_siginfo si;

	for (;;) {
		int n = poll(p, 3, TICK_MS);

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
		publish(sv);
		if (n > 0 && p[2].revents)	/* a scrape, of this process's own VM (one VM, no --multi) */
			metrics_scrape(sv->o->metrics);
	}
}

static int64_t mono_ms(void)
{
	return (int64_t)(now_ns() / 1000000u);
}

/*
 * SIGTERM: the VM must not depend on us any more. Every page not yet present
 * comes in as fast as the faults allow, then the regions are unregistered
 * (detach) -- within o->drain_ms; a second signal ends the wait. What is
 * left then takes the fatal path. Returns an EXIT_* code and sets *end.
 */
static int drain(struct serve *sv, int sigfd, enum serve_end *end)
{
	struct pollfd p[2] = { { .fd = sv->done_fd, .events = POLLIN }, { .fd = sigfd, .events = POLLIN } };
	int64_t deadline = mono_ms() + sv->o->drain_ms;
	struct signalfd_siginfo si;
	int err;

	serve_log(LOG_INFO, "draining VM pid %d: bringing in every page, then detaching (--drain-timeout %u ms)",
		(int)sv->h->pid, sv->o->drain_ms);
	err = sv->o->drain_ms ? finish(sv) : -ETIMEDOUT;
	while (!err) {
		int64_t left = deadline - mono_ms();
		int n;

		/* Looked at, not only waited for: a restore complete before the drain has no on_complete to come. */
		if (finished(sv)) {
			*end = vm_gone(sv) ? END_VM_EXIT : END_DETACHED;	/* an exit the signal overtook */
			return EXIT_OK;
		}
		n = left > 0 ? poll(p, 2, (int)(left < TICK_MS ? left : TICK_MS)) : 0;
		if (n > 0 && p[0].revents) {
			*end = (enum serve_end)(atomic_load(&sv->end) - 1);
			if (*end != END_ERROR)
				return EXIT_OK;
			err = -EIO;
		} else if (n > 0 && p[1].revents) {
			(void)!read(sigfd, &si, sizeof(si));
			err = -EINTR;
		} else if (left <= 0) {
			err = -ETIMEDOUT;
		} else if (uffd_restore_wait(sv->rs, 0) == -EIO) {
			err = -EIO;
		}
	}
	*end = END_SIGNAL;
	failed(sv);
	if (err == -EIO)
		return serve_fail(EXIT_SERVE, "draining: a page of the snapshot cannot be read: %s", uffd_last_error());
	if (err == -EINTR)
		return serve_fail(EXIT_DRAIN, "draining: a second signal ended the drain");
	if (err == -ETIMEDOUT)
		return serve_fail(EXIT_DRAIN, "draining: not every page of the VM came in within --drain-timeout %u ms",
				  sv->o->drain_ms);
	return serve_fail(EXIT_DRAIN, "draining: %s (%s)", strerror(-err), uffd_last_error());
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
	uint64_t *h = s->hist;

	for (size_t i = 0; i < sv->h->n; i++)
		s->bytes += sv->h->r[i].length;
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
	s->remote = serve_remote_stats(&s->rstats);
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
	bool started;

	*s = (struct serve_summary){ .end = END_ERROR };
	if (!rc)
		rc = setup_restore(&sv);
	if (!rc)
		rc = setup_regions(&sv, src);
	if (!rc) {
		load_traces(&sv);
		rc = start_loop(&sv, conn);
	}
	started = !rc;
	if (!rc) {
		sv.slot = metrics_claim(o->metrics);
		publish(&sv);
		s->end = wait_end(&sv, sigfd);
	}
	if (!rc && s->end == END_SIGNAL)
		rc = drain(&sv, sigfd, &s->end);
	if (s->end == END_DETACHED)
		serve_log(LOG_INFO, "detached: every page of the VM is present; it no longer needs this process");
	/* The VM still depends on us and we cannot go on: decide, before the loop goes. */
	if (rc || s->end == END_ERROR)
		rc = serve_fatal(o, h, sigfd, rc ? rc : EXIT_SERVE,
				 rc == EXIT_DRAIN ? "the drain did not finish" : started ?
				 "the serve of the VM broke" : "the serve of the VM could not be set up",
				 atomic_load(&sv.failed_ns));
	if (!rc && o->record)	/* again at exit: the trace holds every page recorded */
		rc = save_trace(&sv);
	if (!rc && sv.record_failed)
		rc = EXIT_SERVE;
	summarize(&sv, s);
	metrics_release(sv.slot);
	/* Once the VM is gone, what the restore could not finish no longer matters. */
	if (!rc && (s->end == END_ERROR || s->errors ||
		    (s->end != END_VM_EXIT && uffd_restore_wait(sv.rs, 0) == -EIO)))
		rc = EXIT_SERVE;
	teardown(&sv);
	return rc;
}
