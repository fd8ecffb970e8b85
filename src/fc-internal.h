/* SPDX-License-Identifier: MIT */
/* Firecracker's handshake: what fc-handshake.c and fc-json.c share. Never installed. */
#ifndef LIBUFFD_FC_INTERNAL_H
#define LIBUFFD_FC_INTERNAL_H

#include "internal.h"

/*
 * The JSON array of buf[0, len) into a new array *out of *n regions (1 to
 * max): 0; -EAGAIN when the bytes end before the value does; -EPROTO (the
 * sentence set, naming c) for anything else than exactly one such array,
 * white space around it; -ENOMEM.
 */
int uffd__fc_parse(const char *c, const char *buf, size_t len, unsigned max, struct uffd_fc_region **out,
		   size_t *n);

#endif
