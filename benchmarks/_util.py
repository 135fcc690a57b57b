"""What the measurement commands share: refusing bad output paths, writing JSON results."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from examples.util import HELP_FLAGS, print_help
from tflite_bench.report import atomic_write


def fail(command: str, message: str) -> None:
    """Prints one line to stderr and exits with code 2 (bad input: no traceback)."""
    sys.stderr.write(f"{command}: error: {message}\n")
    sys.exit(2)


def refuse_existing(command: str, path: str | None) -> None:
    """Fails before any work when the --json output already exists (no silent overwrite)."""
    if path and os.path.exists(path):
        fail(command, f"--json {path!r} exists; refusing to overwrite it.")


def parse_flags(command: str, flag_values, argv, doc: str | None) -> list:
    """Parses `argv` into `flag_values` and returns the remaining arguments. `--help` (and
    its spellings) prints the command's docstring and flags and exits 0; a bad flag prints
    one line and exits 2."""
    from absl import flags

    if any(a in HELP_FLAGS for a in argv[1:]):
        print_help((doc or "").strip() + "\n\nFlags:\n"
                   + flag_values.get_help(include_special_flags=False))
        sys.exit(0)
    try:
        return flag_values(argv)
    except flags.Error as e:
        fail(command, str(e).splitlines()[0])


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
    refuse_existing(command, json_path)
    if out_dir and os.path.exists(out_dir) and os.listdir(out_dir):
        fail(command, f"--out_dir {out_dir!r} is not empty; refusing to overwrite files in it.")
    return counts


def write_json(path: str, result) -> None:
    """Writes `result` as indented JSON to `path` atomically; refuses an existing file."""
    atomic_write(path, json.dumps(result, indent=2) + "\n", overwrite=False)


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


def run_and_report(run, table, out_dir: str | None, json_path: str | None):
    """Calls `run(directory)` in `out_dir` (created) or in a temporary directory, prints
    `table(result)`, writes the result to `json_path` when given, and returns it."""
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        result = run(out_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(tmp)
    print(table(result))
    if json_path:
        write_json(json_path, result)
    return result


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
