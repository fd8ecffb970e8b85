/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: the page-fault handler of a Firecracker microVM restored from
 * a memory snapshot (Firecracker's "Uffd" memory backend). Listens on a Unix
 * socket, takes the VM's userfaultfd and region table (serve-fc.c) and
 * serves the guest's pages from the snapshot (serve-run.c) until the VM
 * exits. With --multi, one child process per VM.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "serve.h"

#define MAX_CHILDREN 1024

/* Open descriptors of this process. */
static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = -1;	/* the directory's own */

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* A snapshot file, read-only: fd, and its size in *size; or an EXIT_* code negated. */
static int open_snapshot(const char *what, const char *path, uint64_t *size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	off_t end;

	if (fd < 0)
		return -serve_fail(EXIT_SETUP, "cannot open the %s %s: %s", what, path, strerror(errno));
	if (fstat(fd, &st) || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		close(fd);
		return -serve_fail(EXIT_SETUP, "the %s %s is not a regular file or block device", what, path);
	}
	end = lseek(fd, 0, SEEK_END);
	*size = end > 0 ? (uint64_t)end : 0;
	return fd;
}

/* The file source of one snapshot file (a Diff layer's holes fall through); NULL after printing why. */
static struct uffd_source *file_layer(const char *what, const char *path, bool diff, uint64_t *size)
{
	struct uffd_source_file_opts fo = { .size = sizeof(fo), .flags = diff ? UFFD_SOURCE_FILE_DIFF : 0,
					    .name = path };
	struct uffd_source *src = NULL;
	int fd = open_snapshot(what, path, size), err;

	if (fd < 0)
		return NULL;
	if (!*size)
		serve_fail(EXIT_SETUP, "the %s %s is empty", what, path);
	else if ((err = uffd_source_file(&src, fd, &fo)))
		serve_fail(EXIT_SETUP, "cannot read the %s %s: %s", what, path, uffd_last_error());
	close(fd);	/* the source has its own */
	return src;
}

/*
 * Where the guest's bytes come from, checked before any VM connects: the
 * memory file, or it and its Diff layers (each readable, each of its
 * size; their holes found once, here). NULL after printing one line.
 */
static struct uffd_source *open_source(const struct serve_opts *o, uint64_t *size)
{
	struct uffd_source *l[64] = { NULL }, *src = NULL;
	size_t n = 0;
	uint64_t sz;
	int err;

	if (!(l[n++] = file_layer("snapshot", o->memory, false, size)))
		return NULL;
	for (size_t i = 0; i < o->nlayers; i++, n++) {
		if (!(l[n] = file_layer("layer", o->layers[i], true, &sz)))
			goto out;
		if (sz != *size) {
			serve_fail(EXIT_SETUP, "the layer %s is %llu bytes, the snapshot %s %llu; a Diff snapshot's memory file has the size of the one it applies to",
				   o->layers[i], (unsigned long long)sz, o->memory, (unsigned long long)*size);
			n++;
			goto out;
		}
	}
	if (n == 1)
		return l[0];
	if ((err = uffd_source_layered(&src, l, (unsigned)n, NULL)))
		serve_fail(EXIT_SETUP, "cannot layer the snapshot files: %s", uffd_last_error());
out:
	for (size_t i = 0; i < n; i++)
		uffd_source_unref(l[i]);
	return src;
}

/* Signals arrive on a descriptor: SIGTERM and SIGINT end, SIGCHLD reaps (--multi). */
static int signals_fd(void)
{
	sigset_t set;
	int fd;

	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	/* Blocked before any thread exists, so that every thread leaves them to the fd. */
	if (sigprocmask(SIG_BLOCK, &set, NULL) || (fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK)) < 0)
		return -serve_fail(EXIT_SETUP, "signalfd: %s", strerror(errno));
	return fd;
}

/* One VM on connection conn, from its message to the summary. */
static int serve_conn(const struct serve_opts *o, int conn, struct uffd_source *src, uint64_t size, int sigfd)
{
	struct serve_summary s;
	struct fc_handshake h;
	int before = count_fds(), rc;

	rc = fc_receive(conn, sigfd, o->timeout_ms, size, &h);
	if (rc == SERVE_STOPPED)
		return EXIT_OK;		/* stopped before the VM said anything */
	if (rc)
		return rc;
	fprintf(stderr, PROG ": serving VM pid %d: %zu regions from %s%s\n", (int)h.pid, h.n, o->memory,
		o->nlayers ? " and its layers" : "");
	rc = serve_vm(o, &h, src, sigfd, conn, &s);
	fc_handshake_free(&h);
	s.fds_leaked = count_fds() - before;
	if (o->stats || o->json)
		stats_print(&s, o->json);
	return rc;
}

/* Child pid ended with status st: off the list, and said when it failed. */
static void reaped(pid_t *kids, size_t *n, pid_t pid, int st)
{
	for (size_t i = 0; i < *n; i++)
		if (kids[i] == pid)
			kids[i] = kids[--*n];
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		serve_fail(0, "the serve of one VM (process %d) ended with %s %d", (int)pid,
			   WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* Every child that ended; with wait, until none is left. */
static void reap(pid_t *kids, size_t *n, bool wait)
{
	pid_t pid;
	int st;

	while ((wait ? *n : 1) && (pid = waitpid(-1, &st, wait ? 0 : WNOHANG)) > 0)
		reaped(kids, n, pid, st);
}

/* true when the signal read from sigfd asks to stop. */
static bool stop_signal(int sigfd, pid_t *kids, size_t *n)
{
	struct signalfd_siginfo si;
	bool stop = false;

	while (read(sigfd, &si, sizeof(si)) == sizeof(si))
		stop |= si.ssi_signo != SIGCHLD;
	reap(kids, n, false);
	return stop;
}

/*
 * --multi: accept until a signal, a child per VM. The fork happens in this
 * single-threaded process before the child creates any thread.
 */
static int serve_multi(const struct serve_opts *o, int lsock, struct uffd_source *src, uint64_t size, int sigfd)
{
	static pid_t kids[MAX_CHILDREN];
	size_t n = 0;

	for (;;) {
		int conn = fc_accept(lsock, sigfd, 0);
		pid_t pid;

		if (conn == -SERVE_STOPPED && stop_signal(sigfd, kids, &n))
			break;
		if (conn < 0)
			continue;
		if (n == MAX_CHILDREN || (pid = fork()) < 0) {
			serve_fail(0, "cannot serve one more VM: %s", n == MAX_CHILDREN ? "too many" : strerror(errno));
			close(conn);
			continue;
		}
		if (!pid) {
			close(lsock);
			_exit(serve_conn(o, conn, src, size, sigfd));	/* the child's copy of the source */
		}
		kids[n++] = pid;
		close(conn);
	}
	for (size_t i = 0; i < n; i++)
		kill(kids[i], SIGTERM);
	reap(kids, &n, true);
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	struct uffd_source *src;
	struct serve_opts o;
	uint64_t size = 0;
	int sigfd = -1, lsock, conn, rc;

	serve_args(argc, argv, &o);
	if (!(src = open_source(&o, &size))) {
		rc = EXIT_SETUP;
		goto out;
	}
	if ((sigfd = signals_fd()) < 0) {
		rc = -sigfd;
		goto out;
	}
	if ((lsock = fc_listen(o.socket)) < 0) {
		rc = -lsock;
		goto out;
	}
	fprintf(stderr, PROG ": listening on %s\n", o.socket);
	if (o.multi) {
		rc = serve_multi(&o, lsock, src, size, sigfd);
		close(lsock);
		unlink(o.socket);
	} else {
		conn = fc_accept(lsock, sigfd, o.timeout_ms);
		close(lsock);
		unlink(o.socket);	/* one VM: nobody else may connect */
		rc = conn == -SERVE_STOPPED ? EXIT_OK : conn < 0 ? -conn : serve_conn(&o, conn, src, size, sigfd);
		if (conn >= 0)
			close(conn);
	}
out:
	if (sigfd >= 0)
		close(sigfd);
	uffd_source_unref(src);
	free(o.replay);
	free(o.layers);
	return rc;
}
