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
 * %p %c %%, with the flags - and 0, a width, and the length modifiers l,
 * ll and z. At anything else (a precision, a * width) it stops, rather
 * than guess which argument comes next.
 */
struct out {
	char *buf;
	size_t size, len;
};

enum length { L_INT, L_LONG, L_LLONG, L_SIZE };

struct spec {
	bool left, zero;	/* flags - and 0 */
	size_t width;
	enum length len;
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_n(struct out *o, char c, size_t n)
{
	while (n--)
		put(o, c);
}

/* sign then body, padded to the width: zeros between them with the 0 flag. */
static void put_field(struct out *o, const struct spec *sp, const char *sign,
		      const char *body, size_t len)
{
	size_t slen = strlen(sign), fill = sp->width > slen + len ? sp->width - slen - len : 0;

	if (!sp->left && !sp->zero)
		put_n(o, ' ', fill);
	while (*sign)
		put(o, *sign++);
	if (!sp->left && sp->zero)
		put_n(o, '0', fill);
	while (len--)
		put(o, *body++);
	if (sp->left)
		put_n(o, ' ', fill);
}

static void put_num(struct out *o, const struct spec *sp, const char *sign,
		    unsigned long long v, unsigned base)
{
	char digits[24];
	size_t n = sizeof(digits);

	do
		digits[--n] = "0123456789abcdef"[v % base];
	while ((v /= base));
	put_field(o, sp, sign, digits + n, sizeof(digits) - n);
}

static void put_signed(struct out *o, const struct spec *sp, va_list *ap)
{
	long long v = sp->len == L_INT ? va_arg(*ap, int) : sp->len == L_LONG ? va_arg(*ap, long)
		    : sp->len == L_LLONG ? va_arg(*ap, long long) : va_arg(*ap, ssize_t);

	put_num(o, sp, v < 0 ? "-" : "", v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v, 10);
}

static void put_unsigned(struct out *o, const struct spec *sp, unsigned base, va_list *ap)
{
	unsigned long long v = sp->len == L_INT ? va_arg(*ap, unsigned)
			     : sp->len == L_LONG ? va_arg(*ap, unsigned long)
			     : sp->len == L_LLONG ? va_arg(*ap, unsigned long long) : va_arg(*ap, size_t);

	put_num(o, sp, "", v, base);
}

/* Flags, width and length of a conversion; returns its letter's place. */
static const char *parse_spec(const char *p, struct spec *sp)
{
	*sp = (struct spec){ .len = L_INT };
	for (; *p == '-' || *p == '0'; p++)
		*(*p == '-' ? &sp->left : &sp->zero) = true;
	for (; *p >= '0' && *p <= '9' && sp->width < 4096; p++)
		sp->width = sp->width * 10 + (size_t)(*p - '0');
	if (*p == 'z' || *p == 'l')
		sp->len = *p++ == 'z' ? L_SIZE : L_LONG;
	if (sp->len == L_LONG && *p == 'l') {
		sp->len = L_LLONG;
		p++;
	}
	return p;
}

/* One conversion after its '%'; returns what follows it, NULL to stop. */
static const char *convert(struct out *o, const char *p, va_list *ap)
{
	struct spec sp;
	const char *s;
	char c;

	p = parse_spec(p, &sp);
	switch (*p) {
	case 's':
		s = va_arg(*ap, const char *);
		s = s ? s : "(null)";
		sp.zero = false;
		put_field(o, &sp, "", s, strlen(s));
		break;
	case 'd':
		put_signed(o, &sp, ap);
		break;
	case 'u':
	case 'x':
		put_unsigned(o, &sp, *p == 'x' ? 16 : 10, ap);
		break;
	case 'p':
		put_num(o, &sp, "0x", (uintptr_t)va_arg(*ap, void *), 16);
		break;
	case 'c':
		c = (char)va_arg(*ap, int);
		sp.zero = false;
		put_field(o, &sp, "", &c, 1);
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
