"""What tflite_bench's command lines share: flag spelling, help, one-line errors (exit 2)."""

from __future__ import annotations

import os
import sys

HELP_FLAGS = ("-h", "--help", "--helpfull", "--helpshort")


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit code 2."""


def normalize(argv, aliases=None):
    """Accepts --flag-name as --flag_name; `aliases` maps a flag name to its replacement."""
    out = []
    for a in argv:
        if a.startswith("--") and a != "--":
            name, eq, value = a[2:].partition("=")
            name = name.replace("-", "_")
            a = "--" + aliases[name] if aliases and name in aliases else "--" + name + eq + value
        out.append(a)
    return out


def one_line(error) -> str:
    """An exception's message on one line."""
    return " ".join(str(error).split())


def main(prog, doc, flag_values, run, argv=None):
    """Runs `run(argv) -> exit code` as a command line; returns the exit code.

    `--help` prints `doc` and the flags; a UsageError, OSError or ValueError is printed as
    `prog: error: message` on one line and gives exit code 2 (no traceback).
    """
    argv = sys.argv if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(doc)
        print(flag_values.get_help())
        return 0
    try:
        return run(argv)
    except (UsageError, OSError, ValueError) as e:
        sys.stderr.write(f"{prog}: error: {one_line(e)}\n")
        return 2
