"""What the package's two command lines (`python -m ssl_keras.export`, `python -m
ssl_keras.thin_cli`) share: the run itself (help, flags, quiet C++ lines, exit codes), loading
a .keras file with a one-line reason, and the library's error messages in the terms of the
command line's flags."""

from __future__ import annotations

import os
import re
import sys
import warnings
import zipfile

import keras

# A library message names Python arguments; the command line's user needs its flags.
_FLAG_NAMES = (
    ("overwrite=True (--overwrite)", "--overwrite"),
    ("overwrite=True", "--overwrite"),
    ("verify=False", "--noverify"),
    ("allow_select_ops=True", "--allow_select_ops"),
    ("`representative_data`", "--calibration"),
    ("representative_data", "--calibration"),
)


# Arguments whose flag has the same name: `name` and name= become --name (not in prose).
_SAME_NAMES = ("batch_size", "num_calibration_samples", "threshold", "round_to", "round_down",
               "max_channels", "crop_kernels")
_NAMES = "|".join(_SAME_NAMES)
_SAME_NAME = re.compile(rf"`({_NAMES})`|(?<![-\w])({_NAMES})=")


def in_flag_terms(message: str) -> str:
    """A library error message with its Python argument names replaced by the flags."""
    for python, flag in _FLAG_NAMES:
        message = message.replace(python, flag)
    return _SAME_NAME.sub(lambda m: f"--{m.group(1)}" if m.group(1) else f"--{m.group(2)}=",
                          message)


def check_output(path: str, what: str, model_path: str, overwrite: bool,
                 file_kind: str = "a file", suffix: str | None = None) -> None:
    """The checks on an output path before any work: a file (not a directory) ending in
    `suffix`, in an existing writable directory, not the input model itself, and not an
    existing file unless `overwrite`.

    Raises:
        ValueError: naming `what` (the flag or argument) and the path.
    """
    if not path or os.path.isdir(path):
        raise ValueError(f"{what} must name {file_kind} to write, not a directory. "
                         f"Received: {what}={path!r}")
    if suffix is not None and not path.endswith(suffix):
        raise ValueError(f"{what} must end in {suffix}. Received: {what}={path!r}")
    if suffix is not None and os.path.basename(path) == suffix:
        raise ValueError(f"{what} must name a file before its {suffix} suffix (a bare "
                         f"{suffix!r} is a hidden file). Received: {what}={path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} must be in an existing, writable directory. "
                         f"Received: {what}={path!r}")
    if os.path.exists(path) and os.path.exists(model_path) and os.path.samefile(path,
                                                                               model_path):
        raise ValueError(f"{what} is the input model itself; writing it would destroy the "
                         f"model. Expected another file name. Received: MODEL={model_path!r}, "
                         f"{what}={path!r}")
    if os.path.exists(path) and not overwrite:
        raise ValueError("The output file already exists; pass --overwrite to replace it. "
                         f"Received: {what}={path!r}")


def load_keras_file(path: str) -> keras.Model:
    """Loads a .keras model (compile=False) after `import ssl_keras` (its serialisable objects).

    When loading fails, the error gives Keras's reason in one line and Keras's warnings about
    the same failure are not repeated; when it succeeds, its warnings (weights it skipped, say)
    are shown as usual.

    Raises:
        ValueError: no such file, not a .keras archive, or Keras could not load it (the reason
            in one line).
    """
    if not os.path.isfile(path):
        raise ValueError(f"No such model file. Received: MODEL={path!r}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            f"The model must be a Keras .keras file (a zip archive). Received: MODEL={path!r}")
    import ssl_keras  # noqa: F401  (registers the package's serialisable objects)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:
            reason = " ".join(str(error).split()).rstrip(".")
            reason = re.sub(r"\s*List of objects that could not be loaded:.*", "", reason)
            if len(reason) > 400:
                reason = reason[:400] + "..."
            model = None
    if model is None:  # the reason is in the error; Keras's warnings about it are not repeated
        if "safe_mode" in reason:  # a Lambda layer: its code is only loaded when asked for
            reason = ("it holds Python code (a Lambda layer), which the command lines do not "
                      "load (Keras's safe_mode). Expected a model without Lambda layers, or "
                      "the library from Python: keras.saving.load_model(path, safe_mode=False) "
                      "and then ssl_keras.thin / export_tflite")
        elif "could not be deserialized" in reason or "Could not locate class" in reason:
            reason += (". A custom layer must be importable to load: from Python, import its "
                       "module (and register it with ssl_keras.register_layer) before "
                       "keras.saving.load_model, then call the library")
        raise ValueError(f"Could not load the Keras model: {reason}. Received: MODEL={path!r}")
    for w in caught:  # loaded: what Keras warned about (weights it skipped) still shows
        if issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


def run(doc: str, flag_values, body, fail, argv=None) -> None:
    """Runs a command line: `--help` prints `doc` and the flags (exit 0); flags may be spelled
    with dashes, as tflite_bench's (`--round-to`, `--no-verify`); bad flags go to
    `fail` (one line, exit 2); `body(positional arguments, flag_values)` runs with TensorFlow's
    and LiteRT's C++ lines silenced (unless TF_CPP_MIN_LOG_LEVEL asks for them); exit 0.

    Args:
        doc: the module docstring (usage).
        flag_values: an absl FlagValues with the command's flags.
        body: the command, called as body(argv without the flags, flag_values).
        fail: prints one error line and exits 2.
        argv: the command line, program name first; `sys.argv` when None.
    """
    from absl import flags, logging

    from ssl_keras._quiet import c_stderr_silenced

    argv = list(sys.argv if argv is None else argv)
    if any(arg in ("-h", "-?", "--help", "--helpshort", "--helpfull") for arg in argv[1:]):
        print(doc.strip() + "\n\n" + flag_values.get_help())
        sys.exit(0)
    from tflite_bench._cli import normalize  # the same spelling rules as tflite_bench's

    try:
        rest = flag_values(normalize(argv, flag_values=flag_values))
    except flags.Error as error:
        fail(str(error))
    logging.set_verbosity(logging.WARNING)  # no SavedModel INFO lines on stderr
    with c_stderr_silenced():
        body(rest, flag_values)
    sys.exit(0)
