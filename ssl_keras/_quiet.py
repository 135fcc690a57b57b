"""Honour TF_CPP_MIN_LOG_LEVEL for the lines TensorFlow prints before its logging starts.

TensorFlow 2.21 writes a few C++ INFO lines (oneDNN, CUDA stubs) to stderr while it is
imported, before absl logging is initialised, whatever TF_CPP_MIN_LOG_LEVEL says. A command
line that should print one line on bad input then prints seven. When the user asked for quiet
(TF_CPP_MIN_LOG_LEVEL >= 1), the import runs with file descriptor 2 sent to /dev/null; Python
errors raised by the import are still reported (they are raised after stderr is restored).
"""

from __future__ import annotations

import sys


def import_tensorflow_quietly() -> None:
    """Imports tensorflow once, silencing its pre-logging stderr lines if asked to be quiet.

    The silencing is tflite_bench._cli.quiet_stderr (stdlib only; one copy of the fd dance).
    """
    if "tensorflow" in sys.modules:
        return
    from tflite_bench._cli import quiet_stderr

    with quiet_stderr():
        import tensorflow  # noqa: F401
