/* SPDX-License-Identifier: MIT */
/* uffd-info: scratch mappings, touching threads and fault readers for the checks. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "info-fault.h"

#define FIX_HUGEPAGES "reserve huge pages as root: sysctl vm.nr_hugepages=N (a check needs 1, an application as many as it maps)"

static bool map_memfd(struct row *r, struct scratch *s, bool huge)
{
	s->fd = memfd_create("uffd-info", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
	if (s->fd < 0)
		return fail(r, huge ? "a kernel with CONFIG_HUGETLBFS=y" : "",
			    "memfd_create(%s) failed with %s", huge ? "MFD_HUGETLB" : "0", errname(errno));
	if (ftruncate(s->fd, (off_t)s->len))
		return fail(r, "", "ftruncate of the memfd failed with %s", errname(errno));
	s->base = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	s->alias = s->base == MAP_FAILED ? MAP_FAILED
		 : mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	if (s->alias != MAP_FAILED)
		return true;
	if (huge && errno == ENOMEM)
		return fail(r, FIX_HUGEPAGES,
			    "no free huge page to map: mmap of a hugetlb memfd failed with ENOMEM");
	return fail(r, "", "mmap of the memfd failed with %s", errname(errno));
}

/*
 * Nothing is ever unmapped or closed: each check runs in a child process that
 * exits right after it, which also disposes of a thread a failed check left
 * blocked on a fault in these mappings.
 */
bool scratch_map(struct row *r, struct scratch *s, enum mem_kind kind, size_t pages,
		 size_t hugepage_size)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->ps = (size_t)sysconf(_SC_PAGESIZE);
	if (kind == MEM_HUGETLB) {
		if (!hugepage_size)
			return fail(r, "a kernel with CONFIG_HUGETLBFS=y",
				    "the kernel has no huge pages (no Hugepagesize in /proc/meminfo)");
		s->ps = hugepage_size;
	}
	s->len = pages * s->ps;
	if (kind != MEM_ANON)
		return map_memfd(r, s, kind == MEM_HUGETLB);
	s->base = mmap(NULL, s->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->base == MAP_FAILED)
		return fail(r, "", "mmap of anonymous memory failed with %s", errname(errno));
	return true;
}

/* SIGBUS: the guarded access of the current thread, and the SIGBUS-mode resolver. */
static __thread sigjmp_buf *bus_jmp;
static __thread struct toucher *bus_toucher;
static int bus_uffd = -1;
static uintptr_t bus_lo, bus_len, bus_ps;

static bool bus_resolve(uintptr_t addr)
{
	struct uffdio_continue c = { .range = { .start = addr & ~(bus_ps - 1), .len = bus_ps } };

	if (bus_uffd < 0 || addr - bus_lo >= bus_len)
		return false;
	return ioctl(bus_uffd, UFFDIO_CONTINUE, &c) == 0;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (!bus_jmp) { /* not a guarded access: die of it */
		signal(SIGBUS, SIG_DFL);
		return;
	}
	/* Resolve once; a second SIGBUS means the resolution did not hold. */
	if (++bus_toucher->sigbus == 1 && bus_resolve((uintptr_t)si->si_addr))
		return; /* the access is retried and now succeeds */
	siglongjmp(*bus_jmp, 1);
}

void sigbus_setup(int uffd, void *lo, size_t len, size_t ps)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };

	bus_uffd = uffd;
	bus_lo = (uintptr_t)lo;
	bus_len = len;
	bus_ps = ps;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}

static void touch(struct toucher *t)
{
	pid_t pid;

	switch (t->op) {
	case TOUCH_READ:
		t->value = *t->addr;
		break;
	case TOUCH_WRITE:
		*t->addr = t->value;
		break;
	case TOUCH_SYSCALL:
		t->ret = read(t->fd, (void *)t->addr, 16);
		t->ret = t->ret < 0 ? -errno : t->ret;
		break;
	case TOUCH_DONTNEED:
		t->ret = madvise((void *)t->addr, (size_t)sysconf(_SC_PAGESIZE), MADV_DONTNEED) ? -errno : 0;
		break;
	case TOUCH_FORK:
		pid = fork();
		if (pid == 0)
			_exit(0);
		t->ret = pid < 0 ? -errno : pid;
		if (pid > 0)
			waitpid(pid, NULL, 0);
		break;
	}
}

static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	sigjmp_buf env;

	bus_toucher = t;
	bus_jmp = &env;
	if (!sigsetjmp(env, 1))
		touch(t);
	bus_jmp = NULL;
	atomic_store(&t->done, true);
	return NULL;
}

bool toucher_start(struct row *r, struct toucher *t)
{
	int err;

	atomic_init(&t->done, false);
	t->sigbus = 0;
	err = pthread_create(&t->thread, NULL, toucher_main, t);
	if (err)
		return fail(r, "", "pthread_create failed with %s", errname(err));
	return true;
}

bool toucher_wait(struct toucher *t, int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return pthread_timedjoin_np(t->thread, NULL, &ts) == 0;
}

int waiter_init(struct waiter *w, struct uffd *u, bool uring)
{
	memset(w, 0, sizeof(*w));
	w->u = u;
	w->uring = uring;
	return uring ? io_uring_queue_init(4, &w->ring, 0) : 0;
}

static struct fault_msg from_raw(const struct uffd_msg *m)
{
	struct fault_msg f = { .fork_fd = -1 };
	uint64_t flags = m->arg.pagefault.flags;

	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT:
		f.type = UFFD_EV_FAULT;
		f.addr = (uintptr_t)m->arg.pagefault.address;
		f.kind = (flags & UFFD_PAGEFAULT_FLAG_WP) ? UFFD_FAULT_WP
		       : (flags & UFFD_PAGEFAULT_FLAG_MINOR) ? UFFD_FAULT_MINOR
		       : UFFD_FAULT_MISSING;
		break;
	case UFFD_EVENT_FORK:
		f.type = UFFD_EV_FORK;
		f.fork_fd = (int)m->arg.fork.ufd;
		break;
	case UFFD_EVENT_REMOVE:
		f.type = UFFD_EV_REMOVE;
		f.addr = (uintptr_t)m->arg.remove.start;
		break;
	default:
		f.type = UFFD_EV_UNMAP; /* any other event: unexpected here */
	}
	return f;
}

static struct fault_msg from_event(const struct uffd_event *ev)
{
	struct fault_msg f = { .type = ev->type, .fork_fd = -1 };

	if (ev->type == UFFD_EV_FAULT) {
		f.kind = ev->fault.kind;
		f.addr = (uintptr_t)ev->fault.addr;
	} else if (ev->type == UFFD_EV_FORK) {
		f.fork_fd = ev->fork.fd;
	}
	return f;
}

/* One io_uring read of the uffd, kept in flight across timeouts. */
static int read_uring(struct waiter *w, int ms)
{
	struct __kernel_timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000LL };
	struct io_uring_cqe *cqe;
	struct io_uring_sqe *sqe;
	int err, res;

	if (!w->armed) {
		sqe = io_uring_get_sqe(&w->ring);
		if (!sqe)
			return -EBUSY;
		io_uring_prep_read(sqe, uffd_fd(w->u), w->buf, sizeof(w->buf), 0);
		err = io_uring_submit(&w->ring);
		if (err < 0)
			return err;
		w->armed = true;
	}
	err = io_uring_wait_cqe_timeout(&w->ring, &cqe, &ts);
	if (err == -ETIME || err == -EINTR)
		return 0;
	if (err < 0)
		return err;
	res = w->last_res = cqe->res;
	io_uring_cqe_seen(&w->ring, cqe);
	w->armed = false;
	if (res < 0)
		return res;
	if (res == 0 || res % (int)sizeof(struct uffd_msg))
		return -EIO;
	for (size_t i = 0; i < (size_t)res / sizeof(struct uffd_msg); i++)
		w->q[w->n++] = from_raw(&w->buf[i]);
	return 1;
}

static int read_poll(struct waiter *w, int ms)
{
	struct pollfd p = { .fd = uffd_fd(w->u), .events = POLLIN };
	struct uffd_event ev[8];
	int n = poll(&p, 1, ms);

	if (n <= 0)
		return n < 0 && errno != EINTR ? -errno : 0;
	n = uffd_read_events(w->u, ev, 8);
	for (int i = 0; i < n; i++)
		w->q[w->n++] = from_event(&ev[i]);
	return n;
}

int waiter_next(struct waiter *w, int ms, struct fault_msg *m)
{
	int n;

	if (w->next == w->n) {
		w->n = w->next = 0;
		n = w->uring ? read_uring(w, ms) : read_poll(w, ms);
		if (n <= 0)
			return n;
	}
	*m = w->q[w->next++];
	return 1;
}

static const char *kind_name(enum uffd_fault_kind k)
{
	return k == UFFD_FAULT_MINOR ? "MINOR" : k == UFFD_FAULT_WP ? "WP" : "MISSING";
}

static int copy_zeros(struct uffd *u, void *addr, size_t ps)
{
	void *z = mmap(NULL, ps, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int err;

	if (z == MAP_FAILED)
		return -errno;
	err = uffd_copy(u, addr, z, ps, 0, NULL);
	munmap(z, ps);
	return err;
}

static int resolve(struct uffd *u, enum uffd_fault_kind kind, void *addr, void *move_src, size_t ps)
{
	switch (kind) {
	case UFFD_FAULT_MINOR:
		return uffd_continue_range(u, addr, ps, 0, NULL);
	case UFFD_FAULT_WP:
		return uffd_writeprotect(u, addr, ps, false, 0);
	default:
		if (move_src)
			return uffd_move(u, addr, move_src, ps, 0, NULL);
		if (ps > (size_t)sysconf(_SC_PAGESIZE))
			return copy_zeros(u, addr, ps);	/* hugetlbfs has no zero page to map */
		return uffd_zeropage(u, addr, ps, 0, NULL);
	}
}

bool round_trip(struct row *r, struct waiter *w, struct toucher *t,
		enum uffd_fault_kind kind, void *move_src, size_t ps)
{
	struct fault_msg m;
	int n = 0, err;

	if (!toucher_start(r, t))
		return false;
	for (int waited = 0; !n && waited < FAULT_MS; waited += SLICE_MS) {
		bool finished = atomic_load(&t->done); /* a faulting thread cannot finish */

		n = waiter_next(w, SLICE_MS, &m);
		if (n < 0)
			return fail(r, "", "reading the userfaultfd failed with %s", errname(n));
		if (!n && finished)
			return fail(r, "", "the access finished and no fault was reported");
	}
	if (!n)
		return fail(r, "", "no fault was reported within %d ms of the access", FAULT_MS);
	if (m.type != UFFD_EV_FAULT || m.kind != kind)
		return fail(r, "", "expected a %s fault, read message type %d kind %s",
			    kind_name(kind), (int)m.type, kind_name(m.kind));
	err = resolve(w->u, kind, (void *)(m.addr & ~(uintptr_t)(ps - 1)), move_src, ps);
	if (err)
		return fail(r, "", "resolving the %s fault failed: %s", kind_name(kind), uffd_last_error());
	if (!toucher_wait(t, FAULT_MS))
		return fail(r, "", "the faulting thread was not woken within %d ms of the resolution", FAULT_MS);
	return true;
}
