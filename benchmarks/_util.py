"""What the measurement commands share: parsing and checking their flags and output paths
before any work, running in an output directory that a failed run leaves as it found it,
writing JSON results."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import sys
import tempfile

from examples.util import HELP_FLAGS, print_help
from tflite_bench.report import atomic_write


def fail(command: str, message: str) -> None:
    """Prints one line to stderr and exits with code 2 (bad input: no traceback)."""
    sys.stderr.write(f"{command}: error: {message}\n")
    sys.exit(2)


def interruptible(command: str):
    """Decorates a command's `main`: Ctrl-C (KeyboardInterrupt) prints one line,
    `command: interrupted`, and exits with code 130 instead of a traceback. Cleanup done on the
    way out (run_and_report's) happens before."""
    def decorate(main):
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                sys.stdout.flush()
                # on a terminal, a progress bar may hold the line
                start = "\n" if sys.stderr.isatty() else ""
                sys.stderr.write(f"{start}{command}: interrupted\n")
                sys.exit(130)
        return wrapper
    return decorate


def quiet_tensorflow() -> None:
    """Imports TensorFlow and Keras with file descriptor 2 silenced (tflite_bench's
    quiet_stderr, when TF_CPP_MIN_LOG_LEVEL >= 1) and lets TensorFlow look for devices there:
    its C++ start-up lines and CUDA's "failed call to cuInit" on a machine without a GPU
    ignore the log level. Call it once the flags are checked, before the work."""
    from tflite_bench._cli import import_tensorflow

    import_tensorflow("keras", "ssl_keras")


def step(command: str, message: str) -> None:
    """A progress line on stderr (stdout holds the results): `command: message`."""
    sys.stderr.write(f"{command}: {message}\n")
    sys.stderr.flush()


def check_within(command: str, what: str, diff, tolerance: float) -> None:
    """After the results are out: a `diff` that is missing, not finite or above `tolerance`
    fails the run in one line with exit code 1 (a failed check, not bad input)."""
    if diff is not None and math.isfinite(diff) and diff <= tolerance:
        return
    sys.stdout.flush()
    sys.stderr.write(f"{command}: error: {what} must be <= {tolerance:.3g} (the allowed "
                     f"difference). Received: {diff if diff is None else format(diff, '.3g')}; "
                     "the figures are printed above.\n")
    sys.exit(1)


def parse_flags(command: str, flag_values, argv, doc: str | None, positionals: int = 0,
                expected: str | None = None) -> list:
    """Parses `argv` into `flag_values` and returns the remaining arguments (the program name
    and the `positionals` positional arguments). `--help` (and its spellings) prints the
    command's docstring and flags and exits 0; a bad flag, or another number of positional
    arguments than `positionals`, prints one line and exits 2. `expected` words the
    positionals for that message ("expected one .keras model file")."""
    from absl import flags

    if any(a in HELP_FLAGS for a in argv[1:]):
        print_help((doc or "").strip() + "\n\nFlags:\n"
                   + flag_values.get_help(include_special_flags=False))
        sys.exit(0)
    from tflite_bench._cli import normalize

    try:
        rest = flag_values(normalize(argv, flag_values=flag_values))  # --flag-name too
    except flags.Error as e:
        fail(command, str(e).splitlines()[0])
    if len(rest) - 1 != positionals:
        expected = expected or "expected no positional arguments, only flags (--name=value)"
        fail(command, f"{expected}. Received: {rest[1:]}")
    return rest


def check_int(command: str, name: str, value: int, low: int, high: int | None = None,
              what: str = "") -> None:
    """Fails in one line unless `low <= value` (and `value <= high` when given); `what` says
    what the flag counts, for the message."""
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        fail(command, f"--{name} must be {bound}{f' ({what})' if what else ''}. "
                      f"Received: {value}")


def check_seed(command: str, seed: int) -> None:
    """--seed: NumPy and Keras take seeds in [0, 2**32 - 1]."""
    check_int(command, "seed", seed, 0, 2**32 - 1)


def check_list(command: str, name: str, values: list, example: str) -> None:
    """A list flag (`--name=a,b`): not empty, no empty item, no item twice."""
    if not values or any(not v for v in values):
        fail(command, f"--{name} must be a non-empty comma-separated list, e.g. {example}. "
                      f"Received: {','.join(values)!r}")
    if len(set(values)) != len(values):
        twice = next(v for i, v in enumerate(values) if v in values[:i])
        fail(command, f"--{name} lists {twice!r} twice; expected each value once. "
                      f"Received: {','.join(values)}")


def _probe(directory: str, make_dir: bool) -> str | None:
    """Whether a file (or a directory) can be created in `directory`: creates one and removes
    it at once. Returns None, or the reason it cannot ("Permission denied")."""
    try:
        if make_dir:
            os.rmdir(tempfile.mkdtemp(dir=directory, prefix=".probe-"))
        else:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".probe-")
            os.close(fd)
            os.remove(tmp)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def check_json_path(command: str, path: str | None) -> None:
    """--json, before any work: None (not given), or the path of a new file (not empty, not a
    directory, not existing) in an existing directory where a file can be created."""
    if path is None:
        return
    if not path.strip():
        fail(command, f"--json must be the path of a new JSON file. Received: {path!r}")
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        fail(command, f"--json {path!r} is a directory; expected the path of a new JSON file.")
    if os.path.lexists(path):
        fail(command, f"--json {path!r} exists; refusing to overwrite it.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        state = "is not a directory" if os.path.exists(parent) else "does not exist"
        fail(command, f"--json {path!r}: its directory {parent!r} {state}; expected a new "
                      "file in an existing directory.")
    reason = _probe(parent, make_dir=False)
    if reason:
        fail(command, f"--json {path!r}: no file can be created in {parent!r} ({reason}); "
                      "expected a new file in a writable directory.")


def check_out_dir(command: str, out_dir: str | None) -> None:
    """--out_dir, before any work: None (not given), an existing empty writable directory, or
    a new one that can be created (its missing parents too). Nothing is created here."""
    if out_dir is None:
        return
    expected = "expected a new directory or an empty existing one"
    if not out_dir.strip():
        fail(command, f"--out_dir must be a directory path; {expected}. Received: {out_dir!r}")
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            fail(command, f"--out_dir {out_dir!r} is a file, not a directory; {expected}.")
        try:
            entries = os.listdir(out_dir)
        except OSError as e:
            fail(command, f"--out_dir {out_dir!r} cannot be read ({e.strerror}); {expected}.")
        if entries:
            fail(command, f"--out_dir {out_dir!r} is not empty; refusing to overwrite files "
                          "in it.")
        reason = _probe(out_dir, make_dir=False)
        if reason:
            fail(command, f"--out_dir {out_dir!r}: no file can be created in it ({reason}); "
                          f"{expected}, writable.")
        return
    if os.path.lexists(out_dir):
        fail(command, f"--out_dir {out_dir!r} is a broken symbolic link; {expected}.")
    ancestor = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        fail(command, f"--out_dir {out_dir!r} cannot be created: {ancestor!r} is a file; "
                      f"{expected}.")
    reason = _probe(ancestor, make_dir=True)
    if reason:
        fail(command, f"--out_dir {out_dir!r} cannot be created: no directory can be made in "
                      f"{ancestor!r} ({reason}); {expected}.")


def check_outputs(command: str, json_path: str | None, out_dir: str | None) -> None:
    """--json and --out_dir, before any work (check_json_path, check_out_dir), and not the
    same path."""
    check_json_path(command, json_path)
    check_out_dir(command, out_dir)
    if json_path and out_dir and os.path.abspath(json_path) == os.path.abspath(out_dir):
        fail(command, f"--json and --out_dir are the same path {json_path!r}; expected a JSON "
                      "file and a directory.")


def define_latency_flags(flag_values, runs: int = 300, unit: str = "model") -> None:
    """Defines the latency commands' shared flags (--runs, --threads, --out_dir, --json) in
    `flag_values`; check them with `check_latency_flags`."""
    from absl import flags

    flags.DEFINE_integer("runs", runs, f"Timed invokes per {unit}.", flag_values=flag_values)
    flags.DEFINE_list("threads", ["1"], "Thread counts.", flag_values=flag_values)
    flags.DEFINE_string("out_dir", None, "Keep the .tflite files in this directory.",
                        flag_values=flag_values)
    flags.DEFINE_string("json", None, "Also write the results as JSON to this new file.",
                        flag_values=flag_values)


def check_latency_flags(command: str, runs: int, threads: list, json_path: str | None,
                        out_dir: str | None) -> list[int]:
    """The checks of the latency commands' shared flags (--runs, --threads, --json,
    --out_dir), each failing in one line (exit 2). Returns the thread counts as ints."""
    if runs < 10:
        fail(command, f"--runs must be >= 10. Received: {runs}")
    try:
        counts = [int(t) for t in threads]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        fail(command, f"--threads must be positive integers. Received: {threads}")
    if len(set(counts)) != len(counts):
        fail(command, f"--threads lists a thread count twice; expected each once. "
                      f"Received: {','.join(threads)}")
    check_outputs(command, json_path, out_dir)
    return counts


def write_json(command: str, path: str, result) -> None:
    """Writes `result` as indented JSON to `path` atomically; refuses an existing file. A write
    that fails (checked up front, so something changed during the run) is one line, exit 2."""
    try:
        atomic_write(path, json.dumps(result, indent=2) + "\n", overwrite=False)
    except OSError as e:
        fail(command, f"could not write --json {path!r} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0]}); the results are printed above.")


def fmt(x, spec: str) -> str:
    """format(x, spec), or "-" for a missing value (a table cell)."""
    return "-" if x is None else format(x, spec)


# The columns every latency table of these commands ends with: (header, row key, format).
LATENCY_COLUMNS = [("MACs", "macs", ","), ("median us", "median_us", ".1f"),
                   ("speedup", "speedup", ".2f"), ("MAC ratio", "mac_ratio", ".2f"),
                   ("efficiency", "efficiency", ".2f")]


def markdown_table(rows, columns) -> str:
    """A markdown table of `rows` (dicts); `columns` are (header, key, format spec) triples,
    the spec "" for str()."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(key), spec) for _, key, spec in columns)
                     + " |")
    return "\n".join(lines)


def _make_out_dir(command: str, out_dir: str) -> str | None:
    """Creates `out_dir` (and its missing parents); returns the top-most directory this made,
    None if `out_dir` existed."""
    path = os.path.abspath(out_dir)
    if os.path.isdir(path):
        return None
    top = path
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    try:
        os.makedirs(path)
    except OSError as e:
        if os.path.isdir(top):  # the parents made before the failure
            shutil.rmtree(top, ignore_errors=True)
        fail(command, f"--out_dir {out_dir!r} cannot be created ({e.strerror}); expected a new "
                      "directory or an empty existing one.")
    return top


def run_and_report(command: str, run, table, out_dir: str | None, json_path: str | None):
    """Calls `run(directory)` in `out_dir` or in a temporary directory, prints
    `table(result)`, writes the result to `json_path` when given, and returns it.

    Call it once the inputs are checked: `out_dir` is created here. When anything fails
    (an exception, exit, Ctrl-C), what this run wrote in `out_dir` is removed, and `out_dir`
    too when this run created it."""
    if not out_dir:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(tmp)
        print(table(result))
        if json_path:
            write_json(command, json_path, result)
        return result
    created = _make_out_dir(command, out_dir)
    before = set(os.listdir(out_dir))
    try:
        result = run(out_dir)
        print(table(result))
        if json_path:
            write_json(command, json_path, result)
    except BaseException:
        _remove_new(out_dir, created, before)
        raise
    return result


def _remove_new(out_dir: str, created: str | None, before: set) -> None:
    """After a failed run: removes the directory this run `created` (the top-most one), or
    else the entries of `out_dir` that were not in it `before` the run."""
    if created:
        shutil.rmtree(created, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for name in set(os.listdir(out_dir)) - before:
            target = os.path.join(out_dir, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(target)


def offset_and_zero(model, groups, fraction, rng) -> int:
    """Gives `model` non-zero biases / BatchNorm offsets (so removed channels carry constants
    that thin must fold), then zeroes the producer slices of a random `fraction` of the
    unblocked `groups`, in place. Returns how many groups were zeroed."""
    import numpy as np

    for layer in model.layers:
        for var in layer.weights:
            if var.name in ("beta", "moving_mean", "bias"):
                var.assign(rng.normal(size=tuple(var.shape)).astype("float32") * 0.1)
    weights = {layer.name: {v.name: v for v in layer.weights} for layer in model.layers}
    chosen = [g for g in groups if not g["blocked"] and rng.random() < fraction]
    for g in chosen:
        for s in g["slices"]:
            if s["role"] == "producer":
                var = weights[s["layer"]][s["weight"]]
                w = np.array(var.numpy())
                index = [slice(None)] * w.ndim
                index[s["axis"]] = s["index"]
                w[tuple(index)] = 0
                var.assign(w)
    return len(chosen)
