/* SPDX-License-Identifier: MIT */
/*
 * Dirty tracking on asynchronous write-protect (UFFD_FEATURE_WP_ASYNC):
 * uffd_dirty_start protects a range; a write then clears a page's uffd-wp
 * bit without any message, and uffd_dirty_scan asks PAGEMAP_SCAN which
 * pages lost it, re-protecting them in the same walk on request.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/*
 * Regions asked of one PAGEMAP_SCAN. Past 512 (the kernel's bounce buffer)
 * 6.18 writes a wrong walk_end, so a resumed walk would lose its place.
 */
#define SCAN_BATCH 512

/* ---- checks ---- */

static int check_handle(const struct uffd *u, const char *call)
{
	if (!u)
		return uffd__err(-EINVAL, "%s: handle is NULL", call);
	if (!(u->features & UFFD_FEATURE_WP_ASYNC))
		return uffd__err(-EOPNOTSUPP, "%s: the handle was opened without UFFD_FEATURE_WP_ASYNC; "
				 "open it with that feature (want_features) and register the range with "
				 "UFFDIO_REGISTER_MODE_WP", call);
	return 0;
}

/*
 * Non-empty, not wrapping, and aligned to the page size of the memory at
 * both ends: the kernel silently reports nothing for part of a huge page.
 * A huge-page mapping strictly inside the range is whole, hence aligned.
 */
static int check_range(struct uffd *u, const char *call, uintptr_t addr,
		       size_t len)
{
	size_t ps, last;
	int err;

	if ((err = uffd__check_range(call, addr, len, u->page_size)))
		return err;
	ps = uffd__page_size_at(u, addr);
	last = uffd__page_size_at(u, addr + len - 1);
	return uffd__check_range(call, addr, len, ps > last ? ps : last);
}

static int check_call(struct uffd *u, const char *call, void *addr, size_t len)
{
	int err = check_handle(u, call);

	return err ? err : check_range(u, call, (uintptr_t)addr, len);
}

/* Registration mistakes read the same from both calls: -ENOENT. */
static int not_registered(const char *call, uintptr_t addr, size_t len, int err)
{
	return uffd__err(-ENOENT, "%s 0x%lx+%zu: the range is not registered with UFFDIO_REGISTER_MODE_WP on a handle "
			 "with UFFD_FEATURE_WP_ASYNC; register it with uffd_register(u, addr, len, "
			 "UFFDIO_REGISTER_MODE_WP, NULL) first (%s)",
			 call, (unsigned long)addr, len, uffd__errname(err));
}

/* ---- start ---- */

/*
 * UFFDIO_WRITEPROTECT rather than a write-protecting PAGEMAP_SCAN, which is
 * about twice as fast but leaves empty hugetlb entries unmarked: a later
 * read fault there would then count as a write. It also checks that the
 * range is registered with this very handle.
 */
UFFD_EXPORT int uffd_dirty_start(struct uffd *u, void *addr, size_t len)
{
	static const char call[] = "uffd_dirty_start";
	uintptr_t a = (uintptr_t)addr;
	int err;

	if ((err = check_call(u, call, addr, len)))
		return err;
	err = uffd__wp_ioctl(u->fd, a, len, true, false);
	if (err == -ENOENT)
		return not_registered(call, a, len, err);
	if (err == -EAGAIN)
		return uffd__err(err, "%s 0x%lx+%zu: a non-cooperative event (fork, mremap, madvise, munmap) must be "
				 "read first; read the events with uffd_read_events and retry (EAGAIN)",
				 call, (unsigned long)a, len);
	if (err == -EINVAL)
		return uffd__err(err, "%s 0x%lx+%zu: the kernel refused the range: part of it is not registered with "
				 "UFFDIO_REGISTER_MODE_WP, or not aligned to its huge page size (EINVAL)",
				 call, (unsigned long)a, len);
	if (err)
		return uffd__err(err, "%s 0x%lx+%zu: UFFDIO_WRITEPROTECT failed: %s (%s)", call,
				 (unsigned long)a, len, strerror(-err), uffd__errname(err));
	return 0;
}
UFFD_EXPORT_OWN(dirty_start);

/* ---- scan ---- */

/* The handle's /proc/self/pagemap, opened once; racing first calls keep one. */
static int pagemap_fd(struct uffd *u)
{
	int fd = atomic_load(&u->pagemap_fd), none = -1, err;

	if (fd >= 0)
		return fd;
	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		return uffd__err(err, "uffd_dirty_scan: cannot open /proc/self/pagemap: %s (%s); "
				 "is /proc mounted?", strerror(-err), uffd__errname(err));
	}
	if (!atomic_compare_exchange_strong(&u->pagemap_fd, &none, fd)) {
		close(fd);
		return none;	/* another thread's, now installed */
	}
	return fd;
}

/* One PAGEMAP_SCAN for written pages; regions stored or -errno. */
static long pm_scan(int fd, uint64_t flags, uintptr_t start, uintptr_t end,
		    struct page_region *vec, size_t vec_len, uintptr_t *walk_end)
{
	struct pm_scan_arg a = {
		.size = sizeof(a), .flags = flags | PM_SCAN_CHECK_WPASYNC,
		.start = start, .end = end, .vec = (uintptr_t)vec, .vec_len = vec_len,
		.category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
	};
	long n;

	memset(vec, 0, vec_len * sizeof(*vec));	/* valgrind does not know what the kernel writes */
	n = ioctl(fd, PAGEMAP_SCAN, &a);
	if (n < 0)
		return -errno;
	/* walk_end == end: all walked; else the first region not stored. */
	*walk_end = a.walk_end >= start && a.walk_end < end ? a.walk_end : end;
	return n;
}

/*
 * -EPERM unless every mapping in [start, end) does async write-protect.
 * The masks match only mappings without PAGE_IS_WPALLOWED, which
 * CHECK_WPASYNC refuses first, so no page table is walked. Checked before
 * a re-arming walk, which could otherwise protect pages it then fails to
 * report when it meets such a mapping.
 */
static int check_wp_async(int fd, uintptr_t start, uintptr_t end)
{
	struct pm_scan_arg a = {
		.size = sizeof(a), .flags = PM_SCAN_CHECK_WPASYNC, .start = start, .end = end,
		.category_inverted = PAGE_IS_WPALLOWED, .category_mask = PAGE_IS_WPALLOWED,
		.return_mask = PAGE_IS_WPALLOWED,
	};

	return ioctl(fd, PAGEMAP_SCAN, &a) < 0 ? -errno : 0;
}

static int scan_error(uintptr_t addr, size_t len, int err)
{
	if (err == -EPERM)
		return not_registered("uffd_dirty_scan", addr, len, err);
	if (err == -EFAULT)
		return uffd__err(err, "uffd_dirty_scan 0x%lx+%zu: the range lies outside the user address space (EFAULT)",
				 (unsigned long)addr, len);
	return uffd__err(err, "uffd_dirty_scan 0x%lx+%zu: PAGEMAP_SCAN failed: %s (%s)",
			 (unsigned long)addr, len, strerror(-err), uffd__errname(err));
}

/* Appends a region, merged with the last span when they touch. */
static size_t span_add(struct uffd_span *s, size_t n, const struct page_region *r)
{
	if (n && (uintptr_t)s[n - 1].addr + s[n - 1].len == r->start) {
		s[n - 1].len += r->end - r->start;
		return n;
	}
	s[n].addr = (void *)(uintptr_t)r->start;
	s[n].len = r->end - r->start;
	return n + 1;
}

/* max == 0: where the first written page is, without protecting anything. */
static int scan_probe(int fd, uintptr_t start, uintptr_t end, uintptr_t *next)
{
	struct page_region r;
	uintptr_t walk_end;
	long n = pm_scan(fd, 0, start, end, &r, 1, &walk_end);

	*next = n > 0 ? r.start : end;
	if (n < 0)
		return scan_error(start, end - start, (int)n);
	return 0;
}

/*
 * Never asks for more regions than spans has room left: each region takes
 * at most one span, so whatever the kernel reports (and, with REARM,
 * protects again) is stored; the walk stops at the first region it could
 * not store, which is where the caller resumes.
 */
static int scan_walk(int fd, uint64_t pm_flags, uintptr_t start, uintptr_t end,
		     struct uffd_span *spans, size_t max, uintptr_t *next)
{
	struct page_region vec[SCAN_BATCH];
	uintptr_t cur = start, walk_end = start;
	size_t n = 0;
	long got;

	while (cur < end && n < max) {
		size_t room = max - n < SCAN_BATCH ? max - n : SCAN_BATCH;

		got = pm_scan(fd, pm_flags, cur, end, vec, room, &walk_end);
		if (got < 0 && n)	/* keep what was reported (and re-armed) */
			break;
		if (got < 0)
			return scan_error(start, end - start, (int)got);
		for (long i = 0; i < got; i++)
			n = span_add(spans, n, &vec[i]);
		if (walk_end <= cur && !n)	/* no progress: a huge page cut by the range */
			return uffd__err(-EINVAL, "uffd_dirty_scan: the walk stopped at 0x%lx inside a huge page; "
					 "align the range to the huge page size", (unsigned long)cur);
		if (walk_end <= cur)
			break;
		cur = walk_end;
	}
	*next = cur;
	return (int)n;
}

UFFD_EXPORT int uffd_dirty_scan(struct uffd *u, void *addr, size_t len,
				struct uffd_span *spans, size_t max,
				unsigned flags, void **next)
{
	static const char call[] = "uffd_dirty_scan";
	uintptr_t start = (uintptr_t)addr, end = start + len, stop = start;
	int fd, n;

	if ((n = check_handle(u, call)))
		return n;
	if (flags & ~UFFD_SCAN_REARM)
		return uffd__err(-EINVAL, "%s: flags 0x%x include bits this call does not take (0x%x)",
				 call, flags, flags & ~UFFD_SCAN_REARM);
	if (!spans && max)
		return uffd__err(-EINVAL, "%s: spans is NULL but max is %zu", call, max);
	if ((n = check_range(u, call, start, len)))
		return n;
	if (max > INT_MAX)	/* the count must fit the return value */
		max = INT_MAX;
	if ((fd = pagemap_fd(u)) < 0)
		return fd;
	if ((n = check_wp_async(fd, start, end)))
		return scan_error(start, len, n);
	if (!max)
		n = scan_probe(fd, start, end, &stop);
	else
		n = scan_walk(fd, (flags & UFFD_SCAN_REARM) ? PM_SCAN_WP_MATCHING : 0,
			      start, end, spans, max, &stop);
	if (next && n >= 0)
		*next = (void *)stop;
	return n;
}
UFFD_EXPORT_OWN(dirty_scan);
