/* SPDX-License-Identifier: MIT */
/*
 * What the remote sources (source-http.c, source-nbd.c) and the chunk
 * cache (source-cache.c) share: their counters, read by
 * uffd_source_remote_stats(), a version string for the cache's key, and
 * the jittered backoff between tries. source-remote.c holds them; calls
 * go one way: source-http.c, source-nbd.c, source-cache.c -> source-remote.c
 * -> source.c.
 */
#ifndef LIBUFFD_SOURCE_REMOTE_H
#define LIBUFFD_SOURCE_REMOTE_H

#include <stdatomic.h>
#include <stdint.h>

#include "source-internal.h"

struct remote_ctr {
	atomic_uint_fast64_t requests, bytes, retries, timeouts, errors;
	atomic_uint_fast64_t cache_hits, cache_bytes, cache_fills;
};

/* Tries, timeout and backoff of one request. */
struct remote_retry {
	unsigned tries, timeout_ms, min_ms, max_ms;
};

/* Defaults filled in (3 tries, 60 s, 50..500 ms); -EINVAL with a sentence when min > max. */
int uffd__retry_init(struct remote_retry *r, const char *call);

/* Nanoseconds to wait before try number `done`+1 (done >= 1): min*2^(done-1) capped at max, jittered into [half, whole]. */
uint64_t uffd__retry_backoff_ns(const struct remote_retry *r, unsigned done, uint64_t *seed);

/* Hooks of a remote or caching source: its counters (added into *st), and its version ("" if none). */
struct remote_hooks {
	void (*stats)(void *impl, struct uffd_source_remote_stats *st);
	const char *(*version)(void *impl);
};

/* Marks src as a remote source (after uffd_source_new). */
void uffd__remote_set(struct uffd_source *src, const struct remote_hooks *h);
/* The version of src for a cache key ("" when src is not remote). */
const char *uffd__remote_version(struct uffd_source *src);
/* Adds c to *st. */
void uffd__remote_add(const struct remote_ctr *c, struct uffd_source_remote_stats *st);

/*
 * fd, a connection's socket this process inherited (a fork), made to refer
 * to /dev/null: closing it later, and whatever a client library writes while
 * closing (NBD_CMD_DISC, TLS close_notify, HTTP/2 GOAWAY), then reach no
 * connection, and the process that made it keeps it as it was. 0, or -errno
 * (fd untouched) when /dev/null cannot be opened.
 */
int uffd__remote_disown_fd(int fd);

#endif /* LIBUFFD_SOURCE_REMOTE_H */
