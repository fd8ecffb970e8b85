/* SPDX-License-Identifier: MIT */
/*
 * uffd-snap: compressed snapshots (libuffd-snapshot(5)) from and to
 * Firecracker memory files: pack, unpack, info, verify, merge. Each command
 * is a few calls of the library's uffd_snap_* functions; the tool parses
 * arguments and prints.
 *
 * Exit status: 0 done, 1 the command failed (the library's sentence, which
 * names the file and frame, on stderr), 2 bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uffd.h>

#define EXIT_USAGE 2

static const char usage_text[] =
	"usage: uffd-snap pack [--frame-size SIZE] [--level N] [--parent SNAP]... [--diff] INPUT OUTPUT\n"
	"       uffd-snap unpack SNAP... OUTPUT\n"
	"       uffd-snap info SNAP...\n"
	"       uffd-snap verify SNAP...\n"
	"       uffd-snap merge [--frame-size SIZE] [--level N] SNAP... OUTPUT\n"
	"       uffd-snap --help | --version\n"
	"SNAP...: a snapshot's files, base first, each next one a diff of the one before.\n"
	"--parent: the snapshot (base first, repeat for its diffs) the output is a diff of;\n"
	"--diff: INPUT is a Firecracker Diff file, its holes unchanged from the parent.\n"
	"SIZE: bytes, or with K or M (a power of two, 64K..4M; default: the parent's, else 256K).\n";

static int usage(const char *why)
{
	if (why)
		fprintf(stderr, "uffd-snap: %s\n", why);
	fputs(usage_text, stderr);
	return EXIT_USAGE;
}

static int fail(const char *what)
{
	fprintf(stderr, "uffd-snap: %s: %s\n", what, uffd_last_error());
	return EXIT_FAILURE;
}

/* "65536", "64K", "1M" */
static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	if (*end == 'K' || *end == 'k')
		v <<= 10, end++;
	else if (*end == 'M' || *end == 'm')
		v <<= 20, end++;
	if (*end)
		return -1;
	*out = v;
	return 0;
}

struct args {
	struct uffd_snap_pack_opts po;
	const char *parents[64];
	unsigned nparents;
	char **files;
	int nfiles;
};

static int parse(int argc, char **argv, struct args *a, bool packing)
{
	static const struct option long_opts[] = {
		{ "frame-size", required_argument, NULL, 'f' },
		{ "level", required_argument, NULL, 'l' },
		{ "parent", required_argument, NULL, 'p' },
		{ "diff", no_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	char *end;

	a->po.size = sizeof(a->po);
	optind = 1;
	while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
		if (!packing)
			return usage("this command takes no options");
		switch (c) {
		case 'f':
			if (parse_size(optarg, &a->po.frame_size))
				return usage("--frame-size: a number of bytes, or with K or M");
			break;
		case 'l':
			a->po.level = (int)strtol(optarg, &end, 10);
			if (*end || end == optarg)
				return usage("--level: a number, 1..19");
			break;
		case 'p':
			if (a->nparents == sizeof(a->parents) / sizeof(a->parents[0]))
				return usage("--parent: too many layers");
			a->parents[a->nparents++] = optarg;
			break;
		case 'd':
			a->po.flags |= UFFD_SNAP_PACK_DIFF;
			break;
		default:
			return usage(NULL);
		}
	}
	a->files = argv + optind;
	a->nfiles = argc - optind;
	return 0;
}

static struct uffd_snap *open_snap(char *const *files, unsigned n)
{
	struct uffd_snap *s = NULL;

	if (uffd_snap_open(&s, (const char *const *)files, n, NULL))
		return NULL;
	return s;
}

static int cmd_pack(int argc, char **argv)
{
	struct args a = { 0 };
	struct uffd_snap *parent = NULL;
	int rc, fd;

	if ((rc = parse(argc, argv, &a, true)))
		return rc;
	if (a.nfiles != 2)
		return usage("pack: give INPUT and OUTPUT");
	if (a.nparents && !(parent = open_snap((char *const *)a.parents, a.nparents)))
		return fail("--parent");
	a.po.parent = parent;
	fd = open(a.files[0], O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "uffd-snap: %s: %s\n", a.files[0], strerror(errno));
		uffd_snap_close(parent);
		return EXIT_FAILURE;
	}
	rc = uffd_snap_pack(a.files[1], fd, &a.po) ? fail("pack") : 0;
	close(fd);
	uffd_snap_close(parent);
	return rc;
}

static int cmd_merge(int argc, char **argv)
{
	struct args a = { 0 };
	struct uffd_snap *s;
	int rc;

	if ((rc = parse(argc, argv, &a, true)))
		return rc;
	if (a.nparents || (a.po.flags & UFFD_SNAP_PACK_DIFF))
		return usage("merge: --parent and --diff are for pack");
	if (a.nfiles < 2)
		return usage("merge: give the snapshot's files and OUTPUT");
	if (!(s = open_snap(a.files, (unsigned)a.nfiles - 1)))
		return fail("merge");
	rc = uffd_snap_merge(a.files[a.nfiles - 1], s, &a.po) ? fail("merge") : 0;
	uffd_snap_close(s);
	return rc;
}

/*
 * The image into a file: zero runs as holes, data frame by frame; written
 * to a temporary file next to it (mode 0600, like the snapshots: memory
 * holds secrets) and renamed.
 */
static int cmd_unpack(int argc, char **argv)
{
	struct args a = { 0 };
	struct uffd_snap_info si = { .size = sizeof(si) };
	struct uffd_snap *s;
	char *tmp = NULL;
	const char *out;
	uint8_t *buf = NULL;
	int rc, fd = -1;

	if ((rc = parse(argc, argv, &a, false)))
		return rc;
	if (a.nfiles < 2)
		return usage("unpack: give the snapshot's files and OUTPUT");
	out = a.files[a.nfiles - 1];
	if (!(s = open_snap(a.files, (unsigned)a.nfiles - 1)))
		return fail("unpack");
	uffd_snap_info(s, 0, &si);
	rc = EXIT_FAILURE;
	buf = malloc(si.frame_size);
	if (!buf || asprintf(&tmp, "%s.XXXXXX", out) < 0 || (fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
		fprintf(stderr, "uffd-snap: %s: %s\n", out, strerror(errno));
		goto out;
	}
	for (uint64_t off = 0, len; off < si.image_size; off += len) {
		int kind = uffd_snap_extent(s, off, &len);

		if (kind == UFFD_SNAP_ZERO)
			continue;
		len = si.frame_size - off % si.frame_size;
		len = len < si.image_size - off ? len : si.image_size - off;
		if (uffd_snap_read(s, off, buf, len)) {
			fail("unpack");
			goto out;
		}
		if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len) {
			fprintf(stderr, "uffd-snap: %s: write: %s\n", out, strerror(errno));
			goto out;
		}
	}
	if (ftruncate(fd, (off_t)si.image_size) || fsync(fd) || rename(tmp, out)) {
		fprintf(stderr, "uffd-snap: %s: %s\n", out, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	if (rc && fd >= 0)
		unlink(tmp);
	if (fd >= 0)
		close(fd);
	free(tmp);
	free(buf);
	uffd_snap_close(s);
	return rc;
}

static double pct(uint64_t a, uint64_t b)
{
	return b ? 100.0 * (double)a / (double)b : 0;
}

static void print_id(const char *label, const uint8_t id[16])
{
	printf("  %-14s", label);
	for (int i = 0; i < 16; i++)
		printf("%02x", id[i]);
	printf("\n");
}

static int cmd_info(int argc, char **argv)
{
	struct args a = { 0 };
	struct uffd_snap_info si = { .size = sizeof(si) };
	uint64_t file_bytes = 0, zero = 0, data = 0;
	struct uffd_snap *s;
	int rc;

	if ((rc = parse(argc, argv, &a, false)))
		return rc;
	if (a.nfiles < 1)
		return usage("info: give the snapshot's files");
	if (!(s = open_snap(a.files, (unsigned)a.nfiles)))
		return fail("info");
	for (unsigned k = 0; k < (unsigned)a.nfiles; k++) {
		uffd_snap_info(s, k, &si);
		printf("layer %u: %s (%s)\n", k, a.files[k], k ? "diff" : "base");
		print_id("id", si.id);
		if (k)
			print_id("parent", si.parent_id);
		printf("  %-14s%" PRIu64 ": data %" PRIu64 " (%.1f%%), zero %" PRIu64 " (%.1f%%), parent %" PRIu64 " (%.1f%%)\n",
		       "frames", si.frames, si.frames_data, pct(si.frames_data, si.frames),
		       si.frames_zero, pct(si.frames_zero, si.frames),
		       si.frames_parent, pct(si.frames_parent, si.frames));
		printf("  %-14s%" PRIu64 " of the data frames (%.1f%%) stored once for an identical one; %" PRIu64 " stored uncompressed\n",
		       "dedup", si.frames_dedup, pct(si.frames_dedup, si.frames_data), si.frames_raw);
		printf("  %-14s%" PRIu64 " bytes of frames, %" PRIu64 " bytes of file; compression of stored frames %.2fx\n",
		       "stored", si.stored_bytes, si.file_bytes,
		       si.stored_bytes ? (double)((si.frames_data - si.frames_dedup) * si.frame_size) / (double)si.stored_bytes : 0);
		file_bytes += si.file_bytes;
	}
	for (uint64_t off = 0, len; off < si.image_size; off += len)
		if (uffd_snap_extent(s, off, &len) == UFFD_SNAP_ZERO)
			zero += len;
		else
			data += len;
	printf("image: %" PRIu64 " bytes in %" PRIu64 " frames of %" PRIu64 " bytes, %u layer%s, format version %u\n",
	       si.image_size, si.frames, si.frame_size, si.layers, si.layers == 1 ? "" : "s", si.version);
	printf("  %-14s%.1f%% of the image (%" PRIu64 " bytes) is zero: served with no read\n",
	       "zero", pct(zero, si.image_size), zero);
	printf("  %-14s%" PRIu64 " bytes of files for %" PRIu64 " bytes of image: %.2fx\n",
	       "ratio", file_bytes, si.image_size, file_bytes ? (double)si.image_size / (double)file_bytes : 0);
	uffd_snap_close(s);
	return 0;
}

static int cmd_verify(int argc, char **argv)
{
	struct args a = { 0 };
	struct uffd_snap_info si = { .size = sizeof(si) };
	struct uffd_snap *s;
	uint64_t frames = 0;
	int rc;

	if ((rc = parse(argc, argv, &a, false)))
		return rc;
	if (a.nfiles < 1)
		return usage("verify: give the snapshot's files");
	if (!(s = open_snap(a.files, (unsigned)a.nfiles)))
		return fail("verify");
	rc = uffd_snap_verify(s) ? fail("verify") : 0;
	for (unsigned k = 0; !rc && k < (unsigned)a.nfiles; k++) {
		uffd_snap_info(s, k, &si);
		frames += si.frames_data - si.frames_dedup;
	}
	if (!rc)
		printf("ok: %" PRIu64 " stored frames in %d file%s, every checksum right\n",
		       frames, a.nfiles, a.nfiles == 1 ? "" : "s");
	uffd_snap_close(s);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{ "pack", cmd_pack }, { "unpack", cmd_unpack }, { "info", cmd_info },
		{ "verify", cmd_verify }, { "merge", cmd_merge },
	};

	if (argc < 2)
		return usage(NULL);
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (!strcmp(argv[1], "--version")) {
		printf("uffd-snap (libuffd %d.%d.%d)\n", LIBUFFD_VERSION_MAJOR,
		       LIBUFFD_VERSION_MINOR, LIBUFFD_VERSION_PATCH);
		return 0;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	return usage("unknown command");
}
