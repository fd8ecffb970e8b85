/* SPDX-License-Identifier: MIT */
/*
 * pagestate.c: a region's page source and its removed-page bitmap, on
 * region structs made by hand (no userfaultfd needed).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "internal.h"

#define PS 4096u
#define HUGE (2u << 20)

static struct uffd_region region(size_t pages, size_t ps)
{
	return (struct uffd_region){ .length = pages * ps, .page_size = ps, .fd = -1 };
}

/* r with a source, so that it has a bitmap; the source is never read here. */
static void give_source(struct uffd_region *r)
{
	static const char src;

	ck_assert_int_eq(uffd_region_set_source(r, &src, r->length), 0);
	ck_assert_ptr_eq(uffd__region_source(r), &src);
}

/* Pages of [first, first+n) that take_removed reports, clearing them. */
static size_t take_all(struct uffd_region *r, size_t first, size_t n)
{
	size_t k = 0;

	for (size_t p = first; p < first + n; p++)
		k += uffd__region_take_removed(r, (uint64_t)p * r->page_size);
	return k;
}

START_TEST(test_no_source)
{
	struct uffd_region r = region(100, PS);
	bool removed = true;

	ck_assert_ptr_null(uffd__region_source(&r));
	uffd__region_mark_removed(&r, 0, r.length);	/* nothing remembers it */
	ck_assert(!uffd__region_take_removed(&r, 5 * PS));
	ck_assert_uint_eq(uffd__region_removed_run(&r, 0, r.length, &removed), r.length);
	ck_assert(!removed);
	uffd__region_pagestate_free(&r);
}
END_TEST

START_TEST(test_mark_take)
{
	struct uffd_region r = region(100, PS);
	bool removed;

	give_source(&r);
	uffd__region_mark_removed(&r, 3 * PS, 5 * PS);	/* pages 3..7 */
	ck_assert(!uffd__region_take_removed(&r, 2 * PS));
	ck_assert(uffd__region_take_removed(&r, 3 * PS));
	ck_assert(!uffd__region_take_removed(&r, 3 * PS));	/* taken once */
	ck_assert(uffd__region_take_removed(&r, 4 * PS + 17));	/* any byte of the page */
	ck_assert_uint_eq(uffd__region_removed_run(&r, 0, r.length, &removed), 5 * PS);
	ck_assert(!removed);
	ck_assert_uint_eq(uffd__region_removed_run(&r, 5 * PS, r.length, &removed), 3 * PS);
	ck_assert(removed);
	ck_assert_uint_eq(uffd__region_removed_run(&r, 5 * PS, 2 * PS, &removed), 2 * PS);
	ck_assert_uint_eq(uffd__region_removed_run(&r, 8 * PS, r.length, &removed), 92 * PS);
	ck_assert(!removed);
	ck_assert_uint_eq(take_all(&r, 0, 100), 3);
	uffd__region_pagestate_free(&r);
}
END_TEST

/* Unaligned ranges cover every page they touch; ranges are clamped to the region. */
START_TEST(test_edges)
{
	struct uffd_region r = region(100, PS);
	bool removed;

	give_source(&r);
	uffd__region_mark_removed(&r, 10 * PS + 100, 1);
	ck_assert_uint_eq(take_all(&r, 0, 100), 1);
	uffd__region_mark_removed(&r, 20 * PS - 1, 2);	/* pages 19 and 20 */
	ck_assert(uffd__region_take_removed(&r, 19 * PS) && uffd__region_take_removed(&r, 20 * PS));
	uffd__region_mark_removed(&r, 98 * PS, UINT64_MAX);	/* clamped: 98, 99 */
	ck_assert_uint_eq(take_all(&r, 0, 100), 2);
	uffd__region_mark_removed(&r, r.length, PS);	/* outside: nothing */
	uffd__region_mark_removed(&r, 0, 0);
	ck_assert_uint_eq(take_all(&r, 0, 100), 0);
	ck_assert(!uffd__region_take_removed(&r, r.length));
	ck_assert_uint_eq(uffd__region_removed_run(&r, r.length, PS, &removed), 0);
	ck_assert_uint_eq(uffd__region_removed_run(&r, 0, 0, &removed), 0);
	/* The last, partial word of the bitmap. */
	uffd__region_mark_removed(&r, 0, r.length);
	ck_assert_uint_eq(uffd__region_removed_run(&r, 0, r.length, &removed), r.length);
	ck_assert(removed);
	ck_assert_uint_eq(take_all(&r, 0, 100), 100);
	uffd__region_pagestate_free(&r);
}
END_TEST

/* Ranges across word boundaries set and clear exactly their bits. */
START_TEST(test_words)
{
	struct uffd_region r = region(300, PS);
	bool removed;

	give_source(&r);
	uffd__region_mark_removed(&r, 60 * PS, 140 * PS);	/* 60..199 */
	uffd__region_clear_removed(&r, 64 * PS, 64 * PS);	/* 64..127: one whole word */
	uffd__region_clear_removed(&r, 150 * PS, 1);		/* 150 */
	ck_assert_uint_eq(uffd__region_removed_run(&r, 60 * PS, r.length, &removed), 4 * PS);
	ck_assert(removed);
	ck_assert_uint_eq(uffd__region_removed_run(&r, 64 * PS, r.length, &removed), 64 * PS);
	ck_assert(!removed);
	ck_assert_uint_eq(uffd__region_removed_run(&r, 128 * PS, r.length, &removed), 22 * PS);
	ck_assert(removed);
	ck_assert_uint_eq(take_all(&r, 0, 300), 4 + 22 + 49);
	uffd__region_pagestate_free(&r);
}
END_TEST

START_TEST(test_huge_pages)
{
	struct uffd_region r = region(8, HUGE);
	bool removed;

	give_source(&r);
	uffd__region_mark_removed(&r, HUGE + 4096, 4096);	/* inside huge page 1 */
	ck_assert(!uffd__region_take_removed(&r, 0));
	ck_assert_uint_eq(uffd__region_removed_run(&r, HUGE, 8ull * HUGE, &removed), HUGE);
	ck_assert(removed);
	ck_assert(uffd__region_take_removed(&r, HUGE + HUGE - 1));
	uffd__region_pagestate_free(&r);
}
END_TEST

START_TEST(test_set_source_args)
{
	struct uffd_region r = region(4, PS);
	static char buf[4 * PS];

	ck_assert_int_eq(uffd_region_set_source(NULL, buf, sizeof(buf)), -EINVAL);
	ck_assert_int_eq(uffd_region_set_source(&r, buf, sizeof(buf) - 1), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "cover the whole region"));
	ck_assert_int_eq(uffd_region_set_source(&r, (void *)(UINTPTR_MAX - PS), sizeof(buf)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "wraps"));
	ck_assert_ptr_null(r.removed);	/* refused calls allocate nothing */
	ck_assert_int_eq(uffd_region_set_source(&r, buf, sizeof(buf) + 1), 0);
	ck_assert_uint_eq(r.src_len, sizeof(buf) + 1);
	uffd__region_mark_removed(&r, PS, PS);
	/* Clearing the source keeps what was removed: those pages stay zero. */
	ck_assert_int_eq(uffd_region_set_source(&r, NULL, 0), 0);
	ck_assert_ptr_null(uffd__region_source(&r));
	ck_assert(uffd__region_take_removed(&r, PS));
	uffd__region_pagestate_free(&r);
}
END_TEST

/* One thread marks every page once while two take: each mark is taken once. */
#define RACE_PAGES 20000

struct race {
	struct uffd_region *r;
	atomic_bool done;
	atomic_size_t taken;
};

static void *marker(void *arg)
{
	struct race *x = arg;

	for (size_t p = 0; p < RACE_PAGES; p++)
		uffd__region_mark_removed(x->r, (uint64_t)p * PS, PS);
	atomic_store(&x->done, true);
	return NULL;
}

static void *taker(void *arg)
{
	struct race *x = arg;
	bool last = false;

	while (!last) {
		last = atomic_load(&x->done);	/* one more sweep after the marker ended */
		atomic_fetch_add(&x->taken, take_all(x->r, 0, RACE_PAGES));
	}
	return NULL;
}

START_TEST(test_concurrent)
{
	struct uffd_region r = region(RACE_PAGES, PS);
	struct race x = { .r = &r };
	void *t[3];

	give_source(&r);
	t[0] = harness_thread_start(taker, &x);
	t[1] = harness_thread_start(taker, &x);
	t[2] = harness_thread_start(marker, &x);
	for (int i = 2; i >= 0; i--)
		harness_thread_join(t[i]);
	ck_assert_uint_eq(atomic_load(&x.taken), RACE_PAGES);
	uffd__region_pagestate_free(&r);
}
END_TEST

static Suite *pagestate_suite(void)
{
	Suite *s = suite_create("pagestate");
	TCase *tc;

	tc = CASE(no_source, 10);
	tcase_add_test(tc, test_no_source);
	tc = CASE(mark_take, 10);
	tcase_add_test(tc, test_mark_take);
	tc = CASE(edges, 10);
	tcase_add_test(tc, test_edges);
	tc = CASE(words, 10);
	tcase_add_test(tc, test_words);
	tc = CASE(huge_pages, 10);
	tcase_add_test(tc, test_huge_pages);
	tc = CASE(set_source_args, 10);
	tcase_add_test(tc, test_set_source_args);
	tc = CASE(concurrent, 60);
	tcase_add_test(tc, test_concurrent);
	return s;
}

int main(void)
{
	return harness_run(pagestate_suite());
}
