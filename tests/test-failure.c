/* SPDX-License-Identifier: MIT */
/*
 * When something fails in the loop: only the page that failed is poisoned,
 * a range that is gone wakes its sleepers, UFFD_RETRY waits for the events,
 * every failure reaches the error hook, write-protection survives the
 * default resolutions, and a region destroyed under its handler waits.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

static size_t ps;

static void setup(void)
{
	ps = harness_page_size();
}

static struct uffd *open_uffd(uint64_t features)
{
	struct uffd_opts o = { .size = sizeof(o), .features = features,
			       .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd *u = NULL;

	ck_assert_msg(uffd_open(&u, &o) == 0, "uffd_open: %s", uffd_last_error());
	return u;
}

static struct uffd_region *new_region(struct uffd *u, size_t len, uint64_t modes)
{
	struct uffd_region_opts o = { .size = sizeof(o), .length = len, .modes = modes, .fd = -1 };
	struct uffd_region *r = NULL;

	ck_assert_msg(uffd_region_create(u, &o, &r) == 0, "uffd_region_create: %s", uffd_last_error());
	return r;
}

/* Errors the hook saw. */
struct hook {
	atomic_int calls, with_fault;
	int last_err;
	void *last_addr;
	char last[256];
	pthread_mutex_t lock;
};

static void on_error(void *ctx, const struct uffd_fault *f, int err, const char *sentence)
{
	struct hook *h = ctx;

	pthread_mutex_lock(&h->lock);
	h->last_err = err;
	h->last_addr = f ? f->addr : NULL;
	snprintf(h->last, sizeof(h->last), "%s", sentence);
	pthread_mutex_unlock(&h->lock);
	if (f)
		atomic_fetch_add(&h->with_fault, 1);
	atomic_fetch_add(&h->calls, 1);
}

static struct uffd_loop *new_loop(unsigned flags, struct hook *h)
{
	struct uffd_loop_opts o = { .size = sizeof(o), .flags = flags,
				    .on_error = h ? on_error : NULL, .error_ctx = h };
	struct uffd_loop *l = NULL;

	if (h)
		pthread_mutex_init(&h->lock, NULL);
	ck_assert_msg(uffd_loop_new(&l, &o) == 0, "uffd_loop_new: %s", uffd_last_error());
	return l;
}

static struct uffd_loop_counters counters(struct uffd_loop *l)
{
	struct uffd_loop_counters c = { .size = sizeof(c) };

	ck_assert_int_eq(uffd_loop_counters(l, &c), 0);
	return c;
}

static _Thread_local sigjmp_buf bus_jmp;
static atomic_int sigbuses;

static void on_bus(int sig)
{
	(void)sig;
	atomic_fetch_add(&sigbuses, 1);
	siglongjmp(bus_jmp, 1);
}

/* Reads one byte in another thread: its value, or -1 after a SIGBUS. */
static void *read_byte(void *arg)
{
	volatile unsigned char *p = arg;

	if (sigsetjmp(bus_jmp, 1))
		return (void *)-1l;
	return (void *)(long)*p;
}

static long touch_in_thread(void *p)
{
	return (long)harness_thread_join(harness_thread_start(read_byte, p));
}

static void catch_sigbus(void)
{
	struct sigaction sa = { .sa_handler = on_bus };

	ck_assert_int_eq(sigaction(SIGBUS, &sa, NULL), 0);
	atomic_store(&sigbuses, 0);
}

/* ---- poison exactly what failed ---- */

/* A MINOR shmem region of 8 pages holding 0x5a, a poisoning loop with a hook. */
struct minor_env {
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct hook hk;
	unsigned char *base, *alias;
};

static void minor_env_start(struct minor_env *e, int (*minor)(void *, struct uffd_fault *),
			    void *ctx, void (*before_start)(struct minor_env *))
{
	struct uffd_handlers h = { .minor = minor };

	catch_sigbus();
	e->u = open_uffd(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_POISON);
	e->r = new_region(e->u, 8 * ps, UFFDIO_REGISTER_MODE_MINOR);
	e->l = new_loop(UFFD_LOOP_POISON_ON_ERROR, &e->hk);
	e->base = uffd_region_base(e->r);
	e->alias = uffd_region_alias(e->r);
	memset(e->alias, 0x5a, 8 * ps);
	if (before_start)
		before_start(e);
	ck_assert_int_eq(uffd_loop_add_region(e->l, e->r, &h, ctx ? ctx : e->r), 0);
	ck_assert_int_eq(uffd_loop_start(e->l, 1), 0);
}

static void minor_env_end(struct minor_env *e)
{
	uffd_loop_free(e->l);
	uffd_region_destroy(e->r);
	uffd_close(e->u);
}

/* Pages 1..3 leave the page cache: CONTINUE fails there (EFAULT). */
static void punch_1_to_3(struct minor_env *e)
{
	ck_assert_int_eq(fallocate(uffd_region_fd(e->r), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				   (off_t)ps, (off_t)(3 * ps)), 0);
}


/* Fault-around: every fault is widened to 4 pages. */
static int widen4(void *ctx, struct uffd_fault *f)
{
	(void)ctx;
	f->len = 4 * ps;
	return UFFD_RESOLVE;
}

/*
 * A MINOR handler widens its fault into pages punched out of the page
 * cache: CONTINUE maps the faulting page and fails on the hole. Only a
 * page whose own fault failed may be poisoned: the neighbours stay
 * clean and fault on their own once their contents are back.
 */
START_TEST(test_poison_exact)
{
	SKIP_UNDER_VALGRIND("the faulting thread must take a SIGBUS in user mode");
	struct minor_env e = { 0 };
	struct uffd_loop_counters c;

	minor_env_start(&e, widen4, NULL, punch_1_to_3);
	ck_assert_int_eq(touch_in_thread(e.base), 0x5a);	/* its own page maps */
	/* The loop tries pages 1, 2 and 3 after the thread was woken: let it finish. */
	for (int i = 0; i < 20000 && counters(e.l).resolve_ioctls < 3; i++)
		usleep(100);
	/* The neighbours get contents back (through the alias) and then faults of their own. */
	memset(e.alias + ps, 0x6b, 3 * ps);
	for (int i = 1; i < 4; i++)
		ck_assert_int_eq(touch_in_thread(e.base + i * ps), 0x6b);
	c = counters(e.l);
	ck_assert_int_eq(atomic_load(&sigbuses), 0);
	ck_assert_uint_eq(c.poisoned, 0);
	ck_assert_uint_eq(c.errors, 0);
	ck_assert_uint_eq(c.faults_minor, 2);	/* page 0, then page 1 widened to 1..4 */
	ck_assert_int_eq(atomic_load(&e.hk.calls), 0);
	minor_env_end(&e);
}
END_TEST

/* Widens to 4 pages and punches its own page out first: CONTINUE fails right there. */
static int punch_own(void *ctx, struct uffd_fault *f)
{
	struct uffd_region *r = ctx;

	ck_assert_int_eq(fallocate(uffd_region_fd(r), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				   (off_t)f->offset, (off_t)ps), 0);
	f->len = 4 * ps;
	return UFFD_RESOLVE;
}

/*
 * The faulting page itself fails: it alone is poisoned (SIGBUS), the hook
 * hears of it, and the widened neighbours are still mapped.
 */
START_TEST(test_poison_own_page)
{
	SKIP_UNDER_VALGRIND("the faulting thread must take a SIGBUS in user mode");
	struct minor_env e = { 0 };
	struct uffd_loop_counters c;

	minor_env_start(&e, punch_own, NULL, NULL);
	ck_assert_int_eq(touch_in_thread(e.base), -1);
	for (int i = 1; i < 4; i++)	/* mapped by the same run: no fault of their own */
		ck_assert_int_eq(touch_in_thread(e.base + i * ps), 0x5a);
	c = counters(e.l);
	ck_assert_int_eq(atomic_load(&sigbuses), 1);
	ck_assert_uint_eq(c.poisoned, 1);
	ck_assert_uint_eq(c.faults_minor, 1);
	ck_assert_int_eq(atomic_load(&e.hk.calls), 1);
	ck_assert_ptr_eq(e.hk.last_addr, e.base);
	ck_assert_int_eq(e.hk.last_err, -EFAULT);
	minor_env_end(&e);
}
END_TEST

/* ---- a range that is gone wakes its sleepers ---- */

struct gone {
	struct uffd *u;
	char *map;
	size_t len;
	atomic_int removes, enoent, touched;
};

static int continue_minor(void *ctx, struct uffd_fault *f)
{
	struct gone *g = ctx;
	int err = uffd_continue_range(f->uffd, f->addr, f->len, 0, NULL);

	if (err == -ENOENT)
		atomic_fetch_add(&g->enoent, 1);
	return err ? err : UFFD_HANDLED;
}

static void unregister_on_remove(void *ctx, void *start, size_t len)
{
	struct gone *g = ctx;

	(void)start;
	(void)len;
	atomic_fetch_add(&g->removes, 1);
	ck_assert_int_eq(uffd_unregister(g->u, g->map, g->len), 0);
}

static void *dontneed(void *arg)
{
	struct gone *g = arg;

	ck_assert_int_eq(madvise(g->map, g->len, MADV_DONTNEED), 0);
	return NULL;
}

static atomic_int *touched_flag;

static void *touch0(void *arg)
{
	long v = *(volatile unsigned char *)arg;

	atomic_store(touched_flag, 1);
	return (void *)v;
}

/* A thread that says its tid. */
struct spawned {
	pthread_t t;
	void *(*fn)(void *);
	void *arg;
	atomic_int tid;
};

static void *spawned_main(void *p)
{
	struct spawned *sp = p;

	atomic_store(&sp->tid, gettid());
	return sp->fn(sp->arg);
}

static struct spawned *spawn(void *(*fn)(void *), void *arg)
{
	struct spawned *sp = calloc(1, sizeof(*sp));

	ck_assert_ptr_nonnull(sp);
	sp->fn = fn;
	sp->arg = arg;
	ck_assert_int_eq(pthread_create(&sp->t, NULL, spawned_main, sp), 0);
	while (!atomic_load(&sp->tid))
		usleep(50);
	return sp;
}

static void *join(struct spawned *sp)
{
	void *ret;

	ck_assert_int_eq(pthread_join(sp->t, &ret), 0);
	free(sp);
	return ret;
}

/* Waits until thread tid sleeps in the kernel (S or D state). */
static void wait_sleeping(pid_t tid)
{
	char path[64], st[512];

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	for (int i = 0; i < 5000; i++) {
		FILE *f = fopen(path, "re");
		char *p = NULL;

		if (!f)
			return;		/* the thread is gone: it did not need to wait */
		if (fgets(st, sizeof(st), f))
			p = strrchr(st, ')');
		fclose(f);
		if (p && (p[2] == 'S' || p[2] == 'D' || p[2] == 'Z'))
			return;
		usleep(100);
	}
}


/*
 * A REMOVE handler unregisters the range while a MINOR fault on it is
 * queued behind the event: the fault's CONTINUE answers -ENOENT, and the
 * thread must wake (UFFDIO_UNREGISTER wakes only MISSING sleepers).
 */
START_TEST(test_enoent_wakes)
{
	SKIP_UNDER_VALGRIND("threads touch memory that the loop resolves");
	struct uffd *u = open_uffd(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMOVE);
	struct gone g = { .u = u, .len = 4 * ps };
	struct uffd_handlers h = { .minor = continue_minor, .remove = unregister_on_remove };
	struct uffd_loop *l = new_loop(0, NULL);
	int fd = memfd_create("gone", MFD_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)g.len), 0);
	ck_assert_int_eq(fallocate(fd, 0, 0, (off_t)g.len), 0);
	g.map = mmap(NULL, g.len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(g.map, MAP_FAILED);
	ck_assert_int_eq(uffd_loop_add(l, u, &h, &g), 0);
	touched_flag = &g.touched;
	for (int i = 0; i < 200; i++) {
		struct spawned *mt, *ft;

		ck_assert_int_eq(uffd_register(u, g.map, g.len, UFFDIO_REGISTER_MODE_MINOR, NULL), 0);
		/* The REMOVE first, then the fault: both wait before the loop reads. */
		mt = spawn(dontneed, &g);
		wait_sleeping(atomic_load(&mt->tid));
		ft = spawn(touch0, g.map + ps * (size_t)(i % 4));
		wait_sleeping(atomic_load(&ft->tid));
		/* Until the faulting thread is woken: a hang fails the test by its timeout. */
		for (int k = 0; atomic_load(&g.removes) <= i || !atomic_load(&g.touched); k++) {
			ck_assert_int_ge(uffd_loop_run_once(l, 10), 0);
			ck_assert_msg(k < 3000, "round %d: %d removes, touched %d", i,
				      atomic_load(&g.removes), atomic_load(&g.touched));
		}
		atomic_store(&g.touched, 0);
		join(mt);
		join(ft);
		uffd_unregister(u, g.map, g.len);
	}
	ck_assert_int_eq(atomic_load(&g.removes), 200);
	ck_assert_int_gt(atomic_load(&g.enoent), 0);
	uffd_loop_free(l);
	munmap(g.map, g.len);
	close(fd);
	uffd_close(u);
}
END_TEST

/* ---- UFFD_RETRY ---- */

struct retry_ctx {
	struct uffd *u;
	char *base, *zap;
	size_t zap_len;
	unsigned char *src;
	atomic_int eagain, calls;
	struct spawned *madv_thread;
	bool always;
};

static void *zap_thread(void *arg)
{
	struct retry_ctx *x = arg;

	ck_assert_int_eq(madvise(x->zap, x->zap_len, MADV_DONTNEED), 0);
	return NULL;
}

/*
 * A MISSING handler copying from a snapshot. On the first fault it starts
 * an madvise whose REMOVE event is then unread: its copy gets -EAGAIN and
 * it answers UFFD_RETRY, to be called again after the event.
 */
static int copy_or_retry(void *ctx, struct uffd_fault *f)
{
	struct retry_ctx *x = ctx;
	size_t idx = ((uintptr_t)f->addr - (uintptr_t)x->base) / ps;
	int err;

	if (atomic_fetch_add(&x->calls, 1) == 0) {
		x->madv_thread = spawn(zap_thread, x);
		wait_sleeping(atomic_load(&x->madv_thread->tid));
	}
	if (x->always)
		return UFFD_RETRY;
	err = uffd_copy(f->uffd, f->addr, x->src + idx * ps, ps, 0, NULL);
	if (err == -EAGAIN) {
		atomic_fetch_add(&x->eagain, 1);
		return UFFD_RETRY;
	}
	return err ? err : UFFD_HANDLED;
}

static void retry_setup(struct retry_ctx *x, size_t npages)
{
	x->u = open_uffd(UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_POISON);
	x->base = mmap(NULL, 2 * npages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ck_assert_ptr_ne(x->base, MAP_FAILED);
	ck_assert_int_eq(uffd_register(x->u, x->base, 2 * npages * ps, UFFDIO_REGISTER_MODE_MISSING, NULL), 0);
	x->zap = x->base + npages * ps;	/* the upper half: populated, then zapped */
	x->zap_len = npages * ps;
	ck_assert_int_eq(uffd_zeropage(x->u, x->zap, x->zap_len, 0, NULL), 0);
	x->src = malloc(npages * ps);
	ck_assert_ptr_nonnull(x->src);
	for (size_t i = 0; i < npages; i++)
		memset(x->src + i * ps, (int)(i + 1), ps);
}

static void retry_teardown(struct retry_ctx *x, size_t npages)
{
	if (x->madv_thread)
		join(x->madv_thread);
	munmap(x->base, 2 * npages * ps);
	free(x->src);
	uffd_close(x->u);
}

START_TEST(test_retry_verdict)
{
	SKIP_UNDER_VALGRIND("threads touch memory that the loop resolves");
	struct retry_ctx x = { 0 };
	struct uffd_handlers h = { .missing = copy_or_retry };
	struct uffd_loop *l;
	struct uffd_loop_counters c;

	retry_setup(&x, 16);
	l = new_loop(UFFD_LOOP_POISON_ON_ERROR, NULL);
	ck_assert_int_eq(uffd_loop_add(l, x.u, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	for (size_t i = 0; i < 16; i++)
		ck_assert_int_eq(touch_in_thread(x.base + i * ps), (int)(i + 1));
	c = counters(l);
	ck_assert_int_ge(atomic_load(&x.eagain), 1);
	ck_assert_uint_ge(c.retried, 1);
	ck_assert_uint_eq(c.errors, 0);
	ck_assert_uint_eq(c.poisoned, 0);
	uffd_loop_free(l);
	retry_teardown(&x, 16);
}
END_TEST

/* A handler that answers UFFD_RETRY for ever: the fault fails after the bound, poisoned. */
START_TEST(test_retry_bound)
{
	SKIP_UNDER_VALGRIND("the faulting thread must take a SIGBUS in user mode");
	struct retry_ctx x = { .always = true };
	struct uffd_handlers h = { .missing = copy_or_retry };
	struct hook hk = { 0 };
	struct uffd_loop *l;
	struct uffd_loop_counters c;

	catch_sigbus();
	retry_setup(&x, 1);
	l = new_loop(UFFD_LOOP_POISON_ON_ERROR, &hk);
	ck_assert_int_eq(uffd_loop_add(l, x.u, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	ck_assert_int_eq(touch_in_thread(x.base), -1);	/* SIGBUS after about 5 s, not a hang */
	c = counters(l);
	ck_assert_uint_eq(c.poisoned, 1);
	ck_assert_int_eq(atomic_load(&hk.calls), 1);
	ck_assert_int_eq(hk.last_err, -EAGAIN);
	ck_assert_ptr_eq(hk.last_addr, x.base);
	ck_assert_ptr_nonnull(strstr(hk.last, "UFFD_RETRY"));
	ck_assert_uint_gt(atomic_load(&x.calls), 10);	/* called again and again, backing off */
	ck_assert_uint_lt(atomic_load(&x.calls), 10000);	/* ...not spinning */
	uffd_loop_free(l);
	retry_teardown(&x, 1);
}
END_TEST

/* ---- the error hook ---- */

static int fail_eio(void *ctx, struct uffd_fault *f)
{
	(void)ctx;
	(void)f;
	return -EIO;
}

START_TEST(test_error_hook)
{
	SKIP_UNDER_VALGRIND("the faulting thread must take a SIGBUS in user mode");
	struct uffd *u = open_uffd(UFFD_FEATURE_POISON);
	char *a = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffd_handlers h = { .missing = fail_eio };
	struct hook hk = { 0 };
	struct uffd_loop *l = new_loop(UFFD_LOOP_POISON_ON_ERROR, &hk);
	struct uffd *u2 = open_uffd(0);
	struct uffd_loop_counters c;
	int dup_fd;

	catch_sigbus();
	ck_assert_ptr_ne(a, MAP_FAILED);
	ck_assert_int_eq(uffd_register(u, a, ps, UFFDIO_REGISTER_MODE_MISSING, NULL), 0);
	ck_assert_int_eq(uffd_loop_add(l, u, &h, NULL), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	/* 1. A failed handler: its fault, its errno, a sentence that says what happened. */
	ck_assert_int_eq(touch_in_thread(a), -1);
	ck_assert_int_eq(atomic_load(&hk.calls), 1);
	ck_assert_int_eq(atomic_load(&hk.with_fault), 1);
	ck_assert_int_eq(hk.last_err, -EIO);
	ck_assert_ptr_eq(hk.last_addr, a);
	ck_assert_ptr_nonnull(strstr(hk.last, "the handler failed"));
	ck_assert_ptr_nonnull(strstr(hk.last, "poisoned"));
	/* 2. A broken watch: its fd replaced by something that is no uffd (reads give 0 bytes). */
	dup_fd = open("/dev/null", O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	ck_assert_int_ge(dup_fd, 0);
	ck_assert_int_eq(dup2(dup_fd, uffd_fd(u2)), uffd_fd(u2));
	close(dup_fd);
	ck_assert_int_eq(uffd_loop_add(l, u2, NULL, NULL), 0);
	for (int i = 0; i < 2000 && atomic_load(&hk.calls) < 2; i++)
		usleep(1000);
	c = counters(l);
	ck_assert_int_eq(atomic_load(&hk.calls), 2);
	ck_assert_int_eq(atomic_load(&hk.with_fault), 1);	/* a watch: no fault */
	ck_assert_int_eq(hk.last_err, -EIO);
	ck_assert_ptr_nonnull(strstr(hk.last, "stops watching"));
	ck_assert_uint_eq(c.poisoned, 1);
	ck_assert_uint_eq(c.errors, 2);
	uffd_loop_free(l);
	munmap(a, ps);
	uffd_close(u);
	uffd_close(u2);
}
END_TEST

/* ---- write-protection survives the default resolutions ---- */

struct wpctx {
	atomic_int wp;
	int verdict;
};

static int count_wp(void *ctx, struct uffd_fault *f)
{
	struct wpctx *x = ctx;

	(void)f;
	atomic_fetch_add(&x->wp, 1);
	return UFFD_RESOLVE;	/* un-protect */
}

static int verdict_of(void *ctx, struct uffd_fault *f)
{
	struct wpctx *x = ctx;

	(void)f;
	return x->verdict;
}

static void *write_byte(void *arg)
{
	*(volatile char *)arg = 1;
	return NULL;
}

/*
 * A read fault resolved by default (or with a verdict), then a write: it
 * must raise a WP fault. protect: the page is write-protected (a marker)
 * before it is first mapped.
 */
static void wp_case(uint64_t modes, int verdict, bool protect)
{
	uint64_t feat = UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_PAGEFAULT_FLAG_WP |
			((modes & UFFDIO_REGISTER_MODE_MINOR) ? UFFD_FEATURE_MINOR_SHMEM : 0);
	struct uffd *u;
	struct uffd_region *r;
	struct wpctx x = { .verdict = verdict };
	struct uffd_handlers h = { .wp = count_wp, .minor = verdict_of, .missing = verdict_of };
	struct uffd_loop *l;
	char *base;

	SKIP_UNDER_VALGRIND("threads touch memory that the loop resolves");
	if (!harness_have_features(feat))
		SKIP_TEST("no write-protection of shmem on this kernel");
	u = open_uffd(feat);
	r = new_region(u, 4 * ps, modes);
	base = uffd_region_base(r);
	if (modes & UFFDIO_REGISTER_MODE_MINOR)
		ck_assert_int_eq(fallocate(uffd_region_fd(r), 0, 0, (off_t)(4 * ps)), 0);
	l = new_loop(0, NULL);
	ck_assert_int_eq(uffd_loop_add_region(l, r, &h, &x), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	if (protect)
		ck_assert_int_eq(uffd_region_writeprotect(r, 0, 4 * ps, true, 0), 0);
	ck_assert_int_eq(touch_in_thread(base), 0);
	ck_assert_int_eq(atomic_load(&x.wp), 0);
	harness_thread_join(harness_thread_start(write_byte, base));
	ck_assert_int_eq(atomic_load(&x.wp), 1);	/* the write was caught */
	ck_assert_int_eq(base[0], 1);
	uffd_loop_free(l);
	uffd_region_destroy(r);
	uffd_close(u);
}

/*
 * MISSING|WP, protected before the first touch: the zero page the loop
 * maps keeps the protection (ZEROPAGE would not). A page never protected
 * gets none (loop/gc_exact_wp).
 */
START_TEST(test_wp_missing_default)
{
	wp_case(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP, UFFD_RESOLVE, true);
}
END_TEST

/* MINOR|WP, protected before the first touch: CONTINUE keeps the marker's protection. */
START_TEST(test_wp_minor_default)
{
	wp_case(UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP, UFFD_RESOLVE, true);
}
END_TEST

/* MINOR|WP, never protected: the handler asks for a write-protected mapping. */
START_TEST(test_wp_resolve_wp_verdict)
{
	wp_case(UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP, UFFD_RESOLVE_WP, false);
}
END_TEST

/* ---- destroy while a handler of the region runs ---- */

struct slow {
	atomic_int in_handler;
	atomic_llong left_at;
	struct uffd_region *r;
};

static long long mono_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000ll + t.tv_nsec / 1000;
}

static int slow_minor(void *ctx, struct uffd_fault *f)
{
	struct slow *s = ctx;
	size_t len;

	atomic_store(&s->in_handler, 1);
	usleep(50000);
	/* The region must still be whole here. */
	len = uffd_region_length(f->region);
	ck_assert_uint_eq(len, 4 * ps);
	ck_assert_ptr_nonnull(uffd_region_alias(f->region));
	atomic_store(&s->left_at, mono_us());
	return UFFD_HANDLED;	/* nothing resolved: destroy wakes the thread */
}

static void *touch_guarded(void *arg)
{
	if (sigsetjmp(bus_jmp, 1))
		return NULL;
	(void)*(volatile char *)arg;
	return NULL;
}

START_TEST(test_destroy_waits)
{
	SKIP_UNDER_VALGRIND("threads touch memory that the loop resolves");
	struct uffd *u = open_uffd(UFFD_FEATURE_MINOR_SHMEM);
	struct uffd_region *r = new_region(u, 4 * ps, UFFDIO_REGISTER_MODE_MINOR);
	struct slow s = { .r = r };
	struct uffd_handlers h = { .minor = slow_minor };
	struct uffd_loop *l = new_loop(0, NULL);
	struct sigaction sa = { .sa_handler = on_bus };
	void *th;
	long long done;

	ck_assert_int_eq(sigaction(SIGSEGV, &sa, NULL), 0);	/* the view goes away under it */
	ck_assert_int_eq(fallocate(uffd_region_fd(r), 0, 0, (off_t)(4 * ps)), 0);
	ck_assert_int_eq(uffd_loop_add_region(l, r, &h, &s), 0);
	ck_assert_int_eq(uffd_loop_start(l, 1), 0);
	th = harness_thread_start(touch_guarded, uffd_region_base(r));
	while (!atomic_load(&s.in_handler))
		usleep(100);
	uffd_region_destroy(r);
	done = mono_us();
	ck_assert_int_ne(atomic_load(&s.left_at), 0);
	ck_assert_int_ge(done, atomic_load(&s.left_at));	/* returned after the handler */
	harness_thread_join(th);
	uffd_loop_free(l);
	uffd_close(u);
	signal(SIGSEGV, SIG_DFL);
}
END_TEST

static Suite *make_suite(void)
{
	Suite *s = suite_create("failure");
	TCase *tc;

	tc = CASE(poison_exact, 20);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_poison_exact);
	tcase_add_test(tc, test_poison_own_page);
	tc = CASE(enoent_wakes, 60);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_enoent_wakes);
	tc = CASE(retry_verdict, 20);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_retry_verdict);
	tc = CASE(retry_bound, 30);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_retry_bound);
	tc = CASE(error_hook, 20);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_error_hook);
	tc = CASE(wp_kept, 20);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_wp_missing_default);
	tcase_add_test(tc, test_wp_minor_default);
	tcase_add_test(tc, test_wp_resolve_wp_verdict);
	tc = CASE(destroy_waits, 20);
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_destroy_waits);
	return s;
}

int main(void)
{
	return harness_run(make_suite());
}
