#!/bin/sh
# SPDX-License-Identifier: MIT
# A meson project that vendors libuffd under subprojects/ (as a git
# submodule or a copy would) gets it with dependency('uffd') and
# dependency('uffd', static : true): build tests/pkg/consumer.c both ways
# and run both. usage: tests/pkg/subproject.sh
cd "$(dirname "$0")/../.."
. tests/pkg/lib.sh
src=$PWD
parent=$pkg_tmp/parent
mkdir -p "$parent/subprojects"
ln -s "$src" "$parent/subprojects/libuffd"
cp "$src/tests/pkg/consumer.c" "$parent/"
cat >"$parent/subprojects/libuffd.wrap" <<'WRAP'
[wrap-file]
directory = libuffd

[provide]
dependency_names = uffd
WRAP
cat >"$parent/meson.build" <<'MESON'
project('parent', 'c')
executable('consumer', 'consumer.c', dependencies : dependency('uffd'))
executable('consumer-static', 'consumer.c', dependencies : dependency('uffd', static : true))
MESON
if ! meson setup "$pkg_tmp/build" "$parent" >"$pkg_tmp/setup.log" 2>&1 ||
	! ninja -C "$pkg_tmp/build" >"$pkg_tmp/build.log" 2>&1; then
	cat "$pkg_tmp/setup.log" "$pkg_tmp/build.log" 2>/dev/null
	echo "FAIL: the parent project does not build"
	exit 1
fi
grep -E '^Dependency uffd found' "$pkg_tmp/setup.log"
r1=0 r2=0
echo "== dependency('uffd')"
run_consumer "$pkg_tmp/build/consumer" "$pkg_tmp/build/subprojects/libuffd/src" || r1=$?
echo "== dependency('uffd', static : true)"
run_consumer "$pkg_tmp/build/consumer-static" static || r2=$?
worst "$r1" "$r2"
