/* SPDX-License-Identifier: MIT */
/* The compressed-snapshot reader's object, shared by snap.c and snap-write.c. */
#ifndef LIBUFFD_SNAP_INTERNAL_H
#define LIBUFFD_SNAP_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <zstd.h>

#include "snap-format.h"

#define NO_SLOT UINT32_MAX

/* One file of the chain. */
struct snap_layer {
	char *path;
	int fd;
	uint64_t file_size;
	struct snap_hdr h;
	struct snap_entry *e;	/* h.nframes */
	uint32_t *canon;	/* the first frame storing frame i's bytes (dedup) */
	uint32_t *slot;		/* cache slot of canonical frame i, or NO_SLOT */
};

/* A decompressed frame in the cache. */
struct snap_slot {
	uint32_t layer;		/* NO_SLOT: empty */
	uint32_t frame;
	bool ref;		/* CLOCK: used since the hand last passed */
	uint8_t *buf;
};

struct uffd_snap {
	pthread_mutex_t lock;	/* reads, the cache and its counters */
	unsigned n;
	struct snap_layer *l;	/* base first */
	uint64_t size;
	unsigned shift;		/* log2 of the frame size */
	struct snap_slot *slots;
	size_t nslots, hand;
	uint8_t *mem;		/* the slots' frames, mapped and populated at open */
	size_t mem_len;
	uint8_t *cbuf;		/* a compressed frame, read */
	ZSTD_DCtx *dctx;
	uint64_t hits, misses;
};

/* uffd_snap_read() without the argument checks: [off, off+len) is in the image. */
int snap__read(struct uffd_snap *s, uint64_t off, void *buf, size_t len);
/*
 * The same if it needs no decompression (zero or cached frames) and no
 * wait for the lock; else -EAGAIN. Any thread.
 */
int snap__read_nowait(struct uffd_snap *s, uint64_t off, void *buf, size_t len);
/*
 * Frame i of layer k decoded from its stored bytes (e->length of them, as
 * the layer's file holds them at e->offset) into dst, checked against its
 * CRC32C: 0 or -EBADMSG (file and frame named). Under s->lock.
 */
int snap__decode_frame(struct uffd_snap *s, unsigned k, uint64_t i, const uint8_t *stored, uint8_t *dst);
/* Whether frame i of the image is zero (no layer holds data for it). No lock. */
bool snap__frame_zero(const struct uffd_snap *s, uint64_t i);

#endif /* LIBUFFD_SNAP_INTERNAL_H */
