#!/bin/sh
# SPDX-License-Identifier: MIT
# `meson install` into a prefix the dynamic linker does not search: the
# installed uffd-info starts with no LD_LIBRARY_PATH (its install rpath
# finds the prefix's libuffd), and an application built as the README says
# (pkg-config plus -Wl,-rpath) runs against the prefix's library.
# usage: tests/pkg/install-prefix.sh
cd "$(dirname "$0")/../.."
. tests/pkg/lib.sh
prefix=$pkg_tmp/prefix
unset LD_LIBRARY_PATH
if ! meson setup "$pkg_tmp/build" --prefix "$prefix" -Dtests=false -Dexamples=false \
	-Dbench=false >"$pkg_tmp/log" 2>&1 ||
	! ninja -C "$pkg_tmp/build" >>"$pkg_tmp/log" 2>&1 ||
	! meson install -C "$pkg_tmp/build" >>"$pkg_tmp/log" 2>&1; then
	cat "$pkg_tmp/log"
	echo "FAIL: build or install into $prefix"
	exit 1
fi
pc=$(find "$prefix" -name uffd.pc)
export PKG_CONFIG_PATH="${pc%/uffd.pc}"
libdir=$(pkg-config --variable=libdir uffd)
version=$(pkg-config --modversion uffd)

echo "== $prefix/bin/uffd-info"
readelf -d "$prefix/bin/uffd-info" | grep -E 'RUNPATH|RPATH' || true
got=$("$prefix/bin/uffd-info" --version) || {
	echo "FAIL: the installed uffd-info does not start"
	exit 1
}
echo "$got"
[ "$got" = "uffd-info (libuffd) $version" ] || {
	echo "FAIL: expected uffd-info (libuffd) $version"
	exit 1
}
ldd "$prefix/bin/uffd-info" | grep libuffd
ldd "$prefix/bin/uffd-info" | grep -q "libuffd.so.0 => $libdir/libuffd.so.0" || {
	echo "FAIL: the installed uffd-info does not use $libdir/libuffd.so.0"
	exit 1
}

echo "== an application: cc app.c \$(pkg-config --cflags --libs uffd) -Wl,-rpath,\$(pkg-config --variable=libdir uffd)"
# shellcheck disable=SC2046
cc -Wall -Wextra -Werror -o "$pkg_tmp/consumer" tests/pkg/consumer.c \
	$(pkg-config --cflags --libs uffd) -Wl,-rpath,"$libdir"
run_consumer "$pkg_tmp/consumer" "$libdir"
