/* SPDX-License-Identifier: MIT */
/*
 * MINOR fault metrics on shmem: the physical floor (no userfaultfd), the
 * round trip through the loop (1), with spinning (2), in SIGBUS mode (3),
 * with four faulting threads (4), and fault-around (9). Each repetition
 * unmaps the pages from the registered view (the page cache keeps them) and
 * touches every page again; every page is then checked word by word.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"

#define MT_THREADS 4
#define AROUND_PAGES 64

/* How a side touches its pages. */
struct touch {
	const char *metric;
	char *base;
	size_t pages;
	uint64_t seed;
	unsigned threads;	/* 0: this thread, timed per touch */
};

/* The libuffd side: a MINOR region served by the loop or in SIGBUS mode. */
struct lib_minor {
	struct touch t;
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	uint64_t faults_seen;	/* loop stats / SIGBUS calls before this rep */
	uint64_t sigbus_calls;	/* updated in signal context */
	bool around;
};

/* The baseline side: a memfd mapping served by the usual handler. */
struct base_minor {
	struct touch t;
	int fd;
	struct base_uffd *b;
};

/* ---- touching ---- */

static void touch_part(void *arg, unsigned i)
{
	struct touch *t = arg;
	size_t per = t->pages / t->threads;

	touch_read(t->metric, t->base, i * per, i + 1 == t->threads ? t->pages - i * per : per,
		   t->seed, NULL);
}

/* us per page; the pages are then checked. */
static double touch_all(struct touch *t, struct lat *lat)
{
	double us = t->threads ? run_threads(t->threads, touch_part, t) / (double)t->pages
			       : touch_read(t->metric, t->base, 0, t->pages, t->seed, lat);

	check_pages(t->metric, t->base, 0, t->pages, t->seed);
	return us;
}

static void check_count(const char *metric, const char *who, uint64_t got, uint64_t want)
{
	if (got < want)	/* more: a thread may fault again before it is woken */
		bench_fail(metric, "%s resolved %llu faults, expected at least %llu: pages were not faulted",
			   who, (unsigned long long)got, (unsigned long long)want);
}

/* ---- libuffd side ---- */

static int sigbus_resolve(void *ctx, struct uffd_fault *f)
{
	struct lib_minor *m = ctx;

	(void)f;
	__atomic_fetch_add(&m->sigbus_calls, 1, __ATOMIC_RELAXED);
	return UFFD_RESOLVE;
}

/* fault_around: resolve 64 pages from the faulting one, within the region. */
static int widen(void *ctx, struct uffd_fault *f)
{
	struct lib_minor *m = ctx;
	size_t left = uffd_region_length(f->region) - f->offset;

	(void)m;
	f->len = left < AROUND_PAGES * PAGE ? left : AROUND_PAGES * PAGE;
	return UFFD_RESOLVE;
}

static uint64_t lib_faults(struct lib_minor *m)
{
	struct uffd_loop_stats s;
	uint64_t now, d;

	if (m->l) {
		uffd_loop_stats(m->l, &s);
		now = s.faults_minor;
	} else {
		now = __atomic_load_n(&m->sigbus_calls, __ATOMIC_RELAXED);
	}
	d = now - m->faults_seen;
	m->faults_seen = now;
	return d;
}

static double lib_rep(void *ctx, unsigned rep, struct lat *lat)
{
	struct lib_minor *m = ctx;
	size_t len = m->t.pages * PAGE;
	double us;

	(void)rep;
	if (uffd_region_zap(m->r, 0, len))
		return -1;
	lib_faults(m);
	us = touch_all(&m->t, lat);
	check_count(m->t.metric, "libuffd", lib_faults(m),
		    m->around ? (m->t.pages + AROUND_PAGES - 1) / AROUND_PAGES : m->t.pages);
	return us;
}

static void lib_close(struct lib_minor *m)
{
	uffd_loop_free(m->l);	/* before the region: its thread may still read */
	uffd_region_destroy(m->r);
	uffd_close(m->u);
}

/*
 * loop_opts NULL: SIGBUS mode. Else the loop with those options, on
 * nthreads threads of its own.
 */
static int lib_open(const struct bench_opts *o, struct lib_minor *m,
		    const struct uffd_loop_opts *lo, unsigned nthreads,
		    const struct uffd_handlers *h)
{
	const char *metric = m->t.metric;
	struct uffd_opts uo = { .size = sizeof(uo), .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = m->t.pages * PAGE,
				       .modes = UFFDIO_REGISTER_MODE_MINOR, .fd = -1,
				       .name = "bench" };
	int err;

	if (!lo)
		uo.want_features |= UFFD_FEATURE_SIGBUS;
	if ((err = uffd_open(&m->u, &uo)))
		goto fail;
	if ((err = uffd_region_create(m->u, &ro, &m->r)))
		goto fail;
	m->t.base = uffd_region_base(m->r);
	fill_pages(uffd_region_alias(m->r), 0, m->t.pages, m->t.seed);
	if (!lo)
		err = uffd_sigbus_add_region(m->r, sigbus_resolve, m);
	else if (!(err = uffd_loop_new(&m->l, lo)) &&
		 !(err = uffd_loop_add_region(m->l, m->r, h, m))) {
		place(true);
		err = uffd_loop_start(m->l, nthreads);
		place(false);
	}
	if (err)
		goto fail;
	return 0;
fail:
	bench_error(o, metric, "libuffd set-up failed (%d)", err);
	lib_close(m);
	return -1;
}

/* ---- baseline side ---- */

static double base_rep(void *ctx, unsigned rep, struct lat *lat)
{
	struct base_minor *bm = ctx;
	double us;

	(void)rep;
	if (madvise(bm->t.base, bm->t.pages * PAGE, MADV_DONTNEED))
		return -1;
	base_faults(bm->b);
	us = touch_all(&bm->t, lat);
	check_count(bm->t.metric, "the baseline", base_faults(bm->b), bm->t.pages);
	return us;
}

static void base_close(struct base_minor *bm)
{
	base_stop(bm->b);
	if (bm->t.base)
		munmap(bm->t.base, bm->t.pages * PAGE);
	if (bm->fd >= 0)
		close(bm->fd);
}

static int base_open_minor(const struct bench_opts *o, struct base_minor *bm)
{
	size_t len = bm->t.pages * PAGE;
	void *p;

	bm->fd = memfd_pattern("bench-base", len, bm->t.seed);
	if (bm->fd < 0)
		goto fail;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, bm->fd, 0);
	if (p == MAP_FAILED)
		goto fail;
	bm->t.base = p;
	bm->b = base_start(bm->t.metric, p, len, BASE_MINOR, UFFD_FEATURE_MINOR_SHMEM, NULL);
	if (!bm->b)
		goto fail;
	return 0;
fail:
	bench_error(o, bm->t.metric, "baseline set-up failed");
	base_close(bm);
	return -1;
}

/* ---- one MINOR metric: libuffd side as configured against the baseline ---- */

/* What the loop did, for the table: how much one read and one ioctl served. */
static const char *loop_note(struct lib_minor *m, const char *note, char *buf, size_t size)
{
	struct uffd_loop_stats st;

	if (!m->l)
		return note;
	uffd_loop_stats(m->l, &st);
	if (!st.reads || !st.resolve_ioctls)
		return note;
	snprintf(buf, size, "%s%sloop: %.2f faults/read, %.2f faults/ioctl", note ? note : "",
		 note ? "; " : "", (double)st.faults_minor / (double)st.reads,
		 (double)st.faults_minor / (double)st.resolve_ioctls);
	return buf;
}

struct minor_cfg {
	const char *metric;
	double target;
	size_t pages;
	unsigned touch_threads;
	const struct uffd_loop_opts *lo;	/* NULL: SIGBUS mode */
	unsigned loop_threads;
	const struct uffd_handlers *h;
	bool around;
	bool latencies;
	const char *unit;
	double scale;		/* figures in us per page times this */
	const char *note;
};

static int minor_metric(const struct bench_opts *o, const struct minor_cfg *c)
{
	struct touch t = { c->metric, NULL, c->pages, (uint64_t)now_us(), c->touch_threads };
	struct lib_minor m = { .t = t, .around = c->around };
	struct base_minor bm = { .t = t, .fd = -1 };
	struct lat ll = { 0 }, bl = { 0 };
	struct row row = { c->metric, 0, 0, c->unit, c->target, false, NULL, NULL, c->note };
	char note[160];
	int err = -1;

	if (lib_open(o, &m, c->lo, c->loop_threads, c->h))
		return -1;
	if (base_open_minor(o, &bm))
		goto out;
	if (bench_pair(o, &m, lib_rep, &bm, base_rep, &row.lib, &row.base,
		       c->latencies ? &ll : NULL, c->latencies ? &bl : NULL)) {
		bench_error(o, c->metric, "a repetition failed");
		goto out;
	}
	row.lib *= c->scale;
	row.base *= c->scale;
	row.note = loop_note(&m, c->note, note, sizeof(note));
	if (c->latencies) {
		row.lib_lat = &ll;
		row.base_lat = &bl;
	}
	bench_row(o, &row);
	err = 0;
out:
	base_close(&bm);
	lib_close(&m);
	lat_free(&ll);
	lat_free(&bl);
	return err;
}

int metric_minor_rt_1t(const struct bench_opts *o)
{
	struct uffd_loop_opts lo = { .size = sizeof(lo) };
	struct minor_cfg c = { "minor_rt_1t", 1.0, o->pages, 0, &lo, 1, NULL, false, true,
			       "us/fault", 1, NULL };

	return minor_metric(o, &c);
}

int metric_minor_rt_1t_spin(const struct bench_opts *o)
{
	struct uffd_loop_opts lo = { .size = sizeof(lo), .spin_us = o->spin_us };
	struct minor_cfg c = { "minor_rt_1t_spin", 0.5, o->pages, 0, &lo, 1, NULL, false, true,
			       "us/fault", 1, NULL };

	return minor_metric(o, &c);
}

int metric_minor_sigbus(const struct bench_opts *o)
{
	struct minor_cfg c = { "minor_sigbus", 0.2, o->pages, 0, NULL, 0, NULL, false, true,
			       "us/fault", 1, NULL };

	return minor_metric(o, &c);
}

int metric_minor_mt(const struct bench_opts *o)
{
	struct uffd_loop_opts lo = { .size = sizeof(lo), .spin_us = o->spin_us };
	struct minor_cfg c = { "minor_mt", 0.67, o->pages, MT_THREADS, &lo, 1, NULL, false, false,
			       "us/fault", 1, NULL };

	return minor_metric(o, &c);
}

int metric_fault_around(const struct bench_opts *o)
{
	static const struct uffd_handlers h = { .minor = widen };
	struct uffd_loop_opts lo = { .size = sizeof(lo) };
	struct minor_cfg c = { "fault_around", 0.1, o->around_mib * (1ul << 20) / PAGE, 0, &lo, 1,
			       &h, true, false, "ns/page", 1000, NULL };

	return minor_metric(o, &c);
}

/* ---- the physical floor: a minor fault on shmem, no userfaultfd ---- */

struct floor_ctx {
	const char *metric;
	char *base;
	size_t pages;
	uint64_t seed;
};

/*
 * Write touches: a read fault on shmem maps up to 16 neighbours as well
 * (fault-around), a write fault on a shared mapping maps exactly one page,
 * which is what one userfaultfd round trip resolves.
 */
static double floor_rep(void *ctx, unsigned rep, struct lat *lat)
{
	struct floor_ctx *f = ctx;
	uint64_t marker = 0xf100f100ull + rep;
	double us;

	if (madvise(f->base, f->pages * PAGE, MADV_DONTNEED))
		return -1;
	us = touch_write(f->metric, f->base, f->pages, f->seed, marker, lat);
	check_written(f->metric, f->base, f->pages, f->seed, marker);
	return us;
}

int metric_floor(const struct bench_opts *o)
{
	struct floor_ctx f = { "floor_minor", NULL, o->pages, (uint64_t)now_us() };
	struct lat l = { 0 };
	struct row row = { f.metric, 0, __builtin_nan(""), "us/fault", 0, true, &l, NULL,
			   "plain write fault on populated shmem, no userfaultfd" };
	int fd = memfd_pattern("bench-floor", f.pages * PAGE, f.seed), err = -1;
	void *p = MAP_FAILED;

	if (fd >= 0)
		p = mmap(NULL, f.pages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		bench_error(o, f.metric, "set-up failed");
		goto out;
	}
	f.base = p;
	if (bench_single(o, &f, floor_rep, &row.lib, &l)) {
		bench_error(o, f.metric, "a repetition failed");
		goto out;
	}
	bench_row(o, &row);
	err = 0;
out:
	if (p != MAP_FAILED)
		munmap(p, f.pages * PAGE);
	if (fd >= 0)
		close(fd);
	lat_free(&l);
	return err;
}

/* ---- the cost of a signal: the part of SIGBUS mode no library can avoid ---- */

static volatile sig_atomic_t signals_seen;

static void on_usr1(int sig)
{
	(void)sig;
	signals_seen++;
}

/* A signal sent to this thread, its handler, sigreturn: us per signal. */
static double signal_rep(void *ctx, unsigned rep, struct lat *lat)
{
	size_t n = *(size_t *)ctx;
	pid_t pid = getpid(), tid = gettid();
	sig_atomic_t before = signals_seen;
	double t0 = now_us();

	(void)rep;
	(void)lat;
	for (size_t i = 0; i < n; i++)
		syscall(SYS_tgkill, pid, tid, SIGUSR1);
	t0 = (now_us() - t0) / (double)n;
	if ((size_t)(signals_seen - before) != n)
		bench_fail("floor_signal", "%zu signals sent, %d handled", n, (int)(signals_seen - before));
	return t0;
}

int metric_floor_signal(const struct bench_opts *o)
{
	struct sigaction sa = { .sa_handler = on_usr1 }, old;
	struct row row = { "floor_signal", 0, __builtin_nan(""), "us/signal", 0, true, NULL, NULL,
			   "signal to self + empty handler + sigreturn" };
	size_t n = o->pages;
	int err = 0;

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, &old))
		return -1;
	if (bench_single(o, &n, signal_rep, &row.lib, NULL))
		err = -1;
	else
		bench_row(o, &row);
	sigaction(SIGUSR1, &old, NULL);
	return err;
}
