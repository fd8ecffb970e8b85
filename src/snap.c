/* SPDX-License-Identifier: MIT */
/*
 * Reading compressed snapshots (libuffd-snapshot(5)): a chain of layers
 * opened and checked at once, frames resolved newest layer first,
 * decompressed into a bounded cache (allocated at open) and checked
 * against their CRC32C on every decompression.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "crc32c.h"
#include "internal.h"
#include "snap-internal.h"

#define DEFAULT_CACHE (16u << 20)	/* 64 frames of the default 256 KiB */


/* Frames of a layer sharing stored bytes share a cache slot: canon[i] is
 * the first frame with frame i's offset. */
static int cmp_by_offset(const void *a, const void *b, void *arg)
{
	const struct snap_entry *e = arg;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	if (e[x].offset != e[y].offset)
		return e[x].offset < e[y].offset ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int build_canon(struct snap_layer *l)
{
	uint64_t n = l->h.nframes;
	uint32_t *ord = malloc(n * sizeof(*ord));

	if (!ord)
		return -ENOMEM;
	for (uint64_t i = 0; i < n; i++)
		ord[i] = (uint32_t)i;
	qsort_r(ord, n, sizeof(*ord), cmp_by_offset, l->e);
	for (uint64_t k = 0; k < n; k++) {
		const struct snap_entry *e = &l->e[ord[k]];

		l->canon[ord[k]] = ord[k];
		if (e->kind != SNAP_ZSTD && e->kind != SNAP_RAW)
			continue;
		/* the same bytes for a frame of the same length: decompressed and checked once */
		if (k && l->e[ord[k - 1]].offset == e->offset &&
		    l->e[ord[k - 1]].kind == e->kind && l->e[ord[k - 1]].length == e->length &&
		    l->e[ord[k - 1]].crc == e->crc &&
		    snap__frame_len(&l->h, ord[k - 1]) == snap__frame_len(&l->h, ord[k]))
			l->canon[ord[k]] = l->canon[ord[k - 1]];
		/* otherwise (the same offset read another way): a frame of its own, checked on its own */
	}
	free(ord);
	return 0;
}

/* The index's bytes from the layer's file or source: 0 or -errno (sentence set). */
static int read_bytes(struct snap_layer *l, void *buf, size_t len, uint64_t off, const char *what)
{
	int err;

	if (l->src) {
		if ((err = uffd_source_read_sync(l->src, off, buf, len, -1))) {
			char why[256];

			snprintf(why, sizeof(why), "%s", uffd_last_error());
			return uffd__err(err, "%s: reading %s: %s", l->path, what, why);
		}
		return 0;
	}
	if ((err = snap__pread_all(l->fd, buf, len, off)))
		return uffd__err(err, "%s: reading %s: %s", l->path, what, uffd__errname(err));
	return 0;
}

/* The layer's file opened, its size in l->file_size. */
static int layer_open_file(struct snap_layer *l, const char *path)
{
	struct stat st;

	l->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (l->fd < 0)
		return uffd__err(-errno, "%s: cannot open: %s", path, uffd__errname(errno));
	if (fstat(l->fd, &st))
		return uffd__err(-errno, "%s: fstat: %s", path, uffd__errname(errno));
	if (!S_ISREG(st.st_mode))
		return uffd__err(-EINVAL, "%s: not a regular file", path);
	l->file_size = (uint64_t)st.st_size;
	return 0;
}

/* Read and check one layer's header and index (l->fd or l->src, l->file_size set). */
static int layer_load(struct snap_layer *l)
{
	const char *path = l->path;
	uint8_t hb[SNAP_HEADER_SIZE], *ib = NULL;
	int err;

	memset(hb, 0, sizeof(hb));
	if (l->file_size >= SNAP_HEADER_SIZE && (err = read_bytes(l, hb, sizeof(hb), 0, "the header")))
		return err;
	if ((err = snap__parse_header(hb, l->file_size, path, &l->h)))
		return err;
	if (l->h.nframes > UINT32_MAX)
		return uffd__err(-EINVAL, "%s: %" PRIu64 " frames: more than this libuffd serves", path, l->h.nframes);
	ib = malloc(l->h.nframes * SNAP_ENTRY_SIZE);
	l->e = calloc(l->h.nframes, sizeof(*l->e));
	l->canon = calloc(l->h.nframes, sizeof(*l->canon));
	if (!ib || !l->e || !l->canon) {
		err = uffd__err(-ENOMEM, "%s: no memory for an index of %" PRIu64 " frames", path, l->h.nframes);
		goto out;
	}
	if ((err = read_bytes(l, ib, l->h.nframes * SNAP_ENTRY_SIZE, l->h.index_offset, "the index")))
		goto out;
	if ((err = snap__parse_index(&l->h, ib, path, l->e)))
		goto out;
	if (build_canon(l))
		err = uffd__err(-ENOMEM, "%s: no memory for an index of %" PRIu64 " frames", path, l->h.nframes);
out:
	free(ib);
	return err;
}

static void hex_id(char out[33], const uint8_t id[16])
{
	static const char x[] = "0123456789abcdef";

	for (int i = 0; i < 16; i++) {
		out[2 * i] = x[id[i] >> 4];
		out[2 * i + 1] = x[id[i] & 15];
	}
	out[32] = 0;
}

/* Layer i against the one before it (its parent). */
static int chain_check(const struct uffd_snap *s, unsigned i)
{
	const struct snap_layer *l = &s->l[i], *p = i ? &s->l[i - 1] : NULL;
	char a[33], b[33];

	if (!p) {
		if (l->h.flags & SNAP_FLAG_PARENT) {
			hex_id(a, l->h.parent_id);
			return uffd__err(-EINVAL, "%s: a diff (of snapshot %s), given as the base: pass its parent first",
					 l->path, a);
		}
		return 0;
	}
	if (!(l->h.flags & SNAP_FLAG_PARENT))
		return uffd__err(-EINVAL, "%s: a base, given as a diff of %s: a layer after the first must be a diff of the one before",
				 l->path, p->path);
	if (l->h.image_size != p->h.image_size)
		return uffd__err(-EINVAL, "%s: an image of %" PRIu64 " bytes, layered on %s of %" PRIu64 ": layers must be of one size",
				 l->path, l->h.image_size, p->path, p->h.image_size);
	if (memcmp(l->h.parent_id, p->h.id, 16)) {
		hex_id(a, l->h.parent_id);
		hex_id(b, p->h.id);
		return uffd__err(-EINVAL, "%s: a diff of snapshot %s, not of %s (snapshot %s): pass the base it was packed against",
				 l->path, a, p->path, b);
	}
	if (l->h.frame_shift != p->h.frame_shift)
		return uffd__err(-EINVAL, "%s: frames of %llu bytes, layered on %s with frames of %llu: pack a diff with its parent's frame size",
				 l->path, 1ull << l->h.frame_shift, p->path, 1ull << p->h.frame_shift);
	return 0;
}

int snap__reader_init(const struct uffd_snap *s, struct snap_reader *r)
{
	size_t fs = (size_t)1 << s->shift;

	r->cbuf = malloc(ZSTD_compressBound(fs));
	r->fbuf = malloc(fs);
	r->dctx = ZSTD_createDCtx();
	if (!r->cbuf || !r->fbuf || !r->dctx) {
		snap__reader_free(r);
		return -ENOMEM;
	}
	return 0;
}

void snap__reader_free(struct snap_reader *r)
{
	free(r->cbuf);
	free(r->fbuf);
	ZSTD_freeDCtx(r->dctx);
	r->cbuf = r->fbuf = NULL;
	r->dctx = NULL;
}

int snap__fetch_file(const struct snap_layer *l, uint64_t i, const struct snap_entry *e, uint8_t *dst)
{
	int err = snap__pread_all(l->fd, dst, e->length, e->offset);

	if (err)
		return uffd__err(err, "%s: frame %" PRIu64 ": reading %u bytes at %" PRIu64 ": %s",
				 l->path, i, e->length, e->offset,
				 err == -EIO ? "the file is shorter than its index says" : uffd__errname(err));
	return 0;
}

/* The fetch of uffd_snap_read() and the like: pread(2), or a blocking read of the layer's source. */
static int fetch_own(void *ctx, unsigned k, const struct snap_entry *e, uint8_t *dst)
{
	const struct snap_layer *l = &((struct uffd_snap *)ctx)->l[k];
	uint64_t i = (uint64_t)(e - l->e);
	char why[256];
	int err;

	if (!l->src)
		return snap__fetch_file(l, i, e, dst);
	if (!(err = uffd_source_read_sync(l->src, e->offset, dst, e->length, -1)))
		return 0;
	snprintf(why, sizeof(why), "%s", uffd_last_error());
	return uffd__err(err, "%s: frame %" PRIu64 ": %s", l->path, i, why);
}

static int cache_init(struct uffd_snap *s, size_t bytes)
{
	size_t fs = (size_t)1 << s->shift;

	s->nslots = bytes / fs;
	if (s->nslots > s->l[0].h.nframes * s->n)
		s->nslots = (size_t)(s->l[0].h.nframes * s->n);	/* no more than it can use */
	s->slots = calloc(s->nslots, sizeof(*s->slots));
	/*
	 * The bound is memory taken at open, not on the first faults: populated
	 * here, a first fault into a frame pays for the decompression only, not
	 * for a page fault per 4 KiB of its slot (1024 for a 4 MiB frame).
	 * Without MADV_POPULATE_WRITE (before Linux 5.14) the pages come later.
	 */
	s->mem_len = s->nslots * fs;
	s->mem = mmap(NULL, s->mem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->mem == MAP_FAILED)
		s->mem = NULL;
	else
		(void)madvise(s->mem, s->mem_len, MADV_POPULATE_WRITE);
	for (unsigned i = 0; s->slots && i < s->n; i++) {
		s->l[i].slot = malloc(s->l[i].h.nframes * sizeof(uint32_t));
		if (!s->l[i].slot)
			return -ENOMEM;
		memset(s->l[i].slot, 0xff, s->l[i].h.nframes * sizeof(uint32_t));
	}
	if (!s->slots || !s->mem || snap__reader_init(s, &s->own))
		return -ENOMEM;
	s->own.fetch = fetch_own;
	s->own.ctx = s;
	for (size_t k = 0; k < s->nslots; k++) {
		s->slots[k].layer = NO_SLOT;
		s->slots[k].buf = s->mem + k * fs;
	}
	return 0;
}

/* Threads of uffd_source_snap(): asked, or one per CPU (at most 4), or 8 over sources. */
static unsigned threads_of(unsigned asked, bool sources)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	if (asked)
		return asked;
	if (sources)
		return 8;
	return cpus < 1 ? 1 : cpus > 4 ? 4 : (unsigned)cpus;
}

static struct uffd_snap *snap_alloc(unsigned n)
{
	struct uffd_snap *s = calloc(1, sizeof(*s));

	if (!s || !(s->l = calloc(n, sizeof(*s->l)))) {
		free(s);
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->own_lock, NULL);
	pthread_cond_init(&s->loaded, NULL);
	for (unsigned i = 0; i < n; i++)
		s->l[i].fd = -1;
	s->n = n;
	return s;
}

/* The layers loaded: the chain checked, the options applied, the cache made. */
static int snap_finish(struct uffd_snap *s, struct uffd_snap_opts *opts, const char *call)
{
	bool sources = false;
	int err;

	for (unsigned i = 0; i < s->n; i++) {
		if ((err = layer_load(&s->l[i])) || (err = chain_check(s, i)))
			return err;
		sources |= s->l[i].src != NULL;
	}
	s->size = s->l[0].h.image_size;
	s->shift = s->l[0].h.frame_shift;
	s->threads = threads_of(opts->threads, sources);
	if (!opts->cache_bytes)
		opts->cache_bytes = DEFAULT_CACHE;
	if (opts->cache_bytes < (size_t)1 << s->shift)
		return uffd__err(-EINVAL, "uffd_snap_opts: cache_bytes %zu is less than one frame (%zu bytes) of %s",
				 opts->cache_bytes, (size_t)1 << s->shift, s->l[0].path);
	if (cache_init(s, opts->cache_bytes))
		return uffd__err(-ENOMEM, "%s: no memory for a cache of %zu bytes", call, opts->cache_bytes);
	return 0;
}

static int opts_of(struct uffd_snap_opts *opts, const struct uffd_snap_opts *o)
{
	int err;

	if (o && (err = uffd__opts_copy(opts, sizeof(*opts), o, o->size, "uffd_snap_opts")))
		return err;
	if (opts->threads > 64)
		return uffd__err(-EINVAL, "uffd_snap_opts: threads %u is above 64", opts->threads);
	return 0;
}

UFFD_EXPORT int uffd_snap_open(struct uffd_snap **out, const char *const *paths, unsigned n,
			       const struct uffd_snap_opts *o)
{
	struct uffd_snap_opts opts = { .size = sizeof(opts) };
	struct uffd_snap *s;
	int err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_snap_open: out is NULL");
	*out = NULL;
	if (!paths || !n)
		return uffd__err(-EINVAL, "uffd_snap_open: pass at least one file");
	for (unsigned i = 0; i < n; i++)
		if (!paths[i] || !*paths[i])
			return uffd__err(-EINVAL, "uffd_snap_open: file name %u is NULL or empty", i);
	if ((err = opts_of(&opts, o)))
		return err;
	if (!(s = snap_alloc(n)))
		return uffd__err(-ENOMEM, "uffd_snap_open: out of memory");
	for (unsigned i = 0; i < n; i++) {
		if (!(s->l[i].path = strdup(paths[i]))) {
			err = uffd__err(-ENOMEM, "uffd_snap_open: out of memory");
			goto fail;
		}
		if ((err = layer_open_file(&s->l[i], paths[i])))
			goto fail;
	}
	if ((err = snap_finish(s, &opts, "uffd_snap_open")))
		goto fail;
	*out = s;
	return 0;
fail:
	uffd_snap_close(s);
	return err;
}
UFFD_EXPORT_OWN(snap_open);

UFFD_EXPORT int uffd_snap_open_sources(struct uffd_snap **out, struct uffd_source *const *layers, unsigned n,
				       const struct uffd_snap_opts *o)
{
	struct uffd_snap_opts opts = { .size = sizeof(opts) };
	struct uffd_snap *s;
	int err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_snap_open_sources: out is NULL");
	*out = NULL;
	if (!layers || !n)
		return uffd__err(-EINVAL, "uffd_snap_open_sources: pass at least one source");
	for (unsigned i = 0; i < n; i++)
		if (!layers[i])
			return uffd__err(-EINVAL, "uffd_snap_open_sources: source %u is NULL", i);
	if ((err = opts_of(&opts, o)))
		return err;
	if (!(s = snap_alloc(n)))
		return uffd__err(-ENOMEM, "uffd_snap_open_sources: out of memory");
	for (unsigned i = 0; i < n; i++) {
		s->l[i].src = uffd_source_ref(layers[i]);
		s->l[i].file_size = uffd_source_length(layers[i]);
		if (!(s->l[i].path = strdup(uffd_source_name(layers[i])))) {
			err = uffd__err(-ENOMEM, "uffd_snap_open_sources: out of memory");
			goto fail;
		}
	}
	if ((err = snap_finish(s, &opts, "uffd_snap_open_sources")))
		goto fail;
	*out = s;
	return 0;
fail:
	uffd_snap_close(s);
	return err;
}
UFFD_EXPORT_OWN(snap_open_sources);

/* The layer whose entry serves frame i, and that entry; NULL for zeros. */
static const struct snap_entry *resolve(const struct uffd_snap *s, uint64_t i, unsigned *layer)
{
	for (unsigned k = s->n; k-- > 0;) {
		const struct snap_entry *e = &s->l[k].e[i];

		if (e->kind == SNAP_PARENT)
			continue;
		*layer = k;
		return e->kind == SNAP_ZERO ? NULL : e;
	}
	return NULL;	/* a base has no PARENT entries (checked at open) */
}

/*
 * Fetch (r->fetch: a file's pread, a source's read) and decode frame i of
 * layer k into dst (its whole length): decompressed (or copied) and
 * checked against its CRC32C. 0 or -errno; -EBADMSG names the file or
 * source, and the frame. No lock held: r is the caller's thread's.
 */
static int load_frame(const struct uffd_snap *s, struct snap_reader *r, unsigned k, uint64_t i, uint8_t *dst)
{
	const struct snap_layer *l = &s->l[k];
	const struct snap_entry *e = &l->e[i];
	size_t flen = (size_t)snap__frame_len(&l->h, i), got;
	uint8_t *stored = e->kind == SNAP_RAW ? dst : r->cbuf;	/* raw bytes: read in place */
	int err;

	if ((err = r->fetch(r->ctx, k, e, stored)))
		return err;
	if (e->kind != SNAP_RAW) {
		got = ZSTD_decompressDCtx(r->dctx, dst, flen, stored, e->length);
		if (ZSTD_isError(got) || got != flen)
			return uffd__err(-EBADMSG, "%s: frame %" PRIu64 " (bytes %" PRIu64 "..%" PRIu64 " of the image) does not decompress to its %zu bytes (%s): the file is corrupt",
					 l->path, i, i << s->shift, (i << s->shift) + flen - 1, flen,
					 ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong length");
	}
	if (uffd__crc32c(dst, flen) != e->crc)
		return uffd__err(-EBADMSG, "%s: frame %" PRIu64 " (bytes %" PRIu64 "..%" PRIu64 " of the image) fails its checksum: the file is corrupt",
				 l->path, i, i << s->shift, (i << s->shift) + flen - 1);
	return 0;
}

/* A slot to load a frame into (CLOCK, passing slots being loaded), or NO_SLOT when all are. Under s->lock. */
static uint32_t claim_slot(struct uffd_snap *s)
{
	for (size_t tries = 0; tries < 2 * s->nslots; tries++) {
		struct snap_slot *v = &s->slots[s->hand];
		uint32_t victim = (uint32_t)s->hand;

		s->hand = (s->hand + 1) % s->nslots;
		if (v->loading)
			continue;
		if (v->ref) {
			v->ref = false;
			continue;
		}
		if (v->layer != NO_SLOT)
			s->l[v->layer].slot[v->frame] = NO_SLOT;
		v->layer = NO_SLOT;
		return victim;
	}
	return NO_SLOT;
}

/*
 * n bytes at in of frame i (layer k serves it; n < its length) into p
 * through the cache: a cached frame copied, one being loaded waited for,
 * else loaded into a claimed slot with s->lock dropped. Under s->lock.
 */
static int read_cached(struct uffd_snap *s, struct snap_reader *r, unsigned k, uint64_t i, size_t in,
		       uint8_t *p, size_t n)
{
	struct snap_layer *l = &s->l[k];
	uint32_t c = l->canon[i], slot;
	struct snap_slot *v;
	int err;

	while ((slot = l->slot[c]) != NO_SLOT && s->slots[slot].loading)
		pthread_cond_wait(&s->loaded, &s->lock);
	if (slot != NO_SLOT) {
		s->slots[slot].ref = true;
		s->hits++;
		memcpy(p, s->slots[slot].buf + in, n);
		return 0;
	}
	s->misses++;
	if ((slot = claim_slot(s)) == NO_SLOT) {	/* every slot is being loaded: the reader's own buffer */
		pthread_mutex_unlock(&s->lock);
		err = load_frame(s, r, k, c, r->fbuf);
		pthread_mutex_lock(&s->lock);
		if (!err)
			memcpy(p, r->fbuf + in, n);
		return err;
	}
	v = &s->slots[slot];
	*v = (struct snap_slot){ .layer = k, .frame = c, .loading = true, .buf = v->buf };
	l->slot[c] = slot;
	pthread_mutex_unlock(&s->lock);
	err = load_frame(s, r, k, c, v->buf);
	pthread_mutex_lock(&s->lock);
	v->loading = false;
	if (err) {
		v->layer = NO_SLOT;
		l->slot[c] = NO_SLOT;
	} else {
		v->ref = true;
		memcpy(p, v->buf + in, n);
	}
	pthread_cond_broadcast(&s->loaded);
	return err;
}

int snap__read_with(struct uffd_snap *s, struct snap_reader *r, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	int err = 0;

	pthread_mutex_lock(&s->lock);
	while (len && !err) {
		uint64_t i = off >> s->shift, in = off - (i << s->shift);
		size_t flen = (size_t)snap__frame_len(&s->l[0].h, i);
		size_t n = flen - in < len ? (size_t)(flen - in) : len;
		const struct snap_entry *e;
		unsigned k = 0;

		e = resolve(s, i, &k);
		if (!e) {
			memset(p, 0, n);
		} else if (n == flen && s->l[k].slot[s->l[k].canon[i]] == NO_SLOT) {
			/* a whole frame not cached: straight into the caller's buffer,
			 * leaving the cache to the frames read piecemeal */
			s->misses++;
			pthread_mutex_unlock(&s->lock);
			err = load_frame(s, r, k, i, p);
			pthread_mutex_lock(&s->lock);
		} else {
			err = read_cached(s, r, k, i, (size_t)in, p, n);
		}
		p += n;
		off += n;
		len -= n;
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

int snap__read_nowait(struct uffd_snap *s, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	int err = 0;

	if (pthread_mutex_trylock(&s->lock))
		return -EAGAIN;	/* another thread is at the cache: never wait for it */
	while (len && !err) {
		uint64_t i = off >> s->shift, in = off - (i << s->shift);
		size_t flen = (size_t)snap__frame_len(&s->l[0].h, i);
		size_t n = flen - in < len ? (size_t)(flen - in) : len;
		const struct snap_entry *e;
		unsigned k = 0;
		uint32_t slot;

		e = resolve(s, i, &k);
		if (!e) {
			memset(p, 0, n);
		} else if ((slot = s->l[k].slot[s->l[k].canon[i]]) != NO_SLOT && !s->slots[slot].loading) {
			s->slots[slot].ref = true;
			s->hits++;
			memcpy(p, s->slots[slot].buf + in, n);
		} else {
			err = -EAGAIN;
		}
		p += n;
		off += n;
		len -= n;
	}
	pthread_mutex_unlock(&s->lock);
	return err;
}

int snap__read(struct uffd_snap *s, uint64_t off, void *buf, size_t len)
{
	int err;

	pthread_mutex_lock(&s->own_lock);
	err = snap__read_with(s, &s->own, off, buf, len);
	pthread_mutex_unlock(&s->own_lock);
	return err;
}

bool snap__frame_zero(const struct uffd_snap *s, uint64_t i)
{
	unsigned k;

	return !resolve(s, i, &k);
}

UFFD_EXPORT int uffd_snap_read(struct uffd_snap *s, uint64_t offset, void *buf, size_t len)
{
	if (!s || (!buf && len))
		return uffd__err(-EINVAL, "uffd_snap_read: NULL snapshot or buffer");
	if (offset > s->size || len > s->size - offset)
		return uffd__err(-EINVAL, "uffd_snap_read: %zu bytes at %" PRIu64 " are beyond the image of %s (%" PRIu64 " bytes)",
				 len, offset, s->l[s->n - 1].path, s->size);
	return snap__read(s, offset, buf, len);
}
UFFD_EXPORT_OWN(snap_read);

UFFD_EXPORT int uffd_snap_extent(const struct uffd_snap *s, uint64_t offset, uint64_t *len)
{
	uint64_t i, end;
	unsigned k;
	bool zero;

	if (!s || !len || offset >= s->size)
		return uffd__err(-EINVAL, "uffd_snap_extent: NULL argument, or offset beyond the image");
	i = offset >> s->shift;
	zero = !resolve(s, i, &k);
	for (end = i + 1; end < s->l[0].h.nframes && !resolve(s, end, &k) == zero; end++)
		;
	end = end << s->shift < s->size ? end << s->shift : s->size;
	*len = end - offset;
	return zero ? UFFD_SNAP_ZERO : UFFD_SNAP_DATA;
}
UFFD_EXPORT_OWN(snap_extent);

UFFD_EXPORT int uffd_snap_info(const struct uffd_snap *s, unsigned layer, struct uffd_snap_info *info)
{
	struct uffd_snap_info v = { .size = sizeof(v) };
	const struct snap_layer *l;

	if (!s || !info || layer >= s->n)
		return uffd__err(-EINVAL, "uffd_snap_info: NULL argument or no layer %u", layer);
	if (info->size < offsetof(struct uffd_snap_info, cache_misses) + sizeof(uint64_t))
		return uffd__err(-EINVAL, "uffd_snap_info: size %zu; set it to sizeof(struct uffd_snap_info)", info->size);
	l = &s->l[layer];
	v.image_size = s->size;
	v.frame_size = 1ull << s->shift;
	v.layers = s->n;
	v.version = l->h.version;
	memcpy(v.id, l->h.id, 16);
	memcpy(v.parent_id, l->h.parent_id, 16);
	v.frames = l->h.nframes;
	v.file_bytes = l->file_size;
	for (uint64_t i = 0; i < l->h.nframes; i++) {
		const struct snap_entry *e = &l->e[i];

		v.frames_zero += e->kind == SNAP_ZERO;
		v.frames_parent += e->kind == SNAP_PARENT;
		if (e->kind != SNAP_ZSTD && e->kind != SNAP_RAW)
			continue;
		v.frames_data++;
		if (l->canon[i] != i) {
			v.frames_dedup++;
			continue;
		}
		v.frames_raw += e->kind == SNAP_RAW;
		v.stored_bytes += e->length;
	}
	pthread_mutex_lock((pthread_mutex_t *)&s->lock);
	v.cache_hits = s->hits;
	v.cache_misses = s->misses;
	pthread_mutex_unlock((pthread_mutex_t *)&s->lock);
	memcpy(info, &v, sizeof(v));
	return 0;
}
UFFD_EXPORT_OWN(snap_info);

UFFD_EXPORT int uffd_snap_verify(struct uffd_snap *s)
{
	size_t fs;
	uint8_t *buf;
	int err = 0;

	if (!s)
		return uffd__err(-EINVAL, "uffd_snap_verify: NULL snapshot");
	fs = (size_t)1 << s->shift;
	if (!(buf = malloc(fs)))
		return uffd__err(-ENOMEM, "uffd_snap_verify: out of memory");
	pthread_mutex_lock(&s->own_lock);
	for (unsigned k = 0; !err && k < s->n; k++)
		for (uint64_t i = 0; !err && i < s->l[k].h.nframes; i++)
			if (s->l[k].canon[i] == i &&
			    (s->l[k].e[i].kind == SNAP_ZSTD || s->l[k].e[i].kind == SNAP_RAW))
				err = load_frame(s, &s->own, k, i, buf);
	pthread_mutex_unlock(&s->own_lock);
	free(buf);
	return err;
}
UFFD_EXPORT_OWN(snap_verify);

UFFD_EXPORT void uffd_snap_close(struct uffd_snap *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->n; i++) {
		if (s->l[i].fd >= 0)
			close(s->l[i].fd);
		uffd_source_unref(s->l[i].src);
		free(s->l[i].path);
		free(s->l[i].e);
		free(s->l[i].canon);
		free(s->l[i].slot);
	}
	free(s->l);
	free(s->slots);
	if (s->mem)
		munmap(s->mem, s->mem_len);
	snap__reader_free(&s->own);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->own_lock);
	pthread_cond_destroy(&s->loaded);
	free(s);
}
UFFD_EXPORT_OWN(snap_close);
