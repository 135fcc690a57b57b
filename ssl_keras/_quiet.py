"""Honour TF_CPP_MIN_LOG_LEVEL for the lines TensorFlow prints before its logging starts.

TensorFlow 2.21 writes a few C++ INFO lines (oneDNN, CUDA stubs) to stderr while it is
imported, before absl logging is initialised, whatever TF_CPP_MIN_LOG_LEVEL says. A command
line that should print one line on bad input then prints seven. When the user asked for quiet
(TF_CPP_MIN_LOG_LEVEL >= 1), the import runs with file descriptor 2 sent to /dev/null; Python
errors raised by the import are still reported (they are raised after stderr is restored).
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Imports tensorflow once, silencing its pre-logging stderr lines if asked to be quiet.

    tflite_bench._cli.quiet_stderr does the same for tflite_bench, which does not import
    ssl_keras (its processes stay free of Keras 3), so each package keeps its own copy.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if level < 1:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
