/* SPDX-License-Identifier: MIT */
/*
 * A handle's resolve gate: installs of a page source's data against the
 * loop's reads of messages that may give pages back.
 *
 * Why: the kernel zaps a range given back (MADV_DONTNEED, MADV_REMOVE) as
 * soon as its REMOVE message is read, and from then on lets a COPY or
 * CONTINUE map pages there, while the thread that read the message has
 * yet to tell the restore so (the region's given_back hook). A COPY by
 * another thread landing in between maps the file's data on a page the
 * owner gave back, for good: a page mapped in another process cannot be
 * taken back. The window is short (the reader's io_uring completion is
 * written in its task work, the hook runs when the thread gets to it) but
 * real, and any preemption of the reader widens it.
 *
 * So on a handle whose regions have a given_back hook, a read of its
 * messages and the hooks of what it brought are one step that no install
 * overlaps:
 *  - an install (the look at its pages' states and its ioctl) is a
 *    section, counted;
 *  - a loop thread waits for the handle to be readable without reading
 *    (a poll), then raises the reading count, which holds new sections
 *    back, waits for the open ones to end, reads (non-blocking), runs the
 *    hooks of what it read, and lowers the count.
 * An install overlaps none of those steps, so it either ended before the
 * read, and the zap, which comes after the read, removes what it mapped;
 * or began after the hooks, and sees the pages given back.
 *
 * Both sides are lock-free, allocate nothing and are async-signal-safe:
 * the reader runs where a fork() may hold the allocator's locks. A section
 * holds one ioctl, which waits for no read; a reading step holds one
 * non-blocking read(2) and the hooks (atomic stores). Each side waits
 * only for the other's short step: a spin, then yields, then short naps.
 * Neither nests: a thread in a section never reads, a reading thread
 * never installs (the hooks only mark pages).
 */
#include <sched.h>
#include <time.h>

#include "internal.h"

#define INSTALL_ONE 1ull		/* the low half counts open sections */
#define READER_ONE (1ull << 32)	/* the high half, reading steps */
#define INSTALLS(w) ((w) & (READER_ONE - 1))

static void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* One round of waiting for the other side: spin, then yield, then nap (up to 200 µs). */
static void backoff(unsigned *round)
{
	if (*round < 64) {
		relax();
	} else if (*round < 96) {
		sched_yield();
	} else {
		unsigned shift = *round - 96 < 4 ? *round - 96 : 4;
		struct timespec nap = { .tv_nsec = 12500l << shift };

		nanosleep(&nap, NULL);
	}
	(*round)++;
}

void uffd__rgate_use(struct uffd *u, bool on)
{
	if (on)
		atomic_fetch_add(&u->rgate_users, 1);
	else
		atomic_fetch_sub(&u->rgate_users, 1);
}

bool uffd__rgate_used(const struct uffd *u)
{
	return atomic_load_explicit(&u->rgate_users, memory_order_acquire) != 0;
}

/*
 * Sequentially consistent, like every operation on the word: the count
 * goes up only while no reading step is under way, in the word's one
 * order of changes, so that a reader that raised its count first sees it.
 */
void uffd__rgate_install_begin(struct uffd *u)
{
	uint64_t w = atomic_load(&u->rgate);
	unsigned round = 0;

	for (;;) {
		if (w >= READER_ONE) {
			backoff(&round);
			w = atomic_load(&u->rgate);
		} else if (atomic_compare_exchange_weak(&u->rgate, &w, w + INSTALL_ONE)) {
			return;
		}
	}
}

void uffd__rgate_install_end(struct uffd *u)
{
	atomic_fetch_sub(&u->rgate, INSTALL_ONE);
}

void uffd__rgate_read_begin(struct uffd *u)
{
	unsigned round = 0;

	atomic_fetch_add(&u->rgate, READER_ONE);
	while (INSTALLS(atomic_load(&u->rgate)))
		backoff(&round);
}

void uffd__rgate_read_end(struct uffd *u)
{
	atomic_fetch_sub(&u->rgate, READER_ONE);
}
