/* SPDX-License-Identifier: MIT */
/*
 * A real KVM guest restored from a snapshot: examples/kvm-vmm (a minimal
 * VMM on raw KVM ioctls, Firecracker's handshake, guest code and page
 * tables in the snapshot, vCPUs touching, checking and writing pages, a
 * balloon giving pages back) served by the real uffd-serve and by the
 * library's restore engine in this process, in every mode. The guest's
 * faults reach the handler through KVM's get_user_pages(), not the
 * user-mode fault path. The VMM checks every page at the end (snapshot
 * bytes, the written pattern, or zero where given back); each run has a
 * deadline, so a restore that hangs is counted and killed, never waited
 * for. Paths from the environment (KVM_VMM, UFFD_SERVE), set by meson;
 * skipped where KVM cannot run (kvm-vmm exits 77 and says why).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define SNAP_MIB 16
#define STACK_PAGES 128		/* kvm-vmm's vCPU stacks (0x80000-0xfffff): never read by its host check */
#define UFFD_INITIALIZED (1ull << 31)	/* the kernel's mark in fdinfo's feature field */
#define EXIT_SKIP 77

enum backend { SERVE, ENGINE };
static const char *const backend_name[] = { "uffd-serve", "the restore engine" };

enum mode { DEMAND, RECORD, REPLAY, FILL };

struct env {
	char dir[64], sock[96], snap[96], trace[96];
	const char *vmm, *serve;
};

/* What one restore is asked to do. */
struct plan {
	enum mode mode;
	bool huge;
	unsigned give_back, balloon_at, touch;
	unsigned long seed;
	const char *fill_rate;	/* --fill=RATE; NULL: as fast as demand allows */
	int kill_vm_ms;		/* > 0: SIGKILL the VM this long after it runs */
	unsigned kill_workers;	/* uffd-serve --supervise: SIGKILL its worker this many times, */
	int kill_worker_ms;	/* ... this long apart, from the VM's start */
	unsigned deadline_s;	/* the VM's own deadline: a fault never served ends it */
	bool touched_only;	/* kvm-vmm --check-touched: the host checks the guest's pages only */
	const char *replay_block;	/* uffd-serve --replay-block; NULL: the default */
};

/* How it went. */
struct outcome {
	int vmm_rc;		/* exit status; 128 + signal when killed */
	bool vmm_hung;		/* its deadline passed: a fault was never served */
	bool handler_hung;	/* the handler did not end after the VM */
	char vmm_out[1024], vmm_err[512], handler_err[512];
	/* the handler's summary */
	int handler_rc;
	char end[16];		/* vm-exit, detached */
	uint64_t missing, present, total, zero, demand, prefetched, filled, removes, errors,
		read_errors, recorded, fds_leaked;
	double teardown_s;	/* the engine: from the VM's exit to all freed */
};

/* ---- environment ---- */

static bool env_setup(struct env *e)
{
	*e = (struct env){ .vmm = getenv("KVM_VMM"), .serve = getenv("UFFD_SERVE") };
	if (!e->vmm)
		return false;
	harness_scratch_dir(e->dir, sizeof(e->dir), "uffd-kvm-test");
	snprintf(e->sock, sizeof(e->sock), "%s/sock", e->dir);
	snprintf(e->snap, sizeof(e->snap), "%s/snap", e->dir);
	snprintf(e->trace, sizeof(e->trace), "%s/trace", e->dir);
	return true;
}

static void env_cleanup(const struct env *e)
{
	harness_scratch_remove(e->dir);
}

static pid_t spawn(const struct env *e, const char *tag, char *const argv[])
{
	return harness_spawn(e->dir, tag, argv);
}

/* Waits up to seconds for pid: its exit status (128 + signal), or -1 after killing it. */
static int reap(pid_t pid, double seconds)
{
	int st;

	if (!harness_wait(pid, seconds, &st))
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void slurp(const struct env *e, const char *name, char *buf, size_t len)
{
	char path[128];
	FILE *f;
	size_t n = 0;

	snprintf(path, sizeof(path), "%s/%s", e->dir, name);
	if ((f = fopen(path, "re"))) {
		n = fread(buf, 1, len - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
}

/* The unsigned number after "key": (JSON) or key= in text; fails when absent. */
static uint64_t num(const char *text, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), key[0] == '"' ? "%s:" : "%s=", key);
	p = strstr(text, pat);
	ck_assert_msg(p, "no %s in: %s", pat, text);
	return strtoull(p + strlen(pat), NULL, 10);
}

/* Waits until "KVMVMM running" is in the VM's output. */
static void await_running(const struct env *e, double seconds)
{
	double end = harness_now() + seconds;
	char out[256];

	do {
		slurp(e, "vmm.out", out, sizeof(out));
		if (strstr(out, "KVMVMM running"))
			return;
		usleep(1000);
	} while (harness_now() < end);
	ck_abort_msg("kvm-vmm did not start its guest within %.0f s", seconds);
}

static void make_snapshot(const struct env *e, unsigned mib)
{
	char m[16];
	pid_t pid;

	snprintf(m, sizeof(m), "%u", mib);
	pid = spawn(e, "make", (char *[]){ (char *)e->vmm, "--make-snapshot", (char *)e->snap, "--mib", m, NULL });
	ck_assert_int_eq(reap(pid, 30), 0);
}

/* Starts kvm-vmm on the plan (with --kernel when socket is NULL). */
static pid_t start_vmm(const struct env *e, const struct plan *p, bool kernel)
{
	char gb[24], at[24], seed[24], dl[24], touch[24];
	char *argv[32] = { (char *)e->vmm, "--memory", (char *)e->snap };
	int n = 3;

	snprintf(gb, sizeof(gb), "%u", p->give_back);
	snprintf(at, sizeof(at), "%u", p->balloon_at);
	snprintf(seed, sizeof(seed), "%lu", p->seed);
	snprintf(dl, sizeof(dl), "%u", p->deadline_s);
	snprintf(touch, sizeof(touch), "%u", p->touch);
	if (kernel) {
		argv[n++] = "--kernel";
	} else {
		argv[n++] = "--socket";
		argv[n++] = (char *)e->sock;
		argv[n++] = "--give-back";
		argv[n++] = gb;
		argv[n++] = "--balloon-at";
		argv[n++] = at;
	}
	argv[n++] = "--seed";
	argv[n++] = seed;
	argv[n++] = "--deadline";
	argv[n++] = dl;
	argv[n++] = "--touch-pct";
	argv[n++] = touch;
	if (p->huge)
		argv[n++] = "--huge";
	/* Then every page again with nobody serving; a VM to be killed is still there when it is. */
	if (p->mode == FILL)
		argv[n++] = "--after-handler";
	if (p->touched_only)
		argv[n++] = "--check-touched";
	argv[n] = NULL;
	return spawn(e, "vmm", argv);
}

/* The VM's end: killed when the plan says so, else waited for past its own deadline. */
static void finish_vmm(const struct env *e, const struct plan *p, pid_t vmm, struct outcome *o)
{
	if (p->kill_vm_ms > 0) {
		await_running(e, 20);
		usleep((useconds_t)p->kill_vm_ms * 1000);
		kill(vmm, SIGKILL);
	}
	o->vmm_rc = reap(vmm, p->deadline_s + 5.0);
	slurp(e, "vmm.out", o->vmm_out, sizeof(o->vmm_out));
	slurp(e, "vmm.err", o->vmm_err, sizeof(o->vmm_err));
	o->vmm_hung = o->vmm_rc == 3 && strstr(o->vmm_err, "deadline reached");
}

/* ---- backend 1: uffd-serve, the real binary ---- */

/* The pid of the n-th worker (from 0) uffd-serve --supervise logged, waiting up to 5 s for the line. */
static pid_t worker_pid(const struct env *e, unsigned n)
{
	double end = harness_now() + 5;
	char err[16384];

	for (;;) {
		char *p = err;

		slurp(e, "serve.err", err, sizeof(err));
		for (unsigned i = 0; p && i <= n; i++)
			if ((p = strstr(p, "worker process ")))
				p += strlen("worker process ");
		if (p)
			return (pid_t)strtol(p, NULL, 10);
		ck_assert_msg(harness_now() < end, "uffd-serve did not start worker %u", n);
		usleep(2000);
	}
}

/* kill -9 of the worker, p->kill_workers times, each after the next worker took over. */
static void kill_workers(const struct env *e, const struct plan *p)
{
	if (!p->kill_workers)
		return;
	await_running(e, 20);
	for (unsigned k = 0; k < p->kill_workers; k++) {
		usleep((useconds_t)p->kill_worker_ms * 1000);
		ck_assert_int_eq(kill(worker_pid(e, k), SIGKILL), 0);
		worker_pid(e, k + 1);
	}
}

static void run_serve(const struct env *e, const struct plan *p, struct outcome *o)
{
	char fill[64];
	char *argv[16] = { (char *)e->serve, "--socket", (char *)e->sock, "--memory", (char *)e->snap,
			   "--json", "--timeout", "20000" };
	char json[2048];
	int n = 8;
	pid_t serve, vmm;
	const char *q;

	if (p->mode == RECORD || p->mode == REPLAY) {
		argv[n++] = p->mode == RECORD ? "--record" : "--replay";
		argv[n++] = (char *)e->trace;
	}
	if (p->mode == FILL) {
		snprintf(fill, sizeof(fill), "--fill%s%s", p->fill_rate ? "=" : "", p->fill_rate ? p->fill_rate : "");
		argv[n++] = fill;
	}
	if (p->kill_workers)
		argv[n++] = "--supervise";
	if (p->replay_block) {
		argv[n++] = "--replay-block";
		argv[n++] = (char *)p->replay_block;
	}
	argv[n] = NULL;
	serve = spawn(e, "serve", argv);
	vmm = start_vmm(e, p, false);
	kill_workers(e, p);
	finish_vmm(e, p, vmm, o);
	if (o->vmm_rc == EXIT_SKIP)
		kill(serve, SIGTERM);
	o->handler_rc = reap(serve, 10);
	o->handler_hung = o->handler_rc < 0;
	slurp(e, "serve.out", json, sizeof(json));
	slurp(e, "serve.err", o->handler_err, sizeof(o->handler_err));
	if (o->vmm_rc == EXIT_SKIP || o->handler_hung || !strstr(json, "\"end\""))
		return;
	q = strstr(json, "\"end\":\"");
	sscanf(q + 7, "%15[a-z-]", o->end);
	o->missing = num(json, "\"missing\"");
	o->present = num(json, "\"present\"");
	o->total = num(json, "\"total\"");
	o->zero = num(json, "\"zero\"");
	o->demand = num(json, "\"demand\"");
	o->prefetched = num(json, "\"replay\"");
	o->filled = num(json, "\"fill\"");
	o->removes = num(json, "\"removes\"");
	o->errors = num(json, "\"errors\"");
	o->read_errors = num(json, "\"read_errors\"");
	o->recorded = num(json, "\"pages_recorded\"");
	o->fds_leaked = num(json, "\"fds_leaked\"");
}

/* ---- backend 2: the restore engine, in a child of this process ---- */

/* What the engine's callbacks tell the waiting thread. */
struct engine {
	int done_fd;		/* eventfd: the VM exited or the restore completed */
	atomic_int end;		/* 1 vm-exit, 2 detached */
	atomic_uint errors;
};

static void on_owner_exit(void *ctx, struct uffd *u)
{
	struct engine *g = ctx;
	int none = 0;

	(void)u;
	atomic_compare_exchange_strong(&g->end, &none, 1);
	(void)!write(g->done_fd, &(uint64_t){ 1 }, sizeof(uint64_t));
}

static void on_complete(void *ctx, struct uffd_restore *rs)
{
	struct engine *g = ctx;
	int none = 0;

	(void)rs;
	atomic_compare_exchange_strong(&g->end, &none, 2);
	(void)!write(g->done_fd, &(uint64_t){ 1 }, sizeof(uint64_t));
}

static void on_error(void *ctx, const struct uffd_fault *f, int err, const char *sentence)
{
	struct engine *g = ctx;

	(void)f;
	if (err == -ESRCH)	/* the VM exited: its exit ends the restore */
		return;
	atomic_fetch_add(&g->errors, 1);
	fprintf(stderr, "engine: %s\n", sentence);
}

struct handshake {
	int conn, uffd, pidfd;
	uint64_t features, addr, size, offset, page_size;
};

/* Firecracker's message as kvm-vmm sends it: one region. 0, or -1 (the reason on stderr). */
static int receive(const struct env *e, struct handshake *h)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char json[512] = "", path[64], line[256];
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl = { 0 };
	struct iovec iov = { .iov_base = json, .iov_len = sizeof(json) - 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
	struct pollfd pf = { .events = POLLIN };
	struct ucred cr;
	socklen_t crl = sizeof(cr);
	unsigned long long api, feat = 0;
	FILE *f;

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", e->sock);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 1))
		return -1;
	pf.fd = ls;
	h->conn = poll(&pf, 1, 20000) == 1 ? accept4(ls, NULL, NULL, SOCK_CLOEXEC) : -1;
	close(ls);
	pf.fd = h->conn;
	if (h->conn < 0 || poll(&pf, 1, 10000) != 1 || recvmsg(h->conn, &mh, MSG_CMSG_CLOEXEC) <= 0 ||
	    !CMSG_FIRSTHDR(&mh) || CMSG_FIRSTHDR(&mh)->cmsg_type != SCM_RIGHTS)
		return -1;
	memcpy(&h->uffd, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(int));
	if (sscanf(json, "[{\"base_host_virt_addr\":%lu,\"size\":%lu,\"offset\":%lu,\"page_size\":%lu}]", &h->addr,
		   &h->size, &h->offset, &h->page_size) != 4)
		return -1;
	/* The features the VM's fd was initialised with, as uffd-serve reads them. */
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", h->uffd);
	if (!(f = fopen(path, "re")))
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "API:\t%llx:%llx:", &api, &feat) == 2)
			break;
	fclose(f);
	h->features = feat & ~UFFD_INITIALIZED;
	if (getsockopt(h->conn, SOL_SOCKET, SO_PEERCRED, &cr, &crl))
		return -1;
	h->pidfd = (int)syscall(SYS_pidfd_open, cr.pid, 0);
	return h->pidfd < 0 ? -1 : 0;
}

struct engine_run {
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_restore *rs;
	struct uffd_loop *l;
};

/* Handle, foreign region, restore and loop, as serve-run.c sets them up. 0 or -errno. */
static int engine_start(const struct env *e, const struct plan *p, struct handshake *h, struct engine *g,
			struct engine_run *x, int snap)
{
	uint64_t avail = 0;
	/* Complete means detached with the fill only: without it the VM may still fault on pages it gives back. */
	struct uffd_restore_opts ro = { .size = sizeof(ro), .on_complete = p->mode == FILL ? on_complete : NULL,
		.ctx = g, .flags = (p->mode == FILL ? UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH : 0) |
			 (p->mode == RECORD ? UFFD_RESTORE_RECORD : 0) };
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .owner_addr = h->addr, .length = h->size,
					.page_size = h->page_size, .modes = UFFDIO_REGISTER_MODE_MISSING, .fd = -1 };
	struct uffd_loop_opts lo = { .size = sizeof(lo), .on_error = on_error, .error_ctx = g };
	struct uffd_watch_opts wo = { .size = sizeof(wo), .owner_fd = h->pidfd, .owner_exit = on_owner_exit,
				      .flags = UFFD_WATCH_OWNER | UFFD_WATCH_STOP_LOOP };
	int err;

	if (p->fill_rate)
		ro.fill_rate = strtoull(p->fill_rate, NULL, 10) << 20;	/* "N" MiB/s here */
	uffd_probe(&avail);
	/* Firecracker asks for EVENT_REMOVE only yet registers hugetlb memory (as uffd-serve grants it). */
	if ((err = uffd_open_fd(&x->u, h->uffd, h->features | (avail & UFFD_FEATURE_MISSING_HUGETLBFS))))
		return err;
	h->uffd = -1;
	if ((err = uffd_restore_new(&x->rs, &ro)) || (err = uffd_region_create_foreign(x->u, &fo, &x->r)) ||
	    (err = uffd_restore_add_region(x->rs, x->r, snap, h->offset)))
		return err;
	if (p->mode == REPLAY && (err = uffd_restore_load_trace(x->rs, e->trace)))
		return err;
	if ((err = uffd_loop_new(&x->l, &lo)) || (err = uffd_loop_add_opts(x->l, x->u, NULL, g, &wo)) ||
	    (err = uffd_restore_start(x->rs, x->l)))
		return err;
	return uffd_loop_start(x->l, 1);
}

static void engine_stop(struct engine_run *x)
{
	if (x->l)
		uffd_loop_stop(x->l);
	uffd_restore_free(x->rs);
	uffd_loop_free(x->l);
	uffd_region_destroy(x->r);
	uffd_close(x->u);
}

/* The handler process: serves one VM, then writes its summary into *o. Exit status 0, or 1. */
static int engine_child(const struct env *e, const struct plan *p, struct outcome *o)
{
	int fds = harness_count_fds();
	struct engine g = { .done_fd = eventfd(0, EFD_CLOEXEC) };
	struct handshake h = { .conn = -1, .uffd = -1, .pidfd = -1 };
	struct engine_run x = { 0 };
	struct uffd_restore_stats st = { .size = sizeof(st) };
	struct uffd_loop_counters lc = { .size = sizeof(lc) };
	int snap = open(e->snap, O_RDONLY | O_CLOEXEC), err = -1;
	uint64_t one;
	double t;

	if (g.done_fd < 0 || snap < 0 || receive(e, &h))
		return 1;
	if ((err = engine_start(e, p, &h, &g, &x, snap))) {
		fprintf(stderr, "engine: setup: %s (%s)\n", strerror(-err), uffd_last_error());
		return 1;
	}
	(void)!read(g.done_fd, &one, sizeof(one));	/* the VM exited, or every page is present */
	t = harness_now();
	snprintf(o->end, sizeof(o->end), "%s", atomic_load(&g.end) == 2 ? "detached" : "vm-exit");
	if (p->mode == RECORD && (err = uffd_restore_save_trace(x.rs, e->trace)))
		fprintf(stderr, "engine: saving the trace: %s (%s)\n", strerror(-err), uffd_last_error());
	if (!uffd_restore_stats(x.rs, &st)) {
		o->missing = st.faults[UFFD_FAULT_MISSING];
		o->present = st.pages_present;
		o->total = st.pages_total;
		o->zero = st.pages_zero;
		o->demand = st.pages_demand;
		o->prefetched = st.pages_prefetched;
		o->filled = st.pages_filled;
		o->read_errors = st.read_errors;
		o->recorded = st.pages_recorded;
	}
	if (!uffd_loop_counters(x.l, &lc))
		o->removes = lc.events;
	engine_stop(&x);
	o->teardown_s = harness_now() - t;
	o->errors = atomic_load(&g.errors);
	close(h.conn);	/* a detached VM sees EOF: the handler is gone */
	close(h.pidfd);
	close(snap);
	close(g.done_fd);
	o->fds_leaked = (uint64_t)(harness_count_fds() - fds);
	return err ? 1 : 0;
}

static void run_engine(const struct env *e, const struct plan *p, struct outcome *o)
{
	struct outcome *shared = mmap(NULL, sizeof(*o), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	pid_t child, vmm;

	ck_assert_ptr_ne(shared, MAP_FAILED);
	memset(shared, 0, sizeof(*shared));
	fflush(NULL);
	child = fork();
	ck_assert_int_ge(child, 0);
	if (!child)
		_exit(engine_child(e, p, shared));
	vmm = start_vmm(e, p, false);
	finish_vmm(e, p, vmm, o);
	if (o->vmm_rc == EXIT_SKIP)
		kill(child, SIGKILL);
	o->handler_rc = reap(child, 10);
	o->handler_hung = o->handler_rc < 0;
	memcpy(o->end, shared->end, sizeof(o->end));
	o->missing = shared->missing;
	o->present = shared->present;
	o->total = shared->total;
	o->zero = shared->zero;
	o->demand = shared->demand;
	o->prefetched = shared->prefetched;
	o->filled = shared->filled;
	o->removes = shared->removes;
	o->errors = shared->errors;
	o->read_errors = shared->read_errors;
	o->recorded = shared->recorded;
	o->fds_leaked = shared->fds_leaked;
	o->teardown_s = shared->teardown_s;
	munmap(shared, sizeof(*shared));
}

/* ---- running and judging ---- */

#define SETUP(e)                                                                                  \
	do {                                                                                      \
		if (!env_setup(e))                                                                \
			SKIP_TEST("KVM_VMM is not set: kvm-vmm (examples, x86-64) is not built, or the test runs outside meson"); \
	} while (0)

#define NEED_SERVE(e, b)                                                                          \
	do {                                                                                      \
		if ((b) == SERVE && !(e)->serve) {                                                \
			env_cleanup(e);                                                           \
			SKIP_TEST("UFFD_SERVE is not set: uffd-serve (tools with json-c) is not built"); \
		}                                                                                 \
	} while (0)

/* One restore; true when it ran (false: KVM cannot run here, the reason recorded as a skip). */
static bool restore(const struct env *e, enum backend b, const struct plan *p, struct outcome *o)
{
	memset(o, 0, sizeof(*o));
	unlink(e->sock);
	if (b == SERVE)
		run_serve(e, p, o);
	else
		run_engine(e, p, o);
	if (o->vmm_rc == EXIT_SKIP) {
		harness_skip("%s", o->vmm_err);
		return false;
	}
	return true;
}

/* The VM ended well, every byte it and the host checked was right, the handler ended clean. */
static void assert_clean(const struct outcome *o, enum backend b, const char *end)
{
	ck_assert_msg(!o->vmm_hung, "%s: the VM hung (a fault never served): %s", backend_name[b], o->vmm_err);
	ck_assert_msg(o->vmm_rc == 0, "%s: kvm-vmm exit %d: %s %s (handler: %s)", backend_name[b], o->vmm_rc,
		      o->vmm_out, o->vmm_err, o->handler_err);
	ck_assert_msg(!o->handler_hung, "%s did not end after the VM", backend_name[b]);
	ck_assert_msg(o->handler_rc == 0, "%s: handler exit %d", backend_name[b], o->handler_rc);
	ck_assert_uint_eq(num(o->vmm_out, "bad_pages"), 0);
	ck_assert_uint_eq(num(o->vmm_out, "guest_bad_words"), 0);
	ck_assert_msg(!strcmp(o->end, end), "%s ended \"%s\", want \"%s\"", backend_name[b], o->end, end);
	ck_assert_uint_eq(o->errors, 0);
	ck_assert_uint_eq(o->read_errors, 0);
	ck_assert_uint_eq(o->fds_leaked, 0);
}

static const struct plan base_plan = { .mode = DEMAND, .touch = 30, .balloon_at = 33, .seed = 1, .deadline_s = 20 };

/* Demand faults only: the code, the page tables, then every page the vCPUs touch. */
START_TEST(test_demand)
{
	struct env e;
	struct outcome o;
	struct plan p = base_plan;

	SETUP(&e);
	NEED_SERVE(&e, _i);
	make_snapshot(&e, SNAP_MIB);
	if (restore(&e, _i, &p, &o)) {
		assert_clean(&o, _i, "vm-exit");
		ck_assert_uint_gt(num(o.vmm_out, "touched"), 0);
		ck_assert_uint_gt(num(o.vmm_out, "written"), 0);
		/* The guest's pages and then the host check's: every page but the stacks, on demand. */
		ck_assert_uint_ge(o.demand, o.total - STACK_PAGES);
		/* Fault-around: a fault brings its window, far fewer faults than pages. */
		ck_assert_uint_gt(o.missing, 0);
		ck_assert_uint_lt(o.missing, o.demand);
		ck_assert_uint_eq(o.present, o.demand);
	}
	env_cleanup(&e);
}
END_TEST

/* A recorded run's trace brings the working set in ahead of the second run's vCPUs. */
START_TEST(test_record_replay)
{
	struct env e;
	struct outcome rec, rep;
	struct plan p = base_plan;
	struct stat st;

	SETUP(&e);
	NEED_SERVE(&e, _i);
	make_snapshot(&e, SNAP_MIB);
	p.mode = RECORD;
	if (!restore(&e, _i, &p, &rec))
		goto out;
	assert_clean(&rec, _i, "vm-exit");
	ck_assert_int_eq(stat(e.trace, &st), 0);
	/* The guest's pages, then the host check's: all but the stacks, each once. */
	ck_assert_uint_ge(rec.recorded, rec.total - STACK_PAGES);
	ck_assert_uint_le(rec.recorded, rec.total);
	p.mode = REPLAY;
	ck_assert(restore(&e, _i, &p, &rep));
	assert_clean(&rep, _i, "vm-exit");
	ck_assert_uint_gt(rep.prefetched, rec.total / 2);
	ck_assert_msg(rep.missing * 2 < rec.missing, "replay faulted %llu times, the recorded run %llu",
		      (unsigned long long)rep.missing, (unsigned long long)rec.missing);
out:
	env_cleanup(&e);
}
END_TEST

/*
 * uffd-serve --replay-block 32K on a trace of the guest's pages only (30%
 * of them, scattered): each traced page brings its aligned 8 pages, so the
 * replay brings in more pages than the trace names (up to 94% of the
 * memory against 30%, less where the vCPUs fault first), every byte still
 * right; the default replay brings the traced pages only.
 */
START_TEST(test_replay_block)
{
	struct env e;
	struct outcome rec, rep, blk;
	struct plan p = base_plan;

	SETUP(&e);
	NEED_SERVE(&e, SERVE);
	make_snapshot(&e, SNAP_MIB);
	p.mode = RECORD;
	p.touched_only = true;
	if (!restore(&e, SERVE, &p, &rec))
		goto out;
	assert_clean(&rec, SERVE, "vm-exit");
	ck_assert_uint_lt(rec.recorded, rec.total / 2);
	p.mode = REPLAY;
	p.touched_only = false;
	ck_assert(restore(&e, SERVE, &p, &rep));
	assert_clean(&rep, SERVE, "vm-exit");
	ck_assert_uint_le(rep.prefetched, rec.recorded);
	p.replay_block = "32K";
	ck_assert(restore(&e, SERVE, &p, &blk));
	assert_clean(&blk, SERVE, "vm-exit");
	/* More than the trace names, not the 94% the blocks cover: faults the vCPUs take first are demand's. */
	ck_assert_msg(blk.prefetched > rec.recorded, "--replay-block 32K brought %llu pages, the trace names %llu",
		      (unsigned long long)blk.prefetched, (unsigned long long)rec.recorded);
out:
	env_cleanup(&e);
}
END_TEST

/* Fill: every page brought in, then detach; the VM checks every page after the handler left. */
START_TEST(test_fill)
{
	struct env e;
	struct outcome o;
	struct plan p = base_plan;

	SETUP(&e);
	NEED_SERVE(&e, _i);
	make_snapshot(&e, SNAP_MIB);
	p.mode = FILL;
	if (restore(&e, _i, &p, &o)) {
		assert_clean(&o, _i, "detached");
		ck_assert_uint_eq(o.present, o.total);
		ck_assert_uint_gt(o.filled, 0);
	}
	env_cleanup(&e);
}
END_TEST

/* Fill while the balloon gives 500 pages back from the first step on: no hang, zeros there. */
START_TEST(test_fill_give_back)
{
	struct env e;
	struct outcome o;
	struct plan p = base_plan;

	SETUP(&e);
	NEED_SERVE(&e, _i);
	make_snapshot(&e, SNAP_MIB);
	p.mode = FILL;
	p.give_back = 500;
	p.balloon_at = 0;
	p.deadline_s = 10;
	if (restore(&e, _i, &p, &o)) {
		assert_clean(&o, _i, "detached");
		ck_assert_uint_eq(num(o.vmm_out, "wrong_zero"), 0);
		ck_assert_uint_eq(o.present, o.total);
		ck_assert_uint_gt(o.removes, 0);
	}
	env_cleanup(&e);
}
END_TEST

/* Demand with the balloon a third through: given-back pages read zero, by the guest and the host. */
START_TEST(test_give_back)
{
	struct env e;
	struct outcome o;
	struct plan p = base_plan;

	SETUP(&e);
	NEED_SERVE(&e, _i);
	make_snapshot(&e, SNAP_MIB);
	p.give_back = 300;
	if (restore(&e, _i, &p, &o)) {
		assert_clean(&o, _i, "vm-exit");
		ck_assert_uint_eq(num(o.vmm_out, "wrong_zero"), 0);
		ck_assert_uint_eq(o.removes, 300);
		/* The host check touches every given-back page after the balloon: zero pages, all. */
		ck_assert_uint_ge(o.zero, 300);
	}
	env_cleanup(&e);
}
END_TEST

/* 2 MiB hugetlb guest memory: each huge page read and resolved whole. */
START_TEST(test_huge)
{
	const char *why = "";
	/* Two more than the guest's: a COPY whose source is not yet faulted in holds a second page a while. */
	size_t hps = harness_hugepages(SNAP_MIB / 2 + 2, &why);
	struct env e;
	struct outcome o;
	struct plan p = base_plan;

	if (!hps)
		SKIP_TEST("%s", why);
	if (hps != 2u << 20)
		SKIP_TEST("the default huge page size is %zu KiB, kvm-vmm uses 2 MiB", hps >> 10);
	SETUP(&e);
	NEED_SERVE(&e, _i);
	make_snapshot(&e, SNAP_MIB);
	p.huge = true;
	p.give_back = 1;
	if (restore(&e, _i, &p, &o)) {
		/* Other processes may take the huge pages reserved before kvm-vmm maps them. */
		if (o.vmm_rc == 3 && strstr(o.vmm_err, "hugetlb")) {
			env_cleanup(&e);
			SKIP_TEST("the huge pages reserved were taken by another process first");
		}
		assert_clean(&o, _i, "vm-exit");
		ck_assert_uint_eq(o.total, SNAP_MIB / 2);
		ck_assert_uint_eq(o.present, SNAP_MIB / 2);
		ck_assert_uint_ge(o.zero, 1);	/* the page given back, touched again by the host check */
		ck_assert_uint_eq(num(o.vmm_out, "wrong_zero"), 0);
	}
	env_cleanup(&e);
}
END_TEST

/* The VM killed in the middle of a slow fill: the handler notices, ends, leaks nothing. */
START_TEST(test_vm_killed)
{
	struct env e;
	struct outcome o;
	struct plan p = base_plan;

	SETUP(&e);
	NEED_SERVE(&e, _i);
	make_snapshot(&e, SNAP_MIB);
	p.mode = FILL;
	p.fill_rate = _i == SERVE ? "2M" : "2";	/* 8 s for the whole: the kill comes first */
	p.kill_vm_ms = 30;
	p.give_back = 100;
	p.balloon_at = 0;
	if (restore(&e, _i, &p, &o)) {
		ck_assert_int_eq(o.vmm_rc, 128 + SIGKILL);
		ck_assert_msg(!o.handler_hung, "%s did not end after the VM was killed", backend_name[_i]);
		ck_assert_int_eq(o.handler_rc, 0);
		ck_assert_str_eq(o.end, "vm-exit");
		ck_assert_uint_lt(o.present, o.total);
		ck_assert_uint_eq(o.fds_leaked, 0);
		ck_assert_uint_eq(o.errors, 0);
		if (_i == ENGINE)
			ck_assert_double_lt(o.teardown_s, 2.0);
	}
	env_cleanup(&e);
}
END_TEST

/* The VMM itself with the kernel's paging (MAP_PRIVATE of the snapshot): its checks hold. */
START_TEST(test_kernel)
{
	struct env e;
	struct plan p = base_plan;
	char out[1024], err[512];
	int rc;

	SETUP(&e);
	make_snapshot(&e, SNAP_MIB);
	rc = reap(start_vmm(&e, &p, true), 30);
	slurp(&e, "vmm.out", out, sizeof(out));
	slurp(&e, "vmm.err", err, sizeof(err));
	if (rc == EXIT_SKIP) {
		env_cleanup(&e);
		SKIP_TEST("%s", err);
	}
	ck_assert_msg(rc == 0, "kvm-vmm --kernel exit %d: %s %s", rc, out, err);
	ck_assert_uint_eq(num(out, "bad_pages"), 0);
	ck_assert_uint_gt(num(out, "written"), 0);
	env_cleanup(&e);
}
END_TEST

/*
 * 100 restores with a fill while the balloon gives pages back, half by
 * uffd-serve, half by the engine, each under a deadline: 0 hangs, 0 wrong
 * bytes. Stops after 5 bad runs (KVM_RESTORES_ALL=1: runs them all, to
 * count); KVM_RESTORES=N changes the number.
 */
START_TEST(test_hundred)
{
	const char *n_env = getenv("KVM_RESTORES");
	unsigned runs = n_env ? (unsigned)atoi(n_env) : 100, done = 0;
	unsigned hangs[2] = { 0 }, wrong[2] = { 0 }, other[2] = { 0 }, ran[2] = { 0 };
	bool all = getenv("KVM_RESTORES_ALL");
	struct env e;
	struct outcome o;
	struct plan p = base_plan;

	SETUP(&e);
	make_snapshot(&e, SNAP_MIB);
	p.mode = FILL;
	p.give_back = 500;
	p.balloon_at = 0;
	p.deadline_s = 4;
	for (; done < runs; done++) {
		enum backend b = e.serve && done % 2 ? SERVE : ENGINE;
		bool bad;

		p.seed = done + 1;
		if (!restore(&e, b, &p, &o)) {
			env_cleanup(&e);
			return;	/* no KVM here: skipped */
		}
		ran[b]++;
		hangs[b] += o.vmm_hung || o.handler_hung;
		wrong[b] += o.vmm_rc == 1;
		bad = o.vmm_hung || o.handler_hung || o.vmm_rc || o.handler_rc || strcmp(o.end, "detached") ||
		      o.errors || o.fds_leaked;
		other[b] += bad && !(o.vmm_hung || o.handler_hung) && o.vmm_rc != 1;
		if (bad)
			fprintf(stderr, "run %u (%s): vmm exit %d%s, handler exit %d%s, end \"%s\": %s%s", done + 1,
				backend_name[b], o.vmm_rc, o.vmm_hung ? " (hung)" : "", o.handler_rc,
				o.handler_hung ? " (hung)" : "", o.end, o.vmm_out, o.vmm_err);
		if (!all && hangs[0] + hangs[1] + wrong[0] + wrong[1] + other[0] + other[1] >= 5) {
			done++;
			break;
		}
	}
	fprintf(stderr, "%u restores: uffd-serve %u (hung %u, wrong bytes %u, other %u), engine %u (hung %u, wrong bytes %u, other %u)\n",
		done, ran[SERVE], hangs[SERVE], wrong[SERVE], other[SERVE], ran[ENGINE], hangs[ENGINE], wrong[ENGINE],
		other[ENGINE]);
	ck_assert_msg(!hangs[0] && !hangs[1] && !wrong[0] && !wrong[1] && !other[0] && !other[1],
		      "after %u restores: uffd-serve hung %u, wrong bytes %u, other failures %u; engine hung %u, wrong bytes %u, other %u",
		      done, hangs[SERVE], wrong[SERVE], other[SERVE], hangs[ENGINE], wrong[ENGINE], other[ENGINE]);
	ck_assert_uint_eq(done, runs);
	env_cleanup(&e);
}
END_TEST

/*
 * uffd-serve --supervise with the worker killed (kill -9) three times while
 * the guest runs, the balloon gives pages back and a slow fill goes on:
 * each new worker adopts the VM, and the guest and the host's check find
 * every byte right (zeros where given back), the VM detached at the end.
 */
START_TEST(test_worker_killed)
{
	struct env e;
	struct outcome o;
	struct plan p = base_plan;
	char err[16384];

	SETUP(&e);
	NEED_SERVE(&e, SERVE);
	make_snapshot(&e, SNAP_MIB);
	p.mode = FILL;
	p.fill_rate = "4M";	/* 4 s for the whole: the kills come first */
	p.give_back = 200;
	p.balloon_at = 0;
	p.kill_workers = 3;
	p.kill_worker_ms = 150;
	if (restore(&e, SERVE, &p, &o)) {
		assert_clean(&o, SERVE, "detached");
		ck_assert_uint_eq(num(o.vmm_out, "wrong_zero"), 0);
		ck_assert_uint_eq(o.present, o.total);
		slurp(&e, "serve.err", err, sizeof(err));
		ck_assert_msg(strstr(err, "died of signal 9"), "%s", err);
	}
	env_cleanup(&e);
}
END_TEST

static Suite *kvm_suite(void)
{
	Suite *s = suite_create("kvm");
	TCase *tc;

	tc = CASE(kernel, 30);
	tcase_add_test(tc, test_kernel);
	tc = CASE(demand, 60);
	tcase_add_loop_test(tc, test_demand, SERVE, ENGINE + 1);
	tc = CASE(record_replay, 60);
	tcase_add_loop_test(tc, test_record_replay, SERVE, ENGINE + 1);
	tc = CASE(replay_block, 60);
	tcase_add_test(tc, test_replay_block);
	tc = CASE(fill, 60);
	tcase_add_loop_test(tc, test_fill, SERVE, ENGINE + 1);
	tc = CASE(give_back, 60);
	tcase_add_loop_test(tc, test_give_back, SERVE, ENGINE + 1);
	tc = CASE(fill_give_back, 60);
	tcase_add_loop_test(tc, test_fill_give_back, SERVE, ENGINE + 1);
	tc = CASE(huge, 60);
	tcase_add_loop_test(tc, test_huge, SERVE, ENGINE + 1);
	tc = CASE(vm_killed, 60);
	tcase_add_loop_test(tc, test_vm_killed, SERVE, ENGINE + 1);
	tc = CASE(worker_killed, 60);
	tcase_add_test(tc, test_worker_killed);
	tc = CASE(hundred, 120);
	tcase_add_test(tc, test_hundred);
	return s;
}

int main(void)
{
	return harness_run(kvm_suite());
}
