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

usage: snap-image.py OUTPUT
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
"""

def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    try:
        # wait until it stopped itself
        while True:
            pid, status = os.waitpid(child.pid, os.WUNTRACED)
            if os.WIFSTOPPED(status):
                break
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                sys.exit("the python3 child exited before stopping")
        total = 0
        with open(f"/proc/{child.pid}/maps") as maps, \
             open(f"/proc/{child.pid}/mem", "rb", buffering=0) as mem, \
             open(sys.argv[1], "wb") as out:
            for line in maps:
                f = line.split()
                start, end = (int(x, 16) for x in f[0].split("-"))
                perms, inode = f[1], f[4]
                name = f[5] if len(f) > 5 else ""
                # private anonymous memory: no file behind it
                if inode != "0" or perms[3] != "p" or "r" not in perms or \
                   name in ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]"):
                    continue
                mem.seek(start)
                n = end - start
                while n:
                    chunk = mem.read(min(n, 1 << 20))
                    out.write(chunk)
                    n -= len(chunk)
                total += end - start
            pad = -total % (4 << 20)
            out.truncate(total + pad)
        print(f"{sys.argv[1]}: {total} bytes of python3's anonymous memory, "
              f"{pad} bytes of padding", file=sys.stderr)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()

if __name__ == "__main__":
    main()
