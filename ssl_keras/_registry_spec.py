"""The types of a registry entry: `Kind`, `WeightSlice` and `LayerSpec`, each validated on
construction.

Internal to `ssl_keras.registry`, which re-exports them (also `ssl_keras.Kind`,
`ssl_keras.LayerSpec`, `ssl_keras.WeightSlice`); the module docstring there describes the kinds.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import keras
import numpy as np


class Kind(enum.Enum):
    """How a layer couples the channels (last axis) of its inputs and outputs."""

    PRODUCER = "producer"
    TIED = "tied"
    PASSTHROUGH = "passthrough"
    GLOBAL_POOL = "global_pool"
    MERGE_TIE = "merge_tie"
    CONCAT = "concat"
    FLATTEN = "flatten"
    BLOCK = "block"


@dataclasses.dataclass(frozen=True)
class WeightSlice:
    """One weight of a layer and the axis along which a channel owns a slice of it.

    Channel `c` owns the indices `[c * block, (c + 1) * block)` along `axis` of the variable
    whose short name (`variable.name`) is `weight`.

    Args:
        weight: the variable's short name: "kernel", "bias", "gamma", "depthwise_kernel", ...
        axis: the axis of the slice (negative counts from the end, as in Keras layouts).
        block: the number of consecutive indices one channel owns: an int, or the name of an
            integer attribute of the layer ("depth_multiplier").
        penalize: whether group Lasso should penalise this slice (kernels yes, biases and
            BatchNorm statistics no).
        optional: whether the variable may be absent (`use_bias=False`, `center=False`).

    Example:
    >>> WeightSlice("kernel", axis=-1)
    WeightSlice(weight='kernel', axis=-1, block=1, penalize=True, optional=False)
    """

    weight: str
    axis: int
    block: int | str = 1
    penalize: bool = True
    optional: bool = False

    def __post_init__(self):
        if not isinstance(self.weight, str) or not self.weight:
            raise ValueError(
                "`weight` must be a non-empty variable name such as 'kernel'. "
                f"Received: weight={self.weight!r}"
            )
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"`axis` must be an integer. Received: axis={self.axis!r}")
        for name in ("penalize", "optional"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"`{name}` must be a bool. "
                                 f"Received: {name}={getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if isinstance(self.block, bool) or not (
            (isinstance(self.block, int) and self.block >= 1)
            or (isinstance(self.block, str) and self.block)
        ):
            raise ValueError(
                "`block` must be a positive integer or the name of a layer attribute. "
                f"Received: block={self.block!r}"
            )


Check = Callable[[keras.layers.Layer, list], "str | None"]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """How one layer class couples channels; see the module docstring for the kinds.

    Args:
        kind: a `Kind`.
        consumes: PRODUCER: the slices that read input channel `c` (role "consumer").
        produces: PRODUCER: the slices that create output channel `c` (role "producer").
        bias: PRODUCER: the slices of output channel `c` that are not penalised
            (role "producer_bias").
        tied: TIED: the slices that belong to channel `c` (role "tied").
        expand: TIED: output positions per input channel (int or attribute name, e.g.
            "depth_multiplier": input channel `c` becomes outputs `c * m ... c * m + m - 1`).
        affine_safe: PASSTHROUGH / MERGE_TIE: whether a channel that carries a constant still
            carries a constant after the layer (False for zero padding and Multiply).
        reason: BLOCK: why channels reaching this layer cannot be removed.
        check: optional `check(layer, input_shapes) -> reason or None`, called for every use of
            the layer; a returned reason blocks the channels that reach it (an unsupported
            axis, data format or configuration).

    Example:
    >>> LayerSpec(Kind.BLOCK, reason="normalises over channels")  # doctest: +ELLIPSIS
    LayerSpec(kind=<Kind.BLOCK: 'block'>, ...)
    """

    kind: Kind
    consumes: tuple[WeightSlice, ...] = ()
    produces: tuple[WeightSlice, ...] = ()
    bias: tuple[WeightSlice, ...] = ()
    tied: tuple[WeightSlice, ...] = ()
    expand: int | str = 1
    affine_safe: bool = True
    reason: str | None = None
    check: Check | None = None

    def __post_init__(self):
        if not isinstance(self.kind, Kind):
            raise ValueError(
                f"`kind` must be a member of ssl_keras.registry.Kind ({[k.name for k in Kind]})."
                f" Received: kind={self.kind!r}"
            )
        for field in ("consumes", "produces", "bias", "tied"):
            value = getattr(self, field)
            if isinstance(value, WeightSlice):
                value = (value,)
            value = tuple(value) if isinstance(value, (list, tuple)) else None
            if value is None or not all(isinstance(v, WeightSlice) for v in value):
                raise ValueError(
                    f"`{field}` must be a tuple of WeightSlice. "
                    f"Received: {field}={getattr(self, field)!r}"
                )
            object.__setattr__(self, field, value)
        if self.kind is Kind.PRODUCER and not self.produces:
            raise ValueError(
                "A PRODUCER spec needs the slices that create an output channel. "
                "Received: produces=()"
            )
        if self.kind is not Kind.PRODUCER and (self.consumes or self.produces or self.bias):
            raise ValueError(
                "`consumes`, `produces` and `bias` are only meaningful for Kind.PRODUCER. "
                f"Received: kind={self.kind}"
            )
        if isinstance(self.expand, bool) or not (
                (isinstance(self.expand, int) and self.expand >= 1)
                or (isinstance(self.expand, str) and self.expand)):
            raise ValueError(
                "`expand` must be a positive integer or the name of a layer attribute "
                f"(e.g. 'depth_multiplier'). Received: expand={self.expand!r}"
            )
        if not isinstance(self.affine_safe, (bool, np.bool_)):
            raise ValueError(f"`affine_safe` must be a bool. "
                             f"Received: affine_safe={self.affine_safe!r}")
        object.__setattr__(self, "affine_safe", bool(self.affine_safe))
        if self.reason is not None and not isinstance(self.reason, str):
            raise ValueError(f"`reason` must be a string. Received: reason={self.reason!r}")
        if self.kind is not Kind.TIED and (self.tied or self.expand != 1):
            raise ValueError(
                "`tied` and `expand` are only meaningful for Kind.TIED. "
                f"Received: kind={self.kind}"
            )
        if self.kind is Kind.BLOCK and not self.reason:
            raise ValueError(
                "A BLOCK spec needs a `reason` (why channels reaching the layer cannot be "
                f"removed). Received: reason={self.reason!r}"
            )
        if self.kind is not Kind.BLOCK and self.reason is not None:
            raise ValueError(
                f"`reason` is only meaningful for Kind.BLOCK. Received: kind={self.kind}"
            )
        if self.check is not None and not callable(self.check):
            raise ValueError(f"`check` must be callable. Received: check={self.check!r}")
