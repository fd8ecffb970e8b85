/* SPDX-License-Identifier: MIT */
/*
 * What kind of memory backs a range, from /proc/self/smaps. Only slow
 * paths ask: registration (the page sizes of the range, and the kinds when
 * the feature set is incomplete), and handles whose ranges were registered
 * elsewhere. Page sizes come from PROCMAP_QUERY where the kernel has it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#ifndef PROCMAP_QUERY_COVERING_OR_NEXT_VMA
#define PROCMAP_QUERY_COVERING_OR_NEXT_VMA 0x10
#endif

struct vma {
	uintptr_t start, end;
	unsigned long inode;
	size_t kernel_page_size;
};

/* Header lines look like "start-end perms offset dev inode [path]". */
static bool parse_header(const char *line, struct vma *v)
{
	unsigned long start, end;

	if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &start, &end, &v->inode) != 3)
		return false;
	v->start = start;
	v->end = end;
	v->kernel_page_size = 0;
	return true;
}

/*
 * Calls fn for every mapping overlapping [addr, addr+len), once its
 * KernelPageSize is known. fn returns false to stop. 0, or -errno when
 * smaps cannot be opened.
 */
static int for_each_vma(uintptr_t addr, size_t len,
			bool (*fn)(const struct vma *v, void *arg), void *arg)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	char *line = NULL;
	size_t cap = 0;
	struct vma v = { 0 };
	bool have = false;
	unsigned long kb;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		if (!have) {
			if (!parse_header(line, &v))
				continue;
			if (v.start >= addr + len)
				break;
			have = v.end > addr;
			continue;
		}
		if (sscanf(line, "KernelPageSize: %lu kB", &kb) == 1) {
			v.kernel_page_size = kb * 1024;
			have = false;
			if (!fn(&v, arg))
				break;
		}
	}
	free(line);
	fclose(f);
	return 0;
}

static bool add_kind(const struct vma *v, void *arg)
{
	unsigned *kinds = arg;

	if (v->kernel_page_size > uffd__base_page_size())
		*kinds |= VMA_HUGETLB;
	else if (v->inode == 0)
		*kinds |= VMA_ANON;
	else
		*kinds |= VMA_SHMEM;
	return true;
}

unsigned uffd__vma_kinds(uintptr_t addr, size_t len)
{
	unsigned kinds = 0;

	for_each_vma(addr, len, add_kind, &kinds);
	return kinds;
}

static bool take_page_size(const struct vma *v, void *arg)
{
	*(size_t *)arg = v->kernel_page_size;
	return false;
}

/*
 * PROCMAP_QUERY (6.11) answers for one VMA in microseconds, where smaps
 * walks the page tables of every mapping before it. 0 or -errno.
 */
static int query_page_size(uintptr_t addr, size_t *ps)
{
	struct procmap_query q = { .size = sizeof(q), .query_addr = addr };
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (ioctl(fd, PROCMAP_QUERY, &q))
		err = -errno;
	close(fd);
	*ps = err ? 0 : (size_t)q.vma_page_size;
	return err;
}

size_t uffd__vma_page_size(uintptr_t addr)
{
	size_t ps = 0;
	int err = query_page_size(addr, &ps);

	if (!err || err == -ENOENT)	/* ENOENT: no mapping there */
		return ps;
	for_each_vma(addr, 1, take_page_size, &ps);	/* kernel before 6.11 */
	return ps;
}

/* ---- the huge-page runs of a range, for the handle's table ---- */

struct runs {
	uintptr_t start, end;	/* the range asked about */
	struct rangemap_entry *e;
	size_t n, cap;
	int err;
};

/* Records [start, end) clipped to the range if its pages are huge. */
static void run_add(struct runs *r, uintptr_t start, uintptr_t end, size_t ps)
{
	struct rangemap_entry *ne;

	start = start > r->start ? start : r->start;
	end = end < r->end ? end : r->end;
	if (r->err || ps <= uffd__base_page_size() || start >= end)
		return;
	if (r->n == r->cap) {
		ne = realloc(r->e, (r->cap ? 2 * r->cap : 4) * sizeof(*ne));
		if (!ne) {
			r->err = -ENOMEM;
			return;
		}
		r->e = ne;
		r->cap = r->cap ? 2 * r->cap : 4;
	}
	r->e[r->n++] = (struct rangemap_entry){ .start = start, .end = end, .page_size = ps };
}

static bool run_of_vma(const struct vma *v, void *arg)
{
	run_add(arg, v->start, v->end, v->kernel_page_size);
	return true;
}

/* PROCMAP_QUERY for each mapping in the range: 0, or -errno of the first query. */
static int query_runs(struct runs *r)
{
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC), err = 0;

	if (fd < 0)
		return -errno;
	for (uintptr_t a = r->start; a < r->end && !r->err;) {
		struct procmap_query q = { .size = sizeof(q), .query_addr = a,
					   .query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA };

		if (ioctl(fd, PROCMAP_QUERY, &q)) {
			err = errno == ENOENT ? 0 : -errno;	/* ENOENT: no mapping from a on */
			break;
		}
		run_add(r, q.vma_start, q.vma_end, q.vma_page_size);
		a = q.vma_end;
	}
	close(fd);
	return err;
}

int uffd__vma_huge_runs(uintptr_t addr, size_t len, struct rangemap_entry **out, size_t *n)
{
	struct runs r = { .start = addr, .end = addr + len };
	int err = query_runs(&r);

	if (err && !r.n && !r.err)	/* kernel before 6.11 */
		err = for_each_vma(addr, len, run_of_vma, &r);
	err = err ? err : r.err;
	if (err) {
		free(r.e);
		r.e = NULL;
		r.n = 0;
	}
	*out = r.e;
	*n = r.n;
	return err;
}
