/* SPDX-License-Identifier: MIT */
/*
 * The HTTP(S)/S3 range source (uffd.h section 13): libcurl's multi
 * interface driven by the restore thread. curl tells which sockets it
 * waits on (CURLMOPT_SOCKETFUNCTION) and when it needs a call anyway
 * (CURLMOPT_TIMERFUNCTION); poll gives exactly that to the restore's
 * io_uring, process hands what fired to curl_multi_socket_action().
 *
 * A read waits in one of two queues (linked through req->priv[0]): reads
 * of at most 256 KiB and shorter than a chunk (the engine's demand faults
 * and their fault-around; its prefetch and fill read whole chunks) go
 * first and have two transfers of their own beyond the prefetch's, so a
 * fault never waits behind queued prefetch. A transfer is one range GET of the queued reads
 * within a window (the chunk holding a prefetch read, 256 KiB for a demand
 * read), the gaps between them fetched and dropped; bytes go straight into the reads'
 * buffers as they arrive, partial() after each page and done() as soon as
 * a read is whole. A try that fails (a broken or refused connection, a
 * timeout, 5xx, 429, a short body) is repeated from the first byte not
 * yet in, after a jittered backoff, up to the tries; then its reads
 * complete with -EIO. Anything but 206 with the Content-Range asked is
 * never written to a buffer.
 *
 * A connection is used only by the process that made it: curl opens and
 * closes every socket through on_open/on_close, which keep the list. A
 * source copied by fork finds, at its first call in the new process,
 * connections kept alive that the other process may be using: it lets go
 * of them without a byte written (disown), and its transfers start again
 * from the bytes they had, on handles and connections of its own.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <curl/curl.h>

#include "source-remote.h"

UFFD_OWN(source_new);

#define BLOCK (64u << 10)	/* the block of a chunk size a restore cannot read whole */
#define DEMAND_XFERS 2		/* transfers only demand reads may use */
#define MAX_SOCKS 64
#define PAGE 4096u
#define WINDOW_DEMAND (256u << 10)	/* a demand read's GET covers at most this */

struct hsrc;

struct xfer {
	struct hsrc *h;
	CURL *e;
	struct uffd_source_req *head, *tail;	/* reads, contiguous; head's priv[1] bytes are in */
	uint64_t want_start;		/* first byte asked in this try */
	uint64_t pos;			/* the next byte the response brings */
	unsigned tries;			/* tries made */
	int64_t retry_ns;		/* waiting to try again at this time; -1: not waiting */
	bool used, active, demand;
	bool checked, bad;		/* response checked; not a usable 206 (nothing written) */
	long status;
	int64_t range_start;		/* from Content-Range; -1: none seen */
	char errbuf[CURL_ERROR_SIZE];
};

struct hsock {
	curl_socket_t fd;
	short events;
};

struct hsrc {
	char *url, *name, *etag;
	struct curl_slist *hdrs;
	char *userpwd, *sigv4;
	size_t chunk;
	unsigned nconn, nxfer;
	long connect_ms;
	struct remote_retry rt;
	uint64_t length, seed;
	CURLM *m;
	struct xfer *x;
	struct hsock socks[MAX_SOCKS];
	unsigned nsocks;
	pid_t pid;			/* the process that made m, the easy handles and their sockets */
	int *fds;			/* every socket curl opened through on_open and has not closed */
	unsigned nfds, capfds;
	int64_t timer_ns;		/* curl wants a call at this time; -1: no */
	struct uffd_source_req *dq, *dq_tail, *pq, *pq_tail;	/* demand, prefetch queues */
	struct remote_ctr c;
};

/* ---- request lists (priv[0]: next, priv[1]: bytes in) ---- */

static struct uffd_source_req *next_of(struct uffd_source_req *r)
{
	return (struct uffd_source_req *)r->priv[0];
}

static void push(struct uffd_source_req **head, struct uffd_source_req **tail, struct uffd_source_req *r)
{
	r->priv[0] = 0;
	if (*tail)
		(*tail)->priv[0] = (uintptr_t)r;
	else
		*head = r;
	*tail = r;
}

static struct uffd_source_req *pop(struct uffd_source_req **head, struct uffd_source_req **tail)
{
	struct uffd_source_req *r = *head;

	if (r && !(*head = next_of(r)))
		*tail = NULL;
	return r;
}

/* Completes every read of a list with res. */
static void fail_list(struct hsrc *h, struct uffd_source_req *r, int res, bool count)
{
	while (r) {
		struct uffd_source_req *n = next_of(r);

		if (count)
			atomic_fetch_add(&h->c.errors, 1);
		r->done(r, res);
		r = n;
	}
}

/* ---- curl's callbacks ---- */

static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp)
{
	struct hsrc *h = userp;
	unsigned i;

	(void)e;
	(void)sockp;
	for (i = 0; i < h->nsocks && h->socks[i].fd != fd; i++)
		;
	if (what == CURL_POLL_REMOVE) {
		if (i < h->nsocks)
			h->socks[i] = h->socks[--h->nsocks];
		return 0;
	}
	if (i == h->nsocks) {
		if (h->nsocks == MAX_SOCKS)
			return -1;	/* bounded by connections; curl fails that transfer */
		h->nsocks++;
	}
	h->socks[i].fd = fd;
	h->socks[i].events = (short)((what & CURL_POLL_IN ? POLLIN : 0) | (what & CURL_POLL_OUT ? POLLOUT : 0));
	return 0;
}

/* Every socket of h's transfers and probe, so a fork's child can let go of them (disown). */
static curl_socket_t on_open(void *userp, curlsocktype purpose, struct curl_sockaddr *a)
{
	struct hsrc *h = userp;
	int fd;

	(void)purpose;
	if (h->nfds == h->capfds) {
		unsigned cap = h->capfds ? h->capfds * 2 : 16;
		int *v = realloc(h->fds, cap * sizeof(*v));

		if (!v)
			return CURL_SOCKET_BAD;	/* curl fails the connection: a try */
		h->fds = v;
		h->capfds = cap;
	}
	fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
	if (fd < 0)
		return CURL_SOCKET_BAD;
	h->fds[h->nfds++] = fd;
	return fd;
}

static int on_close(void *userp, curl_socket_t fd)
{
	struct hsrc *h = userp;

	for (unsigned i = 0; i < h->nfds; i++)
		if (h->fds[i] == fd) {
			h->fds[i] = h->fds[--h->nfds];
			return close(fd);
		}
	return 0;	/* closed already when disowned: the number may be another file's now */
}

static int on_timer(CURLM *m, long ms, void *userp)
{
	struct hsrc *h = userp;

	(void)m;
	h->timer_ns = ms < 0 ? -1 : (int64_t)(uffd__env_now() + (uint64_t)ms * 1000000u);
	return 0;
}

/* "Content-Range: bytes S-E/T" of a 206. */
static size_t on_header(char *line, size_t size, size_t n, void *userp)
{
	struct xfer *x = userp;
	size_t len = size * n;
	unsigned long long s;
	char buf[128];

	if (len > 14 && len < sizeof(buf) && !strncasecmp(line, "content-range:", 14)) {
		memcpy(buf, line, len);
		buf[len] = 0;
		if (sscanf(buf + 14, " bytes %llu-", &s) == 1)
			x->range_start = (int64_t)s;
	}
	return len;
}

/* First bytes of a response: usable only as the 206 of the range asked. */
static bool check_response(struct xfer *x)
{
	x->checked = true;
	curl_easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &x->status);
	x->bad = x->status != 206 || x->range_start != (int64_t)x->want_start;
	return !x->bad;
}

static size_t on_data(char *p, size_t size, size_t n, void *userp)
{
	struct xfer *x = userp;
	struct hsrc *h = x->h;
	size_t len = size * n, left = len;

	if (!x->checked && !check_response(x))
		return 0;	/* aborts the transfer: nothing of it reaches a buffer */
	while (left) {
		struct uffd_source_req *r = x->head;
		uint64_t at;
		size_t in, k;

		if (!r)
			return 0;	/* more than asked */
		in = r->priv[1];
		at = r->off + in;
		if (x->pos < at) {	/* a gap between two coalesced reads: nobody's bytes */
			k = at - x->pos < left ? (size_t)(at - x->pos) : left;
			p += k;
			left -= k;
			x->pos += k;
			continue;
		}
		k = r->len - in < left ? r->len - in : left;
		memcpy((char *)r->buf + in, p, k);
		p += k;
		left -= k;
		x->pos += k;
		r->priv[1] = in + k;
		if (r->priv[1] == r->len) {
			pop(&x->head, &x->tail);
			r->done(r, 0);
		} else if (r->partial && r->priv[1] / PAGE > in / PAGE) {
			r->partial(r, r->priv[1] / PAGE * PAGE);
		}
	}
	atomic_fetch_add(&h->c.bytes, len);
	return len;
}

/* ---- transfers ---- */

static uint64_t end_of(const struct uffd_source_req *r)
{
	return r->off + r->len;
}

/* Starts (or starts again) the range GET of x's reads. */
static int start(struct hsrc *h, struct xfer *x)
{
	char range[64];
	uint64_t first = x->head->off + x->head->priv[1], last = end_of(x->tail) - 1;

	snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, first, last);
	x->want_start = x->pos = first;
	x->checked = x->bad = false;
	x->status = 0;
	x->range_start = -1;
	x->errbuf[0] = 0;
	x->retry_ns = -1;
	if (curl_easy_setopt(x->e, CURLOPT_RANGE, range) != CURLE_OK ||
	    curl_multi_add_handle(h->m, x->e) != CURLM_OK)
		return -ENOMEM;
	x->active = true;
	x->tries++;
	atomic_fetch_add(&h->c.requests, 1);
	if (x->tries > 1)
		atomic_fetch_add(&h->c.retries, 1);
	return 0;
}

/* Moves r from queue q into x's list, which stays sorted by offset. */
static void take(struct xfer *x, struct uffd_source_req **q, struct uffd_source_req **qt,
		 struct uffd_source_req *prev, struct uffd_source_req *r)
{
	struct uffd_source_req **at = &x->head;

	if (prev)
		prev->priv[0] = r->priv[0];
	else
		*q = next_of(r);
	if (*qt == r)
		*qt = prev;
	while (*at && (*at)->off < r->off)
		at = (struct uffd_source_req **)&(*at)->priv[0];
	r->priv[0] = (uintptr_t)*at;
	r->priv[1] = 0;
	*at = r;
	if (!r->priv[0])
		x->tail = r;
}

/* The queued reads of q lying within [lo, hi), into x. */
static void take_window(struct xfer *x, struct uffd_source_req **q, struct uffd_source_req **qt, uint64_t lo,
			uint64_t hi)
{
	struct uffd_source_req *prev = NULL, *r = *q;

	while (r) {
		struct uffd_source_req *n = next_of(r);

		if (r->off >= lo && end_of(r) <= hi)
			take(x, q, qt, prev, r);
		else
			prev = r;
		r = n;
	}
}

/*
 * Takes the head of queue q into free transfer x, with every queued read
 * (of either queue) in its window: the chunk-aligned chunk holding it for a
 * prefetch read, WINDOW_DEMAND bytes for a demand read (a fault must not
 * wait for much more than its page). One range GET covers them; the gaps
 * between them are fetched and dropped (cheaper than a round trip each).
 */
static void fill(struct hsrc *h, struct xfer *x, struct uffd_source_req **q, struct uffd_source_req **qt, bool demand)
{
	struct uffd_source_req *r = *q;
	uint64_t w = demand ? WINDOW_DEMAND : h->chunk, lo = r->off / w * w, hi = lo + w;

	if (end_of(r) > hi)
		hi = end_of(r);
	x->used = true;
	x->demand = demand;
	x->tries = 0;
	x->head = x->tail = NULL;
	take(x, q, qt, NULL, r);
	take_window(x, &h->dq, &h->dq_tail, lo, hi);
	take_window(x, &h->pq, &h->pq_tail, lo, hi);
	if (start(h, x)) {
		x->used = false;
		fail_list(h, x->head, -ENOMEM, true);
	}
}

static struct xfer *free_xfer(struct hsrc *h, bool demand)
{
	unsigned busy = 0;

	for (unsigned i = 0; i < h->nxfer; i++)
		busy += h->x[i].used && !h->x[i].demand;
	if (!demand && busy >= h->nconn)
		return NULL;
	for (unsigned i = 0; i < h->nxfer; i++)
		if (!h->x[i].used)
			return &h->x[i];
	return NULL;
}

static void start_queued(struct hsrc *h)
{
	struct xfer *x;

	while (h->dq && (x = free_xfer(h, true)))
		fill(h, x, &h->dq, &h->dq_tail, true);
	while (h->pq && (x = free_xfer(h, false)))
		fill(h, x, &h->pq, &h->pq_tail, false);
}

static bool retryable(const struct xfer *x, CURLcode res)
{
	if (x->bad)	/* a 5xx or 429 may pass; a 200 (no range support) or a 4xx will not */
		return x->status >= 500 || x->status == 429 || x->status == 408;
	return res == CURLE_OK || res == CURLE_COULDNT_CONNECT || res == CURLE_OPERATION_TIMEDOUT ||
	       res == CURLE_RECV_ERROR || res == CURLE_SEND_ERROR || res == CURLE_GOT_NOTHING ||
	       res == CURLE_PARTIAL_FILE || res == CURLE_COULDNT_RESOLVE_HOST || res == CURLE_HTTP2 ||
	       res == CURLE_HTTP2_STREAM || res == CURLE_SSL_CONNECT_ERROR;
}

/* A try of x ended with res. */
static void finished(struct hsrc *h, struct xfer *x, CURLcode res)
{
	curl_multi_remove_handle(h->m, x->e);
	x->active = false;
	if (!x->head) {		/* every read is whole */
		x->used = false;
		return;
	}
	if (res == CURLE_OPERATION_TIMEDOUT)
		atomic_fetch_add(&h->c.timeouts, 1);
	if (retryable(x, res) && x->tries < h->rt.tries) {
		x->retry_ns = (int64_t)(uffd__env_now() + uffd__retry_backoff_ns(&h->rt, x->tries, &h->seed));
		return;
	}
	x->used = false;
	fail_list(h, x->head, -EIO, true);
	x->head = x->tail = NULL;
}

static void reap(struct hsrc *h)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(h->m, &left))) {
		struct xfer *x = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		if (x)
			finished(h, x, msg->data.result);
	}
}

/* ---- handles, and letting go of another process's connections ---- */

static CURLcode setup(struct hsrc *h, CURL *e);

/* The easy handles (leaving any in m first) and the multi handle. */
static void free_handles(struct hsrc *h)
{
	for (unsigned i = 0; h->x && i < h->nxfer; i++) {
		if (h->x[i].active && h->m)
			curl_multi_remove_handle(h->m, h->x[i].e);
		h->x[i].active = false;
		curl_easy_cleanup(h->x[i].e);
		h->x[i].e = NULL;
	}
	if (h->m)
		curl_multi_cleanup(h->m);
	h->m = NULL;
	h->nsocks = 0;
	h->timer_ns = -1;
}

/* The multi handle and one easy handle per transfer (h->x allocated). */
static int make_handles(struct hsrc *h)
{
	h->pid = getpid();
	if (!(h->m = curl_multi_init()))
		return -ENOMEM;
	if (curl_multi_setopt(h->m, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
	    curl_multi_setopt(h->m, CURLMOPT_SOCKETDATA, h) != CURLM_OK ||
	    curl_multi_setopt(h->m, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
	    curl_multi_setopt(h->m, CURLMOPT_TIMERDATA, h) != CURLM_OK ||
	    curl_multi_setopt(h->m, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) != CURLM_OK ||
	    curl_multi_setopt(h->m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)h->nxfer) != CURLM_OK)
		return -ENOMEM;
	for (unsigned i = 0; i < h->nxfer; i++) {
		struct xfer *x = &h->x[i];

		if (!(x->e = curl_easy_init()) || setup(h, x->e) != CURLE_OK ||
		    curl_easy_setopt(x->e, CURLOPT_PRIVATE, x) != CURLE_OK ||
		    curl_easy_setopt(x->e, CURLOPT_WRITEFUNCTION, on_data) != CURLE_OK ||
		    curl_easy_setopt(x->e, CURLOPT_WRITEDATA, x) != CURLE_OK ||
		    curl_easy_setopt(x->e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK ||
		    curl_easy_setopt(x->e, CURLOPT_HEADERDATA, x) != CURLE_OK ||
		    curl_easy_setopt(x->e, CURLOPT_ERRORBUFFER, x->errbuf) != CURLE_OK)
			return -ENOMEM;
	}
	return 0;
}

/*
 * In a process that did not make h's handles (a fork): every socket curl
 * has becomes /dev/null, then the handles are cleaned up, so nothing curl
 * writes or closes meanwhile (a TLS close_notify, an HTTP/2 GOAWAY or
 * RST_STREAM) reaches the other process's connections. Should /dev/null not
 * open, the sockets are closed and the old handles left as they are (never
 * touched again). A transfer under way starts again from the bytes it had,
 * no try spent; own() makes the new handles.
 */
static void disown(struct hsrc *h)
{
	bool nul = true;

	if (h->pid == getpid() || !h->x)
		return;	/* made here, or nothing made yet */
	for (unsigned i = 0; i < h->nfds && nul; i++)
		nul = uffd__remote_disown_fd(h->fds[i]) == 0;
	if (!nul) {
		for (unsigned i = 0; i < h->nfds; i++)
			close(h->fds[i]);
		h->nfds = 0;
		for (unsigned i = 0; i < h->nxfer; i++)
			h->x[i].e = NULL;
		h->m = NULL;
	}
	free_handles(h);	/* closes the /dev/null copies through on_close */
	for (unsigned i = 0; i < h->nxfer; i++) {
		struct xfer *x = &h->x[i];

		if (x->used && x->retry_ns < 0) {
			x->retry_ns = (int64_t)uffd__env_now();
			if (x->tries)
				x->tries--;
		}
	}
	h->pid = getpid();
}

/* Whether h has handles of this process; if they cannot be made, every read fails (-ENOMEM). */
static bool own(struct hsrc *h)
{
	disown(h);
	if (h->m)
		return true;
	if (!make_handles(h))
		return true;
	free_handles(h);
	uffd__err(-ENOMEM, "uffd_source_http: out of memory");
	for (unsigned i = 0; i < h->nxfer; i++) {
		if (h->x[i].used)
			fail_list(h, h->x[i].head, -ENOMEM, true);
		h->x[i].used = false;
		h->x[i].head = h->x[i].tail = NULL;
	}
	fail_list(h, h->dq, -ENOMEM, true);
	fail_list(h, h->pq, -ENOMEM, true);
	h->dq = h->dq_tail = h->pq = h->pq_tail = NULL;
	return false;
}

/* ---- the source's ops ---- */

static int h_read(void *impl, struct uffd_source_req *req)
{
	struct hsrc *h = impl;

	if (req->len <= WINDOW_DEMAND && req->len < h->chunk)
		push(&h->dq, &h->dq_tail, req);
	else
		push(&h->pq, &h->pq_tail, req);
	return 0;	/* started by process, which poll asks for at once */
}

static int h_poll(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns)
{
	struct hsrc *h = impl;
	int64_t due, now = (int64_t)uffd__env_now();
	unsigned n = 0;

	if (!own(h)) {
		*timeout_ns = -1;
		return 0;
	}
	due = h->timer_ns;

	for (unsigned i = 0; i < h->nxfer; i++)
		if (h->x[i].used && !h->x[i].active && (due < 0 || h->x[i].retry_ns < due))
			due = h->x[i].retry_ns;
	if ((h->dq && free_xfer(h, true)) || (h->pq && free_xfer(h, false)))
		due = now;
	for (unsigned i = 0; i < h->nsocks && n < max; i++, n++) {
		fds[n].fd = h->socks[i].fd;
		fds[n].events = h->socks[i].events;
	}
	*timeout_ns = due < 0 ? -1 : due <= now ? 0 : due - now;
	return (int)n;
}

static void h_process(void *impl, const struct pollfd *fds, unsigned n)
{
	struct hsrc *h = impl;
	int64_t now = (int64_t)uffd__env_now();
	int running;

	if (!own(h))
		return;
	for (unsigned i = 0; i < n; i++) {
		int ev = (fds[i].revents & (POLLIN | POLLHUP) ? CURL_CSELECT_IN : 0) |
			 (fds[i].revents & POLLOUT ? CURL_CSELECT_OUT : 0) |
			 (fds[i].revents & POLLERR ? CURL_CSELECT_ERR : 0);

		if (ev)
			curl_multi_socket_action(h->m, fds[i].fd, ev, &running);
	}
	if (h->timer_ns >= 0 && h->timer_ns <= now) {
		h->timer_ns = -1;
		curl_multi_socket_action(h->m, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	reap(h);
	for (unsigned i = 0; i < h->nxfer; i++) {
		struct xfer *x = &h->x[i];

		if (x->used && !x->active && x->retry_ns >= 0 && x->retry_ns <= now && start(h, x)) {
			x->used = false;
			fail_list(h, x->head, -ENOMEM, true);
		}
	}
	start_queued(h);
	curl_multi_socket_action(h->m, CURL_SOCKET_TIMEOUT, 0, &running);	/* new handles begin */
	reap(h);
}

static void h_detach(void *impl)
{
	struct hsrc *h = impl;

	disown(h);

	for (unsigned i = 0; i < h->nxfer; i++) {
		struct xfer *x = &h->x[i];

		if (x->active)
			curl_multi_remove_handle(h->m, x->e);
		if (x->used)
			fail_list(h, x->head, -ECANCELED, false);
		x->active = x->used = false;
		x->head = x->tail = NULL;
	}
	fail_list(h, h->dq, -ECANCELED, false);
	fail_list(h, h->pq, -ECANCELED, false);
	h->dq = h->dq_tail = h->pq = h->pq_tail = NULL;
}

static void h_free(struct hsrc *h)
{
	disown(h);
	free_handles(h);
	curl_slist_free_all(h->hdrs);
	free(h->fds);
	free(h->x);
	free(h->url);
	free(h->name);
	free(h->etag);
	free(h->userpwd);
	free(h->sigv4);
	free(h);
}

static void h_destroy(void *impl)
{
	h_free(impl);
}

static void h_stats(void *impl, struct uffd_source_remote_stats *st)
{
	uffd__remote_add(&((struct hsrc *)impl)->c, st);
}

static const char *h_version(void *impl)
{
	struct hsrc *h = impl;

	return h->etag ? h->etag : "";
}

static const struct remote_hooks http_hooks = { h_stats, h_version };

static const struct uffd_source_ops http_ops = {
	.size = sizeof(http_ops),
	.read = h_read,
	.poll = h_poll,
	.process = h_process,
	.detach = h_detach,
	.destroy = h_destroy,
};

/* ---- creation ---- */

/* Options every request of h has; CURLE_OK or the first failure. */
static CURLcode setup(struct hsrc *h, CURL *e)
{
	CURLcode r = CURLE_OK;

#define SET(opt, val) do { if (r == CURLE_OK) r = curl_easy_setopt(e, opt, val); } while (0)
	SET(CURLOPT_URL, h->url);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 1L);
	SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_MAXREDIRS, 5L);
	SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_TCP_NODELAY, 1L);
	SET(CURLOPT_CONNECTTIMEOUT_MS, h->connect_ms);
	SET(CURLOPT_TIMEOUT_MS, (long)h->rt.timeout_ms);
	/* curl reads at most this per socket event: each event is a turn of the restore thread's loop */
	SET(CURLOPT_BUFFERSIZE, 512L << 10);
	SET(CURLOPT_ACCEPT_ENCODING, NULL);	/* bytes as stored: a range of an encoded body is not the range asked */
	SET(CURLOPT_OPENSOCKETFUNCTION, on_open);
	SET(CURLOPT_OPENSOCKETDATA, h);
	SET(CURLOPT_CLOSESOCKETFUNCTION, on_close);
	SET(CURLOPT_CLOSESOCKETDATA, h);
	if (h->hdrs)
		SET(CURLOPT_HTTPHEADER, h->hdrs);
	if (h->sigv4) {
		SET(CURLOPT_AWS_SIGV4, h->sigv4);
		SET(CURLOPT_USERPWD, h->userpwd);
	}
#undef SET
	return r;
}

struct probe {
	int64_t range_start, total;
	char etag[128];
};

static size_t probe_header(char *line, size_t size, size_t n, void *userp)
{
	struct probe *p = userp;
	size_t len = size * n;
	unsigned long long s, e, t;
	char buf[256];

	if (len >= sizeof(buf))
		return len;
	memcpy(buf, line, len);
	buf[len] = 0;
	if (!strncasecmp(buf, "HTTP/", 5))
		p->range_start = p->total = -1;	/* a redirect's headers are not the object's */
	if (!strncasecmp(buf, "content-range:", 14) && sscanf(buf + 14, " bytes %llu-%llu/%llu", &s, &e, &t) == 3) {
		p->range_start = (int64_t)s;
		p->total = (int64_t)t;
	}
	if (!strncasecmp(buf, "etag:", 5)) {
		char *v = buf + 5;

		while (*v == ' ')
			v++;
		len = strcspn(v, "\r\n");
		if (len >= sizeof(p->etag))
			len = sizeof(p->etag) - 1;
		memcpy(p->etag, v, len);
		p->etag[len] = 0;
		return size * n;
	}
	return len;
}

static size_t probe_data(char *p, size_t size, size_t n, void *userp)
{
	(void)p;
	(void)userp;
	return size * n > 1 ? 0 : size * n;	/* a whole object where one byte was asked: stop */
}

static int curl_errno(CURLcode r)
{
	switch (r) {
	case CURLE_COULDNT_CONNECT: return -ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST: return -EHOSTUNREACH;
	case CURLE_OPERATION_TIMEDOUT: return -ETIMEDOUT;
	case CURLE_OUT_OF_MEMORY: return -ENOMEM;
	case CURLE_URL_MALFORMAT: case CURLE_UNSUPPORTED_PROTOCOL: return -EINVAL;
	default: return -EIO;
	}
}

/* The object's size (and ETag), from a GET of byte 0; before any VM connects. */
static int probe(struct hsrc *h)
{
	struct probe p = { -1, -1, "" };
	char err[CURL_ERROR_SIZE] = "";
	CURL *e = curl_easy_init();
	CURLcode r;
	long status = 0;
	int ret = 0;

	if (!e)
		return uffd__err(-ENOMEM, "uffd_source_http: out of memory");
	r = setup(h, e);
	if (r == CURLE_OK)
		r = curl_easy_setopt(e, CURLOPT_RANGE, "0-0");
	if (r == CURLE_OK)
		r = curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, probe_header);
	if (r == CURLE_OK)
		r = curl_easy_setopt(e, CURLOPT_HEADERDATA, &p);
	if (r == CURLE_OK)
		r = curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, probe_data);
	if (r == CURLE_OK)
		r = curl_easy_setopt(e, CURLOPT_ERRORBUFFER, err);
	if (r == CURLE_OK)
		r = curl_easy_perform(e);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(e);
	if (status == 404)
		return uffd__err(-ENOENT, "uffd_source_http: %s: the server answered 404 (no such object)", h->name);
	if (status == 401 || status == 403)
		return uffd__err(-EACCES, "uffd_source_http: %s: the server answered %ld (check the credentials or headers)",
				 h->name, status);
	if (status == 200 || (status >= 200 && status < 300 && status != 206))
		return uffd__err(-EPROTO, "uffd_source_http: %s: the server answered %ld to a range request; it must support Range (206)",
				 h->name, status);
	if (r != CURLE_OK && status != 206)
		return uffd__err(curl_errno(r), "uffd_source_http: %s: %s", h->name, err[0] ? err : curl_easy_strerror(r));
	if (status != 206)
		return uffd__err(-EPROTO, "uffd_source_http: %s: the server answered %ld to a GET of byte 0", h->name, status);
	if (p.range_start != 0 || p.total <= 0)
		return uffd__err(-EPROTO, "uffd_source_http: %s: a 206 without a Content-Range of byte 0 and a size", h->name);
	h->length = (uint64_t)p.total;
	if (p.etag[0] && !(h->etag = strdup(p.etag)))
		ret = -ENOMEM;
	return ret;
}

/* s3://bucket/key -> the URL, signing options; from the environment. */
static int s3_url(struct hsrc *h, const char *url, const struct uffd_source_http_opts *o)
{
	const char *bk = url + 5, *slash = strchr(bk, '/');
	const char *ak = getenv("AWS_ACCESS_KEY_ID"), *sk = getenv("AWS_SECRET_ACCESS_KEY");
	const char *tok = getenv("AWS_SESSION_TOKEN");
	const char *region = o->region ? o->region : getenv("AWS_REGION");
	int n;

	if (!region || !*region)
		region = "us-east-1";
	if (!slash || slash == bk || !slash[1])
		return uffd__err(-EINVAL, "uffd_source_http: %s: an S3 URL is s3://bucket/key", url);
	if (!ak || !sk || !*ak || !*sk)
		return uffd__err(-EINVAL, "uffd_source_http: %s: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set to sign S3 requests",
				 url);
	if (o->endpoint)
		n = asprintf(&h->url, "%s/%.*s/%s", o->endpoint, (int)(slash - bk), bk, slash + 1);
	else
		n = asprintf(&h->url, "https://%.*s.s3.%s.amazonaws.com/%s", (int)(slash - bk), bk, region, slash + 1);
	if (n < 0 || asprintf(&h->sigv4, "aws:amz:%s:s3", region) < 0 || asprintf(&h->userpwd, "%s:%s", ak, sk) < 0)
		return -ENOMEM;
	if (tok && *tok) {
		char *line;
		struct curl_slist *l;

		if (asprintf(&line, "x-amz-security-token: %s", tok) < 0)
			return -ENOMEM;
		l = curl_slist_append(h->hdrs, line);
		free(line);
		if (!l)
			return -ENOMEM;
		h->hdrs = l;
	}
	return 0;
}

static int check_opts(const char *url, const struct uffd_source_http_opts *o)
{
	const char *call = "uffd_source_http";

	if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8) && strncmp(url, "s3://", 5))
		return uffd__err(-EINVAL, "%s: %s: the URL must start with http://, https:// or s3://", call, url);
	if (o->chunk_size && (o->chunk_size < PAGE || o->chunk_size > (256u << 20)))
		return uffd__err(-EINVAL, "%s: chunk_size %zu is not between 4 KiB and 256 MiB", call, o->chunk_size);
	if (o->connections > 32)
		return uffd__err(-EINVAL, "%s: connections %u is above 32", call, o->connections);
	if (o->endpoint && strncmp(o->endpoint, "http://", 7) && strncmp(o->endpoint, "https://", 8))
		return uffd__err(-EINVAL, "%s: endpoint %s must start with http:// or https://", call, o->endpoint);
	for (const char *const *l = o->headers; l && *l; l++)
		if (!strchr(*l, ':') || strpbrk(*l, "\r\n"))
			return uffd__err(-EINVAL, "%s: header \"%s\" is not one \"Name: value\" line", call, *l);
	return 0;
}

static int build(struct hsrc *h, const char *url, const struct uffd_source_http_opts *o)
{
	int err;

	h->chunk = o->chunk_size ? o->chunk_size : 4u << 20;
	h->nconn = o->connections ? o->connections : 8;
	h->nxfer = h->nconn + DEMAND_XFERS;
	h->connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 10000;
	h->rt = (struct remote_retry){ o->tries, o->timeout_ms, o->backoff_min_ms, o->backoff_max_ms };
	h->seed = (uintptr_t)h ^ uffd__env_now();
	h->timer_ns = -1;
	if ((err = uffd__retry_init(&h->rt, "uffd_source_http")))
		return err;
	for (const char *const *l = o->headers; l && *l; l++) {
		struct curl_slist *n = curl_slist_append(h->hdrs, *l);

		if (!n)
			return -ENOMEM;
		h->hdrs = n;
	}
	if (!strncmp(url, "s3://", 5)) {
		if ((err = s3_url(h, url, o)))
			return err;
	} else if (!(h->url = strdup(url))) {
		return -ENOMEM;
	}
	if (!(h->name = strdup(o->name ? o->name : url)))
		return -ENOMEM;
	return probe(h);
}

/* The transfers, their easy handles and the multi handle, made once (again after a fork: own()). */
static int handles(struct hsrc *h)
{
	if (!(h->x = calloc(h->nxfer, sizeof(*h->x))))
		return -ENOMEM;
	for (unsigned i = 0; i < h->nxfer; i++) {
		h->x[i].h = h;
		h->x[i].retry_ns = -1;
	}
	return make_handles(h);
}

UFFD_EXPORT int uffd_source_http(struct uffd_source **out, const char *url, const struct uffd_source_http_opts *opts)
{
	struct uffd_source_http_opts o = { .size = sizeof(o) };
	struct uffd_source_info info = { .size = sizeof(info) };
	struct hsrc *h;
	int err;

	if (!out || !url)
		return uffd__err(-EINVAL, "uffd_source_http: %s is NULL", out ? "url" : "out");
	*out = NULL;
	if (opts && (err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_source_http_opts")))
		return err;
	if ((err = check_opts(url, &o)))
		return err;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return uffd__err(-ENOMEM, "uffd_source_http: libcurl cannot initialise");
	if (!(h = calloc(1, sizeof(*h))))
		return uffd__err(-ENOMEM, "uffd_source_http: out of memory");
	if ((err = build(h, url, &o)) || (err = handles(h))) {
		if (err == -ENOMEM)
			uffd__err(err, "uffd_source_http: out of memory");
		h_free(h);
		return err;
	}
	info.name = h->name;
	info.length = h->length;
	info.max_fds = MAX_SOCKS;
	if (!(h->chunk & (h->chunk - 1)) && h->chunk >= BLOCK && h->chunk <= (64u << 20)) {
		/* a restore reads whole chunks, one per connection at once: a round trip buys a chunk */
		info.block_size = h->chunk;
		info.read_depth = h->nconn;
	} else {
		info.block_size = BLOCK;
	}
	if ((err = uffd_source_new(out, &http_ops, h, &info))) {
		h_free(h);
		return err;
	}
	uffd__remote_set(*out, &http_hooks);
	return 0;
}
UFFD_EXPORT_OWN(source_http);
