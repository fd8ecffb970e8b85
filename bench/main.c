/* SPDX-License-Identifier: MIT */
/*
 * uffd-bench: options, the repetition scheme (libuffd and baseline
 * interleaved, order alternating, median of each), and the output: a table,
 * or one JSON object per line with --json.
 *
 * usage: uffd-bench [--pages N] [--reps N] [--bulk-mib N] [--around-mib N]
 *                   [--spin-us N] [--only METRIC[,METRIC...]] [--json]
 *                   [--placement split|same|free] [--side libuffd|baseline]
 * Exit status: 0; 1 when a metric could not run or a page read wrong.
 */
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define MAX_REPS 101

static const struct {
	const char *name;
	int (*fn)(const struct bench_opts *o);
} metrics[] = {
	{ "floor_minor", metric_floor },
	{ "floor_signal", metric_floor_signal },
	{ "minor_rt_1t", metric_minor_rt_1t },
	{ "minor_rt_1t_spin", metric_minor_rt_1t_spin },
	{ "minor_sigbus", metric_minor_sigbus },
	{ "minor_mt", metric_minor_mt },
	{ "wp_rt_1t", metric_wp_rt_1t },
	{ "missing_copy_1t", metric_missing_copy_1t },
	{ "populate", metric_populate },
	{ "continue_bulk", metric_continue_bulk },
	{ "fault_around", metric_fault_around },
	{ "dirty_scan", metric_dirty_scan },
};
#define NMETRICS (sizeof(metrics) / sizeof(metrics[0]))

static unsigned errors;

/* ---- repetitions ---- */

int bench_pair(const struct bench_opts *o, void *lib_ctx, side_fn lib,
	       void *base_ctx, side_fn base, double *lib_med, double *base_med,
	       struct lat *lib_lat, struct lat *base_lat)
{
	double lv[MAX_REPS], bv[MAX_REPS];

	if (o->side == 'l') {	/* profiling one side: the other is not run */
		*base_med = NAN;
		return bench_single(o, lib_ctx, lib, lib_med, lib_lat);
	}
	if (o->side == 'b') {
		*lib_med = NAN;
		return bench_single(o, base_ctx, base, base_med, base_lat);
	}
	for (unsigned r = 0; r < o->reps; r++) {
		/* Alternate who goes first, so that drift and warm caches hit both. */
		if (r % 2 == 0) {
			lv[r] = lib(lib_ctx, r, lib_lat);
			bv[r] = base(base_ctx, r, base_lat);
		} else {
			bv[r] = base(base_ctx, r, base_lat);
			lv[r] = lib(lib_ctx, r, lib_lat);
		}
		if (lv[r] < 0 || bv[r] < 0)
			return -1;
	}
	*lib_med = median(lv, o->reps);
	*base_med = median(bv, o->reps);
	return 0;
}

int bench_single(const struct bench_opts *o, void *ctx, side_fn fn, double *med,
		 struct lat *lat)
{
	double v[MAX_REPS];

	for (unsigned r = 0; r < o->reps; r++)
		if ((v[r] = fn(ctx, r, lat)) < 0)
			return -1;
	*med = median(v, o->reps);
	return 0;
}

/* ---- output ---- */

static void json_num(const char *key, double v)
{
	if (isnan(v))
		printf(",\"%s\":null", key);
	else
		printf(",\"%s\":%.6g", key, v);
}

static void row_json(const struct row *r, double ratio)
{
	printf("{\"metric\":\"%s\"", r->metric);
	json_num("libuffd", r->floor_row ? NAN : r->lib);
	json_num("baseline", r->floor_row ? NAN : r->base);
	printf(",\"unit\":\"%s\"", r->unit);
	json_num("ratio", ratio);
	json_num("target", r->target > 0 ? r->target : NAN);
	if (r->target <= 0 || isnan(ratio))
		printf(",\"met\":null");
	else
		printf(",\"met\":%s", ratio <= r->target ? "true" : "false");
	if (r->floor_row)
		json_num("floor", r->lib);
	if (r->lib_lat && r->lib_lat->n) {
		json_num(r->floor_row ? "p50" : "libuffd_p50", lat_pct(r->lib_lat, 50));
		json_num(r->floor_row ? "p99" : "libuffd_p99", lat_pct(r->lib_lat, 99));
	}
	if (r->base_lat && r->base_lat->n) {
		json_num("baseline_p50", lat_pct(r->base_lat, 50));
		json_num("baseline_p99", lat_pct(r->base_lat, 99));
	}
	printf("}\n");
}

static void cell(double v)
{
	if (isnan(v))
		printf("%10s", "-");
	else
		printf("%10.3f", v);
}

static void lat_cell(struct lat *l)
{
	char buf[32];

	if (!l || !l->n) {
		printf("  %-15s", "-");
		return;
	}
	snprintf(buf, sizeof(buf), "%.1f/%.1f", lat_pct(l, 50), lat_pct(l, 99));
	printf("  %-15s", buf);
}

static void row_table(const struct row *r, double ratio)
{
	printf("%-22s", r->metric);
	cell(r->lib);
	cell(r->base);
	printf("  %-9s", r->unit);
	cell(ratio);
	if (r->target <= 0)
		printf("  %-7s %-4s", "-", "-");
	else
		printf("  <=%-5.2f %-4s", r->target, isnan(ratio) ? "-" : ratio <= r->target ? "yes" : "NO");
	lat_cell(r->lib_lat);
	lat_cell(r->base_lat);
	if (r->note)
		printf("  %s", r->note);
	printf("\n");
	fflush(stdout);
}

void bench_row(const struct bench_opts *o, const struct row *r)
{
	double ratio = r->floor_row || isnan(r->lib) || isnan(r->base) ? NAN : r->lib / r->base;

	if (o->json)
		row_json(r, ratio);
	else
		row_table(r, ratio);
	fflush(stdout);
}

void bench_error(const struct bench_opts *o, const char *metric, const char *fmt, ...)
{
	va_list ap;

	(void)o;
	errors++;
	fprintf(stderr, "uffd-bench: %s: ", metric);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s%s\n", *uffd_last_error() ? ": " : "", uffd_last_error());
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f, "usage: uffd-bench [--pages N] [--reps N] [--bulk-mib N] [--around-mib N]\n"
		"                  [--spin-us N] [--only METRIC[,METRIC...]] [--json]\n"
		"                  [--placement split|same|free] [--side libuffd|baseline]\n"
		"  --pages N       pages per fault metric and populate (default 16384)\n"
		"  --reps N        repetitions per side, median reported (default 5)\n"
		"  --bulk-mib N    continue_bulk and dirty_scan range (default 1024)\n"
		"  --around-mib N  fault_around range (default 256)\n"
		"  --spin-us N     spin_us of minor_rt_1t_spin and minor_mt (default 50)\n"
		"  --placement P   split (default): handler threads on the last CPU, faulting\n"
		"                  threads on the others; same: all on CPU 0; free: unpinned\n"
		"  --side S        run one side only, for profiling (no ratio)\n"
		"metrics:");
	for (size_t i = 0; i < NMETRICS; i++)
		fprintf(f, " %s", metrics[i].name);
	fprintf(f, "\n");
}

static bool known(const char *list)
{
	return list_known("uffd-bench", "metric", list, &metrics[0].name, NMETRICS, sizeof(metrics[0]));
}

static bool selected(const struct bench_opts *o, const char *name)
{
	return !o->only || list_has(o->only, name);
}

static int parse(int argc, char **argv, struct bench_opts *o)
{
	static const struct option lo[] = {
		{ "pages", required_argument, NULL, 'p' },
		{ "reps", required_argument, NULL, 'r' },
		{ "bulk-mib", required_argument, NULL, 'b' },
		{ "around-mib", required_argument, NULL, 'a' },
		{ "spin-us", required_argument, NULL, 's' },
		{ "only", required_argument, NULL, 'o' },
		{ "json", no_argument, NULL, 'j' },
		{ "side", required_argument, NULL, 'S' },
		{ "placement", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	size_t v;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		bool ok = true;

		switch (c) {
		case 'p': ok = parse_size(optarg, 64, 1ul << 22, &o->pages); break;
		case 'r': ok = parse_size(optarg, 1, MAX_REPS, &v); o->reps = (unsigned)v; break;
		case 'b': ok = parse_size(optarg, 1, 16384, &o->bulk_mib); break;
		case 'a': ok = parse_size(optarg, 1, 16384, &o->around_mib); break;
		case 's': ok = parse_size(optarg, 0, 1000000, &v); o->spin_us = (unsigned)v; break;
		case 'o': ok = known(optarg); o->only = optarg; break;
		case 'j': o->json = true; break;
		case 'P': ok = place_set(optarg) == 0; o->placement = optarg; break;
		case 'S':
			ok = !strcmp(optarg, "libuffd") || !strcmp(optarg, "baseline");
			o->side = optarg[0];
			break;
		case 'h': usage(stdout); exit(0);
		default: ok = false;
		}
		if (!ok) {
			if (c != 'o' && c != '?')
				fprintf(stderr, "uffd-bench: bad value '%s'\n", optarg);
			usage(stderr);
			return -1;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct bench_opts o = { .pages = 16384, .reps = 5, .bulk_mib = 1024, .around_mib = 256,
				.spin_us = 50, .placement = "split" };
	double t0 = now_us();

	if (parse(argc, argv, &o))
		return 2;
	place(false);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!o.json)
		printf("%-22s%10s%10s  %-9s%10s  %-7s %-4s  %-15s  %-15s\n", "metric", "libuffd",
		       "baseline", "unit", "ratio", "target", "met", "lib p50/p99 us", "base p50/p99 us");
	for (size_t i = 0; i < NMETRICS; i++) {
		if (!selected(&o, metrics[i].name))
			continue;
		watchdog(metrics[i].name, 300);
		if (metrics[i].fn(&o))
			errors++;
	}
	alarm(0);
	if (!o.json)
		printf("# %u repetitions per side, median; %zu pages per fault metric; placement %s; %.1f s\n",
		       o.reps, o.pages, o.placement, (now_us() - t0) / 1e6);
	if (bench_failures)
		fprintf(stderr, "uffd-bench: %u wrong result(s): the figures above are not valid\n",
			bench_failures);
	return errors || bench_failures ? 1 : 0;
}
