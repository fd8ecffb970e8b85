#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write a realistic memory image for the compressed-snapshot benchmark: the
anonymous memory of a real python3 interpreter.

A child python3 imports a set of standard modules and compiles the sources
of the whole standard library, kept with their code objects (code objects, interned
strings, dicts: the memory of a busy interpreter), then stops itself. This
script copies every private anonymous mapping of the child (heap, malloc
arenas, Python's object arenas, its stack) through /proc/PID/mem into one
file, mapping after mapping, in address order; pages never touched read as
zeros, as they would in a guest's memory file. The image is padded with
zeros to a multiple of 4 MiB.

With a second file, the child then runs on a little (it builds a dict of
20000 entries) and stops again, and the
same address ranges are written to the second file at the same offsets
(a range the child unmapped meanwhile reads as zeros; mappings it made
meanwhile are left out): the image of one process at two moments, as a
memory file and a later one of the same layout, for a diff. With a third
file, that one gets what Firecracker writes for a Diff snapshot: the 4 KiB
pages of LATER that differ from OUTPUT, holes elsewhere.

With --workset WS, the child then does a re-run instead (regular
expressions over a fourth of the sources it holds, a JSON round trip,
decimals, a hash, a count over its code objects: work of a warm
interpreter with what it loaded) and stops again; WS gets the 4 KiB pages
of OUTPUT whose bytes the re-run left changed, as page numbers, one per
line, in address order: a working set recorded from the real process, but
only its written part, and only where the bytes differ at the end (a
reference count raised and dropped again leaves its page unchanged; pages
only read are missing). This kernel has neither soft-dirty bits nor idle
page tracking to record every page touched.

usage: snap-image.py OUTPUT [LATER [DIFF]]
       snap-image.py --workset WS OUTPUT
"""
import os
import re
import signal
import subprocess
import sys

CHILD = r"""
import os, signal, sys, glob, sysconfig, warnings
warnings.simplefilter("ignore")
import json, decimal, email, email.parser, http.client, xml.dom.minidom, asyncio
import sqlite3, unittest, argparse, collections, datetime, fractions, hashlib
import logging, pathlib, pickle, random, re, shutil, socket, ssl, statistics
import string, struct, subprocess, tarfile, textwrap, threading, typing, urllib.request
import uuid, zipfile, csv, difflib, inspect, pydoc, tokenize, ast
kept = []
lib = sysconfig.get_paths()["stdlib"]
for path in sorted(glob.glob(os.path.join(lib, "**", "*.py"), recursive=True)):
    try:
        src = open(path, encoding="utf-8").read()
        kept.append((src, compile(src, path, "exec")))
    except Exception:
        pass
os.kill(os.getpid(), signal.SIGSTOP)
if os.environ.get("SNAP_IMAGE_RERUN"):
    # a re-run: the warm interpreter does some work with what it holds
    names = [re.findall(r"^def (\w+)", src, re.M) for src, code in kept[::4]]
    blob = json.dumps({"names": names, "q": [str(decimal.Decimal(i) / 7) for i in range(500)]})
    back = json.loads(blob)
    digest = hashlib.sha256(blob.encode()).hexdigest()
    sizes = collections.Counter(len(code.co_consts) for src, code in kept)
else:
    d = {i: str(i) for i in range(20000)}
os.kill(os.getpid(), signal.SIGSTOP)
"""

def wait_stopped(child):
    while True:
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        if os.WIFSTOPPED(status):
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            sys.exit("the python3 child exited before stopping")


def anon_ranges(pid):
    """The private anonymous mappings of pid: (start, end) in address order."""
    ranges = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            f = line.split()
            start, end = (int(x, 16) for x in f[0].split("-"))
            perms, inode = f[1], f[4]
            name = f[5] if len(f) > 5 else ""
            # private anonymous memory: no file behind it
            if inode != "0" or perms[3] != "p" or "r" not in perms or \
               name in ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]"):
                continue
            ranges.append((start, end))
    return ranges


def dump(pid, ranges, path):
    """ranges of pid's memory one after the other into path; unreadable pages as zeros."""
    total = 0
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem, open(path, "wb") as out:
        for start, end in ranges:
            addr = start
            while addr < end:
                n = min(end - addr, 1 << 20)
                try:
                    mem.seek(addr)
                    chunk = mem.read(n)
                except OSError:
                    chunk = b""
                if len(chunk) < n:  # unmapped since: zeros, one page at a time
                    chunk += bytes(min(n - len(chunk), 4096))
                out.write(chunk)
                addr += len(chunk)
            total += end - start
        pad = -total % (4 << 20)
        out.truncate(total + pad)
    return total, pad


def write_diff(old, new, path):
    """The pages of new that differ from old, at their offsets; holes elsewhere."""
    pages = 0
    size = os.path.getsize(new)
    with open(old, "rb") as a, open(new, "rb") as b, open(path, "wb") as out:
        out.truncate(size)
        for off in range(0, size, 1 << 20):
            x, y = a.read(1 << 20), b.read(1 << 20)
            for p in range(0, len(y), 4096):
                if x[p:p + 4096] != y[p:p + 4096]:
                    out.seek(off + p)
                    out.write(y[p:p + 4096])
                    pages += 1
    return pages


def changed_pages(old, new, path):
    """The page numbers of the pages of new that differ from old, one per line."""
    n = 0
    with open(old, "rb") as a, open(new, "rb") as b, open(path, "w") as out:
        for off in range(0, os.path.getsize(new), 1 << 20):
            x, y = a.read(1 << 20), b.read(1 << 20)
            for p in range(0, len(y), 4096):
                if x[p:p + 4096] != y[p:p + 4096]:
                    out.write(f"{(off + p) // 4096}\n")
                    n += 1
    return n


def main():
    ws = None
    if sys.argv[1:2] == ["--workset"] and len(sys.argv) == 4:
        ws = sys.argv[2]
        del sys.argv[1:3]
    elif len(sys.argv) not in (2, 3, 4):
        sys.exit(__doc__)
    env = dict(os.environ, SNAP_IMAGE_RERUN="1") if ws else None
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env)
    try:
        wait_stopped(child)
        ranges = anon_ranges(child.pid)
        total, pad = dump(child.pid, ranges, sys.argv[1])
        print(f"{sys.argv[1]}: {total} bytes of python3's anonymous memory, "
              f"{pad} bytes of padding", file=sys.stderr)
        if ws:
            child.send_signal(signal.SIGCONT)
            wait_stopped(child)
            later = ws + ".later"
            dump(child.pid, ranges, later)
            n = changed_pages(sys.argv[1], later, ws)
            os.unlink(later)
            print(f"{ws}: {n} pages of the image changed by the re-run", file=sys.stderr)
        if len(sys.argv) >= 3:
            child.send_signal(signal.SIGCONT)
            wait_stopped(child)
            dump(child.pid, ranges, sys.argv[2])
            print(f"{sys.argv[2]}: the same ranges, later", file=sys.stderr)
        if len(sys.argv) == 4:
            pages = write_diff(sys.argv[1], sys.argv[2], sys.argv[3])
            print(f"{sys.argv[3]}: {pages} pages changed", file=sys.stderr)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


if __name__ == "__main__":
    main()
