/* SPDX-License-Identifier: MIT */
/*
 * A sorted array of address ranges, read without locks.
 *
 * Readers may run in a signal handler that interrupted anything, so they
 * only touch atomics: they enter one of two reader counters (chosen by the
 * epoch's parity), load the current table, search it and leave. A writer
 * builds a new table, publishes it, then flips the epoch twice, each time
 * waiting for the counter of the old parity to drain: afterwards no reader
 * can still hold the old table, which is freed.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct rangemap_table {
	size_t n, cap;
	struct rangemap_entry e[];
};

static struct rangemap_table *table_new(size_t n)
{
	struct rangemap_table *t = malloc(sizeof(*t) + n * sizeof(t->e[0]));

	if (t)
		t->n = t->cap = n;
	return t;
}

/*
 * With wlock: a table for n entries, the spare one if it is large enough.
 * Without may_alloc nothing else is tried (NULL).
 */
static struct rangemap_table *table_get(struct rangemap *m, size_t n, bool may_alloc)
{
	struct rangemap_table *t = m->spare;

	if (t && t->cap >= n) {
		m->spare = NULL;
		t->n = n;
		return t;
	}
	return may_alloc ? table_new(n) : NULL;
}

static void wait_readers(struct rangemap *m)
{
	for (int phase = 0; phase < 2; phase++) {
		unsigned old = atomic_fetch_add(&m->epoch, 1) & 1;

		while (atomic_load(&m->readers[old]))
			sched_yield();
	}
}

/*
 * Called with wlock held: publish t; once no reader holds the old table
 * it becomes the spare when there is none (so a write that took the spare
 * frees nothing), else it is freed.
 */
static void publish(struct rangemap *m, struct rangemap_table *t)
{
	struct rangemap_table *old = atomic_exchange(&m->cur, t);

	wait_readers(m);
	if (!m->spare)
		m->spare = old;
	else
		free(old);
}

static const struct rangemap_entry *search(const struct rangemap_table *t,
					   uintptr_t addr)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct rangemap_entry *e = &t->e[mid];

		if (addr < e->start)
			hi = mid;
		else if (addr >= e->end)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

unsigned rangemap_read_begin(struct rangemap *m)
{
	unsigned parity = atomic_load(&m->epoch) & 1;

	atomic_fetch_add(&m->readers[parity], 1);
	return parity;
}

void rangemap_read_end(struct rangemap *m, unsigned ticket)
{
	atomic_fetch_sub(&m->readers[ticket], 1);
}

bool rangemap_find(struct rangemap *m, uintptr_t addr, struct rangemap_entry *out)
{
	unsigned ticket = rangemap_read_begin(m);
	const struct rangemap_table *t;
	const struct rangemap_entry *e = NULL;

	t = atomic_load(&m->cur);
	if (t)
		e = search(t, addr);
	if (e)
		*out = *e;
	rangemap_read_end(m, ticket);
	return e != NULL;
}

size_t rangemap_count(struct rangemap *m)
{
	size_t n;

	pthread_mutex_lock(&m->wlock);
	n = m->cur ? atomic_load(&m->cur)->n : 0;
	pthread_mutex_unlock(&m->wlock);
	return n;
}

/* Index of the first entry ending after addr. */
static size_t lower_bound(const struct rangemap_table *t, uintptr_t addr)
{
	size_t i = 0;

	while (t && i < t->n && t->e[i].end <= addr)
		i++;
	return i;
}

/* New table: old without entry skip (or n), plus e (if not NULL). */
static struct rangemap_table *rebuild(const struct rangemap_table *old, size_t skip,
				      const struct rangemap_entry *e)
{
	size_t n = old ? old->n : 0, k = 0, at = e ? lower_bound(old, e->start) : n + 1;
	struct rangemap_table *t = table_new(n + (e != NULL) - (skip < n));

	if (!t)
		return NULL;
	for (size_t i = 0; i <= n; i++) {
		if (i == at)
			t->e[k++] = *e;
		if (i < n && i != skip)
			t->e[k++] = old->e[i];
	}
	return t;
}

static bool overlaps(const struct rangemap_table *t, size_t skip,
		     uintptr_t start, uintptr_t end)
{
	for (size_t i = 0; t && i < t->n; i++)
		if (i != skip && t->e[i].start < end && start < t->e[i].end)
			return true;
	return false;
}

static size_t index_of(const struct rangemap_table *t, const void *ptr)
{
	size_t i;

	for (i = 0; t && i < t->n; i++)
		if (t->e[i].ptr == ptr)
			return i;
	return SIZE_MAX;
}

int rangemap_insert(struct rangemap *m, const struct rangemap_entry *e)
{
	struct rangemap_table *old, *t;
	int err = 0;

	pthread_mutex_lock(&m->wlock);
	old = atomic_load(&m->cur);
	if (overlaps(old, SIZE_MAX, e->start, e->end))
		err = -EEXIST;
	else if (!(t = rebuild(old, SIZE_MAX, e)))
		err = -ENOMEM;
	else
		publish(m, t);
	pthread_mutex_unlock(&m->wlock);
	return err;
}

int rangemap_remove(struct rangemap *m, const void *ptr)
{
	struct rangemap_table *old, *t;
	size_t i;
	int err = 0;

	pthread_mutex_lock(&m->wlock);
	old = atomic_load(&m->cur);
	i = index_of(old, ptr);
	if (i == SIZE_MAX)
		err = -ENOENT;
	else if (!(t = rebuild(old, i, NULL)))
		err = -ENOMEM;
	else
		publish(m, t);
	pthread_mutex_unlock(&m->wlock);
	return err;
}

int rangemap_move(struct rangemap *m, const void *ptr, uintptr_t new_start)
{
	struct rangemap_table *old, *t;
	struct rangemap_entry e;
	size_t i;
	int err = 0;

	pthread_mutex_lock(&m->wlock);
	old = atomic_load(&m->cur);
	i = index_of(old, ptr);
	if (i == SIZE_MAX) {
		err = -ENOENT;
		goto out;
	}
	e = old->e[i];
	e.end = new_start + (e.end - e.start);
	e.start = new_start;
	if (overlaps(old, i, e.start, e.end))
		err = -EEXIST;
	else if (!(t = rebuild(old, i, &e)))
		err = -ENOMEM;
	else
		publish(m, t);
out:
	pthread_mutex_unlock(&m->wlock);
	return err;
}

bool rangemap_next(struct rangemap *m, uintptr_t addr, struct rangemap_entry *out)
{
	unsigned ticket = rangemap_read_begin(m);
	const struct rangemap_table *t = atomic_load(&m->cur);
	size_t i = t ? lower_bound(t, addr) : 0;
	bool found = t && i < t->n;

	if (found)
		*out = t->e[i];
	rangemap_read_end(m, ticket);
	return found;
}

/*
 * New table: old with [start, end) cut out, plus the n sorted entries of
 * add, which lie inside [start, end). An entry straddling start or end
 * keeps its outer parts: at most one more entry than old had.
 */
static struct rangemap_table *carve(const struct rangemap_table *old, uintptr_t start,
				    uintptr_t end, const struct rangemap_entry *add, size_t n)
{
	size_t oldn = old ? old->n : 0;
	struct rangemap_table *t = table_new(oldn + 1 + n);

	if (!t)
		return NULL;
	t->n = 0;
	for (size_t i = 0; i < oldn && old->e[i].start < start; i++) {
		t->e[t->n] = old->e[i];
		if (t->e[t->n].end > start)
			t->e[t->n].end = start;
		t->n++;
	}
	for (size_t k = 0; k < n; k++)
		t->e[t->n++] = add[k];
	for (size_t i = 0; i < oldn; i++) {
		if (old->e[i].end <= end)
			continue;
		t->e[t->n] = old->e[i];
		if (t->e[t->n].start < end) {
			t->e[t->n].off += end - t->e[t->n].start;
			t->e[t->n].start = end;
		}
		t->n++;
	}
	return t;
}

int rangemap_replace(struct rangemap *m, uintptr_t start, uintptr_t end,
		     const struct rangemap_entry *add, size_t n)
{
	struct rangemap_table *old, *t;
	int err = 0;

	pthread_mutex_lock(&m->wlock);
	old = atomic_load(&m->cur);
	if (!n && !overlaps(old, SIZE_MAX, start, end))
		goto out;	/* nothing to change: no allocation */
	t = carve(old, start, end, add, n);
	if (t)
		publish(m, t);
	else
		err = -ENOMEM;
out:
	pthread_mutex_unlock(&m->wlock);
	return err;
}

/* Appends the parts of p outside [cut, cut_end) to out at *k; off follows start. */
static void put_outside(struct rangemap_entry *out, size_t *k, const struct rangemap_entry *p,
			uintptr_t cut, uintptr_t cut_end)
{
	struct rangemap_entry x = *p;

	if (p->start < cut) {
		x.end = p->end < cut ? p->end : cut;
		out[(*k)++] = x;
	}
	if (p->end > cut_end) {
		x = *p;
		if (x.start < cut_end) {
			x.off += cut_end - x.start;
			x.start = cut_end;
		}
		out[(*k)++] = x;
	}
}

/*
 * Into t: old's entries moved as a mremap of [from, from+len) to [to,
 * to+len) moves them. Each of the four edges splits at most one entry,
 * so t needs old->n + 4 entries. Sorted in place (no allocation).
 */
static void shift_build(const struct rangemap_table *old, uintptr_t from, uintptr_t to,
			size_t len, struct rangemap_table *t)
{
	size_t k = 0;

	for (size_t i = 0; old && i < old->n; i++) {
		struct rangemap_entry e = old->e[i], stay[2], mv;
		size_t ns = 0;

		put_outside(stay, &ns, &e, from, from + len);
		for (size_t j = 0; j < ns; j++)
			put_outside(t->e, &k, &stay[j], to, to + len);
		if (e.end <= from || e.start >= from + len)
			continue;
		mv = e;
		mv.start = e.start > from ? e.start : from;
		mv.end = e.end < from + len ? e.end : from + len;
		mv.off += mv.start - e.start;
		mv.start = mv.start - from + to;
		mv.end = mv.end - from + to;
		t->e[k++] = mv;
	}
	t->n = k;
	for (size_t i = 1; i < k; i++)
		for (size_t j = i; j > 0 && t->e[j - 1].start > t->e[j].start; j--) {
			struct rangemap_entry x = t->e[j];

			t->e[j] = t->e[j - 1];
			t->e[j - 1] = x;
		}
}

static int shift(struct rangemap *m, uintptr_t from, uintptr_t to, size_t len, bool may_alloc)
{
	struct rangemap_table *old, *t;

	if (may_alloc)
		pthread_mutex_lock(&m->wlock);
	else if (pthread_mutex_trylock(&m->wlock))
		return -EAGAIN;	/* a writer may be waiting in malloc: never wait for it */
	old = atomic_load(&m->cur);
	if (!overlaps(old, SIZE_MAX, from, from + len) && !overlaps(old, SIZE_MAX, to, to + len)) {
		pthread_mutex_unlock(&m->wlock);
		return 0;
	}
	t = table_get(m, old->n + 4, may_alloc);
	if (t) {
		shift_build(old, from, to, len, t);
		publish(m, t);
	}
	pthread_mutex_unlock(&m->wlock);
	return t ? 0 : may_alloc ? -ENOMEM : -EAGAIN;
}

int rangemap_shift(struct rangemap *m, uintptr_t from, uintptr_t to, size_t len)
{
	return shift(m, from, to, len, true);
}

int rangemap_shift_prealloc(struct rangemap *m, uintptr_t from, uintptr_t to, size_t len)
{
	return shift(m, from, to, len, false);
}

int rangemap_reserve(struct rangemap *m, size_t extra)
{
	struct rangemap_table *cur;
	size_t need;
	int err = 0;

	pthread_mutex_lock(&m->wlock);
	cur = atomic_load(&m->cur);
	need = (cur ? cur->n : 0) + extra;
	if (!m->spare || m->spare->cap < need) {
		free(m->spare);
		m->spare = table_new(need);
		err = m->spare ? 0 : -ENOMEM;
	}
	pthread_mutex_unlock(&m->wlock);
	return err;
}

void rangemap_destroy(struct rangemap *m)
{
	free(atomic_exchange(&m->cur, NULL));
	free(m->spare);
	m->spare = NULL;
}
