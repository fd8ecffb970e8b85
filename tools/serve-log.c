/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: its log lines. Each says when (UTC, to the millisecond), how
 * bad (error, warning, info) and, once known, which VM (vm=PID):
 *   2026-12-07T20:31:02.118Z error vm=4242 uffd-serve: handshake: ...
 * Started by systemd with stderr going to the journal (JOURNAL_STREAM names
 * it), the lines go to the journal through its native protocol instead,
 * with PRIORITY and the field UFFD_VM for the VM, when built with libsystemd.
 * Any thread may log: one formatted write per line.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-journal.h>
#endif

#include "serve.h"

static pid_t log_vm;	/* the VM this process serves; 0: none yet */

void serve_log_vm(pid_t vm)
{
	log_vm = vm;
}

/* stderr is the journal's stream (JOURNAL_STREAM=DEV:INODE of it). */
static bool to_journal(void)
{
	static int known = -1;

	if (known < 0) {
		const char *js = getenv("JOURNAL_STREAM");
		unsigned long long dev, ino;
		struct stat st;

		known = js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && !fstat(2, &st) &&
			(unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
	}
	return known;
}

static const char *level_name(int level)
{
	return level <= LOG_ERR ? "error" : level == LOG_WARNING ? "warning" : "info";
}

static void serve_vlog(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void serve_vlog(int level, const char *fmt, va_list ap)
{
	char msg[2048], line[2200], vm[32] = "";
	struct timespec ts;
	struct tm tm;
	int n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
#ifdef HAVE_LIBSYSTEMD
	if (to_journal()) {
		if (log_vm)
			sd_journal_send("MESSAGE=" PROG ": %s", msg, "PRIORITY=%d", level, "SYSLOG_IDENTIFIER=" PROG,
					"UFFD_VM=%d", (int)log_vm, NULL);
		else
			sd_journal_send("MESSAGE=" PROG ": %s", msg, "PRIORITY=%d", level, "SYSLOG_IDENTIFIER=" PROG,
					NULL);
		return;
	}
#else
	(void)to_journal;
#endif
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	if (log_vm)
		snprintf(vm, sizeof(vm), " vm=%d", (int)log_vm);
	n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s%s " PROG ": %s\n",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     ts.tv_nsec / 1000000, level_name(level), vm, msg);
	(void)!write(2, line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

void serve_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	serve_vlog(level, fmt, ap);
	va_end(ap);
}

int serve_fail(int code, const char *fmt, ...)
{
	va_list ap;
	/* An exit code is an error; so is a fatal decision; the rest are warnings. */
	int level = code || !strncmp(fmt, "fatal:", 6) ? LOG_ERR : LOG_WARNING;

	va_start(ap, fmt);
	serve_vlog(level, fmt, ap);
	va_end(ap);
	return code;
}
