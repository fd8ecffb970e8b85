/* SPDX-License-Identifier: MIT */
/*
 * The NBD source (uffd.h section 13): libnbd's asynchronous reads driven by
 * the restore thread. poll gives the connection's descriptor and the
 * direction libnbd waits for (nbd_aio_get_direction), process tells libnbd
 * what fired (nbd_aio_notify_read/write); completions arrive in libnbd's
 * callback during those calls.
 *
 * Each NBD command has a slot of a table allocated at creation (a read of
 * more than MAX_CMD bytes takes several; nothing is allocated per read).
 * A command that fails is sent again after a backoff; a connection that
 * breaks, or a command that stays unanswered past the timeout (the
 * connection is then closed), sends every command it had again on a new
 * connection, made asynchronously too, each such attempt a try of those
 * commands. A command out of tries completes its read with -EIO.
 *
 * The export's allocation is read once, at creation, with block status
 * ("base:allocation"): what the server says reads as zeros is a ZERO
 * extent, served by the restore as zero pages with no command at all.
 *
 * A connection is used only by the process that made it. A source copied
 * by fork finds, at its first call in the new process, a connection (and
 * libnbd's cookie numbers) that the other process may be using: it lets go
 * of it without a byte written (disown), sends the commands it had again
 * on a connection of its own, made like one after a drop but without a
 * try spent.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libnbd.h>

#include "source-remote.h"

UFFD_OWN(source_new);

#define MAX_CMD (16u << 20)	/* bytes per command: below every server's maximum payload we know */
#define CHUNK (4u << 20)	/* a restore reads whole chunks, DEPTH at once: a round trip each (bench/RESULTS.md, remote-bench) */
#define DEPTH 8

enum slot_state { S_FREE, S_ACTIVE, S_WAIT };

struct nsrc;

struct slot {
	struct nsrc *n;
	struct uffd_source_req *req;
	uint64_t off;		/* in the source */
	size_t len;
	void *buf;
	enum slot_state state;
	unsigned tries;
	int64_t at_ns;		/* S_ACTIVE: sent at; S_WAIT: send again at */
};

struct zrun {
	uint64_t start, end;
};

struct nsrc {
	char *uri, *name;
	struct nbd_handle *h;	/* NULL: no connection */
	pid_t pid;		/* the process that made h */
	bool closing;		/* completions during nbd_close are not ours to act on */
	bool diff;		/* holes are ABSENT (a Diff layer), not ZERO */
	bool was_ready;		/* the connection got ready (else a drop spends the waiting reads' tries) */
	int64_t connect_at;	/* no connection: make one at this time (-1: none needed) */
	unsigned conn_fails;
	struct slot *s;
	unsigned nslots;
	struct remote_retry rt;
	uint64_t length, seed;
	struct zrun *z;		/* zero runs, sorted */
	size_t nz, capz;
	struct remote_ctr c;
};

/* ---- requests: priv[1] slots outstanding, priv[2] the first error ---- */

static void slot_end(struct slot *s, int res)
{
	struct uffd_source_req *r = s->req;

	s->state = S_FREE;
	s->req = NULL;
	if (res && !r->priv[2])
		r->priv[2] = (uintptr_t)(intptr_t)res;
	if (--r->priv[1] == 0)
		r->done(r, (int)(intptr_t)r->priv[2]);
}

/* s failed a try: again after a backoff, or -EIO when out of tries. */
static void slot_failed(struct nsrc *n, struct slot *s)
{
	if (s->tries >= n->rt.tries) {
		atomic_fetch_add(&n->c.errors, 1);
		slot_end(s, -EIO);
		return;
	}
	s->state = S_WAIT;
	s->at_ns = (int64_t)(uffd__env_now() + uffd__retry_backoff_ns(&n->rt, s->tries, &n->seed));
}

static int completed(void *user, int *error)
{
	struct slot *s = user;
	struct nsrc *n = s->n;

	if (n->closing || s->state != S_ACTIVE)
		return 1;	/* the connection is being dropped: its commands are sent again */
	if (*error) {
		slot_failed(n, s);
		return 1;
	}
	atomic_fetch_add(&n->c.bytes, s->len);
	slot_end(s, 0);
	return 1;
}

static void send_slot(struct nsrc *n, struct slot *s)
{
	nbd_completion_callback cb = { .callback = completed, .user_data = s };

	s->tries++;
	atomic_fetch_add(&n->c.requests, 1);
	if (s->tries > 1)
		atomic_fetch_add(&n->c.retries, 1);
	s->state = S_ACTIVE;
	s->at_ns = (int64_t)uffd__env_now();
	if (nbd_aio_pread(n->h, s->buf, s->len, s->off, cb, 0) < 0)
		slot_failed(n, s);
}

/* ---- the connection ---- */

/* A read that waited on a connection that could not be made: a try spent. */
static void spend_try(struct nsrc *n, struct slot *s)
{
	if (++s->tries >= n->rt.tries) {
		atomic_fetch_add(&n->c.errors, 1);
		slot_end(s, -EIO);
	}
}

/* Drops the connection: its commands wait for the next one, a try spent. */
static void drop(struct nsrc *n)
{
	n->closing = true;
	nbd_close(n->h);
	n->closing = false;
	n->h = NULL;
	n->conn_fails++;
	for (unsigned i = 0; i < n->nslots; i++) {
		if (n->s[i].state == S_ACTIVE)
			slot_failed(n, &n->s[i]);
		else if (n->s[i].state == S_WAIT && !n->was_ready)
			spend_try(n, &n->s[i]);
	}
	n->connect_at = (int64_t)(uffd__env_now() + uffd__retry_backoff_ns(&n->rt, n->conn_fails, &n->seed));
}

/*
 * In a process that did not make h (a fork): h's socket becomes /dev/null
 * before nbd_close, so nothing libnbd writes or closes reaches the other
 * process's connection. Commands in flight are sent again on a connection
 * of this process, no try spent (they were never answered here). Should
 * /dev/null not open, the socket is closed and the handle left as it is.
 */
static void disown(struct nsrc *n)
{
	int fd;

	if (!n->h || n->pid == getpid())
		return;
	fd = nbd_aio_get_fd(n->h);
	if (fd < 0 || uffd__remote_disown_fd(fd) == 0) {
		n->closing = true;
		nbd_close(n->h);
		n->closing = false;
	} else {
		close(fd);
	}
	n->h = NULL;
	n->connect_at = -1;
	for (unsigned i = 0; i < n->nslots; i++)
		if (n->s[i].state == S_ACTIVE) {
			n->s[i].state = S_WAIT;
			n->s[i].at_ns = (int64_t)uffd__env_now();
			n->s[i].tries--;
		}
}

static bool waiting(const struct nsrc *n)
{
	for (unsigned i = 0; i < n->nslots; i++)
		if (n->s[i].state != S_FREE)
			return true;
	return false;
}

/* A new connection, made asynchronously; a failure now is a failed attempt. */
static void connect_again(struct nsrc *n)
{
	n->connect_at = -1;
	n->was_ready = false;
	n->pid = getpid();
	if ((n->h = nbd_create()) && nbd_aio_connect_uri(n->h, n->uri) == 0)
		return;
	if (n->h) {
		drop(n);	/* spends a try of every read waiting */
		return;
	}
	n->connect_at = (int64_t)(uffd__env_now() + uffd__retry_backoff_ns(&n->rt, ++n->conn_fails, &n->seed));
	for (unsigned i = 0; i < n->nslots; i++)
		if (n->s[i].state == S_WAIT)
			spend_try(n, &n->s[i]);
}

/* ---- the source's ops ---- */

static int n_read(void *impl, struct uffd_source_req *req)
{
	struct nsrc *n = impl;
	unsigned need = (unsigned)((req->len + MAX_CMD - 1) / MAX_CMD), got = 0;
	int64_t now = (int64_t)uffd__env_now();

	disown(n);
	for (unsigned i = 0; i < n->nslots; i++)
		got += n->s[i].state == S_FREE;
	if (got < need)
		return -EAGAIN;	/* at max_reads: the engine tries again after a completion */
	req->priv[1] = need;
	req->priv[2] = 0;
	for (unsigned i = 0, k = 0; i < n->nslots && k < need; i++) {
		struct slot *s = &n->s[i];
		size_t at = (size_t)k * MAX_CMD;

		if (s->state != S_FREE)
			continue;
		*s = (struct slot){ .n = n, .req = req, .off = req->off + at, .buf = (char *)req->buf + at,
				    .len = req->len - at < MAX_CMD ? req->len - at : MAX_CMD, .state = S_WAIT, .at_ns = now };
		k++;
	}
	return 0;	/* sent by process, which poll asks for at once */
}

static int n_poll(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns)
{
	struct nsrc *n = impl;
	int64_t now = (int64_t)uffd__env_now(), due = -1;
	bool ready;

	disown(n);
	ready = n->h && nbd_aio_is_ready(n->h) + nbd_aio_is_processing(n->h) > 0;

	if (!n->h && waiting(n))	/* no connection (dropped, or detached from a restore before): make one */
		due = n->connect_at >= 0 ? n->connect_at : now;
	for (unsigned i = 0; i < n->nslots; i++) {
		const struct slot *s = &n->s[i];
		int64_t t = s->state == S_ACTIVE ? s->at_ns + (int64_t)n->rt.timeout_ms * 1000000
			  : s->state == S_WAIT && ready ? s->at_ns : -1;

		if (t >= 0 && (due < 0 || t < due))
			due = t;
	}
	*timeout_ns = due < 0 ? -1 : due <= now ? 0 : due - now;
	if (!n->h || !max)
		return 0;
	fds[0].fd = nbd_aio_get_fd(n->h);
	fds[0].events = (short)((nbd_aio_get_direction(n->h) & LIBNBD_AIO_DIRECTION_WRITE ? POLLOUT : 0) | POLLIN);
	return fds[0].fd >= 0;
}

/* Sends what waits, when the connection can take it; drops it when stalled or dead. */
static void n_process(void *impl, const struct pollfd *fds, unsigned nfds)
{
	struct nsrc *n = impl;
	int64_t now = (int64_t)uffd__env_now();
	bool ok = true;

	disown(n);
	if (n->h && nfds && fds[0].revents) {
		unsigned dir = nbd_aio_get_direction(n->h);

		if (fds[0].revents & (POLLIN | POLLHUP | POLLERR) && dir & LIBNBD_AIO_DIRECTION_READ)
			ok = nbd_aio_notify_read(n->h) >= 0;
		if (ok && fds[0].revents & POLLOUT && dir & LIBNBD_AIO_DIRECTION_WRITE)
			ok = nbd_aio_notify_write(n->h) >= 0;
	}
	for (unsigned i = 0; n->h && ok && i < n->nslots; i++)
		if (n->s[i].state == S_ACTIVE && now - n->s[i].at_ns > (int64_t)n->rt.timeout_ms * 1000000) {
			atomic_fetch_add(&n->c.timeouts, 1);
			ok = false;	/* a stalled connection: only a new one gets the commands answered */
		}
	if (n->h && (!ok || nbd_aio_is_dead(n->h) || nbd_aio_is_closed(n->h)))
		drop(n);
	if (!n->h && n->connect_at >= 0 && n->connect_at <= now && waiting(n))
		connect_again(n);
	if (!n->h && n->connect_at < 0 && waiting(n))
		n->connect_at = now;
	if (n->h && nbd_aio_is_ready(n->h) + nbd_aio_is_processing(n->h) > 0) {
		n->conn_fails = 0;
		n->was_ready = true;
		for (unsigned i = 0; i < n->nslots && n->h; i++)
			if (n->s[i].state == S_WAIT && n->s[i].at_ns <= now)
				send_slot(n, &n->s[i]);
	}
}

static void n_detach(void *impl)
{
	struct nsrc *n = impl;

	disown(n);
	for (unsigned i = 0; i < n->nslots; i++)
		if (n->s[i].state != S_FREE)
			slot_end(&n->s[i], -ECANCELED);
	if (n->h) {	/* a late reply must not land in a buffer the restore frees */
		n->closing = true;
		nbd_close(n->h);
		n->closing = false;
		n->h = NULL;
	}
	n->connect_at = -1;
}

static int n_extent(void *impl, uint64_t off, uint64_t len, uint64_t *run)
{
	const struct nsrc *n = impl;
	size_t lo = 0, hi = n->nz;
	uint64_t end = off + len;

	while (lo < hi) {	/* the first zero run ending after off */
		size_t mid = (lo + hi) / 2;

		if (n->z[mid].end <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	*run = len;
	if (lo < n->nz && n->z[lo].start <= off) {
		if (n->z[lo].end < end)
			*run = n->z[lo].end - off;
		return n->diff ? UFFD_EXTENT_ABSENT : UFFD_EXTENT_ZERO;
	}
	if (lo < n->nz && n->z[lo].start < end)
		*run = n->z[lo].start - off;
	return UFFD_EXTENT_DATA;
}

static void n_free(struct nsrc *n)
{
	disown(n);
	if (n->h)
		nbd_close(n->h);
	free(n->s);
	free(n->z);
	free(n->uri);
	free(n->name);
	free(n);
}

static void n_destroy(void *impl)
{
	n_free(impl);
}

static void n_stats(void *impl, struct uffd_source_remote_stats *st)
{
	uffd__remote_add(&((struct nsrc *)impl)->c, st);
}

static const struct remote_hooks nbd_hooks = { n_stats, NULL };

static const struct uffd_source_ops nbd_ops = {
	.size = sizeof(nbd_ops),
	.read = n_read,
	.extent = n_extent,
	.poll = n_poll,
	.process = n_process,
	.detach = n_detach,
	.destroy = n_destroy,
};

/* ---- creation: connect, size, allocation ---- */

struct bs {
	struct nsrc *n;
	uint64_t pos;		/* the next byte block status must describe */
	int err;
};

static int add_zero(struct nsrc *n, uint64_t start, uint64_t end)
{
	if (n->nz && n->z[n->nz - 1].end == start) {
		n->z[n->nz - 1].end = end;
		return 0;
	}
	if (n->nz == n->capz) {
		size_t cap = n->capz ? n->capz * 2 : 64;
		struct zrun *v = realloc(n->z, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		n->z = v;
		n->capz = cap;
	}
	n->z[n->nz++] = (struct zrun){ start, end };
	return 0;
}

static int on_extent(void *user, const char *ctx, uint64_t offset, uint32_t *e, size_t ne, int *error)
{
	struct bs *b = user;
	uint64_t pos = offset;

	(void)error;
	if (strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION))
		return 0;
	for (size_t i = 0; i + 1 < ne && !b->err; i += 2) {
		uint64_t end = pos + e[i];

		if (end > b->n->length)
			end = b->n->length;
		/*
		 * Only what the server says reads as zeros (a hole alone may not), or for
		 * a Diff layer its holes. Whole pages only.
		 */
		if (e[i + 1] & (b->n->diff ? LIBNBD_STATE_HOLE : LIBNBD_STATE_ZERO)) {
			uint64_t s = (pos + 4095) / 4096 * 4096, t = end / 4096 * 4096;

			if (s < t)
				b->err = add_zero(b->n, s, t);
		}
		pos = end;
	}
	if (pos > b->pos)
		b->pos = pos;
	return 0;
}

static int allocation(struct nsrc *n)
{
	struct bs b = { .n = n };

	if (nbd_can_meta_context(n->h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1)
		return 0;	/* the server cannot say: everything is read */
	while (b.pos < n->length && !b.err) {
		uint64_t was = b.pos, len = n->length - b.pos;
		nbd_extent_callback cb = { .callback = on_extent, .user_data = &b };

		if (nbd_block_status(n->h, len > (1u << 30) ? 1u << 30 : len, b.pos, cb, 0) < 0)
			return uffd__err(-(nbd_get_errno() ? nbd_get_errno() : EIO), "uffd_source_nbd: %s: block status: %s",
					 n->name, nbd_get_error());
		if (b.pos <= was)
			return uffd__err(-EPROTO, "uffd_source_nbd: %s: block status described no bytes at %llu", n->name,
					 (unsigned long long)was);
	}
	return b.err ? uffd__err(b.err, "uffd_source_nbd: out of memory") : 0;
}

static int connect_first(struct nsrc *n, bool status)
{
	int64_t size;

	n->pid = getpid();
	if (!(n->h = nbd_create()))
		return uffd__err(-ENOMEM, "uffd_source_nbd: %s", nbd_get_error());
	if (status && nbd_add_meta_context(n->h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0)
		return uffd__err(-ENOMEM, "uffd_source_nbd: %s", nbd_get_error());
	if (nbd_connect_uri(n->h, n->uri) < 0) {
		int e = nbd_get_errno();

		return uffd__err(e ? -e : -EINVAL, "uffd_source_nbd: cannot connect to %s: %s", n->name, nbd_get_error());
	}
	if ((size = nbd_get_size(n->h)) <= 0)
		return uffd__err(-EPROTO, "uffd_source_nbd: %s: %s", n->name,
				 size < 0 ? nbd_get_error() : "the export is empty");
	n->length = (uint64_t)size;
	n->was_ready = true;
	return status ? allocation(n) : 0;
}

UFFD_EXPORT int uffd_source_nbd(struct uffd_source **out, const char *uri, const struct uffd_source_nbd_opts *opts)
{
	struct uffd_source_nbd_opts o = { .size = sizeof(o) };
	struct uffd_source_info info = { .size = sizeof(info) };
	struct nsrc *n;
	int err;

	if (!out || !uri)
		return uffd__err(-EINVAL, "uffd_source_nbd: %s is NULL", out ? "uri" : "out");
	*out = NULL;
	if (opts && (err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_source_nbd_opts")))
		return err;
	if (o.flags & ~(UFFD_SOURCE_NBD_NO_BLOCK_STATUS | UFFD_SOURCE_NBD_DIFF))
		return uffd__err(-EINVAL, "uffd_source_nbd: unknown flags 0x%x",
				 o.flags & ~(UFFD_SOURCE_NBD_NO_BLOCK_STATUS | UFFD_SOURCE_NBD_DIFF));
	if ((o.flags & UFFD_SOURCE_NBD_DIFF) && (o.flags & UFFD_SOURCE_NBD_NO_BLOCK_STATUS))
		return uffd__err(-EINVAL, "uffd_source_nbd: UFFD_SOURCE_NBD_DIFF needs block status (its holes are the layer's map)");
	if (o.max_reads > 4096)
		return uffd__err(-EINVAL, "uffd_source_nbd: max_reads %u is above 4096", o.max_reads);
	if (strncmp(uri, "nbd", 3))
		return uffd__err(-EINVAL, "uffd_source_nbd: %s: an NBD URI starts with nbd://, nbds:// or nbd+unix://", uri);
	if (!(n = calloc(1, sizeof(*n))))
		return uffd__err(-ENOMEM, "uffd_source_nbd: out of memory");
	n->rt = (struct remote_retry){ o.tries, o.timeout_ms, o.backoff_min_ms, o.backoff_max_ms };
	n->nslots = o.max_reads ? o.max_reads : 64;
	n->diff = o.flags & UFFD_SOURCE_NBD_DIFF;
	n->connect_at = -1;
	n->seed = (uintptr_t)n ^ uffd__env_now();
	if (!(n->uri = strdup(uri)) || !(n->name = strdup(o.name ? o.name : uri)) ||
	    !(n->s = calloc(n->nslots, sizeof(*n->s))))
		err = uffd__err(-ENOMEM, "uffd_source_nbd: out of memory");
	else if (!(err = uffd__retry_init(&n->rt, "uffd_source_nbd")))
		err = connect_first(n, !(o.flags & UFFD_SOURCE_NBD_NO_BLOCK_STATUS));
	if (err) {
		n_free(n);
		return err;
	}
	info.name = n->name;
	info.length = n->length;
	info.block_size = CHUNK;
	info.max_fds = 1;
	info.read_depth = DEPTH;
	if ((err = uffd_source_new(out, &nbd_ops, n, &info))) {
		n_free(n);
		return err;
	}
	uffd__remote_set(*out, &nbd_hooks);
	return 0;
}
UFFD_EXPORT_OWN(source_nbd);
