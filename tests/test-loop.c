/* SPDX-License-Identifier: MIT */
/* loop.c: the io_uring event loop, its handlers, events, threads and failures. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

static size_t ps;

/* How long to wait for a loop thread to finish what it has begun, however busy the machine. */
#define PATIENCE_S 20.0

/* The `_poll` cases run the same tests on the poll + read(2) path. */
static void force_poll(void)
{
	setenv("LIBUFFD_LOOP_FORCE_POLL", "1", 1);
}

static void setup(void)
{
	ps = harness_page_size();
}

static struct uffd *open_uffd(uint64_t features)
{
	struct uffd_opts o = { .size = sizeof(o), .features = features,
			       .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd *u = NULL;

	ck_assert_msg(uffd_open(&u, &o) == 0, "uffd_open: %s", uffd_last_error());
	return u;
}

static struct uffd_loop *new_loop(unsigned flags, unsigned spin_us)
{
	struct uffd_loop_opts o = { .size = sizeof(o), .flags = flags, .spin_us = spin_us };
	struct uffd_loop *l = NULL;

	ck_assert_msg(uffd_loop_new(&l, &o) == 0, "uffd_loop_new: %s", uffd_last_error());
	return l;
}

/* MINOR faults need the pages in the page cache: allocate them (zeroed). */
static void cache_pages(struct uffd_region *r)
{
	ck_assert_int_eq(fallocate(uffd_region_fd(r), 0, 0, (off_t)uffd_region_length(r)), 0);
}

static struct uffd_region *new_region(struct uffd *u, size_t len, uint64_t modes)
{
	struct uffd_region_opts o = { .size = sizeof(o), .length = len, .modes = modes, .fd = -1 };
	struct uffd_region *r = NULL;

	ck_assert_msg(uffd_region_create(u, &o, &r) == 0, "uffd_region_create: %s", uffd_last_error());
	if (modes == UFFDIO_REGISTER_MODE_MINOR)
		cache_pages(r);
	return r;
}

static char *anon_registered(struct uffd *u, size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(uffd_register(u, p, len, UFFDIO_REGISTER_MODE_MISSING, NULL), 0);
	return p;
}

static struct uffd_loop_stats stats(struct uffd_loop *l)
{
	struct uffd_loop_stats s;

	uffd_loop_stats(l, &s);
	return s;
}

/* ---- page patterns ---- */

static uint64_t pat(uint64_t word, uint64_t salt)
{
	return (word + 1) * 0x9E3779B97F4A7C15ull ^ salt;
}

static void fill(void *dst, uint64_t off, size_t len, uint64_t salt)
{
	uint64_t *w = dst;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = pat(off / 8 + i, salt);
}

/* Offset of the first wrong word in [0, len), or -1. */
static long long verify(const void *src, uint64_t off, size_t len, uint64_t salt)
{
	const uint64_t *w = src;

	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != pat(off / 8 + i, salt))
			return (long long)(i * 8);
	return -1;
}

/* ---- faulting threads ---- */

struct toucher {
	char *base;
	size_t *pages;	/* page indexes, in the order to touch */
	size_t n;
	bool write;
};

static void *touch_pages(void *arg)
{
	struct toucher *t = arg;

	for (size_t i = 0; i < t->n; i++) {
		volatile char *p = t->base + t->pages[i] * ps;

		if (t->write)
			harness_store8(p, harness_load8(p));
		else
			(void)harness_load8(p);
	}
	return NULL;
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static size_t *shuffled(size_t n, uint64_t seed)
{
	size_t *v = malloc(n * sizeof(*v));

	ck_assert_ptr_nonnull(v);
	for (size_t i = 0; i < n; i++)
		v[i] = i;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = rnd(&seed) % (i + 1), t = v[i];

		v[i] = v[j];
		v[j] = t;
	}
	return v;
}

/*
 * nthreads threads touch the npages pages of base in random order: with
 * split, each page by one thread; else every page by every thread.
 */
static void touch_all(char *base, size_t npages, unsigned nthreads, bool split, bool write)
{
	struct toucher t[16];
	void *th[16];
	size_t *order[16];

	ck_assert_uint_le(nthreads, 16);
	for (unsigned i = 0; i < nthreads; i++) {
		order[i] = shuffled(npages, 0x1234567ull + i * 7919);
		t[i] = (struct toucher){ base, order[i], npages, write };
		if (split) {
			t[i].pages = order[0] + i * (npages / nthreads);
			t[i].n = i == nthreads - 1 ? npages - i * (npages / nthreads) : npages / nthreads;
		}
	}
	for (unsigned i = 0; i < nthreads; i++)
		th[i] = harness_thread_start(touch_pages, &t[i]);
	for (unsigned i = 0; i < nthreads; i++)
		harness_thread_join(th[i]);
	for (unsigned i = 0; i < nthreads; i++)
		free(order[i]);
}

/* No io_uring worker thread: reads wait inside io_uring (Linux 6.10+). */
static int io_workers(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	char path[300], comm[32];
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d))) {
		FILE *f;

		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		if (e->d_name[0] == '.' || !(f = fopen(path, "re")))
			continue;
		if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "iou-wrk", 7))
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

/* ---- minor: 64 MiB shmem, 4 threads, handler fills through the alias ---- */

struct fill_ctx {
	char *alias;
	atomic_uchar *seen;
	atomic_int twice;
	atomic_int calls;
	uint64_t salt;
};

static int fill_minor(void *c, struct uffd_fault *f)
{
	struct fill_ctx *x = c;
	size_t idx = f->offset / ps;

	atomic_fetch_add(&x->calls, 1);
	if (x->seen && atomic_fetch_add(&x->seen[idx], 1))
		atomic_fetch_add(&x->twice, 1);
	fill(x->alias + f->offset, f->offset, f->len, x->salt);
	return UFFD_RESOLVE;
}

static void run_minor(size_t len, unsigned loop_threads, unsigned touchers, bool split,
		      unsigned spin_us)
{
	struct uffd *u = open_uffd(UFFD_FEATURE_MINOR_SHMEM);
	struct uffd_region *r = new_region(u, len, UFFDIO_REGISTER_MODE_MINOR);
	size_t npages = len / ps;
	struct fill_ctx x = { .alias = uffd_region_alias(r), .salt = 0xabcdef };
	struct uffd_handlers h = { .minor = fill_minor };
	struct uffd_loop *l = new_loop(0, spin_us);
	struct uffd_loop_stats s;
	char *base = uffd_region_base(r);

	x.seen = calloc(npages, 1);
	ck_assert_int_eq(uffd_loop_add_region(l, r, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, loop_threads), 0);
	touch_all(base, npages, touchers, split, false);
	s = stats(l);
	if (split) {
		ck_assert_uint_eq(s.faults_minor, npages);
		ck_assert_int_eq(atomic_load(&x.twice), 0);
	}
	ck_assert_uint_ge(s.faults_minor, npages);
	ck_assert_uint_eq(s.errors, 0);
	ck_assert_uint_ge(s.reads, 1);
	for (size_t i = 0; i < npages; i++)
		ck_assert_msg(atomic_load(&x.seen[i]) >= 1, "page %zu never faulted", i);
	ck_assert_int_eq(verify(base, 0, len, x.salt), -1);
	fprintf(stderr, "minor %zu pages: %llu faults, %llu reads (%.1f msgs/read), %llu ioctls\n",
		npages, (unsigned long long)s.faults_minor, (unsigned long long)s.reads,
		(double)s.faults_minor / (double)s.reads, (unsigned long long)s.resolve_ioctls);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
	free(x.seen);
}

START_TEST(test_minor)
{
	run_minor(64ul << 20, 1, 4, true, 0);
}
END_TEST

START_TEST(test_threads)
{
	/* 3 loop threads (spinning before they sleep), 8 faulting threads on every page. */
	run_minor(16ul << 20, 3, 8, false, 20);
}
END_TEST

/* ---- minor-wp: a write-protect snapshot ---- */

struct snap_ctx {
	struct uffd_region *r;
	char *snap;
	atomic_uchar *copied;
	atomic_int twice;
};

static int snap_wp(void *c, struct uffd_fault *f)
{
	struct snap_ctx *x = c;
	char *alias = uffd_region_alias(x->r);

	if (atomic_fetch_add(&x->copied[f->offset / ps], 1))
		atomic_fetch_add(&x->twice, 1);
	memcpy(x->snap + f->offset, alias + f->offset, ps);
	return UFFD_RESOLVE;
}

START_TEST(test_minor_wp)
{
	size_t len = 4ul << 20, npages = len / ps;
	struct uffd *u = open_uffd(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
				   UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	struct uffd_region *r = new_region(u, len, UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP);
	struct snap_ctx x = { .r = r, .snap = malloc(len), .copied = calloc(npages, 1) };
	struct uffd_handlers h = { .wp = snap_wp };
	struct uffd_loop *l = new_loop(0, 0);
	char *base = uffd_region_base(r), *orig = malloc(len);
	struct uffd_loop_stats s;
	size_t written = 0;

	/* Contents in the page cache; even pages mapped, odd ones not (zapped). */
	fill(orig, 0, len, 77);
	ck_assert_int_eq(uffd_region_populate(r, 0, orig, len, 0), 0);
	for (size_t i = 0; i < npages; i += 2)
		ck_assert_int_eq(uffd_region_continue(r, i * ps, ps, 0, NULL), 0);
	ck_assert_int_eq(uffd_region_writeprotect(r, 0, len, true, 0), 0);
	ck_assert_int_eq(uffd_loop_add_region(l, r, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	/* Writers: 4 threads write every third page. */
	{
		size_t n = npages / 3;
		size_t *pages = malloc(n * sizeof(*pages));
		struct toucher t[4];
		void *th[4];

		for (size_t i = 0; i < n; i++)
			pages[i] = i * 3;
		for (int i = 0; i < 4; i++) {
			t[i] = (struct toucher){ base, pages + i * (n / 4), i == 3 ? n - 3 * (n / 4) : n / 4, true };
			th[i] = harness_thread_start(touch_pages, &t[i]);
		}
		for (int i = 0; i < 4; i++)
			harness_thread_join(th[i]);
		for (size_t i = 0; i < n; i++)
			base[pages[i] * ps + 8] ^= 0x5a;	/* really change them now */
		written = n;
		free(pages);
	}
	s = stats(l);
	ck_assert_int_eq(atomic_load(&x.twice), 0);
	ck_assert_uint_eq(s.faults_wp, written);
	ck_assert_uint_ge(s.faults_minor, written / 2);	/* zapped pages: minor, then wp */
	ck_assert_uint_eq(s.errors, 0);
	/* The snapshot: pages copied by the handler, the rest as they are. */
	for (size_t i = 0; i < npages; i++)
		if (!atomic_load(&x.copied[i]))
			memcpy(x.snap + i * ps, uffd_region_alias(r) + i * ps, ps);
	ck_assert_int_eq(memcmp(x.snap, orig, len), 0);
	ck_assert_int_ne(memcmp(base, orig, len), 0);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
	free(x.snap);
	free(x.copied);
	free(orig);
}
END_TEST

/*
 * Exact write-protection, a garbage collector's pattern: a subset of the
 * heap is protected (every third page, and a block; some of those pages
 * are mapped, most are not), mutators fault the whole heap in (MINOR, or
 * MISSING zero pages) with the default resolution, then write every page.
 * Exactly the protected pages raise a WP fault, once each; the others
 * none (the loop keeps no "protect whatever is mapped" rule); the
 * protected ones that a fault mapped are still protected (pagemap bit
 * 57) until their write. And the loop decides with no system call: the
 * process's read(2)/pread(2) count (/proc/self/io syscr) does not grow by
 * one per fault, as it did when each MINOR fault of a WP region read
 * /proc/self/pagemap.
 */
struct gc_ctx {
	size_t ps;
	atomic_uchar *wp;	/* WP faults per page */
	atomic_uint spurious;
};

static bool gc_protected(size_t page)
{
	return page % 3 == 0 || (page >= 600 && page < 700);
}

static int gc_wp(void *c, struct uffd_fault *f)
{
	struct gc_ctx *x = c;
	size_t page = f->offset / x->ps;

	atomic_fetch_add(&x->wp[page], 1);
	if (!gc_protected(page))
		atomic_fetch_add(&x->spurious, 1);
	return UFFD_RESOLVE;
}

/* read(2)-family calls of the whole process so far (/proc/self/io syscr). */
static long syscalls_read(void)
{
	FILE *f = fopen("/proc/self/io", "re");
	char line[128];
	long v = -1;

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "syscr: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

static void gc_pattern(uint64_t modes)
{
	size_t npages = 1024, len = npages * ps, nprot = 0, kept = 0;
	bool minor = modes & UFFDIO_REGISTER_MODE_MINOR;
	struct uffd *u = open_uffd(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
				   (minor ? UFFD_FEATURE_MINOR_SHMEM : UFFD_FEATURE_MISSING_SHMEM));
	struct uffd_region *r = new_region(u, len, modes);
	struct gc_ctx x = { .ps = ps, .wp = calloc(npages, 1) };
	struct uffd_handlers h = { .wp = gc_wp };	/* MINOR, MISSING: the default */
	struct uffd_loop *l = new_loop(0, 0);
	char *base = uffd_region_base(r), *orig = malloc(len);
	struct uffd_loop_stats s;
	uint64_t reads;
	long calls;

	if (minor) {
		fill(orig, 0, len, 21);
		ck_assert_int_eq(uffd_region_populate(r, 0, orig, len, 0), 0);
		for (size_t i = 0; i < npages; i += 5)	/* some pages mapped already */
			ck_assert_int_eq(uffd_region_continue(r, i * ps, ps, 0, NULL), 0);
	} else {
		memset(orig, 0, len);
	}
	for (size_t i = 0; i < npages; i++)
		if (gc_protected(i)) {
			ck_assert_int_eq(uffd_region_writeprotect(r, i * ps, ps, true, 0), 0);
			nprot++;
		}
	ck_assert_int_eq(uffd_loop_add_region(l, r, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 2), 0);

	/* The mutators read the heap: every page not mapped faults. */
	reads = stats(l).reads;
	calls = syscalls_read();
	touch_all(base, npages, 4, true, false);
	calls = syscalls_read() - calls;
	s = stats(l);
	ck_assert_uint_eq(s.faults_minor + s.faults_missing, minor ? npages - (npages + 4) / 5 : npages);
	ck_assert_uint_eq(s.faults_wp, 0);
	fprintf(stderr, "gc pattern: %ld read calls while the loop resolved %llu faults\n", calls,
		(unsigned long long)(s.faults_minor + s.faults_missing));
	/*
	 * Through io_uring the loop's own reads of its messages count no
	 * read(2); on the poll path each is one (subtracted). Valgrind reads
	 * files of its own.
	 */
	if (!harness_valgrind()) {
		bool polled = getenv("LIBUFFD_LOOP_FORCE_POLL") || getenv("LIBUFFD_LOOP_NO_URING") ||
			      harness_read_long("/proc/sys/kernel/io_uring_disabled") > 0;

		calls -= polled ? (long)(s.reads - reads) : 0;
		ck_assert_msg(calls < 64, "%ld read calls while the loop resolved %llu faults", calls,
			      (unsigned long long)(s.faults_minor + s.faults_missing));
	}
	for (size_t i = 0; i < npages; i++) {
		bool wp = harness_pagemap(base + i * ps) >> 57 & 1;

		ck_assert_msg(wp == gc_protected(i), "page %zu (%s): uffd-wp %d after the read fault",
			      i, gc_protected(i) ? "protected" : "never protected", wp);
		kept += wp;
	}
	ck_assert_uint_eq(kept, nprot);

	/* Then they write every page: WP faults on exactly the protected ones. */
	touch_all(base, npages, 4, true, true);
	s = stats(l);
	ck_assert_msg(atomic_load(&x.spurious) == 0, "%u spurious WP faults on pages never protected",
		      atomic_load(&x.spurious));
	for (size_t i = 0; i < npages; i++)
		ck_assert_msg(atomic_load(&x.wp[i]) == gc_protected(i), "page %zu: %u WP faults",
			      i, atomic_load(&x.wp[i]));
	ck_assert_uint_eq(s.faults_wp, nprot);
	ck_assert_uint_eq(s.errors, 0);
	/* Resolved for good: the record follows the unprotecting. */
	ck_assert_int_eq(uffd_region_zap(r, 0, len), 0);
	touch_all(base, npages, 4, true, true);
	ck_assert_uint_eq(stats(l).faults_wp, nprot);
	ck_assert_int_eq(verify(base, 0, len, minor ? 21 : 0) == -1, minor);
	ck_assert_int_eq(memcmp(uffd_region_alias(r), base, len), 0);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
	free(x.wp);
	free(orig);
}

START_TEST(test_gc_exact_wp)
{
	if (!harness_have_features(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
				   UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_MISSING_SHMEM))
		SKIP_TEST("the kernel lacks PAGEFAULT_FLAG_WP, WP_HUGETLBFS_SHMEM, MINOR_SHMEM or MISSING_SHMEM");
	gc_pattern(UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP);
	gc_pattern(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP);
}
END_TEST

/*
 * No page is left writable once the call protecting it has returned:
 * readers fault a heap in (MINOR) while a collector protects its pages
 * one by one and, as soon as each call returns, reads the page's pagemap
 * entry: it must be write-protected (a marker, or a protected PTE),
 * whatever the loop was doing with the page at that moment (deciding
 * from the record, mapping, looking again). At the end every page is
 * still protected.
 */
#define RACE_ROUNDS 10

struct race_reader {
	char *base;
	size_t npages;
	uint64_t seed;
};

static void *race_read(void *arg)
{
	struct race_reader *rd = arg;
	size_t *order = shuffled(rd->npages, rd->seed);

	for (size_t i = 0; i < rd->npages; i++)
		(void)harness_load8(rd->base + order[i] * ps);
	free(order);
	return NULL;
}

static bool pm_wp(int pm, const void *addr)
{
	uint64_t e = 0;

	ck_assert_int_eq(pread(pm, &e, sizeof(e), (off_t)((uintptr_t)addr / ps * sizeof(e))), sizeof(e));
	return e >> 57 & 1;
}

START_TEST(test_wp_protect_race)
{
	size_t npages = 4096, len = npages * ps, late = 0, lost = 0;
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct race_reader rd[3];
	void *th[3];
	size_t *order;
	char *base;
	int pm;

	if (!harness_have_features(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
				   UFFD_FEATURE_MINOR_SHMEM))
		SKIP_TEST("the kernel lacks PAGEFAULT_FLAG_WP, WP_HUGETLBFS_SHMEM or MINOR_SHMEM");
	u = open_uffd(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_MINOR_SHMEM);
	r = new_region(u, len, UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP);
	cache_pages(r);
	l = new_loop(0, 0);
	base = uffd_region_base(r);
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(pm, 0);
	order = shuffled(npages, 1000);	/* the first reader's order: they meet often */
	ck_assert_int_eq(uffd_loop_add_region(l, r, NULL, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l, 2), 0);
	for (int round = 0; round < RACE_ROUNDS; round++) {
		ck_assert_int_eq(uffd_region_writeprotect(r, 0, len, false, 0), 0);
		ck_assert_int_eq(uffd_region_zap(r, 0, len), 0);
		for (int i = 0; i < 3; i++) {
			rd[i] = (struct race_reader){ base, npages, 1000 + (uint64_t)i };
			th[i] = harness_thread_start(race_read, &rd[i]);
		}
		for (size_t i = 0; i < npages; i++) {
			ck_assert_int_eq(uffd_region_writeprotect(r, order[i] * ps, ps, true, 0), 0);
			late += !pm_wp(pm, base + order[i] * ps);
		}
		for (int i = 0; i < 3; i++)
			harness_thread_join(th[i]);
		for (size_t i = 0; i < npages; i++)
			lost += !pm_wp(pm, base + i * ps);
	}
	ck_assert_msg(late == 0 && lost == 0, "%zu pages writable right after uffd_region_writeprotect returned, "
		      "%zu at the end (of %d x %zu)", late, lost, RACE_ROUNDS, npages);
	ck_assert_uint_eq(stats(l).errors, 0);
	close(pm);
	free(order);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
}
END_TEST

/* ---- missing: anon memory ---- */

static int copy_missing(void *c, struct uffd_fault *f)
{
	char *page = aligned_alloc(ps, f->len);
	int err;

	(void)c;
	fill(page, (uintptr_t)f->addr, f->len, 5);
	err = uffd_copy(f->uffd, f->addr, page, f->len, 0, NULL);
	free(page);
	return err ? err : UFFD_HANDLED;
}

START_TEST(test_missing)
{
	size_t len = 2ul << 20, npages = len / ps;
	struct uffd *u = open_uffd(0);
	char *a = anon_registered(u, len), *b = anon_registered(u, len);
	struct uffd_handlers h = { .missing = copy_missing };
	struct uffd_loop *l = new_loop(0, 0);
	struct uffd *u2 = open_uffd(0);
	struct uffd_loop *l2 = new_loop(0, 0);
	struct uffd_loop_stats s;

	/* Default resolution: zero pages. */
	ck_assert_int_eq(uffd_loop_add(l, u, NULL, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	touch_all(a, npages, 2, true, true);
	touch_all(b, npages, 2, true, false);
	{
		char *zero = calloc(1, len);

		ck_assert_int_eq(memcmp(a, zero, len), 0);
		ck_assert_int_eq(memcmp(b, zero, len), 0);
		free(zero);
	}
	s = stats(l);
	ck_assert_uint_eq(s.faults_missing, 2 * npages);
	ck_assert_uint_le(s.resolve_ioctls, s.faults_missing);
	ck_assert_uint_eq(s.errors, 0);
	if (!getenv("LIBUFFD_LOOP_FORCE_POLL"))
		ck_assert_int_eq(io_workers(), 0);
	uffd_loop_free(l);

	/* A handler that copies and returns HANDLED. */
	ck_assert_int_eq(munmap(a, len), 0);
	a = anon_registered(u2, len);
	ck_assert_int_eq(uffd_loop_add(l2, u2, &h, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l2, 1), 0);
	touch_all(a, npages, 2, true, false);
	ck_assert_int_eq(verify(a, (uintptr_t)a, len, 5), -1);
	s = stats(l2);
	ck_assert_uint_eq(s.faults_missing, npages);
	ck_assert_uint_eq(s.resolve_ioctls, 0);
	uffd_loop_free(l2);
	munmap(a, len);
	munmap(b, len);
	uffd_close(u);
	uffd_close(u2);
}
END_TEST

/* hugetlb has no zero page: the default copies a zeroed huge page. */
START_TEST(test_hugetlb_missing)
{
	const char *why = NULL;
	size_t hps = harness_hugepages(4, &why), len = 4 * hps;
	struct uffd *u;
	struct uffd_region_opts o = { .size = sizeof(o), .length = len, .fd = -1,
				      .modes = UFFDIO_REGISTER_MODE_MISSING, .flags = UFFD_REGION_HUGETLB };
	struct uffd_region *r = NULL;
	struct uffd_loop *l;
	char *zero, *base;

	if (!hps)
		SKIP_TEST("%s", why);
	u = open_uffd(UFFD_FEATURE_MISSING_HUGETLBFS);
	ck_assert_msg(uffd_region_create(u, &o, &r) == 0, "%s", uffd_last_error());
	l = new_loop(0, 0);
	ck_assert_int_eq(uffd_loop_add_region(l, r, NULL, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	base = uffd_region_base(r);
	for (size_t i = 0; i < len; i += hps / 2)
		harness_store8(&base[i + 7], 1);	/* faults, then writes */
	zero = calloc(1, hps);
	ck_assert_int_eq(memcmp(base + hps / 2 + 8, zero, hps / 2 - 8), 0);
	ck_assert_uint_eq(stats(l).faults_missing, 4);
	ck_assert_uint_eq(stats(l).errors, 0);
	free(zero);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
}
END_TEST

/* ---- defer: a worker resolves later ---- */

struct defer_q {
	pthread_mutex_t m;
	pthread_cond_t c;
	void *addr[4096];
	size_t head, tail;
	bool done;
	struct uffd_region *r;
};

static int defer_minor(void *c, struct uffd_fault *f)
{
	struct defer_q *q = c;

	fill(uffd_region_alias(q->r) + f->offset, f->offset, f->len, 9);
	pthread_mutex_lock(&q->m);
	q->addr[q->tail++ % 4096] = f->addr;
	pthread_cond_signal(&q->c);
	pthread_mutex_unlock(&q->m);
	return UFFD_DEFER;
}

static void *defer_worker(void *arg)
{
	struct defer_q *q = arg;

	pthread_mutex_lock(&q->m);
	while (!q->done || q->head != q->tail) {
		void *a;

		if (q->head == q->tail) {
			pthread_cond_wait(&q->c, &q->m);
			continue;
		}
		a = q->addr[q->head++ % 4096];
		pthread_mutex_unlock(&q->m);
		usleep(100);	/* "later" */
		ck_assert_int_eq(uffd_continue_range(uffd_region_uffd(q->r), a, ps, UFFD_SKIP_EXISTING, NULL), 0);
		pthread_mutex_lock(&q->m);
	}
	pthread_mutex_unlock(&q->m);
	return NULL;
}

START_TEST(test_defer)
{
	size_t len = 1ul << 20, npages = len / ps;
	struct uffd *u = open_uffd(UFFD_FEATURE_MINOR_SHMEM);
	struct uffd_region *r = new_region(u, len, UFFDIO_REGISTER_MODE_MINOR);
	struct defer_q q = { .m = PTHREAD_MUTEX_INITIALIZER, .c = PTHREAD_COND_INITIALIZER, .r = r };
	struct uffd_handlers h = { .minor = defer_minor };
	struct uffd_loop *l = new_loop(0, 0);
	void *worker = harness_thread_start(defer_worker, &q);
	struct uffd_loop_stats s;

	ck_assert_int_eq(uffd_loop_add(l, u, &h, &q), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	touch_all(uffd_region_base(r), npages, 4, true, false);
	pthread_mutex_lock(&q.m);
	q.done = true;
	pthread_cond_signal(&q.c);
	pthread_mutex_unlock(&q.m);
	harness_thread_join(worker);
	for (double end = harness_now() + PATIENCE_S; stats(l).deferred < npages && harness_now() < end;)
		usleep(1000);	/* counted once the handler returned */
	s = stats(l);
	ck_assert_uint_eq(s.deferred, npages);
	ck_assert_uint_eq(s.resolve_ioctls, 0);
	ck_assert_int_eq(verify(uffd_region_base(r), 0, len, 9), -1);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
}
END_TEST

/* ---- events ---- */

struct ev_ctx {
	atomic_int forks, remaps, removes, unmaps;
	int fork_verdict;
	void *from, *to, *start;
	size_t len;
};

static int ev_fork(void *c, struct uffd *child)
{
	struct ev_ctx *x = c;

	ck_assert_ptr_nonnull(child);
	atomic_fetch_add(&x->forks, 1);
	return x->fork_verdict;
}

static void ev_remap(void *c, void *from, void *to, size_t len)
{
	struct ev_ctx *x = c;

	x->from = from;
	x->to = to;
	x->len = len;
	atomic_fetch_add(&x->remaps, 1);
}

static void ev_remove(void *c, void *start, size_t len)
{
	struct ev_ctx *x = c;

	x->start = start;
	x->len = len;
	atomic_fetch_add(&x->removes, 1);
}

static void ev_unmap(void *c, void *start, size_t len)
{
	struct ev_ctx *x = c;

	x->start = start;
	x->len = len;
	atomic_fetch_add(&x->unmaps, 1);
}

static const struct uffd_handlers ev_handlers = {
	.fork = ev_fork, .remap = ev_remap, .remove = ev_remove, .unmap = ev_unmap,
};

/* Event handlers may still be running when the triggering call returns. */
static int wait_count(atomic_int *v, int want)
{
	for (double end = harness_now() + PATIENCE_S; atomic_load(v) < want && harness_now() < end;)
		usleep(1000);
	return atomic_load(v);
}

/* The child reads every page (zero pages from the loop) and exits 0 if right. */
static void fork_case(int verdict)
{
	size_t len = 64 * ps;
	int fds_before = harness_count_fds(), status;
	struct uffd *u = open_uffd(UFFD_FEATURE_EVENT_FORK);
	char *a = anon_registered(u, len);
	struct ev_ctx x = { .fork_verdict = verdict };
	struct uffd_loop *l = new_loop(0, 0);
	pid_t pid;

	ck_assert_int_eq(uffd_loop_add(l, u, &ev_handlers, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	a[0] = 1;	/* one page present in the parent */
	pid = fork();	/* not the loop thread: it reads the FORK event */
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int bad = a[0] != 1;

		alarm(10);
		if (verdict == 0)	/* adopted: its faults are served */
			for (size_t i = 1; i < len / ps; i++)
				bad |= a[i * ps] != 0;
		_exit(bad);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x", status);
	ck_assert_int_eq(wait_count(&x.forks, 1), 1);
	ck_assert_uint_ge(stats(l).events, 1);
	if (verdict == 0)
		ck_assert_uint_ge(stats(l).faults_missing, len / ps - 1);
	uffd_loop_free(l);
	munmap(a, len);
	uffd_close(u);
	ck_assert_int_eq(harness_count_fds(), fds_before);	/* the child uffd never leaks */
}

START_TEST(test_fork_adopt)
{
	SKIP_UNDER_VALGRIND("valgrind runs fork(2), mremap(2) and munmap(2) without letting other threads run, so the loop never reads the event these wait for");
	fork_case(0);
}
END_TEST

START_TEST(test_fork_close)
{
	SKIP_UNDER_VALGRIND("valgrind runs fork(2), mremap(2) and munmap(2) without letting other threads run, so the loop never reads the event these wait for");
	fork_case(-1);
}
END_TEST

/* ---- fork() from a handler of a one-thread loop ---- */

struct fork_in_handler {
	char *area;
	size_t len;
	atomic_int forks;	/* fork handler calls: the child adopted */
	pid_t pid;
	double fork_s;		/* how long fork() took in the handler */
};

static int fih_fork(void *c, struct uffd *child)
{
	struct fork_in_handler *x = c;

	ck_assert_ptr_nonnull(child);
	atomic_fetch_add(&x->forks, 1);
	return 0;	/* adopted: the loop serves the child */
}

/* The first fault forks, from the loop's only thread. */
static int fih_missing(void *c, struct uffd_fault *f)
{
	struct fork_in_handler *x = c;
	double t0;

	if (x->pid)
		return UFFD_RESOLVE;
	t0 = harness_now();
	x->pid = fork();
	if (x->pid == 0) {	/* its faults need the loop, after this handler returns */
		int bad = 0;

		alarm(10);
		for (size_t i = 1; i < x->len / ps; i++)
			bad |= x->area[i * ps] != 0;
		_exit(bad);
	}
	x->fork_s = harness_now() - t0;
	(void)f;
	return UFFD_RESOLVE;
}

/*
 * A handler that forks on a loop of one thread: the old loop hung in
 * fork(), its only thread being the one that would read the FORK message.
 * Now fork returns at once and the child is adopted and served after the
 * handler returns.
 */
START_TEST(test_fork_in_handler)
{
	struct uffd_handlers h = { .missing = fih_missing, .fork = fih_fork };
	struct fork_in_handler x = { .len = 64 * ps };
	int fds_before = harness_count_fds(), status;
	struct uffd *u;
	struct uffd_loop *l;

	SKIP_UNDER_VALGRIND("valgrind runs fork(2), mremap(2) and munmap(2) without letting other threads run, so the loop never reads the event these wait for");
	u = open_uffd(UFFD_FEATURE_EVENT_FORK);
	if (!(uffd_features(u) & UFFD_FEATURE_EVENT_FORK)) {
		uffd_close(u);
		SKIP_TEST("no UFFD_FEATURE_EVENT_FORK here (needs CAP_SYS_PTRACE or root)");
	}
	x.area = anon_registered(u, x.len);
	l = new_loop(0, 0);
	ck_assert_int_eq(uffd_loop_add(l, u, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	ck_assert_int_eq(*(volatile char *)x.area, 0);	/* the fault whose handler forks */
	ck_assert_int_gt(x.pid, 0);
	ck_assert_msg(x.fork_s < 2.0, "fork() from the handler took %.3f s", x.fork_s);
	ck_assert_int_eq(waitpid(x.pid, &status, 0), x.pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x", status);
	ck_assert_int_eq(atomic_load(&x.forks), 1);
	ck_assert_uint_ge(stats(l).faults_missing, x.len / ps);	/* the parent's and the child's */
	uffd_loop_free(l);
	munmap(x.area, x.len);
	uffd_close(u);
	ck_assert_int_eq(harness_count_fds(), fds_before);
}
END_TEST

struct remap_job {
	void *from, *to;
	size_t len;
	void *ret;
};

static void *do_mremap(void *arg)
{
	struct remap_job *j = arg;

	j->ret = mremap(j->from, j->len, j->len, MREMAP_MAYMOVE | MREMAP_FIXED, j->to);
	return NULL;
}

static int remap_fill(void *c, struct uffd_fault *f)
{
	struct uffd_region *r = c;

	ck_assert_ptr_eq(f->region, r);
	ck_assert_ptr_eq(f->addr, (char *)uffd_region_base(r) + f->offset);
	fill(uffd_region_alias(r) + f->offset, f->offset, f->len, 3);
	return UFFD_RESOLVE;
}

START_TEST(test_remap)
{
	SKIP_UNDER_VALGRIND("valgrind runs fork(2), mremap(2) and munmap(2) without letting other threads run, so the loop never reads the event these wait for");
	size_t len = 256 * ps;
	struct uffd *u = open_uffd(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMAP);
	struct uffd_region *r = new_region(u, len, UFFDIO_REGISTER_MODE_MINOR);
	struct uffd_handlers h = { .minor = remap_fill };
	struct ev_ctx x = { 0 };
	struct uffd_loop *l = new_loop(0, 0);
	char *old = uffd_region_base(r);
	char *dst = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct remap_job j = { old, dst, len, NULL };

	ck_assert_int_eq(uffd_loop_add(l, u, &ev_handlers, &x), 0);
	ck_assert_int_eq(uffd_loop_add_region(l, r, &h, r), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	touch_all(old, 16, 1, true, false);	/* some pages before the move */
	harness_thread_join(harness_thread_start(do_mremap, &j));
	ck_assert_ptr_eq(j.ret, dst);
	ck_assert_int_eq(wait_count(&x.remaps, 1), 1);	/* the uffd's handler: the region has none */
	ck_assert_ptr_eq(x.from, old);
	ck_assert_ptr_eq(x.to, dst);
	ck_assert_ptr_eq(uffd_region_base(r), dst);
	touch_all(dst, len / ps, 2, true, false);
	ck_assert_int_eq(verify(dst, 0, len, 3), -1);
	ck_assert_uint_eq(stats(l).errors, 0);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
}
END_TEST

/* REMOVE while a fault's resolution is in flight: the resolution is retried. */
struct remove_ctx {
	struct ev_ctx ev;
	char *madv;
	size_t madv_len;
	int advice;
	atomic_int go;
	int first;
	uint64_t salt;
	char *alias;
};

static void *do_madvise(void *arg)
{
	struct remove_ctx *x = arg;

	while (!atomic_load(&x->go))
		usleep(100);
	ck_assert_int_eq(madvise(x->madv, x->madv_len, x->advice), 0);
	return NULL;
}

/*
 * Waits until the madvise thread's REMOVE event is queued: the uffd polls
 * readable, its one fault being read and its toucher asleep. Until the loop
 * reads the event, resolving ioctls return -EAGAIN.
 */
static void wait_event_queued(struct uffd *u)
{
	struct pollfd p = { .fd = uffd_fd(u), .events = POLLIN };

	ck_assert_msg(poll(&p, 1, (int)(PATIENCE_S * 1000)) == 1, "no REMOVE event queued in %.0f s",
		      PATIENCE_S);
}

static int remove_fault(void *c, struct uffd_fault *f)
{
	struct remove_ctx *x = c;

	if (x->alias)
		fill(x->alias + f->offset, f->offset, f->len, x->salt);
	if (x->first++ == 0) {	/* the first fault: raise the event now */
		atomic_store(&x->go, 1);
		wait_event_queued(f->uffd);
	}
	return UFFD_RESOLVE;
}

static void remove_case(bool shmem)
{
	size_t len = 64 * ps;
	struct uffd *u = open_uffd(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_MINOR_SHMEM);
	struct uffd_region *r = shmem ? new_region(u, len, UFFDIO_REGISTER_MODE_MINOR) : NULL;
	char *base = shmem ? uffd_region_base(r) : anon_registered(u, len);
	struct remove_ctx x = { .advice = shmem ? MADV_REMOVE : MADV_DONTNEED, .salt = 11 };
	struct uffd_handlers h = { .missing = remove_fault, .minor = remove_fault,
				   .remove = ev_remove };
	struct uffd_loop *l = new_loop(0, 0);
	struct uffd_loop_stats s;
	void *mt;

	x.madv = base + 32 * ps;	/* the upper half, populated: not the faulting pages */
	x.madv_len = 32 * ps;
	x.alias = shmem ? uffd_region_alias(r) : NULL;
	if (shmem) {
		fill(x.alias, 0, len, x.salt);
		ck_assert_int_eq(uffd_region_continue(r, 32 * ps, 32 * ps, 0, NULL), 0);
	} else {
		ck_assert_int_eq(uffd_zeropage(u, base + 32 * ps, 32 * ps, 0, NULL), 0);
	}
	/* ctx is the remove_ctx; its first member is the ev_ctx ev_remove wants. */
	ck_assert_int_eq(uffd_loop_add(l, u, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	mt = harness_thread_start(do_madvise, &x);
	touch_all(base, 32, 1, true, false);
	harness_thread_join(mt);
	s = stats(l);
	ck_assert_int_eq(wait_count(&x.ev.removes, 1), 1);
	ck_assert_ptr_eq(x.ev.start, x.madv);
	ck_assert_uint_eq(x.ev.len, x.madv_len);
	ck_assert_uint_eq(s.errors, 0);
	ck_assert_uint_eq(shmem ? s.faults_minor : s.faults_missing, 32);
	/* One fault at a time, one ioctl each, plus retries of the first after the event (-EAGAIN may outlive it briefly). */
	ck_assert_uint_gt(s.resolve_ioctls, 32);
	for (size_t i = 0; i < 32; i++)
		ck_assert(shmem ? verify(base + i * ps, i * ps, ps, x.salt) == -1 : base[i * ps] == 0);
	uffd_loop_free(l);
	if (r)
		uffd_region_destroy(r);
	else
		munmap(base, len);
	uffd_close(u);
}

START_TEST(test_remove_dontneed)
{
	remove_case(false);
}
END_TEST

START_TEST(test_remove_shmem)
{
	remove_case(true);
}
END_TEST

struct unmap_job {
	void *addr;
	size_t len;
};

static void *do_munmap(void *arg)
{
	struct unmap_job *j = arg;

	ck_assert_int_eq(munmap(j->addr, j->len), 0);
	return NULL;
}

START_TEST(test_unmap)
{
	SKIP_UNDER_VALGRIND("valgrind runs fork(2), mremap(2) and munmap(2) without letting other threads run, so the loop never reads the event these wait for");
	size_t len = 64 * ps;
	struct uffd *u = open_uffd(UFFD_FEATURE_EVENT_UNMAP);
	char *a = anon_registered(u, len);
	struct ev_ctx x = { 0 };
	struct uffd_loop *l = new_loop(0, 0);
	struct unmap_job j = { a + 32 * ps, 32 * ps };

	ck_assert_int_eq(uffd_loop_add(l, u, &ev_handlers, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	touch_all(a, 16, 2, true, false);
	harness_thread_join(harness_thread_start(do_munmap, &j));
	ck_assert_int_eq(wait_count(&x.unmaps, 1), 1);
	ck_assert_ptr_eq(x.start, j.addr);
	ck_assert_uint_eq(x.len, j.len);
	touch_all(a, 32, 2, true, false);	/* the rest is still served */
	ck_assert_uint_eq(stats(l).faults_missing, 32);
	uffd_loop_free(l);
	uffd_close(u);	/* first: with nobody reading, munmap would wait for its event */
	munmap(a, 32 * ps);
}
END_TEST

/* ---- stop, run, run_once ---- */

static struct uffd_loop *sig_loop;

static void on_usr1(int sig)
{
	(void)sig;
	uffd_loop_stop(sig_loop);
}

static void *run_thread(void *arg)
{
	return (void *)(intptr_t)uffd_loop_run(arg);
}

static void *stop_later(void *arg)
{
	usleep(20000);
	ck_assert_int_eq(uffd_loop_stop(arg), 0);
	return NULL;
}

START_TEST(test_stop)
{
	struct uffd *u = open_uffd(0);
	char *a = anon_registered(u, 16 * ps);
	struct uffd_loop *l = new_loop(0, 0);
	struct sigaction sa = { .sa_handler = on_usr1 };
	struct timespec t0, t1;
	void *th;

	ck_assert_int_eq(uffd_loop_add(l, u, NULL, NULL), 0);
	/* run_once: idle returns 0 after the timeout. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ck_assert_int_eq(uffd_loop_run_once(l, 50), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ck_assert_int_ge((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000, 40);
	ck_assert_int_eq(uffd_loop_run_once(l, 0), 0);
	ck_assert_int_eq(uffd_loop_run_once(l, -2), -EINVAL);
	/* run_once returns the number of messages it handled. */
	{
		struct toucher t = { a + 15 * ps, (size_t[]){ 0 }, 1, false };
		int n = 0;

		th = harness_thread_start(touch_pages, &t);
		for (int i = 0; i < 100 && n == 0; i++)
			n = uffd_loop_run_once(l, 100);
		ck_assert_int_eq(n, 1);
		harness_thread_join(th);
	}
	/* Stop from another thread while run() sleeps in the main thread. */
	th = harness_thread_start(stop_later, l);
	ck_assert_int_eq(uffd_loop_run(l), 0);
	harness_thread_join(th);
	/* Stop from a signal handler; run() serves faults meanwhile. */
	sig_loop = l;
	ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
	th = harness_thread_start(run_thread, l);
	touch_all(a, 16, 1, true, false);
	usleep(10000);
	ck_assert_int_eq(uffd_loop_run(l), -EBUSY);
	ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
	ck_assert_ptr_eq(harness_thread_join(th), (void *)0);
	ck_assert_uint_eq(stats(l).faults_missing, 16);	/* page 15 was served by run_once */
	/* Background threads: stop, start again, free joins them. */
	ck_assert_int_eq(uffd_loop_start(l, 2), 0);
	ck_assert_int_eq(uffd_loop_start(l, 2), -EBUSY);
	ck_assert_int_eq(uffd_loop_run_once(l, 0), -EBUSY);
	ck_assert_int_eq(uffd_loop_stop(l), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);	/* waits for the stopped ones */
	ck_assert_int_eq(uffd_loop_remove(l, u), 0);
	ck_assert_int_eq(uffd_loop_remove(l, u), -ENOENT);
	uffd_loop_free(l);
	munmap(a, 16 * ps);
	uffd_close(u);
}
END_TEST

/* ---- failures ---- */

static _Thread_local sigjmp_buf bus_jmp;
static atomic_int sigbuses;

static void on_bus(int sig)
{
	(void)sig;
	atomic_fetch_add(&sigbuses, 1);
	siglongjmp(bus_jmp, 1);
}

static void *touch_bad(void *arg)
{
	volatile char *p = arg;

	if (sigsetjmp(bus_jmp, 1))
		return (void *)1;
	(void)*p;
	return NULL;
}

static int fail_first(void *c, struct uffd_fault *f)
{
	char *bad = c;

	return f->addr == bad ? -EIO : UFFD_RESOLVE;
}

START_TEST(test_poison)
{
	SKIP_UNDER_VALGRIND("the poisoned access must raise SIGBUS in user mode, and under valgrind the faulting thread would hold valgrind's lock while the loop must poison it");
	size_t len = 64 * ps;
	struct uffd *u = open_uffd(UFFD_FEATURE_POISON);
	char *a = anon_registered(u, len);
	struct uffd_handlers h = { .missing = fail_first };
	struct uffd_loop *l = new_loop(UFFD_LOOP_POISON_ON_ERROR, 0);
	struct sigaction sa = { .sa_handler = on_bus };
	void *th;

	ck_assert_int_eq(sigaction(SIGBUS, &sa, NULL), 0);
	ck_assert_int_eq(uffd_loop_add(l, u, &h, a), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	th = harness_thread_start(touch_bad, a);
	ck_assert_ptr_eq(harness_thread_join(th), (void *)1);	/* SIGBUS, not a hang */
	ck_assert_int_eq(atomic_load(&sigbuses), 1);
	touch_all(a + ps, 63, 4, true, false);	/* the others are still served */
	ck_assert_uint_eq(stats(l).errors, 1);
	ck_assert_uint_eq(stats(l).faults_missing, 64);
	uffd_loop_free(l);
	munmap(a, len);
	uffd_close(u);
}
END_TEST

START_TEST(test_handler_error)
{
	size_t len = 4 * ps;
	struct uffd *u = open_uffd(0);
	char *a = anon_registered(u, len);
	struct uffd_handlers h = { .missing = fail_first };
	struct uffd_loop *l = new_loop(0, 0);
	struct toucher t = { a, (size_t[]){ 0 }, 1, false };
	void *th;
	int n = 0;

	ck_assert_int_eq(uffd_loop_add(l, u, &h, a), 0);
	th = harness_thread_start(touch_pages, &t);
	/* Without POISON_ON_ERROR run_once reports the failure; the fault stays pending. */
	for (int i = 0; i < 100 && n == 0; i++)
		n = uffd_loop_run_once(l, 100);
	ck_assert_int_eq(n, -EIO);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "missing fault"));
	ck_assert_uint_eq(stats(l).errors, 1);
	ck_assert_int_eq(uffd_zeropage(u, a, ps, 0, NULL), 0);	/* the caller resolves it */
	harness_thread_join(th);
	uffd_loop_free(l);
	munmap(a, len);
	uffd_close(u);
}
END_TEST

/* ---- arguments ---- */

static int remove_self(void *c, struct uffd_fault *f)
{
	struct uffd_loop *l = c;

	ck_assert_int_eq(uffd_loop_remove(l, f->uffd), -EDEADLK);
	return UFFD_RESOLVE;
}

START_TEST(test_args)
{
	struct uffd_loop_opts bad = { .size = sizeof(bad), .flags = 1u << 30 };
	struct uffd_loop_opts big = { .size = sizeof(big), .batch = 1u << 20 };
	struct uffd *u = open_uffd(0), *nopoison;
	struct uffd_opts no = { .size = sizeof(no) };
	struct uffd_loop *l = NULL, *lp;
	struct uffd_loop_stats s;
	struct uffd_handlers h = { .missing = remove_self };
	char *a = anon_registered(u, ps);
	struct toucher t = { a, (size_t[]){ 0 }, 1, false };
	void *th;

	ck_assert_int_eq(uffd_loop_new(NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffd_loop_new(&l, &bad), -EINVAL);
	ck_assert_ptr_null(l);
	ck_assert_int_eq(uffd_loop_new(&l, &big), -EINVAL);
	ck_assert_int_eq(uffd_loop_new(&l, NULL), 0);
	ck_assert_int_eq(uffd_loop_add(NULL, u, NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffd_loop_add(l, NULL, NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffd_loop_add_region(l, NULL, NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffd_loop_remove(l, u), -ENOENT);
	ck_assert_int_eq(uffd_loop_add(l, u, &h, l), 0);
	ck_assert_int_eq(uffd_loop_add(l, u, NULL, NULL), -EEXIST);
	ck_assert_int_eq(uffd_loop_start(l, 0), -EINVAL);
	ck_assert_int_eq(uffd_loop_start(NULL, 1), -EINVAL);
	ck_assert_int_eq(uffd_loop_run(NULL), -EINVAL);
	ck_assert_int_eq(uffd_loop_run_once(NULL, 0), -EINVAL);
	ck_assert_int_eq(uffd_loop_stop(NULL), -EINVAL);
	/* A handler may not remove from its own loop. */
	th = harness_thread_start(touch_pages, &t);
	for (int i = 0; i < 100 && stats(l).faults_missing == 0; i++)
		ck_assert_int_ge(uffd_loop_run_once(l, 50), 0);
	harness_thread_join(th);
	/* POISON_ON_ERROR needs UFFD_FEATURE_POISON. */
	ck_assert_int_eq(uffd_open(&nopoison, &no), 0);
	lp = new_loop(UFFD_LOOP_POISON_ON_ERROR, 0);
	ck_assert_int_eq(uffd_loop_add(lp, nopoison, NULL, NULL), -EOPNOTSUPP);
	uffd_loop_free(lp);
	uffd_close(nopoison);
	/* A region destroyed while added leaves the loop. */
	{
		struct uffd_region *r = new_region(u, 4 * ps, UFFDIO_REGISTER_MODE_MINOR);

		ck_assert_int_eq(uffd_loop_add_region(l, r, NULL, NULL), 0);
		ck_assert_int_eq(uffd_loop_add_region(l, r, NULL, NULL), -EEXIST);
		uffd_region_destroy(r);
	}
	uffd_loop_stats(NULL, &s);
	ck_assert_uint_eq(s.faults_missing, 0);
	uffd_loop_stats(l, NULL);
	uffd_loop_free(l);
	uffd_loop_free(NULL);
	munmap(a, ps);
	uffd_close(u);
}
END_TEST

/* ---- the handle behind a callback, joining, freeing with events unread ---- */

struct cur_ctx {
	struct uffd *parent, *child;	/* the watched handle, the adopted child's */
	struct uffd *at_fork;		/* uffd_loop_current() in the fork callback */
	struct uffd *at_remove[2];	/* ... in the remove callback: the parent's, the child's */
	atomic_int removes;
};

static int cur_fork(void *c, struct uffd *child)
{
	struct cur_ctx *x = c;

	x->at_fork = uffd_loop_current();
	x->child = child;
	return 0;
}

static void cur_remove(void *c, void *start, size_t len)
{
	struct cur_ctx *x = c;
	int i = atomic_load(&x->removes);

	(void)start;
	(void)len;
	if (i < 2)
		x->at_remove[i] = uffd_loop_current();
	atomic_fetch_add(&x->removes, 1);
}

/* A REMOVE from the process itself names its handle; one from an adopted child, the child's. */
START_TEST(test_current)
{
	struct uffd_handlers h = { .fork = cur_fork, .remove = cur_remove };
	struct cur_ctx x = { 0 };
	size_t len = 4 * ps;
	struct uffd *u;
	struct uffd_loop *l;
	char *a;
	pid_t pid;
	int status;

	SKIP_UNDER_VALGRIND("valgrind runs fork(2), mremap(2) and munmap(2) without letting other threads run, so the loop never reads the event these wait for");
	u = open_uffd(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMOVE);
	if (!(uffd_features(u) & UFFD_FEATURE_EVENT_FORK)) {
		uffd_close(u);
		SKIP_TEST("no UFFD_FEATURE_EVENT_FORK here (needs CAP_SYS_PTRACE or root)");
	}
	x.parent = u;
	a = anon_registered(u, len);
	l = new_loop(0, 0);
	ck_assert_ptr_null(uffd_loop_current());	/* not in a callback */
	ck_assert_int_eq(uffd_loop_add(l, u, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	ck_assert_int_eq(madvise(a, ps, MADV_DONTNEED), 0);	/* returns once the loop read it */
	ck_assert_int_eq(wait_count(&x.removes, 1), 1);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(madvise(a + ps, ps, MADV_DONTNEED) != 0);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x", status);
	ck_assert_int_eq(wait_count(&x.removes, 2), 2);
	ck_assert_ptr_eq(x.at_fork, u);
	ck_assert_ptr_eq(x.at_remove[0], u);
	ck_assert_ptr_nonnull(x.child);
	ck_assert_ptr_eq(x.at_remove[1], x.child);
	ck_assert_ptr_null(uffd_loop_current());
	ck_assert_int_eq(uffd_loop_remove(l, u), 0);
	uffd_loop_free(l);
	munmap(a, len);
	uffd_close(u);
}
END_TEST

static int count_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* After a stop, join waits for the threads; the loop stays usable. */
START_TEST(test_join)
{
	struct uffd *u = open_uffd(0);
	char *a = anon_registered(u, 4 * ps);
	struct uffd_loop *l = new_loop(0, 0);
	int before = count_threads();

	ck_assert_int_eq(uffd_loop_join(NULL), -EINVAL);
	ck_assert_int_eq(uffd_loop_join(l), 0);	/* no thread: at once */
	ck_assert_int_eq(uffd_loop_add(l, u, NULL, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l, 3), 0);
	ck_assert_int_eq(count_threads(), before + 3);
	ck_assert_int_eq(harness_load8(a), 0);		/* served */
	ck_assert_int_eq(uffd_loop_stop(l), 0);
	ck_assert_int_eq(uffd_loop_join(l), 0);
	ck_assert_int_eq(count_threads(), before);	/* joined: gone, not just told */
	ck_assert_uint_eq(stats(l).faults_missing, 1);	/* the loop and its counters stay */
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);	/* and it runs again */
	ck_assert_int_eq(harness_load8(a + ps), 0);
	ck_assert_uint_eq(stats(l).faults_missing, 2);
	ck_assert_int_eq(uffd_loop_stop(l), 0);
	ck_assert_int_eq(uffd_loop_join(l), 0);
	ck_assert_int_eq(uffd_loop_remove(l, u), 0);
	uffd_loop_free(l);
	munmap(a, 4 * ps);
	uffd_close(u);
}
END_TEST

/*
 * Freeing a loop that still watches a handle with EVENT_UNMAP: afterwards
 * munmap() of its ranges would wait for a reader with no word said. Now
 * uffd_last_error() names the handle; one removed first is not named.
 */
START_TEST(test_free_unread)
{
	struct uffd *u = open_uffd(UFFD_FEATURE_EVENT_UNMAP);
	struct uffd_loop *l = new_loop(0, 0);
	char fd[32];

	snprintf(fd, sizeof(fd), "userfaultfd %d ", uffd_fd(u));
	ck_assert_int_eq(uffd_loop_add(l, u, NULL, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	uffd_loop_free(l);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), fd));
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "munmap()"));

	l = new_loop(0, 0);
	ck_assert_int_eq(uffd_loop_add(l, u, NULL, NULL), 0);
	ck_assert_int_eq(uffd_loop_remove(l, u), 0);
	ck_assert_int_eq(uffd_loop_join(NULL), -EINVAL);	/* a sentence of its own */
	uffd_loop_free(l);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "uffd_loop_join"));	/* not replaced */
	uffd_close(u);
}
END_TEST

/* A case of this suite: every one needs setup, some the forced poll path. */
static TCase *loop_case(TCase *tc, bool poll)
{
	tcase_add_checked_fixture(tc, setup, NULL);
	if (poll)
		tcase_add_checked_fixture(tc, force_poll, NULL);
	return tc;
}

static void add_event_tests(TCase *tc)
{
	tcase_add_test(tc, test_fork_adopt);
	tcase_add_test(tc, test_fork_close);
	tcase_add_test(tc, test_fork_in_handler);
	tcase_add_test(tc, test_remap);
	tcase_add_test(tc, test_remove_dontneed);
	tcase_add_test(tc, test_remove_shmem);
	tcase_add_test(tc, test_unmap);
}

static Suite *make_suite(void)
{
	Suite *s = suite_create("loop");
	TCase *tc;

	tcase_add_test(loop_case(CASE(minor, 60), false), test_minor);
	tcase_add_test(loop_case(CASE(minor_poll, 60), true), test_minor);
	tcase_add_test(loop_case(CASE(minor_wp, 30), false), test_minor_wp);
	tc = loop_case(CASE(gc_exact_wp, 30), false);
	tcase_add_test(tc, test_gc_exact_wp);
	tcase_add_test(tc, test_wp_protect_race);
	tcase_add_test(loop_case(CASE(missing, 30), false), test_missing);
	tcase_add_test(loop_case(CASE(hugetlb_missing, 30), false), test_hugetlb_missing);
	tcase_add_test(loop_case(CASE(defer, 30), false), test_defer);
	add_event_tests(loop_case(CASE(events, 40), false));
	add_event_tests(loop_case(CASE(events_poll, 40), true));
	tcase_add_test(loop_case(CASE(threads, 60), false), test_threads);
	tcase_add_test(loop_case(CASE(stop, 30), false), test_stop);
	tc = loop_case(CASE(failures, 30), false);
	tcase_add_test(tc, test_poison);
	tcase_add_test(tc, test_handler_error);
	tcase_add_test(loop_case(CASE(args, 20), false), test_args);
	tc = loop_case(CASE(join_current, 30), false);
	tcase_add_test(tc, test_current);
	tcase_add_test(tc, test_join);
	tcase_add_test(tc, test_free_unread);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
