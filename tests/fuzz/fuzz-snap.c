/* SPDX-License-Identifier: MIT */
/*
 * Fuzzes the reading of compressed snapshots (libuffd-snapshot(5)): files
 * that come from elsewhere and may be damaged or made up. The input is a
 * snapshot file after a first byte: bit 1 opens the file as a diff on a
 * small base made at start-up, and unless bit 2 is set, names that base
 * as the file's parent; bit 0 then recomputes the index's and the
 * header's checksums (so that inputs reach the checks behind them). Whatever
 * uffd_snap_open() makes of it, nothing may crash, hang or leak; a refusal
 * has its errno and a sentence; an accepted file reads, verifies and
 * describes itself consistently, or fails with a sentence.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crc32c.h"
#include "internal.h"
#include "snap-format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FILE (64u << 10)
#define MAX_IMAGE (16ull << 20)	/* larger images: opened and described only */

static char base_path[64];
static uint8_t base_id[16];

/* A 256 KiB base in frames of 64 KiB: zeros, text, bytes. */
static void make_base(void)
{
	static uint8_t img[256 << 10];
	struct uffd_snap_pack_opts o = { .size = sizeof(o), .frame_size = 64 << 10 };
	int fd = memfd_create("fuzz-snap-image", MFD_CLOEXEC), out;
	char tmp[64];

	for (size_t i = 64 << 10; i < sizeof(img); i++)
		img[i] = i < (128 << 10) ? (uint8_t)"abcdefgh"[i % 8] : (uint8_t)((uint32_t)(i * 2654435761u) >> 13);
	if (fd < 0 || write(fd, img, sizeof(img)) != (ssize_t)sizeof(img))
		abort();
	out = memfd_create("fuzz-snap-base", MFD_CLOEXEC);
	snprintf(base_path, sizeof(base_path), "/proc/self/fd/%d", out);
	/* pack renames a temporary file onto its target: a file in /tmp, copied */
	snprintf(tmp, sizeof(tmp), "/tmp/fuzz-snap-base-%d.snap", (int)getpid());
	if (uffd_snap_pack(tmp, fd, &o))
		abort();
	close(fd);
	fd = open(tmp, O_RDONLY | O_CLOEXEC);
	for (ssize_t n; fd >= 0 && (n = read(fd, img, sizeof(img))) > 0;)
		if (write(out, img, (size_t)n) != n)
			abort();
	close(fd);
	unlink(tmp);
	{
		const char *p = base_path;
		struct uffd_snap *s;
		struct uffd_snap_info i = { .size = sizeof(i) };

		if (uffd_snap_open(&s, &p, 1, NULL) || uffd_snap_info(s, 0, &i))
			abort();
		memcpy(base_id, i.id, 16);
		uffd_snap_close(s);
	}
}

static uint64_t get_le(const uint8_t *p, unsigned bytes)
{
	uint64_t v = 0;

	while (bytes--)
		v = v << 8 | p[bytes];
	return v;
}

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* The checksums made right for whatever the header's sizes say. */
static void reseal(uint8_t *f, size_t len)
{
	uint64_t idx;

	if (len < SNAP_HEADER_SIZE)
		return;
	idx = get_le(f + 40, 8);
	if (idx <= len)
		put_le(f + 48, uffd__crc32c(f + idx, len - idx), 4);
	put_le(f + 124, uffd__crc32c(f, 124), 4);
}

static void check_accepted(struct uffd_snap *s, unsigned layer)
{
	struct uffd_snap_info i = { .size = sizeof(i) };
	static uint8_t buf[4 << 20];
	uint64_t zero = 0, run;
	int err;

	if (uffd_snap_info(s, layer, &i) || i.frames_data + i.frames_zero + i.frames_parent != i.frames ||
	    i.frames_dedup > i.frames_data || i.frame_size < (64 << 10) || i.frame_size > (4 << 20))
		abort();
	for (uint64_t off = 0; off < i.image_size; off += run) {
		int kind = uffd_snap_extent(s, off, &run);

		if ((kind != UFFD_SNAP_ZERO && kind != UFFD_SNAP_DATA) || !run || run > i.image_size - off)
			abort();
		zero += kind == UFFD_SNAP_ZERO ? run : 0;
	}
	/* one layer: its zero frames are the image's zeros (the last one may be short) */
	if (i.layers == 1 && (zero > i.frames_zero * i.frame_size ||
			      (i.frames_zero && zero <= (i.frames_zero - 1) * i.frame_size)))
		abort();
	if (i.image_size > MAX_IMAGE)
		return;
	err = uffd_snap_verify(s);
	if (err && (err != -EBADMSG || !*uffd_last_error()))
		abort();
	/* every frame: a page of it, then all of it */
	for (uint64_t off = 0; off < i.image_size; off += i.frame_size) {
		size_t n = i.image_size - off < i.frame_size ? (size_t)(i.image_size - off) : (size_t)i.frame_size;
		int e1 = uffd_snap_read(s, off + n - 4096, buf, 4096), e2 = uffd_snap_read(s, off, buf, n);

		if ((e1 && e1 != -EBADMSG) || (e2 && e2 != -EBADMSG) || (!err && (e1 || e2)))
			abort();
		if (!e2 && uffd_snap_extent(s, off, &run) == UFFD_SNAP_ZERO)
			for (size_t k = 0; k < n; k++)
				if (buf[k])
					abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct uffd_snap_opts so = { .size = sizeof(so), .cache_bytes = 4 << 20 };
	static uint8_t file[MAX_FILE];
	const char *paths[2];
	char path[64];
	struct uffd_snap *s = NULL;
	size_t len;
	int fd, err;
	bool diff;

	if (!size || size - 1 > MAX_FILE)
		return 0;
	if (!base_path[0])
		make_base();
	len = size - 1;
	memcpy(file, data + 1, len);
	diff = data[0] & 2;
	if (diff && !(data[0] & 4) && len >= SNAP_HEADER_SIZE)
		memcpy(file + 72, base_id, 16);
	if (data[0] & 1)
		reseal(file, len);
	fd = memfd_create("fuzz-snap", MFD_CLOEXEC);
	if (fd < 0 || write(fd, file, len) != (ssize_t)len)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	paths[0] = diff ? base_path : path;
	paths[1] = path;
	err = uffd_snap_open(&s, paths, diff ? 2 : 1, &so);
	if (!err) {
		check_accepted(s, diff);
		uffd_snap_close(s);
	} else if ((err != -EBADMSG && err != -EPROTONOSUPPORT && err != -EINVAL && err != -ENOMEM) ||
		   s || !*uffd_last_error()) {
		abort();
	}
	close(fd);
	return 0;
}
