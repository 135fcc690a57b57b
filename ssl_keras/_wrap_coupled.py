"""The coupled groups of an `SSLModel` as sparse memberships over its variables (`CoupledTerms`).

Internal to `ssl_keras.wrap` (which re-exports `CoupledTerms`); the callbacks read the same
terms to measure, zero and soft-threshold the groups.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssl_keras._wrap_layer import StructuredSparsity
from ssl_keras.graph import find_layer


def _variable(model, layer_path: str, weight: str):
    """The variable `weight` of the layer at `layer_path` ("outer/inner") in `model`."""
    try:
        layer = find_layer(model, layer_path)
    except ValueError:
        raise ValueError(
            f"The group refers to layer '{layer_path}', which is not in model "
            f"'{model.name}'. Received: layer={layer_path!r}"
        ) from None
    if isinstance(layer, StructuredSparsity):
        layer = layer.ssl_inner_layer
    for variable in layer.weights:
        if variable.name == weight:
            return variable
    raise ValueError(
        f"Layer '{layer_path}' has no weight named '{weight}'. Expected one of "
        f"{[v.name for v in layer.weights]}. Received: weight={weight!r}"
    )


def _current_value(variable):
    scope = keras.src.backend.get_stateless_scope()
    symbolic = keras.src.backend.common.symbolic_scope.in_symbolic_scope()
    if keras.src.backend.in_stateless_scope() and not symbolic:
        value = scope.get_current_value(variable)
        if value is not None:
            return value
    return variable


class CoupledTerms:
    """The coupled groups of a model as sparse memberships over its variables.

    For every distinct (layer, weight, axis) of the groups' slices (a "term"), the pairs
    `(g, i)` of group `g` owning position `i` along `axis`; the square sum of group `g` is
    the sum, over the terms, of `sum_{other axes} W**2` at its positions (a segment sum).
    Sparse because a dense groups x positions matrix per term grows with the square of the
    model: for EfficientNetB0 (11,404 groups) those constants outgrew TensorFlow's 2 GB
    graph limit and the traced train step failed.

    The groups must already be valid: every caller runs `validate_groups` on them first
    (`SSLModel` when built or loaded, the callbacks on `groups=`), or makes them itself
    (`removable_groups`), and every group has a "coefficient".
    """

    def __init__(self, model, groups):
        self.groups = groups
        self.coefficients = np.array([g["coefficient"] for g in groups], dtype=np.float32)
        keyed = {}
        for g_index, group in enumerate(groups):
            for piece in group["slices"]:
                variable = _variable(model, piece["layer"], piece["weight"])
                axis = piece["axis"] % len(variable.shape)
                key = (piece["layer"], piece["weight"], axis)
                if key not in keyed:
                    keyed[key] = (variable, axis, set())
                keyed[key][2].update((g_index, int(i)) for i in piece["index"])
        # terms: (variable, axis, width); _pairs: (group indices, positions), sorted by
        # group. A variable may appear in several terms (a Dense kernel as producer and as
        # consumer), and a position in several groups (a channel and a residual branch).
        self.terms, self._pairs = [], []
        for variable, axis, pairs in keyed.values():
            ordered = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
            self.terms.append((variable, axis, int(variable.shape[axis])))
            self._pairs.append((ordered[:, 0], ordered[:, 1]))
        self._variables = []
        self._slot = []
        slot_of = {}  # id(variable) -> its index in self._variables
        for variable, _, _ in self.terms:
            if id(variable) not in slot_of:
                slot_of[id(variable)] = len(self._variables)
                self._variables.append(variable)
            self._slot.append(slot_of[id(variable)])

    def square_sums(self, read=lambda v: v, dtype="float32"):
        """Per-group square sums as a keras.ops tensor of `dtype`."""
        total = None
        for (variable, axis, _), (groups, positions) in zip(self.terms, self._pairs,
                                                             strict=True):
            x = ops.cast(read(variable), dtype)
            axes = tuple(a for a in range(len(x.shape)) if a != axis)
            per_index = ops.sum(ops.square(x), axis=axes) if axes else ops.square(x)
            part = ops.segment_sum(ops.take(per_index, positions), groups,
                                   num_segments=len(self.groups))
            total = part if total is None else total + part
        return total

    def values(self) -> list[np.ndarray]:
        """The current value of every variable of the groups, NumPy."""
        return [np.asarray(ops.convert_to_numpy(v)) for v in self._variables]

    def norms(self, values=None) -> np.ndarray:
        """Per-group L2 norms, NumPy, without epsilon."""
        values = self.values() if values is None else values
        sums = np.zeros(len(self.groups), dtype=np.float64)
        for (_, axis, _), (groups, positions), slot in zip(self.terms, self._pairs,
                                                            self._slot, strict=True):
            x = values[slot]
            axes = tuple(a for a in range(x.ndim) if a != axis)
            per_index = np.sum(np.square(x, dtype=np.float64), axis=axes)
            sums += np.bincount(groups, weights=per_index[positions], minlength=len(sums))
        return np.sqrt(sums)

    def scale(self, factors: np.ndarray, values=None) -> None:
        """Multiplies every slice of group g by factors[g] (in place, on the variables)."""
        values = self.values() if values is None else values
        multipliers = [None] * len(self._variables)
        for (_, axis, width), (groups, positions), slot in zip(
                self.terms, self._pairs, self._slot, strict=True):
            # A position may belong to several groups (a channel and a residual branch):
            # their factors multiply.
            per_index = np.ones(width, dtype=np.float64)
            np.multiply.at(per_index, positions, factors[groups])
            if np.all(per_index == 1.0):
                continue
            shape = [1] * values[slot].ndim
            shape[axis] = -1
            per_index = per_index.reshape(shape)
            old = multipliers[slot]
            multipliers[slot] = per_index if old is None else old * per_index
        for variable, x, multiplier in zip(self._variables, values, multipliers, strict=True):
            # A frozen layer's weights stay as they are (Keras does not train them either).
            if multiplier is not None and variable.trainable:
                variable.assign((x * multiplier).astype(x.dtype))
