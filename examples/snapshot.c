/* SPDX-License-Identifier: MIT */
/*
 * Live snapshot with synchronous write-protect, as QEMU's background
 * snapshot (savevm with background-snapshot) does it.
 *
 * Writer threads keep updating a memory image (a memfd region). To take a
 * snapshot the whole region is write-protected at once
 * (uffd_region_writeprotect); from then on:
 *
 *  - the saver thread walks the pages in order, writes each to the
 *    snapshot file and un-protects it;
 *  - a writer writing a page not saved yet takes a write-protect fault.
 *    The loop's wp handler saves that page first and returns UFFD_RESOLVE:
 *    the loop un-protects it and wakes the writer. If the saver is saving
 *    that very page the handler returns UFFD_DEFER and the saver's
 *    un-protect wakes the writer.
 *
 * Who saves a page is decided by one compare-and-swap on its state, so
 * every page is saved exactly once, before any write after the snapshot
 * point reaches it. For checking only, the writers are paused while the
 * region is protected and a reference copy is taken; at the end the file
 * must equal that copy, and no write may have been lost.
 *
 * usage: snapshot [--mib N] [--writers N] [--out FILE] [--summary]
 *        (without --out the snapshot goes to a temporary file, removed after)
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uffd.h>

#include "common.h"

#define PROG "snapshot"
#define SAVE_BATCH 16		/* pages the saver writes and un-protects at once */
#define MAX_WRITERS 64

enum page_state { TODO, BUSY, SAVED };

struct snap {
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *loop;
	uint64_t *mem;		/* the base view */
	size_t ps, words;
	uint64_t pages;
	int fd;			/* the snapshot file */
	_Atomic unsigned char *state;
	atomic_uint *writes;	/* per page, by the writers */
	atomic_bool active;	/* between protect and the last page saved */
	atomic_bool pause, stop;
	atomic_uint paused;
	atomic_ulong total_writes, by_saver, by_fault, save_errors;
};

static int save(struct snap *s, uint64_t p, uint64_t n)
{
	size_t len = n * s->ps;
	const char *src = (const char *)s->mem + p * s->ps;

	for (size_t done = 0; done < len;) {
		ssize_t k = pwrite(s->fd, src + done, len - done, (off_t)(p * s->ps + done));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			atomic_fetch_add(&s->save_errors, 1);
			return k ? -errno : -EIO;
		}
		done += (size_t)k;
	}
	return 0;
}

static bool claim(struct snap *s, uint64_t p)
{
	unsigned char todo = TODO;

	return atomic_compare_exchange_strong(&s->state[p], &todo, BUSY);
}

/* A write to a protected page: save it first. */
static int on_wp(void *ctx, struct uffd_fault *f)
{
	struct snap *s = ctx;
	uint64_t p = f->offset / s->ps;
	int err;

	if (!claim(s, p))	/* saved already, or the saver has it: its un-protect wakes us */
		return atomic_load(&s->state[p]) == SAVED ? UFFD_RESOLVE : UFFD_DEFER;
	err = save(s, p, 1);
	atomic_store(&s->state[p], SAVED);
	atomic_fetch_add(&s->by_fault, 1);
	return err ? err : UFFD_RESOLVE;	/* the loop un-protects it and wakes the writer */
}

/* The saver: runs of pages it claims are saved and un-protected together. */
static void *saver(void *arg)
{
	struct snap *s = arg;
	int err = 0;

	for (uint64_t p = 0; p < s->pages && !err;) {
		uint64_t n = 0;

		while (n < SAVE_BATCH && p + n < s->pages && claim(s, p + n))
			n++;
		if (!n) {
			p++;	/* the wp handler has it */
			continue;
		}
		err = save(s, p, n);
		for (uint64_t i = p; i < p + n; i++)
			atomic_store(&s->state[i], SAVED);
		atomic_fetch_add(&s->by_saver, n);
		if (!err)
			err = uffd_region_writeprotect(s->r, p * s->ps, n * s->ps, false, 0);
		p += n;
	}
	if (err)
		ex_fail(PROG, "saving", err);
	/* Pages the handler was saving when we passed them. */
	for (uint64_t p = 0; p < s->pages; p++)
		while (atomic_load(&s->state[p]) != SAVED)
			;
	return (void *)(intptr_t)err;
}

struct writer {
	struct snap *s;
	uint64_t seed;
	struct ex_lat pauses;	/* writes to pages not saved yet */
};

/* Updates a random page: its first word counts the writes, another word changes. */
static void *writer(void *arg)
{
	struct writer *w = arg;
	struct snap *s = w->s;

	while (!atomic_load_explicit(&s->stop, memory_order_relaxed)) {
		uint64_t p = ex_rand(&w->seed) % s->pages, *pg = s->mem + p * s->words;
		uint64_t x = ex_rand(&w->seed), t0;
		bool cold;

		if (atomic_load_explicit(&s->pause, memory_order_relaxed)) {
			atomic_fetch_add(&s->paused, 1);
			while (atomic_load(&s->pause))
				;
			atomic_fetch_sub(&s->paused, 1);
			continue;
		}
		cold = atomic_load_explicit(&s->active, memory_order_relaxed) &&
		       atomic_load_explicit(&s->state[p], memory_order_relaxed) != SAVED;
		t0 = ex_now_ns();
		__atomic_fetch_add(&pg[0], 1, __ATOMIC_RELAXED);
		pg[1 + x % (s->words - 1)] = x;
		if (cold)
			ex_lat_add(&w->pauses, ex_now_ns() - t0);
		atomic_fetch_add_explicit(&s->writes[p], 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&s->total_writes, 1, memory_order_relaxed);
	}
	return NULL;
}

static int setup(struct snap *s, size_t mib)
{
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = mib << 20, .fd = -1,
				       .modes = UFFDIO_REGISTER_MODE_WP, .name = "vm-ram" };
	struct uffd_handlers h = { .wp = on_wp };
	/* A page that cannot be saved kills the writer (SIGBUS) rather than hanging it. */
	struct uffd_loop_opts lo = { .size = sizeof(lo), .flags = UFFD_LOOP_POISON_ON_ERROR };
	uint64_t *page;
	int err;

	if ((err = uffd_open(&s->u, NULL)))
		return ex_fail(PROG, "uffd_open", err);
	if ((err = uffd_region_create(s->u, &ro, &s->r)))
		return ex_fail(PROG, "uffd_region_create", err);
	s->mem = uffd_region_base(s->r);
	s->ps = uffd_region_page_size(s->r);
	s->words = s->ps / 8;
	s->pages = ro.length / s->ps;
	s->state = calloc(s->pages, 1);
	s->writes = calloc(s->pages, sizeof(*s->writes));
	page = malloc(s->ps);
	if (!s->state || !s->writes || !page)
		return ex_fail(PROG, "calloc", -ENOMEM);
	for (uint64_t p = 0; p < s->pages && !err; p++) {
		ex_fill_page(page, s->ps, 0x5a95, p);
		page[0] = 0;	/* the write counter */
		err = uffd_region_populate(s->r, p * s->ps, page, s->ps, UFFD_POPULATE_MAP);
	}
	free(page);
	if (err)
		return ex_fail(PROG, "uffd_region_populate", err);
	if ((err = uffd_loop_new(&s->loop, &lo)) ||
	    (err = uffd_loop_add_region(s->loop, s->r, &h, s)) ||
	    (err = uffd_loop_start(s->loop, 1)))
		return ex_fail(PROG, "starting the loop", err);
	return 0;
}

/* The snapshot point: writers paused, region protected, reference copied. */
static int protect(struct snap *s, unsigned nwriters, char *ref)
{
	int err;

	atomic_store(&s->pause, true);
	while (atomic_load(&s->paused) < nwriters)
		;
	err = uffd_region_writeprotect(s->r, 0, s->pages * s->ps, true, 0);
	atomic_store(&s->active, true);
	memcpy(ref, s->mem, s->pages * s->ps);
	atomic_store(&s->pause, false);
	return err ? ex_fail(PROG, "uffd_region_writeprotect", err) : 0;
}

/* The file equals the reference; every page's write counter saw every write. */
static uint64_t verify(struct snap *s, const char *ref)
{
	char *buf = malloc(s->ps);
	uint64_t bad = 0;

	if (!buf)
		return s->pages;
	for (uint64_t p = 0; p < s->pages; p++) {
		bad += pread(s->fd, buf, s->ps, (off_t)(p * s->ps)) != (ssize_t)s->ps ||
		       memcmp(buf, ref + p * s->ps, s->ps) ||
		       s->mem[p * s->words] != atomic_load(&s->writes[p]);
	}
	free(buf);
	return bad;
}

static int open_out(const char *out, char *tmpl, size_t size)
{
	const char *dir = getenv("TMPDIR");
	int fd;

	if (out)
		return open(out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	snprintf(tmpl, size, "%s/uffd-snapshot-XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkostemp(tmpl, O_CLOEXEC);
	if (fd >= 0)
		unlink(tmpl);
	return fd;
}

int main(int argc, char **argv)
{
	struct snap s = { .fd = -1 };
	struct writer w[MAX_WRITERS];
	pthread_t wt[MAX_WRITERS], st;
	struct ex_lat lat = { 0 };
	size_t mib = 64;
	unsigned nw = 2;
	const char *out = NULL, *v;
	char tmpl[4096], *ref;
	bool summary = false, ok;
	uint64_t t0, ns, during, bad;
	void *serr;
	int err;

	for (int i = 1; i < argc; i++) {
		if ((v = ex_opt(argc, argv, &i, "--mib")))
			mib = ex_count(PROG, "--mib", v, 1, 1 << 16);
		else if ((v = ex_opt(argc, argv, &i, "--writers")))
			nw = (unsigned)ex_count(PROG, "--writers", v, 1, MAX_WRITERS);
		else if ((v = ex_opt(argc, argv, &i, "--out")))
			out = v;
		else if (!strcmp(argv[i], "--summary"))
			summary = true;
		else {
			fprintf(stderr, "usage: " PROG " [--mib N] [--writers N] [--out FILE] [--summary]\n");
			return 2;
		}
	}
	if ((err = setup(&s, mib)))
		return err;
	s.fd = open_out(out, tmpl, sizeof(tmpl));
	ref = malloc(s.pages * s.ps);
	if (s.fd < 0 || !ref)
		return ex_fail(PROG, out ? out : "creating the snapshot file", s.fd < 0 ? -errno : -ENOMEM);
	for (unsigned i = 0; i < nw; i++) {
		w[i] = (struct writer){ .s = &s, .seed = 0x77ull * (i + 1) };
		pthread_create(&wt[i], NULL, writer, &w[i]);
	}
	while (atomic_load(&s.total_writes) < s.pages / 2)	/* the workload is under way */
		;
	if ((err = protect(&s, nw, ref)))
		return err;
	during = atomic_load(&s.total_writes);
	t0 = ex_now_ns();
	pthread_create(&st, NULL, saver, &s);
	pthread_join(st, &serr);
	ns = ex_now_ns() - t0;
	atomic_store(&s.active, false);
	during = atomic_load(&s.total_writes) - during;
	atomic_store(&s.stop, true);
	for (unsigned i = 0; i < nw; i++) {
		pthread_join(wt[i], NULL);
		ex_lat_merge(&lat, &w[i].pauses);
	}
	bad = verify(&s, ref);
	ok = !bad && !serr && !atomic_load(&s.save_errors);
	if (summary) {
		char what[160], fig[96];

		snprintf(what, sizeof(what), "%zu MiB saved live: %lu pages by saver, %lu on write",
			 mib, atomic_load(&s.by_saver), atomic_load(&s.by_fault));
		snprintf(fig, sizeof(fig), "write pause p50 %.0f us p99 %.0f us, %.0f ms",
			 ex_lat_pct_us(&lat, 50), ex_lat_pct_us(&lat, 99), ns / 1e6);
		ex_summary(PROG, ok, what, fig);
	} else {
		printf("memory            %zu MiB, %llu pages, %u writer threads\n", mib,
		       (unsigned long long)s.pages, nw);
		printf("snapshot          %.1f ms: %lu pages saved by the saver, %lu by the wp handler\n",
		       ns / 1e6, atomic_load(&s.by_saver), atomic_load(&s.by_fault));
		printf("writers           %llu writes during the snapshot, %zu to pages not saved yet:\n"
		       "                  pause p50 %.1f us, p99 %.1f us\n",
		       (unsigned long long)during, lat.n, ex_lat_pct_us(&lat, 50), ex_lat_pct_us(&lat, 99));
		printf("verified          %s (%llu pages differ from memory at the snapshot point or lost writes)\n",
		       ok ? "yes" : "NO", (unsigned long long)bad);
	}
	uffd_loop_free(s.loop);
	uffd_region_destroy(s.r);
	uffd_close(s.u);
	close(s.fd);
	free(ref);
	free(s.state);
	free(s.writes);
	ex_lat_free(&lat);
	return !ok;
}
