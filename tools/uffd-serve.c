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
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"

#define MAX_CHILDREN 1024

/* The open descriptors of this process, each by number and file. */
struct fd_list {
	size_t n;
	struct fd_id { int fd; dev_t dev; ino_t ino; } *e;
};

/* Lists the open descriptors into l (freed by the caller): false when /proc cannot say. */
static bool list_fds(struct fd_list *l)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	size_t cap = 0;

	l->n = 0;
	l->e = NULL;
	if (!d)
		return false;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		struct stat st;

		if (e->d_name[0] == '.' || fd == dirfd(d) || fstat(fd, &st))
			continue;
		if (l->n == cap) {
			struct fd_id *m = realloc(l->e, (cap = cap ? 2 * cap : 64) * sizeof(*m));

			if (!m)
				break;
			l->e = m;
		}
		l->e[l->n++] = (struct fd_id){ fd, st.st_dev, st.st_ino };
	}
	closedir(d);
	return true;
}

/* Field by field: the padding after fd holds whatever the stack held. */
static bool same_fd(const struct fd_id *a, const struct fd_id *b)
{
	return a->fd == b->fd && a->dev == b->dev && a->ino == b->ino;
}

/*
 * Descriptors open now that were not in before: a file the serve opened
 * and left open. A count difference would not do: the snapshot's sources
 * close their own descriptors (files, connections) when released.
 */
static int new_fds(const struct fd_list *before)
{
	struct fd_list now;
	int n = 0;

	if (!list_fds(&now))
		return -1;
	for (size_t i = 0; i < now.n; i++) {
		size_t j = 0;

		while (j < before->n && !same_fd(&before->e[j], &now.e[i]))
			j++;
		if (j == before->n) {
			char link[64], target[256] = "?";
			ssize_t len;

			snprintf(link, sizeof(link), "/proc/self/fd/%d", now.e[i].fd);
			if ((len = readlink(link, target, sizeof(target) - 1)) > 0)
				target[len] = 0;
			serve_log(LOG_WARNING, "descriptor %d was left open: %s", now.e[i].fd, target);
			n++;
		}
	}
	free(now.e);
	return n;
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

/*
 * One VM on connection conn, from its message to the summary. The sources
 * serve no other VM: released (*src NULL) before the summary's count of
 * descriptors left open, so that what they keep while they live (an HTTP
 * source's kept-alive connections) is not counted as leaked.
 */
static int serve_conn(const struct serve_opts *o, int conn, struct uffd_source **src, uint64_t size, int sigfd)
{
	struct serve_summary s;
	struct fc_handshake h;
	struct fd_list before;
	bool listed = list_fds(&before);
	int rc;

	/* An idle connection holds a process: the message comes soon after connecting, or never. */
	int msg_ms = o->timeout_ms && o->timeout_ms < o->handshake_ms ? o->timeout_ms : o->handshake_ms;

	rc = fc_receive(conn, sigfd, msg_ms, size, &h);
	if (h.vm_waits)
		serve_log_vm(h.pid);	/* from now on every line of this process names the VM */
	if (rc == SERVE_STOPPED)	/* stopped in the middle of the VM's message */
		rc = serve_fatal(o, &h, sigfd, h.vm_waits ? EXIT_DRAIN : EXIT_OK,
				 "a signal came in the middle of the VM's handshake", 0);
	else if (rc)
		rc = serve_fatal(o, &h, sigfd, rc, "the VM's handshake cannot be served", 0);
	if (rc || !h.vm_waits) {
		fc_handshake_free(&h);
		free(before.e);
		return rc;
	}
	serve_log(LOG_INFO, "serving VM pid %d: %zu regions from %s%s", (int)h.pid, h.n, o->memory,
		  o->nlayers ? " and its layers" : "");
	rc = o->supervise ? supervise_vm(o, &h, *src, sigfd, conn, &s) : serve_vm(o, &h, *src, sigfd, conn, &s);
	fc_handshake_free(&h);
	uffd_source_unref(*src);
	*src = NULL;
	serve_remote_release();
	s.fds_leaked = listed ? new_fds(&before) : -1;
	free(before.e);
	if (o->stats || o->json)
		stats_print(&s, o->json);
	return rc;
}

static uid_t *kid_uids;	/* --multi: the peer uid of each child, in step with kids */

/* The peer has --max-per-peer connections being served already: refused, logged. */
static bool over_limit(const struct serve_opts *o, const uid_t *uids, size_t n, const struct ucred *cr)
{
	size_t same = 0;

	for (size_t i = 0; i < n; i++)
		same += uids[i] == cr->uid;
	if (!o->max_per_peer || same < o->max_per_peer)
		return false;
	serve_fail(0, "refused a connection from pid %d (uid %u): that uid has %zu connections already (--max-per-peer)",
		   (int)cr->pid, (unsigned)cr->uid, same);
	return true;
}

/* Child pid ended with status st: off the list, and said when it failed. Returns its exit status (1 for a signal). */
static int reaped(pid_t *kids, size_t *n, pid_t pid, int st)
{
	for (size_t i = 0; i < *n; i++) {
		if (kids[i] != pid)
			continue;
		kids[i] = kids[--*n];
		if (kid_uids)
			kid_uids[i] = kid_uids[*n];
		break;
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		serve_fail(0, "the serve of one VM (process %d) ended with %s %d", (int)pid,
			   WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	return WIFEXITED(st) ? WEXITSTATUS(st) : EXIT_SERVE;
}

static struct metrics *kid_metrics;	/* --multi --metrics: slots of children that ended are freed */

/*
 * The listening socket: systemd's (socket activation), or one made at
 * --socket with its owner and mode. fd, or an EXIT_* code negated.
 */
static int open_listener(struct serve_opts *o)
{
	int lsock = sd_activated_socket(o), rc;

	if (lsock >= 0 || lsock < -1) {
		o->activated = lsock >= 0;
		return lsock;
	}
	if (!o->socket)
		return -serve_fail(EXIT_USAGE, "--socket is required unless systemd passes the socket (LISTEN_FDS)");
	if ((lsock = fc_listen(o->socket)) < 0)
		return lsock;
	if ((rc = auth_socket(o, o->socket))) {
		close(lsock);
		unlink(o->socket);
		return -rc;
	}
	return lsock;
}

static bool path_gone;	/* stop_connecting() removed the socket's path */

/*
 * No VM can connect from now on: the socket's path goes first, so that the
 * connections queued until then can all be taken (queued_conn) before the
 * listener is closed: a VM whose connection is queued has sent its
 * userfaultfd, and a close would drop it and leave that VM hung. systemd's
 * socket stays where it is, with what is queued in it, for the next start.
 */
static void stop_connecting(const struct serve_opts *o)
{
	if (!o->activated && !path_gone)
		unlink(o->socket);
	path_gone = true;
}

/* A connection queued on lsock, without waiting: its fd, or -1 (none; systemd's socket keeps its own). */
static int queued_conn(const struct serve_opts *o, int lsock)
{
	struct pollfd p = { .fd = lsock, .events = POLLIN };

	if (o->activated || poll(&p, 1, 0) != 1)
		return -1;
	return accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
}

static void drop_listener(const struct serve_opts *o, int lsock)
{
	stop_connecting(o);
	close(lsock);
}

/* Every child that ended, without waiting. */
static void reap(pid_t *kids, size_t *n)
{
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		reaped(kids, n, pid, st);
		metrics_forget(kid_metrics, pid);
	}
}

/*
 * Until a connection or a signal is there (0), answering scrapes meanwhile;
 * -EXIT_TIMEOUT after timeout_ms (0: none), with the line said.
 */
static int wait_conn(const struct serve_opts *o, int lsock, int sigfd, int timeout_ms)
{
	struct pollfd p[3] = { { .fd = lsock, .events = POLLIN }, { .fd = sigfd, .events = POLLIN },
			       { .fd = metrics_fd(o->metrics), .events = POLLIN } };
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		int left = -1, n;

		if (timeout_ms) {
			clock_gettime(CLOCK_MONOTONIC, &t);
			left = timeout_ms - (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
			if (left <= 0)
				return -serve_fail(EXIT_TIMEOUT, "no VM connected within %d ms (--timeout); start Firecracker's snapshot load with this socket",
						   timeout_ms);
		}
		n = poll(p, 3, left);
		if (n > 0 && (p[0].revents || p[1].revents))
			return 0;
		if (n > 0 && p[2].revents)
			metrics_scrape(o->metrics);
	}
}

/*
 * The drain of --multi: every child got SIGTERM and drains its VM (bounded
 * by --drain-timeout and the fatal path); wait for each, passing on a
 * further signal. 0 when every VM drained; EXIT_DRAIN when one did not in
 * time; EXIT_SERVE when one failed otherwise.
 */
static int drain_children(pid_t *kids, size_t *n, int sigfd)
{
	struct pollfd p = { .fd = sigfd, .events = POLLIN };
	struct signalfd_siginfo si;
	int rc = EXIT_OK;

	for (size_t i = 0; i < *n; i++)
		kill(kids[i], SIGTERM);
	while (*n) {
		pid_t pid;
		int st, code;

		while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
			if ((code = reaped(kids, n, pid, st)) && rc != EXIT_DRAIN)
				rc = code == EXIT_DRAIN ? EXIT_DRAIN : EXIT_SERVE;
		if (!*n || poll(&p, 1, -1) <= 0)
			continue;
		while (read(sigfd, &si, sizeof(si)) == sizeof(si))
			for (size_t i = 0; si.ssi_signo != SIGCHLD && i < *n; i++)
				kill(kids[i], (int)si.ssi_signo);
	}
	return rc;
}

/* true when the signal read from sigfd asks to stop. */
static bool stop_signal(int sigfd, pid_t *kids, size_t *n)
{
	struct signalfd_siginfo si;
	bool stop = false;

	while (read(sigfd, &si, sizeof(si)) == sizeof(si))
		stop |= si.ssi_signo != SIGCHLD;
	reap(kids, n);
	return stop;
}

static pid_t kids[MAX_CHILDREN];
static uid_t uids[MAX_CHILDREN];	/* of each child's peer; reaped() keeps them in step */

/* --multi: a child serves the VM on conn (taken) unless its peer is refused. */
static void take_vm(const struct serve_opts *o, int lsock, int conn, struct uffd_source *src, uint64_t size,
		    int sigfd, size_t *n)
{
	struct ucred cr;
	pid_t pid;

	if (!auth_peer(o, conn, &cr) || over_limit(o, uids, *n, &cr)) {
		close(conn);	/* refused before a byte of its message was read */
		return;
	}
	if (*n == MAX_CHILDREN || (pid = fork()) < 0) {
		serve_fail(0, "cannot serve one more VM: %s", *n == MAX_CHILDREN ? "too many" : strerror(errno));
		close(conn);
		return;
	}
	if (!pid) {
		close(lsock);
		metrics_child(o->metrics);
		_exit(serve_conn(o, conn, &src, size, sigfd));	/* the child's copy of the source */
	}
	uids[*n] = cr.uid;
	kids[(*n)++] = pid;
	close(conn);
	sd_state("STATUS=serving %zu VMs", *n);
}

/*
 * --multi: accept until a signal, a child per VM; then stop accepting and
 * drain every child (a VM is never abandoned). The fork happens in this
 * single-threaded process before the child creates any thread.
 */
static int serve_multi(const struct serve_opts *o, int lsock, struct uffd_source *src, uint64_t size, int sigfd)
{
	size_t n = 0;
	int conn;

	kid_uids = uids;
	kid_metrics = o->metrics;
	/* VMs of a service that crashed, passed back from systemd's fd store: supervised again. */
	n = supervise_stored(o, src, sigfd, lsock, kids, MAX_CHILDREN);
	for (size_t i = 0; i < n; i++)
		uids[i] = (uid_t)-1;	/* nobody's: counted against no peer */
	for (;;) {
		conn = wait_conn(o, lsock, sigfd, 0) ? -EXIT_SETUP : fc_accept(lsock, sigfd, 0);
		if (conn == -SERVE_STOPPED && stop_signal(sigfd, kids, &n))
			break;
		if (conn >= 0)
			take_vm(o, lsock, conn, src, size, sigfd, &n);
	}
	stop_connecting(o);
	while ((conn = queued_conn(o, lsock)) >= 0)	/* connected before: drained with the others */
		take_vm(o, lsock, conn, src, size, sigfd, &n);
	drop_listener(o, lsock);
	sd_state("STOPPING=1\nSTATUS=draining %zu VMs", n);
	if (n)
		serve_log(LOG_INFO, "draining %zu VMs (--drain-timeout %u ms each)", n, o->drain_ms);
	return drain_children(kids, &n, sigfd);
}

/* One VM: connections until an allowed peer's, within --timeout. The connection, or an EXIT_* code negated. */
static int accept_allowed(const struct serve_opts *o, int lsock, int sigfd)
{
	struct timespec t0, t;
	struct ucred cr;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		int left = o->timeout_ms, conn;

		if (o->timeout_ms) {
			clock_gettime(CLOCK_MONOTONIC, &t);
			left -= (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
			left = left > 0 ? left : 1;
		}
		conn = wait_conn(o, lsock, sigfd, left);
		conn = conn ? conn : fc_accept(lsock, sigfd, 0);
		if (conn < 0 || auth_peer(o, conn, &cr))
			return conn;
		close(conn);	/* refused: the serve goes on waiting for its VM */
	}
}

int main(int argc, char **argv)
{
	struct uffd_source *src = NULL;
	struct serve_opts o;
	uint64_t size = 0;
	int sigfd = -1, lsock, conn, rc;

	supervise_init(argc, argv);	/* what an upgrade re-executes */
	argv = config_argv(&argc, argv);
	serve_args(argc, argv, &o);
	if ((rc = check_outputs(&o)))
		goto out;
	if (!(src = open_source(&o, &size))) {
		rc = EXIT_SETUP;
		goto out;
	}
	check_traces(&o, src, size);
	if ((sigfd = signals_fd()) < 0) {
		rc = -sigfd;
		goto out;
	}
	if (supervise_resume(&o, src, sigfd, &rc))	/* re-executed by an upgrade: its VM, nothing else */
		goto out;
	if ((lsock = open_listener(&o)) < 0) {
		rc = -lsock;
		goto out;
	}
	if (o.metrics_addr && !(o.metrics = metrics_open(o.metrics_addr))) {
		drop_listener(&o, lsock);
		rc = EXIT_SETUP;
		goto out;
	}
	serve_log(LOG_INFO, "listening on %s%s", o.activated ? "the socket systemd passed" : o.socket,
		  o.activated ? " (socket activation)" : "");
	sd_state("READY=1\nSTATUS=listening, no VM yet");
	if (o.multi) {
		rc = serve_multi(&o, lsock, src, size, sigfd);
	} else {
		conn = accept_allowed(&o, lsock, sigfd);
		if (conn == -SERVE_STOPPED) {	/* a VM connected before the signal: it is served, and drained */
			struct ucred cr;

			stop_connecting(&o);
			while ((conn = queued_conn(&o, lsock)) >= 0 && !auth_peer(&o, conn, &cr))
				close(conn);
			conn = conn >= 0 ? conn : -SERVE_STOPPED;
		}
		drop_listener(&o, lsock);	/* one VM: nobody else may connect */
		sd_state("STATUS=serving one VM");
		rc = conn == -SERVE_STOPPED ? EXIT_OK : conn < 0 ? -conn : serve_conn(&o, conn, &src, size, sigfd);
		if (conn >= 0)
			close(conn);
	}
	metrics_close(o.metrics);
out:
	if (sigfd >= 0)
		close(sigfd);
	uffd_source_unref(src);
	serve_remote_release();
	free(o.replay);
	free(o.layers);
	free(o.headers);
	config_free();
	return rc;
}
