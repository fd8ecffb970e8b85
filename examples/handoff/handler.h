/* SPDX-License-Identifier: MIT */
/* The two ways handoff-handler serves the vmm: with libuffd's loop, and by hand. */
#ifndef EXAMPLES_HANDOFF_HANDLER_H
#define EXAMPLES_HANDOFF_HANDLER_H

#include <stdint.h>

#include <uffd.h>

/* What a serving run counted. */
struct ho_served {
	uint64_t faults;	/* fault messages read */
	uint64_t minor;		/* of those, MINOR */
	uint64_t ioctls;	/* resolving ioctls */
	uint64_t errors;	/* failed handlers or resolutions */
	uint64_t owner_gone;	/* resolutions refused because the vmm had exited */
	uint64_t exit_wall_us;	/* when the vmm's exit was noticed (ho_wall_us()) */
};

/*
 * Serve every fault of h's regions until the vmm exits (h->pidfd readable).
 * snap holds the regions' contents back to back, in table order. 0, or 1
 * after printing why.
 */
int serve_libuffd(struct uffd_handoff *h, const unsigned char *snap, struct ho_served *s);
int serve_baseline(struct uffd_handoff *h, const unsigned char *snap, struct ho_served *s);

#endif
