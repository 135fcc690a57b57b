"""Validation of user-supplied coupled groups (docs/groups-format.md), before anything reads them.

Internal: `thin`, `thinning_plan` and `zero_groups` (through `_thin_plan._prepare`) and the
callbacks (through `_callbacks_groups.group_sets`) call `validate_groups` on the groups a user
passes with `groups=`, and `SSLModel` (its constructor and `from_config`) on its `ssl_groups`;
the groups `removable_groups(model)` makes are not checked again.
"""

from __future__ import annotations

import numpy as np

from ssl_keras.regularizers import _finite, _is_real

ROLES = ("producer", "producer_bias", "tied", "consumer")
_GROUP_KEYS = ("id", "slices")
_SLICE_KEYS = ("layer", "weight", "axis", "index")


def _is_int(x) -> bool:
    """An int or NumPy integer; a bool (True is not 1 here) is not."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _typed(value) -> str:
    return f"{value!r} (of type {type(value).__name__})"


class _Shapes:
    """Per model: the layer at a path and its weights' shapes, looked up once each."""

    def __init__(self, model):
        self.model = model
        self.layers = {}

    def weights(self, path):
        """{variable short name: shape} of the layer at `path`; a ValueError if none."""
        if path not in self.layers:
            from ssl_keras._wrap_layer import StructuredSparsity
            from ssl_keras.graph import find_layer

            layer = find_layer(self.model, path)
            if isinstance(layer, StructuredSparsity):
                layer = layer.ssl_inner_layer
            self.layers[path] = {v.name: tuple(v.shape) for v in layer.weights}
        return self.layers[path]


def _check_slice(where, s, shapes, need_role):
    """Raises a ValueError naming `where` (group and slice) if slice `s` is malformed."""
    if not isinstance(s, dict):
        raise ValueError(f"{where}: a slice must be a dict with keys {list(_SLICE_KEYS)}. "
                         f"Received: {_typed(s)}")
    keys = _SLICE_KEYS + (("role",) if need_role else ())
    missing = [k for k in keys if k not in s]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}. Expected keys {list(keys)}. "
                         f"Received keys: {list(s)}")
    path, weight, axis, index = (s[k] for k in _SLICE_KEYS)
    if not isinstance(path, str) or not isinstance(weight, str):
        raise ValueError(f"{where}: 'layer' and 'weight' must be strings (a layer path and a "
                         f"variable short name). Received: layer={path!r}, weight={weight!r}")
    where = f"{where} ({path}/{weight})"
    try:
        ws = shapes.weights(path)
    except ValueError:
        raise ValueError(f"{where}: the model '{shapes.model.name}' has no layer {path!r}. "
                         "Expected a layer name ('outer/inner' inside a nested model). "
                         f"Received: layer={path!r}") from None
    if weight not in ws:
        raise ValueError(f"{where}: layer {path!r} has no weight {weight!r}. Expected one of "
                         f"{sorted(ws)}. Received: weight={weight!r}")
    shape = ws[weight]
    rank = len(shape)
    if not _is_int(axis) or not -rank <= axis < rank:
        raise ValueError(f"{where}: 'axis' must be an integer (not a bool) in [{-rank}, {rank}) "
                         f"for a weight of shape {shape}. Received: axis={_typed(axis)}")
    size = shape[axis]
    if not isinstance(index, (list, tuple, np.ndarray)) or np.ndim(index) != 1:
        raise ValueError(f"{where}: 'index' must be a list of positions along axis {axis}. "
                         f"Received: index={_typed(index)}")
    bad = [i for i in index if not _is_int(i) or not 0 <= i < size]
    if bad:
        raise ValueError(f"{where}: 'index' must list integers (not bools) in [0, {size}) "
                         f"(axis {axis} of shape {shape}). Received: {_typed(bad[0])} in "
                         f"index={list(index)!r}")
    repeated = sorted({int(i) for i in index if list(index).count(i) > 1})
    if repeated:
        raise ValueError(f"{where}: 'index' must list each position once (a weight would count "
                         f"twice in the group's norm). Received: {repeated} more than once in "
                         f"index={list(index)!r}")
    if (need_role or "role" in s) and s.get("role") not in ROLES:
        raise ValueError(f"{where}: unknown 'role'. Expected one of {list(ROLES)}. "
                         f"Received: role={s.get('role')!r}")
    if "penalize" in s and not isinstance(s["penalize"], (bool, np.bool_)):
        raise ValueError(f"{where}: 'penalize' must be true or false. "
                         f"Received: penalize={_typed(s['penalize'])}")


def _check_group_fields(label, group):
    """The optional group keys the consumers read: source, blocked, coefficient, zero_with."""
    if "source" in group and not isinstance(group["source"], str):
        raise ValueError(f"{label}: 'source' must be a layer name (a string). "
                         f"Received: source={_typed(group['source'])}")
    if group.get("blocked") is not None and not isinstance(group["blocked"], str):
        raise ValueError(f"{label}: 'blocked' must be None or a reason (a string). "
                         f"Received: blocked={_typed(group['blocked'])}")
    if "coefficient" in group:
        c = group["coefficient"]
        if not _is_real(c) or not _finite(c) or c < 0:  # GroupLasso's coefficient rule
            raise ValueError(f"{label}: 'coefficient' must be a finite number >= 0. "
                             f"Received: coefficient={_typed(c)}")
    if group.get("zero_with") is not None and not isinstance(group["zero_with"], list):
        raise ValueError(f"{label}: 'zero_with' must be a list of slices. "
                         f"Received: zero_with={_typed(group['zero_with'])}")


def validate_groups(groups, model, need_role: bool = True,
                    argument: str = "groups") -> list[dict]:
    """Checks user-supplied coupled groups against `model`; returns them as a list.

    Checked: `groups` is a list of dicts with a unique string "id" and a list "slices"; every
    slice (and every "zero_with" slice) is a dict whose "layer" is a layer (or "outer/inner"
    path) of `model`, whose "weight" is a variable short name of that layer, whose "axis" is an
    int (not a bool) in [-rank, rank) of that weight, and whose "index" lists ints (not bools)
    in [0, size of that axis), each once; "role", when present (required with `need_role`), is
    one of `ROLES`; "penalize" is a bool; "source", "blocked" and "coefficient" have their
    types.

    Args:
        groups: the groups (docs/groups-format.md).
        model: the model they refer to (a StructuredSparsity wrapper stands for its layer).
        need_role: require "role" on every slice (thin reads it; the callbacks do not).
        argument: the name the messages give `groups` ("ssl_groups" for an SSLModel).

    Returns:
        `list(groups)`, the same dicts.

    Raises:
        ValueError: naming the group id and the slice, what was expected and what was received.

    Example:
    >>> validate_groups(removable_groups(model), model)
    """
    if not isinstance(groups, (list, tuple)):
        raise ValueError(f"`{argument}` must be a list of group dicts (docs/groups-format.md, "
                         "e.g. ssl_keras.removable_groups(model)). "
                         f"Received: {argument}={_typed(groups)}")
    shapes = _Shapes(model)
    seen = {}
    for n, group in enumerate(groups):
        if not isinstance(group, dict):
            raise ValueError(f"{argument}[{n}] must be a dict with 'id' and 'slices' (see "
                             f"docs/groups-format.md). Received: {_typed(group)}")
        missing = [k for k in _GROUP_KEYS if k not in group]
        if missing:
            raise ValueError(f"{argument}[{n}] must be a dict with 'id' and 'slices' (see "
                             f"docs/groups-format.md): missing {missing}. Received keys: "
                             f"{list(group)}")
        gid = group["id"]
        if not isinstance(gid, str):
            raise ValueError(f"{argument}[{n}]: 'id' must be a string ('<source>:<channel>'). "
                             f"Received: id={_typed(gid)}")
        if gid in seen:
            raise ValueError(f"Group {gid!r}: ids must be unique. Received: the same id at "
                             f"{argument}[{seen[gid]}] and {argument}[{n}]")
        seen[gid] = n
        label = f"Group {gid!r}"
        _check_group_fields(label, group)
        if not isinstance(group["slices"], list):
            raise ValueError(f"{label}: 'slices' must be a list of slice dicts. "
                             f"Received: slices={_typed(group['slices'])}")
        for k, s in enumerate(group["slices"]):
            _check_slice(f"{label}, slices[{k}]", s, shapes, need_role)
        for k, s in enumerate(group.get("zero_with") or ()):
            _check_slice(f"{label}, zero_with[{k}]", s, shapes, False)
    return list(groups)
