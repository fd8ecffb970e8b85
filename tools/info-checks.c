/* SPDX-License-Identifier: MIT */
/*
 * uffd-info: the capability checks. Each one really does what it reports on
 * a small scratch mapping, in a child process with a deadline, so that a
 * fault nobody resolves can never hang uffd-info.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compat.h"
#include "info-fault.h"

/* The whole check, in its child, is killed after this long. */
#define CHECK_DEADLINE_S 10

#define FIX_FULL_UFFD "open a full userfaultfd: apply a fix under \"Opening a userfaultfd\""
#define FIX_URING_KERNEL "Linux >= 6.10 reads a userfaultfd in io_uring without a worker thread (libuffd polls meanwhile)"

struct ctx;

struct check_def {
	const char *key, *label;
	uint64_t features; /* needed UFFD_FEATURE_* bits */
	const char *extra; /* other needs, or NULL */
	void (*fn)(struct ctx *c);
	enum mem_kind mem;
};

/*
 * What a check works with. It lives in the frame of the child that runs the
 * check, until the child exits: a toucher left blocked by a failed check
 * never points into a dead stack frame.
 */
struct ctx {
	struct row *r;
	const struct check_env *e;
	const struct check_def *d;
	struct uffd *u;
	struct scratch s, src; /* src: what check_move moves from */
	struct waiter w;
	struct toucher t;
};

static bool fail_feature(struct row *r, uint64_t missing)
{
	uint64_t bit = missing & -missing;
	char fix[64];

	snprintf(fix, sizeof(fix), "Linux >= %s", feature_since(bit));
	return fail(r, fix, "the kernel lacks UFFD_FEATURE_%s", uffd_feature_name(bit));
}

/* A handle with the check's features, user-mode-only when nothing else can be had. */
static bool open_uffd(struct row *r, const struct check_env *e, uint64_t features,
		      struct uffd **u)
{
	struct uffd_opts o = { .size = sizeof(o), .features = features,
			       .flags = UFFD_OPEN_USER_MODE_ONLY };
	int err;

	if (e->probe_err)
		return fail(r, "open a userfaultfd: apply a fix under \"Opening a userfaultfd\"",
			    "no userfaultfd can be opened (%s)", errname(e->probe_err));
	if (features & ~e->available)
		return fail_feature(r, features & ~e->available);
	err = uffd_open(u, &o);
	if (err == -EPERM && (features & UFFD_FEATURE_EVENT_FORK))
		return fail(r, "give the program CAP_SYS_PTRACE (setcap cap_sys_ptrace=ep PROGRAM) if it needs fork events",
			    "UFFDIO_API refused UFFD_FEATURE_EVENT_FORK with EPERM: it needs CAP_SYS_PTRACE");
	if (err)
		return fail(r, "", "uffd_open failed: %s", uffd_last_error());
	return true;
}

static bool reg(struct row *r, struct uffd *u, void *addr, size_t len, uint64_t modes)
{
	if (uffd_register(u, addr, len, modes, NULL))
		return fail(r, "", "registering the scratch mapping failed: %s", uffd_last_error());
	return true;
}

/*
 * A handle with the check's features and c->s, a scratch mapping of `pages`
 * pages registered with modes; the toucher aims at its first page.
 */
static bool setup(struct ctx *c, uint64_t modes, size_t pages, enum touch_op op)
{
	struct scratch *s = &c->s;

	if (!open_uffd(c->r, c->e, c->d->features, &c->u) ||
	    !scratch_map(c->r, s, c->d->mem, pages, c->e->hugepage_size))
		return false;
	if (modes & UFFDIO_REGISTER_MODE_MINOR) /* what a MINOR fault will map */
		memset(s->alias, 0x5a, s->len);
	else if (modes & UFFDIO_REGISTER_MODE_WP) /* pages to protect */
		memset(s->base, 'a', s->len);
	c->t.addr = s->base;
	c->t.op = op;
	return reg(c->r, c->u, s->base, s->len, modes);
}

/* io_uring reads when io_uring works, else poll. */
static void waiter_any(struct ctx *c)
{
	if (waiter_init(&c->w, c->u, true))
		waiter_init(&c->w, c->u, false);
}

static const char *waiter_how(const struct waiter *w)
{
	return w->uring ? "an io_uring read" : "poll and read(2)";
}

static void check_minor(struct ctx *c)
{
	if (!setup(c, UFFDIO_REGISTER_MODE_MINOR, 1, TOUCH_READ))
		return;
	waiter_any(c);
	if (!round_trip(c->r, &c->w, &c->t, UFFD_FAULT_MINOR, NULL, c->s.ps))
		return;
	if (c->t.value != 0x5a) {
		fail(c->r, "", "the page read 0x%02x, not what was written through the second mapping",
		     (unsigned char)c->t.value);
		return;
	}
	pass(c->r, "touching a page cached but not mapped raised a MINOR fault; a handler thread read it through %s and mapped the page with UFFDIO_CONTINUE",
	     waiter_how(&c->w));
}

static void check_wp(struct ctx *c)
{
	if (!setup(c, UFFDIO_REGISTER_MODE_WP, 1, TOUCH_WRITE))
		return;
	if (uffd_writeprotect(c->u, c->s.base, c->s.len, true, 0)) {
		fail(c->r, "", "write-protecting failed: %s", uffd_last_error());
		return;
	}
	waiter_any(c);
	c->t.value = 'b';
	if (!round_trip(c->r, &c->w, &c->t, UFFD_FAULT_WP, NULL, c->s.ps))
		return;
	if (c->s.base[0] != 'b' || c->s.base[1] != 'a') {
		fail(c->r, "", "after the WP fault the page holds '%c%c', not \"ba\"",
		     c->s.base[0], c->s.base[1]);
		return;
	}
	pass(c->r, "a write to a write-protected page raised a WP fault; un-protecting the page (UFFDIO_WRITEPROTECT) let the write through");
}

static void check_move(struct ctx *c)
{
	const struct scratch *src = &c->src;

	if (!scratch_map(c->r, &c->src, MEM_ANON, 1, 0))
		return;
	memset(src->base, 0x5a, src->len);
	if (!setup(c, UFFDIO_REGISTER_MODE_MISSING, 1, TOUCH_READ))
		return;
	waiter_any(c);
	if (!round_trip(c->r, &c->w, &c->t, UFFD_FAULT_MISSING, src->base, c->s.ps))
		return;
	if (c->t.value != 0x5a || *(volatile char *)src->base != 0) {
		fail(c->r, "", "after UFFDIO_MOVE the destination reads 0x%02x and the source 0x%02x (expected 0x5a and 0)",
		     (unsigned char)c->t.value, (unsigned char)src->base[0]);
		return;
	}
	pass(c->r, "a MISSING fault was resolved by moving a populated page into place with UFFDIO_MOVE; the source became a hole");
}

/* Start the toucher and wait for it: false with the row failed when it blocked. */
static bool touch_alone(struct ctx *c, const char *what)
{
	if (!toucher_start(c->r, &c->t))
		return false;
	if (!toucher_wait(&c->t, FAULT_MS))
		return fail(c->r, "", "%s blocked instead of raising SIGBUS", what);
	return true;
}

static void check_poison(struct ctx *c)
{
	if (!setup(c, UFFDIO_REGISTER_MODE_MISSING, 1, TOUCH_READ))
		return;
	if (uffd_poison(c->u, c->s.base, c->s.len, 0, NULL)) {
		fail(c->r, "", "UFFDIO_POISON failed: %s", uffd_last_error());
		return;
	}
	if (!touch_alone(c, "reading a poisoned page"))
		return;
	if (c->t.sigbus != 1) {
		fail(c->r, "", "reading a poisoned page raised %d SIGBUS signals, not 1", c->t.sigbus);
		return;
	}
	pass(c->r, "UFFDIO_POISON installed a marker, and reading the page raised SIGBUS");
}

static void check_sigbus(struct ctx *c)
{
	if (!setup(c, UFFDIO_REGISTER_MODE_MINOR, 1, TOUCH_READ))
		return;
	sigbus_setup(uffd_fd(c->u), c->s.base, c->s.len, c->s.ps);
	if (!touch_alone(c, "touching a registered page"))
		return;
	if (c->t.sigbus != 1 || c->t.value != 0x5a) {
		fail(c->r, "", "the access raised %d SIGBUS signals and read 0x%02x: UFFDIO_CONTINUE in the signal handler did not resolve it",
		     c->t.sigbus, (unsigned char)c->t.value);
		return;
	}
	pass(c->r, "a touch raised SIGBUS instead of a message, and the faulting thread resolved it in its signal handler with UFFDIO_CONTINUE");
}

static int count_iou_workers(void)
{
	DIR *d = opendir("/proc/self/task");
	char path[320], comm[32];
	struct dirent *ent;
	int n = 0;

	while (d && (ent = readdir(d))) {
		int fd;
		ssize_t len;

		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", ent->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		len = read(fd, comm, sizeof(comm) - 1);
		close(fd);
		comm[len > 0 ? len : 0] = '\0';
		n += !strncmp(comm, "iou-wrk", 7);
	}
	if (d)
		closedir(d);
	return n;
}

static bool uring_error(struct row *r, const struct check_env *e, int err)
{
	if (err == -EPERM && e->io_uring_disabled == 1)
		return fail(r, "add the user to the group in kernel.io_uring_group, or sysctl kernel.io_uring_disabled=0 (libuffd polls meanwhile)",
			    "io_uring_setup failed with EPERM: kernel.io_uring_disabled is 1");
	if (err == -EPERM && e->io_uring_disabled > 0)
		return fail(r, "sysctl kernel.io_uring_disabled=0 (libuffd polls meanwhile)",
			    "io_uring_setup failed with EPERM: kernel.io_uring_disabled is %ld", e->io_uring_disabled);
	if (err == -EPERM)
		return fail(r, "allow io_uring_setup in the seccomp, container or LSM policy (libuffd polls meanwhile)",
			    "io_uring_setup failed with EPERM although kernel.io_uring_disabled is not set: a security policy refuses it");
	return fail(r, err == -ENOSYS ? "a kernel built with CONFIG_IO_URING=y (libuffd polls meanwhile)" : "",
		    "io_uring_setup failed with %s", errname(err));
}

static void check_io_uring(struct ctx *c)
{
	struct fault_msg m;
	int err, n;

	if (!setup(c, UFFDIO_REGISTER_MODE_MISSING, 1, TOUCH_READ))
		return;
	err = waiter_init(&c->w, c->u, true);
	if (err) {
		uring_error(c->r, c->e, err);
		return;
	}
	n = waiter_next(&c->w, 100, &m);
	if (n) {
		fail(c->r, FIX_URING_KERNEL, "an io_uring read of an idle O_NONBLOCK userfaultfd completed at once (%s) instead of waiting",
		     n < 0 ? errname(n) : "with a message");
		return;
	}
	if (count_iou_workers()) {
		fail(c->r, FIX_URING_KERNEL, "io_uring handed the pending read to a worker thread (iou-wrk)");
		return;
	}
	if (!round_trip(c->r, &c->w, &c->t, UFFD_FAULT_MISSING, NULL, c->s.ps))
		return;
	if (count_iou_workers()) {
		fail(c->r, FIX_URING_KERNEL, "io_uring started a worker thread (iou-wrk) to complete the read");
		return;
	}
	pass(c->r, "an io_uring read of an idle O_NONBLOCK userfaultfd stayed pending with no iou-wrk thread and completed (res=%d) when a fault arrived",
	     c->w.last_res);
}

static bool scan(struct row *r, int pm, const struct scratch *s, uint64_t flags,
		 struct page_region *v, size_t nv, int *n)
{
	struct pm_scan_arg a = {
		.size = sizeof(a), .flags = flags,
		.start = (uintptr_t)s->base, .end = (uintptr_t)s->base + s->len,
		.vec = (uintptr_t)v, .vec_len = nv,
		.category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
	};

	*n = ioctl(pm, PAGEMAP_SCAN, &a);
	if (*n >= 0)
		return true;
	return fail(r, errno == ENOTTY || errno == EINVAL ? "Linux >= 6.7 (PAGEMAP_SCAN)" : "",
		    "ioctl(PAGEMAP_SCAN) on /proc/self/pagemap failed with %s", errname(errno));
}

static void check_dirty(struct ctx *c)
{
	const struct scratch *s = &c->s;
	struct page_region v[4] = { { 0 } }; /* valgrind does not know PAGEMAP_SCAN writes it */
	int pm, n;

	if (!setup(c, UFFDIO_REGISTER_MODE_WP, 4, TOUCH_READ))
		return;
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm < 0) {
		fail(c->r, "", "opening /proc/self/pagemap failed with %s", errname(errno));
		return;
	}
	if (!scan(c->r, pm, s, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, v, 4, &n))
		return;
	s->base[s->ps] = 'b'; /* WP_ASYNC: the kernel resolves these itself */
	s->base[3 * s->ps] = 'b';
	if (!scan(c->r, pm, s, 0, v, 4, &n))
		return;
	if (n != 2 || v[0].start != (uintptr_t)s->base + s->ps || v[0].end != v[0].start + s->ps ||
	    v[1].start != (uintptr_t)s->base + 3 * s->ps || v[1].end != v[1].start + s->ps) {
		fail(c->r, "", "after writing pages 1 and 3 of 4, PAGEMAP_SCAN reported %d runs of written pages", n);
		return;
	}
	pass(c->r, "after write-protecting 4 pages with PAGEMAP_SCAN (WP_ASYNC), writes went through without a message and a scan reported exactly the 2 pages written");
}

static void check_kernel_faults(struct ctx *c)
{
	int p[2];

	if (!setup(c, UFFDIO_REGISTER_MODE_MINOR, 1, TOUCH_SYSCALL))
		return;
	if (pipe2(p, O_CLOEXEC) || write(p[1], "kernel-fault-ok!", 16) != 16) {
		fail(c->r, "", "preparing a pipe failed with %s", errname(errno));
		return;
	}
	waiter_any(c);
	c->t.fd = p[0];
	if (!round_trip(c->r, &c->w, &c->t, UFFD_FAULT_MINOR, NULL, c->s.ps)) {
		if (atomic_load(&c->t.done) && c->t.ret == -EFAULT)
			fail(c->r, FIX_FULL_UFFD, "read(2) into registered memory failed with EFAULT and no fault was reported: the userfaultfd is user-mode-only");
		return;
	}
	if (c->t.ret != 16 || memcmp(c->s.base, "kernel-fault-ok!", 16)) {
		fail(c->r, "", "read(2) into registered memory returned %ld after the fault was resolved", c->t.ret);
		return;
	}
	pass(c->r, "read(2) into registered memory raised a MINOR fault inside the kernel; once resolved, read(2) returned 16 bytes");
}

static void check_event_fork(struct ctx *c)
{
	struct fault_msg m;
	int n;

	if (!setup(c, UFFDIO_REGISTER_MODE_MISSING, 1, TOUCH_FORK) || !toucher_start(c->r, &c->t))
		return;
	waiter_init(&c->w, c->u, false);
	n = waiter_next(&c->w, FAULT_MS, &m);
	if (n != 1 || m.type != UFFD_EV_FORK || m.fork_fd < 0) {
		fail(c->r, "", "fork() from another thread did not deliver a FORK event within %d ms", FAULT_MS);
		return;
	}
	close(m.fork_fd);
	if (!toucher_wait(&c->t, FAULT_MS) || c->t.ret <= 0) {
		fail(c->r, "", "fork() did not return after its FORK event was read (%ld)", c->t.ret);
		return;
	}
	pass(c->r, "fork() from another thread delivered a FORK event with the child's userfaultfd");
}

/*
 * MISSING faults as Firecracker raises them for uffd-serve: on a userfaultfd
 * opened with EVENT_REMOVE, resolved with a zero page (a COPY of zeros on
 * hugetlbfs).
 */
static void check_missing(struct ctx *c)
{
	if (!setup(c, UFFDIO_REGISTER_MODE_MISSING, 1, TOUCH_READ))
		return;
	waiter_any(c);
	if (!round_trip(c->r, &c->w, &c->t, UFFD_FAULT_MISSING, NULL, c->s.ps))
		return;
	if (c->t.value) {
		fail(c->r, "", "the page read 0x%02x after the fault was resolved with zeros", (unsigned char)c->t.value);
		return;
	}
	pass(c->r, "reading a missing %s page raised a MISSING fault on a userfaultfd opened with EVENT_REMOVE (as Firecracker opens it); a handler thread read it through %s and resolved it",
	     c->d->mem == MEM_HUGETLB ? "huge" : "anonymous", waiter_how(&c->w));
}

/* A balloon's give-back: MADV_DONTNEED on registered memory is a REMOVE event, and the page reads zero after it. */
static void check_event_remove(struct ctx *c)
{
	struct fault_msg m;
	int n;

	if (!setup(c, UFFDIO_REGISTER_MODE_MISSING, 1, TOUCH_WRITE))
		return;
	waiter_any(c);
	c->t.value = 'x';
	if (!round_trip(c->r, &c->w, &c->t, UFFD_FAULT_MISSING, NULL, c->s.ps))
		return;
	if (c->s.base[0] != 'x') {
		fail(c->r, "", "the write after the MISSING fault did not land");
		return;
	}
	c->t = (struct toucher){ .addr = c->s.base, .op = TOUCH_DONTNEED };
	if (!toucher_start(c->r, &c->t))
		return;
	n = waiter_next(&c->w, FAULT_MS, &m);
	if (n != 1 || m.type != UFFD_EV_REMOVE) {
		fail(c->r, "", "MADV_DONTNEED on registered memory delivered no REMOVE event within %d ms", FAULT_MS);
		return;
	}
	if (!toucher_wait(&c->t, FAULT_MS) || c->t.ret) {
		fail(c->r, "", "madvise(MADV_DONTNEED) did not return after its REMOVE event was read (%ld)", c->t.ret);
		return;
	}
	pass(c->r, "MADV_DONTNEED on registered memory (a balloon giving pages back) delivered a REMOVE event, and madvise returned once it was read");
}

static const struct check_def defs[CHECK_ROWS] = {
	[CHECK_MINOR_SHMEM] = { "minor_shmem", "minor faults on shmem (core)",
		UFFD_FEATURE_MINOR_SHMEM, NULL, check_minor, MEM_SHMEM },
	[CHECK_MINOR_HUGETLB] = { "minor_hugetlb", "minor faults on hugetlb",
		UFFD_FEATURE_MINOR_HUGETLBFS, "a free huge page", check_minor, MEM_HUGETLB },
	[CHECK_WP_ANON] = { "wp_anon", "write-protect on anonymous memory",
		UFFD_FEATURE_PAGEFAULT_FLAG_WP, NULL, check_wp, MEM_ANON },
	[CHECK_WP_SHMEM] = { "wp_shmem", "write-protect on shmem",
		UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, NULL, check_wp, MEM_SHMEM },
	[CHECK_WP_HUGETLB] = { "wp_hugetlb", "write-protect on hugetlb",
		UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, "a free huge page",
		check_wp, MEM_HUGETLB },
	[CHECK_MOVE] = { "move", "UFFDIO_MOVE", UFFD_FEATURE_MOVE, NULL, check_move, MEM_ANON },
	[CHECK_POISON] = { "poison", "UFFDIO_POISON", UFFD_FEATURE_POISON, NULL, check_poison, MEM_ANON },
	[CHECK_SIGBUS] = { "sigbus", "SIGBUS mode (in-thread resolution)",
		UFFD_FEATURE_SIGBUS | UFFD_FEATURE_MINOR_SHMEM, NULL, check_sigbus, MEM_SHMEM },
	[CHECK_IO_URING] = { "io_uring", "io_uring reads, no worker thread",
		0, "io_uring, Linux 6.10", check_io_uring, MEM_ANON },
	[CHECK_DIRTY] = { "dirty_tracking", "dirty tracking (PAGEMAP_SCAN)",
		UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC, "PAGEMAP_SCAN (6.7)",
		check_dirty, MEM_ANON },
	[CHECK_KERNEL_FAULTS] = { "kernel_faults", "faults raised inside the kernel",
		UFFD_FEATURE_MINOR_SHMEM, "a full, not user-mode-only, userfaultfd",
		check_kernel_faults, MEM_SHMEM },
	[CHECK_EVENT_FORK] = { "event_fork", "fork events",
		UFFD_FEATURE_EVENT_FORK, "CAP_SYS_PTRACE", check_event_fork, MEM_ANON },
	[CHECK_MISSING_ANON] = { "missing_anon", "missing faults, anonymous (serve)",
		UFFD_FEATURE_EVENT_REMOVE, NULL, check_missing, MEM_ANON },
	[CHECK_MISSING_HUGETLB] = { "missing_hugetlb", "missing faults, hugetlb (serve)",
		UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_MISSING_HUGETLBFS, "a free huge page",
		check_missing, MEM_HUGETLB },
	[CHECK_EVENT_REMOVE] = { "event_remove", "remove events (serve, balloon)",
		UFFD_FEATURE_EVENT_REMOVE, NULL, check_event_remove, MEM_ANON },
};

/* "MINOR_HUGETLBFS (5.13), a free huge page" */
static void describe_needs(const struct check_def *d, char *buf, size_t size)
{
	size_t used = 0;

	buf[0] = '\0';
	for (uint64_t f = d->features; f && used < size; f &= f - 1) {
		uint64_t bit = f & -f;

		used += (size_t)snprintf(buf + used, size - used, "%s%s (%s)", used ? ", " : "",
					 uffd_feature_name(bit), feature_since(bit));
	}
	if (d->extra && used < size)
		snprintf(buf + used, size - used, "%s%s", used ? ", " : "", d->extra);
}

/* Read size bytes before the deadline; the count read. */
static size_t read_deadline(int fd, void *buf, size_t size, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	size_t got = 0;
	ssize_t n;

	while (got < size && poll(&p, 1, ms) > 0) {
		n = read(fd, (char *)buf + got, size - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

static _Noreturn void run_child(struct ctx *c, const int p[2])
{
	close(p[0]);
	alarm(CHECK_DEADLINE_S);
	sigbus_setup(-1, NULL, 0, 1);
	c->d->fn(c);
	_exit(write(p[1], c->r, sizeof(*c->r)) == sizeof(*c->r) ? 0 : 1);
}

static void run_one(const struct check_def *d, const struct check_env *e, struct row *r)
{
	struct row res;
	int p[2], st = 0;
	size_t got;
	pid_t pid;

	if (pipe2(p, O_CLOEXEC)) {
		fail(r, "", "could not start the check: pipe2 failed with %s", errname(errno));
		return;
	}
	fflush(NULL); /* nothing buffered may be written twice */
	pid = fork();
	if (pid < 0) {
		fail(r, "", "could not start the check: fork failed with %s", errname(errno));
		close(p[0]);
		close(p[1]);
		return;
	}
	if (pid == 0)
		run_child(&(struct ctx){ .r = r, .e = e, .d = d }, p);
	close(p[1]);
	got = read_deadline(p[0], &res, sizeof(res), (CHECK_DEADLINE_S + 2) * 1000);
	close(p[0]);
	/* Done with it either way; a thread a failed check left blocked may keep it from exiting. */
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	if (got == sizeof(res))
		*r = res; /* same static strings in both processes */
	else if (WIFSIGNALED(st) && (WTERMSIG(st) == SIGALRM || WTERMSIG(st) == SIGKILL))
		fail(r, "", "the check did not finish within %d s (a fault was left unresolved)", CHECK_DEADLINE_S);
	else if (WIFSIGNALED(st))
		fail(r, "", "the check died of signal %s", sigabbrev_np(WTERMSIG(st)));
	else
		fail(r, "", "the check ended without a result (exit status %d)", WEXITSTATUS(st));
}

void checks_run(const struct check_env *env, struct row rows[CHECK_ROWS])
{
	for (int i = 0; i < CHECK_ROWS; i++) {
		struct row *r = &rows[i];

		memset(r, 0, sizeof(*r));
		r->key = defs[i].key;
		r->label = defs[i].label;
		describe_needs(&defs[i], r->needs, sizeof(r->needs));
		run_one(&defs[i], env, r);
	}
}
