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
 * Reads run on a thread of the source's own (started at attach, stopped at
 * detach): pread(2) of the compressed frame and its decompression never
 * stall the restore thread, and run next to it. Reads shorter than a frame
 * (the engine's demand reads are one page; its prefetch and fill reads are
 * whole frames) go first, each queue in the order it came: a fault does not
 * wait behind the prefetch reads the engine keeps in flight.
 * A finished read is handed back through uffd_source_notify(); process
 * calls its done on the restore thread. The queues are the requests
 * themselves (priv[0] links them): nothing is allocated per read.
 *
 * Today the stored bytes come from the layers' files (snap.c, pread(2) on
 * the worker). Over another page source (a layer fetched over HTTP) the
 * stored bytes of a frame would be read with that source's asynchronous
 * reads on the restore thread, attached here, and handed to the worker for
 * snap__decode_frame(), which takes the stored bytes from wherever they came.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"
#include "snap-internal.h"

UFFD_OWN(source_new);
UFFD_OWN(source_notify);

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

struct snap_source {
	struct uffd_snap *s;
	struct uffd_source *src;	/* for notify; no reference (it owns us) */
	pthread_mutex_t lock;		/* the queues and stop; the restore thread and the worker only */
	pthread_cond_t cond;
	struct queue urgent, todo, done;	/* shorter than a frame, the others, finished */
	size_t frame;
	bool running, stop;
	pthread_t worker;
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

static void *worker_main(void *arg)
{
	struct snap_source *ss = arg;

	pthread_mutex_lock(&ss->lock);
	while (!ss->stop) {
		struct uffd_source_req *r = take_one(&ss->urgent);

		if (!r && !(r = take_one(&ss->todo))) {
			pthread_cond_wait(&ss->cond, &ss->lock);
			continue;
		}
		pthread_mutex_unlock(&ss->lock);
		/* the sentence (file, frame) stays with this thread: -EIO is all done gets */
		RES(r) = (uintptr_t)(snap__read(ss->s, r->off, r->buf, r->len) ? -EIO : 0);
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
static void ss_process(void *impl, const struct pollfd *fds, unsigned n)
{
	struct snap_source *ss = impl;
	struct uffd_source_req *r, *next;

	(void)fds;
	(void)n;
	pthread_mutex_lock(&ss->lock);
	r = take_all(&ss->done);
	pthread_mutex_unlock(&ss->lock);
	for (; r; r = next) {
		next = next_of(r);
		r->done(r, (int)(intptr_t)RES(r));
	}
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

static int ss_attach(void *impl, struct uffd_source_env *env)
{
	struct snap_source *ss = impl;
	int err;

	(void)env;
	if (ss->running)
		return 0;
	ss->stop = false;
	if ((err = pthread_create(&ss->worker, NULL, worker_main, ss)))
		return uffd__err(-err, "%s: cannot start the thread that decompresses its frames: %s",
				 ss->s->l[ss->s->n - 1].path, uffd__errname(err));
	ss->running = true;
	return 0;
}

/* Reads not started are cancelled, finished ones delivered; none after. */
static void ss_detach(void *impl)
{
	struct snap_source *ss = impl;
	struct uffd_source_req *r, *next;

	if (!ss->running)
		return;
	pthread_mutex_lock(&ss->lock);
	ss->stop = true;
	pthread_cond_signal(&ss->cond);
	pthread_mutex_unlock(&ss->lock);
	pthread_join(ss->worker, NULL);
	ss->running = false;
	ss_process(ss, NULL, 0);
	for (r = take_all(&ss->urgent); r; r = next) {
		next = next_of(r);
		r->done(r, -ECANCELED);
	}
	for (r = take_all(&ss->todo); r; r = next) {
		next = next_of(r);
		r->done(r, -ECANCELED);
	}
}

static void ss_destroy(void *impl)
{
	struct snap_source *ss = impl;

	uffd_snap_close(ss->s);
	pthread_mutex_destroy(&ss->lock);
	pthread_cond_destroy(&ss->cond);
	free(ss);
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
	info.name = s->l[s->n - 1].path;
	info.length = s->size;
	info.block_size = (size_t)1 << s->shift;
	if ((err = uffd_source_new(&ss->src, &ops, ss, &info))) {
		pthread_mutex_destroy(&ss->lock);
		pthread_cond_destroy(&ss->cond);
		free(ss);
		return err;
	}
	*out = ss->src;
	return 0;
}
UFFD_EXPORT_OWN(source_snap);
