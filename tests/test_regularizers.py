"""GroupLasso and group_norms against NumPy oracles written with explicit loops."""

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import ssl_keras
from ssl_keras import GroupLasso, Structure, group_norms

SHAPES = {
    "dense": (6, 4),
    "conv1d": (3, 4, 5),
    "conv2d": (3, 3, 4, 5),
    "conv2d_5x3": (5, 3, 4, 5),
    "conv3d": (2, 2, 2, 3, 4),
    "depthwise": (3, 3, 4, 2),
}
EPS = 1e-8


def _norm(values, eps=EPS):
    return math.sqrt(sum(float(v) ** 2 for v in values) + eps)


def oracle(w, filters=0.0, channels=0.0, shapes=0.0, depth=0.0, borders=0.0, normalize=False,
           eps=EPS):
    """Explicit loops over the groups of a kernel in Keras layout (spatial..., c_in, n_out)."""
    *axes, c_in, n_out = w.shape
    positions = list(itertools.product(*[range(s) for s in axes]))
    f = sum(_norm([w[p + (c, n)] for p in positions for c in range(c_in)], eps)
            for n in range(n_out))
    c_ = sum(_norm([w[p + (c, n)] for p in positions for n in range(n_out)], eps)
             for c in range(c_in))
    s = sum(_norm([w[p + (c, n)] for n in range(n_out)], eps)
            for p in positions for c in range(c_in))
    d = _norm(w.ravel(), eps)
    # borders: for every spatial axis a of length k and depth d in 1..(k-1)//2, the weights
    # whose position has p[a] < d or p[a] >= k - d.
    r = 0.0
    for a, length in enumerate(axes):
        for band in range(1, (length - 1) // 2 + 1):
            group = [w[p + (c, n)] for p in positions if not band <= p[a] < length - band
                     for c in range(c_in) for n in range(n_out)]
            r += _norm(group, eps) * (math.sqrt(len(group)) if normalize else 1.0)
    if normalize:
        f *= math.sqrt(len(positions) * c_in)
        c_ *= math.sqrt(len(positions) * n_out)
        s *= math.sqrt(n_out)
        d *= math.sqrt(w.size)
    return filters * f + channels * c_ + shapes * s + depth * d + borders * r


def _kernel(shape, seed=0, zero_filters=(), zero_channels=()):
    w = np.random.default_rng(seed).normal(size=shape).astype("float32")
    for n in zero_filters:
        w[..., n] = 0.0
    for c in zero_channels:
        w[..., c, :] = 0.0
    return w


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(
    "coefficients",
    [dict(filters=1.0), dict(channels=1.0), dict(shapes=1.0), dict(depth=1.0),
     dict(borders=1.0), dict(filters=0.3, channels=0.2, shapes=0.1, depth=0.05, borders=0.4)],
)
def test_loss_matches_oracle(kind, normalize, coefficients):
    w = _kernel(SHAPES[kind], seed=len(kind), zero_filters=(0,), zero_channels=(1,))
    got = float(GroupLasso(normalize=normalize, **coefficients)(keras.ops.convert_to_tensor(w)))
    want = oracle(w.astype(np.float64), normalize=normalize, **coefficients)
    assert got == pytest.approx(want, rel=1e-5)


def test_shapes_equal_channels_for_dense():
    w = keras.ops.convert_to_tensor(_kernel((7, 3)))
    assert float(GroupLasso(shapes=1.0)(w)) == pytest.approx(float(GroupLasso(channels=1.0)(w)))


def test_transposed_layout_declared_with_axes():
    # Conv2DTranspose kernel (kh, kw, n_out, c_in): filters are axis -2, channels axis -1.
    w = _kernel((3, 3, 5, 4))
    as_keras_layout = np.swapaxes(w, -1, -2)
    reg = GroupLasso(filters=0.7, channels=0.3, shapes=0.2, in_axis=-1, out_axis=-2)
    got = float(reg(keras.ops.convert_to_tensor(w)))
    want = oracle(as_keras_layout.astype(np.float64), filters=0.7, channels=0.3, shapes=0.2)
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("structure", list(Structure))
def test_group_norms_oracle(kind, structure):
    w = _kernel(SHAPES[kind], seed=3, zero_filters=(1,))
    got = group_norms(w, structure)
    *spatial, c_in, n_out = w.shape
    positions = list(itertools.product(*[range(s) for s in spatial]))
    if structure is Structure.FILTERS:
        want = [_norm([w[p + (c, n)] for p in positions for c in range(c_in)], 0)
                for n in range(n_out)]
    elif structure is Structure.CHANNELS:
        want = [_norm([w[p + (c, n)] for p in positions for n in range(n_out)], 0)
                for c in range(c_in)]
    elif structure is Structure.SHAPES:
        want = np.array([_norm([w[p + (c, n)] for n in range(n_out)], 0)
                         for p in positions for c in range(c_in)]).reshape(w.shape[:-1])
    elif structure is Structure.BORDERS:  # depth 1 of every axis, then depth 2, ...
        depth_first = sorted((d, a) for a, k in enumerate(spatial)
                             for d in range(1, (k - 1) // 2 + 1))
        want = [_norm([w[p + (c, n)] for p in positions if not d <= p[a] < spatial[a] - d
                       for c in range(c_in) for n in range(n_out)], 0)
                for d, a in depth_first]
    else:
        want = _norm(w.ravel(), 0)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5)
    if structure is Structure.FILTERS:
        assert got[1] == 0.0  # an all-zero group has norm exactly 0 (no epsilon)


def test_borders_of_a_dense_kernel_are_empty():
    w = _kernel((6, 4))
    assert float(GroupLasso(borders=1.0)(keras.ops.convert_to_tensor(w))) == 0.0
    assert group_norms(w, "borders").shape == (0,)


def test_border_bands_are_symmetric_nested_and_depth_first():
    from ssl_keras.structures import border_bands, border_sizes, reduction_axes

    assert border_bands((5, 3, 2, 4)) == [(0, (0, 4)), (1, (0, 2)), (0, (0, 1, 3, 4))]
    np.testing.assert_array_equal(border_sizes((5, 3, 2, 4)), [48, 80, 96])
    # Conv2DTranspose layout (kh, kw, n_out, c_in): the spatial axes are still 0 and 1.
    assert border_bands((4, 3, 4, 2), in_axis=-1, out_axis=-2) == [(0, (0, 3)), (1, (0, 2))]
    assert border_bands((2, 1, 4, 2)) == []  # no kernel of 1 or 2 has a border to crop
    with pytest.raises(ValueError, match=r"bands of rows / columns.*border_bands"):
        reduction_axes("borders", 4)


def test_outer_rows_shrink_first_under_the_borders_gradient():
    # Every row the same norm: the gradient of the nested bands is largest on the outer rows.
    w = keras.Variable(np.ones((5, 5, 2, 3), "float32"))
    with tf.GradientTape() as tape:
        loss = GroupLasso(borders=1.0)(w)
    grad = tape.gradient(loss, w).numpy()
    per_row = np.abs(grad).sum(axis=(1, 2, 3))
    assert per_row[0] == pytest.approx(per_row[4]) and per_row[1] == pytest.approx(per_row[3])
    assert per_row[0] > per_row[1] > per_row[2]


def test_group_norms_accepts_strings_and_variables():
    v = keras.Variable(_kernel((3, 3, 2, 4)))
    np.testing.assert_allclose(group_norms(v, "filters"), group_norms(v, Structure.FILTERS))
    with pytest.raises(ValueError, match=r"Unknown structure.*Received: structure='rows'"):
        group_norms(v, "rows")


def test_gradients_finite_at_all_zero_kernel():
    w = tf.Variable(tf.zeros((3, 3, 2, 4)))
    reg = GroupLasso(filters=1.0, channels=1.0, shapes=1.0, depth=1.0)
    with tf.GradientTape() as tape:
        loss = reg(w)
    grad = tape.gradient(loss, w).numpy()
    assert np.all(np.isfinite(grad))
    assert np.all(grad == 0.0)
    assert np.isfinite(float(loss))


def test_gradient_is_group_subgradient():
    # d/dw ||w_g|| = w / ||w_g|| for the filter groups.
    w_np = _kernel((2, 2, 3, 4), seed=5)
    w = tf.Variable(w_np)
    with tf.GradientTape() as tape:
        loss = GroupLasso(filters=1.0, epsilon=1e-12)(w)
    grad = tape.gradient(loss, w).numpy()
    norms = np.sqrt((w_np ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(grad, w_np / norms, rtol=1e-4)


def test_regulariser_in_a_layer_adds_the_loss():
    reg = GroupLasso(filters=1e-2, channels=2e-2)
    layer = keras.layers.Conv2D(5, 3, kernel_regularizer=reg)
    layer.build((None, 8, 8, 4))
    (loss,) = layer.losses
    want = oracle(np.asarray(layer.kernel.numpy(), np.float64), filters=1e-2, channels=2e-2)
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_config_round_trip_with_non_default_values():
    reg = GroupLasso(filters=0.1, channels=0.2, shapes=0.3, depth=0.4, borders=0.5,
                     normalize=True, epsilon=1e-6, in_axis=-1, out_axis=-2)
    config = reg.get_config()
    assert config == {"filters": 0.1, "channels": 0.2, "shapes": 0.3, "borders": 0.5,
                      "depth": 0.4, "normalize": True, "epsilon": 1e-6, "in_axis": -1,
                      "out_axis": -2}
    assert GroupLasso.from_config(config).get_config() == config
    # Through Keras' own (de)serialisation, as .keras files store it.
    restored = keras.regularizers.deserialize(json.loads(json.dumps(
        keras.regularizers.serialize(reg))))
    assert isinstance(restored, GroupLasso)
    assert restored.get_config() == config
    assert "GroupLasso(filters=0.1" in repr(reg)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(filters=-1.0), r"`filters` must be a non-negative finite float\. "
                             r"Received: filters=-1\.0"),
        (dict(channels=float("nan")), r"`channels` .*Received: channels=nan"),
        (dict(shapes=float("inf")), r"`shapes` .*Received: shapes=inf"),
        (dict(depth="a lot"), r"`depth` .*Received: depth='a lot'"),
        (dict(filters="0.5"), r"`filters` must be a non-negative finite float\. "
                              r"Received: filters='0\.5' \(of type str\)"),
        (dict(channels=b"1"), r"`channels` .*Received: channels=b'1' \(of type bytes\)"),
        (dict(filters=True), r"`filters` must be a non-negative finite float\. "
                             r"Received: filters=True"),
        (dict(borders=-0.1), r"`borders` .*Received: borders=-0\.1"),
        (dict(epsilon=0.0), r"`epsilon` must be a finite float > 0\. Received: epsilon=0\.0"),
        (dict(epsilon=-1e-8), r"Received: epsilon=-1e-08"),
        (dict(epsilon=True), r"`epsilon` must be a finite float > 0\. Received: epsilon=True"),
        (dict(normalize="yes"), r"`normalize` must be a bool\. Received: normalize='yes'"),
        (dict(in_axis=-1, out_axis=-1), r"must name different axes.*in_axis=-1, out_axis=-1"),
        (dict(in_axis=1.5), r"`in_axis` must be an integer\. Received: in_axis=1\.5"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupLasso(**kwargs)


def test_numpy_scalars_are_accepted_as_floats():
    reg = GroupLasso(filters=np.float32(0.5), channels=np.int64(2), epsilon=np.float64(1e-6))
    assert (reg.filters, reg.channels, reg.epsilon) == (0.5, 2.0, 1e-6)
    assert all(type(v) is float for v in (reg.filters, reg.channels, reg.epsilon))


def test_rank_below_two_raises_when_called():
    with pytest.raises(ValueError, match=r"rank >= 2.*Received: a tensor of rank 1"):
        GroupLasso(filters=1.0)(keras.ops.ones((4,)))


def test_axis_out_of_range_raises_when_called():
    with pytest.raises(ValueError, match=r"`in_axis` is out of range.*Received: in_axis=-3"):
        GroupLasso(filters=1.0, in_axis=-3)(keras.ops.ones((4, 4)))


def test_mixed_float16_policy():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = keras.layers.Conv2D(4, 3, kernel_regularizer=GroupLasso(filters=1e-2))
        layer.build((None, 6, 6, 2))
        (loss,) = layer.losses
        assert layer.kernel.dtype == "float32"
        want = oracle(np.asarray(layer.kernel.numpy(), np.float64), filters=1e-2)
        assert float(loss) == pytest.approx(want, rel=1e-5)
        # A float16 tensor is summed in float32: tiny groups do not underflow to 0.
        half = keras.ops.cast(keras.ops.full((2, 2, 2, 2), 1e-4), "float16")
        assert float(GroupLasso(filters=1.0, epsilon=1e-12)(half)) == pytest.approx(
            2 * math.sqrt(8 * 1e-8), rel=1e-2)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_public_api():
    assert set(ssl_keras.__all__) >= {"GroupLasso", "Structure", "group_norms"}
    for name in ssl_keras.__all__:
        assert hasattr(ssl_keras, name), name


def _run(code, tmp_path, env=None):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path, **(env or {}))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=full_env, cwd=os.getcwd(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_keras_file_round_trip_in_a_fresh_process(tmp_path):
    path = tmp_path / "m.keras"
    x = np.random.default_rng(0).normal(size=(3, 10, 10, 2)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    reg = GroupLasso(filters=1e-2, channels=2e-3, shapes=1e-3, depth=1e-3, normalize=True,
                     epsilon=1e-7)
    model = keras.Sequential([
        keras.Input((10, 10, 2)),
        keras.layers.Conv2D(4, 3, kernel_regularizer=reg),
        keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_regularizer=GroupLasso(filters=1e-2, channels=1e-2)),
    ])
    model.save(path)
    np.save(tmp_path / "want.npy", model.predict(x, verbose=0))
    want_loss = float(sum(float(v) for v in model.losses))
    out = _run(f"""
        import numpy as np, keras
        import ssl_keras
        m = keras.models.load_model({str(path)!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.testing.assert_allclose(m.predict(x, verbose=0),
                                   np.load({str(tmp_path / 'want.npy')!r}), atol=1e-6)
        reg = m.layers[0].kernel.regularizer
        assert type(reg).__name__ == "GroupLasso", type(reg)
        print(repr(reg.get_config()))
        print(sum(float(v) for v in m.losses))
    """, tmp_path)
    config_line, loss_line = out.strip().splitlines()[-2:]
    assert "'normalize': True" in config_line and "'epsilon': 1e-07" in config_line
    assert float(loss_line) == pytest.approx(want_loss, rel=1e-6)


def test_same_values_on_jax_backend(tmp_path):
    pytest.importorskip("jax")
    shapes = {k: list(v) for k, v in SHAPES.items()}
    code = f"""
        import numpy as np, keras
        from ssl_keras import GroupLasso
        assert keras.backend.backend() == "{{backend}}"
        out = []
        for i, shape in enumerate({shapes!r}.values()):
            w = np.random.default_rng(i).normal(size=shape).astype("float32")
            w[..., 0] = 0
            reg = GroupLasso(filters=0.3, channels=0.2, shapes=0.1, depth=0.05, normalize=True)
            out.append(float(reg(keras.ops.convert_to_tensor(w))))
        print(repr(out))
    """
    values = {}
    for backend in ("tensorflow", "jax"):
        stdout = _run(code.replace("{backend}", backend), tmp_path, {"KERAS_BACKEND": backend})
        values[backend] = eval(stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(values["jax"], values["tensorflow"], rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: group_norms(keras.layers.Dense(3, name="d"), "filters"),
     r"`kernel` must be a weight array .* not a layer\. Received: kernel='d' of type Dense"),
    (lambda: group_norms(np.ones((3, 3)), "filters", in_axis=None),
     r"`in_axis` must be an integer\. Received: in_axis=None"),
    (lambda: GroupLasso(filters=1.0)([[1.0, 2.0], [3.0, 4.0]]),
     r"GroupLasso is called on a weight tensor \(a kernel\)\. Received: x of type list"),
    (lambda: GroupLasso(filters=1.0)(np.ones((2, 2), "int32")),
     r"GroupLasso needs a floating-point kernel\. Received: a kernel of dtype int32"),
])
def test_wrong_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_group_norms_takes_a_nested_list():
    np.testing.assert_allclose(group_norms([[1.0, 2.0], [3.0, 4.0]], "filters"),
                               [np.sqrt(10.0), np.sqrt(20.0)], rtol=1e-6)
