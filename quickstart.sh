#!/usr/bin/env bash
# The two commands of the README, for a fresh Debian 12 machine:
#   ./quickstart.sh demo   install what is missing, build, run the demo
#   ./quickstart.sh test   install what is missing, build, run every test suite
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(gcc g++ libc6-dev pkg-config meson ninja-build liburing-dev check python3)
BUILD=build

usage() {
	echo "usage: $0 demo|test" >&2
	exit 2
}

install_missing() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "Missing packages: ${missing[*]}. Install them with:"
		echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
		exit 1
	fi
	echo "Installing ${missing[*]} ..."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
	if [ -f "$BUILD/build.ninja" ]; then
		meson setup --reconfigure "$BUILD" >/dev/null
	else
		meson setup "$BUILD" >/dev/null
	fi
	ninja -C "$BUILD"
}

[ $# -eq 1 ] || usage
case "$1" in
demo)
	install_missing
	build
	exec examples/demo.sh "$BUILD"
	;;
test)
	install_missing
	build
	exec meson test -C "$BUILD" --print-errorlogs
	;;
*)
	usage
	;;
esac
