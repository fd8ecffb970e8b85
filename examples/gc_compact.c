/* SPDX-License-Identifier: MIT */
/*
 * Concurrent heap compaction, as Android's runtime (ART's userfaultfd
 * mark-compact collector) does it with minor faults on shared memory.
 *
 * A heap of 64-byte objects, each referencing two others, some of them
 * garbage. In a short pause the collector marks the live objects, gives
 * each its new place (sliding compaction: live objects keep their order,
 * packed from the start of to-space) and points the roots to the new
 * places. Then the mutators resume at once, on to-space: a memfd region
 * whose pages are in the page cache but not mapped in the base view.
 *
 *  - The GC thread compacts to-space page after page: it copies the page's
 *    objects from from-space into the page through the alias view, fixing
 *    their references on the way, and maps finished pages with
 *    uffd_region_continue(UFFD_SKIP_EXISTING).
 *  - A mutator touching a page the GC thread has not reached takes a MINOR
 *    fault. Its handler compacts that page first and returns UFFD_RESOLVE
 *    (CONTINUE). If the GC thread is compacting it right now the handler
 *    waits: UFFD_DEFER in the loop (the GC thread's CONTINUE wakes the
 *    mutator), a retried access in SIGBUS mode.
 *
 * Who compacts a page is decided by one compare-and-swap on its state, and
 * compacting is plain loads and stores: so the same function runs in the
 * loop's thread and, in the second run, inside the mutator's SIGBUS
 * handler (async-signal-safe: no locks, no malloc).
 *
 * Mutators follow references from the roots, check each object they reach
 * and update it. At the end the whole object graph is checked: every live
 * object in its new place with its references fixed and every update kept.
 *
 * usage: gc_compact [--mib N] [--mutators N] [--summary]
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <uffd.h>

#include "common.h"

#define PROG "gc_compact"
#define NREF 2
#define DEPTH 16		/* objects a mutator visits from one root */
#define GC_BATCH 8		/* pages the GC thread maps per call */
#define MAX_MUTATORS 64

struct obj {
	uint64_t id;		/* never changes */
	uint64_t counter;	/* updated by the mutators */
	uint64_t ref[NREF];	/* slots of the objects referenced */
	uint64_t ref_id[NREF];	/* their ids, to check every reference followed */
	uint64_t payload[2];	/* a function of the id */
};

enum page_state { TODO, BUSY, DONE };	/* DONE: contents final */

struct heap {
	/* before the pause */
	struct obj *from;	/* from-space: immutable once compaction starts */
	uint64_t nslots, nlive, nroots;
	uint64_t *fwd;		/* from-space slot -> to-space slot (live only) */
	uint64_t *live;		/* to-space slot -> from-space slot */
	uint64_t *roots_from;	/* roots, as from-space slots */
	size_t ps, per_page;
	uint64_t to_pages;
};

/* One compaction of the heap, with the loop or in SIGBUS mode. */
struct run {
	const struct heap *h;
	bool sigbus;
	unsigned nmut;
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *loop;
	struct obj *to;		/* the base view: what the mutators use */
	char *alias;		/* where compaction writes */
	uint64_t *roots;	/* to-space slots */
	_Atomic unsigned char *state;
	atomic_uint *updates;	/* mutator updates per object id */
	atomic_uint ready;	/* mutators running: the GC thread starts then */
	atomic_bool gc_done;
	atomic_ulong by_gc, by_fault, faults, bad;
	/* results */
	struct ex_lat pauses;
	uint64_t gc_ns, ops;
	int err;
};

static uint64_t payload(uint64_t id, int i)
{
	return ex_pattern(0x6c0bec7ull, id, (uint64_t)i);
}

/* ---- compaction: async-signal-safe ---- */

static void compact_page(const struct run *x, uint64_t k)
{
	const struct heap *h = x->h;
	struct obj *dst = (struct obj *)(x->alias + k * h->ps);
	uint64_t first = k * h->per_page;

	for (uint64_t s = first; s < first + h->per_page && s < h->nlive; s++, dst++) {
		const struct obj *src = &h->from[h->live[s]];

		dst->id = src->id;
		dst->counter = src->counter;
		for (int i = 0; i < NREF; i++) {
			dst->ref[i] = h->fwd[src->ref[i]];
			dst->ref_id[i] = src->ref_id[i];
		}
		dst->payload[0] = src->payload[0];
		dst->payload[1] = src->payload[1];
	}
}

/* Compacts page k unless someone else did or does: its state afterwards (BUSY: someone else is at it). */
static int compact_claim(struct run *x, uint64_t k, atomic_ulong *by)
{
	unsigned char s = TODO;

	if (!atomic_compare_exchange_strong(&x->state[k], &s, BUSY))
		return s;
	compact_page(x, k);
	atomic_store_explicit(&x->state[k], DONE, memory_order_release);
	atomic_fetch_add(by, 1);
	return DONE;
}

/* The MINOR fault handler of both modes (the loop's thread, or the mutator's SIGBUS handler). */
static int on_minor(void *ctx, struct uffd_fault *f)
{
	struct run *x = ctx;
	uint64_t k = f->offset / x->h->ps;

	atomic_fetch_add(&x->faults, 1);
	if (k >= x->h->to_pages)
		return -EFAULT;		/* no object lives there */
	return compact_claim(x, k, &x->by_fault) == DONE ? UFFD_RESOLVE : UFFD_DEFER;
}

/* ---- the GC thread ---- */

/* Maps the DONE pages of [k, end); a page another thread is compacting is left to it. */
static int map_done(struct run *x, uint64_t k, uint64_t end)
{
	while (k < end) {
		uint64_t j = k;
		int err;

		while (j < end && atomic_load_explicit(&x->state[j], memory_order_acquire) == DONE)
			j++;
		if (j > k && (err = uffd_region_continue(x->r, k * x->h->ps, (j - k) * x->h->ps,
							 UFFD_SKIP_EXISTING, NULL)))
			return err;
		k = j + 1;
	}
	return 0;
}

static void *gc_thread(void *arg)
{
	struct run *x = arg;
	uint64_t n = x->h->to_pages, t0 = ex_now_ns();
	size_t done = 0;
	int err = 0;

	for (uint64_t k = 0; k < n && !err; k += GC_BATCH) {
		uint64_t end = k + GC_BATCH < n ? k + GC_BATCH : n;

		for (uint64_t j = k; j < end; j++)
			compact_claim(x, j, &x->by_gc);
		err = map_done(x, k, end);
	}
	/* Pages a fault handler was compacting: wait until done, then map everything left. */
	for (uint64_t k = 0; k < n && !err; k++)
		while (atomic_load_explicit(&x->state[k], memory_order_acquire) != DONE)
			;
	if (!err)
		err = uffd_region_continue(x->r, 0, n * x->h->ps, UFFD_SKIP_EXISTING, &done);
	x->gc_ns = ex_now_ns() - t0;
	if (err) {
		ex_fail(PROG, "mapping compacted pages", err);
		x->err = err;
	}
	atomic_store(&x->gc_done, true);
	return NULL;
}

/* ---- mutators ---- */

struct mutator {
	struct run *x;
	uint64_t seed, ops;
	struct ex_lat pauses;	/* accesses to pages not compacted yet */
};

static bool obj_ok(const struct obj *o, uint64_t want_id)
{
	return o->id == want_id && o->payload[0] == payload(want_id, 0) &&
	       o->payload[1] == payload(want_id, 1);
}

/* From a random root, follow DEPTH references: check and update each object. */
static void *mutator(void *arg)
{
	struct mutator *m = arg;
	struct run *x = m->x;
	const struct heap *h = x->h;

	atomic_fetch_add(&x->ready, 1);
	while (!atomic_load_explicit(&x->gc_done, memory_order_relaxed)) {
		uint64_t root = ex_rand(&m->seed) % h->nroots, slot = x->roots[root];
		uint64_t want = h->from[h->roots_from[root]].id;

		for (int d = 0; d < DEPTH; d++) {
			uint64_t k = slot / h->per_page, t0 = ex_now_ns(), id;
			bool cold = atomic_load_explicit(&x->state[k], memory_order_relaxed) != DONE;
			struct obj *o = &x->to[slot];
			int i = (int)(ex_rand(&m->seed) % NREF);

			id = o->id;
			if (!obj_ok(o, want))
				atomic_fetch_add(&x->bad, 1);
			__atomic_fetch_add(&o->counter, 1, __ATOMIC_RELAXED);
			if (cold)
				ex_lat_add(&m->pauses, ex_now_ns() - t0);
			if (id < h->nslots)
				atomic_fetch_add_explicit(&x->updates[id], 1, memory_order_relaxed);
			want = o->ref_id[i];
			slot = o->ref[i];
			m->ops++;
			if (slot >= h->nlive) {
				atomic_fetch_add(&x->bad, 1);
				break;
			}
		}
	}
	return NULL;
}

/* ---- building the heap and the pause ---- */

static int build_heap(struct heap *h, size_t mib, size_t ps)
{
	uint64_t seed = 0x9c1ull, *queue;
	unsigned char *mark;
	uint64_t head = 0, tail = 0, cand = 0, *cands;

	h->ps = ps;
	h->per_page = ps / sizeof(struct obj);
	h->nslots = (uint64_t)mib * (1 << 20) / sizeof(struct obj);
	h->from = mmap(NULL, h->nslots * sizeof(struct obj), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->fwd = calloc(h->nslots, sizeof(uint64_t));
	h->live = calloc(h->nslots, sizeof(uint64_t));
	h->roots_from = calloc(h->nslots, sizeof(uint64_t));
	queue = calloc(h->nslots, sizeof(uint64_t));
	cands = calloc(h->nslots, sizeof(uint64_t));
	mark = calloc(h->nslots, 1);
	if (h->from == MAP_FAILED || !h->fwd || !h->live || !h->roots_from || !queue || !cands || !mark)
		return -ENOMEM;
	/* The mutators' old allocations: 60% candidates to stay alive, referencing each other. */
	for (uint64_t s = 0; s < h->nslots; s++)
		if (ex_rand(&seed) % 10 < 6)
			cands[cand++] = s;
	for (uint64_t s = 0; s < h->nslots; s++) {
		struct obj *o = &h->from[s];

		o->id = s;
		o->counter = s * 3;
		o->payload[0] = payload(s, 0);
		o->payload[1] = payload(s, 1);
		for (int i = 0; i < NREF; i++)
			o->ref[i] = cands[ex_rand(&seed) % cand];
	}
	for (uint64_t s = 0; s < h->nslots; s++)
		for (int i = 0; i < NREF; i++)
			h->from[s].ref_id[i] = h->from[h->from[s].ref[i]].id;
	/* Mark: everything reachable from the roots, a sixteenth of the candidates. */
	h->nroots = cand / 16 ? cand / 16 : 1;
	for (uint64_t i = 0; i < h->nroots; i++) {
		uint64_t s = cands[ex_rand(&seed) % cand];

		h->roots_from[i] = s;
		if (!mark[s]++)
			queue[tail++] = s;
	}
	while (head < tail)
		for (int i = 0; i < NREF; i++) {
			uint64_t t = h->from[queue[head]].ref[i];

			if (!mark[t]++)
				queue[tail++] = t;
			if (i == NREF - 1)
				head++;
		}
	/* Sliding compaction: new places in address order. */
	for (uint64_t s = 0; s < h->nslots; s++)
		if (mark[s]) {
			h->fwd[s] = h->nlive;
			h->live[h->nlive++] = s;
		}
	h->to_pages = (h->nlive + h->per_page - 1) / h->per_page;
	free(queue);
	free(cands);
	free(mark);
	return 0;
}

static void heap_free(struct heap *h)
{
	if (h->from && h->from != MAP_FAILED)
		munmap(h->from, h->nslots * sizeof(struct obj));
	free(h->fwd);
	free(h->live);
	free(h->roots_from);
}

/* The region is made, its pages put in the page cache (zeroed), the roots flipped. */
static int run_setup(struct run *x)
{
	const struct heap *h = x->h;
	struct uffd_opts uo = { .size = sizeof(uo), .want_features = UFFD_FEATURES_DEFAULT,
				.features = UFFD_FEATURE_MINOR_SHMEM };
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = h->to_pages * h->ps,
				       .modes = UFFDIO_REGISTER_MODE_MINOR, .fd = -1, .name = "to-space" };
	struct uffd_handlers hd = { .minor = on_minor };
	struct uffd_loop_opts lo = { .size = sizeof(lo), .flags = UFFD_LOOP_POISON_ON_ERROR };
	size_t chunk = 1 << 20;
	void *zero = calloc(1, chunk);
	int err;

	if (x->sigbus)
		uo.features |= UFFD_FEATURE_SIGBUS;
	x->state = calloc(h->to_pages, 1);
	x->updates = calloc(h->nslots, sizeof(*x->updates));
	x->roots = calloc(h->nroots, sizeof(uint64_t));
	if (!zero || !x->state || !x->updates || !x->roots)
		return ex_fail(PROG, "calloc", -ENOMEM);
	if ((err = uffd_open(&x->u, &uo)))
		return ex_fail(PROG, "uffd_open", err);
	if ((err = uffd_region_create(x->u, &ro, &x->r)))
		return ex_fail(PROG, "uffd_region_create", err);
	for (size_t off = 0; off < ro.length && !err; off += chunk)
		err = uffd_region_populate(x->r, off, zero, ro.length - off < chunk ? ro.length - off : chunk, 0);
	free(zero);
	if (err)
		return ex_fail(PROG, "uffd_region_populate", err);
	x->to = uffd_region_base(x->r);
	x->alias = uffd_region_alias(x->r);
	if (x->sigbus)
		err = uffd_sigbus_add_region(x->r, on_minor, x);
	else if (!(err = uffd_loop_new(&x->loop, &lo)) &&
		 !(err = uffd_loop_add_region(x->loop, x->r, &hd, x)))
		err = uffd_loop_start(x->loop, 1);
	if (err)
		return ex_fail(PROG, x->sigbus ? "uffd_sigbus_add_region" : "starting the loop", err);
	for (uint64_t i = 0; i < h->nroots; i++)	/* the flip */
		x->roots[i] = h->fwd[h->roots_from[i]];
	return 0;
}

/* ---- checking the result ---- */

/* Every live object in its new place, references fixed, updates kept; the graph whole. */
static uint64_t verify(struct run *x)
{
	const struct heap *h = x->h;
	const struct obj *to = (const struct obj *)x->alias;
	uint64_t bad = 0, reached = 0, head = 0, tail = 0;
	uint64_t *queue = calloc(h->nlive, sizeof(uint64_t));
	unsigned char *seen = calloc(h->nlive, 1);

	for (uint64_t s = 0; s < h->nlive; s++) {
		const struct obj *o = &to[s], *old = &h->from[h->live[s]];
		bool ok = obj_ok(o, old->id) &&
			  o->counter == old->counter + atomic_load(&x->updates[old->id]);

		for (int i = 0; i < NREF; i++)
			ok = ok && o->ref[i] == h->fwd[old->ref[i]] && o->ref_id[i] == old->ref_id[i] &&
			     to[o->ref[i]].id == o->ref_id[i];
		bad += !ok;
	}
	if (!queue || !seen) {
		free(queue);
		free(seen);
		return bad + 1;
	}
	for (uint64_t i = 0; i < h->nroots; i++)
		if (!seen[x->roots[i]]++)
			queue[tail++] = x->roots[i];
	for (; head < tail; head++, reached++)
		for (int i = 0; i < NREF; i++) {
			uint64_t t = to[queue[head]].ref[i];

			if (t < h->nlive && !seen[t]++)
				queue[tail++] = t;
		}
	free(queue);
	free(seen);
	return bad + (reached != h->nlive);
}

static int compact(struct run *x)
{
	struct mutator m[MAX_MUTATORS];
	pthread_t gt, mt[MAX_MUTATORS];
	int err = run_setup(x);

	if (err)
		return err;
	for (unsigned i = 0; i < x->nmut; i++) {
		m[i] = (struct mutator){ .x = x, .seed = 0xabcdefull * (i + 1) };
		pthread_create(&mt[i], NULL, mutator, &m[i]);
	}
	while (atomic_load(&x->ready) < x->nmut)	/* the pause ends: all run at once */
		;
	pthread_create(&gt, NULL, gc_thread, x);
	pthread_join(gt, NULL);
	for (unsigned i = 0; i < x->nmut; i++) {
		pthread_join(mt[i], NULL);
		x->ops += m[i].ops;
		ex_lat_merge(&x->pauses, &m[i].pauses);
	}
	if (!x->err && (verify(x) || atomic_load(&x->bad)))
		x->err = -EILSEQ;
	uffd_loop_free(x->loop);
	uffd_region_destroy(x->r);	/* also removes it from SIGBUS mode */
	uffd_close(x->u);
	free(x->state);
	free(x->updates);
	free(x->roots);
	return 0;
}

int main(int argc, char **argv)
{
	struct heap h = { 0 };
	struct run runs[2];
	size_t mib = 64;
	unsigned nmut = 2;
	bool summary = false, ok = true;
	const char *v;
	int err;

	for (int i = 1; i < argc; i++) {
		if ((v = ex_opt(argc, argv, &i, "--mib")))
			mib = ex_count(PROG, "--mib", v, 1, 1 << 16);
		else if ((v = ex_opt(argc, argv, &i, "--mutators")))
			nmut = (unsigned)ex_count(PROG, "--mutators", v, 1, MAX_MUTATORS);
		else if (!strcmp(argv[i], "--summary"))
			summary = true;
		else {
			fprintf(stderr, "usage: " PROG " [--mib N] [--mutators N] [--summary]\n");
			return 2;
		}
	}
	if ((err = build_heap(&h, mib, 4096)))
		return ex_fail(PROG, "building the heap", err);
	for (int i = 0; i < 2; i++) {
		runs[i] = (struct run){ .h = &h, .sigbus = i == 1, .nmut = nmut };
		if (compact(&runs[i]))
			return 1;
		ok = ok && !runs[i].err;
	}
	if (summary) {
		char what[160], fig[128];

		snprintf(what, sizeof(what), "%llu live objects compacted twice, %u mutators",
			 (unsigned long long)h.nlive, nmut);
		snprintf(fig, sizeof(fig), "pause p50/p99 loop %.0f/%.0f us, SIGBUS %.0f/%.0f us",
			 ex_lat_pct_us(&runs[0].pauses, 50), ex_lat_pct_us(&runs[0].pauses, 99),
			 ex_lat_pct_us(&runs[1].pauses, 50), ex_lat_pct_us(&runs[1].pauses, 99));
		ex_summary(PROG, ok, what, fig);
	} else {
		printf("heap              %zu MiB, %llu objects, %llu live (%llu to-space pages), %llu roots\n",
		       mib, (unsigned long long)h.nslots, (unsigned long long)h.nlive,
		       (unsigned long long)h.to_pages, (unsigned long long)h.nroots);
		for (int i = 0; i < 2; i++) {
			struct run *x = &runs[i];

			printf("%-17s %lu pages by the GC thread, %lu by fault handlers (%lu calls), %.1f ms\n",
			       x->sigbus ? "SIGBUS mode" : "loop", atomic_load(&x->by_gc),
			       atomic_load(&x->by_fault), atomic_load(&x->faults), x->gc_ns / 1e6);
			printf("                  %llu mutator accesses, %zu to pages not compacted yet: pause p50 %.1f us, p99 %.1f us\n",
			       (unsigned long long)x->ops, x->pauses.n, ex_lat_pct_us(&x->pauses, 50),
			       ex_lat_pct_us(&x->pauses, 99));
		}
		printf("verified          %s (object graph after each compaction)\n", ok ? "yes" : "NO");
	}
	for (int i = 0; i < 2; i++)
		ex_lat_free(&runs[i].pauses);
	heap_free(&h);
	return !ok;
}
