/* SPDX-License-Identifier: MIT */
/*
 * Firecracker's side of the handshake (fc-send.h): what fc-vmm and kvm-vmm
 * send to a page-fault handler such as uffd-serve.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "common.h"
#include "fc-send.h"

static int open_uffd(const char *prog)
{
	/* Firecracker asks for EVENT_REMOVE only, for its balloon. */
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		ex_die(prog, 3, "userfaultfd: %s (run as root, or set vm.unprivileged_userfaultfd=1)", strerror(errno));
	if (ioctl(fd, UFFDIO_API, &api))
		ex_die(prog, 3, "UFFDIO_API with EVENT_REMOVE: %s", strerror(errno));
	return fd;
}

static int connect_to(const char *prog, const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(a.sun_path))
		ex_die(prog, 2, "socket path too long");
	strcpy(a.sun_path, path);
	/* The handler may not listen yet: try for 10 s. */
	for (int i = 0; i < 2000; i++) {
		int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (s < 0 || !connect(s, (struct sockaddr *)&a, sizeof(a)))
			return s < 0 ? -errno : s;
		close(s);
		if (errno != ENOENT && errno != ECONNREFUSED)
			break;
		usleep(5000);
	}
	ex_die(prog, 3, "cannot connect to %s: %s", path, strerror(errno));
}

/* The JSON serde_json writes for Vec<GuestRegionUffdMapping>: compact, fields in declaration order. */
static size_t table_json(const struct fc_send_region *r, unsigned n, enum fc_send_json form, char *buf, size_t cap)
{
	size_t len = 0;

	len += (size_t)snprintf(buf + len, cap - len, "[");
	for (unsigned i = 0; i < n; i++) {
		unsigned long long ps = r[i].page_size;

		len += (size_t)snprintf(buf + len, cap - len,
					"%s{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu", i ? "," : "",
					(unsigned long long)(uintptr_t)r[i].base, (unsigned long long)r[i].size,
					(unsigned long long)r[i].offset);
		if (form != FC_SEND_JSON_OLD)
			len += (size_t)snprintf(buf + len, cap - len, ",\"page_size\":%llu", ps);
		if (form != FC_SEND_JSON_CURRENT)
			len += (size_t)snprintf(buf + len, cap - len, ",\"page_size_kib\":%llu", ps);
		len += (size_t)snprintf(buf + len, cap - len, "}");
	}
	len += (size_t)snprintf(buf + len, cap - len, "]");
	return len;
}

int fc_send_hand_over(const char *prog, const char *path, const struct fc_send_region *r, unsigned n,
		      enum fc_send_json form)
{
	int uffd = open_uffd(prog), sock = connect_to(prog, path);
	char json[256 * FC_SEND_MAX_REGIONS];
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl = { 0 };
	struct iovec iov = { .iov_base = json };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	if (!n || n > FC_SEND_MAX_REGIONS)
		ex_die(prog, 3, "%u regions: Firecracker's table here has 1 to %d", n, FC_SEND_MAX_REGIONS);
	for (unsigned i = 0; i < n; i++) {
		struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING,
					       .range = { (uintptr_t)r[i].base, r[i].size } };

		if (ioctl(uffd, UFFDIO_REGISTER, &reg))
			ex_die(prog, 3, "UFFDIO_REGISTER region %u: %s", i, strerror(errno));
	}
	iov.iov_len = table_json(r, n, form, json, sizeof(json));
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &uffd, sizeof(int));
	if (sendmsg(sock, &mh, MSG_NOSIGNAL) != (ssize_t)iov.iov_len)
		ex_die(prog, 3, "sending the userfaultfd: %s", strerror(errno));
	return sock;	/* the uffd stays open too, as in Firecracker */
}
