/* SPDX-License-Identifier: MIT */
/*
 * fc-baseline: the page-fault handler of a Firecracker snapshot restore
 * written by hand, as Firecracker's example handler is: poll the
 * userfaultfd, read one message, answer a fault with one UFFDIO_COPY of its
 * page from a mapping of the snapshot (a zero page for pages the balloon
 * gave back), until the VM exits. The handshake is uffd-serve's (the same
 * socket protocol and checks): the comparison is about serving the faults.
 *
 * usage: fc-baseline --socket PATH --memory SNAPSHOT
 * Prints one "BASELINE faults=N copies=N zeros=N retries=N" line; exit 0
 * when the VM exited and every fault was answered.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "../tools/serve.h"

#define MAX_RETRY 256	/* one per faulting thread is enough */

struct hand {
	struct fc_handshake h;
	const unsigned char *snap;	/* the snapshot, mapped */
	unsigned char **gone;	/* per region, a byte per page: given back by the balloon */
	unsigned char *zeros;	/* a zeroed page of the largest size: hugetlbfs has no ZEROPAGE */
	uint64_t retry[MAX_RETRY];	/* faults answered -EAGAIN, tried again */
	size_t nretry;
	unsigned long faults, copies, zeropages, retries;
};

static const struct uffd_fc_region *find(const struct hand *hd, uint64_t addr, size_t *i)
{
	for (*i = 0; *i < hd->h.n; (*i)++)
		if (addr - hd->h.r[*i].owner_addr < hd->h.r[*i].length)
			return &hd->h.r[*i];
	return NULL;
}

/* One fault: 0 answered, -EAGAIN to retry after the pending events, else -errno. */
static int serve_fault(struct hand *hd, uint64_t addr)
{
	size_t i;
	const struct uffd_fc_region *g = find(hd, addr, &i);
	uint64_t page, off;
	struct uffdio_copy c;
	bool zero;

	if (!g)
		return -EFAULT;
	page = addr & ~(g->page_size - 1);
	off = page - g->owner_addr;
	zero = hd->gone[i][off / g->page_size];
	c = (struct uffdio_copy){ .dst = page, .len = g->page_size,
				  .src = (uintptr_t)(zero ? hd->zeros : hd->snap + g->offset + off) };
	if (!ioctl(hd->h.uffd, UFFDIO_COPY, &c) || errno == EEXIST) {
		hd->copies += !zero;
		hd->zeropages += zero;
		return 0;
	}
	return errno == EAGAIN && c.copy <= 0 ? -EAGAIN : -errno;
}

static void removed(struct hand *hd, uint64_t start, uint64_t end)
{
	for (uint64_t a = start; a < end;) {
		size_t i;
		const struct uffd_fc_region *g = find(hd, a, &i);

		if (!g)
			return;
		for (; a < end && a - g->owner_addr < g->length; a += g->page_size)
			hd->gone[i][(a - g->owner_addr) / g->page_size] = 1;
	}
}

/* Faults answered -EAGAIN are tried again once the pending events are read; 0 or -errno. */
static int retry_all(struct hand *hd)
{
	size_t kept = 0;
	int err = 0;

	for (size_t i = 0; i < hd->nretry && !err; i++) {
		hd->retries++;
		if ((err = serve_fault(hd, hd->retry[i])) == -EAGAIN) {
			hd->retry[kept++] = hd->retry[i];
			err = 0;
		}
	}
	hd->nretry = kept;
	return err;
}

/* Reads and answers one message at a time, until the VM exits. */
static int serve(struct hand *hd)
{
	struct pollfd p[2] = { { .fd = hd->h.uffd, .events = POLLIN }, { .fd = hd->h.pidfd, .events = POLLIN } };

	for (;;) {
		struct uffd_msg m;
		int err = 0;

		if (poll(p, 2, hd->nretry ? 1 : -1) < 0 && errno != EINTR)
			return -errno;
		if (p[1].revents)
			return 0;	/* the VM exited */
		if (read(hd->h.uffd, &m, sizeof(m)) != sizeof(m)) {
			if (errno != EAGAIN)
				return -errno;
			err = retry_all(hd);
		} else if (m.event == UFFD_EVENT_PAGEFAULT) {
			hd->faults++;
			err = serve_fault(hd, m.arg.pagefault.address);
			if (err == -EAGAIN && hd->nretry < MAX_RETRY) {	/* an event is pending: read it first */
				hd->retry[hd->nretry++] = m.arg.pagefault.address;
				err = 0;
			}
		} else {
			if (m.event == UFFD_EVENT_REMOVE)
				removed(hd, m.arg.remove.start, m.arg.remove.end);
			err = retry_all(hd);
		}
		if (err)
			return err;
	}
}

static int setup(struct hand *hd, int snap)
{
	struct stat st;
	size_t max_ps = 4096;

	if (fstat(snap, &st))
		return -errno;
	hd->snap = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, snap, 0);
	hd->gone = calloc(hd->h.n, sizeof(*hd->gone));
	if (hd->snap == MAP_FAILED || !hd->gone)
		return -ENOMEM;
	for (size_t i = 0; i < hd->h.n; i++) {
		if (!(hd->gone[i] = calloc(hd->h.r[i].length / hd->h.r[i].page_size, 1)))
			return -ENOMEM;
		if (hd->h.r[i].page_size > max_ps)
			max_ps = hd->h.r[i].page_size;
	}
	hd->zeros = calloc(1, max_ps);
	return hd->zeros ? 0 : -ENOMEM;
}

static void teardown(struct hand *hd, uint64_t size)
{
	for (size_t i = 0; hd->gone && i < hd->h.n; i++)
		free(hd->gone[i]);
	free(hd->gone);
	free(hd->zeros);
	if (hd->snap && hd->snap != MAP_FAILED)
		munmap((void *)hd->snap, size);
	fc_handshake_free(&hd->h);
}

int main(int argc, char **argv)
{
	struct serve_opts o;
	struct hand hd = { 0 };
	uint64_t size;
	int snap, ls, conn, err;
	struct stat st;

	serve_args(argc, argv, &o);	/* --socket, --memory and --timeout count here */
	snap = open(o.memory, O_RDONLY | O_CLOEXEC);
	if (snap < 0 || fstat(snap, &st))
		return serve_fail(EXIT_SETUP, "cannot open %s: %s", o.memory, strerror(errno));
	size = (uint64_t)st.st_size;
	if ((ls = fc_listen(o.socket)) < 0 || (conn = fc_accept(ls, -1, o.timeout_ms)) < 0)
		return EXIT_SETUP;
	if ((err = fc_receive(conn, -1, o.timeout_ms, size, &hd.h)))
		return err;
	if (hd.h.pidfd < 0)
		return serve_fail(EXIT_SETUP, "no pidfd for the VM: cannot tell when it exits");
	err = setup(&hd, snap);
	if (!err)
		err = serve(&hd);
	printf("BASELINE faults=%lu copies=%lu zeros=%lu retries=%lu\n", hd.faults, hd.copies,
	       hd.zeropages, hd.retries);
	teardown(&hd, size);
	close(conn);
	close(ls);
	close(snap);
	free(o.replay);
	if (err)
		return serve_fail(EXIT_SERVE, "serving: %s", strerror(-err));
	unlink(o.socket);
	return 0;
}
