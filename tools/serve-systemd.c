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
#include <stdbool.h>
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

#define STORE_PREFIX "uffdvm."
#define STORED_MAX 1024

static const char *const role_names[VMFD_N] = { "uffd", "pidfd", "conn", "state" };
static int stored[STORED_MAX][VMFD_N];
static unsigned long long stored_key[STORED_MAX];
static size_t nstored;

size_t sd_stored_vms(int (**fds)[VMFD_N])
{
	*fds = stored;
	return nstored;
}

/* A passed fd named "uffdvm.KEY.ROLE": filed with its VM; false when the name is not one of ours. */
static bool file_stored(int fd, const char *name)
{
	unsigned long long key;
	char role[16];
	size_t i;
	int r;

	if (strncmp(name, STORE_PREFIX, strlen(STORE_PREFIX)) ||
	    sscanf(name + strlen(STORE_PREFIX), "%llu.%15s", &key, role) != 2)
		return false;
	for (r = 0; r < VMFD_N && strcmp(role, role_names[r]); r++)
		;
	for (i = 0; i < nstored && stored_key[i] != key; i++)
		;
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	if (r == VMFD_N || (i == nstored && nstored == STORED_MAX)) {
		serve_fail(0, "warning: systemd passed back %s, which this uffd-serve does not know; closed", name);
		close(fd);
		return true;
	}
	if (i == nstored) {
		stored_key[nstored] = key;
		for (int k = 0; k < VMFD_N; k++)
			stored[nstored][k] = -1;
		nstored++;
	}
	if (stored[i][r] >= 0)
		close(stored[i][r]);
	stored[i][r] = fd;
	return true;
}

int sd_activated_socket(struct serve_opts *o)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names), sock = -1, nsock = 0;

	if (n < 0)
		return -serve_fail(EXIT_SETUP, "socket activation: %s", strerror(-n));
	/* The fd store's entries come back named; the socket is the one that is not ours. */
	for (int i = 0; i < n; i++) {
		if (names && names[i] && file_stored(SD_LISTEN_FDS_START + i, names[i]))
			continue;
		sock = SD_LISTEN_FDS_START + i;
		nsock++;
	}
	for (int i = 0; names && i < n; i++)
		free(names[i]);
	free(names);
	if (nsock == 0)
		return -1;
	if (nsock > 1)
		return -serve_fail(EXIT_SETUP, "socket activation passed %d sockets; one uffd-serve serves one socket (one uffd-serve@ instance per socket)",
				   nsock);
	if (sd_is_socket_unix(sock, SOCK_STREAM, 1, NULL, 0) <= 0)
		return -serve_fail(EXIT_SETUP, "socket activation: fd %d is not a listening Unix stream socket (ListenStream= a path in the .socket unit)",
				   sock);
	fcntl(sock, F_SETFD, FD_CLOEXEC);
	learn_owner(sock, o);
	return sock;
}

void sd_store_vm(unsigned long long key, const int fds[VMFD_N])
{
	char msg[96];

	for (int r = 0; r < VMFD_N; r++) {
		if (fds[r] < 0)
			continue;
		snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=" STORE_PREFIX "%llu.%s", key, role_names[r]);
		/* From a child of the main process: the unit says NotifyAccess=all. */
		sd_pid_notify_with_fds(0, 0, msg, &fds[r], 1);
	}
}

void sd_unstore_vm(unsigned long long key)
{
	char msg[96];

	for (int r = 0; r < VMFD_N; r++) {
		snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=" STORE_PREFIX "%llu.%s", key, role_names[r]);
		sd_pid_notify(0, 0, msg);
	}
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

void sd_store_vm(unsigned long long key, const int fds[VMFD_N])
{
	(void)key;
	(void)fds;
}

void sd_unstore_vm(unsigned long long key)
{
	(void)key;
}

size_t sd_stored_vms(int (**fds)[VMFD_N])
{
	*fds = NULL;
	return 0;
}
#endif
