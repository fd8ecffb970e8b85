/* SPDX-License-Identifier: MIT */
/*
 * A restore's page states in the caller's memory (uffd_restore_region_state):
 * a handler that supervises itself keeps them in shared memory, and the
 * handler that takes over after a crash adopts them. It touches the
 * object's fields only, before the start, and calls no other restore file.
 */
#include <errno.h>
#include <stdlib.h>

#include "restore-internal.h"

_Static_assert((int)UFFD_PAGE_ABSENT == (int)PG_ABSENT && (int)UFFD_PAGE_INFLIGHT == (int)PG_INFLIGHT &&
	       (int)UFFD_PAGE_PRESENT == (int)PG_PRESENT && (int)UFFD_PAGE_ZERO == (int)PG_ZERO &&
	       (int)UFFD_PAGE_BAD == (int)PG_BAD && (int)UFFD_PAGE_HOLE == (int)PG_HOLE,
	       "the public page states are the engine's own");

/* Every byte a state, before anything changes. */
static int check_map(const unsigned char *m, size_t n)
{
	for (size_t p = 0; p < n; p++)
		if (m[p] > PG_HOLE)
			return uffd__err(-EINVAL, "uffd_restore_region_state: byte %zu of the map is %u, not a page state (enum uffd_page_state); the map is not one this restore wrote",
					 p, m[p]);
	return 0;
}

UFFD_EXPORT int uffd_restore_region_state(struct uffd_restore *rs, struct uffd_region *r, void *map, size_t len)
{
	const char *c = "uffd_restore_region_state";
	struct rs_region *g = NULL;
	atomic_uchar *st = map;
	uint64_t done = 0;
	int err;

	if (!rs || !r || !map)
		return uffd__err(-EINVAL, "%s: %s is NULL", c, !rs ? "restore" : !r ? "region" : "map");
	if (rs->started)
		return uffd__err(-EINVAL, "%s: the restore is started; give the map before uffd_restore_start", c);
	for (unsigned i = 0; i < rs->nregs && !g; i++)
		g = rs->regs[i].r == r ? &rs->regs[i] : NULL;
	if (!g)
		return uffd__err(-EINVAL, "%s: the region is not one of this restore; add it first (uffd_restore_add_region_source)", c);
	if (g->st_map)
		return uffd__err(-EBUSY, "%s: region %u has its map already", c, g->idx);
	if (len < g->npages)
		return uffd__err(-EINVAL, "%s: the map has %zu bytes, region %u has %zu pages (one byte each)",
				 c, len, g->idx, g->npages);
	if ((err = check_map(map, g->npages)))
		return err;
	/* A read or a failure of the handler before: nothing of it is known to be mapped. */
	for (size_t p = 0; p < g->npages; p++) {
		unsigned char s = atomic_load(&st[p]);

		if (s == PG_INFLIGHT || s == PG_BAD)
			atomic_store(&st[p], PG_ABSENT);
		else
			done += s != PG_ABSENT;
	}
	free(g->st);	/* all ABSENT: nothing had started */
	g->st = st;
	g->st_map = true;
	atomic_fetch_add(&rs->done, done);
	return 0;
}
UFFD_EXPORT_OWN(restore_region_state);
