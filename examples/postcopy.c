/* SPDX-License-Identifier: MIT */
/*
 * Postcopy live migration / lazy restore, as a VM monitor (QEMU postcopy)
 * or a checkpoint restorer (CRIU lazy pages) does it.
 *
 * The source owns a memory image and serves it over TCP. The destination
 * starts its "guest" at once on an empty region; guest threads touch pages
 * at random while the image is still on its way:
 *
 *  - a touch of a page that has not arrived is a MISSING fault. The loop's
 *    handler sends an urgent request (and low-priority requests for the
 *    next few pages) and returns UFFD_DEFER: the guest thread sleeps until
 *    the receiving thread gets the page and maps it with
 *    uffd_region_populate(UFFD_POPULATE_MAP), which wakes it;
 *  - meanwhile the source streams every page in order. The receiver puts
 *    streamed pages into the page cache (uffd_region_populate) and maps them
 *    in batches with one uffd_region_continue(UFFD_SKIP_EXISTING); a guest
 *    touching a page in between takes a MINOR fault, which the handler
 *    resolves together with its arrived neighbours (fault-around: it
 *    widens f->len). SKIP_EXISTING steps over pages the other path mapped.
 *
 * The guest also writes (a counter in each page's last word), so a page
 * must never be placed twice: the receiver drops pages that arrived already.
 * At the end every page is checked against the source's pattern plus the
 * guest's writes.
 *
 * usage: postcopy [--mib N] [--guests N] [--prefetch N] [--summary]
 *                 source and destination in one run, over 127.0.0.1
 *        postcopy --listen [HOST:]PORT [--mib N]      the source only
 *        postcopy --connect HOST:PORT [--guests N] [--prefetch N] [--summary]
 *                 the destination only
 */
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "common.h"

#define PROG "postcopy"
#define CHUNK 16		/* pages per streamed frame */
#define MAP_BATCH 256		/* streamed pages mapped per uffd_region_continue */
#define FAULT_AROUND 64		/* pages a MINOR fault may map at once */
#define MAX_GUESTS 64

/* ---- the wire: a 32-byte header, little-endian, then page data ---- */

enum frame_type { F_HELLO = 0x48454c4f, F_REQ, F_PAGES, F_BYE };
enum prio { PRIO_URGENT, PRIO_PREFETCH };		/* of F_REQ */
enum origin { O_DEMAND, O_PREFETCH, O_STREAM };	/* of F_PAGES */

/*
 * HELLO  src->dst  a = pages, b = page size, c = seed of the pattern
 * REQ    dst->src  a = first page, b = count, c = enum prio
 * PAGES  src->dst  a = first page, b = count, c = enum origin; b pages follow
 * BYE    dst->src  every page arrived
 */
struct frame {
	uint64_t type, a, b, c;
};

static int send_frame(int fd, enum frame_type t, uint64_t a, uint64_t b, uint64_t c,
		      const void *data, size_t len)
{
	struct frame f = { htole64(t), htole64(a), htole64(b), htole64(c) };
	struct iovec iov[2] = { { &f, sizeof(f) }, { (void *)data, len } };

	return ex_send_all(fd, iov, len ? 2 : 1);
}

static int recv_frame(int fd, struct frame *f)
{
	int err = ex_recv_all(fd, f, sizeof(*f));

	f->type = le64toh(f->type);
	f->a = le64toh(f->a);
	f->b = le64toh(f->b);
	f->c = le64toh(f->c);
	return err;
}

/* Small buffers keep an urgent page from queueing behind megabytes of stream. */
static void tune_socket(int fd)
{
	int one = 1, buf = 2 * CHUNK * 4096;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

/* ---- the source: owns the image, streams it, serves requests first ---- */

struct source {
	int sock;
	uint64_t pages, seed;
	size_t ps;
	char *image;
	unsigned char *sent;		/* sender thread only */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t *q[2];			/* requested pages by priority, FIFO */
	size_t head[2], tail[2];
	bool bye, broken;
};

/* Reads REQ and BYE frames into the queues. */
static void *source_reader(void *arg)
{
	struct source *s = arg;
	struct frame f;

	while (!recv_frame(s->sock, &f)) {
		pthread_mutex_lock(&s->lock);
		if (f.type == F_BYE)
			s->bye = true;
		else if (f.type == F_REQ && f.c <= PRIO_PREFETCH && f.a < s->pages &&
			 f.b <= s->pages - f.a)
			for (uint64_t p = f.a; p < f.a + f.b && s->tail[f.c] < s->pages; p++)
				s->q[f.c][s->tail[f.c]++] = p;
		pthread_cond_signal(&s->cond);
		pthread_mutex_unlock(&s->lock);
		if (f.type == F_BYE)
			return NULL;
	}
	pthread_mutex_lock(&s->lock);
	s->broken = !s->bye;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static int source_send(struct source *s, uint64_t p, uint64_t n, enum origin o)
{
	memset(s->sent + p, 1, n);
	return send_frame(s->sock, F_PAGES, p, n, o, s->image + p * s->ps, n * s->ps);
}

/* The next requested page not sent yet, by priority; false when none. */
static bool next_request(struct source *s, uint64_t *p, enum origin *o)
{
	for (int prio = PRIO_URGENT; prio <= PRIO_PREFETCH; prio++)
		while (s->head[prio] < s->tail[prio]) {
			*p = s->q[prio][s->head[prio]++];
			*o = prio == PRIO_URGENT ? O_DEMAND : O_PREFETCH;
			if (!s->sent[*p])
				return true;
		}
	return false;
}

/* Requests first, then the next run of unsent pages of the stream. */
static int source_run(struct source *s)
{
	uint64_t stream = 0, p, n;
	enum origin o;
	int err = 0;

	for (;;) {
		bool req;

		pthread_mutex_lock(&s->lock);
		while (!(req = next_request(s, &p, &o)) && stream >= s->pages && !s->bye && !s->broken)
			pthread_cond_wait(&s->cond, &s->lock);
		bool stop = s->bye || s->broken;
		pthread_mutex_unlock(&s->lock);
		if (stop)
			return s->broken ? -ECONNRESET : 0;
		if (req) {
			err = source_send(s, p, 1, o);
		} else {
			while (stream < s->pages && s->sent[stream])
				stream++;
			for (n = 0; n < CHUNK && stream + n < s->pages && !s->sent[stream + n]; n++)
				;
			if (n)
				err = source_send(s, stream, n, O_STREAM);
			stream += n;
		}
		if (err)
			return err;
	}
}

static int serve(int sock, size_t mib, uint64_t seed)
{
	struct source s = { .sock = sock, .seed = seed, .ps = 4096 };
	pthread_t reader;
	int err = -ENOMEM;

	s.pages = (uint64_t)mib * (1 << 20) / s.ps;
	s.image = malloc(s.pages * s.ps);
	s.sent = calloc(s.pages, 1);
	s.q[0] = calloc(s.pages, sizeof(uint64_t));
	s.q[1] = calloc(s.pages, sizeof(uint64_t));
	if (!s.image || !s.sent || !s.q[0] || !s.q[1])
		goto out;
	for (uint64_t p = 0; p < s.pages; p++)
		ex_fill_page((uint64_t *)(s.image + p * s.ps), s.ps, seed, p);
	pthread_mutex_init(&s.lock, NULL);
	pthread_cond_init(&s.cond, NULL);
	tune_socket(sock);
	if ((err = send_frame(sock, F_HELLO, s.pages, s.ps, seed, NULL, 0)))
		goto out;
	pthread_create(&reader, NULL, source_reader, &s);
	err = source_run(&s);
	if (err)
		shutdown(sock, SHUT_RDWR);	/* unblocks the reader */
	pthread_join(reader, NULL);
out:
	if (err)
		fprintf(stderr, PROG " source: %s\n", strerror(-err));
	free(s.image);
	free(s.sent);
	free(s.q[0]);
	free(s.q[1]);
	return err ? 1 : 0;
}

/* ---- the destination: the guest runs while the pages arrive ---- */

/* CACHED: in the page cache (mapped, or about to be). */
enum page_state { ABSENT, PREFETCHING, REQUESTED, CACHED };

struct dest {
	int sock;
	uint64_t pages, seed;
	size_t ps;
	unsigned prefetch;
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *loop;
	_Atomic unsigned char *state;
	atomic_uint *writes;		/* guest increments per page */
	pthread_mutex_t send_lock, lock;
	pthread_cond_t all_arrived;
	uint64_t arrived;		/* under lock */
	bool finished;			/* under lock: all arrived and mapped, or failed */
	int recv_err;			/* under lock */
	atomic_bool done;
	atomic_ulong by_origin[3], dropped, fault_around;
	atomic_ulong bad_reads;
};

static void request(struct dest *d, uint64_t p, uint64_t n, enum prio prio)
{
	pthread_mutex_lock(&d->send_lock);
	send_frame(d->sock, F_REQ, p, n, prio, NULL, 0);	/* a lost socket ends the receiver */
	pthread_mutex_unlock(&d->send_lock);
}

/* Moves page p from state `from` to `to`; false if another thread was first. */
static bool claim(struct dest *d, uint64_t p, unsigned char from, unsigned char to)
{
	return atomic_compare_exchange_strong(&d->state[p], &from, to);
}

/* Low-priority requests for the pages after p that nobody asked for yet. */
static void prefetch(struct dest *d, uint64_t p)
{
	uint64_t end = p + 1 + d->prefetch, first = 0, n = 0;

	for (uint64_t q = p + 1; q < end && q < d->pages; q++) {
		if (claim(d, q, ABSENT, PREFETCHING)) {
			first = n ? first : q;
			n++;
			continue;
		}
		if (n)
			request(d, first, n, PRIO_PREFETCH);
		n = 0;
	}
	if (n)
		request(d, first, n, PRIO_PREFETCH);
}

/* Both kinds of fault of the region: see the comment at the top. */
static int on_fault(void *ctx, struct uffd_fault *f)
{
	struct dest *d = ctx;
	uint64_t p = f->offset / d->ps, n = 1;
	bool missing = f->kind == UFFD_FAULT_MISSING;
	int err;

	if (atomic_load(&d->state[p]) != CACHED) {
		/*
		 * Mark it wanted, so that the receiver maps it as soon as it is
		 * placed. A MISSING page is asked for, urgently even if it was
		 * prefetched; a MINOR one is in the page cache, arriving now.
		 */
		if ((claim(d, p, ABSENT, REQUESTED) || (missing && claim(d, p, PREFETCHING, REQUESTED))) &&
		    missing) {
			request(d, p, 1, PRIO_URGENT);
			prefetch(d, p);
		}
		if (atomic_load(&d->state[p]) != CACHED)
			return UFFD_DEFER;	/* the receiver maps it, which wakes the guest */
	}
	if (f->kind == UFFD_FAULT_MINOR) {
		/* In the page cache, not mapped yet: map its arrived neighbours too. */
		while (n < FAULT_AROUND && p + n < d->pages && atomic_load(&d->state[p + n]) == CACHED)
			n++;
		atomic_fetch_add(&d->fault_around, n - 1);
		f->len = n * d->ps;
		return UFFD_RESOLVE;
	}
	/* A MISSING fault read after its page arrived: map it, wake the guest. */
	err = uffd_region_continue(d->r, f->offset, d->ps, UFFD_SKIP_EXISTING, NULL);
	return err ? err : UFFD_HANDLED;	/* a failure poisons the page: see dest_setup() */
}

/*
 * Pages [p, p+n) of a frame, placed in runs of pages that did not arrive
 * yet. *waited: a guest asked for one of them (it may be waiting).
 */
static int place(struct dest *d, uint64_t p, uint64_t n, const char *data, enum origin o,
		 bool *waited)
{
	unsigned flags = o == O_STREAM ? 0 : UFFD_POPULATE_MAP;
	uint64_t i = 0;

	*waited = false;
	while (i < n) {
		uint64_t j = i;
		int err;

		while (j < n && atomic_load(&d->state[p + j]) != CACHED)
			j++;
		if (j > i) {
			err = uffd_region_populate(d->r, (p + i) * d->ps, data + i * d->ps,
						   (j - i) * d->ps, flags);
			if (err)
				return err;
			for (uint64_t k = i; k < j; k++)	/* a fault handler may have marked it meanwhile */
				*waited |= atomic_exchange(&d->state[p + k], CACHED) != ABSENT;
			atomic_fetch_add(&d->by_origin[o], j - i);
			pthread_mutex_lock(&d->lock);
			d->arrived += j - i;
			pthread_mutex_unlock(&d->lock);
		}
		for (i = j; i < n && atomic_load(&d->state[p + i]) == CACHED; i++)
			atomic_fetch_add(&d->dropped, 1);	/* arrived twice */
	}
	return 0;
}

/* Maps the streamed pages of [*from, to) in one call; pages mapped already are skipped. */
static int map_stream(struct dest *d, uint64_t *from, uint64_t to)
{
	int err = 0;

	if (to > *from)
		err = uffd_region_continue(d->r, *from * d->ps, (to - *from) * d->ps,
					   UFFD_SKIP_EXISTING, NULL);
	*from = to;
	return err;
}

/*
 * Streamed pages [run, end) are in the page cache but not mapped yet: they
 * are mapped MAP_BATCH at a time, when the stream jumps, and at once when a
 * guest is waiting for one of them.
 */
static int receive(struct dest *d, char *buf)
{
	uint64_t run = 0, end = 0, arrived = 0;
	struct frame f;
	bool waited;
	int err = 0;

	while (arrived < d->pages && !err) {
		if ((err = recv_frame(d->sock, &f)))
			return err;
		if (f.type != F_PAGES || f.c > O_STREAM || !f.b || f.b > CHUNK ||
		    f.a >= d->pages || f.b > d->pages - f.a)
			return -EPROTO;
		if ((err = ex_recv_all(d->sock, buf, f.b * d->ps)) ||
		    (err = place(d, f.a, f.b, buf, (enum origin)f.c, &waited)))
			return err;
		if (f.c == O_STREAM) {
			if (f.a != end) {	/* the source skipped pages it had sent on request */
				err = map_stream(d, &run, end);
				run = f.a;
			}
			end = f.a + f.b;
			if (!err && (waited || end - run >= MAP_BATCH))
				err = map_stream(d, &run, end);
		}
		pthread_mutex_lock(&d->lock);
		arrived = d->arrived;
		pthread_mutex_unlock(&d->lock);
	}
	return err ? err : map_stream(d, &run, end);
}

static void *receiver(void *arg)
{
	struct dest *d = arg;
	char *buf = malloc(CHUNK * d->ps);
	int err = buf ? receive(d, buf) : -ENOMEM;

	if (err)
		fprintf(stderr, PROG ": receiving pages failed: %s%s%s\n", strerror(-err),
			err == -EPROTO ? "" : " ", err == -EPROTO ? "" : uffd_last_error());
	pthread_mutex_lock(&d->lock);
	d->recv_err = err;
	d->finished = true;
	pthread_cond_signal(&d->all_arrived);
	pthread_mutex_unlock(&d->lock);
	/* Drain what is still in flight (answers to late requests) until the source closes. */
	while (!err && recv(d->sock, buf, CHUNK * d->ps, 0) > 0)
		;
	free(buf);
	return NULL;
}

struct guest {
	struct dest *d;
	uint64_t seed;
	struct ex_lat lat;	/* touches of pages that had not arrived */
	unsigned long touches;
};

/* A guest thread: runs of consecutive pages from random places, read and written. */
static void *guest(void *arg)
{
	struct guest *g = arg;
	struct dest *d = g->d;
	volatile uint64_t *base = uffd_region_base(d->r);
	size_t words = d->ps / 8;

	while (!atomic_load_explicit(&d->done, memory_order_relaxed)) {
		uint64_t p = ex_rand(&g->seed) % d->pages, run = 1 + ex_rand(&g->seed) % 8;

		for (uint64_t q = p; q < p + run && q < d->pages; q++) {
			bool cold = atomic_load(&d->state[q]) != CACHED;
			uint64_t t0 = ex_now_ns();

			if (base[q * words + 1] != ex_pattern(d->seed, q, 1))
				atomic_fetch_add(&d->bad_reads, 1);
			__atomic_fetch_add(&base[q * words + words - 1], 1, __ATOMIC_RELAXED);
			atomic_fetch_add_explicit(&d->writes[q], 1, memory_order_relaxed);
			if (cold)
				ex_lat_add(&g->lat, ex_now_ns() - t0);
			g->touches++;
		}
	}
	return NULL;
}

/* Every page: the source's pattern, its last word plus the guest's writes. */
static uint64_t verify(struct dest *d)
{
	const uint64_t *alias = uffd_region_alias(d->r);
	size_t words = d->ps / 8;
	uint64_t bad = 0;

	for (uint64_t p = 0; p < d->pages; p++) {
		const uint64_t *pg = alias + p * words;
		bool ok = pg[words - 1] == ex_pattern(d->seed, p, words - 1) + atomic_load(&d->writes[p]);

		for (size_t w = 0; w + 1 < words && ok; w++)
			ok = pg[w] == ex_pattern(d->seed, p, w);
		bad += !ok;
	}
	return bad;
}

struct dest_opts {
	unsigned guests, prefetch;
	bool summary;
};

static int dest_setup(struct dest *d)
{
	struct uffd_region_opts ro = {
		.size = sizeof(ro), .length = d->pages * d->ps, .fd = -1, .name = "guest-ram",
		.modes = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR,
	};
	struct uffd_handlers h = { .missing = on_fault, .minor = on_fault };
	/* A fault the handler cannot serve kills the guest (SIGBUS) rather than hanging it. */
	struct uffd_loop_opts lo = { .size = sizeof(lo), .flags = UFFD_LOOP_POISON_ON_ERROR };
	int err;

	d->state = calloc(d->pages, sizeof(*d->state));
	d->writes = calloc(d->pages, sizeof(*d->writes));
	if (!d->state || !d->writes)
		return ex_fail(PROG, "calloc", -ENOMEM);
	pthread_mutex_init(&d->lock, NULL);
	pthread_mutex_init(&d->send_lock, NULL);
	pthread_cond_init(&d->all_arrived, NULL);
	if ((err = uffd_open(&d->u, NULL)))
		return ex_fail(PROG, "uffd_open", err);
	if ((err = uffd_region_create(d->u, &ro, &d->r)))
		return ex_fail(PROG, "uffd_region_create", err);
	if (uffd_region_page_size(d->r) != d->ps)
		return ex_fail(PROG, "the source's page size differs from ours", -EINVAL);
	if ((err = uffd_loop_new(&d->loop, &lo)) ||
	    (err = uffd_loop_add_region(d->loop, d->r, &h, d)) ||
	    (err = uffd_loop_start(d->loop, 1)))
		return ex_fail(PROG, "starting the fault loop", err);
	return 0;
}

static void dest_report(struct dest *d, const struct dest_opts *o, struct ex_lat *lat,
			unsigned long touches, uint64_t ns, uint64_t bad)
{
	struct uffd_loop_stats st;
	unsigned long demand = atomic_load(&d->by_origin[O_DEMAND]),
		      pre = atomic_load(&d->by_origin[O_PREFETCH]),
		      stream = atomic_load(&d->by_origin[O_STREAM]);
	double p50 = ex_lat_pct_us(lat, 50), p99 = ex_lat_pct_us(lat, 99);
	bool ok = !bad && !atomic_load(&d->bad_reads) && !d->recv_err;
	char what[160], fig[96];

	uffd_loop_stats(d->loop, &st);
	if (o->summary) {
		snprintf(what, sizeof(what), "%llu MiB over TCP, pages: %lu demand, %lu prefetch, %lu stream",
			 (unsigned long long)(d->pages * d->ps >> 20), demand, pre, stream);
		snprintf(fig, sizeof(fig), "fault p50 %.0f us p99 %.0f us, %.0f ms",
			 p50, p99, ns / 1e6);
		ex_summary("postcopy", ok, what, fig);
		return;
	}
	printf("image             %llu MiB, %llu pages of %zu bytes\n",
	       (unsigned long long)(d->pages * d->ps >> 20), (unsigned long long)d->pages, d->ps);
	printf("pages             %lu on demand, %lu prefetched, %lu streamed, %lu duplicates dropped\n",
	       demand, pre, stream, atomic_load(&d->dropped));
	printf("faults            %llu missing, %llu minor (%lu pages mapped around them), %llu deferred\n",
	       (unsigned long long)st.faults_missing, (unsigned long long)st.faults_minor,
	       atomic_load(&d->fault_around), (unsigned long long)st.deferred);
	printf("guest             %u threads, %lu touches, %zu of pages not arrived yet\n",
	       o->guests, touches, lat->n);
	printf("fault latency     p50 %.1f us, p99 %.1f us (as the guest saw it)\n", p50, p99);
	printf("total time        %.1f ms until every page was mapped\n", ns / 1e6);
	printf("verified          %s (%llu bad pages, %lu bad reads%s)\n", ok ? "yes" : "NO",
	       (unsigned long long)bad, atomic_load(&d->bad_reads), d->recv_err ? ", transfer failed" : "");
}

static int migrate(int sock, const struct dest_opts *o)
{
	struct dest d = { .sock = sock, .prefetch = o->prefetch };
	struct guest g[MAX_GUESTS] = { { 0 } };
	struct ex_lat lat = { 0 };
	pthread_t rt, gt[MAX_GUESTS];
	unsigned long touches = 0;
	struct frame hello;
	uint64_t t0, ns, bad;
	int err;

	tune_socket(sock);
	if ((err = recv_frame(sock, &hello)) || hello.type != F_HELLO || !hello.a ||
	    hello.b != 4096 || hello.a > (1ull << 40) / hello.b)
		return ex_fail(PROG, "no valid HELLO from the source", err ? err : -EPROTO);
	d.pages = hello.a;
	d.ps = hello.b;
	d.seed = hello.c;
	if ((err = dest_setup(&d)))
		return err;
	t0 = ex_now_ns();
	pthread_create(&rt, NULL, receiver, &d);
	for (unsigned i = 0; i < o->guests; i++) {
		g[i] = (struct guest){ .d = &d, .seed = 0x1234567ull * (i + 1) };
		pthread_create(&gt[i], NULL, guest, &g[i]);
	}
	pthread_mutex_lock(&d.lock);
	while (!d.finished)
		pthread_cond_wait(&d.all_arrived, &d.lock);
	pthread_mutex_unlock(&d.lock);
	ns = ex_now_ns() - t0;
	atomic_store(&d.done, true);
	for (unsigned i = 0; i < o->guests; i++) {
		pthread_join(gt[i], NULL);
		touches += g[i].touches;
		ex_lat_merge(&lat, &g[i].lat);
	}
	pthread_mutex_lock(&d.send_lock);
	send_frame(sock, F_BYE, 0, 0, 0, NULL, 0);
	pthread_mutex_unlock(&d.send_lock);
	shutdown(sock, SHUT_WR);
	pthread_join(rt, NULL);
	bad = d.recv_err ? d.pages : verify(&d);
	dest_report(&d, o, &lat, touches, ns, bad);
	uffd_loop_free(d.loop);
	uffd_region_destroy(d.r);
	uffd_close(d.u);
	ex_lat_free(&lat);
	free(d.state);
	free(d.writes);
	return bad || d.recv_err || atomic_load(&d.bad_reads);
}

/* ---- sockets and the command line ---- */

/* "HOST:PORT" or "PORT" (host 127.0.0.1) into a resolved address. */
static int resolve(const char *spec, bool passive, struct addrinfo **out)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = passive ? AI_PASSIVE : 0 };
	char host[256] = "127.0.0.1";
	const char *colon = strrchr(spec, ':'), *port = colon ? colon + 1 : spec;
	int err;

	if (colon) {
		size_t n = (size_t)(colon - spec);

		if (spec[0] == '[' && n >= 2 && spec[n - 1] == ']')	/* [::1]:port */
			spec++, n -= 2;
		if (n >= sizeof(host))
			return -EINVAL;
		memcpy(host, spec, n);
		host[n] = 0;
	}
	err = getaddrinfo(host, port, &hints, out);
	if (err)
		fprintf(stderr, PROG ": %s: %s\n", spec, gai_strerror(err));
	return err ? -EINVAL : 0;
}

static int listen_on(const char *spec, uint16_t *port)
{
	struct addrinfo *ai;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd, one = 1;

	if (resolve(spec, true, &ai))
		return -1;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1) ||
	    getsockname(fd, (struct sockaddr *)&ss, &sl)) {
		fprintf(stderr, PROG ": listening on %s: %s\n", spec, strerror(errno));
		freeaddrinfo(ai);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					       : ((struct sockaddr_in *)&ss)->sin_port);
	freeaddrinfo(ai);
	return fd;
}

static int connect_to(const char *spec)
{
	struct addrinfo *ai;
	int fd;

	if (resolve(spec, false, &ai))
		return -1;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen)) {
		fprintf(stderr, PROG ": connecting to %s: %s\n", spec, strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static int serve_one(int lfd, size_t mib, uint64_t seed)
{
	int sock = accept4(lfd, NULL, NULL, SOCK_CLOEXEC), ret;

	close(lfd);
	if (sock < 0) {
		fprintf(stderr, PROG ": accept: %s\n", strerror(errno));
		return 1;
	}
	ret = serve(sock, mib, seed);
	close(sock);
	return ret;
}

/* Both ends on this machine: the source is a child process, as on another host. */
static int both(size_t mib, uint64_t seed, const struct dest_opts *o)
{
	char spec[32];
	uint16_t port;
	int lfd = listen_on("127.0.0.1:0", &port), sock, ret, status;
	pid_t pid;

	if (lfd < 0)
		return 1;
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return ex_fail(PROG, "fork", -errno);
	if (pid == 0)
		_exit(serve_one(lfd, mib, seed));
	close(lfd);
	snprintf(spec, sizeof(spec), "127.0.0.1:%u", port);
	sock = connect_to(spec);
	ret = sock < 0 ? 1 : migrate(sock, o);
	if (sock >= 0)
		close(sock);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		ret = 1;
	return ret;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: " PROG " [--mib N] [--guests N] [--prefetch N] [--summary]\n"
		"       " PROG " --listen [HOST:]PORT [--mib N]     (source; HOST defaults to 127.0.0.1)\n"
		"       " PROG " --connect HOST:PORT [--guests N] [--prefetch N] [--summary]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct dest_opts o = { .guests = 2, .prefetch = 4 };
	const char *listen_spec = NULL, *connect_spec = NULL, *v;
	size_t mib = 256;
	uint64_t seed = 0x5eed0f1a2b3c4d5eull;

	for (int i = 1; i < argc; i++) {
		if ((v = ex_opt(argc, argv, &i, "--mib")))
			mib = ex_count(PROG, "--mib", v, 1, 1 << 20);
		else if ((v = ex_opt(argc, argv, &i, "--guests")))
			o.guests = (unsigned)ex_count(PROG, "--guests", v, 1, MAX_GUESTS);
		else if ((v = ex_opt(argc, argv, &i, "--prefetch")))
			o.prefetch = (unsigned)ex_count(PROG, "--prefetch", v, 0, CHUNK);
		else if ((v = ex_opt(argc, argv, &i, "--listen")))
			listen_spec = v;
		else if ((v = ex_opt(argc, argv, &i, "--connect")))
			connect_spec = v;
		else if (!strcmp(argv[i], "--summary"))
			o.summary = true;
		else
			usage();
	}
	if (listen_spec && connect_spec)
		usage();
	if (listen_spec) {
		uint16_t port;
		int lfd = listen_on(listen_spec, &port);

		if (lfd < 0)
			return 1;
		fprintf(stderr, PROG ": source of %zu MiB listening on port %u\n", mib, port);
		return serve_one(lfd, mib, seed);
	}
	if (connect_spec) {
		int sock = connect_to(connect_spec), ret;

		if (sock < 0)
			return 1;
		ret = migrate(sock, &o);
		close(sock);
		return ret;
	}
	return both(mib, seed, &o);
}
