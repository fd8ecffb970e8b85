/* SPDX-License-Identifier: MIT */
/**
 * @file uffd.h
 * @brief libuffd: Linux userfaultfd made usable.
 *
 * Conventions:
 * - Every function returning `int` returns 0 (or a count) on success and a
 *   negative errno on failure; it never returns -1 with `errno` set.
 * - uffd_last_error() holds, per thread, the sentence describing the last
 *   failure: what failed, on which range, why and what to do.
 * - Option structs start with `size_t size` set to `sizeof` of the struct
 *   the caller was compiled with, so that they can grow.
 * - Unknown flag bits are rejected with -EINVAL.
 *
 * Threading: resolving calls (section 2) are thread-safe and may be called
 * from any thread while a loop runs; they are async-signal-safe too. A loop is driven either by one thread
 * calling uffd_loop_run() / uffd_loop_run_once(), or by its own threads
 * (uffd_loop_start()), not both. A handle may be shared by threads; closing
 * it while another thread uses it is the caller's bug.
 */
#ifndef LIBUFFD_UFFD_H
#define LIBUFFD_UFFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <poll.h>
#include <sys/types.h>
#include <linux/userfaultfd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Feature bits newer than some system headers (Debian 12 ships 6.1). */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
/* Bit numbers of the ioctls mask uffd_register() reports. */
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
#endif

/**
 * Major, minor and patch version of this header: the project version of
 * meson.build (tests/check-version.py keeps them equal).
 */
#define LIBUFFD_VERSION_MAJOR 0
#define LIBUFFD_VERSION_MINOR 4
#define LIBUFFD_VERSION_PATCH 0

/* ------------------------------------------------------------------ */
/* 1. The handle                                                       */
/* ------------------------------------------------------------------ */

/** An open userfaultfd with its negotiated features. Opaque. */
struct uffd;

/** Options of uffd_open(). */
struct uffd_opts {
	size_t   size;          /**< sizeof(struct uffd_opts) */
	uint64_t features;      /**< UFFD_FEATURE_* that must be enabled, else -EOPNOTSUPP */
	uint64_t want_features; /**< UFFD_FEATURE_* enabled where the kernel has them */
	unsigned flags;         /**< UFFD_OPEN_* */
};

/** Allow a user-mode-only userfaultfd as the last resort. */
#define UFFD_OPEN_USER_MODE_ONLY (1u << 0)
/** Never use /dev/userfaultfd. */
#define UFFD_OPEN_NO_DEV         (1u << 1)

/**
 * Harmless features enabled by default (opts == NULL), where the kernel has
 * them. Never SIGBUS, WP_ASYNC, EXACT_ADDRESS or EVENT_*: those change
 * behaviour and must be asked for.
 */
#define UFFD_FEATURES_DEFAULT                                               \
	((uint64_t)(UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS | \
		    UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_MINOR_HUGETLBFS |     \
		    UFFD_FEATURE_PAGEFAULT_FLAG_WP |                              \
		    UFFD_FEATURE_WP_HUGETLBFS_SHMEM |                             \
		    UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_THREAD_ID |        \
		    UFFD_FEATURE_POISON | UFFD_FEATURE_MOVE))

/**
 * Open a userfaultfd and enable features.
 *
 * The kernel's feature set is probed on a throwaway fd (UFFDIO_API works
 * once per fd); the real fd, O_NONBLOCK|O_CLOEXEC, is then initialised with
 * exactly `features | (want_features & available)`, or
 * `UFFD_FEATURES_DEFAULT & available` when @p opts is NULL. Ways tried in
 * order: userfaultfd(2); /dev/userfaultfd unless UFFD_OPEN_NO_DEV; with
 * UFFD_OPEN_USER_MODE_ONLY, userfaultfd(UFFD_USER_MODE_ONLY).
 *
 * @param out  receives the handle
 * @param opts options, or NULL for the defaults
 * @return 0; -EINVAL for bad arguments; -EOPNOTSUPP when a required feature
 *         is missing; -EPERM/-EACCES when no way to open a userfaultfd is
 *         allowed; other -errno from the kernel.
 */
int uffd_open(struct uffd **out, const struct uffd_opts *opts);

/** Close the handle and its fd. NULL is fine. */
void uffd_close(struct uffd *u);

/** The userfaultfd, O_NONBLOCK|O_CLOEXEC. @return the fd, or -EINVAL for NULL. */
int uffd_fd(const struct uffd *u);

/** The enabled feature set (UFFD_FEATURE_* bits); 0 for NULL. */
uint64_t uffd_features(const struct uffd *u);

/**
 * The kernel's available features, probed once on a throwaway fd and cached.
 * @param available receives the UFFD_FEATURE_* bits the kernel offers
 * @return 0 or -errno when no userfaultfd can be opened.
 */
int uffd_probe(uint64_t *available);

/** The name of one UFFD_FEATURE_* bit ("MINOR_SHMEM"), or NULL if unknown. */
const char *uffd_feature_name(uint64_t feature);

/**
 * The sentence describing the last failure of a libuffd call in this
 * thread; "" when there was none. Valid until the next libuffd call.
 */
const char *uffd_last_error(void);

/* ------------------------------------------------------------------ */
/* 2. Registration and resolution                                      */
/* ------------------------------------------------------------------ */

/**
 * Register [addr, addr+len) with modes UFFDIO_REGISTER_MODE_{MISSING,WP,MINOR}.
 *
 * A mode the handle's enabled features do not cover (MINOR without
 * MINOR_SHMEM/MINOR_HUGETLBFS, WP without PAGEFAULT_FLAG_WP, WP on shmem or
 * hugetlbfs without WP_HUGETLBFS_SHMEM) is refused with -EOPNOTSUPP.
 * Registering a range again replaces its modes.
 *
 * @param ioctls if not NULL, receives the kernel's mask of allowed ioctls,
 *               bits (1 << _UFFDIO_*)
 * @return 0; -EINVAL (bad range, mode 0, unknown mode, MINOR on anonymous
 *         memory, no mapping); -EPERM (mapping not writable); -EBUSY
 *         (registered with another userfaultfd); -EOPNOTSUPP.
 */
int uffd_register(struct uffd *u, void *addr, size_t len, uint64_t modes,
		  uint64_t *ioctls);

/** Unregister [addr, addr+len); pending faults (of every kind) are woken. @return 0 or -errno. */
int uffd_unregister(struct uffd *u, void *addr, size_t len);

/** Leave faulting threads asleep; wake them later with uffd_wake(). */
#define UFFD_DONTWAKE        (1u << 0)
/** Map the pages write-protected (uffd_continue_range(), uffd_copy()). */
#define UFFD_MAP_WP          (1u << 1)
/** Pages already mapped count as done (their waiters are woken). */
#define UFFD_SKIP_EXISTING   (1u << 2)
/** uffd_move() only: holes in the source count as moved. */
#define UFFD_ALLOW_SRC_HOLES (1u << 3)

/**
 * Map pages already in the page cache (UFFDIO_CONTINUE), resolving MINOR faults.
 *
 * Common to the resolving calls: 0 when the whole range is done; `*done`
 * (if not NULL) is always set to the bytes completed, on error too; the
 * kernel's partial progress is continued internally; -EAGAIN with no further
 * progress means a non-cooperative event must be read first (a loop handler
 * returns UFFD_RETRY; without a loop, read the events with
 * uffd_read_events() and retry from `*done`); -EEXIST means a page was
 * already mapped, unless UFFD_SKIP_EXISTING steps over it; -ENOENT (the
 * range is gone) first wakes the threads waiting on the rest of the range,
 * whatever the flags; unaligned or empty ranges give -EINVAL without any
 * syscall. Thread-safe and async-signal-safe (a SIGBUS handler may call
 * them; the man pages name the one exception).
 *
 * @param flags UFFD_DONTWAKE, UFFD_MAP_WP, UFFD_SKIP_EXISTING
 * @return 0; -EFAULT (no page in the page cache: write it through the alias
 *         view first); -EEXIST; -EAGAIN; -EINVAL; -ENOENT (range unregistered
 *         or gone).
 */
int uffd_continue_range(struct uffd *u, void *addr, size_t len,
			unsigned flags, size_t *done);

/**
 * Write-protect (@p protect true) or un-protect and wake (false) a range
 * registered with UFFDIO_REGISTER_MODE_WP. Async-signal-safe.
 * @param flags UFFD_DONTWAKE (meaningful when un-protecting)
 * @return 0; -EINVAL; -ENOENT (the range's waiting threads are woken);
 *         -EAGAIN (return UFFD_RETRY from a loop handler; without a loop,
 *         read pending events first).
 */
int uffd_writeprotect(struct uffd *u, void *addr, size_t len, bool protect,
		      unsigned flags);

/**
 * Copy @p len bytes from @p src into missing pages at @p dst (UFFDIO_COPY).
 * @param flags UFFD_DONTWAKE, UFFD_MAP_WP, UFFD_SKIP_EXISTING
 * @return 0 or -errno as uffd_continue_range(); -EFAULT when @p src cannot be read.
 */
int uffd_copy(struct uffd *u, void *dst, const void *src, size_t len,
	      unsigned flags, size_t *done);

/**
 * Map zero pages at missing pages (UFFDIO_ZEROPAGE). hugetlbfs has none:
 * -EINVAL there (copy a zeroed huge page instead).
 * @param flags UFFD_DONTWAKE, UFFD_SKIP_EXISTING
 */
int uffd_zeropage(struct uffd *u, void *addr, size_t len, unsigned flags,
		  size_t *done);

/**
 * Move anonymous pages from @p src to @p dst without copying (UFFDIO_MOVE).
 * Needs UFFD_FEATURE_MOVE; only the process owning the memory may move.
 * @param flags UFFD_DONTWAKE, UFFD_SKIP_EXISTING, UFFD_ALLOW_SRC_HOLES
 * @return as uffd_continue_range(); -EBUSY when a source page is shared
 *         (mark the source MADV_DONTFORK); -ENOENT for a source hole.
 */
int uffd_move(struct uffd *u, void *dst, void *src, size_t len,
	      unsigned flags, size_t *done);

/**
 * Install poison markers (UFFDIO_POISON): an access raises SIGBUS.
 * Needs UFFD_FEATURE_POISON.
 * @param flags UFFD_DONTWAKE, UFFD_SKIP_EXISTING
 */
int uffd_poison(struct uffd *u, void *addr, size_t len, unsigned flags,
		size_t *done);

/** Wake threads waiting on faults in [addr, addr+len). Async-signal-safe. @return 0 or -errno. */
int uffd_wake(struct uffd *u, void *addr, size_t len);

/* ------------------------------------------------------------------ */
/* 3. Reading events without the loop                                  */
/* ------------------------------------------------------------------ */

/** Why a page fault was reported. */
enum uffd_fault_kind { UFFD_FAULT_MISSING, UFFD_FAULT_MINOR, UFFD_FAULT_WP };

struct uffd_region;

/** A page fault to resolve. */
struct uffd_fault {
	struct uffd         *uffd;
	struct uffd_region  *region;  /**< NULL if the address is in no region */
	void                *addr;    /**< aligned to the mapping's page size */
	uint64_t             offset;  /**< into region, when region != NULL */
	size_t               len;     /**< bytes to resolve: page size; a handler may widen it */
	enum uffd_fault_kind kind;
	bool                 write;
	pid_t                tid;     /**< 0 without UFFD_FEATURE_THREAD_ID */
};

/** Type of a decoded message. */
enum uffd_event_type { UFFD_EV_FAULT, UFFD_EV_FORK, UFFD_EV_REMAP,
		       UFFD_EV_REMOVE, UFFD_EV_UNMAP };

/** One decoded uffd_msg. */
struct uffd_event {
	enum uffd_event_type type;
	__extension__ union {
		struct uffd_fault fault;
		struct { int fd; } fork;                 /**< new uffd of the child */
		struct { void *from, *to; size_t len; } remap;
		struct { void *start; size_t len; } remove;  /**< REMOVE and UNMAP */
	};
};

/**
 * Read the queued messages in one non-blocking batch and decode them.
 * A FORK event's fd is the caller's to close (or to wrap with
 * uffd_open_fd()).
 * @return the number of events stored (<= max), 0 when none is queued;
 *         -EINVAL for a NULL handle or array or max 0; -EIO when the fd
 *         yields something other than whole messages (not a userfaultfd);
 *         other -errno of read(2), e.g. -EBADF.
 */
int uffd_read_events(struct uffd *u, struct uffd_event *ev, size_t max);

/**
 * Wrap an already initialised userfaultfd, such as a FORK event's child fd,
 * in a handle that owns it. @p features is the set the fd was initialised
 * with (a fork child inherits its parent's: uffd_features(parent)). The fd
 * is made O_NONBLOCK|O_CLOEXEC, like uffd_open()'s.
 * Without /proc mounted, an fd is taken for a userfaultfd when it is an
 * anonymous inode that answers UFFDIO_API as one does.
 * @return 0; -EINVAL for a negative fd, unknown feature bits or an fd that
 *         is not a userfaultfd; -EBADF for an fd that is not open.
 */
int uffd_open_fd(struct uffd **out, int fd, uint64_t features);

/**
 * The features a userfaultfd this process holds was initialised with, as
 * the kernel reports them (/proc/self/fdinfo), without the kernel-internal
 * UFFD_FEATURE_INITIALIZED bit (1 << 31), which is no feature: the value to
 * pass to uffd_open_fd() for a received fd, on which UFFDIO_API cannot be
 * called again (since 0.4).
 * @return 0 with *features; -EINVAL (NULL @p features, an fd that is not a
 *         userfaultfd -- the message says what it is -- or one never
 *         initialised); -EBADF (not open); -errno of reading /proc.
 */
int uffd_features_of_fd(int fd, uint64_t *features);

/* ------------------------------------------------------------------ */
/* 4. memfd regions with an alias view                                 */
/* ------------------------------------------------------------------ */

/** Options of uffd_region_create(). */
struct uffd_region_opts {
	size_t      size;       /**< sizeof(struct uffd_region_opts) */
	size_t      length;     /**< bytes, multiple of the page size */
	uint64_t    modes;      /**< UFFDIO_REGISTER_MODE_{MISSING,MINOR,WP} */
	unsigned    flags;      /**< UFFD_REGION_* */
	int         fd;         /**< -1: create a memfd; else map this fd */
	uint64_t    fd_offset;  /**< offset into fd, multiple of the page size */
	const char *name;       /**< memfd name, NULL for "uffd" */
};
/** Back the region with MFD_HUGETLB (default huge page size). */
#define UFFD_REGION_HUGETLB  (1u << 0)
/** Map no alias view. */
#define UFFD_REGION_NO_ALIAS (1u << 1)

/**
 * Create a region: shared memory mapped as a registered base view and an
 * unregistered alias view, with guard pages between them. The memory is a
 * new memfd (fd -1) or the caller's tmpfs/hugetlbfs file, which the region
 * never resizes or closes. Offsets and lengths of every region call are
 * multiples of uffd_region_page_size() (the huge page size on hugetlbfs).
 * @return 0; -EINVAL; -EBADF/-EACCES (caller's fd closed / not O_RDWR);
 *         -EOPNOTSUPP (mode not allowed by the handle's features, named in
 *         uffd_last_error()); -ENOMEM (no huge pages); other -errno.
 */
int uffd_region_create(struct uffd *u, const struct uffd_region_opts *o,
		       struct uffd_region **out);
/** Unregister, unmap and close what the region created. NULL is fine. */
void uffd_region_destroy(struct uffd_region *r);
/**
 * The registered view, or NULL for NULL. For a foreign region
 * (uffd_region_create_foreign()): the owner's address, in the owner's
 * address space, for the resolving calls only.
 */
void *uffd_region_base(const struct uffd_region *r);
/** The unregistered view, or NULL (UFFD_REGION_NO_ALIAS, a foreign region without fd, or NULL). */
void *uffd_region_alias(const struct uffd_region *r);
/** Length in bytes; 0 for NULL. */
size_t uffd_region_length(const struct uffd_region *r);
/** Page size of the backing memory; 0 for NULL. */
size_t uffd_region_page_size(const struct uffd_region *r);
/**
 * The backing fd (owned by the region when it created it, or its duplicate
 * of a foreign region's fd); -EINVAL for NULL; -EBADF for a foreign region
 * without fd.
 */
int uffd_region_fd(const struct uffd_region *r);
/** The handle the region is registered with; NULL for NULL. */
struct uffd *uffd_region_uffd(const struct uffd_region *r);

/** uffd_region_populate(): also map the pages into the base view. */
#define UFFD_POPULATE_MAP (1u << 0)
/**
 * Put @p len bytes from @p src into the page cache at offset @p off without
 * a page fault per page (pwrite on shmem, MADV_POPULATE_WRITE + copy on
 * hugetlbfs); with UFFD_POPULATE_MAP also map them into the base view
 * (CONTINUE on MINOR regions, else MADV_POPULATE_READ/WRITE) and wake
 * waiters; UFFD_MAP_WP with it maps them write-protected (WP regions).
 * A foreign region without fd has no page cache here: the pages are copied
 * into the owner's missing pages (UFFDIO_COPY, which maps them).
 * @return 0; -EINVAL (range outside the region or unaligned, bad flags);
 *         -EEXIST (foreign region without fd: a page is already mapped);
 *         other -errno.
 */
int uffd_region_populate(struct uffd_region *r, uint64_t off, const void *src,
			 size_t len, unsigned flags);
/** uffd_continue_range() on [off, off+len) of the base view. Async-signal-safe. */
int uffd_region_continue(struct uffd_region *r, uint64_t off, size_t len,
			 unsigned flags, size_t *done);
/** uffd_writeprotect() on [off, off+len) of the base view. Async-signal-safe. */
int uffd_region_writeprotect(struct uffd_region *r, uint64_t off, size_t len,
			     bool protect, unsigned flags);
/**
 * Unmap [off, off+len) from the base view, keep contents: the next touch is
 * a MINOR fault. -EOPNOTSUPP for a foreign region (only its owner can).
 */
int uffd_region_zap(struct uffd_region *r, uint64_t off, size_t len);
/**
 * Free the pages (punch a hole): the next touch is a MISSING fault.
 * -EOPNOTSUPP for a foreign region declared without fd.
 */
int uffd_region_discard(struct uffd_region *r, uint64_t off, size_t len);

/* ------------------------------------------------------------------ */
/* 5. The io_uring event loop                                          */
/* ------------------------------------------------------------------ */

struct uffd_loop;

/** Handler verdict: the loop resolves [addr, addr+len) the default way. */
#define UFFD_RESOLVE 0
/** Handler verdict: the handler resolved the fault itself. */
#define UFFD_HANDLED 1
/** Handler verdict: resolved later, from any thread, with section 2 calls. */
#define UFFD_DEFER   2
/**
 * Handler verdict: call the handler again once the pending non-cooperative
 * events are read (what a resolving call's -EAGAIN asks for; a handler
 * returning -EAGAIN means the same). Retries back off; after about 5 s the
 * fault fails as a failed handler does (error hook, poison).
 */
#define UFFD_RETRY   3
/**
 * Handler verdict: like UFFD_RESOLVE, but the page is mapped
 * write-protected (MINOR: CONTINUE with UFFD_MAP_WP; MISSING: a zero page
 * copied write-protected; a WP fault is un-protected as with UFFD_RESOLVE).
 * The range must be registered with UFFDIO_REGISTER_MODE_WP, else the
 * resolution fails with -EINVAL.
 */
#define UFFD_RESOLVE_WP 4

/** Callbacks of a loop; any may be NULL. */
struct uffd_handlers {
	int  (*minor)(void *ctx, struct uffd_fault *f);
	int  (*wp)(void *ctx, struct uffd_fault *f);
	int  (*missing)(void *ctx, struct uffd_fault *f);
	/** Child of a fork: 0 to have the loop watch it with the same
	 * handlers, 1 to take it over yourself, < 0 to have it closed. */
	int  (*fork)(void *ctx, struct uffd *child);
	void (*remap)(void *ctx, void *from, void *to, size_t len);
	void (*remove)(void *ctx, void *start, size_t len);
	void (*unmap)(void *ctx, void *start, size_t len);
};

/** Options of uffd_loop_new(). */
struct uffd_loop_opts {
	size_t   size;        /**< sizeof(struct uffd_loop_opts) */
	unsigned queue_depth; /**< ring entries; 0: default */
	unsigned batch;       /**< messages per read; 0: default */
	unsigned spin_us;     /**< poll this long before sleeping; 0: never */
	unsigned flags;       /**< UFFD_LOOP_* */
	/**
	 * Called on a loop thread for every failed handler, failed resolution
	 * and broken watch: @p f is the fault (NULL for a watch; for a failed
	 * resolution only uffd, addr and len are set), valid only during the
	 * call; @p err the -errno, @p sentence what happened and what to do.
	 * Runs in a fork-gate section, as handlers do (it may allocate), and
	 * the same rules apply (no uffd_loop_remove() of its own loop); while
	 * a fork() is in progress up to 32 reports per loop thread wait for
	 * it. Since 0.2.
	 */
	void   (*on_error)(void *ctx, const struct uffd_fault *f, int err,
			   const char *sentence);
	void    *error_ctx;   /**< ctx of on_error */
};
/** A failed fault is poisoned: the faulting thread gets SIGBUS instead of hanging. */
#define UFFD_LOOP_POISON_ON_ERROR (1u << 0)
/** Use a poll request plus read(2) instead of io_uring reads of the uffd. */
#define UFFD_LOOP_FORCE_POLL      (1u << 1)

/**
 * Create a loop. When io_uring is refused or absent (EPERM, EACCES, ENOMEM,
 * ENOSYS from io_uring_setup) the loop uses poll(2) and read(2) instead;
 * it then returns 0 and uffd_last_error() says so. @return 0 or -errno.
 */
int  uffd_loop_new(struct uffd_loop **out, const struct uffd_loop_opts *o);
/**
 * Stop the loop, join its threads and free it. NULL is fine. Since 0.4, a
 * handle left watched (not an adopted child) with UFFD_FEATURE_EVENT_FORK,
 * _REMAP, _REMOVE or _UNMAP is named in uffd_last_error() (-EBUSY): once
 * nobody reads it, fork(), mremap(), munmap() and madvise() on its
 * registered ranges wait until it is closed. The loop is freed all the
 * same; closing the handle next is a safe order.
 */
void uffd_loop_free(struct uffd_loop *l);
/** Watch @p u with handlers @p h (NULL: default resolution). */
int  uffd_loop_add(struct uffd_loop *l, struct uffd *u,
		   const struct uffd_handlers *h, void *ctx);
/** Options of a watch, versioned by size (since 0.2). */
struct uffd_watch_opts {
	size_t   size;        /**< sizeof(struct uffd_watch_opts) */
	/**
	 * Every non-fault event (fork, remap, remove, unmap) with the handle
	 * it came from -- the watched one, or an adopted fork child's -- before
	 * the per-kind callbacks of struct uffd_handlers.
	 */
	void   (*event)(void *ctx, struct uffd *u, const struct uffd_event *ev);
	/**
	 * With UFFD_WATCH_OWNER: an fd that becomes readable when the process
	 * owning the memory is gone -- its pidfd, or the control socket (EOF).
	 * The loop polls it; it stays the caller's.
	 */
	int      owner_fd;
	unsigned flags;       /**< UFFD_WATCH_* */
	/**
	 * Called once on a loop thread when owner_fd becomes readable, after
	 * the loop stopped reading @p u and let go of its regions.
	 */
	void   (*owner_exit)(void *ctx, struct uffd *u);
};
/** owner_fd is set: watch it. */
#define UFFD_WATCH_OWNER     (1u << 0)
/** When the owner is gone, uffd_loop_run() returns 0 (as after uffd_loop_stop()). */
#define UFFD_WATCH_STOP_LOOP (1u << 1)

/**
 * uffd_loop_add() with options: events that name their uffd, and the
 * owner's exit. @p o NULL: the same as uffd_loop_add().
 */
int  uffd_loop_add_opts(struct uffd_loop *l, struct uffd *u,
			const struct uffd_handlers *h, void *ctx,
			const struct uffd_watch_opts *o);
/** Handle faults and events inside region @p r with @p h. */
int  uffd_loop_add_region(struct uffd_loop *l, struct uffd_region *r,
			  const struct uffd_handlers *h, void *ctx);
/** Stop watching @p u (and its regions). */
int  uffd_loop_remove(struct uffd_loop *l, struct uffd *u);
/**
 * Run until uffd_loop_stop(). @return 0 after stop; -errno on a fatal error,
 * or the error of a failed handler when the loop lacks
 * UFFD_LOOP_POISON_ON_ERROR (the fault stays pending; uffd_last_error()
 * names it).
 */
int  uffd_loop_run(struct uffd_loop *l);
/**
 * Wait up to @p timeout_ms (-1: forever) for messages and handle what one
 * wake brings. @return the number of messages handled, or -errno.
 */
int  uffd_loop_run_once(struct uffd_loop *l, int timeout_ms);
/** Run the loop on @p nthreads background threads. */
int  uffd_loop_start(struct uffd_loop *l, unsigned nthreads);
/** Ask the loop to stop. Any thread; async-signal-safe. */
int  uffd_loop_stop(struct uffd_loop *l);
/**
 * Wait until the loop's threads have handled every message the kernel
 * handed them before this call. mremap(2) of a watched range returns once
 * a loop thread has read its REMAP message, which the loop applies to the
 * regions (uffd_region_base(), the region calls) on its reading path,
 * which may or may not come before mremap() returns: after this call it has.
 * Also for munmap(2), madvise(2) and fork(2), whose events return the
 * same way. Threads of uffd_loop_start(), and a uffd_loop_run() in
 * progress; a loop driven by uffd_loop_run_once() handles what it read
 * in its next call instead.
 * @param timeout_ms -1: no limit
 * @return 0; -EINVAL (NULL @p l, @p timeout_ms below -1); -EDEADLK (called
 *         from a handler of @p l); -ETIMEDOUT.
 */
int  uffd_loop_sync(struct uffd_loop *l, int timeout_ms);
/**
 * Wait until the threads of uffd_loop_start() have ended (after
 * uffd_loop_stop(), from any thread, or a UFFD_WATCH_STOP_LOOP owner exit),
 * without freeing the loop: its watches, regions and counters stay, and
 * uffd_loop_start() or uffd_loop_run() may drive it again. Returns at once
 * when no thread runs. Not from a handler of @p l (-EDEADLK). Since 0.4.
 * @return 0 or -errno.
 */
int  uffd_loop_join(struct uffd_loop *l);
/**
 * On a loop thread, inside a handler or callback (fault handlers, fork,
 * remap, remove, unmap, the watch's event callback): the handle the
 * message being handled came from -- the watched one, or an adopted fork
 * child's (for a FORK, the parent's). NULL anywhere else. The handle is
 * valid during the call only (an adopted child's is closed by the loop).
 * Since 0.4.
 */
struct uffd *uffd_loop_current(void);

/** Counters of a loop. */
struct uffd_loop_stats {
	uint64_t faults_minor, faults_wp, faults_missing; /**< fault messages by kind */
	uint64_t events;          /**< fork, remap, remove, unmap messages */
	uint64_t reads;           /**< completed reads of the uffds */
	uint64_t resolve_ioctls;  /**< resolving ioctls issued */
	uint64_t deferred;        /**< DEFER verdicts */
	uint64_t errors;          /**< failed handlers, resolutions, reads (not ESRCH) */
};
/** Copy the loop's counters into @p s. */
void uffd_loop_stats(const struct uffd_loop *l, struct uffd_loop_stats *s);

/** Counters of a loop, versioned by size (since 0.2). */
struct uffd_loop_counters {
	size_t   size;            /**< sizeof(struct uffd_loop_counters) */
	uint64_t faults_minor, faults_wp, faults_missing; /**< fault messages by kind */
	uint64_t events;          /**< fork, remap, remove, unmap messages */
	uint64_t reads;           /**< completed reads of the uffds */
	uint64_t resolve_ioctls;  /**< resolving ioctls issued */
	uint64_t deferred;        /**< DEFER verdicts */
	uint64_t errors;          /**< real failures: handlers, resolutions, watches */
	uint64_t owner_gone;      /**< resolutions refused with ESRCH: the owner exited */
	uint64_t poisoned;        /**< pages poisoned because their handler or own resolution failed */
	uint64_t retried;         /**< UFFD_RETRY verdicts and -EAGAIN resolutions queued */
	uint64_t gated;           /**< messages queued while a fork() was in progress */
	uint64_t children_adopted; /**< fork children watched by the loop */
	uint64_t children_reaped; /**< of those, closed after their process exited */
};
/**
 * Copy the loop's counters into @p c (set c->size first).
 * @return 0, or -EINVAL for a NULL argument or a size this library cannot fill.
 */
int  uffd_loop_counters(const struct uffd_loop *l, struct uffd_loop_counters *c);

/* ------------------------------------------------------------------ */
/* 6. In-thread resolution (SIGBUS mode)                               */
/* ------------------------------------------------------------------ */

/**
 * Runs in signal context, in the faulting thread: async-signal-safe code
 * only, and it must return (never longjmp out). Verdicts: UFFD_RESOLVE
 * (the library resolves [f->addr, f->addr+f->len): MINOR -> CONTINUE,
 * WP -> un-protect, MISSING -> zero pages; on a region registered with
 * UFFDIO_REGISTER_MODE_WP the page is mapped write-protected, so its first
 * write raises a WP fault; a page found mapped already is left as it is),
 * UFFD_HANDLED (resolved by the function, e.g. with the resolving calls of
 * section 2, which are async-signal-safe), UFFD_DEFER and UFFD_RETRY
 * (nothing done: the access is retried and faults again unless another
 * thread resolved the page meanwhile), or -errno (not resolved: the signal
 * goes on to the previous SIGBUS disposition, by default killing the
 * process). @p f->write is known on x86 only.
 */
typedef int (*uffd_sigbus_fn)(void *ctx, struct uffd_fault *f);
/**
 * Resolve faults in @p r inside the faulting thread, from a process-wide
 * SIGBUS handler installed on first use (the previous disposition is kept
 * and receives every SIGBUS that is not a fault in an added region).
 * Needs a handle opened with UFFD_FEATURE_SIGBUS. Not async-signal-safe.
 * @return 0; -EINVAL (NULL @p r or @p fn); -EOPNOTSUPP (no
 * UFFD_FEATURE_SIGBUS); -EEXIST (added already); -ENOMEM.
 */
int uffd_sigbus_add_region(struct uffd_region *r, uffd_sigbus_fn fn, void *ctx);
/**
 * Stop resolving faults of @p r in-thread; returns once no thread runs its
 * function any more. Removing the last region restores the previous SIGBUS
 * disposition. uffd_region_destroy() removes an added region by itself.
 * @return 0; -EINVAL (NULL); -ENOENT (not added); -ENOMEM.
 */
int uffd_sigbus_remove_region(struct uffd_region *r);

/* ------------------------------------------------------------------ */
/* 7. Dirty tracking (asynchronous write-protect)                      */
/* ------------------------------------------------------------------ */

/** A run of written pages: [addr, addr + len). */
struct uffd_span { void *addr; size_t len; };

/** uffd_dirty_scan(): write-protect the reported pages again, atomically with the scan. */
#define UFFD_SCAN_REARM (1u << 0)
/**
 * Start tracking writes to [addr, addr+len): write-protect it in
 * asynchronous mode, where a write is never blocked and sends no message but
 * only clears the page's protection. Writes from now on are reported by
 * uffd_dirty_scan(); earlier ones are forgotten (calling it again restarts
 * tracking). Needs a handle opened with UFFD_FEATURE_WP_ASYNC and the range
 * registered with UFFDIO_REGISTER_MODE_WP on it. Anonymous, shmem and
 * hugetlbfs memory; the range aligned to its page size (huge page size).
 * @return 0; -EINVAL (NULL handle; empty, wrapping or unaligned range);
 *         -EOPNOTSUPP (no UFFD_FEATURE_WP_ASYNC); -ENOENT (range not
 *         registered with MODE_WP on this handle); -EAGAIN (a
 *         non-cooperative event must be read first).
 */
int uffd_dirty_start(struct uffd *u, void *addr, size_t len);
/**
 * The pages of [addr, addr+len) written since uffd_dirty_start() or since
 * the scan that last re-armed them, as spans merged and in address order
 * (PAGEMAP_SCAN on /proc/self/pagemap, kept open by the handle). With
 * UFFD_SCAN_REARM the reported pages are write-protected again in the same
 * walk: a write racing with the scan is reported now or by the next scan.
 *
 * At most @p max spans are stored; when they fill, the walk stops before
 * the first written page it cannot store (neither reported nor re-armed)
 * and *next points at it: call again from there. A PAGEMAP_SCAN that
 * fails part-way still has the pages it re-armed reported, with *next
 * after them; the error comes with the next call. @p max 0 stores and
 * re-arms nothing and sets *next to the first written page.
 *
 * Written means: written since start/rearm; on private anonymous memory
 * also MADV_DONTNEED (the page now reads zero); before the first start,
 * every page. Not reported: reads, pages never touched, and on shmem and
 * hugetlbfs MADV_DONTNEED and hole punching (MADV_REMOVE,
 * FALLOC_FL_PUNCH_HOLE), which keep the protection although a punched page
 * reads zero afterwards. A huge page is reported whole.
 *
 * @param spans receives the spans; may be NULL when @p max is 0
 * @param flags 0 or UFFD_SCAN_REARM
 * @param next  if not NULL, receives where to resume, addr + len when the
 *              whole range was scanned; untouched on failure
 * @return the number of spans stored (<= max); -EINVAL (NULL handle; empty,
 *         wrapping or unaligned range; unknown flags; NULL @p spans with
 *         @p max > 0); -EOPNOTSUPP (no UFFD_FEATURE_WP_ASYNC); -ENOENT
 *         (part of the range not registered with MODE_WP on a WP_ASYNC
 *         handle: nothing is re-armed); other -errno of PAGEMAP_SCAN.
 */
int uffd_dirty_scan(struct uffd *u, void *addr, size_t len,
		    struct uffd_span *spans, size_t max, unsigned flags,
		    void **next);

/* ------------------------------------------------------------------ */
/* 8. Serving another process's memory                                 */
/* ------------------------------------------------------------------ */

/*
 * The common deployment: the process owning the memory (a VM monitor)
 * opens and registers the userfaultfd, then sends it with a table of its
 * regions over a Unix socket to a handler process, which serves faults in
 * memory it does not own (libuffd-handoff(7)). Every resolving ioctl acts
 * on the address space of the process that opened the userfaultfd, so the
 * handler passes the owner's addresses; a COPY's source is in the
 * handler's memory.
 */

/** Options of uffd_region_create_foreign(). */
struct uffd_foreign_opts {
	size_t   size;       /**< sizeof(struct uffd_foreign_opts) */
	uint64_t owner_addr; /**< start of the memory in the owner's address space */
	size_t   length;     /**< bytes, multiple of the page size */
	size_t   page_size;  /**< the memory's page size; 0: the fd's, else the base page */
	uint64_t modes;      /**< UFFDIO_REGISTER_MODE_* the owner registered it with */
	unsigned flags;      /**< 0 or UFFD_REGION_NO_ALIAS */
	int      fd;         /**< -1, or the backing tmpfs/hugetlbfs file (duplicated) */
	uint64_t fd_offset;  /**< offset of the region in fd, multiple of the page size */
};

/**
 * Declare a region whose memory lives in another process: the one that
 * opened the userfaultfd of @p u and registered
 * [owner_addr, owner_addr+length) with @p o->modes. Nothing is registered
 * or mapped in the owner; the region is recorded in the handle so that its
 * faults carry the region, the offset and the declared page size as length,
 * and every uffd_region_* call and UFFD_SKIP_EXISTING step uses that page
 * size. With a backing @p o->fd (the owner's memfd or hugetlbfs file), the
 * region keeps a close-on-exec duplicate of it (uffd_region_fd()) and maps
 * it as the alias view; the caller keeps its own descriptor.
 * uffd_region_base() is then an address in the owner's address space, never
 * to be dereferenced here. uffd_region_zap() is not possible (-EOPNOTSUPP),
 * nor uffd_region_discard() without fd; uffd_region_populate() without fd
 * copies into the owner's missing pages (UFFDIO_COPY). Destroying the
 * region leaves the owner's registration alone.
 * The memory's kind follows from the declared page size: above the base
 * page it is hugetlbfs memory. MISSING faults on hugetlbfs or shmem memory
 * need no feature from this handle (since 0.4): the owner registered the
 * range, which the kernel allowed, and UFFD_FEATURE_MISSING_HUGETLBFS and
 * _MISSING_SHMEM are announcements the kernel never checks -- an owner such
 * as Firecracker does not ask for them, so its fd's features lack them.
 * @return 0; -EINVAL (bad options, unaligned, page size not a power of two,
 *         fd's page size differs from the declared one, fd too small or not
 *         on tmpfs/hugetlbfs); -EBADF/-EACCES (fd closed / not O_RDWR);
 *         -EEXIST (overlaps a region of the handle); -EOPNOTSUPP (modes not
 *         covered by the handle's features); -ENOMEM.
 */
int uffd_region_create_foreign(struct uffd *u, const struct uffd_foreign_opts *o,
			       struct uffd_region **out);

/**
 * Give region @p r a page source: @p len bytes at @p src in this process
 * (an mmap of a snapshot file, say) holding the region's contents, the page
 * at offset off at src + off. @p len must cover the region; @p src NULL
 * clears the source. From then on the region remembers the pages the owner
 * gives back (REMOVE events: balloon, MADV_DONTNEED) so that their next
 * MISSING fault gets zero pages, never the old contents. The buffer must
 * stay readable while a loop may serve faults of the region.
 * @return 0; -EINVAL (NULL @p r, @p len shorter than the region, wrapping
 *         buffer); -ENOMEM.
 */
int uffd_region_set_source(struct uffd_region *r, const void *src, size_t len);

/** One row of the region table sent with uffd_handoff_send(). */
struct uffd_handoff_region {
	uint64_t owner_addr; /**< start in the sender's address space */
	uint64_t length;     /**< bytes, multiple of the page size */
	uint64_t page_size;  /**< 0: the fd's page size, else the base page */
	uint64_t modes;      /**< UFFDIO_REGISTER_MODE_* the range is registered with */
	uint64_t fd_offset;  /**< offset of the region in fd */
	int      fd;         /**< -1, or the backing file to send along */
};

/** Most rows a region table may have (uffd_handoff_opts.max_regions). */
#define UFFD_HANDOFF_REGIONS_MAX 65536u

/**
 * Send the userfaultfd of @p u, its feature set and a table of @p n regions
 * over the connected Unix socket @p sock (SOCK_STREAM or SOCK_SEQPACKET):
 * one message, its descriptors (the userfaultfd, then each distinct backing
 * fd) in one SCM_RIGHTS control message; wire format in
 * libuffd-handoff(7). Every row is checked as uffd_region_create_foreign()
 * would; rows must not overlap. Never raises SIGPIPE; gives up after 5
 * seconds when the peer does not read. The caller keeps its descriptors.
 * Each backing fd is sealed against shrinking (F_SEAL_SHRINK) first, as the
 * receiver requires: it must be a memfd made with MFD_ALLOW_SEALING (or
 * carry the seal already).
 * @return 0; -EINVAL (bad rows, more than UFFD_HANDOFF_REGIONS_MAX rows or
 *         252 distinct fds); -EBADF (a row's fd is not open); -EPERM (a
 *         backing fd cannot be sealed; nothing is sealed or sent); -ENOTSOCK,
 *         -EAFNOSUPPORT, -EPROTOTYPE (not a connected Unix stream or
 *         seqpacket socket); -EPIPE/-ECONNRESET (peer gone); -ETIMEDOUT.
 */
int uffd_handoff_send(int sock, const struct uffd *u,
		      const struct uffd_handoff_region *regions, size_t n);

/** Options of uffd_handoff_recv(). */
struct uffd_handoff_opts {
	size_t   size;        /**< sizeof(struct uffd_handoff_opts) */
	int      timeout_ms;  /**< for the whole message; 0: 5000, -1: none */
	unsigned max_regions; /**< most rows accepted; 0: 64; at most UFFD_HANDOFF_REGIONS_MAX */
};

/** What uffd_handoff_recv() received; freed with uffd_handoff_free(). */
struct uffd_handoff {
	struct uffd         *uffd;     /**< the sender's userfaultfd, features verified */
	struct uffd_region **regions;  /**< foreign regions, in table order */
	size_t               nregions;
	pid_t                pid;      /**< peer (SO_PEERCRED); 0 if in another pid namespace */
	uid_t                uid;
	gid_t                gid;
	int                  pidfd;    /**< of the peer, close-on-exec; -1 if unavailable */
};

/**
 * Receive what uffd_handoff_send() sent on the connected Unix socket
 * @p sock: a handle for the userfaultfd (uffd_open_fd(), with the feature
 * set the message states and the kernel confirms in /proc/self/fdinfo), a
 * foreign region for each row (uffd_region_create_foreign()), and the
 * peer's identity. Reads exactly one message, whatever the socket's
 * O_NONBLOCK and however the bytes are split; the descriptors may come with
 * any part of the message. Everything the peer sent is checked before use;
 * on failure every received descriptor is closed and the connection should
 * be closed too (its stream position is undefined).
 * @param o options, or NULL for the defaults
 * @return 0 with *out set; -EINVAL (bad arguments; a row that is
 *         unaligned, overlaps another, has length 0 or a page size that is
 *         not a power of two; the first descriptor is not a userfaultfd; a
 *         backing file not sealed against shrinking, F_SEAL_SHRINK);
 *         -EPROTO (not a handoff message, truncated, descriptors missing,
 *         surplus or cut off, features not those of the userfaultfd);
 *         -EPROTONOSUPPORT (another wire version); -E2BIG (more rows than
 *         max_regions); -EOPNOTSUPP (features unknown to this libuffd);
 *         -ETIMEDOUT; -ENOTSOCK/-EAFNOSUPPORT/-EPROTOTYPE; errors of
 *         uffd_region_create_foreign() for a row's fd; -ENOMEM.
 */
int uffd_handoff_recv(int sock, const struct uffd_handoff_opts *o,
		      struct uffd_handoff **out);

/**
 * Destroy the regions, close the userfaultfd handle and the pidfd, and free
 * @p h. Set a field to NULL (pidfd to -1) first to keep it. Remove the
 * handle from any loop first. NULL is fine.
 */
void uffd_handoff_free(struct uffd_handoff *h);

/* ------------------------------------------------------------------ */
/* 9. Restoring memory from a file (since 0.3)                         */
/* ------------------------------------------------------------------ */

/*
 * A restore serves the faults of some regions from a file (a memory
 * snapshot), or since 0.4 from any page source (section 10: layers of Diff
 * snapshots, a compressed snapshot, a source of your own), and brings their
 * pages in ahead of the faults: the pages of a
 * recorded trace first (the working set of an earlier run, in first-touch
 * order), then optionally all the rest, after which the regions can be
 * unregistered and the served process no longer depends on the handler.
 *
 * Demand faults always go first. A fault whose page is in the page cache of
 * the file is resolved on the loop thread at once (a non-blocking read, one
 * UFFDIO_COPY or UFFDIO_CONTINUE); otherwise its read is queued on the
 * restore's io_uring, driven by one restore thread that also runs the
 * prefetch, and the loop thread goes on. A fault on a page whose read is in
 * flight waits for that read. MISSING regions are filled with UFFDIO_COPY
 * from bounce buffers, MINOR regions (with an alias view) by reading into
 * the alias view and UFFDIO_CONTINUE. Pages the owner gives back (REMOVE
 * events: balloon, MADV_DONTNEED) are zero pages from then on, never the
 * file's contents again. Huge pages are read and resolved whole.
 *
 * Threading: set up (uffd_restore_add_region(), uffd_restore_load_trace())
 * before uffd_restore_start(), from one thread; uffd_restore_stats(),
 * uffd_restore_wait() and uffd_restore_save_trace() from any thread
 * afterwards.
 */
struct uffd_restore;

/** Options of uffd_restore_new(). */
struct uffd_restore_opts {
	size_t   size;        /**< sizeof(struct uffd_restore_opts) */
	unsigned flags;       /**< UFFD_RESTORE_* */
	unsigned queue_depth; /**< prefetch reads in flight; 0: 32 (demand reads are never limited) */
	size_t   max_read;    /**< bytes per merged read; 0: 256 KiB; at least one page */
	uint64_t fill_rate;   /**< UFFD_RESTORE_FILL: bytes per second; 0: as fast as demand allows */
	unsigned record_ms;   /**< UFFD_RESTORE_RECORD: record this long after the first fault; 0: until saved */
	uint64_t record_pages; /**< UFFD_RESTORE_RECORD: at most this many pages; 0: no limit */
	/**
	 * Called once on the restore thread when every page of every region
	 * is present (after the regions are unregistered with
	 * UFFD_RESTORE_DETACH). It may call uffd_loop_remove() and
	 * uffd_loop_stop(), not uffd_restore_free().
	 */
	void   (*on_complete)(void *ctx, struct uffd_restore *rs);
	void    *ctx;         /**< ctx of on_complete */
	/**
	 * Since 0.4: demand fault-around. A demand fault brings in, with its
	 * page, the absent pages around it in the aligned window of this many
	 * bytes (a power of two; 0: 64 KiB), in one read and one resolution;
	 * the window stops at the region's end and at any page that is not
	 * absent (present, given back, in flight). A fault right after the
	 * previous window doubles it, up to 256 KiB (or the window when
	 * larger), as the kernel's readahead does. Windows no larger than the
	 * page size, and UFFD_RESTORE_NO_AROUND, bring in the faulting page only;
	 * so does a restore while it records (UFFD_RESTORE_RECORD), whose trace
	 * must name every page touched.
	 */
	size_t   fault_around;
	/**
	 * Since 0.4: whole-block replay. The replay of a traced page brings
	 * in, with it, the absent pages of its aligned block of this many
	 * bytes (a power of two up to max_read and 1 MiB; blocks no larger
	 * than the page size bring the traced pages only), in one read and one
	 * resolution. 0: a block of 64 KiB only where the trace names at least
	 * 75% of its pages, elsewhere the traced pages only. A KVM guest
	 * whose MMU maps a fault's neighbours only when the host has them
	 * (shadow paging: 8 pages, 32 KiB) takes one exit per traced page
	 * unless the replay brings those neighbours too (bench/RESULTS.md).
	 */
	size_t   replay_block;
};
/** After the trace, bring in every other page, at fill_rate. */
#define UFFD_RESTORE_FILL   (1u << 0)
/** When every page is present: unregister the regions, then on_complete. */
#define UFFD_RESTORE_DETACH (1u << 1)
/** Record the pages of demand faults in first-touch order (uffd_restore_save_trace()). */
#define UFFD_RESTORE_RECORD (1u << 2)
/** Since 0.4: no demand fault-around (fault_around): a demand fault brings in its page only. */
#define UFFD_RESTORE_NO_AROUND (1u << 3)

/**
 * Create a restore. @return 0, or -EINVAL (bad options; DETACH without
 * FILL is allowed and completes when the trace and the faults have brought
 * every page), -ENOMEM.
 */
int uffd_restore_new(struct uffd_restore **out, const struct uffd_restore_opts *o);

/**
 * Serve region @p r from @p fd (a regular file or block device opened for
 * reading; duplicated) at @p offset: the region's page at off is the file's
 * bytes at offset + off. Regions are numbered in the order they are added
 * (a trace names them so). MISSING regions, or MINOR regions with an alias
 * view (register those MISSING too: a page missing from the page cache
 * raises no MINOR fault); the file must cover the region.
 * @return 0; -EINVAL (NULL, unaligned offset, region without MISSING or
 *         MINOR mode, MINOR without alias, file too short, restore
 *         started); -EBADF (fd not open for reading); -EBUSY (the region is
 *         in a loop or restore already); -ENOMEM.
 */
int uffd_restore_add_region(struct uffd_restore *rs, struct uffd_region *r,
			    int fd, uint64_t offset);

/**
 * Add the pages of the trace file @p path (written by
 * uffd_restore_save_trace(), format in libuffd-trace(5)) to the prefetch
 * order. Several traces merge: the union of their pages, each at its
 * earliest relative position. From a source whose blocks are larger than a
 * page (a compressed snapshot's frames, uffd_source_block_size()), the read
 * of a traced page brings the absent pages of its whole block with it: a
 * block is read once, however often the trace comes back to it.
 * Before uffd_restore_start().
 * @return 0; -EINVAL (NULL, restore started, the trace names regions of
 *         other sizes or page sizes than those added); -EBADMSG (not a
 *         trace, truncated, checksum wrong); -EPROTONOSUPPORT (another
 *         format version); -errno of open/read; -ENOMEM.
 */
int uffd_restore_load_trace(struct uffd_restore *rs, const char *path);

/**
 * Serve the regions with loop @p l (uffd_loop_add_region() each, with the
 * restore's handlers) and start the restore thread: trace first, then the
 * fill. The loop may run already or be started later.
 * @return 0; -EINVAL (NULL, no region, started already); errors of
 *         uffd_loop_add_region(); -ENOMEM; -errno of io_uring_queue_init.
 */
int uffd_restore_start(struct uffd_restore *rs, struct uffd_loop *l);

/**
 * Wait up to @p timeout_ms (-1: forever) until every page is present.
 * @return 0; -ETIMEDOUT; -ESRCH (the owner exited first); -EIO (a page
 *         could not be read: the restore cannot complete); -EINVAL.
 */
int uffd_restore_wait(struct uffd_restore *rs, int timeout_ms);

/**
 * States of the page-state map of uffd_restore_region_state(): one byte
 * per page of the region (since 0.4). A handler that dies leaves each page
 * of the map in one of them; its successor adopts the map.
 */
enum uffd_page_state {
	UFFD_PAGE_ABSENT = 0,   /**< not brought in yet */
	UFFD_PAGE_INFLIGHT = 1, /**< a read was under way (adopted: ABSENT again) */
	UFFD_PAGE_PRESENT = 2,  /**< installed with the source's bytes or a zero page */
	UFFD_PAGE_ZERO = 3,     /**< given back by the owner (REMOVE): zeros from now on */
	UFFD_PAGE_BAD = 4,      /**< its read failed (adopted: ABSENT again, read anew) */
	UFFD_PAGE_HOLE = 5,     /**< the source holds no data: a zero page, never a read */
};

/**
 * Keep the page states of region @p r (added to @p rs) in @p map, @p len
 * bytes, at least one per page, owned by the caller and left mapped until
 * uffd_restore_free(): e.g. a MAP_SHARED mapping of a memfd that a
 * supervising process keeps, so that the states outlive the handler. What
 * the map holds is adopted now: PRESENT, ZERO and HOLE pages count as done
 * and are never read again (a fault on one of them gets a zero page, or
 * only a wake-up when the page is mapped); INFLIGHT and BAD ones become
 * ABSENT. From then on the restore writes every state change into the map
 * (a REMOVE's ZERO as soon as its message is read). Before
 * uffd_restore_start() (since 0.4).
 * @return 0; -EINVAL (NULL, @p r not a region of @p rs, @p len shorter than
 *         its pages, a byte that is no enum uffd_page_state, restore
 *         started); -EBUSY (the region has a map already).
 */
int uffd_restore_region_state(struct uffd_restore *rs, struct uffd_region *r,
			      void *map, size_t len);

/**
 * Finish the restore now, for a handler that must go (a drain before its
 * exit or upgrade): from this call on it brings in every page not yet
 * present as fast as the demand faults allow, whatever UFFD_RESTORE_FILL
 * and fill_rate say, and when every page is present unregisters every
 * region and calls on_complete, as if it had been made with
 * UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH. Then the served process no longer
 * needs the handler. It returns at once; wait with uffd_restore_wait().
 * A restore that had completed before without UFFD_RESTORE_DETACH (every
 * page present, its on_complete called already) is detached by the call
 * itself before it returns, and on_complete is not called again:
 * uffd_restore_wait() returns 0 at once.
 * Any thread, after uffd_restore_start() (since 0.4).
 * @return 0; -EINVAL (NULL, not started); -ESRCH / -EIO (the restore
 *         ended first: the owner exited / a page could not be read).
 */
int uffd_restore_finish(struct uffd_restore *rs);

/**
 * Write the pages recorded so far (UFFD_RESTORE_RECORD) to @p path,
 * replacing it atomically (a temporary file, then rename(2)).
 * @return 0; -EINVAL (NULL, not recording, not started); -errno of the file calls.
 */
int uffd_restore_save_trace(struct uffd_restore *rs, const char *path);

/** Log2 buckets of a latency histogram: bucket i counts [2^i, 2^(i+1)) ns. */
#define UFFD_HIST_BUCKETS 40

/** Counters of a restore, versioned by size. */
struct uffd_restore_stats {
	size_t   size;             /**< sizeof(struct uffd_restore_stats) */
	uint64_t faults[3];        /**< demand faults by enum uffd_fault_kind */
	/** Service time by kind: from the handler's call to the resolution. */
	uint64_t latency[3][UFFD_HIST_BUCKETS];
	uint64_t pages_total;      /**< pages of all regions */
	uint64_t pages_present;    /**< of those, resolved (any way) */
	uint64_t pages_demand;     /**< brought in by demand faults */
	uint64_t pages_prefetched; /**< brought in by the trace */
	uint64_t pages_filled;     /**< brought in by the fill */
	uint64_t pages_zero;       /**< given back by the owner, served as zero pages */
	uint64_t bytes_read;       /**< from the files */
	uint64_t inflight_hits;    /**< demand faults that found their page's read in flight */
	uint64_t read_errors;      /**< failed or short reads */
	uint64_t pages_recorded;   /**< in the trace being recorded */
	uint64_t complete_ns;      /**< start to every page present; 0 while not */
	/** Since 0.4: pages the source holds no data for (holes, no layer), zeros with no read; known at start */
	uint64_t pages_hole;
	/** Since 0.4: of pages_demand, those brought in around a faulting page (fault_around) */
	uint64_t pages_around;
};
/**
 * Copy the restore's counters into @p s (set s->size first; a 0.3 caller's
 * smaller struct gets the fields it knows).
 * @return 0, or -EINVAL (NULL, size smaller than the 0.3 struct).
 */
int uffd_restore_stats(const struct uffd_restore *rs, struct uffd_restore_stats *s);

/**
 * The @p q quantile (0 < q <= 1) of histogram @p h of UFFD_HIST_BUCKETS
 * buckets, in nanoseconds: the upper bound of the bucket holding it.
 * @return that bound, or 0 for an empty histogram or a bad @p q.
 */
uint64_t uffd_hist_quantile(const uint64_t *h, double q);

/**
 * Stop the restore thread, leave the loop (the regions stay, without
 * handlers: demand faults then get the loop's default resolution), free
 * @p rs. Not from on_complete. NULL is fine.
 */
void uffd_restore_free(struct uffd_restore *rs);

/* ------------------------------------------------------------------ */
/* 10. Page sources: where a restore's bytes come from (since 0.4)     */
/* ------------------------------------------------------------------ */

/*
 * A page source is the one door between the restore engine and where a
 * page's bytes live: a local file, layers of files (a base and diffs), a
 * compressed snapshot, a server. The engine starts asynchronous reads of
 * byte ranges into buffers it owns and is told when each one completes; it
 * asks once, at uffd_restore_start(), what the source knows about each range
 * (data, zero, not in this layer) so that ranges without data are served
 * as zero pages with no read at all.
 *
 * Built-in sources: uffd_source_file() (reads on the restore thread's
 * io_uring), uffd_source_layered() (newest layer wins, holes fall through,
 * ranges no layer holds are zeros). Anyone can write another one: fill a
 * struct uffd_source_ops and call uffd_source_new(); libuffd-source(7)
 * explains how, with an example.
 *
 * Event loop: every read runs on the restore thread; many are in flight at
 * once with no thread per read. A source that waits on file descriptors
 * (sockets of an HTTP or NBD client) gives them, and a timeout, through its
 * poll op; the restore thread waits on them in its io_uring
 * (IORING_OP_POLL_ADD) next to its own reads and calls process when one is
 * ready, when the timeout has passed, or after uffd_source_notify() (the way
 * in for a source completing reads on threads of its own).
 *
 * Threading: read, advise, poll, process, attach, detach, and every done
 * and partial callback a source calls, run on the thread of the restore the
 * source is attached to (the restore thread), one at a time. extent and
 * read_nowait may be called from any thread, concurrently, and must not
 * block. uffd_source_notify() is for any thread. A source serves one
 * restore at a time (several regions of it at once); give another restore
 * its own source object.
 *
 * Memory: the engine bounds the reads it has in flight (queue_depth and its
 * demand slots); a source bounds its own memory by refusing a read with
 * -EAGAIN (the engine submits it again after a completion). Built-in sources
 * allocate everything when created or attached, nothing on the restore
 * thread: a fork() of the served process may hold malloc's lock while the
 * restore runs. A user source that allocates in read or process may stall
 * while a fork() is in progress, no more.
 */
struct uffd_source;
/** The restore a source is attached to (opaque); see uffd_source_attach(). */
struct uffd_source_env;

/** What a source holds for a range: uffd_source_extent(). */
enum uffd_extent {
	UFFD_EXTENT_DATA = 0,   /**< bytes to read (they may be zeros too) */
	UFFD_EXTENT_ZERO = 1,   /**< zeros, known without reading; hides older layers */
	UFFD_EXTENT_ABSENT = 2, /**< not in this layer: an older layer's bytes show; zeros if none */
};

/**
 * One asynchronous read, owned by whoever starts it (the engine, or a source
 * reading from another): it stays valid, with its buffer, until done runs.
 */
struct uffd_source_req {
	uint64_t off;   /**< first byte, in the source */
	size_t   len;   /**< bytes; the source fills all of buf[0, len) */
	void    *buf;   /**< where they go */
	/**
	 * Called once, on the restore thread: @p res 0 when every byte is in
	 * buf, else -errno (-EIO for data the source cannot give, -ECANCELED
	 * when the source is detached first). It may be called before
	 * uffd_source_read() returns, and may start other reads.
	 */
	void   (*done)(struct uffd_source_req *req, int res);
	/**
	 * Optional (NULL: none). A source whose bytes arrive in pieces (a
	 * remote chunk) may call it, before done, each time more of the start
	 * of buf holds its final bytes: buf[0, @p ready), ready growing. The
	 * engine maps the pages in that prefix at once, so faults waiting on
	 * them wake before the rest arrives.
	 */
	void   (*partial)(struct uffd_source_req *req, size_t ready);
	void    *ctx;     /**< the starter's */
	uintptr_t priv[4]; /**< the source's, while the read is in flight */
};

/**
 * A source's operations, versioned by size (set size to
 * sizeof(struct uffd_source_ops)). Only read is required; impl is the
 * pointer given to uffd_source_new().
 */
struct uffd_source_ops {
	size_t size; /**< sizeof(struct uffd_source_ops) */
	/**
	 * Start reading req->len bytes at req->off into req->buf. Return 0:
	 * req->done will run exactly once. Return -errno: it will not run;
	 * -EAGAIN means "at my limit of reads in flight, try again after a
	 * completion" (the way a source bounds its memory; the engine tries
	 * again after its next completion, or within a millisecond). The
	 * range is within the source's length. Restore thread.
	 */
	int  (*read)(void *impl, struct uffd_source_req *req);
	/**
	 * Optional. Copy @p len bytes at @p off into @p buf now if that costs
	 * no waiting (a page cache hit, a decompressed frame in a cache), else
	 * return -EAGAIN. 0 or -errno (-EAGAIN, or an error the source knows
	 * already). Any thread; must not block. The engine calls it from the
	 * fault handler before queueing a read.
	 */
	int  (*read_nowait)(void *impl, uint64_t off, size_t len, void *buf);
	/**
	 * Optional (NULL: everything is data). What the source holds at @p off:
	 * return an enum uffd_extent and set *run to the bytes from off, at
	 * most @p len and at least 1, that are all of that kind; or -errno.
	 * Any thread; must not block or read (extents are known at open).
	 */
	int  (*extent)(void *impl, uint64_t off, uint64_t len, uint64_t *run);
	/** Optional. A hint: [off, off+len) will be read soon (read-ahead). Restore thread. */
	void (*advise)(void *impl, uint64_t off, uint64_t len);
	/**
	 * Optional. The source joins a restore: set up what needs its loop
	 * (connections, rings), and uffd_source_attach() the sources it reads
	 * from with the same @p env. 0 or -errno (the restore does not start).
	 * Called on the thread of uffd_restore_start().
	 */
	int  (*attach)(void *impl, struct uffd_source_env *env);
	/**
	 * Optional. The restore ends: complete every read still in flight
	 * (done with -ECANCELED), except those waiting only on reads of the
	 * sources it reads from, which end as those do. Sources it attached
	 * are detached before it (the innermost first). Reads in the restore
	 * thread's io_uring are waited for; a source keeping another read
	 * past 2 s makes the restore keep its buffers rather than free them
	 * under a late write.
	 */
	void (*detach)(void *impl);
	/**
	 * Optional. The descriptors to wait on now: fill at most @p max of
	 * @p fds (fd and events), return how many; set *timeout_ns to when
	 * process must run even if none is ready (-1: no timeout; 0: at
	 * once). Asked again after each process. Restore thread.
	 */
	int  (*poll)(void *impl, struct pollfd *fds, unsigned max, int64_t *timeout_ns);
	/**
	 * Optional. Make progress (read sockets, complete reads): @p fds are
	 * the @p n descriptors the last poll gave, revents set for those that
	 * are ready (all 0 after a timeout or a notify). Must not block.
	 * Restore thread.
	 */
	void (*process)(void *impl, const struct pollfd *fds, unsigned n);
	/** Optional. Free impl: the last reference is gone (never while attached). */
	void (*destroy)(void *impl);
};

/** What uffd_source_new() needs to know of a source, versioned by size. */
struct uffd_source_info {
	size_t      size;       /**< sizeof(struct uffd_source_info) */
	const char *name;       /**< for messages, e.g. the file name (copied); NULL: "source" */
	uint64_t    length;     /**< bytes the source holds; reads stay below it */
	size_t      block_size; /**< natural unit (a chunk, a frame); 0: 4096. The engine aligns its reads to it */
	unsigned    max_fds;    /**< most descriptors poll gives at once (at most 64); 0: poll gives only a timeout */
	/**
	 * Blocks the source serves best in flight at once (a remote source:
	 * enough of them to cover its round trip); at most 256. 0: none. When
	 * set, a restore reads this source's prefetch and fill a whole block
	 * at a time (its prefetch read slots are a block long, block_size at
	 * most 64 MiB then) with this many such reads in flight.
	 */
	unsigned    read_depth;
};

/**
 * Create a source from @p ops and @p impl. On success it holds one
 * reference; on failure nothing of impl is freed (destroy is not called).
 * @return 0; -EINVAL (NULL ops, read or info, sizes, length 0, block_size
 *         not a power of two, max_fds above 64, read_depth above 256 or
 *         set with block_size above 64 MiB); -ENOMEM.
 */
int uffd_source_new(struct uffd_source **out, const struct uffd_source_ops *ops,
		    void *impl, const struct uffd_source_info *info);

/** Take one more reference to @p src (a restore and a layered source take their own). @return src. */
struct uffd_source *uffd_source_ref(struct uffd_source *src);

/** Drop a reference; the last one destroys the source. NULL is fine. */
void uffd_source_unref(struct uffd_source *src);

/** Bytes the source holds; 0 for NULL. */
uint64_t uffd_source_length(const struct uffd_source *src);

/** The source's natural block size; 0 for NULL. */
size_t uffd_source_block_size(const struct uffd_source *src);

/** The source's name, for messages ("" for NULL). */
const char *uffd_source_name(const struct uffd_source *src);

/**
 * Start a read (for sources that read from other sources, and tests): the
 * range is checked, then the source's read op is called. Restore thread
 * of an attached source.
 * @return 0 (req->done will run once); -EINVAL (NULL, empty, beyond the
 *         length); -ENOTCONN (not attached); -EAGAIN and errors of the op.
 */
int uffd_source_read(struct uffd_source *src, struct uffd_source_req *req);

/**
 * The read_nowait op, range checked. @return 0; -EAGAIN (no op, or the
 * bytes are not at hand); -EINVAL; errors of the op.
 */
int uffd_source_read_nowait(struct uffd_source *src, uint64_t off, size_t len, void *buf);

/**
 * What @p src holds at @p off: an enum uffd_extent, *run bytes from off
 * (1 <= *run <= len) all of that kind. Without an extent op: all data.
 * @return the kind; -EINVAL (NULL, len 0, beyond the length); errors of the op.
 */
int uffd_source_extent(struct uffd_source *src, uint64_t off, uint64_t len, uint64_t *run);

/** The advise op, if any, for a range within the source. */
void uffd_source_advise(struct uffd_source *src, uint64_t off, uint64_t len);

/**
 * Attach @p src to the restore behind @p env, from a source's attach op
 * (the engine attaches the sources of its regions itself). Attaching a
 * source twice to the same env counts, and is one attachment.
 * @return 0; -EBUSY (attached to another restore); -EINVAL; -ENOMEM;
 *         errors of the attach op.
 */
int uffd_source_attach(struct uffd_source *src, struct uffd_source_env *env);

/**
 * Have process called soon on the restore thread, e.g. after a thread of
 * the source's own queued a completion. Any thread; async-signal-safe.
 * Nothing happens while the source is not attached.
 */
void uffd_source_notify(struct uffd_source *src);

/**
 * Read @p len bytes at @p off of @p src into @p buf now, blocking the
 * calling thread (since 0.4): for a source that serves no restore at the
 * moment, e.g. to look at a snapshot's header or index before any VM
 * connects. The source is attached to a loop of the call's own (an
 * io_uring made for it), its reads driven there as a restore thread drives
 * them, and detached again: it can serve a restore afterwards. Not on a
 * restore thread; not for a source attached to a restore.
 * @p timeout_ms bounds the whole call (-1: only the source's own bounds,
 * e.g. a remote source's tries and timeouts).
 * @return 0 (every byte in buf); -EINVAL (NULL, empty or out of range,
 *         timeout_ms 0 or below -1); -EBUSY (the source serves a restore);
 *         -ETIMEDOUT; the error of a failed read of the source (-EIO);
 *         -ENOMEM; -errno of io_uring_queue_init or eventfd.
 */
int uffd_source_read_sync(struct uffd_source *src, uint64_t off, void *buf, size_t len, int timeout_ms);

/** Options of uffd_source_file(). */
struct uffd_source_file_opts {
	size_t   size;       /**< sizeof(struct uffd_source_file_opts) */
	unsigned flags;      /**< UFFD_SOURCE_FILE_* */
	uint64_t offset;     /**< the source's byte 0 is the file's byte offset */
	uint64_t length;     /**< 0: to the end of the file */
	const char *name;    /**< for messages; NULL: "fd N" */
};
/**
 * Holes of the file (found once with SEEK_DATA/SEEK_HOLE) are "not in this
 * layer" (UFFD_EXTENT_ABSENT), as in a Firecracker Diff snapshot, instead of
 * zeros (UFFD_EXTENT_ZERO, the default).
 */
#define UFFD_SOURCE_FILE_DIFF (1u << 0)

/**
 * A source reading a regular file or block device @p fd (duplicated; open
 * for reading) with the restore thread's io_uring; read_nowait is a
 * page-cache hit (RWF_NOWAIT). Its extents are found once here: holes of a
 * regular file read as zeros with no I/O (or fall through, with
 * UFFD_SOURCE_FILE_DIFF).
 * @return 0; -EBADF (fd not open for reading); -EINVAL (not a regular file
 *         or block device, range beyond its end, empty, unknown flags);
 *         -ENOMEM; -errno of lseek.
 */
int uffd_source_file(struct uffd_source **out, int fd, const struct uffd_source_file_opts *o);

/** Options of uffd_source_layered(). */
struct uffd_source_layered_opts {
	size_t      size;      /**< sizeof(struct uffd_source_layered_opts) */
	unsigned    max_reads; /**< reads of the layers in flight at once; 0: 256 */
	const char *name;      /**< for messages; NULL: "layered" */
};

/**
 * A source made of @p n layers, @p layers[0] the oldest (the base) and
 * layers[n-1] the newest, all of one length: each byte comes from the
 * newest layer whose extent there is DATA or ZERO; ranges no layer holds
 * are zeros (ABSENT from the whole, so a restore serves them with no read).
 * The layers' extents are merged once, here. Takes a reference to each
 * layer. Layers may be any sources, layered ones too.
 * @return 0; -EINVAL (NULL, n 0 or above 64, lengths differ: the message
 *         names the layer); -ENOMEM; errors of a layer's extent op.
 */
int uffd_source_layered(struct uffd_source **out, struct uffd_source *const *layers,
			unsigned n, const struct uffd_source_layered_opts *o);

/**
 * Serve region @p r of restore @p rs from @p src at @p offset: the region's
 * page at off is the source's bytes at offset + off. Like
 * uffd_restore_add_region() otherwise (which is this with
 * uffd_source_file()). Takes a reference to @p src; one source may serve
 * several regions of a restore.
 * @return 0; -EINVAL (NULL, unaligned offset, region mode, source too
 *         short, restore started); -EBUSY (the region is in a loop or
 *         restore already, or the source serves another restore); -ENOMEM.
 */
int uffd_restore_add_region_source(struct uffd_restore *rs, struct uffd_region *r,
				   struct uffd_source *src, uint64_t offset);

/* ------------------------------------------------------------------ */
/* 11. Firecracker's handshake (since 0.4)                             */
/* ------------------------------------------------------------------ */

/*
 * A Firecracker VM restored with the "Uffd" memory backend connects to its
 * handler's Unix socket and sends one message: its userfaultfd (SCM_RIGHTS)
 * and a JSON array of GuestRegionUffdMapping objects. The library reads and
 * checks it as untrusted input (a strict parser of exactly that format; no
 * JSON library), so that a custom handler needs only: uffd_open_fd(h->uffd,
 * h->features), uffd_region_create_foreign() per region, and a page source
 * (the restore engine, section 9).
 */

/** One guest memory region of the handshake. */
struct uffd_fc_region {
	uint64_t owner_addr; /**< base_host_virt_addr, in the VM's address space */
	uint64_t length;     /**< size, bytes */
	uint64_t offset;     /**< where the region starts in the memory snapshot file */
	uint64_t page_size;  /**< page_size, or page_size_kib (bytes despite its name) */
};

/** What a VM sent, checked. */
struct uffd_fc_handshake {
	int      uffd;       /**< the VM's userfaultfd, O_CLOEXEC, -1 once taken (set it so) */
	uint64_t features;   /**< its features, as uffd_features_of_fd() reads them */
	pid_t    pid;        /**< SO_PEERCRED; 0 when not visible in this pid namespace */
	uid_t    uid;        /**< SO_PEERCRED */
	gid_t    gid;        /**< SO_PEERCRED */
	int      pidfd;      /**< the peer's pidfd, O_CLOEXEC, or -1 (kernel before 5.3) */
	size_t   nregions;   /**< rows of @p regions; 0 in a handshake returned with an error */
	struct uffd_fc_region *regions; /**< in the order sent */
};

/** Options of uffd_fc_handshake_recv(), versioned by size. */
struct uffd_fc_opts {
	size_t   size;        /**< sizeof(struct uffd_fc_opts) */
	int      timeout_ms;  /**< for the whole message; 0: 5000; -1: none */
	int      cancel_fd;   /**< an fd whose readability ends the wait (a signalfd) when no byte waits to be read; 0 or -1: none */
	uint64_t file_size;   /**< 0, or the snapshot's size: every region must lie in it */
	unsigned max_regions; /**< 0: 4096 */
	unsigned flags;       /**< UFFD_FC_* */
};
/** Do not check the regions against the VM's mappings (/proc/PID/smaps). */
#define UFFD_FC_NO_MAPPING_CHECK (1u << 0)

/**
 * Read a Firecracker VM's handshake from the connected socket @p conn:
 * exactly one userfaultfd (initialised: its features from fdinfo) and one
 * JSON array of 1 to max_regions objects with unsigned integers
 * base_host_virt_addr, size, offset and page_size (or page_size_kib; both
 * must then agree), other members ignored, nothing after the array; each
 * page size a power of two that is the base page size or a huge page size
 * of this machine; addresses, sizes and offsets multiples of it; no wrap,
 * no overlap; with @p o->file_size, every region inside the file; unless
 * UFFD_FC_NO_MAPPING_CHECK, every region mapped in the VM with pages of its
 * declared size. The socket stays open (Firecracker keeps it open).
 *
 * The VM waits for its handler once it sent its userfaultfd: when an error
 * comes after that, *out is still set (nregions 0) so that the caller can
 * decide what becomes of the VM (its pidfd); else *out is NULL.
 * Free it with uffd_fc_handshake_free().
 * @return 0; -EINVAL (bad arguments); -ETIMEDOUT (no whole message in
 *         time); -ECANCELED (@p o->cancel_fd became readable, and what
 *         the VM sent so far was read);
 *         -ECONNRESET (the peer closed before its message ended);
 *         -EPROTO (the message is not a valid handshake: the sentence says
 *         what); -ERANGE (a region lies outside the file: the snapshot is
 *         not this VM's); -ENOMEM; -errno of recvmsg.
 */
int uffd_fc_handshake_recv(int conn, const struct uffd_fc_opts *o, struct uffd_fc_handshake **out);

/** Close what @p h still holds (uffd unless -1, pidfd) and free it. NULL is fine. */
void uffd_fc_handshake_free(struct uffd_fc_handshake *h);

/* ------------------------------------------------------------------ */
/* 12. Compressed snapshots (since 0.4)                                */
/* ------------------------------------------------------------------ */

/*
 * A compressed snapshot (format: libuffd-snapshot(5)) holds a memory image
 * in frames of a power-of-two size, each compressed on its own with zstd
 * and checked with a CRC32C on every read; all-zero frames take no space,
 * identical frames are stored once, and a diff names its parent and stores
 * only the frames that differ from it. A snapshot is opened as a chain of
 * layers, base first, newest last: a frame comes from the newest layer
 * that has it. Everything a file says is checked at open (sizes, offsets,
 * versions, the chain's identities) and a frame's bytes on every read: a
 * bad file is an error naming the file and frame, never wrong data.
 *
 * Decompressed frames are kept in a cache of a fixed size, allocated at
 * open, so that a frame is decompressed once however many pages of it are
 * read. Threading: a struct uffd_snap may be used from several threads
 * (its reads are serialised); the buffer of a read must not be memory the
 * snapshot itself serves.
 */
struct uffd_snap;

/** Options of uffd_snap_open(). */
struct uffd_snap_opts {
	size_t size;        /**< sizeof(struct uffd_snap_opts) */
	size_t cache_bytes; /**< bound of the decompressed-frame cache, taken at open; 0: 16 MiB; at least one frame */
	/**
	 * Threads of uffd_source_snap() that read and decompress frames, at
	 * most 64; 0: one per online CPU, at most 4, and 8 when a layer is a
	 * source (uffd_snap_open_sources(): they mostly wait for its reads).
	 */
	unsigned threads;
};

/**
 * Open the snapshot made of the @p n files @p paths, its base first, each
 * next one a diff of the one before (uffd_snap_pack() with a parent).
 * Every header and index is read and checked here, before any page is
 * served.
 * @return 0; -EINVAL (NULL, n 0, bad options; a diff whose parent is not
 *         the file before it, a file of another image size or frame size
 *         than the one before, a diff given as base); -EBADMSG (not a
 *         snapshot, truncated, header or index corrupt);
 *         -EPROTONOSUPPORT (a format version or flag this libuffd does not
 *         know); -errno of open/read; -ENOMEM. uffd_last_error() names the
 *         file.
 */
int uffd_snap_open(struct uffd_snap **out, const char *const *paths, unsigned n,
		   const struct uffd_snap_opts *o);

/**
 * Open the snapshot whose @p n layers (base first, as uffd_snap_open())
 * are the bytes of page sources (since 0.4): a file with uffd_source_file(),
 * an HTTP(S) or S3 object, an NBD export, a cached remote source, a source
 * of your own. Each layer's header and index are read here with
 * uffd_source_read_sync() and checked as uffd_snap_open() checks a file's;
 * the messages name the layers by uffd_source_name() (a URL). Takes a
 * reference to each source. Under uffd_source_snap() the compressed frames
 * are read with the layers' asynchronous reads on the restore thread (the
 * layers are attached to the restore with the snapshot's source) and
 * decompressed and checked on the source's threads; uffd_snap_read(),
 * uffd_snap_verify() and uffd_snap_merge() read them with
 * uffd_source_read_sync() (-EBUSY while the snapshot serves a restore).
 * @return as uffd_snap_open(); -EBUSY (a layer serves a restore);
 *         -ETIMEDOUT and read errors of a layer.
 */
int uffd_snap_open_sources(struct uffd_snap **out, struct uffd_source *const *layers, unsigned n,
			   const struct uffd_snap_opts *o);

/**
 * Read @p len bytes of the image at @p offset into @p buf: each frame from
 * the newest layer that has it, checked against its CRC32C.
 * @return 0; -EINVAL (NULL, range beyond the image); -EBADMSG (a frame does
 *         not decompress to its size or fails its checksum: the sentence
 *         names the file and frame); -EIO (file shorter than its index
 *         says); -errno of pread.
 */
int uffd_snap_read(struct uffd_snap *s, uint64_t offset, void *buf, size_t len);

/** What uffd_snap_extent() found. */
enum uffd_snap_kind {
	UFFD_SNAP_DATA = 1, /**< stored bytes (read them) */
	UFFD_SNAP_ZERO = 2, /**< all zero: nothing stored, nothing to read */
};

/**
 * What the image holds at @p offset: the kind, and in @p len the length of
 * the run of frames from @p offset of that kind (through all layers).
 * @return UFFD_SNAP_DATA or UFFD_SNAP_ZERO; -EINVAL (NULL, offset beyond
 *         the image).
 */
int uffd_snap_extent(const struct uffd_snap *s, uint64_t offset, uint64_t *len);

/** A layer of a snapshot, and the snapshot's cache (uffd_snap_info()). */
struct uffd_snap_info {
	size_t   size;          /**< sizeof(struct uffd_snap_info) */
	uint64_t image_size;    /**< bytes of the image */
	uint64_t frame_size;    /**< bytes of a frame */
	unsigned layers;        /**< files of the snapshot */
	unsigned version;       /**< of the layer's format */
	uint8_t  id[16];        /**< the layer's identity */
	uint8_t  parent_id[16]; /**< its parent's; zeros for a base */
	uint64_t frames;        /**< frames of the image */
	uint64_t frames_data;   /**< frames the layer holds bytes for (dedup'ed ones too) */
	uint64_t frames_zero;   /**< all-zero frames: stored as nothing */
	uint64_t frames_parent; /**< frames left to the parent (unchanged in a diff) */
	uint64_t frames_dedup;  /**< data frames stored once for several frames, counted past the first */
	uint64_t frames_raw;    /**< data frames stored uncompressed (zstd made them no smaller) */
	uint64_t stored_bytes;  /**< bytes of the layer's stored frames */
	uint64_t file_bytes;    /**< bytes of the layer's file */
	uint64_t cache_hits;    /**< whole snapshot: reads served by a cached frame */
	uint64_t cache_misses;  /**< whole snapshot: frames decompressed (into the cache or a whole-frame read) */
};

/**
 * Describe layer @p layer (0: the base) of @p s, and the snapshot's cache.
 * @return 0; -EINVAL (NULL, layer out of range, size this library cannot fill).
 */
int uffd_snap_info(const struct uffd_snap *s, unsigned layer, struct uffd_snap_info *info);

/**
 * Decompress and check every frame stored in every layer (also those a
 * newer layer hides). Layers read from sources (uffd_snap_open_sources())
 * are read frame by frame with uffd_source_read_sync().
 * @return 0; the first error of uffd_snap_read() (file and frame named).
 */
int uffd_snap_verify(struct uffd_snap *s);

/** Close the files and free @p s. NULL is fine. */
void uffd_snap_close(struct uffd_snap *s);

/** Options of uffd_snap_pack() and uffd_snap_merge(). */
struct uffd_snap_pack_opts {
	size_t   size;       /**< sizeof(struct uffd_snap_pack_opts) */
	unsigned flags;      /**< UFFD_SNAP_PACK_* */
	int      level;      /**< zstd level, 1..19; 0: 3 */
	uint64_t frame_size; /**< a power of two, 64 KiB..4 MiB; 0: the parent's, else 256 KiB */
	/** Store only the frames that differ from this snapshot's image. */
	struct uffd_snap *parent;
};
/**
 * The input is a Firecracker Diff snapshot: its holes are the parent's
 * bytes (unchanged pages), not zeros. Needs a parent.
 */
#define UFFD_SNAP_PACK_DIFF (1u << 0)

/**
 * Write the memory image read from @p fd (a regular file: a Firecracker
 * memory file, or with UFFD_SNAP_PACK_DIFF a sparse Diff file, extents
 * found with SEEK_DATA/SEEK_HOLE) to @p path as a compressed snapshot,
 * replacing it atomically (a temporary file, then rename(2)). With a
 * parent, the image must be of its size and the file stores the frames
 * that differ from it.
 * @return 0; -EINVAL (NULL, bad options, an image not a nonzero multiple of
 *         4 KiB, of another size than the parent, DIFF without parent);
 *         errors of uffd_snap_read() on the parent; -errno of the file
 *         calls; -ENOMEM.
 */
int uffd_snap_pack(const char *path, int fd, const struct uffd_snap_pack_opts *o);

/**
 * A page source (section 10) serving the image of @p s, all its layers
 * resolved: zero frames are ZERO extents (zero pages, no read), a frame is
 * decompressed once into the snapshot's cache and the faults on it are
 * served from there, on the fault handler's thread when it is cached.
 * Frames are fetched and decompressed on threads of the source's own
 * (uffd_snap_opts.threads), several at once, never on the restore thread;
 * a snapshot opened with uffd_snap_open_sources() has its compressed
 * frames read by its layers' sources, attached to the restore with it. The
 * block size is the frame size. On success the source owns @p s: it is
 * closed with the source's last reference (the caller may use it until it
 * drops its own). A frame that fails its checks completes its read with
 * -EIO, never wrong bytes.
 * @return 0; -EINVAL (NULL); errors of uffd_source_new().
 */
int uffd_source_snap(struct uffd_source **out, struct uffd_snap *s);

/**
 * Write the image of @p s (all its layers squashed) to @p path as a
 * snapshot of one layer (or, with o->parent, a diff of that), atomically.
 * @return as uffd_snap_pack().
 */
int uffd_snap_merge(const char *path, struct uffd_snap *s, const struct uffd_snap_pack_opts *o);

/* ------------------------------------------------------------------ */
/* 13. Remote sources: HTTP(S), S3, NBD, a local chunk cache (since 0.4) */
/* ------------------------------------------------------------------ */

/*
 * Page sources (section 10) that read a snapshot from another machine, run
 * on the restore thread's loop like any source (no thread per request):
 * an HTTP(S) or S3 object read with range GETs on libcurl's multi interface,
 * an NBD export read with libnbd's asynchronous calls. Both find the size
 * at creation, before any VM connects; a server that cannot be reached is
 * an error then. Each request has a timeout and is tried again after a
 * jittered backoff, a bounded number of times; then its read completes
 * with -EIO and the restore applies its failure policy (the page is never
 * mapped with wrong bytes). uffd_source_cache() keeps what a remote source
 * fetched in a local sparse file that several restores of the same
 * snapshot on one host share. libuffd-remote(7) explains the setup.
 */

/** Counters of a remote or caching source: uffd_source_remote_stats(). */
struct uffd_source_remote_stats {
	size_t   size;         /**< sizeof(struct uffd_source_remote_stats) */
	uint64_t requests;     /**< requests sent to the server (tries included) */
	uint64_t bytes;        /**< bytes received from the server */
	uint64_t retries;      /**< requests sent again after a failure */
	uint64_t timeouts;     /**< tries that ran out of time */
	uint64_t errors;       /**< reads completed with an error after their last try */
	uint64_t cache_hits;   /**< reads served from the local cache (uffd_source_cache()) */
	uint64_t cache_bytes;  /**< bytes of those */
	uint64_t cache_fills;  /**< chunks this source fetched into the cache */
};

/**
 * Read the counters of @p src: a source of uffd_source_http(),
 * uffd_source_nbd() or uffd_source_cache() (the cache's own and its inner
 * source's). Any thread; the figures are read without stopping the source.
 * @return 0; -EINVAL (NULL, size this library cannot fill); -ENOTSUP (not a
 *         remote or caching source).
 */
int uffd_source_remote_stats(struct uffd_source *src, struct uffd_source_remote_stats *st);

/** Options of uffd_source_http(), versioned by size; 0 is the default everywhere. */
struct uffd_source_http_opts {
	size_t      size;           /**< sizeof(struct uffd_source_http_opts) */
	size_t      chunk_size;     /**< queued reads within one chunk are coalesced into one range GET; 0: 4 MiB */
	unsigned    connections;    /**< transfers at once (HTTP/2 multiplexes them where offered); 0: 8 */
	unsigned    timeout_ms;     /**< per try of a request; 0: 60000 */
	unsigned    connect_timeout_ms; /**< per connection; 0: 10000 */
	unsigned    tries;          /**< tries per request; 0: 3 */
	unsigned    backoff_min_ms; /**< first backoff; 0: 50 */
	unsigned    backoff_max_ms; /**< bound of a backoff; 0: 500 */
	const char *const *headers; /**< NULL-terminated "Name: value" lines sent with every request (bearer tokens) */
	const char *endpoint;       /**< s3:// only: "http(s)://host[:port]" of an S3-compatible store (path-style) */
	const char *region;         /**< s3:// only; NULL: $AWS_REGION, else us-east-1 */
	const char *name;           /**< for messages; NULL: the URL */
};

/**
 * A source reading the object at @p url ("http://", "https://" or
 * "s3://bucket/key") with range GETs. Its size is found here (a GET of
 * byte 0, which must answer 206 with a Content-Range). Reads run on the
 * restore thread through libcurl's multi interface: several connections,
 * kept alive, HTTP/2 where offered; the queued reads within a chunk are
 * coalesced into one GET (the gaps between them fetched and dropped; a
 * demand read's GET spans at most 256 KiB), and each read completes as
 * soon as its bytes are in (partial
 * callbacks as they arrive). s3:// URLs are signed with AWS SigV4 from
 * $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY and $AWS_SESSION_TOKEN. A
 * response that is not 206 for the range asked (a server ignoring Range)
 * fails the read; server errors (5xx, 429), timeouts and broken
 * connections are tried again.
 * @return 0; -EINVAL (NULL, bad options, unknown scheme, bad URL, no
 *         credentials for s3://); -ECONNREFUSED, -EHOSTUNREACH, -ETIMEDOUT
 *         (server not reachable); -EPROTO (no range support: the sentence
 *         says what the server answered); -ENOENT (404), -EACCES (401, 403);
 *         -ENOMEM.
 */
int uffd_source_http(struct uffd_source **out, const char *url, const struct uffd_source_http_opts *o);

/** Options of uffd_source_nbd(), versioned by size; 0 is the default everywhere. */
struct uffd_source_nbd_opts {
	size_t      size;           /**< sizeof(struct uffd_source_nbd_opts) */
	unsigned    max_reads;      /**< reads in flight; 0: 64 */
	unsigned    timeout_ms;     /**< per try of a read; 0: 60000 */
	unsigned    tries;          /**< tries per read; 0: 3 */
	unsigned    backoff_min_ms; /**< first backoff; 0: 50 */
	unsigned    backoff_max_ms; /**< bound of a backoff; 0: 500 */
	unsigned    flags;          /**< UFFD_SOURCE_NBD_* */
	const char *name;           /**< for messages; NULL: the URI */
};
/** Do not ask for block status: every byte is read. */
#define UFFD_SOURCE_NBD_NO_BLOCK_STATUS (1u << 0)
/**
 * The export is a Diff layer (a Firecracker Diff snapshot's memory file):
 * its holes (LIBNBD_STATE_HOLE) are "not in this layer"
 * (UFFD_EXTENT_ABSENT), for uffd_source_layered().
 */
#define UFFD_SOURCE_NBD_DIFF (1u << 1)

/**
 * A source reading the NBD export at @p uri (nbd://, nbds://, nbd+unix://,
 * as nbd_connect_uri(3) takes) with libnbd's asynchronous reads, driven by
 * the restore thread's loop. The connection is made, the size read and the
 * export's allocation ("base:allocation" block status) fetched here: ranges
 * the server reports as zero are UFFD_EXTENT_ZERO (zero pages, no read). A
 * read that fails, or a connection that breaks or stalls past the timeout
 * (the connection is then made again), is tried again after a backoff.
 * @return 0; -EINVAL (NULL, bad options, bad URI); -ECONNREFUSED, -ENOENT
 *         (no socket) and other errors of the connection; -ENOMEM.
 */
int uffd_source_nbd(struct uffd_source **out, const char *uri, const struct uffd_source_nbd_opts *o);

/** Options of uffd_source_cache(), versioned by size. */
struct uffd_source_cache_opts {
	size_t      size;       /**< sizeof(struct uffd_source_cache_opts) */
	const char *dir;        /**< cache directory (created if missing); required */
	uint64_t    max_bytes;  /**< bound of the cache file's allocated bytes; 0: 4 GiB */
	size_t      chunk_size; /**< unit of caching, a power of two >= 4096; 0: the inner block size, at least 1 MiB */
	const char *key;        /**< what identifies the snapshot; NULL: the inner source's name, length and version (an HTTP ETag) */
};

/**
 * A source serving @p inner's bytes through a cache on this host: a sparse
 * file in @p o->dir named after the key, and a state file of one byte per
 * chunk whose locks (open file description locks) say which restore is
 * fetching a chunk, so that restores of the same snapshot by several
 * processes fetch each chunk once and a later restore reads the chunks
 * from the local file. A chunk is written, then marked present; a process
 * that dies while fetching leaves it absent. Past max_bytes, chunks are
 * served without being kept. Takes a reference to @p inner.
 * @return 0; -EINVAL (NULL, no dir, bad chunk size); -errno of the cache
 *         files; -ENOMEM.
 */
int uffd_source_cache(struct uffd_source **out, struct uffd_source *inner, const struct uffd_source_cache_opts *o);

#ifdef __cplusplus
}
#endif

#endif /* LIBUFFD_UFFD_H */
