/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve under systemd: the listening socket passed by socket
 * activation (LISTEN_FDS, sd_listen_fds(3)), and readiness and status
 * (sd_notify(3)): READY=1 once listening, STATUS= with the VMs served,
 * STOPPING=1 when the drain begins. Without libsystemd none of it is
 * built: the tool then creates its socket itself and notifies nobody.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "serve.h"

#ifdef HAVE_LIBSYSTEMD
/* The owner of the socket systemd made, for the default allow list (root and the owner). */
static void learn_owner(int fd, struct serve_opts *o)
{
	struct sockaddr_un a;
	socklen_t len = sizeof(a);
	struct stat st;

	if (o->sock_owner_set || getsockname(fd, (struct sockaddr *)&a, &len) || a.sun_family != AF_UNIX ||
	    !a.sun_path[0] || stat(a.sun_path, &st))
		return;
	o->sock_uid = st.st_uid;
	o->sock_gid = st.st_gid;
	o->sock_owner_set = true;
}

int sd_activated_socket(struct serve_opts *o)
{
	int n = sd_listen_fds(1), fd = SD_LISTEN_FDS_START;

	if (n == 0)
		return -1;
	if (n < 0)
		return -serve_fail(EXIT_SETUP, "socket activation: %s", strerror(-n));
	if (n > 1)
		return -serve_fail(EXIT_SETUP, "socket activation passed %d sockets; one uffd-serve serves one socket (one uffd-serve@ instance per socket)",
				   n);
	if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0)
		return -serve_fail(EXIT_SETUP, "socket activation: fd %d is not a listening Unix stream socket (ListenStream= a path in the .socket unit)",
				   fd);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	learn_owner(fd, o);
	return fd;
}

void sd_state(const char *fmt, ...)
{
	char buf[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sd_notify(0, buf);
}
#else
int sd_activated_socket(struct serve_opts *o)
{
	(void)o;
	if (getenv("LISTEN_FDS"))
		serve_fail(0, "warning: LISTEN_FDS is set but this uffd-serve was built without libsystemd: it creates its own socket");
	return -1;
}

void sd_state(const char *fmt, ...)
{
	(void)fmt;
}
#endif
