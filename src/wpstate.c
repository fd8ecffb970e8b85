/* SPDX-License-Identifier: MIT */
/*
 * Which pages of a region are write-protected, as the library recorded
 * them: a bit per page, set by every protecting call that goes through
 * the library (uffd_writeprotect, uffd_region_writeprotect, a resolution
 * with UFFD_MAP_WP or UFFD_RESOLVE_WP), cleared by every unprotecting one
 * (uffd_writeprotect(false), a resolved WP fault, a mapping without
 * UFFD_MAP_WP asked by the caller, unregistering). The default
 * resolutions, on a loop thread or in the SIGBUS handler, read it to map
 * a page write-protected exactly when it is recorded so, with no system
 * call; the kernel's own state (its uffd-wp markers) is never read.
 *
 * What the record knows and what it assumes:
 * - A region's base view is a fresh mapping, so it starts with no
 *   protection; markers on shmem and hugetlbfs survive zapping, hole
 *   punching and MADV_REMOVE (Linux 6.18), so those leave the record
 *   right. UFFD_FEATURE_WP_UNPOPULATED changes anonymous memory only,
 *   never a region (shmem and hugetlbfs always get markers).
 * - Every protection change on a region goes through the library: an
 *   UFFDIO_WRITEPROTECT issued on uffd_fd() directly, or by another
 *   process holding the same userfaultfd, is not seen.
 * - Ordering: protecting sets the bits before the ioctl, unprotecting
 *   clears them after it. A default resolution reads the bits, maps, and
 *   looks again after mapping a page writable, protecting what was
 *   recorded meanwhile, all inside a section that a protecting call waits
 *   for (below): once uffd_writeprotect() returns, no resolution can
 *   still map its pages writable. So a page may be protected while not
 *   recorded (one extra WP fault, which the default resolution lifts),
 *   never left writable by a resolution while recorded; two threads
 *   changing one page's protection at the same time leave it in the state
 *   of whichever reached the kernel last. The one hole: the protection
 *   again fails (EAGAIN, an event pending); the loop retries the faulting
 *   page after the events, SIGBUS mode for 2 ms.
 * - A resolution with UFFD_MAP_WP records its whole range before the
 *   ioctl: a page it skips (UFFD_SKIP_EXISTING) or fails on stays
 *   recorded protected whatever it is: at worst one extra WP fault.
 * Regions without a record: foreign regions (the owner may protect pages
 *   through its own copy of the handle: every page is mapped protected,
 *   the safe side), and regions of a handle with UFFD_FEATURE_WP_ASYNC,
 *   where a write lifts the protection without telling anyone: a page
 *   written then zapped has lost it in the kernel while the record would
 *   still say protected, so such faults map pages writable (the next
 *   uffd_dirty_scan reports them written: a page too many, never a write
 *   missed).
 *
 * The bitmap is atomic words, allocated when the region is created and
 * freed with it; every call here is lock-free and async-signal-safe.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

static atomic_ulong *bitmap(const struct uffd_region *r)
{
	return __atomic_load_n(&r->wp, __ATOMIC_ACQUIRE);
}

bool uffd__wp_tracked(const struct uffd *u)
{
	return (u->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) && !(u->features & UFFD_FEATURE_WP_ASYNC);
}

static bool keeps_record(const struct uffd_region *r)
{
	return !r->foreign && (r->modes & UFFDIO_REGISTER_MODE_WP) && uffd__wp_tracked(r->uffd);
}

int uffd__region_wp_alloc(struct uffd_region *r)
{
	size_t pages = r->length / r->page_size;
	atomic_ulong *w;

	if (!keeps_record(r))
		return 0;
	w = uffd__pagebits_new(pages);
	if (!w)
		return uffd__err(-ENOMEM, "%s: out of memory for the write-protection record of %zu pages",
				 "uffd_region_create", pages);
	__atomic_store_n(&r->wp, w, __ATOMIC_RELEASE);
	return 0;
}

void uffd__region_wp_free(struct uffd_region *r)
{
	free(__atomic_exchange_n(&r->wp, NULL, __ATOMIC_ACQ_REL));
}

/*
 * Sequentially consistent: a protecting call's bits are set before its
 * ioctl, and a resolution's second look after its own ioctl must see them
 * (see the ordering above).
 */
void uffd__region_wp_set(const struct uffd_region *r, uint64_t off, uint64_t len, bool protect)
{
	atomic_ulong *w = bitmap(r);
	size_t first, last;

	if (w && uffd__pagebits_span(r, off, len, &first, &last))
		uffd__pagebits_apply(w, first, last, protect, memory_order_seq_cst);
}

uint64_t uffd__region_wp_run(const struct uffd_region *r, uint64_t off, uint64_t len, bool *wp)
{
	atomic_ulong *w = bitmap(r);
	size_t first, last;

	*wp = false;
	if (!uffd__pagebits_span(r, off, len, &first, &last))
		return 0;
	if (!w) {	/* no record: one run, protected when that is the safe side */
		*wp = uffd__region_wp_always(r);
		return (uint64_t)(last + 1 - first) * r->page_size;
	}
	return (uint64_t)uffd__pagebits_run(w, first, last, memory_order_seq_cst, wp) * r->page_size;
}

bool uffd__region_wp_always(const struct uffd_region *r)
{
	return r->foreign && (r->modes & UFFDIO_REGISTER_MODE_WP) && uffd__wp_tracked(r->uffd);
}

/* ---- by address, for the resolving calls (ops.c) ---- */

/*
 * Calls fn on the part of each of u's regions that [addr, addr+len)
 * overlaps, inside a read section that keeps the region alive.
 */
static void each_region(struct uffd *u, uintptr_t addr, size_t len,
			void (*fn)(struct uffd_region *r, uint64_t off, uint64_t n, void *arg),
			void *arg)
{
	uintptr_t end = addr + len, a = addr;
	struct rangemap_entry e;
	unsigned t = rangemap_read_begin(&u->regions);

	while (a < end && rangemap_next(&u->regions, a, &e) && e.start < end) {
		uintptr_t from = a > e.start ? a : e.start, to = end < e.end ? end : e.end;

		fn(e.ptr, from - e.start + e.off, to - from, arg);
		a = e.end;
	}
	rangemap_read_end(&u->regions, t);
}

static void set_part(struct uffd_region *r, uint64_t off, uint64_t n, void *arg)
{
	uffd__region_wp_set(r, off, n, *(bool *)arg);
}

void uffd__wp_record(struct uffd *u, uintptr_t addr, size_t len, bool protect)
{
	if (uffd__wp_tracked(u) && len && addr + len > addr)
		each_region(u, addr, len, set_part, &protect);
}

/* The first recorded run in r's part [off, off+n), as an address range. */
static bool first_run(struct uffd_region *r, uintptr_t start, uint64_t off, uint64_t n,
		      uintptr_t *addr, size_t *len)
{
	uint64_t end = off + n, run;
	bool wp;

	if (!bitmap(r))
		return false;
	for (; off < end && (run = uffd__region_wp_run(r, off, end - off, &wp)); off += run)
		if (wp) {
			*addr = start + off;
			*len = run;
			return true;
		}
	return false;
}

bool uffd__wp_next(struct uffd *u, uintptr_t *addr, uintptr_t end, size_t *len)
{
	uintptr_t a = *addr;
	struct rangemap_entry e;
	unsigned t = rangemap_read_begin(&u->regions);
	bool found = false;

	while (!found && a < end && rangemap_next(&u->regions, a, &e) && e.start < end) {
		uintptr_t from = a > e.start ? a : e.start, to = end < e.end ? end : e.end;

		/* e.off: where this piece starts in its region (a part moved by mremap) */
		found = first_run(e.ptr, e.start - e.off, from - e.start + e.off, to - from, addr, len);
		a = e.end;
	}
	rangemap_read_end(&u->regions, t);
	return found;
}

uint64_t uffd__wp_run_at(struct uffd *u, uintptr_t addr, uint64_t len, bool *wp)
{
	struct rangemap_entry e;
	unsigned t = rangemap_read_begin(&u->regions);
	uint64_t n = len;

	*wp = false;
	if (rangemap_next(&u->regions, addr, &e) && e.start < addr + len) {
		if (e.start > addr)
			n = e.start - addr;
		else
			n = uffd__region_wp_run(e.ptr, addr - e.start + e.off,
						len < e.end - addr ? len : e.end - addr, wp);
	}
	rangemap_read_end(&u->regions, t);
	return n < len ? n : len;
}

/* ---- sections: no page left writable once a protecting call returned ---- */

/*
 * A default resolution reads the record, maps, and looks again; a
 * protecting call sets the bits, protects, then waits for the sections
 * open when it set them. A section that read a bit before it was set
 * either sees it when it looks again (and protects the page before it
 * ends) or mapped the page before the bit was set, hence before the
 * protecting ioctl, which then protected the mapped page.
 *
 * Correctness needs only that each counter be seen at zero once after
 * the bits were set (a section is counted from before its first read to
 * after its last ioctl); flipping the epoch steers new sections to the
 * other counter so that the wait ends under a stream of faults. A thread
 * whose own section a signal handler interrupted does not wait for it.
 */
#define SYNC_BOUND_NS 1000000000ll

static _Thread_local struct {
	const struct uffd *u;
	unsigned parity, depth;
} tl_section __attribute__((tls_model("initial-exec")));

unsigned uffd__wp_enter(struct uffd *u)
{
	unsigned parity = atomic_load(&u->wp_epoch) & 1;

	atomic_fetch_add(&u->wp_sections[parity], 1);
	if (!tl_section.depth++) {
		tl_section.u = u;
		tl_section.parity = parity;
	}
	return parity;
}

void uffd__wp_exit(struct uffd *u, unsigned ticket)
{
	atomic_fetch_sub(&u->wp_sections[ticket], 1);
	if (!--tl_section.depth)
		tl_section.u = NULL;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

void uffd__wp_sync(struct uffd *u)
{
	long long deadline = 0;

	if (!uffd__wp_tracked(u))
		return;
	for (unsigned p = 0; p < 2; p++) {
		unsigned e = atomic_load(&u->wp_epoch);
		unsigned own = tl_section.u == u && tl_section.parity == p;

		if ((e & 1) == p)	/* new sections go to the other counter */
			atomic_compare_exchange_strong(&u->wp_epoch, &e, e + 1);
		while (atomic_load(&u->wp_sections[p]) > own) {
			if (!deadline)
				deadline = now_ns() + SYNC_BOUND_NS;
			else if (now_ns() > deadline)
				return;
			sched_yield();
		}
	}
}
