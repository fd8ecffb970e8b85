/* SPDX-License-Identifier: MIT */
/*
 * The guest memory of uffd-restore's runs: anonymous private memory
 * (filled with UFFDIO_COPY) or a memfd mapped twice (filled through the
 * alias view, mapped with UFFDIO_CONTINUE), in 4 KiB or 2 MiB hugetlb
 * pages; and the huge pages the 2 MiB runs need.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "restore.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21u << 26)
#endif

static void *map_views(const char *name, size_t len, int flags, int fd)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "uffd-restore: %s: mmap of the guest memory (%zu bytes): %s\n", name,
			len, strerror(errno));
		return NULL;
	}
	madvise(p, len, MADV_NOHUGEPAGE);	/* 4 KiB: one fault per page; hugetlb ignores it */
	return p;
}

int rs_mem_new(const struct rs_env *e, const char *name, bool views, struct rs_mem *m)
{
	bool huge = e->page == HUGE;

	*m = (struct rs_mem){ .fd = -1, .len = e->len };
	if (!e->memfd) {
		m->base = map_views(name, e->len, MAP_PRIVATE | MAP_ANONYMOUS |
				    (huge ? MAP_HUGETLB | MAP_HUGE_2MB : 0), -1);
		return m->base ? 0 : -1;
	}
	m->fd = memfd_create("uffd-restore-guest", MFD_CLOEXEC | (huge ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
	if (m->fd < 0 || ftruncate(m->fd, (off_t)e->len)) {
		fprintf(stderr, "uffd-restore: %s: memfd of %zu bytes: %s\n", name, e->len,
			strerror(errno));
		rs_mem_free(m);
		return -1;
	}
	if (views && (!(m->base = map_views(name, e->len, MAP_SHARED, m->fd)) ||
		      !(m->alias = map_views(name, e->len, MAP_SHARED, m->fd)))) {
		rs_mem_free(m);
		return -1;
	}
	return 0;
}

void rs_mem_free(struct rs_mem *m)
{
	if (m->base)
		munmap(m->base, m->len);
	if (m->alias)
		munmap(m->alias, m->len);
	if (m->fd >= 0)
		close(m->fd);
	*m = (struct rs_mem){ .fd = -1 };
}

/* ---- huge pages ---- */

#define HP_DIR "/sys/kernel/mm/hugepages/hugepages-2048kB/"

static long hp_old = -1, hp_set;	/* nr_hugepages before and after we raised it */
static char hp_old_text[24];		/* hp_old, ready for the watchdog */
static size_t hp_old_len;
static bool hp_hooked;

static long hp_read(const char *file)
{
	char path[128], buf[32];
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), HP_DIR "%s", file);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return strtol(buf, NULL, 10);
}

/* Async-signal-safe: the watchdog calls it with the text prepared. */
static bool hp_write(const char *text, size_t len)
{
	int fd = open(HP_DIR "nr_hugepages", O_WRONLY | O_CLOEXEC);
	bool ok = fd >= 0 && write(fd, text, len) == (ssize_t)len;

	if (fd >= 0)
		close(fd);
	return ok;
}

static bool hp_write_long(long v)
{
	char text[24];

	return hp_write(text, (size_t)snprintf(text, sizeof(text), "%ld\n", v));
}

static long hp_available(void)
{
	long f = hp_read("free_hugepages"), r = hp_read("resv_hugepages");

	return f < 0 || r < 0 ? -1 : f - r;
}

static void hp_watchdog(void)
{
	if (hp_old >= 0)
		hp_write(hp_old_text, hp_old_len);
}

bool rs_huge_reserve(size_t n)
{
	long avail = hp_available(), nr = hp_read("nr_hugepages");

	if (avail >= (long)n)
		return true;
	if (avail < 0 || nr < 0 || geteuid()) {
		fprintf(stderr, "uffd-restore: %zu huge pages of 2 MiB wanted, %ld available%s: "
			"the 2 MiB runs are skipped\n", n, avail < 0 ? 0 : avail,
			geteuid() ? " and not root (raise vm.nr_hugepages)" : "");
		return false;
	}
	if (!hp_hooked) {
		watchdog_cleanup(hp_watchdog);
		atexit(rs_huge_release);
		hp_hooked = true;
	}
	if (hp_old < 0) {
		hp_old = nr;
		hp_old_len = (size_t)snprintf(hp_old_text, sizeof(hp_old_text), "%ld\n", nr);
	}
	hp_set = nr + (long)n - avail;
	if (!hp_write_long(hp_set) || hp_available() < (long)n) {
		fprintf(stderr, "uffd-restore: vm.nr_hugepages raised to %ld, but only %ld huge pages "
			"are available (memory too fragmented?): the 2 MiB runs are skipped\n", hp_set,
			hp_available());
		rs_huge_release();
		return false;
	}
	return true;
}

/*
 * Puts vm.nr_hugepages back: to the old value if nobody changed it since,
 * else lowered by what we added.
 */
void rs_huge_release(void)
{
	long nr = hp_read("nr_hugepages");

	if (hp_old < 0)
		return;
	if (nr >= 0 && nr != hp_set)
		hp_write_long(nr - (hp_set - hp_old) > 0 ? nr - (hp_set - hp_old) : 0);
	else
		hp_write(hp_old_text, hp_old_len);
	hp_old = -1;
}
