/* SPDX-License-Identifier: MIT */
/*
 * Where the guest's bytes come from (uffd-serve --memory and --layer): each
 * snapshot file opened and checked before any VM connects, as the page
 * source of its kind, and the layers stacked into one source.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve.h"

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

/* The file source of one snapshot file (a Diff layer's holes fall through); NULL after printing why. */
static struct uffd_source *file_layer(const char *what, const char *path, bool diff, uint64_t *size)
{
	struct uffd_source_file_opts fo = { .size = sizeof(fo), .flags = diff ? UFFD_SOURCE_FILE_DIFF : 0,
					    .name = path };
	struct uffd_source *src = NULL;
	int fd = open_snapshot(what, path, size);

	if (fd < 0)
		return NULL;
	if (uffd_source_file(&src, fd, &fo))
		serve_fail(EXIT_SETUP, "cannot read the %s %s: %s", what, path, uffd_last_error());
	close(fd);	/* the source has its own */
	return src;
}

/*
 * Where the guest's bytes come from, checked before any VM connects: the
 * memory file, or it and its Diff layers (each readable, each of its
 * size; their holes found once, here). NULL after printing one line.
 */
struct uffd_source *open_source(const struct serve_opts *o, uint64_t *size)
{
	struct uffd_source *l[64] = { NULL }, *src = NULL;
	size_t n = 0;
	uint64_t sz;

	if (!(l[n++] = file_layer("snapshot", o->memory, false, size)))
		return NULL;
	for (size_t i = 0; i < o->nlayers; i++, n++) {
		if (!(l[n] = file_layer("layer", o->layers[i], true, &sz)))
			goto out;
		if (sz != *size) {
			serve_fail(EXIT_SETUP, "the layer %s is %llu bytes, the snapshot %s %llu; a Diff snapshot's memory file has the size of the one it applies to",
				   o->layers[i], (unsigned long long)sz, o->memory, (unsigned long long)*size);
			n++;
			goto out;
		}
	}
	if (n == 1)
		return l[0];
	if (uffd_source_layered(&src, l, (unsigned)n, NULL))
		serve_fail(EXIT_SETUP, "cannot layer the snapshot files: %s", uffd_last_error());
out:
	for (size_t i = 0; i < n; i++)
		uffd_source_unref(l[i]);
	return src;
}
