/* SPDX-License-Identifier: MIT */
/*
 * Small helpers shared by the examples: clocks, latency percentiles, the
 * page pattern, option parsing, and the one-line summary the demo reads.
 * Nothing here is libuffd API; each example is readable on its own.
 */
#ifndef EXAMPLES_COMMON_H
#define EXAMPLES_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Monotonic time in nanoseconds. */
uint64_t ex_now_ns(void);

/* The 64-bit word number w of page p of an image made from seed. */
static inline uint64_t ex_pattern(uint64_t seed, uint64_t p, uint64_t w)
{
	uint64_t x = (seed ^ (p * 0x9e3779b97f4a7c15ull)) + w * 0xbf58476d1ce4e5b9ull;

	x ^= x >> 31;
	return x * 0x94d049bb133111ebull;
}

/* Fill one page (ps bytes) of the image with ex_pattern(). */
void ex_fill_page(uint64_t *dst, size_t ps, uint64_t seed, uint64_t p);

/* Latency samples in nanoseconds; one per thread, merged at the end. */
struct ex_lat {
	uint64_t *v;
	size_t n, cap;
};
void ex_lat_add(struct ex_lat *l, uint64_t ns);
void ex_lat_merge(struct ex_lat *into, struct ex_lat *from);	/* empties from */
/* The q-th percentile (0-100) in microseconds; 0 with no samples. Sorts. */
double ex_lat_pct_us(struct ex_lat *l, double q);
void ex_lat_free(struct ex_lat *l);

/* A cheap per-thread random generator (xorshift64*). */
static inline uint64_t ex_rand(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

/*
 * "--name=value" or "--name value" at argv[*i]: the value (advancing *i),
 * or NULL when argv[*i] is not that option.
 */
const char *ex_opt(int argc, char **argv, int *i, const char *name);
/* A decimal count in [min, max], or exit(2) with the usage. */
unsigned long ex_count(const char *prog, const char *name, const char *val,
		       unsigned long min, unsigned long max);

/*
 * Send all of iov (modified) on a socket, or read exactly len bytes from
 * fd: 0, -ECONNRESET when the peer closed first, or -errno.
 */
struct iovec;
int ex_send_all(int fd, struct iovec *iov, int n);
int ex_recv_all(int fd, void *buf, size_t len);

/* Print "prog: what: strerror (libuffd's last error)" and return 1. */
int ex_fail(const char *prog, const char *what, int err);

/* Print "prog: message" and exit with code. */
_Noreturn void ex_die(const char *prog, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * For a program whose faults a handler serves (fc-vmm, kvm-vmm): after
 * seconds (0: never) it prints "prog: deadline reached: a fault was never
 * served" and exits with 3, rather than hang on a fault nobody resolves.
 */
void ex_deadline(const char *prog, unsigned seconds);

/*
 * The line --summary prints, read by demo.sh:
 * SUMMARY<TAB>example<TAB>what it did<TAB>key figure<TAB>yes|no
 */
void ex_summary(const char *example, bool ok, const char *what, const char *figure);

#endif
