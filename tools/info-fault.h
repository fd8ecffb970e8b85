/* SPDX-License-Identifier: MIT */
/*
 * uffd-info: what the capability checks are made of. Scratch mappings, a
 * thread that touches them, and a reader of the faults it raises (io_uring or
 * poll), so that every fault is resolved from a thread other than the one
 * that raised it, within a deadline.
 */
#ifndef UFFD_INFO_FAULT_H
#define UFFD_INFO_FAULT_H

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>

#include <uffd.h>

#include "info.h"

/* How long a fault may take to be reported, and then to be resolved. */
#define FAULT_MS 2000
#define SLICE_MS 50

enum mem_kind { MEM_ANON, MEM_SHMEM, MEM_HUGETLB };

/* A mapping to register: `base`; for memfds also `alias`, an unregistered view of the same pages. */
struct scratch {
	char *base, *alias;
	size_t ps, len;
	int fd;
};

/* Maps `pages` pages of kind; false with the row failed (no free huge pages, ...). */
bool scratch_map(struct row *r, struct scratch *s, enum mem_kind kind, size_t pages,
		 size_t hugepage_size);

enum touch_op {
	TOUCH_READ,    /* value = *addr */
	TOUCH_WRITE,   /* *addr = value */
	TOUCH_SYSCALL, /* ret = read(fd, addr, 16): the kernel faults, not the thread */
	TOUCH_FORK,    /* ret = fork(); the child exits at once */
	TOUCH_DONTNEED, /* ret = madvise(addr, one base page, MADV_DONTNEED): a balloon's give-back */
};

/* A thread that does one access, guarded against SIGBUS (counted in `sigbus`). */
struct toucher {
	volatile char *addr;
	enum touch_op op;
	char value;
	int fd;
	long ret;          /* TOUCH_SYSCALL/TOUCH_FORK: result or -errno */
	int sigbus;        /* SIGBUS signals the access raised */
	atomic_bool done;
	pthread_t thread;
};

bool toucher_start(struct row *r, struct toucher *t);
/* true when the access finished within ms. */
bool toucher_wait(struct toucher *t, int ms);

/*
 * Installs the process's SIGBUS handler. With uffd >= 0, the first SIGBUS on
 * a page of [lo, lo+len) is resolved in the faulting thread with
 * UFFDIO_CONTINUE (SIGBUS mode); any other SIGBUS ends the access.
 */
void sigbus_setup(int uffd, void *lo, size_t len, size_t ps);

/* A fault or event, read through io_uring or uffd_read_events(). */
struct fault_msg {
	enum uffd_event_type type;
	enum uffd_fault_kind kind;
	uintptr_t addr;
	int fork_fd;
};

struct waiter {
	struct uffd *u;
	bool uring, armed;
	int last_res; /* of the last io_uring read */
	struct io_uring ring;
	struct uffd_msg buf[8];
	struct fault_msg q[8];
	size_t n, next;
};

/* With uring, reads go through io_uring (-errno of io_uring_queue_init), else poll + read. */
int waiter_init(struct waiter *w, struct uffd *u, bool uring);
/* The next message within ms: 1, 0 on timeout, -errno. */
int waiter_next(struct waiter *w, int ms, struct fault_msg *m);

/*
 * Start t, read the fault it raises with w, check its kind, resolve it
 * (MINOR: CONTINUE, WP: un-protect, MISSING: MOVE from move_src, a COPY of
 * zeros for a huge page, else ZEROPAGE)
 * and wait for t to finish. False with the row failed otherwise.
 */
bool round_trip(struct row *r, struct waiter *w, struct toucher *t,
		enum uffd_fault_kind kind, void *move_src, size_t ps);

#endif
