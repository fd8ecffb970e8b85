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
 *
 * Foreign regions: the base view is the owner's memory, in the address
 * space of the process that opened the uffd; only its address, length and
 * page size are known here, and the alias (when the owner's file came too)
 * is the one view in the reservation. The uffd's ioctls act on the owner's
 * memory; madvise cannot, which is what zap and discard without file lack.
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

static const char *creator(const struct uffd_region *r)
{
	return r->foreign ? "uffd_region_create_foreign" : "uffd_region_create";
}

/* fd 0 is most likely a zeroed options struct, not the caller's intent. */
static const char *fd0_hint(int fd)
{
	return fd ? "" : " (fd 0 is what a zeroed options struct holds: set fd to -1 for no file of yours)";
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
static int backing_kind(const char *c, int fd, bool *huge, size_t *page_size)
{
	struct statfs sfs;

	if (fstatfs(fd, &sfs))
		return uffd__err(-errno, "%s: fstatfs of fd %d failed: %s", c, fd, strerror(errno));
	*huge = sfs.f_type == HUGETLBFS_MAGIC;
	*page_size = *huge ? (size_t)sfs.f_bsize : uffd__base_page_size();
	if (*huge || sfs.f_type == TMPFS_MAGIC)
		return 0;
	return uffd__err(-EINVAL, "%s: fd %d is not on tmpfs or hugetlbfs (f_type 0x%lx); "
			 "userfaultfd handles shmem and hugetlbfs files only%s",
			 c, fd, (unsigned long)sfs.f_type, fd0_hint(fd));
}

/* The base view's address too: a foreign region's is declared. */
static int check_aligned(const struct uffd_region *r)
{
	if (((uintptr_t)r->base | r->length | r->fd_offset) & (r->page_size - 1))
		return uffd__err(-EINVAL, "%s: %slength %zu and fd_offset %llu must be multiples of the %s size %zu",
				 creator(r), r->foreign ? "owner_addr, " : "", r->length,
				 (unsigned long long)r->fd_offset, is_hugetlb(r) ? "huge page" : "page",
				 r->page_size);
	return 0;
}

/*
 * A caller's fd: open read-write, shmem or hugetlbfs, large enough. Never
 * changed. Sets r->page_size, which must agree with a foreign region's
 * declared one (in r->page_size on entry, 0 if none).
 */
static int inspect_fd(struct uffd_region *r, int fd, bool want_huge)
{
	const char *c = creator(r);
	size_t declared = r->page_size;
	bool huge;
	struct stat st;
	int fl = fcntl(fd, F_GETFL), err;

	if (fl < 0)
		return uffd__err(-EBADF, "%s: fd %d is not open", c, fd);
	if ((fl & O_ACCMODE) != O_RDWR || (fl & O_PATH))
		return uffd__err(-EACCES, "%s: fd %d is not open for reading and writing; both views are shared writable mappings%s",
				 c, fd, fd0_hint(fd));
	if ((err = backing_kind(c, fd, &huge, &r->page_size)))
		return err;
	if (want_huge && !huge)
		return uffd__err(-EINVAL, "%s: UFFD_REGION_HUGETLB was given but fd %d is not on hugetlbfs", c, fd);
	if (declared && declared != r->page_size)
		return uffd__err(-EINVAL, "%s: page_size %zu was declared but fd %d is on a file system of %zu-byte pages",
				 c, declared, fd, r->page_size);
	if ((err = check_aligned(r)))
		return err;
	if (fstat(fd, &st))
		return uffd__err(-errno, "%s: fstat of fd %d failed: %s", c, fd, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return uffd__err(-EINVAL, "%s: fd %d is not a regular file", c, fd);
	if ((uint64_t)st.st_size < r->fd_offset || (uint64_t)st.st_size - r->fd_offset < r->length)
		return uffd__err(-EINVAL, "%s: fd %d holds %lld bytes, the region needs fd_offset %llu + length %zu; ftruncate the file first",
				 c, fd, (long long)st.st_size, (unsigned long long)r->fd_offset, r->length);
	return 0;
}

/*
 * The kernel registers MINOR/WP on shmem and hugetlbfs whatever the fd's
 * features say; the handle's enabled set is the contract, so check it here,
 * before any mapping exists. kind: VMA_ANON, VMA_SHMEM or VMA_HUGETLB.
 */
static int check_features(const struct uffd_region *r, unsigned kind)
{
	uint64_t f = r->uffd->features, need;
	char mbuf[32], fbuf[128];

	need = uffd__kind_needs(kind, r->modes, f);
	/*
	 * A foreign region was registered by its owner, which the kernel
	 * allowed: MISSING on hugetlbfs or shmem asks for no feature of the
	 * kernel (MISSING_HUGETLBFS and MISSING_SHMEM only announce support,
	 * and fdinfo reports them only when the owner asked for them, which
	 * Firecracker does not). The kind itself follows from the declared
	 * page size (is_hugetlb). MINOR and WP keep their requirements.
	 */
	if (r->foreign)
		need &= ~(uint64_t)(UFFD_FEATURE_MISSING_HUGETLBFS | UFFD_FEATURE_MISSING_SHMEM);
	if ((r->modes & UFFDIO_REGISTER_MODE_WP) &&
	    !(f & (UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC)))
		need |= UFFD_FEATURE_PAGEFAULT_FLAG_WP;
	if (!(need & ~f))
		return 0;
	return uffd__err(-EOPNOTSUPP, "%s: a%s region registered for %s needs UFFD_FEATURE_%s, "
			 "missing from the handle's features; open the handle with them (in want_features, or with opts NULL)",
			 creator(r), kind == VMA_HUGETLB ? " hugetlbfs" : kind == VMA_SHMEM ? " shmem" : "n anonymous",
			 modes_name(r->modes, mbuf, sizeof(mbuf)),
			 uffd__feature_list(need & ~f, fbuf, sizeof(fbuf)));
}

static int create_memfd(struct uffd_region *r, const char *name, bool huge)
{
	const char *c = "uffd_region_create";
	bool is_huge;
	int fd, err;

	fd = memfd_create(name ? name : "uffd", MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB : 0));
	if (fd < 0)
		return uffd__err(-errno, "%s: memfd_create%s failed: %s%s", c, huge ? "(MFD_HUGETLB)" : "",
				 strerror(errno), huge ? " (a kernel without hugetlbfs?)" : "");
	r->fd = fd;
	r->own_fd = true;
	if ((err = backing_kind(c, fd, &is_huge, &r->page_size)) || (err = check_aligned(r)))
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
		return uffd__err(err, "%s: not enough free huge pages of %zu kB for the %s view of %zu bytes; raise vm.nr_hugepages",
				 creator(r), r->page_size / 1024, which, r->length);
	return uffd__err(err, "%s: mapping the %s view of %zu bytes failed: %s (%s)%s",
			 creator(r), which, r->length, strerror(-err), uffd__errname(err),
			 err == -EPERM ? "; the file is sealed against writes" : "");
}

/* Where the base view starts in the reservation (until a REMAP moves it). */
static uintptr_t first_view(const struct uffd_region *r)
{
	return align_up((uintptr_t)r->resv, r->page_size) + r->page_size;
}

/* The base view (not for a foreign region), then the alias (unless NO_ALIAS). */
static int map_views(struct uffd_region *r)
{
	bool base = !r->foreign, alias = !(r->flags & UFFD_REGION_NO_ALIAS);
	uintptr_t at;
	void *resv;
	int err;

	if (!base && !alias)
		return 0;
	/* Slack for the alignment, a guard before, the gap, a guard after. */
	r->resv_len = (base + alias) * r->length + 4 * r->page_size;
	resv = mmap(NULL, r->resv_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (resv == MAP_FAILED)
		return uffd__err(-ENOMEM, "%s: cannot reserve %zu bytes of address space: %s",
				 creator(r), r->resv_len, strerror(errno));
	r->resv = resv;
	at = first_view(r);
	if (base) {
		if ((err = map_view(r, at, "base")))
			return err;
		r->base = (void *)at;
		at += r->length + r->page_size;
	}
	if (alias) {
		if ((err = map_view(r, at, "alias")))
			return err;
		r->alias = (void *)at;
	}
	return 0;
}

/* Into the handle's map, where fault decoding and page-size lookups find it. */
static int record(struct uffd_region *r)
{
	struct rangemap_entry e = {
		(uintptr_t)r->base, (uintptr_t)r->base + r->length, r->page_size, r, 0,
	};
	int err = rangemap_insert(&r->uffd->regions, &e);

	/* A loop thread moves the entries on a REMAP without allocating. */
	if (!err)
		err = rangemap_reserve(&r->uffd->regions, RANGEMAP_SHIFT_EXTRA);

	if (err == -EEXIST)
		return uffd__err(err, "%s: the range %p+%zu overlaps a region the handle already has%s",
				 creator(r), r->base, r->length,
				 r->foreign ? "; destroy that region first, or declare the owner's memory once" : "");
	if (err)
		return uffd__err(err, "%s: cannot record the region %p+%zu: %s",
				 creator(r), r->base, r->length, strerror(-err));
	return 0;
}

static int register_base(struct uffd_region *r)
{
	int err;

	if ((err = uffd_register(r->uffd, r->base, r->length, r->modes, NULL)))
		return err;
	if ((err = record(r)))
		uffd_unregister(r->uffd, r->base, r->length);
	return err;
}

static void views_unmap(const struct uffd_region *r)
{
	uintptr_t resv = (uintptr_t)r->resv, end = resv + r->resv_len, orig;

	if (!r->resv)
		return;
	orig = first_view(r);
	if (!r->base || r->foreign || ((uintptr_t)r->base == orig && !r->split)) {
		munmap(r->resv, r->resv_len);
		return;
	}
	/* A REMAP moved the base view or parts of it: what is left at its old place is not ours. */
	munmap(r->resv, orig - resv);
	munmap((void *)(orig + r->length), end - orig - r->length);
	if (!r->split)
		munmap(r->base, r->length);
	for (size_t i = 0; i < r->npieces; i++)
		munmap((void *)r->pieces[i].start, r->pieces[i].end - r->pieces[i].start);
}

/* Everything but the struct itself. */
static void region_release(struct uffd_region *r)
{
	views_unmap(r);
	free(r->pieces);
	r->pieces = NULL;
	r->npieces = 0;
	if (r->own_fd)
		close(r->fd);
	uffd__region_pagestate_free(r);
	uffd__region_wp_free(r);
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
	r->fd = o.fd;
	huge = huge || is_hugetlb(r);
	if ((err = check_features(r, huge ? VMA_HUGETLB : VMA_SHMEM)) ||
	    (o.fd < 0 && (err = create_memfd(r, o.name, huge))) ||
	    (err = uffd__region_wp_alloc(r)) ||
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

/* ---- foreign regions ---- */

int uffd__foreign_check(const struct uffd_foreign_opts *o, const char *c)
{
	size_t base = uffd__base_page_size(), ps = o->page_size ? o->page_size : base;

	if (!o->modes || (o->modes & ~(uint64_t)MODES_ALL))
		return uffd__err(-EINVAL, "%s: modes 0x%llx must be the non-empty mix of UFFDIO_REGISTER_MODE_MISSING, _MINOR and _WP the owner registered the range with",
				 c, (unsigned long long)o->modes);
	if (o->flags & ~UFFD_REGION_NO_ALIAS)
		return uffd__err(-EINVAL, "%s: flags 0x%x include bits other than UFFD_REGION_NO_ALIAS", c, o->flags);
	if ((ps & (ps - 1)) || ps < base)
		return uffd__err(-EINVAL, "%s: page_size %zu must be a power of two and at least the base page size %zu (0 for the base page)",
				 c, ps, base);
	if (!o->owner_addr)
		return uffd__err(-EINVAL, "%s: owner_addr is 0; pass where the memory starts in the owner's address space", c);
	if (!o->length || ((o->owner_addr | o->length | o->fd_offset) & (ps - 1)))
		return uffd__err(-EINVAL, "%s: owner_addr 0x%llx, length %zu and fd_offset %llu must be multiples of the page size %zu, length not 0",
				 c, (unsigned long long)o->owner_addr, o->length,
				 (unsigned long long)o->fd_offset, ps);
	if (o->owner_addr > UINTPTR_MAX || o->length > UINTPTR_MAX - o->owner_addr || o->length > SIZE_MAX / 8)
		return uffd__err(-EINVAL, "%s: owner range 0x%llx+%zu wraps around the address space",
				 c, (unsigned long long)o->owner_addr, o->length);
	if (o->fd < -1)
		return uffd__err(-EINVAL, "%s: fd %d: pass -1, or the owner's backing file", c, o->fd);
	if (o->fd == -1 && o->fd_offset)
		return uffd__err(-EINVAL, "%s: fd_offset %llu without a backing fd", c,
				 (unsigned long long)o->fd_offset);
	return 0;
}

/* The owner's file, checked as a local region's; the region keeps a dup. */
static int adopt_fd(struct uffd_region *r, int fd)
{
	int err = inspect_fd(r, fd, false);

	if (err)
		return err;
	r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (r->fd < 0)
		return uffd__err(-errno, "%s: duplicating fd %d failed: %s", creator(r), fd, strerror(errno));
	r->own_fd = true;
	return 0;
}

/* Without a file, base pages with MINOR can only be shmem; else assume anonymous. */
static unsigned foreign_kind(const struct uffd_region *r)
{
	if (is_hugetlb(r))
		return VMA_HUGETLB;
	return r->fd >= 0 || (r->modes & UFFDIO_REGISTER_MODE_MINOR) ? VMA_SHMEM : VMA_ANON;
}

UFFD_EXPORT int uffd_region_create_foreign(struct uffd *u, const struct uffd_foreign_opts *opts,
					   struct uffd_region **out)
{
	const char *c = "uffd_region_create_foreign";
	struct uffd_foreign_opts o;
	struct uffd_region *r;
	int err = 0;

	if (!out)
		return uffd__err(-EINVAL, "%s: out is NULL", c);
	*out = NULL;
	if (!u || !opts)
		return uffd__err(-EINVAL, "%s: %s is NULL", c, u ? "opts" : "handle");
	if ((err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_foreign_opts")) ||
	    (err = uffd__foreign_check(&o, c)))
		return err;
	r = calloc(1, sizeof(*r));
	if (!r)
		return uffd__err(-ENOMEM, "%s: out of memory", c);
	*r = (struct uffd_region){ .uffd = u, .base = (void *)(uintptr_t)o.owner_addr,
				   .length = o.length, .page_size = o.page_size, .modes = o.modes,
				   .flags = o.flags, .fd = -1, .fd_offset = o.fd_offset, .foreign = true };
	if (o.fd >= 0)
		err = adopt_fd(r, o.fd);
	else if (!r->page_size)
		r->page_size = uffd__base_page_size();
	if (err || (err = check_features(r, foreign_kind(r))) ||
	    (r->fd >= 0 && (err = map_views(r))) || (err = record(r)))
		goto fail;
	*out = r;
	return 0;
fail:
	region_free(r);
	return err;
}
UFFD_EXPORT_OWN(region_create_foreign);

/*
 * The parts of a split region, for destroy to unregister and unmap. Out of
 * memory, the parts are left mapped (and registered): a leak, not a fault
 * that hangs.
 */
static void collect_pieces(struct uffd_region *r)
{
	struct rangemap_entry e;
	size_t n = 0;

	for (uintptr_t a = 0; rangemap_next(&r->uffd->regions, a, &e); a = e.end)
		n += e.ptr == r;
	r->pieces = calloc(n ? n : 1, sizeof(*r->pieces));
	if (!r->pieces)
		return;
	for (uintptr_t a = 0; r->npieces < n && rangemap_next(&r->uffd->regions, a, &e); a = e.end)
		if (e.ptr == r)
			r->pieces[r->npieces++] = e;
}

UFFD_EXPORT void uffd_region_destroy(struct uffd_region *r)
{
	struct uffdio_range range;
	bool own;

	if (!r)
		return;
	/* No SIGBUS handler or loop may find r once it is freed. */
	uffd__sigbus_forget(r);
	if (__atomic_load_n(&r->loop, __ATOMIC_ACQUIRE))
		r->leave_loop(r);	/* set before loop, never cleared */
	if (__atomic_load_n(&r->split, __ATOMIC_ACQUIRE))
		collect_pieces(r);
	while (!rangemap_remove(&r->uffd->regions, r))
		;	/* every part */
	own = uffd__region_unpin_wait(r);	/* no loop handler of r runs elsewhere */
	/* The owner registered a foreign region and keeps it registered. */
	for (size_t i = 0; !r->foreign && i < (r->split ? r->npieces : 1); i++) {
		/*
		 * Unregister before unmapping: munmap of a registered range would
		 * wait for its UNMAP event to be read. Then wake the threads still
		 * waiting on a fault in the base view (the kernel does only for
		 * MISSING).
		 */
		range = (struct uffdio_range){ .start = (uintptr_t)r->base, .len = r->length };
		if (r->split)
			range = (struct uffdio_range){ .start = r->pieces[i].start,
						       .len = r->pieces[i].end - r->pieces[i].start };
		ioctl(r->uffd->fd, UFFDIO_UNREGISTER, &range);
		ioctl(r->uffd->fd, UFFDIO_WAKE, &range);
	}
	if (own)
		region_release(r);	/* its handler is running: the loop frees r after it */
	else
		region_free(r);
}
UFFD_EXPORT_OWN(region_destroy);

/* ---- following REMAP events ---- */

int uffd__regions_moved(struct uffd *u, uintptr_t from, uintptr_t to, size_t len, bool prealloc)
{
	struct rangemap_entry e;
	unsigned t;
	int err;

	if (!len || from + len < from || to + len < to)	/* a malformed message */
		return 0;
	err = prealloc ? rangemap_shift_prealloc(&u->regions, from, to, len)
		       : rangemap_shift(&u->regions, from, to, len);
	if (err)
		return err;
	/* What lies at the new place came from the old: base views and splits follow. */
	t = rangemap_read_begin(&u->regions);
	for (uintptr_t a = to; rangemap_next(&u->regions, a, &e) && e.start < to + len; a = e.end) {
		struct uffd_region *r = e.ptr;

		if (!e.off)
			__atomic_store_n(&r->base, (void *)e.start, __ATOMIC_RELEASE);
		if (e.off || e.end - e.start != r->length)
			__atomic_store_n(&r->split, true, __ATOMIC_RELEASE);
	}
	rangemap_read_end(&u->regions, t);
	if (!prealloc)
		rangemap_reserve(&u->regions, RANGEMAP_SHIFT_EXTRA);
	return 0;
}

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
	if (!r)
		return uffd__err(-EINVAL, "uffd_region_fd: region is NULL");
	if (r->fd < 0)
		return uffd__err(-EBADF, "uffd_region_fd: the foreign region at owner address %p was declared without a backing fd",
				 r->base);
	return r->fd;
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

/*
 * Where [off, off+len) of the base view starts (*addr) and how many of its
 * bytes lie there in one piece: all of them unless a REMAP moved a part of
 * the region away (then its parts are looked up in the handle's map, and
 * 0 says that another mremap moved something over the part holding off).
 */
static size_t piece_at(const struct uffd_region *r, uint64_t off, size_t len, uintptr_t *addr)
{
	struct rangemap_entry e;

	*addr = (uintptr_t)base_of(r) + off;
	if (!__atomic_load_n(&r->split, __ATOMIC_ACQUIRE))
		return len;
	for (uintptr_t a = 0; rangemap_next(&r->uffd->regions, a, &e); a = e.end) {
		uint64_t n = e.end - e.start;

		if (e.ptr == r && off >= e.off && off - e.off < n) {
			*addr = e.start + (off - e.off);
			return len < e.off + n - off ? len : (size_t)(e.off + n - off);
		}
	}
	return 0;
}

typedef int (*piece_fn)(struct uffd_region *r, uintptr_t addr, uint64_t off, size_t len, void *ctx);

/* fn over each piece of [off, off+len), in offset order, until one fails. */
static int each_piece(struct uffd_region *r, const char *call, uint64_t off, size_t len,
		      piece_fn fn, void *ctx)
{
	int err = 0;

	while (len && !err) {
		uintptr_t addr;
		size_t n = piece_at(r, off, len, &addr);

		if (!n)	/* never act on whatever is mapped where it was */
			return uffd__err(-ENOENT, "%s offset 0x%llx: that part of the region's base view was moved "
					 "away by mremap and another mapping moved over it; the pages are gone",
					 call, (unsigned long long)off);
		err = fn(r, addr, off, n, ctx);
		off += n;
		len -= n;
	}
	return err;
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
 * MISSING before the contents arrived. A foreign base view cannot be
 * madvised from here: the owner's next touch maps the page itself, and
 * UFFD_MAP_WP leaves write-protect markers on the unmapped entries.
 */
static int map_piece(struct uffd_region *r, uintptr_t addr, uint64_t off, size_t len, void *ctx)
{
	unsigned flags = *(unsigned *)ctx;
	int advice = (r->modes & UFFDIO_REGISTER_MODE_WP) ? MADV_POPULATE_READ : MADV_POPULATE_WRITE;
	int err;

	if (r->modes & UFFDIO_REGISTER_MODE_MINOR)
		return uffd__resolve(r->uffd, UFFD_OP_CONTINUE, addr, 0, len,
				     UFFD_SKIP_EXISTING | (flags & UFFD_MAP_WP), r->page_size, NULL);
	if (!r->foreign && madvise((void *)addr, len, advice))
		return uffd__err(-errno, "uffd_region_populate offset 0x%llx+%zu: %s on the base view failed: %s",
				 (unsigned long long)off, len, advice == MADV_POPULATE_READ ?
				 "MADV_POPULATE_READ" : "MADV_POPULATE_WRITE", strerror(errno));
	if ((flags & UFFD_MAP_WP) &&
	    (err = uffd__writeprotect(r->uffd, addr, len, true, 0, r->page_size)))
		return err;
	return uffd_wake(r->uffd, (void *)addr, len);
}

static int map_base(struct uffd_region *r, uint64_t off, size_t len, unsigned flags)
{
	return each_piece(r, "uffd_region_populate", off, len, map_piece, &flags);
}

struct copy_ctx {
	const char *src;	/* of offset 0 */
	unsigned flags;
};

static int copy_piece(struct uffd_region *r, uintptr_t addr, uint64_t off, size_t len, void *ctx)
{
	const struct copy_ctx *c = ctx;

	return uffd__resolve(r->uffd, UFFD_OP_COPY, addr, (uintptr_t)(c->src + off), len,
			     c->flags & UFFD_MAP_WP, r->page_size, NULL);
}

/* A foreign region without file: UFFDIO_COPY into the owner's missing pages. */
static int populate_copy(struct uffd_region *r, uint64_t off, const void *src, size_t len,
			 unsigned flags)
{
	struct copy_ctx c = { (const char *)src - off, flags };
	int err = each_piece(r, "uffd_region_populate", off, len, copy_piece, &c);

	if (err == -EEXIST)
		return uffd__err(err, "uffd_region_populate offset 0x%llx+%zu: a page is already mapped in the owner; "
				 "without the owner's backing fd only missing pages can be filled (UFFDIO_COPY): "
				 "declare the region with its memfd to rewrite contents",
				 (unsigned long long)off, len);
	return err;
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
	if (r->fd < 0)
		return populate_copy(r, off, src, len, flags);
	err = is_hugetlb(r) ? fill_mapped(r, off, src, len) : fill_pwrite(r, off, src, len);
	if (!err && (flags & UFFD_POPULATE_MAP))
		err = map_base(r, off, len, flags);
	return err;
}
UFFD_EXPORT_OWN(region_populate);

struct continue_ctx {
	unsigned flags;
	size_t done;
};

static int continue_piece(struct uffd_region *r, uintptr_t addr, uint64_t off, size_t len, void *ctx)
{
	struct continue_ctx *c = ctx;
	size_t d = 0;
	int err = uffd__resolve(r->uffd, UFFD_OP_CONTINUE, addr, 0, len, c->flags, r->page_size, &d);

	(void)off;
	c->done += d;
	return err;
}

UFFD_EXPORT int uffd_region_continue(struct uffd_region *r, uint64_t off, size_t len,
				     unsigned flags, size_t *done)
{
	struct continue_ctx c = { flags, 0 };
	int err;

	if (done)
		*done = 0;
	if ((err = check_span(r, "uffd_region_continue", off, len)))
		return err;
	err = each_piece(r, "uffd_region_continue", off, len, continue_piece, &c);
	if (done)
		*done = c.done;
	return err;
}
UFFD_EXPORT_OWN(region_continue);

struct wp_ctx {
	bool protect;
	unsigned flags;
};

static int wp_piece(struct uffd_region *r, uintptr_t addr, uint64_t off, size_t len, void *ctx)
{
	const struct wp_ctx *c = ctx;

	(void)off;
	return uffd__writeprotect(r->uffd, addr, len, c->protect, c->flags, r->page_size);
}

UFFD_EXPORT int uffd_region_writeprotect(struct uffd_region *r, uint64_t off, size_t len,
					 bool protect, unsigned flags)
{
	int err;

	if ((err = check_span(r, "uffd_region_writeprotect", off, len)))
		return err;
	return each_piece(r, "uffd_region_writeprotect", off, len, wp_piece, &(struct wp_ctx){ protect, flags });
}
UFFD_EXPORT_OWN(region_writeprotect);

static int zap_piece(struct uffd_region *r, uintptr_t addr, uint64_t off, size_t len, void *ctx)
{
	(void)r;
	(void)ctx;
	if (madvise((void *)addr, len, MADV_DONTNEED))
		return uffd__err(-errno, "uffd_region_zap offset 0x%llx+%zu: MADV_DONTNEED on the base view failed: %s",
				 (unsigned long long)off, len, strerror(errno));
	return 0;
}

UFFD_EXPORT int uffd_region_zap(struct uffd_region *r, uint64_t off, size_t len)
{
	int err;

	if ((err = check_span(r, "uffd_region_zap", off, len)))
		return err;
	if (r->foreign)
		return uffd__err(-EOPNOTSUPP, "uffd_region_zap offset 0x%llx+%zu: the base view of a foreign region is in the owner's address space, "
				 "which madvise cannot reach from here; the owner must MADV_DONTNEED it, or discard the pages",
				 (unsigned long long)off, len);
	/* Shared mappings keep the page cache and the uffd-wp markers. */
	return each_piece(r, "uffd_region_zap", off, len, zap_piece, NULL);
}
UFFD_EXPORT_OWN(region_zap);

UFFD_EXPORT int uffd_region_discard(struct uffd_region *r, uint64_t off, size_t len)
{
	int err;

	if ((err = check_span(r, "uffd_region_discard", off, len)))
		return err;
	if (r->fd < 0)
		return uffd__err(-EOPNOTSUPP, "uffd_region_discard offset 0x%llx+%zu: the foreign region was declared without the owner's backing fd, "
				 "so its pages can only be freed by the owner (MADV_DONTNEED, MADV_REMOVE); declare it with the fd to punch holes",
				 (unsigned long long)off, len);
	if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)(r->fd_offset + off), (off_t)len))
		return uffd__err(-errno, "uffd_region_discard offset 0x%llx+%zu: punching a hole in fd %d failed: %s%s",
				 (unsigned long long)off, len, r->fd, strerror(errno),
				 errno == EPERM ? " (the file is sealed against writes?)" : "");
	return 0;
}
UFFD_EXPORT_OWN(region_discard);
