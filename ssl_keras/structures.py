"""The structures of Structured Sparsity Learning and their groups in a kernel.

A kernel is seen in Keras layout, `(spatial..., c_in, n_out)`: the last axis holds output
units / filters, axis -2 input channels, the leading axes the spatial positions (none for
Dense). Layouts that differ (Conv2DTranspose stores `(kh, kw, n_out, c_in)`) are declared with
`in_axis` / `out_axis`.

| structure | one group                                | removing a group means          |
|-----------|------------------------------------------|---------------------------------|
| FILTERS   | `W[..., :, n]`, one output filter / unit | one fewer output channel        |
| CHANNELS  | `W[..., c, :]`, one input channel        | one fewer input channel         |
| SHAPES    | `W[s..., c, :]`, one (position, channel)  | a smaller im2col matrix         |
| BORDERS   | `W[:d] + W[-d:]` along one spatial axis:  | a smaller kernel (thin() crops  |
|           | the outer d rows / columns of both sides,| zero border rows / columns)     |
|           | d = 1..(k-1)//2, all channels / filters  |                                 |
| DEPTH     | the whole kernel                         | the layer (residual branch)     |

BORDERS groups are nested (hierarchical group Lasso, Jenatton et al. 2011): the outermost rows
are in every band of their axis, so they are penalised most and zeros come from the outside
in, the only order in which a dense kernel can drop them. A kernel without spatial axes
(Dense) has no BORDERS groups. `border_bands` lists them.
"""

from __future__ import annotations

import enum

import keras
import numpy as np
from keras import ops


class Structure(str, enum.Enum):
    """A kind of group of weights that SSL drives to zero as a whole."""

    FILTERS = "filters"
    CHANNELS = "channels"
    SHAPES = "shapes"
    BORDERS = "borders"
    DEPTH = "depth"

    @classmethod
    def parse(cls, value: Structure | str) -> Structure:
        """Returns the member for `value` ("filters", Structure.FILTERS, ...)."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(
                "Unknown structure. Expected one of "
                f"{[s.value for s in cls]}. Received: structure={value!r}"
            ) from None


def normalize_axes(rank: int, in_axis: int, out_axis: int) -> tuple[int, int]:
    """Validates `in_axis` / `out_axis` for a kernel of `rank` and makes them non-negative."""
    if rank < 2:
        raise ValueError(
            "Group Lasso needs a kernel of rank >= 2 (…, input channels, output units). "
            f"Received: a tensor of rank {rank}."
        )
    axes = []
    for name, axis in (("in_axis", in_axis), ("out_axis", out_axis)):
        if not isinstance(axis, (int, np.integer)) or isinstance(axis, (bool, np.bool_)):
            raise ValueError(f"`{name}` must be an integer. Received: {name}={axis!r}")
        if not -rank <= axis < rank:
            raise ValueError(
                f"`{name}` is out of range for a kernel of rank {rank}. Expected an integer in "
                f"[{-rank}, {rank - 1}]. Received: {name}={axis}"
            )
        axes.append(axis % rank)
    if axes[0] == axes[1]:
        raise ValueError(
            "`in_axis` and `out_axis` must name different axes. "
            f"Received: in_axis={in_axis}, out_axis={out_axis} for rank {rank}."
        )
    return axes[0], axes[1]


def reduction_axes(structure: Structure | str, rank: int, in_axis: int = -2,
                   out_axis: int = -1) -> tuple[int, ...]:
    """The axes summed over to form one group of `structure` in a kernel of `rank`.

    The axes that are not reduced index the groups: FILTERS keeps `out_axis`, CHANNELS keeps
    `in_axis`, SHAPES keeps every axis but `out_axis`, DEPTH keeps none. BORDERS groups are
    bands of the spatial axes, not an axis reduction: see `border_bands`.
    """
    structure = Structure.parse(structure)
    if structure is Structure.BORDERS:
        raise ValueError(
            "The borders groups are bands of rows / columns, not a reduction over axes; use "
            "`border_bands(shape)`. Received: structure='borders'"
        )
    in_axis, out_axis = normalize_axes(rank, in_axis, out_axis)
    every = tuple(range(rank))
    if structure is Structure.FILTERS:
        return tuple(a for a in every if a != out_axis)
    if structure is Structure.CHANNELS:
        return tuple(a for a in every if a != in_axis)
    if structure is Structure.SHAPES:
        return (out_axis,)
    return every


def group_size(structure: Structure | str, shape, in_axis: int = -2, out_axis: int = -1) -> int:
    """The number of weights in one group of `structure` for a kernel of `shape`."""
    axes = reduction_axes(structure, len(shape), in_axis, out_axis)
    return int(np.prod([shape[a] for a in axes])) if axes else 1


def border_bands(shape, in_axis: int = -2,
                 out_axis: int = -1) -> list[tuple[int, tuple[int, ...]]]:
    """The BORDERS groups of a kernel of `shape`, as `(axis, indices)` along one spatial axis.

    For every spatial axis `a` (all but `in_axis` and `out_axis`) of length `k` and every
    depth `d = 1..(k - 1) // 2`: the band of the outer `d` rows on both sides, indices
    `0..d-1` and `k-d..k-1` (symmetric, so a zero band crops a 5x5 kernel to 3x5 / 3x3, never
    to a lopsided 4x2). Ordered by depth first (smaller bands first, as a proximal step over
    nested groups wants).

    Example:
    >>> border_bands((5, 3, 2, 4))
    [(0, (0, 4)), (1, (0, 2)), (0, (0, 1, 3, 4))]
    """
    in_axis, out_axis = normalize_axes(len(shape), in_axis, out_axis)
    spatial = [a for a in range(len(shape)) if a not in (in_axis, out_axis)]
    deepest = max(((int(shape[a]) - 1) // 2 for a in spatial), default=0)
    return [(a, tuple(range(d)) + tuple(range(int(shape[a]) - d, int(shape[a]))))
            for d in range(1, deepest + 1) for a in spatial if d <= (int(shape[a]) - 1) // 2]


def border_sizes(shape, in_axis: int = -2, out_axis: int = -1) -> np.ndarray:
    """The number of weights in each group of `border_bands(shape)`."""
    total = int(np.prod(shape))
    return np.array([total // int(shape[a]) * len(index)
                     for a, index in border_bands(shape, in_axis, out_axis)], dtype=np.int64)


def group_norms(kernel, structure: Structure | str, in_axis: int = -2,
                out_axis: int = -1) -> np.ndarray:
    """Returns the L2 norm of every group of `structure` in `kernel`, as a NumPy array.

    The same grouping as `GroupLasso`, without its epsilon: a group that is all zero has norm
    exactly 0.

    Args:
        kernel: a kernel in Keras layout (a NumPy array, a tensor or a Keras variable).
        structure: "filters", "channels", "shapes", "borders" or "depth" (or a `Structure`).
        in_axis: the axis of input channels (-2 in Keras layout).
        out_axis: the axis of output units / filters (-1 in Keras layout).

    Returns:
        FILTERS: shape `(n_out,)`; CHANNELS: `(c_in,)`; SHAPES: the kernel's shape without
        `out_axis`; BORDERS: one per `border_bands` entry, in that order; DEPTH: shape `()`.

    Example:
    >>> group_norms(np.ones((3, 3, 2, 4)), "filters")
    array([4.2426405, 4.2426405, 4.2426405, 4.2426405], dtype=float32)
    """
    if isinstance(kernel, keras.layers.Layer):
        raise ValueError(
            "`kernel` must be a weight array (a NumPy array, a tensor or a Keras variable, "
            f"e.g. layer.kernel), not a layer. Received: kernel={kernel.name!r} of type "
            f"{type(kernel).__name__}")
    x = np.asarray(ops.convert_to_numpy(kernel), dtype=np.float64)
    if Structure.parse(structure) is Structure.BORDERS:
        bands = border_bands(x.shape, in_axis, out_axis)
        return np.array([np.sqrt(np.sum(np.square(np.take(x, index, axis=a))))
                         for a, index in bands], dtype=np.float32)
    axes = reduction_axes(structure, x.ndim, in_axis, out_axis)
    return np.sqrt(np.sum(np.square(x), axis=axes)).astype(np.float32)
