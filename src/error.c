/* SPDX-License-Identifier: MIT */
/* The per-thread sentence behind uffd_last_error(). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define ERR_MAX 512

/* initial-exec: static TLS, so that the SIGBUS path never allocates it lazily. */
static _Thread_local char last_error[ERR_MAX] __attribute__((tls_model("initial-exec")));

UFFD_EXPORT const char *uffd_last_error(void)
{
	return last_error;
}
UFFD_EXPORT_OWN(last_error);

int uffd__err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return err;
}

int uffd__err_const(int err, const char *msg)
{
	size_t i;

	for (i = 0; i + 1 < sizeof(last_error) && msg[i]; i++)
		last_error[i] = msg[i];
	last_error[i] = '\0';
	return err;
}

const char *uffd__errname(int err)
{
	const char *name = strerrorname_np(err < 0 ? -err : err);

	return name ? name : "E?";
}

int uffd__opts_copy(void *dst, size_t known_size, const void *src,
		    size_t caller_size, const char *what)
{
	const unsigned char *tail = (const unsigned char *)src + known_size;
	size_t i;

	memset(dst, 0, known_size);
	/* Every options struct is a multiple of 8 bytes (it holds 64-bit
	 * fields), in every version: another size would cut a field in two. */
	if (caller_size < sizeof(size_t) || caller_size % 8)
		return uffd__err(-EINVAL, "%s: size is %zu; set it to sizeof(struct %s)",
				 what, caller_size, what);
	for (i = known_size; i < caller_size; i++, tail++)
		if (*tail)
			return uffd__err(-EINVAL, "%s: size %zu is larger than this libuffd knows (%zu) and the extra bytes are not zero; upgrade libuffd",
					 what, caller_size, known_size);
	memcpy(dst, src, caller_size < known_size ? caller_size : known_size);
	return 0;
}
