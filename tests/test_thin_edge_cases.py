"""thin / zero_groups on layers and graphs found by probing: each case failed before its fix
(wrong outputs without an error, a crash, or an error naming the wrong cause)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers as L  # noqa: E402
from keras import ops  # noqa: E402

import ssl_keras  # noqa: E402
from ssl_keras.thin import thin, thinning_plan  # noqa: E402
from tests.test_thin import assert_equivalent  # noqa: E402


def _reasons(model):
    return {g["id"]: g["blocked"] for g in ssl_keras.removable_groups(model)}


def _channels_first_conv_runs() -> bool:
    """TensorFlow's CPU Conv2D runs NCHW only through oneDNN, which it turns on by default only
    for CPUs with certain newer instruction sets (the Intel Xeon here, not the AMD EPYC:
    UnimplementedError)."""
    try:
        L.Conv2D(1, 1, data_format="channels_first")(np.zeros((1, 1, 2, 2), "float32"))
    except Exception:  # tensorflow's UnimplementedError
        return False
    return True


def test_channels_first_conv_with_zero_border_columns_is_not_cropped():
    """Was: the kernel cropped to 3x2 with a channels-last Cropping2D in front (it cropped the
    height axis): outputs off by 0.3, no error; with 'same' padding a shape error. Where the
    CPU cannot run the model, the thinned model must be the same layers with the same
    weights (which computes the same outputs)."""
    rng = np.random.default_rng(0)
    runs = _channels_first_conv_runs()
    for padding in ("valid", "same"):
        inp = keras.Input((3, 10, 10))
        x = L.Conv2D(4, 3, padding=padding, data_format="channels_first", name="c1")(inp)
        model = keras.Model(inp, L.GlobalAveragePooling2D(data_format="channels_first")(x))
        k = rng.normal(size=(3, 3, 3, 4)).astype("float32")
        k[:, -1] = 0
        model.get_layer("c1").set_weights([k, rng.normal(size=4).astype("float32")])
        small = assert_equivalent(model) if runs else thin(model)
        assert tuple(small.get_layer("c1").kernel.shape) == (3, 3, 3, 4)
        assert [type(layer).__name__ for layer in small.layers] == [
            "InputLayer", "Conv2D", "GlobalAveragePooling2D"]
        assert small.get_layer("c1").get_config()["padding"] == padding
        for got, want in zip(small.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


def test_layer_shared_with_a_dropped_residual_branch_keeps_its_live_call():
    """Was: KeyError from the call of the shared conv on the dropped branch's tensor."""
    inp = keras.Input((8, 8, 4))
    a = L.Conv2D(4, 3, padding="same", name="ca")(inp)
    shared = L.Conv2D(4, 3, padding="same", name="sh")
    z = L.Conv2D(4, 3, padding="same", name="z")(a)
    x = L.Add(name="add")([shared(a), shared(z)])
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(L.Conv2D(3, 3, name="c2")(x))))
    model.get_layer("z").set_weights([np.zeros((3, 3, 4, 4), "float32"),
                                      np.full(4, 0.5, "float32")])
    assert thinning_plan(model)["dropped"] == {"add": [1]}
    small = assert_equivalent(model)
    assert "z" not in [layer.name for layer in small.layers]


@keras.saving.register_keras_serializable(package="ssl_keras_tests")
class _Gate(L.Layer):
    """y = x * sigmoid(x @ kernel): with a zero kernel, x / 2 (still the input's)."""

    def build(self, shape):
        self.kernel = self.add_weight(name="kernel", shape=(shape[-1], shape[-1]),
                                      initializer="zeros")

    def call(self, x):
        return x * ops.sigmoid(ops.matmul(x, self.kernel))


def test_unregistered_layer_with_a_zero_kernel_is_not_taken_for_a_constant():
    """Was: its Add operand dropped as input-independent (then an 'Internal error')."""
    inp = keras.Input((6,))
    h = L.Dense(6, name="d1")(inp)
    x = L.Add(name="add")([h, _Gate(name="gate")(h)])
    model = keras.Model(inp, L.Dense(2, name="out")(x))
    plan = thinning_plan(model)
    assert plan["dropped"] == {} and plan["dead"] == []
    small = assert_equivalent(model)
    assert "gate" in [layer.name for layer in small.layers]


def test_lora_dense_blocks_its_channels():
    """Was: its units counted as removable while x @ lora_a @ lora_b still fed them; thin then
    failed on the LoRA weights' shape."""
    rng = np.random.default_rng(0)
    inp = keras.Input((6,))
    d1 = L.Dense(5, name="d1")
    d2 = L.Dense(4, name="d2")
    model = keras.Model(inp, L.Dense(2, name="out")(L.ReLU()(d2(L.ReLU()(d1(inp))))))
    d2.enable_lora(2)
    k = rng.normal(size=(5, 4)).astype("float32")
    k[:, [1, 3]] = 0
    d2._kernel.assign(k)
    d2.lora_kernel_a.assign(rng.normal(size=(5, 2)).astype("float32"))
    d2.lora_kernel_b.assign(rng.normal(size=(2, 4)).astype("float32"))
    reasons = _reasons(model)
    assert "d2:1" not in reasons  # its outputs are not analysed
    assert "lora_kernel_a" in reasons["d1:0"] and "does not declare" in reasons["d1:0"]
    small = assert_equivalent(model)
    assert small.get_layer("d2").units == 4


def test_batchnorm_renorm_blocks_its_channels():
    """Was: 'The plan does not fit layer bn: weight moving_stddev ...'."""
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="c1")(inp)
    x = L.BatchNormalization(renorm=True, name="bn")(x)
    x = L.Conv2D(4, 3, name="c2")(L.ReLU()(x))
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    k, b = model.get_layer("c1").get_weights()
    k[..., [0, 4]] = 0
    model.get_layer("c1").set_weights([k, b])
    reason = _reasons(model)["c1:0"]
    assert "BatchNormalization 'bn'" in reason and "renorm_mean" in reason
    small = assert_equivalent(model)
    assert small.get_layer("c1").filters == 6


def test_shared_reshape_blocks_its_channels():
    """Was: its target_shape rewritten from the first call's channels and used for both."""
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="ca")(inp)
    b = L.Conv2D(6, 3, padding="same", name="cb")(inp)
    reshape = L.Reshape((-1, 6), name="R")
    x = L.Concatenate()([L.Conv1D(3, 3, name="c1a")(reshape(a)),
                         L.Conv1D(3, 3, name="c1b")(reshape(b))])
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(x)))
    k, bias = model.get_layer("ca").get_weights()
    k[..., [1, 2]] = 0
    model.get_layer("ca").set_weights([k, bias])
    assert "a shared Reshape" in _reasons(model)["ca:1"]
    small = assert_equivalent(model)
    assert small.get_layer("ca").filters == 6


@pytest.mark.parametrize("value", ["no", "False", 0.5, None, [0]])
def test_crop_kernels_must_be_a_bool(value):
    """Was: any truthy value cropped."""
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Flatten()(L.Conv2D(4, 5, padding="same", name="c")(inp)))
    with pytest.raises(ValueError, match=r"`crop_kernels` must be a bool.*Received: "
                                         r"crop_kernels="):
        thin(model, crop_kernels=value)



def test_float64_conv_with_a_constant_channel_is_thinned():
    # The fold of a removed constant channel probed a float64 conv with a float32 input:
    # "expected to be a float tensor but is a double tensor" from thinning_plan.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), dtype="float64")
    x = L.Conv2D(4, 3, name="c1", dtype="float64")(inp)
    x = L.Conv2D(4, 3, name="c2", dtype="float64")(x)
    model = keras.Model(inp, L.Dense(2, name="d", dtype="float64")(L.Flatten(dtype="float64")(x)))
    c1 = model.get_layer("c1")
    c1.kernel.assign(np.concatenate([np.zeros((3, 3, 3, 2)), c1.kernel.numpy()[..., 2:]], -1))
    c1.bias.assign(np.array([0.5, -0.25, 0.1, 0.2]))  # the removed filters are constants
    small = thin(model)
    assert small.get_layer("c1").filters == 2
    assert small.get_layer("c2").dtype_policy.name == "float64"
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3))
    want = np.asarray(ssl_keras.zero_groups(model)(x))
    # the documented 1e-5 (the plan keeps folded constants in float32)
    assert np.max(np.abs(np.asarray(small(x)) - want)) <= 1e-5 * (1 + np.max(np.abs(want)))


def test_subclass_that_overrides_call_blocks_with_the_reason():
    # NormDense inherits Dense's spec but centres its output over the units: removing a unit
    # whose consumer rows are zero changed every other unit (0.11 off, no reason given)
    class NormDense(L.Dense):
        def call(self, x):
            y = super().call(x)
            return y - ops.mean(y, axis=-1, keepdims=True)

    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = NormDense(4, name="mid")(L.Dense(5, name="d0")(i))
    model = keras.Model(i, L.Dense(3, name="b")(h))
    for name, index in (("b", 2), ("mid", 1)):  # mid's unit 2 and d0's unit 1 unused
        w = model.get_layer(name).get_weights()
        w[0][index, :] = 0
        model.get_layer(name).set_weights(w)
    plan = thinning_plan(model, 1e-6)
    assert plan["groups"]["d0:1"]["status"] == "kept"
    assert "NormDense inherits the Dense spec but overrides call()" in plan["groups"]["d0:1"][
        "why"]
    small = assert_equivalent(model, threshold=1e-6)
    assert small.get_layer("mid").units == 4 and small.get_layer("d0").units == 5


def test_a_config_without_the_width_key_blocks_with_the_reason():
    # a Dense subclass whose config names its width "width": thin wrote "units" into a config
    # the class ignores and failed with "The plan does not fit layer 'mid'"
    class WidthDense(L.Dense):
        def __init__(self, width, **kwargs):
            kwargs.pop("units", None)
            super().__init__(units=width, **kwargs)
            self.width = width

        def get_config(self):
            config = super().get_config()
            config.pop("units")
            return {**config, "width": self.width}

    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    model = keras.Model(i, L.Dense(3, name="b")(WidthDense(5, name="mid", activation="relu")(i)))
    w = model.get_layer("mid").get_weights()
    w[0][:, 1] = 0
    w[1][1] = 0
    model.get_layer("mid").set_weights(w)
    plan = thinning_plan(model, 1e-6)
    assert plan["groups"]["mid:1"]["status"] == "kept"
    assert "has no 'units' to set the new width in" in plan["groups"]["mid:1"]["why"]
    assert assert_equivalent(model, threshold=1e-6).get_layer("mid").units == 5


@pytest.mark.parametrize("dead", ["one", "a"])
@pytest.mark.parametrize("one_first", [True, False])
def test_add_with_an_operand_broadcast_over_channels(dead, one_first):
    # Add(Conv2D(1), Conv2D(4)): the 1-channel operand is broadcast over the 4 channels. A
    # dead operand was dropped as a residual branch: IndexError (the 1-channel one) or "The
    # plan does not fit" (the 4-channel one)
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(i)
    one = L.Conv2D(1, 1, name="one")(i)
    x = L.Add(name="ad")([one, a] if one_first else [a, one])
    model = keras.Model(i, L.Conv2D(5, 1, name="c")(x))
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
    kernel = model.get_layer(dead).kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    assert_equivalent(model)


def test_a_subclass_that_overrides_convolution_op_blocks():
    # a weight-standardised conv (Keras's documented convolution_op hook): slicing its input
    # channels changes the standardised kernel; it was treated as a plain Conv2D (0.24 off)
    class WSConv2D(L.Conv2D):
        def convolution_op(self, inputs, kernel):
            mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
            var = ops.var(kernel, axis=(0, 1, 2), keepdims=True)
            return super().convolution_op(inputs, (kernel - mean) / ops.sqrt(var + 1e-5))

    i = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(i)
    model = keras.Model(i, L.Conv2D(2, 1)(WSConv2D(5, 3, padding="same", name="c")(a)))
    kernel = model.get_layer("a").kernel
    kernel.assign(np.concatenate([kernel.numpy()[..., :1], np.zeros((3, 3, 3, 2)),
                                  kernel.numpy()[..., 3:]], -1))
    plan = thinning_plan(model)
    assert plan["groups"]["a:1"]["status"] == "kept"
    assert "overrides convolution_op() in WSConv2D" in plan["groups"]["a:1"]["why"]
    assert assert_equivalent(model).get_layer("a").filters == 4
