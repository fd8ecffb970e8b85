/* SPDX-License-Identifier: MIT */
/*
 * A compressed snapshot (snap.c) as a page source: the restore engine's
 * reads decompress through the snapshot's frame cache, so a frame is
 * decompressed once however many faults and prefetch runs read from it;
 * faults on cached or zero frames are served at once by the fault handler
 * (read_nowait); zero frames are ZERO extents, served as zero pages with no
 * read at all. The snapshot's layers are resolved inside it (its own
 * parent references), so the whole chain is one source.
 *
 * Reads run on a pool of threads of the source's own (uffd_snap_opts.threads,
 * started at attach, stopped at detach): fetching a compressed frame and
 * decompressing it never stall the restore thread, and frames are
 * decompressed on several CPUs at once. Reads shorter than a frame (the
 * engine's demand reads) go first, each queue in the order it came: a
 * fault does not wait behind the prefetch reads the engine keeps in
 * flight. A finished read is handed back through uffd_source_notify();
 * process calls its done on the restore thread. The queues are the
 * requests themselves (priv[0] links them): nothing is allocated per read.
 *
 * Where a frame's stored bytes come from: a layer's file, read with
 * pread(2) on the pool thread; or a layer that is a page source
 * (uffd_snap_open_sources(): HTTP, NBD, a cache), attached to the restore
 * with this source and read with its asynchronous reads on the restore
 * thread. A pool thread that needs such bytes queues a fetch, notifies,
 * and waits for it; process starts it with uffd_source_read() and its done
 * wakes the thread. The restore thread never waits for a pool thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"
#include "snap-internal.h"
#include "source-internal.h"

UFFD_OWN(source_new);
UFFD_OWN(source_notify);
UFFD_OWN(source_read);
UFFD_OWN(source_attach);

#define REFUSED_NS 1000000	/* a fetch a layer refused (-EAGAIN): again after this at the latest */

/* A request's link and result, in its priv words. */
#define RES(r) ((r)->priv[1])

static struct uffd_source_req *next_of(const struct uffd_source_req *r)
{
	return (struct uffd_source_req *)r->priv[0];
}

static void set_next(struct uffd_source_req *r, struct uffd_source_req *next)
{
	r->priv[0] = (uintptr_t)next;
}

struct queue {
	struct uffd_source_req *head, *tail;
};

struct snap_source;

/* One pool thread. */
struct worker {
	struct snap_source *ss;
	pthread_t thread;
	bool started;
	struct snap_reader r;
	pthread_cond_t fetched;		/* its fetch is done (under ss->lock) */
	struct uffd_source_req fetch;	/* the stored bytes it waits for, from a layer's source */
	bool fetch_done;
	int fetch_res;
};

struct snap_source {
	struct uffd_snap *s;
	struct uffd_source *src;	/* for notify; no reference (it owns us) */
	pthread_mutex_t lock;		/* the queues, fetches and stop; the restore thread and the pool */
	pthread_cond_t cond;		/* work for the pool */
	struct queue urgent, todo, done;	/* shorter than a frame, the others, finished */
	struct queue fetches;		/* workers' fetches not started yet (restore thread starts them) */
	bool refused;			/* a layer refused a fetch: process again soon */
	size_t frame;
	bool running, stop;
	unsigned nw;
	struct worker *w;
};

static void push(struct queue *q, struct uffd_source_req *r)
{
	set_next(r, NULL);
	if (q->tail)
		set_next(q->tail, r);
	else
		q->head = r;
	q->tail = r;
}

static void push_front(struct queue *q, struct uffd_source_req *r)
{
	set_next(r, q->head);
	q->head = r;
	if (!q->tail)
		q->tail = r;
}

static struct uffd_source_req *take_all(struct queue *q)
{
	struct uffd_source_req *r = q->head;

	q->head = q->tail = NULL;
	return r;
}

static struct uffd_source_req *take_one(struct queue *q)
{
	struct uffd_source_req *r = q->head;

	if (r && !(q->head = next_of(r)))
		q->tail = NULL;
	return r;
}

/* ---- fetches from a layer's source: a pool thread asks, the restore thread reads ---- */

/* Restore thread: a layer's read of a worker's stored bytes ended. */
static void fetch_done(struct uffd_source_req *req, int res)
{
	struct worker *w = req->ctx;

	pthread_mutex_lock(&w->ss->lock);
	w->fetch_done = true;
	w->fetch_res = res;
	pthread_cond_signal(&w->fetched);
	pthread_mutex_unlock(&w->ss->lock);
}

/* Pool thread: e->length stored bytes of layer k into dst, read by the restore thread. */
static int fetch(void *ctx, unsigned k, const struct snap_entry *e, uint8_t *dst)
{
	struct worker *w = ctx;
	struct snap_source *ss = w->ss;
	const struct snap_layer *l = &ss->s->l[k];
	uint64_t i = (uint64_t)(e - l->e);
	int res;

	if (!l->src)
		return snap__fetch_file(l, i, e, dst);
	pthread_mutex_lock(&ss->lock);
	if (ss->stop) {
		pthread_mutex_unlock(&ss->lock);
		return uffd__err(-ECANCELED, "%s: frame %" PRIu64 ": the restore ended", l->path, i);
	}
	w->fetch = (struct uffd_source_req){ .off = e->offset, .len = e->length, .buf = dst,
					     .done = fetch_done, .ctx = w, .priv = { [3] = k } };
	w->fetch_done = false;
	push(&ss->fetches, &w->fetch);
	pthread_mutex_unlock(&ss->lock);
	uffd_source_notify(ss->src);
	pthread_mutex_lock(&ss->lock);
	while (!w->fetch_done)
		pthread_cond_wait(&w->fetched, &ss->lock);
	res = w->fetch_res;
	pthread_mutex_unlock(&ss->lock);
	if (res)
		return uffd__err(res, "%s: frame %" PRIu64 ": reading its %u stored bytes at %" PRIu64 " failed: %s",
				 l->path, i, e->length, e->offset, uffd__errname(res));
	return 0;
}

/* Restore thread: the fetches the pool asked for, started; false when a layer refused one. */
static bool start_fetches(struct snap_source *ss)
{
	struct uffd_source_req *f;
	bool ok = true;
	int err;

	pthread_mutex_lock(&ss->lock);
	while ((f = take_one(&ss->fetches))) {
		pthread_mutex_unlock(&ss->lock);
		err = uffd_source_read(ss->s->l[f->priv[3]].src, f);
		pthread_mutex_lock(&ss->lock);
		if (err == -EAGAIN) {	/* the layer is at its limit: again after a completion */
			push_front(&ss->fetches, f);
			ok = false;
			break;
		}
		if (err) {
			((struct worker *)f->ctx)->fetch_done = true;
			((struct worker *)f->ctx)->fetch_res = err;
			pthread_cond_signal(&((struct worker *)f->ctx)->fetched);
		}
	}
	ss->refused = !ok;
	pthread_mutex_unlock(&ss->lock);
	return ok;
}

/* ---- the pool ---- */

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct snap_source *ss = w->ss;

	pthread_mutex_lock(&ss->lock);
	while (!ss->stop) {
		struct uffd_source_req *r = take_one(&ss->urgent);

		if (!r && !(r = take_one(&ss->todo))) {
			pthread_cond_wait(&ss->cond, &ss->lock);
			continue;
		}
		pthread_mutex_unlock(&ss->lock);
		/* the sentence (file or URL, frame) goes to the restore with the error */
		if (snap__read_with(ss->s, &w->r, r->off, r->buf, r->len)) {
			uffd__source_fail(ss->src, uffd_last_error());
			RES(r) = (uintptr_t)-EIO;
		} else {
			RES(r) = 0;
		}
		pthread_mutex_lock(&ss->lock);
		push(&ss->done, r);
		uffd_source_notify(ss->src);
	}
	pthread_mutex_unlock(&ss->lock);
	return NULL;
}

static int ss_read(void *impl, struct uffd_source_req *req)
{
	struct snap_source *ss = impl;

	if (!ss->running)
		return -ENOTCONN;
	pthread_mutex_lock(&ss->lock);
	push(req->len < ss->frame ? &ss->urgent : &ss->todo, req);
	pthread_cond_signal(&ss->cond);
	pthread_mutex_unlock(&ss->lock);
	return 0;
}

/* Restore thread: done for every finished read. */
static void deliver(struct snap_source *ss)
{
	struct uffd_source_req *r, *next;

	pthread_mutex_lock(&ss->lock);
	r = take_all(&ss->done);
	pthread_mutex_unlock(&ss->lock);
	for (; r; r = next) {
		next = next_of(r);
		r->done(r, (int)(intptr_t)RES(r));
	}
}

/* Restore thread: the pool's fetches started, its finished reads delivered. */
static void ss_process(void *impl, const struct pollfd *fds, unsigned n)
{
	struct snap_source *ss = impl;

	(void)fds;
	(void)n;
	start_fetches(ss);
	deliver(ss);
}

/* No descriptors; a fetch a layer refused is tried again within REFUSED_NS. */
static int ss_poll(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns)
{
	struct snap_source *ss = impl;

	(void)fds;
	(void)max;
	pthread_mutex_lock(&ss->lock);
	*timeout_ns = ss->refused ? REFUSED_NS : -1;
	pthread_mutex_unlock(&ss->lock);
	return 0;
}

static int ss_read_nowait(void *impl, uint64_t off, size_t len, void *buf)
{
	return snap__read_nowait(((struct snap_source *)impl)->s, off, buf, len);
}

static int ss_extent(void *impl, uint64_t off, uint64_t len, uint64_t *run)
{
	const struct uffd_snap *s = ((struct snap_source *)impl)->s;
	uint64_t i = off >> s->shift, end = off + len, stop;
	bool zero = snap__frame_zero(s, i);

	for (stop = (i + 1) << s->shift; stop < end && snap__frame_zero(s, stop >> s->shift) == zero;
	     stop += 1ull << s->shift)
		;
	*run = (stop < end ? stop : end) - off;
	return zero ? UFFD_EXTENT_ZERO : UFFD_EXTENT_DATA;
}

/* Reads not started are cancelled, finished ones delivered; none after. */
static void stop_pool(struct snap_source *ss)
{
	struct uffd_source_req *r, *next;

	pthread_mutex_lock(&ss->lock);
	ss->stop = true;
	/* fetches never started: their threads wake with an error */
	for (r = take_all(&ss->fetches); r; r = next) {
		struct worker *w = r->ctx;

		next = next_of(r);
		w->fetch_done = true;
		w->fetch_res = -ECANCELED;
		pthread_cond_signal(&w->fetched);
	}
	pthread_cond_broadcast(&ss->cond);
	pthread_mutex_unlock(&ss->lock);
	for (unsigned i = 0; i < ss->nw; i++)
		if (ss->w[i].started)
			pthread_join(ss->w[i].thread, NULL);
	for (unsigned i = 0; i < ss->nw; i++)
		ss->w[i].started = false;
	ss->running = false;
	deliver(ss);
	for (r = take_all(&ss->urgent); r; r = next) {
		next = next_of(r);
		r->done(r, -ECANCELED);
	}
	for (r = take_all(&ss->todo); r; r = next) {
		next = next_of(r);
		r->done(r, -ECANCELED);
	}
}

static int ss_attach(void *impl, struct uffd_source_env *env)
{
	struct snap_source *ss = impl;
	const char *name = ss->s->l[ss->s->n - 1].path;
	int err;

	if (ss->running)
		return 0;
	/* the layers read from sources join the restore first: they are detached before us */
	for (unsigned k = 0; k < ss->s->n; k++)
		if (ss->s->l[k].src && (err = uffd_source_attach(ss->s->l[k].src, env)))
			return err;
	ss->stop = false;
	ss->refused = false;
	ss->running = true;
	for (unsigned i = 0; i < ss->nw; i++) {
		if ((err = pthread_create(&ss->w[i].thread, NULL, worker_main, &ss->w[i]))) {
			stop_pool(ss);
			return uffd__err(-err, "%s: cannot start a thread that decompresses its frames: %s",
					 name, uffd__errname(err));
		}
		ss->w[i].started = true;
	}
	return 0;
}

static void ss_detach(void *impl)
{
	struct snap_source *ss = impl;

	if (ss->running)
		stop_pool(ss);
}

static void free_pool(struct snap_source *ss)
{
	for (unsigned i = 0; ss->w && i < ss->nw; i++) {
		snap__reader_free(&ss->w[i].r);
		pthread_cond_destroy(&ss->w[i].fetched);
	}
	free(ss->w);
	pthread_mutex_destroy(&ss->lock);
	pthread_cond_destroy(&ss->cond);
	free(ss);
}

static void ss_destroy(void *impl)
{
	struct snap_source *ss = impl;

	uffd_snap_close(ss->s);
	free_pool(ss);
}

/* The pool's threads' buffers and decompression contexts, taken now, not on the restore thread. */
static int make_pool(struct snap_source *ss)
{
	ss->nw = ss->s->threads;
	if (!(ss->w = calloc(ss->nw, sizeof(*ss->w))))
		return -ENOMEM;
	for (unsigned i = 0; i < ss->nw; i++) {
		struct worker *w = &ss->w[i];

		w->ss = ss;
		pthread_cond_init(&w->fetched, NULL);
		if (snap__reader_init(ss->s, &w->r))
			return -ENOMEM;
		w->r.fetch = fetch;
		w->r.ctx = w;
	}
	return 0;
}

UFFD_EXPORT int uffd_source_snap(struct uffd_source **out, struct uffd_snap *s)
{
	static const struct uffd_source_ops ops = {
		.size = sizeof(ops),
		.read = ss_read,
		.read_nowait = ss_read_nowait,
		.extent = ss_extent,
		.attach = ss_attach,
		.detach = ss_detach,
		.poll = ss_poll,
		.process = ss_process,
		.destroy = ss_destroy,
	};
	struct uffd_source_info info = { .size = sizeof(info) };
	struct snap_source *ss;
	int err;

	if (!out || !s)
		return uffd__err(-EINVAL, "uffd_source_snap: NULL argument");
	*out = NULL;
	if (!(ss = calloc(1, sizeof(*ss))))
		return uffd__err(-ENOMEM, "uffd_source_snap: out of memory");
	ss->s = s;
	ss->frame = (size_t)1 << s->shift;
	pthread_mutex_init(&ss->lock, NULL);
	pthread_cond_init(&ss->cond, NULL);
	if (make_pool(ss)) {
		free_pool(ss);
		return uffd__err(-ENOMEM, "uffd_source_snap: out of memory for %u decompressing threads", s->threads);
	}
	info.name = s->l[s->n - 1].path;
	info.length = s->size;
	info.block_size = (size_t)1 << s->shift;
	if ((err = uffd_source_new(&ss->src, &ops, ss, &info))) {
		free_pool(ss);
		return err;
	}
	*out = ss->src;
	return 0;
}
UFFD_EXPORT_OWN(source_snap);
