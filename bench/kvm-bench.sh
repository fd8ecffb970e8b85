#!/usr/bin/env bash
# Restore times of a real KVM guest (examples/kvm-vmm: a minimal VMM on raw
# KVM ioctls, guest code and page tables in the snapshot, vCPUs touching
# pages, their faults reaching the handler through get_user_pages). A
# snapshot of --mib MiB (default 256); the guest's --vcpus vCPUs (default 2)
# touch --pct percent of the data pages (default 30, the same pages each
# run) and write --write percent of those (default 50); the snapshot in the
# page cache (warm). Contenders, in the same run:
#   kernel             kvm-vmm --kernel: the snapshot mapped MAP_PRIVATE, the
#                      kernel pages it in (Firecracker's File backend)
#   uffd-serve         demand faults only
#   uffd-serve replay  --replay of a trace recorded once, before the rounds, by a
#                      --record run whose host check looked at the touched pages only
#   uffd-serve replay 32K  the same trace with --replay-block 32K: each traced page's
#                      aligned 8 pages, so that KVM's shadow MMU maps 8 per exit
#   uffd-serve fill    --fill: demand, then every other page in the background, then detach
#   present            kvm-vmm --kernel --present: every page copied in before the vCPUs
#                      start, the bound of any restore
# Runs are interleaved (one of each contender per round, --runs rounds,
# default 3); the table shows the median time from the first vCPU's KVM_RUN
# to the last vCPU done, the vCPUs' VM exits (KVM's own count) and the
# handler's faults of that run, KVM's MMU faults (pf) and the 4 KiB pages KVM
# mapped (mapped), and the ratio to kernel. Every run's guest
# and host checks must pass (every byte right), or the script fails.
# Exits 77 where KVM cannot run.
# usage: bench/kvm-bench.sh [BUILD_DIR] [--mib N] [--pct P] [--write P] [--runs N] [--vcpus N]
set -euo pipefail

build=build
mib=256
pct=30
write=50
runs=3
vcpus=2
while [ $# -gt 0 ]; do
	case "$1" in
	--mib) mib=$2; shift 2 ;;
	--pct) pct=$2; shift 2 ;;
	--write) write=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--vcpus) vcpus=$2; shift 2 ;;
	-*) echo "usage: $0 [BUILD_DIR] [--mib N] [--pct P] [--write P] [--runs N] [--vcpus N]" >&2; exit 2 ;;
	*) build=$1; shift ;;
	esac
done
vmm=$build/examples/kvm-vmm
serve=$build/tools/uffd-serve
for b in "$vmm" "$serve"; do
	[ -x "$b" ] || { echo "$0: $b is not built (meson setup with tools, examples and json-c, on x86-64)" >&2; exit 1; }
done

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
snap=$dir/snap
sock=$dir/sock
"$vmm" --make-snapshot "$snap" --mib "$mib"
cat "$snap" >/dev/null	# warm: the snapshot in the page cache

kv() { sed -n "s/.*[ {,\"]$2[\"]*[=:]\\([0-9]*\\).*/\\1/p" "$1" | head -n 1; }
guest=(--memory "$snap" --touch-pct "$pct" --write-pct "$write" --vcpus "$vcpus")

# run NAME VMM_OPTIONS... [-- HANDLER...]: one restore. Sets us, exits, pf, mapped, faults.
run() {
	local name=$1 hpid="" vopts=() rc=0
	shift
	while [ $# -gt 0 ] && [ "$1" != -- ]; do vopts+=("$1"); shift; done
	[ $# -gt 0 ] && shift
	rm -f "$sock"
	if [ $# -gt 0 ]; then
		"$@" >"$dir/h.out" 2>"$dir/h.err" &
		hpid=$!
		"$vmm" --socket "$sock" "${guest[@]}" "${vopts[@]}" >"$dir/v.out" 2>"$dir/v.err" || rc=$?
	else
		"$vmm" --kernel "${guest[@]}" "${vopts[@]}" >"$dir/v.out" 2>"$dir/v.err" || rc=$?
	fi
	if [ $rc -eq 77 ]; then
		[ -n "$hpid" ] && kill "$hpid" 2>/dev/null
		echo "$0: skipped: $(cat "$dir/v.err")" >&2
		exit 77
	fi
	if [ -n "$hpid" ] && ! wait "$hpid"; then
		echo "$0: $name: the handler failed: $(cat "$dir/h.err")" >&2
		exit 1
	fi
	[ $rc -eq 0 ] || { echo "$0: $name: kvm-vmm exit $rc: $(cat "$dir/v.out" "$dir/v.err")" >&2; exit 1; }
	us=$(kv "$dir/v.out" run_us)
	exits=$(kv "$dir/v.out" exits)
	pf=$(kv "$dir/v.out" pf)
	mapped=$(kv "$dir/v.out" mapped_4k)
	faults=-
	[ -n "$hpid" ] && faults=$(kv "$dir/h.out" missing)
	return 0
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# The working set of the replay, recorded once: the guest's pages, in first-touch order.
run record --check-touched -- "$serve" --socket "$sock" --memory "$snap" --json --record "$dir/trace"

names=("kernel" "uffd-serve" "uffd-serve replay" "uffd-serve replay 32K" "uffd-serve fill" "present")
declare -A all nex nf npf nmap
contender() {
	case "$1" in
	kernel) run "$1" ;;
	uffd-serve) run "$1" -- "$serve" --socket "$sock" --memory "$snap" --json ;;
	"uffd-serve replay") run "$1" -- "$serve" --socket "$sock" --memory "$snap" --json --replay "$dir/trace" ;;
	"uffd-serve replay 32K") run "$1" -- "$serve" --socket "$sock" --memory "$snap" --json --replay "$dir/trace" --replay-block 32K ;;
	"uffd-serve fill") run "$1" --after-handler -- "$serve" --socket "$sock" --memory "$snap" --json --fill ;;
	present) run "$1" --present ;;
	esac
}
for ((i = 0; i < runs; i++)); do
	for n in "${names[@]}"; do
		contender "$n"
		all[$n]="${all[$n]:-} $us"
		nex[$n]="${nex[$n]:-} $exits"
		nf[$n]="${nf[$n]:-} $faults"
		npf[$n]="${npf[$n]:-} $pf"
		nmap[$n]="${nmap[$n]:-} $mapped"
	done
done

echo "kvm-vmm restore, $mib MiB snapshot, $pct% of the pages touched by $vcpus vCPUs, $write% of those written, warm cache, median of $runs interleaved runs"
printf '%-22s %9s %9s %9s %9s %8s %9s   %s\n' contender "guest ms" "VM exits" "KVM pf" "mapped" "faults*" "vs kernel" "runs (ms)"
# shellcheck disable=SC2086
k=$(median ${all[kernel]})
for n in "${names[@]}"; do
	# shellcheck disable=SC2086
	t=$(median ${all[$n]})
	# shellcheck disable=SC2086
	awk -v n="$n" -v t="$t" -v k="$k" -v e="$(median ${nex[$n]})" -v pf="$(median ${npf[$n]})" -v m="$(median ${nmap[$n]})" \
		-v f="$(case $n in kernel | present) echo - ;; *) median ${nf[$n]} ;; esac)" -v r="${all[$n]}" \
		'BEGIN { split(r, a, " "); s = ""; for (i = 1; i <= length(a); i++) s = s sprintf("%s%.1f", i > 1 ? " " : "", a[i] / 1000);
			 printf "%-22s %9.1f %9s %9s %9s %8s %8.2fx   %s\n", n, t / 1000, e, pf, m, f, t / k, s }'
done
echo "* faults the handler served in the run, the host's check of every page after the guest included"
echo "KVM pf: faults of KVM's MMU (pf_taken); mapped: 4 KiB pages KVM mapped for the guest (pages_4k)"
