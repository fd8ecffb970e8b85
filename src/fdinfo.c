/* SPDX-License-Identifier: MIT */
/*
 * What the kernel says about a userfaultfd this process holds: its line
 * "API:\t<api>:<features>:<ioctls>" in /proc/self/fdinfo. The features
 * field carries a kernel-internal bit, UFFD_FEATURE_INITIALIZED (1 << 31),
 * set once UFFDIO_API succeeded; it is no feature and uffd_open_fd() refuses
 * it as an unknown bit, so it is masked here. A received fd (a Firecracker
 * VM's, a handoff's) is initialised already and UFFDIO_API cannot be called
 * on it again: this is the only way to learn its features.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define UFFD_INITIALIZED (1ull << 31)

/* What fd is, for a message: "anon_inode:[eventfd]", a path, or "unknown". */
static void fd_target(int fd, char *buf, size_t len)
{
	char path[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, buf, len - 1);
	if (n < 0)
		snprintf(buf, len, "unknown");
	else
		buf[n] = '\0';
}

int uffd__fdinfo_quiet(int fd, uint64_t *features)
{
	char path[64], line[256];
	unsigned long long api, feat = 0;
	bool found = false;
	FILE *f;

	if (fd < 0 || fcntl(fd, F_GETFD) < 0)
		return -EBADF;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? -EBADF : -errno;
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "API:\t%llx:%llx:", &api, &feat) == 2;
	fclose(f);
	if (!found)
		return -EINVAL;
	*features = feat;
	return 0;
}

int uffd__fdinfo_features(const char *c, int fd, uint64_t *features)
{
	char target[128];
	int err = uffd__fdinfo_quiet(fd, features);

	if (err == -EBADF)
		return uffd__err(-EBADF, "%s: fd %d is not open", c, fd);
	if (err == -EINVAL) {
		fd_target(fd, target, sizeof(target));
		return uffd__err(-EINVAL, "%s: fd %d is not a userfaultfd but %s", c, fd, target);
	}
	if (err)
		return uffd__err(err, "%s: cannot read /proc/self/fdinfo/%d to learn the userfaultfd's features: %s (is /proc mounted?)",
				 c, fd, strerror(-err));
	return 0;
}

UFFD_EXPORT int uffd_features_of_fd(int fd, uint64_t *features)
{
	const char *c = "uffd_features_of_fd";
	uint64_t f = 0;
	int err;

	if (!features)
		return uffd__err(-EINVAL, "%s: features is NULL", c);
	*features = 0;
	if ((err = uffd__fdinfo_features(c, fd, &f)))
		return err;
	if (!(f & UFFD_INITIALIZED))
		return uffd__err(-EINVAL, "%s: the userfaultfd %d was never initialised (no UFFDIO_API yet); its owner must initialise it, or open one with uffd_open",
				 c, fd);
	*features = f & ~UFFD_INITIALIZED;
	return 0;
}
UFFD_EXPORT_OWN(features_of_fd);
