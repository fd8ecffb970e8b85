#!/usr/bin/env bash
# The handoff example: a vmm process and its page-fault handler process.
# Runs, each with a fresh handler and vmm:
#   anon/COPY and memfd/MINOR, served by libuffd's loop with fault-around,
#   the same two served by the hand-written handler (--baseline),
#   anon/COPY with the vmm killed by SIGKILL mid-restore.
# Prints one line per run, the comparison, the owner-exit latency and the
# handlers' line counts; exits 1 when any check fails. --summary prints the
# one line demo.sh reads instead.
# usage: handoff [--mib N] [--summary] [--src DIR]   (next to handoff-vmm and handoff-handler)
set -uo pipefail

bin=$(cd "$(dirname "$0")" && pwd)
src='@HANDOFF_SRC@'
mib=64
summary=0
while [ $# -gt 0 ]; do
	case $1 in
	--mib) mib=$2; shift 2 ;;
	--src) src=$2; shift 2 ;;
	--summary) summary=1; shift ;;
	*) echo "usage: $0 [--mib N] [--summary] [--src DIR]" >&2; exit 2 ;;
	esac
done
vmm=$bin/handoff-vmm
handler=$bin/handoff-handler
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
say() { [ $summary = 1 ] || printf '%s\n' "$*"; }
fail() { failed=1; printf 'handoff: %s\n' "$*" >&2; }

# The value of key in the line of file that starts with tag.
kv() { sed -n "s/^$2 .* $3=\([^ ]*\).*/\1/p; s/^$2 $3=\([^ ]*\).*/\1/p" "$1" | tail -n 1; }

# run LABEL lib|base VMM_FLAGS HANDLER_FLAGS [kill]: one vmm and one handler;
# sets the globals below and prints the run's line.
run() {
	local label=$1 who=$2 vflags=$3 hflags=$4 kill=${5:-} vst hst fd err line
	run_huge=
	local name="$label ($who${kill:+, kill})" d
	d=$tmp/$(echo "$label-$who$kill" | tr / _)
	mkdir -p "$d"
	# shellcheck disable=SC2086
	"$handler" --socket "$d/sock" --snapshot "$tmp/snapshot" --mib "$mib" $hflags \
		>"$d/handler" 2>"$d/handler.err" &
	local hpid=$!
	if [ -z "$kill" ]; then
		# shellcheck disable=SC2086
		timeout 60 "$vmm" --socket "$d/sock" --mib "$mib" $vflags >"$d/vmm" 2>"$d/vmm.err"
		vst=$?
	else
		mkfifo "$d/fifo"
		# shellcheck disable=SC2086
		"$vmm" --socket "$d/sock" --mib "$mib" $vflags >"$d/fifo" 2>"$d/vmm.err" &
		local vpid=$!
		exec {fd}<"$d/fifo"
		read -r -t 30 -u "$fd" line	# "VMM restoring": a third of the pages are in
		kill_us=${EPOCHREALTIME/[.,]/}
		exec {err}>&2 2>/dev/null	# no "Killed" notice from the shell
		kill -KILL "$vpid"
		cat <&"$fd" >"$d/vmm"
		exec {fd}<&-
		wait "$vpid"
		vst=$?
		reaped_us=${EPOCHREALTIME/[.,]/}
		exec 2>&"$err" {err}>&-
	fi
	wait "$hpid"
	hst=$?
	faults=$(kv "$d/handler" HANDLER faults)
	pages=$(kv "$d/vmm" VMM pages)
	restore_us=$(kv "$d/vmm" VMM restore_us)
	stall_us=$(kv "$d/vmm" VMM stall_us)
	local huge fds_start fds_end errors exit_us
	huge=$(kv "$d/vmm" VMM huge)
	run_huge=$huge
	fds_start=$(kv "$d/handler" HANDLER fds_start)
	fds_end=$(kv "$d/handler" HANDLER fds_end)
	errors=$(kv "$d/handler" HANDLER errors)
	exit_us=$(kv "$d/handler" HANDLER owner_exit_wall_us)
	exit_us=${exit_us:-0}
	if [ "$hst" -ne 0 ] || [ -z "$fds_end" ] || [ "$fds_start" != "$fds_end" ] || [ "${errors:-1}" != 0 ]; then
		fail "$name: handler exit $hst, errors ${errors:-?}, fds ${fds_start:-?} -> ${fds_end:-?}: $(head -c 300 "$d/handler.err")"
	fi
	if [ -n "$kill" ]; then
		if [ "$line" != "VMM restoring" ] || [ "$vst" -ne 137 ] || grep -q '^VMM mode=' "$d/vmm"; then
			fail "$name: the vmm was not killed mid-restore (status $vst)"
		fi
		exit_lat_us=$((exit_us - kill_us))
		say "$(printf '%-12s %-13s vmm killed with SIGKILL when a third of its pages were in; reaped by its parent after %.2f ms, handler noticed after %.2f ms and exited %d, %s faults served, %s refused (vmm gone), fds %s -> %s' \
			"$label" libuffd "$(((reaped_us - kill_us) / 1000)).$(printf '%02d' $(((reaped_us - kill_us) % 1000 / 10)))" \
			"$(((exit_lat_us) / 1000)).$(printf '%02d' $((exit_lat_us % 1000 / 10)))" "$hst" \
			"$faults" "$(kv "$d/handler" HANDLER owner_gone)" "$fds_start" "$fds_end")"
		return
	fi
	if [ "$vst" -ne 0 ] || [ -z "$pages" ] || [ -z "$faults" ]; then
		fail "$name: vmm exit $vst: $(head -c 300 "$d/vmm.err") $(cat "$d/vmm")"
		return
	fi
	exit_lat_us=$((exit_us - $(kv "$d/vmm" VMM exit_wall_us)))
	say "$(awk -v n="$label" -v w="$who" -v f="$faults" -v p="$pages" -v r="$restore_us" -v s="$stall_us" \
		-v h="$huge" -v m="$(kv "$d/handler" HANDLER minor)" -v i="$(kv "$d/handler" HANDLER ioctls)" \
		-v b="$(kv "$d/vmm" VMM balloon_pages)" -v e="$exit_lat_us" -v fs="$fds_start" -v fe="$fds_end" \
		'BEGIN { printf "%-12s %-13s faults %6d (%d minor)  pages %d (%.1f per fault)  stall %5.1f us/fault  restore %6.1f ms  ioctls %d  hugetlb %s  balloon %d pages zero  owner exit +%.2f ms  fds %d -> %d  verified\n", n, w == "base" ? "hand-written" : "libuffd", f, m, p, p / f, s / f, r / 1000, i, h, b, e / 1000, fs, fe }')"
}

declare -A restore nfaults hugetlb
for mode in anon memfd; do
	vf=$([ $mode = memfd ] && echo --memfd)
	label=$([ $mode = memfd ] && echo memfd/MINOR || echo anon/COPY)
	for who in lib base; do
		hf=$([ $who = base ] && echo --baseline)
		run "$label" $who "$vf" "$hf"
		restore[$mode-$who]=${restore_us:-0}
		nfaults[$mode-$who]=${faults:-0}
		hugetlb[$mode-$who]=${run_huge:-}
	done
done
run anon/COPY lib "" "" kill
kill_lat_us=${exit_lat_us:-0}

for mode in anon memfd; do
	say "$(awk -v m=$mode -v rl="${restore[$mode-lib]}" -v rb="${restore[$mode-base]}" \
		-v fl="${nfaults[$mode-lib]}" -v fb="${nfaults[$mode-base]}" \
		-v same="$([ "${hugetlb[$mode-lib]}" = "${hugetlb[$mode-base]}" ] && echo 1)" \
		'BEGIN { printf "%-12s libuffd vs hand-written: restore %.1f vs %.1f ms (%.2fx), faults %d vs %d%s\n", m == "anon" ? "anon/COPY" : "memfd/MINOR", rl / 1000, rb / 1000, rl ? rb / rl : 0, fl, fb, same ? "" : " (hugetlb differed: huge pages were taken meanwhile)" }')"
done

# Lines of serving code between the markers, blank and comment-only lines left out.
count() {
	sed -n "/---- $2: begin ----/,/---- $2: end ----/p" "$1" |
		awk '{ s = $0; out = "";
		       while (s != "") {
			       if (inc) { i = index(s, "*/"); if (!i) { s = ""; break } s = substr(s, i + 2); inc = 0 }
			       else { i = index(s, "/*"); if (!i) { out = out s; s = "" } else { out = out substr(s, 1, i - 1); s = substr(s, i + 2); inc = 1 } }
		       }
		       if (out ~ /[^ \t]/) n++ }
		     END { print n - 0 }'
}
if [ -r "$src/handler.c" ] && [ -r "$src/baseline.c" ]; then
	lines_lib=$(count "$src/handler.c" "serving with libuffd")
	lines_base=$(count "$src/baseline.c" "serving by hand")
	say "lines        serving code: $lines_lib with libuffd (handler.c) vs $lines_base by hand (baseline.c), markers included, no blank or comment-only lines"
fi

if [ $summary = 1 ]; then
	what="vmm + handler processes, $mib MiB: anon/COPY, memfd/MINOR, balloon, SIGKILL"
	fig=$(awk -v al="${restore[anon-lib]}" -v ab="${restore[anon-base]}" -v ml="${restore[memfd-lib]}" \
		-v mb="${restore[memfd-base]}" -v k="$kill_lat_us" \
		'BEGIN { printf "restore %.2fx / %.2fx faster than by hand, owner exit %.1f ms", al ? ab / al : 0, ml ? mb / ml : 0, k / 1000 }')
	printf 'SUMMARY\thandoff\t%s\t%s\t%s\n' "$what" "$fig" "$([ $failed = 0 ] && echo yes || echo no)"
fi
exit $failed
