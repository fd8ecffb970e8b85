/* SPDX-License-Identifier: MIT */
/*
 * Registration and the resolving ioctls: argument checks before any
 * syscall, partial progress continued, EEXIST stepped over on request,
 * and an error sentence that says what to do.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MODES_ALL (UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | \
		   UFFDIO_REGISTER_MODE_MINOR)

struct op_info {
	const char *ioctl;	/* "UFFDIO_COPY" */
	const char *call;	/* "uffd_copy" */
	unsigned flags;		/* UFFD_* flags the call takes */
	uint64_t feature;	/* feature the handle must have, or 0 */
	bool has_src;
};

static const struct op_info op_info[] = {
	[UFFD_OP_CONTINUE] = { "UFFDIO_CONTINUE", "uffd_continue_range",
			       UFFD_DONTWAKE | UFFD_MAP_WP | UFFD_SKIP_EXISTING, 0, false },
	[UFFD_OP_COPY]     = { "UFFDIO_COPY", "uffd_copy",
			       UFFD_DONTWAKE | UFFD_MAP_WP | UFFD_SKIP_EXISTING, 0, true },
	[UFFD_OP_ZEROPAGE] = { "UFFDIO_ZEROPAGE", "uffd_zeropage",
			       UFFD_DONTWAKE | UFFD_SKIP_EXISTING, 0, false },
	[UFFD_OP_MOVE]     = { "UFFDIO_MOVE", "uffd_move",
			       UFFD_DONTWAKE | UFFD_SKIP_EXISTING | UFFD_ALLOW_SRC_HOLES,
			       UFFD_FEATURE_MOVE, true },
	[UFFD_OP_POISON]   = { "UFFDIO_POISON", "uffd_poison",
			       UFFD_DONTWAKE | UFFD_SKIP_EXISTING, UFFD_FEATURE_POISON, false },
};

/* ---- single ioctls, async-signal-safe ---- */

int uffd__op_ioctl(int fd, enum uffd_op op, uint64_t dst, uint64_t src,
		   uint64_t len, uint64_t mode, int64_t *count)
{
	union {
		struct uffdio_continue c;
		struct uffdio_copy cp;
		struct uffdio_zeropage z;
		struct uffdio_move mv;
		struct uffdio_poison p;
	} a;
	struct uffdio_range range = { .start = dst, .len = len };
	int r = -1;

	memset(&a, 0, sizeof(a));
	switch (op) {
	case UFFD_OP_CONTINUE:
		a.c.range = range;
		a.c.mode = mode;
		r = ioctl(fd, UFFDIO_CONTINUE, &a.c);
		*count = a.c.mapped;
		break;
	case UFFD_OP_COPY:
		a.cp = (struct uffdio_copy){ .dst = dst, .src = src, .len = len, .mode = mode };
		r = ioctl(fd, UFFDIO_COPY, &a.cp);
		*count = a.cp.copy;
		break;
	case UFFD_OP_ZEROPAGE:
		a.z.range = range;
		a.z.mode = mode;
		r = ioctl(fd, UFFDIO_ZEROPAGE, &a.z);
		*count = a.z.zeropage;
		break;
	case UFFD_OP_MOVE:
		a.mv = (struct uffdio_move){ .dst = dst, .src = src, .len = len, .mode = mode };
		r = ioctl(fd, UFFDIO_MOVE, &a.mv);
		*count = a.mv.move;
		break;
	case UFFD_OP_POISON:
		a.p.range = range;
		a.p.mode = mode;
		r = ioctl(fd, UFFDIO_POISON, &a.p);
		*count = a.p.updated;
		break;
	}
	return r ? -errno : 0;
}

int uffd__wp_ioctl(int fd, uint64_t start, uint64_t len, bool protect,
		   bool dontwake)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = len },
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP
				: dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0,
	};

	return ioctl(fd, UFFDIO_WRITEPROTECT, &wp) ? -errno : 0;
}

static int range_ioctl(int fd, unsigned long req, uintptr_t addr, size_t len)
{
	struct uffdio_range range = { .start = addr, .len = len };

	return ioctl(fd, req, &range) ? -errno : 0;
}

/* ---- argument checks ---- */

int uffd__check_range(const char *what, uintptr_t addr, size_t len,
		      size_t page_size)
{
	if (!len)
		return uffd__err(-EINVAL, "%s 0x%lx: length is 0", what, (unsigned long)addr);
	if ((addr | len) & (page_size - 1))
		return uffd__err(-EINVAL, "%s 0x%lx+%zu: address and length must be multiples of the page size %zu",
				 what, (unsigned long)addr, len, page_size);
	if (addr + len < addr)
		return uffd__err(-EINVAL, "%s 0x%lx+%zu: the range wraps around the address space",
				 what, (unsigned long)addr, len);
	return 0;
}

static int check_handle(const struct uffd *u, const char *call)
{
	return u ? 0 : uffd__err(-EINVAL, "%s: handle is NULL", call);
}

static int check_flags(const char *call, unsigned flags, unsigned allowed)
{
	if (flags & ~allowed)
		return uffd__err(-EINVAL, "%s: flags 0x%x include bits this call does not take (0x%x)",
				 call, flags, flags & ~allowed);
	return 0;
}

static int need_feature(const struct uffd *u, const char *call, uint64_t feature)
{
	if (!feature || (u->features & feature))
		return 0;
	return uffd__err(-EOPNOTSUPP, "%s: the handle was opened without UFFD_FEATURE_%s; open it with that feature",
			 call, uffd_feature_name(feature));
}

static int check_resolve(const struct uffd *u, const struct op_info *oi,
			 uintptr_t dst, uintptr_t src, size_t len,
			 unsigned flags, size_t ps)
{
	int err;

	if ((err = check_handle(u, oi->call)) ||
	    (err = check_flags(oi->call, flags, oi->flags)) ||
	    (err = need_feature(u, oi->call, oi->feature)) ||
	    (err = uffd__check_range(oi->ioctl, dst, len, ps)))
		return err;
	if (!oi->has_src)
		return 0;
	if (!src)
		return uffd__err(-EINVAL, "%s: src is NULL", oi->call);
	/* MOVE moves whole pages; COPY reads any bytes (the kernel allows an
	 * unaligned source), so only wrap-around is checked there. */
	if (oi == &op_info[UFFD_OP_MOVE])
		return uffd__check_range(oi->ioctl, src, len, ps);
	if (src + len < src)
		return uffd__err(-EINVAL, "%s: source 0x%lx+%zu wraps around the address space",
				 oi->call, (unsigned long)src, len);
	return 0;
}

/* ---- error sentences ---- */

/* strerror() is not async-signal-safe (locale); the untranslated text is. */
static const char *errtext(int err)
{
	const char *text = strerrordesc_np(-err);

	return text ? text : "unknown error";
}

/* Any thread, any setting: what to do about -EAGAIN. */
#define EAGAIN_HINT "a non-cooperative event (fork, mremap, madvise, munmap) must be read first: " \
	"inside a loop handler or a SIGBUS-mode function, return UFFD_RETRY; without a loop, " \
	"read the pending events (uffd_read_events) and retry"

static const char *op_hint(enum uffd_op op, int err, unsigned flags)
{
	switch (err) {
	case -EFAULT:
		if (op == UFFD_OP_CONTINUE)
			return "no page in the page cache; write the page through the alias view first";
		if (op == UFFD_OP_COPY)
			return "the source cannot be read, or the destination lies beyond the end of its file";
		return "the range lies beyond the end of its file";
	case -EEXIST:
		return "a page is already mapped; pass UFFD_SKIP_EXISTING to step over mapped pages";
	case -EAGAIN:
		return EAGAIN_HINT " from *done";
	case -ENOENT:
		if (op == UFFD_OP_MOVE && !(flags & UFFD_ALLOW_SRC_HOLES))
			return "the source has a hole (pass UFFD_ALLOW_SRC_HOLES), or there is no mapping at the source or "
			       "destination; the threads waiting on the rest of the range were woken";
		return "the range is no longer mapped or registered (unmapped, moved or unregistered); "
		       "the threads waiting on the rest of the range were woken and fault again";
	case -EINVAL:
		if (flags & UFFD_MAP_WP)
			return "UFFD_MAP_WP needs the range registered with UFFDIO_REGISTER_MODE_WP";
		if (op == UFFD_OP_ZEROPAGE)
			return "hugetlbfs has no zero page (copy a zeroed huge page), or the range is not registered";
		if (op == UFFD_OP_MOVE)
			return "only private anonymous memory of this process, registered with this handle, can be moved";
		if (op == UFFD_OP_CONTINUE)
			return "CONTINUE works on shmem or hugetlbfs memory (not anonymous) registered with this handle, "
			       "aligned to its page size";
		return "the range is not registered with this handle or not aligned to its huge page size";
	case -EBUSY:
		return "a source page is shared with another process; mark the source MADV_DONTFORK";
	case -ESRCH:
		return "the process owning the memory has exited";
	case -EBADF:
		return "the handle's fd is closed; close a handle only with uffd_close(), after "
		       "uffd_loop_remove() if a loop watches it";
	case -EIO:
		return "the page is hardware-poisoned";
	case -ENOMEM:
		return "out of memory";
	default:
		return errtext(err);
	}
}

static int op_error(const struct op_info *oi, enum uffd_op op, int err,
		    uintptr_t addr, size_t len, unsigned flags)
{
	return uffd__err(err, "%s 0x%lx+%zu: %s (%s)", oi->ioctl, (unsigned long)addr,
			 len, op_hint(op, err, flags), uffd__errname(err));
}

/* ---- the resolving loop ---- */

static uint64_t op_mode(enum uffd_op op, unsigned flags)
{
	uint64_t mode = (flags & UFFD_DONTWAKE) ? 1 : 0; /* *_MODE_DONTWAKE is bit 0 in all */

	if ((op == UFFD_OP_COPY || op == UFFD_OP_CONTINUE) && (flags & UFFD_MAP_WP))
		mode |= UFFDIO_COPY_MODE_WP; /* == UFFDIO_CONTINUE_MODE_WP */
	if (op == UFFD_OP_MOVE && (flags & UFFD_ALLOW_SRC_HOLES))
		mode |= UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES;
	return mode;
}

size_t uffd__page_size_at(struct uffd *u, uintptr_t addr)
{
	struct rangemap_entry e;
	bool found;
	size_t ps;

	if (rangemap_find(&u->regions, addr, &e))
		return e.page_size;
	found = rangemap_find(&u->ranges, addr, &e);
	if (found && e.page_size)
		return e.page_size;
	if (!found && !u->ranges_unknown)
		return u->page_size;
	ps = uffd__vma_page_size(addr);	/* not recorded: look at the mapping */
	return ps ? ps : u->page_size;
}

/*
 * The range is gone (-ENOENT: unmapped, moved or unregistered while its
 * faults waited): wake the threads still asleep on it, whatever the
 * flags, so that they fault again outside the registration instead of
 * sleeping until the process exits. No thread sleeps there: a no-op.
 */
static void wake_gone(struct uffd *u, uintptr_t addr, size_t len)
{
	range_ioctl(u->fd, UFFDIO_WAKE, addr, len);
}

/* Pages stepped over with UFFD_SKIP_EXISTING, woken once per run. */
struct skipped {
	uintptr_t start, end;
};

static void skipped_flush(struct uffd *u, struct skipped *s, unsigned flags)
{
	if (s->end > s->start && !(flags & UFFD_DONTWAKE))
		range_ioctl(u->fd, UFFDIO_WAKE, s->start, s->end - s->start);
	s->start = s->end = 0;
}

static void skipped_add(struct uffd *u, struct skipped *s, uintptr_t addr,
			size_t len, unsigned flags)
{
	if (s->end != addr)
		skipped_flush(u, s, flags);
	if (s->end == s->start)
		s->start = addr;
	s->end = addr + len;
}

/* The kernel has no zero page for hugetlb (EINVAL): say what to do instead. */
static int refuse_hugetlb_zeropage(struct uffd *u, uintptr_t dst, size_t len)
{
	struct rangemap_entry e;

	if (!rangemap_find(&u->regions, dst, &e) || e.page_size <= u->page_size)
		return 0;
	return uffd__err(-EINVAL, "UFFDIO_ZEROPAGE 0x%lx+%zu: hugetlbfs has no zero page; copy a zeroed huge page with uffd_copy",
			 (unsigned long)dst, len);
}

int uffd__wp_keep(struct uffd *u, uintptr_t addr, size_t len)
{
	uintptr_t end = addr + len;
	size_t n;
	int err;

	while (uffd__wp_next(u, &addr, end, &n)) {
		if ((err = uffd__wp_ioctl(u->fd, addr, n, true, false)))
			return err;
		addr += n;
	}
	return 0;
}

/*
 * Progress over [addr, addr+len): mapped write-protected (recorded before
 * the ioctl), or writable, which the caller's own call meant: recorded
 * unprotected. A default resolution (UFFD__DEFAULT) keeps the record itself.
 */
static void mapped(struct uffd *u, uintptr_t addr, size_t len, unsigned flags)
{
	if (!(flags & (UFFD_MAP_WP | UFFD__DEFAULT)))
		uffd__wp_record(u, addr, len, false);
}

int uffd__resolve(struct uffd *u, enum uffd_op op, uintptr_t dst,
		  uintptr_t src, size_t len, unsigned flags, size_t page_size,
		  size_t *done)
{
	const struct op_info *oi = &op_info[op];
	unsigned dflt = flags & UFFD__DEFAULT;
	uint64_t mode;
	struct skipped skip = { 0 };
	size_t off = 0;
	int err;

	if (done)
		*done = 0;
	flags &= ~UFFD__DEFAULT;
	mode = op_mode(op, flags);
	err = check_resolve(u, oi, dst, src, len, flags,
			    page_size ? page_size : uffd__base_page_size());
	if (!err && op == UFFD_OP_ZEROPAGE)
		err = refuse_hugetlb_zeropage(u, dst, len);
	if (err)
		return err;
	/* Recorded before the pages can be seen protected (wpstate.c: ordering). */
	if ((flags & UFFD_MAP_WP) && !dflt)
		uffd__wp_record(u, dst, len, true);
	while (off < len) {
		int64_t count = 0;

		err = uffd__op_ioctl(u->fd, op, dst + off, oi->has_src ? src + off : 0,
				     len - off, mode, &count);
		if (!err) {
			mapped(u, dst + off, len - off, flags | dflt);
			off = len;
			break;
		}
		if (count > 0) {	/* partial progress: go on from there */
			count = (size_t)count < len - off ? count : (int64_t)(len - off);
			mapped(u, dst + off, (size_t)count, flags | dflt);
			off += (size_t)count;
			continue;
		}
		if (err != -EEXIST || !(flags & UFFD_SKIP_EXISTING))
			break;
		if (!page_size)
			page_size = uffd__page_size_at(u, dst + off);
		skipped_add(u, &skip, dst + off, page_size, flags);
		off += page_size;
		err = 0;
	}
	skipped_flush(u, &skip, flags);
	/* A racing default resolution that mapped a page of ours writable protects it again. */
	if ((flags & UFFD_MAP_WP) && !dflt)
		uffd__wp_sync(u);
	if (err == -ENOENT)
		wake_gone(u, dst + off, len - off);
	if (done)
		*done = off;
	return err ? op_error(oi, op, err, dst + off, len - off, flags) : 0;
}

/* ---- public calls ---- */

UFFD_EXPORT int uffd_continue_range(struct uffd *u, void *addr, size_t len,
				    unsigned flags, size_t *done)
{
	return uffd__resolve(u, UFFD_OP_CONTINUE, (uintptr_t)addr, 0, len, flags, 0, done);
}
UFFD_EXPORT_OWN(continue_range);

UFFD_EXPORT int uffd_copy(struct uffd *u, void *dst, const void *src, size_t len,
			  unsigned flags, size_t *done)
{
	return uffd__resolve(u, UFFD_OP_COPY, (uintptr_t)dst, (uintptr_t)src, len, flags, 0, done);
}
UFFD_EXPORT_OWN(copy);

UFFD_EXPORT int uffd_zeropage(struct uffd *u, void *addr, size_t len,
			      unsigned flags, size_t *done)
{
	return uffd__resolve(u, UFFD_OP_ZEROPAGE, (uintptr_t)addr, 0, len, flags, 0, done);
}
UFFD_EXPORT_OWN(zeropage);

UFFD_EXPORT int uffd_move(struct uffd *u, void *dst, void *src, size_t len,
			  unsigned flags, size_t *done)
{
	return uffd__resolve(u, UFFD_OP_MOVE, (uintptr_t)dst, (uintptr_t)src, len, flags, 0, done);
}
UFFD_EXPORT_OWN(move);

UFFD_EXPORT int uffd_poison(struct uffd *u, void *addr, size_t len,
			    unsigned flags, size_t *done)
{
	return uffd__resolve(u, UFFD_OP_POISON, (uintptr_t)addr, 0, len, flags, 0, done);
}
UFFD_EXPORT_OWN(poison);

int uffd__writeprotect(struct uffd *u, uintptr_t addr, size_t len,
		       bool protect, unsigned flags, size_t page_size)
{
	int err;

	if ((err = check_handle(u, "uffd_writeprotect")) ||
	    (err = check_flags("uffd_writeprotect", flags, UFFD_DONTWAKE)) ||
	    (err = uffd__check_range("UFFDIO_WRITEPROTECT", addr, len,
				     page_size ? page_size : u->page_size)))
		return err;
	if (!(u->features & (UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC)))
		return uffd__err(-EOPNOTSUPP, "uffd_writeprotect: the handle was opened without UFFD_FEATURE_PAGEFAULT_FLAG_WP (or WP_ASYNC); open it with that feature");
	/*
	 * The record is set before protecting and cleared after unprotecting
	 * (wpstate.c: ordering); a failed unprotect leaves it set, a failed
	 * protect too (part of the range may be protected).
	 */
	if (protect)
		uffd__wp_record(u, addr, len, true);
	err = uffd__wp_ioctl(u->fd, addr, len, protect, flags & UFFD_DONTWAKE);
	if (!err && !protect)
		uffd__wp_record(u, addr, len, false);
	if (protect)	/* no default resolution still maps a page of the range writable */
		uffd__wp_sync(u);
	if (err == -ENOENT)
		wake_gone(u, addr, len);
	if (err == -EINVAL || err == -ENOENT)
		return uffd__err(err, "UFFDIO_WRITEPROTECT 0x%lx+%zu: the range is not registered with UFFDIO_REGISTER_MODE_WP on this handle, or not aligned to its huge page size (%s)%s",
				 (unsigned long)addr, len, uffd__errname(err),
				 err == -ENOENT ? "; the threads waiting on it were woken" : "");
	if (err)
		return uffd__err(err, "UFFDIO_WRITEPROTECT 0x%lx+%zu: %s (%s)", (unsigned long)addr, len,
				 err == -EAGAIN ? EAGAIN_HINT : op_hint(UFFD_OP_POISON, err, 0),
				 uffd__errname(err));
	return 0;
}

UFFD_EXPORT int uffd_writeprotect(struct uffd *u, void *addr, size_t len,
				  bool protect, unsigned flags)
{
	return uffd__writeprotect(u, (uintptr_t)addr, len, protect, flags, 0);
}
UFFD_EXPORT_OWN(writeprotect);

UFFD_EXPORT int uffd_wake(struct uffd *u, void *addr, size_t len)
{
	int err;

	if ((err = check_handle(u, "uffd_wake")) ||
	    (err = uffd__check_range("UFFDIO_WAKE", (uintptr_t)addr, len, u->page_size)))
		return err;
	err = range_ioctl(u->fd, UFFDIO_WAKE, (uintptr_t)addr, len);
	if (err)
		return uffd__err(err, "UFFDIO_WAKE %p+%zu: %s (%s)", addr, len, errtext(err),
				 uffd__errname(err));
	return 0;
}
UFFD_EXPORT_OWN(wake);

/* ---- registration ---- */

/* Features each memory kind needs for modes (WP_ASYNC alone works anywhere). */
uint64_t uffd__kind_needs(unsigned kind, uint64_t modes, uint64_t features)
{
	bool async_wp = (features & UFFD_FEATURE_WP_ASYNC) && modes == UFFDIO_REGISTER_MODE_WP;
	uint64_t need = 0;

	if (kind == VMA_ANON)
		return 0;
	if (modes & UFFDIO_REGISTER_MODE_MISSING)
		need |= kind == VMA_SHMEM ? UFFD_FEATURE_MISSING_SHMEM : UFFD_FEATURE_MISSING_HUGETLBFS;
	if (modes & UFFDIO_REGISTER_MODE_MINOR)
		need |= kind == VMA_SHMEM ? UFFD_FEATURE_MINOR_SHMEM : UFFD_FEATURE_MINOR_HUGETLBFS;
	if ((modes & UFFDIO_REGISTER_MODE_WP) && !async_wp)
		need |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
	return need;
}

static int refuse_modes(uintptr_t addr, size_t len, const char *what, uint64_t missing)
{
	char buf[128];

	return uffd__err(-EOPNOTSUPP,
		"UFFDIO_REGISTER 0x%lx+%zu: %s needs UFFD_FEATURE_%s, which this handle was not opened with; "
		"open it with that feature (in want_features, or with opts NULL)",
		(unsigned long)addr, len, what, uffd__feature_list(missing, buf, sizeof(buf)));
}

static int check_mode_features(const struct uffd *u, uintptr_t addr, size_t len,
			       uint64_t modes)
{
	uint64_t f = u->features, missing = 0;
	unsigned kinds;

	if ((modes & UFFDIO_REGISTER_MODE_MINOR) &&
	    !(f & (UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_MINOR_HUGETLBFS)))
		return refuse_modes(addr, len, "MODE_MINOR", UFFD_FEATURE_MINOR_SHMEM);
	if ((modes & UFFDIO_REGISTER_MODE_WP) &&
	    !(f & (UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC)))
		return refuse_modes(addr, len, "MODE_WP", UFFD_FEATURE_PAGEFAULT_FLAG_WP);
	if (!((uffd__kind_needs(VMA_SHMEM, modes, f) | uffd__kind_needs(VMA_HUGETLB, modes, f)) & ~f))
		return 0;	/* every memory kind is covered: no need to look */
	kinds = uffd__vma_kinds(addr, len);
	if (kinds & VMA_SHMEM)
		missing |= uffd__kind_needs(VMA_SHMEM, modes, f) & ~f;
	if (kinds & VMA_HUGETLB)
		missing |= uffd__kind_needs(VMA_HUGETLB, modes, f) & ~f;
	if (missing)
		return refuse_modes(addr, len, kinds & VMA_HUGETLB ? "hugetlbfs memory" : "shmem memory",
				    missing);
	return 0;
}

static const char *register_hint(int err)
{
	switch (err) {
	case -EINVAL:
		return "no mapping there, a memory type that does not allow the mode (MINOR needs shmem or hugetlbfs), "
		       "or a hugetlb range not aligned to its huge page size";
	case -EPERM:
		return "the mapping is not writable (a file opened read-only?)";
	case -EBUSY:
		return "the range is registered with another userfaultfd";
	default:
		return strerror(-err);
	}
}

static int check_register(const struct uffd *u, void *addr, size_t len, uint64_t modes)
{
	int err;

	if ((err = check_handle(u, "uffd_register")) ||
	    (err = uffd__check_range("UFFDIO_REGISTER", (uintptr_t)addr, len, u->page_size)))
		return err;
	if (!modes || (modes & ~(uint64_t)MODES_ALL))
		return uffd__err(-EINVAL, "UFFDIO_REGISTER %p+%zu: modes 0x%llx must be a non-empty mix of UFFDIO_REGISTER_MODE_MISSING, _WP and _MINOR",
				 addr, len, (unsigned long long)modes);
	return check_mode_features(u, (uintptr_t)addr, len, modes);
}

static int register_ioctl(struct uffd *u, void *addr, size_t len, uint64_t modes,
			  uint64_t *ioctls)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)addr, .len = len }, .mode = modes,
	};
	int err;

	if (ioctl(u->fd, UFFDIO_REGISTER, &reg)) {
		err = -errno;
		return uffd__err(err, "UFFDIO_REGISTER %p+%zu modes 0x%llx: %s (%s)", addr, len,
				 (unsigned long long)modes, register_hint(err), uffd__errname(err));
	}
	if (ioctls)
		*ioctls = reg.ioctls;
	return 0;
}

/*
 * The page sizes are read once here, before the kernel call so that a
 * failure changes nothing, and recorded after it: faults are then decoded
 * from the table, with no look at /proc per fault.
 */
UFFD_EXPORT int uffd_register(struct uffd *u, void *addr, size_t len,
			      uint64_t modes, uint64_t *ioctls)
{
	struct rangemap_entry *runs = NULL, unknown;
	uintptr_t a = (uintptr_t)addr;
	size_t nruns = 0;
	int err;

	if ((err = check_register(u, addr, len, modes)))
		return err;
	if (uffd__vma_huge_runs(a, len, &runs, &nruns)) {
		/* No descriptor to spare (EMFILE): unknown, looked up per fault. */
		unknown = (struct rangemap_entry){ .start = a, .end = a + len };
		nruns = 1;
	}
	err = register_ioctl(u, addr, len, modes, ioctls);
	if (!err && rangemap_replace(&u->ranges, a, a + len, runs ? runs : &unknown, nruns)) {
		range_ioctl(u->fd, UFFDIO_UNREGISTER, a, len);
		err = uffd__err(-ENOMEM, "UFFDIO_REGISTER %p+%zu: out of memory recording the range's page sizes; "
				"the range is left unregistered (ENOMEM)", addr, len);
	}
	free(runs);
	return err;
}
UFFD_EXPORT_OWN(register);

UFFD_EXPORT int uffd_unregister(struct uffd *u, void *addr, size_t len)
{
	int err;

	if ((err = check_handle(u, "uffd_unregister")) ||
	    (err = uffd__check_range("UFFDIO_UNREGISTER", (uintptr_t)addr, len, u->page_size)))
		return err;
	err = range_ioctl(u->fd, UFFDIO_UNREGISTER, (uintptr_t)addr, len);
	if (err)
		return uffd__err(err, "UFFDIO_UNREGISTER %p+%zu: %s (%s)", addr, len,
				 err == -EINVAL ? "no mapping there, or it is registered with another userfaultfd"
						: strerror(-err), uffd__errname(err));
	/* The kernel wakes the waiters of MISSING faults only. */
	wake_gone(u, (uintptr_t)addr, len);
	/* and drops the range's write-protection. */
	uffd__wp_record(u, (uintptr_t)addr, len, false);
	/* Out of memory leaves a stale entry, which a new registration replaces. */
	rangemap_replace(&u->ranges, (uintptr_t)addr, (uintptr_t)addr + len, NULL, 0);
	return 0;
}
UFFD_EXPORT_OWN(unregister);

/* Whether an entry of m overlaps [start, end); lock-free. */
static bool holds(struct rangemap *m, uintptr_t start, uintptr_t end)
{
	struct rangemap_entry e;

	return rangemap_next(m, start, &e) && e.start < end;
}

/*
 * Allocates only when a recorded range is involved (a hugetlb mapping
 * moved), so the common REMAP costs a lock-free look.
 */
void uffd__ranges_moved(struct uffd *u, uintptr_t from, uintptr_t to, size_t len)
{
	if (!len || from + len < from || to + len < to)	/* a malformed message */
		return;
	if (holds(&u->ranges, from, from + len) || holds(&u->ranges, to, to + len))
		rangemap_shift(&u->ranges, from, to, len);
}
