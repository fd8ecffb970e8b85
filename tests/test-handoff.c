/* SPDX-License-Identifier: MIT */
/*
 * handoff.c and foreign regions: a userfaultfd and its region table sent
 * over Unix sockets, within this process (socket pairs, self-owned memory)
 * and from a real owner process (this binary run again as
 * `test-handoff owner <kind> <socket> <page size>`) whose faults the 0.1
 * loop serves while the owner checks every byte it reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"
#include "send-fds.h"

#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define MINOR UFFDIO_REGISTER_MODE_MINOR
#define NPAGES 16
#define NHUGE 4
#define FAKE_BASE 0x100000000ull	/* rows that are only declared, never touched */

/* The wire format as libuffd-handoff(7) documents it. */
struct hdr {
	uint32_t magic;
	uint16_t version, header_size;
	uint32_t row_size, nregions, nfds, page_size;
	uint64_t features;
	uint32_t flags, reserved;
};
struct row {
	uint64_t owner_addr, length, page_size, modes, fd_offset;
	uint32_t fd_index, flags;
};
#define MAGIC 0x48464655u

static unsigned char pattern(uint64_t off)
{
	return (unsigned char)(off * 7 + off / 4096 + 1);
}

static unsigned char *pattern_buf(size_t len)
{
	unsigned char *p = malloc(len);

	ck_assert_ptr_nonnull(p);
	for (size_t i = 0; i < len; i++)
		p[i] = pattern(i);
	return p;
}

/* Sealable, unsealed: uffd_handoff_send() adds F_SEAL_SHRINK; a raw sender must. */
static int memfd_unsealed(size_t len, bool huge)
{
	int fd = memfd_create("handoff-test", MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB : 0));

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
	return fd;
}

static int memfd_of(size_t len, bool huge)
{
	int fd = memfd_unsealed(len, huge);

	ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	return fd;
}

/* ---- the owner process ---- */

enum kind { ANON, MEMFD_MINOR, HUGE_ANON, HUGE_MEMFD };
static const char *const kind_names[] = { "anon", "memfd-minor", "huge-anon", "huge-memfd" };

struct owner_mem {
	char *base;
	size_t len, ps;
	int fd;
	uint64_t modes;
};

static sigjmp_buf bus_jmp;

static void on_bus(int sig)
{
	(void)sig;
	siglongjmp(bus_jmp, 1);
}

/* 0: page i holds the pattern (zeros with zero); 1: it does not; 2: SIGBUS. */
static char owner_check_page(const struct owner_mem *m, size_t i, bool zero)
{
	volatile unsigned char *p = (volatile unsigned char *)m->base + i * m->ps;

	if (i * m->ps >= m->len)
		return 1;
	if (sigsetjmp(bus_jmp, 1))
		return 2;
	for (size_t b = 0; b < m->ps; b++)
		if (p[b] != (zero ? 0 : pattern(i * m->ps + b)))
			return 1;
	return 0;
}

static int owner_map(enum kind k, size_t ps, struct owner_mem *m)
{
	bool huge = k == HUGE_ANON || k == HUGE_MEMFD, memfd = k == MEMFD_MINOR || k == HUGE_MEMFD;

	*m = (struct owner_mem){ .ps = ps, .len = (huge ? NHUGE : NPAGES) * ps, .fd = -1,
				 .modes = memfd ? MINOR : MISSING };
	if (memfd) {
		m->fd = memfd_create("owner", MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB : 0));
		if (m->fd < 0 || ftruncate(m->fd, (off_t)m->len))
			return 20;
	}
	m->base = mmap(NULL, m->len, PROT_READ | PROT_WRITE,
		       memfd ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB : 0),
		       m->fd, 0);
	return m->base == MAP_FAILED ? 21 : 0;
}

/* Sends its uffd and region, then checks pages as the test asks: 'r'/'z' <page>, 'q'. */
static int owner_main(char **argv)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct uffd_handoff_region row;
	struct owner_mem m;
	struct uffd *u;
	int sock, err, k;
	unsigned char cmd[2] = { 0 };

	alarm(60);	/* never outlive a test that failed */
	for (k = 0; k < 4 && strcmp(argv[2], kind_names[k]); k++)
		;
	if (k == 4 || (err = owner_map((enum kind)k, strtoul(argv[4], NULL, 0), &m)))
		return k == 4 ? 22 : err;
	if (uffd_open(&u, NULL) || uffd_register(u, m.base, m.len, m.modes, NULL))
		return fprintf(stderr, "owner: %s\n", uffd_last_error()), 23;
	strncpy(a.sun_path + 1, argv[3], sizeof(a.sun_path) - 2);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(sock, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + strlen(argv[3])))
		return 24;
	row = (struct uffd_handoff_region){ (uintptr_t)m.base, m.len, m.ps, m.modes, 0, m.fd };
	if (uffd_handoff_send(sock, u, &row, 1))
		return fprintf(stderr, "owner: %s\n", uffd_last_error()), 25;
	/* The handler's copy is the only one left: if the handler dies, faults end. */
	uffd_close(u);
	signal(SIGBUS, on_bus);
	while (read(sock, cmd, 2) == 2 && cmd[0] != 'q') {
		char ans = owner_check_page(&m, cmd[1], cmd[0] == 'z');

		if (write(sock, &ans, 1) != 1)
			return 26;
	}
	return cmd[0] == 'q' ? 0 : 27;
}

/* ---- the handler's side of an owner ---- */

struct owner {
	pid_t pid;
	int sock;
	struct uffd_handoff *h;
};

static void exec_owner(enum kind k, const char *name, size_t ps)
{
	char self[4096], psbuf[32];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

	if (n < 0)
		_exit(126);
	self[n] = 0;
	snprintf(psbuf, sizeof(psbuf), "%zu", ps);
	execl(self, "test-handoff", "owner", kind_names[k], name, psbuf, (char *)NULL);
	_exit(127);
}

/* Starts an owner of memory of kind k and receives its handoff. */
static void owner_start(struct owner *o, enum kind k, size_t ps)
{
	static unsigned seq;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct pollfd p;
	socklen_t alen;
	int lsock;

	snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1, "libuffd-test-handoff-%d-%u", getpid(), seq++);
	alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(a.sun_path + 1));
	lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(lsock, 0);
	ck_assert_int_eq(bind(lsock, (struct sockaddr *)&a, alen), 0);
	ck_assert_int_eq(listen(lsock, 1), 0);
	o->pid = fork();
	ck_assert_int_ge(o->pid, 0);
	if (!o->pid)
		exec_owner(k, a.sun_path + 1, ps);
	p = (struct pollfd){ .fd = lsock, .events = POLLIN };
	ck_assert_msg(poll(&p, 1, 10000) == 1, "the owner did not connect");
	o->sock = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
	ck_assert_int_ge(o->sock, 0);
	close(lsock);
	ASSERT_OK(uffd_handoff_recv(o->sock, NULL, &o->h));
}

/* The owner's verdict on page i: 0 as expected, 1 wrong bytes, 2 SIGBUS. */
static int owner_ask(struct owner *o, char cmd, unsigned page)
{
	unsigned char req[2] = { (unsigned char)cmd, (unsigned char)page };
	struct pollfd p = { .fd = o->sock, .events = POLLIN };
	char ans = 9;

	ck_assert_int_eq(write(o->sock, req, 2), 2);
	ck_assert_msg(poll(&p, 1, 20000) == 1, "the owner did not answer for page %u", page);
	ck_assert_int_eq(read(o->sock, &ans, 1), 1);
	return ans;
}

static void owner_end(struct owner *o)
{
	int st = 0;

	ck_assert_int_eq(write(o->sock, "q", 2), 2);
	ck_assert_int_eq(waitpid(o->pid, &st, 0), o->pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "owner status 0x%x", st);
	close(o->sock);
}

/* Fault handlers of the loop: COPY from src for MISSING, CONTINUE for MINOR. */
struct serve {
	struct uffd_region *r;
	const unsigned char *src;
	uint64_t fail_off;	/* this page's handler fails; UINT64_MAX: none */
	atomic_int faults, bad;
};

static bool fault_ok(struct serve *s, const struct uffd_fault *f)
{
	size_t ps = uffd_region_page_size(s->r);

	atomic_fetch_add(&s->faults, 1);
	if (f->region == s->r && f->len == ps && !(f->offset % ps) &&
	    (uintptr_t)f->addr == (uintptr_t)uffd_region_base(s->r) + f->offset)
		return true;
	atomic_fetch_add(&s->bad, 1);
	return false;
}

static int serve_missing(void *ctx, struct uffd_fault *f)
{
	struct serve *s = ctx;
	int err;

	if (!fault_ok(s, f))
		return -EINVAL;
	if (f->offset == s->fail_off)
		return -EIO;
	err = uffd_copy(f->uffd, f->addr, s->src + f->offset, f->len, 0, NULL);
	return err ? err : UFFD_HANDLED;
}

static int serve_minor(void *ctx, struct uffd_fault *f)
{
	return fault_ok(ctx, f) ? UFFD_RESOLVE : -EINVAL;
}

static struct uffd_loop *serve_start(struct serve *s, unsigned flags)
{
	struct uffd_loop_opts lo = { .size = sizeof(lo), .flags = flags };
	struct uffd_handlers h = { .missing = serve_missing, .minor = serve_minor };
	struct uffd_loop *l = NULL;

	ASSERT_OK(uffd_loop_new(&l, &lo));
	ASSERT_OK(uffd_loop_add_region(l, s->r, &h, s));
	ASSERT_OK(uffd_loop_start(l, 1));
	return l;
}

/* The process a pidfd refers to, from its fdinfo; -1 if none. */
static long pidfd_pid(int pidfd)
{
	char path[64], line[128];
	FILE *f;
	long pid = -1;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
	f = fopen(path, "re");
	ck_assert_ptr_nonnull(f);
	while (pid < 0 && fgets(line, sizeof(line), f))
		if (sscanf(line, "Pid:\t%ld", &pid) != 1)
			pid = -1;
	fclose(f);
	return pid;
}

static size_t need_huge(void)
{
	const char *why = "";
	size_t hps = harness_hugepages(2 * NHUGE, &why);

	if (!hps)
		harness_skip("hugetlb: %s", why);
	return hps;
}

/* ---- across processes ---- */

START_TEST(test_xproc_anon)
{
	size_t ps = harness_page_size();
	unsigned char *src = pattern_buf(NPAGES * ps);
	uint64_t avail = 0;
	struct owner o;
	struct uffd_handoff *h;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct serve s = { .src = src, .fail_off = UINT64_MAX };
	struct pollfd p;

	owner_start(&o, ANON, ps);
	h = o.h;
	/* The peer is the owner process, named by a pidfd. */
	ck_assert_int_eq(h->pid, o.pid);
	ck_assert_int_eq(h->uid, getuid());
	ck_assert_int_eq(h->gid, getgid());
	ck_assert_int_ge(h->pidfd, 0);
	ck_assert_int_eq(pidfd_pid(h->pidfd), o.pid);
	ck_assert_int_ne(fcntl(h->pidfd, F_GETFD) & FD_CLOEXEC, 0);
	ASSERT_OK(uffd_probe(&avail));
	ck_assert_uint_eq(uffd_features(h->uffd), UFFD_FEATURES_DEFAULT & avail);
	ck_assert_uint_eq(h->nregions, 1);
	r = s.r = h->regions[0];
	ck_assert_uint_eq(uffd_region_length(r), NPAGES * ps);
	ck_assert_uint_eq(uffd_region_page_size(r), ps);
	ck_assert_ptr_null(uffd_region_alias(r));
	ASSERT_ERR(uffd_region_fd(r), -EBADF, "without a backing fd");
	l = serve_start(&s, 0);
	for (unsigned i = 0; i < NPAGES; i++)
		ck_assert_int_eq(owner_ask(&o, 'r', i), 0);
	owner_end(&o);
	/* The pidfd tells when the owner is gone. */
	p = (struct pollfd){ .fd = h->pidfd, .events = POLLIN };
	ck_assert_int_eq(poll(&p, 1, 5000), 1);
	uffd_loop_free(l);
	ck_assert_int_eq(atomic_load(&s.faults), NPAGES);
	ck_assert_int_eq(atomic_load(&s.bad), 0);
	uffd_handoff_free(h);
	free(src);
}
END_TEST

/*
 * The owner's memfd came along: contents go in through the alias, MINOR
 * faults are served with CONTINUE, populate(MAP) maps ahead of the owner,
 * discard frees the owner's page.
 */
static void check_memfd_minor(enum kind k, size_t ps, unsigned npages)
{
	size_t len = npages * ps;
	unsigned char *src = pattern_buf(len);
	struct serve s = { .src = src, .fail_off = UINT64_MAX };
	struct owner o;
	struct uffd_region *r;
	struct uffd_loop *l;

	owner_start(&o, k, ps);
	r = s.r = o.h->regions[0];
	ck_assert_uint_eq(uffd_region_page_size(r), ps);
	ck_assert_ptr_nonnull(uffd_region_alias(r));
	ck_assert_int_ge(uffd_region_fd(r), 0);
	ASSERT_OK(uffd_region_populate(r, 0, src, len - ps, 0));
	ck_assert_int_eq(memcmp(uffd_region_alias(r), src, len - ps), 0);
	ASSERT_OK(uffd_region_populate(r, len - ps, src + len - ps, ps, UFFD_POPULATE_MAP));
	l = serve_start(&s, 0);
	for (unsigned i = 0; i < npages; i++)
		ck_assert_int_eq(owner_ask(&o, 'r', i), 0);
	ck_assert_int_eq(atomic_load(&s.faults), npages - 1);	/* the last page was mapped ahead */
	ASSERT_OK(uffd_region_discard(r, 0, ps));
	ck_assert_int_eq(owner_ask(&o, 'z', 0), 0);	/* not registered MISSING: a new zero page */
	owner_end(&o);
	uffd_loop_free(l);
	ck_assert_int_eq(atomic_load(&s.bad), 0);
	uffd_handoff_free(o.h);
	free(src);
}

START_TEST(test_xproc_memfd_minor)
{
	if (!harness_have_features(UFFD_FEATURE_MINOR_SHMEM))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_MINOR_SHMEM");
	check_memfd_minor(MEMFD_MINOR, harness_page_size(), NPAGES);
}
END_TEST

START_TEST(test_xproc_huge_memfd)
{
	size_t hps;

	if (!harness_have_features(UFFD_FEATURE_MINOR_HUGETLBFS))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_MINOR_HUGETLBFS");
	if ((hps = need_huge()))
		check_memfd_minor(HUGE_MEMFD, hps, NHUGE);
}
END_TEST

/* Faults of 2 MiB; UFFD_SKIP_EXISTING steps a whole huge page of the owner. */
START_TEST(test_xproc_huge_skip)
{
	size_t hps = need_huge(), len = NHUGE * hps, done = 0;
	unsigned char *src;
	struct serve s = { .fail_off = UINT64_MAX };
	struct owner o;
	struct uffd_loop *l;
	char *base;

	if (!hps)
		return;
	src = pattern_buf(len);
	s.src = src;
	owner_start(&o, HUGE_ANON, hps);
	s.r = o.h->regions[0];
	base = uffd_region_base(s.r);
	ck_assert_uint_eq(uffd_region_page_size(s.r), hps);
	l = serve_start(&s, 0);
	ck_assert_int_eq(owner_ask(&o, 'r', 0), 0);	/* one fault of hps bytes */
	/* Without a file, populate copies into the owner's missing pages. */
	ASSERT_OK(uffd_region_populate(s.r, 3 * hps, src + 3 * hps, hps, 0));
	ASSERT_ERR(uffd_region_populate(s.r, 3 * hps, src + 3 * hps, hps, 0), -EEXIST,
		   "already mapped in the owner");
	ASSERT_ERR(uffd_region_zap(s.r, 0, hps), -EOPNOTSUPP, "owner must MADV_DONTNEED");
	ASSERT_ERR(uffd_region_discard(s.r, 0, hps), -EOPNOTSUPP, "without the owner's backing fd");
	/* Pages 0 and 3 exist: skipped a huge page at a time, 1 and 2 copied. */
	ASSERT_OK(uffd_copy(o.h->uffd, base, src, len, UFFD_SKIP_EXISTING, &done));
	ck_assert_uint_eq(done, len);
	for (unsigned i = 1; i < NHUGE; i++)
		ck_assert_int_eq(owner_ask(&o, 'r', i), 0);
	owner_end(&o);
	uffd_loop_free(l);
	ck_assert_int_eq(atomic_load(&s.faults), 1);
	ck_assert_int_eq(atomic_load(&s.bad), 0);
	uffd_handoff_free(o.h);
	free(src);
}
END_TEST

/* A failed handler poisons exactly its huge page: the owner gets SIGBUS there only. */
START_TEST(test_xproc_huge_poison)
{
	size_t hps;
	unsigned char *src;
	struct serve s;
	struct owner o;
	struct uffd_loop *l;
	struct uffd_loop_stats st;

	if (!harness_have_features(UFFD_FEATURE_POISON))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_POISON");
	if (!(hps = need_huge()))
		return;
	src = pattern_buf(NHUGE * hps);
	s = (struct serve){ .src = src, .fail_off = hps };
	owner_start(&o, HUGE_ANON, hps);
	s.r = o.h->regions[0];
	l = serve_start(&s, UFFD_LOOP_POISON_ON_ERROR);
	ck_assert_int_eq(owner_ask(&o, 'r', 1), 2);
	ck_assert_int_eq(owner_ask(&o, 'r', 0), 0);
	ck_assert_int_eq(owner_ask(&o, 'r', 2), 0);
	ck_assert_int_eq(owner_ask(&o, 'r', 1), 2);	/* stays poisoned, no new fault */
	owner_end(&o);
	uffd_loop_stats(l, &st);
	uffd_loop_free(l);
	ck_assert_uint_eq(st.errors, 1);
	ck_assert_int_eq(atomic_load(&s.faults), 3);
	ck_assert_int_eq(atomic_load(&s.bad), 0);
	uffd_handoff_free(o.h);
	free(src);
}
END_TEST

/* ---- raw messages over socket pairs ---- */

struct pair {
	int s[2];
	struct uffd *u;
};

static void pair_open(struct pair *p, int type)
{
	ck_assert_int_eq(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, p->s), 0);
	ASSERT_OK(uffd_open(&p->u, NULL));
}

static void pair_close(struct pair *p)
{
	close(p->s[0]);
	close(p->s[1]);
	uffd_close(p->u);
}

struct raw {
	struct hdr h;
	struct row rows[70];
};

/* A valid message of n rows declaring 16 pages each at FAKE_BASE. */
static size_t raw_init(struct raw *m, const struct uffd *u, unsigned n)
{
	size_t ps = harness_page_size();

	memset(m, 0, sizeof(*m));
	m->h = (struct hdr){ MAGIC, 1, sizeof(struct hdr), sizeof(struct row), n, 1,
			     (uint32_t)ps, uffd_features(u), 0, 0 };
	for (unsigned i = 0; i < n; i++)
		m->rows[i] = (struct row){ FAKE_BASE + i * 32 * ps, NPAGES * ps, ps, MISSING, 0, 0, 0 };
	return sizeof(struct hdr) + n * sizeof(struct row);
}

static void send_raw(int sock, const void *buf, size_t len, const int *fds, unsigned nfds)
{
	ck_assert_int_eq(send_fds(sock, buf, len, fds, nfds, MSG_NOSIGNAL), (ssize_t)len);
}

/* recv fails with err and words, leaves no descriptor behind and *out NULL. */
static void recv_fails(int sock, const struct uffd_handoff_opts *o, int err, const char *words)
{
	struct uffd_handoff *h = (void *)1;
	int before = harness_count_fds();

	ASSERT_ERR(uffd_handoff_recv(sock, o, &h), err, words);
	ck_assert_ptr_null(h);
	ck_assert_int_eq(harness_count_fds(), before);
}

static const struct bad {
	const char *what;
	int err;
	const char *words;
} bads[] = {
	{ "magic", -EPROTO, "not a libuffd handoff message" },
	{ "version", -EPROTONOSUPPORT, "wire version 2" },
	{ "no fd", -EPROTO, "no descriptors came" },
	{ "too many regions", -E2BIG, "more than max_regions 64" },
	{ "not a userfaultfd", -EINVAL, "not a userfaultfd but anon_inode:[eventfd]" },
	{ "overlap", -EINVAL, "of the table overlap" },
	{ "misaligned", -EINVAL, "must be multiples of the page size" },
	{ "page size", -EINVAL, "must be a power of two" },
	{ "length 0", -EINVAL, "length not 0" },
	{ "features", -EPROTO, "but the kernel reports" },
	{ "unknown features", -EOPNOTSUPP, "features this libuffd does not know" },
	{ "fd count", -EPROTO, "announces 2 descriptors, 1 came" },
	{ "unused fd", -EPROTO, "descriptor 1 is not the file of any region" },
	{ "fd index", -EPROTO, "names descriptor 5 of 1" },
	{ "header size", -EPROTO, "header size 8" },
	{ "row flags", -EPROTONOSUPPORT, "region 1 of the table has flags 0x4" },
	{ "header flags", -EPROTONOSUPPORT, "flags 0x1 this libuffd does not know" },
	{ "sender page size", -EPROTO, "the sender's page size is 512" },
	{ "fd not tmpfs", -EINVAL, "region 1 of the table: uffd_region_create_foreign: fd" },
	{ "uninitialised", -EINVAL, "never initialised" },
	{ "descriptors", -EPROTO, "there must be 1 (the userfaultfd) to 3" },
};

/* A userfaultfd without its UFFDIO_API handshake. */
static int raw_userfaultfd(void)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */), dev;

	if (fd >= 0)
		return fd;
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);	/* where the syscall is refused */
	fd = dev < 0 ? -1 : ioctl(dev, _IO(0xAA, 0x00) /* USERFAULTFD_IOC_NEW */, O_CLOEXEC);
	if (dev >= 0)
		close(dev);
	return fd;
}

/* Breaks message m (and its descriptors) as bads[i] says; returns its length. */
static size_t spoil(int i, struct raw *m, const struct uffd *u, int *fds, unsigned *nfds, int *extra)
{
	size_t len = raw_init(m, u, 2);

	switch (i) {
	case 0: m->h.magic = 0x12345678; break;
	case 1: m->h.version = 2; break;
	case 2: *nfds = 0; break;
	case 3: len = raw_init(m, u, 65); break;
	case 4: fds[0] = *extra = eventfd(0, EFD_CLOEXEC); break;
	case 5: m->rows[1].owner_addr = m->rows[0].owner_addr + 15 * m->h.page_size; break;
	case 6: m->rows[1].owner_addr += 512; break;
	case 7: m->rows[0].page_size = 3 * 4096; break;
	case 8: m->rows[0].length = 0; break;
	case 9: m->h.features ^= UFFD_FEATURE_THREAD_ID; break;
	case 10: m->h.features |= 1ull << 40; break;
	case 11: m->h.nfds = 2; break;
	case 12:
		m->h.nfds = 2;
		fds[(*nfds)++] = *extra = memfd_of(4096, false);
		break;
	case 13: m->rows[0].fd_index = 5; break;
	case 14: m->h.header_size = 8; break;
	case 15: m->rows[1].flags = 4; break;
	case 16: m->h.flags = 1; break;
	case 17: m->h.page_size = 512; break;
	case 18:
		m->h.nfds = 2;
		m->rows[1].fd_index = 1;
		fds[(*nfds)++] = *extra = eventfd(0, EFD_CLOEXEC);
		break;
	case 19: fds[0] = *extra = raw_userfaultfd(); break;
	case 20: m->h.nfds = 4; break;	/* two rows have at most two files */
	}
	return len;
}

START_TEST(test_bad_message)
{
	const struct bad *b = &bads[_i];
	struct pair p;
	struct raw m;
	int fds[4], extra = -1;
	unsigned nfds = 1;
	size_t len;

	pair_open(&p, SOCK_STREAM);
	fds[0] = uffd_fd(p.u);
	len = spoil(_i, &m, p.u, fds, &nfds, &extra);
	ck_assert_int_ge(fds[0], 0);
	send_raw(p.s[0], &m, len, fds, nfds);
	if (extra >= 0)
		close(extra);
	recv_fails(p.s[1], NULL, b->err, b->words);
	pair_close(&p);
}
END_TEST

/* The same table is accepted once max_regions allows it. */
START_TEST(test_max_regions)
{
	struct uffd_handoff_opts o = { .size = sizeof(o), .max_regions = 65 };
	struct uffd_handoff *h = NULL;
	struct pair p;
	struct raw m;
	int fd;

	pair_open(&p, SOCK_STREAM);
	fd = uffd_fd(p.u);
	send_raw(p.s[0], &m, raw_init(&m, p.u, 65), &fd, 1);
	ASSERT_OK(uffd_handoff_recv(p.s[1], &o, &h));
	ck_assert_uint_eq(h->nregions, 65);
	ck_assert_uint_eq((uintptr_t)uffd_region_base(h->regions[64]), m.rows[64].owner_addr);
	uffd_handoff_free(h);
	o.max_regions = UFFD_HANDOFF_REGIONS_MAX + 1;
	ASSERT_ERR(uffd_handoff_recv(p.s[1], &o, &h), -EINVAL, "UFFD_HANDOFF_REGIONS_MAX");
	pair_close(&p);
}
END_TEST

START_TEST(test_truncated)
{
	struct uffd_handoff_opts o = { .size = sizeof(o), .timeout_ms = 200 };
	struct timespec t0, t1;
	struct pair p;
	struct raw m;
	int fd;
	long ms;

	pair_open(&p, SOCK_STREAM);
	fd = uffd_fd(p.u);
	raw_init(&m, p.u, 2);
	/* The sender stops in the middle: the deadline ends the wait. */
	send_raw(p.s[0], &m, sizeof(m.h) + 20, &fd, 1);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	recv_fails(p.s[1], &o, -ETIMEDOUT, "no complete message within the timeout (60 bytes came)");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	ck_assert_msg(ms >= 190 && ms < 3000, "waited %ld ms for a timeout of 200", ms);
	pair_close(&p);
	/* The sender closes in the middle. */
	pair_open(&p, SOCK_STREAM);
	fd = uffd_fd(p.u);
	send_raw(p.s[0], &m, 20, &fd, 1);
	shutdown(p.s[0], SHUT_WR);
	recv_fails(p.s[1], NULL, -EPROTO, "truncated: 20 bytes of it came before the peer closed the connection");
	pair_close(&p);
}
END_TEST

/* Descriptors cut off by RLIMIT_NOFILE (MSG_CTRUNC): the one that came is closed. */
START_TEST(test_ctrunc)
{
	struct rlimit old, low;
	struct pair p;
	struct raw m;
	int fds[3], lowest;
	size_t len;

	SKIP_UNDER_VALGRIND("valgrind keeps RLIMIT_NOFILE to itself: the kernel never cuts descriptors off");
	pair_open(&p, SOCK_STREAM);
	len = raw_init(&m, p.u, 2);
	fds[0] = uffd_fd(p.u);
	fds[1] = memfd_of(NPAGES * 4096, false);
	fds[2] = memfd_of(NPAGES * 4096, false);
	m.h.nfds = 3;
	m.rows[0].fd_index = 1;
	m.rows[1].fd_index = 2;
	send_raw(p.s[0], &m, len, fds, 3);
	close(fds[1]);
	close(fds[2]);
	lowest = fcntl(0, F_DUPFD_CLOEXEC, 0);
	close(lowest);
	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = (struct rlimit){ (rlim_t)lowest + 1, old.rlim_max };	/* room for one */
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	recv_fails(p.s[1], NULL, -EPROTO, "cut off (MSG_CTRUNC)");
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
	pair_close(&p);
}
END_TEST

/* ---- what a good message may look like ---- */

struct dribble {
	int sock;
	const unsigned char *buf;
	size_t len, fds_at, step;
	int fd;
};

/* Sends the message a few bytes at a time, the descriptor with byte fds_at. */
static void *dribble_main(void *arg)
{
	struct dribble *d = arg;

	for (size_t off = 0; off < d->len; off += d->step) {
		size_t n = d->len - off < d->step ? d->len - off : d->step;
		bool with = off <= d->fds_at && d->fds_at < off + n;

		send_raw(d->sock, d->buf + off, n, &d->fd, with);
		usleep(2000);
	}
	return NULL;
}

static void recv_good(int sock, size_t nregions)
{
	struct uffd_handoff *h = NULL;

	ASSERT_OK(uffd_handoff_recv(sock, NULL, &h));
	ck_assert_uint_eq(h->nregions, nregions);
	ck_assert_int_eq(h->pid, getpid());	/* socketpair(): its creator on both ends */
	uffd_handoff_free(h);
}

/* Short reads, and descriptors riding on a later part of the message. */
START_TEST(test_split)
{
	struct pair p;
	struct raw m;
	struct dribble d;
	size_t len, at[] = { 0, 21, sizeof(struct hdr) + 50 };

	pair_open(&p, SOCK_STREAM);
	len = raw_init(&m, p.u, 2);
	for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
		void *t;

		d = (struct dribble){ p.s[0], (unsigned char *)&m, len, at[i], 7, uffd_fd(p.u) };
		t = harness_thread_start(dribble_main, &d);
		recv_good(p.s[1], 2);
		harness_thread_join(t);
	}
	/* Bytes written before the sendmsg with descriptors. */
	ck_assert_int_eq(write(p.s[0], &m, 10), 10);
	send_raw(p.s[0], (char *)&m + 10, len - 10, &d.fd, 1);
	recv_good(p.s[1], 2);
	pair_close(&p);
}
END_TEST

/* The receiver reads its message only: what follows stays in the socket. */
START_TEST(test_trailing)
{
	struct pair p;
	struct raw m;
	char next[8] = "";
	int fd;

	pair_open(&p, SOCK_STREAM);
	fd = uffd_fd(p.u);
	send_raw(p.s[0], &m, raw_init(&m, p.u, 1), &fd, 1);
	ck_assert_int_eq(write(p.s[0], "next", 4), 4);
	recv_good(p.s[1], 1);
	ck_assert_int_eq(read(p.s[1], next, sizeof(next)), 4);
	ck_assert_str_eq(next, "next");
	pair_close(&p);
}
END_TEST

START_TEST(test_seqpacket)
{
	size_t ps = harness_page_size();
	struct uffd_handoff_region rows[2] = {
		{ FAKE_BASE, NPAGES * ps, 0, MISSING, 0, -1 },
		{ FAKE_BASE + 64 * ps, NPAGES * ps, ps, MISSING, 0, -1 },
	};
	struct pair p;
	struct raw m;
	int fd;
	size_t len;

	pair_open(&p, SOCK_SEQPACKET);
	ASSERT_OK(uffd_handoff_send(p.s[0], p.u, rows, 2));
	recv_good(p.s[1], 2);
	fd = uffd_fd(p.u);
	len = raw_init(&m, p.u, 2);
	send_raw(p.s[0], &m, len - 1, &fd, 1);
	recv_fails(p.s[1], NULL, -EPROTO, "ended the record");
	send_raw(p.s[0], &m, len + 8, &fd, 1);
	recv_fails(p.s[1], NULL, -EPROTO, "the record holds 8 bytes after the message");
	send_raw(p.s[0], &m, len, &fd, 1);
	recv_good(p.s[1], 2);
	pair_close(&p);
}
END_TEST

/* What uffd_handoff_send() puts on the wire, read by hand. */
START_TEST(test_wire_format)
{
	size_t ps = harness_page_size();
	int memfd = memfd_of(64 * ps, false), got[4];
	struct uffd_handoff_region rows[3] = {
		{ FAKE_BASE, NPAGES * ps, 0, MISSING, 0, memfd },
		{ FAKE_BASE + 32 * ps, NPAGES * ps, ps, MINOR, 16 * ps, memfd },
		{ FAKE_BASE + 64 * ps, ps, 0, MISSING, 0, -1 },
	};
	union {
		char b[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} ctl;
	struct raw m;
	struct iovec iov = { &m, sizeof(m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	char path[64], link[64];
	struct pair p;
	ssize_t n;

	pair_open(&p, SOCK_STREAM);
	ASSERT_OK(uffd_handoff_send(p.s[0], p.u, rows, 3));
	n = recvmsg(p.s[1], &mh, MSG_CMSG_CLOEXEC);
	ck_assert_int_eq(n, sizeof(struct hdr) + 3 * sizeof(struct row));
	ck_assert_uint_eq(m.h.magic, MAGIC);
	ck_assert_uint_eq(m.h.version, 1);
	ck_assert_uint_eq(m.h.header_size, 40);
	ck_assert_uint_eq(m.h.row_size, 48);
	ck_assert_uint_eq(m.h.nregions, 3);
	ck_assert_uint_eq(m.h.nfds, 2);	/* one memfd for two rows */
	ck_assert_uint_eq(m.h.page_size, ps);
	ck_assert_uint_eq(m.h.features, uffd_features(p.u));
	ck_assert_uint_eq(m.rows[1].owner_addr, FAKE_BASE + 32 * ps);
	ck_assert_uint_eq(m.rows[1].fd_offset, 16 * ps);
	ck_assert_uint_eq(m.rows[1].modes, MINOR);
	ck_assert_uint_eq(m.rows[0].fd_index, 1);
	ck_assert_uint_eq(m.rows[1].fd_index, 1);
	ck_assert_uint_eq(m.rows[2].fd_index, 0);
	ck_assert_uint_eq(m.rows[0].page_size, 0);	/* as given: the fd's page size */
	ck_assert_uint_eq(ctl.align.cmsg_type, SCM_RIGHTS);
	ck_assert_uint_eq(ctl.align.cmsg_len, CMSG_LEN(2 * sizeof(int)));
	memcpy(got, CMSG_DATA(&ctl.align), 2 * sizeof(int));
	snprintf(path, sizeof(path), "/proc/self/fd/%d", got[0]);
	n = readlink(path, link, sizeof(link) - 1);
	ck_assert_int_gt(n, 0);
	link[n] = 0;
	ck_assert_str_eq(link, "anon_inode:[userfaultfd]");
	close(got[0]);
	close(got[1]);
	close(memfd);
	pair_close(&p);
}
END_TEST

START_TEST(test_send_errors)
{
	size_t ps = harness_page_size();
	struct uffd_handoff_region rows[2] = {
		{ FAKE_BASE, NPAGES * ps, 0, MISSING, 0, -1 },
		{ FAKE_BASE + 8 * ps, NPAGES * ps, 0, MISSING, 0, -1 },
	};
	struct pair p;
	int pp[2], dg[2], inet;

	pair_open(&p, SOCK_STREAM);
	ASSERT_ERR(uffd_handoff_send(p.s[0], NULL, rows, 1), -EINVAL, "handle is NULL");
	ASSERT_ERR(uffd_handoff_send(p.s[0], p.u, NULL, 1), -EINVAL, "regions is NULL");
	ASSERT_ERR(uffd_handoff_send(p.s[0], p.u, rows, UFFD_HANDOFF_REGIONS_MAX + 1), -EINVAL, "at most");
	ASSERT_ERR(uffd_handoff_send(p.s[0], p.u, rows, 2), -EINVAL, "of the table overlap");
	rows[1].owner_addr = FAKE_BASE + 64 * ps;
	rows[1].fd = 1000;
	ASSERT_ERR(uffd_handoff_send(p.s[0], p.u, rows, 2), -EBADF, "region 1 of the table: fd 1000 is not open");
	rows[1].fd = -1;
	rows[1].page_size = 3 * ps;
	ASSERT_ERR(uffd_handoff_send(p.s[0], p.u, rows, 2), -EINVAL, "power of two");
	ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
	ASSERT_ERR(uffd_handoff_send(pp[1], p.u, rows, 1), -ENOTSOCK, "not a socket");
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), 0);
	ASSERT_ERR(uffd_handoff_send(dg[0], p.u, rows, 1), -EPROTOTYPE, "SOCK_STREAM or SOCK_SEQPACKET");
	inet = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT_ERR(uffd_handoff_send(inet, p.u, rows, 1), -EAFNOSUPPORT, "not a Unix socket");
	/* A peer that is gone: -EPIPE, no SIGPIPE. */
	close(p.s[1]);
	p.s[1] = -1;
	ASSERT_ERR(uffd_handoff_send(p.s[0], p.u, rows, 1), -EPIPE, "the peer closed the connection");
	close(pp[0]);
	close(pp[1]);
	close(dg[0]);
	close(dg[1]);
	close(inet);
	pair_close(&p);
}
END_TEST

START_TEST(test_recv_args)
{
	struct uffd_handoff_opts o = { .size = sizeof(o), .timeout_ms = -2 };
	struct uffd_handoff *h;
	struct pair p;
	int pp[2];

	pair_open(&p, SOCK_STREAM);
	ASSERT_ERR(uffd_handoff_recv(p.s[1], NULL, NULL), -EINVAL, "out is NULL");
	ASSERT_ERR(uffd_handoff_recv(p.s[1], &o, &h), -EINVAL, "timeout_ms -2");
	o = (struct uffd_handoff_opts){ .size = 4 };
	ASSERT_ERR(uffd_handoff_recv(p.s[1], &o, &h), -EINVAL, "set it to sizeof(struct uffd_handoff_opts)");
	ASSERT_ERR(uffd_handoff_recv(-1, NULL, &h), -EINVAL, "negative");
	ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
	ASSERT_ERR(uffd_handoff_recv(pp[0], NULL, &h), -ENOTSOCK, "not a socket");
	close(pp[0]);
	close(pp[1]);
	uffd_handoff_free(NULL);
	pair_close(&p);
}
END_TEST

/* ---- foreign regions over memory of this process ---- */

static struct uffd_fault next_fault(struct uffd *u)
{
	struct pollfd p = { .fd = uffd_fd(u), .events = POLLIN };
	struct uffd_event ev;

	ck_assert_int_eq(poll(&p, 1, 5000), 1);
	ck_assert_int_eq(uffd_read_events(u, &ev, 1), 1);
	ck_assert_int_eq(ev.type, UFFD_EV_FAULT);
	return ev.fault;
}

static void *load_thread(void *p)
{
	return (void *)(uintptr_t)harness_load8(p);
}

static int sigbus_fn(void *ctx, struct uffd_fault *f)
{
	(void)ctx;
	(void)f;
	return UFFD_RESOLVE;
}

/* Anonymous memory of this process declared as a foreign region without file. */
START_TEST(test_foreign_anon)
{
	size_t ps = harness_page_size(), len = NPAGES * ps;
	unsigned char *src = pattern_buf(len);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffd_foreign_opts o = { .size = sizeof(o), .owner_addr = (uintptr_t)mem,
				       .length = len, .modes = MISSING, .fd = -1 };
	struct uffd_region *r, *r2;
	struct uffd_fault f;
	struct uffd *u;
	void *t;

	ASSERT_OK(uffd_open(&u, NULL));
	ASSERT_OK(uffd_register(u, mem, len, MISSING, NULL));
	ASSERT_OK(uffd_region_create_foreign(u, &o, &r));
	ck_assert_ptr_eq(uffd_region_base(r), mem);
	ck_assert_ptr_eq(uffd_region_uffd(r), u);
	ck_assert_uint_eq(uffd_region_page_size(r), ps);
	ck_assert_ptr_null(uffd_region_alias(r));
	t = harness_thread_start(load_thread, mem + 2 * ps + 5);
	f = next_fault(u);
	ck_assert_ptr_eq(f.region, r);
	ck_assert_uint_eq(f.offset, 2 * ps);
	ck_assert_uint_eq(f.len, ps);
	ck_assert_int_eq(f.kind, UFFD_FAULT_MISSING);
	ASSERT_OK(uffd_region_populate(r, 2 * ps, src + 2 * ps, ps, 0));
	ck_assert_uint_eq((uintptr_t)harness_thread_join(t), pattern(2 * ps + 5));
	ASSERT_ERR(uffd_region_populate(r, 2 * ps, src, ps, 0), -EEXIST, "already mapped in the owner");
	ASSERT_ERR(uffd_region_zap(r, 0, ps), -EOPNOTSUPP, "the owner must MADV_DONTNEED it");
	ASSERT_ERR(uffd_region_discard(r, 0, ps), -EOPNOTSUPP, "declared without the owner's backing fd");
	ASSERT_ERR(uffd_sigbus_add_region(r, sigbus_fn, NULL), -EINVAL, "faults happen in its owner");
	ASSERT_OK(uffd_region_set_source(r, src, len));
	o.owner_addr += 8 * ps;
	ASSERT_ERR(uffd_region_create_foreign(u, &o, &r2), -EEXIST, "overlaps a region the handle already has");
	/* Destroying the region leaves the owner's registration: faults go on, without region. */
	uffd_region_destroy(r);
	t = harness_thread_start(load_thread, mem + 5 * ps);
	f = next_fault(u);
	ck_assert_ptr_null(f.region);
	ASSERT_OK(uffd_copy(u, f.addr, src + 5 * ps, ps, 0, NULL));
	ck_assert_uint_eq((uintptr_t)harness_thread_join(t), pattern(5 * ps));
	uffd_close(u);
	munmap(mem, len);
	free(src);
}
END_TEST

/* A memfd of this process, mapped and registered here, declared with its fd. */
START_TEST(test_foreign_memfd)
{
	size_t ps = harness_page_size(), len = NPAGES * ps;
	unsigned char *src = pattern_buf(len);
	int memfd = memfd_of(len + 4 * ps, false), rfd;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 4 * ps);
	struct uffd_foreign_opts o = { .size = sizeof(o), .owner_addr = (uintptr_t)mem, .length = len,
				       .modes = MISSING | MINOR, .fd = memfd, .fd_offset = 4 * ps };
	struct uffd_region *r;
	struct uffd_fault f;
	struct uffd *u;
	void *t;

	if (!harness_have_features(UFFD_FEATURE_MINOR_SHMEM))
		SKIP_TEST("the kernel lacks UFFD_FEATURE_MINOR_SHMEM");
	ASSERT_OK(uffd_open(&u, NULL));
	ASSERT_OK(uffd_register(u, mem, len, MISSING | MINOR, NULL));
	ASSERT_OK(uffd_region_create_foreign(u, &o, &r));
	rfd = uffd_region_fd(r);
	ck_assert_int_ge(rfd, 0);
	ck_assert_int_ne(rfd, memfd);
	ck_assert_int_ne(fcntl(rfd, F_GETFD) & FD_CLOEXEC, 0);
	close(memfd);	/* the region has its own */
	ck_assert_ptr_nonnull(uffd_region_alias(r));
	ck_assert_ptr_ne(uffd_region_alias(r), mem);
	/* In the page cache, not mapped: a MINOR fault, CONTINUE'd. */
	ASSERT_OK(uffd_region_populate(r, 0, src, ps, 0));
	t = harness_thread_start(load_thread, mem + 7);
	f = next_fault(u);
	ck_assert_ptr_eq(f.region, r);
	ck_assert_int_eq(f.kind, UFFD_FAULT_MINOR);
	ASSERT_OK(uffd_region_continue(r, f.offset, f.len, 0, NULL));
	ck_assert_uint_eq((uintptr_t)harness_thread_join(t), pattern(7));
	/* Mapped ahead: read with no fault. */
	ASSERT_OK(uffd_region_populate(r, ps, src + ps, ps, UFFD_POPULATE_MAP));
	ck_assert_uint_eq((unsigned char)mem[ps + 3], pattern(ps + 3));
	/* A punched hole: the next touch is MISSING. */
	ASSERT_OK(uffd_region_discard(r, 0, ps));
	t = harness_thread_start(load_thread, mem + 9);
	f = next_fault(u);
	ck_assert_int_eq(f.kind, UFFD_FAULT_MISSING);
	ASSERT_OK(uffd_region_populate(r, 0, src, ps, UFFD_POPULATE_MAP));
	ck_assert_uint_eq((uintptr_t)harness_thread_join(t), pattern(9));
	ASSERT_ERR(uffd_region_zap(r, 0, ps), -EOPNOTSUPP, "foreign region");
	uffd_region_destroy(r);
	ck_assert_int_lt(fcntl(rfd, F_GETFD), 0);	/* the dup is closed */
	uffd_close(u);
	munmap(mem, len);
	free(src);
}
END_TEST

static void *store_thread(void *p)
{
	harness_store8(p, 0x5a);
	return NULL;
}

/*
 * populate(MAP | MAP_WP) on a foreign shmem region registered MISSING|WP:
 * no mapping can be made in the owner, but the write-protection holds
 * (markers on the unmapped entries): the owner reads the contents with no
 * fault and its first write is a WP fault.
 */
START_TEST(test_foreign_memfd_wp)
{
	size_t ps = harness_page_size(), len = NPAGES * ps;
	unsigned char *src = pattern_buf(len);
	int memfd = memfd_of(len, false);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	uint64_t modes = MISSING | UFFDIO_REGISTER_MODE_WP;
	struct uffd_foreign_opts o = { .size = sizeof(o), .owner_addr = (uintptr_t)mem, .length = len,
				       .modes = modes, .fd = memfd };
	struct uffd_region *r;
	struct uffd_fault f;
	struct uffd *u;
	void *t;

	if (!harness_have_features(UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_PAGEFAULT_FLAG_WP))
		SKIP_TEST("the kernel lacks write-protection on shmem");
	ASSERT_OK(uffd_open(&u, NULL));
	ASSERT_OK(uffd_register(u, mem, len, modes, NULL));
	ASSERT_OK(uffd_region_create_foreign(u, &o, &r));
	ASSERT_OK(uffd_region_populate(r, 2 * ps, src + 2 * ps, ps, UFFD_POPULATE_MAP | UFFD_MAP_WP));
	ck_assert_uint_eq(harness_load8(mem + 2 * ps + 1), pattern(2 * ps + 1));
	t = harness_thread_start(store_thread, mem + 2 * ps + 1);
	f = next_fault(u);
	ck_assert_ptr_eq(f.region, r);
	ck_assert_int_eq(f.kind, UFFD_FAULT_WP);
	ck_assert_uint_eq(f.offset, 2 * ps);
	ASSERT_OK(uffd_region_writeprotect(r, f.offset, f.len, false, 0));
	harness_thread_join(t);
	ck_assert_uint_eq(harness_load8(mem + 2 * ps + 1), 0x5a);
	uffd_region_destroy(r);
	uffd_close(u);
	munmap(mem, len);
	close(memfd);
	free(src);
}
END_TEST

/* A local hugetlb region and a foreign region of base pages share a handle. */
START_TEST(test_foreign_mixed)
{
	size_t ps = harness_page_size(), hps = need_huge(), len = NPAGES * ps;
	struct uffd_region_opts lo = { .size = sizeof(lo), .modes = MISSING, .fd = -1,
				       .flags = UFFD_REGION_HUGETLB };
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .length = len, .modes = MISSING, .fd = -1 };
	struct uffd_region *local, *foreign;
	struct uffd_fault f;
	struct uffd *u;
	char *mem, *zeros;
	void *t;

	if (!hps)
		return;
	zeros = calloc(1, hps);
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fo.owner_addr = (uintptr_t)mem;
	lo.length = 2 * hps;
	ASSERT_OK(uffd_open(&u, NULL));
	ASSERT_OK(uffd_region_create(u, &lo, &local));
	ASSERT_OK(uffd_register(u, mem, len, MISSING, NULL));
	ASSERT_OK(uffd_region_create_foreign(u, &fo, &foreign));
	t = harness_thread_start(load_thread, (char *)uffd_region_base(local) + hps + 5);
	f = next_fault(u);
	ck_assert_ptr_eq(f.region, local);
	ck_assert_uint_eq(f.len, hps);
	ck_assert_uint_eq(f.offset, hps);
	ASSERT_OK(uffd_copy(u, f.addr, zeros, f.len, 0, NULL));
	harness_thread_join(t);
	t = harness_thread_start(load_thread, mem + 3 * ps + 5);
	f = next_fault(u);
	ck_assert_ptr_eq(f.region, foreign);
	ck_assert_uint_eq(f.len, ps);
	ck_assert_uint_eq(f.offset, 3 * ps);
	ASSERT_OK(uffd_copy(u, f.addr, zeros, f.len, 0, NULL));
	harness_thread_join(t);
	uffd_region_destroy(foreign);
	uffd_region_destroy(local);
	uffd_close(u);
	munmap(mem, len);
	free(zeros);
}
END_TEST

START_TEST(test_foreign_args)
{
	size_t ps = harness_page_size(), len = NPAGES * ps;
	int memfd = memfd_of(len, false), small = memfd_of(ps, false), ev = eventfd(0, EFD_CLOEXEC), ro;
	struct uffd_foreign_opts good = { .size = sizeof(good), .owner_addr = FAKE_BASE,
					  .length = len, .modes = MISSING, .fd = -1 }, o;
	struct uffd_region *r = (void *)1;
	struct uffd *u, *bare;
	struct uffd_opts none = { .size = sizeof(none) };
	char path[64];
	int before;

	ASSERT_OK(uffd_open(&u, NULL));
	ASSERT_OK(uffd_open(&bare, &none));
	snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	ro = open(path, O_RDONLY | O_CLOEXEC);
	before = harness_count_fds();
#define BAD(err, words, ...)                                                     \
	do {                                                                     \
		o = good;                                                        \
		__VA_ARGS__;                                                     \
		ASSERT_ERR(uffd_region_create_foreign(u, &o, &r), err, words);   \
		ck_assert_ptr_null(r);                                           \
	} while (0)
	ASSERT_ERR(uffd_region_create_foreign(u, &good, NULL), -EINVAL, "out is NULL");
	ASSERT_ERR(uffd_region_create_foreign(NULL, &good, &r), -EINVAL, "handle is NULL");
	ASSERT_ERR(uffd_region_create_foreign(u, NULL, &r), -EINVAL, "opts is NULL");
	BAD(-EINVAL, "set it to sizeof", o.size = 4);
	BAD(-EINVAL, "non-empty mix", o.modes = 0);
	BAD(-EINVAL, "non-empty mix", o.modes = 0x100);
	BAD(-EINVAL, "other than UFFD_REGION_NO_ALIAS", o.flags = UFFD_REGION_HUGETLB);
	BAD(-EINVAL, "power of two", o.page_size = 3 * ps);
	BAD(-EINVAL, "at least the base page size", o.page_size = ps / 2);
	BAD(-EINVAL, "owner_addr is 0", o.owner_addr = 0);
	BAD(-EINVAL, "length not 0", o.length = 0);
	BAD(-EINVAL, "multiples of the page size", o.owner_addr += 100);
	BAD(-EINVAL, "wraps around", o.owner_addr = UINT64_MAX - ps + 1);
	BAD(-EINVAL, "pass -1", o.fd = -2);
	BAD(-EINVAL, "without a backing fd", o.fd_offset = ps);
	BAD(-EINVAL, "not on tmpfs or hugetlbfs", o.fd = ev);
	BAD(-EINVAL, "ftruncate the file first", o.fd = small);
	BAD(-EINVAL, "was declared but fd", o.fd = memfd; o.page_size = 2 * ps);
	BAD(-EACCES, "not open for reading and writing", o.fd = ro);
	BAD(-EBADF, "not open", o.fd = 1000);
	/*
	 * A handle without features (as Firecracker's fd has): MISSING needs
	 * none, on anonymous, shmem or hugetlbfs memory (from the declared
	 * page size) -- the owner registered it; MINOR on shmem does.
	 */
	ASSERT_OK(uffd_region_create_foreign(bare, &good, &r));
	uffd_region_destroy(r);
	o = good;
	o.fd = memfd;
	ASSERT_OK(uffd_region_create_foreign(bare, &o, &r));
	uffd_region_destroy(r);
	o = good;
	o.owner_addr = 1ull << 40;	/* declared only: nothing is mapped or registered there */
	o.page_size = o.length = 2u << 20;
	ASSERT_OK(uffd_region_create_foreign(bare, &o, &r));
	ck_assert_uint_eq(uffd_region_page_size(r), 2u << 20);
	uffd_region_destroy(r);
	o = good;
	o.modes = MINOR;
	ASSERT_ERR(uffd_region_create_foreign(bare, &o, &r), -EOPNOTSUPP, "MINOR_SHMEM");
#undef BAD
	ck_assert_int_eq(harness_count_fds(), before);
	close(ro);
	close(ev);
	close(small);
	close(memfd);
	uffd_close(bare);
	uffd_close(u);
}
END_TEST

/* The received handle and regions serve this process's own memory. */
START_TEST(test_self_roundtrip)
{
	size_t ps = harness_page_size(), len = NPAGES * ps;
	unsigned char *src = pattern_buf(len);
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int memfd = memfd_of(2 * len, false);
	struct uffd_handoff_region rows[2] = {
		{ (uintptr_t)mem, len, 0, MISSING, 0, -1 },
		{ FAKE_BASE, len, 0, MISSING, len, memfd },
	};
	struct uffd_handoff *h = NULL;
	struct uffd_fault f;
	struct pair p;
	void *t;

	pair_open(&p, SOCK_STREAM);
	ASSERT_OK(uffd_register(p.u, mem, len, MISSING, NULL));
	ASSERT_OK(uffd_handoff_send(p.s[0], p.u, rows, 2));
	close(memfd);
	ASSERT_OK(uffd_handoff_recv(p.s[1], NULL, &h));
	ck_assert_uint_eq(uffd_features(h->uffd), uffd_features(p.u));
	ck_assert_int_ne(uffd_fd(h->uffd), uffd_fd(p.u));
	ck_assert_int_eq(pidfd_pid(h->pidfd), getpid());
	ck_assert_ptr_eq(uffd_region_base(h->regions[0]), mem);
	ck_assert_ptr_null(uffd_region_alias(h->regions[0]));
	ck_assert_ptr_nonnull(uffd_region_alias(h->regions[1]));
	ck_assert_uint_eq(uffd_region_page_size(h->regions[1]), ps);
	t = harness_thread_start(load_thread, mem + 4 * ps + 1);
	f = next_fault(h->uffd);
	ck_assert_ptr_eq(f.region, h->regions[0]);
	ck_assert_uint_eq(f.offset, 4 * ps);
	ASSERT_OK(uffd_region_populate(f.region, f.offset, src + f.offset, f.len, 0));
	ck_assert_uint_eq((uintptr_t)harness_thread_join(t), pattern(4 * ps + 1));
	uffd_handoff_free(h);
	pair_close(&p);
	munmap(mem, len);
	free(src);
}
END_TEST

/*
 * A backing memfd the peer can still shrink is refused: truncated under
 * the handler, it would turn writes through the alias view into SIGBUS.
 * uffd_handoff_send() seals it (F_SEAL_SHRINK), or says why it cannot.
 */
START_TEST(test_unsealed_memfd)
{
	size_t ps = harness_page_size(), len = NPAGES * ps;
	int open_fd = memfd_unsealed(len, false), sealed = memfd_of(len, false), fds[2];
	int closed = memfd_create("no-sealing", MFD_CLOEXEC);
	struct uffd_handoff_region row = { FAKE_BASE, len, 0, MISSING, 0, open_fd };
	struct uffd_handoff *h = NULL;
	struct pair p;
	struct raw m;
	size_t n;

	ck_assert_int_ge(closed, 0);
	ck_assert_int_eq(ftruncate(closed, (off_t)len), 0);
	pair_open(&p, SOCK_STREAM);
	/* A raw sender's unsealed memfd, sealable or not: refused, nothing kept. */
	for (int k = 0; k < 2; k++) {
		n = raw_init(&m, p.u, 1);
		m.h.nfds = 2;
		m.rows[0].fd_index = 1;
		m.rows[0].page_size = 0;
		fds[0] = uffd_fd(p.u);
		fds[1] = k ? closed : open_fd;
		send_raw(p.s[0], &m, n, fds, 2);
		recv_fails(p.s[1], NULL, -EINVAL, "is not sealed against shrinking (F_SEAL_SHRINK");
	}
	ck_assert_int_eq(fcntl(open_fd, F_GET_SEALS) & F_SEAL_SHRINK, 0);
	/* Sealed by the raw sender: taken, and the alias writes. */
	fds[1] = sealed;
	send_raw(p.s[0], &m, n, fds, 2);
	ASSERT_OK(uffd_handoff_recv(p.s[1], NULL, &h));
	((volatile char *)uffd_region_alias(h->regions[0]))[len - 1] = 1;
	uffd_handoff_free(h);
	/* uffd_handoff_send: a memfd that cannot be sealed is refused before anything is sent. */
	row.fd = closed;
	ASSERT_ERR(uffd_handoff_send(p.s[0], p.u, &row, 1), -EPERM, "MFD_ALLOW_SEALING");
	/* One that can: sealed by the send, then it cannot shrink and the receiver takes it. */
	row.fd = open_fd;
	ASSERT_OK(uffd_handoff_send(p.s[0], p.u, &row, 1));
	ck_assert_int_ne(fcntl(open_fd, F_GET_SEALS) & F_SEAL_SHRINK, 0);
	ck_assert_int_eq(ftruncate(open_fd, (off_t)ps), -1);
	ck_assert_int_eq(errno, EPERM);
	ASSERT_OK(uffd_handoff_recv(p.s[1], NULL, &h));
	ck_assert_int_ne(fcntl(uffd_region_fd(h->regions[0]), F_GET_SEALS) & F_SEAL_SHRINK, 0);
	uffd_handoff_free(h);
	pair_close(&p);
	close(open_fd);
	close(sealed);
	close(closed);
}
END_TEST

/*
 * uffd_features_of_fd(): a received fd's features without the kernel's
 * INITIALIZED bit, which uffd_open_fd() refuses; what the fd is when it is
 * not an initialised userfaultfd.
 */
START_TEST(test_features_of_fd)
{
	struct uffd_opts o = { .size = sizeof(o), .features = UFFD_FEATURE_EVENT_REMOVE };
	struct uffd *u = NULL, *w = NULL;
	uint64_t f = 1;
	int ev = eventfd(0, EFD_CLOEXEC), raw, dup_fd;

	if (uffd_open(&u, &o))
		SKIP_TEST("no userfaultfd with EVENT_REMOVE here: %s", uffd_last_error());
	ASSERT_OK(uffd_features_of_fd(uffd_fd(u), &f));
	ck_assert_uint_eq(f, uffd_features(u));
	ck_assert_uint_eq(f >> 31, 0);
	/* The old trap: the raw fdinfo value has bit 31, which uffd_open_fd refuses. */
	ASSERT_ERR(uffd_open_fd(&w, dup_fd = fcntl(uffd_fd(u), F_DUPFD_CLOEXEC, 0), f | (1ull << 31)), -EINVAL,
		   "unknown feature bits 0x80000000");
	ASSERT_OK(uffd_open_fd(&w, dup_fd, f));
	ck_assert_uint_eq(uffd_features(w), uffd_features(u));
	uffd_close(w);
	ASSERT_ERR(uffd_features_of_fd(ev, &f), -EINVAL, "not a userfaultfd but anon_inode:[eventfd]");
	ck_assert_uint_eq(f, 0);
	ASSERT_ERR(uffd_features_of_fd(1000, &f), -EBADF, "not open");
	ASSERT_ERR(uffd_features_of_fd(-1, &f), -EBADF, "not open");
	ASSERT_ERR(uffd_features_of_fd(uffd_fd(u), NULL), -EINVAL, "features is NULL");
	raw = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (raw >= 0) {	/* no UFFDIO_API yet */
		ASSERT_ERR(uffd_features_of_fd(raw, &f), -EINVAL, "never initialised");
		close(raw);
	}
	close(ev);
	uffd_close(u);
}
END_TEST

static Suite *handoff_suite(void)
{
	Suite *s = suite_create("handoff");
	TCase *tc;

	tc = CASE(unsealed_memfd, 30);
	tcase_add_test(tc, test_unsealed_memfd);
	tc = CASE(xproc_anon, 30);
	tcase_add_test(tc, test_xproc_anon);
	tc = CASE(features_of_fd, 10);
	tcase_add_test(tc, test_features_of_fd);
	tc = CASE(xproc_memfd_minor, 30);
	tcase_add_test(tc, test_xproc_memfd_minor);
	tc = CASE(xproc_huge_memfd, 30);
	tcase_add_test(tc, test_xproc_huge_memfd);
	tc = CASE(xproc_huge_skip, 30);
	tcase_add_test(tc, test_xproc_huge_skip);
	tc = CASE(xproc_huge_poison, 30);
	tcase_add_test(tc, test_xproc_huge_poison);
	tc = CASE(bad_message, 30);
	tcase_add_loop_test(tc, test_bad_message, 0, sizeof(bads) / sizeof(bads[0]));
	tc = CASE(max_regions, 10);
	tcase_add_test(tc, test_max_regions);
	tc = CASE(truncated, 10);
	tcase_add_test(tc, test_truncated);
	tc = CASE(ctrunc, 10);
	tcase_add_test(tc, test_ctrunc);
	tc = CASE(split, 20);
	tcase_add_test(tc, test_split);
	tc = CASE(trailing, 10);
	tcase_add_test(tc, test_trailing);
	tc = CASE(seqpacket, 10);
	tcase_add_test(tc, test_seqpacket);
	tc = CASE(wire_format, 10);
	tcase_add_test(tc, test_wire_format);
	tc = CASE(send_errors, 10);
	tcase_add_test(tc, test_send_errors);
	tc = CASE(recv_args, 10);
	tcase_add_test(tc, test_recv_args);
	tc = CASE(foreign_anon, 10);
	tcase_add_test(tc, test_foreign_anon);
	tc = CASE(foreign_memfd, 10);
	tcase_add_test(tc, test_foreign_memfd);
	tc = CASE(foreign_memfd_wp, 10);
	tcase_add_test(tc, test_foreign_memfd_wp);
	tc = CASE(foreign_mixed, 20);
	tcase_add_test(tc, test_foreign_mixed);
	tc = CASE(foreign_args, 10);
	tcase_add_test(tc, test_foreign_args);
	tc = CASE(self_roundtrip, 10);
	tcase_add_test(tc, test_self_roundtrip);
	return s;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "owner"))
		return owner_main(argv);
	return harness_run(handoff_suite());
}
