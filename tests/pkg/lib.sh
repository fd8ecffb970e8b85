# SPDX-License-Identifier: MIT
# Sourced by the packaging checks: a temporary folder ($pkg_tmp, removed at
# exit) and run_consumer. Their exit status: 0 passed, 77 skipped (the
# reason printed), anything else failed.
set -eu
pkg_tmp=$(mktemp -d)
trap 'rm -rf "$pkg_tmp"' EXIT

# run_consumer PROGRAM LIBDIR|static: run a build of tests/pkg/consumer.c,
# which must have loaded libuffd from LIBDIR, or (static) have it linked in.
# Returns 0, 77 when no userfaultfd can be opened here, or 1.
run_consumer() {
	rc=0
	out=$("$1") || rc=$?
	printf '%s\n' "$out"
	if [ "$2" = static ]; then
		if readelf -d "$1" | grep -q 'NEEDED.*libuffd'; then
			echo "FAIL: $1 needs a shared libuffd"
			return 1
		fi
	else
		from=$(printf '%s\n' "$out" | sed -n 's/^libuffd from //p')
		if [ -z "$from" ] ||
			[ "$(readlink -f "$(dirname "$from")")" != "$(readlink -f "$2")" ]; then
			echo "FAIL: $1 loaded libuffd from '$from', not from $2"
			return 1
		fi
	fi
	case $rc in
	0 | 77) return "$rc" ;;
	*) echo "FAIL: $1 exited with status $rc"; return 1 ;;
	esac
}

# worst STATUS...: 1 if any failed, else 77 if any skipped, else 0.
worst() {
	w=0
	for s in "$@"; do
		case $s in
		0) ;;
		77) [ "$w" -ne 0 ] || w=77 ;;
		*) w=1 ;;
		esac
	done
	return "$w"
}
