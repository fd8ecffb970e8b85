/* SPDX-License-Identifier: MIT */
/*
 * Bad input at the API boundary: one table of calls, each expected to fail
 * with a precise -errno and a fresh uffd_last_error() sentence, and never to
 * crash, hang or leak.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define WP      UFFDIO_REGISTER_MODE_WP
#define MINOR   UFFDIO_REGISTER_MODE_MINOR

/* What the bad calls work on. */
struct fx {
	size_t ps;
	struct uffd *u;		/* default features */
	struct uffd *bare;	/* opened with no features */
	struct uffd *closed;	/* its fd was closed behind its back */
	struct uffd *devnull;	/* its fd is /dev/null now */
	int closed_fd, devnull_fd;
	char *reg;		/* 4 pages, registered MISSING with u */
	char *unreg;		/* 4 pages, not registered */
	char *hole;		/* 4 pages, unmapped */
	char *shm;		/* 1 shmem page */
	int memfd;
	struct uffd_event ev[4];
	struct uffd *out;
	struct uffd_region *region;	/* never made */
	struct uffd_handoff *handoff;	/* never made */
	uint64_t avail;
};

#define PS (f->ps)
#define HIGH ((void *)(uintptr_t)0xffff800000000000ull)	/* beyond user space */
#define WRAP ((void *)(uintptr_t)-(uintptr_t)(2 * 4096))

/*
 * X(name, errno, call): the call runs with `f` in scope. Every row is run
 * twice, after two different earlier errors, to see that it sets its own
 * sentence.
 */
#define BAD_CALLS(X)                                                                         \
	/* the handle */                                                                     \
	X(open_null_out, EINVAL, uffd_open(NULL, NULL))                                      \
	X(open_size_zero, EINVAL, uffd_open(&f->out, &(struct uffd_opts){ .size = 0 }))      \
	X(open_unknown_flags, EINVAL,                                                        \
	  uffd_open(&f->out, &(struct uffd_opts){ .size = sizeof(struct uffd_opts), .flags = 1u << 7 })) \
	X(open_unknown_feature, EOPNOTSUPP,                                                  \
	  uffd_open(&f->out, &(struct uffd_opts){ .size = sizeof(struct uffd_opts), .features = 1ull << 45 })) \
	X(open_fd_null_out, EINVAL, uffd_open_fd(NULL, uffd_fd(f->u), 0))                   \
	X(open_fd_negative, EINVAL, uffd_open_fd(&f->out, -3, 0))                            \
	X(open_fd_not_uffd, EINVAL, uffd_open_fd(&f->out, f->memfd, 0))                      \
	X(open_fd_closed, EBADF, uffd_open_fd(&f->out, f->closed_fd, 0))                     \
	X(open_fd_unknown_feature, EINVAL, uffd_open_fd(&f->out, uffd_fd(f->u), 1ull << 44)) \
	X(probe_null, EINVAL, uffd_probe(NULL))                                              \
	X(fd_null, EINVAL, uffd_fd(NULL))                                                    \
	/* registration */                                                                   \
	X(register_null, EINVAL, uffd_register(NULL, f->unreg, PS, MISSING, NULL))           \
	X(register_unaligned_addr, EINVAL, uffd_register(f->u, f->unreg + 1, PS, MISSING, NULL)) \
	X(register_unaligned_len, EINVAL, uffd_register(f->u, f->unreg, PS + 8, MISSING, NULL)) \
	X(register_zero_len, EINVAL, uffd_register(f->u, f->unreg, 0, MISSING, NULL))        \
	X(register_wrap, EINVAL, uffd_register(f->u, WRAP, 4 * PS, MISSING, NULL))           \
	X(register_mode_zero, EINVAL, uffd_register(f->u, f->unreg, PS, 0, NULL))            \
	X(register_unknown_mode, EINVAL, uffd_register(f->u, f->unreg, PS, MISSING | 1u << 6, NULL)) \
	X(register_minor_anon, EINVAL, uffd_register(f->u, f->unreg, PS, MINOR, NULL))       \
	X(register_hole, EINVAL, uffd_register(f->u, f->hole, PS, MISSING, NULL))            \
	X(register_kernel_space, EINVAL, uffd_register(f->u, HIGH, PS, MISSING, NULL))       \
	X(register_other_handle, EBUSY, uffd_register(f->bare, f->reg, PS, MISSING, NULL))   \
	X(register_wp_no_feature, EOPNOTSUPP, uffd_register(f->bare, f->unreg, PS, WP, NULL)) \
	X(register_minor_no_feature, EOPNOTSUPP, uffd_register(f->bare, f->shm, PS, MINOR, NULL)) \
	X(register_closed_fd, EBADF, uffd_register(f->closed, f->unreg, PS, MISSING, NULL))  \
	X(register_devnull_fd, ENOTTY, uffd_register(f->devnull, f->unreg, PS, MISSING, NULL)) \
	X(unregister_null, EINVAL, uffd_unregister(NULL, f->reg, PS))                        \
	X(unregister_unaligned, EINVAL, uffd_unregister(f->u, f->reg + 64, PS))              \
	X(unregister_zero_len, EINVAL, uffd_unregister(f->u, f->reg, 0))                     \
	X(unregister_hole, EINVAL, uffd_unregister(f->u, f->hole, PS))                       \
	X(unregister_closed_fd, EBADF, uffd_unregister(f->closed, f->reg, PS))               \
	/* copy */                                                                           \
	X(copy_null_handle, EINVAL, uffd_copy(NULL, f->reg, f->unreg, PS, 0, NULL))          \
	X(copy_null_src, EINVAL, uffd_copy(f->u, f->reg, NULL, PS, 0, NULL))                 \
	X(copy_unaligned_dst, EINVAL, uffd_copy(f->u, f->reg + 8, f->unreg, PS, 0, NULL))    \
	X(copy_unaligned_len, EINVAL, uffd_copy(f->u, f->reg, f->unreg, PS - 1, 0, NULL))    \
	X(copy_zero_len, EINVAL, uffd_copy(f->u, f->reg, f->unreg, 0, 0, NULL))              \
	X(copy_wrap_dst, EINVAL, uffd_copy(f->u, WRAP, f->unreg, 4 * PS, 0, NULL))           \
	X(copy_wrap_src, EINVAL, uffd_copy(f->u, f->reg, WRAP, 4 * PS, 0, NULL))             \
	X(copy_unknown_flag, EINVAL, uffd_copy(f->u, f->reg, f->unreg, PS, 1u << 20, NULL))  \
	X(copy_src_holes_flag, EINVAL, uffd_copy(f->u, f->reg, f->unreg, PS, UFFD_ALLOW_SRC_HOLES, NULL)) \
	X(copy_unregistered, ENOENT, uffd_copy(f->u, f->unreg, f->reg, PS, 0, NULL))         \
	X(copy_hole, ENOENT, uffd_copy(f->u, f->hole, f->unreg, PS, 0, NULL))                \
	X(copy_src_hole, EFAULT, uffd_copy(f->u, f->reg, f->hole, PS, 0, NULL))              \
	X(copy_map_wp_not_wp, EINVAL, uffd_copy(f->u, f->reg, f->unreg, PS, UFFD_MAP_WP, NULL)) \
	X(copy_closed_fd, EBADF, uffd_copy(f->closed, f->reg, f->unreg, PS, 0, NULL))        \
	X(copy_devnull_fd, ENOTTY, uffd_copy(f->devnull, f->reg, f->unreg, PS, 0, NULL))    \
	/* zeropage, continue, poison */                                                     \
	X(zeropage_null_handle, EINVAL, uffd_zeropage(NULL, f->reg, PS, 0, NULL))            \
	X(zeropage_unaligned, EINVAL, uffd_zeropage(f->u, f->reg + 1, PS, 0, NULL))          \
	X(zeropage_map_wp_flag, EINVAL, uffd_zeropage(f->u, f->reg, PS, UFFD_MAP_WP, NULL))  \
	X(zeropage_unregistered, ENOENT, uffd_zeropage(f->u, f->unreg, PS, 0, NULL))         \
	X(continue_null_handle, EINVAL, uffd_continue_range(NULL, f->shm, PS, 0, NULL))      \
	X(continue_zero_len, EINVAL, uffd_continue_range(f->u, f->shm, 0, 0, NULL))          \
	X(continue_src_holes_flag, EINVAL, uffd_continue_range(f->u, f->shm, PS, UFFD_ALLOW_SRC_HOLES, NULL)) \
	X(continue_anon, EINVAL, uffd_continue_range(f->u, f->reg, PS, 0, NULL))             \
	X(continue_closed_fd, EBADF, uffd_continue_range(f->closed, f->shm, PS, 0, NULL))    \
	X(poison_null_handle, EINVAL, uffd_poison(NULL, f->reg, PS, 0, NULL))                \
	X(poison_no_feature, EOPNOTSUPP, uffd_poison(f->bare, f->reg, PS, 0, NULL))          \
	X(poison_map_wp_flag, EINVAL, uffd_poison(f->u, f->reg, PS, UFFD_MAP_WP, NULL))      \
	X(poison_wrap, EINVAL, uffd_poison(f->u, WRAP, 4 * PS, 0, NULL))                     \
	/* move */                                                                           \
	X(move_null_handle, EINVAL, uffd_move(NULL, f->reg, f->unreg, PS, 0, NULL))          \
	X(move_null_src, EINVAL, uffd_move(f->u, f->reg, NULL, PS, 0, NULL))                 \
	X(move_unaligned_src, EINVAL, uffd_move(f->u, f->reg, f->unreg + 512, PS, 0, NULL))  \
	X(move_map_wp_flag, EINVAL, uffd_move(f->u, f->reg, f->unreg, PS, UFFD_MAP_WP, NULL)) \
	X(move_no_feature, EOPNOTSUPP, uffd_move(f->bare, f->reg, f->unreg, PS, 0, NULL))    \
	X(move_shared_src, EINVAL, uffd_move(f->u, f->reg, f->shm, PS, 0, NULL))             \
	X(move_src_hole, ENOENT, uffd_move(f->u, f->reg, f->hole, PS, 0, NULL))              \
	/* writeprotect, wake */                                                             \
	X(wp_null_handle, EINVAL, uffd_writeprotect(NULL, f->reg, PS, true, 0))              \
	X(wp_unaligned, EINVAL, uffd_writeprotect(f->u, f->reg, 100, true, 0))               \
	X(wp_flag, EINVAL, uffd_writeprotect(f->u, f->reg, PS, false, UFFD_SKIP_EXISTING))   \
	X(wp_no_feature, EOPNOTSUPP, uffd_writeprotect(f->bare, f->reg, PS, true, 0))        \
	X(wp_not_wp_registered, ENOENT, uffd_writeprotect(f->u, f->reg, PS, true, 0))        \
	X(wp_closed_fd, EBADF, uffd_writeprotect(f->closed, f->reg, PS, true, 0))            \
	X(wake_null_handle, EINVAL, uffd_wake(NULL, f->reg, PS))                             \
	X(wake_zero_len, EINVAL, uffd_wake(f->u, f->reg, 0))                                 \
	X(wake_unaligned, EINVAL, uffd_wake(f->u, f->reg + 3, PS))                           \
	X(wake_wrap, EINVAL, uffd_wake(f->u, WRAP, 4 * PS))                                  \
	X(wake_closed_fd, EBADF, uffd_wake(f->closed, f->reg, PS))                           \
	/* events */                                                                         \
	X(read_null_handle, EINVAL, uffd_read_events(NULL, f->ev, 4))                        \
	X(read_null_events, EINVAL, uffd_read_events(f->u, NULL, 4))                         \
	X(read_max_zero, EINVAL, uffd_read_events(f->u, f->ev, 0))                           \
	X(read_closed_fd, EBADF, uffd_read_events(f->closed, f->ev, 4))                      \
	X(read_devnull_fd, EIO, uffd_read_events(f->devnull, f->ev, 4))                      \
	/* foreign regions, sources, handoff */                                              \
	X(foreign_null_out, EINVAL, uffd_region_create_foreign(f->u, &FOREIGN(f->reg, PS, -1), NULL)) \
	X(foreign_zero_len, EINVAL, uffd_region_create_foreign(f->u, &FOREIGN(f->reg, 0, -1), &f->region)) \
	X(foreign_wrap, EINVAL, uffd_region_create_foreign(f->u, &FOREIGN(WRAP, 4 * PS, -1), &f->region)) \
	X(foreign_closed_fd, EBADF, uffd_region_create_foreign(f->u, &FOREIGN(f->reg, PS, f->closed_fd), &f->region)) \
	X(foreign_memfd_too_small, EINVAL,                                                   \
	  uffd_region_create_foreign(f->u, &FOREIGN(f->reg, 4 * PS, f->memfd), &f->region))  \
	X(source_null_region, EINVAL, uffd_region_set_source(NULL, f->unreg, PS))           \
	X(handoff_send_null, EINVAL, uffd_handoff_send(f->memfd, NULL, NULL, 0))             \
	X(handoff_send_not_socket, ENOTSOCK, uffd_handoff_send(f->memfd, f->u, NULL, 0))     \
	X(handoff_recv_null_out, EINVAL, uffd_handoff_recv(f->memfd, NULL, NULL))            \
	X(handoff_recv_not_socket, ENOTSOCK, uffd_handoff_recv(f->memfd, NULL, &f->handoff)) \
	X(handoff_recv_closed, EBADF, uffd_handoff_recv(f->closed_fd, NULL, &f->handoff))

/* Options of a foreign region of len bytes at addr, MISSING, with fd. */
#define FOREIGN(addr, len, fd_)                                                              \
	((struct uffd_foreign_opts){ .size = sizeof(struct uffd_foreign_opts),                \
				     .owner_addr = (uintptr_t)(addr), .length = (len),         \
				     .modes = MISSING, .fd = (fd_) })

#define DEFINE_CALL(name, err, call)          \
	static int bad_##name(struct fx *f)   \
	{                                     \
		(void)f;                      \
		return (call);                \
	}
BAD_CALLS(DEFINE_CALL)

struct bad_call {
	const char *name;
	int err;	/* expected, negative */
	int (*fn)(struct fx *f);
};

#define ROW(name, err, call) { #name, -(err), bad_##name },
static const struct bad_call bad_calls[] = { BAD_CALLS(ROW) };

/* A handle on a dup of u's fd placed at or above min, so that its number is not reused. */
static struct uffd *wrap_high(struct fx *f, int min, int *fd)
{
	struct uffd *h = NULL;

	*fd = fcntl(uffd_fd(f->u), F_DUPFD_CLOEXEC, min);
	ck_assert_int_ge(*fd, min);
	ck_assert_int_eq(uffd_open_fd(&h, *fd, uffd_features(f->u)), 0);
	return h;
}

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

static void fx_setup(struct fx *f)
{
	struct uffd_opts bare = { .size = sizeof(bare) };
	int null;

	memset(f, 0, sizeof(*f));
	f->ps = harness_page_size();
	ck_assert_int_eq(uffd_open(&f->u, NULL), 0);
	ck_assert_int_eq(uffd_open(&f->bare, &bare), 0);
	f->closed = wrap_high(f, 900, &f->closed_fd);
	ck_assert_int_eq(close(f->closed_fd), 0);
	f->devnull = wrap_high(f, 950, &f->devnull_fd);
	null = open("/dev/null", O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(null, 0);
	ck_assert_int_eq(dup3(null, f->devnull_fd, O_CLOEXEC), f->devnull_fd);
	close(null);

	f->reg = map_anon(4 * f->ps);
	f->unreg = map_anon(4 * f->ps);
	f->hole = map_anon(4 * f->ps);
	ck_assert_int_eq(munmap(f->hole, 4 * f->ps), 0);
	ck_assert_int_eq(uffd_register(f->u, f->reg, 4 * f->ps, MISSING, NULL), 0);
	f->memfd = memfd_create("test-args", MFD_CLOEXEC);
	ck_assert_int_ge(f->memfd, 0);
	ck_assert_int_eq(ftruncate(f->memfd, (off_t)f->ps), 0);
	f->shm = mmap(NULL, f->ps, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
	ck_assert_ptr_ne(f->shm, MAP_FAILED);
	ck_assert_int_eq(uffd_probe(&f->avail), 0);
}

static void fx_teardown(struct fx *f)
{
	/* Give the closed handle an fd of its own to close. */
	ck_assert_int_eq(dup3(f->devnull_fd, f->closed_fd, O_CLOEXEC), f->closed_fd);
	uffd_close(f->closed);
	uffd_close(f->devnull);
	uffd_close(f->bare);
	uffd_close(f->u);
	munmap(f->reg, 4 * f->ps);
	munmap(f->unreg, 4 * f->ps);
	munmap(f->shm, f->ps);
	close(f->memfd);
}

/* Sets the last error to a sentence no row produces (two different ones). */
static const char *set_other_error(int which)
{
	struct uffd *h;

	ck_assert_int_eq(uffd_open_fd(&h, which ? -12345 : -54321, 0), -EINVAL);
	ck_assert_str_ne(uffd_last_error(), "");
	return uffd_last_error();
}

static void run_row(struct fx *f, const struct bad_call *b)
{
	for (int which = 0; which < 2; which++) {
		char before[512];
		int got;

		snprintf(before, sizeof(before), "%s", set_other_error(which));
		f->out = (struct uffd *)f;	/* must come back NULL */
		got = b->fn(f);
		ck_assert_msg(got == b->err, "%s: returned %d (%s), expected %d (%s); error: %s",
			      b->name, got, strerrorname_np(-got), b->err, strerrorname_np(-b->err),
			      uffd_last_error());
		ck_assert_msg(uffd_last_error()[0] != '\0', "%s: no error sentence", b->name);
		ck_assert_msg(strcmp(uffd_last_error(), before) != 0,
			      "%s: the error sentence was not set by this call (\"%s\")", b->name, before);
		if (strncmp(b->name, "open", 4) == 0)
			ck_assert_msg(f->out == NULL || f->out == (struct uffd *)f,
				      "%s: *out not cleared", b->name);
	}
}

START_TEST(test_bad_calls)
{
	struct fx f;
	size_t n = sizeof(bad_calls) / sizeof(bad_calls[0]);
	int fds;

	ck_assert_uint_ge(n, 30);
	fx_setup(&f);
	fds = harness_count_fds();
	for (size_t i = 0; i < n; i++)
		run_row(&f, &bad_calls[i]);
	ck_assert_int_eq(harness_count_fds(), fds);
	/* Nothing was mapped, registered or changed by the failures. */
	for (size_t p = 0; p < 4; p++) {
		ck_assert_uint_eq(harness_pagemap(f.reg + p * f.ps) >> 63, 0);
		ck_assert_uint_eq(harness_pagemap(f.unreg + p * f.ps) >> 63, 0);
	}
	ck_assert_int_eq(uffd_register(f.u, f.unreg, 4 * f.ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_read_events(f.u, f.ev, 4), 0);
	fx_teardown(&f);
}
END_TEST

/* The sentences are actionable: they name the call or ioctl and the range. */
START_TEST(test_error_sentences)
{
	struct fx f;

	fx_setup(&f);
	ck_assert_int_eq(bad_copy_unaligned_dst(&f), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "UFFDIO_COPY"));
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "page size"));
	ck_assert_int_eq(bad_copy_src_holes_flag(&f), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "uffd_copy"));
	ck_assert_int_eq(bad_register_wrap(&f), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "wraps"));
	ck_assert_int_eq(bad_copy_unregistered(&f), -ENOENT);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "ENOENT"));
	ck_assert_int_eq(bad_move_no_feature(&f), -EOPNOTSUPP);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "UFFD_FEATURE_MOVE"));
	ck_assert_int_eq(bad_register_other_handle(&f), -EBUSY);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "another userfaultfd"));
	fx_teardown(&f);
}
END_TEST

/* Each thread has its own sentence. */
static void *other_thread(void *arg)
{
	(void)arg;
	return (void *)(uintptr_t)(uffd_last_error()[0] == '\0' &&
				   uffd_probe(NULL) == -EINVAL &&
				   strstr(uffd_last_error(), "uffd_probe") != NULL);
}

START_TEST(test_error_per_thread)
{
	ck_assert_int_eq(uffd_fd(NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "uffd_fd"));
	ck_assert_ptr_eq(harness_thread_join(harness_thread_start(other_thread, NULL)), (void *)1);
	ck_assert_ptr_nonnull(strstr(uffd_last_error(), "uffd_fd"));
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("args");
	TCase *tc = CASE(table, 20);

	tcase_add_test(tc, test_bad_calls);
	tcase_add_test(tc, test_error_sentences);
	tcase_add_test(tc, test_error_per_thread);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
