# SPDX-License-Identifier: MIT
"""Shared by the release checks (check-version.py, check-deb-symbols.py)."""
import re
import subprocess


def soname(lib):
    """(SONAME, its number) of a shared library, or (None, None)."""
    out = subprocess.run(["readelf", "-d", "--wide", lib], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"\(SONAME\).*\[(libuffd\.so\.(\d+))\]", out)
    return (m.group(1), m.group(2)) if m else (None, None)


def finish(problems, fail, ok):
    """Print the problems and a closing line; the exit status."""
    for p in problems:
        print(p)
    print(f"FAIL: {fail}" if problems else ok)
    return 1 if problems else 0
