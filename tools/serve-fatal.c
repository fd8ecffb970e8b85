/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: what happens to a VM that cannot be served. Once the VM
 * handed over its userfaultfd, its next fault waits for this process; if the
 * process goes without a word, the VM hangs for ever, holding its host slot
 * and hiding the failure. So every fatal path ends here and decides, as
 * --on-fatal says: kill the VM through its pidfd (the default: a VM that can
 * never be served is dead anyway), leave it to whoever runs it, or wait
 * until it is gone.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"

#define KILL_WAIT_MS 5000	/* SIGKILL takes effect in microseconds; a bound all the same */

static const char *const policy_names[] = {
	[FATAL_KILL] = "kill", [FATAL_EXIT] = "exit", [FATAL_WAIT] = "wait",
};

const char *fatal_policy_name(enum fatal_policy p)
{
	return policy_names[p];
}

static uint64_t mono_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static double ms_since(uint64_t t0)
{
	return (double)(mono_ns() - t0) / 1e6;
}

/* Waits until pidfd is readable (the process exited): true; false on timeout (-1: none) or a signal. */
static bool wait_exit(int pidfd, int sigfd, int timeout_ms)
{
	struct pollfd p[2] = { { .fd = pidfd, .events = POLLIN }, { .fd = sigfd, .events = POLLIN } };

	for (;;) {
		int n = poll(p, sigfd >= 0 ? 2 : 1, timeout_ms);

		if (n < 0 && errno == EINTR)
			continue;
		return n > 0 && p[0].revents;
	}
}

static int kill_vm(const struct fc_handshake *h, int code, uint64_t t0)
{
	if (syscall(SYS_pidfd_send_signal, h->pidfd, SIGKILL, NULL, 0) && errno != ESRCH) {
		serve_fail(0, "fatal: cannot kill VM pid %d: pidfd_send_signal: %s; it is left hung",
			   (int)h->pid, strerror(errno));
		return code;
	}
	if (!wait_exit(h->pidfd, -1, KILL_WAIT_MS))
		serve_fail(0, "fatal: VM pid %d was sent SIGKILL but did not exit within %d ms",
			   (int)h->pid, KILL_WAIT_MS);
	else
		serve_fail(0, "fatal: VM pid %d killed %.1f ms after the failure", (int)h->pid, ms_since(t0));
	return code;
}

int serve_fatal(const struct serve_opts *o, const struct fc_handshake *h, int sigfd, int code,
		const char *why, uint64_t failed_ns)
{
	uint64_t t0 = failed_ns ? failed_ns : mono_ns();

	if (!h->vm_waits)	/* no userfaultfd came: nothing of the VM waits for us */
		return code;
	if (o->on_fatal != FATAL_EXIT && h->pidfd < 0) {
		serve_fail(0, "fatal: %s; VM pid %d cannot be %s: no pidfd for it (another pid namespace without SO_PEERPIDFD, or a kernel before 5.3); it is left hung",
			   why, (int)h->pid, o->on_fatal == FATAL_KILL ? "killed" : "watched");
		return code;
	}
	switch (o->on_fatal) {
	case FATAL_KILL:
		serve_fail(0, "fatal: %s; killing VM pid %d through its pidfd (--on-fatal=kill)", why, (int)h->pid);
		return kill_vm(h, code, t0);
	case FATAL_EXIT:
		serve_fail(0, "fatal: %s; leaving VM pid %d to its owner (--on-fatal=exit): its next fault will hang it until it is killed",
			   why, (int)h->pid);
		return code;
	case FATAL_WAIT:
		serve_fail(0, "fatal: %s; waiting for VM pid %d to exit (--on-fatal=wait; SIGTERM stops waiting)",
			   why, (int)h->pid);
		if (wait_exit(h->pidfd, sigfd, -1))
			serve_fail(0, "fatal: VM pid %d exited %.1f ms after the failure", (int)h->pid, ms_since(t0));
		else
			serve_fail(0, "fatal: a signal ended the wait; VM pid %d is left hung", (int)h->pid);
		return code;
	}
	return code;
}
