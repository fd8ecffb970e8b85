/* SPDX-License-Identifier: MIT */
/*
 * The bytes of a compressed snapshot file (libuffd-snapshot(5)), shared by
 * the reader (snap.c) and the writer (snap-write.c): the header and index
 * entries encoded and decoded, and every check a file's header and index
 * get before anything is served from them.
 */
#ifndef LIBUFFD_SNAP_FORMAT_H
#define LIBUFFD_SNAP_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SNAP_MAGIC "UFFDSNP"	/* with its NUL: 8 bytes */
#define SNAP_VERSION 1u
#define SNAP_HEADER_SIZE 128u
#define SNAP_ENTRY_SIZE 24u
#define SNAP_MIN_SHIFT 16u	/* 64 KiB */
#define SNAP_MAX_SHIFT 22u	/* 4 MiB */
#define SNAP_PAGE 4096u		/* images are whole 4 KiB pages */
#define SNAP_FLAG_PARENT 1u	/* a diff: parent_id and parent_size name its parent */
#define SNAP_FLAGS_KNOWN SNAP_FLAG_PARENT

/* What an index entry says about its frame. */
enum snap_kind {
	SNAP_ZERO = 0,		/* all zero, nothing stored */
	SNAP_ZSTD = 1,		/* one zstd frame at offset, length bytes */
	SNAP_RAW = 2,		/* the bytes themselves (zstd made them no smaller) */
	SNAP_PARENT = 3,	/* not in this layer: the parent's frame */
};

struct snap_hdr {
	uint32_t version;
	uint32_t frame_shift;
	uint32_t flags;
	uint32_t index_crc;	/* CRC32C of the index */
	uint64_t image_size;
	uint64_t nframes;
	uint64_t index_offset;	/* the index runs from here to the end of the file */
	uint8_t id[16];
	uint8_t parent_id[16];
	uint64_t parent_size;
};

struct snap_entry {
	uint64_t offset;	/* in the file */
	uint32_t length;	/* stored bytes */
	uint32_t crc;		/* CRC32C of the frame's uncompressed bytes */
	uint8_t kind;		/* enum snap_kind */
};

/* Bytes of frame i (the last one may be shorter). */
uint64_t snap__frame_len(const struct snap_hdr *h, uint64_t i);

/* All of [off, off+len) of fd, retried on EINTR and short reads: 0, -errno, or -EIO at the end of the file. */
int snap__pread_all(int fd, void *buf, size_t len, uint64_t off);
void snap__put_header(uint8_t buf[SNAP_HEADER_SIZE], const struct snap_hdr *h);
void snap__put_entry(uint8_t buf[SNAP_ENTRY_SIZE], const struct snap_entry *e);

/*
 * Decode and check the header of @p name, a file of @p file_size bytes.
 * 0; -EBADMSG (not a snapshot, truncated, header corrupt, sizes that do not
 * add up); -EPROTONOSUPPORT (version or flags unknown). The sentence names
 * the file.
 */
int snap__parse_header(const uint8_t buf[SNAP_HEADER_SIZE], uint64_t file_size,
		       const char *name, struct snap_hdr *h);

/*
 * Decode and check the index of a file whose header is @p h: h->nframes
 * entries of SNAP_ENTRY_SIZE bytes at @p buf into @p e. 0 or -EBADMSG
 * (checksum, an entry's kind, offset or length; the sentence names the
 * file and frame).
 */
int snap__parse_index(const struct snap_hdr *h, const uint8_t *buf, const char *name,
		      struct snap_entry *e);

#endif /* LIBUFFD_SNAP_FORMAT_H */
