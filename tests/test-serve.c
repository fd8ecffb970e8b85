/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve, the Firecracker page-fault handler, as a user runs it: the
 * binary and the fc-vmm stand-in for Firecracker are spawned (paths from
 * the environment: UFFD_SERVE and FC_VMM) under deadlines, and judged by
 * their exit status, fc-vmm's byte checks, and uffd-serve's --json summary
 * and error lines. Malformed handshakes come from a small sender here.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define MIB (1ull << 20)
#define SNAP_MIB 8		/* two regions of 4 MiB */

/* A run's scratch directory: socket, snapshot, traces, outputs. */
struct env {
	char dir[64];
	char sock[96], snap[96], trace[96];
	const char *serve, *vmm;
};

struct proc {
	pid_t pid;
	char out[128], err[128];	/* files holding its stdout and stderr */
	int status;			/* waitpid()'s */
};

static void path_in(const struct env *e, char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", e->dir, name);
}

/* A snapshot of mib MiB whose every 8-byte word differs. */
static void write_snapshot(const char *path, unsigned mib)
{
	uint64_t *buf = malloc(MIB);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_ge(fd, 0);
	for (uint64_t m = 0; m < mib; m++) {
		for (uint64_t w = 0; w < MIB / 8; w++)
			buf[w] = ((m * MIB / 8 + w) * 0x9e3779b97f4a7c15ull) | 1;
		ck_assert_int_eq(write(fd, buf, MIB), (ssize_t)MIB);
	}
	ck_assert_int_eq(close(fd), 0);
	free(buf);
}

/* Skips unless run through meson, where the binaries' paths are set. */
static bool env_setup(struct env *e, unsigned mib)
{
	*e = (struct env){ .serve = getenv("UFFD_SERVE"), .vmm = getenv("FC_VMM") };
	if (!e->serve || !e->vmm)
		return false;
	harness_scratch_dir(e->dir, sizeof(e->dir), "uffd-serve-test");
	path_in(e, e->sock, sizeof(e->sock), "sock");
	path_in(e, e->snap, sizeof(e->snap), "snap");
	path_in(e, e->trace, sizeof(e->trace), "trace");
	if (mib)
		write_snapshot(e->snap, mib);
	return true;
}

static void env_cleanup(struct env *e)
{
	harness_scratch_remove(e->dir);
}

#define SETUP(e, mib)                                                               \
	do {                                                                        \
		if (!env_setup(e, mib))                                             \
			SKIP_TEST("UFFD_SERVE or FC_VMM is not set: uffd-serve (tools with json-c) or fc-vmm (examples) is not built, or the test runs outside meson"); \
	} while (0)

/* Starts argv (NULL-terminated) with stdout and stderr into files named after tag. */
static void spawn(const struct env *e, struct proc *p, const char *tag, char *const argv[])
{
	snprintf(p->out, sizeof(p->out), "%s/%s.out", e->dir, tag);
	snprintf(p->err, sizeof(p->err), "%s/%s.err", e->dir, tag);
	p->pid = harness_spawn(e->dir, tag, argv);
}

/* Waits up to seconds for p; kills it and fails when it does not end. Returns its exit status. */
static int finish(struct proc *p, double seconds, const char *what)
{
	if (!harness_wait(p->pid, seconds, &p->status)) {
		char cmd[sizeof(p->err) + 32];

		/* What it said, for whoever reads the failure (the folder goes with the test). */
		snprintf(cmd, sizeof(cmd), "tail -n 40 '%s' >&2", p->err);
		if (system(cmd)) {
			/* nothing to show */
		}
		ck_abort_msg("%s did not end within %.0f s", what, seconds);
	}
	ck_assert_msg(WIFEXITED(p->status), "%s died of signal %d", what, WTERMSIG(p->status));
	return WEXITSTATUS(p->status);
}

/* Waits up to seconds for p to end, however it ends: its waitpid status; fails when it does not end. */
static int reap_within(struct proc *p, double seconds, const char *what)
{
	ck_assert_msg(harness_wait(p->pid, seconds, &p->status), "%s did not end within %.1f s", what, seconds);
	return p->status;
}

/* p is still running after seconds. */
static void still_running(struct proc *p, double seconds, const char *what)
{
	usleep((useconds_t)(seconds * 1e6));
	ck_assert_msg(waitpid(p->pid, &p->status, WNOHANG) == 0, "%s ended, status 0x%x", what, p->status);
}

/* The whole of a small file, NUL-terminated (freed by the caller). */
static char *slurp(const char *path)
{
	FILE *f = fopen(path, "re");
	char *buf = calloc(1, 65536);
	size_t n;

	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(buf);
	n = fread(buf, 1, 65535, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* The unsigned number after "key": (or key=) in text; fails when absent. */
static uint64_t num(const char *text, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), key[0] == '"' ? "%s:" : "%s=", key);
	p = strstr(text, pat);
	ck_assert_msg(p, "no %s in: %s", pat, text);
	return strtoull(p + strlen(pat), NULL, 10);
}

/* Waits until text appears in file (a process's output), up to seconds. */
static void await_text(const char *file, const char *text, double seconds)
{
	double end = harness_now() + seconds;

	for (;;) {
		char *s = slurp(file);
		bool found = strstr(s, text);

		free(s);
		if (found)
			return;
		ck_assert_msg(harness_now() < end, "\"%s\" did not appear in %s", text, file);
		usleep(5000);
	}
}

/* ---- running a restore ---- */

struct run {
	struct proc serve, vmm;
	char *json;	/* uffd-serve's stdout: the --json summary */
	char *vmm_out;
	int serve_rc, vmm_rc;
};

/* uffd-serve with extra (NULL-ended) options, then fc-vmm with its own; both waited for. */
static void restore(const struct env *e, struct run *r, const char *tag, const char *const *serve_opts,
		    const char *const *vmm_opts)
{
	char *sv[24] = { (char *)e->serve, "--socket", (char *)e->sock, "--memory", (char *)e->snap,
			 "--json", "--timeout", "10000" };
	char *vm[24] = { (char *)e->vmm, "--socket", (char *)e->sock, "--memory", (char *)e->snap,
			 "--deadline", "40" };
	char stag[32], vtag[32];
	int n = 8, m = 7;

	while (serve_opts && *serve_opts)
		sv[n++] = (char *)*serve_opts++;
	while (vmm_opts && *vmm_opts)
		vm[m++] = (char *)*vmm_opts++;
	snprintf(stag, sizeof(stag), "%s-serve", tag);
	snprintf(vtag, sizeof(vtag), "%s-vmm", tag);
	spawn(e, &r->serve, stag, sv);
	spawn(e, &r->vmm, vtag, vm);
	r->vmm_rc = finish(&r->vmm, 45, "fc-vmm");
	if (r->vmm_rc == 3)	/* it never connected: stop the serve waiting for it */
		kill(r->serve.pid, SIGTERM);
	r->serve_rc = finish(&r->serve, 15, "uffd-serve");
	r->json = slurp(r->serve.out);
	r->vmm_out = slurp(r->vmm.out);
}

static void run_free(struct run *r)
{
	free(r->json);
	free(r->vmm_out);
}

/* Both ended well, every byte the guest read was right, nothing leaked. */
static void assert_clean(const struct run *r, const char *end)
{
	char want[64];
	char *err = slurp(r->serve.err);

	ck_assert_msg(r->vmm_rc == 0, "fc-vmm exit %d: %s", r->vmm_rc, r->vmm_out);
	ck_assert_msg(r->serve_rc == 0, "uffd-serve exit %d: %s", r->serve_rc, err);
	ck_assert_uint_eq(num(r->vmm_out, "bad_pages"), 0);
	snprintf(want, sizeof(want), "\"end\":\"%s\"", end);
	ck_assert_msg(strstr(r->json, want), "want %s in %s", want, r->json);
	ck_assert_uint_eq(num(r->json, "\"fds_leaked\""), 0);
	ck_assert_uint_eq(num(r->json, "\"errors\""), 0);
	ck_assert_uint_eq(num(r->json, "\"read_errors\""), 0);
	free(err);
}

/* Every page the guest touched came through the serve: demand faults, all of them. */
static void assert_demand(const struct run *r)
{
	uint64_t touched = num(r->vmm_out, "touched"), faults = num(r->json, "\"missing\"");

	ck_assert_uint_gt(faults, 0);
	ck_assert_uint_le(faults, touched);
	ck_assert_uint_ge(num(r->json, "\"demand\""), faults / 2);
	ck_assert_uint_gt(num(r->json, "\"bytes_read\""), 0);
}

START_TEST(test_restore_4k)
{
	static const char *const vo[] = { "--threads", "2", "--touch-pct", "100", NULL };
	struct env e;
	struct run r;

	SETUP(&e, SNAP_MIB);
	restore(&e, &r, "4k", NULL, vo);
	assert_clean(&r, "vm-exit");
	assert_demand(&r);
	ck_assert_uint_eq(num(r.vmm_out, "touched"), SNAP_MIB * MIB / 4096);
	ck_assert_uint_eq(num(r.json, "\"total\""), SNAP_MIB * MIB / 4096);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

START_TEST(test_restore_2m)
{
	static const char *const vo[] = { "--huge", "--touch-pct", "100", NULL };
	const char *why = "";
	size_t hps = harness_hugepages(SNAP_MIB / 2, &why);
	struct env e;
	struct run r;
	char *vmm_err;

	if (!hps)
		SKIP_TEST("%s", why);
	if (hps != 2 * MIB)
		SKIP_TEST("the default huge page size is %zu KiB, fc-vmm uses 2 MiB", hps >> 10);
	SETUP(&e, SNAP_MIB);
	restore(&e, &r, "2m", NULL, vo);
	vmm_err = slurp(r.vmm.err);
	/* Other processes on the machine may take (or give back) huge pages meanwhile. */
	if (r.vmm_rc == 3 && strstr(vmm_err, "hugetlb")) {
		free(vmm_err);
		run_free(&r);
		env_cleanup(&e);
		SKIP_TEST("the huge pages reserved were taken by another process before fc-vmm mapped them");
	}
	free(vmm_err);
	assert_clean(&r, "vm-exit");
	ck_assert_uint_eq(num(r.json, "\"total\""), SNAP_MIB / 2);
	/* Each huge page read once, whole; both guest threads may fault on it meanwhile. */
	ck_assert_uint_eq(num(r.json, "\"present\""), SNAP_MIB / 2);
	ck_assert_uint_eq(num(r.json, "\"bytes_read\""), SNAP_MIB * MIB);
	ck_assert_uint_le(num(r.json, "\"missing\""), 2 * SNAP_MIB / 2);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

/* The JSON as Firecracker's versions write it: page_size, page_size_kib, and both. */
static const char *const json_forms[] = { NULL, "--old-json", "--both-json" };

START_TEST(test_json_forms)
{
	const char *vo[] = { "--touch-pct", "50", json_forms[_i], NULL };
	struct env e;
	struct run r;

	SETUP(&e, SNAP_MIB);
	restore(&e, &r, "form", NULL, vo);
	assert_clean(&r, "vm-exit");
	assert_demand(&r);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

START_TEST(test_record_replay)
{
	/* Paced: the guest's touches come slower than the replay brings pages in. */
	static const char *const vo[] = { "--touch-pct", "25", "--pace-us", "200", NULL };
	const char *rec[] = { "--record", NULL, NULL }, *rep[] = { "--replay", NULL, NULL };
	struct env e;
	struct run r1, r2;
	uint64_t f1, f2;
	struct stat st;

	SETUP(&e, SNAP_MIB);
	rec[1] = rep[1] = e.trace;
	restore(&e, &r1, "record", rec, vo);
	assert_clean(&r1, "vm-exit");
	ck_assert_int_eq(stat(e.trace, &st), 0);
	/* Every page the guest touched was missing first: the trace holds each once. */
	ck_assert_uint_eq(num(r1.json, "\"pages_recorded\""), num(r1.vmm_out, "touched"));
	restore(&e, &r2, "replay", rep, vo);
	assert_clean(&r2, "vm-exit");
	f1 = num(r1.json, "\"missing\"");
	f2 = num(r2.json, "\"missing\"");
	ck_assert_msg(f2 * 2 < f1, "replay faulted %llu times, the recorded run %llu",
		      (unsigned long long)f2, (unsigned long long)f1);
	ck_assert_uint_ge(num(r2.json, "\"replay\""), f1 / 2);
	run_free(&r1);
	run_free(&r2);
	env_cleanup(&e);
}
END_TEST

START_TEST(test_fill_detach)
{
	/* The guest touches a tenth, then waits for the serve to leave and checks every page. */
	static const char *const so[] = { "--fill", NULL };
	static const char *const vo[] = { "--touch-pct", "10", "--after-handler", NULL };
	struct env e;
	struct run r;
	char *err;

	SETUP(&e, SNAP_MIB);
	restore(&e, &r, "fill", so, vo);
	assert_clean(&r, "detached");
	ck_assert_uint_eq(num(r.vmm_out, "after_handler_bad"), 0);
	ck_assert_uint_eq(num(r.json, "\"present\""), num(r.json, "\"total\""));
	ck_assert_uint_gt(num(r.json, "\"fill\""), 0);
	err = slurp(r.serve.err);
	ck_assert_msg(strstr(err, "detached"), "no detach line in: %s", err);
	free(err);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

/*
 * A guest that writes: 40% of its quarter of the pages are written at
 * their first touch (write faults), while the fill runs; after the serve
 * left, every page holds the snapshot's bytes, and each written page its
 * written word too (the fill never maps a page over a write).
 */
START_TEST(test_fill_writes)
{
	static const char *const so[] = { "--fill", NULL };
	static const char *const vo[] = { "--touch-pct", "25", "--write-pct", "40", "--after-handler", NULL };
	uint64_t touched, written;
	struct env e;
	struct run r;

	SETUP(&e, SNAP_MIB);
	restore(&e, &r, "writes", so, vo);
	assert_clean(&r, "detached");
	touched = num(r.vmm_out, "touched");
	written = num(r.vmm_out, "written");
	ck_assert_uint_eq(num(r.vmm_out, "after_handler_bad"), 0);
	ck_assert_uint_gt(written, touched / 4);	/* 40% of the set, give or take the seeded draw */
	ck_assert_uint_lt(written, touched / 2);
	ck_assert_uint_eq(num(r.json, "\"present\""), num(r.json, "\"total\""));
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

START_TEST(test_balloon)
{
	static const char *const vo[] = { "--balloon", "--touch-pct", "60", NULL };
	struct env e;
	struct run r;

	SETUP(&e, SNAP_MIB);
	restore(&e, &r, "balloon", NULL, vo);
	assert_clean(&r, "vm-exit");
	ck_assert_uint_eq(num(r.vmm_out, "balloon_nonzero"), 0);
	ck_assert_uint_eq(num(r.vmm_out, "balloon_pages"), 256);
	ck_assert_uint_ge(num(r.json, "\"removes\""), 1);
	/* Every page of the range was touched after the balloon took it: zero pages. */
	ck_assert_uint_ge(num(r.json, "\"zero\""), 256);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

/*
 * A restore interrupted in its middle: the guest touches a page a
 * millisecond, and the VM is killed 100 ms after it resumed. Returns
 * the serve's --json summary, once the serve ended with 0.
 */
static char *http_get(int fd);
static int connect_unix(const char *path);
static long long series_kind(const char *body, const char *name, pid_t pid, const char *kind);

/* Scrapes the endpoint at msock until the serve has served a fault of vm, up to seconds. */
static void await_fault(const char *msock, pid_t vm, double seconds)
{
	double end = harness_now() + seconds;

	for (;;) {
		char *body = http_get(connect_unix(msock));
		bool served = series_kind(body, "uffd_serve_faults_total", vm, "missing") > 0;

		free(body);
		if (served)
			return;
		ck_assert_msg(harness_now() < end, "no fault of VM pid %d served within %.0f s", (int)vm, seconds);
		usleep(10000);
	}
}

static char *interrupted(struct env *e)
{
	struct proc sv, vm;
	char msock[128], addr[160];

	path_in(e, msock, sizeof(msock), "metrics.sock");
	snprintf(addr, sizeof(addr), "unix:%s", msock);
	spawn(e, &sv, "serve", (char *[]){ (char *)e->serve, "--socket", e->sock, "--memory", e->snap,
					   "--json", "--metrics", addr, NULL });
	spawn(e, &vm, "vmm", (char *[]){ (char *)e->vmm, "--socket", e->sock, "--memory", e->snap,
					 "--pace-us", "1000", "--deadline", "40", NULL });
	await_text(vm.out, "FCVMM resumed", 10);
	await_fault(msock, vm.pid, 10);	/* on a slow machine 100 ms may not see one */
	usleep(100000);
	kill(vm.pid, SIGKILL);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	waitpid(vm.pid, &vm.status, 0);
	return slurp(sv.out);
}

/* The VM killed in the middle of its restore: the serve notices, ends with 0, leaks nothing. */
START_TEST(test_vm_killed)
{
	struct env e;
	char *json;

	SETUP(&e, SNAP_MIB);
	json = interrupted(&e);
	ck_assert_msg(strstr(json, "\"end\":\"vm-exit\""), "%s", json);
	ck_assert_uint_eq(num(json, "\"fds_leaked\""), 0);
	ck_assert_uint_gt(num(json, "\"missing\""), 0);
	ck_assert_uint_lt(num(json, "\"present\""), num(json, "\"total\""));
	free(json);
	env_cleanup(&e);
}
END_TEST

static double killed_ms(const char *errfile);

/* Paced VMs (a page a millisecond) that check every byte after the handler left. */
static void start_paced_vms(const struct env *e, struct proc *vm, int n)
{
	for (int i = 0; i < n; i++)
		spawn(e, &vm[i], i ? "vmm1" : "vmm0", (char *[]){ (char *)e->vmm, "--socket", (char *)e->sock,
			"--memory", (char *)e->snap, "--pace-us", "1000", "--after-handler", "--deadline", "40", NULL });
}

/* Every byte each VM read, and every byte of its memory after the serve left, was right. */
static void assert_vms_whole(struct proc *vm, int n)
{
	for (int i = 0; i < n; i++) {
		char *out;

		ck_assert_int_eq(finish(&vm[i], 40, "fc-vmm"), 0);
		out = slurp(vm[i].out);
		ck_assert_uint_eq(num(out, "bad_pages"), 0);
		ck_assert_uint_eq(num(out, "after_handler_bad"), 0);
		free(out);
	}
}

/*
 * SIGTERM with VMs in the middle of their restore (a tenth of their pages
 * touched): each is drained, every page brought in and its regions
 * unregistered, and runs on without the serve; every byte checked. _i: 0
 * one VM, 1 --multi with two.
 */
START_TEST(test_drain)
{
	int nvm = _i ? 2 : 1;
	struct env e;
	struct proc sv, vm[2];
	char *json, *second;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--json", _i ? "--multi" : NULL, NULL });
	start_paced_vms(&e, vm, nvm);
	for (int i = 0; i < nvm; i++)
		await_text(vm[i].out, "FCVMM resumed", 10);
	usleep(200000);
	kill(sv.pid, SIGTERM);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	json = slurp(sv.out);
	ck_assert_msg(strstr(json, "\"end\":\"detached\""), "%s", json);
	ck_assert_uint_eq(num(json, "\"present\""), num(json, "\"total\""));
	ck_assert_uint_eq(num(json, "\"fds_leaked\""), 0);
	if (_i) {
		second = strchr(json, '\n') + 1;
		ck_assert_msg(strstr(second, "\"end\":\"detached\""), "%s", json);
		ck_assert_int_eq(access(e.sock, F_OK), -1);
	}
	await_text(sv.err, "draining VM pid", 1);
	assert_vms_whole(vm, nvm);
	free(json);
	env_cleanup(&e);
}
END_TEST

/*
 * --drain-timeout 0: the drain cannot finish, the fatal policy (kill) takes
 * the VM, and the exit status says so (6). _i: 0 one VM, 1 --multi.
 */
START_TEST(test_drain_timeout)
{
	struct env e;
	struct proc sv, vm;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--drain-timeout", "0", _i ? "--multi" : NULL, NULL });
	start_paced_vms(&e, &vm, 1);
	await_text(vm.out, "FCVMM resumed", 10);
	usleep(100000);
	kill(sv.pid, SIGTERM);
	reap_within(&vm, 5, "fc-vmm");
	ck_assert_msg(WIFSIGNALED(vm.status) && WTERMSIG(vm.status) == SIGKILL, "fc-vmm status 0x%x", vm.status);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 6);
	killed_ms(sv.err);
	await_text(sv.err, "within --drain-timeout 0 ms", 1);
	env_cleanup(&e);
}
END_TEST

/* --multi: two VMs at once, each served by its own process, until SIGTERM. */
START_TEST(test_multi)
{
	struct env e;
	struct proc sv, vm[2];
	char *json, *second;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--json", "--multi", NULL });
	for (int i = 0; i < 2; i++)
		spawn(&e, &vm[i], i ? "vmm1" : "vmm0", (char *[]){ (char *)e.vmm, "--socket", e.sock,
			"--memory", e.snap, "--balloon", "--deadline", "40", NULL });
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(finish(&vm[i], 40, "fc-vmm"), 0);
		json = slurp(vm[i].out);
		ck_assert_uint_eq(num(json, "bad_pages"), 0);
		free(json);
	}
	/* Both summaries are written once both VMs are gone; then stop the serve. */
	await_text(sv.out, "}\n{", 10);
	kill(sv.pid, SIGTERM);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	json = slurp(sv.out);
	second = strchr(json, '\n') + 1;
	ck_assert_msg(strstr(json, "\"end\":\"vm-exit\"") && strstr(second, "\"end\":\"vm-exit\""), "%s", json);
	ck_assert_uint_ne(num(json, "\"pid\""), num(second, "\"pid\""));
	ck_assert_uint_eq(num(second, "\"fds_leaked\""), 0);
	ck_assert_int_eq(access(e.sock, F_OK), -1);	/* the socket is gone with the serve */
	free(json);
	env_cleanup(&e);
}
END_TEST

/* ---- malformed handshakes, from a sender here ---- */

enum fdkind { FD_UFFD, FD_NONE, FD_EVENTFD, FD_TWO };

struct bad {
	const char *json;
	enum fdkind fd;
	int exit;
	const char *line;	/* in the one error line */
};

#define REG(addr, size, off, ps) \
	"{\"base_host_virt_addr\":" #addr ",\"size\":" #size ",\"offset\":" #off ",\"page_size\":" #ps "}"

static const struct bad bads[] = {
	{ "[" REG(1048576, 4096, 0, 4096) "]", FD_NONE, 5, "carries no file descriptor" },
	{ "[" REG(1048576, 4096, 0, 4096) "]", FD_EVENTFD, 5, "not an initialised userfaultfd but anon_inode:[eventfd]" },
	{ "[" REG(1048576, 4096, 0, 4096) "]", FD_TWO, 5, "sent 2 descriptors" },
	{ "[{\"base_host_virt_addr\":1048576,\"size\":4096,,}]", FD_UFFD, 5, "not valid JSON" },
	{ "{\"regions\":[]}", FD_UFFD, 5, "is a JSON object, not an array" },
	{ "[]", FD_UFFD, 5, "has 0 regions" },
	{ "[" REG(1048576, 8192, 0, 4096) "," REG(1052672, 4096, 8192, 4096) "]", FD_UFFD, 5, "regions overlap" },
	{ "[" REG(1048576, 4096, 8388608, 4096) "]", FD_UFFD, 5, "lies outside the snapshot file of 8388608 bytes" },
	{ "[" REG(1048576, 8388608, 4096, 4096) "]", FD_UFFD, 5, "lies outside the snapshot file" },
	{ "[" REG(1048576, 12288, 0, 3072) "]", FD_UFFD, 5, "page size 3072 is not a power of two" },
	{ "[" REG(1048576, 16384, 0, 16384) "]", FD_UFFD, 5, "neither the base page size" },
	{ "[" REG(1048577, 4096, 0, 4096) "]", FD_UFFD, 5, "must be non-zero multiples of the page size" },
	{ "[{\"base_host_virt_addr\":1048576,\"offset\":0,\"page_size\":4096}]", FD_UFFD, 5, "region 0 has no \"size\"" },
	{ "[{\"base_host_virt_addr\":1048576,\"size\":4096,\"offset\":0}]", FD_UFFD, 5, "neither \"page_size\" nor \"page_size_kib\"" },
	{ "[{\"base_host_virt_addr\":1048576,\"size\":-4096,\"offset\":0,\"page_size\":4096}]", FD_UFFD, 5, "\"size\" is -4096, not an unsigned integer" },
	{ "[{\"base_host_virt_addr\":\"0x100000\",\"size\":4096,\"offset\":0,\"page_size\":4096}]", FD_UFFD, 5, "not an unsigned integer" },
	{ "[{\"base_host_virt_addr\":1048576,\"size\":4096,\"offset\":0,\"page_size\":4096,\"page_size_kib\":4}]", FD_UFFD, 5, "differ" },
	{ "[" REG(1048576, 4096, 0, 4096) "] x", FD_UFFD, 5, "bytes after its JSON value" },
	{ NULL, FD_UFFD, 4, "the VM connected but sent no message within 300 ms" },
	{ "[" REG(1048576, 4096, 0, 4096), FD_UFFD, 4, "the VM's message was cut off" },
};

static int connect_retry(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	double end = harness_now() + 5;

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	for (;;) {
		int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

		ck_assert_int_ge(s, 0);
		if (!connect(s, (struct sockaddr *)&a, sizeof(a)))
			return s;
		close(s);
		ck_assert_msg(harness_now() < end, "uffd-serve does not listen on %s", path);
		usleep(5000);
	}
}

/* One sendmsg of json with descriptor fd, as Firecracker sends it. */
static void send_message_fd(int s, const char *json, int fd)
{
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl = { 0 };
	struct iovec iov = { .iov_base = (void *)json, .iov_len = strlen(json) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	(void)!sendmsg(s, &mh, MSG_NOSIGNAL);
}

/* One sendmsg of json with the descriptors of kind k, as Firecracker would. */
static void send_message(int s, const char *json, enum fdkind k)
{
	struct uffd *u = NULL;
	int fds[2] = { -1, -1 }, nfds = k == FD_NONE ? 0 : k == FD_TWO ? 2 : 1;
	union {
		char b[CMSG_SPACE(2 * sizeof(int))];
		struct cmsghdr align;
	} ctl = { 0 };
	struct iovec iov = { .iov_base = (void *)json, .iov_len = strlen(json) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (k == FD_UFFD || k == FD_TWO) {
		ASSERT_OK(uffd_open(&u, NULL));
		fds[0] = uffd_fd(u);
	}
	if (k == FD_EVENTFD || k == FD_TWO)
		fds[k == FD_TWO] = eventfd(0, EFD_CLOEXEC);
	if (nfds) {
		struct cmsghdr *c;

		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	ck_assert_int_eq(sendmsg(s, &mh, MSG_NOSIGNAL), (ssize_t)iov.iov_len);
	uffd_close(u);
	if (k == FD_EVENTFD || k == FD_TWO)
		close(fds[k == FD_TWO]);
}

/*
 * A stand-in VM that sends json with descriptors of kind k, then waits to
 * be served (as a VM waits on its first fault) until it is killed.
 */
static void sender_start(const struct env *e, struct proc *p, const char *json, enum fdkind k)
{
	int s;

	p->pid = fork();
	ck_assert_int_ge(p->pid, 0);
	if (p->pid)
		return;
	signal(SIGTERM, SIG_DFL);	/* the test's handler would end the whole process group */
	s = connect_retry(e->sock);
	if (json)
		send_message(s, json, k);
	for (;;)
		pause();
}

/* The sender was killed by the serve (SIGKILL) when killed, else it still waits and is stopped here. */
static void sender_end(struct proc *p, bool killed)
{
	if (!killed) {
		still_running(p, 0.05, "the sender");
		kill(p->pid, SIGTERM);
	}
	reap_within(p, 5, "the sender");
	ck_assert_msg(WIFSIGNALED(p->status) && WTERMSIG(p->status) == (killed ? SIGKILL : SIGTERM),
		      "the sender ended with status 0x%x; want %s", p->status, killed ? "SIGKILL" : "SIGTERM");
}

/* The serve's stderr holds exactly one error line, with want in it. */
static void assert_one_error(const char *file, const char *want)
{
	char *err = slurp(file), *line = err, *nl;
	int errors = 0;

	for (; *line; line = nl + 1) {
		if (!(nl = strchr(line, '\n')))
			break;
		*nl = '\0';
		if (strstr(line, "listening on") || strstr(line, "uffd-serve: fatal: "))
			continue;	/* progress, and the decision about the VM (asserted apart) */
		errors++;
		ck_assert_msg(strstr(line, want), "error line \"%s\" lacks \"%s\"", line, want);
	}
	ck_assert_int_eq(errors, 1);
	free(err);
}

START_TEST(test_bad_handshake)
{
	const struct bad *b = &bads[_i];
	struct env e;
	struct proc sv;

	struct proc vm;
	/* A message that came with a userfaultfd leaves a VM waiting: the default policy kills it. */
	bool killed = b->json && (b->fd == FD_UFFD || b->fd == FD_TWO);

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--timeout", "300", NULL });
	sender_start(&e, &vm, b->json, b->fd);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), b->exit);
	sender_end(&vm, killed);
	assert_one_error(sv.err, b->line);
	if (killed)
		killed_ms(sv.err);
	env_cleanup(&e);
}
END_TEST

/* A table whose page size is not the one of the VM's memory, or that names memory it does not map. */
START_TEST(test_wrong_mapping)
{
	static const char *const want[] = { "maps 0x", "is not all mapped in the VM" };
	char json[256], *map;
	uintptr_t a;
	struct env e;
	struct proc sv, vm;

	if (access("/sys/kernel/mm/hugepages/hugepages-2048kB", F_OK))
		SKIP_TEST("no 2 MiB huge pages on this machine");
	SETUP(&e, SNAP_MIB);
	/* 8 MiB reserved, the last 2 given back: nothing else is mapped right after the 6 MiB. */
	map = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(map, MAP_FAILED);
	ck_assert_int_eq(munmap(map + 6 * MIB, 2 * MIB), 0);
	a = ((uintptr_t)map + 2 * MIB - 1) & ~(uintptr_t)(2 * MIB - 1);
	/* Base pages declared as huge ones; then 2 MiB past the end of the mapping. */
	snprintf(json, sizeof(json), "[" "{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":0,\"page_size\":%llu}]",
		 (unsigned long long)(_i ? (uintptr_t)map + 4 * MIB : a), (unsigned long long)(_i ? 4 * MIB : 2 * MIB),
		 (unsigned long long)(_i ? 4096 : 2 * MIB));
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--timeout", "300", NULL });
	sender_start(&e, &vm, json, FD_UFFD);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 5);
	sender_end(&vm, true);
	assert_one_error(sv.err, want[_i]);
	killed_ms(sv.err);
	munmap(map, 6 * MIB);
	env_cleanup(&e);
}
END_TEST

START_TEST(test_connect_timeout)
{
	struct env e;
	struct proc sv;
	double t0;

	SETUP(&e, SNAP_MIB);
	t0 = harness_now();
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--timeout", "300", NULL });
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 4);
	ck_assert_double_ge(harness_now() - t0, 0.3);
	assert_one_error(sv.err, "no VM connected within 300 ms");
	env_cleanup(&e);
}
END_TEST

/* A stale socket is replaced; any other file at the path is left alone. */
START_TEST(test_socket_path)
{
	struct sockaddr_un a;
	struct env e;
	struct proc sv;
	char *err;
	int fd;

	SETUP(&e, SNAP_MIB);
	fd = open(e.sock, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	close(fd);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap, NULL });
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 3);
	err = slurp(sv.err);
	ck_assert_msg(strstr(err, "exists and is not a socket"), "%s", err);
	free(err);
	ck_assert_int_eq(access(e.sock, F_OK), 0);
	ck_assert_int_eq(unlink(e.sock), 0);
	/* A socket left behind by an earlier run: replaced, then the timeout. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	a = (struct sockaddr_un){ .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", e.sock);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	close(fd);
	spawn(&e, &sv, "serve2", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					     "--timeout", "100", NULL });
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 4);
	env_cleanup(&e);
}
END_TEST

/* ---- fatal paths: each ends with the policy applied, within a bound ---- */

#define KILL_BOUND_MS 1000.0	/* failure to VM gone, as the serve measures it */

/* The serve's own figure: "killed X ms after the failure"; fails when absent or above the bound. */
static double killed_ms(const char *errfile)
{
	char *err = slurp(errfile), *p = strstr(err, " killed ");
	double ms;

	ck_assert_msg(p, "no kill line in: %s", err);
	ms = strtod(p + strlen(" killed "), NULL);
	ck_assert_msg(ms >= 0 && ms < KILL_BOUND_MS, "the VM was killed %.1f ms after the failure", ms);
	fprintf(stderr, "# %s: VM killed %.2f ms after the failure\n", errfile, ms);
	free(err);
	return ms;
}

static const char *const policies[] = { "kill", "exit", "wait" };

/* The log line holding text has a UTC timestamp, the level, and the VM's id when vm is not 0. */
static void assert_log_line(const char *file, const char *text, const char *level, pid_t vm)
{
	char *err = slurp(file), *p = strstr(err, text), *line, want[64];
	unsigned y, mo, d, h, mi, s, ms;

	ck_assert_msg(p, "no \"%s\" in %s", text, err);
	for (line = p; line > err && line[-1] != '\n'; line--)
		;
	ck_assert_msg(sscanf(line, "%4u-%2u-%2uT%2u:%2u:%2u.%3uZ ", &y, &mo, &d, &h, &mi, &s, &ms) == 7,
		      "no timestamp: %.200s", line);
	snprintf(want, sizeof(want), vm ? "Z %s vm=%d uffd-serve: " : "Z %s uffd-serve: ", level, (int)vm);
	ck_assert_msg(!strncmp(line + 23, want, strlen(want)), "want \"%s\" in: %.200s", want, line);
	free(err);
}

/*
 * The snapshot is smaller than the VM's memory: the handshake finds the
 * mismatch, then each policy: kill (the VM dies of SIGKILL, the serve says
 * how fast), exit (the serve leaves at once, the VM hangs as documented),
 * wait (the serve stays until the VM is gone).
 */
START_TEST(test_fatal_mismatch)
{
	char small[128], opt[32];
	struct env e;
	struct proc sv, vm;
	double t0;

	SETUP(&e, SNAP_MIB);
	path_in(&e, small, sizeof(small), "small");
	write_snapshot(small, SNAP_MIB / 2);
	snprintf(opt, sizeof(opt), "--on-fatal=%s", policies[_i]);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", small, opt, NULL });
	t0 = harness_now();
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap,
					  "--deadline", "40", NULL });
	if (_i == 0) {
		reap_within(&vm, 10, "fc-vmm");
		ck_assert_msg(WIFSIGNALED(vm.status) && WTERMSIG(vm.status) == SIGKILL, "fc-vmm status 0x%x", vm.status);
		ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), 5);
		killed_ms(sv.err);
		fprintf(stderr, "# fatal_mismatch: fc-vmm started to reaped: %.1f ms\n", (harness_now() - t0) * 1e3);
		assert_log_line(sv.err, "fatal: VM pid", "error", vm.pid);
	} else if (_i == 1) {
		ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 5);
		still_running(&vm, 0.2, "fc-vmm");	/* hung on its fault: left to its owner */
		kill(vm.pid, SIGKILL);
		waitpid(vm.pid, &vm.status, 0);
		await_text(sv.err, "leaving VM pid", 1);
	} else {
		await_text(sv.err, "waiting for VM pid", 10);
		still_running(&sv, 0.2, "uffd-serve");
		kill(vm.pid, SIGKILL);
		waitpid(vm.pid, &vm.status, 0);
		ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), 5);
		await_text(sv.err, "exited", 1);
	}
	await_text(sv.err, "lies outside the snapshot file", 1);
	env_cleanup(&e);
}
END_TEST

/* The snapshot becomes unreadable in the middle of the restore (truncated): the VM is killed. */
START_TEST(test_fatal_read_error)
{
	char copy[128], cmd[320];
	struct env e;
	struct proc sv, vm;
	double t0;

	SETUP(&e, SNAP_MIB);
	path_in(&e, copy, sizeof(copy), "copy");	/* fc-vmm checks against e.snap, which stays */
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", e.snap, copy);
	ck_assert_int_eq(system(cmd), 0);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", copy, "--json", NULL });
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap,
					  "--pace-us", "1000", "--deadline", "40", NULL });
	await_text(vm.out, "FCVMM resumed", 10);
	usleep(100000);
	t0 = harness_now();
	ck_assert_int_eq(truncate(copy, 0), 0);
	reap_within(&vm, 5, "fc-vmm");
	ck_assert_msg(WIFSIGNALED(vm.status) && WTERMSIG(vm.status) == SIGKILL, "fc-vmm status 0x%x", vm.status);
	fprintf(stderr, "# fatal_read_error: truncation to fc-vmm reaped: %.1f ms\n", (harness_now() - t0) * 1e3);
	ck_assert_double_lt(harness_now() - t0, 2.0);
	ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), 1);
	killed_ms(sv.err);
	await_text(sv.out, "\"end\":\"error\"", 1);
	env_cleanup(&e);
}
END_TEST

/* --memory that cannot be served: refused at start, before the socket exists. */
static const char *const bad_memory[][2] = {
	{ "missing", "cannot open the snapshot" },
	{ "empty", "is empty" },
	{ "dir", "not a regular file or block device" },
};

START_TEST(test_bad_memory)
{
	char path[128];
	struct env e;
	struct proc sv;
	double t0;

	SETUP(&e, 0);
	path_in(&e, path, sizeof(path), bad_memory[_i][0]);
	if (_i == 1)
		close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
	if (_i == 2)
		ck_assert_int_eq(mkdir(path, 0755), 0);
	t0 = harness_now();
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", path, NULL });
	ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), 3);
	ck_assert_double_lt(harness_now() - t0, 2.0);
	ck_assert_int_eq(access(e.sock, F_OK), -1);	/* no VM could ever connect */
	assert_one_error(sv.err, bad_memory[_i][1]);
	env_cleanup(&e);
}
END_TEST

/*
 * A trace that cannot be used: missing, truncated, recorded for more
 * memory than the snapshot (all three found at start, before the socket
 * listens), or for other regions than the VM's (found at the handshake).
 * Each is a warning; the VM is restored by demand paging, every byte right.
 */
START_TEST(test_bad_trace)
{
	static const char *const vo[] = { "--touch-pct", "25", NULL };
	static const char *const vo4[] = { "--touch-pct", "25", "--regions", "4", NULL };
	const char *rec[] = { "--record", NULL, NULL }, *rep[] = { "--replay", NULL, NULL };
	char bad[128], cmd[320], *err, *warn, *listen;
	struct env e;
	struct run r;
	struct stat st;

	SETUP(&e, SNAP_MIB);
	rec[1] = e.trace;
	restore(&e, &r, "record", rec, vo);
	assert_clean(&r, "vm-exit");
	run_free(&r);
	path_in(&e, bad, sizeof(bad), "bad.trace");
	rep[1] = bad;
	ck_assert_int_eq(stat(e.trace, &st), 0);
	if (_i == 1) {
		snprintf(cmd, sizeof(cmd), "head -c %lld '%s' > '%s'", (long long)st.st_size - 9, e.trace, bad);
		ck_assert_int_eq(system(cmd), 0);
	} else if (_i >= 2) {
		ck_assert_int_eq(rename(e.trace, bad), 0);
	}
	if (_i == 2)	/* the serve and the VM on half the memory, the trace for all of it */
		write_snapshot(e.snap, SNAP_MIB / 2);
	restore(&e, &r, "replay", rep, _i == 3 ? vo4 : vo);
	assert_clean(&r, "vm-exit");
	assert_demand(&r);
	ck_assert_uint_eq(num(r.json, "\"replay\""), 0);
	err = slurp(r.serve.err);
	warn = strstr(err, "warning: the trace");
	listen = strstr(err, "listening on");
	ck_assert_msg(warn && listen, "%s", err);
	/* Found at start (before the socket listens), or at the handshake for the VM's layout. */
	ck_assert_msg(_i == 3 ? warn > listen : warn < listen, "%s", err);
	ck_assert_msg(strstr(err, "demand paging"), "%s", err);
	free(err);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

/* ---- who may connect ---- */

#define NOBODY 65534
#define PEER_PAGES 4

enum peer_want { PEER_REFUSED, PEER_SERVED, PEER_NO_CONNECT };

/*
 * A forked peer that becomes user nobody after it opened a userfaultfd and
 * registered PEER_PAGES of its memory (as a jailed VM would have), then
 * connects and sends that memory as a region served from offset 0 of the
 * snapshot. Its exit status: 0 when what happened is want; 10 the connect
 * failed otherwise than want; 11 a page became present (a snapshot byte
 * arrived) although refused; 12 no EOF: the serve kept the connection;
 * 13 served the wrong bytes; 20 setup.
 */
static int peer_child(const struct env *e, enum peer_want want)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), len = PEER_PAGES * ps;
	unsigned char vec[PEER_PAGES];
	char json[256], c;
	struct uffd *u = NULL;
	int s;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	signal(SIGTERM, SIG_DFL);
	alarm(10);	/* a page never served would hang this child: the alarm ends it */
	if (mem == MAP_FAILED || uffd_open(&u, NULL) || uffd_register(u, mem, len, UFFDIO_REGISTER_MODE_MISSING, NULL))
		return 20;
	if (setgid(NOBODY) || setuid(NOBODY))
		return 20;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", e->sock);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(s, (struct sockaddr *)&a, sizeof(a)))
		return want == PEER_NO_CONNECT && errno == EACCES ? 0 : 10;
	if (want == PEER_NO_CONNECT)
		return 10;
	snprintf(json, sizeof(json), "[" "{\"base_host_virt_addr\":%llu,\"size\":%zu,\"offset\":0,\"page_size\":%zu}]",
		 (unsigned long long)(uintptr_t)mem, len, ps);
	send_message_fd(s, json, uffd_fd(u));
	if (want == PEER_SERVED)	/* the first word of the snapshot (write_snapshot) */
		return *(volatile uint64_t *)mem == 1 ? 0 : 13;
	/* Refused: the serve closes the connection, and no page of ours is ever filled. */
	if (read(s, &c, 1) > 0)	/* 0 at EOF, or ECONNRESET: our message was never read */
		return 12;
	usleep(100000);
	if (mincore(mem, len, vec))
		return 20;
	for (int i = 0; i < PEER_PAGES; i++)
		if (vec[i] & 1)
			return 11;
	return 0;
}

static void peer_start(const struct env *e, struct proc *p, enum peer_want want)
{
	p->pid = fork();
	ck_assert_int_ge(p->pid, 0);
	if (!p->pid)
		_exit(peer_child(e, want));
}

static void peer_end(struct proc *p)
{
	reap_within(p, 15, "the peer");
	ck_assert_msg(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0, "the peer ended with status 0x%x",
		      p->status);
}

static void await_listening(const struct env *e, const struct proc *sv)
{
	await_text(sv->err, "listening on", 5);
	(void)e;
}

/*
 * A local user that is not allowed (nobody; the socket opened to all with
 * --socket-mode 0666, so that only the peer check stands in its way)
 * connects and sends its userfaultfd and a table: it is refused, gets no
 * snapshot byte, and the serve goes on to restore the real VM. _i: 0 one
 * VM, 1 --multi.
 */
START_TEST(test_peer_refused)
{
	struct env e;
	struct proc sv, peer, vm;
	char *err;

	SKIP_UNDER_VALGRIND("the forked peer that becomes user nobody does not end within its bound under valgrind");
	SETUP(&e, SNAP_MIB);
	ck_assert_int_eq(chmod(e.dir, 0755), 0);	/* nobody may reach the socket */
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--socket-mode", "0666", "--json", _i ? "--multi" : NULL, NULL });
	await_listening(&e, &sv);
	peer_start(&e, &peer, PEER_REFUSED);
	peer_end(&peer);
	await_text(sv.err, "refused a connection from pid", 2);
	err = slurp(sv.err);
	ck_assert_msg(strstr(err, "(uid 65534, gid 65534)") && !strstr(err, "serving VM"), "%s", err);
	free(err);
	/* The real VM after it: served as ever. */
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap,
					  "--deadline", "40", NULL });
	ck_assert_int_eq(finish(&vm, 40, "fc-vmm"), 0);
	if (_i) {
		await_text(sv.out, "\"end\":\"vm-exit\"", 10);
		kill(sv.pid, SIGTERM);
	}
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	env_cleanup(&e);
}
END_TEST

/*
 * The socket's owner and mode, whatever the umask: by default 0600 and this
 * process's, so nobody cannot even connect; with --socket-owner naming
 * nobody (a jailed VM's uid), it is nobody's, and nobody is served.
 */
START_TEST(test_socket_owner)
{
	struct env e;
	struct proc sv, peer;
	struct stat st;
	mode_t old;

	SKIP_UNDER_VALGRIND("the forked peer that becomes user nobody does not end within its bound under valgrind");
	old = umask(0);
	SETUP(&e, SNAP_MIB);
	ck_assert_int_eq(chmod(e.dir, 0755), 0);	/* nobody may reach the socket's directory */
	ck_assert_int_eq(chmod(e.snap, 0600), 0);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    _i ? "--socket-owner" : NULL, "65534", NULL });
	umask(old);
	await_listening(&e, &sv);
	ck_assert_int_eq(lstat(e.sock, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
	ck_assert_uint_eq(st.st_uid, _i ? NOBODY : geteuid());
	peer_start(&e, &peer, _i ? PEER_SERVED : PEER_NO_CONNECT);
	peer_end(&peer);
	if (_i) {	/* the peer exited once served: so does the serve */
		ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	} else {
		kill(sv.pid, SIGTERM);
		ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	}
	env_cleanup(&e);
}
END_TEST

/*
 * --multi: idle connections cannot lock real VMs out. With --max-per-peer 2
 * the third connection of one uid is refused at once; the first two get
 * nothing and are closed after --handshake-timeout; a real VM is then
 * served.
 */
START_TEST(test_idle_peers)
{
	struct env e;
	struct proc sv, vm;
	int s[3];
	double t0, t;
	char c;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap, "--multi",
					    "--max-per-peer", "2", "--handshake-timeout", "400", NULL });
	t0 = harness_now();
	for (int i = 0; i < 3; i++) {
		s[i] = connect_retry(e.sock);
		usleep(50000);	/* accepted in this order */
	}
	ck_assert_int_eq(read(s[2], &c, 1), 0);
	t = harness_now() - t0;
	ck_assert_msg(t < 0.35, "the connection over the limit was closed after %.3f s", t);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(read(s[i], &c, 1), 0);
		t = harness_now() - t0;
		ck_assert_msg(t >= 0.35 && t < 3, "an idle connection was closed after %.3f s", t);
		close(s[i]);
	}
	close(s[2]);
	await_text(sv.err, "--max-per-peer", 1);
	await_text(sv.err, "sent no message within 400 ms", 2);
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap,
					  "--deadline", "40", NULL });
	ck_assert_int_eq(finish(&vm, 40, "fc-vmm"), 0);
	usleep(100000);
	kill(sv.pid, SIGTERM);
	/* The idle connections' children ended with status 4: not the drain's business. */
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	env_cleanup(&e);
}
END_TEST

/* ---- threads, recording ---- */

/* --threads 4 for a VM with EVENT_REMOVE (fc-vmm's, as Firecracker's): refused with the reason, served right. */
START_TEST(test_threads_remove)
{
	static const char *const so[] = { "--threads", "4", NULL };
	static const char *const vo[] = { "--balloon", "--touch-pct", "60", NULL };
	struct env e;
	struct run r;
	char *err;

	SETUP(&e, SNAP_MIB);
	restore(&e, &r, "threads", so, vo);
	assert_clean(&r, "vm-exit");
	ck_assert_uint_eq(num(r.vmm_out, "balloon_nonzero"), 0);
	err = slurp(r.serve.err);
	ck_assert_msg(strstr(err, "--threads 4 refused") && strstr(err, "EVENT_REMOVE"), "%s", err);
	free(err);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

/*
 * --record with --fill: the fill waits for the end of the recording, so the
 * trace holds every page the guest touched (it used to keep only those the
 * fill had not brought in first); then every page comes in and the serve
 * detaches, and the guest checks every byte after it left.
 */
START_TEST(test_record_fill)
{
	const char *so[] = { "--record", NULL, "--record-ms", "1500", "--fill", NULL };
	static const char *const vo[] = { "--touch-pct", "25", "--pace-us", "200", "--after-handler", NULL };
	struct env e;
	struct run r;

	SETUP(&e, SNAP_MIB);
	so[1] = e.trace;
	restore(&e, &r, "recfill", so, vo);
	assert_clean(&r, "detached");
	ck_assert_uint_eq(num(r.json, "\"pages_recorded\""), num(r.vmm_out, "touched"));
	ck_assert_uint_eq(num(r.json, "\"present\""), num(r.json, "\"total\""));
	ck_assert_uint_eq(num(r.vmm_out, "after_handler_bad"), 0);
	ck_assert_int_eq(access(e.trace, F_OK), 0);
	run_free(&r);
	env_cleanup(&e);
}
END_TEST

/* Output paths and recording options are checked at start, before a VM can connect. */
START_TEST(test_record_checks)
{
	static const struct { const char *a[6]; int exit; const char *line; } c[] = {
		{ { "--record", "/nonexistent-dir/t", NULL }, 3, "cannot create a file in /nonexistent-dir" },
		{ { "--record", "T", "--replay", "T", NULL }, 2, "replayed pages raise no fault" },
		{ { "--record", "T", "--fill", NULL }, 2, "--record with --fill needs --record-ms" },
	};
	char *argv[16] = { NULL }, trace[128];
	struct env e;
	struct proc sv;
	char *err;
	int n = 0;

	SETUP(&e, SNAP_MIB);
	path_in(&e, trace, sizeof(trace), "t");
	argv[n++] = (char *)e.serve;
	argv[n++] = "--socket";
	argv[n++] = e.sock;
	argv[n++] = "--memory";
	argv[n++] = e.snap;
	for (int k = 0; c[_i].a[k]; k++)
		argv[n++] = !strcmp(c[_i].a[k], "T") ? trace : (char *)c[_i].a[k];
	spawn(&e, &sv, "serve", argv);
	ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), c[_i].exit);
	ck_assert_int_eq(access(e.sock, F_OK), -1);
	err = slurp(sv.err);
	ck_assert_msg(strstr(err, c[_i].line), "%s", err);
	free(err);
	env_cleanup(&e);
}
END_TEST

/* ---- live metrics ---- */

/* GET /metrics from fd (connected); the body, NUL-terminated (freed by the caller). */
static char *http_get(int fd)
{
	static const char req[] = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
	size_t cap = 1 << 20, n = 0;
	char *buf = malloc(cap), *body;
	ssize_t r;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(write(fd, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	while (n < cap - 1 && (r = read(fd, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = '\0';
	close(fd);
	ck_assert_msg(!strncmp(buf, "HTTP/1.0 200 OK", 15), "%.200s", buf);
	ck_assert_ptr_nonnull(strstr(buf, "Content-Type: text/plain; version=0.0.4"));
	body = strstr(buf, "\r\n\r\n");
	ck_assert_ptr_nonnull(body);
	memmove(buf, body + 4, strlen(body + 4) + 1);
	return buf;
}

static int connect_unix(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
	return s;
}

static int connect_local(unsigned port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
	return s;
}

/* promtool check metrics accepts the text (skipped without promtool). */
static void promtool_ok(const struct env *e, const char *body)
{
	char path[128], cmd[320];
	FILE *f;
	int rc;

	if (system("command -v promtool >/dev/null 2>&1"))
		return;
	path_in(e, path, sizeof(path), "scrape.txt");
	f = fopen(path, "we");
	ck_assert_ptr_nonnull(f);
	fputs(body, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "promtool check metrics < '%s' > '%s.out' 2>&1", path, path);
	rc = system(cmd);
	if (rc) {
		snprintf(cmd, sizeof(cmd), "%s.out", path);
		char *why = slurp(cmd);

		ck_abort_msg("promtool check metrics failed: %s\n%.2000s", why, body);
	}
}

/*
 * Metrics scraped while restores run: _i 0, --multi with two VMs on a Unix
 * socket; 1, one VM on 127.0.0.1 (any free port). Each VM's series carry
 * its pid; promtool check metrics accepts the text; the counters move
 * (one fault per page: --fault-around 0, so that a paced VM keeps faulting).
 */
START_TEST(test_metrics)
{
	int nvm = _i ? 1 : 2;
	char msock[128], addr[160], want[128], *body, *err, *p;
	struct env e;
	struct proc sv, vm[2];
	unsigned port = 0;
	uint64_t first;

	SETUP(&e, SNAP_MIB);
	path_in(&e, msock, sizeof(msock), "metrics.sock");
	snprintf(addr, sizeof(addr), _i ? "127.0.0.1:0" : "unix:%s", msock);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--metrics", addr, "--fault-around", "0",
					    _i ? NULL : "--multi", NULL });
	await_text(sv.err, "listening on", 5);
	assert_log_line(sv.err, "listening on", "info", 0);
	if (_i) {
		err = slurp(sv.err);
		p = strstr(err, "http://127.0.0.1:");
		ck_assert_ptr_nonnull(p);
		port = (unsigned)strtoul(p + strlen("http://127.0.0.1:"), NULL, 10);
		free(err);
	}
	start_paced_vms(&e, vm, nvm);
	for (int i = 0; i < nvm; i++)
		await_text(vm[i].out, "FCVMM resumed", 10);
	usleep(300000);
	body = http_get(_i ? connect_local(port) : connect_unix(msock));
	promtool_ok(&e, body);
	snprintf(want, sizeof(want), "uffd_serve_vms %d\n", nvm);
	ck_assert_msg(strstr(body, want), "%.3000s", body);
	for (int i = 0; i < nvm; i++) {
		snprintf(want, sizeof(want), "uffd_serve_faults_total{vm=\"%d\",kind=\"missing\"} ", (int)vm[i].pid);
		ck_assert_msg(strstr(body, want), "no %s in %.3000s", want, body);
	}
	first = strtoull(strstr(body, want) + strlen(want), NULL, 10);
	ck_assert_uint_gt(first, 0);
	ck_assert_ptr_nonnull(strstr(body, "uffd_serve_fault_service_seconds_bucket{vm="));
	fprintf(stderr, "# metrics sample:\n%.1500s\n", body);
	free(body);
	usleep(300000);
	body = http_get(_i ? connect_local(port) : connect_unix(msock));
	ck_assert_uint_gt(strtoull(strstr(body, want) + strlen(want), NULL, 10), first);
	free(body);
	kill(sv.pid, SIGTERM);	/* drains: the VMs finish without the serve */
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	assert_vms_whole(vm, nvm);
	env_cleanup(&e);
}
END_TEST

/* The number after "name{vm=\"pid\"[,kind=\"kind\"]} " in a scrape; -1 when the series is absent. */
static long long series_kind(const char *body, const char *name, pid_t pid, const char *kind)
{
	char want[160];
	const char *p;

	if (kind)
		snprintf(want, sizeof(want), "%s{vm=\"%d\",kind=\"%s\"} ", name, (int)pid, kind);
	else
		snprintf(want, sizeof(want), "%s{vm=\"%d\"} ", name, (int)pid);
	p = strstr(body, want);
	return p ? strtoll(p + strlen(want), NULL, 10) : -1;
}

static long long series(const char *body, const char *name, pid_t pid)
{
	return series_kind(body, name, pid, NULL);
}

/* Scrapes the endpoint at msock until every page of each VM is present, up to seconds. */
static void await_complete(const char *msock, const struct proc *vm, int n, double seconds)
{
	double end = harness_now() + seconds;

	for (;;) {
		char *body = http_get(connect_unix(msock));
		int done = 0;

		for (int i = 0; i < n; i++)
			done += series(body, "uffd_serve_pages_present", vm[i].pid) ==
				series(body, "uffd_serve_pages", vm[i].pid) &&
				series(body, "uffd_serve_pages", vm[i].pid) > 0;
		if (done == n) {
			free(body);
			return;
		}
		ck_assert_msg(harness_now() < end, "%d of %d VMs complete after %.0f s:\n%.3000s", done, n, seconds,
			      body);
		free(body);
		usleep(20000);
	}
}

/*
 * SIGTERM after every page of the VMs came in by demand faults alone (the
 * restore completed, its on_complete came before the drain, the regions
 * still registered): the drain detaches at once and the serve ends, within
 * 5 s where --drain-timeout is 30 s. _i: 0 one VM, 1 --multi (supervised)
 * with two. Once, in a full CI run, serve/metrics met this: its paced VMs
 * had touched every page (promtool had taken its time) before the SIGTERM.
 */
START_TEST(test_drain_complete)
{
	int nvm = _i ? 2 : 1;
	char msock[128], addr[160], *json, *line;
	struct env e;
	struct proc sv, vm[2];

	SETUP(&e, SNAP_MIB);
	path_in(&e, msock, sizeof(msock), "metrics.sock");
	snprintf(addr, sizeof(addr), "unix:%s", msock);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap, "--json",
					    "--metrics", addr, _i ? "--multi" : NULL, NULL });
	await_text(sv.err, "listening on", 5);
	for (int i = 0; i < nvm; i++)	/* not paced: every page is touched at once; the VM waits for the serve to go */
		spawn(&e, &vm[i], i ? "vmm1" : "vmm0", (char *[]){ (char *)e.vmm, "--socket", e.sock,
			"--memory", e.snap, "--after-handler", "--deadline", "40", NULL });
	await_complete(msock, vm, nvm, 10);
	kill(sv.pid, SIGTERM);
	ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), 0);
	json = slurp(sv.out);
	line = json;
	for (int i = 0; i < nvm; i++, line = strchr(line, '\n') + 1) {
		ck_assert_msg(strstr(line, "\"end\":\"detached\""), "%s", json);
		ck_assert_uint_eq(num(line, "\"present\""), SNAP_MIB * MIB / 4096);
	}
	free(json);
	assert_vms_whole(vm, nvm);
	env_cleanup(&e);
}
END_TEST

static pid_t worker_pid(const char *errfile, int n, double seconds);

/*
 * SIGTERM after the VM exited, before the serve saw the exit: the process
 * serving it (the serve; --multi: the worker) is stopped (SIGSTOP) once
 * every page is present, the VM is killed and reaped, then the serve gets
 * SIGTERM and the stopped process SIGCONT, and finds the signal and the
 * exit at once. The drain finds the restore complete, and the summary says
 * vm-exit, not a detach of a VM that was gone. _i: 0 one VM, 1 --multi.
 */
START_TEST(test_drain_vm_gone)
{
	char msock[128], addr[160], *json;
	struct env e;
	struct proc sv, vm;
	pid_t server;

	SETUP(&e, SNAP_MIB);
	path_in(&e, msock, sizeof(msock), "metrics.sock");
	snprintf(addr, sizeof(addr), "unix:%s", msock);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap, "--json",
					    "--metrics", addr, _i ? "--multi" : NULL, NULL });
	await_text(sv.err, "listening on", 5);
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap, "--after-handler",
					  "--deadline", "40", NULL });
	await_complete(msock, &vm, 1, 10);
	server = _i ? worker_pid(sv.err, 0, 5) : sv.pid;
	ck_assert_int_eq(kill(server, SIGSTOP), 0);
	ck_assert_int_eq(kill(vm.pid, SIGKILL), 0);
	reap_within(&vm, 5, "fc-vmm");
	ck_assert_int_eq(kill(sv.pid, SIGTERM), 0);
	usleep(100000);	/* --multi: passed on to the supervisor, then to the stopped worker */
	ck_assert_int_eq(kill(server, SIGCONT), 0);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	json = slurp(sv.out);
	ck_assert_msg(strstr(json, "\"end\":\"vm-exit\""), "%s", json);
	free(json);
	env_cleanup(&e);
}
END_TEST

/*
 * SIGTERM with a VM's connection and message queued, unread: the serve is
 * stopped (SIGSTOP) while the VM connects and sends its userfaultfd, then
 * gets SIGTERM and SIGCONT, and finds both at once. It takes the VM and
 * drains it; the VM runs on whole. _i: 0 one VM, 1 --multi (the child that
 * takes the connection gets the SIGTERM as it starts, its message unread).
 * Before, the signal won: the connection (one VM) or the message (--multi)
 * was dropped with the VM's userfaultfd, and the VM hung on its faults.
 */
START_TEST(test_stop_queued)
{
	struct env e;
	struct proc sv, vm;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap, "--json",
					    _i ? "--multi" : NULL, NULL });
	await_text(sv.err, "listening on", 5);
	ck_assert_int_eq(kill(sv.pid, SIGSTOP), 0);
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap,
					  "--after-handler", "--deadline", "15", NULL });
	await_text(vm.out, "FCVMM resumed", 10);	/* its message is in the socket: it waits */
	ck_assert_int_eq(kill(sv.pid, SIGTERM), 0);
	ck_assert_int_eq(kill(sv.pid, SIGCONT), 0);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	await_text(sv.out, "\"end\":\"detached\"", 1);
	assert_vms_whole(&vm, 1);
	env_cleanup(&e);
}
END_TEST

/*
 * One point of the sweep: a VM spawned, SIGTERM delay_us later. The serve
 * ends with 0 within 10 s; a VM that handed over its userfaultfd ("FCVMM
 * resumed") ends on its own with every byte right; one that did not is
 * still trying to connect (it is stopped here) or was refused.
 */
static void sigterm_at(const struct env *e, bool multi, unsigned delay_us)
{
	struct proc sv, vm;
	char *out;
	bool handed;
	int rc;

	unlink(e->sock);
	spawn(e, &sv, "serve", (char *[]){ (char *)e->serve, "--socket", (char *)e->sock, "--memory",
					   (char *)e->snap, "--fault-around", "0", multi ? "--multi" : NULL, NULL });
	await_text(sv.err, "listening on", 5);
	spawn(e, &vm, "vmm", (char *[]){ (char *)e->vmm, "--socket", (char *)e->sock, "--memory", (char *)e->snap,
					 "--after-handler", "--deadline", "20", NULL });
	usleep(delay_us);
	kill(sv.pid, SIGTERM);
	rc = finish(&sv, 10, "uffd-serve");
	usleep(200000);	/* a VM that connected sends at once: its line is out by now */
	out = slurp(vm.out);
	handed = strstr(out, "FCVMM resumed");
	free(out);
	ck_assert_msg(rc == 0, "SIGTERM %u us after the VM's start: uffd-serve exit status %d", delay_us, rc);
	if (!handed) {
		kill(vm.pid, SIGKILL);
		reap_within(&vm, 5, "fc-vmm");
		return;
	}
	ck_assert_msg(reap_within(&vm, 10, "fc-vmm") == 0, "SIGTERM %u us after the VM's start: fc-vmm status 0x%x",
		      delay_us, vm.status);
	out = slurp(vm.out);
	ck_assert_uint_eq(num(out, "bad_pages"), 0);
	ck_assert_uint_eq(num(out, "after_handler_bad"), 0);
	free(out);
}

/*
 * SIGTERM at many points of a VM's start: before it connects, while it
 * connects and sends its message, while the serve (the --multi child, its
 * supervisor, the worker) takes the handshake and sets up, while it serves,
 * and after every page came in. Whatever the point, the serve ends within
 * 10 s with status 0, and a VM that handed over its userfaultfd is never
 * left hung: drained, it runs on with every byte right. _i: 0 one VM, 1
 * --multi (supervised).
 */
START_TEST(test_sigterm_sweep)
{
	static const unsigned at_us[] = { 0, 500, 1000, 2000, 3000, 5000, 7000, 10000, 15000, 25000, 40000,
					  60000, 100000, 150000, 250000 };
	struct env e;

	SETUP(&e, SNAP_MIB);
	for (size_t k = 0; k < sizeof(at_us) / sizeof(at_us[0]); k++)
		sigterm_at(&e, _i, at_us[k]);
	env_cleanup(&e);
}
END_TEST

/* ---- systemd: socket activation, readiness, a config file ---- */

/* The next datagram on the notify socket within seconds, NUL-terminated into buf; false on timeout. */
static bool notify_next(int fd, char *buf, size_t len, double seconds)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ssize_t n;

	if (poll(&p, 1, (int)(seconds * 1000)) != 1 || (n = recv(fd, buf, len - 1, 0)) < 0)
		return false;
	buf[n] = '\0';
	return true;
}

/*
 * uffd-serve started the systemd way: its listening socket as fd 3 with
 * LISTEN_FDS/LISTEN_PID, NOTIFY_SOCKET for sd_notify, and its options from
 * --config (the unit's ExecStart). It says READY=1, serves a VM that
 * connects to the passed socket, drains on SIGTERM (STOPPING=1) and leaves
 * the socket, which is systemd's, where it is.
 */
START_TEST(test_socket_activation)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char conf[128], nsock[96], buf[512], *out;
	struct env e;
	struct proc sv, vm;
	int ls, ns;
	FILE *f;

	SETUP(&e, SNAP_MIB);
	path_in(&e, conf, sizeof(conf), "vm.conf");
	path_in(&e, nsock, sizeof(nsock), "notify");
	f = fopen(conf, "we");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "# the options of one socket\nmemory = %s\n  multi\njson\non-fatal = kill\n\n", e.snap);
	fclose(f);
	ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", e.sock);
	ck_assert_int_eq(bind(ls, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(ls, 16), 0);
	ns = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", nsock);
	ck_assert_int_eq(bind(ns, (struct sockaddr *)&a, sizeof(a)), 0);
	snprintf(sv.out, sizeof(sv.out), "%s/serve.out", e.dir);
	snprintf(sv.err, sizeof(sv.err), "%s/serve.err", e.dir);
	sv.pid = fork();
	ck_assert_int_ge(sv.pid, 0);
	if (!sv.pid) {
		char pid[16];

		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		if (dup2(ls, 3) != 3 || !freopen(sv.out, "w", stdout) || !freopen(sv.err, "w", stderr))
			_exit(99);
		setenv("LISTEN_FDS", "1", 1);
		setenv("LISTEN_PID", pid, 1);
		setenv("NOTIFY_SOCKET", nsock, 1);
		signal(SIGTERM, SIG_DFL);
		execl(e.serve, e.serve, "--config", conf, (char *)NULL);
		_exit(98);
	}
	close(ls);
	if (!notify_next(ns, buf, sizeof(buf), 5)) {
		kill(sv.pid, SIGKILL);
		waitpid(sv.pid, NULL, 0);
		out = slurp(sv.err);
		if (strstr(out, "built without libsystemd"))
			SKIP_TEST("uffd-serve is built without libsystemd");
		ck_abort_msg("no READY=1 from uffd-serve: %s", out);
	}
	ck_assert_msg(strstr(buf, "READY=1"), "%s", buf);
	await_text(sv.err, "socket activation", 2);
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap, "--deadline", "40", NULL });
	ck_assert_int_eq(finish(&vm, 40, "fc-vmm"), 0);
	out = slurp(vm.out);
	ck_assert_uint_eq(num(out, "bad_pages"), 0);
	free(out);
	await_text(sv.out, "\"end\":\"vm-exit\"", 10);
	kill(sv.pid, SIGTERM);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	while (notify_next(ns, buf, sizeof(buf), 0.5) && !strstr(buf, "STOPPING=1"))
		;
	ck_assert_msg(strstr(buf, "STOPPING=1"), "%s", buf);
	ck_assert_int_eq(access(e.sock, F_OK), 0);	/* systemd's socket stays */
	close(ns);
	env_cleanup(&e);
}
END_TEST

/* A bad --config file: its line, exit 2. */
START_TEST(test_config_bad)
{
	char conf[128];
	struct env e;
	struct proc sv;
	FILE *f;

	SETUP(&e, SNAP_MIB);
	path_in(&e, conf, sizeof(conf), "bad.conf");
	f = fopen(conf, "we");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "memory = %s\n-- socket x\n", e.snap);
	fclose(f);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--config", conf, NULL });
	ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), 2);
	await_text(sv.err, "bad.conf, line 2", 1);
	env_cleanup(&e);
}
END_TEST

/* ---- the library's handshake, in this process ---- */

/* Sends json in two parts, the uffd of u with the first, over a socketpair; returns the receiving end. */
static int pair_send(struct uffd *u, const char *json, int *other)
{
	int sv[2];
	size_t half = strlen(json) / 2;
	char first[512];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	snprintf(first, sizeof(first), "%.*s", (int)half, json);
	if (u)
		send_message_fd(sv[0], first, uffd_fd(u));
	else
		ck_assert_int_eq(write(sv[0], first, half), (ssize_t)half);
	ck_assert_int_eq(write(sv[0], json + half, strlen(json) - half), (ssize_t)(strlen(json) - half));
	*other = sv[0];
	return sv[1];
}

/*
 * uffd_fc_handshake_recv() directly: a message in two parts with an ignored
 * member of nested type and the old page_size_kib; a member twice (-EPROTO,
 * and the handshake still returned, for the VM's fate); a cancel (-ECANCELED)
 * after a part, and a whole message read although the cancel came first;
 * the regions checked against this process's own mappings.
 */
START_TEST(test_fc_library)
{
	struct uffd_fc_opts fo = { .size = sizeof(fo), .timeout_ms = 2000, .flags = UFFD_FC_NO_MAPPING_CHECK,
				   .file_size = 1 << 20 };
	struct uffd_fc_handshake *h = NULL;
	struct uffd *u = NULL;
	char json[512];
	int conn, other, ev;
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	char *mem;

	if (uffd_open(&u, NULL))
		SKIP_TEST("no userfaultfd here: %s", uffd_last_error());
	mem = mmap(NULL, 5 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(mem, MAP_FAILED);
	conn = pair_send(u, " [ {\"x\":[1,{\"y\":\"a\\\"]}\"}],\"base_host_virt_addr\":1048576,\"size\":8192,"
			 "\"offset\":4096,\"page_size_kib\":4096,\"z\":null} ]\n", &other);
	ASSERT_OK(uffd_fc_handshake_recv(conn, &fo, &h));
	ck_assert_uint_eq(h->nregions, 1);
	ck_assert_uint_eq(h->regions[0].owner_addr, 1048576);
	ck_assert_uint_eq(h->regions[0].length, 8192);
	ck_assert_uint_eq(h->regions[0].offset, 4096);
	ck_assert_uint_eq(h->regions[0].page_size, 4096);
	ck_assert_uint_eq(h->features, uffd_features(u));
	ck_assert_int_eq(h->pid, getpid());
	ck_assert_int_ge(h->pidfd, 0);
	ck_assert_int_ge(h->uffd, 0);
	uffd_fc_handshake_free(h);
	close(conn);
	close(other);

	conn = pair_send(u, "[{\"base_host_virt_addr\":1048576,\"size\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096}]",
			 &other);
	ASSERT_ERR(uffd_fc_handshake_recv(conn, &fo, &h), -EPROTO, "has \"size\" twice");
	ck_assert_ptr_nonnull(h);	/* the uffd came: the caller decides about the VM */
	ck_assert_int_ge(h->uffd, 0);
	ck_assert_int_ge(h->pidfd, 0);
	ck_assert_uint_eq(h->nregions, 0);
	uffd_fc_handshake_free(h);
	close(conn);
	close(other);

	conn = pair_send(NULL, "[{\"base_host_virt_addr\"", &other);	/* then nothing */
	fo.cancel_fd = ev = eventfd(1, EFD_CLOEXEC);
	ASSERT_ERR(uffd_fc_handshake_recv(conn, &fo, &h), -ECANCELED, "cancelled");
	ck_assert_ptr_null(h);
	close(conn);
	close(other);

	/* A whole message there before the cancel: read, not left in the socket with the VM's uffd. */
	conn = pair_send(u, "[{\"base_host_virt_addr\":1048576,\"size\":4096,\"offset\":0,\"page_size\":4096}]",
			 &other);
	ASSERT_OK(uffd_fc_handshake_recv(conn, &fo, &h));
	ck_assert_int_ge(h->uffd, 0);
	ck_assert_uint_eq(h->nregions, 1);
	uffd_fc_handshake_free(h);
	close(ev);
	close(conn);
	close(other);

	/* Against this process's mappings: 4 pages mapped, 5 declared. */
	fo = (struct uffd_fc_opts){ .size = sizeof(fo) };
	snprintf(json, sizeof(json), "[{\"base_host_virt_addr\":%llu,\"size\":%zu,\"offset\":0,\"page_size\":%zu}]",
		 (unsigned long long)(uintptr_t)mem, 5 * ps, ps);
	ck_assert_int_eq(munmap(mem + 4 * ps, ps), 0);
	conn = pair_send(u, json, &other);
	ASSERT_ERR(uffd_fc_handshake_recv(conn, &fo, &h), -EPROTO, "is not all mapped in the VM");
	uffd_fc_handshake_free(h);
	close(conn);
	close(other);
	uffd_close(u);
	munmap(mem, 4 * ps);
}
END_TEST

/* ---- a custom handler on the library's exports ---- */

/*
 * examples/fc-handler, written with uffd_fc_handshake_recv(),
 * uffd_features_of_fd(), uffd_open_fd(), uffd_region_create_foreign() and
 * the restore engine only, restores fc-vmm: _i 0 at 4 KiB, 1 with 2 MiB
 * hugetlbfs pages (whose fd lacks MISSING_HUGETLBFS, as Firecracker's does).
 */
START_TEST(test_custom_handler)
{
	const char *handler = getenv("FC_HANDLER"), *why = "";
	struct env e;
	struct proc hd, vm;
	char *out, *err;
	int rc;

	if (_i) {
		size_t hps = harness_hugepages(SNAP_MIB / 2, &why);

		if (!hps)
			SKIP_TEST("%s", why);
		if (hps != 2 * MIB)
			SKIP_TEST("the default huge page size is %zu KiB, fc-vmm uses 2 MiB", hps >> 10);
	}
	SETUP(&e, SNAP_MIB);
	if (!handler)
		SKIP_TEST("FC_HANDLER is not set");
	spawn(&e, &hd, "handler", (char *[]){ (char *)handler, "--socket", e.sock, "--memory", e.snap, NULL });
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap, "--touch-pct", "100",
					  "--balloon", "--deadline", "40", _i ? "--huge" : NULL, NULL });
	rc = finish(&vm, 40, "fc-vmm");
	err = slurp(vm.err);
	/* Other processes on the machine may take the huge pages reserved before fc-vmm maps them. */
	if (_i && rc == 3 && strstr(err, "hugetlb")) {
		free(err);
		kill(hd.pid, SIGKILL);	/* it waits for a VM that never came */
		reap_within(&hd, 5, "fc-handler");
		env_cleanup(&e);
		SKIP_TEST("the huge pages reserved were taken by another process before fc-vmm mapped them");
	}
	ck_assert_msg(rc == 0, "fc-vmm exit %d: %s", rc, err);
	free(err);
	ck_assert_int_eq(finish(&hd, 10, "fc-handler"), 0);
	out = slurp(vm.out);
	err = slurp(hd.err);
	ck_assert_uint_eq(num(out, "bad_pages"), 0);
	ck_assert_uint_eq(num(out, "balloon_nonzero"), 0);
	ck_assert_uint_eq(num(out, "touched"), SNAP_MIB * MIB / 4096);
	ck_assert_msg(strstr(err, _i ? "page size 2097152" : "page size 4096"), "%s", err);
	free(out);
	free(err);
	env_cleanup(&e);
}
END_TEST

/*
 * A signal while the VM's message is incomplete, its userfaultfd already
 * here: the VM waits for us, the serve is stopping: the fatal path (kill),
 * exit status 6.
 */
START_TEST(test_fatal_signal_in_handshake)
{
	struct env e;
	struct proc sv, vm;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--timeout", "20000", "--handshake-timeout", "20000", NULL });
	sender_start(&e, &vm, "[{\"base_host_virt_addr\":1048576,", FD_UFFD);
	await_text(sv.err, "listening on", 5);
	usleep(200000);	/* the part and its uffd are in */
	kill(sv.pid, SIGTERM);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 6);
	sender_end(&vm, true);
	killed_ms(sv.err);
	await_text(sv.err, "a signal came in the middle of the VM's handshake", 1);
	env_cleanup(&e);
}
END_TEST

/*
 * The serve cannot be set up after a good handshake (here: out of
 * descriptors, RLIMIT_NOFILE just above what the handshake needs): the VM is
 * killed. The limit that hits exactly that path is searched, from 9 up.
 */
START_TEST(test_fatal_setup)
{
	struct env e;
	bool hit = false;

	if (access("/usr/bin/prlimit", X_OK))
		SKIP_TEST("no prlimit(1)");
	SETUP(&e, SNAP_MIB);
	for (int n = 9; n <= 24 && !hit; n++) {
		char lim[32], tag[32], *err;
		struct proc sv, vm;
		int rc;

		snprintf(lim, sizeof(lim), "--nofile=%d:%d", n, n);
		snprintf(tag, sizeof(tag), "setup%d", n);
		spawn(&e, &sv, tag, (char *[]){ "/usr/bin/prlimit", lim, (char *)e.serve, "--socket", e.sock,
						 "--memory", e.snap, "--timeout", "5000", NULL });
		snprintf(tag, sizeof(tag), "vmm%d", n);
		spawn(&e, &vm, tag, (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap,
						"--deadline", "20", NULL });
		reap_within(&vm, 25, "fc-vmm");
		rc = finish(&sv, 10, "uffd-serve");
		err = slurp(sv.err);
		hit = strstr(err, "the serve of the VM could not be set up");
		if (hit) {
			ck_assert_msg(WIFSIGNALED(vm.status) && WTERMSIG(vm.status) == SIGKILL, "fc-vmm status 0x%x",
				      vm.status);
			ck_assert_int_eq(rc, 1);
			killed_ms(sv.err);
			fprintf(stderr, "# fatal_setup: RLIMIT_NOFILE %d: %s", n, strstr(err, "fatal:"));
		} else if (WIFSIGNALED(vm.status) || (WIFEXITED(vm.status) && WEXITSTATUS(vm.status) == 3)) {
			ck_assert_msg(rc != 0, "the VM died but the serve says 0: %s", err);
		}
		free(err);
		unlink(e.sock);
	}
	ck_assert_msg(hit, "no descriptor limit from 9 to 24 made the setup fail after the handshake");
	env_cleanup(&e);
}
END_TEST

/* ---- layers: a base and two Diff files, newest wins ---- */

/*
 * The truth (what fc-vmm checks): the snapshot with pages p % 16 == 7
 * punched to zeros. The base holds it but for garbage where the diffs
 * hold the truth: diff 1 at p % 4 == 1 (and garbage at p % 8 == 2, which
 * diff 2 hides), diff 2 at p % 8 == 2; none holds p % 16 == 7.
 */
static void write_layers(const struct env *e, const char *base, const char *d1, const char *d2)
{
	const char *paths[3] = { base, d1, d2 };
	size_t ps = 4096, npages = SNAP_MIB * MIB / ps;
	char *page = malloc(ps), *junk = malloc(ps);
	int t = open(e->snap, O_RDWR | O_CLOEXEC), fd[3];

	ck_assert_ptr_nonnull(page);
	ck_assert_ptr_nonnull(junk);
	ck_assert_int_ge(t, 0);
	memset(junk, 0xa5, ps);
	for (int i = 0; i < 3; i++) {
		fd[i] = open(paths[i], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		ck_assert_int_ge(fd[i], 0);
		ck_assert_int_eq(ftruncate(fd[i], (off_t)(SNAP_MIB * MIB)), 0);
	}
	for (size_t p = 0; p < npages; p++) {
		off_t at = (off_t)(p * ps);

		if (p % 16 == 7) {
			ck_assert_int_eq(fallocate(t, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, (off_t)ps), 0);
			continue;
		}
		ck_assert_int_eq(pread(t, page, ps, at), (ssize_t)ps);
		if (p % 4 == 1) {
			ck_assert_int_eq(pwrite(fd[0], junk, ps, at), (ssize_t)ps);
			ck_assert_int_eq(pwrite(fd[1], page, ps, at), (ssize_t)ps);
		} else if (p % 8 == 2) {
			ck_assert_int_eq(pwrite(fd[0], junk, ps, at), (ssize_t)ps);
			ck_assert_int_eq(pwrite(fd[1], junk, ps, at), (ssize_t)ps);
			ck_assert_int_eq(pwrite(fd[2], page, ps, at), (ssize_t)ps);
		} else {
			ck_assert_int_eq(pwrite(fd[0], page, ps, at), (ssize_t)ps);
		}
	}
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(close(fd[i]), 0);
	close(t);
	free(page);
	free(junk);
}

START_TEST(test_layers)
{
	static const char *const vo1[] = { "--touch-pct", "50", NULL };
	static const char *const vo2[] = { "--touch-pct", "50", "--after-handler", NULL };
	char base[112], d1[112], d2[112];
	const char *so1[] = { "--memory", base, "--layer", d1, "--layer", d2, "--record", NULL, NULL };
	const char *so2[] = { "--memory", base, "--layer", d1, "--layer", d2, "--replay", NULL, "--fill", NULL };
	struct env e;
	struct run r1, r2;

	SETUP(&e, SNAP_MIB);
	path_in(&e, base, sizeof(base), "base");
	path_in(&e, d1, sizeof(d1), "diff1");
	path_in(&e, d2, sizeof(d2), "diff2");
	write_layers(&e, base, d1, d2);
	so1[7] = so2[7] = e.trace;
	/* Demand faults and a recording on the layers: every byte the guest reads is the truth. */
	restore(&e, &r1, "layers-record", so1, vo1);
	assert_clean(&r1, "vm-exit");
	ck_assert_uint_eq(num(r1.json, "\"hole\""), SNAP_MIB * MIB / 4096 / 16);
	ck_assert_uint_gt(num(r1.json, "\"pages_recorded\""), 0);
	/* Replay and fill on the layers, then detach: every page checked after the serve left. */
	restore(&e, &r2, "layers-replay", so2, vo2);
	assert_clean(&r2, "detached");
	ck_assert_uint_eq(num(r2.vmm_out, "after_handler_bad"), 0);
	ck_assert_uint_gt(num(r2.json, "\"replay\""), 0);
	ck_assert_uint_eq(num(r2.json, "\"present\""), num(r2.json, "\"total\""));
	/* Hole pages are never read. */
	ck_assert_uint_le(num(r2.json, "\"bytes_read\""), SNAP_MIB * MIB / 16 * 15);
	run_free(&r1);
	run_free(&r2);
	env_cleanup(&e);
}
END_TEST

/* Checked before any VM connects: one line naming the file, exit 3. */
START_TEST(test_bad_layers)
{
	char shorter[112], missing[112], dir[112];
	const char *bad[] = { shorter, missing, dir };
	const char *why[] = { "bytes", "cannot open", "not a regular file" };
	struct env e;
	struct proc sv;
	char *err;

	SETUP(&e, SNAP_MIB);
	path_in(&e, shorter, sizeof(shorter), "short-diff");
	path_in(&e, missing, sizeof(missing), "no-such-diff");
	path_in(&e, dir, sizeof(dir), "a-directory");
	write_snapshot(shorter, SNAP_MIB / 2);
	ck_assert_int_eq(mkdir(dir, 0700), 0);
	for (int i = 0; i < 3; i++) {
		spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
						    "--layer", e.snap, "--layer", (char *)bad[i], "--timeout", "5000", NULL });
		ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 3);
		err = slurp(sv.err);
		ck_assert_msg(strstr(err, bad[i]) && strstr(err, why[_i * 0 + i]), "%s", err);
		ck_assert_msg(!strchr(strchr(err, '\n') + 1, '\n'), "more than one line: %s", err);
		ck_assert_int_ne(access(e.sock, F_OK), 0);	/* it never listened */
		free(err);
	}
	env_cleanup(&e);
}
END_TEST

/* ---- compressed snapshots (libuffd-snapshot(5)) ---- */

/*
 * Packs the image in file in into the compressed snapshot out, of frames
 * of 64 KiB; a diff of the compressed snapshot made of the chain parent
 * (base first, NULL-ended) when it is not NULL (in then a Firecracker Diff
 * file: its holes are the parent's pages).
 */
static void pack_chain(const char *in, const char *out, const char *const *parent)
{
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = 64 << 10 };
	struct uffd_snap *ps = NULL;
	int fd = open(in, O_RDONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	if (parent) {
		unsigned n = 0;

		while (parent[n])
			n++;
		ck_assert_msg(uffd_snap_open(&ps, parent, n, NULL) == 0, "%s", uffd_last_error());
		po.parent = ps;
		po.flags = UFFD_SNAP_PACK_DIFF;
	}
	ck_assert_msg(uffd_snap_pack(out, fd, &po) == 0, "%s", uffd_last_error());
	uffd_snap_close(ps);
	close(fd);
}

static void pack(const char *in, const char *out, const char *parent)
{
	pack_chain(in, out, parent ? (const char *[]){ parent, NULL } : NULL);
}

/* Demand faults and a recording, then replay + fill and detach: every byte the guest saw checked. */
static void record_then_replay(const struct env *e, const char *tag, const char **so1, const char **so2)
{
	static const char *const vo1[] = { "--touch-pct", "50", NULL };
	static const char *const vo2[] = { "--touch-pct", "50", "--after-handler", NULL };
	char t1[32], t2[32];
	struct run r1, r2;

	snprintf(t1, sizeof(t1), "%s-record", tag);
	snprintf(t2, sizeof(t2), "%s-replay", tag);
	restore(e, &r1, t1, so1, vo1);
	assert_clean(&r1, "vm-exit");
	ck_assert_uint_gt(num(r1.json, "\"pages_recorded\""), 0);
	restore(e, &r2, t2, so2, vo2);
	assert_clean(&r2, "detached");
	ck_assert_uint_eq(num(r2.vmm_out, "after_handler_bad"), 0);
	ck_assert_uint_gt(num(r2.vmm_out, "touched"), 0);
	ck_assert_uint_gt(num(r2.json, "\"replay\""), 0);
	ck_assert_uint_eq(num(r2.json, "\"present\""), num(r2.json, "\"total\""));
	run_free(&r1);
	run_free(&r2);
}

/* The snapshot packed whole: fc-vmm restored from it, demand then replay + fill. */
START_TEST(test_compressed)
{
	char z[112];
	const char *so1[] = { "--memory", z, "--record", NULL, NULL };
	const char *so2[] = { "--memory", z, "--replay", NULL, "--fill", NULL };
	struct env e;

	SETUP(&e, SNAP_MIB);
	path_in(&e, z, sizeof(z), "snap.uffdsnap");
	pack(e.snap, z, NULL);
	so1[3] = so2[3] = e.trace;
	record_then_replay(&e, "compressed", so1, so2);
	env_cleanup(&e);
}
END_TEST

/*
 * The layers of test_layers packed: a compressed base, diff 1 as a
 * compressed diff of it, and diff 2 as a compressed diff of diff 1 (_i 0)
 * or left a Firecracker Diff file over the compressed chain (_i 1).
 */
START_TEST(test_compressed_layers)
{
	char base[112], d1[112], d2[112], zb[112], z1[112], z2[112];
	const char *so1[] = { "--memory", zb, "--layer", z1, "--layer", _i ? d2 : z2, "--record", NULL, NULL };
	const char *so2[] = { "--memory", zb, "--layer", z1, "--layer", _i ? d2 : z2, "--replay", NULL, "--fill", NULL };
	struct env e;

	SETUP(&e, SNAP_MIB);
	path_in(&e, base, sizeof(base), "base");
	path_in(&e, d1, sizeof(d1), "diff1");
	path_in(&e, d2, sizeof(d2), "diff2");
	path_in(&e, zb, sizeof(zb), "base.uffdsnap");
	path_in(&e, z1, sizeof(z1), "diff1.uffdsnap");
	path_in(&e, z2, sizeof(z2), "diff2.uffdsnap");
	write_layers(&e, base, d1, d2);
	pack(base, zb, NULL);
	pack(d1, z1, zb);
	pack_chain(d2, z2, (const char *[]){ zb, z1, NULL });
	so1[7] = so2[7] = e.trace;
	record_then_replay(&e, _i ? "zlayers-fc" : "zlayers", so1, so2);
	env_cleanup(&e);
}
END_TEST

/* A copy of file from with len bytes at off replaced by bytes (or the file cut at off when bytes is NULL). */
static void damaged_copy(const char *from, const char *to, off_t off, const void *bytes, size_t len)
{
	char cmd[256];
	int fd;

	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", from, to);
	ck_assert_int_eq(system(cmd), 0);
	fd = open(to, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	if (bytes)
		ck_assert_int_eq(pwrite(fd, bytes, len, off), (ssize_t)len);
	else
		ck_assert_int_eq(ftruncate(fd, off), 0);
	close(fd);
}

/*
 * Bad compressed files are refused before any VM connects: one line
 * naming the file (and the frame), exit 3, the socket never made.
 */
START_TEST(test_bad_compressed)
{
	char zb[112], z1[112], other[112], zo[112], zd[112], bad[112], small[112];
	struct env e;
	struct proc sv;
	char *err;

	SETUP(&e, SNAP_MIB);
	path_in(&e, zb, sizeof(zb), "base.uffdsnap");
	path_in(&e, z1, sizeof(z1), "diff.uffdsnap");
	path_in(&e, other, sizeof(other), "other");
	path_in(&e, zo, sizeof(zo), "other.uffdsnap");
	path_in(&e, zd, sizeof(zd), "diff-of-other.uffdsnap");
	path_in(&e, bad, sizeof(bad), "bad.uffdsnap");
	path_in(&e, small, sizeof(small), "small");
	pack(e.snap, zb, NULL);
	pack(e.snap, z1, zb);	/* a diff of zb (it stores nothing) */
	write_snapshot(other, SNAP_MIB);
	ck_assert_int_eq(truncate(other, 4096), 0);
	ck_assert_int_eq(truncate(other, SNAP_MIB * MIB), 0);	/* another image, of the same size */
	pack(other, zo, NULL);
	pack(e.snap, zd, zo);	/* a diff of zo */
	write_snapshot(small, SNAP_MIB / 2);

	struct {
		const char *tag, *args[6], *file, *why;
		off_t off;		/* damage to zb at, in bad */
		const void *bytes;	/* NULL: zb cut at off */
		size_t len;
	} c[] = {
		{ "truncated", { "--memory", bad }, bad, "truncated", 1000, NULL, 0 },
		{ "header", { "--memory", bad }, bad, "header's checksum", 30, "\x7f", 1 },
		{ "version", { "--memory", bad }, bad, "version 2", 8, "\x02", 1 },
		{ "index", { "--memory", bad }, bad, "index", -100, "\xff\xff", 2 },
		{ "frame", { "--memory", bad, "--verify" }, bad, "frame 0 ", 200, "\x00\x11\x22\x33", 4 },
		{ "parent", { "--memory", zb, "--layer", zd }, zd, "not of", 0, NULL, 0 },
		{ "no-parent", { "--memory", e.snap, "--layer", z1 }, z1, "given as the base", 0, NULL, 0 },
		{ "base-as-diff", { "--memory", zb, "--layer", zo }, zo, "a base, given as a diff", 0, NULL, 0 },
		{ "base-as-layer", { "--memory", e.snap, "--layer", zo }, zo, "not a diff", 0, NULL, 0 },
		{ "size", { "--memory", zb, "--layer", small }, small, "bytes", 0, NULL, 0 },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		char *argv[16] = { (char *)e.serve, "--socket", e.sock, "--timeout", "5000" };
		int n = 5;
		struct stat st;

		if (c[i].bytes || c[i].off) {
			ck_assert_int_eq(stat(zb, &st), 0);
			damaged_copy(zb, bad, c[i].off < 0 ? st.st_size + c[i].off : c[i].off, c[i].bytes, c[i].len);
		}
		for (int k = 0; c[i].args[k]; k++)
			argv[n++] = (char *)c[i].args[k];
		spawn(&e, &sv, c[i].tag, argv);
		ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 3);
		err = slurp(sv.err);
		ck_assert_msg(strstr(err, c[i].file) && strstr(err, c[i].why), "%s: %s", c[i].tag, err);
		ck_assert_msg(!strchr(strchr(err, '\n') + 1, '\n'), "%s: more than one line: %s", c[i].tag, err);
		ck_assert_int_ne(access(e.sock, F_OK), 0);	/* it never listened */
		free(err);
	}
	env_cleanup(&e);
}
END_TEST

/* ---- --supervise: the worker's crash and the upgrade ---- */

/* The pid of the n-th worker (from 0) the supervisor logged, waiting up to seconds for the line. */
static pid_t worker_pid(const char *errfile, int n, double seconds)
{
	double end = harness_now() + seconds;

	for (;;) {
		char *s = slurp(errfile), *p = s;
		pid_t pid = 0;

		for (int i = 0; p && i <= n; i++)
			if ((p = strstr(p, "worker process ")))
				p += strlen("worker process ");
		if (p)
			pid = (pid_t)strtol(p, NULL, 10);
		free(s);
		if (pid > 0)
			return pid;
		ck_assert_msg(harness_now() < end, "worker %d was not started within %.0f s", n, seconds);
		usleep(5000);
	}
}

/* Times text occurs in the file. */
static int count_text(const char *file, const char *text)
{
	char *s = slurp(file), *p = s;
	int n = 0;

	while ((p = strstr(p, text)) && ++n)
		p += strlen(text);
	free(s);
	return n;
}

/* uffd-serve --supervise and a slow VM (3 ms a page: about 6 s for its 2,048 pages), resumed. */
static void supervised_start(const struct env *e, struct proc *sv, struct proc *vm, const char *extra)
{
	spawn(e, sv, "serve", (char *[]){ (char *)e->serve, "--socket", (char *)e->sock, "--memory", (char *)e->snap,
					  "--json", "--supervise", (char *)extra, NULL });
	spawn(e, vm, "vmm", (char *[]){ (char *)e->vmm, "--socket", (char *)e->sock, "--memory", (char *)e->snap,
					"--pace-us", "3000", "--deadline", "40", NULL });
	await_text(vm->out, "FCVMM resumed", 10);
}

/* The VM read every byte right and ran to its end; the serve ended with it, everything present, nothing leaked. */
static void assert_supervised_whole(const struct env *e, struct proc *sv, struct proc *vm)
{
	char *out, *json;

	(void)e;
	ck_assert_int_eq(finish(vm, 40, "fc-vmm"), 0);
	ck_assert_int_eq(finish(sv, 10, "uffd-serve"), 0);
	out = slurp(vm->out);
	json = slurp(sv->out);
	ck_assert_uint_eq(num(out, "touched"), num(out, "pages"));	/* every page read and checked */
	ck_assert_uint_eq(num(out, "bad_pages"), 0);
	ck_assert_msg(strstr(json, "\"end\":\"vm-exit\""), "%s", json);
	/*
	 * Not every page need count as present: one the killed worker had
	 * installed but not yet marked stays ABSENT in the states, and being
	 * mapped it never faults again (only a fill or a drain would find it,
	 * EEXIST, and count it). The VM's byte checks are what count.
	 */
	ck_assert_uint_gt(num(json, "\"present\""), num(json, "\"total\"") / 2);
	ck_assert_uint_eq(num(json, "\"fds_leaked\""), 0);
	ck_assert_uint_eq(num(json, "\"errors\""), 0);
	free(out);
	free(json);
}

/*
 * kill -9 of the worker in the middle of the restore (_i: 0 once, 1 three
 * times in a row, 2 three times with the VM's balloon giving pages back):
 * a new worker adopts the VM each time, the faults the dead one had read
 * are raised again, and the VM ends with every byte right. Without the
 * supervisor the VM would hang on its next fault (fc-vmm's deadline).
 */
START_TEST(test_supervise_kill)
{
	int kills = _i ? 3 : 1;
	struct env e;
	struct proc sv, vm;
	char *out;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap, "--json",
					    "--supervise", NULL });
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap, "--pace-us", "3000",
					  "--deadline", "40", _i == 2 ? "--balloon" : NULL, NULL });
	await_text(vm.out, "FCVMM resumed", 10);
	for (int k = 0; k < kills; k++) {
		usleep(400000);
		ck_assert_int_eq(kill(worker_pid(sv.err, k, 5), SIGKILL), 0);
		worker_pid(sv.err, k + 1, 5);	/* its successor took over */
	}
	assert_supervised_whole(&e, &sv, &vm);
	ck_assert_int_eq(count_text(sv.err, "died of signal 9"), kills);
	out = slurp(vm.out);
	if (_i == 2)
		ck_assert_uint_eq(num(out, "balloon_nonzero"), 0);
	free(out);
	env_cleanup(&e);
}
END_TEST

/*
 * The upgrade: SIGUSR2 to the supervisor in the middle of the restore
 * re-executes uffd-serve, which takes the VM over (its userfaultfd, pidfd
 * and page states kept across exec) and replaces the worker; every byte
 * right. _i: 0 once, 1 an upgrade and then a worker crash, 2 --multi (the
 * VM's own supervisor is signalled, a child of the main process).
 */
START_TEST(test_supervise_upgrade)
{
	struct env e;
	struct proc sv, vm;
	pid_t supervisor;
	char *err, *p;

	SETUP(&e, SNAP_MIB);
	supervised_start(&e, &sv, &vm, _i == 2 ? "--multi" : NULL);
	usleep(500000);
	worker_pid(sv.err, 0, 1);
	err = slurp(sv.err);
	ck_assert_ptr_nonnull((p = strstr(err, "(supervisor process ")));
	supervisor = (pid_t)strtol(p + strlen("(supervisor process "), NULL, 10);
	free(err);
	ck_assert_int_eq(supervisor == sv.pid, _i != 2);	/* --multi: a child of the main process */
	ck_assert_int_eq(kill(supervisor, SIGUSR2), 0);
	worker_pid(sv.err, 1, 5);
	await_text(sv.err, "after an upgrade; replacing the old worker", 1);
	if (_i == 2) {	/* the VM ends; then the main process drains nothing and exits */
		ck_assert_int_eq(finish(&vm, 40, "fc-vmm"), 0);
		err = slurp(vm.out);
		ck_assert_uint_eq(num(err, "bad_pages"), 0);
		ck_assert_uint_eq(num(err, "touched"), num(err, "pages"));
		free(err);
		kill(sv.pid, SIGTERM);
		ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
		err = slurp(sv.out);
		ck_assert_msg(strstr(err, "\"end\":\"vm-exit\""), "%s", err);
		ck_assert_uint_eq(num(err, "\"fds_leaked\""), 0);
		free(err);
		env_cleanup(&e);
		return;
	}
	if (_i) {
		usleep(400000);
		ck_assert_int_eq(kill(worker_pid(sv.err, 1, 1), SIGKILL), 0);
		worker_pid(sv.err, 2, 5);
	}
	assert_supervised_whole(&e, &sv, &vm);
	env_cleanup(&e);
}
END_TEST

/*
 * The VM killed while the supervisor replaces its worker: the new worker
 * finds it gone, and the serve ends at once, with 0, leaking nothing.
 */
START_TEST(test_supervise_vm_gone)
{
	struct env e;
	struct proc sv, vm;
	char *json;

	SETUP(&e, SNAP_MIB);
	supervised_start(&e, &sv, &vm, NULL);
	usleep(300000);
	ck_assert_int_eq(kill(worker_pid(sv.err, 0, 1), SIGKILL), 0);
	ck_assert_int_eq(kill(vm.pid, SIGKILL), 0);
	reap_within(&vm, 5, "fc-vmm");
	ck_assert_int_eq(finish(&sv, 5, "uffd-serve"), 0);
	json = slurp(sv.out);
	ck_assert_msg(strstr(json, "\"end\":\"vm-exit\""), "%s", json);
	ck_assert_uint_eq(num(json, "\"fds_leaked\""), 0);
	free(json);
	env_cleanup(&e);
}
END_TEST

/*
 * SIGTERM to a supervisor goes to its worker, which drains the VM as
 * without --supervise: every page in, the regions unregistered, exit 0.
 */
START_TEST(test_supervise_drain)
{
	struct env e;
	struct proc sv, vm;
	char *json;

	SETUP(&e, SNAP_MIB);
	supervised_start(&e, &sv, &vm, NULL);
	usleep(300000);
	ck_assert_int_eq(kill(worker_pid(sv.err, 0, 1), SIGKILL), 0);
	worker_pid(sv.err, 1, 5);
	ck_assert_int_eq(kill(sv.pid, SIGTERM), 0);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	json = slurp(sv.out);
	ck_assert_msg(strstr(json, "\"end\":\"detached\""), "%s", json);
	ck_assert_uint_eq(num(json, "\"present\""), num(json, "\"total\""));
	ck_assert_uint_eq(num(json, "\"fds_leaked\""), 0);
	free(json);
	ck_assert_int_eq(finish(&vm, 40, "fc-vmm"), 0);
	json = slurp(vm.out);
	ck_assert_uint_eq(num(json, "bad_pages"), 0);
	free(json);
	env_cleanup(&e);
}
END_TEST

/*
 * --multi supervises by default: the worker of one of two VMs killed, both
 * VMs end with every byte right, and the serve drains and exits 0.
 */
START_TEST(test_supervise_multi)
{
	struct env e;
	struct proc sv, vm[2];

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap, "--json",
					    "--multi", NULL });
	for (int i = 0; i < 2; i++)
		spawn(&e, &vm[i], i ? "vmm1" : "vmm0", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory",
				e.snap, "--pace-us", "3000", "--deadline", "40", NULL });
	for (int i = 0; i < 2; i++)
		await_text(vm[i].out, "FCVMM resumed", 10);
	usleep(400000);
	ck_assert_int_eq(kill(worker_pid(sv.err, 0, 5), SIGKILL), 0);
	worker_pid(sv.err, 2, 5);	/* two first workers, then the successor */
	assert_vms_whole(vm, 2);
	ck_assert_int_eq(kill(sv.pid, SIGTERM), 0);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	ck_assert_int_eq(count_text(sv.err, "died of signal 9"), 1);
	ck_assert_int_eq(count_text(sv.out, "\"fds_leaked\":0"), 2);
	env_cleanup(&e);
}
END_TEST

/* One notification with its descriptors: the text, and up to 4 fds (-1 for none). */
static bool notify_fds(int fd, char *buf, size_t len, int fds[4], double seconds)
{
	char cbuf[CMSG_SPACE(4 * sizeof(int))] __attribute__((aligned(8)));
	struct iovec iov = { .iov_base = buf, .iov_len = len - 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct pollfd p = { .fd = fd, .events = POLLIN };
	ssize_t n;

	for (int i = 0; i < 4; i++)
		fds[i] = -1;
	if (poll(&p, 1, (int)(seconds * 1000)) != 1 || (n = recvmsg(fd, &m, MSG_CMSG_CLOEXEC)) < 0)
		return false;
	buf[n] = '\0';
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fds, CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0));
	return true;
}

/* uffd-serve --multi as systemd starts it: ls as fd 3, then the stored fds named in names (NULL: none). */
static pid_t start_activated(const struct env *e, struct proc *sv, const char *tag, int ls, const int *stored,
			     int nstored, const char *names, const char *nsock)
{
	pid_t pid;

	snprintf(sv->out, sizeof(sv->out), "%s/%s.out", e->dir, tag);
	snprintf(sv->err, sizeof(sv->err), "%s/%s.err", e->dir, tag);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (!pid) {
		char buf[16];
		int high[8];

		/* Out of the way of 3..7 first: the fds may sit there now. */
		high[0] = fcntl(ls, F_DUPFD, 100);
		for (int i = 0; i < nstored; i++)
			high[i + 1] = fcntl(stored[i], F_DUPFD, 100);
		for (int i = 0; i <= nstored; i++)
			if (dup2(high[i], 3 + i) != 3 + i)
				_exit(99);
		if (!freopen(sv->out, "w", stdout) || !freopen(sv->err, "w", stderr))
			_exit(99);
		snprintf(buf, sizeof(buf), "%d", (int)getpid());
		setenv("LISTEN_PID", buf, 1);
		snprintf(buf, sizeof(buf), "%d", nstored + 1);
		setenv("LISTEN_FDS", buf, 1);
		if (names)
			setenv("LISTEN_FDNAMES", names, 1);
		setenv("NOTIFY_SOCKET", nsock, 1);
		signal(SIGTERM, SIG_DFL);
		execl(e->serve, e->serve, "--memory", e->snap, "--multi", "--json", (char *)NULL);
		_exit(98);
	}
	sv->pid = pid;
	return pid;
}

/*
 * Even the supervisor can die: under systemd each supervised VM's fds go to
 * the service's fd store (FDSTORE=1, FDNAME=uffdvm.KEY.ROLE). The main
 * process, the VM's supervisor and its worker all killed with SIGKILL in the
 * middle of the restore (the VM hangs on its faults), the service started
 * again with the socket and the stored fds (LISTEN_FDS, LISTEN_FDNAMES)
 * takes the VM back: it ends with every byte right, its fds are removed
 * from the store (FDSTOREREMOVE=1), and nothing leaks.
 */
START_TEST(test_supervise_fd_store)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char nsock[96], buf[512], names[512] = "uffd-serve.socket", *out, *p;
	int ls, ns, stored[4], nstored = 0, fds[4], removed = 0;
	struct proc sv, sv2, vm;
	pid_t sup, worker;
	struct env e;

	SETUP(&e, SNAP_MIB);
	path_in(&e, nsock, sizeof(nsock), "notify");
	ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", e.sock);
	ck_assert_int_eq(bind(ls, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(ls, 16), 0);
	ns = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", nsock);
	ck_assert_int_eq(bind(ns, (struct sockaddr *)&a, sizeof(a)), 0);
	start_activated(&e, &sv, "serve", ls, NULL, 0, NULL, nsock);
	if (!notify_next(ns, buf, sizeof(buf), 5)) {
		kill(sv.pid, SIGKILL);
		waitpid(sv.pid, NULL, 0);
		out = slurp(sv.err);
		if (strstr(out, "built without libsystemd"))
			SKIP_TEST("uffd-serve is built without libsystemd");
		ck_abort_msg("no READY=1 from uffd-serve: %s", out);
	}
	spawn(&e, &vm, "vmm", (char *[]){ (char *)e.vmm, "--socket", e.sock, "--memory", e.snap, "--pace-us", "3000",
					  "--deadline", "40", NULL });
	while (nstored < 4) {
		ck_assert_msg(notify_fds(ns, buf, sizeof(buf), fds, 5), "%d of the VM's 4 fds stored", nstored);
		if (!strstr(buf, "FDSTORE=1"))
			continue;
		ck_assert_int_ge(fds[0], 0);
		ck_assert_int_eq(fds[1], -1);
		ck_assert_ptr_nonnull((p = strstr(buf, "FDNAME=uffdvm.")));
		strcat(names, ":");
		strncat(names, p + strlen("FDNAME="), strcspn(p + strlen("FDNAME="), "\n"));
		stored[nstored++] = fds[0];
	}
	await_text(vm.out, "FCVMM resumed", 10);
	usleep(400000);
	worker = worker_pid(sv.err, 0, 1);
	out = slurp(sv.err);
	ck_assert_ptr_nonnull((p = strstr(out, "(supervisor process ")));
	sup = (pid_t)strtol(p + strlen("(supervisor process "), NULL, 10);
	free(out);
	ck_assert_int_eq(kill(sv.pid, SIGKILL), 0);
	ck_assert_int_eq(kill(sup, SIGKILL), 0);
	ck_assert_int_eq(kill(worker, SIGKILL), 0);
	reap_within(&sv, 5, "uffd-serve");
	still_running(&vm, 0.3, "fc-vmm without a handler");
	start_activated(&e, &sv2, "serve2", ls, stored, nstored, names, nsock);
	for (int i = 0; i < nstored; i++)
		close(stored[i]);
	close(ls);
	ck_assert_int_eq(finish(&vm, 40, "fc-vmm"), 0);
	out = slurp(vm.out);
	ck_assert_uint_eq(num(out, "bad_pages"), 0);
	ck_assert_uint_eq(num(out, "touched"), num(out, "pages"));
	free(out);
	await_text(sv2.out, "\"end\":\"vm-exit\"", 10);
	while (removed < 4 && notify_fds(ns, buf, sizeof(buf), fds, 2))
		removed += strstr(buf, "FDSTOREREMOVE=1") != NULL;
	ck_assert_int_eq(removed, 4);
	await_text(sv2.err, "from systemd's fd store", 1);
	kill(sv2.pid, SIGTERM);
	ck_assert_int_eq(finish(&sv2, 10, "uffd-serve"), 0);
	out = slurp(sv2.out);
	ck_assert_uint_eq(num(out, "\"fds_leaked\""), 0);
	free(out);
	close(ns);
	env_cleanup(&e);
}
END_TEST

static Suite *serve_suite(void)
{
	Suite *s = suite_create("serve");
	TCase *tc;

	tc = CASE(restore_4k, 30);
	tcase_add_test(tc, test_restore_4k);
	tc = CASE(restore_2m, 30);
	tcase_add_test(tc, test_restore_2m);
	tc = CASE(json_forms, 40);
	tcase_add_loop_test(tc, test_json_forms, 0, sizeof(json_forms) / sizeof(json_forms[0]));
	tc = CASE(record_replay, 40);
	tcase_add_test(tc, test_record_replay);
	tc = CASE(fill_detach, 30);
	tcase_add_test(tc, test_fill_detach);
	tc = CASE(fill_writes, 30);
	tcase_add_test(tc, test_fill_writes);
	tc = CASE(balloon, 30);
	tcase_add_test(tc, test_balloon);
	tc = CASE(vm_killed, 30);
	tcase_add_test(tc, test_vm_killed);
	tc = CASE(drain, 40);
	tcase_add_loop_test(tc, test_drain, 0, 2);
	tc = CASE(drain_timeout, 30);
	tcase_add_loop_test(tc, test_drain_timeout, 0, 2);
	tc = CASE(multi, 40);
	tcase_add_test(tc, test_multi);
	tc = CASE(bad_handshake, 40);
	tcase_add_loop_test(tc, test_bad_handshake, 0, sizeof(bads) / sizeof(bads[0]));
	tc = CASE(wrong_mapping, 20);
	tcase_add_loop_test(tc, test_wrong_mapping, 0, 2);
	tc = CASE(connect_timeout, 20);
	tcase_add_test(tc, test_connect_timeout);
	tc = CASE(layers, 60);
	tcase_add_test(tc, test_layers);
	tc = CASE(bad_layers, 20);
	tcase_add_test(tc, test_bad_layers);
	tc = CASE(compressed, 60);
	tcase_add_test(tc, test_compressed);
	tc = CASE(compressed_layers, 90);
	tcase_add_loop_test(tc, test_compressed_layers, 0, 2);
	tc = CASE(bad_compressed, 30);
	tcase_add_test(tc, test_bad_compressed);
	tc = CASE(socket_path, 20);
	tcase_add_test(tc, test_socket_path);
	tc = CASE(fatal_mismatch, 30);
	tcase_add_loop_test(tc, test_fatal_mismatch, 0, 3);
	tc = CASE(fatal_signal_in_handshake, 30);
	tcase_add_test(tc, test_fatal_signal_in_handshake);
	tc = CASE(fatal_setup, 60);
	tcase_add_test(tc, test_fatal_setup);
	tc = CASE(fatal_read_error, 30);
	tcase_add_test(tc, test_fatal_read_error);
	tc = CASE(bad_memory, 20);
	tcase_add_loop_test(tc, test_bad_memory, 0, 3);
	tc = CASE(peer_refused, 40);
	tcase_add_loop_test(tc, test_peer_refused, 0, 2);
	tc = CASE(socket_owner, 30);
	tcase_add_loop_test(tc, test_socket_owner, 0, 2);
	tc = CASE(idle_peers, 40);
	tcase_add_test(tc, test_idle_peers);
	tc = CASE(threads_remove, 30);
	tcase_add_test(tc, test_threads_remove);
	tc = CASE(record_fill, 40);
	tcase_add_test(tc, test_record_fill);
	tc = CASE(record_checks, 20);
	tcase_add_loop_test(tc, test_record_checks, 0, 3);
	tc = CASE(metrics, 40);
	tcase_add_loop_test(tc, test_metrics, 0, 2);
	tc = CASE(drain_complete, 40);
	tcase_add_loop_test(tc, test_drain_complete, 0, 2);
	tc = CASE(drain_vm_gone, 40);
	tcase_add_loop_test(tc, test_drain_vm_gone, 0, 2);
	tc = CASE(stop_queued, 40);
	tcase_add_loop_test(tc, test_stop_queued, 0, 2);
	tc = CASE(sigterm_sweep, 90);
	tcase_add_loop_test(tc, test_sigterm_sweep, 0, 2);
	tc = CASE(socket_activation, 40);
	tcase_add_test(tc, test_socket_activation);
	tc = CASE(config_bad, 20);
	tcase_add_test(tc, test_config_bad);
	tc = CASE(fc_library, 20);
	tcase_add_test(tc, test_fc_library);
	tc = CASE(custom_handler, 40);
	tcase_add_loop_test(tc, test_custom_handler, 0, 2);
	tc = CASE(bad_trace, 60);
	tcase_add_loop_test(tc, test_bad_trace, 0, 4);
	tc = CASE(supervise_kill, 60);
	tcase_add_loop_test(tc, test_supervise_kill, 0, 3);
	tc = CASE(supervise_upgrade, 60);
	tcase_add_loop_test(tc, test_supervise_upgrade, 0, 3);
	tc = CASE(supervise_vm_gone, 30);
	tcase_add_test(tc, test_supervise_vm_gone);
	tc = CASE(supervise_multi, 60);
	tcase_add_test(tc, test_supervise_multi);
	tc = CASE(supervise_fd_store, 60);
	tcase_add_test(tc, test_supervise_fd_store);
	tc = CASE(supervise_drain, 60);
	tcase_add_test(tc, test_supervise_drain);
	return s;
}

int main(void)
{
	return harness_run(serve_suite());
}
