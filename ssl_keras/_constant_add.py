"""`ConstantAdd`, the one layer class `thin` adds to a model (see ssl_keras.thin).

In its own module so that the registry (which thin imports) can register it: a thinned model
goes through apply_ssl and thin again, and its channels pass through these layers.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


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
        given = shape
        ints = isinstance(shape, (list, tuple, np.ndarray)) and np.ndim(shape) == 1 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_))
            for s in shape)
        shape = tuple(int(s) for s in shape) if ints else ()
        if not shape or any(s < 1 for s in shape):
            raise ValueError(
                f"`shape` must be a non-empty tuple of positive sizes. Received: shape={given!r}"
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
