/* SPDX-License-Identifier: MIT */
/*
 * uffd-snap-bench: the frame size of compressed snapshots
 * (libuffd-snapshot(5)) measured on one memory image, for each size from
 * 64 KiB to 4 MiB:
 *   - pack: uffd_snap_pack() time, compression ratio (image / file);
 *   - decompress: a whole frame read (pread + zstd + CRC32C), median over
 *     every data frame, the file in the page cache;
 *   - a 4 KiB read of a frame not decompressed yet (uffd_snap_read, a cache
 *     of one frame, frames in random order): median, the file in the page
 *     cache (warm) and dropped from it before each read (cold);
 *   - a 4 KiB demand fault through the restore engine (uffd_source_snap,
 *     anonymous memory registered MISSING, the guest is this process):
 *     median time of the faulting load, first fault in a frame and a second
 *     fault in the same frame (served from the decompressed frame).
 * usage: uffd-snap-bench IMAGE [WORKDIR] [SAMPLES]   (bench/RESULTS.md)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n ? v[n / 2] : 0;
}

static void die(const char *what)
{
	fprintf(stderr, "uffd-snap-bench: %s: %s\n", what, uffd_last_error());
	exit(1);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Frames holding data (not zero), in random order. */
static size_t data_frames(struct uffd_snap *s, const struct uffd_snap_info *si, uint64_t *out)
{
	size_t n = 0;
	uint64_t run;

	for (uint64_t f = 0; f < si->frames; f++)
		if (uffd_snap_extent(s, f * si->frame_size, &run) == UFFD_SNAP_DATA)
			out[n++] = f;
	for (size_t i = n; i > 1; i--) {
		size_t j = next_rand() % i;
		uint64_t t = out[i - 1];

		out[i - 1] = out[j];
		out[j] = t;
	}
	return n;
}

/* 4 KiB at a random page of each of the first samples frames, none cached. */
static double fault_lib(const char *path, const uint64_t *frames, size_t n, uint64_t fs, bool cold)
{
	struct uffd_snap_opts so = { .size = sizeof(so), .cache_bytes = fs };
	double *t = malloc(n * sizeof(*t)), m;
	struct uffd_snap *s;
	uint8_t page[4096];
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (uffd_snap_open(&s, &path, 1, &so))
		die(path);
	for (size_t i = 0; i < n; i++) {
		uint64_t off = frames[i] * fs + (next_rand() % (fs / 4096)) * 4096;
		double t0;

		if (cold)
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		t0 = now();
		if (uffd_snap_read(s, off, page, sizeof(page)))
			die("read");
		t[i] = now() - t0;
	}
	uffd_snap_close(s);
	close(fd);
	m = median(t, n);
	free(t);
	return m;
}

/* Through the engine: first and second 4 KiB demand faults in each of n frames. */
static void fault_engine(const char *path, uint64_t size, const uint64_t *frames, size_t n,
			 uint64_t fs, double *first, double *second)
{
	struct uffd_opts uo = { .size = sizeof(uo), .want_features = UFFD_FEATURES_DEFAULT | UFFD_FEATURE_EVENT_UNMAP };
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .modes = UFFDIO_REGISTER_MODE_MISSING, .fd = -1 };
	double *t1 = malloc(n * sizeof(double)), *t2 = malloc(n * sizeof(double));
	struct uffd_restore *rs;
	struct uffd_source *src;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct uffd_snap *s;
	struct uffd *u;
	volatile uint8_t *mem;

	if (uffd_open(&u, &uo))
		die("uffd_open");
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || uffd_register(u, (void *)mem, size, UFFDIO_REGISTER_MODE_MISSING, NULL))
		die("register");
	fo.owner_addr = (uintptr_t)mem;
	fo.length = size;
	fo.page_size = 4096;
	if (uffd_region_create_foreign(u, &fo, &r) || uffd_loop_new(&l, NULL) ||
	    uffd_loop_add(l, u, NULL, NULL) || uffd_loop_start(l, 1))
		die("loop");
	if (uffd_snap_open(&s, &path, 1, NULL) || uffd_source_snap(&src, s))
		die(path);
	if (uffd_restore_new(&rs, NULL) || uffd_restore_add_region_source(rs, r, src, 0) ||
	    uffd_restore_start(rs, l))
		die("restore");
	for (size_t i = 0; i < n; i++) {
		uint64_t pages = fs / 4096, a = next_rand() % pages, b = (a + 1 + next_rand() % (pages - 1)) % pages;
		double t0 = now();

		(void)mem[frames[i] * fs + a * 4096];
		t1[i] = now() - t0;
		t0 = now();
		(void)mem[frames[i] * fs + b * 4096];
		t2[i] = now() - t0;
	}
	*first = median(t1, n);
	*second = median(t2, n);
	uffd_restore_free(rs);
	uffd_source_unref(src);
	munmap((void *)mem, size);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
	free(t1);
	free(t2);
}

int main(int argc, char **argv)
{
	const char *image = argc > 1 ? argv[1] : NULL, *dir = argc > 2 ? argv[2] : "/var/tmp";
	size_t samples = argc > 3 ? strtoul(argv[3], NULL, 10) : 200;
	char path[512];
	struct stat st;
	int fd;

	if (!image || !samples) {
		fprintf(stderr, "usage: uffd-snap-bench IMAGE [WORKDIR] [SAMPLES]\n");
		return 2;
	}
	fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		perror(image);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/uffd-snap-bench-%d.snap", dir, (int)getpid());
	printf("image %s: %lld bytes; zstd level 3; %zu samples; median times\n", image,
	       (long long)st.st_size, samples);
	printf("%-7s %7s %9s %7s %9s %11s %11s %11s %11s %11s\n", "frame", "ratio", "pack_s", "MB/s",
	       "frames", "decomp_us", "4k_warm_us", "4k_cold_us", "fault1_us", "fault2_us");
	for (unsigned shift = 16; shift <= 22; shift++) {
		struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = 1ull << shift };
		struct uffd_snap_info si = { .size = sizeof(si) };
		struct uffd_snap *s;
		uint64_t *frames, fs = 1ull << shift;
		size_t n, k;
		double t0, pack, dec, warm, cold, f1, f2;
		uint8_t *buf = malloc(fs);

		t0 = now();
		if (uffd_snap_pack(path, fd, &po))
			die("pack");
		pack = now() - t0;
		if (uffd_snap_open(&s, (const char *const[]){ path }, 1, NULL) || uffd_snap_info(s, 0, &si))
			die(path);
		frames = malloc(si.frames * sizeof(*frames));
		n = data_frames(s, &si, frames);
		/* every data frame, whole: pread + decompress + CRC32C; the median */
		{
			double *t = malloc(n * sizeof(*t));

			for (k = 0; k < n; k++) {
				uint64_t off = frames[k] * fs, len = fs < si.image_size - off ? fs : si.image_size - off;

				t0 = now();
				if (uffd_snap_read(s, off, buf, len))
					die("read");
				t[k] = now() - t0;
			}
			dec = median(t, n);
			free(t);
		}
		uffd_snap_close(s);
		k = n < samples ? n : samples;
		warm = fault_lib(path, frames, k, fs, false);
		cold = fault_lib(path, frames, k, fs, true);
		fault_engine(path, si.image_size, frames, k, fs, &f1, &f2);
		char label[8];

		snprintf(label, sizeof(label), shift < 20 ? "%lluK" : "%lluM",
			 (unsigned long long)(fs >> (shift < 20 ? 10 : 20)));
		printf("%-7s %7.2f %9.2f %7.0f %9zu %11.0f %11.0f %11.0f %11.0f %11.1f\n",
		       label, (double)si.image_size / (double)si.file_bytes,
		       pack, (double)si.image_size / pack / 1e6, n, dec * 1e6, warm * 1e6, cold * 1e6,
		       f1 * 1e6, f2 * 1e6);
		fflush(stdout);
		free(frames);
		free(buf);
		unlink(path);
	}
	close(fd);
	return 0;
}
