/* SPDX-License-Identifier: MIT */
/*
 * Failure paths reached only through the test hooks of the white-box build
 * (LIBUFFD_TEST_HOOKS): a PAGEMAP_SCAN that fails part-way. And the
 * async-signal-safe formatter behind every error sentence, against
 * snprintf.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "harness.h"

/* ---- a dirty scan whose walk fails part-way ---- */

static unsigned scan_calls, fail_on_call;
static int fail_errno;

/*
 * The kernel's part-way failure, for real: the walk over the first half
 * of what was asked (re-arming the written pages it reports there, when
 * asked to), then an error instead of the count, as PAGEMAP_SCAN returns
 * when a mapping changes under its walk or a fatal signal is pending.
 */
static long half_then_fail(int fd, struct pm_scan_arg *a)
{
	uint64_t end = a->end, ps = harness_page_size();
	long n;

	if (++scan_calls != fail_on_call)
		return ioctl(fd, PAGEMAP_SCAN, a);
	a->end = a->start + (a->end - a->start) / 2 / ps * ps;
	n = ioctl(fd, PAGEMAP_SCAN, a);
	a->end = end;
	if (n < 0)
		return n;
	errno = fail_errno;
	return -1;
}

static struct uffd *open_async(void)
{
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_WP_ASYNC };
	struct uffd *u = NULL;

	ck_assert_msg(uffd_open(&u, &o) == 0, "%s", uffd_last_error());
	return u;
}

/*
 * npages of anonymous memory, every other page written after tracking
 * started; scans with re-arming, retrying a failed call from where it
 * started as a caller would, until the end. Every written page must be
 * reported exactly once and be write-protected again.
 */
static void scan_through_failure(size_t npages, unsigned fail_call, int err)
{
	size_t ps = harness_page_size(), len = npages * ps, max = npages, reported = 0;
	struct uffd_span *spans = calloc(max, sizeof(*spans));
	unsigned char *seen = calloc(npages, 1);
	char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffd *u = open_async();
	void *from, *next;
	int n, failures = 0;

	ck_assert_ptr_ne(base, MAP_FAILED);
	ck_assert_ptr_nonnull(spans);
	ck_assert_ptr_nonnull(seen);
	memset(base, 1, len);	/* populated: written pages are then one region each */
	ck_assert_int_eq(uffd_register(u, base, len, UFFDIO_REGISTER_MODE_WP, NULL), 0);
	ck_assert_int_eq(uffd_dirty_start(u, base, len), 0);
	for (size_t p = 0; p < npages; p += 2)
		base[p * ps] = 2;
	scan_calls = 0;
	fail_on_call = fail_call;
	fail_errno = -err;
	uffd__test_pagemap_scan = half_then_fail;
	for (from = base; (char *)from < base + len; from = next) {
		next = from;
		n = uffd_dirty_scan(u, from, (size_t)(base + len - (char *)from), spans, max,
				    UFFD_SCAN_REARM, &next);
		if (n < 0) {
			ck_assert_int_eq(n, err);
			ck_assert_int_lt(++failures, 3);
			continue;	/* retry from the same place */
		}
		for (int i = 0; i < n; i++)
			for (size_t off = 0; off < spans[i].len; off += ps) {
				size_t p = (size_t)((char *)spans[i].addr + off - base) / ps;

				ck_assert_uint_lt(p, npages);
				ck_assert_uint_eq(seen[p]++, 0);
				reported++;
			}
	}
	uffd__test_pagemap_scan = NULL;
	ck_assert_uint_ge(scan_calls, fail_call);	/* the failure happened */
	ck_assert_msg(reported == npages / 2, "%zu written pages reported, %zu written", reported,
		      npages / 2);
	for (size_t p = 0; p < npages; p++) {
		ck_assert_uint_eq(seen[p], p % 2 == 0);
		ck_assert_uint_eq(harness_pagemap(base + p * ps) >> 57 & 1, 1);	/* re-armed */
	}
	uffd_close(u);
	munmap(base, len);
	free(spans);
	free(seen);
}

START_TEST(test_scan_fails_first_call)
{
	if (!harness_have_features(UFFD_FEATURE_WP_ASYNC))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7+)");
	/* The first PAGEMAP_SCAN fails after re-arming the first half. */
	scan_through_failure(64, 1, -EINTR);
	scan_through_failure(64, 1, -EPERM);
}
END_TEST

START_TEST(test_scan_fails_later_call)
{
	if (!harness_have_features(UFFD_FEATURE_WP_ASYNC))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7+)");
	/* 1024 separate regions: the walk takes two batches of 512, and the
	 * second fails after re-arming part of the rest. */
	scan_through_failure(2048, 2, -ENOMEM);
}
END_TEST

/* ---- the sentence formatter ---- */

static void expect_format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void expect_format(const char *fmt, ...)
{
	char want[256], got[256], small[8];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(want, sizeof(want), fmt, ap);
	va_end(ap);
	va_start(ap, fmt);
	n = uffd__vformat(got, sizeof(got), fmt, ap);
	va_end(ap);
	ck_assert_str_eq(got, want);
	ck_assert_uint_eq(n, strlen(want));
	/* Truncated like snprintf: what fits, terminated. */
	va_start(ap, fmt);
	uffd__vformat(small, sizeof(small), fmt, ap);
	va_end(ap);
	ck_assert_int_eq(strncmp(small, want, sizeof(small) - 1), 0);
	ck_assert_uint_eq(strlen(small), strlen(want) < sizeof(small) ? strlen(want) : sizeof(small) - 1);
}

START_TEST(test_format)
{
	void *p = (void *)0x7f12345000ul;

	expect_format("plain text, no conversion");
	expect_format("%s and %s", "one", "two");
	expect_format("%d %d %d %d", 0, -1, INT_MAX, INT_MIN);
	expect_format("%u %x %x", UINT_MAX, 0xdeadbeefu, 0u);
	expect_format("%lx %lu %ld", ULONG_MAX, 123456789ul, LONG_MIN);
	expect_format("%llx %llu %lld", ULLONG_MAX, 42ull, LLONG_MIN);
	expect_format("%zu %zd %zd", SIZE_MAX, (ssize_t)-5, (ssize_t)7);
	expect_format("UFFDIO_COPY %p+%zu: %s (%s)", p, (size_t)4096, "the range is gone", "ENOENT");
	expect_format("100%% %c%c", 'o', 'k');
	expect_format("%s", "");
	expect_format("0x%08x, not 0x%08x", 0x48464655u, 0xabcu);
	expect_format("[%5d] [%-5d] [%05d] [%3d]", -42, 42, -42, 123456);
	expect_format("[%6s] [%-6s] [%2s] [%3c]", "ab", "ab", "abcdef", 'z');
	expect_format("[%016llx] [%-8zu]", 0xfeedull, (size_t)77);
}
END_TEST

START_TEST(test_format_stops_at_unknown)
{
	char got[64];

	/* A precision or a * width is not supported: stop instead of misreading arguments. */
	ck_assert_int_eq(uffd__err(-EINVAL, "before %.3s after", "abcdef"), -EINVAL);
	ck_assert_str_eq(uffd_last_error(), "before ");
	uffd__err(-EINVAL, "before %*d after", 4, 3);
	ck_assert_str_eq(uffd_last_error(), "before ");
	uffd__err(-EINVAL, "%s", "x");
	snprintf(got, sizeof(got), "%s", uffd_last_error());
	ck_assert_str_eq(got, "x");
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("internal");
	TCase *tc = CASE(scan_failure, 30);

	tcase_add_test(tc, test_scan_fails_first_call);
	tcase_add_test(tc, test_scan_fails_later_call);
	tc = CASE(format, 10);
	tcase_add_test(tc, test_format);
	tcase_add_test(tc, test_format_stops_at_unknown);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
