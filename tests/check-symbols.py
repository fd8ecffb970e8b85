#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The shared library exports exactly the functions uffd.h declares, each
listed in one version node of libuffd.map (LIBUFFD_0.1, LIBUFFD_0.2, ...)
and exported with that node's version. The static archive defines
no other global name, and those weak (an application may define its own
uffd_open). Neither library reaches an exported function through a
relocation: an application's function of that name could capture the call.

usage: check-symbols.py uffd.h libuffd.map libuffd.so libuffd.a"""
import re
import subprocess
import sys

NODE = re.compile(r"(LIBUFFD_\d+\.\d+)\s*\{\s*global:(.*?)(?:local:.*?)?\}", re.S)


def header_functions(path):
    text = open(path).read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = text.replace("\\\n", " ")  # macro continuation lines
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)
    # A prototype: a declaration statement ending in `name(...);` at file scope.
    names = set()
    for stmt in text.split(";"):
        stmt = " ".join(stmt.split())
        stmt = re.split(r"[{}]", stmt)[-1].strip()
        m = re.match(r"^(?:extern\s+)?[A-Za-z_][\w\s\*]*?\b(uffd_\w+)\s*\(", stmt)
        if m and not stmt.startswith("typedef"):
            names.add(m.group(1))
    return names


def map_symbols(path):
    """{symbol: version node} of every node's global: list."""
    text = re.sub(r"/\*.*?\*/|#[^\n]*", " ", open(path).read(), flags=re.S)
    nodes = NODE.findall(text)
    if not nodes:
        sys.exit(f"{path}: no LIBUFFD_x.y node with global:")
    return {s.strip(): node for node, body in nodes for s in body.split(";") if s.strip()}


def exported(lib):
    out = subprocess.run(["readelf", "--dyn-syms", "--wide", lib], check=True,
                         capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        f = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(f) >= 8 and f[0].endswith(":") and f[6] != "UND" and f[4] in ("GLOBAL", "WEAK"):
            name, _, ver = f[7].partition("@")
            if f[3] == "OBJECT" and name.startswith("LIBUFFD_"):
                continue
            syms[name] = ver.lstrip("@")
    return syms


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def archive_globals(archive):
    """{name: nm type letter} of the defined and undefined global symbols."""
    syms = {}
    for line in run("nm", "-g", archive).splitlines():
        f = line.split()
        if len(f) >= 2 and len(f[-2]) == 1:
            syms[f[-1]] = f[-2]
    return syms


def relocated_names(path):
    """Symbol names that relocations of path refer to."""
    names = set()
    for line in run("readelf", "--relocs", "--wide", path).splitlines():
        f = line.split()
        # Offset Info Type Sym.Value Sym.Name [+ Addend]
        if len(f) >= 5 and f[2].startswith("R_"):
            names.add(f[4].partition("@")[0])
    return names


def archive_problems(archive, listed):
    syms, problems = archive_globals(archive), []
    defined = {n: t for n, t in syms.items() if t not in "Uuvw"}
    for n in sorted(set(defined) - listed):
        problems.append(f"{n}: global in {archive} but not in libuffd.map")
    for n in sorted(listed - set(defined)):
        problems.append(f"{n}: in libuffd.map but not defined by {archive}")
    for n, t in sorted(defined.items()):
        if n in listed and t != "W":
            problems.append(f"{n}: '{t}' in {archive}, want weak (W)")
    for n, t in sorted(syms.items()):
        if t in "vw":
            problems.append(f"{n}: weak undefined in {archive}, would silently be NULL")
    return problems


def main():
    header, mapfile, lib, archive = sys.argv[1:5]
    decl, listed, exp = header_functions(header), map_symbols(mapfile), exported(lib)
    problems = []
    for n in sorted(decl - set(listed)):
        problems.append(f"{n}: declared in uffd.h but not in libuffd.map")
    for n in sorted(set(listed) - decl):
        problems.append(f"{n}: in libuffd.map but not declared in uffd.h")
    for n in sorted(set(listed) - set(exp)):
        problems.append(f"{n}: in libuffd.map but not exported by {lib}")
    for n in sorted(set(exp) - set(listed)):
        problems.append(f"{n}: exported by the library but not in libuffd.map")
    for n, v in sorted(exp.items()):
        if n in listed and v != listed[n]:
            problems.append(f"{n}: exported with version '{v}', want {listed[n]}")
    problems += archive_problems(archive, set(listed))
    for path in (lib, archive):
        for n in sorted(relocated_names(path) & set(listed)):
            problems.append(f"{n}: {path} calls it through its exported name; "
                            "bind it with UFFD_OWN (src/internal.h)")
    for p in problems:
        print(p)
    if problems or not decl:
        print(f"FAIL: {len(problems)} problem(s); {len(decl)} functions declared")
        return 1
    nodes = ", ".join(sorted(set(listed.values())))
    print(f"{len(decl)} functions: declared, listed and exported in {nodes}; "
          "the only (weak) globals of the static archive; never called through relocations")
    return 0


sys.exit(main())
