"""The plan's decisions: which residual operands drop, which groups go, which weights are zeroed.

Internal to `ssl_keras.thin`: `_prepare` (shared by `thinning_plan` and `zero_groups`)
returns the zero list and the per-group decisions; `_restore` brings removed groups back for
`round_to` and non-empty widths.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from ssl_keras._constant_add import ConstantAdd
from ssl_keras._groups_check import validate_groups
from ssl_keras._registry_spec import Kind
from ssl_keras._thin_borders import _border_zeros
from ssl_keras._thin_model import (
    KERNEL_NAMES,
    _check_threshold,
    _graph,
    _is_conv,
    _is_depthwise,
    _is_kernel_layer,
    _is_separable,
    _is_transpose,
    _layers,
    _node_inputs,
    _nodes,
    _read_weights,
    _slice_norm,
    _zeroed_weights,
)
from ssl_keras.registry import lookup, overridden_call, undeclared_weights

# ---------------------------------------------------------------------------------------------
# Depth: residual operands that no longer depend on the input


def _independent_tensors(graph, weights):
    """ids of tensors that do not depend on the model's inputs (given these weights)."""
    independent = set()
    for node in _nodes(graph):
        op = node.operation
        inputs = _node_inputs(node)
        if _kernel_is_the_only_path(op) and op.name in weights:
            kernels = [w for n, w in weights[op.name].items() if n in KERNEL_NAMES]
            if any(not np.any(k) for k in kernels):
                independent.update(id(t) for t in node.outputs)
                continue
        if inputs and all(id(t) in independent for t in inputs):
            independent.update(id(t) for t in node.outputs)
    return independent


def _kernel_is_the_only_path(op) -> bool:
    """A registered conv / Dense-like layer with nothing but its declared weights: its output
    depends on its input only through its kernels, so zero kernels make it a constant. (An
    unregistered layer with a `kernel`, or a LoRA / quantized one, may still read its input.)"""
    if not isinstance(op, keras.layers.Layer) or isinstance(op, keras.Model):
        return False
    found = lookup(op)
    return (found is not None and found[1].kind in (Kind.PRODUCER, Kind.TIED)
            and _is_kernel_layer(op) and undeclared_weights(op, found[1]) is None
            and overridden_call(op, found[0]) is None)


def _dropped_operands(graph, independent):
    """{add layer name: [operand positions]} for Add layers with a constant operand."""
    dropped = {}
    for node in _nodes(graph):
        op = node.operation
        if type(op) is not keras.layers.Add:
            continue
        inputs = _node_inputs(node)
        const = [i for i, t in enumerate(inputs) if id(t) in independent]
        shape = tuple(node.outputs[0].shape)
        if any(tuple(t.shape) != shape for t in inputs):
            continue  # a broadcast operand (1 channel into 4): not a droppable branch
        if const and len(const) < len(inputs):
            if len(op._inbound_nodes) > 1:
                continue  # a shared Add: keep it whole
            dropped[op.name] = const
    return dropped


def _needed_nodes(graph, dropped) -> dict:
    """{id(node): node} of the calls the outputs still need once the dropped operands are gone
    (per call: a layer shared with a dropped branch keeps only its live calls)."""
    producer = {}
    for node in _nodes(graph):
        for t in node.outputs:
            producer[id(t)] = node
    needed, stack, seen = {}, [id(t) for t in graph.outputs], set()
    while stack:
        tid = stack.pop()
        if tid in seen or tid not in producer:
            continue
        seen.add(tid)
        node = producer[tid]
        needed[id(node)] = node
        inputs = _node_inputs(node)
        skip = set(dropped.get(node.operation.name, []))
        stack.extend(id(t) for i, t in enumerate(inputs) if i not in skip)
    return needed


def _alive_layers(graph, dropped):
    """Names of the layers the outputs still need once the dropped operands are gone."""
    alive = {node.operation.name for node in _needed_nodes(graph, dropped).values()}
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


def _strength(g, weights, alive, cache=None, normalized=False):
    """The L2 norm of a group's producer and consumer slices. `normalized`: when a BatchNorm
    follows the producer (a "tied" gamma slice), its gamma stands for the producer kernel,
    whose scale BatchNorm divides out (a strong kernel under a tiny gamma is a weak channel)."""
    roles = ("producer", "consumer")
    if normalized and any(s["role"] == "tied" and s["weight"] == "gamma" and s["layer"] in alive
                          for s in g["slices"]):
        roles = ("tied", "consumer")
    norms = [_slice_norm(weights, s, cache) for s in g["slices"]
             if s["layer"] in alive and s["role"] in roles
             and (s["role"] != "tied" or s["weight"] == "gamma")
             and s["weight"] in weights.get(s["layer"], {})]
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
        elif issubclass(cls, keras.layers.Embedding):
            keys[name] = ("embeddings", ws["embeddings"].ndim - 1)
    return keys


def _restore(groups, removed, decisions, weights, alive, layer_cls, round_to):
    """Restores removed groups so no width is empty and every width is a multiple of round_to
    (an int, or a dict {layer name: int}).

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
            multiple = round_to.get(layer, 1) if isinstance(round_to, dict) else round_to
            if out_keys.get(layer) == (weight, axis) and multiple > 1 and kept % multiple:
                need = max(need, min(multiple - kept % multiple, size - kept))
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
# Layers thin cannot rebuild, and the zero list


def _layer_block_reason(layer):
    """Why thin cannot rebuild `layer` with fewer channels, or None. `removable_groups`
    blocks the groups that reach such a layer with this reason, so that `apply_ssl` does not
    penalise what thin would keep (and thin checks given groups with it again)."""
    cls = type(layer)
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return f"layer {layer.name!r} uses data_format='channels_first' (thin needs channels_last)"
    if _is_conv(cls) and getattr(layer, "groups", 1) > 1:
        return f"grouped convolution {layer.name!r} (groups={layer.groups}) is not thinned"
    known = (isinstance(layer, (keras.layers.Dense, keras.layers.BatchNormalization,
                                keras.layers.PReLU, keras.layers.Embedding,
                                keras.layers.Normalization, ConstantAdd))
             or _is_conv(cls) or _is_transpose(cls) or _is_separable(cls) or _is_depthwise(cls))
    if not known:
        return (f"thin cannot rebuild layer {layer.name!r} of class {cls.__name__} with fewer "
                f"channels (supported: {_THIN_CLASSES}), so the channels that reach it are "
                "kept")
    key = ("units" if isinstance(layer, keras.layers.Dense) else
           "output_dim" if isinstance(layer, keras.layers.Embedding) else
           "filters" if _is_conv(cls) or _is_transpose(cls) or _is_separable(cls) else None)
    if key is not None and key not in layer.get_config():
        return (f"the config of {layer.name!r} (class {cls.__name__}) has no {key!r} to set "
                "the new width in (a subclass that renames it?), so thin cannot rebuild it "
                "with fewer channels")
    return None


_THIN_CLASSES = ("Dense, Conv1D/2D/3D, Conv*Transpose, DepthwiseConv, SeparableConv, "
                 "Embedding, BatchNormalization, Normalization, PReLU, ConstantAdd and their "
                 "subclasses")


def _prepare(model, threshold, groups):
    """Shared by thinning_plan and zero_groups: the zero list and the group decisions.

    Zeroing can take other groups below the threshold (the consumer rows of a removed channel
    are part of the next layer's filters), so the classification is repeated on the zeroed
    weights until it zeroes nothing new: the zero list is a fixed point, and
    `zero_groups(zero_groups(m))` is `zero_groups(m)`, which `thin` of a zeroed model relies
    on. The decisions are the last pass's; "weights" are the model's own (the fingerprint's).
    """
    from ssl_keras.graph import check_layers_in_one_model, removable_groups

    threshold = _check_threshold(threshold)
    graph = _graph(model)
    check_layers_in_one_model(model)  # the copy would untie such a layer's weights
    weights = _read_weights(graph)
    if groups is None:
        groups = removable_groups(model)
    else:
        groups = validate_groups(groups, model)
    return _settle(graph, weights, groups, threshold)


def _settle(graph, weights, groups, threshold):
    """`_prepare`'s fixed point on given weights (the graph and groups already made)."""
    zero, current, seen = [], weights, set()
    for _ in range(len(groups) + 2):  # each pass that goes on zeroes one more group at least
        st = _classify_pass(graph, current, groups, threshold)
        for z in st["zero"]:
            key = (z["layer"], z["weight"], z["axis"],
                   None if z["index"] is None else tuple(z["index"]))
            if key not in seen:
                seen.add(key)
                zero.append(z)
        following = _zeroed_weights(weights, zero)
        if all(np.array_equal(following[n][w], current[n][w])
               for n in current for w in current[n]):
            break
        current = following
    st.update(weights=weights, zero=zero)
    return st


def _classify_pass(graph, weights, groups, threshold):
    """One pass of `_prepare` on `weights`: the zero list and the decisions it implies."""
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
