"""Shared pieces of the examples' pipeline: ssl_keras / tflite_bench look-up, atomic writes,
help text.

`need` returns a function or class of ssl_keras / tflite_bench when a step needs it, or raises
StepUnavailableError naming the missing piece; `atomic_save` and `atomic_write_text` leave no
half-written file; `print_help` prints a command's help (the examples' and benchmarks/').
"""

from __future__ import annotations

import os
import sys
import tempfile

HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "--helpfull")


def print_help(text: str) -> None:
    """Prints `text`; `--help | head` (the reader leaves early) ends without a traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class StepUnavailableError(RuntimeError):
    """A pipeline step needs an ssl_keras / tflite_bench piece that this checkout lacks."""


# ---------------------------------------------------------------------------------------------
# Pieces of ssl_keras / tflite_bench, looked up when needed


def need(module: str, name: str, step: str):
    """Returns the function / class `module.name`, or raises StepUnavailableError naming both.

    Args:
        module: the module that defines it ("ssl_keras.thin").
        name: the public name ("thin").
        step: the pipeline step that needs it, for the message.
    """
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise StepUnavailableError(
            f"Step {step!r} needs {module}.{name}, but {module} cannot be imported ({e}). "
            "Expected: the module in this checkout."
        ) from None
    value = getattr(mod, name, None)
    if value is None or not callable(value):
        raise StepUnavailableError(
            f"Step {step!r} needs {module}.{name}, which this checkout does not provide yet. "
            f"Expected: a public function or class {name!r} in {module}."
        )
    return value


def onednn_enabled() -> bool | None:
    """Whether this process's TensorFlow runs its oneDNN CPU kernels (None: it cannot tell).

    TensorFlow decides once, at its first op, from TF_ENABLE_ONEDNN_OPTS ("1" on, "0" off;
    unset, on Linux: on only for CPUs with VNNI, AVX-512 BF16 or AMX), so an environment
    variable set after that changes nothing; this asks TensorFlow what it decided.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if enabled is None else bool(enabled())


def atomic_write(path: str, write, suffix: str = "") -> None:
    """`write(tmp)` to a temporary file beside `path`, then os.replace: no half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=directory, prefix=".tmp_")
    os.close(fd)
    try:
        write(tmp)
        from ssl_keras._tflite import file_mode

        os.chmod(tmp, file_mode(path))  # not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(model, path: str) -> None:
    """model.save, atomically (Keras wants the .keras suffix on the temporary file too)."""
    atomic_write(path, model.save, suffix=".keras")


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
