/* SPDX-License-Identifier: MIT */
/*
 * A blocking read of a source not attached to a restore
 * (uffd_source_read_sync): the source is attached to an environment of the
 * caller's own (an io_uring and an eventfd made for the call), the read is
 * started in pieces and the ring driven as the restore thread drives its
 * own (source-env.c) until every piece is done or the time is up; then the
 * source is detached, ready for a restore. What a snapshot's header and
 * index need at open, before any restore runs, from any source.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "source-internal.h"

UFFD_OWN(source_read);
UFFD_OWN(source_attach);

#define PIECE (256u << 10)	/* bytes per read: within what every built-in source takes at once */
#define PIECES 8		/* reads in flight */
#define TAG_EFD 6u		/* this ring's eventfd read: not 0, POLL or IGNORE (source-internal.h) */
#define REFUSED_NS 1000000ull	/* a piece the source refused (-EAGAIN): again after this at the latest */

struct sync_read {
	struct uffd_source *src;
	uint8_t *buf;
	uint64_t off;
	size_t len, next;	/* bytes asked; the first not started yet */
	unsigned busy;		/* pieces started, not done */
	int err;		/* the first failure */
	struct uffd_source_req req[PIECES];
	bool used[PIECES];
};

static void piece_done(struct uffd_source_req *req, int res)
{
	struct sync_read *r = req->ctx;

	r->used[req - r->req] = false;
	r->busy--;
	if (res && !r->err)
		r->err = res;
}

/* Starts pieces while there are slots and the source takes them; false when it refused one. */
static bool start_pieces(struct sync_read *r)
{
	for (unsigned i = 0; i < PIECES && r->next < r->len && !r->err; i++) {
		struct uffd_source_req *q = &r->req[i];
		int err;

		if (r->used[i])
			continue;
		*q = (struct uffd_source_req){ .off = r->off + r->next, .buf = r->buf + r->next,
					       .len = r->len - r->next < PIECE ? r->len - r->next : PIECE,
					       .done = piece_done, .ctx = r };
		r->used[i] = true;
		r->busy++;
		if ((err = uffd_source_read(r->src, q))) {
			r->used[i] = false;
			r->busy--;
			if (err != -EAGAIN)
				r->err = err;
			return false;
		}
		r->next += q->len;
	}
	return true;
}

static void wait_ring(struct io_uring *ring, uint64_t wait_ns)
{
	struct __kernel_timespec ts = { .tv_sec = (long long)(wait_ns / 1000000000u),
					.tv_nsec = (long long)(wait_ns % 1000000000u) };
	struct io_uring_cqe *cqe;

	io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
}

/* Drives env until r is done or the deadline passes (then -ETIMEDOUT; the detach cancels what is out). */
static int drive(struct uffd_source_env *env, struct sync_read *r, uint64_t deadline)
{
	uint64_t efd_val = 0;
	bool efd_armed = false;

	while ((r->next < r->len && !r->err) || r->busy) {
		uint64_t now = uffd__env_now(), wait_ns = deadline > now ? deadline - now : 0;
		struct io_uring_cqe *cqe;
		struct io_uring_sqe *sqe;

		if (!wait_ns)
			return -ETIMEDOUT;
		if (!start_pieces(r) && wait_ns > REFUSED_NS)
			wait_ns = REFUSED_NS;
		if (!efd_armed && (sqe = io_uring_get_sqe(env->ring))) {
			io_uring_prep_read(sqe, env->efd, &efd_val, sizeof(efd_val), 0);
			io_uring_sqe_set_data64(sqe, TAG_EFD);
			efd_armed = true;
		}
		uffd__env_prepare(env, &wait_ns);
		if (!r->busy && r->next >= r->len)
			break;	/* every piece done within its read call */
		wait_ring(env->ring, wait_ns);
		while (io_uring_peek_cqe(env->ring, &cqe) == 0) {
			uint64_t tag = io_uring_cqe_get_data64(cqe);
			int res = cqe->res;

			io_uring_cqe_seen(env->ring, cqe);
			if (tag == TAG_EFD)
				efd_armed = false;
			else
				uffd__env_cqe(env, tag, res);
		}
		uffd__env_process(env);
	}
	return 0;
}

/* The end: the sources detached, every read of the ring waited for (it writes into r's buffer). */
static void drain(struct uffd_source_env *env, struct sync_read *r)
{
	uint64_t until = uffd__env_now() + 2000000000ull;
	struct io_uring_cqe *cqe;

	uffd__env_detach(env);
	while (env->ring_inflight || (r->busy && uffd__env_now() < until)) {
		wait_ring(env->ring, 10000000);
		while (io_uring_peek_cqe(env->ring, &cqe) == 0) {
			uint64_t tag = io_uring_cqe_get_data64(cqe);
			int res = cqe->res;

			io_uring_cqe_seen(env->ring, cqe);
			if (tag != TAG_EFD)
				uffd__env_cqe(env, tag, res);
		}
		uffd__env_process(env);
	}
}

static int read_sync(struct uffd_source *src, uint64_t off, void *buf, size_t len, int timeout_ms)
{
	struct uffd_source_env env = { .efd = -1 };
	struct io_uring ring;
	struct sync_read *r = calloc(1, sizeof(*r));
	int err;

	if (!r)
		return uffd__err(-ENOMEM, "uffd_source_read_sync: out of memory");
	*r = (struct sync_read){ .src = src, .buf = buf, .off = off, .len = len };
	if ((err = io_uring_queue_init(64, &ring, 0))) {
		free(r);
		return uffd__err(err, "uffd_source_read_sync: io_uring_queue_init: %s", uffd__errname(err));
	}
	env.ring = &ring;
	if ((env.efd = eventfd(0, EFD_CLOEXEC)) < 0) {
		err = uffd__err(-errno, "uffd_source_read_sync: eventfd: %s", uffd__errname(errno));
		goto out;
	}
	if ((err = uffd_source_attach(src, &env)))
		goto out;
	err = drive(&env, r, uffd__env_now() + (uint64_t)timeout_ms * 1000000u);
	drain(&env, r);
	if (err == -ETIMEDOUT)
		err = uffd__err(err, "uffd_source_read_sync: %zu bytes at %llu of source %s not read within %d ms",
				len, (unsigned long long)off, src->name, timeout_ms);
	else if (r->busy)
		err = uffd__err(-EIO, "uffd_source_read_sync: source %s kept a read past its detach", src->name);
	else if (r->err)
		err = uffd__err(r->err, "uffd_source_read_sync: %zu bytes at %llu of source %s: %s", len,
				(unsigned long long)off, src->name, uffd__errname(r->err));
out:
	uffd__env_free(&env);
	io_uring_queue_exit(&ring);
	if (env.efd >= 0)
		close(env.efd);
	/* a read the source kept past its detach writes into r: never freed under it */
	if (!r->busy)
		free(r);
	return err;
}

UFFD_EXPORT int uffd_source_read_sync(struct uffd_source *src, uint64_t off, void *buf, size_t len, int timeout_ms)
{
	if (!src || !buf)
		return uffd__err(-EINVAL, "uffd_source_read_sync: %s is NULL", src ? "buf" : "src");
	if (!len || off >= src->length || len > src->length - off)
		return uffd__err(-EINVAL, "uffd_source_read_sync: [%llu, +%zu) is %s of source %s (%llu bytes)",
				 (unsigned long long)off, len, len ? "not within" : "an empty range", src->name,
				 (unsigned long long)src->length);
	if (timeout_ms == 0 || timeout_ms < -1)
		return uffd__err(-EINVAL, "uffd_source_read_sync: timeout_ms %d; give milliseconds, or -1 for the source's own bounds",
				 timeout_ms);
	if (atomic_load(&src->env))
		return uffd__err(-EBUSY, "uffd_source_read_sync: source %s serves a restore; read it before or after",
				 src->name);
	return read_sync(src, off, buf, len, timeout_ms < 0 ? 24 * 3600 * 1000 : timeout_ms);
}
UFFD_EXPORT_OWN(source_read_sync);
