"""Layer registry: how each layer class couples the channels of its inputs and outputs.

The whole coupling model of `ssl_keras.graph` rests on one `LayerSpec` per layer class,
looked up through the class MRO (a subclass of `Dense` is a `Dense`). A spec has a `Kind`:

| kind        | channels                                   | examples                          |
|-------------|--------------------------------------------|-----------------------------------|
| PRODUCER    | reads input channels (consumer slices),    | Dense, Conv1D/2D/3D, Conv*Transpose,|
|             | creates new output channels (kernel, bias) | SeparableConv1D/2D, Embedding     |
| TIED        | output channel `c` is input channel `c`    | BatchNormalization, PReLU,        |
|             | (or a block of `depth_multiplier` outputs) | DepthwiseConv1D/2D, Normalization |
|             | and owns weight slices for it              |                                   |
| PASSTHROUGH | output channel `c` is input channel `c`    | ReLU, Dropout, pooling, padding,  |
|             |                                            | Reshape keeping the last axis     |
| GLOBAL_POOL | as PASSTHROUGH; the spatial axes go away   | GlobalAveragePooling2D            |
| MERGE_TIE   | channel `c` of every operand is one channel| Add, Subtract, Multiply, Maximum  |
| CONCAT      | channel axis: output = operands end to end | Concatenate                       |
| FLATTEN     | channel `c` of `(..., C)` -> positions     | Flatten                           |
|             | `c, c + C, c + 2C, ...` of the flat vector |                                   |
| BLOCK       | channels that reach it cannot be removed   | LayerNormalization, Dot,          |
|             | (the spec's `reason` says why)             | attention layers                  |

Users declare their own layers with `register_layer(cls, spec)`. A layer whose class (and
every base class) is unregistered is never treated as pass-through: it blocks the channels
that reach it, or raises with `strict=True`.
"""

from __future__ import annotations

import math

import keras
from keras import layers as L

from ssl_keras._constant_add import ConstantAdd
from ssl_keras._registry_spec import Check as Check  # importable from here as before
from ssl_keras._registry_spec import Kind, LayerSpec, WeightSlice

__all__ = [
    "Kind",
    "LayerSpec",
    "WeightSlice",
    "builtin_classes",
    "lookup",
    "register_layer",
    "registered_classes",
    "unregistered_message",
]


_REGISTRY: dict[type, LayerSpec] = {}


def register_layer(cls: type, spec: LayerSpec, overwrite: bool = False) -> None:
    """Declares how a layer class couples channels, for `removable_groups` and `apply_ssl`.

    Subclasses of `cls` inherit the spec (lookup follows the MRO) unless registered
    themselves.

    Args:
        cls: a subclass of `keras.Operation` (usually of `keras.layers.Layer`).
        spec: a `LayerSpec`.
        overwrite: replace an existing entry for exactly `cls` (otherwise an error).

    Example:
    >>> class Swish(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x * keras.ops.sigmoid(x)
    >>> register_layer(Swish, LayerSpec(Kind.PASSTHROUGH))
    """
    if not isinstance(cls, type) or not issubclass(cls, keras.Operation):
        raise ValueError(
            "`cls` must be a layer class (a subclass of keras.layers.Layer or keras.Operation)."
            f" Received: cls={cls!r}"
        )
    if not isinstance(spec, LayerSpec):
        raise ValueError(
            "`spec` must be an ssl_keras.registry.LayerSpec, e.g. LayerSpec(Kind.PASSTHROUGH). "
            f"Received: spec={spec!r}"
        )
    if cls in _REGISTRY and not overwrite:
        raise ValueError(
            f"{cls.__name__} is already registered. Pass overwrite=True to replace its spec. "
            f"Received: cls={cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[cls] = spec


def lookup(obj) -> tuple[type, LayerSpec] | None:
    """Returns `(registered class, spec)` for a layer, an operation or a class, or None.

    The first class of `type(obj).__mro__` (or `obj.__mro__`) that is registered wins.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    for base in cls.__mro__:
        if base in _REGISTRY:
            return base, _REGISTRY[base]
    return None


# What a subclass overrides to compute something else: call(), and the hook Keras's conv
# layers document for a custom convolution (a weight-standardised conv, say).
_COMPUTE_HOOKS = ("call", "convolution_op")


def overridden_call(layer, registered: type) -> str | None:
    """The reason a layer blocks when its class reaches `registered` (its spec) through
    inheritance but redefines `call` (or a conv's `convolution_op`) on the way: the spec
    describes `registered`'s channels, not what the subclass computes (a Dense subclass that
    mixes its units, a weight-standardised conv, Keras's ReversibleEmbedding). None when no
    class between them defines one of them."""
    cls = type(layer)
    mro = cls.__mro__
    between = mro[:mro.index(registered)] if registered in mro else ()
    own = [f"{name}() in {c.__name__}" for c in between for name in _COMPUTE_HOOKS
           if name in vars(c)]
    if not own:
        return None
    return (f"class {cls.__name__} inherits the {registered.__name__} spec but overrides "
            f"{', '.join(own)}, so the spec need not describe its channels: "
            f"register {cls.__name__} with ssl_keras.register_layer")


def undeclared_weights(layer, spec: LayerSpec) -> str | None:
    """Weights (not scalars) that the spec does not slice: LoRA factors, a quantized kernel's
    scales, BatchNormalization(renorm=True)'s statistics. Removing a channel would leave them
    whole, so the layer blocks."""
    declared = {s.weight for s in spec.consumes + spec.produces + spec.bias + spec.tied}
    extra = sorted({v.name for v in layer.weights
                    if v.name not in declared and math.prod(v.shape) > 1})
    if not extra:
        return None
    return (f"owns weights {extra} that its LayerSpec does not declare, so they would not be "
            "sliced with the channels (LoRA, quantization, BatchNormalization renorm, or a "
            "registered layer's spec that misses them)")


def registered_classes() -> list[type]:
    """Every registered class, in registration order."""
    return list(_REGISTRY)


def builtin_classes() -> list[type]:
    """The classes ssl_keras registers itself (each one has a test case in tests/)."""
    return list(_BUILTINS)


def _layer_summary() -> str:
    """'<n> registered layer classes (e.g. Dense, ...)', short, for error messages.

    Counts the registered `keras.layers.Layer` classes (user registrations included) and
    names the first one of each `Kind`, so the text follows the registry.
    """
    layers = [cls for cls in _REGISTRY if issubclass(cls, keras.layers.Layer)]
    examples = []
    for kind in Kind:
        first = next((cls for cls in layers if _REGISTRY[cls].kind is kind), None)
        if first is not None:
            examples.append(first.__name__)
    return f"{len(layers)} registered layer classes (e.g. {', '.join(examples)})"


def unregistered_message(name: str, layer) -> str:
    """The error text for a layer whose class is not registered (names, classes, remedy)."""
    cls = type(layer)
    return (
        f"Layer '{name}' (class {cls.__module__}.{cls.__qualname__}) is not registered in "
        "ssl_keras, so its channel coupling is unknown. Supported classes (and their "
        f"subclasses): {_layer_summary()}; ssl_keras.registry.registered_classes() lists "
        "them all. Register it: "
        f"ssl_keras.register_layer({cls.__name__}, ssl_keras.LayerSpec(ssl_keras.Kind."
        "PASSTHROUGH)) if it has no weights and output channel c depends only on input "
        "channel c (Kind.TIED if it has per-channel weights), or Kind.BLOCK and a reason."
    )


# ----------------------------------------------------------------------------- checks


def _channels_first(layer, shapes):
    if getattr(layer, "data_format", None) == "channels_first":
        return "data_format='channels_first' is not supported (channels are the last axis)"
    return None


def _last_axis(attr: str):
    def check(layer, shapes):
        reason = _channels_first(layer, shapes)
        if reason:
            return reason
        axis = getattr(layer, attr)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        rank = len(shapes[0]) if shapes and shapes[0] is not None else None
        if rank is None or len(axes) != 1 or axes[0] not in (-1, rank - 1):
            return f"{attr}={axis!r} is not the channel (last) axis"
        return None

    return check


def _keeps_last_axis(what: str):
    """Reshape / Permute keep channel `c` at position `c` when the last axis is untouched."""

    def check(layer, shapes):
        if what == "reshape":
            target = tuple(layer.target_shape)
            last = shapes[0][-1] if shapes and shapes[0] is not None else None
            if len(getattr(layer, "_inbound_nodes", ())) > 1:
                # thin writes the kept channel count into target_shape: one count for all calls
                return "a shared Reshape: its target_shape names one channel count for every call"
            if last is not None and target and target[-1] == last:
                return None
            return f"reshapes the channel axis (target_shape={target})"
        dims = tuple(layer.dims)
        if dims and dims[-1] == len(dims):
            return None
        return f"moves the channel axis (dims={dims})"

    return check


def _embedding(layer, shapes):
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        return "quantized or LoRA embeddings are not analysed"
    return None


def _grouped(layer, shapes):
    reason = _channels_first(layer, shapes)
    if reason:
        return reason
    groups = getattr(layer, "groups", 1) or 1
    if groups > 1:
        return (
            f"grouped convolution (groups={groups}): channels can only be removed evenly from "
            "every group, not one at a time"
        )
    return None


# keras.activations that act on each value alone: a channel's output depends on that channel
# only. Any other activation (softmax, sparsemax, glu, a user's function) may mix channels.
ELEMENTWISE_ACTIVATIONS = frozenset({
    "celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu",
    "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "mish", "relu", "relu6",
    "selu", "sigmoid", "silu", "soft_shrink", "softplus", "softsign", "sparse_plus",
    "sparse_sigmoid", "squareplus", "swish", "tanh", "tanh_shrink", "threshold",
})


def activation_reason(fn) -> str | None:
    """None for a missing or element-wise activation; else why it blocks channel removal."""
    if fn is None:
        return None
    name = getattr(fn, "__name__", None)
    if name in ELEMENTWISE_ACTIVATIONS:
        return None
    if name in ("softmax", "log_softmax", "sparsemax"):
        return f"activation '{name}' normalises over the channel axis"
    if name == "glu":
        return "activation 'glu' gates one half of the channel axis with the other"
    return (f"activation {name or type(fn).__name__!r} is not one of Keras's element-wise "
            "activations, so removing a channel could change the others; to thin through it, "
            "move it into a layer registered as Kind.PASSTHROUGH")


def _activation(layer, shapes):
    return activation_reason(getattr(layer, "activation", None))


def _prelu(layer, shapes):
    shared = getattr(layer, "shared_axes", None) or []
    rank = len(shapes[0]) if shapes and shapes[0] is not None else None
    if rank is not None and any(a in (-1, rank - 1) for a in shared):
        return "PReLU shares its alpha across the channel axis"
    return None


def _normalization(layer, shapes):
    """keras.layers.Normalization: a per-channel mean and variance, as weights."""
    reason = _channels_first(layer, shapes)
    if reason:
        return reason
    axis = tuple(layer.axis) if isinstance(layer.axis, (list, tuple)) else (layer.axis,)
    rank = len(shapes[0]) if shapes and shapes[0] is not None else None
    if rank is None or len(axis) != 1 or axis[0] not in (-1, rank - 1):
        return f"axis={axis!r} is not only the channel (last) axis"
    if getattr(layer, "input_mean", None) is not None:
        return "its mean and variance are constants of its config, not weights"
    return None


def _rescaling(layer, shapes):
    for attr in ("scale", "offset"):
        value = getattr(layer, attr, 0)
        if hasattr(value, "shape") and len(value.shape) > 0 or isinstance(value, (list, tuple)):
            return f"Rescaling with a per-channel {attr} (a vector, not a scalar)"
    return None


def _last_axis_free(attr: str):
    """Softmax-like layers: normalising over the channel axis blocks."""

    def check(layer, shapes):
        axis = getattr(layer, attr)
        axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
        rank = len(shapes[0]) if shapes and shapes[0] is not None else None
        if rank is None or any(a in (-1, rank - 1) for a in axes):
            return f"{attr}={axis!r} normalises over the channel axis"
        return None

    return check


# ----------------------------------------------------------------------------- built-ins

_K = WeightSlice("kernel", -1)
_B = WeightSlice("bias", 0, penalize=False, optional=True)


def _producer(consumes, produces=(_K,), bias=(_B,), check=_grouped):
    return LayerSpec(Kind.PRODUCER, consumes=consumes, produces=produces, bias=bias, check=check)


_CONV = _producer((WeightSlice("kernel", -2),))
_CONV_T = _producer((WeightSlice("kernel", -1),), produces=(WeightSlice("kernel", -2),))
_SEPARABLE = _producer(
    (WeightSlice("depthwise_kernel", -2),
     WeightSlice("pointwise_kernel", -2, block="depth_multiplier")),
    produces=(WeightSlice("pointwise_kernel", -1),),
)
_DEPTHWISE = LayerSpec(
    Kind.TIED,
    tied=(WeightSlice("kernel", -2),
          WeightSlice("bias", 0, block="depth_multiplier", penalize=False, optional=True)),
    expand="depth_multiplier",
    check=_channels_first,
)
_BN = LayerSpec(
    Kind.TIED,
    tied=(WeightSlice("gamma", 0, optional=True),
          WeightSlice("beta", 0, penalize=False, optional=True),
          WeightSlice("moving_mean", 0, penalize=False),
          WeightSlice("moving_variance", 0, penalize=False)),
    check=_last_axis("axis"),
)
_PASS = LayerSpec(Kind.PASSTHROUGH, check=_channels_first)
_PASS_UNSAFE = LayerSpec(Kind.PASSTHROUGH, affine_safe=False, check=_channels_first)


def _register_builtins():
    for cls in (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D):
        register_layer(cls, _CONV)
    register_layer(L.Embedding, LayerSpec(
        Kind.PRODUCER, produces=(WeightSlice("embeddings", -1),), check=_embedding))
    for cls in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose):
        register_layer(cls, _CONV_T)
    for cls in (L.SeparableConv1D, L.SeparableConv2D):
        register_layer(cls, _SEPARABLE)
    for cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        register_layer(cls, _DEPTHWISE)
    register_layer(L.BatchNormalization, _BN)
    # Usually on the model's input (keras.applications' EfficientNets), whose channels are
    # never removed; registered so that apply_ssl accepts such models.
    register_layer(L.Normalization, LayerSpec(
        Kind.TIED, tied=(WeightSlice("mean", -1, penalize=False),
                         WeightSlice("variance", -1, penalize=False)), check=_normalization))
    # What thin adds where a removed channel's constant cannot go into a bias: x + value,
    # value per channel (or a map whose last axis is the channels), sliced with them.
    register_layer(ConstantAdd, LayerSpec(
        Kind.TIED, tied=(WeightSlice("value", -1, penalize=False),)))
    register_layer(L.PReLU, LayerSpec(
        Kind.TIED, tied=(WeightSlice("alpha", -1, penalize=False),), check=_prelu))
    for cls in (L.ReLU, L.LeakyReLU, L.ELU, L.Identity, L.ActivityRegularization,
                L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
                L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
                L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
                L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
                L.Cropping1D, L.Cropping2D, L.Cropping3D,
                L.UpSampling1D, L.UpSampling2D, L.UpSampling3D):
        register_layer(cls, _PASS)
    # Keras 3.10+: pooling to a fixed output size, each channel on its own (a constant
    # channel stays that constant under an average or a max).
    for name in ("AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D",
                 "AdaptiveAveragePooling3D", "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D",
                 "AdaptiveMaxPooling3D"):
        if hasattr(L, name):
            register_layer(getattr(L, name), _PASS)
    for cls in (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D):
        register_layer(cls, _PASS_UNSAFE)
    register_layer(L.Activation, LayerSpec(Kind.PASSTHROUGH, check=_activation))
    register_layer(L.Softmax, LayerSpec(Kind.PASSTHROUGH, check=_last_axis_free("axis")))
    register_layer(L.Rescaling, LayerSpec(Kind.PASSTHROUGH, check=_rescaling))
    register_layer(L.Reshape, LayerSpec(Kind.PASSTHROUGH, check=_keeps_last_axis("reshape")))
    register_layer(L.Permute, LayerSpec(Kind.PASSTHROUGH, check=_keeps_last_axis("permute")))
    for cls in (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
                L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D):
        register_layer(cls, LayerSpec(Kind.GLOBAL_POOL, check=_channels_first))
    for cls in (L.Add, L.Subtract, L.Maximum, L.Minimum, L.Average):
        register_layer(cls, LayerSpec(Kind.MERGE_TIE))
    register_layer(L.Multiply, LayerSpec(Kind.MERGE_TIE, affine_safe=False))
    register_layer(L.Concatenate, LayerSpec(Kind.CONCAT))
    register_layer(L.Flatten, LayerSpec(Kind.FLATTEN, check=_channels_first))
    blocks = {
        L.LayerNormalization: "normalises over channels",
        L.GroupNormalization: "normalises over groups of channels",
        L.UnitNormalization: "normalises over channels",
        L.RMSNormalization: "normalises over channels",
        L.RepeatVector: "changes the meaning of the axes",
        L.Dot: "mixes channels in a dot product",
        L.EinsumDense: "einsum kernels are not analysed",
        L.MultiHeadAttention: "attention mixes channels",
        L.Attention: "attention mixes channels",
        L.AdditiveAttention: "attention mixes channels",
        L.GroupQueryAttention: "attention mixes channels",
        L.Masking: "computes its mask over all channels",
    }
    for cls, reason in blocks.items():
        register_layer(cls, LayerSpec(Kind.BLOCK, reason=reason))
    _register_ops()


def _register_ops():
    """Operations that the functional API records for `x + y`, `keras.ops.relu(x)`, ..."""
    from keras.src.ops import nn as ops_nn
    from keras.src.ops import numpy as ops_np

    merges = {"Add": True, "Subtract": True, "Maximum": True, "Minimum": True,
              "Multiply": False}
    for name, safe in merges.items():
        cls = getattr(ops_np, name, None)
        if cls is not None:
            register_layer(cls, LayerSpec(Kind.MERGE_TIE, affine_safe=safe))
    elementwise = [getattr(ops_nn, n, None) for n in
                   ("Relu", "Relu6", "Sigmoid", "Silu", "Gelu", "LeakyRelu", "Elu")]
    elementwise.append(getattr(ops_np, "Tanh", None))
    for cls in elementwise:
        if cls is not None:
            register_layer(cls, LayerSpec(Kind.PASSTHROUGH))


_register_builtins()
_BUILTINS = tuple(_REGISTRY)
