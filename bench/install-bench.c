/* SPDX-License-Identifier: MIT */
/*
 * uffd-install-bench: three ways to install a snapshot file's pages into
 * anonymous memory registered MISSING, run by run (256 KiB), timed:
 *   bounce  pread into a buffer, UFFDIO_COPY from it (two copies a page:
 *           the restore engine before issue 24 item 4);
 *   map     UFFDIO_COPY from a read-only MAP_SHARED mapping of the file
 *           (MADV_POPULATE_READ on the run first): one copy, from the page
 *           cache (the engine now);
 *   nopop   the same without the populate (the COPY faults the source in);
 *   move    pread into a fresh anonymous buffer, UFFDIO_MOVE of its pages
 *           (the read's copy, plus the buffer's pages zeroed when they are
 *           faulted in, then moved: only for memory in this process).
 * Warm (the file cached) and cold (dropped with POSIX_FADV_DONTNEED before
 * each run of a method). Every page's first and last words are checked.
 * usage: uffd-install-bench [MIB [REPS]]
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
struct move_arg {
	uint64_t dst, src, len, mode;
	int64_t move;
};
#define MOVE_IOCTL _IOWR(UFFDIO, 0x05, struct move_arg)

#define RUN (256u << 10)
#define PS 4096u

enum method { BOUNCE, MAP, NOPOP, MOVE, NMETHODS };
static const char *const names[] = { "bounce", "map", "nopop", "move" };

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint64_t word(size_t page, size_t w)
{
	return ((uint64_t)page << 32 | w) ^ 0x3c3c3c3c00000000ull;
}

static void die(const char *what)
{
	fprintf(stderr, "uffd-install-bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int make_file(size_t len)
{
	char path[] = "/var/tmp/uffd-install-XXXXXX";
	int fd = mkostemp(path, O_CLOEXEC);
	uint64_t *buf = malloc(RUN);

	if (fd < 0 || !buf)
		die("snapshot file");
	unlink(path);
	for (size_t off = 0; off < len; off += RUN) {
		for (size_t i = 0; i < RUN / 8; i++)
			buf[i] = word((off + i * 8) / PS, i % (PS / 8));
		if (pwrite(fd, buf, RUN, (off_t)off) != RUN)
			die("pwrite");
	}
	free(buf);
	if (fdatasync(fd))
		die("fdatasync");
	return fd;
}

static int open_uffd(void)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_MOVE };
	int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (u < 0)
		die("userfaultfd");
	if (ioctl(u, UFFDIO_API, &api)) {
		close(u);
		u = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		api = (struct uffdio_api){ .api = UFFD_API };
		if (u < 0 || ioctl(u, UFFDIO_API, &api))
			die("UFFDIO_API");
	}
	return u;
}

static void install(enum method m, int u, int fd, char *dst, const char *map, char *buf, size_t off)
{
	struct uffdio_copy c = { .dst = (uintptr_t)dst + off, .len = RUN };
	struct move_arg mv = { .dst = (uintptr_t)dst + off, .src = (uintptr_t)buf, .len = RUN };

	switch (m) {
	case BOUNCE:
		if (pread(fd, buf, RUN, (off_t)off) != RUN)
			die("pread");
		c.src = (uintptr_t)buf;
		break;
	case MAP:
		if (madvise((char *)map + off, RUN, MADV_POPULATE_READ))
			die("MADV_POPULATE_READ");
		/* fall through */
	case NOPOP:
		c.src = (uintptr_t)map + off;
		break;
	case MOVE:
		if (pread(fd, buf, RUN, (off_t)off) != RUN)
			die("pread");
		if (ioctl(u, MOVE_IOCTL, &mv) || mv.move != RUN)
			die("UFFDIO_MOVE");
		return;
	default:
		return;
	}
	if (ioctl(u, UFFDIO_COPY, &c) || c.copy != RUN)
		die("UFFDIO_COPY");
}

/* One pass of method m over len bytes; ms. */
static double pass(enum method m, int fd, size_t len, const char *map, bool cold)
{
	int u = open_uffd();
	char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *buf = mmap(NULL, RUN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register reg = { .range = { (uintptr_t)dst, len }, .mode = UFFDIO_REGISTER_MODE_MISSING };
	double t0, ms;

	if (dst == MAP_FAILED || buf == MAP_FAILED || ioctl(u, UFFDIO_REGISTER, &reg))
		die("memory");
	/* The mapping's page tables dropped (the file stays cached): as a restore finds it. */
	madvise((char *)map, len, MADV_DONTNEED);
	if (cold)
		posix_fadvise(fd, 0, (off_t)len, POSIX_FADV_DONTNEED);
	t0 = now_ms();
	for (size_t off = 0; off < len; off += RUN)
		install(m, u, fd, dst, map, buf, off);
	ms = now_ms() - t0;
	for (size_t p = 0; p < len / PS; p++) {
		const uint64_t *w = (const uint64_t *)(dst + p * PS);

		if (w[0] != word(p, 0) || w[PS / 8 - 1] != word(p, PS / 8 - 1)) {
			fprintf(stderr, "uffd-install-bench: %s: page %zu is wrong\n", names[m], p);
			exit(1);
		}
	}
	munmap(dst, len);
	munmap(buf, RUN);
	close(u);
	return ms;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 0) : 256, len = mib << 20;
	int reps = argc > 2 ? atoi(argv[2]) : 5, fd;
	double t[NMETHODS][64];
	const char *map;

	if (!mib || reps < 1 || reps > 64) {
		fprintf(stderr, "usage: uffd-install-bench [MIB [REPS<=64]]\n");
		return 2;
	}
	fd = make_file(len);
	map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		die("mmap of the file");
	printf("%zu MiB in runs of %u KiB, median of %d interleaved passes\n", mib, RUN >> 10, reps);
	printf("%-6s %-7s %10s %10s %8s\n", "cache", "method", "ms", "ns/page", "vs_bounce");
	for (int cold = 0; cold < 2; cold++) {
		double med[NMETHODS];

		for (int r = 0; r < reps; r++)
			for (int i = 0; i < NMETHODS; i++) {
				enum method m = (enum method)((i + r) % NMETHODS);	/* order rotated */

				t[m][r] = pass(m, fd, len, map, cold);
			}
		for (int m = 0; m < NMETHODS; m++) {
			qsort(t[m], (size_t)reps, sizeof(double), cmp);
			med[m] = t[m][reps / 2];
		}
		for (int m = 0; m < NMETHODS; m++)
			printf("%-6s %-7s %10.1f %10.1f %8.3f\n", cold ? "cold" : "warm", names[m], med[m],
			       med[m] * 1e6 / (double)(len / PS), med[m] / med[BOUNCE]);
	}
	return 0;
}
