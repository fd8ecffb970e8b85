/* SPDX-License-Identifier: MIT */
/* sendmsg(2) of a buffer with descriptors in one SCM_RIGHTS message, for tests and fuzzers. */
#ifndef LIBUFFD_TEST_SEND_FDS_H
#define LIBUFFD_TEST_SEND_FDS_H

#include <string.h>
#include <sys/socket.h>

#define SEND_FDS_MAX 8

/* nfds 0: no control message. Returns what sendmsg returns. */
static inline ssize_t send_fds(int sock, const void *buf, size_t len, const int *fds,
			       unsigned nfds, int flags)
{
	union {
		char b[CMSG_SPACE(sizeof(int) * SEND_FDS_MAX)];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	memset(&ctl, 0, sizeof(ctl));
	if (nfds) {
		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		ctl.align.cmsg_level = SOL_SOCKET;
		ctl.align.cmsg_type = SCM_RIGHTS;
		ctl.align.cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(&ctl.align), fds, sizeof(int) * nfds);
	}
	return sendmsg(sock, &mh, flags);
}

#endif
