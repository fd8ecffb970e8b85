/* SPDX-License-Identifier: MIT */
/*
 * A program as an application writes it against an installed or vendored
 * libuffd: only <uffd.h> and the library. Built by the packaging checks
 * (the Debian autopkgtest with pkg-config, a meson parent project with
 * libuffd as a subproject, an install into a temporary prefix).
 *
 * It reports the header's version and the file the library was loaded from,
 * checks an argument error and its sentence, then fills two pages of a
 * registered anonymous mapping (UFFDIO_COPY, UFFDIO_ZEROPAGE) and reads
 * them back. Exit 0 when all of it worked, 77 when no userfaultfd can be
 * opened here (the reason is printed), 1 on a failure.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <uffd.h>

static int fail(const char *what, int err)
{
	printf("FAIL: %s: %s (%s)\n", what, strerror(-err), uffd_last_error());
	return 1;
}

/* Copy a pattern into page 0 and a zero page into page 1, then read both. */
static int fill_and_check(struct uffd *u, unsigned char *mem, size_t ps)
{
	unsigned char src[65536];
	size_t done = 0;
	int err;

	if (ps > sizeof(src))
		return fail("page size larger than the test buffer", -EINVAL);
	for (size_t i = 0; i < ps; i++)
		src[i] = (unsigned char)(i * 7 + 1);
	/* Both pages mapped in full before any read: a read of a missing page would wait forever. */
	err = uffd_copy(u, mem, src, ps, 0, &done);
	if (err < 0 || done != ps)
		return fail("uffd_copy", err < 0 ? err : -EIO);
	err = uffd_zeropage(u, mem + ps, ps, 0, &done);
	if (err < 0 || done != ps)
		return fail("uffd_zeropage", err < 0 ? err : -EIO);
	if (memcmp(mem, src, ps) != 0)
		return fail("page 0 does not hold the copied bytes", -EIO);
	for (size_t i = 0; i < ps; i++)
		if (mem[ps + i] != 0)
			return fail("page 1 is not zero", -EIO);
	printf("copied and zero-filled 2 pages of %zu bytes, read back\n", ps);
	return 0;
}

int main(void)
{
	struct uffd_opts o = { .size = sizeof(o), .want_features = UFFD_FEATURES_DEFAULT,
			       .flags = UFFD_OPEN_USER_MODE_ONLY };
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	struct uffd *u = NULL;
	unsigned char *mem;
	Dl_info dl;
	int err, rc;

	printf("uffd.h version %d.%d.%d\n", LIBUFFD_VERSION_MAJOR, LIBUFFD_VERSION_MINOR,
	       LIBUFFD_VERSION_PATCH);
	if (dladdr((void *)uffd_open, &dl) && dl.dli_fname)
		printf("libuffd from %s\n", dl.dli_fname);
	if (strcmp(uffd_feature_name(UFFD_FEATURE_MINOR_SHMEM), "MINOR_SHMEM") != 0)
		return fail("uffd_feature_name(UFFD_FEATURE_MINOR_SHMEM)", -EINVAL);
	err = uffd_open(NULL, NULL);
	if (err != -EINVAL || uffd_last_error()[0] == '\0')
		return fail("uffd_open(NULL) must fail with EINVAL and a sentence", err);

	err = uffd_open(&u, &o);
	if (err == -EPERM || err == -EACCES || err == -ENOSYS) {
		printf("SKIP: no userfaultfd here: %s\n", uffd_last_error());
		return 77;
	}
	if (err < 0)
		return fail("uffd_open", err);
	mem = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		uffd_close(u);
		return fail("mmap", -errno);
	}
	err = uffd_register(u, mem, 2 * ps, UFFDIO_REGISTER_MODE_MISSING, NULL);
	rc = err < 0 ? fail("uffd_register", err) : fill_and_check(u, mem, ps);
	munmap(mem, 2 * ps);
	uffd_close(u);
	return rc;
}
