"""What tflite_bench's command lines share: flag spelling, help, one-line errors (exit 2)."""

from __future__ import annotations

import contextlib
import os
import sys

HELP_FLAGS = ("-h", "--help", "--helpfull", "--helpshort")


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit code 2."""


def normalize(argv, aliases=None, flag_values=None):
    """Accepts --flag-name as --flag_name, and --no-flag-name as absl's --noflag_name.

    Args:
        argv: the command line, program name first.
        aliases: maps a flag name (underscores) to its replacement, e.g.
            {"no_xnnpack": "kernels=builtin"}.
        flag_values: the command's `absl.flags.FlagValues`. With it, `--no-NAME` / `--no_NAME`
            becomes `--noNAME` when NAME is a boolean flag of `flag_values` (and `no_NAME`
            is not a flag itself); without it, they are left to absl.

    Returns:
        The new argv. Arguments after a bare `--` are left as they are.
    """
    out = []
    for i, a in enumerate(argv):
        if a == "--":
            out.extend(argv[i:])
            break
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            name = name.replace("-", "_")
            if aliases and name in aliases:
                a = "--" + aliases[name]
            else:
                if _is_negated_bool(name, flag_values):
                    name = "no" + name[3:]
                a = "--" + name + eq + value
        out.append(a)
    return out


def _is_negated_bool(name, flag_values):
    """True if `name` is no_X for a boolean flag X of `flag_values` (and no_X is no flag)."""
    if flag_values is None or not name.startswith("no_") or name in flag_values:
        return False
    base = name[3:]
    return base in flag_values and bool(getattr(flag_values[base], "boolean", False))


@contextlib.contextmanager
def quiet_stderr():
    """Sends file descriptor 2 to /dev/null inside the block if TF_CPP_MIN_LOG_LEVEL >= 1.

    For the lines TensorFlow's C++ code prints whatever the log level (start-up INFO lines,
    CUDA's "failed call to cuInit" on a machine without a GPU). Python exceptions raised in the
    block still propagate, and are reported after stderr is restored.
    """
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if level < 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow(*modules: str) -> None:
    """Imports TensorFlow, then `modules`, inside `quiet_stderr()`, and lets TensorFlow look
    for devices there: its C++ start-up lines and CUDA's "failed call to cuInit" on a machine
    without a GPU ignore the log level. Call it once the command line is checked."""
    import importlib

    with quiet_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
        for name in modules:
            importlib.import_module(name)


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
