#!/bin/sh
# SPDX-License-Identifier: MIT
# Run one autopkgtest of debian/tests/control against the built packages
# unpacked into a temporary root (dpkg-deb -x), not installed on this
# machine: pkg-config, the dynamic linker and PATH are pointed at that root.
# usage: tests/pkg/debs.sh DEBDIR TEST
cd "$(dirname "$0")/../.."
. tests/pkg/lib.sh
debdir=$1 test=$2
root=$pkg_tmp/root
for p in libuffd0 libuffd-dev uffd-tools; do
	set -- "$debdir"/${p}_*.deb
	if [ ! -f "$1" ]; then
		echo "FAIL: no ${p}_*.deb in $debdir"
		exit 1
	fi
	dpkg-deb -x "$1" "$root"
done
libdir=$root/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
echo "autopkgtest $test, packages unpacked in $root"
PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_PATH=$libdir/pkgconfig LD_LIBRARY_PATH=$libdir \
	PATH=$root/usr/bin:$PATH "debian/tests/$test"
