/* SPDX-License-Identifier: MIT */
/*
 * Page sources (uffd.h section 10): the source object (source.c), the
 * environment a source runs in on a restore thread (source-env.c: the
 * attached sources, their descriptors polled in the restore's io_uring,
 * process calls), a blocking read on an environment of its own
 * (source-sync.c), and the built-in sources (source-file.c,
 * source-layered.c). Calls go one way: the restore files -> source-file.c,
 * source-layered.c -> source.c -> source-env.c.
 */
#ifndef LIBUFFD_SOURCE_INTERNAL_H
#define LIBUFFD_SOURCE_INTERNAL_H

#include <liburing.h>
#include <stdatomic.h>

#include "internal.h"

struct remote_hooks;

/*
 * A source whose bytes are a file the engine may map (the file source):
 * a COPY installs straight from a read-only shared mapping of the file, so
 * each page is copied once, from the page cache, instead of read into a
 * buffer and copied again from it. Optional; other sources keep the
 * buffer.
 */
struct uffd__map_hooks {
	/* Address of source byte off in the mapping. Any thread. */
	const char *(*addr)(void *impl, uint64_t off);
	/* Whether [off, off+len) is in the page cache now: a COPY from it waits on no disk. Any thread, never blocks. */
	bool (*cached)(void *impl, uint64_t off, uint64_t len);
	/*
	 * Brings [req->off, +req->len) into the page cache and the mapping;
	 * req->done when it is there (req->buf is not used). 0 or -errno as
	 * the read op. Restore thread.
	 */
	int (*fetch)(void *impl, struct uffd_source_req *req);
};

struct uffd_source {
	atomic_uint refs;
	struct uffd_source_ops ops;	/* the caller's, zero-extended */
	void *impl;
	char *name;
	uint64_t length;
	size_t block;
	unsigned max_fds;
	unsigned depth;			/* read_depth: blocks read whole, this many at once (0: none) */
	/* attachment: set and cleared by the thread that starts and stops the restore */
	_Atomic(struct uffd_source_env *) env;
	unsigned slot;			/* index in env->v */
	atomic_bool notified;
	bool touched;			/* read since its descriptors were armed: they may be new */
	const struct remote_hooks *remote;	/* remote and caching sources (source-remote.h), else NULL */
	const struct uffd__map_hooks *map;	/* a mapped file's, else NULL */
};

/*
 * A completion of the restore's io_uring owned by a source: the SQE's
 * user_data is the address of a word holding a pointer to one of these
 * (8-aligned, so its low 3 bits are 0; the restore's own tags are not).
 */
struct uffd__ring_op {
	void (*complete)(uintptr_t *word, int res);
};

/* One attached source, as the restore thread polls it. */
struct env_src {
	struct uffd_source *src;
	struct pollfd *fds;	/* max_fds: what poll gave last (revents: what fired) */
	unsigned nfds;
	struct pollfd *armed;	/* max_fds: the poll request in the ring per slot (fd -1: none) */
	uint32_t *gen;		/* max_fds: the armed request's generation */
	int64_t due_ns;		/* process at this time (monotonic), -1: none */
	bool run;		/* process is due */
	bool rearm;		/* process ran: a descriptor of the same number may be another file now */
};

struct uffd_source_env {
	struct io_uring *ring;	/* the restore thread's */
	int efd;		/* written by uffd_source_notify() */
	struct env_src *v;	/* in order of attachment */
	unsigned n, cap;
	unsigned ring_inflight;	/* SQEs of sources not completed yet */
	atomic_bool notified;
	bool detached;
	/* why the first read that failed failed, as its source said (uffd__source_fail) */
	atomic_bool why_claimed, why_set;
	char why[512];
};

/* ---- source.c ---- */

/* Where [off, off+len) of src can be copied from, or NULL (no mapping: read it into a buffer). */
const char *uffd__source_map(struct uffd_source *src, uint64_t off, uint64_t len);
/* Whether a COPY from uffd__source_map(src, off, len) waits on no disk now. */
bool uffd__source_cached(struct uffd_source *src, uint64_t off, uint64_t len);
/* Brings req's range into the mapping (sources with one only); req->done when there. 0 or -errno. */
int uffd__source_fetch(struct uffd_source *src, struct uffd_source_req *req);

/* ---- source-env.c ---- */

/* Tags of the restore's SQEs: low 3 bits, never 0 (0 is a source's ring op). */
#define ENV_TAG_POLL   4u
#define ENV_TAG_IGNORE 5u
#define ENV_TAG_MASK   7u

/* Adds src to env (allocates; not on the restore thread). -errno. */
int uffd__env_add(struct uffd_source_env *env, struct uffd_source *src);
/* Forgets the sources added from slot n on (an attach op failed): they are not attached. */
void uffd__env_truncate(struct uffd_source_env *env, unsigned n);
/* An SQE of the ring, submitting what is queued when it is full; counted in flight. */
struct io_uring_sqe *uffd__env_sqe(struct uffd_source_env *env);
/* Restore thread, before waiting: poll requests armed, *wait_ns lowered to the next due process. */
void uffd__env_prepare(struct uffd_source_env *env, uint64_t *wait_ns);
/* Restore thread: a CQE whose tag is not the restore's own. */
void uffd__env_cqe(struct uffd_source_env *env, uint64_t tag, int res);
/* Restore thread, after waiting: process for the sources that are due. */
void uffd__env_process(struct uffd_source_env *env);
/* Restore thread, at the end: every source's detach op, the innermost first. */
void uffd__env_detach(struct uffd_source_env *env);
/* Frees what env_add allocated (not env itself); clears the sources' attachment. */
void uffd__env_free(struct uffd_source_env *env);
/*
 * A source's sentence for a read it fails (file or URL, and what): kept by
 * the restore it serves, the first one only, for uffd_restore_wait()'s
 * error. Any thread, while attached.
 */
void uffd__source_fail(struct uffd_source *src, const char *why);
/* That sentence, or NULL. */
const char *uffd__env_why(struct uffd_source_env *env);
/* Nanoseconds on the monotonic clock. */
uint64_t uffd__env_now(void);

/* The read_depth a source was made with (0: none); for sources over other sources. */
unsigned uffd__source_depth(const struct uffd_source *src);

#endif /* LIBUFFD_SOURCE_INTERNAL_H */
