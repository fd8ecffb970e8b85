/* SPDX-License-Identifier: MIT */
/*
 * uffd-restore: restoring a VM snapshot, measured (issue 15). A "guest" of
 * threads touches a fixed, scattered working set of a snapshot file's pages
 * in a new order each run; each contender supplies the pages. Declarations
 * shared by restore.c (scheme, output), restore-mem.c (guest memory),
 * restore-sample.c (pages present over time) and the contenders
 * (restore-contenders.c; restore-engine.c, those of the restore engine).
 */
#ifndef UFFD_RESTORE_H
#define UFFD_RESTORE_H

#include <stdio.h>

#include "bench.h"

#define HUGE (2ul << 20)

struct rs_sampler;

/* What the contenders share for one run. */
struct rs_env {
	int fd;			/* the snapshot file, O_RDONLY */
	size_t len, npages;	/* npages of PAGE bytes */
	uint64_t seed;		/* page p word w holds pattern(seed, p, w) */
	const size_t *order;	/* the working set, in this run's order */
	size_t nset;
	size_t nunits;		/* distinct pages of e->page size the working set touches */
	unsigned threads;	/* guest threads */
	size_t around;		/* PAGE pages per fault of the libuffd fault-around contender */
	unsigned write_pct;	/* share of the touched pages the guest writes (rs_written()) */
	size_t fault_around;	/* the engine's fault_around option (bytes; 0: off) */
	bool fault_around_set;	/* else the engine's default */
	bool memfd;		/* guest memory: a memfd mapped twice (MINOR/CONTINUE), else anon (COPY) */
	size_t page;		/* the guest memory's page size: PAGE, or HUGE (hugetlb) */
	struct rs_sampler *sampler; /* NULL, or counts pages present during the guest's run */
	const char *trace;	/* the trace the replay contender loads (restore-engine.c) */
	const char *truth;	/* --image: the image's bytes (pages checked against them); NULL: the pattern */
	bool cold;		/* this run's cache state: the contenders' own files follow it (restore-snap.c) */
	unsigned snap_threads;	/* uffd_snap_opts.threads of the compressed contenders; 0: the default */
	uint64_t frame_size;	/* frames of the compressed contenders' files; 0: the default (256 KiB) */
};

/* The figures of one run, in the table's column order after the ratios. */
enum rs_fig {
	RS_US,			/* start of the guest to its last touch */
	RS_FAULTS,		/* fault messages the handler read; NaN without userfaultfd */
	RS_IOCTLS,		/* resolving ioctls; NaN where not counted */
	RS_AHEAD,		/* pages brought in ahead of a fault (trace, fill); NaN: none */
	RS_MAPPED,		/* PAGE pages present in the guest memory afterwards */
	RS_MINFLT, RS_MAJFLT,	/* getrusage() of the process over the guest's run */
	RS_NFIG
};

/* What one run measured. */
struct rs_result {
	double v[RS_NFIG];
	bool has_hist;		/* hist holds the service time of every fault */
	uint64_t hist[UFFD_HIST_BUCKETS]; /* read-to-resolved ns, log2 buckets (hist_add()) */
};

/*
 * One contender: sets up, runs the guest (rs_guest()), checks, tears down.
 * 0, or -1 after a reported error.
 */
typedef int (*rs_fn)(const struct rs_env *e, const char *name, struct rs_result *res);

/* restore-contenders.c */
/* Whether the guest writes page p (PAGE pages): a fixed hash of p below write_pct. */
bool rs_written(const struct rs_env *e, size_t p);
/* The word the guest writes at word w of page p (every RS_WSTRIDE-th word of written pages). */
uint64_t rs_wpattern(const struct rs_env *e, size_t p, size_t w);
#define RS_WSTRIDE 64
int rs_ideal(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_baseline(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_libuffd_source(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_libuffd_around(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_kernel(const struct rs_env *e, const char *name, struct rs_result *res);
/* restore-engine.c */
int rs_libuffd(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_libuffd_replay(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_libuffd_fill(const struct rs_env *e, const char *name, struct rs_result *res);
/* restore-snap.c: compressed snapshots (uffd_source_snap) and layers (uffd_source_layered) */
int rs_snap(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_snap_replay(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_snap_fill(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_layers_replay(const struct rs_env *e, const char *name, struct rs_result *res);
int rs_snap_layers_replay(const struct rs_env *e, const char *name, struct rs_result *res);
/*
 * --image: the snapshot is a copy of the image at path (a memory dump,
 * bench/snap-image.py), at most mib MiB of it, whole 2 MiB; sets e->len,
 * e->npages and e->truth. The copy's fd (unlinked, fsync'ed), or -1
 * (reported).
 */
int rs_image_open(struct rs_env *e, const char *path, size_t mib);
/* Removes the files the contenders of restore-snap.c made. */
void rs_snap_cleanup(void);
/* The untimed recording pass: a demand-only run with UFFD_RESTORE_RECORD, its trace saved to path. */
int rs_record(const struct rs_env *e, const char *name, const char *path);
/*
 * Runs the guest over mem and fills res: its time, the process's faults
 * over it, the pages present afterwards. Then checks every word of every
 * touched page (not timed). 0, or -1 on a wrong page.
 */
int rs_guest(const struct rs_env *e, const char *name, const char *mem, struct rs_result *res);
/* A fresh read-only view of the snapshot (MAP_SHARED); NULL on failure (reported). */
const char *rs_map_snapshot(const struct rs_env *e, const char *name);
/* Demand faults only: the touched pages mapped, no fewer messages than pages. */
int rs_check_demand(const struct rs_env *e, const char *name, const struct rs_result *res);
/* Demand faults with fault-around: every touched page mapped, at most one message per page. */
int rs_check_around(const struct rs_env *e, const char *name, const struct rs_result *res);

/* restore-mem.c: the guest memory of a run. */
struct rs_mem {
	char *base;		/* the guest's view (anon: the memory itself) */
	char *alias;		/* memfd with views: the second mapping; else NULL */
	int fd;			/* the memfd, or -1 */
	size_t len;
};

/* restore-contenders.c: the guest memory as a libuffd region, and a loop. */
struct rs_lib {
	struct rs_mem m;
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
};
/*
 * anon: a foreign region over this process's own mapping (fd -1),
 * registered for MISSING faults; memfd: a region over the memfd (the region
 * maps both views) registered for MISSING and MINOR faults, as a lazy
 * restore must (a page missing from the page cache raises a MISSING fault,
 * not a MINOR one). The loop is not started. 0, or -1 (reported).
 */
int rs_lib_open(const struct rs_env *e, const char *name, struct rs_lib *lb);
/* Starts the loop on one thread (the handlers' CPU), runs the guest, counts the loop's faults. */
int rs_lib_guest(const struct rs_env *e, const char *name, struct rs_lib *lb, struct rs_result *res);
void rs_lib_close(struct rs_lib *lb);
/*
 * Anonymous private memory (no THP; MAP_HUGETLB for 2 MiB pages) or a memfd
 * (MFD_HUGETLB for 2 MiB), mapped as base and alias when views. 0, or -1
 * (reported).
 */
int rs_mem_new(const struct rs_env *e, const char *name, bool views, struct rs_mem *m);
void rs_mem_free(struct rs_mem *m);
/*
 * At least n huge pages free, raising vm.nr_hugepages as root when needed
 * (rs_huge_release() puts the old value back; so does the watchdog). false
 * when they cannot be had (printed).
 */
bool rs_huge_reserve(size_t n);
void rs_huge_release(void);

/* restore-sample.c: pages present over time. */
/* PAGE pages of [mem, mem+len) present in this process's page tables; NaN on error. */
double rs_present_pages(const void *mem, size_t len);
/* A sampler of interval_ms; NULL on failure (reported). */
struct rs_sampler *rs_sampler_new(unsigned interval_ms);
void rs_sampler_free(struct rs_sampler *s);
/* Starts counting the pages present in [mem, mem+len) every interval on a thread. */
int rs_sampler_start(struct rs_sampler *s, const void *mem, size_t len);
/* Stops it; start: now_us() at the guest's release, the samples' time origin. */
void rs_sampler_stop(struct rs_sampler *s, double start);
/* Writes the last run's samples as lines "label t_ms pages_present". */
void rs_sampler_write(const struct rs_sampler *s, FILE *f, const char *label);

#endif
