/* SPDX-License-Identifier: MIT */
/*
 * The contenders of uffd-restore served from other page sources than the
 * plain snapshot file (issue 22), by the same restore engine:
 *   snap, snap_replay, snap_fill  the snapshot packed (libuffd-snapshot(5),
 *                                 frames of 256 KiB, zstd level 3) and
 *                                 served by uffd_source_snap()
 *   layers_replay                 a base file and two Firecracker Diff
 *                                 files (uffd_source_layered())
 *   snap_layers_replay            those packed: a compressed base and two
 *                                 compressed diffs, one chain
 * The replays load the trace libuffd_replay recorded: the same image, the
 * same offsets. The files are made once, untimed, next to the snapshot
 * (/var/tmp), and put in the run's cache state (warm: read in; cold:
 * dropped) as restore.c does for the snapshot file.
 *
 * The layers hold the snapshot's bytes spread over three files: about 3%
 * of the pages, in runs of 4 (dirtied objects), are the diffs' (diff 2's
 * where both hold one), and the base holds other bytes of the image there
 * (bytes a later layer hides). Every page a run serves is checked against
 * the snapshot (rs_guest()).
 *
 * --image: the snapshot is a real memory image (bench/snap-image.py)
 * copied here; its bytes are what the guest's pages are checked against.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "restore.h"

#define DIR_TMPL "/var/tmp/uffd-restore-snap-XXXXXX"

enum { F_FULL, F_BASE, F_D1, F_D2, F_ZBASE, F_Z1, F_Z2, NFILES };
static const char *const fname[NFILES] = { "full.snap", "base", "diff1", "diff2",
					   "base.snap", "diff1.snap", "diff2.snap" };
static char dir[sizeof(DIR_TMPL)];
static char path[NFILES][sizeof(DIR_TMPL) + 16];
static bool made;

/* ---- the image ---- */

int rs_image_open(struct rs_env *e, const char *image, size_t mib)
{
	char tmpl[] = "/var/tmp/uffd-restore-image-XXXXXX";
	int in = open(image, O_RDONLY | O_CLOEXEC), fd = -1;
	struct stat st;
	size_t len;
	void *truth;

	if (in < 0 || fstat(in, &st) || st.st_size < (off_t)HUGE)
		goto fail;
	len = (size_t)st.st_size / HUGE * HUGE;
	if (len > mib << 20)
		len = mib << 20;
	if ((fd = mkostemp(tmpl, O_CLOEXEC)) < 0)
		goto fail;
	unlink(tmpl);
	for (off_t off = 0; off < (off_t)len;) {
		ssize_t k = copy_file_range(in, &off, fd, NULL, len - (size_t)off, 0);

		if (k <= 0)
			goto fail;
	}
	if (fsync(fd) || (truth = mmap(NULL, len, PROT_READ, MAP_PRIVATE, in, 0)) == MAP_FAILED)
		goto fail;
	close(in);
	e->len = len;
	e->npages = len / PAGE;
	e->truth = truth;
	return fd;
fail:
	fprintf(stderr, "uffd-restore: --image %s (at least 2 MiB): %s\n", image, strerror(errno));
	if (in >= 0)
		close(in);
	if (fd >= 0)
		close(fd);
	return -1;
}

/* ---- the files, made once ---- */

static uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Which layers hold page p: bit 0 diff 1, bit 1 diff 2 (runs of 4 pages, about 3% in all). */
static unsigned holders(size_t p)
{
	uint64_t h = mix(p / 4 + 1) % 64;

	return h == 0 ? ((p / 4) % 3 ? 1u : 3u) : h == 1 ? 2u : 0u;
}

static int pread_all(int fd, void *buf, size_t len, off_t off)
{
	return pread(fd, buf, len, off) == (ssize_t)len ? 0 : -1;
}

static int pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	return pwrite(fd, buf, len, off) == (ssize_t)len ? 0 : -1;
}

/* The base and the two Diff files (sparse), from the snapshot's bytes. */
static int write_layers(const struct rs_env *e)
{
	int fd[3] = { -1, -1, -1 }, err = -1;
	char *page = malloc(PAGE), *other = malloc(PAGE);

	for (int i = 0; i < 3; i++)
		if ((fd[i] = open(path[F_BASE + i], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0 ||
		    ftruncate(fd[i], (off_t)e->len))
			goto out;
	if (!page || !other)
		goto out;
	for (size_t p = 0; p < e->npages; p++) {
		unsigned h = holders(p);
		off_t at = (off_t)(p * PAGE);

		if (pread_all(e->fd, page, PAGE, at) ||
		    pread_all(e->fd, other, PAGE, (off_t)(((p + e->npages / 2) % e->npages) * PAGE)))
			goto out;
		/* the base: the page, or bytes from elsewhere in the image a diff hides */
		if (pwrite_all(fd[0], h ? other : page, PAGE, at))
			goto out;
		if ((h & 1) && pwrite_all(fd[1], h & 2 ? other : page, PAGE, at))
			goto out;
		if ((h & 2) && pwrite_all(fd[2], page, PAGE, at))
			goto out;
	}
	err = 0;
	for (int i = 0; i < 3 && !err; i++)
		err = fsync(fd[i]);
out:
	for (int i = 0; i < 3; i++)
		if (fd[i] >= 0)
			close(fd[i]);
	free(page);
	free(other);
	return err;
}

/* Packs the image in fd into path, a diff of the chain parents[0..n) when n (frames of frame_size; 0: the default). */
static int pack(const char *out, int fd, const char *const *parents, unsigned n, uint64_t frame_size)
{
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .flags = n ? UFFD_SNAP_PACK_DIFF : 0,
					  .frame_size = frame_size };
	struct uffd_snap *ps = NULL;
	int err;

	if (n && uffd_snap_open(&ps, parents, n, NULL))
		return -1;
	po.parent = ps;
	err = uffd_snap_pack(out, fd, &po);
	uffd_snap_close(ps);
	return err;
}

static int pack_file(const char *out, const char *in, const char *const *parents, unsigned n, uint64_t frame_size)
{
	int fd = open(in, O_RDONLY | O_CLOEXEC), err;

	if (fd < 0)
		return -1;
	err = pack(out, fd, parents, n, frame_size);
	close(fd);
	return err;
}

/* What the compressed files hold: the ratio of the whole image, and each layer of the chain. */
static void describe(void)
{
	const char *chain[] = { path[F_ZBASE], path[F_Z1], path[F_Z2] }, *full = path[F_FULL];
	struct uffd_snap_info in = { .size = sizeof(in) };
	struct uffd_snap *s = NULL;

	if (!uffd_snap_open(&s, &full, 1, NULL) && !uffd_snap_info(s, 0, &in))
		printf("# snap: %llu bytes of image in %llu bytes of file (%.2fx), %llu frames of %llu KiB, %llu of them zero\n",
		       (unsigned long long)in.image_size, (unsigned long long)in.file_bytes,
		       (double)in.image_size / (double)in.file_bytes, (unsigned long long)in.frames,
		       (unsigned long long)in.frame_size >> 10, (unsigned long long)in.frames_zero);
	uffd_snap_close(s);
	s = NULL;
	if (uffd_snap_open(&s, chain, 3, NULL))
		return;
	for (unsigned k = 0; k < 3; k++)
		if (!uffd_snap_info(s, k, &in))
			printf("# snap_layers %s: %llu bytes of file, %llu data frames, %llu left to the parent\n",
			       fname[F_ZBASE + k], (unsigned long long)in.file_bytes,
			       (unsigned long long)in.frames_data, (unsigned long long)in.frames_parent);
	uffd_snap_close(s);
}

/* Makes every file once (untimed). 0, or -1 after reporting. */
static int make_files(const struct rs_env *e, const char *name)
{
	const char *chain[] = { path[F_ZBASE], path[F_Z1] };
	double t0 = now_us();

	if (made)
		return 0;
	strcpy(dir, DIR_TMPL);
	if (!mkdtemp(dir)) {
		fprintf(stderr, "uffd-restore: %s: mkdtemp: %s\n", name, strerror(errno));
		return -1;
	}
	for (int i = 0; i < NFILES; i++)
		snprintf(path[i], sizeof(path[i]), "%s/%s", dir, fname[i]);
	made = true;
	if (pack(path[F_FULL], e->fd, NULL, 0, e->frame_size) || write_layers(e) ||
	    pack_file(path[F_ZBASE], path[F_BASE], NULL, 0, e->frame_size) ||
	    pack_file(path[F_Z1], path[F_D1], chain, 1, e->frame_size) ||
	    pack_file(path[F_Z2], path[F_D2], chain, 2, e->frame_size)) {
		fprintf(stderr, "uffd-restore: %s: making the compressed and layered files: %s\n", name,
			uffd_last_error());
		return -1;
	}
	describe();
	printf("# restore-snap: files made in %.1f s\n", (now_us() - t0) / 1e6);
	return 0;
}

void rs_snap_cleanup(void)
{
	if (!made)
		return;
	for (int i = 0; i < NFILES; i++)
		unlink(path[i]);
	rmdir(dir);
	made = false;
}

/* The file at path in the run's cache state (e->cold: dropped; else read in). */
static int cache_file(const struct rs_env *e, const char *p)
{
	static char buf[1 << 20];
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	off_t off = 0;
	ssize_t k;

	if (fd < 0)
		return -1;
	if (e->cold)
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	else
		while ((k = pread(fd, buf, sizeof(buf), off)) > 0)
			off += k;
	close(fd);
	return 0;
}

/* ---- the sources ---- */

enum which { SNAP_FULL, LAYERS, SNAP_LAYERS };

static int open_source(const struct rs_env *e, enum which w, struct uffd_source **out)
{
	const char *chain[] = { path[F_ZBASE], path[F_Z1], path[F_Z2] }, *full = path[F_FULL];
	struct uffd_source_file_opts fo = { .size = sizeof(fo), .flags = UFFD_SOURCE_FILE_DIFF };
	struct uffd_source *l[3] = { NULL };
	struct uffd_snap *s = NULL;
	int err = 0, fd;

	if (w != LAYERS) {
		for (int i = 0; i < (w == SNAP_FULL ? 1 : 3); i++)
			cache_file(e, w == SNAP_FULL ? full : chain[i]);
		struct uffd_snap_opts so = { .size = sizeof(so), .threads = e->snap_threads };

		if ((err = uffd_snap_open(&s, w == SNAP_FULL ? &full : chain, w == SNAP_FULL ? 1 : 3, &so)) ||
		    (err = uffd_source_snap(out, s)))
			uffd_snap_close(s);
		return err;
	}
	for (int i = 0; i < 3 && !err; i++) {
		cache_file(e, path[F_BASE + i]);
		if ((fd = open(path[F_BASE + i], O_RDONLY | O_CLOEXEC)) < 0)
			return -errno;
		fo.flags = i ? UFFD_SOURCE_FILE_DIFF : 0;
		err = uffd_source_file(&l[i], fd, &fo);
		close(fd);
	}
	if (!err)
		err = uffd_source_layered(out, l, 3, NULL);
	for (int i = 0; i < 3; i++)
		uffd_source_unref(l[i]);
	return err;
}

/* As engine_run() (restore-engine.c), the region served from source w. */
static int source_run(const struct rs_env *e, const char *name, enum which w, unsigned flags,
		      const char *trace, struct rs_result *res)
{
	struct uffd_restore_opts ro = { .size = sizeof(ro), .flags = flags };
	struct uffd_restore_stats st = { .size = sizeof(st) };
	struct uffd_restore *rs = NULL;
	struct uffd_source *src = NULL;
	struct rs_lib lb;
	int err;

	if (make_files(e, name))
		return -1;
	if ((err = rs_lib_open(e, name, &lb)))
		return -1;
	place(true);
	if ((err = open_source(e, w, &src)) || (err = uffd_restore_new(&rs, &ro)) ||
	    (err = uffd_restore_add_region_source(rs, lb.r, src, 0)) ||
	    (trace && (err = uffd_restore_load_trace(rs, trace))) || (err = uffd_restore_start(rs, lb.l))) {
		place(false);
		fprintf(stderr, "uffd-restore: %s: restore set-up: %s\n", name, uffd_last_error());
		goto out;
	}
	place(false);
	if ((err = rs_lib_guest(e, name, &lb, res)))
		goto out;
	uffd_restore_stats(rs, &st);
	res->v[RS_IOCTLS] = NAN;	/* the engine's resolutions are not the loop's */
	res->v[RS_AHEAD] = (double)(st.pages_prefetched + st.pages_filled);
	res->has_hist = true;
	for (size_t k = 0; k < 3; k++)
		for (size_t b = 0; b < UFFD_HIST_BUCKETS; b++)
			res->hist[b] += st.latency[k][b];
	if (st.read_errors) {
		bench_fail(name, "the restore counted %llu read errors", (unsigned long long)st.read_errors);
		err = -1;
	}
out:
	uffd_restore_free(rs);
	uffd_source_unref(src);
	rs_lib_close(&lb);
	return err ? -1 : 0;
}

/* The replays need libuffd_replay's trace (recorded when it is enabled). */
static int replay(const struct rs_env *e, const char *name, enum which w, struct rs_result *res)
{
	if (!e->trace) {
		fprintf(stderr, "uffd-restore: %s: no trace: run it with libuffd_replay (--only)\n", name);
		return -1;
	}
	return source_run(e, name, w, 0, e->trace, res);
}

int rs_snap(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return source_run(e, name, SNAP_FULL, 0, NULL, res);
}

int rs_snap_replay(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return replay(e, name, SNAP_FULL, res);
}

int rs_snap_fill(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return source_run(e, name, SNAP_FULL, UFFD_RESTORE_FILL, NULL, res);
}

int rs_layers_replay(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return replay(e, name, LAYERS, res);
}

int rs_snap_layers_replay(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return replay(e, name, SNAP_LAYERS, res);
}
