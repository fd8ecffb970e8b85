/* SPDX-License-Identifier: MIT */
/*
 * Remote snapshots for --memory and --layer: an HTTP(S) or S3 object
 * (uffd_source_http) or an NBD export (uffd_source_nbd), behind the chunk
 * cache of --cache-dir when given; opened, sized and checked here, before
 * any VM connects. The server's failures later are the restore's read
 * errors: --on-fatal decides the VM's fate. Each such source is kept here
 * too (a reference), for the counters of the summary and --metrics: the
 * layered source over them is no remote source itself.
 */
#include <stdlib.h>
#include <string.h>

#include <uffd.h>

#include "serve.h"

#define MAX_REMOTE 64	/* --memory and --layer's (serve-args.c bounds the layers below this) */

static struct uffd_source *remotes[MAX_REMOTE];
static size_t nremotes;

static bool has_prefix(const char *s, const char *p)
{
	return !strncmp(s, p, strlen(p));
}

static bool is_nbd(const char *path)
{
	return has_prefix(path, "nbd://") || has_prefix(path, "nbd+unix://") || has_prefix(path, "nbds://") ||
	       has_prefix(path, "nbds+unix://");
}

bool serve_is_url(const char *path)
{
	return has_prefix(path, "http://") || has_prefix(path, "https://") || has_prefix(path, "s3://") ||
	       is_nbd(path);
}

static struct uffd_source *open_http(const struct serve_opts *o, const char *what, const char *url, bool diff)
{
	struct uffd_source_http_opts ho = { .size = sizeof(ho), .endpoint = o->s3_endpoint,
					    .timeout_ms = o->remote_timeout_ms, .tries = o->remote_tries };
	struct uffd_source *src = NULL;
	const char **hdr = NULL;

	if (diff) {
		serve_fail(EXIT_SETUP, "the %s %s: a Diff layer over HTTP has no map of its holes; serve it over NBD (nbdkit file plugin) or keep it local",
			   what, url);
		return NULL;
	}
	if (o->nheaders) {	/* NULL-terminated for the library */
		if (!(hdr = calloc(o->nheaders + 1, sizeof(*hdr)))) {
			serve_fail(EXIT_SETUP, "out of memory");
			return NULL;
		}
		memcpy(hdr, o->headers, o->nheaders * sizeof(*hdr));
		ho.headers = hdr;
	}
	if (uffd_source_http(&src, url, &ho))
		serve_fail(EXIT_SETUP, "cannot read the %s %s: %s", what, url, uffd_last_error());
	free(hdr);
	return src;
}

static struct uffd_source *open_nbd(const struct serve_opts *o, const char *what, const char *uri, bool diff)
{
	struct uffd_source_nbd_opts no = { .size = sizeof(no), .timeout_ms = o->remote_timeout_ms,
					   .tries = o->remote_tries, .flags = diff ? UFFD_SOURCE_NBD_DIFF : 0 };
	struct uffd_source *src = NULL;

	if (uffd_source_nbd(&src, uri, &no))
		serve_fail(EXIT_SETUP, "cannot read the %s %s: %s", what, uri, uffd_last_error());
	return src;
}

struct uffd_source *serve_remote_layer(const struct serve_opts *o, const char *what, const char *url, bool diff,
				       uint64_t *size)
{
	struct uffd_source_cache_opts co = { .size = sizeof(co), .dir = o->cache_dir, .max_bytes = o->cache_size };
	struct uffd_source *src = is_nbd(url) ? open_nbd(o, what, url, diff) : open_http(o, what, url, diff);
	struct uffd_source *cached = NULL;

	if (!src)
		return NULL;
	*size = uffd_source_length(src);
	if (o->cache_dir) {
		if (uffd_source_cache(&cached, src, &co))
			serve_fail(EXIT_SETUP, "cannot cache the %s %s in %s: %s", what, url, o->cache_dir,
				   uffd_last_error());
		uffd_source_unref(src);	/* the cache holds it */
		src = cached;
	}
	if (src && nremotes < MAX_REMOTE)
		remotes[nremotes++] = uffd_source_ref(src);
	return src;
}

bool serve_remote_stats(struct uffd_source_remote_stats *st)
{
	*st = (struct uffd_source_remote_stats){ .size = sizeof(*st) };
	for (size_t i = 0; i < nremotes; i++) {
		struct uffd_source_remote_stats one = { .size = sizeof(one) };

		if (uffd_source_remote_stats(remotes[i], &one))
			continue;
		st->requests += one.requests;
		st->bytes += one.bytes;
		st->retries += one.retries;
		st->timeouts += one.timeouts;
		st->errors += one.errors;
		st->cache_hits += one.cache_hits;
		st->cache_bytes += one.cache_bytes;
		st->cache_fills += one.cache_fills;
	}
	return nremotes > 0;
}

void serve_remote_release(void)
{
	while (nremotes)
		uffd_source_unref(remotes[--nremotes]);
}
