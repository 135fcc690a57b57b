"""Static facts about a .tflite file, read from its flatbuffer: MACs, parameters, size.

Nothing here runs the model or imports TensorFlow: the flatbuffer is decoded with the schema
that ships with ai-edge-litert (`ai_edge_litert.schema_py_generated`).

MACs (multiply-accumulates) are counted per operator from the static tensor shapes:

    CONV_2D              out (N, OH, OW, OC), filter (OC, KH, KW, IC/g):
                         macs = N*OH*OW*OC * KH*KW*(IC/g)
    DEPTHWISE_CONV_2D    out (N, OH, OW, C*M), filter (1, KH, KW, C*M):
                         macs = N*OH*OW*C*M * KH*KW
    FULLY_CONNECTED      out (..., O), weights (O, I):       macs = prod(out) * I
    TRANSPOSE_CONV       in (N, H, W, IC), filter (OC, KH, KW, IC):
                         macs = N*H*W*IC * KH*KW*OC
    BATCH_MATMUL         a (..., M, K) (or (..., K, M) with adj_x), out (..., M, N):
                         macs = prod(out) * K
    CONV_3D              out (N, OD, OH, OW, OC), filter (KD, KH, KW, IC, OC):
                         macs = prod(out) * KD*KH*KW*IC
    CONV_3D_TRANSPOSE    in (N, D, H, W, IC), filter (KD, KH, KW, OC, IC):
                         macs = prod(in) * KD*KH*KW*OC

Other operators (pooling, activations, element-wise arithmetic) are not counted: the figure
is the GEMM work that structured sparsity removes. Zeros stored in dense tensors (element-wise
pruning) are counted like any other weight: the kernels still multiply them.

Parameters are the elements of the constant tensors (tensors backed by a non-empty buffer),
each counted once, except integer index/shape constants (int32/int64 tensors that are not the
bias of a counted operator). A sparse-encoded constant (the converter's EXPERIMENTAL_SPARSITY)
counts the values its buffer stores, not its dense shape.
"""

from __future__ import annotations

import math
import os

from ai_edge_litert import schema_py_generated as _fb

_OPS = _fb.BuiltinOperator
_TYPES = _fb.TensorType

#: Operators whose MACs are counted, by name.
COUNTED_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "TRANSPOSE_CONV",
    "BATCH_MATMUL",
    "CONV_3D",
    "CONV_3D_TRANSPOSE",
)

_OP_NAMES = {v: k for k, v in vars(_OPS).items() if not k.startswith("_") and isinstance(v, int)}
_TYPE_NAMES = {
    v: k.lower() for k, v in vars(_TYPES).items() if not k.startswith("_") and isinstance(v, int)
}
_INDEX_TYPES = (_TYPES.INT32, _TYPES.INT64)
_ITEM_BYTES = {_TYPES.FLOAT32: 4, _TYPES.FLOAT16: 2, _TYPES.FLOAT64: 8, _TYPES.INT8: 1,
               _TYPES.UINT8: 1, _TYPES.INT16: 2, _TYPES.INT32: 4, _TYPES.INT64: 8}
# Input position of the bias for the counted operators (int32 biases of int8 models count).
_BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3,
               "CONV_3D": 2, "CONV_3D_TRANSPOSE": 3}


def read_model(path):
    """Decodes a .tflite file into the flatbuffer object API (`ModelT`).

    Args:
        path: path to a .tflite file.

    Returns:
        An `ai_edge_litert.schema_py_generated.ModelT`.

    Raises:
        FileNotFoundError: if the file does not exist (IsADirectoryError: a directory).
        ValueError: if the file is not a TFLite flatbuffer.

    Example:

    >>> model = read_model("lenet.tflite")  # doctest: +SKIP
    >>> len(model.subgraphs)  # doctest: +SKIP
    1
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"Expected a .tflite file, not a directory. Received: "
                                f"path={path!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such .tflite file. Received: path={path!r}")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "The file is not a TFLite flatbuffer (expected the identifier 'TFL3' at bytes "
            f"4-8). Received: path={path!r}, identifier={data[4:8]!r}"
        )
    try:
        model = _fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as e:  # a truncated or corrupt flatbuffer raises anything
        raise ValueError(
            f"The file is a corrupt TFLite flatbuffer: {type(e).__name__}: {e}. "
            f"Received: path={path!r}"
        ) from None
    if not model.subgraphs or not model.buffers:
        raise ValueError("The file is a corrupt TFLite flatbuffer: it has no subgraph or no "
                         f"buffer table. Received: path={path!r}")
    return model


def _opcode_name(model, opcode_index):
    code = model.operatorCodes[opcode_index]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    if builtin == _OPS.CUSTOM:
        name = code.customCode
        return f"CUSTOM:{name.decode() if isinstance(name, bytes) else name}"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def _shape(tensor):
    return [int(d) for d in (tensor.shape if tensor.shape is not None else [])]


def _prod(dims):
    return math.prod(dims) if dims else 1


def _is_constant(model, tensor):
    if tensor.buffer is None or tensor.buffer <= 0 or tensor.buffer >= len(model.buffers):
        return False
    buf = model.buffers[tensor.buffer]
    has_data = buf.data is not None and len(buf.data) > 0
    return has_data or (buf.offset or 0) > 1


def _op_macs(name, op, tensors, where):
    """MACs of one operator, or None for operators that are not counted."""

    def shape(i, what):
        if i >= len(op.inputs) or op.inputs[i] < 0:
            raise ValueError(f"{where}: {name} has no {what} input (input {i}).")
        s = _shape(tensors[op.inputs[i]])
        if not s or any(d < 0 for d in s):
            raise ValueError(f"{where}: the {what} of {name} has no static shape. Received: {s}")
        return s

    def out_shape():
        s = _shape(tensors[op.outputs[0]])
        if not s or any(d < 0 for d in s):
            raise ValueError(f"{where}: the output of {name} has no static shape. Received: {s}")
        return s

    if name == "CONV_2D":
        _, kh, kw, ic = shape(1, "filter")
        return _prod(out_shape()) * kh * kw * ic
    if name == "DEPTHWISE_CONV_2D":
        _, kh, kw, _ = shape(1, "filter")
        return _prod(out_shape()) * kh * kw
    if name == "FULLY_CONNECTED":
        w = shape(1, "weights")
        return _prod(out_shape()) * w[-1]
    if name == "TRANSPOSE_CONV":
        oc, kh, kw, _ = shape(1, "filter")
        return _prod(shape(2, "input")) * kh * kw * oc
    if name == "BATCH_MATMUL":
        a = shape(0, "lhs")
        opts = op.builtinOptions
        adj_x = bool(getattr(opts, "adjX", False)) if opts is not None else False
        k = a[-2] if adj_x else a[-1]
        return _prod(out_shape()) * k
    if name == "CONV_3D":
        kd, kh, kw, ic, _ = shape(1, "filter")
        return _prod(out_shape()) * kd * kh * kw * ic
    if name == "CONV_3D_TRANSPOSE":
        kd, kh, kw, oc, _ = shape(1, "filter")
        return _prod(shape(2, "input")) * kd * kh * kw * oc
    return None


def model_info(path):
    """Size, parameter count and MACs of a .tflite file, with a per-operator breakdown.

    Args:
        path: path to a .tflite file.

    Returns:
        A dict: `path`, `size_bytes`, `params`, `macs` (the sum over every subgraph of the
        operators in `COUNTED_OPS`), `macs_by_op` ({op name: MACs}), `ops` ({op name: count},
        all operators), `inputs` ([{"shape", "dtype"}] of subgraph 0).

    Raises:
        FileNotFoundError: if the file does not exist (IsADirectoryError: a directory).
        ValueError: if the file is not a valid TFLite flatbuffer (a corrupt one included),
            or a counted operator has no static shapes.

    Example:

    >>> info = model_info("lenet.tflite")  # doctest: +SKIP
    >>> info["macs"], info["macs_by_op"]  # doctest: +SKIP
    (2293000, {'CONV_2D': 1888000, 'FULLY_CONNECTED': 405000})
    """
    model = read_model(path)
    try:
        return _model_info(path, model)
    except (IndexError, KeyError, AttributeError, TypeError) as error:  # a corrupt file
        raise ValueError(
            "The file is not a valid TFLite model (an operator or tensor refers to one that "
            f"does not exist). Received: path={os.fspath(path)!r}, "
            f"error={type(error).__name__}: {error}") from error


def _model_info(path, model):
    macs_by_op, ops = {}, {}
    param_tensors = set()
    bias_inputs = set()
    for s, sub in enumerate(model.subgraphs or []):
        tensors = sub.tensors or []
        for o, op in enumerate(sub.operators or []):
            name = _opcode_name(model, op.opcodeIndex)
            ops[name] = ops.get(name, 0) + 1
            macs = _op_macs(name, op, tensors, f"subgraph {s}, operator {o}")
            if macs is not None:
                macs_by_op[name] = macs_by_op.get(name, 0) + macs
            b = _BIAS_INPUT.get(name)
            if b is not None and b < len(op.inputs) and op.inputs[b] >= 0:
                bias_inputs.add((s, int(op.inputs[b])))
        for t, tensor in enumerate(tensors):
            if _is_constant(model, tensor):
                param_tensors.add((s, t))
    params = 0
    seen_buffers = set()
    for s, t in sorted(param_tensors):
        tensor = model.subgraphs[s].tensors[t]
        if tensor.type in _INDEX_TYPES and (s, t) not in bias_inputs:
            continue
        if tensor.buffer in seen_buffers:  # one buffer shared by several tensors
            continue
        seen_buffers.add(tensor.buffer)
        data = model.buffers[tensor.buffer].data
        if tensor.sparsity is not None and data is not None and tensor.type in _ITEM_BYTES:
            params += len(data) // _ITEM_BYTES[tensor.type]  # the values it stores
            continue
        params += _prod(_shape(tensor))
    inputs = []
    if model.subgraphs:
        sub = model.subgraphs[0]
        for i in sub.inputs if sub.inputs is not None else []:
            tensor = sub.tensors[i]
            inputs.append({"shape": _shape(tensor),
                           "dtype": _TYPE_NAMES.get(tensor.type, str(tensor.type))})
    return {
        "path": os.fspath(path),
        "size_bytes": os.path.getsize(path),
        "params": int(params),
        "macs": int(sum(macs_by_op.values())),
        "macs_by_op": macs_by_op,
        "ops": ops,
        "inputs": inputs,
    }


def count_macs(path):
    """Multiply-accumulates of one inference of a .tflite model (see the module docstring).

    Args:
        path: path to a .tflite file.

    Returns:
        The MAC count, an int.

    Example:

    >>> count_macs("lenet_dense.tflite")  # doctest: +SKIP
    2293000
    """
    return model_info(path)["macs"]


def count_params(path):
    """Number of weight elements stored in a .tflite model (see the module docstring).

    Args:
        path: path to a .tflite file.

    Returns:
        The parameter count, an int.

    Example:

    >>> count_params("lenet_dense.tflite")  # doctest: +SKIP
    431080
    """
    return model_info(path)["params"]
