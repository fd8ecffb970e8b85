/* SPDX-License-Identifier: MIT */
/* uffd-serve: the command line. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uffd.h>

#include "serve.h"

#define DEFAULT_TIMEOUT_MS 60000
#define DEFAULT_DRAIN_MS 30000
#define DEFAULT_HANDSHAKE_MS 5000	/* Firecracker sends its message right after connecting */
#define DEFAULT_PER_PEER 16		/* the jailer gives each VM a uid of its own */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: " PROG " --socket PATH --memory SNAPSHOT [OPTION]...\n"
		"Serve the page faults of a Firecracker microVM restored from SNAPSHOT: listen on\n"
		"PATH, take the userfaultfd and region table Firecracker sends, and serve the\n"
		"guest's pages from the file until the VM exits.\n"
		"\n"
		"  -s, --socket PATH     Unix socket to listen on (give it to PUT /snapshot/load)\n"
		"  -m, --memory FILE     the memory snapshot file (mem_file_path of the snapshot),\n"
		"                        or a compressed snapshot (uffd-snap pack)\n"
		"  -l, --layer DIFF      a Diff snapshot's memory file over it (repeatable, newest\n"
		"                        last): its pages win, its holes show the older layers;\n"
		"                        or a compressed diff, right after its parent\n"
		"      --verify          check every frame of a compressed snapshot before listening\n"
		"  -r, --record TRACE    record the pages the VM touches, in order, into TRACE\n"
		"      --record-ms MS    record only MS milliseconds after the first fault\n"
		"  -p, --replay TRACE    bring in the pages of TRACE ahead of the faults (repeatable)\n"
		"  -f, --fill[=RATE]     then bring in every other page (RATE bytes/s, suffix K, M\n"
		"                        or G; default as fast as the faults allow) and detach\n"
		"  -t, --threads N       loop threads serving faults (default 1)\n"
		"      --fault-around BYTES  a demand fault brings in the absent pages of its\n"
		"                        aligned window of BYTES (a power of two up to 1M, suffix\n"
		"                        K or M; default 64K; 0: the faulting page only)\n"
		"      --replay-block BYTES  the replay of a traced page brings in the absent pages\n"
		"                        of its aligned block of BYTES (a power of two up to 256K;\n"
		"                        default: a 64K block where the trace is dense, else the\n"
		"                        traced pages only); 32K lets KVM's shadow MMU map 8 pages\n"
		"                        per exit\n"
		"      --spin-us US      a loop thread polls US microseconds before it sleeps\n"
		"                        (default 0; spinning saves the wake-up of an idle CPU)\n"
		"  -S, --stats           print a summary when the serve ends\n"
		"  -j, --json            print the summary as one JSON object\n"
		"  -M, --multi           serve one VM per connection, each in its own process,\n"
		"                        until SIGTERM or SIGINT\n"
		"  -T, --timeout MS      wait at most MS for the VM to connect and for its message\n"
		"                        (default %d; 0 waits forever)\n"
		"      --on-fatal=WHAT   when a VM that handed over its userfaultfd cannot be\n"
		"                        served: kill (default: SIGKILL through its pidfd), exit\n"
		"                        (leave it to its owner: it hangs on its next fault) or\n"
		"                        wait (until it exits)\n"
		"      --drain-timeout MS  on SIGTERM or SIGINT, each VM has MS to get every page\n"
		"                        and be detached; then --on-fatal (default %d; 0: at once)\n"
		"      --socket-owner USER[:GROUP]  owner of the socket (default: this process's)\n"
		"      --socket-mode MODE  its permission bits, octal (default 0600)\n"
		"      --allow-uid USER, --allow-gid GROUP  peers that may connect besides root\n"
		"                        and the socket's owner (repeatable; names or numbers)\n"
		"      --max-per-peer N  --multi: connections of one uid at once (default %d; 0: any)\n"
		"      --handshake-timeout MS  a connection must send its whole message within MS\n"
		"                        (default %d)\n"
		"      --metrics ADDR    live metrics of every VM in the Prometheus text format, over\n"
		"                        HTTP on unix:PATH or 127.0.0.1:PORT (0: any free port)\n"
		"      --supervise       a supervisor process keeps each VM's userfaultfd and page\n"
		"                        states and restarts the worker serving it when it dies;\n"
		"                        SIGUSR2 or SIGHUP to it re-executes this program (upgrade);\n"
		"                        the default with --multi (--no-supervise: not)\n"
		"      --cache-dir DIR   keep the chunks of a remote snapshot (http://, https://,\n"
		"                        s3://, nbd://, nbd+unix://) in DIR, shared by serves\n"
		"      --cache-size BYTES  bound of that cache (suffix K, M, G; default 4G)\n"
		"      --header LINE     \"Name: value\" sent with every HTTP request (repeatable)\n"
		"      --s3-endpoint URL  an S3-compatible store for s3:// snapshots\n"
		"      --remote-timeout MS  per try of a remote read (default 60000)\n"
		"      --remote-tries N  tries of a remote read before it fails (default 3)\n"
		"      --config FILE     options from FILE first, one a line: \"name\" or\n"
		"                        \"name = value\" (long names; '#' comments)\n"
		"  -h, --help            print this help\n"
		"  -V, --version         print the version\n"
		"\n"
		"Exit status: 0 when the VM exited or the serve detached (also in a drain);\n"
		"1 serving failed; 2 usage; 3 snapshot or socket unusable; 4 timeout;\n"
		"5 the VM's message is unusable; 6 a VM did not drain in time.\n",
		DEFAULT_TIMEOUT_MS, DEFAULT_DRAIN_MS, DEFAULT_PER_PEER, DEFAULT_HANDSHAKE_MS);
}

static _Noreturn void bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void bad(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see " PROG " --help)\n", stderr);
	exit(EXIT_USAGE);
}

/* A decimal in [min, max] with an optional K/M/G suffix (powers of 1024) when scaled. */
static uint64_t number(const char *opt, const char *s, uint64_t min, uint64_t max, bool scaled)
{
	unsigned long long v;
	char *end;
	int shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (scaled && *end && !end[1]) {
		const char *u = strchr("KMG", *end);

		shift = u ? 10 * (int)(u - "KMG" + 1) : -1;
		end += shift >= 0;
	}
	if (errno || end == s || *end || *s == '-' || shift < 0 || (v << shift) >> shift != v ||
	    (v << shift) < min || (v << shift) > max)
		bad("%s '%s' is not a number in [%llu, %llu]%s", opt, s, (unsigned long long)min,
		    (unsigned long long)max, scaled ? " (suffixes K, M, G allowed)" : "");
	return v << shift;
}

/* Octal permission bits for the socket: the owner must keep read and write. */
static unsigned socket_mode(const char *s)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 8);
	if (errno || end == s || *end || v > 0777 || (v & 0600) != 0600)
		bad("--socket-mode '%s' is not octal permission bits (0600 to 0777) that keep the owner's rw", s);
	return (unsigned)v;
}

static enum fatal_policy fatal_policy(const char *s)
{
	for (enum fatal_policy p = FATAL_KILL; p <= FATAL_WAIT; p++)
		if (!strcmp(s, fatal_policy_name(p)))
			return p;
	bad("--on-fatal '%s' is not kill, exit or wait", s);
}

static void add_path(const char ***v, size_t *n, const char *path)
{
	const char **w = realloc(*v, (*n + 1) * sizeof(*w));

	if (!w)
		bad("out of memory");
	*v = w;
	w[(*n)++] = path;
}

void serve_args(int argc, char **argv, struct serve_opts *o)
{
	enum { OPT_RECORD_MS = 256, OPT_FAULT_AROUND, OPT_REPLAY_BLOCK, OPT_SPIN_US, OPT_ON_FATAL, OPT_DRAIN_TIMEOUT, OPT_SOCKET_OWNER,
	       OPT_SOCKET_MODE, OPT_ALLOW_UID, OPT_ALLOW_GID, OPT_MAX_PER_PEER, OPT_HANDSHAKE_TIMEOUT,
	       OPT_METRICS, OPT_VERIFY, OPT_SUPERVISE, OPT_NO_SUPERVISE, OPT_CACHE_DIR, OPT_CACHE_SIZE,
	       OPT_HEADER, OPT_S3_ENDPOINT, OPT_REMOTE_TIMEOUT, OPT_REMOTE_TRIES };
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "memory", required_argument, NULL, 'm' },
		{ "layer", required_argument, NULL, 'l' },
		{ "record", required_argument, NULL, 'r' },
		{ "record-ms", required_argument, NULL, OPT_RECORD_MS },
		{ "replay", required_argument, NULL, 'p' },
		{ "fill", optional_argument, NULL, 'f' },
		{ "verify", no_argument, NULL, OPT_VERIFY },
		{ "threads", required_argument, NULL, 't' },
		{ "spin-us", required_argument, NULL, OPT_SPIN_US },
		{ "fault-around", required_argument, NULL, OPT_FAULT_AROUND },
		{ "replay-block", required_argument, NULL, OPT_REPLAY_BLOCK },
		{ "stats", no_argument, NULL, 'S' },
		{ "json", no_argument, NULL, 'j' },
		{ "multi", no_argument, NULL, 'M' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "on-fatal", required_argument, NULL, OPT_ON_FATAL },
		{ "drain-timeout", required_argument, NULL, OPT_DRAIN_TIMEOUT },
		{ "socket-owner", required_argument, NULL, OPT_SOCKET_OWNER },
		{ "socket-mode", required_argument, NULL, OPT_SOCKET_MODE },
		{ "allow-uid", required_argument, NULL, OPT_ALLOW_UID },
		{ "allow-gid", required_argument, NULL, OPT_ALLOW_GID },
		{ "max-per-peer", required_argument, NULL, OPT_MAX_PER_PEER },
		{ "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
		{ "metrics", required_argument, NULL, OPT_METRICS },
		{ "supervise", no_argument, NULL, OPT_SUPERVISE },
		{ "no-supervise", no_argument, NULL, OPT_NO_SUPERVISE },
		{ "cache-dir", required_argument, NULL, OPT_CACHE_DIR },
		{ "cache-size", required_argument, NULL, OPT_CACHE_SIZE },
		{ "header", required_argument, NULL, OPT_HEADER },
		{ "s3-endpoint", required_argument, NULL, OPT_S3_ENDPOINT },
		{ "remote-timeout", required_argument, NULL, OPT_REMOTE_TIMEOUT },
		{ "remote-tries", required_argument, NULL, OPT_REMOTE_TRIES },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	int c, supervise = -1;	/* --supervise: 1, --no-supervise: 0, neither: -1 */

	*o = (struct serve_opts){ .threads = 1, .timeout_ms = DEFAULT_TIMEOUT_MS, .drain_ms = DEFAULT_DRAIN_MS,
				  .sock_mode = 0600, .max_per_peer = DEFAULT_PER_PEER,
				  .handshake_ms = DEFAULT_HANDSHAKE_MS };
	while ((c = getopt_long(argc, argv, "s:m:l:r:p:f::t:SjMT:hV", opts, NULL)) != -1) {
		switch (c) {
		case 's': o->socket = optarg; break;
		case 'm': o->memory = optarg; break;
		case 'r': o->record = optarg; break;
		case OPT_RECORD_MS:
			o->record_ms = (unsigned)number("--record-ms", optarg, 1, UINT_MAX, false);
			break;
		case 'p': add_path(&o->replay, &o->nreplay, optarg); break;
		case 'l':
			if (o->nlayers == 63)
				bad("at most 63 --layer files over --memory");
			add_path(&o->layers, &o->nlayers, optarg);
			break;
		case 'f':
			o->fill = true;
			o->fill_rate = optarg ? number("--fill", optarg, 4096, UINT64_MAX >> 1, true) : 0;
			break;
		case OPT_VERIFY: o->verify = true; break;
		case 't': o->threads = (unsigned)number("--threads", optarg, 1, 64, false); break;
		case OPT_FAULT_AROUND:
			o->fault_around = (size_t)number("--fault-around", optarg, 0, 1u << 20, true);
			if (o->fault_around & (o->fault_around - 1))
				bad("--fault-around %s is not a power of two (0: none)", optarg);
			o->fault_around_set = true;
			break;
		case OPT_REPLAY_BLOCK:
			o->replay_block = (size_t)number("--replay-block", optarg, 4096, 256u << 10, true);
			if (o->replay_block & (o->replay_block - 1))
				bad("--replay-block %s is not a power of two", optarg);
			break;
		case OPT_SPIN_US: o->spin_us = (unsigned)number("--spin-us", optarg, 0, 1000000, false); break;
		case 'S': o->stats = true; break;
		case 'j': o->json = true; break;
		case 'M': o->multi = true; break;
		case 'T': o->timeout_ms = (int)number("--timeout", optarg, 0, INT_MAX, false); break;
		case OPT_ON_FATAL: o->on_fatal = fatal_policy(optarg); break;
		case OPT_DRAIN_TIMEOUT:
			o->drain_ms = (unsigned)number("--drain-timeout", optarg, 0, INT_MAX, false);
			break;
		case OPT_SOCKET_OWNER:
			if (!auth_parse_owner(optarg, o))
				bad("--socket-owner '%s' is not USER[:GROUP] with a known user and group", optarg);
			break;
		case OPT_SOCKET_MODE: o->sock_mode = socket_mode(optarg); break;
		case OPT_ALLOW_UID:
		case OPT_ALLOW_GID:
			if (!auth_add_id(optarg, c == OPT_ALLOW_GID, o))
				bad("--allow-%s '%s' is not a known %s (or more than %d are given)",
				    c == OPT_ALLOW_GID ? "gid" : "uid", optarg, c == OPT_ALLOW_GID ? "group" : "user",
				    ALLOW_MAX);
			break;
		case OPT_MAX_PER_PEER:
			o->max_per_peer = (unsigned)number("--max-per-peer", optarg, 0, 1024, false);
			break;
		case OPT_METRICS: o->metrics_addr = optarg; break;
		case OPT_SUPERVISE: supervise = 1; break;
		case OPT_NO_SUPERVISE: supervise = 0; break;
		case OPT_CACHE_DIR: o->cache_dir = optarg; break;
		case OPT_CACHE_SIZE: o->cache_size = number("--cache-size", optarg, 1 << 20, UINT64_MAX >> 1, true); break;
		case OPT_HEADER: add_path(&o->headers, &o->nheaders, optarg); break;
		case OPT_S3_ENDPOINT: o->s3_endpoint = optarg; break;
		case OPT_REMOTE_TIMEOUT:
			o->remote_timeout_ms = (unsigned)number("--remote-timeout", optarg, 1, INT_MAX, false);
			break;
		case OPT_REMOTE_TRIES: o->remote_tries = (unsigned)number("--remote-tries", optarg, 1, 100, false); break;
		case OPT_HANDSHAKE_TIMEOUT:
			o->handshake_ms = (int)number("--handshake-timeout", optarg, 1, INT_MAX, false);
			break;
		case 'h':
			usage(stdout);
			exit(EXIT_OK);
		case 'V':
			printf(PROG " (libuffd) %d.%d.%d\n", LIBUFFD_VERSION_MAJOR,
			       LIBUFFD_VERSION_MINOR, LIBUFFD_VERSION_PATCH);
			exit(EXIT_OK);
		default:
			usage(stderr);
			exit(EXIT_USAGE);
		}
	}
	if (optind < argc)
		bad("unexpected argument '%s'", argv[optind]);
	/* --multi serves many VMs: a crash of one serve must not hang its VM (see uffd-serve(1), SUPERVISOR). */
	o->supervise = supervise < 0 ? o->multi : supervise;
	if ((!o->socket && !getenv("LISTEN_FDS")) || !o->memory)
		bad("--socket and --memory are required (--socket not under socket activation)");
	if (o->record_ms && !o->record)
		bad("--record-ms needs --record");
	if (o->multi && o->record)
		bad("--record with --multi would have every VM write the same trace; record one VM");
	/* A page brought in ahead raises no fault: the recording could not see the guest touch it. */
	if (o->record && o->nreplay)
		bad("--record with --replay: replayed pages raise no fault, so the trace would miss the guest's touches of them; record without --replay");
	if (o->record && o->fill && !o->record_ms)
		bad("--record with --fill needs --record-ms: the fill starts when the recording ends, so that its pages do not hide the guest's touches");
	if (o->fill_rate && o->record)
		bad("--fill=RATE with --record: the fill after the recording runs at full speed; give --fill without a rate");
}
