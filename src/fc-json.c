/* SPDX-License-Identifier: MIT */
/*
 * The JSON of Firecracker's handshake, and nothing more: an array of
 * objects whose known members are unsigned integers. A strict parser of
 * RFC 8259 syntax (other members' values of any type are skipped, nested up
 * to DEPTH_MAX) so that the library needs no JSON library: the format is
 * small, fixed, and comes from another process, so every byte is checked.
 * The bytes may end before the value does (the message arrives in parts):
 * that is -EAGAIN, and the caller reads more.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fc-internal.h"

#define DEPTH_MAX 16
#define KEY_MAX 64

struct parser {
	const char *c;		/* the caller's name, for messages */
	const char *s;
	size_t n, i;
	unsigned max;
};

enum key { K_ADDR, K_SIZE, K_OFFSET, K_PS, K_PS_KIB, K_OTHER };
static const char *const key_names[] = { "base_host_virt_addr", "size", "offset", "page_size", "page_size_kib" };

static int more(void)
{
	return -EAGAIN;	/* the bytes so far are a prefix of a value: read more */
}

static int bad(struct parser *p, const char *what)
{
	return uffd__err(-EPROTO, "%s: the VM's message is not valid JSON: %s at byte %zu", p->c, what, p->i);
}

static void ws(struct parser *p)
{
	while (p->i < p->n && strchr(" \t\r\n", p->s[p->i]) && p->s[p->i])
		p->i++;
}

/* The next byte, after white space: -EAGAIN at the end. */
static int peek(struct parser *p)
{
	ws(p);
	return p->i < p->n ? (unsigned char)p->s[p->i] : more();
}

static int hexval(char ch)
{
	return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 :
	       ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* A string at p->i (its opening quote); its ASCII into out (others as '?'), cut at cap - 1. */
static int string(struct parser *p, char *out, size_t cap)
{
	size_t o = 0;

	p->i++;
	for (;;) {
		unsigned char ch;
		char put;

		if (p->i >= p->n)
			return more();
		ch = (unsigned char)p->s[p->i++];
		if (ch == '"')
			break;
		if (ch < 0x20)
			return bad(p, "a control character in a string");
		put = ch < 0x80 ? (char)ch : '?';
		if (ch == '\\') {
			if (p->i >= p->n)
				return more();
			ch = (unsigned char)p->s[p->i++];
			if (ch == 'u') {
				if (p->i + 4 > p->n)
					return more();
				for (int k = 0; k < 4; k++)
					if (hexval(p->s[p->i + k]) < 0)
						return bad(p, "a bad \\u escape");
				p->i += 4;
				put = '?';
			} else if (!strchr("\"\\/bfnrt", ch) || !ch) {
				return bad(p, "a bad escape in a string");
			} else {
				put = ch == 'b' ? '\b' : ch == 'f' ? '\f' : ch == 'n' ? '\n' : ch == 'r' ? '\r' :
				      ch == 't' ? '\t' : (char)ch;
			}
		}
		if (out && o + 1 < cap)
			out[o++] = put;
	}
	if (out)
		out[o] = '\0';
	return 0;
}

static bool digit(const struct parser *p)
{
	return p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9';
}

/* Digits at p->i, at least one: 0, -EAGAIN at the end, or a syntax error. */
static int digits(struct parser *p)
{
	if (!digit(p))
		return p->i >= p->n ? more() : bad(p, "a number without digits");
	while (digit(p))
		p->i++;
	return p->i >= p->n ? more() : 0;	/* a number at the end may go on */
}

/* A number at p->i; *uint is set when it is an unsigned integer that fits in 64 bits, in *v. */
static int number(struct parser *p, bool *uint, uint64_t *v)
{
	size_t start = p->i;
	bool neg = p->s[p->i] == '-', whole;
	int err;

	p->i += neg;
	if (p->i + 1 < p->n && p->s[p->i] == '0' && p->s[p->i + 1] >= '0' && p->s[p->i + 1] <= '9')
		return bad(p, "a number with a leading zero");
	if ((err = digits(p)))
		return err;
	whole = true;
	if (p->s[p->i] == '.') {
		p->i++;
		whole = false;
		if ((err = digits(p)))
			return err;
	}
	if (p->s[p->i] == 'e' || p->s[p->i] == 'E') {
		p->i++;
		whole = false;
		if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-'))
			p->i++;
		if ((err = digits(p)))
			return err;
	}
	*uint = !neg && whole;
	*v = 0;
	for (size_t k = start; *uint && k < p->i; k++) {
		unsigned d = (unsigned)(p->s[k] - '0');

		if (*v > (UINT64_MAX - d) / 10)
			*uint = false;	/* above UINT64_MAX */
		else
			*v = *v * 10 + d;
	}
	return 0;
}

static int literal(struct parser *p, const char *word)
{
	size_t len = strlen(word), have = p->n - p->i < len ? p->n - p->i : len;

	if (memcmp(p->s + p->i, word, have))
		return bad(p, "an unexpected character");
	if (have < len)
		return more();
	p->i += len;
	return 0;
}

static int value(struct parser *p, unsigned depth);

/* An array or object at p->i (its opening bracket), skipped. */
static int container(struct parser *p, unsigned depth)
{
	bool obj = p->s[p->i] == '{';
	char close = obj ? '}' : ']';
	int ch, err;

	if (depth >= DEPTH_MAX)
		return bad(p, "values nested too deep");
	p->i++;
	if ((ch = peek(p)) < 0)
		return ch;
	if (ch == close) {
		p->i++;
		return 0;
	}
	for (;;) {
		if (obj) {
			if ((ch = peek(p)) < 0)
				return ch;
			if (ch != '"')
				return bad(p, "an object member without a string name");
			if ((err = string(p, NULL, 0)))
				return err;
			if ((ch = peek(p)) < 0)
				return ch;
			if (ch != ':')
				return bad(p, "a member name without ':'");
			p->i++;
		}
		if ((err = value(p, depth + 1)))
			return err;
		if ((ch = peek(p)) < 0)
			return ch;
		p->i++;
		if (ch == close)
			return 0;
		if (ch != ',')
			return bad(p, obj ? "no ',' or '}' after a member" : "no ',' or ']' after an element");
	}
}

/* Any value at p->i, skipped. */
static int value(struct parser *p, unsigned depth)
{
	bool uint;
	uint64_t v;
	int ch = peek(p);

	if (ch < 0)
		return ch;
	if (ch == '{' || ch == '[')
		return container(p, depth);
	if (ch == '"')
		return string(p, NULL, 0);
	if (ch == '-' || (ch >= '0' && ch <= '9'))
		return number(p, &uint, &v);
	if (ch == 't' || ch == 'f' || ch == 'n')
		return literal(p, ch == 't' ? "true" : ch == 'f' ? "false" : "null");
	return bad(p, "an unexpected character");
}

static enum key key_of(const char *name)
{
	for (int k = 0; k < K_OTHER; k++)
		if (!strcmp(name, key_names[k]))
			return (enum key)k;
	return K_OTHER;
}

/* The bytes [start, p->i) for a message, shortened: the error formatter has no precision. */
static const char *quote(const struct parser *p, size_t start, char *buf, size_t cap)
{
	size_t len = p->i - start < cap - 1 ? p->i - start : cap - 1;

	memcpy(buf, p->s + start, len);
	buf[len] = '\0';
	return buf;
}

/* A known member's value: an unsigned integer, else the sentence quotes what it is. */
static int member_u64(struct parser *p, size_t row, enum key k, uint64_t *v)
{
	size_t start;
	bool uint = false;
	char text[41];
	int err, ch = peek(p);

	if (ch < 0)
		return ch;
	start = p->i;
	err = ch == '-' || (ch >= '0' && ch <= '9') ? number(p, &uint, v) : value(p, 1);
	if (err)
		return err;
	if (!uint)
		return uffd__err(-EPROTO, "%s: region %zu: \"%s\" is %s, not an unsigned integer", p->c, row,
				 key_names[k], quote(p, start, text, sizeof(text)));
	return 0;
}

/* One object of the array into *r; which known members it had in *seen. */
static int region(struct parser *p, size_t row, struct uffd_fc_region *r, unsigned *seen, uint64_t *kib)
{
	char name[KEY_MAX];
	int ch, err;

	if ((ch = peek(p)) < 0)
		return ch;
	if (ch != '{') {
		size_t start = p->i;
		char text[41];

		if ((err = value(p, 1)))
			return err;
		return uffd__err(-EPROTO, "%s: region %zu is %s, not an object", p->c, row,
				 quote(p, start, text, sizeof(text)));
	}
	p->i++;
	*seen = 0;
	if ((ch = peek(p)) < 0)
		return ch;
	if (ch == '}') {
		p->i++;
		return 0;
	}
	for (;;) {
		uint64_t *dst[] = { &r->owner_addr, &r->length, &r->offset, &r->page_size, kib };
		enum key k;

		if ((ch = peek(p)) < 0)
			return ch;
		if (ch != '"')
			return bad(p, "an object member without a string name");
		if ((err = string(p, name, sizeof(name))))
			return err;
		if ((ch = peek(p)) < 0)
			return ch;
		if (ch != ':')
			return bad(p, "a member name without ':'");
		p->i++;
		k = key_of(name);
		if (k != K_OTHER && (*seen & (1u << k)))
			return uffd__err(-EPROTO, "%s: region %zu has \"%s\" twice", p->c, row, key_names[k]);
		if (k != K_OTHER)
			*seen |= 1u << k;
		if ((err = k == K_OTHER ? value(p, 2) : member_u64(p, row, k, dst[k])))
			return err;
		if ((ch = peek(p)) < 0)
			return ch;
		p->i++;
		if (ch == '}')
			return 0;
		if (ch != ',')
			return bad(p, "no ',' or '}' after a member");
	}
}

/* The members a region must have; page_size or page_size_kib, equal when both. */
static int complete(const struct parser *p, size_t row, struct uffd_fc_region *r, unsigned seen, uint64_t kib)
{
	for (int k = K_ADDR; k <= K_OFFSET; k++)
		if (!(seen & (1u << k)))
			return uffd__err(-EPROTO, "%s: region %zu has no \"%s\"", p->c, row, key_names[k]);
	if (!(seen & (1u << K_PS | 1u << K_PS_KIB)))
		return uffd__err(-EPROTO, "%s: region %zu has neither \"page_size\" nor \"page_size_kib\"", p->c, row);
	if ((seen & 1u << K_PS) && (seen & 1u << K_PS_KIB) && kib != r->page_size)
		return uffd__err(-EPROTO, "%s: region %zu: \"page_size\" %llu and \"page_size_kib\" %llu differ (both hold bytes)",
				 p->c, row, (unsigned long long)r->page_size, (unsigned long long)kib);
	if (!(seen & 1u << K_PS))
		r->page_size = kib;
	return 0;
}

static int top_not_array(struct parser *p, int ch)
{
	int err = value(p, 0);

	if (err)
		return err;
	if (ch == 'n')
		return uffd__err(-EPROTO, "%s: the VM's message is JSON null, not an array of regions", p->c);
	return uffd__err(-EPROTO, "%s: the VM's message is a JSON %s, not an array of regions", p->c,
			 ch == '{' ? "object" : ch == '"' ? "string" : ch == 't' || ch == 'f' ? "boolean" : "number");
}

static int array(struct parser *p, struct uffd_fc_region **out, size_t *n)
{
	size_t cap = 0;
	int ch, err;

	p->i++;
	for (;;) {
		struct uffd_fc_region r = { 0 };
		unsigned seen = 0;
		uint64_t kib = 0;

		if ((ch = peek(p)) < 0)
			return ch;
		if (ch == ']' && !*n)
			break;
		if (*n == p->max)
			return uffd__err(-EPROTO, "%s: the VM's message has more than %u regions; 1 to %u are accepted",
					 p->c, p->max, p->max);
		if ((err = region(p, *n, &r, &seen, &kib)) || (err = complete(p, *n, &r, seen, kib)))
			return err;
		if (*n == cap) {
			struct uffd_fc_region *v = realloc(*out, (cap = cap ? 2 * cap : 8) * sizeof(*v));

			if (!v)
				return uffd__err(-ENOMEM, "%s: out of memory", p->c);
			*out = v;
		}
		(*out)[(*n)++] = r;
		if ((ch = peek(p)) < 0)
			return ch;
		if (ch == ']')
			break;
		if (ch != ',')
			return bad(p, "no ',' or ']' after a region");
		p->i++;
	}
	p->i++;
	return 0;
}

int uffd__fc_parse(const char *c, const char *buf, size_t len, unsigned max, struct uffd_fc_region **out,
		   size_t *n)
{
	struct parser p = { .c = c, .s = buf, .n = len, .max = max };
	int ch, err;

	*out = NULL;
	*n = 0;
	if ((ch = peek(&p)) < 0)
		return ch;
	err = ch == '[' ? array(&p, out, n) : top_not_array(&p, ch);
	if (!err && !*n)
		err = uffd__err(-EPROTO, "%s: the VM's message has 0 regions; 1 to %u are accepted", c, max);
	ws(&p);
	if (!err && p.i < len)
		err = uffd__err(-EPROTO, "%s: the VM's message has %zu bytes after its JSON value (at byte %zu); Firecracker sends one JSON array",
				c, len - p.i, p.i);
	if (err) {
		free(*out);
		*out = NULL;
		*n = 0;
	}
	return err;
}
