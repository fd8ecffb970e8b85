/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: the parts of the command and who does what.
 * serve-args.c   the command line
 * serve-fc.c     Firecracker's handshake: socket, message, JSON, checks
 * serve-run.c    serving one VM with the library's restore engine and loop
 * serve-stats.c  the summary, as text or JSON
 */
#ifndef UFFD_SERVE_H
#define UFFD_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PROG "uffd-serve"

/* Exit status (documented in uffd-serve(1)). */
enum {
	EXIT_OK = 0,		/* the VM exited, the serve detached, or a signal ended it */
	EXIT_SERVE = 1,		/* serving failed: a page could not be read, the loop broke */
	EXIT_USAGE = 2,		/* bad command line */
	EXIT_SETUP = 3,		/* the snapshot or the socket cannot be used */
	EXIT_TIMEOUT = 4,	/* no VM connected, or it sent no message, in time */
	EXIT_HANDSHAKE = 5,	/* the VM's message is unusable: no fd, bad JSON, bad regions */
	SERVE_STOPPED = 100,	/* not an exit status: a signal came first */
};

struct serve_opts {
	const char *socket;	/* the Unix socket to listen on */
	const char *memory;	/* the memory snapshot file */
	const char **layers;	/* Diff snapshots over it, oldest first */
	size_t nlayers;
	const char *record;	/* trace to write, or NULL */
	const char **replay;	/* traces to replay */
	size_t nreplay;
	bool fill;		/* bring in every page, then detach */
	uint64_t fill_rate;	/* bytes per second; 0: as fast as demand allows */
	unsigned record_ms;	/* record window after the first fault; 0: until exit */
	unsigned threads;	/* loop threads */
	unsigned spin_us;	/* a loop thread polls this long before sleeping */
	bool stats, json, multi;
	int timeout_ms;		/* for the connection and for the message; 0: none */
};

/* serve-args.c: parses argv into o, or prints why and exits with EXIT_USAGE. */
void serve_args(int argc, char **argv, struct serve_opts *o);

/* Prints "uffd-serve: <message>" on stderr and returns code. */
int serve_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- serve-fc.c ---- */

/* One row of Firecracker's JSON array (GuestRegionUffdMapping). */
struct fc_region {
	uint64_t addr;		/* base_host_virt_addr */
	uint64_t size;
	uint64_t offset;	/* in the memory snapshot file */
	uint64_t page_size;	/* page_size, or page_size_kib (bytes despite the name) */
};

/* What a VM sent, checked. */
struct fc_handshake {
	int uffd;		/* the VM's userfaultfd, close-on-exec */
	uint64_t features;	/* as the kernel reports them for it */
	pid_t pid;		/* SO_PEERCRED; 0 when in another pid namespace */
	int pidfd;		/* of pid, or -1 */
	struct fc_region *r;
	size_t n;
};

/* Listening socket at path (a stale socket there is replaced): fd, or an EXIT_* code negated. */
int fc_listen(const char *path);
/*
 * Waits up to timeout_ms (0: forever) for a connection, or for a signal on
 * sigfd: the connection's fd, -EXIT_TIMEOUT, -EXIT_SETUP, or -SERVE_STOPPED
 * when a signal came first (left unread). Prints why on failure.
 */
int fc_accept(int lsock, int sigfd, int timeout_ms);
/*
 * Reads the VM's one message (the userfaultfd and the JSON region table)
 * within timeout_ms and checks it against a snapshot of file_size bytes.
 * 0, SERVE_STOPPED on a signal, or an EXIT_* code after printing one line.
 */
int fc_receive(int conn, int sigfd, int timeout_ms, uint64_t file_size, struct fc_handshake *h);
void fc_handshake_free(struct fc_handshake *h);

/* ---- serve-run.c ---- */

/* How a serve ended. */
enum serve_end { END_VM_EXIT, END_DETACHED, END_SIGNAL, END_ERROR };

/* What the summary shows. */
struct serve_summary {
	pid_t pid;
	size_t nregions;
	uint64_t bytes;		/* guest memory served */
	enum serve_end end;
	uint64_t faults[3];	/* by enum uffd_fault_kind */
	uint64_t removes;	/* REMOVE events (balloon) */
	uint64_t pages_total, pages_present, pages_demand, pages_replay, pages_fill, pages_zero, pages_hole;
	uint64_t bytes_read, inflight_hits, read_errors, pages_recorded, errors;
	uint64_t p50_ns, p99_ns;	/* service time of demand faults */
	uint64_t complete_ns;	/* start to every page present; 0 if never */
	uint64_t served_ns;	/* handshake to end */
	int fds_leaked;		/* descriptors open after cleanup that were not before */
};

struct uffd_source;
/* Serves the VM of h from src until it exits, the serve detaches, or a signal. Returns an EXIT_* code. */
int serve_vm(const struct serve_opts *o, struct fc_handshake *h, struct uffd_source *src, int sigfd,
	     int conn, struct serve_summary *s);

/* ---- serve-stats.c ---- */

void stats_print(const struct serve_summary *s, bool json);

#endif
