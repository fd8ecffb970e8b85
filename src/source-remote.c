/* SPDX-License-Identifier: MIT */
/*
 * Shared by the remote sources and the chunk cache (source-remote.h): the
 * public counters call, the version used in cache keys, and the bounded,
 * jittered backoff between the tries of a request, and how a connection
 * inherited across fork is let go of without a byte written on it.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "source-remote.h"

UFFD_OWN(source_remote_stats);

int uffd__retry_init(struct remote_retry *r, const char *call)
{
	if (!r->tries)
		r->tries = 3;
	if (!r->timeout_ms)
		r->timeout_ms = 60000;
	if (!r->min_ms)
		r->min_ms = 50;
	if (!r->max_ms)
		r->max_ms = r->min_ms > 500 ? r->min_ms : 500;
	if (r->min_ms > r->max_ms)
		return uffd__err(-EINVAL, "%s: backoff_min_ms %u is above backoff_max_ms %u", call, r->min_ms, r->max_ms);
	if (r->tries > 100)
		return uffd__err(-EINVAL, "%s: tries %u is above 100; a request must end", call, r->tries);
	return 0;
}

/* xorshift64*: jitter, not secrecy. */
static uint64_t next_rand(uint64_t *seed)
{
	uint64_t x = *seed ? *seed : 0x9e3779b97f4a7c15ull;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*seed = x;
	return x * 0x2545f4914f6cdd1dull;
}

uint64_t uffd__retry_backoff_ns(const struct remote_retry *r, unsigned done, uint64_t *seed)
{
	uint64_t ms = r->min_ms;

	for (unsigned i = 1; i < done && ms < r->max_ms; i++)
		ms *= 2;
	if (ms > r->max_ms)
		ms = r->max_ms;
	/* Jitter into [ms/2, ms]: restores that failed together do not retry together. */
	ms = ms / 2 + next_rand(seed) % (ms / 2 + 1);
	return ms * 1000000u;
}

void uffd__remote_set(struct uffd_source *src, const struct remote_hooks *h)
{
	src->remote = h;
}

const char *uffd__remote_version(struct uffd_source *src)
{
	return src->remote && src->remote->version ? src->remote->version(src->impl) : "";
}

void uffd__remote_add(const struct remote_ctr *c, struct uffd_source_remote_stats *st)
{
	st->requests += atomic_load(&c->requests);
	st->bytes += atomic_load(&c->bytes);
	st->retries += atomic_load(&c->retries);
	st->timeouts += atomic_load(&c->timeouts);
	st->errors += atomic_load(&c->errors);
	st->cache_hits += atomic_load(&c->cache_hits);
	st->cache_bytes += atomic_load(&c->cache_bytes);
	st->cache_fills += atomic_load(&c->cache_fills);
}

UFFD_EXPORT int uffd_source_remote_stats(struct uffd_source *src, struct uffd_source_remote_stats *st)
{
	struct uffd_source_remote_stats s = { .size = sizeof(s) };

	if (!src || !st)
		return uffd__err(-EINVAL, "uffd_source_remote_stats: %s is NULL", src ? "st" : "src");
	if (st->size < sizeof(s))
		return uffd__err(-EINVAL, "uffd_source_remote_stats: st->size %zu is smaller than struct uffd_source_remote_stats (%zu); set it to sizeof(struct uffd_source_remote_stats)",
				 st->size, sizeof(s));
	if (!src->remote)
		return uffd__err(-ENOTSUP, "uffd_source_remote_stats: source %s is not a remote or caching source", src->name);
	src->remote->stats(src->impl, &s);
	memcpy((char *)st + sizeof(size_t), (char *)&s + sizeof(size_t), sizeof(s) - sizeof(size_t));
	return 0;
}
UFFD_EXPORT_OWN(source_remote_stats);

int uffd__remote_disown_fd(int fd)
{
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC), err = 0;

	if (nul < 0)
		return -errno;
	if (dup3(nul, fd, O_CLOEXEC) < 0)
		err = -errno;
	close(nul);
	return err;
}
