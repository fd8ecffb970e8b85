/* SPDX-License-Identifier: MIT */
/*
 * A restore's traces (trace.h): the pages of demand faults recorded in
 * first-touch order within the window of the options, and the merged
 * order of the loaded traces that the restore thread prefetches.
 */
#include <errno.h>
#include <stdlib.h>

#include "restore-internal.h"

/* The restore's regions as a trace describes them. */
static int describe(struct uffd_restore *rs, struct trace *t, size_t max, const char *call)
{
	struct trace_region *v;
	int err;

	if (!rs->nregs)
		return uffd__err(-EINVAL, "%s: no region; add the regions with uffd_restore_add_region first", call);
	v = calloc(rs->nregs, sizeof(*v));
	if (!v)
		return uffd__err(-ENOMEM, "%s: out of memory", call);
	for (unsigned i = 0; i < rs->nregs; i++)
		v[i] = (struct trace_region){ rs->regs[i].npages * rs->regs[i].ps, rs->regs[i].ps };
	err = trace__init(t, v, rs->nregs, max);
	free(v);
	return err;
}

UFFD_EXPORT int uffd_restore_load_trace(struct uffd_restore *rs, const char *path)
{
	const char *call = "uffd_restore_load_trace";
	int err;

	if (!rs || !path)
		return uffd__err(-EINVAL, "%s: %s is NULL", call, rs ? "path" : "restore");
	if (rs->started)
		return uffd__err(-EINVAL, "%s: the restore is started; load traces before uffd_restore_start", call);
	if (!rs->has_replay && (err = describe(rs, &rs->replay, 0, call)))
		return err;
	err = trace__merge_file(&rs->replay, path);
	if (!err)
		rs->has_replay = true;
	else if (!rs->has_replay)
		trace__free(&rs->replay);
	return err;
}
UFFD_EXPORT_OWN(restore_load_trace);

/* uffd_restore_start(): the replay in order, the recording's room. */
int rs__trace_start(struct uffd_restore *rs)
{
	if (rs->has_replay)
		trace__sort(&rs->replay);
	if (!rs->recording)
		return 0;
	return describe(rs, &rs->rec, (size_t)rs->o.record_pages, "uffd_restore_start");
}

bool rs__replay_at(struct uffd_restore *rs, size_t i, struct rs_region **g, size_t *page)
{
	if (!rs->has_replay || i >= rs->replay.n)
		return false;
	*g = &rs->regs[rs->replay.order[i].region];
	*page = (size_t)rs->replay.order[i].page;
	return true;
}

/* Within the window: record_ms after the first fault (0: until saved). */
static bool in_window(struct uffd_restore *rs)
{
	uint64_t now, first = atomic_load(&rs->rec_first_ns), zero = 0;

	if (!atomic_load(&rs->rec_on))
		return false;
	if (!rs->o.record_ms)
		return true;
	now = rs__now_ns();
	if (!first && atomic_compare_exchange_strong(&rs->rec_first_ns, &zero, now))
		first = now;
	else if (!first)
		first = zero;	/* another thread set it first */
	return now - first <= (uint64_t)rs->o.record_ms * 1000000u;
}

void rs__record(struct uffd_restore *rs, const struct rs_region *g, size_t page)
{
	if (!in_window(rs))
		return;
	pthread_mutex_lock(&rs->rec_lock);
	if (rs->rec.nregions)
		trace__add(&rs->rec, g->idx, page);	/* no room left or seen: nothing */
	pthread_mutex_unlock(&rs->rec_lock);
}

uint64_t rs__recorded(struct uffd_restore *rs)
{
	uint64_t n;

	pthread_mutex_lock(&rs->rec_lock);
	n = rs->rec.n;
	pthread_mutex_unlock(&rs->rec_lock);
	return n;
}

/*
 * The recording as it is now, in *copy to save and free. Every demand
 * fault takes rec_lock to record, so it is held only for copying into
 * room allocated before (allocating under it could wait for a fork's
 * malloc lock while a loop thread waits for it), never for the file's
 * write and fsync. Room for what faults add meanwhile, else again.
 */
static int snapshot(struct uffd_restore *rs, struct trace *copy)
{
	for (;;) {
		size_t n;
		bool ok;
		int err;

		pthread_mutex_lock(&rs->rec_lock);
		n = rs->rec.n;
		pthread_mutex_unlock(&rs->rec_lock);
		/* the regions never change once started */
		if ((err = trace__init(copy, rs->rec.regions, rs->rec.nregions, n + n / 4 + 64)))
			return err;
		pthread_mutex_lock(&rs->rec_lock);
		ok = trace__copy(copy, &rs->rec);
		pthread_mutex_unlock(&rs->rec_lock);
		if (ok)
			return 0;
		trace__free(copy);
	}
}

UFFD_EXPORT int uffd_restore_save_trace(struct uffd_restore *rs, const char *path)
{
	struct trace copy;
	int err;

	if (!rs || !path)
		return uffd__err(-EINVAL, "uffd_restore_save_trace: %s is NULL", rs ? "path" : "restore");
	if (!rs->recording)
		return uffd__err(-EINVAL, "uffd_restore_save_trace: the restore does not record; create it with UFFD_RESTORE_RECORD");
	if (!rs->started || !rs->rec.nregions)	/* rec is prepared by uffd_restore_start() */
		return uffd__err(-EINVAL, "uffd_restore_save_trace: nothing is recorded before uffd_restore_start");
	if ((err = snapshot(rs, &copy)))
		return err;
	err = trace__save(&copy, path);
	trace__free(&copy);
	if (!err && !rs->o.record_ms)
		atomic_store(&rs->rec_on, false);	/* "until saved" */
	return err;
}
UFFD_EXPORT_OWN(restore_save_trace);

void rs__trace_free(struct uffd_restore *rs)
{
	trace__free(&rs->rec);
	if (rs->has_replay)
		trace__free(&rs->replay);
	rs->has_replay = false;
}
