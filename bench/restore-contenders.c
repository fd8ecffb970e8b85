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
#include <stdlib.h>
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

/* Word w of page p as the snapshot holds it: the image's (--image) or the pattern's. */
static uint64_t want_word(const struct rs_env *e, size_t p, size_t w)
{
	uint64_t v;

	if (!e->truth)
		return pattern(e->seed, p, w);
	memcpy(&v, e->truth + p * PAGE + w * sizeof(v), sizeof(v));
	return v;
}

bool rs_written(const struct rs_env *e, size_t p)
{
	uint64_t z = (uint64_t)p * 0x9e3779b97f4a7c15ull + 0x77726974ull;

	z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
	return (z >> 33) % 100 < e->write_pct;
}

uint64_t rs_wpattern(const struct rs_env *e, size_t p, size_t w)
{
	return ~want_word(e, p, w) ^ 0x5752495445ull;
}

/*
 * Thread i touches every threads-th page of the order; the fault is the
 * read of word 0 (and the last); a written page then gets every
 * RS_WSTRIDE-th word stored (a copy-on-write for the kernel, as a guest's
 * write after a read).
 */
static void guest_thread(void *arg, unsigned i)
{
	const struct guest *g = arg;
	const struct rs_env *e = g->e;
	size_t bad = 0;

	for (size_t k = i; k < e->nset; k += e->threads) {
		size_t p = e->order[k];
		volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(g->mem + p * PAGE);

		if ((w[0] != want_word(e, p, 0) || w[WORDS - 1] != want_word(e, p, WORDS - 1)) && !bad++)
			bench_fail(g->name, "page %zu reads 0x%llx at the touch, expected 0x%llx", p,
				   (unsigned long long)w[0], (unsigned long long)want_word(e, p, 0));
		if (rs_written(e, p))
			for (size_t x = 0; x < WORDS; x += RS_WSTRIDE)
				w[x] = rs_wpattern(e, p, x);
	}
}

/* Every word of touched page p: the guest's writes where it wrote, else the snapshot's. */
static bool check_touched(const struct rs_env *e, const char *name, const char *mem, size_t p)
{
	const uint64_t *w = (const uint64_t *)(const void *)(mem + p * PAGE);
	bool wr = rs_written(e, p);

	for (size_t x = 0; x < WORDS; x++) {
		uint64_t want = wr && x % RS_WSTRIDE == 0 ? rs_wpattern(e, p, x) : want_word(e, p, x);

		if (w[x] != want) {
			bench_fail(name, "page %zu word %zu holds 0x%llx after the run, expected 0x%llx (%s)",
				   p, x, (unsigned long long)w[x], (unsigned long long)want,
				   wr ? "written" : "read only");
			return false;
		}
	}
	return true;
}

int rs_guest(const struct rs_env *e, const char *name, const char *mem, struct rs_result *res)
{
	struct guest g = { e, name, mem };
	struct rusage a, b;
	unsigned before = bench_failures;
	double start = 0;

	if (e->sampler && rs_sampler_start(e->sampler, mem, e->len))
		return -1;
	getrusage(RUSAGE_SELF, &a);
	res->v[RS_US] = run_threads_at(e->threads, guest_thread, &g, &start);
	getrusage(RUSAGE_SELF, &b);
	if (e->sampler)
		rs_sampler_stop(e->sampler, start);
	res->v[RS_MINFLT] = (double)(b.ru_minflt - a.ru_minflt);
	res->v[RS_MAJFLT] = (double)(b.ru_majflt - a.ru_majflt);
	res->v[RS_MAPPED] = rs_present_pages(mem, e->len);
	for (size_t k = 0; k < e->nset && bench_failures == before; k++)
		check_touched(e, name, mem, e->order[k]);
	return res->v[RS_US] < 0 || bench_failures != before ? -1 : 0;
}

const char *rs_map_snapshot(const struct rs_env *e, const char *name)
{
	void *p = mmap(NULL, e->len, PROT_READ, MAP_SHARED, e->fd, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "uffd-restore: %s: mmap of the snapshot: %s\n", name, strerror(errno));
		return NULL;
	}
	return p;
}

/*
 * Demand faults map exactly the pages (of the memory's page size) holding
 * the touched ones, with one message per page; with 2 MiB pages both guest
 * threads may fault the same page, each with its message.
 */
int rs_check_demand(const struct rs_env *e, const char *name, const struct rs_result *res)
{
	double msgs = res->v[RS_FAULTS], mapped = res->v[RS_MAPPED];

	if (mapped == (double)(e->nunits * (e->page / PAGE)) &&
	    (e->page == PAGE ? msgs == (double)e->nunits : msgs >= (double)e->nunits))
		return 0;
	bench_fail(name, "%.0f fault messages and %.0f 4 KiB pages mapped for %zu touched pages "
		   "of %zu KiB", msgs, mapped, e->nunits, e->page / 1024);
	return -1;
}

int rs_check_around(const struct rs_env *e, const char *name, const struct rs_result *res)
{
	double msgs = res->v[RS_FAULTS], mapped = res->v[RS_MAPPED];

	if (mapped >= (double)(e->nunits * (e->page / PAGE)) &&
	    (e->page == PAGE ? msgs <= (double)e->nunits : msgs >= (double)e->nunits))
		return 0;
	bench_fail(name, "%.0f fault messages and %.0f 4 KiB pages mapped for %zu touched pages "
		   "of %zu KiB", msgs, mapped, e->nunits, e->page / 1024);
	return -1;
}

/* ---- 1. the hand-written handler: poll + read + one resolution per fault ---- */

/* The features a raw uffd needs for this memory. */
static uint64_t base_features(const struct rs_env *e)
{
	if (e->memfd)
		return e->page == HUGE ? UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MINOR_HUGETLBFS
		       : UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM;
	return e->page == HUGE ? UFFD_FEATURE_MISSING_HUGETLBFS : 0;
}

/*
 * anon: one UFFDIO_COPY per fault from a MAP_SHARED view of the snapshot,
 * as Firecracker's example handler does. memfd: pread(2) of the page from
 * the snapshot into the alias view, then one UFFDIO_CONTINUE.
 */
int rs_baseline(const struct rs_env *e, const char *name, struct rs_result *res)
{
	const char *src = e->memfd ? NULL : rs_map_snapshot(e, name);
	struct base_opts o = { .metric = name, .len = e->len, .page = e->page,
			       .mode = e->memfd ? BASE_FILL : BASE_MISSING,
			       .features = base_features(e), .src = src, .src_fd = e->fd,
			       .hist = res->hist };
	struct rs_mem m = { .fd = -1 };
	struct base_uffd *b = NULL;
	int err = -1;

	if ((!e->memfd && !src) || rs_mem_new(e, name, true, &m))
		goto out;
	o.addr = m.base;
	o.alias = m.alias;
	if (!(b = base_start_opts(&o)))
		goto out;
	err = rs_guest(e, name, m.base, res);
	res->v[RS_FAULTS] = res->v[RS_IOCTLS] = (double)base_faults(b);
	base_stop(b);
	res->has_hist = true;
	if (!err)
		err = rs_check_demand(e, name, res);
out:
	rs_mem_free(&m);
	if (src)
		munmap((void *)src, e->len);
	return err;
}

/* ---- libuffd: the guest memory as a region ---- */

int rs_lib_open(const struct rs_env *e, const char *name, struct rs_lib *lb)
{
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .length = e->len, .page_size = e->page,
					.modes = UFFDIO_REGISTER_MODE_MISSING, .fd = -1 };
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = e->len,
				       .modes = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR,
				       .flags = e->page == HUGE ? UFFD_REGION_HUGETLB : 0 };

	*lb = (struct rs_lib){ .m = { .fd = -1 } };
	if (rs_mem_new(e, name, !e->memfd, &lb->m))
		return -1;
	ro.fd = lb->m.fd;
	fo.owner_addr = (uintptr_t)lb->m.base;
	if (uffd_open(&lb->u, NULL) || uffd_loop_new(&lb->l, NULL) ||
	    (e->memfd ? uffd_region_create(lb->u, &ro, &lb->r)
	     : uffd_register(lb->u, lb->m.base, e->len, fo.modes, NULL) ||
	       uffd_region_create_foreign(lb->u, &fo, &lb->r))) {
		fprintf(stderr, "uffd-restore: %s: set-up: %s\n", name, uffd_last_error());
		return -1;
	}
	return 0;
}

int rs_lib_guest(const struct rs_env *e, const char *name, struct rs_lib *lb, struct rs_result *res)
{
	struct uffd_loop_counters c = { .size = sizeof(c) };
	int err;

	place(true);
	err = uffd_loop_start(lb->l, 1);
	place(false);
	if (err) {
		fprintf(stderr, "uffd-restore: %s: uffd_loop_start: %s\n", name, uffd_last_error());
		return -1;
	}
	err = rs_guest(e, name, uffd_region_base(lb->r), res);
	uffd_loop_counters(lb->l, &c);
	res->v[RS_FAULTS] = (double)(c.faults_missing + c.faults_minor);
	res->v[RS_IOCTLS] = (double)c.resolve_ioctls;
	if (!err && c.errors) {
		bench_fail(name, "the loop counted %llu errors", (unsigned long long)c.errors);
		err = -1;
	}
	return err;
}

void rs_lib_close(struct rs_lib *lb)
{
	uffd_loop_free(lb->l);
	uffd_region_destroy(lb->r);
	uffd_close(lb->u);
	rs_mem_free(&lb->m);
}

/* ---- 2. libuffd's loop: a region with the snapshot mapped as its page source ---- */

struct src_run {
	const struct rs_env *e;
	struct rs_lib lb;
	const char *src;	/* the snapshot, mapped */
	size_t block;		/* bytes per fault: the page, or the --around block */
	unsigned char *filled;	/* memfd: pages whose page cache holds the snapshot's */
	uint64_t continues;	/* memfd: UFFDIO_CONTINUEs of the handler */
};

/* [lo, hi): the aligned block of r->block bytes holding the fault, within the region. */
static void block_of(const struct src_run *r, const struct uffd_fault *f, uint64_t *lo, uint64_t *hi)
{
	size_t b = r->block;

	*lo = f->offset - f->offset % b;
	*hi = *lo + b < r->e->len ? *lo + b : r->e->len;
}

/* anon: widens the fault to its block; the loop copies the block from the source. */
static int copy_block(void *ctx, struct uffd_fault *f)
{
	uint64_t lo, hi;

	block_of(ctx, f, &lo, &hi);
	f->addr = (char *)f->addr - (f->offset - lo);
	f->offset = lo;
	f->len = hi - lo;
	return UFFD_RESOLVE;
}

/*
 * memfd: writes the block's pages that are not in the page cache yet from
 * the source (uffd_region_populate(): pwrite(2) on the memfd), then maps
 * the block with one CONTINUE. MISSING and MINOR faults alike.
 */
static int fill_block(void *ctx, struct uffd_fault *f)
{
	struct src_run *r = ctx;
	size_t ps = r->e->page;
	uint64_t lo, hi, o, end;
	int err = 0;

	block_of(r, f, &lo, &hi);
	for (o = lo; o < hi && !err; o = end) {
		for (; o < hi && r->filled[o / ps]; o += ps)
			;
		for (end = o; end < hi && !r->filled[end / ps]; end += ps)
			;
		if (end > o && !(err = uffd_region_populate(r->lb.r, o, r->src + o, end - o, 0)))
			memset(r->filled + o / ps, 1, (end - o) / ps);
	}
	if (!err) {
		err = uffd_region_continue(r->lb.r, lo, hi - lo, UFFD_SKIP_EXISTING, NULL);
		r->continues++;
	}
	return err == -EAGAIN ? UFFD_RETRY : err ? err : UFFD_HANDLED;
}

/*
 * anon: the snapshot mapping is the region's page source (the loop copies
 * from it); block widens each fault. memfd: fill_block().
 */
static int source_run(const struct rs_env *e, const char *name, size_t block, struct rs_result *res)
{
	struct src_run r = { .e = e, .block = block > e->page ? block : e->page };
	struct uffd_handlers h = { .missing = e->memfd ? fill_block : copy_block,
				   .minor = fill_block };
	bool demand = r.block == e->page;
	int err = -1;

	if (rs_lib_open(e, name, &r.lb) || !(r.src = rs_map_snapshot(e, name)))
		goto out;
	if ((e->memfd && !(r.filled = calloc(e->len / e->page, 1))) ||
	    (!e->memfd && uffd_region_set_source(r.lb.r, r.src, e->len)) ||
	    uffd_loop_add_region(r.lb.l, r.lb.r, e->memfd || !demand ? &h : NULL, &r)) {
		fprintf(stderr, "uffd-restore: %s: set-up: %s\n", name, uffd_last_error());
		goto out;
	}
	err = rs_lib_guest(e, name, &r.lb, res);
	if (e->memfd)
		res->v[RS_IOCTLS] = (double)r.continues;
	if (!err && demand)
		err = rs_check_demand(e, name, res);
out:
	rs_lib_close(&r.lb);
	free(r.filled);
	if (r.src)
		munmap((void *)r.src, e->len);
	return err;
}

int rs_libuffd_source(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return source_run(e, name, e->page, res);
}

int rs_libuffd_around(const struct rs_env *e, const char *name, struct rs_result *res)
{
	return source_run(e, name, e->around * PAGE, res);
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
	munmap(mem, e->len);
	return err;
}

/* ---- 5. the ideal: the whole working set copied before the guest starts ---- */

/*
 * The bound for any copy-based restore: every page (of the memory's page
 * size) the guest will touch, in address order, merged into runs, each run
 * one UFFDIO_COPY from a mapping of the snapshot (anon) or one write into
 * the memfd and one UFFDIO_CONTINUE (memfd); then the guest, which takes no
 * fault. Timed from before the first copy.
 */
static int ideal_copy(const struct rs_env *e, const char *name, struct rs_lib *lb,
		      const char *snap, const unsigned char *want)
{
	size_t ps = e->page, n = e->len / ps;

	for (size_t u = 0; u < n;) {
		size_t v = u;
		int err;

		if (!want[u]) {
			u++;
			continue;
		}
		while (v < n && want[v])
			v++;
		if (e->memfd)
			err = uffd_region_populate(lb->r, u * ps, snap + u * ps, (v - u) * ps, 0) ?:
			      uffd_region_continue(lb->r, u * ps, (v - u) * ps, 0, NULL);
		else
			err = uffd_copy(lb->u, lb->m.base + u * ps, snap + u * ps, (v - u) * ps, 0, NULL);
		if (err) {
			fprintf(stderr, "uffd-restore: %s: copying pages %zu-%zu: %s\n", name, u, v,
				uffd_last_error());
			return -1;
		}
		u = v;
	}
	return 0;
}

int rs_ideal(const struct rs_env *e, const char *name, struct rs_result *res)
{
	unsigned char *want = calloc(e->len / e->page, 1);
	const char *snap = NULL;
	struct rs_lib lb;
	double t0;
	int err = -1;

	if (rs_lib_open(e, name, &lb) || !want || !(snap = rs_map_snapshot(e, name)))
		goto out;
	for (size_t k = 0; k < e->nset; k++)
		want[e->order[k] * PAGE / e->page] = 1;
	t0 = now_us();
	if (ideal_copy(e, name, &lb, snap, want))
		goto out;
	t0 = now_us() - t0;
	err = rs_guest(e, name, uffd_region_base(lb.r), res);
	res->v[RS_US] += t0;
	res->v[RS_FAULTS] = 0;
	res->v[RS_AHEAD] = (double)(e->nunits * (e->page / PAGE));
out:
	rs_lib_close(&lb);
	free(want);
	if (snap)
		munmap((void *)snap, e->len);
	return err;
}
