/* SPDX-License-Identifier: MIT */
/*
 * The file source: a regular file or block device read with the restore
 * thread's io_uring (short reads continued, end of file an error), a
 * non-blocking page-cache read for the fault handlers (RWF_NOWAIT), and
 * read-ahead hints (fadvise in the ring). A regular file's data extents are
 * found once, at creation, with SEEK_DATA/SEEK_HOLE: holes read as zeros,
 * or are "not in this layer" for a Diff snapshot.
 * The file is also mapped read-only and shared (when its offset is
 * page-aligned and mmap works on it): the engine's COPY installs take the
 * bytes from that mapping, the page cache itself, one copy per page (see
 * struct uffd__map_hooks). Pages not cached are brought in first, off the
 * restore thread: MADV_POPULATE_READ on the mapping, in the ring (an
 * io_uring worker waits on the disk). The mapping is never read from user
 * space: a file cut short under it makes the kernel's copy fail (-EFAULT),
 * never a SIGBUS.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "source-internal.h"

#define ADVISE_MAX 8	/* read-ahead hints in flight */

struct fextent {
	uint64_t start, end;	/* data, in source bytes */
};

struct fadv {
	uintptr_t op;		/* the ring op word: &advise_op */
	bool busy;
};

struct fsrc {
	int fd;
	uint64_t base;		/* the file's byte of source byte 0 */
	bool diff;		/* holes are ABSENT, not ZERO */
	bool sparse;		/* extents were found: data outside them is a hole */
	struct fextent *x;
	size_t nx, capx;
	struct uffd_source_env *env;
	struct fadv adv[ADVISE_MAX];
	char *map;		/* the file from base on, read-only, shared; NULL: none */
	size_t map_len;
	atomic_bool no_cachestat;	/* cachestat(2) is missing: nothing counts as cached */
};

/* ---- reads in the ring ---- */

/*
 * A read in flight keeps in req->priv: [0] the ring op word, [1] the
 * bytes read so far, [2] the source.
 */
static void read_complete(uintptr_t *word, int res);
static const struct uffd__ring_op read_op = { read_complete };

static struct uffd_source_req *req_of(uintptr_t *word)
{
	return (struct uffd_source_req *)((char *)word - offsetof(struct uffd_source_req, priv));
}

static int submit(struct fsrc *f, struct uffd_source_req *req)
{
	struct io_uring_sqe *sqe = uffd__env_sqe(f->env);
	size_t done = req->priv[1], left = req->len - done;

	if (!sqe)
		return -EAGAIN;
	io_uring_prep_read(sqe, f->fd, (char *)req->buf + done, left > (1u << 30) ? 1u << 30 : (unsigned)left,
			   f->base + req->off + done);
	io_uring_sqe_set_data(sqe, &req->priv[0]);
	return 0;
}

static void read_complete(uintptr_t *word, int res)
{
	struct uffd_source_req *req = req_of(word);
	struct fsrc *f = (struct fsrc *)req->priv[2];

	if (res <= 0) {
		req->done(req, res < 0 ? res : -EIO);	/* 0: the file ends before the range does */
		return;
	}
	req->priv[1] += (uintptr_t)res;
	if (req->priv[1] < req->len && submit(f, req) == 0)
		return;
	req->done(req, req->priv[1] == req->len ? 0 : -EIO);
}

static int f_read(void *impl, struct uffd_source_req *req)
{
	struct fsrc *f = impl;

	req->priv[0] = (uintptr_t)&read_op;
	req->priv[1] = 0;
	req->priv[2] = (uintptr_t)f;
	return submit(f, req);
}

static int f_read_nowait(void *impl, uint64_t off, size_t len, void *buf)
{
	struct fsrc *f = impl;
	struct iovec iov = { buf, len };
	ssize_t n = preadv2(f->fd, &iov, 1, (off_t)(f->base + off), RWF_NOWAIT);

	if (n == (ssize_t)len)
		return 0;
	if (n >= 0 || errno == EAGAIN || errno == EOPNOTSUPP)
		return -EAGAIN;	/* partly cached, or no RWF_NOWAIT here: the ring reads it */
	return -errno;
}

static void advise_complete(uintptr_t *word, int res)
{
	(void)res;	/* a hint: its failure changes nothing */
	((struct fadv *)(void *)word)->busy = false;
}
static const struct uffd__ring_op advise_op = { advise_complete };

static void f_advise(void *impl, uint64_t off, uint64_t len)
{
	struct fsrc *f = impl;
	struct io_uring_sqe *sqe;

	for (unsigned i = 0; i < ADVISE_MAX; i++) {
		if (f->adv[i].busy)
			continue;
		if (!(sqe = uffd__env_sqe(f->env)))
			return;
		io_uring_prep_fadvise(sqe, f->fd, f->base + off, (off_t)len, POSIX_FADV_WILLNEED);
		f->adv[i].op = (uintptr_t)&advise_op;
		f->adv[i].busy = true;
		io_uring_sqe_set_data(sqe, &f->adv[i].op);
		return;
	}
}

static int f_attach(void *impl, struct uffd_source_env *env)
{
	((struct fsrc *)impl)->env = env;
	return 0;
}

/* ---- extents ---- */

/* The first extent ending after off. */
static size_t find(const struct fsrc *f, uint64_t off)
{
	size_t lo = 0, hi = f->nx;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (f->x[mid].end <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int f_extent(void *impl, uint64_t off, uint64_t len, uint64_t *run)
{
	const struct fsrc *f = impl;
	size_t i;
	uint64_t end = off + len;

	*run = len;
	if (!f->sparse)
		return UFFD_EXTENT_DATA;
	i = find(f, off);
	if (i < f->nx && f->x[i].start <= off) {
		if (f->x[i].end < end)
			*run = f->x[i].end - off;
		return UFFD_EXTENT_DATA;
	}
	if (i < f->nx && f->x[i].start < end)
		*run = f->x[i].start - off;
	return f->diff ? UFFD_EXTENT_ABSENT : UFFD_EXTENT_ZERO;
}

static int add_extent(struct fsrc *f, uint64_t start, uint64_t end)
{
	if (f->nx == f->capx) {
		size_t cap = f->capx ? f->capx * 2 : 16;
		struct fextent *v = realloc(f->x, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		f->x = v;
		f->capx = cap;
	}
	f->x[f->nx++] = (struct fextent){ start, end };
	return 0;
}

/* Data ranges of [base, base+len) of the file with SEEK_DATA/SEEK_HOLE, once. */
static int scan(struct fsrc *f, uint64_t len)
{
	uint64_t pos = f->base, end = f->base + len;
	int err;

	while (pos < end) {
		off_t d = lseek(f->fd, (off_t)pos, SEEK_DATA), h;

		if (d < 0 && errno == ENXIO)
			break;	/* no data after pos */
		if (d < 0)
			return errno == EINVAL || errno == EOPNOTSUPP ? 1 : -errno;	/* no hole support: all data */
		if ((uint64_t)d >= end)
			break;
		h = lseek(f->fd, d, SEEK_HOLE);
		if (h < 0)
			return -errno;
		if ((uint64_t)h > end)
			h = (off_t)end;
		if ((err = add_extent(f, (uint64_t)d - f->base, (uint64_t)h - f->base)))
			return err;
		pos = (uint64_t)h;
	}
	f->sparse = true;
	return 0;
}

/* ---- the mapping ---- */

static const char *m_addr(void *impl, uint64_t off)
{
	return ((struct fsrc *)impl)->map + off;
}

static bool m_cached(void *impl, uint64_t off, uint64_t len)
{
	struct fsrc *f = impl;
	struct uffd__cachestat_range r = { f->base + off, len };
	struct uffd__cachestat cs = { 0 };
	long ps = sysconf(_SC_PAGESIZE);

	if (atomic_load_explicit(&f->no_cachestat, memory_order_relaxed))
		return false;
	if (syscall(__NR_cachestat, f->fd, &r, &cs, 0)) {
		if (errno == ENOSYS || errno == EPERM)	/* no cachestat (or a seccomp filter): fetch everything */
			atomic_store(&f->no_cachestat, true);
		return false;
	}
	return cs.nr_cache >= (len + (uint64_t)ps - 1) / (uint64_t)ps;
}

static void fetch_complete(uintptr_t *word, int res);
static const struct uffd__ring_op fetch_op = { fetch_complete };

/*
 * The populate is over: the pages are in. A file shorter than the mapping
 * (-EFAULT) or a bad page fails the range; any other refusal of the
 * populate (an io_uring without MADV_POPULATE_READ) leaves the COPY to
 * fault the pages in itself, correct and only slower.
 */
static void fetch_complete(uintptr_t *word, int res)
{
	struct uffd_source_req *req = req_of(word);

	req->done(req, res == -EFAULT || res == -EHWPOISON || res == -EIO || res == -ENOMEM ? -EIO : 0);
}

static int m_fetch(void *impl, struct uffd_source_req *req)
{
	struct fsrc *f = impl;
	struct io_uring_sqe *sqe;

	if (m_cached(f, req->off, req->len)) {
		req->done(req, 0);
		return 0;
	}
	if (!(sqe = uffd__env_sqe(f->env)))
		return -EAGAIN;
	req->priv[0] = (uintptr_t)&fetch_op;
	req->priv[2] = (uintptr_t)f;
	io_uring_prep_madvise(sqe, f->map + req->off, (off_t)req->len, MADV_POPULATE_READ);
	io_uring_sqe_set_data(sqe, &req->priv[0]);
	return 0;
}

static const struct uffd__map_hooks map_hooks = { .addr = m_addr, .cached = m_cached, .fetch = m_fetch };

/* Maps the file from base on, when base is page-aligned; no mapping is no error (reads then). */
static void map_file(struct fsrc *f, uint64_t len)
{
	long ps = sysconf(_SC_PAGESIZE);
	void *p;

	if (ps <= 0 || f->base % (uint64_t)ps || len > SIZE_MAX - (uint64_t)ps)
		return;
	f->map_len = (size_t)(len + (uint64_t)ps - 1) / (size_t)ps * (size_t)ps;
	p = mmap(NULL, f->map_len, PROT_READ, MAP_SHARED, f->fd, (off_t)f->base);
	f->map = p == MAP_FAILED ? NULL : p;
}

static void f_destroy(void *impl)
{
	struct fsrc *f = impl;

	if (f->map)
		munmap(f->map, f->map_len);
	close(f->fd);
	free(f->x);
	free(f);
}

/* ---- creation ---- */

static int file_size(int fd, bool *reg, uint64_t *size)
{
	struct stat st;

	if (fstat(fd, &st))
		return -errno;
	*reg = S_ISREG(st.st_mode);
	if (S_ISBLK(st.st_mode))
		return ioctl(fd, BLKGETSIZE64, size) ? -errno : 0;
	if (!*reg)
		return -EINVAL;
	*size = (uint64_t)st.st_size;
	return 0;
}

static int check(int fd, const struct uffd_source_file_opts *o, const char *name, bool *reg, uint64_t *len)
{
	const char *call = "uffd_source_file";
	uint64_t size;
	int acc, err;

	if (o->flags & ~UFFD_SOURCE_FILE_DIFF)
		return uffd__err(-EINVAL, "%s: unknown flags 0x%x", call, o->flags & ~UFFD_SOURCE_FILE_DIFF);
	if ((acc = fcntl(fd, F_GETFL)) < 0 || (acc & O_ACCMODE) == O_WRONLY)
		return uffd__err(-EBADF, "%s: %s is %s", call, name, acc < 0 ? "not open" : "not open for reading");
	if ((err = file_size(fd, reg, &size)))
		return uffd__err(err, "%s: %s is %s", call, name,
				 err == -EINVAL ? "neither a regular file nor a block device" : uffd__errname(err));
	if (o->offset > size || (o->length && o->length > size - o->offset) || size == o->offset)
		return uffd__err(-EINVAL, "%s: %s (%llu bytes) does not hold %llu bytes from offset %llu",
				 call, name, (unsigned long long)size,
				 (unsigned long long)(o->length ? o->length : 1), (unsigned long long)o->offset);
	*len = o->length ? o->length : size - o->offset;
	return 0;
}

static const struct uffd_source_ops file_ops = {
	.size = sizeof(file_ops),
	.read = f_read,
	.read_nowait = f_read_nowait,
	.extent = f_extent,
	.advise = f_advise,
	.attach = f_attach,
	.destroy = f_destroy,
};

UFFD_EXPORT int uffd_source_file(struct uffd_source **out, int fd, const struct uffd_source_file_opts *opts)
{
	struct uffd_source_file_opts o = { .size = sizeof(o) };
	struct uffd_source_info info = { .size = sizeof(info) };
	char fdname[32];
	const char *name;
	struct fsrc *f;
	uint64_t len = 0;
	bool reg = false;
	int err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_source_file: out is NULL");
	*out = NULL;
	if (opts && (err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_source_file_opts")))
		return err;
	snprintf(fdname, sizeof(fdname), "fd %d", fd);
	name = o.name ? o.name : fdname;
	if ((err = check(fd, &o, name, &reg, &len)))
		return err;
	if (!(f = calloc(1, sizeof(*f))))
		return uffd__err(-ENOMEM, "uffd_source_file: out of memory");
	f->base = o.offset;
	f->diff = o.flags & UFFD_SOURCE_FILE_DIFF;
	f->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	err = f->fd < 0 ? -errno : reg ? scan(f, len) : 0;
	if (err < 0) {
		if (f->fd >= 0)
			close(f->fd);
		free(f->x);
		free(f);
		return uffd__err(err, "uffd_source_file: %s: %s", name,
				 err == -ENOMEM ? "out of memory" : uffd__errname(err));
	}
	map_file(f, len);
	info.name = name;
	info.length = len;
	info.block_size = 4096;
	if ((err = uffd_source_new(out, &file_ops, f, &info)))
		f_destroy(f);
	else if (f->map)
		(*out)->map = &map_hooks;
	return err;
}
UFFD_EXPORT_OWN(source_file);
