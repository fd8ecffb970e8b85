#!/usr/bin/env bash
# Restoring from another machine, on loopback: the fc-vmm stand-in for
# Firecracker restored by uffd-serve with --memory
#   local cold   the snapshot file, dropped from the page cache before each run
#   nginx RTT    http:// from nginx (127.0.0.1) through tests/delay-relay, which
#                holds every chunk for half the round-trip time each way
#   nbdkit D     nbd+unix:// from nbdkit's file plugin with its delay filter
#                (delay-read=D: every read waits D)
# each as demand-only, --replay of a trace recorded by a first run (local),
# and --replay + --fill (the fill's bandwidth: image bytes / completion time).
# Also: what curl alone fetches of the whole image over the same relay, one
# connection (the fill's reference). A snapshot of --mib MiB (default 1024),
# --pct percent of its pages touched (default 25) by 2 guest threads, of
# which --write-pct percent are written (default 40: the first touch of such
# a page writes its first word, a write fault); fc-vmm checks every byte of
# each page it touches, and with --fill every page after the serve left.
# Last, the issue's targets: replay at 1 ms over the local cold replay, the
# fill's bandwidth over curl's.
# usage: bench/remote-bench.sh [BUILD_DIR] [--mib N] [--pct P] [--write-pct W] [--rtts "1 10"]
set -euo pipefail

build=build
mib=1024
pct=25
wpct=40
rtts="1 10"
while [ $# -gt 0 ]; do
	case "$1" in
	--mib) mib=$2; shift 2 ;;
	--pct) pct=$2; shift 2 ;;
	--write-pct) wpct=$2; shift 2 ;;
	--rtts) rtts=$2; shift 2 ;;
	-*) echo "usage: $0 [BUILD_DIR] [--mib N] [--pct P] [--write-pct W] [--rtts \"1 10\"]" >&2; exit 2 ;;
	*) build=$1; shift ;;
	esac
done
vmm=$build/examples/fc-vmm
serve=$build/tools/uffd-serve
relay=$build/tests/delay-relay
for b in "$vmm" "$serve" "$relay"; do
	[ -x "$b" ] || { echo "$0: $b is not built" >&2; exit 1; }
done
for p in /usr/sbin/nginx /usr/bin/nbdkit /usr/bin/curl; do
	[ -x "$p" ] || { echo "$0: $p is not installed" >&2; exit 1; }
done

dir=$(mktemp -d /var/tmp/remote-bench-XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
snap=$dir/snap.img
sock=$dir/vm.sock
"$vmm" --make-snapshot "$snap" --mib "$mib" >/dev/null
chmod 644 "$snap"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx, one process, on 127.0.0.1
port=$(free_port)
cat >"$dir/nginx.conf" <<EOF
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 256; }
http {
 access_log off;
 client_body_temp_path $dir/t1; proxy_temp_path $dir/t2; fastcgi_temp_path $dir/t3;
 uwsgi_temp_path $dir/t4; scgi_temp_path $dir/t5;
 keepalive_requests 100000;
 sendfile on;
 server { listen 127.0.0.1:$port; root $dir; }
}
EOF
/usr/sbin/nginx -c "$dir/nginx.conf" -g 'daemon off;' &
pids+=($!)
until curl -s -o /dev/null "http://127.0.0.1:$port/snap.img" -r 0-0; do sleep 0.05; done

kv() { sed -n "s/.*[ {,\"]$2[\"]*[=:]\\([0-9]*\\).*/\\1/p" "$1" | head -n 1; }

# run NAME URL [uffd-serve options]: sets us (resume to last touch), faults, fill_mbs.
# With --fill the guest waits for the serve to detach, then checks every page.
run() {
	local name=$1 url=$2 after=()
	shift 2
	[[ " $* " == *" --fill "* ]] && after=(--after-handler)
	"$serve" --socket "$sock" --memory "$url" --json "$@" >"$dir/h.out" 2>"$dir/h.err" &
	local hpid=$!
	"$vmm" --socket "$sock" --memory "$snap" --touch-pct "$pct" --write-pct "$wpct" --threads 2 --deadline 1800 \
		"${after[@]}" >"$dir/v.out"
	wait "$hpid" || { echo "$0: $name: uffd-serve failed: $(cat "$dir/h.err")" >&2; exit 1; }
	grep -q 'bad_pages=0 .*after_handler_bad=0' "$dir/v.out" || { echo "$0: $name: wrong bytes: $(cat "$dir/v.out")" >&2; exit 1; }
	us=$(kv "$dir/v.out" restore_us)
	faults=$(kv "$dir/h.out" missing)
	local c
	c=$(kv "$dir/h.out" complete_ns)
	fill_mbs=-
	if [ ${#after[@]} -gt 0 ] && [ -n "$c" ] && [ "$c" -gt 0 ]; then
		fill_mbs=$(awk -v b=$((mib << 20)) -v c="$c" 'BEGIN { printf "%.0f", b / 1048576 / (c / 1e9) }')
	fi
}

cold() { dd if="$snap" iflag=nocache count=0 status=none; }
stop() { kill -9 "$1"; wait "$1" 2>/dev/null || true; }	# quietly: no "Killed" line from the shell

rows=()
declare -A res	# NAME/MODE -> restore ms, NAME/fill -> MiB/s
row() {
	res["$1/$2"]=$(awk -v u="$us" 'BEGIN { printf "%.1f", u / 1000 }')
	[ "$fill_mbs" != - ] && res["$1/fill"]=$fill_mbs
	rows+=("$(printf '%-16s %-12s %12s %8s %10s' "$1" "$2" "${res["$1/$2"]}" "$faults" "$fill_mbs")")
}

# The working set, recorded once from the local file.
run record "$snap" --record "$dir/trace"

measure() {	# measure NAME URL [prepare]
	local name=$1 url=$2 prep=${3:-true}
	$prep; run "$name" "$url"; row "$name" demand
	$prep; run "$name" "$url" --replay "$dir/trace"; row "$name" replay
	$prep; run "$name" "$url" --replay "$dir/trace" --fill; row "$name" "replay+fill"
}

measure "local cold" "$snap" cold
curlrows=()
for r in $rtts; do
	"$relay" "$port" $((r * 1000)) >"$dir/relay.port" &
	pids+=($!)
	until [ -s "$dir/relay.port" ]; do sleep 0.01; done
	rp=$(cat "$dir/relay.port")
	measure "nginx ${r}ms" "http://127.0.0.1:$rp/snap.img"
	bw=$(curl -s -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$rp/snap.img")
	res["curl ${r}ms"]=$(awk -v b="$bw" 'BEGIN { printf "%.0f", b / 1048576 }')
	curlrows+=("$(printf 'curl alone, one connection, %2s ms relay: %s MiB/s' "$r" "${res["curl ${r}ms"]}")")
	stop "${pids[-1]}"; rm -f "$dir/relay.port"
	rm -f "$dir/nbd.sock"
	nbdkit -f --exit-with-parent -U "$dir/nbd.sock" --filter=delay file "$snap" delay-read="${r}ms" &
	pids+=($!)
	until [ -S "$dir/nbd.sock" ]; do sleep 0.01; done
	measure "nbdkit ${r}ms" "nbd+unix:///?socket=$dir/nbd.sock"
	stop "${pids[-1]}"
done

echo "fc-vmm restored by uffd-serve --memory URL: $mib MiB, $pct% working set, $wpct% of it written, 2 guest threads"
printf '%-16s %-12s %12s %8s %10s\n' source mode "restore ms" faults "fill MiB/s"
printf '%s\n' "${rows[@]}"
printf '%s\n' "${curlrows[@]}"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "targets: replay over the local cold replay (<= 1.5); fill over curl alone (>= 0.70)"
for r in $rtts; do
	for s in nginx nbdkit; do
		printf '  %-7s %2s ms: replay %sx local cold' "$s" "$r" "$(ratio "${res["$s ${r}ms/replay"]}" "${res["local cold/replay"]}")"
		[ $s = nginx ] && printf ', fill %s of curl' "$(ratio "${res["$s ${r}ms/fill"]:-0}" "${res["curl ${r}ms"]}")"
		echo
	done
done
