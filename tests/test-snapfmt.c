/* SPDX-License-Identifier: MIT */
/*
 * Compressed snapshots (libuffd-snapshot(5)): packed and read back byte for
 * byte at several frame sizes; zero and identical frames stored as nothing;
 * diffs against a parent (full images and sparse Diff files) and their
 * chains; the decompressed-frame cache and its bound; every bad file refused
 * at open or read with the right errno and a sentence naming the file and
 * frame; and the uffd-snap tool (UFFD_SNAP: its path).
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define KIB (1ull << 10)
#define MIB (1ull << 20)
#define HDR 128u
#define ENTRY 24u

static char dir[64];
static int fds_before;

static void setup(void)
{
	strcpy(dir, "/var/tmp/uffd-snapfmt-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	fds_before = harness_count_fds();
}

/* Every test leaves no descriptor behind, and its files are removed. */
static void teardown(void)
{
	char cmd[128];

	ck_assert_int_eq(harness_count_fds(), fds_before);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static const char *path(const char *name)
{
	static char p[64][128];
	static unsigned k;

	k = (k + 1) % 64;
	snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
	return p[k];
}

/* ---- images ---- */

static uint64_t rng = 88172645463325252ull;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/*
 * An image with a bit of everything, per 64 KiB block: zeros, text-like
 * compressible bytes, incompressible bytes, copies of an earlier block.
 */
static uint8_t *make_image(size_t len)
{
	uint8_t *m = malloc(len);

	ck_assert_ptr_nonnull(m);
	for (size_t b = 0; b < len; b += 64 * KIB) {
		size_t n = len - b < 64 * KIB ? len - b : 64 * KIB;

		switch ((b / (64 * KIB)) % 5) {
		case 0:
			memset(m + b, 0, n);
			break;
		case 1:
			for (size_t i = 0; i < n; i++)
				m[b + i] = (uint8_t)("the quick brown fox "[i % 20] + (i / 4096 + b / 4096) % 3);
			break;
		case 2:
			for (size_t i = 0; i < n; i += 8) {
				uint64_t r = next_rand();

				memcpy(m + b + i, &r, n - i < 8 ? n - i : 8);
			}
			break;
		default:
			memcpy(m + b, m + (b % (128 * KIB)), n);	/* like block 0 or 1 */
			break;
		}
	}
	return m;
}

static void write_file(const char *p, const uint8_t *buf, size_t len)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static size_t file_size(const char *p)
{
	struct stat st;

	ck_assert_int_eq(stat(p, &st), 0);
	return (size_t)st.st_size;
}

static void pack_buf(const char *out, const uint8_t *img, size_t len,
		     const struct uffd_snap_pack_opts *o)
{
	const char *in = path("in.raw");
	int fd;

	write_file(in, img, len);
	fd = open(in, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ASSERT_OK(uffd_snap_pack(out, fd, o));
	close(fd);
	unlink(in);
}

static struct uffd_snap *open1(const char *p)
{
	struct uffd_snap *s = NULL;

	ASSERT_OK(uffd_snap_open(&s, &p, 1, NULL));
	return s;
}

/* The whole image, then ranges of every alignment, compared with img. */
static void check_image(struct uffd_snap *s, const uint8_t *img, size_t len)
{
	uint8_t *got = malloc(len);

	ASSERT_OK(uffd_snap_read(s, 0, got, len));
	ck_assert(!memcmp(got, img, len));
	for (int k = 0; k < 200; k++) {
		size_t off = next_rand() % len, n = 1 + next_rand() % (len - off < 300 * KIB ? len - off : 300 * KIB);

		memset(got, 0xa5, n);
		ASSERT_OK(uffd_snap_read(s, off, got, n));
		ck_assert_msg(!memcmp(got, img + off, n), "%zu bytes at %zu differ", n, off);
	}
	free(got);
}

static struct uffd_snap_info info_of(const struct uffd_snap *s, unsigned layer)
{
	struct uffd_snap_info i = { .size = sizeof(i) };

	ASSERT_OK(uffd_snap_info(s, layer, &i));
	return i;
}

/* ---- round trips ---- */

START_TEST(round_trip)
{
	/* 6 MiB and 3 pages: the last frame is short at every frame size */
	size_t len = 6 * MIB + 12 * KIB;
	uint8_t *img = make_image(len);
	static const uint64_t sizes[] = { 64 * KIB, 256 * KIB, MIB, 4 * MIB };

	for (unsigned k = 0; k < 4; k++) {
		struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = sizes[k] };
		struct uffd_snap *s;
		struct uffd_snap_info i;

		pack_buf(path("a.snap"), img, len, &o);
		s = open1(path("a.snap"));
		i = info_of(s, 0);
		ck_assert_uint_eq(i.frame_size, sizes[k]);
		ck_assert_uint_eq(i.image_size, len);
		ck_assert_uint_eq(i.frames, (len + sizes[k] - 1) / sizes[k]);
		ck_assert_uint_eq(i.frames_data + i.frames_zero, i.frames);
		ck_assert_uint_eq(i.frames_parent, 0);
		ck_assert_uint_eq(i.layers, 1);
		ck_assert_uint_eq(i.file_bytes, file_size(path("a.snap")));
		ck_assert_uint_lt(i.file_bytes, len);	/* it compressed */
		check_image(s, img, len);
		ASSERT_OK(uffd_snap_verify(s));
		uffd_snap_close(s);
	}
	/* the default frame size */
	pack_buf(path("b.snap"), img, len, NULL);
	{
		struct uffd_snap *s = open1(path("b.snap"));

		ck_assert_uint_eq(info_of(s, 0).frame_size, 256 * KIB);
		check_image(s, img, len);
		uffd_snap_close(s);
	}
	free(img);
}
END_TEST

START_TEST(zero_frames)
{
	size_t len = 8 * MIB;
	uint8_t *img = calloc(1, len);
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = MIB };
	struct uffd_snap *s;
	struct uffd_snap_info i;
	uint64_t run;

	/* all zero: the file is its header and index, nothing else */
	pack_buf(path("z.snap"), img, len, &o);
	ck_assert_uint_eq(file_size(path("z.snap")), HDR + 8 * ENTRY);
	s = open1(path("z.snap"));
	i = info_of(s, 0);
	ck_assert_uint_eq(i.frames_zero, 8);
	ck_assert_uint_eq(i.stored_bytes, 0);
	ck_assert_int_eq(uffd_snap_extent(s, 0, &run), UFFD_SNAP_ZERO);
	ck_assert_uint_eq(run, len);
	check_image(s, img, len);
	uffd_snap_close(s);

	/* one byte in frame 5: one data frame between two zero runs */
	img[5 * MIB + 4321] = 7;
	pack_buf(path("z.snap"), img, len, &o);
	s = open1(path("z.snap"));
	i = info_of(s, 0);
	ck_assert_uint_eq(i.frames_zero, 7);
	ck_assert_uint_eq(i.frames_data, 1);
	ck_assert_int_eq(uffd_snap_extent(s, 100, &run), UFFD_SNAP_ZERO);
	ck_assert_uint_eq(run, 5 * MIB - 100);
	ck_assert_int_eq(uffd_snap_extent(s, 5 * MIB + 1, &run), UFFD_SNAP_DATA);
	ck_assert_uint_eq(run, MIB - 1);
	ck_assert_int_eq(uffd_snap_extent(s, 6 * MIB, &run), UFFD_SNAP_ZERO);
	ck_assert_uint_eq(run, 2 * MIB);
	ck_assert_int_eq(uffd_snap_extent(s, len, &run), -EINVAL);
	check_image(s, img, len);
	uffd_snap_close(s);
	free(img);
}
END_TEST

START_TEST(dedup)
{
	/* 16 frames of 64 KiB: 0-3 distinct, then each a copy of one of them */
	size_t len = 16 * 64 * KIB, fs = 64 * KIB;
	uint8_t *img = malloc(len);
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = fs };
	struct uffd_snap *s;
	struct uffd_snap_info i, one;

	for (size_t f = 0; f < 4; f++)
		for (size_t b = 0; b < fs; b += 8) {
			uint64_t r = next_rand() & 0x0f0f0f0f0f0f0f0full;	/* compresses a bit */

			memcpy(img + f * fs + b, &r, 8);
		}
	for (size_t f = 4; f < 16; f++)
		memcpy(img + f * fs, img + (f % 4) * fs, fs);
	pack_buf(path("d.snap"), img, len, &o);
	s = open1(path("d.snap"));
	i = info_of(s, 0);
	ck_assert_uint_eq(i.frames_data, 16);
	ck_assert_uint_eq(i.frames_dedup, 12);
	check_image(s, img, len);
	ASSERT_OK(uffd_snap_verify(s));
	uffd_snap_close(s);

	/* the same 4 frames alone take as much room */
	pack_buf(path("one.snap"), img, 4 * fs, &o);
	s = open1(path("one.snap"));
	one = info_of(s, 0);
	uffd_snap_close(s);
	ck_assert_uint_eq(i.stored_bytes, one.stored_bytes);
	ck_assert_uint_eq(file_size(path("d.snap")) - file_size(path("one.snap")), 12 * ENTRY);
	free(img);
}
END_TEST

/* ---- diffs ---- */

/* base: the mixed image; next: frames 1, 5 and 9 (of 1 MiB) changed, 7 zeroed */
static void diff_images(uint8_t **base, uint8_t **next, size_t len)
{
	*base = make_image(len);
	*next = malloc(len);
	memcpy(*next, *base, len);
	(*next)[1 * MIB + 17] ^= 1;
	memset(*next + 5 * MIB + 8 * KIB, 0x5a, 4 * KIB);
	(*next)[9 * MIB + MIB - 1] ^= 0x80;
	memset(*next + 7 * MIB, 0, MIB);
}

START_TEST(parent_diff)
{
	size_t len = 10 * MIB;
	uint8_t *base, *next, *third;
	struct uffd_snap_pack_opts o = { .size = sizeof(o) };
	const char *chain[3] = { path("base.snap"), path("d1.snap"), path("d2.snap") };
	struct uffd_snap *b, *s;
	struct uffd_snap_info i;

	diff_images(&base, &next, len);
	ck_assert(memcmp(base + 7 * MIB, next + 7 * MIB, MIB));	/* frame 7 was not zero */
	pack_buf(chain[0], base, len, &(struct uffd_snap_pack_opts){ .size = sizeof(o), .frame_size = MIB });
	b = open1(chain[0]);
	o.parent = b;
	pack_buf(chain[1], next, len, &o);
	uffd_snap_close(b);

	ASSERT_OK(uffd_snap_open(&s, chain, 2, NULL));
	i = info_of(s, 1);
	ck_assert_uint_eq(i.frames_parent, 6);	/* 10 frames, 4 changed */
	ck_assert_uint_eq(i.frames_data, 3);
	ck_assert_uint_eq(i.frames_zero, 1);	/* the zeroed frame hides the parent's */
	ck_assert(!memcmp(i.parent_id, info_of(s, 0).id, 16));
	ck_assert_uint_eq(info_of(s, 0).layers, 2);
	check_image(s, next, len);

	/* a third layer on the chain of two: one more page changed */
	third = malloc(len);
	memcpy(third, next, len);
	third[2 * MIB] = 1;
	o.parent = s;
	pack_buf(chain[2], third, len, &o);
	uffd_snap_close(s);
	ASSERT_OK(uffd_snap_open(&s, chain, 3, NULL));
	ck_assert_uint_eq(info_of(s, 2).frames_parent, 9);
	check_image(s, third, len);
	ASSERT_OK(uffd_snap_verify(s));

	/* squashed into one layer: the same image, no parent */
	ASSERT_OK(uffd_snap_merge(path("m.snap"), s, NULL));
	uffd_snap_close(s);
	s = open1(path("m.snap"));
	i = info_of(s, 0);
	ck_assert_uint_eq(i.frames_parent, 0);
	ck_assert_uint_eq(i.layers, 1);
	check_image(s, third, len);
	uffd_snap_close(s);
	free(base);
	free(next);
	free(third);
}
END_TEST

/* A Firecracker Diff file: the dirty pages written, holes elsewhere. */
START_TEST(sparse_diff)
{
	size_t len = 10 * MIB;
	uint8_t *base, *next;
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .flags = UFFD_SNAP_PACK_DIFF };
	const char *chain[2] = { path("base.snap"), path("d.snap") };
	struct uffd_snap *b, *s;
	struct uffd_snap_info i;
	int fd;

	diff_images(&base, &next, len);
	pack_buf(chain[0], base, len, &(struct uffd_snap_pack_opts){ .size = sizeof(o), .frame_size = MIB });
	fd = open(path("diff.mem"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
	/* the dirty 4 KiB pages, as Firecracker writes them */
	for (size_t p = 0; p < len; p += 4 * KIB)
		if (memcmp(base + p, next + p, 4 * KIB))
			ck_assert_int_eq(pwrite(fd, next + p, 4 * KIB, (off_t)p), 4 * KIB);
	b = open1(chain[0]);
	o.parent = b;
	ASSERT_OK(uffd_snap_pack(chain[1], fd, &o));
	uffd_snap_close(b);
	close(fd);

	ASSERT_OK(uffd_snap_open(&s, chain, 2, NULL));
	i = info_of(s, 1);
	ck_assert_uint_eq(i.frames_parent, 6);
	ck_assert_uint_eq(i.frames_data + i.frames_zero, 4);
	check_image(s, next, len);
	uffd_snap_close(s);
	free(base);
	free(next);
}
END_TEST

/* ---- the cache ---- */

START_TEST(cache_bound)
{
	size_t len = 8 * MIB;
	uint8_t *img = make_image(len), page[4096];
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = MIB };
	struct uffd_snap_opts so = { .size = sizeof(so), .cache_bytes = 2 * MIB };
	const char *p = path("c.snap");
	struct uffd_snap *s;
	struct uffd_snap_info i;

	pack_buf(p, img, len, &o);
	ASSERT_OK(uffd_snap_open(&s, &p, 1, &so));
	/* 256 pages of frame 1: one decompression */
	for (size_t k = 0; k < 256; k++) {
		ASSERT_OK(uffd_snap_read(s, MIB + k * 4096, page, 4096));
		ck_assert(!memcmp(page, img + MIB + k * 4096, 4096));
	}
	i = info_of(s, 0);
	ck_assert_uint_eq(i.cache_misses, 1);
	ck_assert_uint_eq(i.cache_hits, 255);
	/* three frames in turn with room for two: every read decompresses */
	for (size_t k = 0; k < 9; k++)
		ASSERT_OK(uffd_snap_read(s, (1 + k % 3) * MIB + 4096 * k, page, 4096));
	ck_assert_uint_ge(info_of(s, 0).cache_misses, 1 + 7);
	/* a whole frame goes to the caller's buffer, not through the cache */
	{
		uint8_t *f = malloc(MIB);
		uint64_t before = info_of(s, 0).cache_hits;

		ASSERT_OK(uffd_snap_read(s, 6 * MIB, f, MIB));
		ck_assert(!memcmp(f, img + 6 * MIB, MIB));
		ASSERT_OK(uffd_snap_read(s, 6 * MIB + 4096, page, 4096));
		ck_assert_uint_eq(info_of(s, 0).cache_hits, before);
		free(f);
	}
	uffd_snap_close(s);
	so.cache_bytes = MIB - 1;
	ASSERT_ERR(uffd_snap_open(&s, &p, 1, &so), -EINVAL, "less than one frame");
	free(img);
}
END_TEST

/* ---- bad input ---- */

static uint8_t *slurp(const char *p, size_t *len)
{
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	uint8_t *buf;

	ck_assert_int_ge(fd, 0);
	*len = file_size(p);
	buf = malloc(*len);
	ck_assert_int_eq(read(fd, buf, *len), (ssize_t)*len);
	close(fd);
	return buf;
}

/* CRC32C, bit by bit: the tests' own, to forge files that pass the checksums. */
static uint32_t crc32c(const uint8_t *b, size_t n)
{
	uint32_t c = ~0u;

	while (n--) {
		c ^= *b++;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
	}
	return ~c;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Re-seal a header whose fields a test changed. */
static void reseal_header(uint8_t *f)
{
	put32(f + 124, crc32c(f, 124));
}

/* Re-seal an index a test changed (and then the header that holds its CRC). */
static void reseal_index(uint8_t *f, size_t len)
{
	uint64_t idx = get64(f + 40);

	put32(f + 48, crc32c(f + idx, len - idx));
	reseal_header(f);
}

static int try_open(const char *p, struct uffd_snap **s)
{
	*s = NULL;
	return uffd_snap_open(s, &p, 1, NULL);
}

START_TEST(bad_files)
{
	size_t len = 4 * MIB, flen;
	uint8_t *img = make_image(len), *f;
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = 256 * KIB };
	const char *good = path("good.snap"), *bad = path("bad.snap");
	struct uffd_snap *s;
	uint64_t idx;

	pack_buf(good, img, len, &o);
	f = slurp(good, &flen);
	idx = get64(f + 40);

	/* truncated anywhere: at open, naming the file */
	static const size_t cuts[] = { 0, 7, 100, HDR, HDR + 1000 };
	for (unsigned k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
		write_file(bad, f, cuts[k]);
		ASSERT_ERR(try_open(bad, &s), -EBADMSG, bad);
		ck_assert_ptr_null(s);
	}
	write_file(bad, f, flen - 1);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "truncated");
	write_file(bad, f, idx + 5);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "truncated");
	write_file(bad, f, 50);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "truncated");

	/* not a snapshot */
	{
		uint8_t other[HDR + 12] = "UFFDTRC";	/* another libuffd file */

		write_file(bad, other, sizeof(other));
	}
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "not a libuffd compressed snapshot");

	/* a flipped bit in the header */
	f[30] ^= 4;
	write_file(bad, f, flen);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "header");
	f[30] ^= 4;

	/* a header that lies, its checksum right: sizes checked against each other */
	f[24] ^= 0x10;	/* image size */
	reseal_header(f);
	write_file(bad, f, flen);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "header is corrupt");
	f[24] ^= 0x10;
	reseal_header(f);

	/* another version */
	f[8] = 2;
	reseal_header(f);
	write_file(bad, f, flen);
	ASSERT_ERR(try_open(bad, &s), -EPROTONOSUPPORT, "version 2");
	f[8] = 1;
	/* flags a newer writer would set */
	f[21] = 1;
	reseal_header(f);
	write_file(bad, f, flen);
	ASSERT_ERR(try_open(bad, &s), -EPROTONOSUPPORT, "flags");
	f[21] = 0;
	reseal_header(f);

	/* a flipped bit in the index */
	f[idx + 3 * ENTRY + 7] ^= 1;
	write_file(bad, f, flen);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "index");
	/* the index forged to point frame 3 outside the frames: named */
	reseal_index(f, flen);
	write_file(bad, f, flen);
	f[idx + 3 * ENTRY + 7] ^= 1;
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "frame 3");
	/* a length beyond the index */
	f[idx + 3 * ENTRY + 8 + 3] = 0x40;
	reseal_index(f, flen);
	write_file(bad, f, flen);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "frame 3: index entry invalid");
	f[idx + 3 * ENTRY + 8 + 3] = 0;
	/* an unknown kind */
	f[idx + 2 * ENTRY + 16] = 9;
	reseal_index(f, flen);
	write_file(bad, f, flen);
	ASSERT_ERR(try_open(bad, &s), -EBADMSG, "frame 2");
	f[idx + 2 * ENTRY + 16] = 1;
	reseal_index(f, flen);
	write_file(bad, f, flen);
	ck_assert_int_eq(try_open(bad, &s), 0);	/* the file is whole again */
	uffd_snap_close(s);

	ck_assert_int_eq(try_open(path("nonexistent"), &s), -ENOENT);
	ck_assert_int_eq(try_open(dir, &s), -EINVAL);
	free(f);
	free(img);
}
END_TEST

/* A frame whose stored bytes changed: its read fails, naming file and frame. */
START_TEST(bad_frame)
{
	size_t len = 2 * MIB, flen;
	uint8_t *img = make_image(len), *f, page[4096];
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = 64 * KIB };
	const char *good = path("good.snap"), *bad = path("bad.snap");
	struct uffd_snap *s;
	uint64_t idx, e;

	pack_buf(good, img, len, &o);
	f = slurp(good, &flen);
	idx = get64(f + 40);
	/* frame 2 is incompressible (stored raw), frame 1 compressible (zstd) */
	ck_assert_uint_eq(f[idx + 2 * ENTRY + 16], 2);
	ck_assert_uint_eq(f[idx + 1 * ENTRY + 16], 1);

	e = get64(f + idx + 2 * ENTRY);
	f[e + 1000] ^= 1;
	write_file(bad, f, flen);
	ck_assert_int_eq(try_open(bad, &s), 0);	/* found when read, not at open */
	ASSERT_OK(uffd_snap_read(s, 0, page, sizeof(page)));
	ASSERT_ERR(uffd_snap_read(s, 2 * 64 * KIB + 4096, page, sizeof(page)), -EBADMSG,
		   "frame 2 (bytes 131072..196607 of the image) fails its checksum");
	ck_assert(strstr(uffd_last_error(), bad));
	ck_assert_int_eq(uffd_snap_read(s, 2 * 64 * KIB, page, sizeof(page)), -EBADMSG);
	ASSERT_ERR(uffd_snap_verify(s), -EBADMSG, "frame 2");
	uffd_snap_close(s);
	f[e + 1000] ^= 1;

	/* a zstd frame: damaged data, or data that decompresses to other bytes */
	e = get64(f + idx + 1 * ENTRY);
	f[e + 20] ^= 0x21;
	write_file(bad, f, flen);
	ck_assert_int_eq(try_open(bad, &s), 0);
	ASSERT_ERR(uffd_snap_read(s, 64 * KIB, page, sizeof(page)), -EBADMSG, "frame 1 ");
	ck_assert(strstr(uffd_last_error(), bad));
	uffd_snap_close(s);
	f[e + 20] ^= 0x21;

	/* an index whose checksum for frame 1 is wrong (the index re-sealed) */
	f[idx + 1 * ENTRY + 12] ^= 1;
	reseal_index(f, flen);
	write_file(bad, f, flen);
	ck_assert_int_eq(try_open(bad, &s), 0);
	ASSERT_ERR(uffd_snap_read(s, 64 * KIB, page, sizeof(page)), -EBADMSG, "frame 1 (bytes 65536..131071 of the image) fails its checksum");
	uffd_snap_close(s);

	/* the short last frame forged to name frame 0's bytes and checksum: refused */
	{
		size_t ilen = 64 * KIB + 4096, slen;
		uint8_t *sf;
		uint64_t sidx;

		pack_buf(path("short.snap"), img + 64 * KIB, ilen, &o);	/* text, then bytes */
		sf = slurp(path("short.snap"), &slen);
		sidx = get64(sf + 40);
		ck_assert_uint_eq(sf[sidx + 16], 1);	/* frame 0: zstd */
		memcpy(sf + sidx + ENTRY, sf + sidx, ENTRY);
		reseal_index(sf, slen);
		write_file(bad, sf, slen);
		free(sf);
		ck_assert_int_eq(try_open(bad, &s), 0);
		ASSERT_ERR(uffd_snap_read(s, 64 * KIB, page, 4096), -EBADMSG, "frame 1 ");
		ASSERT_OK(uffd_snap_read(s, 0, page, 4096));
		ASSERT_ERR(uffd_snap_read(s, 64 * KIB, page, 4096), -EBADMSG, "frame 1 ");
		uffd_snap_close(s);
	}

	/* the file cut after open: the read says so, naming file and frame */
	write_file(bad, f, flen);
	ck_assert_int_eq(try_open(bad, &s), 0);
	ck_assert_int_eq(truncate(bad, HDR + 10), 0);
	ASSERT_ERR(uffd_snap_read(s, 3 * 64 * KIB, page, sizeof(page)), -EIO,
		   "shorter than its index says");
	ck_assert(strstr(uffd_last_error(), "frame 3:") && strstr(uffd_last_error(), bad));
	uffd_snap_close(s);
	free(f);
	free(img);
}
END_TEST

START_TEST(bad_chain)
{
	size_t len = 4 * MIB;
	uint8_t *a = make_image(len), *b = make_image(len), *small = make_image(2 * MIB);
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = 256 * KIB };
	const char *chain[2], *pa = path("a.snap"), *pb = path("b.snap");
	struct uffd_snap *s, *base;

	pack_buf(pa, a, len, &o);
	pack_buf(pb, b, len, &o);	/* another base of the same size */
	base = open1(pa);
	o.parent = base;
	pack_buf(path("diff.snap"), b, len, &o);
	o.parent = NULL;

	/* a diff on the wrong base: both identities named */
	chain[0] = pb;
	chain[1] = path("diff.snap");
	ASSERT_ERR(uffd_snap_open(&s, chain, 2, NULL), -EINVAL, "not of");
	ck_assert(strstr(uffd_last_error(), chain[1]) && strstr(uffd_last_error(), pb));
	ck_assert_ptr_null(s);
	/* a diff alone */
	ASSERT_ERR(uffd_snap_open(&s, &chain[1], 1, NULL), -EINVAL, "pass its parent first");
	/* a base as a diff */
	chain[0] = pa;
	chain[1] = pb;
	ASSERT_ERR(uffd_snap_open(&s, chain, 2, NULL), -EINVAL, "a base, given as a diff");
	/* the right base */
	chain[1] = path("diff.snap");
	ASSERT_OK(uffd_snap_open(&s, chain, 2, NULL));
	check_image(s, b, len);
	uffd_snap_close(s);

	/* layers of different sizes: refused when packing and when opening */
	{
		const char *in = path("small.raw");
		int fd;

		write_file(in, small, 2 * MIB);
		fd = open(in, O_RDONLY | O_CLOEXEC);
		o.parent = base;
		ASSERT_ERR(uffd_snap_pack(path("x.snap"), fd, &o), -EINVAL, "layers must be of one size");
		/* another frame size than the parent's */
		o.frame_size = MIB;
		ASSERT_ERR(uffd_snap_pack(path("x.snap"), fd, &o), -EINVAL, "frame size");
		close(fd);
		o.parent = NULL;
		o.frame_size = 256 * KIB;
	}
	{
		/* forge: a diff of a's identity, of half the size */
		struct uffd_snap *sm;
		size_t flen;
		uint8_t *f;

		pack_buf(path("sm.snap"), small, 2 * MIB, &o);
		sm = open1(path("sm.snap"));
		o.parent = sm;
		pack_buf(path("smd.snap"), small, 2 * MIB, &o);
		uffd_snap_close(sm);
		f = slurp(path("smd.snap"), &flen);
		memcpy(f + 72, info_of(base, 0).id, 16);	/* parent_id := a's */
		reseal_header(f);
		write_file(path("smd.snap"), f, flen);
		chain[0] = pa;
		chain[1] = path("smd.snap");
		ASSERT_ERR(uffd_snap_open(&s, chain, 2, NULL), -EINVAL, "layers must be of one size");
		free(f);
	}
	uffd_snap_close(base);
	free(a);
	free(b);
	free(small);
}
END_TEST

/* L(d) = crc(a ^ d) ^ crc(a) for messages of n bytes: linear in d. */
static uint32_t crc_delta(const uint8_t *a, uint8_t *scratch, size_t n, size_t at, uint32_t bits)
{
	memcpy(scratch, a, n);
	for (int i = 0; i < 4; i++)
		scratch[at + i] ^= (uint8_t)(bits >> (8 * i));
	return crc32c(scratch, n) ^ crc32c(a, n);
}

/*
 * Two different frames with one CRC32C (the second forged by solving for
 * its last 4 bytes): stored twice, not deduplicated on the checksum alone.
 */
START_TEST(dedup_same_crc)
{
	size_t fs = 64 * KIB;
	uint8_t *img = malloc(2 * fs), *scratch = malloc(fs);
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = fs };
	uint32_t col[32], want, x = 0;
	struct uffd_snap *s;
	size_t flen;
	uint8_t *f;
	uint64_t idx;

	for (size_t i = 0; i < fs; i++)
		img[i] = (uint8_t)("a frame of text to compress "[i % 28]);
	want = crc_delta(img, scratch, fs, 0, 0x01020304);	/* the change at the start */
	for (int b = 0; b < 32; b++)
		col[b] = crc_delta(img, scratch, fs, fs - 4, 1u << b);
	/* solve sum of x_b * col[b] = want over GF(2): rows of bit r, bit 32 the right side */
	{
		uint64_t row[32];
		int pivcol[32], rank = 0;

		for (int r = 0; r < 32; r++) {
			row[r] = (uint64_t)(want >> r & 1) << 32;
			for (int b = 0; b < 32; b++)
				row[r] |= (uint64_t)(col[b] >> r & 1) << b;
		}
		for (int c = 0; c < 32; c++) {
			int piv = rank;
			uint64_t t;

			while (piv < 32 && !(row[piv] >> c & 1))
				piv++;
			if (piv == 32)
				continue;
			t = row[piv];
			row[piv] = row[rank];
			row[rank] = t;
			for (int r = 0; r < 32; r++)
				if (r != rank && (row[r] >> c & 1))
					row[r] ^= row[rank];
			pivcol[rank++] = c;
		}
		ck_assert_int_eq(rank, 32);	/* the last 4 bytes reach every CRC */
		for (int r = 0; r < 32; r++)
			x |= (uint32_t)(row[r] >> 32 & 1) << pivcol[r];
	}
	memcpy(img + fs, img, fs);
	for (int i = 0; i < 4; i++) {
		img[fs + i] ^= (uint8_t)(0x01020304u >> (8 * i));
		img[2 * fs - 4 + i] ^= (uint8_t)(x >> (8 * i));
	}
	ck_assert(memcmp(img, img + fs, fs));
	ck_assert_uint_eq(crc32c(img, fs), crc32c(img + fs, fs));

	pack_buf(path("c.snap"), img, 2 * fs, &o);
	f = slurp(path("c.snap"), &flen);
	idx = get64(f + 40);
	ck_assert(!memcmp(f + idx + 12, f + idx + ENTRY + 12, 4));	/* one CRC in the index */
	ck_assert_uint_ne(get64(f + idx), get64(f + idx + ENTRY));	/* two stored frames */
	s = open1(path("c.snap"));
	ck_assert_uint_eq(info_of(s, 0).frames_dedup, 0);
	check_image(s, img, 2 * fs);
	uffd_snap_close(s);
	free(f);
	free(img);
	free(scratch);
}
END_TEST

START_TEST(args)
{
	struct uffd_snap *s = (struct uffd_snap *)1;
	const char *none[1] = { NULL };
	struct uffd_snap_opts so = { .size = 4 };
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = 96 * KIB };
	uint8_t img[8192] = { 1 };
	const char *p = path("a.snap");
	struct uffd_snap_info i = { .size = 8 };
	int fd;

	ck_assert_int_eq(uffd_snap_open(NULL, &p, 1, NULL), -EINVAL);
	ASSERT_ERR(uffd_snap_open(&s, &p, 0, NULL), -EINVAL, "at least one file");
	ck_assert_ptr_null(s);
	ASSERT_ERR(uffd_snap_open(&s, none, 1, NULL), -EINVAL, "NULL or empty");
	ASSERT_ERR(uffd_snap_open(&s, &p, 1, &so), -EINVAL, "size");

	write_file(path("in"), img, sizeof(img));
	fd = open(path("in"), O_RDONLY | O_CLOEXEC);
	ASSERT_ERR(uffd_snap_pack(p, fd, &o), -EINVAL, "power of two");
	o.frame_size = 8 * MIB;
	ASSERT_ERR(uffd_snap_pack(p, fd, &o), -EINVAL, "power of two");
	o.frame_size = 0;
	o.flags = UFFD_SNAP_PACK_DIFF;
	ASSERT_ERR(uffd_snap_pack(p, fd, &o), -EINVAL, "needs its parent");
	o.flags = 0;
	o.level = 40;
	ASSERT_ERR(uffd_snap_pack(p, fd, &o), -EINVAL, "level");
	o.level = 0;
	ck_assert_int_eq(uffd_snap_pack(NULL, fd, &o), -EINVAL);
	ck_assert_int_eq(uffd_snap_pack(p, -1, &o), -EINVAL);
	ASSERT_OK(uffd_snap_pack(p, fd, &o));
	close(fd);
	/* an image that is not whole pages */
	write_file(path("in"), img, 5000);
	fd = open(path("in"), O_RDONLY | O_CLOEXEC);
	ASSERT_ERR(uffd_snap_pack(path("b.snap"), fd, &o), -EINVAL, "multiple of 4096");
	close(fd);
	ck_assert_int_eq(access(path("b.snap"), F_OK), -1);	/* nothing left behind */

	s = open1(p);
	ASSERT_ERR(uffd_snap_read(s, 4096, img, 4097), -EINVAL, "beyond the image");
	ck_assert_int_eq(uffd_snap_read(s, 8193, img, 0), -EINVAL);
	ck_assert_int_eq(uffd_snap_read(s, 8192, img, 0), 0);
	ck_assert_int_eq(uffd_snap_read(NULL, 0, img, 1), -EINVAL);
	ck_assert_int_eq(uffd_snap_info(s, 1, &i), -EINVAL);
	ck_assert_int_eq(uffd_snap_info(s, 0, &i), -EINVAL);	/* size too small */
	ck_assert_int_eq(uffd_snap_extent(NULL, 0, NULL), -EINVAL);
	ck_assert_int_eq(uffd_snap_merge(NULL, s, NULL), -EINVAL);
	o.flags = UFFD_SNAP_PACK_DIFF;
	ck_assert_int_eq(uffd_snap_merge(path("c.snap"), s, &o), -EINVAL);
	uffd_snap_close(s);
	uffd_snap_close(NULL);
	ck_assert_int_eq(uffd_snap_verify(NULL), -EINVAL);
}
END_TEST


/* ---- restoring through the restore engine ---- */

/* Anonymous memory registered MISSING, served as a foreign region, its loop running. */
struct served {
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct uffd_restore *rs;
	uint8_t *mem;
	size_t len, ps;
};

/* Why serve_open returned false, for the skip. */
static const char *serve_why;

static bool serve_open(struct served *v, size_t len, size_t ps)
{
	struct uffd_opts uo = { .size = sizeof(uo), .want_features = UFFD_FEATURES_DEFAULT |
				UFFD_FEATURE_EVENT_UNMAP };
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .modes = UFFDIO_REGISTER_MODE_MISSING, .fd = -1 };
	int err;

	memset(v, 0, sizeof(*v));
	err = uffd_open(&v->u, &uo);
	serve_why = "userfaultfd is not available to this process";
	if (err == -EPERM || err == -EACCES)
		return false;
	ASSERT_OK(err);
	if (ps > harness_page_size() && !(uffd_features(v->u) & UFFD_FEATURE_MISSING_HUGETLBFS)) {
		serve_why = "userfaultfd has no MISSING mode on hugetlbfs here";
		uffd_close(v->u);
		return false;
	}
	v->len = len;
	v->ps = ps;
	v->mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | (ps > harness_page_size() ? MAP_HUGETLB : 0), -1, 0);
	if (v->mem == MAP_FAILED && errno == ENOMEM && ps > harness_page_size()) {
		serve_why = "the huge pages reserved for this test were taken by another process";
		uffd_close(v->u);
		return false;
	}
	ck_assert_ptr_ne(v->mem, MAP_FAILED);
	ASSERT_OK(uffd_register(v->u, v->mem, len, UFFDIO_REGISTER_MODE_MISSING, NULL));
	fo.owner_addr = (uintptr_t)v->mem;
	fo.length = len;
	fo.page_size = ps;
	ASSERT_OK(uffd_region_create_foreign(v->u, &fo, &v->r));
	ASSERT_OK(uffd_loop_new(&v->l, NULL));
	ASSERT_OK(uffd_loop_add(v->l, v->u, NULL, NULL));
	ASSERT_OK(uffd_loop_start(v->l, 1));
	return true;
}

/* A restore of v from the snapshot files chain[0..n), with opts and an optional trace. */
static size_t serve_cache;	/* the cache of serve_snap()'s snapshot; 0: 32 MiB */

static struct uffd_source *serve_snap(struct served *v, const char *const *chain, unsigned n,
				      const struct uffd_restore_opts *o, const char *trace,
				      struct uffd_snap **snap)
{
	struct uffd_snap *s;
	struct uffd_source *src;

	/* room for every frame of the tests' images: each decompressed once (unless a test says) */
	ASSERT_OK(uffd_snap_open(&s, chain, n, &(struct uffd_snap_opts){ .size = sizeof(struct uffd_snap_opts),
									 .cache_bytes = serve_cache ? serve_cache : 32 * MIB }));
	ASSERT_OK(uffd_source_snap(&src, s));
	ck_assert_uint_eq(uffd_source_block_size(src), info_of(s, 0).frame_size);
	ASSERT_OK(uffd_restore_new(&v->rs, o));
	ASSERT_OK(uffd_restore_add_region_source(v->rs, v->r, src, 0));
	if (trace)
		ASSERT_OK(uffd_restore_load_trace(v->rs, trace));
	ASSERT_OK(uffd_restore_start(v->rs, v->l));
	if (snap)
		*snap = s;	/* the source's: usable while the caller holds its reference */
	return src;
}

static void serve_free(struct served *v, struct uffd_source *src)
{
	uffd_restore_free(v->rs);
	uffd_source_unref(src);
	munmap(v->mem, v->len);	/* waits until its UNMAP event is read: while the loop runs */
	uffd_loop_free(v->l);
	uffd_region_destroy(v->r);
	uffd_close(v->u);
}

static struct uffd_restore_stats stats_of(struct uffd_restore *rs)
{
	struct uffd_restore_stats st = { .size = sizeof(st) };

	ASSERT_OK(uffd_restore_stats(rs, &st));
	return st;
}

/* The snapshot of the source's impl is not reachable: open the chain again for its facts. */
static uint64_t zero_pages(const char *const *chain, unsigned n, size_t ps)
{
	struct uffd_snap *s;
	uint64_t pages = 0, run, len;

	ASSERT_OK(uffd_snap_open(&s, chain, n, NULL));
	len = info_of(s, 0).image_size;
	for (uint64_t off = 0; off < len; off += ps) {
		uint64_t end = off + ps;
		bool zero = true;

		for (uint64_t o = off; zero && o < end; o += run)
			zero = uffd_snap_extent(s, o, &run) == UFFD_SNAP_ZERO;
		pages += zero;
	}
	uffd_snap_close(s);
	return pages;
}

/*
 * A base and a diff of 24 MiB in frames of 1 MiB, whole frames of zeros in
 * both (frames 4 and 5: one 2 MiB page), restored with demand faults in a
 * scattered order, then the fill: every byte checked; zero pages never
 * read; each frame decompressed once.
 */
static void restore_case(size_t ps)
{
	size_t len = 24 * MIB, npages = len / ps;
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = MIB };
	const char *chain[2] = { path("base.snap"), path("diff.snap") };
	uint8_t *base, *next;
	struct uffd_restore_stats st;
	struct uffd_source *src;
	struct uffd_snap *b, *s;
	struct served v;
	uint64_t holes, data_frames = 0;

	SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock");
	base = make_image(len);
	next = malloc(len);
	memset(base + 4 * MIB, 0, 2 * MIB);
	memcpy(next, base, len);
	for (size_t f = 0; f < 24; f += 3)	/* every third frame changed in the diff */
		next[f * MIB + 777 + f] ^= 0x11;
	memset(next + 12 * MIB, 0, MIB);	/* and one zeroed */
	pack_buf(chain[0], base, len, &po);
	b = open1(chain[0]);
	po.parent = b;
	pack_buf(chain[1], next, len, &po);
	uffd_snap_close(b);
	for (size_t f = 0; f < 24; f++)
		data_frames += !(f == 4 || f == 5 || f == 12);

	if (!serve_open(&v, len, ps))
		SKIP_TEST("%s", serve_why);
	src = serve_snap(&v, chain, 2, &o, NULL, &s);
	for (size_t k = 0; k < npages; k++) {
		size_t p = (k * 7) % npages;	/* 7 and npages are coprime */

		ck_assert_msg(!memcmp(v.mem + p * ps, next + p * ps, ps), "page %zu differs", p);
	}
	ASSERT_OK(uffd_restore_wait(v.rs, 20000));
	ck_assert(!memcmp(v.mem, next, len));
	st = stats_of(v.rs);
	holes = zero_pages(chain, 2, ps);
	ck_assert_uint_eq(holes, ps == 4096 ? 3 * 256 : 1);	/* frames 4, 5, 12; one 2 MiB page */
	ck_assert_uint_eq(st.pages_hole, holes);
	ck_assert_uint_eq(st.bytes_read, (npages - holes) * ps);	/* no byte read for a zero page */
	ck_assert_uint_eq(st.pages_present, npages);
	ck_assert_uint_eq(st.read_errors, 0);
	/* the source's cache (32 MiB, the image is 24): each frame decompressed once */
	ck_assert_uint_le(info_of(s, 0).cache_misses, data_frames);
	if (ps < MIB)	/* pages of a frame read in runs: the frame from the cache */
		ck_assert_uint_gt(info_of(s, 0).cache_hits, 0);
	serve_free(&v, src);
	fprintf(stderr, "restore %zu-byte pages: %llu holes, %llu bytes read, %llu data frames\n", ps,
		(unsigned long long)holes, (unsigned long long)st.bytes_read, (unsigned long long)data_frames);
	free(base);
	free(next);
}

START_TEST(restore_4k)
{
	restore_case(4096);
}
END_TEST

START_TEST(restore_2m)
{
	const char *why = NULL;
	size_t hps = harness_hugepages(14, &why);

	if (hps != 2 * MIB)
		SKIP_TEST("no 2 MiB huge pages: %s", why ? why : "another huge page size");
	restore_case(hps);
}
END_TEST

/*
 * Record the pages a run touches on a base + two diffs, replay the trace
 * into a new restore: the pages come ahead of the guest (no fault on
 * them), every byte right.
 */
START_TEST(record_replay_layered)
{
	size_t len = 8 * MIB, ps = 4096, set = 0;
	struct uffd_restore_opts rec = { .size = sizeof(rec), .flags = UFFD_RESTORE_RECORD };
	struct uffd_restore_opts rep = { .size = sizeof(rep) };
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = 256 * KIB };
	const char *chain[3] = { path("b.snap"), path("d1.snap"), path("d2.snap") };
	const char *trace = path("trace");
	uint8_t *img;
	struct uffd_restore_stats st;
	struct uffd_source *src;
	struct uffd_snap *s;
	struct served v;
	double end;

	SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock");
	img = make_image(len);
	pack_buf(chain[0], img, len, &po);
	for (unsigned d = 1; d <= 2; d++) {
		for (size_t f = d; f < len / (256 * KIB); f += 4)
			img[f * 256 * KIB + 5 * d] ^= 0x42;
		ASSERT_OK(uffd_snap_open(&s, chain, d, NULL));
		po.parent = s;
		pack_buf(chain[d], img, len, &po);
		uffd_snap_close(s);
	}

	if (!serve_open(&v, len, ps))
		SKIP_TEST("%s", serve_why);
	src = serve_snap(&v, chain, 3, &rec, NULL, NULL);
	for (size_t p = 5; p < len / ps; p += 11, set++)
		ck_assert(!memcmp(v.mem + p * ps, img + p * ps, ps));
	end = harness_now() + 5;
	while (stats_of(v.rs).pages_recorded < set && harness_now() < end)
		usleep(1000);
	ck_assert_uint_eq(stats_of(v.rs).pages_recorded, set);
	ASSERT_OK(uffd_restore_save_trace(v.rs, trace));
	serve_free(&v, src);

	ck_assert(serve_open(&v, len, ps));
	src = serve_snap(&v, chain, 3, &rep, trace, NULL);
	end = harness_now() + 10;
	while (stats_of(v.rs).pages_prefetched < len / ps && harness_now() < end)
		usleep(1000);
	for (size_t p = 5; p < len / ps; p += 11)
		ck_assert(!memcmp(v.mem + p * ps, img + p * ps, ps));
	st = stats_of(v.rs);
	/* a traced page's frame comes whole: every frame holds one of them here */
	ck_assert_uint_eq(st.pages_prefetched, len / ps);
	ck_assert_uint_eq(st.faults[UFFD_FAULT_MISSING], 0);
	ck_assert_uint_eq(st.read_errors, 0);
	serve_free(&v, src);
	free(img);
}
END_TEST

/*
 * A trace that visits the frames again and again (pages scattered over the
 * image, as a guest touches them) replayed with a cache of one frame: each
 * frame is decompressed once, its pages all mapped by that read, not once
 * per run of the trace in it (8 of them here; 128 decompressions before).
 */
START_TEST(replay_frame_once)
{
	size_t len = 4 * MIB, ps = 4096, npages = len / ps, frame = 256 * KIB, set = 0;
	struct uffd_restore_opts rec = { .size = sizeof(rec), .flags = UFFD_RESTORE_RECORD };
	struct uffd_restore_opts rep = { .size = sizeof(rep) };
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = frame };
	const char *chain[1] = { path("scatter.snap") };
	const char *trace = path("scatter.trace");
	uint8_t *img;
	struct uffd_restore_stats st;
	struct uffd_source *src;
	struct uffd_snap *s;
	struct served v;
	uint64_t data_frames = 0, run;
	double end;

	SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock");
	img = make_image(len);
	pack_buf(chain[0], img, len, &po);
	if (!serve_open(&v, len, ps))
		SKIP_TEST("%s", serve_why);
	src = serve_snap(&v, chain, 1, &rec, NULL, NULL);
	/* 8 passes over the frames, one page of each frame per pass */
	for (size_t k = 0; k < 8; k++)
		for (size_t f = 0; f < len / frame; f++, set++) {
			size_t p = f * (frame / ps) + k * 3;

			ck_assert(!memcmp(v.mem + p * ps, img + p * ps, ps));
		}
	end = harness_now() + 5;
	while (stats_of(v.rs).pages_recorded < set && harness_now() < end)
		usleep(1000);
	ASSERT_OK(uffd_restore_save_trace(v.rs, trace));
	serve_free(&v, src);

	serve_cache = frame;
	ck_assert(serve_open(&v, len, ps));
	src = serve_snap(&v, chain, 1, &rep, trace, &s);
	serve_cache = 0;
	for (uint64_t off = 0; off < len; off += run)
		if (uffd_snap_extent(s, off, &run) == UFFD_SNAP_DATA)
			data_frames += run / frame;
	end = harness_now() + 10;
	while (stats_of(v.rs).pages_present < npages - (len / frame - data_frames) * (frame / ps) &&
	       harness_now() < end)
		usleep(1000);
	st = stats_of(v.rs);
	ck_assert_uint_eq(st.faults[UFFD_FAULT_MISSING], 0);
	ck_assert_uint_eq(st.read_errors, 0);
	ck_assert_uint_eq(info_of(s, 0).cache_misses, data_frames);
	for (size_t p = 0; p < npages; p++)
		if (uffd_snap_extent(s, p * ps, &run) == UFFD_SNAP_DATA)
			ck_assert(!memcmp(v.mem + p * ps, img + p * ps, ps));
	serve_free(&v, src);
	free(img);
}
END_TEST

/*
 * A frame damaged in the file: the fill's read of it fails, the restore
 * says so (-EIO), and none of its pages is mapped (no wrong bytes in the
 * guest); the other frames are served.
 */
START_TEST(restore_bad_frame)
{
	size_t len = 4 * MIB, ps = 4096, flen;
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = MIB };
	const char *p = path("bad.snap");
	uint8_t *img, *f;
	struct uffd_restore_stats st;
	struct uffd_source *src;
	struct served v;
	uint64_t idx, e;

	SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock");
	img = make_image(len);
	pack_buf(p, img, len, &po);
	f = slurp(p, &flen);
	idx = get64(f + 40);
	e = get64(f + idx + 2 * ENTRY);	/* frame 2 */
	f[e + 30] ^= 0x08;
	write_file(p, f, flen);
	free(f);
	if (!serve_open(&v, len, ps))
		SKIP_TEST("%s", serve_why);
	src = serve_snap(&v, &p, 1, &o, NULL, NULL);
	ck_assert_int_eq(uffd_restore_wait(v.rs, 20000), -EIO);
	/* the fill goes on past the bad frame; frames end out of order on the source's threads */
	for (double end = harness_now() + 10; stats_of(v.rs).pages_present < 2 * MIB / ps && harness_now() < end;)
		usleep(1000);
	st = stats_of(v.rs);
	ck_assert_uint_gt(st.read_errors, 0);
	ck_assert_uint_ge(st.pages_present, 2 * MIB / ps);
	ck_assert_uint_le(st.pages_present, (len - MIB) / ps);
	for (size_t q = 2 * MIB / ps; q < 3 * MIB / ps; q++)
		ck_assert_msg(!(harness_pagemap(v.mem + q * ps) >> 63), "page %zu of the bad frame is mapped", q);
	ck_assert(!memcmp(v.mem, img, 2 * MIB));
	for (size_t q = 3 * MIB / ps; q < len / ps; q++)	/* what the fill brought of frame 3 */
		if (harness_pagemap(v.mem + q * ps) >> 63)
			ck_assert(!memcmp(v.mem + q * ps, img + q * ps, ps));
	serve_free(&v, src);
	free(img);
}
END_TEST

/*
 * Demand first: the fill keeps 32 whole-frame reads in flight (frames of
 * 1 MiB, reads of 1 MiB); a fault on the last frame, right after the
 * start, is decompressed before them, not behind them: when it returns,
 * far fewer than 32 frames have been filled.
 */
START_TEST(restore_demand_first)
{
	size_t len = 64 * MIB, ps = 4096, fpages = MIB / ps;
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .queue_depth = 32, .max_read = MIB };
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = MIB, .level = 1 };
	const char *p = path("big.snap");
	struct uffd_restore_stats st;
	struct uffd_source *src;
	struct served v;
	uint8_t *img;
	uint64_t filled;

	SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock");
	/* text: every frame compressed (not stored raw), so each costs a decompression */
	img = malloc(len);
	for (size_t i = 0; i < len; i += 8) {
		uint64_t r = next_rand();

		memcpy(img + i, "abcdefgh", 8);
		img[i + (r & 7)] = (uint8_t)('a' + (r >> 8) % 26);
	}
	pack_buf(p, img, len, &po);
	if (!serve_open(&v, len, ps))
		SKIP_TEST("%s", serve_why);
	src = serve_snap(&v, &p, 1, &o, NULL, NULL);
	ck_assert(!memcmp(v.mem + len - ps, img + len - ps, ps));
	st = stats_of(v.rs);
	filled = st.pages_filled;
	ASSERT_OK(uffd_restore_wait(v.rs, 30000));
	ck_assert(!memcmp(v.mem, img, len));
	serve_free(&v, src);
	fprintf(stderr, "demand first: %llu of 64 frames filled when the fault on the last one returned\n",
		(unsigned long long)(filled / fpages));
	ck_assert_msg(filled < 16 * fpages, "the fault waited for %llu frames of the fill",
		      (unsigned long long)(filled / fpages));
	free(img);
}
END_TEST

/* ---- the tool ---- */

/* A file source of p, named by p. */
static struct uffd_source *file_src(const char *p)
{
	struct uffd_source_file_opts fo = { .size = sizeof(fo), .name = p };
	struct uffd_source *src;
	int fd = open(p, O_RDONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	ASSERT_OK(uffd_source_file(&src, fd, &fo));
	close(fd);
	return src;
}

/*
 * A chain (base and diff) whose layers are page sources
 * (uffd_snap_open_sources over file sources): read with uffd_snap_read
 * (frames through uffd_source_read_sync), then restored with the frames
 * read through the layers' asynchronous reads, every byte checked; the
 * sources may serve again afterwards.
 */
START_TEST(over_sources)
{
	size_t len = 8 * MIB, ps = 4096;
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = 256 * KIB };
	const char *chain[2] = { path("base.snap"), path("diff.snap") };
	struct uffd_source *l[2], *src;
	uint8_t *base, *next;
	struct uffd_snap *b, *s;
	struct uffd_restore_stats st;
	struct served v;

	SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock");
	base = make_image(len);
	next = malloc(len);
	memcpy(next, base, len);
	for (size_t f = 0; f < len / (256 * KIB); f += 3)
		next[f * 256 * KIB + 99] ^= 0x5a;
	pack_buf(chain[0], base, len, &po);
	b = open1(chain[0]);
	po.parent = b;
	pack_buf(chain[1], next, len, &po);
	uffd_snap_close(b);
	l[0] = file_src(chain[0]);
	l[1] = file_src(chain[1]);
	ASSERT_OK(uffd_snap_open_sources(&s, l, 2, NULL));
	ck_assert_uint_eq(info_of(s, 1).layers, 2);
	check_image(s, next, len);
	ASSERT_OK(uffd_snap_verify(s));
	ASSERT_OK(uffd_source_snap(&src, s));
	ck_assert_str_eq(uffd_source_name(src), chain[1]);
	if (!serve_open(&v, len, ps))
		SKIP_TEST("%s", serve_why);
	ASSERT_OK(uffd_restore_new(&v.rs, &o));
	ASSERT_OK(uffd_restore_add_region_source(v.rs, v.r, src, 0));
	ASSERT_OK(uffd_restore_start(v.rs, v.l));
	/* a layer serves the restore: no blocking read of it meanwhile */
	ck_assert_int_eq(uffd_source_read_sync(l[0], 0, &(uint8_t[8]){ 0 }, 8, 1000), -EBUSY);
	for (size_t p = 0; p < len / ps; p += 5)
		ck_assert_msg(!memcmp(v.mem + p * ps, next + p * ps, ps), "page %zu differs", p);
	ASSERT_OK(uffd_restore_wait(v.rs, 20000));
	ck_assert(!memcmp(v.mem, next, len));
	st = stats_of(v.rs);
	ck_assert_uint_eq(st.read_errors, 0);
	serve_free(&v, src);
	/* detached: the layer reads again */
	{
		uint8_t head[8];

		ASSERT_OK(uffd_source_read_sync(l[0], 0, head, sizeof(head), 5000));
		ck_assert(!memcmp(head, "UFFDSNP", 8));
	}
	uffd_source_unref(l[0]);
	uffd_source_unref(l[1]);
	free(base);
	free(next);
}
END_TEST

struct toucher {
	const uint8_t *mem, *img;
	size_t len, ps, start;
	int bad;
};

/* Every page, from a start of the thread's own, one page per frame in turn. */
static void *touch_all(void *arg)
{
	struct toucher *t = arg;
	size_t npages = t->len / t->ps;

	for (size_t k = 0; k < npages; k++) {
		size_t p = (t->start + k * 67) % npages;	/* 67 and npages coprime: every page once */

		t->bad += memcmp(t->mem + p * t->ps, t->img + p * t->ps, t->ps) != 0;
	}
	return NULL;
}

/*
 * The source's pool (4 threads) under demand faults of 4 guest threads
 * that want the same frames at once: each frame is decompressed once
 * (a thread wanting a frame another one is loading waits for it), and
 * every byte is right.
 */
START_TEST(pool_frame_once)
{
	size_t len = 8 * MIB, ps = 4096, frame = 256 * KIB;
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_NO_AROUND };
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = frame };
	struct uffd_snap_opts so = { .size = sizeof(so), .cache_bytes = 16 * MIB, .threads = 4 };
	const char *p = path("pool.snap");
	struct toucher t[4];
	pthread_t th[4];
	struct uffd_source *src;
	struct uffd_snap *s;
	struct served v;
	uint64_t stored;
	uint8_t *img;

	SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock");
	img = make_image(len);
	pack_buf(p, img, len, &po);
	ASSERT_OK(uffd_snap_open(&s, &p, 1, &so));
	stored = info_of(s, 0).frames_data - info_of(s, 0).frames_dedup;	/* identical frames share one */
	ASSERT_OK(uffd_source_snap(&src, s));
	if (!serve_open(&v, len, ps))
		SKIP_TEST("%s", serve_why);
	ASSERT_OK(uffd_restore_new(&v.rs, &o));
	ASSERT_OK(uffd_restore_add_region_source(v.rs, v.r, src, 0));
	ASSERT_OK(uffd_restore_start(v.rs, v.l));
	for (int i = 0; i < 4; i++) {
		t[i] = (struct toucher){ .mem = v.mem, .img = img, .len = len, .ps = ps, .start = (size_t)i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, touch_all, &t[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(t[i].bad, 0);
	}
	ck_assert(!memcmp(v.mem, img, len));
	ck_assert_uint_eq(stats_of(v.rs).read_errors, 0);
	ck_assert_uint_eq(info_of(s, 0).cache_misses, stored);
	serve_free(&v, src);
	free(img);
}
END_TEST

/* uffd_snap_open_sources() and uffd_source_read_sync() at their boundaries. */
START_TEST(sources_args)
{
	struct uffd_snap_opts so = { .size = sizeof(so), .threads = 65 };
	const char *p = path("a.snap");
	struct uffd_source *src, *none = NULL;
	struct uffd_snap *s = (struct uffd_snap *)1;
	uint8_t *img = make_image(MIB), buf[16] = { 0 };	/* valgrind does not see io_uring's writes */

	write_file(path("plain"), img, MIB);
	pack_buf(p, img, MIB, NULL);
	src = file_src(p);
	ck_assert_int_eq(uffd_snap_open_sources(NULL, &src, 1, NULL), -EINVAL);
	ck_assert_int_eq(uffd_snap_open_sources(&s, NULL, 1, NULL), -EINVAL);
	ck_assert_ptr_null(s);
	ck_assert_int_eq(uffd_snap_open_sources(&s, &src, 0, NULL), -EINVAL);
	ck_assert_int_eq(uffd_snap_open_sources(&s, &none, 1, NULL), -EINVAL);
	ck_assert_int_eq(uffd_snap_open_sources(&s, &src, 1, &so), -EINVAL);
	ck_assert_int_eq(uffd_snap_open(&s, &p, 1, &so), -EINVAL);
	ck_assert_int_eq(uffd_source_read_sync(NULL, 0, buf, 1, 100), -EINVAL);
	ck_assert_int_eq(uffd_source_read_sync(src, 0, NULL, 1, 100), -EINVAL);
	ck_assert_int_eq(uffd_source_read_sync(src, 0, buf, 0, 100), -EINVAL);
	ck_assert_int_eq(uffd_source_read_sync(src, uffd_source_length(src), buf, 1, 100), -EINVAL);
	ck_assert_int_eq(uffd_source_read_sync(src, 0, buf, 1, 0), -EINVAL);
	ck_assert_int_eq(uffd_source_read_sync(src, 0, buf, 1, -2), -EINVAL);
	ASSERT_OK(uffd_source_read_sync(src, 0, buf, sizeof(buf), -1));
	ck_assert(!memcmp(buf, "UFFDSNP", 8));
	uffd_source_unref(src);
	/* a source holding something else: not a snapshot, named */
	src = file_src(path("plain"));
	ck_assert_int_eq(uffd_snap_open_sources(&s, &src, 1, NULL), -EBADMSG);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), path("plain")));
	uffd_source_unref(src);
	free(img);
}
END_TEST

/* Run uffd-snap with args (NULL-terminated); its exit status, its output in out. */
static int run_tool(char *out, size_t cap, const char *const *argl)
{
	const char *tool = getenv("UFFD_SNAP");
	char *argv[16];
	int pipefd[2], status;
	size_t n = 0, i = 0;
	ssize_t k;
	pid_t pid;

	argv[i++] = (char *)tool;
	for (; argl[i - 1]; i++)
		argv[i] = (char *)argl[i - 1];
	argv[i] = NULL;
	ck_assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (!pid) {
		dup2(pipefd[1], 1);
		dup2(pipefd[1], 2);
		execv(tool, argv);
		_exit(127);
	}
	close(pipefd[1]);
	while ((k = read(pipefd[0], out + n, cap - 1 - n)) > 0)
		n += (size_t)k;
	out[n] = 0;
	close(pipefd[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	return WEXITSTATUS(status);
}

#define TOOL(out, ...) run_tool(out, sizeof(out), (const char *const[]){ __VA_ARGS__, NULL })

START_TEST(tool)
{
	size_t len = 10 * MIB, flen;
	uint8_t *base, *next, *f, *got;
	char out[8192];
	const char *mem = path("mem"), *diff = path("diff.mem");
	const char *b = path("b.snap"), *d = path("d.snap");
	int fd;

	if (!getenv("UFFD_SNAP"))
		SKIP_TEST("UFFD_SNAP is not set: uffd-snap was not built (-Dtools=false)");
	diff_images(&base, &next, len);
	write_file(mem, base, len);
	fd = open(diff, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
	for (size_t p = 0; p < len; p += 4 * KIB)
		if (memcmp(base + p, next + p, 4 * KIB))
			ck_assert_int_eq(pwrite(fd, next + p, 4 * KIB, (off_t)p), 4 * KIB);
	close(fd);

	ck_assert_int_eq(TOOL(out, "pack", "--frame-size", "1M", mem, b), 0);
	ck_assert_int_eq(TOOL(out, "pack", "--parent", b, "--diff", diff, d), 0);
	ck_assert_int_eq(TOOL(out, "info", b, d), 0);
	ck_assert_msg(strstr(out, "layer 1: ") && strstr(out, "(diff)") &&
		      strstr(out, "parent 6 (60.0%)") && strstr(out, "10485760 bytes in 10 frames of 1048576 bytes, 2 layers"),
		      "info said:\n%s", out);
	ck_assert_int_eq(TOOL(out, "verify", b, d), 0);
	ck_assert_msg(strstr(out, "ok: "), "%s", out);

	/* unpack the chain: the new image, byte for byte */
	ck_assert_int_eq(TOOL(out, "unpack", b, d, path("out")), 0);
	got = slurp(path("out"), &flen);
	ck_assert_uint_eq(flen, len);
	ck_assert(!memcmp(got, next, len));
	free(got);
	/* merge, then unpack the merged one */
	ck_assert_int_eq(TOOL(out, "merge", b, d, path("m.snap")), 0);
	ck_assert_int_eq(TOOL(out, "unpack", path("m.snap"), path("out2")), 0);
	got = slurp(path("out2"), &flen);
	ck_assert(flen == len && !memcmp(got, next, len));
	free(got);

	/* a damaged frame: verify fails with exit 1 and names file and frame */
	f = slurp(b, &flen);
	f[HDR + 100] ^= 1;
	write_file(path("bad.snap"), f, flen);
	ck_assert_int_eq(TOOL(out, "verify", path("bad.snap")), 1);
	ck_assert_msg(strstr(out, path("bad.snap")) && strstr(out, "frame "), "%s", out);
	ck_assert_int_eq(TOOL(out, "unpack", path("bad.snap"), path("out3")), 1);
	ck_assert_int_eq(access(path("out3"), F_OK), -1);	/* no half-written image */
	/* a diff on the wrong base */
	ck_assert_int_eq(TOOL(out, "info", path("m.snap"), d), 1);
	ck_assert_msg(strstr(out, "not of"), "%s", out);
	/* usage */
	ck_assert_int_eq(TOOL(out, "pack", mem), 2);
	ck_assert_int_eq(TOOL(out, "frobnicate"), 2);
	ck_assert_int_eq(TOOL(out, "pack", "--frame-size", "lots", mem, b), 2);
	ck_assert_int_eq(TOOL(out, "pack", "--frame-size", "3M", mem, path("x.snap")), 1);
	ck_assert_msg(strstr(out, "power of two"), "%s", out);
	ck_assert_int_eq(TOOL(out, "--help"), 0);
	free(f);
	free(base);
	free(next);
}
END_TEST

static Suite *snapfmt_suite(void)
{
	Suite *s = suite_create("snapfmt");
	TCase *tc;

	tc = CASE(round_trip, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, round_trip);
	tc = CASE(zero_frames, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, zero_frames);
	tc = CASE(dedup, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, dedup);
	tc = CASE(parent_diff, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, parent_diff);
	tc = CASE(sparse_diff, 20);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, sparse_diff);
	tc = CASE(cache_bound, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, cache_bound);
	tc = CASE(bad_files, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, bad_files);
	tc = CASE(bad_frame, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, bad_frame);
	tc = CASE(bad_chain, 20);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, bad_chain);
	tc = CASE(dedup_same_crc, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, dedup_same_crc);
	tc = CASE(args, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, args);
	tc = CASE(restore_4k, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, restore_4k);
	tc = CASE(restore_2m, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, restore_2m);
	tc = CASE(replay_frame_once, 30);
	tcase_add_test(tc, replay_frame_once);
	tc = CASE(record_replay_layered, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, record_replay_layered);
	tc = CASE(restore_bad_frame, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, restore_bad_frame);
	tc = CASE(restore_demand_first, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, restore_demand_first);
	tc = CASE(over_sources, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, over_sources);
	tc = CASE(pool_frame_once, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, pool_frame_once);
	tc = CASE(sources_args, 10);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, sources_args);
	tc = CASE(tool, 30);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, tool);
	return s;
}

int main(void)
{
	return harness_run(snapfmt_suite());
}
