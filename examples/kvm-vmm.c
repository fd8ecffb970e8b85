/* SPDX-License-Identifier: MIT */
/*
 * kvm-vmm: a minimal virtual machine monitor on raw KVM ioctls that restores
 * a guest from a snapshot the way Firecracker does with its "Uffd" memory
 * backend, for the kvm suite of the tests and for the benchmark. No library:
 * guest memory is anonymous (or hugetlb) memory registered with a
 * userfaultfd with EVENT_REMOVE, sent with the JSON region table in ONE
 * sendmsg to the handler's socket (uffd-serve), which stays open. Then the
 * vCPUs run the guest code of the snapshot (examples/kvm-guest.S): the code
 * and its page tables are in the snapshot, so the restore must serve them
 * first, and every page the guest touches reaches the handler through KVM's
 * get_user_pages(), not the user-mode fault path.
 *
 * Each vCPU touches a seeded pseudo-random set of pages, reads every word
 * and compares it with the snapshot's pattern, and writes a fraction of them
 * with a pattern of its own. A balloon gives host pages back during the run
 * (MADV_DONTNEED, as Firecracker's balloon does); the guest never writes
 * them and must read zeros there once they are gone. At the end the host
 * checks every page: the snapshot's bytes, the written pattern, or zero.
 *
 * The guest runs in 64-bit long mode at CPL 3 (its page tables mark every
 * page user-accessible; a TSS's I/O bitmap lets its two OUTs through): where
 * KVM is software-based (PVM), kernel-mode guest code is emulated
 * instruction by instruction, a thousand times slower than the faults
 * measured here.
 *
 * --kernel maps the snapshot MAP_PRIVATE instead (no handler: Firecracker's
 * File backend, the kernel's paging; no balloon, a private file mapping
 * reads the file again); --present with it copies every page in before
 * the vCPUs start (the bound: no page absent, every one writable).
 * --make-snapshot writes a snapshot. Besides KVM's exits, the line gives
 * its MMU's page faults (pf) and the 4 KiB mappings it made (mapped_4k).
 *
 * Prints one "KVMVMM key=value..." line; exit 0 when every byte was right,
 * 1 on a wrong byte (or a guest that crashed), 2 usage, 3 setup, 77 when
 * KVM cannot run here (the reason on stderr).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/kvm.h>

#include "common.h"
#include "fc-send.h"

#define PROG "kvm-vmm"
#define UNIT 4096ull		/* what the guest touches and the host checks */
#define HUGE (2ull << 20)
#define MAX_VCPUS 16
#define EXIT_SKIP 77

/* Guest-physical layout, in the snapshot (identity-mapped, 2 MiB pages). */
#define GPA_HEADER 0x0ull
#define GPA_PML4 0x1000ull
#define GPA_PDPT 0x2000ull
#define GPA_PD 0x3000ull	/* one page per GiB */
#define GPA_TSS 0x8000ull	/* its I/O bitmap lets the guest's OUTs through at CPL 3 */
#define TSS_IOMAP 0x68ull
#define GPA_CODE 0x10000ull
#define GPA_STACKS 0x80000ull	/* one page per vCPU below 0x100000: never checked */
#define GPA_STACK_END 0x100000ull
#define GPA_DATA HUGE		/* the pages the guest touches */
#define MAX_GIB 3		/* below the TSS KVM may need at 0xfffbd000 */

#define PORT_DONE 0x10
#define PORT_PROGRESS 0x11
#define WSALT 0x5772697465212121ull	/* as in kvm-guest.S */
#define SNAP_MAGIC 0x31504e534d564bull	/* "KVMSNP1" */

/* Page 0 of the snapshot. */
struct snap_header {
	uint64_t magic, bytes, seed, code_gpa, code_len;
};

/* The guest's code, assembled into this program (kvm-guest.S). */
extern const unsigned char kvm_guest_code[], kvm_guest_code_end[];

struct opts {
	const char *socket, *memory;
	unsigned vcpus, touch, write, balloon_at, deadline_s;
	uint64_t seed, give_back;
	bool huge, kernel, after_handler, touched_only, present;
};

struct vcpu {
	struct vm *v;
	unsigned idx;
	int fd;
	struct kvm_run *run;
	uint64_t t0, t1;	/* first KVM_RUN, done */
	uint64_t touched, written, bad_words, user_exits;
	const char *crash;	/* why it stopped early, or NULL */
};

struct vm {
	struct opts o;
	uint64_t len, ps, snap_seed;
	char *mem;		/* guest memory, host view */
	const unsigned char *ref;	/* the snapshot, read in: what each byte must be */
	int kvm, vmfd;
	size_t run_size;
	struct kvm_cpuid2 *cpuid;
	struct vcpu cpu[MAX_VCPUS];
	/* the walk: see kvm-guest.S */
	uint64_t nd, d0, a, b, stride, mark;
	unsigned rshift;
	/* the balloon */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool progress;
	atomic_ulong balloon_failed;
	uint64_t balloon_ns;
};

#define die(...) ex_die(PROG, __VA_ARGS__)

/* ---- the snapshot ---- */

/* Page tables: 2 MiB pages mapping [0, bytes) to itself, Accessed and Dirty set (the CPU never writes them). */
static void put_tables(unsigned char *low, uint64_t bytes)
{
	uint64_t *pml4 = (uint64_t *)(low + GPA_PML4), *pdpt = (uint64_t *)(low + GPA_PDPT);
	const uint64_t P = 1, RW = 2 | 4, A = 1 << 5, D = 1 << 6, PS = 1 << 7;

	memset(low + GPA_PML4, 0, GPA_PD + MAX_GIB * UNIT - GPA_PML4);
	pml4[0] = GPA_PDPT | P | RW | A;
	for (uint64_t g = 0; g * (1ull << 30) < bytes; g++) {
		uint64_t *pd = (uint64_t *)(low + GPA_PD + g * UNIT);

		pdpt[g] = (GPA_PD + g * UNIT) | P | RW | A;
		for (uint64_t e = 0; e < 512 && (g << 30) + e * HUGE < bytes; e++)
			pd[e] = ((g << 30) + e * HUGE) | P | RW | A | D | PS;
	}
}

/* The data pattern in every page; the header, page tables and code in the first 2 MiB. */
static int make_snapshot(const char *path, unsigned mib, uint64_t seed)
{
	uint64_t bytes = (uint64_t)mib << 20;
	unsigned char *low = malloc(GPA_DATA);
	uint64_t *page = malloc(UNIT);
	struct snap_header h = { SNAP_MAGIC, bytes, seed, GPA_CODE,
				 (uint64_t)(kvm_guest_code_end - kvm_guest_code) };
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0 || !low || !page)
		die(3, "cannot create %s: %s", path, strerror(errno));
	for (uint64_t p = 0; p < GPA_DATA / UNIT; p++)
		ex_fill_page((uint64_t *)(low + p * UNIT), UNIT, seed, p);
	memset(low, 0, UNIT);
	memcpy(low, &h, sizeof(h));
	put_tables(low, bytes);
	memset(low + GPA_TSS, 0, UNIT);
	*(uint16_t *)(low + GPA_TSS + 0x66) = TSS_IOMAP;	/* ports 0-63 allowed (zero bits), the rest beyond the limit */
	memcpy(low + GPA_CODE, kvm_guest_code, h.code_len);
	if (write(fd, low, GPA_DATA) != (ssize_t)GPA_DATA)
		die(3, "writing %s: %s", path, strerror(errno));
	for (uint64_t p = GPA_DATA / UNIT; p < bytes / UNIT; p++) {
		ex_fill_page(page, UNIT, seed, p);
		if (write(fd, page, UNIT) != (ssize_t)UNIT)
			die(3, "writing %s: %s", path, strerror(errno));
	}
	if (fsync(fd) || close(fd))
		die(3, "writing %s: %s", path, strerror(errno));
	free(low);
	free(page);
	return 0;
}

/* The snapshot mapped shared and read in now: the checks cost no I/O later. */
static void map_reference(struct vm *v)
{
	int fd = open(v->o.memory, O_RDONLY | O_CLOEXEC);
	struct snap_header h;
	struct stat st;

	if (fd < 0 || fstat(fd, &st))
		die(3, "cannot open the snapshot %s: %s", v->o.memory, strerror(errno));
	v->len = (uint64_t)st.st_size;
	if (v->len < 2 * GPA_DATA || v->len % HUGE || v->len > (uint64_t)MAX_GIB << 30)
		die(3, "%s: %llu bytes; a kvm-vmm snapshot is a multiple of 2 MiB, 4 MiB to %d GiB",
		    v->o.memory, (unsigned long long)v->len, MAX_GIB);
	v->ref = mmap(NULL, v->len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (v->ref == MAP_FAILED)
		die(3, "mapping the snapshot: %s", strerror(errno));
	close(fd);
	memcpy(&h, v->ref, sizeof(h));
	if (h.magic != SNAP_MAGIC || h.bytes != v->len || h.code_gpa != GPA_CODE ||
	    h.code_len != (uint64_t)(kvm_guest_code_end - kvm_guest_code) ||
	    memcmp(v->ref + GPA_CODE, kvm_guest_code, h.code_len))
		die(3, "%s was not made by this kvm-vmm --make-snapshot (header or guest code differ)",
		    v->o.memory);
	v->snap_seed = h.seed;
}

/* Guest memory, aligned for huge pages: anonymous (or hugetlb), or the snapshot MAP_PRIVATE. */
static void map_guest(struct vm *v)
{
	int flags = MAP_PRIVATE | (v->o.kernel ? 0 : MAP_ANONYMOUS | MAP_NORESERVE) |
		    (v->o.huge ? MAP_HUGETLB : 0);
	int fd = v->o.kernel ? open(v->o.memory, O_RDONLY | O_CLOEXEC) : -1;

	if (v->o.kernel && fd < 0)
		die(3, "cannot open the snapshot %s: %s", v->o.memory, strerror(errno));
	v->mem = mmap(NULL, v->len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (v->mem == MAP_FAILED)
		die(3, "mapping guest memory%s: %s", v->o.huge ? " (hugetlb: raise vm.nr_hugepages)" : "",
		    strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* ---- what the guest does, computed on the host too ---- */

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

static void plan_walk(struct vm *v)
{
	uint64_t r = v->o.seed * 0x2545f4914f6cdd1dull + 1;

	v->d0 = GPA_DATA / UNIT;
	v->nd = v->len / UNIT - v->d0;
	v->a = 1 + ex_rand(&r) % (v->nd - 1);
	while (gcd(v->a, v->nd) != 1)
		v->a++;
	v->b = ex_rand(&r) % v->nd;
	v->rshift = v->ps == HUGE ? 9 : 0;
	/* Given-back blocks spread evenly over the data area. */
	if (v->o.give_back > (v->nd >> v->rshift) / 2)
		die(2, "--give-back %llu: at most %llu host pages (half of the data area)",
		    (unsigned long long)v->o.give_back, (unsigned long long)((v->nd >> v->rshift) / 2));
	v->stride = v->o.give_back ? (v->nd >> v->rshift) / v->o.give_back : 0;
	v->mark = (v->nd / v->o.vcpus) * v->o.balloon_at / 100 + 1;
}

static bool given_back(const struct vm *v, uint64_t p)
{
	uint64_t q = (p - v->d0) >> v->rshift;

	return v->stride && p >= v->d0 && q / v->stride < v->o.give_back && q % v->stride == v->stride / 2;
}

/* 0: not touched, 1: read, 2: read and written. */
static int fate(const struct vm *v, uint64_t p)
{
	uint64_t h;

	if (p < v->d0)
		return 0;
	h = ex_pattern(v->o.seed, p, 0);
	if (h % 100 >= v->o.touch)
		return 0;
	return !given_back(v, p) && (h >> 32) % 100 < v->o.write ? 2 : 1;
}

/* ---- KVM ---- */

static int kvm_ioctl(int fd, unsigned long req, void *arg, const char *what)
{
	int r = ioctl(fd, req, arg);

	if (r < 0)
		die(3, "%s: %s", what, strerror(errno));
	return r;
}

/* /dev/kvm, a VM, its memory slot; exit 77 where KVM cannot run. */
static void open_kvm(struct vm *v)
{
	struct kvm_userspace_memory_region slot = { .slot = 0, .guest_phys_addr = 0, .memory_size = v->len,
						    .userspace_addr = (uintptr_t)v->mem };
	int n = 64;

	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (v->kvm < 0)
		die(EXIT_SKIP, "cannot open /dev/kvm: %s (no KVM here: no hardware virtualisation, "
			       "no nested virtualisation, or no permission)", strerror(errno));
	if (ioctl(v->kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		die(EXIT_SKIP, "/dev/kvm speaks another API version than %d", KVM_API_VERSION);
	v->vmfd = ioctl(v->kvm, KVM_CREATE_VM, 0);
	if (v->vmfd < 0)
		die(EXIT_SKIP, "KVM_CREATE_VM: %s (KVM present but unusable)", strerror(errno));
	/* Intel without unrestricted guests needs it; harmless elsewhere. */
	(void)ioctl(v->vmfd, KVM_SET_TSS_ADDR, 0xfffbd000ul);
	kvm_ioctl(v->vmfd, KVM_SET_USER_MEMORY_REGION, &slot, "KVM_SET_USER_MEMORY_REGION");
	v->run_size = (size_t)kvm_ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, NULL, "KVM_GET_VCPU_MMAP_SIZE");
	/* The CPUID KVM supports, given to the guest: long mode needs it. */
	for (;;) {
		v->cpuid = calloc(1, sizeof(*v->cpuid) + (size_t)n * sizeof(v->cpuid->entries[0]));
		if (!v->cpuid)
			die(3, "out of memory");
		v->cpuid->nent = (unsigned)n;
		if (!ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, v->cpuid))
			break;
		if (errno != E2BIG || n > 4096)
			die(3, "KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
		free(v->cpuid);
		n *= 2;
	}
}

static void set_segment(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
	*s = (struct kvm_segment){ .base = 0, .limit = 0xffffffff, .selector = sel | 3, .type = type,
				   .present = 1, .dpl = 3, .s = 1, .g = 1, .l = code, .db = !code };
}

/* A vCPU in 64-bit long mode at the guest's entry, its parameters in registers (kvm-guest.S). */
static void create_vcpu(struct vm *v, unsigned i)
{
	struct vcpu *c = &v->cpu[i];
	struct kvm_sregs sr;
	struct kvm_regs r = {
		.rdi = v->snap_seed, .rsi = v->o.seed, .rdx = v->nd, .rcx = v->d0, .r8 = v->a, .r9 = v->b,
		.r10 = i, .r11 = v->o.vcpus, .r12 = v->o.touch, .r13 = v->o.write, .r14 = v->stride,
		.r15 = v->o.give_back, .rbx = v->rshift, .rbp = v->mark,
		.rsp = GPA_STACK_END - (uint64_t)i * UNIT, .rip = GPA_CODE, .rflags = 2 | 3 << 12,
	};

	c->v = v;
	c->idx = i;
	c->fd = kvm_ioctl(v->vmfd, KVM_CREATE_VCPU, (void *)(uintptr_t)i, "KVM_CREATE_VCPU");
	c->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
	if (c->run == MAP_FAILED)
		die(3, "mapping kvm_run: %s", strerror(errno));
	kvm_ioctl(c->fd, KVM_SET_CPUID2, v->cpuid, "KVM_SET_CPUID2");
	kvm_ioctl(c->fd, KVM_GET_SREGS, &sr, "KVM_GET_SREGS");
	set_segment(&sr.cs, 8, 11, true);
	set_segment(&sr.ds, 16, 3, false);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	sr.tr = (struct kvm_segment){ .base = GPA_TSS, .limit = TSS_IOMAP + 8 - 1, .selector = 0x28,
				      .type = 11, .present = 1 };
	sr.cr3 = GPA_PML4;
	sr.cr4 = 1u << 5;				/* PAE */
	sr.cr0 = 0x80050033;				/* PG WP NE ET MP PE */
	sr.efer = (1u << 8) | (1u << 10);		/* LME LMA */
	kvm_ioctl(c->fd, KVM_SET_SREGS, &sr, "KVM_SET_SREGS");
	kvm_ioctl(c->fd, KVM_SET_REGS, &r, "KVM_SET_REGS");
}

/* One counter of a vCPU's or a VM's binary statistics (Linux 5.14; kvm_fd: its fd), or 0. */
static uint64_t kvm_stat(int kvm_fd, const char *name)
{
	struct kvm_stats_header h;
	uint64_t val = 0;
	int fd = ioctl(kvm_fd, KVM_GET_STATS_FD, NULL);
	size_t dsz;
	char *d = NULL;

	if (fd < 0)
		return 0;
	if (pread(fd, &h, sizeof(h), 0) != sizeof(h))
		goto out;
	dsz = sizeof(struct kvm_stats_desc) + h.name_size;
	d = malloc(dsz * h.num_desc);
	if (!d || pread(fd, d, dsz * h.num_desc, h.desc_offset) != (ssize_t)(dsz * h.num_desc))
		goto out;
	for (uint32_t i = 0; i < h.num_desc; i++) {
		const struct kvm_stats_desc *e = (const void *)(d + i * dsz);

		if (!strncmp(e->name, name, h.name_size)) {
			if (pread(fd, &val, sizeof(val), h.data_offset + e->offset) != sizeof(val))
				val = 0;
			break;
		}
	}
out:
	free(d);
	close(fd);
	return val;
}

static void progress(struct vm *v)
{
	pthread_mutex_lock(&v->lock);
	v->progress = true;
	pthread_cond_signal(&v->cond);
	pthread_mutex_unlock(&v->lock);
}

/* Runs the vCPU until the guest reports (port 0x10) or stops otherwise. */
static void *vcpu_thread(void *arg)
{
	struct vcpu *c = arg;
	struct kvm_regs r;
	static const char *const why[] = { [KVM_EXIT_HLT] = "HLT before its report",
		[KVM_EXIT_SHUTDOWN] = "triple fault (shutdown)", [KVM_EXIT_FAIL_ENTRY] = "VM entry failed",
		[KVM_EXIT_INTERNAL_ERROR] = "KVM internal error", [KVM_EXIT_MMIO] = "access outside its memory" };

	c->t0 = ex_now_ns();
	for (;;) {
		if (ioctl(c->fd, KVM_RUN, NULL) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			c->crash = "KVM_RUN failed";
			break;
		}
		c->user_exits++;
		if (c->run->exit_reason == KVM_EXIT_IO && c->run->io.port == PORT_PROGRESS) {
			progress(c->v);
			continue;
		}
		if (c->run->exit_reason == KVM_EXIT_IO && c->run->io.port == PORT_DONE &&
		    !ioctl(c->fd, KVM_GET_REGS, &r)) {
			c->touched = r.rax;
			c->written = r.rbx;
			c->bad_words = r.rcx;
			break;
		}
		c->crash = c->run->exit_reason < sizeof(why) / sizeof(why[0]) && why[c->run->exit_reason]
				   ? why[c->run->exit_reason] : "an unexpected exit";
		if (!ioctl(c->fd, KVM_GET_REGS, &r))
			fprintf(stderr, PROG ": vCPU %u: %s (exit reason %u) at rip %#llx\n", c->idx, c->crash,
				c->run->exit_reason, (unsigned long long)r.rip);
		break;
	}
	c->t1 = ex_now_ns();
	progress(c->v);	/* a balloon still waiting goes now */
	return NULL;
}

/* Once a vCPU is --balloon-at through its walk: give the host pages of the plan back, one madvise each. */
static void *balloon_thread(void *arg)
{
	struct vm *v = arg;
	uint64_t t0;

	pthread_mutex_lock(&v->lock);
	while (!v->progress)
		pthread_cond_wait(&v->cond, &v->lock);
	pthread_mutex_unlock(&v->lock);
	t0 = ex_now_ns();
	for (uint64_t j = 0; j < v->o.give_back; j++) {
		uint64_t gpa = GPA_DATA + (j * v->stride + v->stride / 2) * v->ps;

		if (madvise(v->mem + gpa, v->ps, MADV_DONTNEED)) {
			fprintf(stderr, PROG ": balloon madvise: %s\n", strerror(errno));
			atomic_fetch_add(&v->balloon_failed, 1);
		}
	}
	v->balloon_ns = ex_now_ns() - t0;
	return NULL;
}

/* ---- the handshake, as Firecracker sends it (fc-send.c) ---- */

/* Registers guest memory and sends the fd and the one-region table in one message; the socket stays open. */
static int hand_over(const struct vm *v)
{
	const struct fc_send_region r = { .base = v->mem, .size = v->len, .offset = 0, .page_size = v->ps };

	return fc_send_hand_over(PROG, v->o.socket, &r, 1, FC_SEND_JSON_CURRENT);
}

/* ---- the checks ---- */

struct verdict {
	uint64_t touched, written, wrong_read, wrong_written, wrong_zero, wrong_system;
};

static bool page_is(const unsigned char *p, uint64_t seed, uint64_t page)
{
	const volatile uint64_t *w = (const volatile uint64_t *)p;

	for (uint64_t i = 0; i < UNIT / 8; i++)
		if (w[i] != ex_pattern(seed, page, i))
			return false;
	return true;
}

static bool page_zero(const unsigned char *p)
{
	const volatile uint64_t *w = (const volatile uint64_t *)p;

	for (uint64_t i = 0; i < UNIT / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* What a wrong page holds instead, for the first few reports. */
static const char *found(const struct vm *v, const unsigned char *g, uint64_t p)
{
	if (page_zero(g))
		return "zeros";
	if (!memcmp((const void *)g, v->ref + p * UNIT, UNIT))
		return "the snapshot's bytes";
	if (page_is(g, v->snap_seed ^ WSALT, p))
		return "the written pattern";
	return "other bytes";
}

static void report(const struct vm *v, uint64_t *shown, uint64_t p, const char *want)
{
	const unsigned char *g = (const unsigned char *)v->mem + p * UNIT;

	if ((*shown)++ < 8)
		fprintf(stderr, PROG ": wrong page at guest-physical %#llx (%s): want %s, found %s\n",
			(unsigned long long)(p * UNIT), fate(v, p) == 2 ? "written" : fate(v, p) ? "read" : "untouched",
			want, found(v, g, p));
}

/* Every page of guest memory (or the touched ones) against what it must hold now (stacks excepted). */
static void check_all(const struct vm *v, struct verdict *r)
{
	uint64_t shown = 0;

	for (uint64_t p = 0; p < v->len / UNIT; p++) {
		const unsigned char *g = (const unsigned char *)v->mem + p * UNIT;
		int f = fate(v, p);
		bool bad;

		r->touched += f > 0;
		r->written += f == 2;
		if ((p * UNIT >= GPA_STACKS && p * UNIT < GPA_STACK_END) ||
		    (v->o.touched_only && p >= v->d0 && !f && !given_back(v, p)))
			continue;
		if (p < v->d0 || (!given_back(v, p) && f != 2)) {
			bad = memcmp((const void *)g, v->ref + p * UNIT, UNIT);
			*(p < v->d0 ? &r->wrong_system : &r->wrong_read) += bad;
			if (bad)
				report(v, &shown, p, "the snapshot's bytes");
		} else if (given_back(v, p)) {
			bad = !page_zero(g);
			r->wrong_zero += bad;
			if (bad)
				report(v, &shown, p, "zeros (given back)");
		} else {
			bad = !page_is(g, v->snap_seed ^ WSALT, p);
			r->wrong_written += bad;
			if (bad)
				report(v, &shown, p, "the written pattern");
		}
	}
}

/* After the handler left (EOF): what is there must be right, with nobody to serve it. */
static void await_handler_exit(int sock)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	char c;

	if (poll(&p, 1, 30000) != 1 || read(sock, &c, 1) != 0)
		die(3, "the handler did not close the connection within 30 s");
}

/* ---- main ---- */

static void usage(void)
{
	fprintf(stderr,
		"usage: " PROG " --memory SNAPSHOT (--socket PATH | --kernel) [--huge] [--vcpus N]\n"
		"              [--touch-pct P] [--write-pct P] [--give-back N] [--balloon-at P] [--seed S]\n"
		"              [--after-handler] [--check-touched] [--deadline S] [--present]\n"
		"       " PROG " --make-snapshot FILE --mib N [--seed S]\n"
		"  --huge         2 MiB hugetlb guest memory (default 4 KiB anonymous)\n"
		"  --vcpus N      vCPUs (default 2), each walking its share of the data pages\n"
		"  --touch-pct P  percent of the data pages touched (default 30)\n"
		"  --write-pct P  percent of the touched pages written (default 50)\n"
		"  --give-back N  host pages the balloon gives back during the run (default 0)\n"
		"  --balloon-at P when the first vCPU is P%% through its walk (default 33)\n"
		"  --seed S       which pages (default 1); with --make-snapshot, the data pattern\n"
		"  --after-handler  wait for the handler to close the socket before the check\n"
		"  --check-touched  check only the pages the guest touched or gave back, not every\n"
		"                 page (a handler recording a trace then sees the guest's pages only)\n"
		"  --present      with --kernel: every page copied in (written once) before the\n"
		"                 vCPUs start, the bound of any restore: no page is absent\n");
	exit(2);
}

static void parse(int argc, char **argv, struct opts *o, const char **make, unsigned *mib)
{
	const char *val;

	*o = (struct opts){ .vcpus = 2, .touch = 30, .write = 50, .balloon_at = 33, .seed = 1, .deadline_s = 120 };
	for (int i = 1; i < argc; i++) {
		if ((val = ex_opt(argc, argv, &i, "--socket")))
			o->socket = val;
		else if ((val = ex_opt(argc, argv, &i, "--memory")))
			o->memory = val;
		else if ((val = ex_opt(argc, argv, &i, "--make-snapshot")))
			*make = val;
		else if ((val = ex_opt(argc, argv, &i, "--mib")))
			*mib = (unsigned)ex_count(PROG, "--mib", val, 4, MAX_GIB << 10);
		else if ((val = ex_opt(argc, argv, &i, "--vcpus")))
			o->vcpus = (unsigned)ex_count(PROG, "--vcpus", val, 1, MAX_VCPUS);
		else if ((val = ex_opt(argc, argv, &i, "--touch-pct")))
			o->touch = (unsigned)ex_count(PROG, "--touch-pct", val, 0, 100);
		else if ((val = ex_opt(argc, argv, &i, "--write-pct")))
			o->write = (unsigned)ex_count(PROG, "--write-pct", val, 0, 100);
		else if ((val = ex_opt(argc, argv, &i, "--give-back")))
			o->give_back = ex_count(PROG, "--give-back", val, 0, 1ul << 20);
		else if ((val = ex_opt(argc, argv, &i, "--balloon-at")))
			o->balloon_at = (unsigned)ex_count(PROG, "--balloon-at", val, 0, 100);
		else if ((val = ex_opt(argc, argv, &i, "--seed")))
			o->seed = ex_count(PROG, "--seed", val, 0, ~0ul);
		else if ((val = ex_opt(argc, argv, &i, "--deadline")))
			o->deadline_s = (unsigned)ex_count(PROG, "--deadline", val, 0, 86400);
		else if (!strcmp(argv[i], "--huge"))
			o->huge = true;
		else if (!strcmp(argv[i], "--kernel"))
			o->kernel = true;
		else if (!strcmp(argv[i], "--present"))
			o->present = true;
		else if (!strcmp(argv[i], "--check-touched"))
			o->touched_only = true;
		else if (!strcmp(argv[i], "--after-handler"))
			o->after_handler = true;
		else
			usage();
	}
	if (*make ? !*mib : !o->memory || !o->socket == !o->kernel ||
	    (o->kernel && (o->huge || o->after_handler || o->give_back)) || (o->present && !o->kernel))
		usage();
}

/* Runs every vCPU and the balloon; returns nanoseconds from the first KVM_RUN to the last vCPU done. */
static uint64_t run_guest(struct vm *v)
{
	pthread_t th[MAX_VCPUS], bt;
	uint64_t first = UINT64_MAX, last = 0;

	if (v->o.give_back && pthread_create(&bt, NULL, balloon_thread, v))
		die(3, "pthread_create failed");
	for (unsigned i = 0; i < v->o.vcpus; i++)
		if (pthread_create(&th[i], NULL, vcpu_thread, &v->cpu[i]))
			die(3, "pthread_create failed");	/* the threads started hang on: exit */
	for (unsigned i = 0; i < v->o.vcpus; i++) {
		pthread_join(th[i], NULL);
		first = v->cpu[i].t0 < first ? v->cpu[i].t0 : first;
		last = v->cpu[i].t1 > last ? v->cpu[i].t1 : last;
	}
	if (v->o.give_back)
		pthread_join(bt, NULL);
	return last - first;
}

int main(int argc, char **argv)
{
	struct vm v = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct verdict r = { 0 };
	uint64_t ns, touched = 0, written = 0, bad_words = 0, exits = 0, user_exits = 0, pf = 0, bad;
	const char *make = NULL, *crash = NULL;
	unsigned mib = 0;
	int sock = -1;

	parse(argc, argv, &v.o, &make, &mib);
	if (make)
		return make_snapshot(make, mib, v.o.seed);
	v.ps = v.o.huge ? HUGE : UNIT;
	map_reference(&v);
	map_guest(&v);
	plan_walk(&v);
	open_kvm(&v);
	for (unsigned i = 0; i < v.o.vcpus; i++)
		create_vcpu(&v, i);
	ex_deadline(PROG, v.o.deadline_s);
	if (!v.o.kernel)
		sock = hand_over(&v);
	for (uint64_t o = 0; v.o.present && o < v.len; o += UNIT)	/* a private copy of every page */
		*(volatile char *)(v.mem + o) = *(volatile char *)(v.mem + o);
	printf("KVMVMM running\n");
	fflush(stdout);
	ns = run_guest(&v);
	for (unsigned i = 0; i < v.o.vcpus; i++) {
		struct vcpu *c = &v.cpu[i];

		touched += c->touched;
		written += c->written;
		bad_words += c->bad_words;
		user_exits += c->user_exits;
		exits += kvm_stat(c->fd, "exits");
		pf += kvm_stat(c->fd, "pf_taken");
		crash = crash ? crash : c->crash;
	}
	if (v.o.after_handler)
		await_handler_exit(sock);
	check_all(&v, &r);
	bad = r.wrong_read + r.wrong_written + r.wrong_zero + r.wrong_system;
	printf("KVMVMM mode=%s page=%s mib=%llu vcpus=%u pages=%llu touched=%llu written=%llu given_back=%llu "
	       "run_us=%.0f balloon_us=%.0f exits=%llu user_exits=%llu pf=%llu mapped_4k=%llu guest_bad_words=%llu bad_pages=%llu "
	       "wrong_read=%llu wrong_written=%llu wrong_zero=%llu wrong_system=%llu crashed=%s\n",
	       v.o.kernel ? "kernel" : "uffd", v.o.huge ? "2m" : "4k", (unsigned long long)(v.len >> 20),
	       v.o.vcpus, (unsigned long long)(v.len / UNIT), (unsigned long long)touched,
	       (unsigned long long)written, (unsigned long long)v.o.give_back, (double)ns / 1e3,
	       (double)v.balloon_ns / 1e3, (unsigned long long)exits, (unsigned long long)user_exits,
	       (unsigned long long)pf, (unsigned long long)kvm_stat(v.vmfd, "pages_4k"),
	       (unsigned long long)bad_words, (unsigned long long)bad, (unsigned long long)r.wrong_read,
	       (unsigned long long)r.wrong_written, (unsigned long long)r.wrong_zero,
	       (unsigned long long)r.wrong_system, crash ? "yes" : "no");
	fflush(stdout);
	free(v.cpuid);
	if (crash)
		fprintf(stderr, PROG ": the guest stopped early: %s\n", crash);
	if (!crash && (touched != r.touched || written != r.written))
		fprintf(stderr, PROG ": the guest touched %llu pages and wrote %llu, the plan says %llu and %llu\n",
			(unsigned long long)touched, (unsigned long long)written, (unsigned long long)r.touched,
			(unsigned long long)r.written);
	return !crash && !bad && !bad_words && !atomic_load(&v.balloon_failed) && touched == r.touched &&
			       written == r.written ? 0 : 1;
}
