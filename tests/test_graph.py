"""Tests of ssl_keras.graph: coupled channel groups of functional and Sequential models."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers as L  # noqa: E402

import ssl_keras  # noqa: E402
from examples.models import lenet, resnet  # noqa: E402
from ssl_keras import registry  # noqa: E402
from ssl_keras.graph import find_layer, layer_channels, removable_groups  # noqa: E402
from ssl_keras.registry import Kind, LayerSpec  # noqa: E402
from tests.architectures import LAYER_CASES, chain, merge  # noqa: E402

# ------------------------------------------------------------------------------- helpers


def _by_id(groups):
    return {g["id"]: g for g in groups}


def _group_of(groups, layer, channel):
    """The group that has producer `layer`:`channel` among its members."""
    (group,) = [g for g in groups if {"layer": layer, "channel": channel} in g["members"]]
    return group


def _slices(group, layer=None, role=None):
    return [s for s in group["slices"]
            if (layer is None or s["layer"] == layer) and (role is None or s["role"] == role)]


def _input(model, seed=0):
    rng = np.random.default_rng(seed)
    shape = (2,) + tuple(model.inputs[0].shape[1:])
    if "int" in model.inputs[0].dtype:
        return rng.integers(0, 5, size=shape).astype("int32")
    return rng.normal(size=shape).astype("float32")


def _edit(model, s, fn):
    layer = find_layer(model, s["layer"])
    var = {v.name: v for v in layer.weights}[s["weight"]]
    value = np.array(keras.ops.convert_to_numpy(var))
    index = [slice(None)] * value.ndim
    index[s["axis"]] = s["index"]
    value[tuple(index)] = fn(value[tuple(index)])
    var.assign(value)


def _perturb_is_invisible(model, group, x, rng):
    """Zero the consumer slices, then perturb producer/tied slices: the output must not move.

    If the consumer index map missed a position where the channel is read, the perturbed
    channel would leak into the output.
    """
    for s in _slices(group, role="consumer"):
        _edit(model, s, np.zeros_like)
    before = keras.ops.convert_to_numpy(model(x, training=False))
    for s in group["slices"]:
        if s["role"] == "consumer":
            continue
        if s["weight"] == "moving_variance":
            _edit(model, s, lambda v: np.abs(v) + rng.uniform(0.5, 2.0, v.shape))
        else:
            _edit(model, s, lambda v: v + rng.normal(0.0, 2.0, v.shape) + 1.0)
    after = keras.ops.convert_to_numpy(model(x, training=False))
    return before, after


def _check_consumers(model, groups, max_groups=6, seed=0):
    """Numerical check of every (up to max_groups) unblocked group; returns how many ran."""
    rng = np.random.default_rng(seed)
    x = _input(model, seed)
    saved = [keras.ops.convert_to_numpy(v) for v in model.weights]
    free = [g for g in groups if g["blocked"] is None]
    chosen = [free[i] for i in sorted(rng.choice(len(free), min(max_groups, len(free)),
                                                 replace=False))] if free else []
    for group in chosen:
        before, after = _perturb_is_invisible(model, group, x, rng)
        for v, value in zip(model.weights, saved, strict=True):
            v.assign(value)
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5,
                                   err_msg=f"group {group['id']} leaks into the output")
    return len(chosen)


# ----------------------------------------------------------------- one case per class


def _op_name(model, cls):
    names = [op.name for op in model._operations
             if type(op) is cls and op.name not in ("pre", "pre_b", "post")]
    assert len(names) == 1, names
    return names[0]


@pytest.mark.parametrize("cls", registry.builtin_classes(), ids=lambda c: c.__qualname__)
def test_every_registered_class(cls):
    assert cls in LAYER_CASES, (f"registered class {cls.__qualname__} has no test case in "
                                "LAYER_CASES (tests/architectures.py)")
    keras.utils.set_random_seed(1)
    model = LAYER_CASES[cls]()
    groups = removable_groups(model, strict=True)
    by_id = _by_id(groups)
    name = _op_name(model, cls)
    _, spec = registry.lookup(cls)
    has_pre = any(layer.name == "pre" for layer in model.layers)
    width = model.get_layer("pre").output.shape[-1] if has_pre else 0
    pre = [by_id[f"pre:{c}"] for c in range(width)]
    if spec.kind is Kind.BLOCK:
        for g in pre:
            assert g["blocked"] is not None and f"{cls.__name__} '{name}'" in g["blocked"]
            assert spec.reason in g["blocked"]
        return
    for g in pre:
        assert g["blocked"] is None, g["blocked"]
        assert _slices(g, "post", "consumer") or spec.kind is Kind.PRODUCER
    if spec.kind is Kind.PRODUCER:
        for g in pre:
            assert _slices(g, name, "consumer"), g
        own = [g for g in groups if g["source"] == name]
        assert own and len(own) == model.get_layer(name).output.shape[-1]
        assert own and all(_slices(g, name, "producer") and _slices(g, "post", "consumer")
                           for g in own)
    elif spec.kind is Kind.TIED:
        for c, g in enumerate(pre):
            tied = _slices(g, name, "tied")
            assert tied and [c] in [s["index"] for s in tied]
    elif spec.kind in (Kind.MERGE_TIE, Kind.CONCAT):
        width_b = model.get_layer("pre_b").output.shape[-1]
        if spec.kind is Kind.MERGE_TIE:
            for c, g in enumerate(pre):
                assert {"layer": "pre_b", "channel": c} in g["members"]
                assert g["affine_safe"] is spec.affine_safe
        else:
            for c in range(width_b):
                (s,) = _slices(by_id[f"pre_b:{c}"], "post", "consumer")
                assert s["index"] == [len(pre) + c]
    else:
        for g in pre:
            assert name in g["through"]
            assert g["affine_safe"] is spec.affine_safe
    assert _check_consumers(model, groups) > 0


# ------------------------------------------------------------------ hand-built models


def test_lenet_flatten_offsets_and_output_blocking():
    model = lenet(filters=(3, 4), units=5)
    groups = removable_groups(model)
    by_id = _by_id(groups)
    assert len(groups) == 3 + 4 + 5 + 10
    (s,) = _slices(by_id["conv2:1"], "ip1", "consumer")
    assert s["index"] == list(range(1, 4 * 4 * 4, 4)) and s["axis"] == -2
    (s,) = _slices(by_id["conv1:2"], "conv2", "consumer")
    assert s["index"] == [2] and s["weight"] == "kernel"
    assert by_id["conv1:2"]["through"] == ["pool1"]
    for c in range(10):
        assert by_id[f"ip2:{c}"]["blocked"] == "reaches model output 'ip2'"
    assert all(g["blocked"] is None for g in groups if g["source"] != "ip2")
    assert _check_consumers(model, groups, max_groups=12) == 12


def test_checker_detects_a_wrong_consumer_map():
    model = lenet(filters=(3, 4), units=5)
    group = _by_id(removable_groups(model))["conv2:1"]
    wrong = dict(group, slices=[dict(s, index=s["index"][:-1]) if s["layer"] == "ip1" else s
                                for s in group["slices"]])
    before, after = _perturb_is_invisible(model, wrong, _input(model), np.random.default_rng(0))
    assert not np.allclose(before, after, atol=1e-5)


def test_conv_bn_relu_conv():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, use_bias=False, name="c1")(inputs)
    x = L.BatchNormalization(center=False, name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.Conv2D(3, 3, name="c2")(x)
    model = keras.Model(inputs, L.GlobalAveragePooling2D(name="gap")(x))
    groups = removable_groups(model)
    g = _by_id(groups)["c1:2"]
    assert [(s["layer"], s["weight"], s["role"], s["penalize"]) for s in g["slices"]] == [
        ("c1", "kernel", "producer", True),
        ("bn", "gamma", "tied", True),
        ("bn", "moving_mean", "tied", False),
        ("bn", "moving_variance", "tied", False),
        ("c2", "kernel", "consumer", True),
    ]
    assert g["through"] == ["bn", "relu"] and g["affine_safe"] is True
    assert _by_id(groups)["c2:0"]["blocked"] == "reaches model output 'gap'"
    assert _check_consumers(model, groups) == 4


def test_resnet_identity_and_projection_shortcuts():
    model = resnet(depth=8, input_shape=(8, 8, 3), widths=(2, 3, 4))
    groups = removable_groups(model)
    by_id = _by_id(groups)
    ident = by_id["conv0:1"]
    assert {"layer": "stage1_block1_conv2", "channel": 1} in ident["members"]
    assert {s["layer"] for s in _slices(ident, role="tied")} == {"bn0", "stage1_block1_bn2"}
    assert {s["layer"] for s in _slices(ident, role="consumer")} == {
        "stage1_block1_conv1", "stage2_block1_conv1", "stage2_block1_proj"}
    proj = _group_of(groups, "stage2_block1_conv2", 2)
    assert sorted(m["layer"] for m in proj["members"]) == [
        "stage2_block1_conv2", "stage2_block1_proj"]
    assert "stage2_block1_add" in proj["through"]
    last = _group_of(groups, "stage3_block1_conv2", 3)
    assert _slices(last, "fc", "consumer")[0]["index"] == [3]
    assert len(groups) == 2 + 2 + 3 + 3 + 4 + 4 + 10
    assert _check_consumers(model, groups, max_groups=8) == 8


def test_concatenate_offsets_three_operands():
    inputs = keras.Input((4, 4, 3))
    a = L.Conv2D(2, 1, name="a")(inputs)
    b = L.Conv2D(3, 1, name="b")(inputs)
    c = L.Conv2D(1, 1, name="c")(inputs)
    x = L.Concatenate(name="cat")([a, b, c])
    x = L.Flatten(name="flat")(L.MaxPooling2D(2, name="pool")(x))
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    by_id = _by_id(removable_groups(model))
    assert _slices(by_id["b:1"], "out")[0]["index"] == [3, 9, 15, 21]
    assert _slices(by_id["c:0"], "out")[0]["index"] == [5, 11, 17, 23]
    assert _check_consumers(model, list(by_id.values())) == 6


def test_concatenate_on_a_spatial_axis_ties_operands():
    model = merge(lambda a, b: L.Concatenate(axis=1, name="cat")([a, b]))
    by_id = _by_id(removable_groups(model))
    assert {"layer": "pre_b", "channel": 3} in by_id["pre:3"]["members"]


def test_depthwise_multiplier_keeps_blocks_together():
    model = chain(L.DepthwiseConv2D(3, depth_multiplier=3, name="dw"), channels=2)
    g = _by_id(removable_groups(model))["pre:1"]
    assert [(s["weight"], s["axis"], s["index"]) for s in _slices(g, "dw")] == [
        ("kernel", -2, [1]), ("bias", 0, [3, 4, 5])]
    assert _slices(g, "post")[0]["index"] == [3, 4, 5]


def test_separable_conv_consumes_depthwise_and_pointwise():
    model = chain(L.SeparableConv2D(3, 3, depth_multiplier=2, name="sep"), channels=2)
    by_id = _by_id(removable_groups(model))
    assert [(s["weight"], s["index"]) for s in _slices(by_id["pre:1"], "sep")] == [
        ("depthwise_kernel", [1]), ("pointwise_kernel", [2, 3])]
    assert [(s["weight"], s["role"]) for s in _slices(by_id["sep:2"], "sep")] == [
        ("pointwise_kernel", "producer"), ("bias", "producer_bias")]


def test_conv2d_transpose_axes():
    model = chain(L.Conv2DTranspose(3, 2, name="tr"), spatial=(3, 3))
    by_id = _by_id(removable_groups(model))
    assert _slices(by_id["pre:0"], "tr")[0]["axis"] == -1
    assert _slices(by_id["tr:0"], "tr", "producer")[0]["axis"] == -2


def test_grouped_conv_blocks_its_input_channels():
    model = chain(L.Conv2D(4, 1, groups=2, name="gconv"))
    groups = removable_groups(model)
    by_id = _by_id(groups)
    reason = by_id["pre:0"]["blocked"]
    assert "Conv2D 'gconv'" in reason and "grouped convolution (groups=2)" in reason
    assert not [g for g in groups if g["source"] == "gconv"]


def test_dense_on_a_sequence_reads_the_last_axis():
    model = chain(L.Dense(3, name="x"), spatial=(5,))
    g = _by_id(removable_groups(model))["pre:2"]
    assert _slices(g, "x")[0]["index"] == [2]


def test_nested_functional_and_sequential_models_are_inlined():
    inner_in = keras.Input((5, 5, 4))
    y = L.Conv2D(3, 1, name="conv")(inner_in)
    inner = keras.Model(inner_in, L.ReLU(name="relu")(y), name="inner")
    seq = keras.Sequential([keras.Input((5, 5, 3)), L.Conv2D(2, 1, name="sconv")], name="seq")
    inputs = keras.Input((5, 5, 3))
    x = L.Conv2D(4, 1, name="pre")(inputs)
    x = seq(inner(x))
    model = keras.Model(inputs, L.Dense(2, name="post")(x))
    groups = removable_groups(model)
    by_id = _by_id(groups)
    assert _slices(by_id["pre:1"], "inner/conv", "consumer")[0]["index"] == [1]
    g = by_id["inner/conv:2"]
    assert _slices(g, "seq/sconv", "consumer") and "inner/relu" in g["through"]
    assert _slices(by_id["seq/sconv:0"], "post", "consumer")
    assert find_layer(model, "inner/conv") is inner.get_layer("conv")
    assert _check_consumers(model, groups) == 6


def test_shared_layer_ties_its_calls():
    inputs = keras.Input((5, 5, 3))
    a = L.Conv2D(3, 1, name="a")(inputs)
    b = L.Conv2D(3, 1, name="b")(inputs)
    shared = L.Conv2D(2, 1, name="shared")
    bn = L.BatchNormalization(name="bn")
    x = L.Concatenate(name="cat")([bn(shared(a)), bn(shared(b))])
    model = keras.Model(inputs, L.Dense(2, name="post")(x))
    groups = removable_groups(model)
    by_id = _by_id(groups)
    assert {"layer": "b", "channel": 1} in _group_of(groups, "a", 1)["members"]
    g = by_id["shared:1"]
    assert _slices(g, "post")[0]["index"] == [1, 3]
    assert len([s for s in g["slices"] if s["layer"] == "shared"]) == 2  # kernel + bias once
    calls = [c for c in layer_channels(model) if c["layer"] == "shared"]
    assert len(calls) == 2 and calls[0]["outputs"] == calls[1]["outputs"]
    assert _check_consumers(model, groups) == 5


def test_shared_nested_model_ties_its_calls():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, L.Dense(2, name="d")(inner_in), name="inner")
    inputs = keras.Input((3,))
    a = L.Dense(4, name="a")(inputs)
    b = L.Dense(4, name="b")(inputs)
    model = keras.Model(inputs, L.Dense(1, name="post")(L.Add(name="add")([inner(a),
                                                                           inner(b)])))
    groups = removable_groups(model)
    assert {"layer": "b", "channel": 2} in _group_of(groups, "a", 2)["members"]
    assert "add" in _by_id(groups)["inner/d:1"]["through"]


def test_layer_normalization_and_softmax_block():
    model = chain(L.LayerNormalization(name="ln"))
    reason = _by_id(removable_groups(model))["pre:0"]["blocked"]
    assert reason == "reaches LayerNormalization 'ln' (normalises over channels)"
    model = chain(L.Softmax(name="sm"))
    assert "axis=-1 normalises over the channel axis" in _by_id(
        removable_groups(model))["pre:0"]["blocked"]
    model = chain(L.Activation("softmax", name="act"))
    assert "activation 'softmax'" in _by_id(removable_groups(model))["pre:0"]["blocked"]


@pytest.mark.parametrize("activation, match", [
    ("sparsemax", "activation 'sparsemax' normalises over the channel axis"),
    ("glu", "activation 'glu' gates one half"),
    (lambda t: t / keras.ops.sum(t, axis=-1, keepdims=True),
     "activation '<lambda>' is not one of Keras's element-wise activations"),
])
def test_activations_that_mix_channels_block(activation, match):
    """Only Keras's element-wise activations pass: sparsemax (zero for small inputs, so the
    constant check cannot catch it), glu and a user's function block, in an Activation layer
    and as a producer's own `activation` (which blocks its filters, not its inputs)."""
    reason = _by_id(removable_groups(chain(L.Activation(activation, name="act"))))[
        "pre:0"]["blocked"]
    assert reason is not None and "'act'" in reason and match in reason
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="a")(inputs)
    x = L.Conv2D(4, 3, activation=activation, name="b")(x)
    by_id = _by_id(removable_groups(keras.Model(inputs, L.Dense(2, name="post")(x))))
    assert by_id["a:0"]["blocked"] is None
    assert "is activated by Conv2D 'b'" in by_id["b:0"]["blocked"]
    assert match in by_id["b:0"]["blocked"]


@pytest.mark.parametrize("activation", sorted(registry.ELEMENTWISE_ACTIVATIONS))
def test_elementwise_activations_pass(activation):
    assert hasattr(keras.activations, activation)  # the list names real Keras activations
    model = chain(L.Activation(activation, name="act"))
    assert _by_id(removable_groups(model))["pre:0"]["blocked"] is None
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, activation=activation, name="b")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="post")(L.Flatten()(x)))
    assert _by_id(removable_groups(model))["b:0"]["blocked"] is None


def test_softmax_classifier_head_keeps_the_layer_in_front_removable():
    inputs = keras.Input((8,))
    x = L.Dense(6, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(x))
    assert _by_id(removable_groups(model))["hidden:0"]["blocked"] is None


@pytest.mark.parametrize("layer, match", [
    (L.BatchNormalization(axis=1, name="x"), r"axis=1 is not the channel \(last\) axis"),
    (L.MaxPooling2D(2, data_format="channels_first", name="x"), "channels_first"),
    (L.Flatten(data_format="channels_first", name="x"), "channels_first"),
    (L.PReLU(shared_axes=[3], name="x"), "shares its alpha"),
    (L.Rescaling([1.0, 2.0, 3.0, 4.0], name="x"), "per-channel scale"),
    (L.Reshape((6, 24), name="x"), r"reshapes the channel axis \(target_shape=\(6, 24\)\)"),
    (L.Permute((3, 1, 2), name="x"), r"moves the channel axis \(dims=\(3, 1, 2\)\)"),
])
def test_unsupported_configurations_block(layer, match):
    reason = _by_id(removable_groups(chain(layer)))["pre:0"]["blocked"]
    assert reason is not None and "'x'" in reason
    assert __import__("re").search(match, reason), reason


def test_multiply_and_zero_padding_are_not_affine_safe():
    by_id = _by_id(removable_groups(chain(L.ZeroPadding2D(1, name="pad"))))
    assert by_id["pre:0"]["affine_safe"] is False
    by_id = _by_id(removable_groups(merge(lambda a, b: L.Multiply()([a, b]))))
    assert by_id["pre:0"]["affine_safe"] is False


def test_broadcast_operand_is_blocked():
    model = merge(lambda a, b: a * b, widths=(4, 1))
    by_id = _by_id(removable_groups(model))
    assert "broadcast over all channels by Multiply" in by_id["pre_b:0"]["blocked"]
    assert by_id["pre:0"]["blocked"] is None


def test_constant_array_operand_blocks():
    model = chain(lambda t: t + np.ones((4,), "float32"))
    assert "constant array operand" in _by_id(removable_groups(model))["pre:0"]["blocked"]


def test_merge_operand_order_names_the_group():
    model = merge(lambda a, b: L.Add(name="add")([a, b]))
    assert [g["id"] for g in removable_groups(model)][:2] == ["pre:0", "pre:1"]


class TwoToOne(keras.layers.Layer):
    def call(self, inputs):
        return inputs[0] + inputs[1]


class Widen(keras.layers.Layer):
    def call(self, x):
        return keras.ops.concatenate([x, x], axis=-1)


def test_a_wrong_user_spec_blocks_instead_of_guessing(clean_registry):
    registry.register_layer(TwoToOne, LayerSpec(Kind.PASSTHROUGH))
    registry.register_layer(Widen, LayerSpec(Kind.PASSTHROUGH))
    model = merge(lambda a, b: TwoToOne(name="two")([a, b]))
    reason = _by_id(removable_groups(model))["pre:0"]["blocked"]
    assert reason == "reaches TwoToOne 'two' (expects one input tensor, received 2)"
    reason = _by_id(removable_groups(chain(Widen(name="wide"))))["pre:0"]["blocked"]
    assert reason == ("reaches Widen 'wide' (its channels do not line up with its inputs: "
                      "check its LayerSpec)")


def test_model_input_tied_by_add_is_blocked():
    inputs = keras.Input((4, 4, 3), name="img")
    x = L.Add(name="add")([inputs, L.Conv2D(3, 1, name="c")(inputs)])
    model = keras.Model(inputs, L.Dense(2, name="post")(x))
    assert _by_id(removable_groups(model))["c:0"]["blocked"] == "tied to model input 'img'"


class Unknown(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def test_unregistered_layer_blocks_or_raises():
    model = chain(Unknown(name="mystery"))
    reason = _by_id(removable_groups(model))["pre:0"]["blocked"]
    assert reason.startswith("reaches unregistered layer 'mystery' (class Unknown)")
    assert "register_layer" in reason
    with pytest.raises(ValueError, match=r"Layer 'mystery' \(class .*Unknown\) is not "
                       r"registered.*Supported classes.*Dense.*ssl_keras.register_layer\("
                       r"Unknown, ssl_keras.LayerSpec"):
        removable_groups(model, strict=True)


def test_registered_user_layer_and_subclass_lookup(clean_registry):
    class Sub(L.Dense):
        pass

    model = chain(Sub(3, name="sub"), spatial=())
    assert _slices(_by_id(removable_groups(model))["sub:0"], "sub", "producer")
    registry.register_layer(Unknown, LayerSpec(Kind.PASSTHROUGH))
    model = chain(Unknown(name="mystery"))
    g = _by_id(removable_groups(model, strict=True))["pre:0"]
    assert g["blocked"] is None and "mystery" in g["through"]


def test_user_spec_naming_a_missing_weight(clean_registry):
    registry.register_layer(Unknown, LayerSpec(Kind.TIED, tied=(registry.WeightSlice(
        "scale", 0),)))
    with pytest.raises(ValueError, match=r"Layer 'mystery' \(class Unknown\) has no weight "
                       r"named 'scale'"):
        removable_groups(chain(Unknown(name="mystery")))


class SSLWrapper(keras.layers.Wrapper):
    """A stand-in for ssl_keras.wrap.StructuredSparsity: analysed as its inner layer."""

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        self.ssl_inner_layer = layer

    def build(self, input_shape):
        self.layer.build(input_shape)
        self.built = True

    def call(self, x):
        return self.layer(x)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def test_wrapper_is_analysed_as_its_inner_layer():
    inputs = keras.Input((5, 5, 3))
    x = SSLWrapper(L.Conv2D(4, 3, name="conv"), name="wconv")(inputs)
    x = SSLWrapper(L.BatchNormalization(name="bn"), name="wbn")(x)
    model = keras.Model(inputs, L.Dense(2, name="post")(x))
    groups = removable_groups(model, strict=True)
    g = _by_id(groups)["wconv:1"]
    assert [(s["layer"], s["weight"]) for s in g["slices"]][:3] == [
        ("wconv", "kernel"), ("wconv", "bias"), ("wbn", "gamma")]
    assert _check_consumers(model, groups) == 4


def test_layer_channels_for_the_converter():
    model = resnet(depth=8, input_shape=(8, 8, 3), widths=(2, 3, 4))
    calls = {c["layer"]: c for c in layer_channels(model)}
    add = calls["stage2_block1_add"]
    assert add["class"] == "Add"
    groups = removable_groups(model)
    ids = [_group_of(groups, "stage2_block1_conv2", c)["id"] for c in range(3)]
    assert add["inputs"] == [ids, ids] and add["outputs"] == [ids]
    assert calls["conv0"]["inputs"] == [[None, None, None]]
    flat = {c["layer"]: c for c in layer_channels(lenet(filters=(3, 4), units=5))}["flatten"]
    assert flat["outputs"][0][:5] == ["conv2:0", "conv2:1", "conv2:2", "conv2:3", "conv2:0"]


def test_sequential_model_and_json_round_trip():
    model = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(3, 3, name="c1"),
                              L.MaxPooling2D(name="p"), L.Flatten(name="f"),
                              L.Dense(4, name="d1"), L.Dense(2, name="d2")])
    groups = removable_groups(model)
    assert json.loads(json.dumps(groups)) == groups
    assert _slices(_by_id(groups)["c1:2"], "d1")[0]["index"] == [2, 5, 8, 11]
    assert "c1:0" in str(groups)


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"subclassed model whose call\(\) cannot be analysed"
                       r".*GroupLasso"):
        removable_groups(net)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"Expected a keras.Model .*Received: model="):
        removable_groups(L.Dense(2))
    with pytest.raises(ValueError, match=r"Sequential model 'empty' is not built"):
        removable_groups(keras.Sequential([L.Dense(2)], name="empty"))
    with pytest.raises(ValueError, match=r"No layer 'nope' in 'lenet'"):
        find_layer(lenet(filters=(2, 2), units=3), "nope")


def test_keras_applications_mobilenet_v2():
    model = keras.applications.MobileNetV2((32, 32, 3), alpha=0.35, weights=None, classes=5)
    groups = removable_groups(model, strict=True)
    blocked = [g for g in groups if g["blocked"] is not None]
    assert [g["blocked"] for g in blocked] == ["reaches model output 'predictions'"] * 5
    expand = _group_of(groups, "block_1_expand", 0)
    assert [s["layer"] for s in _slices(expand, role="tied")][:5] == [
        "block_1_expand_BN", "block_1_expand_BN", "block_1_expand_BN", "block_1_expand_BN",
        "block_1_depthwise"]
    assert _check_consumers(model, groups, max_groups=3) == 3


class _Scale(keras.layers.Layer):
    """A per-channel scale: output channel c = input channel c * w[c] (it owns weights)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return x * self.w


def test_a_passthrough_spec_on_a_layer_with_weights_blocks(clean_registry):
    """thin() cannot slice weights it does not know of: such a layer blocks, with the reason
    (thin failed with 'The plan does not fit layer')."""
    ssl_keras.register_layer(_Scale, ssl_keras.LayerSpec(ssl_keras.Kind.PASSTHROUGH))
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="d1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d2")(_Scale(name="scale")(x)))
    k = np.array(model.get_layer("d1").kernel.numpy())
    k[:, 0] = 0
    model.get_layer("d1").kernel.assign(k)
    (group,) = [g for g in removable_groups(model) if g["source"] == "d1" and g["channel"] == 0]
    assert "registered as PASSTHROUGH but owns per-channel weights ['w'] (an axis of size 3)" \
        in group["blocked"]
    assert ssl_keras.thin(model).get_layer("d1").units == 3
    ssl_keras.register_layer(_Scale, ssl_keras.LayerSpec(ssl_keras.Kind.TIED, tied=(
        ssl_keras.WeightSlice("w", axis=0, penalize=False),)), overwrite=True)
    # Declared TIED, the group is analysed; thin says why it keeps it (no crash either way).
    assert ssl_keras.thinning_plan(model)["groups"]["d1:0"]["why"].startswith(
        "blocked: thin cannot rebuild layer 'scale' of class _Scale with fewer channels")
    small = ssl_keras.thin(model)
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-6)


class _Swish(keras.layers.Layer):
    """x * sigmoid(beta * x) with one learnable scalar beta: no per-channel weight."""

    def build(self, input_shape):
        self.beta = self.add_weight(shape=(), initializer="ones", name="beta")

    def call(self, x):
        return x * keras.ops.sigmoid(self.beta * x)


def test_a_passthrough_layer_with_a_scalar_weight_still_thins(clean_registry):
    ssl_keras.register_layer(_Swish, ssl_keras.LayerSpec(ssl_keras.Kind.PASSTHROUGH))
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="b")(_Swish(name="swish")(x)))
    k = np.array(model.get_layer("a").kernel.numpy())
    k[:, :3] = 0
    model.get_layer("a").kernel.assign(k)
    small = ssl_keras.thin(model)
    assert small.get_layer("a").units == 3
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(small(x), model(x), rtol=1e-5, atol=1e-6)
