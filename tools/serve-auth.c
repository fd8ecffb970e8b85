/* SPDX-License-Identifier: MIT */
/*
 * uffd-serve: who may connect. Whoever connects and sends a userfaultfd
 * with a region table gets the snapshot's bytes copied into memory of its
 * choosing, so the socket is made with an explicit owner and mode (never
 * the caller's umask), and every peer's credentials are checked before a
 * byte of its message is read: root, the socket's owner, --allow-uid and
 * --allow-gid. A refused peer is logged and its connection closed.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve.h"

#define PEER_GROUPS_MAX 256

/* A decimal id, or a name looked up with name_to_id: true with *id. */
static bool parse_id(const char *s, bool group, unsigned *id)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (*s && !*end && !errno && *s != '-' && v < (unsigned)-1) {
		*id = (unsigned)v;
		return true;
	}
	if (group) {
		struct group *g = getgrnam(s);

		if (g)
			*id = g->gr_gid;
		return g;
	}
	struct passwd *p = getpwnam(s);

	if (p)
		*id = p->pw_uid;
	return p;
}

bool auth_parse_owner(const char *s, struct serve_opts *o)
{
	char user[256];
	const char *colon = strchr(s, ':');
	unsigned uid, gid;

	snprintf(user, sizeof(user), "%.*s", colon ? (int)(colon - s) : (int)strlen(s), s);
	if (!parse_id(user, false, &uid))
		return false;
	if (colon && !parse_id(colon + 1, true, &gid))
		return false;
	if (!colon) {	/* the user's own group, as chown USER: does */
		struct passwd *p = getpwuid(uid);

		gid = p ? p->pw_gid : uid;
	}
	o->sock_uid = uid;
	o->sock_gid = gid;
	o->sock_owner_set = true;
	return true;
}

bool auth_add_id(const char *s, bool group, struct serve_opts *o)
{
	unsigned *v = group ? o->allow_gid : o->allow_uid, id;
	size_t *n = group ? &o->nallow_gid : &o->nallow_uid;

	if (*n == ALLOW_MAX || !parse_id(s, group, &id))
		return false;
	v[(*n)++] = id;
	return true;
}

int auth_socket(const struct serve_opts *o, const char *path)
{
	uid_t uid = o->sock_owner_set ? o->sock_uid : geteuid();
	gid_t gid = o->sock_owner_set ? o->sock_gid : getegid();

	/* The socket was bound under umask 0177 (0600): no window where another user may connect. */
	if (fchownat(AT_FDCWD, path, uid, gid, AT_SYMLINK_NOFOLLOW))
		return serve_fail(EXIT_SETUP, "cannot give the socket %s to %u:%u (--socket-owner): %s", path,
				  (unsigned)uid, (unsigned)gid, strerror(errno));
	if (chmod(path, o->sock_mode))
		return serve_fail(EXIT_SETUP, "cannot set the mode %04o of the socket %s (--socket-mode): %s",
				  (unsigned)o->sock_mode, path, strerror(errno));
	return 0;
}

static bool listed(const unsigned *v, size_t n, unsigned id)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] == id)
			return true;
	return false;
}

/* Whether any group of the peer (its primary one, then SO_PEERGROUPS) is allowed. */
static bool group_allowed(const struct serve_opts *o, int conn, gid_t primary)
{
	gid_t g[PEER_GROUPS_MAX];
	socklen_t len = sizeof(g);

	if (!o->nallow_gid)
		return false;
	if (listed(o->allow_gid, o->nallow_gid, primary))
		return true;
	if (getsockopt(conn, SOL_SOCKET, SO_PEERGROUPS, g, &len))
		return false;
	for (size_t i = 0; i < len / sizeof(gid_t); i++)
		if (listed(o->allow_gid, o->nallow_gid, g[i]))
			return true;
	return false;
}

bool auth_peer(const struct serve_opts *o, int conn, struct ucred *cr)
{
	uid_t owner = o->sock_owner_set ? o->sock_uid : geteuid();
	socklen_t len = sizeof(*cr);

	if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, cr, &len)) {
		serve_fail(0, "refused a connection: SO_PEERCRED: %s", strerror(errno));
		return false;
	}
	if (!cr->uid || cr->uid == owner || listed(o->allow_uid, o->nallow_uid, cr->uid) ||
	    group_allowed(o, conn, cr->gid))
		return true;
	serve_fail(0, "refused a connection from pid %d (uid %u, gid %u): not root, not the socket's owner (uid %u), not in --allow-uid or --allow-gid; nothing was read from it",
		   (int)cr->pid, (unsigned)cr->uid, (unsigned)cr->gid, (unsigned)owner);
	return false;
}
