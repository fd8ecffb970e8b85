/* SPDX-License-Identifier: MIT */
/*
 * A stand-in reader while a loop thread's own handler calls fork().
 *
 * With UFFD_FEATURE_EVENT_FORK the forking thread sleeps in the kernel
 * until its FORK message is read. A handler runs on a loop thread, whose
 * ring reads nothing until the handler returns: on a loop of one thread
 * the fork would never return. So the fork gate's prepare hook, on a
 * thread inside a handler, starts this reader; it polls the runner's
 * handles of this process (the FORK comes on one of those) and queues what
 * it reads on the runner's fork-gate queue, in order, where the runner
 * finds it when the handler returns: the FORK's child is adopted then, as
 * usual. The parent hook stops and joins it.
 *
 * The reader never allocates or runs user code (fork() holds glibc's
 * malloc locks meanwhile): everything is allocated in the prepare hook,
 * before glibc takes them, and freed in the parent hook, after. The runner
 * is idle (its thread is in fork()), so the reader has its queue alone.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "loop-internal.h"

struct fork_reader {
	struct loop_runner *rn;
	pthread_t thread;
	atomic_bool stop;
	size_t n;
	struct pollfd *pfd;
	struct loop_watch **w;
	struct uffd_msg *buf;	/* batch messages */
};

/* A handle of this process with fork events: its FORK messages are ours. */
static bool own_fork_watch(const struct loop_slot *s)
{
	const struct loop_watch *w = s->w;

	return !s->dying && !s->kept && !w->owned && !w->u->ranges_unknown &&
	       (w->u->features & UFFD_FEATURE_EVENT_FORK);
}

/* Reads what is ready on slot i, as many messages as the queue takes. */
static void read_one(struct fork_reader *fr, size_t i)
{
	struct loop_runner *rn = fr->rn;
	size_t room = loop__gate_room_own(rn), batch = rn->l->o.batch;
	struct uffd *u = fr->w[i]->u;
	bool gated = uffd__rgate_used(u);	/* read and hooks: one step (resolve-gate.c) */
	ssize_t got;
	int err;

	if (!room)
		return;		/* full: this fork waits for the handler (a documented limit) */
	if (gated)
		uffd__rgate_read_begin(u);
	got = read(fr->pfd[i].fd, fr->buf, (room < batch ? room : batch) * sizeof(*fr->buf));
	err = got < 0 ? errno : 0;
	if (got > 0)
		loop__read_early(rn, fr->w[i], fr->buf, (size_t)got / sizeof(*fr->buf));
	if (gated)
		uffd__rgate_read_end(u);
	if (got > 0) {
		loop__queue_msgs(rn, fr->w[i], fr->buf, (size_t)got / sizeof(*fr->buf));
	} else if (err == EMFILE || err == ENFILE) {
		/* No descriptor for the child: free those of queued dead children, then retry. */
		struct timespec nap = { .tv_nsec = 1000000 };

		loop__drop_dead_forks(rn);
		nanosleep(&nap, NULL);
	}
}

static void *reader_main(void *arg)
{
	struct fork_reader *fr = arg;

	while (!atomic_load(&fr->stop)) {
		if (poll(fr->pfd, fr->n, 1) <= 0)
			continue;
		for (size_t i = 0; i < fr->n; i++)
			if (fr->pfd[i].revents & POLLIN)
				read_one(fr, i);
	}
	return NULL;
}

static void reader_free(struct fork_reader *fr)
{
	free(fr->pfd);
	free(fr->w);
	free(fr->buf);
	free(fr);
}

static bool reader_alloc(struct fork_reader *fr, size_t n, size_t batch)
{
	fr->pfd = calloc(n, sizeof(*fr->pfd));
	fr->w = calloc(n, sizeof(*fr->w));
	fr->buf = calloc(batch, sizeof(*fr->buf));
	return fr->pfd && fr->w && fr->buf;
}

void *loop__fork_reader_start(void *arg)
{
	struct loop_runner *rn = arg;
	struct fork_reader *fr;
	sigset_t all, old;
	size_t n = 0;
	int err;

	for (struct loop_slot *s = rn->slots; s; s = s->next)
		n += own_fork_watch(s);
	if (!n || !(fr = calloc(1, sizeof(*fr))))
		return NULL;
	fr->rn = rn;
	if (!reader_alloc(fr, n, rn->l->o.batch)) {
		reader_free(fr);
		return NULL;
	}
	for (struct loop_slot *s = rn->slots; s; s = s->next)
		if (own_fork_watch(s)) {
			fr->pfd[fr->n] = (struct pollfd){ .fd = s->w->u->fd, .events = POLLIN };
			fr->w[fr->n++] = s->w;
		}
	sigfillset(&all);	/* signals go to the application's threads */
	pthread_sigmask(SIG_SETMASK, &all, &old);
	err = pthread_create(&fr->thread, NULL, reader_main, fr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		reader_free(fr);
		return NULL;
	}
	return fr;
}

void loop__fork_reader_stop(void *token)
{
	struct fork_reader *fr = token;

	atomic_store(&fr->stop, true);
	pthread_join(fr->thread, NULL);
	reader_free(fr);
}
