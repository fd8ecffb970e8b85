/* SPDX-License-Identifier: MIT */
/*
 * Fuzzes the receiving side of the handoff, whose input comes from another
 * process: the input is one message as a peer would send it, after a first
 * byte that chooses the socket type and the descriptors riding along (a
 * userfaultfd or an eventfd first, then up to three memfds, or none at all)
 * and whether the header's features and page size are set to this
 * machine's (so that kept inputs stay valid on other kernels). Whatever
 * uffd_handoff_recv() makes of it, it must not crash, hang or leak a
 * descriptor, and what it accepts must be consistent. Owner addresses are
 * only declared, never touched.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uffd.h>

#include "../send-fds.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSG 16384
#define MEMFDS 3
#define MEMFD_SIZE (64 << 10)

static struct uffd *u;
static int memfds[MEMFDS];

static void init(void)
{
	if (u)
		return;
	if (uffd_open(&u, NULL))
		abort();
	for (int i = 0; i < MEMFDS; i++) {
		/* Sealed against shrinking, as the receiver requires. */
		memfds[i] = memfd_create("fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
		if (memfds[i] < 0 || ftruncate(memfds[i], MEMFD_SIZE) ||
		    fcntl(memfds[i], F_ADD_SEALS, F_SEAL_SHRINK))
			abort();
	}
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		abort();
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void send_msg(int sock, const uint8_t *data, size_t size, const int *fds, unsigned nfds)
{
	send_fds(sock, data, size, fds, nfds, MSG_DONTWAIT | MSG_NOSIGNAL);
	shutdown(sock, SHUT_WR);
}

static void check(const struct uffd_handoff *h)
{
	if (!h->uffd || (h->nregions && !h->regions) || h->nregions > 64)
		abort();
	for (size_t i = 0; i < h->nregions; i++) {
		const struct uffd_region *r = h->regions[i];
		size_t ps = uffd_region_page_size(r);

		if (!r || !ps || (ps & (ps - 1)) || !uffd_region_length(r) ||
		    (uffd_region_length(r) | (uintptr_t)uffd_region_base(r)) & (ps - 1) ||
		    uffd_region_uffd(r) != h->uffd)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct uffd_handoff_opts o = { .size = sizeof(o), .timeout_ms = 100 };
	struct uffd_handoff *h = NULL;
	uint8_t msg[MAX_MSG];
	int s[2], fds[MEMFDS + 1], before;
	unsigned sel, nfds;

	init();
	if (!size)
		return 0;
	sel = data[0];
	size = size - 1 > MAX_MSG ? MAX_MSG : size - 1;
	memcpy(msg, data + 1, size);
	if ((sel & 0x20) && size >= 32) {	/* this machine's page size and features */
		uint32_t ps = (uint32_t)sysconf(_SC_PAGESIZE);
		uint64_t f = uffd_features(u);

		memcpy(msg + 20, &ps, sizeof(ps));
		memcpy(msg + 24, &f, sizeof(f));
	}
	before = count_fds();
	if (socketpair(AF_UNIX, ((sel & 1) ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC, 0, s))
		abort();
	fds[0] = (sel & 2) ? eventfd(0, EFD_CLOEXEC) : uffd_fd(u);
	nfds = (sel & 0x10) ? 0 : 1 + ((sel >> 2) & 3);
	for (unsigned i = 1; i < nfds; i++)
		fds[i] = memfds[i - 1];
	send_msg(s[0], msg, size, fds, nfds);
	if (!uffd_handoff_recv(s[1], &o, &h))
		check(h);
	uffd_handoff_free(h);
	if (sel & 2)
		close(fds[0]);
	close(s[0]);
	close(s[1]);
	if (count_fds() != before)
		abort();
	return 0;
}
