#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The frame-size table of bench/RESULTS.md: uffd-snap-bench run RUNS times
# on IMAGE (bench/snap-image.py writes one), each run's table printed, then
# the median of each figure over the runs (a shared machine's noise hits
# single runs).
#   bench/snap-frames.sh BUILD_DIR IMAGE [RUNS] [SAMPLES]
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR IMAGE [RUNS] [SAMPLES]}
image=${2:?usage: $0 BUILD_DIR IMAGE [RUNS] [SAMPLES]}
runs=${3:-3}
samples=${4:-200}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
	"$build/bench/uffd-snap-bench" "$image" "$(dirname "$image")" "$samples" | tee "$out/run$i"
done
echo "median of $runs runs:"
python3 - "$out"/run* <<'PY'
import statistics, sys
rows, order = {}, []
for path in sys.argv[1:]:
    for line in open(path):
        f = line.split()
        if not f or f[0] in ("image", "frame"):
            continue
        if f[0] not in rows:
            rows[f[0]] = []
            order.append(f[0])
        rows[f[0]].append([float(x) for x in f[1:]])
print("frame     ratio    pack_s    MB/s    frames   decomp_us  4k_warm_us  4k_cold_us   fault1_us   fault2_us")
for k in order:
    m = [statistics.median(c) for c in zip(*rows[k])]
    print("%-7s %7.2f %9.2f %7.0f %9d %11.0f %11.0f %11.0f %11.0f %11.1f" % (k, *m[:3], int(m[3]), *m[4:]))
PY
