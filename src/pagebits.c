/* SPDX-License-Identifier: MIT */
/*
 * A bit per page of a region, in atomic words: the pages given back
 * (pagestate.c) and the pages recorded write-protected (wpstate.c). The
 * words are allocated zeroed and never move, so every call here is
 * lock-free and async-signal-safe; each caller names the memory order its
 * own reasoning needs.
 */
#include <stdlib.h>

#include "internal.h"

#define WORD_BITS (8 * sizeof(unsigned long))

atomic_ulong *uffd__pagebits_new(size_t pages)
{
	return calloc((pages + WORD_BITS - 1) / WORD_BITS, sizeof(atomic_ulong));	/* zeroed words are valid atomics */
}

bool uffd__pagebits_span(const struct uffd_region *r, uint64_t off, uint64_t len, size_t *first, size_t *last)
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

void uffd__pagebits_apply(atomic_ulong *w, size_t first, size_t last, bool set, memory_order mo)
{
	for (size_t i = first / WORD_BITS; i <= last / WORD_BITS; i++) {
		size_t lo = i == first / WORD_BITS ? first % WORD_BITS : 0;
		size_t hi = i == last / WORD_BITS ? last % WORD_BITS : WORD_BITS - 1;
		unsigned long m = word_mask(lo, hi);

		if (set)
			atomic_fetch_or_explicit(&w[i], m, mo);
		else
			atomic_fetch_and_explicit(&w[i], ~m, mo);
	}
}

bool uffd__pagebits_take(atomic_ulong *w, size_t page, memory_order mo)
{
	unsigned long m = 1ul << (page % WORD_BITS);

	return atomic_fetch_and_explicit(&w[page / WORD_BITS], ~m, mo) & m;
}

static bool test_bit(atomic_ulong *w, size_t page, memory_order mo)
{
	return atomic_load_explicit(&w[page / WORD_BITS], mo) & (1ul << (page % WORD_BITS));
}

size_t uffd__pagebits_run(atomic_ulong *w, size_t first, size_t last, memory_order mo, bool *set)
{
	bool state = w && test_bit(w, first, mo);
	size_t page;

	for (page = first + 1; page <= last; page++)
		if ((w && test_bit(w, page, mo)) != state)
			break;
	*set = state;
	return page - first;
}
