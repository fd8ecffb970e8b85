/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: Firecracker's side of the handshake. Firecracker connects to
 * our socket and sends one message: its userfaultfd as SCM_RIGHTS and a JSON
 * array of GuestRegionUffdMapping objects. Everything in it is checked here
 * before the library sees it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include <uffd.h>

#include "serve.h"

#define MAX_MSG (1u << 20)	/* a table of thousands of regions fits */
#define MAX_REGIONS 4096u
#define MAX_FDS 16		/* room to see (and refuse) surplus descriptors */
#define UFFD_INITIALIZED (1ull << 31)	/* the kernel's mark in fdinfo's feature field */
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77		/* Linux 6.5; Debian 12's headers are older */
#endif

/* ---- the socket ---- */

int fc_listen(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat st;
	mode_t old;
	int s, err;

	if (strlen(path) >= sizeof(a.sun_path))
		return -serve_fail(EXIT_SETUP, "socket path %s is longer than %zu bytes; use a shorter one",
				   path, sizeof(a.sun_path) - 1);
	strcpy(a.sun_path, path);
	/* A socket left by an earlier run is ours to replace; anything else is not. */
	if (!lstat(path, &st)) {
		if (!S_ISSOCK(st.st_mode))
			return -serve_fail(EXIT_SETUP, "%s exists and is not a socket; remove it or choose another --socket",
					   path);
		if (unlink(path))
			return -serve_fail(EXIT_SETUP, "cannot remove the stale socket %s: %s", path, strerror(errno));
	}
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -serve_fail(EXIT_SETUP, "socket: %s", strerror(errno));
	old = umask(0177);	/* nobody but this user connects before the owner and mode are set */
	err = bind(s, (struct sockaddr *)&a, sizeof(a)) ? errno : 0;
	umask(old);
	if (err || listen(s, 64)) {
		serve_fail(EXIT_SETUP, "cannot listen on %s: %s", path, strerror(err ? err : errno));
		close(s);
		return -EXIT_SETUP;
	}
	return s;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is readable: 0; -ETIMEDOUT at deadline_ms (0: none); -EINTR when sigfd is. */
static int wait_readable(int fd, int sigfd, int64_t deadline_ms)
{
	struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = sigfd, .events = POLLIN } };

	for (;;) {
		int64_t left = deadline_ms ? deadline_ms - now_ms() : -1;
		int n;

		if (deadline_ms && left <= 0)
			return -ETIMEDOUT;
		n = poll(p, sigfd >= 0 ? 2 : 1, left > INT32_MAX ? INT32_MAX : (int)left);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0 && p[1].revents)
			return -EINTR;
		if (n > 0)
			return 0;
	}
}

int fc_accept(int lsock, int sigfd, int timeout_ms)
{
	int err = wait_readable(lsock, sigfd, timeout_ms ? now_ms() + timeout_ms : 0), c;

	if (err == -EINTR)
		return -SERVE_STOPPED;
	if (err == -ETIMEDOUT)
		return -serve_fail(EXIT_TIMEOUT, "no VM connected within %d ms (--timeout); start Firecracker's snapshot load with this socket",
				   timeout_ms);
	if (err)
		return -serve_fail(EXIT_SETUP, "poll: %s", strerror(-err));
	c = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return -serve_fail(EXIT_SETUP, "accept: %s", strerror(errno));
	return c;
}

/* ---- the message ---- */

struct msg {
	char *buf;
	size_t len;
	int fds[MAX_FDS];
	size_t nfds;
	bool ctrunc;
};

/* Adds the descriptors of one recvmsg's control data to m. */
static void take_fds(struct msg *m, struct msghdr *mh)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		size_t n;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (m->nfds < MAX_FDS)
				m->fds[m->nfds++] = fd;
			else
				close(fd);
		}
	}
	m->ctrunc |= mh->msg_flags & MSG_CTRUNC;
}

/* One recvmsg into m: bytes read, 0 at EOF, or -errno. */
static ssize_t recv_part(int conn, struct msg *m)
{
	union {
		char b[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = m->buf + m->len, .iov_len = MAX_MSG - m->len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);

	if (n < 0)
		return errno == EAGAIN ? -EAGAIN : -errno;
	take_fds(m, &mh);
	m->len += (size_t)n;
	return n;
}

/* Leaves the reason in err; true for "continue". */
static bool chunk_error(struct json_tokener *tok, const struct msg *m, size_t from, char *err, size_t errlen)
{
	enum json_tokener_error e = json_tokener_get_error(tok);

	if (e == json_tokener_continue && m->len < MAX_MSG)
		return true;
	if (e == json_tokener_success)	/* the literal null */
		snprintf(err, errlen, "the VM's message is JSON null, not an array of regions");
	else if (e == json_tokener_continue)
		snprintf(err, errlen, "the VM's message exceeds %u bytes without ending its JSON", MAX_MSG);
	else
		snprintf(err, errlen, "the VM's message is not valid JSON: %s at byte %zu",
			 json_tokener_error_desc(e), from + json_tokener_get_parse_end(tok));
	return false;
}

/* Only white space may follow the JSON value in the bytes read. */
static bool trailing_ok(const struct msg *m, size_t end, char *err, size_t errlen)
{
	for (size_t i = end; i < m->len; i++) {
		if (!strchr(" \t\r\n", m->buf[i])) {
			snprintf(err, errlen, "the VM's message has %zu bytes after its JSON value (at byte %zu); Firecracker sends one JSON array",
				 m->len - i, i);
			return false;
		}
	}
	return true;
}

static void no_message(const struct msg *m, ssize_t n, char *err, size_t errlen)
{
	if (n < 0)
		snprintf(err, errlen, "reading the VM's message: %s", strerror((int)-n));
	else if (m->len)
		snprintf(err, errlen, "the VM closed the connection in the middle of its message, after %zu bytes",
			 m->len);
	else
		snprintf(err, errlen, "the VM closed the connection without sending its message");
}

/*
 * Reads until the bytes hold one whole JSON value (Firecracker sends one
 * message and keeps the connection open: there is no EOF to wait for).
 * 0 with *out, SERVE_STOPPED, EXIT_TIMEOUT or EXIT_HANDSHAKE with why in err.
 */
static int read_message(int conn, int sigfd, int timeout_ms, struct msg *m, struct json_object **out,
			char *err, size_t errlen)
{
	int64_t deadline = timeout_ms ? now_ms() + timeout_ms : 0;
	struct json_tokener *tok = json_tokener_new();
	struct json_object *obj = NULL;
	int rc = EXIT_HANDSHAKE;

	if (!tok || !(m->buf = malloc(MAX_MSG))) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	while (!obj) {
		size_t from = m->len;
		int w = wait_readable(conn, sigfd, deadline);
		ssize_t n = w ? w : recv_part(conn, m);

		if (n == -EINTR || n == -ETIMEDOUT) {
			rc = n == -EINTR ? SERVE_STOPPED : EXIT_TIMEOUT;
			snprintf(err, errlen, "%s within %d ms (--timeout, --handshake-timeout)", m->len ?
				 "the VM's message was cut off: the rest did not come" :
				 "the VM connected but sent no message", timeout_ms);
			goto out;
		}
		if (n == -EAGAIN)
			continue;
		if (n <= 0) {
			no_message(m, n, err, errlen);
			goto out;
		}
		obj = json_tokener_parse_ex(tok, m->buf + from, (int)(m->len - from));
		if (!obj && !chunk_error(tok, m, from, err, errlen))
			goto out;
		if (obj && !trailing_ok(m, from + json_tokener_get_parse_end(tok), err, errlen))
			goto out;
	}
	*out = obj;
	obj = NULL;
	rc = 0;
out:
	json_object_put(obj);
	if (tok)
		json_tokener_free(tok);
	return rc;
}

/* ---- the region table ---- */

/* An unsigned integer member of o: true with *v; else the reason in err. */
static bool get_u64(struct json_object *o, size_t i, const char *key, uint64_t *v, char *err, size_t errlen)
{
	struct json_object *m;

	if (!json_object_object_get_ex(o, key, &m)) {
		snprintf(err, errlen, "region %zu has no \"%s\"", i, key);
		return false;
	}
	/* json-c keeps values above INT64_MAX as unsigned; negative ones read below 0 as int64. */
	if (!json_object_is_type(m, json_type_int) || json_object_get_int64(m) < 0) {
		snprintf(err, errlen, "region %zu: \"%s\" is %s, not an unsigned integer", i, key,
			 json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN));
		return false;
	}
	*v = json_object_get_uint64(m);
	return true;
}

/*
 * page_size, or page_size_kib as older Firecracker versions name it (it
 * holds bytes all the same); versions in between send both, equal.
 */
static bool get_page_size(struct json_object *o, size_t i, uint64_t *ps, char *err, size_t errlen)
{
	bool has = json_object_object_get_ex(o, "page_size", NULL);
	bool has_kib = json_object_object_get_ex(o, "page_size_kib", NULL);
	uint64_t kib;

	if (!has && !has_kib) {
		snprintf(err, errlen, "region %zu has neither \"page_size\" nor \"page_size_kib\"", i);
		return false;
	}
	if ((has && !get_u64(o, i, "page_size", ps, err, errlen)) ||
	    (has_kib && !get_u64(o, i, "page_size_kib", &kib, err, errlen)))
		return false;
	if (has && has_kib && kib != *ps) {
		snprintf(err, errlen, "region %zu: \"page_size\" %llu and \"page_size_kib\" %llu differ (both hold bytes)",
			 i, (unsigned long long)*ps, (unsigned long long)kib);
		return false;
	}
	if (!has)
		*ps = kib;
	return true;
}

/* The page sizes of this machine: the base page and each huge page size. */
static bool machine_page_size(uint64_t ps)
{
	char path[96];
	struct stat st;

	if (ps == (uint64_t)sysconf(_SC_PAGESIZE))
		return true;
	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%llukB",
		 (unsigned long long)(ps >> 10));
	return !(ps & 1023) && !stat(path, &st);
}

static bool check_region(const struct fc_region *g, size_t i, uint64_t file_size, char *err, size_t errlen)
{
	uint64_t ps = g->page_size;

	if (!ps || (ps & (ps - 1)))
		snprintf(err, errlen, "region %zu: page size %llu is not a power of two", i, (unsigned long long)ps);
	else if (!machine_page_size(ps))
		snprintf(err, errlen, "region %zu: page size %llu is neither the base page size (%ld) nor a huge page size of this machine",
			 i, (unsigned long long)ps, sysconf(_SC_PAGESIZE));
	else if (!g->size || (g->addr | g->size | g->offset) & (ps - 1))
		snprintf(err, errlen, "region %zu: base_host_virt_addr 0x%llx, size %llu and offset %llu must be non-zero multiples of the page size %llu (offset may be 0)",
			 i, (unsigned long long)g->addr, (unsigned long long)g->size,
			 (unsigned long long)g->offset, (unsigned long long)ps);
	else if (g->addr + g->size < g->addr)
		snprintf(err, errlen, "region %zu: base_host_virt_addr 0x%llx + size %llu wraps around",
			 i, (unsigned long long)g->addr, (unsigned long long)g->size);
	else if (g->offset > file_size || file_size - g->offset < g->size)
		snprintf(err, errlen, "region %zu: offset %llu + size %llu lies outside the snapshot file of %llu bytes; is --memory the snapshot of this VM?",
			 i, (unsigned long long)g->offset, (unsigned long long)g->size,
			 (unsigned long long)file_size);
	else
		return true;
	return false;
}

static int by_addr(const void *a, const void *b)
{
	const struct fc_region *x = a, *y = b;

	return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* Regions must not overlap in the VM's address space. */
static bool check_overlap(const struct fc_handshake *h, char *err, size_t errlen)
{
	struct fc_region *s = malloc(h->n * sizeof(*s));
	bool ok = true;

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return false;
	}
	memcpy(s, h->r, h->n * sizeof(*s));
	qsort(s, h->n, sizeof(*s), by_addr);
	for (size_t i = 1; i < h->n && ok; i++) {
		if (s[i].addr < s[i - 1].addr + s[i - 1].size) {
			snprintf(err, errlen, "regions overlap: 0x%llx+%llu and 0x%llx+%llu",
				 (unsigned long long)s[i - 1].addr, (unsigned long long)s[i - 1].size,
				 (unsigned long long)s[i].addr, (unsigned long long)s[i].size);
			ok = false;
		}
	}
	free(s);
	return ok;
}

static bool parse_region(struct json_object *o, size_t i, struct fc_region *g, char *err, size_t errlen)
{
	if (!json_object_is_type(o, json_type_object)) {
		snprintf(err, errlen, "region %zu is %s, not an object", i,
			 json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		return false;
	}
	return get_u64(o, i, "base_host_virt_addr", &g->addr, err, errlen) &&
	       get_u64(o, i, "size", &g->size, err, errlen) &&
	       get_u64(o, i, "offset", &g->offset, err, errlen) &&
	       get_page_size(o, i, &g->page_size, err, errlen);
}

/* The JSON array of GuestRegionUffdMapping objects into h->r, checked. */
static int parse_table(struct json_object *root, uint64_t file_size, struct fc_handshake *h,
		       char *err, size_t errlen)
{
	size_t n;

	if (!json_object_is_type(root, json_type_array)) {
		snprintf(err, errlen, "the VM's message is a JSON %s, not an array of regions",
			 json_type_to_name(json_object_get_type(root)));
		return EXIT_HANDSHAKE;
	}
	n = json_object_array_length(root);
	if (!n || n > MAX_REGIONS) {
		snprintf(err, errlen, "the VM's message has %zu regions; 1 to %u are accepted", n, MAX_REGIONS);
		return EXIT_HANDSHAKE;
	}
	if (!(h->r = calloc(n, sizeof(*h->r)))) {
		snprintf(err, errlen, "out of memory");
		return EXIT_HANDSHAKE;
	}
	h->n = n;
	for (size_t i = 0; i < n; i++)
		if (!parse_region(json_object_array_get_idx(root, i), i, &h->r[i], err, errlen) ||
		    !check_region(&h->r[i], i, file_size, err, errlen))
			return EXIT_HANDSHAKE;
	return check_overlap(h, err, errlen) ? 0 : EXIT_HANDSHAKE;
}

/* ---- the table against the VM's mappings ---- */

struct vma {
	uint64_t start, end, page_size;
};

/* The VM's mappings with their page sizes, from /proc/PID/smaps; NULL when unreadable. */
static struct vma *read_vmas(pid_t pid, size_t *n)
{
	char path[64], line[512];
	struct vma *v = NULL;
	size_t cap = 0;
	unsigned long long a, b, kb;
	FILE *f;

	*n = 0;
	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	if (pid <= 0 || !(f = fopen(path, "re")))
		return NULL;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llx-%llx ", &a, &b) == 2) {	/* a mapping's first line */
			struct vma *nv = *n < cap ? v : realloc(v, (cap = cap ? 2 * cap : 256) * sizeof(*v));

			if (!nv)
				break;
			v = nv;
			v[(*n)++] = (struct vma){ a, b, 0 };
		} else if (*n && sscanf(line, "KernelPageSize: %llu kB", &kb) == 1) {
			v[*n - 1].page_size = kb << 10;
		}
	}
	fclose(f);
	return v;
}

/* Region g is mapped in the VM, all of it, with pages of its declared size. */
static bool region_mapped(const struct fc_region *g, size_t i, const struct vma *v, size_t n,
			  pid_t pid, char *err, size_t errlen)
{
	uint64_t covered = 0, end = g->addr + g->size;

	for (size_t k = 0; k < n; k++) {
		if (v[k].end <= g->addr || v[k].start >= end)
			continue;
		if (v[k].page_size != g->page_size) {
			snprintf(err, errlen, "region %zu: page size %llu, but the VM (pid %d) maps 0x%llx-0x%llx with %llu-byte pages",
				 i, (unsigned long long)g->page_size, (int)pid, (unsigned long long)v[k].start,
				 (unsigned long long)v[k].end, (unsigned long long)v[k].page_size);
			return false;
		}
		covered += (v[k].end < end ? v[k].end : end) - (v[k].start > g->addr ? v[k].start : g->addr);
	}
	if (covered == g->size)
		return true;
	snprintf(err, errlen, "region %zu: 0x%llx+%llu is not all mapped in the VM (pid %d)", i,
		 (unsigned long long)g->addr, (unsigned long long)g->size, (int)pid);
	return false;
}

/*
 * The page size the table declares is the one the VM's memory has (where
 * its smaps can be read): a wrong one would make every fault's length wrong.
 */
static int check_mappings(const struct fc_handshake *h, char *err, size_t errlen)
{
	size_t n;
	struct vma *v = read_vmas(h->pid, &n);
	int rc = 0;

	for (size_t i = 0; v && i < h->n && !rc; i++)
		if (!region_mapped(&h->r[i], i, v, n, h->pid, err, errlen))
			rc = EXIT_HANDSHAKE;
	free(v);
	return rc;
}

/* ---- the descriptors and the peer ---- */

/* The features the kernel reports for a userfaultfd ("API:\t<api>:<features>:<ioctls>"). */
static bool uffd_features_of(int fd, uint64_t *features)
{
	char path[64], line[256];
	unsigned long long api, feat;
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	if (!(f = fopen(path, "re")))
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "API:\t%llx:%llx:", &api, &feat) == 2;
	fclose(f);
	*features = feat & ~UFFD_INITIALIZED;
	return found && (feat & UFFD_INITIALIZED);
}

static int check_fds(struct msg *m, struct fc_handshake *h, char *err, size_t errlen)
{
	char path[64], link[128] = "an unknown file";

	if (m->ctrunc || m->nfds > 1) {
		snprintf(err, errlen, "the VM sent %s descriptors; Firecracker sends exactly one, its userfaultfd (guest_memfd restores are not supported)",
			 m->ctrunc ? "too many" : m->nfds == 2 ? "2" : "more than 2");
		return EXIT_HANDSHAKE;
	}
	if (!m->nfds) {
		snprintf(err, errlen, "the VM's message carries no file descriptor; Firecracker sends its userfaultfd with the JSON (SCM_RIGHTS)");
		return EXIT_HANDSHAKE;
	}
	if (!uffd_features_of(m->fds[0], &h->features)) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", m->fds[0]);
		ssize_t n = readlink(path, link, sizeof(link) - 1);

		link[n > 0 ? n : 0] = '\0';
		snprintf(err, errlen, "the descriptor the VM sent is not an initialised userfaultfd but %s",
			 n > 0 ? link : "an unknown file");
		return EXIT_HANDSHAKE;
	}
	h->uffd = m->fds[0];
	m->nfds = 0;
	return 0;
}

/* The peer's pid and a pidfd for it, so that its exit ends the serve. */
static void peer_identity(int conn, struct fc_handshake *h)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int pidfd = -1;

	if (!getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cr, &len))
		h->pid = cr.pid;
	len = sizeof(pidfd);
	/* SO_PEERPIDFD names the very process that connected; pidfd_open may race a pid reuse. */
	if (getsockopt(conn, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) && h->pid > 0)
		pidfd = (int)syscall(SYS_pidfd_open, h->pid, 0);
	if (pidfd >= 0)
		fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	h->pidfd = pidfd;
}

int fc_receive(int conn, int sigfd, int timeout_ms, uint64_t file_size, struct fc_handshake *h)
{
	struct msg m = { 0 };
	struct json_object *root = NULL;
	char err[512] = "";
	int rc;

	*h = (struct fc_handshake){ .uffd = -1, .pidfd = -1 };
	rc = read_message(conn, sigfd, timeout_ms, &m, &root, err, sizeof(err));
	/*
	 * Once a userfaultfd is in our hands, whatever else the message holds,
	 * its VM waits for us: who it is comes first, for the fatal path.
	 */
	for (size_t i = 0; i < m.nfds && !h->vm_waits; i++)
		h->vm_waits = uffd_features_of(m.fds[i], &(uint64_t){ 0 });
	if (h->vm_waits)
		peer_identity(conn, h);
	if (!rc)
		rc = check_fds(&m, h, err, sizeof(err));
	if (!rc)
		rc = parse_table(root, file_size, h, err, sizeof(err));
	if (!rc)
		rc = check_mappings(h, err, sizeof(err));
	for (size_t i = 0; i < m.nfds; i++)
		close(m.fds[i]);
	json_object_put(root);
	free(m.buf);
	if (rc && rc != SERVE_STOPPED)
		serve_fail(rc, "handshake: %s", err);
	return rc;
}

void fc_handshake_free(struct fc_handshake *h)
{
	if (h->uffd >= 0)
		close(h->uffd);
	if (h->pidfd >= 0)
		close(h->pidfd);
	free(h->r);
	*h = (struct fc_handshake){ .uffd = -1, .pidfd = -1 };
}
