"""The tfmot baselines (`python -m tflite_bench.baselines`, `make_baselines`): error paths, and
one end-to-end run from a Keras 3 LeNet's weights (its dense .tflite must reproduce the Keras
model's outputs; the pruned files must hold the requested sparsity)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tflite_bench import make_baselines
from tflite_bench.baselines_api import BaselineError
from tflite_bench.model_info import read_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run([sys.executable, "-m", "tflite_bench.baselines", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def one_line_error(p):
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    errors = [x for x in p.stderr.splitlines() if x.startswith("tflite_bench.baselines")]
    assert len(errors) == 1, p.stderr
    return errors[0]


@pytest.mark.parametrize("args, match", [
    (["--out", "x"], "--arch and --out are required"),
    (["--arch", "vgg", "--out", "x"], "flag --arch=vgg"),
    (["--arch", "lenet", "--sparsity", "1.5", "--out", "x"], "flag --sparsity=1.5"),
    (["--arch", "lenet", "--nope"], "Unknown command line flag 'nope'"),
    (["--arch", "mlp", "--filters", "3,12", "--out", "{tmp}"], "--filters is for --arch lenet"),
    (["--arch", "lenet", "--weights", "{tmp}/none.keras", "--out", "{tmp}"],
     "--weights: no such file"),
    (["--arch", "lenet", "--data", "{tmp}/none.npz", "--out", "{tmp}"],
     "--data must be an .npz with x_train, y_train, x_test, y_test"),
])
def test_cli_errors(tmp_path, args, match):
    line = one_line_error(cli(*[a.format(tmp=tmp_path) for a in args]))
    assert match in line


def test_cli_refuses_to_overwrite(tmp_path):
    (tmp_path / "lenet_dense.tflite").write_bytes(b"x")
    line = one_line_error(cli("--arch", "lenet", "--out", tmp_path))
    assert "Output files exist; pass --overwrite" in line


def test_make_baselines_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown architecture. Expected one of"):
        make_baselines("vgg", 0.9, tmp_path)
    with pytest.raises(ValueError, match=r"`sparsity` must be in \(0, 1\). Received: "):
        make_baselines("lenet", 0.0, tmp_path)
    with pytest.raises(BaselineError, match="--filters is for --arch lenet"):
        make_baselines("mlp", 0.5, tmp_path, filters=(3, 12))


def _tflite_run(path, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _weight_sparsity(path):
    model = read_model(path)
    zeros = total = 0
    for t in model.subgraphs[0].tensors:
        buf = model.buffers[t.buffer].data if t.buffer > 0 else None
        if buf is not None and len(t.shape) >= 2 and t.type == 0:
            w = np.frombuffer(bytes(buf), np.float32)
            zeros += int((w == 0).sum())
            total += w.size
    return zeros / total


@pytest.mark.slow
def test_end_to_end_from_keras3_weights(tmp_path):
    import keras

    from examples.models import lenet

    keras.utils.set_random_seed(0)
    model = lenet(filters=(3, 12), units=40)
    model.save(tmp_path / "thin.keras")
    rng = np.random.default_rng(0)
    data = {"x_train": rng.random((64, 28, 28, 1), np.float32),
            "y_train": rng.integers(0, 10, 64), "x_test": rng.random((32, 28, 28, 1),
                                                                      np.float32),
            "y_test": rng.integers(0, 10, 32)}
    np.savez(tmp_path / "data.npz", **data)
    out = tmp_path / "out"
    m = make_baselines("lenet", 0.75, out, weights=tmp_path / "thin.keras",
                       data=tmp_path / "data.npz", steps=2, batch_size=16)
    assert m["builder_kwargs"]["filters"] == [3, 12] and m["builder_kwargs"]["units"] == 40
    assert m["pruning"].startswith("fine-tuned") and m["steps"] == 2
    kinds = [f["kind"] for f in m["files"]]
    assert kinds == ["dense", "elementwise", "elementwise_sparseflag", "2of4",
                     "2of4_sparseflag"]
    assert sorted(os.listdir(out)) == sorted([f["file"] for f in m["files"]]
                                             + ["baselines.json"])
    assert json.loads((out / "baselines.json").read_text()) == m
    # the dense file is the Keras 3 model, weights transferred by layer name
    x = data["x_test"][:1]
    np.testing.assert_allclose(_tflite_run(out / "lenet_dense.tflite", x),
                               model.predict(x, verbose=0), atol=1e-5)
    by = {f["kind"]: f for f in m["files"]}
    assert by["elementwise"]["kernel_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert _weight_sparsity(out / "lenet_sparsity75.tflite") == pytest.approx(0.75, abs=0.02)
    # tfmot groups 4 weights along the input axis; dimensions not divisible by 4 keep a few
    assert 0.4 < by["2of4"]["kernel_sparsity"] <= 0.5
    assert all(0.0 <= f["accuracy"] <= 1.0 for f in m["files"])
    # the sparsity flag makes the element-wise file smaller
    assert by["elementwise_sparseflag"]["size_bytes"] < by["elementwise"]["size_bytes"]
