"""Per layer kind: the channels every tensor keeps, and a layer rebuilt with fewer of them.

Internal to `ssl_keras.thin`: kept channel indices through the graph, the new width config
(units / filters) and the sliced (and folded) weights of a rebuilt layer.
"""

from __future__ import annotations

import keras
import numpy as np

from ssl_keras._constant_add import ConstantAdd
from ssl_keras._thin_model import (
    _is_conv,
    _is_depthwise,
    _is_separable,
    _is_transpose,
    _node_inputs,
    _nodes,
    _weight_keys,
    copy_layer,
)

# ---------------------------------------------------------------------------------------------
# Channel bookkeeping through the graph


def _keep_list(size, removed_idx):
    return [i for i in range(size) if i not in removed_idx]


def _propagate_channels(graph, rem, dropped, alive):
    """{tensor id: kept original channel indices along the last axis} for every tensor."""
    keep = {}
    for t in graph.inputs:
        keep[id(t)] = list(range(t.shape[-1])) if t.shape[-1] is not None else None
    for node in _nodes(graph):
        op = node.operation
        inputs = _node_inputs(node)
        if op.name not in alive:
            continue
        skip = set(dropped.get(op.name, []))
        ins = [keep.get(id(t)) for i, t in enumerate(inputs) if i not in skip]
        in_shapes = [t.shape for i, t in enumerate(inputs) if i not in skip]
        for t in node.outputs:
            keep[id(t)] = _out_channels(op, ins, in_shapes, t.shape, rem)
    return keep


def _out_channels(op, ins, in_shapes, out_shape, rem):
    width = out_shape[-1] if out_shape else None
    cls = type(op)
    name = op.name

    def by_weight(weight, axis):
        return _keep_list(width, rem.get((name, weight, axis), set()))

    if isinstance(op, keras.layers.Dense) or _is_conv(cls):
        return by_weight("kernel", len(op.kernel.shape) - 1)
    if _is_transpose(cls):
        return by_weight("kernel", len(op.kernel.shape) - 2)
    if _is_separable(cls):
        return by_weight("pointwise_kernel", len(op.pointwise_kernel.shape) - 1)
    if isinstance(op, keras.layers.Embedding):  # output features: columns of `embeddings`
        return by_weight("embeddings", len(op.embeddings.shape) - 1)
    if _is_depthwise(cls):
        dm = op.depth_multiplier
        return None if ins[0] is None else [c * dm + j for c in ins[0] for j in range(dm)]
    if isinstance(op, keras.layers.Concatenate):
        axis = op.axis % len(out_shape)
        if axis != len(out_shape) - 1:
            return _full_or_none(ins, in_shapes, width)
        out, offset = [], 0
        for k, s in zip(ins, in_shapes, strict=True):
            if k is None:
                return None
            out.extend(offset + c for c in k)
            offset += s[-1]
        return out
    if isinstance(op, keras.layers.Flatten):
        k, s = ins[0], in_shapes[0]
        if k is None or any(d is None for d in s[1:]):
            return None
        positions = int(np.prod(s[1:-1])) if len(s) > 2 else 1
        return [p * s[-1] + c for p in range(positions) for c in k]
    if ins and ins[0] is not None and in_shapes[0][-1] == width:
        return ins[0]  # per-channel layers: BN, activations, pooling, padding, merges
    return _full_or_none(ins, in_shapes, width)


def _full_or_none(ins, in_shapes, width):
    full = all(k is not None and len(k) == s[-1] for k, s in zip(ins, in_shapes, strict=True))
    return list(range(width)) if full and width is not None else None


# ---------------------------------------------------------------------------------------------
# Rebuilt layers: config and sliced weights


def _width_config(layer, keep):
    cls = type(layer)

    def kept(weight, axis):
        return keep.get(weight, {}).get(str(axis))

    if isinstance(layer, keras.layers.Dense):
        k = kept("kernel", len(layer.kernel.shape) - 1)
        return {"units": len(k)} if k is not None else {}
    if _is_conv(cls):
        k = kept("kernel", len(layer.kernel.shape) - 1)
        return {"filters": len(k)} if k is not None else {}
    if _is_transpose(cls):
        k = kept("kernel", len(layer.kernel.shape) - 2)
        return {"filters": len(k)} if k is not None else {}
    if _is_separable(cls):
        k = kept("pointwise_kernel", len(layer.pointwise_kernel.shape) - 1)
        return {"filters": len(k)} if k is not None else {}
    if isinstance(layer, keras.layers.Embedding):
        k = kept("embeddings", len(layer.embeddings.shape) - 1)
        return {"output_dim": len(k)} if k is not None else {}
    if isinstance(layer, ConstantAdd):
        k = kept("value", len(layer.value.shape) - 1)
        return {"shape": [*layer.shape[:-1], len(k)]} if k is not None else {}
    return {}


def _new_weights(layer, new_layer, arrays, entry):
    """The sliced (and folded) weights of `new_layer`, in its variable order."""
    keep = entry.get("keep", {}) if entry else {}
    values = []
    for key, var in zip(_weight_keys(new_layer), new_layer.weights, strict=True):
        if key in arrays:
            w = arrays[key]
            for axis, idx in keep.get(key, {}).items():
                w = np.take(w, np.asarray(idx, dtype=int), axis=int(axis))
        elif var.name == "bias":
            w = np.zeros(var.shape, np.float32)
        else:
            raise ValueError(f"Internal error: no value for weight {var.name!r} of layer "
                             f"{layer.name!r}.")
        if var.name == "bias" and entry and entry.get("bias_add") is not None:
            w = (w.astype(np.float32) + np.asarray(entry["bias_add"], np.float32))
        if tuple(w.shape) != tuple(var.shape):
            raise ValueError(
                f"The plan does not fit layer {layer.name!r}: weight {var.name!r} has shape "
                f"{tuple(var.shape)} in the rebuilt layer. Received: an array of shape "
                f"{tuple(w.shape)}. Was the plan made for this model?"
            )
        values.append(w.astype(var.dtype))
    return values


def _cheap_init(cfg):
    """`cfg` with zero initializers: the weights are set right after building."""
    return {k: ("zeros" if k.endswith("_initializer") and v is not None else v)
            for k, v in cfg.items()}


def _clone_op(op):
    try:
        if isinstance(op, keras.layers.Layer):
            return copy_layer(op)
        return type(op).from_config(op.get_config())
    except Exception:  # noqa: BLE001 - stateless ops without a usable config are reused
        return op
