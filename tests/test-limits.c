/* SPDX-License-Identifier: MIT */
/*
 * Resource limits and misuse: no descriptors left (RLIMIT_NOFILE), no
 * locked memory (RLIMIT_MEMLOCK), io_uring refused (a seccomp filter in a
 * child), and the uffd closed under a running loop. Every call fails
 * cleanly with a sentence, or works; nothing leaks, nothing crashes.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

/* ---- RLIMIT_NOFILE ---- */

/* The lowest free descriptor: a limit of it leaves none, of it + k leaves k. */
static int next_fd(void)
{
	int fd = dup(0);

	ck_assert_int_ge(fd, 0);
	close(fd);
	return fd;
}

static void set_nofile(rlim_t n, struct rlimit *old)
{
	struct rlimit r;

	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, old), 0);
	r = *old;
	r.rlim_cur = n;
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &r), 0);
}

/* 0, or -EMFILE with a sentence that names the problem. */
static void check_emfile(int err, const char *call, int k)
{
	if (!err)
		return;
	fprintf(stderr, "%s with %d fds free: %s\n", call, k, uffd_last_error());
	ck_assert_msg(err == -EMFILE, "%s with %d fds free: %d (%s)", call, k, err, uffd_last_error());
	ck_assert_msg(strstr(uffd_last_error(), "EMFILE") || strstr(uffd_last_error(), "open files"),
		      "%s: the message does not say why: %s", call, uffd_last_error());
}

START_TEST(test_nofile)
{
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = 4 * harness_page_size(),
				       .modes = UFFDIO_REGISTER_MODE_MINOR, .fd = -1 };
	struct uffd_opts uo = { .size = sizeof(uo),
				.want_features = UFFD_FEATURES_DEFAULT | UFFD_FEATURE_WP_ASYNC };
	int fds = harness_count_fds(), emfile = 0;
	char *q = mmap(NULL, harness_page_size(), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct rlimit old;

	ck_assert_ptr_ne(q, MAP_FAILED);
	q[0] = 1;
	/* k free descriptors, for every k the calls need. */
	for (int k = 0; k <= 4; k++) {
		struct uffd *u = NULL;
		struct uffd_region *r = NULL;
		struct uffd_loop *l = NULL;
		struct uffd_span span;
		void *next;
		int err;

		set_nofile((rlim_t)next_fd() + (rlim_t)k, &old);
		err = uffd_open(&u, &uo);
		check_emfile(err, "uffd_open", k);
		emfile += err != 0;
		if (!err) {
			err = uffd_region_create(u, &ro, &r);
			check_emfile(err, "uffd_region_create", k);
			err = uffd_loop_new(&l, NULL);
			check_emfile(err, "uffd_loop_new", k);
			if (!err)
				check_emfile(uffd_loop_add(l, u, NULL, NULL), "uffd_loop_add", k);
			/* The pagemap descriptor is opened on first use. */
			err = uffd_register(u, q, harness_page_size(), UFFDIO_REGISTER_MODE_WP, NULL);
			if (!err)
				err = uffd_dirty_start(u, q, harness_page_size());
			ck_assert_msg(err == 0, "uffd_dirty_start: %s", uffd_last_error());
			err = uffd_dirty_scan(u, q, harness_page_size(), &span, 1, 0, &next);
			if (err < 0)
				check_emfile(err, "uffd_dirty_scan", k);
		}
		ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
		uffd_loop_free(l);
		uffd_region_destroy(r);
		uffd_close(u);
		ck_assert_int_eq(harness_count_fds(), fds);
	}
	ck_assert_int_gt(emfile, 0);	/* the limit really was reached */
	munmap(q, harness_page_size());
}
END_TEST

/* ---- a loop that must work: a child's faults on 16 pages, resolved with zeros ---- */

struct toucher {
	volatile unsigned char *p;
	size_t len;
	unsigned sum;
};

static void *touch(void *arg)
{
	struct toucher *t = arg;

	for (size_t i = 0; i < t->len; i += harness_page_size())
		t->sum += harness_load8(&t->p[i]);
	return NULL;
}

/* Exit status of a check done in a child: 0 fine, else the failing step. */
static int loop_resolves(bool expect_fallback)
{
	size_t ps = harness_page_size(), len = 16 * ps;
	struct uffd_loop_stats st;
	struct uffd_loop *l;
	struct toucher t;
	struct uffd *u;
	void *th;
	char *p;

	if (uffd_open(&u, NULL))
		return 10;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED || uffd_register(u, p, len, UFFDIO_REGISTER_MODE_MISSING, NULL))
		return 11;
	if (uffd_loop_new(&l, NULL)) {
		fprintf(stderr, "uffd_loop_new: %s\n", uffd_last_error());
		return 12;
	}
	if (expect_fallback && !strstr(uffd_last_error(), "falls back to poll(2) and read(2)")) {
		fprintf(stderr, "no fallback note: %s\n", uffd_last_error());
		return 13;
	}
	if (uffd_loop_add(l, u, NULL, NULL))
		return 14;
	t = (struct toucher){ (unsigned char *)p, len, 1 };
	th = harness_thread_start(touch, &t);
	for (int i = 0; i < 100; i++) {
		uffd_loop_stats(l, &st);
		if (st.faults_missing == 16)
			break;
		if (uffd_loop_run_once(l, 100) < 0)
			return 15;
	}
	harness_thread_join(th);
	uffd_loop_stats(l, &st);
	if (t.sum != 1 || st.faults_missing != 16)
		return 16;
	uffd_loop_free(l);
	uffd_close(u);
	munmap(p, len);
	return 0;
}

START_TEST(test_memlock)
{
	struct rlimit old, none = { 0, 0 };
	int err;

	/* Since Linux 5.12 io_uring charges its rings to the memory cgroup, not
	 * RLIMIT_MEMLOCK; on older kernels the loop falls back to poll(2). */
	ck_assert_int_eq(getrlimit(RLIMIT_MEMLOCK, &old), 0);
	ck_assert_int_eq(setrlimit(RLIMIT_MEMLOCK, &none), 0);
	err = loop_resolves(false);
	if (geteuid() == 0)	/* root may raise it again (CK_FORK=no runs on) */
		setrlimit(RLIMIT_MEMLOCK, &old);
	ck_assert_msg(err == 0, "the loop failed at step %d with RLIMIT_MEMLOCK 0: %s", err,
		      uffd_last_error());
}
END_TEST

/* ---- io_uring refused ---- */

static int refuse_io_uring(int err)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))
		return -errno;
	return 0;
}

START_TEST(test_uring_refused)
{
	static const int errs[] = { EPERM, ENOMEM };

	for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		int status = 0;
		pid_t pid = fork();

		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			if (refuse_io_uring(errs[i]))
				_exit(77);
			_exit(loop_resolves(true));
		}
		ck_assert_int_eq(waitpid(pid, &status, 0), pid);
		if (WIFEXITED(status) && WEXITSTATUS(status) == 77)
			SKIP_TEST("cannot install a seccomp filter here");
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "io_uring_setup refused with %s: child status 0x%x (step %d)",
			      strerror(errs[i]), status, WEXITSTATUS(status));
	}
}
END_TEST

/* ---- the uffd closed under a running loop ---- */

struct runner {
	struct uffd_loop *l;
	int ret;
	char msg[512];
};

static void *run_loop(void *arg)
{
	struct runner *r = arg;

	r->ret = uffd_loop_run(r->l);
	snprintf(r->msg, sizeof(r->msg), "%s", uffd_last_error());
	return NULL;
}

START_TEST(test_closed_under_loop)
{
	size_t ps = harness_page_size();
	struct runner r = { 0 };
	struct toucher t;
	struct uffd *u;
	void *loop_th, *touch_th;
	char *p;
	int fd, null;

	/* Open question: an access through a system call (the harness's valgrind
	 * path) to a uffd whose fd was closed stayed pending in handle_userfault
	 * with the loop's poll(2) never woken; a plain load is delivered. */
	SKIP_UNDER_VALGRIND("its toucher must fault from user mode, which deadlocks under valgrind");
	ck_assert_int_eq(uffd_open(&u, NULL), 0);
	p = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(p, MAP_FAILED);
	ck_assert_int_eq(uffd_register(u, p, ps, UFFDIO_REGISTER_MODE_MISSING, NULL), 0);
	ck_assert_int_eq(uffd_loop_new(&r.l, NULL), 0);
	ck_assert_int_eq(uffd_loop_add(r.l, u, NULL, NULL), 0);
	loop_th = harness_thread_start(run_loop, &r);
	usleep(20000);		/* the loop waits on the uffd */
	/* The mistake: the fd goes while the loop watches it. */
	fd = uffd_fd(u);
	ck_assert_int_eq(close(fd), 0);
	/* A fault reaches the loop, which can no longer resolve it. */
	t = (struct toucher){ (unsigned char *)p, ps, 0 };
	touch_th = harness_thread_start(touch, &t);
	harness_thread_join(loop_th);
	fprintf(stderr, "uffd_loop_run: %d: %s\n", r.ret, r.msg);
	ck_assert_msg(r.ret == -EBADF, "uffd_loop_run returned %d (%s)", r.ret, r.msg);
	ck_assert_msg(strstr(r.msg, "EBADF"), "message: %s", r.msg);
	/* Freeing the loop drops the last reference to the uffd: the toucher goes on. */
	uffd_loop_free(r.l);
	harness_thread_join(touch_th);
	ck_assert_uint_eq(t.sum, 0);
	/* The handle still owns "its" fd number: give it one to close. */
	null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(null, 0);
	if (null != fd) {
		ck_assert_int_eq(dup2(null, fd), fd);
		close(null);
	}
	uffd_close(u);
	munmap(p, ps);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("limits");
	TCase *tc = CASE(nofile, 20);

	tcase_add_test(tc, test_nofile);
	tc = CASE(memlock, 20);
	tcase_add_test(tc, test_memlock);
	tc = CASE(uring_refused, 20);
	tcase_add_test(tc, test_uring_refused);
	tc = CASE(closed_under_loop, 20);
	tcase_add_test(tc, test_closed_under_loop);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
