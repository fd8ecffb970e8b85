/* SPDX-License-Identifier: MIT */
/*
 * Shared test harness: Check suites whose test cases meson runs one by one
 * (CK_RUN_CASE), with skips that reach meson as exit status 77.
 */
#ifndef LIBUFFD_TEST_HARNESS_H
#define LIBUFFD_TEST_HARNESS_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Record why this test cannot run here, and leave it. */
#define SKIP_TEST(...)                           \
	do {                                     \
		harness_skip(__VA_ARGS__);       \
		return;                          \
	} while (0)

void harness_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Runs the suite (the case named by CK_RUN_CASE when set). Exit status:
 * 0 when every test passed, 77 when no test failed and at least one was
 * skipped, 1 on any failure.
 */
int harness_run(Suite *s);

/* A test case with a timeout, added to s. */
TCase *harness_tcase(Suite *s, const char *name, double timeout_s);
/*
 * `TCase *tc = CASE(name, seconds);` inside a suite builder whose Suite is
 * `s`. meson reads these lines to run each case as its own test.
 */
#define CASE(name, seconds) harness_tcase(s, #name, seconds)

/* A libuffd call that must succeed; the failure shows uffd_last_error(). */
#define ASSERT_OK(call)                                                    \
	do {                                                               \
		int err_ = (call);                                         \
		ck_assert_msg(err_ == 0, "%s = %d: %s", #call, err_,       \
			      uffd_last_error());                          \
	} while (0)

/* A libuffd call that must fail with err and a sentence holding words. */
#define ASSERT_ERR(call, err, words)                                       \
	do {                                                               \
		int err_ = (call);                                         \
		ck_assert_msg(err_ == (err), "%s = %d, want %d (%s)", #call, \
			      err_, (err), uffd_last_error());             \
		ck_assert_msg(strstr(uffd_last_error(), (words)),          \
			      "%s: message \"%s\" lacks \"%s\"", #call,    \
			      uffd_last_error(), (words));                 \
	} while (0)

/* Frequently needed facts and helpers. */
size_t harness_page_size(void);
bool harness_have_features(uint64_t features);
/* Pagemap entry of addr in this process (all bits), or 0 on failure. */
uint64_t harness_pagemap(const void *addr);
/* Runs fn(arg) in a new thread and returns its handle (pthread_t as an opaque). */
void *harness_thread_start(void *(*fn)(void *), void *arg);
void *harness_thread_join(void *thread);

/*
 * Huge pages: make sure n default-size huge pages are free, raising
 * vm.nr_hugepages when root; the old value is restored at exit.
 * Returns the huge page size, or 0 (with the reason in *why) when none can
 * be had.
 */
size_t harness_hugepages(unsigned n, const char **why);

/*
 * Under valgrind (HARNESS_VALGRIND set by `meson test --setup valgrind`).
 * Valgrind runs one thread at a time and a thread blocked in a userfault
 * (a plain load or store) never gives that turn back, so no other thread
 * could resolve its fault. The harness_load8/store8/copy helpers therefore
 * access memory through a pipe there: the kernel takes the fault inside
 * write(2)/read(2), while valgrind lets the other threads run. Elsewhere
 * they are plain accesses. Not for SIGBUS-mode memory (a kernel access gets
 * EFAULT there, not SIGBUS).
 */
bool harness_valgrind(void);
unsigned char harness_load8(const volatile void *p);
void harness_store8(volatile void *p, unsigned char v);
/* Skips the test under valgrind, with the reason. */
#define SKIP_UNDER_VALGRIND(why)                                        \
	do {                                                            \
		if (harness_valgrind())                                 \
			SKIP_TEST("cannot run under valgrind: %s", why); \
	} while (0)

/*
 * Seconds on the monotonic clock, for deadlines: a test that needs enough
 * concurrent work runs until it has it, not for a fixed time or count.
 */
double harness_now(void);

/* Number of open fds of this process. */
int harness_count_fds(void);

/* The number at the start of a file such as a sysctl, or -1. */
long harness_read_long(const char *path);

/*
 * Programs a test runs (uffd-serve, fc-vmm, kvm-vmm), each under a
 * deadline, their output in files of a scratch directory.
 */
/* A new directory /tmp/PREFIX-XXXXXX, its path in dir; the test fails when it cannot be made. */
void harness_scratch_dir(char *dir, size_t len, const char *prefix);
/* The directory and everything in it removed; the test fails when it cannot be. */
void harness_scratch_remove(const char *dir);
/* argv (NULL-terminated) started with stdout into DIR/TAG.out and stderr into DIR/TAG.err: its pid. */
pid_t harness_spawn(const char *dir, const char *tag, char *const argv[]);
/* Waits up to seconds for pid: true with its waitpid() status; false once it was killed (SIGKILL) and reaped. */
bool harness_wait(pid_t pid, double seconds, int *status);

#endif
