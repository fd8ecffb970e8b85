/* SPDX-License-Identifier: MIT */
/*
 * Precopy live migration with dirty-page tracking, as VM monitors do it
 * (QEMU's RAM precopy; here with asynchronous write-protect and
 * PAGEMAP_SCAN instead of KVM's dirty log or soft-dirty bits).
 *
 * The guest's memory is private anonymous memory that writer threads keep
 * updating, most writes going to a small hot set of pages. Migration:
 *
 *  1. uffd_dirty_start() arms tracking and round 0 sends every page;
 *  2. each later round asks uffd_dirty_scan(UFFD_SCAN_REARM) for the pages
 *     written since the previous scan, re-arming them in the same walk (a
 *     write racing with the scan is reported now or next round), and sends
 *     just those;
 *  3. once the dirty set stops shrinking (it converges on the hot set), the
 *     writers are stopped and a last round sends what is left
 *     (stop-and-copy: the only time the guest does not run).
 *
 * Pages go over a socket to a receiver thread that writes them into the
 * destination memory. At the end the destination must equal the source.
 *
 * usage: dirty_precopy [--mib N] [--writers N] [--hot PERMILLE] [--summary]
 *        --hot: the hot set, per mille of the pages (default 10)
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <uffd.h>

#include "common.h"

#define PROG "dirty_precopy"
#define MAX_ROUNDS 30
#define MAX_WRITERS 64
#define FRAME_PAGES 64
#define SPANS 256

struct mig {
	struct uffd *u;
	char *src, *dst;
	size_t ps, len;
	uint64_t pages, hot;
	int link[2];		/* [0] sender, [1] receiver */
	atomic_bool stop;
	atomic_ulong writes;
};

/* ---- the link: {first page, count} then the pages ---- */

static int send_pages(struct mig *m, uint64_t p, uint64_t n)
{
	while (n) {
		uint64_t k = n < FRAME_PAGES ? n : FRAME_PAGES, hdr[2] = { p, k };
		struct iovec iov[2] = { { hdr, sizeof(hdr) }, { m->src + p * m->ps, k * m->ps } };
		int err = ex_send_all(m->link[0], iov, 2);

		if (err)
			return err;
		p += k;
		n -= k;
	}
	return 0;
}

/* The destination: pages into dst until the sender closes the link. */
static void *receiver(void *arg)
{
	struct mig *m = arg;
	uint64_t hdr[2];

	while (!ex_recv_all(m->link[1], hdr, sizeof(hdr))) {
		if (hdr[0] >= m->pages || !hdr[1] || hdr[1] > m->pages - hdr[0] ||
		    ex_recv_all(m->link[1], m->dst + hdr[0] * m->ps, hdr[1] * m->ps))
			return (void *)1;
	}
	return NULL;
}

/* ---- the workload ---- */

struct writer {
	struct mig *m;
	uint64_t seed;
};

/*
 * Transactions: read 1 KiB anywhere, write a 64-byte record derived from
 * it; one write in a thousand goes outside the hot set.
 */
static void *writer(void *arg)
{
	struct writer *w = arg;
	struct mig *m = w->m;
	uint64_t stride = m->pages / m->hot, n = 0, recs = m->ps / 64;

	while (!atomic_load_explicit(&m->stop, memory_order_relaxed)) {
		uint64_t r = ex_rand(&w->seed), q = ex_rand(&w->seed);
		uint64_t p = r % 1000 ? (r >> 10) % m->hot * stride : (r >> 10) % m->pages;
		const uint64_t *in = (const uint64_t *)(m->src + q % m->pages * m->ps);
		uint64_t *rec = (uint64_t *)(m->src + p * m->ps + (r >> 40) % recs * 64);
		uint64_t sum = 0;

		for (int i = 0; i < 128; i++)
			sum = sum * 31 + in[i];
		for (int i = 0; i < 8; i++)
			rec[i] = sum + (uint64_t)i;
		n++;
	}
	atomic_fetch_add(&m->writes, n);
	return NULL;
}

/* ---- rounds ---- */

/* Sends the pages written since the last scan; *sent gets their number. */
static int dirty_round(struct mig *m, unsigned flags, uint64_t *sent)
{
	struct uffd_span sp[SPANS];
	char *end = m->src + m->len;
	void *next = m->src;
	int n, err;

	*sent = 0;
	while ((char *)next < end) {
		n = uffd_dirty_scan(m->u, next, (size_t)(end - (char *)next), sp, SPANS, flags, &next);
		if (n < 0)
			return ex_fail(PROG, "uffd_dirty_scan", n);
		for (int i = 0; i < n; i++) {
			uint64_t p = (uint64_t)((char *)sp[i].addr - m->src) / m->ps, k = sp[i].len / m->ps;

			if ((err = send_pages(m, p, k)))
				return ex_fail(PROG, "sending pages", err);
			*sent += k;
		}
	}
	return 0;
}

/* Converged: down to the hot set, or no longer shrinking by a tenth. */
static bool converged(const struct mig *m, uint64_t prev, uint64_t cur)
{
	return cur <= m->hot || cur * 10 > prev * 9;
}

static int setup(struct mig *m, size_t mib)
{
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_WP_ASYNC,
			       .want_features = UFFD_FEATURES_DEFAULT };
	int err;

	m->ps = (size_t)sysconf(_SC_PAGESIZE);
	m->len = mib << 20;
	m->pages = m->len / m->ps;
	m->src = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	m->dst = mmap(NULL, m->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m->src == MAP_FAILED || m->dst == MAP_FAILED)
		return ex_fail(PROG, "mmap", -errno);
	for (uint64_t p = 0; p < m->pages; p++)
		ex_fill_page((uint64_t *)(m->src + p * m->ps), m->ps, 0xd1e7, p);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, m->link))
		return ex_fail(PROG, "socketpair", -errno);
	if ((err = uffd_open(&m->u, &o)))
		return ex_fail(PROG, "uffd_open (asynchronous write-protect needs Linux 6.7)", err);
	if ((err = uffd_register(m->u, m->src, m->len, UFFDIO_REGISTER_MODE_WP, NULL)))
		return ex_fail(PROG, "uffd_register", err);
	return 0;
}

/* How many pages the workload changed: they all had to arrive. */
static uint64_t changed_pages(const struct mig *m)
{
	uint64_t n = 0, *page = malloc(m->ps);

	for (uint64_t p = 0; page && p < m->pages; p++) {
		ex_fill_page(page, m->ps, 0xd1e7, p);
		n += memcmp(page, m->src + p * m->ps, m->ps) != 0;
	}
	free(page);
	return n;
}

int main(int argc, char **argv)
{
	struct mig m = { 0 };
	struct writer w[MAX_WRITERS];
	pthread_t wt[MAX_WRITERS], rt;
	uint64_t sent[MAX_ROUNDS + 1], final = 0, t0, t_stop, total_ns, down_ns;
	size_t mib = 64;
	unsigned nw = 2, permille = 10, rounds = 0;
	bool summary = false, ok;
	const char *v;
	void *rerr;
	int err = 0;

	for (int i = 1; i < argc; i++) {
		if ((v = ex_opt(argc, argv, &i, "--mib")))
			mib = ex_count(PROG, "--mib", v, 1, 1 << 16);
		else if ((v = ex_opt(argc, argv, &i, "--writers")))
			nw = (unsigned)ex_count(PROG, "--writers", v, 1, MAX_WRITERS);
		else if ((v = ex_opt(argc, argv, &i, "--hot")))
			permille = (unsigned)ex_count(PROG, "--hot", v, 1, 1000);
		else if (!strcmp(argv[i], "--summary"))
			summary = true;
		else {
			fprintf(stderr, "usage: " PROG " [--mib N] [--writers N] [--hot PERMILLE] [--summary]\n");
			return 2;
		}
	}
	if ((err = setup(&m, mib)))
		return err;
	m.hot = m.pages * permille / 1000 ? m.pages * permille / 1000 : 1;
	pthread_create(&rt, NULL, receiver, &m);
	for (unsigned i = 0; i < nw; i++) {
		w[i] = (struct writer){ .m = &m, .seed = 0x3141ull * (i + 1) };
		pthread_create(&wt[i], NULL, writer, &w[i]);
	}
	t0 = ex_now_ns();
	/* Round 0: arm, then everything. */
	if ((err = uffd_dirty_start(m.u, m.src, m.len)))
		return ex_fail(PROG, "uffd_dirty_start", err);
	if ((err = send_pages(&m, 0, m.pages)))
		return ex_fail(PROG, "sending pages", err);
	sent[rounds++] = m.pages;
	do {
		if ((err = dirty_round(&m, UFFD_SCAN_REARM, &sent[rounds])))
			return err;
		rounds++;
	} while (rounds < MAX_ROUNDS && !converged(&m, sent[rounds - 2], sent[rounds - 1]));
	/* Stop-and-copy. */
	t_stop = ex_now_ns();
	atomic_store(&m.stop, true);
	for (unsigned i = 0; i < nw; i++)
		pthread_join(wt[i], NULL);
	if ((err = dirty_round(&m, 0, &final)))
		return err;
	shutdown(m.link[0], SHUT_WR);
	pthread_join(rt, &rerr);
	down_ns = ex_now_ns() - t_stop;
	total_ns = ex_now_ns() - t0;
	ok = !rerr && !memcmp(m.src, m.dst, m.len);

	char rlist[512];
	size_t off = 0;

	for (unsigned i = 0; i < rounds && off < sizeof(rlist) - 32; i++)
		off += (size_t)snprintf(rlist + off, sizeof(rlist) - off, "%s%llu", i ? " > " : "",
					(unsigned long long)sent[i]);
	if (summary) {
		char what[160], fig[600];

		snprintf(what, sizeof(what), "%zu MiB precopy, %u writers: %u rounds + stop-and-copy",
			 mib, nw, rounds);
		snprintf(fig, sizeof(fig), "pages %s, final %llu", rlist, (unsigned long long)final);
		ex_summary(PROG, ok, what, fig);
	} else {
		printf("memory            %zu MiB, %llu pages, hot set %llu pages, %u writer threads\n",
		       mib, (unsigned long long)m.pages, (unsigned long long)m.hot, nw);
		printf("pages per round   %s (round 0 is the full copy)\n", rlist);
		printf("stop-and-copy     %llu pages, guest stopped %.2f ms\n",
		       (unsigned long long)final, down_ns / 1e6);
		printf("workload          %lu transactions, %llu pages changed\n",
		       atomic_load(&m.writes), (unsigned long long)changed_pages(&m));
		printf("total time        %.1f ms\n", total_ns / 1e6);
		printf("verified          %s (destination %s the source)\n", ok ? "yes" : "NO",
		       ok ? "equals" : "differs from");
	}
	uffd_close(m.u);
	close(m.link[0]);
	close(m.link[1]);
	munmap(m.src, m.len);
	munmap(m.dst, m.len);
	return !ok;
}
