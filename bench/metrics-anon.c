/* SPDX-License-Identifier: MIT */
/*
 * Round trips on private anonymous memory: a write-protect fault resolved
 * by un-protecting (5) and a MISSING fault resolved by copying a page in
 * (6), the loop against the usual handler. Each repetition re-protects (or
 * drops) every page and touches each once; every page is then checked.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "bench.h"

/* One side of either metric. */
struct anon_side {
	const char *metric;
	char *mem;
	const char *src;	/* MISSING: the pages to copy in */
	size_t pages;
	uint64_t seed;
	bool wp;
	struct uffd *u;		/* libuffd side */
	struct uffd_loop *l;
	uint64_t faults_seen;
	struct base_uffd *b;	/* baseline side */
};

/* ---- resetting and touching ---- */

static int rearm(struct anon_side *s)
{
	size_t len = s->pages * PAGE;

	if (!s->wp)
		return madvise(s->mem, len, MADV_DONTNEED);
	if (s->u)
		return uffd_writeprotect(s->u, s->mem, len, true, 0);
	return base_writeprotect(base_fd(s->b), s->mem, len, true);
}

static double touch(struct anon_side *s, unsigned rep, struct lat *lat)
{
	uint64_t marker = 0x3a3a0000ull + rep;
	double us;

	if (!s->wp) {
		us = touch_read(s->metric, s->mem, 0, s->pages, s->seed, lat);
		check_pages(s->metric, s->mem, 0, s->pages, s->seed);
		return us;
	}
	us = touch_write(s->metric, s->mem, s->pages, s->seed, marker, lat);
	check_written(s->metric, s->mem, s->pages, s->seed, marker);
	return us;
}

static void check_count(const char *metric, const char *who, uint64_t got, uint64_t want)
{
	if (got < want)	/* more: a thread may fault again before it is woken */
		bench_fail(metric, "%s resolved %llu faults, expected at least %llu", who,
			   (unsigned long long)got, (unsigned long long)want);
}

/* ---- libuffd side ---- */

static int copy_in(void *ctx, struct uffd_fault *f)
{
	struct anon_side *s = ctx;
	int err = uffd_copy(s->u, f->addr, s->src + ((char *)f->addr - s->mem), f->len, 0, NULL);

	return err == -EEXIST ? UFFD_HANDLED : err ? err : UFFD_HANDLED;
}

static uint64_t lib_faults(struct anon_side *s)
{
	struct uffd_loop_stats st;
	uint64_t now, d;

	uffd_loop_stats(s->l, &st);
	now = s->wp ? st.faults_wp : st.faults_missing;
	d = now - s->faults_seen;
	s->faults_seen = now;
	return d;
}

static double lib_rep(void *ctx, unsigned rep, struct lat *lat)
{
	struct anon_side *s = ctx;
	double us;

	if (rearm(s))
		return -1;
	lib_faults(s);
	us = touch(s, rep, lat);
	check_count(s->metric, "libuffd", lib_faults(s), s->pages);
	return us;
}

static int lib_open(const struct bench_opts *o, struct anon_side *s)
{
	static const struct uffd_handlers copy_h = { .missing = copy_in };
	struct uffd_loop_opts lo = { .size = sizeof(lo) };
	uint64_t mode = s->wp ? UFFDIO_REGISTER_MODE_WP : UFFDIO_REGISTER_MODE_MISSING;
	int err;

	if (!(err = uffd_open(&s->u, NULL)) &&
	    !(err = uffd_register(s->u, s->mem, s->pages * PAGE, mode, NULL)) &&
	    !(err = uffd_loop_new(&s->l, &lo)) &&
	    !(err = uffd_loop_add(s->l, s->u, s->wp ? NULL : &copy_h, s))) {
		place(true);
		err = uffd_loop_start(s->l, 1);
		place(false);
	}
	if (err) {
		bench_error(o, s->metric, "libuffd set-up failed (%d)", err);
		return -1;
	}
	return 0;
}

/* ---- baseline side ---- */

static double base_rep(void *ctx, unsigned rep, struct lat *lat)
{
	struct anon_side *s = ctx;
	double us;

	if (rearm(s))
		return -1;
	base_faults(s->b);
	us = touch(s, rep, lat);
	check_count(s->metric, "the baseline", base_faults(s->b), s->pages);
	return us;
}

/* ---- the metric ---- */

static void side_close(struct anon_side *s)
{
	uffd_loop_free(s->l);
	uffd_close(s->u);
	base_stop(s->b);
	if (s->mem)
		munmap(s->mem, s->pages * PAGE);
}

static int anon_metric(const struct bench_opts *o, const char *metric, bool wp, double target)
{
	size_t len = o->pages * PAGE;
	uint64_t seed = (uint64_t)now_us();
	struct anon_side lib = { .metric = metric, .mem = anon_map(len), .pages = o->pages,
				 .seed = seed, .wp = wp };
	struct anon_side base = { .metric = metric, .mem = anon_map(len), .pages = o->pages,
				  .seed = seed, .wp = wp };
	char *src = wp ? NULL : anon_map(len);
	struct lat ll = { 0 }, bl = { 0 };
	struct row row = { metric, 0, 0, "us/fault", target, false, &ll, &bl, NULL };
	int err = -1;

	if (!lib.mem || !base.mem || (!wp && !src))
		goto out;
	if (wp) {	/* contents first: WP faults need present pages */
		fill_pages(lib.mem, 0, o->pages, seed);
		fill_pages(base.mem, 0, o->pages, seed);
	} else {
		fill_pages(src, 0, o->pages, seed);
		lib.src = base.src = src;
	}
	if (lib_open(o, &lib))
		goto out;
	base.b = base_start(metric, base.mem, len, wp ? BASE_WP : BASE_MISSING,
			    wp ? UFFD_FEATURE_PAGEFAULT_FLAG_WP : 0, src);
	if (!base.b) {
		bench_error(o, metric, "baseline set-up failed");
		goto out;
	}
	if (bench_pair(o, &lib, lib_rep, &base, base_rep, &row.lib, &row.base, &ll, &bl)) {
		bench_error(o, metric, "a repetition failed");
		goto out;
	}
	bench_row(o, &row);
	err = 0;
out:
	side_close(&lib);
	side_close(&base);
	if (src)
		munmap(src, len);
	lat_free(&ll);
	lat_free(&bl);
	return err;
}

int metric_wp_rt_1t(const struct bench_opts *o)
{
	return anon_metric(o, "wp_rt_1t", true, 1.0);
}

int metric_missing_copy_1t(const struct bench_opts *o)
{
	return anon_metric(o, "missing_copy_1t", false, 1.0);
}
