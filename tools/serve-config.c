/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve --config FILE: the options of one socket in a file, so that a
 * unit (uffd-serve@NAME.service) names its snapshot, traces and policies
 * in /etc/uffd-serve/NAME.conf. One option a line, its long name without
 * the dashes, then "= value" when it takes one:
 *
 *   # /etc/uffd-serve/vm-small.conf
 *   memory = /var/lib/vms/small.mem
 *   replay = /var/lib/vms/small.trace
 *   fill
 *   socket-owner = 10123:10123
 *
 * The file's options come before those of the command line, which can add
 * to or override them; the command line checks them all (serve-args.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

#define LINE_MAX_ 4096
#define ARGS_MAX 256

static char **cfg;	/* the argv made, and */
static int cfg_opts;	/* how many of its words after argv[0] were allocated */

void config_free(void)
{
	for (int i = 1; cfg && i <= cfg_opts; i++)
		free(cfg[i]);
	free(cfg);
	cfg = NULL;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && strchr(" \t\r\n", e[-1]))
		*--e = '\0';
	return s;
}

/* One line into "--key" or "--key=value" (allocated), or NULL for none; false on a bad line. */
static bool option_of(char *line, char **out)
{
	char *s = trim(line), *eq, *key, *val = NULL, *arg;
	size_t len;

	*out = NULL;
	if (!*s || *s == '#')
		return true;
	if ((eq = strchr(s, '='))) {
		*eq = '\0';
		val = trim(eq + 1);
	}
	key = trim(s);
	if (!*key || *key == '-' || strcspn(key, " \t") != strlen(key) || (val && !*val))
		return false;
	len = strlen(key) + (val ? strlen(val) + 1 : 0) + 3;
	if (!(arg = malloc(len)))
		return false;
	snprintf(arg, len, val ? "--%s=%s" : "--%s", key, val ? val : "");
	*out = arg;
	return true;
}

/* The path of --config FILE or --config=FILE in argv, and where it is (and its length in words). */
static const char *find_config(int argc, char **argv, int *at, int *words)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--"))
			break;
		if (!strncmp(argv[i], "--config=", 9)) {
			*at = i;
			*words = 1;
			return argv[i] + 9;
		}
		if (!strcmp(argv[i], "--config") && i + 1 < argc) {
			*at = i;
			*words = 2;
			return argv[i + 1];
		}
	}
	return NULL;
}

char **config_argv(int *argc, char **argv)
{
	char line[LINE_MAX_], **v;
	const char *path;
	int at = 0, words = 0, n = 0, lineno = 0;
	FILE *f;

	if (!(path = find_config(*argc, argv, &at, &words)))
		return argv;
	if (!(f = fopen(path, "re"))) {
		serve_fail(EXIT_USAGE, "--config %s: %s", path, strerror(errno));
		exit(EXIT_USAGE);
	}
	if (!(v = calloc(ARGS_MAX + (size_t)*argc + 1, sizeof(*v))))
		exit(serve_fail(EXIT_USAGE, "out of memory"));
	v[n++] = argv[0];
	while (fgets(line, sizeof(line), f)) {
		char *opt;

		lineno++;
		if (n == ARGS_MAX || !option_of(line, &opt)) {
			serve_fail(EXIT_USAGE, "--config %s, line %d: %s", path, lineno,
				   n == ARGS_MAX ? "too many options" : "not \"option\" or \"option = value\"");
			exit(EXIT_USAGE);
		}
		if (opt)
			v[n++] = opt;
	}
	fclose(f);
	cfg = v;
	cfg_opts = n - 1;
	for (int i = 1; i < *argc; i++)
		if (i < at || i >= at + words)
			v[n++] = argv[i];
	*argc = n;
	return v;	/* until config_free(): the options point into it */
}
