/* SPDX-License-Identifier: MIT */
/*
 * What the vmm and the handler of the handoff example agree on: the
 * snapshot's contents, the guest's layout, and a few helpers. Not libuffd API.
 */
#ifndef EXAMPLES_HANDOFF_H
#define EXAMPLES_HANDOFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <dirent.h>
#include <time.h>

#include "../common.h"

#define HO_SEED 0x5eed5eedull
#define HO_HUGE (2ull << 20)		/* region 1's size unit, also the hugetlb page size tried */

/* The 64-bit word at guest-physical offset off (a multiple of 8) of the snapshot. */
static inline uint64_t ho_word(uint64_t off)
{
	return ex_pattern(HO_SEED, off >> 12, (off & 4095) >> 3);
}

/*
 * Guest memory of `mib` MiB as two regions, in guest-physical order: region
 * 0 three quarters of it (base pages), region 1 the rest (hugetlb if it can
 * be had). The snapshot file holds them back to back.
 */
static inline uint64_t ho_region0_len(unsigned mib)
{
	return (uint64_t)mib * 3 / 4 / 2 * HO_HUGE;
}

/*
 * The range the balloon gives back, inside region 0: 2 MiB in its middle
 * (offset and length in bytes).
 */
static inline uint64_t ho_balloon_off(unsigned mib)
{
	return ho_region0_len(mib) / 2 - HO_HUGE / 2;
}
#define HO_BALLOON_LEN HO_HUGE

/*
 * Wall clock (CLOCK_REALTIME) in microseconds: comparable across processes
 * and with bash's $EPOCHREALTIME, which the runner reads when it kills.
 */
static inline uint64_t ho_wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Open descriptors of this process (entries of /proc/self/fd); -1 if unknown. */
static inline int ho_count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = -1;		/* the directory's own descriptor */

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

#endif
