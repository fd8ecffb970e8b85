/* SPDX-License-Identifier: MIT */
/*
 * rangemap.c (internal): insert, find, remove, move, overlap refusal,
 * ordering with many entries, and lock-free readers (threads and a signal
 * handler) racing a writer.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "harness.h"

static struct rangemap_entry ent(uintptr_t start, uintptr_t end, size_t ps, void *ptr)
{
	return (struct rangemap_entry){ .start = start, .end = end, .page_size = ps, .ptr = ptr };
}

static bool finds(struct rangemap *m, uintptr_t addr, const void *ptr)
{
	struct rangemap_entry e;

	if (!rangemap_find(m, addr, &e))
		return ptr == NULL;
	return e.ptr == ptr && e.start <= addr && addr < e.end;
}

/* ---- single-threaded ---- */

START_TEST(test_insert_find_remove)
{
	struct rangemap m = RANGEMAP_INIT;
	struct rangemap_entry e = ent(0x10000, 0x14000, 4096, &m), got;

	ck_assert(!rangemap_find(&m, 0x10000, &got));
	ck_assert_uint_eq(rangemap_count(&m), 0);
	ck_assert_int_eq(rangemap_remove(&m, &m), -ENOENT);
	ck_assert_int_eq(rangemap_move(&m, &m, 0x20000), -ENOENT);

	ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	ck_assert_uint_eq(rangemap_count(&m), 1);
	memset(&got, 0, sizeof(got));
	ck_assert(rangemap_find(&m, 0x12345, &got));
	ck_assert_uint_eq(got.start, 0x10000);
	ck_assert_uint_eq(got.end, 0x14000);
	ck_assert_uint_eq(got.page_size, 4096);
	ck_assert_ptr_eq(got.ptr, &m);
	ck_assert(finds(&m, 0x10000, &m));
	ck_assert(finds(&m, 0x13fff, &m));
	ck_assert(finds(&m, 0x14000, NULL));
	ck_assert(finds(&m, 0xffff, NULL));
	ck_assert(finds(&m, 0, NULL));
	ck_assert(finds(&m, UINTPTR_MAX, NULL));

	ck_assert_int_eq(rangemap_remove(&m, &m), 0);
	ck_assert_uint_eq(rangemap_count(&m), 0);
	ck_assert(finds(&m, 0x12345, NULL));
	ck_assert_int_eq(rangemap_remove(&m, &m), -ENOENT);
	/* Usable again after becoming empty. */
	ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	ck_assert(finds(&m, 0x10000, &m));
	rangemap_destroy(&m);
}
END_TEST

START_TEST(test_overlap)
{
	struct rangemap m = RANGEMAP_INIT;
	int a, b, c, x;
	struct rangemap_entry e = ent(0x10000, 0x20000, 4096, &a);
	const struct { uintptr_t s, e; } bad[] = {
		{ 0x10000, 0x20000 },	/* same */
		{ 0x8000, 0x10001 },	/* over the start */
		{ 0x1f000, 0x30000 },	/* over the end */
		{ 0x0, 0x40000 },	/* containing */
		{ 0x14000, 0x18000 },	/* contained */
		{ 0x1ffff, 0x20000 },	/* last byte */
	};

	ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct rangemap_entry o = ent(bad[i].s, bad[i].e, 4096, &x);

		ck_assert_int_eq(rangemap_insert(&m, &o), -EEXIST);
	}
	ck_assert_uint_eq(rangemap_count(&m), 1);
	/* Adjacent on both sides is fine. */
	e = ent(0x20000, 0x30000, 4096, &b);
	ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	e = ent(0x8000, 0x10000, 4096, &c);
	ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	ck_assert_uint_eq(rangemap_count(&m), 3);
	ck_assert(finds(&m, 0xffff, &c));
	ck_assert(finds(&m, 0x10000, &a));
	ck_assert(finds(&m, 0x1ffff, &a));
	ck_assert(finds(&m, 0x20000, &b));
	ck_assert(finds(&m, 0x30000, NULL));
	rangemap_destroy(&m);
}
END_TEST

START_TEST(test_move)
{
	struct rangemap m = RANGEMAP_INIT;
	int a, b, c;
	struct rangemap_entry e = ent(0x10000, 0x12000, 2 << 20, &a), got;

	ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	e = ent(0x20000, 0x21000, 4096, &b);
	ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	e = ent(0x30000, 0x38000, 4096, &c);
	ck_assert_int_eq(rangemap_insert(&m, &e), 0);

	/* a past everything: ordering follows. */
	ck_assert_int_eq(rangemap_move(&m, &a, 0x40000), 0);
	ck_assert(finds(&m, 0x10000, NULL));
	ck_assert(rangemap_find(&m, 0x41fff, &got));
	ck_assert_ptr_eq(got.ptr, &a);
	ck_assert_uint_eq(got.start, 0x40000);
	ck_assert_uint_eq(got.end, 0x42000);
	ck_assert_uint_eq(got.page_size, 2 << 20);
	ck_assert(finds(&m, 0x42000, NULL));
	ck_assert(finds(&m, 0x20000, &b));
	ck_assert(finds(&m, 0x37fff, &c));
	/* c before everything, overlapping its own old range is fine. */
	ck_assert_int_eq(rangemap_move(&m, &c, 0x2c000), 0);
	ck_assert(finds(&m, 0x2c000, &c));
	ck_assert(finds(&m, 0x33fff, &c));
	ck_assert(finds(&m, 0x34000, NULL));
	ck_assert_int_eq(rangemap_move(&m, &c, 0x1000), 0);
	ck_assert(finds(&m, 0x1000, &c));
	ck_assert(finds(&m, 0x8fff, &c));
	/* Onto another entry: refused, nothing changes. */
	ck_assert_int_eq(rangemap_move(&m, &b, 0x41000), -EEXIST);
	ck_assert_int_eq(rangemap_move(&m, &b, 0x8000), -EEXIST);
	ck_assert(finds(&m, 0x20000, &b));
	ck_assert(finds(&m, 0x1000, &c));
	ck_assert(finds(&m, 0x40000, &a));
	ck_assert_uint_eq(rangemap_count(&m), 3);
	rangemap_destroy(&m);
}
END_TEST

#define MANY 1000

/* The entries of m, in order, as "start-end:ps " triples (hex, ps in KiB). */
static const char *dump(struct rangemap *m, uintptr_t lo, uintptr_t hi, char *buf, size_t size)
{
	struct rangemap_entry e;
	size_t used = 0;

	buf[0] = '\0';
	for (uintptr_t a = lo; a < hi; a = e.end) {
		if (!rangemap_find(m, a, &e)) {
			e.end = a + 0x1000;
			continue;
		}
		used += (size_t)snprintf(buf + used, size - used, "%lx-%lx:%zu ", (unsigned long)e.start,
					 (unsigned long)e.end, e.page_size / 1024);
	}
	return buf;
}

START_TEST(test_replace_shift)
{
	struct rangemap m = RANGEMAP_INIT;
	struct rangemap_entry add[2] = { ent(0x14000, 0x16000, 8192, NULL), ent(0x18000, 0x1a000, 8192, NULL) };
	char buf[256];

	/* Replacing nothing with nothing allocates and changes nothing. */
	ck_assert_int_eq(rangemap_replace(&m, 0x10000, 0x20000, NULL, 0), 0);
	ck_assert_uint_eq(rangemap_count(&m), 0);
	ck_assert_int_eq(rangemap_insert(&m, &(struct rangemap_entry){ 0x10000, 0x20000, 2048 * 1024, NULL, 0 }), 0);
	/* Cut out of the middle of one entry, with two new ones inside. */
	ck_assert_int_eq(rangemap_replace(&m, 0x12000, 0x1c000, add, 2), 0);
	ck_assert_str_eq(dump(&m, 0x8000, 0x30000, buf, sizeof(buf)),
			 "10000-12000:2048 14000-16000:8 18000-1a000:8 1c000-20000:2048 ");
	/* Straddling two entries' ends. */
	ck_assert_int_eq(rangemap_replace(&m, 0x11000, 0x15000, NULL, 0), 0);
	ck_assert_str_eq(dump(&m, 0x8000, 0x30000, buf, sizeof(buf)),
			 "10000-11000:2048 15000-16000:8 18000-1a000:8 1c000-20000:2048 ");
	/* A move: what lies in [0x14000, 0x1a000) goes to 0x40000, replacing what was there. */
	ck_assert_int_eq(rangemap_insert(&m, &(struct rangemap_entry){ 0x42000, 0x44000, 4096, NULL, 0 }), 0);
	ck_assert_int_eq(rangemap_shift(&m, 0x14000, 0x40000, 0x6000), 0);
	ck_assert_str_eq(dump(&m, 0x8000, 0x50000, buf, sizeof(buf)),
			 "10000-11000:2048 1c000-20000:2048 41000-42000:8 44000-46000:8 ");
	/* A move where nothing is recorded changes nothing. */
	ck_assert_int_eq(rangemap_shift(&m, 0x60000, 0x70000, 0x1000), 0);
	ck_assert_uint_eq(rangemap_count(&m), 4);
	rangemap_destroy(&m);
}
END_TEST

/*
 * A partial mremap of an object: the moved part keeps its offset into the
 * object, so does the part after it; without a reserved spare table the
 * allocation-free shift changes nothing, with one it allocates nothing.
 */
START_TEST(test_shift_offsets)
{
	struct rangemap m = RANGEMAP_INIT;
	int obj;
	struct rangemap_entry e;

	ck_assert_int_eq(rangemap_insert(&m, &(struct rangemap_entry){ 0x10000, 0x20000, 4096, &obj, 0 }), 0);
	ck_assert_int_eq(rangemap_shift_prealloc(&m, 0x14000, 0x80000, 0x4000), -EAGAIN);
	ck_assert(rangemap_find(&m, 0x15000, &e) && e.start == 0x10000);
	ck_assert_int_eq(rangemap_reserve(&m, RANGEMAP_SHIFT_EXTRA), 0);
	ck_assert_int_eq(rangemap_shift_prealloc(&m, 0x14000, 0x80000, 0x4000), 0);
	ck_assert_uint_eq(rangemap_count(&m), 3);
	ck_assert(!rangemap_find(&m, 0x15000, &e));
	ck_assert(rangemap_find(&m, 0x81000, &e));
	ck_assert(e.start == 0x80000 && e.end == 0x84000 && e.off == 0x4000 && e.ptr == &obj);
	ck_assert(rangemap_find(&m, 0x19000, &e));
	ck_assert(e.start == 0x18000 && e.end == 0x20000 && e.off == 0x8000);
	ck_assert(rangemap_find(&m, 0x10000, &e) && e.end == 0x14000 && e.off == 0);
	/* The spare was used (the old table, too small, took its place): reserve again. */
	ck_assert_int_eq(rangemap_shift_prealloc(&m, 0x80000, 0x14000, 0x4000), -EAGAIN);
	ck_assert_int_eq(rangemap_reserve(&m, RANGEMAP_SHIFT_EXTRA), 0);
	ck_assert_int_eq(rangemap_shift_prealloc(&m, 0x80000, 0x14000, 0x4000), 0);
	ck_assert(rangemap_find(&m, 0x15000, &e) && e.start == 0x14000 && e.off == 0x4000);
	rangemap_destroy(&m);
}
END_TEST

START_TEST(test_many_ordered)
{
	struct rangemap m = RANGEMAP_INIT;
	static char objs[MANY];
	int order[MANY];
	unsigned seed = 12345;

	for (int i = 0; i < MANY; i++)
		order[i] = i;
	for (int i = MANY - 1; i > 0; i--) {
		int j = (int)(rand_r(&seed) % (unsigned)(i + 1)), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	/* Entry i: [i * 64K, i * 64K + (i % 15 + 1) * 4K), gaps in between. */
	for (int k = 0; k < MANY; k++) {
		uintptr_t i = (uintptr_t)order[k];
		struct rangemap_entry e = ent(i << 16, (i << 16) + ((i % 15) + 1) * 4096, 4096, &objs[i]);

		ck_assert_int_eq(rangemap_insert(&m, &e), 0);
	}
	ck_assert_uint_eq(rangemap_count(&m), MANY);
	for (uintptr_t i = 0; i < MANY; i++) {
		uintptr_t end = (i << 16) + ((i % 15) + 1) * 4096;

		ck_assert(finds(&m, i << 16, &objs[i]));
		ck_assert(finds(&m, end - 1, &objs[i]));
		ck_assert(finds(&m, end, NULL));
		ck_assert(finds(&m, ((i + 1) << 16) - 1, NULL));
	}
	/* Remove the odd ones in shuffled order. */
	for (int k = 0; k < MANY; k++)
		if (order[k] % 2)
			ck_assert_int_eq(rangemap_remove(&m, &objs[order[k]]), 0);
	ck_assert_uint_eq(rangemap_count(&m), MANY / 2);
	for (uintptr_t i = 0; i < MANY; i++)
		ck_assert(finds(&m, (i << 16) + 100, i % 2 ? NULL : &objs[i]));
	rangemap_destroy(&m);
}
END_TEST

/* ---- concurrency ---- */

#define NOBJ 64
#define NREADERS 3

struct obj {
	uintptr_t home[2];	/* where it may be: the writer moves it between them */
	size_t len, page_size;
};

static struct obj objs[NOBJ];
static struct rangemap shared = RANGEMAP_INIT;
static atomic_bool stop;

static void objs_init(void)
{
	for (int i = 0; i < NOBJ; i++) {
		objs[i].home[0] = 0x100000 + (uintptr_t)i * 0x10000;
		objs[i].home[1] = 0x10000000 + (uintptr_t)i * 0x10000;
		objs[i].len = 0x1000 * (size_t)(1 + i % 8);
		objs[i].page_size = (size_t)4096 << (i % 3);
	}
}

/* Every result must be exactly the entry that can hold addr, or none. */
static bool consistent(uintptr_t addr, int i, int side, bool gap,
		       const struct rangemap_entry *e, bool found)
{
	const struct obj *o = &objs[i];

	if (!found)
		return true;
	if (gap)
		return false;
	return e->ptr == o && e->start == o->home[side] && e->end == e->start + o->len &&
	       e->page_size == o->page_size && e->start <= addr && addr < e->end;
}

struct reader {
	unsigned seed;
	atomic_long hits, misses, bad;	/* read by the writer while it runs */
};

static void *reader_fn(void *arg)
{
	struct reader *r = arg;

	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		int i = (int)(rand_r(&r->seed) % NOBJ), side = (int)(rand_r(&r->seed) % 2);
		bool gap = rand_r(&r->seed) % 4 == 0;
		uintptr_t off = rand_r(&r->seed) % objs[i].len;
		uintptr_t addr = objs[i].home[side] + (gap ? objs[i].len + off % 0x8000 : off);
		struct rangemap_entry e;
		bool found = rangemap_find(&shared, addr, &e);

		if (!consistent(addr, i, side, gap, &e, found))
			atomic_fetch_add_explicit(&r->bad, 1, memory_order_relaxed);
		else
			atomic_fetch_add_explicit(found ? &r->hits : &r->misses, 1, memory_order_relaxed);
	}
	return NULL;
}

/* The writer goes on for a while and until enough(ops) holds, within this. */
#define WRITER_DEADLINE_S 20.0

/*
 * Inserts, removes and moves objects at random for min_s seconds and until
 * enough(ops), however slow the machine, or the deadline. Returns the
 * operations done.
 */
static long writer_run(double min_s, unsigned seed, bool (*enough)(long ops))
{
	int where[NOBJ];	/* -1: absent, else the home it is at */
	double start = harness_now(), t;
	long ops = 0;

	for (int i = 0; i < NOBJ; i++)
		where[i] = -1;
	while ((t = harness_now() - start) < WRITER_DEADLINE_S && (t < min_s || !enough(ops))) {
		int i = (int)(rand_r(&seed) % NOBJ);
		struct obj *o = &objs[i];

		if (where[i] < 0) {
			struct rangemap_entry e = ent(o->home[0], o->home[0] + o->len, o->page_size, o);

			ck_assert_int_eq(rangemap_insert(&shared, &e), 0);
			where[i] = 0;
		} else if (rand_r(&seed) % 2) {
			ck_assert_int_eq(rangemap_remove(&shared, o), 0);
			where[i] = -1;
		} else {
			where[i] ^= 1;
			ck_assert_int_eq(rangemap_move(&shared, o, o->home[where[i]]), 0);
		}
		ops++;
	}
	for (int i = 0; i < NOBJ; i++)
		if (where[i] >= 0)
			ck_assert_int_eq(rangemap_remove(&shared, &objs[i]), 0);
	return ops;
}

#define MIN_OPS 100

static struct reader readers[NREADERS];

/* Every reader has found entries and gaps, the writer changed the map. */
static bool readers_enough(long ops)
{
	for (int k = 0; k < NREADERS; k++)
		if (!atomic_load(&readers[k].hits) || !atomic_load(&readers[k].misses))
			return false;
	return ops > MIN_OPS;
}

START_TEST(test_readers_vs_writer)
{
	struct reader *r = readers;
	void *th[NREADERS];
	long ops;

	objs_init();
	atomic_store(&stop, false);
	for (int k = 0; k < NREADERS; k++) {
		r[k] = (struct reader){ .seed = 100u + (unsigned)k };
		th[k] = harness_thread_start(reader_fn, &r[k]);
	}
	ops = writer_run(2.0, 7, readers_enough);
	atomic_store(&stop, true);
	for (int k = 0; k < NREADERS; k++) {
		harness_thread_join(th[k]);
		ck_assert_int_eq(r[k].bad, 0);
		ck_assert_int_gt(r[k].hits, 0);
		ck_assert_int_gt(r[k].misses, 0);
	}
	ck_assert_int_gt(ops, MIN_OPS);
	ck_assert_uint_eq(rangemap_count(&shared), 0);
	rangemap_destroy(&shared);
}
END_TEST

/* A reader in a signal handler that interrupts the writer itself, anywhere. */
static int anchor;
static volatile sig_atomic_t sig_finds, sig_bad;

static void on_usr1(int sig)
{
	struct rangemap_entry e;

	(void)sig;
	if (!rangemap_find(&shared, 0x1000, &e) || e.ptr != &anchor)
		sig_bad++;
	if (rangemap_find(&shared, 0x3000, &e))
		sig_bad++;
	sig_finds++;
}

struct kicker {
	pthread_t target;
};

static void *kicker_fn(void *arg)
{
	struct kicker *k = arg;
	struct timespec ts = { 0, 20000 };

	while (!atomic_load(&stop)) {
		pthread_kill(k->target, SIGUSR1);
		nanosleep(&ts, NULL);
	}
	return NULL;
}

/* The handler has interrupted the writer often, the writer changed the map. */
static bool signals_enough(long ops)
{
	return sig_finds > MIN_OPS && ops > MIN_OPS;
}

START_TEST(test_signal_reader)
{
	struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_RESTART };
	struct rangemap_entry e = ent(0x1000, 0x2000, 4096, &anchor);
	struct kicker k = { .target = pthread_self() };
	void *th;
	long ops;

	objs_init();
	ck_assert_int_eq(rangemap_insert(&shared, &e), 0);
	ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
	atomic_store(&stop, false);
	th = harness_thread_start(kicker_fn, &k);
	ops = writer_run(1.0, 3, signals_enough);
	atomic_store(&stop, true);
	harness_thread_join(th);
	signal(SIGUSR1, SIG_IGN);
	ck_assert_int_gt(ops, MIN_OPS);
	ck_assert_int_gt(sig_finds, MIN_OPS);
	ck_assert_int_eq(sig_bad, 0);
	ck_assert_uint_eq(rangemap_count(&shared), 1);
	rangemap_destroy(&shared);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("rangemap");
	TCase *tc = CASE(basic, 10);

	tcase_add_test(tc, test_insert_find_remove);
	tcase_add_test(tc, test_overlap);
	tcase_add_test(tc, test_move);
	tcase_add_test(tc, test_many_ordered);
	tcase_add_test(tc, test_replace_shift);
	tcase_add_test(tc, test_shift_offsets);
	tc = CASE(concurrent, 30);
	tcase_add_test(tc, test_readers_vs_writer);
	tcase_add_test(tc, test_signal_reader);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
