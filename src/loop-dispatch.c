/* SPDX-License-Identifier: MIT */
/*
 * The loop's message handling: decode, pick the handler set (region first,
 * then the uffd's, else the default), collect RESOLVE verdicts, and resolve
 * them sorted and merged: one ioctl per run of adjacent pages. Resolutions
 * refused with -EAGAIN (a non-cooperative event is unread) wait in a retry
 * queue until the events are handled.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loop-internal.h"

#define PM_UFFD_WP (1ull << 57)	/* pagemap: the PTE is uffd-write-protected */
#define RETRY_LIMIT_NS 2000000000ll	/* give up on -EAGAIN after 2 s */

#define COUNT(rn, field) atomic_fetch_add_explicit(&(rn)->c.field, 1, memory_order_relaxed)

static const char *const kind_names[] = {
	[UFFD_FAULT_MISSING] = "missing", [UFFD_FAULT_MINOR] = "minor", [UFFD_FAULT_WP] = "wp",
};

/* ---- vectors ---- */

void loop__vec_free(struct loop_vec *v)
{
	free(v->v);
	*v = (struct loop_vec){ 0 };
}

static int vec_push(struct loop_vec *v, const struct loop_res *r)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 64;
		struct loop_res *nv = realloc(v->v, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		v->v = nv;
		v->cap = cap;
	}
	v->v[v->n++] = *r;
	return 0;
}

/* ---- failures ---- */

static bool poison_on_error(const struct loop_runner *rn)
{
	return rn->l->o.flags & UFFD_LOOP_POISON_ON_ERROR;
}

/* Keeps the first failure for uffd_loop_run*(); its text stays the thread's last error. */
static void record(struct loop_runner *rn, int err)
{
	COUNT(rn, errors);
	if (!rn->fail)
		rn->fail = err;
}

void loop__fail(struct loop_runner *rn, int err, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (rn->fail) {
		COUNT(rn, errors);
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	uffd__err(err, "%s", msg);
	record(rn, err);
}

static void resolve_now(struct loop_runner *rn, struct loop_res *r);

/* Queues r; when memory runs out, resolves it at once, unbatched. */
static void push(struct loop_runner *rn, struct loop_vec *v, struct loop_res *r)
{
	if (vec_push(v, r))
		resolve_now(rn, r);
}

/* A fault its handler could not serve: poison it, or report it and leave it pending. */
static void fault_failed(struct loop_runner *rn, struct loop_watch *w,
			 const struct uffd_fault *f, int err, const char *why)
{
	if (poison_on_error(rn)) {
		struct loop_res r = { w, (uintptr_t)f->addr, (uintptr_t)f->addr + f->len,
				      f->len, LOOP_POISON };

		COUNT(rn, errors);
		push(rn, &rn->res, &r);
		return;
	}
	loop__fail(rn, err, "uffd loop: %s for the %s fault at %p (%zu bytes): %s; the faulting "
		   "thread waits until the page is resolved from another thread (uffd_continue_range, "
		   "uffd_copy, uffd_poison) or the loop is made with UFFD_LOOP_POISON_ON_ERROR",
		   why, kind_names[f->kind], f->addr, f->len, uffd__errname(err));
}

/* ---- default resolution ---- */

static int pagemap_fd(struct uffd *u)
{
	int fd = atomic_load(&u->pagemap_fd), none = -1;

	if (fd >= 0)
		return fd;
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && !atomic_compare_exchange_strong(&u->pagemap_fd, &none, fd)) {
		close(fd);
		fd = none;
	}
	return fd;
}

/* Whether the page at addr is uffd-write-protected (a PTE or a marker). */
static bool page_wp(int pm, uintptr_t addr)
{
	uint64_t e = 0;
	off_t off = (off_t)(addr / uffd__base_page_size() * sizeof(e));

	return pread(pm, &e, sizeof(e), off) == sizeof(e) && (e & PM_UFFD_WP);
}

/*
 * A minor fault in a region also registered for write-protection: CONTINUE
 * would drop the protection of a zapped page (its uffd-wp marker), so such
 * pages are mapped with UFFD_MAP_WP. Splits r into runs of equal state.
 */
static void push_minor_wp(struct loop_runner *rn, struct loop_res *r)
{
	int pm = pagemap_fd(r->w->u);
	struct loop_res run = *r;

	if (pm < 0) {
		run.op = LOOP_CONTINUE_WP;	/* keeping protection is the safe side */
		push(rn, &rn->res, &run);
		return;
	}
	run.end = run.addr;
	for (uintptr_t a = r->addr; a < r->end; a += r->ps) {
		enum loop_op op = page_wp(pm, a) ? LOOP_CONTINUE_WP : LOOP_CONTINUE;

		if (run.end > run.addr && op != run.op) {
			push(rn, &rn->res, &run);
			run.addr = a;
		}
		run.op = op;
		run.end = a + r->ps;
	}
	push(rn, &rn->res, &run);
}

static void push_default(struct loop_runner *rn, struct loop_watch *w,
			 const struct uffd_fault *f, size_t ps)
{
	struct loop_res r = { w, (uintptr_t)f->addr, (uintptr_t)f->addr + f->len, ps, 0 };

	switch (f->kind) {
	case UFFD_FAULT_MINOR:
		if (f->region && (f->region->modes & UFFDIO_REGISTER_MODE_WP)) {
			push_minor_wp(rn, &r);
			return;
		}
		r.op = LOOP_CONTINUE;
		break;
	case UFFD_FAULT_WP:
		r.op = LOOP_UNPROTECT;
		break;
	case UFFD_FAULT_MISSING:
		r.op = ps > w->u->page_size ? LOOP_COPY_ZERO : LOOP_ZEROPAGE;
		break;
	}
	push(rn, &rn->res, &r);
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

static bool range_ok(const struct uffd_fault *f, size_t ps)
{
	uintptr_t a = (uintptr_t)f->addr;

	return f->len && !((a | f->len) & (ps - 1)) && a + f->len > a;
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

static void handle_fault(struct loop_runner *rn, struct loop_watch *w,
			 struct uffd_fault *f)
{
	struct uffd_fault orig = *f;
	size_t ps = f->len;	/* decode sets the page size */
	void *ctx = NULL;
	fault_fn fn = fault_handler(rn, w, f, &ctx);
	int v;

	count_kind(rn, f->kind);	/* before the handler may wake the thread */
	v = fn ? fn(ctx, f) : UFFD_RESOLVE;
	switch (v) {
	case UFFD_RESOLVE:
		if (range_ok(f, ps))
			push_default(rn, w, f, ps);
		else
			fault_failed(rn, w, &orig, -EINVAL,
				     "the handler returned UFFD_RESOLVE with a range not aligned to the page size");
		break;
	case UFFD_HANDLED:
		break;
	case UFFD_DEFER:
		COUNT(rn, deferred);	/* may race the resolver: counted after */
		break;
	default:
		fault_failed(rn, w, &orig, v < 0 ? v : -EINVAL,
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

static void adopt(struct loop_runner *rn, struct loop_watch *w, int fd)
{
	struct uffd *child = NULL;
	int v = -1, err;

	err = uffd_open_fd(&child, fd, w->u->features);
	if (err) {
		close(fd);
		loop__fail(rn, err, "uffd loop: cannot wrap the fork child's userfaultfd %d: %s",
			   fd, uffd_last_error());
		return;
	}
	if (atomic_load_explicit(&w->has_handlers, memory_order_acquire) && w->h.fork)
		v = w->h.fork(w->ctx, child);
	if (v == 1)
		return;		/* the handler owns it */
	if (v == 0) {
		err = loop__watch_add(rn->l, child, &w->h, w->ctx, true);
		if (!err)
			return;
		loop__fail(rn, err, "uffd loop: cannot watch the fork child's userfaultfd: %s",
			   uffd_last_error());
	}
	uffd_close(child);
}

static void remap(struct loop_runner *rn, struct loop_watch *w, const struct uffd_event *ev)
{
	uintptr_t from = (uintptr_t)ev->remap.from, to = (uintptr_t)ev->remap.to;
	struct rangemap_entry e;
	struct uffd_region *r = region_of(w->u, from, ev->remap.len, &e);

	/* Only a whole region moves: a part of one has no bookkeeping of its own. */
	if (r && e.start == from && e.end - e.start == ev->remap.len &&
	    !rangemap_move(&w->u->regions, r, to))
		__atomic_store_n(&r->base, (void *)to, __ATOMIC_RELEASE);
	dispatch_event(rn, w, r, EV_REMAP, ev);
}

/* Drops queued resolutions of w inside [start, end): that memory is gone. */
static void forget(struct loop_vec *v, struct loop_watch *w, uintptr_t start, uintptr_t end)
{
	size_t k = 0;

	for (size_t i = 0; i < v->n; i++)
		if (v->v[i].w != w || v->v[i].end <= start || v->v[i].addr >= end)
			v->v[k++] = v->v[i];
	v->n = k;
}

static void handle_event(struct loop_runner *rn, struct loop_watch *w,
			 const struct uffd_event *ev)
{
	uintptr_t start = (uintptr_t)ev->remove.start;
	struct rangemap_entry e;

	COUNT(rn, events);
	switch (ev->type) {
	case UFFD_EV_FORK:
		adopt(rn, w, ev->fork.fd);
		break;
	case UFFD_EV_REMAP:
		remap(rn, w, ev);
		break;
	case UFFD_EV_REMOVE:
		dispatch_event(rn, w, region_of(w->u, start, ev->remove.len, &e), EV_REMOVE, ev);
		break;
	case UFFD_EV_UNMAP:
		dispatch_event(rn, w, region_of(w->u, start, ev->remove.len, &e), EV_UNMAP, ev);
		forget(&rn->res, w, start, start + ev->remove.len);
		forget(&rn->retry, w, start, start + ev->remove.len);
		break;
	case UFFD_EV_FAULT:
		break;
	}
}

void loop__handle_msgs(struct loop_runner *rn, struct loop_watch *w,
		       const struct uffd_msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct uffd_event ev;

		if (uffd__decode_msg(w->u, &m[i], &ev)) {
			if (m[i].event == UFFD_EVENT_FORK)	/* never leak the fd */
				close((int)m[i].arg.fork.ufd);
			loop__fail(rn, -EPROTO, "uffd loop: unknown or malformed message (event 0x%x)",
				   m[i].event);
			continue;
		}
		rn->handled++;
		if (ev.type == UFFD_EV_FAULT)
			handle_fault(rn, w, &ev.fault);
		else
			handle_event(rn, w, &ev);
	}
}

/* ---- resolution ---- */

static int cmp_res(const void *pa, const void *pb)
{
	const struct loop_res *a = pa, *b = pb;

	if (a->w != b->w)
		return (uintptr_t)a->w < (uintptr_t)b->w ? -1 : 1;
	if (a->op != b->op)
		return a->op < b->op ? -1 : 1;
	if (a->addr != b->addr)
		return a->addr < b->addr ? -1 : 1;
	return 0;
}

/* Sorts v and merges overlapping or adjacent ranges of one watch and op. */
static void merge(struct loop_vec *v)
{
	size_t k = 0;

	if (v->n < 2)
		return;
	qsort(v->v, v->n, sizeof(v->v[0]), cmp_res);
	for (size_t i = 1; i < v->n; i++) {
		struct loop_res *cur = &v->v[k], *nx = &v->v[i];

		if (nx->w == cur->w && nx->op == cur->op && nx->ps == cur->ps &&
		    nx->addr <= cur->end) {
			if (nx->end > cur->end)
				cur->end = nx->end;
		} else {
			v->v[++k] = *nx;
		}
	}
	v->n = k + 1;
}

static int copy_zero(struct loop_runner *rn, struct uffd *u, const struct loop_res *r,
		     size_t *done)
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
				    UFFD_SKIP_EXISTING, r->ps, &d);
		*done += d;
	}
	return err;
}

/* One run, one ioctl (hugetlb MISSING: one per huge page). */
static int exec(struct loop_runner *rn, const struct loop_res *r, size_t *done)
{
	struct uffd *u = r->w->u;
	size_t len = r->end - r->addr;
	int err;

	COUNT(rn, ioctls);
	switch (r->op) {
	case LOOP_CONTINUE:
	case LOOP_CONTINUE_WP:
		return uffd__resolve(u, UFFD_OP_CONTINUE, r->addr, 0, len,
				     UFFD_SKIP_EXISTING | (r->op == LOOP_CONTINUE_WP ? UFFD_MAP_WP : 0),
				     r->ps, done);
	case LOOP_ZEROPAGE:
		return uffd__resolve(u, UFFD_OP_ZEROPAGE, r->addr, 0, len, UFFD_SKIP_EXISTING,
				     r->ps, done);
	case LOOP_POISON:
		return uffd__resolve(u, UFFD_OP_POISON, r->addr, 0, len, UFFD_SKIP_EXISTING,
				     r->ps, done);
	case LOOP_COPY_ZERO:
		return copy_zero(rn, u, r, done);
	case LOOP_UNPROTECT:
		break;
	}
	err = uffd__writeprotect(u, r->addr, len, false, 0, r->ps);
	*done = err ? 0 : len;
	return err;
}

static void now(struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
}

static void resolve_now(struct loop_runner *rn, struct loop_res *r)
{
	size_t done = 0;
	int err = exec(rn, r, &done);
	struct loop_res rest = *r;

	rest.addr += done;
	if (!err)
		return;
	if (err == -EAGAIN) {		/* an event is unread: after the events */
		if (!rn->retry.n) {
			now(&rn->retry_since);
			rn->backoff_us = 0;
		}
		if (!vec_push(&rn->retry, &rest))
			return;
	}
	if (err == -ENOENT) {		/* unmapped meanwhile: let the thread fault again */
		uffd_wake(r->w->u, (void *)rest.addr, rest.end - rest.addr);
		return;
	}
	if (poison_on_error(rn) && r->op != LOOP_POISON) {
		COUNT(rn, errors);
		rest.op = LOOP_POISON;
		resolve_now(rn, &rest);
		return;
	}
	record(rn, err);	/* uffd__resolve() wrote the sentence */
}

void loop__resolve(struct loop_runner *rn)
{
	merge(&rn->res);
	for (size_t i = 0; i < rn->res.n; i++)
		resolve_now(rn, &rn->res.v[i]);
	rn->res.n = 0;
}

static long long elapsed_ns(const struct timespec *since)
{
	struct timespec t;

	now(&t);
	return (t.tv_sec - since->tv_sec) * 1000000000ll + (t.tv_nsec - since->tv_nsec);
}

void loop__retry(struct loop_runner *rn)
{
	struct timespec since = rn->retry_since;
	struct loop_vec tmp;

	if (!rn->retry.n)
		return;
	if (elapsed_ns(&since) > RETRY_LIMIT_NS) {
		for (size_t i = 0; i < rn->retry.n; i++)
			loop__fail(rn, -EAGAIN, "uffd loop: resolving 0x%lx+%zu kept failing with EAGAIN "
				   "for 2 s after the events were read",
				   (unsigned long)rn->retry.v[i].addr,
				   (size_t)(rn->retry.v[i].end - rn->retry.v[i].addr));
		rn->retry.n = 0;
		return;
	}
	tmp = rn->res;		/* empty between wakes: reuse its storage */
	rn->res = rn->retry;
	rn->retry = tmp;
	loop__resolve(rn);
	if (rn->retry.n)
		rn->retry_since = since;
}
