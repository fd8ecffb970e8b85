#!/usr/bin/env bash
# Runs every example with moderate sizes and prints one table: the example,
# what it did, its key figure, and whether it verified its own result.
# usage: examples/demo.sh [BUILD_DIR]     (default: build)
# Exits 1 when an example fails or does not verify.
set -uo pipefail

bin="${1:-build}/examples"
runs=(
	"continue_range 64 2"
	"postcopy --mib 256"
	"gc_compact --mib 64"
	"snapshot --mib 64"
	"dirty_precopy --mib 64"
	"handoff --mib 64"
	"gen_source --mib 64"
)
# Firecracker's stand-in served by uffd-serve, where the tools were built with json-c.
[ -x "$bin/fc-serve" ] && runs+=("fc-serve --mib 64")

rows=()
failed=0
for run in "${runs[@]}"; do
	read -r -a cmd <<<"$run"
	name=${cmd[0]}
	err=$(mktemp)
	line=$("$bin/$name" "${cmd[@]:1}" --summary 2>"$err" | grep '^SUMMARY' | tail -n 1)
	status=${PIPESTATUS[0]}
	if [ -z "$line" ] || [ "$status" -ne 0 ]; then
		why=$(head -n 1 "$err")
		line=$(printf 'SUMMARY\t%s\t%s\t%s\tno' "$name" "failed (exit $status)" "${why:-no output}")
	fi
	rm -f "$err"
	[ "${line##*$'\t'}" = yes ] || failed=1
	rows+=("${line#SUMMARY$'\t'}")
done

# Column widths from the contents.
w=(7 11 10 8)
for row in "${rows[@]}" $'example\twhat it did\tkey figure\tverified'; do
	IFS=$'\t' read -r -a f <<<"$row"
	for i in 0 1 2 3; do
		[ ${#f[i]} -gt ${w[i]} ] && w[i]=${#f[i]}
	done
done
rule() {
	printf '+'
	for i in 0 1 2 3; do printf -- '-%.0s' $(seq $((w[i] + 2))); printf '+'; done
	printf '\n'
}
print_row() {
	IFS=$'\t' read -r -a f <<<"$1"
	printf '| %-*s | %-*s | %-*s | %-*s |\n' "${w[0]}" "${f[0]}" "${w[1]}" "${f[1]}" \
		"${w[2]}" "${f[2]}" "${w[3]}" "${f[3]}"
}
rule
print_row $'example\twhat it did\tkey figure\tverified'
rule
for row in "${rows[@]}"; do print_row "$row"; done
rule
exit $failed
