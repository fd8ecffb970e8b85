/* SPDX-License-Identifier: MIT */
/*
 * ops.c: registration masks and feature checks, and every resolving call's
 * success, partial progress and kernel errors, mirroring the kernel's
 * userfaultfd unit selftests through the library's API.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define WP      UFFDIO_REGISTER_MODE_WP
#define MINOR   UFFDIO_REGISTER_MODE_MINOR

#define PM_PRESENT (1ull << 63)
#define PM_UFFD_WP (1ull << 57)

/* Masks of allowed ioctls (1 << _UFFDIO_*) reported by Linux 6.18. */
#define IOCTLS_ANON_MISSING  0x13cull
#define IOCTLS_ANON_WP       0x17cull
#define IOCTLS_SHMEM_MINOR   0x1bcull
#define IOCTLS_SHMEM_WPMINOR 0x1fcull
#ifndef _UFFDIO_POISON	/* system headers older than 6.6 */
#define _UFFDIO_POISON 0x08
#endif

static size_t ps;

/* ---- helpers ---- */

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

static int memfd_sized(size_t len, unsigned flags)
{
	int fd = memfd_create("test-ops", MFD_CLOEXEC | flags);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
	return fd;
}

static void *map_shared(int fd, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

static struct uffd *open_features(uint64_t features)
{
	struct uffd_opts o = { .size = sizeof(o), .features = features };
	struct uffd *u = NULL;

	ck_assert_int_eq(uffd_open(&u, &o), 0);
	return u;
}

static struct uffd *open_default(void)
{
	struct uffd *u = NULL;

	ck_assert_int_eq(uffd_open(&u, NULL), 0);
	return u;
}

static void need_features(uint64_t f)
{
	ck_assert_msg(harness_have_features(f), "kernel lacks features 0x%llx", (unsigned long long)f);
}

static bool contains(const char *s, const char *what)
{
	return strstr(s, what) != NULL;
}

#define assert_error_mentions(what) \
	ck_assert_msg(contains(uffd_last_error(), what), "error \"%s\" lacks \"%s\"", uffd_last_error(), what)

static bool all_bytes(const void *p, int c, size_t len)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i] != (unsigned char)c)
			return false;
	return true;
}

static bool present(const void *addr)
{
	return harness_pagemap(addr) & PM_PRESENT;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* Waits for one message and decodes it. */
static void read_one(struct uffd *u, struct uffd_event *ev)
{
	struct pollfd pfd = { .fd = uffd_fd(u), .events = POLLIN };
	int n = 0;

	for (int tries = 0; tries < 100 && n == 0; tries++) {
		ck_assert_int_ge(poll(&pfd, 1, 100), 0);
		n = uffd_read_events(u, ev, 1);
	}
	ck_assert_int_eq(n, 1);
}

/* A thread that touches one byte: a fault the test resolves. */
struct toucher {
	volatile char *addr;
	bool write;
	char value;	/* written, or read */
	atomic_bool finished;
	void *thread;
};

static void *touch_fn(void *arg)
{
	struct toucher *t = arg;

	if (t->write)
		harness_store8(t->addr, (unsigned char)t->value);
	else
		t->value = (char)harness_load8(t->addr);
	atomic_store(&t->finished, true);
	return NULL;
}

static void touch_start(struct toucher *t, void *addr, bool write, char value)
{
	t->addr = addr;
	t->write = write;
	t->value = value;
	atomic_init(&t->finished, false);
	t->thread = harness_thread_start(touch_fn, t);
}

/* ---- register ---- */

static uint64_t registered(struct uffd *u, void *addr, size_t len, uint64_t modes)
{
	uint64_t ioctls = 0;

	ck_assert_int_eq(uffd_register(u, addr, len, modes, &ioctls), 0);
	ck_assert_int_eq(uffd_unregister(u, addr, len), 0);
	return ioctls;
}

START_TEST(test_register_anon_masks)
{
	struct uffd *u = open_default();
	void *a = map_anon(ps);
	uint64_t ioctls = 0xdead;

	ck_assert_uint_eq(registered(u, a, ps, MISSING), IOCTLS_ANON_MISSING);
	ck_assert_uint_eq(registered(u, a, ps, WP), IOCTLS_ANON_WP);
	ck_assert_uint_eq(registered(u, a, ps, MISSING | WP), IOCTLS_ANON_WP);
	for (uint64_t m = 0; m < 8; m++) {
		if (m && !(m & MINOR))
			continue;
		ck_assert_int_eq(uffd_register(u, a, ps, m, &ioctls), -EINVAL);
		ck_assert_str_ne(uffd_last_error(), "");
	}
	ck_assert_uint_eq(ioctls, 0xdead);	/* untouched on failure */
	ck_assert_int_eq(uffd_register(u, a, ps, MINOR, NULL), -EINVAL);
	assert_error_mentions("MINOR");
	ck_assert_int_eq(uffd_register(u, a, ps, 1ull << 3, NULL), -EINVAL);
	/* ioctls may be NULL */
	ck_assert_int_eq(uffd_register(u, a, ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_unregister(u, a, ps), 0);
	munmap(a, ps);
	uffd_close(u);
}
END_TEST

START_TEST(test_register_shmem_masks)
{
	struct uffd *u = open_default();
	int fd = memfd_sized(2 * ps, 0);
	void *a = map_shared(fd, 2 * ps);

	for (uint64_t m = 1; m < 8; m++) {
		uint64_t want = IOCTLS_ANON_MISSING | ((m & WP) ? 0x40 : 0) | ((m & MINOR) ? 0x80 : 0);

		ck_assert_uint_eq(registered(u, a, 2 * ps, m), want);
	}
	ck_assert_uint_eq(registered(u, a, ps, MINOR), IOCTLS_SHMEM_MINOR);
	ck_assert_uint_eq(registered(u, a, ps, WP | MINOR), IOCTLS_SHMEM_WPMINOR);
	ck_assert_int_eq(uffd_register(u, a, ps, 0, NULL), -EINVAL);
	munmap(a, 2 * ps);
	close(fd);
	uffd_close(u);
}
END_TEST

/* A handle opened with a reduced feature set refuses what it cannot do. */
START_TEST(test_register_reduced_features)
{
	int fd = memfd_sized(ps, 0);
	void *shm = map_shared(fd, ps), *anon = map_anon(ps);
	struct uffd *u;

	/* WP on shmem without WP_HUGETLBFS_SHMEM; anon WP is fine. */
	u = open_features(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MISSING_SHMEM |
			  UFFD_FEATURE_MINOR_SHMEM);
	ck_assert_int_eq(uffd_register(u, shm, ps, WP, NULL), -EOPNOTSUPP);
	assert_error_mentions("WP_HUGETLBFS_SHMEM");
	ck_assert_int_eq(uffd_register(u, shm, ps, MINOR | WP, NULL), -EOPNOTSUPP);
	ck_assert_uint_eq(registered(u, anon, ps, WP), IOCTLS_ANON_WP);
	ck_assert_uint_eq(registered(u, shm, ps, MINOR | MISSING), IOCTLS_SHMEM_MINOR);
	uffd_close(u);

	/* MINOR without MINOR_SHMEM, even with MINOR_HUGETLBFS. */
	u = open_features(UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_HUGETLBFS);
	ck_assert_int_eq(uffd_register(u, shm, ps, MINOR, NULL), -EOPNOTSUPP);
	assert_error_mentions("MINOR_SHMEM");
	ck_assert_uint_eq(registered(u, shm, ps, MISSING), IOCTLS_ANON_MISSING);
	uffd_close(u);
	u = open_features(UFFD_FEATURE_MISSING_SHMEM);
	ck_assert_int_eq(uffd_register(u, shm, ps, MINOR, NULL), -EOPNOTSUPP);
	assert_error_mentions("MINOR_SHMEM");
	uffd_close(u);

	/* WP without PAGEFAULT_FLAG_WP, on any memory; MISSING on shmem without MISSING_SHMEM. */
	u = open_features(0);
	ck_assert_int_eq(uffd_register(u, anon, ps, WP, NULL), -EOPNOTSUPP);
	assert_error_mentions("PAGEFAULT_FLAG_WP");
	ck_assert_int_eq(uffd_register(u, anon, ps, MISSING | WP, NULL), -EOPNOTSUPP);
	ck_assert_int_eq(uffd_register(u, shm, ps, MISSING, NULL), -EOPNOTSUPP);
	assert_error_mentions("MISSING_SHMEM");
	ck_assert_uint_eq(registered(u, anon, ps, MISSING), IOCTLS_ANON_MISSING);
	uffd_close(u);

	munmap(shm, ps);
	munmap(anon, ps);
	close(fd);
}
END_TEST

/* EBUSY for another handle's range, EPERM for a read-only file, EINVAL for a hole. */
START_TEST(test_register_kernel_errors)
{
	struct uffd *u = open_default(), *v = open_default();
	int fd = memfd_sized(ps, 0), ro;
	void *a = map_anon(2 * ps), *rom;
	char path[64];

	ck_assert_int_eq(uffd_register(u, a, ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_register(v, a, ps, MISSING, NULL), -EBUSY);
	assert_error_mentions("another userfaultfd");
	/* Registering again with the same handle replaces the modes. */
	ck_assert_int_eq(uffd_register(u, a, ps, MISSING | WP, NULL), 0);
	ck_assert_int_eq(uffd_unregister(u, a, ps), 0);

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ro = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(ro, 0);
	rom = mmap(NULL, ps, PROT_READ, MAP_SHARED, ro, 0);
	ck_assert_ptr_ne(rom, MAP_FAILED);
	ck_assert_int_eq(uffd_register(u, rom, ps, MISSING, NULL), -EPERM);
	assert_error_mentions("not writable");

	ck_assert_int_eq(munmap((char *)a + ps, ps), 0);
	ck_assert_int_eq(uffd_register(u, (char *)a + ps, ps, MISSING, NULL), -EINVAL);
	ck_assert_int_eq(uffd_unregister(u, (char *)a + ps, ps), -EINVAL);
	munmap(rom, ps);
	munmap(a, ps);
	close(ro);
	close(fd);
	uffd_close(v);
	uffd_close(u);
}
END_TEST

/* ---- continue ---- */

/* A memfd mapped twice: the registered base view and an alias. */
struct twin {
	int fd;
	size_t len;
	char *base, *alias;
};

static void twin_new(struct twin *t, size_t len, unsigned mfd_flags)
{
	t->len = len;
	t->fd = memfd_sized(len, mfd_flags);
	t->base = map_shared(t->fd, len);
	t->alias = map_shared(t->fd, len);
}

static void twin_free(struct twin *t)
{
	munmap(t->base, t->len);
	munmap(t->alias, t->len);
	close(t->fd);
}

START_TEST(test_continue_basic)
{
	struct uffd *u = open_default();
	struct twin t;
	size_t done = 77;

	twin_new(&t, 4 * ps, 0);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MINOR, NULL), 0);
	/* Nothing in the page cache yet. */
	ck_assert_int_eq(uffd_continue_range(u, t.base, ps, 0, &done), -EFAULT);
	ck_assert_uint_eq(done, 0);
	assert_error_mentions("alias view");
	assert_error_mentions("EFAULT");

	memset(t.alias, 0x5a, ps);
	ck_assert(!present(t.base));
	ck_assert_int_eq(uffd_continue_range(u, t.base, ps, 0, &done), 0);
	ck_assert_uint_eq(done, ps);
	ck_assert(present(t.base));
	ck_assert(all_bytes(t.base, 0x5a, ps));
	/* The selftests' deliberate second CONTINUE. */
	ck_assert_int_eq(uffd_continue_range(u, t.base, ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	assert_error_mentions("UFFD_SKIP_EXISTING");
	ck_assert_int_eq(uffd_continue_range(u, t.base, ps, UFFD_SKIP_EXISTING, &done), 0);
	ck_assert_uint_eq(done, ps);
	ck_assert_int_eq(uffd_continue_range(u, t.base, ps, UFFD_SKIP_EXISTING, NULL), 0);
	twin_free(&t);
	uffd_close(u);
}
END_TEST

/* Pages 0-3 in the page cache, page 1 mapped: partial progress, then EEXIST. */
START_TEST(test_continue_partial)
{
	struct uffd *u = open_default();
	struct twin t;
	size_t done = 0;

	twin_new(&t, 4 * ps, 0);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MINOR, NULL), 0);
	for (int p = 0; p < 4; p++)
		memset(t.alias + p * ps, 'a' + p, ps);
	ck_assert_int_eq(uffd_continue_range(u, t.base + ps, ps, 0, NULL), 0);
	ck_assert_int_eq(uffd_continue_range(u, t.base, 4 * ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, ps);
	ck_assert(present(t.base));
	ck_assert(!present(t.base + 2 * ps));
	ck_assert_int_eq(uffd_continue_range(u, t.base, 4 * ps, UFFD_SKIP_EXISTING, &done), 0);
	ck_assert_uint_eq(done, 4 * ps);
	for (int p = 0; p < 4; p++)
		ck_assert(all_bytes(t.base + p * ps, 'a' + p, ps));
	/* Page 3 missing from the cache stops a run: done counts up to it. */
	ck_assert_int_eq(fallocate(t.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				   (off_t)(3 * ps), (off_t)ps), 0);
	ck_assert_int_eq(madvise(t.base, 4 * ps, MADV_DONTNEED), 0);
	ck_assert_int_eq(uffd_continue_range(u, t.base, 4 * ps, 0, &done), -EFAULT);
	ck_assert_uint_eq(done, 3 * ps);
	twin_free(&t);
	uffd_close(u);
}
END_TEST

/* A reader of the base view takes a MINOR fault; CONTINUE resolves it. */
START_TEST(test_continue_resolves_fault)
{
	struct uffd *u = open_default();
	struct uffd_event ev;
	struct toucher th;
	struct twin t;

	twin_new(&t, ps, 0);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MINOR, NULL), 0);
	memset(t.alias, 0x33, ps);
	touch_start(&th, t.base + 100, false, 0);
	read_one(u, &ev);
	ck_assert_int_eq(ev.type, UFFD_EV_FAULT);
	ck_assert_int_eq(ev.fault.kind, UFFD_FAULT_MINOR);
	ck_assert_ptr_eq(ev.fault.addr, t.base);
	t.alias[100] = 0x44;	/* the handler may change the page before mapping it */
	ck_assert_int_eq(uffd_continue_range(u, ev.fault.addr, ev.fault.len, 0, NULL), 0);
	harness_thread_join(th.thread);
	ck_assert_int_eq(th.value, 0x44);
	twin_free(&t);
	uffd_close(u);
}
END_TEST

START_TEST(test_continue_map_wp)
{
	struct uffd *u = open_default();
	struct twin t;

	twin_new(&t, 2 * ps, 0);
	memset(t.alias, 1, 2 * ps);
	ck_assert_int_eq(uffd_register(u, t.base, ps, MINOR, NULL), 0);
	ck_assert_int_eq(uffd_continue_range(u, t.base, ps, UFFD_MAP_WP, NULL), -EINVAL);
	assert_error_mentions("UFFD_MAP_WP");
	ck_assert_int_eq(uffd_register(u, t.base + ps, ps, MINOR | WP, NULL), 0);
	ck_assert_int_eq(uffd_continue_range(u, t.base + ps, ps, UFFD_MAP_WP, NULL), 0);
	ck_assert_uint_ne(harness_pagemap(t.base + ps) & PM_UFFD_WP, 0);
	ck_assert_int_eq(uffd_writeprotect(u, t.base + ps, ps, false, 0), 0);
	ck_assert_uint_eq(harness_pagemap(t.base + ps) & PM_UFFD_WP, 0);
	twin_free(&t);
	uffd_close(u);
}
END_TEST

/* ---- copy ---- */

/* 4 pages, page 2 already mapped: done stops at it, SKIP_EXISTING goes on. */
START_TEST(test_copy_partial)
{
	struct uffd *u = open_default();
	char *dst = map_anon(4 * ps), *src = map_anon(4 * ps);
	size_t done = 99;

	ck_assert_int_eq(uffd_register(u, dst, 4 * ps, MISSING, NULL), 0);
	memset(src, 'o', ps);
	ck_assert_int_eq(uffd_copy(u, dst + 2 * ps, src, ps, 0, &done), 0);
	ck_assert_uint_eq(done, ps);
	for (int p = 0; p < 4; p++)
		memset(src + p * ps, 'a' + p, ps);
	ck_assert_int_eq(uffd_copy(u, dst, src, 4 * ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 2 * ps);
	assert_error_mentions("UFFD_SKIP_EXISTING");
	ck_assert(all_bytes(dst, 'a', ps));
	ck_assert(all_bytes(dst + ps, 'b', ps));
	ck_assert(!present(dst + 3 * ps));
	ck_assert_int_eq(uffd_copy(u, dst, src, 4 * ps, UFFD_SKIP_EXISTING, &done), 0);
	ck_assert_uint_eq(done, 4 * ps);
	ck_assert(all_bytes(dst + 2 * ps, 'o', ps));	/* left as it was */
	ck_assert(all_bytes(dst + 3 * ps, 'd', ps));
	/* Fully mapped: EEXIST at once, done 0. */
	ck_assert_int_eq(uffd_copy(u, dst, src, ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	munmap(dst, 4 * ps);
	munmap(src, 4 * ps);
	uffd_close(u);
}
END_TEST

START_TEST(test_copy_errors)
{
	struct uffd *u = open_default();
	char *dst = map_anon(3 * ps), *src = map_anon(2 * ps), *unreg = map_anon(ps);
	size_t done = 5;

	ck_assert_int_eq(uffd_register(u, dst, 3 * ps, MISSING, NULL), 0);
	ck_assert_int_eq(munmap(src + ps, ps), 0);
	/* Source partly unreadable: the first page is copied, then EFAULT. */
	memset(src, 7, ps);
	ck_assert_int_eq(uffd_copy(u, dst, src, 2 * ps, 0, &done), -EFAULT);
	ck_assert_uint_eq(done, ps);
	ck_assert(all_bytes(dst, 7, ps));
	assert_error_mentions("source");
	/* Not registered: ENOENT. */
	ck_assert_int_eq(uffd_copy(u, unreg, src, ps, 0, &done), -ENOENT);
	ck_assert_uint_eq(done, 0);
	/* Running off the end of the registered range. */
	ck_assert_int_eq(uffd_copy(u, dst + 2 * ps, dst, 2 * ps, 0, &done), -ENOENT);
	ck_assert_uint_eq(done, 0);
	ck_assert(!present(dst + 2 * ps));
	/* MAP_WP needs a WP registration. */
	ck_assert_int_eq(uffd_copy(u, dst + ps, src, ps, UFFD_MAP_WP, &done), -EINVAL);
	assert_error_mentions("UFFD_MAP_WP");
	munmap(dst, 3 * ps);
	munmap(src, ps);
	munmap(unreg, ps);
	uffd_close(u);
}
END_TEST

/* A handle, dst registered MISSING, src filled, and a thread blocked reading dst page `page`. */
struct faulted {
	struct uffd *u;
	char *dst, *src;
	size_t len;
	struct toucher th;
	struct uffd_event ev;
};

static void faulted_start(struct faulted *f, size_t pages, size_t page, int fill)
{
	f->u = open_default();
	f->len = pages * ps;
	f->dst = map_anon(f->len);
	f->src = map_anon(ps);
	memset(f->src, fill, ps);
	ck_assert_int_eq(uffd_register(f->u, f->dst, f->len, MISSING, NULL), 0);
	touch_start(&f->th, f->dst + page * ps + 7, false, 0);
	read_one(f->u, &f->ev);
	ck_assert_int_eq(f->ev.fault.kind, UFFD_FAULT_MISSING);
	ck_assert_ptr_eq(f->ev.fault.addr, f->dst + page * ps);
}

/* Joins the thread: it must have read fill. */
static void faulted_end(struct faulted *f, int fill)
{
	harness_thread_join(f->th.thread);
	ck_assert_int_eq(f->th.value, fill);
	munmap(f->dst, f->len);
	munmap(f->src, ps);
	uffd_close(f->u);
}

/* A faulting thread is woken by the copy, and reads what was copied. */
START_TEST(test_copy_resolves_fault)
{
	struct faulted f;

	faulted_start(&f, 1, 0, 0x21);
	ck_assert_int_eq(uffd_copy(f.u, f.ev.fault.addr, f.src, f.ev.fault.len, 0, NULL), 0);
	faulted_end(&f, 0x21);
}
END_TEST

/* UFFD_DONTWAKE leaves the faulting thread asleep until uffd_wake(). */
START_TEST(test_copy_dontwake)
{
	struct faulted f;

	faulted_start(&f, 2, 1, 0x42);
	ck_assert_int_eq(uffd_copy(f.u, f.dst + ps, f.src, ps, UFFD_DONTWAKE, NULL), 0);
	sleep_ms(200);
	ck_assert(!atomic_load(&f.th.finished));
	/* Waking another page leaves it asleep too. */
	ck_assert_int_eq(uffd_wake(f.u, f.dst, ps), 0);
	sleep_ms(100);
	ck_assert(!atomic_load(&f.th.finished));
	ck_assert_int_eq(uffd_wake(f.u, f.dst + ps, ps), 0);
	faulted_end(&f, 0x42);
}
END_TEST

/* SKIP_EXISTING wakes the waiters of the pages it steps over. */
START_TEST(test_copy_skip_wakes)
{
	struct faulted f;

	faulted_start(&f, 1, 0, 0x17);
	ck_assert_int_eq(uffd_copy(f.u, f.dst, f.src, ps, UFFD_DONTWAKE, NULL), 0);
	sleep_ms(100);
	ck_assert(!atomic_load(&f.th.finished));
	ck_assert_int_eq(uffd_copy(f.u, f.dst, f.src, ps, UFFD_SKIP_EXISTING, NULL), 0);
	faulted_end(&f, 0x17);
}
END_TEST

/* ---- zeropage ---- */

START_TEST(test_zeropage_anon)
{
	struct uffd *u = open_default();
	char *a = map_anon(3 * ps);
	size_t done = 1;

	ck_assert_int_eq(uffd_register(u, a, 3 * ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_zeropage(u, a + ps, ps, 0, &done), 0);
	ck_assert_uint_eq(done, ps);
	ck_assert_int_eq(uffd_zeropage(u, a + ps, ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	ck_assert_int_eq(uffd_zeropage(u, a, 3 * ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, ps);
	ck_assert_int_eq(uffd_zeropage(u, a, 3 * ps, UFFD_SKIP_EXISTING, &done), 0);
	ck_assert_uint_eq(done, 3 * ps);
	ck_assert(all_bytes(a, 0, 3 * ps));
	ck_assert_int_eq(uffd_zeropage(u, a, 3 * ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	ck_assert_int_eq(uffd_zeropage(u, a, ps, UFFD_MAP_WP, &done), -EINVAL);
	munmap(a, 3 * ps);
	uffd_close(u);
}
END_TEST

/* shmem: the retry through the alias (registered too) sees the page cache page. */
START_TEST(test_zeropage_shmem_alias)
{
	struct uffd *u = open_default();
	uint64_t ioctls = 0;
	size_t done = 0;
	struct twin t;

	twin_new(&t, ps, 0);
	ck_assert_int_eq(uffd_register(u, t.base, ps, MISSING, &ioctls), 0);
	ck_assert_uint_ne(ioctls & (1ull << _UFFDIO_ZEROPAGE), 0);
	ck_assert_int_eq(uffd_register(u, t.alias, ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_zeropage(u, t.base, ps, 0, &done), 0);
	ck_assert_uint_eq(done, ps);
	ck_assert_int_eq(uffd_zeropage(u, t.alias, ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	ck_assert(all_bytes(t.base, 0, ps));
	ck_assert_int_eq(uffd_unregister(u, t.alias, ps), 0);
	ck_assert(all_bytes(t.alias, 0, ps));
	twin_free(&t);
	uffd_close(u);
}
END_TEST

/* ---- move ---- */

static char *move_src(size_t len)
{
	char *src = map_anon(len);

	ck_assert_int_eq(madvise(src, len, MADV_DONTFORK), 0);
	ck_assert_int_eq(madvise(src, len, MADV_NOHUGEPAGE), 0);
	return src;
}

START_TEST(test_move_basic)
{
	struct uffd *u = open_default();
	char *src = move_src(3 * ps), *dst = map_anon(3 * ps);
	size_t done = 0;

	ck_assert_int_eq(uffd_register(u, dst, 3 * ps, MISSING, NULL), 0);
	memset(src, 'x', ps);
	memset(src + ps, 'y', ps);
	ck_assert_int_eq(uffd_move(u, dst, src, 2 * ps, 0, &done), 0);
	ck_assert_uint_eq(done, 2 * ps);
	ck_assert(all_bytes(dst, 'x', ps));
	ck_assert(all_bytes(dst + ps, 'y', ps));
	ck_assert(!present(src));
	ck_assert(all_bytes(src, 0, 2 * ps));	/* the source is a hole again */
	/* Onto a mapped page. */
	memset(src + 2 * ps, 'z', ps);
	ck_assert_int_eq(uffd_move(u, dst, src + 2 * ps, ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	ck_assert(all_bytes(src + 2 * ps, 'z', ps));
	munmap(src, 3 * ps);
	munmap(dst, 3 * ps);
	uffd_close(u);
}
END_TEST

START_TEST(test_move_src_holes)
{
	struct uffd *u = open_default();
	char *src = move_src(3 * ps), *dst = map_anon(3 * ps);
	size_t done = 0;

	ck_assert_int_eq(uffd_register(u, dst, 3 * ps, MISSING, NULL), 0);
	memset(src, 'p', ps);	/* page 1 stays a hole */
	memset(src + 2 * ps, 'q', ps);
	ck_assert_int_eq(uffd_move(u, dst, src, 3 * ps, 0, &done), -ENOENT);
	ck_assert_uint_eq(done, ps);
	assert_error_mentions("UFFD_ALLOW_SRC_HOLES");
	ck_assert(all_bytes(dst, 'p', ps));
	ck_assert(!present(dst + ps));
	ck_assert(all_bytes(src + 2 * ps, 'q', ps));
	ck_assert_int_eq(uffd_move(u, dst + ps, src + ps, 2 * ps, UFFD_ALLOW_SRC_HOLES, &done), 0);
	ck_assert_uint_eq(done, 2 * ps);
	ck_assert(all_bytes(dst + 2 * ps, 'q', ps));
	munmap(src, 3 * ps);
	munmap(dst, 3 * ps);
	uffd_close(u);
}
END_TEST

START_TEST(test_move_errors)
{
	struct uffd *u = open_default(), *nomove = open_features(0);
	char *src = map_anon(ps), *dst = map_anon(ps);
	int fd = memfd_sized(ps, 0);
	char *shm = map_shared(fd, ps);
	size_t done = 3;
	pid_t pid;
	int status;

	ck_assert_int_eq(uffd_register(u, dst, ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_move(nomove, dst, src, ps, 0, &done), -EOPNOTSUPP);
	ck_assert_uint_eq(done, 0);
	assert_error_mentions("MOVE");
	/* Shared memory cannot be moved. */
	memset(shm, 1, ps);
	ck_assert_int_eq(uffd_move(u, dst, shm, ps, 0, &done), -EINVAL);
	assert_error_mentions("anonymous");
	/* A source page shared with a child (no MADV_DONTFORK): EBUSY. */
	memset(src, 2, ps);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		pause();
		_exit(0);
	}
	ck_assert_int_eq(uffd_move(u, dst, src, ps, 0, &done), -EBUSY);
	ck_assert_uint_eq(done, 0);
	assert_error_mentions("MADV_DONTFORK");
	kill(pid, SIGKILL);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	munmap(src, ps);
	munmap(dst, ps);
	munmap(shm, ps);
	close(fd);
	uffd_close(nomove);
	uffd_close(u);
}
END_TEST

/* ---- poison ---- */

static sigjmp_buf sigbus_jmp;
static volatile sig_atomic_t sigbus_count;

static void on_sigbus(int sig)
{
	(void)sig;
	sigbus_count++;
	siglongjmp(sigbus_jmp, 1);
}

/* Reads one byte; true when it raised SIGBUS instead. */
static bool read_sigbus(volatile char *p, char *out)
{
	if (sigsetjmp(sigbus_jmp, 1))
		return true;
	*out = *p;
	return false;
}

START_TEST(test_poison)
{
	struct uffd *u = open_default(), *nopoison = open_features(0);
	char *a = map_anon(4 * ps), *zeros = map_anon(ps);
	struct sigaction sa = { .sa_handler = on_sigbus }, old;
	uint64_t ioctls = 0;
	size_t done = 9;
	char c = 1;

	ck_assert_int_eq(uffd_register(u, a, 4 * ps, MISSING, &ioctls), 0);
	ck_assert_uint_ne(ioctls & (1ull << _UFFDIO_POISON), 0);
	ck_assert_uint_ne(ioctls & (1ull << _UFFDIO_COPY), 0);
	for (int p = 0; p < 4; p++) {
		if (p % 2) {
			ck_assert_int_eq(uffd_copy(u, a + p * ps, zeros, ps, 0, &done), 0);
		} else {
			ck_assert_int_eq(uffd_poison(u, a + p * ps, ps, 0, &done), 0);
		}
		ck_assert_uint_eq(done, ps);
	}
	ck_assert_int_eq(uffd_poison(u, a, ps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	ck_assert_int_eq(uffd_poison(u, a, 2 * ps, 0, &done), -EEXIST);
	ck_assert_int_eq(uffd_poison(u, a, 4 * ps, UFFD_SKIP_EXISTING, &done), 0);
	ck_assert_uint_eq(done, 4 * ps);
	ck_assert_int_eq(uffd_poison(nopoison, a, ps, 0, &done), -EOPNOTSUPP);
	assert_error_mentions("POISON");

	ck_assert_int_eq(sigaction(SIGBUS, &sa, &old), 0);
	sigbus_count = 0;
	for (int p = 0; p < 4; p++) {
		bool bus = read_sigbus(a + p * ps + 5, &c);

		ck_assert_int_eq(bus, p % 2 == 0);
		if (!bus)
			ck_assert_int_eq(c, 0);
	}
	ck_assert_int_eq(sigbus_count, 2);
	ck_assert_int_eq(sigaction(SIGBUS, &old, NULL), 0);
	munmap(a, 4 * ps);
	munmap(zeros, ps);
	uffd_close(nopoison);
	uffd_close(u);
}
END_TEST

/* ---- writeprotect ---- */

START_TEST(test_wp_pagemap)
{
	struct uffd *u = open_default();
	char *a = map_anon(2 * ps);
	struct twin t;

	ck_assert_int_eq(uffd_register(u, a, 2 * ps, WP, NULL), 0);
	a[0] = 1;
	ck_assert_uint_eq(harness_pagemap(a) & PM_UFFD_WP, 0);
	ck_assert_int_eq(uffd_writeprotect(u, a, ps, true, 0), 0);
	ck_assert_uint_ne(harness_pagemap(a) & PM_UFFD_WP, 0);
	ck_assert_int_eq(uffd_writeprotect(u, a, ps, false, 0), 0);
	ck_assert_uint_eq(harness_pagemap(a) & PM_UFFD_WP, 0);
	/* An unpopulated anon page gets a marker (WP_UNPOPULATED is a default). */
	ck_assert_uint_ne(uffd_features(u) & UFFD_FEATURE_WP_UNPOPULATED, 0);
	ck_assert_int_eq(uffd_writeprotect(u, a + ps, ps, true, 0), 0);
	ck_assert_uint_ne(harness_pagemap(a + ps) & PM_UFFD_WP, 0);
	ck_assert_int_eq(uffd_writeprotect(u, a, 2 * ps, false, UFFD_DONTWAKE), 0);
	ck_assert_uint_eq(harness_pagemap(a + ps) & PM_UFFD_WP, 0);

	/* shmem: a none pte always gets a marker. */
	twin_new(&t, ps, 0);
	ck_assert_int_eq(uffd_register(u, t.base, ps, WP, NULL), 0);
	ck_assert_int_eq(uffd_writeprotect(u, t.base, ps, true, 0), 0);
	ck_assert_uint_ne(harness_pagemap(t.base) & PM_UFFD_WP, 0);
	ck_assert_int_eq(uffd_writeprotect(u, t.base, ps, false, 0), 0);
	ck_assert_uint_eq(harness_pagemap(t.base) & PM_UFFD_WP, 0);
	twin_free(&t);
	munmap(a, 2 * ps);
	uffd_close(u);
}
END_TEST

/* A write to a protected page is a WP fault; un-protecting wakes the writer. */
START_TEST(test_wp_fault)
{
	struct uffd *u = open_default();
	char *a = map_anon(ps);
	struct uffd_event ev;
	struct toucher th;

	ck_assert_int_eq(uffd_register(u, a, ps, WP, NULL), 0);
	a[0] = 1;
	ck_assert_int_eq(uffd_writeprotect(u, a, ps, true, 0), 0);
	ck_assert_int_eq(a[0], 1);	/* reads do not fault */
	touch_start(&th, a + 9, true, 0x66);
	read_one(u, &ev);
	ck_assert_int_eq(ev.fault.kind, UFFD_FAULT_WP);
	ck_assert(ev.fault.write);
	ck_assert_ptr_eq(ev.fault.addr, a);
	ck_assert_int_eq(uffd_writeprotect(u, a, ps, false, UFFD_DONTWAKE), 0);
	sleep_ms(100);
	ck_assert(!atomic_load(&th.finished));
	ck_assert_int_eq(uffd_wake(u, a, ps), 0);
	harness_thread_join(th.thread);
	ck_assert_int_eq(a[9], 0x66);
	munmap(a, ps);
	uffd_close(u);
}
END_TEST

/* copy with UFFD_MAP_WP maps the page protected. */
START_TEST(test_wp_copy_map_wp)
{
	struct uffd *u = open_default();
	char *a = map_anon(2 * ps), *src = map_anon(ps);
	size_t done = 0;

	memset(src, 0x3c, ps);
	ck_assert_int_eq(uffd_register(u, a, 2 * ps, MISSING | WP, NULL), 0);
	ck_assert_int_eq(uffd_copy(u, a, src, ps, UFFD_MAP_WP, &done), 0);
	ck_assert_uint_eq(done, ps);
	ck_assert_uint_ne(harness_pagemap(a) & PM_UFFD_WP, 0);
	ck_assert(all_bytes(a, 0x3c, ps));
	ck_assert_int_eq(uffd_copy(u, a + ps, src, ps, 0, NULL), 0);
	ck_assert_uint_eq(harness_pagemap(a + ps) & PM_UFFD_WP, 0);
	ck_assert_int_eq(uffd_writeprotect(u, a, ps, false, 0), 0);
	ck_assert_uint_eq(harness_pagemap(a) & PM_UFFD_WP, 0);
	a[0] = 0;	/* writable again, no fault */
	munmap(a, 2 * ps);
	munmap(src, ps);
	uffd_close(u);
}
END_TEST

START_TEST(test_wp_errors)
{
	struct uffd *u = open_default(), *nowp = open_features(0);
	char *a = map_anon(ps);

	ck_assert_int_eq(uffd_register(u, a, ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_writeprotect(u, a, ps, true, 0), -ENOENT);
	assert_error_mentions("UFFDIO_REGISTER_MODE_WP");
	ck_assert_int_eq(uffd_unregister(u, a, ps), 0);
	ck_assert_int_eq(uffd_writeprotect(u, a, ps, true, 0), -ENOENT);
	assert_error_mentions("UFFDIO_REGISTER_MODE_WP");
	ck_assert_int_eq(uffd_writeprotect(nowp, a, ps, true, 0), -EOPNOTSUPP);
	assert_error_mentions("PAGEFAULT_FLAG_WP");
	munmap(a, ps);
	uffd_close(nowp);
	uffd_close(u);
}
END_TEST

/* ---- -ENOENT wakes: a range gone while its fault waits ---- */

enum gone_call { GONE_CONTINUE, GONE_COPY, GONE_COPY_DONTWAKE, GONE_ZEROPAGE, GONE_POISON,
		 GONE_WRITEPROTECT, GONE_REGION_CONTINUE, GONE_CALLS };

static int call_gone(enum gone_call c, struct uffd *u, struct uffd_region *r, char *a,
		     const char *src, size_t *done)
{
	switch (c) {
	case GONE_CONTINUE:
		return uffd_continue_range(u, a, ps, 0, done);
	case GONE_COPY:
		return uffd_copy(u, a, src, ps, 0, done);
	case GONE_COPY_DONTWAKE:
		return uffd_copy(u, a, src, ps, UFFD_DONTWAKE, done);
	case GONE_ZEROPAGE:
		return uffd_zeropage(u, a, ps, 0, done);
	case GONE_POISON:
		return uffd_poison(u, a, ps, 0, done);
	case GONE_WRITEPROTECT:
		*done = 0;
		return uffd_writeprotect(u, a, ps, false, 0);
	case GONE_REGION_CONTINUE:
	case GONE_CALLS:
		break;
	}
	return uffd_region_continue(r, (uint64_t)(a - (char *)uffd_region_base(r)), ps, 0, done);
}

static bool finished_within(struct toucher *th, long ms)
{
	for (long i = 0; i < ms / 10 && !atomic_load(&th->finished); i++)
		sleep_ms(10);
	return atomic_load(&th->finished);
}

/*
 * A thread sleeps on a MINOR fault; the range is unregistered behind the
 * handler's back (by a raw UFFDIO_UNREGISTER: for MINOR faults the kernel
 * wakes nobody); the handler's resolving call then fails with -ENOENT and
 * must wake the thread, which faults again, now outside any registration,
 * and reads the page. uffd_unregister() itself wakes such a thread.
 */
START_TEST(test_enoent_wakes)
{
	struct uffd_region_opts ro = { .size = sizeof(ro), .length = 2 * ps, .modes = MINOR, .fd = -1 };
	struct uffd *u = open_default();
	char *src = map_anon(ps);

	memset(src, 's', ps);
	for (enum gone_call c = 0; c <= GONE_CALLS; c++) {
		struct uffd_region *r = NULL;
		struct uffd_event ev;
		struct toucher th;
		size_t done = 77;
		char *a;

		ck_assert_int_eq(uffd_region_create(u, &ro, &r), 0);
		a = (char *)uffd_region_base(r) + ps;
		((char *)uffd_region_alias(r))[ps] = 'g';
		touch_start(&th, a, false, 0);
		read_one(u, &ev);
		ck_assert_ptr_eq(ev.fault.addr, a);
		if (c == GONE_CALLS) {
			ck_assert_int_eq(uffd_unregister(u, uffd_region_base(r), 2 * ps), 0);
			ck_assert_msg(finished_within(&th, 2000), "uffd_unregister left a MINOR fault asleep");
		} else {
			struct uffdio_range range = { (uintptr_t)uffd_region_base(r), 2 * ps };

			ck_assert_int_eq(ioctl(uffd_fd(u), UFFDIO_UNREGISTER, &range), 0);
			ck_assert_msg(!finished_within(&th, 100), "call %d: the kernel woke the thread itself", c);
			ck_assert_int_eq(call_gone(c, u, r, a, src, &done), -ENOENT);
			ck_assert_uint_eq(done, 0);
			ck_assert_msg(finished_within(&th, 2000), "call %d: -ENOENT left the faulting thread asleep", c);
			assert_error_mentions("woken");
		}
		harness_thread_join(th.thread);
		ck_assert_int_eq(th.value, 'g');
		uffd_region_destroy(r);
	}
	munmap(src, ps);
	uffd_close(u);
}
END_TEST

/* ---- mmap_changing ---- */

struct remover {
	void *addr;
	size_t len;
	atomic_int tid;
	int ret;
};

static void *remove_fn(void *arg)
{
	struct remover *r = arg;

	atomic_store(&r->tid, gettid());
	r->ret = madvise(r->addr, r->len, MADV_REMOVE);
	return NULL;
}

static char task_state(pid_t tid)
{
	char path[64], line[128], state = '?';
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	f = fopen(path, "re");
	if (!f)
		return state;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "State: %c", &state) == 1)
			break;
	fclose(f);
	return state;
}

/* Polls until the thread that raised the event sleeps in the kernel. */
static void wait_blocked(struct uffd *u, struct remover *r)
{
	struct pollfd pfd = { .fd = uffd_fd(u), .events = POLLIN };
	int i;

	ck_assert_int_eq(poll(&pfd, 1, 5000), 1);
	for (i = 0; i < 500 && task_state(atomic_load(&r->tid)) != 'D'; i++)
		sleep_ms(10);
	ck_assert_int_eq(task_state(atomic_load(&r->tid)), 'D');
}

START_TEST(test_mmap_changing)
{
	struct uffd *u = open_features(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_MISSING_SHMEM |
				       UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_MOVE |
				       UFFD_FEATURE_POISON | UFFD_FEATURE_PAGEFAULT_FLAG_WP |
				       UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
	char *src = move_src(ps), *adst = map_anon(ps);
	struct remover r = { 0 };
	struct uffd_event ev[2];
	struct twin t;
	size_t done;
	int err = -EAGAIN, n = 0;

	need_features(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_MOVE | UFFD_FEATURE_POISON);
	twin_new(&t, 2 * ps, 0);
	memset(t.alias + ps, 9, ps);
	memset(src, 'm', ps);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_register(u, adst, ps, MISSING, NULL), 0);
	r.addr = t.base;
	r.len = ps;
	void *th = harness_thread_start(remove_fn, &r);
	wait_blocked(u, &r);

#define EXPECT_EAGAIN(call)                                      \
	do {                                                     \
		done = 1234;                                     \
		ck_assert_int_eq(call, -EAGAIN);                 \
		ck_assert_uint_eq(done, 0);                      \
		ck_assert_str_ne(uffd_last_error(), "");         \
	} while (0)
	EXPECT_EAGAIN(uffd_copy(u, t.base, src, ps, 0, &done));
	/* What to do, inside a handler and without a loop. */
	assert_error_mentions("UFFD_RETRY");
	assert_error_mentions("uffd_read_events");
	assert_error_mentions("*done");
	EXPECT_EAGAIN(uffd_copy(u, t.base, src, ps, UFFD_SKIP_EXISTING, &done));
	EXPECT_EAGAIN(uffd_zeropage(u, t.base, ps, 0, &done));
	EXPECT_EAGAIN(uffd_move(u, adst, src, ps, UFFD_ALLOW_SRC_HOLES, &done));
	EXPECT_EAGAIN(uffd_poison(u, t.base, ps, 0, &done));
	EXPECT_EAGAIN(uffd_continue_range(u, t.base + ps, ps, 0, &done));
	ck_assert_int_eq(uffd_writeprotect(u, t.base, ps, true, 0), -EAGAIN);
	assert_error_mentions("UFFD_RETRY");
	assert_error_mentions("uffd_read_events");
#undef EXPECT_EAGAIN
	/* Untouched. */
	ck_assert(!present(t.base));
	ck_assert(!present(t.base + ps));
	ck_assert(!present(adst));
	ck_assert(all_bytes(src, 'm', ps));

	ck_assert_int_eq(uffd_read_events(u, ev, 2), 1);
	ck_assert_int_eq(ev[0].type, UFFD_EV_REMOVE);
	ck_assert_ptr_eq(ev[0].remove.start, t.base);
	ck_assert_uint_eq(ev[0].remove.len, ps);
	harness_thread_join(th);
	ck_assert_int_eq(r.ret, 0);
	/* Afterwards the calls work (EAGAIN may outlive the event briefly). */
	for (int i = 0; i < 200 && err == -EAGAIN; i++, n++) {
		err = uffd_move(u, adst, src, ps, 0, &done);
		if (err == -EAGAIN)
			sleep_ms(5);
	}
	ck_assert_int_eq(err, 0);
	ck_assert(all_bytes(adst, 'm', ps));
	ck_assert_int_eq(uffd_zeropage(u, t.base, ps, 0, NULL), 0);
	ck_assert_int_eq(uffd_read_events(u, ev, 2), 0);
	twin_free(&t);
	munmap(src, ps);
	munmap(adst, ps);
	uffd_close(u);
}
END_TEST

/* ---- hugetlb ---- */

static size_t hugepages_or_skip(unsigned n)
{
	const char *why = "";
	size_t hps = harness_hugepages(n, &why);

	if (!hps)
		harness_skip("hugetlb: %s", why);
	return hps;
}

START_TEST(test_hugetlb_zeropage_copy)
{
	size_t hps = hugepages_or_skip(4), done = 0;
	struct uffd *u;
	uint64_t ioctls = 0;
	char *src;
	struct twin t;

	if (!hps)
		return;
	u = open_default();
	twin_new(&t, 2 * hps, MFD_HUGETLB);
	src = map_anon(2 * hps);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MISSING, &ioctls), 0);
	ck_assert_uint_eq(ioctls & (1ull << _UFFDIO_ZEROPAGE), 0);
	ck_assert_uint_ne(ioctls & (1ull << _UFFDIO_COPY), 0);
	ck_assert_int_eq(uffd_zeropage(u, t.base, hps, 0, &done), -EINVAL);
	ck_assert_uint_eq(done, 0);
	assert_error_mentions("hugetlbfs");
	/* A base-page length is not a huge page multiple. */
	ck_assert_int_eq(uffd_copy(u, t.base, src, ps, 0, &done), -EINVAL);
	memset(src, 'h', 2 * hps);
	ck_assert_int_eq(uffd_copy(u, t.base + hps, src, hps, 0, &done), 0);
	ck_assert_uint_eq(done, hps);
	ck_assert_int_eq(uffd_copy(u, t.base, src, 2 * hps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, hps);
	/* Skipping steps over the mapped huge page, not a base page. */
	ck_assert_int_eq(uffd_copy(u, t.base, src, 2 * hps, UFFD_SKIP_EXISTING, &done), 0);
	ck_assert_uint_eq(done, 2 * hps);
	ck_assert(all_bytes(t.base, 'h', 2 * hps));
	ck_assert_int_eq(uffd_unregister(u, t.base, t.len), 0);
	twin_free(&t);
	munmap(src, 2 * hps);
	uffd_close(u);
}
END_TEST

/* A hugetlb memfd mapped twice: CONTINUE and its errors; the fault address is huge-aligned. */
START_TEST(test_hugetlb_continue)
{
	size_t hps = hugepages_or_skip(2), done = 0;
	struct uffd_event ev;
	struct toucher th;
	struct uffd *u;
	struct twin t;

	if (!hps)
		return;
	u = open_default();
	twin_new(&t, 2 * hps, MFD_HUGETLB);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MINOR, NULL), 0);
	ck_assert_int_eq(uffd_continue_range(u, t.base, hps, 0, &done), -EFAULT);
	ck_assert_uint_eq(done, 0);
	assert_error_mentions("alias view");
	memset(t.alias, 'c', 2 * hps);
	ck_assert_int_eq(uffd_continue_range(u, t.base, ps, 0, &done), -EINVAL);
	ck_assert_int_eq(uffd_continue_range(u, t.base, hps, 0, &done), 0);
	ck_assert_uint_eq(done, hps);
	ck_assert_int_eq(uffd_continue_range(u, t.base, hps, 0, &done), -EEXIST);
	ck_assert_uint_eq(done, 0);
	ck_assert(all_bytes(t.base, 'c', hps));

	touch_start(&th, t.base + hps + 3 * ps + 1, false, 0);
	read_one(u, &ev);
	ck_assert_int_eq(ev.fault.kind, UFFD_FAULT_MINOR);
	ck_assert_ptr_eq(ev.fault.addr, t.base + hps);
	ck_assert_uint_eq(ev.fault.len, hps);	/* the mapping's page size, region or not */
	ck_assert_int_eq(uffd_continue_range(u, t.base, 2 * hps, UFFD_SKIP_EXISTING, &done), 0);
	ck_assert_uint_eq(done, 2 * hps);
	harness_thread_join(th.thread);
	ck_assert_int_eq(th.value, 'c');
	twin_free(&t);
	uffd_close(u);
}
END_TEST

/* With EXACT_ADDRESS the kernel does not align: the decoded fault still is. */
START_TEST(test_hugetlb_exact_address)
{
	size_t hps = hugepages_or_skip(1);
	struct uffd_event ev;
	struct toucher th;
	struct uffd *u;
	struct twin t;

	if (!hps)
		return;
	u = open_features(UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_EXACT_ADDRESS);
	twin_new(&t, hps, MFD_HUGETLB);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MISSING, NULL), 0);
	touch_start(&th, t.base + 5 * ps + 3, true, 'e');
	read_one(u, &ev);
	ck_assert_int_eq(ev.fault.kind, UFFD_FAULT_MISSING);
	ck_assert(ev.fault.write);
	ck_assert_ptr_eq(ev.fault.addr, t.base);
	ck_assert_uint_eq(ev.fault.len, hps);
	memset(t.alias, 'f', hps);	/* hugetlb has no zero page: fill the page cache */
	ck_assert_int_eq(uffd_copy(u, ev.fault.addr, t.alias, ev.fault.len, 0, NULL), -EEXIST);
	ck_assert_int_eq(uffd_wake(u, ev.fault.addr, ev.fault.len), 0);
	harness_thread_join(th.thread);
	ck_assert_int_eq(t.base[5 * ps + 3], 'e');
	ck_assert_int_eq(t.base[0], 'f');
	twin_free(&t);
	uffd_close(u);
}
END_TEST

START_TEST(test_hugetlb_register)
{
	size_t hps = hugepages_or_skip(1);
	struct uffd *u;
	uint64_t ioctls = 0;
	struct twin t;

	if (!hps)
		return;
	u = open_default();
	twin_new(&t, hps, MFD_HUGETLB);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MISSING | WP | MINOR, &ioctls), 0);
	ck_assert_uint_eq(ioctls & (1ull << _UFFDIO_ZEROPAGE), 0);
	ck_assert_uint_ne(ioctls & (1ull << _UFFDIO_CONTINUE), 0);
	ck_assert_uint_ne(ioctls & (1ull << _UFFDIO_WRITEPROTECT), 0);
	ck_assert_int_eq(uffd_unregister(u, t.base, t.len), 0);
	/* A range that is not a multiple of the huge page size. */
	ck_assert_int_eq(uffd_register(u, t.base, ps, MISSING, NULL), -EINVAL);
	uffd_close(u);
	/* WP on hugetlbfs without WP_HUGETLBFS_SHMEM, MINOR without MINOR_HUGETLBFS. */
	u = open_features(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MINOR_SHMEM |
			  UFFD_FEATURE_MISSING_HUGETLBFS);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, WP, NULL), -EOPNOTSUPP);
	assert_error_mentions("WP_HUGETLBFS_SHMEM");
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MINOR, NULL), -EOPNOTSUPP);
	assert_error_mentions("MINOR_HUGETLBFS");
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MISSING, NULL), 0);
	uffd_close(u);
	twin_free(&t);
}
END_TEST

/*
 * Faults on hugetlb ranges registered with uffd_register() (as QEMU
 * registers its RAM) are decoded without looking at /proc: the handle
 * recorded the page sizes at registration. Proven by decoding with no
 * file descriptor left to open (a look at /proc/self/maps or smaps would
 * fail, and the fault would come out as a base page).
 */
struct no_fds {
	struct rlimit old;
	int fd[256], n;
};

static void fds_exhaust(struct no_fds *x)
{
	struct rlimit low;
	int fd;

	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &x->old), 0);
	low = x->old;
	if (low.rlim_cur > 256)
		low.rlim_cur = 256;
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	for (x->n = 0; x->n < 256 && (fd = dup(0)) >= 0; x->n++)
		x->fd[x->n] = fd;
	ck_assert_int_eq(errno, EMFILE);
	ck_assert_int_eq(open("/proc/self/maps", O_RDONLY | O_CLOEXEC), -1);
}

static void fds_restore(struct no_fds *x)
{
	while (x->n)
		close(x->fd[--x->n]);
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &x->old), 0);
}

/* Each huge page of [base, base+n*hps) faulted at offset in, decoded, resolved. */
static void fault_huge_pages(struct uffd *u, char *base, size_t n, size_t hps, size_t in,
			     const char *src)
{
	struct no_fds x;

	fds_exhaust(&x);
	for (size_t i = 0; i < n; i++) {
		char *page = base + i * hps;
		struct uffd_event ev;
		struct toucher th;

		touch_start(&th, page + in, false, 0);
		read_one(u, &ev);
		ck_assert_int_eq(ev.type, UFFD_EV_FAULT);
		ck_assert_ptr_eq(ev.fault.addr, page);
		ck_assert_msg(ev.fault.len == hps, "fault %zu decoded as %zu bytes, not the huge page of %zu",
			      i, ev.fault.len, hps);
		ck_assert_int_eq(uffd_copy(u, ev.fault.addr, src, ev.fault.len, 0, NULL), 0);
		harness_thread_join(th.thread);
		ck_assert_int_eq(th.value, src[in]);
	}
	fds_restore(&x);
}

START_TEST(test_hugetlb_no_lookup)
{
	size_t hps = hugepages_or_skip(8);
	char *src;
	struct uffd *u;
	struct twin t;

	if (!hps)
		return;
	SKIP_UNDER_VALGRIND("valgrind needs file descriptors of its own");
	src = map_anon(hps);
	memset(src, 'q', hps);
	for (int exact = 0; exact < 2; exact++) {
		u = open_features(UFFD_FEATURE_MISSING_HUGETLBFS | (exact ? UFFD_FEATURE_EXACT_ADDRESS : 0));
		twin_new(&t, 4 * hps, MFD_HUGETLB);
		ck_assert_int_eq(uffd_register(u, t.base, t.len, MISSING, NULL), 0);
		fault_huge_pages(u, t.base, 4, hps, exact ? 5 * ps + 3 : 0, src);
		ck_assert_int_eq(uffd_unregister(u, t.base, t.len), 0);
		twin_free(&t);
		uffd_close(u);
	}
	munmap(src, hps);
}
END_TEST

struct remapper {
	void *from, *to;
	size_t len;
	void *ret;
};

static void *remap_fn(void *arg)
{
	struct remapper *m = arg;

	m->ret = mremap(m->from, m->len, m->len, MREMAP_MAYMOVE | MREMAP_FIXED, m->to);
	return NULL;
}

/* A REMAP event moves the recorded page sizes along with the registration. */
START_TEST(test_hugetlb_remap_no_lookup)
{
	size_t hps = hugepages_or_skip(2);
	struct remapper m;
	struct uffd_event ev;
	char *src, *area;
	struct uffd *u;
	struct twin t;
	void *th;

	if (!hps)
		return;
	SKIP_UNDER_VALGRIND("valgrind needs file descriptors of its own");
	if (!harness_have_features(UFFD_FEATURE_EVENT_REMAP))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_EVENT_REMAP");
	src = map_anon(hps);
	memset(src, 'r', hps);
	u = open_features(UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_EVENT_REMAP);
	twin_new(&t, 2 * hps, MFD_HUGETLB);
	ck_assert_int_eq(uffd_register(u, t.base, t.len, MISSING, NULL), 0);
	area = mmap(NULL, 3 * hps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(area, MAP_FAILED);
	m = (struct remapper){ .from = t.base, .len = t.len,
			       .to = (void *)(((uintptr_t)area + hps - 1) & ~(uintptr_t)(hps - 1)) };
	th = harness_thread_start(remap_fn, &m);
	read_one(u, &ev);	/* the mremap waits until this is read */
	harness_thread_join(th);
	ck_assert_ptr_eq(m.ret, m.to);
	ck_assert_int_eq(ev.type, UFFD_EV_REMAP);
	ck_assert_ptr_eq(ev.remap.to, m.to);
	fault_huge_pages(u, m.to, 2, hps, 3 * ps, src);
	munmap(area, 3 * hps);
	munmap(t.alias, t.len);
	close(t.fd);
	munmap(src, hps);
	uffd_close(u);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("ops");
	TCase *tc = CASE(register, 20);

	ps = harness_page_size();
	tcase_add_test(tc, test_register_anon_masks);
	tcase_add_test(tc, test_register_shmem_masks);
	tcase_add_test(tc, test_register_reduced_features);
	tcase_add_test(tc, test_register_kernel_errors);
	tc = CASE(continue, 20);
	tcase_add_test(tc, test_continue_basic);
	tcase_add_test(tc, test_continue_partial);
	tcase_add_test(tc, test_continue_resolves_fault);
	tcase_add_test(tc, test_continue_map_wp);
	tc = CASE(copy, 20);
	tcase_add_test(tc, test_copy_partial);
	tcase_add_test(tc, test_copy_errors);
	tcase_add_test(tc, test_copy_resolves_fault);
	tcase_add_test(tc, test_copy_dontwake);
	tcase_add_test(tc, test_copy_skip_wakes);
	tc = CASE(zeropage, 20);
	tcase_add_test(tc, test_zeropage_anon);
	tcase_add_test(tc, test_zeropage_shmem_alias);
	tc = CASE(move, 20);
	tcase_add_test(tc, test_move_basic);
	tcase_add_test(tc, test_move_src_holes);
	tcase_add_test(tc, test_move_errors);
	tc = CASE(poison, 20);
	tcase_add_test(tc, test_poison);
	tc = CASE(writeprotect, 20);
	tcase_add_test(tc, test_wp_pagemap);
	tcase_add_test(tc, test_wp_fault);
	tcase_add_test(tc, test_wp_copy_map_wp);
	tcase_add_test(tc, test_wp_errors);
	tc = CASE(enoent_wakes, 30);
	tcase_add_test(tc, test_enoent_wakes);
	tc = CASE(mmap_changing, 30);
	tcase_add_test(tc, test_mmap_changing);
	tc = CASE(hugetlb, 30);
	tcase_add_test(tc, test_hugetlb_register);
	tcase_add_test(tc, test_hugetlb_zeropage_copy);
	tcase_add_test(tc, test_hugetlb_continue);
	tcase_add_test(tc, test_hugetlb_exact_address);
	tc = CASE(hugetlb_no_lookup, 30);
	tcase_add_test(tc, test_hugetlb_no_lookup);
	tcase_add_test(tc, test_hugetlb_remap_no_lookup);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
