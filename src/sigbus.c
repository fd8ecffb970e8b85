/* SPDX-License-Identifier: MIT */
/*
 * In-thread resolution (SIGBUS mode). With UFFD_FEATURE_SIGBUS a fault in a
 * registered range queues no message: the faulting thread gets SIGBUS. One
 * process-wide handler finds the region of si_addr in a lock-free map,
 * calls the region's function and resolves the fault with one ioctl, so the
 * thread goes on without a context switch. Any other SIGBUS goes to the
 * disposition that was there before ours, as if libuffd were not loaded.
 *
 * Everything reachable from the handler is async-signal-safe: no malloc,
 * no lock, no formatting; errno is saved and restored.
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "internal.h"

/* Regions added, by base view; ptr is the struct uffd_region. */
static struct rangemap sigbus_map = RANGEMAP_INIT;
/* Serialises add and remove, and installing and restoring the handler. */
static pthread_mutex_t sigbus_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t nregions;		/* under sigbus_lock */
static bool installed;		/* under sigbus_lock */

/*
 * The disposition found when ours was installed. Two slots, so that a
 * handler still chaining to the old one never reads a half-written struct.
 */
static struct sigaction prev_sa[2];
static atomic_uint prev_slot;
/* The previous handler had SA_RESETHAND and ran once: default from now on. */
static atomic_bool prev_spent;

/*
 * Source of MISSING faults on hugetlb, which has no ZEROPAGE, and on WP
 * regions, where ZEROPAGE would drop the protection: never-touched
 * private anonymous memory reads as zeros and costs no memory. Grown under
 * sigbus_lock before a region needing it is published. Handlers load it in
 * a rangemap read section, so it (and the smaller ones it replaced) is
 * unmapped only when the last region has left and the sections are over.
 */
static _Atomic(const void *) zero_src;
static size_t zero_len;	/* under sigbus_lock */
static struct { void *p; size_t len; } zero_old[4];	/* replaced sources */

/* ---- the signal path ---- */

/* What the signal frame tells about the faulting access. */
struct access {
	bool known;	/* present and write come from the frame (x86) */
	bool present;	/* the page is mapped: a protection fault */
	bool write;
};

/*
 * Where the frame does not tell (not x86): the page that this thread's
 * last fault found mapped already. A fault again at that page, with
 * nothing resolved in between, is a fault on a mapped page, so a
 * write-protect fault. initial-exec: no lazy allocation in a handler.
 */
static _Thread_local uintptr_t found_mapped __attribute__((tls_model("initial-exec")));

/* The page-fault error code where the frame has it (x86): present, write. */
static struct access access_info(const void *uc, uintptr_t page)
{
	struct access a = { .present = found_mapped == page };

	found_mapped = 0;
#if defined(REG_ERR) && defined(REG_TRAPNO) && (defined(__x86_64__) || defined(__i386__))
	const ucontext_t *ctx = uc;

	if (ctx->uc_mcontext.gregs[REG_TRAPNO] == 14) {	/* #PF */
		a.known = true;
		a.present = ctx->uc_mcontext.gregs[REG_ERR] & 1;
		a.write = ctx->uc_mcontext.gregs[REG_ERR] & 2;
	}
#else
	(void)uc;
#endif
	return a;
}

/* A protection fault on a mapped page can only be write-protect. */
static enum uffd_fault_kind fault_kind(uint64_t modes, const struct access *a)
{
	bool wp = modes & UFFDIO_REGISTER_MODE_WP;

	if (wp && (a->present || !(modes & (UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_MISSING))))
		return UFFD_FAULT_WP;
	return (modes & UFFDIO_REGISTER_MODE_MINOR) ? UFFD_FAULT_MINOR : UFFD_FAULT_MISSING;
}

/*
 * On a region registered for write-protection a page is mapped
 * write-protected exactly when the region's record says it is protected
 * (wpstate.c), which every protecting call of the library keeps, with no
 * system call. The record is read, the page mapped and, mapped writable,
 * looked at again inside one section, which a protecting call waits for.
 */

static long long mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/*
 * Protecting a page mapped writable a moment ago: -EAGAIN (an event is
 * pending) is tried again for up to 2 ms, for another thread to read the
 * event; the access goes on after this, whatever the outcome.
 */
static int protect_again(int fd, uintptr_t addr, size_t len)
{
	long long end = mono_ns() + 2000000;
	int err;

	while ((err = uffd__wp_ioctl(fd, addr, len, true, true)) == -EAGAIN && mono_ns() < end)
		sched_yield();
	return err;
}

/* Pages recorded protected since we looked, just mapped writable: protect them again. */
static int keep_wp(const struct uffd_region *r, uintptr_t addr, size_t len)
{
	uintptr_t base = (uintptr_t)uffd_region_base(r), a = addr;
	uint64_t n;
	bool wp;
	int err = 0;

	if (!(r->modes & UFFDIO_REGISTER_MODE_WP))
		return 0;
	for (; a < addr + len && (n = uffd__region_wp_run(r, a - base, addr + len - a, &wp)); a += n)
		if (wp && !err)
			err = protect_again(r->uffd->fd, a, n);
	return err;
}

/* One CONTINUE over a run of equal protection. */
static int continue_run(const struct uffd_region *r, uintptr_t addr, size_t len, bool wp)
{
	int fd = r->uffd->fd;
	int64_t count;
	int err;

	if (!wp) {
		err = uffd__op_ioctl(fd, UFFD_OP_CONTINUE, addr, 0, len, UFFDIO_CONTINUE_MODE_DONTWAKE, &count);
		return err ? err : keep_wp(r, addr, len);
	}
	err = uffd__op_ioctl(fd, UFFD_OP_CONTINUE, addr, 0, len,
			     UFFDIO_CONTINUE_MODE_DONTWAKE | UFFDIO_CONTINUE_MODE_WP, &count);
	if (err != -EINVAL)
		return err;
	/* Before Linux 6.4 CONTINUE has no MODE_WP: map, then protect. */
	err = uffd__op_ioctl(fd, UFFD_OP_CONTINUE, addr, 0, len, UFFDIO_CONTINUE_MODE_DONTWAKE, &count);
	return err ? err : uffd__wp_ioctl(fd, addr, len, true, true);
}

/*
 * MISSING: ZEROPAGE, which has no MODE_WP; so for a protected run, and on
 * hugetlb (no zero page), a copy of never-touched zeros.
 */
static int zero_run(const struct uffd_region *r, uintptr_t addr, size_t len, bool wp)
{
	const void *src = atomic_load(&zero_src);
	uint64_t mode = UFFDIO_COPY_MODE_DONTWAKE | (wp ? UFFDIO_COPY_MODE_WP : 0);
	int64_t count;
	int err;

	if (!wp && r->page_size == r->uffd->page_size)
		err = uffd__op_ioctl(r->uffd->fd, UFFD_OP_ZEROPAGE, addr, 0, len,
				     UFFDIO_ZEROPAGE_MODE_DONTWAKE, &count);
	else if (!src || len > r->page_size)	/* the source is one page of the region */
		return -EINVAL;
	else
		err = uffd__op_ioctl(r->uffd->fd, UFFD_OP_COPY, addr, (uintptr_t)src, len, mode, &count);
	return err || wp ? err : keep_wp(r, addr, len);
}

/*
 * [addr, addr+len) in runs of equal protection, each mapped by fn; the
 * first failure ends it. A MISSING copy of zeros goes a page at a time.
 */
static int map_runs(const struct uffd_region *r, uintptr_t addr, size_t len,
		    int (*fn)(const struct uffd_region *, uintptr_t, size_t, bool))
{
	uintptr_t base = (uintptr_t)uffd_region_base(r), a = addr;
	bool tracked = (r->modes & UFFDIO_REGISTER_MODE_WP) && uffd__wp_tracked(r->uffd);
	unsigned t = tracked ? uffd__wp_enter(r->uffd) : 0;	/* decided and mapped in one section */
	int err = 0;

	while (!err && a < addr + len) {
		bool wp = false;
		uint64_t n = uffd__region_wp_run(r, a - base, addr + len - a, &wp);

		if (!n) {
			err = -EINVAL;	/* outside the region */
			break;
		}
		if (fn == zero_run && (wp || r->page_size != r->uffd->page_size))
			n = r->page_size;
		err = fn(r, a, n, wp);
		a += n;
	}
	if (tracked)
		uffd__wp_exit(r->uffd, t);
	return err;
}

/*
 * One resolving ioctl. No thread ever sleeps on a SIGBUS-mode uffd, so
 * nothing needs waking. -EAGAIN (partial progress, or an event pending)
 * is left to the retried access.
 */
static int resolve_once(const struct uffd_region *r, enum uffd_fault_kind kind,
			uintptr_t addr, size_t len)
{
	int err;

	switch (kind) {
	case UFFD_FAULT_WP:
		err = uffd__wp_ioctl(r->uffd->fd, addr, len, false, true);
		if (!err)	/* after the ioctl (wpstate.c: ordering) */
			uffd__region_wp_set(r, addr - (uintptr_t)uffd_region_base(r),
					    len, false);
		return err;
	case UFFD_FAULT_MINOR:
		return map_runs(r, addr, len, continue_run);
	case UFFD_FAULT_MISSING:
		break;
	}
	return map_runs(r, addr, len, zero_run);
}

/*
 * Resolve the faulting page. Mapped already (EEXIST): another thread was
 * first. The retried access then succeeds, or, a write to a page mapped
 * write-protected, comes back as a fault on a mapped page, which is a WP
 * fault. The protection is never lifted here: on EEXIST the fault is not
 * known to be a write-protect fault of this access.
 */
static int resolve_page(const struct uffd_region *r, enum uffd_fault_kind kind,
			const struct access *a, uintptr_t addr, size_t len)
{
	int err = resolve_once(r, kind, addr, len);

	if (err == -EEXIST && kind != UFFD_FAULT_WP) {
		if (!a->known)
			found_mapped = addr;
		err = 0;
	} else if (err == -EFAULT && kind == UFFD_FAULT_MINOR && (r->modes & UFFDIO_REGISTER_MODE_MISSING)) {
		/* MINOR|MISSING region: no page in the page cache means a hole. */
		err = resolve_once(r, UFFD_FAULT_MISSING, addr, len);
	}
	return err == -EAGAIN ? 0 : err;
}

/*
 * The range the function asked for, if it covers the faulting page; any
 * failure there (a page mapped in the middle, ...) falls back to the page
 * alone, so a widened range can never make the thread fault forever.
 */
static int resolve_fault(const struct uffd_region *r, enum uffd_fault_kind kind,
			 const struct access *a, const struct uffd_fault *f,
			 uintptr_t page, size_t ps)
{
	uintptr_t start = (uintptr_t)f->addr;

	if ((start != page || f->len != ps) && start <= page && page + ps - start <= f->len &&
	    !resolve_once(r, kind, start, f->len))
		return 0;
	return resolve_page(r, kind, a, page, ps);
}

static const char *resolve_error(int err)
{
	switch (err) {
	case -EFAULT:
		return "SIGBUS in a uffd_sigbus region: resolving failed with EFAULT (no page in the page cache "
		       "for a MINOR fault: write it through the alias view first; or beyond the end of the file); "
		       "the signal went to the previous SIGBUS disposition";
	case -ENOENT:
		return "SIGBUS in a uffd_sigbus region: resolving failed with ENOENT (the range is no longer "
		       "mapped or registered); the signal went to the previous SIGBUS disposition";
	case -EINVAL:
		return "SIGBUS in a uffd_sigbus region: resolving failed with EINVAL (the range is not registered "
		       "with the region's handle in that mode); the signal went to the previous SIGBUS disposition";
	default:
		return "SIGBUS in a uffd_sigbus region: the resolving ioctl failed; "
		       "the signal went to the previous SIGBUS disposition";
	}
}

/* Call the region's function and act on its verdict; false: not resolved. */
static bool run_region(struct uffd_region *r, const struct rangemap_entry *e,
		       const siginfo_t *si, void *uc)
{
	uintptr_t page = (uintptr_t)si->si_addr & ~(uintptr_t)(e->page_size - 1);
	struct uffd_fault f = {
		.uffd = r->uffd, .region = r, .addr = (void *)page,
		.offset = page - e->start, .len = e->page_size, .tid = gettid(),
	};
	struct access a = access_info(uc, page);
	enum uffd_fault_kind kind;
	int verdict, err;

	f.write = a.write;
	f.kind = kind = fault_kind(r->modes, &a);
	verdict = r->sigbus_fn(r->sigbus_ctx, &f);
	switch (verdict) {
	case UFFD_HANDLED:
	case UFFD_DEFER:	/* retry: the access faults again unless resolved meanwhile */
	case UFFD_RETRY:	/* the same: events are read by whoever reads the handle */
		return true;
	case UFFD_RESOLVE:
		err = resolve_fault(r, kind, &a, &f, page, e->page_size);
		if (err)
			uffd__err_const(err, resolve_error(err));
		return !err;
	default:
		uffd__err_const(-EINVAL, verdict < 0
			? "SIGBUS in a uffd_sigbus region: the region's function failed (returned -errno); "
			  "the signal went to the previous SIGBUS disposition"
			: "SIGBUS in a uffd_sigbus region: the region's function returned an unknown verdict "
			  "(not UFFD_RESOLVE, UFFD_HANDLED, UFFD_DEFER, UFFD_RETRY or -errno); "
			  "the signal went to the previous SIGBUS disposition");
		return false;
	}
}

/* True when the fault was ours and is resolved (or will be retried). */
static bool handle_fault(const siginfo_t *si, void *uc)
{
	struct rangemap_entry e;
	unsigned ticket;
	bool done = false;

	if (si->si_code != BUS_ADRERR)	/* poison, sent signals, ... */
		return false;
	/* The section keeps the region alive until its function returned. */
	ticket = rangemap_read_begin(&sigbus_map);
	if (rangemap_find(&sigbus_map, (uintptr_t)si->si_addr, &e))
		done = run_region(e.ptr, &e, si, uc);
	rangemap_read_end(&sigbus_map, ticket);
	return done;
}

/*
 * The default action as the kernel would take it: back to SIG_DFL, then a
 * fault is simply retried and faults again, now fatal, with its own
 * siginfo and registers. A signal that does not come back (sent, or an
 * action-optional memory error) is queued again with the same siginfo.
 */
static void take_default(int sig, siginfo_t *si)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigset_t set;

	sigemptyset(&dfl.sa_mask);
	sigaction(sig, &dfl, NULL);
	if (si->si_code > 0 && si->si_code != BUS_MCEERR_AO)
		return;
	sigemptyset(&set);
	sigaddset(&set, sig);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	if (syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), sig, si))
		raise(sig);
}

/* Deliver the signal to the previous disposition as the kernel would have. */
static void chain(int sig, siginfo_t *si, void *uc)
{
	const struct sigaction *old = &prev_sa[atomic_load(&prev_slot)];
	void (*h)(int) = atomic_load(&prev_spent) ? SIG_DFL : old->sa_handler;
	sigset_t mask, saved;

	/* The kernel ignores a sent SIGBUS under SIG_IGN, never a fault. */
	if (h == SIG_IGN && si->si_code <= 0)
		return;
	if (h == SIG_IGN || h == SIG_DFL) {
		take_default(sig, si);
		return;
	}
	if (old->sa_flags & SA_RESETHAND)
		atomic_store(&prev_spent, true);
	mask = old->sa_mask;
	if (!(old->sa_flags & SA_NODEFER))
		sigaddset(&mask, sig);
	pthread_sigmask(SIG_BLOCK, &mask, &saved);
	if (old->sa_flags & SA_SIGINFO)
		old->sa_sigaction(sig, si, uc);
	else
		h(sig);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	int saved_errno = errno;

	if (!handle_fault(si, uc))
		chain(sig, si, uc);	/* may not return: siglongjmp, or death */
	errno = saved_errno;
}

/* ---- installing and restoring, under sigbus_lock ---- */

static bool is_ours(const struct sigaction *sa)
{
	return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_sigbus;
}

static int install(void)
{
	struct sigaction sa = { .sa_sigaction = on_sigbus };
	unsigned slot = !atomic_load(&prev_slot);
	int err;

	/* Publish the previous disposition before a signal can reach ours. */
	if (sigaction(SIGBUS, NULL, &prev_sa[slot]))
		goto fail;
	if (!is_ours(&prev_sa[slot])) {	/* never chain to ourselves */
		atomic_store(&prev_spent, false);
		atomic_store(&prev_slot, slot);
	}
	/* Nested faults (the function touching another region) need NODEFER. */
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER |
		      (prev_sa[slot].sa_flags & SA_RESTART);
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGBUS, &sa, NULL))
		goto fail;
	installed = true;
	return 0;
fail:
	err = -errno;
	return uffd__err(err, "uffd_sigbus_add_region: installing the SIGBUS handler failed (%s)",
			 uffd__errname(err));
}

/*
 * Give SIGBUS back to its previous owner, unless someone installed a
 * handler over ours since: theirs stays (and may chain to ours, which then
 * finds no region and passes the signal on).
 */
static void restore(void)
{
	struct sigaction cur, old = prev_sa[atomic_load(&prev_slot)];

	if (atomic_load(&prev_spent)) {
		old.sa_handler = SIG_DFL;
		old.sa_flags &= ~SA_SIGINFO;
	}
	if (!sigaction(SIGBUS, NULL, &cur) && is_ours(&cur))
		sigaction(SIGBUS, &old, NULL);
	installed = false;
}

static int grow_zero_source(size_t size)
{
	void *p;
	int err;

	if (zero_len >= size)
		return 0;
	p = mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		err = -errno;
		return uffd__err(err, "uffd_sigbus_add_region: mapping %zu bytes of zeros for MISSING faults failed (%s)",
				 size, uffd__errname(err));
	}
	for (size_t i = 0; zero_len && i < sizeof(zero_old) / sizeof(zero_old[0]); i++)
		if (!zero_old[i].p) {	/* a handler may still read it: unmapped later */
			zero_old[i].p = (void *)atomic_load(&zero_src);
			zero_old[i].len = zero_len;
			break;
		}
	atomic_store(&zero_src, p);
	zero_len = size;
	return 0;
}

/* Under sigbus_lock, no region left: no handler can be reading a source. */
static void drop_zero_sources(void)
{
	void *p = (void *)atomic_exchange(&zero_src, NULL);

	if (p)
		munmap(p, zero_len);
	zero_len = 0;
	for (size_t i = 0; i < sizeof(zero_old) / sizeof(zero_old[0]); i++)
		if (zero_old[i].p) {
			munmap(zero_old[i].p, zero_old[i].len);
			zero_old[i].p = NULL;
		}
}

/* ---- public calls ---- */

static int check_region(const struct uffd_region *r, const char *call)
{
	if (!r)
		return uffd__err(-EINVAL, "%s: region is NULL", call);
	return 0;
}

static bool needs_zero_copy(const struct uffd_region *r)
{
	return (r->modes & UFFDIO_REGISTER_MODE_MISSING) &&
	       (r->page_size != r->uffd->page_size || (r->modes & UFFDIO_REGISTER_MODE_WP));
}

/* Under sigbus_lock: publish r with fn, installing the handler if first. */
static int add_locked(struct uffd_region *r, uffd_sigbus_fn fn, void *ctx)
{
	struct rangemap_entry e = {
		.start = (uintptr_t)r->base, .end = (uintptr_t)r->base + r->length,
		.page_size = r->page_size, .ptr = r,
	};
	int err;

	if (r->sigbus_fn)
		return uffd__err(-EEXIST, "uffd_sigbus_add_region %p+%zu: the region is added already; remove it first to change its function",
				 r->base, r->length);
	if (needs_zero_copy(r) && (err = grow_zero_source(r->page_size)))
		return err;
	if (!installed && (err = install()))
		return err;
	r->sigbus_fn = fn;	/* before the region becomes visible */
	r->sigbus_ctx = ctx;
	err = rangemap_insert(&sigbus_map, &e);
	if (err) {
		r->sigbus_fn = NULL;
		r->sigbus_ctx = NULL;
		if (!nregions) {
			restore();
			drop_zero_sources();
		}
		return uffd__err(err, "uffd_sigbus_add_region %p+%zu: %s", r->base, r->length,
				 err == -EEXIST ? "the range overlaps a region added already (EEXIST)"
						: "out of memory (ENOMEM)");
	}
	nregions++;
	return 0;
}

UFFD_EXPORT int uffd_sigbus_add_region(struct uffd_region *r, uffd_sigbus_fn fn, void *ctx)
{
	int err;

	if ((err = check_region(r, "uffd_sigbus_add_region")))
		return err;
	if (!fn)
		return uffd__err(-EINVAL, "uffd_sigbus_add_region %p+%zu: fn is NULL; pass the function that resolves the region's faults",
				 r->base, r->length);
	if (r->foreign)
		return uffd__err(-EINVAL, "uffd_sigbus_add_region %p+%zu: a foreign region's faults happen in its owner, not here; serve them with a loop",
				 r->base, r->length);
	if (!(r->uffd->features & UFFD_FEATURE_SIGBUS))
		return uffd__err(-EOPNOTSUPP, "uffd_sigbus_add_region %p+%zu: the region's handle was opened without UFFD_FEATURE_SIGBUS, "
				 "so its faults queue messages instead of raising SIGBUS; open the handle with UFFD_FEATURE_SIGBUS in want_features",
				 r->base, r->length);
	pthread_mutex_lock(&sigbus_lock);
	err = add_locked(r, fn, ctx);
	pthread_mutex_unlock(&sigbus_lock);
	return err;
}
UFFD_EXPORT_OWN(sigbus_add_region);

/* Returns once no handler can still be running r's function. */
static int remove_region(struct uffd_region *r)
{
	int err;

	pthread_mutex_lock(&sigbus_lock);
	err = rangemap_remove(&sigbus_map, r);
	if (!err) {
		r->sigbus_fn = NULL;
		r->sigbus_ctx = NULL;
		if (!--nregions) {
			restore();
			drop_zero_sources();
		}
	}
	pthread_mutex_unlock(&sigbus_lock);
	return err;
}

UFFD_EXPORT int uffd_sigbus_remove_region(struct uffd_region *r)
{
	int err;

	if ((err = check_region(r, "uffd_sigbus_remove_region")))
		return err;
	err = remove_region(r);
	if (err == -ENOENT)
		return uffd__err(err, "uffd_sigbus_remove_region %p+%zu: the region was not added with uffd_sigbus_add_region, or was removed already",
				 r->base, r->length);
	if (err)
		return uffd__err(err, "uffd_sigbus_remove_region %p+%zu: out of memory (%s); the region is still added, retry",
				 r->base, r->length, uffd__errname(err));
	return 0;
}
UFFD_EXPORT_OWN(sigbus_remove_region);

void uffd__sigbus_forget(struct uffd_region *r)
{
	if (r && r->sigbus_fn)
		remove_region(r);
}
