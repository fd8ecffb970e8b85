/* SPDX-License-Identifier: MIT */
/*
 * A page source of your own: the restore engine serves a region's faults
 * with pages another process generates and sends over a Unix socket.
 *
 * The page server (a child process) answers "give me [off, off+len)" with a
 * header and the bytes, several requests at a time, newest first: answers
 * arrive out of order. Its first message says how much of the image holds
 * data; the rest is zeros, which the source reports as an extent, so the
 * restore serves it with no request at all.
 *
 * The source (struct uffd_source_ops) never blocks and runs on the
 * restore's thread: read queues a request on the socket, poll gives the
 * socket (POLLIN while answers are due, POLLOUT while requests wait to be
 * sent), process sends and receives; answers are received straight into
 * the engine's buffers, and partial() tells the engine each time another
 * page of a run is in, so that a fault waiting on it is served before the
 * rest of the run arrives. At most MAX_OUT requests are in flight (read
 * says -EAGAIN beyond): the memory is bounded.
 *
 * The guest (this process's main thread) touches pages at random while the
 * fill runs, then every byte is checked against the generator.
 *
 * usage: gen_source [--mib N] [--summary]
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "common.h"

#define PROG "gen_source"
#define SEED 0x5eedull
#define PS 4096u
#define MAX_OUT 64		/* requests in flight */
#define SERVER_BATCH 8		/* the server answers up to this many at once, newest first */

struct ask {			/* source -> server */
	uint64_t id, off, len;
};
struct answer {			/* server -> source, then len bytes */
	uint64_t id, len;
	int64_t status;		/* 0, or -errno */
};
struct hello {			/* server -> source, first */
	uint64_t length, data;	/* image bytes; of those, [0, data) hold data, the rest zeros */
};

/* ---- the page server (another process) ---- */

/* The generator's bytes of [off, off+len) (off and len multiples of 8). */
static void generate(uint64_t *dst, uint64_t off, uint64_t len)
{
	for (uint64_t b = 0; b < len; b += 8) {
		uint64_t at = off + b;

		dst[b / 8] = ex_pattern(SEED, at / PS, (at % PS) / 8);
	}
}

static int answer(int s, const struct ask *a, char *buf)
{
	struct answer h = { .id = a->id, .len = a->len };
	struct iovec iov[2] = { { &h, sizeof(h) }, { buf, a->len } };

	generate((uint64_t *)(void *)buf, a->off, a->len);
	return ex_send_all(s, iov, 2);
}

/* Reads requests; answers each batch newest first. Ends when the socket closes. */
static int server(int s, uint64_t length, uint64_t data)
{
	struct hello hi = { length, data };
	struct iovec iov = { &hi, sizeof(hi) };
	struct ask batch[SERVER_BATCH];
	char *buf = malloc(1u << 20);

	if (!buf || ex_send_all(s, &iov, 1))
		return 1;
	for (;;) {
		struct pollfd p = { .fd = s, .events = POLLIN };
		unsigned n = 0;

		do {
			if (ex_recv_all(s, &batch[n], sizeof(batch[n])))
				return 0;	/* closed: the restore is over */
			if (batch[n].len > (1u << 20) || batch[n].off % 8 || batch[n].len % 8)
				return 1;
			n++;
		} while (n < SERVER_BATCH && poll(&p, 1, 0) == 1);
		while (n--)
			if (answer(s, &batch[n], buf))
				return 0;
	}
}

/* ---- the source (this process, on the restore thread) ---- */

struct net {
	int s;			/* non-blocking */
	uint64_t length, data;
	struct uffd_source_req *out[MAX_OUT];	/* by request id */
	unsigned nout;
	struct ask send_q[MAX_OUT];
	unsigned nsend;
	size_t sent;		/* bytes of send_q[0] sent */
	struct answer h;	/* the answer being received */
	size_t got;		/* of its header, then of its bytes */
	bool in_body;
	uint64_t reads, answers, out_of_order, last_id;
};

static int n_read(void *impl, struct uffd_source_req *req)
{
	struct net *n = impl;
	unsigned id;

	if (n->nout == MAX_OUT)
		return -EAGAIN;
	for (id = 0; n->out[id]; id++)
		;
	n->out[id] = req;
	n->nout++;
	n->send_q[n->nsend++] = (struct ask){ .id = id, .off = req->off, .len = req->len };
	n->reads++;
	return 0;
}

static int n_extent(void *impl, uint64_t off, uint64_t len, uint64_t *run)
{
	struct net *n = impl;
	uint64_t end = off + len;

	if (off >= n->data) {
		*run = len;
		return UFFD_EXTENT_ZERO;	/* the server said so: no request needed */
	}
	*run = (end < n->data ? end : n->data) - off;
	return UFFD_EXTENT_DATA;
}

static int n_poll(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns)
{
	struct net *n = impl;

	(void)max;
	*timeout_ns = -1;
	fds[0] = (struct pollfd){ .fd = n->s, .events = (short)((n->nout ? POLLIN : 0) | (n->nsend ? POLLOUT : 0)) };
	return fds[0].events ? 1 : 0;
}

/* Sends what the socket takes; the rest waits for POLLOUT. */
static void flush(struct net *n)
{
	while (n->nsend) {
		ssize_t w = send(n->s, (char *)&n->send_q[0] + n->sent, sizeof(n->send_q[0]) - n->sent,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w <= 0)
			return;
		n->sent += (size_t)w;
		if (n->sent < sizeof(n->send_q[0]))
			return;
		memmove(&n->send_q[0], &n->send_q[1], --n->nsend * sizeof(n->send_q[0]));
		n->sent = 0;
	}
}

static void finish(struct net *n, int res)
{
	struct uffd_source_req *req = n->out[n->h.id];

	n->out[n->h.id] = NULL;
	n->nout--;
	n->answers++;
	n->out_of_order += n->h.id < n->last_id;
	n->last_id = n->h.id;
	n->in_body = false;
	n->got = 0;
	req->done(req, res);
}

/* Receives answers: the header, then the bytes straight into the engine's buffer. */
static void receive(struct net *n)
{
	for (;;) {
		struct uffd_source_req *req = n->in_body ? n->out[n->h.id] : NULL;
		void *dst = req ? (char *)req->buf + n->got : (char *)&n->h + n->got;
		size_t want = req ? n->h.len - n->got : sizeof(n->h) - n->got;
		ssize_t r = want ? recv(n->s, dst, want, MSG_DONTWAIT) : 0;

		if (want && r <= 0)
			return;		/* nothing more now (or the server is gone: detach cancels) */
		n->got += (size_t)r;
		if (!req && n->got == sizeof(n->h)) {
			if (n->h.id >= MAX_OUT || !n->out[n->h.id] || n->h.len != n->out[n->h.id]->len)
				return;	/* a server we do not understand: its reads end at detach */
			n->in_body = true;
			n->got = 0;
		} else if (req && n->got == n->h.len) {
			finish(n, (int)n->h.status);
		} else if (req && req->partial && n->got >= PS) {
			req->partial(req, n->got / PS * PS);	/* these pages can be mapped now */
		}
	}
}

static void n_process(void *impl, const struct pollfd *fds, unsigned nfds)
{
	struct net *n = impl;

	(void)fds;
	(void)nfds;
	flush(n);
	receive(n);
}

/* The restore ends: reads still out end here, with -ECANCELED. */
static void n_detach(void *impl)
{
	struct net *n = impl;

	for (unsigned id = 0; id < MAX_OUT; id++) {
		struct uffd_source_req *req = n->out[id];

		if (req) {
			n->out[id] = NULL;
			req->done(req, -ECANCELED);
		}
	}
	n->nout = n->nsend = 0;
}

static const struct uffd_source_ops net_ops = {
	.size = sizeof(net_ops),
	.read = n_read,
	.extent = n_extent,
	.poll = n_poll,
	.process = n_process,
	.detach = n_detach,
	/* no destroy: main owns the struct and the socket */
};

/* ---- the guest ---- */

struct run {
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct uffd_restore *rs;
	struct uffd_source *src;
	struct net net;
	size_t len;
};

static int setup(struct run *x, int sock, size_t len)
{
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = len, .modes = UFFDIO_REGISTER_MODE_MISSING,
				       .fd = -1, .flags = UFFD_REGION_NO_ALIAS };
	struct uffd_source_info info = { .size = sizeof(info), .name = "page server", .max_fds = 1 };
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH };
	struct hello hi;
	int err;

	if (ex_recv_all(sock, &hi, sizeof(hi)) || hi.length != len)
		return ex_fail(PROG, "the page server's hello", -EPROTO);
	x->net = (struct net){ .s = sock, .length = hi.length, .data = hi.data };
	info.length = hi.length;
	if ((err = uffd_source_new(&x->src, &net_ops, &x->net, &info)))
		return ex_fail(PROG, "uffd_source_new", err);
	if ((err = uffd_open(&x->u, NULL)))
		return ex_fail(PROG, "uffd_open", err);
	if ((err = uffd_region_create(x->u, &ro, &x->r)) || (err = uffd_loop_new(&x->l, NULL)) ||
	    (err = uffd_loop_add(x->l, x->u, NULL, NULL)) || (err = uffd_loop_start(x->l, 1)) ||
	    (err = uffd_restore_new(&x->rs, &o)) ||
	    (err = uffd_restore_add_region_source(x->rs, x->r, x->src, 0)) ||
	    (err = uffd_restore_start(x->rs, x->l)))
		return ex_fail(PROG, "setting up the restore", err);
	return 0;
}

/* Words of the image that differ from the generator (zeros past the data). */
static uint64_t verify(const struct run *x, size_t first, size_t n)
{
	const uint64_t *m = uffd_region_base(x->r);
	uint64_t bad = 0, want;

	for (size_t w = first * PS / 8; w < (first + n) * PS / 8; w++) {
		if (w * 8 >= x->net.data)
			want = 0;
		else
			generate(&want, w * 8, 8);
		bad += m[w] != want;
	}
	return bad;
}

int main(int argc, char **argv)
{
	struct uffd_restore_stats st = { .size = sizeof(st) };
	size_t mib = 64, pages;
	bool summary = false, ok;
	uint64_t seed = 42, bad = 0, t0, ns;
	struct ex_lat lat = { 0 };
	struct run x = { 0 };
	const char *v;
	int sv[2], status = 0, err;
	pid_t pid;

	for (int i = 1; i < argc; i++) {
		if ((v = ex_opt(argc, argv, &i, "--mib")))
			mib = ex_count(PROG, "--mib", v, 1, 1 << 14);
		else if (!strcmp(argv[i], "--summary"))
			summary = true;
		else {
			fprintf(stderr, "usage: " PROG " [--mib N] [--summary]\n");
			return 2;
		}
	}
	x.len = mib << 20;
	pages = x.len / PS;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return ex_fail(PROG, "socketpair", -errno);
	if ((pid = fork()) < 0)
		return ex_fail(PROG, "fork", -errno);
	if (!pid) {
		signal(SIGPIPE, SIG_IGN);
		close(sv[0]);
		_exit(server(sv[1], x.len, x.len / 8 * 7));	/* the last eighth: zeros */
	}
	close(sv[1]);
	if ((err = setup(&x, sv[0], x.len)))
		return err;
	t0 = ex_now_ns();
	for (int k = 0; k < 256; k++) {	/* the guest: random pages, while the fill runs */
		size_t p = ex_rand(&seed) % pages;
		uint64_t f0 = ex_now_ns();

		bad += verify(&x, p, 1);
		ex_lat_add(&lat, ex_now_ns() - f0);
	}
	err = uffd_restore_wait(x.rs, 60000);
	ns = ex_now_ns() - t0;
	bad += verify(&x, 0, pages);
	uffd_restore_stats(x.rs, &st);
	uffd_restore_free(x.rs);
	uffd_loop_free(x.l);
	uffd_region_destroy(x.r);
	uffd_close(x.u);
	uffd_source_unref(x.src);
	close(sv[0]);		/* the server sees the end */
	waitpid(pid, &status, 0);
	ok = !err && !bad && WIFEXITED(status) && !WEXITSTATUS(status) && !st.read_errors &&
	     st.pages_hole == pages / 8;
	if (summary) {
		char what[160], fig[128];

		snprintf(what, sizeof(what), "%zu MiB from a page-server process over a socket, %llu zero pages not asked for",
			 mib, (unsigned long long)st.pages_hole);
		snprintf(fig, sizeof(fig), "%.0f ms, %llu reads (%llu answered out of order), fault p99 %.0f us",
			 ns / 1e6, (unsigned long long)x.net.reads, (unsigned long long)x.net.out_of_order,
			 ex_lat_pct_us(&lat, 99));
		ex_summary(PROG, ok, what, fig);
	} else {
		printf("image             %zu MiB: %zu pages, the last eighth zeros\n", mib, pages);
		printf("restore           %.1f ms: %llu reads to the page server, %llu answered out of order\n",
		       ns / 1e6, (unsigned long long)x.net.reads, (unsigned long long)x.net.out_of_order);
		printf("pages             %llu demand, %llu filled, %llu zero pages never asked for\n",
		       (unsigned long long)st.pages_demand, (unsigned long long)st.pages_filled,
		       (unsigned long long)st.pages_hole);
		printf("guest faults      p50 %.0f us, p99 %.0f us\n", ex_lat_pct_us(&lat, 50), ex_lat_pct_us(&lat, 99));
		printf("verified          %s (%llu words differ; restore %s)\n", ok ? "yes" : "NO",
		       (unsigned long long)bad, err ? strerror(-err) : "complete");
	}
	ex_lat_free(&lat);
	return ok ? 0 : 1;
}
