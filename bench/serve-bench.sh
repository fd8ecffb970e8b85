#!/usr/bin/env bash
# Restore times of the fc-vmm stand-in for Firecracker: a snapshot of
# --mib MiB (default 1024), a working set of --pct percent of its pages
# (default 25, the same pages each run, in a new order), the snapshot in
# the page cache (warm). Contenders:
#   kernel           fc-vmm --kernel: the snapshot mapped MAP_PRIVATE, the kernel pages it in
#   fc-baseline      a hand-written handler: one UFFDIO_COPY per fault (bench/fc-baseline.c)
#   uffd-serve       demand faults only
#   uffd-serve replay  --replay of a trace recorded by a first --record run
#   uffd-serve fill  --fill: demand, then every other page in the background, then detach
# Each runs --runs times (default 3); the table shows the median time from
# resume to the guest's last touch, faults served, and the ratio to kernel.
# usage: bench/serve-bench.sh [BUILD_DIR] [--mib N] [--pct P] [--runs N] [--threads N]
set -euo pipefail

build=build
mib=1024
pct=25
runs=3
threads=2
while [ $# -gt 0 ]; do
	case "$1" in
	--mib) mib=$2; shift 2 ;;
	--pct) pct=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--threads) threads=$2; shift 2 ;;
	-*) echo "usage: $0 [BUILD_DIR] [--mib N] [--pct P] [--runs N] [--threads N]" >&2; exit 2 ;;
	*) build=$1; shift ;;
	esac
done
vmm=$build/examples/fc-vmm
serve=$build/tools/uffd-serve
base=$build/bench/fc-baseline
for b in "$vmm" "$serve" "$base"; do
	[ -x "$b" ] || { echo "$0: $b is not built (meson setup with tools, examples, bench and json-c)" >&2; exit 1; }
done

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
snap=$dir/snap
sock=$dir/sock
"$vmm" --make-snapshot "$snap" --mib "$mib"
cat "$snap" >/dev/null	# warm: the snapshot in the page cache

kv() { sed -n "s/.*[ {,\"]$2[\"]*[=:]\\([0-9]*\\).*/\\1/p" "$1" | head -n 1; }

# run NAME HANDLER...: one restore, the handler (if any) started first. Sets us and faults.
run() {
	local name=$1 hpid=""
	shift
	if [ $# -gt 0 ]; then
		"$@" >"$dir/h.out" 2>"$dir/h.err" &
		hpid=$!
		"$vmm" --socket "$sock" --memory "$snap" --touch-pct "$pct" --threads "$threads" >"$dir/v.out"
	else
		"$vmm" --kernel --memory "$snap" --touch-pct "$pct" --threads "$threads" >"$dir/v.out"
	fi
	if [ -n "$hpid" ] && ! wait "$hpid"; then
		echo "$0: $name: the handler failed: $(cat "$dir/h.err")" >&2
		exit 1
	fi
	grep -q 'bad_pages=0 ' "$dir/v.out" || { echo "$0: $name: wrong bytes: $(cat "$dir/v.out")" >&2; exit 1; }
	us=$(kv "$dir/v.out" restore_us)
	faults=-
	if [ -n "$hpid" ]; then
		faults=$(kv "$dir/h.out" missing)
		[ -n "$faults" ] || faults=$(kv "$dir/h.out" faults)
	fi
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

names=()
declare -A med nf
measure() {
	local name=$1 all=() i
	shift
	for ((i = 0; i < runs; i++)); do
		[ "$name" = "uffd-serve replay" ] && run record "$serve" --socket "$sock" --memory "$snap" --json \
			--record "$dir/trace"
		run "$name" "$@"
		all+=("$us")
	done
	names+=("$name")
	med[$name]=$(median "${all[@]}")
	nf[$name]=$faults
}

measure "kernel"
measure "fc-baseline" "$base" --socket "$sock" --memory "$snap"
measure "uffd-serve" "$serve" --socket "$sock" --memory "$snap" --json
measure "uffd-serve replay" "$serve" --socket "$sock" --memory "$snap" --json --replay "$dir/trace"
measure "uffd-serve fill" "$serve" --socket "$sock" --memory "$snap" --json --fill

echo "fc-vmm restore, $mib MiB snapshot, $pct% working set, $threads guest threads, warm cache, median of $runs"
printf '%-20s %12s %10s %10s\n' contender "restore ms" faults "vs kernel"
k=${med[kernel]}
for n in "${names[@]}"; do
	awk -v n="$n" -v t="${med[$n]}" -v k="$k" -v f="${nf[$n]}" \
		'BEGIN { printf "%-20s %12.1f %10s %9.2fx\n", n, t / 1000, f, t / k }'
done
