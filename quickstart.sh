#!/usr/bin/env bash
# The commands of the README, for a fresh Debian 12 machine:
#   ./quickstart.sh demo   install what is missing, build, run the demo
#   ./quickstart.sh test   install what is missing, build, run every test suite
#   ./quickstart.sh deb [OUTDIR]
#                          install the packaging tools and build dependencies,
#                          build the Debian packages from a copy of this tree,
#                          put them into OUTDIR (default build-deb/)
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(gcc g++ libc6-dev pkg-config meson ninja-build liburing-dev libjson-c-dev libsystemd-dev libzstd-dev libcurl4-openssl-dev libnbd-dev check python3)
# What the test suites run against, beyond the build: real servers (the
# remote suite: nginx, nbdkit with its filters) and promtool, which checks
# uffd-serve's metrics (prometheus).
TEST_PACKAGES=(nginx nbdkit prometheus)
BUILD=build

usage() {
	echo "usage: $0 demo|test|deb [OUTDIR]" >&2
	exit 2
}

# install_missing [PACKAGE...]: the packages (default: PACKAGES) not yet
# installed, with apt-get as root; otherwise print the line to run and stop.
install_missing() {
	local missing=() p
	[ $# -gt 0 ] || set -- "${PACKAGES[@]}"
	for p in "$@"; do
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

# The Build-Depends of debian/control (dpkg-checkbuilddeps names the unmet ones).
install_build_deps() {
	install_missing dpkg-dev
	dpkg-checkbuilddeps >/dev/null 2>&1 && return 0
	if [ "$(id -u)" -ne 0 ]; then
		dpkg-checkbuilddeps || true
		echo "Install them with: sudo apt-get build-dep ./"
		exit 1
	fi
	echo "Installing the build dependencies of debian/control ..."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq ./ >/dev/null
}

# build_debs OUTDIR: dpkg-buildpackage in a copy of this tree (the files git
# tracks or would track; all but build*/ without git), so that nothing is
# written here but OUTDIR: the .deb files, the source package, .changes.
build_debs() {
	local out=$1 tmp version rc=0 inside
	version=$(dpkg-parsechangelog -SVersion)
	tmp=$(mktemp -d)
	mkdir -p "$tmp/libuffd-$version" "$out"
	inside=$(realpath --relative-base=. "$out")/	# OUTDIR itself is not copied
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		git ls-files -z -co --exclude-standard | grep -zv "^$inside" |
			tar --null -T - --ignore-failed-read -cf -
	else
		tar --exclude='./build*' -cf - .
	fi | tar -xf - -C "$tmp/libuffd-$version"
	echo "Building libuffd $version in $tmp (log: $out/build.log) ..."
	(cd "$tmp/libuffd-$version" && dpkg-buildpackage -us -uc) >"$out/build.log" 2>&1 || rc=$?
	if [ $rc -eq 0 ]; then
		rm -f "$out"/*.deb "$out"/*.dsc "$out"/*.tar.* "$out"/*.changes "$out"/*.buildinfo
		cp "$tmp"/*.deb "$tmp"/*.dsc "$tmp"/*.tar.* "$tmp"/*.changes "$tmp"/*.buildinfo "$out"/
	else
		tail -40 "$out/build.log"
		echo "dpkg-buildpackage failed (exit $rc): the whole log is $out/build.log"
	fi
	rm -rf "$tmp"
	[ $rc -eq 0 ] || exit $rc
	echo "Packages in $out:"
	(cd "$out" && ls -l ./*.deb | awk '{ printf "  %-40s %8d bytes\n", substr($NF, 3), $5 }')
}

build() {
	if [ -f "$BUILD/build.ninja" ]; then
		meson setup --reconfigure "$BUILD" >/dev/null
	else
		meson setup "$BUILD" >/dev/null
	fi
	ninja -C "$BUILD"
}

[ $# -ge 1 ] || usage
case "$1" in
demo)
	[ $# -eq 1 ] || usage
	install_missing
	build
	exec examples/demo.sh "$BUILD"
	;;
test)
	[ $# -eq 1 ] || usage
	install_missing
	install_missing "${TEST_PACKAGES[@]}"
	build
	exec meson test -C "$BUILD" --print-errorlogs
	;;
deb)
	[ $# -le 2 ] || usage
	install_build_deps
	build_debs "$(realpath -m "${2:-build-deb}")"
	;;
*)
	usage
	;;
esac
