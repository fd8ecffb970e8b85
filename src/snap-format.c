/* SPDX-License-Identifier: MIT */
/*
 * libuffd-snapshot(5) on the byte level: header and index entries, and the
 * checks that make every later offset and length in them safe to use.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "crc32c.h"
#include "internal.h"
#include "snap-format.h"

/* Byte offsets in the header. */
enum {
	H_MAGIC = 0, H_VERSION = 8, H_HSIZE = 12, H_SHIFT = 16, H_FLAGS = 20,
	H_IMAGE = 24, H_NFRAMES = 32, H_INDEX = 40, H_INDEX_CRC = 48,
	H_ID = 56, H_PARENT_ID = 72, H_PARENT_SIZE = 88, H_CRC = 124,
};

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned bytes)
{
	uint64_t v = 0;

	while (bytes--)
		v = v << 8 | p[bytes];
	return v;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	while (n--)
		if (*p++)
			return false;
	return true;
}

uint64_t snap__frame_len(const struct snap_hdr *h, uint64_t i)
{
	uint64_t fs = 1ull << h->frame_shift, start = i << h->frame_shift;

	return h->image_size - start < fs ? h->image_size - start : fs;
}

void snap__put_header(uint8_t buf[SNAP_HEADER_SIZE], const struct snap_hdr *h)
{
	memset(buf, 0, SNAP_HEADER_SIZE);
	memcpy(buf + H_MAGIC, SNAP_MAGIC, 8);
	put_le(buf + H_VERSION, h->version, 4);
	put_le(buf + H_HSIZE, SNAP_HEADER_SIZE, 4);
	put_le(buf + H_SHIFT, h->frame_shift, 4);
	put_le(buf + H_FLAGS, h->flags, 4);
	put_le(buf + H_IMAGE, h->image_size, 8);
	put_le(buf + H_NFRAMES, h->nframes, 8);
	put_le(buf + H_INDEX, h->index_offset, 8);
	put_le(buf + H_INDEX_CRC, h->index_crc, 4);
	memcpy(buf + H_ID, h->id, 16);
	memcpy(buf + H_PARENT_ID, h->parent_id, 16);
	put_le(buf + H_PARENT_SIZE, h->parent_size, 8);
	put_le(buf + H_CRC, uffd__crc32c(buf, H_CRC), 4);
}

void snap__put_entry(uint8_t buf[SNAP_ENTRY_SIZE], const struct snap_entry *e)
{
	memset(buf, 0, SNAP_ENTRY_SIZE);
	put_le(buf, e->offset, 8);
	put_le(buf + 8, e->length, 4);
	put_le(buf + 12, e->crc, 4);
	buf[16] = e->kind;
}

/* The header's sizes against each other and the file's. */
static int check_sizes(const struct snap_hdr *h, uint64_t file_size, const char *name)
{
	uint64_t fs = 1ull << h->frame_shift, index_bytes;

	if (!h->image_size || h->image_size % SNAP_PAGE)
		return uffd__err(-EBADMSG, "%s: the image size %" PRIu64 " is not a nonzero multiple of 4096: the header is corrupt",
				 name, h->image_size);
	if (h->nframes != h->image_size / fs + !!(h->image_size % fs))
		return uffd__err(-EBADMSG, "%s: %" PRIu64 " frames do not make an image of %" PRIu64 " bytes in frames of %" PRIu64 ": the header is corrupt",
				 name, h->nframes, h->image_size, fs);
	if (h->index_offset < SNAP_HEADER_SIZE || h->index_offset > file_size ||
	    __builtin_mul_overflow(h->nframes, (uint64_t)SNAP_ENTRY_SIZE, &index_bytes) ||
	    file_size - h->index_offset != index_bytes)
		return uffd__err(-EBADMSG, "%s: the file has %" PRIu64 " bytes, not the %" PRIu64 " of its header's index at %" PRIu64 " and %" PRIu64 " frames: truncated or corrupt",
				 name, file_size, h->index_offset + h->nframes * SNAP_ENTRY_SIZE,
				 h->index_offset, h->nframes);
	if (h->flags & SNAP_FLAG_PARENT) {
		if (h->parent_size != h->image_size)
			return uffd__err(-EBADMSG, "%s: a diff of a %" PRIu64 "-byte parent cannot hold a %" PRIu64 "-byte image: the header is corrupt",
					 name, h->parent_size, h->image_size);
	}
	return 0;
}

int snap__parse_header(const uint8_t buf[SNAP_HEADER_SIZE], uint64_t file_size,
		       const char *name, struct snap_hdr *h)
{
	if (file_size < SNAP_HEADER_SIZE)
		return uffd__err(-EBADMSG, "%s: %" PRIu64 " bytes, shorter than a snapshot header (%u): truncated or not a snapshot",
				 name, file_size, SNAP_HEADER_SIZE);
	if (memcmp(buf + H_MAGIC, SNAP_MAGIC, 8))
		return uffd__err(-EBADMSG, "%s: not a libuffd compressed snapshot (no UFFDSNP magic)", name);
	h->version = (uint32_t)get_le(buf + H_VERSION, 4);
	if (h->version != SNAP_VERSION)
		return uffd__err(-EPROTONOSUPPORT, "%s: snapshot format version %u; this libuffd reads version %u",
				 name, h->version, SNAP_VERSION);
	if (get_le(buf + H_CRC, 4) != uffd__crc32c(buf, H_CRC))
		return uffd__err(-EBADMSG, "%s: the header's checksum is wrong: the header is corrupt", name);
	h->flags = (uint32_t)get_le(buf + H_FLAGS, 4);
	if (h->flags & ~SNAP_FLAGS_KNOWN)
		return uffd__err(-EPROTONOSUPPORT, "%s: header flags 0x%x this libuffd does not know (written by a newer one)",
				 name, h->flags & ~SNAP_FLAGS_KNOWN);
	h->frame_shift = (uint32_t)get_le(buf + H_SHIFT, 4);
	if (get_le(buf + H_HSIZE, 4) != SNAP_HEADER_SIZE || h->frame_shift < SNAP_MIN_SHIFT ||
	    h->frame_shift > SNAP_MAX_SHIFT || !all_zero(buf + 52, 4) ||
	    !all_zero(buf + 96, H_CRC - 96))
		return uffd__err(-EBADMSG, "%s: header size, frame size (2^%u) or reserved fields invalid: the header is corrupt",
				 name, h->frame_shift);
	h->image_size = get_le(buf + H_IMAGE, 8);
	h->nframes = get_le(buf + H_NFRAMES, 8);
	h->index_offset = get_le(buf + H_INDEX, 8);
	h->index_crc = (uint32_t)get_le(buf + H_INDEX_CRC, 4);
	memcpy(h->id, buf + H_ID, 16);
	memcpy(h->parent_id, buf + H_PARENT_ID, 16);
	h->parent_size = get_le(buf + H_PARENT_SIZE, 8);
	if (!(h->flags & SNAP_FLAG_PARENT) && (h->parent_size || !all_zero(h->parent_id, 16)))
		return uffd__err(-EBADMSG, "%s: a base with a parent's identity: the header is corrupt", name);
	return check_sizes(h, file_size, name);
}

/* One entry's fields against the header and its frame. */
static int check_entry(const struct snap_hdr *h, const struct snap_entry *e, uint64_t i,
		       const uint8_t *raw, const char *name)
{
	uint64_t flen = snap__frame_len(h, i);

	if (!all_zero(raw + 17, SNAP_ENTRY_SIZE - 17))
		goto bad;
	switch (e->kind) {
	case SNAP_PARENT:
		if (!(h->flags & SNAP_FLAG_PARENT))
			return uffd__err(-EBADMSG, "%s: frame %" PRIu64 " refers to a parent, but the file is a base: the index is corrupt",
					 name, i);
		/* fall through */
	case SNAP_ZERO:
		if (e->offset || e->length || e->crc)
			goto bad;
		return 0;
	case SNAP_RAW:
		if (e->length != flen)
			goto bad;
		break;
	case SNAP_ZSTD:
		if (!e->length || e->length > ZSTD_compressBound(flen))
			goto bad;
		break;
	default:
		goto bad;
	}
	if (e->offset < SNAP_HEADER_SIZE || e->offset > h->index_offset ||
	    h->index_offset - e->offset < e->length)
		goto bad;
	return 0;
bad:
	return uffd__err(-EBADMSG, "%s: frame %" PRIu64 ": index entry invalid (kind %u, %u bytes at %" PRIu64 "): the index is corrupt",
			 name, i, e->kind, e->length, e->offset);
}

int snap__parse_index(const struct snap_hdr *h, const uint8_t *buf, const char *name,
		      struct snap_entry *e)
{
	int err;

	if (uffd__crc32c(buf, h->nframes * SNAP_ENTRY_SIZE) != h->index_crc)
		return uffd__err(-EBADMSG, "%s: the index's checksum is wrong: the index is corrupt", name);
	for (uint64_t i = 0; i < h->nframes; i++) {
		const uint8_t *p = buf + i * SNAP_ENTRY_SIZE;

		e[i].offset = get_le(p, 8);
		e[i].length = (uint32_t)get_le(p + 8, 4);
		e[i].crc = (uint32_t)get_le(p + 12, 4);
		e[i].kind = p[16];
		if ((err = check_entry(h, &e[i], i, p, name)))
			return err;
	}
	return 0;
}

int snap__pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t k = pread(fd, p, len, (off_t)off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		p += k;
		off += (uint64_t)k;
		len -= (size_t)k;
	}
	return 0;
}
