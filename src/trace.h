/* SPDX-License-Identifier: MIT */
/*
 * Working-set traces (libuffd-trace(5)): which pages of a restore's
 * regions were faulted, in first-touch order. Recording appends to a
 * preallocated trace (no allocation, no lock: the caller serialises);
 * loading checks everything a file can get wrong; several loaded traces
 * merge into one prefetch order.
 */
#ifndef LIBUFFD_TRACE_H
#define LIBUFFD_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The regions a trace is about, in the restore's order. */
struct trace_region {
	uint64_t length;	/* bytes */
	uint64_t page_size;	/* bytes, a power of two */
};

/* One page: region index and page index inside it. */
struct trace_page {
	uint32_t region;
	uint64_t page;
};

/* A trace being recorded, or the merged order of loaded traces. */
struct trace {
	unsigned nregions;
	struct trace_region *regions;	/* copied */
	uint64_t **seen;	/* a bitmap per region */
	struct trace_page *order;	/* first-touch order */
	size_t n, cap;		/* cap: every page of every region, or fewer */
	bool full;		/* a copy of a recording that ran out of room (trace__copy) */
	/*
	 * Merging: each entry's earliest relative position; allocated by the
	 * first merge with room for cap ranks, then trace__sort()'s scratch
	 * (cap ranks and cap pages), so that sorting never allocates.
	 */
	double *rank;
};

/*
 * Prepare @p t for the regions: bitmaps and room for @p max pages (0: every
 * page of every region). 0 or -ENOMEM / -EINVAL (no region, bad size).
 */
int trace__init(struct trace *t, const struct trace_region *regions, unsigned n,
		size_t max);
void trace__free(struct trace *t);

/* Record a touch: true if the page is new and was appended (room left). */
bool trace__add(struct trace *t, uint32_t region, uint64_t page);

/*
 * Copies the recording @p src into @p dst, initialised for the same
 * regions: no allocation, for a caller holding the lock the recording is
 * under, who allocated @p dst before taking it. dst then saves as src
 * would. false (dst unchanged) when dst has too little room.
 */
bool trace__copy(struct trace *dst, const struct trace *src);

/* Whether @p page of @p region is in the trace. */
bool trace__has(const struct trace *t, uint32_t region, uint64_t page);

/*
 * Write @p t to @p path atomically (temporary file in the same directory,
 * fsync, rename). 0 or -errno; uffd_last_error() set.
 */
int trace__save(const struct trace *t, const char *path);

/*
 * Read the trace file @p path and merge its pages into @p t (initialised
 * for the same regions with max 0): pages new to @p t are added, and every
 * page keeps its earliest relative position (index / count) over the
 * traces merged; trace__sort() then orders by it. The file must describe
 * exactly t's regions. 0; -EBADMSG (not a trace, truncated, bad checksum,
 * a page outside its region, a page twice); -EPROTONOSUPPORT (version);
 * -EINVAL (other regions: the sentence says which and how); -errno of the
 * file calls; -ENOMEM. @p t is unchanged on failure.
 */
int trace__merge_file(struct trace *t, const char *path);

/*
 * trace__merge_file() on the file's bytes: @p len bytes at @p buf (the
 * fuzz target and the tests call it directly). Same results.
 */
int trace__merge_buf(struct trace *t, const void *buf, size_t len);

/* Orders t->order by the merged relative positions (stable). */
void trace__sort(struct trace *t);

#endif /* LIBUFFD_TRACE_H */
