/* SPDX-License-Identifier: MIT */
/*
 * handoff-handler: serves every page fault of a vmm process (handoff-vmm)
 * from a snapshot file, as the page-fault handler of a VM restore does.
 *
 * It writes the snapshot (each 8-byte word a function of its offset, see
 * ho_word()), maps it read-only, listens on a Unix socket and receives the
 * vmm's userfaultfd with its region table (uffd_handoff_recv()); it serves
 * until the vmm exits -- normally or killed -- which the vmm's pidfd tells,
 * then checks that it holds no more descriptors than when it started.
 *
 *   anon/COPY    each region gets the snapshot as its page source
 *                (uffd_region_set_source()); the fault handler only widens
 *                the fault to its 64 KiB window (fault-around) and the loop
 *                copies it, zero pages where the vmm gave pages back,
 *                skipping pages already there.
 *   memfd/MINOR  the vmm's memfds came along: the handler writes the window
 *                into their page cache (uffd_region_populate()) and maps it
 *                into the vmm with UFFDIO_CONTINUE.
 *
 * --baseline serves the same vmm by hand, as most handlers are written
 * today (baseline.c): poll, read, one ioctl per fault, no fault-around.
 *
 * usage: handoff-handler --socket PATH --snapshot FILE [--mib N] [--baseline]
 * Prints one "HANDLER key=value..." line; exits 1 on any failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uffd.h>

#include "handler.h"
#include "handoff.h"

#define PROG "handoff-handler"

/* ---- serving with libuffd: begin ---- */
#define AROUND (64u << 10)	/* fault-around window, bytes */

enum page_state { EMPTY, FILLED, GONE };

struct served_region {
	struct uffd_region *r;
	const unsigned char *src;	/* its part of the snapshot */
	unsigned char *state;		/* memfd/MINOR: enum page_state per page */
	struct lib *l;
};

struct lib {
	struct served_region *g;
	size_t n;
	uint64_t exit_wall_us, owner_gone, continues;
};

/* The aligned window of AROUND bytes (at least a page) holding the fault, inside its region. */
static void window(const struct uffd_fault *f, uint64_t *lo, uint64_t *hi)
{
	uint64_t w = AROUND > f->len ? AROUND : f->len, len = uffd_region_length(f->region);

	*lo = f->offset & ~(w - 1);
	*hi = *lo + w < len ? *lo + w : len;
}

/* anon/COPY: widen; the loop copies the window from the source (zeros where given back). */
static int copy_around(void *ctx, struct uffd_fault *f)
{
	uint64_t lo, hi;

	(void)ctx;
	window(f, &lo, &hi);
	f->addr = (char *)f->addr - (f->offset - lo);
	f->len = hi - lo;
	return UFFD_RESOLVE;
}

/*
 * memfd/MINOR: the page is not in the page cache (a MISSING fault): write
 * the window's empty pages into it from the snapshot and map the window
 * with CONTINUE. Pages the vmm gave back are left out: they stay zero.
 */
static int fill_around(void *ctx, struct uffd_fault *f)
{
	struct served_region *g = ctx;
	size_t ps = f->len;
	uint64_t lo, hi, a = f->offset, b = f->offset + ps;
	int err = 0;

	if (g->state[a / ps] == GONE)
		return UFFD_RESOLVE;	/* given back: a zero page */
	window(f, &lo, &hi);
	while (a > lo && g->state[a / ps - 1] != GONE)
		a -= ps;
	while (b < hi && g->state[b / ps] != GONE)
		b += ps;
	for (uint64_t o = a, e; o < b && !err; o = e + ps) {
		for (e = o; e < b && g->state[e / ps] == EMPTY; e += ps)
			;
		if (e > o && !(err = uffd_region_populate(g->r, o, g->src + o, e - o, 0)))
			memset(g->state + o / ps, FILLED, (e - o) / ps);
	}
	if (!err) {
		err = uffd_region_continue(g->r, a, b - a, UFFD_SKIP_EXISTING, NULL);
		g->l->continues++;
	}
	if (err == -ESRCH)	/* the vmm is gone: nothing left to serve */
		g->l->owner_gone++;
	return err == -EAGAIN ? UFFD_RETRY : err && err != -ESRCH ? err : UFFD_HANDLED;
}

/* memfd/MINOR: pages the vmm gave back (MADV_REMOVE) are never filled again. */
static void on_event(void *ctx, struct uffd *u, const struct uffd_event *ev)
{
	struct lib *l = ctx;
	uintptr_t s = (uintptr_t)ev->remove.start, e = s + ev->remove.len;

	(void)u;
	for (size_t i = 0; ev->type == UFFD_EV_REMOVE && i < l->n; i++) {
		struct served_region *g = &l->g[i];
		uintptr_t base = (uintptr_t)uffd_region_base(g->r), ps = uffd_region_page_size(g->r);
		uintptr_t lo = s > base ? s : base, hi = e < base + uffd_region_length(g->r) ?
			   e : base + uffd_region_length(g->r);

		if (g->state && lo < hi)
			memset(g->state + (lo - base) / ps, GONE, (hi - lo + ps - 1) / ps);
	}
}

static void on_owner_exit(void *ctx, struct uffd *u)
{
	(void)u;
	((struct lib *)ctx)->exit_wall_us = ho_wall_us();
}

static int prepare(struct lib *l, struct uffd_handoff *h, const unsigned char *snap, bool minor)
{
	uint64_t off = 0;

	l->n = h->nregions;
	if (!(l->g = calloc(l->n, sizeof(*l->g))))
		return -ENOMEM;
	for (size_t i = 0; i < l->n; i++) {
		struct served_region *g = &l->g[i];
		size_t len = uffd_region_length(h->regions[i]);

		*g = (struct served_region){ h->regions[i], snap + off, NULL, l };
		off += len;
		if (minor && !(g->state = calloc(len / uffd_region_page_size(g->r), 1)))
			return -ENOMEM;
		if (!minor && uffd_region_set_source(g->r, g->src, len))
			return -EINVAL;
	}
	return 0;
}

int serve_libuffd(struct uffd_handoff *h, const unsigned char *snap, struct ho_served *s)
{
	bool minor = uffd_region_fd(h->regions[0]) >= 0;
	struct lib l = { 0 };
	/*
	 * memfd/MINOR reads one message at a time: the vmm's hole punch goes on
	 * as soon as its REMOVE is read, so a fault read in the same batch and
	 * handled first could write snapshot pages back into the hole. One at a
	 * time, a REMOVE is read only after every earlier fault's pages are in.
	 */
	struct uffd_loop_opts lo = { .size = sizeof(lo), .batch = minor ? 1 : 0 };
	struct uffd_watch_opts wo = { .size = sizeof(wo), .event = on_event, .owner_fd = h->pidfd,
				      .flags = UFFD_WATCH_OWNER | UFFD_WATCH_STOP_LOOP,
				      .owner_exit = on_owner_exit };
	struct uffd_handlers hh = { .missing = minor ? fill_around : copy_around };
	struct uffd_loop_counters c = { .size = sizeof(c) };
	struct uffd_loop *loop = NULL;
	int err = prepare(&l, h, snap, minor);

	if (!err)
		err = uffd_loop_new(&loop, &lo);
	if (!err)
		err = uffd_loop_add_opts(loop, h->uffd, NULL, &l, &wo);
	for (size_t i = 0; i < l.n && !err; i++)
		err = uffd_loop_add_region(loop, l.g[i].r, &hh, &l.g[i]);
	if (!err)
		err = uffd_loop_run(loop);	/* until the vmm exits */
	if (err)
		ex_fail(PROG, "serving the vmm", err);
	if (loop && !uffd_loop_counters(loop, &c)) {
		*s = (struct ho_served){ c.faults_missing + c.faults_minor, c.faults_minor,
					 c.resolve_ioctls + l.continues, c.errors, c.owner_gone + l.owner_gone,
					 l.exit_wall_us };
		uffd_loop_remove(loop, h->uffd);
	}
	uffd_loop_free(loop);
	for (size_t i = 0; i < l.n; i++)
		free(l.g[i].state);
	free(l.g);
	return err ? 1 : 0;
}
/* ---- serving with libuffd: end ---- */

/* Writes the snapshot file and maps it read-only. */
static const unsigned char *make_snapshot(const char *path, size_t len)
{
	uint64_t buf[8192];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	void *p = MAP_FAILED;

	if (fd < 0)
		return NULL;
	for (uint64_t off = 0; off < len; off += sizeof(buf)) {
		for (size_t w = 0; w < 8192; w++)
			buf[w] = ho_word(off + 8 * w);
		if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
			goto out;
	}
	p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
out:
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

/* Listens on path and accepts one vmm. */
static int accept_vmm(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), s = -1;

	if (l < 0 || strlen(path) >= sizeof(a.sun_path))
		goto out;
	strcpy(a.sun_path, path);
	unlink(path);
	if (!bind(l, (struct sockaddr *)&a, sizeof(a)) && !listen(l, 1))
		s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	unlink(path);
out:
	if (l >= 0)
		close(l);
	return s;
}

static void usage(void)
{
	fprintf(stderr, "usage: " PROG " --socket PATH --snapshot FILE [--mib N] [--baseline]\n"
		"  N: guest memory in MiB, as the vmm's (default 64)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int fds_start = ho_count_fds(), sock, err = 0, rc = 1;
	const char *path = NULL, *snap_path = NULL, *val;
	const unsigned char *snap;
	struct uffd_handoff *h = NULL;
	struct ho_served s = { 0 };
	uint64_t total = 0, stop_wall_us;
	unsigned mib = 64;
	bool baseline = false;

	for (int i = 1; i < argc; i++) {
		if ((val = ex_opt(argc, argv, &i, "--socket")))
			path = val;
		else if ((val = ex_opt(argc, argv, &i, "--snapshot")))
			snap_path = val;
		else if ((val = ex_opt(argc, argv, &i, "--mib")))
			mib = (unsigned)ex_count(PROG, "--mib", val, 8, 4096);
		else if (!strcmp(argv[i], "--baseline"))
			baseline = true;
		else
			usage();
	}
	if (!path || !snap_path)
		usage();
	if (!(snap = make_snapshot(snap_path, (size_t)mib << 20)))
		return ex_fail(PROG, "writing the snapshot", -errno);
	if ((sock = accept_vmm(path)) < 0)
		return ex_fail(PROG, "accepting the vmm", -errno);
	if ((err = uffd_handoff_recv(sock, NULL, &h))) {
		ex_fail(PROG, "uffd_handoff_recv", err);
		goto out;
	}
	for (size_t i = 0; i < h->nregions; i++)
		total += uffd_region_length(h->regions[i]);
	if (total > (uint64_t)mib << 20 || !h->nregions || h->pidfd < 0) {
		fprintf(stderr, PROG ": %zu regions of %llu bytes from pid %d (pidfd %d): not a vmm of "
			"this snapshot\n", h->nregions, (unsigned long long)total, (int)h->pid, h->pidfd);
		goto out;
	}
	rc = (baseline ? serve_baseline : serve_libuffd)(h, snap, &s);
out:
	stop_wall_us = ho_wall_us();
	uffd_handoff_free(h);
	close(sock);
	munmap((void *)snap, (size_t)mib << 20);
	printf("HANDLER serving=%s faults=%llu minor=%llu ioctls=%llu errors=%llu owner_gone=%llu "
	       "owner_exit_wall_us=%llu stop_wall_us=%llu fds_start=%d fds_end=%d\n",
	       baseline ? "hand-written" : "libuffd", (unsigned long long)s.faults,
	       (unsigned long long)s.minor, (unsigned long long)s.ioctls,
	       (unsigned long long)s.errors, (unsigned long long)s.owner_gone,
	       (unsigned long long)s.exit_wall_us, (unsigned long long)stop_wall_us,
	       fds_start, ho_count_fds());
	return rc || s.errors || ho_count_fds() != fds_start;
}
