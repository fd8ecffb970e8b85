/* SPDX-License-Identifier: MIT */
/*
 * Symbol hygiene: an application that defines its own uffd_open and
 * uffd_read_events (clash-app.c, as QEMU and CRIU do) and links libuffd,
 * shared or static. It must link, reach its own functions, and the
 * library's internal calls (the loop's probe opens a uffd with uffd_open,
 * regions register with uffd_register, ...) must still reach the
 * library's own code. Built once per kind of library.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <uffd.h>

#include "clash-app.h"
#include "harness.h"

#define NPAGES 8

START_TEST(test_own_functions)
{
	ck_assert_int_eq(app_call_own(), 1);
	ck_assert_int_eq(app_open_calls, 1);
	ck_assert_int_eq(app_read_calls, 1);
}
END_TEST

/* A userfaultfd opened without libuffd, the way such an application does. */
static int raw_userfaultfd(void)
{
	int fd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0 && (errno == ENOSYS || errno == EPERM)) {	/* valgrind; policy */
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		if (dev >= 0) {
			fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
			close(dev);
		}
	}
	return fd;
}

struct fill_ctx {
	char *alias;
	size_t ps;
	atomic_int calls;
};

/* Stamps each faulting page with its index through the alias view. */
static int fill_minor(void *c, struct uffd_fault *f)
{
	struct fill_ctx *x = c;

	atomic_fetch_add(&x->calls, 1);
	memset(x->alias + f->offset, (int)(f->offset / x->ps) + 1, f->len);
	return UFFD_RESOLVE;
}

START_TEST(test_library_works)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_MINOR_SHMEM };
	struct uffd_region_opts ro = { .size = sizeof(ro), .fd = -1,
				       .modes = UFFDIO_REGISTER_MODE_MINOR };
	struct uffd_handlers h = { .minor = fill_minor };
	struct fill_ctx x = { .ps = harness_page_size() };
	struct uffd_loop_stats s;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct uffd *u;
	char *base;
	int fd = raw_userfaultfd();

	if (fd < 0)
		SKIP_TEST("no userfaultfd for this process: %s", strerror(errno));
	if (ioctl(fd, UFFDIO_API, &api)) {
		close(fd);
		SKIP_TEST("UFFDIO_API with MINOR_SHMEM: %s", strerror(errno));
	}
	ck_assert_msg(uffd_open_fd(&u, fd, api.features) == 0, "%s", uffd_last_error());
	ro.length = NPAGES * x.ps;
	ck_assert_msg(uffd_region_create(u, &ro, &r) == 0, "%s", uffd_last_error());
	base = uffd_region_base(r);
	x.alias = uffd_region_alias(r);
	/* MINOR faults need the pages in the page cache. */
	ck_assert_int_eq(fallocate(uffd_region_fd(r), 0, 0, (off_t)ro.length), 0);
	/* Page 0 mapped by the application with a CONTINUE. */
	memset(x.alias, 1, x.ps);
	ck_assert_msg(uffd_region_continue(r, 0, x.ps, 0, NULL) == 0, "%s", uffd_last_error());
	/* The others by the loop (its creation probes with a uffd_open of its own). */
	ck_assert_msg(uffd_loop_new(&l, NULL) == 0, "%s", uffd_last_error());
	ck_assert_int_eq(uffd_loop_add_region(l, r, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	for (size_t i = 0; i < NPAGES; i++)
		ck_assert_int_eq(harness_load8(base + i * x.ps), (int)i + 1);
	uffd_loop_stats(l, &s);
	uffd_loop_free(l);
	ck_assert_uint_eq(s.faults_minor, NPAGES - 1);
	ck_assert_int_eq(atomic_load(&x.calls), NPAGES - 1);
	ck_assert_uint_eq(s.errors, 0);
	uffd_region_destroy(r);
	uffd_close(u);
	ck_assert_msg(app_open_calls == 0 && app_read_calls == 0,
		      "the library called the application's uffd_open %d times, "
		      "uffd_read_events %d times", app_open_calls, app_read_calls);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("clash");

	tcase_add_test(CASE(own_functions, 10), test_own_functions);
	tcase_add_test(CASE(library_works, 30), test_library_works);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
