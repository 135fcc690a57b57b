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
graph the analysis got wrong), that is NaN or inf on every draw of probe inputs (a masked
average over all-padding ids), or that a shared layer reads is kept too, with the reason.

Kernel shape: border rows / columns (any spatial axis) of a Conv1D/2D/3D kernel that are zero
for every kept filter and channel are cropped, and the padding is made explicit
(ZeroPadding / Cropping before a 'valid' conv) so that every output reads the same inputs.
Other zero positions inside a kernel (shape sparsity) stay as zeros in the dense kernel.

`round_to=N` restores the strongest removed groups until the width of every Dense / Conv layer
that loses channels is a multiple of N (a layer that loses none keeps its width); restored
channels keep their zero or constant weights (nothing is folded for them), so outputs stay
exact.
"""

from __future__ import annotations

import contextlib
import hashlib

import keras
import numpy as np

from ssl_keras._constant_add import ConstantAdd as ConstantAdd  # public, re-exported
from ssl_keras._thin_borders import _crop_kernel
from ssl_keras._thin_constants import (
    _const_inputs,
    _constant_spec,
    _fold,
    _input_tensor,
    _is_input_slice,
    _not_constant,
    _probe_inputs,
    _run,
    _same,
)
from ssl_keras._thin_model import KERNEL_NAMES as KERNEL_NAMES  # public, re-exported
from ssl_keras._thin_model import (
    _check_round_to,
    _copy_with_weights,
    _graph,
    _layers,
    _nodes,
    _plain,
    _read_weights,
    _zeroed_weights,
    copy_layer,
    layer_config,
    own_layers_scope,
    rebuilds_own_layers,
    refresh_states,
)
from ssl_keras._thin_plan import (
    _needed_nodes,
    _prepare,
    _removed_indices,
    _restore,
    _settle,
    _strength,
)
from ssl_keras._thin_slice import (
    _cheap_init,
    _clone_op,
    _keep_list,
    _new_weights,
    _propagate_channels,
    _width_config,
)
from ssl_keras.graph import check_layers_in_one_model

# ---------------------------------------------------------------------------------------------
# The plan


def thinning_plan(model: keras.Model, threshold: float = 1e-4, round_to: int | dict = 1,
                  groups: list[dict] | None = None, crop_kernels: bool = True) -> dict:
    """Returns what `thin` will do to `model`, as plain JSON-serialisable data.

    The plan (all names are layer names of `model`):

        {"model": {"name": "lenet", "sha256": "..."},           # the model it was made for
         "threshold": 1e-4, "round_to": 1,
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
            channels; their weights are zero or constant, so outputs stay exact); or a dict
            `{layer name: multiple}` for some layers only (the others: 1).
        groups: the coupled groups (docs/groups-format.md); `removable_groups(model)` when None.
            Given groups are checked against the model first (a malformed group is a
            ValueError naming it).
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
    if not isinstance(crop_kernels, (bool, np.bool_)):
        raise ValueError("`crop_kernels` must be a bool (crop zero border rows / columns of "
                         f"conv kernels or not). Received: crop_kernels={crop_kernels!r}")
    model = _plain(model)
    st = _prepare(model, threshold, groups)
    graph, groups, decisions = st["graph"], st["groups"], st["decisions"]
    alive, dropped, by_name = st["alive"], st["dropped"], st["by_name"]
    _check_width_names("round_to", round_to, st)
    zw = _zeroed_weights(st["weights"], st["zero"])
    probes = [_probe_inputs(graph)]  # one list, so that _constant_values can redraw it
    layer_cls = {n: type(layer) for n, layer in by_name.items() if n in alive}
    removed = {gid for gid, (s, _) in decisions.items() if s in ("constant", "unused")}
    for _ in range(len(groups) + 1):
        _restore(groups, removed, decisions, zw, alive, layer_cls, round_to)
        const_in = _const_inputs(groups, removed, decisions, alive, by_name)
        names = sorted(const_in)
        values = _constant_values(graph, zw, const_in, probes)
        bad = {}
        for n in names:
            if len(by_name[n]._inbound_nodes) > 1:  # a shared consumer: keep
                bad.update(dict.fromkeys(((n, i) for i in const_in[n]),
                                         "is read by the shared layer"))
                continue
            bad.update(dict.fromkeys(((n, i) for i in _not_constant(values[n], const_in[n])),
                                     "depends on the input at the input of"))
            bad.update(dict.fromkeys(((n, i) for i in _not_finite(values[n], const_in[n])),
                                     "is NaN or inf on the probe inputs (say, a masked average "
                                     "over inputs whose steps are all masked) at the input of"))
        if not bad:
            break
        for g in groups:
            if g["id"] not in removed or decisions[g["id"]][0] != "constant":
                continue
            for s in g["slices"]:
                if s["layer"] not in alive or not _is_input_slice(s, by_name):
                    continue
                why = next((bad[(s["layer"], i)] for i in s["index"]
                            if (s["layer"], i) in bad), None)
                if why is not None:
                    removed.discard(g["id"])
                    decisions[g["id"]] = ("kept", f"its constant channel {why} {s['layer']!r}: "
                                                  "not folded")
                    break
    probes = probes[0]
    rem = _removed_indices(groups, removed, zw, alive)
    channels = _propagate_channels(graph, rem, dropped, alive)
    layers = {}
    for name in sorted(alive):
        layer = by_name.get(name)
        if isinstance(layer, keras.layers.Reshape):
            # A Reshape that keeps the channel axis (the registry's check) names the channel
            # count in its target shape: it becomes the count that is kept. One that changes
            # the last axis blocks the channels in front of it, and stays as it is.
            source = layer._inbound_nodes[0].input_tensors[0]
            kept = channels.get(id(source))
            target = tuple(layer.target_shape)
            if kept is not None and source.shape[-1] == target[-1] != len(kept):
                layers[name] = {"keep": {}, "config": {"target_shape": (*target[:-1],
                                                                        len(kept))},
                                "bias_add": None, "after": []}
            continue
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
        "model": {"name": model.name, "sha256": _fingerprint(graph, st["weights"])},
        "threshold": st["threshold"], "round_to": round_to,
        "zero": st["zero"],
        "groups": {gid: {"status": "removed" if s in ("constant", "unused") else s,
                         "why": why} for gid, (s, why) in decisions.items()},
        "dropped": {k: list(v) for k, v in dropped.items()},
        "dead": sorted(n for n in by_name if n not in alive),
        "layers": layers,
        "adds": adds,
    }


_PROBE_DRAWS = 8  # probe inputs drawn at most, until the constants are finite on them


def _constant_values(graph, zw, const_in, probes):
    """{consumer: its input on the probe inputs} (`_run`), for the consumers of removed
    constant channels. Probes on which such a channel is NaN or inf (token ids that are all
    padding, so that a masked average divides by zero) tell nothing about its value: others
    are drawn (`probes[0]` is replaced), up to _PROBE_DRAWS in all; a channel still not
    finite is kept (see `_not_finite`), never folded."""
    names = sorted(const_in)
    for seed in range(_PROBE_DRAWS):
        if seed:
            probes[0] = _probe_inputs(graph, seed=seed)
        values = dict(zip(names, _run(graph, zw, [_input_tensor(graph, n)[0] for n in names],
                                      probes[0]), strict=True))
        if not any(_not_finite(values[n], const_in[n]) for n in names):
            break
    return values


def _not_finite(value, idx):
    """The positions of `idx` with a NaN or inf value on some probe input."""
    v = np.asarray(value[..., idx], np.float64).reshape(-1, len(idx))
    return {i for i, ok in zip(idx, np.isfinite(v).all(axis=0), strict=True) if not ok}


# ---------------------------------------------------------------------------------------------
# Applying a plan


def _fingerprint(graph, weights) -> str:
    """SHA-256 of the model's layer names, weight names, shapes and values (a plan's model)."""
    digest = hashlib.sha256()
    for layer in _layers(graph):
        for key, value in sorted(weights.get(layer.name, {}).items()):
            value = np.ascontiguousarray(value)
            digest.update(f"{layer.name}/{key}:{value.shape}:{value.dtype};".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


_PLAN_KEYS = ("zero", "dropped", "dead", "layers", "adds")


def _check_plan(plan, graph, weights, model_name, fingerprint=True):
    """Raises a ValueError unless `plan` is a thinning plan made for this model as it is
    (with `fingerprint`, its "model" hash is compared with the weights')."""
    if not isinstance(plan, dict) or any(k not in plan for k in _PLAN_KEYS):
        missing = [k for k in _PLAN_KEYS if k not in plan] if isinstance(plan, dict) else None
        raise ValueError(
            "`plan` must be the dict thinning_plan(model) returns (or its JSON round trip), "
            f"with keys {list(_PLAN_KEYS)}. Received: "
            + (f"a dict without {missing}" if missing else
               f"plan={plan!r:.80} (of type {type(plan).__name__})"))
    made_for = plan.get("model")
    if made_for is not None and not isinstance(made_for, dict):
        raise ValueError("`plan['model']` must be the {'name', 'sha256'} dict thinning_plan "
                         f"writes. Received: {made_for!r:.80}")
    if fingerprint and made_for is not None and \
            made_for.get("sha256") != _fingerprint(graph, weights):
        raise ValueError(
            f"The plan was made for another model, or for this one before its weights or "
            f"layers changed. Expected a plan from thinning_plan() of model '{model_name}' as "
            f"it is now. Received: a plan made for model '{made_for.get('name')}'")
    _check_plan_indices(plan, weights)


def _check_plan_indices(plan, weights) -> None:
    """Every weight slice a plan keeps or zeroes names a weight of the model and positions
    inside it (a hand-edited plan would otherwise fail with a bare IndexError)."""
    def check(where, layer, weight, axis, index):
        shape = np.shape(weights.get(layer, {}).get(weight)) if weight in weights.get(
            layer, {}) else None
        if shape is None:
            raise ValueError(f"The plan's {where} names weight {weight!r} of layer {layer!r}, "
                             "which the model does not have. Received: a plan that does not "
                             "fit this model")
        if axis is None:
            return
        ok_axis = isinstance(axis, (int, np.integer)) and -len(shape) <= int(axis) < len(shape)
        size = shape[int(axis)] if ok_axis else 0
        bad = [i for i in (index or []) if isinstance(i, bool) or not isinstance(
            i, (int, np.integer)) or not 0 <= i < size]
        if not ok_axis or bad:
            raise ValueError(
                f"The plan's {where} for {layer}/{weight} must list positions in [0, {size}) "
                f"along an axis of shape {shape}. Received: axis={axis!r}, "
                f"{'positions ' + str(bad[:5]) if bad else 'that axis'}")

    for z in plan["zero"]:
        check("zero list", z.get("layer"), z.get("weight"), z.get("axis"), z.get("index"))
    for layer, entry in plan["layers"].items():
        for weight, axes in (entry.get("keep") or {}).items():
            for axis, index in axes.items():
                check("keep list", layer, weight, int(axis) if str(axis).lstrip("-").isdigit()
                      else axis, index)


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


def apply_plan(model: keras.Model, plan: dict) -> keras.Model:
    """Builds the thinned model described by `plan` (see `thinning_plan`).

    The new model is functional, keeps every layer name of `model` (removed residual branches
    are gone; layers a plan adds are named `<layer>_constant` / `<layer>_activation`, and
    `<layer>_pad` / `<layer>_crop` around a cropped kernel) and
    carries the zeroed model's weights, sliced. `model` is not modified.

    Args:
        model: the model the plan was made for, with the same weights (checked against the
            plan's "model" fingerprint, when it has one).
        plan: the dict returned by `thinning_plan(model, ...)` (or its JSON round trip).

    Returns:
        A new keras.Model.

    Example:
    >>> small = apply_plan(model, thinning_plan(model))
    """
    return _apply_plan(model, plan, fingerprint=True)


def _apply_plan(model, plan, fingerprint: bool) -> keras.Model:
    """apply_plan; `fingerprint=False` skips hashing the weights (thin's own fresh plan)."""
    plain = _plain(model)
    graph = _graph(plain)
    check_layers_in_one_model(plain)  # the copy would untie such a layer's weights
    weights = _read_weights(graph)
    _check_plan(plan, graph, weights, model.name, fingerprint)
    arrays = _zeroed_weights(weights, plan["zero"])
    dead, dropped = set(plan["dead"]), plan["dropped"]
    layer_plans, adds = plan["layers"], plan["adds"]
    tensors, new_inputs = {}, []
    for t in graph.inputs:
        layer = t._keras_history.operation
        x = keras.Input(batch_shape=t.shape, dtype=t.dtype, name=layer.name)
        tensors[id(t)] = x
        new_inputs.append(x)
    clones = {}
    needed = _needed_nodes(graph, dropped)
    for node in _nodes(graph):
        op = node.operation
        if op.name in dead or id(node) not in needed:
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
            changes = (entry or {}).get("config", {})
            # Lambda layers copy with safe mode off, but only when the plan changes nothing in
            # the layer's config: what a plan supplies (maybe read from a file) stays checked.
            with own_layers_scope() if not changes else contextlib.nullcontext():
                if isinstance(op, keras.Model):
                    new = keras.models.clone_model(op, clone_function=copy_layer)
                else:
                    cfg = _cheap_init(layer_config(op))
                    cfg.update(changes)
                    new = copy_layer(op, cfg)
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
    return refresh_states(keras.Model(inputs, outputs, name=model.name))


@rebuilds_own_layers
def thin(model: keras.Model, threshold: float = 1e-4, round_to: int | dict = 1,
         groups: list[dict] | None = None, crop_kernels: bool = True) -> keras.Model:
    """Returns a smaller dense copy of `model` without its below-threshold groups.

    `thin(model)` computes `thinning_plan(model, threshold, round_to, groups)` and applies it.
    Its outputs match `zero_groups(model, threshold)` to 1e-5 (relative) in float32.

    Args:
        model: a functional or Sequential Keras model with static input shapes; a model
            from `apply_ssl` is stripped first (`strip_ssl`).
        threshold: the group norm at or below which a group counts as zero (>= 0).
        round_to: keep every thinned width a multiple of this (e.g. 16, XNNPACK's float32
            output-channel block on the two x86 CPUs measured: AVX2 in RESULTS.md, AVX-512 in
            docs/results-log.md; other CPUs may differ: `benchmarks.lenet_widths` measures
            it), or a dict `{layer name: multiple}` (the layers not named: 1).
        groups: the coupled groups (checked against the model); `removable_groups(model)` when
            None.
        crop_kernels: crop zero border rows / columns of Conv kernels (see `thinning_plan`).

    Returns:
        A new keras.Model made of plain Keras layers (plus `ConstantAdd` where a constant
        cannot go into a bias), with the original layer names.

    Example:
    >>> small = ssl_keras.thin(model, threshold=1e-4)
    >>> ssl_keras.summarize(model, small)
    """
    model = _plain(model)
    plan = thinning_plan(model, threshold, round_to, groups, crop_kernels)
    return _apply_plan(model, plan, fingerprint=False)  # made from this model just now


@rebuilds_own_layers
def zero_groups(model: keras.Model, threshold: float = 1e-4,
                groups: list[dict] | None = None, round_down: int | dict = 1,
                max_channels: int | dict | None = None) -> keras.Model:
    """Returns a copy of `model` whose below-threshold groups are set exactly to zero.

    This is the reference `thin` is equivalent to: the producer slices of groups whose every
    producer slice has norm <= threshold, the consumer slices of groups whose every consumer
    slice has norm <= threshold, whole kernels with norm <= threshold, and the border bands of
    Conv kernels with norm <= threshold (see the module doc), set to 0. Biases and BatchNorm
    parameters are left as they are.

    `round_down=N` also zeroes, in every layer that keeps more than N channels (filters /
    units) and not a multiple of N, the producer slices of its weakest live groups (smallest
    norm of their producer and consumer slices; under a BatchNorm, its gamma instead of the
    producer kernel, whose scale BatchNorm divides out) until the count is a multiple of N;
    `thin` of the result then has such widths. A layer's count is every live channel it
    produces, whatever channel space it is in (the inputs of a Concatenate it is added to).
    Layers are cut one at a time, the last in the graph first, and the groups a cut leaves
    unread are counted before earlier layers are cut; a cut that leaves a later layer's
    filter with no input at all can still take that layer below its multiple.

    CPU kernels compute channels in blocks (16 float32 channels with XNNPACK on
    AVX-512): 21 filters cost what 32 cost, 16 half of it. Unlike `round_to` (which keeps
    zeroed channels, exactly) this changes the model's outputs: fine-tune after it. A layer
    whose weak groups are blocked, or that keeps N or fewer channels, is left as it is.

    `max_channels=M` (or {layer name: M}) zeroes, the same way, the weakest live groups of
    every layer that keeps more than M channels until M are left (then `round_down` applies
    to the M): a width budget, e.g. from `benchmarks.lenet_widths`, kept by the groups' norms
    rather than by a threshold.

    Args:
        model: a functional or Sequential Keras model.
        threshold: as in `thin`.
        groups: the coupled groups (checked against the model); `removable_groups(model)` when
            None.
        round_down: an int >= 1, or a dict {layer name: int >= 1} (other layers: 1).
        max_channels: None (no cap), an int >= 1, or a dict {layer name: int >= 1} (other
            layers: no cap).

    Returns:
        A new model of the same architecture (`model` is not modified); a model from
        `apply_ssl` comes back stripped (plain layers, see `strip_ssl`).

    Example:
    >>> zeroed = ssl_keras.zero_groups(model, 1e-4)
    >>> small = ssl_keras.thin(ssl_keras.zero_groups(model, 1e-4, round_down=16), 1e-4)
    >>> capped = ssl_keras.zero_groups(model, 1e-4, max_channels={"conv2": 16})
    """
    round_down = _check_round_to(round_down, "round_down")
    if max_channels is not None:
        max_channels = _check_round_to(max_channels, "max_channels")
    model = _plain(model)
    st = _prepare(model, threshold, groups)
    _check_width_names("round_down", round_down, st)
    _check_width_names("max_channels", max_channels, st)
    weights = _zeroed_weights(st["weights"], st["zero"])
    # One layer's cut at a time, the last layer first, each followed by the classification of
    # the zeroed weights: a cut can leave channels of an earlier layer unread (its consumer
    # rows were the cut filters' only weights), and those must be counted before that layer
    # is cut, or it ends below its cap / multiple.
    for _ in range(len(st["groups"]) + 1):  # every round zeroes one group at least
        cut = _width_cut(st, weights, round_down, max_channels)
        if not cut:
            break
        weights = _zeroed_weights(weights, cut)
        st = _settle(st["graph"], weights, st["groups"], st["threshold"])
        weights = _zeroed_weights(weights, st["zero"])
    return _copy_with_weights(model, weights)


def _check_width_names(argument, value, st) -> None:
    """A per-layer width setting must name layers whose output channels are groups (a layer
    without any, a BatchNormalization, Flatten or pooling layer, has no width to set)."""
    if not isinstance(value, dict):
        return
    by_name = st["by_name"]
    producers = {s["layer"] for g in st["groups"] for s in g["slices"] if s["role"] == "producer"}
    unknown = sorted(set(value) - set(by_name))
    if unknown:
        raise ValueError(
            f"`{argument}` names layers the model does not have. Expected names among "
            f"{sorted(producers & set(by_name))} (its layers with output channels). "
            f"Received: {unknown}")
    without = sorted(set(value) - producers)
    if without:
        raise ValueError(
            f"`{argument}` names layers without output channels of their own (a width is set "
            "on a Dense / Conv layer, not on BatchNormalization, Flatten, pooling or an Add). "
            f"Expected names among {sorted(producers & set(by_name))}. Received: {without}")


def _width_cut(st, weights, round_down, max_channels=None) -> list:
    """The producer slices to zero, in the last layer (in graph order) whose width is above
    its `max_channels` or above `round_down` and not a multiple of it: the weakest of its live
    groups (norm of their producer and consumer slices; a following BatchNorm's gamma
    instead of the producer kernel). A layer's width counts every live group with a producer
    slice in it, whatever channel space the group is in (a Concatenate's inputs, the branches
    of an Add); a layer without enough unblocked groups to cut is left as it is."""
    if round_down == 1 and max_channels is None:
        return []
    groups, decisions, alive = st["groups"], st["decisions"], st["alive"]
    kept, weak = {}, {}
    for g in groups:
        status, why = decisions[g["id"]]
        if status in ("constant", "unused", "dead"):
            continue
        layers = {s["layer"] for s in g["slices"] if s["role"] == "producer"
                  and s["layer"] in alive and s["weight"] in weights.get(s["layer"], {})}
        cuttable = g.get("blocked") is None and not str(why).startswith("blocked")
        for layer in layers:
            kept[layer] = kept.get(layer, 0) + 1
            if cuttable:
                weak.setdefault(layer, []).append(g)
    rank = {name: i for i, name in enumerate(st["by_name"])}
    for layer in sorted(kept, key=lambda name: (rank.get(name, -1), name), reverse=True):
        count = kept[layer]
        multiple = round_down.get(layer, 1) if isinstance(round_down, dict) else round_down
        cap = max_channels.get(layer) if isinstance(max_channels, dict) else max_channels
        left = count if cap is None else min(count, cap)
        left -= left % multiple if left > multiple else 0
        cut = count - left
        candidates = weak.get(layer, [])
        if not cut or len(candidates) < cut:
            continue
        label = "max_channels" if cap is not None and cap < count else "round_down"
        cache = {}
        candidates.sort(key=lambda g: (_strength(g, weights, alive, cache, normalized=True),
                                       g["id"]))
        return [{"layer": s["layer"], "weight": s["weight"], "axis": s["axis"],
                 "index": list(s["index"]), "why": f"{label} {g['id']}"}
                for g in candidates[:cut] for s in g["slices"]
                if s["role"] == "producer" and s["layer"] in alive
                and s["weight"] in weights.get(s["layer"], {})]
    return []
