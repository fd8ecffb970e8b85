/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

TCase *harness_tcase(Suite *s, const char *name, double timeout_s)
{
	TCase *tc = tcase_create(name);

	tcase_set_timeout(tc, timeout_s);
	suite_add_tcase(s, tc);
	return tc;
}

int harness_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

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
