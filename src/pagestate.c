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

#define WORD_BITS (8 * sizeof(unsigned long))

static atomic_ulong *bitmap(const struct uffd_region *r)
{
	return __atomic_load_n(&r->removed, __ATOMIC_ACQUIRE);
}

const void *uffd__region_source(const struct uffd_region *r)
{
	return __atomic_load_n(&r->src, __ATOMIC_ACQUIRE);
}

/* Pages [*first, *last] touched by [off, off+len) clamped to r; false if none. */
static bool page_span(const struct uffd_region *r, uint64_t off, uint64_t len,
		      size_t *first, size_t *last)
{
	uint64_t end;

	if (!len || off >= r->length)
		return false;
	end = len > r->length - off ? r->length : off + len;
	*first = (size_t)(off / r->page_size);
	*last = (size_t)((end - 1) / r->page_size);
	return true;
}

/* Bits [lo, hi] of one word. */
static unsigned long word_mask(size_t lo, size_t hi)
{
	unsigned long upto = hi + 1 == WORD_BITS ? ~0ul : (1ul << (hi + 1)) - 1;

	return upto & ~((1ul << lo) - 1);
}

/* Sets or clears bits [first, last], a word at a time. */
static void apply(atomic_ulong *w, size_t first, size_t last, bool set)
{
	for (size_t i = first / WORD_BITS; i <= last / WORD_BITS; i++) {
		size_t lo = i == first / WORD_BITS ? first % WORD_BITS : 0;
		size_t hi = i == last / WORD_BITS ? last % WORD_BITS : WORD_BITS - 1;
		unsigned long m = word_mask(lo, hi);

		if (set)
			atomic_fetch_or_explicit(&w[i], m, memory_order_release);
		else
			atomic_fetch_and_explicit(&w[i], ~m, memory_order_release);
	}
}

void uffd__region_mark_removed(struct uffd_region *r, uint64_t off, uint64_t len)
{
	atomic_ulong *w = bitmap(r);
	size_t first, last;

	if (w && page_span(r, off, len, &first, &last))
		apply(w, first, last, true);
}

void uffd__region_clear_removed(struct uffd_region *r, uint64_t off, uint64_t len)
{
	atomic_ulong *w = bitmap(r);
	size_t first, last;

	if (w && page_span(r, off, len, &first, &last))
		apply(w, first, last, false);
}

bool uffd__region_take_removed(struct uffd_region *r, uint64_t off)
{
	atomic_ulong *w = bitmap(r);
	size_t page;
	unsigned long m;

	if (!w || off >= r->length)
		return false;
	page = (size_t)(off / r->page_size);
	m = 1ul << (page % WORD_BITS);
	return atomic_fetch_and_explicit(&w[page / WORD_BITS], ~m, memory_order_acq_rel) & m;
}

static bool page_removed(atomic_ulong *w, size_t page)
{
	return atomic_load_explicit(&w[page / WORD_BITS], memory_order_acquire) &
	       (1ul << (page % WORD_BITS));
}

uint64_t uffd__region_removed_run(const struct uffd_region *r, uint64_t off,
				  uint64_t len, bool *removed)
{
	atomic_ulong *w = bitmap(r);
	size_t first, last, page;
	bool state;

	*removed = false;
	if (!page_span(r, off, len, &first, &last))
		return 0;
	state = w && page_removed(w, first);
	for (page = first + 1; page <= last; page++)
		if ((w && page_removed(w, page)) != state)
			break;
	*removed = state;
	return (uint64_t)(page - first) * r->page_size;
}

void uffd__region_pagestate_free(struct uffd_region *r)
{
	free(r->removed);
	r->removed = NULL;
}

static int bitmap_alloc(struct uffd_region *r)
{
	size_t pages = r->length / r->page_size;
	size_t words = (pages + WORD_BITS - 1) / WORD_BITS;
	atomic_ulong *w, *none = NULL;

	if (bitmap(r))
		return 0;
	w = calloc(words, sizeof(*w));	/* zeroed words are valid atomics */
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
