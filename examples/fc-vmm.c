/* SPDX-License-Identifier: MIT */
/*
 * fc-vmm: a stand-in for Firecracker loading a snapshot with the "Uffd"
 * memory backend, for the tests and the demo of uffd-serve. It does what
 * Firecracker does, with raw system calls and no libuffd: guest memory in
 * several anonymous (or hugetlb) regions with a gap between them, a
 * userfaultfd with EVENT_REMOVE, every region registered for MISSING faults,
 * then ONE sendmsg of the fd and the JSON table to the handler's socket,
 * which stays open. Then a "guest" of threads touches a working set (a
 * seeded, scattered subset of the pages, in a new order each run) and checks
 * every byte against the snapshot file; a balloon gives a range back
 * (MADV_DONTNEED) and expects zeros there. With --write-pct, that share of
 * the working set (a seeded subset, outside the balloon) is written: the
 * first touch of such a page is a write of its first word (a write fault),
 * and from then on the page must hold that word and the snapshot's other
 * bytes.
 *
 * --kernel maps the snapshot MAP_PRIVATE instead (no handler: the kernel's
 * file paging, the reference). --make-snapshot writes a snapshot to serve.
 * Prints one "FCVMM key=value..." line; exit 0 when every byte was right,
 * 1 on a wrong byte, 2 usage, 3 setup.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "fc-send.h"

#define PROG "fc-vmm"
#define UNIT 4096u		/* what the guest touches and checks */
#define HUGE (2ull << 20)
#define GAP HUGE		/* between regions, as between Firecracker's memory slots */
#define MAX_REGIONS FC_SEND_MAX_REGIONS
#define MAX_THREADS 16

struct opts {
	const char *socket, *memory;
	unsigned regions, threads, pct, write_pct, pace_us, deadline_s;
	uint64_t seed;
	bool huge, kernel, balloon, after_handler, summary;
	enum fc_send_json json;
};

struct region {
	char *base;
	uint64_t size, offset;
};

struct vm {
	struct opts o;
	uint64_t len, ps;	/* guest memory = snapshot size; page size */
	struct region r[MAX_REGIONS];
	const unsigned char *ref;	/* the snapshot, mapped shared: what each byte must be */
	uint32_t *set;		/* the working set, in this run's order */
	uint64_t nset;
	uint64_t balloon_off, balloon_len;	/* guest-physical range given back */
	atomic_ulong touched, bad, balloon_bad, written;
	unsigned long mark;	/* touches before the balloon inflates */
	pthread_mutex_t lock;
	pthread_cond_t marked;
};

#define die(...) ex_die(PROG, __VA_ARGS__)

/* ---- the snapshot ---- */

static int make_snapshot(const char *path, unsigned mib, uint64_t seed)
{
	uint64_t *page = malloc(UNIT);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0 || !page)
		die(3, "cannot create %s: %s", path, strerror(errno));
	for (uint64_t p = 0; p < (uint64_t)mib << 20 >> 12; p++) {
		ex_fill_page(page, UNIT, seed, p);
		if (write(fd, page, UNIT) != UNIT)
			die(3, "writing %s: %s", path, strerror(errno));
	}
	if (fsync(fd) || close(fd))
		die(3, "writing %s: %s", path, strerror(errno));
	free(page);
	return 0;
}

/* The snapshot mapped shared and read in now: the checks cost no I/O later. */
static void map_reference(struct vm *v)
{
	int fd = open(v->o.memory, O_RDONLY | O_CLOEXEC);
	struct stat st;

	if (fd < 0 || fstat(fd, &st))
		die(3, "cannot open the snapshot %s: %s", v->o.memory, strerror(errno));
	v->len = (uint64_t)st.st_size;
	if (!v->len || v->len % (v->o.regions * v->ps))
		die(3, "the snapshot's %llu bytes are not %u regions of whole %llu-byte pages",
		    (unsigned long long)v->len, v->o.regions, (unsigned long long)v->ps);
	v->ref = mmap(NULL, v->len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (v->ref == MAP_FAILED)
		die(3, "mapping the snapshot: %s", strerror(errno));
	close(fd);
}

/* ---- guest memory, as Firecracker lays it out ---- */

/* Regions of equal size with a gap between them, each aligned for huge pages. */
static void map_guest(struct vm *v)
{
	uint64_t each = v->len / v->o.regions, span = v->len + (uint64_t)v->o.regions * GAP + HUGE;
	char *res = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *b;
	int fd = -1;

	if (res == MAP_FAILED)
		die(3, "reserving guest memory: %s", strerror(errno));
	b = (char *)(((uintptr_t)res + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
	if (v->o.kernel && (fd = open(v->o.memory, O_RDONLY | O_CLOEXEC)) < 0)
		die(3, "cannot open the snapshot %s: %s", v->o.memory, strerror(errno));
	for (unsigned i = 0; i < v->o.regions; i++) {
		struct region *g = &v->r[i];
		int flags = MAP_PRIVATE | MAP_FIXED | (v->o.kernel ? 0 : MAP_ANONYMOUS) |
			    (v->o.huge ? MAP_HUGETLB : 0);

		*g = (struct region){ .base = b + i * (each + GAP), .size = each, .offset = i * each };
		if (mmap(g->base, g->size, PROT_READ | PROT_WRITE, flags, fd, v->o.kernel ? (off_t)g->offset : 0) ==
		    MAP_FAILED)
			die(3, "mapping guest region %u%s: %s", i,
			    v->o.huge ? " (hugetlb: raise vm.nr_hugepages)" : "", strerror(errno));
	}
	if (fd >= 0)
		close(fd);
}

static unsigned char *guest_addr(const struct vm *v, uint64_t gpa)
{
	const struct region *g = &v->r[gpa / v->r[0].size];

	return (unsigned char *)g->base + (gpa - g->offset);
}

/* ---- the handshake, as Firecracker sends it (fc-send.c) ---- */

/* Registers every region and sends the fd and the table in one message; the socket stays open. */
static int hand_over(const struct vm *v)
{
	struct fc_send_region r[MAX_REGIONS];

	for (unsigned i = 0; i < v->o.regions; i++)
		r[i] = (struct fc_send_region){ .base = v->r[i].base, .size = v->r[i].size,
						.offset = v->r[i].offset, .page_size = v->ps };
	return fc_send_hand_over(PROG, v->o.socket, r, v->o.regions, v->o.json);
}

/* ---- the guest ---- */

/* A page of the working set (a fixed seeded subset of --touch-pct). */
static bool in_set(const struct vm *v, uint64_t page)
{
	return ex_pattern(v->o.seed ^ 0x5e7, page, 0) % 100 < v->o.pct;
}

/* The working set: pages of a fixed seeded subset (the same each run), in a new order each run. */
static void choose_set(struct vm *v)
{
	uint64_t pages = v->len / UNIT, rnd = ex_now_ns() ^ ((uint64_t)getpid() << 32);

	v->set = malloc(pages * sizeof(*v->set));
	if (!v->set)
		die(3, "out of memory");
	for (uint64_t p = 0; p < pages; p++)
		if (in_set(v, p))
			v->set[v->nset++] = (uint32_t)p;
	for (uint64_t i = v->nset; i > 1; i--) {	/* Fisher-Yates */
		uint64_t j = ex_rand(&rnd) % i, x = v->set[i - 1];

		v->set[i - 1] = v->set[j];
		v->set[j] = (uint32_t)x;
	}
	v->mark = (unsigned long)(v->nset / 3);
}

static bool in_balloon(const struct vm *v, uint64_t gpa)
{
	return v->o.balloon && gpa - v->balloon_off < v->balloon_len;
}

/* Whether the guest writes the UNIT at gpa: a fixed seeded share of the working set, never in the balloon. */
static bool unit_written(const struct vm *v, uint64_t gpa)
{
	return v->o.write_pct && !in_balloon(v, gpa) && in_set(v, gpa / UNIT) &&
	       ex_pattern(v->o.seed ^ 0x3417, gpa / UNIT, 1) % 100 < v->o.write_pct;
}

/* What a written UNIT's first word becomes: never the snapshot's. */
static uint64_t written_word(const struct vm *v, uint64_t gpa)
{
	return ~*(const uint64_t *)(v->ref + gpa);
}

static bool unit_zero(const struct vm *v, uint64_t gpa)
{
	const volatile uint64_t *p = (const volatile uint64_t *)guest_addr(v, gpa);

	for (unsigned w = 0; w < UNIT / 8; w++)
		if (p[w])
			return false;
	return true;
}

/* Every byte of the UNIT at gpa is the snapshot's (or zero, in the balloon's range). */
static bool unit_ok(const struct vm *v, uint64_t gpa)
{
	const volatile uint64_t *p = (const volatile uint64_t *)guest_addr(v, gpa);
	const uint64_t *ref = (const uint64_t *)(v->ref + gpa);

	if (unit_written(v, gpa))	/* written once touched; check_all runs after every touch */
		return p[0] == written_word(v, gpa) && !memcmp((const char *)p + 8, ref + 1, UNIT - 8);
	if (!in_balloon(v, gpa))
		return !memcmp((const void *)p, ref, UNIT);
	for (unsigned w = 0; w < UNIT / 8; w++)
		if (p[w] != ref[w] && p[w])
			return false;
	return true;
}

static void *toucher(void *arg)
{
	struct vm *v = ((void **)arg)[0];
	uint64_t t = (uintptr_t)((void **)arg)[1];

	for (uint64_t i = t; i < v->nset; i += v->o.threads) {
		uint64_t gpa = (uint64_t)v->set[i] * UNIT;

		if (unit_written(v, gpa)) {	/* a write fault: the snapshot's page comes in first */
			*(volatile uint64_t *)guest_addr(v, gpa) = written_word(v, gpa);
			atomic_fetch_add(&v->written, 1);
		} else {
			(void)*(volatile char *)guest_addr(v, gpa);	/* the fault, if any */
		}
		atomic_fetch_add(&v->bad, !unit_ok(v, gpa));
		if (atomic_fetch_add(&v->touched, 1) + 1 == v->mark) {
			pthread_mutex_lock(&v->lock);
			pthread_cond_signal(&v->marked);
			pthread_mutex_unlock(&v->lock);
		}
		if (v->o.pace_us)
			usleep(v->o.pace_us);
	}
	return NULL;
}

/* Once a third of the set is in: the balloon takes a range back, which must read zero from then on. */
static void *balloon(void *arg)
{
	struct vm *v = arg;
	unsigned char *b = guest_addr(v, v->balloon_off);

	pthread_mutex_lock(&v->lock);
	while (atomic_load(&v->touched) < v->mark)
		pthread_cond_wait(&v->marked, &v->lock);
	pthread_mutex_unlock(&v->lock);
	if (madvise(b, v->balloon_len, MADV_DONTNEED)) {
		fprintf(stderr, PROG ": balloon madvise: %s\n", strerror(errno));
		atomic_store(&v->balloon_bad, v->balloon_len / UNIT);
		return NULL;
	}
	for (uint64_t off = 0; off < v->balloon_len; off += UNIT)
		atomic_fetch_add(&v->balloon_bad, !unit_zero(v, v->balloon_off + off));
	return NULL;
}

/* Runs the guest; returns nanoseconds from resume to the last touch. */
static uint64_t run_guest(struct vm *v)
{
	pthread_t th[MAX_THREADS + 1];
	void *args[MAX_THREADS][2];
	uint64_t t0 = ex_now_ns();
	unsigned n = 0;

	for (uintptr_t t = 0; t < v->o.threads; t++) {
		args[t][0] = v;
		args[t][1] = (void *)t;
		n += !pthread_create(&th[n], NULL, toucher, args[t]);
	}
	if (v->o.balloon)
		n += !pthread_create(&th[n], NULL, balloon, v);
	if (n != v->o.threads + v->o.balloon)
		die(3, "pthread_create failed");	/* the threads started hang on: exit */
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	return ex_now_ns() - t0;
}

/* After the handler is gone (EOF): every page must be there and right, with nobody to serve it. */
static unsigned long check_all(struct vm *v, int sock)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	unsigned long bad = 0;
	char c;

	if (poll(&p, 1, 30000) != 1 || read(sock, &c, 1) != 0)
		die(3, "the handler did not close the connection within 30 s");
	for (uint64_t gpa = 0; gpa < v->len; gpa += UNIT)
		bad += in_balloon(v, gpa) ? !unit_zero(v, gpa) : !unit_ok(v, gpa);
	return bad;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: " PROG " --memory SNAPSHOT (--socket PATH | --kernel) [--regions N] [--huge]\n"
		"              [--old-json | --both-json] [--touch-pct P] [--seed S] [--threads N]\n"
		"              [--balloon] [--pace-us N] [--after-handler] [--deadline S] [--summary]\n"
		"              [--write-pct W]\n"
		"       " PROG " --make-snapshot FILE --mib N [--seed S]\n");
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o, const char **make, unsigned *mib)
{
	const char *val;

	*o = (struct opts){ .regions = 2, .threads = 2, .pct = 100, .seed = 0xf1c3, .deadline_s = 120 };
	for (int i = 1; i < argc; i++) {
		if ((val = ex_opt(argc, argv, &i, "--socket")))
			o->socket = val;
		else if ((val = ex_opt(argc, argv, &i, "--memory")))
			o->memory = val;
		else if ((val = ex_opt(argc, argv, &i, "--make-snapshot")))
			*make = val;
		else if ((val = ex_opt(argc, argv, &i, "--mib")))
			*mib = (unsigned)ex_count(PROG, "--mib", val, 1, 65536);
		else if ((val = ex_opt(argc, argv, &i, "--regions")))
			o->regions = (unsigned)ex_count(PROG, "--regions", val, 1, MAX_REGIONS);
		else if ((val = ex_opt(argc, argv, &i, "--threads")))
			o->threads = (unsigned)ex_count(PROG, "--threads", val, 1, MAX_THREADS);
		else if ((val = ex_opt(argc, argv, &i, "--touch-pct")))
			o->pct = (unsigned)ex_count(PROG, "--touch-pct", val, 1, 100);
		else if ((val = ex_opt(argc, argv, &i, "--write-pct")))
			o->write_pct = (unsigned)ex_count(PROG, "--write-pct", val, 0, 100);
		else if ((val = ex_opt(argc, argv, &i, "--seed")))
			o->seed = ex_count(PROG, "--seed", val, 0, ~0ul);
		else if ((val = ex_opt(argc, argv, &i, "--pace-us")))
			o->pace_us = (unsigned)ex_count(PROG, "--pace-us", val, 0, 1000000);
		else if ((val = ex_opt(argc, argv, &i, "--deadline")))
			o->deadline_s = (unsigned)ex_count(PROG, "--deadline", val, 0, 86400);
		else if (!strcmp(argv[i], "--huge"))
			o->huge = true;
		else if (!strcmp(argv[i], "--kernel"))
			o->kernel = true;
		else if (!strcmp(argv[i], "--balloon"))
			o->balloon = true;
		else if (!strcmp(argv[i], "--after-handler"))
			o->after_handler = true;
		else if (!strcmp(argv[i], "--summary"))
			o->summary = true;
		else if (!strcmp(argv[i], "--old-json"))
			o->json = FC_SEND_JSON_OLD;
		else if (!strcmp(argv[i], "--both-json"))
			o->json = FC_SEND_JSON_BOTH;
		else
			usage();
	}
	if (*make ? !*mib : !o->memory || !o->socket == !o->kernel || (o->kernel && (o->huge || o->after_handler)))
		usage();
}

int main(int argc, char **argv)
{
	struct vm v = { .lock = PTHREAD_MUTEX_INITIALIZER, .marked = PTHREAD_COND_INITIALIZER };
	const char *make = NULL;
	unsigned mib = 0;
	unsigned long all_bad = 0;
	uint64_t ns;
	int sock = -1;
	bool ok;
	char fig[96];

	parse(argc, argv, &v.o, &make, &mib);
	if (make)
		return make_snapshot(make, mib, v.o.seed);
	v.ps = v.o.huge ? HUGE : UNIT;
	map_reference(&v);
	map_guest(&v);
	choose_set(&v);
	/* The balloon: 1 MiB (or one huge page) in the middle of region 0. */
	v.balloon_len = v.ps > (1u << 20) ? v.ps : 1u << 20;
	v.balloon_off = (v.r[0].size / 2) & ~(v.ps - 1);
	/* A private file mapping reads the file again after MADV_DONTNEED: no balloon there. */
	if (v.balloon_off + v.balloon_len > v.r[0].size || v.o.kernel)
		v.o.balloon = false;
	ex_deadline(PROG, v.o.deadline_s);
	if (!v.o.kernel)
		sock = hand_over(&v);
	printf("FCVMM resumed\n");
	fflush(stdout);
	ns = run_guest(&v);
	if (v.o.after_handler)
		all_bad = check_all(&v, sock);
	ok = !atomic_load(&v.bad) && !atomic_load(&v.balloon_bad) && !all_bad;
	printf("FCVMM mode=%s huge=%s regions=%u pages=%llu touched=%llu restore_us=%.0f bad_pages=%lu "
	       "balloon_pages=%llu balloon_nonzero=%lu after_handler_bad=%lu written=%lu\n",
	       v.o.kernel ? "kernel" : "uffd", v.o.huge ? "yes" : "no", v.o.regions,
	       (unsigned long long)(v.len / UNIT), (unsigned long long)v.nset, ns / 1e3,
	       atomic_load(&v.bad), (unsigned long long)(v.o.balloon ? v.balloon_len / UNIT : 0),
	       atomic_load(&v.balloon_bad), all_bad, atomic_load(&v.written));
	if (v.o.summary) {
		snprintf(fig, sizeof(fig), "%llu pages in %.1f ms", (unsigned long long)v.nset, ns / 1e6);
		ex_summary("fc-vmm", ok, "Firecracker stand-in restored by uffd-serve", fig);
	}
	fflush(stdout);
	free(v.set);
	return ok ? 0 : 1;
}
