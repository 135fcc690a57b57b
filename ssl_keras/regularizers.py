"""GroupLasso: the structured-sparsity regulariser of Wen et al. (NIPS 2016)."""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

from ssl_keras.structures import (
    Structure,
    border_bands,
    group_size,
    normalize_axes,
    reduction_axes,
)


def _is_real(value) -> bool:
    """A real number (Python or NumPy scalar), not a bool and not a string.

    `float()` alone would take `True` as 1.0 and `"0.5"` / `b"0.5"` as 0.5; Keras's own
    regularizers reject both.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _received(name: str, value) -> str:
    """`Received: name=value`, with the type when the value is not a number."""
    if _is_real(value):
        return f"Received: {name}={value!r}"
    return f"Received: {name}={value!r} (of type {type(value).__name__})"


def _validate_coefficient(value, name: str) -> float:
    """A group Lasso coefficient: a real number >= 0 and finite, as a float."""
    if not _is_real(value) or not _finite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative finite float. {_received(name, value)}"
        )
    return float(value)


def _validate_axis(value, name: str) -> int:
    """A kernel axis: an integer (Python or NumPy, not a bool), as an int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ValueError(f"`{name}` must be an integer. {_received(name, value)}")
    return int(value)


def _validate_epsilon(value, name: str = "epsilon") -> float:
    """The constant under every square root: a real number > 0 and finite, as a float."""
    if not _is_real(value) or not _finite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite float > 0. {_received(name, value)}")
    return float(value)


@keras.saving.register_keras_serializable(package="ssl_keras")
class GroupLasso(keras.regularizers.Regularizer):
    """Group Lasso over the structures of a kernel: filters, channels, shapes, borders, depth.

    With the kernel `W` seen as `(spatial..., c_in, n_out)` (Keras layout) and
    `norm(g) = sqrt(sum(g**2) + epsilon)`:

    - `F = sum_n norm(W[..., :, n])`: one group per output filter / unit.
    - `C = sum_c norm(W[..., c, :])`: one group per input channel.
    - `S = sum_{s, c} norm(W[s..., c, :])`: one group per spatial position and input channel
      (a column of the im2col GEMM matrix); for Dense it equals `C`.
    - `B = sum_{a, d} norm(W[:d] and W[-d:] along a)`: for every spatial axis `a` of length
      `k` and `d = 1..(k - 1) // 2`, the outer `d` rows (columns, ...) of both sides, across
      all channels and filters. The bands are nested, so the outermost rows are penalised
      most and zeros come from the outside in; thin() crops zero border rows / columns of
      Conv1D/2D/3D kernels, so the kernel gets smaller (5x5 -> 3x3). 0 for Dense and 1x1
      kernels.
    - `D = norm(W)`: the whole kernel.

    `loss = filters * F + channels * C + shapes * S + borders * B + depth * D`

    With `normalize=True` every norm is multiplied by `sqrt(group size)` (classic group Lasso,
    Yuan & Lin); off by default, as in the method's reference code.

    On a DepthwiseConv2D kernel `(kh, kw, c_in, depth_multiplier)`: CHANNELS groups one input
    channel with all of its `depth_multiplier` outputs (removing it removes the channel);
    FILTERS groups multiplier index `m` across all channels (rarely useful); SHAPES one
    (position, channel) across multipliers. For SeparableConv2D use it as
    `depthwise_regularizer` (channels) and `pointwise_regularizer` (filters, channels).
    For other layouts, declare the axes: a Conv2DTranspose kernel `(kh, kw, n_out, c_in)` is
    `GroupLasso(filters=..., in_axis=-1, out_axis=-2)`.

    Args:
        filters: coefficient of the filter-wise groups (`lambda_n`), >= 0.
        channels: coefficient of the channel-wise groups (`lambda_c`), >= 0.
        shapes: coefficient of the shape-wise groups (`lambda_s`), >= 0.
        depth: coefficient of the whole-kernel group (`lambda_d`), >= 0.
        borders: coefficient of the nested border bands of conv kernels, >= 0.
        normalize: multiply each group's norm by `sqrt(group size)`.
        epsilon: added under every square root so that gradients stay finite at zero, > 0.
        in_axis: the axis of input channels in the kernel (-2 in Keras layout).
        out_axis: the axis of output units / filters in the kernel (-1 in Keras layout).

    Example:
    >>> layer = keras.layers.Conv2D(
    ...     64, 3, kernel_regularizer=GroupLasso(filters=1e-4, channels=1e-4))
    """

    def __init__(self, filters=0.0, channels=0.0, shapes=0.0, depth=0.0, borders=0.0,
                 normalize=False, epsilon=1e-8, in_axis=-2, out_axis=-1):
        self.filters = _validate_coefficient(filters, "filters")
        self.channels = _validate_coefficient(channels, "channels")
        self.shapes = _validate_coefficient(shapes, "shapes")
        self.depth = _validate_coefficient(depth, "depth")
        self.borders = _validate_coefficient(borders, "borders")
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool. Received: normalize={normalize!r}")
        self.normalize = normalize
        self.epsilon = _validate_epsilon(epsilon)
        in_axis = _validate_axis(in_axis, "in_axis")
        out_axis = _validate_axis(out_axis, "out_axis")
        if in_axis == out_axis:
            raise ValueError(
                "`in_axis` and `out_axis` must name different axes. "
                f"Received: in_axis={in_axis}, out_axis={out_axis}"
            )
        self.in_axis = in_axis
        self.out_axis = out_axis
        # False while ProximalGroupLasso applies this penalty as a proximal step: the loss
        # value keeps it, the gradient does not (not part of the config).
        self.ssl_penalty_gradient = True

    def coefficients(self) -> dict[Structure, float]:
        """The non-zero coefficients, by structure."""
        values = {
            Structure.FILTERS: self.filters,
            Structure.CHANNELS: self.channels,
            Structure.SHAPES: self.shapes,
            Structure.BORDERS: self.borders,
            Structure.DEPTH: self.depth,
        }
        return {s: c for s, c in values.items() if c != 0.0}

    def __call__(self, x):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ValueError("GroupLasso is called on a weight tensor (a kernel). Received: "
                             f"x of type {type(x).__name__}")
        if "float" not in str(x.dtype):
            raise ValueError("GroupLasso needs a floating-point kernel. "
                             f"Received: a kernel of dtype {x.dtype}")
        normalize_axes(len(x.shape), self.in_axis, self.out_axis)
        # float16 / bfloat16 kernels: square sums overflow or lose the small groups.
        dtype = "float32" if x.dtype in ("float16", "bfloat16") else x.dtype
        if x.dtype != dtype:
            x = ops.cast(x, dtype)
        squares = ops.square(x)  # shared by every structure: one pass over the kernel
        loss = ops.convert_to_tensor(0.0, dtype=dtype)
        for structure, coefficient in self.coefficients().items():
            if structure is Structure.BORDERS:
                loss = loss + coefficient * self._borders(squares)
                continue
            axes = reduction_axes(structure, len(x.shape), self.in_axis, self.out_axis)
            sums = ops.sum(squares, axis=axes)
            total = ops.sum(ops.sqrt(sums + self.epsilon))
            if self.normalize:
                size = group_size(structure, x.shape, self.in_axis, self.out_axis)
                total = total * math.sqrt(size)
            loss = loss + coefficient * total
        if not self.ssl_penalty_gradient:
            loss = ops.stop_gradient(loss)
        return loss

    def _borders(self, squares):
        """The sum of the border bands' norms, from the per-row sums of squares of each axis."""
        shape = tuple(int(n) for n in squares.shape)
        total = 0.0
        rows = {}
        for axis, index in border_bands(shape, self.in_axis, self.out_axis):
            if axis not in rows:
                rows[axis] = ops.sum(squares, axis=[b for b in range(len(shape)) if b != axis])
            norm = ops.sqrt(ops.sum(ops.take(rows[axis], list(index))) + self.epsilon)
            if self.normalize:
                norm = norm * math.sqrt(math.prod(shape) // shape[axis] * len(index))
            total = total + norm
        return total

    def get_config(self):
        return {
            "filters": self.filters,
            "channels": self.channels,
            "shapes": self.shapes,
            "borders": self.borders,
            "depth": self.depth,
            "normalize": self.normalize,
            "epsilon": self.epsilon,
            "in_axis": self.in_axis,
            "out_axis": self.out_axis,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"GroupLasso({args})"
