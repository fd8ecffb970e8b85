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
	size_t n;
	struct rangemap_entry e[];
};

static struct rangemap_table *table_new(size_t n)
{
	struct rangemap_table *t = malloc(sizeof(*t) + n * sizeof(t->e[0]));

	if (t)
		t->n = n;
	return t;
}

static void wait_readers(struct rangemap *m)
{
	for (int phase = 0; phase < 2; phase++) {
		unsigned old = atomic_fetch_add(&m->epoch, 1) & 1;

		while (atomic_load(&m->readers[old]))
			sched_yield();
	}
}

/* Called with wlock held: publish t, free the old table once unused. */
static void publish(struct rangemap *m, struct rangemap_table *t)
{
	struct rangemap_table *old = atomic_exchange(&m->cur, t);

	wait_readers(m);
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

void rangemap_destroy(struct rangemap *m)
{
	free(atomic_exchange(&m->cur, NULL));
}
