/* SPDX-License-Identifier: MIT */
/* uffd-serve: the summary of a serve, aligned text or one JSON object (json-c). */
#include <stdio.h>

#include <json-c/json.h>

#include "serve.h"

static const char *const end_names[] = {
	[END_VM_EXIT] = "vm-exit", [END_DETACHED] = "detached",
	[END_SIGNAL] = "signal", [END_ERROR] = "error",
};

static void print_text(const struct serve_summary *s)
{
	printf("uffd-serve summary: VM pid %d, %zu regions, %.1f MiB, ended by %s\n", (int)s->pid,
	       s->nregions, s->bytes / 1048576.0, end_names[s->end]);
	printf("  %-14s missing %llu, minor %llu, wp %llu; %llu found their read in flight\n", "faults",
	       (unsigned long long)s->faults[0], (unsigned long long)s->faults[1],
	       (unsigned long long)s->faults[2], (unsigned long long)s->inflight_hits);
	printf("  %-14s %llu of %llu present: demand %llu, replay %llu, fill %llu, zero %llu, holes %llu\n", "pages",
	       (unsigned long long)s->pages_present, (unsigned long long)s->pages_total,
	       (unsigned long long)s->pages_demand, (unsigned long long)s->pages_replay,
	       (unsigned long long)s->pages_fill, (unsigned long long)s->pages_zero,
	       (unsigned long long)s->pages_hole);
	printf("  %-14s %.1f MiB (%llu read errors)\n", "bytes read", s->bytes_read / 1048576.0,
	       (unsigned long long)s->read_errors);
	printf("  %-14s p50 %.1f us, p99 %.1f us\n", "service time", s->p50_ns / 1e3, s->p99_ns / 1e3);
	if (s->complete_ns)
		printf("  %-14s %.1f ms after the start\n", "complete", s->complete_ns / 1e6);
	else
		printf("  %-14s no (pages the VM never touched were not brought in)\n", "complete");
	printf("  %-14s %.1f ms; %llu removes, %llu recorded pages, %llu errors, %d descriptors leaked\n",
	       "served", s->served_ns / 1e6, (unsigned long long)s->removes,
	       (unsigned long long)s->pages_recorded, (unsigned long long)s->errors, s->fds_leaked);
	if (s->remote)
		printf("  %-14s %llu requests, %.1f MiB, %llu retries, %llu timeouts, %llu errors; cache: %llu hits (%.1f MiB), %llu chunks fetched\n",
		       "remote", (unsigned long long)s->rstats.requests, s->rstats.bytes / 1048576.0,
		       (unsigned long long)s->rstats.retries, (unsigned long long)s->rstats.timeouts,
		       (unsigned long long)s->rstats.errors, (unsigned long long)s->rstats.cache_hits,
		       s->rstats.cache_bytes / 1048576.0, (unsigned long long)s->rstats.cache_fills);
}

static void add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

static void print_json(const struct serve_summary *s)
{
	struct json_object *o = json_object_new_object(), *f = json_object_new_object(),
			   *p = json_object_new_object(), *lat = json_object_new_object();

	json_object_object_add(o, "pid", json_object_new_int(s->pid));
	add_u64(o, "regions", s->nregions);
	add_u64(o, "bytes", s->bytes);
	json_object_object_add(o, "end", json_object_new_string(end_names[s->end]));
	add_u64(f, "missing", s->faults[0]);
	add_u64(f, "minor", s->faults[1]);
	add_u64(f, "wp", s->faults[2]);
	json_object_object_add(o, "faults", f);
	add_u64(p, "total", s->pages_total);
	add_u64(p, "present", s->pages_present);
	add_u64(p, "demand", s->pages_demand);
	add_u64(p, "replay", s->pages_replay);
	add_u64(p, "fill", s->pages_fill);
	add_u64(p, "zero", s->pages_zero);
	add_u64(p, "hole", s->pages_hole);
	json_object_object_add(o, "pages", p);
	add_u64(o, "bytes_read", s->bytes_read);
	add_u64(o, "inflight_hits", s->inflight_hits);
	add_u64(o, "read_errors", s->read_errors);
	add_u64(lat, "p50", s->p50_ns);
	add_u64(lat, "p99", s->p99_ns);
	json_object_object_add(o, "service_ns", lat);
	json_object_object_add(o, "complete_ns", s->complete_ns ? json_object_new_uint64(s->complete_ns) : NULL);
	add_u64(o, "served_ns", s->served_ns);
	add_u64(o, "removes", s->removes);
	add_u64(o, "pages_recorded", s->pages_recorded);
	add_u64(o, "errors", s->errors);
	json_object_object_add(o, "fds_leaked", json_object_new_int(s->fds_leaked));
	if (s->remote) {	/* only for a remote snapshot: the object of a local one is as it was */
		struct json_object *r = json_object_new_object();

		add_u64(r, "requests", s->rstats.requests);
		add_u64(r, "bytes", s->rstats.bytes);
		add_u64(r, "retries", s->rstats.retries);
		add_u64(r, "timeouts", s->rstats.timeouts);
		add_u64(r, "errors", s->rstats.errors);
		add_u64(r, "cache_hits", s->rstats.cache_hits);
		add_u64(r, "cache_bytes", s->rstats.cache_bytes);
		add_u64(r, "cache_fills", s->rstats.cache_fills);
		json_object_object_add(o, "remote", r);
	}
	/* One line: with --multi every VM's summary is one line of JSON. */
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
}

void stats_print(const struct serve_summary *s, bool json)
{
	if (json)
		print_json(s);
	else
		print_text(s);
	fflush(stdout);
}
