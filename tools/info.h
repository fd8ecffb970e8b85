/* SPDX-License-Identifier: MIT */
/* uffd-info: the parts of the report and who fills them. */
#ifndef UFFD_INFO_H
#define UFFD_INFO_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* One yes/no line of the report, with what to change when it is a no. */
struct row {
	const char *key;   /* JSON key */
	const char *label; /* human label */
	char needs[128];   /* what it takes (capabilities), or "" */
	bool ok;
	char brief[96];    /* short third column: an errno name, a mode */
	char detail[640];  /* what was tried and what happened */
	char fix[320];     /* one line: what to change; "" when ok */
};

/* Sets the row's outcome; fail() returns false so checks can `return fail(...)`. */
bool pass(struct row *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool fail(struct row *r, const char *fix, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* "EPERM" for EPERM or -EPERM. */
const char *errname(int err);

/* The kernel release that brought a feature bit ("5.14"), or "?". */
const char *feature_since(uint64_t feature);

struct hugepage_size {
	unsigned long kb;
	long total, free;
};

#define MAX_HUGEPAGE_SIZES 8

/* Facts about the machine and this process. */
struct sysinfo {
	char kernel[128];
	uid_t uid, euid;
	bool cap_sys_ptrace;          /* in the effective set */
	long unprivileged_userfaultfd; /* -1: no such sysctl */
	long io_uring_disabled;       /* -1: no such sysctl */
	long nr_hugepages;            /* -1: no such sysctl */
	char thp[16];                 /* transparent huge pages mode, "" if none */

	bool dev_present;
	char dev_mode[12];            /* "crw-------" */
	char dev_owner[32], dev_group[32];

	int probe_err;                /* uffd_probe(): 0 or -errno */
	uint64_t available;           /* the kernel's UFFD_FEATURE_* bits */
	bool full_open;               /* uffd_open() with defaults works */
	bool any_open;                /* ... or with UFFD_OPEN_USER_MODE_ONLY */

	unsigned long hugepage_kb;    /* default huge page size, 0 if none */
	long hugepages_total, hugepages_free;
	struct hugepage_size sizes[MAX_HUGEPAGE_SIZES];
	size_t nr_sizes;
};

/* The ways of opening a userfaultfd, as rows. */
enum { ACCESS_SYSCALL, ACCESS_USER_MODE_ONLY, ACCESS_DEV, ACCESS_LIBRARY, ACCESS_ROWS };

void sysinfo_gather(struct sysinfo *si);
void access_check(struct sysinfo *si, struct row rows[ACCESS_ROWS]);

/* The capability checks: each one runs in a child process with a deadline. */
struct check_env {
	int probe_err;          /* uffd_probe(): 0 or -errno */
	uint64_t available;     /* the kernel's UFFD_FEATURE_* bits */
	size_t hugepage_size;   /* bytes, 0 if none */
	long io_uring_disabled; /* the sysctl, -1 if none */
};

enum {
	CHECK_MINOR_SHMEM, /* the library's core */
	CHECK_MINOR_HUGETLB,
	CHECK_WP_ANON,
	CHECK_WP_SHMEM,
	CHECK_WP_HUGETLB,
	CHECK_MOVE,
	CHECK_POISON,
	CHECK_SIGBUS,
	CHECK_IO_URING,
	CHECK_DIRTY,
	CHECK_KERNEL_FAULTS,
	CHECK_EVENT_FORK,
	CHECK_MISSING_ANON,	/* what uffd-serve needs of the kernel */
	CHECK_MISSING_HUGETLB,
	CHECK_EVENT_REMOVE,
	CHECK_ROWS
};

void checks_run(const struct check_env *env, struct row rows[CHECK_ROWS]);

/* A tiny JSON emitter: keys are ignored inside arrays. */
struct json {
	FILE *f;
	int depth;
	bool first[16];
};

void json_begin(struct json *j, FILE *f);
void json_end(struct json *j);
void json_object(struct json *j, const char *key);
void json_array(struct json *j, const char *key);
void json_close(struct json *j, char bracket);
void json_string(struct json *j, const char *key, const char *s);
void json_number(struct json *j, const char *key, long long v);
void json_bool(struct json *j, const char *key, bool v);
void json_null(struct json *j, const char *key);

#endif
