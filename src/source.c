/* SPDX-License-Identifier: MIT */
/*
 * The page-source object (uffd.h section 10): creation from a user's ops,
 * references, and the calls every reader of a source goes through, which
 * check the range before the source's op sees it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "source-internal.h"

#define MAX_FDS 64
#define MAX_DEPTH 256
#define MAX_DEPTH_BLOCK (64u << 20)	/* a restore's read slots are at most max_read's bound */

static int check_info(const struct uffd_source_ops *ops, const struct uffd_source_info *in)
{
	const char *call = "uffd_source_new";

	if (!ops->read)
		return uffd__err(-EINVAL, "%s: ops->read is NULL; a source must be able to read", call);
	if (!in->length)
		return uffd__err(-EINVAL, "%s: the source's length is 0", call);
	if (in->block_size & (in->block_size - 1))
		return uffd__err(-EINVAL, "%s: block_size %zu is not a power of two", call, in->block_size);
	if (in->max_fds > MAX_FDS)
		return uffd__err(-EINVAL, "%s: max_fds %u is above %d", call, in->max_fds, MAX_FDS);
	if (in->read_depth > MAX_DEPTH)
		return uffd__err(-EINVAL, "%s: read_depth %u is above %d", call, in->read_depth, MAX_DEPTH);
	if (in->read_depth && in->block_size > MAX_DEPTH_BLOCK)
		return uffd__err(-EINVAL, "%s: block_size %zu is above 64 MiB; a restore reads whole blocks of a source with read_depth",
				 call, in->block_size);
	return 0;
}

UFFD_EXPORT int uffd_source_new(struct uffd_source **out, const struct uffd_source_ops *ops,
				void *impl, const struct uffd_source_info *info)
{
	struct uffd_source_info in = { .size = sizeof(in) };
	struct uffd_source *s;
	int err;

	if (!out || !ops || !info)
		return uffd__err(-EINVAL, "uffd_source_new: %s is NULL", !out ? "out" : !ops ? "ops" : "info");
	*out = NULL;
	if ((err = uffd__opts_copy(&in, sizeof(in), info, info->size, "uffd_source_info")))
		return err;
	s = calloc(1, sizeof(*s));
	if (!s)
		return uffd__err(-ENOMEM, "uffd_source_new: out of memory");
	if ((err = uffd__opts_copy(&s->ops, sizeof(s->ops), ops, ops->size, "uffd_source_ops")) ||
	    (err = check_info(&s->ops, &in))) {
		free(s);
		return err;
	}
	s->name = strdup(in.name ? in.name : "source");
	if (!s->name) {
		free(s);
		return uffd__err(-ENOMEM, "uffd_source_new: out of memory");
	}
	atomic_init(&s->refs, 1);
	s->impl = impl;
	s->length = in.length;
	s->block = in.block_size ? in.block_size : 4096;
	s->max_fds = s->ops.poll ? in.max_fds : 0;
	s->depth = in.read_depth;	/* poll with none: a timer only */
	*out = s;
	return 0;
}
UFFD_EXPORT_OWN(source_new);

UFFD_EXPORT struct uffd_source *uffd_source_ref(struct uffd_source *src)
{
	if (src)
		atomic_fetch_add(&src->refs, 1);
	return src;
}
UFFD_EXPORT_OWN(source_ref);

UFFD_EXPORT void uffd_source_unref(struct uffd_source *src)
{
	if (!src || atomic_fetch_sub(&src->refs, 1) != 1)
		return;
	if (src->ops.destroy)
		src->ops.destroy(src->impl);
	free(src->name);
	free(src);
}
UFFD_EXPORT_OWN(source_unref);

UFFD_EXPORT uint64_t uffd_source_length(const struct uffd_source *src)
{
	return src ? src->length : 0;
}
UFFD_EXPORT_OWN(source_length);

UFFD_EXPORT size_t uffd_source_block_size(const struct uffd_source *src)
{
	return src ? src->block : 0;
}
UFFD_EXPORT_OWN(source_block_size);

unsigned uffd__source_depth(const struct uffd_source *src)
{
	return src ? src->depth : 0;
}

UFFD_EXPORT const char *uffd_source_name(const struct uffd_source *src)
{
	return src ? src->name : "";
}
UFFD_EXPORT_OWN(source_name);

static int check_range(const char *call, const struct uffd_source *src, uint64_t off, uint64_t len)
{
	if (!src)
		return uffd__err(-EINVAL, "%s: source is NULL", call);
	if (!len || off >= src->length || len > src->length - off)
		return uffd__err(-EINVAL, "%s: [%llu, +%llu) is %s of source %s (%llu bytes)", call,
				 (unsigned long long)off, (unsigned long long)len, len ? "not within" : "an empty range",
				 src->name, (unsigned long long)src->length);
	return 0;
}

UFFD_EXPORT int uffd_source_read(struct uffd_source *src, struct uffd_source_req *req)
{
	int err;

	if (!req || !req->buf || !req->done)
		return uffd__err(-EINVAL, "uffd_source_read: %s is NULL", !req ? "req" : !req->buf ? "req->buf" : "req->done");
	if ((err = check_range("uffd_source_read", src, req->off, req->len)))
		return err;
	if (!atomic_load(&src->env))
		return uffd__err(-ENOTCONN, "uffd_source_read: source %s is not attached to a restore", src->name);
	src->touched = src->max_fds > 0;	/* restore thread, as the env's polling */
	return src->ops.read(src->impl, req);
}
UFFD_EXPORT_OWN(source_read);

UFFD_EXPORT int uffd_source_read_nowait(struct uffd_source *src, uint64_t off, size_t len, void *buf)
{
	int err;

	if (!buf)
		return uffd__err(-EINVAL, "uffd_source_read_nowait: buf is NULL");
	if ((err = check_range("uffd_source_read_nowait", src, off, len)))
		return err;
	return src->ops.read_nowait ? src->ops.read_nowait(src->impl, off, len, buf) : -EAGAIN;
}
UFFD_EXPORT_OWN(source_read_nowait);

UFFD_EXPORT int uffd_source_extent(struct uffd_source *src, uint64_t off, uint64_t len, uint64_t *run)
{
	int err, kind;

	if (!run)
		return uffd__err(-EINVAL, "uffd_source_extent: run is NULL");
	if ((err = check_range("uffd_source_extent", src, off, len)))
		return err;
	if (!src->ops.extent) {
		*run = len;
		return UFFD_EXTENT_DATA;
	}
	kind = src->ops.extent(src->impl, off, len, run);
	if (kind >= 0 && (kind > UFFD_EXTENT_ABSENT || !*run || *run > len))
		return uffd__err(-EIO, "uffd_source_extent: source %s answered kind %d for %llu bytes at %llu (asked %llu)",
				 src->name, kind, (unsigned long long)*run, (unsigned long long)off,
				 (unsigned long long)len);
	return kind;
}
UFFD_EXPORT_OWN(source_extent);

UFFD_EXPORT void uffd_source_advise(struct uffd_source *src, uint64_t off, uint64_t len)
{
	if (src && src->ops.advise && len && off < src->length && len <= src->length - off)
		src->ops.advise(src->impl, off, len);
}
UFFD_EXPORT_OWN(source_advise);

UFFD_EXPORT int uffd_source_attach(struct uffd_source *src, struct uffd_source_env *env)
{
	struct uffd_source_env *was;
	int err;

	if (!src || !env)
		return uffd__err(-EINVAL, "uffd_source_attach: %s is NULL", src ? "env" : "source");
	was = atomic_load(&src->env);
	if (was == env)
		return 0;
	if (was)
		return uffd__err(-EBUSY, "uffd_source_attach: source %s serves another restore; give each restore its own source",
				 src->name);
	if ((err = uffd__env_add(env, src)))	/* sets src->slot and src->env */
		return err;
	if (src->ops.attach && (err = src->ops.attach(src->impl, env)) < 0) {
		uffd__env_truncate(env, src->slot);
		return err;
	}
	return 0;
}
UFFD_EXPORT_OWN(source_attach);

UFFD_EXPORT void uffd_source_notify(struct uffd_source *src)
{
	struct uffd_source_env *env = src ? atomic_load(&src->env) : NULL;
	uint64_t one = 1;

	if (!env)
		return;
	atomic_store(&src->notified, true);
	atomic_store(&env->notified, true);
	if (write(env->efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is full, the restore thread is being woken anyway */
	}
}
UFFD_EXPORT_OWN(source_notify);

const char *uffd__source_map(struct uffd_source *src, uint64_t off, uint64_t len)
{
	if (!src || !src->map || !len || off >= src->length || len > src->length - off)
		return NULL;
	return src->map->addr(src->impl, off);
}

bool uffd__source_cached(struct uffd_source *src, uint64_t off, uint64_t len)
{
	return uffd__source_map(src, off, len) && src->map->cached(src->impl, off, len);
}

int uffd__source_fetch(struct uffd_source *src, struct uffd_source_req *req)
{
	if (!req || !req->done || !uffd__source_map(src, req->off, req->len))
		return uffd__err(-EINVAL, "uffd_source_read: source %s has no mapping for [%llu, +%zu)",
				 src ? src->name : "NULL", req ? (unsigned long long)req->off : 0ull, req ? req->len : 0);
	if (!atomic_load(&src->env))
		return uffd__err(-ENOTCONN, "uffd_source_read: source %s is not attached to a restore", src->name);
	return src->map->fetch(src->impl, req);
}
