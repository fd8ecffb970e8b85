/* SPDX-License-Identifier: MIT */
/*
 * uffd-restore: restoring a VM snapshot (issue 15). A snapshot file of known
 * contents; a "guest" of threads touching a fixed working set (a quarter of
 * the pages, scattered, or the pages of --working-set; the same set every
 * run, a new order every run) and
 * checking every page it touches. Timed from the guest's start to its last
 * touch, for each contender, with the snapshot's page cache warm and cold,
 * guest memory anonymous (UFFDIO_COPY) or a memfd (UFFDIO_CONTINUE), in
 * 4 KiB or 2 MiB pages; the contenders interleaved (the first one
 * rotating), median reported.
 *
 * usage: uffd-restore [--mib N] [--reps N] [--file PATH] [--image PATH] [--around N]
 *                     [--working-set FILE] [--snap-threads N] [--threads N]
 *                     [--cache warm|cold|both]
 *                     [--memory anon|memfd|both] [--page 4k|2m|both]
 *                     [--only NAME,...] [--timeline FILE] [--latency FILE]
 *                     [--sample-ms N] [--json] [--placement split|same|free]
 * Exit status: 0; 1 when a contender could not run or a page read wrong.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "restore.h"

#define MAX_REPS 51
#define SEED 0x5eed0015ull

static const struct contender {
	const char *name;
	rs_fn fn;		/* NULL: not implemented yet */
	bool small_only;	/* 4 KiB pages only */
	const char *note;
} contenders[] = {
	{ "baseline", rs_baseline, false, "poll + read + one resolution per fault (bench/baseline.c): "
	  "anon UFFDIO_COPY from a mapping of the snapshot, memfd pread(2) into the alias + "
	  "UFFDIO_CONTINUE" },
	{ "libuffd", rs_libuffd, false, "the restore engine (uffd_restore_*) reading the snapshot "
	  "file, no trace: demand faults only" },
	{ "libuffd_source", rs_libuffd_source, false, "loop, region with the snapshot mapping as "
	  "its page source: anon copied by the loop (uffd_region_set_source), memfd written by a "
	  "handler (uffd_region_populate + uffd_region_continue)" },
	{ "libuffd_around", rs_libuffd_around, true, "the same, each fault widened to its aligned "
	  "--around block (4 KiB pages only)" },
	{ "libuffd_replay", rs_libuffd_replay, false, "the restore engine replaying a trace "
	  "(uffd_restore_load_trace) recorded by an untimed run of another order (UFFD_RESTORE_RECORD)" },
	{ "libuffd_fill", rs_libuffd_fill, false, "the restore engine, no trace, every page brought "
	  "in the background (UFFD_RESTORE_FILL)" },
	/* restore-snap.c: the compressed snapshot (libuffd-snapshot(5)) and layers */
	{ "snap", rs_snap, false, "the engine, demand faults only, from the snapshot packed (uffd_source_snap)" },
	{ "snap_replay", rs_snap_replay, false, "the same replaying libuffd_replay's trace" },
	{ "snap_fill", rs_snap_fill, false, "the same with UFFD_RESTORE_FILL" },
	{ "layers_replay", rs_layers_replay, false, "replay from a base file and 2 Firecracker Diff "
	  "files (uffd_source_layered)" },
	{ "snap_layers_replay", rs_snap_layers_replay, false, "replay from those packed: a compressed "
	  "base and 2 compressed diffs" },
	{ "ideal", rs_ideal, false, "the whole working set copied in address-ordered runs before "
	  "the guest starts (anon UFFDIO_COPY from a mapping of the snapshot, memfd write + "
	  "UFFDIO_CONTINUE), timed from before the copy: the bound of a copy-based restore" },
	{ "kernel", rs_kernel, false, "snapshot mapped MAP_PRIVATE, no userfaultfd (the same "
	  "for every memory and page variant)" },
};
#define NCONT (sizeof(contenders) / sizeof(contenders[0]))

struct opts {
	size_t mib, around, fault_around;
	bool fault_around_set;
	unsigned write_pct;
	size_t cluster;
	unsigned reps, threads, sample_ms;
	const char *file, *image, *cache, *memory, *page, *only, *placement, *workset;
	unsigned snap_threads;
	size_t frame_size;
	FILE *timeline, *latency;
	bool json;
};

/* One variant and cache state: what the table's first columns say. */
struct state {
	const char *page, *memory, *cache;
};

static unsigned errors;

/* ---- the snapshot and the working set ---- */

static uint64_t rng(uint64_t *s)
{
	*s += 0x9e3779b97f4a7c15ull;
	uint64_t z = *s;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void shuffle(size_t *v, size_t n, uint64_t seed)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(rng(&seed) % i), t = v[i - 1];

		v[i - 1] = v[j];
		v[j] = t;
	}
}

/*
 * A quarter of the pages, the same set for every run and contender:
 * scattered (cluster 1), or in aligned clusters of `cluster` pages chosen
 * at random (a guest's working set is often in runs: a dense trace).
 */
static size_t *working_set(size_t npages, size_t cluster, size_t *nset)
{
	size_t nc = npages / cluster, *all = malloc(npages * sizeof(*all)), *cl = malloc(nc * sizeof(*cl));

	if (!all || !cl) {
		free(all);
		free(cl);
		return NULL;
	}
	for (size_t i = 0; i < nc; i++)
		cl[i] = i;
	shuffle(cl, nc, SEED);
	for (size_t i = 0; i < npages; i++)
		all[i] = cl[i / cluster] * cluster + i % cluster;
	free(cl);
	*nset = npages / 4;
	return all;
}

/*
 * --working-set: the pages listed in path (4 KiB page numbers, one per line,
 * e.g. bench/snap-image.py --workset: the pages a re-run of the real
 * process changed), those within the snapshot, each once; the rest of the
 * pages after them (not touched).
 */
static size_t *working_set_file(const char *path, size_t npages, size_t *nset)
{
	size_t *all = malloc(npages * sizeof(*all)), n = 0, v;
	unsigned char *in = calloc(npages, 1);
	FILE *f = fopen(path, "re");

	if (!all || !in || !f) {
		fprintf(stderr, "uffd-restore: --working-set %s: %s\n", path, strerror(errno ? errno : ENOMEM));
		goto fail;
	}
	while (fscanf(f, "%zu", &v) == 1)
		if (v < npages && !in[v]++)
			all[n++] = v;
	if (!n) {
		fprintf(stderr, "uffd-restore: --working-set %s: no page within the snapshot\n", path);
		goto fail;
	}
	*nset = n;
	for (size_t i = 0; i < npages; i++)
		if (!in[i])
			all[n++] = i;
	fclose(f);
	free(in);
	return all;
fail:
	if (f)
		fclose(f);
	free(in);
	free(all);
	return NULL;
}

/* The snapshot: the pattern written to a file (unlinked at once unless --file), fsync'ed. */
static int make_snapshot(const struct opts *o, size_t len)
{
	char tmpl[] = "/var/tmp/uffd-restore-XXXXXX";
	size_t chunk = 256 * PAGE;
	char *buf = malloc(chunk);
	int fd = o->file ? open(o->file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)
			 : mkostemp(tmpl, O_CLOEXEC);

	if (fd < 0 || !buf)
		goto fail;
	if (!o->file)
		unlink(tmpl);
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;

		fill_pages(buf, off / PAGE, n / PAGE, SEED);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
			goto fail;
	}
	if (fsync(fd))
		goto fail;
	free(buf);
	return fd;
fail:
	fprintf(stderr, "uffd-restore: snapshot file of %zu bytes: %s\n", len, strerror(errno));
	free(buf);
	if (fd >= 0)
		close(fd);
	return -1;
}

/* Pages of the file in the page cache (mincore of a fresh mapping). */
static size_t cached_pages(int fd, size_t len)
{
	unsigned char *vec = malloc(len / PAGE);
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	size_t n = 0;

	if (vec && p != MAP_FAILED && !mincore(p, len, vec))
		for (size_t i = 0; i < len / PAGE; i++)
			n += vec[i] & 1;
	if (p != MAP_FAILED)
		munmap(p, len);
	free(vec);
	return n;
}

/*
 * Puts the snapshot's page cache in the wanted state: warm (every page read
 * in) or cold (dropped with POSIX_FADV_DONTNEED, which needs clean pages:
 * the file was fsync'ed). false when the state could not be reached.
 */
static bool cache_state(int fd, size_t len, bool warm)
{
	static char buf[1 << 20];

	if (warm) {
		if (cached_pages(fd, len) == len / PAGE)
			return true;
		for (size_t off = 0; off < len; off += sizeof(buf))
			if (pread(fd, buf, sizeof(buf), (off_t)off) <= 0)
				return false;
		return cached_pages(fd, len) == len / PAGE;
	}
	posix_fadvise(fd, 0, (off_t)len, POSIX_FADV_DONTNEED);
	return cached_pages(fd, len) <= len / PAGE / 100;
}

/* ---- runs and medians ---- */

/* Figure by figure: the median over the runs; the histograms summed. */
static void summarize(const struct rs_result *runs, unsigned n, struct rs_result *m)
{
	double v[MAX_REPS];

	*m = (struct rs_result){ .has_hist = runs[0].has_hist };
	for (size_t f = 0; f < RS_NFIG; f++) {
		for (unsigned r = 0; r < n; r++)
			v[r] = runs[r].v[f];
		m->v[f] = median(v, n);
	}
	for (unsigned r = 0; r < n; r++)
		for (size_t b = 0; b < UFFD_HIST_BUCKETS; b++)
			m->hist[b] += runs[r].hist[b];
}

static void no_result(struct rs_result *r)
{
	*r = (struct rs_result){ 0 };
	for (size_t f = 0; f < RS_NFIG; f++)
		r->v[f] = NAN;
}

/* A service-time quantile in us; NaN without a histogram. */
static double quantile_us(const struct rs_result *r, double q)
{
	uint64_t ns = r->has_hist ? uffd_hist_quantile(r->hist, q) : 0;

	return ns ? (double)ns / 1e3 : NAN;
}

/* ---- output ---- */

/* The table's columns after the names, and the JSON keys. */
static const struct {
	const char *head, *key;
	int decimals;
} cols[] = {
	{ "ms", "ms", 1 }, { "vs_kernel", "vs_kernel", 3 }, { "vs_base", "vs_baseline", 3 },
	{ "faults", "fault_msgs", 0 }, { "ioctls", "ioctls", 0 }, { "ahead", "pages_ahead", 0 },
	{ "mapped", "pages_mapped", 0 }, { "minflt", "minflt", 0 }, { "majflt", "majflt", 0 },
	{ "p50_us", "p50_us", 1 }, { "p99_us", "p99_us", 1 },
};
#define NCOLS (sizeof(cols) / sizeof(cols[0]))

static void header(const struct opts *o)
{
	if (o->json)
		return;
	printf("%-4s %-5s %-5s %-15s", "page", "mem", "cache", "contender");
	for (size_t c = 0; c < NCOLS; c++)
		printf("%10s", cols[c].head);
	printf("\n");
}

static void row(const struct opts *o, const struct state *st, size_t i, const struct rs_result *m,
		double kernel_us, double base_us)
{
	double v[NCOLS] = { m->v[RS_US] / 1e3, m->v[RS_US] / kernel_us, m->v[RS_US] / base_us,
			    m->v[RS_FAULTS], m->v[RS_IOCTLS], m->v[RS_AHEAD], m->v[RS_MAPPED],
			    m->v[RS_MINFLT], m->v[RS_MAJFLT], quantile_us(m, 0.5), quantile_us(m, 0.99) };

	if (o->json)
		printf("{\"page\":\"%s\",\"memory\":\"%s\",\"cache\":\"%s\",\"contender\":\"%s\","
		       "\"implemented\":%s", st->page, st->memory, st->cache, contenders[i].name,
		       contenders[i].fn ? "true" : "false");
	else
		printf("%-4s %-5s %-5s %-15s", st->page, st->memory, st->cache, contenders[i].name);
	for (size_t c = 0; c < NCOLS; c++) {
		if (o->json && isnan(v[c]))
			printf(",\"%s\":null", cols[c].key);
		else if (o->json)
			printf(",\"%s\":%.6g", cols[c].key, v[c]);
		else if (isnan(v[c]))
			printf("%10s", "-");
		else
			printf("%10.*f", cols[c].decimals, v[c]);
	}
	printf(o->json ? "}\n" : "\n");
}

/* The service-time histogram of each contender, for the distribution plot. */
static void write_latency(const struct opts *o, const struct state *st, size_t i,
			  const struct rs_result *m)
{
	if (!o->latency || !m->has_hist)
		return;
	for (size_t b = 0; b < UFFD_HIST_BUCKETS; b++)
		if (m->hist[b])
			fprintf(o->latency, "%s %s %s %s %llu %llu\n", st->page, st->memory, st->cache,
				contenders[i].name, 1ull << b, (unsigned long long)m->hist[b]);
}

static size_t find(const char *name)
{
	for (size_t i = 0; i < NCONT; i++)
		if (!strcmp(contenders[i].name, name))
			return i;
	abort();
}

/* One target: met when value <= limit; not measured when a figure is missing. */
static void target(const struct opts *o, const char *what, double value, double limit)
{
	bool none = isnan(value), met = value <= limit;

	if (o->json && none)
		printf(",\"%s\":{\"value\":null,\"limit\":%g,\"met\":null}", what, limit);
	else if (o->json)
		printf(",\"%s\":{\"value\":%.6g,\"limit\":%g,\"met\":%s}", what, value, limit,
		       met ? "true" : "false");
	else if (none)
		printf(" %s - (<= %g) not measured;", what, limit);
	else
		printf(" %s %.3f (<= %g) %s;", what, value, limit, met ? "met" : "NOT MET");
}

/* Issue 24's targets for this state: the engine against the kernel and the ideal. */
static void targets(const struct opts *o, const struct state *st, const struct rs_result *med)
{
	const struct rs_result *rp = &med[find("libuffd_replay")], *fl = &med[find("libuffd_fill")];
	double k = med[find("kernel")].v[RS_US], p99 = quantile_us(rp, 0.99), p99f = quantile_us(fl, 0.99);

	if (o->json)
		printf("{\"page\":\"%s\",\"memory\":\"%s\",\"cache\":\"%s\",\"write_pct\":%u,\"targets\":true",
		       st->page, st->memory, st->cache, o->write_pct);
	else
		printf("# targets %s %s %s write %u%%:", st->page, st->memory, st->cache, o->write_pct);
	target(o, "replay/kernel", rp->v[RS_US] / k, 1.0);
	target(o, "demand/kernel", med[find("libuffd")].v[RS_US] / k, 2.0);
	target(o, "fill/kernel", fl->v[RS_US] / k, 1.1);
	if (!o->write_pct && !strcmp(st->cache, "warm"))
		target(o, "replay/ideal", rp->v[RS_US] / med[find("ideal")].v[RS_US], 1.5);
	if (!strcmp(st->cache, "warm")) {
		target(o, "replay_p99_ms", p99 / 1e3, 1.0);
		target(o, "fill_p99_ms", p99f / 1e3, 1.0);
	}
	printf(o->json ? "}\n" : "\n");
}

/* ---- one variant and cache state: every contender, reps times, interleaved ---- */

static bool enabled(const struct opts *o, const struct rs_env *e, size_t i)
{
	return contenders[i].fn && (!o->only || list_has(o->only, contenders[i].name)) &&
	       !(contenders[i].small_only && e->page != PAGE);
}

/*
 * One run of contender i, from the cache state it needs. 0; 1 when the cold
 * state cannot be had (skipped); -1 on an error (reported).
 */
static int run_one(const struct state *st, struct rs_env *e, size_t i, bool warm,
		   struct rs_result *res)
{
	char name[96];

	snprintf(name, sizeof(name), "%s/%s/%s/%s", st->page, st->memory, st->cache,
		 contenders[i].name);
	if (!cache_state(e->fd, e->len, warm)) {
		fprintf(stderr, "uffd-restore: the snapshot's page cache cannot be made %s (%s): "
			"skipped\n", st->cache, warm ? "not enough memory?"
			: "POSIX_FADV_DONTNEED left it cached; a tmpfs file?");
		return warm ? -1 : 1;
	}
	no_result(res);
	e->cold = !warm;
	watchdog(name, 300);
	return contenders[i].fn(e, name, res);
}

/* The extra run of each contender with the sampler on (not in the medians). */
static int timeline(const struct opts *o, const struct state *st, struct rs_env *e, bool warm)
{
	struct rs_sampler *s = rs_sampler_new(o->sample_ms);
	struct rs_result res;
	int err = s ? 0 : -1;

	e->sampler = s;
	for (size_t i = 0; i < NCONT && !err; i++) {
		char label[96];

		if (!enabled(o, e, i) || (err = run_one(st, e, i, warm, &res)))
			continue;
		snprintf(label, sizeof(label), "%s %s %s %s", st->page, st->memory, st->cache,
			 contenders[i].name);
		rs_sampler_write(s, o->timeline, label);
	}
	e->sampler = NULL;
	rs_sampler_free(s);
	return err < 0 ? -1 : 0;
}

static int run_state(const struct opts *o, struct rs_env *e, size_t *order, const struct state *st)
{
	static struct rs_result runs[NCONT][MAX_REPS], med[NCONT];
	bool warm = !strcmp(st->cache, "warm");
	size_t k = find("kernel"), b = find("baseline");
	int err = 0;

	for (unsigned r = 0; r < o->reps && !err; r++) {
		shuffle(order, e->nset, SEED + 1 + r);	/* this run's order, the same for all */
		for (size_t j = 0; j < NCONT && !err; j++) {
			size_t i = (j + r) % NCONT;	/* rotate who goes first */

			if (enabled(o, e, i))
				err = run_one(st, e, i, warm, &runs[i][r]);
		}
	}
	if (!err && o->timeline)
		err = timeline(o, st, e, warm);
	alarm(0);
	if (err)
		return err < 0 ? -1 : 0;
	for (size_t i = 0; i < NCONT; i++) {
		if (enabled(o, e, i))
			summarize(runs[i], o->reps, &med[i]);
		else
			no_result(&med[i]);
	}
	for (size_t i = 0; i < NCONT; i++) {
		row(o, st, i, &med[i], med[k].v[RS_US], med[b].v[RS_US]);
		write_latency(o, st, i, &med[i]);
	}
	targets(o, st, med);
	return 0;
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f, "usage: uffd-restore [--mib N] [--reps N] [--file PATH] [--image PATH] [--around N]\n"
		"                    [--working-set FILE] [--snap-threads N] [--frame-size B]\n"
		"                    [--write-pct P] [--cluster N]\n"
		"                    [--fault-around BYTES] [--threads N] [--cache warm|cold|both]\n"
		"                    [--memory anon|memfd|both] [--page 4k|2m|both]\n"
		"                    [--only NAME,...] [--timeline FILE] [--latency FILE]\n"
		"                    [--sample-ms N] [--json] [--placement split|same|free]\n"
		"  --mib N         snapshot size (default 1024); the guest touches a quarter\n"
		"  --reps N        runs per contender and state, median reported (default 5)\n"
		"  --file PATH     the snapshot file to write (default: an unlinked file in /var/tmp)\n"
		"  --image PATH    the snapshot is this memory image (bench/snap-image.py), at most\n"
		"                  --mib of it, not the pattern\n"
		"  --working-set F the pages the guest touches: 4 KiB page numbers in F, one per\n"
		"                  line (bench/snap-image.py --workset), not a uniform quarter\n"
		"  --frame-size B  frames of the compressed contenders' files (a power of two,\n"
		"                  65536..4194304; default 262144)\n"
		"  --snap-threads N  decompressing threads of the compressed contenders\n"
		"                  (uffd_snap_opts.threads; default 0: one per CPU, at most 4)\n"
		"  --around N      4 KiB pages per fault of libuffd_around (default 16, as the\n"
		"                  kernel's fault_around_bytes)\n"
		"  --threads N     guest threads (default 2)\n"
		"  --write-pct P   share of the touched pages the guest writes after reading\n"
		"                  them (default 40; 0: a read-only guest)\n"
		"  --cluster N     the working set in aligned clusters of N 4 KiB pages (a power\n"
		"                  of two, default 1: scattered pages)\n"
		"  --fault-around B  the engine's demand fault-around window in bytes\n"
		"                  (uffd_restore_opts.fault_around; default: the engine's)\n"
		"  --cache C       page cache states to run (default both; cold is skipped when\n"
		"                  the cache cannot be dropped)\n"
		"  --memory M      guest memory: anon (UFFDIO_COPY), memfd (mapped twice,\n"
		"                  UFFDIO_CONTINUE) or both (default)\n"
		"  --page P        4k, 2m (hugetlb; huge pages reserved as root, else skipped)\n"
		"                  or both (default)\n"
		"  --only LIST     these contenders only (the ratios need kernel and baseline)\n"
		"  --timeline F    one more run of each contender and state, not in the medians,\n"
		"                  with a thread counting the pages present every --sample-ms;\n"
		"                  written to F as lines \"page memory cache contender t_ms pages\"\n"
		"  --latency F     the fault service-time histograms (summed over the runs) as\n"
		"                  lines \"page memory cache contender bucket_ns count\"\n"
		"  --sample-ms N   pause between two samples of --timeline (default 20; a sample of\n"
		"                  1 GiB takes about 2 ms of the handlers' CPU)\n"
		"  --placement P   split (default): handler threads on the last CPU, guest threads\n"
		"                  on the others; same: all on CPU 0; free: unpinned\n"
		"contenders:");
	for (size_t i = 0; i < NCONT; i++)
		fprintf(f, " %s", contenders[i].name);
	fprintf(f, "\n");
}

static bool one_of(const char *v, const char *a, const char *b)
{
	return !strcmp(v, a) || !strcmp(v, b) || !strcmp(v, "both");
}

static bool open_out(FILE **f, const char *path, const char *head)
{
	if (!(*f = fopen(path, "we")))
		return false;
	fprintf(*f, "# %s\n", head);
	return true;
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "reps", required_argument, NULL, 'r' },
		{ "file", required_argument, NULL, 'f' },
		{ "image", required_argument, NULL, 'I' },
		{ "working-set", required_argument, NULL, 'W' },
		{ "snap-threads", required_argument, NULL, 'S' },
		{ "frame-size", required_argument, NULL, 'Z' },
		{ "around", required_argument, NULL, 'a' },
		{ "threads", required_argument, NULL, 't' },
		{ "write-pct", required_argument, NULL, 'w' },
		{ "cluster", required_argument, NULL, 'C' },
		{ "fault-around", required_argument, NULL, 'F' },
		{ "cache", required_argument, NULL, 'c' },
		{ "memory", required_argument, NULL, 'M' },
		{ "page", required_argument, NULL, 'p' },
		{ "only", required_argument, NULL, 'o' },
		{ "timeline", required_argument, NULL, 'T' },
		{ "latency", required_argument, NULL, 'L' },
		{ "sample-ms", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "placement", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	size_t v;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		bool ok = true;

		errno = 0;
		switch (c) {
		case 'm': ok = parse_size(optarg, 2, 65536, &o->mib) && o->mib % 2 == 0; break;
		case 'r': ok = parse_size(optarg, 1, MAX_REPS, &v); o->reps = (unsigned)v; break;
		case 'f': o->file = optarg; break;
		case 'I': o->image = optarg; break;
		case 'W': o->workset = optarg; break;
		case 'S': ok = parse_size(optarg, 0, 64, &v); o->snap_threads = (unsigned)v; break;
		case 'Z':
			ok = parse_size(optarg, 64 << 10, 4 << 20, &v) && !(v & (v - 1));
			o->frame_size = v;
			break;
		case 'a': ok = parse_size(optarg, 1, 512, &o->around); break;
		case 't': ok = parse_size(optarg, 1, 64, &v); o->threads = (unsigned)v; break;
		case 'w': ok = parse_size(optarg, 0, 100, &v); o->write_pct = (unsigned)v; break;
		case 'C': ok = parse_size(optarg, 1, 512, &o->cluster) && !(o->cluster & (o->cluster - 1)); break;
		case 'F':
			ok = parse_size(optarg, 0, 1u << 20, &o->fault_around);
			o->fault_around_set = true;
			break;
		case 'c': ok = one_of(optarg, "warm", "cold"); o->cache = optarg; break;
		case 'M': ok = one_of(optarg, "anon", "memfd"); o->memory = optarg; break;
		case 'p': ok = one_of(optarg, "4k", "2m"); o->page = optarg; break;
		case 'o':
			ok = list_known("uffd-restore", "contender", optarg, &contenders[0].name,
					NCONT, sizeof(contenders[0]));
			o->only = optarg;
			break;
		case 'T':
			ok = open_out(&o->timeline, optarg, "page memory cache contender t_ms pages_present");
			break;
		case 'L':
			ok = open_out(&o->latency, optarg, "page memory cache contender bucket_ns count");
			break;
		case 's': ok = parse_size(optarg, 0, 1000, &v); o->sample_ms = (unsigned)v; break;
		case 'j': o->json = true; break;
		case 'P': ok = place_set(optarg) == 0; o->placement = optarg; break;
		case 'h': usage(stdout); exit(0);
		default: ok = false;
		}
		if (!ok) {
			if (c != '?')
				fprintf(stderr, "uffd-restore: bad value '%s'%s%s\n", optarg,
					errno ? ": " : "", errno ? strerror(errno) : "");
			usage(stderr);
			return -1;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return -1;
	}
	return 0;
}

/* ---- the variants ---- */

/* Distinct pages of size page holding the working set's PAGE pages. */
static size_t units(const size_t *set, size_t nset, size_t npages, size_t page)
{
	size_t per = page / PAGE, n = 0;
	unsigned char *seen = calloc(npages / per, 1);

	if (!seen)
		return 0;
	for (size_t k = 0; k < nset; k++)
		if (!seen[set[k] / per]++)
			n++;
	free(seen);
	return n;
}

/*
 * The replay contender's trace: one untimed run of the restore engine with
 * UFFD_RESTORE_RECORD, the guest touching the working set in an order of
 * its own (the timed runs' orders differ from it and from each other).
 */
static int record(struct rs_env *e, size_t *order, const char *page, const char *mem)
{
	static char path[64];
	char name[64];
	int err;

	if (!*path)
		snprintf(path, sizeof(path), "/var/tmp/uffd-restore-%d.trace", (int)getpid());
	snprintf(name, sizeof(name), "%s/%s/record", page, mem);
	shuffle(order, e->nset, SEED - 1);
	if (!cache_state(e->fd, e->len, true))
		return -1;
	watchdog(name, 300);
	err = rs_record(e, name, path);
	alarm(0);
	e->trace = path;
	return err;
}

/* Every selected memory and cache state of one page size. */
static void run_page(const struct opts *o, struct rs_env *e, size_t *order, const char *page)
{
	static const char *const mems[] = { "anon", "memfd" }, *const caches[] = { "warm", "cold" };

	e->page = !strcmp(page, "2m") ? HUGE : PAGE;
	e->nunits = units(order, e->nset, e->npages, e->page);
	if (e->page == HUGE && !rs_huge_reserve(e->len / HUGE))
		return;
	for (size_t m = 0; m < 2 && !errors; m++) {
		if (strcmp(o->memory, "both") && strcmp(o->memory, mems[m]))
			continue;
		e->memfd = m == 1;
		if (enabled(o, e, find("libuffd_replay")) && record(e, order, page, mems[m])) {
			errors++;
			break;
		}
		for (size_t c = 0; c < 2 && !errors; c++) {
			struct state st = { page, mems[m], caches[c] };

			if ((!strcmp(o->cache, "both") || !strcmp(o->cache, caches[c])) &&
			    run_state(o, e, order, &st))
				errors++;
		}
	}
	if (e->page == HUGE)
		rs_huge_release();
}

static void legend(const struct opts *o, size_t nset, double t0)
{
	char fa[32] = "default";

	if (o->json)
		return;
	if (o->fault_around_set)
		snprintf(fa, sizeof(fa), "%zu", o->fault_around);
	for (size_t i = 0; i < NCONT; i++)
		printf("# %-15s %s\n", contenders[i].name, contenders[i].note);
	printf("# working set: %s\n", o->workset ? o->workset : "a uniform random quarter of the pages");
	printf("# %zu MiB snapshot, %zu pages touched by %u threads, %u runs each, median; "
	       "--around %zu; %u%% of them written; clusters of %zu; fault-around %s; placement %s; %.1f s\n", o->mib, nset,
	       o->threads, o->reps, o->around, o->write_pct, o->cluster, fa, o->placement, (now_us() - t0) / 1e6);
}

int main(int argc, char **argv)
{
	struct opts o = { .mib = 1024, .around = 16, .write_pct = 40, .cluster = 1, .reps = 5, .threads = 2, .sample_ms = 20,
			  .cache = "both", .memory = "both", .page = "both", .placement = "split" };
	struct rs_env e = { .seed = SEED };
	size_t *order = NULL;
	double t0 = now_us();

	if (parse(argc, argv, &o))
		return 2;
	place(false);
	setvbuf(stdout, NULL, _IOLBF, 0);
	e.len = o.mib << 20;
	e.npages = e.len / PAGE;
	e.threads = o.threads;
	e.around = o.around;
	e.write_pct = o.write_pct;
	e.snap_threads = o.snap_threads;
	e.frame_size = o.frame_size;
	e.fault_around = o.fault_around;
	e.fault_around_set = o.fault_around_set;
	if (o.image && (e.fd = rs_image_open(&e, o.image, o.mib)) < 0)
		return 1;
	order = o.workset ? working_set_file(o.workset, e.npages, &e.nset) : working_set(e.npages, o.cluster, &e.nset);
	if (!order || (!o.image && (e.fd = make_snapshot(&o, e.len)) < 0))
		return 1;
	e.order = order;
	header(&o);
	if (strcmp(o.page, "2m"))
		run_page(&o, &e, order, "4k");
	if (strcmp(o.page, "4k"))
		run_page(&o, &e, order, "2m");
	legend(&o, e.nset, t0);
	if (e.trace)
		unlink(e.trace);
	rs_snap_cleanup();
	close(e.fd);
	free(order);
	if (o.timeline)
		fclose(o.timeline);
	if (o.latency)
		fclose(o.latency);
	if (bench_failures)
		fprintf(stderr, "uffd-restore: %u wrong result(s): the figures above are not valid\n",
			bench_failures);
	return errors || bench_failures ? 1 : 0;
}
