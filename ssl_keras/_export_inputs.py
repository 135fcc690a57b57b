"""The model's input structure for export, and representative data as per-input arrays.

Internal to `ssl_keras.export`: input names (the TFLite signature keys), static shapes,
and `representative_data` (arrays, tf.data.Dataset, generator) collected into batches.
"""

from __future__ import annotations

import os
import re

import numpy as np

# ---------------------------------------------------------------------------------- inputs


def _input_struct(model):
    """The model's inputs as a KerasTensor, a list of them or a dict of them."""
    try:
        return model.input
    except (AttributeError, ValueError):
        pass
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "export_tflite needs a model with defined inputs (a functional model or a "
            "Sequential model with an Input). Subclassed models: wrap them with "
            "`keras.Model(inputs, model(inputs))` first. "
            f"Received: model={model.name!r} of class {type(model).__name__}"
        )
    return inputs[0] if len(inputs) == 1 else list(inputs)


def _input_names(struct) -> list:
    """Input names in the order of the flattened structure (dict: sorted keys)."""
    if isinstance(struct, dict):
        names = sorted(struct)
    else:
        tensors = struct if isinstance(struct, (list, tuple)) else [struct]
        names = [t.name for t in tensors]
    names = [re.sub(r"\W", "_", name) for name in names]
    if len(set(names)) != len(names):
        raise ValueError(f"The model's input names must be unique. Received: names={names}")
    return names


def _flat_inputs(struct) -> list:
    if isinstance(struct, dict):
        return [struct[k] for k in sorted(struct)]
    return list(struct) if isinstance(struct, (list, tuple)) else [struct]


def _unflatten(struct, arrays: list):
    if isinstance(struct, dict):
        return dict(zip(sorted(struct), arrays, strict=True))
    return list(arrays) if isinstance(struct, (list, tuple)) else arrays[0]


def _input_dtypes(struct) -> list:
    """The .tflite dtype of each input: float32 for float inputs, an integer input's own dtype.

    Integer inputs (token ids for an Embedding, say) stay integers in the .tflite file, and
    int8 quantisation leaves them alone; bool and string inputs are refused.
    """
    dtypes = []
    for name, tensor in zip(_input_names(struct), _flat_inputs(struct), strict=True):
        dtype = str(tensor.dtype)
        if dtype.startswith(("float", "bfloat")):
            dtypes.append(np.dtype(np.float32))
        elif dtype.startswith(("int", "uint")):
            dtypes.append(np.dtype(dtype))
        else:
            raise ValueError(
                "export_tflite supports float and integer inputs (the .tflite inputs are "
                "float32, or int8 when quantised, and integer inputs keep their dtype). "
                f"Received: input {name!r} of dtype {tensor.dtype}"
            )
    return dtypes


def _static_shapes(struct) -> list:
    tensors = _flat_inputs(struct)
    shapes = [tuple(t.shape[1:]) for t in tensors]
    _input_dtypes(struct)  # refuses bool and string inputs
    for name, shape in zip(_input_names(struct), shapes, strict=True):
        if any(d is None for d in shape):
            raise ValueError(
                "export_tflite needs static input shapes (only the batch may be None). "
                f"Received: input {name!r} with shape {(None, *shape)}"
            )
    return shapes


def _graph(model):
    """The functional graph behind a model, or None (subclassed, or not a model)."""
    import keras

    from ssl_keras.graph import _is_graph_model

    if not _is_graph_model(model):
        return None
    return getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model


def _id_bound(model, tensor):
    """(bound, readers) for an integer input tensor of `model`.

    `bound` is the smallest `input_dim` of the Embedding layers that read the tensor (directly
    or as the input of a nested functional model), so that random ids in [0, bound) are valid;
    None when something other than an Embedding reads it (`readers` names what does).
    """
    import keras

    graph = _graph(model)
    if graph is None:
        return None, [type(model).__name__]
    bounds, readers = [], []
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            if node.is_input or node.operation is None:
                continue
            positions = [i for i, t in enumerate(node.input_tensors) if t is tensor]
            if not positions:
                continue
            op = node.operation
            inner = _graph(op)
            if isinstance(op, keras.layers.Embedding):
                bounds.append(int(op.input_dim))
            elif inner is not None and len(inner.inputs) == len(node.input_tensors):
                for i in positions:
                    bound, more = _id_bound(op, inner.inputs[i])
                    readers += more
                    if bound is not None:
                        bounds.append(bound)
            else:
                readers.append(type(op).__name__)
    if readers or not bounds:
        return None, readers or ["nothing"]
    return min(bounds), []


def _random_samples(model, struct, count: int, seed: int, unknown_ids: int | None = None
                    ) -> tuple:
    """Random verification inputs: uniform [0, 1) floats, integer ids within the Embeddings'
    input_dim. Returns (samples, description); an integer input that is not only read by
    Embedding layers has no known valid range: ids in [0, unknown_ids) when given (thin's
    check: 0 / 1 are valid for any lookup or encoding layer), else a ValueError asks for
    data."""
    rng = np.random.default_rng(seed)
    names, shapes, dtypes = _input_names(struct), _static_shapes(struct), _input_dtypes(struct)
    samples, bounds = [], []
    for name, shape, dtype, tensor in zip(names, shapes, dtypes, _flat_inputs(struct),
                                          strict=True):
        bound, readers = _id_bound(model, tensor)
        if dtype.kind == "f" and bound is None:
            samples.append(rng.random((count, *shape), dtype=np.float32))
            continue
        # an integer input, or a float one that only Embeddings read (Keras's default Input
        # dtype): ids (uniform [0, 1) floats would all be id 0)
        bound = unknown_ids if bound is None else bound
        if bound is None:
            raise ValueError(
                f"Cannot draw random verification inputs for the integer input {name!r}: its "
                "valid values are known only when Embedding layers alone read it (ids in "
                "[0, input_dim)). Pass `representative_data` with real inputs, or verify=False. "
                f"Received: input {name!r} read by {sorted(set(readers))}"
            )
        samples.append(rng.integers(0, bound, (count, *shape)).astype(dtype))
        bounds.append(f"{name} in [0, {bound})")
    description = "random uniform [0, 1)" if len(bounds) < len(names) else ""
    if bounds:
        description += (" and " if description else "") + "random ids " + ", ".join(bounds)
    return samples, description


def _check_ids(model, struct, data: list) -> None:
    """Integer inputs read only by Embeddings hold ids in [0, input_dim): else a ValueError
    (TensorFlow and LiteRT would fail in the middle of the conversion or the check)."""
    for name, tensor, array in zip(_input_names(struct), _flat_inputs(struct), data,
                                   strict=True):
        if np.asarray(array).dtype.kind not in "iuf":  # float ids: read by an Embedding too
            continue
        bound, _ = _id_bound(model, tensor)
        if bound is not None and array.size and (array.min() < 0 or array.max() >= bound):
            raise ValueError(
                f"The representative data of the input {name!r} must be token ids in "
                f"[0, {bound}) (the smallest input_dim of the Embeddings that read it). "
                f"Received: ids from {int(array.min())} to {int(array.max())}")


def _to_sample_arrays(element, names: list, shapes: list, dtypes: list) -> list:
    """One data element (a sample or a batch, possibly (x, y)) -> per-input batches."""
    element = _as_arrays(element, names, shapes)
    if isinstance(element, dict) and set(element) != set(names) and "x" in element:
        element = element["x"]
    if isinstance(element, dict):
        if sorted(element) != sorted(names):
            raise ValueError(
                f"Dict data must be keyed by the model's input names {sorted(names)}. "
                f"Received: keys={sorted(element)}"
            )
        parts = [element[n] for n in names]
    elif isinstance(element, (list, tuple)):
        nested = len(element) in (2, 3) and (
            len(names) == 1 or isinstance(element[0], (list, tuple, dict))
        )
        if nested:  # (x, y) or (x, y, sample_weight)
            return _to_sample_arrays(element[0], names, shapes, dtypes)
        parts = list(element)
    else:
        parts = [element]
    if len(parts) != len(names):
        raise ValueError(
            f"The data must give {len(names)} input(s) ({names}). Received: {len(parts)} arrays"
        )
    arrays = []
    for name, shape, dtype, part in zip(names, shapes, dtypes, parts, strict=True):
        array = _typed_array(part, name, dtype)
        if array.shape == shape:
            array = array[None]
        if array.shape[1:] != shape:
            raise ValueError(
                f"Data for input {name!r} must have samples of shape {shape}. "
                f"Received: shape={array.shape}"
            )
        arrays.append(array)
    if len({len(a) for a in arrays}) > 1:
        counts = {name: len(a) for name, a in zip(names, arrays, strict=True)}
        raise ValueError(
            f"The data of the model's inputs must have the same number of samples. "
            f"Received: samples per input={counts}"
        )
    return arrays


def _numeric_array(value):
    """`value` (an array or a nested list / tuple of numbers) as an array, else None."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):  # ragged, or elements NumPy cannot hold
        return None
    return array if array.dtype.kind in "biuf" else None


def _typed_array(part, name: str, dtype: np.dtype) -> np.ndarray:
    """One input's data as `dtype`, with a clear error for None, strings and the like.

    Data for an integer input must hold whole numbers within the dtype's range (integer ids
    stored as floats are accepted).
    """
    array = None if part is None else _numeric_array(part)
    if array is None:
        received = "None" if part is None else type(part).__name__
        if isinstance(part, np.ndarray):
            received += f" of dtype {part.dtype}"
        raise ValueError(
            f"Data for input {name!r} must be numeric (an array, or a nested list of numbers). "
            f"Received: {received}"
        )
    if dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    info = np.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        bad = (array < info.min) | (array > info.max)
        if array.dtype.kind == "f":
            bad |= ~np.isfinite(array) | (array != np.round(array))
    if bad.any():
        first = array.reshape(-1)[int(np.argmax(bad.reshape(-1)))].item()
        raise ValueError(
            f"Data for integer input {name!r} ({dtype}) must hold whole numbers in "
            f"[{info.min}, {info.max}]. Received: {int(np.count_nonzero(bad))} other value(s), "
            f"e.g. {first!r}"
        )
    return array.astype(dtype)


def _as_arrays(data, names: list, shapes: list):
    """Nested Python lists of numbers (`x.tolist()`) as arrays; anything else unchanged."""
    if not isinstance(data, (list, tuple)) or all(isinstance(a, np.ndarray) for a in data):
        return data
    if len(names) == 1:  # a list: the samples (or one sample) of the only input
        array = _numeric_array(data) if isinstance(data, list) else None  # a tuple: (x, y)
        rank = len(shapes[0])
        return array if array is not None and array.ndim in (rank, rank + 1) else data
    plain = [isinstance(a, np.ndarray) or (  # not ([xa, xb], y): arrays inside are structure
        isinstance(a, list) and not any(isinstance(v, np.ndarray) for v in a)) for a in data]
    if len(data) == len(names) and all(plain):  # one array or nested number list per input
        arrays = [_numeric_array(a) for a in data]
        if all(a is not None and a.ndim >= 1 for a in arrays):
            return arrays
    return data


def _collect(data, struct, limit: int) -> list:
    """representative_data (arrays, tf.data.Dataset or generator) -> per-input arrays."""
    names, shapes, dtypes = _input_names(struct), _static_shapes(struct), _input_dtypes(struct)
    if isinstance(data, (str, bytes, os.PathLike)):
        raise ValueError(
            "`representative_data` must be the samples themselves, not a file path: a NumPy "
            "array (or a list / dict of them for several inputs), a tf.data.Dataset or a "
            "generator. Load a file first, e.g. `np.load(path)`. "
            f"Received: representative_data={data!r}"
        )
    data = _as_arrays(data, names, shapes)
    if isinstance(data, (np.ndarray, dict)) or (
        isinstance(data, (list, tuple)) and all(isinstance(a, np.ndarray) for a in data)
    ):
        elements = [data]
    elif hasattr(data, "as_numpy_iterator"):
        elements = data.as_numpy_iterator()
    elif hasattr(data, "__iter__") or hasattr(data, "__next__"):
        elements = iter(data)
    else:
        raise ValueError(
            "`representative_data` must be a NumPy array (or a list / dict of them for several "
            "inputs), a tf.data.Dataset or a generator. "
            f"Received: representative_data of type {type(data).__name__}"
        )
    chunks, count = [], 0
    for element in elements:
        arrays = _to_sample_arrays(element, names, shapes, dtypes)
        chunks.append([a[: limit - count] for a in arrays])
        count += len(chunks[-1][0])
        if count >= limit:
            break
    if count == 0:
        raise ValueError("`representative_data` is empty. Received: 0 samples")
    arrays = [np.concatenate([c[i] for c in chunks]) for i in range(len(names))]
    for name, array in zip(names, arrays, strict=True):
        if array.dtype.kind != "f":
            continue
        finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
        if not finite.all():
            raise ValueError(
                "`representative_data` must be finite: NaN / inf inputs make calibration "
                "ranges and the verification meaningless. "
                f"Received: {int(np.count_nonzero(~finite))} of {len(array)} samples of input "
                f"{name!r} with NaN / inf values (the first is sample {int(np.argmin(finite))})"
            )
    return arrays
