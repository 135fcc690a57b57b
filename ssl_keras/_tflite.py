"""Internal helpers for .tflite files: op counts, tensor details, running, atomic writing.

Nothing here imports Keras: these helpers work on the bytes of a .tflite flatbuffer and on
the ai_edge_litert (LiteRT) interpreter only.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tempfile
from collections import Counter

import numpy as np

from ssl_keras._quiet import c_stderr_silenced


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of a .tflite signature.

    Attributes:
        name: the signature key of the tensor (the Keras input name, or `output_0`, ...).
        shape: the static shape, batch included.
        dtype: the NumPy dtype name (`"float32"`, `"int8"`, ...).
        scale: the quantisation scale of an integer tensor, else None.
        zero_point: the quantisation zero point of an integer tensor, else None.
    """

    name: str
    shape: tuple
    dtype: str
    scale: float | None = None
    zero_point: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}

    def __str__(self) -> str:
        text = f"{self.name}: {self.dtype}{list(self.shape)}"
        if self.scale is not None:
            text += f" (scale={self.scale:.6g}, zero_point={self.zero_point})"
        return text


def _builtin_names() -> dict:
    from ai_edge_litert import schema_py_generated as schema

    return {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_") and isinstance(value, int)
    }


def op_counts(content: bytes) -> dict:
    """Counts the operators of every subgraph of a .tflite flatbuffer, by op type.

    Builtin ops are named as in the TFLite schema (`"CONV_2D"`); custom ops by their custom
    code, so Select TF ops appear as `"FlexConv2D"` and so on. Counting reads the flatbuffer,
    not the interpreter, so ops taken over by a delegate (XNNPACK) are still counted.

    Args:
        content: the bytes of a .tflite file.

    Returns:
        A dict from op type to count, sorted by op type.
    """
    from ai_edge_litert import schema_py_generated as schema

    names = _builtin_names()
    model = schema.Model.GetRootAsModel(content, 0)
    counts = Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(builtin, f"BUILTIN_{builtin}")
            if name == "CUSTOM":
                custom = code.CustomCode()
                name = custom.decode() if isinstance(custom, bytes) else str(custom)
            counts[name] += 1
    return dict(sorted(counts.items()))


def flex_ops(counts: dict) -> list:
    """The Select TF (Flex) op types among `op_counts`, sorted."""
    return sorted(name for name in counts if name.startswith("Flex"))


def select_ops_from_error(message: str) -> list:
    """The TF op names a converter error says need Select TF ops (or are unsupported)."""
    found = re.search(r"TF Select ops: ([^\n]+)", message)
    if found:
        return [name.strip() for name in found.group(1).split(",") if name.strip()]
    return sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", message)))


def make_interpreter(model_path: str | None = None, model_content: bytes | None = None):
    """An allocated ai_edge_litert Interpreter (one thread, default XNNPACK delegate).

    Raises:
        ValueError: the interpreter cannot prepare the model (LiteRT's RuntimeError, e.g.
            XNNPACK failing to build its runtime for an int8 model calibrated on constant
            data), with LiteRT's reason.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        with c_stderr_silenced():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate"
            interpreter = Interpreter(model_path=model_path, model_content=model_content)
            interpreter.allocate_tensors()
    except RuntimeError as error:
        reason = " ".join(str(error).split()).rstrip(".")
        raise ValueError(
            f"The TFLite interpreter cannot prepare the model: {reason}. (One known cause: an "
            "int8 model calibrated on constant data, whose ranges have zero width; calibrate "
            f"on varied, real inputs.) Received: {model_path or 'the converted model'}"
        ) from None
    return interpreter


def load_interpreter(path: str):
    """`make_interpreter` on a file, with errors that name the file and say what is wrong.

    Raises:
        ValueError: the file is empty or not a TFLite flatbuffer (a .keras file, say), or the
            interpreter cannot prepare it (Select TF ops without the Flex delegate).
    """
    from ai_edge_litert.interpreter import Interpreter

    expected = "expected a TFLite model, as written by export_tflite"
    if os.path.getsize(path) == 0:
        raise ValueError(
            f"The file is not a valid .tflite flatbuffer ({expected}). "
            f"Received: an empty file, path={path!r}"
        )
    try:
        with c_stderr_silenced():
            interpreter = Interpreter(model_path=path)
    except ValueError as error:
        with open(path, "rb") as f:
            head = f.read(8)
        raise ValueError(
            f"The file is not a valid .tflite flatbuffer ({expected}, with the identifier "
            f"'TFL3' at bytes 4-8): {str(error).strip().rstrip('.')}. "
            f"Received: path={path!r}, first bytes={head!r}"
        ) from None
    try:
        with c_stderr_silenced():
            interpreter.allocate_tensors()
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"The ai_edge_litert interpreter cannot prepare this .tflite file: {first[:300]}. "
            f"Received: path={path!r}"
        ) from None
    return interpreter


def _info(name: str, detail: dict) -> TensorInfo:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    quantized = np.issubdtype(dtype, np.integer) and scale != 0.0
    return TensorInfo(
        name=name,
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=dtype.name,
        scale=float(scale) if quantized else None,
        zero_point=int(zero_point) if quantized else None,
    )


def _output_order(name: str):
    found = re.fullmatch(r"output_(\d+)", name)
    return (0, int(found.group(1)), "") if found else (1, 0, name)


def signature_details(interpreter) -> tuple:
    """The (inputs, outputs) TensorInfo tuples of the interpreter's only signature.

    Inputs are sorted by name; outputs named `output_<i>` are sorted by `i` (the order of the
    Keras model's outputs), other output names alphabetically.
    """
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(
            "Expected a .tflite file with exactly one signature. "
            f"Received: signatures={sorted(signatures)}"
        )
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    inputs = runner.get_input_details()
    outputs = runner.get_output_details()
    return (
        tuple(_info(n, inputs[n]) for n in sorted(inputs)),
        tuple(_info(n, outputs[n]) for n in sorted(outputs, key=_output_order)),
    )


def quantize(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Float input -> the tensor's dtype: `clip(round(x / scale) + zero_point)` when quantised."""
    dtype = np.dtype(info.dtype)
    if info.scale is None:
        return np.asarray(x).astype(dtype)
    limits = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float64) / info.scale) + info.zero_point
    return np.clip(q, limits.min, limits.max).astype(dtype)


def dequantize(y: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Tensor output -> float32: `(y - zero_point) * scale` when quantised."""
    if info.scale is None:
        return np.asarray(y).astype(np.float32, copy=False)
    return ((np.asarray(y, np.float64) - info.zero_point) * info.scale).astype(np.float32)


def run(interpreter, inputs: dict) -> dict:
    """Runs the signature on inputs of any length, in batches of the static batch size.

    Inputs are quantised and outputs dequantised with the tensors' scale and zero point; the
    last incomplete batch is padded with zeros and the padding dropped from the outputs.

    Args:
        interpreter: an allocated ai_edge_litert Interpreter with one signature.
        inputs: a dict from input name to an array of shape `(n, *input_shape[1:])`.

    Returns:
        A dict from output name to a float32 array of shape `(n, *output_shape[1:])`.
    """
    in_infos, out_infos = signature_details(interpreter)
    expected = sorted(info.name for info in in_infos)
    if sorted(inputs) != expected:
        raise ValueError(
            f"The inputs must be keyed by the model's input names {expected}. "
            f"Received: keys={sorted(inputs)}"
        )
    sizes = {len(inputs[info.name]) for info in in_infos}
    if len(sizes) != 1:
        raise ValueError(
            "All inputs must have the same number of samples. "
            f"Received: sizes={ {n: len(a) for n, a in inputs.items()} }"
        )
    n = sizes.pop()
    if n == 0:
        raise ValueError("At least one sample is needed to run the model. Received: 0 samples")
    for info in in_infos:
        got = tuple(np.shape(inputs[info.name])[1:])
        if got != info.shape[1:]:
            raise ValueError(
                f"Input `{info.name}` must have samples of shape {info.shape[1:]}. "
                f"Received: shape={np.shape(inputs[info.name])}"
            )
    runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    batch = in_infos[0].shape[0]
    results = {info.name: [] for info in out_infos}
    for start in range(0, n, batch):
        feed = {}
        for info in in_infos:
            chunk = np.asarray(inputs[info.name][start:start + batch])
            if len(chunk) < batch:
                pad = np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            feed[info.name] = quantize(chunk, info)
        try:
            outputs = runner(**feed)
        except RuntimeError as error:  # e.g. a GATHER index outside an Embedding's table
            reason = " ".join(str(error).split()).rstrip(".")
            raise ValueError(
                f"The TFLite interpreter failed on the inputs {start}..{min(start + batch, n) - 1}"
                f": {reason}. Expected inputs the model accepts (token ids below each "
                "Embedding's input_dim, say)") from None
        for info in out_infos:
            results[info.name].append(dequantize(outputs[info.name], info)[: n - start])
    return {name: np.concatenate(parts) for name, parts in results.items()}


def file_mode(path: str) -> int:
    """The mode `open(path, "w")` leaves a file with: an existing file's own mode, else 0o666
    less the umask. (A temporary file from mkstemp is 0600; it gets this mode before it
    takes the place of `path`.)"""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_atomic(path: str, content: bytes, overwrite: bool) -> None:
    """Writes `content` to `path` through a temporary file in the same directory.

    Without `overwrite`, the file is published with a hard link, which fails if `path` exists
    (no window in which another writer's file could be replaced); with it, `os.replace`.
    A reader never sees a partly written file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        short = os.fsencode(os.path.basename(path))[:64].decode(errors="ignore")
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + short,
                                   suffix=".tmp")  # short: a long name stays within 255 bytes
    except OSError as e:  # name the file asked for, not the temporary one
        raise OSError(e.errno, f"Cannot write to the directory of {path!r}: "
                               f"{e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(
                f"The output file already exists; pass overwrite=True to replace it. "
                f"Received: path={path!r}"
            ) from None
        except OSError:  # No hard links on this file system: check, then rename.
            if os.path.exists(path):
                raise FileExistsError(
                    f"The output file already exists; pass overwrite=True to replace it. "
                    f"Received: path={path!r}"
                ) from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
