/* SPDX-License-Identifier: MIT */
/*
 * CRC32C with the SSE4.2 crc32 instruction where the CPU has it (snapshot
 * frames are checked on every read, megabytes at a time: the table walks
 * a byte a cycle at best, the instruction eight), a table otherwise.
 */
#include <pthread.h>
#include <string.h>

#include "crc32c.h"

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc_table_walk(uint32_t c, const uint8_t *b, size_t len)
{
	pthread_once(&crc_once, crc_init);
	while (len--)
		c = crc_table[(c ^ *b++) & 0xff] ^ (c >> 8);
	return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_sse42(uint32_t c, const uint8_t *b, size_t len)
{
	uint64_t c64 = c;

	for (; len >= 8; b += 8, len -= 8) {
		uint64_t w;

		memcpy(&w, b, 8);
		c64 = __builtin_ia32_crc32di(c64, w);
	}
	c = (uint32_t)c64;
	while (len--)
		c = __builtin_ia32_crc32qi(c, *b++);
	return c;
}
#endif

uint32_t uffd__crc32c(const void *buf, size_t len)
{
#if defined(__x86_64__)
	if (__builtin_cpu_supports("sse4.2"))
		return ~crc_sse42(~0u, buf, len);
#endif
	return ~crc_table_walk(~0u, buf, len);
}
