/* SPDX-License-Identifier: MIT */
/*
 * region.c: memfd regions with an alias view, on shmem and hugetlbfs.
 * Faults are read with uffd_read_events by a handler thread and counted;
 * the memory is touched from another thread.
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define PM_UFFD_WP (1ull << 57)
#define PM_PRESENT (1ull << 63)
#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define MINOR UFFDIO_REGISTER_MODE_MINOR
#define WP UFFDIO_REGISTER_MODE_WP

enum mem { SHMEM, HUGETLB };

/* The region page size for m, or 0 with the reason in *why. */
static size_t mem_page_size(enum mem m, const char **why)
{
	return m == SHMEM ? harness_page_size() : harness_hugepages(8, why);
}

#define NEED_MEM(m, ps)                                                    \
	do {                                                               \
		const char *why_ = "";                                     \
		if (!((ps) = mem_page_size((m), &why_)))                   \
			SKIP_TEST("hugetlb: %s", why_);                    \
	} while (0)

/* test_<what>_shmem and test_<what>_hugetlb: check_<what>(SHMEM / HUGETLB). */
#define MEM_TESTS(what)                                                    \
	START_TEST(test_##what##_shmem) { check_##what(SHMEM); }           \
	END_TEST                                                           \
	START_TEST(test_##what##_hugetlb) { check_##what(HUGETLB); }       \
	END_TEST

static struct uffd *open_default(void)
{
	struct uffd *u = NULL;

	ASSERT_OK(uffd_open(&u, NULL));
	return u;
}

static struct uffd_region *region_new(struct uffd *u, enum mem m, size_t len,
				      uint64_t modes, unsigned flags)
{
	struct uffd_region_opts o = {
		.size = sizeof(o), .length = len, .modes = modes, .fd = -1,
		.flags = flags | (m == HUGETLB ? UFFD_REGION_HUGETLB : 0),
	};
	struct uffd_region *r = NULL;

	ASSERT_OK(uffd_region_create(u, &o, &r));
	ck_assert_ptr_nonnull(r);
	return r;
}

static unsigned char pattern(size_t i, unsigned seed)
{
	return (unsigned char)(i * 7 + i / 4096 + seed);
}

static unsigned char *pattern_buf(size_t len, unsigned seed)
{
	unsigned char *p = malloc(len);

	ck_assert_ptr_nonnull(p);
	for (size_t i = 0; i < len; i++)
		p[i] = pattern(i, seed);
	return p;
}

static bool all_bytes(const unsigned char *p, size_t len, unsigned char v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return false;
	return true;
}

/*
 * ---- the fault handler thread ----
 * A failure is recorded for the main thread and the region unregistered
 * and woken, which releases the toucher: the test fails at once instead of
 * hanging.
 */

struct handler {
	struct uffd *u;
	struct uffd_region *r;
	atomic_bool stop;
	atomic_int faults[3];	/* by enum uffd_fault_kind */
	atomic_int errors;
	char error[512];
	/* settings, given in the initializer */
	bool flip;		/* MINOR: invert the page through the alias first */
	unsigned cont_flags;	/* MINOR: flags of uffd_region_continue */
	const unsigned char *fill; /* MISSING/MINOR: populate(MAP) from here */
	/* set by handler_run */
	unsigned char *zeros;	/* MISSING without fill: uffd_copy from here */
	void *thread;
};

static void handler_failed(struct handler *h, const char *what, int err)
{
	if (atomic_fetch_add(&h->errors, 1) == 0)
		snprintf(h->error, sizeof(h->error), "%s = %d: %s", what, err, uffd_last_error());
	uffd_unregister(h->u, uffd_region_base(h->r), uffd_region_length(h->r));
	uffd_wake(h->u, uffd_region_base(h->r), uffd_region_length(h->r));
}

static void flip_page(unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (unsigned char)~p[i];
}

static void handle_fault(struct handler *h, const struct uffd_fault *f)
{
	int err = 0;

	atomic_fetch_add(&h->faults[f->kind], 1);
	if (f->region != h->r || f->len != uffd_region_page_size(h->r)) {
		handler_failed(h, "fault outside the region or with the wrong length", -EINVAL);
		return;
	}
	if (f->kind == UFFD_FAULT_WP) {
		err = uffd_region_writeprotect(h->r, f->offset, f->len, false, 0);
	} else if (h->fill) {
		err = uffd_region_populate(h->r, f->offset, h->fill + f->offset, f->len,
					   UFFD_POPULATE_MAP);
	} else if (f->kind == UFFD_FAULT_MINOR) {
		if (h->flip)
			flip_page((unsigned char *)uffd_region_alias(h->r) + f->offset, f->len);
		err = uffd_region_continue(h->r, f->offset, f->len, h->cont_flags, NULL);
	} else {
		err = uffd_copy(h->u, f->addr, h->zeros, f->len, 0, NULL);
	}
	if (err)
		handler_failed(h, "resolving", err);
}

static void *handler_main(void *arg)
{
	struct handler *h = arg;
	struct pollfd p = { .fd = uffd_fd(h->u), .events = POLLIN };
	struct uffd_event ev[16];

	while (!atomic_load(&h->stop)) {
		int n;

		if (poll(&p, 1, 10) <= 0)
			continue;
		n = uffd_read_events(h->u, ev, 16);
		if (n < 0)
			handler_failed(h, "uffd_read_events", n);
		for (int i = 0; i < n; i++) {
			if (ev[i].type == UFFD_EV_FAULT)
				handle_fault(h, &ev[i].fault);
			else
				handler_failed(h, "unexpected event", (int)ev[i].type);
		}
	}
	return NULL;
}

/* Serves the faults of r from a new thread; h's settings are kept. */
static void handler_run(struct handler *h, struct uffd_region *r)
{
	h->r = r;
	h->u = uffd_region_uffd(r);
	/* UFFDIO_COPY wants a page-aligned source. */
	h->zeros = mmap(NULL, uffd_region_page_size(r), PROT_READ,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(h->zeros, MAP_FAILED);
	h->thread = harness_thread_start(handler_main, h);
}

static void handler_stop(struct handler *h)
{
	atomic_store(&h->stop, true);
	harness_thread_join(h->thread);
	munmap(h->zeros, uffd_region_page_size(h->r));
	ck_assert_msg(atomic_load(&h->errors) == 0, "handler: %s", h->error);
}

static int faults(struct handler *h, enum uffd_fault_kind k)
{
	return atomic_load(&h->faults[k]);
}

/* ---- the toucher thread: one access per base page ---- */

struct toucher {
	volatile unsigned char *p;
	size_t len;
	bool write;
	unsigned char val;
	unsigned sum;
};

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	size_t step = harness_page_size();

	for (size_t off = 0; off < t->len; off += step) {
		if (t->write)
			harness_store8(&t->p[off], t->val);
		else
			t->sum += harness_load8(&t->p[off]);
	}
	return NULL;
}

/* Touches [p, p+len) from another thread and waits for it. */
static void touch(void *p, size_t len, bool write, unsigned char val)
{
	struct toucher t = { .p = p, .len = len, .write = write, .val = val };

	harness_thread_join(harness_thread_start(toucher_main, &t));
}

/* ---- small facts about mappings ---- */

/* End of the /proc/self/maps line containing addr, and its permissions. */
static uintptr_t vma_end(const void *addr, char perms[5])
{
	FILE *f = fopen("/proc/self/maps", "re");
	unsigned long s, e;
	char line[512];
	uintptr_t end = 0;

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %4s", &s, &e, perms) == 3 &&
		    s <= (uintptr_t)addr && (uintptr_t)addr < e) {
			end = e;
			break;
		}
	fclose(f);
	return end;
}

static bool is_mapped(const void *p)
{
	char perms[5];

	return vma_end(p, perms) != 0;
}

/* Every base page of [p, p+len) has pagemap bit 57 set (or clear). */
static bool all_wp(const void *p, size_t len, bool set)
{
	for (size_t off = 0; off < len; off += harness_page_size())
		if (!!(harness_pagemap((const char *)p + off) & PM_UFFD_WP) != set)
			return false;
	return true;
}

/* Every base page of [p, p+len) is mapped: reading it cannot fault. */
static bool all_present(const void *p, size_t len)
{
	for (size_t off = 0; off < len; off += harness_page_size())
		if (!(harness_pagemap((const char *)p + off) & PM_PRESENT))
			return false;
	return true;
}

static long meminfo(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	long v = -1;
	size_t n = strlen(key);

	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	fclose(f);
	return v;
}

/* ---- a region of each memory kind, with its handle ---- */

struct fix {
	size_t ps, len;
	struct uffd *u;
	struct uffd_region *r;
	unsigned char *base;
	unsigned char *src;	/* len bytes of pattern(seed) */
};

/* Pages per region: enough to count faults, few huge pages. */
static unsigned pages_of(enum mem m)
{
	return m == SHMEM ? 16 : 4;
}

/*
 * A handle and a region of m for modes, or false (the skip recorded) when
 * the memory cannot be had.
 */
static bool fix_open(struct fix *f, enum mem m, uint64_t modes, unsigned flags,
		     unsigned seed)
{
	const char *why = "";

	memset(f, 0, sizeof(*f));
	f->ps = mem_page_size(m, &why);
	if (!f->ps) {
		harness_skip("hugetlb: %s", why);
		return false;
	}
	f->len = pages_of(m) * f->ps;
	f->u = open_default();
	f->r = region_new(f->u, m, f->len, modes, flags);
	f->base = uffd_region_base(f->r);
	f->src = pattern_buf(f->len, seed);
	return true;
}

static void fix_close(struct fix *f)
{
	uffd_region_destroy(f->r);
	uffd_close(f->u);
	free(f->src);
}

/* Touches the whole base view of r from a thread while h serves its faults. */
static void touch_served(struct handler *h, struct uffd_region *r, bool write,
			 unsigned char val)
{
	handler_run(h, r);
	touch(uffd_region_base(r), uffd_region_length(r), write, val);
	handler_stop(h);
}

static int all_faults(struct handler *h)
{
	return faults(h, UFFD_FAULT_MISSING) + faults(h, UFFD_FAULT_MINOR) +
	       faults(h, UFFD_FAULT_WP);
}

/* ---- base and alias ---- */

static void check_views(enum mem m)
{
	int fds = harness_count_fds(), fd;
	unsigned char *alias;
	size_t done = 0;
	char perms[5];
	struct fix f;

	if (!fix_open(&f, m, MISSING | MINOR, 0, 1))
		return;
	alias = uffd_region_alias(f.r);
	ck_assert_ptr_nonnull(alias);
	ck_assert_uint_eq(uffd_region_page_size(f.r), f.ps);
	ck_assert_uint_eq(uffd_region_length(f.r), f.len);
	ck_assert_ptr_eq(uffd_region_uffd(f.r), f.u);
	fd = uffd_region_fd(f.r);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
	ck_assert_uint_eq((uintptr_t)f.base % f.ps, 0);
	ck_assert_uint_eq((uintptr_t)alias % f.ps, 0);
	/* Two VMAs, a PROT_NONE gap of at least a page between them. */
	ck_assert_uint_eq(vma_end(f.base, perms), (uintptr_t)f.base + f.len);
	ck_assert_str_eq(perms, "rw-s");
	ck_assert_uint_eq(vma_end(alias, perms), (uintptr_t)alias + f.len);
	ck_assert_uint_ge((uintptr_t)alias, (uintptr_t)f.base + f.len + f.ps);
	vma_end(f.base + f.len, perms);
	ck_assert_str_eq(perms, "---p");

	/* Written through the alias, mapped into the base: the same bytes. */
	memcpy(alias, f.src, f.len);
	ASSERT_OK(uffd_region_continue(f.r, 0, f.len, 0, &done));
	ck_assert_uint_eq(done, f.len);
	ck_assert_mem_eq(f.base, f.src, f.len);
	f.base[f.ps + 1] = 0x77;
	ck_assert_uint_eq(alias[f.ps + 1], 0x77);
	alias[f.len - 1] = 0x99;
	ck_assert_uint_eq(f.base[f.len - 1], 0x99);

	fix_close(&f);
	ck_assert(!is_mapped(f.base));
	ck_assert(!is_mapped(alias));
	ck_assert_int_eq(harness_count_fds(), fds);
}

MEM_TESTS(views)

/* ---- populate ---- */

/* Populate without MAP, touch: one MINOR fault per page, no MISSING. */
static void check_populate_minor(enum mem m)
{
	struct handler h = { 0 };
	struct fix f;

	if (!fix_open(&f, m, MISSING | MINOR, 0, 2))
		return;
	ASSERT_OK(uffd_region_populate(f.r, 0, f.src, f.len, 0));
	ck_assert_mem_eq(uffd_region_alias(f.r), f.src, f.len);
	touch_served(&h, f.r, false, 0);
	ck_assert_int_eq(faults(&h, UFFD_FAULT_MINOR), (int)pages_of(m));
	ck_assert_int_eq(all_faults(&h), (int)pages_of(m));
	ck_assert_mem_eq(f.base, f.src, f.len);
	fix_close(&f);
}

MEM_TESTS(populate_minor)

/* Populate with MAP: no fault at all, whatever the modes. */
static void populate_map_no_fault(enum mem m, uint64_t modes, unsigned flags)
{
	struct handler h = { 0 };
	struct fix f;

	if (!fix_open(&f, m, modes, 0, 3))
		return;
	ASSERT_OK(uffd_region_populate(f.r, 0, f.src, f.len, flags));
	ck_assert(all_present(f.base, f.len));
	touch_served(&h, f.r, false, 0);
	ck_assert_mem_eq(f.base, f.src, f.len);
	if (flags & UFFD_MAP_WP)
		ck_assert(all_wp(f.base, f.len, true));
	else
		touch_served(&h, f.r, true, 0x42);
	ck_assert_int_eq(all_faults(&h), 0);
	fix_close(&f);
}

/* Threads blocked on faults are resolved by populate(MAP) from the handler. */
static void populate_map_wakes(enum mem m, uint64_t modes)
{
	struct handler h = { 0 };
	struct fix f;

	if (!fix_open(&f, m, modes, 0, 4))
		return;
	if (modes & MINOR)	/* old contents, for MINOR faults */
		ASSERT_OK(uffd_region_populate(f.r, 0, f.src, f.len, 0));
	h.fill = pattern_buf(f.len, 5);
	touch_served(&h, f.r, false, 0);
	ck_assert_int_eq(faults(&h, (modes & MINOR) ? UFFD_FAULT_MINOR : UFFD_FAULT_MISSING),
			 (int)pages_of(m));
	ck_assert_mem_eq(f.base, h.fill, f.len);
	free((void *)h.fill);
	fix_close(&f);
}

static void check_populate_map(enum mem m)
{
	int fds = harness_count_fds();

	populate_map_no_fault(m, MISSING | MINOR, UFFD_POPULATE_MAP);
	populate_map_no_fault(m, MINOR, UFFD_POPULATE_MAP);
	populate_map_no_fault(m, MISSING, UFFD_POPULATE_MAP);
	populate_map_no_fault(m, MISSING | WP, UFFD_POPULATE_MAP);
	populate_map_no_fault(m, MINOR | WP, UFFD_POPULATE_MAP | UFFD_MAP_WP);
	populate_map_no_fault(m, WP, UFFD_POPULATE_MAP | UFFD_MAP_WP);
	populate_map_wakes(m, MISSING | MINOR);
	populate_map_wakes(m, MISSING);
	ck_assert_int_eq(harness_count_fds(), fds);
}

MEM_TESTS(populate_map)

/* Without an alias view populate goes through the file or a temporary view. */
static void check_no_alias(enum mem m)
{
	int fds = harness_count_fds();
	struct fix f;

	if (!fix_open(&f, m, MISSING | MINOR, UFFD_REGION_NO_ALIAS, 6))
		return;
	ck_assert_ptr_null(uffd_region_alias(f.r));
	ASSERT_OK(uffd_region_populate(f.r, 0, f.src, f.len, UFFD_POPULATE_MAP));
	ck_assert(all_present(f.base, f.len));
	ck_assert_mem_eq(f.base, f.src, f.len);
	fix_close(&f);
	ck_assert_int_eq(harness_count_fds(), fds);
}

MEM_TESTS(no_alias)

/* ---- zap and discard ---- */

/* Zap all but the first page: MINOR faults again, the same contents. */
static void check_zap(enum mem m)
{
	struct handler h = { 0 };
	struct fix f;

	if (!fix_open(&f, m, MISSING | MINOR, 0, 7))
		return;
	ASSERT_OK(uffd_region_populate(f.r, 0, f.src, f.len, UFFD_POPULATE_MAP));
	ASSERT_OK(uffd_region_zap(f.r, f.ps, f.len - f.ps));
	ck_assert(all_present(f.base, f.ps));
	ck_assert(!(harness_pagemap(f.base + f.ps) & PM_PRESENT));
	touch_served(&h, f.r, false, 0);
	ck_assert_int_eq(faults(&h, UFFD_FAULT_MINOR), (int)pages_of(m) - 1);
	ck_assert_int_eq(all_faults(&h), (int)pages_of(m) - 1);
	ck_assert_mem_eq(f.base, f.src, f.len);
	fix_close(&f);
}

MEM_TESTS(zap)

/* Discard: MISSING faults, and the old bytes are gone from both views. */
static void check_discard(enum mem m)
{
	struct handler h = { 0 };
	struct fix f;

	if (!fix_open(&f, m, MISSING | MINOR, 0, 8))
		return;
	ASSERT_OK(uffd_region_populate(f.r, 0, f.src, f.len, UFFD_POPULATE_MAP));
	ASSERT_OK(uffd_region_discard(f.r, 0, f.len));
	ck_assert(!(harness_pagemap(f.base) & PM_PRESENT));
	touch_served(&h, f.r, false, 0);
	ck_assert_int_eq(faults(&h, UFFD_FAULT_MISSING), (int)pages_of(m));
	ck_assert_int_eq(all_faults(&h), (int)pages_of(m));
	ck_assert(all_bytes(f.base, f.len, 0));
	ck_assert(all_bytes(uffd_region_alias(f.r), f.len, 0));
	fix_close(&f);
}

MEM_TESTS(discard)

/* ---- the kernel selftests' minor-fault scenario, through the API ---- */

/*
 * Fill through the alias, touch every page from another thread, flip the
 * bytes in the handler through the alias and continue: every byte flipped,
 * one MINOR fault per page. With UFFD_MAP_WP the pages come back
 * write-protected, and a write is a WP fault.
 */
static void minor_scenario(enum mem m, uint64_t modes, unsigned cont_flags)
{
	struct handler h = { .flip = true, .cont_flags = cont_flags };
	bool wp = cont_flags & UFFD_MAP_WP;
	struct fix f;

	if (!fix_open(&f, m, modes, 0, 9))
		return;
	memcpy(uffd_region_alias(f.r), f.src, f.len);
	handler_run(&h, f.r);
	touch(f.base, f.len, false, 0);
	if (wp) {
		ck_assert(all_wp(f.base, f.len, true));
		touch(f.base + f.ps, 1, true, 0x5a);	/* one WP fault, then the write */
	}
	handler_stop(&h);
	ck_assert_int_eq(faults(&h, UFFD_FAULT_MINOR), (int)pages_of(m));
	ck_assert_int_eq(faults(&h, UFFD_FAULT_WP), wp ? 1 : 0);
	ck_assert_int_eq(all_faults(&h), (int)pages_of(m) + (wp ? 1 : 0));
	flip_page(f.src, f.len);
	if (wp)
		f.src[f.ps] = 0x5a;
	ck_assert_mem_eq(f.base, f.src, f.len);	/* one call: Check asserts are slow */
	if (wp) {
		ck_assert(all_wp(f.base, f.ps, true));
		ck_assert(all_wp(f.base + f.ps, f.ps, false));
	}
	fix_close(&f);
}

static void check_minor(enum mem m)
{
	minor_scenario(m, MISSING | MINOR, 0);
	minor_scenario(m, MINOR | WP, UFFD_MAP_WP);
}

MEM_TESTS(minor)

/* ---- write-protect markers survive a zap ---- */

static void check_wp_markers(enum mem m)
{
	struct handler h = { 0 };
	struct fix f;

	if (!fix_open(&f, m, MISSING | WP, 0, 10))
		return;
	ASSERT_OK(uffd_region_populate(f.r, 0, f.src, f.len, UFFD_POPULATE_MAP));
	ck_assert(all_wp(f.base, f.len, false));
	ASSERT_OK(uffd_region_writeprotect(f.r, 0, f.len, true, 0));
	ck_assert(all_wp(f.base, f.len, true));
	ASSERT_OK(uffd_region_zap(f.r, 0, f.len));
	ck_assert(!(harness_pagemap(f.base) & PM_PRESENT));
	ck_assert(all_wp(f.base, f.len, true));	/* markers, not present pages */

	touch_served(&h, f.r, true, 0xa5);
	ck_assert_int_eq(faults(&h, UFFD_FAULT_WP), (int)pages_of(m));
	ck_assert_int_eq(all_faults(&h), (int)pages_of(m));
	for (size_t off = 0; off < f.len; off += harness_page_size())
		f.src[off] = 0xa5;	/* the toucher's writes went through */
	ck_assert_mem_eq(f.base, f.src, f.len);
	ck_assert(all_wp(f.base, f.len, false));
	fix_close(&f);
}

MEM_TESTS(wp_markers)

/* ---- a caller's fd ---- */

static int caller_file(enum mem m, size_t ps, size_t pages)
{
	int fd = memfd_create("caller", MFD_CLOEXEC | (m == HUGETLB ? MFD_HUGETLB : 0));
	unsigned char *p;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)(pages * ps)), 0);
	p = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	for (size_t i = 0; i < pages; i++)
		memset(p + i * ps, (int)(i + 1), ps);
	munmap(p, pages * ps);
	return fd;
}

static void check_callers_fd(enum mem m)
{
	size_t ps, len, done;
	struct uffd *u;
	struct uffd_region *r = NULL;
	struct uffd_region_opts o = { .size = sizeof(o), .modes = MISSING | MINOR };
	unsigned char *base, *alias;
	struct stat st;
	int fd, fds;

	NEED_MEM(m, ps);
	u = open_default();
	fd = caller_file(m, ps, 6);
	fds = harness_count_fds();
	len = 3 * ps;
	o.fd = fd;
	o.fd_offset = 2 * ps;
	o.length = len;		/* no UFFD_REGION_HUGETLB: found from the fd */
	ASSERT_OK(uffd_region_create(u, &o, &r));
	ck_assert_int_eq(uffd_region_fd(r), fd);
	ck_assert_uint_eq(uffd_region_page_size(r), ps);
	base = uffd_region_base(r);
	alias = uffd_region_alias(r);
	for (size_t i = 0; i < 3; i++)
		ck_assert(all_bytes(alias + i * ps, ps, (unsigned char)(i + 3)));
	ASSERT_OK(uffd_region_continue(r, 0, len, 0, &done));
	ck_assert_uint_eq(done, len);
	for (size_t i = 0; i < 3; i++)
		ck_assert(all_bytes(base + i * ps, ps, (unsigned char)(i + 3)));
	ASSERT_OK(uffd_region_discard(r, ps, ps));	/* file page 3 only */
	ck_assert(all_bytes(alias + ps, ps, 0));
	ck_assert(all_bytes(alias, ps, 3));
	uffd_region_destroy(r);

	/* The caller's fd is still open, untouched in size, and its own. */
	ck_assert_int_eq(harness_count_fds(), fds);
	ck_assert_int_ge(fcntl(fd, F_GETFD), 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_int_eq(st.st_size, (off_t)(6 * ps));
	close(fd);
	uffd_close(u);
}

MEM_TESTS(callers_fd)

/* ---- bad input ---- */

static int create(struct uffd *u, struct uffd_region_opts *o)
{
	struct uffd_region *r = (struct uffd_region *)o;
	int err = uffd_region_create(u, o, &r);

	if (!err)
		uffd_region_destroy(r);
	else
		ck_assert_ptr_null(r);
	return err;
}

static void bad_opts(struct uffd *u)
{
	struct uffd_region_opts o = { .size = sizeof(o), .length = 4096, .modes = MINOR, .fd = -1 };
	struct uffd_region *r;
	char name[300];

	ASSERT_ERR(uffd_region_create(NULL, &o, &r), -EINVAL, "handle is NULL");
	ASSERT_ERR(uffd_region_create(u, NULL, &r), -EINVAL, "opts is NULL");
	ASSERT_ERR(uffd_region_create(u, &o, NULL), -EINVAL, "out is NULL");
	o.size = 2;
	ASSERT_ERR(create(u, &o), -EINVAL, "sizeof");
	o.name = "cut";	/* a size that cuts the name pointer in two */
	o.size = offsetof(struct uffd_region_opts, name) + 4;
	ASSERT_ERR(create(u, &o), -EINVAL, "sizeof");
	o.name = NULL;
	o.size = sizeof(o);
	o.modes = 0;
	ASSERT_ERR(create(u, &o), -EINVAL, "modes");
	o.modes = 1u << 5;
	ASSERT_ERR(create(u, &o), -EINVAL, "modes");
	o.modes = MINOR;
	o.flags = 1u << 7;
	ASSERT_ERR(create(u, &o), -EINVAL, "unknown");
	o.flags = 0;
	o.length = 0;
	ASSERT_ERR(create(u, &o), -EINVAL, "length");
	o.length = 100;
	ASSERT_ERR(create(u, &o), -EINVAL, "multiple");
	o.length = 4096;
	o.fd = -2;
	ASSERT_ERR(create(u, &o), -EINVAL, "pass -1");
	o.fd = -1;
	o.fd_offset = 4096;
	ASSERT_ERR(create(u, &o), -EINVAL, "fd_offset");
	o.fd_offset = 0;
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	o.name = name;
	ASSERT_ERR(create(u, &o), -EINVAL, "name");
	o.name = "fine";
	ck_assert_int_eq(create(u, &o), 0);
}

static void bad_fds(struct uffd *u)
{
	size_t ps = harness_page_size();
	struct uffd_region_opts o = { .size = sizeof(o), .length = ps, .modes = MINOR };
	char path[64];
	int fd = caller_file(SHMEM, ps, 2), ro;

	o.fd = memfd_create("closed", MFD_CLOEXEC);
	close(o.fd);
	ASSERT_ERR(create(u, &o), -EBADF, "not open");
	o.fd = eventfd(0, EFD_CLOEXEC);
	ASSERT_ERR(create(u, &o), -EINVAL, "tmpfs or hugetlbfs");
	close(o.fd);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ro = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(ro, 0);
	o.fd = ro;
	ASSERT_ERR(create(u, &o), -EACCES, "reading and writing");
	close(ro);
	o.fd = fd;
	o.fd_offset = 2 * ps;	/* the file has 2 pages */
	ASSERT_ERR(create(u, &o), -EINVAL, "ftruncate");
	o.fd_offset = ps / 2;
	ASSERT_ERR(create(u, &o), -EINVAL, "multiples");
	o.fd_offset = ps;
	o.flags = UFFD_REGION_HUGETLB;
	ASSERT_ERR(create(u, &o), -EINVAL, "not on hugetlbfs");
	o.flags = 0;
	ck_assert_int_eq(create(u, &o), 0);
	ck_assert_int_ge(fcntl(fd, F_GETFD), 0);
	close(fd);
}

/* Modes the handle's features do not cover, refused before any syscall. */
static void bad_features(void)
{
	struct uffd_opts uo = { .size = sizeof(uo), .features = UFFD_FEATURE_MISSING_SHMEM |
						     UFFD_FEATURE_MINOR_SHMEM };
	struct uffd_region_opts o = { .size = sizeof(o), .length = harness_page_size(),
				      .modes = MINOR | WP, .fd = -1 };
	struct uffd *u;

	ASSERT_OK(uffd_open(&u, &uo));
	ASSERT_ERR(create(u, &o), -EOPNOTSUPP, "WP_HUGETLBFS_SHMEM");
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "PAGEFAULT_FLAG_WP"));
	o.modes = MINOR;
	o.flags = UFFD_REGION_HUGETLB;
	ASSERT_ERR(create(u, &o), -EOPNOTSUPP, "MINOR_HUGETLBFS");
	o.modes = MISSING;
	ASSERT_ERR(create(u, &o), -EOPNOTSUPP, "MISSING_HUGETLBFS");
	uffd_close(u);

	uo.features = UFFD_FEATURE_MISSING_SHMEM;
	ASSERT_OK(uffd_open(&u, &uo));
	o.modes = MISSING | MINOR;
	o.flags = 0;
	ASSERT_ERR(create(u, &o), -EOPNOTSUPP, "MINOR_SHMEM");
	o.modes = MISSING;
	ck_assert_int_eq(create(u, &o), 0);
	uffd_close(u);
}

/* Offsets and lengths out of the region or unaligned to its page size. */
static void bad_spans(struct uffd_region *r)
{
	size_t ps = uffd_region_page_size(r), len = uffd_region_length(r), done = 1;
	unsigned char *src = calloc(1, len);
	struct {
		uint64_t off;
		size_t len;
		const char *words;
	} bad[] = {
		{ 0, 0, "length is 0" },
		{ len, ps, "outside the region" },
		{ 0, len + ps, "outside the region" },
		{ UINT64_MAX - ps + 1, ps, "outside the region" },
		{ ps, ps / 2, "multiples of the region's page size" },
		{ ps / 2, ps, "multiples of the region's page size" },
	};

	ck_assert_ptr_nonnull(src);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t o = bad[i].off;
		size_t l = bad[i].len;

		ASSERT_ERR(uffd_region_populate(r, o, src, l, 0), -EINVAL, bad[i].words);
		ASSERT_ERR(uffd_region_continue(r, o, l, 0, &done), -EINVAL, bad[i].words);
		ck_assert_uint_eq(done, 0);
		ASSERT_ERR(uffd_region_writeprotect(r, o, l, true, 0), -EINVAL, bad[i].words);
		ASSERT_ERR(uffd_region_zap(r, o, l), -EINVAL, bad[i].words);
		ASSERT_ERR(uffd_region_discard(r, o, l), -EINVAL, bad[i].words);
	}
	ASSERT_ERR(uffd_region_populate(r, 0, NULL, ps, 0), -EINVAL, "src is NULL");
	ASSERT_ERR(uffd_region_populate(r, 0, src, ps, 1u << 6), -EINVAL, "flags");
	ASSERT_ERR(uffd_region_populate(r, 0, src, ps, UFFD_MAP_WP), -EINVAL, "UFFD_MAP_WP");
	ASSERT_ERR(uffd_region_populate(r, 0, src, ps, UFFD_POPULATE_MAP | UFFD_MAP_WP),
		   -EINVAL, "UFFD_MAP_WP");	/* the region has no WP mode */
	ASSERT_ERR(uffd_region_continue(r, 0, ps, 1u << 9, NULL), -EINVAL, "flags");
	free(src);
}

static void null_region(void)
{
	char b[8];

	ASSERT_ERR(uffd_region_populate(NULL, 0, b, 4096, 0), -EINVAL, "region is NULL");
	ASSERT_ERR(uffd_region_continue(NULL, 0, 4096, 0, NULL), -EINVAL, "region is NULL");
	ASSERT_ERR(uffd_region_writeprotect(NULL, 0, 4096, true, 0), -EINVAL, "region is NULL");
	ASSERT_ERR(uffd_region_zap(NULL, 0, 4096), -EINVAL, "region is NULL");
	ASSERT_ERR(uffd_region_discard(NULL, 0, 4096), -EINVAL, "region is NULL");
	ASSERT_ERR(uffd_region_fd(NULL), -EINVAL, "region is NULL");
	ck_assert_ptr_null(uffd_region_base(NULL));
	ck_assert_ptr_null(uffd_region_alias(NULL));
	ck_assert_ptr_null(uffd_region_uffd(NULL));
	ck_assert_uint_eq(uffd_region_length(NULL), 0);
	ck_assert_uint_eq(uffd_region_page_size(NULL), 0);
	uffd_region_destroy(NULL);
}

START_TEST(test_bad_input)
{
	int fds = harness_count_fds();
	struct uffd *u = open_default();
	struct uffd_region *r;

	bad_opts(u);
	bad_fds(u);
	bad_features();
	r = region_new(u, SHMEM, 4 * harness_page_size(), MISSING | MINOR, 0);
	bad_spans(r);
	uffd_region_destroy(r);
	null_region();
	uffd_close(u);
	ck_assert_int_eq(harness_count_fds(), fds);
}
END_TEST

START_TEST(test_bad_input_hugetlb)
{
	size_t ps;
	int fds;
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_region_opts o = { .size = sizeof(o), .modes = MISSING | MINOR,
				      .flags = UFFD_REGION_HUGETLB, .fd = -1 };
	long free_pages, overcommit = harness_read_long("/proc/sys/vm/nr_overcommit_hugepages");

	NEED_MEM(HUGETLB, ps);
	fds = harness_count_fds();
	u = open_default();
	o.length = harness_page_size();
	ASSERT_ERR(create(u, &o), -EINVAL, "huge page size");
	r = region_new(u, HUGETLB, 2 * ps, MISSING | MINOR, 0);
	bad_spans(r);
	ck_assert(all_bytes(uffd_region_alias(r), 2 * ps, 0));	/* nothing half-done */
	ASSERT_ERR(uffd_zeropage(u, uffd_region_base(r), ps, 0, NULL), -EINVAL,
		   "hugetlbfs has no zero page");
	uffd_region_destroy(r);

	/* One huge page more than are free: no memfd or mapping is left behind. */
	free_pages = meminfo("HugePages_Free");
	ck_assert_int_ge(free_pages, 0);
	o.length = (size_t)(free_pages + 1) * ps;
	if (!overcommit)
		ASSERT_ERR(create(u, &o), -ENOMEM, "vm.nr_hugepages");
	uffd_close(u);
	ck_assert_int_eq(harness_count_fds(), fds);
	if (overcommit)
		SKIP_TEST("hugetlb shortage: vm.nr_overcommit_hugepages is %ld, huge pages cannot run out", overcommit);
}
END_TEST

/* ---- regions that mremap(2) moves, served by the loop ---- */

static struct uffd *open_remap(uint64_t more)
{
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_EVENT_REMAP | more,
			       .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd *u = NULL;

	ASSERT_OK(uffd_open(&u, &o));
	return u;
}

static struct uffd_loop *loop_started(void)
{
	struct uffd_loop *l = NULL;

	ASSERT_OK(uffd_loop_new(&l, NULL));
	return l;
}

struct moved_ctx {
	struct uffd_region *r;
	atomic_int faults;
	atomic_ullong offsets;	/* a bit per page offset seen */
	atomic_int wrong;
};

static int moved_missing(void *ctx, struct uffd_fault *f)
{
	struct moved_ctx *x = ctx;

	if (f->region != x->r || f->offset >= 64 * harness_page_size())
		atomic_fetch_add(&x->wrong, 1);
	else
		atomic_fetch_or(&x->offsets, 1ull << (f->offset / harness_page_size()));
	atomic_fetch_add(&x->faults, 1);
	return UFFD_RESOLVE;	/* the default: a copy from the region's source */
}

struct remap_job {
	void *from, *to;
	size_t len;
	void *ret;
};

static void *do_mremap(void *arg)
{
	struct remap_job *j = arg;

	j->ret = mremap(j->from, j->len, j->len, MREMAP_MAYMOVE | MREMAP_FIXED, j->to);
	return NULL;
}

/*
 * A part of a region moved by mremap: its faults still reach the region's
 * handler with their offsets, its pages come from the region's source and
 * keep the write-protection of a MISSING|WP region; region calls reach it;
 * destroy unmaps it.
 */
START_TEST(test_partial_remap)
{
	SKIP_UNDER_VALGRIND("valgrind runs mremap(2) without letting other threads run, so the loop never reads the event it waits for");
	size_t ps = harness_page_size(), len = 16 * ps;
	bool wp = harness_have_features(UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	struct uffd *u = open_remap(0);
	struct uffd_region *r = region_new(u, SHMEM, len, MISSING | (wp ? WP : 0), 0);
	unsigned char *src = pattern_buf(len, 5);
	struct moved_ctx x = { .r = r };
	struct uffd_handlers h = { .missing = moved_missing };
	struct uffd_loop *l = loop_started();
	char *base = uffd_region_base(r);
	char *dst = mmap(NULL, 4 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct remap_job j = { base + 4 * ps, dst, 4 * ps, NULL };

	ck_assert_ptr_ne(dst, MAP_FAILED);
	ASSERT_OK(uffd_region_set_source(r, src, len));
	ASSERT_OK(uffd_loop_add_region(l, r, &h, &x));
	ASSERT_OK(uffd_loop_start(l, 1));
	if (wp)	/* the pages to move are protected before their first touch */
		ASSERT_OK(uffd_region_writeprotect(r, 4 * ps, 4 * ps, true, 0));
	/* Pages 4..7 move away (the calling thread waits for the loop to read the REMAP). */
	harness_thread_join(harness_thread_start(do_mremap, &j));
	ck_assert_ptr_eq(j.ret, dst);
	ck_assert_ptr_eq(uffd_region_base(r), base);	/* offset 0 stayed */
	for (size_t i = 0; i < 4; i++)
		for (size_t b = 0; b < ps; b += 997)
			ck_assert_uint_eq(harness_load8(dst + i * ps + b), src[(4 + i) * ps + b]);
	ck_assert_uint_eq(harness_load8(base + 9 * ps + 3), src[9 * ps + 3]);
	ck_assert_int_eq(atomic_load(&x.wrong), 0);
	ck_assert_uint_eq(atomic_load(&x.offsets), 0xf0ull | 1ull << 9);
	if (wp) {	/* the moved pages are mapped write-protected, as they were recorded */
		ck_assert_uint_ne(harness_pagemap(dst + ps) & PM_UFFD_WP, 0);
		/* A region call by offset reaches the moved part, and one spanning the parts all of them. */
		ASSERT_OK(uffd_region_writeprotect(r, 5 * ps, ps, false, 0));
		ck_assert_uint_eq(harness_pagemap(dst + ps) & PM_UFFD_WP, 0);
		ck_assert_uint_ne(harness_pagemap(dst + 2 * ps) & PM_UFFD_WP, 0);
	}
	ASSERT_OK(uffd_region_zap(r, 0, len));
	ck_assert_uint_eq(harness_pagemap(dst + 2 * ps) & PM_PRESENT, 0);
	ck_assert_uint_eq(harness_load8(dst + 3 * ps + 1), src[7 * ps + 1]);	/* from the page cache */
	/* Offsets 0-1 moved over offsets 4-5: base follows offset 0; 4 is gone, refused by offset. */
	j = (struct remap_job){ base, dst, 2 * ps, NULL };
	harness_thread_join(harness_thread_start(do_mremap, &j));
	ck_assert_ptr_eq(j.ret, dst);
	ck_assert_ptr_eq(uffd_region_base(r), dst);
	ASSERT_ERR(uffd_region_zap(r, 4 * ps, ps), -ENOENT, "another mapping moved over it");
	ASSERT_OK(uffd_region_zap(r, 0, 2 * ps));
	ck_assert_uint_eq(harness_load8(dst + ps + 2), src[ps + 2]);
	ck_assert_uint_eq(harness_load8(dst + 2 * ps + 2), src[6 * ps + 2]);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	ck_assert_int_eq(msync(dst, ps, MS_ASYNC), -1);	/* the moved part went with the region */
	ck_assert_int_eq(errno, ENOMEM);
	uffd_close(u);
	free(src);
}
END_TEST

/*
 * The application's own mremap() of a region, then uffd_loop_sync() (no
 * waiting for the loop's callback): uffd_region_base() is the new address
 * and a region call works there. 40 times. uffd_loop_sync() from a
 * handler refuses to wait for its own thread.
 */
struct sync_ctx {
	struct uffd_loop *l;
	atomic_int ret;
};

static int sync_in_handler(void *ctx, struct uffd_fault *f)
{
	struct sync_ctx *x = ctx;

	(void)f;
	atomic_store(&x->ret, uffd_loop_sync(x->l, 1000));
	return UFFD_RESOLVE;
}

START_TEST(test_remap_at_once)
{
	SKIP_UNDER_VALGRIND("valgrind runs mremap(2) without letting other threads run, so the loop never reads the event it waits for");
	size_t ps = harness_page_size(), len = 5 * ps;
	struct uffd *u = open_remap(0);
	struct uffd_region *r = region_new(u, SHMEM, len, MISSING, 0);
	unsigned char *src = pattern_buf(len, 9);
	struct uffd_loop *l = loop_started();
	struct sync_ctx x = { .l = l, .ret = 1 };
	char *cur = uffd_region_base(r);
	int stale = 0, failed = 0;

	ASSERT_OK(uffd_loop_add_region(l, r, &(struct uffd_handlers){ .missing = sync_in_handler }, &x));
	ASSERT_OK(uffd_loop_start(l, 1));
	for (int i = 0; i < 40; i++) {
		char *to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		ck_assert_ptr_ne(to, MAP_FAILED);
		ck_assert_ptr_eq(mremap(cur, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to), to);
		cur = to;
		ASSERT_OK(uffd_loop_sync(l, 5000));	/* the waiting call uffd_region_base(3) names */
		stale += uffd_region_base(r) != to;
		failed += uffd_region_populate(r, (size_t)(i % 4) * ps, src, ps, UFFD_POPULATE_MAP) != 0;
		ck_assert_uint_eq(((volatile unsigned char *)to)[(i % 4) * ps + 5], src[5]);
	}
	ck_assert_msg(!stale && !failed, "of 40 moves, %d left uffd_region_base() stale and %d region calls failed (%s)",
		      stale, failed, uffd_last_error());
	/* From a handler of the loop: it would wait for its own thread. */
	ck_assert_uint_eq(harness_load8(cur + 4 * ps), 0);
	ck_assert_int_eq(atomic_load(&x.ret), -EDEADLK);
	ASSERT_ERR(uffd_loop_sync(NULL, 0), -EINVAL, "NULL");
	ASSERT_ERR(uffd_loop_sync(l, -2), -EINVAL, "timeout_ms -2");
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
	free(src);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("region");

	tcase_add_test(CASE(views_shmem, 30), test_views_shmem);
	tcase_add_test(CASE(views_hugetlb, 30), test_views_hugetlb);
	tcase_add_test(CASE(populate_minor_shmem, 30), test_populate_minor_shmem);
	tcase_add_test(CASE(populate_minor_hugetlb, 30), test_populate_minor_hugetlb);
	tcase_add_test(CASE(populate_map_shmem, 30), test_populate_map_shmem);
	tcase_add_test(CASE(populate_map_hugetlb, 30), test_populate_map_hugetlb);
	tcase_add_test(CASE(no_alias_shmem, 30), test_no_alias_shmem);
	tcase_add_test(CASE(no_alias_hugetlb, 30), test_no_alias_hugetlb);
	tcase_add_test(CASE(zap_shmem, 30), test_zap_shmem);
	tcase_add_test(CASE(zap_hugetlb, 30), test_zap_hugetlb);
	tcase_add_test(CASE(discard_shmem, 30), test_discard_shmem);
	tcase_add_test(CASE(discard_hugetlb, 30), test_discard_hugetlb);
	tcase_add_test(CASE(minor_shmem, 30), test_minor_shmem);
	tcase_add_test(CASE(minor_hugetlb, 30), test_minor_hugetlb);
	tcase_add_test(CASE(wp_markers_shmem, 30), test_wp_markers_shmem);
	tcase_add_test(CASE(wp_markers_hugetlb, 30), test_wp_markers_hugetlb);
	tcase_add_test(CASE(callers_fd_shmem, 30), test_callers_fd_shmem);
	tcase_add_test(CASE(callers_fd_hugetlb, 30), test_callers_fd_hugetlb);
	tcase_add_test(CASE(bad_input, 30), test_bad_input);
	tcase_add_test(CASE(bad_input_hugetlb, 30), test_bad_input_hugetlb);
	tcase_add_test(CASE(partial_remap, 30), test_partial_remap);
	tcase_add_test(CASE(remap_at_once, 30), test_remap_at_once);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
