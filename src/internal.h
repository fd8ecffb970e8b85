/* SPDX-License-Identifier: MIT */
/* Declarations shared by the library's files; never installed. */
#ifndef LIBUFFD_INTERNAL_H
#define LIBUFFD_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <pthread.h>

#include "compat.h"
#include "uffd.h"

#define UFFD_EXPORT __attribute__((visibility("default")))
#define UFFD_PRINTF(a, b) __attribute__((format(printf, a, b)))

/*
 * The library's calls to its exported functions reach its own code, even
 * when the application defines a function of the same name (QEMU and CRIU
 * have their own uffd_open and uffd_read_events). UFFD_OWN(fn) makes every
 * call to uffd_<fn> inside the library a call to the internal symbol
 * uffd__own_<fn>, and the definition is emitted under that name; the
 * defining file then writes UFFD_EXPORT_OWN(fn) after it, which exports
 * uffd_<fn> as an alias. The shared library makes the uffd__own_ names
 * local (libuffd.map); the static archive keeps only the libuffd.map names
 * global, and weak, so that an application's definition takes their place
 * for the application's calls alone (static-archive.sh).
 */
#define UFFD_OWN(fn) extern __typeof(uffd_##fn) uffd_##fn __asm__("uffd__own_" #fn)
#define UFFD_EXPORT_OWN(fn)                                                  \
	extern __typeof(uffd_##fn) uffd__export_##fn __asm__("uffd_" #fn)   \
		__attribute__((alias("uffd__own_" #fn), visibility("default")))

/* Every exported function. */
UFFD_OWN(open);
UFFD_OWN(open_fd);
UFFD_OWN(close);
UFFD_OWN(fd);
UFFD_OWN(features);
UFFD_OWN(probe);
UFFD_OWN(feature_name);
UFFD_OWN(last_error);
UFFD_OWN(register);
UFFD_OWN(unregister);
UFFD_OWN(continue_range);
UFFD_OWN(writeprotect);
UFFD_OWN(copy);
UFFD_OWN(zeropage);
UFFD_OWN(move);
UFFD_OWN(poison);
UFFD_OWN(wake);
UFFD_OWN(read_events);
UFFD_OWN(region_create);
UFFD_OWN(region_destroy);
UFFD_OWN(region_base);
UFFD_OWN(region_alias);
UFFD_OWN(region_length);
UFFD_OWN(region_page_size);
UFFD_OWN(region_fd);
UFFD_OWN(region_uffd);
UFFD_OWN(region_populate);
UFFD_OWN(region_continue);
UFFD_OWN(region_writeprotect);
UFFD_OWN(region_zap);
UFFD_OWN(region_discard);
UFFD_OWN(sigbus_add_region);
UFFD_OWN(sigbus_remove_region);
UFFD_OWN(dirty_start);
UFFD_OWN(dirty_scan);
UFFD_OWN(loop_new);
UFFD_OWN(loop_add_opts);
UFFD_OWN(loop_add);
UFFD_OWN(loop_add_region);
UFFD_OWN(loop_remove);
UFFD_OWN(loop_run);
UFFD_OWN(loop_run_once);
UFFD_OWN(loop_start);
UFFD_OWN(loop_stop);
UFFD_OWN(loop_stats);
UFFD_OWN(loop_counters);
UFFD_OWN(features_of_fd);
UFFD_OWN(fc_handshake_recv);
UFFD_OWN(fc_handshake_free);
UFFD_OWN(loop_free);
UFFD_OWN(loop_join);
UFFD_OWN(loop_current);
UFFD_OWN(handoff_send);
UFFD_OWN(handoff_recv);
UFFD_OWN(handoff_free);
UFFD_OWN(region_set_source);
UFFD_OWN(region_create_foreign);
UFFD_OWN(restore_new);
UFFD_OWN(restore_add_region);
UFFD_OWN(restore_load_trace);
UFFD_OWN(restore_start);
UFFD_OWN(restore_wait);
UFFD_OWN(restore_finish);
UFFD_OWN(restore_region_state);
UFFD_OWN(restore_save_trace);
UFFD_OWN(restore_stats);
UFFD_OWN(hist_quantile);
UFFD_OWN(restore_free);
UFFD_OWN(loop_sync);
UFFD_OWN(source_new);
UFFD_OWN(source_ref);
UFFD_OWN(source_unref);
UFFD_OWN(source_length);
UFFD_OWN(source_block_size);
UFFD_OWN(source_name);
UFFD_OWN(source_read);
UFFD_OWN(source_read_nowait);
UFFD_OWN(source_extent);
UFFD_OWN(source_advise);
UFFD_OWN(source_attach);
UFFD_OWN(source_notify);
UFFD_OWN(source_read_sync);
UFFD_OWN(source_file);
UFFD_OWN(source_layered);
UFFD_OWN(restore_add_region_source);
UFFD_OWN(snap_open);
UFFD_OWN(snap_open_sources);
UFFD_OWN(snap_read);
UFFD_OWN(snap_extent);
UFFD_OWN(snap_info);
UFFD_OWN(snap_verify);
UFFD_OWN(snap_close);
UFFD_OWN(snap_pack);
UFFD_OWN(snap_merge);
UFFD_OWN(source_snap);
UFFD_OWN(source_remote_stats);
UFFD_OWN(source_http);
UFFD_OWN(source_nbd);
UFFD_OWN(source_cache);

/* ---- rangemap.c: address -> object lookup, lock-free for readers ---- */

struct rangemap_entry {
	uintptr_t start;
	uintptr_t end;		/* exclusive */
	size_t    page_size;
	void     *ptr;
	/*
	 * Offset into the object of start: 0 for a whole object; a part that
	 * a cut or a shift left keeps its place in the object (a region's
	 * pages that a partial mremap moved).
	 */
	uint64_t  off;
};

struct rangemap_table;

/*
 * Readers (fault paths, the SIGBUS handler) never lock: they announce
 * themselves in one of two counters and load the current table. Writers
 * serialise on a mutex, publish a new table and wait for the readers of
 * the old one to leave before freeing it.
 */
struct rangemap {
	_Atomic(struct rangemap_table *) cur;
	atomic_uint epoch;
	atomic_uint readers[2];
	pthread_mutex_t wlock;
	struct rangemap_table *spare;	/* under wlock: reused by the next write */
};

#define RANGEMAP_INIT { .wlock = PTHREAD_MUTEX_INITIALIZER }

void rangemap_destroy(struct rangemap *m);
/* Copies the entry containing addr into *out; false if none. Signal-safe. */
bool rangemap_find(struct rangemap *m, uintptr_t addr, struct rangemap_entry *out);
/*
 * A read-side section spanning a find and the use of what it found: a
 * writer's insert/remove/move returns only after every section open when
 * it published has ended, so the object stays valid until
 * rangemap_read_end(). Signal-safe, nests; never end it with a longjmp.
 */
unsigned rangemap_read_begin(struct rangemap *m);
void rangemap_read_end(struct rangemap *m, unsigned ticket);
/* Copies the first entry ending after addr (holding it, or above); false if none. Signal-safe. */
bool rangemap_next(struct rangemap *m, uintptr_t addr, struct rangemap_entry *out);
/* -EEXIST when the range overlaps an entry, -ENOMEM. */
int rangemap_insert(struct rangemap *m, const struct rangemap_entry *e);
/* Removes the entry whose ptr is ptr; -ENOENT if none. */
int rangemap_remove(struct rangemap *m, const void *ptr);
/* Moves the entry whose ptr is ptr to start at new_start. */
int rangemap_move(struct rangemap *m, const void *ptr, uintptr_t new_start);
size_t rangemap_count(struct rangemap *m);
/*
 * Cuts [start, end) out of every entry (an entry straddling start or end
 * keeps its outer part) and adds the n entries of add, sorted and inside
 * [start, end), in one published table. Allocates nothing when there is
 * nothing to change. 0 or -ENOMEM (then nothing changed).
 */
int rangemap_replace(struct rangemap *m, uintptr_t start, uintptr_t end,
		     const struct rangemap_entry *add, size_t n);
/*
 * What lies in [from, from+len) moves to [to, to+len), replacing what was
 * there (a mremap). Allocates nothing when neither range holds an entry.
 */
int rangemap_shift(struct rangemap *m, uintptr_t from, uintptr_t to, size_t len);
/*
 * The same with no allocation and no waiting for the writers' lock, for a
 * loop thread that must not (ARCHITECTURE.md, rule 1): it uses the spare
 * table that rangemap_reserve() made. -EAGAIN (nothing changed) when the
 * lock is taken or the spare is missing or too small.
 */
int rangemap_shift_prealloc(struct rangemap *m, uintptr_t from, uintptr_t to, size_t len);
/* Makes sure a spare table holds the current entries plus extra. 0 or -ENOMEM. */
int rangemap_reserve(struct rangemap *m, size_t extra);
/* Entries a shift may add: each of its four edges splits at most one. */
#define RANGEMAP_SHIFT_EXTRA 4

/* ---- the handle ---- */

struct uffd {
	int fd;
	uint64_t features;	/* enabled set */
	size_t page_size;	/* base page size */
	atomic_int pagemap_fd;	/* /proc/self/pagemap for dirty.c, -1 until used */
	struct rangemap regions;	/* this handle's regions, by base view */
	/*
	 * Page sizes of the ranges uffd_register() registered, read when a
	 * fault is decoded instead of asking the kernel per fault. Only
	 * ranges of pages larger than the base page are kept (ptr NULL), and
	 * ranges registered when /proc could not be read (page_size 0: looked
	 * up per fault); a REMAP event moves them. An entry may outlive its mapping (munmap,
	 * a region's own unregistering): harmless, since a fault there needs
	 * a new registration, which replaces it.
	 */
	struct rangemap ranges;
	/* Made by uffd_open_fd(): its ranges were registered elsewhere, so
	 * what the table lacks is looked up in /proc/self per fault. */
	bool ranges_unknown;
	/* wpstate.c: default resolutions mapping pages, by epoch parity */
	atomic_uint wp_epoch;
	atomic_uint wp_sections[2];
	/*
	 * resolve-gate.c: open install sections (low half) and reading steps
	 * (high half); rgate_users: regions in a loop with a given_back hook
	 * (their handle's reads go through the gate while there are some).
	 */
	_Atomic uint64_t rgate;
	atomic_uint rgate_users;
};

/* ---- the region (region.c); loop.c and sigbus.c read it ---- */

struct uffd_region {
	struct uffd *uffd;
	void *base;		/* registered view; moved by a REMAP event */
	void *alias;		/* unregistered view, NULL with UFFD_REGION_NO_ALIAS */
	size_t length;
	size_t page_size;
	uint64_t modes;		/* UFFDIO_REGISTER_MODE_* */
	unsigned flags;		/* UFFD_REGION_* */
	int fd;
	bool own_fd;		/* created by the region, closed by destroy */
	uint64_t fd_offset;
	void *resv;		/* PROT_NONE reservation holding both views */
	size_t resv_len;
	/*
	 * A REMAP moved a part of the base view, not all of it: the parts
	 * (entries of uffd->regions with their offsets) are looked up per
	 * call. Set by uffd__regions_moved(), never cleared.
	 */
	bool split;
	struct rangemap_entry *pieces;	/* destroy: the parts to unmap */
	size_t npieces;
	/* loop.c: handlers given with uffd_loop_add_region(), if any */
	struct uffd_loop *loop;
	struct uffd_handlers loop_handlers;
	void *loop_ctx;
	/*
	 * loop-dispatch.c: called with loop_ctx by the loop thread that reads
	 * a REMOVE over the region, at once: before the fork gate, before any
	 * handler (the kernel zaps the range as soon as the message is read).
	 * off, len: the part of the region given back. Runs on the read path:
	 * lock-free, allocation-free. Set and cleared by restore.c while the
	 * region is out of the loop.
	 */
	void (*given_back)(void *ctx, uint64_t off, uint64_t len);
	/* loop.c: joined the loop with given_back set: counted in uffd->rgate_users */
	bool reads_gated;
	/*
	 * Set by the loop with `loop`, before it: how the region leaves the
	 * loop when destroyed. A hook, so that the region layer never names
	 * the loop (calls go one way).
	 */
	void (*leave_loop)(struct uffd_region *r);
	/* region-pin.c: handlers running for it; destroy waits for them */
	unsigned pins;
	bool doomed;		/* destroyed by its own handler: freed at the last unpin */
	/* sigbus.c: in-thread resolution, if added */
	uffd_sigbus_fn sigbus_fn;
	void *sigbus_ctx;
	/*
	 * Foreign region (uffd_region_create_foreign): base is the owner's
	 * address, in another address space, never touched nor registered
	 * here; alias (may be NULL) maps the region's dup of the owner's fd.
	 */
	bool foreign;
	/* pagestate.c: the page source and the pages the owner gave back */
	const void *src;	/* read it with uffd__region_source() */
	size_t src_len;
	atomic_ulong *removed;	/* a bit per page; NULL until a source is set */
	/* wpstate.c: a bit per page recorded write-protected; NULL without a record */
	atomic_ulong *wp;
};

/* ---- region.c ---- */

/*
 * A REMAP event moved [from, from+len) to [to, to+len): the regions there
 * move along, whole (uffd_region_base() follows) or in part (the moved
 * pages keep their offsets, so their faults, events and the region calls
 * still find the region). prealloc: no allocation and no waiting for a
 * lock, for a loop thread before the fork gate (ARCHITECTURE.md, rule 1);
 * -EAGAIN then: nothing changed, call again without. 0, -EAGAIN, -ENOMEM.
 */
int uffd__regions_moved(struct uffd *u, uintptr_t from, uintptr_t to, size_t len, bool prealloc);

/*
 * The checks of a foreign region's declaration that need no syscall
 * (page size, alignment, modes, flags, wrap-around), in the words of
 * `what` ("uffd_region_create_foreign", "uffd_handoff_recv: region 3").
 * A page size of 0 stands for the base page. -EINVAL with text.
 */
int uffd__foreign_check(const struct uffd_foreign_opts *o, const char *what);

/* ---- pagebits.c: a bit per page of a region, in atomic words ---- */

/*
 * For pagestate.c and wpstate.c. Lock-free and async-signal-safe but for
 * the allocation; mo is the memory order of each access.
 */
/* Zeroed bits for pages pages (free() them); NULL when out of memory. */
atomic_ulong *uffd__pagebits_new(size_t pages);
/* Pages [*first, *last] touched by [off, off+len) clamped to r; false if none. */
bool uffd__pagebits_span(const struct uffd_region *r, uint64_t off, uint64_t len, size_t *first, size_t *last);
/* Sets (or clears) bits [first, last], a word at a time. */
void uffd__pagebits_apply(atomic_ulong *w, size_t first, size_t last, bool set, memory_order mo);
/* Clears the bit of page and says whether it was set. */
bool uffd__pagebits_take(atomic_ulong *w, size_t page, memory_order mo);
/* How many pages from first (at most through last) share first's bit; the bit in *set. w NULL: all clear. */
size_t uffd__pagebits_run(atomic_ulong *w, size_t first, size_t last, memory_order mo, bool *set);

/* ---- pagestate.c: a region's page source and removed pages ---- */

/*
 * The source set with uffd_region_set_source() (covering the whole
 * region: page at offset off is at src + off), or NULL. Lock-free and
 * async-signal-safe.
 */
const void *uffd__region_source(const struct uffd_region *r);
/*
 * The per-page "removed" bits: the owner gave the pages back (a REMOVE
 * event: balloon, MADV_DONTNEED, MADV_REMOVE), so their next MISSING
 * fault must get zero pages, not the source's old contents. The bitmap
 * exists once a source was set (without one a MISSING fault gets zeros
 * anyway) and lives until the region is destroyed. All four calls are
 * lock-free (atomic words) and async-signal-safe, for any thread; they
 * do nothing (or report "not removed") without a bitmap. Offsets are
 * into the region; ranges are clamped to it; a page partly covered by
 * [off, off+len) counts as covered.
 */
void uffd__region_mark_removed(struct uffd_region *r, uint64_t off, uint64_t len);
void uffd__region_clear_removed(struct uffd_region *r, uint64_t off, uint64_t len);
/* Clears the bit of the page containing off and says whether it was set. */
bool uffd__region_take_removed(struct uffd_region *r, uint64_t off);
/*
 * The run of pages sharing the state of the page containing off, from
 * that page through at most the one containing off + len - 1: its length
 * in bytes, its state in *removed. Fault-around splits a range into runs
 * copied from the source and runs of zeros. 0 when off is outside the
 * region or len is 0.
 */
uint64_t uffd__region_removed_run(const struct uffd_region *r, uint64_t off,
				  uint64_t len, bool *removed);
/* Frees the bitmap; for region destroy. */
void uffd__region_pagestate_free(struct uffd_region *r);

/* ---- wpstate.c: which pages of a region are write-protected ---- */

/*
 * The record exists for a local region registered with
 * UFFDIO_REGISTER_MODE_WP on a handle without UFFD_FEATURE_WP_ASYNC;
 * wpstate.c says why, and what it assumes. Made at region creation
 * (-ENOMEM), freed with the region. Everything else is lock-free and
 * async-signal-safe; offsets are into the region, ranges clamped to it,
 * a page partly covered counts as covered.
 */
int uffd__region_wp_alloc(struct uffd_region *r);
/*
 * Whether u's faults can need a write-protected mapping at all: it has
 * UFFD_FEATURE_PAGEFAULT_FLAG_WP and not WP_ASYNC. Else every default
 * mapping is writable and nothing is recorded.
 */
bool uffd__wp_tracked(const struct uffd *u);
void uffd__region_wp_free(struct uffd_region *r);
void uffd__region_wp_set(const struct uffd_region *r, uint64_t off, uint64_t len, bool protect);
/*
 * The run of pages sharing the protection of the page containing off,
 * through at most the one containing off + len - 1: its length in bytes,
 * in *wp whether a fault resolution must map it write-protected. Without
 * a record: the whole span, protected only where that is the safe side
 * (uffd__region_wp_always). 0 when off is outside the region or len is 0.
 */
uint64_t uffd__region_wp_run(const struct uffd_region *r, uint64_t off, uint64_t len, bool *wp);
/* A foreign WP region: its pages' protection is unknown here, so always kept. */
bool uffd__region_wp_always(const struct uffd_region *r);
/* Records [addr, addr+len) of u's regions protected or not. */
void uffd__wp_record(struct uffd *u, uintptr_t addr, size_t len, bool protect);
/*
 * The first run of recorded-protected pages of u's regions at or after
 * *addr and before end: its start in *addr, its length in *len.
 */
bool uffd__wp_next(struct uffd *u, uintptr_t *addr, uintptr_t end, size_t *len);
/*
 * uffd__region_wp_run() by address over u's regions; outside any region
 * (up to the next) not protected. len > 0: the result is too.
 */
uint64_t uffd__wp_run_at(struct uffd *u, uintptr_t addr, uint64_t len, bool *wp);
/*
 * A default resolution's section: from reading the record to the last
 * ioctl of its mapping (no user code inside). uffd__wp_sync(), called by
 * a protecting call after its ioctl, returns once every section open when
 * its bits were set has ended (or after a bound of 1 s).
 */
unsigned uffd__wp_enter(struct uffd *u);
void uffd__wp_exit(struct uffd *u, unsigned ticket);
void uffd__wp_sync(struct uffd *u);

/* ---- error.c: the thread's last-error sentence ---- */

/*
 * Formats the sentence and returns err (a negative errno) for tail calls.
 * Async-signal-safe: it formats with uffd__vformat(), so the format may use
 * only %s %d %u %x %p %c %%, with the flags - and 0, a width, and l, ll or
 * z (no precision, no * width: the sentence would stop there).
 */
int uffd__err(int err, const char *fmt, ...) UFFD_PRINTF(2, 3);
/* vsnprintf() for that subset, async-signal-safe; the length it wanted. */
size_t uffd__vformat(char *buf, size_t size, const char *fmt, va_list ap);
/* Async-signal-safe: copies a constant string. Returns err. */
int uffd__err_const(int err, const char *msg);

/* fdinfo.c: the raw features field of fd's fdinfo (with the kernel's INITIALIZED bit); -errno, message set. */
int uffd__fdinfo_features(const char *c, int fd, uint64_t *features);
/* The same without a message: -EBADF, -EINVAL (not a userfaultfd), -errno. */
int uffd__fdinfo_quiet(int fd, uint64_t *features);
/* "EFAULT" for 14 (sign ignored); "E?" when unknown. */
const char *uffd__errname(int err);

/* ---- uffd.c ---- */

size_t uffd__base_page_size(void);
/* "MINOR_SHMEM | WP_ASYNC" for the bits of mask, into buf. */
const char *uffd__feature_list(uint64_t mask, char *buf, size_t size);

/* ---- vma.c: what /proc/self/smaps says about a range (slow paths only) ---- */

/* VMA_SHMEM: any shared file mapping; the kernel refuses non-shmem files. */
enum vma_kind { VMA_ANON = 1, VMA_SHMEM = 2, VMA_HUGETLB = 4 };
/* Bitwise OR of the kinds of the mappings covering [addr, addr+len); 0 if none. */
unsigned uffd__vma_kinds(uintptr_t addr, size_t len);
/* KernelPageSize of the mapping containing addr; 0 if unmapped. */
size_t uffd__vma_page_size(uintptr_t addr);
/*
 * The parts of [addr, addr+len) mapped with pages larger than the base
 * page, in address order, as entries (ptr NULL) in *out, to free(); *n of
 * them. One PROCMAP_QUERY per mapping (Linux 6.11), else one smaps parse.
 * 0 or -errno (then *out is NULL).
 */
int uffd__vma_huge_runs(uintptr_t addr, size_t len, struct rangemap_entry **out, size_t *n);

/* ---- ops.c: resolving ioctls ---- */

enum uffd_op {
	UFFD_OP_CONTINUE,
	UFFD_OP_COPY,
	UFFD_OP_ZEROPAGE,
	UFFD_OP_MOVE,
	UFFD_OP_POISON,
};

/*
 * One ioctl, no error text: async-signal-safe. Returns 0 or -errno and the
 * kernel's output field (bytes done, or -errno) in *count.
 */
int uffd__op_ioctl(int fd, enum uffd_op op, uint64_t dst, uint64_t src,
		   uint64_t len, uint64_t mode, int64_t *count);
/* One UFFDIO_WRITEPROTECT, no error text: async-signal-safe. */
int uffd__wp_ioctl(int fd, uint64_t start, uint64_t len, bool protect,
		   bool dontwake);
/*
 * For uffd__resolve() only, beside the public UFFD_* flags: a default
 * resolution (the loop's), which keeps the write-protection record itself
 * (wpstate.c): the call neither records nor waits.
 */
#define UFFD__DEFAULT (1u << 31)
/*
 * Protects again the pages of [addr, addr+len) recorded protected: a
 * default resolution just mapped them writable. 0 or the ioctl's -errno.
 * Async-signal-safe.
 */
int uffd__wp_keep(struct uffd *u, uintptr_t addr, size_t len);
/*
 * The whole resolving call behind uffd_copy() and friends: checks, partial
 * progress, EEXIST skipping, error text, the write-protection record.
 * page_size 0 means look it up. Async-signal-safe.
 */
int uffd__resolve(struct uffd *u, enum uffd_op op, uintptr_t dst,
		  uintptr_t src, size_t len, unsigned flags, size_t page_size,
		  size_t *done);
/*
 * Page size at addr: the region's, else the registered range's, else the
 * base page. Async-signal-safe, but for what the table does not know (a
 * handle made by uffd_open_fd(), a range registered while /proc could not
 * be read): the mapping's, looked up in /proc/self.
 */
size_t uffd__page_size_at(struct uffd *u, uintptr_t addr);
/*
 * A REMAP event: the registered ranges' page sizes move along. prealloc:
 * no allocation, no waiting for a lock (-EAGAIN: nothing changed, call
 * again without). 0, -EAGAIN or -ENOMEM.
 */
int uffd__ranges_moved(struct uffd *u, uintptr_t from, uintptr_t to, size_t len, bool prealloc);
/*
 * A fork child's handle: its address space is a copy of the parent's at
 * the fork, so are its registrations: the child's page-size table starts
 * as the parent's (registered ranges, and regions' page sizes), and its
 * own REMAP events move it from there. Without it the child's faults
 * would be sized by looking at the parent's mappings. Call before the
 * child's messages are read. 0 or -ENOMEM (the child then looks up what
 * its table lacks, as any handle of uffd_open_fd()).
 */
int uffd__ranges_inherit(struct uffd *child, struct uffd *parent);
/* uffd_writeprotect() with a known page size (0: base page). */
int uffd__writeprotect(struct uffd *u, uintptr_t addr, size_t len,
		       bool protect, unsigned flags, size_t page_size);
/* UFFD_FEATURE_* a VMA_SHMEM or VMA_HUGETLB mapping needs for modes. */
uint64_t uffd__kind_needs(unsigned kind, uint64_t modes, uint64_t features);
/* -EINVAL with text unless addr/len are non-empty, aligned and not wrapping. */
int uffd__check_range(const char *what, uintptr_t addr, size_t len,
		      size_t page_size);

/* ---- dirty.c ---- */

#ifdef LIBUFFD_TEST_HOOKS
/* White-box tests only: replaces the PAGEMAP_SCAN ioctl of uffd_dirty_scan(). */
struct pm_scan_arg;
extern long (*uffd__test_pagemap_scan)(int fd, struct pm_scan_arg *arg);
#endif

#ifdef LIBUFFD_TEST_HOOKS
/* White-box tests only: called by a loop thread right after it read n messages, before their early step. */
extern void (*uffd__test_read_early)(const struct uffd_msg *m, size_t n);
#endif

/* ---- sigbus.c ---- */

/* Drops r from in-thread resolution if it was added; for region destroy. */
void uffd__sigbus_forget(struct uffd_region *r);

/* ---- forkgate.c: user code and allocation on loop threads vs fork() ---- */

/* Installs the pthread_atfork() hooks, once per process. */
void uffd__gate_init(void);
/*
 * Opens a section in which a loop thread may run user code or allocate;
 * false while a fork() is in progress (queue the work instead). Nests.
 */
bool uffd__gate_enter(void);
void uffd__gate_leave(void);
/*
 * A loop thread whose queue fills asks for the gate (on) until it drained
 * (off); forks not yet begun wait meanwhile. *wants: the thread's flag.
 */
void uffd__gate_want(bool *wants, bool on);
/*
 * A loop thread's reader for forks from its own handlers: start() runs in
 * the prepare hook of a fork on a thread inside a section (it may
 * allocate; NULL: nothing to read), stop() in the parent hook. Set by
 * the loop for the thread that drives a runner, NULL when it stops.
 */
struct uffd__gate_reader {
	void *(*start)(void *arg);
	void (*stop)(void *token);
	void *arg;
};
void uffd__gate_set_reader(const struct uffd__gate_reader *r);

/* ---- region-pin.c: handlers running for a region vs its destroy ---- */

/* Around a handler or callback for r, on a loop thread (one pin per thread). */
void uffd__region_pin(struct uffd_region *r);
/* The last unpin of a region its own handler destroyed frees the struct. */
void uffd__region_unpin(struct uffd_region *r);
/*
 * After r left the region map, waits until no handler of r runs on
 * another thread. True when this thread runs one (a handler destroys its
 * own region): the caller releases everything but the struct, which the
 * last unpin frees when the handler returns.
 */
bool uffd__region_unpin_wait(struct uffd_region *r);

/* ---- resolve-gate.c: installs vs reads that may give pages back ---- */

/* A region with a given_back hook joins (on) or leaves (off) a loop on u. */
void uffd__rgate_use(struct uffd *u, bool on);
/* Whether u's reads are steps of the gate: poll, then read and hooks. */
bool uffd__rgate_used(const struct uffd *u);
/*
 * Around the look at pages' states and the ioctl that installs data
 * there; waits while a reading step is under way. Never around a read.
 */
void uffd__rgate_install_begin(struct uffd *u);
void uffd__rgate_install_end(struct uffd *u);
/*
 * Around a non-blocking read of u and the given_back hooks of what it
 * brought; waits for the open install sections. Never around an install.
 */
void uffd__rgate_read_begin(struct uffd *u);
void uffd__rgate_read_end(struct uffd *u);

/* ---- loop.c ---- */

/* The region leaves the loop it was added to (uffd_region_destroy, via r->leave_loop). */
void uffd__loop_forget_region(struct uffd_region *r);

/* ---- event.c ---- */

/* Decodes one 32-byte uffd_msg; -EINVAL for an unknown or malformed one. */
int uffd__decode_msg(struct uffd *u, const void *msg, struct uffd_event *ev);
/*
 * A REMAP message (else nothing): the handle's bookkeeping moves with the
 * mapping (the registered ranges' page sizes, the regions), what
 * uffd__remap_early() left undone. May allocate. Call it outside any
 * read section of u->regions (a write waits for the readers).
 */
void uffd__remap_apply(struct uffd *u, struct uffd_msg *m);
/*
 * A REMAP message's bookkeeping moves now, with no allocation and no lock
 * an application thread may hold (the reading path, before the message
 * may wait for the fork gate): marked in the message (its reserved1
 * byte) for the decode. False when it could not be done whole: the
 * decode does the rest.
 */
bool uffd__remap_early(struct uffd *u, struct uffd_msg *m);
/* A REMAP message's reserved1: what of its move is done. */
#define REMAP_DONE_RANGES  1u
#define REMAP_DONE_REGIONS 2u
#define REMAP_EARLY_DONE   (REMAP_DONE_RANGES | REMAP_DONE_REGIONS)

/* ---- options structs (libbpf style) ---- */

/*
 * Copies a caller's options struct of caller_size bytes into a zeroed
 * known_size struct. -EINVAL when caller_size is too small to hold the size
 * field or when bytes beyond what this library knows are not zero.
 */
int uffd__opts_copy(void *dst, size_t known_size, const void *src,
		    size_t caller_size, const char *what);

#endif /* LIBUFFD_INTERNAL_H */
