/* SPDX-License-Identifier: MIT */
/* The per-thread sentence behind uffd_last_error(). */
#include <errno.h>
#include <sys/types.h>
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

/* ---- formatting that a signal handler may do ---- */

/*
 * vsnprintf() is not async-signal-safe (it may take locks, allocate, read
 * the locale), and the resolving calls write their sentence from SIGBUS
 * handlers too. This knows what the library's sentences use: %s %d %u %x
 * %p %c %% with the length modifiers l, ll and z. At anything else it
 * stops, rather than guess which argument comes next.
 */
struct out {
	char *buf;
	size_t size, len;
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_str(struct out *o, const char *s)
{
	for (s = s ? s : "(null)"; *s; s++)
		put(o, *s);
}

static void put_num(struct out *o, unsigned long long v, unsigned base, bool neg)
{
	char digits[24];
	int n = 0;

	do
		digits[n++] = "0123456789abcdef"[v % base];
	while ((v /= base));
	if (neg)
		put(o, '-');
	while (n)
		put(o, digits[--n]);
}

enum width { W_INT, W_LONG, W_LLONG, W_SIZE };

static void put_signed(struct out *o, enum width w, va_list *ap)
{
	long long v = w == W_INT ? va_arg(*ap, int) : w == W_LONG ? va_arg(*ap, long)
		    : w == W_LLONG ? va_arg(*ap, long long) : va_arg(*ap, ssize_t);

	put_num(o, v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v, 10, v < 0);
}

static void put_unsigned(struct out *o, enum width w, unsigned base, va_list *ap)
{
	unsigned long long v = w == W_INT ? va_arg(*ap, unsigned) : w == W_LONG ? va_arg(*ap, unsigned long)
			     : w == W_LLONG ? va_arg(*ap, unsigned long long) : va_arg(*ap, size_t);

	put_num(o, v, base, false);
}

/* One conversion after its '%'; returns what follows it, NULL to stop. */
static const char *convert(struct out *o, const char *p, va_list *ap)
{
	enum width w = W_INT;

	if (*p == 'z' || *p == 'l')
		w = *p++ == 'z' ? W_SIZE : W_LONG;
	if (w == W_LONG && *p == 'l') {
		w = W_LLONG;
		p++;
	}
	switch (*p) {
	case 's':
		put_str(o, va_arg(*ap, const char *));
		break;
	case 'd':
		put_signed(o, w, ap);
		break;
	case 'u':
	case 'x':
		put_unsigned(o, w, *p == 'x' ? 16 : 10, ap);
		break;
	case 'p':
		put_str(o, "0x");
		put_num(o, (uintptr_t)va_arg(*ap, void *), 16, false);
		break;
	case 'c':
		put(o, (char)va_arg(*ap, int));
		break;
	case '%':
		put(o, '%');
		break;
	default:
		return NULL;
	}
	return p + 1;
}

size_t uffd__vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };
	va_list args;

	va_copy(args, ap);
	while (fmt && *fmt) {
		if (*fmt != '%')
			put(&o, *fmt++);
		else
			fmt = convert(&o, fmt + 1, &args);
	}
	va_end(args);
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len;
}

int uffd__err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	uffd__vformat(last_error, sizeof(last_error), fmt, ap);
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
