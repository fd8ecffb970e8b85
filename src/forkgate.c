/* SPDX-License-Identifier: MIT */
/*
 * The fork gate: loop threads run user handlers and allocate only inside a
 * gate section, and fork() waits for open sections before glibc takes its
 * malloc and stdio locks.
 *
 * Why: with UFFD_FEATURE_EVENT_FORK the forking thread sleeps in the kernel,
 * holding glibc's malloc and stdio locks, until a loop thread reads the FORK
 * message. A handler that called malloc() at that moment would wait for the
 * forker, and the forker for the handler's thread: the process hangs. So a
 * pthread_atfork() prepare hook closes the gate and waits until no section
 * is open; while it is closed, loop threads keep reading (which allocates
 * nothing) and queue what needs a handler, and the parent hook reopens it.
 */
#include <pthread.h>
#include <time.h>

#include "internal.h"

static atomic_int forking;	/* fork() calls between prepare and parent */
static atomic_int wanting;	/* loop threads whose queue fills: new forks wait */
static atomic_int open_sections;	/* threads inside a section */
static __thread int depth;	/* this thread's nesting */
static __thread const struct uffd__gate_reader *tl_reader;	/* a loop thread's */
static __thread void *tl_token;	/* its reader, while this thread forks */

void uffd__gate_set_reader(const struct uffd__gate_reader *r)
{
	tl_reader = r;
}

bool uffd__gate_enter(void)
{
	if (depth) {
		depth++;
		return true;
	}
	/* Announce first, then look: prepare() sets forking, then counts. */
	atomic_fetch_add(&open_sections, 1);
	if (atomic_load(&forking)) {
		atomic_fetch_sub(&open_sections, 1);
		return false;
	}
	depth = 1;
	return true;
}

void uffd__gate_leave(void)
{
	if (--depth == 0)
		atomic_fetch_sub(&open_sections, 1);
}

void uffd__gate_want(bool *wants, bool on)
{
	if (*wants == on)
		return;
	*wants = on;
	atomic_fetch_add(&wanting, on ? 1 : -1);
}

static void prepare(void)
{
	/* A handler that forks waits for the others, not for itself. */
	int own = depth ? 1 : 0;
	struct timespec nap = { .tv_nsec = 20000 };

	/*
	 * glibc serializes forks (its atfork lock is held from the end of the
	 * prepare handlers to the parent handlers), so concurrent forks run
	 * back to back: the gate would open for microseconds between them,
	 * and a loop thread whose queue fills could starve. A fork not yet
	 * begun waits for it here, holding no lock (glibc releases its lock
	 * around each handler). A handler's own fork does not wait.
	 */
	while (!own && atomic_load(&wanting) > 0)
		nanosleep(&nap, NULL);
	atomic_fetch_add(&forking, 1);
	while (atomic_load(&open_sections) > own)
		nanosleep(&nap, NULL);
	/* A handler forks: its loop thread reads nothing until it returns; a stand-in reads. */
	if (own && tl_reader)
		tl_token = tl_reader->start(tl_reader->arg);
}

static void parent(void)
{
	if (tl_token)
		tl_reader->stop(tl_token);
	tl_token = NULL;
	atomic_fetch_sub(&forking, 1);
}

static void child(void)
{
	/* The child has only this thread: nobody else holds a section. */
	atomic_store(&forking, 0);
	atomic_store(&wanting, 0);
	tl_token = NULL;	/* the reader thread is not in the child; its memory stays */
	atomic_store(&open_sections, depth ? 1 : 0);
}

static void install(void)
{
	pthread_atfork(prepare, parent, child);
}

void uffd__gate_init(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, install);
}
