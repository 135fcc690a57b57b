"""The groups the callbacks act on, read and written as NumPy arrays between steps.

Internal to `ssl_keras.callbacks` (which re-exports `group_sets` and `sparsity_summary`): the
per-layer groups of one kernel and structure (`_StructureSet`, border bands included), the
coupled groups of `CoupledTerms` with their "zero_with" companions (`_CoupledSet`), collecting
them from a model (`group_sets`), zeroing and counting the groups at or below a threshold, and the
argument checks and JAX state sync that the callbacks share.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from ssl_keras._groups_check import validate_groups
from ssl_keras.regularizers import _finite, _is_real
from ssl_keras.structures import (
    Structure,
    border_bands,
    border_sizes,
    group_size,
    reduction_axes,
)
from ssl_keras.wrap import (
    CoupledTerms,
    SSLModel,
    StructuredSparsity,
    hand_placed_weights,
    kernel_specs,
)


def _validate_threshold(value, name="threshold") -> float:
    """A finite real number >= 0 (Python or NumPy, not a bool), as a float."""
    if not _is_real(value) or not _finite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative finite float. Received: {name}={value!r}"
        )
    return float(value)


def _validate_steps(value, name) -> int:
    """An integer >= 1 (Python or NumPy, not a bool), as an int."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
    return int(value)


class _StructureSet:
    """The groups of one structure of one kernel (per-layer groups).

    BORDERS groups are bands `(axis, indices)` (`border_bands`), nested and overlapping:
    `scale` applies their factors one band after the other, smaller bands first (the factors
    come from the norms before the step, so for these overlapping groups a proximal step is
    an approximation of the exact one).
    """

    def __init__(self, layer, variable, structure, in_axis, out_axis, coefficient,
                 normalize=False):
        structure = Structure.parse(structure)
        self.layer = layer
        self.label = f"{layer}/{structure.value}"
        self.variable = variable
        shape = tuple(variable.shape)
        self.bands = None
        if structure is Structure.BORDERS:
            self.bands = border_bands(shape, in_axis, out_axis)
            sizes = border_sizes(shape, in_axis, out_axis)
            self.coefficient = float(coefficient) * (np.sqrt(sizes) if normalize else 1.0)
        else:
            self.axes = reduction_axes(structure, len(shape), in_axis, out_axis)
            size = group_size(structure, shape, in_axis, out_axis)
            self.coefficient = float(coefficient) * (math.sqrt(size) if normalize else 1.0)
        self.labels = None

    def values(self) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(self.variable))

    def norms(self, values=None) -> np.ndarray:
        x = self.values() if values is None else values
        if self.bands is not None:
            return np.array([np.sqrt(np.sum(np.square(_band(x, band), dtype=np.float64)))
                             for band in self.bands], dtype=np.float64)
        return np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=self.axes)).reshape(-1)

    def scale(self, factors: np.ndarray, values=None) -> None:
        if np.all(factors == 1.0) or not self.variable.trainable:
            return  # a frozen layer's kernel stays as it is
        x = self.values() if values is None else values
        if self.bands is not None:
            x = x.copy()
            for band, factor in zip(self.bands, factors, strict=True):
                if factor != 1.0:
                    where = _band_index(x.ndim, band)
                    x[where] = (x[where] * factor).astype(x.dtype)
            self.variable.assign(x)
            return
        kept = [1 if a in self.axes else n for a, n in enumerate(x.shape)]
        self.variable.assign((x * np.reshape(factors, kept)).astype(x.dtype))


def _band_index(ndim, band) -> tuple:
    axis, index = band
    where = [slice(None)] * ndim
    where[axis] = list(index)
    return tuple(where)


def _band(x, band):
    return x[_band_index(x.ndim, band)]


class _CoupledSet:
    """Groups spanning layers (coupled channels, residual branches), by CoupledTerms.

    A group may list "zero_with" slices (the kernels of a residual branch whose final
    BatchNorm gamma and beta are the group): they are not penalised, but set to zero whenever
    the group's factor is 0, so that a switched-off branch is also removable by thin().
    """

    def __init__(self, terms: CoupledTerms, coefficients, labels, companions=None,
                 model=None):
        self.terms = terms
        self.coefficient = np.asarray(coefficients, dtype=np.float64)
        self.labels = list(labels)
        self.label = None
        self.companions = {}  # group index -> [(variable, axis, index)]
        for g, slices in (companions or {}).items():
            self.companions[g] = [_companion(model, s) for s in slices]

    def values(self) -> list[np.ndarray]:
        return self.terms.values()

    def norms(self, values=None) -> np.ndarray:
        return self.terms.norms(values)

    def scale(self, factors: np.ndarray, values=None) -> None:
        factors = np.asarray(factors, dtype=np.float64)
        self.terms.scale(factors, values)
        for g, slices in self.companions.items():
            if factors[g] != 0.0:
                continue
            for variable, axis, index in slices:
                if not variable.trainable:
                    continue
                x = np.asarray(ops.convert_to_numpy(variable))
                where = [slice(None)] * x.ndim
                where[axis] = index
                if np.any(x[tuple(where)]):
                    x = x.copy()
                    x[tuple(where)] = 0
                    variable.assign(x)


def _companion(model, piece: dict) -> tuple:
    from ssl_keras._wrap_coupled import _variable

    variable = _variable(model, piece["layer"], piece["weight"])
    axis = int(piece["axis"]) % len(variable.shape)
    return variable, axis, np.asarray(piece["index"], dtype=np.int64)


def _wrapper_sets(model) -> list:
    sets = []
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, StructuredSparsity):
            continue
        for variable, regularizer in layer.ssl_penalized_weights():
            for structure, coefficient in regularizer.coefficients().items():
                found = _StructureSet(layer.name, variable, structure, regularizer.in_axis,
                                      regularizer.out_axis, coefficient, regularizer.normalize)
                if found.bands != []:  # a Dense kernel has no border bands
                    sets.append(found)
    return sets


def _hand_placed_sets(model) -> list:
    """The groups of the GroupLasso regularisers a user put on the model's kernels."""
    sets = []
    for name, variable, regularizer in hand_placed_weights(model):
        for structure, coefficient in regularizer.coefficients().items():
            found = _StructureSet(name, variable, structure, regularizer.in_axis,
                                  regularizer.out_axis, coefficient, regularizer.normalize)
            if found.bands != []:
                sets.append(found)
    return sets


def _plain_sets(model) -> list:
    sets = []
    for layer in model._flatten_layers(include_self=False):
        inner = layer.ssl_inner_layer if isinstance(layer, StructuredSparsity) else layer
        specs = kernel_specs(inner)
        if specs is None or not inner.built:
            continue
        for attribute, in_axis, out_axis, _ in specs:
            for structure in (Structure.FILTERS, Structure.CHANNELS, Structure.SHAPES,
                              Structure.BORDERS):
                if structure is Structure.SHAPES and \
                        len(getattr(inner, attribute).shape) == 2:
                    continue  # a 2-D kernel's shapes are its channels: count them once
                found = _StructureSet(layer.name, getattr(inner, attribute), structure,
                                      in_axis, out_axis, 0.0)
                if found.bands != []:
                    sets.append(found)
    return sets


def _normalize_groups(groups, coefficient) -> list[dict]:
    """removable_groups / ssl_groups entries -> {"id", "layer", "kind", "coefficient", "slices"}.

    The groups are valid already: `groups=` passed validate_groups in group_sets, an
    SSLModel checks its ssl_groups whenever they are set, removable_groups makes its own.
    """
    out = []
    for group in groups:
        if group.get("blocked"):
            continue
        slices = [s for s in group["slices"] if s.get("penalize", True)]
        if not slices:
            continue
        value = group.get("coefficient", 0.0) if coefficient is None else coefficient
        label = group.get("layer") or str(group.get("source", group["id"])).split("/")[0]
        entry = {"id": group["id"], "layer": label, "kind": group.get("kind", "channel"),
                 "coefficient": float(value), "slices": slices}
        if group.get("zero_with"):
            entry["zero_with"] = group["zero_with"]
        out.append(entry)
    return out


def _coupled_set(model, groups) -> _CoupledSet | None:
    if not groups:
        return None
    terms = CoupledTerms(model, groups)
    companions = {g: group["zero_with"] for g, group in enumerate(groups)
                  if group.get("zero_with")}
    return _CoupledSet(terms, [g["coefficient"] for g in groups],
                       [f"{g['layer']}/{g['kind']}" for g in groups], companions, model)


def group_sets(model, groups=None, coefficient=None, fallback=True) -> list:
    """Collects the groups that the callbacks act on (internal).

    Args:
        model: the model being trained.
        groups: coupled groups as plain data, or None to read them from the model.
        coefficient: overrides every group's lambda (ProximalGroupLasso).
        fallback: analyse a plain model (removable_groups + per-layer structures) when it
            carries no SSL groups.
    """
    if coefficient is not None:
        coefficient = _validate_threshold(coefficient, "coefficient")
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built: its layers have no weights yet, so it has no "
            "groups to act on. Build it before fit (call it on a batch, or "
            "`model.build(input_shape)`). Received: a model with built=False"
        )
    if groups is not None:
        groups = validate_groups(groups, model, need_role=False)
        found = [_coupled_set(model, _normalize_groups(groups, coefficient))]
        return [s for s in found if s is not None]
    sets = _wrapper_sets(model) + _hand_placed_sets(model)
    if isinstance(model, SSLModel) and model.ssl_groups:
        sets.append(_coupled_set(model, _normalize_groups(model.ssl_groups, coefficient)))
    if not sets and fallback:  # a plain model: analyse it
        from ssl_keras.graph import removable_groups

        sets = _plain_sets(model)
        sets.append(_coupled_set(model, _normalize_groups(removable_groups(model), coefficient)))
    sets = [s for s in sets if s is not None]
    if coefficient is not None:  # the coupled sets took it in _normalize_groups
        for s in sets:
            if isinstance(s, _StructureSet):
                s.coefficient = coefficient
    return sets


def _sync_jax(model) -> None:
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()

def _zero_below(sets, threshold) -> int:
    zeroed = 0
    for s in sets:
        values = s.values()
        norms = s.norms(values)
        small = norms <= threshold
        factors = np.where(small, 0.0, 1.0)
        # Groups already exactly zero need no write.
        zeroed += int(np.sum(small & (norms > 0)))
        if np.any(small & (norms > 0)):
            s.scale(factors, values)
    return zeroed


def sparsity_summary(sets, threshold) -> dict[str, tuple[int, int]]:
    """{label: (groups with norm <= threshold, groups)} over every group set (internal)."""
    out = {}
    for s in sets:
        below = s.norms() <= threshold
        labels = [s.label] * len(below) if s.labels is None else s.labels
        for label, small in zip(labels, below, strict=True):
            zero, total = out.get(label, (0, 0))
            out[label] = (zero + int(small), total + 1)
    return out
