/* SPDX-License-Identifier: MIT */
/*
 * The contenders of uffd-restore and the guest they serve. The guest is a
 * team of threads of this process touching its memory; the userfaultfd
 * handlers run on other threads (userfaultfd serves memory of its own
 * process as it serves another's). Set-up and tear-down are not timed.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "restore.h"

#define WORDS (PAGE / sizeof(uint64_t))

/* ---- the guest ---- */

struct guest {
	const struct rs_env *e;
	const char *name;
	const char *mem;
};

/* Thread i touches every threads-th page of the order; the fault is the read of word 0. */
static void guest_thread(void *arg, unsigned i)
{
	const struct guest *g = arg;
	const struct rs_env *e = g->e;
	size_t bad = 0;

	for (size_t k = i; k < e->nset; k += e->threads) {
		size_t p = e->order[k];
		const volatile uint64_t *w = (const volatile uint64_t *)(g->mem + p * PAGE);

		if ((w[0] != pattern(e->seed, p, 0) || w[WORDS - 1] != pattern(e->seed, p, WORDS - 1)) &&
		    !bad++)
			bench_fail(g->name, "page %zu reads 0x%llx at the touch, expected 0x%llx", p,
				   (unsigned long long)w[0], (unsigned long long)pattern(e->seed, p, 0));
	}
}

/* Pages of [mem, mem+len) present in this process's page tables (/proc/self/pagemap). */
static double present_pages(const void *mem, size_t len)
{
	uint64_t ent[4096];
	size_t first = (uintptr_t)mem / PAGE, n = len / PAGE, count = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NAN;
	for (size_t i = 0; i < n; i += 4096) {
		size_t m = n - i < 4096 ? n - i : 4096;

		if (pread(fd, ent, m * 8, (off_t)((first + i) * 8)) != (ssize_t)(m * 8)) {
			close(fd);
			return NAN;
		}
		for (size_t j = 0; j < m; j++)
			count += ent[j] >> 63;
	}
	close(fd);
	return (double)count;
}

/*
 * Runs the guest over mem and fills res: its time, the process's faults
 * over it, and the pages present afterwards. Then checks every word of
 * every touched page (not timed). 0, or -1 on a wrong page.
 */
static int rs_guest(const struct rs_env *e, const char *name, const char *mem,
		    struct rs_result *res)
{
	struct guest g = { e, name, mem };
	struct rusage a, b;
	unsigned before = bench_failures;

	getrusage(RUSAGE_SELF, &a);
	res->us = run_threads(e->threads, guest_thread, &g);
	getrusage(RUSAGE_SELF, &b);
	res->minflt = (double)(b.ru_minflt - a.ru_minflt);
	res->majflt = (double)(b.ru_majflt - a.ru_majflt);
	res->mapped = present_pages(mem, e->len);
	for (size_t k = 0; k < e->nset && bench_failures == before; k++)
		check_pages(name, mem + e->order[k] * PAGE, e->order[k], 1, e->seed);
	return res->us < 0 || bench_failures != before ? -1 : 0;
}

/* A fresh read-only view of the snapshot: the source of the COPYs. */
static const char *map_snapshot(const struct rs_env *e, const char *name)
{
	void *p = mmap(NULL, e->len, PROT_READ, MAP_SHARED, e->fd, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "uffd-restore: %s: mmap of the snapshot: %s\n", name, strerror(errno));
		return NULL;
	}
	return p;
}

/* Demand faults resolve exactly the touched pages, one message each. */
static int check_exact(const struct rs_env *e, const char *name, const struct rs_result *res)
{
	if (res->msgs == (double)e->nset && res->mapped == (double)e->nset)
		return 0;
	bench_fail(name, "%.0f fault messages and %.0f pages mapped for %zu touched pages",
		   res->msgs, res->mapped, e->nset);
	return -1;
}

/* ---- 1. the hand-written handler: poll + read + one UFFDIO_COPY per fault ---- */

int rs_baseline(const struct rs_env *e, const char *name, struct rs_result *res)
{
	const char *src = map_snapshot(e, name);
	char *mem = src ? anon_map(e->len) : NULL;
	struct base_uffd *b = mem ? base_start(name, mem, e->len, BASE_MISSING, 0, src) : NULL;
	int err = -1;

	if (!b)
		goto out;
	err = rs_guest(e, name, mem, res);
	res->msgs = res->ioctls = (double)base_faults(b);
	base_stop(b);
	if (!err)
		err = check_exact(e, name, res);
out:
	if (mem)
		munmap(mem, e->len);
	if (src)
		munmap((void *)src, e->len);
	return err;
}

/* ---- 2. libuffd: a MISSING region with the snapshot as its page source ---- */

/* Widens each fault to the aligned block of e->around pages holding it, within the region. */
static int around_missing(void *ctx, struct uffd_fault *f)
{
	const struct rs_env *e = ctx;
	size_t block = e->around * PAGE;
	uint64_t start = f->offset - f->offset % block;
	uint64_t end = start + block < e->len ? start + block : e->len;

	f->addr = (char *)f->addr - (f->offset - start);
	f->offset = start;
	f->len = end - start;
	return UFFD_RESOLVE;
}

static int libuffd_run(const struct rs_env *e, const char *name, bool around,
		       struct rs_result *res)
{
	const char *src = map_snapshot(e, name);
	char *mem = src ? anon_map(e->len) : NULL;
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .owner_addr = (uintptr_t)mem,
					.length = e->len, .modes = UFFDIO_REGISTER_MODE_MISSING,
					.fd = -1 };
	struct uffd_handlers h = { .missing = around_missing };
	struct uffd_loop_counters c = { .size = sizeof(c) };
	struct uffd_region *r = NULL;
	struct uffd_loop *l = NULL;
	struct uffd *u = NULL;
	int err = -1;

	if (!mem)
		goto out;
	if (uffd_open(&u, NULL) || uffd_register(u, mem, e->len, fo.modes, NULL) ||
	    uffd_region_create_foreign(u, &fo, &r) || uffd_region_set_source(r, src, e->len) ||
	    uffd_loop_new(&l, NULL) ||
	    uffd_loop_add_region(l, r, around ? &h : NULL, (void *)e)) {
		fprintf(stderr, "uffd-restore: %s: set-up: %s\n", name, uffd_last_error());
		goto out;
	}
	place(true);
	err = uffd_loop_start(l, 1);
	place(false);
	if (err) {
		fprintf(stderr, "uffd-restore: %s: uffd_loop_start: %s\n", name, uffd_last_error());
		goto out;
	}
	err = rs_guest(e, name, mem, res);
	uffd_loop_counters(l, &c);
	res->msgs = (double)c.faults_missing;
	res->ioctls = (double)c.resolve_ioctls;
	if (!err && c.errors) {
		bench_fail(name, "the loop counted %llu errors", (unsigned long long)c.errors);
		err = -1;
	}
	if (!err && !around)
		err = check_exact(e, name, res);
out:
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
	if (mem)
		munmap(mem, e->len);
	if (src)
		munmap((void *)src, e->len);
	return err;
}

int rs_libuffd(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return libuffd_run(e, name, false, res);
}

int rs_libuffd_around(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return libuffd_run(e, name, true, res);
}

/* ---- 4. the kernel's own paging: the snapshot mapped MAP_PRIVATE ---- */

int rs_kernel(const struct rs_env *e, const char *name, struct rs_result *res)
{
	void *mem = mmap(NULL, e->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, e->fd, 0);
	int err;

	if (mem == MAP_FAILED) {
		fprintf(stderr, "uffd-restore: %s: mmap MAP_PRIVATE: %s\n", name, strerror(errno));
		return -1;
	}
	err = rs_guest(e, name, mem, res);
	res->msgs = res->ioctls = NAN;
	munmap(mem, e->len);
	return err;
}
