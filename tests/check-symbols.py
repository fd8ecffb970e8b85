#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The shared library exports exactly the functions uffd.h declares, each
listed once in libuffd.map and versioned with the node that lists it
(LIBUFFD_0.1, LIBUFFD_0.2, ...). Only the first node has `local: *;`.

usage: check-symbols.py uffd.h libuffd.map libuffd.so"""
import re
import subprocess
import sys

FIRST = "LIBUFFD_0.1"


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
    """{symbol: version node} of every node; each symbol in one node only."""
    text = re.sub(r"/\*.*?\*/|#[^\n]*", " ", open(path).read(), flags=re.S)
    nodes = re.findall(r"(LIBUFFD_[\d.]+)\s*\{(.*?)\}\s*([\w.]*)\s*;", text, re.S)
    if not nodes or nodes[0][0] != FIRST or "local:" not in nodes[0][1]:
        sys.exit(f"{path}: the first node must be {FIRST} with global: and local:")
    syms = {}
    for i, (ver, body, parent) in enumerate(nodes):
        if i and parent != nodes[i - 1][0]:
            sys.exit(f"{path}: node {ver} must inherit {nodes[i - 1][0]}, not '{parent}'")
        body = body.split("local:")[0].replace("global:", "")
        for s in (x.strip() for x in body.split(";")):
            if not s:
                continue
            if s in syms:
                sys.exit(f"{path}: {s} is listed in {syms[s]} and {ver}")
            syms[s] = ver
    return syms


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


def main():
    header, mapfile, lib = sys.argv[1:4]
    decl, nodes, exp = header_functions(header), map_symbols(mapfile), exported(lib)
    listed = set(nodes)
    problems = []
    for n in sorted(decl - listed):
        problems.append(f"{n}: declared in uffd.h but not in libuffd.map")
    for n in sorted(listed - decl):
        problems.append(f"{n}: in libuffd.map but not declared in uffd.h")
    for n in sorted(listed - set(exp)):
        problems.append(f"{n}: in libuffd.map but not exported by {lib}")
    for n in sorted(set(exp) - listed):
        problems.append(f"{n}: exported by the library but not in libuffd.map")
    for n, v in sorted(exp.items()):
        if n in nodes and v != nodes[n]:
            problems.append(f"{n}: exported with version '{v}', libuffd.map lists it in {nodes[n]}")
    for p in problems:
        print(p)
    if problems or not decl:
        print(f"FAIL: {len(problems)} problem(s); {len(decl)} functions declared")
        return 1
    versions = sorted(set(nodes.values()))
    print(f"{len(decl)} functions: declared, listed and exported in {', '.join(versions)}")
    return 0


sys.exit(main())
