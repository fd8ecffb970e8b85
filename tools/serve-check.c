/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: what can be checked before any VM connects. A trace that is
 * missing, damaged or made for other memory is found now, not once a VM
 * waits on its first fault: it is dropped with a warning and the VM gets
 * demand paging. The directory --record writes into must take a file.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uffd.h>

#include "serve.h"

#define TRACE_MAGIC "UFFDTRC"	/* and a NUL: libuffd-trace(5) */
#define TRACE_HEADER 32
#define TRACE_REGION 16
#define MAX_TRACE_REGIONS 4096
#define FAKE_BASE (1ull << 40)	/* where the stand-in regions "are": nothing is mapped there */
#define FAKE_ALIGN (1ull << 30)

struct trace_layout {
	uint32_t n;
	uint64_t len[MAX_TRACE_REGIONS], ps[MAX_TRACE_REGIONS];
};

/* The region table of the trace at path (the rest is the library's to check): 0, or why in err. */
static int read_layout(const char *path, struct trace_layout *t, char *err, size_t errlen)
{
	unsigned char hdr[TRACE_HEADER], d[TRACE_REGION];
	uint32_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = -1;

	if (fd < 0) {
		snprintf(err, errlen, "cannot open it: %s", strerror(errno));
		return -1;
	}
	if (read(fd, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr) || memcmp(hdr, TRACE_MAGIC, 8)) {
		snprintf(err, errlen, "not a libuffd trace (no 32-byte header with its magic)");
		goto out;
	}
	memcpy(&n, hdr + 12, 4);
	n = le32toh(n);
	if (!n || n > MAX_TRACE_REGIONS) {
		snprintf(err, errlen, "it describes %u regions; 1 to %u are possible", n, MAX_TRACE_REGIONS);
		goto out;
	}
	for (t->n = 0; t->n < n; t->n++) {
		if (read(fd, d, sizeof(d)) != (ssize_t)sizeof(d)) {
			snprintf(err, errlen, "truncated in its region descriptors");
			goto out;
		}
		memcpy(&t->len[t->n], d, 8);
		memcpy(&t->ps[t->n], d + 8, 8);
		t->len[t->n] = le64toh(t->len[t->n]);
		t->ps[t->n] = le64toh(t->ps[t->n]);
	}
	rc = 0;
out:
	close(fd);
	return rc;
}

static int lib_why(char *err, size_t errlen, const char *what, int e)
{
	snprintf(err, errlen, "%s: %s (%s)", what, strerror(-e), uffd_last_error());
	return -1;
}

/*
 * The trace loaded, as the library loads it at the handshake, into a
 * restore of stand-in regions of its own layout laid end to end in the
 * snapshot (as Firecracker lays out guest memory): every check of
 * libuffd-trace(5), the checksum included, and the snapshot must hold
 * the regions. Nothing is registered: the regions are only declared.
 */
static int load_against_snapshot(const char *path, const struct trace_layout *t, struct uffd_source *src,
				 char *err, size_t errlen)
{
	struct uffd_restore_opts ro = { .size = sizeof(ro) };
	struct uffd_region **r = calloc(t->n, sizeof(*r));
	struct uffd_restore *rs = NULL;
	struct uffd *u = NULL;
	uint64_t addr = FAKE_BASE, off = 0;
	int e, rc = -1;

	if (!r)
		return lib_why(err, errlen, "checking it", -ENOMEM);
	if ((e = uffd_open(&u, NULL)) || (e = uffd_restore_new(&rs, &ro))) {
		lib_why(err, errlen, "checking it", e);
		goto out;
	}
	for (uint32_t i = 0; i < t->n; i++) {
		struct uffd_foreign_opts fo = { .size = sizeof(fo), .owner_addr = addr, .length = t->len[i],
						.page_size = t->ps[i], .modes = UFFDIO_REGISTER_MODE_MISSING,
						.fd = -1 };

		if ((e = uffd_region_create_foreign(u, &fo, &r[i]))) {
			lib_why(err, errlen, "its region table", e);
			goto out;
		}
		if ((e = uffd_restore_add_region_source(rs, r[i], src, off))) {
			lib_why(err, errlen, "its regions against the snapshot", e);
			goto out;
		}
		off += t->len[i];
		addr += (t->len[i] + FAKE_ALIGN - 1) & ~(FAKE_ALIGN - 1);
	}
	if ((e = uffd_restore_load_trace(rs, path)))
		lib_why(err, errlen, "loading it", e);
	else
		rc = 0;
out:
	uffd_restore_free(rs);
	for (uint32_t i = 0; i < t->n; i++)
		uffd_region_destroy(r[i]);
	free(r);
	uffd_close(u);
	return rc;
}

void check_traces(struct serve_opts *o, struct uffd_source *src, uint64_t snap_size)
{
	struct trace_layout *t = malloc(sizeof(*t));
	size_t kept = 0;

	for (size_t i = 0; i < o->nreplay; i++) {
		char err[512] = "out of memory";
		uint64_t total = 0;
		bool ok = t && !read_layout(o->replay[i], t, err, sizeof(err));

		for (uint32_t k = 0; ok && k < t->n; k++)
			total += t->len[k];
		if (ok && total > snap_size) {
			snprintf(err, sizeof(err), "it was recorded for %llu bytes of memory, the snapshot has %llu",
				 (unsigned long long)total, (unsigned long long)snap_size);
			ok = false;
		}
		if (ok)
			ok = !load_against_snapshot(o->replay[i], t, src, err, sizeof(err));
		if (ok)
			o->replay[kept++] = o->replay[i];
		else
			serve_fail(0, "warning: the trace %s cannot be used: %s; VMs are served without it (demand paging)",
				   o->replay[i], err);
	}
	o->nreplay = kept;
	free(t);
}

int check_outputs(const struct serve_opts *o)
{
	char dir[PATH_MAX], probe[PATH_MAX + 32];
	const char *slash;
	int fd;

	if (!o->record)
		return 0;
	slash = strrchr(o->record, '/');
	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else
		snprintf(dir, sizeof(dir), "%.*s", slash == o->record ? 1 : (int)(slash - o->record), o->record);
	/* The trace is written as a temporary file in its directory, then renamed: try exactly that. */
	snprintf(probe, sizeof(probe), "%s/.uffd-serve-probe-XXXXXX", dir);
	fd = mkostemp(probe, O_CLOEXEC);
	if (fd < 0)
		return serve_fail(EXIT_SETUP, "--record %s: cannot create a file in %s: %s; the trace could not be written at the end",
				  o->record, dir, strerror(errno));
	close(fd);
	unlink(probe);
	return 0;
}
