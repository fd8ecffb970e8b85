/* SPDX-License-Identifier: MIT */
/* Opening a userfaultfd: the ways to get one, the feature handshake. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "internal.h"

#define FD_FLAGS (O_CLOEXEC | O_NONBLOCK)

static const char *const feature_names[] = {
	"PAGEFAULT_FLAG_WP", "EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE",
	"MISSING_HUGETLBFS", "MISSING_SHMEM", "EVENT_UNMAP", "SIGBUS",
	"THREAD_ID", "MINOR_HUGETLBFS", "MINOR_SHMEM", "EXACT_ADDRESS",
	"WP_HUGETLBFS_SHMEM", "WP_UNPOPULATED", "POISON", "WP_ASYNC", "MOVE",
};

UFFD_EXPORT const char *uffd_feature_name(uint64_t feature)
{
	unsigned bit;

	if (!feature || (feature & (feature - 1)) || !(feature & UFFD_FEATURES_KNOWN))
		return NULL;
	bit = (unsigned)__builtin_ctzll(feature);
	return feature_names[bit];
}
UFFD_EXPORT_OWN(feature_name);

const char *uffd__feature_list(uint64_t mask, char *buf, size_t size)
{
	size_t used = 0;
	int n;

	buf[0] = '\0';
	for (unsigned bit = 0; bit < 64 && used < size; bit++) {
		const char *name = uffd_feature_name(1ull << bit);

		if (!(mask & (1ull << bit)))
			continue;
		n = name ? snprintf(buf + used, size - used, "%s%s", used ? " | " : "", name)
			 : snprintf(buf + used, size - used, "%sbit %u", used ? " | " : "", bit);
		used += n > 0 ? (size_t)n : 0;
	}
	return buf;
}

size_t uffd__base_page_size(void)
{
	static size_t ps;

	if (!ps)
		ps = (size_t)sysconf(_SC_PAGESIZE);
	return ps;
}

/* One way of getting a userfaultfd: its fd, or -errno. */
static int open_syscall(int extra)
{
	long fd = syscall(__NR_userfaultfd, FD_FLAGS | extra);

	return fd < 0 ? -errno : (int)fd;
}

static int open_dev(void)
{
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	int fd;

	if (dev < 0)
		return -errno;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, FD_FLAGS);
	fd = fd < 0 ? -errno : fd;
	close(dev);
	return fd;
}

/* EPERM and EACCES tell the user what to change; ENOENT and ENOSYS less so. */
static int more_telling(int a, int b)
{
	if (a == -EPERM || a == -EACCES)
		return a;
	if (b == -EPERM || b == -EACCES)
		return b;
	return a ? a : b;
}

static int open_raw(unsigned flags)
{
	int sys_err, dev_err = 0, umo_err = 0, fd;
	char dev[64], umo[96] = "";

	fd = open_syscall(0);
	if (fd >= 0)
		return fd;
	sys_err = fd;
	if (!(flags & UFFD_OPEN_NO_DEV)) {
		fd = open_dev();
		if (fd >= 0)
			return fd;
		dev_err = fd;
	}
	if (flags & UFFD_OPEN_USER_MODE_ONLY) {
		fd = open_syscall(UFFD_USER_MODE_ONLY);
		if (fd >= 0)
			return fd;
		umo_err = fd;
		snprintf(umo, sizeof(umo), ", and with UFFD_OPEN_USER_MODE_ONLY userfaultfd(2) failed with %s",
			 uffd__errname(umo_err));
	}
	if (sys_err == -ENOSYS && (dev_err == -EMFILE || dev_err == -ENFILE))
		sys_err = dev_err;	/* the way that exists ran out of descriptors */
	if (sys_err == -EMFILE || sys_err == -ENFILE)	/* no permission advice for that */
		return uffd__err(sys_err, "cannot open a userfaultfd: %s (%s): the %s; close descriptors "
				 "or raise the limit (ulimit -n)", strerror(-sys_err), uffd__errname(sys_err),
				 sys_err == -EMFILE ? "process has as many open files as RLIMIT_NOFILE allows"
						    : "system-wide limit of open files (fs.file-max) is reached");
	if (flags & UFFD_OPEN_NO_DEV)
		snprintf(dev, sizeof(dev), "was not tried (UFFD_OPEN_NO_DEV)");
	else
		snprintf(dev, sizeof(dev), "failed with %s", uffd__errname(dev_err));
	return uffd__err(more_telling(more_telling(sys_err, dev_err), umo_err),
		"cannot open a userfaultfd: userfaultfd(2) failed with %s, /dev/userfaultfd %s%s; "
		"to fix: set the sysctl vm.unprivileged_userfaultfd=1, give the process CAP_SYS_PTRACE, "
		"give this user read/write access to /dev/userfaultfd%s",
		uffd__errname(sys_err), dev, umo,
		(flags & UFFD_OPEN_USER_MODE_ONLY) ? ""
		: ", or pass UFFD_OPEN_USER_MODE_ONLY to handle faults raised in user mode only");
}

/* UFFDIO_API on a fresh fd; *features in: wanted, out: available. */
static int api_handshake(int fd, uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = *features };

	if (ioctl(fd, UFFDIO_API, &api))
		return -errno;
	*features = api.features;
	return 0;
}

static atomic_ullong probed; /* available features | 1ull << 63 once probed */

UFFD_EXPORT int uffd_probe(uint64_t *available)
{
	uint64_t have = atomic_load(&probed), feats = 0;
	int fd, err;

	if (!available)
		return uffd__err(-EINVAL, "uffd_probe: available is NULL");
	if (have) {
		*available = have & ~(1ull << 63);
		return 0;
	}
	/* User-mode-only needs no privilege and never opens the device; the
	 * feature set is the same. */
	fd = open_syscall(UFFD_USER_MODE_ONLY);
	if (fd < 0)
		fd = open_raw(0);
	if (fd < 0)
		return fd;
	err = api_handshake(fd, &feats);
	close(fd);
	if (err)
		return uffd__err(err, "UFFDIO_API on a probe fd failed: %s", uffd__errname(err));
	atomic_store(&probed, feats | 1ull << 63);
	*available = feats;
	return 0;
}
UFFD_EXPORT_OWN(probe);

static int check_features(uint64_t required, uint64_t available)
{
	char buf[256];
	uint64_t missing = required & ~available;

	if (!missing)
		return 0;
	return uffd__err(-EOPNOTSUPP,
		"uffd_open: the kernel lacks required feature(s) %s; upgrade the kernel or move them to want_features",
		uffd__feature_list(missing, buf, sizeof(buf)));
}

static int api_error(int err, uint64_t features)
{
	if (err == -EPERM && (features & UFFD_FEATURE_EVENT_FORK))
		return uffd__err(err, "UFFDIO_API: UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE; run with it or drop the feature");
	return uffd__err(err, "UFFDIO_API failed with %s", uffd__errname(err));
}

static int handle_new(struct uffd **out, int fd, uint64_t features)
{
	struct uffd *u = calloc(1, sizeof(*u));

	if (!u)
		return uffd__err(-ENOMEM, "uffd_open: out of memory");
	u->fd = fd;
	u->features = features;
	u->page_size = uffd__base_page_size();
	atomic_init(&u->pagemap_fd, -1);
	u->regions = (struct rangemap)RANGEMAP_INIT;
	u->ranges = (struct rangemap)RANGEMAP_INIT;
	*out = u;
	return 0;
}

UFFD_EXPORT int uffd_open(struct uffd **out, const struct uffd_opts *opts)
{
	struct uffd_opts o = { .size = sizeof(o) };
	uint64_t available, features;
	int fd, err;

	if (!out)
		return uffd__err(-EINVAL, "uffd_open: out is NULL");
	*out = NULL;
	if (opts && (err = uffd__opts_copy(&o, sizeof(o), opts, opts->size, "uffd_opts")))
		return err;
	if (o.flags & ~(UFFD_OPEN_USER_MODE_ONLY | UFFD_OPEN_NO_DEV))
		return uffd__err(-EINVAL, "uffd_open: unknown flags 0x%x", o.flags);
	err = uffd_probe(&available);
	if (err)
		return err;
	if ((err = check_features(o.features, available)))
		return err;
	features = opts ? o.features | (o.want_features & available)
			: UFFD_FEATURES_DEFAULT & available;
	fd = open_raw(o.flags);
	if (fd < 0)
		return fd;
	err = api_handshake(fd, &(uint64_t){ features });
	/* EVENT_FORK needs CAP_SYS_PTRACE; a failed handshake leaves the fd
	 * fresh, so a wanted (not required) EVENT_FORK is dropped and retried. */
	if (err == -EPERM && (features & ~o.features & UFFD_FEATURE_EVENT_FORK)) {
		features &= ~(uint64_t)UFFD_FEATURE_EVENT_FORK;
		err = api_handshake(fd, &(uint64_t){ features });
	}
	if (err)
		err = api_error(err, features);
	else
		err = handle_new(out, fd, features);
	if (err)
		close(fd);
	return err;
}
UFFD_EXPORT_OWN(open);

#define ANON_INODE_FS_MAGIC 0x09041934

/*
 * Without /proc (containers, chroots): an anonymous inode on which
 * UFFDIO_API with a wrong api number fails with EINVAL and reads back
 * zeroed, which is what the kernel's userfaultfd does first, before it
 * looks at or changes anything (initialised or not). Other anonymous
 * inodes (eventfd, epoll, timerfd, ...) have no such ioctl (ENOTTY) or
 * leave the struct as it was.
 */
static bool acts_as_userfaultfd(int fd)
{
	struct statfs sfs;
	struct uffdio_api api = { .api = 0, .features = ~0ull, .ioctls = ~0ull };

	if (fstatfs(fd, &sfs) || sfs.f_type != ANON_INODE_FS_MAGIC)
		return false;
	return ioctl(fd, UFFDIO_API, &api) < 0 && errno == EINVAL && !api.features && !api.ioctls;
}

/* A userfaultfd shows as "anon_inode:[userfaultfd]" in /proc/self/fd. */
static bool is_userfaultfd(int fd)
{
	char path[64], target[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return acts_as_userfaultfd(fd);	/* no /proc here */
	target[n] = '\0';
	return strcmp(target, "anon_inode:[userfaultfd]") == 0;
}

UFFD_EXPORT int uffd_open_fd(struct uffd **out, int fd, uint64_t features)
{
	int fl;

	if (!out)
		return uffd__err(-EINVAL, "uffd_open_fd: out is NULL");
	*out = NULL;
	if (fd < 0)
		return uffd__err(-EINVAL, "uffd_open_fd: fd %d is negative", fd);
	if (features & ~UFFD_FEATURES_KNOWN)
		return uffd__err(-EINVAL, "uffd_open_fd: unknown feature bits 0x%llx",
				 (unsigned long long)(features & ~UFFD_FEATURES_KNOWN));
	if (fcntl(fd, F_GETFD) < 0)
		return uffd__err(-EBADF, "uffd_open_fd: fd %d is not open", fd);
	if (!is_userfaultfd(fd))
		return uffd__err(-EINVAL, "uffd_open_fd: fd %d is not a userfaultfd", fd);
	/* Reads must not block and a blocking uffd polls as an error: same flags as uffd_open. */
	if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) ||
	    fcntl(fd, F_SETFD, FD_CLOEXEC))
		return uffd__err(-errno, "uffd_open_fd: cannot make fd %d O_NONBLOCK|O_CLOEXEC: %s",
				 fd, strerror(errno));
	if (handle_new(out, fd, features))
		return -ENOMEM;
	(*out)->ranges_unknown = true;
	return 0;
}
UFFD_EXPORT_OWN(open_fd);

UFFD_EXPORT void uffd_close(struct uffd *u)
{
	int pm;

	if (!u)
		return;
	pm = atomic_load(&u->pagemap_fd);
	if (pm >= 0)
		close(pm);
	rangemap_destroy(&u->regions);
	rangemap_destroy(&u->ranges);
	if (u->fd >= 0)		/* -1: the loop closed a dead fork child's fd early */
		close(u->fd);
	free(u);
}
UFFD_EXPORT_OWN(close);

UFFD_EXPORT int uffd_fd(const struct uffd *u)
{
	if (!u)
		return uffd__err(-EINVAL, "uffd_fd: handle is NULL");
	return u->fd;
}
UFFD_EXPORT_OWN(fd);

UFFD_EXPORT uint64_t uffd_features(const struct uffd *u)
{
	return u ? u->features : 0;
}
UFFD_EXPORT_OWN(features);
