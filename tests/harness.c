/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

/* Shared with forked test processes: how many tests skipped, and why. */
struct skip_log {
	int count;
	char reason[512];
};
static struct skip_log *skips;

void harness_skip(const char *fmt, ...)
{
	va_list ap;

	if (!skips)
		return;
	__atomic_add_fetch(&skips->count, 1, __ATOMIC_SEQ_CST);
	va_start(ap, fmt);
	vsnprintf(skips->reason, sizeof(skips->reason), fmt, ap);
	va_end(ap);
	fprintf(stderr, "SKIP: %s\n", skips->reason);
}

/* ---- fd and mapping accounting around every test (a checked fixture) ---- */

static struct {
	int fds;
	int maps;
	bool maps_on;
	char *maps_text;
} acct_state;

static char *read_maps(int *lines)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char *text = NULL;
	size_t size = 0;
	char line[512];
	FILE *out;

	*lines = 0;
	if (!f)
		return NULL;
	out = open_memstream(&text, &size);
	while (out && fgets(line, sizeof(line), f)) {
		/* Heap growth in a forked test process adds a [heap] VMA. */
		if (strstr(line, " [heap]"))
			continue;
		(*lines)++;
		fputs(line, out);
	}
	if (out)
		fclose(out);
	fclose(f);
	return text;
}

/*
 * Mapping counts are exact only when nothing maps memory behind the test's
 * back: sanitizer runtimes and valgrind do (shadow memory, allocator
 * regions, translated code), so only fds are counted there; glibc keeps joined threads' stacks and per-thread malloc
 * arenas unless told not to (tests/meson.build sets GLIBC_TUNABLES).
 */
static bool maps_accountable(void)
{
	const char *t = getenv("GLIBC_TUNABLES");

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	return false;
#endif
	return !harness_valgrind() && t &&
	       strstr(t, "glibc.pthread.stack_cache_size=0") &&
	       strstr(t, "glibc.malloc.arena_max=1");
}

static void *warm_thread(void *arg)
{
	return arg;
}

/* What libc allocates once per process on first use, before counting. */
static void warm_up(void)
{
	static bool done;
	pthread_t t;
	char *p;

	if (done)
		return;
	done = true;
	if (!pthread_create(&t, NULL, warm_thread, NULL))
		pthread_join(t, NULL);
	p = malloc(1 << 20);	/* an mmap()ed chunk: sets the dynamic threshold */
	free(p);
	free(read_maps(&(int){ 0 }));
	harness_count_fds();
	uffd_probe(NULL);
}

static void acct_setup(void)
{
	warm_up();
	acct_state.maps_on = maps_accountable();
	acct_state.fds = harness_count_fds();
	if (acct_state.maps_on)
		acct_state.maps_text = read_maps(&acct_state.maps);
}

static void report_new_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	char path[300], target[256];
	ssize_t n;

	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		n = readlink(path, target, sizeof(target) - 1);
		target[n < 0 ? 0 : n] = 0;
		fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
	}
	if (d)
		closedir(d);
}

/* Lines of a that b lacks, with a label. */
static void report_maps_diff(const char *label, const char *a, const char *b)
{
	const char *line = a, *nl;
	int shown = 0;

	for (; line && *line && shown < 10; line = nl + 1) {
		char buf[512];
		size_t len;

		nl = strchr(line, '\n');
		if (!nl)
			break;
		len = (size_t)(nl - line + 1) < sizeof(buf) ? (size_t)(nl - line + 1) : sizeof(buf) - 1;
		memcpy(buf, line, len);
		buf[len] = 0;
		if (!b || !strstr(b, buf)) {
			fprintf(stderr, "  %s: %s", label, buf);
			shown++;
		}
	}
}

static void acct_teardown(void)
{
	int fds = harness_count_fds(), maps = 0;
	char *text = acct_state.maps_on ? read_maps(&maps) : NULL;
	bool fd_leak = fds != acct_state.fds, map_leak = acct_state.maps_on && maps != acct_state.maps;

	if (fd_leak) {
		fprintf(stderr, "harness: case %s: %d open fds before the test, %d after; now open:\n",
			tcase_name(), acct_state.fds, fds);
		report_new_fds();
	}
	if (map_leak) {
		fprintf(stderr, "harness: case %s: %d mappings before the test, %d after\n",
			tcase_name(), acct_state.maps, maps);
		report_maps_diff("now", text, acct_state.maps_text);
		report_maps_diff("was", acct_state.maps_text, text);
	}
	free(text);
	free(acct_state.maps_text);
	acct_state.maps_text = NULL;
	ck_assert_msg(!fd_leak, "case %s leaks fds: %d open before the test, %d after",
		      tcase_name(), acct_state.fds, fds);
	ck_assert_msg(!map_leak, "case %s leaks mappings: %d before the test, %d after",
		      tcase_name(), acct_state.maps, maps);
}

TCase *harness_tcase(Suite *s, const char *name, double timeout_s)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, timeout_s);
	tcase_add_checked_fixture(tc, acct_setup, acct_teardown);
	suite_add_tcase(s, tc);
	return tc;
}

int harness_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	harness_valgrind();

	skips = mmap(NULL, sizeof(*skips), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (skips == MAP_FAILED)
		skips = NULL;
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (failed)
		return 1;
	if (skips && skips->count) {
		printf("%d test(s) skipped; last reason: %s\n", skips->count, skips->reason);
		return 77;
	}
	return 0;
}

bool harness_valgrind(void)
{
	static int on = -1;	/* set in harness_run(), before any thread */

	if (on < 0)
		on = getenv("HARNESS_VALGRIND") != NULL;
	return on;
}

/* Copies len bytes through a pipe: the kernel touches both ends. */
static void pipe_copy(volatile void *dst, const volatile void *src, size_t len)
{
	int p[2];
	ssize_t n;

	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	n = write(p[1], (const void *)src, len);
	ck_assert_msg(n == (ssize_t)len, "harness: write from %p failed: %s", (const void *)src,
		      n < 0 ? strerror(errno) : "short");
	n = read(p[0], (void *)dst, len);
	ck_assert_msg(n == (ssize_t)len, "harness: read into %p failed: %s", (void *)dst,
		      n < 0 ? strerror(errno) : "short");
	close(p[0]);
	close(p[1]);
}

unsigned char harness_load8(const volatile void *p)
{
	unsigned char v;

	if (!harness_valgrind())
		return *(const volatile unsigned char *)p;
	pipe_copy(&v, p, 1);
	return v;
}

void harness_store8(volatile void *p, unsigned char v)
{
	if (!harness_valgrind())
		*(volatile unsigned char *)p = v;
	else
		pipe_copy(p, &v, 1);
}

size_t harness_page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

bool harness_have_features(uint64_t features)
{
	uint64_t avail = 0;

	return uffd_probe(&avail) == 0 && (avail & features) == features;
}

uint64_t harness_pagemap(const void *addr)
{
	uint64_t entry = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	if (pread(fd, &entry, sizeof(entry),
		  (off_t)((uintptr_t)addr / harness_page_size() * sizeof(entry))) != sizeof(entry))
		entry = 0;
	close(fd);
	return entry;
}

void *harness_thread_start(void *(*fn)(void *), void *arg)
{
	pthread_t *t = malloc(sizeof(*t));

	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(pthread_create(t, NULL, fn, arg), 0);
	return t;
}

void *harness_thread_join(void *thread)
{
	void *ret = NULL;

	ck_assert_int_eq(pthread_join(*(pthread_t *)thread, &ret), 0);
	free(thread);
	return ret;
}

double harness_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

long harness_read_long(const char *path)
{
	FILE *f = fopen(path, "re");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static bool write_long(const char *path, long v)
{
	FILE *f = fopen(path, "we");
	bool ok;

	if (!f)
		return false;
	ok = fprintf(f, "%ld\n", v) > 0;
	return fclose(f) == 0 && ok;
}

#define NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"
static long saved_nr_hugepages = -1;
static pid_t saver;

static void restore_hugepages(void)
{
	if (saved_nr_hugepages >= 0 && getpid() == saver)
		write_long(NR_HUGEPAGES, saved_nr_hugepages);
}

static long free_hugepages(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	long v = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "HugePages_Free: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

static size_t default_hugepage_size(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	long kb = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Hugepagesize: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return (size_t)kb * 1024;
}

size_t harness_hugepages(unsigned n, const char **why)
{
	size_t hps = default_hugepage_size();
	long total, have = free_hugepages();

	if (!hps) {
		*why = "the kernel has no huge pages (no Hugepagesize in /proc/meminfo)";
		return 0;
	}
	if (have >= (long)n)
		return hps;
	if (geteuid() != 0) {
		*why = "not enough free huge pages and not root to reserve more (raise vm.nr_hugepages)";
		return 0;
	}
	total = harness_read_long(NR_HUGEPAGES);
	if (saved_nr_hugepages < 0 && total >= 0) {
		saved_nr_hugepages = total;
		saver = getpid();
		atexit(restore_hugepages);
	}
	if (total < 0 || !write_long(NR_HUGEPAGES, total + (long)n - have) ||
	    free_hugepages() < (long)n) {
		*why = "could not reserve huge pages through vm.nr_hugepages (memory too fragmented?)";
		return 0;
	}
	return hps;
}

int harness_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own fd */
}

void harness_scratch_dir(char *dir, size_t len, const char *prefix)
{
	ck_assert_int_lt(snprintf(dir, len, "/tmp/%s-XXXXXX", prefix), (int)len);
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

void harness_scratch_remove(const char *dir)
{
	char cmd[320];

	ck_assert_int_lt(snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir), (int)sizeof(cmd));
	ck_assert_int_eq(system(cmd), 0);
}

extern char **environ;

pid_t harness_spawn(const char *dir, const char *tag, char *const argv[])
{
	posix_spawn_file_actions_t fa;
	char out[256], err[256];
	pid_t pid;

	snprintf(out, sizeof(out), "%s/%s.out", dir, tag);
	snprintf(err, sizeof(err), "%s/%s.err", dir, tag);
	ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
	posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_eq(posix_spawn(&pid, argv[0], &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	return pid;
}

bool harness_wait(pid_t pid, double seconds, int *status)
{
	double end = harness_now() + seconds;

	while (waitpid(pid, status, WNOHANG) == 0) {
		if (harness_now() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, status, 0);
			return false;
		}
		usleep(1000);
	}
	return true;
}
