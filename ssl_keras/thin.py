"""Thinning: rebuild a group-sparse Keras model as a smaller dense model with the same outputs.

Two steps (as Distiller does): `thinning_plan(model)` returns plain, JSON-serialisable data
(what every layer keeps, which constants fold where, why a group was kept), and
`apply_plan(model, plan)` builds the new functional model from it. `thin` is both.

The contract: for every model accepted,
`max |thin(model)(x) - zeroed(x)| <= 1e-5 * (1 + max |zeroed(x)|)` (float32), where
`zeroed = zero_groups(model)` is a copy whose below-threshold groups are exactly zero.

What counts as below threshold (`norm` is the L2 norm of the weight slice):

- depth: a whole kernel (every kernel variable of a Dense / Conv / Depthwise / Separable layer)
  with norm <= threshold is zeroed. A residual `Add` operand that no longer depends on the
  model's input (its kernels are zero) is dropped with its branch and replaced by its constant
  (a `ConstantAdd` layer keeping the Add's name; nothing when the constant is 0).
- a coupled group (docs/groups-format.md) whose every producer slice has norm <= threshold is
  removed: its kernel slices are zeroed, and the constant the channel still carries (bias,
  BatchNorm beta, activation) is folded exactly into every consumer: into the consumer's bias
  when its contribution is the same at every position, otherwise (zero 'same' padding, a
  position-dependent constant) as a constant map added after the consumer (`ConstantAdd`).
- a coupled group whose every consumer slice has norm <= threshold (the channel is unused) is
  removed: its consumer slices are zeroed.
- borders (the `GroupLasso(borders=...)` bands): the outer `d` rows (columns, ... along any
  spatial axis) of one side of a Conv1D/2D/3D kernel, across all channels and filters, with
  norm <= threshold (after the groups above are zeroed) are zeroed; at least one row stays.

Blocked groups (see the group's "blocked" reason) are kept, with their below-threshold slices
zeroed all the same; a constant channel whose value differs between inputs at a consumer (a
graph the analysis got wrong) or that a shared layer reads is kept too, with the reason.

Kernel shape: border rows / columns (any spatial axis) of a Conv1D/2D/3D kernel that are zero
for every kept filter and channel are cropped, and the padding is made explicit
(ZeroPadding / Cropping before a 'valid' conv) so that every output reads the same inputs.
Other zero positions inside a kernel (shape sparsity) stay as zeros in the dense kernel.

`round_to=N` restores the strongest removed groups until every Dense / Conv width is a
multiple of N; restored channels keep their zero or constant weights (nothing is folded for
them), so outputs stay exact.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
_TOL = 1e-6  # relative tolerance of "the same value" checks (the contract allows 1e-5)


@keras.saving.register_keras_serializable(package="ssl_keras")
class ConstantAdd(keras.layers.Layer):
    """Adds a stored constant (a per-channel vector or a full map) to its input.

    Used by `thin` where a removed channel's constant cannot go into a bias: a residual branch
    replaced by its constant, or a constant map from zero padding at a conv's borders. It
    converts to a single TFLite ADD with a constant operand.

    Args:
        shape: the constant's shape, broadcast against the input without its batch axis:
            `(channels,)` or `(..., channels)`.
        **kwargs: base Layer arguments (name, dtype, ...).

    Example:
    >>> layer = ConstantAdd((3,))
    >>> layer.build((None, 3))
    >>> layer.set_weights([np.array([1.0, 2.0, 3.0])])
    """

    def __init__(self, shape, **kwargs):
        super().__init__(**kwargs)
        shape = tuple(int(s) for s in shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(
                f"`shape` must be a non-empty tuple of positive sizes. Received: shape={shape}"
            )
        self.shape = shape

    def build(self, input_shape):
        self.value = self.add_weight(name="value", shape=self.shape, initializer="zeros",
                                     trainable=False)

    def call(self, inputs):
        return inputs + ops.cast(self.value, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shape": list(self.shape)}


# ---------------------------------------------------------------------------------------------
# Validation and model access


def _check_threshold(threshold):
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(threshold, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(
            "`threshold` must be a finite number >= 0 (group norms at most `threshold` are "
            f"treated as zero). Received: threshold={threshold!r}"
        )
    return value


def _check_round_to(round_to):
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ValueError(
            "`round_to` must be an integer >= 1 (every thinned width is kept a multiple of it). "
            f"Received: round_to={round_to!r}"
        )
    return int(round_to)


def _plain(model):
    """A model from `apply_ssl` (an SSLModel, or StructuredSparsity wrappers) as plain layers.

    thin reads and rebuilds plain layers only: such a model is stripped first (a copy, with
    the same weights and layer names); any other model is returned as it is.
    """
    from ssl_keras.wrap import SSLModel, StructuredSparsity, strip_ssl

    if isinstance(model, SSLModel) or (
            isinstance(model, keras.Model)
            and any(isinstance(layer, StructuredSparsity) for layer in model.layers)):
        return strip_ssl(model)
    return model


def _graph(model):
    """The functional graph of `model` (a Sequential's inner functional model)."""
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(
                "thin needs a built Sequential model with a known input shape (start it with "
                f"keras.Input(...)). Received: model={model.name!r}, not built."
            )
        return graph
    if not isinstance(model, Functional):
        raise ValueError(
            "thin supports functional and Sequential Keras models only: a subclassed model's "
            "call() cannot be analysed or rebuilt. Rebuild it with the functional API. "
            f"Received: model={model.name!r} of class {type(model).__name__}"
        )
    return model


def _layers(graph):
    return [op for op in graph.operations if isinstance(op, keras.layers.Layer)]


def _read_weights(graph):
    """{layer: {weight short name: float array}}; raises on NaN / inf."""
    weights = {}
    for layer in _layers(graph):
        if isinstance(layer, keras.Model):
            continue
        arrays = {}
        for var in layer.weights:
            value = np.asarray(ops.convert_to_numpy(var))
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(
                    f"Layer {layer.name!r} has NaN or inf values in its weight {var.name!r}: "
                    "thin needs finite weights. Received: "
                    f"{int(np.sum(~np.isfinite(value)))} non-finite values of {value.size}."
                )
            arrays[var.name] = value
        if arrays:
            weights[layer.name] = arrays
    return weights


def _slice_norm(weights, s, cache=None):
    """The L2 norm of a group slice; `cache` (a dict for this `weights`) keeps the per-index
    sums of squares of every (layer, weight, axis) already seen."""
    w = weights.get(s["layer"], {}).get(s["weight"])
    if w is None:
        return 0.0
    if cache is None:
        return float(np.linalg.norm(np.take(w, s["index"], axis=s["axis"]).astype(np.float64)))
    axis = s["axis"] % w.ndim
    key = (s["layer"], s["weight"], axis)
    sums = cache.get(key)
    if sums is None:
        sums = np.sum(np.square(w, dtype=np.float64),
                      axis=tuple(a for a in range(w.ndim) if a != axis))
        cache[key] = sums
    return float(np.sqrt(np.sum(sums[np.asarray(s["index"], dtype=int)])))


def _zeroed_weights(weights, zero):
    """A copy of `weights` with the `zero` entries set to 0 (each array copied once)."""
    out = {name: dict(ws) for name, ws in weights.items()}
    copied = set()
    for z in zero:
        key = (z["layer"], z["weight"])
        if key not in copied:
            out[key[0]][key[1]] = out[key[0]][key[1]].copy()
            copied.add(key)
        w = out[key[0]][key[1]]
        if z.get("axis") is None:
            w[...] = 0
        else:
            idx = [slice(None)] * w.ndim
            idx[z["axis"]] = np.asarray(z["index"], dtype=int)
            w[tuple(idx)] = 0
    return out


def _copy_with_weights(model, weights):
    """A clone of `model` carrying `weights` ({layer: {name: array}})."""
    clone = keras.models.clone_model(model)
    for layer in clone.layers:
        if layer.name in weights:
            layer.set_weights([weights[layer.name][v.name] for v in layer.weights])
        elif layer.weights:
            src = model.get_layer(layer.name)
            layer.set_weights(src.get_weights())
    return clone


def _is_kernel_layer(layer):
    return any(v.name in KERNEL_NAMES for v in layer.weights)


def _nodes(graph):
    """The graph's non-input nodes in execution order."""
    out = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                out.append(node)
    return out


def _node_inputs(node):
    return list(node.input_tensors)


# ---------------------------------------------------------------------------------------------
# Depth: residual operands that no longer depend on the input


def _independent_tensors(graph, weights):
    """ids of tensors that do not depend on the model's inputs (given these weights)."""
    independent = set()
    for node in _nodes(graph):
        op = node.operation
        inputs = _node_inputs(node)
        if isinstance(op, keras.layers.Layer) and _is_kernel_layer(op) and op.name in weights:
            kernels = [w for n, w in weights[op.name].items() if n in KERNEL_NAMES]
            if any(not np.any(k) for k in kernels) and not isinstance(op, keras.Model):
                independent.update(id(t) for t in node.outputs)
                continue
        if inputs and all(id(t) in independent for t in inputs):
            independent.update(id(t) for t in node.outputs)
    return independent


def _dropped_operands(graph, independent):
    """{add layer name: [operand positions]} for Add layers with a constant operand."""
    dropped = {}
    for node in _nodes(graph):
        op = node.operation
        if type(op) is not keras.layers.Add:
            continue
        inputs = _node_inputs(node)
        const = [i for i, t in enumerate(inputs) if id(t) in independent]
        if const and len(const) < len(inputs):
            if len(op._inbound_nodes) > 1:
                continue  # a shared Add: keep it whole
            dropped[op.name] = const
    return dropped


def _alive_layers(graph, dropped):
    """Names of the layers the outputs still need once the dropped operands are gone."""
    producer = {}
    for node in _nodes(graph):
        for t in node.outputs:
            producer[id(t)] = node
    alive, stack, seen = set(), [id(t) for t in graph.outputs], set()
    while stack:
        tid = stack.pop()
        if tid in seen or tid not in producer:
            continue
        seen.add(tid)
        node = producer[tid]
        alive.add(node.operation.name)
        inputs = _node_inputs(node)
        skip = set(dropped.get(node.operation.name, []))
        stack.extend(id(t) for i, t in enumerate(inputs) if i not in skip)
    for layer in _layers(graph):
        if isinstance(layer, keras.layers.InputLayer):
            alive.add(layer.name)
    return alive


# ---------------------------------------------------------------------------------------------
# Group decisions


def _classify(groups, weights, alive, threshold, cache):
    """Per group: status ("constant", "unused", "kept", "dead") and a reason."""
    decisions = {}
    for g in groups:
        slices = [s for s in g["slices"] if s["layer"] in alive]
        if "/" in g.get("source", "") or any("/" in s["layer"] for s in g["slices"]):
            decisions[g["id"]] = ("kept", "inside a nested model (thin does not rebuild nested "
                                          "models)")
            continue
        producers = [s for s in slices if s["role"] == "producer"]
        consumers = [s for s in slices if s["role"] == "consumer"]
        if not producers:
            decisions[g["id"]] = ("dead", "every producer is in a removed residual branch")
            continue
        constant = all(_slice_norm(weights, s, cache) <= threshold for s in producers)
        unused = all(_slice_norm(weights, s, cache) <= threshold for s in consumers)
        if g.get("blocked"):
            decisions[g["id"]] = ("kept", f"blocked: {g['blocked']}")
        elif constant:
            decisions[g["id"]] = ("constant", "every producer slice has norm <= threshold")
        elif unused:
            decisions[g["id"]] = ("unused", "every consumer slice has norm <= threshold")
        else:
            decisions[g["id"]] = ("kept", "above threshold")
    return decisions


def _strength(g, weights, alive, cache=None):
    norms = [_slice_norm(weights, s, cache) for s in g["slices"]
             if s["layer"] in alive and s["role"] in ("producer", "consumer")]
    return float(np.sqrt(np.sum(np.square(norms)))) if norms else 0.0


def _axis(weights, s):
    return s["axis"] % weights[s["layer"]][s["weight"]].ndim


def _removed_indices(groups, removed, weights, alive):
    """{(layer, weight, axis): set of indices} removed by the groups in `removed`."""
    out = {}
    for g in groups:
        if g["id"] not in removed:
            continue
        for s in g["slices"]:
            if s["layer"] not in alive or s["weight"] not in weights.get(s["layer"], {}):
                continue
            key = (s["layer"], s["weight"], _axis(weights, s))
            out.setdefault(key, set()).update(int(i) for i in s["index"])
    return out


def _output_axis_keys(layer_cls_by_name, weights):
    """(layer, weight, axis) of every output-width axis: what round_to counts."""
    keys = {}
    for name, cls in layer_cls_by_name.items():
        if name not in weights:
            continue
        ws = weights[name]
        if issubclass(cls, keras.layers.Dense) or _is_conv(cls):
            keys[name] = ("kernel", ws["kernel"].ndim - 1)
        elif _is_transpose(cls):
            keys[name] = ("kernel", ws["kernel"].ndim - 2)
        elif _is_separable(cls):
            keys[name] = ("pointwise_kernel", ws["pointwise_kernel"].ndim - 1)
    return keys


@functools.cache
def _is_conv(cls):
    from keras.src.layers.convolutional.base_conv import BaseConv

    return issubclass(cls, BaseConv) and not _is_transpose(cls)


@functools.cache
def _is_transpose(cls):
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose

    return issubclass(cls, BaseConvTranspose)


@functools.cache
def _is_separable(cls):
    from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv

    return issubclass(cls, BaseSeparableConv)


@functools.cache
def _is_depthwise(cls):
    from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv

    return issubclass(cls, BaseDepthwiseConv)


def _restore(groups, removed, decisions, weights, alive, layer_cls, round_to):
    """Restores removed groups so no width is empty and every width is a multiple of round_to.

    The strongest removed groups (largest norm of their slices) are restored first; a
    restored channel is kept with its (zero or constant) weights, so outputs stay exact.
    Channels of one (layer, weight, axis) belong to one group each, so counts are kept
    incrementally.
    """
    out_keys = _output_axis_keys(layer_cls, weights)
    key_groups, group_keys, count = {}, {}, {}
    for g in groups:
        if g["id"] not in removed:
            continue
        per_key = {}
        for s in g["slices"]:
            if s["layer"] in alive and s["weight"] in weights.get(s["layer"], {}):
                key = (s["layer"], s["weight"], _axis(weights, s))
                per_key.setdefault(key, set()).update(s["index"])
        group_keys[g["id"]] = {k: len(v) for k, v in per_key.items()}
        for k, n in group_keys[g["id"]].items():
            key_groups.setdefault(k, []).append(g["id"])
            count[k] = count.get(k, 0) + n
    strength, cache = {}, {}
    by_id = {g["id"]: g for g in groups}

    def strongest(key):
        cands = [gid for gid in key_groups[key] if gid in removed]
        for gid in cands:
            if gid not in strength:
                strength[gid] = _strength(by_id[gid], weights, alive, cache)
        return sorted(cands, key=lambda gid: (-strength[gid], gid))

    changed = True
    while changed:
        changed = False
        for key in sorted(key_groups):
            layer, weight, axis = key
            size = weights[layer][weight].shape[axis]
            kept = size - count[key]
            need = 1 if kept == 0 else 0
            if out_keys.get(layer) == (weight, axis) and round_to > 1 and kept % round_to:
                need = max(need, min(round_to - kept % round_to, size - kept))
            if not need:
                continue
            reason = "round_to" if kept else "keeps the layer non-empty"
            for gid in strongest(key):
                if size - count[key] - kept >= need:
                    break
                removed.discard(gid)
                decisions[gid] = ("kept", f"restored: {reason} ({layer}.{weight})")
                for k, n in group_keys[gid].items():
                    count[k] -= n
                changed = True


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
# Constants read off the zeroed model


def _layer_block_reason(layer):
    cls = type(layer)
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return f"layer {layer.name!r} uses data_format='channels_first' (thin needs channels_last)"
    if _is_conv(cls) and getattr(layer, "groups", 1) > 1:
        return f"grouped convolution {layer.name!r} (groups={layer.groups}) is not thinned"
    known = (isinstance(layer, (keras.layers.Dense, keras.layers.BatchNormalization))
             or _is_conv(cls) or _is_transpose(cls) or _is_separable(cls) or _is_depthwise(cls))
    if not known:
        return (f"thin cannot rebuild layer {layer.name!r} of class {cls.__name__} with fewer "
                "channels (supported: Dense, Conv1D/2D/3D, Conv*Transpose, DepthwiseConv, "
                "SeparableConv, BatchNormalization)")
    return None


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
        arrays.append(rng.normal(size=(2, *t.shape[1:])).astype(np.float32) * 3)
    return arrays


def _run(graph, zw, tensors, probes):
    """The values of `tensors` (of `graph`) on `probes`, computed with the weights `zw`."""
    if not tensors:
        return []
    sub = keras.Model(graph.inputs, tensors)
    values = {id(v): zw[layer.name][v.name] for layer in sub.layers for v in layer.weights
              if layer.name in zw}
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
    clone.set_weights([weights[layer.name][v.name] for v in clone.weights])
    return np.asarray(ops.convert_to_numpy(clone(x)))


def _fold(layer, weights, value, removed_in, kept_out):
    """The contribution of the removed constant input channels to `layer`'s output.

    Returns ("bias", vector) when it is the same at every position, else ("map", array).
    """
    x = np.zeros((1, *value.shape[1:]), np.float32)
    x[..., removed_in] = value[:1][..., removed_in]
    m = _linear_part(layer, weights, x)[0][..., kept_out]
    flat = m.reshape(-1, m.shape[-1])
    if _same(flat, axis=0):
        return "bias", flat[0]
    return "map", m


# ---------------------------------------------------------------------------------------------
# The plan


def _prepare(model, threshold, groups):
    """Shared by thinning_plan and zero_groups: the zero list and the group decisions."""
    threshold = _check_threshold(threshold)
    graph = _graph(model)
    weights = _read_weights(graph)
    if groups is None:
        from ssl_keras.graph import removable_groups

        groups = removable_groups(model)
    groups = list(groups)
    zero = []
    for layer in _layers(graph):  # depth: whole kernels below threshold
        ws = weights.get(layer.name, {})
        kernels = [n for n in ws if n in KERNEL_NAMES]
        if kernels and not isinstance(layer, keras.Model):
            norm = math.sqrt(sum(float(np.sum(np.square(ws[n], dtype=np.float64)))
                                 for n in kernels))
            if norm <= threshold:
                zero.extend({"layer": layer.name, "weight": n, "axis": None, "index": None,
                             "why": "depth"} for n in kernels)
    w1 = _zeroed_weights(weights, zero)
    independent = _independent_tensors(graph, w1)
    dropped = _dropped_operands(graph, independent)
    alive = _alive_layers(graph, dropped)
    by_name = {layer.name: layer for layer in _layers(graph)}
    cache, block = {}, {}
    decisions = _classify(groups, w1, alive, threshold, cache)
    for g in groups:  # a layer thin cannot rebuild blocks only the groups that touch it
        if decisions[g["id"]][0] not in ("constant", "unused"):
            continue
        for s in g["slices"]:
            if s["layer"] not in alive:
                continue
            if s["layer"] not in block:
                block[s["layer"]] = _layer_block_reason(by_name[s["layer"]])
            reason = block[s["layer"]]
            if reason:
                decisions[g["id"]] = ("kept", f"blocked: {reason}")
                break
    for g in groups:
        status = decisions[g["id"]][0]
        if status == "dead":
            continue
        roles = ("consumer",) if status == "unused" else ("producer",)
        for s in g["slices"]:
            if status in ("constant", "unused") and s["role"] in roles and s["layer"] in alive:
                zero.append({"layer": s["layer"], "weight": s["weight"], "axis": s["axis"],
                             "index": list(s["index"]), "why": g["id"]})
        if status == "kept":  # blocked or above threshold: zero its below-threshold producers
            producers = [s for s in g["slices"] if s["role"] == "producer" and
                         s["layer"] in alive]
            if producers and all(_slice_norm(w1, s, cache) <= threshold for s in producers):
                zero.extend({"layer": s["layer"], "weight": s["weight"], "axis": s["axis"],
                             "index": list(s["index"]), "why": g["id"]} for s in producers)
    zero = [z for z in zero if z["layer"] in weights and z["weight"] in weights[z["layer"]]]
    w2 = _zeroed_weights(weights, zero)
    for layer in _layers(graph):  # borders: outer rows / columns of conv kernels
        kernel = w2.get(layer.name, {}).get("kernel")
        if layer.name in alive and _is_conv(type(layer)) and kernel is not None \
                and kernel.any():
            zero.extend(_border_zeros(layer.name, kernel, threshold))
    return dict(threshold=threshold, graph=graph, weights=weights, groups=groups, zero=zero,
                dropped=dropped, alive=alive, decisions=decisions, by_name=by_name)


def _border_zeros(name, kernel, threshold) -> list[dict]:
    """Zero entries for the outer rows / columns (any spatial axis) of a conv kernel whose
    nested border band (the outer d rows of one side, all channels and filters) has norm <=
    threshold; at least one row of every axis stays."""
    out, kernel = [], kernel.copy()
    for a in range(kernel.ndim - 2):
        rows = np.sum(np.square(kernel, dtype=np.float64),
                      axis=tuple(b for b in range(kernel.ndim) if b != a))
        k = len(rows)
        top = min(int(np.sum(np.sqrt(np.cumsum(rows)) <= threshold)), k - 1)
        bottom = min(int(np.sum(np.sqrt(np.cumsum(rows[::-1])) <= threshold)), k - 1 - top)
        for index in (list(range(top)), list(range(k - bottom, k))):
            if index:
                out.append({"layer": name, "weight": "kernel", "axis": a, "index": index,
                            "why": "borders"})
                where = [slice(None)] * kernel.ndim
                where[a] = index
                kernel[tuple(where)] = 0
    return out


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


def _same_pads(size, k, stride, dilation):
    """(before, after) zero padding of TensorFlow's 'same' along one axis."""
    effective = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _crop_kernel(layer, kernel, keep):
    """Crops zero border rows / columns of a conv kernel: (keep, config, before) or None.

    A border slice of the kernel that is zero for every kept filter and channel is removed;
    the padding becomes explicit (ZeroPadding / Cropping before the conv, then 'valid') so that
    every output position still reads the same inputs. Zero positions inside the kernel stay.
    """
    cls = type(layer)
    if not _is_conv(cls) or len(layer._inbound_nodes) != 1:
        return None
    shape = layer._inbound_nodes[0].input_tensors[0].shape
    rank = kernel.ndim - 2
    if layer.padding not in ("valid", "same", "causal") or any(d is None for d in shape[1:-1]):
        return None
    for axis, idx in keep.get("kernel", {}).items():  # the kept channels and filters only
        kernel = np.take(kernel, idx, axis=int(axis))
    if not np.any(kernel):
        return None
    spatial, pads, crops, new_k = {}, [], [], []
    for a in range(rank):
        nz = np.flatnonzero(np.any(kernel != 0, axis=tuple(i for i in range(kernel.ndim)
                                                             if i != a)))
        k, d, stride = kernel.shape[a], layer.dilation_rate[a], layer.strides[a]
        top, bottom = int(nz[0]), int(k - 1 - nz[-1])
        if layer.padding == "same":
            pt, pb = _same_pads(shape[1 + a], k, stride, d)
        elif layer.padding == "causal":
            pt, pb = (k - 1) * d, 0
        else:
            pt, pb = 0, 0
        pt, pb = pt - top * d, pb - bottom * d
        pads.append((max(pt, 0), max(pb, 0)))
        crops.append((max(-pt, 0), max(-pb, 0)))
        new_k.append(k - top - bottom)
        if top or bottom:
            spatial[str(a)] = list(range(top, k - bottom))
    if not spatial:
        return None
    before = []
    suffix = f"{rank}D"
    if any(p != (0, 0) for p in pads):
        before.append({"class": f"ZeroPadding{suffix}", "name": f"{layer.name}_pad",
                       "padding": pads[0] if rank == 1 else pads})
    if any(c != (0, 0) for c in crops):
        before.append({"class": f"Cropping{suffix}", "name": f"{layer.name}_crop",
                       "cropping": crops[0] if rank == 1 else crops})
    return spatial, {"kernel_size": new_k, "padding": "valid"}, before


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
    return {}


def _constant_spec(name, value):
    value = np.asarray(value, np.float32)
    return {"class": "ConstantAdd", "name": name, "shape": list(value.shape),
            "value": value.tolist()}


def thinning_plan(model: keras.Model, threshold: float = 1e-4, round_to: int = 1,
                  groups: list[dict] | None = None, crop_kernels: bool = True) -> dict:
    """Returns what `thin` will do to `model`, as plain JSON-serialisable data.

    The plan (all names are layer names of `model`):

        {"threshold": 1e-4, "round_to": 1,
         "zero": [{"layer", "weight", "axis", "index", "why"}],   # the zeroed model
         "groups": {id: {"status": "removed" | "kept" | "dead", "why": "..."}},
         "dropped": {add_layer: [operand positions]},            # residual branches removed
         "dead": [layers no longer needed],
         "layers": {layer: {"keep": {weight: {axis: [kept indices]}},
                            "config": {"filters": 12, "use_bias": true, ...},
                            "bias_add": [...] | None,           # folded constants
                            "before": [ZeroPadding / Cropping specs of a cropped kernel],
                            "after": [layer specs added after it (ConstantAdd, Activation)]}},
         "adds": {add_layer: ConstantAdd spec | None}}

    Args:
        model: a functional or Sequential Keras model with static input shapes; a model
            from `apply_ssl` is stripped first (`strip_ssl`).
        threshold: a group is removed when every producer slice (or every consumer slice) has
            L2 norm <= threshold; a whole kernel with norm <= threshold is zeroed (depth).
        round_to: keep every thinned width a multiple of this (restoring the strongest removed
            channels; their weights are zero or constant, so outputs stay exact).
        groups: the coupled groups (docs/groups-format.md); `removable_groups(model)` when None.
        crop_kernels: crop the border rows / columns of a Conv kernel that are zero for every
            kept filter and channel (with explicit ZeroPadding / Cropping before the conv, so
            that the output is unchanged). Zero positions inside a kernel stay zeros.

    Returns:
        The plan, a dict of plain data (`json.dumps` works on it).

    Example:
    >>> plan = thinning_plan(model, threshold=1e-4)
    >>> plan["layers"]["conv1"]["config"]
    {'filters': 12}
    """
    round_to = _check_round_to(round_to)
    model = _plain(model)
    st = _prepare(model, threshold, groups)
    graph, groups, decisions = st["graph"], st["groups"], st["decisions"]
    alive, dropped, by_name = st["alive"], st["dropped"], st["by_name"]
    zw = _zeroed_weights(st["weights"], st["zero"])
    probes = _probe_inputs(graph)
    layer_cls = {n: type(layer) for n, layer in by_name.items() if n in alive}
    removed = {gid for gid, (s, _) in decisions.items() if s in ("constant", "unused")}
    for _ in range(len(groups) + 1):
        _restore(groups, removed, decisions, zw, alive, layer_cls, round_to)
        const_in = _const_inputs(groups, removed, decisions, alive, by_name)
        names = sorted(const_in)
        values = dict(zip(names, _run(graph, zw, [_input_tensor(graph, n)[0] for n in names],
                                      probes), strict=True))
        bad = {(n, i) for n in names for i in (
            const_in[n] if len(by_name[n]._inbound_nodes) > 1  # a shared consumer: keep
            else _not_constant(values[n], const_in[n]))}
        if not bad:
            break
        for g in groups:
            if g["id"] not in removed or decisions[g["id"]][0] != "constant":
                continue
            for s in g["slices"]:
                if s["layer"] not in alive or not _is_input_slice(s, by_name):
                    continue
                if any((s["layer"], i) in bad for i in s["index"]):
                    removed.discard(g["id"])
                    why = ("is read by the shared layer" if len(
                        by_name[s["layer"]]._inbound_nodes) > 1 else
                        "depends on the input at the input of")
                    decisions[g["id"]] = ("kept", f"its constant channel {why} {s['layer']!r}: "
                                                  "not folded")
                    break
    rem = _removed_indices(groups, removed, zw, alive)
    channels = _propagate_channels(graph, rem, dropped, alive)
    layers = {}
    for name in sorted(alive):
        layer = by_name.get(name)
        if layer is None or name not in zw:
            continue
        keep = {}
        for (ln, w, ax), idx in rem.items():
            if ln == name:
                keep.setdefault(w, {})[str(ax)] = _keep_list(zw[ln][w].shape[ax], idx)
        entry = {"keep": keep, "config": _width_config(layer, keep), "bias_add": None,
                 "after": []}
        if name in const_in:
            out_keep = channels[id(layer._inbound_nodes[0].outputs[0])]
            kind, value = _fold(layer, zw, values[name], const_in[name], out_keep)
            if kind == "bias":
                entry["bias_add"] = np.asarray(value, np.float32).tolist()
                if not layer.use_bias:
                    entry["config"]["use_bias"] = True
            else:
                entry["after"].append(_constant_spec(f"{name}_constant", value))
                activation = layer.get_config().get("activation")
                if activation not in (None, "linear"):
                    entry["config"]["activation"] = "linear"
                    entry["after"].append({"class": "Activation", "name": f"{name}_activation",
                                           "activation": activation})
        crop = _crop_kernel(layer, zw[name].get("kernel"), keep) if crop_kernels else None
        if crop is not None:
            keep.setdefault("kernel", {}).update(crop[0])
            entry["config"].update(crop[1])
            entry["before"] = crop[2]
        if keep or entry["bias_add"] is not None or entry["after"] or entry["config"]:
            layers[name] = entry
    adds = {}
    for name, positions in sorted(dropped.items()):
        node = by_name[name]._inbound_nodes[0]
        ins = _input_tensor(graph, name)
        vals = _run(graph, zw, [ins[i] for i in positions], probes)
        total = np.sum([v.astype(np.float64) for v in vals], axis=0)
        if not _same(total, axis=0):
            raise RuntimeError(f"Internal error: the dropped operands of {name!r} depend on the "
                               "input. Please report this model.")
        kept = channels[id(node.outputs[0])]
        value = total[0][..., kept].astype(np.float32)
        flat = value.reshape(-1, value.shape[-1])
        if _same(flat, axis=0):
            value = flat[0]
        adds[name] = _constant_spec(name, value) if np.any(value) else None
    return {
        "threshold": st["threshold"], "round_to": round_to,
        "zero": st["zero"],
        "groups": {gid: {"status": "removed" if s in ("constant", "unused") else s,
                         "why": why} for gid, (s, why) in decisions.items()},
        "dropped": {k: list(v) for k, v in dropped.items()},
        "dead": sorted(n for n in by_name if n not in alive),
        "layers": layers,
        "adds": adds,
    }


# ---------------------------------------------------------------------------------------------
# Applying a plan


def _new_weights(layer, new_layer, arrays, entry):
    """The sliced (and folded) weights of `new_layer`, in its variable order."""
    keep = entry.get("keep", {}) if entry else {}
    values = []
    for var in new_layer.weights:
        if var.name in arrays:
            w = arrays[var.name]
            for axis, idx in keep.get(var.name, {}).items():
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


_PAD_CROP = {f"{kind}{r}D" for kind in ("ZeroPadding", "Cropping") for r in (1, 2, 3)}


def _extra_layer(spec):
    if spec["class"] == "ConstantAdd":
        layer = ConstantAdd(spec["shape"], name=spec["name"])
        layer.build(None)
        layer.set_weights([np.asarray(spec["value"], np.float32)])
        return layer
    if spec["class"] == "Activation":
        return keras.layers.Activation(spec["activation"], name=spec["name"])
    if spec["class"] in _PAD_CROP:
        arg = "padding" if spec["class"].startswith("Zero") else "cropping"
        value = spec[arg]
        value = tuple(value) if np.ndim(value) == 1 else tuple(tuple(v) for v in value)
        return getattr(keras.layers, spec["class"])(value, name=spec["name"])
    raise ValueError(f"Unknown layer spec in the plan. Expected class ConstantAdd, Activation, "
                     "ZeroPadding1D/2D/3D or Cropping1D/2D/3D. "
                     f"Received: class={spec['class']!r}")


def _clone_op(op):
    try:
        return type(op).from_config(op.get_config())
    except Exception:  # noqa: BLE001 - stateless ops without a usable config are reused
        return op


def apply_plan(model: keras.Model, plan: dict) -> keras.Model:
    """Builds the thinned model described by `plan` (see `thinning_plan`).

    The new model is functional, keeps every layer name of `model` (removed residual branches
    are gone; layers a plan adds are named `<layer>_constant` / `<layer>_activation`) and
    carries the zeroed model's weights, sliced. `model` is not modified.

    Args:
        model: the model the plan was made for.
        plan: the dict returned by `thinning_plan(model, ...)` (or its JSON round trip).

    Returns:
        A new keras.Model.

    Example:
    >>> small = apply_plan(model, thinning_plan(model))
    """
    graph = _graph(_plain(model))
    arrays = _zeroed_weights(_read_weights(graph), plan["zero"])
    dead, dropped = set(plan["dead"]), plan["dropped"]
    layer_plans, adds = plan["layers"], plan["adds"]
    tensors, new_inputs = {}, []
    for t in graph.inputs:
        layer = t._keras_history.operation
        x = keras.Input(batch_shape=t.shape, dtype=t.dtype, name=layer.name)
        tensors[id(t)] = x
        new_inputs.append(x)
    clones = {}
    for node in _nodes(graph):
        op = node.operation
        if op.name in dead:
            continue
        if op.name in dropped:
            skip = set(dropped[op.name])
            rest = [tensors[id(t)] for i, t in enumerate(node.input_tensors) if i not in skip]
            x = rest[0] if len(rest) == 1 else keras.layers.Add(name=op.name)(rest)
            spec = adds.get(op.name)
            if spec is not None:
                if len(rest) > 1:
                    spec = {**spec, "name": f"{op.name}_constant"}
                x = _extra_layer(spec)(x)
            tensors[id(node.outputs[0])] = x
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        entry = layer_plans.get(op.name)
        if entry and entry.get("before"):
            x = args[0]
            for spec in entry["before"]:
                x = _extra_layer(spec)(x)
            args = (x, *args[1:])
        if not isinstance(op, keras.layers.Layer):
            outputs = _clone_op(op)(*args, **kwargs)
        elif op.name in clones:
            outputs = clones[op.name](*args, **kwargs)
        else:
            if isinstance(op, keras.Model):
                new = keras.models.clone_model(op)
            else:
                cfg = _cheap_init(op.get_config())
                cfg.update((entry or {}).get("config", {}))
                new = type(op).from_config(cfg)
            outputs = new(*args, **kwargs)
            if isinstance(op, keras.Model):
                new.set_weights(op.get_weights())
            elif new.weights:
                new.set_weights(_new_weights(op, new, arrays.get(op.name, {}), entry))
            clones[op.name] = new
        if entry and entry.get("after"):
            for spec in entry["after"]:
                outputs = _extra_layer(spec)(outputs)
        flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for t, y in zip(node.outputs, flat, strict=True):
            tensors[id(t)] = y
    outputs = [tensors[id(t)] for t in graph.outputs]
    from keras import tree

    outputs = tree.pack_sequence_as(graph._outputs_struct, outputs)
    inputs = new_inputs[0] if len(new_inputs) == 1 else new_inputs
    return keras.Model(inputs, outputs, name=model.name)


def thin(model: keras.Model, threshold: float = 1e-4, round_to: int = 1,
         groups: list[dict] | None = None, crop_kernels: bool = True) -> keras.Model:
    """Returns a smaller dense copy of `model` without its below-threshold groups.

    `thin(model)` computes `thinning_plan(model, threshold, round_to, groups)` and applies it.
    Its outputs match `zero_groups(model, threshold)` to 1e-5 (relative) in float32.

    Args:
        model: a functional or Sequential Keras model with static input shapes; a model
            from `apply_ssl` is stripped first (`strip_ssl`).
        threshold: the group norm at or below which a group counts as zero (>= 0).
        round_to: keep every thinned width a multiple of this (e.g. 8 for XNNPACK).
        groups: the coupled groups; `removable_groups(model)` when None.
        crop_kernels: crop zero border rows / columns of Conv kernels (see `thinning_plan`).

    Returns:
        A new keras.Model made of plain Keras layers (plus `ConstantAdd` where a constant
        cannot go into a bias), with the original layer names.

    Example:
    >>> small = ssl_keras.thin(model, threshold=1e-4)
    >>> ssl_keras.summarize(model, small)
    """
    model = _plain(model)
    return apply_plan(model, thinning_plan(model, threshold, round_to, groups, crop_kernels))


def zero_groups(model: keras.Model, threshold: float = 1e-4,
                groups: list[dict] | None = None) -> keras.Model:
    """Returns a copy of `model` whose below-threshold groups are set exactly to zero.

    This is the reference `thin` is equivalent to: the producer slices of groups whose every
    producer slice has norm <= threshold, the consumer slices of groups whose every consumer
    slice has norm <= threshold, and whole kernels with norm <= threshold, set to 0. Biases and
    BatchNorm parameters are left as they are.

    Args:
        model: a functional or Sequential Keras model.
        threshold: as in `thin`.
        groups: the coupled groups; `removable_groups(model)` when None.

    Returns:
        A new model of the same architecture (`model` is not modified); a model from
        `apply_ssl` comes back stripped (plain layers, see `strip_ssl`).

    Example:
    >>> zeroed = ssl_keras.zero_groups(model, 1e-4)
    """
    model = _plain(model)
    st = _prepare(model, threshold, groups)
    return _copy_with_weights(model, _zeroed_weights(st["weights"], st["zero"]))
