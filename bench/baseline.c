/* SPDX-License-Identifier: MIT */
/*
 * The baseline: the handler the kernel selftests, QEMU's postcopy and most
 * projects write by hand. Raw syscalls only, no libuffd: a thread polls the
 * uffd (and an eventfd to stop it), reads ONE message, resolves the faulting
 * page with one ioctl, and polls again.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "bench.h"

struct base_uffd {
	struct base_opts o;
	int fd, stop_fd;
	pthread_t thread;
	uint64_t faults, reported;	/* faults written by the thread only */
	int err;
};

int base_continue(int fd, void *addr, size_t len, int64_t *count)
{
	struct uffdio_continue c = { .range = { (uintptr_t)addr, len } };
	int r = ioctl(fd, UFFDIO_CONTINUE, &c);

	*count = c.mapped;
	return r ? -errno : 0;
}

int base_writeprotect(int fd, void *addr, size_t len, bool protect)
{
	struct uffdio_writeprotect w = {
		.range = { (uintptr_t)addr, len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	return ioctl(fd, UFFDIO_WRITEPROTECT, &w) ? -errno : 0;
}

static int base_copy(int fd, void *dst, const void *src, size_t len)
{
	struct uffdio_copy c = { .dst = (uintptr_t)dst, .src = (uintptr_t)src, .len = len };

	return ioctl(fd, UFFDIO_COPY, &c) ? -errno : 0;
}

/*
 * BASE_FILL: a page not in the page cache (a MISSING fault) is read from
 * the file into the alias view first; then, as for a MINOR fault, CONTINUE.
 */
static int fill(struct base_uffd *b, const struct uffd_msg *m, char *page, int64_t *count)
{
	size_t off = (size_t)(page - b->o.addr);
	ssize_t n;

	if (!(m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) &&
	    (n = pread(b->o.src_fd, b->o.alias + off, b->o.page, (off_t)off)) != (ssize_t)b->o.page)
		return n < 0 ? -errno : -EIO;
	return base_continue(b->fd, page, b->o.page, count);
}

/* One page, one ioctl; EEXIST (mapped meanwhile) and EAGAIN are retried by the fault. */
static int resolve(struct base_uffd *b, const struct uffd_msg *m)
{
	char *page = (char *)(uintptr_t)(m->arg.pagefault.address & ~(uint64_t)(b->o.page - 1));
	int64_t count;
	int err;

	switch (b->o.mode) {
	case BASE_MINOR:
		err = base_continue(b->fd, page, b->o.page, &count);
		break;
	case BASE_WP:
		err = base_writeprotect(b->fd, page, b->o.page, false);
		break;
	case BASE_FILL:
		err = fill(b, m, page, &count);
		break;
	default:
		err = base_copy(b->fd, page, b->o.src + (page - b->o.addr), b->o.page);
		break;
	}
	return err == -EEXIST ? 0 : err;
}

static void *handler(void *arg)
{
	struct base_uffd *b = arg;
	struct pollfd pfd[2] = { { b->fd, POLLIN, 0 }, { b->stop_fd, POLLIN, 0 } };

	pthread_setname_np(pthread_self(), "bench-baseline");	/* for perf report */

	for (;;) {
		struct uffd_msg m;
		uint64_t t0;
		ssize_t n;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			b->err = -errno;
			break;
		}
		if (pfd[1].revents)
			break;
		if (pfd[0].revents & (POLLERR | POLLHUP)) {
			b->err = -EIO;
			break;
		}
		n = read(b->fd, &m, sizeof(m));
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n != sizeof(m)) {
			b->err = n < 0 ? -errno : -EIO;
			break;
		}
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		/* Counted before the ioctl wakes the faulting thread. */
		__atomic_fetch_add(&b->faults, 1, __ATOMIC_RELAXED);
		t0 = b->o.hist ? now_ns() : 0;
		if ((b->err = resolve(b, &m)))
			break;
		if (b->o.hist)
			hist_add(b->o.hist, now_ns() - t0);
	}
	if (b->err)
		fprintf(stderr, "uffd-bench: %s: baseline handler: %s\n", b->o.metric, strerror(-b->err));
	return NULL;
}

static int open_uffd(uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return -errno;
	if (ioctl(fd, UFFDIO_API, &api)) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

static uint64_t reg_mode(enum base_mode mode)
{
	return mode == BASE_MINOR ? UFFDIO_REGISTER_MODE_MINOR
	       : mode == BASE_WP ? UFFDIO_REGISTER_MODE_WP
	       : mode == BASE_FILL ? UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR
	       : UFFDIO_REGISTER_MODE_MISSING;
}

int base_open(const char *metric, void *addr, size_t len, enum base_mode mode,
	      uint64_t features)
{
	struct uffdio_register reg = { .range = { (uintptr_t)addr, len }, .mode = reg_mode(mode) };
	int fd = open_uffd(features), err;

	if (fd < 0) {
		fprintf(stderr, "uffd-bench: %s: baseline userfaultfd/UFFDIO_API: %s\n", metric,
			strerror(-fd));
		return -1;
	}
	if (ioctl(fd, UFFDIO_REGISTER, &reg)) {
		err = errno;
		fprintf(stderr, "uffd-bench: %s: baseline UFFDIO_REGISTER: %s\n", metric, strerror(err));
		close(fd);
		return -1;
	}
	return fd;
}

struct base_uffd *base_start(const char *metric, void *addr, size_t len,
			     enum base_mode mode, uint64_t features, const void *src)
{
	struct base_opts o = { .metric = metric, .addr = addr, .len = len, .mode = mode,
			       .features = features, .src = src, .src_fd = -1 };

	return base_start_opts(&o);
}

struct base_uffd *base_start_opts(const struct base_opts *o)
{
	struct base_uffd *b = calloc(1, sizeof(*b));
	const char *metric = o->metric;
	int err;

	if (!b)
		return NULL;
	*b = (struct base_uffd){ .o = *o, .fd = -1, .stop_fd = -1 };
	if (!b->o.page)
		b->o.page = PAGE;
	if ((b->fd = base_open(metric, o->addr, o->len, o->mode, o->features)) < 0)
		goto fail;
	if ((b->stop_fd = eventfd(0, EFD_CLOEXEC)) < 0)
		goto fail;
	place(true);
	err = pthread_create(&b->thread, NULL, handler, b);
	place(false);
	if (err) {
		errno = err;
		goto fail;
	}
	return b;
fail:
	if (b->fd >= 0)
		fprintf(stderr, "uffd-bench: %s: baseline set-up: %s\n", metric, strerror(errno));
	if (b->fd >= 0)
		close(b->fd);
	if (b->stop_fd >= 0)
		close(b->stop_fd);
	free(b);
	return NULL;
}

void base_stop(struct base_uffd *b)
{
	uint64_t one = 1;

	if (!b)
		return;
	if (write(b->stop_fd, &one, sizeof(one)) != sizeof(one))
		abort();	/* the thread would never stop */
	pthread_join(b->thread, NULL);
	close(b->stop_fd);
	close(b->fd);		/* unregisters the range */
	free(b);
}

int base_fd(const struct base_uffd *b)
{
	return b->fd;
}

uint64_t base_faults(struct base_uffd *b)
{
	uint64_t now = __atomic_load_n(&b->faults, __ATOMIC_RELAXED), d = now - b->reported;

	b->reported = now;
	return d;
}
