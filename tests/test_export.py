"""export_tflite, evaluate_tflite and the command line: modes, agreement, ops, errors, writes."""

import json
import os
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import ssl_keras
from ssl_keras import _export_convert, _export_inputs, _tflite, export
from ssl_keras.export import ExportReport, evaluate_tflite, export_tflite, predict_tflite
from tests.cli_helpers import run_main

MODES = [None, "float16", "dynamic", "int8"]
SHAPE = (10, 10, 2)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ops that would mean an unfolded BatchNorm (x * scale + offset, or the rsqrt of the variance).
BATCHNORM_OPS = {"MUL", "ADD", "SUB", "RSQRT", "SQRT", "DIV"}


def conv_bn_net(filters=(6, 8), units=3, name="conv_bn", conv2_padding="valid"):
    """A small conv net with BatchNorm (non-trivial statistics) of the kind thin() produces."""
    inputs = keras.Input(SHAPE, name="image")
    x = keras.layers.Conv2D(filters[0], 3, use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(filters[1], 3, activation="relu", padding=conv2_padding,
                            name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(units, name="fc")(x)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(1)
    bn = model.get_layer("bn1")
    gamma, beta, mean, var = (w.copy() for w in bn.get_weights())
    bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.3, beta.shape),
                    rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return model


def data(n, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return conv_bn_net()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """One export per mode of the conv + BatchNorm net (shared by the tests below)."""
    directory = tmp_path_factory.mktemp("modes")
    calibration = data(64, seed=1)
    reports = {}
    for mode in MODES:
        path = directory / f"net_{mode or 'float32'}.tflite"
        reports[mode] = export_tflite(
            model, path, quantize=mode, batch_size=2,
            representative_data=calibration if mode == "int8" else None,
        )
    return reports


# ------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", MODES)
def test_report_describes_the_written_file(exported, mode):
    report = exported[mode]
    assert isinstance(report, ExportReport)
    assert os.path.getsize(report.path) == report.size_bytes > 0
    with open(report.path, "rb") as f:
        assert _tflite.op_counts(f.read()) == report.op_counts
    assert report.quantize == (mode or "float32")
    assert report.inputs[0].name == "image" and report.inputs[0].shape == (2, *SHAPE)
    assert report.outputs[0].shape == (2, 3)
    int8 = mode == "int8"
    assert report.inputs[0].dtype == report.outputs[0].dtype == ("int8" if int8 else "float32")
    assert (report.inputs[0].scale is not None) == int8
    assert report.verified_samples == 8 and report.max_abs_diff is not None
    # int8 got 64 samples (< 100 calibration + 8): it is checked on its calibration samples.
    assert report.verified_on == ("representative data" if int8 else "random uniform [0, 1)")
    d = report.to_dict()
    assert d["size_bytes"] == report.size_bytes and d["inputs"][0]["shape"] == [2, *SHAPE]
    assert '"op_counts"' in report.to_json()
    assert f"max |tflite - keras| = {report.max_abs_diff:.3g} over 8 samples" in str(report)
    assert "CONV_2D x2" in str(report)


@pytest.mark.parametrize("mode", MODES)
def test_batchnorm_folded_and_builtin_ops_only(exported, mode):
    ops = exported[mode].op_counts
    assert ops["CONV_2D"] == 2 and ops["FULLY_CONNECTED"] == 1 and ops["MAX_POOL_2D"] == 1
    assert not BATCHNORM_OPS & set(ops), ops
    assert not any(name.startswith("Flex") for name in ops)
    if mode == "float16":
        assert "DEQUANTIZE" in ops  # float16 weights, dequantised at run time


def test_sizes_shrink_with_quantisation(exported):
    size = {mode: exported[mode].size_bytes for mode in MODES}
    assert size["float16"] < size[None] and size["int8"] < size[None]


@pytest.mark.parametrize("mode,tol", [(None, 1e-4), ("float16", 2e-2), ("dynamic", 2e-2),
                                      ("int8", 0.1)])
def test_agreement_with_keras_on_fresh_inputs(model, exported, mode, tol):
    """Independent of the built-in check: 7 new samples (odd, so the last batch is padded)."""
    x = data(7, seed=5)
    want = model.predict(x, verbose=0)
    got = predict_tflite(exported[mode].path, x)["output_0"]
    assert got.shape == want.shape and got.dtype == np.float32
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= tol * max(scale, 1.0)
    assert exported[mode].max_abs_diff <= tol * max(exported[mode].max_abs_output, 1.0)
    if mode is None:
        assert exported[mode].max_abs_diff <= 1e-4


def test_int8_quantisation_matches_a_numpy_oracle(model, exported):
    """Quantise inputs and dequantise outputs by hand, run the raw interpreter, compare."""
    from ai_edge_litert.interpreter import Interpreter

    report = exported["int8"]
    i, o = report.inputs[0], report.outputs[0]
    x = data(2, seed=9)
    q = np.clip(np.round(x / i.scale) + i.zero_point, -128, 127).astype(np.int8)
    assert np.array_equal(_tflite.quantize(x, i), q)
    interpreter = Interpreter(model_path=report.path)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], q)
    interpreter.invoke()
    raw = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert raw.dtype == np.int8
    manual = (raw.astype(np.float64) - o.zero_point) * o.scale
    got = predict_tflite(report.path, x)["output_0"]
    np.testing.assert_allclose(got, manual, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_tflite.dequantize(raw, o), manual, rtol=0, atol=1e-6)
    assert np.abs(manual - model.predict(x, verbose=0)).max() < 0.1 * max(
        1.0, report.max_abs_output)


def test_evaluate_tflite_accuracy_against_keras(model, exported):
    x = data(11, seed=3)
    keras_pred = model.predict(x, verbose=0).argmax(-1)
    y = keras_pred.copy()
    y[:3] = (y[:3] + 1) % 3  # three labels the model gets wrong
    assert evaluate_tflite(exported[None].path, x, y) == pytest.approx(8 / 11)
    one_hot = np.eye(3)[y]
    assert evaluate_tflite(exported[None].path, x, one_hot, batch_size=2) == pytest.approx(8 / 11)
    tflite_pred = predict_tflite(exported["int8"].path, x)["output_0"].argmax(-1)
    expected = np.mean(tflite_pred == y)
    assert evaluate_tflite(exported["int8"].path, x, y) == pytest.approx(expected)


def test_evaluate_tflite_errors(exported, tmp_path):
    path = exported[None].path
    x = data(4)
    with pytest.raises(ValueError, match="static batch size of 2.*Received: batch_size=3"):
        evaluate_tflite(path, x, np.zeros(4), batch_size=3)
    with pytest.raises(ValueError, match="same number of samples"):
        evaluate_tflite(path, x, np.zeros(5))
    with pytest.raises(ValueError, match="`output` must be one of"):
        evaluate_tflite(path, x, np.zeros(4), output="logits")
    with pytest.raises(ValueError, match=r"samples of shape \(10, 10, 2\)"):
        evaluate_tflite(path, data(4, shape=(9, 10, 2)), np.zeros(4))
    with pytest.raises(FileNotFoundError, match="No such .tflite file"):
        evaluate_tflite(tmp_path / "missing.tflite", x, np.zeros(4))
    scorer = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    report = export_tflite(scorer, tmp_path / "one.tflite")
    with pytest.raises(ValueError, match=r"one score per class.*\(4, 1\)"):
        evaluate_tflite(report.path, data(4, shape=(3,)), np.zeros(4))


# ---------------------------------------------------------------------- other models


def test_thinned_model_float32_and_int8(tmp_path):
    """A narrow model, as thin() builds it (plain Keras layers, fewer filters)."""
    keras.utils.set_random_seed(2)
    narrow = conv_bn_net(filters=(2, 3), name="thinned")
    calibration = data(32, seed=4)
    for mode in (None, "int8"):
        report = export_tflite(narrow, tmp_path / f"{mode}.tflite", quantize=mode,
                               representative_data=calibration)
        assert not BATCHNORM_OPS & set(report.op_counts)
        assert report.op_counts["CONV_2D"] == 2
        x = data(5, seed=6)
        diff = np.abs(predict_tflite(report.path, x)["output_0"]
                      - narrow.predict(x, verbose=0)).max()
        assert diff <= (1e-4 if mode is None else 0.1 * max(1.0, report.max_abs_output))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_model_thinned_by_ssl_keras_thin(tmp_path, padding):
    """Two zero filters behind a BatchNorm: thin folds their constant into conv2's bias
    ("valid") or, with zero padding at conv2's borders, into a ConstantAdd map ("same")."""
    keras.utils.set_random_seed(3)
    model = conv_bn_net(filters=(6, 8), conv2_padding=padding)
    kernel = model.get_layer("conv1").get_weights()[0].copy()
    kernel[..., [1, 4]] = 0.0  # two removable filters
    model.get_layer("conv1").set_weights([kernel])
    thinned = ssl_keras.thin(model)
    assert thinned.get_layer("conv1").filters == 4
    constant_add = any(isinstance(la, ssl_keras.ConstantAdd) for la in thinned.layers)
    assert constant_add == (padding == "same")
    x = data(5, seed=7)
    want = model.predict(x, verbose=0)
    for mode in (None, "int8"):
        report = export_tflite(thinned, tmp_path / f"thin_{mode}.tflite", quantize=mode,
                               representative_data=data(32, seed=8))
        assert not any(name.startswith("Flex") for name in report.op_counts)
        assert report.op_counts["CONV_2D"] == 2
        assert ("ADD" in report.op_counts) == constant_add  # ConstantAdd -> one builtin ADD
        got = predict_tflite(report.path, x)["output_0"]
        tol = 1e-4 if mode is None else 0.1 * max(1.0, np.abs(want).max())
        assert np.abs(got - want).max() <= tol, (mode, report.op_counts)


def _two_in_two_out(dict_io):
    a = keras.Input((4,), name="zeta")
    b = keras.Input((3,), name="alpha")
    h = keras.layers.Dense(5, activation="relu")(keras.layers.Concatenate()([a, b]))
    o1, o2 = keras.layers.Dense(2, name="o1")(h), keras.layers.Dense(4, name="o2")(h)
    if dict_io:
        return keras.Model({"zeta": a, "alpha": b}, {"o1": o1, "o2": o2})
    return keras.Model([a, b], [o1, o2])


@pytest.mark.parametrize("dict_io", [False, True])
def test_several_inputs_and_outputs(tmp_path, dict_io):
    keras.utils.set_random_seed(4)
    model = _two_in_two_out(dict_io)
    rng = np.random.default_rng(0)
    xa, xb = rng.random((6, 4), dtype=np.float32), rng.random((6, 3), dtype=np.float32)
    rep = {"zeta": xa, "alpha": xb} if dict_io else [xa, xb]
    report = export_tflite(model, tmp_path / "two.tflite", representative_data=rep)
    assert report.max_abs_diff <= 1e-4
    assert [i.name for i in report.inputs] == ["alpha", "zeta"]
    names = ["o1", "o2"] if dict_io else ["output_0", "output_1"]
    assert [o.name for o in report.outputs] == names
    got = predict_tflite(report.path, {"zeta": xa, "alpha": xb})
    want = model.predict(rep, verbose=0)
    want = [want[k] for k in names] if dict_io else want
    for name, w in zip(names, want, strict=True):
        np.testing.assert_allclose(got[name], w, atol=1e-5, rtol=0)
    y = want[0].argmax(-1)
    assert evaluate_tflite(report.path, {"zeta": xa, "alpha": xb}, y, output=names[0]) == 1.0
    with pytest.raises(ValueError, match="dict keyed by the input names"):
        evaluate_tflite(report.path, [xa, xb], y)
    with pytest.raises(ValueError, match="several outputs"):
        evaluate_tflite(report.path, {"zeta": xa, "alpha": xb}, y)
    with pytest.raises(ValueError, match=r"keyed by the model's input names \['alpha', 'zeta'\]"):
        predict_tflite(report.path, {"zeta": xa, "beta": xb})
    with pytest.raises(ValueError, match="same number of samples"):
        predict_tflite(report.path, {"zeta": xa, "alpha": xb[:5]})


def test_int8_with_two_inputs(tmp_path):
    keras.utils.set_random_seed(5)
    model = _two_in_two_out(False)
    rng = np.random.default_rng(1)
    rep = [rng.random((200, 4), dtype=np.float32), rng.random((200, 3), dtype=np.float32)]
    report = export_tflite(model, tmp_path / "two8.tflite", quantize="int8",
                           representative_data=rep, num_calibration_samples=192)
    assert report.verified_on == "held-out representative data" and report.verified_samples == 8
    assert {i.dtype for i in report.inputs + report.outputs} == {"int8"}
    assert report.max_abs_diff < 0.1 * max(1.0, report.max_abs_output)


def test_mixed_float16_model_is_rebuilt_in_float32(tmp_path):
    keras.utils.set_random_seed(6)
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        mixed = conv_bn_net(name="mixed")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = export_tflite(mixed, tmp_path / "mixed.tflite")
    assert report.rebuilt_float32 and "rebuilt in float32" in str(report)
    assert report.max_abs_diff <= 1e-4  # against the float32 rebuild
    assert mixed.get_layer("conv1").dtype_policy.name == "mixed_float16"  # input untouched
    x = data(3, seed=8)
    got = predict_tflite(report.path, x)["output_0"]
    np.testing.assert_allclose(got, np.asarray(mixed.predict(x, verbose=0), np.float32),
                               atol=0.05, rtol=0)  # float16 compute vs float32


def test_mixed_float16_model_exports_while_the_global_policy_is_still_mixed(tmp_path):
    # The rebuild cloned the InputLayer under the global mixed policy and then refused its
    # own copy ("still has layers computing in reduced precision"): export failed in the
    # process that trained the model unless the global policy was reset first.
    keras.utils.set_random_seed(6)
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        mixed = conv_bn_net(name="mixed")
        report = export_tflite(mixed, tmp_path / "mixed.tflite")
        assert keras.config.dtype_policy().name == "mixed_float16"  # restored after
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert report.rebuilt_float32 and report.max_abs_diff <= 1e-4


def test_a_mixed_float16_ssl_model_exports_without_a_warning(tmp_path):
    """Found by probing: the float32 rebuild cloned the SSLModel class without its groups and
    warned the user to repair a clone they never made."""
    import warnings

    import ssl_keras

    keras.utils.set_random_seed(6)
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        ssl = ssl_keras.apply_ssl(conv_bn_net(name="mixed"), filters=1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = export_tflite(ssl, tmp_path / "ssl.tflite")
    assert report.rebuilt_float32 and report.max_abs_diff <= 1e-4


def test_each_output_is_checked_against_its_own_scale(tmp_path, monkeypatch):
    # a softmax head beside a head of values ~1e5: the tolerance was 1e-4 * (1 + 1e5) for
    # both, so a converter that broke the softmax head (here: another model's file) passed
    import ssl_keras.export as export_module

    def build(scale_cls):
        keras.utils.set_random_seed(0)
        inp = keras.Input((4,), name="x")
        h = keras.layers.Dense(8, activation="relu", name="h")(inp)
        cls = keras.layers.Dense(3, activation="softmax", name="cls")(h)
        price = keras.layers.Dense(1, name="price",
                                   bias_initializer=keras.initializers.Constant(1e5))(h)
        model = keras.Model(inp, [cls, price])
        w = model.get_layer("cls").get_weights()
        model.get_layer("cls").set_weights([scale_cls * w[0], w[1] + [3.0, -3.0, 0.0]])
        return model

    good, broken = build(1.0), build(-5.0)
    real = export_module._convert
    monkeypatch.setattr(export_module, "_convert", lambda model, *a, **k: real(broken, *a, **k))
    with pytest.raises(ValueError, match=r"output '[^']*' max \|diff\| = .* outputs off="):
        export_tflite(good, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()
    monkeypatch.setattr(export_module, "_convert", real)
    assert export_tflite(good, tmp_path / "m.tflite").max_abs_output > 9e4


def test_token_ids_in_float_inputs_and_out_of_range_ids(tmp_path):
    # An Embedding behind a float Input (Keras's default dtype): the check fed uniform [0, 1)
    # floats, i.e. id 0 only, and called that verified; ids out of range raised TensorFlow's
    # InvalidArgumentError (the command line: a traceback) instead of a ValueError.
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="tok")
    emb = keras.layers.Embedding(100, 4)(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(emb)))
    report = export_tflite(model, tmp_path / "f.tflite")
    assert "random ids tok in [0, 100)" in report.verified_on
    with pytest.raises(ValueError, match=r"input 'tok' must be token ids in \[0, 100\).*"
                                         r"from 500 to 500"):
        export_tflite(model, tmp_path / "g.tflite", representative_data=np.full((4, 6), 500.0))
    ints = keras.Input((6,), dtype="int32", name="ids")  # also read by a non-Embedding op
    mask = keras.ops.cast(keras.ops.not_equal(ints, 0), "float32")[..., None]
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(ints) * mask)
    mixed = keras.Model(ints, keras.layers.Dense(2)(pooled))
    with pytest.raises(ValueError, match=r"The Keras model failed on the verification inputs "
                                         r"\(an id outside an Embedding's"):
        export_tflite(mixed, tmp_path / "h.tflite",
                      representative_data=np.full((4, 6), 50, "int32"))
    assert sorted(os.listdir(tmp_path)) == ["f.tflite"]


def test_representative_data_forms_give_the_same_calibration(tmp_path):
    keras.utils.set_random_seed(7)
    model = conv_bn_net(filters=(2, 2))
    x = data(12, seed=2)
    y = np.zeros(12, np.int64)
    struct = _export_inputs._input_struct(model)
    forms = {
        "array": x,
        "dataset of (x, y) batches": tf.data.Dataset.from_tensor_slices((x, y)).batch(5),
        "generator of samples": (s for s in x),
        "list": [x],
        "dict": {"image": x},
    }
    for form, value in forms.items():
        (got,) = _export_inputs._collect(value, struct, limit=10)
        np.testing.assert_array_equal(got, x[:10], err_msg=form)
    a = export_tflite(model, tmp_path / "a.tflite", quantize="int8", representative_data=x,
                      num_calibration_samples=10)
    b = export_tflite(model, tmp_path / "b.tflite", quantize="int8",
                      representative_data=tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
                      num_calibration_samples=10)
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        assert fa.read() == fb.read()


# ------------------------------------------------------------------------ select ops


def _det_model():
    inputs = keras.Input((3, 3), name="m")
    outputs = keras.layers.Lambda(lambda t: tf.linalg.det(t), name="det")(inputs)
    return keras.Model(inputs, outputs, name="det")


def test_select_tf_ops_are_refused_by_name(tmp_path):
    path = tmp_path / "det.tflite"
    with pytest.raises(ValueError, match="builtin kernel for: MatrixDeterminant.*allow_select"):
        export_tflite(_det_model(), path)
    assert not path.exists()


def test_select_tf_ops_allowed_but_not_verifiable(tmp_path):
    with pytest.raises(ValueError, match=r"cannot be verified.*FlexMatrixDeterminant"):
        export_tflite(_det_model(), tmp_path / "a.tflite", allow_select_ops=True)
    report = export_tflite(_det_model(), tmp_path / "b.tflite", allow_select_ops=True,
                           verify=False)
    assert report.op_counts == {"FlexMatrixDeterminant": 1}
    assert report.max_abs_diff is None and "not verified" in str(report)


# ------------------------------------------------------------------------------ errors


def test_argument_errors(model, tmp_path):
    path = tmp_path / "m.tflite"
    x = data(4)
    with pytest.raises(ValueError, match=r"`quantize` must be one of.*Received: quantize='int4'"):
        export_tflite(model, path, quantize="int4")
    with pytest.raises(ValueError, match="needs `representative_data`.*None"):
        export_tflite(model, path, quantize="int8")
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1.*0"):
        export_tflite(model, path, batch_size=0)
    with pytest.raises(ValueError, match="`num_calibration_samples` must be"):
        export_tflite(model, path, num_calibration_samples=True)
    for value in (0, True):
        with pytest.raises(ValueError, match=r"`num_verify_samples` must be an integer >= 1\. "
                           f"Received: num_verify_samples={value}$"):
            export_tflite(model, path, num_verify_samples=value)
    with pytest.raises(ValueError, match="must be a keras.Model.*Dense"):
        export_tflite(keras.layers.Dense(2), path)
    with pytest.raises(FileNotFoundError, match="directory of the output file"):
        export_tflite(model, tmp_path / "no" / "m.tflite")
    with pytest.raises(ValueError, match=r"samples of shape \(10, 10, 2\).*\(4, 10, 10, 3\)"):
        export_tflite(model, path, representative_data=data(4, shape=(10, 10, 3)))
    with pytest.raises(ValueError, match="keyed by the model's input names"):
        export_tflite(model, path, representative_data={"img": x})
    with pytest.raises(ValueError, match="is empty"):
        export_tflite(model, path, representative_data=iter([]))
    with pytest.raises(ValueError, match="must be a NumPy array.*int"):
        export_tflite(model, path, representative_data=3)
    with pytest.raises(ValueError, match=r"at least batch_size=8 samples.*4 samples"):
        export_tflite(model, path, quantize="int8", representative_data=x, batch_size=8)
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="defined inputs.*Received: model='sub'"):
        export_tflite(subclassed, path)
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        mixed_subclassed = Subclassed()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed_subclassed(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="Could not rebuild the mixed-precision model"):
        export_tflite(mixed_subclassed, path)
    a, b = keras.Input((2,), name="a-b"), keras.Input((2,), name="a_b")
    clash = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(ValueError, match=r"input names must be unique.*\['a_b', 'a_b'\]"):
        export_tflite(clash, path)
    flags = keras.Input((4,), dtype="bool", name="flags")
    masked = keras.Model(flags, keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"))(flags))
    with pytest.raises(ValueError, match="float and integer inputs.*'flags' of dtype bool"):
        export_tflite(masked, path)
    i = keras.Input((3,))
    nested = keras.Model(i, [keras.layers.Dense(2)(i), [keras.layers.Dense(1)(i)]])
    for verify in (True, False):  # were: a NumPy error / a SavedModel trace error
        with pytest.raises(ValueError, match=r"one tensor, a flat list of tensors or a flat "
                                             r"dict.*with nested outputs"):
            export_tflite(nested, path, verify=verify)
    dynamic = keras.Model(i := keras.Input((None, 3)), keras.layers.Dense(2)(i))
    with pytest.raises(ValueError, match=r"static input shapes.*\(None, None, 3\)"):
        export_tflite(dynamic, path)
    assert list(tmp_path.iterdir()) == []


def test_float32_disagreement_raises_and_writes_nothing(model, tmp_path, monkeypatch):
    real = _export_convert._keras_outputs
    monkeypatch.setattr(_export_convert, "_keras_outputs",  # where _verify looks it up
                        lambda m, x: {k: v + 1e-3 for k, v in real(m, x).items()})
    with pytest.raises(ValueError, match=r"disagrees.*> atol \* \(1 \+ max \|Keras output\|\) "
                                         r"= 0.0001 \* \(1 \+ .*Nothing was written"):
        export_tflite(model, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_float32_tolerance_is_relative_to_the_outputs(tmp_path):
    """Found by probing. Was: an absolute 1e-4, so a model with outputs near 1e3 (a
    regression head, unnormalised logits) was refused although TFLite agreed to ~1e-7
    relative (float32's spacing at 1e3 is 6e-5)."""
    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(32, 3, activation="relu")(image)
    x = keras.layers.Flatten()(keras.layers.Conv2D(64, 3, activation="relu")(x))
    big = keras.initializers.RandomNormal(stddev=30.0)
    net = keras.Model(image, keras.layers.Dense(4, kernel_initializer=big)(x))
    report = export_tflite(net, tmp_path / "big.tflite")
    assert report.max_abs_output > 500
    assert report.max_abs_diff <= 1e-4 * (1 + report.max_abs_output)


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(8)
    return keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(3)], name="tiny")


@pytest.fixture
def no_conversion(monkeypatch):
    """Makes any conversion fail loudly: for checks that must come before it."""
    def convert(*args, **kwargs):
        raise AssertionError("the conversion ran before the argument check")

    monkeypatch.setattr(export, "_convert", convert)


def test_flags_and_numbers_are_checked_before_the_conversion(tiny, tmp_path, no_conversion):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"keep me")
    for name in ("overwrite", "verify", "allow_select_ops"):
        for value in ("no", "x", None, 1, 0.0):
            with pytest.raises(ValueError, match=rf"`{name}` must be a bool \(True or False\)\. "
                               rf"Received: {name}={value!r} of type"):
                export_tflite(tiny, path, **{name: value})
    for atol in ("x", -1, -1e-9, float("nan"), float("inf"), True, None):
        with pytest.raises(ValueError, match=r"`atol` must be a finite number >= 0\. Received"):
            export_tflite(tiny, path, atol=atol)
    for seed in ("x", True, -1, 1.5, None):
        with pytest.raises(ValueError, match=r"`seed` must be an integer >= 0\. Received"):
            export_tflite(tiny, path, seed=seed)
    assert path.read_bytes() == b"keep me"  # overwrite="no" replaced it before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


def test_numpy_bools_and_numbers_are_accepted(tiny, tmp_path):
    report = export_tflite(tiny, tmp_path / "m.tflite", verify=np.bool_(True),
                           overwrite=np.bool_(False), allow_select_ops=np.False_,
                           atol=np.float32(1e-3), seed=np.int64(3))
    assert report.verified_samples == 8 and report.max_abs_diff <= 1e-3


def test_output_path_is_checked_before_the_conversion(tiny, tmp_path, no_conversion):
    (tmp_path / "sub").mkdir()
    for path, overwrite in ((tmp_path / "sub", False), (tmp_path / "sub", True),
                            (str(tmp_path / "new") + os.sep, True)):
        with pytest.raises(ValueError, match="must name the .tflite file to write, not a dir"):
            export_tflite(tiny, path, overwrite=overwrite)
    with pytest.raises(ValueError, match=r"`path` must not be empty\. Received: path=''"):
        export_tflite(tiny, "")
    for bad in (None, 3, b"m.tflite"):
        with pytest.raises(ValueError, match=r"`path` must be a file path \(a str or os.Path"):
            export_tflite(tiny, bad)
    with pytest.raises(FileNotFoundError, match="directory of the output file"):
        export_tflite(tiny, tmp_path / "missing" / "m.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert list((tmp_path / "sub").iterdir()) == []


def test_nan_weights_say_the_keras_outputs_are_not_finite(tiny, tmp_path, no_conversion):
    broken = keras.models.clone_model(tiny)
    kernel, bias = tiny.get_weights()
    kernel[0, 0] = np.nan
    broken.set_weights([kernel, bias])
    with pytest.raises(ValueError, match=r"Keras model's own outputs are not finite \(NaN or "
                       r"inf\) on the 8 verification samples.*'output_0': 8"):
        export_tflite(broken, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_tflite_outputs_are_not_reported_as_a_difference(tiny, tmp_path, monkeypatch):
    real = _tflite.run
    monkeypatch.setattr(_tflite, "run",
                        lambda i, x: {k: v * np.nan for k, v in real(i, x).items()})
    with pytest.raises(ValueError, match=r"float32 TFLite model gives non-finite outputs.*"
                       r"Nothing was written"):
        export_tflite(tiny, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_representative_data_edge_cases(tiny, tmp_path, no_conversion):
    x = data(6, shape=(3,))
    struct = _export_inputs._input_struct(tiny)
    for form in (x.tolist(), (row for row in x.tolist()), [list(map(float, r)) for r in x]):
        (got,) = _export_inputs._collect(form, struct, limit=10)
        np.testing.assert_array_equal(got, x)  # nested lists are read as arrays
    path = tmp_path / "m.tflite"
    np.save(tmp_path / "x.npy", x)
    for value in (str(tmp_path / "x.npy"), tmp_path / "x.npy"):
        with pytest.raises(ValueError, match="not a file path.*np.load"):
            export_tflite(tiny, path, representative_data=value)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[4, 1] = bad
        with pytest.raises(ValueError, match=r"must be finite.*1 of 6 samples of input 'x'.*"
                           r"the first is sample 4"):
            export_tflite(tiny, path, quantize="int8", representative_data=y)
    with pytest.raises(ValueError, match=r"must be finite.*6 of 6"):
        export_tflite(tiny, path, representative_data=np.full((6, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"input 'x' must be numeric.*Received: ndarray of dtype"):
        export_tflite(tiny, path, representative_data=np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match=r"samples of shape \(3,\)\. Received: shape=\(6, 4\)"):
        export_tflite(tiny, path, representative_data=data(6, shape=(4,)).tolist())
    two = _two_in_two_out(False)
    xa, xb = data(6, shape=(4,)), data(6, shape=(3,))
    with pytest.raises(ValueError, match=r"same number of samples.*'zeta': 6, 'alpha': 5"):
        export_tflite(two, path, representative_data=[xa, xb[:5]])
    with pytest.raises(ValueError, match=r"same number of samples.*'zeta': 6, 'alpha': 5"):
        export_tflite(two, path, representative_data={"zeta": xa, "alpha": xb[:5]})
    with pytest.raises(ValueError, match="input 'alpha' must be numeric.*Received: None"):
        export_tflite(two, path, representative_data={"zeta": xa, "alpha": None})
    got = _export_inputs._collect([xa.tolist(), xb.tolist()],
                                  _export_inputs._input_struct(two), limit=10)
    np.testing.assert_array_equal(got[0], xa)
    np.testing.assert_array_equal(got[1], xb)
    assert list(tmp_path.iterdir()) == [tmp_path / "x.npy"]


def test_nested_list_representative_data_exports(tiny, tmp_path):
    x = data(12, shape=(3,))
    a = export_tflite(tiny, tmp_path / "a.tflite", quantize="int8", representative_data=x)
    b = export_tflite(tiny, tmp_path / "b.tflite", quantize="int8",
                      representative_data=x.tolist())
    assert a.verified_on == b.verified_on == "representative data"
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        assert fa.read() == fb.read()


def test_predict_and_evaluate_on_files_that_are_not_tflite(exported, saved_model, tmp_path):
    x = data(4)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"junk" * 16)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    for path in (saved_model, junk, empty):
        for run in (lambda p: predict_tflite(p, x), lambda p: evaluate_tflite(p, x, [0] * 4)):
            with pytest.raises(ValueError, match=r"not a valid \.tflite flatbuffer \(expected a "
                               rf"TFLite model.*Received: .*path='{re.escape(str(path))}'"):
                run(path)
    with pytest.raises(ValueError, match="Received: an empty file"):
        predict_tflite(empty, x)
    with pytest.raises(ValueError, match="not a directory"):
        predict_tflite(tmp_path, x)
    for bad in (None, 3):
        with pytest.raises(ValueError, match=r"`path` must be a file path"):
            predict_tflite(bad, x)


def test_predict_and_evaluate_bad_x(exported):
    path = exported[None].path
    for run in (lambda x: predict_tflite(path, x),
                lambda x: evaluate_tflite(path, x, np.zeros(len(x) if x is not None else 0))):
        with pytest.raises(ValueError, match=r"At least one sample is needed.*Received: 0 "):
            run(data(0))
        with pytest.raises(ValueError, match=r"`x` is required.*\['image'\]. Received: x=None"):
            run(None)
    with pytest.raises(ValueError, match=r"Input 'image' must be a numeric array.*Received: None"):
        predict_tflite(path, {"image": None})
    with pytest.raises(ValueError, match=r"Input 'image' must be a numeric array.*dtype <U"):
        predict_tflite(path, np.full((2, *SHAPE), "a"))
    with pytest.raises(ValueError, match=r"keyed by the model's input names \['image'\]"):
        predict_tflite(path, {"a": None})
    x = data(3)
    want = predict_tflite(path, x)["output_0"]
    np.testing.assert_array_equal(predict_tflite(path, x.tolist())["output_0"], want)
    np.testing.assert_array_equal(predict_tflite(path, [x])["output_0"], want)


def test_evaluate_tflite_checks_labels(exported):
    path = exported[None].path  # 3 classes
    x = data(5)
    pred = predict_tflite(path, x)["output_0"].argmax(-1)
    assert evaluate_tflite(path, x, pred) == 1.0
    assert evaluate_tflite(path, x, pred.astype(np.float32)) == 1.0  # whole-number floats
    assert evaluate_tflite(path, x, pred[:, None]) == 1.0  # (n, 1)
    assert evaluate_tflite(path, x, pred.tolist()) == 1.0
    probabilities = np.full((5, 3), 0.1)
    probabilities[np.arange(5), pred] = 0.8
    assert evaluate_tflite(path, x, probabilities) == 1.0
    assert evaluate_tflite(path, x, np.eye(3, dtype=bool)[pred]) == 1.0  # boolean one-hot
    cases = {
        r"`y` is required: integer class labels in \[0, 3\).*Received: y=None": None,
        r"`y` must be numeric.*dtype <U1": np.array(list("abcde")),
        r"`y` must be numeric.*dtype bool": np.ones(5, bool),
        r"must be in \[0, 3\): the model has 3 classes\. Received: y\[2\]=3$": [0, 1, 3, 5, 0],
        r"must be in \[0, 3\).*Received: y\[0\]=-1$": [-1, 0, 0, 0, 0],
        r"must be in \[0, 3\).*Received: y\[1\]=7\.0$": [0.0, 7.0, 0.0, 0.0, 0.0],
        r"whole numbers.*Received: y\[0\]=0\.5$": np.full(5, 0.5),
        r"whole numbers.*Received: y\[3\]=nan$": [0, 1, 2, np.nan, 0],
        r"of shape \(n, 3\)\. Received: y of shape \(5, 5\)": np.eye(5),
        r"of shape \(n, 3\)\. Received: y of shape \(5, 3, 1\)": np.zeros((5, 3, 1)),
        r"of shape \(n, 3\)\. Received: y of shape \(\)": 1,
        r"One-hot / probability labels must be finite.*y\[1\]": np.where(
            np.arange(15).reshape(5, 3) == 4, np.nan, probabilities),
        r"same number of samples\. Received: 5 samples in x, 4 labels in y": pred[:4],
    }
    for message, y in cases.items():
        with pytest.raises(ValueError, match=message):
            evaluate_tflite(path, x, y)


# ------------------------------------------------------------------------ atomic writes


def test_no_overwrite_without_permission(model, exported, tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_tflite(model, path)
    assert path.read_bytes() == b"keep me"
    report = export_tflite(model, path, overwrite=True)
    assert path.read_bytes()[4:8] == b"TFL3" and report.size_bytes == path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # no temporary left


def test_write_atomic_never_leaves_partial_files(tmp_path, monkeypatch):
    path = str(tmp_path / "out.bin")
    _tflite.write_atomic(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError, match="already exists.*out.bin"):
        _tflite.write_atomic(path, b"second", overwrite=False)  # the race: lost at link time
    assert open(path, "rb").read() == b"first"
    _tflite.write_atomic(path, b"third", overwrite=True)
    assert open(path, "rb").read() == b"third"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _tflite.write_atomic(str(tmp_path / "new.bin"), b"x" * 100, overwrite=False)
    with pytest.raises(OSError, match="disk full"):
        _tflite.write_atomic(path, b"fourth", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert open(path, "rb").read() == b"third"


def test_op_counts_and_select_op_parsing_helpers(exported):
    assert _tflite.flex_ops({"CONV_2D": 1, "FlexErf": 2, "FlexAtan2": 1}) == ["FlexAtan2",
                                                                               "FlexErf"]
    message = "...\nTF Select ops: Erf, MatrixDeterminant\nDetails: ..."
    assert _tflite.select_ops_from_error(message) == ["Erf", "MatrixDeterminant"]
    message = "error: 'tf.Foo' op is neither a custom op nor a flex op"
    assert _tflite.select_ops_from_error(message) == ["Foo"]


# ------------------------------------------------------------------------- command line


def _cli(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, "ssl_keras.export", export.main, *args)


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "net.keras"
    model.save(path)
    return path


def test_cli_takes_dashed_flags_as_tflite_bench_does(saved_model, tmp_path, monkeypatch,
                                                     capsys):
    """Found by probing: tflite_bench took --round-size and --no-progress, these command lines
    refused --batch-size and --no-verify as unknown flags."""
    out = tmp_path / "o.tflite"
    code, stdout, stderr = _cli(monkeypatch, capsys, saved_model, out, "--batch-size=2",
                                "--no-verify", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["max_abs_diff"] is None  # not verified
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(model_path=str(out)).get_input_details()[0]["shape"][0] == 2


def test_cli_bad_input_is_one_line_and_exit_2(saved_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.tflite"
    text = tmp_path / "notes.keras"
    text.write_text("not a zip")
    existing = tmp_path / "exists.tflite"
    existing.write_bytes(b"x")
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_text("nope")
    not_keras = tmp_path / "empty.keras"
    with zipfile.ZipFile(not_keras, "w") as archive:
        archive.writestr("readme.txt", "no model here")
    cases = {
        "No such model file": [tmp_path / "missing.keras", out],
        "must be a Keras .keras file": [text, out],
        "--quantize must be one of": [saved_model, out, "--quantize=int3"],
        "needs --calibration": [saved_model, out, "--quantize", "int8"],
        "No such calibration file": [saved_model, out, "--calibration", tmp_path / "c.npy"],
        "Could not read the calibration file": [saved_model, out, "--calibration", bad_npy],
        "already exists; pass --overwrite": [saved_model, existing],
        "Could not load the Keras model": [not_keras, out],
        "usage:": [saved_model],
        "Unknown command line flag 'bogus'": [saved_model, out, "--bogus"],
        # in the flags' terms (was: "`batch_size` ... Received: batch_size=0")
        "--batch_size must be an integer >= 1. Received: --batch_size=0": [
            saved_model, out, "--batch_size=0"],
        "OUT must name the .tflite file to write, not a directory": [saved_model, tmp_path,
                                                                     "--overwrite"],
        "OUT must be in an existing, writable directory": [saved_model,
                                                           tmp_path / "no" / "x.tflite"],
        "OUT is the input model itself": [saved_model, saved_model, "--overwrite"],
    }
    for message, args in cases.items():
        code, stdout, stderr = _cli(monkeypatch, capsys, *args)
        assert code == 2, (message, stderr)
        assert stderr.count("\n") == 1 and message in stderr and "Traceback" not in stderr
        assert stdout == ""
    assert not out.exists() and existing.read_bytes() == b"x"
    assert zipfile.is_zipfile(saved_model)  # the model is still a .keras archive
    link = tmp_path / "link.keras"
    link.symlink_to(saved_model)
    code, _, stderr = _cli(monkeypatch, capsys, saved_model, link, "--overwrite")
    assert code == 2 and "OUT is the input model itself" in stderr
    assert zipfile.is_zipfile(saved_model)
    code, _, stderr = _cli(monkeypatch, capsys, saved_model, out, "--quantize=int3")
    assert code == 2
    assert stderr == ("ssl_keras.export: error: --quantize must be one of float32, float16, "
                      "dynamic, int8. "
                      "Received: --quantize='int3'\n")
    code, stdout, _ = _cli(monkeypatch, capsys, "--help")
    assert code == 0 and "python -m ssl_keras.export MODEL.keras" in stdout
    assert "--quantize" in stdout


def test_cli_int8_end_to_end_in_a_subprocess(saved_model, tmp_path):
    calibration = tmp_path / "cal.npy"
    np.save(calibration, data(16, seed=3))
    out = tmp_path / "net_int8.tflite"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    command = [sys.executable, "-m", "ssl_keras.export", str(saved_model), str(out),
               "--quantize", "int8", "--calibration", str(calibration), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["quantize"] == "int8" and report["inputs"][0]["dtype"] == "int8"
    assert report["size_bytes"] == out.stat().st_size and report["verified_samples"] == 8
    assert "Traceback" not in done.stderr


def text_net(name="text"):
    """Token ids -> Embedding -> Conv1D -> pooling -> Dense: a model with an integer input."""
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 8, name="embed")(tokens)
    x = keras.layers.Conv1D(6, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(tokens, keras.layers.Dense(3, name="fc")(x), name=name)


def test_integer_inputs_export_verify_and_predict(tmp_path):
    """Integer inputs stay integers (also with int8), random verification ids stay within
    the Embedding's input_dim, and predict_tflite reproduces the Keras model."""
    keras.utils.set_random_seed(3)
    net = text_net()
    ids = np.random.default_rng(0).integers(0, 50, (40, 12)).astype(np.int32)
    report = export_tflite(net, tmp_path / "f.tflite")
    assert report.verified_on == "random ids tokens in [0, 50)"
    assert report.inputs[0].dtype == "int32" and report.max_abs_diff <= 1e-5
    assert "GATHER" in report.op_counts
    got = predict_tflite(report.path, ids)["output_0"]
    np.testing.assert_allclose(got, net.predict(ids, verbose=0), rtol=1e-5, atol=1e-6)
    # ids given as whole floats (np.load of a float file, say) are accepted
    q = export_tflite(net, tmp_path / "q.tflite", quantize="int8",
                      representative_data=ids.astype(np.float32))
    assert q.inputs[0].dtype == "int32" and q.outputs[0].dtype == "int8"
    assert q.verified_on == "representative data"
    assert q.max_abs_diff < 0.05 * q.max_abs_output + 1e-3
    # the thinned model of an SSL-wrapped text net exports the same way
    thinned = ssl_keras.thin(ssl_keras.strip_ssl(ssl_keras.apply_ssl(net, filters=1e-3)))
    assert export_tflite(thinned, tmp_path / "t.tflite").inputs[0].dtype == "int32"


def test_integer_input_ranges_and_bad_ids(tmp_path):
    keras.utils.set_random_seed(3)
    path = tmp_path / "m.tflite"
    # Embeddings inside a nested model, two of them: ids below the smaller input_dim
    inner_in = keras.Input((5,), dtype="int32")
    inner = keras.Model(inner_in, keras.layers.Embedding(30, 4)(inner_in), name="inner")
    ids_in = keras.Input((5,), dtype="int64", name="ids")
    merged = keras.layers.Concatenate()([inner(ids_in), keras.layers.Embedding(7, 4)(ids_in)])
    nested = keras.Model(ids_in, keras.layers.Flatten()(merged))
    report = export_tflite(nested, path)
    assert report.verified_on == "random ids ids in [0, 7)"
    assert report.inputs[0].dtype == "int64"
    samples, _ = _export_inputs._random_samples(nested, nested.input, 200, 0)
    assert samples[0].dtype == np.int64 and samples[0].min() == 0 and samples[0].max() == 6
    sequential = keras.Sequential([keras.Input((5,), dtype="int32", name="seq_ids"),
                                   keras.layers.Embedding(20, 4), keras.layers.Flatten()])
    report = export_tflite(sequential, tmp_path / "s.tflite")
    assert report.verified_on == "random ids seq_ids in [0, 20)"
    # an integer input that something else reads: random values would not mean anything
    raw = keras.Input((4,), dtype="int32", name="raw")
    cast = keras.Model(raw, keras.layers.Dense(2)(keras.layers.Lambda(
        lambda t: keras.ops.cast(t, "float32"), name="to_float")(raw)))
    with pytest.raises(ValueError, match=r"integer input 'raw'.*representative_data.*"
                                         r"read by \['Lambda'\]"):
        export_tflite(cast, tmp_path / "c.tflite")
    counts = np.arange(8, dtype=np.int32).reshape(2, 4)
    report = export_tflite(cast, tmp_path / "c.tflite", representative_data=counts)
    assert report.verified_on == "representative data" and report.max_abs_diff <= 1e-5
    # ids that are not whole numbers, or do not fit the dtype, are refused by name
    net = text_net()
    with pytest.raises(ValueError, match=r"integer input 'tokens' \(int32\) must hold whole "
                                         r"numbers.*Received: 1 other value\(s\), e.g. 2.5"):
        export_tflite(net, tmp_path / "x.tflite", representative_data=np.where(
            np.arange(12) == 3, 2.5, 1.0)[None])
    with pytest.raises(ValueError, match=r"whole numbers in \[-2147483648, 2147483647\]"):
        export_tflite(net, tmp_path / "x.tflite",
                      representative_data=np.full((1, 12), 2 ** 40, np.int64))
    with pytest.raises(ValueError, match="must hold whole numbers"):
        export_tflite(net, tmp_path / "x.tflite",
                      representative_data=np.full((1, 12), np.nan, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tflite", "m.tflite", "s.tflite"]


def test_cli_is_quiet_by_default_in_a_subprocess(saved_model, tmp_path):
    """Without TF_CPP_MIN_LOG_LEVEL, the command line prints its report and nothing of
    TensorFlow's or LiteRT's C++ start-up and conversion lines; on bad input, one line."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    out = tmp_path / "net.tflite"
    command = [sys.executable, "-m", "ssl_keras.export", str(saved_model), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.startswith(f"{out}: ") and out.exists()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr == ("ssl_keras.export: error: The output file already exists; pass "
                           f"--overwrite to replace it. Received: OUT={str(out)!r}\n")
    # asked for TensorFlow's logs, the user gets them
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"
    done = subprocess.run([*command, "--overwrite"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and "XNNPACK" in done.stderr


def test_written_files_get_the_usual_mode(model, tmp_path):
    """A new .tflite file gets 0666 less the umask, a replaced one keeps its mode (was:
    mkstemp's 0600 in both cases)."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.tflite"
        export_tflite(model, path)
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
        path.chmod(0o664)
        export_tflite(model, path, overwrite=True)
        assert oct(path.stat().st_mode & 0o777) == oct(0o664)
    finally:
        os.umask(old)


def test_conversion_and_interpreter_lines_follow_tf_cpp_min_log_level(model, tmp_path,
                                                                       monkeypatch, capfd):
    """The converter's "fully_quantize: 0, ..." line (C++, on fd 2, every int8 export) is
    dropped when TF_CPP_MIN_LOG_LEVEL >= 1, kept when it is 0; Python's stderr still works."""
    calibration = data(16, seed=3)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    capfd.readouterr()
    export_tflite(model, tmp_path / "loud.tflite", quantize="int8",
                  representative_data=calibration)
    assert "fully_quantize" in capfd.readouterr().err
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    export_tflite(model, tmp_path / "quiet.tflite", quantize="int8",
                  representative_data=calibration)
    print("python stderr", file=sys.stderr)
    err = capfd.readouterr().err
    assert "fully_quantize" not in err and "python stderr" in err


def test_tensorflow_logs_after_a_quiet_import(tmp_path):
    """Found by probing. Was: with TF_CPP_MIN_LOG_LEVEL >= 1, `import ssl_keras` before
    TensorFlow left TensorFlow's logging handler on the closed temporary stream of the quiet
    import: every TensorFlow warning became a "--- Logging error ---" traceback."""
    code = ("import ssl_keras, tensorflow as tf; tf.get_logger().warning('hello %d', 7); "
            "import logging; logging.getLogger('x').addHandler(logging.StreamHandler())")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING:tensorflow:hello 7" in proc.stderr
    assert "Logging error" not in proc.stderr and "closed file" not in proc.stderr


def test_bad_calibration_ids_and_unpreparable_models_are_value_errors(tmp_path):
    """Found by probing. Was: ids at or above the Embedding's input_dim in the calibration data
    gave a TensorFlow traceback; an int8 model calibrated on constant data gave LiteRT's
    RuntimeError, and with verify=False after the file was written; predict_tflite raised
    RuntimeError for ids outside the table."""
    keras.utils.set_random_seed(3)
    net = text_net()
    big = np.full((4, 12), 50, np.int32)
    with pytest.raises(ValueError, match=r"input 'tokens' must be token ids in "
                                         r"\[0, 50\).*Received: ids from 50 to 50"):
        export_tflite(net, tmp_path / "t.tflite", quantize="float16", representative_data=big)
    with pytest.raises(ValueError, match=r"ids from -1 to"):
        export_tflite(net, tmp_path / "t.tflite", representative_data=big * 0 - 1)
    path = export_tflite(net, tmp_path / "ok.tflite").path
    with pytest.raises(ValueError, match=r"TFLite interpreter failed on the inputs 0\.\.0.*"
                                         r"below each Embedding's input_dim"):
        predict_tflite(path, big[:1])
    # half of each layer's filters zero (bias too): constant calibration data give
    # zero-width ranges, and XNNPACK cannot build its int8 runtime
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(image)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.Dense(6, activation="relu", name="d1")(keras.layers.Flatten()(x))
    cnn = keras.Model(image, keras.layers.Dense(3, name="out")(x))
    for name in ("c1", "c2", "d1"):
        kernel, bias = cnn.get_layer(name).get_weights()
        kernel[..., :kernel.shape[-1] // 2] = 0
        bias[:bias.shape[-1] // 2] = 0
        cnn.get_layer(name).set_weights([kernel, bias])
    for verify in (True, False):
        out = tmp_path / f"const_{verify}.tflite"
        with pytest.raises(ValueError, match="TFLite interpreter cannot prepare the model.*"
                                             "calibrated on constant data"):
            export_tflite(cnn, out, quantize="int8", verify=verify,
                          representative_data=np.ones((16, 8, 8, 3), np.float32))
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.tflite"]


def test_cli_messages_name_flags_and_loading_errors_are_whole(saved_model, tmp_path,
                                                              monkeypatch, capsys):
    """Was: 'pass `representative_data` ... or verify=False' on the command line, and a
    load failure cut at its first line ('Example error message for object ...:')."""
    ids = keras.Input((6,), dtype="int32", name="ids")
    encoded = keras.layers.CategoryEncoding(8, output_mode="one_hot")(ids)
    net = keras.Model(ids, keras.layers.Dense(2)(keras.layers.Flatten()(encoded)))
    path = tmp_path / "enc.keras"
    net.save(path)
    code, _, stderr = _cli(monkeypatch, capsys, path, tmp_path / "o.tflite")
    assert code == 2 and "Pass --calibration with real inputs, or --noverify" in stderr
    assert "representative_data" not in stderr and "verify=False" not in stderr
    # a .keras whose weights belong to another model: Keras's reason, whole, in one line
    other = tmp_path / "other.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(other)
    mixed = tmp_path / "mixed.keras"
    with zipfile.ZipFile(saved_model) as a, zipfile.ZipFile(other) as b, \
            zipfile.ZipFile(mixed, "w") as out:
        for name in a.namelist():
            source = b if name.endswith(".h5") else a
            out.writestr(name, source.read(name))
    code, stdout, stderr = _cli(monkeypatch, capsys, mixed, tmp_path / "m.tflite")
    assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
    assert "Could not load the Keras model" in stderr and "expected" in stderr
    assert not stderr.rstrip().endswith(":.") and "Warning" not in stderr


def test_thinned_one_channel_conv1d_into_add_exports(tmp_path):
    """Found by probing. TensorFlow 2.21's converter fails on a static batch of 1 for a
    1-channel Conv1D feeding an Add, which thin produces ('tf.Transpose' rank mismatch):
    export_tflite converts such a model with an unknown batch instead (default batch 1)."""
    keras.utils.set_random_seed(0)
    series = keras.Input((16, 2))
    a = keras.layers.Conv1D(4, 3, padding="causal", name="a")(series)
    b = keras.layers.Conv1D(4, 1, name="b")(series)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Add()([a, b]))
    net = keras.Model(series, keras.layers.Dense(3, name="head")(x))
    for name in ("a", "b"):
        kernel, bias = net.get_layer(name).get_weights()
        kernel[..., 1:] = 0
        net.get_layer(name).set_weights([kernel, bias])
    small = ssl_keras.thin(net)
    assert small.get_layer("a").filters == 1 == small.get_layer("b").filters
    report = export_tflite(small, tmp_path / "small.tflite")
    assert report.inputs[0].shape == (1, 16, 2) and report.max_abs_diff <= 1e-5
    x = np.random.default_rng(0).normal(size=(5, 16, 2)).astype(np.float32)
    np.testing.assert_allclose(predict_tflite(report.path, x)["output_0"],
                               small.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
