/* SPDX-License-Identifier: MIT */
/*
 * event.c: uffd_read_events() batching and the decoding of every message
 * type, with faults and non-cooperative events raised by other threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define WP      UFFDIO_REGISTER_MODE_WP
#define MINOR   UFFDIO_REGISTER_MODE_MINOR

static size_t ps;

static void *map_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ck_assert_ptr_ne(p, MAP_FAILED);
	return p;
}

static struct uffd *open_features(uint64_t features)
{
	struct uffd_opts o = { .size = sizeof(o), .features = features };
	struct uffd *u = NULL;

	ck_assert_msg(harness_have_features(features), "kernel lacks 0x%llx", (unsigned long long)features);
	ck_assert_int_eq(uffd_open(&u, &o), 0);
	return u;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* Faults queued and not yet read, from fdinfo. */
static long pending_faults(struct uffd *u)
{
	char path[64], line[128];
	long n = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", uffd_fd(u));
	f = fopen(path, "re");
	ck_assert_ptr_nonnull(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "pending: %ld", &n) == 1)
			break;
	fclose(f);
	return n;
}

static void wait_pending(struct uffd *u, long n)
{
	for (int i = 0; i < 500 && pending_faults(u) < n; i++)
		sleep_ms(10);
	ck_assert_int_eq(pending_faults(u), n);
}

static void wait_readable(struct uffd *u)
{
	struct pollfd pfd = { .fd = uffd_fd(u), .events = POLLIN };

	ck_assert_int_eq(poll(&pfd, 1, 5000), 1);
	ck_assert_int_eq(pfd.revents & (POLLERR | POLLHUP), 0);
}

/* A thread touching one byte, remembering its tid. */
struct toucher {
	volatile char *addr;
	bool write;
	char value;
	atomic_int tid;
	void *thread;
};

static void *touch_fn(void *arg)
{
	struct toucher *t = arg;

	atomic_store(&t->tid, gettid());
	if (t->write)
		harness_store8(t->addr, (unsigned char)t->value);
	else
		t->value = (char)harness_load8(t->addr);
	return NULL;
}

static void touch_start(struct toucher *t, void *addr, bool write, char value)
{
	t->addr = addr;
	t->write = write;
	t->value = value;
	atomic_init(&t->tid, 0);
	t->thread = harness_thread_start(touch_fn, t);
}

/* ---- reading ---- */

START_TEST(test_empty)
{
	struct uffd *u = NULL;
	struct uffd_event ev[4];
	char *a = map_anon(ps);

	ck_assert_int_eq(uffd_open(&u, NULL), 0);
	ck_assert_int_eq(uffd_read_events(u, ev, 4), 0);
	ck_assert_int_eq(uffd_register(u, a, ps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_read_events(u, ev, 1), 0);
	ck_assert_int_eq(uffd_read_events(u, ev, 1000), 0);
	ck_assert_int_eq(uffd_zeropage(u, a, ps, 0, NULL), 0);
	a[0] = 1;	/* mapped now: no fault */
	ck_assert_int_eq(uffd_read_events(u, ev, 4), 0);
	munmap(a, ps);
	uffd_close(u);
}
END_TEST

/* A blocking userfaultfd handed to uffd_open_fd() still reads without blocking. */
START_TEST(test_open_fd_blocking)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffd_event ev[2];
	struct uffd *u = NULL;
	int fd = (int)syscall(__NR_userfaultfd, 0);

	if (fd < 0 && errno == ENOSYS) {	/* valgrind lacks the system call */
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

		ck_assert_int_ge(dev, 0);
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, 0);
		close(dev);
	}
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ioctl(fd, UFFDIO_API, &api), 0);
	ck_assert_int_eq(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	ck_assert_int_eq(uffd_open_fd(&u, fd, 0), 0);
	ck_assert_int_ne(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
	ck_assert_int_eq(uffd_read_events(u, ev, 2), 0);
	uffd_close(u);
}
END_TEST

struct batch {
	struct uffd *u;
	char *area;
	struct toucher t[3];
};

/* Three threads block on MISSING faults: page 0 read, 1 and 2 written. */
static void batch_start(struct batch *b, uint64_t features)
{
	b->u = open_features(features);
	b->area = map_anon(3 * ps);
	ck_assert_int_eq(uffd_register(b->u, b->area, 3 * ps, MISSING, NULL), 0);
	for (int i = 0; i < 3; i++)
		touch_start(&b->t[i], b->area + i * ps + 17 * i, i > 0, (char)('A' + i));
	wait_pending(b->u, 3);
}

static void check_fault(struct batch *b, const struct uffd_event *e, bool want_tid)
{
	int i;

	ck_assert_int_eq(e->type, UFFD_EV_FAULT);
	ck_assert_ptr_eq(e->fault.uffd, b->u);
	ck_assert_ptr_null(e->fault.region);
	ck_assert_int_eq(e->fault.kind, UFFD_FAULT_MISSING);
	ck_assert_uint_eq(e->fault.len, ps);
	ck_assert_uint_eq(e->fault.offset, 0);
	ck_assert_uint_eq((uintptr_t)e->fault.addr % ps, 0);
	i = (int)(((char *)e->fault.addr - b->area) / (ptrdiff_t)ps);
	ck_assert_int_ge(i, 0);
	ck_assert_int_lt(i, 3);
	ck_assert_int_eq(e->fault.write, i > 0);
	if (want_tid)
		ck_assert_int_eq(e->fault.tid, atomic_load(&b->t[i].tid));
	else
		ck_assert_int_eq(e->fault.tid, 0);
}

static void batch_finish(struct batch *b)
{
	char *src = map_anon(3 * ps);

	memset(src, 'z', 3 * ps);
	ck_assert_int_eq(uffd_copy(b->u, b->area, src, 3 * ps, 0, NULL), 0);
	for (int i = 0; i < 3; i++)
		harness_thread_join(b->t[i].thread);
	ck_assert_int_eq(b->t[0].value, 'z');
	ck_assert_int_eq(b->area[ps + 17], 'B');
	ck_assert_int_eq(b->area[2 * ps + 34], 'C');
	ck_assert_int_eq(b->area[2 * ps], 'z');
	munmap(src, 3 * ps);
	munmap(b->area, 3 * ps);
	uffd_close(b->u);
}

START_TEST(test_batch)
{
	struct uffd_event ev[8];
	unsigned seen = 0;
	struct batch b;

	batch_start(&b, UFFD_FEATURE_THREAD_ID);
	ck_assert_int_eq(uffd_read_events(b.u, ev, 8), 3);
	for (int i = 0; i < 3; i++) {
		check_fault(&b, &ev[i], true);
		ck_assert_int_ne(ev[i].fault.tid, 0);
		seen |= 1u << (((char *)ev[i].fault.addr - b.area) / (ptrdiff_t)ps);
	}
	ck_assert_uint_eq(seen, 7);
	ck_assert_int_eq(uffd_read_events(b.u, ev, 8), 0);
	batch_finish(&b);
}
END_TEST

/* max smaller than the queue: the rest stays queued for the next call. */
START_TEST(test_max_smaller)
{
	struct uffd_event ev[8];
	struct batch b;

	batch_start(&b, UFFD_FEATURE_THREAD_ID);
	ck_assert_int_eq(uffd_read_events(b.u, ev, 2), 2);
	check_fault(&b, &ev[0], true);
	check_fault(&b, &ev[1], true);
	ck_assert_int_eq(pending_faults(b.u), 1);
	ck_assert_int_eq(uffd_read_events(b.u, ev + 2, 1), 1);
	check_fault(&b, &ev[2], true);
	ck_assert_ptr_ne(ev[2].fault.addr, ev[0].fault.addr);
	ck_assert_ptr_ne(ev[2].fault.addr, ev[1].fault.addr);
	ck_assert_int_eq(uffd_read_events(b.u, ev, 8), 0);
	batch_finish(&b);
}
END_TEST

/* Without THREAD_ID the tid is 0; with EXACT_ADDRESS the address is still aligned. */
START_TEST(test_no_tid_exact_address)
{
	struct uffd_event ev[4];
	struct batch b;

	batch_start(&b, UFFD_FEATURE_EXACT_ADDRESS);
	ck_assert_int_eq(uffd_read_events(b.u, ev, 4), 3);
	for (int i = 0; i < 3; i++)
		check_fault(&b, &ev[i], false);
	batch_finish(&b);
}
END_TEST

/* MINOR and WP faults decode their kind; a read is not a write. */
START_TEST(test_fault_kinds)
{
	struct uffd *u = NULL;
	struct uffd_event ev[2];
	struct toucher tm, tw;
	int fd = memfd_create("test-event", MFD_CLOEXEC);
	char *base, *alias, *anon = map_anon(ps);

	ck_assert_int_eq(uffd_open(&u, NULL), 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)ps), 0);
	base = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	alias = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(base, MAP_FAILED);
	ck_assert_ptr_ne(alias, MAP_FAILED);
	memset(alias, 'm', ps);
	ck_assert_int_eq(uffd_register(u, base, ps, MINOR, NULL), 0);
	anon[0] = 1;
	ck_assert_int_eq(uffd_register(u, anon, ps, WP, NULL), 0);
	ck_assert_int_eq(uffd_writeprotect(u, anon, ps, true, 0), 0);

	touch_start(&tm, base + ps - 1, false, 0);
	wait_pending(u, 1);
	touch_start(&tw, anon + 1, true, 'w');
	wait_pending(u, 2);
	ck_assert_int_eq(uffd_read_events(u, ev, 2), 2);
	ck_assert_int_eq(ev[0].fault.kind, UFFD_FAULT_MINOR);
	ck_assert(!ev[0].fault.write);
	ck_assert_ptr_eq(ev[0].fault.addr, base);
	ck_assert_int_eq(ev[0].fault.tid, atomic_load(&tm.tid));
	ck_assert_int_eq(ev[1].fault.kind, UFFD_FAULT_WP);
	ck_assert(ev[1].fault.write);
	ck_assert_ptr_eq(ev[1].fault.addr, anon);
	ck_assert_int_eq(ev[1].fault.tid, atomic_load(&tw.tid));
	ck_assert_int_eq(uffd_continue_range(u, base, ps, 0, NULL), 0);
	ck_assert_int_eq(uffd_writeprotect(u, anon, ps, false, 0), 0);
	harness_thread_join(tm.thread);
	harness_thread_join(tw.thread);
	ck_assert_int_eq(tm.value, 'm');
	ck_assert_int_eq(anon[1], 'w');
	munmap(base, ps);
	munmap(alias, ps);
	munmap(anon, ps);
	close(fd);
	uffd_close(u);
}
END_TEST

/* ---- non-cooperative events, raised by another thread ---- */

struct changer {
	void *(*fn)(void *);
	char *addr, *to;
	size_t len;
	long ret;
};

static void *do_mremap(void *arg)
{
	struct changer *c = arg;
	void *p = mremap(c->addr, c->len, c->len, MREMAP_MAYMOVE | MREMAP_FIXED, c->to);

	c->ret = p == (void *)c->to ? 0 : -errno;
	return NULL;
}

static void *do_munmap(void *arg)
{
	struct changer *c = arg;

	c->ret = munmap(c->addr, c->len) ? -errno : 0;
	return NULL;
}

static void *do_dontneed(void *arg)
{
	struct changer *c = arg;

	c->ret = madvise(c->addr, c->len, MADV_DONTNEED) ? -errno : 0;
	return NULL;
}

static void *do_fork(void *arg)
{
	struct changer *c = arg;
	int status = 0;
	pid_t pid = fork();

	if (pid == 0)
		_exit(42);
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		c->ret = -1;
	else
		c->ret = WIFEXITED(status) ? WEXITSTATUS(status) : -2;
	return NULL;
}

START_TEST(test_remap)
{
	struct uffd *u = open_features(UFFD_FEATURE_EVENT_REMAP);
	struct changer c = { .fn = do_mremap, .len = 2 * ps };
	struct uffd_event ev[4];
	char *zero;
	void *th;

	if (harness_valgrind()) {
		uffd_close(u);
		SKIP_TEST("cannot run under valgrind: it runs mremap(2) itself without letting other "
			  "threads run, so the thread that must read the REMAP event never does");
	}

	c.addr = map_anon(2 * ps);
	c.to = mmap(NULL, 2 * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(c.to, MAP_FAILED);
	ck_assert_int_eq(uffd_register(u, c.addr, 2 * ps, MISSING, NULL), 0);
	th = harness_thread_start(c.fn, &c);
	wait_readable(u);
	ck_assert_int_eq(uffd_read_events(u, ev, 4), 1);
	ck_assert_int_eq(ev[0].type, UFFD_EV_REMAP);
	ck_assert_ptr_eq(ev[0].remap.from, c.addr);
	ck_assert_ptr_eq(ev[0].remap.to, c.to);
	ck_assert_uint_eq(ev[0].remap.len, 2 * ps);
	harness_thread_join(th);
	ck_assert_int_eq(c.ret, 0);
	/* The registration moved with the mapping. */
	zero = c.to;
	for (int i = 0; i < 200; i++) {	/* EAGAIN may outlive the event briefly */
		int err = uffd_zeropage(u, zero, ps, 0, NULL);

		if (err != -EAGAIN) {
			ck_assert_int_eq(err, 0);
			break;
		}
		sleep_ms(5);
	}
	ck_assert_int_eq(zero[0], 0);
	munmap(c.to, 2 * ps);
	uffd_close(u);
}
END_TEST

START_TEST(test_unmap)
{
	struct uffd *u = open_features(UFFD_FEATURE_EVENT_UNMAP);
	struct changer c = { .fn = do_munmap, .len = ps };
	struct uffd_event ev[4];
	void *th;

	if (harness_valgrind()) {
		uffd_close(u);
		SKIP_TEST("cannot run under valgrind: it runs munmap(2) without letting other "
			  "threads run, so the thread that must read the UNMAP event never does");
	}

	c.addr = map_anon(3 * ps);
	ck_assert_int_eq(uffd_register(u, c.addr, 3 * ps, MISSING, NULL), 0);
	c.addr += ps;	/* the middle page */
	th = harness_thread_start(c.fn, &c);
	wait_readable(u);
	ck_assert_int_eq(uffd_read_events(u, ev, 4), 1);
	ck_assert_int_eq(ev[0].type, UFFD_EV_UNMAP);
	ck_assert_ptr_eq(ev[0].remove.start, c.addr);
	ck_assert_uint_eq(ev[0].remove.len, ps);
	harness_thread_join(th);
	ck_assert_int_eq(c.ret, 0);
	uffd_close(u);	/* first: munmap here would raise an event nobody reads */
	munmap(c.addr - ps, 3 * ps);
}
END_TEST

/* A fault and a REMOVE queued together: one call returns both, the fault first. */
START_TEST(test_remove_with_fault)
{
	struct uffd *u = open_features(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_THREAD_ID);
	struct changer c = { .fn = do_dontneed, .len = ps };
	char *a = map_anon(2 * ps), *src = map_anon(ps);
	struct uffd_event ev[4];
	struct toucher t;
	void *th;
	int n = 0;

	ck_assert_int_eq(uffd_register(u, a, 2 * ps, MISSING, NULL), 0);
	touch_start(&t, a + ps + 5, false, 0);
	wait_pending(u, 1);
	c.addr = a;
	th = harness_thread_start(c.fn, &c);
	/* The REMOVE message is queued once the madvise thread sleeps. */
	for (int i = 0; i < 500 && n < 2; i++) {
		n += uffd_read_events(u, ev + n, (size_t)(4 - n));
		if (n < 2)
			sleep_ms(10);
	}
	ck_assert_int_eq(n, 2);
	ck_assert_int_eq(ev[0].type, UFFD_EV_FAULT);
	ck_assert_ptr_eq(ev[0].fault.addr, a + ps);
	ck_assert_int_eq(ev[0].fault.tid, atomic_load(&t.tid));
	ck_assert_int_eq(ev[1].type, UFFD_EV_REMOVE);
	ck_assert_ptr_eq(ev[1].remove.start, a);
	ck_assert_uint_eq(ev[1].remove.len, ps);
	harness_thread_join(th);
	ck_assert_int_eq(c.ret, 0);
	memset(src, 'r', ps);
	for (int i = 0, err = -EAGAIN; err == -EAGAIN; i++) {
		ck_assert_int_lt(i, 200);
		err = uffd_copy(u, a + ps, src, ps, 0, NULL);
		ck_assert(err == 0 || err == -EAGAIN);
		if (err)
			sleep_ms(5);
	}
	harness_thread_join(t.thread);
	ck_assert_int_eq(t.value, 'r');
	munmap(a, 2 * ps);
	munmap(src, ps);
	uffd_close(u);
}
END_TEST

START_TEST(test_fork)
{
	struct uffd *u, *child = NULL;
	struct changer c = { .fn = do_fork };
	struct uffd_event ev[4];
	char *a = map_anon(ps);
	int fds, fd;
	void *th;

	if (harness_valgrind()) {
		munmap(a, ps);
		SKIP_TEST("cannot run under valgrind: it runs fork(2) without letting other "
			  "threads run, so the thread that must read the FORK event never does");
	}
	if (!harness_have_features(UFFD_FEATURE_EVENT_FORK))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_EVENT_FORK");
	u = open_features(UFFD_FEATURE_EVENT_FORK);
	ck_assert_int_eq(uffd_register(u, a, ps, MISSING, NULL), 0);
	fds = harness_count_fds();
	th = harness_thread_start(c.fn, &c);
	wait_readable(u);
	ck_assert_int_eq(uffd_read_events(u, ev, 4), 1);
	ck_assert_int_eq(ev[0].type, UFFD_EV_FORK);
	fd = ev[0].fork.fd;
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ne(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	ck_assert_int_eq(harness_count_fds(), fds + 1);
	harness_thread_join(th);
	ck_assert_int_eq(c.ret, 42);
	/* The caller owns the fd: wrap it (uffd_open_fd refuses an fd that is
	 * not a userfaultfd, so success also says what the fd is), then close it. */
	ck_assert_int_eq(uffd_open_fd(&child, fd, uffd_features(u)), 0);
	ck_assert_uint_eq(uffd_features(child), uffd_features(u));
	uffd_close(child);
	ck_assert_int_eq(harness_count_fds(), fds);
	ck_assert_int_eq(uffd_read_events(u, ev, 4), 0);
	munmap(a, ps);
	uffd_close(u);
}
END_TEST

/* ---- fork children adopted by the loop ---- */

static int adopt_child(void *ctx, struct uffd *child)
{
	(void)ctx;
	(void)child;
	return 0;	/* the loop watches it with the same handlers */
}

/*
 * The exit status of child (0, 1: a wrong byte, 128 + n: signal n),
 * killed after timeout_s: a fault nobody resolves hangs it.
 */
static int wait_child(pid_t child, int timeout_s)
{
	int status = 0;

	for (int i = 0; i < timeout_s * 100; i++) {
		pid_t r = waitpid(child, &status, WNOHANG);

		ck_assert_int_ge(r, 0);
		if (r == child)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		sleep_ms(10);
	}
	kill(child, SIGKILL);
	ck_assert_int_eq(waitpid(child, &status, 0), child);
	return -1;
}

/*
 * A fork child moves its hugetlb area to an address the parent never
 * mapped, then faults there: the loop adopted it, and its faults are
 * sized by the child's own table (seeded from the parent's, moved by the
 * child's REMAP), not by the parent's mappings (4 KiB: a zero-page
 * resolution hugetlb refuses, and the child hangs).
 */
START_TEST(test_fork_child_huge_moved)
{
	const char *why = "";
	size_t hps = harness_hugepages(4, &why);
	struct uffd_handlers h = { .fork = adopt_child };
	struct uffd_loop *l = NULL;
	struct uffd *u;
	char *a;
	pid_t pid;
	int st;

	if (harness_valgrind())
		SKIP_TEST("cannot run under valgrind: it runs fork(2) and mremap(2) without letting the loop thread run");
	if (!hps)
		SKIP_TEST("hugetlb: %s", why);
	if (!harness_have_features(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
				   UFFD_FEATURE_MISSING_HUGETLBFS))
		SKIP_TEST("the kernel lacks EVENT_FORK, EVENT_REMAP or MISSING_HUGETLBFS");
	u = open_features(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_MISSING_HUGETLBFS);
	a = mmap(NULL, 2 * hps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (a == MAP_FAILED)
		SKIP_TEST("hugetlb: mmap of 2 huge pages failed: %s", strerror(errno));
	ck_assert_int_eq(uffd_register(u, a, 2 * hps, MISSING, NULL), 0);
	ck_assert_int_eq(uffd_loop_new(&l, NULL), 0);
	ck_assert_int_eq(uffd_loop_add(l, u, &h, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		char *resv = mmap(NULL, 4 * hps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		char *to = (char *)(((uintptr_t)resv + hps - 1) & ~(uintptr_t)(hps - 1));
		int bad = 0;

		signal(SIGALRM, SIG_DFL);	/* not the harness's timeout handler, which kills the group */
		alarm(10);
		if (resv == MAP_FAILED || mremap(a, 2 * hps, 2 * hps, MREMAP_MAYMOVE | MREMAP_FIXED, to) != to)
			_exit(2);
		for (size_t i = 0; i < 2; i++) {
			bad |= ((volatile char *)to)[i * hps + 5] != 0;
			to[i * hps + hps - 1] = 7;
			bad |= ((volatile char *)to)[i * hps + hps - 1] != 7;
		}
		_exit(bad);
	}
	st = wait_child(pid, 15);
	ck_assert_msg(st == 0, "the child %s (status %d)", st == 128 + SIGALRM || st < 0 ?
		      "hung on a fault in its moved hugetlb area" : "failed", st);
	uffd_loop_free(l);
	munmap(a, 2 * hps);
	uffd_close(u);
}
END_TEST

struct no_proc_ctx {
	char *page;	/* the contents every fault gets */
};

static int copy_page(void *ctx, struct uffd_fault *f)
{
	struct no_proc_ctx *x = ctx;

	return uffd_copy(f->uffd, f->addr, x->page, f->len, 0, NULL) ? -EIO : UFFD_HANDLED;
}

/*
 * In a test process of its own: a private mount namespace with /proc
 * unmounted; a loop adopts a fork child, whose faults get the handler's
 * page, not zeros (its uffd closed because it could not be recognised).
 * Exit 0 pass, 1 zeros in the child, 2 the child hung or failed, 77 the
 * namespace cannot be made (the reason on the pipe).
 */
static int no_proc_main(int why_fd)
{
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_EVENT_FORK };
	struct no_proc_ctx x = { .page = malloc(ps) };
	struct uffd_handlers h = { .fork = adopt_child, .missing = copy_page };
	struct uffd_loop *l = NULL;
	struct uffd *u = NULL;
	char *a;
	pid_t pid;
	int st;

	if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) {
		dprintf(why_fd, "unshare(CLONE_NEWNS) or a private / not permitted: %s", strerror(errno));
		return 77;
	}
	if (umount2("/proc", MNT_DETACH) && mount("none", "/proc", "tmpfs", 0, NULL)) {
		dprintf(why_fd, "cannot unmount /proc or mount a tmpfs over it: %s", strerror(errno));
		return 77;
	}
	if (!access("/proc/self/fd", F_OK))
		return 3;
	memset(x.page, 0x5a, ps);
	a = mmap(NULL, 8 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (a == MAP_FAILED || uffd_open(&u, &o) || uffd_register(u, a, 8 * ps, MISSING, NULL) ||
	    uffd_loop_new(&l, NULL) || uffd_loop_add(l, u, &h, &x) || uffd_loop_start(l, 1))
		return 4;
	pid = fork();
	if (pid == 0) {
		int bad = 0;

		signal(SIGALRM, SIG_DFL);	/* not the harness's timeout handler, which kills the group */
		alarm(10);
		for (size_t i = 0; i < 8; i++)
			bad |= ((volatile char *)a)[i * ps + 9] != 0x5a;
		_exit(bad);
	}
	st = pid < 0 ? -1 : wait_child(pid, 15);
	uffd_loop_free(l);
	uffd_close(u);
	return st == 0 ? 0 : st == 1 ? 1 : 2;
}

START_TEST(test_fork_child_no_proc)
{
	int why[2], st;
	char reason[256] = "";
	pid_t pid;
	ssize_t n;

	if (harness_valgrind())
		SKIP_TEST("cannot run under valgrind: it runs fork(2) without letting the loop thread run");
	if (!harness_have_features(UFFD_FEATURE_EVENT_FORK))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_EVENT_FORK");
	ck_assert_int_eq(pipe2(why, O_CLOEXEC), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(no_proc_main(why[1]));
	close(why[1]);
	st = wait_child(pid, 25);
	n = read(why[0], reason, sizeof(reason) - 1);
	reason[n > 0 ? n : 0] = '\0';
	close(why[0]);
	if (st == 77)
		SKIP_TEST("no mount namespace without /proc: %s", reason);
	ck_assert_msg(st != 1, "without /proc the adopted fork child read zeros: its userfaultfd was closed");
	ck_assert_msg(st == 0, "without /proc: status %d (2: the child hung or died, 3: /proc still there, "
		      "4: setting up the loop failed)", st);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("event");
	TCase *tc = CASE(read, 20);

	ps = harness_page_size();
	tcase_add_test(tc, test_empty);
	tcase_add_test(tc, test_max_smaller);
	tcase_add_test(tc, test_open_fd_blocking);
	tc = CASE(faults, 20);
	tcase_add_test(tc, test_batch);
	tcase_add_test(tc, test_no_tid_exact_address);
	tcase_add_test(tc, test_fault_kinds);
	tc = CASE(remap, 20);
	tcase_add_test(tc, test_remap);
	tc = CASE(unmap, 20);
	tcase_add_test(tc, test_unmap);
	tc = CASE(remove, 20);
	tcase_add_test(tc, test_remove_with_fault);
	tc = CASE(fork, 20);
	tcase_add_test(tc, test_fork);
	tc = CASE(fork_child_huge_moved, 30);
	tcase_add_test(tc, test_fork_child_huge_moved);
	tc = CASE(fork_child_no_proc, 40);
	tcase_add_test(tc, test_fork_child_no_proc);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
