/* SPDX-License-Identifier: MIT */
/* dirty.c: uffd_dirty_start / uffd_dirty_scan on anon, shmem and hugetlb memory. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define MiB (1ul << 20)
#define ROUNDS 20
#define BIG 8192	/* spans: more than one PAGEMAP_SCAN batch of 512 */

#define NEED_WP_ASYNC()                                                          \
	do {                                                                     \
		if (!harness_have_features(UFFD_FEATURE_WP_ASYNC))               \
			SKIP_TEST("the kernel lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7+)"); \
	} while (0)

static struct uffd *open_async(void)
{
	struct uffd_opts o = { .size = sizeof(o),
			       .want_features = UFFD_FEATURES_DEFAULT | UFFD_FEATURE_WP_ASYNC };
	struct uffd *u = NULL;

	ck_assert_int_eq(uffd_open(&u, &o), 0);
	ck_assert_uint_ne(uffd_features(u) & UFFD_FEATURE_WP_ASYNC, 0);
	return u;
}

/* ---- memory ---- */

enum kind { ANON, SHMEM, HUGETLB };

struct mem {
	char *base;
	size_t len, unit, npages;	/* unit: the page size */
	int fd;
};

static void mem_map(struct mem *m, enum kind kind, size_t npages, size_t unit)
{
	*m = (struct mem){ .len = npages * unit, .unit = unit, .npages = npages, .fd = -1 };
	if (kind == ANON) {
		m->base = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	} else {
		m->fd = memfd_create("dirty", MFD_CLOEXEC | (kind == HUGETLB ? MFD_HUGETLB : 0));
		ck_assert_int_ge(m->fd, 0);
		ck_assert_int_eq(ftruncate(m->fd, (off_t)m->len), 0);
		m->base = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	}
	ck_assert_ptr_ne(m->base, MAP_FAILED);
}

static void mem_unmap(struct mem *m)
{
	ck_assert_int_eq(munmap(m->base, m->len), 0);
	if (m->fd >= 0)
		close(m->fd);
}

/* Register for async write-protect and start tracking. */
static void mem_track(struct uffd *u, struct mem *m)
{
	ck_assert_msg(uffd_register(u, m->base, m->len, UFFDIO_REGISTER_MODE_WP, NULL) == 0,
		      "%s", uffd_last_error());
	ck_assert_msg(uffd_dirty_start(u, m->base, m->len) == 0, "%s", uffd_last_error());
}

static char *page(const struct mem *m, size_t i)
{
	return m->base + i * m->unit;
}

/* ---- page sets ---- */

#define WORDS(n) (((n) + 63) / 64)

static uint64_t *set_new(size_t npages)
{
	uint64_t *s = calloc(WORDS(npages), sizeof(uint64_t));

	ck_assert_ptr_nonnull(s);
	return s;
}

static void set_add(uint64_t *s, size_t i)
{
	__atomic_fetch_or(&s[i / 64], 1ull << (i % 64), __ATOMIC_RELAXED);
}

static bool set_has(const uint64_t *s, size_t i)
{
	return s[i / 64] >> (i % 64) & 1;
}

static void expect_same(const uint64_t *want, const uint64_t *got, size_t npages,
			const char *what)
{
	for (size_t i = 0; i < npages; i++)
		if (set_has(want, i) != set_has(got, i))
			ck_abort_msg("%s: page %zu written %d, reported %d", what, i,
				     set_has(want, i), set_has(got, i));
}

/*
 * Scans the whole of m with room for max spans per call, resuming through
 * *next, into got. Checks what a caller relies on: spans inside the range,
 * aligned, in address order and merged (also across calls, writers being
 * paused), *next at the next written page when the buffer filled, at the
 * end otherwise. Returns the number of calls.
 */
static size_t collect(struct uffd *u, const struct mem *m, size_t max,
		      unsigned flags, uint64_t *got)
{
	struct uffd_span *sp = calloc(max ? max : 1, sizeof(*sp));
	char *end = m->base + m->len, *p = m->base, *prev_end = NULL, *expect = NULL;
	size_t calls = 0;

	ck_assert_ptr_nonnull(sp);
	memset(got, 0, WORDS(m->npages) * sizeof(uint64_t));
	while (p < end) {
		void *next = NULL;
		int n = uffd_dirty_scan(u, p, (size_t)(end - p), sp, max, flags, &next);

		ck_assert_msg(n >= 0, "uffd_dirty_scan: %d: %s", n, uffd_last_error());
		ck_assert_uint_le((size_t)n, max);
		calls++;
		if (expect && n)
			ck_assert_ptr_eq(sp[0].addr, expect);
		for (int i = 0; i < n; i++) {
			char *a = sp[i].addr;

			ck_assert_msg(a >= p && sp[i].len && a + sp[i].len <= end,
				      "span %p+%zu outside %p..%p", (void *)a, sp[i].len, (void *)p, (void *)end);
			ck_assert_uint_eq((size_t)(a - m->base) % m->unit, 0);
			ck_assert_uint_eq(sp[i].len % m->unit, 0);
			ck_assert_msg(!prev_end || a > prev_end, "span %p follows %p: not merged or not in order",
				      (void *)a, (void *)prev_end);
			prev_end = a + sp[i].len;
			for (char *q = a; q < prev_end; q += m->unit)
				set_add(got, (size_t)(q - m->base) / m->unit);
		}
		if ((size_t)n < max) {
			ck_assert_ptr_eq(next, end);
		} else {
			ck_assert((char *)next <= end && (char *)next > p);
			ck_assert(!prev_end || (char *)next >= prev_end);
		}
		expect = next;
		p = next;
	}
	free(sp);
	return calls;
}

static size_t count(const uint64_t *s, size_t npages)
{
	size_t n = 0;

	for (size_t w = 0; w < WORDS(npages); w++)
		n += (size_t)__builtin_popcountll(s[w]);
	return n;
}

/* ---- random writers, paused while the main thread scans ---- */

struct writers {
	struct mem *m;
	uint64_t *written;	/* since the last rearm */
	pthread_barrier_t go, done;
	unsigned runs;		/* write runs per thread and round */
	unsigned max_run;	/* pages per run, at most */
};

struct writer {
	struct writers *w;
	unsigned seed;
};

static void *writer_main(void *arg)
{
	struct writer *me = arg;
	struct writers *w = me->w;
	struct mem *m = w->m;

	for (int r = 0; r < ROUNDS; r++) {
		pthread_barrier_wait(&w->go);
		for (unsigned k = 0; k < w->runs; k++) {
			size_t first = (size_t)rand_r(&me->seed) % m->npages;
			size_t run = 1 + (size_t)rand_r(&me->seed) % w->max_run;

			for (size_t i = first; i < first + run && i < m->npages; i++) {
				page(m, i)[(size_t)rand_r(&me->seed) % m->unit] = (char)(1 + r);
				set_add(w->written, i);
			}
		}
		pthread_barrier_wait(&w->done);
	}
	return NULL;
}

/*
 * ROUNDS rounds of random writes from 2 threads. Even rounds rearm through
 * a 4-span buffer (resuming through *next); odd rounds compare a 4-span
 * and a big non-rearming scan first, then rearm with the big buffer. Every
 * answer must be exactly the pages written since the last rearm. Returns
 * the number of rounds whose 4-span scan needed more than one call.
 */
static size_t run_rounds(struct uffd *u, struct mem *m, unsigned runs, unsigned max_run)
{
	struct writers w = { .m = m, .written = set_new(m->npages), .runs = runs, .max_run = max_run };
	struct writer ws[2] = { { &w, 12345 }, { &w, 67890 } };
	uint64_t *got = set_new(m->npages);
	void *th[2];
	char what[64];
	size_t resumed = 0;

	pthread_barrier_init(&w.go, NULL, 3);
	pthread_barrier_init(&w.done, NULL, 3);
	for (int i = 0; i < 2; i++)
		th[i] = harness_thread_start(writer_main, &ws[i]);
	for (int r = 0; r < ROUNDS; r++) {
		pthread_barrier_wait(&w.go);
		pthread_barrier_wait(&w.done);
		if (r % 2 == 0) {
			size_t calls = collect(u, m, 4, UFFD_SCAN_REARM, got);

			snprintf(what, sizeof(what), "round %d, 4 spans, rearm", r);
			expect_same(w.written, got, m->npages, what);
			resumed += calls > 1;
		} else {
			snprintf(what, sizeof(what), "round %d, 4 spans", r);
			resumed += collect(u, m, 4, 0, got) > 1;
			expect_same(w.written, got, m->npages, what);
			snprintf(what, sizeof(what), "round %d, %d spans", r, BIG);
			collect(u, m, BIG, 0, got);
			expect_same(w.written, got, m->npages, what);
			snprintf(what, sizeof(what), "round %d, %d spans, rearm", r, BIG);
			collect(u, m, BIG, UFFD_SCAN_REARM, got);
			expect_same(w.written, got, m->npages, what);
		}
		ck_assert_uint_gt(count(got, m->npages), 0);
		memset(w.written, 0, WORDS(m->npages) * sizeof(uint64_t));
		collect(u, m, BIG, 0, got);	/* the rearm left nothing behind */
		ck_assert_uint_eq(count(got, m->npages), 0);
	}
	for (int i = 0; i < 2; i++)
		harness_thread_join(th[i]);
	pthread_barrier_destroy(&w.go);
	pthread_barrier_destroy(&w.done);
	free(w.written);
	free(got);
	return resumed;
}

static void rounds_256m(enum kind kind)
{
	size_t ps = harness_page_size();
	struct uffd *u;
	struct mem m;

	NEED_WP_ASYNC();
	u = open_async();
	mem_map(&m, kind, 256 * MiB / ps, ps);
	memset(m.base, 0x5a, 4 * MiB);	/* written before start: not reported */
	mem_track(u, &m);
	/* every round resumes through *next */
	ck_assert_uint_eq(run_rounds(u, &m, 1000, 4), ROUNDS);
	mem_unmap(&m);
	uffd_close(u);
}

START_TEST(test_anon_rounds)
{
	rounds_256m(ANON);
}
END_TEST

START_TEST(test_shmem_rounds)
{
	rounds_256m(SHMEM);
}
END_TEST

/* ---- re-arming while writers run: no write is lost ---- */

/*
 * How much racing: passes go on until RACE_PASSES passes reported
 * RACE_REDIRTIED pages written again after their rearm, or until the
 * deadline (a busy machine; the case has 60 s). Below RACE_MIN pages and
 * re-dirtied reports the run would prove nothing: that fails.
 */
#define RACE_PASSES 10
#define RACE_REDIRTIED 50000
#define RACE_MIN 1000
#define RACE_DEADLINE_S 30.0

struct racer {
	struct mem *m;
	uint64_t *written;
	uint32_t *pass_of;	/* per page: the pass running when this racer last wrote it */
	atomic_uint *pass;
	atomic_bool *stop;
	unsigned seed;
};

static void *racer_main(void *arg)
{
	struct racer *r = arg;

	while (!atomic_load(r->stop)) {
		size_t i = (size_t)rand_r(&r->seed) % r->m->npages;
		unsigned pass = atomic_load(r->pass);	/* before the write */

		page(r->m, i)[(size_t)rand_r(&r->seed) % r->m->unit]++;
		set_add(r->written, i);
		r->pass_of[i] = pass;
	}
	return NULL;
}

/* What the rearming passes reported, page by page. */
struct reports {
	uint32_t *last;		/* the last pass that reported the page; 0: none */
	size_t pages;		/* pages reported at least once */
	size_t redirtied;	/* reports of a page reported by an earlier pass */
};

static void report(struct reports *rep, size_t i, unsigned pass)
{
	if (rep->last[i])
		rep->redirtied++;
	else
		rep->pages++;
	rep->last[i] = pass;
}

/* One rearming pass over m through a 4-span buffer, resuming through *next. */
static void rearm_pass(struct uffd *u, const struct mem *m, unsigned pass, struct reports *rep)
{
	char *p = m->base, *end = m->base + m->len;
	struct uffd_span sp[4];

	while (p < end) {	/* collect() checks too much for a moving target */
		void *next;
		int n = uffd_dirty_scan(u, p, (size_t)(end - p), sp, 4, UFFD_SCAN_REARM, &next);

		ck_assert_msg(n >= 0, "%s", uffd_last_error());
		for (int i = 0; i < n; i++)
			for (char *q = sp[i].addr; q < (char *)sp[i].addr + sp[i].len; q += m->unit)
				report(rep, (size_t)(q - m->base) / m->unit, pass);
		p = next;
	}
}

/*
 * Rearming scans through a 4-span buffer while 2 threads write. Once the writers stop and
 * a last scan ran, the union of all reports is exactly the set of pages
 * written, and every page was reported by a pass no older than the one
 * running when it was last written: a write lost by a rearm leaves its page
 * unreported or reported only before it.
 */
START_TEST(test_concurrent)
{
	size_t ps = harness_page_size();
	atomic_bool stop = false;
	atomic_uint pass = 0;
	struct reports rep;
	struct racer r[2];
	uint64_t *got;
	struct uffd *u;
	struct mem m;
	double deadline = harness_now() + RACE_DEADLINE_S;
	unsigned k;
	void *th[2];

	NEED_WP_ASYNC();
	u = open_async();
	mem_map(&m, ANON, 64 * MiB / ps, ps);
	mem_track(u, &m);
	rep = (struct reports){ .last = calloc(m.npages, sizeof(uint32_t)) };
	got = set_new(m.npages);
	ck_assert_ptr_nonnull(rep.last);
	for (int i = 0; i < 2; i++) {
		r[i] = (struct racer){ .m = &m, .written = set_new(m.npages),
				       .pass_of = calloc(m.npages, sizeof(uint32_t)),
				       .pass = &pass, .stop = &stop, .seed = 99u + (unsigned)i };
		ck_assert_ptr_nonnull(r[i].pass_of);
		th[i] = harness_thread_start(racer_main, &r[i]);
	}
	for (k = 1; (k <= RACE_PASSES || rep.redirtied < RACE_REDIRTIED) && harness_now() < deadline; k++) {
		atomic_store(&pass, k);
		rearm_pass(u, &m, k, &rep);
	}
	ck_assert_msg(rep.redirtied >= RACE_MIN && rep.pages >= RACE_MIN,
		      "in %u passes and %.0f s the writers re-dirtied %zu pages (%zu in all): "
		      "too few to tell, want %d", k - 1, RACE_DEADLINE_S, rep.redirtied, rep.pages, RACE_MIN);
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		harness_thread_join(th[i]);
	collect(u, &m, BIG, UFFD_SCAN_REARM, got);	/* pass k, writers stopped */
	for (size_t i = 0; i < m.npages; i++)
		if (set_has(got, i))
			report(&rep, i, k);
	for (size_t w = 0; w < WORDS(m.npages); w++)
		r[0].written[w] |= r[1].written[w];
	memset(got, 0, WORDS(m.npages) * sizeof(uint64_t));
	for (size_t i = 0; i < m.npages; i++)
		if (rep.last[i])
			set_add(got, i);
	ck_assert_uint_ge(count(r[0].written, m.npages), RACE_MIN);
	expect_same(r[0].written, got, m.npages, "writes during rearming scans");
	for (int j = 0; j < 2; j++)
		for (size_t i = 0; i < m.npages; i++)
			ck_assert_msg(rep.last[i] >= r[j].pass_of[i],
				      "page %zu written during pass %u, last reported by pass %u",
				      i, r[j].pass_of[i], rep.last[i]);
	fprintf(stderr, "concurrent: %u passes, %zu pages reported, %zu reports of re-dirtied pages\n",
		k, rep.pages, rep.redirtied);
	for (int i = 0; i < 2; i++) {
		free(r[i].written);
		free(r[i].pass_of);
	}
	free(rep.last);
	free(got);
	mem_unmap(&m);
	uffd_close(u);
}
END_TEST

/* ---- resumption through *next, exactly ---- */

/* Written: every 3rd page below 240, and 240..255 as one run. */
static void write_pattern(struct mem *m, uint64_t *want)
{
	for (size_t i = 0; i < 256; i++)
		if (i >= 240 || i % 3 == 0) {
			page(m, i)[7] = 1;
			set_add(want, i);
		}
}

START_TEST(test_resume)
{
	size_t ps = harness_page_size();
	uint64_t *want, *got;
	struct uffd_span sp[4];
	struct uffd *u;
	void *next;
	struct mem m;

	NEED_WP_ASYNC();
	u = open_async();
	mem_map(&m, ANON, 4096, ps);
	want = set_new(m.npages);
	got = set_new(m.npages);
	mem_track(u, &m);
	write_pattern(&m, want);

	/* max 0: where the first written page is, nothing re-protected */
	ck_assert_int_eq(uffd_dirty_scan(u, page(&m, 1), m.len - ps, NULL, 0, UFFD_SCAN_REARM, &next), 0);
	ck_assert_ptr_eq(next, page(&m, 3));
	/* 81 spans through 4 at a time: 21 calls, each stopping at the next span */
	ck_assert_uint_eq(collect(u, &m, 4, 0, got), 21);
	expect_same(want, got, m.npages, "4 spans");
	ck_assert_uint_eq(collect(u, &m, 1, 0, got), 81);
	expect_same(want, got, m.npages, "1 span");
	ck_assert_int_eq(uffd_dirty_scan(u, m.base, m.len, sp, 4, 0, &next), 4);
	ck_assert_ptr_eq(next, page(&m, 12));
	/* re-arming 4 at a time loses none of the spans it could not store */
	ck_assert_uint_eq(collect(u, &m, 4, UFFD_SCAN_REARM, got), 21);
	expect_same(want, got, m.npages, "4 spans, rearm");
	collect(u, &m, BIG, 0, got);
	ck_assert_uint_eq(count(got, m.npages), 0);
	ck_assert_int_eq(uffd_dirty_scan(u, m.base, m.len, NULL, 0, 0, &next), 0);
	ck_assert_ptr_eq(next, m.base + m.len);

	/* adjacent writes come back as one span */
	page(&m, 5)[0] = 1;
	page(&m, 6)[0] = 1;
	page(&m, 7)[0] = 1;
	ck_assert_int_eq(uffd_dirty_scan(u, m.base, m.len, sp, 1, UFFD_SCAN_REARM, &next), 1);
	ck_assert_ptr_eq(sp[0].addr, page(&m, 5));
	ck_assert_uint_eq(sp[0].len, 3 * ps);
	ck_assert_ptr_eq(next, m.base + m.len);

	/* 2048 isolated pages: several PAGEMAP_SCAN batches of 512 in one call */
	memset(want, 0, WORDS(m.npages) * sizeof(uint64_t));
	for (size_t i = 0; i < m.npages; i += 2) {
		page(&m, i)[1] = 2;
		set_add(want, i);
	}
	ck_assert_uint_eq(collect(u, &m, BIG, 0, got), 1);
	expect_same(want, got, m.npages, "2048 spans");
	ck_assert_uint_eq(collect(u, &m, 1000, UFFD_SCAN_REARM, got), 3);
	expect_same(want, got, m.npages, "2048 spans, rearm, 1000 at a time");
	ck_assert_uint_eq(collect(u, &m, BIG, 0, got), 1);
	ck_assert_uint_eq(count(got, m.npages), 0);

	free(want);
	free(got);
	mem_unmap(&m);
	uffd_close(u);
}
END_TEST

/* ---- what counts as written ---- */

static int scan_all(struct uffd *u, const struct mem *m, struct uffd_span *sp, size_t max)
{
	void *next = NULL;
	int n = uffd_dirty_scan(u, m->base, m->len, sp, max, UFFD_SCAN_REARM, &next);

	ck_assert_msg(n >= 0, "%s", uffd_last_error());
	ck_assert_ptr_eq(next, m->base + m->len);
	return n;
}

static void expect_span(const struct uffd_span *sp, const struct mem *m, size_t first, size_t n)
{
	ck_assert_ptr_eq(sp->addr, page(m, first));
	ck_assert_uint_eq(sp->len, n * m->unit);
}

/* Before start the whole range reads as written; after it, only writes count. */
static void untouched(enum kind kind)
{
	struct uffd_span sp[8];
	struct uffd *u = open_async();
	struct mem m;
	size_t sum = 0;
	void *next;

	mem_map(&m, kind, 256, harness_page_size());
	ck_assert_int_eq(uffd_register(u, m.base, m.len, UFFDIO_REGISTER_MODE_WP, NULL), 0);
	memset(page(&m, 10), 1, 2 * m.unit);
	ck_assert_int_eq(uffd_dirty_scan(u, m.base, m.len, sp, 8, 0, &next), 1);
	expect_span(&sp[0], &m, 0, m.npages);
	ck_assert_int_eq(uffd_dirty_start(u, m.base, m.len), 0);
	for (size_t i = 0; i < m.npages; i++)	/* reads are not writes */
		sum += (unsigned char)*(volatile char *)page(&m, i);
	ck_assert_uint_eq(sum, 2);
	ck_assert_int_eq(scan_all(u, &m, sp, 8), 0);
	page(&m, 200)[3] = 1;
	ck_assert_int_eq(scan_all(u, &m, sp, 8), 1);
	expect_span(&sp[0], &m, 200, 1);
	mem_unmap(&m);
	uffd_close(u);
}

START_TEST(test_untouched)
{
	NEED_WP_ASYNC();
	untouched(ANON);
	untouched(SHMEM);
}
END_TEST

/*
 * Anonymous memory: MADV_DONTNEED zero-fills, reported as written.
 * Shared memory keeps the protection: MADV_DONTNEED (contents kept) is not
 * reported, and neither is MADV_REMOVE although it zeroes the page. The
 * man page documents this; the test guards the documentation.
 */
START_TEST(test_dontneed)
{
	struct uffd_span sp[8];
	struct uffd *u;
	struct mem m;

	NEED_WP_ASYNC();
	u = open_async();
	mem_map(&m, ANON, 64, harness_page_size());
	memset(m.base, 1, m.len);
	mem_track(u, &m);
	ck_assert_int_eq(madvise(page(&m, 10), 3 * m.unit, MADV_DONTNEED), 0);
	ck_assert_int_eq(scan_all(u, &m, sp, 8), 1);
	expect_span(&sp[0], &m, 10, 3);
	ck_assert_int_eq(page(&m, 11)[0], 0);
	ck_assert_int_eq(scan_all(u, &m, sp, 8), 0);
	mem_unmap(&m);

	mem_map(&m, SHMEM, 64, harness_page_size());
	memset(m.base, 1, m.len);
	mem_track(u, &m);
	ck_assert_int_eq(madvise(page(&m, 10), 3 * m.unit, MADV_DONTNEED), 0);
	ck_assert_int_eq(madvise(page(&m, 20), m.unit, MADV_REMOVE), 0);
	ck_assert_int_eq(page(&m, 11)[0], 1);
	ck_assert_int_eq(page(&m, 20)[0], 0);
	ck_assert_int_eq(scan_all(u, &m, sp, 8), 0);
	mem_unmap(&m);
	uffd_close(u);
}
END_TEST

/* ---- faults resolved by the library on a WP_ASYNC handle ---- */

static int resolve_sigbus(void *ctx, struct uffd_fault *f)
{
	(void)ctx;
	(void)f;
	return UFFD_RESOLVE;
}

/*
 * A MINOR|WP region on a WP_ASYNC handle, its faults resolved by the
 * library (SIGBUS mode, or a loop's default resolution). A write lifts a
 * page's protection with no message, so the library cannot know it: a
 * page written, then zapped and faulted back in, must still be reported
 * written, never mapped protected again (which would hide the write from
 * the next scan). Pages faulted in are mapped writable, hence reported
 * written too (documented: a page too many, never one missed); pages
 * not touched are not reported.
 */
static void async_faults(bool sigbus)
{
	size_t ps = harness_page_size(), npages = 16, len = npages * ps;
	struct uffd_opts uo = { .size = sizeof(uo), .features = sigbus ? UFFD_FEATURE_SIGBUS : 0,
				.want_features = UFFD_FEATURES_DEFAULT | UFFD_FEATURE_WP_ASYNC };
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = len, .fd = -1,
				       .modes = UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP };
	struct uffd_loop_opts lo = { .size = sizeof(lo) };
	struct uffd_loop *l = NULL;
	struct uffd_region *r = NULL;
	struct uffd_span sp[8];
	struct uffd *u = NULL;
	volatile char *base;
	char *src = calloc(1, len);
	void *next;
	int n;

	ck_assert_msg(uffd_open(&u, &uo) == 0, "%s", uffd_last_error());
	ck_assert_msg(uffd_region_create(u, &ro, &r) == 0, "%s", uffd_last_error());
	base = uffd_region_base(r);
	ck_assert_int_eq(uffd_region_populate(r, 0, src, len, UFFD_POPULATE_MAP), 0);
	if (sigbus) {
		ck_assert_int_eq(uffd_sigbus_add_region(r, resolve_sigbus, NULL), 0);
	} else {
		ck_assert_int_eq(uffd_loop_new(&l, &lo), 0);
		ck_assert_int_eq(uffd_loop_add_region(l, r, NULL, NULL), 0);
		ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	}
	ck_assert_int_eq(uffd_dirty_start(u, (void *)base, len), 0);
	base[3 * ps] = 1;	/* written: no longer protected */
	ck_assert_int_eq(uffd_region_zap(r, 3 * ps, ps), 0);
	ck_assert_int_eq(uffd_region_zap(r, 5 * ps, ps), 0);	/* clean: keeps a marker */
	/* MINOR faults (a loop's through harness_load8, which valgrind needs) */
	if (sigbus)
		ck_assert_int_eq(base[3 * ps] + base[5 * ps], 1);
	else
		ck_assert_int_eq(harness_load8(base + 3 * ps) + harness_load8(base + 5 * ps), 1);
	n = uffd_dirty_scan(u, (void *)base, len, sp, 8, 0, &next);
	ck_assert_msg(n >= 1 && (char *)sp[0].addr == base + 3 * ps,
		      "the page written before it was zapped and faulted back is not reported written (%d spans)", n);
	ck_assert_int_eq(n, 2);
	ck_assert_uint_eq(sp[0].len, ps);
	ck_assert_ptr_eq(sp[1].addr, (void *)(base + 5 * ps));
	ck_assert_uint_eq(sp[1].len, ps);
	if (sigbus)
		ck_assert_int_eq(uffd_sigbus_remove_region(r), 0);
	else
		uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
	free(src);
}

START_TEST(test_async_faults)
{
	NEED_WP_ASYNC();
	if (!harness_have_features(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
		SKIP_TEST("the kernel lacks MINOR_SHMEM or WP_HUGETLBFS_SHMEM");
	if (harness_have_features(UFFD_FEATURE_SIGBUS))
		async_faults(true);
	async_faults(false);
}
END_TEST

/* ---- hugetlb ---- */

START_TEST(test_hugetlb)
{
	struct uffd_span sp[8];
	const char *why = NULL;
	struct uffd *u;
	struct mem m;
	void *next;
	size_t hps;

	NEED_WP_ASYNC();
	hps = harness_hugepages(16, &why);
	if (!hps)
		SKIP_TEST("no huge pages: %s", why);
	u = open_async();
	mem_map(&m, HUGETLB, 8, hps);
	memset(page(&m, 0), 1, hps);	/* written before start */
	mem_track(u, &m);
	(void)*(volatile char *)page(&m, 3);	/* a read is not a write */
	page(&m, 1)[hps - 1] = 1;	/* one byte marks the whole huge page */
	page(&m, 2)[4096] = 1;
	page(&m, 5)[0] = 1;
	ck_assert_int_eq(scan_all(u, &m, sp, 8), 2);
	expect_span(&sp[0], &m, 1, 2);
	expect_span(&sp[1], &m, 5, 1);
	ck_assert_int_eq(scan_all(u, &m, sp, 8), 0);

	/* only whole huge pages */
	ck_assert_int_eq(uffd_dirty_scan(u, m.base + 4096, hps, sp, 8, 0, &next), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "page size"));
	ck_assert_int_eq(uffd_dirty_scan(u, m.base, hps + 4096, sp, 8, 0, &next), -EINVAL);
	ck_assert_int_eq(uffd_dirty_start(u, m.base, hps / 2), -EINVAL);
	mem_unmap(&m);

	/* the random rounds, smaller */
	mem_map(&m, HUGETLB, 16, hps);
	mem_track(u, &m);
	ck_assert_uint_gt(run_rounds(u, &m, 4, 1), 0);
	mem_unmap(&m);
	uffd_close(u);
}
END_TEST

/* ---- bad input ---- */

#define EXPECT_ERR(call, err, text)                                                   \
	do {                                                                          \
		ck_assert_int_eq((call), (err));                                      \
		ck_assert_msg(strstr(uffd_last_error(), (text)) != NULL,             \
			      "\"%s\" lacks \"%s\"", uffd_last_error(), (text));      \
	} while (0)

START_TEST(test_bad_input)
{
	size_t ps = harness_page_size();
	struct uffd_span sp[4];
	struct uffd *plain, *u;
	void *next = (void *)0x1234;
	struct mem m, half;

	NEED_WP_ASYNC();
	/* a handle without WP_ASYNC */
	ck_assert_int_eq(uffd_open(&plain, NULL), 0);
	mem_map(&m, ANON, 32, ps);
	ck_assert_int_eq(uffd_register(plain, m.base, m.len, UFFDIO_REGISTER_MODE_WP, NULL), 0);
	EXPECT_ERR(uffd_dirty_start(plain, m.base, m.len), -EOPNOTSUPP, "WP_ASYNC");
	EXPECT_ERR(uffd_dirty_scan(plain, m.base, m.len, sp, 4, 0, &next), -EOPNOTSUPP, "WP_ASYNC");
	ck_assert_ptr_eq(next, (void *)0x1234);	/* untouched on failure */
	uffd_close(plain);
	mem_unmap(&m);

	EXPECT_ERR(uffd_dirty_start(NULL, m.base, m.len), -EINVAL, "NULL");
	EXPECT_ERR(uffd_dirty_scan(NULL, m.base, m.len, sp, 4, 0, &next), -EINVAL, "NULL");

	/* unregistered, registered without MODE_WP */
	u = open_async();
	mem_map(&m, ANON, 32, ps);
	EXPECT_ERR(uffd_dirty_start(u, m.base, m.len), -ENOENT, "UFFDIO_REGISTER_MODE_WP");
	EXPECT_ERR(uffd_dirty_scan(u, m.base, m.len, sp, 4, 0, &next), -ENOENT, "UFFDIO_REGISTER_MODE_WP");
	ck_assert_int_eq(uffd_register(u, m.base, m.len, UFFDIO_REGISTER_MODE_MISSING, NULL), 0);
	EXPECT_ERR(uffd_dirty_start(u, m.base, m.len), -ENOENT, "UFFDIO_REGISTER_MODE_WP");
	EXPECT_ERR(uffd_dirty_scan(u, m.base, m.len, sp, 4, UFFD_SCAN_REARM, &next), -ENOENT, "MODE_WP");
	ck_assert_ptr_eq(next, (void *)0x1234);

	/* half registered: a rearming scan fails before protecting anything */
	ck_assert_int_eq(uffd_unregister(u, m.base, m.len), 0);
	half = m;
	half.len = m.len / 2;
	half.npages = m.npages / 2;
	mem_track(u, &half);
	page(&m, 2)[0] = 1;
	EXPECT_ERR(uffd_dirty_scan(u, m.base, m.len, sp, 4, UFFD_SCAN_REARM, &next), -ENOENT, "MODE_WP");
	ck_assert_int_eq(scan_all(u, &half, sp, 4), 1);
	expect_span(&sp[0], &half, 2, 1);

	/* arguments */
	EXPECT_ERR(uffd_dirty_scan(u, m.base, half.len, NULL, 4, 0, &next), -EINVAL, "spans is NULL");
	EXPECT_ERR(uffd_dirty_scan(u, m.base, half.len, sp, 4, 0x2, &next), -EINVAL, "flags");
	EXPECT_ERR(uffd_dirty_scan(u, m.base, half.len, sp, 4, ~0u, &next), -EINVAL, "flags");
	EXPECT_ERR(uffd_dirty_scan(u, m.base + 1, half.len, sp, 4, 0, &next), -EINVAL, "page size");
	EXPECT_ERR(uffd_dirty_scan(u, m.base, 100, sp, 4, 0, &next), -EINVAL, "page size");
	EXPECT_ERR(uffd_dirty_scan(u, m.base, 0, sp, 4, 0, &next), -EINVAL, "length is 0");
	EXPECT_ERR(uffd_dirty_scan(u, (void *)-ps, 2 * ps, sp, 4, 0, &next), -EINVAL, "wraps");
	EXPECT_ERR(uffd_dirty_scan(u, (void *)(1ul << 47), ps, sp, 4, 0, &next), -EFAULT, "address space");
	EXPECT_ERR(uffd_dirty_start(u, m.base + ps / 2, ps), -EINVAL, "page size");
	EXPECT_ERR(uffd_dirty_start(u, m.base, 0), -EINVAL, "length is 0");
	ck_assert_ptr_eq(next, (void *)0x1234);
	/* NULL spans with max 0 and a NULL next are fine */
	ck_assert_int_eq(uffd_dirty_scan(u, m.base, half.len, NULL, 0, 0, &next), 0);
	ck_assert_ptr_eq(next, m.base + half.len);
	ck_assert_int_eq(uffd_dirty_scan(u, m.base, half.len, sp, 4, 0, NULL), 0);
	mem_unmap(&m);
	uffd_close(u);
}
END_TEST

/* ---- the handle's pagemap fd ---- */

struct first_scan {
	struct uffd *u;
	struct mem *m;
	pthread_barrier_t *start;
	int ret;
};

static void *first_scan_main(void *arg)
{
	struct first_scan *f = arg;
	struct uffd_span sp[4];

	pthread_barrier_wait(f->start);
	f->ret = uffd_dirty_scan(f->u, f->m->base, f->m->len, sp, 4, 0, NULL);
	return NULL;
}

/* The pagemap fd of the handle, found through /proc/self/fd. */
static int find_pagemap_fd(void)
{
	char path[64], target[64];

	for (int fd = 0; fd < 1024; fd++) {
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		n = readlink(path, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (strstr(target, "/pagemap"))
			return fd;
	}
	return -1;
}

START_TEST(test_pagemap_fd)
{
	int base = harness_count_fds();
	pthread_barrier_t start;
	struct mem m;

	NEED_WP_ASYNC();
	mem_map(&m, ANON, 64, harness_page_size());
	base = harness_count_fds();
	pthread_barrier_init(&start, NULL, 4);
	for (int round = 0; round < 20; round++) {	/* racing first calls keep one fd */
		struct uffd *u = open_async();
		struct first_scan f[4];
		void *th[4];
		int pm;

		mem_track(u, &m);
		ck_assert_int_eq(harness_count_fds(), base + 1);
		for (int i = 0; i < 4; i++) {
			f[i] = (struct first_scan){ .u = u, .m = &m, .start = &start };
			th[i] = harness_thread_start(first_scan_main, &f[i]);
		}
		for (int i = 0; i < 4; i++) {
			harness_thread_join(th[i]);
			ck_assert_int_eq(f[i].ret, 0);
		}
		ck_assert_int_eq(harness_count_fds(), base + 2);
		pm = find_pagemap_fd();
		ck_assert_int_ge(pm, 0);
		ck_assert_int_ne(fcntl(pm, F_GETFD) & FD_CLOEXEC, 0);
		uffd_close(u);
		ck_assert_int_eq(harness_count_fds(), base);
	}
	pthread_barrier_destroy(&start);
	mem_unmap(&m);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("dirty");
	TCase *tc = CASE(anon_rounds, 60);

	tcase_add_test(tc, test_anon_rounds);
	tc = CASE(shmem_rounds, 60);
	tcase_add_test(tc, test_shmem_rounds);
	tc = CASE(concurrent, 60);
	tcase_add_test(tc, test_concurrent);
	tc = CASE(resume, 30);
	tcase_add_test(tc, test_resume);
	tc = CASE(semantics, 30);
	tcase_add_test(tc, test_untouched);
	tcase_add_test(tc, test_dontneed);
	tc = CASE(async_faults, 30);
	tcase_add_test(tc, test_async_faults);
	tc = CASE(hugetlb, 60);
	tcase_add_test(tc, test_hugetlb);
	tc = CASE(bad_input, 30);
	tcase_add_test(tc, test_bad_input);
	tcase_add_test(tc, test_pagemap_fd);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
