/* SPDX-License-Identifier: MIT */
/* uffd-info: facts about the machine, and the ways of opening a userfaultfd. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <uffd.h>

#include "compat.h"
#include "info.h"

#define CAP_SYS_PTRACE_BIT 19

/* First number in a file, or -1 when it cannot be read. */
static long read_long(const char *path)
{
	FILE *f = fopen(path, "re");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* The value of "Name: value" in a /proc file, or -1. */
static long proc_field(const char *path, const char *name, int base)
{
	FILE *f = fopen(path, "re");
	size_t len = strlen(name);
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, name, len) && line[len] == ':') {
			v = strtol(line + len + 1, NULL, base);
			break;
		}
	fclose(f);
	return v;
}

static bool cap_effective(unsigned cap)
{
	FILE *f = fopen("/proc/self/status", "re");
	unsigned long long caps = 0;
	char line[256];

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &caps) == 1)
			break;
	fclose(f);
	return caps & (1ull << cap);
}

/* "always [madvise] never" -> "madvise". */
static void thp_mode(char *buf, size_t size)
{
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "re");
	char line[128], *open, *close;

	buf[0] = '\0';
	if (!f)
		return;
	if (fgets(line, sizeof(line), f) && (open = strchr(line, '[')) &&
	    (close = strchr(open, ']'))) {
		*close = '\0';
		snprintf(buf, size, "%s", open + 1);
	}
	fclose(f);
}

static int by_size(const void *a, const void *b)
{
	const struct hugepage_size *x = a, *y = b;

	return (x->kb > y->kb) - (x->kb < y->kb);
}

static void hugepages(struct sysinfo *si)
{
	DIR *d = opendir("/sys/kernel/mm/hugepages");
	struct dirent *e;
	char path[512];
	long kb = proc_field("/proc/meminfo", "Hugepagesize", 10);

	si->hugepage_kb = kb > 0 ? (unsigned long)kb : 0;
	si->hugepages_total = proc_field("/proc/meminfo", "HugePages_Total", 10);
	si->hugepages_free = proc_field("/proc/meminfo", "HugePages_Free", 10);
	while (d && (e = readdir(d)) && si->nr_sizes < MAX_HUGEPAGE_SIZES) {
		struct hugepage_size *h = &si->sizes[si->nr_sizes];

		if (sscanf(e->d_name, "hugepages-%lukB", &h->kb) != 1)
			continue;
		snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/%s/nr_hugepages", e->d_name);
		h->total = read_long(path);
		snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/%s/free_hugepages", e->d_name);
		h->free = read_long(path);
		si->nr_sizes++;
	}
	if (d)
		closedir(d);
	qsort(si->sizes, si->nr_sizes, sizeof(si->sizes[0]), by_size);
}

static void dev_node(struct sysinfo *si)
{
	static const char bits[] = "rwxrwxrwx";
	struct passwd *pw;
	struct group *gr;
	struct stat st;

	si->dev_present = stat("/dev/userfaultfd", &st) == 0;
	if (!si->dev_present)
		return;
	si->dev_mode[0] = S_ISCHR(st.st_mode) ? 'c' : '?';
	for (int i = 0; i < 9; i++)
		si->dev_mode[i + 1] = (st.st_mode & (0400 >> i)) ? bits[i] : '-';
	si->dev_mode[10] = '\0';
	pw = getpwuid(st.st_uid);
	gr = getgrgid(st.st_gid);
	if (pw)
		snprintf(si->dev_owner, sizeof(si->dev_owner), "%s", pw->pw_name);
	else
		snprintf(si->dev_owner, sizeof(si->dev_owner), "%u", (unsigned)st.st_uid);
	if (gr)
		snprintf(si->dev_group, sizeof(si->dev_group), "%s", gr->gr_name);
	else
		snprintf(si->dev_group, sizeof(si->dev_group), "%u", (unsigned)st.st_gid);
}

void sysinfo_gather(struct sysinfo *si)
{
	struct utsname un;

	memset(si, 0, sizeof(*si));
	snprintf(si->kernel, sizeof(si->kernel), "%s", uname(&un) ? "unknown" : un.release);
	si->uid = getuid();
	si->euid = geteuid();
	si->cap_sys_ptrace = cap_effective(CAP_SYS_PTRACE_BIT);
	si->unprivileged_userfaultfd = read_long("/proc/sys/vm/unprivileged_userfaultfd");
	si->io_uring_disabled = read_long("/proc/sys/kernel/io_uring_disabled");
	si->nr_hugepages = read_long("/proc/sys/vm/nr_hugepages");
	thp_mode(si->thp, sizeof(si->thp));
	dev_node(si);
	hugepages(si);
	si->probe_err = uffd_probe(&si->available);
}

#define FIX_SYSCALL_EPERM \
	"sysctl vm.unprivileged_userfaultfd=1, or give the program CAP_SYS_PTRACE " \
	"(setcap cap_sys_ptrace=ep PROGRAM), or use /dev/userfaultfd"
#define FIX_NO_USERFAULTFD "a kernel built with CONFIG_USERFAULTFD=y"
#define FIX_DEV_ACCESS \
	"chgrp GROUP /dev/userfaultfd && chmod 0660 /dev/userfaultfd and add the user to GROUP " \
	"(a udev rule KERNEL==\"userfaultfd\", GROUP=\"GROUP\", MODE=\"0660\" makes it last)"
#define FIX_DEV_MISSING \
	"Linux >= 6.1 (CONFIG_USERFAULTFD) creates /dev/userfaultfd; in a container, bind-mount it from the host"
#define FIX_LIBRARY \
	"apply a fix above, or have the application pass UFFD_OPEN_USER_MODE_ONLY " \
	"(faults raised inside the kernel, e.g. by read(2) into registered memory, then fail with EFAULT)"

/* userfaultfd(2) with these flags: the fd, or -errno. */
static int try_syscall(int flags)
{
	long fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK | flags);

	return fd < 0 ? -errno : (int)fd;
}

static void check_syscall(const struct sysinfo *si, struct row *r)
{
	int fd = try_syscall(0);

	if (fd >= 0) {
		close(fd);
		pass(r, "userfaultfd(O_CLOEXEC|O_NONBLOCK) returned a userfaultfd that also sees faults raised inside the kernel");
		return;
	}
	snprintf(r->brief, sizeof(r->brief), "%s", errname(fd));
	if (fd == -EPERM)
		fail(r, FIX_SYSCALL_EPERM,
		     "userfaultfd(2) failed with EPERM: vm.unprivileged_userfaultfd is %ld and the process lacks CAP_SYS_PTRACE",
		     si->unprivileged_userfaultfd);
	else
		fail(r, fd == -ENOSYS ? FIX_NO_USERFAULTFD : "", "userfaultfd(2) failed with %s (%s)",
		     errname(fd), strerror(-fd));
}

static void check_user_mode_only(struct row *r)
{
	int fd = try_syscall(UFFD_USER_MODE_ONLY);

	if (fd >= 0) {
		close(fd);
		pass(r, "userfaultfd(UFFD_USER_MODE_ONLY) works for anyone: it sees faults raised in user mode only");
		return;
	}
	snprintf(r->brief, sizeof(r->brief), "%s", errname(fd));
	fail(r, fd == -EINVAL ? "Linux >= 5.11 (UFFD_USER_MODE_ONLY)" : fd == -ENOSYS ? FIX_NO_USERFAULTFD : "",
	     "userfaultfd(UFFD_USER_MODE_ONLY) failed with %s (%s)", errname(fd), strerror(-fd));
}

static void check_dev(const struct sysinfo *si, struct row *r)
{
	int dev, fd;

	if (!si->dev_present) {
		snprintf(r->brief, sizeof(r->brief), "absent");
		fail(r, FIX_DEV_MISSING, "there is no /dev/userfaultfd");
		return;
	}
	snprintf(r->brief, sizeof(r->brief), "%s %s:%s", si->dev_mode, si->dev_owner, si->dev_group);
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0) {
		int err = errno;

		snprintf(r->brief + strlen(r->brief), sizeof(r->brief) - strlen(r->brief),
			 ", open: %s", errname(err));
		fail(r, err == EACCES || err == EPERM ? FIX_DEV_ACCESS : "",
		     "opening /dev/userfaultfd for reading and writing failed with %s (%s)",
		     errname(err), strerror(err));
		return;
	}
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		fail(r, "", "ioctl(USERFAULTFD_IOC_NEW) on /dev/userfaultfd failed with %s (%s)",
		     errname(errno), strerror(errno));
	} else {
		close(fd);
		pass(r, "USERFAULTFD_IOC_NEW on /dev/userfaultfd returned a userfaultfd (file permissions only; the sysctl does not apply)");
	}
	close(dev);
}

static void check_library(struct sysinfo *si, struct row *r)
{
	struct uffd_opts o = { .size = sizeof(o), .want_features = UFFD_FEATURES_DEFAULT,
			       .flags = UFFD_OPEN_USER_MODE_ONLY };
	struct uffd *u = NULL;
	char why[512];
	int err = uffd_open(&u, NULL);

	si->full_open = si->any_open = !err;
	if (!err) {
		pass(r, "uffd_open(NULL) opened a userfaultfd with features 0x%llx",
		     (unsigned long long)uffd_features(u));
		uffd_close(u);
		return;
	}
	snprintf(why, sizeof(why), "%s", uffd_last_error());
	snprintf(r->brief, sizeof(r->brief), "%s", errname(err));
	si->any_open = !uffd_open(&u, &o);
	uffd_close(u);
	fail(r, si->any_open ? FIX_LIBRARY : "apply a fix above", "uffd_open(NULL) failed: %s%s", why,
	     si->any_open ? " (with UFFD_OPEN_USER_MODE_ONLY it works)" : "");
}

void access_check(struct sysinfo *si, struct row rows[ACCESS_ROWS])
{
	check_syscall(si, &rows[ACCESS_SYSCALL]);
	check_user_mode_only(&rows[ACCESS_USER_MODE_ONLY]);
	check_dev(si, &rows[ACCESS_DEV]);
	check_library(si, &rows[ACCESS_LIBRARY]);
}
