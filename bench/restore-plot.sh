#!/bin/sh
# SPDX-License-Identifier: MIT
# Plots the table of uffd-restore (its text output, in a file) as an SVG
# bar chart of the time per contender, warm and cold, for one variant
# (page size and guest memory, default "4k anon"). Needs gnuplot; not part
# of the build.
# usage: restore-plot.sh TABLE.txt OUT.svg [PAGE MEMORY [TITLE]]
set -eu
[ $# -ge 2 ] || { echo "usage: $0 TABLE.txt OUT.svg [PAGE MEMORY [TITLE]]" >&2; exit 2; }
page=${3:-4k} mem=${4:-anon}
data=$(mktemp)
trap 'rm -f "$data"' EXIT
# One line per implemented contender: name, warm ms, cold ms ("-" if absent).
awk -v page="$page" -v mem="$mem" '
  $1 == page && $2 == mem && ($3 == "warm" || $3 == "cold") && $5 != "-" {
    ms[$4 "," $3] = $5; if (!($4 in seen)) { seen[$4] = 1; order[n++] = $4 } }
  END { for (i = 0; i < n; i++) { c = order[i]
        w = (c ",warm") in ms ? ms[c ",warm"] : "-"; k = (c ",cold") in ms ? ms[c ",cold"] : "-"
        print c, w, k } }' "$1" > "$data"
[ -s "$data" ] || { echo "$0: no rows for $page $mem in $1" >&2; exit 1; }
gnuplot <<GP
set terminal svg size 1000,420 dynamic font "sans,12" noenhanced
set output "$2"
set title "${5:-uffd-restore, $page pages, $mem memory: start to last touch (median)}"
set ylabel "ms"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set datafile missing "-"
set key top right
set grid ytics
set yrange [0:*]
set xtics nomirror font ",10"
plot "$data" using 2:xtic(1) title "warm page cache", "" using 3 title "cold page cache"
GP
