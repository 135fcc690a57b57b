"""Tests for ssl_keras.callbacks: SparsityMonitor, ZeroSmallGroups, ProximalGroupLasso, freeze."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import ssl_keras
from examples.models import resnet
from ssl_keras.callbacks import (
    FreezeZeroGroups,
    ProximalGroupLasso,
    SparsityMonitor,
    ZeroSmallGroups,
    freeze_zero_groups,
)
from ssl_keras.graph import removable_groups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALES = np.array([0.05, 0.5, 1.0, 2.0])


def _mlp():
    """3 -> d1 (4, relu) -> d2 (2); column j of d1 scaled by SCALES[j], row j of d2 too."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, activation="relu", name="d1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d2")(x), name="mlp")
    rng = np.random.default_rng(0)
    k1 = rng.normal(size=(3, 4)).astype("float32")
    k2 = rng.normal(size=(4, 2)).astype("float32")
    k1 *= SCALES / np.linalg.norm(k1, axis=0)
    k2 *= (SCALES / np.linalg.norm(k2, axis=1))[:, None]
    model.get_layer("d1").kernel.assign(k1)
    model.get_layer("d2").kernel.assign(k2)
    return model


def _prox_oracle(k1, k2, lr, lam):
    """One coupled proximal step on the d1:j groups (column j of k1 with row j of k2)."""
    norms = np.sqrt(np.sum(k1.astype(np.float64) ** 2, axis=0)
                    + np.sum(k2.astype(np.float64) ** 2, axis=1))
    with np.errstate(divide="ignore"):
        factors = np.maximum(0.0, 1.0 - lr * lam / norms)
    return k1 * factors, k2 * factors[:, None]


def _kernels(model):
    return model.get_layer("d1").kernel.numpy(), model.get_layer("d2").kernel.numpy()


def test_proximal_coupled_groups_match_oracle_with_schedule():
    model = _mlp()
    groups = removable_groups(model)
    k1, k2 = _kernels(model)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.3, decay_steps=1, decay_rate=0.5)
    model.compile(keras.optimizers.SGD(schedule), "mse")
    # x = 0 and zero biases: the kernels get no gradient, only the proximal steps move them.
    model.fit(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"), batch_size=1,
              epochs=1, verbose=0, shuffle=False,
              callbacks=[ProximalGroupLasso(coefficient=1.0, groups=groups)])
    k1, k2 = _prox_oracle(k1, k2, 0.3, 1.0)
    k1, k2 = _prox_oracle(k1, k2, 0.15, 1.0)
    got1, got2 = _kernels(model)
    np.testing.assert_allclose(got1, k1, atol=1e-6)
    np.testing.assert_allclose(got2, k2, atol=1e-6)
    zero = np.all(k1 == 0.0, axis=0)
    assert list(zero) == [True, False, False, False]  # group 0 only: norm 0.07 < 0.45
    assert np.all(got1[:, zero] == 0.0) and np.all(got2[zero] == 0.0)  # exact zeros
    assert np.all(got1[:, ~zero] != 0.0)


@pytest.mark.parametrize("optimizer, warned", [
    (lambda: keras.optimizers.SGD(0.1), None),
    (lambda: keras.optimizers.SGD(0.1, momentum=0.9), "SGD with momentum=0.9"),
    (lambda: keras.optimizers.Adam(0.1), "Adam"),
])
def test_proximal_warns_unless_the_optimizer_is_plain_sgd(optimizer, warned):
    """Found by probing: the README says the proximal phase needs plain SGD, and nothing
    said so when a user compiled with Adam or momentum."""
    model = _mlp()
    model.compile(optimizer(), "mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"), batch_size=1,
                  epochs=1, verbose=0, callbacks=[ProximalGroupLasso(
                      coefficient=1.0, groups=removable_groups(model))])
    found = [str(w.message) for w in caught if "ProximalGroupLasso after" in str(w.message)]
    if warned is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(f"ProximalGroupLasso after {warned}:")
        assert "keras.optimizers.SGD(lr) (momentum 0)" in found[0]


def test_proximal_with_a_constant_rate_and_steps_per_execution_matches_the_oracle():
    """Found by mutation testing: with a constant rate, the N steps of one execution were
    shrunk by lr once instead of N times and no test noticed (the schedule test takes
    another path)."""
    model = _mlp()
    model.compile(keras.optimizers.SGD(0.1), "mse", steps_per_execution=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the steps_per_execution warning
        model.fit(np.zeros((8, 3), "float32"), np.zeros((8, 2), "float32"), batch_size=1,
                  epochs=1, verbose=0, shuffle=False,
                  callbacks=[ProximalGroupLasso(coefficient=1.0, groups=removable_groups(model))])
    k1, k2 = _kernels(_mlp())
    for _ in range(8):
        k1, k2 = _prox_oracle(k1, k2, 0.1, 1.0)
    np.testing.assert_allclose(_kernels(model)[0], k1, atol=1e-6)
    np.testing.assert_allclose(_kernels(model)[1], k2, atol=1e-6)


def test_zero_small_groups_zeroes_a_group_exactly_at_the_threshold():
    """Found by mutation testing: "at or below" was untested (< passed every test)."""
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
    model.get_layer("d").kernel.assign(np.array([[3, 10], [4, 10], [0, 10]], "float32"))
    callback = ZeroSmallGroups(threshold=5.0)  # filter 0 has norm exactly 5
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_train_end()
    kernel = model.get_layer("d").kernel.numpy()
    assert not kernel[:, 0].any() and kernel[:, 1].all()


def test_proximal_kernel_in_two_groups_of_different_axes():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, activation="relu", name="d1")(inputs)
    x = keras.layers.Dense(5, activation="relu", name="d2")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="d3")(x))
    k1, k2, k3 = (model.get_layer(n).kernel.numpy().astype(np.float64)
                  for n in ("d1", "d2", "d3"))
    model.compile(keras.optimizers.SGD(0.2), "mse")
    model.fit(np.zeros((1, 3), "float32"), np.zeros((1, 2), "float32"), verbose=0,
              callbacks=[ProximalGroupLasso(coefficient=1.5, groups=removable_groups(model))])
    # d2's kernel is a consumer of the d1 groups (rows) and the producer of the d2 groups
    # (columns): both factors, from the norms before the step, multiply.
    n1 = np.sqrt(np.sum(k1 ** 2, axis=0) + np.sum(k2 ** 2, axis=1))
    n2 = np.sqrt(np.sum(k2 ** 2, axis=0) + np.sum(k3 ** 2, axis=1))
    f1, f2 = np.maximum(0, 1 - 0.3 / n1), np.maximum(0, 1 - 0.3 / n2)
    np.testing.assert_allclose(model.get_layer("d1").kernel.numpy(), k1 * f1, atol=1e-6)
    np.testing.assert_allclose(model.get_layer("d2").kernel.numpy(), k2 * f1[:, None] * f2,
                               atol=1e-6)
    np.testing.assert_allclose(model.get_layer("d3").kernel.numpy(), k3 * f2[:, None],
                               atol=1e-6)


def test_proximal_on_hand_placed_group_lasso_is_pure_proximal_gradient():
    # The README's first line: GroupLasso put on a kernel by hand, no apply_ssl.
    keras.utils.set_random_seed(1)
    reg = ssl_keras.GroupLasso(filters=0.5)
    model = keras.Sequential([keras.Input((3,)),
                              keras.layers.Dense(4, name="d", kernel_regularizer=reg)])
    kernel = model.get_layer("d").kernel
    w = kernel.numpy().astype(np.float64)
    penalty = 0.5 * np.sum(np.sqrt(np.sum(w ** 2, axis=0) + 1e-8))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = np.zeros((1, 3), "float32"), np.zeros((1, 4), "float32")
    monitor = SparsityMonitor(verbose=False)
    history = model.fit(x, y, verbose=0, callbacks=[ProximalGroupLasso(), monitor])
    np.testing.assert_allclose(history.history["loss"][0], penalty, rtol=1e-5)
    step = w * np.maximum(0, 1 - 0.1 * 0.5 / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(kernel.numpy(), step, atol=1e-6)
    # The monitor reports the penalised structure (not the fallback analysis of the model).
    assert set(monitor.summary) == {"d/filters"}
    assert reg.ssl_penalty_gradient and model.train_function is None
    model.fit(x, y, verbose=0)  # the subgradient is back
    sub = step * (1 - 0.1 * 0.5 / np.sqrt(np.sum(step ** 2, axis=0) + 1e-8))
    np.testing.assert_allclose(kernel.numpy(), sub, atol=1e-6)


class _Subclassed(keras.Model):
    def __init__(self, reg):
        super().__init__(name="sub")
        self.conv = keras.layers.Conv2D(4, 3, name="conv", kernel_regularizer=reg)
        self.flat = keras.layers.Flatten()
        self.head = keras.layers.Dense(2, name="head")

    def call(self, x):
        return self.head(self.flat(self.conv(x)))


def test_subclassed_model_with_hand_placed_group_lasso_trains_to_exact_zeros():
    keras.utils.set_random_seed(2)
    model = _Subclassed(ssl_keras.GroupLasso(filters=50.0, channels=0.1))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.random.default_rng(2).normal(size=(8, 6, 6, 2)).astype("float32")
    y = np.zeros((8, 2), "float32")
    with pytest.raises(ValueError, match="Model 'sub' is not built.*model.build"):
        model.fit(x, y, verbose=0, callbacks=[ProximalGroupLasso()])
    model(x[:1])
    monitor = SparsityMonitor(verbose=False)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[ProximalGroupLasso(), monitor])
    # A step of lr * lambda = 5 is larger than every filter's norm: all filters are 0.
    assert not np.any(model.conv.kernel.numpy())
    assert monitor.summary["conv/filters"] == (4, 4)
    assert set(monitor.summary) == {"conv/filters", "conv/channels"}


def test_set_penalty_gradient_reaches_hand_placed_group_lasso_under_a_wrapper():
    reg = ssl_keras.GroupLasso(channels=0.2)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(4, name="d", kernel_regularizer=reg)(inputs)
    with pytest.warns(UserWarning, match="GroupLasso"):
        ssl = ssl_keras.apply_ssl(keras.Model(inputs, outputs), filters=0.1, coupled=False)
    own = ssl.get_layer("d").ssl_inner_layer.kernel.regularizer.own
    assert isinstance(own, ssl_keras.GroupLasso) and own is not reg  # a copy, not the caller's
    assert ssl_keras.wrap.set_penalty_gradient(ssl, False)
    assert not own.ssl_penalty_gradient and reg.ssl_penalty_gradient
    assert ssl_keras.wrap.set_penalty_gradient(ssl, True) and own.ssl_penalty_gradient


def test_proximal_on_wrapper_is_pure_proximal_gradient():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), ssl_keras.apply_ssl(
        keras.layers.Dense(4, name="d"), filters=0.5)])
    wrapper = model.get_layer("d")
    kernel = wrapper.ssl_inner_layer.kernel
    w = kernel.numpy().astype(np.float64)
    penalty = 0.5 * np.sum(np.sqrt(np.sum(w ** 2, axis=0) + 1e-8))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = np.zeros((1, 3), "float32"), np.zeros((1, 4), "float32")
    history = model.fit(x, y, verbose=0, callbacks=[ProximalGroupLasso()])
    # The penalty is in the loss value, but only the proximal step moves the kernel.
    np.testing.assert_allclose(history.history["loss"][0], penalty, rtol=1e-5)
    step = w * np.maximum(0, 1 - 0.1 * 0.5 / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(kernel.numpy(), step, atol=1e-6)
    # After the fit, the penalty has its gradient back: plain SGD on loss + group Lasso.
    assert wrapper.ssl_penalty_gradient and model.train_function is None
    model.fit(x, y, verbose=0)
    sub = step * (1 - 0.1 * 0.5 / np.sqrt(np.sum(step ** 2, axis=0) + 1e-8))
    np.testing.assert_allclose(kernel.numpy(), sub, atol=1e-6)


def test_proximal_with_steps_per_execution_applies_every_step_and_warns():
    """Keras calls batch callbacks once per execution of N steps: the shrinkage of all N
    steps is applied (with each step's scheduled rate). Was: once per call, N times weaker."""
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.8)
    kernels = {}
    for every in (1, 4):
        model = _mlp()
        model.compile(keras.optimizers.SGD(schedule), "mse", steps_per_execution=every)
        callback = ProximalGroupLasso(coefficient=1.0, groups=removable_groups(model))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(np.zeros((8, 3), "float32"), np.zeros((8, 2), "float32"), batch_size=1,
                      epochs=1, verbose=0, shuffle=False, callbacks=[callback])
        said = [str(w.message) for w in caught if "ProximalGroupLasso" in str(w.message)]
        assert len(said) == (every > 1)
        assert int(model.optimizer.iterations) == 8
        kernels[every] = _kernels(model)
    k1, k2 = _kernels(_mlp())
    for step in range(8):  # x = 0: the proximal steps alone move the kernels
        k1, k2 = _prox_oracle(k1, k2, 0.1 * 0.8 ** step, 1.0)
    for every in (1, 4):
        np.testing.assert_allclose(kernels[every][0], k1, atol=1e-6)
        np.testing.assert_allclose(kernels[every][1], k2, atol=1e-6)


def test_proximal_counts_only_this_calls_steps_when_the_step_count_is_restored():
    """A callback after ProximalGroupLasso that sets the step count (BackupAndRestore
    restoring a run) must not count as steps taken: 2 steps shrink twice, not 102 times."""

    class Restore(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.optimizer.iterations.assign(100)

    model = _mlp()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.optimizer.build(model.trainable_variables)
    k1, k2 = _kernels(model)
    model.fit(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"), batch_size=1,
              epochs=1, verbose=0, shuffle=False,
              callbacks=[ProximalGroupLasso(coefficient=1.0, groups=removable_groups(model)),
                         Restore()])
    for _ in range(2):
        k1, k2 = _prox_oracle(k1, k2, 0.1, 1.0)
    np.testing.assert_allclose(_kernels(model)[0], k1, atol=1e-6)
    np.testing.assert_allclose(_kernels(model)[1], k2, atol=1e-6)


def test_zero_small_groups_counts_optimizer_steps(monkeypatch):
    """every_n_steps counts optimizer steps, also when Keras runs several per callback call
    (steps_per_execution). Was: callback calls (every 4 steps with N = 4: never)."""
    import ssl_keras.callbacks as module

    calls = []
    real = module._zero_below
    monkeypatch.setattr(module, "_zero_below", lambda *a: calls.append(1) or real(*a))
    for every, expected in ((1, 2), (4, 2), (3, 2)):
        calls.clear()
        model = _mlp()
        model.compile(keras.optimizers.SGD(0.0), "mse", steps_per_execution=every)
        callback = ZeroSmallGroups(threshold=0.1, every_n_steps=4, groups=removable_groups(model))
        model.fit(np.ones((8, 3), "float32"), np.zeros((8, 2), "float32"), batch_size=1,
                  verbose=0, callbacks=[callback])
        # 8 steps: runs after steps 4 and 8 (with N = 3: after the calls at steps 6 and 8,
        # once per multiple of 4 that passed), plus once at the end of training
        assert len(calls) == expected + 1, (every, len(calls))


def test_zero_small_groups_zeroes_at_the_same_steps_after_a_resume(monkeypatch):
    """A fit resumed at step 6 (BackupAndRestore restores the optimizer's step count; here a
    second fit continues it) zeroes at step 8 as one 10-step fit does. Was: counted from the
    start of each fit, so the resumed one zeroed at step 10 (its own 4th) instead."""
    import ssl_keras.callbacks as module

    at = []
    real = module._zero_below
    models = []
    monkeypatch.setattr(module, "_zero_below", lambda *a: at.append(
        int(models[-1].optimizer.iterations.numpy())) or real(*a))

    def fit(model, steps):
        model.fit(np.ones((steps, 3), "float32"), np.zeros((steps, 2), "float32"),
                  batch_size=1, verbose=0, shuffle=False, callbacks=[ZeroSmallGroups(
                      threshold=0.1, every_n_steps=4, groups=removable_groups(model))])

    models.append(_mlp())
    models[-1].compile(keras.optimizers.SGD(0.0), "mse")
    fit(models[-1], 10)
    whole = list(at)
    at.clear()
    models.append(_mlp())
    models[-1].compile(keras.optimizers.SGD(0.0), "mse")
    fit(models[-1], 6)
    fit(models[-1], 4)  # the same optimizer: its step count goes on from 6
    assert whole == [4, 8, 10]  # steps 4 and 8, and the end of training
    assert at == [4, 6, 8, 10]  # the same steps, plus the end of the first fit


def test_sparsity_monitor_refuses_a_file_as_log_dir(tmp_path):
    """Was: accepted, then TensorFlow's FailedPreconditionError ("Not a directory") in fit."""
    path = tmp_path / "events"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"`log_dir` must be a directory .* a file"):
        SparsityMonitor(log_dir=path)
    SparsityMonitor(log_dir=tmp_path / "new")  # a folder to be created is fine


def test_zero_small_groups():
    model = _mlp()
    k1, k2 = _kernels(model)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    callback = ZeroSmallGroups(threshold=0.1, every_n_steps=2,
                               groups=removable_groups(model))
    model.fit(np.ones((3, 3), "float32"), np.zeros((3, 2), "float32"), batch_size=1,
              verbose=0, callbacks=[callback])
    got1, got2 = _kernels(model)
    assert np.all(got1[:, 0] == 0.0) and np.all(got2[0] == 0.0)
    np.testing.assert_array_equal(got1[:, 1:], k1[:, 1:])
    np.testing.assert_array_equal(got2[1:], k2[1:])
    assert callback.zeroed == 1


def _mlp_with_unit_1_zero():
    """_mlp with d1's unit 1 zero on both sides (its column in d1, its row in d2)."""
    model = _mlp()
    k1, k2 = _kernels(model)
    k1[:, 1] = 0.0
    k2[1] = 0.0
    model.get_layer("d1").kernel.assign(k1)
    model.get_layer("d2").kernel.assign(k2)
    return model, k1, k2


def test_freeze_zero_groups_keeps_zeros_exact():
    model, k1, k2 = _mlp_with_unit_1_zero()
    freeze = ssl_keras.freeze_zero_groups(model, threshold=1e-4)
    assert isinstance(freeze, FreezeZeroGroups) and freeze.frozen_groups >= 2
    model.compile(keras.optimizers.Adam(0.05), "mse")
    rng = np.random.default_rng(2)
    model.fit(rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 2)).astype(
        "float32"), batch_size=2, epochs=2, verbose=0, callbacks=[freeze])
    got1, got2 = _kernels(model)
    assert np.all(got1[:, 1] == 0.0) and np.all(got2[1] == 0.0)
    assert not np.allclose(got1[:, [0, 2, 3]], k1[:, [0, 2, 3]])


def test_resnet_proximal_zeroes_whole_coupled_groups_and_monitor_reports(tmp_path, capsys):
    keras.utils.set_random_seed(3)
    model = resnet(8, input_shape=(8, 8, 3), widths=(4, 8, 8))
    before = [np.array(v.numpy()) for v in model.weights]
    ssl = ssl_keras.apply_ssl(model, filters=5.0, channels=5.0, depth=5.0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(16, 10)).astype("float32")
    ssl.compile(keras.optimizers.SGD(0.05), "mse")
    monitor = SparsityMonitor(threshold=1e-4, log_dir=str(tmp_path / "tb"))
    history = ssl.fit(x, y, batch_size=8, epochs=3, verbose=0,
                      callbacks=[ProximalGroupLasso(), monitor])
    logs = history.history
    assert len(logs["ssl/zero_groups"]) == 3
    # The epoch logs (progress bar, History) hold the totals; the monitor every figure.
    assert [k for k in logs if k.startswith("ssl/")] == ["ssl/zero_groups", "ssl/zero_fraction"]
    assert "ssl/stage2_block1_conv1/channel/zero" in monitor.history
    assert "ssl/stage3_block1_add/depth/fraction" in monitor.history
    assert monitor.history["ssl/zero_groups"] == logs["ssl/zero_groups"]
    assert all(len(v) == 3 for v in monitor.history.values())

    def slices_zero(group):
        for piece in group["slices"]:
            layer = ssl.get_layer(piece["layer"])
            layer = getattr(layer, "ssl_inner_layer", layer)
            (w,) = [v for v in layer.weights if v.name == piece["weight"]]
            if np.any(np.take(w.numpy(), piece["index"], axis=piece["axis"]) != 0.0):
                return False
        return True

    exact = sum(slices_zero(g) for g in ssl.ssl_groups)
    assert exact > 0 and exact == logs["ssl/zero_groups"][-1]
    channels = [g for g in ssl.ssl_groups if g["kind"] == "channel" and slices_zero(g)]
    assert channels and any(len({s["layer"] for s in g["slices"]}) >= 3 for g in channels)
    assert "total" in monitor.table and "Group sparsity" in capsys.readouterr().out
    import tensorflow as tf

    (events,) = [name for name in os.listdir(tmp_path / "tb") if name.startswith("events")]
    scalars = {}
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / events)):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(
                float(tf.make_ndarray(value.tensor)))
    assert scalars["ssl/zero_groups"] == logs["ssl/zero_groups"]
    assert set(scalars) == set(monitor.history)  # TensorBoard gets the per-layer figures
    # The input model is untouched.
    assert model.losses == []
    for a, v in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


def _run(script, **env):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MIRRORED = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, ssl_keras
from ssl_keras.callbacks import ProximalGroupLasso, SparsityMonitor, ZeroSmallGroups
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
keras.utils.set_random_seed(0)
with strategy.scope():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(keras.layers.ReLU()(x))
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    ssl = ssl_keras.apply_ssl(model, filters=3.0, channels=3.0, depth=3.0)
    ssl.compile(keras.optimizers.SGD(0.05), "mse")
penalty = float(sum(float(l) for l in ssl.losses))
oracle = 0.0
for g in ssl.ssl_groups:
    sq = 0.0
    for s in g["slices"]:
        layer = ssl.get_layer(s["layer"])
        layer = getattr(layer, "ssl_inner_layer", layer)
        (w,) = [v for v in layer.weights if v.name == s["weight"]]
        sq += float(np.sum(np.take(np.asarray(w.numpy(), np.float64), s["index"], s["axis"])**2))
    oracle += g["coefficient"] * np.sqrt(sq + 1e-8)
rng = np.random.default_rng(0)
h = ssl.fit(rng.normal(size=(16, 6, 6, 2)).astype("float32"),
            rng.normal(size=(16, 2)).astype("float32"), batch_size=8, epochs=3, verbose=0,
            callbacks=[ProximalGroupLasso(), ZeroSmallGroups(1e-3),
                       SparsityMonitor(1e-4, verbose=False)])
same = True
for v in ssl.trainable_variables:
    values = [np.asarray(r) for r in v.value.values]
    same = same and len(values) == 2 and all(np.array_equal(values[0], r) for r in values)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "penalty": penalty,
                  "oracle": oracle, "zero": h.history["ssl/zero_groups"],
                  "loss": h.history["loss"], "replicas_equal": bool(same)}))
"""


def test_mirrored_strategy_two_cpus():
    result = _run(MIRRORED)
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["penalty"], result["oracle"], rtol=1e-5)
    assert all(np.isfinite(result["loss"]))
    assert result["zero"][-1] > 0
    assert result["replicas_equal"]


JAX = """
import json, keras, numpy as np
from ssl_keras.callbacks import ProximalGroupLasso, SparsityMonitor
from ssl_keras.graph import removable_groups
from tests.test_callbacks import _mlp, _kernels, _prox_oracle
model = _mlp()
k1, k2 = _kernels(model)
model.compile(keras.optimizers.SGD(0.3), "mse")
h = model.fit(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"), batch_size=1,
              verbose=0, shuffle=False, callbacks=[
                  ProximalGroupLasso(coefficient=1.0, groups=removable_groups(model)),
                  SparsityMonitor(1e-4, groups=removable_groups(model), verbose=False)])
for _ in range(2):
    k1, k2 = _prox_oracle(k1, k2, 0.3, 1.0)
g1, g2 = _kernels(model)
print(json.dumps({"backend": keras.backend.backend(),
                  "error": float(max(np.abs(g1 - k1).max(), np.abs(g2 - k2).max())),
                  "zero": h.history["ssl/zero_groups"],
                  "expected": float(np.sum(np.all(k1 == 0, axis=0)))}))
"""


def test_jax_backend_proximal_matches_oracle():
    result = _run(JAX, KERAS_BACKEND="jax")
    assert result["backend"] == "jax"
    assert result["error"] < 1e-6
    assert result["zero"] == [result["expected"]] == [1.0]


def test_errors():
    model = _mlp()
    with pytest.raises(ValueError, match=r"`threshold` must be a non-negative.*threshold=-1"):
        SparsityMonitor(threshold=-1)
    with pytest.raises(ValueError, match=r"`threshold` must be a non-negative.*threshold=nan"):
        ZeroSmallGroups(threshold=float("nan"))
    with pytest.raises(ValueError, match=r"`every_n_steps` must be an integer >= 1.*=0"):
        ZeroSmallGroups(every_n_steps=0)
    with pytest.raises(ValueError, match=r"`coefficient` must be a non-negative.*=-0.5"):
        ProximalGroupLasso(coefficient=-0.5)
    with pytest.raises(ValueError, match=r"`threshold` must be a non-negative.*=-0.1"):
        freeze_zero_groups(model, threshold=-0.1)
    with pytest.raises(ValueError, match="`model` must be a Keras model"):
        freeze_zero_groups("model")
    with pytest.raises(ValueError, match="`log_dir` must be a path or None"):
        SparsityMonitor(log_dir=3)
    with pytest.raises(ValueError, match="`per_layer_logs` must be a bool.*=1"):
        SparsityMonitor(per_layer_logs=1)
    with pytest.raises(ValueError, match="`verbose` must be a bool.*Received: verbose='no'"):
        SparsityMonitor(verbose="no")
    with pytest.raises(ValueError, match="`groups` must be a list of group dicts"):
        freeze_zero_groups(model, groups="all")
    with pytest.raises(ValueError, match="must be a dict with 'id' and 'slices'"):
        freeze_zero_groups(model, groups=[{"id": "x"}])

    model.compile(keras.optimizers.SGD(0.1), "mse")
    data = (np.zeros((1, 3), "float32"), np.zeros((1, 2), "float32"))
    with pytest.raises(ValueError, match="carries no SSL groups to shrink.*groups=None"):
        model.fit(*data, verbose=0, callbacks=[ProximalGroupLasso()])
    with pytest.raises(ValueError, match="Every group has coefficient 0"):
        model.fit(*data, verbose=0,
                  callbacks=[ProximalGroupLasso(groups=removable_groups(model))])
    other = _mlp()
    with pytest.raises(ValueError, match="made for model 'mlp' but is used to train another "
                                         "model of the same name"):
        model.fit(*data, verbose=0, callbacks=[freeze_zero_groups(other)])
    other.name = "other"
    with pytest.raises(ValueError, match="made for model 'other' but is used to train model "
                                         "'mlp'"):
        model.fit(*data, verbose=0, callbacks=[freeze_zero_groups(other)])


def test_depth_group_zeroed_with_its_branch_kernels_and_thin_drops_the_block():
    keras.utils.set_random_seed(5)
    model = resnet(8, input_shape=(8, 8, 3), widths=(4, 8, 8))
    bn = model.get_layer("stage2_block1_bn2")
    bn.gamma.assign(np.full(8, 1e-5, "float32"))  # ||(gamma, beta)|| = 2.8e-5 < 1e-4
    bn.beta.assign(np.full(8, -1e-5, "float32"))
    ssl = ssl_keras.apply_ssl(model, depth=0.1)
    x = np.random.default_rng(5).normal(size=(4, 8, 8, 3)).astype("float32")
    callback = ZeroSmallGroups(1e-4, every_n_steps=1)
    callback.set_model(ssl)
    callback.on_train_begin()
    callback.on_train_end()
    assert callback.zeroed == 1
    inner = lambda name: ssl.get_layer(name).ssl_inner_layer  # noqa: E731
    for name in ("stage2_block1_conv1", "stage2_block1_conv2"):
        assert not np.any(inner(name).kernel.numpy())
    assert not np.any(ssl.get_layer("stage2_block1_bn1").gamma.numpy())
    # The input model is not touched.
    np.testing.assert_array_equal(bn.gamma.numpy(), np.full(8, 1e-5, "float32"))
    assert not np.any(ssl.get_layer("stage2_block1_bn2").gamma.numpy())
    # Other branches keep their kernels (their groups are far above the threshold).
    assert np.any(inner("stage1_block1_conv1").kernel.numpy())
    plain = ssl_keras.strip_ssl(ssl)
    thinned = ssl_keras.thin(plain, threshold=1e-4)
    names = {layer.name for layer in thinned.layers}
    assert "stage2_block1_conv1" not in names and "stage2_block1_conv2" not in names
    assert "stage2_block1_proj" in names and "stage1_block1_conv1" in names
    np.testing.assert_allclose(thinned(x), plain(x), atol=1e-5)
    np.testing.assert_allclose(plain(x), ssl(x), atol=1e-6)


def test_proximal_step_that_zeroes_a_depth_group_zeroes_its_kernels():
    keras.utils.set_random_seed(6)
    model = resnet(8, input_shape=(8, 8, 3), widths=(4, 8, 8))
    bn = model.get_layer("stage1_block1_bn2")
    bn.gamma.assign(np.full(4, 1e-3, "float32"))
    bn.beta.assign(np.zeros(4, "float32"))
    ssl = ssl_keras.apply_ssl(model, depth=1.0)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(8, 10)).astype("float32")
    # SGD lr 0.1 * lambda 1.0 = 0.1 per step > the group's norm: exactly zero after a step.
    ssl.compile(keras.optimizers.SGD(0.1), "mse")
    ssl.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ProximalGroupLasso()])
    layer = ssl.get_layer("stage1_block1_bn2")
    assert not np.any(layer.gamma.numpy()) and not np.any(layer.beta.numpy())
    for name in ("stage1_block1_conv1", "stage1_block1_conv2"):
        assert not np.any(ssl.get_layer(name).ssl_inner_layer.kernel.numpy())
    assert np.any(ssl.get_layer("stage2_block1_conv1").ssl_inner_layer.kernel.numpy())


def _bn_model():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(3, name="d")(inputs)
    return keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))


def test_reestimate_batchnorm_matches_numpy_oracle():
    from ssl_keras.callbacks import reestimate_batchnorm

    model = _bn_model()
    rng = np.random.default_rng(7)
    x = rng.normal(2.0, 3.0, size=(26, 5)).astype("float32")
    kernel, bias = (w.numpy() for w in model.get_layer("d").weights)
    bn = model.get_layer("bn")
    weights = [np.array(w.numpy()) for w in model.trainable_weights]
    assert reestimate_batchnorm(model, x, batch_size=8) == 1
    z = x[:24] @ kernel + bias  # 3 full batches of 8; the 2 left over are not used
    batches = z.reshape(3, 8, 3)
    np.testing.assert_allclose(bn.moving_mean.numpy(), batches.mean(1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), batches.var(1).mean(0), rtol=1e-4)
    assert bn.momentum == 0.99
    for a, w in zip(weights, model.trainable_weights, strict=True):  # no weight updates
        np.testing.assert_array_equal(a, w.numpy())
    # One batch of everything: inference mode now equals training mode on that batch.
    reestimate_batchnorm(model, x[:24], batch_size=24)
    np.testing.assert_allclose(model(x[:24], training=False), model(x[:24], training=True),
                               atol=1e-2)
    reestimate_batchnorm(model, x, batch_size=8, max_batches=1)
    np.testing.assert_allclose(bn.moving_mean.numpy(), batches[0].mean(0), rtol=1e-5)
    plain = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    assert reestimate_batchnorm(plain, x) == 0


def test_reestimate_batchnorm_errors():
    from ssl_keras.callbacks import reestimate_batchnorm

    model = _bn_model()
    x = np.ones((4, 5), "float32")
    with pytest.raises(ValueError, match=r"`model` must be a Keras model. Received: model=3"):
        reestimate_batchnorm(3, x)
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1. "
                                         r"Received: batch_size=0"):
        reestimate_batchnorm(model, x, batch_size=0)
    with pytest.raises(ValueError, match=r"`max_batches` must be an integer >= 1. "
                                         r"Received: max_batches=0"):
        reestimate_batchnorm(model, x, max_batches=0)
    with pytest.raises(ValueError, match=r"at least one sample. Received: x with 0 samples"):
        reestimate_batchnorm(model, x[:0])


def _conv_with_weak_border(scale):
    """12x12x2 -> Conv2D(3, 5) whose outer rows / columns are `scale` times the rest."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 2))
    x = keras.layers.Conv2D(3, 5, padding="same", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    kernel = np.random.default_rng(3).normal(size=(5, 5, 2, 3)).astype("float32")
    kernel[[0, 4]] *= scale
    kernel[:, [0, 4]] *= scale
    model.get_layer("conv").kernel.assign(kernel)
    return model


def test_zero_small_groups_zeroes_border_bands_and_thin_crops_the_kernel():
    model = ssl_keras.apply_ssl(_conv_with_weak_border(1e-5), borders=1.0, coupled=False)
    callback = ZeroSmallGroups(threshold=1e-3, every_n_steps=1)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 2)).astype("float32")
    model.fit(x, np.zeros((4, 3), "float32"), verbose=0, callbacks=[callback])
    kernel = model.get_layer("conv").ssl_inner_layer.kernel.numpy()
    assert not kernel[[0, 4]].any() and not kernel[:, [0, 4]].any()
    assert kernel[1:4, 1:4].all()
    thinned = ssl_keras.thin(ssl_keras.strip_ssl(model))
    assert thinned.get_layer("conv").kernel.shape == (3, 3, 2, 3)
    zeroed = ssl_keras.strip_ssl(model)
    np.testing.assert_allclose(thinned(x), zeroed(x), rtol=1e-5, atol=1e-6)


def test_proximal_step_on_border_bands_shrinks_outer_bands_first():
    model = ssl_keras.apply_ssl(_conv_with_weak_border(1.0), borders=0.5, coupled=False)
    kernel = model.get_layer("conv").ssl_inner_layer.kernel
    w = kernel.numpy().astype(np.float64)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.zeros((1, 12, 12, 2), "float32")
    model.fit(x, np.zeros((1, 3), "float32"), verbose=0, callbacks=[ProximalGroupLasso()])
    # Oracle: the factors of every band from the norms before the step, applied band after
    # band (rows 0 and 4, columns 0 and 4, then rows 0-1 and 3-4, ...), as scale() documents.
    want = w.copy()
    bands = ssl_keras.structures.border_bands(w.shape)
    factors = []
    for axis, index in bands:
        norm = np.linalg.norm(np.take(w, index, axis=axis))
        factors.append(max(0.0, 1 - 0.1 * 0.5 / norm))
    for (axis, index), factor in zip(bands, factors, strict=True):
        where = [slice(None)] * 4
        where[axis] = list(index)
        want[tuple(where)] *= factor
    np.testing.assert_allclose(kernel.numpy(), want, rtol=1e-5, atol=1e-7)
    got = kernel.numpy()
    shrink = np.abs(got).sum(axis=(1, 2, 3)) / np.abs(w).sum(axis=(1, 2, 3))
    assert shrink[0] == pytest.approx(shrink[4], rel=0.05)
    assert shrink[0] < shrink[1] < shrink[2] < 1.0
    np.testing.assert_array_equal(got[2, 2], w[2, 2].astype("float32"))  # in no band


def test_interrupted_proximal_fit_switches_the_penalty_gradient_back_on():
    ssl = ssl_keras.apply_ssl(_mlp(), filters=0.1, channels=0.1)

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise KeyboardInterrupt

    ssl.compile(keras.optimizers.SGD(0.01), "mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    with pytest.raises(KeyboardInterrupt):
        ssl.fit(x, y, batch_size=2, verbose=0, callbacks=[ProximalGroupLasso(), Interrupt()])
    owners = [layer for layer in ssl._flatten_layers(include_self=True)
              if hasattr(layer, "ssl_penalty_gradient")]
    assert owners and all(layer.ssl_penalty_gradient for layer in owners)
    assert ssl.train_function is None and not ssl._ssl_proximal_switched
    # The next plain fit follows the penalty's subgradient again: the kernel moves although
    # the data loss has no gradient (inputs and targets zero).
    kernel = ssl.get_layer("d1").ssl_inner_layer.kernel
    before = kernel.numpy().copy()
    ssl.fit(np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"), verbose=0)
    assert not np.allclose(kernel.numpy(), before)


def test_callbacks_count_zero_as_thin_does_at_threshold_zero():
    """A group with norm exactly 0 counts as zero at threshold 0, as thin() removes it."""
    model, _, _ = _mlp_with_unit_1_zero()
    assert ssl_keras.thin(model, threshold=0.0).get_layer("d1").units == 3
    assert ssl_keras.freeze_zero_groups(model, threshold=0.0).frozen_groups >= 1
    monitor = SparsityMonitor(threshold=0.0, verbose=False, per_layer_logs=True)
    model.compile(keras.optimizers.SGD(0.0), "mse")
    history = model.fit(np.ones((2, 3), "float32"), np.zeros((2, 2), "float32"), verbose=0,
                        callbacks=[monitor]).history
    assert history["ssl/d1/channel/zero"] == [1]
    assert history["ssl/d1/filters/zero"] == [1] and history["ssl/d2/channels/zero"] == [1]
    # A Dense kernel's "shapes" are its "channels" (the same rows): listed once.
    assert not [k for k in history if "/shapes/" in k]
    assert monitor.history == {k: v for k, v in history.items() if k.startswith("ssl/")}


# --- reestimate_batchnorm on datasets, generators, dicts; NumPy scalars in the validators ---


def _bn_stats(model, name="bn"):
    bn = model.get_layer(name)
    return bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()


def _two_input_bn_model():
    keras.utils.set_random_seed(11)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    x = keras.layers.Dense(3, name="d")(keras.layers.Concatenate()([a, b]))
    return keras.Model([a, b], keras.layers.BatchNormalization(name="bn")(x))


def test_reestimate_batchnorm_takes_datasets_generators_and_dicts():
    import tensorflow as tf

    from ssl_keras.callbacks import reestimate_batchnorm

    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, size=(10, 5)).astype("float32")
    model = _bn_model()
    kernel, bias = (w.numpy() for w in model.get_layer("d").weights)
    z = x @ kernel + bias
    # Batches of 4, 4, 2 used as they come, weighted by samples: the mean is that of all 10.
    sizes, starts = [4, 4, 2], [0, 4, 8]
    mean = z.mean(0)
    variance = sum(n * z[s:s + n].var(0) for s, n in zip(starts, sizes, strict=True)) / 10
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
    labelled = tf.data.Dataset.from_tensor_slices((x, np.zeros((10, 3), "float32"))).batch(4)
    weighted = tf.data.Dataset.from_tensor_slices(
        (x, np.zeros((10, 3), "float32"), np.ones(10, "float32"))).batch(4)
    for data in (dataset, labelled, weighted, (x[s:s + n] for s, n in zip(starts, sizes,
                                                                       strict=True)),
                 iter([(x[:4],), (x[4:8],), (x[8:],)])):
        model = _bn_model()
        assert reestimate_batchnorm(model, data) == 1
        np.testing.assert_allclose(_bn_stats(model)[0], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_bn_stats(model)[1], variance, rtol=1e-4)
        assert model.get_layer("bn").momentum == 0.99
    # max_batches: the first batch only; a dataset repeating forever needs it.
    model = _bn_model()
    assert reestimate_batchnorm(model, dataset.repeat(), max_batches=1) == 1
    np.testing.assert_allclose(_bn_stats(model)[0], z[:4].mean(0), rtol=1e-5, atol=1e-6)
    drawn = []

    def generator():
        for k in range(100):
            drawn.append(k)
            yield x[:4]

    reestimate_batchnorm(_bn_model(), generator(), max_batches=np.int64(2))
    assert drawn == [0, 1]  # no batch drawn beyond max_batches

    # Two inputs: a list of arrays, a dict by input name, a dataset of ({...}, y) all agree.
    xa = rng.normal(size=(8, 3)).astype("float32")
    xb = rng.normal(size=(8, 2)).astype("float32")
    results = []
    for data, kwargs in (([xa, xb], {"batch_size": 4}), ((xa, xb), {"batch_size": 4}),
                         ({"a": xa, "b": xb}, {"batch_size": 4}),
                         (tf.data.Dataset.from_tensor_slices(
                             ({"a": xa, "b": xb}, np.zeros(8))).batch(4), {}),
                         (tf.data.Dataset.from_tensor_slices(((xa, xb),)).batch(4), {})):
        model = _two_input_bn_model()
        assert reestimate_batchnorm(model, data, **kwargs) == 1
        results.append(_bn_stats(model))
    k2, b2 = (w.numpy() for w in model.get_layer("d").weights)
    z2 = (np.concatenate([xa, xb], axis=1) @ k2 + b2).reshape(2, 4, 3)
    for got in results:
        np.testing.assert_allclose(got[0], z2.mean(1).mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], z2.var(1).mean(0), rtol=1e-4)


def test_reestimate_batchnorm_refuses_bad_data_and_keeps_the_statistics():
    import tensorflow as tf

    from ssl_keras.callbacks import reestimate_batchnorm

    model = _bn_model()
    x = np.random.default_rng(1).normal(size=(12, 5)).astype("float32")
    reestimate_batchnorm(model, x, batch_size=4)
    before = _bn_stats(model)

    def unchanged():
        for a, b in zip(before, _bn_stats(model), strict=True):
            np.testing.assert_array_equal(a, b)
        assert model.get_layer("bn").momentum == 0.99

    nan = x.copy()
    nan[9, 2] = np.nan
    kept = nan.copy()
    with pytest.raises(ValueError, match=r"`x` must hold finite values only.*NaN or inf"):
        reestimate_batchnorm(model, nan, batch_size=4)
    np.testing.assert_array_equal(nan, kept)  # the input is not modified
    unchanged()
    reestimate_batchnorm(model, nan, batch_size=4, max_batches=2)  # the NaN is not used
    model = _bn_model()
    reestimate_batchnorm(model, x, batch_size=4)
    before = _bn_stats(model)
    # A NaN in the fourth batch of a generator: the first three batches were already run.
    with pytest.raises(ValueError, match=r"`x` \(batch 3\) must hold finite values only"):
        reestimate_batchnorm(model, (nan[k:k + 3] for k in range(0, 12, 3)))
    unchanged()
    inf = tf.data.Dataset.from_tensor_slices(np.where(np.isnan(nan), np.inf, nan)).batch(4)
    with pytest.raises(ValueError, match=r"`x` \(batch 2\) must hold finite values only"):
        reestimate_batchnorm(model, inf)
    unchanged()
    # An error in the model on a later batch (wrong feature size) also restores them.
    with pytest.raises(ValueError):
        reestimate_batchnorm(model, iter([x[:4], x[4:8], np.ones((4, 7), "float32")]))
    unchanged()

    nested = x.tolist()
    with pytest.raises(TypeError, match=r"`x` is a list: a list or tuple must hold one array "
                                        r"per model input.*np.asarray.*of type list"):
        reestimate_batchnorm(model, nested)
    with pytest.raises(TypeError, match=r"`x` must be a NumPy array.*tf.data.Dataset.*"
                                        r"Received: x=None \(of type NoneType\)"):
        reestimate_batchnorm(model, None)
    with pytest.raises(TypeError, match=r"`x` must be a NumPy array.*Received: x='abc'"):
        reestimate_batchnorm(model, "abc")
    with pytest.raises(ValueError, match=r"takes 1 input\(s\), but `x` holds 2 array\(s\)"):
        reestimate_batchnorm(model, [x, x])
    with pytest.raises(ValueError, match=r"takes 1 input\(s\), but `x` \(batch 0\) holds 2.*"
                                         r"\(x, y\)"):
        reestimate_batchnorm(model, iter([((x, x), x)]))
    with pytest.raises(ValueError, match=r"must be x, \(x,\), \(x, y\) or \(x, y, sample_"
                                         r"weight\). Received: a tuple of 4 elements"):
        reestimate_batchnorm(model, iter([(x, x, x, x)]))
    with pytest.raises(ValueError, match=r"batch dimension.*shape \(\)"):
        reestimate_batchnorm(model, np.float32(1.0))
    with pytest.raises(ValueError, match=r"yields batches forever.*max_batches=None"):
        reestimate_batchnorm(model, tf.data.Dataset.from_tensor_slices(x).batch(4).repeat())
    with pytest.raises(ValueError, match=r"at least one batch with samples"):
        reestimate_batchnorm(model, iter([]))
    two = _two_input_bn_model()
    with pytest.raises(ValueError, match=r"same number of samples. Received: `x\['a'\]` with "
                                         r"4, `x\['b'\]` with 3"):
        reestimate_batchnorm(two, {"a": np.ones((4, 3)), "b": np.ones((3, 2))})
    with pytest.raises(ValueError, match=r"Missing data for input \"b\""):  # Keras's check
        reestimate_batchnorm(two, {"a": np.ones((4, 3)), "c": np.ones((4, 2))})
    unchanged()
    # Finite data but a model that makes non-finite statistics: refused, the old ones kept.
    broken = _bn_model()
    kernel = broken.get_layer("d").kernel.numpy()
    kernel[0, 0] = np.inf
    broken.get_layer("d").kernel.assign(kernel)
    with pytest.raises(ValueError, match=r"statistics of BatchNorm layer 'bn' are not finite"):
        reestimate_batchnorm(broken, x, batch_size=4)
    np.testing.assert_array_equal(broken.get_layer("bn").moving_mean.numpy(), np.zeros(3))


def test_validators_take_numpy_scalars_and_still_refuse_bools_and_strings():
    from ssl_keras.callbacks import reestimate_batchnorm

    model = _mlp()
    assert SparsityMonitor(threshold=np.float32(1e-4)).threshold == pytest.approx(1e-4)
    assert type(SparsityMonitor(threshold=np.int64(0)).threshold) is float
    zero = ZeroSmallGroups(np.float32(0.5), every_n_steps=np.int64(2))
    assert type(zero.threshold) is float and type(zero.every_n_steps) is int
    assert zero.every_n_steps == 2
    assert ProximalGroupLasso(coefficient=np.float32(0.25)).coefficient == 0.25
    assert freeze_zero_groups(model, threshold=np.float32(0.1)).threshold == pytest.approx(0.1)
    bn = _bn_model()
    x = np.ones((8, 5), "float32")
    assert reestimate_batchnorm(bn, x, batch_size=np.int64(4), max_batches=np.int32(1)) == 1
    reg = ssl_keras.GroupLasso(filters=np.float32(0.5), in_axis=np.int64(0),
                               out_axis=np.int32(1))
    assert (reg.in_axis, reg.out_axis) == (0, 1) and type(reg.in_axis) is int
    json.dumps(reg.get_config())
    for bad in (True, np.bool_(True), "0.1", np.float32(np.nan), np.float32(-1.0)):
        with pytest.raises(ValueError, match=r"`threshold` must be a non-negative finite"):
            SparsityMonitor(threshold=bad)
        with pytest.raises(ValueError, match=r"`coefficient` must be a non-negative finite"):
            ProximalGroupLasso(coefficient=bad)
    for bad in (True, "2", np.float64(2.0), np.int64(0)):
        with pytest.raises(ValueError, match=r"`every_n_steps` must be an integer >= 1"):
            ZeroSmallGroups(every_n_steps=bad)
        with pytest.raises(ValueError, match=r"`batch_size` must be an integer >= 1"):
            reestimate_batchnorm(bn, x, batch_size=bad)
    for bad in (True, np.bool_(False), "0", np.float64(0.0)):
        with pytest.raises(ValueError, match=r"`in_axis` must be an integer\. Received"):
            ssl_keras.GroupLasso(in_axis=bad)


def _lr_read_back(optimizer, steps_per_execution=1, policy=None, samples=4):
    """The learning rate of each proximal step, read back from the norm shrinkage of a Dense
    kernel group on zero inputs (the data gradient is 0, so only the shrinkage moves it)."""
    keras.utils.set_random_seed(0)
    lam = 0.1
    inp = keras.Input((4,))
    out = keras.layers.Dense(3, kernel_regularizer=ssl_keras.GroupLasso(filters=lam), name="d",
                             dtype=policy)(inp)
    model = keras.Model(inp, out)
    model.compile(optimizer, "mse", steps_per_execution=steps_per_execution)
    kernel = model.get_layer("d").kernel
    norms = []

    class Record(keras.callbacks.Callback):  # listed after ProximalGroupLasso
        def on_train_begin(self, logs=None):
            norms.append(float(np.linalg.norm(np.asarray(kernel.numpy(), np.float64)[:, 0])))

        def on_train_batch_end(self, batch, logs=None):
            norms.append(float(np.linalg.norm(np.asarray(kernel.numpy(), np.float64)[:, 0])))

    model.fit(np.zeros((samples, 4), "float32"), np.ones((samples, 3), "float32"),
              batch_size=1, verbose=0, shuffle=False,
              callbacks=[ProximalGroupLasso(), Record()])
    steps = np.diff(norms) / -lam
    return [round(float(s), 5) for s in steps if s != 0]


def test_proximal_learning_rate_under_loss_scaling_and_gradient_accumulation():
    """Was: mixed_float16 (LossScaleOptimizer) used the schedule one step late; gradient
    accumulation evaluated it at the update count, not at the micro-step Keras uses (up to
    16x too strong)."""
    def schedule():
        return keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)  # 0.1 * 0.5**step

    assert _lr_read_back(keras.optimizers.SGD(schedule())) == [0.1, 0.05, 0.025, 0.0125]
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(schedule()))
    assert _lr_read_back(scaled, policy="mixed_float16") == [0.1, 0.05, 0.025, 0.0125]
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(schedule()))
    with pytest.warns(UserWarning, match="runs 2 steps per execution"):
        steps = _lr_read_back(scaled, steps_per_execution=2, policy="mixed_float16")
    assert steps == [0.15, 0.0375]
    # updates at micro-steps 1, 3, 5, 7: 0.1 * 0.5 ** (2k + 1)
    accumulating = keras.optimizers.SGD(schedule(), gradient_accumulation_steps=2)
    assert _lr_read_back(accumulating, samples=8) == [0.05, 0.0125, 0.00313, 0.00078]


@pytest.mark.parametrize("coupled", [False, True])
def test_proximal_and_zeroing_leave_frozen_layers_alone(coupled):
    """Was: ProximalGroupLasso / ZeroSmallGroups shrank the kernels and BatchNorm gammas of
    layers with trainable=False (an apply_ssl model's wrappers and coupled groups)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.Flatten()(keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x))
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    ssl = ssl_keras.apply_ssl(model, filters=0.05, channels=0.05, coupled=coupled)
    ssl.get_layer("conv1").trainable = False
    ssl.get_layer("bn1").trainable = False
    ssl.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    conv1 = ssl.get_layer("conv1")
    conv1 = getattr(conv1, "ssl_inner_layer", conv1)
    frozen = [conv1.kernel, ssl.get_layer("bn1").gamma]
    before = [np.array(v.numpy()) for v in frozen]
    conv2 = ssl.get_layer("conv2")
    conv2_before = np.array(getattr(conv2, "ssl_inner_layer", conv2).kernel.numpy())
    rng = np.random.default_rng(0)
    ssl.fit(rng.normal(size=(16, 8, 8, 3)), rng.integers(0, 3, 16), batch_size=8, verbose=0,
            callbacks=[ProximalGroupLasso(), ZeroSmallGroups(threshold=10.0, every_n_steps=1)])
    for v, b in zip(frozen, before, strict=True):
        np.testing.assert_array_equal(np.asarray(v.numpy()), b)
    # the trainable layers' groups were zeroed (threshold 10 is above every norm)
    assert not np.any(getattr(conv2, "ssl_inner_layer", conv2).kernel.numpy())
    assert np.any(conv2_before)


def test_a_frozen_layers_hand_placed_group_lasso_stays_in_the_groups():
    """Was: hand_placed_weights read trainable weights only, so a frozen layer's GroupLasso
    vanished from SparsityMonitor's table, and with no other GroupLasso the monitor fell
    back to the whole-model analysis and ProximalGroupLasso said the model carries none."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1",
                            kernel_regularizer=ssl_keras.GroupLasso(filters=1e-3))(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(keras.layers.Flatten()(x)))
    kernel = model.get_layer("c1").kernel
    kernel.assign(np.concatenate([np.zeros((3, 3, 3, 1)), kernel.numpy()[..., 1:]], -1))
    model.get_layer("c1").trainable = False
    model.compile(keras.optimizers.SGD(0.01), "mse")
    before = np.array(kernel.numpy())
    monitor = SparsityMonitor(1e-4, verbose=False)
    data = np.random.default_rng(0).random((4, 8, 8, 3)), np.zeros((4, 2))
    model.fit(*data, verbose=0, callbacks=[monitor, ProximalGroupLasso()])
    assert "c1/filters             4        1" in monitor.table
    assert "out/" not in monitor.table  # not the whole-model fallback
    np.testing.assert_array_equal(kernel.numpy(), before)  # frozen: left as it is
