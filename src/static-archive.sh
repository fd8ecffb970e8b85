#!/bin/sh
# SPDX-License-Identifier: MIT
# The installed libuffd.a: the library's objects linked into one, in which
# only the functions of libuffd.map stay global, and weak. Internal names
# (uffd__*, loop__*, rangemap_*) become local, as the version script makes
# them in the shared library; an application that defines a function of an
# exported name (QEMU's uffd_open) links without a clash, and the library's
# own calls, bound to local uffd__own_* names (internal.h), still reach its
# own code.
# usage: static-archive.sh libuffd.map IN.a OUT.a OBJCOPY AR CC [CC_ARGS...]
set -eu
map=$1 in=$2 out=$3 objcopy=$4 ar=$5
shift 5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -n 's/^[[:space:]]*\(uffd_[a-z0-9_]*\);.*/\1/p' "$map" >"$tmp/exported"
[ -s "$tmp/exported" ] || { echo "$map: no exported names" >&2; exit 1; }
"$@" -r -nostdlib -o "$tmp/libuffd.o" -Wl,--whole-archive "$in"
"$objcopy" --keep-global-symbols="$tmp/exported" \
	--weaken-symbols="$tmp/exported" "$tmp/libuffd.o"
rm -f "$out"
"$ar" rcsD "$out" "$tmp/libuffd.o"
