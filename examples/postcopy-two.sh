#!/usr/bin/env bash
# postcopy as two processes, the way it runs on two machines, over 127.0.0.1:
# the source listens on a free port (--listen 127.0.0.1:0 prints it), the
# destination connects to it.
# usage: postcopy-two.sh POSTCOPY [--mib N] [destination options...]
set -euo pipefail
exe=$1
shift
mib=16
if [ "${1:-}" = --mib ]; then
	mib=$2
	shift 2
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$exe" --listen 127.0.0.1:0 --mib "$mib" 2>"$log" &
src=$!
port=
for _ in $(seq 200); do	# the source announces its port once it listens
	port=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$log")
	[ -n "$port" ] && break
	kill -0 "$src" 2>/dev/null || break
	sleep 0.05
done
if [ -z "$port" ]; then
	echo "postcopy-two: the source did not start listening" >&2
	cat "$log" >&2
	kill "$src" 2>/dev/null || true
	exit 1
fi
status=0
"$exe" --connect "127.0.0.1:$port" "$@" || status=$?
wait "$src" || status=$?
exit $status
