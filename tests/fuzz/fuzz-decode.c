/* SPDX-License-Identifier: MIT */
/*
 * Fuzzes the decoder behind uffd_read_events(): arbitrary 32-byte messages
 * for a handle with two regions (base pages and 2 MiB pages). The input is
 * the handle's features (8 bytes), then the messages. Every decoded event
 * must be self-consistent.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define BASE_A 0x100000000ull
#define BASE_B 0x200000000ull
#define HUGE (2ul << 20)

static struct uffd_region ra, rb;
static struct uffd u = { .fd = -1, .page_size = 4096, .regions = RANGEMAP_INIT };

static void init(void)
{
	static bool done;
	struct rangemap_entry a = { BASE_A, BASE_A + 16 * 4096, 4096, &ra, 0 };
	struct rangemap_entry b = { BASE_B, BASE_B + 4 * HUGE, HUGE, &rb, 0 };

	if (done)
		return;
	done = true;
	atomic_init(&u.pagemap_fd, -1);
	ra = (struct uffd_region){ .uffd = &u, .base = (void *)BASE_A, .length = 16 * 4096, .page_size = 4096 };
	rb = (struct uffd_region){ .uffd = &u, .base = (void *)BASE_B, .length = 4 * HUGE, .page_size = HUGE };
	if (rangemap_insert(&u.regions, &a) || rangemap_insert(&u.regions, &b))
		abort();
}

static void check_fault(const struct uffd_fault *f)
{
	uintptr_t a = (uintptr_t)f->addr;

	if (f->uffd != &u || !f->len || (f->len & (f->len - 1)) || (a & (f->len - 1)))
		abort();
	if (f->region && (a < (uintptr_t)f->region->base ||
			  f->offset != a - (uintptr_t)f->region->base ||
			  f->offset + f->len > f->region->length || f->len != f->region->page_size))
		abort();
	if (!f->region && f->offset)
		abort();
	if (f->kind != UFFD_FAULT_MISSING && f->kind != UFFD_FAULT_MINOR && f->kind != UFFD_FAULT_WP)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct uffd_event ev;

	init();
	u.features = 0;
	if (size >= 8) {
		memcpy(&u.features, data, 8);
		data += 8;
		size -= 8;
	}
	for (; size >= 32; data += 32, size -= 32) {
		memset(&ev, 0xa5, sizeof(ev));
		if (uffd__decode_msg(&u, data, &ev))
			continue;
		if (ev.type == UFFD_EV_FAULT)
			check_fault(&ev.fault);
		else if (ev.type == UFFD_EV_FORK && ev.fork.fd < 0)
			abort();
		else if (ev.type > UFFD_EV_UNMAP)
			abort();
	}
	return 0;
}
