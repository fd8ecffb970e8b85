/* SPDX-License-Identifier: MIT */
/*
 * Regions: shared memory (a new memfd, or a caller's tmpfs/hugetlbfs file)
 * mapped twice inside one PROT_NONE reservation: the base view, registered
 * with the uffd, and the alias view, never registered, through which a
 * handler writes contents without faulting into itself. Guard pages around
 * and between the views keep their VMAs from ever merging.
 *
 * Layout (P = the region's page size, huge for hugetlbfs):
 *   reservation: [slack < P][guard P][base][gap P][alias][guard P]
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "internal.h"

#define REGION_FLAGS (UFFD_REGION_HUGETLB | UFFD_REGION_NO_ALIAS)
#define MODES_ALL (UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | \
		   UFFDIO_REGISTER_MODE_MINOR)
#define MEMFD_NAME_MAX 249	/* the kernel's limit, without "memfd:" */

static uintptr_t align_up(uintptr_t x, size_t a)
{
	return (x + a - 1) & ~(uintptr_t)(a - 1);
}

static bool is_hugetlb(const struct uffd_region *r)
{
	return r->page_size > uffd__base_page_size();
}

/* fd 0 is most likely a zeroed uffd_region_opts, not the caller's intent. */
static const char *fd0_hint(int fd)
{
	return fd ? "" : " (fd 0 is what a zeroed uffd_region_opts holds: set fd to -1 for a new memfd)";
}

/* "MISSING|MINOR" for a mode set. */
static const char *modes_name(uint64_t modes, char *buf, size_t size)
{
	snprintf(buf, size, "%s%s%s",
		 (modes & UFFDIO_REGISTER_MODE_MISSING) ? "|MISSING" : "",
		 (modes & UFFDIO_REGISTER_MODE_MINOR) ? "|MINOR" : "",
		 (modes & UFFDIO_REGISTER_MODE_WP) ? "|WP" : "");
	return buf + 1;
}

/* ---- creation: options, backing file, features, views, registration ---- */

static int check_opts(const struct uffd_region_opts *o)
{
	const char *c = "uffd_region_create";

	if (!o->modes || (o->modes & ~(uint64_t)MODES_ALL))
		return uffd__err(-EINVAL, "%s: modes 0x%llx must be a non-empty mix of UFFDIO_REGISTER_MODE_MISSING, _MINOR and _WP",
				 c, (unsigned long long)o->modes);
	if (o->flags & ~REGION_FLAGS)
		return uffd__err(-EINVAL, "%s: flags 0x%x include unknown bits 0x%x", c, o->flags,
				 o->flags & ~REGION_FLAGS);
	if (!o->length || (o->length & (uffd__base_page_size() - 1)))
		return uffd__err(-EINVAL, "%s: length %zu must be a non-zero multiple of the page size %zu",
				 c, o->length, uffd__base_page_size());
	if (o->length > SIZE_MAX / 8)
		return uffd__err(-EINVAL, "%s: length %zu is too large", c, o->length);
	if (o->fd < -1)
		return uffd__err(-EINVAL, "%s: fd %d: pass -1 to create a memfd, or an open fd to map", c, o->fd);
	if (o->fd == -1 && o->fd_offset)
		return uffd__err(-EINVAL, "%s: fd_offset %llu needs a caller's fd; a new memfd starts at 0",
				 c, (unsigned long long)o->fd_offset);
	if (o->fd == -1 && o->name && strlen(o->name) > MEMFD_NAME_MAX)
		return uffd__err(-EINVAL, "%s: name is longer than %d bytes", c, MEMFD_NAME_MAX);
	return 0;
}

/* hugetlbfs: *page_size = its huge page size; shmem: the base page size. */
static int backing_kind(int fd, bool *huge, size_t *page_size)
{
	struct statfs sfs;

	if (fstatfs(fd, &sfs))
		return uffd__err(-errno, "uffd_region_create: fstatfs of fd %d failed: %s", fd,
				 strerror(errno));
	*huge = sfs.f_type == HUGETLBFS_MAGIC;
	*page_size = *huge ? (size_t)sfs.f_bsize : uffd__base_page_size();
	if (*huge || sfs.f_type == TMPFS_MAGIC)
		return 0;
	return uffd__err(-EINVAL, "uffd_region_create: fd %d is not on tmpfs or hugetlbfs (f_type 0x%lx); "
			 "userfaultfd handles shmem and hugetlbfs files only%s",
			 fd, (unsigned long)sfs.f_type, fd0_hint(fd));
}

static int check_aligned(const struct uffd_region *r)
{
	if ((r->length | r->fd_offset) & (r->page_size - 1))
		return uffd__err(-EINVAL, "uffd_region_create: length %zu and fd_offset %llu must be multiples of the %s size %zu",
				 r->length, (unsigned long long)r->fd_offset,
				 is_hugetlb(r) ? "huge page" : "page", r->page_size);
	return 0;
}

/* A caller's fd: open read-write, shmem or hugetlbfs, large enough. Never changed. */
static int inspect_fd(struct uffd_region *r, int fd, bool want_huge)
{
	const char *c = "uffd_region_create";
	bool huge;
	struct stat st;
	int fl = fcntl(fd, F_GETFL), err;

	if (fl < 0)
		return uffd__err(-EBADF, "%s: fd %d is not open", c, fd);
	if ((fl & O_ACCMODE) != O_RDWR || (fl & O_PATH))
		return uffd__err(-EACCES, "%s: fd %d is not open for reading and writing; both views are shared writable mappings%s",
				 c, fd, fd0_hint(fd));
	if ((err = backing_kind(fd, &huge, &r->page_size)))
		return err;
	if (want_huge && !huge)
		return uffd__err(-EINVAL, "%s: UFFD_REGION_HUGETLB was given but fd %d is not on hugetlbfs", c, fd);
	if ((err = check_aligned(r)))
		return err;
	if (fstat(fd, &st))
		return uffd__err(-errno, "%s: fstat of fd %d failed: %s", c, fd, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return uffd__err(-EINVAL, "%s: fd %d is not a regular file", c, fd);
	if ((uint64_t)st.st_size < r->fd_offset || (uint64_t)st.st_size - r->fd_offset < r->length)
		return uffd__err(-EINVAL, "%s: fd %d holds %lld bytes, the region needs fd_offset %llu + length %zu; ftruncate the file first",
				 c, fd, (long long)st.st_size, (unsigned long long)r->fd_offset, r->length);
	r->fd = fd;
	return 0;
}

/*
 * The kernel registers MINOR/WP on shmem and hugetlbfs whatever the fd's
 * features say; the handle's enabled set is the contract, so check it here,
 * before any mapping exists.
 */
static int check_features(const struct uffd_region *r, bool huge)
{
	uint64_t f = r->uffd->features, need;
	char mbuf[32], fbuf[128];

	need = uffd__kind_needs(huge ? VMA_HUGETLB : VMA_SHMEM, r->modes, f);
	if ((r->modes & UFFDIO_REGISTER_MODE_WP) &&
	    !(f & (UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC)))
		need |= UFFD_FEATURE_PAGEFAULT_FLAG_WP;
	if (!(need & ~f))
		return 0;
	return uffd__err(-EOPNOTSUPP, "uffd_region_create: a %s region registered for %s needs UFFD_FEATURE_%s, "
			 "missing from the handle's features; open the handle with them (in want_features, or with opts NULL)",
			 huge ? "hugetlbfs" : "shmem", modes_name(r->modes, mbuf, sizeof(mbuf)),
			 uffd__feature_list(need & ~f, fbuf, sizeof(fbuf)));
}

static int create_memfd(struct uffd_region *r, const char *name, bool huge)
{
	const char *c = "uffd_region_create";
	bool is_huge;
	int fd, err;

	fd = memfd_create(name ? name : "uffd", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
	if (fd < 0)
		return uffd__err(-errno, "%s: memfd_create%s failed: %s%s", c, huge ? "(MFD_HUGETLB)" : "",
				 strerror(errno), huge ? " (a kernel without hugetlbfs?)" : "");
	r->fd = fd;
	r->own_fd = true;
	if ((err = backing_kind(fd, &is_huge, &r->page_size)) || (err = check_aligned(r)))
		return err;
	if (ftruncate(fd, (off_t)r->length))
		return uffd__err(-errno, "%s: ftruncate of the memfd to %zu bytes failed: %s", c,
				 r->length, strerror(errno));
	return 0;
}

static int map_view(const struct uffd_region *r, uintptr_t addr, const char *which)
{
	int err;

	if (mmap((void *)addr, r->length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		 r->fd, (off_t)r->fd_offset) != MAP_FAILED)
		return 0;
	err = -errno;
	if (err == -ENOMEM && is_hugetlb(r))
		return uffd__err(err, "uffd_region_create: not enough free huge pages of %zu kB for the %s view of %zu bytes; raise vm.nr_hugepages",
				 r->page_size / 1024, which, r->length);
	return uffd__err(err, "uffd_region_create: mapping the %s view of %zu bytes failed: %s (%s)%s",
			 which, r->length, strerror(-err), uffd__errname(err),
			 err == -EPERM ? "; the file is sealed against writes" : "");
}

/* Where the base view starts in the reservation (until a REMAP moves it). */
static uintptr_t first_view(const struct uffd_region *r)
{
	return align_up((uintptr_t)r->resv, r->page_size) + r->page_size;
}

static int map_views(struct uffd_region *r)
{
	size_t views = (r->flags & UFFD_REGION_NO_ALIAS) ? 1 : 2;
	uintptr_t base;
	void *resv;
	int err;

	/* Slack for the alignment, a guard before, the gap, a guard after. */
	r->resv_len = views * r->length + 4 * r->page_size;
	resv = mmap(NULL, r->resv_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (resv == MAP_FAILED)
		return uffd__err(-ENOMEM, "uffd_region_create: cannot reserve %zu bytes of address space: %s",
				 r->resv_len, strerror(errno));
	r->resv = resv;
	base = first_view(r);
	if ((err = map_view(r, base, "base")))
		return err;
	r->base = (void *)base;
	if (views == 1)
		return 0;
	if ((err = map_view(r, base + r->length + r->page_size, "alias")))
		return err;
	r->alias = (void *)(base + r->length + r->page_size);
	return 0;
}

static int register_base(struct uffd_region *r)
{
	struct rangemap_entry e = {
		(uintptr_t)r->base, (uintptr_t)r->base + r->length, r->page_size, r,
	};
	int err;

	if ((err = uffd_register(r->uffd, r->base, r->length, r->modes, NULL)))
		return err;
	err = rangemap_insert(&r->uffd->regions, &e);
	if (err) {
		uffd_unregister(r->uffd, r->base, r->length);
		return uffd__err(err, "uffd_region_create: cannot record the region %p+%zu: %s",
				 r->base, r->length, strerror(-err));
	}
	return 0;
}

static void views_unmap(const struct uffd_region *r)
{
	uintptr_t resv = (uintptr_t)r->resv, end = resv + r->resv_len, orig;

	if (!r->resv)
		return;
	orig = first_view(r);
	if (!r->base || (uintptr_t)r->base == orig) {
		munmap(r->resv, r->resv_len);
		return;
	}
	/* A REMAP moved the base view: what is left at its old place is not ours. */
	munmap(r->resv, orig - resv);
	munmap((void *)(orig + r->length), end - orig - r->length);
	munmap(r->base, r->length);
}

/* Everything but the struct itself. */
static void region_release(struct uffd_region *r)
{
	views_unmap(r);
	if (r->own_fd)
		close(r->fd);
}

static void region_free(struct uffd_region *r)
{
	region_release(r);
	free(r);
}

UFFD_EXPORT int uffd_region_create(struct uffd *u, const struct uffd_region_opts *opts,
				   struct uffd_region **out)
{
	struct uffd_region_opts o;
	struct uffd_region *r;
	bool huge;
	int err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_region_create: out is NULL");
	*out = NULL;
	if (!u || !opts)
		return uffd__err(-EINVAL, "uffd_region_create: %s is NULL", u ? "opts" : "handle");
	if ((err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_region_opts")) ||
	    (err = check_opts(&o)))
		return err;
	r = calloc(1, sizeof(*r));
	if (!r)
		return uffd__err(-ENOMEM, "uffd_region_create: out of memory");
	*r = (struct uffd_region){ .uffd = u, .length = o.length, .modes = o.modes,
				   .flags = o.flags, .fd = -1, .fd_offset = o.fd_offset };
	huge = o.flags & UFFD_REGION_HUGETLB;
	if (o.fd >= 0 && (err = inspect_fd(r, o.fd, huge)))
		goto fail;
	huge = huge || is_hugetlb(r);
	if ((err = check_features(r, huge)) ||
	    (o.fd < 0 && (err = create_memfd(r, o.name, huge))) ||
	    (err = map_views(r)) ||
	    (err = register_base(r)))
		goto fail;
	*out = r;
	return 0;
fail:
	region_free(r);
	return err;
}
UFFD_EXPORT_OWN(region_create);

UFFD_EXPORT void uffd_region_destroy(struct uffd_region *r)
{
	struct uffdio_range range;
	bool own;

	if (!r)
		return;
	/* No SIGBUS handler or loop may find r once it is freed. */
	uffd__sigbus_forget(r);
	uffd__loop_forget_region(r);
	rangemap_remove(&r->uffd->regions, r);
	own = uffd__loop_unpin_wait(r);	/* no loop handler of r runs elsewhere */
	/*
	 * Unregister before unmapping: munmap of a registered range would wait
	 * for its UNMAP event to be read. Then wake the threads still waiting
	 * on a fault in the base view (the kernel does only for MISSING).
	 */
	range = (struct uffdio_range){ .start = (uintptr_t)r->base, .len = r->length };
	ioctl(r->uffd->fd, UFFDIO_UNREGISTER, &range);
	ioctl(r->uffd->fd, UFFDIO_WAKE, &range);
	if (own)
		region_release(r);	/* its handler is running: the loop frees r after it */
	else
		region_free(r);
}
UFFD_EXPORT_OWN(region_destroy);

/* ---- accessors ---- */

/* The loop moves the base view when it follows a REMAP event. */
static void *base_of(const struct uffd_region *r)
{
	return __atomic_load_n(&r->base, __ATOMIC_ACQUIRE);
}

UFFD_EXPORT void *uffd_region_base(const struct uffd_region *r)
{
	return r ? base_of(r) : NULL;
}
UFFD_EXPORT_OWN(region_base);

UFFD_EXPORT void *uffd_region_alias(const struct uffd_region *r)
{
	return r ? r->alias : NULL;
}
UFFD_EXPORT_OWN(region_alias);

UFFD_EXPORT size_t uffd_region_length(const struct uffd_region *r)
{
	return r ? r->length : 0;
}
UFFD_EXPORT_OWN(region_length);

UFFD_EXPORT size_t uffd_region_page_size(const struct uffd_region *r)
{
	return r ? r->page_size : 0;
}
UFFD_EXPORT_OWN(region_page_size);

UFFD_EXPORT int uffd_region_fd(const struct uffd_region *r)
{
	return r ? r->fd : uffd__err(-EINVAL, "uffd_region_fd: region is NULL");
}
UFFD_EXPORT_OWN(region_fd);

UFFD_EXPORT struct uffd *uffd_region_uffd(const struct uffd_region *r)
{
	return r ? r->uffd : NULL;
}
UFFD_EXPORT_OWN(region_uffd);

/* ---- operations on [off, off+len) ---- */

static int check_span(const struct uffd_region *r, const char *call, uint64_t off, size_t len)
{
	if (!r)
		return uffd__err(-EINVAL, "%s: region is NULL", call);
	if (!len)
		return uffd__err(-EINVAL, "%s offset 0x%llx: length is 0", call, (unsigned long long)off);
	if ((off | len) & (r->page_size - 1))
		return uffd__err(-EINVAL, "%s offset 0x%llx+%zu: offset and length must be multiples of the region's page size %zu",
				 call, (unsigned long long)off, len, r->page_size);
	if (off > r->length || len > r->length - off)
		return uffd__err(-EINVAL, "%s offset 0x%llx+%zu: outside the region of %zu bytes",
				 call, (unsigned long long)off, len, r->length);
	return 0;
}

static uintptr_t base_at(const struct uffd_region *r, uint64_t off)
{
	return (uintptr_t)base_of(r) + off;
}

/*
 * shmem: pwrite(2) copies straight into new page-cache pages. Measured on
 * Linux 6.18, x86-64, 64 KiB to 128 MiB into pages not yet in the cache:
 * pwrite 2.0-3.1 GB/s against 1.25-1.7 GB/s for MADV_POPULATE_WRITE on the
 * alias plus memcpy, which also builds (and later tears down) a page table
 * entry per page of the alias. Only overwriting pages already mapped in the
 * alias favours memcpy (9-14 GB/s against 6-14), and populating is mostly
 * about new pages.
 */
static int fill_pwrite(const struct uffd_region *r, uint64_t off, const char *src, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(r->fd, src + done, len - done, (off_t)(r->fd_offset + off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return uffd__err(n ? -errno : -EIO, "uffd_region_populate offset 0x%llx+%zu: pwrite to fd %d failed: %s",
					 (unsigned long long)(off + done), len - done, r->fd,
					 n ? strerror(errno) : "no progress");
		done += (size_t)n;
	}
	return 0;
}

/*
 * hugetlbfs has no write(2): allocate the pages with MADV_POPULATE_WRITE on
 * the alias (or a temporary view without one), then copy. With one fault
 * per 2 MiB a plain memcpy is as fast (measured within 15%), but a huge page
 * that cannot be had is then a SIGBUS in the caller instead of -ENOMEM.
 */
static int fill_mapped(const struct uffd_region *r, uint64_t off, const void *src, size_t len)
{
	char *view = r->alias ? (char *)r->alias + off : NULL;
	int err = 0;

	if (!view) {
		view = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd,
			    (off_t)(r->fd_offset + off));
		if (view == MAP_FAILED)
			return uffd__err(-errno, "uffd_region_populate offset 0x%llx+%zu: cannot map a temporary view: %s",
					 (unsigned long long)off, len, strerror(errno));
	}
	if (madvise(view, len, MADV_POPULATE_WRITE))
		err = uffd__err(-errno, "uffd_region_populate offset 0x%llx+%zu: MADV_POPULATE_WRITE failed: %s%s",
				(unsigned long long)off, len, strerror(errno),
				errno == ENOMEM ? "; raise vm.nr_hugepages" : "");
	else
		memcpy(view, src, len);
	if (!r->alias)
		munmap(view, len);
	return err;
}

/*
 * UFFD_POPULATE_MAP. MINOR regions: CONTINUE, which maps the page-cache
 * pages and wakes the MINOR waiters. Without MINOR no uffd fault can come
 * from a page that is in the cache (MISSING needs it absent, WP faults are
 * writes), so the kernel maps them itself: MADV_POPULATE_WRITE for
 * MISSING-only, MADV_POPULATE_READ with WP (a read keeps write-protect
 * markers and never raises a WP fault); then wake the threads that faulted
 * MISSING before the contents arrived.
 */
static int map_base(struct uffd_region *r, uint64_t off, size_t len, unsigned flags)
{
	uintptr_t addr = base_at(r, off);
	int advice = (r->modes & UFFDIO_REGISTER_MODE_WP) ? MADV_POPULATE_READ : MADV_POPULATE_WRITE;
	int err;

	if (r->modes & UFFDIO_REGISTER_MODE_MINOR)
		return uffd__resolve(r->uffd, UFFD_OP_CONTINUE, addr, 0, len,
				     UFFD_SKIP_EXISTING | (flags & UFFD_MAP_WP), r->page_size, NULL);
	if (madvise((void *)addr, len, advice))
		return uffd__err(-errno, "uffd_region_populate offset 0x%llx+%zu: %s on the base view failed: %s",
				 (unsigned long long)off, len, advice == MADV_POPULATE_READ ?
				 "MADV_POPULATE_READ" : "MADV_POPULATE_WRITE", strerror(errno));
	if ((flags & UFFD_MAP_WP) &&
	    (err = uffd__writeprotect(r->uffd, addr, len, true, 0, r->page_size)))
		return err;
	return uffd_wake(r->uffd, (void *)addr, len);
}

UFFD_EXPORT int uffd_region_populate(struct uffd_region *r, uint64_t off, const void *src,
				     size_t len, unsigned flags)
{
	const char *c = "uffd_region_populate";
	int err;

	if ((err = check_span(r, c, off, len)))
		return err;
	if (!src)
		return uffd__err(-EINVAL, "%s: src is NULL", c);
	if (flags & ~(UFFD_POPULATE_MAP | UFFD_MAP_WP))
		return uffd__err(-EINVAL, "%s: flags 0x%x include bits this call does not take (0x%x)",
				 c, flags, flags & ~(UFFD_POPULATE_MAP | UFFD_MAP_WP));
	if ((flags & UFFD_MAP_WP) &&
	    (!(flags & UFFD_POPULATE_MAP) || !(r->modes & UFFDIO_REGISTER_MODE_WP)))
		return uffd__err(-EINVAL, "%s: UFFD_MAP_WP needs UFFD_POPULATE_MAP and a region registered with UFFDIO_REGISTER_MODE_WP",
				 c);
	err = is_hugetlb(r) ? fill_mapped(r, off, src, len) : fill_pwrite(r, off, src, len);
	if (!err && (flags & UFFD_POPULATE_MAP))
		err = map_base(r, off, len, flags);
	return err;
}
UFFD_EXPORT_OWN(region_populate);

UFFD_EXPORT int uffd_region_continue(struct uffd_region *r, uint64_t off, size_t len,
				     unsigned flags, size_t *done)
{
	int err;

	if (done)
		*done = 0;
	if ((err = check_span(r, "uffd_region_continue", off, len)))
		return err;
	return uffd__resolve(r->uffd, UFFD_OP_CONTINUE, base_at(r, off), 0, len, flags,
			     r->page_size, done);
}
UFFD_EXPORT_OWN(region_continue);

UFFD_EXPORT int uffd_region_writeprotect(struct uffd_region *r, uint64_t off, size_t len,
					 bool protect, unsigned flags)
{
	int err;

	if ((err = check_span(r, "uffd_region_writeprotect", off, len)))
		return err;
	return uffd__writeprotect(r->uffd, base_at(r, off), len, protect, flags, r->page_size);
}
UFFD_EXPORT_OWN(region_writeprotect);

UFFD_EXPORT int uffd_region_zap(struct uffd_region *r, uint64_t off, size_t len)
{
	int err;

	if ((err = check_span(r, "uffd_region_zap", off, len)))
		return err;
	/* Shared mappings keep the page cache and the uffd-wp markers. */
	if (madvise((void *)base_at(r, off), len, MADV_DONTNEED))
		return uffd__err(-errno, "uffd_region_zap offset 0x%llx+%zu: MADV_DONTNEED on the base view failed: %s",
				 (unsigned long long)off, len, strerror(errno));
	return 0;
}
UFFD_EXPORT_OWN(region_zap);

UFFD_EXPORT int uffd_region_discard(struct uffd_region *r, uint64_t off, size_t len)
{
	int err;

	if ((err = check_span(r, "uffd_region_discard", off, len)))
		return err;
	if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)(r->fd_offset + off), (off_t)len))
		return uffd__err(-errno, "uffd_region_discard offset 0x%llx+%zu: punching a hole in fd %d failed: %s%s",
				 (unsigned long long)off, len, r->fd, strerror(errno),
				 errno == EPERM ? " (the file is sealed against writes?)" : "");
	return 0;
}
UFFD_EXPORT_OWN(region_discard);
