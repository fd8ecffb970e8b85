/* SPDX-License-Identifier: MIT */
/*
 * Bulk metrics, no faults: filling the page cache (7), mapping a populated
 * range (8) and finding the written pages of a range (10). Each repetition
 * times the operation alone; the set-up it needs (punching the pages out,
 * unmapping them, dirtying them) and the checks are untimed.
 */
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

#define PM_UFFD_WP (1ull << 57)
#define PM_CHUNK 8192		/* pagemap entries per pread: 64 KiB */
#define DIRTY_PERMILLE 10	/* 1% of the pages written */

static double ns_per_page(double t0, size_t pages)
{
	return (now_us() - t0) * 1000.0 / (double)pages;
}

/* ---- 7. populate: uffd_region_populate vs memcpy through a fresh view ---- */

struct pop {
	const char *metric;
	size_t pages;
	uint64_t seed;
	const char *src;
	struct uffd_region *r;	/* libuffd side */
	int fd;			/* baseline side */
};

static int punch(int fd, size_t len)
{
	return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)len);
}

static double pop_lib(void *ctx, unsigned rep, struct lat *lat)
{
	struct pop *p = ctx;
	size_t len = p->pages * PAGE;
	double t0;
	int err;

	(void)rep;
	(void)lat;
	if (uffd_region_discard(p->r, 0, len))
		return -1;
	t0 = now_us();
	err = uffd_region_populate(p->r, 0, p->src, len, 0);
	t0 = ns_per_page(t0, p->pages);
	if (err)
		return -1;
	check_pages(p->metric, uffd_region_alias(p->r), 0, p->pages, p->seed);
	return t0;
}

static double pop_base(void *ctx, unsigned rep, struct lat *lat)
{
	struct pop *p = ctx;
	size_t len = p->pages * PAGE;
	void *view;
	double t0;

	(void)rep;
	(void)lat;
	if (punch(p->fd, len))
		return -1;
	t0 = now_us();
	view = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
	if (view == MAP_FAILED)
		return -1;
	memcpy(view, p->src, len);
	munmap(view, len);
	t0 = ns_per_page(t0, p->pages);
	view = mmap(NULL, len, PROT_READ, MAP_SHARED, p->fd, 0);
	if (view == MAP_FAILED)
		return -1;
	check_pages(p->metric, view, 0, p->pages, p->seed);
	munmap(view, len);
	return t0;
}

int metric_populate(const struct bench_opts *o)
{
	size_t len = o->pages * PAGE;
	struct pop p = { "populate", o->pages, (uint64_t)now_us(), NULL, NULL, -1 };
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = len,
				       .modes = UFFDIO_REGISTER_MODE_MINOR, .fd = -1 };
	struct row row = { p.metric, 0, 0, "ns/page", 0.33, false, NULL, NULL, NULL };
	struct uffd *u = NULL;
	char *src = anon_map(len);
	int err = -1;

	if (!src)
		goto out;
	fill_pages(src, 0, o->pages, p.seed);
	p.src = src;
	if (uffd_open(&u, NULL) || uffd_region_create(u, &ro, &p.r)) {
		bench_error(o, p.metric, "libuffd set-up failed");
		goto out;
	}
	p.fd = memfd_create("bench-pop", MFD_CLOEXEC);
	if (p.fd < 0 || ftruncate(p.fd, (off_t)len)) {
		bench_error(o, p.metric, "memfd: %s", strerror(errno));
		goto out;
	}
	if (bench_pair(o, &p, pop_lib, &p, pop_base, &row.lib, &row.base, NULL, NULL)) {
		bench_error(o, p.metric, "a repetition failed");
		goto out;
	}
	bench_row(o, &row);
	err = 0;
out:
	if (p.fd >= 0)
		close(p.fd);
	uffd_region_destroy(p.r);
	uffd_close(u);
	if (src)
		munmap(src, len);
	return err;
}

/* ---- 8. continue_bulk: uffd_continue_range vs raw UFFDIO_CONTINUE ---- */

struct bulk {
	const char *metric;
	size_t pages;
	uint64_t seed;
	struct uffd *u;		/* libuffd side */
	struct uffd_region *r;
	char *view;		/* baseline side: its own registered mapping */
	int fd;
};

static double bulk_lib(void *ctx, unsigned rep, struct lat *lat)
{
	struct bulk *b = ctx;
	size_t len = b->pages * PAGE, done = 0;
	char *base = uffd_region_base(b->r);
	double t0;
	int err;

	(void)rep;
	(void)lat;
	if (uffd_region_zap(b->r, 0, len))
		return -1;
	t0 = now_us();
	err = uffd_continue_range(b->u, base, len, 0, &done);
	t0 = ns_per_page(t0, b->pages);
	if (err || done != len) {
		bench_fail(b->metric, "uffd_continue_range mapped %zu of %zu bytes (%d)", done, len, err);
		return t0;	/* never touch unmapped pages: nobody would resolve them */
	}
	check_pages_sampled(b->metric, base, b->pages, b->seed);
	return t0;
}

static double bulk_raw(struct bulk *b, bool pagewise)
{
	size_t len = b->pages * PAGE, done = 0;
	int64_t count = 0;
	double t0;
	int err = 0;

	if (madvise(b->view, len, MADV_DONTNEED))
		return -1;
	t0 = now_us();
	if (pagewise) {
		for (size_t off = 0; off < len && !err; off += PAGE, done += (size_t)count)
			err = base_continue(b->fd, b->view + off, PAGE, &count);
	} else {
		err = base_continue(b->fd, b->view, len, &count);
		done = count > 0 ? (size_t)count : 0;
	}
	t0 = ns_per_page(t0, b->pages);
	if (err || done != len) {
		bench_fail(b->metric, "raw UFFDIO_CONTINUE mapped %zu of %zu bytes (%d)", done, len, err);
		return t0;
	}
	check_pages_sampled(b->metric, b->view, b->pages, b->seed);
	return t0;
}

static double bulk_one(void *ctx, unsigned rep, struct lat *lat)
{
	(void)rep;
	(void)lat;
	return bulk_raw(ctx, false);
}

static double bulk_pagewise(void *ctx, unsigned rep, struct lat *lat)
{
	(void)rep;
	(void)lat;
	return bulk_raw(ctx, true);
}

int metric_continue_bulk(const struct bench_opts *o)
{
	size_t len = o->bulk_mib << 20;
	struct bulk b = { "continue_bulk", len / PAGE, (uint64_t)now_us(), NULL, NULL, NULL, -1 };
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = len,
				       .modes = UFFDIO_REGISTER_MODE_MINOR,
				       .flags = UFFD_REGION_NO_ALIAS };
	struct row one = { b.metric, 0, 0, "ns/page", 1.1, false, NULL, NULL,
			   "baseline: one raw UFFDIO_CONTINUE ioctl" };
	struct row pw = { "continue_bulk_pagewise", 0, 0, "ns/page", 0, false, NULL, NULL,
			  "baseline: one raw ioctl per page" };
	int mem = memfd_pattern("bench-bulk", len, b.seed), bfd = -1, err = -1;
	void *view = MAP_FAILED;

	if (mem < 0)
		goto out;
	ro.fd = mem;
	if (uffd_open(&b.u, NULL) || uffd_region_create(b.u, &ro, &b.r)) {
		bench_error(o, b.metric, "libuffd set-up failed");
		goto out;
	}
	view = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
	if (view == MAP_FAILED ||
	    (bfd = base_open(b.metric, view, len, BASE_MINOR, UFFD_FEATURE_MINOR_SHMEM)) < 0) {
		bench_error(o, b.metric, "baseline set-up failed");
		goto out;
	}
	b.view = view;
	b.fd = bfd;
	if (bench_pair(o, &b, bulk_lib, &b, bulk_one, &one.lib, &one.base, NULL, NULL) ||
	    bench_pair(o, &b, bulk_lib, &b, bulk_pagewise, &pw.lib, &pw.base, NULL, NULL)) {
		bench_error(o, b.metric, "a repetition failed");
		goto out;
	}
	bench_row(o, &one);
	bench_row(o, &pw);
	err = 0;
out:
	if (bfd >= 0)
		close(bfd);
	if (view != MAP_FAILED)
		munmap(view, len);
	uffd_region_destroy(b.r);
	uffd_close(b.u);
	if (mem >= 0)
		close(mem);
	return err;
}

/* ---- 10. dirty_scan: uffd_dirty_scan vs reading /proc/self/pagemap ---- */

struct dirty {
	const char *metric;
	struct uffd *u;
	char *mem;
	size_t pages;
	size_t *want, nwant;	/* the written pages, ascending */
	size_t *got;		/* what a side found */
	struct uffd_span *spans;
	size_t max_spans;
	int pm;
};

static void dirty_compare(struct dirty *d, const char *who, size_t ngot)
{
	if (ngot != d->nwant) {
		bench_fail(d->metric, "%s found %zu written pages, %zu were written", who, ngot,
			   d->nwant);
		return;
	}
	for (size_t i = 0; i < ngot; i++)
		if (d->got[i] != d->want[i]) {
			bench_fail(d->metric, "%s reports page %zu, the written page is %zu", who,
				   d->got[i], d->want[i]);
			return;
		}
}

static double dirty_lib(void *ctx, unsigned rep, struct lat *lat)
{
	struct dirty *d = ctx;
	char *end = d->mem + d->pages * PAGE, *cur = d->mem;
	size_t nspans = 0, ngot = 0;
	double t0 = now_us();

	(void)rep;
	(void)lat;
	while (cur < end) {
		void *next = end;
		int n = uffd_dirty_scan(d->u, cur, (size_t)(end - cur), d->spans + nspans,
					d->max_spans - nspans, 0, &next);

		if (n < 0 || (n == 0 && next != end) || nspans + (size_t)n > d->max_spans)
			return -1;
		nspans += (size_t)n;
		cur = next;
		if (nspans == d->max_spans && cur < end)
			return -1;	/* more runs than 4 per written page: impossible */
	}
	t0 = ns_per_page(t0, d->pages);
	for (size_t i = 0; i < nspans; i++)
		for (size_t k = 0; k < d->spans[i].len / PAGE && ngot < d->pages; k++)
			d->got[ngot++] = ((size_t)((char *)d->spans[i].addr - d->mem)) / PAGE + k;
	dirty_compare(d, "uffd_dirty_scan", ngot);
	return t0;
}

static double dirty_pagemap(void *ctx, unsigned rep, struct lat *lat)
{
	static uint64_t buf[PM_CHUNK];
	struct dirty *d = ctx;
	off_t first = (off_t)((uintptr_t)d->mem / PAGE * sizeof(uint64_t));
	size_t ngot = 0;
	double t0 = now_us();

	(void)rep;
	(void)lat;
	for (size_t p = 0; p < d->pages; p += PM_CHUNK) {
		size_t n = d->pages - p < PM_CHUNK ? d->pages - p : PM_CHUNK;
		ssize_t r = pread(d->pm, buf, n * sizeof(uint64_t), first + (off_t)(p * sizeof(uint64_t)));

		if (r != (ssize_t)(n * sizeof(uint64_t)))
			return -1;
		for (size_t i = 0; i < n; i++)
			if (!(buf[i] & PM_UFFD_WP))
				d->got[ngot++] = p + i;
	}
	t0 = ns_per_page(t0, d->pages);
	dirty_compare(d, "/proc/self/pagemap", ngot);
	return t0;
}

/* 1% of the pages, distinct, ascending: every page with probability 1%. */
static size_t pick_dirty(size_t *want, size_t pages, uint64_t seed)
{
	uint64_t x = seed | 1;
	size_t n = 0;

	for (size_t p = 0; p < pages; p++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (x % 1000 < DIRTY_PERMILLE)
			want[n++] = p;
	}
	return n;
}

static int dirty_setup(const struct bench_opts *o, struct dirty *d)
{
	struct uffd_opts uo = { .size = sizeof(uo),
				.want_features = UFFD_FEATURES_DEFAULT | UFFD_FEATURE_WP_ASYNC };
	size_t len = d->pages * PAGE;
	int err;

	d->want = malloc(d->pages * sizeof(size_t));
	d->got = malloc(d->pages * sizeof(size_t));
	d->mem = anon_map(len);
	d->pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (!d->want || !d->got || !d->mem || d->pm < 0) {
		bench_error(o, d->metric, "set-up failed: %s", strerror(errno));
		return -1;
	}
	memset(d->mem, 0x5a, len);	/* populated: unwritten pages keep their protection */
	if ((err = uffd_open(&d->u, &uo)) ||
	    (err = uffd_register(d->u, d->mem, len, UFFDIO_REGISTER_MODE_WP, NULL)) ||
	    (err = uffd_dirty_start(d->u, d->mem, len))) {
		bench_error(o, d->metric, "libuffd set-up failed (%d)", err);
		return -1;
	}
	d->nwant = pick_dirty(d->want, d->pages, (uint64_t)now_us());
	d->max_spans = d->nwant * 4 + 16;
	d->spans = malloc(d->max_spans * sizeof(*d->spans));
	if (!d->spans)
		return -1;
	for (size_t i = 0; i < d->nwant; i++)
		d->mem[d->want[i] * PAGE + 8] = 1;
	return 0;
}

int metric_dirty_scan(const struct bench_opts *o)
{
	struct dirty d = { .metric = "dirty_scan", .pages = (o->bulk_mib << 20) / PAGE, .pm = -1 };
	struct row row = { d.metric, 0, 0, "ns/page", 0.1, false, NULL, NULL,
			   "1% of the pages written" };
	int err = -1;

	if (dirty_setup(o, &d))
		goto out;
	if (bench_pair(o, &d, dirty_lib, &d, dirty_pagemap, &row.lib, &row.base, NULL, NULL)) {
		bench_error(o, d.metric, "a repetition failed");
		goto out;
	}
	bench_row(o, &row);
	err = 0;
out:
	uffd_close(d.u);	/* unregisters */
	if (d.mem)
		munmap(d.mem, d.pages * PAGE);
	if (d.pm >= 0)
		close(d.pm);
	free(d.want);
	free(d.got);
	free(d.spans);
	return err;
}
