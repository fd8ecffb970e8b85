/* SPDX-License-Identifier: MIT */
/*
 * The local chunk cache (uffd.h section 13): a source in front of another
 * (a remote one) keeping the chunks it fetched in a sparse file on this
 * host, shared by every restore of the same snapshot.
 *
 * Files, in the cache directory, named after a hash of the key: NAME.data
 * (the image, sparse: only fetched chunks take space) and NAME.state (a
 * header naming the key, then one byte per chunk, 1 once the chunk's bytes
 * are in the data file). A chunk is written, then marked. Which process
 * fetches a chunk is decided by an open-file-description lock on its
 * state byte (F_OFD_SETLK): the holder fetches, the others wait for the
 * byte to turn 1 (checked every 2 ms), or fetch it again themselves when
 * the holder died (its lock is gone and the byte still 0). An OFD lock
 * belongs to the open file description, which fork shares: a copy of the
 * source in a forked child opens the state file again at attach, so that
 * its locks are its own and exclude the parent's and its siblings'.
 *
 * In this process, a chunk is fetched once into one of FETCHES buffers
 * (allocated at attach) however many reads wait on it; each waiter gets
 * its bytes copied as they arrive (partial). A demand read (at most
 * 256 KiB, shorter than a chunk) of a chunk nobody fetches goes straight to the inner source so
 * a fault never waits for a whole chunk; the fill brings the chunk.
 * A read is served one chunk at a time: req->priv[0] links it in a list,
 * priv[1] is the bytes done, priv[2] the bytes of the current piece copied,
 * priv[3] when it first found its chunk fetched by another process.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "source-remote.h"

UFFD_OWN(source_new);
UFFD_OWN(source_ref);
UFFD_OWN(source_unref);
UFFD_OWN(source_read);
UFFD_OWN(source_attach);
UFFD_OWN(source_block_size);
UFFD_OWN(source_length);
UFFD_OWN(source_name);
UFFD_OWN(source_extent);
UFFD_OWN(source_advise);

#define FETCHES 16		/* chunks fetched at once */
#define HEADER 4096u		/* of the state file */
#define BLOCKED_NS 2000000	/* another process fetches: look again after this */
#define DEMAND (256u << 10)	/* reads of at most this, shorter than a chunk, are demand reads (fault-around) */
#define PATIENCE_NS 500000000	/* waiting longer on another process's fetch: fetch it too (not kept) */

struct fetch {
	struct uffd_source_req in;	/* the read of the chunk from the inner source */
	struct csrc *c;
	uint64_t chunk;
	char *buf;
	size_t ready;
	bool busy, locked, keep;	/* keep: write it to the cache */
	struct uffd_source_req *waiters;
};

struct csrc {
	struct uffd_source *inner;
	int dfd, sfd;
	char *spath;		/* the state file */
	pid_t pid;		/* the process whose open file description sfd is */
	unsigned char *state;	/* the state file's chunk bytes, mapped shared */
	size_t map_len;
	size_t chunk;
	uint64_t length, nchunks, max_bytes;
	struct fetch f[FETCHES];
	char *bufs;
	struct uffd_source_req *blocked, *blocked_tail;
	bool attached;
	struct remote_ctr c;
};

static struct uffd_source_req *next_of(struct uffd_source_req *r)
{
	return (struct uffd_source_req *)r->priv[0];
}

static bool present(const struct csrc *c, uint64_t k)
{
	return __atomic_load_n(&c->state[k], __ATOMIC_ACQUIRE) == 1;
}

static size_t chunk_len(const struct csrc *c, uint64_t k)
{
	uint64_t start = k * c->chunk;

	return c->length - start < c->chunk ? (size_t)(c->length - start) : c->chunk;
}

/* The lock on chunk k's state byte: taken (true), or held by another process. */
static bool lock_chunk(struct csrc *c, uint64_t k, short type)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = (off_t)(HEADER + k), .l_len = 1 };

	return fcntl(c->sfd, F_OFD_SETLK, &fl) == 0;
}

/* ---- serving a read, chunk by chunk ---- */

static void step(struct csrc *c, struct uffd_source_req *r);

/* The current piece of r: [at, at+len) of the source, in chunk k. */
static uint64_t piece(const struct csrc *c, const struct uffd_source_req *r, uint64_t *k, size_t *len)
{
	uint64_t at = r->off + r->priv[1], end = (at / c->chunk + 1) * c->chunk;

	*k = at / c->chunk;
	*len = (size_t)((end < r->off + r->len ? end : r->off + r->len) - at);
	return at;
}

static void finish(struct uffd_source_req *r, int res)
{
	r->done(r, res);
}

/* Copies what arrived of r's piece from fetch f; true when the piece is whole. */
static bool copy_ready(struct fetch *f, struct uffd_source_req *r)
{
	struct csrc *c = f->c;
	uint64_t k;
	size_t len, from = r->priv[2];
	uint64_t at = piece(c, r, &k, &len), in = at - k * c->chunk;
	size_t upto = f->ready > in ? f->ready - in : 0;

	if (upto > len)
		upto = len;
	if (upto > from) {
		memcpy((char *)r->buf + r->priv[1] + from, f->buf + in + from, upto - from);
		r->priv[2] = upto;
		if (r->partial && upto < len && (r->priv[1] + upto) / 4096 > (r->priv[1] + from) / 4096)
			r->partial(r, (r->priv[1] + upto) / 4096 * 4096);
	}
	return upto == len;
}

static void fetch_partial(struct uffd_source_req *in, size_t ready)
{
	struct fetch *f = (struct fetch *)((char *)in - offsetof(struct fetch, in));

	f->ready = ready;
	for (struct uffd_source_req *r = f->waiters; r; r = next_of(r))
		copy_ready(f, r);
}

/* Writes a fetched chunk to the data file, then marks it present: never a mark before the bytes. */
static void store(struct csrc *c, struct fetch *f, size_t len)
{
	struct stat st;

	if (!f->keep || fstat(c->dfd, &st) || (uint64_t)st.st_blocks * 512 + len > c->max_bytes)
		return;		/* full: served, not kept */
	if (pwrite(c->dfd, f->buf, len, (off_t)(f->chunk * c->chunk)) != (ssize_t)len)
		return;
	__atomic_store_n(&c->state[f->chunk], 1, __ATOMIC_RELEASE);
	atomic_fetch_add(&c->c.cache_fills, 1);
}

static void retry_blocked(struct csrc *c);

static void fetch_done(struct uffd_source_req *in, int res)
{
	struct fetch *f = (struct fetch *)((char *)in - offsetof(struct fetch, in));
	struct csrc *c = f->c;
	struct uffd_source_req *w = f->waiters;

	if (!res) {
		f->ready = in->len;
		store(c, f, in->len);
	}
	if (f->locked)
		lock_chunk(c, f->chunk, F_UNLCK);
	f->busy = f->locked = false;
	f->waiters = NULL;
	while (w) {
		struct uffd_source_req *n = next_of(w);

		if (res) {
			finish(w, res);
		} else {
			copy_ready(f, w);
			w->priv[1] += w->priv[2];
			w->priv[2] = 0;
			step(c, w);
		}
		w = n;
	}
	retry_blocked(c);
}

static struct fetch *fetching(struct csrc *c, uint64_t k)
{
	for (unsigned i = 0; i < FETCHES; i++)
		if (c->f[i].busy && c->f[i].chunk == k)
			return &c->f[i];
	return NULL;
}

static void wait_on(struct fetch *f, struct uffd_source_req *r)
{
	r->priv[0] = (uintptr_t)f->waiters;
	f->waiters = r;
	r->priv[2] = 0;
	copy_ready(f, r);
}

static void block(struct csrc *c, struct uffd_source_req *r)
{
	r->priv[0] = 0;
	if (c->blocked_tail)
		c->blocked_tail->priv[0] = (uintptr_t)r;
	else
		c->blocked = r;
	c->blocked_tail = r;
}

/* Starts fetching chunk k for r (lock taken or not kept). false: no buffer free. */
static bool start_fetch(struct csrc *c, uint64_t k, struct uffd_source_req *r, bool locked)
{
	struct fetch *f = NULL;
	int err;

	for (unsigned i = 0; i < FETCHES && !f; i++)
		if (!c->f[i].busy)
			f = &c->f[i];
	if (!f)
		return false;
	f->busy = true;
	f->locked = f->keep = locked;
	f->chunk = k;
	f->ready = 0;
	f->waiters = NULL;
	f->in = (struct uffd_source_req){ .off = k * c->chunk, .len = chunk_len(c, k), .buf = f->buf,
					  .done = fetch_done, .partial = fetch_partial };
	wait_on(f, r);
	if ((err = uffd_source_read(c->inner, &f->in)) < 0) {
		if (err == -EAGAIN) {	/* the inner source is at its limit: later */
			f->busy = false;
			f->waiters = NULL;
			if (locked)
				lock_chunk(c, k, F_UNLCK);
			return false;
		}
		fetch_done(&f->in, err);
	}
	return true;
}

/* Serves r's pieces from the data file while present; then waits, fetches or blocks. */
static void step(struct csrc *c, struct uffd_source_req *r)
{
	while (r->priv[1] < r->len) {
		uint64_t k;
		size_t len;
		uint64_t at = piece(c, r, &k, &len);
		struct fetch *f;

		if (present(c, k)) {
			if (pread(c->dfd, (char *)r->buf + r->priv[1], len, (off_t)at) != (ssize_t)len) {
				finish(r, -EIO);
				return;
			}
			atomic_fetch_add(&c->c.cache_hits, 1);
			atomic_fetch_add(&c->c.cache_bytes, len);
			r->priv[1] += len;
			continue;
		}
		if ((f = fetching(c, k))) {
			wait_on(f, r);
			return;
		}
		if (lock_chunk(c, k, F_WRLCK)) {
			if (present(c, k)) {	/* filled between the look and the lock */
				lock_chunk(c, k, F_UNLCK);
				continue;
			}
			if (!start_fetch(c, k, r, true)) {
				lock_chunk(c, k, F_UNLCK);
				block(c, r);
			}
			return;
		}
		if (!r->priv[3])
			r->priv[3] = uffd__env_now();
		if (uffd__env_now() - r->priv[3] > PATIENCE_NS && start_fetch(c, k, r, false))
			return;	/* that process is stuck (stopped?): bounded wait, then our own copy */
		block(c, r);	/* another process fetches it */
		return;
	}
	finish(r, 0);
}

static void retry_blocked(struct csrc *c)
{
	struct uffd_source_req *r = c->blocked;

	c->blocked = c->blocked_tail = NULL;
	while (r) {
		struct uffd_source_req *n = next_of(r);

		step(c, r);
		r = n;
	}
}

/* ---- ops ---- */

static int c_read(void *impl, struct uffd_source_req *req)
{
	struct csrc *c = impl;
	uint64_t k0 = req->off / c->chunk, k1 = (req->off + req->len - 1) / c->chunk;

	/* A fault on a chunk nobody brings: straight from the inner source, at once. */
	if (req->len <= DEMAND && req->len < c->chunk && k0 == k1 && !present(c, k0) && !fetching(c, k0))
		return uffd_source_read(c->inner, req);
	req->priv[1] = req->priv[2] = req->priv[3] = 0;
	step(c, req);
	return 0;
}

static int c_read_nowait(void *impl, uint64_t off, size_t len, void *buf)
{
	struct csrc *c = impl;
	struct iovec iov = { buf, len };

	for (uint64_t k = off / c->chunk; k <= (off + len - 1) / c->chunk; k++)
		if (!present(c, k))
			return -EAGAIN;
	if (preadv2(c->dfd, &iov, 1, (off_t)off, RWF_NOWAIT) != (ssize_t)len)
		return -EAGAIN;
	atomic_fetch_add(&c->c.cache_hits, 1);
	atomic_fetch_add(&c->c.cache_bytes, len);
	return 0;
}

static int c_extent(void *impl, uint64_t off, uint64_t len, uint64_t *run)
{
	return uffd_source_extent(((struct csrc *)impl)->inner, off, len, run);
}

static void c_advise(void *impl, uint64_t off, uint64_t len)
{
	uffd_source_advise(((struct csrc *)impl)->inner, off, len);
}

/* In a process other than the one that opened sfd (a fork): sfd, same number, on a description of its own. */
static int own_locks(struct csrc *c)
{
	int fd, err = 0;

	if (c->pid == getpid())
		return 0;
	if ((fd = open(c->spath, O_RDWR | O_CLOEXEC)) < 0)
		return uffd__err(-errno, "uffd_source_cache: %s: %s", c->spath, uffd__errname(-errno));
	if (dup3(fd, c->sfd, O_CLOEXEC) < 0)
		err = uffd__err(-errno, "uffd_source_cache: %s: dup3: %s", c->spath, uffd__errname(-errno));
	else
		c->pid = getpid();
	close(fd);
	return err;
}

static int c_attach(void *impl, struct uffd_source_env *env)
{
	struct csrc *c = impl;
	int err;

	if ((err = own_locks(c)))
		return err;

	if (!c->bufs) {
		void *p = mmap(NULL, FETCHES * c->chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			return uffd__err(-ENOMEM, "uffd_source_cache: cannot map %zu bytes of chunk buffers",
					 FETCHES * c->chunk);
		c->bufs = p;
		for (unsigned i = 0; i < FETCHES; i++) {
			c->f[i].c = c;
			c->f[i].buf = c->bufs + i * c->chunk;
		}
	}
	return uffd_source_attach(c->inner, env);
}

static int c_poll(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns)
{
	(void)fds;
	(void)max;
	*timeout_ns = ((struct csrc *)impl)->blocked ? BLOCKED_NS : -1;
	return 0;
}

static void c_process(void *impl, const struct pollfd *fds, unsigned n)
{
	(void)fds;
	(void)n;
	retry_blocked(impl);
}

/* The inner source was detached first: every fetch has ended. What is blocked ends here. */
static void c_detach(void *impl)
{
	struct csrc *c = impl;
	struct uffd_source_req *r = c->blocked;

	c->blocked = c->blocked_tail = NULL;
	while (r) {
		struct uffd_source_req *n = next_of(r);

		finish(r, -ECANCELED);
		r = n;
	}
}

static void c_free(struct csrc *c)
{
	if (c->state)
		munmap(c->state - HEADER, c->map_len);
	if (c->bufs)
		munmap(c->bufs, FETCHES * c->chunk);
	if (c->dfd >= 0)
		close(c->dfd);
	if (c->sfd >= 0)
		close(c->sfd);
	uffd_source_unref(c->inner);
	free(c->spath);
	free(c);
}

static void c_destroy(void *impl)
{
	c_free(impl);
}

static void c_stats(void *impl, struct uffd_source_remote_stats *st)
{
	struct csrc *c = impl;

	uffd__remote_add(&c->c, st);
	if (c->inner->remote)
		c->inner->remote->stats(c->inner->impl, st);
}

static const struct remote_hooks cache_hooks = { c_stats, NULL };

static const struct uffd_source_ops cache_ops = {
	.size = sizeof(cache_ops),
	.read = c_read,
	.read_nowait = c_read_nowait,
	.extent = c_extent,
	.advise = c_advise,
	.attach = c_attach,
	.detach = c_detach,
	.poll = c_poll,
	.process = c_process,
	.destroy = c_destroy,
};

/* ---- the files ---- */

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return h;
}

/* The state file's header: what it caches, so that a stale or foreign cache is never read. */
static int header(char *buf, const char *key, const struct csrc *c)
{
	memset(buf, 0, HEADER);
	return snprintf(buf, HEADER, "libuffd chunk cache 1\nlength %" PRIu64 "\nchunk %zu\nkey %s\n", c->length,
			c->chunk, key) >= (int)HEADER ? -ENAMETOOLONG : 0;
}

/* Opens (creating under an exclusive flock) the two files of key in dir. */
static int open_files(struct csrc *c, const char *dir, const char *key)
{
	char path[4096], want[HEADER], have[HEADER];
	uint64_t h = fnv1a(key);
	struct stat st;
	int err = 0;
	void *p;

	if (mkdir(dir, 0700) && errno != EEXIST)
		return uffd__err(-errno, "uffd_source_cache: cannot create %s: %s", dir, uffd__errname(-errno));
	if ((err = header(want, key, c)))
		return uffd__err(err, "uffd_source_cache: the key is too long");
	snprintf(path, sizeof(path), "%s/%016" PRIx64 ".state", dir, h);
	if ((c->sfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0)
		return uffd__err(-errno, "uffd_source_cache: %s: %s", path, uffd__errname(-errno));
	c->pid = getpid();
	if (!(c->spath = strdup(path)))
		return uffd__err(-ENOMEM, "uffd_source_cache: out of memory");
	if (flock(c->sfd, LOCK_EX))
		return uffd__err(-errno, "uffd_source_cache: %s: flock: %s", path, uffd__errname(-errno));
	if (fstat(c->sfd, &st)) {
		err = -errno;
	} else if (st.st_size == 0) {	/* new: header, then the chunk bytes (zeros) */
		if (pwrite(c->sfd, want, HEADER, 0) != HEADER || ftruncate(c->sfd, (off_t)(HEADER + c->nchunks)))
			err = -errno ? -errno : -EIO;
	} else if ((uint64_t)st.st_size != HEADER + c->nchunks || pread(c->sfd, have, HEADER, 0) != HEADER ||
		   memcmp(have, want, HEADER)) {
		err = uffd__err(-EEXIST, "uffd_source_cache: %s caches another snapshot (or another chunk size); remove it or use another dir",
				path);
	}
	flock(c->sfd, LOCK_UN);
	if (err)
		return err == -EEXIST ? err : uffd__err(err, "uffd_source_cache: %s: %s", path, uffd__errname(err));
	c->map_len = HEADER + c->nchunks;
	if ((p = mmap(NULL, c->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, c->sfd, 0)) == MAP_FAILED)
		return uffd__err(-errno, "uffd_source_cache: cannot map %s: %s", path, uffd__errname(-errno));
	c->state = (unsigned char *)p + HEADER;
	snprintf(path, sizeof(path), "%s/%016" PRIx64 ".data", dir, h);
	if ((c->dfd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0 || ftruncate(c->dfd, (off_t)c->length))
		return uffd__err(-errno, "uffd_source_cache: %s: %s", path, uffd__errname(-errno));
	return 0;
}

UFFD_EXPORT int uffd_source_cache(struct uffd_source **out, struct uffd_source *inner,
				  const struct uffd_source_cache_opts *opts)
{
	struct uffd_source_cache_opts o = { .size = sizeof(o) };
	struct uffd_source_info info = { .size = sizeof(info) };
	char *key = NULL, name[256];
	struct csrc *c;
	size_t block;
	int err;

	if (!out || !inner)
		return uffd__err(-EINVAL, "uffd_source_cache: %s is NULL", out ? "inner" : "out");
	*out = NULL;
	if (opts && (err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_source_cache_opts")))
		return err;
	if (!opts || !o.dir || !*o.dir)
		return uffd__err(-EINVAL, "uffd_source_cache: opts->dir is required");
	block = uffd_source_block_size(inner);
	if (!o.chunk_size)
		o.chunk_size = block > (1u << 20) ? block : 1u << 20;
	if (o.chunk_size < 4096 || o.chunk_size > (64u << 20) || (o.chunk_size & (o.chunk_size - 1)))
		return uffd__err(-EINVAL, "uffd_source_cache: chunk_size %zu is not a power of two from 4 KiB to 64 MiB",
				 o.chunk_size);
	if (!(c = calloc(1, sizeof(*c))))
		return uffd__err(-ENOMEM, "uffd_source_cache: out of memory");
	c->dfd = c->sfd = -1;
	c->inner = uffd_source_ref(inner);
	c->chunk = o.chunk_size;
	c->length = uffd_source_length(inner);
	c->nchunks = (c->length + c->chunk - 1) / c->chunk;
	c->max_bytes = o.max_bytes ? o.max_bytes : 4ull << 30;
	if (!o.key && asprintf(&key, "%s\n%" PRIu64 "\n%s", uffd_source_name(inner), c->length,
			       uffd__remote_version(inner)) < 0)
		err = uffd__err(-ENOMEM, "uffd_source_cache: out of memory");
	else
		err = open_files(c, o.dir, o.key ? o.key : key);
	free(key);
	if (err) {
		c_free(c);
		return err;
	}
	snprintf(name, sizeof(name), "cache of %s", uffd_source_name(inner));
	info.name = name;
	info.length = c->length;
	info.block_size = c->chunk;
	info.read_depth = uffd__source_depth(inner) < FETCHES ? uffd__source_depth(inner) : FETCHES;	/* whole chunks, as the inner asks */
	if ((err = uffd_source_new(out, &cache_ops, c, &info))) {
		c_free(c);
		return err;
	}
	uffd__remote_set(*out, &cache_hooks);
	return 0;
}
UFFD_EXPORT_OWN(source_cache);
