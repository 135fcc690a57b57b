"""Property test of thin: random small architectures, random groups zeroed, outputs unchanged.

Each example builds a fresh model from the supported layers (Conv2D with 'valid' / 'same'
padding, BatchNormalization with non-zero beta and statistics, ReLU, pooling, zero padding,
DepthwiseConv2D, SeparableConv2D, residual Add blocks with identity or projection shortcuts,
Concatenate branches, UpSampling2D, Cropping2D, Conv2DTranspose, Reshape keeping the channel
axis, PReLU, Activation, adaptive pooling, Flatten / GlobalAveragePooling2D -> Dense), zeros
the producer (or consumer) slices of random coupled groups exactly (sometimes only the first of
them, which leaves the channel live), sometimes a whole residual branch, and sometimes zeroes
border rows / columns of 3x3 Conv2D kernels (which thin crops), and checks the contract against
the model itself (its zeroed groups are exactly zero): max |thin(model)(x) - model(x)| <= 1e-5
* (1 + max |model(x)|). A second property does the same for zero_groups' width settings
(max_channels, round_down), which cut in about a third of its examples.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from keras import layers as L  # noqa: E402

import ssl_keras  # noqa: E402
from ssl_keras.thin import thin  # noqa: E402

BLOCKS = ["conv", "conv_same", "bn_relu", "pool", "pad", "depthwise", "separable", "residual",
          "projection", "concat", "upsample", "crop", "transpose", "reshape", "prelu", "swish",
          "adaptive"]

block = st.tuples(st.sampled_from(BLOCKS), st.integers(2, 5), st.booleans())
architecture = st.fixed_dictionaries({
    "channels": st.integers(1, 3),
    "blocks": st.lists(block, min_size=1, max_size=5),
    "head": st.sampled_from(["flatten", "gap", "gap_hidden"]),
    "seed": st.integers(0, 2**16),
    "fraction": st.sampled_from([0.3, 0.6, 0.9]),
    "kill_branch": st.booleans(),
    "borders": st.booleans(),
})


def build(spec):
    """A functional model from `spec`; every layer named after its block."""
    inputs = keras.Input((8, 8, spec["channels"]), name="input")
    x, size = inputs, 8
    for i, (kind, width, flag) in enumerate(spec["blocks"]):
        p = f"b{i}"
        c = x.shape[-1]
        if kind == "conv" and size >= 3:
            x = L.Conv2D(width, 3, use_bias=flag, name=f"{p}_conv")(x)
            size -= 2
        elif kind in ("conv", "conv_same"):
            x = L.Conv2D(width, 3 if flag else 1, padding="same",
                         activation="relu" if flag else None, name=f"{p}_conv")(x)
        elif kind == "bn_relu":
            x = L.BatchNormalization(name=f"{p}_bn")(x)
            x = L.ReLU(name=f"{p}_relu")(x)
        elif kind == "pool" and size >= 2:
            pool = L.MaxPooling2D if flag else L.AveragePooling2D
            x = pool(2, padding="same", name=f"{p}_pool")(x)
            size = (size + 1) // 2
        elif kind == "pad":
            x = L.ZeroPadding2D(1, name=f"{p}_pad")(x)
            size += 2
        elif kind == "depthwise":
            x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1 + flag,
                                  name=f"{p}_dw")(x)
            x = L.BatchNormalization(name=f"{p}_dwbn")(x)
        elif kind == "separable":
            x = L.SeparableConv2D(width, 3, padding="same", depth_multiplier=1 + flag,
                                  name=f"{p}_sep")(x)
        elif kind in ("residual", "projection"):
            out = width if kind == "projection" else c
            y = L.Conv2D(out, 3, padding="same", name=f"{p}_conv1")(x)
            y = L.BatchNormalization(name=f"{p}_bn1")(y)
            y = L.ReLU(name=f"{p}_relu1")(y)
            y = L.Conv2D(out, 3, padding="same", use_bias=False, name=f"{p}_conv2")(y)
            y = L.BatchNormalization(name=f"{p}_bn2")(y)
            if kind == "projection":
                x = L.Conv2D(out, 1, use_bias=flag, name=f"{p}_proj")(x)
            x = L.Add(name=f"{p}_add")([x, y])
        elif kind == "concat":
            a = L.Conv2D(width, 1, name=f"{p}_a")(x)
            b = L.Conv2D(2, 3, padding="same", activation="relu", name=f"{p}_b")(x)
            x = L.Concatenate(name=f"{p}_cat")([a, b] if flag else [b, a, x])
        elif kind == "upsample" and size <= 8:
            x = L.UpSampling2D(2, interpolation="bilinear" if flag else "nearest",
                               name=f"{p}_up")(x)
            size *= 2
        elif kind == "crop" and size >= 3:
            x = L.Cropping2D(((1, 0), (0, 1)) if flag else 1, name=f"{p}_crop")(x)
            size -= 1 if flag else 2
        elif kind == "transpose" and size <= 8:
            x = L.Conv2DTranspose(width, 2, strides=2, use_bias=flag, name=f"{p}_convt")(x)
            size *= 2
        elif kind == "reshape":  # keeps the channel axis, names the channel count
            x = L.Reshape((-1, size, c) if flag else (size, size, c), name=f"{p}_reshape")(x)
        elif kind == "prelu":
            x = L.PReLU(shared_axes=[1, 2] if flag else None, name=f"{p}_prelu")(x)
        elif kind == "swish":
            x = L.Activation("swish" if flag else "tanh", name=f"{p}_act")(x)
        elif kind == "adaptive" and size >= 2:
            pool = L.AdaptiveMaxPooling2D if flag else L.AdaptiveAveragePooling2D
            x = pool((2, 2), name=f"{p}_apool")(x)
            size = 2
    if spec["head"] == "flatten":
        x = L.Flatten(name="flatten")(x)
    else:
        x = L.GlobalAveragePooling2D(name="gap")(x)
        if spec["head"] == "gap_hidden":
            x = L.Dense(5, activation="relu", name="hidden")(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def randomize_and_zero(model, spec):
    rng = np.random.default_rng(spec["seed"])
    for layer in model.layers:
        for var in layer.weights:
            shape = tuple(var.shape)
            if var.name == "moving_variance":
                value = rng.uniform(0.5, 2.0, shape)
            elif var.name == "gamma":
                value = rng.uniform(0.5, 1.5, shape)
            elif var.name in ("bias", "beta", "moving_mean"):
                value = rng.normal(size=shape)
            else:
                continue
            var.assign(value.astype("float32"))
    groups = ssl_keras.removable_groups(model)
    zeroed = 0
    for g in groups:
        if g["blocked"] or rng.random() >= spec["fraction"]:
            continue
        role = "consumer" if rng.random() < 0.3 else "producer"
        # sometimes only the first of the role's slices: a coupled channel with one of its
        # producers (or consumers) zero is still live, and thin must keep it
        partial = rng.random() < 0.25
        done = False
        for s in g["slices"]:
            if s["role"] == role and not (partial and done):
                done = True
                var = next(v for v in model.get_layer(s["layer"]).weights
                           if v.name == s["weight"])
                w = np.array(var.numpy())
                index = [slice(None)] * w.ndim
                index[s["axis"]] = s["index"]
                w[tuple(index)] = 0
                var.assign(w)
        zeroed += 1
    if spec["borders"]:  # exact zero border rows / columns, which thin crops
        for layer in model.layers:
            if type(layer) is L.Conv2D and layer.kernel.shape[0] == 3 and rng.random() < 0.7:
                w = np.array(layer.kernel.numpy())
                for axis in (0, 1):
                    if rng.random() < 0.7:
                        index = [slice(None)] * 4
                        index[axis] = ([0], [2], [0, 2])[int(rng.integers(3))]
                        w[tuple(index)] = 0
                layer.kernel.assign(w)
    branches = [layer for layer in model.layers if layer.name.endswith("_conv2")]
    if spec["kill_branch"] and branches:
        conv = branches[int(rng.integers(len(branches)))]
        conv.kernel.assign(np.zeros(conv.kernel.shape, "float32"))
    return groups, zeroed


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=architecture)
def test_thin_keeps_outputs_of_random_architectures(spec):
    model = build(spec)
    groups, _ = randomize_and_zero(model, spec)
    small = thin(model, threshold=1e-4, groups=groups)
    x = np.random.default_rng(spec["seed"] + 1).normal(size=(2, 8, 8, spec["channels"]))
    x = x.astype("float32")
    want = np.asarray(model(x))
    got = np.asarray(small(x))
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-5 * (1 + float(np.max(np.abs(want)))), (err, spec)
    assert ssl_keras.count_macs(small) <= ssl_keras.count_macs(model)
    # zero_groups is a fixed point: zeroing again changes nothing (thin of a zeroed model,
    # the README's recipe, relies on it)
    zeroed = ssl_keras.zero_groups(model, 1e-4, groups=groups)
    again = ssl_keras.zero_groups(zeroed, 1e-4, groups=groups)
    assert all(np.array_equal(a, b) for a, b in zip(zeroed.get_weights(), again.get_weights(),
                                                    strict=True)), spec


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=architecture, cap=st.integers(1, 4), multiple=st.sampled_from([1, 2, 3]))
def test_width_settings_keep_thin_exact_on_random_architectures(spec, cap, multiple):
    """zero_groups(max_channels=, round_down=) on random architectures: thin of the result
    reproduces it, the input model is untouched, the cut removes at least what the plain
    zero_groups removes, and a cap alone is a fixed point (capping again cuts nothing)."""
    model = build(spec)
    groups, _ = randomize_and_zero(model, spec)
    before = [w.copy() for w in model.get_weights()]
    capped = ssl_keras.zero_groups(model, 1e-4, groups=groups, max_channels=cap,
                                   round_down=multiple)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    small = thin(capped, threshold=1e-4, groups=groups)
    x = np.random.default_rng(spec["seed"] + 2).normal(size=(2, 8, 8, spec["channels"]))
    x = x.astype("float32")
    want = np.asarray(capped(x))
    err = float(np.max(np.abs(np.asarray(small(x)) - want)))
    assert err <= 1e-5 * (1 + float(np.max(np.abs(want)))), (err, spec, cap, multiple)
    plain = thin(model, threshold=1e-4, groups=groups)
    assert ssl_keras.count_macs(small) <= ssl_keras.count_macs(plain), (spec, cap, multiple)
    if multiple == 1:
        again = ssl_keras.zero_groups(capped, 1e-4, groups=groups, max_channels=cap)
        assert all(np.array_equal(a, b) for a, b in zip(
            capped.get_weights(), again.get_weights(), strict=True)), (spec, cap)
