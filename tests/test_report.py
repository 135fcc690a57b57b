"""Tests of ssl_keras.report: MAC and parameter counts against hand-written oracles."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers as L  # noqa: E402

from ssl_keras.report import count_macs, count_params, layer_macs, summarize  # noqa: E402
from ssl_keras.thin import thin  # noqa: E402


def one_layer(layer, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs)), layer


def conv_out(size, k, stride, padding, dilation=1):
    eff = (k - 1) * dilation + 1
    return -(-size // stride) if padding == "same" else (size - eff) // stride + 1


@pytest.mark.parametrize("padding,stride", [("valid", 1), ("same", 1), ("same", 2), ("valid", 2)])
def test_conv2d_macs(padding, stride):
    model, _ = one_layer(L.Conv2D(5, 3, strides=stride, padding=padding), (9, 7, 4))
    h, w = conv_out(9, 3, stride, padding), conv_out(7, 3, stride, padding)
    assert count_macs(model) == 3 * 3 * 4 * 5 * h * w


def test_grouped_conv_divides_by_groups():
    model, _ = one_layer(L.Conv2D(6, 3, groups=2), (6, 6, 4))
    assert count_macs(model) == 3 * 3 * (4 // 2) * 6 * 4 * 4


def test_conv1d_and_conv3d_macs():
    m1, _ = one_layer(L.Conv1D(3, 5, dilation_rate=2), (20, 2))
    assert count_macs(m1) == 5 * 2 * 3 * conv_out(20, 5, 1, "valid", 2)
    m3, _ = one_layer(L.Conv3D(2, (1, 2, 3), padding="same"), (4, 5, 6, 3))
    assert count_macs(m3) == 1 * 2 * 3 * 3 * 2 * 4 * 5 * 6


def test_depthwise_and_separable_macs():
    m, _ = one_layer(L.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3))
    assert count_macs(m) == 3 * 3 * 3 * 2 * 4 * 4
    m, _ = one_layer(L.SeparableConv2D(5, 3, depth_multiplier=2, padding="same"), (6, 6, 3))
    assert count_macs(m) == 3 * 3 * 3 * 2 * 36 + 3 * 2 * 5 * 36


def test_transpose_counts_input_positions():
    m, _ = one_layer(L.Conv2DTranspose(4, 3, strides=2), (5, 5, 2))
    assert count_macs(m) == 3 * 3 * 2 * 4 * 5 * 5


def test_channels_first_reads_channels_from_axis_1():
    """Was: c_in read from the last axis (9072 and 1701 instead of 5292 and 1323)."""
    m, _ = one_layer(L.Conv2D(4, 3, data_format="channels_first"), (3, 9, 9))
    assert count_macs(m) == 3 * 3 * 3 * 4 * 7 * 7
    m, _ = one_layer(L.DepthwiseConv2D(3, data_format="channels_first"), (3, 9, 9))
    assert count_macs(m) == 3 * 3 * 3 * 7 * 7


def test_nested_models_and_time_distributed_are_counted():
    """Was: 0 MACs inside a nested model or a TimeDistributed wrapper."""
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="conv")], name="inner")
    inputs = keras.Input((8, 8, 3))
    a, b = inner(inputs), inner(inputs)  # called twice: counted twice
    x = L.Flatten(name="flat")(L.Add(name="add")([a, b]))
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    total, table = count_macs(model, per_layer=True)
    conv = 3 * 3 * 3 * 4 * 6 * 6
    assert table == {"inner/conv": 2 * conv, "inner": 2 * conv, "add": 0, "flat": 0,
                     "out": 144 * 2}
    assert total == 2 * conv + 144 * 2
    text = summarize(model, model, print_fn=None)
    assert "inner  Sequential  3 -> 3" in text and f"{2 * conv:,}" in text
    m, _ = one_layer(L.TimeDistributed(L.Dense(3)), (5, 7))
    assert count_macs(m) == 5 * 7 * 3
    m, _ = one_layer(L.TimeDistributed(L.Conv2D(2, 3)), (4, 6, 6, 1))
    assert count_macs(m) == 4 * 3 * 3 * 1 * 2 * 4 * 4


def test_dense_on_sequences_multiplies_positions():
    m, _ = one_layer(L.Dense(7), (5, 3))
    assert count_macs(m) == 5 * 3 * 7
    assert layer_macs(L.Dense(3), (None, 4), (None, 3)) == 12


def test_layers_without_kernel_count_zero_and_per_layer_table():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="c")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(2, name="d")(x))
    total, table = count_macs(model, per_layer=True)
    assert table == {"c": 3 * 3 * 3 * 4 * 36, "bn": 0, "pool": 0, "gap": 0, "d": 8}
    assert total == sum(table.values())


def test_count_params_matches_keras_and_numpy():
    model, _ = one_layer(L.SeparableConv2D(5, 3, depth_multiplier=2), (6, 6, 3))
    assert count_params(model) == model.count_params()
    assert count_params(model) == sum(int(np.prod(w.shape)) for w in model.get_weights())


def _two_convs_and_dense():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="conv1")(inputs)
    x = L.ReLU(name="relu")(x)
    x = L.Conv2D(4, 3, name="conv2")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


def test_summarize_before_and_after():
    model = _two_convs_and_dense()
    w = np.array(model.get_layer("conv1").kernel.numpy())
    w[..., :3] = 0
    model.get_layer("conv1").kernel.assign(w)
    small = thin(model)
    printed = []
    text = summarize(model, small, print_fn=printed.append)
    assert printed == [text]
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "class", "in", "out", "MACs", "MACs", "after"]
    row = next(line for line in lines if line.startswith("conv1"))
    assert "6 -> 3" in row
    row = next(line for line in lines if line.startswith("conv2"))
    assert "6 -> 3" in row and f"{3 * 3 * 6 * 4 * 16:,}" in row
    p0, p1 = count_params(model), count_params(small)
    assert f"parameters: {p0:,} -> {p1:,} ({p0 / p1:.2f}x fewer)" in text
    m0, m1 = count_macs(model), count_macs(small)
    assert f"MACs:       {m0:,} -> {m1:,} ({m0 / m1:.2f}x fewer)" in text
    assert summarize(model, small, print_fn=None) == text


def test_summarize_gives_depthwise_output_channels():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="pw")(inputs)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(x)))
    w = np.array(model.get_layer("pw").kernel.numpy())
    w[..., 1] = 0
    model.get_layer("pw").kernel.assign(w)
    text = summarize(model, thin(model), print_fn=None)
    row = next(line for line in text.splitlines() if line.startswith("dw"))
    assert row.split()[1:6] == ["DepthwiseConv2D", "4", "->", "3", "8"]  # not "None -> None"
    assert "8 -> 6" in row


def test_summarize_marks_removed_layers():
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(2, 3, padding="same", name="stem")(inputs)
    y = L.Conv2D(2, 3, padding="same", name="branch")(x)
    x = L.Add(name="add")([x, y])
    x = L.Flatten(name="flat")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    model.get_layer("branch").kernel.assign(np.zeros((3, 3, 2, 2), "float32"))
    text = summarize(model, thin(model), print_fn=None)
    row = next(line for line in text.splitlines() if line.startswith("branch"))
    assert "removed" in row


def test_a_model_from_apply_ssl_counts_as_its_layers():
    from ssl_keras.wrap import apply_ssl

    model = _two_convs_and_dense()
    ssl_model = apply_ssl(model, filters=1e-3, channels=1e-3)
    assert type(ssl_model.get_layer("conv1")).__name__ == "StructuredSparsity"
    assert count_macs(ssl_model, per_layer=True) == count_macs(model, per_layer=True)
    assert count_macs(model) == 3 * 3 * 3 * 6 * 36 + 3 * 3 * 6 * 4 * 16 + 4 * 16 * 2
    assert count_params(ssl_model) == count_params(model)
    text = summarize(ssl_model, thin(ssl_model), print_fn=None)
    assert text == summarize(model, thin(model), print_fn=None)
    row = next(line for line in text.splitlines() if line.startswith("conv1"))
    assert row.split()[1] == "Conv2D"


def test_count_macs_refuses_unknown_sizes_only_where_they_count():
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, L.Dense(4, name="d")(inputs))
    with pytest.raises(ValueError, match=r"count_macs needs the sizes a layer's MACs depend "
                                         r"on\. Received: input shape \(None, None, 3\).*'d'"):
        count_macs(model)
    inputs = keras.Input((None,))  # a sequence of unknown length, pooled before the Dense
    x = L.GlobalAveragePooling1D()(L.Embedding(10, 8)(inputs))
    assert count_macs(keras.Model(inputs, L.Dense(4)(x))) == 8 * 4


def test_bad_arguments_are_keras_style_errors():
    # were: a raw TypeError after all the counting ('int' object is not callable), an error
    # naming `model` for the second model, and per_layer unchecked
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    with pytest.raises(ValueError, match=r"`print_fn` must be callable .* Received: print_fn=1"):
        summarize(model, model, print_fn=1)
    with pytest.raises(ValueError, match=r"`thinned` must be a keras.Model. Received: "
                                         r"thinned=None"):
        summarize(model, None)
    with pytest.raises(ValueError, match=r"`per_layer` must be a bool"):
        count_macs(model, per_layer="yes")
    assert summarize(model, model, print_fn=None).startswith("layer")


def test_summarize_lists_a_thinned_embedding():
    """An Embedding's output features are thinned (thin slices its `embeddings`): its row
    shows the vocabulary as its input and the features before -> after. Was: no row (only
    layers with a kernel were listed)."""
    inputs = keras.Input((5,), dtype="int32")
    x = L.Embedding(10, 8, name="emb")(inputs)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    model.get_layer("out").kernel.assign(
        np.where(np.arange(8)[:, None] < 3, 0.0, 1.0).astype("float32") * np.ones((8, 2)))
    small = thin(model)
    assert small.get_layer("emb").output_dim == 5
    text = summarize(model, small, print_fn=None)
    row = next(line for line in text.splitlines() if line.startswith("emb"))
    assert row.split()[1:8] == ["Embedding", "10", "->", "10", "8", "->", "5"], row
    assert next(line for line in text.splitlines() if line.startswith("out")).split()[1] == "Dense"
