/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve --supervise: surviving the crash and the upgrade of the
 * process that serves a VM.
 *
 * The process that took the VM's handshake becomes its supervisor: it keeps
 * the VM's userfaultfd, pidfd and connection, and a memfd (the state file)
 * holding the region table and one page-state byte per page, mapped shared.
 * It serves nothing itself: it forks a worker that serves the VM (serve_vm)
 * with the restore engine's page states in that memfd
 * (uffd_restore_region_state), so that every page the worker installs
 * (PRESENT, written after the install) and every page the VM gives back
 * (ZERO, written by the loop thread right after it read the REMOVE) is
 * known to the supervisor. A worker killed by a signal is replaced at once:
 * the new one adopts the states (INFLIGHT pages are read again; an install
 * the dead one did finish fails with EEXIST, taken as done) and wakes every
 * registered range, so that the faults the dead one had read and not
 * resolved are raised again. A worker that exits ends the serve with its
 * status (it applied --on-fatal itself when it had to).
 *
 * SIGUSR2 or SIGHUP: the supervisor re-executes the program from its path
 * (a new binary installed there), keeping the userfaultfd, pidfd,
 * connection and state file open across exec, named in UFFD_SERVE_ADOPT;
 * the old worker serves on meanwhile and is killed only once the new
 * program is set up, and a new worker adopts the VM.
 *
 * The supervisor is single-threaded and small; what is left when it dies
 * itself is said in uffd-serve(1).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"

#define ADOPT_ENV "UFFD_SERVE_ADOPT"
#define STATE_MAGIC "uffdsup1"
#define QUICK_DEATH_MS 1000	/* a worker that dies sooner after its start... */
#define CRASH_LOOP 5		/* ...this many times in a row: restarting does not help */

/* The state file: this head, the last worker's summary, the regions, then the page states. */
struct state_head {
	char magic[8];
	uint64_t features;
	int64_t pid;
	uint64_t nregions;
	uint64_t npages;
	uint64_t size;		/* of the whole file */
};

struct state {
	int fd;
	void *map;
	size_t size;
	struct serve_summary *sum;	/* written by the worker at its end */
};

static char **saved_argv;

void supervise_init(int argc, char **argv)
{
	(void)argc;
	saved_argv = argv;
}

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t regions_off(void)
{
	return sizeof(struct state_head) + sizeof(struct serve_summary);
}

static size_t pages_off(uint64_t nregions)
{
	return regions_off() + nregions * sizeof(struct uffd_fc_region);
}

/* Maps the state file fd of size bytes and points h at its regions and pages. */
static int state_map(struct state *st, struct fc_handshake *h)
{
	struct state_head *hd;

	st->map = mmap(NULL, st->size, PROT_READ | PROT_WRITE, MAP_SHARED, st->fd, 0);
	if (st->map == MAP_FAILED) {
		st->map = NULL;
		return serve_fail(EXIT_SERVE, "mapping the page-state file: %s", strerror(errno));
	}
	hd = st->map;
	st->sum = (struct serve_summary *)(hd + 1);
	h->pstate = (unsigned char *)st->map + pages_off(hd->nregions);
	return 0;
}

static void state_close(struct state *st)
{
	if (st->map)
		munmap(st->map, st->size);
	if (st->fd >= 0)
		close(st->fd);
	*st = (struct state){ .fd = -1 };
}

/* The state file of a VM just handed over: its regions, every page ABSENT. */
static int state_create(struct state *st, struct fc_handshake *h)
{
	struct state_head hd = { .magic = STATE_MAGIC, .features = h->features, .pid = h->pid,
				 .nregions = h->n };

	for (size_t i = 0; i < h->n; i++)
		hd.npages += h->r[i].length / h->r[i].page_size;
	hd.size = pages_off(h->n) + hd.npages;
	st->size = (size_t)hd.size;
	st->fd = memfd_create("uffd-serve-state", MFD_CLOEXEC);
	/* The head and the table first: the mapping finds the pages after them. */
	if (st->fd < 0 || ftruncate(st->fd, (off_t)st->size) ||
	    pwrite(st->fd, &hd, sizeof(hd), 0) != (ssize_t)sizeof(hd) ||
	    pwrite(st->fd, h->r, h->n * sizeof(*h->r), (off_t)regions_off()) != (ssize_t)(h->n * sizeof(*h->r)))
		return serve_fail(EXIT_SERVE, "creating the page-state file: %s", strerror(errno));
	return state_map(st, h);
}

/* A state file handed over by exec: checked, mapped, h filled from it. */
static int state_load(struct state *st, struct fc_handshake *h)
{
	struct state_head hd;
	struct stat sb;

	if (fstat(st->fd, &sb) || pread(st->fd, &hd, sizeof(hd), 0) != (ssize_t)sizeof(hd) ||
	    memcmp(hd.magic, STATE_MAGIC, sizeof(hd.magic)) || hd.nregions == 0 || hd.nregions > 4096 ||
	    hd.size != pages_off(hd.nregions) + hd.npages || (uint64_t)sb.st_size != hd.size)
		return serve_fail(EXIT_SETUP, "the page-state file handed over (%s) is not one this uffd-serve writes; was the old binary of another format?",
				  ADOPT_ENV);
	st->size = (size_t)hd.size;
	if (state_map(st, h))
		return EXIT_SETUP;
	if (!(h->r = calloc(hd.nregions, sizeof(*h->r))))
		return serve_fail(EXIT_SETUP, "out of memory");
	memcpy(h->r, (char *)st->map + regions_off(), hd.nregions * sizeof(*h->r));
	h->n = hd.nregions;
	h->features = hd.features;
	h->pid = (pid_t)hd.pid;
	h->vm_waits = true;
	return 0;
}

/* Pages the state file says are present, and given back. */
static void state_count(const struct state *st, uint64_t *present, uint64_t *zero)
{
	const struct state_head *hd = st->map;
	const unsigned char *p = (const unsigned char *)st->map + pages_off(hd->nregions);

	*present = *zero = 0;
	for (uint64_t i = 0; i < hd->npages; i++) {
		*present += p[i] == UFFD_PAGE_PRESENT || p[i] == UFFD_PAGE_HOLE;
		*zero += p[i] == UFFD_PAGE_ZERO;
	}
}

/* A worker: serves the VM and leaves its summary in the state file. -1 after a line. */
static pid_t start_worker(const struct serve_opts *o, struct fc_handshake *h, struct uffd_source *src,
			  int sigfd, int conn, struct state *st, bool adopt)
{
	pid_t pid = fork();

	if (pid < 0) {
		serve_fail(0, "cannot start a worker: %s", strerror(errno));
		return -1;
	}
	if (!pid) {
		int rc;

		h->adopted = adopt;
		rc = serve_vm(o, h, src, sigfd, conn, st->sum);
		_exit(rc);
	}
	serve_log(LOG_INFO, "worker process %d serves the VM%s (supervisor process %d)", (int)pid,
		  adopt ? ", taking over from the one before" : "", (int)getpid());
	return pid;
}

/* fd stays open across exec (on), or not. */
static void keep_on_exec(int fd, bool on)
{
	if (fd >= 0)
		fcntl(fd, F_SETFD, on ? 0 : FD_CLOEXEC);
}

/*
 * The upgrade: this program again, from its path, with the VM's fds named in
 * the environment. Returns only when the exec failed (the serve goes on).
 */
static void reexec(struct fc_handshake *h, int conn, struct state *st, pid_t worker)
{
	char val[128];

	snprintf(val, sizeof(val), "%d:%d:%d:%d:%d", h->uffd, h->pidfd, conn, st->fd, (int)worker);
	serve_log(LOG_INFO, "upgrade: re-executing %s; the worker (process %d) serves until the new one is ready",
		  saved_argv[0], (int)worker);
	keep_on_exec(h->uffd, true);
	keep_on_exec(h->pidfd, true);
	keep_on_exec(conn, true);
	keep_on_exec(st->fd, true);
	setenv(ADOPT_ENV, val, 1);
	if (strchr(saved_argv[0], '/'))
		execv(saved_argv[0], saved_argv);
	else
		execvp(saved_argv[0], saved_argv);
	serve_fail(0, "upgrade: cannot execute %s: %s; serving on with this binary", saved_argv[0], strerror(errno));
	unsetenv(ADOPT_ENV);
	keep_on_exec(h->uffd, false);
	keep_on_exec(h->pidfd, false);
	keep_on_exec(conn, false);
	keep_on_exec(st->fd, false);
}

/* A worker ended with st: its exit status (>= 0), or -1 when it was killed and must be replaced. */
static int worker_ended(const struct serve_opts *o, const struct state *s, pid_t pid, int st)
{
	uint64_t present, zero;

	metrics_forget(o->metrics, pid);	/* a killed worker never gave its slot back */
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	state_count(s, &present, &zero);
	serve_fail(0, "the worker (process %d) died of signal %d; starting another, which adopts the VM: %llu pages present, %llu given back",
		   (int)pid, WTERMSIG(st), (unsigned long long)present, (unsigned long long)zero);
	return -1;
}

/*
 * SIGUSR2 and SIGHUP come on sigfd too, from now on: only a supervisor
 * upgrades (before a VM connects they keep their default action). Its
 * workers inherit the mask; an exec keeps it, and the new program's sigfd
 * gets them here again.
 */
static void upgrade_signals(int sigfd)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &set, NULL) || signalfd(sigfd, &set, 0) < 0)
		serve_fail(0, "warning: the upgrade signals cannot be received (%s); SIGUSR2 and SIGHUP do not upgrade",
			   strerror(errno));
}

/*
 * The supervisor's loop: a worker always runs (the first adopts the VM when
 * adopt says so); SIGTERM and SIGINT go to it (it drains), SIGUSR2 and
 * SIGHUP upgrade. Returns the serve's EXIT_* code.
 */
static int supervise(const struct serve_opts *o, struct fc_handshake *h, struct uffd_source *src, int sigfd,
		     int conn, struct state *st, bool adopt)
{
	struct pollfd p = { .fd = sigfd, .events = POLLIN };
	pid_t worker = -1;
	unsigned quick = 0;
	int64_t started = mono_ms();
	int stop = 0;	/* SIGTERM or SIGINT passed on: a worker started later gets it too */

	upgrade_signals(sigfd);
	for (;;) {
		struct signalfd_siginfo si;
		int ws, rc;
		pid_t pid;

		if (worker < 0) {
			if ((worker = start_worker(o, h, src, sigfd, conn, st, adopt)) < 0)
				return serve_fatal(o, h, sigfd, EXIT_SERVE, "no worker can serve the VM", 0);
			started = mono_ms();
			adopt = true;	/* every later worker takes over from a dead one */
			if (stop)	/* the dead one was draining: so does this one */
				kill(worker, stop);
		}
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			return serve_fatal(o, h, sigfd, EXIT_SERVE, "the supervisor cannot wait", 0);
		while (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
			if (si.ssi_signo == SIGUSR2 || si.ssi_signo == SIGHUP)
				reexec(h, conn, st, worker);
			else if (si.ssi_signo != SIGCHLD)
				kill(worker, stop = (int)si.ssi_signo);	/* the worker drains */
		}
		if ((pid = waitpid(worker, &ws, WNOHANG)) != worker)
			continue;
		if ((rc = worker_ended(o, st, pid, ws)) >= 0)
			return rc;
		worker = -1;
		quick = mono_ms() - started < QUICK_DEATH_MS ? quick + 1 : 0;
		if (quick == CRASH_LOOP)
			return serve_fatal(o, h, sigfd, EXIT_SERVE, "its workers keep dying right after they start", 0);
	}
}

/* The key of a VM in systemd's fd store: its state file's inode, the same across upgrades and takeovers. */
static unsigned long long store_key(const struct state *st)
{
	struct stat sb;

	return fstat(st->fd, &sb) ? 0 : (unsigned long long)sb.st_ino;
}

int supervise_vm(const struct serve_opts *o, struct fc_handshake *h, struct uffd_source *src, int sigfd,
		 int conn, struct serve_summary *s)
{
	struct state st = { .fd = -1 };
	int rc = state_create(&st, h);

	*s = (struct serve_summary){ .end = END_ERROR };
	if (rc) {
		rc = serve_fatal(o, h, sigfd, rc, "the supervisor cannot keep the VM's page states", 0);
	} else {
		/* --multi under systemd: a restarted service takes the VM back from the fd store. */
		if (o->multi)
			sd_store_vm(store_key(&st), (const int[VMFD_N]){ h->uffd, h->pidfd, conn, st.fd });
		rc = supervise(o, h, src, sigfd, conn, &st, false);
		if (o->multi)
			sd_unstore_vm(store_key(&st));
	}
	if (st.sum)
		*s = *st.sum;
	h->pstate = NULL;
	state_close(&st);
	return rc;
}

/* Open descriptors of this process. */
static int open_fds(void)
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

/*
 * A VM handed over with its fds (fd[VMFD_*], taken: closed at the end): by
 * an upgrade (old_worker: the running worker, replaced once this program is
 * ready) or by systemd's fd store (old_worker 0: none left). Supervised to
 * its end; the summary printed as the first program would have. Its exit status.
 */
static int adopt(const struct serve_opts *o, struct uffd_source *src, int sigfd, int fd[VMFD_N], pid_t old_worker)
{
	struct fc_handshake h = { .uffd = fd[VMFD_UFFD], .pidfd = fd[VMFD_PIDFD], .vm_waits = true };
	struct state st = { .fd = fd[VMFD_STATE] };
	struct serve_summary sum = { .end = END_ERROR };
	int handed = 0, before = open_fds(), ws, rc;
	unsigned long long key = store_key(&st);

	for (int r = 0; r < VMFD_N; r++)
		handed += fd[r] >= 0;
	rc = st.fd >= 0 && h.uffd >= 0 ? state_load(&st, &h) :
	     serve_fail(EXIT_SETUP, "a VM handed over without its userfaultfd or state file");
	if (rc) {
		rc = serve_fatal(o, &h, sigfd, rc, "this supervisor cannot take the VM over", 0);
	} else {
		serve_log_vm(h.pid);
		serve_log(LOG_INFO, "taking over VM pid %d (%zu regions) %s", (int)h.pid, h.n,
			  old_worker ? "after an upgrade; replacing the old worker" : "from systemd's fd store");
		if (old_worker)
			kill(old_worker, SIGKILL);
		/* The old worker may have ended on its own meanwhile: then its status is the serve's. */
		if (old_worker && waitpid(old_worker, &ws, 0) == old_worker && WIFEXITED(ws))
			rc = WEXITSTATUS(ws);
		else
			rc = supervise(o, &h, src, sigfd, fd[VMFD_CONN], &st, true);
		if (o->multi)
			sd_unstore_vm(key);
	}
	if (st.sum)
		sum = *st.sum;
	h.pstate = NULL;
	state_close(&st);
	if (fd[VMFD_CONN] >= 0)
		close(fd[VMFD_CONN]);
	fc_handshake_free(&h);
	if (o->stats || o->json) {
		sum.fds_leaked = open_fds() - (before - handed);
		stats_print(&sum, o->json);
	}
	return rc;
}

/* "uffd:pidfd:conn:state:worker" from the environment; false when absent or unusable (said). */
static bool adopt_env(int fd[VMFD_N], pid_t *worker)
{
	const char *e = getenv(ADOPT_ENV);
	int w;

	if (!e)
		return false;
	if (sscanf(e, "%d:%d:%d:%d:%d", &fd[VMFD_UFFD], &fd[VMFD_PIDFD], &fd[VMFD_CONN], &fd[VMFD_STATE], &w) != 5 ||
	    fd[VMFD_UFFD] < 0 || fd[VMFD_STATE] < 0 || w <= 0) {
		serve_fail(0, "warning: %s=%s is not what a supervisor hands over; ignored", ADOPT_ENV, e);
		unsetenv(ADOPT_ENV);
		return false;
	}
	unsetenv(ADOPT_ENV);	/* the workers and any later exec do not see it */
	for (int r = 0; r < VMFD_N; r++)
		keep_on_exec(fd[r], false);
	*worker = w;
	return true;
}

bool supervise_resume(const struct serve_opts *o, struct uffd_source *src, int sigfd, int *rc)
{
	int fd[VMFD_N];
	pid_t worker;

	if (!adopt_env(fd, &worker))
		return false;
	*rc = adopt(o, src, sigfd, fd, worker);
	return true;
}

size_t supervise_stored(const struct serve_opts *o, struct uffd_source *src, int sigfd, int lsock,
			pid_t *kids, size_t room)
{
	int (*fds)[VMFD_N];
	size_t n = sd_stored_vms(&fds), started = 0;

	for (size_t i = 0; i < n; i++) {
		pid_t pid = started < room ? fork() : -1;

		if (!pid) {
			close(lsock);
			metrics_child(o->metrics);
			_exit(adopt(o, src, sigfd, fds[i], 0));
		}
		if (pid < 0)
			serve_fail(0, "cannot take back a VM from systemd's fd store: %s; it hangs until it is killed",
				   started < room ? strerror(errno) : "too many VMs");
		else
			kids[started++] = pid;
		for (int r = 0; r < VMFD_N; r++)	/* the child's now */
			if (fds[i][r] >= 0)
				close(fds[i][r]);
	}
	return started;
}
