#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""One version everywhere: meson.build's project version is the source;
uffd.h's LIBUFFD_VERSION_* macros, the generated uffd.pc, the shared
library's file name, debian/changelog and every man page's footer must say
the same, and the SONAME
must match the Debian runtime package (debian/control, the symbols file).

usage: check-version.py VERSION uffd.h uffd.pc libuffd.so SRCDIR"""
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checklib import finish, soname  # noqa: E402


def header_version(path):
    text = open(path).read()
    parts = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(r"^#define\s+LIBUFFD_VERSION_%s\s+(\d+)\s*$" % part, text, re.M)
        parts.append(m.group(1) if m else "?")
    return ".".join(parts)


def pc_version(path):
    m = re.search(r"^Version:\s*(\S+)", open(path).read(), re.M)
    return m.group(1) if m else None


def changelog_version(path):
    first = open(path).readline()
    m = re.match(r"^\S+ \(([^)]+)\)", first)
    if not m:
        return None
    v = m.group(1).split(":", 1)[-1]  # no epoch
    return v.rsplit("-", 1)[0] if "-" in v else v  # upstream part


def runtime_packages(control):
    return re.findall(r"^Package:\s*(libuffd\d+)\s*$", open(control).read(), re.M)


def man_versions(mandir, version):
    """Pages whose .TH footer names another version than "libuffd MAJOR.MINOR"."""
    want = "libuffd " + ".".join(version.split(".")[:2])
    bad = []
    for name in sorted(os.listdir(mandir)):
        if not re.search(r"\.[1-8]$", name):
            continue
        text = open(os.path.join(mandir, name)).read()
        if text.startswith(".so "):
            continue  # a link to another page
        m = re.search(r'^\.TH\s+\S+\s+\S+\s+"[^"]*"\s+"([^"]*)"', text, re.M)
        if not m or m.group(1) != want:
            bad.append(f"man/{name} says {m.group(1) if m else 'no .TH'!r}, want {want!r}")
    return bad


def symbols_header(path):
    return open(path).readline().split()[:2]


def main():
    version, header, pc, lib, srcdir = sys.argv[1:6]
    debian = os.path.join(srcdir, "debian")
    found = {
        "uffd.h LIBUFFD_VERSION_*": header_version(header),
        "uffd.pc Version": pc_version(pc),
        "debian/changelog": changelog_version(os.path.join(debian, "changelog")),
    }
    real = os.path.basename(os.path.realpath(lib))
    found["shared library file"] = real[len("libuffd.so."):] if real.startswith("libuffd.so.") else real
    problems = [f"{what} says {v!r}, meson.build says {version!r}"
                for what, v in found.items() if v != version]
    problems += man_versions(os.path.join(srcdir, "man"), version)

    so, number = soname(lib)
    if not so:
        problems.append(f"{lib} has no SONAME libuffd.so.N")
        return finish(problems, f"{len(problems)} disagreement(s) with version {version}", "")
    pkg = "libuffd" + number
    pkgs = runtime_packages(os.path.join(debian, "control"))
    if pkgs != [pkg]:
        problems.append(f"debian/control runtime package(s) {pkgs}, SONAME {so} wants {pkg}")
    sym = os.path.join(debian, pkg + ".symbols")
    if not os.path.exists(sym):
        problems.append(f"no debian/{pkg}.symbols for SONAME {so}")
    elif symbols_header(sym) != [so, pkg]:
        problems.append(f"debian/{pkg}.symbols starts with {symbols_header(sym)}, want {[so, pkg]}")
    return finish(problems, f"{len(problems)} disagreement(s) with version {version}",
                  f"version {version} everywhere: uffd.h, uffd.pc, {real}, debian/changelog, man pages; "
                  f"SONAME {so} = package {pkg}")

sys.exit(main())
