"""TFLite export with quantisation and verified outputs.

The conversion goes through a SavedModel with a static input signature (the reliable path on
TensorFlow 2.21), then `tf.lite.TFLiteConverter.from_saved_model`, builtin ops only unless
asked otherwise. The result is run with the ai_edge_litert interpreter and compared with the
Keras model before the file is written (atomically).

Command line:

    python -m ssl_keras.export MODEL.keras OUT.tflite [--quantize int8 --calibration X.npy]
        [--overwrite] [--batch_size 1] [--num_calibration_samples 100] [--allow_select_ops]
        [--noverify]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import keras
import numpy as np

from ssl_keras import _tflite
from ssl_keras._cli import check_output, in_flag_terms, load_keras_file, run
from ssl_keras._export_convert import (
    QUANTIZE_MODES,
    _convert,
    _keras_reference,
    _needs_float32,
    _validate,
    _validate_flags,
    _verify,
    rebuild_float32,
)
from ssl_keras._export_inputs import (
    _check_ids,
    _collect,
    _input_struct,
    _random_samples,
    _static_shapes,
    _typed_array,
)

_FLOAT32_ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What `export_tflite` wrote and how well it agrees with the Keras model.

    Attributes:
        path: the .tflite file written.
        size_bytes: its size.
        quantize: `"float32"`, `"float16"`, `"dynamic"` or `"int8"`.
        op_counts: op type -> count, read from the flatbuffer (`"CONV_2D": 2`, ...).
        inputs: the input tensors (name, shape, dtype, int8 scale / zero point).
        outputs: the output tensors.
        max_abs_diff: max |TFLite - Keras| over all outputs and verification samples
            (int8 outputs dequantised first); None when not verified.
        max_abs_output: max |Keras output| on the same samples, to put the difference in scale.
        verified_samples: how many samples were compared (0 when not verified).
        verified_on: which samples: "held-out representative data" (samples after the
            calibration ones), "representative data" (int8: the calibration samples
            themselves, when there were no more) or "random uniform [0, 1)" (integer inputs:
            "random ids <input> in [0, n)", n the input_dim of the Embedding layers reading
            them).
        rebuilt_float32: True when a mixed-precision model was rebuilt in float32 first.
    """

    path: str
    size_bytes: int
    quantize: str
    op_counts: dict
    inputs: tuple
    outputs: tuple
    max_abs_diff: float | None
    max_abs_output: float | None
    verified_samples: int
    verified_on: str = ""
    rebuilt_float32: bool = False

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field."""
        data = dataclasses.asdict(self)
        data["inputs"] = [info.to_dict() for info in self.inputs]
        data["outputs"] = [info.to_dict() for info in self.outputs]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        ops = ", ".join(f"{name} x{count}" for name, count in self.op_counts.items())
        if self.max_abs_diff is None:
            check = "not verified"
        else:
            check = (
                f"max |tflite - keras| = {self.max_abs_diff:.3g} over {self.verified_samples} "
                f"samples of {self.verified_on} (max |keras output| = {self.max_abs_output:.3g})"
            )
        lines = [
            f"{self.path}: {self.size_bytes} bytes, {self.quantize}"
            + (" (mixed precision rebuilt in float32)" if self.rebuilt_float32 else ""),
            f"  ops: {ops}",
            *(f"  input  {info}" for info in self.inputs),
            *(f"  output {info}" for info in self.outputs),
            f"  check: {check}",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------------- export


def _path_arg(path, name: str = "path") -> str:
    """`path` (a str or os.PathLike naming a str path, not empty) as a str."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise ValueError(
            f"`{name}` must be a file path (a str or os.PathLike). "
            f"Received: {name}={path!r} of type {type(path).__name__}"
        )
    if not text:
        raise ValueError(f"`{name}` must not be empty. Received: {name}={path!r}")
    return text


def _output_path(path) -> str:
    """The checks on export_tflite's `path` that need no conversion; returns it as a str."""
    path = _path_arg(path)
    if os.path.isdir(path) or path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise ValueError(
            "`path` must name the .tflite file to write, not a directory (e.g. "
            f"os.path.join(directory, 'model.tflite')). Received: path={path!r}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"The directory of the output file does not exist. Received: path={path!r}"
        )
    return path


def export_tflite(
    model,
    path,
    quantize=None,
    representative_data=None,
    batch_size=1,
    verify=True,
    overwrite=False,
    *,
    num_calibration_samples=100,
    num_verify_samples=8,
    allow_select_ops=False,
    atol=_FLOAT32_ATOL,
    seed=0,
) -> ExportReport:
    """Converts a Keras model to a .tflite file, checks its outputs, and writes it atomically.

    Conversion: `model.export(format="tf_saved_model")` with a static input signature
    `(batch_size, *input_shape)` (float32; integer inputs, such as an Embedding's token ids,
    keep their integer dtype), then `tf.lite.TFLiteConverter.from_saved_model`.
    BatchNormalization after a convolution is folded into it by the converter; activations
    are fused. Only TFLite builtin ops are allowed unless `allow_select_ops=True`.

    Quantisation modes:

    - None: float32.
    - "float16": float16 weights, dequantised to float32 at run time (half the size).
    - "dynamic": int8 weights, float activations (dynamic range quantisation).
    - "int8": full integer; int8 input and output tensors (integer inputs stay as they are),
      with activation ranges calibrated on `representative_data`
      (`q = round(x / scale) + zero_point`).

    Verification (`verify=True`) runs the .tflite bytes with ai_edge_litert's Interpreter on
    `num_verify_samples` inputs: from `representative_data` when given (the samples after the
    `num_calibration_samples` used for calibration when there are enough, else the first
    ones), seeded uniform [0, 1) inputs otherwise (an input that only Embedding layers read,
    integer or float: seeded ids in [0, input_dim); any other integer input needs
    `representative_data`). int8 inputs are quantised and outputs
    dequantised with the tensors' scale and zero point, and compared with `model(x)`. In
    float32 the max absolute difference must be <= `atol * (1 + max |Keras output|)` (float32
    rounding grows with the outputs) or a ValueError is raised and nothing is written; the
    quantised modes report their difference.

    Mixed-precision models (mixed_float16) are rebuilt in float32 first (`rebuild_float32`).
    Models with several inputs (list or dict) and several outputs are supported: the TFLite
    signature keys are the Keras input names, and `output_<i>` (list outputs) or the output
    dict keys.

    Args:
        model: a functional or Sequential Keras 3 model (TensorFlow backend) with float or
            integer inputs of static shape apart from the batch.
        path: the .tflite file to write (a str or os.PathLike, not empty, not a
            directory). Its directory must exist.
        quantize: None, "float16", "dynamic" or "int8".
        representative_data: samples for int8 calibration and for verification: a NumPy
            array `(n, *input_shape)` (a list or dict of arrays for several inputs), a
            tf.data.Dataset or a generator of samples or batches (`(x, y)` elements are fine).
            Nested Python lists of numbers (`x.tolist()`) are read as arrays. A file path is
            not accepted: load the file first (`np.load(path)`). The samples used must be
            finite (whole numbers for integer inputs), and the inputs of a multi-input model
            must have as many samples each.
        batch_size: the static batch size of the .tflite model.
        verify: a bool: run and compare the .tflite model with the Keras model before
            writing.
        overwrite: a bool: replace an existing file at `path`; otherwise FileExistsError.
        num_calibration_samples: at most this many samples of `representative_data` are used.
        num_verify_samples: how many samples are compared.
        allow_select_ops: a bool: allow Select TF ops (Flex); such a model cannot be verified
            here.
        atol: the float32 tolerance, relative to 1 + the largest Keras output, a finite
            number >= 0.
        seed: the seed of the random verification inputs, an integer >= 0.

    Returns:
        An ExportReport: path, size in bytes, op counts, input / output tensors and the
        verification difference.

    Raises:
        ValueError: before any conversion, for a bad argument: an unknown `quantize`, int8
            without `representative_data`, a `batch_size` / sample count that is not an
            integer >= 1, `verify` / `overwrite` / `allow_select_ops` that are not bools, a
            bad `atol` or `seed`, a `path` that is not a path or is a directory, a model
            that is not a functional Keras model with static float or integer inputs,
            unreadable or non-finite `representative_data`, (with `verify`) an integer input
            that not only Embedding layers read and no `representative_data`, or Keras
            outputs that are not finite (NaN / inf weights, say). After the conversion: a
            model that needs Select TF ops (without `allow_select_ops`, or with `verify`),
            and float32 outputs that disagree with Keras by more than `atol`. Nothing is
            written in either case.
        FileNotFoundError: the directory of `path` does not exist.
        FileExistsError: `path` exists and `overwrite` is False (checked before the
            conversion, and again when the file is published).

    Example:
    >>> report = export_tflite(model, "lenet_int8.tflite", quantize="int8",
    ...                        representative_data=x_train[:200])
    >>> print(report.size_bytes, report.op_counts, report.max_abs_diff)
    """
    _validate(quantize, representative_data, batch_size, num_calibration_samples,
              num_verify_samples)
    _validate_flags(verify, overwrite, allow_select_ops, atol, seed)
    verify, overwrite, allow_select_ops = bool(verify), bool(overwrite), bool(allow_select_ops)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model. Received: model of type {type(model).__name__}"
        )
    path = _output_path(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"The output file already exists; pass overwrite=True to replace it. "
            f"Received: path={path!r}"
        )
    rebuilt = _needs_float32(model)
    if rebuilt:
        model = rebuild_float32(model)
    struct = _input_struct(model)
    _static_shapes(struct)  # dtypes and static shapes, checked before any work
    _check_output_structure(model)
    limit = num_calibration_samples + num_verify_samples
    data = None if representative_data is None else _collect(representative_data, struct, limit)
    if data is not None:
        _check_ids(model, struct, data)
    samples = want = None
    verified_on = ""
    if verify:  # the Keras side of the check first: NaN outputs fail before the conversion
        if data is not None and len(data[0]) == num_calibration_samples + num_verify_samples:
            samples = [a[num_calibration_samples:] for a in data]
            verified_on = "held-out representative data"
        elif data is not None:
            samples = [a[:num_verify_samples] for a in data]
            verified_on = "representative data"
        else:
            samples, verified_on = _random_samples(model, struct, num_verify_samples, seed)
        want = _keras_reference(model, struct, samples, verified_on)

    content = _convert(model, struct, batch_size, quantize,
                       None if data is None else [a[:num_calibration_samples] for a in data],
                       allow_select_ops)
    counts = _tflite.op_counts(content)
    flex = _tflite.flex_ops(counts)
    diff = scale = None
    n_verified = 0
    if verify:
        if flex:
            raise ValueError(
                "The converted model contains Select TF ops, which the ai_edge_litert "
                "interpreter cannot run, so it cannot be verified; pass verify=False to "
                f"export it unverified. Received: flex ops={flex}"
            )
        diff, scale = _verify(model, struct, content, samples, quantize, atol, want)
        n_verified = len(samples[0])
    # prepared before the file is written: a model LiteRT cannot run is not left behind
    interpreter = None if flex else _tflite.make_interpreter(model_content=content)
    _tflite.write_atomic(path, content, overwrite)
    inputs, outputs = ((), ()) if interpreter is None else _tflite.signature_details(interpreter)
    return ExportReport(
        path=path,
        size_bytes=len(content),
        quantize=quantize or "float32",
        op_counts=counts,
        inputs=inputs,
        outputs=outputs,
        max_abs_diff=diff,
        max_abs_output=scale,
        verified_samples=n_verified,
        verified_on=verified_on,
        rebuilt_float32=rebuilt,
    )


def _check_output_structure(model) -> None:
    """A tensor, a flat list / tuple or a flat dict of them: what a TFLite signature holds."""
    try:
        outputs = model.output
    except (AttributeError, ValueError):
        return  # _input_struct has refused models without a graph already
    items = outputs.values() if isinstance(outputs, dict) else (
        outputs if isinstance(outputs, (list, tuple)) else [outputs])
    if any(isinstance(o, (list, tuple, dict)) for o in items):
        raise ValueError(
            "export_tflite supports a model output that is one tensor, a flat list of tensors "
            "or a flat dict of them (the .tflite signature's outputs); flatten nested outputs "
            "first, e.g. keras.Model(model.inputs, model.outputs) (a flat list). Received: "
            f"model={model.name!r} with nested outputs")


# --------------------------------------------------------------------------- evaluation


def _tflite_inputs(path, x):
    path = _path_arg(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` must be a .tflite file, not a directory. Received: path={path!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such .tflite file. Received: path={path!r}")
    interpreter = _tflite.load_interpreter(path)
    in_infos, _ = _tflite.signature_details(interpreter)
    names = [info.name for info in in_infos]
    if x is None:
        raise ValueError(
            f"`x` is required: an array (n, *input_shape), or a dict of them keyed by the "
            f"input names {names}. Received: x=None"
        )
    if isinstance(x, dict):
        feed = dict(x)
    elif len(names) == 1 and not isinstance(x, (list, tuple)):
        feed = {names[0]: x}
    elif len(names) == 1 and _is_samples_list(x, len(in_infos[0].shape)):
        feed = {names[0]: x}  # a nested list of numbers, as `x.tolist()` gives
    elif len(names) == 1 and len(x) == 1:
        feed = {names[0]: x[0]}
    else:
        raise ValueError(
            f"This .tflite file has {len(names)} inputs; pass `x` as a dict keyed by the input "
            f"names {names}. Received: x of type {type(x).__name__}"
        )
    if sorted(feed, key=str) != names:
        raise ValueError(
            f"The inputs must be keyed by the model's input names {names}. "
            f"Received: keys={sorted(feed, key=str)}"
        )
    arrays = {name: _input_array(name, value) for name, value in feed.items()}
    for info in in_infos:  # integer ids (not quantised values): whole numbers only
        if info.scale is None and np.dtype(info.dtype).kind in "iu":
            arrays[info.name] = _typed_array(arrays[info.name], info.name, np.dtype(info.dtype))
    return interpreter, arrays


def _is_samples_list(x, rank: int) -> bool:
    """Whether a list is a nested list of numbers of the input's rank (batch included)."""
    if not isinstance(x, list) or any(isinstance(v, np.ndarray) for v in x):
        return False
    try:
        array = np.asarray(x)
    except (ValueError, TypeError):
        return False
    return array.dtype.kind in "biuf" and array.ndim == rank


def _input_array(name, value) -> np.ndarray:
    """One input of predict / evaluate as a numeric array of samples, or a clear error."""
    try:
        array = None if value is None else np.asarray(value)
    except (ValueError, TypeError):  # ragged nested lists
        array = None
    if array is None or array.dtype.kind not in "biuf" or array.ndim == 0:
        received = "None" if value is None else type(value).__name__
        if array is not None:
            received += f" of dtype {array.dtype} and shape {array.shape}"
        raise ValueError(
            f"Input {name!r} must be a numeric array of samples (n, *input_shape). "
            f"Received: {received}"
        )
    return array


def _class_labels(y, classes: int) -> np.ndarray:
    """evaluate_tflite's `y` as int64 class indices in [0, classes), or a clear error."""
    expected = (f"integer class labels in [0, {classes}) of shape (n,) or (n, 1), or one-hot / "
                f"probability labels of shape (n, {classes})")
    if y is None:
        raise ValueError(f"`y` is required: {expected}. Received: y=None")
    try:
        array = np.asarray(y)
    except (ValueError, TypeError):
        array = np.asarray(None)
    if array.dtype.kind == "b" and array.ndim == 2 and array.shape[1] == classes:
        array = array.astype(np.float32)  # boolean one-hot labels
    if array.dtype.kind not in "iuf":
        raise ValueError(
            f"`y` must be numeric: {expected}. "
            f"Received: y of type {type(y).__name__} and dtype {array.dtype}"
        )
    if array.ndim == 2 and array.shape[1] == classes:
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            raise ValueError(
                "One-hot / probability labels must be finite. "
                f"Received: NaN / inf in y[{int(np.argmin(finite))}]"
            )
        return array.argmax(-1)
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
        raise ValueError(f"`y` must be {expected}. Received: y of shape {array.shape}")
    labels = array.reshape(-1)
    if labels.dtype.kind == "f":
        whole = np.isfinite(labels)
        whole[whole] = labels[whole] == np.round(labels[whole])
        if not whole.all():
            i = int(np.argmin(whole))
            raise ValueError(
                f"Class labels must be whole numbers: {expected}. "
                f"Received: y[{i}]={labels[i].item()!r}"
            )
    outside = (labels < 0) | (labels >= classes)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"Class labels must be in [0, {classes}): the model has {classes} classes. "
            f"Received: y[{i}]={labels[i].item()!r}"
        )
    return labels.astype(np.int64)


def predict_tflite(path, x) -> dict:
    """Runs a .tflite file on float (or integer id) inputs and returns its float outputs.

    int8 inputs are quantised and int8 outputs dequantised with the tensors' scale and zero
    point; any number of samples is run in batches of the file's static batch size.

    Args:
        path: a .tflite file with one signature.
        x: an array `(n, *input_shape)` (or a nested list of numbers), n >= 1, or a dict of
            them keyed by input name.

    Returns:
        A dict from output name (`output_0`, ...) to a float32 array `(n, ...)`.

    Raises:
        FileNotFoundError: there is no file at `path`.
        ValueError: `path` is not a path, is a directory or is not a valid .tflite
            flatbuffer (or the interpreter cannot prepare it); `x` is None, not numeric,
            not whole numbers for an integer input, not keyed by the input names, has no
            samples, samples of the wrong shape, or inputs with different sample counts.

    Example:
    >>> logits = predict_tflite("lenet.tflite", x_test)["output_0"]
    """
    interpreter, feed = _tflite_inputs(path, x)
    return _tflite.run(interpreter, feed)


def evaluate_tflite(path, x, y, batch_size=None, output=None) -> float:
    """Top-1 accuracy of a .tflite classifier on (x, y).

    Args:
        path: a .tflite file with one signature.
        x: an array `(n, *input_shape)` (or a nested list of numbers), n >= 1, or a dict of
            them keyed by input name.
        y: integer class labels in `[0, classes)` of shape `(n,)` or `(n, 1)` (ints, or
            floats that are whole numbers), or one-hot / probability labels of shape
            `(n, classes)`, scored by their argmax.
        batch_size: accepted for symmetry with Keras; the file's static batch size is what
            runs, so any other value raises a ValueError.
        output: the output name to score (`output_0` ...); required with several outputs.

    Returns:
        The fraction of samples whose argmax output equals the label.

    Raises:
        FileNotFoundError: there is no file at `path`.
        ValueError: as `predict_tflite` for `path` and `x`; and, before running the model,
            for a missing, non-numeric or misshaped `y`, labels that are not whole numbers
            or not in `[0, classes)` (the first bad one is named), a different number of
            labels and samples, a `batch_size` other than the file's, an unknown `output`,
            or an output that is not one score per class `(n, classes >= 2)`.

    Example:
    >>> evaluate_tflite("lenet_int8.tflite", x_test, y_test)
    0.83
    """
    interpreter, feed = _tflite_inputs(path, x)
    in_infos, out_infos = _tflite.signature_details(interpreter)
    if batch_size is not None and batch_size != in_infos[0].shape[0]:
        raise ValueError(
            f"The .tflite file has a static batch size of {in_infos[0].shape[0]}; export it "
            f"with batch_size={batch_size} or leave batch_size=None. "
            f"Received: batch_size={batch_size}"
        )
    names = [info.name for info in out_infos]
    if output is None and len(names) != 1:
        raise ValueError(f"The model has several outputs; choose one of {names}. Received: None")
    output = names[0] if output is None else output
    if not isinstance(output, str) or output not in names:
        raise ValueError(f"`output` must be one of {names}. Received: output={output!r}")
    shape = next(info.shape for info in out_infos if info.name == output)
    n = len(next(iter(feed.values()))) if feed else 0
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(
            "evaluate_tflite scores classifiers with one score per class (n, classes >= 2). "
            f"Received: output shape {(n, *shape[1:])}"
        )
    labels = _class_labels(y, shape[1])
    sizes = {len(a) for a in feed.values()}
    if len(sizes) == 1 and len(labels) != n:  # (differing input sizes: run() says so)
        raise ValueError(
            f"`x` and `y` must have the same number of samples. "
            f"Received: {n} samples in x, {len(labels)} labels in y"
        )
    logits = _tflite.run(interpreter, feed)[output]
    return float(np.mean(logits.argmax(-1) == labels))


# -------------------------------------------------------------------------- command line


def _fail(message: str):
    print(f"ssl_keras.export: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _load_calibration(path):
    if not os.path.isfile(path):
        _fail(f"No such calibration file. Received: --calibration={path!r}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:
        _fail(f"Could not read the calibration file as .npy / .npz: {str(error).rstrip('.')}. "
              f"Received: --calibration={path!r}")
    if isinstance(data, np.ndarray):
        return data
    return {key: data[key] for key in data.files}


def _load_model(path):
    try:
        return load_keras_file(path)
    except ValueError as error:
        _fail(str(error))


def _flag_values():
    """The command line's absl flags, in a private FlagValues (no clash with global flags)."""
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_string("quantize", None, "float32 (default), float16, dynamic or int8.",
                        flag_values=fv)
    flags.DEFINE_string("calibration", None, ".npy (or .npz, one array per input name) of "
                        "samples for int8 calibration and verification.", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing output file.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 1, "Static batch size of the .tflite model.",
                         flag_values=fv)
    flags.DEFINE_integer("num_calibration_samples", 100, "Calibration samples used at most.",
                         flag_values=fv)
    flags.DEFINE_boolean("allow_select_ops", False, "Allow Select TF (Flex) ops.",
                         flag_values=fv)
    flags.DEFINE_boolean("verify", True, "Compare the .tflite outputs with the Keras model.",
                         flag_values=fv)
    flags.DEFINE_boolean("json", False, "Print the report as JSON.", flag_values=fv)
    return fv


def _main(argv, FLAGS):
    if len(argv) != 3:
        _fail("usage: python -m ssl_keras.export MODEL.keras OUT.tflite [--quantize MODE] "
              f"[--calibration DATA.npy] [--overwrite]. Received: {argv[1:]}")
    model_path, out_path = argv[1], argv[2]
    quantize = None if FLAGS.quantize in (None, "", "none", "None", "float32") else FLAGS.quantize
    if quantize not in QUANTIZE_MODES:  # before loading the model, in the flag's own terms
        modes = ", ".join(mode or "float32" for mode in QUANTIZE_MODES)
        _fail(f"--quantize must be one of {modes}. Received: --quantize={FLAGS.quantize!r}")
    if quantize == "int8" and FLAGS.calibration is None:
        _fail("--quantize=int8 needs --calibration DATA.npy to calibrate activation ranges.")
    try:
        check_output(out_path, "OUT", model_path, FLAGS.overwrite, "the .tflite file")
    except ValueError as error:
        _fail(str(error))
    calibration = None if FLAGS.calibration is None else _load_calibration(FLAGS.calibration)
    model = _load_model(model_path)
    try:
        report = export_tflite(
            model, out_path, quantize=quantize, representative_data=calibration,
            batch_size=FLAGS.batch_size, verify=FLAGS.verify, overwrite=FLAGS.overwrite,
            num_calibration_samples=FLAGS.num_calibration_samples,
            allow_select_ops=FLAGS.allow_select_ops,
        )
    except (ValueError, OSError) as error:
        _fail(in_flag_terms(str(error)))
    print(report.to_json() if FLAGS.json else report)


def main(argv=None):
    """Entry point of `python -m ssl_keras.export`; exits 0, or 2 with one line on stderr.

    Args:
        argv: the command line, program name first; `sys.argv` when None.
    """
    run(__doc__, _flag_values(), _main, _fail, argv)


if __name__ == "__main__":
    main()
