/* SPDX-License-Identifier: MIT */
/*
 * Page sources (uffd.h section 10) under the restore engine: the file
 * source and the layered source (a base and Diff files, newest wins,
 * holes fall through, no layer = zeros with no read), with 4 KiB and
 * 2 MiB pages, every byte checked; a counting wrapper (a user source over
 * another) proving zero ranges cost no read; a generated source whose
 * reads complete late and out of order, with demand faults still served
 * within a bound during a fill; record and replay on layers; a source
 * that fails (-EIO, the page never mapped); bad arguments.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define MINOR UFFDIO_REGISTER_MODE_MINOR
#define SUB 4096u	/* layers are written in 4 KiB pieces, whatever the page size */
#define NLAYERS 4

#define SKIP_NO_UFFD() SKIP_TEST("userfaultfd is not available to this process (or MINOR_SHMEM is missing)")
#define SKIP_VALGRIND() SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock, and guest threads block in plain loads")

/* ---- what each layer holds ---- */

static uint64_t word(unsigned layer, size_t q, size_t w)
{
	return ((uint64_t)(layer + 1) << 56 | (uint64_t)q << 20 | w) ^ 0x0123456789abcdefull;
}

/*
 * Whether layer l holds 4 KiB piece q. A window of `hole` pieces from
 * piece `hole` on is in no layer (one whole page of any size), and base
 * holes at q % 7 == 3 fall through to the diffs or to zeros.
 */
static bool holds(unsigned l, size_t q, size_t hole)
{
	if (q >= hole && q < 2 * hole)
		return false;
	switch (l) {
	case 0: return q % 7 != 3;
	case 1: return q % 5 == 0;
	case 2: return q % 3 == 0 || (q / 16) % 4 == 1;
	default: return q % 11 == 2;
	}
}

/* The layer piece q comes from (newest first, of the first n), or -1: zeros. */
static int owner(size_t q, unsigned n, size_t hole)
{
	for (int l = (int)n - 1; l >= 0; l--)
		if (holds((unsigned)l, q, hole))
			return l;
	return -1;
}

struct files {
	char dir[64];
	int fd[NLAYERS];
	unsigned n;
	size_t len, hole;
};

/* n sparse files of len bytes: layer l's pieces written, the rest holes. */
static void files_make(struct files *f, unsigned n, size_t len, size_t hole)
{
	uint64_t buf[SUB / 8];
	char path[128];

	memset(f, 0, sizeof(*f));
	strcpy(f->dir, "/var/tmp/uffd-source-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(f->dir));
	f->n = n;
	f->len = len;
	f->hole = hole;
	for (unsigned l = 0; l < n; l++) {
		snprintf(path, sizeof(path), "%s/layer%u", f->dir, l);
		f->fd[l] = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		ck_assert_int_ge(f->fd[l], 0);
		ck_assert_int_eq(ftruncate(f->fd[l], (off_t)len), 0);
		for (size_t q = 0; q < len / SUB; q++) {
			if (!holds(l, q, hole))
				continue;
			for (size_t w = 0; w < SUB / 8; w++)
				buf[w] = word(l, q, w);
			ck_assert_int_eq(pwrite(f->fd[l], buf, SUB, (off_t)(q * SUB)), (ssize_t)SUB);
		}
	}
}

static void files_free(struct files *f)
{
	char cmd[128];

	for (unsigned l = 0; l < f->n; l++)
		close(f->fd[l]);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* The file source of layer l: the base's holes are zeros, a diff's fall through. */
static struct uffd_source *file_source(const struct files *f, unsigned l)
{
	struct uffd_source_file_opts o = { .size = sizeof(o), .flags = l ? UFFD_SOURCE_FILE_DIFF : 0 };
	struct uffd_source *s;
	char name[16];

	snprintf(name, sizeof(name), "layer%u", l);
	o.name = name;
	ASSERT_OK(uffd_source_file(&s, f->fd[l], &o));
	return s;
}

/* Every word of page p (ps bytes) at mem, against the first n layers. */
static void check_page(const char *mem, size_t ps, size_t p, unsigned n, size_t hole)
{
	for (size_t q = p * ps / SUB; q < (p + 1) * ps / SUB; q++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(mem + q * SUB);
		int l = owner(q, n, hole);

		for (size_t i = 0; i < SUB / 8; i++) {
			uint64_t want = l < 0 ? 0 : word((unsigned)l, q, i);

			if (w[i] != want)
				ck_abort_msg("page %zu piece %zu word %zu: 0x%llx, want 0x%llx (layer %d)", p, q, i,
					     (unsigned long long)w[i], (unsigned long long)want, l);
		}
	}
}

/* Whether page p of n layers is all zeros in every piece (no layer holds any of it). */
static bool page_hole(size_t ps, size_t p, unsigned n, size_t hole)
{
	for (size_t q = p * ps / SUB; q < (p + 1) * ps / SUB; q++)
		if (owner(q, n, hole) >= 0)
			return false;
	return true;
}

/* ---- the served memory ---- */

struct env {
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct uffd_restore *rs;
	char *mem;
	size_t len, ps;
	bool anon;
};

static struct uffd *open_uffd(void)
{
	struct uffd_opts o = { .size = sizeof(o), .want_features = UFFD_FEATURES_DEFAULT |
			       UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP };
	struct uffd *u = NULL;
	int err = uffd_open(&u, &o);

	if (err == -EPERM || err == -EACCES)
		return NULL;
	ck_assert_msg(!err, "uffd_open: %s", uffd_last_error());
	return u;
}

static void env_loop(struct env *e, unsigned flags)
{
	struct uffd_loop_opts lo = { .size = sizeof(lo), .flags = flags };

	ASSERT_OK(uffd_loop_new(&e->l, &lo));
	ASSERT_OK(uffd_loop_add(e->l, e->u, NULL, NULL));
	ASSERT_OK(uffd_loop_start(e->l, 1));
}

/* Anonymous memory (huge pages when ps says so), MISSING, served as a foreign region. */
static bool env_anon(struct env *e, size_t len, size_t ps, unsigned loop_flags)
{
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .modes = MISSING, .fd = -1 };
	int huge = ps > harness_page_size() ? MAP_HUGETLB : 0;

	memset(e, 0, sizeof(*e));
	if (!(e->u = open_uffd()))
		return false;
	if (huge && !(uffd_features(e->u) & UFFD_FEATURE_MISSING_HUGETLBFS)) {
		uffd_close(e->u);
		return false;
	}
	e->len = len;
	e->ps = ps;
	e->anon = true;
	e->mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | huge, -1, 0);
	ck_assert_ptr_ne(e->mem, MAP_FAILED);
	ASSERT_OK(uffd_register(e->u, e->mem, len, MISSING, NULL));
	fo.owner_addr = (uintptr_t)e->mem;
	fo.length = len;
	fo.page_size = ps;
	ASSERT_OK(uffd_region_create_foreign(e->u, &fo, &e->r));
	env_loop(e, loop_flags);
	return true;
}

/* A memfd region, MISSING|MINOR, with its alias view: reads land in the alias, CONTINUE. */
static bool env_memfd(struct env *e, size_t len)
{
	struct uffd_region_opts ro = { .size = sizeof(ro), .modes = MISSING | MINOR, .fd = -1, .length = len };

	memset(e, 0, sizeof(*e));
	if (!(e->u = open_uffd()))
		return false;
	if (!(uffd_features(e->u) & UFFD_FEATURE_MINOR_SHMEM)) {
		uffd_close(e->u);
		return false;
	}
	e->ps = harness_page_size();
	e->len = len;
	ASSERT_OK(uffd_region_create(e->u, &ro, &e->r));
	e->mem = uffd_region_base(e->r);
	env_loop(e, 0);
	return true;
}

static void env_serve(struct env *e, struct uffd_source *src, const struct uffd_restore_opts *o)
{
	ASSERT_OK(uffd_restore_new(&e->rs, o));
	ASSERT_OK(uffd_restore_add_region_source(e->rs, e->r, src, 0));
	uffd_source_unref(src);	/* the restore holds its own reference */
	ASSERT_OK(uffd_restore_start(e->rs, e->l));
}

static void env_free(struct env *e)
{
	uffd_restore_free(e->rs);
	if (e->anon)
		munmap(e->mem, e->len);
	uffd_loop_free(e->l);
	uffd_region_destroy(e->r);
	uffd_close(e->u);
}

static struct uffd_restore_stats stats_of(struct uffd_restore *rs)
{
	struct uffd_restore_stats s = { .size = sizeof(s) };

	ASSERT_OK(uffd_restore_stats(rs, &s));
	return s;
}

/* Huge page size for n pages, or 0 with the reason in *why. */
static size_t huge(unsigned n, const char **why)
{
	return harness_hugepages(n, why);
}

/* ---- a counting wrapper: a user source over another ---- */

struct counter {
	struct uffd_source *inner;
	atomic_uint_fast64_t reads, nowait, bytes;
};

static int c_read(void *impl, struct uffd_source_req *req)
{
	struct counter *c = impl;

	atomic_fetch_add(&c->reads, 1);
	atomic_fetch_add(&c->bytes, req->len);
	return uffd_source_read(c->inner, req);	/* the inner source completes the caller's request */
}

static int c_read_nowait(void *impl, uint64_t off, size_t len, void *buf)
{
	struct counter *c = impl;
	int err = uffd_source_read_nowait(c->inner, off, len, buf);

	if (!err) {
		atomic_fetch_add(&c->nowait, 1);
		atomic_fetch_add(&c->bytes, len);
	}
	return err;
}

static int c_extent(void *impl, uint64_t off, uint64_t len, uint64_t *run)
{
	return uffd_source_extent(((struct counter *)impl)->inner, off, len, run);
}

static int c_attach(void *impl, struct uffd_source_env *env)
{
	return uffd_source_attach(((struct counter *)impl)->inner, env);
}

static void c_destroy(void *impl)
{
	struct counter *c = impl;

	uffd_source_unref(c->inner);
	free(c);
}

static const struct uffd_source_ops counter_ops = {
	.size = sizeof(counter_ops), .read = c_read, .read_nowait = c_read_nowait,
	.extent = c_extent, .attach = c_attach, .destroy = c_destroy,
};

/* A counting source over inner (whose reference it takes over); *c stays valid while it lives. */
static struct uffd_source *counted(struct uffd_source *inner, struct counter **cp)
{
	struct uffd_source_info info = { .size = sizeof(info), .name = "counter",
					 .length = uffd_source_length(inner) };
	struct counter *c = calloc(1, sizeof(*c));
	struct uffd_source *s;

	ck_assert_ptr_nonnull(c);
	c->inner = inner;
	ASSERT_OK(uffd_source_new(&s, &counter_ops, c, &info));
	*cp = c;
	return s;
}

/* The layered source of the first n layers of f, each behind a counter when cs is given. */
static struct uffd_source *layered(const struct files *f, unsigned n, struct counter **cs)
{
	struct uffd_source *l[NLAYERS], *s;

	for (unsigned i = 0; i < n; i++) {
		l[i] = file_source(f, i);
		if (cs)
			l[i] = counted(l[i], &cs[i]);
	}
	ASSERT_OK(uffd_source_layered(&s, l, n, NULL));
	for (unsigned i = 0; i < n; i++)
		uffd_source_unref(l[i]);
	return s;
}

/* ---- every byte: file and layered, 4 KiB and 2 MiB ---- */

/*
 * Demand faults on every third page first (in the restore's fault path),
 * then the fill brings in the rest and detaches; every byte is checked.
 */
static void every_byte(struct env *e, unsigned n, size_t hole, bool layers, const struct files *f)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH,
				       .queue_depth = 4 };
	size_t npages = e->len / e->ps, holes = 0;
	struct uffd_restore_stats s;

	env_serve(e, layers ? layered(f, n, NULL) : file_source(f, 0), &o);
	for (size_t p = 0; p < npages; p += 3)
		check_page(e->mem, e->ps, p, n, hole);
	ASSERT_OK(uffd_restore_wait(e->rs, 20000));
	for (size_t p = 0; p < npages; p++) {
		check_page(e->mem, e->ps, p, n, hole);
		holes += page_hole(e->ps, p, n, hole);
	}
	s = stats_of(e->rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_eq(s.pages_hole, holes);
	ck_assert_uint_ge(holes, 1);
	ck_assert_uint_eq(s.read_errors, 0);
	/* Hole pages are never read: at most the other pages' bytes. */
	ck_assert_uint_le(s.bytes_read, (npages - holes) * e->ps);
	fprintf(stderr, "%u layer(s), %zu pages of %zu: %zu holes, %llu bytes read, %.1f ms\n", n, npages,
		e->ps, holes, (unsigned long long)s.bytes_read, (double)s.complete_ns / 1e6);
}

static void every_byte_case(bool layers, bool hugepages, bool memfd)
{
	const char *why = "";
	size_t ps = hugepages ? huge(6, &why) : harness_page_size();
	size_t npages = hugepages ? 6 : 256;
	unsigned n = layers ? NLAYERS : 1;
	struct files f;
	struct env e;

	SKIP_VALGRIND();
	if (!ps)
		SKIP_TEST("no huge pages: %s", why);
	if (!(memfd ? env_memfd(&e, npages * ps) : env_anon(&e, npages * ps, ps, 0)))
		SKIP_NO_UFFD();
	files_make(&f, n, npages * ps, ps / SUB);
	every_byte(&e, n, ps / SUB, layers, &f);
	env_free(&e);
	files_free(&f);
}

START_TEST(file_4k) { every_byte_case(false, false, false); }
END_TEST
START_TEST(file_memfd) { every_byte_case(false, false, true); }
END_TEST
START_TEST(file_2m) { every_byte_case(false, true, false); }
END_TEST
START_TEST(layered_4k) { every_byte_case(true, false, false); }
END_TEST
START_TEST(layered_memfd) { every_byte_case(true, false, true); }
END_TEST
START_TEST(layered_2m) { every_byte_case(true, true, false); }
END_TEST

/* ---- the merged extents themselves ---- */

START_TEST(layered_extents)
{
	size_t len = 512 * SUB, hole = 4;
	struct uffd_source *s;
	struct files f;
	uint64_t run;

	files_make(&f, NLAYERS, len, hole);
	s = layered(&f, NLAYERS, NULL);
	ck_assert_uint_eq(uffd_source_length(s), len);
	/* Piece by piece: DATA where a layer holds it, else ZERO (the base's holes are zeros). */
	for (size_t q = 0; q < len / SUB; q++) {
		int k = uffd_source_extent(s, q * SUB, SUB, &run);

		ck_assert_int_eq(k, owner(q, NLAYERS, hole) >= 0 ? UFFD_EXTENT_DATA : UFFD_EXTENT_ZERO);
		ck_assert_uint_eq(run, SUB);
	}
	/* Runs: from piece 4 (the window), 4 pieces in no layer. */
	ck_assert_int_eq(uffd_source_extent(s, hole * SUB, len - hole * SUB, &run), UFFD_EXTENT_ZERO);
	ck_assert_uint_eq(run, hole * SUB);
	uffd_source_unref(s);
	/* Diffs alone (no base): what none holds is ABSENT from the whole. */
	{
		struct uffd_source *d[2] = { file_source(&f, 1), file_source(&f, 2) };

		ASSERT_OK(uffd_source_layered(&s, d, 2, NULL));
		uffd_source_unref(d[0]);
		uffd_source_unref(d[1]);
		for (size_t q = 0; q < len / SUB; q++) {
			bool any = holds(1, q, hole) || holds(2, q, hole);

			ck_assert_int_eq(uffd_source_extent(s, q * SUB, SUB, &run),
					 any ? UFFD_EXTENT_DATA : UFFD_EXTENT_ABSENT);
		}
	}
	/* A Diff file alone: its holes are not in the layer; the base's are zeros. */
	uffd_source_unref(s);
	s = file_source(&f, 1);
	ck_assert_int_eq(uffd_source_extent(s, SUB, SUB, &run), UFFD_EXTENT_ABSENT);
	uffd_source_unref(s);
	s = file_source(&f, 0);
	ck_assert_int_eq(uffd_source_extent(s, 3 * SUB, SUB, &run), UFFD_EXTENT_ZERO);
	ck_assert_int_eq(uffd_source_extent(s, 0, 3 * SUB, &run), UFFD_EXTENT_DATA);
	ck_assert_uint_eq(run, 3 * SUB);
	uffd_source_unref(s);
	files_free(&f);
}
END_TEST

/* ---- zero ranges: no read at all ---- */

START_TEST(zero_no_read)
{
	/* One page per fault: the reads counted below are each page's own. */
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_NO_AROUND };
	size_t ps = harness_page_size(), npages = 256, hole = 1, touched = 0;
	struct counter *c[NLAYERS];
	struct uffd_restore_stats s;
	uint64_t reads = 0;
	struct files f;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	files_make(&f, NLAYERS, npages * ps, hole);
	env_serve(&e, layered(&f, NLAYERS, c), &o);
	for (size_t p = 0; p < npages; p++) {
		if (!page_hole(ps, p, NLAYERS, hole))
			continue;
		check_page(e.mem, ps, p, NLAYERS, hole);
		touched++;
	}
	ck_assert_uint_ge(touched, 3);
	s = stats_of(e.rs);
	for (unsigned l = 0; l < NLAYERS; l++)
		reads += atomic_load(&c[l]->reads) + atomic_load(&c[l]->nowait);
	ck_assert_uint_eq(reads, 0);
	ck_assert_uint_eq(s.bytes_read, 0);
	ck_assert_uint_ge(s.pages_hole, touched);
	ck_assert_uint_eq(s.faults[UFFD_FAULT_MISSING], touched);
	/* Then one data page: read, from its owner only. */
	check_page(e.mem, ps, 3, NLAYERS, hole);
	ck_assert_uint_eq(atomic_load(&c[2]->reads) + atomic_load(&c[2]->nowait), 1);
	ck_assert_uint_eq(atomic_load(&c[0]->reads) + atomic_load(&c[0]->nowait) +
			  atomic_load(&c[1]->reads) + atomic_load(&c[1]->nowait) +
			  atomic_load(&c[3]->reads) + atomic_load(&c[3]->nowait), 0);
	fprintf(stderr, "%zu zero pages served with no read\n", touched);
	env_free(&e);
	files_free(&f);
}
END_TEST

/* ---- a generated source: late, out of order, sometimes failing ---- */

#define GEN_MAX 64

struct gen {
	struct uffd_source_req *q[GEN_MAX];
	uint64_t due[GEN_MAX], seq[GEN_MAX];
	unsigned n;
	uint64_t next_seq, last_done_seq, inversions, reads;
	unsigned max_n;			/* most reads in flight at once */
	size_t min_len, max_len;	/* shortest and longest read */
	uint64_t unaligned;		/* reads not starting at a multiple of the block */
	size_t block;
	uint64_t rng;
	unsigned min_us, max_us;	/* injected delay per read */
	uint64_t bad_off, bad_len;	/* reads touching this range fail with -EIO */
	unsigned split_us;		/* reads of several pages: the first half at the delay, the rest this much later */
	bool half[GEN_MAX];		/* its first half was given (partial) */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t gen_word(uint64_t byte)
{
	return (byte / 8) * 0x9e3779b97f4a7c15ull ^ 0xfeedfacecafebeefull;
}

static int g_read(void *impl, struct uffd_source_req *req)
{
	struct gen *g = impl;
	uint64_t r;

	if (g->n == GEN_MAX)
		return -EAGAIN;	/* bounded: the engine tries again */
	g->rng ^= g->rng << 13;
	g->rng ^= g->rng >> 7;
	g->rng ^= g->rng << 17;
	r = g->min_us + g->rng % (g->max_us - g->min_us + 1);
	g->q[g->n] = req;
	g->due[g->n] = now_ns() + r * 1000;
	g->seq[g->n] = ++g->next_seq;
	g->half[g->n] = false;
	g->n++;
	g->reads++;
	if (g->n > g->max_n)
		g->max_n = g->n;
	if (!g->min_len || req->len < g->min_len)
		g->min_len = req->len;
	if (req->len > g->max_len)
		g->max_len = req->len;
	g->unaligned += g->block && req->off % g->block;
	return 0;
}

static int g_poll(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns)
{
	struct gen *g = impl;
	uint64_t now = now_ns(), first = UINT64_MAX;

	(void)fds;
	(void)max;
	for (unsigned i = 0; i < g->n; i++)
		if (g->due[i] < first)
			first = g->due[i];
	*timeout_ns = first == UINT64_MAX ? -1 : first <= now ? 0 : (int64_t)(first - now);
	return 0;
}

static void g_complete(struct gen *g, unsigned i, int cancel)
{
	struct uffd_source_req *req = g->q[i];
	uint64_t *w = req->buf;
	bool bad = req->off < g->bad_off + g->bad_len && g->bad_off < req->off + req->len;

	if (g->seq[i] < g->last_done_seq)
		g->inversions++;
	g->last_done_seq = g->seq[i];
	g->q[i] = g->q[g->n - 1];
	g->due[i] = g->due[g->n - 1];
	g->seq[i] = g->seq[g->n - 1];
	g->half[i] = g->half[g->n - 1];
	g->n--;
	if (cancel || bad) {
		req->done(req, cancel ? cancel : -EIO);
		return;
	}
	for (size_t k = 0; k < req->len / 8; k++)
		w[k] = gen_word(req->off + k * 8);
	req->done(req, 0);
}

static void g_process(void *impl, const struct pollfd *fds, unsigned n)
{
	struct gen *g = impl;
	uint64_t now = now_ns();

	(void)fds;
	(void)n;
	for (unsigned i = 0; i < g->n;) {
		struct uffd_source_req *req = g->q[i];

		if (g->due[i] > now) {
			i++;
		} else if (g->split_us && !g->half[i] && req->len > 4096) {
			uint64_t *w = req->buf;	/* the first half now, the rest later */

			for (size_t k = 0; k < req->len / 2 / 8; k++)
				w[k] = gen_word(req->off + k * 8);
			g->half[i] = true;
			g->due[i] = now + g->split_us * 1000ull;
			if (req->partial)
				req->partial(req, req->len / 2);
			i++;
		} else {
			g_complete(g, i, 0);
		}
	}
}

static void g_detach(void *impl)
{
	struct gen *g = impl;

	while (g->n)
		g_complete(g, 0, -ECANCELED);
}

static void g_destroy(void *impl)
{
	free(impl);
}

static const struct uffd_source_ops gen_ops = {
	.size = sizeof(gen_ops), .read = g_read, .poll = g_poll, .process = g_process,
	.detach = g_detach, .destroy = g_destroy,
};

static struct uffd_source *gen_source(size_t len, unsigned min_us, unsigned max_us, struct gen **out)
{
	struct uffd_source_info info = { .size = sizeof(info), .name = "generated", .length = len };
	struct gen *g = calloc(1, sizeof(*g));
	struct uffd_source *s;

	ck_assert_ptr_nonnull(g);
	g->rng = 88172645463325252ull;
	g->min_us = min_us;
	g->max_us = max_us;
	ASSERT_OK(uffd_source_new(&s, &gen_ops, g, &info));
	*out = g;
	return s;
}

static void check_gen(const char *mem, size_t ps, size_t p)
{
	const volatile uint64_t *w = (const volatile uint64_t *)(mem + p * ps);

	for (size_t i = 0; i < ps / 8; i++)
		if (w[i] != gen_word(p * ps + i * 8))
			ck_abort_msg("page %zu word %zu: 0x%llx, want 0x%llx", p, i, (unsigned long long)w[i],
				     (unsigned long long)gen_word(p * ps + i * 8));
}

/*
 * A source with a read depth (a remote one) is read whole blocks at a time,
 * that many at once: a replay of one page per block and the fill read every
 * block whole, never more than the depth in flight, every byte right.
 * Without the depth the same source is read max_read at a time.
 */
static void depth_case(unsigned depth)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH };
	size_t ps = harness_page_size(), npages = 4096, block = 1u << 20, bpages = block / ps;
	struct uffd_source_info info = { .size = sizeof(info), .name = "deep", .length = npages * ps,
					 .block_size = block, .read_depth = depth };
	struct uffd_restore_stats s;
	struct uffd_source *src;
	struct gen *g;
	struct env e;

	SKIP_VALGRIND();
	ck_assert_ptr_nonnull(g = calloc(1, sizeof(*g)));
	if (!env_anon(&e, npages * ps, ps, 0)) {
		free(g);
		SKIP_NO_UFFD();
	}
	g->rng = 88172645463325252ull;
	g->min_us = 1000;
	g->max_us = 3000;
	g->block = block;
	ASSERT_OK(uffd_source_new(&src, &gen_ops, g, &info));
	env_serve(&e, src, &o);
	ASSERT_OK(uffd_restore_wait(e.rs, 20000));
	for (size_t p = 0; p < npages; p++)
		check_gen(e.mem, ps, p);
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_eq(s.bytes_read, npages * ps);
	fprintf(stderr, "read_depth %u: %llu reads of %zu..%zu bytes, %u at once at most, %llu unaligned\n", depth,
		(unsigned long long)g->reads, g->min_len, g->max_len, g->max_n, (unsigned long long)g->unaligned);
	if (depth) {
		ck_assert_uint_eq(g->reads, npages / bpages);	/* a read per block */
		ck_assert_uint_eq(g->min_len, block);
		ck_assert_uint_eq(g->max_len, block);
		ck_assert_uint_eq(g->unaligned, 0);
		ck_assert_uint_le(g->max_n, depth);
		ck_assert_uint_ge(g->max_n, 2);
	} else {
		ck_assert_uint_le(g->max_len, 256u << 10);	/* max_read's default */
	}
	env_free(&e);
}

START_TEST(read_depth_blocks) { depth_case(_i ? 0 : 3); }
END_TEST

/*
 * A replay of a source read a block (4 MiB) at a time reads no large gap
 * of untraced pages: two traced pages 3 MiB apart in one block are two
 * reads (the first page with the block's start before it, the second with
 * the block's last MiB after it), not one of the whole block; a block
 * whose traced pages are 512 KiB apart is still read whole, in one read.
 */
START_TEST(replay_gap)
{
	struct uffd_restore_opts rec = { .size = sizeof(rec), .flags = UFFD_RESTORE_RECORD };
	struct uffd_restore_opts o = { .size = sizeof(o) };
	size_t ps = harness_page_size(), block = 4u << 20, bpages = block / ps, npages = 2 * bpages;
	size_t far = (3u << 20) / ps + 1, want = 2 + (bpages - far) + bpages;
	struct uffd_source_info info = { .size = sizeof(info), .name = "deep", .length = npages * ps,
					 .block_size = block, .read_depth = 4 };
	char dir[] = "/var/tmp/uffd-source-XXXXXX", trace[64];
	struct uffd_restore_stats s;
	struct uffd_source *src;
	struct gen *g;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(trace, sizeof(trace), "%s/trace", dir);
	src = gen_source(npages * ps, 10, 50, &g);
	env_serve(&e, src, &rec);
	check_gen(e.mem, ps, 1);
	check_gen(e.mem, ps, far);
	for (size_t p = bpages; p < npages; p += bpages / 8)
		check_gen(e.mem, ps, p);
	ASSERT_OK(uffd_restore_save_trace(e.rs, trace));
	env_free(&e);	/* and the source with it: env_serve gave the restore its reference */

	ck_assert(env_anon(&e, npages * ps, ps, 0));
	ck_assert_ptr_nonnull(g = calloc(1, sizeof(*g)));
	g->rng = 88172645463325252ull;
	g->min_us = 1000;
	g->max_us = 3000;
	g->block = block;
	ASSERT_OK(uffd_source_new(&src, &gen_ops, g, &info));
	ASSERT_OK(uffd_restore_new(&e.rs, &o));
	ASSERT_OK(uffd_restore_add_region_source(e.rs, e.r, src, 0));
	ASSERT_OK(uffd_restore_load_trace(e.rs, trace));
	ASSERT_OK(uffd_restore_start(e.rs, e.l));
	for (double end = harness_now() + 10; stats_of(e.rs).pages_prefetched < want; usleep(2000))
		ck_assert_msg(harness_now() < end, "the replay did not bring its pages in");
	usleep(100000);	/* a read of more would have completed by now */
	s = stats_of(e.rs);
	env_free(&e);
	fprintf(stderr, "sparse replay of a 4 MiB block: %llu reads, %llu bytes (%zu..%zu a read)\n",
		(unsigned long long)g->reads, (unsigned long long)s.bytes_read, g->min_len, g->max_len);
	ck_assert_uint_eq(s.pages_prefetched, want);
	ck_assert_uint_eq(s.bytes_read, want * ps);
	ck_assert_uint_eq(g->reads, 3);
	ck_assert_uint_eq(g->min_len, 2 * ps);
	ck_assert_uint_eq(g->max_len, block);
	uffd_source_unref(src);
	unlink(trace);
	rmdir(dir);
}
END_TEST

/* Reads complete 1..5 ms late, out of order: every byte still right, the fill completes. */
START_TEST(late_every_byte)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH,
				       .max_read = 64 << 10 };
	size_t ps = harness_page_size(), npages = 1024;
	struct uffd_restore_stats s;
	struct gen *g;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	env_serve(&e, gen_source(npages * ps, 1000, 5000, &g), &o);
	for (size_t p = npages - 1; p < npages; p -= 37)
		check_gen(e.mem, ps, p);
	ASSERT_OK(uffd_restore_wait(e.rs, 20000));
	for (size_t p = 0; p < npages; p++)
		check_gen(e.mem, ps, p);
	s = stats_of(e.rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_eq(s.bytes_read, npages * ps);
	ck_assert_uint_gt(g->inversions, 0);	/* they did complete out of order */
	fprintf(stderr, "late reads: %llu reads, %llu completed out of order, %.1f ms\n",
		(unsigned long long)g->reads, (unsigned long long)g->inversions, (double)s.complete_ns / 1e6);
	env_free(&e);
}
END_TEST

/* A fill of slow reads (20..40 ms each) keeps going; demand faults are served within a bound. */
START_TEST(late_demand_first)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .max_read = 64 << 10, .queue_depth = 8 };
	size_t ps = harness_page_size(), npages = 8192;	/* 32 MiB at ~13 MiB/s: seconds */
	struct uffd_restore_stats s;
	double worst = 0, t0;
	struct gen *g;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	env_serve(&e, gen_source(npages * ps, 20000, 40000, &g), &o);
	usleep(100000);
	for (size_t p = npages - 1; p > npages - 1000; p -= 97) {
		t0 = harness_now();
		check_gen(e.mem, ps, p);
		if (harness_now() - t0 > worst)
			worst = harness_now() - t0;
	}
	s = stats_of(e.rs);
	/* A read takes 40 ms at most: a fault waits for its own read, not for the fill's. */
	ck_assert_msg(worst < 0.25, "a demand fault took %.3f s during the fill", worst);
	ck_assert_uint_gt(s.pages_filled, 0);
	ck_assert_uint_lt(s.pages_present, npages);
	fprintf(stderr, "demand during a slow fill: worst %.1f ms, %llu pages filled meanwhile\n", worst * 1e3,
		(unsigned long long)s.pages_filled);
	env_free(&e);	/* mid-fill: the source's reads are cancelled at detach, nothing hangs */
}
END_TEST

/*
 * A run whose first half arrives 5 ms in and the rest 800 ms later: the
 * pages of the first half are mapped at once (partial), a fault on one
 * does not wait for the rest.
 */
START_TEST(partial_early)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL,
				       .max_read = 64 << 10, .queue_depth = 1 };
	size_t ps = harness_page_size(), npages = 64, run = (64 << 10) / ps;
	struct uffd_restore_stats s;
	struct uffd_source *src;
	double t0, took;
	struct gen *g;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	src = gen_source(npages * ps, 5000, 5000, &g);
	g->split_us = 800000;
	env_serve(&e, src, &o);
	usleep(100000);	/* the first run's first half is in, its second half 700 ms away */
	t0 = harness_now();
	check_gen(e.mem, ps, run / 2 - 1);
	took = harness_now() - t0;
	s = stats_of(e.rs);
	ck_assert_msg(took < 0.3, "a page of the arrived half took %.3f s", took);
	ck_assert_uint_eq(s.pages_present, 0);	/* the run itself has not ended */
	ck_assert_uint_eq(harness_pagemap(e.mem + (run / 2) * ps) >> 63, 0);	/* nor its second half come */
	ASSERT_OK(uffd_restore_wait(e.rs, 20000));
	for (size_t p = 0; p < npages; p++)
		check_gen(e.mem, ps, p);
	fprintf(stderr, "partial: a page of the first half in %.1f ms, the run takes 805 ms\n", took * 1e3);
	env_free(&e);
}
END_TEST

/*
 * A source whose reads are done by a worker thread of its own (as a
 * client library calling back on its threads): the worker generates the
 * bytes and queues the request; the restore thread hears of it through
 * the eventfd the source's poll gives (_i = 0) or through
 * uffd_source_notify() (_i = 1), and process calls done.
 */
#define TQ 32

struct threaded {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct uffd_source_req *todo[TQ], *ready[TQ];
	unsigned ntodo, nready, inflight;
	bool stop, use_notify;
	int efd;
	struct uffd_source *self;
	pthread_t worker;
	uint64_t processed;
};

static void *t_worker(void *arg)
{
	struct threaded *t = arg;

	pthread_mutex_lock(&t->lock);
	for (;;) {
		struct uffd_source_req *req;
		uint64_t one = 1;

		while (!t->ntodo && !t->stop)
			pthread_cond_wait(&t->cond, &t->lock);
		if (t->stop)
			break;
		req = t->todo[--t->ntodo];	/* newest first: out of order */
		pthread_mutex_unlock(&t->lock);
		usleep(200);
		for (size_t k = 0; k < req->len / 8; k++)
			((uint64_t *)req->buf)[k] = gen_word(req->off + k * 8);
		pthread_mutex_lock(&t->lock);
		t->ready[t->nready++] = req;
		if (t->use_notify)
			uffd_source_notify(t->self);
		else
			ck_assert_int_eq(write(t->efd, &one, sizeof(one)), sizeof(one));
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

static int t_read(void *impl, struct uffd_source_req *req)
{
	struct threaded *t = impl;
	int err = 0;

	pthread_mutex_lock(&t->lock);
	if (t->inflight == TQ)
		err = -EAGAIN;
	else {
		t->inflight++;
		t->todo[t->ntodo++] = req;
		pthread_cond_signal(&t->cond);
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

static int t_poll(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns)
{
	struct threaded *t = impl;

	(void)max;
	*timeout_ns = -1;
	fds[0] = (struct pollfd){ .fd = t->efd, .events = POLLIN };
	return 1;
}

static void t_process(void *impl, const struct pollfd *fds, unsigned n)
{
	struct threaded *t = impl;
	struct uffd_source_req *done[TQ];
	unsigned k;
	uint64_t v;

	if (n && (fds[0].revents & POLLIN))
		ck_assert_int_eq(read(t->efd, &v, sizeof(v)), sizeof(v));
	pthread_mutex_lock(&t->lock);
	k = t->nready;
	memcpy(done, t->ready, k * sizeof(*done));
	t->nready = 0;
	t->inflight -= k;
	t->processed++;
	pthread_mutex_unlock(&t->lock);
	for (unsigned i = 0; i < k; i++)	/* outside the lock: done may start reads */
		done[i]->done(done[i], 0);
}

static const struct uffd_source_ops threaded_efd_ops = {
	.size = sizeof(threaded_efd_ops), .read = t_read, .poll = t_poll, .process = t_process,
};
static const struct uffd_source_ops threaded_notify_ops = {
	.size = sizeof(threaded_notify_ops), .read = t_read, .process = t_process,
};

START_TEST(threaded_source)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH,
				       .max_read = 32 << 10 };
	size_t ps = harness_page_size(), npages = 2048;
	struct uffd_source_info info = { .size = sizeof(info), .name = "threaded", .length = npages * ps,
					 .max_fds = 1 };
	struct threaded t = { .use_notify = _i == 1 };
	struct uffd_restore_stats st;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	pthread_mutex_init(&t.lock, NULL);
	pthread_cond_init(&t.cond, NULL);
	t.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	ck_assert_int_ge(t.efd, 0);
	ASSERT_OK(uffd_source_new(&t.self, t.use_notify ? &threaded_notify_ops : &threaded_efd_ops, &t, &info));
	ck_assert_int_eq(pthread_create(&t.worker, NULL, t_worker, &t), 0);
	ASSERT_OK(uffd_restore_new(&e.rs, &o));
	ASSERT_OK(uffd_restore_add_region_source(e.rs, e.r, t.self, 0));
	ASSERT_OK(uffd_restore_start(e.rs, e.l));
	for (size_t p = npages - 1; p < npages; p -= 101)
		check_gen(e.mem, ps, p);
	ASSERT_OK(uffd_restore_wait(e.rs, 20000));
	for (size_t p = 0; p < npages; p++)
		check_gen(e.mem, ps, p);
	st = stats_of(e.rs);
	ck_assert_uint_eq(st.pages_present, npages);
	ck_assert_uint_gt(t.processed, 0);
	fprintf(stderr, "threaded source (%s): %llu process calls, %.1f ms\n", t.use_notify ? "notify" : "eventfd",
		(unsigned long long)t.processed, (double)st.complete_ns / 1e6);
	env_free(&e);	/* the restore's reference goes: the source is ours again */
	pthread_mutex_lock(&t.lock);
	t.stop = true;
	pthread_cond_signal(&t.cond);
	pthread_mutex_unlock(&t.lock);
	pthread_join(t.worker, NULL);
	uffd_source_unref(t.self);
	close(t.efd);
	pthread_mutex_destroy(&t.lock);
	pthread_cond_destroy(&t.cond);
}
END_TEST

/* A replay of slow reads (20..40 ms each) keeps going; demand faults are served within a bound. */
START_TEST(late_demand_during_replay)
{
	struct uffd_restore_opts rec = { .size = sizeof(rec), .flags = UFFD_RESTORE_RECORD };
	struct uffd_restore_opts o = { .size = sizeof(o), .queue_depth = 8 };
	size_t ps = harness_page_size(), npages = 4096, traced = 0;
	char dir[] = "/var/tmp/uffd-source-XXXXXX", trace[64];
	struct uffd_restore_stats s;
	struct uffd_source *src;
	double worst = 0, t0;
	struct gen *g;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(trace, sizeof(trace), "%s/trace", dir);
	/* The working set, recorded with quick reads: every fourth page. */
	env_serve(&e, gen_source(npages * ps, 10, 50, &g), &rec);
	for (size_t p = 0; p < npages; p += 4, traced++)
		check_gen(e.mem, ps, p);
	ASSERT_OK(uffd_restore_save_trace(e.rs, trace));
	env_free(&e);
	/* Replayed with slow reads: one page a read, eight at a time, seconds in all. */
	ck_assert(env_anon(&e, npages * ps, ps, 0));
	ASSERT_OK(uffd_restore_new(&e.rs, &o));
	src = gen_source(npages * ps, 20000, 40000, &g);
	ASSERT_OK(uffd_restore_add_region_source(e.rs, e.r, src, 0));
	uffd_source_unref(src);	/* the restore holds it */
	ASSERT_OK(uffd_restore_load_trace(e.rs, trace));
	ASSERT_OK(uffd_restore_start(e.rs, e.l));
	usleep(100000);
	for (size_t p = npages - 2; p > npages - 800; p -= 40) {	/* pages off the trace */
		t0 = harness_now();
		check_gen(e.mem, ps, p);
		if (harness_now() - t0 > worst)
			worst = harness_now() - t0;
	}
	s = stats_of(e.rs);
	ck_assert_msg(worst < 0.25, "a demand fault took %.3f s during the replay", worst);
	ck_assert_uint_gt(s.pages_prefetched, 0);
	ck_assert_uint_lt(s.pages_prefetched, traced);
	fprintf(stderr, "demand during a slow replay: worst %.1f ms, %llu of %zu traced pages in meanwhile\n",
		worst * 1e3, (unsigned long long)s.pages_prefetched, traced);
	env_free(&e);
	unlink(trace);
	rmdir(dir);
}
END_TEST

/* ---- a source that fails ---- */

static sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_seen;

static void on_bus(int sig)
{
	(void)sig;
	bus_seen = 1;
	siglongjmp(bus_jmp, 1);
}

START_TEST(source_errors)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	size_t ps = harness_page_size(), npages = 64, bad = 40;
	struct sigaction sa = { .sa_handler = on_bus }, old;
	struct uffd_restore_stats s;
	struct uffd_source *src;
	struct gen *g;
	struct env e;

	SKIP_VALGRIND();
	if (!env_anon(&e, npages * ps, ps, UFFD_LOOP_POISON_ON_ERROR))
		SKIP_NO_UFFD();
	if (!(uffd_features(e.u) & UFFD_FEATURE_POISON)) {
		env_free(&e);
		SKIP_TEST("UFFD_FEATURE_POISON is not available");
	}
	src = gen_source(npages * ps, 100, 500, &g);
	g->bad_off = bad * ps;
	g->bad_len = 1;
	env_serve(&e, src, &o);
	ck_assert_int_eq(uffd_restore_wait(e.rs, 10000), -EIO);
	ck_assert_str_ne(uffd_last_error(), "");
	s = stats_of(e.rs);
	ck_assert_uint_ge(s.read_errors, 1);
	/* The failed page was never mapped; every other page has its bytes. */
	ck_assert_uint_eq(harness_pagemap(e.mem + bad * ps) >> 63, 0);
	for (size_t p = 0; p < npages; p++)
		if (p != bad)
			check_gen(e.mem, ps, p);
	/* A fault on it: its read fails again, the page is poisoned, the thread gets SIGBUS, not wrong data. */
	sigaction(SIGBUS, &sa, &old);
	bus_seen = 0;
	if (!sigsetjmp(bus_jmp, 1))
		(void)*(volatile char *)(e.mem + bad * ps);
	sigaction(SIGBUS, &old, NULL);
	ck_assert_int_eq(bus_seen, 1);
	env_free(&e);
}
END_TEST

/* ---- record and replay on layers ---- */

#define RR_SET 96

static uint64_t rr_run(const struct files *f, const char *save, const char *load, uint64_t *prefetched)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = save ? UFFD_RESTORE_RECORD : 0 };
	size_t ps = harness_page_size(), npages = f->len / ps;
	struct uffd_restore_stats s;
	struct uffd_source *src;
	uint64_t faults;
	struct env e;

	if (!env_anon(&e, f->len, ps, 0))
		return UINT64_MAX;
	src = layered(f, NLAYERS, NULL);

	ASSERT_OK(uffd_restore_new(&e.rs, &o));
	ASSERT_OK(uffd_restore_add_region_source(e.rs, e.r, src, 0));
	uffd_source_unref(src);	/* the restore holds it */
	if (load)
		ASSERT_OK(uffd_restore_load_trace(e.rs, load));
	ASSERT_OK(uffd_restore_start(e.rs, e.l));
	if (load) {
		double end = harness_now() + 5;

		while (stats_of(e.rs).pages_prefetched < *prefetched && harness_now() < end)
			usleep(1000);
	}
	for (size_t k = 0; k < RR_SET; k++)	/* the working set: every other data page, backwards */
		check_page(e.mem, ps, npages - 1 - 2 * k, NLAYERS, f->hole);
	s = stats_of(e.rs);
	faults = s.faults[UFFD_FAULT_MISSING];
	if (save)
		ASSERT_OK(uffd_restore_save_trace(e.rs, save));
	*prefetched = s.pages_prefetched;
	env_free(&e);
	return faults;
}

START_TEST(record_replay_layered)
{
	size_t ps = harness_page_size();
	uint64_t first, second, pre = 0;
	char trace[128];
	struct files f;

	SKIP_VALGRIND();
	files_make(&f, NLAYERS, 512 * ps, 1);
	snprintf(trace, sizeof(trace), "%s/working-set.trace", f.dir);
	first = rr_run(&f, trace, NULL, &pre);
	if (first == UINT64_MAX) {
		files_free(&f);
		SKIP_NO_UFFD();
	}
	ck_assert_uint_eq(first, RR_SET);
	pre = RR_SET;	/* holes among the set are not prefetched: they are done from the start */
	for (size_t k = 0; k < RR_SET; k++)
		pre -= page_hole(ps, 512 - 1 - 2 * k, NLAYERS, f.hole);
	second = rr_run(&f, NULL, trace, &pre);
	ck_assert_msg(second * 10 <= first, "replay: %llu demand faults, first run %llu",
		      (unsigned long long)second, (unsigned long long)first);
	fprintf(stderr, "layered record/replay: %llu faults, then %llu (%llu prefetched)\n",
		(unsigned long long)first, (unsigned long long)second, (unsigned long long)pre);
	files_free(&f);
}
END_TEST

/* ---- bad input ---- */

static void never_done(struct uffd_source_req *req, int res)
{
	ck_abort_msg("a refused read completed (%p, %d)", (void *)req, res);
}

START_TEST(bad_layers)
{
	struct uffd_source_info info = { .size = sizeof(info), .length = 4096 };
	struct uffd_source_ops ops = { .size = sizeof(ops) };
	struct uffd_source *l[2], *s;
	struct uffd_source_req req = { 0 };
	char buf[128];
	uint64_t run;
	struct files f, g;
	int wfd;

	files_make(&f, 2, 64 * SUB, 1);
	files_make(&g, 1, 32 * SUB, 1);
	l[0] = file_source(&f, 0);
	l[1] = file_source(&g, 0);
	ASSERT_ERR(uffd_source_layered(&s, l, 2, NULL), -EINVAL, "every layer must be of one size");
	ck_assert_ptr_null(s);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "layer0"));
	ASSERT_ERR(uffd_source_layered(&s, l, 0, NULL), -EINVAL, "between 1 and 64");
	uffd_source_unref(l[1]);
	/* A file too short for its range, a write-only fd, unknown flags. */
	ASSERT_ERR(uffd_source_file(&s, f.fd[0], &(struct uffd_source_file_opts){ .size = sizeof(struct uffd_source_file_opts),
		   .offset = 64 * SUB }), -EINVAL, "does not hold");
	snprintf(buf, sizeof(buf), "%s/layer0", f.dir);
	wfd = open(buf, O_WRONLY | O_CLOEXEC);
	ck_assert_int_ge(wfd, 0);
	ASSERT_ERR(uffd_source_file(&s, wfd, NULL), -EBADF, "not open for reading");
	close(wfd);
	ASSERT_ERR(uffd_source_file(&s, f.fd[0], &(struct uffd_source_file_opts){ .size = sizeof(struct uffd_source_file_opts),
		   .flags = 1u << 7 }), -EINVAL, "flags");
	/* A user source: read is required, the block size a power of two. */
	ASSERT_ERR(uffd_source_new(&s, &ops, NULL, &info), -EINVAL, "read");
	ops.read = g_read;
	info.block_size = 3000;
	ASSERT_ERR(uffd_source_new(&s, &ops, NULL, &info), -EINVAL, "power of two");
	info.block_size = 4096;
	info.read_depth = 257;
	ASSERT_ERR(uffd_source_new(&s, &ops, NULL, &info), -EINVAL, "read_depth 257 is above 256");
	info.block_size = 128u << 20;
	info.read_depth = 4;
	ASSERT_ERR(uffd_source_new(&s, &ops, NULL, &info), -EINVAL, "above 64 MiB");
	info.read_depth = 0;
	/* Ranges are checked; a source not attached does not read. */
	req.buf = buf;
	req.done = never_done;
	req.off = 64 * SUB - 8;
	req.len = 16;
	ASSERT_ERR(uffd_source_read(l[0], &req), -EINVAL, "not within");
	req.len = 8;
	ASSERT_ERR(uffd_source_read(l[0], &req), -ENOTCONN, "not attached");
	ASSERT_ERR(uffd_source_extent(l[0], 0, 0, &run), -EINVAL, "empty");
	ck_assert_int_eq(uffd_source_read_nowait(l[0], 0, 8, buf), 0);
	ck_assert_uint_eq(*(uint64_t *)buf, word(0, 0, 0));
	ck_assert_str_eq(uffd_source_name(l[0]), "layer0");
	ck_assert_uint_eq(uffd_source_block_size(l[0]), 4096);
	ck_assert_uint_eq(uffd_source_length(NULL), 0);
	uffd_source_unref(l[0]);
	files_free(&f);
	files_free(&g);
}
END_TEST

/* A source serves one restore at a time; a region must be covered. */
START_TEST(restore_args)
{
	struct uffd_restore *rs2;
	struct uffd_source *s;
	size_t ps = harness_page_size();
	struct files f;
	struct env e, e2;

	SKIP_VALGRIND();
	if (!env_anon(&e, 8 * ps, ps, 0))
		SKIP_NO_UFFD();
	ck_assert(env_anon(&e2, 8 * ps, ps, 0));
	files_make(&f, 1, 8 * ps, 1);
	s = file_source(&f, 0);
	ASSERT_OK(uffd_restore_new(&e.rs, NULL));
	ASSERT_ERR(uffd_restore_add_region_source(e.rs, e.r, NULL, 0), -EINVAL, "source is NULL");
	ASSERT_ERR(uffd_restore_add_region_source(e.rs, e.r, s, ps), -EINVAL, "does not cover");
	ASSERT_OK(uffd_restore_add_region_source(e.rs, e.r, s, 0));
	ASSERT_OK(uffd_restore_start(e.rs, e.l));
	ASSERT_OK(uffd_restore_new(&rs2, NULL));
	ASSERT_ERR(uffd_restore_add_region_source(rs2, e2.r, s, 0), -EBUSY, "own source");
	check_page(e.mem, ps, 5, 1, 1);
	/* Once the first restore is freed, the source may serve another. */
	uffd_restore_free(e.rs);
	e.rs = NULL;
	ASSERT_OK(uffd_restore_add_region_source(rs2, e2.r, s, 0));
	ASSERT_OK(uffd_restore_start(rs2, e2.l));
	check_page(e2.mem, ps, 6, 1, 1);
	uffd_restore_free(rs2);
	uffd_source_unref(s);
	env_free(&e);
	env_free(&e2);
	files_free(&f);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("source");
	TCase *tc;

	tc = CASE(file_4k, 30);
	tcase_add_test(tc, file_4k);
	tc = CASE(file_memfd, 30);
	tcase_add_test(tc, file_memfd);
	tc = CASE(file_2m, 30);
	tcase_add_test(tc, file_2m);
	tc = CASE(layered_4k, 30);
	tcase_add_test(tc, layered_4k);
	tc = CASE(layered_memfd, 30);
	tcase_add_test(tc, layered_memfd);
	tc = CASE(layered_2m, 30);
	tcase_add_test(tc, layered_2m);
	tc = CASE(layered_extents, 20);
	tcase_add_test(tc, layered_extents);
	tc = CASE(zero_no_read, 20);
	tcase_add_test(tc, zero_no_read);
	tc = CASE(late_every_byte, 30);
	tcase_add_test(tc, late_every_byte);
	tc = CASE(read_depth_blocks, 30);
	tcase_add_loop_test(tc, read_depth_blocks, 0, 2);
	tc = CASE(late_demand_first, 30);
	tcase_add_test(tc, late_demand_first);
	tc = CASE(replay_gap, 30);
	tcase_add_test(tc, replay_gap);
	tc = CASE(late_demand_during_replay, 30);
	tcase_add_test(tc, late_demand_during_replay);
	tc = CASE(partial_early, 30);
	tcase_add_test(tc, partial_early);
	tc = CASE(threaded_source, 30);
	tcase_add_loop_test(tc, threaded_source, 0, 2);
	tc = CASE(source_errors, 20);
	tcase_add_test(tc, source_errors);
	tc = CASE(record_replay_layered, 30);
	tcase_add_test(tc, record_replay_layered);
	tc = CASE(bad_layers, 20);
	tcase_add_test(tc, bad_layers);
	tc = CASE(restore_args, 20);
	tcase_add_test(tc, restore_args);
	return s;
}

int main(void)
{
	return harness_run(suite());
}
