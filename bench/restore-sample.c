/* SPDX-License-Identifier: MIT */
/*
 * Pages present in the guest memory, once after a run and over time: a
 * sampler thread counts the present bits of /proc/self/pagemap over the
 * guest range every few milliseconds (1 GiB of 4 KiB pages is 2 MiB of
 * pagemap, read in 512 KiB preads: about 2 ms a sample on the reference
 * machine) and keeps (time, pages present) for the timeline plot.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "restore.h"

#define CHUNK 65536		/* pagemap entries per pread */
#define MAX_SAMPLES 65536

struct rs_sampler {
	unsigned interval_ms;
	int pagemap;
	uint64_t *buf;		/* CHUNK entries */
	const void *mem;
	size_t len;
	pthread_t thread;
	bool running, stop;	/* stop: written by the caller, read by the thread */
	size_t n;		/* samples of the last run */
	double *t, *present;	/* MAX_SAMPLES each; t in us, relative after rs_sampler_stop() */
};

/* Present bits of the PAGE pages of [mem, mem+len); -1 on a short read. */
static long long count_present(int pagemap, uint64_t *buf, size_t bufn, const void *mem, size_t len)
{
	size_t first = (uintptr_t)mem / PAGE, n = len / PAGE;
	long long count = 0;

	for (size_t i = 0; i < n; i += bufn) {
		size_t m = n - i < bufn ? n - i : bufn;

		if (pread(pagemap, buf, m * 8, (off_t)((first + i) * 8)) != (ssize_t)(m * 8))
			return -1;
		for (size_t j = 0; j < m; j++)
			count += (long long)(buf[j] >> 63);
	}
	return count;
}

double rs_present_pages(const void *mem, size_t len)
{
	uint64_t buf[4096];
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	long long n = fd < 0 ? -1 : count_present(fd, buf, 4096, mem, len);

	if (fd >= 0)
		close(fd);
	return n < 0 ? NAN : (double)n;
}

struct rs_sampler *rs_sampler_new(unsigned interval_ms)
{
	struct rs_sampler *s = calloc(1, sizeof(*s));

	if (!s)
		goto fail;
	s->interval_ms = interval_ms;
	s->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	s->buf = malloc(CHUNK * sizeof(*s->buf));
	s->t = malloc(MAX_SAMPLES * sizeof(*s->t));
	s->present = malloc(MAX_SAMPLES * sizeof(*s->present));
	if (s->pagemap >= 0 && s->buf && s->t && s->present)
		return s;
fail:
	fprintf(stderr, "uffd-restore: the sampler: %s\n", strerror(errno));
	rs_sampler_free(s);
	return NULL;
}

void rs_sampler_free(struct rs_sampler *s)
{
	if (!s)
		return;
	if (s->pagemap >= 0)
		close(s->pagemap);
	free(s->buf);
	free(s->t);
	free(s->present);
	free(s);
}

/* Samples until told to stop, then once more: the last sample follows the guest's end. */
static void *sampler_main(void *arg)
{
	struct rs_sampler *s = arg;
	struct timespec pause = { 0, (long)s->interval_ms * 1000000 };

	pthread_setname_np(pthread_self(), "restore-sampler");
	while (s->n < MAX_SAMPLES) {
		bool last = __atomic_load_n(&s->stop, __ATOMIC_ACQUIRE);
		double t = now_us();
		long long c = count_present(s->pagemap, s->buf, CHUNK, s->mem, s->len);

		if (c < 0)
			break;
		s->t[s->n] = t;
		s->present[s->n++] = (double)c;
		if (last)
			break;
		nanosleep(&pause, NULL);
	}
	return NULL;
}

int rs_sampler_start(struct rs_sampler *s, const void *mem, size_t len)
{
	int err;

	s->mem = mem;
	s->len = len;
	s->n = 0;
	s->stop = false;
	place(true);		/* beside the handlers, off the guest's CPUs */
	err = pthread_create(&s->thread, NULL, sampler_main, s);
	place(false);
	if (err) {
		fprintf(stderr, "uffd-restore: the sampler thread: %s\n", strerror(err));
		return -1;
	}
	s->running = true;
	return 0;
}

void rs_sampler_stop(struct rs_sampler *s, double start)
{
	if (!s->running)
		return;
	__atomic_store_n(&s->stop, true, __ATOMIC_RELEASE);
	pthread_join(s->thread, NULL);
	s->running = false;
	for (size_t i = 0; i < s->n; i++)
		s->t[i] -= start;
}

void rs_sampler_write(const struct rs_sampler *s, FILE *f, const char *label)
{
	for (size_t i = 0; i < s->n; i++)
		fprintf(f, "%s %.3f %.0f\n", label, s->t[i] / 1e3, s->present[i]);
}
