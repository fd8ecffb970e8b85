/* SPDX-License-Identifier: MIT */
/* The async-signal-safe formatter behind every error sentence, against snprintf. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "harness.h"

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
}
END_TEST

START_TEST(test_format_stops_at_unknown)
{
	char got[64];

	/* Width and precision are not supported: stop instead of misreading arguments. */
	ck_assert_int_eq(uffd__err(-EINVAL, "before %5d after", 3), -EINVAL);
	ck_assert_str_eq(uffd_last_error(), "before ");
	uffd__err(-EINVAL, "%s", "x");
	snprintf(got, sizeof(got), "%s", uffd_last_error());
	ck_assert_str_eq(got, "x");
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("internal");
	TCase *tc = CASE(format, 10);
	tcase_add_test(tc, test_format);
	tcase_add_test(tc, test_format_stops_at_unknown);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
