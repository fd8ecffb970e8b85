/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: the parts of the command and who does what.
 * serve-args.c   the command line
 * serve-fc.c     Firecracker's handshake: socket, message, JSON, checks
 * serve-run.c    serving one VM with the library's restore engine and loop
 * serve-stats.c  the summary, as text or JSON
 * serve-fatal.c  what becomes of a VM that cannot be served (--on-fatal)
 * serve-check.c  the checks at start: traces and output paths
 * serve-auth.c   who may connect: the socket's owner and mode, the peers allowed
 * serve-source.c where the guest's bytes come from: the snapshot and its layers
 * serve-supervise.c  --supervise: the supervisor, its workers, the upgrade, the fd store
 */
#ifndef UFFD_SERVE_H
#define UFFD_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <syslog.h>

#include <uffd.h>

#define PROG "uffd-serve"

/* Exit status (documented in uffd-serve(1)). */
enum {
	EXIT_OK = 0,		/* the VM exited, the serve detached, or a signal ended it */
	EXIT_SERVE = 1,		/* serving failed: a page could not be read, the loop broke */
	EXIT_USAGE = 2,		/* bad command line */
	EXIT_SETUP = 3,		/* the snapshot or the socket cannot be used */
	EXIT_TIMEOUT = 4,	/* no VM connected, or it sent no message, in time */
	EXIT_HANDSHAKE = 5,	/* the VM's message is unusable: no fd, bad JSON, bad regions */
	EXIT_DRAIN = 6,		/* SIGTERM: a VM did not finish within --drain-timeout; --on-fatal applied */
	SERVE_STOPPED = 100,	/* not an exit status: a signal came first */
};

#define ALLOW_MAX 64	/* --allow-uid and --allow-gid, each */

/* --on-fatal: what a fatal error does to the VM that waits for this process. */
enum fatal_policy { FATAL_KILL, FATAL_EXIT, FATAL_WAIT };

struct serve_opts {
	const char *socket;	/* the Unix socket to listen on */
	const char *memory;	/* the memory snapshot file */
	const char **layers;	/* Diff snapshots over it, oldest first */
	size_t nlayers;
	const char *record;	/* trace to write, or NULL */
	const char **replay;	/* traces to replay */
	size_t nreplay;
	bool fill;		/* bring in every page, then detach */
	bool verify;		/* check every frame of a compressed snapshot at start */
	uint64_t fill_rate;	/* bytes per second; 0: as fast as demand allows */
	unsigned record_ms;	/* record window after the first fault; 0: until exit */
	unsigned threads;	/* loop threads */
	unsigned spin_us;	/* a loop thread polls this long before sleeping */
	size_t fault_around;	/* --fault-around: bytes of a demand fault's window */
	bool fault_around_set;	/* else the library's default; set and 0: none */
	size_t replay_block;	/* --replay-block: bytes of a traced page's block; 0: the library's default */
	bool stats, json, multi;
	int timeout_ms;		/* for the connection and for the message; 0: none */
	enum fatal_policy on_fatal;
	unsigned drain_ms;	/* SIGTERM: how long the VMs have to finish */
	/* who may connect (serve-auth.c) */
	bool sock_owner_set;	/* else the socket belongs to this process's uid and gid */
	unsigned sock_uid, sock_gid;
	unsigned sock_mode;	/* permission bits of the socket */
	unsigned allow_uid[ALLOW_MAX], allow_gid[ALLOW_MAX];
	size_t nallow_uid, nallow_gid;
	unsigned max_per_peer;	/* --multi: connections of one uid at once; 0: no limit */
	int handshake_ms;	/* from the connection to the whole message */
	const char *metrics_addr;	/* --metrics: unix:PATH or 127.0.0.1:PORT, or NULL */
	struct metrics *metrics;	/* its endpoint and slots, once open (main) */
	bool activated;		/* the socket came from systemd: not ours to remove */
	bool supervise;		/* --supervise: a supervisor process restarts the worker that dies */
	/* remote snapshots (serve-remote.c) */
	const char *cache_dir;	/* --cache-dir: chunk cache of remote snapshots, or NULL */
	uint64_t cache_size;	/* its bound in bytes; 0: the library's */
	const char **headers;	/* --header lines sent with every HTTP request */
	size_t nheaders;
	const char *s3_endpoint;	/* --s3-endpoint: an S3-compatible store */
	unsigned remote_timeout_ms, remote_tries;	/* 0: the library's */
};

/* ---- serve-remote.c ---- */

/* Whether --memory or --layer names a remote snapshot (http://, https://, s3://, nbd://, nbd+unix://, nbds://). */
bool serve_is_url(const char *path);
/* The source of a remote snapshot or Diff layer, its size found now; NULL after printing why. */
struct uffd_source *serve_remote_layer(const struct serve_opts *o, const char *what, const char *url, bool diff,
				       uint64_t *size);
/* The counters of the remote sources serve_remote_layer() made, summed into *st; false when it made none. */
bool serve_remote_stats(struct uffd_source_remote_stats *st);
/* Drops the references serve_remote_layer() kept for serve_remote_stats(). */
void serve_remote_release(void);

/* serve-args.c: parses argv into o, or prints why and exits with EXIT_USAGE. */
void serve_args(int argc, char **argv, struct serve_opts *o);

/* ---- serve-log.c ---- */

/*
 * Logs "uffd-serve: <message>" (serve-log.c: time, level, VM) and returns
 * code: an error when code is not 0 or the message begins "fatal:", else a
 * warning.
 */
int serve_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A line at syslog level (LOG_ERR, LOG_WARNING, LOG_INFO). */
void serve_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* From now on the lines of this process name VM vm. */
void serve_log_vm(pid_t vm);

/* ---- serve-fc.c ---- */

/* What a VM sent, checked by the library (uffd_fc_handshake_recv), as the serve keeps it. */
struct fc_handshake {
	int uffd;		/* the VM's userfaultfd, close-on-exec */
	uint64_t features;	/* as the kernel reports them for it */
	pid_t pid;		/* SO_PEERCRED; 0 when in another pid namespace */
	int pidfd;		/* of pid, or -1 */
	bool vm_waits;		/* it handed over its userfaultfd: without us it hangs */
	struct uffd_fc_region *r;
	size_t n;
	/* --supervise (serve-supervise.c): the page states, shared with the supervisor */
	unsigned char *pstate;	/* one byte per page, the regions' pages one after another; or NULL */
	bool adopted;		/* a worker that died served it before: wake every range */
};

/*
 * Listening socket at path (a stale socket there is replaced), mode 0600
 * whatever the umask: fd, or an EXIT_* code negated.
 */
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
 * h is filled as far as it got (h->vm_waits, h->pidfd) and the caller frees it.
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
	uint64_t hist[UFFD_HIST_BUCKETS];	/* service time of demand faults, the engine's buckets */
	bool remote;		/* the snapshot or a layer is remote: rstats holds their counters */
	struct uffd_source_remote_stats rstats;	/* of this process's remote sources, since it started */
};

/*
 * Serves the VM of h until it exits or the serve detaches; on a signal,
 * drains (every page in, then detach) within o->drain_ms. A VM left
 * depending on us takes the fatal path. Returns an EXIT_* code.
 */
struct uffd_source;
int serve_vm(const struct serve_opts *o, struct fc_handshake *h, struct uffd_source *src, int sigfd,
	     int conn, struct serve_summary *s);

/* ---- serve-auth.c ---- */

struct ucred;
/* --socket-owner USER[:GROUP] (names or numbers) into o: false when unknown. */
bool auth_parse_owner(const char *s, struct serve_opts *o);
/* --allow-uid / --allow-gid (a name or a number): false when unknown or too many. */
bool auth_add_id(const char *s, bool group, struct serve_opts *o);
/* The socket at path gets its owner and mode: 0, or EXIT_SETUP after one line. */
int auth_socket(const struct serve_opts *o, const char *path);
/* The peer of conn may be served: true with *cr; else false, logged. */
bool auth_peer(const struct serve_opts *o, int conn, struct ucred *cr);

/* ---- serve-fatal.c ---- */

const char *fatal_policy_name(enum fatal_policy p);
/*
 * A fatal error on the VM of h (why: a few words, the error line was printed
 * before), first seen at failed_ns (CLOCK_MONOTONIC; 0: now): applies
 * o->on_fatal to it when it waits for us, logs the decision and, for kill,
 * the time from the failure until the VM was gone. Returns code.
 */
int serve_fatal(const struct serve_opts *o, const struct fc_handshake *h, int sigfd, int code,
		const char *why, uint64_t failed_ns);

/* ---- serve-source.c ---- */

/*
 * Where the guest's bytes come from, checked before any VM connects: the
 * snapshot (--memory) and its layers (--layer), one source; its size in
 * *size. NULL after printing one line.
 */
struct uffd_source *open_source(const struct serve_opts *o, uint64_t *size);

/* ---- serve-check.c ---- */

/* The traces to replay, checked now: an unusable one is dropped with a warning. */
void check_traces(struct serve_opts *o, struct uffd_source *src, uint64_t snap_size);
/* --record's directory can take the trace: 0, or EXIT_SETUP after one line. */
int check_outputs(const struct serve_opts *o);

/* ---- serve-metrics.c ---- */

struct metrics;
struct slot;
/* The endpoint at addr and the shared slots (before any fork): NULL after a line on failure. */
struct metrics *metrics_open(const char *addr);
void metrics_close(struct metrics *m);
/* The listening fd to poll (-1: none); when readable, metrics_scrape() answers. */
int metrics_fd(const struct metrics *m);
void metrics_scrape(struct metrics *m);
/* In a --multi child: the parent answers; the child only writes its slot. */
void metrics_child(struct metrics *m);
/* A slot for this process's VM (NULL when none or m NULL); its numbers; freed at the end. */
struct slot *metrics_claim(struct metrics *m);
void metrics_update(struct slot *sl, const struct serve_summary *s, bool detached);
void metrics_release(struct slot *sl);
/* The parent: the slots of a child that ended, whatever became of it. */
void metrics_forget(struct metrics *m, pid_t pid);

/* ---- serve-systemd.c ---- */

/* The socket systemd passed (fd), -1 when none, or an EXIT_* code negated after a line. */
int sd_activated_socket(struct serve_opts *o);
/* The descriptors of one VM in systemd's fd store, by role. */
enum { VMFD_UFFD, VMFD_PIDFD, VMFD_CONN, VMFD_STATE, VMFD_N };
/*
 * --multi under systemd: the fds of a supervised VM kept in the service's fd
 * store (FDSTORE=1), under names "uffdvm.KEY.ROLE", so that a restarted
 * service takes the VM back; removed (FDSTOREREMOVE=1) when its serve ends.
 * Nothing without systemd (the unit needs FileDescriptorStoreMax=).
 */
void sd_store_vm(unsigned long long key, const int fds[VMFD_N]);
void sd_unstore_vm(unsigned long long key);
/* The VMs systemd passed back from its store at start (sd_activated_socket): how many; fds[i][role], -1 when missing. */
size_t sd_stored_vms(int (**fds)[VMFD_N]);
/* sd_notify(3) of the formatted state ("READY=1", "STATUS=..."); nothing without systemd. */
void sd_state(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- serve-config.c ---- */

/* argv with the options of --config FILE put first (argc updated); argv when none. Exits on a bad file. */
char **config_argv(int *argc, char **argv);
/* What config_argv() allocated. */
void config_free(void);

/* ---- serve-supervise.c ---- */

/* Before config_argv(): the command line a re-executed supervisor starts with. */
void supervise_init(int argc, char **argv);
/*
 * --supervise: this process holds the VM of h (its userfaultfd, pidfd,
 * region table and a shared page-state map) and runs a worker process that
 * serves it (serve_vm), restarted when it dies; SIGUSR2 or SIGHUP re-execute
 * this program keeping all of it. Returns an EXIT_* code.
 */
int supervise_vm(const struct serve_opts *o, struct fc_handshake *h, struct uffd_source *src, int sigfd,
		 int conn, struct serve_summary *s);
/*
 * A supervisor re-executed for an upgrade: true when the environment hands
 * over a VM, then supervises it (*rc its exit status); false otherwise.
 */
bool supervise_resume(const struct serve_opts *o, struct uffd_source *src, int sigfd, int *rc);

/*
 * --multi: a supervisor (a child, its pid in kids[]) for each VM that systemd
 * passed back from its fd store; the VM is adopted as after a worker's
 * crash. lsock is closed in the children. Returns how many were started.
 */
size_t supervise_stored(const struct serve_opts *o, struct uffd_source *src, int sigfd, int lsock,
			pid_t *kids, size_t room);

/* ---- serve-stats.c ---- */

void stats_print(const struct serve_summary *s, bool json);

#endif
