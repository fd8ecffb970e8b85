/* SPDX-License-Identifier: MIT */
/*
 * Writing compressed snapshots (libuffd-snapshot(5)): a memory image, from
 * a file (Firecracker memory or Diff file) or from an open snapshot
 * (merge), cut into frames; zero frames and frames equal to the parent's
 * stored as nothing, identical frames once (same CRC32C, then the bytes
 * compared), the rest compressed with zstd. Written to a temporary file,
 * synced, renamed over the target.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "crc32c.h"
#include "internal.h"
#include "snap-internal.h"

#define DEFAULT_SHIFT 18u	/* 256 KiB: bench/RESULTS.md, "Compressed snapshots: the frame size" */


/* Where the image comes from. */
struct src {
	int fd;			/* a file, or -1 */
	bool diff;		/* its holes are the parent's bytes */
	uint64_t *ext;		/* the file's data extents: start, end pairs */
	size_t next;		/* extents before this one end before the current frame */
	size_t next_cap, n_ext;
	struct uffd_snap *from;	/* or an open snapshot */
};

struct writer {
	const char *path;
	struct snap_hdr h;
	struct uffd_snap *parent;
	int fd;
	uint64_t pos;
	struct snap_entry *e;
	uint8_t *buf, *pbuf, *cbuf, *dbuf;	/* frame, parent's frame, compressed, read back */
	size_t cbound;
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	int level;
	uint32_t *bucket, *chain;	/* dedup: frames by CRC32C, chained */
	uint32_t nbuckets;
};

static int write_all(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t k = write(fd, p, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	static const uint8_t z[4096];

	for (; n >= sizeof(z); p += sizeof(z), n -= sizeof(z))
		if (memcmp(p, z, sizeof(z)))
			return false;
	return !n || !memcmp(p, z, n);
}

/* The data extents of src->fd, found once (SEEK_DATA / SEEK_HOLE). */
static int find_extents(struct src *src, uint64_t size)
{
	off_t pos = 0, end;

	while ((uint64_t)pos < size) {
		pos = lseek(src->fd, pos, SEEK_DATA);
		if (pos < 0)
			return errno == ENXIO ? 0 : -errno;
		end = lseek(src->fd, pos, SEEK_HOLE);
		if (end < 0)
			return -errno;
		if (src->n_ext == src->next_cap) {
			size_t cap = src->next_cap ? 2 * src->next_cap : 64;
			uint64_t *e = realloc(src->ext, cap * 2 * sizeof(*e));

			if (!e)
				return -ENOMEM;
			src->ext = e;
			src->next_cap = cap;
		}
		src->ext[2 * src->n_ext] = (uint64_t)pos;
		src->ext[2 * src->n_ext + 1] = (uint64_t)end;
		src->n_ext++;
		pos = end;
	}
	return 0;
}

/*
 * The bytes of frame [off, off+len) into w->buf. *parent: the frame is
 * entirely a hole of a Diff file (the parent's, unchanged).
 */
static int src_frame(struct writer *w, struct src *src, uint64_t off, size_t len, bool *parent)
{
	bool any = false;
	int err = 0;

	*parent = false;
	if (src->from)
		return uffd_snap_read(src->from, off, w->buf, len);
	while (src->next < src->n_ext && src->ext[2 * src->next + 1] <= off)
		src->next++;
	for (size_t k = src->next; k < src->n_ext && src->ext[2 * k] < off + len; k++)
		any = true;
	if (!any && src->diff) {
		*parent = true;
		return 0;
	}
	if (src->diff)
		err = uffd_snap_read(w->parent, off, w->buf, len);
	else
		memset(w->buf, 0, len);
	for (size_t k = src->next; !err && k < src->n_ext && src->ext[2 * k] < off + len; k++) {
		uint64_t a = src->ext[2 * k] > off ? src->ext[2 * k] : off;
		uint64_t b = src->ext[2 * k + 1] < off + len ? src->ext[2 * k + 1] : off + len;

		err = snap__pread_all(src->fd, w->buf + (a - off), (size_t)(b - a), a);
		if (err == -EIO)
			err = uffd__err(-EIO, "pack: the input file ended inside bytes %" PRIu64 "..%" PRIu64 " while packing %s",
					a, b - 1, w->path);
		else if (err)
			err = uffd__err(err, "pack: reading the input at %" PRIu64 " for %s: %s",
					a, w->path, uffd__errname(err));
	}
	return err;
}

/* A stored frame of this file whose bytes equal w->buf, or UINT32_MAX. */
static uint32_t find_dup(struct writer *w, uint32_t crc, size_t len)
{
	for (uint32_t j = w->bucket[crc % w->nbuckets]; j != UINT32_MAX; j = w->chain[j]) {
		const struct snap_entry *e = &w->e[j];
		size_t got;

		if (e->crc != crc || snap__frame_len(&w->h, j) != len)
			continue;
		if (snap__pread_all(w->fd, w->cbuf, e->length, e->offset))
			continue;
		if (e->kind == SNAP_RAW) {
			if (!memcmp(w->cbuf, w->buf, len))
				return j;
			continue;
		}
		got = ZSTD_decompressDCtx(w->dctx, w->dbuf, len, w->cbuf, e->length);
		if (!ZSTD_isError(got) && got == len && !memcmp(w->dbuf, w->buf, len))
			return j;
	}
	return UINT32_MAX;
}

/* Store w->buf as frame i: nothing, a reference, or compressed bytes. */
static int store_frame(struct writer *w, uint64_t i, size_t len)
{
	struct snap_entry *e = &w->e[i];
	uint32_t dup;
	size_t c;
	int err;

	if (all_zero(w->buf, len)) {
		e->kind = SNAP_ZERO;
		return 0;
	}
	e->crc = uffd__crc32c(w->buf, len);
	if ((dup = find_dup(w, e->crc, len)) != UINT32_MAX) {
		*e = w->e[dup];
		return 0;
	}
	c = ZSTD_compressCCtx(w->cctx, w->cbuf, w->cbound, w->buf, len, w->level);
	if (ZSTD_isError(c))
		return uffd__err(-EIO, "pack %s: zstd failed on frame %" PRIu64 ": %s",
				 w->path, i, ZSTD_getErrorName(c));
	e->kind = c < len ? SNAP_ZSTD : SNAP_RAW;
	e->length = (uint32_t)(c < len ? c : len);
	e->offset = w->pos;
	if ((err = write_all(w->fd, c < len ? w->cbuf : w->buf, e->length)))
		return uffd__err(err, "pack %s: write: %s", w->path, uffd__errname(err));
	w->pos += e->length;
	w->chain[i] = w->bucket[e->crc % w->nbuckets];
	w->bucket[e->crc % w->nbuckets] = (uint32_t)i;
	return 0;
}

static int pack_frames(struct writer *w, struct src *src)
{
	for (uint64_t i = 0; i < w->h.nframes; i++) {
		uint64_t off = i << w->h.frame_shift;
		size_t len = (size_t)snap__frame_len(&w->h, i);
		bool parent;
		int err;

		if ((err = src_frame(w, src, off, len, &parent)))
			return err;
		if (!parent && w->parent) {
			if ((err = uffd_snap_read(w->parent, off, w->pbuf, len)))
				return err;
			parent = !memcmp(w->buf, w->pbuf, len);
		}
		if (parent) {
			w->e[i] = (struct snap_entry){ .kind = SNAP_PARENT };
			continue;
		}
		if ((err = store_frame(w, i, len)))
			return err;
	}
	return 0;
}

/* The index and the header, at the end and the start. */
static int finish(struct writer *w)
{
	uint8_t hb[SNAP_HEADER_SIZE], *ib = malloc(w->h.nframes * SNAP_ENTRY_SIZE);
	int err;

	if (!ib)
		return uffd__err(-ENOMEM, "pack %s: out of memory", w->path);
	for (uint64_t i = 0; i < w->h.nframes; i++)
		snap__put_entry(ib + i * SNAP_ENTRY_SIZE, &w->e[i]);
	w->h.index_offset = w->pos;
	w->h.index_crc = uffd__crc32c(ib, w->h.nframes * SNAP_ENTRY_SIZE);
	err = write_all(w->fd, ib, w->h.nframes * SNAP_ENTRY_SIZE);
	free(ib);
	snap__put_header(hb, &w->h);
	if (!err && pwrite(w->fd, hb, sizeof(hb), 0) != (ssize_t)sizeof(hb))
		err = errno ? -errno : -EIO;
	if (!err && fsync(w->fd))
		err = -errno;
	return err ? uffd__err(err, "pack %s: writing: %s", w->path, uffd__errname(err)) : 0;
}

static int check_pack_opts(struct uffd_snap_pack_opts *o, uint64_t size, unsigned *shift)
{
	uint64_t fs = o->frame_size;

	if (o->flags & ~UFFD_SNAP_PACK_DIFF)
		return uffd__err(-EINVAL, "uffd_snap_pack_opts: unknown flags 0x%x", o->flags & ~UFFD_SNAP_PACK_DIFF);
	if ((o->flags & UFFD_SNAP_PACK_DIFF) && !o->parent)
		return uffd__err(-EINVAL, "uffd_snap_pack: a Diff file (UFFD_SNAP_PACK_DIFF) needs its parent snapshot");
	if (o->level < 0 || o->level > 19)
		return uffd__err(-EINVAL, "uffd_snap_pack_opts: zstd level %d is not in 1..19 (0: 3)", o->level);
	if (!fs)
		fs = o->parent ? 1ull << o->parent->shift : 1ull << DEFAULT_SHIFT;
	if ((fs & (fs - 1)) || fs < 1ull << SNAP_MIN_SHIFT || fs > 1ull << SNAP_MAX_SHIFT)
		return uffd__err(-EINVAL, "uffd_snap_pack_opts: frame size %" PRIu64 " is not a power of two from 65536 to 4194304", fs);
	*shift = (unsigned)__builtin_ctzll(fs);
	if (o->parent && *shift != o->parent->shift)
		return uffd__err(-EINVAL, "uffd_snap_pack: frames of %" PRIu64 " bytes on a parent with frames of %llu: a diff has its parent's frame size",
				 fs, 1ull << o->parent->shift);
	if (!size || size % SNAP_PAGE)
		return uffd__err(-EINVAL, "uffd_snap_pack: an image of %" PRIu64 " bytes: not a nonzero multiple of 4096", size);
	if (o->parent && size != o->parent->size)
		return uffd__err(-EINVAL, "uffd_snap_pack: an image of %" PRIu64 " bytes on a parent of %" PRIu64 ": layers must be of one size",
				 size, o->parent->size);
	if (((size - 1) >> *shift) + 1 > UINT32_MAX)
		return uffd__err(-EINVAL, "uffd_snap_pack: an image of %" PRIu64 " bytes has too many frames of %" PRIu64, size, fs);
	return 0;
}

static int writer_init(struct writer *w, const char *path, const struct uffd_snap_pack_opts *o,
		       uint64_t size, unsigned shift)
{
	size_t fs = (size_t)1 << shift;
	const struct snap_layer *top = o->parent ? &o->parent->l[o->parent->n - 1] : NULL;

	w->path = path;
	w->fd = -1;
	w->parent = o->parent;
	w->level = o->level ? o->level : 3;
	w->h = (struct snap_hdr){ .version = SNAP_VERSION, .frame_shift = shift, .image_size = size,
				  .nframes = ((size - 1) >> shift) + 1 };
	if (top) {
		w->h.flags = SNAP_FLAG_PARENT;
		memcpy(w->h.parent_id, top->h.id, 16);
		w->h.parent_size = size;
	}
	if (getrandom(w->h.id, 16, 0) != 16)
		return uffd__err(-errno, "pack %s: getrandom for the snapshot's identity: %s", path, uffd__errname(errno));
	w->pos = SNAP_HEADER_SIZE;
	w->cbound = ZSTD_compressBound(fs);
	w->nbuckets = (uint32_t)(w->h.nframes < 1024 ? 1024 : w->h.nframes);
	w->e = calloc(w->h.nframes, sizeof(*w->e));
	w->chain = malloc(w->h.nframes * sizeof(*w->chain));
	w->bucket = malloc(w->nbuckets * sizeof(*w->bucket));
	w->buf = malloc(fs);
	w->pbuf = malloc(fs);
	w->dbuf = malloc(fs);
	w->cbuf = malloc(w->cbound);
	w->cctx = ZSTD_createCCtx();
	w->dctx = ZSTD_createDCtx();
	if (!w->e || !w->chain || !w->bucket || !w->buf || !w->pbuf || !w->dbuf || !w->cbuf ||
	    !w->cctx || !w->dctx)
		return uffd__err(-ENOMEM, "pack %s: out of memory", path);
	memset(w->bucket, 0xff, w->nbuckets * sizeof(*w->bucket));
	return 0;
}

static void writer_free(struct writer *w)
{
	if (w->fd >= 0)
		close(w->fd);
	free(w->e);
	free(w->chain);
	free(w->bucket);
	free(w->buf);
	free(w->pbuf);
	free(w->dbuf);
	free(w->cbuf);
	ZSTD_freeCCtx(w->cctx);
	ZSTD_freeDCtx(w->dctx);
}

/* Pack the image of src, size bytes, into path: the one way in for pack and merge. */
static int pack(const char *path, struct src *src, uint64_t size, const struct uffd_snap_pack_opts *o)
{
	struct uffd_snap_pack_opts opts = { .size = sizeof(opts) };
	struct writer w = { .fd = -1 };
	size_t plen = strlen(path);
	char *tmp = malloc(plen + sizeof(".XXXXXX"));
	unsigned shift = 0;
	int err;

	if (o && (err = uffd__opts_copy(&opts, sizeof(opts), o, o->size, "uffd_snap_pack_opts")))
		goto out;
	if ((err = check_pack_opts(&opts, size, &shift)) || (err = writer_init(&w, path, &opts, size, shift)))
		goto out;
	if (!tmp) {
		err = uffd__err(-ENOMEM, "pack %s: out of memory", path);
		goto out;
	}
	memcpy(tmp, path, plen);
	memcpy(tmp + plen, ".XXXXXX", sizeof(".XXXXXX"));
	w.fd = mkostemp(tmp, O_CLOEXEC);
	if (w.fd < 0) {
		err = uffd__err(-errno, "pack %s: cannot create a temporary file next to it: %s",
				path, uffd__errname(errno));
		goto out;
	}
	if (src->fd >= 0 && (err = find_extents(src, size))) {
		err = uffd__err(err, "pack %s: finding the input's data extents: %s", path, uffd__errname(err));
		goto unlink;
	}
	if ((err = lseek(w.fd, SNAP_HEADER_SIZE, SEEK_SET) < 0 ? -errno : 0) ||
	    (err = pack_frames(&w, src)) || (err = finish(&w)))
		goto unlink;
	if (rename(tmp, path)) {
		err = uffd__err(-errno, "pack: cannot rename the temporary file to %s: %s", path, uffd__errname(errno));
		goto unlink;
	}
	goto out;
unlink:
	unlink(tmp);
out:
	writer_free(&w);
	free(tmp);
	free(src->ext);
	return err;
}

UFFD_EXPORT int uffd_snap_pack(const char *path, int fd, const struct uffd_snap_pack_opts *o)
{
	struct src src = { .fd = fd };
	struct stat st;

	if (!path || !*path || fd < 0)
		return uffd__err(-EINVAL, "uffd_snap_pack: pass a file name and an open input file");
	if (fstat(fd, &st))
		return uffd__err(-errno, "uffd_snap_pack: fstat of the input: %s", uffd__errname(errno));
	if (!S_ISREG(st.st_mode))
		return uffd__err(-EINVAL, "uffd_snap_pack: the input is not a regular file");
	src.diff = o && o->size >= offsetof(struct uffd_snap_pack_opts, level) &&
		   (o->flags & UFFD_SNAP_PACK_DIFF);
	return pack(path, &src, (uint64_t)st.st_size, o);
}
UFFD_EXPORT_OWN(snap_pack);

UFFD_EXPORT int uffd_snap_merge(const char *path, struct uffd_snap *s, const struct uffd_snap_pack_opts *o)
{
	struct src src = { .fd = -1, .from = s };

	if (!path || !*path || !s)
		return uffd__err(-EINVAL, "uffd_snap_merge: pass a file name and an open snapshot");
	if (o && o->size >= offsetof(struct uffd_snap_pack_opts, level) && (o->flags & UFFD_SNAP_PACK_DIFF))
		return uffd__err(-EINVAL, "uffd_snap_merge: UFFD_SNAP_PACK_DIFF is for Diff files, not snapshots");
	return pack(path, &src, s->size, o);
}
UFFD_EXPORT_OWN(snap_merge);
