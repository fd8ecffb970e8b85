#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Every exported function (libuffd.map) has its page man/NAME.3, and
libuffd(7) names it in its FUNCTIONS list: the overview covers every API
section.

usage: check-man.py libuffd.map MANDIR"""
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checklib import finish  # noqa: E402


def main():
    mapfile, mandir = sys.argv[1:3]
    names = sorted(set(re.findall(r"^\s*(uffd_\w+);", open(mapfile).read(), re.M)))
    overview = open(os.path.join(mandir, "libuffd.7")).read()
    problems = []
    for n in names:
        if not os.path.exists(os.path.join(mandir, n + ".3")):
            problems.append(f"{n}: no man/{n}.3")
        if not re.search(r"^\.BR " + re.escape(n) + r" \(3\)", overview, re.M):
            problems.append(f"{n}: not in the FUNCTIONS list of man/libuffd.7")
    return finish(problems, f"{len(problems)} function(s) without a page or not in libuffd(7)",
                  f"{len(names)} functions: each has its page and is named in libuffd(7)")


sys.exit(main())
