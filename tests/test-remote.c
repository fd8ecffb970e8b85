/* SPDX-License-Identifier: MIT */
/*
 * Remote page sources (uffd.h section 13) against real servers the tests
 * start on 127.0.0.1 or a Unix socket, nothing else: nginx serving the
 * snapshot with range requests (limit_rate for a bandwidth cap,
 * max_ranges 0 for a server that ignores Range), nbdkit's file plugin with
 * its delay and error filters. A small TCP relay of the test's own holds
 * each chunk for a round-trip time in front of nginx. Every byte is checked
 * with 4 KiB and 2 MiB pages; a server down at start, killed mid-restore,
 * failing some reads or all of them; demand faults during a fill from a
 * slow server; the chunk cache shared by a second restore; a layered
 * snapshot whose base is over HTTP; compressed snapshots (a base, a
 * chain, a corrupt frame) read through HTTP and NBD. Each case skips, saying why, where its
 * server is not installed.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uffd.h>

#include "harness.h"

#define MISSING UFFDIO_REGISTER_MODE_MISSING
#define SUB 4096u

#define SKIP_NO_UFFD() SKIP_TEST("userfaultfd is not available to this process")
#define SKIP_VALGRIND() SKIP_UNDER_VALGRIND("the restore thread waits in io_uring_enter(2) holding valgrind's thread lock")

static const char *const NGINX = "/usr/sbin/nginx";
static const char *const NBDKIT = "/usr/bin/nbdkit";

/* ---- the image: a word per 8 bytes, some 4 KiB pieces holes ---- */

static uint64_t word(size_t q, size_t w)
{
	return ((uint64_t)q << 20 | w) ^ 0x0123456789abcdefull;
}

/* Piece q is a hole (zeros): a whole page of ps bytes every fifth page. */
static bool is_hole(size_t q, size_t ps)
{
	return (q * SUB / ps) % 5 == 3;
}

static void make_image(const char *path, size_t len, size_t ps)
{
	uint64_t buf[SUB / 8];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
	for (size_t q = 0; q < len / SUB; q++) {
		if (is_hole(q, ps))
			continue;
		for (size_t w = 0; w < SUB / 8; w++)
			buf[w] = word(q, w);
		ck_assert_int_eq(pwrite(fd, buf, SUB, (off_t)(q * SUB)), (ssize_t)SUB);
	}
	close(fd);
}

/* Page p of ps bytes at mem holds the image's bytes (diff: pieces q%7==1 hold ~word, a layer above). */
static void check_page(const char *mem, size_t ps, size_t p, bool diff)
{
	for (size_t q = p * ps / SUB; q < (p + 1) * ps / SUB; q++) {
		const volatile uint64_t *w = (const volatile uint64_t *)(mem + q * SUB);

		for (size_t i = 0; i < SUB / 8; i++) {
			uint64_t want = diff && q % 7 == 1 ? ~word(q, i) : is_hole(q, ps) ? 0 : word(q, i);

			if (w[i] != want)
				ck_abort_msg("page %zu piece %zu word %zu: 0x%llx, want 0x%llx", p, q, i,
					     (unsigned long long)w[i], (unsigned long long)want);
		}
	}
}

/* ---- servers, started here, on loopback only ---- */

struct server {
	pid_t pid;
	char dir[64];
	char url[256];
	char img[128];
	int port;
};

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(s, (struct sockaddr *)&a, &al), 0);
	close(s);
	return ntohs(a.sin_port);
}

static bool can_connect_tcp(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok = connect(s, (struct sockaddr *)&a, sizeof(a)) == 0;

	close(s);
	return ok;
}

static bool can_connect_unix(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	if (strlen(path) >= sizeof(a.sun_path)) {
		close(s);
		return false;
	}
	memcpy(a.sun_path, path, strlen(path) + 1);
	ok = connect(s, (struct sockaddr *)&a, sizeof(a)) == 0;
	close(s);
	return ok;
}

/* A temporary directory (readable by nginx's worker user) holding the image. */
static void server_dir(struct server *s, size_t len, size_t ps)
{
	memset(s, 0, sizeof(*s));
	strcpy(s->dir, "/var/tmp/uffd-remote-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(s->dir));
	ck_assert_int_eq(chmod(s->dir, 0755), 0);
	snprintf(s->img, sizeof(s->img), "%s/snap.img", s->dir);
	make_image(s->img, len, ps);
}

static pid_t spawn(char *const argv[], const char *log)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

/* nginx on 127.0.0.1, one process (killing it kills the server), `extra` in its server block. */
static void nginx_start(struct server *s, const char *extra)
{
	char conf[256], log[128], text[2048];
	double end = harness_now() + 10;
	FILE *f;

	s->port = free_port();
	snprintf(conf, sizeof(conf), "%s/nginx.conf", s->dir);
	snprintf(log, sizeof(log), "%s/nginx.log", s->dir);
	snprintf(text, sizeof(text),
		 "master_process off;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log;\n"
		 "events { worker_connections 256; }\n"
		 "http {\n access_log %s/access.log;\n client_body_temp_path %s/t1;\n proxy_temp_path %s/t2;\n"
		 " fastcgi_temp_path %s/t3;\n uwsgi_temp_path %s/t4;\n scgi_temp_path %s/t5;\n"
		 " keepalive_requests 100000;\n"
		 " server {\n  listen 127.0.0.1:%d;\n  root %s;\n  %s\n }\n}\n",
		 s->dir, s->dir, s->dir, s->dir, s->dir, s->dir, s->dir, s->dir, s->port, s->dir, extra ? extra : "");
	f = fopen(conf, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	s->pid = spawn((char *[]){ (char *)NGINX, "-c", conf, "-g", "daemon off;", NULL }, log);
	while (!can_connect_tcp(s->port)) {
		ck_assert_msg(harness_now() < end, "nginx did not start (see %s/error.log)", s->dir);
		ck_assert_int_eq(waitpid(s->pid, NULL, WNOHANG), 0);
		usleep(10000);
	}
	snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d/snap.img", s->port);
}

/* nbdkit's file plugin on a Unix socket, with `filters` ("--filter=delay delay-read=1ms", space-separated). */
static void nbdkit_start(struct server *s, const char *filters, const char *params)
{
	char sock[128], log[128], buf[512], file[160];
	char *argv[32], pbuf[512];
	int n = 0;
	double end = harness_now() + 10;

	snprintf(sock, sizeof(sock), "%s/nbd.sock", s->dir);
	unlink(sock);	/* a killed server's */
	snprintf(log, sizeof(log), "%s/nbdkit.log", s->dir);
	snprintf(file, sizeof(file), "file=%s", s->img);
	argv[n++] = (char *)NBDKIT;
	argv[n++] = "-f";
	argv[n++] = "--exit-with-parent";
	argv[n++] = "-U";
	argv[n++] = sock;
	snprintf(buf, sizeof(buf), "%s", filters ? filters : "");
	for (char *t = strtok(buf, " "); t && n < 20; t = strtok(NULL, " "))
		argv[n++] = t;
	argv[n++] = "file";
	argv[n++] = file;

	snprintf(pbuf, sizeof(pbuf), "%s", params ? params : "");
	for (char *t = strtok(pbuf, " "); t && n < 30; t = strtok(NULL, " "))
		argv[n++] = t;
	argv[n] = NULL;
	s->pid = spawn(argv, log);
	while (!can_connect_unix(sock)) {
		ck_assert_msg(harness_now() < end, "nbdkit did not start (see %s)", log);
		ck_assert_int_eq(waitpid(s->pid, NULL, WNOHANG), 0);
		usleep(10000);
	}
	snprintf(s->url, sizeof(s->url), "nbd+unix:///?socket=%s", sock);
}

static void server_kill(struct server *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
		s->pid = 0;
	}
}

static void server_free(struct server *s)
{
	char cmd[128];

	server_kill(s);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Range GETs nginx logged (status 206). */
static unsigned ranges_logged(const struct server *s)
{
	char path[128], line[1024];
	unsigned n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/access.log", s->dir);
	if (!(f = fopen(path, "r")))
		return 0;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, "\" 206 ") != NULL;
	fclose(f);
	return n;
}

/*
 * ranges_logged once nginx has written every line it will: a request the
 * client gave up (a restore freed with a read in flight) is logged when
 * nginx notices, later.
 */
static unsigned ranges_settled(const struct server *s)
{
	unsigned n = ranges_logged(s), was;

	for (double end = harness_now() + 5; harness_now() < end;) {
		was = n;
		usleep(300000);
		if ((n = ranges_logged(s)) == was)
			break;
	}
	return n;
}

/* ---- the served memory (as in the source suite) ---- */

struct env {
	struct uffd *u;
	struct uffd_region *r;
	struct uffd_loop *l;
	struct uffd_restore *rs;
	char *mem;
	size_t len, ps;
};

static bool env_anon(struct env *e, size_t len, size_t ps, unsigned loop_flags)
{
	struct uffd_opts uo = { .size = sizeof(uo), .want_features = UFFD_FEATURES_DEFAULT };
	struct uffd_foreign_opts fo = { .size = sizeof(fo), .modes = MISSING, .fd = -1 };
	struct uffd_loop_opts lo = { .size = sizeof(lo), .flags = loop_flags };
	int huge = ps > harness_page_size() ? MAP_HUGETLB : 0, err;

	memset(e, 0, sizeof(*e));
	err = uffd_open(&e->u, &uo);
	if (err == -EPERM || err == -EACCES)
		return false;
	ck_assert_msg(!err, "uffd_open: %s", uffd_last_error());
	if (huge && !(uffd_features(e->u) & UFFD_FEATURE_MISSING_HUGETLBFS)) {
		uffd_close(e->u);
		return false;
	}
	e->len = len;
	e->ps = ps;
	e->mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | huge, -1, 0);
	ck_assert_ptr_ne(e->mem, MAP_FAILED);
	ASSERT_OK(uffd_register(e->u, e->mem, len, MISSING, NULL));
	fo.owner_addr = (uintptr_t)e->mem;
	fo.length = len;
	fo.page_size = ps;
	ASSERT_OK(uffd_region_create_foreign(e->u, &fo, &e->r));
	ASSERT_OK(uffd_loop_new(&e->l, &lo));
	ASSERT_OK(uffd_loop_add(e->l, e->u, NULL, NULL));
	ASSERT_OK(uffd_loop_start(e->l, 1));
	return true;
}

static void env_serve(struct env *e, struct uffd_source *src, const struct uffd_restore_opts *o)
{
	ASSERT_OK(uffd_restore_new(&e->rs, o));
	ASSERT_OK(uffd_restore_add_region_source(e->rs, e->r, src, 0));
	ASSERT_OK(uffd_restore_start(e->rs, e->l));
}

static void env_free(struct env *e)
{
	uffd_restore_free(e->rs);
	munmap(e->mem, e->len);
	uffd_loop_free(e->l);
	uffd_region_destroy(e->r);
	uffd_close(e->u);
}

static struct uffd_restore_stats stats_of(struct uffd_restore *rs)
{
	struct uffd_restore_stats s = { .size = sizeof(s) };

	ASSERT_OK(uffd_restore_stats(rs, &s));
	return s;
}

static struct uffd_source_remote_stats rstats(struct uffd_source *src)
{
	struct uffd_source_remote_stats s = { .size = sizeof(s) };

	ASSERT_OK(uffd_source_remote_stats(src, &s));
	return s;
}

static struct uffd_source *http_source(const char *url, unsigned tries, size_t chunk)
{
	struct uffd_source_http_opts o = { .size = sizeof(o), .tries = tries, .chunk_size = chunk,
					   .backoff_min_ms = 20, .backoff_max_ms = 100, .timeout_ms = 5000 };
	struct uffd_source *s;

	ASSERT_OK(uffd_source_http(&s, url, &o));
	return s;
}

static struct uffd_source *nbd_source(const char *uri, unsigned tries)
{
	struct uffd_source_nbd_opts o = { .size = sizeof(o), .tries = tries, .backoff_min_ms = 20,
					  .backoff_max_ms = 100, .timeout_ms = 5000 };
	struct uffd_source *s;

	ASSERT_OK(uffd_source_nbd(&s, uri, &o));
	return s;
}

static int reap(pid_t pid, double seconds);

#define SKIP_NO(prog) do { if (access(prog, X_OK)) SKIP_TEST("%s is not installed (apt install %s)", prog, strrchr(prog, '/') + 1); } while (0)

/* ---- every byte ---- */

/* Demand faults on every third page, the fill brings the rest; every byte checked. */
static struct uffd_restore_stats every_byte(struct env *e, struct uffd_source *src)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH };
	size_t npages = e->len / e->ps;
	struct uffd_restore_stats s;

	env_serve(e, src, &o);
	for (size_t p = 0; p < npages; p += 3)
		check_page(e->mem, e->ps, p, false);
	ASSERT_OK(uffd_restore_wait(e->rs, 30000));
	for (size_t p = 0; p < npages; p++)
		check_page(e->mem, e->ps, p, false);
	s = stats_of(e->rs);
	ck_assert_uint_eq(s.pages_present, npages);
	ck_assert_uint_eq(s.read_errors, 0);
	return s;
}

static void every_byte_case(bool nbd, bool hugepages)
{
	const char *why = "";
	size_t ps = hugepages ? harness_hugepages(10, &why) : harness_page_size();
	size_t npages = hugepages ? 10 : 2048;
	struct uffd_source_remote_stats r;
	struct uffd_restore_stats s;
	struct uffd_source *src;
	struct server sv;
	struct env e;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	if (!ps)
		SKIP_TEST("no huge pages: %s", why);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	if (nbd)
		nbdkit_start(&sv, NULL, NULL);
	else
		nginx_start(&sv, NULL);
	src = nbd ? nbd_source(sv.url, 3) : http_source(sv.url, 3, 0);
	ck_assert_uint_eq(uffd_source_length(src), npages * ps);
	s = every_byte(&e, src);
	r = rstats(src);
	ck_assert_uint_eq(r.errors, 0);
	ck_assert_uint_eq(r.retries, 0);
	ck_assert_uint_gt(r.requests, 0);
	if (nbd) {	/* block status: hole pages are zero pages, never read */
		ck_assert_uint_eq(s.pages_hole, (npages + 1) / 5);
		ck_assert_uint_eq(r.bytes, (npages - s.pages_hole) * ps);
	} else {	/* coalesced: fewer range GETs than the engine's reads */
		ck_assert_uint_ge(r.bytes, npages * ps);	/* and the gaps of coalesced reads */
		ck_assert_uint_eq(ranges_logged(&sv), r.requests + 1);	/* and the size probe */
	}
	fprintf(stderr, "%s, %zu pages of %zu: %llu requests, %llu bytes, %llu hole pages, %.1f ms\n", nbd ? "nbd" : "http",
		npages, ps, (unsigned long long)r.requests, (unsigned long long)r.bytes,
		(unsigned long long)s.pages_hole, (double)s.complete_ns / 1e6);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}

START_TEST(http_4k) { every_byte_case(false, false); }
END_TEST
START_TEST(http_2m) { every_byte_case(false, true); }
END_TEST
START_TEST(nbd_4k) { every_byte_case(true, false); }
END_TEST
START_TEST(nbd_2m) { every_byte_case(true, true); }
END_TEST

/* ---- one source, used by processes forked after it was opened ---- */

/*
 * A child's restore of the whole image over src, its demand faults starting
 * at a page of its own (so no two children ask the same offsets in the same
 * order); every byte checked, no retry, error or timeout (r0: the counters
 * at the fork). Runs in the child: a failed check ends it non-zero.
 */
static void fork_child(struct uffd_source *src, size_t npages, unsigned i, unsigned nchild,
		       struct uffd_source_remote_stats r0)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH };
	size_t ps = harness_page_size(), first = npages / nchild * i;
	struct uffd_source_remote_stats r;
	struct env e;

	ck_assert(env_anon(&e, npages * ps, ps, 0));
	env_serve(&e, src, &o);
	for (size_t k = 0; k < npages; k += 5)
		check_page(e.mem, ps, (first + k * 7) % npages, false);
	ASSERT_OK(uffd_restore_wait(e.rs, 20000));
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, ps, p, false);
	r = rstats(src);
	ck_assert_uint_eq(r.errors, r0.errors);
	ck_assert_uint_eq(r.retries, r0.retries);
	ck_assert_uint_eq(r.timeouts, r0.timeouts);
	env_free(&e);
}

/*
 * A source opened (for HTTP, also used, its connections kept alive) in one
 * process, then three forked children restoring over it at once: each
 * child reads over connections of its own, never one the parent made: every
 * byte right, no retry, each child done within 30 s. A connection shared by
 * the children crosses replies (the same NBD cookies in every child: wrong
 * bytes or a protocol error), or hangs.
 */
static void fork_case(bool nbd)
{
	enum { NCHILD = 3 };
	size_t ps = harness_page_size(), npages = 4096;
	struct uffd_source_remote_stats r0;
	struct uffd_source *src;
	struct server sv;
	struct env e;
	pid_t kid[NCHILD];
	int st;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	if (nbd)
		nbdkit_start(&sv, "--filter=delay", "delay-read=2ms");
	else
		nginx_start(&sv, "limit_rate 32m;");
	src = nbd ? nbd_source(sv.url, 3) : http_source(sv.url, 3, 0);
	if (!nbd)	/* connections kept alive in this process */
		every_byte(&e, src);
	env_free(&e);	/* no thread left: the children start clean */
	r0 = rstats(src);
	for (unsigned i = 0; i < NCHILD; i++) {
		kid[i] = fork();
		ck_assert_int_ge(kid[i], 0);
		if (kid[i] == 0) {
			fork_child(src, npages, i, NCHILD, r0);
			uffd_source_unref(src);
			_exit(0);
		}
	}
	for (unsigned i = 0; i < NCHILD; i++) {
		st = reap(kid[i], 30);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %u status 0x%x", i, st);
	}
	if (!nbd) {	/* and the parent's kept connections still work */
		ck_assert(env_anon(&e, npages * ps, ps, 0));
		every_byte(&e, src);
		env_free(&e);
	}
	uffd_source_unref(src);
	server_free(&sv);
}

START_TEST(nbd_fork) { fork_case(true); }
END_TEST
START_TEST(http_fork) { fork_case(false); }
END_TEST

/* One source, two restores one after the other (the NBD connection is closed at the first's end). */
static void reuse_case(bool nbd)
{
	size_t ps = harness_page_size(), npages = 512;
	struct uffd_source *src;
	struct server sv;
	struct env e;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	if (nbd)
		nbdkit_start(&sv, NULL, NULL);
	else
		nginx_start(&sv, NULL);
	src = nbd ? nbd_source(sv.url, 3) : http_source(sv.url, 3, 0);
	every_byte(&e, src);
	env_free(&e);
	ck_assert(env_anon(&e, npages * ps, ps, 0));
	every_byte(&e, src);
	ck_assert_uint_eq(rstats(src).errors, 0);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}

START_TEST(http_reuse) { reuse_case(false); }

/*
 * A sparse replay over HTTP fetches no large gap: with a 4 MiB chunk read
 * whole at a time, two traced pages 3 MiB apart in one chunk are two range
 * GETs (the first page with the chunk's start, the second with the chunk's
 * last MiB), not one GET of the chunk. Counted by the source and by nginx.
 */
START_TEST(http_replay_gap)
{
	struct uffd_restore_opts rec = { .size = sizeof(rec), .flags = UFFD_RESTORE_RECORD };
	struct uffd_restore_opts o = { .size = sizeof(o) };
	size_t ps = harness_page_size(), npages = (8u << 20) / ps, far = (3u << 20) / ps + 1;
	size_t want = 2 + ((4u << 20) / ps - far);
	char trace[160];
	struct uffd_source_remote_stats r;
	struct uffd_source *src;
	struct server sv;
	unsigned logged;
	struct env e;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	nginx_start(&sv, NULL);
	snprintf(trace, sizeof(trace), "%s/trace", sv.dir);
	src = http_source(sv.url, 3, 0);	/* the default chunk: 4 MiB */
	env_serve(&e, src, &rec);
	check_page(e.mem, ps, 1, false);
	check_page(e.mem, ps, far, false);
	ASSERT_OK(uffd_restore_save_trace(e.rs, trace));
	env_free(&e);
	uffd_source_unref(src);

	ck_assert(env_anon(&e, npages * ps, ps, 0));
	src = http_source(sv.url, 3, 0);
	logged = ranges_settled(&sv);
	ASSERT_OK(uffd_restore_new(&e.rs, &o));
	ASSERT_OK(uffd_restore_add_region_source(e.rs, e.r, src, 0));
	ASSERT_OK(uffd_restore_load_trace(e.rs, trace));
	ASSERT_OK(uffd_restore_start(e.rs, e.l));
	for (double end = harness_now() + 10; stats_of(e.rs).pages_prefetched < want; usleep(2000))
		ck_assert_msg(harness_now() < end, "the replay did not bring its pages in");
	usleep(100000);	/* a read of more would have completed by now */
	ck_assert_uint_eq(stats_of(e.rs).pages_prefetched, want);
	check_page(e.mem, ps, 1, false);
	check_page(e.mem, ps, far, false);
	r = rstats(src);
	env_free(&e);
	fprintf(stderr, "sparse replay over http: %llu range GETs, %llu bytes\n", (unsigned long long)r.requests,
		(unsigned long long)r.bytes);
	ck_assert_uint_eq(r.bytes, want * ps);
	ck_assert_uint_eq(r.requests, 2);
	ck_assert_uint_eq(ranges_settled(&sv), logged + 2);
	uffd_source_unref(src);
	server_free(&sv);
}
END_TEST

/*
 * The HTTP source's connections are its own: a restore over several kept-
 * alive connections leaves them open while the source lives, and destroying
 * the source closes every one (/proc/self/fd back to its count before).
 */
START_TEST(http_fds)
{
	size_t ps = harness_page_size(), npages = 2048;
	struct uffd_source *src;
	struct server sv;
	struct env e;
	int fds, during;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	nginx_start(&sv, NULL);
	fds = harness_count_fds();
	src = http_source(sv.url, 3, 256u << 10);	/* 32 chunks: every connection used */
	every_byte(&e, src);
	uffd_restore_free(e.rs);
	e.rs = NULL;
	during = harness_count_fds();
	uffd_source_unref(src);
	fprintf(stderr, "http: %d descriptors before the source, %d after its restore, %d after its destroy\n", fds,
		during, harness_count_fds());
	ck_assert_int_gt(during, fds);	/* the kept-alive connections: what the check below is about */
	ck_assert_int_eq(harness_count_fds(), fds);
	env_free(&e);
	server_free(&sv);
}
END_TEST
END_TEST
START_TEST(nbd_reuse) { reuse_case(true); }
END_TEST

/* ---- server down at start, a server ignoring Range ---- */

START_TEST(server_down)
{
	char url[128];
	struct uffd_source *s = NULL;
	struct server sv;
	int port = free_port();

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/snap.img", port);
	ASSERT_ERR(uffd_source_http(&s, url, NULL), -ECONNREFUSED, "127.0.0.1");
	ck_assert_ptr_null(s);
	ASSERT_ERR(uffd_source_nbd(&s, "nbd+unix:///?socket=/var/tmp/uffd-remote-no-such.sock", NULL), -ENOENT,
		   "cannot connect");
	ck_assert_ptr_null(s);
	ASSERT_ERR(uffd_source_http(&s, "ftp://127.0.0.1/x", NULL), -EINVAL, "http://");
	ASSERT_ERR(uffd_source_http(&s, "s3://bucket", NULL), -EINVAL, "s3://bucket/key");
	ASSERT_ERR(uffd_source_nbd(&s, "http://127.0.0.1/x", NULL), -EINVAL, "nbd://");
	SKIP_NO(NGINX);
	/* A server that ignores Range (nginx with max_ranges 0 answers 200 with the whole file). */
	server_dir(&sv, 64 * SUB, SUB);
	nginx_start(&sv, "max_ranges 0;");
	ASSERT_ERR(uffd_source_http(&s, sv.url, NULL), -EPROTO, "must support Range");
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/none.img", sv.port);
	ASSERT_ERR(uffd_source_http(&s, url, NULL), -ENOENT, "404");
	server_free(&sv);
}
END_TEST

/* ---- server killed mid-restore ---- */

static sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_seen;

static void on_bus(int sig)
{
	(void)sig;
	bus_seen = 1;
	siglongjmp(bus_jmp, 1);
}

static void killed_case(bool nbd)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL, .queue_depth = 4 };
	size_t ps = harness_page_size(), npages = 4096, present = 0, unmapped = npages;
	struct sigaction sa = { .sa_handler = on_bus }, old;
	struct uffd_restore_stats s;
	struct uffd_source *src;
	struct server sv;
	struct env e;
	int err;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	if (!env_anon(&e, npages * ps, ps, UFFD_LOOP_POISON_ON_ERROR))
		SKIP_NO_UFFD();
	if (!(uffd_features(e.u) & UFFD_FEATURE_POISON)) {
		env_free(&e);
		SKIP_TEST("UFFD_FEATURE_POISON is not available");
	}
	server_dir(&sv, npages * ps, ps);
	/* Slow enough that the fill is under way when the server dies: 4 MiB/s, 1 ms a read. */
	if (nbd)
		nbdkit_start(&sv, "--filter=delay --filter=rate", "delay-read=1ms rate=32M");
	else
		nginx_start(&sv, "limit_rate 4m;");
	src = nbd ? nbd_source(sv.url, 3) : http_source(sv.url, 3, 256 << 10);
	env_serve(&e, src, &o);
	check_page(e.mem, ps, 7, false);
	usleep(300000);
	server_kill(&sv);
	err = uffd_restore_wait(e.rs, 20000);
	ck_assert_msg(err == -EIO, "restore_wait = %d (%s), want -EIO", err, uffd_last_error());
	s = stats_of(e.rs);
	ck_assert_uint_ge(s.read_errors, 1);
	ck_assert_uint_lt(s.pages_present, npages);
	/* Nothing wrong is ever mapped: every page present holds its bytes; the others are not mapped. */
	for (size_t p = 0; p < npages; p++) {
		if (harness_pagemap(e.mem + p * ps) >> 63) {
			check_page(e.mem, ps, p, false);
			present++;
		}
	}
	unmapped = npages - present;
	ck_assert_uint_gt(unmapped, 0);
	/* A fault on a page never fetched: its read fails again (no server), SIGBUS, never wrong data. */
	for (size_t p = npages - 1; p > 0; p--) {
		if (harness_pagemap(e.mem + p * ps) >> 63)
			continue;
		sigaction(SIGBUS, &sa, &old);
		bus_seen = 0;
		if (!sigsetjmp(bus_jmp, 1))
			(void)*(volatile char *)(e.mem + p * ps);
		sigaction(SIGBUS, &old, NULL);
		ck_assert_int_eq(bus_seen, 1);
		break;
	}
	ck_assert_uint_ge(rstats(src).errors, 1);
	fprintf(stderr, "%s killed: %zu pages present (checked), %zu never mapped, %llu read errors, %llu retries\n",
		nbd ? "nbdkit" : "nginx", present, unmapped, (unsigned long long)s.read_errors,
		(unsigned long long)rstats(src).retries);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}

START_TEST(http_killed) { killed_case(false); }
END_TEST
START_TEST(nbd_killed) { killed_case(true); }
END_TEST

/* ---- injected errors: retried, then failed ---- */

/* Phase of nbd_errors: a restore of the whole image from sv; -EIO or 0 expected. */
static struct uffd_source_remote_stats nbd_restore(const struct server *sv, size_t npages, unsigned tries, int want)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	size_t ps = harness_page_size();
	struct uffd_source_remote_stats r;
	struct uffd_source *src;
	struct env e;
	int err;

	ck_assert(env_anon(&e, npages * ps, ps, UFFD_LOOP_POISON_ON_ERROR));
	src = nbd_source(sv->url, tries);
	env_serve(&e, src, &o);
	err = uffd_restore_wait(e.rs, 30000);
	ck_assert_msg(err == want, "restore_wait = %d (%s), want %d", err, uffd_last_error(), want);
	r = rstats(src);
	if (!want) {
		for (size_t p = 0; p < npages; p++)
			check_page(e.mem, ps, p, false);
		ck_assert_uint_eq(stats_of(e.rs).read_errors, 0);
		ck_assert_uint_eq(r.errors, 0);
	} else {	/* nothing read is mapped: every read failed (zero pages need none) */
		ck_assert_uint_eq(harness_pagemap(e.mem) >> 63, 0);
		ck_assert_uint_eq(stats_of(e.rs).pages_present, stats_of(e.rs).pages_hole);
		ck_assert_uint_ge(r.errors, 1);
		ck_assert_uint_ge(r.requests, (uint64_t)tries * r.errors);
	}
	uffd_source_unref(src);
	env_free(&e);
	return r;
}

START_TEST(nbd_errors)
{
	size_t ps = harness_page_size(), npages = 1024;
	struct uffd_source_remote_stats r;
	char flag[160], params[256];
	struct server sv;
	struct env e;
	int fd;

	SKIP_VALGRIND();
	SKIP_NO(NBDKIT);
	if (!env_anon(&e, npages * ps, ps, UFFD_LOOP_POISON_ON_ERROR))
		SKIP_NO_UFFD();
	env_free(&e);
	server_dir(&sv, npages * ps, ps);
	/* One read in five fails with EIO: with 8 tries every read gets through, after retries. */
	nbdkit_start(&sv, "--filter=error", "error-pread=EIO error-pread-rate=20%");
	r = nbd_restore(&sv, npages, 8, 0);
	ck_assert_uint_gt(r.retries, 0);
	fprintf(stderr, "nbd, 20%% errors: %llu requests, %llu retries, every byte right\n",
		(unsigned long long)r.requests, (unsigned long long)r.retries);
	server_kill(&sv);
	/* Every read fails while the file `fail` exists: 3 tries each, then -EIO, nothing mapped. */
	snprintf(flag, sizeof(flag), "%s/fail", sv.dir);
	snprintf(params, sizeof(params), "error-pread=EIO error-pread-rate=100%% error-pread-file=%s", flag);
	nbdkit_start(&sv, "--filter=error", params);
	fd = open(flag, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	close(fd);
	r = nbd_restore(&sv, npages, 3, -EIO);
	fprintf(stderr, "nbd, every read failing: %llu requests, %llu retries, %llu reads failed\n",
		(unsigned long long)r.requests, (unsigned long long)r.retries, (unsigned long long)r.errors);
	/* The file gone, the same server serves every byte again. */
	ck_assert_int_eq(unlink(flag), 0);
	r = nbd_restore(&sv, npages, 3, 0);
	ck_assert_uint_eq(r.retries, 0);
	server_free(&sv);
}
END_TEST

/* HTTP: an error page from the server (503 while the file is missing) is retried. */
START_TEST(http_errors)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL, .queue_depth = 2 };
	size_t ps = harness_page_size(), npages = 256;
	struct uffd_source *src;
	struct server sv;
	struct env e;
	char path[160], moved[160];
	int err;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!env_anon(&e, npages * ps, ps, UFFD_LOOP_POISON_ON_ERROR))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	/* The object answers 503 while the file is away: the try fails, the source tries again. */
	nginx_start(&sv, "location = /snap.img { try_files /snap.img =503; }");
	src = http_source(sv.url, 3, 64 << 10);
	snprintf(path, sizeof(path), "%s/snap.img", sv.dir);
	snprintf(moved, sizeof(moved), "%s/away.img", sv.dir);
	ck_assert_int_eq(rename(path, moved), 0);
	env_serve(&e, src, &o);
	err = uffd_restore_wait(e.rs, 20000);
	ck_assert_msg(err == -EIO, "restore_wait = %d, want -EIO", err);
	ck_assert_uint_ge(rstats(src).retries, 2);
	ck_assert_uint_ge(rstats(src).errors, 1);
	ck_assert_uint_eq(stats_of(e.rs).pages_present, 0);
	uffd_source_unref(src);
	env_free(&e);
	ck_assert_int_eq(rename(moved, path), 0);
	server_free(&sv);
}
END_TEST

/* ---- a slow server: demand first ---- */

static void slow_case(bool nbd)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	size_t ps = harness_page_size(), npages = 8192;
	struct uffd_source *src;
	struct server sv;
	struct env e;
	double worst = 0, t0;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	/*
	 * The fill takes seconds: nbdkit holds each read 20 ms; nginx sends
	 * each response at 512 KiB/s (the fill reads whole 1 MiB chunks, 8 at
	 * once: 4 MiB/s; a fault's 64 KiB window takes 125 ms).
	 */
	if (nbd)
		nbdkit_start(&sv, "--filter=delay", "delay-read=20ms");
	else
		nginx_start(&sv, "limit_rate 512k;");
	src = nbd ? nbd_source(sv.url, 3) : http_source(sv.url, 3, 1 << 20);
	env_serve(&e, src, &o);
	usleep(200000);
	for (size_t p = npages - 3; p > npages / 2; p -= 257) {
		t0 = harness_now();
		check_page(e.mem, ps, p, false);
		if (harness_now() - t0 > worst)
			worst = harness_now() - t0;
	}
	ck_assert_uint_lt(stats_of(e.rs).pages_present, npages * 3 / 4);
	ck_assert_msg(worst < 0.5, "a demand fault took %.3f s while the fill was queued", worst);
	fprintf(stderr, "%s slow server: worst demand fault %.1f ms, %llu pages present meanwhile\n",
		nbd ? "nbd" : "http", worst * 1e3, (unsigned long long)stats_of(e.rs).pages_present);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}

START_TEST(http_slow) { slow_case(false); }
END_TEST
START_TEST(nbd_slow) { slow_case(true); }
END_TEST

/* A server slower than the timeout: each try times out, is counted, the read fails; bounded. */
START_TEST(nbd_timeout)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL, .queue_depth = 2 };
	struct uffd_source_nbd_opts no = { .size = sizeof(no), .tries = 2, .timeout_ms = 100, .backoff_min_ms = 10,
					   .backoff_max_ms = 20 };
	size_t ps = harness_page_size(), npages = 64;
	struct uffd_source_remote_stats r;
	struct uffd_source *src;
	struct server sv;
	struct env e;
	double t0;
	int err;

	SKIP_VALGRIND();
	SKIP_NO(NBDKIT);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	nbdkit_start(&sv, "--filter=delay", "delay-read=2000ms");
	ASSERT_OK(uffd_source_nbd(&src, sv.url, &no));
	t0 = harness_now();
	env_serve(&e, src, &o);
	err = uffd_restore_wait(e.rs, 20000);
	ck_assert_msg(err == -EIO, "restore_wait = %d (%s), want -EIO", err, uffd_last_error());
	r = rstats(src);
	/* The first try times out; the second is spent on the new connection, which may time out too or fail to be made. */
	ck_assert_uint_ge(r.timeouts, 1);
	ck_assert_uint_ge(r.errors, 1);
	ck_assert_msg(harness_now() - t0 < 1.5, "two tries of 100 ms took %.2f s", harness_now() - t0);
	fprintf(stderr, "nbd, 2 s a read, 100 ms timeout: %llu timeouts, %llu requests, failed in %.0f ms\n",
		(unsigned long long)r.timeouts, (unsigned long long)r.requests, (harness_now() - t0) * 1e3);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}
END_TEST

/* ---- latency: nginx behind the delaying relay ---- */

/* The relay in front of port, rtt_us per round trip; its pid in *pid, its port returned. */
static int relay_start(int port, unsigned rtt_us, pid_t *pid)
{
	char ps[16], rtt[16], buf[16] = "";
	int fds[2];
	ssize_t n;

	snprintf(ps, sizeof(ps), "%d", port);
	snprintf(rtt, sizeof(rtt), "%u", rtt_us);
	ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
	*pid = fork();
	ck_assert_int_ge(*pid, 0);
	if (*pid == 0) {
		dup2(fds[1], 1);
		execl(getenv("DELAY_RELAY"), "delay-relay", ps, rtt, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	ck_assert_int_gt(n, 0);
	return atoi(buf);
}

/* 10 ms per round trip: a demand fault costs about one, never a queue of them; every byte right. */
START_TEST(http_rtt)
{
	struct uffd_restore_opts o = { .size = sizeof(o) };
	size_t ps = harness_page_size(), npages = 4096;
	double worst = 0, best = 1e9, t0, dt;
	struct uffd_source *src;
	struct server sv;
	struct env e;
	char url[128];
	pid_t relay;
	int port;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!getenv("DELAY_RELAY"))
		SKIP_TEST("DELAY_RELAY is not set: the test runs outside meson");
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	nginx_start(&sv, NULL);
	port = relay_start(sv.port, 10000, &relay);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/snap.img", port);
	t0 = harness_now();
	src = http_source(url, 3, 0);
	ck_assert_double_ge(harness_now() - t0, 0.010);	/* the size probe crossed the relay */
	env_serve(&e, src, &o);
	for (size_t p = 1; p < npages; p += 97) {	/* demand only: each fault its own GET */
		t0 = harness_now();
		check_page(e.mem, ps, p, false);
		dt = harness_now() - t0;
		worst = dt > worst ? dt : worst;
		best = dt < best ? dt : best;
	}
	ck_assert_msg(best >= 0.0095, "a fault took %.1f ms through a 10 ms relay", best * 1e3);
	ck_assert_msg(worst < 0.2, "a fault took %.1f ms through a 10 ms relay", worst * 1e3);
	fprintf(stderr, "http through a 10 ms relay: demand faults %.1f..%.1f ms\n", best * 1e3, worst * 1e3);
	ASSERT_OK(uffd_restore_finish(e.rs));
	ASSERT_OK(uffd_restore_wait(e.rs, 30000));
	for (size_t p = 0; p < npages; p++)
		check_page(e.mem, ps, p, false);
	uffd_source_unref(src);
	env_free(&e);
	kill(relay, SIGKILL);
	waitpid(relay, NULL, 0);
	server_free(&sv);
}
END_TEST

/* ---- the chunk cache ---- */

START_TEST(cache_second)
{
	size_t ps = harness_page_size(), npages = 2048;
	struct uffd_source_cache_opts co = { .size = sizeof(co), .chunk_size = 1 << 20 };
	struct uffd_source_remote_stats r1, r2;
	struct uffd_source *http, *src;
	struct server sv;
	struct env e;
	char dir[160];
	unsigned logged;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	nginx_start(&sv, NULL);
	snprintf(dir, sizeof(dir), "%s/cache", sv.dir);
	co.dir = dir;
	http = http_source(sv.url, 3, 0);
	ASSERT_OK(uffd_source_cache(&src, http, &co));
	uffd_source_unref(http);
	every_byte(&e, src);
	r1 = rstats(src);
	ck_assert_uint_eq(r1.cache_fills, npages * ps / (1 << 20));
	env_free(&e);
	uffd_source_unref(src);
	logged = ranges_logged(&sv);
	/* A second restore of the same snapshot (a new source, as another process would make): all local. */
	ck_assert(env_anon(&e, npages * ps, ps, 0));
	http = http_source(sv.url, 3, 0);
	ASSERT_OK(uffd_source_cache(&src, http, &co));
	uffd_source_unref(http);
	every_byte(&e, src);
	r2 = rstats(src);
	ck_assert_uint_eq(r2.requests, 0);
	ck_assert_uint_eq(r2.bytes, 0);
	ck_assert_uint_gt(r2.cache_hits, 0);
	ck_assert_uint_eq(r2.cache_bytes, npages * ps);
	ck_assert_uint_eq(ranges_logged(&sv), logged + 1);	/* only the size probe of the new source */
	fprintf(stderr, "cache: first restore %llu requests, %llu chunks kept; second %llu requests, %llu hits (%llu bytes)\n",
		(unsigned long long)r1.requests, (unsigned long long)r1.cache_fills, (unsigned long long)r2.requests,
		(unsigned long long)r2.cache_hits, (unsigned long long)r2.cache_bytes);
	/* Another object at the same URL (a new size) does not read the old cache. */
	env_free(&e);
	uffd_source_unref(src);
	server_free(&sv);
}
END_TEST

/* Two restores of one snapshot at once on one cache: each chunk fetched once in all. */
struct half {
	struct env e;
	struct uffd_source *src;
};

static void *run_half(void *arg)
{
	struct half *h = arg;
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH };

	env_serve(&h->e, h->src, &o);
	ASSERT_OK(uffd_restore_wait(h->e.rs, 30000));
	return NULL;
}

START_TEST(cache_shared)
{
	size_t ps = harness_page_size(), npages = 4096, chunks = npages * ps / (1 << 20);
	struct uffd_source_cache_opts co = { .size = sizeof(co), .chunk_size = 1 << 20 };
	struct uffd_source_remote_stats r[2];
	struct uffd_source *http;
	struct half h[2];
	void *t[2];
	struct server sv;
	char dir[160];

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	server_dir(&sv, npages * ps, ps);
	/* 16 MiB/s a connection: the two restores overlap for the whole fill. */
	nginx_start(&sv, "limit_rate 16m;");
	snprintf(dir, sizeof(dir), "%s/cache", sv.dir);
	co.dir = dir;
	for (int i = 0; i < 2; i++) {
		if (!env_anon(&h[i].e, npages * ps, ps, 0))
			SKIP_NO_UFFD();
		http = http_source(sv.url, 3, 0);
		ASSERT_OK(uffd_source_cache(&h[i].src, http, &co));	/* each its own files' descriptions, as two processes */
		uffd_source_unref(http);
	}
	for (int i = 0; i < 2; i++)
		t[i] = harness_thread_start(run_half, &h[i]);
	for (int i = 0; i < 2; i++)
		harness_thread_join(t[i]);
	for (int i = 0; i < 2; i++) {
		for (size_t p = 0; p < npages; p++)
			check_page(h[i].e.mem, ps, p, false);
		r[i] = rstats(h[i].src);
	}
	ck_assert_uint_eq(r[0].cache_fills + r[1].cache_fills, chunks);
	ck_assert_uint_eq(r[0].bytes + r[1].bytes, chunks << 20);
	ck_assert_uint_gt(r[0].cache_hits + r[1].cache_hits, 0);	/* the chunks the other one fetched */
	fprintf(stderr, "two restores on one cache: %llu + %llu chunks fetched (%zu in all), %llu + %llu hits\n",
		(unsigned long long)r[0].cache_fills, (unsigned long long)r[1].cache_fills, chunks,
		(unsigned long long)r[0].cache_hits, (unsigned long long)r[1].cache_hits);
	for (int i = 0; i < 2; i++) {
		uffd_source_unref(h[i].src);
		env_free(&h[i].e);
	}
	server_free(&sv);
}
END_TEST

/*
 * One cache source opened in this process, then two forked children
 * restoring through it at once: each child's chunk locks are its own (the
 * state file opened again in the child; a description shared across fork
 * would let both take the same lock), so the chunks are fetched once
 * between them: every byte right in both.
 */
START_TEST(cache_fork)
{
	size_t ps = harness_page_size(), npages = 4096, chunks = npages * ps / (1 << 20);
	struct uffd_source_cache_opts co = { .size = sizeof(co), .chunk_size = 1 << 20 };
	struct uffd_source_remote_stats r[2], r0;
	struct uffd_source *http, *src;
	struct server sv;
	char dir[160];
	pid_t kid[2];
	int pfd[2], st;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	server_dir(&sv, npages * ps, ps);
	nginx_start(&sv, "limit_rate 16m;");	/* the two restores overlap for the whole fill */
	snprintf(dir, sizeof(dir), "%s/cache", sv.dir);
	co.dir = dir;
	http = http_source(sv.url, 3, 0);
	ASSERT_OK(uffd_source_cache(&src, http, &co));
	uffd_source_unref(http);
	r0 = rstats(src);
	ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
	for (int i = 0; i < 2; i++) {
		kid[i] = fork();
		ck_assert_int_ge(kid[i], 0);
		if (kid[i] == 0) {
			struct half h = { .src = src };
			struct uffd_source_remote_stats got;

			close(pfd[0]);
			ck_assert(env_anon(&h.e, npages * ps, ps, 0));
			run_half(&h);
			for (size_t p = 0; p < npages; p++)
				check_page(h.e.mem, ps, p, false);
			got = rstats(src);
			ck_assert_int_eq(write(pfd[1], &got, sizeof(got)), (ssize_t)sizeof(got));
			env_free(&h.e);
			_exit(0);
		}
	}
	close(pfd[1]);
	for (int i = 0; i < 2; i++) {
		st = reap(kid[i], 40);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d status 0x%x", i, st);
	}
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(read(pfd[0], &r[i], sizeof(r[i])), (ssize_t)sizeof(r[i]));
	close(pfd[0]);
	fprintf(stderr, "two forked restores on one cache source: %llu + %llu chunks fetched (%zu in all)\n",
		(unsigned long long)(r[0].cache_fills - r0.cache_fills), (unsigned long long)(r[1].cache_fills - r0.cache_fills),
		chunks);
	ck_assert_uint_eq(r[0].cache_fills + r[1].cache_fills - 2 * r0.cache_fills, chunks);
	uffd_source_unref(src);
	server_free(&sv);
}
END_TEST

/* ---- layered over HTTP ---- */

/* Pieces q%7==1 of the image at path hold ~word (a layer above, or the image it makes); created sparse with create. */
static void change_pieces(const char *path, size_t len, bool create)
{
	uint64_t buf[SUB / 8];
	int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0644);

	ck_assert_int_ge(fd, 0);
	if (create)
		ck_assert_int_eq(ftruncate(fd, (off_t)len), 0);
	for (size_t q = 1; q < len / SUB; q += 7) {
		for (size_t w = 0; w < SUB / 8; w++)
			buf[w] = ~word(q, w);
		ck_assert_int_eq(pwrite(fd, buf, SUB, (off_t)(q * SUB)), (ssize_t)SUB);
	}
	close(fd);
}

/* A restore of e from src (fill, detach): every other page touched, then every page checked (diff layer above). */
static void layered_every_byte(struct env *e, struct uffd_source *src, size_t npages)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL | UFFD_RESTORE_DETACH };

	env_serve(e, src, &o);
	for (size_t p = 0; p < npages; p += 2)
		check_page(e->mem, e->ps, p, true);
	ASSERT_OK(uffd_restore_wait(e->rs, 20000));
	for (size_t p = 0; p < npages; p++)
		check_page(e->mem, e->ps, p, true);
}

START_TEST(layered_http)
{
	struct uffd_source_file_opts fo = { .size = sizeof(fo), .flags = UFFD_SOURCE_FILE_DIFF };
	size_t ps = harness_page_size(), npages = 1024;
	struct uffd_source *l[2], *src;
	struct server sv;
	struct env e;
	char diff[160];
	int fd;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	nginx_start(&sv, NULL);
	/* A local Diff layer over the remote base: pieces q%7==1 changed, the rest holes. */
	snprintf(diff, sizeof(diff), "%s/diff.img", sv.dir);
	change_pieces(diff, npages * ps, true);
	fd = open(diff, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	l[0] = http_source(sv.url, 3, 0);
	ASSERT_OK(uffd_source_file(&l[1], fd, &fo));
	close(fd);
	ASSERT_OK(uffd_source_layered(&src, l, 2, NULL));
	layered_every_byte(&e, src, npages);
	ck_assert_uint_gt(rstats(l[0]).bytes, 0);
	uffd_source_unref(l[0]);
	uffd_source_unref(l[1]);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}
END_TEST

/* ---- compressed snapshots over a remote source (uffd_snap_open_sources) ---- */

/* sv->img packed into sv->dir/name (frames of frame bytes; with parent, a diff from the Diff file img). */
static void pack_to(const struct server *sv, const char *img, const char *name, size_t frame, const char *parent,
		    char *out, size_t outlen)
{
	struct uffd_snap_pack_opts po = { .size = sizeof(po), .frame_size = frame };
	struct uffd_snap *ps = NULL;
	int fd = open(img, O_RDONLY | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	snprintf(out, outlen, "%s/%s", sv->dir, name);
	if (parent) {
		ASSERT_OK(uffd_snap_open(&ps, &parent, 1, NULL));
		po.parent = ps;
		po.flags = UFFD_SNAP_PACK_DIFF;
	}
	ASSERT_OK(uffd_snap_pack(out, fd, &po));
	uffd_snap_close(ps);
	close(fd);
	ck_assert_int_eq(chmod(out, 0644), 0);
}

/* The compressed snapshot of n layers, each read from a remote source (kept in rem[] for their counters). */
static struct uffd_source *snap_over(struct uffd_source *const *rem, unsigned n)
{
	struct uffd_source *src;
	struct uffd_snap *s;

	ASSERT_OK(uffd_snap_open_sources(&s, rem, n, NULL));
	ASSERT_OK(uffd_source_snap(&src, s));
	return src;
}

/*
 * A compressed snapshot served by nginx or nbdkit, read through the remote
 * source: its header and index at open (uffd_source_read_sync), its frames
 * during the restore; every byte checked, with 4 KiB and 2 MiB pages.
 */
static void compressed_case(bool nbd, bool hugepages)
{
	const char *why = "";
	size_t ps = hugepages ? harness_hugepages(10, &why) : harness_page_size();
	size_t npages = hugepages ? 10 : 2048;
	struct uffd_source_remote_stats r;
	struct uffd_source *rem, *src;
	struct server sv;
	char snap[128];
	struct env e;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	if (!ps)
		SKIP_TEST("no huge pages: %s", why);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	pack_to(&sv, sv.img, "snap.snap", 64 << 10, NULL, snap, sizeof(snap));
	snprintf(sv.img, sizeof(sv.img), "%s", snap);	/* what the servers serve */
	if (nbd)
		nbdkit_start(&sv, NULL, NULL);
	else
		nginx_start(&sv, NULL);
	if (!nbd)
		snprintf(sv.url, sizeof(sv.url), "http://127.0.0.1:%d/snap.snap", sv.port);
	rem = nbd ? nbd_source(sv.url, 3) : http_source(sv.url, 3, 0);
	src = snap_over(&rem, 1);
	ck_assert_uint_eq(uffd_source_length(src), npages * ps);
	ck_assert_uint_eq(uffd_source_block_size(src), 64 << 10);
	every_byte(&e, src);
	r = rstats(rem);
	ck_assert_uint_eq(r.errors, 0);
	ck_assert_uint_gt(r.requests, 0);
	ck_assert_uint_le(r.bytes, (uint64_t)npages * ps);	/* compressed: fewer bytes than the image */
	uffd_source_unref(rem);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}

START_TEST(compressed_http) { compressed_case(false, false); }
END_TEST
START_TEST(compressed_http_2m) { compressed_case(false, true); }
END_TEST
START_TEST(compressed_nbd) { compressed_case(true, false); }
END_TEST

/* A compressed base and a compressed diff (pieces q%7==1 changed), both from nginx: one chain. */
START_TEST(compressed_layered_http)
{
	size_t ps = harness_page_size(), npages = 1024;
	char base[192], dsnap[192], diff[160], url[256];
	struct uffd_source *rem[2], *src;
	struct server sv;
	struct env e;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	snprintf(diff, sizeof(diff), "%s/diff.img", sv.dir);
	change_pieces(diff, npages * ps, true);
	pack_to(&sv, sv.img, "base.snap", 64 << 10, NULL, base, sizeof(base));
	pack_to(&sv, diff, "diff.snap", 0, base, dsnap, sizeof(dsnap));
	nginx_start(&sv, NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/base.snap", sv.port);
	rem[0] = http_source(url, 3, 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/diff.snap", sv.port);
	rem[1] = http_source(url, 3, 0);
	src = snap_over(rem, 2);
	layered_every_byte(&e, src, npages);
	ck_assert_uint_gt(rstats(rem[0]).bytes, 0);
	ck_assert_uint_gt(rstats(rem[1]).bytes, 0);
	uffd_source_unref(rem[0]);
	uffd_source_unref(rem[1]);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}
END_TEST

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/*
 * A frame corrupted in the file nginx serves (one bit of its stored
 * bytes): found when it is decompressed; the restore fails with -EIO and
 * a sentence naming the URL and the frame; no page of that frame is
 * mapped, and every page mapped holds the image's bytes.
 */
START_TEST(compressed_http_corrupt)
{
	struct uffd_restore_opts o = { .size = sizeof(o), .flags = UFFD_RESTORE_FILL };
	size_t ps = harness_page_size(), npages = 2048, frame = 256 << 10, fpages = frame / ps;
	struct uffd_source *rem, *src;
	char snap[192], want[320];
	struct server sv;
	struct stat st;
	uint8_t *f;
	uint64_t idx, off;
	struct env e;
	int fd;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	if (!env_anon(&e, npages * ps, ps, 0))
		SKIP_NO_UFFD();
	server_dir(&sv, npages * ps, ps);
	pack_to(&sv, sv.img, "snap.snap", frame, NULL, snap, sizeof(snap));
	fd = open(snap, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	f = malloc((size_t)st.st_size);
	ck_assert_int_eq(pread(fd, f, (size_t)st.st_size, 0), st.st_size);
	idx = get64(f + 40);	/* libuffd-snapshot(5): the index's offset */
	off = get64(f + idx + 2 * 24);	/* frame 2's stored bytes */
	f[off + 30] ^= 0x08;
	ck_assert_int_eq(pwrite(fd, f + off + 30, 1, (off_t)(off + 30)), 1);
	free(f);
	close(fd);
	nginx_start(&sv, NULL);
	snprintf(sv.url, sizeof(sv.url), "http://127.0.0.1:%d/snap.snap", sv.port);
	rem = http_source(sv.url, 3, 0);
	src = snap_over(&rem, 1);	/* header and index are right: it opens */
	env_serve(&e, src, &o);
	ck_assert_int_eq(uffd_restore_wait(e.rs, 20000), -EIO);
	snprintf(want, sizeof(want), "%s: frame 2 ", sv.url);
	ck_assert_msg(strstr(uffd_last_error(), want), "the error does not name the URL and frame: %s",
		      uffd_last_error());
	ck_assert_uint_gt(stats_of(e.rs).read_errors, 0);
	for (size_t p = 0; p < npages; p++) {
		bool mapped = harness_pagemap(e.mem + p * ps) >> 63;

		if (p / fpages == 2)
			ck_assert_msg(!mapped, "page %zu of the corrupt frame is mapped", p);
		else if (mapped)
			check_page(e.mem, ps, p, false);
	}
	uffd_source_unref(rem);
	uffd_source_unref(src);
	env_free(&e);
	server_free(&sv);
}
END_TEST

/* ---- uffd-serve with --memory URL, a Firecracker-like VM (fc-vmm) ---- */

struct vmrun {
	pid_t serve, vmm;
	char sock[128], serve_err[128], vmm_out[128];
};

static pid_t spawn_to(char *const argv[], const char *out, const char *err)
{
	pid_t pid = fork();

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		dup2(o, 1);
		dup2(e, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

/* Waits up to seconds for pid; its waitpid status. */
static int reap(pid_t pid, double seconds)
{
	double end = harness_now() + seconds;
	int st;

	while (waitpid(pid, &st, WNOHANG) == 0) {
		if (harness_now() > end) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			ck_abort_msg("process %d did not end within %.0f s", (int)pid, seconds);
		}
		usleep(2000);
	}
	return st;
}

static bool file_has(const char *path, const char *text)
{
	char buf[8192] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	return n > 0 && strstr(buf, text);
}

/* uffd-serve --memory url (and extra options), fc-vmm checking against the local copy. */
static void vm_start(struct vmrun *v, const struct server *sv, const char *url, const char *const *extra,
		     const char *pace)
{
	char *sa[24] = { getenv("UFFD_SERVE"), "--socket", v->sock, "--memory", (char *)url, "--timeout", "20000" };
	char out[160];
	int n = 7;

	snprintf(v->sock, sizeof(v->sock), "%s/vm.sock", sv->dir);
	snprintf(v->serve_err, sizeof(v->serve_err), "%s/serve.err", sv->dir);
	snprintf(v->vmm_out, sizeof(v->vmm_out), "%s/vmm.out", sv->dir);
	snprintf(out, sizeof(out), "%s/serve.out", sv->dir);
	while (extra && *extra)
		sa[n++] = (char *)*extra++;
	v->serve = spawn_to(sa, out, v->serve_err);
	snprintf(out, sizeof(out), "%s/vmm.err", sv->dir);
	v->vmm = spawn_to((char *[]){ getenv("FC_VMM"), "--socket", v->sock, "--memory", (char *)sv->img, "--touch-pct", "100",
				      "--pace-us", (char *)pace, "--deadline", "40", NULL }, v->vmm_out, out);
}

#define SKIP_NO_SERVE() do { if (!getenv("UFFD_SERVE") || !getenv("FC_VMM")) \
	SKIP_TEST("UFFD_SERVE or FC_VMM is not set: uffd-serve or fc-vmm is not built, or the test runs outside meson"); } while (0)

/* Every page of a VM served from nginx through the cache, then from the cache alone. */
START_TEST(serve_http)
{
	const char *const extra[] = { "--cache-dir", NULL, "--fill", NULL };
	struct server sv;
	struct vmrun v;
	char cache[160];
	unsigned logged;
	int st;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	SKIP_NO_SERVE();
	server_dir(&sv, 32u << 20, SUB);
	nginx_start(&sv, NULL);
	snprintf(cache, sizeof(cache), "%s/cache", sv.dir);
	((const char **)extra)[1] = cache;
	for (int round = 0; round < 2; round++) {
		logged = ranges_logged(&sv);
		vm_start(&v, &sv, sv.url, extra, "0");
		st = reap(v.vmm, 45);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fc-vmm status 0x%x", st);
		ck_assert_msg(file_has(v.vmm_out, "touched=8192 ") && file_has(v.vmm_out, " bad_pages=0 "),
			      "fc-vmm did not see every byte right");
		st = reap(v.serve, 15);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "uffd-serve status 0x%x", st);
		if (round == 1)	/* the second serve: only its size probe went to the server */
			ck_assert_uint_eq(ranges_logged(&sv), logged + 1);
		else
			ck_assert_uint_gt(ranges_logged(&sv), logged + 1);
	}
	server_free(&sv);
}
END_TEST

/* GET of uffd-serve's metrics on the Unix socket path: the body (malloc'd). */
static char *scrape(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	static const char req[] = "GET /metrics HTTP/1.0\r\n\r\n";
	size_t cap = 1 << 20, n = 0;
	char *buf = malloc(cap), *body;
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ssize_t r;

	ck_assert_ptr_nonnull(buf);
	ck_assert_int_ge(s, 0);
	ck_assert_uint_lt(strlen(path), sizeof(a.sun_path));
	memcpy(a.sun_path, path, strlen(path) + 1);
	ck_assert_msg(!connect(s, (struct sockaddr *)&a, sizeof(a)), "connect %s: %s", path, strerror(errno));
	ck_assert_int_eq(write(s, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	while (n < cap - 1 && (r = read(s, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	close(s);
	buf[n] = 0;
	body = strstr(buf, "\r\n\r\n");
	ck_assert_msg(body && strstr(buf, " 200 "), "not a 200 answer: %.300s", buf);
	memmove(buf, body + 4, strlen(body + 4) + 1);
	return buf;
}

/* promtool check metrics accepts the text (no check without promtool: said on stderr). */
static void promtool_ok(const char *dir, const char *body)
{
	char path[200], cmd[512];
	FILE *f;
	int st;

	if (system("command -v promtool >/dev/null 2>&1")) {
		fprintf(stderr, "promtool is not installed: the metrics' format is not checked\n");
		return;
	}
	snprintf(path, sizeof(path), "%s/metrics.txt", dir);
	f = fopen(path, "we");
	ck_assert_ptr_nonnull(f);
	fputs(body, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "promtool check metrics < '%s' > '%s.out' 2>&1", path, path);
	st = system(cmd);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "promtool check metrics failed (see %s.out): %.2000s", path,
		      body);
}

/* The value of the sample NAME{vm="PID"} in body; -1 when absent. */
static long long sample(const char *body, const char *name, pid_t pid)
{
	char want[160];
	const char *p;

	snprintf(want, sizeof(want), "\n%s{vm=\"%d\"} ", name, (int)pid);
	p = strstr(body, want);
	return p ? strtoll(p + strlen(want), NULL, 10) : -1;
}

/* The number after "KEY": in a file (uffd-serve's JSON summary); -1 when absent. */
static long long json_num(const char *path, const char *key)
{
	char buf[8192] = "", want[64];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	const char *p;

	if (fd >= 0)
		close(fd);
	snprintf(want, sizeof(want), "\"%s\":", key);
	p = n > 0 ? strstr(buf, want) : NULL;
	return p ? strtoll(p + strlen(want), NULL, 10) : -1;
}

/*
 * The remote counters of uffd-serve, from nginx through the chunk cache.
 * A first serve with --fill: its JSON summary counts requests, bytes and
 * chunks fetched into the cache. A second serve of the same snapshot,
 * scraped (--metrics) while its paced VM runs: promtool accepts the text,
 * the remote families count cache hits and nothing sent to the server.
 */
START_TEST(serve_metrics)
{
	const char *first[] = { "--cache-dir", NULL, "--fill", "--json", NULL };
	const char *second[] = { "--cache-dir", NULL, "--json", "--metrics", NULL, NULL };
	char cache[160], maddr[200], msock[180], out[200], *body;
	struct server sv;
	struct vmrun v;
	int st;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	SKIP_NO_SERVE();
	server_dir(&sv, 32u << 20, SUB);
	nginx_start(&sv, NULL);
	snprintf(cache, sizeof(cache), "%s/cache", sv.dir);
	snprintf(msock, sizeof(msock), "%s/m.sock", sv.dir);
	snprintf(maddr, sizeof(maddr), "unix:%s", msock);
	snprintf(out, sizeof(out), "%s/serve.out", sv.dir);
	first[1] = second[1] = cache;
	second[4] = maddr;
	for (int round = 0; round < 2; round++) {
		vm_start(&v, &sv, sv.url, round ? second : first, round ? "300" : "0");
		if (round) {
			for (double end = harness_now() + 10; !file_has(v.vmm_out, "FCVMM resumed"); usleep(5000))
				ck_assert(harness_now() < end);
			usleep(300000);
			body = scrape(msock);
			promtool_ok(sv.dir, body);
			fprintf(stderr, "scraped: requests %lld, bytes %lld, cache hits %lld (%lld bytes), fills %lld\n",
				sample(body, "uffd_serve_remote_requests_total", v.vmm),
				sample(body, "uffd_serve_remote_bytes_total", v.vmm),
				sample(body, "uffd_serve_remote_cache_hits_total", v.vmm),
				sample(body, "uffd_serve_remote_cache_hit_bytes_total", v.vmm),
				sample(body, "uffd_serve_remote_cache_fills_total", v.vmm));
			ck_assert_int_gt(sample(body, "uffd_serve_remote_cache_hits_total", v.vmm), 0);
			ck_assert_int_gt(sample(body, "uffd_serve_remote_cache_hit_bytes_total", v.vmm), 0);
			ck_assert_int_eq(sample(body, "uffd_serve_remote_cache_fills_total", v.vmm), 0);
			ck_assert_int_eq(sample(body, "uffd_serve_remote_requests_total", v.vmm), 0);
			ck_assert_int_eq(sample(body, "uffd_serve_remote_bytes_total", v.vmm), 0);
			ck_assert_int_eq(sample(body, "uffd_serve_remote_retries_total", v.vmm), 0);
			ck_assert_int_eq(sample(body, "uffd_serve_remote_timeouts_total", v.vmm), 0);
			ck_assert_int_eq(sample(body, "uffd_serve_remote_errors_total", v.vmm), 0);
			free(body);
		}
		st = reap(v.vmm, 45);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fc-vmm status 0x%x", st);
		ck_assert_msg(file_has(v.vmm_out, " bad_pages=0 "), "fc-vmm did not see every byte right");
		st = reap(v.serve, 15);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "uffd-serve status 0x%x", st);
		fprintf(stderr, "serve %d summary: requests %lld, cache hits %lld, chunks fetched %lld\n", round,
			json_num(out, "requests"), json_num(out, "cache_hits"), json_num(out, "cache_fills"));
		if (round == 0) {
			ck_assert_int_gt(json_num(out, "requests"), 0);
			ck_assert_int_ge(json_num(out, "cache_fills"), 8);	/* 32 MiB in chunks of at most 4 MiB */
			ck_assert_int_eq(json_num(out, "retries"), 0);
		} else {
			ck_assert_int_gt(json_num(out, "cache_hits"), 0);
			ck_assert_int_eq(json_num(out, "requests"), 0);
		}
	}
	server_free(&sv);
}
END_TEST

/*
 * uffd-serve --memory URL of a compressed snapshot (told by its first
 * bytes), from nginx with a compressed diff as --layer URL, or from
 * nbdkit: every page of the VM right.
 */
static void serve_compressed_case(bool nbd)
{
	const char *const extra[] = { "--layer", NULL, NULL };
	size_t len = 32u << 20;
	char base[128], dsnap[160], diff[160], plain[128], url[256], lurl[256];
	struct server sv;
	struct vmrun v;
	int st;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	SKIP_NO_SERVE();
	server_dir(&sv, len, SUB);
	snprintf(plain, sizeof(plain), "%s", sv.img);
	pack_to(&sv, sv.img, "base.snap", 0, NULL, base, sizeof(base));
	if (nbd) {
		snprintf(sv.img, sizeof(sv.img), "%s", base);	/* nbdkit serves it */
		nbdkit_start(&sv, NULL, NULL);
		snprintf(url, sizeof(url), "%s", sv.url);
	} else {
		/* a diff (pieces q%7==1 changed), packed, and the image it makes, for fc-vmm */
		snprintf(diff, sizeof(diff), "%s/diff.img", sv.dir);
		change_pieces(diff, len, true);
		pack_to(&sv, diff, "diff.snap", 0, base, dsnap, sizeof(dsnap));
		change_pieces(plain, len, false);
		nginx_start(&sv, NULL);
		snprintf(url, sizeof(url), "http://127.0.0.1:%d/base.snap", sv.port);
		snprintf(lurl, sizeof(lurl), "http://127.0.0.1:%d/diff.snap", sv.port);
		((const char **)extra)[1] = lurl;
	}
	snprintf(sv.img, sizeof(sv.img), "%s", plain);	/* what fc-vmm compares with */
	vm_start(&v, &sv, url, nbd ? NULL : extra, "0");
	st = reap(v.vmm, 45);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fc-vmm status 0x%x", st);
	ck_assert_msg(file_has(v.vmm_out, "touched=8192 ") && file_has(v.vmm_out, " bad_pages=0 "),
		      "fc-vmm did not see every byte right");
	st = reap(v.serve, 15);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "uffd-serve status 0x%x", st);
	if (!nbd)
		ck_assert_uint_gt(ranges_logged(&sv), 2);
	server_free(&sv);
}

START_TEST(serve_compressed_http) { serve_compressed_case(false); }
END_TEST
START_TEST(serve_compressed_nbd) { serve_compressed_case(true); }
END_TEST

/*
 * uffd-serve --memory URL of a compressed snapshot with a corrupt frame:
 * the VM is killed (--on-fatal kill), never fed the frame's bytes, and
 * uffd-serve's error names the URL and the frame.
 */
START_TEST(serve_compressed_corrupt)
{
	char snap[128], url[256], want[320], plain[128];
	struct server sv;
	struct vmrun v;
	uint8_t hb[48], eb[8], bit;
	uint64_t idx, off;
	int st, fd;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	SKIP_NO_SERVE();
	server_dir(&sv, 32u << 20, SUB);
	snprintf(plain, sizeof(plain), "%s", sv.img);
	pack_to(&sv, sv.img, "snap.snap", 0, NULL, snap, sizeof(snap));
	fd = open(snap, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread(fd, hb, sizeof(hb), 0), (ssize_t)sizeof(hb));
	idx = get64(hb + 40);	/* libuffd-snapshot(5): the index's offset */
	ck_assert_int_eq(pread(fd, eb, sizeof(eb), (off_t)(idx + 5 * 24)), (ssize_t)sizeof(eb));
	off = get64(eb) + 30;	/* in frame 5's stored bytes */
	ck_assert_int_eq(pread(fd, &bit, 1, (off_t)off), 1);
	bit ^= 0x08;
	ck_assert_int_eq(pwrite(fd, &bit, 1, (off_t)off), 1);
	close(fd);
	nginx_start(&sv, NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/snap.snap", sv.port);
	vm_start(&v, &sv, url, NULL, "0");
	st = reap(v.vmm, 45);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "fc-vmm status 0x%x", st);
	st = reap(v.serve, 15);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "uffd-serve status 0x%x", st);
	snprintf(want, sizeof(want), "%s: frame 5 ", url);
	if (!file_has(v.serve_err, want)) {
		char text[4096] = "";
		int efd = open(v.serve_err, O_RDONLY | O_CLOEXEC);
		ssize_t got = efd >= 0 ? read(efd, text, sizeof(text) - 1) : -1;

		if (efd >= 0)
			close(efd);
		text[got > 0 ? got : 0] = 0;
		for (char *c = text; *c; c++)
			*c = *c == '\n' ? '|' : *c;	/* one line for check */
		ck_abort_msg("uffd-serve's error does not name %s: %s", want, text);
	}
	server_free(&sv);
}
END_TEST

/*
 * uffd-serve's summary counts no descriptor of the snapshot's HTTP source
 * as leaked: the kept-alive connections of the fill are the source's, and
 * closed with it; nothing else the serve opened is left open.
 */
START_TEST(serve_fds)
{
	const char *const extra[] = { "--fill", "--json", NULL };
	char out[200];
	struct server sv;
	struct vmrun v;
	int st;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	SKIP_NO_SERVE();
	server_dir(&sv, 32u << 20, SUB);
	nginx_start(&sv, NULL);
	snprintf(out, sizeof(out), "%s/serve.out", sv.dir);
	vm_start(&v, &sv, sv.url, extra, "0");
	st = reap(v.vmm, 45);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fc-vmm status 0x%x", st);
	ck_assert_msg(file_has(v.vmm_out, " bad_pages=0 "), "fc-vmm did not see every byte right");
	st = reap(v.serve, 15);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "uffd-serve status 0x%x", st);
	fprintf(stderr, "serve over http: %lld requests, %lld descriptors leaked\n", json_num(out, "requests"),
		json_num(out, "fds_leaked"));
	ck_assert_int_gt(json_num(out, "requests"), 1);
	ck_assert_int_eq(json_num(out, "fds_leaked"), 0);
	server_free(&sv);
}
END_TEST

/* How many times text is in the file at path. */
static unsigned count_in(const char *path, const char *text)
{
	char buf[65536] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	unsigned c = 0;

	if (fd >= 0)
		close(fd);
	for (const char *p = n > 0 ? strstr(buf, text) : NULL; p; p = strstr(p + 1, text))
		c++;
	return c;
}

/*
 * uffd-serve --multi over a remote source: three VMs at once, each served by
 * a child of the process that opened the source, their restores overlapping
 * (a slowed server). Each child reads over connections of its own: every byte
 * right in every VM, each VM done within 30 s. A connection made before the
 * fork and used by several children hangs, breaks, or hands one child's reply
 * to another's request (the same NBD cookies in every child).
 */
static void serve_multi_case(bool nbd)
{
	enum { NVM = 3 };
	char sock[128], out[160], err[160], vout[NVM][160], verr[160];
	struct server sv;
	pid_t serve, vmm[NVM];
	int st;

	SKIP_VALGRIND();
	SKIP_NO(nbd ? NBDKIT : NGINX);
	SKIP_NO_SERVE();
	server_dir(&sv, 32u << 20, SUB);
	if (nbd)
		nbdkit_start(&sv, "--filter=delay", "delay-read=3ms");
	else
		nginx_start(&sv, "limit_rate 8m;");
	snprintf(sock, sizeof(sock), "%s/vm.sock", sv.dir);
	snprintf(out, sizeof(out), "%s/serve.out", sv.dir);
	snprintf(err, sizeof(err), "%s/serve.err", sv.dir);
	serve = spawn_to((char *[]){ getenv("UFFD_SERVE"), "--socket", sock, "--memory", sv.url, "--multi", "--json", NULL },
			 out, err);
	for (int i = 0; i < NVM; i++) {
		snprintf(vout[i], sizeof(vout[i]), "%s/vmm%d.out", sv.dir, i);
		snprintf(verr, sizeof(verr), "%s/vmm%d.err", sv.dir, i);
		vmm[i] = spawn_to((char *[]){ getenv("FC_VMM"), "--socket", sock, "--memory", sv.img, "--touch-pct", "100",
					      "--pace-us", "50", "--deadline", "40", NULL }, vout[i], verr);
	}
	for (int i = 0; i < NVM; i++) {
		st = reap(vmm[i], 30);
		ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fc-vmm %d status 0x%x", i, st);
		ck_assert_msg(file_has(vout[i], "touched=8192 ") && file_has(vout[i], " bad_pages=0 "),
			      "fc-vmm %d did not see every byte right", i);
	}
	for (double end = harness_now() + 10; count_in(out, "\"end\":\"vm-exit\"") < NVM; usleep(5000))
		ck_assert_msg(harness_now() < end, "uffd-serve did not write a vm-exit summary per VM");
	kill(serve, SIGTERM);
	st = reap(serve, 15);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "uffd-serve status 0x%x", st);
	server_free(&sv);
}

START_TEST(serve_multi_nbd) { serve_multi_case(true); }
END_TEST
START_TEST(serve_multi_http) { serve_multi_case(false); }
END_TEST

/* The server dies while the VM runs: the VM is killed (--on-fatal kill), never fed wrong bytes. */
START_TEST(serve_killed)
{
	struct server sv;
	struct vmrun v;
	int st;

	SKIP_VALGRIND();
	SKIP_NO(NGINX);
	SKIP_NO_SERVE();
	server_dir(&sv, 64u << 20, SUB);
	nginx_start(&sv, NULL);
	vm_start(&v, &sv, sv.url, (const char *const[]){ "--remote-tries", "2", NULL }, "1000");
	for (double end = harness_now() + 10; !file_has(v.vmm_out, "FCVMM resumed"); usleep(5000))
		ck_assert(harness_now() < end);
	usleep(200000);
	server_kill(&sv);
	st = reap(v.vmm, 10);
	ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "fc-vmm status 0x%x", st);
	st = reap(v.serve, 10);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "uffd-serve status 0x%x", st);
	server_free(&sv);
}
END_TEST

/* A server that is not there: uffd-serve says so and exits 3 before its socket exists. */
START_TEST(serve_down)
{
	char url[128], out[160];
	struct server sv;
	pid_t pid;
	int st;

	SKIP_NO_SERVE();
	server_dir(&sv, 64 * SUB, SUB);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/snap.img", free_port());
	snprintf(out, sizeof(out), "%s/serve.out", sv.dir);
	snprintf(sv.url, sizeof(sv.url), "%s/serve.err", sv.dir);
	pid = spawn_to((char *[]){ getenv("UFFD_SERVE"), "--socket", "/var/tmp/uffd-remote-never.sock", "--memory", url, NULL },
		       out, sv.url);
	st = reap(pid, 10);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 3, "uffd-serve status 0x%x", st);
	ck_assert(file_has(sv.url, "cannot read the snapshot http://127.0.0.1"));
	ck_assert_int_ne(access("/var/tmp/uffd-remote-never.sock", F_OK), 0);
	server_free(&sv);
}
END_TEST

/* ---- arguments ---- */

START_TEST(remote_args)
{
	struct uffd_source_http_opts ho = { .size = sizeof(ho) };
	struct uffd_source_cache_opts co = { .size = sizeof(co) };
	struct uffd_source_remote_stats st = { .size = sizeof(st) };
	struct uffd_source *s = NULL, *f;
	const char *bad_hdr[] = { "no colon", NULL };
	char path[] = "/var/tmp/uffd-remote-args-XXXXXX";
	int fd = mkstemp(path);

	ASSERT_ERR(uffd_source_http(NULL, "http://127.0.0.1/", NULL), -EINVAL, "out is NULL");
	ho.headers = bad_hdr;
	ASSERT_ERR(uffd_source_http(&s, "http://127.0.0.1/", &ho), -EINVAL, "Name: value");
	ho.headers = NULL;
	ho.backoff_min_ms = 900;
	ho.backoff_max_ms = 100;
	ASSERT_ERR(uffd_source_http(&s, "http://127.0.0.1:1/", &ho), -EINVAL, "backoff_min_ms");
	ho = (struct uffd_source_http_opts){ .size = sizeof(ho), .endpoint = "ftp://x" };
	setenv("AWS_ACCESS_KEY_ID", "k", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "s", 1);
	ASSERT_ERR(uffd_source_http(&s, "s3://b/k", &ho), -EINVAL, "endpoint");
	unsetenv("AWS_ACCESS_KEY_ID");
	ASSERT_ERR(uffd_source_http(&s, "s3://b/k", NULL), -EINVAL, "AWS_ACCESS_KEY_ID");
	ASSERT_ERR(uffd_source_nbd(&s, "nbd://x", &(struct uffd_source_nbd_opts){ .size = sizeof(struct uffd_source_nbd_opts),
		   .flags = 8 }), -EINVAL, "flags");
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
	ASSERT_OK(uffd_source_file(&f, fd, NULL));
	ASSERT_ERR(uffd_source_remote_stats(f, &st), -ENOTSUP, "not a remote");
	ASSERT_ERR(uffd_source_cache(&s, f, NULL), -EINVAL, "dir");
	co.dir = "/var/tmp";
	co.chunk_size = 3000;
	ASSERT_ERR(uffd_source_cache(&s, f, &co), -EINVAL, "power of two");
	ck_assert_ptr_null(s);
	uffd_source_unref(f);
	close(fd);
	unlink(path);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("remote");
	TCase *tc;

	tc = CASE(http_4k, 60);
	tcase_add_test(tc, http_4k);
	tc = CASE(http_2m, 60);
	tcase_add_test(tc, http_2m);
	tc = CASE(nbd_4k, 60);
	tcase_add_test(tc, nbd_4k);
	tc = CASE(nbd_2m, 60);
	tcase_add_test(tc, nbd_2m);
	tc = CASE(http_reuse, 30);
	tcase_add_test(tc, http_reuse);
	tc = CASE(http_replay_gap, 30);
	tcase_add_test(tc, http_replay_gap);
	tc = CASE(http_fds, 30);
	tcase_add_test(tc, http_fds);
	tc = CASE(nbd_reuse, 30);
	tcase_add_test(tc, nbd_reuse);
	tc = CASE(server_down, 30);
	tcase_add_test(tc, server_down);
	tc = CASE(http_killed, 60);
	tcase_add_test(tc, http_killed);
	tc = CASE(nbd_killed, 60);
	tcase_add_test(tc, nbd_killed);
	tc = CASE(nbd_errors, 60);
	tcase_add_test(tc, nbd_errors);
	tc = CASE(http_errors, 60);
	tcase_add_test(tc, http_errors);
	tc = CASE(http_slow, 60);
	tcase_add_test(tc, http_slow);
	tc = CASE(nbd_slow, 60);
	tcase_add_test(tc, nbd_slow);
	tc = CASE(nbd_timeout, 30);
	tcase_add_test(tc, nbd_timeout);
	tc = CASE(http_rtt, 60);
	tcase_add_test(tc, http_rtt);
	tc = CASE(cache_second, 60);
	tcase_add_test(tc, cache_second);
	tc = CASE(cache_shared, 60);
	tcase_add_test(tc, cache_shared);
	tc = CASE(layered_http, 60);
	tcase_add_test(tc, layered_http);
	tc = CASE(compressed_http, 30);
	tcase_add_test(tc, compressed_http);
	tc = CASE(compressed_http_2m, 30);
	tcase_add_test(tc, compressed_http_2m);
	tc = CASE(compressed_nbd, 30);
	tcase_add_test(tc, compressed_nbd);
	tc = CASE(compressed_layered_http, 30);
	tcase_add_test(tc, compressed_layered_http);
	tc = CASE(compressed_http_corrupt, 30);
	tcase_add_test(tc, compressed_http_corrupt);
	tc = CASE(serve_http, 60);
	tcase_add_test(tc, serve_http);
	tc = CASE(serve_metrics, 60);
	tcase_add_test(tc, serve_metrics);
	tc = CASE(serve_compressed_http, 60);
	tcase_add_test(tc, serve_compressed_http);
	tc = CASE(serve_compressed_nbd, 60);
	tcase_add_test(tc, serve_compressed_nbd);
	tc = CASE(serve_compressed_corrupt, 60);
	tcase_add_test(tc, serve_compressed_corrupt);
	tc = CASE(serve_fds, 60);
	tcase_add_test(tc, serve_fds);
	tc = CASE(serve_multi_nbd, 60);
	tcase_add_test(tc, serve_multi_nbd);
	tc = CASE(serve_multi_http, 60);
	tcase_add_test(tc, serve_multi_http);
	tc = CASE(nbd_fork, 60);
	tcase_add_test(tc, nbd_fork);
	tc = CASE(http_fork, 60);
	tcase_add_test(tc, http_fork);
	tc = CASE(cache_fork, 60);
	tcase_add_test(tc, cache_fork);
	tc = CASE(serve_killed, 40);
	tcase_add_test(tc, serve_killed);
	tc = CASE(serve_down, 20);
	tcase_add_test(tc, serve_down);
	tc = CASE(remote_args, 20);
	tcase_add_test(tc, remote_args);
	return s;
}

int main(void)
{
	return harness_run(suite());
}
