#!/bin/sh
# SPDX-License-Identifier: MIT
# Plots the table of uffd-restore (its text output, in a file) as an SVG
# bar chart of the time per contender, warm and cold. Needs gnuplot; not
# part of the build.
# usage: restore-plot.sh TABLE.txt OUT.svg [TITLE]
set -eu
[ $# -ge 2 ] || { echo "usage: $0 TABLE.txt OUT.svg [TITLE]" >&2; exit 2; }
data=$(mktemp)
trap 'rm -f "$data"' EXIT
# One line per implemented contender: name, warm ms, cold ms ("-" if absent).
awk '($1 == "warm" || $1 == "cold") && $3 != "-" { ms[$2 "," $1] = $3; if (!($2 in seen)) { seen[$2] = 1; order[n++] = $2 } }
     END { for (i = 0; i < n; i++) { c = order[i]
           w = (c ",warm") in ms ? ms[c ",warm"] : "-"; k = (c ",cold") in ms ? ms[c ",cold"] : "-"
           print c, w, k } }' "$1" > "$data"
gnuplot <<GP
set terminal svg size 800,420 dynamic font "sans,12" noenhanced
set output "$2"
set title "${3:-uffd-restore: start to last touch (median)}"
set ylabel "ms"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set datafile missing "-"
set key top right
set grid ytics
set yrange [0:*]
plot "$data" using 2:xtic(1) title "warm page cache", "" using 3 title "cold page cache"
GP
