/* SPDX-License-Identifier: MIT */
/*
 * Where the guest's bytes come from (uffd-serve --memory and --layer): each
 * snapshot file opened and checked before any VM connects, as the page
 * source of its kind, and the layers stacked into one source.
 *
 * The kinds, told apart by what a file begins with (kind_of()):
 *   a plain file   a Firecracker memory file (--memory) or Diff file
 *                  (--layer, its holes falling through): uffd_source_file()
 *   compressed     libuffd-snapshot(5): a base (--memory) or a diff naming
 *                  its parent (--layer); consecutive compressed files are
 *                  one chain (uffd_snap_open()), a diff right after its
 *                  parent: uffd_source_snap()
 *   remote         a URL (http://, https://, s3://, nbd://, nbd+unix://,
 *                  nbds://): serve_remote_layer() of serve-remote.c; its
 *                  first bytes read through it (uffd_source_read_sync()):
 *                  a compressed snapshot there is read through that
 *                  source (uffd_snap_open_sources()), in a chain with the
 *                  compressed files, local or remote, around it
 * Each kind has one opener; open_source() dispatches on the kind and
 * stacks what they give with uffd_source_layered(), newest last.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve.h"

#define MAX_FILES 64	/* --memory and 63 --layer */

enum kind { KIND_FILE, KIND_COMPRESSED, KIND_REMOTE };

/* The magic of libuffd-snapshot(5), with its NUL. */
static const char snap_magic[8] = "UFFDSNP";

/* A snapshot file, read-only: fd, and its size in *size; or an EXIT_* code negated. */
static int open_snapshot(const char *what, const char *path, uint64_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	off_t end;

	if (fd < 0)
		return -serve_fail(EXIT_SETUP, "cannot open the %s %s: %s", what, path, strerror(errno));
	if (fstat(fd, &st) || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		close(fd);
		return -serve_fail(EXIT_SETUP, "the %s %s is not a regular file or block device", what, path);
	}
	end = lseek(fd, 0, SEEK_END);
	*size = end > 0 ? (uint64_t)end : 0;
	/* Found now, before a VM connects and waits on its first fault. */
	if (!*size || pread(fd, &(char){ 0 }, 1, 0) != 1) {
		serve_fail(EXIT_SETUP, "the %s %s %s", what, path,
			   *size ? "cannot be read" : "is empty; --memory is the guest memory file, not the VM state file");
		close(fd);
		return -EXIT_SETUP;
	}
	return fd;
}

/*
 * What the file at path is, by its first bytes: 0 with *k set, or
 * EXIT_SETUP after one line (missing, not a file, empty, unreadable). A
 * URL's first bytes are read through its source, opened here and kept in
 * *remote when it holds a compressed snapshot (its layers are read through
 * it) or is the snapshot itself (--memory); a plain remote layer is opened
 * again as a Diff layer later.
 */
static int kind_of(const struct serve_opts *o, const char *what, const char *path, bool first, enum kind *k,
		   struct uffd_source **remote)
{
	char head[sizeof(snap_magic)] = { 0 };
	struct uffd_source *src;
	uint64_t size;
	int fd;

	*remote = NULL;
	if (serve_is_url(path)) {
		if (!(src = serve_remote_layer(o, what, path, false, &size)))
			return EXIT_SETUP;
		if (size >= sizeof(head) && uffd_source_read_sync(src, 0, head, sizeof(head), -1)) {
			serve_fail(EXIT_SETUP, "cannot read the first bytes of the %s %s: %s", what, path, uffd_last_error());
			uffd_source_unref(src);
			return EXIT_SETUP;
		}
		*k = !memcmp(head, snap_magic, sizeof(head)) ? KIND_COMPRESSED : KIND_REMOTE;
		if (*k == KIND_COMPRESSED || first)
			*remote = src;
		else
			uffd_source_unref(src);
		return 0;
	}
	if ((fd = open_snapshot(what, path, &size)) < 0)
		return -fd;
	*k = pread(fd, head, sizeof(head), 0) == (ssize_t)sizeof(head) && !memcmp(head, snap_magic, sizeof(head))
		? KIND_COMPRESSED : KIND_FILE;
	close(fd);
	return 0;
}

/* The file source of one plain snapshot file (a Diff layer's holes fall through); NULL after printing why. */
static struct uffd_source *file_layer(const char *what, const char *path, bool diff)
{
	struct uffd_source_file_opts fo = { .size = sizeof(fo), .flags = diff ? UFFD_SOURCE_FILE_DIFF : 0,
					    .name = path };
	struct uffd_source *src = NULL;
	uint64_t size;
	int fd = open_snapshot(what, path, &size);

	if (fd < 0)
		return NULL;
	if (uffd_source_file(&src, fd, &fo))
		serve_fail(EXIT_SETUP, "cannot read the %s %s: %s", what, path, uffd_last_error());
	close(fd);	/* the source has its own */
	return src;
}

/*
 * The compressed snapshot of the n files or URLs paths[0..n): local files
 * with uffd_snap_open(); when one is a URL (its source in remote[]), every
 * layer as a page source (a local one as a file source) with
 * uffd_snap_open_sources(). Takes remote[]'s references. NULL after one line.
 */
static struct uffd_snap *open_chain(const char *const *paths, struct uffd_source *const *remote, unsigned n)
{
	struct uffd_source *l[MAX_FILES] = { NULL };
	struct uffd_snap *s = NULL;
	bool any = false;
	unsigned i;
	int err;

	for (i = 0; i < n; i++)
		any |= remote[i] != NULL;
	if (!any) {
		if (uffd_snap_open(&s, paths, n, NULL))
			serve_fail(EXIT_SETUP, "cannot use the compressed snapshot: %s", uffd_last_error());
		return s;
	}
	for (i = 0; i < n; i++) {
		struct uffd_source_file_opts fo = { .size = sizeof(fo), .name = paths[i] };
		uint64_t size;
		int fd;

		if ((l[i] = remote[i]))
			continue;
		if ((fd = open_snapshot("layer", paths[i], &size)) < 0)
			goto out;
		err = uffd_source_file(&l[i], fd, &fo);
		close(fd);
		if (err) {
			serve_fail(EXIT_SETUP, "cannot read the layer %s: %s", paths[i], uffd_last_error());
			goto out;
		}
	}
	if (uffd_snap_open_sources(&s, l, n, NULL))
		serve_fail(EXIT_SETUP, "cannot use the compressed snapshot: %s", uffd_last_error());
out:
	for (unsigned j = 0; j < n; j++)
		uffd_source_unref(l[j] ? l[j] : remote[j]);
	return s;
}

/*
 * The source of the n compressed snapshots paths[0..n) (files or URLs):
 * one chain, base first, each diff right after its parent. The first is
 * --memory (first) or a diff's parent given as --layer; a diff right after
 * a plain file has no parent here and is refused. Headers, indexes and the
 * chain are checked here; with verify, every frame too. NULL after one line.
 */
static struct uffd_source *compressed_layer(const char *const *paths, struct uffd_source *const *remote, unsigned n,
					    bool first, bool verify)
{
	struct uffd_snap_info info = { .size = sizeof(info) };
	struct uffd_source *src = NULL;
	struct uffd_snap *s = open_chain(paths, remote, n);
	static const uint8_t none[16];

	if (!s)
		return NULL;
	if (!first && !uffd_snap_info(s, 0, &info) && !memcmp(info.parent_id, none, sizeof(none))) {
		serve_fail(EXIT_SETUP, "the layer %s is a compressed snapshot of its own, not a diff: give it as --memory, or pack a diff with uffd-snap pack --parent",
			   paths[0]);
		goto out;
	}
	if (verify && uffd_snap_verify(s)) {
		serve_fail(EXIT_SETUP, "the compressed snapshot is damaged: %s", uffd_last_error());
		goto out;
	}
	if (uffd_source_snap(&src, s))
		serve_fail(EXIT_SETUP, "cannot serve the compressed snapshot %s: %s", paths[0], uffd_last_error());
	else
		s = NULL;	/* the source's now */
out:
	uffd_snap_close(s);
	return src;
}

/*
 * Where the guest's bytes come from, checked before any VM connects: the
 * memory snapshot and its layers, each of its kind, each readable and of
 * the snapshot's size (a plain Diff file's holes found once, here; a
 * compressed file's header, index and chain). NULL after printing one line.
 */
struct uffd_source *open_source(const struct serve_opts *o, uint64_t *size)
{
	struct uffd_source *l[MAX_FILES] = { NULL }, *rem[MAX_FILES] = { NULL }, *src = NULL;
	const char *path[MAX_FILES];
	enum kind k[MAX_FILES];
	size_t nfiles = 1 + o->nlayers, n = 0, i, j;
	uint64_t sz;

	path[0] = o->memory;
	for (i = 0; i < o->nlayers; i++)
		path[i + 1] = o->layers[i];
	for (i = 0; i < nfiles; i++)
		if (kind_of(o, i ? "layer" : "snapshot", path[i], i == 0, &k[i], &rem[i]))
			goto out;
	for (i = 0; i < nfiles; i = j, n++) {
		const char *what = i ? "layer" : "snapshot";

		j = i + 1;
		switch (k[i]) {
		case KIND_FILE:
			l[n] = file_layer(what, path[i], i > 0);
			break;
		case KIND_REMOTE:	/* --memory's source is kept; a layer's is opened as a Diff layer */
			l[n] = rem[i] ? rem[i] : serve_remote_layer(o, what, path[i], true, &sz);
			rem[i] = NULL;
			break;
		case KIND_COMPRESSED:
			while (j < nfiles && k[j] == KIND_COMPRESSED)
				j++;	/* its diffs: one chain */
			l[n] = compressed_layer(path + i, rem + i, (unsigned)(j - i), i == 0, o->verify);
			memset(rem + i, 0, (j - i) * sizeof(*rem));	/* taken */
			break;
		}
		if (!l[n])
			goto out;
		sz = uffd_source_length(l[n]);
		if (!i) {
			*size = sz;
		} else if (sz != *size) {
			serve_fail(EXIT_SETUP, "the layer %s holds %llu bytes, the snapshot %s %llu; a diff has the size of the snapshot it applies to",
				   path[i], (unsigned long long)sz, o->memory, (unsigned long long)*size);
			n++;
			goto out;
		}
	}
	if (n == 1) {
		src = l[0];
		l[0] = NULL;
		goto out;
	}
	if (uffd_source_layered(&src, l, (unsigned)n, NULL))
		serve_fail(EXIT_SETUP, "cannot layer the snapshot files: %s", uffd_last_error());
out:
	for (i = 0; i < n; i++)
		uffd_source_unref(l[i]);
	for (i = 0; i < nfiles; i++)
		uffd_source_unref(rem[i]);
	return src;
}
