/* SPDX-License-Identifier: MIT */
/*
 * What kind of memory backs a range, from /proc/self/smaps. Only slow
 * paths ask: registration with an incomplete feature set, and stepping over
 * an existing page of unknown size. The page size of one mapping comes
 * from PROCMAP_QUERY where the kernel has it, cheap enough for dirty scans.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

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
 * KernelPageSize is known. fn returns false to stop.
 */
static void for_each_vma(uintptr_t addr, size_t len,
			 bool (*fn)(const struct vma *v, void *arg), void *arg)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	char *line = NULL;
	size_t cap = 0;
	struct vma v = { 0 };
	bool have = false;
	unsigned long kb;

	if (!f)
		return;
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
