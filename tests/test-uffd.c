/* SPDX-License-Identifier: MIT */
/* uffd.c: opening, the feature handshake, fallbacks, last-error text. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

/* The kernel's set, asked directly on a throwaway fd. */
static uint64_t raw_probe(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && errno == ENOSYS) {	/* valgrind lacks the system call */
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		ck_assert_int_ge(dev, 0);
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(dev);
	}
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ioctl(fd, UFFDIO_API, &api), 0);
	close(fd);
	return api.features;
}

/* The enabled features as the kernel reports them in fdinfo. */
static uint64_t fdinfo_features(int fd)
{
	char path[64], line[256];
	unsigned long long feats = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "re");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "API:\t%*x:%llx:", &feats) == 1)
			break;
	fclose(f);
	return feats & ~(1ull << 31); /* UFFD_FEATURE_INITIALIZED */
}

START_TEST(test_probe_matches_raw)
{
	uint64_t avail = 0, again = 0;

	ck_assert_int_eq(uffd_probe(&avail), 0);
	ck_assert_uint_eq(avail, raw_probe());
	ck_assert_int_eq(uffd_probe(&again), 0);
	ck_assert_uint_eq(again, avail);
	ck_assert_int_eq(uffd_probe(NULL), -EINVAL);
	ck_assert_str_ne(uffd_last_error(), "");
}
END_TEST

START_TEST(test_open_default)
{
	struct uffd *u = NULL;
	uint64_t avail = 0;
	int fd, fl;

	ck_assert_int_eq(uffd_probe(&avail), 0);
	ck_assert_int_eq(uffd_open(&u, NULL), 0);
	ck_assert_uint_eq(uffd_features(u), UFFD_FEATURES_DEFAULT & avail);
	/* This kernel (6.18) has the features the library relies on. */
	ck_assert_uint_ne(uffd_features(u) & UFFD_FEATURE_MINOR_SHMEM, 0);
	ck_assert_uint_ne(uffd_features(u) & UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0);
	ck_assert_uint_eq(uffd_features(u) & (UFFD_FEATURE_SIGBUS | UFFD_FEATURE_WP_ASYNC |
					      UFFD_FEATURE_EXACT_ADDRESS | UFFD_FEATURE_EVENT_FORK), 0);
	fd = uffd_fd(u);
	ck_assert_int_ge(fd, 0);
	fl = fcntl(fd, F_GETFL);
	ck_assert_int_ne(fl & O_NONBLOCK, 0);
	ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
	ck_assert_uint_eq(fdinfo_features(fd) & ~(uint64_t)UFFD_FEATURE_WP_UNPOPULATED,
			  uffd_features(u) & ~(uint64_t)UFFD_FEATURE_WP_UNPOPULATED);
	uffd_close(u);
	uffd_close(NULL);
}
END_TEST

START_TEST(test_open_exact_features)
{
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_MINOR_SHMEM,
			       .want_features = UFFD_FEATURE_EVENT_REMOVE | (1ull << 50) };
	struct uffd *u = NULL;

	ck_assert_int_eq(uffd_open(&u, &o), 0);
	/* Defaults are not added when opts is given; unknown wants ignored. */
	ck_assert_uint_eq(uffd_features(u), UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMOVE);
	ck_assert_uint_eq(fdinfo_features(uffd_fd(u)), uffd_features(u));
	uffd_close(u);
}
END_TEST

START_TEST(test_open_missing_feature_no_leak)
{
	struct uffd_opts o = { .size = sizeof(o), .features = 1ull << 40 };
	struct uffd *u = (struct uffd *)&o;
	int fds = harness_count_fds();

	ck_assert_int_eq(uffd_open(&u, &o), -EOPNOTSUPP);
	ck_assert_ptr_null(u);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "bit 40"));
	ck_assert_int_eq(harness_count_fds(), fds);
}
END_TEST

START_TEST(test_open_bad_opts)
{
	struct {
		struct uffd_opts o;
		uint64_t future;
	} big = { .o = { .size = sizeof(big) }, .future = 1 };
	struct uffd_opts small = { .size = 2 };
	struct uffd_opts flags = { .size = sizeof(flags), .flags = 1u << 9 };
	struct uffd *u;

	ck_assert_int_eq(uffd_open(NULL, NULL), -EINVAL);
	ck_assert_int_eq(uffd_open(&u, &big.o), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "larger"));
	big.future = 0;	/* a newer caller's zeroed tail is fine */
	ck_assert_int_eq(uffd_open(&u, &big.o), 0);
	uffd_close(u);
	ck_assert_int_eq(uffd_open(&u, &small), -EINVAL);
	/* A size that cuts a field in two (here the flags) is refused. */
	small.size = offsetof(struct uffd_opts, flags) + 2;
	ck_assert_int_eq(uffd_open(&u, &small), -EINVAL);
	ck_assert_int_eq(uffd_open(&u, &flags), -EINVAL);
	ck_assert_int_eq(uffd_fd(NULL), -EINVAL);
	ck_assert_uint_eq(uffd_features(NULL), 0);
}
END_TEST

START_TEST(test_feature_names)
{
	ck_assert_str_eq(uffd_feature_name(UFFD_FEATURE_MINOR_SHMEM), "MINOR_SHMEM");
	ck_assert_str_eq(uffd_feature_name(UFFD_FEATURE_MOVE), "MOVE");
	ck_assert_str_eq(uffd_feature_name(UFFD_FEATURE_PAGEFAULT_FLAG_WP), "PAGEFAULT_FLAG_WP");
	ck_assert_ptr_null(uffd_feature_name(0));
	ck_assert_ptr_null(uffd_feature_name(3));
	ck_assert_ptr_null(uffd_feature_name(1ull << 17));
	ck_assert_uint_eq(UFFD_FEATURES_DEFAULT, 0x17731);
}
END_TEST

START_TEST(test_open_fd_wraps)
{
	struct uffd *u, *w;
	int dup_fd;

	ck_assert_int_eq(uffd_open(&u, NULL), 0);
	dup_fd = fcntl(uffd_fd(u), F_DUPFD_CLOEXEC, 0);
	ck_assert_int_ge(dup_fd, 0);
	ck_assert_int_eq(uffd_open_fd(&w, dup_fd, uffd_features(u)), 0);
	ck_assert_int_eq(uffd_fd(w), dup_fd);
	uffd_close(w);
	ck_assert_int_eq(fcntl(dup_fd, F_GETFD), -1);
	ck_assert_int_eq(uffd_open_fd(&w, 0 + STDIN_FILENO, 0), -EINVAL);
	ck_assert_int_eq(uffd_open_fd(&w, -1, 0), -EINVAL);
	ck_assert_int_eq(uffd_open_fd(&w, 999, 0), -EBADF);
	uffd_close(u);
}
END_TEST

/* In a child that drops to nobody: open fails, the message names each way out. */
static int unprivileged_child(void)
{
	struct uffd_opts umo = { .size = sizeof(umo), .flags = UFFD_OPEN_USER_MODE_ONLY,
				 .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd *u = NULL;
	const char *e;
	int err;

	if (setgid(65534) || setuid(65534))
		return 10;
	err = uffd_open(&u, NULL);
	if (err != -EPERM && err != -EACCES)
		return 11;
	e = uffd_last_error();
	if (!strstr(e, "vm.unprivileged_userfaultfd") || !strstr(e, "/dev/userfaultfd") ||
	    !strstr(e, "CAP_SYS_PTRACE") || !strstr(e, "UFFD_OPEN_USER_MODE_ONLY"))
		return 12;
	if (uffd_open(&u, &umo) != 0)
		return 13;
	if (!(uffd_features(u) & UFFD_FEATURE_MINOR_SHMEM))
		return 14;
	uffd_close(u);
	return 0;
}

START_TEST(test_open_unprivileged)
{
	int status;
	pid_t pid;

	if (geteuid() != 0)
		SKIP_TEST("needs root to drop to an unprivileged uid");
	SKIP_UNDER_VALGRIND("valgrind does not implement the userfaultfd(2) system call");
	if (access("/proc/sys/vm/unprivileged_userfaultfd", R_OK) == 0) {
		FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "re");
		int v = 0;

		ck_assert_int_eq(fscanf(f, "%d", &v), 1);
		fclose(f);
		if (v)
			SKIP_TEST("vm.unprivileged_userfaultfd=1 lets everyone open a userfaultfd");
	}
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(unprivileged_child());
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert(WIFEXITED(status));
	ck_assert_int_eq(WEXITSTATUS(status), 0);
}
END_TEST

START_TEST(test_open_no_dev)
{
	struct uffd_opts o = { .size = sizeof(o), .flags = UFFD_OPEN_NO_DEV,
			       .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd *u;

	SKIP_UNDER_VALGRIND("valgrind does not implement the userfaultfd(2) system call");
	ck_assert_int_eq(uffd_open(&u, &o), 0);
	uffd_close(u);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("uffd");
	TCase *tc = CASE(handshake, 20);

	tcase_add_test(tc, test_probe_matches_raw);
	tcase_add_test(tc, test_open_default);
	tcase_add_test(tc, test_open_exact_features);
	tcase_add_test(tc, test_open_missing_feature_no_leak);
	tcase_add_test(tc, test_open_bad_opts);
	tcase_add_test(tc, test_feature_names);
	tcase_add_test(tc, test_open_fd_wraps);
	tc = CASE(fallbacks, 20);
	tcase_add_test(tc, test_open_unprivileged);
	tcase_add_test(tc, test_open_no_dev);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
