/* SPDX-License-Identifier: MIT */
/*
 * A region's page state: the source its MISSING faults are copied from,
 * and a bit per page the owner gave back (a REMOVE event), whose next
 * MISSING fault must get zeros instead of the source's old contents.
 *
 * The loop thread sets bits on REMOVE and clears them when it serves a
 * zero page while handler threads may look, so the bitmap is atomic words
 * and the calls take no lock: the SIGBUS path and a loop thread between
 * two reads may use them. It is allocated once, by the first
 * uffd_region_set_source(), and freed with the region.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

static atomic_ulong *bitmap(const struct uffd_region *r)
{
	return __atomic_load_n(&r->removed, __ATOMIC_ACQUIRE);
}

const void *uffd__region_source(const struct uffd_region *r)
{
	return __atomic_load_n(&r->src, __ATOMIC_ACQUIRE);
}

void uffd__region_mark_removed(struct uffd_region *r, uint64_t off, uint64_t len)
{
	atomic_ulong *w = bitmap(r);
	size_t first, last;

	if (w && uffd__pagebits_span(r, off, len, &first, &last))
		uffd__pagebits_apply(w, first, last, true, memory_order_release);
}

void uffd__region_clear_removed(struct uffd_region *r, uint64_t off, uint64_t len)
{
	atomic_ulong *w = bitmap(r);
	size_t first, last;

	if (w && uffd__pagebits_span(r, off, len, &first, &last))
		uffd__pagebits_apply(w, first, last, false, memory_order_release);
}

bool uffd__region_take_removed(struct uffd_region *r, uint64_t off)
{
	atomic_ulong *w = bitmap(r);

	if (!w || off >= r->length)
		return false;
	return uffd__pagebits_take(w, (size_t)(off / r->page_size), memory_order_acq_rel);
}

uint64_t uffd__region_removed_run(const struct uffd_region *r, uint64_t off,
				  uint64_t len, bool *removed)
{
	size_t first, last;

	*removed = false;
	if (!uffd__pagebits_span(r, off, len, &first, &last))
		return 0;
	return (uint64_t)uffd__pagebits_run(bitmap(r), first, last, memory_order_acquire, removed) * r->page_size;
}

void uffd__region_pagestate_free(struct uffd_region *r)
{
	free(r->removed);
	r->removed = NULL;
}

static int bitmap_alloc(struct uffd_region *r)
{
	size_t pages = r->length / r->page_size;
	atomic_ulong *w, *none = NULL;

	if (bitmap(r))
		return 0;
	w = uffd__pagebits_new(pages);
	if (!w)
		return uffd__err(-ENOMEM, "uffd_region_set_source: out of memory for the removed-page bitmap of %zu pages",
				 pages);
	/* Two threads setting a source at once: one bitmap wins. */
	if (!__atomic_compare_exchange_n(&r->removed, &none, w, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		free(w);
	return 0;
}

UFFD_EXPORT int uffd_region_set_source(struct uffd_region *r, const void *src, size_t len)
{
	const char *c = "uffd_region_set_source";
	int err;

	if (!r)
		return uffd__err(-EINVAL, "%s: region is NULL", c);
	if (src && len < r->length)
		return uffd__err(-EINVAL, "%s: the source has %zu bytes, the region %zu; it must cover the whole region",
				 c, len, r->length);
	if (src && (uintptr_t)src + len < (uintptr_t)src)
		return uffd__err(-EINVAL, "%s: source %p+%zu wraps around the address space", c, src, len);
	if (src && (err = bitmap_alloc(r)))
		return err;
	r->src_len = src ? len : 0;
	__atomic_store_n(&r->src, src, __ATOMIC_RELEASE);
	return 0;
}
UFFD_EXPORT_OWN(region_set_source);
