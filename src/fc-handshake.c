/* SPDX-License-Identifier: MIT */
/*
 * Firecracker's handshake: one message on a connected Unix stream socket,
 * the VM's userfaultfd as SCM_RIGHTS and a JSON array of its guest memory
 * regions (fc-json.c). Everything in it is untrusted and checked here;
 * every descriptor received that is not handed out is closed.
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
#include <time.h>
#include <unistd.h>

#include "fc-internal.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77		/* Linux 6.5 */
#endif

#define MSG_MAX (1u << 20)	/* a table of thousands of regions fits */
#define REGIONS_MAX 4096u
#define FDS_MAX 16		/* room to see (and refuse) surplus descriptors */
#define DEFAULT_TIMEOUT_MS 5000

static const char *const C = "uffd_fc_handshake_recv";

struct msg {
	char *buf;
	size_t len;
	int fds[FDS_MAX];
	size_t nfds;
	bool ctrunc;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the message ---- */

/*
 * Until conn is readable: 0; -ETIMEDOUT at deadline (-1: none); -ECANCELED
 * when cancel_fd is and conn is not. Bytes already there are read first: a
 * VM that sent its userfaultfd waits for whoever reads it, and a cancel that
 * left it unread in the socket would hang that VM unseen.
 */
static int wait_readable(int conn, int cancel_fd, int64_t deadline)
{
	struct pollfd p[2] = { { .fd = conn, .events = POLLIN }, { .fd = cancel_fd, .events = POLLIN } };

	for (;;) {
		int64_t left = deadline < 0 ? -1 : deadline - now_ms();
		int n;

		if (deadline >= 0 && left <= 0)
			return -ETIMEDOUT;
		n = poll(p, cancel_fd >= 0 ? 2 : 1, left > INT32_MAX ? INT32_MAX : (int)left);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0 && p[0].revents)
			return 0;
		if (n > 0)
			return -ECANCELED;
	}
}

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
			if (m->nfds < FDS_MAX)
				m->fds[m->nfds++] = fd;
			else
				close(fd);
		}
	}
	m->ctrunc |= mh->msg_flags & MSG_CTRUNC;
}

/* One recvmsg: bytes read, 0 at EOF, -EAGAIN, or -errno. */
static ssize_t recv_part(int conn, struct msg *m)
{
	union {
		char b[CMSG_SPACE(sizeof(int) * FDS_MAX)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = m->buf + m->len, .iov_len = MSG_MAX - m->len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);

	if (n < 0)
		return -errno;
	take_fds(m, &mh);
	m->len += (size_t)n;
	return n;
}

static int ended(const struct msg *m, ssize_t n, int timeout_ms)
{
	if (n == -ETIMEDOUT)
		return uffd__err(-ETIMEDOUT, "%s: %s within %d ms", C, m->len ?
				 "the VM's message was cut off: the rest did not come" :
				 "the VM connected but sent no message", timeout_ms);
	if (n == -ECANCELED)
		return uffd__err(-ECANCELED, "%s: cancelled (cancel_fd) while reading the VM's message", C);
	if (n < 0)
		return uffd__err((int)n, "%s: reading the VM's message: %s", C, strerror((int)-n));
	if (m->len)
		return uffd__err(-ECONNRESET, "%s: the VM closed the connection in the middle of its message, after %zu bytes",
				 C, m->len);
	return uffd__err(-ECONNRESET, "%s: the VM closed the connection without sending its message", C);
}

/*
 * Reads until the bytes hold one whole JSON value (Firecracker sends one
 * message and keeps the connection open: no EOF to wait for).
 */
static int read_message(int conn, const struct uffd_fc_opts *o, unsigned max, struct msg *m,
			struct uffd_fc_region **r, size_t *n)
{
	int64_t deadline = o->timeout_ms < 0 ? -1 : now_ms() + o->timeout_ms;
	int err = -EAGAIN;

	if (!(m->buf = malloc(MSG_MAX)))
		return uffd__err(-ENOMEM, "%s: out of memory", C);
	while (err == -EAGAIN) {
		int w = wait_readable(conn, o->cancel_fd, deadline);
		ssize_t got = w ? w : recv_part(conn, m);

		if (got == -EAGAIN)
			continue;
		if (got <= 0)
			return ended(m, got, o->timeout_ms);
		err = uffd__fc_parse(C, m->buf, m->len, max, r, n);
		if (err == -EAGAIN && m->len == MSG_MAX)
			return uffd__err(-EPROTO, "%s: the VM's message exceeds %u bytes without ending its JSON", C, MSG_MAX);
	}
	return err;
}

/* ---- the descriptors and the peer ---- */

static int check_fds(const struct msg *m)
{
	if (m->ctrunc || m->nfds > 1)
		return uffd__err(-EPROTO, "%s: the VM sent %s descriptors; Firecracker sends exactly one, its userfaultfd (guest_memfd restores are not supported)",
				 C, m->ctrunc ? "too many" : m->nfds == 2 ? "2" : "more than 2");
	if (!m->nfds)
		return uffd__err(-EPROTO, "%s: the VM's message carries no file descriptor; Firecracker sends its userfaultfd with the JSON (SCM_RIGHTS)",
				 C);
	return 0;
}

/* The first initialised userfaultfd among the descriptors: its index, or -1. */
static int find_uffd(const struct msg *m, uint64_t *features)
{
	for (size_t i = 0; i < m->nfds; i++) {
		uint64_t f;

		if (!uffd__fdinfo_quiet(m->fds[i], &f) && (f & (1ull << 31))) {
			*features = f & ~(1ull << 31);
			return (int)i;
		}
	}
	return -1;
}

static int not_uffd(const struct msg *m)
{
	char path[64], link[128];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", m->fds[0]);
	n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = '\0';
	return uffd__err(-EPROTO, "%s: the descriptor the VM sent is not an initialised userfaultfd but %s", C,
			 n > 0 ? link : "an unknown file");
}

/* The peer's identity and a pidfd: SO_PEERPIDFD names the very process that connected. */
static void peer_identity(int conn, struct uffd_fc_handshake *h)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);
	int pidfd = -1;

	if (!getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cr, &len)) {
		h->pid = cr.pid;
		h->uid = cr.uid;
		h->gid = cr.gid;
	}
	len = sizeof(pidfd);
	/* pidfd_open may race a pid reuse; SO_PEERPIDFD (Linux 6.5) cannot. */
	if (getsockopt(conn, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) && h->pid > 0)
		pidfd = (int)syscall(SYS_pidfd_open, h->pid, 0);
	if (pidfd >= 0)
		fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	h->pidfd = pidfd;
}

/* ---- the regions ---- */

/* The base page, or a huge page size this machine has. */
static bool machine_page_size(uint64_t ps)
{
	char path[96];
	struct stat st;

	if (ps == uffd__base_page_size())
		return true;
	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%llukB", (unsigned long long)(ps >> 10));
	return !(ps & 1023) && !stat(path, &st);
}

static int check_region(const struct uffd_fc_region *g, size_t i, uint64_t file_size)
{
	uint64_t ps = g->page_size;

	if (!ps || (ps & (ps - 1)))
		return uffd__err(-EPROTO, "%s: region %zu: page size %llu is not a power of two", C, i,
				 (unsigned long long)ps);
	if (!machine_page_size(ps))
		return uffd__err(-EPROTO, "%s: region %zu: page size %llu is neither the base page size (%zu) nor a huge page size of this machine",
				 C, i, (unsigned long long)ps, uffd__base_page_size());
	if (!g->owner_addr || !g->length || (g->owner_addr | g->length | g->offset) & (ps - 1))
		return uffd__err(-EPROTO, "%s: region %zu: base_host_virt_addr 0x%llx, size %llu and offset %llu must be non-zero multiples of the page size %llu (offset may be 0)",
				 C, i, (unsigned long long)g->owner_addr, (unsigned long long)g->length,
				 (unsigned long long)g->offset, (unsigned long long)ps);
	if (g->owner_addr + g->length < g->owner_addr || g->offset + g->length < g->offset)
		return uffd__err(-EPROTO, "%s: region %zu: base_host_virt_addr 0x%llx or offset %llu + size %llu wraps around",
				 C, i, (unsigned long long)g->owner_addr, (unsigned long long)g->offset,
				 (unsigned long long)g->length);
	if (file_size && (g->offset > file_size || file_size - g->offset < g->length))
		return uffd__err(-ERANGE, "%s: region %zu: offset %llu + size %llu lies outside the snapshot file of %llu bytes; is it the snapshot of this VM?",
				 C, i, (unsigned long long)g->offset, (unsigned long long)g->length,
				 (unsigned long long)file_size);
	return 0;
}

static int by_addr(const void *a, const void *b)
{
	const struct uffd_fc_region *x = a, *y = b;

	return x->owner_addr < y->owner_addr ? -1 : x->owner_addr > y->owner_addr;
}

static int check_overlap(const struct uffd_fc_handshake *h)
{
	struct uffd_fc_region *s = malloc(h->nregions * sizeof(*s));
	int err = 0;

	if (!s)
		return uffd__err(-ENOMEM, "%s: out of memory", C);
	memcpy(s, h->regions, h->nregions * sizeof(*s));
	qsort(s, h->nregions, sizeof(*s), by_addr);
	for (size_t i = 1; i < h->nregions && !err; i++)
		if (s[i].owner_addr < s[i - 1].owner_addr + s[i - 1].length)
			err = uffd__err(-EPROTO, "%s: regions overlap: 0x%llx+%llu and 0x%llx+%llu", C,
					(unsigned long long)s[i - 1].owner_addr, (unsigned long long)s[i - 1].length,
					(unsigned long long)s[i].owner_addr, (unsigned long long)s[i].length);
	free(s);
	return err;
}

/* ---- the regions against the VM's mappings ---- */

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
static int region_mapped(const struct uffd_fc_region *g, size_t i, const struct vma *v, size_t n, pid_t pid)
{
	uint64_t covered = 0, end = g->owner_addr + g->length;

	for (size_t k = 0; k < n; k++) {
		if (v[k].end <= g->owner_addr || v[k].start >= end)
			continue;
		if (v[k].page_size != g->page_size)
			return uffd__err(-EPROTO, "%s: region %zu: page size %llu, but the VM (pid %d) maps 0x%llx-0x%llx with %llu-byte pages",
					 C, i, (unsigned long long)g->page_size, (int)pid,
					 (unsigned long long)v[k].start, (unsigned long long)v[k].end,
					 (unsigned long long)v[k].page_size);
		covered += (v[k].end < end ? v[k].end : end) - (v[k].start > g->owner_addr ? v[k].start : g->owner_addr);
	}
	if (covered == g->length)
		return 0;
	return uffd__err(-EPROTO, "%s: region %zu: 0x%llx+%llu is not all mapped in the VM (pid %d)", C, i,
			 (unsigned long long)g->owner_addr, (unsigned long long)g->length, (int)pid);
}

/* Where the VM's smaps can be read (its pid is visible here); a wrong page size makes every fault's length wrong. */
static int check_mappings(const struct uffd_fc_handshake *h)
{
	size_t n;
	struct vma *v = read_vmas(h->pid, &n);
	int err = 0;

	for (size_t i = 0; v && i < h->nregions && !err; i++)
		err = region_mapped(&h->regions[i], i, v, n, h->pid);
	free(v);
	return err;
}

static int check_table(const struct uffd_fc_handshake *h, const struct uffd_fc_opts *o)
{
	int err = 0;

	for (size_t i = 0; i < h->nregions && !err; i++)
		err = check_region(&h->regions[i], i, o->file_size);
	if (!err)
		err = check_overlap(h);
	if (!err && !(o->flags & UFFD_FC_NO_MAPPING_CHECK))
		err = check_mappings(h);
	return err;
}

/* ---- the call ---- */

static int check_opts(int conn, const struct uffd_fc_opts *in, struct uffd_fc_opts *o,
		      struct uffd_fc_handshake **out)
{
	int err;

	if (!out)
		return uffd__err(-EINVAL, "%s: out is NULL", C);
	*out = NULL;
	*o = (struct uffd_fc_opts){ .size = sizeof(*o), .cancel_fd = -1 };
	if (in && (err = uffd__opts_copy(o, sizeof(*o), in, in->size, "uffd_fc_opts")))
		return err;
	if (conn < 0)
		return uffd__err(-EINVAL, "%s: conn %d is not a descriptor", C, conn);
	if (o->timeout_ms < -1)
		return uffd__err(-EINVAL, "%s: timeout_ms %d is below -1", C, o->timeout_ms);
	if (o->cancel_fd <= 0)	/* zeroed options: none */
		o->cancel_fd = -1;
	if (o->flags & ~UFFD_FC_NO_MAPPING_CHECK)
		return uffd__err(-EINVAL, "%s: flags 0x%x include bits other than UFFD_FC_NO_MAPPING_CHECK", C, o->flags);
	if (o->max_regions > REGIONS_MAX)
		return uffd__err(-EINVAL, "%s: max_regions %u is above %u", C, o->max_regions, REGIONS_MAX);
	if (!o->timeout_ms)
		o->timeout_ms = DEFAULT_TIMEOUT_MS;
	if (!o->max_regions)
		o->max_regions = REGIONS_MAX;
	return 0;
}

UFFD_EXPORT int uffd_fc_handshake_recv(int conn, const struct uffd_fc_opts *opts, struct uffd_fc_handshake **out)
{
	struct uffd_fc_opts o;
	struct uffd_fc_handshake *h;
	struct msg m = { 0 };
	int err, ui;

	if ((err = check_opts(conn, opts, &o, out)))
		return err;
	if (!(h = calloc(1, sizeof(*h))))
		return uffd__err(-ENOMEM, "%s: out of memory", C);
	h->uffd = h->pidfd = -1;
	err = read_message(conn, &o, o.max_regions, &m, &h->regions, &h->nregions);
	/* Once a userfaultfd is ours, whatever else came, the VM waits for its handler: keep who it is. */
	if ((ui = find_uffd(&m, &h->features)) >= 0) {
		h->uffd = m.fds[ui];
		m.fds[ui] = -1;
		peer_identity(conn, h);
	}
	if (!err && !(err = check_fds(&m)) && h->uffd < 0)
		err = not_uffd(&m);
	if (!err)
		err = check_table(h, &o);
	for (size_t i = 0; i < m.nfds; i++)
		if (m.fds[i] >= 0)
			close(m.fds[i]);
	free(m.buf);
	if (err) {
		free(h->regions);
		h->regions = NULL;
		h->nregions = 0;
	}
	if (err && h->uffd < 0) {
		uffd_fc_handshake_free(h);
		return err;
	}
	*out = h;
	return err;
}
UFFD_EXPORT_OWN(fc_handshake_recv);

UFFD_EXPORT void uffd_fc_handshake_free(struct uffd_fc_handshake *h)
{
	if (!h)
		return;
	if (h->uffd >= 0)
		close(h->uffd);
	if (h->pidfd >= 0)
		close(h->pidfd);
	free(h->regions);
	free(h);
}
UFFD_EXPORT_OWN(fc_handshake_free);
