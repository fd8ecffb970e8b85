/* SPDX-License-Identifier: MIT */
/*
 * uffd-info: what userfaultfd can do on this machine, and why not.
 * Gathers the facts (info-system.c), runs the capability checks
 * (info-checks.c) and prints them, aligned or as one JSON object.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include <uffd.h>

#include "info.h"

#define COL 36
#define FIX_UNKNOWN "unexpected here: report it to libuffd with the output of uffd-info --json"

static const struct {
	const char *since;
	const char *what;
} features[] = {
	{ "5.7", "write-protect faults on anonymous memory" },
	{ "4.11", "fork events (needs CAP_SYS_PTRACE)" },
	{ "4.11", "mremap events" },
	{ "4.11", "madvise(DONTNEED/REMOVE) events" },
	{ "4.11", "missing faults on hugetlbfs" },
	{ "4.11", "missing faults on shmem" },
	{ "4.11", "munmap events" },
	{ "4.14", "faults raise SIGBUS instead of messages" },
	{ "4.14", "faulting thread id in messages" },
	{ "5.13", "minor faults on hugetlbfs" },
	{ "5.14", "minor faults on shmem" },
	{ "5.18", "exact fault addresses" },
	{ "5.19", "write-protect on shmem and hugetlbfs" },
	{ "6.4", "write-protect of unpopulated anonymous pages" },
	{ "6.6", "UFFDIO_POISON" },
	{ "6.7", "asynchronous write-protect (dirty tracking)" },
	{ "6.8", "UFFDIO_MOVE" },
};
#define NR_FEATURES (sizeof(features) / sizeof(features[0]))

const char *feature_since(uint64_t feature)
{
	unsigned bit = feature ? (unsigned)__builtin_ctzll(feature) : 64;

	return bit < NR_FEATURES ? features[bit].since : "?";
}

const char *errname(int err)
{
	const char *name = strerrorname_np(err < 0 ? -err : err);

	return name ? name : "unknown error";
}

bool pass(struct row *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->detail, sizeof(r->detail), fmt, ap);
	va_end(ap);
	r->ok = true;
	r->fix[0] = '\0';
	return true;
}

bool fail(struct row *r, const char *fix, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->detail, sizeof(r->detail), fmt, ap);
	va_end(ap);
	r->ok = false;
	snprintf(r->fix, sizeof(r->fix), "%s", fix && *fix ? fix : FIX_UNKNOWN);
	return false;
}

struct report {
	struct sysinfo si;
	struct row access[ACCESS_ROWS];
	struct row checks[CHECK_ROWS];
	struct row core;
	struct row serve;
};

static const struct { const char *key, *label; } access_rows[ACCESS_ROWS] = {
	[ACCESS_SYSCALL] = { "syscall", "userfaultfd(2)" },
	[ACCESS_USER_MODE_ONLY] = { "syscall_user_mode_only", "userfaultfd(2), UFFD_USER_MODE_ONLY" },
	[ACCESS_DEV] = { "dev_userfaultfd", "/dev/userfaultfd" },
	[ACCESS_LIBRARY] = { "library_open", "uffd_open() with default options" },
};

/* The core: the library opens a userfaultfd by default and minor faults on shmem work. */
static void core_verdict(struct report *rep)
{
	const struct row *lib = &rep->access[ACCESS_LIBRARY], *minor = &rep->checks[CHECK_MINOR_SHMEM];
	struct row *r = &rep->core;

	r->key = "core";
	r->label = "libuffd core";
	if (!lib->ok)
		fail(r, lib->fix, "uffd_open() with default options fails here");
	else if (!minor->ok)
		fail(r, minor->fix, "minor faults on shmem do not work: %s", minor->detail);
	else
		pass(r, "uffd_open() with default options works, and minor faults on shmem are resolved by a handler thread");
}

/*
 * What uffd-serve needs here: MISSING faults and REMOVE events on a
 * userfaultfd opened as Firecracker opens it, and kernel faults (KVM touches
 * guest memory from inside the kernel, which a user-mode-only userfaultfd
 * never reports); MISSING on hugetlb only for guests with huge pages.
 */
static void serve_verdict(struct report *rep)
{
	const struct row *anon = &rep->checks[CHECK_MISSING_ANON], *rm = &rep->checks[CHECK_EVENT_REMOVE],
			 *kf = &rep->checks[CHECK_KERNEL_FAULTS], *huge = &rep->checks[CHECK_MISSING_HUGETLB];
	struct row *r = &rep->serve;

	r->key = "uffd_serve";
	r->label = "uffd-serve (Firecracker)";
	if (!anon->ok)
		fail(r, anon->fix, "missing faults on anonymous memory do not work: %s", anon->detail);
	else if (!rm->ok)
		fail(r, rm->fix, "the balloon's REMOVE events do not work: %s", rm->detail);
	else if (!kf->ok)
		fail(r, kf->fix, "faults raised inside the kernel are not reported, and Firecracker's vCPUs touch guest memory from the kernel: %s",
		     kf->detail);
	else
		pass(r, "missing faults, REMOVE events and kernel faults work: uffd-serve can serve 4 KiB guests; 2 MiB (hugetlb) guests: %s",
		     huge->ok ? "yes" : huge->fix[0] ? huge->fix : "no");
}

static void gather(struct report *rep)
{
	struct check_env env;

	memset(rep, 0, sizeof(*rep));
	sysinfo_gather(&rep->si);
	for (int i = 0; i < ACCESS_ROWS; i++) {
		rep->access[i].key = access_rows[i].key;
		rep->access[i].label = access_rows[i].label;
	}
	access_check(&rep->si, rep->access);
	env = (struct check_env){
		.probe_err = rep->si.probe_err,
		.available = rep->si.available,
		.hugepage_size = rep->si.hugepage_kb * 1024,
		.io_uring_disabled = rep->si.io_uring_disabled,
	};
	checks_run(&env, rep->checks);
	core_verdict(rep);
	serve_verdict(rep);
}

/* ---- aligned text ---- */

static void print_fact(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void print_fact(const char *label, const char *fmt, ...)
{
	va_list ap;

	printf("  %-*s ", COL, label);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

/* A section title with the headings of the second and third columns. */
static void print_heading(const char *title, const char *second, const char *third)
{
	if (*second)
		printf("\n%-*s %-4s %s\n", COL + 2, title, second, third);
	else
		printf("\n%s\n", title);
}

static void print_row(const struct row *r, const char *third, bool verbose)
{
	printf("  %-*s %s", COL, r->label, r->ok ? "yes" : "no");
	if (*third)
		printf("%*s%s", r->ok ? 2 : 3, "", third);
	putchar('\n');
	if (verbose || !r->ok)
		printf("      %s\n", r->detail);
	if (!r->ok)
		printf("      fix: %s\n", r->fix);
}

static void print_sysctl(const char *name, long v)
{
	if (v < 0)
		print_fact(name, "(absent)");
	else
		print_fact(name, "%ld", v);
}

static void print_system(const struct sysinfo *si)
{
	printf("System\n");
	print_fact("kernel", "%s", si->kernel);
	print_fact("libuffd", "%d.%d.%d", LIBUFFD_VERSION_MAJOR, LIBUFFD_VERSION_MINOR,
		   LIBUFFD_VERSION_PATCH);
	print_fact("running as", "%s (uid %u, euid %u)", si->euid == 0 ? "root" : "not root",
		   (unsigned)si->uid, (unsigned)si->euid);
	print_fact("CAP_SYS_PTRACE (effective)", "%s", si->cap_sys_ptrace ? "yes" : "no");
	print_sysctl("vm.unprivileged_userfaultfd", si->unprivileged_userfaultfd);
	print_sysctl("kernel.io_uring_disabled", si->io_uring_disabled);
}

static void print_features(const struct sysinfo *si)
{
	print_heading("Kernel features (UFFD_FEATURE_*)", "here", "since");
	if (si->probe_err) {
		printf("  unknown: no userfaultfd can be opened (%s)\n", errname(si->probe_err));
		return;
	}
	for (unsigned bit = 0; bit < NR_FEATURES; bit++) {
		bool have = si->available & (1ull << bit);

		printf("  %-*s %-4s %-5s %s\n", COL, uffd_feature_name(1ull << bit), have ? "yes" : "no",
		       features[bit].since, features[bit].what);
		if (!have)
			printf("      fix: Linux >= %s\n", features[bit].since);
	}
}

static void print_hugepages(const struct sysinfo *si)
{
	char label[64];

	printf("\nHuge pages\n");
	if (!si->hugepage_kb)
		print_fact("hugetlb", "none (no Hugepagesize in /proc/meminfo)");
	else
		print_fact("default size", "%lu kB", si->hugepage_kb);
	for (size_t i = 0; i < si->nr_sizes; i++) {
		snprintf(label, sizeof(label), "%lu kB pages", si->sizes[i].kb);
		print_fact(label, "%ld configured, %ld free", si->sizes[i].total, si->sizes[i].free);
	}
	print_fact("transparent huge pages", "%s", si->thp[0] ? si->thp : "(none)");
}

static void print_text(const struct report *rep, bool verbose)
{
	const struct sysinfo *si = &rep->si;

	print_system(si);
	print_heading("Opening a userfaultfd", "", "");
	for (int i = 0; i < ACCESS_ROWS; i++)
		print_row(&rep->access[i], rep->access[i].brief, verbose);
	print_features(si);
	print_heading("libuffd capabilities, each one tried", "here", "needs");
	if (!si->full_open && si->any_open)
		printf("  (tried with a user-mode-only userfaultfd: the only kind this process can open)\n");
	for (int i = 0; i < CHECK_ROWS; i++)
		print_row(&rep->checks[i], rep->checks[i].needs, verbose);
	print_hugepages(si);
	printf("\nVerdict\n");
	print_row(&rep->core, "", true);
	print_row(&rep->serve, "", true);
	printf("  exit status %d\n", rep->core.ok ? 0 : 1);
}

/* ---- JSON ---- */

static void json_row(struct json *j, const struct row *r)
{
	json_object(j, r->key);
	json_bool(j, "ok", r->ok);
	json_string(j, "label", r->label);
	if (r->needs[0])
		json_string(j, "needs", r->needs);
	if (r->brief[0])
		json_string(j, "brief", r->brief);
	json_string(j, "detail", r->detail);
	if (r->ok)
		json_null(j, "fix");
	else
		json_string(j, "fix", r->fix);
	json_close(j, '}');
}

static void json_long(struct json *j, const char *key, long v)
{
	if (v < 0)
		json_null(j, key);
	else
		json_number(j, key, v);
}

static void json_fix(struct json *j, const char *what, const char *fix)
{
	json_object(j, NULL);
	json_string(j, "what", what);
	json_string(j, "fix", fix);
	json_close(j, '}');
}

static void json_system(struct json *j, const struct sysinfo *si)
{
	char version[32];

	snprintf(version, sizeof(version), "%d.%d.%d", LIBUFFD_VERSION_MAJOR,
		 LIBUFFD_VERSION_MINOR, LIBUFFD_VERSION_PATCH);
	json_string(j, "version", version);
	json_string(j, "kernel", si->kernel);
	json_number(j, "uid", si->uid);
	json_number(j, "euid", si->euid);
	json_bool(j, "root", si->euid == 0);
	json_bool(j, "cap_sys_ptrace", si->cap_sys_ptrace);
	json_object(j, "sysctl");
	json_long(j, "vm.unprivileged_userfaultfd", si->unprivileged_userfaultfd);
	json_long(j, "kernel.io_uring_disabled", si->io_uring_disabled);
	json_long(j, "vm.nr_hugepages", si->nr_hugepages);
	json_close(j, '}');
}

static void json_access(struct json *j, const struct report *rep)
{
	const struct sysinfo *si = &rep->si;

	json_object(j, "access");
	for (int i = 0; i < ACCESS_ROWS; i++)
		json_row(j, &rep->access[i]);
	json_object(j, "dev_node");
	json_bool(j, "present", si->dev_present);
	json_string(j, "mode", si->dev_mode);
	json_string(j, "owner", si->dev_owner);
	json_string(j, "group", si->dev_group);
	json_close(j, '}');
	json_bool(j, "user_mode_only_checks", !si->full_open && si->any_open);
	json_close(j, '}');
}

static void json_features(struct json *j, const struct sysinfo *si)
{
	char hex[24];

	json_object(j, "features");
	if (si->probe_err) {
		json_null(j, "available");
		json_string(j, "probe_error", errname(si->probe_err));
	} else {
		snprintf(hex, sizeof(hex), "0x%llx", (unsigned long long)si->available);
		json_string(j, "available", hex);
		json_null(j, "probe_error");
	}
	for (unsigned bit = 0; bit < NR_FEATURES; bit++) {
		json_object(j, uffd_feature_name(1ull << bit));
		if (si->probe_err)
			json_null(j, "available");
		else
			json_bool(j, "available", si->available & (1ull << bit));
		json_string(j, "since", features[bit].since);
		json_string(j, "what", features[bit].what);
		json_close(j, '}');
	}
	json_close(j, '}');
}

static void json_hugepages(struct json *j, const struct sysinfo *si)
{
	json_object(j, "hugepages");
	json_number(j, "default_size_kb", (long long)si->hugepage_kb);
	json_long(j, "total", si->hugepages_total);
	json_long(j, "free", si->hugepages_free);
	json_array(j, "sizes");
	for (size_t i = 0; i < si->nr_sizes; i++) {
		json_object(j, NULL);
		json_number(j, "size_kb", (long long)si->sizes[i].kb);
		json_long(j, "total", si->sizes[i].total);
		json_long(j, "free", si->sizes[i].free);
		json_close(j, '}');
	}
	json_close(j, ']');
	json_string(j, "thp", si->thp);
	json_close(j, '}');
}

static void json_fixes(struct json *j, const struct report *rep)
{
	char what[64], fix[32];

	json_array(j, "fixes");
	for (int i = 0; i < ACCESS_ROWS; i++)
		if (!rep->access[i].ok)
			json_fix(j, rep->access[i].label, rep->access[i].fix);
	for (unsigned bit = 0; !rep->si.probe_err && bit < NR_FEATURES; bit++)
		if (!(rep->si.available & (1ull << bit))) {
			snprintf(what, sizeof(what), "UFFD_FEATURE_%s", uffd_feature_name(1ull << bit));
			snprintf(fix, sizeof(fix), "Linux >= %s", features[bit].since);
			json_fix(j, what, fix);
		}
	for (int i = 0; i < CHECK_ROWS; i++)
		if (!rep->checks[i].ok)
			json_fix(j, rep->checks[i].label, rep->checks[i].fix);
	json_close(j, ']');
}

static void print_json(const struct report *rep)
{
	struct json j;

	json_begin(&j, stdout);
	json_system(&j, &rep->si);
	json_access(&j, rep);
	json_features(&j, &rep->si);
	json_object(&j, "checks");
	for (int i = 0; i < CHECK_ROWS; i++)
		json_row(&j, &rep->checks[i]);
	json_close(&j, '}');
	json_hugepages(&j, &rep->si);
	json_row(&j, &rep->core);
	json_row(&j, &rep->serve);
	json_fixes(&j, rep);
	json_number(&j, "exit_status", rep->core.ok ? 0 : 1);
	json_end(&j);
}

/* ---- main ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: uffd-info [--json] [--verbose]\n"
		"Tell what userfaultfd can do on this machine, and what to change where it cannot.\n"
		"\n"
		"  -j, --json     print one JSON object instead of aligned text\n"
		"  -v, --verbose  also say how each working capability was checked\n"
		"  -h, --help     print this help\n"
		"  -V, --version  print the version\n"
		"\n"
		"Exit status: 0 when the libuffd core works (uffd_open() with default options,\n"
		"minor faults on shmem resolved by a handler thread), 1 when it does not, 2 for\n"
		"a usage error.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	static struct report rep;
	bool json = false, verbose = false;
	int c;

	while ((c = getopt_long(argc, argv, "jvhV", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'v':
			verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("uffd-info (libuffd) %d.%d.%d\n", LIBUFFD_VERSION_MAJOR,
			       LIBUFFD_VERSION_MINOR, LIBUFFD_VERSION_PATCH);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "uffd-info: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	gather(&rep);
	if (json)
		print_json(&rep);
	else
		print_text(&rep, verbose);
	return rep.core.ok ? 0 : 1;
}
