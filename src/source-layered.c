/* SPDX-License-Identifier: MIT */
/*
 * The layered source: a base and diffs, newest wins. The layers' extents
 * are merged once, at creation, into one sorted table of segments, each
 * owned by the newest layer holding it (DATA or ZERO there) or by none
 * (ABSENT: zeros). A read is cut along the table: zero parts are cleared
 * in the buffer, data parts read from their layer with requests of a pool
 * of max_reads; a read that finds the pool empty waits in a queue and goes
 * on as requests come back. Nothing is allocated after creation.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "source-internal.h"

#define MAX_LAYERS 64
#define DEFAULT_READS 256
#define NONE (-1)

struct seg {
	uint64_t start, end;
	int layer;		/* owner (DATA there), or NONE */
	int kind;		/* enum uffd_extent of the whole */
};

struct lsrc;

struct sub {
	struct uffd_source_req req;	/* ctx: the parent read */
	struct lsrc *L;
	struct sub *next_free;
};

/*
 * A parent read keeps in priv: [0] its next byte to hand out, [1] its
 * requests in flight, [2] its first error (negated), [3] the next parent
 * in the wait queue, or the source itself while it is being handed out.
 */
struct lsrc {
	struct uffd_source **l;
	unsigned n;
	struct seg *seg;
	size_t nseg, capseg;
	struct sub *subs, *free;
	unsigned nsubs, busy;
	struct uffd_source_req *wait_head, *wait_tail;
	bool detached;
};

/* ---- the merged table ---- */

static int add_seg(struct lsrc *L, uint64_t start, uint64_t end, int layer, int kind)
{
	if (L->nseg && L->seg[L->nseg - 1].end == start && L->seg[L->nseg - 1].layer == layer &&
	    L->seg[L->nseg - 1].kind == kind) {
		L->seg[L->nseg - 1].end = end;
		return 0;
	}
	if (L->nseg == L->capseg) {
		size_t cap = L->capseg ? L->capseg * 2 : 16;
		struct seg *v = realloc(L->seg, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		L->seg = v;
		L->capseg = cap;
	}
	L->seg[L->nseg++] = (struct seg){ start, end, layer, kind };
	return 0;
}

/*
 * At off: the newest layer holding the byte wins; the segment lasts while
 * neither the winner's extent nor any newer layer's changes.
 */
static int merge(struct lsrc *L, uint64_t length)
{
	for (uint64_t off = 0; off < length;) {
		uint64_t len = length - off, run;
		int owner = NONE, kind = UFFD_EXTENT_ABSENT, err;

		for (int i = (int)L->n - 1; i >= 0; i--) {
			int k = uffd_source_extent(L->l[i], off, len, &run);

			if (k < 0)
				return k;
			if (run < len)
				len = run;
			if (k != UFFD_EXTENT_ABSENT) {
				owner = k == UFFD_EXTENT_DATA ? i : NONE;
				kind = k;
				break;
			}
		}
		if ((err = add_seg(L, off, off + len, owner, kind)))
			return uffd__err(err, "uffd_source_layered: out of memory");
		off += len;
	}
	return 0;
}

/* The segment holding off. */
static size_t seg_at(const struct lsrc *L, uint64_t off)
{
	size_t lo = 0, hi = L->nseg;

	while (lo + 1 < hi) {
		size_t mid = (lo + hi) / 2;

		if (L->seg[mid].start <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

static int l_extent(void *impl, uint64_t off, uint64_t len, uint64_t *run)
{
	const struct lsrc *L = impl;
	size_t i = seg_at(L, off);
	int kind = L->seg[i].kind;
	uint64_t end = off + len, e = L->seg[i].end;

	while (e < end && ++i < L->nseg && L->seg[i].kind == kind)
		e = L->seg[i].end;
	*run = (e < end ? e : end) - off;
	return kind;
}

/* ---- reads ---- */

static void sub_done(struct uffd_source_req *r, int res);

/* Whether p has handed out every byte (or failed): it ends when its requests are back. */
static bool handed_out(const struct uffd_source_req *p)
{
	return p->priv[0] == p->len || p->priv[2];
}

static void enqueue(struct lsrc *L, struct uffd_source_req *p)
{
	p->priv[3] = 0;
	if (L->wait_tail)
		L->wait_tail->priv[3] = (uintptr_t)p;
	else
		L->wait_head = p;
	L->wait_tail = p;
}

static struct uffd_source_req *dequeue(struct lsrc *L)
{
	struct uffd_source_req *p = L->wait_head;

	if (p) {
		L->wait_head = (struct uffd_source_req *)p->priv[3];
		if (!L->wait_head)
			L->wait_tail = NULL;
	}
	return p;
}

static void sub_put(struct lsrc *L, struct sub *q)
{
	q->next_free = L->free;
	L->free = q;
	L->busy--;
}

/*
 * Hands out p's remaining bytes: zeros cleared, data to pool requests.
 * false when p must wait (the pool is empty, or a layer is at its limit).
 */
static bool hand_out_(struct lsrc *L, struct uffd_source_req *p)
{
	uint64_t end = p->off + p->len;

	while (!handed_out(p)) {
		uint64_t at = p->off + p->priv[0];
		const struct seg *s = &L->seg[seg_at(L, at)];
		uint64_t stop = s->end < end ? s->end : end;
		char *dst = (char *)p->buf + p->priv[0];
		struct sub *q = L->free;
		int err;

		if (s->layer == NONE) {
			memset(dst, 0, stop - at);
			p->priv[0] += stop - at;
			continue;
		}
		if (!q)
			return false;
		L->free = q->next_free;
		L->busy++;
		q->req = (struct uffd_source_req){ .off = at, .len = stop - at, .buf = dst,
						   .done = sub_done, .ctx = p };
		p->priv[1]++;
		p->priv[0] += stop - at;	/* before the read: its done may run inside it */
		err = uffd_source_read(L->l[s->layer], &q->req);
		if (!err)
			continue;
		p->priv[0] -= stop - at;
		p->priv[1]--;
		sub_put(L, q);
		if (err == -EAGAIN)
			return false;
		p->priv[2] = (uintptr_t)-err;
	}
	return true;
}

static bool hand_out(struct lsrc *L, struct uffd_source_req *p)
{
	bool out;

	p->priv[3] = (uintptr_t)L;	/* handing out: a request done meanwhile does not end p */
	out = hand_out_(L, p);
	p->priv[3] = 0;
	return out;
}

/* p handed out what it could: it ends, waits in the queue, or fails (nothing would resume it). */
static void settle(struct lsrc *L, struct uffd_source_req *p, bool out)
{
	if (!out && (p->priv[1] || L->busy)) {
		enqueue(L, p);
		return;
	}
	if (!out)
		p->priv[2] = EAGAIN;
	if (!p->priv[1])
		p->done(p, -(int)p->priv[2]);
}

static void sub_done(struct uffd_source_req *r, int res)
{
	struct sub *q = (struct sub *)(void *)r;
	struct lsrc *L = q->L;
	struct uffd_source_req *p = r->ctx, *w;
	bool handing = p->priv[3] == (uintptr_t)L, queued = !handing && !handed_out(p);

	sub_put(L, q);
	p->priv[1]--;
	if (res && !p->priv[2]) {
		p->priv[2] = (uintptr_t)-res;
		p->priv[0] = p->len;	/* hand out no more */
	}
	if (!handing && !queued && !p->priv[1])
		p->done(p, -(int)p->priv[2]);
	/* A queued p with an error ends when it is dequeued (nothing more is handed out). */
	while (L->free && (w = dequeue(L)))
		settle(L, w, hand_out(L, w));
}

static int l_read(void *impl, struct uffd_source_req *p)
{
	struct lsrc *L = impl;
	bool out;

	p->priv[0] = p->priv[1] = p->priv[2] = p->priv[3] = 0;
	if (L->detached)
		return -ECANCELED;
	out = hand_out(L, p);
	if (!out && !p->priv[1] && !L->busy)
		return -EAGAIN;	/* nothing of ours in flight would resume it: the caller tries again */
	settle(L, p, out);
	return 0;
}

static int l_read_nowait(void *impl, uint64_t off, size_t len, void *buf)
{
	struct lsrc *L = impl;
	uint64_t end = off + len;

	for (uint64_t at = off; at < end;) {
		const struct seg *s = &L->seg[seg_at(L, at)];
		uint64_t stop = s->end < end ? s->end : end;
		char *dst = (char *)buf + (at - off);
		int err;

		if (s->layer == NONE)
			memset(dst, 0, stop - at);
		else if ((err = uffd_source_read_nowait(L->l[s->layer], at, stop - at, dst)))
			return err;
		at = stop;
	}
	return 0;
}

static void l_advise(void *impl, uint64_t off, uint64_t len)
{
	struct lsrc *L = impl;
	uint64_t end = off + len;

	for (uint64_t at = off; at < end;) {
		const struct seg *s = &L->seg[seg_at(L, at)];
		uint64_t stop = s->end < end ? s->end : end;

		if (s->layer != NONE)
			uffd_source_advise(L->l[s->layer], at, stop - at);
		at = stop;
	}
}

static int l_attach(void *impl, struct uffd_source_env *env)
{
	struct lsrc *L = impl;
	int err;

	L->detached = false;
	for (unsigned i = 0; i < L->n; i++)
		if ((err = uffd_source_attach(L->l[i], env)))
			return err;
	return 0;
}

/* The layers are detached already: reads waiting for a request end now. */
static void l_detach(void *impl)
{
	struct lsrc *L = impl;
	struct uffd_source_req *p;

	L->detached = true;
	while ((p = dequeue(L))) {
		if (!p->priv[2])
			p->priv[2] = ECANCELED;
		p->priv[0] = p->len;
		if (!p->priv[1])
			p->done(p, -(int)p->priv[2]);
	}
}

static void l_destroy(void *impl)
{
	struct lsrc *L = impl;

	for (unsigned i = 0; i < L->n; i++)
		uffd_source_unref(L->l[i]);
	free(L->l);
	free(L->seg);
	free(L->subs);
	free(L);
}

static const struct uffd_source_ops layered_ops = {
	.size = sizeof(layered_ops),
	.read = l_read,
	.read_nowait = l_read_nowait,
	.extent = l_extent,
	.advise = l_advise,
	.attach = l_attach,
	.detach = l_detach,
	.destroy = l_destroy,
};

/* ---- creation ---- */

static int check_layers(struct uffd_source *const *layers, unsigned n)
{
	const char *call = "uffd_source_layered";

	if (!layers || !n || n > MAX_LAYERS)
		return uffd__err(-EINVAL, "%s: %s", call, !layers ? "layers is NULL"
				 : "give between 1 and 64 layers");
	for (unsigned i = 0; i < n; i++) {
		if (!layers[i])
			return uffd__err(-EINVAL, "%s: layer %u is NULL", call, i);
		if (uffd_source_length(layers[i]) != uffd_source_length(layers[0]))
			return uffd__err(-EINVAL, "%s: layer %u (%s) holds %llu bytes, the base (%s) %llu; every layer must be of one size",
					 call, i, uffd_source_name(layers[i]),
					 (unsigned long long)uffd_source_length(layers[i]), uffd_source_name(layers[0]),
					 (unsigned long long)uffd_source_length(layers[0]));
	}
	return 0;
}

static struct lsrc *lsrc_new(struct uffd_source *const *layers, unsigned n, unsigned nsubs)
{
	struct lsrc *L = calloc(1, sizeof(*L));

	if (!L)
		return NULL;
	L->l = calloc(n, sizeof(*L->l));
	L->subs = calloc(nsubs, sizeof(*L->subs));
	if (!L->l || !L->subs) {
		free(L->l);
		free(L->subs);
		free(L);
		return NULL;
	}
	for (unsigned i = 0; i < n; i++)
		L->l[i] = uffd_source_ref(layers[i]);
	L->n = n;
	L->nsubs = nsubs;
	for (unsigned i = 0; i < nsubs; i++) {
		L->subs[i].L = L;
		L->subs[i].next_free = i + 1 < nsubs ? &L->subs[i + 1] : NULL;
	}
	L->free = L->subs;
	return L;
}

UFFD_EXPORT int uffd_source_layered(struct uffd_source **out, struct uffd_source *const *layers,
				    unsigned n, const struct uffd_source_layered_opts *opts)
{
	struct uffd_source_layered_opts o = { .size = sizeof(o) };
	struct uffd_source_info info = { .size = sizeof(info) };
	struct lsrc *L;
	size_t block = 0;
	unsigned depth = 0;
	int err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_source_layered: out is NULL");
	*out = NULL;
	if (opts && (err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_source_layered_opts")))
		return err;
	if ((err = check_layers(layers, n)))
		return err;
	if (o.max_reads > 65536)
		return uffd__err(-EINVAL, "uffd_source_layered: max_reads %u is above 65536", o.max_reads);
	if (!(L = lsrc_new(layers, n, o.max_reads ? o.max_reads : DEFAULT_READS)))
		return uffd__err(-ENOMEM, "uffd_source_layered: out of memory");
	if ((err = merge(L, uffd_source_length(layers[0])))) {
		l_destroy(L);
		return err;
	}
	for (unsigned i = 0; i < n; i++) {
		if (uffd_source_block_size(layers[i]) > block)
			block = uffd_source_block_size(layers[i]);
		if (uffd__source_depth(layers[i]) > depth)
			depth = uffd__source_depth(layers[i]);
	}
	info.name = o.name ? o.name : "layered";
	info.length = uffd_source_length(layers[0]);
	info.block_size = block;
	info.read_depth = block <= (64u << 20) ? depth : 0;	/* a remote layer's round trips: read whole blocks */
	if ((err = uffd_source_new(out, &layered_ops, L, &info)))
		l_destroy(L);
	return err;
}
UFFD_EXPORT_OWN(source_layered);
