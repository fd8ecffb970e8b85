/* SPDX-License-Identifier: MIT */
/*
 * Shared pieces of the benchmark: the data pattern and its checks, the
 * timed touch loops, latency samples, memory set-up, threads, watchdog.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define WORDS (PAGE / sizeof(uint64_t))

unsigned bench_failures;

double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void hist_add(uint64_t *h, uint64_t ns)
{
	unsigned i = ns ? 63u - (unsigned)__builtin_clzll(ns) : 0;

	h[i < UFFD_HIST_BUCKETS ? i : UFFD_HIST_BUCKETS - 1]++;
}

void bench_fail(const char *metric, const char *fmt, ...)
{
	va_list ap;

	__atomic_fetch_add(&bench_failures, 1, __ATOMIC_RELAXED);
	fprintf(stderr, "uffd-bench: %s: WRONG RESULT: ", metric);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- the pattern ---- */

void fill_pages(void *dst, size_t first_page, size_t npages, uint64_t seed)
{
	uint64_t *w = dst;

	for (size_t p = 0; p < npages; p++)
		for (size_t i = 0; i < WORDS; i++)
			*w++ = pattern(seed, first_page + p, i);
}

static bool page_ok(const char *metric, const uint64_t *w, size_t p, uint64_t seed,
		    size_t skip_word)
{
	for (size_t i = 0; i < WORDS; i++)
		if (i != skip_word && w[i] != pattern(seed, p, i)) {
			bench_fail(metric, "page %zu word %zu is 0x%llx, expected 0x%llx", p, i,
				   (unsigned long long)w[i], (unsigned long long)pattern(seed, p, i));
			return false;
		}
	return true;
}

bool check_pages(const char *metric, const void *p, size_t first_page, size_t npages,
		 uint64_t seed)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < npages; i++)
		if (!page_ok(metric, w + i * WORDS, first_page + i, seed, WORDS))
			return false;
	return true;
}

bool check_pages_sampled(const char *metric, const void *p, size_t npages, uint64_t seed)
{
	static const size_t words[] = { 0, WORDS / 2, WORDS - 1 };
	const uint64_t *w = p;

	for (size_t i = 0; i < npages; i++)
		for (size_t k = 0; k < 3; k++)
			if (w[i * WORDS + words[k]] != pattern(seed, i, words[k])) {
				bench_fail(metric, "page %zu word %zu is 0x%llx, expected 0x%llx", i,
					   words[k], (unsigned long long)w[i * WORDS + words[k]],
					   (unsigned long long)pattern(seed, i, words[k]));
				return false;
			}
	return true;
}

/* ---- latencies ---- */

void lat_add(struct lat *l, double us)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 4096;
		double *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return;		/* fewer samples, not a wrong result */
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = us;
}

void lat_free(struct lat *l)
{
	free(l->v);
	*l = (struct lat){ 0 };
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double lat_pct(struct lat *l, double pct)
{
	size_t i;

	if (!l->n)
		return __builtin_nan("");
	qsort(l->v, l->n, sizeof(l->v[0]), cmp_double);
	i = (size_t)(pct / 100.0 * (double)(l->n - 1) + 0.5);
	return l->v[i];
}

/* ---- memory ---- */

int memfd_pattern(const char *name, size_t len, uint64_t seed)
{
	size_t chunk = 256 * PAGE;
	char *buf = malloc(chunk);
	int fd = memfd_create(name, MFD_CLOEXEC);

	if (fd < 0 || !buf || ftruncate(fd, (off_t)len))
		goto fail;
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;

		fill_pages(buf, off / PAGE, n / PAGE, seed);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
			goto fail;
	}
	free(buf);
	return fd;
fail:
	fprintf(stderr, "uffd-bench: memfd %s of %zu bytes: %s\n", name, len, strerror(errno));
	free(buf);
	if (fd >= 0)
		close(fd);
	return -1;
}

void *anon_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		fprintf(stderr, "uffd-bench: mmap of %zu bytes: %s\n", len, strerror(errno));
		return NULL;
	}
	madvise(p, len, MADV_NOHUGEPAGE);	/* one fault per 4 KiB page, as measured */
	return p;
}

/* ---- touch loops ---- */

double touch_read(const char *metric, const char *base, size_t first, size_t n,
		  uint64_t seed, struct lat *lat)
{
	size_t bad = 0;
	double t0 = now_us();

	for (size_t i = first; i < first + n; i++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(base + i * PAGE);
		uint64_t v;

		if (lat) {
			double a = now_us();

			v = *w;
			lat_add(lat, now_us() - a);
		} else {
			v = *w;
		}
		if (v != pattern(seed, i, 0) && !bad++)
			bench_fail(metric, "page %zu reads 0x%llx at the touch, expected 0x%llx", i,
				   (unsigned long long)v, (unsigned long long)pattern(seed, i, 0));
	}
	return (now_us() - t0) / (double)n;
}

double touch_write(const char *metric, char *base, size_t n, uint64_t seed,
		   uint64_t marker, struct lat *lat)
{
	size_t bad = 0;
	double t0 = now_us();

	for (size_t i = 0; i < n; i++) {
		volatile uint64_t *w = (volatile uint64_t *)(base + i * PAGE);

		/* The write comes first: the fault it takes is a write fault. */
		if (lat) {
			double a = now_us();

			w[1] = marker;
			lat_add(lat, now_us() - a);
		} else {
			w[1] = marker;
		}
		if (w[0] != pattern(seed, i, 0) && !bad++)
			bench_fail(metric, "page %zu reads 0x%llx, expected 0x%llx", i,
				   (unsigned long long)w[0], (unsigned long long)pattern(seed, i, 0));
	}
	return (now_us() - t0) / (double)n;
}

bool check_written(const char *metric, const char *base, size_t n, uint64_t seed,
		   uint64_t marker)
{
	for (size_t i = 0; i < n; i++) {
		const uint64_t *w = (const uint64_t *)(base + i * PAGE);

		if (w[1] != marker) {
			bench_fail(metric, "page %zu: the write of the WP fault is lost", i);
			return false;
		}
		if (!page_ok(metric, w, i, seed, 1))
			return false;
	}
	return true;
}

/* ---- threads ---- */

struct team {
	void (*fn)(void *arg, unsigned i);
	void *arg;
	pthread_barrier_t go;
};

struct member {
	struct team *t;
	unsigned i;
	double start;		/* when it was released */
};

static void *member_main(void *p)
{
	struct member *m = p;

	pthread_barrier_wait(&m->t->go);
	m->start = now_us();
	m->t->fn(m->t->arg, m->i);
	return NULL;
}

double run_threads(unsigned n, void (*fn)(void *arg, unsigned i), void *arg)
{
	double start;

	return run_threads_at(n, fn, arg, &start);
}

double run_threads_at(unsigned n, void (*fn)(void *arg, unsigned i), void *arg, double *start)
{
	struct team t = { .fn = fn, .arg = arg };
	pthread_t th[64];
	struct member m[64];
	unsigned started = 0;
	double t0;

	if (n > 64)
		return -1;
	pthread_barrier_init(&t.go, NULL, n + 1);
	for (; started < n; started++) {
		m[started] = (struct member){ .t = &t, .i = started };
		if (pthread_create(&th[started], NULL, member_main, &m[started]))
			break;
	}
	if (started < n) {	/* cannot happen in practice; never leave a waiter */
		fprintf(stderr, "uffd-bench: pthread_create failed\n");
		abort();
	}
	pthread_barrier_wait(&t.go);
	t0 = now_us();
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	/* From the first member's release: the members may run before this thread does. */
	for (unsigned i = 0; i < n; i++)
		t0 = m[i].start < t0 ? m[i].start : t0;
	*start = t0;
	t0 = now_us() - t0;
	pthread_barrier_destroy(&t.go);
	return t0;
}

bool parse_size(const char *s, size_t min, size_t max, size_t *out)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	if (!*s || *end || v < min || v > max)
		return false;
	*out = (size_t)v;
	return true;
}

/* ---- comma-separated lists of names ---- */

bool list_has(const char *list, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = list; (p = strstr(p, name)); p += n)
		if ((p == list || p[-1] == ',') && (p[n] == ',' || !p[n]))
			return true;
	return false;
}

bool list_known(const char *prog, const char *what, const char *list,
		const char *const *names, size_t n, size_t stride)
{
	char *copy = strdup(list), *save, *tok;
	bool ok = copy != NULL;

	for (tok = copy ? strtok_r(copy, ",", &save) : NULL; tok && ok;
	     tok = strtok_r(NULL, ",", &save)) {
		ok = false;
		for (size_t i = 0; i < n; i++)
			ok |= !strcmp(tok, *(const char *const *)((const char *)names + i * stride));
		if (!ok)
			fprintf(stderr, "%s: unknown %s '%s'\n", prog, what, tok);
	}
	free(copy);
	return ok;
}

/* ---- placement: which CPUs the faulting and the handling threads use ---- */

static char placement = 's';

int place_set(const char *name)
{
	if (strcmp(name, "split") && strcmp(name, "same") && strcmp(name, "free"))
		return -1;
	placement = name[1] == 'p' ? 's' : name[1] == 'a' ? 'a' : 'f';
	return 0;
}

/*
 * Threads inherit the creator's affinity: the main thread takes the
 * handler's CPUs while it starts a handler thread, the faulters' otherwise.
 * split: handlers on the last CPU, faulting threads on the others; same:
 * everything on CPU 0; free: the scheduler decides.
 */
void place(bool handler)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;

	if (placement == 'f' || n < 2)
		return;
	CPU_ZERO(&set);
	if (placement == 'a')
		CPU_SET(0, &set);
	else if (handler)
		CPU_SET(n - 1, &set);
	else
		for (long i = 0; i < n - 1; i++)
			CPU_SET(i, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

/* ---- watchdog: a fault nobody resolves would hang the run ---- */

static const char *volatile wd_metric = "";
static void (*volatile wd_cleanup)(void);

static void wd_fire(int sig)
{
	static const char a[] = "uffd-bench: watchdog: metric ";
	static const char b[] = " did not finish in time (a fault was never resolved?)\n";
	const char *m = wd_metric;

	(void)sig;
	if (wd_cleanup)
		wd_cleanup();
	if (write(2, a, sizeof(a) - 1) < 0 || write(2, m, strlen(m)) < 0 ||
	    write(2, b, sizeof(b) - 1) < 0) {
		/* nothing more to say */
	}
	_exit(3);
}

void watchdog(const char *metric, unsigned seconds)
{
	static bool installed;

	if (!installed) {
		struct sigaction sa = { .sa_handler = wd_fire };

		sigaction(SIGALRM, &sa, NULL);
		installed = true;
	}
	wd_metric = metric;
	alarm(seconds);
}

void watchdog_cleanup(void (*fn)(void))
{
	wd_cleanup = fn;
}
