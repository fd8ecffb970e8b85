#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""debian/libuffdN.symbols lists every exported symbol with its version node,
as src/libuffd.map declares them and as the built library exports them.

The symbols file is derived from the map: a symbol of node LIBUFFD_X.Y
appeared in version X.Y.0. The check fails with the lines to change; with
--update it rewrites the file from the map instead. When dpkg-gensymbols is
installed, the symbols it reads from the built library must be the file's
(the package build checks the same with DPKG_GENSYMBOLS_CHECK_LEVEL 4).

usage: check-deb-symbols.py libuffd.map libuffd.so SRCDIR [--update]"""
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checklib import finish, soname  # noqa: E402

UPDATE = "tests/check-deb-symbols.py src/libuffd.map BUILD/src/libuffd.so . --update"


def map_nodes(path):
    """[(node, [symbols])] in file order."""
    text = re.sub(r"/\*.*?\*/|#[^\n]*", " ", open(path).read(), flags=re.S)
    nodes = []
    for m in re.finditer(r"(LIBUFFD_[\d.]+)\s*\{(.*?)\}", text, re.S):
        body = m.group(2)
        g = re.search(r"global:(.*?)(?:local:|$)", body, re.S)
        syms = [s.strip() for s in (g.group(1) if g else "").split(";") if s.strip()]
        nodes.append((m.group(1), syms))
    return nodes


def expected(nodes, so, pkg):
    lines = []
    for node, syms in nodes:
        minver = node.split("_", 1)[1] + ".0"
        lines += [f" {s}@{node} {minver}" for s in [node] + syms]
    return [f"{so} {pkg} #MINVER#", "* Build-Depends-Package: libuffd-dev"] + sorted(lines)


def names(lines):
    """The sym@VERSION entries of symbols-file lines."""
    return {l.split()[0] for l in lines if l.startswith(" ")}


def exported(lib, pkg, srcdir):
    """The library's symbols as dpkg-gensymbols sees them, or None without it."""
    if not shutil.which("dpkg-gensymbols"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "symbols")
        # A listing, not a check: the package build's check level must not apply.
        env = {k: v for k, v in os.environ.items() if k != "DPKG_GENSYMBOLS_CHECK_LEVEL"}
        subprocess.run(["dpkg-gensymbols", "-p" + pkg, "-e" + os.path.abspath(lib),
                        "-I/dev/null", "-O" + out, "-c0", "-q"], cwd=srcdir, env=env, check=True)
        return names(open(out).read().splitlines())


def main():
    args = [a for a in sys.argv[1:] if a != "--update"]
    mapfile, lib, srcdir = args[:3]
    so, number = soname(lib)
    if not so:
        return finish([f"{lib} has no SONAME libuffd.so.N"], "no SONAME", "")
    pkg = "libuffd" + number
    symfile = os.path.join(srcdir, "debian", pkg + ".symbols")
    want = expected(map_nodes(mapfile), so, pkg)
    if "--update" in sys.argv:
        with open(symfile, "w") as f:
            f.write("\n".join(want) + "\n")
        print(f"wrote {symfile}: {len(want) - 2} symbols")
        return 0

    have = open(symfile).read().splitlines() if os.path.exists(symfile) else []
    if have != want:
        diff = difflib.unified_diff(have, want, f"debian/{pkg}.symbols", "from src/libuffd.map",
                                    lineterm="")
        return finish(list(diff), f"debian/{pkg}.symbols differs from src/libuffd.map; "
                      f"rewrite it with: {UPDATE}", "")

    exp = exported(lib, pkg, srcdir)
    if exp is None:
        return finish([], "", f"debian/{pkg}.symbols = src/libuffd.map ({len(want) - 2} symbols); "
                      "dpkg-gensymbols not installed, built library not compared")
    listed = names(want)
    problems = [f"{n}: exported by {lib} but not in src/libuffd.map" for n in sorted(exp - listed)]
    problems += [f"{n}: in src/libuffd.map but not exported by {lib}" for n in sorted(listed - exp)]
    return finish(problems, f"the library's exports (read by dpkg-gensymbols) differ from debian/{pkg}.symbols",
                  f"debian/{pkg}.symbols = src/libuffd.map = exports of {os.path.basename(lib)} "
                  f"({len(want) - 2} symbols, read by dpkg-gensymbols)")


sys.exit(main())
