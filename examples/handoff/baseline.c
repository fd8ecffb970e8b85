/* SPDX-License-Identifier: MIT */
/*
 * The same handler written by hand, the way most page-fault handlers of VM
 * restores are (Firecracker's example handler, for one): poll the
 * userfaultfd and the vmm's pidfd, read one message, answer a page fault
 * with one ioctl for its page -- UFFDIO_COPY from the snapshot (anon), or
 * pwrite into the vmm's memfd and UFFDIO_CONTINUE (memfd) -- and track the
 * pages the vmm gives back itself. No fault-around.
 *
 * The handoff itself (the descriptors and the region table) still comes
 * from uffd_handoff_recv(): the comparison is about serving the faults.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/userfaultfd.h>
#include <uffd.h>

#include "handler.h"
#include "handoff.h"

/* ---- serving by hand: begin ---- */
#define MAX_REGIONS 8
#define MAX_RETRY 256

struct hand_region {
	uint64_t base, len, ps;
	int fd;			/* the vmm's memfd, or -1 */
	unsigned char *alias;	/* its mapping here (hugetlbfs has no pwrite) */
	const unsigned char *src;
	bool *gone;		/* pages the vmm gave back */
};

struct hand {
	int uffd;
	struct hand_region g[MAX_REGIONS];
	size_t n;
	unsigned char *zeros;	/* a zeroed huge page: hugetlbfs has no UFFDIO_ZEROPAGE */
	struct uffd_msg retry[MAX_RETRY];	/* faults answered -EAGAIN, tried again */
	size_t nretry;
	struct ho_served *s;
};

static struct hand_region *find(struct hand *hd, uint64_t addr)
{
	for (size_t i = 0; i < hd->n; i++)
		if (addr - hd->g[i].base < hd->g[i].len)
			return &hd->g[i];
	return NULL;
}

static int ioctl_errno(struct hand *hd, unsigned long req, void *arg)
{
	hd->s->ioctls++;
	return ioctl(hd->uffd, req, arg) ? -errno : 0;
}

static int copy(struct hand *hd, uint64_t dst, const void *src, uint64_t len)
{
	struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)src, .len = len };

	return ioctl_errno(hd, UFFDIO_COPY, &c);
}

static int cont(struct hand *hd, uint64_t dst, uint64_t len)
{
	struct uffdio_continue c = { .range = { dst, len } };

	return ioctl_errno(hd, UFFDIO_CONTINUE, &c);
}

/* One fault, one page, one resolving ioctl (memfd: after writing the page). */
static int answer(struct hand *hd, const struct uffd_msg *m)
{
	uint64_t a = m->arg.pagefault.address;
	struct hand_region *g = find(hd, a);
	uint64_t off, page;

	if (!g)
		return -EFAULT;
	off = (a - g->base) & ~(g->ps - 1);
	page = g->base + off;
	if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR)
		return cont(hd, page, g->ps);
	if (g->gone[off / g->ps]) {
		struct uffdio_zeropage z = { .range = { page, g->ps } };

		return g->ps > 4096 ? copy(hd, page, hd->zeros, g->ps) : ioctl_errno(hd, UFFDIO_ZEROPAGE, &z);
	}
	if (g->fd < 0)
		return copy(hd, page, g->src + off, g->ps);
	if (g->ps > 4096)
		memcpy(g->alias + off, g->src + off, g->ps);
	else if (pwrite(g->fd, g->src + off, g->ps, (off_t)off) != (ssize_t)g->ps)
		return -errno;
	return cont(hd, page, g->ps);
}

static void serve_fault(struct hand *hd, const struct uffd_msg *m)
{
	int err = answer(hd, m);
	struct uffdio_range r = { m->arg.pagefault.address & ~4095ull, 4096 };

	if (err == -EAGAIN && hd->nretry < MAX_RETRY)
		hd->retry[hd->nretry++] = *m;	/* an event must be read first */
	else if (err == -EEXIST || err == -EAGAIN)
		ioctl(hd->uffd, UFFDIO_WAKE, &r);	/* mapped meanwhile, or retry by faulting again */
	else if (err == -ESRCH)
		hd->s->owner_gone++;
	else if (err && err != -ENOENT)
		hd->s->errors++;
}

static void removed(struct hand *hd, const struct uffd_msg *m)
{
	for (uint64_t a = m->arg.remove.start; a < m->arg.remove.end; a += 4096) {
		struct hand_region *g = find(hd, a);

		if (g)
			g->gone[(a - g->base) / g->ps] = true;
	}
}

/*
 * Faults answered -EAGAIN: a REMOVE was pending. Its message may already be
 * read while the vmm's madvise still holds the range, so they are tried
 * again on every turn, not only after the next event.
 */
static void retry(struct hand *hd)
{
	struct uffd_msg again[MAX_RETRY];
	size_t k = hd->nretry;

	memcpy(again, hd->retry, k * sizeof(again[0]));
	hd->nretry = 0;
	for (size_t i = 0; i < k; i++)
		serve_fault(hd, &again[i]);
}

static int serve_loop(struct hand *hd, int pidfd)
{
	for (;;) {
		struct pollfd p[2] = { { hd->uffd, POLLIN, 0 }, { pidfd, POLLIN, 0 } };
		struct uffd_msg m;
		ssize_t n;

		retry(hd);
		if (poll(p, 2, hd->nretry ? 1 : -1) < 0 && errno != EINTR)
			return -errno;
		if (p[1].revents) {	/* the vmm exited */
			hd->s->exit_wall_us = ho_wall_us();
			return 0;
		}
		n = read(hd->uffd, &m, sizeof(m));
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n != sizeof(m))
			return n < 0 ? -errno : -EIO;
		if (m.event == UFFD_EVENT_PAGEFAULT) {
			hd->s->faults++;
			hd->s->minor += !!(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR);
			serve_fault(hd, &m);
		} else if (m.event == UFFD_EVENT_REMOVE) {
			removed(hd, &m);
		}
	}
}
int serve_baseline(struct uffd_handoff *h, const unsigned char *snap, struct ho_served *s)
{
	struct hand hd = { .uffd = uffd_fd(h->uffd), .n = h->nregions, .s = s };
	uint64_t off = 0;
	int err = 0;

	if (hd.n > MAX_REGIONS)
		return fprintf(stderr, "handoff-handler: more than %d regions\n", MAX_REGIONS), 1;
	for (size_t i = 0; i < hd.n; i++) {
		struct uffd_region *r = h->regions[i];
		struct hand_region *g = &hd.g[i];

		*g = (struct hand_region){ (uintptr_t)uffd_region_base(r), uffd_region_length(r),
					   uffd_region_page_size(r), uffd_region_fd(r),
					   uffd_region_alias(r), snap + off, NULL };
		off += g->len;
		g->gone = calloc(g->len / g->ps, sizeof(bool));
		err = g->gone ? 0 : -ENOMEM;
		if (g->ps > 4096 && !hd.zeros && !err)
			err = (hd.zeros = calloc(1, g->ps)) ? 0 : -ENOMEM;
	}
	if (!err)
		err = serve_loop(&hd, h->pidfd);
	if (err)
		ex_fail("handoff-handler", "serving the vmm by hand", err);
	for (size_t i = 0; i < hd.n; i++)
		free(hd.g[i].gone);
	free(hd.zeros);
	return err ? 1 : 0;
}
/* ---- serving by hand: end ---- */
