/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: Firecracker's side of the handshake. Firecracker connects to
 * our socket and sends one message: its userfaultfd as SCM_RIGHTS and a JSON
 * array of GuestRegionUffdMapping objects, which the library reads and
 * checks (uffd_fc_handshake_recv).
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

#include <uffd.h>

#include "serve.h"


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

/*
 * Waits until fd is readable: 0; -ETIMEDOUT at deadline_ms (0: none); -EINTR
 * when sigfd is and fd is not. A connection already queued is taken first:
 * its VM may have sent its userfaultfd, and a listener closed with it
 * unaccepted would leave that VM hung (a SIGTERM drains it instead).
 */
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
		if (n > 0 && p[0].revents)
			return 0;
		if (n > 0)
			return -EINTR;
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

/* ---- the message: the library's handshake ---- */

int fc_receive(int conn, int sigfd, int timeout_ms, uint64_t file_size, struct fc_handshake *h)
{
	struct uffd_fc_opts fo = { .size = sizeof(fo), .timeout_ms = timeout_ms ? timeout_ms : -1,
				   .cancel_fd = sigfd, .file_size = file_size };
	struct uffd_fc_handshake *lh = NULL;
	int err = uffd_fc_handshake_recv(conn, &fo, &lh);

	*h = (struct fc_handshake){ .uffd = -1, .pidfd = -1 };
	if (lh) {	/* a userfaultfd came: the VM waits for us, even when the rest is wrong */
		*h = (struct fc_handshake){ .uffd = lh->uffd, .features = lh->features, .pid = lh->pid,
					    .pidfd = lh->pidfd, .vm_waits = true, .r = lh->regions,
					    .n = lh->nregions };
		lh->uffd = lh->pidfd = -1;
		lh->regions = NULL;
		uffd_fc_handshake_free(lh);
	}
	if (err == -ECANCELED)
		return SERVE_STOPPED;
	if (h->vm_waits)
		serve_log_vm(h->pid);
	return !err ? 0 : serve_fail(err == -ETIMEDOUT ? EXIT_TIMEOUT : EXIT_HANDSHAKE, "handshake: %s", uffd_last_error());
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
