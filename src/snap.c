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

/* Read and check one file's header and index. */
static int layer_load(struct snap_layer *l, const char *path)
{
	uint8_t hb[SNAP_HEADER_SIZE], *ib = NULL;
	struct stat st;
	int err;

	l->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (l->fd < 0)
		return uffd__err(-errno, "%s: cannot open: %s", path, uffd__errname(errno));
	if (fstat(l->fd, &st))
		return uffd__err(-errno, "%s: fstat: %s", path, uffd__errname(errno));
	if (!S_ISREG(st.st_mode))
		return uffd__err(-EINVAL, "%s: not a regular file", path);
	l->file_size = (uint64_t)st.st_size;
	memset(hb, 0, sizeof(hb));
	if (l->file_size >= SNAP_HEADER_SIZE && (err = snap__pread_all(l->fd, hb, sizeof(hb), 0)))
		return uffd__err(err, "%s: reading the header: %s", path, uffd__errname(err));
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
	if ((err = snap__pread_all(l->fd, ib, l->h.nframes * SNAP_ENTRY_SIZE, l->h.index_offset))) {
		err = uffd__err(err, "%s: reading the index: %s", path, uffd__errname(err));
		goto out;
	}
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
	s->cbuf = malloc(ZSTD_compressBound(fs));
	s->dctx = ZSTD_createDCtx();
	for (unsigned i = 0; s->slots && i < s->n; i++) {
		s->l[i].slot = malloc(s->l[i].h.nframes * sizeof(uint32_t));
		if (!s->l[i].slot)
			return -ENOMEM;
		memset(s->l[i].slot, 0xff, s->l[i].h.nframes * sizeof(uint32_t));
	}
	if (!s->slots || !s->mem || !s->cbuf || !s->dctx)
		return -ENOMEM;
	for (size_t k = 0; k < s->nslots; k++) {
		s->slots[k].layer = NO_SLOT;
		s->slots[k].buf = s->mem + k * fs;
	}
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
	if (o && (err = uffd__opts_copy(&opts, sizeof(opts), o, o->size, "uffd_snap_opts")))
		return err;
	s = calloc(1, sizeof(*s));
	if (!s || !(s->l = calloc(n, sizeof(*s->l)))) {
		free(s);
		return uffd__err(-ENOMEM, "uffd_snap_open: out of memory");
	}
	pthread_mutex_init(&s->lock, NULL);
	for (unsigned i = 0; i < n; i++)
		s->l[i].fd = -1;
	s->n = n;
	for (unsigned i = 0; i < n; i++) {
		if (!(s->l[i].path = strdup(paths[i]))) {
			err = uffd__err(-ENOMEM, "uffd_snap_open: out of memory");
			goto fail;
		}
		if ((err = layer_load(&s->l[i], paths[i])) || (err = chain_check(s, i)))
			goto fail;
	}
	s->size = s->l[0].h.image_size;
	s->shift = s->l[0].h.frame_shift;
	if (!opts.cache_bytes)
		opts.cache_bytes = DEFAULT_CACHE;
	if (opts.cache_bytes < (size_t)1 << s->shift) {
		err = uffd__err(-EINVAL, "uffd_snap_opts: cache_bytes %zu is less than one frame (%zu bytes) of %s",
				opts.cache_bytes, (size_t)1 << s->shift, paths[0]);
		goto fail;
	}
	if (cache_init(s, opts.cache_bytes)) {
		err = uffd__err(-ENOMEM, "uffd_snap_open: no memory for a cache of %zu bytes", opts.cache_bytes);
		goto fail;
	}
	*out = s;
	return 0;
fail:
	uffd_snap_close(s);
	return err;
}
UFFD_EXPORT_OWN(snap_open);

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
 * Decompress (or copy) and check frame i of layer k from its stored bytes
 * @p stored (e->length of them) into dst (its whole length). Apart from
 * where the stored bytes come from (load_frame(): the layer's file), so
 * that they may come from elsewhere: a compressed layer read through
 * another page source is the same decoding of other bytes.
 */
int snap__decode_frame(struct uffd_snap *s, unsigned k, uint64_t i, const uint8_t *stored, uint8_t *dst)
{
	const struct snap_layer *l = &s->l[k];
	const struct snap_entry *e = &l->e[i];
	size_t flen = (size_t)snap__frame_len(&l->h, i), got;

	if (e->kind == SNAP_RAW) {
		if (stored != dst)
			memcpy(dst, stored, flen);
	} else {
		got = ZSTD_decompressDCtx(s->dctx, dst, flen, stored, e->length);
		if (ZSTD_isError(got) || got != flen)
			return uffd__err(-EBADMSG, "%s: frame %" PRIu64 " (bytes %" PRIu64 "..%" PRIu64 " of the image) does not decompress to its %zu bytes (%s): the file is corrupt",
					 l->path, i, i << s->shift, (i << s->shift) + flen - 1, flen,
					 ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong length");
	}
	if (uffd__crc32c(dst, flen) != e->crc)
		return uffd__err(-EBADMSG, "%s: frame %" PRIu64 " (bytes %" PRIu64 "..%" PRIu64 " of the image) fails its checksum: the file is corrupt",
				 l->path, i, i << s->shift, (i << s->shift) + flen - 1);
	s->misses++;
	return 0;
}

/* Read frame i of layer k from its file, then decode it into dst (its whole length). */
static int load_frame(struct uffd_snap *s, unsigned k, uint64_t i, uint8_t *dst)
{
	const struct snap_layer *l = &s->l[k];
	const struct snap_entry *e = &l->e[i];
	uint8_t *stored = e->kind == SNAP_RAW ? dst : s->cbuf;	/* raw bytes: read in place */
	int err = snap__pread_all(l->fd, stored, e->length, e->offset);

	if (err)
		return uffd__err(err, "%s: frame %" PRIu64 ": reading %u bytes at %" PRIu64 ": %s",
				 l->path, i, e->length, e->offset,
				 err == -EIO ? "the file is shorter than its index says" : uffd__errname(err));
	return snap__decode_frame(s, k, i, stored, dst);
}

/* Frame i of layer k in the cache (CLOCK replacement), loaded if absent. */
static int cached_frame(struct uffd_snap *s, unsigned k, uint64_t i, const uint8_t **out)
{
	struct snap_layer *l = &s->l[k];
	uint32_t c = l->canon[i], victim;
	struct snap_slot *v;
	int err;

	if (l->slot[c] != NO_SLOT) {
		s->slots[l->slot[c]].ref = true;
		s->hits++;
		*out = s->slots[l->slot[c]].buf;
		return 0;
	}
	for (;;) {
		v = &s->slots[s->hand];
		victim = (uint32_t)s->hand;
		s->hand = (s->hand + 1) % s->nslots;
		if (!v->ref)
			break;
		v->ref = false;
	}
	if (v->layer != NO_SLOT)
		s->l[v->layer].slot[v->frame] = NO_SLOT;
	v->layer = NO_SLOT;
	if ((err = load_frame(s, k, c, v->buf)))
		return err;
	v->layer = k;
	v->frame = c;
	v->ref = true;
	l->slot[c] = victim;
	*out = v->buf;
	return 0;
}

static int read_locked(struct uffd_snap *s, uint64_t off, uint8_t *p, size_t len)
{
	while (len) {
		uint64_t i = off >> s->shift, in = off - (i << s->shift);
		size_t flen = (size_t)snap__frame_len(&s->l[0].h, i);
		size_t n = flen - in < len ? (size_t)(flen - in) : len;
		const struct snap_entry *e;
		const uint8_t *f;
		unsigned k = 0;
		int err;

		e = resolve(s, i, &k);
		if (!e) {
			memset(p, 0, n);
		} else if (n == flen && s->l[k].slot[s->l[k].canon[i]] == NO_SLOT) {
			/* a whole frame not cached: straight into the caller's buffer,
			 * leaving the cache to the frames read piecemeal */
			if ((err = load_frame(s, k, i, p)))
				return err;
		} else {
			if ((err = cached_frame(s, k, i, &f)))
				return err;
			memcpy(p, f + in, n);
		}
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

int snap__read_nowait(struct uffd_snap *s, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	int err = 0;

	if (pthread_mutex_trylock(&s->lock))
		return -EAGAIN;	/* a read is decompressing: never wait for it */
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
		} else if ((slot = s->l[k].slot[s->l[k].canon[i]]) != NO_SLOT) {
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

	pthread_mutex_lock(&s->lock);
	err = read_locked(s, off, buf, len);
	pthread_mutex_unlock(&s->lock);
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
	pthread_mutex_lock(&s->lock);
	for (unsigned k = 0; !err && k < s->n; k++)
		for (uint64_t i = 0; !err && i < s->l[k].h.nframes; i++)
			if (s->l[k].canon[i] == i &&
			    (s->l[k].e[i].kind == SNAP_ZSTD || s->l[k].e[i].kind == SNAP_RAW))
				err = load_frame(s, k, i, buf);
	pthread_mutex_unlock(&s->lock);
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
		free(s->l[i].path);
		free(s->l[i].e);
		free(s->l[i].canon);
		free(s->l[i].slot);
	}
	free(s->l);
	free(s->slots);
	if (s->mem)
		munmap(s->mem, s->mem_len);
	free(s->cbuf);
	ZSTD_freeDCtx(s->dctx);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
UFFD_EXPORT_OWN(snap_close);
