"""Tests for ssl_keras.wrap: StructuredSparsity, apply_ssl, SSLModel, strip_ssl."""

import json
import os
import re
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest

import ssl_keras
from examples.models import lenet, resnet
from ssl_keras import registry
from ssl_keras.graph import removable_groups
from ssl_keras.registry import Kind, LayerSpec
from ssl_keras.wrap import (
    SSLModel,
    StructuredSparsity,
    apply_ssl,
    kernel_specs,
    residual_branches,
    strip_ssl,
)
from tests.architectures import LAYER_CASES

EPS = 1e-8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _oracle_kernel(w, filters=0.0, channels=0.0, shapes=0.0, depth=0.0, in_axis=-2,
                   out_axis=-1):
    """Loop oracle of the per-layer group Lasso of one kernel."""
    w = np.moveaxis(np.asarray(w, np.float64), (in_axis, out_axis), (-2, -1))
    total = 0.0
    n_in, n_out = w.shape[-2], w.shape[-1]
    for n in range(n_out):
        total += filters * np.sqrt(np.sum(w[..., n] ** 2) + EPS)
    for c in range(n_in):
        total += channels * np.sqrt(np.sum(w[..., c, :] ** 2) + EPS)
    for pos in np.ndindex(*w.shape[:-1]):
        total += shapes * np.sqrt(np.sum(w[pos] ** 2) + EPS)
    total += depth * np.sqrt(np.sum(w ** 2) + EPS)
    return total


def _tiny_resnet():
    keras.utils.set_random_seed(1)
    return resnet(8, input_shape=(8, 8, 3), widths=(4, 8, 8))


def _weights(model):
    return [np.array(v.numpy()) for v in model.weights]


def _total_loss(model):
    return float(sum(float(loss) for loss in model.losses))


def _coupled_oracle(model, groups):
    """sum_g lambda_g sqrt(sum of squares of its slices + eps), by explicit np.take."""
    weights = {}  # (layer, weight) -> float64 array, read once
    total = 0.0
    for group in groups:
        squares = 0.0
        for piece in group["slices"]:
            key = (piece["layer"], piece["weight"])
            if key not in weights:
                layer = model.get_layer(piece["layer"])
                layer = getattr(layer, "ssl_inner_layer", layer)
                (w,) = [v for v in layer.weights if v.name == piece["weight"]]
                weights[key] = np.asarray(w.numpy(), np.float64)
            part = np.take(weights[key], piece["index"], axis=piece["axis"])
            squares += np.sum(part ** 2)
        total += group["coefficient"] * np.sqrt(squares + EPS)
    return total


def test_wrapper_in_sequential_adds_oracle_loss_and_keeps_outputs():
    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(3, 3, name="conv")
    wrapped = ssl_keras.apply_ssl(conv, filters=0.1, channels=0.2, shapes=0.3, depth=0.4)
    model = keras.Sequential([keras.Input((6, 6, 2)), wrapped, keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    assert isinstance(wrapped, StructuredSparsity)
    inner = wrapped.ssl_inner_layer
    assert wrapped.name == "conv" and inner is not conv and not conv.built  # a copy
    expected = _oracle_kernel(inner.kernel.numpy(), 0.1, 0.2, 0.3, 0.4)
    np.testing.assert_allclose(_total_loss(model), expected, rtol=1e-5)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(wrapped(x), inner(x), atol=1e-6)


def test_apply_ssl_to_a_layer_of_a_model_leaves_the_model_alone():
    """The penalty attaches to the wrapped layer's variables: apply_ssl wraps a copy."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.Dense(2, name="d2")])
    layer = model.get_layer("d1")
    wrapped = apply_ssl(layer, filters=1.0)
    wrapped.build((None, 5))
    assert model.losses == [] and layer.kernel.regularizer is None
    assert wrapped.ssl_inner_layer is not layer and len(wrapped.losses) == 1
    for a, b in zip(wrapped.ssl_inner_layer.get_weights(), layer.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make, attribute, in_axis, out_axis, names", [
    (lambda: keras.layers.Dense(3), "kernel", -2, -1, ("filters", "channels", "shapes")),
    (lambda: keras.layers.Conv1D(3, 2), "kernel", -2, -1, ("filters", "channels", "shapes")),
    (lambda: keras.layers.Conv2DTranspose(3, 2), "kernel", -1, -2,
     ("filters", "channels", "shapes")),
    (lambda: keras.layers.DepthwiseConv2D(2), "kernel", -2, -1, ("depthwise",)),
])
def test_supported_layers_match_oracle(make, attribute, in_axis, out_axis, names):
    keras.utils.set_random_seed(2)
    layer = make()
    shape = (5, 4) if isinstance(layer, keras.layers.Dense) else (
        (6, 4) if isinstance(layer, keras.layers.Conv1D) else (5, 5, 4))
    wrapped = StructuredSparsity(layer, filters=0.3, channels=0.5, shapes=0.7, depth=0.2)
    wrapped(np.zeros((1, *shape), "float32"))
    kernel = getattr(layer, attribute).numpy()
    if names == ("depthwise",):
        expected = _oracle_kernel(kernel, channels=0.5, shapes=0.7, depth=0.2)
    else:
        expected = _oracle_kernel(kernel, 0.3, 0.5, 0.7, 0.2, in_axis, out_axis)
    np.testing.assert_allclose(_total_loss(wrapped), expected, rtol=1e-5)


def test_separable_conv_both_kernels():
    keras.utils.set_random_seed(3)
    layer = keras.layers.SeparableConv2D(3, 2)
    wrapped = StructuredSparsity(layer, filters=0.3, channels=0.5, shapes=0.7)
    wrapped(np.zeros((1, 5, 5, 2), "float32"))
    expected = (_oracle_kernel(layer.depthwise_kernel.numpy(), channels=0.5, shapes=0.7)
                + _oracle_kernel(layer.pointwise_kernel.numpy(), filters=0.3, channels=0.5))
    np.testing.assert_allclose(_total_loss(wrapped), expected, rtol=1e-5)


def test_wrapper_keeps_the_layers_own_regularizer():
    keras.utils.set_random_seed(4)
    dense = keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.5))
    wrapped = StructuredSparsity(dense, filters=0.1)
    wrapped(np.zeros((1, 4), "float32"))
    w = dense.kernel.numpy()
    expected = 0.5 * np.sum(w ** 2) + _oracle_kernel(w, filters=0.1)
    np.testing.assert_allclose(_total_loss(wrapped), expected, rtol=1e-5)


def test_wrapper_config_round_trip():
    wrapped = StructuredSparsity(keras.layers.Dense(3, name="d"), filters=0.1, channels=0.2,
                                 shapes=0.3, depth=0.4, borders=0.5, normalize=True,
                                 epsilon=1e-6)
    config = wrapped.get_config()
    again = StructuredSparsity.from_config(json.loads(json.dumps(config)))
    assert again.get_config() == config
    assert again.name == "d" and again.normalize and again.epsilon == 1e-6
    assert again.borders == 0.5


def test_apply_ssl_borders_stay_per_layer_with_overrides():
    keras.utils.set_random_seed(6)
    model = lenet(input_shape=(16, 16, 1), filters=(3, 4), units=5)
    ssl = apply_ssl(model, filters=0.1, borders=0.2, layers={"conv2": {"borders": 0.7}})
    conv1, conv2 = ssl.get_layer("conv1"), ssl.get_layer("conv2")
    assert (conv1.borders, conv2.borders, ssl.get_layer("ip1").borders) == (0.2, 0.7, 0.2)
    borders = sum(float(ssl_keras.GroupLasso(borders=b)(layer.ssl_inner_layer.kernel))
                  for layer, b in ((conv1, 0.2), (conv2, 0.7)))
    assert borders > 0  # the Dense layers have no border bands
    coupled = _coupled_oracle(ssl, ssl.ssl_groups)
    np.testing.assert_allclose(_total_loss(ssl), coupled + borders, rtol=1e-5)
    # Border bands only where thin() crops them: not on depthwise / transposed kernels.
    for layer in (keras.layers.DepthwiseConv2D(3), keras.layers.Conv2DTranspose(2, 3)):
        wrapped = StructuredSparsity(layer, borders=0.5)
        wrapped(np.zeros((1, 6, 6, 2), "float32"))
        assert wrapped.ssl_regularizers() == {} and _total_loss(wrapped) == 0.0
    with pytest.raises(ValueError, match=r"`layers\['conv1'\]` has unknown keys \['border'\]"):
        apply_ssl(model, filters=0.1, layers={"conv1": {"border": 0.5}})


def test_apply_ssl_uncoupled_per_layer_and_input_unchanged():
    model = _tiny_resnet()
    before = _weights(model)
    wrapped = apply_ssl(model, filters=0.01, channels=0.02, coupled=False,
                        layers={"fc": None, "conv0": {"filters": 0.5}})
    assert type(wrapped) is type(model)
    assert [layer.name for layer in wrapped.layers] == [layer.name for layer in model.layers]
    assert isinstance(wrapped.get_layer("stage1_block1_conv1"), StructuredSparsity)
    assert not isinstance(wrapped.get_layer("bn0"), StructuredSparsity)
    expected = 0.0
    for layer in wrapped.layers:
        if isinstance(layer, StructuredSparsity):
            coefficients = {"fc": (0.0, 0.0), "conv0": (0.5, 0.02)}.get(layer.name, (0.01, 0.02))
            expected += _oracle_kernel(layer.ssl_inner_layer.kernel.numpy(), *coefficients)
    np.testing.assert_allclose(_total_loss(wrapped), expected, rtol=1e-5)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(wrapped(x), model(x), atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model), strict=True))
    assert model.losses == []


def test_apply_ssl_coupled_loss_matches_oracle():
    model = _tiny_resnet()
    ssl = apply_ssl(model, filters=0.03, channels=0.02, shapes=0.01)
    assert isinstance(ssl, SSLModel)
    groups = removable_groups(model)
    open_groups = [g for g in groups if not g["blocked"]]
    assert len(ssl.ssl_groups) == len(open_groups) > 0
    assert {g["id"] for g in ssl.ssl_groups} == {g["id"] for g in open_groups}
    for group in ssl.ssl_groups:
        assert group["coefficient"] == pytest.approx(0.05)
    coupled = _coupled_oracle(ssl, ssl.ssl_groups)
    np.testing.assert_allclose(float(ssl.ssl_coupled_loss()), coupled, rtol=1e-5)
    shapes = sum(_oracle_kernel(layer.ssl_inner_layer.kernel.numpy(), shapes=0.01)
                 for layer in ssl.layers if isinstance(layer, StructuredSparsity))
    np.testing.assert_allclose(_total_loss(ssl), coupled + shapes, rtol=1e-5)
    assert model.losses == []


def test_coupled_groups_of_a_wide_layer_train():
    # CoupledTerms held a dense groups x positions matrix per (layer, weight, axis): here
    # 3 x 20,000 x 20,000 float32 (4.8 GB), and for keras.applications.EfficientNetB0 more
    # than TensorFlow's 2 GB graph limit, so the traced train step failed. Segment sums now.
    keras.utils.set_random_seed(8)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(20000, activation="relu", name="wide")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    ssl = apply_ssl(model, filters=1e-3, channels=1e-3)
    assert len(ssl.ssl_groups) == 20000
    np.testing.assert_allclose(float(ssl.ssl_coupled_loss()),
                               _coupled_oracle(ssl, ssl.ssl_groups), rtol=1e-5)
    ssl.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(8)
    history = ssl.fit(rng.normal(size=(32, 16)).astype("float32"),
                      rng.normal(size=(32, 2)).astype("float32"), batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_coupled_coefficients_follow_layers_overrides():
    keras.utils.set_random_seed(5)
    model = lenet(input_shape=(16, 16, 1), filters=(3, 4), units=5)
    ssl = apply_ssl(model, filters=0.1, channels=0.01,
                    layers={"conv1": {"filters": 1.0}, "ip1": {"channels": 0.5}})
    by_source = {}
    for group in ssl.ssl_groups:
        by_source.setdefault(group["layer"], set()).add(round(group["coefficient"], 6))
    # conv1's channels: filters of conv1 (1.0) + channels of conv2 (0.01).
    # conv2's channels: filters of conv2 (0.1) + channels of ip1 (0.5).
    # ip1's units: filters of ip1 (0.1) + channels of ip2 (0.01).
    assert by_source == {"conv1": {1.01}, "conv2": {0.6}, "ip1": {0.11}}
    np.testing.assert_allclose(float(ssl.ssl_coupled_loss()),
                               _coupled_oracle(ssl, ssl.ssl_groups), rtol=1e-5)


def test_coupled_groups_leave_out_a_layer_set_to_none():
    """layers={"conv2": None}: no coupled group penalises conv2's kernel (as a consumer of
    conv1's channels or a producer of its own); the other slices stay. Was: conv2 was still
    penalised through the groups it shares with conv1 and ip1."""
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    model = lenet(input_shape=(16, 16, 1), filters=(3, 4), units=5)
    ssl = apply_ssl(model, filters=0.1, channels=0.1, layers={"conv2": None})
    layers = {s["layer"] for g in ssl.ssl_groups for s in g["slices"]}
    assert "conv2" not in layers and {"conv1", "ip1"} <= layers
    kernel = ssl.get_layer("conv2").ssl_inner_layer.kernel
    with tf.GradientTape() as tape:
        loss = ssl.ssl_coupled_loss()
    assert tape.gradient(loss, kernel) is None
    np.testing.assert_allclose(float(loss), _coupled_oracle(ssl, ssl.ssl_groups), rtol=1e-5)


def test_ssl_groups_with_numpy_values_are_stored_as_plain_data(tmp_path):
    """An index given as a NumPy array (an axis as np.int64) is accepted and stored as plain
    lists / ints, so the saved model loads back. Was: saved, then refused by load_model."""
    import copy

    keras.utils.set_random_seed(5)
    model = lenet(input_shape=(16, 16, 1), filters=(3, 4), units=5)
    ssl = apply_ssl(model, filters=0.1)
    groups = copy.deepcopy(ssl.ssl_groups)
    groups[0]["slices"][0]["index"] = np.array(groups[0]["slices"][0]["index"])
    groups[0]["slices"][0]["axis"] = np.int64(groups[0]["slices"][0]["axis"])
    ssl.ssl_groups = groups
    stored = ssl.ssl_groups[0]["slices"][0]
    assert isinstance(stored["index"], list) and type(stored["axis"]) is int
    assert all(type(i) is int for i in stored["index"])
    ssl.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(float(loaded.ssl_coupled_loss()), float(ssl.ssl_coupled_loss()),
                               rtol=1e-6)


def test_depth_groups_are_residual_branches():
    model = _tiny_resnet()
    branches = residual_branches(model)
    first = [b for b in branches if b["add"] == "stage1_block1_add"]
    assert first[0]["layers"] == []  # identity shortcut
    assert first[1]["layers"] == ["stage1_block1_conv1", "stage1_block1_bn1",
                                  "stage1_block1_relu1", "stage1_block1_conv2",
                                  "stage1_block1_bn2"]
    ssl = apply_ssl(model, depth=0.1, layers={"stage3_block1_add": {"depth": 0.7}})
    ids = {g["id"]: g for g in ssl.ssl_groups}
    # One group per block, on the residual operand; the projection shortcut is left alone.
    assert sorted(ids) == ["depth:stage1_block1_add:1", "depth:stage2_block1_add:1",
                           "depth:stage3_block1_add:1"]
    assert ids["depth:stage3_block1_add:1"]["coefficient"] == 0.7
    # The branch ends in BatchNorm: its gamma and beta are the group (BatchNorm undoes the
    # kernels' scale); the kernels and the inner gamma are zeroed with it, not penalised.
    group = ids["depth:stage2_block1_add:1"]
    assert [(s["layer"], s["weight"], s["axis"], s["index"]) for s in group["slices"]] == [
        ("stage2_block1_bn2", "gamma", 0, list(range(8))),
        ("stage2_block1_bn2", "beta", 0, list(range(8)))]
    assert [(s["layer"], s["weight"]) for s in group["zero_with"]] == [
        ("stage2_block1_conv1", "kernel"), ("stage2_block1_bn1", "gamma"),
        ("stage2_block1_conv2", "kernel")]
    np.testing.assert_allclose(_total_loss(ssl), _coupled_oracle(ssl, ssl.ssl_groups),
                               rtol=1e-5)
    bn = model.get_layer("stage3_block1_bn2")
    oracle = 0.7 * np.sqrt(np.sum(bn.gamma.numpy() ** 2) + np.sum(bn.beta.numpy() ** 2))
    terms = ssl.ssl_coupled_terms()
    index = [g["id"] for g in ssl.ssl_groups].index("depth:stage3_block1_add:1")
    np.testing.assert_allclose(0.7 * terms.norms()[index], oracle, rtol=1e-6)


def test_depth_group_of_a_branch_without_final_batchnorm_holds_its_kernels():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    y = keras.layers.Conv2D(3, 3, padding="same", name="conv2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    y = keras.layers.Conv2D(3, 1, name="conv3")(keras.layers.ReLU(name="relu")(y))
    x = keras.layers.Add(name="add")([x, y])
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    (group,) = apply_ssl(model, depth=0.2).ssl_groups
    assert [(s["layer"], s["weight"]) for s in group["slices"]] == [
        ("conv2", "kernel"), ("bn2", "gamma"), ("conv3", "kernel")]
    assert "zero_with" not in group
    # A BatchNorm followed only by weightless layers still ends the branch.
    y = keras.layers.ReLU(name="relu2")(keras.layers.BatchNormalization(name="bn3")(
        keras.layers.Conv2D(3, 3, padding="same", name="conv4")(x)))
    model2 = keras.Model(inputs, keras.layers.Add(name="add2")([x, y]))
    groups = {g["id"]: g for g in apply_ssl(model2, depth=0.2).ssl_groups}
    assert [(s["layer"], s["weight"]) for s in groups["depth:add2:1"]["slices"]] == [
        ("bn3", "gamma"), ("bn3", "beta")]


def test_save_load_wrapped_and_stripped(tmp_path):
    model = _tiny_resnet()
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype("float32")
    for coupled in (True, False):
        ssl = apply_ssl(model, filters=0.01, channels=0.02, shapes=0.003, depth=0.04,
                        coupled=coupled, layers={"conv0": {"filters": 0.2}})
        ssl.compile(keras.optimizers.SGD(0.01), "mse")
        path = str(tmp_path / f"ssl_{coupled}.keras")
        ssl.save(path)
        loaded = keras.models.load_model(path)
        assert type(loaded) is type(ssl)
        np.testing.assert_allclose(loaded(x), ssl(x),
                                   atol=1e-6)
        np.testing.assert_allclose(_total_loss(loaded), _total_loss(ssl), rtol=1e-6)
        if coupled:
            assert loaded.ssl_groups == ssl.ssl_groups

        plain = strip_ssl(loaded)
        assert plain.losses == []
        assert not any(isinstance(layer, (StructuredSparsity,)) for layer in plain.layers)
        assert not isinstance(plain, SSLModel)
        assert [type(a) for a in plain.layers] == [type(b) for b in model.layers]
        np.testing.assert_allclose(plain(x), ssl(x),
                                   atol=1e-6)
        path = str(tmp_path / f"plain_{coupled}.keras")
        plain.save(path)
        again = keras.models.load_model(path)
        np.testing.assert_allclose(again(x), ssl(x),
                                   atol=1e-6)
        assert again.losses == []


def test_strip_ssl_sequential_and_layer():
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((5,)), apply_ssl(keras.layers.Dense(4, name="a"),
                                                           filters=0.1),
                              keras.layers.Dense(2, name="b")])
    plain = strip_ssl(model)
    assert isinstance(plain, keras.Sequential)
    assert [type(layer).__name__ for layer in plain.layers] == ["Dense", "Dense"]
    assert [layer.name for layer in plain.layers] == ["a", "b"]
    x = np.ones((2, 5), "float32")
    np.testing.assert_allclose(plain(x), model(x), atol=1e-6)
    layer = strip_ssl(model.get_layer("a"))
    assert type(layer) is keras.layers.Dense and layer.kernel.regularizer is None
    np.testing.assert_array_equal(layer.kernel.numpy(),
                                  model.get_layer("a").ssl_inner_layer.kernel.numpy())


def test_sequential_coupled_becomes_ssl_model():
    keras.utils.set_random_seed(9)
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="a"),
                            keras.layers.Dense(3, name="b")])
    ssl = apply_ssl(seq, filters=0.2, channels=0.1)
    assert isinstance(ssl, SSLModel) and [g["id"] for g in ssl.ssl_groups] == [
        "a:0", "a:1", "a:2", "a:3"]
    np.testing.assert_allclose(_total_loss(ssl), _coupled_oracle(ssl, ssl.ssl_groups),
                               rtol=1e-5)
    x = np.ones((2, 6), "float32")
    np.testing.assert_allclose(ssl(x), seq(x), atol=1e-6)
    with pytest.raises(ValueError, match="is not built.*keras.Input"):
        apply_ssl(keras.Sequential([keras.layers.Dense(2)]))


def test_jax_backend_same_loss_and_fit(tmp_path):
    keras.utils.set_random_seed(8)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    y = keras.layers.Conv2D(3, 3, padding="same", name="conv2")(keras.layers.ReLU()(x))
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    ssl = apply_ssl(model, filters=0.03, channels=0.02, shapes=0.01, depth=0.05)
    assert {g["kind"] for g in ssl.ssl_groups} == {"channel", "depth"}
    path = str(tmp_path / "ssl.keras")
    ssl.save(path)
    script = (
        "import json, numpy as np, keras, ssl_keras\n"
        f"m = keras.models.load_model({path!r})\n"
        "before = float(sum(float(l) for l in m.losses))\n"
        "m.compile(keras.optimizers.SGD(0.01), 'mse')\n"
        "h = m.fit(np.ones((4, 6, 6, 2), 'float32'), np.zeros((4, 2), 'float32'),"
        " epochs=2, batch_size=2, verbose=0)\n"
        "print(json.dumps({'backend': keras.backend.backend(), 'loss': before,"
        " 'history': h.history['loss']}))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    np.testing.assert_allclose(result["loss"], _total_loss(ssl), rtol=1e-5)
    assert all(np.isfinite(result["history"]))
    assert result["history"][1] < result["history"][0]


@keras.saving.register_keras_serializable(package="test_wrap")
class _Scale(keras.layers.Layer):
    """An unregistered layer with a weight."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_coupled_depth_that_penalises_nothing_is_refused():
    """Found by a docs audit: the examples' --depth on LeNet (no Add) trained the SSL phase
    with no penalty at all, and a depth key on a conv was dropped without a word."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(x)))
    for kwargs in (dict(depth=0.5), dict(filters=0.1, depth=0.5)):
        with pytest.raises(ValueError, match=r"^depth=0.5 penalises residual branches .*model "
                           r"'.*' has none.*Expected depth=0 for this model, or coupled=False"
                           r".*Received: depth=0.5 with 0 Add layers$"):
            apply_ssl(plain, **kwargs)
    assert len(apply_ssl(plain, depth=0.5, coupled=False).layers) == len(plain.layers)
    model = _tiny_resnet()
    with pytest.raises(ValueError, match=r"\['conv0'\] are not Add layers.*Expected depth keys "
                       r"on Add layers \(\['stage1_block1_add'.*Received: layers=\{'conv0': "
                       r"\{'depth': 0.3\}\}$"):
        apply_ssl(model, filters=0.1, layers={"conv0": {"depth": 0.3}})
    with pytest.raises(ValueError, match=r"\['c1'\] are not Add layers.*\(the model has none\)"):
        apply_ssl(plain, filters=0.1, layers={"c1": {"depth": 0.3}})
    # what stays allowed: depth on a residual model, on its Add layers, or switched off there
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert any(g["kind"] == "depth" for g in apply_ssl(model, depth=0.5).ssl_groups)
    only = apply_ssl(model, filters=0.1, layers={adds[0]: {"depth": 0.3}})
    assert {g["layer"] for g in only.ssl_groups if g["kind"] == "depth"} == {adds[0]}
    off = apply_ssl(model, depth=0.5, layers={name: {"depth": 0.0} for name in adds})
    assert not any(g["kind"] == "depth" for g in off.ssl_groups)
    assert apply_ssl(plain, filters=0.1, layers={"c1": {"depth": 0.0}}).ssl_groups


def test_errors():
    model = _tiny_resnet()
    with pytest.raises(ValueError, match="subclassed model .*GroupLasso"):
        apply_ssl(_Subclassed())
    with pytest.raises(ValueError, match=r"`filters` must be a non-negative .*filters=-0.1"):
        apply_ssl(model, filters=-0.1)
    with pytest.raises(ValueError, match=r"`depth` must be a non-negative .*depth=-1"):
        apply_ssl(keras.layers.Dense(2), depth=-1)
    with pytest.raises(ValueError, match=r"`channels` .*channels='0\.5' \(of type str\)"):
        apply_ssl(model, channels="0.5")
    with pytest.raises(ValueError, match=r"layers\['conv0'\]\.channels.*channels=-2"):
        apply_ssl(model, layers={"conv0": {"channels": -2}})
    with pytest.raises(ValueError, match=r"layers\['conv0'\]\.depth.*Received: .*depth=True"):
        apply_ssl(model, layers={"conv0": {"depth": True}})
    with pytest.raises(ValueError, match=r"not in model 'resnet8': \['nope'\]"):
        apply_ssl(model, layers={"nope": {"filters": 0.1}})
    with pytest.raises(ValueError, match=r"unknown keys \['filter'\]"):
        apply_ssl(model, layers={"conv0": {"filter": 0.1}})
    with pytest.raises(ValueError, match=r"must be a dict of coefficients.*layers\['conv0'\]=3"):
        apply_ssl(model, layers={"conv0": 3})
    with pytest.raises(ValueError, match="`layers` must be a dict"):
        apply_ssl(model, layers=["conv0"])
    with pytest.raises(ValueError, match="cannot be used when wrapping a single layer"):
        apply_ssl(keras.layers.Dense(2), layers={"x": None})
    with pytest.raises(ValueError, match="`coupled` must be a bool"):
        apply_ssl(model, coupled="yes")
    with pytest.raises(ValueError, match="`to_wrap` must be a Keras layer.*Received: to_wrap=3"):
        apply_ssl(3)
    with pytest.raises(ValueError, match="LayerNormalization has no kernel.*Received"):
        apply_ssl(keras.layers.LayerNormalization())
    with pytest.raises(ValueError, match="already wrapped"):
        StructuredSparsity(StructuredSparsity(keras.layers.Dense(2)))
    with pytest.raises(ValueError, match="`layer` must be a Keras layer"):
        StructuredSparsity("dense")
    with pytest.raises(ValueError, match="`normalize` must be a bool"):
        StructuredSparsity(keras.layers.Dense(2), normalize=1)
    with pytest.raises(ValueError, match="`epsilon` must be a finite float > 0"):
        StructuredSparsity(keras.layers.Dense(2), epsilon=0)
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite float > 0\. "
                       r"Received: epsilon=True"):
        StructuredSparsity(keras.layers.Dense(2), epsilon=True)
    with pytest.raises(ValueError, match="already holds StructuredSparsity layers"):
        apply_ssl(apply_ssl(model, coupled=False))
    with pytest.raises(ValueError, match="`model` must be a Keras model"):
        strip_ssl("model")
    with pytest.raises(ValueError, match="subclassed model"):
        strip_ssl(_Subclassed())

    inputs = keras.Input((4,))
    x = _Scale(name="scale")(inputs)
    odd = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    with pytest.raises(ValueError, match=r"'scale' of class _Scale .*layers=\{'scale': None\}"):
        apply_ssl(odd, coupled=False)
    kept = apply_ssl(odd, filters=0.1, coupled=False, layers={"scale": None})
    assert type(kept.get_layer("scale")) is _Scale
    assert isinstance(kept.get_layer("out"), StructuredSparsity)


def test_apply_ssl_unknown_layer_error_says_what_is_supported_and_how_to_register():
    inputs = keras.Input((4,))
    x = _Scale(name="scale")(inputs)
    odd = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    with pytest.raises(ValueError) as info:
        apply_ssl(odd, coupled=False)
    message = str(info.value)
    layer_classes = [c for c in registry.registered_classes()
                     if issubclass(c, keras.layers.Layer)]
    assert "Layer 'scale' of class _Scale has weights" in message
    assert f"Supported: {len(layer_classes)} registered layer classes" in message
    for name in ("Dense", "Add", "Flatten", "LayerNormalization"):
        assert name in message
    assert "pass-through: BatchNormalization" not in message  # no hard-coded list
    assert "layers={'scale': None}" in message
    assert message.endswith("Received: layer='scale' (_Scale)")
    # The call the message shows is a correct one: run as written, apply_ssl takes the layer.
    (call,) = re.findall(r"`(ssl_keras\.register_layer\(.*?\))`", message)
    assert call.startswith("ssl_keras.register_layer(_Scale, ssl_keras.LayerSpec(")
    saved = dict(registry._REGISTRY)
    try:
        eval(call, {"ssl_keras": ssl_keras, "_Scale": _Scale})
        assert f"Supported: {len(layer_classes) + 1} registered" in _unknown_layer_message(odd)
        kept = apply_ssl(odd, filters=0.1, coupled=False)
        coupled = apply_ssl(odd, filters=0.1)
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
    assert type(kept.get_layer("scale")) is _Scale
    assert type(coupled.get_layer("scale")) is _Scale and isinstance(coupled, SSLModel)


def _unknown_layer_message(model):
    """The message of the error apply_ssl raises for a second unregistered layer class."""

    class _Other(keras.layers.Layer):  # not a subclass of _Scale: unregistered
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w

    inputs = keras.Input((4,))
    x = _Other(name="other")(inputs)
    with pytest.raises(ValueError, match="of class _Other has weights") as info:
        apply_ssl(keras.Model(inputs, x), coupled=False)
    return str(info.value)


def test_apply_ssl_knows_a_layer_registered_by_the_user():
    inputs = keras.Input((4,))
    x = _Scale(name="scale")(inputs)
    odd = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    saved = dict(registry._REGISTRY)
    try:
        registry.register_layer(_Scale, LayerSpec(Kind.PASSTHROUGH))
        kept = apply_ssl(odd, filters=0.1, coupled=False)
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
    assert type(kept.get_layer("scale")) is _Scale
    assert isinstance(kept.get_layer("out"), StructuredSparsity)
    with pytest.raises(ValueError, match=r"'scale' of class _Scale has weights"):
        apply_ssl(odd, coupled=False)


@pytest.mark.parametrize(
    "cls", [c for c in registry.builtin_classes() if issubclass(c, keras.layers.Layer)],
    ids=lambda c: c.__name__)
def test_apply_ssl_knows_every_registered_layer(cls):
    """Which layers apply_ssl may leave as they are comes from the registry, so the two cannot
    drift apart: a registered layer (weights or not) is never rejected as unknown, and it is
    wrapped exactly when the kernel table has its class."""
    keras.utils.set_random_seed(0)
    model = LAYER_CASES[cls]()  # the model for the class: its layer is named "x"
    layer = model.get_layer("x")
    assert type(layer) is cls
    wrapped = apply_ssl(model, filters=0.1, coupled=False)
    new = wrapped.get_layer("x")
    if kernel_specs(layer) is None:
        assert type(new) is cls
    else:
        assert isinstance(new, StructuredSparsity) and type(new.ssl_inner_layer) is cls


@pytest.mark.parametrize("epsilon, shown", [
    (True, "True"), (0, "0"), (-1e-8, "-1e-08"), (float("nan"), "nan"), (float("inf"), "inf"),
    ("1e-8", r"'1e-8' \(of type str\)"), (None, r"None \(of type NoneType\)"),
])
def test_ssl_model_epsilon_is_validated_in_constructor_and_from_config(epsilon, shown):
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, name="d")(inputs)
    message = rf"`ssl_epsilon` must be a finite float > 0\. Received: ssl_epsilon={shown}"
    with pytest.raises(ValueError, match=message):
        SSLModel(inputs, outputs, ssl_epsilon=epsilon)
    config = SSLModel(inputs, outputs, ssl_groups=[], ssl_epsilon=1e-6).get_config()
    config["ssl_epsilon"] = epsilon
    with pytest.raises(ValueError, match=message):
        SSLModel.from_config(config)


def test_ssl_model_epsilon_round_trip():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, name="d")(inputs)
    model = SSLModel(inputs, outputs, ssl_groups=[], ssl_epsilon=np.float32(0.5))
    assert model.ssl_epsilon == 0.5 and type(model.ssl_epsilon) is float
    config = model.get_config()
    assert SSLModel.from_config(config).get_config()["ssl_epsilon"] == 0.5 == config["ssl_epsilon"]


def _lenet_ssl():
    keras.utils.set_random_seed(7)
    return apply_ssl(lenet(input_shape=(16, 16, 1), filters=(3, 4), units=5), filters=0.1)


def _slice(**changes):
    """A one-slice group of the lenet SSLModel (conv1 kernel is 5x5x1x3), with `changes`."""
    return [{"id": "g", "coefficient": 1.0, "slices": [
        {"layer": "conv1", "weight": "kernel", "axis": -1, "index": [0], **changes}]}]


# ssl_groups -> the message of validate_groups: what was wrong, expected, received.
_BAD_SSL_GROUPS = {
    "axis_out_of_range": (_slice(axis=7), r"Group 'g', slices\[0\] \(conv1/kernel\): 'axis' "
                          r"must be an integer \(not a bool\) in \[-4, 4\) for a weight of "
                          r"shape \(5, 5, 1, 3\)\. Received: axis=7 \(of type int\)"),
    "axis_bool": (_slice(axis=True), r"'axis' must be an integer \(not a bool\) in \[-4, 4\).*"
                  r"Received: axis=True \(of type bool\)"),
    "axis_float": (_slice(axis=1.0), r"'axis' must be an integer .*Received: axis=1\.0 "
                   r"\(of type float\)"),
    "axis_str": (_slice(axis="0"), r"'axis' must be an integer .*Received: axis='0' "
                 r"\(of type str\)"),
    "index_out_of_range": (_slice(index=[9]), r"'index' must list integers \(not bools\) in "
                           r"\[0, 3\) .*Received: 9 \(of type int\) in index=\[9\]"),
    "no_such_weight": (_slice(weight="gamma", axis=0), r"layer 'conv1' has no weight 'gamma'\. "
                       r"Expected one of \['bias', 'kernel'\]\. Received: weight='gamma'"),
    "no_such_layer": (_slice(layer="ghost"), r"the model '\w+' has no layer 'ghost'\. "
                      r"Expected a layer name .*Received: layer='ghost'"),
    "not_a_list": ({"id": "g"}, r"`ssl_groups` must be a list of group dicts .*"
                   r"Received: ssl_groups=\{'id': 'g'\} \(of type dict\)"),
    "no_coefficient": ([{"id": "g", "slices": _slice()[0]["slices"]}],
                       r"Group 'g': every group of `ssl_groups` needs a 'coefficient' .*"
                       r"Received keys: \['id', 'slices'\]"),
    "blocked_group": ([{**_slice()[0], "blocked": "reaches the output"}],
                      r"Group 'g': `ssl_groups` must not hold blocked groups .*Expected "
                      r"blocked=None\. Received: blocked='reaches the output'"),
    "unpenalised_slice": (_slice(penalize=False),
                          r"Group 'g', slices\[0\] \(conv1/kernel\): `ssl_groups` holds only "
                          r"the penalised slices .*Received: penalize=False"),
    "negative_coefficient": ([{**_slice()[0], "coefficient": -1.0}],
                             r"Group 'g': 'coefficient' must be a finite number >= 0\. "
                             r"Received: coefficient=-1\.0 \(of type float\)"),
}


def _assert_keras_style(info):
    text = str(info.value)
    assert "\n" not in text
    assert "Received" in text and re.search(r"[Ee]xpected|must|needs", text)


@pytest.mark.parametrize("groups, message", list(_BAD_SSL_GROUPS.values()),
                         ids=list(_BAD_SSL_GROUPS))
def test_malformed_ssl_groups_fail_at_construction_and_from_config(groups, message):
    ssl = _lenet_ssl()
    with pytest.raises(ValueError, match=message) as info:
        SSLModel(inputs=ssl.input, outputs=ssl.output, ssl_groups=groups)
    _assert_keras_style(info)
    # Functional from_config builds the model without ssl_groups: it must check them itself.
    config = json.loads(json.dumps(ssl.get_config()))
    config["ssl_groups"] = groups
    with pytest.raises(ValueError, match=message) as info:
        SSLModel.from_config(config)
    _assert_keras_style(info)


def _edit_saved_config(path, edit):
    """Rewrites the config.json inside the .keras file at `path` with `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config["config"])
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_ssl_groups_round_trip_and_a_bad_saved_group_fails_at_load(tmp_path):
    ssl = _lenet_ssl()
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 1)).astype("float32")
    path = str(tmp_path / "ssl.keras")
    ssl.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is SSLModel and loaded.ssl_groups == ssl.ssl_groups
    np.testing.assert_allclose(loaded(x), ssl(x), atol=1e-6)
    np.testing.assert_allclose(float(loaded.ssl_coupled_loss()), float(ssl.ssl_coupled_loss()),
                               rtol=1e-6)

    def bool_axis(config):  # the first slice's axis -1 -> True (which is not axis 1)
        config["ssl_groups"][0]["slices"][0]["axis"] = True

    _edit_saved_config(path, bool_axis)
    message = (r"Group 'conv1:0', slices\[0\] \(conv1/kernel\): 'axis' must be an integer "
               r"\(not a bool\) in \[-4, 4\).*Received: axis=True \(of type bool\)")
    with pytest.raises(ValueError, match=message) as info:
        keras.models.load_model(path)
    _assert_keras_style(info)


def test_ssl_groups_with_depth_groups_round_trip_through_from_config():
    """apply_ssl's groups (channels, and residual branches with "zero_with") pass the checks
    after a JSON round trip, and give the same model and loss."""
    ssl = apply_ssl(_tiny_resnet(), filters=0.01, channels=0.02, depth=0.04)
    assert any(g.get("zero_with") for g in ssl.ssl_groups)
    config = json.loads(json.dumps(ssl.get_config()))
    again = SSLModel.from_config(config)
    again.set_weights(ssl.get_weights())
    assert again.ssl_groups == ssl.ssl_groups
    assert again.get_config()["ssl_groups"] == config["ssl_groups"]
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again(x), ssl(x), atol=1e-6)
    np.testing.assert_allclose(_total_loss(again), _total_loss(ssl), rtol=1e-6)


@pytest.mark.parametrize("groups, message", [_BAD_SSL_GROUPS[k] for k in
                                             ("not_a_list", "no_coefficient",
                                              "negative_coefficient")],
                         ids=["not_a_list", "no_coefficient", "negative_coefficient"])
def test_reassigned_ssl_groups_are_checked_and_the_model_keeps_its_groups(groups, message):
    ssl = _lenet_ssl()
    before = list(ssl.ssl_groups)
    with pytest.raises(ValueError, match=message) as info:
        ssl.ssl_groups = groups
    _assert_keras_style(info)
    assert ssl.ssl_groups == before


def test_reassigned_ssl_groups_make_the_next_loss_and_fit_use_them():
    ssl = _lenet_ssl()
    # A zero learning rate: the weights stay, so the reported losses can be checked exactly.
    ssl.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = np.random.default_rng(4).normal(size=(4, 16, 16, 1)).astype("float32")
    y = np.zeros((4, 10), "float32")
    data = float(np.mean((np.asarray(ssl(x)) - y) ** 2))
    full = _total_loss(ssl)  # caches the terms of every group
    ssl.fit(x, y, epochs=1, verbose=0)  # traces a train step with them
    np.testing.assert_allclose(ssl.evaluate(x, y, verbose=0), data + full, rtol=1e-4)
    one = [dict(ssl.ssl_groups[0], coefficient=2.0)]
    ssl.ssl_groups = one
    assert ssl.ssl_groups == one and len(ssl.ssl_coupled_terms().groups) == 1
    np.testing.assert_allclose(_total_loss(ssl), _coupled_oracle(ssl, one), rtol=1e-5)
    assert _total_loss(ssl) != pytest.approx(full)
    # The steps traced before (same compile) are traced again with the new groups.
    np.testing.assert_allclose(ssl.evaluate(x, y, verbose=0),
                               data + _coupled_oracle(ssl, one), rtol=1e-4)
    history = ssl.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], data + _coupled_oracle(ssl, one),
                               rtol=1e-4)
    ssl.ssl_groups = None
    assert ssl.ssl_groups == [] and _total_loss(ssl) == 0.0
    np.testing.assert_allclose(ssl.evaluate(x, y, verbose=0), data, rtol=1e-4)


@pytest.mark.parametrize("coupled", [False, True])
def test_a_mask_passes_through_wrapped_layers(coupled):
    """Masking -> Dense -> GlobalAveragePooling1D averages the unmasked steps only; the
    wrapped Dense keeps the mask (no Keras warning that it is destroyed) and the outputs."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((5, 3))
    x = keras.layers.Masking(name="mask")(inputs)
    x = keras.layers.Dense(4, name="dense", bias_initializer="ones")(x)
    outputs = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(inputs, outputs)
    data = np.random.default_rng(5).random((2, 5, 3)).astype("float32")
    data[:, 3:] = 0.0  # the last two steps are masked
    dense = model.get_layer("dense")
    unmasked = np.asarray(dense(data)).mean(axis=1)
    masked = np.asarray(dense(data[:, :3])).mean(axis=1)
    np.testing.assert_allclose(model(data), masked, rtol=1e-6)
    assert not np.allclose(masked, unmasked)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapped = apply_ssl(model, filters=0.1, coupled=coupled)
        assert isinstance(wrapped.get_layer("dense"), StructuredSparsity)
        np.testing.assert_allclose(wrapped(data), masked, rtol=1e-6)


def test_apply_ssl_warns_when_a_layer_carries_its_own_group_lasso():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1", kernel_regularizer="l2")(inputs)
    x = keras.layers.Conv2D(4, 3, name="c2",
                            kernel_regularizer=ssl_keras.GroupLasso(filters=1e-4))(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(x)))
    for coupled in (True, False):
        with pytest.warns(UserWarning, match=r"Layers \['c2'\] of model '.*' already carry a "
                                             r"GroupLasso .* penalised twice .*layers=\{'c2': "
                                             r"None\}") as caught:
            apply_ssl(model, filters=1e-4, channels=1e-4, coupled=coupled)
        assert caught[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(UserWarning, match=r"Layers \['c2'\] of the layer already carry") as caught:
        apply_ssl(model.get_layer("c2"), filters=1e-4)
    assert caught[0].filename == __file__
    # a single layer: the remedy is not `layers=` (refused for a layer); ProximalGroupLasso
    # shrinks both penalties (it switches off both gradients)
    text = str(caught[0].message)
    assert "layers=" not in text and "wrap a copy of the layer without its regulariser" in text
    assert "shrinks them twice per step" in text and "apply_ssl's groups only" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an L2 regulariser, or c2 left out: no warning
        apply_ssl(model, filters=1e-4, channels=1e-4, layers={"c2": None})
        apply_ssl(model.get_layer("c1"), filters=1e-4)


def test_a_nested_model_is_refused_with_what_to_do():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inner(inputs)))
    for coupled in (True, False):
        with pytest.raises(ValueError, match=r"Layer 'inner' is a nested model \(Sequential\): "
                                             r"apply_ssl does not descend .*layers=\{'inner': "
                                             r"None\}"):
            apply_ssl(model, filters=1e-3, coupled=coupled)
    ssl = apply_ssl(model, filters=1e-3, layers={"inner": None})
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(ssl(x), model(x), atol=1e-6)


def test_clone_model_of_an_ssl_model_warns_that_its_groups_are_gone(tmp_path):
    """keras.models.clone_model rebuilds an SSLModel from inputs and outputs only: its coupled
    groups and penalty were lost without a word. Now a warning says so and how to keep them;
    apply_ssl, loading, strip_ssl, zero_groups and thin build no such model."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ssl = apply_ssl(model, filters=0.01, channels=0.01)
        path = tmp_path / "s.keras"
        ssl.save(path)
        loaded = keras.saving.load_model(path)
        for transform in (ssl_keras.strip_ssl, ssl_keras.zero_groups, ssl_keras.thin):
            transform(loaded)
        SSLModel(inputs, model.outputs, ssl_groups=[])  # none on purpose: no warning
    with pytest.warns(UserWarning, match=r"built without `ssl_groups`.*clone_model.*"
                                         r"clone.ssl_groups = model.ssl_groups"):
        clone = keras.models.clone_model(ssl)
    clone.ssl_groups = ssl.ssl_groups
    clone.set_weights(ssl.get_weights())
    penalty = float(sum(ssl.losses))
    assert penalty > 0 and float(sum(clone.losses)) == pytest.approx(penalty)


def test_depth_groups_of_branches_with_plain_operations():
    """Found by probing. Was: 'No such layer: add' from apply_ssl(depth=...) when a residual
    branch holds a plain operation (hard-sigmoid as `relu6(x + 3) / 6`, as keras.applications'
    MobileNetV3 writes it). A plain operation after the branch's last BatchNorm may not map 0
    to 0, so the group then holds the kernels, not that BatchNorm."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    y = keras.layers.ReLU(6.0, name="relu6")(y + 3.0) * (1.0 / 6.0)
    y = keras.layers.BatchNormalization(name="bn")(
        keras.layers.Conv2D(4, 3, padding="same", name="c2")(y))
    ends_in_bn = keras.layers.Add(name="add_bn")([inputs, y])
    z = keras.layers.Conv2D(4, 3, padding="same", name="c3")(ends_in_bn)
    z = keras.layers.BatchNormalization(name="bn2")(z) + 1.0  # an operation after the BN
    out = keras.layers.Add(name="add_op")([ends_in_bn, z])
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(
        out)))
    branch = next(b for b in residual_branches(model) if b["add"] == "add_bn" and b["layers"])
    assert branch["layers"] == ["c1", "relu6", "c2", "bn"]
    assert len(branch["operations"]) == 6  # with the add and multiply operations
    ssl = apply_ssl(model, filters=1e-3, depth=0.1)
    groups = {g["id"]: g for g in ssl.ssl_groups if g["id"].startswith("depth:")}
    assert [(s["layer"], s["weight"]) for s in groups["depth:add_bn:1"]["slices"]] == [
        ("bn", "gamma"), ("bn", "beta")]
    assert [(s["layer"], s["weight"]) for s in groups["depth:add_op:1"]["slices"]] == [
        ("c3", "kernel"), ("bn2", "gamma")]
    np.testing.assert_allclose(_total_loss(ssl), _coupled_oracle(ssl, ssl.ssl_groups),
                               rtol=1e-5)


@pytest.mark.parametrize("coupled", [True, False])
def test_wrappers_compute_in_the_wrapped_layers_dtype(coupled):
    # The wrappers took the global policy: a float64 layer's inputs were cast to float32
    # first (1e-12 came out as 0.0), and under mixed_float16 a float32 head's inputs were
    # cast to float16.
    inp = keras.Input((4,), dtype="float64")
    h = keras.layers.Dense(4, name="d1", dtype="float64")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="d2", dtype="float64")(h))
    model.get_layer("d1").set_weights([np.eye(4), np.zeros(4)])
    model.get_layer("d2").set_weights([np.ones((4, 1)), np.zeros(1)])
    x = np.array([[1.0 + 1e-12, 1.0, 1.0, -3.0]])
    ssl = apply_ssl(model, filters=1e-3, coupled=coupled)
    assert ssl.get_layer("d1").dtype_policy.name == "float64"
    assert float(ssl(x)[0, 0]) == float(model(x)[0, 0]) != 0.0
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        inp = keras.Input((4,))
        h = keras.layers.Dense(4, name="h", dtype="float32")(inp)
        head = keras.Model(inp, keras.layers.Dense(1, name="o", dtype="float32")(h))
        head.get_layer("h").set_weights([np.eye(4, dtype="float32"), np.zeros(4, "float32")])
        head.get_layer("o").set_weights([np.ones((4, 1), "float32"), np.zeros(1, "float32")])
        ssl = apply_ssl(head, filters=1e-3, coupled=coupled)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.array([[1.0001, 1000.0, 0.0, -1001.0]], dtype="float32")
    assert ssl.get_layer("o").dtype_policy.name == "float32"
    assert float(ssl(x)[0, 0]) == float(head(x)[0, 0]) != 0.0


def test_coupled_model_trains_with_floatx_float64():
    # The coupled penalty was always float32, and Keras sums the losses in floatx:
    # "Cannot convert a list containing a tensor of dtype float32 to float64".
    try:
        keras.config.set_floatx("float64")
        inp = keras.Input((4,))
        h = keras.layers.Dense(3, name="d1")(inp)
        model = keras.Model(inp, keras.layers.Dense(2, name="d2")(h))
        ssl = apply_ssl(model, filters=1e-2)
        ssl.compile("sgd", "mse")
        history = ssl.fit(np.ones((4, 4)), np.ones((4, 2)), epochs=2, verbose=0)
        assert ssl.ssl_coupled_loss().dtype == "float64"
    finally:
        keras.config.set_floatx("float32")
    assert np.all(np.isfinite(history.history["loss"]))
