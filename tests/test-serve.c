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
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

extern char **environ;

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
	snprintf(e->dir, sizeof(e->dir), "/tmp/uffd-serve-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(e->dir));
	path_in(e, e->sock, sizeof(e->sock), "sock");
	path_in(e, e->snap, sizeof(e->snap), "snap");
	path_in(e, e->trace, sizeof(e->trace), "trace");
	if (mib)
		write_snapshot(e->snap, mib);
	return true;
}

static void env_cleanup(struct env *e)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
	ck_assert_int_eq(system(cmd), 0);
}

#define SETUP(e, mib)                                                               \
	do {                                                                        \
		if (!env_setup(e, mib))                                             \
			SKIP_TEST("UFFD_SERVE or FC_VMM is not set: uffd-serve (tools with json-c) or fc-vmm (examples) is not built, or the test runs outside meson"); \
	} while (0)

/* Starts argv (NULL-terminated) with stdout and stderr into files named after tag. */
static void spawn(const struct env *e, struct proc *p, const char *tag, char *const argv[])
{
	posix_spawn_file_actions_t fa;

	snprintf(p->out, sizeof(p->out), "%s/%s.out", e->dir, tag);
	snprintf(p->err, sizeof(p->err), "%s/%s.err", e->dir, tag);
	ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
	posix_spawn_file_actions_addopen(&fa, 1, p->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_addopen(&fa, 2, p->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_eq(posix_spawn(&p->pid, argv[0], &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
}

/* Waits up to seconds for p; kills it and fails when it does not end. Returns its exit status. */
static int finish(struct proc *p, double seconds, const char *what)
{
	double end = harness_now() + seconds;

	while (waitpid(p->pid, &p->status, WNOHANG) == 0) {
		if (harness_now() > end) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, &p->status, 0);
			ck_abort_msg("%s did not end within %.0f s", what, seconds);
		}
		usleep(2000);
	}
	ck_assert_msg(WIFEXITED(p->status), "%s died of signal %d", what, WTERMSIG(p->status));
	return WEXITSTATUS(p->status);
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
 * millisecond, and the victim is killed 100 ms after it resumed. Returns
 * the serve's --json summary, once the serve ended with 0.
 */
static char *interrupted(struct env *e, bool kill_vm)
{
	struct proc sv, vm;

	spawn(e, &sv, "serve", (char *[]){ (char *)e->serve, "--socket", e->sock, "--memory", e->snap,
					   "--json", NULL });
	spawn(e, &vm, "vmm", (char *[]){ (char *)e->vmm, "--socket", e->sock, "--memory", e->snap,
					 "--pace-us", "1000", "--deadline", "40", NULL });
	await_text(vm.out, "FCVMM resumed", 10);
	usleep(100000);
	kill(kill_vm ? vm.pid : sv.pid, kill_vm ? SIGKILL : SIGTERM);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 0);
	kill(vm.pid, SIGKILL);	/* after a SIGTERM to the serve its next fault has nobody to serve it */
	waitpid(vm.pid, &vm.status, 0);
	return slurp(sv.out);
}

/* The VM killed in the middle of its restore: the serve notices, ends with 0, leaks nothing. */
START_TEST(test_vm_killed)
{
	struct env e;
	char *json;

	SETUP(&e, SNAP_MIB);
	json = interrupted(&e, true);
	ck_assert_msg(strstr(json, "\"end\":\"vm-exit\""), "%s", json);
	ck_assert_uint_eq(num(json, "\"fds_leaked\""), 0);
	ck_assert_uint_gt(num(json, "\"missing\""), 0);
	ck_assert_uint_lt(num(json, "\"present\""), num(json, "\"total\""));
	free(json);
	env_cleanup(&e);
}
END_TEST

/* SIGTERM ends the serve cleanly, with its summary. */
START_TEST(test_sigterm)
{
	struct env e;
	char *json;

	SETUP(&e, SNAP_MIB);
	json = interrupted(&e, false);
	ck_assert_msg(strstr(json, "\"end\":\"signal\""), "%s", json);
	ck_assert_uint_eq(num(json, "\"fds_leaked\""), 0);
	ck_assert_uint_gt(num(json, "\"missing\""), 0);
	free(json);
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

/* The serve's stderr holds exactly one error line, with want in it. */
static void assert_one_error(const char *file, const char *want)
{
	char *err = slurp(file), *line = err, *nl;
	int errors = 0;

	for (; *line; line = nl + 1) {
		if (!(nl = strchr(line, '\n')))
			break;
		*nl = '\0';
		errors += !strstr(line, "listening on");
		if (!strstr(line, "listening on"))
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
	int s;

	SETUP(&e, SNAP_MIB);
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--timeout", "300", NULL });
	s = connect_retry(e.sock);
	if (b->json)
		send_message(s, b->json, b->fd);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), b->exit);
	close(s);
	assert_one_error(sv.err, b->line);
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
	struct proc sv;
	int s;

	if (access("/sys/kernel/mm/hugepages/hugepages-2048kB", F_OK))
		SKIP_TEST("no 2 MiB huge pages on this machine");
	SETUP(&e, SNAP_MIB);
	map = mmap(NULL, 6 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(map, MAP_FAILED);
	a = ((uintptr_t)map + 2 * MIB - 1) & ~(uintptr_t)(2 * MIB - 1);
	/* Base pages declared as huge ones; then 2 MiB past the end of the mapping. */
	snprintf(json, sizeof(json), "[" "{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":0,\"page_size\":%llu}]",
		 (unsigned long long)(_i ? (uintptr_t)map + 4 * MIB : a), (unsigned long long)(_i ? 4 * MIB : 2 * MIB),
		 (unsigned long long)(_i ? 4096 : 2 * MIB));
	spawn(&e, &sv, "serve", (char *[]){ (char *)e.serve, "--socket", e.sock, "--memory", e.snap,
					    "--timeout", "300", NULL });
	s = connect_retry(e.sock);
	send_message(s, json, FD_UFFD);
	ck_assert_int_eq(finish(&sv, 10, "uffd-serve"), 5);
	close(s);
	assert_one_error(sv.err, want[_i]);
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
	tc = CASE(balloon, 30);
	tcase_add_test(tc, test_balloon);
	tc = CASE(vm_killed, 30);
	tcase_add_test(tc, test_vm_killed);
	tc = CASE(sigterm, 30);
	tcase_add_test(tc, test_sigterm);
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
	tc = CASE(socket_path, 20);
	tcase_add_test(tc, test_socket_path);
	return s;
}

int main(void)
{
	return harness_run(serve_suite());
}
