#!/bin/sh
# SPDX-License-Identifier: MIT
# Plots the pages present over time of uffd-restore --timeline FILE as an
# SVG: one panel per page cache state (warm, cold), one line per contender,
# for one variant (page size and guest memory, default "4k anon"). Needs
# gnuplot; not part of the build.
# usage: restore-timeline.sh TIMELINE.txt OUT.svg [PAGE MEMORY [CONTENDERS]]
#   CONTENDERS: comma-separated (default baseline,libuffd,libuffd_replay,kernel)
set -eu
[ $# -ge 2 ] || { echo "usage: $0 TIMELINE.txt OUT.svg [PAGE MEMORY [CONTENDERS]]" >&2; exit 2; }
page=${3:-4k} mem=${4:-anon} who=${5:-baseline,libuffd,libuffd_replay,kernel}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# One file per cache state and contender: t_ms MiB_present.
awk -v page="$page" -v mem="$mem" -v who=",$who," -v dir="$dir" '
  $1 == page && $2 == mem && index(who, "," $4 ",") {
    print $5, $6 * 4 / 1024 > (dir "/" $3 "-" $4) }' "$1"
plots() {
	sep=""
	for c in $(echo "$who" | tr , ' '); do
		[ -s "$dir/$1-$c" ] || continue
		printf '%s"%s" using 1:2 with steps lw 2 title "%s"' "$sep" "$dir/$1-$c" "$c"
		sep=", "
	done
}
warm=$(plots warm) cold=$(plots cold)
[ -n "$warm$cold" ] || { echo "$0: no samples for $page $mem in $1" >&2; exit 1; }
gnuplot <<GP
set terminal svg size 1000,440 dynamic font "sans,12" noenhanced
set output "$2"
set multiplot layout 1,2 title "uffd-restore, $page pages, $mem memory: guest memory present over time"
set xlabel "ms since the guest's start"
set ylabel "MiB present"
set key bottom right
set grid
set xrange [0:*]
set yrange [0:*]
set title "warm page cache"
${warm:+plot $warm}
set title "cold page cache"
${cold:+plot $cold}
unset multiplot
GP
