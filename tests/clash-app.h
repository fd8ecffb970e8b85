/* SPDX-License-Identifier: MIT */
/* What test-clash.c sees of clash-app.c (which cannot include uffd.h). */
#ifndef LIBUFFD_TEST_CLASH_APP_H
#define LIBUFFD_TEST_CLASH_APP_H

#define APP_OPEN_MARKER 4200
#define APP_READ_MARKER 4300

/* Calls of the application's own uffd_open / uffd_read_events. */
extern int app_open_calls, app_read_calls;

/* Calls both once, as the application does; 1 when each gave its marker. */
int app_call_own(void);

#endif
