/* SPDX-License-Identifier: MIT */
/*
 * uffd-restore: restoring a VM snapshot (issue 15). A snapshot file of known
 * contents; a "guest" of threads touching a fixed working set (a quarter of
 * the pages, scattered, the same set every run, a new order every run) and
 * checking every page it touches. Timed from the guest's start to its last
 * touch, for each contender, with the snapshot's page cache warm and cold;
 * the contenders interleaved (the first one rotating), median reported.
 *
 * usage: uffd-restore [--mib N] [--reps N] [--file PATH] [--around N]
 *                     [--threads N] [--cache warm|cold|both] [--json]
 *                     [--placement split|same|free]
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

static const struct {
	const char *name;
	rs_fn fn;		/* NULL: not implemented yet */
	const char *note;
} contenders[] = {
	{ "baseline", rs_baseline, "poll + read + one UFFDIO_COPY per fault (bench/baseline.c)" },
	{ "libuffd", rs_libuffd, "loop, MISSING region with the snapshot as page source" },
	{ "libuffd_around", rs_libuffd_around, "the same, each fault widened to its aligned --around block" },
	{ "libuffd_replay", NULL, "NOT IMPLEMENTED: the restore engine (record/replay) does not exist yet" },
	{ "kernel", rs_kernel, "snapshot mapped MAP_PRIVATE, no userfaultfd" },
};
#define NCONT (sizeof(contenders) / sizeof(contenders[0]))

struct opts {
	size_t mib, around;
	unsigned reps, threads;
	const char *file, *cache, *placement;
	bool json;
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

/* A quarter of the pages, scattered: the same set for every run and contender. */
static size_t *working_set(size_t npages, size_t *nset)
{
	size_t *all = malloc(npages * sizeof(*all));

	if (!all)
		return NULL;
	for (size_t i = 0; i < npages; i++)
		all[i] = i;
	shuffle(all, npages, SEED);
	*nset = npages / 4;
	return all;
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

/* Field by field: the median of each figure over the runs. */
static struct rs_result median_result(struct rs_result *runs, unsigned n)
{
	double v[MAX_REPS];
	struct rs_result m;
	double *out = &m.us;

	for (size_t f = 0; f < sizeof(m) / sizeof(double); f++) {
		for (unsigned r = 0; r < n; r++)
			v[r] = (&runs[r].us)[f];
		out[f] = median(v, n);
	}
	return m;
}

/* ---- output ---- */

static void json_num(const char *key, double v)
{
	if (isnan(v))
		printf(",\"%s\":null", key);
	else
		printf(",\"%s\":%.6g", key, v);
}

static void cell(int decimals, double v)
{
	if (isnan(v))
		printf("%10s", "-");
	else
		printf("%10.*f", decimals, v);
}

static void row(const struct opts *o, const char *cache, size_t i, const struct rs_result *m,
		double kernel_us, double base_us)
{
	double vs_k = m->us / kernel_us, vs_b = m->us / base_us;

	if (o->json) {
		printf("{\"cache\":\"%s\",\"contender\":\"%s\",\"implemented\":%s", cache,
		       contenders[i].name, contenders[i].fn ? "true" : "false");
		json_num("ms", m->us / 1e3);
		json_num("vs_kernel", vs_k);
		json_num("vs_baseline", vs_b);
		json_num("fault_msgs", m->msgs);
		json_num("ioctls", m->ioctls);
		json_num("pages_mapped", m->mapped);
		json_num("minflt", m->minflt);
		json_num("majflt", m->majflt);
		printf("}\n");
		return;
	}
	printf("%-5s %-15s", cache, contenders[i].name);
	cell(1, m->us / 1e3);
	cell(3, vs_k);
	cell(3, vs_b);
	cell(0, m->msgs);
	cell(0, m->ioctls);
	cell(0, m->mapped);
	cell(0, m->minflt);
	cell(0, m->majflt);
	printf("  %s\n", contenders[i].note);
}

/* ---- one cache state: every contender, reps times, interleaved ---- */

static size_t find(const char *name)
{
	for (size_t i = 0; i < NCONT; i++)
		if (!strcmp(contenders[i].name, name))
			return i;
	abort();
}

static int run_state(const struct opts *o, struct rs_env *e, size_t *order, bool warm)
{
	static struct rs_result runs[NCONT][MAX_REPS], med[NCONT];
	const char *cache = warm ? "warm" : "cold";
	size_t k = find("kernel"), b = find("baseline");

	for (unsigned r = 0; r < o->reps; r++) {
		shuffle(order, e->nset, SEED + 1 + r);	/* this run's order, the same for all */
		for (size_t j = 0; j < NCONT; j++) {
			size_t i = (j + r) % NCONT;	/* rotate who goes first */
			char name[64];

			if (!contenders[i].fn)
				continue;
			snprintf(name, sizeof(name), "%s/%s", cache, contenders[i].name);
			if (!cache_state(e->fd, e->len, warm)) {
				fprintf(stderr, "uffd-restore: the snapshot's page cache cannot be made %s "
					"(%s): skipped\n", cache, warm ? "not enough memory?"
					: "POSIX_FADV_DONTNEED left it cached; a tmpfs file?");
				return warm ? -1 : 0;
			}
			watchdog(name, 300);
			if (contenders[i].fn(e, name, &runs[i][r]))
				return -1;
		}
	}
	alarm(0);
	for (size_t i = 0; i < NCONT; i++)
		med[i] = contenders[i].fn ? median_result(runs[i], o->reps)
			 : (struct rs_result){ NAN, NAN, NAN, NAN, NAN, NAN };
	for (size_t i = 0; i < NCONT; i++)
		row(o, cache, i, &med[i], med[k].us, med[b].us);
	return 0;
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f, "usage: uffd-restore [--mib N] [--reps N] [--file PATH] [--around N]\n"
		"                    [--threads N] [--cache warm|cold|both] [--json]\n"
		"                    [--placement split|same|free]\n"
		"  --mib N        snapshot size (default 1024); the guest touches a quarter\n"
		"  --reps N       runs per contender and cache state, median reported (default 5)\n"
		"  --file PATH    the snapshot file to write (default: an unlinked file in /var/tmp)\n"
		"  --around N     pages per fault of libuffd_around (default 16, as the kernel's\n"
		"                 fault_around_bytes)\n"
		"  --threads N    guest threads (default 2)\n"
		"  --cache C      page cache states to run (default both; cold is skipped when\n"
		"                 the cache cannot be dropped)\n"
		"  --placement P  split (default): handler threads on the last CPU, guest threads\n"
		"                 on the others; same: all on CPU 0; free: unpinned\n");
}

static int parse(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "mib", required_argument, NULL, 'm' },
		{ "reps", required_argument, NULL, 'r' },
		{ "file", required_argument, NULL, 'f' },
		{ "around", required_argument, NULL, 'a' },
		{ "threads", required_argument, NULL, 't' },
		{ "cache", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "placement", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	size_t v;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		bool ok = true;

		switch (c) {
		case 'm': ok = parse_size(optarg, 1, 65536, &o->mib); break;
		case 'r': ok = parse_size(optarg, 1, MAX_REPS, &v); o->reps = (unsigned)v; break;
		case 'f': o->file = optarg; break;
		case 'a': ok = parse_size(optarg, 1, 512, &o->around); break;
		case 't': ok = parse_size(optarg, 1, 64, &v); o->threads = (unsigned)v; break;
		case 'c':
			ok = !strcmp(optarg, "warm") || !strcmp(optarg, "cold") || !strcmp(optarg, "both");
			o->cache = optarg;
			break;
		case 'j': o->json = true; break;
		case 'P': ok = place_set(optarg) == 0; o->placement = optarg; break;
		case 'h': usage(stdout); exit(0);
		default: ok = false;
		}
		if (!ok) {
			if (c != '?')
				fprintf(stderr, "uffd-restore: bad value '%s'\n", optarg);
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

int main(int argc, char **argv)
{
	struct opts o = { .mib = 1024, .around = 16, .reps = 5, .threads = 2, .cache = "both",
			  .placement = "split" };
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
	if (!(order = working_set(e.npages, &e.nset)) || (e.fd = make_snapshot(&o, e.len)) < 0)
		return 1;
	e.order = order;
	if (!o.json)
		printf("%-5s %-15s%10s%10s%10s%10s%10s%10s%10s%10s\n", "cache", "contender", "ms",
		       "vs_kernel", "vs_base", "fault_msg", "ioctls", "mapped", "minflt", "majflt");
	if (strcmp(o.cache, "cold") && run_state(&o, &e, order, true))
		errors++;
	if (strcmp(o.cache, "warm") && run_state(&o, &e, order, false))
		errors++;
	if (!o.json)
		printf("# %zu MiB snapshot, %zu pages touched by %u threads, %u runs each, median; "
		       "--around %zu; placement %s; %.1f s\n", o.mib, e.nset, o.threads, o.reps,
		       o.around, o.placement, (now_us() - t0) / 1e6);
	close(e.fd);
	free(order);
	if (bench_failures)
		fprintf(stderr, "uffd-restore: %u wrong result(s): the figures above are not valid\n",
			bench_failures);
	return errors || bench_failures ? 1 : 0;
}
