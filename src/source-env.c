/* SPDX-License-Identifier: MIT */
/*
 * Where sources run: the restore thread's io_uring. The sources attached
 * to a restore, in order of attachment; the descriptors each one's poll op
 * gives, watched with IORING_OP_POLL_ADD next to the restore's own reads
 * (a request stays armed while the source keeps giving the same descriptor
 * and events and neither read nor process ran on it -- they may close a
 * descriptor and open another of that number); process called when one fired, when the source's timeout
 * passed, or after uffd_source_notify(). What it needs is allocated when a
 * source is attached, before the restore thread runs.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "source-internal.h"

uint64_t uffd__env_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int grow(struct uffd_source_env *env)
{
	unsigned cap = env->cap ? env->cap * 2 : 8;
	struct env_src *v;

	if (env->n < env->cap)
		return 0;
	if (cap > 65535)
		return uffd__err(-ENOMEM, "uffd_source_attach: more than 65535 sources in one restore");
	v = realloc(env->v, cap * sizeof(*v));
	if (!v)
		return uffd__err(-ENOMEM, "uffd_source_attach: out of memory");
	env->v = v;
	env->cap = cap;
	return 0;
}

int uffd__env_add(struct uffd_source_env *env, struct uffd_source *src)
{
	struct env_src *e;
	unsigned m = src->max_fds;
	int err;

	if ((err = grow(env)))
		return err;
	e = &env->v[env->n];
	*e = (struct env_src){ .src = src, .due_ns = -1 };
	if (m) {
		e->fds = calloc(m, sizeof(*e->fds));
		e->armed = calloc(m, sizeof(*e->armed));
		e->gen = calloc(m, sizeof(*e->gen));
		if (!e->fds || !e->armed || !e->gen) {
			free(e->fds);
			free(e->armed);
			free(e->gen);
			return uffd__err(-ENOMEM, "uffd_source_attach: out of memory");
		}
		for (unsigned i = 0; i < m; i++)
			e->armed[i].fd = -1;
	}
	src->slot = env->n++;
	atomic_store(&src->env, env);
	return 0;
}

static void forget(struct env_src *e)
{
	atomic_store(&e->src->env, NULL);
	atomic_store(&e->src->notified, false);
	free(e->fds);
	free(e->armed);
	free(e->gen);
}

void uffd__env_truncate(struct uffd_source_env *env, unsigned n)
{
	while (env->n > n)
		forget(&env->v[--env->n]);
}

void uffd__env_free(struct uffd_source_env *env)
{
	uffd__env_truncate(env, 0);
	free(env->v);
	env->v = NULL;
	env->cap = 0;
}

struct io_uring_sqe *uffd__env_sqe(struct uffd_source_env *env)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(env->ring);

	if (!sqe) {	/* the SQ is full: hand it to the kernel, which empties it */
		io_uring_submit(env->ring);
		sqe = io_uring_get_sqe(env->ring);
	}
	if (sqe)
		env->ring_inflight++;
	return sqe;
}

/* ---- polling ---- */

static uint64_t poll_tag(unsigned src, unsigned slot, uint32_t gen)
{
	return (uint64_t)gen << 32 | (uint64_t)src << 16 | (uint64_t)slot << 3 | ENV_TAG_POLL;
}

/* Cancels slot i's request (its completion, -ECANCELED, is then ignored by generation). */
static void disarm(struct uffd_source_env *env, unsigned k, struct env_src *e, unsigned i)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(env->ring);

	if (!sqe) {
		io_uring_submit(env->ring);
		sqe = io_uring_get_sqe(env->ring);
	}
	if (sqe) {
		io_uring_prep_poll_remove(sqe, poll_tag(k, i, e->gen[i]));
		io_uring_sqe_set_data64(sqe, ENV_TAG_IGNORE);
	}
	e->gen[i]++;
	e->armed[i].fd = -1;
}

static void arm(struct uffd_source_env *env, unsigned k, struct env_src *e, unsigned i)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(env->ring);

	if (!sqe) {
		io_uring_submit(env->ring);
		sqe = io_uring_get_sqe(env->ring);
	}
	if (!sqe)
		return;
	e->gen[i]++;
	io_uring_prep_poll_add(sqe, e->fds[i].fd, (unsigned)e->fds[i].events);
	io_uring_sqe_set_data64(sqe, poll_tag(k, i, e->gen[i]));
	e->armed[i] = e->fds[i];
}

/* Asks the source what to wait on, and makes the ring wait on exactly that. */
static void prepare_one(struct uffd_source_env *env, unsigned k, uint64_t now, uint64_t *wait_ns)
{
	struct env_src *e = &env->v[k];
	struct uffd_source *s = e->src;
	int64_t timeout = -1;
	int n = s->ops.poll(s->impl, e->fds, s->max_fds, &timeout);

	bool fresh = e->rearm || s->touched;

	e->rearm = s->touched = false;
	e->nfds = n < 0 ? 0 : (unsigned)n > s->max_fds ? s->max_fds : (unsigned)n;
	for (unsigned i = 0; i < s->max_fds; i++) {
		bool want = i < e->nfds && e->fds[i].fd >= 0;
		bool same = want && !fresh && e->armed[i].fd == e->fds[i].fd &&
			    e->armed[i].events == e->fds[i].events;

		e->fds[i].revents = 0;
		if (e->armed[i].fd >= 0 && !same)
			disarm(env, k, e, i);
		if (want && !same)
			arm(env, k, e, i);
	}
	e->due_ns = timeout < 0 ? -1 : (int64_t)(now + (uint64_t)timeout);
	if (timeout >= 0 && (uint64_t)timeout < *wait_ns)
		*wait_ns = (uint64_t)timeout;
}

void uffd__env_prepare(struct uffd_source_env *env, uint64_t *wait_ns)
{
	uint64_t now = 0;

	for (unsigned k = 0; k < env->n; k++) {
		if (!env->v[k].src->ops.poll)
			continue;
		if (!now)
			now = uffd__env_now();
		prepare_one(env, k, now, wait_ns);
	}
}

void uffd__env_cqe(struct uffd_source_env *env, uint64_t tag, int res)
{
	unsigned k = (unsigned)(tag >> 16) & 0xffff, i = (unsigned)(tag & 0xffff) >> 3;
	struct env_src *e;

	if ((tag & ENV_TAG_MASK) == 0) {	/* a source's own request */
		uintptr_t *word = (uintptr_t *)(uintptr_t)tag;
		const struct uffd__ring_op *op = (const struct uffd__ring_op *)word[0];

		env->ring_inflight--;
		op->complete(word, res);
		return;
	}
	if ((tag & ENV_TAG_MASK) != ENV_TAG_POLL || k >= env->n)
		return;
	e = &env->v[k];
	if (i >= e->src->max_fds || e->gen[i] != (uint32_t)(tag >> 32) || e->armed[i].fd < 0)
		return;	/* cancelled, or the source moved on */
	e->armed[i].fd = -1;	/* a poll request fires once */
	if (i < e->nfds)
		e->fds[i].revents = (short)(res < 0 ? POLLERR : res);
	e->run = true;
}

void uffd__env_process(struct uffd_source_env *env)
{
	bool notified = atomic_exchange(&env->notified, false);
	uint64_t now = 0;

	for (unsigned k = 0; k < env->n && !env->detached; k++) {
		struct env_src *e = &env->v[k];
		struct uffd_source *s = e->src;

		if (notified && atomic_exchange(&s->notified, false))
			e->run = true;
		if (e->due_ns >= 0) {
			if (!now)
				now = uffd__env_now();
			if ((uint64_t)e->due_ns <= now)
				e->run = true;
		}
		if (!e->run || !s->ops.process)
			continue;
		e->run = false;
		e->due_ns = -1;
		e->rearm = true;	/* it may have closed a descriptor and opened another of that number */
		s->ops.process(s->impl, e->fds, e->nfds);
		for (unsigned i = 0; i < e->nfds; i++)
			e->fds[i].revents = 0;
	}
}

void uffd__env_detach(struct uffd_source_env *env)
{
	if (env->detached)
		return;
	env->detached = true;
	for (unsigned k = env->n; k-- > 0;) {
		struct uffd_source *s = env->v[k].src;

		if (s->ops.detach)
			s->ops.detach(s->impl);
	}
}

void uffd__source_fail(struct uffd_source *src, const char *why)
{
	struct uffd_source_env *env = atomic_load(&src->env);

	if (!env || atomic_exchange(&env->why_claimed, true))
		return;
	snprintf(env->why, sizeof(env->why), "%s", why);
	atomic_store(&env->why_set, true);
}

const char *uffd__env_why(struct uffd_source_env *env)
{
	return atomic_load(&env->why_set) ? env->why : NULL;
}
