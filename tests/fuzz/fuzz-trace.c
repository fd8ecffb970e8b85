/* SPDX-License-Identifier: MIT */
/*
 * Fuzzes the loading of working-set traces (libuffd-trace(5)), files that
 * outlive the process that wrote them and may be damaged or made up. The
 * input is a trace file after a first byte: bit 0 recomputes the file's
 * checksum (so that inputs reach the checks behind it), bit 1 chooses the
 * regions, bit 2 records some pages before the merge. Whatever
 * trace__merge_buf() makes of it, it must not crash or leak; a refusal
 * leaves the trace as it was, with a sentence; what it accepts is
 * consistent, merges again to the same pages, and sorts by rank.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "crc32c.h"
#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FILE 8192

static const struct trace_region regions[2][2] = {
	{ { 40 << 12, 1 << 12 }, { 3 << 21, 1 << 21 } },	/* one bitmap word each */
	{ { 130 << 12, 1 << 12 }, { 1 << 16, 1 << 16 } },	/* three words, then one page */
};

static size_t bits(const struct trace *t)
{
	size_t n = 0;

	for (unsigned r = 0; r < t->nregions; r++)
		for (uint64_t p = 0; p < t->regions[r].length / t->regions[r].page_size; p++)
			n += trace__has(t, r, p);
	return n;
}

static void check_accepted(struct trace *t, const uint8_t *file, size_t len)
{
	size_t n = t->n;

	if (n > t->cap || bits(t) != n)
		abort();
	for (size_t i = 0; i < n; i++)
		if (!trace__has(t, t->order[i].region, t->order[i].page) ||
		    !(t->rank[i] >= 0 && t->rank[i] < 1))
			abort();
	if (trace__merge_buf(t, file, len) || t->n != n)	/* a union: nothing new */
		abort();
	trace__sort(t);
	for (size_t i = 1; i < n; i++)
		if (t->rank[i - 1] > t->rank[i])
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t file[MAX_FILE];
	struct trace t;
	size_t len, before;
	int err;

	if (!size || size - 1 > MAX_FILE)
		return 0;
	len = size - 1;
	memcpy(file, data + 1, len);
	if ((data[0] & 1) && len >= 4) {
		uint32_t c = uffd__crc32c(file, len - 4);

		for (int i = 0; i < 4; i++)
			file[len - 4 + i] = (uint8_t)(c >> (8 * i));
	}
	if (trace__init(&t, regions[data[0] >> 1 & 1], 2, 0))
		abort();
	if (data[0] & 4)
		for (uint64_t p = 0; p < 5; p++)
			trace__add(&t, p & 1, p);
	before = t.n;
	err = trace__merge_buf(&t, file, len);
	if (!err)
		check_accepted(&t, file, len);
	else if ((err != -EBADMSG && err != -EPROTONOSUPPORT && err != -EINVAL) ||
		 t.n != before || bits(&t) != before || !*uffd_last_error())
		abort();
	trace__free(&t);
	return 0;
}
