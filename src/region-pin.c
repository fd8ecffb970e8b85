/* SPDX-License-Identifier: MIT */
/*
 * Region pins: a thread that runs a handler or callback for a region pins
 * it, and uffd_region_destroy() waits until no other thread holds a pin.
 *
 * The pins are the region's own state: the loop pins and unpins, destroy
 * waits here, and neither names the other (calls go one way: the loop
 * calls down into the region layer, never the reverse).
 */
#include <stdlib.h>
#include <time.h>

#include "internal.h"

/* The region a handler of this thread is running for (destroy waits for it). */
static __thread struct uffd_region *tl_pinned;

void uffd__region_pin(struct uffd_region *r)
{
	__atomic_add_fetch(&r->pins, 1, __ATOMIC_ACQ_REL);
	tl_pinned = r;
}

void uffd__region_unpin(struct uffd_region *r)
{
	/* Destroyed by its own handler (this thread): the struct was left for us to free. */
	bool doomed = __atomic_load_n(&r->doomed, __ATOMIC_ACQUIRE);

	tl_pinned = NULL;
	/* Otherwise a destroy on another thread may free r as soon as pins drops: no touching after. */
	if (!__atomic_sub_fetch(&r->pins, 1, __ATOMIC_ACQ_REL) && doomed)
		free(r);
}

bool uffd__region_unpin_wait(struct uffd_region *r)
{
	struct timespec nap = { .tv_nsec = 20000 };
	unsigned own = tl_pinned == r;

	while (__atomic_load_n(&r->pins, __ATOMIC_ACQUIRE) > own)
		nanosleep(&nap, NULL);
	if (own)
		__atomic_store_n(&r->doomed, true, __ATOMIC_RELEASE);
	return own;
}
