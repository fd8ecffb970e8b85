/* SPDX-License-Identifier: MIT */
/*
 * The loop's message handling: decode, pick the handler set (region first,
 * then the uffd's, else the default), collect RESOLVE verdicts, and resolve
 * them sorted and merged: one ioctl per run of adjacent pages.
 *
 * Everything here works in storage the runner got when it was made: the
 * vectors have a fixed capacity (a full one is flushed), the sort is in
 * place. Handlers and events run inside a fork-gate section, never
 * outside; while a fork holds the gate shut, messages wait in rn->gated,
 * in order, or, when their events do not fit, in their slot's buffer,
 * which is not read into again until they are handled.
 *
 * Failures end in one place (fail_page()): a page some thread faulted on
 * is poisoned (UFFD_LOOP_POISON_ON_ERROR) or reported; a neighbour that a
 * handler added for fault-around is dropped, it faults on its own later.
 * -ENOENT (the range is gone) wakes its sleepers; -EAGAIN (an event is
 * unread) and UFFD_RETRY wait for the events and back off, up to a bound.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loop-internal.h"

#define RETRY_LIMIT_US 5000000ll	/* -EAGAIN and UFFD_RETRY: fail after 5 s */
#define REFAULT_BACKOFF_MAX_US 2000
#define GATE_EVENT_ROOM 256	/* entries of rn->gated kept for events */

#define COUNT(rn, field) atomic_fetch_add_explicit(&(rn)->c.field, 1, memory_order_relaxed)

static const char *const kind_names[] = {
	[UFFD_FAULT_MISSING] = "missing", [UFFD_FAULT_MINOR] = "minor", [UFFD_FAULT_WP] = "wp",
};

/* The loop whose messages this thread handles (uffd_loop_sync() cannot wait for itself). */
static __thread const struct uffd_loop *tl_loop;

bool loop__in_handlers(const struct uffd_loop *l)
{
	return tl_loop == l;
}

/* ---- storage, made with the runner ---- */

static size_t max_sz(size_t a, size_t b)
{
	return a > b ? a : b;
}

int loop__dispatch_init(struct loop_runner *rn)
{
	size_t batch = rn->l->o.batch;

	rn->res.cap = rn->retry.cap = max_sz(4 * batch, 256);
	rn->fpages_cap = rn->res.cap;	/* loop__retry() notes up to retry.cap pages */
	rn->gated.cap = max_sz(4 * batch, 1024);
	rn->refault.cap = max_sz(2 * batch, 256);
	rn->res.v = calloc(rn->res.cap, sizeof(*rn->res.v));
	rn->retry.v = calloc(rn->retry.cap, sizeof(*rn->retry.v));
	rn->fpages = calloc(rn->fpages_cap, sizeof(*rn->fpages));
	rn->gated.v = calloc(rn->gated.cap, sizeof(*rn->gated.v));
	rn->refault.v = calloc(rn->refault.cap, sizeof(*rn->refault.v));
	if (rn->res.v && rn->retry.v && rn->fpages && rn->gated.v && rn->refault.v)
		return 0;
	loop__dispatch_free(rn);
	return -ENOMEM;
}

void loop__dispatch_free(struct loop_runner *rn)
{
	/* FORK messages still queued hold a child's uffd: never leak it. */
	loop__forget_watch(rn, NULL);
	free(rn->res.v);
	free(rn->retry.v);
	free(rn->fpages);
	free(rn->gated.v);
	free(rn->refault.v);
	rn->res.v = rn->retry.v = NULL;
	rn->fpages = NULL;
	rn->gated.v = rn->refault.v = NULL;
}

static struct loop_qmsg *q_at(struct loop_msgq *q, size_t i)
{
	return &q->v[(q->head + i) % q->cap];
}

static bool q_push(struct loop_msgq *q, const struct loop_qmsg *m)
{
	if (q->n == q->cap)
		return false;
	*q_at(q, q->n++) = *m;
	return true;
}

static struct loop_qmsg q_pop(struct loop_msgq *q)
{
	struct loop_qmsg m = q->v[q->head];

	q->head = (q->head + 1) % q->cap;
	q->n--;
	return m;
}

/* ---- failures ---- */

static bool poison_on_error(const struct loop_runner *rn)
{
	return rn->l->o.flags & UFFD_LOOP_POISON_ON_ERROR;
}

/* Hands one report to the hook: now inside a gate section, else when the gate opens. */
static void to_hook(struct loop_runner *rn, const struct uffd_fault *f, int err)
{
	const struct uffd_loop_opts *o = &rn->l->o;
	struct loop_errrep *e;

	if (!o->on_error)
		return;
	if (!rn->nerrq && uffd__gate_enter()) {
		o->on_error(o->error_ctx, f, err, uffd_last_error());
		uffd__gate_leave();
		return;
	}
	if (rn->nerrq == LOOP_ERRQ)
		return;		/* counted in stats.errors all the same */
	e = &rn->errq[rn->nerrq++];
	e->err = err;
	e->has_fault = f != NULL;
	if (f)
		e->f = *f;
	snprintf(e->text, sizeof(e->text), "%s", uffd_last_error());
}

void loop__flush_errors(struct loop_runner *rn)
{
	const struct uffd_loop_opts *o = &rn->l->o;

	tl_loop = rn->l;
	for (unsigned i = 0; i < rn->nerrq; i++) {
		struct loop_errrep *e = &rn->errq[i];

		o->on_error(o->error_ctx, e->has_fault ? &e->f : NULL, e->err, e->text);
	}
	tl_loop = NULL;
	rn->nerrq = 0;
}

/*
 * A failure: its sentence becomes the thread's last error (the sentence
 * of uffd_loop_run*()'s return), it is counted and reported to the hook.
 */
static void report(struct loop_runner *rn, const struct uffd_fault *f, int err,
		   const char *fmt, va_list ap)
{
	char msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	uffd__err(err, "%s", msg);
	COUNT(rn, errors);
	if (!rn->fail)
		rn->fail = err;
	to_hook(rn, f, err);
}

void loop__fail(struct loop_runner *rn, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	report(rn, NULL, err, fmt, ap);
	va_end(ap);
}

static void fault_fail(struct loop_runner *rn, const struct uffd_fault *f, int err,
		       const char *fmt, ...) UFFD_PRINTF(4, 5);
static void fault_fail(struct loop_runner *rn, const struct uffd_fault *f, int err,
		       const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	report(rn, f, err, fmt, ap);
	va_end(ap);
}

/* ---- resolution vectors ---- */

static void resolve_all(struct loop_runner *rn);

/* Queues r for this wake's resolution; a full vector is resolved first. */
static void push(struct loop_runner *rn, const struct loop_res *r)
{
	if (rn->res.n == rn->res.cap)
		resolve_all(rn);
	rn->res.v[rn->res.n++] = *r;
}

/* Remembers a page that a thread faults on: only such pages are poisoned. */
static void note_fault_page(struct loop_runner *rn, struct loop_watch *w, uintptr_t addr, size_t ps)
{
	if (rn->nfpages == rn->fpages_cap) {
		resolve_all(rn);	/* the pages noted so far are served: forget them */
		rn->nfpages = 0;
	}
	rn->fpages[rn->nfpages++] = (struct loop_fpage){ w, addr, ps };
}

static bool is_fault_page(const struct loop_runner *rn, const struct loop_watch *w, uintptr_t a)
{
	for (size_t i = 0; i < rn->nfpages; i++)
		if (rn->fpages[i].w == w && a >= rn->fpages[i].addr &&
		    a < rn->fpages[i].addr + rn->fpages[i].ps)
			return true;
	return false;
}

/* ---- default resolution ---- */

/* A zero page: ZEROPAGE, or a copy of zeros where that cannot be (hugetlb, WP). */
static enum loop_op zero_op(const struct loop_watch *w, size_t ps, bool wp)
{
	return wp ? LOOP_COPY_ZERO_WP : ps > w->u->page_size ? LOOP_COPY_ZERO : LOOP_ZEROPAGE;
}

/*
 * A MISSING fault in a region with a page source: runs of pages copied
 * from the source, and zero pages for those the owner gave back (REMOVE)
 * since they were last served. The offsets come from the handle's map: a
 * part of the region a REMAP moved keeps its own.
 */
static void push_source(struct loop_runner *rn, const struct loop_res *r,
			struct uffd_region *reg, const unsigned char *src, bool wp)
{
	struct rangemap_entry e;
	uintptr_t a = r->addr, stop;

	for (; a < r->end; a = stop) {
		uint64_t off;

		if (!rangemap_find(&r->w->u->regions, a, &e) || e.ptr != reg)
			break;
		stop = e.end < r->end ? e.end : r->end;
		for (off = a - e.start + e.off; a < stop;) {
			bool removed;
			uint64_t n = uffd__region_removed_run(reg, off, stop - a, &removed);
			struct loop_res run = *r;

			if (!n)
				break;
			run.addr = a;
			run.end = a + n;
			if (removed) {
				uffd__region_clear_removed(reg, off, n);
				run.op = zero_op(r->w, r->ps, wp);
			} else {
				run.op = wp ? LOOP_COPY_SRC_WP : LOOP_COPY_SRC;
				run.src = (uintptr_t)src + off;
			}
			push(rn, &run);
			off += n;
			a += n;
		}
		if (a < stop)
			break;
	}
	if (a < r->end)	/* moved or unmapped meanwhile: the threads fault again */
		uffd_wake(r->w->u, (void *)a, r->end - a);
}

/*
 * want_wp: the handler asked for UFFD_RESOLVE_WP. Otherwise the pages
 * are pushed writable and exec() maps each write-protected exactly when
 * the record says so (wpstate.c), deciding right before the ioctl.
 */
static void push_default(struct loop_runner *rn, struct loop_watch *w,
			 const struct uffd_fault *f, size_t ps, bool want_wp)
{
	struct loop_res r = { w, (uintptr_t)f->addr, (uintptr_t)f->addr + f->len, ps, 0, 0, 0 };
	const unsigned char *src = f->region ? uffd__region_source(f->region) : NULL;

	switch (f->kind) {
	case UFFD_FAULT_MINOR:
		r.op = want_wp ? LOOP_CONTINUE_WP : LOOP_CONTINUE;
		break;
	case UFFD_FAULT_WP:
		r.op = LOOP_UNPROTECT;
		break;
	case UFFD_FAULT_MISSING:
		if (src) {
			push_source(rn, &r, f->region, src, want_wp);
			return;
		}
		/* ZEROPAGE cannot keep a write-protection: copy a zero page with MODE_WP. */
		r.op = zero_op(w, ps, want_wp);
		break;
	}
	push(rn, &r);
}

/* ---- faults ---- */

typedef int (*fault_fn)(void *ctx, struct uffd_fault *f);

static fault_fn pick(const struct uffd_handlers *h, enum uffd_fault_kind kind)
{
	return kind == UFFD_FAULT_MINOR ? h->minor : kind == UFFD_FAULT_WP ? h->wp : h->missing;
}

/* The region's handlers, else the uffd's; NULL: the default resolution. */
static fault_fn fault_handler(struct loop_runner *rn, struct loop_watch *w,
			      const struct uffd_fault *f, void **ctx)
{
	struct uffd_region *r = f->region;

	if (r && __atomic_load_n(&r->loop, __ATOMIC_ACQUIRE) == rn->l) {
		*ctx = r->loop_ctx;
		return pick(&r->loop_handlers, f->kind);
	}
	if (!atomic_load_explicit(&w->has_handlers, memory_order_acquire))
		return NULL;
	*ctx = w->ctx;
	return pick(&w->h, f->kind);
}

static bool range_ok(const struct uffd_fault *f, const struct uffd_fault *orig, size_t ps)
{
	uintptr_t a = (uintptr_t)f->addr, o = (uintptr_t)orig->addr;

	/* Widened or moved, the range must still hold the faulting page. */
	return f->len && !((a | f->len) & (ps - 1)) && a + f->len > a &&
	       a <= o && a + f->len >= o + ps;
}

static void count_kind(struct loop_runner *rn, enum uffd_fault_kind kind)
{
	if (kind == UFFD_FAULT_MINOR)
		COUNT(rn, minor);
	else if (kind == UFFD_FAULT_WP)
		COUNT(rn, wp);
	else
		COUNT(rn, missing);
}

/* A fault its handler could not serve: its own page is poisoned or reported. */
static void handler_failed(struct loop_runner *rn, struct loop_watch *w,
			   const struct uffd_fault *f, int err, const char *why)
{
	if (poison_on_error(rn)) {
		struct loop_res r = { w, (uintptr_t)f->addr, (uintptr_t)f->addr + f->len,
				      f->len, LOOP_POISON, 0, 0 };

		fault_fail(rn, f, err, "uffd loop: %s for the %s fault at %p (%zu bytes): %s; "
			   "the page is poisoned (UFFD_LOOP_POISON_ON_ERROR): the faulting thread gets SIGBUS",
			   why, kind_names[f->kind], f->addr, f->len, uffd__errname(err));
		push(rn, &r);
		return;
	}
	fault_fail(rn, f, err, "uffd loop: %s for the %s fault at %p (%zu bytes): %s; the faulting "
		   "thread waits until the page is resolved from another thread (uffd_continue_range, "
		   "uffd_copy, uffd_poison) or the loop is made with UFFD_LOOP_POISON_ON_ERROR",
		   why, kind_names[f->kind], f->addr, f->len, uffd__errname(err));
}

/* UFFD_RETRY: the message goes back in the queue, due after a back-off. */
static void refault(struct loop_runner *rn, struct loop_watch *w, const struct uffd_msg *m,
		    const struct uffd_fault *f, const struct loop_qmsg *prev)
{
	long long now = loop__now_us();
	struct loop_qmsg q = { w, *m, now, now + 50, 1 };

	if (prev) {
		q.since = prev->since;
		q.tries = prev->tries + 1;
		q.due = now + (50ll << (q.tries < 6 ? q.tries : 6));
		if (q.due - now > REFAULT_BACKOFF_MAX_US)
			q.due = now + REFAULT_BACKOFF_MAX_US;
	}
	if (now - q.since > RETRY_LIMIT_US) {
		handler_failed(rn, w, f, -EAGAIN, "the handler kept answering UFFD_RETRY for 5 s");
		return;
	}
	COUNT(rn, retried);
	if (!q_push(&rn->refault, &q))	/* full: the thread faults again, the handler sees it then */
		uffd_wake(w->u, f->addr, f->len);
}

static void handle_fault(struct loop_runner *rn, struct loop_watch *w, const struct uffd_msg *m,
			 struct uffd_fault *f, const struct loop_qmsg *prev)
{
	struct uffd_fault orig = *f;
	size_t ps = f->len;	/* decode sets the page size */
	void *ctx = NULL;
	fault_fn fn = fault_handler(rn, w, f, &ctx);
	int v;

	if (!prev)
		count_kind(rn, f->kind);	/* before the handler may wake the thread */
	v = fn ? fn(ctx, f) : UFFD_RESOLVE;
	switch (v) {
	case UFFD_RESOLVE:
	case UFFD_RESOLVE_WP:
		if (!range_ok(f, &orig, ps)) {
			handler_failed(rn, w, &orig, -EINVAL, "the handler returned UFFD_RESOLVE with a "
				       "range not aligned to the page size or not holding the faulting page");
			break;
		}
		note_fault_page(rn, w, (uintptr_t)orig.addr, ps);
		push_default(rn, w, f, ps, v == UFFD_RESOLVE_WP);
		break;
	case UFFD_HANDLED:
		break;
	case UFFD_DEFER:
		COUNT(rn, deferred);	/* may race the resolver: counted after */
		break;
	case UFFD_RETRY:
	case -EAGAIN:
		refault(rn, w, m, &orig, prev);
		break;
	case -ENOENT:	/* the range is gone (unregistered, unmapped): let the thread fault again */
		uffd_wake(w->u, orig.addr, orig.len);
		break;
	case -ESRCH:	/* the owner exited: nobody is left to serve */
		COUNT(rn, owner_gone);
		break;
	default:
		handler_failed(rn, w, &orig, v < 0 ? v : -EINVAL,
			       v < 0 ? "the handler failed" : "the handler returned an unknown verdict");
	}
}

/* ---- events ---- */

enum ev_fn { EV_REMAP, EV_REMOVE, EV_UNMAP };

static void call_event(const struct uffd_handlers *h, void *ctx, enum ev_fn which,
		       const struct uffd_event *ev)
{
	if (which == EV_REMAP)
		h->remap(ctx, ev->remap.from, ev->remap.to, ev->remap.len);
	else if (which == EV_REMOVE)
		h->remove(ctx, ev->remove.start, ev->remove.len);
	else
		h->unmap(ctx, ev->remove.start, ev->remove.len);
}

static bool has_fn(const struct uffd_handlers *h, enum ev_fn which)
{
	return which == EV_REMAP ? h->remap != NULL
	       : which == EV_REMOVE ? h->remove != NULL : h->unmap != NULL;
}

/* The region whose base view holds [start, start+len), if any. */
static struct uffd_region *region_of(struct uffd *u, uintptr_t start, size_t len,
				     struct rangemap_entry *e)
{
	if (!rangemap_find(&u->regions, start, e) || start + len > e->end)
		return NULL;
	return e->ptr;
}

/* To the region's handler for the event if it has one, else the uffd's: once. */
static void dispatch_event(struct loop_runner *rn, struct loop_watch *w,
			   struct uffd_region *r, enum ev_fn which,
			   const struct uffd_event *ev)
{
	if (r && __atomic_load_n(&r->loop, __ATOMIC_ACQUIRE) == rn->l &&
	    has_fn(&r->loop_handlers, which))
		call_event(&r->loop_handlers, r->loop_ctx, which, ev);
	else if (atomic_load_explicit(&w->has_handlers, memory_order_acquire) &&
		 has_fn(&w->h, which))
		call_event(&w->h, w->ctx, which, ev);
}

/* Inside a gate section: allocating is safe here. */
static void adopt(struct loop_runner *rn, struct loop_watch *w, int fd)
{
	struct uffd *child = NULL;
	int v = -1, err;

	loop__reap(rn, true);	/* children that exited make room first */
	err = uffd_open_fd(&child, fd, w->u->features);
	if (err) {
		close(fd);
		loop__fail(rn, err, "uffd loop: cannot wrap the fork child's userfaultfd %d: %s",
			   fd, uffd_last_error());
		return;
	}
	/* Out of memory the child's page sizes are looked up per fault instead. */
	uffd__ranges_inherit(child, w->u);
	if (atomic_load_explicit(&w->has_handlers, memory_order_acquire) && w->h.fork)
		v = w->h.fork(w->ctx, child);
	if (v == 1)
		return;		/* the handler owns it */
	if (v == 0) {
		struct uffd_watch_opts wo = { .size = sizeof(wo), .event = w->wo.event, .owner_fd = -1 };

		err = loop__watch_add(rn->l, child, &w->h, w->ctx, &wo, true);
		if (!err) {
			COUNT(rn, adopted);
			return;
		}
		loop__fail(rn, err, "uffd loop: cannot watch the fork child's userfaultfd: %s",
			   uffd_last_error());
	}
	uffd_close(child);
}


/* Every queued resolution of w goes (the watch leaves the loop). */
static void drop_watch(struct loop_vec *v, struct loop_watch *w)
{
	size_t k = 0;

	for (size_t i = 0; i < v->n; i++)
		if (v->v[i].w != w)
			v->v[k++] = v->v[i];
	v->n = k;
}

/*
 * Queued resolutions of w inside [start, end) go: that memory was given
 * back or unmapped, and what was to be mapped there is stale. Their
 * threads are woken to fault again (or to find the mapping gone).
 */
static void forget(struct loop_vec *v, struct loop_watch *w, uintptr_t start, uintptr_t end)
{
	size_t k = 0;

	for (size_t i = 0; i < v->n; i++) {
		struct loop_res *r = &v->v[i];

		if (r->w != w || r->end <= start || r->addr >= end) {
			v->v[k++] = *r;
			continue;
		}
		uffd_wake(w->u, (void *)r->addr, r->end - r->addr);
	}
	v->n = k;
}

/*
 * The owner gave [start, end) back (balloon, MADV_DONTNEED): in every
 * region with a page source, those pages get zero pages on their next
 * fault, not the source's old contents.
 */
static void mark_removed(struct uffd *u, uintptr_t start, uintptr_t end)
{
	struct rangemap_entry e;
	unsigned t = rangemap_read_begin(&u->regions);

	for (uintptr_t a = start; a < end && rangemap_next(&u->regions, a, &e) && e.start < end; a = e.end) {
		struct uffd_region *r = e.ptr;
		uintptr_t s = a > e.start ? a : e.start, x = end < e.end ? end : e.end;

		uffd__region_mark_removed(r, s - e.start + e.off, x - s);
	}
	rangemap_read_end(&u->regions, t);
}

/* r: the region holding the event's range, pinned by the caller, or NULL. */
static void handle_event(struct loop_runner *rn, struct loop_watch *w,
			 const struct uffd_event *ev, struct uffd_region *r)
{
	uintptr_t start = (uintptr_t)ev->remove.start;

	COUNT(rn, events);
	if (w->wo.event)	/* first, with the handle it came from */
		w->wo.event(w->ctx, w->u, ev);
	switch (ev->type) {
	case UFFD_EV_FORK:
		adopt(rn, w, ev->fork.fd);
		break;
	case UFFD_EV_REMAP:	/* the bookkeeping moved already (uffd__remap_apply) */
		dispatch_event(rn, w, r, EV_REMAP, ev);
		break;
	case UFFD_EV_REMOVE:
		mark_removed(w->u, start, start + ev->remove.len);
		/* fall through */
	case UFFD_EV_UNMAP:
		forget(&rn->res, w, start, start + ev->remove.len);
		forget(&rn->retry, w, start, start + ev->remove.len);
		dispatch_event(rn, w, r, ev->type == UFFD_EV_REMOVE ? EV_REMOVE : EV_UNMAP, ev);
		break;
	case UFFD_EV_FAULT:
		break;
	}
}

/* The handle of the message this thread handles (uffd_loop_current()). */
static __thread struct uffd *tl_current;

UFFD_EXPORT struct uffd *uffd_loop_current(void)
{
	return tl_current;
}
UFFD_EXPORT_OWN(loop_current);

/* One message, inside a gate section. prev: the queue entry of a retried fault. */
static void handle_one(struct loop_runner *rn, struct loop_watch *w, const struct uffd_msg *msg,
		       const struct loop_qmsg *prev)
{
	struct uffd_event ev;
	struct uffd_region *r = NULL;
	struct rangemap_entry e = { 0 };
	struct uffd_msg mm = *msg, *m = &mm;
	struct uffd *was;
	unsigned t;
	int err;

	if (m->event == UFFD_EVENT_REMAP) {
		if (m->reserved1 != REMAP_EARLY_DONE && __atomic_load_n(&rn->remaps_behind, __ATOMIC_RELAXED))
			__atomic_sub_fetch(&rn->remaps_behind, 1, __ATOMIC_RELEASE);
		uffd__remap_apply(w->u, m);	/* what the reading path left; outside the read section */
	}
	/* The region found stays alive (pinned) until its handler or callback returns. */
	t = rangemap_read_begin(&w->u->regions);
	err = uffd__decode_msg(w->u, m, &ev);
	if (!err && ev.type == UFFD_EV_FAULT)
		r = ev.fault.region;
	else if (!err && ev.type == UFFD_EV_REMAP)	/* moved already: the region is at to */
		r = region_of(w->u, (uintptr_t)ev.remap.to, ev.remap.len, &e);
	else if (!err && ev.type != UFFD_EV_FORK)
		r = region_of(w->u, (uintptr_t)ev.remove.start, ev.remove.len, &e);
	if (r)
		uffd__region_pin(r);
	rangemap_read_end(&w->u->regions, t);
	if (err) {
		if (m->event == UFFD_EVENT_FORK)	/* never leak the fd */
			close((int)m->arg.fork.ufd);
		loop__fail(rn, -EPROTO, "uffd loop: unknown or malformed message (event 0x%x)", m->event);
		return;
	}
	if (!prev)
		rn->handled++;
	was = tl_current;	/* a handler may fork: a nested message is not ours */
	tl_current = w->u;
	if (ev.type == UFFD_EV_FAULT)
		handle_fault(rn, w, m, &ev.fault, prev);
	else
		handle_event(rn, w, &ev, r);
	tl_current = was;
	if (r)
		uffd__region_unpin(r);
}

/* While a fork holds the gate shut: in order, behind whatever waits already. */
static void gate_queue(struct loop_runner *rn, struct loop_watch *w, const struct uffd_msg *m)
{
	struct loop_qmsg q = { .w = w, .m = *m };

	COUNT(rn, queued);
	/* Faults leave room for events, which cannot be read again. */
	if ((m->event != UFFD_EVENT_PAGEFAULT || rn->gated.n + GATE_EVENT_ROOM < rn->gated.cap) &&
	    q_push(&rn->gated, &q)) {
		atomic_fetch_add(&w->pending, 1);	/* an exited child's last events still come */
		return;
	}
	/* Full (events were counted in first: only a fault gets here): it faults again later. */
	uffd_wake(w->u, (void *)(uintptr_t)(m->arg.pagefault.address & ~(uint64_t)(w->u->page_size - 1)),
		  w->u->page_size);
}

/*
 * Room in rn->gated for w's events while the gate is shut. A watch of
 * another process (an adopted fork child, a received handle) leaves a
 * quarter free: the FORK message a fork of this process waits for comes
 * on one of its own handles, behind at most one event per thread, and
 * must find room, or the gate would never open.
 */
static size_t gate_room(const struct loop_runner *rn, const struct loop_watch *w)
{
	size_t cap = rn->gated.cap - (w->owned || w->u->ranges_unknown ? rn->gated.cap / 4 : 0);

	return cap > rn->gated.n ? cap - rn->gated.n : 0;
}

size_t loop__gate_room_own(const struct loop_runner *rn)
{
	return rn->gated.cap - rn->gated.n;
}

void loop__queue_msgs(struct loop_runner *rn, struct loop_watch *w,
		      const struct uffd_msg *m, size_t n)
{
	for (int faults = 0; faults < 2; faults++)
		for (size_t i = 0; i < n; i++)
			if ((m[i].event == UFFD_EVENT_PAGEFAULT) == faults)
				gate_queue(rn, w, &m[i]);
}

static size_t count_events(const struct uffd_msg *m, size_t n)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += m[i].event != UFFD_EVENT_PAGEFAULT;
	return k;
}

/*
 * A REMOVE just read: the kernel zaps its range now, before the gate
 * opens for the handlers. Each region of this loop it overlaps with a
 * given_back hook hears of its part at once (pinned, as for a handler).
 * Lock-free and allocation-free: a fork may be holding the gate.
 */
static void given_back(struct loop_runner *rn, struct loop_watch *w, const struct uffd_msg *m)
{
	uintptr_t start = (uintptr_t)m->arg.remove.start, end = (uintptr_t)m->arg.remove.end;
	struct rangemap_entry e;
	unsigned t = rangemap_read_begin(&w->u->regions);

	for (uintptr_t a = start; a < end && rangemap_next(&w->u->regions, a, &e) && e.start < end; a = e.end) {
		struct uffd_region *r = e.ptr;
		uintptr_t s = a > e.start ? a : e.start, x = end < e.end ? end : e.end;
		void (*fn)(void *, uint64_t, uint64_t);

		uffd__region_pin(r);
		fn = __atomic_load_n(&r->given_back, __ATOMIC_ACQUIRE);
		if (fn && __atomic_load_n(&r->loop, __ATOMIC_ACQUIRE) == rn->l)
			fn(r->loop_ctx, s - e.start + e.off, x - s);
		uffd__region_unpin(r);
	}
	rangemap_read_end(&w->u->regions, t);
}

/*
 * The kernel lets mremap() return once its REMAP message is read: the
 * regions and page sizes move here, on the reading path, before the
 * message may wait for the fork gate, with no allocation and no lock an
 * application thread may hold. What cannot be done so (a writer holds
 * the map's lock, no spare table) is done when the message is handled;
 * from then on, until those are, later REMAPs wait too, to keep the
 * kernel's order. REMOVEs go to given_back() in the same pass, so that
 * each sees the regions where the REMAPs before it put them.
 */
#ifdef LIBUFFD_TEST_HOOKS
void (*uffd__test_read_early)(const struct uffd_msg *m, size_t n);
#endif

void loop__read_early(struct loop_runner *rn, struct loop_watch *w, struct uffd_msg *m, size_t n)
{
	/* A fork child's page sizes are copied from the table as it was at the FORK. */
	bool fork_first = false;

#ifdef LIBUFFD_TEST_HOOKS
	void (*hook)(const struct uffd_msg *, size_t) = __atomic_load_n(&uffd__test_read_early, __ATOMIC_ACQUIRE);

	if (hook)	/* a reader held up between its read and the hooks */
		hook(m, n);
#endif

	for (size_t i = 0; !fork_first && i < rn->gated.n; i++)
		fork_first = q_at(&rn->gated, i)->m.event == UFFD_EVENT_FORK;
	for (size_t i = 0; i < n; i++) {
		fork_first |= m[i].event == UFFD_EVENT_FORK;
		if (m[i].event == UFFD_EVENT_REMOVE)
			given_back(rn, w, &m[i]);	/* in order: after the REMAPs before it */
		if (m[i].event != UFFD_EVENT_REMAP)
			continue;
		if (fork_first || __atomic_load_n(&rn->remaps_behind, __ATOMIC_RELAXED) ||
		    !uffd__remap_early(w->u, &m[i]))
			__atomic_add_fetch(&rn->remaps_behind, 1, __ATOMIC_RELEASE);
	}
}

/*
 * A read's events first, then its faults (the kernel returns faults
 * first): a fault read with a REMOVE was raised before it, and must be
 * served against the memory as it is after it. Never outside the gate:
 * what does not fit in the queue stays where it is.
 */
bool loop__handle_msgs(struct loop_runner *rn, struct loop_watch *w,
		       const struct uffd_msg *m, size_t n)
{
	bool open;

	open = !rn->gated.n && uffd__gate_enter();

	/* A quarter full: forks not yet begun wait until the queue drained. */
	if (!open && rn->gated.n + n >= rn->gated.cap / 4)
		uffd__gate_want(&rn->wants_gate, true);
	if (!open && count_events(m, n) > gate_room(rn, w))
		return false;
	if (!open) {
		loop__queue_msgs(rn, w, m, n);
		return true;
	}
	tl_loop = rn->l;
	for (int faults = 0; faults < 2; faults++)
		for (size_t i = 0; i < n; i++)
			if ((m[i].event == UFFD_EVENT_PAGEFAULT) == faults)
				handle_one(rn, w, &m[i], NULL);
	tl_loop = NULL;
	uffd__gate_leave();
	return true;
}

bool loop__has_kept(const struct loop_runner *rn)
{
	for (const struct loop_slot *s = rn->slots; s; s = s->next)
		if (s->kept)
			return true;
	return false;
}

/* Slots that kept their messages for the gate: behind the queue, in order. */
static void run_kept(struct loop_runner *rn)
{
	for (struct loop_slot *s = rn->slots; s; s = s->next)
		if (s->kept && !s->dying && loop__handle_msgs(rn, s->w, s->buf, s->kept)) {
			atomic_fetch_sub(&s->w->pending, (unsigned)s->kept);
			s->kept = 0;
		}
}

void loop__close_forks(const struct uffd_msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (m[i].event == UFFD_EVENT_FORK)
			close((int)m[i].arg.fork.ufd);
}

/* Messages that waited for the gate, then kept ones, then faults due for their retry. */
void loop__run_queued(struct loop_runner *rn)
{
	long long now;
	size_t n;

	if (!rn->gated.n && !loop__has_kept(rn))	/* drained, or dropped (a watch left) */
		uffd__gate_want(&rn->wants_gate, false);
	if ((!rn->gated.n && !rn->refault.n && !loop__has_kept(rn)) || !uffd__gate_enter())
		return;
	tl_loop = rn->l;
	while (rn->gated.n) {
		struct loop_qmsg q = q_pop(&rn->gated);

		handle_one(rn, q.w, &q.m, NULL);
		atomic_fetch_sub(&q.w->pending, 1);
	}
	run_kept(rn);
	if (!rn->gated.n && !loop__has_kept(rn))
		uffd__gate_want(&rn->wants_gate, false);
	now = loop__now_us();
	for (n = rn->refault.n; n; n--) {	/* each entry once: a retry may queue itself again */
		struct loop_qmsg q = q_pop(&rn->refault);

		if (q.due > now)
			q_push(&rn->refault, &q);
		else
			handle_one(rn, q.w, &q.m, &q);
	}
	tl_loop = NULL;
	uffd__gate_leave();
}

/* FORKs kept in a slot's buffer: compacted in place. */
static void drop_dead_kept(struct loop_runner *rn, struct loop_slot *s)
{
	size_t k = 0;

	for (size_t i = 0; i < s->kept; i++) {
		const struct uffd_msg *m = &s->buf[i];

		if (m->event == UFFD_EVENT_FORK && loop__child_exited((int)m->arg.fork.ufd)) {
			close((int)m->arg.fork.ufd);
			atomic_fetch_sub(&s->w->pending, 1);
			COUNT(rn, reaped);
		} else {
			s->buf[k++] = *m;
		}
	}
	s->kept = k;
}

void loop__drop_dead_forks(struct loop_runner *rn)
{
	for (struct loop_slot *s = rn->slots; s; s = s->next)
		if (s->kept)
			drop_dead_kept(rn, s);
	for (size_t n = rn->gated.n; n; n--) {
		struct loop_qmsg m = q_pop(&rn->gated);

		if (m.m.event == UFFD_EVENT_FORK && loop__child_exited((int)m.m.arg.fork.ufd)) {
			close((int)m.m.arg.fork.ufd);
			atomic_fetch_sub(&m.w->pending, 1);
			COUNT(rn, reaped);
		} else {
			q_push(&rn->gated, &m);
		}
	}
}

/* A watch leaves (NULL: every watch): its queued messages go, FORK fds closed. */
void loop__forget_watch(struct loop_runner *rn, struct loop_watch *w)
{
	struct loop_msgq *qs[] = { &rn->gated, &rn->refault };
	size_t kept = 0;
	unsigned behind = 0;

	if (w && rn->res.v) {	/* its resolutions too: the handle may be closed next */
		drop_watch(&rn->res, w);
		drop_watch(&rn->retry, w);
		for (size_t i = 0; i < rn->nfpages; i++)
			if (rn->fpages[i].w != w)
				rn->fpages[kept++] = rn->fpages[i];
		rn->nfpages = kept;
	}

	for (size_t k = 0; k < 2; k++) {
		struct loop_msgq *q = qs[k];

		for (size_t n = q->v ? q->n : 0; n; n--) {
			struct loop_qmsg m = q_pop(q);

			if (w && m.w != w) {
				q_push(q, &m);
				continue;
			}
			if (q == &rn->gated)
				atomic_fetch_sub(&m.w->pending, 1);
			if (m.m.event == UFFD_EVENT_FORK)
				close((int)m.m.arg.fork.ufd);
		}
	}
	/* Those of its REMAPs that waited to be moved are gone: count what is left. */
	for (size_t i = 0; rn->gated.v && i < rn->gated.n; i++)
		behind += q_at(&rn->gated, i)->m.event == UFFD_EVENT_REMAP &&
			  q_at(&rn->gated, i)->m.reserved1 != REMAP_EARLY_DONE;
	__atomic_store_n(&rn->remaps_behind, behind, __ATOMIC_RELEASE);
}

/* ---- resolution ---- */

static int cmp_res(const struct loop_res *a, const struct loop_res *b)
{
	if (a->w != b->w)
		return (uintptr_t)a->w < (uintptr_t)b->w ? -1 : 1;
	if (a->op != b->op)
		return a->op < b->op ? -1 : 1;
	if (a->addr != b->addr)
		return a->addr < b->addr ? -1 : 1;
	return 0;
}

/* In place, no allocation (glibc's qsort may allocate): heapsort. */
static void sift(struct loop_res *v, size_t i, size_t n)
{
	for (;;) {
		size_t c = 2 * i + 1;
		struct loop_res t;

		if (c >= n)
			return;
		if (c + 1 < n && cmp_res(&v[c], &v[c + 1]) < 0)
			c++;
		if (cmp_res(&v[i], &v[c]) >= 0)
			return;
		t = v[i];
		v[i] = v[c];
		v[c] = t;
		i = c;
	}
}

static void sort_res(struct loop_res *v, size_t n)
{
	for (size_t i = n / 2; i-- > 0;)
		sift(v, i, n);
	for (size_t end = n; end > 1; end--) {
		struct loop_res t = v[0];

		v[0] = v[end - 1];
		v[end - 1] = t;
		sift(v, 0, end - 1);
	}
}

/* Sorts v and merges overlapping or adjacent ranges of one watch and op. */
static void merge(struct loop_vec *v)
{
	size_t k = 0;

	if (v->n < 2)
		return;
	sort_res(v->v, v->n);
	for (size_t i = 1; i < v->n; i++) {
		struct loop_res *cur = &v->v[k], *nx = &v->v[i];

		if (nx->w == cur->w && nx->op == cur->op && nx->ps == cur->ps &&
		    nx->addr <= cur->end && nx->src - nx->addr == cur->src - cur->addr) {
			if (nx->end > cur->end)
				cur->end = nx->end;
			if (nx->since && (!cur->since || nx->since < cur->since))
				cur->since = nx->since;
		} else {
			v->v[++k] = *nx;
		}
	}
	v->n = k + 1;
}

/* hugetlb and MISSING|WP: copies of a zeroed page, one per page. */
static int copy_zero(struct loop_runner *rn, struct uffd *u, const struct loop_res *r,
		     unsigned flags, size_t *done)
{
	struct uffd_loop *l = rn->l;
	int err = 0;

	*done = 0;
	if (!l->zero || l->zero_len < r->ps)
		return uffd__err(-EINVAL, "uffd loop: no zeroed page of %zu bytes for the missing fault at 0x%lx",
				 r->ps, (unsigned long)r->addr);
	for (uintptr_t a = r->addr; a < r->end && !err; a += r->ps) {
		size_t d = 0;

		if (a != r->addr)
			COUNT(rn, ioctls);
		err = uffd__resolve(u, UFFD_OP_COPY, a, (uintptr_t)l->zero, r->ps,
				    UFFD_SKIP_EXISTING | flags, r->ps, &d);
		*done += d;
	}
	return err;
}

/*
 * One run, one ioctl (copies of the zero page: one per page). dflt:
 * UFFD__DEFAULT for a mapping decided by the record, inside a section;
 * else 0, and a write-protected mapping the handler asked for is recorded.
 */
static int exec_op(struct loop_runner *rn, const struct loop_res *r, unsigned dflt, size_t *done)
{
	struct uffd *u = r->w->u;
	size_t len = r->end - r->addr;
	int err;

	COUNT(rn, ioctls);
	switch (r->op) {
	case LOOP_CONTINUE:
	case LOOP_CONTINUE_WP:
		return uffd__resolve(u, UFFD_OP_CONTINUE, r->addr, 0, len,
				     UFFD_SKIP_EXISTING | (r->op == LOOP_CONTINUE_WP ? UFFD_MAP_WP : 0) | dflt,
				     r->ps, done);
	case LOOP_ZEROPAGE:
		return uffd__resolve(u, UFFD_OP_ZEROPAGE, r->addr, 0, len, UFFD_SKIP_EXISTING | dflt,
				     r->ps, done);
	case LOOP_POISON:
		err = uffd__resolve(u, UFFD_OP_POISON, r->addr, 0, len, UFFD_SKIP_EXISTING,
				    r->ps, done);
		atomic_fetch_add_explicit(&rn->c.poisoned, *done / r->ps, memory_order_relaxed);
		return err;
	case LOOP_COPY_ZERO:
	case LOOP_COPY_ZERO_WP:
		return copy_zero(rn, u, r, (r->op == LOOP_COPY_ZERO_WP ? UFFD_MAP_WP : 0) | dflt, done);
	case LOOP_COPY_SRC:
	case LOOP_COPY_SRC_WP:
		return uffd__resolve(u, UFFD_OP_COPY, r->addr, r->src, len,
				     UFFD_SKIP_EXISTING | (r->op == LOOP_COPY_SRC_WP ? UFFD_MAP_WP : 0) | dflt,
				     r->ps, done);
	case LOOP_UNPROTECT:
		break;
	}
	err = uffd__writeprotect(u, r->addr, len, false, 0, r->ps);
	*done = err ? 0 : len;
	return err;
}

/* The write-protected form of a mapping op (a zero page has none: a copy of zeros). */
static enum loop_op wp_form(enum loop_op op)
{
	switch (op) {
	case LOOP_CONTINUE:
		return LOOP_CONTINUE_WP;
	case LOOP_ZEROPAGE:
	case LOOP_COPY_ZERO:
		return LOOP_COPY_ZERO_WP;
	case LOOP_COPY_SRC:
		return LOOP_COPY_SRC_WP;
	default:
		return op;
	}
}

/*
 * A default mapping: in runs of the record's state (wpstate.c), decided
 * inside a section that a protecting call waits for, and looked at again
 * after mapping a run writable: so no page is left writable once a call
 * protecting it has returned.
 */
static int exec(struct loop_runner *rn, const struct loop_res *r, size_t *done)
{
	struct uffd *u = r->w->u;
	uintptr_t a = r->addr;
	unsigned t;
	int err = 0;

	if (wp_form(r->op) == r->op || !uffd__wp_tracked(u))
		return exec_op(rn, r, 0, done);
	*done = 0;
	t = uffd__wp_enter(u);
	while (!err && a < r->end) {
		struct loop_res run = *r;
		bool wp;
		size_t d = 0;

		run.addr = a;
		run.end = a + uffd__wp_run_at(u, a, r->end - a, &wp);
		run.src = r->src ? r->src + (a - r->addr) : 0;
		if (wp)
			run.op = wp_form(r->op);
		err = exec_op(rn, &run, UFFD__DEFAULT, &d);
		/* Mapped, but a protection recorded meanwhile failed: the run again. */
		if (!err && !wp && (err = uffd__wp_keep(u, run.addr, run.end - run.addr)))
			d = 0;
		*done += d;
		a = run.end;
	}
	uffd__wp_exit(u, t);
	return err;
}

/* The page at a could not be resolved: poison or report it if a thread faults on it. */
static void fail_page(struct loop_runner *rn, const struct loop_res *r, uintptr_t a, int err)
{
	struct uffd_fault f = { .uffd = r->w->u, .addr = (void *)a, .len = r->ps };
	size_t done = 0;
	struct loop_res one = { r->w, a, a + r->ps, r->ps, LOOP_POISON, 0, 0 };

	if (r->op != LOOP_POISON && !is_fault_page(rn, r->w, a))
		return;		/* a neighbour added for fault-around: it faults on its own */
	if (r->op != LOOP_POISON && poison_on_error(rn)) {
		fault_fail(rn, &f, err, "uffd loop: resolving the fault at 0x%lx failed (%s): %s; the page "
			   "is poisoned (UFFD_LOOP_POISON_ON_ERROR)", (unsigned long)a,
			   uffd__errname(err), uffd_last_error());
		if (!exec(rn, &one, &done))
			return;
		err = -EIO;
	}
	fault_fail(rn, &f, err, "uffd loop: resolving the fault at 0x%lx failed: %s; the faulting "
		   "thread waits until the page is resolved from another thread", (unsigned long)a,
		   uffd_last_error());
}

/*
 * An -EAGAIN run waits for the events. Only its fault pages are kept (the
 * neighbours fault on their own); past the bound they fail.
 */
static void retry_later(struct loop_runner *rn, const struct loop_res *r, uintptr_t from)
{
	long long now = loop__now_us(), since = r->since ? r->since : now;

	for (uintptr_t a = from; a < r->end; a += r->ps) {
		struct loop_res page = { r->w, a, a + r->ps, r->ps, r->op, since,
					 r->src ? r->src + (a - r->addr) : 0 };

		if (!is_fault_page(rn, r->w, a))
			continue;
		if (now - since > RETRY_LIMIT_US) {
			uffd__err(-EAGAIN, "a non-cooperative event stayed unread for 5 s (EAGAIN)");
			fail_page(rn, r, a, -EAGAIN);
		} else if (rn->retry.n < rn->retry.cap) {
			COUNT(rn, retried);
			rn->retry.v[rn->retry.n++] = page;
		} else {	/* no room: the thread faults again and comes back as a new message */
			uffd_wake(r->w->u, (void *)a, r->ps);
		}
	}
}

/*
 * Resolves r with one ioctl when all goes well. On a failure the kernel
 * stops at the failing page: that page alone is dealt with, the rest of
 * the run is resolved on.
 */
static void resolve_run(struct loop_runner *rn, const struct loop_res *r)
{
	uintptr_t a = r->addr;

	while (a < r->end) {
		struct loop_res cur = *r;
		size_t done = 0;
		int err;

		cur.addr = a;
		if (r->src)
			cur.src = r->src + (a - r->addr);
		err = exec(rn, &cur, &done);
		if (!err)
			return;
		a += done - done % r->ps;
		switch (err) {
		case -EAGAIN:		/* an event is unread */
			retry_later(rn, r, a);
			return;
		case -ENOENT:		/* unmapped meanwhile: let the threads fault again */
			uffd_wake(r->w->u, (void *)a, r->end - a);
			return;
		case -ESRCH:		/* the owner exited: nothing left to serve */
			COUNT(rn, owner_gone);
			return;
		default:
			fail_page(rn, r, a, err);
			a += r->ps;
		}
	}
}

static void resolve_all(struct loop_runner *rn)
{
	merge(&rn->res);
	for (size_t i = 0; i < rn->res.n; i++)
		resolve_run(rn, &rn->res.v[i]);
	rn->res.n = 0;
}

void loop__resolve(struct loop_runner *rn)
{
	resolve_all(rn);
	rn->nfpages = 0;	/* the wake is over */
}

void loop__retry(struct loop_runner *rn)
{
	struct loop_vec tmp;

	if (!rn->retry.n)
		return;
	/* Retries hold fault pages only (retry_later()). */
	for (size_t i = 0; i < rn->retry.n; i++)
		note_fault_page(rn, rn->retry.v[i].w, rn->retry.v[i].addr, rn->retry.v[i].ps);
	tmp = rn->res;		/* empty between wakes: swap the storage */
	rn->res = rn->retry;
	rn->retry = tmp;
	loop__resolve(rn);
}
