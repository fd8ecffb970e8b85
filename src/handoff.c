/* SPDX-License-Identifier: MIT */
/*
 * Handing a userfaultfd over a Unix socket: the uffd's features and a table
 * of the sender's regions in one message, the descriptors [uffd, backing
 * files...] in its SCM_RIGHTS control message. The receiver treats all of
 * it as untrusted: every size, count, row and descriptor is checked before
 * use, and every descriptor received is closed on any failure.
 *
 * Wire format, version 1, in the host's byte order (a Unix socket never
 * leaves the host); libuffd-handoff(7) documents it for other senders:
 *   header: header_size bytes, of which this version knows 40
 *   table:  nregions rows of row_size bytes, of which it knows 48
 * A later revision of version 1 may append fields to either; a receiver
 * skips what it does not know. Descriptors may ride on any byte of the
 * message (a stream sender may write part of it before the sendmsg that
 * carries them), but never outside it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77		/* Linux 6.5 */
#endif
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04		/* Linux 6.5, with SO_PASSPIDFD */
#endif

#define MAGIC 0x48464655u	/* "UFFH" in little-endian memory */
#define VERSION 1
#define HEADER_MAX 4096
#define ROW_MAX 1024
#define FDS_MAX 253		/* SCM_MAX_FD: the kernel's limit per message */
#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_MAX_REGIONS 64
#define UFFD_INITIALIZED (1u << 31)	/* the kernel's mark in fdinfo's feature field */
/* Room for every descriptor, and for what SO_PASSCRED/SO_PASSPIDFD add. */
#define CTL_SIZE (CMSG_SPACE(sizeof(int) * FDS_MAX) + CMSG_SPACE(sizeof(struct ucred)) + \
		  CMSG_SPACE(sizeof(int)))

struct wire_header {
	uint32_t magic;
	uint16_t version;
	uint16_t header_size;	/* bytes of the header as sent */
	uint32_t row_size;	/* bytes of each row as sent */
	uint32_t nregions;
	uint32_t nfds;		/* descriptors: the uffd, then the backing files */
	uint32_t page_size;	/* the sender's base page size */
	uint64_t features;	/* UFFD_FEATURE_* the uffd was initialised with */
	uint32_t flags;		/* none defined: a receiver refuses unknown bits */
	uint32_t reserved;	/* 0; ignored */
};
_Static_assert(sizeof(struct wire_header) == 40, "the version 1 header is 40 bytes");

struct wire_row {
	uint64_t owner_addr;
	uint64_t length;
	uint64_t page_size;
	uint64_t modes;
	uint64_t fd_offset;
	uint32_t fd_index;	/* 0: no file; else its place among the descriptors */
	uint32_t flags;		/* none defined: a receiver refuses unknown bits */
};
_Static_assert(sizeof(struct wire_row) == 48, "a version 1 row is 48 bytes");

/* ---- shared by both sides ---- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The end of a wait of timeout_ms (-1: none). */
static int64_t deadline(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/* Waits until sock has events (or an error to report); -ETIMEDOUT, -errno. */
static int wait_ready(int sock, short events, int64_t end)
{
	struct pollfd p = { .fd = sock, .events = events };

	for (;;) {
		int64_t left = end < 0 ? -1 : end - now_ms();
		int n;

		if (end >= 0 && left <= 0)
			return -ETIMEDOUT;
		n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

/* A connected Unix stream or seqpacket socket: returns its type. */
static int check_socket(const char *c, int sock)
{
	int type = 0, domain = 0;
	socklen_t len = sizeof(int);

	if (sock < 0)
		return uffd__err(-EINVAL, "%s: socket %d is negative", c, sock);
	if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len))
		return uffd__err(-errno, "%s: fd %d is %s", c, sock,
				 errno == ENOTSOCK ? "not a socket" : "not open");
	len = sizeof(int);
	if (getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &domain, &len) || domain != AF_UNIX)
		return uffd__err(-EAFNOSUPPORT, "%s: socket %d is not a Unix socket (family %d); descriptors travel only over AF_UNIX",
				 c, sock, domain);
	if (type != SOCK_STREAM && type != SOCK_SEQPACKET)
		return uffd__err(-EPROTOTYPE, "%s: socket %d is of type %d; use a SOCK_STREAM or SOCK_SEQPACKET Unix socket",
				 c, sock, type);
	return type;
}

static struct uffd_foreign_opts row_opts(const struct uffd_handoff_region *t)
{
	return (struct uffd_foreign_opts){
		.size = sizeof(struct uffd_foreign_opts), .owner_addr = t->owner_addr,
		.length = (size_t)t->length, .page_size = (size_t)t->page_size,
		.modes = t->modes, .fd = t->fd, .fd_offset = t->fd_offset,
	};
}

struct span {
	uint64_t start, end;
	size_t row;
};

static int by_start(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Rows are checked one by one already, so no range wraps. */
static int check_overlap(const char *c, const struct uffd_handoff_region *t, size_t n)
{
	struct span *s = calloc(n ? n : 1, sizeof(*s));
	int err = 0;

	if (!s)
		return uffd__err(-ENOMEM, "%s: out of memory", c);
	for (size_t i = 0; i < n; i++)
		s[i] = (struct span){ t[i].owner_addr, t[i].owner_addr + t[i].length, i };
	qsort(s, n, sizeof(*s), by_start);
	for (size_t i = 1; i < n && !err; i++)
		if (s[i].start < s[i - 1].end)
			err = uffd__err(-EINVAL, "%s: regions %zu (0x%llx+%llu) and %zu (0x%llx+%llu) of the table overlap",
					c, s[i - 1].row, (unsigned long long)s[i - 1].start,
					(unsigned long long)(s[i - 1].end - s[i - 1].start), s[i].row,
					(unsigned long long)s[i].start, (unsigned long long)(s[i].end - s[i].start));
	free(s);
	return err;
}

/* Every row as uffd_region_create_foreign() would check it, and no overlap. */
static int check_table(const char *c, const struct uffd_handoff_region *t, size_t n)
{
	char what[96];
	int err;

	for (size_t i = 0; i < n; i++) {
		struct uffd_foreign_opts o = row_opts(&t[i]);

		snprintf(what, sizeof(what), "%s: region %zu of the table", c, i);
		if (t[i].length > SIZE_MAX || t[i].page_size > SIZE_MAX)
			return uffd__err(-EINVAL, "%s: length or page size does not fit this process", what);
		if ((err = uffd__foreign_check(&o, what)))
			return err;
	}
	return check_overlap(c, t, n);
}

/* ---- sending ---- */

struct outmsg {
	unsigned char *buf;
	size_t len;
	int fds[FDS_MAX];
	unsigned nfds;
};

/* The place of fd among the descriptors, added if new; 0 when they are full. */
static uint32_t fd_index(struct outmsg *m, int fd)
{
	for (unsigned i = 1; i < m->nfds; i++)
		if (m->fds[i] == fd)
			return i;
	if (m->nfds == FDS_MAX)
		return 0;
	m->fds[m->nfds] = fd;
	return m->nfds++;
}

static int put_row(const char *c, struct outmsg *m, size_t i, const struct uffd_handoff_region *t)
{
	struct wire_row w = {
		.owner_addr = t->owner_addr, .length = t->length, .page_size = t->page_size,
		.modes = t->modes, .fd_offset = t->fd_offset,
	};

	if (t->fd >= 0 && fcntl(t->fd, F_GETFD) < 0)
		return uffd__err(-EBADF, "%s: region %zu of the table: fd %d is not open", c, i, t->fd);
	if (t->fd >= 0 && !(w.fd_index = fd_index(m, t->fd)))
		return uffd__err(-EINVAL, "%s: more than %d distinct backing fds; one message carries at most %d descriptors with the userfaultfd",
				 c, FDS_MAX - 1, FDS_MAX);
	memcpy(m->buf + sizeof(struct wire_header) + i * sizeof(w), &w, sizeof(w));
	return 0;
}

/*
 * The receiver refuses a backing file that can shrink: a peer that
 * truncates it under the handler turns the handler's writes through the
 * alias view into SIGBUS. Every file is checked before any is sealed, so
 * a refused call seals nothing.
 */
static int sealable(const char *c, const struct outmsg *m, unsigned k)
{
	int fd = m->fds[k], seals = fcntl(fd, F_GET_SEALS);

	if (seals >= 0 && ((seals & F_SEAL_SHRINK) || !(seals & F_SEAL_SEAL)))
		return 0;
	if (seals < 0)
		return uffd__err(-EPERM, "%s: backing fd %d cannot be sealed against shrinking (F_GET_SEALS: %s): "
				 "the receiver refuses a file a peer could truncate under its handler; back the region "
				 "with a memfd made with MFD_ALLOW_SEALING (a tmpfs or hugetlbfs file opened by path has no seals)",
				 c, fd, uffd__errname(errno));
	return uffd__err(-EPERM, "%s: backing fd %d cannot be sealed against shrinking: its seals are sealed (F_SEAL_SEAL; "
			 "a memfd made without MFD_ALLOW_SEALING); the receiver refuses a file a peer could truncate under "
			 "its handler; create the memfd with MFD_ALLOW_SEALING, or add F_SEAL_SHRINK before F_SEAL_SEAL", c, fd);
}

static int seal_all(const char *c, const struct outmsg *m)
{
	int err;

	for (unsigned k = 1; k < m->nfds; k++)
		if ((err = sealable(c, m, k)))
			return err;
	for (unsigned k = 1; k < m->nfds; k++)
		if (!(fcntl(m->fds[k], F_GET_SEALS) & F_SEAL_SHRINK) &&
		    fcntl(m->fds[k], F_ADD_SEALS, F_SEAL_SHRINK))
			return uffd__err(-errno, "%s: F_ADD_SEALS F_SEAL_SHRINK on backing fd %d failed: %s",
					 c, m->fds[k], strerror(errno));
	return 0;
}

static int build(const char *c, struct outmsg *m, const struct uffd *u,
		 const struct uffd_handoff_region *t, size_t n)
{
	struct wire_header h = {
		.magic = MAGIC, .version = VERSION, .header_size = sizeof(h),
		.row_size = sizeof(struct wire_row), .nregions = (uint32_t)n,
		.page_size = (uint32_t)uffd__base_page_size(), .features = u->features,
	};
	int err;

	m->len = sizeof(h) + n * sizeof(struct wire_row);
	m->buf = calloc(1, m->len);
	if (!m->buf)
		return uffd__err(-ENOMEM, "%s: out of memory for a message of %zu bytes", c, m->len);
	m->fds[0] = u->fd;
	m->nfds = 1;
	for (size_t i = 0; i < n; i++)
		if ((err = put_row(c, m, i, &t[i])))
			return err;
	h.nfds = m->nfds;
	memcpy(m->buf, &h, sizeof(h));
	return seal_all(c, m);
}

static int send_error(const char *c, int err, size_t sent, size_t len)
{
	const char *why;

	switch (err) {
	case -EPIPE:
	case -ECONNRESET:
		why = "the peer closed the connection";
		break;
	case -ENOTCONN:
	case -EDESTADDRREQ:
		why = "the socket is not connected";
		break;
	case -EMSGSIZE:
		why = "the message is larger than the socket's send buffer; raise SO_SNDBUF or send fewer regions";
		break;
	case -ETOOMANYREFS:
		why = "too many descriptors are in flight on Unix sockets (RLIMIT_NOFILE of the sender)";
		break;
	case -ETIMEDOUT:
		why = "the peer did not read it within 5 s";
		break;
	default:
		why = strerror(-err);
	}
	return uffd__err(err, "%s: sending the message failed after %zu of %zu bytes: %s (%s)",
			 c, sent, len, why, uffd__errname(err));
}

/* The descriptors go with the first bytes sent; the rest follows without. */
static int send_all(const char *c, int sock, const struct outmsg *m)
{
	union {
		char buf[CTL_SIZE];
		struct cmsghdr align;
	} ctl;
	int64_t end = deadline(DEFAULT_TIMEOUT_MS);
	size_t off = 0;
	int err;

	memset(&ctl, 0, sizeof(ctl));
	while (off < m->len) {
		struct iovec iov = { m->buf + off, m->len - off };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t k;

		if (!off) {
			struct cmsghdr *cm = &ctl.align;

			mh.msg_control = ctl.buf;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * m->nfds);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int) * m->nfds);
			memcpy(CMSG_DATA(cm), m->fds, sizeof(int) * m->nfds);
		}
		k = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (k > 0) {
			off += (size_t)k;
			continue;
		}
		err = k < 0 ? -errno : -EPIPE;
		if (err == -EINTR)
			continue;
		if (err == -EAGAIN && !(err = wait_ready(sock, POLLOUT, end)))
			continue;
		return send_error(c, err, off, m->len);
	}
	return 0;
}

UFFD_EXPORT int uffd_handoff_send(int sock, const struct uffd *u,
				  const struct uffd_handoff_region *regions, size_t n)
{
	const char *c = "uffd_handoff_send";
	struct outmsg m = { 0 };
	int err;

	if (!u)
		return uffd__err(-EINVAL, "%s: handle is NULL", c);
	if (n && !regions)
		return uffd__err(-EINVAL, "%s: regions is NULL with n %zu", c, n);
	if (n > UFFD_HANDOFF_REGIONS_MAX)
		return uffd__err(-EINVAL, "%s: %zu regions; a table has at most %u", c, n,
				 UFFD_HANDOFF_REGIONS_MAX);
	if ((err = check_socket(c, sock)) >= 0 && !(err = check_table(c, regions, n)) &&
	    !(err = build(c, &m, u, regions, n)))
		err = send_all(c, sock, &m);
	free(m.buf);
	return err;
}
UFFD_EXPORT_OWN(handoff_send);

/* ---- receiving ---- */

struct reader {
	const char *c;
	int sock;
	bool stream;
	int64_t end;
	size_t record_max;	/* seqpacket: longest record accepted */
	int fds[FDS_MAX];	/* received, in order; -1 once owned elsewhere */
	unsigned nfds;
	unsigned arrived;	/* descriptors that came, kept or not */
	bool ctrunc;
	uint64_t got;		/* bytes of the message read */
	unsigned char *rec;	/* seqpacket: the record, read whole */
	size_t rec_len, rec_pos;
};

/* Keeps the SCM_RIGHTS descriptors; closes any other (SCM_PIDFD) and surplus. */
static void take_fds(struct reader *rd, struct msghdr *mh)
{
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		bool rights = cm->cmsg_type == SCM_RIGHTS;

		if (cm->cmsg_level != SOL_SOCKET || (!rights && cm->cmsg_type != SCM_PIDFD))
			continue;
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (rights && rd->nfds < FDS_MAX)
				rd->fds[rd->nfds++] = fd;
			else
				close(fd);
			rd->arrived += rights;
		}
	}
	rd->ctrunc |= (mh->msg_flags & MSG_CTRUNC) != 0;
}

static int recv_error(const struct reader *rd, int err)
{
	if (err == -ETIMEDOUT)
		return uffd__err(err, "%s: no complete message within the timeout (%llu bytes came); the sender must send "
				 "the whole message at once, or raise uffd_handoff_opts.timeout_ms",
				 rd->c, (unsigned long long)rd->got);
	return uffd__err(err, "%s: recvmsg failed after %llu bytes: %s (%s)", rd->c,
			 (unsigned long long)rd->got, strerror(-err), uffd__errname(err));
}

/* One recvmsg, waiting up to the deadline; flags MSG_PEEK|MSG_TRUNC to size a record. */
static ssize_t recv_some(struct reader *rd, void *buf, size_t len, int flags)
{
	union {
		char buf[CTL_SIZE];
		struct cmsghdr align;
	} ctl;
	int err;

	for (;;) {
		struct iovec iov = { buf, len };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t k;

		if (!(flags & MSG_PEEK)) {	/* a peek would install duplicates */
			mh.msg_control = ctl.buf;
			mh.msg_controllen = sizeof(ctl.buf);
		}
		k = recvmsg(rd->sock, &mh, flags | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (k >= 0) {
			if (!(flags & MSG_PEEK))
				take_fds(rd, &mh);
			return k;
		}
		err = -errno;
		if (err == -EINTR)
			continue;
		if (err != -EAGAIN || (err = wait_ready(rd->sock, POLLIN, rd->end)))
			return recv_error(rd, err);
	}
}

static int truncated(const struct reader *rd)
{
	return uffd__err(-EPROTO, "%s: the message is truncated: %llu bytes of it came before the peer %s",
			 rd->c, (unsigned long long)rd->got,
			 rd->stream ? "closed the connection" : "ended the record (or closed the connection)");
}

/* Seqpacket: the next record, sized with a peek, read whole with its descriptors. */
static int load_record(struct reader *rd)
{
	ssize_t len = recv_some(rd, NULL, 0, MSG_PEEK | MSG_TRUNC), k;

	if (len < 0)
		return (int)len;
	if ((size_t)len > rd->record_max)
		return uffd__err(-E2BIG, "%s: a record of %zd bytes is longer than a message of max_regions rows can be (%zu); "
				 "raise uffd_handoff_opts.max_regions if the sender has that many regions",
				 rd->c, len, rd->record_max);
	rd->rec = malloc(len ? (size_t)len : 1);
	if (!rd->rec)
		return uffd__err(-ENOMEM, "%s: out of memory for a record of %zd bytes", rd->c, len);
	k = recv_some(rd, rd->rec, (size_t)len, 0);
	if (k < 0)
		return (int)k;
	rd->rec_len = (size_t)k;
	return 0;
}

/* Exactly len bytes of the message into dst (NULL: skip them). */
static int read_exact(struct reader *rd, void *dst, size_t len)
{
	unsigned char scratch[256];
	int err;

	if (!rd->stream) {
		if (!rd->rec && (err = load_record(rd)))
			return err;
		if (rd->rec_len - rd->rec_pos < len)
			return truncated(rd);
		if (dst)
			memcpy(dst, rd->rec + rd->rec_pos, len);
		rd->rec_pos += len;
		rd->got += len;
		return 0;
	}
	for (size_t done = 0; done < len;) {
		size_t want = len - done;
		void *to = dst ? (unsigned char *)dst + done : scratch;
		ssize_t k = recv_some(rd, to, dst || want < sizeof(scratch) ? want : sizeof(scratch), 0);

		if (k < 0)
			return (int)k;
		if (!k)
			return truncated(rd);
		done += (size_t)k;
		rd->got += (uint64_t)k;
	}
	return 0;
}

static int check_header(const struct reader *rd, const struct wire_header *h, unsigned max)
{
	const char *c = rd->c;
	char fbuf[128];

	if (h->magic != MAGIC)
		return uffd__err(-EPROTO, "%s: not a libuffd handoff message: it starts with 0x%08x, not 0x%08x (\"UFFH\")",
				 c, h->magic, MAGIC);
	if (h->version != VERSION)
		return uffd__err(-EPROTONOSUPPORT, "%s: the sender speaks wire version %u, this libuffd version %u; use matching libuffd versions",
				 c, h->version, VERSION);
	if (h->header_size < sizeof(*h) || h->header_size > HEADER_MAX ||
	    h->row_size < sizeof(struct wire_row) || h->row_size > ROW_MAX)
		return uffd__err(-EPROTO, "%s: header size %u or row size %u outside [%zu, %d] and [%zu, %d]",
				 c, h->header_size, h->row_size, sizeof(*h), HEADER_MAX,
				 sizeof(struct wire_row), ROW_MAX);
	if (h->flags)
		return uffd__err(-EPROTONOSUPPORT, "%s: the message has flags 0x%x this libuffd does not know", c, h->flags);
	if (h->nregions > max)
		return uffd__err(-E2BIG, "%s: the table has %u regions, more than max_regions %u; raise uffd_handoff_opts.max_regions (at most %u)",
				 c, h->nregions, max, UFFD_HANDOFF_REGIONS_MAX);
	if (!h->nfds || h->nfds > FDS_MAX || h->nfds > (uint64_t)h->nregions + 1)
		return uffd__err(-EPROTO, "%s: the header announces %u descriptors; there must be 1 (the userfaultfd) to %u",
				 c, h->nfds, h->nregions + 1 < FDS_MAX ? h->nregions + 1 : FDS_MAX);
	if (h->page_size != uffd__base_page_size())
		return uffd__err(-EPROTO, "%s: the sender's page size is %u, this process's %zu", c, h->page_size,
				 uffd__base_page_size());
	if (h->features & ~UFFD_FEATURES_KNOWN)
		return uffd__err(-EOPNOTSUPP, "%s: the userfaultfd has features this libuffd does not know (%s); upgrade libuffd on this side",
				 c, uffd__feature_list(h->features & ~UFFD_FEATURES_KNOWN, fbuf, sizeof(fbuf)));
	return 0;
}

/* The table, rows stored with their fd_index in fd until the descriptors are bound. */
static int read_table(struct reader *rd, const struct wire_header *h, struct uffd_handoff_region **out)
{
	size_t n = h->nregions, size = n * h->row_size;
	unsigned char *raw = malloc(size ? size : 1);
	struct uffd_handoff_region *t = calloc(n ? n : 1, sizeof(*t));
	int err = raw && t ? read_exact(rd, raw, size)
			   : uffd__err(-ENOMEM, "%s: out of memory for %zu regions", rd->c, n);

	for (size_t i = 0; i < n && !err; i++) {
		struct wire_row w;

		memcpy(&w, raw + i * h->row_size, sizeof(w));
		if (w.flags)
			err = uffd__err(-EPROTONOSUPPORT, "%s: region %zu of the table has flags 0x%x this libuffd does not know",
					rd->c, i, w.flags);
		else if (w.fd_index >= h->nfds)
			err = uffd__err(-EPROTO, "%s: region %zu of the table names descriptor %u of %u", rd->c, i,
					w.fd_index, h->nfds);
		t[i] = (struct uffd_handoff_region){ w.owner_addr, w.length, w.page_size, w.modes,
						     w.fd_offset, (int)w.fd_index };
	}
	free(raw);
	if (err)
		free(t);
	else
		*out = t;
	return err;
}

/* The descriptors that came must be those announced, each one used. */
static int bind_fds(const struct reader *rd, const struct wire_header *h,
		    struct uffd_handoff_region *t)
{
	bool used[FDS_MAX] = { true };

	if (rd->ctrunc)
		return uffd__err(-EPROTO, "%s: descriptors were cut off (MSG_CTRUNC) and closed: the sender sent more than %d, "
				 "or this process has reached its limit of open files (RLIMIT_NOFILE)", rd->c, FDS_MAX);
	if (!rd->arrived)
		return uffd__err(-EPROTO, "%s: no descriptors came with the message; the sender must pass the userfaultfd "
				 "(and backing fds) with SCM_RIGHTS in the sendmsg of the message", rd->c);
	if (rd->arrived != h->nfds)
		return uffd__err(-EPROTO, "%s: the header announces %u descriptors, %u came", rd->c, h->nfds,
				 rd->arrived);
	for (size_t i = 0; i < h->nregions; i++) {
		used[t[i].fd] = true;
		t[i].fd = t[i].fd ? rd->fds[t[i].fd] : -1;
	}
	for (unsigned i = 1; i < h->nfds; i++)
		if (!used[i])
			return uffd__err(-EPROTO, "%s: descriptor %u is not the file of any region", rd->c, i);
	return 0;
}

/*
 * A backing file the peer can still shrink would turn the handler's
 * writes through the alias view into SIGBUS: it must carry F_SEAL_SHRINK
 * (uffd_handoff_send() adds it). Checked once the row's region accepted
 * the file as tmpfs or hugetlbfs, where seals exist.
 */
static int check_sealed(const char *c, size_t i, int fd)
{
	int seals = fd >= 0 ? fcntl(fd, F_GET_SEALS) : F_SEAL_SHRINK;

	if (seals >= 0 && (seals & F_SEAL_SHRINK))
		return 0;
	return uffd__err(-EINVAL, "%s: region %zu of the table: its backing file is not sealed against "
			 "shrinking (F_SEAL_SHRINK); the peer could truncate it under the handler, whose writes "
			 "through the alias view would then get SIGBUS; the sender must seal it: a memfd made with "
			 "MFD_ALLOW_SEALING, then fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) (uffd_handoff_send does that)",
			 c, i);
}

/* The kernel says which features the uffd has: they must be those announced. */
static int check_uffd(const char *c, int fd, uint64_t announced)
{
	char abuf[256], kbuf[256];
	uint64_t kf = 0;
	int err = uffd__fdinfo_features(c, fd, &kf);

	if (err)
		return err;
	if (!(kf & UFFD_INITIALIZED))
		return uffd__err(-EINVAL, "%s: the userfaultfd was never initialised (UFFDIO_API); the sender must send a handle it opened",
				 c);
	kf &= UFFD_INITIALIZED - 1;
	if (kf != announced)
		return uffd__err(-EPROTO, "%s: the message announces features 0x%llx (%s) but the kernel reports 0x%llx (%s) for the userfaultfd",
				 c, (unsigned long long)announced, uffd__feature_list(announced, abuf, sizeof(abuf)),
				 (unsigned long long)kf, uffd__feature_list(kf, kbuf, sizeof(kbuf)));
	return 0;
}

static int read_message(struct reader *rd, unsigned max, struct wire_header *h,
			struct uffd_handoff_region **t)
{
	int err;

	if ((err = read_exact(rd, h, sizeof(*h))) || (err = check_header(rd, h, max)) ||
	    (err = read_exact(rd, NULL, h->header_size - sizeof(*h))) ||
	    (err = read_table(rd, h, t)))
		return err;
	if (!rd->stream && rd->rec_pos != rd->rec_len)
		return uffd__err(-EPROTO, "%s: the record holds %zu bytes after the message", rd->c,
				 rd->rec_len - rd->rec_pos);
	return 0;
}

static int peer_identity(const char *c, int sock, struct uffd_handoff *h)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len))
		return uffd__err(-errno, "%s: SO_PEERCRED failed: %s", c, strerror(errno));
	h->pid = cr.pid;
	h->uid = cr.uid;
	h->gid = cr.gid;
	len = sizeof(h->pidfd);
	/* SO_PEERPIDFD names the very process (6.5); pidfd_open(pid) may race a reuse of the pid. */
	if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &h->pidfd, &len) || h->pidfd < 0)
		h->pidfd = h->pid > 0 ? (int)syscall(__NR_pidfd_open, h->pid, 0) : -1;
	if (h->pidfd < 0)
		h->pidfd = -1;
	return 0;
}

/* A region's error, named by its row. */
static int row_error(const char *c, size_t i, int err)
{
	char why[512];

	snprintf(why, sizeof(why), "%s", uffd_last_error());
	return uffd__err(err, "%s: region %zu of the table: %s", c, i, why);
}

static int make_handoff(struct reader *rd, const struct wire_header *h,
			const struct uffd_handoff_region *t, struct uffd_handoff **out)
{
	const char *c = rd->c;
	struct uffd_handoff *ho = calloc(1, sizeof(*ho));
	int err;

	if (!ho || !(ho->regions = calloc(h->nregions ? h->nregions : 1, sizeof(*ho->regions)))) {
		free(ho);
		return uffd__err(-ENOMEM, "%s: out of memory", c);
	}
	ho->pidfd = -1;
	if ((err = uffd_open_fd(&ho->uffd, rd->fds[0], h->features)))
		goto fail;
	rd->fds[0] = -1;	/* the handle's now */
	for (; ho->nregions < h->nregions; ho->nregions++) {
		struct uffd_foreign_opts o = row_opts(&t[ho->nregions]);

		if ((err = uffd_region_create_foreign(ho->uffd, &o, &ho->regions[ho->nregions]))) {
			err = row_error(c, ho->nregions, err);
			goto fail;
		}
		if ((err = check_sealed(c, ho->nregions, o.fd))) {
			ho->nregions++;	/* freed with the others */
			goto fail;
		}
	}
	if ((err = peer_identity(c, rd->sock, ho)))
		goto fail;
	*out = ho;
	return 0;
fail:
	uffd_handoff_free(ho);
	return err;
}

static int recv_opts(const char *c, const struct uffd_handoff_opts *opts, struct uffd_handoff_opts *o)
{
	int err;

	*o = (struct uffd_handoff_opts){ .size = sizeof(*o) };
	if (opts && (err = uffd__opts_copy(o, sizeof(*o), opts, opts->size, "uffd_handoff_opts")))
		return err;
	if (o->timeout_ms < -1)
		return uffd__err(-EINVAL, "%s: timeout_ms %d: pass -1 for none, 0 for the default", c, o->timeout_ms);
	if (o->max_regions > UFFD_HANDOFF_REGIONS_MAX)
		return uffd__err(-EINVAL, "%s: max_regions %u is above UFFD_HANDOFF_REGIONS_MAX (%u)", c,
				 o->max_regions, UFFD_HANDOFF_REGIONS_MAX);
	o->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	o->max_regions = o->max_regions ? o->max_regions : DEFAULT_MAX_REGIONS;
	return 0;
}

UFFD_EXPORT int uffd_handoff_recv(int sock, const struct uffd_handoff_opts *opts,
				  struct uffd_handoff **out)
{
	const char *c = "uffd_handoff_recv";
	struct uffd_handoff_opts o;
	struct reader rd = { .c = c, .sock = sock };
	struct wire_header h;
	struct uffd_handoff_region *t = NULL;
	int err, type;

	if (!out)
		return uffd__err(-EINVAL, "%s: out is NULL", c);
	*out = NULL;
	if ((err = recv_opts(c, opts, &o)))
		return err;
	if ((type = check_socket(c, sock)) < 0)
		return type;
	rd.stream = type == SOCK_STREAM;
	rd.end = deadline(o.timeout_ms);
	rd.record_max = HEADER_MAX + (size_t)o.max_regions * ROW_MAX;
	if ((err = read_message(&rd, o.max_regions, &h, &t)) || (err = bind_fds(&rd, &h, t)) ||
	    (err = check_table(c, t, h.nregions)) || (err = check_uffd(c, rd.fds[0], h.features)))
		goto out;
	err = make_handoff(&rd, &h, t, out);
out:
	/* The regions hold duplicates of their files: every descriptor received goes. */
	for (unsigned i = 0; i < rd.nfds; i++)
		if (rd.fds[i] >= 0)
			close(rd.fds[i]);
	free(t);
	free(rd.rec);
	return err;
}
UFFD_EXPORT_OWN(handoff_recv);

UFFD_EXPORT void uffd_handoff_free(struct uffd_handoff *h)
{
	if (!h)
		return;
	for (size_t i = 0; h->regions && i < h->nregions; i++)
		uffd_region_destroy(h->regions[i]);
	free(h->regions);
	uffd_close(h->uffd);
	if (h->pidfd >= 0)
		close(h->pidfd);
	free(h);
}
UFFD_EXPORT_OWN(handoff_free);
