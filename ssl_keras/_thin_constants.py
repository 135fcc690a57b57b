"""The constants of removed channels, read numerically off the zeroed model, and their folding.

Internal to `ssl_keras.thin`: probe inputs, which consumer inputs carry a removed constant
channel, the check that it is the same for every input, and its contribution to the
consumer (a bias, or a constant map for a `ConstantAdd`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssl_keras._export_inputs import _id_bound
from ssl_keras._thin_model import _is_conv, _is_separable, _is_transpose, _weight_keys
from ssl_keras._thin_slice import _cheap_init

_TOL = 1e-6  # relative tolerance of "the same value" checks (the contract allows 1e-5)


# ---------------------------------------------------------------------------------------------
# Constants read off the zeroed model


def _input_tensor(graph, name):
    return graph.get_layer(name)._inbound_nodes[0].input_tensors


def _same(x, axis=0):
    """True when `x` has the same value along `axis` (to _TOL, relative)."""
    x = np.asarray(x, np.float64)
    ref = np.take(x, [0], axis=axis)
    return float(np.max(np.abs(x - ref), initial=0.0)) <= _TOL * (1 + float(np.max(np.abs(x),
                                                                               initial=0.0)))


def _probe_inputs(graph, seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for t in graph.inputs:
        if any(d is None for d in t.shape[1:]):
            raise ValueError(
                "thin needs static input shapes to read the constants of removed channels. "
                f"Received: an input of shape {tuple(t.shape)}. Build the model with a fixed "
                "input size."
            )
        dtype = np.dtype(keras.backend.standardize_dtype(t.dtype))
        shape = (2, *t.shape[1:])
        if dtype.kind == "f":
            arrays.append(rng.normal(size=shape).astype(np.float32) * 3)
        elif dtype.kind in "iu":
            # Token ids: below the Embeddings' input_dim when only Embeddings read them, else
            # 0 / 1 (valid for any lookup or encoding layer; negative ids are not).
            bound, _ = _id_bound(graph, t)
            arrays.append(rng.integers(0, bound or 2, size=shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
    return arrays


def _run(graph, zw, tensors, probes):
    """The values of `tensors` (of `graph`) on `probes`, computed with the weights `zw`."""
    if not tensors:
        return []
    sub = keras.Model(graph.inputs, tensors)
    values = {id(v): zw[layer.name][k] for layer in sub.layers if layer.name in zw
              for k, v in zip(_weight_keys(layer), layer.weights, strict=True)}
    trainable = [values.get(id(v), v) for v in sub.trainable_variables]
    frozen = [values.get(id(v), v) for v in sub.non_trainable_variables]
    out, _ = sub.stateless_call(trainable, frozen, [ops.convert_to_tensor(p) for p in probes],
                                training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(ops.convert_to_numpy(o)) for o in out]


def _linear_part(layer, weights, x):
    """`layer` without bias and activation, applied to `x` (NumPy, batch 1)."""
    kernel = weights[layer.name].get("kernel")
    if type(layer) is keras.layers.Dense:
        return np.matmul(x, kernel)
    if _is_conv(type(layer)) and layer.padding in ("valid", "same"):
        return np.asarray(ops.convert_to_numpy(layer.convolution_op(x, kernel)))
    cfg = _cheap_init(layer.get_config())
    cfg["name"] = f"{layer.name}_linear_probe"
    if "activation" in cfg:
        cfg["activation"] = "linear"
    cfg["use_bias"] = False
    clone = type(layer).from_config(cfg)
    clone.build(x.shape)
    clone.set_weights([weights[layer.name][k] for k in _weight_keys(clone)])
    return np.asarray(ops.convert_to_numpy(clone(x)))


def _fold(layer, weights, value, removed_in, kept_out):
    """The contribution of the removed constant input channels to `layer`'s output.

    Returns ("bias", vector) when it is the same at every position, else ("map", array).
    """
    kernel = weights[layer.name].get("kernel")  # a float64 conv refuses float32 inputs
    x = np.zeros((1, *value.shape[1:]), np.float32 if kernel is None else kernel.dtype)
    x[..., removed_in] = value[:1][..., removed_in]
    m = _linear_part(layer, weights, x)[0][..., kept_out]
    flat = m.reshape(-1, m.shape[-1])
    if _same(flat, axis=0):
        return "bias", flat[0]
    return "map", m


# ---------------------------------------------------------------------------------------------
# Consumer inputs that carry removed constant channels


def _input_axis(layer):
    """(weight, axis) of the kernel axis that indexes `layer`'s input channels."""
    cls = type(layer)
    if _is_separable(cls):
        return "depthwise_kernel", len(layer.depthwise_kernel.shape) - 2
    if _is_transpose(cls):
        return "kernel", len(layer.kernel.shape) - 1
    kernel = getattr(layer, "kernel", None)
    return ("kernel", len(kernel.shape) - 2) if kernel is not None else (None, None)


def _is_input_slice(s, by_name):
    """True for a consumer slice that indexes its layer's input channels."""
    if s["role"] != "consumer":
        return False
    layer = by_name[s["layer"]]
    weight, axis = _input_axis(layer)
    if s["weight"] != weight:
        return False
    return s["axis"] % len(getattr(layer, weight).shape) == axis


def _const_inputs(groups, removed, decisions, alive, by_name):
    """{consumer layer: sorted input positions} that carry removed constant channels."""
    out = {}
    for g in groups:
        if g["id"] in removed and decisions[g["id"]][0] == "constant":
            for s in g["slices"]:
                if s["layer"] in alive and _is_input_slice(s, by_name):
                    out.setdefault(s["layer"], set()).update(int(i) for i in s["index"])
    return {k: sorted(v) for k, v in out.items()}


def _not_constant(value, idx):
    """The positions of `idx` whose value differs between the probe inputs."""
    v = np.asarray(value[..., idx], np.float64)
    dev = np.abs(v - v[:1]).reshape(-1, len(idx)).max(axis=0)
    scale = np.abs(v).reshape(-1, len(idx)).max(axis=0)
    return {i for i, d, s in zip(idx, dev, scale, strict=True) if d > _TOL * (1 + s)}


def _constant_spec(name, value):
    value = np.asarray(value, np.float32)
    return {"class": "ConstantAdd", "name": name, "shape": list(value.shape),
            "value": value.tolist()}
