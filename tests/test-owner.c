/* SPDX-License-Identifier: MIT */
/*
 * Serving another process: the owner creates and registers the
 * userfaultfd and passes it over a socket; the loop serves its faults,
 * names the uffd each event came from (the owner's, its fork child's),
 * and notices the owner's exit (pidfd), even while a fault is in flight.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define PAGES 32
#define STUCK 20	/* the page whose fault the handler leaves pending */

static size_t ps;

static void setup(void)
{
	ps = harness_page_size();
}

static long long now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000ll + t.tv_nsec / 1000;
}

static void send_fd(int sock, int fd, uint64_t addr)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { &addr, sizeof(addr) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &mh, 0) != sizeof(addr))
		_exit(10);
}

static int recv_fd(int sock, uint64_t *addr)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { addr, sizeof(*addr) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	int fd = -1;

	ck_assert_int_eq(recvmsg(sock, &mh, MSG_CMSG_CLOEXEC), sizeof(*addr));
	c = CMSG_FIRSTHDR(&mh);
	ck_assert_ptr_nonnull(c);
	memcpy(&fd, CMSG_DATA(c), sizeof(int));
	return fd;
}

/*
 * The owner: its own uffd (MISSING, REMOVE and FORK events), registered
 * memory, the fd sent to the handler. It forks a child that touches a page
 * and gives one back, gives one back itself, then touches every page up to
 * STUCK, checking each, and waits there for the SIGKILL.
 */
static void owner(int sock)
{
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_FORK |
				  UFFD_FEATURE_EVENT_REMOVE };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	unsigned char *mem = mmap(NULL, PAGES * ps, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register reg = { .range = { (uintptr_t)mem, PAGES * ps },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	pid_t child;
	int st;
	char go;

	if (fd < 0 || ioctl(fd, UFFDIO_API, &api) || mem == MAP_FAILED || ioctl(fd, UFFDIO_REGISTER, &reg))
		_exit(11);
	send_fd(sock, fd, (uintptr_t)mem);
	if (read(sock, &go, 1) != 1)	/* the handler is ready */
		_exit(12);
	child = fork();
	if (child == 0) {
		if (mem[ps] != 2)	/* served through the child's own uffd */
			_exit(13);
		madvise(mem + ps, ps, MADV_DONTNEED);
		_exit(0);
	}
	if (child < 0 || waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st))
		_exit(14);
	madvise(mem, ps, MADV_DONTNEED);
	for (size_t i = 0; i <= STUCK; i++)
		if (mem[i * ps] != (unsigned char)(i + 1))
			_exit(15);
	_exit(16);	/* not reached: the STUCK page is never resolved */
}

struct served {
	unsigned char *src;
	uint64_t base;
	struct uffd *owner_u;
	atomic_int faults, stuck, owner_exits, events_owner, events_other, forks;
	atomic_llong stuck_at, killed_at;
};

/*
 * Until the owner's memory is gone: a resolving call on its uffd then
 * answers ESRCH. The probe copies to an address where nothing is
 * registered, so while the owner lives it only gets ENOENT.
 */
static void wait_owner_gone(struct served *sv, struct uffd *u)
{
	for (int i = 0; i < 50000; i++) {
		if (uffd_copy(u, (void *)(uintptr_t)0x1000000, sv->src, ps, UFFD_DONTWAKE, NULL) == -ESRCH)
			return;
		usleep(100);
	}
}

static int serve(void *ctx, struct uffd_fault *f)
{
	struct served *sv = ctx;
	size_t idx = ((uintptr_t)f->addr - sv->base) / ps;
	int err;

	atomic_fetch_add(&sv->faults, 1);
	if (idx == STUCK) {	/* in flight when the owner dies: its resolution meets ESRCH */
		atomic_store(&sv->stuck_at, now_us());
		atomic_store(&sv->stuck, 1);
		while (!atomic_load(&sv->killed_at))
			usleep(100);
		wait_owner_gone(sv, f->uffd);
		return UFFD_RESOLVE;
	}
	err = uffd_copy(f->uffd, f->addr, sv->src + idx * ps, ps, UFFD_SKIP_EXISTING, NULL);
	return err == -EAGAIN ? UFFD_RETRY : err ? err : UFFD_HANDLED;
}

static int adopt(void *ctx, struct uffd *child)
{
	struct served *sv = ctx;

	(void)child;
	atomic_fetch_add(&sv->forks, 1);
	return 0;
}

static void on_event(void *ctx, struct uffd *u, const struct uffd_event *ev)
{
	struct served *sv = ctx;

	if (ev->type != UFFD_EV_REMOVE)
		return;
	atomic_fetch_add(u == sv->owner_u ? &sv->events_owner : &sv->events_other, 1);
}

static void on_exit_(void *ctx, struct uffd *u)
{
	struct served *sv = ctx;

	ck_assert_ptr_eq(u, sv->owner_u);
	atomic_fetch_add(&sv->owner_exits, 1);
}

static void *killer(void *arg)
{
	struct served *sv = (void *)((void **)arg)[0];
	pid_t pid = (pid_t)(intptr_t)((void **)arg)[1];

	while (!atomic_load(&sv->stuck))
		usleep(100);
	usleep(20000);
	atomic_store(&sv->killed_at, now_us());
	kill(pid, SIGKILL);
	return NULL;
}

static void owner_case(bool poll)
{
	int sv_pair[2], fds_before = harness_count_fds(), fd, pidfd, st;
	struct served sv = { 0 };
	struct uffd_handlers h = { .missing = serve, .fork = adopt };
	struct uffd_watch_opts wo = { .size = sizeof(wo), .event = on_event,
				      .flags = UFFD_WATCH_OWNER | UFFD_WATCH_STOP_LOOP,
				      .owner_exit = on_exit_ };
	struct uffd_loop_counters c = { .size = sizeof(c) };
	struct uffd_loop *l;
	void *args[2], *th;
	long long t_run;
	pid_t pid;

	SKIP_UNDER_VALGRIND("the owner's faults are served across processes while valgrind serialises threads");
	if (poll)
		setenv("LIBUFFD_LOOP_FORCE_POLL", "1", 1);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv_pair), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(sv_pair[0]);
		owner(sv_pair[1]);
	}
	close(sv_pair[1]);
	fd = recv_fd(sv_pair[0], &sv.base);
	ck_assert_int_ge(fd, 0);
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	ck_assert_int_ge(pidfd, 0);
	sv.src = malloc(PAGES * ps);
	for (size_t i = 0; i < PAGES; i++)
		memset(sv.src + i * ps, (int)(i + 1), ps);
	ck_assert_int_eq(uffd_open_fd(&sv.owner_u, fd, UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMOVE), 0);
	ck_assert_int_eq(uffd_loop_new(&l, NULL), 0);
	wo.owner_fd = pidfd;
	ck_assert_int_eq(uffd_loop_add_opts(l, sv.owner_u, &h, &sv, &wo), 0);
	ck_assert_int_eq(write(sv_pair[0], "g", 1), 1);
	args[0] = &sv;
	args[1] = (void *)(intptr_t)pid;
	th = harness_thread_start(killer, args);
	ck_assert_int_eq(uffd_loop_run(l), 0);	/* returns once the owner is gone */
	t_run = now_us();
	harness_thread_join(th);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "owner status 0x%x", st);
	ck_assert_int_eq(uffd_loop_counters(l, &c), 0);
	fprintf(stderr, "%s: %d faults, uffd_loop_run returned %lld us after the SIGKILL, %llu errors, "
		"%llu owner gone\n", poll ? "poll" : "uring", atomic_load(&sv.faults),
		t_run - atomic_load(&sv.killed_at), (unsigned long long)c.errors,
		(unsigned long long)c.owner_gone);
	ck_assert_int_eq(atomic_load(&sv.owner_exits), 1);
	ck_assert_int_eq(atomic_load(&sv.forks), 1);
	ck_assert_int_eq(atomic_load(&sv.events_owner), 1);	/* the owner's REMOVE */
	ck_assert_int_eq(atomic_load(&sv.events_other), 1);	/* its child's, named by the child's uffd */
	ck_assert_int_ge(atomic_load(&sv.faults), STUCK + 2);
	ck_assert_uint_eq(c.errors, 0);
	ck_assert_uint_eq(c.owner_gone, 1);	/* the stuck fault's resolution, not an error */
	ck_assert_int_eq(uffd_loop_remove(l, sv.owner_u), 0);	/* still required before closing */
	uffd_loop_free(l);
	uffd_close(sv.owner_u);
	close(pidfd);
	close(sv_pair[0]);
	free(sv.src);
	unsetenv("LIBUFFD_LOOP_FORCE_POLL");
	ck_assert_int_eq(harness_count_fds(), fds_before);
}

START_TEST(test_owner_exit_uring)
{
	owner_case(false);
}
END_TEST

START_TEST(test_owner_exit_poll)
{
	owner_case(true);
}
END_TEST

/* ---- a page source, and pages given back ---- */

#define SRC_PAGES 64

static unsigned char src_byte(size_t i)
{
	return (unsigned char)(0xa0 + i % 50);
}

/*
 * The owner (libuffd on its side too): MISSING memory with REMOVE events,
 * handed over with uffd_handoff_send(). It reads every page (the source's
 * contents), gives pages 8..15 back as a balloon would, then reads them
 * (zeros now, not the old contents) and the rest again.
 */
static void source_owner(int sock)
{
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_EVENT_REMOVE };
	unsigned char *mem = mmap(NULL, SRC_PAGES * ps, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffd *u;
	struct uffd_handoff_region row = { .owner_addr = (uintptr_t)mem, .length = SRC_PAGES * ps,
					   .modes = UFFDIO_REGISTER_MODE_MISSING, .fd = -1 };

	if (mem == MAP_FAILED || uffd_open(&u, &o) ||
	    uffd_register(u, mem, SRC_PAGES * ps, UFFDIO_REGISTER_MODE_MISSING, NULL) ||
	    uffd_handoff_send(sock, u, &row, 1))
		_exit(20);
	for (size_t i = 0; i < SRC_PAGES; i++)
		if (mem[i * ps + i] != src_byte(i))
			_exit(21);
	if (madvise(mem + 8 * ps, 8 * ps, MADV_DONTNEED))
		_exit(22);
	for (size_t i = 0; i < SRC_PAGES; i++)
		if (mem[i * ps + i] != (i >= 8 && i < 16 ? 0 : src_byte(i)))
			_exit(23);
	_exit(0);
}

START_TEST(test_source_removed)
{
	int pair[2], st, fds_before = harness_count_fds();
	struct uffd_handoff *h = NULL;
	struct uffd_loop *l;
	struct uffd_loop_counters c = { .size = sizeof(c) };
	struct uffd_watch_opts wo = { .size = sizeof(wo), .flags = UFFD_WATCH_OWNER | UFFD_WATCH_STOP_LOOP };
	unsigned char *src;
	pid_t pid;

	SKIP_UNDER_VALGRIND("the owner's faults are served across processes while valgrind serialises threads");
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(pair[0]);
		source_owner(pair[1]);
	}
	close(pair[1]);
	ck_assert_msg(uffd_handoff_recv(pair[0], NULL, &h) == 0, "recv: %s", uffd_last_error());
	ck_assert_uint_eq(h->nregions, 1);
	src = malloc(SRC_PAGES * ps);
	for (size_t i = 0; i < SRC_PAGES; i++)
		memset(src + i * ps, src_byte(i), ps);
	ck_assert_int_eq(uffd_region_set_source(h->regions[0], src, SRC_PAGES * ps), 0);
	ck_assert_int_eq(uffd_loop_new(&l, NULL), 0);
	/* A socketpair's peer credentials are its creator's (this process): watch the child's pid. */
	wo.owner_fd = (int)syscall(SYS_pidfd_open, pid, 0);
	ck_assert_int_ge(wo.owner_fd, 0);
	ck_assert_int_eq(uffd_loop_add_opts(l, h->uffd, NULL, NULL, &wo), 0);
	ck_assert_int_eq(uffd_loop_add_region(l, h->regions[0], NULL, NULL), 0);
	ck_assert_int_eq(uffd_loop_run(l), 0);	/* until the owner exits */
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "owner status 0x%x", st);
	ck_assert_int_eq(uffd_loop_counters(l, &c), 0);
	ck_assert_uint_eq(c.faults_missing, SRC_PAGES + 8);	/* each page once, the balloon's twice */
	ck_assert_uint_eq(c.errors, 0);
	ck_assert_int_eq(uffd_loop_remove(l, h->uffd), 0);
	uffd_loop_free(l);
	uffd_handoff_free(h);
	free(src);
	close(wo.owner_fd);
	close(pair[0]);
	ck_assert_int_eq(harness_count_fds(), fds_before);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("owner");
	TCase *tc;

	tc = CASE(owner_exit, 30);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_owner_exit_uring);
	tcase_add_test(tc, test_owner_exit_poll);
	tc = CASE(source_removed, 30);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_source_removed);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
