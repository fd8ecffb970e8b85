/* SPDX-License-Identifier: MIT */
/* A tiny JSON emitter: enough for one nested object of strings, numbers and booleans. */
#include "info.h"

/* A string literal with the escapes JSON requires. */
static void quote(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", f);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* The separator, the indentation and, inside an object, the key. */
static void json_key(struct json *j, const char *key)
{
	if (j->depth > 0) {
		fputs(j->first[j->depth - 1] ? "\n" : ",\n", j->f);
		j->first[j->depth - 1] = false;
	}
	fprintf(j->f, "%*s", 2 * j->depth, "");
	if (key && j->depth > 0) {
		quote(j->f, key);
		fputs(": ", j->f);
	}
}

static void json_open(struct json *j, const char *key, char bracket)
{
	json_key(j, key);
	fputc(bracket, j->f);
	j->first[j->depth++] = true; /* nesting stays far below the 16 levels */
}

void json_begin(struct json *j, FILE *f)
{
	j->f = f;
	j->depth = 0;
	json_open(j, NULL, '{');
}

void json_end(struct json *j)
{
	json_close(j, '}');
	fputc('\n', j->f);
}

void json_object(struct json *j, const char *key)
{
	json_open(j, key, '{');
}

void json_array(struct json *j, const char *key)
{
	json_open(j, key, '[');
}

void json_close(struct json *j, char bracket)
{
	j->depth--;
	if (!j->first[j->depth])
		fprintf(j->f, "\n%*s", 2 * j->depth, "");
	fputc(bracket, j->f);
}

void json_string(struct json *j, const char *key, const char *s)
{
	json_key(j, key);
	quote(j->f, s);
}

void json_number(struct json *j, const char *key, long long v)
{
	json_key(j, key);
	fprintf(j->f, "%lld", v);
}

void json_bool(struct json *j, const char *key, bool v)
{
	json_key(j, key);
	fputs(v ? "true" : "false", j->f);
}

void json_null(struct json *j, const char *key)
{
	json_key(j, key);
	fputs("null", j->f);
}
