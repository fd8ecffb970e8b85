/* SPDX-License-Identifier: MIT */
/*
 * Fuzzes the argument checking of every public call: the input is a program
 * of calls on a few handles (open, fd replaced by /dev/null, absent),
 * regions (local, or foreign: declared over any address), a loop that never runs on its own, and an arena of anonymous and
 * shmem pages that the program registers, unmaps and maps again. No call
 * may crash, hang or leak a descriptor.
 *
 * What keeps the fuzzer itself from hanging: it never touches registered
 * memory; a source the library reads (uffd_copy, uffd_region_populate) is
 * never inside the arena or a region's base view; "arbitrary" addresses are
 * chosen where nothing can be mapped (below mmap_min_addr, kernel space,
 * the top of the address space), so a registration or write-protection can
 * never land on the fuzzer's own heap; and handles never get the EVENT_*
 * features that would make the arena's munmap wait for a reader.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <uffd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NH 2		/* handles */
#define NR 3		/* regions */
#define ARENA 16	/* pages: 8 anonymous, then 8 of a memfd */
#define SRC 8		/* pages of the source buffer, never registered */
#define MAX_OPS 64
#define EVENT_FEATURES (UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | \
			UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP)

struct in {
	const uint8_t *p;
	size_t n;
};

static uint64_t get(struct in *in, unsigned bytes)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < bytes && in->n; i++, in->n--)
		v |= (uint64_t)*in->p++ << (8 * i);
	return v;
}

#define U8(in) ((unsigned)get(in, 1))

struct st {
	size_t ps;
	struct uffd *h[NH];
	struct uffd_region *r[NR];
	struct uffd_loop *l;
	char *arena, *src;
	int memfd, devnull;
};

/* ---- values ---- */

/* An address where nothing of this process can be mapped. */
static uintptr_t nowhere(struct in *in)
{
	uint64_t v = get(in, 8);

	switch (v & 3) {
	case 0:
		return (uintptr_t)(v >> 2) % 0x10000;	/* below mmap_min_addr */
	case 1:
		return (uintptr_t)(v | 0x8000000000000000ull);	/* kernel space */
	case 2:
		return (uintptr_t)-(uintptr_t)((v >> 2) % 0x10000);	/* wraps */
	default:
		return 0;
	}
}

static struct uffd_region *region(struct st *s, struct in *in)
{
	unsigned k = U8(in) % (NR + 1);

	return k < NR ? s->r[k] : NULL;
}

/* A destination: the arena, a region's views, or nowhere; maybe unaligned. */
static char *addr(struct st *s, struct in *in)
{
	unsigned k = U8(in);
	size_t off = (U8(in) % (ARENA + 2)) * s->ps + ((k & 0x80) ? U8(in) : 0);
	struct uffd_region *r;

	switch (k & 3) {
	case 0:
	case 1:
		return s->arena + off;
	case 2:
		r = region(s, in);
		if (r)
			return (char *)((k & 4) && uffd_region_alias(r) ? uffd_region_alias(r)
								     : uffd_region_base(r)) + off % (8 * s->ps);
		return s->arena + off;
	default:
		return (char *)nowhere(in);
	}
}

static bool overlaps(uintptr_t a, size_t alen, const void *b, size_t blen)
{
	uintptr_t e = a + alen < a ? UINTPTR_MAX : a + alen;

	return b && a < (uintptr_t)b + blen && (uintptr_t)b < e;
}

/* A source for a call that reads it: never registered memory. */
static char *source(struct st *s, struct in *in, size_t len)
{
	unsigned k = U8(in) % 4;
	uintptr_t a = k == 0 ? (uintptr_t)s->src + (U8(in) % SRC) * s->ps + (k & 8)
		    : k == 1 ? 0 : k == 2 ? (uintptr_t)s->src : nowhere(in);

	if (overlaps(a, len, s->arena, ARENA * s->ps))
		return s->src;
	for (int i = 0; i < NR; i++)
		if (s->r[i] && overlaps(a, len, uffd_region_base(s->r[i]), uffd_region_length(s->r[i])))
			return s->src;
	return (char *)a;
}

static size_t length(struct st *s, struct in *in)
{
	unsigned k = U8(in);

	switch (k % 8) {
	case 0:
		return 0;
	case 1:
		return s->ps;
	case 2:
	case 3:
		return (1 + k / 8 % 20) * s->ps;
	case 4:
		return get(in, 2);
	case 5:
		return SIZE_MAX - get(in, 1);
	case 6:
		return (size_t)1 << (U8(in) % 64);
	default:
		return get(in, 8);
	}
}

static uint64_t modes(struct in *in)
{
	unsigned k = U8(in);

	return k & 0x80 ? get(in, 8) : k & 7;
}

static struct uffd *handle(struct st *s, struct in *in)
{
	unsigned k = U8(in) % (NH + 1);

	return k < NH ? s->h[k] : NULL;
}

static size_t done_sink;

static size_t *done_ptr(struct in *in)
{
	return U8(in) & 1 ? &done_sink : NULL;
}

/* ---- handler stubs for the loop and SIGBUS mode (never called: nothing faults) ---- */

static int on_fault(void *ctx, struct uffd_fault *f)
{
	(void)ctx;
	(void)f;
	return UFFD_RESOLVE;
}

static const struct uffd_handlers handlers = { .minor = on_fault, .wp = on_fault, .missing = on_fault };

/* ---- state changes ---- */

static void destroy_region(struct st *s, int i)
{
	uffd_region_destroy(s->r[i]);
	s->r[i] = NULL;
}

/* A handle goes with its regions, after the loop let go of it. */
static void close_handle(struct st *s, int i)
{
	if (!s->h[i])
		return;
	for (int k = 0; k < NR; k++)
		if (s->r[k] && uffd_region_uffd(s->r[k]) == s->h[i])
			destroy_region(s, k);
	if (s->l)
		uffd_loop_remove(s->l, s->h[i]);
	uffd_close(s->h[i]);
	s->h[i] = NULL;
}

static void op_open(struct st *s, struct in *in)
{
	int i = (int)(U8(in) % NH), fd, k = (int)U8(in);
	struct uffd_opts o = { .size = sizeof(o) };
	uint64_t feat = get(in, 8) & ~(uint64_t)EVENT_FEATURES;

	close_handle(s, i);
	if (k & 1) {
		o.size = k & 2 ? sizeof(o) : (size_t)U8(in);
		o.features = feat;
		o.want_features = get(in, 8) & ~(uint64_t)EVENT_FEATURES;
		o.flags = U8(in);
		uffd_open(&s->h[i], o.size > sizeof(o) ? NULL : &o);
		return;
	}
	if (k & 2) {
		uffd_open(&s->h[i], NULL);
		return;
	}
	/* uffd_open_fd: a fresh userfaultfd, /dev/null, or no descriptor. */
	switch (k / 4 % 3) {
	case 0:
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | (k & 16 ? O_NONBLOCK : 0));
		break;
	case 1:
		fd = open("/dev/null", O_RDWR | O_CLOEXEC);
		break;
	default:
		fd = -1 - (int)U8(in);
		break;
	}
	if (uffd_open_fd(&s->h[i], fd, feat) && fd >= 0)
		close(fd);
}

/* The handle's fd becomes /dev/null: the uffd is gone behind its back. */
static void op_break_fd(struct st *s, struct in *in)
{
	struct uffd *u = handle(s, in);

	if (u && s->devnull >= 0)
		dup3(s->devnull, uffd_fd(u), O_CLOEXEC);
}

/*
 * A foreign region declared over the arena, a region's views or nowhere
 * (only declared: nothing of this process is mapped or registered for it).
 */
static void create_foreign(struct st *s, struct in *in, const struct uffd_region_opts *ro,
			   struct uffd *u, struct uffd_region **out)
{
	struct uffd_foreign_opts o = {
		.size = ro->size > sizeof(o) ? sizeof(o) : ro->size,
		.owner_addr = (uintptr_t)addr(s, in), .length = ro->length,
		.page_size = U8(in) & 1 ? (size_t)1 << (U8(in) % 32) : 0,
		.modes = ro->modes, .flags = ro->flags, .fd = ro->fd, .fd_offset = ro->fd_offset,
	};

	uffd_region_create_foreign(u, &o, out);
}

static void op_region_create(struct st *s, struct in *in)
{
	int i = (int)(U8(in) % NR), k = (int)U8(in);
	struct uffd_region_opts o = {
		.size = k & 1 ? (size_t)U8(in) : sizeof(o),
		.length = length(s, in) % (k & 2 ? SIZE_MAX : 64 * s->ps),
		.modes = modes(in),
		.flags = U8(in) & 0x7,
		.fd = k & 4 ? s->memfd : k & 8 ? -1 - (int)U8(in) : -1,
		.fd_offset = k & 16 ? get(in, 8) : (U8(in) % 4) * s->ps,
		.name = k & 32 ? "fuzz" : NULL,
	};
	struct uffd *u = handle(s, in);

	if (s->r[i])
		destroy_region(s, i);
	if (o.size > sizeof(o))
		o.size = sizeof(o);	/* a larger caller struct is tested by test-args */
	if (k & 128)
		create_foreign(s, in, &o, u, &s->r[i]);
	else
		uffd_region_create(u, k & 64 ? NULL : &o, &s->r[i]);
}

/* Maps pages of the arena again: anonymous below ARENA/2, the memfd above. */
static void map_arena(struct st *s, size_t first, size_t n)
{
	for (size_t p = first; p < first + n; p++) {
		bool shm = p >= ARENA / 2 && s->memfd >= 0;

		mmap(s->arena + p * s->ps, s->ps, PROT_READ | PROT_WRITE,
		     MAP_FIXED | (shm ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS),
		     shm ? s->memfd : -1, shm ? (off_t)((p - ARENA / 2) * s->ps) : 0);
	}
}

static void do_op(struct st *s, struct in *in, unsigned op);

/*
 * Pages of the arena vanish (maybe registered ones) while a few calls run,
 * then come back as new mappings. Only calls that map nothing run in
 * between, so no mapping of the library or the fuzzer can land in the hole
 * (and be registered or replaced).
 */
static void op_arena_hole(struct st *s, struct in *in)
{
	static const unsigned calls[] = { 3, 4, 5, 6, 7, 8, 9, 10, 11, 19 };
	size_t first = U8(in) % ARENA, n = 1 + U8(in) % (ARENA - first);
	unsigned k = 1 + U8(in) % 4;

	munmap(s->arena + first * s->ps, n * s->ps);
	while (k-- && in->n)
		do_op(s, in, calls[U8(in) % (sizeof(calls) / sizeof(calls[0]))]);
	map_arena(s, first, n);
}

static void op_misc(struct st *s, struct in *in)
{
	uint64_t avail;
	struct uffd *u = handle(s, in);
	struct uffd_region *r = region(s, in);

	(void)uffd_probe(U8(in) & 1 ? &avail : NULL);
	(void)uffd_feature_name(get(in, 8));
	(void)uffd_last_error();
	(void)uffd_fd(u);
	(void)uffd_features(u);
	(void)uffd_region_base(r);
	(void)uffd_region_alias(r);
	(void)uffd_region_length(r);
	(void)uffd_region_page_size(r);
	(void)uffd_region_fd(r);
	(void)uffd_region_uffd(r);
}

static void op_read_events(struct st *s, struct in *in)
{
	struct uffd_event ev[8];
	unsigned k = U8(in);

	uffd_read_events(handle(s, in), k & 8 ? NULL : ev, k % 9);
}

static void op_loop(struct st *s, struct in *in)
{
	unsigned k = U8(in);
	struct uffd_loop_stats st;
	struct uffd_loop_opts o = { .size = sizeof(o) };

	switch (k % 8) {
	case 0:
		if (s->l)
			break;
		o.queue_depth = U8(in) & 0x80 ? (unsigned)get(in, 4) : U8(in);
		o.batch = U8(in) & 0x80 ? (unsigned)get(in, 4) : U8(in);
		o.spin_us = U8(in) & 0x80 ? (unsigned)get(in, 4) : 0;
		o.flags = U8(in);
		if (k & 8)
			o.size = U8(in) % sizeof(o);
		uffd_loop_new(k & 16 ? NULL : &s->l, k & 32 ? NULL : &o);
		break;
	case 1:
		uffd_loop_add(s->l, handle(s, in), k & 8 ? NULL : &handlers, NULL);
		break;
	case 2:
		uffd_loop_add_region(s->l, region(s, in), k & 8 ? NULL : &handlers, NULL);
		break;
	case 3:
		uffd_loop_remove(s->l, handle(s, in));
		break;
	case 4:		/* nothing faults: returns at once */
		uffd_loop_run_once(s->l, k & 8 ? 0 : -2 - (int)U8(in));
		break;
	case 5:
		uffd_loop_stats(k & 8 ? NULL : s->l, k & 16 ? NULL : &st);
		break;
	case 6:
		uffd_loop_stop(k & 8 ? NULL : s->l);
		break;
	default:
		uffd_loop_free(s->l);
		s->l = NULL;
		break;
	}
}

static void op_dirty(struct st *s, struct in *in)
{
	struct uffd_span spans[4];
	void *next;
	unsigned k = U8(in);
	struct uffd *u = handle(s, in);
	char *a = addr(s, in);
	size_t len = length(s, in);

	if (k & 1)
		uffd_dirty_start(u, a, len);
	else
		uffd_dirty_scan(u, a, len, k & 2 ? NULL : spans, k / 4 % 5, U8(in),
				k & 64 ? NULL : &next);
}

static void do_op(struct st *s, struct in *in, unsigned op)
{
	uint64_t ioctls;
	unsigned fl;
	char *a;
	size_t len;

	if (getenv("FUZZ_TRACE"))	/* which op of the program runs: for minimising crashes */
		fprintf(stderr, "op %u (%zu bytes left)\n", op, in->n);

	switch (op) {
	case 0:
		op_open(s, in);
		break;
	case 1:
		close_handle(s, (int)(U8(in) % NH));
		break;
	case 2:
		op_break_fd(s, in);
		break;
	case 3:
		a = addr(s, in);
		len = length(s, in);
		uffd_register(handle(s, in), a, len, modes(in), U8(in) & 1 ? &ioctls : NULL);
		break;
	case 4:
		a = addr(s, in);
		uffd_unregister(handle(s, in), a, length(s, in));
		break;
	case 5:
		a = addr(s, in);
		len = length(s, in);
		uffd_continue_range(handle(s, in), a, len, U8(in), done_ptr(in));
		break;
	case 6:
		a = addr(s, in);
		len = length(s, in);
		fl = U8(in);
		uffd_writeprotect(handle(s, in), a, len, fl & 0x80, fl & 0x7f);
		break;
	case 7:
		a = addr(s, in);
		len = length(s, in);
		uffd_copy(handle(s, in), a, source(s, in, len), len, U8(in), done_ptr(in));
		break;
	case 8:
		a = addr(s, in);
		len = length(s, in);
		uffd_zeropage(handle(s, in), a, len, U8(in), done_ptr(in));
		break;
	case 9:
		a = addr(s, in);
		len = length(s, in);
		uffd_move(handle(s, in), a, source(s, in, len), len, U8(in), done_ptr(in));
		break;
	case 10:
		a = addr(s, in);
		len = length(s, in);
		uffd_poison(handle(s, in), a, len, U8(in), done_ptr(in));
		break;
	case 11:
		a = addr(s, in);
		uffd_wake(handle(s, in), a, length(s, in));
		break;
	case 12:
		op_read_events(s, in);
		break;
	case 13:
		op_region_create(s, in);
		break;
	case 14: {
		int i = (int)(U8(in) % NR);

		if (s->r[i])
			destroy_region(s, i);
		else
			uffd_region_destroy(NULL);
		break;
	}
	case 15: {
		struct uffd_region *r = region(s, in);
		uint64_t off = U8(in) & 1 ? get(in, 8) : (U8(in) % 10) * s->ps;

		len = length(s, in);
		uffd_region_populate(r, off, source(s, in, len), len, U8(in));
		break;
	}
	case 16: {
		struct uffd_region *r = region(s, in);
		uint64_t off = (U8(in) % 10) * s->ps;
		unsigned k = U8(in);

		len = length(s, in);
		if (k & 0x80) {	/* a source is never read: any pointer will do */
			uffd_region_set_source(r, source(s, in, 0), len);
			break;
		}
		switch (k % 4) {
		case 0:
			uffd_region_continue(r, off, len, U8(in), done_ptr(in));
			break;
		case 1:
			uffd_region_writeprotect(r, off, len, k & 4, U8(in));
			break;
		case 2:
			uffd_region_zap(r, off, len);
			break;
		default:
			uffd_region_discard(r, off, len);
			break;
		}
		break;
	}
	case 17:
		op_loop(s, in);
		break;
	case 18:
		if (U8(in) & 1)
			uffd_sigbus_add_region(region(s, in), U8(in) & 1 ? on_fault : NULL, NULL);
		else
			uffd_sigbus_remove_region(region(s, in));
		break;
	case 19:
		op_dirty(s, in);
		break;
	case 20:
	case 21:
		op_arena_hole(s, in);
		break;
	default:
		op_misc(s, in);
		break;
	}
}

static void run_op(struct st *s, struct in *in)
{
	do_op(s, in, U8(in) % 24);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	while (d && readdir(d))
		n++;
	if (d)
		closedir(d);
	return n;
}

static bool setup(struct st *s)
{
	memset(s, 0, sizeof(*s));
	s->ps = (size_t)sysconf(_SC_PAGESIZE);
	s->memfd = memfd_create("fuzz-arena", MFD_CLOEXEC);
	s->devnull = open("/dev/null", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (s->memfd < 0 || ftruncate(s->memfd, (off_t)(64 * s->ps)))
		return false;
	s->arena = mmap(NULL, ARENA * s->ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	s->src = mmap(NULL, SRC * s->ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->arena == MAP_FAILED || s->src == MAP_FAILED)
		return false;
	memset(s->src, 0x5a, SRC * s->ps);
	map_arena(s, 0, ARENA);
	return true;
}

static void teardown(struct st *s)
{
	uffd_loop_free(s->l);
	s->l = NULL;
	for (int i = 0; i < NR; i++)
		if (s->r[i])
			destroy_region(s, i);
	for (int i = 0; i < NH; i++)
		close_handle(s, i);
	if (s->arena && s->arena != MAP_FAILED)
		munmap(s->arena, ARENA * s->ps);
	if (s->src && s->src != MAP_FAILED)
		munmap(s->src, SRC * s->ps);
	if (s->memfd >= 0)
		close(s->memfd);
	if (s->devnull >= 0)
		close(s->devnull);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };
	struct st s;
	int fds = count_fds();

	if (setup(&s))
		for (int i = 0; i < MAX_OPS && in.n; i++) {
			run_op(&s, &in);
			if (getenv("FUZZ_TRACE"))
				fprintf(stderr, "  -> %s\n", uffd_last_error());
		}
	teardown(&s);
	if (count_fds() != fds) {
		fprintf(stderr, "fuzz-api: %d fds open before the input, %d after: a call leaked one\n",
			fds, count_fds());
		abort();
	}
	return 0;
}
