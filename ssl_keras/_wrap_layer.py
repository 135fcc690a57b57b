"""Per-layer group Lasso: which kernels of which layer classes carry which coefficients, and
the `StructuredSparsity` wrapper that attaches a `GroupLasso` to them.

Internal to `ssl_keras.wrap` (which re-exports `StructuredSparsity` and `kernel_specs`).
"""

from __future__ import annotations

import keras
from keras import ops

from ssl_keras.registry import lookup
from ssl_keras.regularizers import GroupLasso, _validate_coefficient, _validate_epsilon

_COEFFICIENTS = ("filters", "channels", "shapes", "borders", "depth")
# Border bands only where thin() crops them (Conv1D/2D/3D); elsewhere they would shrink
# weights that no converter removes.
_NO_BORDERS = ("filters", "channels", "shapes", "depth")

# Layer class -> the kernels that carry group Lasso: (attribute, in_axis, out_axis, which
# coefficients apply). Looked up through the MRO, so subclasses of these are supported.
_KERNELS = (
    (keras.layers.Conv1DTranspose, (("kernel", -1, -2, _NO_BORDERS),)),
    (keras.layers.Conv2DTranspose, (("kernel", -1, -2, _NO_BORDERS),)),
    (keras.layers.Conv3DTranspose, (("kernel", -1, -2, _NO_BORDERS),)),
    (keras.layers.SeparableConv1D, (
        ("depthwise_kernel", -2, -1, ("channels", "shapes", "depth")),
        ("pointwise_kernel", -2, -1, ("filters", "channels", "depth")),
    )),
    (keras.layers.SeparableConv2D, (
        ("depthwise_kernel", -2, -1, ("channels", "shapes", "depth")),
        ("pointwise_kernel", -2, -1, ("filters", "channels", "depth")),
    )),
    # Depthwise: one channel is at once an input and an output channel; "filters" and
    # "channels" both act on the channel groups (with the larger of the two coefficients).
    (keras.layers.DepthwiseConv1D, (("kernel", -2, -1, ("depthwise", "shapes", "depth")),)),
    (keras.layers.DepthwiseConv2D, (("kernel", -2, -1, ("depthwise", "shapes", "depth")),)),
    (keras.layers.Conv1D, (("kernel", -2, -1, _COEFFICIENTS),)),
    (keras.layers.Conv2D, (("kernel", -2, -1, _COEFFICIENTS),)),
    (keras.layers.Conv3D, (("kernel", -2, -1, _COEFFICIENTS),)),
    (keras.layers.Dense, (("kernel", -2, -1, _COEFFICIENTS),)),
)


def _registered(layer) -> bool:
    """Whether the registry knows `layer`'s class (through the MRO), or it is an InputLayer.

    apply_ssl(model) leaves such a layer as it is unless `_KERNELS` has its class. The
    registry (ssl_keras.registry) is the one list of pass-through, tied, merging and blocking
    layers, so a class added with `register_layer` is known here too.
    """
    return isinstance(layer, keras.layers.InputLayer) or lookup(layer) is not None


def _supported_names() -> list[str]:
    return [cls.__name__ for cls, _ in _KERNELS]


def kernel_specs(layer) -> tuple | None:
    """The (attribute, in_axis, out_axis, coefficients) of `layer`'s kernels, or None."""
    for cls in type(layer).__mro__:
        for known, specs in _KERNELS:
            if cls is known:
                return specs
    return None


def _check_coefficients(values: dict, where: str = "") -> dict[str, float]:
    out = {}
    for name in _COEFFICIENTS:
        label = f"{where}{name}"
        out[name] = _validate_coefficient(values.get(name, 0.0), label)
    return out


class _Penalty:
    """The group Lasso of one variable (plus the layer's own regulariser, e.g. L2).

    While `owner.ssl_penalty_gradient` is False (set by ProximalGroupLasso for the length of
    a fit), the group Lasso is still in the loss value but contributes no gradient: the
    proximal step applies it instead.
    """

    def __init__(self, owner, regularizer, own=None):
        self.owner = owner
        self.regularizer = regularizer
        self.own = own

    def __call__(self, x):
        loss = self.regularizer(x)
        if not self.owner.ssl_penalty_gradient:
            loss = ops.stop_gradient(loss)
        return loss if self.own is None else self.own(x) + loss


@keras.saving.register_keras_serializable(package="ssl_keras")
class StructuredSparsity(keras.layers.Wrapper):
    """A layer under group Lasso: the layer's outputs, plus the group norms of its kernels.

    The wrapped layer computes exactly what it computes alone; each kernel gets a `GroupLasso`
    (on top of any regulariser it already has), so `model.losses` gains, per kernel,

    `filters * sum_n ||W[..., :, n]|| + channels * sum_c ||W[..., c, :]||
     + shapes * sum_{s, c} ||W[s..., c, :]|| + borders * sum_bands ||band|| + depth * ||W||`
    (the border bands: see `GroupLasso`)

    Supported: Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose (in_axis=-1, out_axis=-2),
    DepthwiseConv1D/2D (filters and channels both act on the channel groups, with the larger
    coefficient), SeparableConv1D/2D (depthwise kernel: channels, shapes; pointwise kernel:
    filters, channels), and their subclasses.

    Args:
        layer: the Keras layer to wrap.
        filters: coefficient of the filter-wise groups, >= 0.
        channels: coefficient of the channel-wise groups, >= 0.
        shapes: coefficient of the shape-wise groups, >= 0.
        depth: coefficient of the whole-kernel group, >= 0.
        borders: coefficient of the nested border bands of a Conv1D/2D/3D kernel (thin()
            crops zero border rows / columns; other layers ignore it), >= 0.
        normalize: multiply each group norm by sqrt(group size) (classic group Lasso).
        epsilon: added under every square root, > 0.
        **kwargs: Layer arguments; `name` defaults to the wrapped layer's name.

    Example:
    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)),
    ...     StructuredSparsity(keras.layers.Conv2D(20, 5), filters=1e-4, channels=1e-4),
    ...     keras.layers.Flatten(),
    ...     keras.layers.Dense(10),
    ... ])
    """

    def __init__(self, layer, filters=0.0, channels=0.0, shapes=0.0, depth=0.0, borders=0.0,
                 normalize=False, epsilon=1e-8, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "`layer` must be a Keras layer instance. "
                f"Received: layer={layer!r} (of type {type(layer).__name__})"
            )
        if isinstance(layer, StructuredSparsity):
            raise ValueError(
                f"Layer '{layer.name}' is already wrapped by StructuredSparsity; wrap the "
                f"inner layer once. Received: layer={layer.name!r}"
            )
        if kernel_specs(layer) is None:
            raise ValueError(
                f"Layer '{layer.name}' of class {type(layer).__name__} has no kernel that "
                f"group Lasso knows how to group. Expected one of {_supported_names()} (or a "
                "subclass). For another layer, put `GroupLasso(...)` on its kernel "
                f"regularizer by hand. Received: layer={type(layer).__name__}"
            )
        kwargs.setdefault("name", layer.name)
        # The wrapped layer's policy, not the global one: a float32 head under mixed_float16
        # (or a float64 layer) would otherwise get inputs cast by the wrapper first.
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        coefficients = _check_coefficients({"filters": filters, "channels": channels,
                                            "shapes": shapes, "borders": borders,
                                            "depth": depth})
        self.filters = coefficients["filters"]
        self.channels = coefficients["channels"]
        self.shapes = coefficients["shapes"]
        self.borders = coefficients["borders"]
        self.depth = coefficients["depth"]
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool. Received: normalize={normalize!r}")
        self.normalize = normalize
        self.epsilon = _validate_epsilon(epsilon)
        self._penalties = {}
        self.ssl_penalty_gradient = True
        # Masks pass through as the wrapped layer passes them (Dense, Conv1D keep a mask):
        # without this Keras warns that the wrapper destroys the mask.
        self.supports_masking = layer.supports_masking

    @property
    def ssl_inner_layer(self):
        """The wrapped layer (what the graph and thin() analyse under the wrapper's name)."""
        return self.layer

    def ssl_regularizers(self) -> dict[str, GroupLasso]:
        """The group Lasso of each kernel attribute with a non-zero coefficient."""
        values = {"filters": self.filters, "channels": self.channels, "shapes": self.shapes,
                  "borders": self.borders, "depth": self.depth,
                  "depthwise": max(self.filters, self.channels)}
        out = {}
        for attribute, in_axis, out_axis, names in kernel_specs(self.layer):
            kwargs = {}
            for name in names:
                target = "channels" if name == "depthwise" else name
                kwargs[target] = values[name]
            if not any(kwargs.values()):
                continue
            out[attribute] = GroupLasso(**kwargs, normalize=self.normalize,
                                        epsilon=self.epsilon, in_axis=in_axis,
                                        out_axis=out_axis)
        return out

    def ssl_penalized_weights(self) -> list[tuple]:
        """(variable, GroupLasso) for every penalised kernel of the built layer."""
        if not self.built:
            return []
        return [(getattr(self.layer, a), r) for a, r in self._penalties.items()]

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        self._attach()
        self.built = True

    def _attach(self):
        if self._penalties:
            return
        self._penalties = self.ssl_regularizers()
        for attribute, regularizer in self._penalties.items():
            variable = getattr(self.layer, attribute)
            variable.regularizer = _Penalty(self, regularizer, variable.regularizer)

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "channels": self.channels,
                       "shapes": self.shapes, "borders": self.borders, "depth": self.depth,
                       "normalize": self.normalize, "epsilon": self.epsilon})
        return config
