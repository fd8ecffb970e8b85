/* SPDX-License-Identifier: MIT */
/*
 * An application's own uffd_open and uffd_read_events, with the signatures
 * QEMU's util/userfaultfd.c gives them (CRIU has its own uffd_open too).
 * They only count their calls and return markers: test-clash.c checks that
 * the application reaches them and that libuffd never does.
 */
#include <linux/userfaultfd.h>

#include "clash-app.h"

int app_open_calls, app_read_calls;

int uffd_open(int flags);
int uffd_read_events(int uffd_fd, struct uffd_msg *msgs, int count);

int uffd_open(int flags)
{
	app_open_calls++;
	return APP_OPEN_MARKER + flags;
}

int uffd_read_events(int uffd_fd, struct uffd_msg *msgs, int count)
{
	(void)msgs;
	app_read_calls++;
	return APP_READ_MARKER + uffd_fd + count;
}

int app_call_own(void)
{
	struct uffd_msg msg;

	return uffd_open(1) == APP_OPEN_MARKER + 1 &&
	       uffd_read_events(2, &msg, 3) == APP_READ_MARKER + 5;
}
