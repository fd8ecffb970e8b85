#!/bin/sh
# SPDX-License-Identifier: MIT
# Plots the curves of uffd-restore as an SVG, one panel per page cache
# state (warm, cold), one line per contender, for one variant (page size
# and guest memory, default "4k anon"). Needs gnuplot; not part of the build.
#   timeline: guest memory present over time, from --timeline FILE
#             (CONTENDERS default baseline,libuffd,libuffd_replay,kernel)
#   latency:  CDF of the fault service time (read to resolved) on a log
#             axis, from the log2 histograms of --latency FILE
#             (CONTENDERS default: all that have one)
# usage: restore-curves.sh timeline|latency DATA.txt OUT.svg [PAGE MEMORY [CONTENDERS]]
set -eu
[ $# -ge 3 ] && { [ "$1" = timeline ] || [ "$1" = latency ]; } ||
	{ echo "usage: $0 timeline|latency DATA.txt OUT.svg [PAGE MEMORY [CONTENDERS]]" >&2; exit 2; }
kind=$1 page=${4:-4k} mem=${5:-anon}
if [ "$kind" = timeline ]; then
	who=${6:-baseline,libuffd,libuffd_replay,kernel}
else
	who=${6:-$(awk '!/^#/ { print $4 }' "$2" | sort -u | paste -sd, -)}
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# One file per cache state and contender. timeline: t_ms MiB_present.
# latency: the CDF as (bucket's upper bound in us, fraction), from 0 at the
# lowest bucket's lower bound.
awk -v kind="$kind" -v page="$page" -v mem="$mem" -v who=",$who," -v dir="$dir" '
  $1 != page || $2 != mem || !index(who, "," $4 ",") { next }
  kind == "timeline" { print $5, $6 * 4 / 1024 > (dir "/" $3 "-" $4); next }
  { k = $3 "-" $4; if (!(k in tot)) keys[n++] = k
    j = cnt[k]++ + 0; lo[k, j] = $5; c[k, j] = $6; tot[k] += $6 }
  END { for (i = 0; i < n; i++) { k = keys[i]; f = dir "/" k; s = 0
          print lo[k, 0] / 1000, 0 > f
          for (j = 0; j < cnt[k]; j++) { s += c[k, j]; print 2 * lo[k, j] / 1000, s / tot[k] > f }
          close(f) } }' "$2"
# A contender keeps its colour across plots.
colour() {
	case $1 in
	baseline) echo '#9400d3' ;; libuffd) echo '#009e73' ;; libuffd_source) echo '#56b4e9' ;;
	libuffd_around) echo '#e69f00' ;; libuffd_replay) echo '#d55e00' ;;
	libuffd_fill) echo '#0072b2' ;; *) echo '#000000' ;;
	esac
}
plots() {
	sep=""
	for c in $(echo "$who" | tr , ' '); do
		[ -s "$dir/$1-$c" ] || continue
		printf '%s"%s" using 1:2 with steps lw 2 lc rgb "%s" title "%s"' "$sep" "$dir/$1-$c" \
			"$(colour "$c")" "$c"
		sep=", "
	done
}
warm=$(plots warm) cold=$(plots cold)
[ -n "$warm$cold" ] || { echo "$0: no $kind data for $page $mem in $2" >&2; exit 1; }
if [ "$kind" = timeline ]; then
	title="guest memory present over time"
	setup='set xlabel "ms since the start of the guest"
set ylabel "MiB present"
set xrange [0:*]
set yrange [0:*]'
else
	title="fault service time (read to resolved), CDF"
	setup='set xlabel "us (log2 buckets)"
set ylabel "fraction of faults"
set logscale x 2
set format x "%g"
set yrange [0:1.02]'
fi
gnuplot <<GP
set terminal svg size 1000,440 dynamic font "sans,12" noenhanced
set output "$3"
$setup
set key bottom right
set grid
set multiplot layout 1,2 title "uffd-restore, $page pages, $mem memory: $title"
set title "warm page cache"
${warm:+plot $warm}
set title "cold page cache"
${cold:+plot $cold}
unset multiplot
GP
