/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: live metrics in the Prometheus text format (0.0.4), per VM,
 * labelled vm="<pid>", served over HTTP on a Unix socket or 127.0.0.1.
 *
 * Each VM's numbers live in a slot of a shared anonymous mapping made
 * before any fork: the process serving the VM (a --multi child, or the one
 * process) writes its slot from its main thread every tick, under a
 * sequence count; the process that listens (the parent) reads every slot
 * when scraped, with no thread and no lock shared with a child. A scrape is
 * answered from the poll loop that waits at that moment.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "serve.h"

#define SLOTS 1024		/* as many VMs as --multi serves at once */
#define REQUEST_MS 200		/* a scraper sends its request at once */
#define BODY_MAX (SLOTS * 8192)

struct slot {
	atomic_int owner;	/* the serving process's pid; 0: free */
	atomic_uint seq;	/* odd while being written */
	struct serve_summary s;
	bool detached;
};

struct metrics {
	int fd;			/* listening */
	struct slot *slots;
	char *body;		/* the parent's buffer for one scrape */
};

static int listen_unix(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s;
	mode_t old;

	if (strlen(path) >= sizeof(a.sun_path))
		return -ENAMETOOLONG;
	strcpy(a.sun_path, path);
	unlink(path);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return -errno;
	old = umask(0117);	/* owner and group may scrape */
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 16)) {
		int err = -errno;

		umask(old);
		close(s);
		return err;
	}
	umask(old);
	return s;
}

/* 127.0.0.1:PORT only: the metrics name the VMs of this host, nobody else's business. */
static int listen_local(unsigned port, unsigned *bound)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1;

	if (s < 0)
		return -errno;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 16) ||
	    getsockname(s, (struct sockaddr *)&a, &len)) {
		int err = -errno;

		close(s);
		return err;
	}
	*bound = ntohs(a.sin_port);
	return s;
}

struct metrics *metrics_open(const char *addr)
{
	struct metrics *m = calloc(1, sizeof(*m));
	unsigned port = 0, bound = 0;
	char tail;

	if (!m)
		return NULL;
	if (!strncmp(addr, "unix:", 5)) {
		m->fd = listen_unix(addr + 5);
	} else if (sscanf(addr, "127.0.0.1:%u%c", &port, &tail) == 1 && port < 65536) {
		m->fd = listen_local(port, &bound);
	} else {
		serve_fail(0, "--metrics %s: give unix:PATH or 127.0.0.1:PORT", addr);
		free(m);
		return NULL;
	}
	m->slots = mmap(NULL, SLOTS * sizeof(struct slot), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	m->body = malloc(BODY_MAX);
	if (m->fd < 0 || m->slots == MAP_FAILED || !m->body) {
		serve_fail(0, "--metrics %s: %s", addr, strerror(m->fd < 0 ? -m->fd : errno));
		metrics_close(m);
		return NULL;
	}
	if (bound)
		serve_log(LOG_INFO, "metrics on http://127.0.0.1:%u/metrics", bound);
	else
		serve_log(LOG_INFO, "metrics on %s", addr);
	return m;
}

void metrics_close(struct metrics *m)
{
	if (!m)
		return;
	if (m->fd >= 0)
		close(m->fd);
	if (m->slots && m->slots != MAP_FAILED)
		munmap(m->slots, SLOTS * sizeof(struct slot));
	free(m->body);
	free(m);
}

int metrics_fd(const struct metrics *m)
{
	return m ? m->fd : -1;
}

/* ---- the serving side ---- */

struct slot *metrics_claim(struct metrics *m)
{
	int pid = (int)getpid();

	for (size_t i = 0; m && i < SLOTS; i++) {
		int free_ = 0;

		if (atomic_compare_exchange_strong(&m->slots[i].owner, &free_, pid))
			return &m->slots[i];
	}
	return NULL;
}

void metrics_update(struct slot *sl, const struct serve_summary *s, bool detached)
{
	if (!sl)
		return;
	atomic_fetch_add(&sl->seq, 1);
	sl->s = *s;
	sl->detached = detached;
	atomic_fetch_add(&sl->seq, 1);
}

void metrics_child(struct metrics *m)
{
	if (m && m->fd >= 0) {
		close(m->fd);	/* the parent answers the scrapes */
		m->fd = -1;
	}
}

void metrics_release(struct slot *sl)
{
	if (sl)
		atomic_store(&sl->owner, 0);
}

void metrics_forget(struct metrics *m, pid_t pid)
{
	for (size_t i = 0; m && i < SLOTS; i++)
		if (atomic_load(&m->slots[i].owner) == (int)pid)
			atomic_store(&m->slots[i].owner, 0);
}

/* ---- the scrape ---- */

struct out {
	char *b;
	size_t n;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->n >= BODY_MAX)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->b + o->n, BODY_MAX - o->n, fmt, ap);
	va_end(ap);
	o->n += n > 0 ? (size_t)n : 0;
	if (o->n > BODY_MAX)
		o->n = BODY_MAX;
}

/* A consistent copy of each used slot. */
static size_t snapshot(const struct metrics *m, struct slot *copy)
{
	size_t n = 0;

	for (size_t i = 0; i < SLOTS; i++) {
		struct slot *sl = &m->slots[i];

		for (int tries = 0; atomic_load(&sl->owner) && tries < 100; tries++) {
			unsigned a = atomic_load(&sl->seq);

			if (a & 1)
				continue;
			memcpy(&copy[n].s, &sl->s, sizeof(sl->s));
			copy[n].detached = sl->detached;
			if (atomic_load(&sl->seq) == a) {
				n += copy[n].s.pid != 0;	/* filled once the VM's handshake passed */
				break;
			}
		}
	}
	return n;
}

#define FAMILY(o, name, type, help) put(o, "# HELP " name " " help "\n# TYPE " name " " type "\n")

/* The remote sources' counters, for the VMs served from a remote snapshot (none: no families). */
static void remote(struct out *o, const struct slot *v, size_t n)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} f[] = {
#define R(name, field, help) { "uffd_serve_remote_" name "_total", help, offsetof(struct uffd_source_remote_stats, field) }
		R("requests", requests, "Requests sent to the snapshot's server (tries included)."),
		R("bytes", bytes, "Bytes received from the snapshot's server."),
		R("retries", retries, "Requests sent again after a failure."),
		R("timeouts", timeouts, "Tries that ran out of time."),
		R("errors", errors, "Reads that failed after their last try."),
		R("cache_hits", cache_hits, "Reads served from the local chunk cache (--cache-dir)."),
		R("cache_hit_bytes", cache_bytes, "Bytes of those."),
		R("cache_fills", cache_fills, "Chunks fetched into the local chunk cache."),
#undef R
	};
	size_t remotes = 0;

	for (size_t i = 0; i < n; i++)
		remotes += v[i].s.remote;
	for (size_t k = 0; remotes && k < sizeof(f) / sizeof(f[0]); k++) {
		put(o, "# HELP %s %s Counted by the process serving the VM, since it started.\n# TYPE %s counter\n",
		    f[k].name, f[k].help, f[k].name);
		for (size_t i = 0; i < n; i++)
			if (v[i].s.remote)
				put(o, "%s{vm=\"%d\"} %llu\n", f[k].name, (int)v[i].s.pid,
				    (unsigned long long)*(const uint64_t *)(const void *)((const char *)&v[i].s.rstats + f[k].off));
	}
}

static void counters(struct out *o, const struct slot *v, size_t n)
{
	static const char *const kinds[] = { "missing", "minor", "wp" };

	FAMILY(o, "uffd_serve_faults_total", "counter", "Page faults of the VM served, by kind.");
	for (size_t i = 0; i < n; i++)
		for (int k = 0; k < 3; k++)
			put(o, "uffd_serve_faults_total{vm=\"%d\",kind=\"%s\"} %llu\n", (int)v[i].s.pid, kinds[k],
			    (unsigned long long)v[i].s.faults[k]);
	FAMILY(o, "uffd_serve_pages_brought_total", "counter",
	       "Pages brought in, by how: demand (a fault), prefetch (a replayed trace), fill, zero (given back by the balloon).");
	for (size_t i = 0; i < n; i++) {
		const struct serve_summary *s = &v[i].s;

		put(o, "uffd_serve_pages_brought_total{vm=\"%d\",how=\"demand\"} %llu\n", (int)s->pid,
		    (unsigned long long)s->pages_demand);
		put(o, "uffd_serve_pages_brought_total{vm=\"%d\",how=\"prefetch\"} %llu\n", (int)s->pid,
		    (unsigned long long)s->pages_replay);
		put(o, "uffd_serve_pages_brought_total{vm=\"%d\",how=\"fill\"} %llu\n", (int)s->pid,
		    (unsigned long long)s->pages_fill);
		put(o, "uffd_serve_pages_brought_total{vm=\"%d\",how=\"zero\"} %llu\n", (int)s->pid,
		    (unsigned long long)s->pages_zero);
		put(o, "uffd_serve_pages_brought_total{vm=\"%d\",how=\"hole\"} %llu\n", (int)s->pid,
		    (unsigned long long)s->pages_hole);
	}
#define ONE(name, type, help, field)                                                                \
	do {                                                                                        \
		FAMILY(o, name, type, help);                                                        \
		for (size_t i = 0; i < n; i++)                                                      \
			put(o, name "{vm=\"%d\"} %llu\n", (int)v[i].s.pid, (unsigned long long)(field)); \
	} while (0)
	ONE("uffd_serve_read_bytes_total", "counter", "Bytes read from the snapshot file.", v[i].s.bytes_read);
	ONE("uffd_serve_read_errors_total", "counter", "Reads of the snapshot that failed or came back short.",
	    v[i].s.read_errors);
	ONE("uffd_serve_inflight_hits_total", "counter", "Demand faults that found their page's read in flight.",
	    v[i].s.inflight_hits);
	ONE("uffd_serve_removes_total", "counter", "REMOVE events (pages the balloon gave back).", v[i].s.removes);
	ONE("uffd_serve_errors_total", "counter", "Faults the loop could not serve.", v[i].s.errors);
	ONE("uffd_serve_pages", "gauge", "Pages of the VM's memory.", v[i].s.pages_total);
	ONE("uffd_serve_pages_present", "gauge", "Of those, present.", v[i].s.pages_present);
	ONE("uffd_serve_memory_bytes", "gauge", "Bytes of the VM's memory served.", v[i].s.bytes);
	ONE("uffd_serve_detached", "gauge", "1 once every page is present and the regions are unregistered.",
	    v[i].detached);
#undef ONE
	remote(o, v, n);
	FAMILY(o, "uffd_serve_ready_seconds", "gauge", "From the start of the serve to every page present; absent while not.");
	for (size_t i = 0; i < n; i++)
		if (v[i].s.complete_ns)
			put(o, "uffd_serve_ready_seconds{vm=\"%d\"} %.9f\n", (int)v[i].s.pid, v[i].s.complete_ns / 1e9);
}

/*
 * The service time of the demand faults, with the engine's buckets: bucket
 * b of the library counts [2^b, 2^(b+1)) ns, so le is 2^(b+1) ns. The
 * engine keeps no exact sum: _sum is estimated from the bucket midpoints.
 */
static void histogram(struct out *o, const struct slot *v, size_t n)
{
	FAMILY(o, "uffd_serve_fault_service_seconds", "histogram",
	       "Service time of the VM's faults; buckets are powers of two of nanoseconds; _sum is estimated from the bucket midpoints.");
	for (size_t i = 0; i < n; i++) {
		uint64_t cum = 0;
		double sum = 0;

		for (int b = 0; b < UFFD_HIST_BUCKETS; b++) {
			cum += v[i].s.hist[b];
			sum += (double)v[i].s.hist[b] * 1.5 * (double)(1ull << b) / 1e9;
			put(o, "uffd_serve_fault_service_seconds_bucket{vm=\"%d\",le=\"%.9g\"} %llu\n", (int)v[i].s.pid,
			    (double)(1ull << (b + 1)) / 1e9, (unsigned long long)cum);
		}
		put(o, "uffd_serve_fault_service_seconds_bucket{vm=\"%d\",le=\"+Inf\"} %llu\n", (int)v[i].s.pid,
		    (unsigned long long)cum);
		put(o, "uffd_serve_fault_service_seconds_sum{vm=\"%d\"} %.9f\n", (int)v[i].s.pid, sum);
		put(o, "uffd_serve_fault_service_seconds_count{vm=\"%d\"} %llu\n", (int)v[i].s.pid,
		    (unsigned long long)cum);
	}
}

static size_t render(struct metrics *m, char *b)
{
	struct slot *v = calloc(SLOTS, sizeof(*v));
	struct out o = { b, 0 };
	size_t n = v ? snapshot(m, v) : 0;

	FAMILY(&o, "uffd_serve_vms", "gauge", "VMs being served.");
	put(&o, "uffd_serve_vms %zu\n", n);
	counters(&o, v, n);
	histogram(&o, v, n);
	free(v);
	return o.n;
}

static void send_all(int c, const char *p, size_t n)
{
	struct pollfd pf = { .fd = c, .events = POLLOUT };

	while (n) {
		ssize_t w = send(c, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w > 0) {
			p += w;
			n -= (size_t)w;
		} else if (w < 0 && errno == EAGAIN && poll(&pf, 1, REQUEST_MS) == 1) {
			continue;
		} else {
			return;
		}
	}
}

void metrics_scrape(struct metrics *m)
{
	struct pollfd p;
	char req[1024], head[160];
	size_t got = 0, len;
	int c;

	while (m && (c = accept4(m->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
		/* The request is read (and ignored but for its end): any path gets the metrics. */
		p = (struct pollfd){ .fd = c, .events = POLLIN };
		got = 0;
		while (got < sizeof(req) - 1 && poll(&p, 1, REQUEST_MS) == 1) {
			ssize_t r = recv(c, req + got, sizeof(req) - 1 - got, 0);

			if (r <= 0)
				break;
			got += (size_t)r;
			req[got] = '\0';
			if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
				break;
		}
		len = render(m, m->body);
		snprintf(head, sizeof(head), "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n", len);
		send_all(c, head, strlen(head));
		send_all(c, m->body, len);
		close(c);
	}
}
