"""Tests for ssl_keras.callbacks.WidthBudget: a width budget reached gradually during SSL."""

import keras
import numpy as np
import pytest

import ssl_keras
from ssl_keras.callbacks import WidthBudget


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8,))
    h = keras.layers.Dense(12, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(6, activation="relu", name="d2")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h))


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.random((n, 8), dtype=np.float32), rng.random((n, 3), dtype=np.float32)


def _live(model, layer, threshold):
    """The number of d1 / d2 units whose coupled group (kernel column + next kernel row) is
    above `threshold`, from the weights (independent of the callback's bookkeeping)."""
    weights = {w.path.split("/")[-2]: np.asarray(w) for w in model.weights
               if w.path.endswith("kernel")}
    nxt = {"d1": "d2", "d2": "out"}[layer]
    norms = np.sqrt(np.sum(weights[layer] ** 2, axis=0) + np.sum(weights[nxt] ** 2, axis=1))
    return int(np.sum(norms > threshold)), norms


def test_schedule_goes_from_the_full_width_to_the_budget():
    """cap(t) = M + ceil((W - M) (1 - p)^power), held at M after end_step, W before begin."""
    s = ssl_keras.apply_ssl(_model(), filters=1e-3, channels=1e-3)
    s.compile(keras.optimizers.SGD(0.0), "mse")
    for power, expected in ((1.0, [12, 12, 12, 10, 8, 6, 4, 4, 4]),
                            (3.0, [12, 12, 12, 8, 5, 5, 4, 4, 4])):
        cb = WidthBudget({"d1": 4}, begin_step=2, end_step=6, power=power)
        cb.set_model(s)
        cb.on_train_begin()
        got = [cb.cap("d1", t) for t in range(9)]
        # by hand: p = (t - 2) / 4; power 1 at t=3: 4 + ceil(8 * 0.75) = 10; power 3 at t=3:
        # 4 + ceil(8 * 0.421875) = 8, t=4: 4 + ceil(1) = 5, t=5: 4 + ceil(0.125) = 5
        assert got == expected, (power, got)


def test_fit_ends_at_the_budget_and_thin_keeps_those_widths():
    s = ssl_keras.apply_ssl(_model(), filters=1e-3, channels=1e-3)
    s.compile(keras.optimizers.SGD(0.05), "mse")
    x, y = _data()
    cb = WidthBudget({"d1": 4, "d2": 3}, end_step=10, every_n_steps=2, threshold=1e-6)
    widths = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            widths.append(_live(s, "d1", 1e-6)[0])

    s.fit(x, y, batch_size=4, epochs=1, callbacks=[cb, Record()], verbose=0)
    # the budget tightens step by step (never a jump straight to 4), and holds at the end
    assert widths[0] == 12 and widths[-1] == 4, widths
    assert len(set(widths)) >= 4, widths
    # after every zeroing step (each 2nd), at most the step's cap is left
    for step, width in enumerate(widths, start=1):
        if step % 2 == 0:
            assert width <= cb.cap("d1", step), (step, width, widths)
    assert _live(s, "d1", 1e-6)[0] == 4 and _live(s, "d2", 1e-6)[0] == 3
    assert cb.widths == {"d1": 4, "d2": 3} and cb.cut >= 8 + 3
    small = ssl_keras.thin(ssl_keras.zero_groups(s, 1e-6), 1e-6)
    assert [small.get_layer(n).units for n in ("d1", "d2", "out")] == [4, 3, 3]
    zeroed = ssl_keras.zero_groups(s, 1e-6)
    np.testing.assert_allclose(small.predict(x, verbose=0), zeroed.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_the_weakest_groups_are_cut():
    """With a zero learning rate the weights only change by the cut: the kept units are the
    ones with the largest coupled norms."""
    s = ssl_keras.apply_ssl(_model(), filters=1e-3, channels=1e-3)
    s.compile(keras.optimizers.SGD(0.0), "mse")
    _, before = _live(s, "d1", 0.0)
    x, y = _data(8)
    cb = WidthBudget({"d1": 5}, end_step=1, every_n_steps=1, threshold=0.0)
    s.fit(x, y, batch_size=8, epochs=1, callbacks=[cb], verbose=0)
    _, after = _live(s, "d1", 0.0)
    kept = set(np.flatnonzero(after > 0))
    assert kept == set(np.argsort(before)[-5:])
    np.testing.assert_allclose(after[sorted(kept)], before[sorted(kept)], rtol=1e-6)


def test_an_int_budget_applies_to_every_layer_with_groups():
    s = ssl_keras.apply_ssl(_model(), filters=1e-3, channels=1e-3)
    s.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = _data(8)
    cb = WidthBudget(5, end_step=1, threshold=0.0)
    s.fit(x, y, batch_size=8, epochs=1, callbacks=[cb], verbose=0)
    assert cb.widths == {"d1": 5, "d2": 5}
    assert _live(s, "d1", 0.0)[0] == 5 and _live(s, "d2", 0.0)[0] == 5


def test_hand_placed_filter_groups_are_cut():
    """A plain model with GroupLasso(filters=) on a kernel: its filter groups are the layer's."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((8,))
    h = keras.layers.Dense(10, name="d1",
                           kernel_regularizer=ssl_keras.GroupLasso(filters=1e-3))(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h))
    model.compile(keras.optimizers.SGD(0.0), "mse")
    cb = WidthBudget({"d1": 3}, end_step=1, threshold=0.0)
    model.fit(np.ones((4, 8), "float32"), np.zeros((4, 2), "float32"), verbose=0,
              callbacks=[cb])
    kernel = np.asarray(model.get_layer("d1").kernel)
    assert int(np.sum(np.linalg.norm(kernel, axis=0) > 0)) == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"max_channels": {"d1": 0}, "end_step": 5}, "`max_channels` must be an integer >= 1"),
    ({"max_channels": {"d1": 2.5}, "end_step": 5}, "`max_channels` must be an integer >= 1"),
    ({"max_channels": True, "end_step": 5}, "`max_channels` must be an integer >= 1"),
    ({"max_channels": 4, "end_step": 5, "begin_step": 5}, "greater than `begin_step`"),
    ({"max_channels": 4, "end_step": 0}, "`end_step` must be an integer >= 1"),
    ({"max_channels": 4, "end_step": 5, "begin_step": -1}, "`begin_step` must be an integer"),
    ({"max_channels": 4, "end_step": 5, "power": 0}, "`power` must be a finite number > 0"),
    ({"max_channels": 4, "end_step": 5, "power": float("nan")}, "`power` must be a finite"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        WidthBudget(**kwargs)


def test_unknown_layers_are_named():
    s = ssl_keras.apply_ssl(_model(), filters=1e-3, channels=1e-3)
    s.compile(keras.optimizers.SGD(0.0), "mse")
    cb = WidthBudget({"d9": 4, "out": 2}, end_step=2)
    with pytest.raises(ValueError, match=r"Expected names among \['d1', 'd2'\]\. "
                                         r"Received: \['d9', 'out'\]"):
        s.fit(*_data(8), verbose=0, callbacks=[cb])


# ------------------------------------------------ the groups zero_groups counts (probing)

L = keras.layers


def _fit_budget(model, budget, **kwargs):
    rng = np.random.default_rng(0)
    shape = (32, *model.input_shape[1:])
    x = rng.normal(size=shape).astype("float32")
    y = rng.normal(size=(32, model.output_shape[-1])).astype("float32")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    cb = WidthBudget(budget, end_step=4, every_n_steps=1, threshold=1e-4, **kwargs)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    return cb


def _thin_widths(model, names):
    small = ssl_keras.thin(ssl_keras.zero_groups(model, 1e-4), 1e-4)
    return {n: small.get_layer(n).filters if hasattr(small.get_layer(n), "filters")
            else small.get_layer(n).units for n in names}


def test_the_output_layer_and_blocked_channels_are_left_alone():
    """A plain model: an int budget cuts what zero_groups(max_channels=) cuts, not the output
    units or channels thin cannot remove. Was: the per-layer filter groups of every layer
    were budgeted, so 2 of 5 outputs were zeroed and c2's filters zeroed but kept."""
    def build():
        keras.utils.set_random_seed(0)
        i = keras.Input((8, 8, 3))
        x = L.ReLU()(L.Conv2D(8, 3, padding="same", name="c1")(i))
        x = L.ReLU()(L.Conv2D(8, 3, padding="same", name="c2")(x))
        x = L.Flatten()(L.Reshape((8, 8, 2, 4))(x))  # blocks c2's channels
        return keras.Model(i, L.Dense(5, name="out")(x))

    model = build()
    cb = _fit_budget(model, 3)
    assert sorted(cb.widths) == ["c1"] and cb.widths["c1"] == 3
    out = np.asarray(model.get_layer("out").kernel)
    assert np.all(np.linalg.norm(out, axis=0) > 0)  # every output unit is still there
    c2 = np.asarray(model.get_layer("c2").kernel).reshape(-1, 8)
    assert np.all(np.linalg.norm(c2, axis=0) > 0)
    assert _thin_widths(model, ["c1", "c2", "out"]) == {"c1": 3, "c2": 8, "out": 5}


def _add_of_concat():
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(i)
    b = L.Conv2D(4, 3, padding="same", name="b")(i)
    c = L.Conv2D(8, 3, padding="same", name="c")(i)
    x = L.Add()([L.Concatenate()([a, b]), c])
    return keras.Model(i, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(L.ReLU()(x))))


def test_channels_tied_by_an_add_count_in_every_layer():
    """A channel an Add ties to several convolutions counts in each (as in zero_groups):
    the int budget leaves every layer at most 3 wide, and a tied layer can be named. Was:
    each group counted for its source layer only, so c kept 6 and {"c": 3} was refused."""
    reference = _thin_widths(ssl_keras.zero_groups(_add_of_concat(), 1e-4, max_channels=3),
                             "abc")
    assert reference == {"a": 1, "b": 2, "c": 3}
    model = ssl_keras.apply_ssl(_add_of_concat(), filters=1e-3, channels=1e-3)
    _fit_budget(model, 3)
    assert all(w <= 3 for w in _thin_widths(model, "abc").values())
    model = ssl_keras.apply_ssl(_add_of_concat(), filters=1e-3, channels=1e-3)
    cb = _fit_budget(model, {"c": 3})
    assert cb.widths == {"c": 3} and _thin_widths(model, "c") == {"c": 3}


def test_layers_inside_a_nested_model_take_no_budget():
    """thin does not narrow a nested model's layers: the budget neither lumps them under the
    nested model's name (was: 4 channels shared by body/c1 and body/c2) nor accepts them."""
    keras.utils.set_random_seed(0)
    ii = keras.Input((8, 8, 3))
    z = L.ReLU()(L.Conv2D(8, 3, padding="same", name="c1")(ii))
    inner = keras.Model(ii, L.ReLU()(L.Conv2D(8, 3, padding="same", name="c2")(z)),
                        name="body")
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="top")(inner(i))
    model = keras.Model(i, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(x)))
    cb = _fit_budget(model, 4)
    assert cb.widths == {"top": 4}
    for name in ("c1", "c2"):
        kernel = np.asarray(inner.get_layer(name).kernel).reshape(-1, 8)
        assert np.all(np.linalg.norm(kernel, axis=0) > 0), name
    with pytest.raises(ValueError, match=r"Expected names among \['top'\]\. "
                                         r"Received: \['body'\]"):
        _fit_budget(model, {"body": 4})


def test_numpy_scalars_are_accepted():
    cb = WidthBudget(np.int64(3), end_step=np.int64(10), power=np.float32(2.0))
    assert (cb.max_channels, cb.end_step, cb.power) == (3, 10, 2.0)


def test_cap_before_training_says_why():
    cb = WidthBudget({"d1": 4}, end_step=5)
    with pytest.raises(ValueError, match=r"reads the layers' widths when training begins.*"
                                         r"Received: layer='d1'"):
        cb.cap("d1", 0)
