/* SPDX-License-Identifier: MIT */
/*
 * uffd-bench: libuffd against the handler everybody writes by hand (a
 * thread doing poll(2), read(2) of one message and one ioctl per fault) and
 * against the kernel's limit. Declarations shared by the bench's files.
 */
#ifndef UFFD_BENCH_H
#define UFFD_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uffd.h>

#define PAGE 4096ul

/* Command-line options. */
struct bench_opts {
	size_t pages;		/* pages per fault metric (1-6) and populate (7) */
	size_t bulk_mib;	/* continue_bulk and dirty_scan range (8, 10) */
	size_t around_mib;	/* fault_around range (9) */
	unsigned reps;		/* repetitions per side, median reported */
	unsigned spin_us;	/* spin of minor_rt_1t_spin (2) and minor_mt (4) */
	const char *only;	/* comma-separated metric names, NULL: all */
	bool json;
	const char *placement;	/* of the threads: split, same or free */
	char side;		/* 'l' or 'b': run that side only (profiling); 0: both */
};

/* Per-fault latencies of one side, pooled over its repetitions, in us. */
struct lat {
	double *v;
	size_t n, cap;
};

/* One output line. A NaN figure means none (printed "-", or null). */
struct row {
	const char *metric;
	double lib, base;
	const char *unit;
	double target;		/* met when ratio <= target; 0: no target */
	bool floor_row;		/* lib is the physical floor; no baseline, no ratio */
	struct lat *lib_lat, *base_lat;	/* NULL: no p50/p99 */
	const char *note;	/* short extra text for the table, or NULL */
};

/*
 * One repetition of one side: returns the metric's figure (lower is better)
 * or a negative value on a setup error. lat may be NULL.
 */
typedef double (*side_fn)(void *ctx, unsigned rep, struct lat *lat);

/* main.c */
/* Runs reps of both sides interleaved (order alternating); stores medians. */
int bench_pair(const struct bench_opts *o, void *lib_ctx, side_fn lib,
	       void *base_ctx, side_fn base, double *lib_med, double *base_med,
	       struct lat *lib_lat, struct lat *base_lat);
/* Median of reps runs of one side. */
int bench_single(const struct bench_opts *o, void *ctx, side_fn fn, double *med,
		 struct lat *lat);
void bench_row(const struct bench_opts *o, const struct row *r);
/* A metric that could not run: printed, and counted as an error. */
void bench_error(const struct bench_opts *o, const char *metric, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* util.c */
double now_us(void);
uint64_t now_ns(void);
/* Counts ns in log2 histogram h of UFFD_HIST_BUCKETS: bucket i holds [2^i, 2^(i+1)) ns. */
void hist_add(uint64_t *h, uint64_t ns);
/* The word stored at word w of page p of a data set with seed s. */
static inline uint64_t pattern(uint64_t s, size_t p, size_t w)
{
	return (s ^ (uint64_t)p * 0x9e3779b97f4a7c15ull) + w * 0xff51afd7ed558ccdull;
}
void fill_pages(void *dst, size_t first_page, size_t npages, uint64_t seed);
/* Every word of npages pages; false (and a failure reported) on a mismatch. */
bool check_pages(const char *metric, const void *p, size_t first_page, size_t npages,
		 uint64_t seed);
/* First, middle and last word of every page: for the 1 GiB metrics. */
bool check_pages_sampled(const char *metric, const void *p, size_t npages, uint64_t seed);
/* Records a wrong answer: the run will exit non-zero. */
void bench_fail(const char *metric, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern unsigned bench_failures;
void lat_add(struct lat *l, double us);
void lat_free(struct lat *l);
double lat_pct(struct lat *l, double pct);
/* The median of v[0..n) (sorts v). */
double median(double *v, unsigned n);
/* Whether the comma-separated list holds name. */
bool list_has(const char *list, const char *name);
/*
 * Whether every name of the list is one of n names, the i-th at
 * (char *)names + i * stride (a table's name field); reports the others.
 */
bool list_known(const char *prog, const char *what, const char *list,
		const char *const *names, size_t n, size_t stride);
/* A decimal option value in [min, max]; false when it is not one. */
bool parse_size(const char *s, size_t min, size_t max, size_t *out);
/* A memfd of len bytes holding the pattern. -1 on failure (reported). */
int memfd_pattern(const char *name, size_t len, uint64_t seed);
/* Anonymous private memory without transparent huge pages; NULL on failure. */
void *anon_map(size_t len);
/* The touch loops, timed per touch when lat != NULL: us per page. */
double touch_read(const char *metric, const char *base, size_t first, size_t n,
		  uint64_t seed, struct lat *lat);
/* Writes word 1 of each page (marker), then checks word 0. */
double touch_write(const char *metric, char *base, size_t n, uint64_t seed,
		   uint64_t marker, struct lat *lat);
/* Checks the pages touch_write() wrote: word 1 is marker, the rest the pattern. */
bool check_written(const char *metric, const char *base, size_t n, uint64_t seed,
		   uint64_t marker);
/* Runs fn(arg, i) on n threads released together; wall time in us. */
double run_threads(unsigned n, void (*fn)(void *arg, unsigned i), void *arg);
/* The same; *start gets now_us() at the release. */
double run_threads_at(unsigned n, void (*fn)(void *arg, unsigned i), void *arg, double *start);
/* --placement: "split" (default), "same" or "free"; -1 for another name. */
int place_set(const char *name);
/* Moves the calling thread to the handlers' CPUs (true) or the faulters'. */
void place(bool handler);
/* Re-arms the watchdog: the run dies after seconds with the metric named. */
void watchdog(const char *metric, unsigned seconds);
/* fn (async-signal-safe) runs before the watchdog ends the process. */
void watchdog_cleanup(void (*fn)(void));

/* baseline.c: the usual handler, raw syscalls only. */
struct base_uffd;
/*
 * BASE_FILL: shared memory registered for MISSING and MINOR faults, a page
 * not in the page cache read from a file into the alias view, then CONTINUE.
 */
enum base_mode { BASE_MINOR, BASE_WP, BASE_MISSING, BASE_FILL };
/* What base_start_opts() serves, and how. */
struct base_opts {
	const char *metric;
	char *addr;		/* the registered range */
	size_t len;
	enum base_mode mode;
	uint64_t features;
	size_t page;		/* bytes per fault and ioctl; 0: PAGE */
	const char *src;	/* BASE_MISSING: faults copy from src + offset */
	int src_fd;		/* BASE_FILL: the page at offset is the file's at offset... */
	char *alias;		/* ...read into alias + offset */
	uint64_t *hist;		/* NULL, or UFFD_HIST_BUCKETS of read-to-resolved ns (hist_add()) */
};
/* A raw uffd (O_NONBLOCK) with features, [addr, addr+len) registered with
 * mode; no handler. The fd, or -1 (reported). */
int base_open(const char *metric, void *addr, size_t len, enum base_mode mode,
	      uint64_t features);
/* Opens a uffd with features, registers [addr, addr+len) with mode and
 * starts the handler thread. src: MISSING faults copy from src + offset. */
struct base_uffd *base_start(const char *metric, void *addr, size_t len,
			     enum base_mode mode, uint64_t features, const void *src);
/* The same with every option; the handler thread writes o->hist until base_stop(). */
struct base_uffd *base_start_opts(const struct base_opts *o);
void base_stop(struct base_uffd *b);
int base_fd(const struct base_uffd *b);
/* Faults the handler resolved since the last call. */
uint64_t base_faults(struct base_uffd *b);
/* One raw UFFDIO_* ioctl; 0 or -errno, *count the bytes done. */
int base_continue(int fd, void *addr, size_t len, int64_t *count);
int base_writeprotect(int fd, void *addr, size_t len, bool protect);

/* The metrics: 0, or -1 after an error that was reported. */
int metric_floor(const struct bench_opts *o);
int metric_floor_signal(const struct bench_opts *o);
int metric_minor_rt_1t(const struct bench_opts *o);
int metric_minor_rt_1t_spin(const struct bench_opts *o);
int metric_minor_sigbus(const struct bench_opts *o);
int metric_minor_mt(const struct bench_opts *o);
int metric_fault_around(const struct bench_opts *o);
int metric_wp_rt_1t(const struct bench_opts *o);
int metric_missing_copy_1t(const struct bench_opts *o);
int metric_populate(const struct bench_opts *o);
int metric_continue_bulk(const struct bench_opts *o);
int metric_dirty_scan(const struct bench_opts *o);

#endif
