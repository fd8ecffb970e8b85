/* SPDX-License-Identifier: MIT */
/*
 * Working-set traces: recording into preallocated room, the file format
 * of libuffd-trace(5) (written atomically, read with every check) and the
 * merging of several traces into one prefetch order.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "crc32c.h"
#include "trace.h"

#define MAGIC "UFFDTRC"		/* with its NUL: 8 bytes */
#define VERSION 1u
#define HEADER_SIZE 32u		/* magic, version, nregions, count, flags */
#define REGION_SIZE 16u		/* length, page_size */
#define ENTRY_SIZE 16u		/* region, reserved, page */
#define CRC_SIZE 4u
#define FLAG_FULL 1u		/* the recording ran out of room */

static uint64_t pages_of(const struct trace_region *r)
{
	return r->length / r->page_size;
}

static size_t words_of(const struct trace_region *r)
{
	return (size_t)((pages_of(r) + 63) / 64);
}

static uint64_t total_pages(const struct trace *t)
{
	uint64_t n = 0;

	for (unsigned i = 0; i < t->nregions; i++)
		n += pages_of(&t->regions[i]);	/* trace__init checked the sum */
	return n;
}

/* Bytes of a file for t's regions with count pages; SIZE_MAX when too many. */
static size_t file_size(const struct trace *t, uint64_t count)
{
	size_t s = HEADER_SIZE + CRC_SIZE, order;

	for (unsigned i = 0; i < t->nregions; i++)
		s += REGION_SIZE + 8 * words_of(&t->regions[i]);	/* in memory already */
	if (__builtin_mul_overflow(count, (uint64_t)ENTRY_SIZE, &order) ||
	    __builtin_add_overflow(s, order, &s))
		return SIZE_MAX;
	return s;
}

/* ---- little-endian fields ---- */

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned bytes)
{
	uint64_t v = 0;

	while (bytes--)
		v = v << 8 | p[bytes];
	return v;
}

/* ---- recording ---- */

int trace__init(struct trace *t, const struct trace_region *regions, unsigned n,
		size_t max)
{
	uint64_t total = 0;
	bool ok;

	*t = (struct trace){ 0 };
	if (!regions || !n)
		return uffd__err(-EINVAL, "a trace needs at least one region");
	for (unsigned i = 0; i < n; i++) {
		const struct trace_region *r = &regions[i];

		if (!r->page_size || (r->page_size & (r->page_size - 1)) || !r->length ||
		    r->length % r->page_size || __builtin_add_overflow(total, pages_of(r), &total))
			return uffd__err(-EINVAL, "trace region %u: length %" PRIu64 " is not a nonzero multiple of the page size %" PRIu64 " (a power of two)",
					 i, r->length, r->page_size);
	}
	/* order, then merging's ranks and sort scratch: 32 bytes a page */
	if (total > SIZE_MAX / (2 * sizeof(double) + sizeof(*t->order)))
		return uffd__err(-ENOMEM, "a trace of %" PRIu64 " pages does not fit in memory", total);
	t->nregions = n;
	t->cap = max && max < total ? max : (size_t)total;
	t->regions = malloc(n * sizeof(*regions));
	t->seen = calloc(n, sizeof(*t->seen));
	t->order = calloc(t->cap, sizeof(*t->order));
	ok = t->regions && t->seen && t->order;
	for (unsigned i = 0; ok && i < n; i++)
		ok = (t->seen[i] = calloc(words_of(&regions[i]), sizeof(uint64_t)));
	if (ok) {
		memcpy(t->regions, regions, n * sizeof(*regions));
		return 0;
	}
	trace__free(t);
	return uffd__err(-ENOMEM, "no memory for a trace of %" PRIu64 " pages", total);
}

void trace__free(struct trace *t)
{
	for (unsigned i = 0; t->seen && i < t->nregions; i++)
		free(t->seen[i]);
	free(t->seen);
	free(t->regions);
	free(t->order);
	free(t->rank);
	*t = (struct trace){ 0 };
}

static bool in_range(const struct trace *t, uint32_t region, uint64_t page)
{
	return region < t->nregions && page < pages_of(&t->regions[region]);
}

bool trace__has(const struct trace *t, uint32_t region, uint64_t page)
{
	return in_range(t, region, page) && (t->seen[region][page / 64] >> (page % 64) & 1);
}

bool trace__add(struct trace *t, uint32_t region, uint64_t page)
{
	if (t->n == t->cap || !in_range(t, region, page) || trace__has(t, region, page))
		return false;
	t->seen[region][page / 64] |= 1ull << (page % 64);
	if (t->rank)
		t->rank[t->n] = 1.0;	/* after every merged page */
	t->order[t->n++] = (struct trace_page){ region, page };
	return true;
}

bool trace__copy(struct trace *dst, const struct trace *src)
{
	uint64_t total = total_pages(dst);

	/* A copy filled to its room would save as a recording that ran out of it. */
	if (dst->nregions != src->nregions || src->n > dst->cap || (src->n == dst->cap && dst->cap < total))
		return false;
	for (unsigned i = 0; i < src->nregions; i++)
		memcpy(dst->seen[i], src->seen[i], words_of(&src->regions[i]) * sizeof(uint64_t));
	memcpy(dst->order, src->order, src->n * sizeof(*src->order));
	dst->n = src->n;
	dst->full = src->full || (src->n == src->cap && src->cap < total);
	return true;
}

/* ---- saving ---- */

/* t as a file, in a buffer to free(); NULL when out of memory. */
static uint8_t *encode(const struct trace *t, size_t *len)
{
	size_t size = file_size(t, t->n);
	uint8_t *buf = size == SIZE_MAX ? NULL : malloc(size), *p;

	if (!buf)
		return NULL;
	memcpy(buf, MAGIC, 8);
	put_le(buf + 8, VERSION, 4);
	put_le(buf + 12, t->nregions, 4);
	put_le(buf + 16, t->n, 8);
	put_le(buf + 24, t->full || (t->n == t->cap && t->cap < total_pages(t)) ? FLAG_FULL : 0, 8);
	p = buf + HEADER_SIZE;
	for (unsigned i = 0; i < t->nregions; i++, p += REGION_SIZE) {
		put_le(p, t->regions[i].length, 8);
		put_le(p + 8, t->regions[i].page_size, 8);
	}
	for (unsigned i = 0; i < t->nregions; i++)
		for (size_t w = 0; w < words_of(&t->regions[i]); w++, p += 8)
			put_le(p, t->seen[i][w], 8);
	for (size_t k = 0; k < t->n; k++, p += ENTRY_SIZE) {
		put_le(p, t->order[k].region, 4);
		put_le(p + 4, 0, 4);
		put_le(p + 8, t->order[k].page, 8);
	}
	put_le(p, uffd__crc32c(buf, (size_t)(p - buf)), 4);
	*len = size;
	return buf;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = write(fd, p, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int trace__save(const struct trace *t, const char *path)
{
	size_t len = 0, plen = path ? strlen(path) : 0;
	uint8_t *buf = NULL;
	char *tmp = NULL;
	int fd, err;

	if (!t || !t->nregions || !plen)
		return uffd__err(-EINVAL, "trace save: pass an initialised trace and a file name");
	buf = encode(t, &len);
	tmp = malloc(plen + sizeof(".XXXXXX"));
	if (!buf || !tmp) {
		err = uffd__err(-ENOMEM, "no memory to write the trace %s", path);
		goto out;
	}
	memcpy(tmp, path, plen);
	memcpy(tmp + plen, ".XXXXXX", sizeof(".XXXXXX"));
	fd = mkostemp(tmp, O_CLOEXEC);	/* O_EXCL: never someone else's file */
	if (fd < 0) {
		err = -errno;
		uffd__err(err, "cannot create a temporary file next to the trace %s (%s); check that its directory exists and is writable",
			  path, uffd__errname(err));
		goto out;
	}
	err = write_all(fd, buf, len);
	if (!err && fsync(fd))
		err = -errno;
	if (close(fd) && !err)
		err = -errno;
	if (!err && rename(tmp, path))
		err = -errno;
	if (err) {
		unlink(tmp);
		uffd__err(err, "cannot write the trace %s (%s); check the space and rights of its directory",
			  path, uffd__errname(err));
	}
out:
	free(tmp);
	free(buf);
	return err;
}

/* ---- loading ---- */

/* What is missing from a file of len bytes that needs more for count pages. */
static int truncated(const struct trace *t, size_t len, uint64_t count)
{
	size_t end = HEADER_SIZE + REGION_SIZE * t->nregions;

	for (unsigned i = 0; i < t->nregions; i++)
		if (len < (end += 8 * words_of(&t->regions[i])))
			return uffd__err(-EBADMSG, "the trace is truncated: %zu bytes, it ends in the page bitmap of region %u", len, i);
	if (len < end + count * ENTRY_SIZE)
		return uffd__err(-EBADMSG, "the trace is truncated: %zu bytes, it ends at entry %zu of the %" PRIu64 " of its first-touch order",
				 len, (len - end) / ENTRY_SIZE, count);
	return uffd__err(-EBADMSG, "the trace is truncated: %zu bytes, its checksum is missing", len);
}

static int check_region(const struct trace *t, const uint8_t *d, unsigned i)
{
	uint64_t len = get_le(d, 8), ps = get_le(d + 8, 8);
	const struct trace_region *r = &t->regions[i];

	if (len == r->length && ps == r->page_size)
		return 0;
	return uffd__err(-EINVAL, "the trace was recorded for region %u of %" PRIu64 " bytes in pages of %" PRIu64 "; this restore's region %u has %" PRIu64 " bytes in pages of %" PRIu64,
			 i, len, ps, i, r->length, r->page_size);
}

/* Header, regions, size and checksum of the file; its page count in *count. */
static int check_file(const struct trace *t, const uint8_t *b, size_t len, uint64_t *count)
{
	size_t need = HEADER_SIZE + REGION_SIZE * t->nregions;
	uint32_t v;
	int err = 0;

	if (memcmp(b, MAGIC, len < 8 ? len : 8))
		return uffd__err(-EBADMSG, "not a libuffd trace: the file does not begin with \"UFFDTRC\"");
	if (len >= 12 && (v = (uint32_t)get_le(b + 8, 4)) != VERSION)
		return uffd__err(-EPROTONOSUPPORT, "the trace has format version %u; this libuffd reads version %u only",
				 v, VERSION);
	if (len < HEADER_SIZE)
		return uffd__err(-EBADMSG, "the trace is truncated: %zu bytes, its header alone has %u", len, HEADER_SIZE);
	if ((v = (uint32_t)get_le(b + 12, 4)) != t->nregions)
		return uffd__err(-EINVAL, "the trace was recorded for %u regions; this restore has %u", v, t->nregions);
	if (len < need)
		return uffd__err(-EBADMSG, "the trace is truncated: %zu bytes, it ends in its region descriptors", len);
	for (unsigned i = 0; i < t->nregions && !err; i++)
		err = check_region(t, b + HEADER_SIZE + REGION_SIZE * i, i);
	if (err)
		return err;
	*count = get_le(b + 16, 8);
	if (*count > total_pages(t))
		return uffd__err(-EBADMSG, "the trace claims %" PRIu64 " pages, more than its regions have (%" PRIu64 ")",
				 *count, total_pages(t));
	need = file_size(t, *count);
	if (len < need)
		return truncated(t, len, *count);
	if (len > need)
		return uffd__err(-EBADMSG, "the trace has %zu bytes after its checksum", len - need);
	if (get_le(b + need - CRC_SIZE, CRC_SIZE) != uffd__crc32c(b, need - CRC_SIZE))
		return uffd__err(-EBADMSG, "the trace's checksum is wrong: the file is damaged");
	return 0;
}

/* The checked file's order, into f (initialised here); its bitmaps must agree. */
static int load_order(const struct trace *t, const uint8_t *b, uint64_t count, struct trace *f)
{
	const uint8_t *bm = b + HEADER_SIZE + REGION_SIZE * t->nregions;
	const uint8_t *e = b + file_size(t, 0) - CRC_SIZE;
	int err = trace__init(f, t->regions, t->nregions, count ? (size_t)count : 1);

	for (uint64_t k = 0; !err && k < count; k++, e += ENTRY_SIZE) {
		uint32_t r = (uint32_t)get_le(e, 4);
		uint64_t p = get_le(e + 8, 8);

		if (get_le(e + 4, 4))
			return uffd__err(-EBADMSG, "entry %" PRIu64 " of the trace's order has a nonzero reserved field", k);
		if (!trace__add(f, r, p))
			return uffd__err(-EBADMSG, in_range(t, r, p)
					 ? "entry %" PRIu64 " of the trace's order repeats page %" PRIu64 " of region %u"
					 : "entry %" PRIu64 " of the trace's order names page %" PRIu64 " of region %u, outside the regions",
					 k, p, r);
	}
	for (unsigned i = 0; !err && i < t->nregions; i++)
		for (size_t w = 0; w < words_of(&t->regions[i]); w++, bm += 8)
			if (get_le(bm, 8) != f->seen[i][w])
				return uffd__err(-EBADMSG, "the trace's page bitmap of region %u disagrees with its first-touch order (pages %zu to %zu)",
						 i, w * 64, w * 64 + 63);
	return err;
}

/* Adds f's pages to t, each at its earliest relative position. */
static int merge(struct trace *t, const struct trace *f)
{
	size_t fresh = 0, *where = malloc(total_pages(t) * sizeof(*where));
	uint64_t *first = malloc(t->nregions * sizeof(*first));
	bool had_rank = t->rank;
	int err = 0;

	for (size_t k = 0; k < f->n; k++)
		fresh += !trace__has(t, f->order[k].region, f->order[k].page);
	if (t->n + fresh > t->cap) {
		err = uffd__err(-EINVAL, "the merged traces have more pages than the %zu this trace has room for", t->cap);
		goto out;
	}
	if (!t->rank)	/* ranks, then trace__sort's scratch */
		t->rank = malloc(t->cap * (2 * sizeof(double) + sizeof(struct trace_page)));
	if (!where || !first || !t->rank) {
		err = uffd__err(-ENOMEM, "no memory to merge a trace of %zu pages", f->n);
		goto out;
	}
	first[0] = 0;
	for (unsigned i = 1; i < t->nregions; i++)
		first[i] = first[i - 1] + pages_of(&t->regions[i - 1]);
	for (size_t i = 0; i < t->n; i++) {
		where[first[t->order[i].region] + t->order[i].page] = i;
		if (!had_rank)	/* what t holds is a trace of its own */
			t->rank[i] = (double)i / (double)t->n;
	}
	for (size_t k = 0; k < f->n; k++) {
		const struct trace_page *p = &f->order[k];
		double q = (double)k / (double)f->n;
		bool known = trace__has(t, p->region, p->page);
		size_t i = known ? where[first[p->region] + p->page] : t->n;

		if (!known)
			trace__add(t, p->region, p->page);	/* room checked */
		if (!known || q < t->rank[i])
			t->rank[i] = q;
	}
out:
	if (err && !had_rank) {
		free(t->rank);
		t->rank = NULL;
	}
	free(first);
	free(where);
	return err;
}

int trace__merge_buf(struct trace *t, const void *buf, size_t len)
{
	struct trace f = { 0 };
	uint64_t count = 0;
	int err;

	if (!t || !t->nregions || (!buf && len))
		return uffd__err(-EINVAL, "trace merge: pass an initialised trace and the file's bytes");
	err = check_file(t, buf ? buf : "", len, &count);
	if (!err)
		err = load_order(t, buf, count, &f);
	if (!err)
		err = merge(t, &f);
	trace__free(&f);
	return err;
}

int trace__merge_file(struct trace *t, const char *path)
{
	size_t limit, want, got = 0;
	uint8_t *buf = NULL;
	struct stat st;
	int fd, err = 0;

	if (!t || !t->nregions || !path)
		return uffd__err(-EINVAL, "trace merge: pass an initialised trace and a file name");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st)) {
		err = uffd__err(-errno, "cannot open the trace %s (%s)", path, uffd__errname(errno));
		goto out;
	}
	/* Never more than a trace of t's regions can need, and one byte to see that the file is longer. */
	limit = file_size(t, total_pages(t));
	want = (uint64_t)st.st_size <= limit ? (size_t)st.st_size : limit + 1;
	buf = malloc(want ? want : 1);
	if (!buf) {
		err = uffd__err(-ENOMEM, "no memory to read the trace %s (%zu bytes)", path, want);
		goto out;
	}
	while (got < want) {
		ssize_t k = read(fd, buf + got, want - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			err = uffd__err(-errno, "cannot read the trace %s (%s)", path, uffd__errname(errno));
			goto out;
		}
		if (!k)
			break;		/* shorter than fstat said: the checks tell */
		got += (size_t)k;
	}
	err = trace__merge_buf(t, buf, got);
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return err;
}

/* Stable by rank: a bottom-up merge sort through the scratch after the ranks. */
void trace__sort(struct trace *t)
{
	double *rk = t->rank, *rk2, *dt;
	struct trace_page *o = t->order, *o2, *ot;
	size_t n = t->n;

	if (!rk || n < 2)
		return;		/* never merged: first-touch order already */
	rk2 = rk + t->cap;
	o2 = (struct trace_page *)(rk2 + t->cap);
	for (size_t w = 1; w < n; w *= 2) {
		for (size_t lo = 0; lo < n; lo += 2 * w) {
			size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
			size_t a = lo, b = mid;

			for (size_t k = lo; k < hi; k++) {
				size_t s = a < mid && (b >= hi || rk[a] <= rk[b]) ? a++ : b++;

				rk2[k] = rk[s];
				o2[k] = o[s];
			}
		}
		dt = rk, rk = rk2, rk2 = dt;
		ot = o, o = o2, o2 = ot;
	}
	if (o != t->order) {
		memcpy(t->order, o, n * sizeof(*o));
		memcpy(t->rank, rk, n * sizeof(*rk));
	}
}
