"""What the measurement commands share: refusing bad output paths, writing JSON results."""

from __future__ import annotations

import json
import os
import sys

from tflite_bench.report import atomic_write


def fail(command: str, message: str) -> None:
    """Prints one line to stderr and exits with code 2 (bad input: no traceback)."""
    sys.stderr.write(f"{command}: error: {message}\n")
    sys.exit(2)


def refuse_existing(command: str, path: str | None) -> None:
    """Fails before any work when the --json output already exists (no silent overwrite)."""
    if path and os.path.exists(path):
        fail(command, f"--json {path!r} exists; refusing to overwrite it.")


def write_json(path: str, result) -> None:
    """Writes `result` as indented JSON to `path` atomically; refuses an existing file."""
    atomic_write(path, json.dumps(result, indent=2) + "\n", overwrite=False)
