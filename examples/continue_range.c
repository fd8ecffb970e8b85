/* SPDX-License-Identifier: MIT */
/*
 * Map pages on demand or in bulk with uffd_continue_range().
 *
 * An application keeps a data set in a memfd region. Its contents are put
 * into the page cache up front (uffd_region_populate, no fault per page),
 * but the base view starts empty: the first touch of a page is a MINOR
 * fault. Phase 1 maps pages on demand: reader threads touch random pages and
 * a handler thread maps each faulting page with uffd_continue_range().
 * Phase 2 maps everything that is left in one uffd_continue_range() call,
 * stepping over the pages phase 1 mapped (UFFD_SKIP_EXISTING). Every byte
 * is then checked.
 *
 * usage: continue_range [MiB] [reader threads] [--summary]   (defaults: 64, 2)
 *        --summary: one line for the demo instead of the report
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uffd.h>

struct app {
	struct uffd *u;
	struct uffd_region *r;
	size_t pages, ps, touches_per_reader;
	atomic_bool stop;
	atomic_ulong faults;
	unsigned char *faulted;	/* pages mapped on demand, by the handler only */
	size_t mapped_on_demand;
	unsigned long long fault_ns;	/* handler time, summed */
	bool summary;			/* one SUMMARY line instead of the report */
};

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* The word stored at every 8 bytes of page p. */
static uint64_t pattern(size_t p, size_t word)
{
	return (uint64_t)p * 0x9e3779b97f4a7c15ull ^ word;
}

static int die(const char *what, int err)
{
	fprintf(stderr, "continue_range: %s: %s (%s)\n", what, strerror(-err), uffd_last_error());
	return 1;
}

/* Handler thread: wait for faults, map each faulting page. */
static void *handler(void *arg)
{
	struct app *a = arg;
	struct uffd_event ev[16];
	struct pollfd pfd = { .fd = uffd_fd(a->u), .events = POLLIN };

	while (!atomic_load(&a->stop)) {
		int n;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		n = uffd_read_events(a->u, ev, 16);
		for (int i = 0; i < n; i++) {
			double t0 = now_ns();
			int err;

			if (ev[i].type != UFFD_EV_FAULT)
				continue;
			err = uffd_continue_range(a->u, ev[i].fault.addr, ev[i].fault.len,
						  UFFD_SKIP_EXISTING, NULL);
			if (err)
				fprintf(stderr, "continue_range: %s\n", uffd_last_error());
			a->fault_ns += (unsigned long long)(now_ns() - t0);
			atomic_fetch_add(&a->faults, 1);
			if (!a->faulted[ev[i].fault.offset / a->ps]) {
				a->faulted[ev[i].fault.offset / a->ps] = 1;
				a->mapped_on_demand++;
			}
		}
	}
	return NULL;
}

/* Reader thread: touch random pages, check what they read. */
static void *reader(void *arg)
{
	struct app *a = arg;
	const volatile uint64_t *base = uffd_region_base(a->r);
	unsigned seed = (unsigned)(uintptr_t)&seed;
	uintptr_t bad = 0;

	for (size_t i = 0; i < a->touches_per_reader; i++) {
		size_t p = (size_t)rand_r(&seed) % a->pages;

		if (base[p * a->ps / 8] != pattern(p, 0))
			bad++;
	}
	return (void *)bad;
}

static int fill(struct app *a)
{
	size_t words = a->ps / 8;
	uint64_t *buf = malloc(a->ps);
	int err = 0;

	if (!buf)
		return -ENOMEM;
	for (size_t p = 0; p < a->pages && !err; p++) {
		for (size_t w = 0; w < words; w++)
			buf[w] = pattern(p, w);
		err = uffd_region_populate(a->r, p * a->ps, buf, a->ps, 0);
	}
	free(buf);
	return err;
}

static size_t verify(struct app *a)
{
	const uint64_t *base = uffd_region_base(a->r);
	size_t words = a->ps / 8, bad = 0;

	for (size_t p = 0; p < a->pages; p++)
		for (size_t w = 0; w < words; w++)
			bad += base[p * words + w] != pattern(p, w);
	return bad;
}

static int run(struct app *a, unsigned nreaders)
{
	pthread_t h, rd[64];
	uintptr_t bad = 0;
	size_t done = 0, wrong;
	double t0, t_demand, t_bulk;
	int err;

	pthread_create(&h, NULL, handler, a);
	t0 = now_ns();
	for (unsigned i = 0; i < nreaders; i++)
		pthread_create(&rd[i], NULL, reader, a);
	for (unsigned i = 0; i < nreaders; i++) {
		void *ret;

		pthread_join(rd[i], &ret);
		bad += (uintptr_t)ret;
	}
	t_demand = now_ns() - t0;
	atomic_store(&a->stop, true);
	pthread_join(h, NULL);

	t0 = now_ns();
	err = uffd_continue_range(a->u, uffd_region_base(a->r), a->pages * a->ps,
				  UFFD_SKIP_EXISTING, &done);
	t_bulk = now_ns() - t0;
	if (err)
		return die("uffd_continue_range (bulk)", err);
	wrong = verify(a);

	unsigned long faults = atomic_load(&a->faults);
	size_t bulk = a->pages - a->mapped_on_demand;
	bool ok = !wrong && !bad && done == a->pages * a->ps;

	if (a->summary) {
		printf("SUMMARY\tcontinue_range\t%zu MiB: %zu pages on demand, %zu in one bulk call"
		       "\t%.1f us per fault, %.2f us per page in bulk\t%s\n",
		       a->pages * a->ps >> 20, a->mapped_on_demand, bulk,
		       faults ? a->fault_ns / 1e3 / faults : 0.0, bulk ? t_bulk / 1e3 / bulk : 0.0,
		       ok ? "yes" : "no");
		return !ok;
	}
	printf("region            %zu MiB shmem, %zu pages of %zu bytes\n",
	       a->pages * a->ps >> 20, a->pages, a->ps);
	printf("on demand         %zu pages mapped by %lu minor faults (%u readers, %.1f ms)\n",
	       a->mapped_on_demand, faults, nreaders, t_demand / 1e6);
	printf("                  handler: %.2f us per uffd_continue_range of one page\n",
	       faults ? a->fault_ns / 1e3 / faults : 0.0);
	printf("in bulk           %zu pages in one uffd_continue_range call: %.2f ms, %.3f us per page\n",
	       bulk, t_bulk / 1e6, bulk ? t_bulk / 1e3 / bulk : 0.0);
	printf("verified          %s (%zu bad words, %lu bad reads)\n",
	       wrong || bad ? "NO" : "yes", wrong, (unsigned long)bad);
	return !ok;
}

int main(int argc, char **argv)
{
	size_t mib = 64;
	unsigned nreaders = 2, npos = 0;
	struct app a = { 0 };
	struct uffd_region_opts ro = { .size = sizeof(ro),
				       .modes = UFFDIO_REGISTER_MODE_MINOR, .fd = -1 };
	int err, ret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--summary"))
			a.summary = true;
		else if (npos++ == 0)
			mib = strtoul(argv[i], NULL, 0);
		else if (npos == 2)
			nreaders = (unsigned)strtoul(argv[i], NULL, 0);
		else
			mib = 0;	/* too many arguments: usage */
	}
	if (!mib || !nreaders || nreaders > 64) {
		fprintf(stderr, "usage: continue_range [MiB] [reader threads (1-64)] [--summary]\n");
		return 2;
	}
	if ((err = uffd_open(&a.u, NULL)))
		return die("uffd_open", err);
	ro.length = mib << 20;
	if ((err = uffd_region_create(a.u, &ro, &a.r)))
		return die("uffd_region_create", err);
	a.ps = uffd_region_page_size(a.r);
	a.pages = ro.length / a.ps;
	a.touches_per_reader = a.pages / 4 / nreaders;
	a.faulted = calloc(a.pages, 1);
	if (!a.faulted)
		return die("calloc", -ENOMEM);
	if ((err = fill(&a)))
		return die("uffd_region_populate", err);
	ret = run(&a, nreaders);
	uffd_region_destroy(a.r);
	uffd_close(a.u);
	free(a.faulted);
	return ret;
}
