#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the fuzz targets with libFuzzer (clang -fsanitize=fuzzer,address,
# undefined, the library compiled in) and fuzzes each for a bounded time.
#   tests/fuzz/run.sh BUILD_DIR [SECONDS_API] [SECONDS_DECODE] [SECONDS_HANDOFF] [SECONDS_TRACE] [SECONDS_FC] [SECONDS_SNAP]
# A crash leaves its input in BUILD_DIR/crash-*; once fixed, copy it to
# tests/fuzz/regressions/<target>/ so that meson test replays it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: $0 BUILD_DIR [SECONDS_API] [SECONDS_DECODE] [SECONDS_HANDOFF] [SECONDS_TRACE] [SECONDS_FC] [SECONDS_SNAP]}
declare -A secs=([api]=${2:-40} [decode]=${3:-20} [handoff]=${4:-20} [trace]=${5:-20} [fc]=${6:-20} [snap]=${7:-20})
mkdir -p "$out"
flags=(-g -O1 -D_GNU_SOURCE -Iinclude -Isrc -Wall -Wextra -Werror
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
status=0
for t in api decode handoff trace fc snap; do
	clang "${flags[@]}" -o "$out/fuzz-$t" "tests/fuzz/fuzz-$t.c" src/*.c -luring -lzstd -lcurl -lnbd -lpthread
	mkdir -p "$out/corpus-$t"
	# New inputs go to the build dir; the kept corpus and regressions seed it
	# (a target may have no regression folder: git keeps no empty folder).
	seeds=("$out/corpus-$t" "tests/fuzz/corpus-$t")
	[ -d "tests/fuzz/regressions/$t" ] && seeds+=("tests/fuzz/regressions/$t")
	if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		"$out/fuzz-$t" -max_total_time="${secs[$t]}" -timeout=10 -rss_limit_mb=4096 \
		-print_final_stats=1 -artifact_prefix="$out/" "${seeds[@]}" \
		>"$out/fuzz-$t.log" 2>&1; then
		echo "fuzz-$t: FAILED, see $out/fuzz-$t.log and $out/crash-*"
		tail -40 "$out/fuzz-$t.log"
		status=1
		continue
	fi
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz-$t.log")
	cov=$(grep -o 'cov: [0-9]*' "$out/fuzz-$t.log" | tail -1)
	echo "fuzz-$t: ${secs[$t]} s, $runs inputs, $cov edges, no crash, hang or leak"
done
exit $status
