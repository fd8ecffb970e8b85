/* SPDX-License-Identifier: MIT */
/*
 * uffd-restore: restoring a VM snapshot, measured (issue 15). A "guest" of
 * threads touches a fixed, scattered working set of a snapshot file's pages
 * in a new order each run; each contender supplies the pages. Declarations
 * shared by restore.c (scheme, output) and restore-contenders.c.
 */
#ifndef UFFD_RESTORE_H
#define UFFD_RESTORE_H

#include "bench.h"

/* What the contenders share for one run. */
struct rs_env {
	int fd;			/* the snapshot file, O_RDONLY */
	size_t len, npages;
	uint64_t seed;		/* page p word w holds pattern(seed, p, w) */
	const size_t *order;	/* the working set, in this run's order */
	size_t nset;
	unsigned threads;	/* guest threads */
	size_t around;		/* pages per fault of the libuffd fault-around contender */
};

/* What one run measured. */
struct rs_result {
	double us;		/* start of the guest to its last touch */
	double msgs;		/* fault messages the handler read; NaN without userfaultfd */
	double ioctls;		/* resolving ioctls; NaN without userfaultfd */
	double mapped;		/* pages present in the guest memory afterwards */
	double minflt, majflt;	/* getrusage() of the process over the guest's run */
};

/*
 * One contender: sets up, runs the guest (rs_guest()), checks, tears down.
 * 0, or -1 after a reported error. NULL: not implemented yet.
 */
typedef int (*rs_fn)(const struct rs_env *e, const char *name, struct rs_result *res);

/* restore-contenders.c */
int rs_baseline(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_libuffd(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_libuffd_around(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_kernel(const struct rs_env *e, const char *name, struct rs_result *res);

#endif
