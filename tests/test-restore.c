/* SPDX-License-Identifier: MIT */
/*
 * Restoring memory from a file (uffd.h section 9): demand faults, record
 * and replay, merged traces, demand during a long fill, fill and detach,
 * pages given back during a restore, bad traces, huge pages. The memory
 * is this process's own: anonymous memory registered MISSING and declared
 * as a foreign region (as a handler process serves another's), and a
 * memfd region with an alias view (CONTINUE). Every touched page is
 * checked word by word against the snapshot's pattern.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"
#include "send-fds.h"
#include "source-internal.h"

#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define MINOR UFFDIO_REGISTER_MODE_MINOR

static uint64_t word(size_t page, size_t w)
{
	return ((uint64_t)page << 32 | w) ^ 0x5a5a5a5a00000000ull;
}

/* ---- the snapshot ---- */

struct snap {
	char dir[64];
	char path[96];
	int fd;
	size_t len, ps;
};

/* A file of npages pages of ps bytes with the pattern; cold: its page cache dropped. */
static void snap_make(struct snap *s, size_t npages, size_t ps, bool cold)
{
	size_t words = ps / 8;
	uint64_t *buf = malloc(ps);

	ck_assert_ptr_nonnull(buf);
	strcpy(s->dir, "/var/tmp/uffd-restore-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(s->dir));
	snprintf(s->path, sizeof(s->path), "%s/snapshot", s->dir);
	s->fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	ck_assert_int_ge(s->fd, 0);
	s->len = npages * ps;
	s->ps = ps;
	for (size_t p = 0; p < npages; p++) {
		for (size_t w = 0; w < words; w++)
			buf[w] = word(p, w);
		ck_assert_int_eq(pwrite(s->fd, buf, ps, (off_t)(p * ps)), (ssize_t)ps);
	}
	free(buf);
	if (cold) {
		ck_assert_int_eq(fdatasync(s->fd), 0);
		ck_assert_int_eq(posix_fadvise(s->fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	}
}

static void snap_path(const struct snap *s, const char *name, char *out, size_t n)
{
	snprintf(out, n, "%s/%s", s->dir, name);
}

static void snap_free(struct snap *s)
{
	char cmd[128];

	close(s->fd);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Every word of page p at mem (read through the fault). */
static void check_page(const char *mem, size_t ps, size_t p, bool zero)
{
	const volatile uint64_t *w = (const volatile uint64_t *)(mem + p * ps);

	for (size_t i = 0; i < ps / 8; i++) {
		uint64_t want = zero ? 0 : word(p, i);

		if (w[i] != want)
			ck_abort_msg("page %zu word %zu: 0x%llx, want 0x%llx", p, i,
				     (unsigned long long)w[i], (unsigned long long)want);
	}
}

/* ---- the served memory ---- */

struct env {
	struct snap snap;
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct uffd_restore *rs;
	char *mem;		/* what the guest touches */
	size_t len, ps;
	bool anon;		/* mem is our mapping (foreign region), else the region's base */
	int memfd;
};

static struct uffd *open_uffd(void)
{
	struct uffd_opts o = { .size = sizeof(o), .want_features = UFFD_FEATURES_DEFAULT |
			       UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP };
	struct uffd *u = NULL;
	int err = uffd_open(&u, &o);

	if (err == -EPERM || err == -EACCES)
		return NULL;
	ck_assert_msg(!err, "uffd_open: %s", uffd_last_error());
	return u;
}

/* Loop threads of the next env_*() (one unless a case says otherwise). */
static unsigned env_threads = 1;

/* The loop runs from the start (a restore may join a running loop): munmap waits for it. */
static void env_loop(struct env *e)
{
	ASSERT_OK(uffd_loop_new(&e->l, NULL));
	ASSERT_OK(uffd_loop_add(e->l, e->u, NULL, NULL));
	ASSERT_OK(uffd_loop_start(e->l, env_threads));
}

/* Anonymous memory, registered MISSING, served as a foreign region (fd -1). */
static bool env_anon(struct env *e, size_t npages, size_t ps, bool cold)
{
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .modes = MISSING, .fd = -1 };
	int huge = ps > harness_page_size() ? MAP_HUGETLB : 0;

	memset(e, 0, sizeof(*e));
	e->memfd = -1;
	if (!(e->u = open_uffd()))
		return false;
	e->len = npages * ps;
	e->ps = ps;
	e->anon = true;
	e->mem = mmap(NULL, e->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | huge, -1, 0);
	ck_assert_ptr_ne(e->mem, MAP_FAILED);
	ASSERT_OK(uffd_register(e->u, e->mem, e->len, MISSING, NULL));
	fo.owner_addr = (uintptr_t)e->mem;
	fo.length = e->len;
	fo.page_size = ps;
	ASSERT_OK(uffd_region_create_foreign(e->u, &fo, &e->r));
	snap_make(&e->snap, npages, ps, cold);
	env_loop(e);
	return true;
}

/* A memfd region registered MISSING|MINOR with its alias view: reads land in the alias, CONTINUE. */
static bool env_memfd(struct env *e, size_t npages, bool cold)
{
	struct uffd_region_opts ro = { .size = sizeof(ro), .modes = MISSING | MINOR, .fd = -1 };

	memset(e, 0, sizeof(*e));
	e->memfd = -1;
	if (!(e->u = open_uffd()))
		return false;
	if (!(uffd_features(e->u) & UFFD_FEATURE_MINOR_SHMEM)) {
		uffd_close(e->u);
		return false;
	}
	e->ps = harness_page_size();
	e->len = ro.length = npages * e->ps;
	ASSERT_OK(uffd_region_create(e->u, &ro, &e->r));
	e->mem = uffd_region_base(e->r);
	snap_make(&e->snap, npages, e->ps, cold);
	env_loop(e);
	return true;
}

static void env_restore(struct env *e, const struct uffd_restore_opts *o)
{
	ASSERT_OK(uffd_restore_new(&e->rs, o));
	ASSERT_OK(uffd_restore_add_region(e->rs, e->r, e->snap.fd, 0));
}

static void env_start(struct env *e)
{
	ASSERT_OK(uffd_restore_start(e->rs, e->l));
}

static void env_free(struct env *e)
{
	uffd_restore_free(e->rs);
	/* munmap waits until its UNMAP event is read: while the loop runs. */
	if (e->anon)
		munmap(e->mem, e->len);
	uffd_loop_free(e->l);
	uffd_region_destroy(e->r);
	uffd_close(e->u);
	snap_free(&e->snap);
}

static struct uffd_restore_stats stats_of(struct uffd_restore *rs)
{
	struct uffd_restore_stats s = { .size = sizeof(s) };

	ASSERT_OK(uffd_restore_stats(rs, &s));
	return s;
}

static uint64_t hist_sum(const uint64_t *h)
{
	uint64_t n = 0;

	for (int i = 0; i < UFFD_HIST_BUCKETS; i++)
		n += h[i];
	return n;
}

/* A permutation of [0, n) from seed (xorshift). */
static void shuffle(size_t *v, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		v[i] = i;
	for (size_t i = n; i > 1; i--) {
		size_t j;

		seed ^= seed << 13;
		seed ^= seed >> 7;
		seed ^= seed << 17;
		j = (size_t)(seed % i);
		size_t t = v[i - 1];
		v[i - 1] = v[j];
		v[j] = t;
	}
}

/* Waits until pred(rs) or the deadline; true if it held. */
static bool wait_for(struct uffd_restore *rs, bool (*pred)(const struct uffd_restore_stats *, uint64_t),
		     uint64_t arg, double seconds)
{
	double end = harness_now() + seconds;

	while (harness_now() < end) {
		struct uffd_restore_stats s = stats_of(rs);

		if (pred(&s, arg))
			return true;
		usleep(1000);
	}
	return false;
}

static bool present_at_least(const struct uffd_restore_stats *s, uint64_t n)
{
	return s->pages_present >= n;
}

#define SKIP_NO_UFFD() SKIP_TEST("userfaultfd is not available to this process (or MINOR_SHMEM is missing)")
/* The restore thread sleeps in io_uring_enter(2), where valgrind keeps its thread lock. */
#define SKIP_VALGRIND() SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock, and guest threads block in plain loads")

/* ---- demand only ---- */

static void demand_case(bool memfd, bool cold)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_NO_AROUND };
	struct uffd_restore_stats s;
	size_t npages = 96, touched = 0;
	struct env e;

	SKIP_VALGRIND();

	if (!(memfd ? env_memfd(&e, npages, cold) : env_anon(&e, npages, harness_page_size(), cold)))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	for (size_t p = 0; p < npages; p += 3, touched++)
		check_page(e.mem, e.ps, p, false);
	for (size_t p = 0; p < npages; p += 3)	/* present now: no more faults */
		check_page(e.mem, e.ps, p, false);
	/* The resolution wakes the thread before the counters move: let them settle. */
	ck_assert(wait_for(e.rs, present_at_least, touched, 2));
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.faults[UFFD_FAULT_MISSING] + s.faults[UFFD_FAULT_MINOR], touched);
	ck_assert_uint_eq(s.pages_demand, touched);
	ck_assert_uint_eq(s.pages_present, touched);
	ck_assert_uint_eq(s.pages_total, npages);
	ck_assert_uint_eq(s.bytes_read, touched * e.ps);
	ck_assert_uint_eq(s.pages_prefetched + s.pages_filled + s.read_errors, 0);
	ck_assert_uint_eq(hist_sum(s.latency[UFFD_FAULT_MISSING]) + hist_sum(s.latency[UFFD_FAULT_MINOR]), touched);
	ck_assert_uint_eq(s.complete_ns, 0);
	ck_assert_int_eq(uffd_restore_wait(e.rs, 10), -ETIMEDOUT);
	fprintf(stderr, "demand %s %s: p50 %llu ns p99 %llu ns, %llu faults\n", memfd ? "memfd" : "anon",
		cold ? "cold" : "warm",
		(unsigned long long)uffd_hist_quantile(s.latency[memfd ? UFFD_FAULT_MISSING : UFFD_FAULT_MISSING], 0.5),
		(unsigned long long)uffd_hist_quantile(s.latency[UFFD_FAULT_MISSING], 0.99),
		(unsigned long long)touched);
	env_free(&e);
}

START_TEST(demand_anon_warm) { demand_case(false, false); }
END_TEST
START_TEST(demand_anon_cold) { demand_case(false, true); }
END_TEST
START_TEST(demand_memfd_cold) { demand_case(true, true); }
END_TEST

/* ---- demand fault-around ---- */

static bool demand_at_least(const struct uffd_restore_stats *s, uint64_t n)
{
	return s->pages_demand >= n;
}

static uint64_t faults_of(struct uffd_restore *rs)
{
	struct uffd_restore_stats s = stats_of(rs);

	return s.faults[UFFD_FAULT_MISSING] + s.faults[UFFD_FAULT_MINOR];
}

/*
 * One fault brings its aligned 64 KiB window in: the
 * neighbours read right with no fault of their own. A fault right after
 * that window doubles it (sequential); a window is cut at the region's
 * end. Every byte of every page checked.
 */
static void around_case(bool memfd, bool cold)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .fault_around = 64u << 10 };
	size_t npages = 72, w;
	struct uffd_restore_stats s;
	struct env e;

	SKIP_VALGRIND();

	if (!(memfd ? env_memfd(&e, npages, cold) : env_anon(&e, npages, harness_page_size(), cold)))
		SKIP_NO_UFFD();
	if (e.ps != 4096) {
		env_free(&e);
		SKIP_TEST("the windows below are counted in 4 KiB pages");
	}
	w = (64u << 10) / e.ps;
	env_restore(&e, &o);
	env_start(&e);
	check_page(e.mem, e.ps, w + 5, false);		/* window [w, 2w) */
	ck_assert(wait_for(e.rs, demand_at_least, w, 2));
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_demand, w);
	ck_assert_uint_eq(s.pages_around, w - 1);
	ck_assert_uint_eq(s.pages_present, w);
	for (size_t p = w; p < 2 * w; p++)
		check_page(e.mem, e.ps, p, false);
	ck_assert_uint_eq(faults_of(e.rs), 1);
	check_page(e.mem, e.ps, 2 * w, false);		/* sequential: [2w, 4w) */
	ck_assert(wait_for(e.rs, demand_at_least, 3 * w, 2));
	for (size_t p = 2 * w; p < 4 * w; p++)
		check_page(e.mem, e.ps, p, false);
	ck_assert_uint_eq(faults_of(e.rs), 2);
	check_page(e.mem, e.ps, npages - 2, false);	/* [4w, npages): cut at the end */
	ck_assert(wait_for(e.rs, demand_at_least, npages - w, 2));
	for (size_t p = 4 * w; p < npages; p++)
		check_page(e.mem, e.ps, p, false);
	ck_assert_uint_eq(faults_of(e.rs), 3);
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_demand, npages - w);
	ck_assert_uint_eq(s.pages_present, npages - w);	/* [0, w) never touched: absent */
	ck_assert_uint_eq(s.bytes_read, (npages - w) * e.ps);
	for (size_t p = 0; p < npages; p++)	/* [0, w): one fault more */
		check_page(e.mem, e.ps, p, false);
	ck_assert_uint_eq(faults_of(e.rs), 4);
	ck_assert(wait_for(e.rs, demand_at_least, npages, 2));
	ck_assert_uint_eq(stats_of(e.rs).read_errors, 0);
	env_free(&e);
}

START_TEST(around_anon_warm) { around_case(false, false); }
END_TEST
START_TEST(around_anon_cold) { around_case(false, true); }
END_TEST
START_TEST(around_memfd_warm) { around_case(true, false); }
END_TEST
START_TEST(around_memfd_cold) { around_case(true, true); }
END_TEST

/*
 * A window never covers a page that is not absent: cut at a present page
 * (here a sequential window meeting an earlier one). A region whose owner
 * gave pages back (REMOVE) gets no windows any more: a fault brings its
 * page only, and a given-back page reads zeros, with no read.
 */
START_TEST(around_stops_at_present_and_given_back)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .fault_around = 16 * 4096 };
	size_t npages = 64;
	struct uffd_restore_stats s;
	uint64_t f;
	struct env e;

	SKIP_VALGRIND();

	if (!env_anon(&e, npages, harness_page_size(), false))
		SKIP_NO_UFFD();
	if (!(uffd_features(e.u) & UFFD_FEATURE_EVENT_REMOVE) || e.ps != 4096) {
		env_free(&e);
		SKIP_TEST("needs UFFD_FEATURE_EVENT_REMOVE and 4 KiB pages");
	}
	env_restore(&e, &o);
	env_start(&e);
	check_page(e.mem, e.ps, 40, false);	/* [32, 48) */
	ck_assert(wait_for(e.rs, demand_at_least, 16, 2));
	check_page(e.mem, e.ps, 0, false);	/* [0, 16) */
	ck_assert(wait_for(e.rs, demand_at_least, 32, 2));
	check_page(e.mem, e.ps, 16, false);	/* sequential [16, 48), cut at 32 */
	ck_assert(wait_for(e.rs, demand_at_least, 48, 2));
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_demand, 48);
	ck_assert_uint_eq(s.pages_around, 45);
	ck_assert_uint_eq(s.bytes_read, 48 * e.ps);
	for (size_t p = 0; p < 48; p++)
		check_page(e.mem, e.ps, p, false);
	ck_assert_uint_eq(faults_of(e.rs), 3);
	ck_assert_int_eq(madvise(e.mem + 50 * e.ps, e.ps, MADV_DONTNEED), 0);	/* page 50 given back */
	check_page(e.mem, e.ps, 52, false);	/* its page only */
	ck_assert(wait_for(e.rs, demand_at_least, 49, 2));
	check_page(e.mem, e.ps, 50, true);	/* zeros, no read */
	check_page(e.mem, e.ps, 51, false);
	ck_assert(wait_for(e.rs, demand_at_least, 50, 2));
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_demand, 50);
	ck_assert_uint_eq(s.pages_around, 45);
	ck_assert_uint_eq(s.bytes_read, 50 * e.ps);
	f = faults_of(e.rs);
	for (size_t p = 0; p < 53; p++)	/* present but 48 and 49: no fault */
		if (p < 48 || p > 49)
			check_page(e.mem, e.ps, p, p == 50);
	ck_assert_uint_eq(faults_of(e.rs), f);
	check_page(e.mem, e.ps, 48, false);	/* one page each */
	check_page(e.mem, e.ps, 49, false);
	ck_assert_uint_eq(faults_of(e.rs), f + 2);
	ck_assert(wait_for(e.rs, demand_at_least, 52, 2));
	ck_assert_uint_eq(stats_of(e.rs).pages_around, 45);
	env_free(&e);
}
END_TEST

/* UFFD_RESTORE_NO_AROUND and small windows: one page per fault; bad windows refused. */
START_TEST(around_off)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_NO_AROUND };
	struct uffd_restore *rs;
	struct env e;

	SKIP_VALGRIND();

	o.fault_around = 3 * 4096;
	ASSERT_ERR(uffd_restore_new(&rs, &o), -EINVAL, "power of two");
	o.fault_around = 2u << 20;
	ASSERT_ERR(uffd_restore_new(&rs, &o), -EINVAL, "power of two");
	o.fault_around = 0;
	if (!env_anon(&e, 32, harness_page_size(), false))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	for (size_t p = 0; p < 32; p += 2)
		check_page(e.mem, e.ps, p, false);
	ck_assert(wait_for(e.rs, demand_at_least, 16, 2));
	ck_assert_uint_eq(stats_of(e.rs).pages_demand, 16);
	ck_assert_uint_eq(stats_of(e.rs).pages_around, 0);
	ck_assert_uint_eq(faults_of(e.rs), 16);
	env_free(&e);
}
END_TEST

/* ---- record, then replay ---- */

#define RR_PAGES 512
#define RR_SET 128

/* Touches the set (every 4th page) in the order of seed; returns the demand faults. */
static uint64_t rr_run(const char *save, const char *const *load, size_t nload, uint64_t seed,
		       size_t stride, size_t phase, uint64_t *prefetched)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = save ? UFFD_RESTORE_RECORD : 0 };
	size_t order[RR_SET], nset = 0;
	struct uffd_restore_stats s;
	struct env e;
	uint64_t faults;

	if (!env_anon(&e, RR_PAGES, harness_page_size(), true))
		return UINT64_MAX;
	env_restore(&e, &o);
	for (size_t i = 0; i < nload; i++)
		ASSERT_OK(uffd_restore_load_trace(e.rs, load[i]));
	env_start(&e);
	if (nload)	/* the replay brings the set in ahead of the guest */
		ck_assert_msg(wait_for(e.rs, present_at_least, *prefetched, 5), "the replay did not finish");
	shuffle(order, RR_SET, seed);
	for (size_t k = 0; k < RR_SET; k++, nset++)
		check_page(e.mem, e.ps, order[k] * stride + phase, false);
	s = stats_of(e.rs);
	faults = s.faults[UFFD_FAULT_MISSING];
	if (save) {
		ck_assert_uint_eq(s.pages_recorded, nset);
		ASSERT_OK(uffd_restore_save_trace(e.rs, save));
	}
	*prefetched = s.pages_prefetched;
	env_free(&e);
	return faults;
}

START_TEST(record_replay)
{
	char a[160], b[160];
	struct snap tmp;
	const char *load[2];
	uint64_t first, second, pre = 0;

	SKIP_VALGRIND();

	snap_make(&tmp, 1, harness_page_size(), false);
	snap_path(&tmp, "a.trace", a, sizeof(a));
	snap_path(&tmp, "b.trace", b, sizeof(b));
	first = rr_run(a, NULL, 0, 1, 4, 0, &pre);
	if (first == UINT64_MAX)
		SKIP_NO_UFFD();
	ck_assert_uint_eq(first, RR_SET);
	load[0] = a;
	pre = RR_SET;
	second = rr_run(NULL, load, 1, 2, 4, 0, &pre);
	ck_assert_uint_eq(pre, RR_SET);
	ck_assert_msg(second * 10 <= first, "replay: %llu demand faults, first run %llu",
		      (unsigned long long)second, (unsigned long long)first);
	fprintf(stderr, "record/replay: %llu demand faults, then %llu with the trace (%llu prefetched)\n",
		(unsigned long long)first, (unsigned long long)second, (unsigned long long)pre);

	/* Two traces of different sets merge: their union is prefetched. */
	pre = 0;
	rr_run(b, NULL, 0, 3, 4, 1, &pre);
	load[1] = b;
	pre = 2 * RR_SET;
	second = rr_run(NULL, load, 2, 4, 4, 1, &pre);
	ck_assert_uint_eq(pre, 2 * RR_SET);
	ck_assert_uint_eq(second, 0);
	snap_free(&tmp);
}
END_TEST

/* ---- a demand fault during a long, rate-limited fill ---- */

START_TEST(demand_during_fill)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .fill_rate = 256 << 10, .max_read = 16 << 10, .queue_depth = 2 };
	size_t npages = 2048;	/* 8 MiB at 256 KiB/s: 32 s */
	struct uffd_restore_stats s;
	double t0, worst = 0;
	struct env e;

	SKIP_VALGRIND();

	if (!env_anon(&e, npages, harness_page_size(), true))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	usleep(100000);
	for (size_t p = npages - 1; p > npages - 200; p -= 9) {
		t0 = harness_now();
		check_page(e.mem, e.ps, p, false);
		if (harness_now() - t0 > worst)
			worst = harness_now() - t0;
	}
	s = stats_of(e.rs);
	ck_assert_msg(worst < 1.0, "a demand fault took %.3f s during the fill", worst);
	ck_assert_uint_gt(s.pages_filled, 0);
	ck_assert_uint_lt(s.pages_present, npages);
	fprintf(stderr, "demand during fill: worst %.0f us, %llu filled, p99 %llu ns\n", worst * 1e6,
		(unsigned long long)s.pages_filled,
		(unsigned long long)uffd_hist_quantile(s.latency[UFFD_FAULT_MISSING], 0.99));
	env_free(&e);	/* freed mid-fill: no read lands in freed buffers, nothing hangs */
}
END_TEST

/* ---- fill and detach ---- */

static atomic_int completions;

static void on_complete(void *ctx, struct uffd_restore *rs)
{
	ck_assert_ptr_nonnull(rs);
	ck_assert_ptr_eq(ctx, &completions);
	atomic_fetch_add(&completions, 1);
}

/*
 * Whether /proc/self/smaps shows the mapping holding addr registered for
 * MISSING faults ("um"). Holding, not starting at: once unregistered, the
 * mapping may merge with a neighbour.
 */
static bool smaps_um(const void *addr)
{
	char line[512];
	bool in = false, um = false;
	unsigned long a, b, x = (unsigned long)(uintptr_t)addr;
	FILE *f = fopen("/proc/self/smaps", "re");

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f)) {
		if (!in && sscanf(line, "%lx-%lx ", &a, &b) == 2 && a <= x && x < b)
			in = true;
		else if (in && !strncmp(line, "VmFlags:", 8)) {
			um = strstr(line, " um") != NULL;
			break;
		}
	}
	fclose(f);
	ck_assert_msg(in, "no mapping at %p in smaps", addr);
	return um;
}

static void fill_detach_case(bool memfd)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH,
				       .on_complete = on_complete, .ctx = &completions };
	struct uffd_loop_counters c0 = { .size = sizeof(c0) }, c1 = { .size = sizeof(c1) };
	size_t npages = 1024;
	struct uffd_restore_stats s;
	struct env e;

	SKIP_VALGRIND();

	atomic_store(&completions, 0);
	if (!(memfd ? env_memfd(&e, npages, true) : env_anon(&e, npages, harness_page_size(), true)))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	check_page(e.mem, e.ps, 700, false);	/* a demand fault among the fill */
	ASSERT_OK(uffd_restore_wait(e.rs, 10000));
	ck_assert_int_eq(atomic_load(&completions), 1);
	ck_assert(!smaps_um(e.mem));
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_gt(s.complete_ns, 0);
	ck_assert_uint_eq(s.pages_filled + s.pages_demand, npages);
	uffd_loop_counters(e.l, &c0);
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, false);
	uffd_loop_counters(e.l, &c1);
	ck_assert_uint_eq(c1.faults_missing + c1.faults_minor, c0.faults_missing + c0.faults_minor);
	ASSERT_OK(uffd_restore_wait(e.rs, 0));
	fprintf(stderr, "fill+detach %s: %llu pages in %.1f ms\n", memfd ? "memfd" : "anon",
		(unsigned long long)npages, (double)s.complete_ns / 1e6);
	env_free(&e);
	ck_assert_int_eq(atomic_load(&completions), 1);
}

START_TEST(fill_detach_anon) { fill_detach_case(false); }
END_TEST
START_TEST(fill_detach_memfd) { fill_detach_case(true); }
END_TEST

/*
 * DETACH without FILL: the guest touches every page and the loop thread
 * serves each from the page cache; the restore must still notice the last
 * one, detach and call on_complete.
 */
START_TEST(detach_after_demand)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_DETACH,
				       .on_complete = on_complete, .ctx = &completions };
	size_t npages = 256;
	struct uffd_restore_stats s;
	struct env e;

	SKIP_VALGRIND();

	atomic_store(&completions, 0);
	if (!env_anon(&e, npages, harness_page_size(), false))	/* warm: served on the loop thread */
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, false);
	ASSERT_OK(uffd_restore_wait(e.rs, 5000));
	ck_assert_int_eq(atomic_load(&completions), 1);
	ck_assert(!smaps_um(e.mem));
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_eq(s.pages_demand, npages);
	ck_assert_uint_gt(s.complete_ns, 0);
	env_free(&e);
}
END_TEST

/*
 * uffd_restore_finish() on a demand-only restore: it fills and detaches as
 * if made with FILL|DETACH; when every page came in by demand already, it
 * detaches all the same.
 */
START_TEST(finish)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .on_complete = on_complete, .ctx = &completions };
	size_t npages = 512;
	struct uffd_restore_stats s;
	struct env e;

	SKIP_VALGRIND();

	atomic_store(&completions, 0);
	if (!env_anon(&e, npages, harness_page_size(), true))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	ck_assert_int_eq(uffd_restore_finish(e.rs), -EINVAL);	/* not started */
	ck_assert_int_eq(uffd_restore_finish(NULL), -EINVAL);
	env_start(&e);
	check_page(e.mem, e.ps, 100, false);
	ck_assert_int_eq(uffd_restore_wait(e.rs, 50), -ETIMEDOUT);	/* no fill of its own */
	ASSERT_OK(uffd_restore_finish(e.rs));
	ASSERT_OK(uffd_restore_wait(e.rs, 10000));
	ck_assert_int_eq(atomic_load(&completions), 1);
	ck_assert(!smaps_um(e.mem));
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_eq(s.pages_filled + s.pages_demand, npages);
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, false);
	ASSERT_OK(uffd_restore_finish(e.rs));	/* again: nothing changes */
	env_free(&e);

	/* Every page by demand first. */
	atomic_store(&completions, 0);
	if (!env_anon(&e, 16, harness_page_size(), false))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	for (size_t p = 0; p < 16; p++)
		check_page(e.mem, e.ps, p, false);
	ck_assert(wait_for(e.rs, present_at_least, 16, 2));
	ck_assert(smaps_um(e.mem));
	ASSERT_OK(uffd_restore_finish(e.rs));
	ASSERT_OK(uffd_restore_wait(e.rs, 10000));
	ck_assert_int_eq(atomic_load(&completions), 1);
	ck_assert(!smaps_um(e.mem));
	env_free(&e);
}
END_TEST

/* ---- pages given back during the restore ---- */

START_TEST(remove_during_restore)
{
	/* 1 MiB at 2 MiB/s: the restore is still under way when the pages are given back. */
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH,
				       .fill_rate = 2 << 20, .max_read = 16 << 10, .queue_depth = 2 };
	size_t npages = 256, ps;
	struct uffd_restore_stats s;
	struct env e;

	SKIP_VALGRIND();

	if (!env_anon(&e, npages, harness_page_size(), true))
		SKIP_NO_UFFD();
	if (!(uffd_features(e.u) & UFFD_FEATURE_EVENT_REMOVE)) {
		env_free(&e);
		SKIP_TEST("UFFD_FEATURE_EVENT_REMOVE is not available");
	}
	ps = e.ps;
	env_restore(&e, &o);
	env_start(&e);
	for (size_t p = 0; p < 16; p++)
		check_page(e.mem, ps, p, false);
	/* Pages 8..39 given back: touched ones and untouched ones read zeros from now on. */
	ck_assert_uint_eq(stats_of(e.rs).complete_ns, 0);
	ck_assert_int_eq(madvise(e.mem + 8 * ps, 32 * ps, MADV_DONTNEED), 0);
	for (size_t p = 0; p < 48; p++)
		check_page(e.mem, ps, p, p >= 8 && p < 40);
	ASSERT_OK(uffd_restore_wait(e.rs, 10000));
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, ps, p, p >= 8 && p < 40);
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_ge(s.pages_zero, 1);
	env_free(&e);
}
END_TEST

/* ---- a fill while pages are given back ---- */

/* Gives back every `stride`-th page of mem, one madvise each, until stop; then once more. */
struct giver {
	char *mem;
	size_t ps, npages, stride;
	int advice;
	atomic_bool stop;
	atomic_uint_fast64_t passes;
};

static void give_back_pass(struct giver *g)
{
	for (size_t p = 0; p < g->npages; p += g->stride)
		ck_assert_int_eq(madvise(g->mem + p * g->ps, g->ps, g->advice), 0);
	atomic_fetch_add(&g->passes, 1);
}

static void *giver_main(void *arg)
{
	struct giver *g = arg;

	while (!atomic_load(&g->stop))
		give_back_pass(g);
	give_back_pass(g);	/* after the restore: every such page was given back since */
	return NULL;
}

/* Every page: zeros where given back, the snapshot elsewhere; the count of given-back pages with data. */
static size_t check_given_back(const char *mem, size_t ps, size_t npages, size_t stride)
{
	size_t stale = 0;

	for (size_t p = 0; p < npages; p++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(mem + p * ps);

		if (p % stride) {
			check_page(mem, ps, p, false);
			continue;
		}
		for (size_t i = 0; i < ps / 8; i++)
			if (w[i]) {
				stale++;
				break;
			}
	}
	return stale;
}

/*
 * Resolutions of the fill meet -EAGAIN while REMOVE events are pending,
 * often twice in a row: each retry must come, or the run's pages stay in
 * flight, the restore never completes and faults on them hang.
 */
START_TEST(fill_while_given_back)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .max_read = 64 << 10, .queue_depth = 2 };
	size_t npages = 2048, stride = 8;
	uint64_t retried = 0;

	SKIP_VALGRIND();

	for (int it = 0; it < 12; it++) {
		struct giver g = { .npages = npages, .stride = stride, .advice = MADV_DONTNEED };
		struct uffd_restore_stats s;
		void *th;
		struct env e;
		int err;

		if (!env_anon(&e, npages, harness_page_size(), false))
			SKIP_NO_UFFD();
		if (!(uffd_features(e.u) & UFFD_FEATURE_EVENT_REMOVE)) {
			env_free(&e);
			SKIP_TEST("UFFD_FEATURE_EVENT_REMOVE is not available");
		}
		g.mem = e.mem;
		g.ps = e.ps;
		env_restore(&e, &o);
		th = harness_thread_start(giver_main, &g);
		while (!atomic_load(&g.passes))
			usleep(100);
		env_start(&e);
		err = uffd_restore_wait(e.rs, 10000);
		s = stats_of(e.rs);
		atomic_store(&g.stop, true);
		harness_thread_join(th);
		ck_assert_msg(!err, "run %d: %s (%llu of %llu pages, %llu given-back passes)", it,
			      uffd_last_error(), (unsigned long long)s.pages_present,
			      (unsigned long long)s.pages_total, (unsigned long long)atomic_load(&g.passes));
		ck_assert_uint_eq(s.pages_present, npages);
		ck_assert_uint_eq(s.read_errors, 0);
		ck_assert_uint_eq(check_given_back(e.mem, e.ps, npages, stride), 0);
		retried += atomic_load(&g.passes);
		env_free(&e);
	}
	fprintf(stderr, "fill while given back: 12 restores complete, %llu passes of MADV_DONTNEED\n",
		(unsigned long long)retried);
}
END_TEST

/* ---- pages given back while this process forks ---- */

/*
 * A fork() shuts the loop's gate from its prepare step to its parent step:
 * messages read meanwhile wait there before any handler runs. This prepare
 * hook, registered before the library's and so run after it (the gate
 * shut), gives pages back and lets the fill run, then lets the fork go on.
 */
static struct {
	atomic_bool armed;
	char *mem;
	size_t ps, first, n, total;
	struct uffd_restore *rs;
	uint64_t events_before, events_after;
	int madvise_err;
	bool filled;
} fg;

static atomic_uint_fast64_t events_seen;

static void count_event(void *ctx, struct uffd *u, const struct uffd_event *ev)
{
	(void)ctx;
	(void)u;
	(void)ev;
	atomic_fetch_add(&events_seen, 1);
}

/* In the forking thread, before clone(): no Check call (its lock may be held by no one, but the child inherits it). */
static void fork_prepare(void)
{
	struct timespec nap = { .tv_nsec = 1000000 };

	if (!atomic_exchange(&fg.armed, false))
		return;
	fg.events_before = atomic_load(&events_seen);
	fg.madvise_err = madvise(fg.mem + fg.first * fg.ps, fg.n * fg.ps, MADV_DONTNEED) ? errno : 0;
	fg.events_after = atomic_load(&events_seen);
	for (int i = 0; i < 5000 && !fg.filled; i++) {
		struct uffd_restore_stats st = { .size = sizeof(st) };

		fg.filled = !uffd_restore_stats(fg.rs, &st) && st.pages_present == fg.total;
		if (!fg.filled)
			nanosleep(&nap, NULL);
	}
}

/*
 * The kernel zaps given-back pages when their REMOVE message is read; read
 * while a fork holds the gate, the REMOVE reaches the handlers only after
 * the fork. The fill runs meanwhile and must not map the file's contents
 * on those pages: each of them reads zeros.
 */
START_TEST(given_back_during_fork)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .fill_rate = 10 << 20, .max_read = 16 << 10, .queue_depth = 2 };
	struct uffd_watch_opts wo = { .size = sizeof(wo), .event = count_event, .owner_fd = -1 };
	size_t npages = 1024, stale = 0;
	struct env e;
	pid_t pid;
	int st;

	SKIP_VALGRIND();

	/* Before any loop exists: the library's fork hooks come after this one, and run before it. */
	ck_assert_int_eq(pthread_atfork(fork_prepare, NULL, NULL), 0);
	if (!env_anon(&e, npages, harness_page_size(), false))
		SKIP_NO_UFFD();
	if (!(uffd_features(e.u) & UFFD_FEATURE_EVENT_REMOVE)) {
		env_free(&e);
		SKIP_TEST("UFFD_FEATURE_EVENT_REMOVE is not available");
	}
	/* The watch again, counting the events its handlers see. */
	ASSERT_OK(uffd_loop_remove(e.l, e.u));
	ASSERT_OK(uffd_loop_add_opts(e.l, e.u, NULL, NULL, &wo));
	env_restore(&e, &o);
	env_start(&e);
	/* The last 128 pages, which the fill (at 10 MB/s from page 0) reaches in the fork's prepare step. */
	fg.mem = e.mem;
	fg.ps = e.ps;
	fg.first = npages - 128;
	fg.n = 128;
	fg.total = npages;
	fg.rs = e.rs;
	atomic_store(&fg.armed, true);
	pid = fork();
	if (!pid)
		_exit(0);
	ck_assert_int_gt(pid, 0);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(!fg.madvise_err, "madvise: %s", strerror(fg.madvise_err));
	ck_assert_msg(fg.events_after == fg.events_before,
		      "the REMOVE reached the handlers during the fork: the gate was open (fork hooks in another order?)");
	ck_assert_msg(fg.filled, "the fill did not complete during the fork's prepare step");
	ASSERT_OK(uffd_restore_wait(e.rs, 10000));
	for (size_t p = fg.first; p < npages; p++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(e.mem + p * e.ps);

		stale += w[0] != 0 || w[e.ps / 8 - 1] != 0;
	}
	ck_assert_msg(stale == 0, "%zu of 128 given-back pages came back with the snapshot's data", stale);
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, p >= fg.first);
	env_free(&e);
}
END_TEST

/* ---- a REMOVE over two adjacent regions ---- */

START_TEST(given_back_across_regions)
{
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .modes = MISSING, .fd = -1 };
	struct uffd_restore_opts o = { .size = sizeof(o) };
	size_t half = 32, npages = 2 * half, stale = 0;
	struct uffd_region *r2;
	struct env e;

	SKIP_VALGRIND();

	if (!env_anon(&e, npages, harness_page_size(), false))
		SKIP_NO_UFFD();
	if (!(uffd_features(e.u) & UFFD_FEATURE_EVENT_REMOVE)) {
		env_free(&e);
		SKIP_TEST("UFFD_FEATURE_EVENT_REMOVE is not available");
	}
	/* The registered range as two regions, side by side, each from its part of the file. */
	uffd_region_destroy(e.r);
	fo.owner_addr = (uintptr_t)e.mem;
	fo.length = half * e.ps;
	fo.page_size = e.ps;
	ASSERT_OK(uffd_region_create_foreign(e.u, &fo, &e.r));
	fo.owner_addr += half * e.ps;
	ASSERT_OK(uffd_region_create_foreign(e.u, &fo, &r2));
	ASSERT_OK(uffd_restore_new(&e.rs, &o));
	ASSERT_OK(uffd_restore_add_region(e.rs, e.r, e.snap.fd, 0));
	ASSERT_OK(uffd_restore_add_region(e.rs, r2, e.snap.fd, half * e.ps));
	env_start(&e);
	check_page(e.mem, e.ps, half - 8, false);
	check_page(e.mem, e.ps, half + 7, false);
	/* Pages half-8 .. half+7, half of them never touched, given back in one call. */
	ck_assert_int_eq(madvise(e.mem + (half - 8) * e.ps, 16 * e.ps, MADV_DONTNEED), 0);
	for (size_t p = half - 8; p < half + 8; p++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(e.mem + p * e.ps);

		stale += w[0] != 0 || w[e.ps / 8 - 1] != 0;
	}
	ck_assert_msg(stale == 0, "%zu of 16 given-back pages came back with the snapshot's data", stale);
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, p >= half - 8 && p < half + 8);
	uffd_restore_free(e.rs);
	e.rs = NULL;
	uffd_region_destroy(r2);
	env_free(&e);
}
END_TEST

/* ---- a reader held up between its read of a REMOVE and the hooks ---- */

#ifdef LIBUFFD_TEST_HOOKS
/* The white-box build's hook (src/internal.h). */
extern void (*uffd__test_read_early)(const struct uffd_msg *m, size_t n);

static struct {
	uint64_t start;		/* the REMOVE to hold up */
	atomic_int held;
	atomic_bool release;
} hold;

/* On a loop thread: the read that brought the REMOVE waits (2 s at most) before its early step. */
static void hold_remove(const struct uffd_msg *m, size_t n)
{
	struct timespec nap = { .tv_nsec = 1000000 };

	for (size_t i = 0; i < n; i++) {
		if (m[i].event != UFFD_EVENT_REMOVE || m[i].arg.remove.start != hold.start)
			continue;
		atomic_fetch_add(&hold.held, 1);
		for (int t = 0; t < 2000 && !atomic_load(&hold.release); t++)
			nanosleep(&nap, NULL);
	}
}
#endif

#define HELD_PAGES 8

/* Reads the first and last word of each page, as a guest thread would. */
struct held_toucher {
	const char *mem;
	size_t ps, first;
	uint64_t seen[HELD_PAGES][2];
	atomic_bool done;
};

static void *toucher_pages(void *arg)
{
	struct held_toucher *t = arg;

	for (size_t p = 0; p < HELD_PAGES; p++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(t->mem + (t->first + p) * t->ps);

		t->seen[p][0] = w[0];
		t->seen[p][1] = w[t->ps / 8 - 1];
	}
	atomic_store(&t->done, true);
	return NULL;
}

/*
 * The kernel zaps given-back pages as soon as their REMOVE is read, and
 * lets a COPY in right after, while the reading loop thread has yet to
 * mark them given back. Here that thread is held up there (the white-box
 * hook) while a guest thread touches those pages, never touched before:
 * the other loop thread serves the faults, and must not map the file's
 * data. They read zeros, held up or not.
 */
START_TEST(given_back_reader_held)
{
	struct uffd_restore_opts o = { .size = sizeof(o) };
	struct held_toucher t = { .first = 16 };
	size_t npages = 64, stale = 0;
	struct env e;
	void *th;

	SKIP_VALGRIND();
#ifndef LIBUFFD_TEST_HOOKS
	SKIP_TEST("needs the test hooks of the white-box build (LIBUFFD_TEST_HOOKS)");
#else
	/* Two loop threads: one held up with the REMOVE, the other serving the faults. */
	env_threads = 2;
	if (!env_anon(&e, npages, harness_page_size(), false)) {
		env_threads = 1;
		SKIP_NO_UFFD();
	}
	env_threads = 1;
	if (!(uffd_features(e.u) & UFFD_FEATURE_EVENT_REMOVE)) {
		env_free(&e);
		SKIP_TEST("UFFD_FEATURE_EVENT_REMOVE is not available");
	}
	env_restore(&e, &o);
	env_start(&e);
	check_page(e.mem, e.ps, 0, false);
	t.mem = e.mem;
	t.ps = e.ps;
	hold.start = (uintptr_t)e.mem + t.first * e.ps;
	atomic_store(&hold.held, 0);
	atomic_store(&hold.release, false);
	__atomic_store_n(&uffd__test_read_early, hold_remove, __ATOMIC_RELEASE);
	/* Returns once the REMOVE is read: the pages are zapped, the reader held up. */
	ck_assert_int_eq(madvise(e.mem + t.first * e.ps, HELD_PAGES * e.ps, MADV_DONTNEED), 0);
	th = harness_thread_start(toucher_pages, &t);
	for (int i = 0; i < 2000 && !atomic_load(&hold.held); i++)
		usleep(1000);
	usleep(300000);		/* time to serve the faults, if anything does */
	atomic_store(&hold.release, true);
	harness_thread_join(th);
	__atomic_store_n(&uffd__test_read_early, NULL, __ATOMIC_RELEASE);
	ck_assert_int_eq(atomic_load(&hold.held), 1);
	for (size_t p = 0; p < HELD_PAGES; p++)
		stale += t.seen[p][0] != 0 || t.seen[p][1] != 0;
	ck_assert_msg(stale == 0, "%zu of %d given-back pages came back with the snapshot's data "
		      "while the loop thread that read the REMOVE was held up", stale, HELD_PAGES);
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, p >= t.first && p < t.first + HELD_PAGES);
	env_free(&e);
#endif
}
END_TEST

/* ---- the owner exits during the fill ---- */

/* The owner of len bytes of registered memory: sends its uffd and their address, then waits to be killed. */
static void owner_main(int sock, size_t len)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register reg = { .range = { (uintptr_t)mem, len }, .mode = MISSING };
	uint64_t addr = (uintptr_t)mem;

	if (fd < 0 || ioctl(fd, UFFDIO_API, &api) || mem == MAP_FAILED || ioctl(fd, UFFDIO_REGISTER, &reg))
		_exit(11);
	if (send_fds(sock, &addr, sizeof(addr), &fd, 1, 0) != sizeof(addr))
		_exit(12);
	for (;;)
		pause();
}

/* The owner is killed while the fill runs: -ESRCH, and no read error (every read succeeded). */
START_TEST(owner_exit_during_fill)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .fill_rate = 1 << 20, .max_read = 16 << 10, .queue_depth = 2 };
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .modes = MISSING, .fd = -1 };
	size_t npages = 4096, ps = harness_page_size();
	char cbuf[CMSG_SPACE(sizeof(int))];
	uint64_t addr = 0;
	struct iovec iov = { &addr, sizeof(addr) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct uffd_restore_stats s;
	int sv[2], fd, st;
	struct env e;
	pid_t pid;

	SKIP_VALGRIND();

	memset(&e, 0, sizeof(e));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(sv[0]);
		owner_main(sv[1], npages * ps);
	}
	close(sv[1]);
	if (recvmsg(sv[0], &mh, MSG_CMSG_CLOEXEC) != sizeof(addr)) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		close(sv[0]);
		SKIP_NO_UFFD();
	}
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
	ASSERT_OK(uffd_open_fd(&e.u, fd, 0));
	fo.owner_addr = addr;
	fo.length = e.len = npages * ps;
	fo.page_size = e.ps = ps;
	ASSERT_OK(uffd_region_create_foreign(e.u, &fo, &e.r));
	snap_make(&e.snap, npages, ps, false);
	env_loop(&e);
	env_restore(&e, &o);
	env_start(&e);
	ck_assert(wait_for(e.rs, present_at_least, 8, 5));
	ck_assert_int_eq(kill(pid, SIGKILL), 0);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ASSERT_ERR(uffd_restore_wait(e.rs, 10000), -ESRCH, "exited");
	s = stats_of(e.rs);
	ck_assert_uint_lt(s.pages_present, npages);
	ck_assert_msg(s.read_errors == 0, "%llu read errors after the owner exited",
		      (unsigned long long)s.read_errors);
	close(sv[0]);
	e.anon = false;	/* the memory was the owner's */
	env_free(&e);
}
END_TEST

/* ---- saving a trace while faults come ---- */

struct saver {
	struct uffd_restore *rs;
	const char *path;
	int err;
};

static void *saver_main(void *arg)
{
	struct saver *sv = arg;

	sv->err = uffd_restore_save_trace(sv->rs, sv->path);
	return NULL;
}

struct toucher {
	const char *mem;
	size_t ps, page;
	atomic_bool done;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;

	check_page(t->mem, t->ps, t->page, false);
	atomic_store(&t->done, true);
	return NULL;
}

/*
 * A save in progress must not stall faults: every demand fault records
 * under the recording's lock. The save is held, deterministically, inside
 * the open of its temporary file (a fanotify permission event we answer
 * only later); a fault on a new page meanwhile must be served.
 */
START_TEST(save_trace_does_not_stall_faults)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_RECORD };
	struct toucher t = { .page = 40 };
	struct fanotify_event_metadata ev;
	struct fanotify_response resp;
	struct pollfd pfd;
	struct saver sv;
	char path[160];
	void *ts, *tt;
	struct env e;
	double end;
	bool served;
	int fan;

	SKIP_VALGRIND();

	if (!env_anon(&e, 64, harness_page_size(), false))
		SKIP_NO_UFFD();
	fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, O_RDONLY | O_CLOEXEC);
	if (fan < 0) {
		env_free(&e);
		SKIP_TEST("fanotify permission events are not available (%s); they hold the save deterministically",
			  strerror(errno));
	}
	env_restore(&e, &o);
	env_start(&e);
	for (size_t p = 0; p < 8; p++)
		check_page(e.mem, e.ps, p, false);
	ck_assert_int_eq(fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD,
				       AT_FDCWD, e.snap.dir), 0);
	snap_path(&e.snap, "held.trace", path, sizeof(path));
	sv = (struct saver){ .rs = e.rs, .path = path, .err = 1 };
	ts = harness_thread_start(saver_main, &sv);
	pfd = (struct pollfd){ .fd = fan, .events = POLLIN };
	ck_assert_int_eq(poll(&pfd, 1, 10000), 1);
	ck_assert_int_eq(read(fan, &ev, sizeof(ev)), (ssize_t)sizeof(ev));
	ck_assert(ev.mask & FAN_OPEN_PERM);
	ck_assert_int_eq(ev.pid, getpid());
	/* The save is now inside its open(2), held there. A fault on a page not recorded yet: */
	t.mem = e.mem;
	t.ps = e.ps;
	tt = harness_thread_start(toucher_main, &t);
	end = harness_now() + 3;
	while (!atomic_load(&t.done) && harness_now() < end)
		usleep(1000);
	served = atomic_load(&t.done);
	resp = (struct fanotify_response){ .fd = ev.fd, .response = FAN_ALLOW };
	ck_assert_int_eq(write(fan, &resp, sizeof(resp)), (ssize_t)sizeof(resp));
	close(ev.fd);
	close(fan);
	harness_thread_join(ts);
	harness_thread_join(tt);
	ck_assert_msg(served, "a fault waited for the trace being saved");
	ck_assert_msg(sv.err == 0, "uffd_restore_save_trace: %d", sv.err);
	ck_assert_uint_eq(stats_of(e.rs).pages_recorded, 9);
	env_free(&e);
}
END_TEST

/* ---- traces that do not fit ---- */

static void copy_file(const char *from, const char *to, long cut, long flip_at)
{
	char buf[1 << 16];
	FILE *f = fopen(from, "rb"), *g = fopen(to, "wb");
	size_t n;

	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(g);
	n = fread(buf, 1, sizeof(buf), f);
	if (cut >= 0 && (size_t)cut < n)
		n = (size_t)cut;
	if (flip_at >= 0)
		buf[flip_at] = (char)(buf[flip_at] + 1);
	ck_assert_uint_eq(fwrite(buf, 1, n, g), n);
	fclose(f);
	fclose(g);
}

START_TEST(bad_traces)
{
	struct uffd_restore_opts o = { .size = sizeof(o) };
	char good[160], bad[160];
	struct uffd_restore *rs;
	struct snap tmp;
	struct env e;

	SKIP_VALGRIND();

	if (!env_anon(&e, RR_PAGES, harness_page_size(), false))
		SKIP_NO_UFFD();
	snap_make(&tmp, 1, harness_page_size(), false);	/* a directory for the traces */
	snap_path(&tmp, "good.trace", good, sizeof(good));
	snap_path(&tmp, "bad.trace", bad, sizeof(bad));
	/* A real trace of this region: recorded, saved. */
	o.flags = UFFD_RESTORE_RECORD;
	env_restore(&e, &o);
	ASSERT_ERR(uffd_restore_save_trace(e.rs, good), -EINVAL, "uffd_restore_start");
	env_start(&e);
	check_page(e.mem, e.ps, 3, false);
	ASSERT_OK(uffd_restore_save_trace(e.rs, good));
	uffd_restore_free(e.rs);	/* the region leaves the loop: free for another restore */
	e.rs = NULL;
	o.flags = 0;

	ASSERT_OK(uffd_restore_new(&rs, &o));
	ASSERT_ERR(uffd_restore_load_trace(rs, good), -EINVAL, "no region");
	ASSERT_OK(uffd_restore_add_region(rs, e.r, e.snap.fd, 0));
	copy_file(good, bad, 20, -1);
	ASSERT_ERR(uffd_restore_load_trace(rs, bad), -EBADMSG, "truncated");
	copy_file(good, bad, 60, -1);
	ck_assert_int_eq(uffd_restore_load_trace(rs, bad), -EBADMSG);
	copy_file(good, bad, -1, 8);
	ASSERT_ERR(uffd_restore_load_trace(rs, bad), -EPROTONOSUPPORT, "version");
	copy_file(good, bad, -1, 0);
	ASSERT_ERR(uffd_restore_load_trace(rs, bad), -EBADMSG, "not a libuffd trace");
	ck_assert_int_eq(uffd_restore_load_trace(rs, "/nonexistent/trace"), -ENOENT);
	ASSERT_OK(uffd_restore_load_trace(rs, good));
	uffd_restore_free(rs);
	env_free(&e);

	/* The same trace against a region of another size. */
	ck_assert(env_anon(&e, RR_PAGES / 2, harness_page_size(), false));
	ASSERT_OK(uffd_restore_new(&rs, &o));
	ASSERT_OK(uffd_restore_add_region(rs, e.r, e.snap.fd, 0));
	ASSERT_ERR(uffd_restore_load_trace(rs, good), -EINVAL, "region 0");
	uffd_restore_free(rs);
	env_free(&e);
	snap_free(&tmp);
}
END_TEST

/* ---- huge pages ---- */

START_TEST(hugetlb)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH,
				       .queue_depth = 2 };
	const char *why = NULL;
	size_t hps = harness_hugepages(6, &why), npages = 4;
	struct uffd_restore_stats s;
	struct env e;

	SKIP_VALGRIND();

	if (!hps)
		SKIP_TEST("no huge pages: %s", why);
	if (!env_anon(&e, npages, hps, true))
		SKIP_NO_UFFD();
	if (!(uffd_features(e.u) & UFFD_FEATURE_MISSING_HUGETLBFS)) {
		env_free(&e);
		SKIP_TEST("UFFD_FEATURE_MISSING_HUGETLBFS is not available");
	}
	env_restore(&e, &o);
	env_start(&e);
	check_page(e.mem, hps, 2, false);
	ASSERT_OK(uffd_restore_wait(e.rs, 10000));
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, hps, p, false);
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_eq(s.bytes_read, npages * hps);
	env_free(&e);
}
END_TEST

/* ---- installs straight from the page cache (the file source's mapping) ---- */

/*
 * A file source maps its file: a COPY region's pages are installed from
 * that mapping, one copy each, whether the file is cached (at once) or
 * not (brought in by a populate in the ring first). A source whose file
 * offset is not page-aligned has no mapping and reads into buffers.
 * Every page of every restore checked word by word.
 */
static void mapped_case(bool cold)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	struct uffd_source_file_opts fo = { .size = sizeof(fo) };
	struct uffd_source *src;
	size_t npages = 1024;
	struct env e;

	SKIP_VALGRIND();

	if (!env_anon(&e, npages, harness_page_size(), cold))
		SKIP_NO_UFFD();
	ASSERT_OK(uffd_source_file(&src, e.snap.fd, NULL));
	ck_assert_ptr_nonnull(uffd__source_map(src, 0, e.len));
	ck_assert_ptr_null(uffd__source_map(src, e.len, e.ps));	/* past the end */
	if (!cold)
		ck_assert(uffd__source_cached(src, 0, e.len));
	ASSERT_OK(uffd_restore_new(&e.rs, &o));
	ASSERT_OK(uffd_restore_add_region_source(e.rs, e.r, src, 0));
	env_start(&e);
	check_page(e.mem, e.ps, npages / 2 + 3, false);	/* a demand fault among the fill */
	ASSERT_OK(uffd_restore_wait(e.rs, 10000));
	ck_assert(uffd__source_cached(src, 0, e.len));	/* cold: the populates brought it in */
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, false);
	ck_assert_uint_eq(stats_of(e.rs).read_errors, 0);
	ck_assert_uint_eq(stats_of(e.rs).bytes_read, e.len);
	uffd_source_unref(src);

	/* An offset of 512 bytes: no mapping; the pages as the file holds them from there. */
	fo.offset = 512;
	fo.length = e.len - e.ps;
	ASSERT_OK(uffd_source_file(&src, e.snap.fd, &fo));
	ck_assert_ptr_null(uffd__source_map(src, 0, e.ps));
	ck_assert(!uffd__source_cached(src, 0, e.ps));
	uffd_source_unref(src);
	env_free(&e);
}

START_TEST(mapped_source_warm) { mapped_case(false); }
END_TEST
START_TEST(mapped_source_cold) { mapped_case(true); }
END_TEST

/*
 * The snapshot file is cut to half its length under a started fill (a
 * file is untrusted): the pages past the end cannot be installed, the
 * restore ends with -EIO, and this process gets no SIGBUS from the
 * mapping (the kernel's copy fails instead). The first half is right.
 */
static void truncated_case(bool cold)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .fill_rate = 8 << 20, .max_read = 64 << 10 };
	size_t npages = 1024;
	struct env e;
	int err;

	SKIP_VALGRIND();

	if (!env_anon(&e, npages, harness_page_size(), cold))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	ck_assert_int_eq(ftruncate(e.snap.fd, (off_t)(e.len / 2)), 0);
	err = uffd_restore_wait(e.rs, 20000);
	ck_assert_msg(err == -EIO, "uffd_restore_wait: %d (%s)", err, uffd_last_error());
	ck_assert_uint_gt(stats_of(e.rs).read_errors, 0);
	for (size_t p = 0; p < npages / 2; p++)
		check_page(e.mem, e.ps, p, false);
	env_free(&e);
}

START_TEST(mapped_source_truncated_warm) { truncated_case(false); }
END_TEST
START_TEST(mapped_source_truncated_cold) { truncated_case(true); }
END_TEST

/* ---- block-wise replay ---- */

/* One restore of 64 pages: records the pages of set (saved to save) or replays load. */
static struct uffd_restore_stats bw_run(const char *save, const char *load, const size_t *set, size_t n)
{
	struct uffd_restore_opts o = { .size = sizeof(o),
				       .flags = UFFD_RESTORE_NO_AROUND | (save ? UFFD_RESTORE_RECORD : 0) };
	struct uffd_restore_stats s;
	struct env e;

	ck_assert(env_anon(&e, 64, harness_page_size(), false));
	env_restore(&e, &o);
	if (load)
		ASSERT_OK(uffd_restore_load_trace(e.rs, load));
	env_start(&e);
	if (load)
		ck_assert_msg(wait_for(e.rs, present_at_least, 16 + 4, 5), "the replay did not finish");
	for (size_t k = 0; k < n; k++)
		check_page(e.mem, e.ps, set[k], false);
	if (save)
		ASSERT_OK(uffd_restore_save_trace(e.rs, save));
	if (load) {	/* every page of both blocks: the dense block's untraced pages are there */
		ck_assert_uint_eq(stats_of(e.rs).pages_prefetched, 16 + 4);
		for (size_t p = 16; p < 48; p++)
			check_page(e.mem, e.ps, p, false);
	}
	s = stats_of(e.rs);
	env_free(&e);
	return s;
}

/*
 * A replay block (64 KiB) 13/16 in the trace is read and resolved whole,
 * its 3 untraced pages with it (no fault on them later); one 4/16 in it
 * gets the traced pages only, its other 12 pages fault.
 */
START_TEST(blockwise_replay)
{
	size_t set[13 + 4], n = 0;
	struct uffd_restore_stats s;
	struct uffd *probe;
	struct snap tmp;
	char path[160];

	SKIP_VALGRIND();

	if (!(probe = open_uffd()))
		SKIP_NO_UFFD();
	uffd_close(probe);
	if (harness_page_size() != 4096)
		SKIP_TEST("the blocks below are counted in 4 KiB pages");
	for (size_t p = 31; p >= 16; p--)	/* dense: all but 19, 24, 30; visited from its end */
		if (p != 19 && p != 24 && p != 30)
			set[n++] = p;
	for (size_t p = 32; p < 48; p += 4)	/* sparse */
		set[n++] = p;
	snap_make(&tmp, 1, harness_page_size(), false);
	snap_path(&tmp, "bw.trace", path, sizeof(path));
	s = bw_run(path, NULL, set, n);
	ck_assert_uint_eq(s.pages_recorded, 13 + 4);
	s = bw_run(NULL, path, set, n);
	ck_assert_uint_eq(s.pages_prefetched, 16 + 4);
	ck_assert_uint_eq(s.faults[UFFD_FAULT_MISSING], 12);	/* the sparse block's untraced pages */
	ck_assert_uint_eq(s.read_errors, 0);
	snap_free(&tmp);
}
END_TEST

/*
 * replay_block 32 KiB: a trace naming one page in each of three 8-page
 * blocks (and two in one of them) brings the three blocks whole, before
 * anything touches them: 24 pages, and no fault on any of them after. The
 * default replay brings the 4 traced pages only.
 */
static struct uffd_restore_stats wb_run(const char *load, size_t block, uint64_t want)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_NO_AROUND,
				       .replay_block = block };
	struct uffd_restore_stats s;
	struct env e;

	ck_assert(env_anon(&e, 64, harness_page_size(), false));
	env_restore(&e, &o);
	ASSERT_OK(uffd_restore_load_trace(e.rs, load));
	env_start(&e);
	ck_assert_msg(wait_for(e.rs, present_at_least, want, 5), "the replay did not finish");
	usleep(20000);	/* a replay bringing more than it should would be seen below */
	ck_assert_uint_eq(stats_of(e.rs).pages_prefetched, want);
	for (size_t p = 16; p < 40; p++)
		check_page(e.mem, e.ps, p, false);
	s = stats_of(e.rs);
	env_free(&e);
	return s;
}

START_TEST(whole_block_replay)
{
	const size_t set[] = { 37, 18, 30, 19 };	/* blocks 32-39, 16-23, 24-31 */
	struct uffd_restore_stats s;
	struct uffd_restore_opts o = { .size = sizeof(o) };
	struct uffd_restore *rs;
	struct uffd *probe;
	struct snap tmp;
	char path[160];

	SKIP_VALGRIND();

	o.replay_block = 3 * 4096;
	ASSERT_ERR(uffd_restore_new(&rs, &o), -EINVAL, "power of two");
	o.replay_block = 512u << 10;	/* above max_read's default, 256 KiB */
	ASSERT_ERR(uffd_restore_new(&rs, &o), -EINVAL, "max_read");
	o.max_read = 1u << 20;
	ASSERT_OK(uffd_restore_new(&rs, &o));
	uffd_restore_free(rs);
	if (!(probe = open_uffd()))
		SKIP_NO_UFFD();
	uffd_close(probe);
	if (harness_page_size() != 4096)
		SKIP_TEST("the blocks below are counted in 4 KiB pages");
	snap_make(&tmp, 1, harness_page_size(), false);
	snap_path(&tmp, "wb.trace", path, sizeof(path));
	s = bw_run(path, NULL, set, 4);
	ck_assert_uint_eq(s.pages_recorded, 4);
	s = wb_run(path, 32u << 10, 24);
	ck_assert_uint_eq(s.faults[UFFD_FAULT_MISSING], 0);
	ck_assert_uint_eq(s.read_errors, 0);
	s = wb_run(path, 0, 4);	/* the default: sparse, the traced pages only */
	ck_assert_uint_eq(s.faults[UFFD_FAULT_MISSING], 24 - 4);
	snap_free(&tmp);
}
END_TEST

/* ---- demand first ---- */

/*
 * An unthrottled fill whose reads cover the whole region at once (128
 * reads of 1 MiB in flight): a demand fault at the far end, right after
 * the start, is served after one run of the fill at most, not after the
 * whole batch: when it returns, most of the region is still absent.
 * Counted, not timed: a loaded machine changes the times, not the order.
 */
static void demand_first_case(bool memfd)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_NO_AROUND,
				       .max_read = 1 << 20, .queue_depth = 128 };
	size_t npages = (128u << 20) / harness_page_size(), ahead = 0;
	struct uffd_restore_stats s;
	uint64_t present;
	struct env e;

	SKIP_VALGRIND();

	if (!(memfd ? env_memfd(&e, npages, false) : env_anon(&e, npages, harness_page_size(), false)))
		SKIP_NO_UFFD();
	env_restore(&e, &o);
	env_start(&e);
	for (size_t p = npages - 1; p > npages - 64; p -= 7) {
		check_page(e.mem, e.ps, p, false);
		present = stats_of(e.rs).pages_present;
		ahead += present < npages / 2;
	}
	ASSERT_OK(uffd_restore_wait(e.rs, 20000));
	s = stats_of(e.rs);
	fprintf(stderr, "demand first %s: %zu of 9 faults served with half the region absent, p99 %llu ns\n",
		memfd ? "memfd" : "anon", ahead,
		(unsigned long long)uffd_hist_quantile(s.latency[UFFD_FAULT_MISSING], 0.99));
	ck_assert_uint_ge(ahead, 1);
	ck_assert_uint_ge(s.pages_demand, 1);
	for (size_t p = 0; p < npages; p += 61)
		check_page(e.mem, e.ps, p, false);
	check_page(e.mem, e.ps, npages - 1, false);
	env_free(&e);
}

START_TEST(demand_first_during_fill_anon) { demand_first_case(false); }
END_TEST
START_TEST(demand_first_during_fill_memfd) { demand_first_case(true); }
END_TEST

/* ---- arguments ---- */

START_TEST(args)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = 1u << 9 };
	struct uffd_restore_stats s = { .size = 8 };
	uint64_t h[UFFD_HIST_BUCKETS] = { 0 };
	struct uffd_restore *rs;
	struct env e;
	int wfd;

	SKIP_VALGRIND();

	ASSERT_ERR(uffd_restore_new(&rs, &o), -EINVAL, "flags");
	ck_assert_int_eq(uffd_restore_new(NULL, NULL), -EINVAL);
	if (!env_anon(&e, 8, harness_page_size(), false))
		SKIP_NO_UFFD();
	ASSERT_OK(uffd_restore_new(&rs, NULL));
	ASSERT_ERR(uffd_restore_start(rs, e.l), -EINVAL, "no region");
	ASSERT_ERR(uffd_restore_add_region(rs, e.r, e.snap.fd, 1), -EINVAL, "multiple");
	wfd = open(e.snap.path, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(wfd, 0);
	ASSERT_ERR(uffd_restore_add_region(rs, e.r, wfd, 0), -EBADF, "reading");
	close(wfd);
	ASSERT_ERR(uffd_restore_add_region(rs, e.r, e.snap.fd, e.ps), -EINVAL, "cover");
	ASSERT_OK(uffd_restore_add_region(rs, e.r, e.snap.fd, 0));
	ASSERT_ERR(uffd_restore_add_region(rs, e.r, e.snap.fd, 0), -EBUSY, "already");
	ASSERT_ERR(uffd_restore_stats(rs, &s), -EINVAL, "size");
	ASSERT_ERR(uffd_restore_wait(rs, 0), -EINVAL, "not started");
	ASSERT_ERR(uffd_restore_save_trace(rs, "x"), -EINVAL, "UFFD_RESTORE_RECORD");
	ASSERT_OK(uffd_restore_start(rs, e.l));
	ASSERT_ERR(uffd_restore_start(rs, e.l), -EINVAL, "already");
	uffd_restore_free(rs);
	uffd_restore_free(NULL);
	/* Quantiles: the upper bound of the bucket holding the q-th sample. */
	ck_assert_uint_eq(uffd_hist_quantile(h, 0.5), 0);
	h[10] = 50;
	h[20] = 49;
	h[30] = 1;
	ck_assert_uint_eq(uffd_hist_quantile(h, 0.5), 1u << 11);
	ck_assert_uint_eq(uffd_hist_quantile(h, 0.51), 1u << 21);
	ck_assert_uint_eq(uffd_hist_quantile(h, 0.99), 1u << 21);
	ck_assert_uint_eq(uffd_hist_quantile(h, 1.0), 1u << 31);
	ck_assert_uint_eq(uffd_hist_quantile(h, 0), 0);
	ck_assert_uint_eq(uffd_hist_quantile(h, 1.5), 0);
	ck_assert_uint_eq(uffd_hist_quantile(NULL, 0.5), 0);
	env_free(&e);
}
END_TEST

/*
 * uffd_restore_region_state: a map left by a handler that died is adopted.
 * PRESENT pages that are mapped are not read again; PRESENT ones that are
 * not (a give-back unmapped them) and ZERO ones read zeros; INFLIGHT and
 * BAD ones are read again; the engine writes its states into the map and
 * never frees it. Bad maps and calls are refused, the map untouched.
 */
START_TEST(region_state)
{
	struct uffd_restore_opts o = { .size = sizeof(o) };
	size_t npages = 64;
	unsigned char *map, *copy;
	struct uffd_restore *other = NULL;
	char *page;
	struct env e;

	SKIP_VALGRIND();	/* before anything is allocated: a skip returns at once */
	map = calloc(npages, 1);
	copy = malloc(npages);
	page = malloc(harness_page_size());
	if (!env_anon(&e, npages, harness_page_size(), false))
		SKIP_NO_UFFD();
	ck_assert_ptr_nonnull(map);
	env_restore(&e, &o);
	for (size_t p = 16; p < 24; p++)
		map[p] = UFFD_PAGE_PRESENT;	/* installed, then given back and zapped */
	for (size_t p = 24; p < 32; p++)
		map[p] = UFFD_PAGE_ZERO;
	for (size_t p = 32; p < 40; p++)
		map[p] = UFFD_PAGE_INFLIGHT;
	for (size_t p = 40; p < 48; p++)
		map[p] = UFFD_PAGE_BAD;
	for (size_t p = 48; p < 56; p++) {	/* installed by the dead handler */
		ck_assert_int_eq(pread(e.snap.fd, page, e.ps, (off_t)(p * e.ps)), (ssize_t)e.ps);
		ASSERT_OK(uffd_copy(e.u, e.mem + p * e.ps, page, e.ps, 0, NULL));
		map[p] = UFFD_PAGE_PRESENT;
	}
	/* refused, and nothing changed */
	ck_assert_int_eq(uffd_restore_region_state(NULL, e.r, map, npages), -EINVAL);
	ck_assert_int_eq(uffd_restore_region_state(e.rs, e.r, NULL, npages), -EINVAL);
	ck_assert_int_eq(uffd_restore_region_state(e.rs, e.r, map, npages - 1), -EINVAL);
	ASSERT_OK(uffd_restore_new(&other, &o));
	ck_assert_int_eq(uffd_restore_region_state(other, e.r, map, npages), -EINVAL);
	uffd_restore_free(other);
	map[5] = 9;
	memcpy(copy, map, npages);
	ck_assert_int_eq(uffd_restore_region_state(e.rs, e.r, map, npages), -EINVAL);
	ck_assert(strstr(uffd_last_error(), "byte 5"));
	ck_assert_int_eq(memcmp(copy, map, npages), 0);
	map[5] = UFFD_PAGE_ABSENT;
	ASSERT_OK(uffd_restore_region_state(e.rs, e.r, map, npages));
	ck_assert_int_eq(uffd_restore_region_state(e.rs, e.r, map, npages), -EBUSY);
	for (size_t p = 32; p < 48; p++)
		ck_assert_uint_eq(map[p], UFFD_PAGE_ABSENT);
	env_start(&e);
	ck_assert_int_eq(uffd_restore_region_state(e.rs, e.r, map, npages), -EINVAL);
	ck_assert_uint_eq(stats_of(e.rs).pages_present, 24);
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, e.ps, p, p >= 16 && p < 32);
	ck_assert(wait_for(e.rs, present_at_least, npages, 2));
	ck_assert_uint_eq(stats_of(e.rs).pages_demand, npages - 24);	/* 48..55 were not read again */
	for (size_t p = 0; p < npages; p++)
		ck_assert_msg(map[p] == UFFD_PAGE_PRESENT, "page %zu: state %u", p, map[p]);
	env_free(&e);
	free(map);	/* the caller's: the restore left it */
	free(copy);
	free(page);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("restore");
	TCase *tc;

	tc = CASE(demand_anon_warm, 20);
	tcase_add_test(tc, demand_anon_warm);
	tc = CASE(region_state, 20);
	tcase_add_test(tc, region_state);
	tc = CASE(demand_anon_cold, 20);
	tcase_add_test(tc, demand_anon_cold);
	tc = CASE(demand_memfd_cold, 20);
	tcase_add_test(tc, demand_memfd_cold);
	tc = CASE(around_anon_warm, 20);
	tcase_add_test(tc, around_anon_warm);
	tc = CASE(around_anon_cold, 20);
	tcase_add_test(tc, around_anon_cold);
	tc = CASE(around_memfd_warm, 20);
	tcase_add_test(tc, around_memfd_warm);
	tc = CASE(around_memfd_cold, 20);
	tcase_add_test(tc, around_memfd_cold);
	tc = CASE(around_stops_at_present_and_given_back, 20);
	tcase_add_test(tc, around_stops_at_present_and_given_back);
	tc = CASE(around_off, 20);
	tcase_add_test(tc, around_off);
	tc = CASE(record_replay, 30);
	tcase_add_test(tc, record_replay);
	tc = CASE(demand_during_fill, 20);
	tcase_add_test(tc, demand_during_fill);
	tc = CASE(fill_detach_anon, 20);
	tcase_add_test(tc, fill_detach_anon);
	tc = CASE(fill_detach_memfd, 20);
	tcase_add_test(tc, fill_detach_memfd);
	tc = CASE(finish, 20);
	tcase_add_test(tc, finish);
	tc = CASE(detach_after_demand, 20);
	tcase_add_test(tc, detach_after_demand);
	tc = CASE(remove_during_restore, 20);
	tcase_add_test(tc, remove_during_restore);
	tc = CASE(fill_while_given_back, 150);
	tcase_add_test(tc, fill_while_given_back);
	tc = CASE(given_back_during_fork, 30);
	tcase_add_test(tc, given_back_during_fork);
	tc = CASE(given_back_across_regions, 20);
	tcase_add_test(tc, given_back_across_regions);
	tc = CASE(given_back_reader_held, 20);
	tcase_add_test(tc, given_back_reader_held);
	tc = CASE(owner_exit_during_fill, 30);
	tcase_add_test(tc, owner_exit_during_fill);
	tc = CASE(save_trace_does_not_stall_faults, 20);
	tcase_add_test(tc, save_trace_does_not_stall_faults);
	tc = CASE(bad_traces, 20);
	tcase_add_test(tc, bad_traces);
	tc = CASE(hugetlb, 20);
	tcase_add_test(tc, hugetlb);
	tc = CASE(args, 20);
	tcase_add_test(tc, args);
	tc = CASE(mapped_source_warm, 20);
	tcase_add_test(tc, mapped_source_warm);
	tc = CASE(mapped_source_cold, 20);
	tcase_add_test(tc, mapped_source_cold);
	tc = CASE(mapped_source_truncated_warm, 30);
	tcase_add_test(tc, mapped_source_truncated_warm);
	tc = CASE(mapped_source_truncated_cold, 30);
	tcase_add_test(tc, mapped_source_truncated_cold);
	tc = CASE(blockwise_replay, 20);
	tcase_add_test(tc, blockwise_replay);
	tc = CASE(whole_block_replay, 20);
	tcase_add_test(tc, whole_block_replay);
	tc = CASE(demand_first_during_fill_anon, 30);
	tcase_add_test(tc, demand_first_during_fill_anon);
	tc = CASE(demand_first_during_fill_memfd, 30);
	tcase_add_test(tc, demand_first_during_fill_memfd);
	return s;
}

int main(void)
{
	return harness_run(suite());
}
