/* SPDX-License-Identifier: MIT */
/*
 * uffd-info: its JSON report checked against the library and the system
 * (uffd_probe, the sysctl, the device node, direct syscalls), its text
 * report, its options, and a run as an unprivileged user.
 * The binary's path comes from the environment: UFFD_INFO.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define NOBODY 65534
#define RUN_DEADLINE_MS 60000

/* ---- a small JSON reader: validation and lookup by a '/'-separated path ---- */

static const char *ws(const char *p)
{
	while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
		p++;
	return p;
}

static const char *skip_string(const char *p)
{
	if (*p != '"')
		return NULL;
	for (p++; *p != '"'; p++) {
		if (!*p || (unsigned char)*p < 0x20)
			return NULL;
		if (*p != '\\')
			continue;
		p++;
		if (*p == 'u') {
			for (int i = 1; i <= 4; i++)
				if (!strchr("0123456789abcdefABCDEF", p[i]) || !p[i])
					return NULL;
			p += 4;
		} else if (!*p || !strchr("\"\\/bfnrt", *p)) {
			return NULL;
		}
	}
	return p + 1;
}

static const char *skip_value(const char *p);

/* Members of an object ('}') or elements of an array (']'). */
static const char *skip_items(const char *p, char close)
{
	p = ws(p + 1);
	if (*p == close)
		return p + 1;
	for (;;) {
		if (close == '}') {
			p = skip_string(ws(p));
			if (!p || *(p = ws(p)) != ':')
				return NULL;
			p++;
		}
		p = skip_value(p);
		if (!p)
			return NULL;
		p = ws(p);
		if (*p == close)
			return p + 1;
		if (*p++ != ',')
			return NULL;
	}
}

static const char *skip_value(const char *p)
{
	char *end;

	p = ws(p);
	switch (*p) {
	case '"':
		return skip_string(p);
	case '{':
		return skip_items(p, '}');
	case '[':
		return skip_items(p, ']');
	case 't':
		return strncmp(p, "true", 4) ? NULL : p + 4;
	case 'f':
		return strncmp(p, "false", 5) ? NULL : p + 5;
	case 'n':
		return strncmp(p, "null", 4) ? NULL : p + 4;
	default:
		if (*p != '-' && (*p < '0' || *p > '9'))
			return NULL;
		strtod(p, &end);
		return end;
	}
}

static bool json_valid(const char *doc)
{
	const char *end = skip_value(doc);

	return end && !*ws(end);
}

/* One step of a path inside the container at p: the member's or element's value. */
static const char *step(const char *p, const char *name, size_t len)
{
	char close = *p == '{' ? '}' : ']';
	long index = close == ']' ? strtol(name, NULL, 10) : 0;

	if (*p != '{' && *p != '[')
		return NULL;
	p = ws(p + 1);
	for (long i = 0; p && *p != close; i++) {
		bool match = close == ']' ? i == index : false;

		if (close == '}') {
			const char *key = p + 1;

			p = skip_string(p);
			if (!p)
				return NULL;
			match = (size_t)(p - 1 - key) == len && !strncmp(key, name, len);
			p = ws(ws(p) + 1); /* past ':' */
		}
		if (match)
			return p;
		p = skip_value(p);
		if (p && *(p = ws(p)) == ',')
			p = ws(p + 1);
	}
	return NULL;
}

/* The value at path ("checks/minor_shmem/ok", "fixes/0/fix"), or NULL. */
static const char *jget(const char *doc, const char *path)
{
	const char *p = ws(doc);

	while (p && *path) {
		size_t len = strcspn(path, "/");

		p = step(p, path, len);
		path += len + (path[len] == '/');
	}
	return p;
}

/* 1 for true, 0 for false; the test fails for anything else. */
static bool jbool(const char *doc, const char *path)
{
	const char *v = jget(doc, path);

	ck_assert_msg(v && (!strncmp(v, "true", 4) || !strncmp(v, "false", 5)),
		      "%s is not a boolean", path);
	return *v == 't';
}

static bool jnull(const char *doc, const char *path)
{
	const char *v = jget(doc, path);

	ck_assert_msg(v, "%s is missing", path);
	return !strncmp(v, "null", 4);
}

static long long jnum(const char *doc, const char *path)
{
	const char *v = jget(doc, path);

	ck_assert_msg(v && (*v == '-' || (*v >= '0' && *v <= '9')), "%s is not a number", path);
	return strtoll(v, NULL, 10);
}

/* The string at path, unescaped (\uXXXX kept only below 0x80), in a static buffer. */
static const char *jstr(const char *doc, const char *path)
{
	static char buf[4096];
	const char *v = jget(doc, path);
	size_t n = 0;

	ck_assert_msg(v && *v == '"', "%s is not a string", path);
	for (v++; *v != '"' && n + 1 < sizeof(buf); v++) {
		if (*v == '\\') {
			v++;
			if (*v == 'n')
				buf[n++] = '\n';
			else if (*v == 'u') {
				buf[n++] = (char)strtol((char[]){ v[1], v[2], v[3], v[4], 0 }, NULL, 16);
				v += 4;
			} else
				buf[n++] = *v;
		} else {
			buf[n++] = *v;
		}
	}
	buf[n] = '\0';
	return buf;
}

/* ---- running uffd-info ---- */

struct run {
	int status; /* exit status, or -1 when it did not exit normally */
	char out[1 << 16];
};

static const char *info_path(void)
{
	const char *p = getenv("UFFD_INFO");

	return p && *p ? p : NULL;
}

/*
 * uid 65534 may not reach the build tree (a clone in a private home
 * directory), so it runs a copy of uffd-info and of the libuffd.so this
 * process loaded, in a directory of its own under /tmp.
 */
struct nobody_copy {
	char dir[32];
	char bin[64];
	char lib[64 + NAME_MAX];
	char env[64];	/* LD_LIBRARY_PATH=dir */
};

#define NOBODY_DIR "/tmp"

static bool nobody_dir_noexec(void)
{
	struct statvfs v;

	return statvfs(NOBODY_DIR, &v) == 0 && (v.f_flag & ST_NOEXEC);
}

static void copy_file(const char *from, const char *to, mode_t mode)
{
	int in = open(from, O_RDONLY | O_CLOEXEC), out;
	char buf[1 << 16];
	ssize_t n;

	ck_assert_msg(in >= 0, "open %s: %s", from, strerror(errno));
	out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	ck_assert_msg(out >= 0, "create %s: %s", to, strerror(errno));
	while ((n = read(in, buf, sizeof(buf))) > 0)
		ck_assert_int_eq(write(out, buf, (size_t)n), n);
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(fchmod(out, mode), 0);	/* whatever the umask */
	close(out);
	close(in);
}

static void nobody_copy_make(struct nobody_copy *c)
{
	Dl_info lib;
	char name[PATH_MAX];

	ck_assert_msg(dladdr((void *)uffd_probe, &lib) && lib.dli_fname,
		      "cannot tell which libuffd.so this test loaded");
	strcpy(c->dir, NOBODY_DIR "/uffd-info-XXXXXX");
	ck_assert_msg(mkdtemp(c->dir), "mkdtemp in %s: %s", NOBODY_DIR, strerror(errno));
	ck_assert_int_eq(chmod(c->dir, 0755), 0);
	snprintf(c->bin, sizeof(c->bin), "%s/uffd-info", c->dir);
	snprintf(name, sizeof(name), "%s", lib.dli_fname);
	snprintf(c->lib, sizeof(c->lib), "%s/%s", c->dir, basename(name));
	snprintf(c->env, sizeof(c->env), "LD_LIBRARY_PATH=%s", c->dir);
	copy_file(info_path(), c->bin, 0755);
	copy_file(lib.dli_fname, c->lib, 0644);
}

static void nobody_copy_remove(const struct nobody_copy *c)
{
	unlink(c->bin);
	unlink(c->lib);
	ck_assert_msg(rmdir(c->dir) == 0, "rmdir %s: %s", c->dir, strerror(errno));
}

static void child_exec(int out, struct nobody_copy *c, const char *arg)
{
	dup2(out, STDOUT_FILENO);
	if (c && (setgroups(0, NULL) || setgid(NOBODY) || setuid(NOBODY) || putenv(c->env)))
		_exit(125);
	execl(c ? c->bin : info_path(), "uffd-info", arg, (char *)NULL);
	_exit(127);
}

/* Runs uffd-info [arg], as nobody if asked; its stdout in r->out. */
static void run_info(struct run *r, bool nobody, const char *arg)
{
	struct pollfd p = { .events = POLLIN };
	struct nobody_copy c;
	size_t got = 0;
	int fds[2], st;
	ssize_t n;
	pid_t pid;

	if (nobody)
		nobody_copy_make(&c);
	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		child_exec(fds[1], nobody ? &c : NULL, arg);
	close(fds[1]);
	p.fd = fds[0];
	while (got + 1 < sizeof(r->out) && poll(&p, 1, RUN_DEADLINE_MS) > 0 &&
	       (n = read(fds[0], r->out + got, sizeof(r->out) - 1 - got)) > 0)
		got += (size_t)n;
	r->out[got] = '\0';
	close(fds[0]);
	kill(pid, SIGKILL); /* no-op unless it overran the deadline */
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	if (nobody)
		nobody_copy_remove(&c);
	r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	ck_assert_msg(r->status != 125 && r->status != 127, "could not start %s (status %d)",
		      nobody ? c.bin : info_path(), r->status);
}

static struct run *run_json(bool nobody)
{
	struct run *r = malloc(sizeof(*r));

	ck_assert_ptr_nonnull(r);
	run_info(r, nobody, "--json");
	ck_assert_msg(json_valid(r->out), "uffd-info --json printed invalid JSON: %.200s", r->out);
	ck_assert_int_eq(jnum(r->out, "exit_status"), r->status);
	ck_assert_int_eq(r->status, jbool(r->out, "core/ok") ? 0 : 1);
	return r;
}

#define NEED_BINARY()                                                        \
	do {                                                                 \
		if (!info_path())                                            \
			SKIP_TEST("UFFD_INFO is not set: run through meson"); \
	} while (0)

/* ---- direct checks of the system ---- */

static bool syscall_works(int flags)
{
	long fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | flags);

	if (fd >= 0)
		close((int)fd);
	return fd >= 0;
}

static bool dev_works(void)
{
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC), fd;

	if (dev < 0)
		return false;
	fd = ioctl(dev, _IO(0xAA, 0x00), O_CLOEXEC | O_NONBLOCK); /* USERFAULTFD_IOC_NEW */
	close(dev);
	if (fd >= 0)
		close(fd);
	return fd >= 0;
}

static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	ck_assert_int_eq(uname(&u), 0);
	ck_assert_int_eq(sscanf(u.release, "%d.%d", &ma, &mi), 2);
	return ma > major || (ma == major && mi >= minor);
}

/* A "no" always names what to change, never the catch-all. */
static void assert_fix_named(const char *doc, const char *row)
{
	char path[128];
	const char *fix;

	snprintf(path, sizeof(path), "%s/ok", row);
	if (jbool(doc, path)) {
		snprintf(path, sizeof(path), "%s/fix", row);
		ck_assert(jnull(doc, path));
		return;
	}
	snprintf(path, sizeof(path), "%s/fix", row);
	fix = jstr(doc, path);
	ck_assert_msg(*fix && !strstr(fix, "unexpected here"), "%s: fix \"%.200s\"", row, fix);
}

static const char *const check_keys[] = {
	"minor_shmem", "minor_hugetlb", "wp_anon", "wp_shmem", "wp_hugetlb", "move",
	"poison", "sigbus", "io_uring", "dirty_tracking", "kernel_faults", "event_fork",
	"missing_anon", "missing_hugetlb", "event_remove",
};
#define NR_CHECKS (sizeof(check_keys) / sizeof(check_keys[0]))

START_TEST(test_json_matches_library)
{
	uint64_t avail = 0;
	struct run *r;
	struct uffd *u = NULL;
	struct stat st;
	char path[128];
	bool lib;

	NEED_BINARY();
	r = run_json(false);
	ck_assert_int_eq(uffd_probe(&avail), 0);
	ck_assert_uint_eq(strtoull(jstr(r->out, "features/available"), NULL, 16), avail);
	for (unsigned bit = 0; bit < 17; bit++) {
		snprintf(path, sizeof(path), "features/%s/available", uffd_feature_name(1ull << bit));
		ck_assert_int_eq(jbool(r->out, path), !!(avail & (1ull << bit)));
		snprintf(path, sizeof(path), "features/%s/since", uffd_feature_name(1ull << bit));
		ck_assert_str_ne(jstr(r->out, path), "?");
	}
	ck_assert_int_eq(jnum(r->out, "sysctl/vm.unprivileged_userfaultfd"),
			 harness_read_long("/proc/sys/vm/unprivileged_userfaultfd"));
	ck_assert_int_eq(jbool(r->out, "access/dev_node/present"), stat("/dev/userfaultfd", &st) == 0);
	ck_assert_int_eq(jbool(r->out, "access/dev_userfaultfd/ok"), dev_works());
	if (!harness_valgrind()) {	/* valgrind lacks userfaultfd(2); uffd-info runs outside it */
		ck_assert_int_eq(jbool(r->out, "access/syscall/ok"), syscall_works(0));
		ck_assert_int_eq(jbool(r->out, "access/syscall_user_mode_only/ok"), syscall_works(1));
	}
	lib = uffd_open(&u, NULL) == 0;
	uffd_close(u);
	ck_assert_int_eq(jbool(r->out, "access/library_open/ok"), lib);
	ck_assert_int_eq(jbool(r->out, "root"), geteuid() == 0);
	ck_assert_int_eq(jnum(r->out, "uid"), getuid());
	for (unsigned i = 0; i < 4; i++) {
		static const char *const rows[] = { "syscall", "syscall_user_mode_only",
						    "dev_userfaultfd", "library_open" };

		snprintf(path, sizeof(path), "access/%s", rows[i]);
		assert_fix_named(r->out, path);
	}
	for (unsigned i = 0; i < NR_CHECKS; i++) {
		snprintf(path, sizeof(path), "checks/%s", check_keys[i]);
		assert_fix_named(r->out, path);
	}
	/* What this library needs works wherever the library opens with MINOR_SHMEM. */
	if (lib && (avail & UFFD_FEATURE_MINOR_SHMEM)) {
		ck_assert(jbool(r->out, "checks/minor_shmem/ok"));
		ck_assert(jbool(r->out, "checks/kernel_faults/ok"));
		ck_assert(jbool(r->out, "core/ok"));
		ck_assert_int_eq(r->status, 0);
	}
	free(r);
}
END_TEST

/* Root on a kernel with every feature: every check that needs no huge page works. */
START_TEST(test_json_root_checks)
{
	static const char *const need_root[] = { "wp_anon", "wp_shmem", "move", "poison",
						 "sigbus", "dirty_tracking", "event_fork", "missing_anon",
						 "event_remove" };
	uint64_t avail = 0;
	struct run *r;
	char path[128];

	NEED_BINARY();
	if (geteuid() != 0)
		SKIP_TEST("needs root");
	ck_assert_int_eq(uffd_probe(&avail), 0);
	if ((avail & UFFD_FEATURE_MOVE) == 0)
		SKIP_TEST("the kernel lacks UFFD_FEATURE_MOVE (Linux 6.8)");
	r = run_json(false);
	for (unsigned i = 0; i < sizeof(need_root) / sizeof(need_root[0]); i++) {
		snprintf(path, sizeof(path), "checks/%s/ok", need_root[i]);
		if (!jbool(r->out, path)) {
			snprintf(path, sizeof(path), "checks/%s/detail", need_root[i]);
			ck_abort_msg("%s: %.200s", need_root[i], jstr(r->out, path));
		}
	}
	if (kernel_at_least(6, 10) && harness_read_long("/proc/sys/kernel/io_uring_disabled") <= 0)
		ck_assert(jbool(r->out, "checks/io_uring/ok"));
	ck_assert(jbool(r->out, "cap_sys_ptrace"));
	ck_assert(!jbool(r->out, "access/user_mode_only_checks"));
	/* What uffd-serve needs works for root on such a kernel. */
	ck_assert_msg(jbool(r->out, "uffd_serve/ok"), "%s", jstr(r->out, "uffd_serve/detail"));
	/* A hugetlb check that fails names vm.nr_hugepages. */
	if (!jbool(r->out, "checks/minor_hugetlb/ok"))
		ck_assert_ptr_nonnull(strstr(jstr(r->out, "checks/minor_hugetlb/fix"), "vm.nr_hugepages"));
	free(r);
}
END_TEST

START_TEST(test_hugetlb)
{
	const char *why = NULL;
	size_t hps;
	struct run *r;

	NEED_BINARY();
	if (!harness_have_features(UFFD_FEATURE_MINOR_HUGETLBFS | UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
		SKIP_TEST("the kernel lacks MINOR_HUGETLBFS or WP_HUGETLBFS_SHMEM");
	hps = harness_hugepages(2, &why);
	if (!hps)
		SKIP_TEST("%s", why);
	r = run_json(false);
	ck_assert_int_eq(jnum(r->out, "hugepages/default_size_kb") * 1024, hps);
	ck_assert_int_ge(jnum(r->out, "hugepages/total"), 2);
	ck_assert_msg(jbool(r->out, "checks/minor_hugetlb/ok"), "%s", jstr(r->out, "checks/minor_hugetlb/detail"));
	ck_assert_msg(jbool(r->out, "checks/wp_hugetlb/ok"), "%s", jstr(r->out, "checks/wp_hugetlb/detail"));
	ck_assert_msg(jbool(r->out, "checks/missing_hugetlb/ok"), "%s", jstr(r->out, "checks/missing_hugetlb/detail"));
	ck_assert_msg(strstr(jstr(r->out, "uffd_serve/detail"), "2 MiB (hugetlb) guests: yes"), "%s",
		      jstr(r->out, "uffd_serve/detail"));
	free(r);
}
END_TEST

/* Whether uid 65534 can open a full userfaultfd here, by the rules of the kernel. */
static bool nobody_has_full_uffd(void)
{
	struct stat st;

	if (harness_read_long("/proc/sys/vm/unprivileged_userfaultfd") == 1)
		return true;
	return stat("/dev/userfaultfd", &st) == 0 && (st.st_mode & 0006) == 0006;
}

/* The unprivileged runs: root to switch users, a place to copy the binary to. */
#define NEED_NOBODY_RUN()                                                          \
	do {                                                                       \
		NEED_BINARY();                                                     \
		if (geteuid() != 0)                                                \
			SKIP_TEST("needs root to switch to uid %d", NOBODY);       \
		if (nobody_dir_noexec())                                           \
			SKIP_TEST(NOBODY_DIR " is mounted noexec: uid %d cannot run " \
				  "a copy of uffd-info from there", NOBODY);       \
		if (nobody_has_full_uffd())                                        \
			SKIP_TEST("this system lets every user open a full userfaultfd"); \
	} while (0)

static void assert_contains(const char *doc, const char *path, const char *what)
{
	const char *s = jstr(doc, path);

	ck_assert_msg(strstr(s, what), "%s (\"%.200s\") does not name %s", path, s, what);
}

START_TEST(test_unprivileged_json)
{
	uint64_t avail = 0;
	struct run *r;

	NEED_NOBODY_RUN();
	r = run_json(true);
	ck_assert_int_eq(r->status, 1);
	ck_assert(!jbool(r->out, "root"));
	ck_assert_int_eq(jnum(r->out, "uid"), NOBODY);
	ck_assert(!jbool(r->out, "cap_sys_ptrace"));
	ck_assert(!jbool(r->out, "access/syscall/ok"));
	ck_assert_str_eq(jstr(r->out, "access/syscall/brief"), "EPERM");
	assert_contains(r->out, "access/syscall/fix", "vm.unprivileged_userfaultfd=1");
	assert_contains(r->out, "access/syscall/fix", "CAP_SYS_PTRACE");
	ck_assert(jbool(r->out, "access/syscall_user_mode_only/ok"));
	ck_assert(!jbool(r->out, "access/dev_userfaultfd/ok"));
	if (jbool(r->out, "access/dev_node/present"))
		assert_contains(r->out, "access/dev_userfaultfd/fix", "chmod");
	ck_assert(!jbool(r->out, "access/library_open/ok"));
	assert_contains(r->out, "access/library_open/fix", "UFFD_OPEN_USER_MODE_ONLY");
	ck_assert(!jbool(r->out, "core/ok"));
	ck_assert_ptr_nonnull(jget(r->out, "fixes/0/fix"));
	/* The checks still ran, on a user-mode-only userfaultfd. */
	ck_assert(jbool(r->out, "access/user_mode_only_checks"));
	ck_assert_int_eq(uffd_probe(&avail), 0);
	ck_assert_uint_eq(strtoull(jstr(r->out, "features/available"), NULL, 16), avail);
	if (avail & UFFD_FEATURE_MINOR_SHMEM)
		ck_assert(jbool(r->out, "checks/minor_shmem/ok"));
	ck_assert(!jbool(r->out, "checks/kernel_faults/ok"));
	assert_contains(r->out, "checks/kernel_faults/detail", "EFAULT");
	ck_assert(!jbool(r->out, "checks/event_fork/ok"));
	assert_contains(r->out, "checks/event_fork/fix", "CAP_SYS_PTRACE");
	free(r);
}
END_TEST

START_TEST(test_unprivileged_text)
{
	struct run *r;

	NEED_NOBODY_RUN();
	r = malloc(sizeof(*r));
	ck_assert_ptr_nonnull(r);
	run_info(r, true, NULL);
	ck_assert_int_eq(r->status, 1);
	ck_assert_ptr_nonnull(strstr(r->out, "not root (uid 65534"));
	ck_assert_ptr_nonnull(strstr(r->out, "fix: sysctl vm.unprivileged_userfaultfd=1"));
	ck_assert_ptr_nonnull(strstr(r->out, "exit status 1"));
	free(r);
}
END_TEST

/* Whether the lines indented under the row at p include a "fix: " line. */
static bool has_fix_line(const char *p)
{
	while ((p = strchr(p, '\n')) && !strncmp(p, "\n      ", 7)) {
		if (!strncmp(p, "\n      fix: ", 12))
			return true;
		p++;
	}
	return false;
}

/* Each capability line: label, then yes/no in one column; every "no" is followed by its fix. */
START_TEST(test_text_aligned)
{
	const char *line, *col = NULL;
	struct run *r, *j;
	char label[128];

	NEED_BINARY();
	r = malloc(sizeof(*r));
	ck_assert_ptr_nonnull(r);
	run_info(r, false, NULL);
	j = run_json(false);
	ck_assert_int_eq(r->status, j->status);
	for (unsigned i = 0; i < NR_CHECKS; i++) {
		char path[128];

		snprintf(path, sizeof(path), "checks/%s/label", check_keys[i]);
		snprintf(label, sizeof(label), "\n  %s ", jstr(j->out, path));
		line = strstr(r->out, label);
		ck_assert_msg(line, "no line for %s", label + 3);
		line++;
		for (col = line + strlen(label) - 1; *col == ' '; col++)
			;
		ck_assert_int_eq(col - line, 39); /* the yes/no column */
		snprintf(path, sizeof(path), "checks/%s/ok", check_keys[i]);
		ck_assert_msg(!strncmp(col, jbool(j->out, path) ? "yes" : "no ", 3), "%.60s", line);
		if (col[0] == 'n')
			ck_assert_msg(has_fix_line(col), "no fix under %.40s", line);
	}
	ck_assert_ptr_nonnull(strstr(r->out, "\nVerdict\n"));
	free(r);
	free(j);
}
END_TEST

START_TEST(test_options)
{
	char want[64];
	struct run *r;

	NEED_BINARY();
	r = malloc(sizeof(*r));
	ck_assert_ptr_nonnull(r);
	run_info(r, false, "--help");
	ck_assert_int_eq(r->status, 0);
	ck_assert_ptr_nonnull(strstr(r->out, "Usage: uffd-info"));
	run_info(r, false, "--version");
	ck_assert_int_eq(r->status, 0);
	snprintf(want, sizeof(want), "uffd-info (libuffd) %d.%d.%d\n", LIBUFFD_VERSION_MAJOR,
		 LIBUFFD_VERSION_MINOR, LIBUFFD_VERSION_PATCH);
	ck_assert_str_eq(r->out, want);
	run_info(r, false, "--no-such-option");
	ck_assert_int_eq(r->status, 2);
	ck_assert_str_eq(r->out, "");
	run_info(r, false, "extra");
	ck_assert_int_eq(r->status, 2);
	free(r);
}
END_TEST

START_TEST(test_json_reader)
{
	const char *doc = "{\"a\": {\"b.c\": [1, {\"d\": \"x\\\"y\\u0041\"}], \"t\": true}, \"n\": null}";

	ck_assert(json_valid(doc));
	ck_assert(!json_valid("{\"a\": }"));
	ck_assert(!json_valid("{\"a\": 1,}"));
	ck_assert(!json_valid("{\"a\": 1} x"));
	ck_assert(!json_valid("{\"a\": \"\x01\"}"));
	ck_assert_int_eq(jnum(doc, "a/b.c/0"), 1);
	ck_assert_str_eq(jstr(doc, "a/b.c/1/d"), "x\"yA");
	ck_assert(jbool(doc, "a/t"));
	ck_assert(jnull(doc, "n"));
	ck_assert_ptr_null(jget(doc, "a/zz"));
	ck_assert_ptr_null(jget(doc, "a/b.c/2"));
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("info");
	TCase *tc = CASE(json, 60);

	tcase_add_test(tc, test_json_reader);
	tcase_add_test(tc, test_json_matches_library);
	tcase_add_test(tc, test_json_root_checks);
	tc = CASE(hugetlb, 60);
	tcase_add_test(tc, test_hugetlb);
	tc = CASE(unprivileged, 60);
	tcase_add_test(tc, test_unprivileged_json);
	tcase_add_test(tc, test_unprivileged_text);
	tc = CASE(text, 60);
	tcase_add_test(tc, test_text_aligned);
	tcase_add_test(tc, test_options);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
