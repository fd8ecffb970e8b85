#!/bin/sh
# SPDX-License-Identifier: MIT
# Plots the fault service-time distributions of uffd-restore --latency FILE
# (log2 histograms, read to resolved) as an SVG of CDFs on a log time axis:
# one panel per page cache state, one line per contender, for one variant
# (page size and guest memory, default "4k anon"). Needs gnuplot; not part
# of the build.
# usage: restore-latency.sh LATENCY.txt OUT.svg [PAGE MEMORY]
set -eu
[ $# -ge 2 ] || { echo "usage: $0 LATENCY.txt OUT.svg [PAGE MEMORY]" >&2; exit 2; }
page=${3:-4k} mem=${4:-anon}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# One file per cache state and contender: the CDF as (bucket's upper bound in us, fraction),
# starting at 0 at the lowest bucket's lower bound.
awk -v page="$page" -v mem="$mem" -v dir="$dir" '
  $1 == page && $2 == mem { k = $3 "-" $4; if (!(k in tot)) keys[n++] = k
    j = cnt[k]++ + 0; lo[k, j] = $5; c[k, j] = $6; tot[k] += $6 }
  END { for (i = 0; i < n; i++) { k = keys[i]; f = dir "/" k; s = 0
          print lo[k, 0] / 1000, 0 > f
          for (j = 0; j < cnt[k]; j++) { s += c[k, j]; print 2 * lo[k, j] / 1000, s / tot[k] > f }
          close(f) } }' "$1"
plots() {
	sep=""
	for f in "$dir/$1"-*; do
		[ -s "$f" ] || continue
		printf '%s"%s" using 1:2 with steps lw 2 title "%s"' "$sep" "$f" "${f##*/$1-}"
		sep=", "
	done
}
warm=$(plots warm) cold=$(plots cold)
[ -n "$warm$cold" ] || { echo "$0: no histograms for $page $mem in $1" >&2; exit 1; }
gnuplot <<GP
set terminal svg size 1000,440 dynamic font "sans,12" noenhanced
set output "$2"
set multiplot layout 1,2 title "uffd-restore, $page pages, $mem memory: fault service time (read to resolved), CDF"
set xlabel "us (log2 buckets)"
set ylabel "fraction of faults"
set logscale x 2
set format x "%g"
set key bottom right
set grid
set yrange [0:1.02]
set title "warm page cache"
${warm:+plot $warm}
set title "cold page cache"
${cold:+plot $cold}
unset multiplot
GP
