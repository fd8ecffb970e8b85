/* SPDX-License-Identifier: MIT */
/*
 * The contenders served by libuffd's restore engine (uffd_restore_*, section
 * 9 of uffd.h): demand faults only, a trace recorded on an earlier run
 * replayed ahead of the guest, and the background fill. The engine reads
 * the snapshot file itself; the guest memory is the same region as for the
 * loop contenders (rs_lib_open()).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "restore.h"

/* What one engine run does besides serving demand faults. */
struct engine_how {
	unsigned flags;		/* UFFD_RESTORE_* */
	const char *load;	/* a trace to replay, or NULL */
	const char *save;	/* UFFD_RESTORE_RECORD: where the trace goes */
};

static void engine_figures(const struct uffd_restore_stats *st, struct rs_result *res)
{
	res->v[RS_IOCTLS] = NAN;	/* the engine's resolutions are not the loop's */
	res->v[RS_AHEAD] = (double)(st->pages_prefetched + st->pages_filled + st->pages_around);
	res->has_hist = true;
	for (size_t k = 0; k < 3; k++)
		for (size_t b = 0; b < UFFD_HIST_BUCKETS; b++)
			res->hist[b] += st->latency[k][b];
}

static int engine_run(const struct rs_env *e, const char *name, const struct engine_how *how,
		      struct rs_result *res)
{
	struct uffd_restore_opts ro = { .size = sizeof(ro), .flags = how->flags,
					.fault_around = e->fault_around };
	struct uffd_restore_stats st = { .size = sizeof(st) };
	struct uffd_restore *rs = NULL;
	struct rs_lib lb;
	int err;

	if (e->fault_around_set && e->fault_around <= e->page)
		ro.flags |= UFFD_RESTORE_NO_AROUND;
	if ((err = rs_lib_open(e, name, &lb)))
		goto out;
	place(true);		/* the restore thread runs beside the loop's */
	if ((err = uffd_restore_new(&rs, &ro)) || (err = uffd_restore_add_region(rs, lb.r, e->fd, 0)) ||
	    (how->load && (err = uffd_restore_load_trace(rs, how->load))) ||
	    (err = uffd_restore_start(rs, lb.l))) {
		place(false);
		fprintf(stderr, "uffd-restore: %s: restore set-up: %s\n", name, uffd_last_error());
		goto out;
	}
	place(false);
	if ((err = rs_lib_guest(e, name, &lb, res)))
		goto out;
	if (how->save && (err = uffd_restore_save_trace(rs, how->save))) {
		fprintf(stderr, "uffd-restore: %s: %s\n", name, uffd_last_error());
		goto out;
	}
	uffd_restore_stats(rs, &st);
	engine_figures(&st, res);
	if (st.read_errors) {
		bench_fail(name, "the restore counted %llu read errors", (unsigned long long)st.read_errors);
		err = -1;
	}
out:
	uffd_restore_free(rs);
	rs_lib_close(&lb);
	return err ? -1 : 0;
}

int rs_libuffd(const struct rs_env *e, const char *name, struct rs_result *res)
{
	struct engine_how how = { 0 };

	if (engine_run(e, name, &how, res))
		return -1;
	if (e->fault_around_set && e->fault_around <= e->page)
		return rs_check_demand(e, name, res);
	return rs_check_around(e, name, res);
}

int rs_libuffd_replay(const struct rs_env *e, const char *name, struct rs_result *res)
{
	struct engine_how how = { .load = e->trace };

	return engine_run(e, name, &how, res);
}

int rs_libuffd_fill(const struct rs_env *e, const char *name, struct rs_result *res)
{
	struct engine_how how = { .flags = UFFD_RESTORE_FILL };

	return engine_run(e, name, &how, res);
}

int rs_record(const struct rs_env *e, const char *name, const char *path)
{
	struct engine_how how = { .flags = UFFD_RESTORE_RECORD, .save = path };
	struct rs_result res = { 0 };

	return engine_run(e, name, &how, &res);
}
