/* SPDX-License-Identifier: MIT */
/*
 * Fuzzes uffd_fc_handshake_recv(), whose input is what a Firecracker VM
 * (or anyone who reaches the socket) sends: after a first byte that chooses
 * the descriptors riding along (a userfaultfd, an eventfd, both or none)
 * and whether the bytes come in two writes, the rest is the message. The
 * writer's end is closed after it, so nothing waits for more. Whatever the
 * call makes of it, it must not crash, hang or leak a descriptor, and what
 * it accepts must hold: regions aligned to a power-of-two page size, inside
 * the file, without overlap. Owner addresses are only declared, never
 * touched (the mapping check is off: they are made up).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uffd.h>

#include "../send-fds.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MSG (64u << 10)
#define FILE_SIZE (1ull << 30)

static struct uffd *u;

static int next_fd(void)
{
	int fd = dup(0);

	if (fd >= 0)
		close(fd);
	return fd;
}

static void init(void)
{
	if (u)
		return;
	if (uffd_open(&u, NULL))
		abort();
}

static int by_addr(const void *a, const void *b)
{
	const struct uffd_fc_region *x = a, *y = b;

	return x->owner_addr < y->owner_addr ? -1 : x->owner_addr > y->owner_addr;
}

/* What an accepted handshake promises. */
static void check(const struct uffd_fc_handshake *h)
{
	struct uffd_fc_region *s;

	if (h->uffd < 0 || !h->nregions || h->nregions > 4096 || !h->regions)
		abort();
	for (size_t i = 0; i < h->nregions; i++) {
		const struct uffd_fc_region *g = &h->regions[i];
		uint64_t ps = g->page_size;

		if (!ps || (ps & (ps - 1)) || !g->length || ((g->owner_addr | g->length | g->offset) & (ps - 1)) ||
		    g->offset > FILE_SIZE || FILE_SIZE - g->offset < g->length || g->owner_addr + g->length < g->owner_addr)
			abort();
	}
	if (!(s = malloc(h->nregions * sizeof(*s))))
		abort();
	memcpy(s, h->regions, h->nregions * sizeof(*s));
	qsort(s, h->nregions, sizeof(*s), by_addr);
	for (size_t i = 1; i < h->nregions; i++)
		if (s[i].owner_addr < s[i - 1].owner_addr + s[i - 1].length)
			abort();
	free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct uffd_fc_opts o = { .size = sizeof(o), .timeout_ms = 200, .file_size = FILE_SIZE,
				  .flags = UFFD_FC_NO_MAPPING_CHECK };
	struct uffd_fc_handshake *h = NULL;
	int sv[2], fds[2], nfds = 0, ev = -1, err, lowest_free;
	size_t half;

	init();
	lowest_free = next_fd();	/* libFuzzer's own files come and go between inputs */
	if (!size || size - 1 > MAX_MSG)
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		abort();
	if (data[0] & 1)
		fds[nfds++] = uffd_fd(u);
	if (data[0] & 2)
		fds[nfds++] = ev = eventfd(0, EFD_CLOEXEC);
	data++;
	size--;
	half = data[-1] & 4 ? size / 2 : size;
	if (send_fds(sv[0], data, half, fds, (unsigned)nfds, MSG_NOSIGNAL) < 0 && half)
		abort();
	if (half < size && write(sv[0], data + half, size - half) != (ssize_t)(size - half))
		abort();
	close(sv[0]);	/* the rest never comes: EOF, not a wait */
	err = uffd_fc_handshake_recv(sv[1], &o, &h);
	if (!err)
		check(h);
	else if (h && (h->nregions || h->regions || h->uffd < 0))
		abort();	/* a failed handshake keeps only the VM's fd and pidfd */
	uffd_fc_handshake_free(h);
	close(sv[1]);
	if (ev >= 0)
		close(ev);
	if (next_fd() != lowest_free)
		abort();	/* a descriptor leaked */
	return 0;
}
