#!/bin/sh
# SPDX-License-Identifier: MIT
# The public header must compile on its own: as strict C99 and as C++11.
# usage: check-header.sh c|c++ INCLUDE_DIR COMPILER [ARGS...]
set -eu
lang=$1 inc=$2
shift 2
[ $# -gt 0 ] && command -v "$1" >/dev/null 2>&1 || {
	echo "SKIP: no $lang compiler found"
	exit 77
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$lang" = c ]; then
	src=$tmp/h.c std="-std=c99"
else
	src=$tmp/h.cc std="-std=c++11"
fi
# Twice, for the include guard; a use of a type and a macro.
printf '#include <uffd.h>\n#include <uffd.h>\nstruct uffd_event ev; int main(void) { return (int)sizeof(ev) + (int)UFFD_FEATURES_DEFAULT * 0; }\n' >"$src"
"$@" $std -pedantic -Wall -Wextra -Werror -I"$inc" -c "$src" -o "$tmp/h.o"
echo "uffd.h compiles standalone as $lang ($std -pedantic -Werror)"
