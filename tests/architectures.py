"""Keras models shared by several test modules (a plain helper module, not a test module).

- LAYER_CASES: one small model per class of the layer registry, built with `chain` / `merge`;
  each model's layer of that class is named "x". Used by test_graph.py, test_wrap.py and
  test_groups_check.py.
- conv_bn_relu_conv, randomize, zero_filters, zero_slices, zero_random_groups: a hand-built
  model and helpers that zero some of its channel groups. Used by test_thin.py and
  test_groups_check.py.
"""

import keras
import numpy as np
from keras import layers as L
from keras import ops
from keras.src.ops import nn as ops_nn
from keras.src.ops import numpy as ops_np

import ssl_keras

# --------------------------------------------------------------- one model per class


def _producer(rank, filters, name):
    """A layer creating `filters` channels on a tensor of `rank` (batch included)."""
    if rank == 2:
        return L.Dense(filters, name=name)
    return {3: L.Conv1D, 4: L.Conv2D, 5: L.Conv3D}[rank](filters, 1, name=name)


def chain(layer, spatial=(6, 6), channels=4):
    """input -> pre (producer, `channels`) -> layer -> post (Dense 2)."""
    inputs = keras.Input(spatial + (3,), name="input")
    x = _producer(len(spatial) + 2, channels, "pre")(inputs)
    x = layer(x)
    return keras.Model(inputs, L.Dense(2, name="post")(x))


def merge(fn, spatial=(5, 5), widths=(4, 4)):
    """input -> pre (widths[0]) and pre_b (widths[1]) -> fn([a, b]) -> post (Dense 2)."""
    inputs = keras.Input(spatial + (3,), name="input")
    a = _producer(len(spatial) + 2, widths[0], "pre")(inputs)
    b = _producer(len(spatial) + 2, widths[1], "pre_b")(inputs)
    return keras.Model(inputs, L.Dense(2, name="post")(fn(a, b)))


def _constant_add():
    """What thin adds (a constant map on a 6x6x4 tensor): thinned models are thinned again."""
    model = chain(ssl_keras.ConstantAdd((6, 6, 4), name="x"))
    layer = model.get_layer("x")
    layer.set_weights([np.random.default_rng(0).normal(size=(6, 6, 4)).astype("float32")])
    return model


def _normalization():
    model = chain(L.Normalization(name="x"))
    layer, rng = model.get_layer("x"), np.random.default_rng(0)
    layer.set_weights([rng.normal(size=(4,)).astype("float32"),  # mean, variance, count
                       rng.uniform(0.5, 2.0, (4,)).astype("float32"), np.array(10.0)])
    layer.finalize_state()  # what Keras does when it loads weights
    return model


def _embedding():
    inputs = keras.Input((5,), dtype="int32")
    x = L.Embedding(10, 4, name="x")(inputs)
    return keras.Model(inputs, L.Dense(2, name="post")(x))


LAYER_CASES = {
    # producers
    L.Dense: lambda: chain(L.Dense(3, name="x"), spatial=()),
    L.Conv1D: lambda: chain(L.Conv1D(3, 3, padding="same", name="x"), spatial=(6,)),
    L.Conv2D: lambda: chain(L.Conv2D(3, 3, name="x")),
    L.Conv3D: lambda: chain(L.Conv3D(3, 2, name="x"), spatial=(3, 3, 3)),
    L.Embedding: _embedding,
    L.Conv1DTranspose: lambda: chain(L.Conv1DTranspose(3, 2, name="x"), spatial=(4,)),
    L.Conv2DTranspose: lambda: chain(L.Conv2DTranspose(3, 2, strides=2, name="x"),
                                     spatial=(3, 3)),
    L.Conv3DTranspose: lambda: chain(L.Conv3DTranspose(3, 2, name="x"), spatial=(2, 2, 2)),
    L.SeparableConv1D: lambda: chain(L.SeparableConv1D(3, 3, depth_multiplier=2, name="x"),
                                     spatial=(6,)),
    L.SeparableConv2D: lambda: chain(L.SeparableConv2D(3, 3, depth_multiplier=2, name="x")),
    # tied
    L.DepthwiseConv1D: lambda: chain(L.DepthwiseConv1D(3, depth_multiplier=2, name="x"),
                                     spatial=(6,)),
    L.DepthwiseConv2D: lambda: chain(L.DepthwiseConv2D(3, depth_multiplier=2, name="x")),
    L.BatchNormalization: lambda: chain(L.BatchNormalization(name="x")),
    L.PReLU: lambda: chain(L.PReLU(name="x")),
    L.Normalization: lambda: _normalization(),
    ssl_keras.ConstantAdd: lambda: _constant_add(),
    # pass-through
    L.ReLU: lambda: chain(L.ReLU(name="x")),
    L.LeakyReLU: lambda: chain(L.LeakyReLU(name="x")),
    L.ELU: lambda: chain(L.ELU(name="x")),
    L.Identity: lambda: chain(L.Identity(name="x")),
    L.ActivityRegularization: lambda: chain(L.ActivityRegularization(name="x")),
    L.Activation: lambda: chain(L.Activation("tanh", name="x")),
    L.Softmax: lambda: chain(L.Softmax(axis=1, name="x")),
    L.Rescaling: lambda: chain(L.Rescaling(2.0, offset=0.5, name="x")),
    L.Dropout: lambda: chain(L.Dropout(0.5, name="x")),
    L.SpatialDropout1D: lambda: chain(L.SpatialDropout1D(0.5, name="x"), spatial=(6,)),
    L.SpatialDropout2D: lambda: chain(L.SpatialDropout2D(0.5, name="x")),
    L.SpatialDropout3D: lambda: chain(L.SpatialDropout3D(0.5, name="x"), spatial=(3, 3, 3)),
    L.GaussianNoise: lambda: chain(L.GaussianNoise(0.5, name="x")),
    L.GaussianDropout: lambda: chain(L.GaussianDropout(0.5, name="x")),
    L.AlphaDropout: lambda: chain(L.AlphaDropout(0.5, name="x")),
    L.MaxPooling1D: lambda: chain(L.MaxPooling1D(2, name="x"), spatial=(6,)),
    L.MaxPooling2D: lambda: chain(L.MaxPooling2D(2, name="x")),
    L.MaxPooling3D: lambda: chain(L.MaxPooling3D(2, name="x"), spatial=(4, 4, 4)),
    L.AveragePooling1D: lambda: chain(L.AveragePooling1D(2, name="x"), spatial=(6,)),
    L.AveragePooling2D: lambda: chain(L.AveragePooling2D(2, name="x")),
    L.AveragePooling3D: lambda: chain(L.AveragePooling3D(2, name="x"), spatial=(4, 4, 4)),
    L.Cropping1D: lambda: chain(L.Cropping1D(1, name="x"), spatial=(6,)),
    L.Cropping2D: lambda: chain(L.Cropping2D(1, name="x")),
    L.Cropping3D: lambda: chain(L.Cropping3D(1, name="x"), spatial=(3, 3, 3)),
    L.UpSampling1D: lambda: chain(L.UpSampling1D(2, name="x"), spatial=(3,)),
    L.UpSampling2D: lambda: chain(L.UpSampling2D(2, name="x"), spatial=(3, 3)),
    L.UpSampling3D: lambda: chain(L.UpSampling3D(2, name="x"), spatial=(2, 2, 2)),
    **{getattr(L, f"Adaptive{kind}Pooling{d}D"): (
        lambda kind=kind, d=d: chain(getattr(L, f"Adaptive{kind}Pooling{d}D")((2,) * d,
                                                                          name="x"),
                                     spatial=(5,) * d))
       for kind in ("Average", "Max") for d in (1, 2, 3)
       if hasattr(L, f"Adaptive{kind}Pooling{d}D")},
    L.ZeroPadding1D: lambda: chain(L.ZeroPadding1D(1, name="x"), spatial=(6,)),
    L.ZeroPadding2D: lambda: chain(L.ZeroPadding2D(1, name="x")),
    L.ZeroPadding3D: lambda: chain(L.ZeroPadding3D(1, name="x"), spatial=(2, 2, 2)),
    L.GlobalAveragePooling1D: lambda: chain(L.GlobalAveragePooling1D(name="x"), spatial=(6,)),
    L.GlobalAveragePooling2D: lambda: chain(L.GlobalAveragePooling2D(name="x")),
    L.GlobalAveragePooling3D: lambda: chain(L.GlobalAveragePooling3D(name="x"),
                                            spatial=(2, 2, 2)),
    L.GlobalMaxPooling1D: lambda: chain(L.GlobalMaxPooling1D(name="x"), spatial=(6,)),
    L.GlobalMaxPooling2D: lambda: chain(L.GlobalMaxPooling2D(name="x")),
    L.GlobalMaxPooling3D: lambda: chain(L.GlobalMaxPooling3D(name="x"), spatial=(2, 2, 2)),
    # merges
    L.Add: lambda: merge(lambda a, b: L.Add(name="x")([a, b])),
    L.Subtract: lambda: merge(lambda a, b: L.Subtract(name="x")([a, b])),
    L.Multiply: lambda: merge(lambda a, b: L.Multiply(name="x")([a, b])),
    L.Maximum: lambda: merge(lambda a, b: L.Maximum(name="x")([a, b])),
    L.Minimum: lambda: merge(lambda a, b: L.Minimum(name="x")([a, b])),
    L.Average: lambda: merge(lambda a, b: L.Average(name="x")([a, b])),
    L.Concatenate: lambda: merge(lambda a, b: L.Concatenate(name="x")([a, b]), widths=(4, 2)),
    L.Flatten: lambda: chain(L.Flatten(name="x"), spatial=(3, 3)),
    L.Reshape: lambda: chain(L.Reshape((-1, 4), name="x")),
    L.Permute: lambda: chain(L.Permute((2, 1, 3), name="x")),
    # operations recorded by the functional API
    ops_np.Add: lambda: merge(lambda a, b: a + b),
    ops_np.Subtract: lambda: merge(lambda a, b: ops.subtract(a, b)),
    ops_np.Multiply: lambda: merge(lambda a, b: ops.multiply(a, b)),
    ops_np.Maximum: lambda: merge(lambda a, b: ops.maximum(a, b)),
    ops_np.Minimum: lambda: merge(lambda a, b: ops.minimum(a, b)),
    ops_nn.Relu: lambda: chain(ops.relu),
    ops_nn.Relu6: lambda: chain(ops.relu6),
    ops_nn.Sigmoid: lambda: chain(ops.sigmoid),
    ops_nn.Silu: lambda: chain(ops.silu),
    ops_nn.Gelu: lambda: chain(ops.gelu),
    ops_nn.LeakyRelu: lambda: chain(ops.leaky_relu),
    ops_nn.Elu: lambda: chain(ops.elu),
    ops_np.Tanh: lambda: chain(ops.tanh),
    # blocking
    L.LayerNormalization: lambda: chain(L.LayerNormalization(name="x")),
    L.GroupNormalization: lambda: chain(L.GroupNormalization(groups=2, name="x")),
    L.UnitNormalization: lambda: chain(L.UnitNormalization(name="x")),
    L.RMSNormalization: lambda: chain(L.RMSNormalization(name="x")),
    L.RepeatVector: lambda: chain(L.RepeatVector(2, name="x"), spatial=()),
    L.Dot: lambda: merge(lambda a, b: L.Dot(axes=1, name="x")([a, b]), spatial=()),
    L.EinsumDense: lambda: chain(L.EinsumDense("abc,cd->abd", (None, 3), name="x"),
                                 spatial=(5,)),
    L.MultiHeadAttention: lambda: chain(
        lambda t: L.MultiHeadAttention(1, 2, name="x")(t, t), spatial=(5,)),
    L.Attention: lambda: chain(lambda t: L.Attention(name="x")([t, t]), spatial=(5,)),
    L.AdditiveAttention: lambda: chain(lambda t: L.AdditiveAttention(name="x")([t, t]),
                                       spatial=(5,)),
    L.GroupQueryAttention: lambda: chain(
        lambda t: L.GroupQueryAttention(2, 2, 1, name="x")(t, t), spatial=(5,)),
    L.Masking: lambda: chain(L.Masking(name="x"), spatial=(5,)),
}


# ------------------------------------------------- zeroed groups of hand-built models


def randomize(model, seed=0):
    """Non-zero biases and BatchNorm statistics, so removed channels carry constants."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for var in layer.weights:
            shape = tuple(var.shape)
            if var.name == "moving_variance":
                var.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            elif var.name == "gamma":
                var.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            elif var.name in ("bias", "beta", "moving_mean"):
                var.assign(rng.normal(size=shape).astype("float32"))
    return model


def zero_slices(model, group, role):
    """Zeros the slices of `group` that have role `role`."""
    for s in group["slices"]:
        if s["role"] != role:
            continue
        var = next(v for v in model.get_layer(s["layer"]).weights if v.name == s["weight"])
        w = np.array(var.numpy())
        idx = [slice(None)] * w.ndim
        idx[s["axis"]] = s["index"]
        w[tuple(idx)] = 0
        var.assign(w)


def zero_random_groups(model, fraction=0.5, seed=0, consumer_share=0.3):
    """Zeros the producer (or, for some, the consumer) slices of random unblocked groups."""
    rng = np.random.default_rng(seed)
    chosen = []
    for g in ssl_keras.removable_groups(model):
        if g["blocked"] or rng.random() >= fraction:
            continue
        zero_slices(model, g, "consumer" if rng.random() < consumer_share else "producer")
        chosen.append(g["id"])
    return chosen


def conv_bn_relu_conv(padding="valid", consumer_bias=True):
    """input (8, 8, 3) -> conv1 (6) -> bn1 -> relu1 -> conv2 (5) -> gap -> out (Dense 3)."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(5, 3, padding=padding, use_bias=consumer_bias, name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = randomize(keras.Model(inputs, L.Dense(3, name="out")(x)))
    model.get_layer("bn1").beta.assign(np.linspace(0.5, 1.5, 6).astype("float32"))
    model.get_layer("bn1").moving_mean.assign(np.zeros(6, "float32"))  # constants survive ReLU
    return model


def zero_filters(model, layer, filters):
    """Zeros the output filters `filters` of the kernel of `layer`."""
    var = model.get_layer(layer).kernel
    w = np.array(var.numpy())
    w[..., filters] = 0
    var.assign(w)
