/* SPDX-License-Identifier: MIT */
/*
 * fc-handler: a custom page-fault handler for a Firecracker snapshot
 * restore ("Uffd" memory backend), written on libuffd's exports alone, as a
 * platform with its own policy would write one:
 *   uffd_fc_handshake_recv()      the VM's userfaultfd, regions and pidfd
 *   uffd_features_of_fd()         the features to take the fd over with
 *   uffd_open_fd()                the handle
 *   uffd_region_create_foreign()  a region per guest memory slot, 4 KiB or
 *                                 hugetlbfs pages alike
 *   uffd_restore_*()              the pages, from the snapshot file
 *   uffd_loop_*()                 the faults, until the VM exits
 * One VM, then exit: 0 when the VM exited, 1 on an error (the VM, once it
 * waits for us, is killed then: it could never be served), 2 usage.
 *
 * usage: fc-handler --socket PATH --memory SNAPSHOT
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <uffd.h>

struct handler {
	struct uffd_fc_handshake *h;
	struct uffd *u;
	struct uffd_region **r;
	size_t nr;
	struct uffd_restore *rs;
	struct uffd_loop *l;
};

static int fail(const char *what, int err)
{
	fprintf(stderr, "fc-handler: %s: %s (%s)\n", what, strerror(-err), uffd_last_error());
	return err;
}

static int listen_on(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (s < 0 || strlen(path) >= sizeof(a.sun_path))
		return -1;
	strcpy(a.sun_path, path);
	unlink(path);
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 1)) {
		close(s);
		return -1;
	}
	return s;
}

/* Each region of the VM: declared on the handle, served from the snapshot at its offset. */
static int setup(struct handler *hd, int snap)
{
	struct uffd_restore_opts ro = { .size = sizeof(ro) };
	uint64_t features;
	int err;

	if ((err = uffd_features_of_fd(hd->h->uffd, &features)) ||
	    (err = uffd_open_fd(&hd->u, hd->h->uffd, features)))
		return fail("taking the VM's userfaultfd", err);
	hd->h->uffd = -1;	/* the handle owns it */
	if ((err = uffd_restore_new(&hd->rs, &ro)))
		return fail("uffd_restore_new", err);
	if (!(hd->r = calloc(hd->h->nregions, sizeof(*hd->r))))
		return fail("calloc", -ENOMEM);
	for (; hd->nr < hd->h->nregions; hd->nr++) {
		const struct uffd_fc_region *g = &hd->h->regions[hd->nr];
		struct uffd_foreign_opts fo = { .size = sizeof(fo), .owner_addr = g->owner_addr,
						.length = g->length, .page_size = g->page_size,
						.modes = UFFDIO_REGISTER_MODE_MISSING, .fd = -1 };

		if ((err = uffd_region_create_foreign(hd->u, &fo, &hd->r[hd->nr])))
			return fail("uffd_region_create_foreign", err);
		if ((err = uffd_restore_add_region(hd->rs, hd->r[hd->nr], snap, g->offset))) {
			uffd_region_destroy(hd->r[hd->nr]);
			return fail("uffd_restore_add_region", err);
		}
	}
	return 0;
}

/* The loop in this thread until the VM's pidfd says it exited. */
static int run(struct handler *hd)
{
	struct uffd_watch_opts wo = { .size = sizeof(wo), .owner_fd = hd->h->pidfd,
				      .flags = UFFD_WATCH_OWNER | UFFD_WATCH_STOP_LOOP };
	int err;

	if ((err = uffd_loop_new(&hd->l, NULL)) || (err = uffd_loop_add_opts(hd->l, hd->u, NULL, NULL, &wo)) ||
	    (err = uffd_restore_start(hd->rs, hd->l)) || (err = uffd_loop_run(hd->l)))
		return fail("serving", err);
	return 0;
}

static void teardown(struct handler *hd)
{
	uffd_restore_free(hd->rs);
	uffd_loop_free(hd->l);
	for (size_t i = 0; i < hd->nr; i++)
		uffd_region_destroy(hd->r[i]);
	free(hd->r);
	uffd_close(hd->u);
	uffd_fc_handshake_free(hd->h);
}

int main(int argc, char **argv)
{
	struct handler hd = { 0 };
	struct uffd_fc_opts fo = { .size = sizeof(fo), .timeout_ms = 10000 };
	struct stat st;
	int snap, ls, conn, err;

	if (argc != 5 || strcmp(argv[1], "--socket") || strcmp(argv[3], "--memory")) {
		fprintf(stderr, "usage: fc-handler --socket PATH --memory SNAPSHOT\n");
		return 2;
	}
	snap = open(argv[4], O_RDONLY | O_CLOEXEC);
	if (snap < 0 || fstat(snap, &st) || (ls = listen_on(argv[2])) < 0) {
		fprintf(stderr, "fc-handler: cannot open %s or listen on %s: %s\n", argv[4], argv[2], strerror(errno));
		return 1;
	}
	fo.file_size = (uint64_t)st.st_size;
	conn = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	err = conn < 0 ? -errno : uffd_fc_handshake_recv(conn, &fo, &hd.h);
	if (err)
		fail("the VM's handshake", err);
	else
		err = setup(&hd, snap);
	if (!err) {
		fprintf(stderr, "fc-handler: serving VM pid %d: %zu regions, page size %llu\n", (int)hd.h->pid,
			hd.h->nregions, (unsigned long long)hd.h->regions[0].page_size);
		err = run(&hd);
	}
	/* A VM that waits for us and cannot be served would hang: it is killed. */
	if (err && hd.h && hd.h->pidfd >= 0)
		syscall(SYS_pidfd_send_signal, hd.h->pidfd, SIGKILL, NULL, 0);
	teardown(&hd);
	if (conn >= 0)
		close(conn);
	close(ls);
	unlink(argv[2]);
	close(snap);
	return err ? 1 : 0;
}
