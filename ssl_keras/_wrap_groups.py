"""The groups `apply_ssl(model, coupled=True)` penalises, with their coefficients.

Internal to `ssl_keras.wrap` (which re-exports `residual_branches`): the validated
coefficients per layer name, one group per coupled channel of `removable_groups(model)`,
and one group per residual branch (`depth`).
"""

from __future__ import annotations

import keras

from ssl_keras._wrap_layer import (
    _COEFFICIENTS,
    StructuredSparsity,
    _check_coefficients,
    kernel_specs,
)


def _settings(layers, filters, channels, shapes, depth, borders) -> tuple[dict, dict]:
    """Validates the global coefficients and the `layers=` overrides."""
    defaults = _check_coefficients({"filters": filters, "channels": channels, "shapes": shapes,
                                    "borders": borders, "depth": depth})
    if layers is None:
        return defaults, {}
    if not isinstance(layers, dict):
        raise ValueError(
            "`layers` must be a dict from layer name to a dict of coefficients (or None to "
            f"leave the layer unpenalised). Received: layers={layers!r}"
        )
    overrides = {}
    for name, value in layers.items():
        if value is None:
            overrides[name] = None
            continue
        if not isinstance(value, dict):
            raise ValueError(
                f"`layers['{name}']` must be a dict of coefficients ({list(_COEFFICIENTS)}) "
                f"or None. Received: layers[{name!r}]={value!r}"
            )
        unknown = sorted(set(value) - set(_COEFFICIENTS))
        if unknown:
            raise ValueError(
                f"`layers['{name}']` has unknown keys {unknown}. Expected keys among "
                f"{list(_COEFFICIENTS)}. Received: layers[{name!r}]={value!r}"
            )
        overrides[name] = _check_coefficients({**defaults, **value}, where=f"layers[{name!r}].")
    return defaults, overrides


def _coefficients_for(name, defaults, overrides) -> dict[str, float]:
    if name in overrides:
        value = overrides[name]
        return dict.fromkeys(_COEFFICIENTS, 0.0) if value is None else value
    return defaults


def _coupled_groups(model, defaults, overrides) -> list[dict]:
    """removable_groups(model) as penalised groups with a coefficient (blocked ones skipped)."""
    settings = [defaults] + [v for v in overrides.values() if v is not None]
    if not any(v["filters"] or v["channels"] for v in settings):
        return []
    from ssl_keras.graph import removable_groups

    out = []
    for group in removable_groups(model):
        if group.get("blocked"):
            continue
        top = lambda path: path.split("/")[0]
        # layers={name: None} leaves a layer unpenalised: its slices leave the coupled group
        # (which then penalises the other layers' slices only)
        slices = [{k: s[k] for k in ("layer", "weight", "axis", "index")}
                  for s in group["slices"] if s.get("penalize")
                  and not (top(s["layer"]) in overrides and overrides[top(s["layer"])] is None)]
        if not slices:
            continue
        producer = {top(s["layer"]) for s in group["slices"] if s["role"] == "producer"}
        consumers = {top(s["layer"]) for s in group["slices"] if s["role"] == "consumer"}
        filt = max((_coefficients_for(n, defaults, overrides)["filters"] for n in producer),
                   default=0.0)
        chan = max((_coefficients_for(n, defaults, overrides)["channels"] for n in consumers),
                   default=0.0)
        coefficient = filt + chan
        if coefficient == 0.0:
            continue
        out.append({"id": group["id"], "kind": "channel", "layer": top(group["source"]),
                    "coefficient": coefficient, "slices": slices})
    return out


def _history(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def _ancestors(tensor) -> set[int]:
    seen, stack = set(), [tensor]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        _, node = _history(x)
        stack.extend(keras.tree.flatten(node.input_tensors))
    return seen


def residual_branches(model) -> list[dict]:
    """The operands of every Add of a functional model, with the layers on each branch.

    A branch is every layer between the tensors all operands share (the block's input) and
    the operand. Returns a list of {"add": name, "operand": i, "layers": [names],
    "operations": [names]}: "layers" are the branch's layers, "operations" also the plain
    operations on it (`x + 3.0`, `keras.ops` calls; not layers of the model), in order.
    """
    out = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Add):
            continue
        for node in layer._inbound_nodes:
            operands = keras.tree.flatten(node.input_tensors)
            if len(operands) < 2:
                continue
            common = set.intersection(*[_ancestors(t) for t in operands])
            for i, operand in enumerate(operands):
                names, layers, seen, stack = [], set(), set(), [operand]
                while stack:
                    x = stack.pop()
                    if id(x) in common or id(x) in seen:
                        continue
                    seen.add(id(x))
                    operation, parent = _history(x)
                    if operation.name not in names:
                        names.append(operation.name)
                        if isinstance(operation, keras.layers.Layer):
                            layers.add(operation.name)
                    stack.extend(keras.tree.flatten(parent.input_tensors))
                out.append({"add": layer.name, "operand": i,
                            "layers": [n for n in names[::-1] if n in layers],
                            "operations": names[::-1]})
    return out


def _depth_slices(model, names) -> list[dict]:
    slices = []
    for name in names:
        layer = model.get_layer(name)
        inner = layer.ssl_inner_layer if isinstance(layer, StructuredSparsity) else layer
        if isinstance(layer, StructuredSparsity):
            attributes = [spec[0] for spec in kernel_specs(inner)]
        elif isinstance(inner, keras.layers.BatchNormalization) and inner.scale:
            attributes = ["gamma"]
        else:
            continue
        for attribute in attributes:
            variable = getattr(inner, attribute)
            slices.append({"layer": name, "weight": variable.name, "axis": 0,
                           "index": list(range(variable.shape[0]))})
    return slices


def _operand_batchnorm(model, branch):
    """The BatchNormalization whose output is the branch's Add operand, or None.

    Layers without weights (activations) between that BatchNorm and the Add are looked
    through: with gamma = beta = 0 they receive 0. A plain operation there (`x + 3.0`) may
    not map 0 to 0: then None.
    """
    layers = set(branch["layers"])
    for name in reversed(branch["operations"]):
        if name not in layers:
            return None
        layer = model.get_layer(name)
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer if (layer.scale or layer.center) else None
        if layer.weights:
            return None
    return None


def _check_depth_applies(model, layers, defaults, overrides, depth_groups) -> None:
    """coupled=True: `depth` penalises residual branches, keyed by the Add joining them. A depth
    that would penalise nothing (on a layer that is not an Add, or in a model without residual
    branches) is refused instead of silently doing nothing."""
    adds = sorted(layer.name for layer in model.layers if isinstance(layer, keras.layers.Add))
    named = sorted(name for name, value in (layers or {}).items()
                   if isinstance(value, dict) and value.get("depth") and name not in adds)
    if named:
        raise ValueError(
            "With coupled=True, `depth` is the coefficient of residual branches, keyed by the "
            f"Add layer that joins them; {named} are not Add layers, so a depth there penalises "
            f"nothing. Expected depth keys on Add layers ({adds or 'the model has none'}), or "
            "coupled=False for the per-layer whole-kernel depth groups. Received: "
            f"layers={ {name: layers[name] for name in named} }")
    if defaults["depth"] and not depth_groups and not set(adds) & set(overrides):
        raise ValueError(
            f"depth={defaults['depth']} penalises residual branches (the operands of an Add, "
            f"other than the shortcut, that hold weights), and model '{model.name}' has none, "
            "so it would penalise nothing. Expected depth=0 for this model, or coupled=False "
            f"for the per-layer whole-kernel depth groups. Received: depth={defaults['depth']}"
            f" with {len(adds)} Add layers")


def _depth_groups(wrapped, defaults, overrides) -> list[dict]:
    """One group per residual branch (every Add operand but the shortcut).

    A branch that ends in BatchNormalization is penalised through that layer's gamma and beta
    only: BatchNorm divides by the batch's standard deviation, so the branch's kernels (and
    the earlier gammas) can shrink without changing the training-mode output; penalising them
    only drives them towards BatchNorm's epsilon while the moving statistics lag behind (the
    inference-mode network breaks). With gamma = beta = 0 the branch outputs exactly 0 in both
    modes; its kernels are then listed under "zero_with": the callbacks zero them together
    with the group, so that thin() drops the branch. A branch without a final BatchNorm is
    penalised on all its kernels and BatchNorm gammas.
    """
    by_add = {}
    for branch in residual_branches(wrapped):
        by_add.setdefault(branch["add"], []).append(branch)
    out = []
    for add, branches in by_add.items():
        coefficient = _coefficients_for(add, defaults, overrides)["depth"]
        if coefficient == 0.0:
            continue
        weighted = [(b, _depth_slices(wrapped, b["layers"])) for b in branches]
        shortcut = min(range(len(weighted)),
                       key=lambda i: len({s["layer"] for s in weighted[i][1]}))
        for i, (branch, slices) in enumerate(weighted):
            if i == shortcut or not slices:
                continue
            group = {"id": f"depth:{add}:{branch['operand']}", "kind": "depth",
                     "layer": add, "coefficient": coefficient, "slices": slices}
            bn = _operand_batchnorm(wrapped, branch)
            if bn is not None:
                params = [v for v, on in ((bn.gamma, bn.scale), (bn.beta, bn.center)) if on]
                group["slices"] = [{"layer": bn.name, "weight": v.name, "axis": 0,
                                    "index": list(range(v.shape[0]))} for v in params]
                group["zero_with"] = [s for s in slices if s["layer"] != bn.name]
            out.append(group)
    return out
