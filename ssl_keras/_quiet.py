"""Honour TF_CPP_MIN_LOG_LEVEL for the lines TensorFlow prints before its logging starts.

TensorFlow 2.21 writes a few C++ INFO lines (oneDNN, CUDA stubs) to stderr while it is
imported, before absl logging is initialised, whatever TF_CPP_MIN_LOG_LEVEL says. A command
line that should print one line on bad input then prints seven. When the user asked for quiet
(TF_CPP_MIN_LOG_LEVEL >= 1), the import runs with file descriptor 2 sent to /dev/null; Python
errors raised by the import are still reported (they are raised after stderr is restored).

The package's own command line (`python -m ssl_keras.export`) is quiet unless the user set
TF_CPP_MIN_LOG_LEVEL: `run_as_command_line` is checked while the package is imported, which
happens before the module runs as __main__, and `c_stderr_silenced` keeps the C++ lines of the
conversion and of the interpreter (LiteRT's "Created TensorFlow Lite XNNPACK delegate") away
from Python's own messages.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys


def run_as_command_line() -> bool:
    """Whether this process was started as `python -m ssl_keras.<module>`."""
    argv = getattr(sys, "orig_argv", [])
    return any(a == "-m" and b.startswith("ssl_keras.") for a, b in itertools.pairwise(argv))


def _log_level() -> int | None:
    """TF_CPP_MIN_LOG_LEVEL as an integer; None when unset, empty or not a number (then
    TensorFlow logs as it does without it)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", ""))
    except ValueError:
        return None


def _quiet_level() -> bool:
    level = _log_level()
    return level is not None and level >= 1


@contextlib.contextmanager
def c_stderr_silenced():
    """Inside the block, file descriptor 2 (C / C++ writes) goes to /dev/null while Python's
    `sys.stderr` keeps writing to the real stderr; only if TF_CPP_MIN_LOG_LEVEL >= 1."""
    if not _quiet_level():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    try:
        on_fd2 = python_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a StringIO, pytest's capture, ...
        on_fd2 = False
    if on_fd2:  # Python's messages keep going where fd 2 went before
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        sys.stderr.flush()
        if on_fd2:
            temporary, sys.stderr = sys.stderr, python_stderr
            # a logging handler made in the block (TensorFlow's, on its import) holds the
            # temporary stream: it writes to the real stderr from now on, not to a closed file
            _retarget_stream_handlers(temporary, python_stderr)
            temporary.close()
        os.dup2(saved, 2)
        os.close(saved)


def _retarget_stream_handlers(old, new) -> None:
    """Points every logging.StreamHandler that writes to `old` to `new` (absl's handler keeps
    its StreamHandler in `_python_handler`)."""
    import logging

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            for h in (handler, getattr(handler, "_python_handler", None)):
                if isinstance(h, logging.StreamHandler) and h.stream is old:
                    h.setStream(new)


def import_tensorflow_quietly() -> None:
    """Imports tensorflow once, silencing its pre-logging stderr lines if asked to be quiet.

    tflite_bench._cli.quiet_stderr does the same for tflite_bench, which does not import
    ssl_keras (its processes stay free of Keras 3), so each package keeps its own copy.
    """
    if "tensorflow" in sys.modules:
        return
    if run_as_command_line() and _log_level() is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with c_stderr_silenced():
        import tensorflow  # noqa: F401
