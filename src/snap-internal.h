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
	char *path;			/* or the source's name */
	int fd;				/* -1 for a layer read from a source */
	struct uffd_source *src;	/* uffd_snap_open_sources(): the layer's bytes; else NULL */
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
	bool loading;		/* claimed by a reader decompressing into it: not readable, not evictable */
	uint8_t *buf;
};

/*
 * Where a reader gets a frame's stored bytes (a layer's file with
 * pread(2), or a source's reads), and what it decompresses with: one per
 * thread reading at once.
 */
struct snap_reader {
	ZSTD_DCtx *dctx;
	uint8_t *cbuf;		/* a compressed frame */
	uint8_t *fbuf;		/* a whole frame, when every cache slot is being loaded */
	/* e->length stored bytes of layer k at e->offset into dst: 0 or -errno (sentence set) */
	int (*fetch)(void *ctx, unsigned k, const struct snap_entry *e, uint8_t *dst);
	void *ctx;
};

struct uffd_snap {
	pthread_mutex_t lock;	/* the cache and its counters (never held while reading or decompressing) */
	pthread_cond_t loaded;	/* a slot stopped loading */
	pthread_mutex_t own_lock;	/* own: uffd_snap_read() and the like, one at a time */
	struct snap_reader own;
	unsigned threads;	/* uffd_snap_opts.threads, resolved */
	unsigned n;
	struct snap_layer *l;	/* base first */
	uint64_t size;
	unsigned shift;		/* log2 of the frame size */
	struct snap_slot *slots;
	size_t nslots, hand;
	uint8_t *mem;		/* the slots' frames, mapped and populated at open */
	size_t mem_len;
	uint64_t hits, misses;
};

/* uffd_snap_read() without the argument checks: [off, off+len) is in the image. */
int snap__read(struct uffd_snap *s, uint64_t off, void *buf, size_t len);
/*
 * The same through reader @p r (its thread's): frames not cached are
 * fetched with r->fetch and decompressed with r->dctx, outside s->lock, so
 * that several readers decompress at once; a frame another reader is
 * loading is waited for, not loaded twice. 0 or -errno (sentence set:
 * file or source, and frame).
 */
int snap__read_with(struct uffd_snap *s, struct snap_reader *r, uint64_t off, void *buf, size_t len);
/* A reader's buffers and context for frames of s (fetch and ctx left to the caller): 0 or -ENOMEM. */
int snap__reader_init(const struct uffd_snap *s, struct snap_reader *r);
void snap__reader_free(struct snap_reader *r);
/*
 * The same if it needs no decompression (zero or cached frames) and no
 * wait for the lock; else -EAGAIN. Any thread.
 */
int snap__read_nowait(struct uffd_snap *s, uint64_t off, void *buf, size_t len);
/* The pread(2) fetch of a layer read from its file. */
int snap__fetch_file(const struct snap_layer *l, uint64_t i, const struct snap_entry *e, uint8_t *dst);
/* Whether frame i of the image is zero (no layer holds data for it). No lock. */
bool snap__frame_zero(const struct uffd_snap *s, uint64_t i);

#endif /* LIBUFFD_SNAP_INTERNAL_H */
