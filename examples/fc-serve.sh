#!/usr/bin/env bash
# fc-vmm (a stand-in for Firecracker) restored from a snapshot by uffd-serve,
# twice: the first run serves demand faults and records the working set, the
# second replays it ahead of the guest and fills in the rest, then detaches.
# The guest checks every byte it reads; its balloon gives 1 MiB back in both.
# usage: fc-serve [--mib N] [--summary]
# uffd-serve: $UFFD_SERVE, else the path configured by the build, else the one
# in PATH (the copy installed with the examples is not configured). fc-vmm:
# $FC_VMM, else next to this script, else in PATH (build it from fc-vmm.c).
set -uo pipefail

here=$(dirname "$0")
serve=${UFFD_SERVE:-@UFFD_SERVE@}
case $serve in
'@'*) serve=$(command -v uffd-serve) || { echo "$0: uffd-serve not found: install uffd-tools or set UFFD_SERVE" >&2; exit 2; } ;;
esac
vmm=${FC_VMM:-$here/fc-vmm}
[ -x "$vmm" ] || vmm=$(command -v fc-vmm) || { echo "$0: fc-vmm not found: build examples/fc-vmm.c, or set FC_VMM" >&2; exit 2; }
mib=64
summary=0
while [ $# -gt 0 ]; do
	case "$1" in
	--mib) mib=$2; shift 2 ;;
	--summary) summary=1; shift ;;
	*) echo "usage: $0 [--mib N] [--summary]" >&2; exit 2 ;;
	esac
done
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$vmm" --make-snapshot "$dir/snap" --mib "$mib" || exit 1

kv() { sed -n "s/.*[ {,\"]$2[\"]*[=:]\\([0-9]*\\).*/\\1/p" "$1" | head -n 1; }
failed=0
# restore TAG SERVE-OPTIONS...: one VM served; sets ms and faults.
restore() {
	local tag=$1
	shift
	"$serve" --socket "$dir/sock" --memory "$dir/snap" --json "$@" >"$dir/$tag.json" 2>"$dir/$tag.err" &
	local pid=$!
	"$vmm" --socket "$dir/sock" --memory "$dir/snap" --touch-pct 25 --balloon >"$dir/$tag.vmm" || failed=1
	wait $pid || failed=1
	grep -q 'bad_pages=0 .*balloon_nonzero=0' "$dir/$tag.vmm" || failed=1
	ms=$(awk -v us="$(kv "$dir/$tag.vmm" restore_us)" 'BEGIN { printf "%.1f", us / 1000 }')
	faults=$(kv "$dir/$tag.json" missing)
	[ $summary = 1 ] || echo "$tag: $(cat "$dir/$tag.vmm" | tail -n 1) | serve: $(cat "$dir/$tag.json")"
}
restore record --record "$dir/trace"
ms1=$ms f1=$faults
restore replay --replay "$dir/trace" --fill
ms2=$ms f2=$faults
if [ $summary = 1 ]; then
	printf 'SUMMARY\tfc-serve\t%s\t%s\t%s\n' "fc-vmm restored by uffd-serve, $mib MiB: record, then replay + fill" \
		"demand $ms1 ms ($f1 faults), replay $ms2 ms ($f2 faults)" "$([ $failed = 0 ] && echo yes || echo no)"
fi
exit $failed
