/* SPDX-License-Identifier: MIT */
/*
 * handoff-vmm: the process that owns guest memory, as a VM monitor does
 * when it restores a guest from a snapshot and leaves the page faults to a
 * separate handler process (handoff-handler).
 *
 * Guest memory is two regions with a hole between them: three quarters in
 * base pages, a quarter in 2 MiB hugetlb pages when the kernel can reserve
 * them (else base pages too; the report says which). Anonymous memory
 * registered for MISSING faults (anon/COPY), or with --memfd memfds mapped
 * shared and registered for MISSING and MINOR faults (memfd/MINOR), the
 * memfds going to the handler with the userfaultfd.
 *
 * After the handoff two guest threads touch every page in random order and
 * check every byte against the snapshot's formula (ho_word()); the first
 * load of each page is timed (the stall a fault costs). Once a third of the
 * pages are in, a balloon thread gives 2 MiB of region 0 back to the host
 * (MADV_DONTNEED on anonymous memory, MADV_REMOVE on a memfd, as VM monitors
 * do) and checks that every byte of it reads zero afterwards: memory given
 * back is zero, never the snapshot again.
 *
 * usage: handoff-vmm --socket PATH [--mib N] [--memfd]
 * Prints "VMM restoring" when the balloon starts (the runner's cue for the
 * SIGKILL run), then one "VMM key=value..." line; exits 1 on any mismatch.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uffd.h>

#include "handoff.h"

#define PROG "handoff-vmm"
#define TOUCHERS 2
#define PAGE 4096u		/* the unit touched and checked */

struct region {
	char *base;
	uint64_t len, gpa;	/* bytes; guest-physical offset = offset in the snapshot */
	int fd;			/* memfd, or -1 */
	bool huge;
};

struct vmm {
	unsigned mib;
	bool memfd;
	struct region r[2];
	uint64_t pages;		/* of PAGE bytes */
	uint32_t *order;	/* the pages in random order */
	unsigned long mark;	/* pages touched when the balloon starts */
	atomic_ulong touched, bad, stall_ns, balloon_bad;
	pthread_mutex_t lock;
	pthread_cond_t marked;
};

static char *page_addr(const struct vmm *v, uint64_t gpa)
{
	const struct region *g = &v->r[gpa >= v->r[1].gpa];

	return g->base + (gpa - g->gpa);
}

static bool in_balloon(const struct vmm *v, uint64_t gpa)
{
	uint64_t b = ho_balloon_off(v->mib);

	return gpa >= b && gpa < b + HO_BALLOON_LEN;
}

/* Maps g at its place in the reservation: hugetlb if asked and possible, else base pages. */
static int map_region(const struct vmm *v, struct region *g, bool try_huge)
{
	for (int huge = try_huge; huge >= 0; huge--) {
		int flags = MAP_FIXED | (v->memfd ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS) |
			    (huge && !v->memfd ? MAP_HUGETLB : 0);

		g->fd = -1;
		if (v->memfd) {
			g->fd = memfd_create("guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB : 0));
			if (g->fd < 0 || ftruncate(g->fd, (off_t)g->len))
				goto next;
		}
		/* hugetlb reserves its pages here: ENOMEM when the kernel has too few. */
		if (mmap(g->base, g->len, PROT_READ | PROT_WRITE, flags, g->fd, 0) != MAP_FAILED) {
			g->huge = huge;
			return 0;
		}
next:
		if (g->fd >= 0)
			close(g->fd);
	}
	return -errno;
}

/* Two regions with a 2 MiB hole between them, region 1 aligned for huge pages. */
static int map_guest(struct vmm *v)
{
	uint64_t len0 = ho_region0_len(v->mib), len1 = ((uint64_t)v->mib << 20) - len0;
	size_t span = len0 + len1 + 2 * HO_HUGE;
	char *res = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	char *b;
	int err;

	if (res == MAP_FAILED)
		return -errno;
	b = (char *)(((uintptr_t)res + HO_HUGE - 1) & ~(uintptr_t)(HO_HUGE - 1));
	v->r[0] = (struct region){ .base = b, .len = len0, .gpa = 0 };
	v->r[1] = (struct region){ .base = b + len0 + HO_HUGE, .len = len1, .gpa = len0 };
	v->pages = (len0 + len1) / PAGE;
	if ((err = map_region(v, &v->r[0], false)) || (err = map_region(v, &v->r[1], true)))
		return err;
	return 0;
}

static int connect_to(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s = -1;

	if (strlen(path) >= sizeof(a.sun_path))
		return -ENAMETOOLONG;
	strcpy(a.sun_path, path);
	/* The handler may still be writing its snapshot: try for 10 s. */
	for (int i = 0; i < 2000; i++) {
		s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0 || !connect(s, (struct sockaddr *)&a, sizeof(a)))
			return s < 0 ? -errno : s;
		close(s);
		if (errno != ENOENT && errno != ECONNREFUSED)
			return -errno;
		usleep(5000);
	}
	return -ETIMEDOUT;
}

/* Registers the guest and sends its userfaultfd, the table and the memfds to the handler. */
static int hand_over(struct vmm *v, int sock)
{
	uint64_t modes = UFFDIO_REGISTER_MODE_MISSING | (v->memfd ? UFFDIO_REGISTER_MODE_MINOR : 0);
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_EVENT_REMOVE,
			       .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd_handoff_region rows[2];
	struct uffd *u;
	int err;

	if ((err = uffd_open(&u, &o)))
		return ex_fail(PROG, "uffd_open", err);
	for (int i = 0; i < 2; i++) {
		const struct region *g = &v->r[i];

		rows[i] = (struct uffd_handoff_region){
			.owner_addr = (uintptr_t)g->base, .length = g->len, .modes = modes, .fd = g->fd,
			/* No file to ask: anonymous hugetlb declares its page size. */
			.page_size = g->huge && g->fd < 0 ? HO_HUGE : 0,
		};
		if ((err = uffd_register(u, g->base, g->len, modes, NULL)))
			break;
	}
	if (!err)
		err = uffd_handoff_send(sock, u, rows, 2);
	if (err)
		ex_fail(PROG, "registering and sending the guest", err);
	uffd_close(u);	/* the handler's copy serves the faults now */
	return err ? 1 : 0;
}

/* 0 when the PAGE bytes at gpa hold the snapshot (or zeros, in the balloon's range). */
static bool page_ok(const struct vmm *v, uint64_t gpa, const volatile uint64_t *p)
{
	bool zero_ok = in_balloon(v, gpa);

	for (unsigned w = 0; w < PAGE / 8; w++) {
		uint64_t x = p[w];

		if (x != ho_word(gpa + 8 * w) && !(zero_ok && x == 0))
			return false;
	}
	return true;
}

static void *toucher(void *arg)
{
	struct vmm *v = ((void **)arg)[0];
	uintptr_t t = (uintptr_t)((void **)arg)[1];

	for (uint64_t i = t; i < v->pages; i += TOUCHERS) {
		uint64_t gpa = (uint64_t)v->order[i] * PAGE, t0 = ex_now_ns();
		const volatile uint64_t *p = (const volatile uint64_t *)page_addr(v, gpa);

		(void)p[0];	/* the first load: a fault if the page is not there yet */
		atomic_fetch_add(&v->stall_ns, ex_now_ns() - t0);
		if (!page_ok(v, gpa, p))
			atomic_fetch_add(&v->bad, 1);
		if (atomic_fetch_add(&v->touched, 1) + 1 == v->mark) {
			pthread_mutex_lock(&v->lock);
			pthread_cond_signal(&v->marked);
			pthread_mutex_unlock(&v->lock);
		}
	}
	return NULL;
}

/* Gives 2 MiB of region 0 back in the middle of the restore, then expects zeros there. */
static void *balloon(void *arg)
{
	struct vmm *v = arg;
	char *b = page_addr(v, ho_balloon_off(v->mib));

	pthread_mutex_lock(&v->lock);
	while (atomic_load(&v->touched) < v->mark)
		pthread_cond_wait(&v->marked, &v->lock);
	pthread_mutex_unlock(&v->lock);
	printf("VMM restoring\n");
	fflush(stdout);
	if (madvise(b, HO_BALLOON_LEN, v->memfd ? MADV_REMOVE : MADV_DONTNEED)) {
		perror(PROG ": balloon madvise");
		atomic_store(&v->balloon_bad, HO_BALLOON_LEN / PAGE);
		return NULL;
	}
	for (uint64_t off = 0; off < HO_BALLOON_LEN; off += PAGE) {
		const volatile uint64_t *p = (const volatile uint64_t *)(b + off);
		bool zero = true;

		for (unsigned w = 0; w < PAGE / 8; w++)
			zero &= p[w] == 0;
		atomic_fetch_add(&v->balloon_bad, !zero);
	}
	return NULL;
}

static int restore(struct vmm *v)
{
	pthread_t th[TOUCHERS + 1];
	void *args[TOUCHERS][2];
	uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid(), t0;
	int n = 0;

	v->order = malloc(v->pages * sizeof(*v->order));
	if (!v->order)
		return ex_fail(PROG, "malloc", -ENOMEM);
	for (uint64_t i = 0; i < v->pages; i++)
		v->order[i] = (uint32_t)i;
	for (uint64_t i = v->pages - 1; i > 0; i--) {	/* Fisher-Yates */
		uint64_t j = ex_rand(&seed) % (i + 1), x = v->order[i];

		v->order[i] = v->order[j];
		v->order[j] = (uint32_t)x;
	}
	v->mark = (unsigned long)(v->pages / 3);
	t0 = ex_now_ns();
	for (uintptr_t t = 0; t < TOUCHERS; t++) {
		args[t][0] = v;
		args[t][1] = (void *)t;
		n += !pthread_create(&th[n], NULL, toucher, args[t]);
	}
	n += !pthread_create(&th[n], NULL, balloon, v);
	if (n != TOUCHERS + 1)
		return ex_fail(PROG, "pthread_create", -EAGAIN);	/* the threads started hang on */
	for (int i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	printf("VMM mode=%s huge=%s pages=%llu restore_us=%.0f stall_us=%.0f bad_pages=%lu "
	       "balloon_pages=%llu balloon_nonzero=%lu exit_wall_us=%llu\n",
	       v->memfd ? "memfd/MINOR" : "anon/COPY", v->r[1].huge ? "yes" : "no",
	       (unsigned long long)v->pages, (ex_now_ns() - t0) / 1e3,
	       atomic_load(&v->stall_ns) / 1e3, atomic_load(&v->bad), (unsigned long long)(HO_BALLOON_LEN / PAGE),
	       atomic_load(&v->balloon_bad), (unsigned long long)ho_wall_us());
	fflush(stdout);
	return atomic_load(&v->bad) || atomic_load(&v->balloon_bad);
}

static void usage(void)
{
	fprintf(stderr, "usage: " PROG " --socket PATH [--mib N] [--memfd]\n"
		"  N: guest memory in MiB, a multiple of 8 (default 64)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct vmm v = { .mib = 64, .lock = PTHREAD_MUTEX_INITIALIZER,
			 .marked = PTHREAD_COND_INITIALIZER };
	const char *path = NULL, *val;
	int sock, err, rc;

	for (int i = 1; i < argc; i++) {
		if ((val = ex_opt(argc, argv, &i, "--socket")))
			path = val;
		else if ((val = ex_opt(argc, argv, &i, "--mib")))
			v.mib = (unsigned)ex_count(PROG, "--mib", val, 8, 4096);
		else if (!strcmp(argv[i], "--memfd"))
			v.memfd = true;
		else
			usage();
	}
	if (!path || v.mib % 8)
		usage();
	if ((err = map_guest(&v)))
		return ex_fail(PROG, "mapping guest memory", err);
	if ((sock = connect_to(path)) < 0)
		return ex_fail(PROG, "connecting to the handler", sock);
	rc = hand_over(&v, sock);
	if (!rc)
		rc = restore(&v);
	for (int i = 0; i < 2; i++)
		if (v.r[i].fd >= 0)
			close(v.r[i].fd);
	close(sock);
	free(v.order);
	return rc;
}
