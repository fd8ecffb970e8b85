/* SPDX-License-Identifier: MIT */
/* Reading uffd_msg batches and decoding them into struct uffd_event. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Messages read in one call: a read returns every queued one that fits. */
#define READ_BATCH 64

_Static_assert(sizeof(struct uffd_msg) == 32, "uffd_msg is 32 bytes");

/* Smallest hugetlb page size of the system ("hugepages-<n>kB"), 0 if none; cached. */
static size_t min_huge_page_size(void)
{
	static atomic_size_t cached = SIZE_MAX;
	size_t min = atomic_load(&cached), kb;
	DIR *d;
	struct dirent *de;

	if (min != SIZE_MAX)
		return min;
	min = 0;
	d = opendir("/sys/kernel/mm/hugepages");
	while (d && (de = readdir(d)))
		if (sscanf(de->d_name, "hugepages-%zukB", &kb) == 1 && (!min || kb * 1024 < min))
			min = kb * 1024;
	if (d)
		closedir(d);
	atomic_store(&cached, min);
	return min;
}

/*
 * Page size of a fault outside every region and recorded range, on a
 * handle made by uffd_open_fd() (whose ranges were registered elsewhere),
 * or in a range registered when /proc could not be read. The kernel aligns a hugetlb fault's address to its huge page (unless
 * EXACT_ADDRESS), so only such addresses need the (slower) look at the
 * mapping.
 */
static size_t lookup_page_size(struct uffd *u, uintptr_t addr)
{
	size_t hmin = min_huge_page_size(), ps;

	if (!hmin || (!(u->features & UFFD_FEATURE_EXACT_ADDRESS) && (addr & (hmin - 1))))
		return u->page_size;
	ps = uffd__vma_page_size(addr);
	return ps > u->page_size ? ps : u->page_size;
}

static void decode_fault(struct uffd *u, const struct uffd_msg *m,
			 struct uffd_fault *f)
{
	uint64_t flags = m->arg.pagefault.flags;
	uintptr_t addr = (uintptr_t)m->arg.pagefault.address;
	struct rangemap_entry e;
	size_t ps;

	/* Regions, then the ranges uffd_register() recorded: no system call. */
	if (rangemap_find(&u->regions, addr, &e)) {
		f->region = e.ptr;
		ps = e.page_size;
	} else if (rangemap_find(&u->ranges, addr, &e)) {
		ps = e.page_size ? e.page_size : lookup_page_size(u, addr);
	} else {
		ps = u->ranges_unknown ? lookup_page_size(u, addr) : u->page_size;
	}
	f->uffd = u;
	f->addr = (void *)(addr & ~(uintptr_t)(ps - 1));
	/* A part of a region a REMAP moved keeps its offsets (e.off). */
	f->offset = f->region ? (uintptr_t)f->addr - e.start + e.off : 0;
	f->len = ps;
	f->kind = (flags & UFFD_PAGEFAULT_FLAG_WP) ? UFFD_FAULT_WP
		: (flags & UFFD_PAGEFAULT_FLAG_MINOR) ? UFFD_FAULT_MINOR
		: UFFD_FAULT_MISSING;
	f->write = flags & UFFD_PAGEFAULT_FLAG_WRITE;
	f->tid = (u->features & UFFD_FEATURE_THREAD_ID) ? (pid_t)m->arg.pagefault.feat.ptid : 0;
}


/* The bits of what is not done yet that could be done now. */
static unsigned remap_apply(struct uffd *u, const struct uffd_msg *m, bool prealloc)
{
	uintptr_t from = m->arg.remap.from, to = m->arg.remap.to;
	size_t len = m->arg.remap.len;
	unsigned done = m->reserved1;

	if (!(done & REMAP_DONE_RANGES) && !uffd__ranges_moved(u, from, to, len, prealloc))
		done |= REMAP_DONE_RANGES;
	if (!(done & REMAP_DONE_REGIONS) && !uffd__regions_moved(u, from, to, len, prealloc))
		done |= REMAP_DONE_REGIONS;
	return done;
}

bool uffd__remap_early(struct uffd *u, struct uffd_msg *m)
{
	if (m->event != UFFD_EVENT_REMAP)
		return true;
	m->reserved1 = (uint8_t)remap_apply(u, m, true);
	return m->reserved1 == (REMAP_EARLY_DONE);
}

void uffd__remap_apply(struct uffd *u, struct uffd_msg *m)
{
	if (m->event != UFFD_EVENT_REMAP)
		return;
	m->reserved1 = (uint8_t)remap_apply(u, m, false);
	/* The reading path used up a spare table: the next REMAP gets one again. */
	if (rangemap_count(&u->regions))
		rangemap_reserve(&u->regions, RANGEMAP_SHIFT_EXTRA);
	if (rangemap_count(&u->ranges))
		rangemap_reserve(&u->ranges, RANGEMAP_SHIFT_EXTRA);
}

int uffd__decode_msg(struct uffd *u, const void *raw, struct uffd_event *ev)
{
	struct uffd_msg m;

	memcpy(&m, raw, sizeof(m));
	memset(ev, 0, sizeof(*ev));
	switch (m.event) {
	case UFFD_EVENT_PAGEFAULT:
		ev->type = UFFD_EV_FAULT;
		decode_fault(u, &m, &ev->fault);
		return 0;
	case UFFD_EVENT_FORK:
		ev->type = UFFD_EV_FORK;
		ev->fork.fd = (int)m.arg.fork.ufd;
		return ev->fork.fd >= 0 ? 0 : -EINVAL;
	case UFFD_EVENT_REMAP:
		ev->type = UFFD_EV_REMAP;
		ev->remap.from = (void *)(uintptr_t)m.arg.remap.from;
		ev->remap.to = (void *)(uintptr_t)m.arg.remap.to;
		ev->remap.len = m.arg.remap.len;
		return 0;
	case UFFD_EVENT_REMOVE:
	case UFFD_EVENT_UNMAP:
		ev->type = m.event == UFFD_EVENT_REMOVE ? UFFD_EV_REMOVE : UFFD_EV_UNMAP;
		ev->remove.start = (void *)(uintptr_t)m.arg.remove.start;
		ev->remove.len = m.arg.remove.end - m.arg.remove.start;
		return m.arg.remove.end >= m.arg.remove.start ? 0 : -EINVAL;
	default:
		return -EINVAL;
	}
}

UFFD_EXPORT int uffd_read_events(struct uffd *u, struct uffd_event *ev, size_t max)
{
	struct uffd_msg msgs[READ_BATCH];
	size_t want = max < READ_BATCH ? max : READ_BATCH, k = 0;
	ssize_t n;

	if (!u)
		return uffd__err(-EINVAL, "uffd_read_events: handle is NULL");
	if (!ev || !max)
		return uffd__err(-EINVAL, "uffd_read_events: need room for at least one event");
	n = read(u->fd, msgs, want * sizeof(msgs[0]));
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (n < 0)
		return uffd__err(-errno, "uffd_read_events: read of fd %d failed: %s (%s)",
				 u->fd, strerror(errno), uffd__errname(errno));
	/* A userfaultfd never returns 0 bytes or a part of a message. */
	if (n == 0 || n % sizeof(msgs[0]))
		return uffd__err(-EIO, "uffd_read_events: read of fd %d returned %zd bytes, not whole 32-byte messages; "
				 "the handle's fd is no longer a userfaultfd (closed and reused?)", u->fd, n);
	for (size_t i = 0; i < (size_t)n / sizeof(msgs[0]); i++) {
		uffd__remap_apply(u, &msgs[i]);	/* the registration moved: so do its page sizes and regions */
		if (!uffd__decode_msg(u, &msgs[i], &ev[k]))
			k++;
	}
	return (int)k;
}
UFFD_EXPORT_OWN(read_events);
