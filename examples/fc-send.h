/* SPDX-License-Identifier: MIT */
/*
 * Firecracker's side of the "Uffd" memory backend's handshake, for the
 * stand-ins that play Firecracker (fc-vmm, kvm-vmm): raw system calls, no
 * libuffd, what Firecracker does when it loads a snapshot.
 */
#ifndef EXAMPLES_FC_SEND_H
#define EXAMPLES_FC_SEND_H

#include <stdint.h>

#define FC_SEND_MAX_REGIONS 8

/* One row of the table: Firecracker's GuestRegionUffdMapping. */
struct fc_send_region {
	void *base;		/* base_host_virt_addr */
	uint64_t size, offset, page_size;
};

/* The page size member(s) of each row: page_size (Firecracker now), page_size_kib (older releases, bytes all the same), or both. */
enum fc_send_json { FC_SEND_JSON_CURRENT, FC_SEND_JSON_OLD, FC_SEND_JSON_BOTH };

/*
 * A userfaultfd with EVENT_REMOVE (Firecracker's balloon), every region
 * registered for MISSING faults, then ONE sendmsg of the fd and the JSON
 * table (compact, fields in serde's order) to the handler's socket at path,
 * tried for 10 s while nobody listens there. Returns the connected socket,
 * which stays open, as the userfaultfd does (as in Firecracker). On failure
 * prints "prog: why" and exits: 2 for a path too long, else 3.
 */
int fc_send_hand_over(const char *prog, const char *path, const struct fc_send_region *r, unsigned n,
		      enum fc_send_json form);

#endif
