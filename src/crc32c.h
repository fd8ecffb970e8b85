/* SPDX-License-Identifier: MIT */
/*
 * CRC32C (Castagnoli, reflected, init and final xor ~0): the checksum of
 * the library's files (working-set traces, compressed snapshot frames).
 */
#ifndef LIBUFFD_CRC32C_H
#define LIBUFFD_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC32C of @p len bytes at @p buf ("123456789": 0xe3069283). */
uint32_t uffd__crc32c(const void *buf, size_t len);

#endif /* LIBUFFD_CRC32C_H */
