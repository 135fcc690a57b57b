"""Masks, layers shared across nested models, and Embeddings / TIED layers in thin.

Each test failed before its fix:
- a mask (`Embedding(mask_zero=True)`, passed on as `mask=`) was counted as a layer input:
  the channels before a masked GlobalAveragePooling1D were blocked ("expects one input tensor,
  received 2"), strict=True raised on the mask's `not_equal`, a masked tensor into a nested
  model crashed, and thin folded NaN (a masked average over all-padding probe ids);
- a layer used inside a nested model and outside it came out of every copy untied;
- Embedding groups were penalised but never thinned ("thin cannot rebuild"), custom TIED
  layers were penalised and then kept.
"""

import importlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers as L  # noqa: E402

import ssl_keras  # noqa: E402
from ssl_keras import thin  # noqa: E402
from ssl_keras._export_convert import rebuild_float32  # noqa: E402
from ssl_keras.graph import layer_channels, removable_groups  # noqa: E402

# Token ids with padding (0): rows with one, some and no real token at the start.
IDS = np.array([[1, 2, 0, 0, 0, 0], [3, 0, 4, 5, 0, 0], [0, 0, 0, 0, 0, 9],
                [7, 7, 7, 7, 7, 7]], "int32")


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _assert_unchanged(model, before):
    after = model.get_weights()
    assert len(after) == len(before)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)


def _assert_exact(small, zeroed, x):
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(zeroed(x)), rtol=1e-5,
                               atol=1e-6)


def _zero_columns(layer, weight, columns, bias=None):
    var = getattr(layer, weight)
    value = np.array(var.numpy())
    value[..., columns] = 0
    var.assign(value)
    if bias is not None:
        layer.bias.assign(np.full(layer.bias.shape, bias, "float32"))


def _masked_gap(mask_zero=True, steps=6):
    keras.utils.set_random_seed(0)
    i = keras.Input((steps,), dtype="int32")
    x = L.Embedding(10, 8, mask_zero=mask_zero, name="e")(i)
    x = L.Dense(6, activation="relu", name="d")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(i, L.Dense(2, name="o")(x))


# ------------------------------------------------------------------------------ masks


def test_a_mask_is_not_a_channel_input():
    masked, plain = _masked_gap(True), _masked_gap(False)
    want = {g["id"]: (g["blocked"], g["slices"]) for g in removable_groups(plain)}
    got = {g["id"]: (g["blocked"], g["slices"]) for g in removable_groups(masked, strict=True)}
    assert got == want
    assert got["d:0"][0] is None
    calls = {c["layer"]: c for c in layer_channels(masked)}
    assert "not_equal" not in calls  # the mask's own call carries no channels
    assert calls["gap"]["inputs"] == [[f"d:{c}" for c in range(6)]]


def test_thin_of_a_masked_model_is_exact_on_padding():
    model = _masked_gap(True)
    _zero_columns(model.get_layer("d"), "kernel", [0, 1, 2], bias=0.5)  # constants to fold
    before = _weights(model)
    zeroed = ssl_keras.zero_groups(model)
    small = thin(model)
    assert small.get_layer("d").units == 3 and small.get_layer("e").mask_zero
    assert (model.count_params(), small.count_params()) == (148, 115)  # as without the mask
    _assert_exact(small, zeroed, IDS)
    # the mask matters on these inputs: the same weights without it give other outputs
    unmasked = _masked_gap(False)
    unmasked.set_weights(zeroed.get_weights())
    assert np.max(np.abs(np.asarray(unmasked(IDS[:2])) - np.asarray(zeroed(IDS[:2])))) > 1e-3
    _assert_unchanged(model, before)


def test_thin_of_masked_merges_is_exact():
    """Add and Concatenate of masked tensors: Keras combines their masks with operations
    (logical_or, zeros_like of each input, concatenate, any) that read the channel tensors'
    shapes only; the channels stay removable and the thinned model's masks are the same."""
    keras.utils.set_random_seed(1)
    i = keras.Input((6,), dtype="int32")
    e = L.Embedding(10, 8, mask_zero=True, name="e")(i)
    a = L.Dense(6, activation="relu", name="a")(e)
    b = L.Dense(6, activation="relu", name="b")(e)
    c = L.Dense(4, activation="relu", name="c")(e)
    x = L.Concatenate(name="cat")([L.Add(name="add")([a, b]), c])
    model = keras.Model(i, L.Dense(2, name="o")(L.GlobalAveragePooling1D(name="gap")(x)))
    assert all(g["blocked"] is None for g in removable_groups(model, strict=True)
               if g["source"] in ("a", "b", "c"))
    _zero_columns(model.get_layer("a"), "kernel", [0, 1], bias=0.3)
    _zero_columns(model.get_layer("b"), "kernel", [0, 1], bias=0.2)
    _zero_columns(model.get_layer("c"), "kernel", [2], bias=0.1)
    before = _weights(model)
    small = thin(model)
    assert [small.get_layer(n).units for n in "abc"] == [4, 4, 3]
    _assert_exact(small, ssl_keras.zero_groups(model), IDS)
    _assert_unchanged(model, before)


class _MaskFromChannels(L.Layer):
    """Passes x on; its mask is read off x's channel values."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x):
        return x

    def compute_mask(self, x, mask=None):
        return keras.ops.any(x > 0, axis=-1)


def test_channels_a_mask_is_computed_from_are_blocked(clean_registry):
    ssl_keras.register_layer(_MaskFromChannels, ssl_keras.LayerSpec(ssl_keras.Kind.PASSTHROUGH))
    i = keras.Input((6, 3))
    x = _MaskFromChannels(name="m")(L.Dense(4, name="d")(i))
    model = keras.Model(i, L.Dense(2, name="o")(L.GlobalAveragePooling1D(name="gap")(x)))
    groups = {g["id"]: g["blocked"] for g in removable_groups(model, strict=True)}
    assert "which computes the mask of 'gap'" in groups["d:0"]


def test_a_masked_tensor_into_a_nested_model():
    """Keras passes the mask to the nested model as `mask=` (was: a zip() error)."""
    keras.utils.set_random_seed(2)
    si = keras.Input((6, 8))
    sub = keras.Model(si, L.Dense(5, name="sd")(si), name="sub")
    i = keras.Input((6,), dtype="int32")
    x = sub(L.Embedding(10, 8, mask_zero=True, name="e")(i))
    x = L.Dense(4, activation="relu", name="d")(x)
    model = keras.Model(i, L.Dense(2, name="o")(L.GlobalAveragePooling1D(name="gap")(x)))
    groups = {g["id"]: g for g in removable_groups(model, strict=True)}
    assert groups["d:1"]["blocked"] is None and groups["sub/sd:0"]["blocked"] is None
    _zero_columns(model.get_layer("d"), "kernel", [1], bias=0.4)
    small = thin(model)
    assert small.get_layer("d").units == 3
    _assert_exact(small, ssl_keras.zero_groups(model), IDS)


def _two_inputs_masked():
    """A float input before the ids, so that the first probe of the ids (seeded) is all
    padding: the masked average is NaN there."""
    keras.utils.set_random_seed(0)
    f = keras.Input((1,), name="f")
    i = keras.Input((4,), dtype="int32", name="ids")
    x = L.Embedding(10, 8, mask_zero=True, name="e")(i)
    x = L.Dense(6, activation="relu", name="d")(x)
    x = L.GlobalAveragePooling1D(name="gap")(x)
    x = L.Concatenate(name="cat")([x, L.Dense(2, name="fd")(f)])
    model = keras.Model([f, i], L.Dense(2, name="o")(x))
    _zero_columns(model.get_layer("d"), "kernel", [0, 1, 2], bias=0.5)
    return model


def test_no_nan_is_folded_from_all_padding_probes(monkeypatch):
    """Was: NaN folded into 'o''s bias, every output NaN (no error)."""
    from ssl_keras._thin_constants import _probe_inputs

    model = _two_inputs_masked()
    assert not _probe_inputs(model)[1][0].any()  # the case: first probe row all padding
    x = [np.linspace(-1, 1, 4, dtype="float32")[:, None], IDS[:, :4]]
    zeroed = ssl_keras.zero_groups(model)
    small = thin(model)
    assert small.get_layer("d").units == 3
    _assert_exact(small, zeroed, x)
    # with no other probes to draw, the channels are kept (with the reason), not folded
    monkeypatch.setattr(importlib.import_module("ssl_keras.thin"), "_PROBE_DRAWS", 1)
    plan = ssl_keras.thinning_plan(model)
    assert plan["groups"]["d:0"]["status"] == "kept"
    assert "NaN or inf on the probe inputs" in plan["groups"]["d:0"]["why"]
    small = thin(model)
    assert small.get_layer("d").units == 6
    _assert_exact(small, zeroed, x)


def test_apply_ssl_and_strip_ssl_keep_the_mask():
    model = _masked_gap(True)
    want = np.asarray(model(IDS))
    ssl = ssl_keras.apply_ssl(model, filters=1e-3)
    assert "d:0" in {g["id"] for g in ssl.ssl_groups}
    np.testing.assert_allclose(np.asarray(ssl(IDS)), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ssl_keras.strip_ssl(ssl)(IDS)), want, rtol=1e-6,
                               atol=1e-6)


def test_export_of_a_thinned_masked_model(tmp_path):
    model = _masked_gap(True)
    _zero_columns(model.get_layer("d"), "kernel", [0, 1, 2], bias=0.5)
    small = thin(model)
    # random ids cannot be drawn for an input that the mask's not_equal reads too: the
    # existing clear error, then the export with real ids
    with pytest.raises(ValueError, match=r"Pass `representative_data` with real inputs"):
        ssl_keras.export_tflite(small, tmp_path / "a.tflite")
    report = ssl_keras.export_tflite(small, tmp_path / "b.tflite", representative_data=IDS)
    assert report.verified_samples > 0 and report.max_abs_diff <= 1e-5


# ------------------------------------------------------------------ layers across models


def _shared_across_nested():
    keras.utils.set_random_seed(3)
    d = L.Dense(6, name="shd")
    si = keras.Input((5,))
    sub = keras.Model(si, d(si), name="sub")
    i = keras.Input((5,))
    a = L.Dense(5, name="pa")(i)
    b = L.Dense(5, name="pb")(i)
    x = L.Concatenate()([d(a), sub(b)])
    return keras.Model(i, L.Dense(2, name="o")(L.ReLU()(x)))


ENTRY_POINTS = {
    "removable_groups": lambda m: removable_groups(m),
    "zero_groups": lambda m: ssl_keras.zero_groups(m),
    "thin": lambda m: thin(m),
    "thinning_plan": lambda m: ssl_keras.thinning_plan(m, groups=[]),
    "apply_plan": lambda m: ssl_keras.apply_plan(m, {"zero": [], "dropped": {}, "dead": [],
                                                     "layers": {}, "adds": {}}),
    "apply_ssl": lambda m: ssl_keras.apply_ssl(m, filters=1e-3, layers={"sub": None}),
    "apply_ssl_per_layer": lambda m: ssl_keras.apply_ssl(m, filters=1e-3, coupled=False,
                                                         layers={"sub": None}),
    "strip_ssl": lambda m: ssl_keras.strip_ssl(m),
    # export's float32 copy of a mixed-precision model (was: set_weights' count mismatch)
    "rebuild_float32": lambda m: rebuild_float32(m),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_layer_inside_and_outside_a_nested_model_is_refused(entry):
    model = _shared_across_nested()
    assert len(model.weights) == 8
    before = _weights(model)
    with pytest.raises(ValueError, match=r"Layer 'shd' \(class Dense\) is used both in model "
                       r"'.*' and inside the nested model 'sub'.*untied|no longer tied"):
        ENTRY_POINTS[entry](model)
    _assert_unchanged(model, before)


def test_a_layer_in_two_nested_models_is_refused():
    d = L.Dense(4, name="shd")
    subs = []
    for name in ("s1", "s2"):
        si = keras.Input((3,))
        subs.append(keras.Model(si, L.ReLU()(d(si)), name=name))
    i = keras.Input((3,))
    model = keras.Model(i, L.Dense(2, name="o")(L.Add()([subs[0](i), subs[1](i)])))
    with pytest.raises(ValueError, match=r"Layer 'shd'.*inside the nested model 's1' and "
                                         r"inside the nested model 's2'.*flatten the model"):
        thin(model)


def test_a_layer_inside_a_wrapper_and_beside_it_is_refused():
    d = L.Dense(4, name="shd")
    i = keras.Input((3, 5))
    x = L.Add()([L.TimeDistributed(d, name="td")(i), d(i)])
    model = keras.Model(i, L.Dense(2, name="o")(x))
    assert len(keras.models.clone_model(model).weights) > len(model.weights)  # what it fixes
    with pytest.raises(ValueError, match=r"Layer 'shd'.*inside layer 'td' \(TimeDistributed\)"):
        ssl_keras.apply_ssl(model, filters=1e-3)


def _check_copies_keep_weights(model, x):
    n = len(model.weights)
    zeroed = ssl_keras.zero_groups(model)
    small = thin(model)
    ssl = ssl_keras.apply_ssl(model, filters=1e-3, layers={
        layer.name: None for layer in model.layers if isinstance(layer, keras.Model)})
    assert [len(m.weights) for m in (zeroed, ssl, ssl_keras.strip_ssl(ssl))] == [n] * 3
    assert len(small.weights) <= n
    _assert_exact(small, zeroed, x)
    return small


def test_shared_layers_within_one_model_still_work():
    keras.utils.set_random_seed(4)
    shared = L.Dense(5, activation="relu", name="sh")
    i = keras.Input((5,))
    a = L.Dense(5, name="a")(i)
    x = L.Add()([shared(a), shared(L.Dense(5, name="b")(i))])
    model = keras.Model(i, L.Dense(2, name="o")(x))
    _zero_columns(model.get_layer("sh"), "kernel", [1], bias=0.2)
    small = _check_copies_keep_weights(model, np.random.default_rng(0).normal(
        size=(3, 5)).astype("float32"))
    assert small.get_layer("sh").units == 4


def test_a_nested_model_called_twice_still_works():
    keras.utils.set_random_seed(5)
    si = keras.Input((4,))
    tower = keras.Model(si, L.Dense(3, activation="relu", name="t")(si), name="tower")
    i, j = keras.Input((4,)), keras.Input((4,))
    x = L.Concatenate()([tower(L.Dense(4, name="pi")(i)), tower(L.Dense(4, name="pj")(j))])
    model = keras.Model([i, j], L.Dense(2, name="o")(x))
    removable_groups(model)
    rng = np.random.default_rng(1)
    _check_copies_keep_weights(model, [rng.normal(size=(3, 4)).astype("float32")
                                       for _ in range(2)])


def test_a_weightless_layer_across_a_nested_model_is_fine():
    relu = L.ReLU(name="relu")
    si = keras.Input((4,))
    sub = keras.Model(si, relu(L.Dense(4, name="sd")(si)), name="sub")
    i = keras.Input((4,))
    model = keras.Model(i, L.Dense(2, name="o")(relu(sub(L.Dense(4, name="p")(i)))))
    assert removable_groups(model)
    thin(model)


# ------------------------------------------------------------------ Embedding and TIED


@pytest.mark.parametrize("mask_zero", [False, True])
def test_thin_removes_embedding_features(mask_zero):
    model = _masked_gap(mask_zero)
    _zero_columns(model.get_layer("e"), "embeddings", [1, 4, 5])
    before = _weights(model)
    groups = {g["id"]: g for g in removable_groups(model)}
    assert groups["e:1"]["blocked"] is None
    plan = ssl_keras.thinning_plan(model)
    assert [plan["groups"][f"e:{c}"]["status"] for c in range(8)] == [
        "kept", "removed", "kept", "kept", "removed", "removed", "kept", "kept"]
    small = thin(model)
    assert small.get_layer("e").output_dim == 5
    assert small.get_layer("e").mask_zero is mask_zero
    assert small.count_params() == model.count_params() - 3 * 10 - 3 * 6
    _assert_exact(small, ssl_keras.zero_groups(model), IDS)
    rounded = thin(model, round_to=4)
    assert rounded.get_layer("e").output_dim == 8
    _assert_exact(rounded, ssl_keras.zero_groups(model), IDS)
    _assert_unchanged(model, before)


def test_width_settings_name_an_embedding():
    model = _masked_gap(True)
    zeroed = ssl_keras.zero_groups(model, max_channels={"e": 5}, round_down={"e": 4})
    small = thin(zeroed)
    assert small.get_layer("e").output_dim == 4
    _assert_exact(small, zeroed, IDS)


def test_thin_removes_unused_embedding_features_through_conv_and_batchnorm():
    """Unused (the consumer's rows zero) and constant (zero columns, then a BatchNorm whose
    beta makes them a constant for the 'same'-padded Conv1D to fold) features."""
    keras.utils.set_random_seed(6)
    i = keras.Input((6,), dtype="int32")
    x = L.Embedding(12, 8, name="e")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Conv1D(5, 3, padding="same", activation="relu", name="c")(x)
    model = keras.Model(i, L.Dense(2, name="o")(L.Flatten()(x)))
    bn = model.get_layer("bn")
    bn.set_weights([np.random.default_rng(0).uniform(0.5, 2, 8).astype("float32")
                    for _ in range(4)])
    _zero_columns(model.get_layer("e"), "embeddings", [0, 3])  # constant (beta) channels
    kernel = np.array(model.get_layer("c").kernel.numpy())
    kernel[:, [6], :] = 0  # unused channel
    model.get_layer("c").kernel.assign(kernel)
    small = thin(model)
    assert small.get_layer("e").output_dim == 5 and small.get_layer("bn").gamma.shape == (5,)
    ids = np.random.default_rng(2).integers(0, 12, size=(4, 6)).astype("int32")
    _assert_exact(small, ssl_keras.zero_groups(model), ids)


def test_apply_ssl_penalises_embedding_groups_that_thin_removes():
    model = _masked_gap(False)
    ssl = ssl_keras.apply_ssl(model, filters=1e-3)
    slices = [s for g in ssl.ssl_groups if g["id"] == "e:2" for s in g["slices"]]
    assert {"layer": "e", "weight": "embeddings", "axis": -1, "index": [2]} in slices
    stripped = ssl_keras.strip_ssl(ssl)
    _zero_columns(stripped.get_layer("e"), "embeddings", [2])
    assert thin(stripped).get_layer("e").output_dim == 7


def test_thin_removes_channels_through_normalization():
    keras.utils.set_random_seed(7)
    i = keras.Input((4,))
    x = L.Normalization(name="norm")(L.Dense(5, name="pre")(i))
    model = keras.Model(i, L.Dense(2, name="post")(x))
    rng = np.random.default_rng(0)
    model.get_layer("norm").set_weights([rng.normal(size=5).astype("float32"),
                                         rng.uniform(0.5, 2, 5).astype("float32"),
                                         np.array(10.0)])
    model.get_layer("norm").finalize_state()
    _zero_columns(model.get_layer("pre"), "kernel", [1], bias=0.7)
    small = thin(model)
    assert small.get_layer("pre").units == 4
    assert small.get_layer("norm").mean.shape[-1] == 4
    x = rng.normal(size=(3, 4)).astype("float32")
    _assert_exact(small, ssl_keras.zero_groups(model), x)


class _Scale(L.Layer):
    """A per-channel scale: output channel c = input channel c * w[c]."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return x * self.w


def test_a_custom_tied_layer_thin_cannot_rebuild_is_blocked_and_not_penalised(clean_registry):
    ssl_keras.register_layer(_Scale, ssl_keras.LayerSpec(ssl_keras.Kind.TIED, tied=(
        ssl_keras.WeightSlice("w", axis=0),)))
    i = keras.Input((4,))
    x = _Scale(name="scale")(L.Dense(3, name="d1")(i))
    model = keras.Model(i, L.Dense(2, name="d2")(x))
    groups = {g["id"]: g for g in removable_groups(model)}
    reason = "thin cannot rebuild layer 'scale' of class _Scale with fewer channels"
    assert groups["d1:0"]["blocked"].startswith(reason)
    assert any(s["layer"] == "scale" for s in groups["d1:0"]["slices"])  # still analysed
    ssl = ssl_keras.apply_ssl(model, filters=1e-3)  # what thin keeps is not penalised
    assert not [g for g in ssl.ssl_groups if g["id"].startswith("d1:")]
    _zero_columns(model.get_layer("d1"), "kernel", [0])
    plan = ssl_keras.thinning_plan(model)
    assert plan["groups"]["d1:0"] == {"status": "kept",
                                      "why": f"blocked: {groups['d1:0']['blocked']}"}
