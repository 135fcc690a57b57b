"""MAC and parameter counts of tflite_bench.model_info, on hand-built flatbuffers (exact
expected counts written out per operator) and on real converted Keras models (NumPy oracle
from the Keras layer shapes)."""

import math
import os

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb

from tests.bench_helpers import OPS, T, build_tflite, fc_model
from tflite_bench import count_macs, count_params, model_info


def _const(shape, dtype=np.float32):
    return np.ones(shape, dtype)


def test_conv2d_grouped_counts_filter_depth(tmp_path):
    # input (1, 9, 9, 6), 2 groups -> filter (8, 3, 3, 3), output (1, 7, 7, 8)
    opts = fb.Conv2DOptionsT()
    p = build_tflite(
        tmp_path / "c.tflite",
        [((1, 9, 9, 6), T.FLOAT32), ((8, 3, 3, 3), T.FLOAT32, _const((8, 3, 3, 3))),
         ((8,), T.FLOAT32, _const(8)), ((1, 7, 7, 8), T.FLOAT32)],
        [(OPS.CONV_2D, [0, 1, 2], [3], fb.BuiltinOptions.Conv2DOptions, opts)], [0], [3])
    assert count_macs(p) == 7 * 7 * 8 * (3 * 3 * 3)
    assert count_params(p) == 8 * 27 + 8


def test_depthwise_conv(tmp_path):
    # input (2, 8, 8, 4), multiplier 2, stride 2, 'same' -> output (2, 4, 4, 8)
    p = build_tflite(
        tmp_path / "d.tflite",
        [((2, 8, 8, 4), T.FLOAT32), ((1, 3, 3, 8), T.FLOAT32, _const((1, 3, 3, 8))),
         ((8,), T.FLOAT32, _const(8)), ((2, 4, 4, 8), T.FLOAT32)],
        [(OPS.DEPTHWISE_CONV_2D, [0, 1, 2], [3], fb.BuiltinOptions.DepthwiseConv2DOptions,
          fb.DepthwiseConv2DOptionsT())], [0], [3])
    assert count_macs(p) == 2 * 4 * 4 * 8 * 9
    assert count_params(p) == 72 + 8


def test_fully_connected_keep_num_dims_and_missing_bias(tmp_path):
    # input (2, 5, 6) with keep_num_dims -> output (2, 5, 3); no bias (input -1)
    p = build_tflite(
        tmp_path / "f.tflite",
        [((2, 5, 6), T.FLOAT32), ((3, 6), T.FLOAT32, _const((3, 6))), ((2, 5, 3), T.FLOAT32)],
        [(OPS.FULLY_CONNECTED, [0, 1, -1], [2], fb.BuiltinOptions.FullyConnectedOptions,
          fb.FullyConnectedOptionsT())], [0], [2])
    assert count_macs(p) == 2 * 5 * 3 * 6
    assert count_params(p) == 18


def test_transpose_conv_counts_input_side(tmp_path):
    # input (1, 4, 4, 5), filter (6, 3, 3, 5), stride 2 -> output (1, 9, 9, 6)
    p = build_tflite(
        tmp_path / "t.tflite",
        [((4,), T.INT32, np.array([1, 9, 9, 6], np.int32)),
         ((6, 3, 3, 5), T.FLOAT32, _const((6, 3, 3, 5))), ((1, 4, 4, 5), T.FLOAT32),
         ((6,), T.FLOAT32, _const(6)), ((1, 9, 9, 6), T.FLOAT32)],
        [(OPS.TRANSPOSE_CONV, [0, 1, 2, 3], [4], fb.BuiltinOptions.TransposeConvOptions,
          fb.TransposeConvOptionsT())], [2], [4])
    assert count_macs(p) == 1 * 4 * 4 * 5 * (3 * 3 * 6)
    # the int32 output-shape constant is not a parameter
    assert count_params(p) == 6 * 45 + 6


@pytest.mark.parametrize("adj_x", [False, True])
def test_batch_matmul_adj_x(tmp_path, adj_x):
    # a (3, M=4, K=7) (or (3, 7, 4) with adj_x), b (3, 7, N=2) -> out (3, 4, 2)
    a_shape = (3, 7, 4) if adj_x else (3, 4, 7)
    opts = fb.BatchMatMulOptionsT()
    opts.adjX = adj_x
    p = build_tflite(
        tmp_path / "b.tflite",
        [(a_shape, T.FLOAT32), ((3, 7, 2), T.FLOAT32), ((3, 4, 2), T.FLOAT32)],
        [(OPS.BATCH_MATMUL, [0, 1], [2], fb.BuiltinOptions.BatchMatMulOptions, opts)],
        [0, 1], [2])
    assert count_macs(p) == 3 * 4 * 2 * 7
    assert count_params(p) == 0


def test_conv3d_and_transpose(tmp_path):
    # conv3d: input (1, 5, 6, 6, 2), filter (3, 3, 3, 2, 4) -> (1, 3, 4, 4, 4)
    # conv3d_transpose: input (1, 3, 4, 4, 4), filter (2, 2, 2, 3, 4) (KD, KH, KW, OC, IC)
    p = build_tflite(
        tmp_path / "c3.tflite",
        [((1, 5, 6, 6, 2), T.FLOAT32), ((3, 3, 3, 2, 4), T.FLOAT32, _const((3, 3, 3, 2, 4))),
         ((4,), T.FLOAT32, _const(4)), ((1, 3, 4, 4, 4), T.FLOAT32),
         ((5,), T.INT32, np.array([1, 6, 8, 8, 3], np.int32)),
         ((2, 2, 2, 3, 4), T.FLOAT32, _const((2, 2, 2, 3, 4))), ((1, 6, 8, 8, 3), T.FLOAT32)],
        [(OPS.CONV_3D, [0, 1, 2], [3], fb.BuiltinOptions.Conv3DOptions, fb.Conv3DOptionsT()),
         (OPS.CONV_3D_TRANSPOSE, [4, 5, 3, -1], [6], fb.BuiltinOptions.Conv3DOptions,
          fb.Conv3DOptionsT())], [0], [6])
    info = model_info(p)
    assert info["macs_by_op"] == {"CONV_3D": 3 * 4 * 4 * 4 * (27 * 2),
                                  "CONV_3D_TRANSPOSE": 3 * 4 * 4 * 4 * (8 * 3)}
    assert info["macs"] == sum(info["macs_by_op"].values())
    assert info["params"] == 216 + 4 + 96
    assert info["ops"] == {"CONV_3D": 1, "CONV_3D_TRANSPOSE": 1}


def test_int8_bias_counts_and_shared_buffer_once(tmp_path):
    # two FCs share one int8 weight tensor; int32 biases are parameters
    w = np.ones((4, 4), np.int8)
    bias = np.zeros(4, np.int32)
    opts = fb.FullyConnectedOptionsT()
    p = build_tflite(
        tmp_path / "q.tflite",
        [((1, 4), T.INT8), ((4, 4), T.INT8, w), ((4,), T.INT32, bias), ((1, 4), T.INT8),
         ((1, 4), T.INT8)],
        [(OPS.FULLY_CONNECTED, [0, 1, 2], [3], fb.BuiltinOptions.FullyConnectedOptions, opts),
         (OPS.FULLY_CONNECTED, [3, 1, 2], [4], fb.BuiltinOptions.FullyConnectedOptions, opts)],
        [0], [4])
    info = model_info(p)
    assert info["macs"] == 2 * 16
    assert info["params"] == 16 + 4
    assert info["inputs"] == [{"shape": [1, 4], "dtype": "int8"}]


def test_uncounted_ops_add_no_macs(tmp_path):
    p = build_tflite(
        tmp_path / "a.tflite",
        [((1, 3), T.FLOAT32), ((1, 3), T.FLOAT32), ((1, 3), T.FLOAT32)],
        [(OPS.ADD, [0, 1], [2], fb.BuiltinOptions.AddOptions, fb.AddOptionsT())], [0, 1], [2])
    info = model_info(p)
    assert info["macs"] == 0 and info["ops"] == {"ADD": 1}
    assert info["size_bytes"] == os.path.getsize(p)


def test_sparse_encoded_weights_count_the_values_stored(tmp_path):
    # EXPERIMENTAL_SPARSITY files store only the non-zero values: 5 of a (3, 6) kernel. The
    # dense shape was counted (the tfmot 90% file showed the dense model's parameters).
    p = build_tflite(
        tmp_path / "s.tflite",
        [((1, 6), T.FLOAT32), ((3, 6), T.FLOAT32, _const(5)), ((3,), T.FLOAT32, _const(3)),
         ((1, 3), T.FLOAT32)],
        [(OPS.FULLY_CONNECTED, [0, 1, 2], [3], fb.BuiltinOptions.FullyConnectedOptions,
          fb.FullyConnectedOptionsT())], [0], [3], sparse=(1,))
    assert count_params(p) == 5 + 3
    assert count_macs(p) == 3 * 6  # the kernels' work is counted as before


def test_missing_static_shape_is_an_error(tmp_path):
    p = build_tflite(
        tmp_path / "dyn.tflite",
        [((1, 6), T.FLOAT32), ((3, 6), T.FLOAT32, _const((3, 6))), ((), T.FLOAT32)],
        [(OPS.FULLY_CONNECTED, [0, 1, -1], [2], fb.BuiltinOptions.FullyConnectedOptions,
          fb.FullyConnectedOptionsT())], [0], [2])
    with pytest.raises(ValueError, match="the output of FULLY_CONNECTED has no static shape"):
        count_macs(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such .tflite file. Received: path="):
        model_info(tmp_path / "nope.tflite")


def test_not_a_flatbuffer(tmp_path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"hello, this is not a model")
    with pytest.raises(ValueError, match="not a TFLite flatbuffer.*identifier"):
        model_info(p)


def test_truncated_flatbuffer(tmp_path):
    good = fc_model(tmp_path / "g.tflite", 8, 4)
    data = open(good, "rb").read()
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[:40])
    with pytest.raises(ValueError, match="corrupt TFLite flatbuffer"):
        model_info(p)


@pytest.fixture(scope="module")
def keras_2d_model(tmp_path_factory):
    """A converted Keras model with Conv2D, DepthwiseConv2D, Conv2DTranspose and Dense."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    L = keras.layers
    nz = "random_normal"  # non-zero biases, which the converter keeps
    inputs = keras.Input((10, 10, 3))
    x = L.Conv2D(4, 3, bias_initializer=nz)(inputs)                            # (8, 8, 4)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", bias_initializer=nz)(x)
    x = L.Conv2DTranspose(5, 3, strides=2, bias_initializer=nz)(x)             # (17, 17, 5)
    x = L.GlobalAveragePooling2D()(x)
    outputs = L.Dense(7, bias_initializer=nz)(x)
    model = keras.Model(inputs, outputs)
    d = tmp_path_factory.mktemp("k2d")
    model.export(str(d / "sm"), format="tf_saved_model", verbose=False,
                 input_signature=[tf.TensorSpec((1, 10, 10, 3), tf.float32)])
    path = d / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(d / "sm")).convert())
    return model, path


def test_converted_keras_model_matches_layer_oracle(keras_2d_model):
    model, path = keras_2d_model
    expected = 0
    for layer in model.layers:
        out = layer.output.shape[1:]
        if not layer.weights:
            continue
        k = layer.weights[0].numpy()
        if type(layer).__name__ == "Conv2D":
            expected += math.prod(out) * math.prod(k.shape[:3])
        elif type(layer).__name__ == "DepthwiseConv2D":
            expected += math.prod(out) * math.prod(k.shape[:2])
        elif type(layer).__name__ == "Conv2DTranspose":   # kernel (kh, kw, out, in)
            expected += math.prod(layer.input.shape[1:]) * math.prod(k.shape[:3])
        elif type(layer).__name__ == "Dense":
            expected += math.prod(out) * k.shape[0]
    info = model_info(path)
    assert info["macs"] == expected
    assert set(info["macs_by_op"]) == {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV",
                                       "FULLY_CONNECTED"}
    assert info["params"] == model.count_params()


def test_flatbuffer_without_subgraphs(tmp_path):
    p = tmp_path / "empty.tflite"
    p.write_bytes(b"\0\0\0\0TFL3" + b"\xff" * 20)
    with pytest.raises(ValueError, match="corrupt TFLite flatbuffer: it has no subgraph"):
        model_info(p)


def test_float16_and_int8_models_count_the_same_and_run(keras_2d_model, tmp_path):
    import tensorflow as tf

    from tflite_bench import benchmark

    model, path = keras_2d_model
    sm = str(path.parent / "sm")
    conv = tf.lite.TFLiteConverter.from_saved_model(sm)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    f16 = tmp_path / "f16.tflite"
    f16.write_bytes(conv.convert())
    rng = np.random.default_rng(0)
    conv = tf.lite.TFLiteConverter.from_saved_model(sm)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.random((1, 10, 10, 3), np.float32)]
                                           for _ in range(4))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    i8 = tmp_path / "i8.tflite"
    i8.write_bytes(conv.convert())
    ref = model_info(path)
    for p in (f16, i8):
        info = model_info(p)
        assert info["macs"] == ref["macs"]
        assert info["params"] == ref["params"]
    assert model_info(i8)["inputs"][0]["dtype"] == "int8"
    r = benchmark([path, f16, i8], runs=2, warmup=0, progress=False, resamples=10)
    assert [e["error"] for e in r["models"]] == [None, None, None]
    assert r["models"][2]["mac_ratio_vs_first"] == 1.0
