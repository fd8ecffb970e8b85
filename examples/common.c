/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "common.h"

uint64_t ex_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void ex_fill_page(uint64_t *dst, size_t ps, uint64_t seed, uint64_t p)
{
	for (size_t w = 0; w < ps / 8; w++)
		dst[w] = ex_pattern(seed, p, w);
}

void ex_lat_add(struct ex_lat *l, uint64_t ns)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 1024;
		uint64_t *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return;		/* a lost sample, not a wrong one */
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = ns;
}

void ex_lat_merge(struct ex_lat *into, struct ex_lat *from)
{
	for (size_t i = 0; i < from->n; i++)
		ex_lat_add(into, from->v[i]);
	ex_lat_free(from);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

double ex_lat_pct_us(struct ex_lat *l, double q)
{
	size_t i;

	if (!l->n)
		return 0;
	qsort(l->v, l->n, sizeof(l->v[0]), cmp_u64);
	i = (size_t)(q / 100.0 * (double)(l->n - 1) + 0.5);
	return (double)l->v[i < l->n ? i : l->n - 1] / 1e3;
}

void ex_lat_free(struct ex_lat *l)
{
	free(l->v);
	*l = (struct ex_lat){ 0 };
}

const char *ex_opt(int argc, char **argv, int *i, const char *name)
{
	size_t n = strlen(name);
	const char *a = argv[*i];

	if (strncmp(a, name, n))
		return NULL;
	if (a[n] == '=')
		return a + n + 1;
	if (a[n] || *i + 1 >= argc)
		return NULL;
	return argv[++*i];
}

unsigned long ex_count(const char *prog, const char *name, const char *val,
		       unsigned long min, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(val, &end, 10);
	if (errno || end == val || *end || v < min || v > max) {
		fprintf(stderr, "%s: %s must be a number from %lu to %lu, not '%s'\n",
			prog, name, min, max, val);
		exit(2);
	}
	return v;
}

int ex_send_all(int fd, struct iovec *iov, int n)
{
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };

	while (m.msg_iovlen) {
		ssize_t k = sendmsg(fd, &m, MSG_NOSIGNAL);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k ? -errno : -EIO;
		while (m.msg_iovlen && (size_t)k >= m.msg_iov->iov_len) {
			k -= (ssize_t)m.msg_iov->iov_len;
			m.msg_iov++;
			m.msg_iovlen--;
		}
		if (m.msg_iovlen) {
			m.msg_iov->iov_base = (char *)m.msg_iov->iov_base + k;
			m.msg_iov->iov_len -= (size_t)k;
		}
	}
	return 0;
}

int ex_recv_all(int fd, void *buf, size_t len)
{
	for (size_t got = 0; got < len;) {
		ssize_t k = read(fd, (char *)buf + got, len - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k ? -errno : -ECONNRESET;
		got += (size_t)k;
	}
	return 0;
}

int ex_fail(const char *prog, const char *what, int err)
{
	const char *why = uffd_last_error();

	fprintf(stderr, "%s: %s: %s%s%s%s\n", prog, what, strerror(err < 0 ? -err : err),
		*why ? " (" : "", why, *why ? ")" : "");
	return 1;
}

void ex_summary(const char *example, bool ok, const char *what, const char *figure)
{
	printf("SUMMARY\t%s\t%s\t%s\t%s\n", example, what, figure, ok ? "yes" : "no");
	fflush(stdout);
}

_Noreturn void ex_die(const char *prog, int code, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static char deadline_msg[128];	/* written by the handler: made before the alarm is set */

static void on_alarm(int sig)
{
	(void)sig;
	(void)!write(2, deadline_msg, strlen(deadline_msg));
	_exit(3);
}

void ex_deadline(const char *prog, unsigned seconds)
{
	snprintf(deadline_msg, sizeof(deadline_msg), "%s: deadline reached: a fault was never served\n", prog);
	signal(SIGALRM, on_alarm);
	alarm(seconds);
}
