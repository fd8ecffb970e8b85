/* SPDX-License-Identifier: MIT */
/*
 * trace.c: working-set traces recorded, saved, loaded back with every
 * check of libuffd-trace(5), and merged (no userfaultfd needed).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "internal.h"
#include "crc32c.h"
#include "trace.h"

#define KIB4 4096u
#define MIB2 (2u << 20)

/* 16 small pages and 3 huge ones: one bitmap word each, entries from byte 80. */
static const struct trace_region two[] = { { 16 * KIB4, KIB4 }, { 3 * MIB2, MIB2 } };
#define ENTRIES 80u
#define FILE_SIZE(n) (ENTRIES + 16u * (n) + 4u)

static char dir[64];
static int fds_before;

static void setup(void)
{
	strcpy(dir, "/tmp/libuffd-trace-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	fds_before = harness_count_fds();
}

/* Every test leaves no descriptor and no file behind. */
static void teardown(void)
{
	ck_assert_int_eq(harness_count_fds(), fds_before);
	ck_assert_int_eq(rmdir(dir), 0);
}

static const char *path_in_dir(const char *name)
{
	static char p[128];

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return p;
}

static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rbe");
	uint8_t *buf = malloc(1 << 16);

	ck_assert_ptr_nonnull(f);
	*len = fread(buf, 1, 1 << 16, f);
	fclose(f);
	return buf;
}

static void spit(const char *path, const uint8_t *buf, size_t len)
{
	FILE *f = fopen(path, "wbe");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

/* CRC32C bit by bit, independent of trace.c's table. */
static uint32_t crc_ref(const uint8_t *p, size_t n)
{
	uint32_t c = ~0u;

	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0x82f63b78u & -(c & 1));
	}
	return ~c;
}

static void reseal(uint8_t *buf, size_t len)
{
	uint32_t c = crc_ref(buf, len - 4);

	memcpy(buf + len - 4, &c, 4);	/* the machine is little-endian, like the file */
}

static void le64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

/* A trace of `two` holding pages, {region, page} pairs, saved to name; its bytes. */
static uint8_t *saved(const char *name, const struct trace_page *pages, size_t n, size_t *len)
{
	struct trace t;

	ASSERT_OK(trace__init(&t, two, 2, 0));
	for (size_t i = 0; i < n; i++)
		ck_assert(trace__add(&t, pages[i].region, pages[i].page));
	ASSERT_OK(trace__save(&t, path_in_dir(name)));
	trace__free(&t);
	return slurp(path_in_dir(name), len);
}

static const struct trace_page some[] = { { 1, 2 }, { 0, 15 }, { 0, 0 }, { 1, 0 }, { 0, 7 } };
#define NSOME (sizeof(some) / sizeof(some[0]))

/* Tests on `some` saved as "t": its bytes and an empty trace of `two`. */
static uint8_t *sbuf;
static size_t slen;
static struct trace st;

static void setup_some(void)
{
	setup();
	sbuf = saved("t", some, NSOME, &slen);
	ASSERT_OK(trace__init(&st, two, 2, 0));
}

static void teardown_some(void)
{
	trace__free(&st);
	free(sbuf);
	ck_assert_int_eq(unlink(path_in_dir("t")), 0);
	teardown();
}

static void assert_empty(const struct trace *t)
{
	ck_assert_uint_eq(t->n, 0);
	for (uint32_t r = 0; r < 2; r++)
		for (uint64_t p = 0; p < 16; p++)
			ck_assert(!trace__has(t, r, p));
}

START_TEST(test_round_trip)
{
	struct trace t;
	uint8_t *buf;
	size_t len;

	ck_assert_uint_eq(uffd__crc32c("123456789", 9), 0xe3069283u);	/* the CRC32C check value */
	buf = saved("t", some, NSOME, &len);
	ck_assert_uint_eq(len, FILE_SIZE(NSOME));
	ck_assert_mem_eq(buf, "UFFDTRC\0\1\0\0\0\2\0\0\0\5\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 32);
	ck_assert_uint_eq(*(uint64_t *)(buf + 64), 1u << 15 | 1u << 7 | 1);	/* region 0's bitmap */
	ck_assert_uint_eq(*(uint64_t *)(buf + 72), 5);
	ck_assert_uint_eq(*(uint32_t *)(buf + len - 4), crc_ref(buf, len - 4));
	free(buf);

	ASSERT_OK(trace__init(&t, two, 2, 0));
	ASSERT_OK(trace__merge_file(&t, path_in_dir("t")));
	ck_assert_uint_eq(t.n, NSOME);
	trace__sort(&t);	/* one trace: its own order */
	for (size_t i = 0; i < NSOME; i++) {
		ck_assert_uint_eq(t.order[i].region, some[i].region);
		ck_assert_uint_eq(t.order[i].page, some[i].page);
		ck_assert(trace__has(&t, some[i].region, some[i].page));
	}
	ck_assert(!trace__has(&t, 0, 1));
	ck_assert(!trace__has(&t, 1, 1));
	trace__free(&t);
	ck_assert_int_eq(unlink(path_in_dir("t")), 0);
}
END_TEST

START_TEST(test_max_cap)
{
	struct trace t;
	uint8_t *buf;
	size_t len;

	ASSERT_OK(trace__init(&t, two, 2, 3));
	ck_assert_uint_eq(t.cap, 3);
	for (uint64_t p = 0; p < 5; p++)
		ck_assert(trace__add(&t, 0, p) == (p < 3));
	ck_assert_uint_eq(t.n, 3);
	ck_assert(trace__has(&t, 0, 2));
	ck_assert(!trace__has(&t, 0, 3));	/* bitmap and order agree */
	ASSERT_OK(trace__save(&t, path_in_dir("t")));
	trace__free(&t);
	buf = slurp(path_in_dir("t"), &len);
	ck_assert_uint_eq(len, FILE_SIZE(3));
	ck_assert_uint_eq(buf[24], 1);	/* flags: the room filled up */
	free(buf);
	ck_assert_int_eq(unlink(path_in_dir("t")), 0);

	ASSERT_OK(trace__init(&t, two, 2, 1000));	/* more than the 19 pages */
	ck_assert_uint_eq(t.cap, 19);
	trace__free(&t);
}
END_TEST

START_TEST(test_duplicate_add)
{
	struct trace t;

	ASSERT_OK(trace__init(&t, two, 2, 0));
	ck_assert(trace__add(&t, 1, 2));
	ck_assert(!trace__add(&t, 1, 2));
	ck_assert(!trace__add(&t, 1, 3));	/* outside region 1 */
	ck_assert(!trace__add(&t, 2, 0));	/* no region 2 */
	ck_assert(!trace__has(&t, 2, 0));
	ck_assert_uint_eq(t.n, 1);
	trace__free(&t);
}
END_TEST

START_TEST(test_init_args)
{
	const struct trace_region odd = { 3 * KIB4, 3000 }, ragged = { KIB4 + 1, KIB4 },
				  empty = { 0, KIB4 };
	struct trace t;

	ASSERT_ERR(trace__init(&t, two, 0, 0), -EINVAL, "at least one region");
	ASSERT_ERR(trace__init(&t, &odd, 1, 0), -EINVAL, "power of two");
	ASSERT_ERR(trace__init(&t, &ragged, 1, 0), -EINVAL, "multiple");
	ASSERT_ERR(trace__init(&t, &empty, 1, 0), -EINVAL, "nonzero");
	ck_assert_ptr_null(t.order);
	trace__free(&t);	/* harmless after a failure */
}
END_TEST

/* Cut at every byte: each prefix is refused, with t unchanged. */
START_TEST(test_truncated)
{
	const uint8_t *buf = sbuf;
	size_t len = slen;
	struct trace *t = &st;

	for (size_t cut = 0; cut < len; cut++) {
		ASSERT_ERR(trace__merge_buf(t, buf, cut), -EBADMSG, "truncated");
		assert_empty(t);
	}
	ASSERT_ERR(trace__merge_buf(t, buf, 20), -EBADMSG, "header");
	ASSERT_ERR(trace__merge_buf(t, buf, 40), -EBADMSG, "region descriptors");
	ASSERT_ERR(trace__merge_buf(t, buf, 70), -EBADMSG, "bitmap of region 0");
	ASSERT_ERR(trace__merge_buf(t, buf, 75), -EBADMSG, "bitmap of region 1");
	ASSERT_ERR(trace__merge_buf(t, buf, ENTRIES + 40), -EBADMSG, "entry 2 of the 5");
	ASSERT_ERR(trace__merge_buf(t, buf, len - 1), -EBADMSG, "checksum is missing");
	/* through the file too */
	spit(path_in_dir("cut"), buf, len / 2);
	ASSERT_ERR(trace__merge_file(t, path_in_dir("cut")), -EBADMSG, "truncated");
	ASSERT_OK(trace__merge_buf(t, buf, len));
	ck_assert_uint_eq(t->n, NSOME);
	ck_assert_int_eq(unlink(path_in_dir("cut")), 0);
}
END_TEST

/* Each byte flipped: refused, with the error its field calls for. */
START_TEST(test_flipped_byte)
{
	uint8_t *buf = sbuf;
	size_t len = slen;
	struct trace *t = &st;

	for (size_t i = 0; i < len; i++) {
		int want = i >= 8 && i < 12 ? -EPROTONOSUPPORT : i >= 12 && i < 16 ? -EINVAL
			 : i >= 32 && i < 64 ? -EINVAL : -EBADMSG;

		buf[i] ^= 0x5a;
		ck_assert_msg(trace__merge_buf(t, buf, len) == want, "byte %zu: %s", i, uffd_last_error());
		assert_empty(t);
		buf[i] ^= 0x5a;
	}
	ASSERT_ERR(trace__merge_buf(t, "ELF", 3), -EBADMSG, "not a libuffd trace");
	buf[70] ^= 1;
	ASSERT_ERR(trace__merge_buf(t, buf, len), -EBADMSG, "checksum is wrong");
}
END_TEST

START_TEST(test_other_version)
{
	uint8_t *buf = sbuf;
	size_t len = slen;
	struct trace *t = &st;

	buf[8] = 2;
	reseal(buf, len);
	spit(path_in_dir("v2"), buf, len);
	ASSERT_ERR(trace__merge_file(t, path_in_dir("v2")), -EPROTONOSUPPORT,
		   "the trace has format version 2; this libuffd reads version 1 only");
	ASSERT_ERR(trace__merge_buf(t, buf, 12), -EPROTONOSUPPORT, "version 2");	/* before the rest */
	assert_empty(t);
	ck_assert_int_eq(unlink(path_in_dir("v2")), 0);
}
END_TEST

START_TEST(test_other_regions)
{
	const struct trace_region longer[] = { two[0], { 4 * MIB2, MIB2 } };
	const struct trace_region smaller[] = { { 16 * KIB4, 2 * KIB4 }, two[1] };
	size_t len;
	uint8_t *buf = saved("t", some, NSOME, &len);
	struct trace t;

	free(buf);
	ASSERT_OK(trace__init(&t, longer, 2, 0));
	ASSERT_ERR(trace__merge_file(&t, path_in_dir("t")), -EINVAL,
		   "the trace was recorded for region 1 of 6291456 bytes in pages of 2097152; this restore's region 1 has 8388608 bytes in pages of 2097152");
	trace__free(&t);
	ASSERT_OK(trace__init(&t, smaller, 2, 0));
	ASSERT_ERR(trace__merge_file(&t, path_in_dir("t")), -EINVAL,
		   "the trace was recorded for region 0 of 65536 bytes in pages of 4096; this restore's region 0 has 65536 bytes in pages of 8192");
	trace__free(&t);
	ASSERT_OK(trace__init(&t, two, 1, 0));
	ASSERT_ERR(trace__merge_file(&t, path_in_dir("t")), -EINVAL,
		   "the trace was recorded for 2 regions; this restore has 1");
	ck_assert_uint_eq(t.n, 0);
	trace__free(&t);
	ck_assert_int_eq(unlink(path_in_dir("t")), 0);
}
END_TEST

/* Well sealed but inconsistent: each refused with its reason. */
START_TEST(test_bad_body)
{
	static const struct { size_t at; uint64_t v; const char *words; } bad[] = {
		{ ENTRIES + 8, 16, "names page 16 of region 1, outside" },	/* entry 0: page 2 -> 16 */
		{ ENTRIES, 7, "names page 2 of region 7" },
		{ ENTRIES + 16 + 8, 0, "entry 2 of the trace's order repeats page 0 of region 0" },	/* entry 1: 15 -> 0 */
		{ ENTRIES + 4, 1, "reserved" },
		{ 64, 1u << 15 | 1u << 7 | 1 | 2, "bitmap of region 0 disagrees" },
		{ 72, 5 | 8, "bitmap of region 1 disagrees" },	/* a page past the region */
		{ 16, 20, "claims 20 pages, more than its regions have (19)" },
	};
	const uint8_t *buf = sbuf;
	size_t len = slen;
	uint8_t *b = malloc(len + 16);
	struct trace *t = &st;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memcpy(b, buf, len);
		if (bad[i].at == ENTRIES || bad[i].at == ENTRIES + 4)
			memcpy(b + bad[i].at, &(uint32_t){ (uint32_t)bad[i].v }, 4);
		else
			le64(b + bad[i].at, bad[i].v);
		reseal(b, len);
		ASSERT_ERR(trace__merge_buf(t, b, len), -EBADMSG, bad[i].words);
		assert_empty(t);
	}
	memcpy(b, buf, len);
	memset(b + len, 0, 16);
	ASSERT_ERR(trace__merge_buf(t, b, len + 16), -EBADMSG, "16 bytes after its checksum");
	le64(b + 16, 4);	/* a page fewer: the file is 16 bytes too long */
	reseal(b, len);
	ASSERT_ERR(trace__merge_buf(t, b, len), -EBADMSG, "16 bytes after its checksum");
	free(b);
}
END_TEST

static void assert_order(const struct trace *t, const uint64_t *pages, size_t n)
{
	ck_assert_uint_eq(t->n, n);
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(t->order[i].region == 0 && t->order[i].page == pages[i],
			      "entry %zu: page %lu, want %lu", i, (unsigned long)t->order[i].page,
			      (unsigned long)pages[i]);
}

/*
 * A: 0 1 2 3 (positions 0, 1/4, 2/4, 3/4); B: 5 3 6 (0, 1/3, 2/3). Merged:
 * 3 at 1/3, and the tie of 0 and 5 at 0 kept in the order merged.
 */
START_TEST(test_merge)
{
	static const struct trace_page a[] = { { 0, 0 }, { 0, 1 }, { 0, 2 }, { 0, 3 } };
	static const struct trace_page b[] = { { 0, 5 }, { 0, 3 }, { 0, 6 } };
	static const uint64_t ab[] = { 0, 5, 1, 3, 2, 6 }, ba[] = { 5, 0, 1, 3, 2, 6 };
	const struct trace_region one = { 10 * KIB4, KIB4 };
	const char *pa = "a", *pb = "b";
	struct trace t, ta, tb;

	ASSERT_OK(trace__init(&ta, &one, 1, 0));
	ASSERT_OK(trace__init(&tb, &one, 1, 0));
	for (size_t i = 0; i < 4; i++)
		trace__add(&ta, a[i].region, a[i].page);
	for (size_t i = 0; i < 3; i++)
		trace__add(&tb, b[i].region, b[i].page);
	ASSERT_OK(trace__save(&ta, path_in_dir(pa)));
	ASSERT_OK(trace__save(&tb, path_in_dir(pb)));
	trace__free(&ta);
	trace__free(&tb);

	for (int round = 0; round < 2; round++) {
		ASSERT_OK(trace__init(&t, &one, 1, 0));
		ASSERT_OK(trace__merge_file(&t, path_in_dir(round ? pb : pa)));
		ASSERT_OK(trace__merge_file(&t, path_in_dir(round ? pa : pb)));
		ck_assert(trace__has(&t, 0, 6) && !trace__has(&t, 0, 4));
		trace__sort(&t);
		assert_order(&t, round ? ba : ab, 6);
		ck_assert(t.rank[3] == 1.0 / 3);
		/* a failed merge leaves it as it was */
		ASSERT_ERR(trace__merge_file(&t, path_in_dir("none")), -ENOENT, "cannot open");
		ASSERT_ERR(trace__merge_buf(&t, "UFFDTRC", 8), -EBADMSG, "truncated");
		trace__sort(&t);
		assert_order(&t, round ? ba : ab, 6);
		trace__free(&t);
	}
	ck_assert_int_eq(unlink(path_in_dir(pa)), 0);
	ck_assert_int_eq(unlink(path_in_dir(pb)), 0);
}
END_TEST

/* Recorded pages count as a trace of their own when a file merges in. */
START_TEST(test_merge_recorded)
{
	static const uint64_t want[] = { 0, 4, 1, 2 };
	const struct trace_region one = { 10 * KIB4, KIB4 };
	struct trace t, f;

	ASSERT_OK(trace__init(&f, &one, 1, 0));
	trace__add(&f, 0, 4);
	trace__add(&f, 0, 2);	/* at 1/2 */
	ASSERT_OK(trace__save(&f, path_in_dir("f")));
	trace__free(&f);
	ASSERT_OK(trace__init(&t, &one, 1, 0));
	trace__add(&t, 0, 0);
	trace__add(&t, 0, 1);	/* at 1/3 */
	trace__add(&t, 0, 2);	/* at 2/3, then 1/2 */
	ASSERT_OK(trace__merge_file(&t, path_in_dir("f")));
	trace__sort(&t);
	assert_order(&t, want, 4);
	trace__free(&t);
	ck_assert_int_eq(unlink(path_in_dir("f")), 0);
}
END_TEST

/* Random traces merged: the ranks and the stable order against a plain reference. */
START_TEST(test_merge_random)
{
	enum { PAGES = 1000, TRACES = 3 };
	const struct trace_region one = { PAGES * (uint64_t)KIB4, KIB4 };
	static double best[PAGES];
	static uint64_t first[PAGES], perm[PAGES];
	struct trace t, f;
	size_t n = 0, k;

	srand(7);
	for (int p = 0; p < PAGES; p++)
		best[p] = 2;
	ASSERT_OK(trace__init(&t, &one, 1, 0));
	for (int tr = 0; tr < TRACES; tr++) {
		size_t count = 200 + (size_t)rand() % 500;

		for (int p = 0; p < PAGES; p++)
			perm[p] = (uint64_t)p;
		for (int p = PAGES - 1; p > 0; p--) {
			int q = rand() % (p + 1);
			uint64_t x = perm[p];

			perm[p] = perm[q];
			perm[q] = x;
		}
		ASSERT_OK(trace__init(&f, &one, 1, 0));
		for (k = 0; k < count; k++) {
			trace__add(&f, 0, perm[k]);
			if (best[perm[k]] > 1)
				first[n++] = perm[k];	/* merge order of first appearance */
			if ((double)k / (double)count < best[perm[k]])
				best[perm[k]] = (double)k / (double)count;
		}
		ASSERT_OK(trace__save(&f, path_in_dir("f")));
		trace__free(&f);
		ASSERT_OK(trace__merge_file(&t, path_in_dir("f")));
	}
	trace__sort(&t);
	ck_assert_uint_eq(t.n, n);
	/* reference: repeatedly the earliest-merged page of the smallest rank */
	for (k = 0; k < n; k++) {
		size_t m = 0;

		for (size_t j = 1; j < n; j++)
			if (best[first[j]] < best[first[m]])
				m = j;
		ck_assert_uint_eq(t.order[k].page, first[m]);
		ck_assert(t.rank[k] == best[first[m]]);
		best[first[m]] = 3;
	}
	trace__free(&t);
	ck_assert_int_eq(unlink(path_in_dir("f")), 0);
}
END_TEST

static int count_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

START_TEST(test_save_errors)
{
	struct trace t;

	ASSERT_OK(trace__init(&t, two, 2, 0));
	trace__add(&t, 0, 1);
	ASSERT_ERR(trace__save(&t, path_in_dir("nodir/t")), -ENOENT, "check that its directory exists");
	ck_assert_int_eq(count_entries(dir), 0);	/* no temporary file left */
	/* rename(2) over a non-empty directory fails after the file was written */
	ck_assert_int_eq(mkdir(path_in_dir("d"), 0700), 0);
	ck_assert_int_eq(mkdir(path_in_dir("d/x"), 0700), 0);
	ck_assert_int_lt(trace__save(&t, path_in_dir("d")), 0);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "cannot write the trace"));
	ck_assert_int_eq(count_entries(dir), 1);
	ASSERT_ERR(trace__save(&t, ""), -EINVAL, "file name");
	ASSERT_ERR(trace__merge_file(&t, path_in_dir("d")), -EISDIR, "cannot read");
	ck_assert_int_eq(rmdir(path_in_dir("d/x")), 0);
	ck_assert_int_eq(rmdir(path_in_dir("d")), 0);
	/* an existing trace is replaced */
	ASSERT_OK(trace__save(&t, path_in_dir("t")));
	trace__add(&t, 0, 2);
	ASSERT_OK(trace__save(&t, path_in_dir("t")));
	ck_assert_int_eq(count_entries(dir), 1);
	trace__free(&t);
	ASSERT_OK(trace__init(&t, two, 2, 0));
	ASSERT_OK(trace__merge_file(&t, path_in_dir("t")));
	ck_assert_uint_eq(t.n, 2);
	trace__free(&t);
	ck_assert_int_eq(unlink(path_in_dir("t")), 0);
}
END_TEST

static Suite *trace_suite(void)
{
	Suite *s = suite_create("trace");
	TCase *tc;

	tc = CASE(round_trip, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_round_trip);
	tc = CASE(max_cap, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_max_cap);
	tc = CASE(duplicate_add, 10);
	tcase_add_test(tc, test_duplicate_add);
	tc = CASE(init_args, 10);
	tcase_add_test(tc, test_init_args);
	tc = CASE(truncated, 10);
	tcase_add_checked_fixture(tc, setup_some, teardown_some);
	tcase_add_test(tc, test_truncated);
	tc = CASE(flipped_byte, 10);
	tcase_add_checked_fixture(tc, setup_some, teardown_some);
	tcase_add_test(tc, test_flipped_byte);
	tc = CASE(other_version, 10);
	tcase_add_checked_fixture(tc, setup_some, teardown_some);
	tcase_add_test(tc, test_other_version);
	tc = CASE(other_regions, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_other_regions);
	tc = CASE(bad_body, 10);
	tcase_add_checked_fixture(tc, setup_some, teardown_some);
	tcase_add_test(tc, test_bad_body);
	tc = CASE(merge, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_merge);
	tc = CASE(merge_recorded, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_merge_recorded);
	tc = CASE(merge_random, 20);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_merge_random);
	tc = CASE(save_errors, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_save_errors);
	return s;
}

int main(void)
{
	return harness_run(trace_suite());
}
