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
    (["--arch", "lenet", "--kinds", "elementwise,2:4", "--out", "{tmp}"],
     "--kinds takes one or more of elementwise, elementwise_sparseflag, 2of4, "
     "2of4_sparseflag, separated by commas. Received: --kinds=elementwise,2:4"),
    (["--arch", "lenet", "--kinds=", "--out", "{tmp}"], "Received: --kinds="),
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
    assert m["kinds"] == ["elementwise", "elementwise_sparseflag", "2of4", "2of4_sparseflag"]

    # --kinds: only the files asked for (and the dense one); the element-wise model is the
    # same as in the full run (2:4 is pruned after it, from its own copy of the dense model)
    only = tmp_path / "only"
    m1 = make_baselines("lenet", 0.75, only, weights=tmp_path / "thin.keras",
                        data=tmp_path / "data.npz", steps=2, batch_size=16,
                        kinds=["elementwise"])
    assert [f["kind"] for f in m1["files"]] == ["dense", "elementwise"]
    assert m1["kinds"] == ["elementwise"]
    assert sorted(os.listdir(only)) == ["baselines.json", "lenet_dense.tflite",
                                        "lenet_sparsity75.tflite"]
    assert (only / "lenet_sparsity75.tflite").read_bytes() == \
        (out / "lenet_sparsity75.tflite").read_bytes()
    assert m1["files"][1]["accuracy"] == by["elementwise"]["accuracy"]


def only_line(p):
    """The error line, asserting it is the only line on stderr (no TensorFlow start-up
    lines: the check came before TensorFlow was imported, or they were silenced)."""
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tflite_bench.baselines: error: "), p.stderr
    return lines[0]


@pytest.mark.parametrize("args, match", [
    (["--out={tmp}/text.txt"], "--out is a file. Expected: a folder"),
    (["--out={tmp}/text.txt/sub"], "its parent folder {tmp}/text.txt is a file"),
    (["--out={tmp}/no/such"], "its parent folder {tmp}/no does not exist"),
    (["--out=/proc/baselines"], "No file can be created in the output folder '/proc'"),
    (["--out="], "--out is empty"),
    (["--out={tmp}/out", "--filters=3"], "--filters takes two positive integers"),
    (["--out={tmp}/out", "--filters=0,5"], "Received: --filters=0,5"),
    (["--out={tmp}/out", "--filters=3,x"], "Received: --filters=3,x"),
    (["--out={tmp}/out", "--filters=3,12,4"], "Received: --filters=3,12,4"),
    (["--out={tmp}/out", "--filters="], "Received: --filters="),
    (["--out={tmp}/out", "--weights={tmp}/text.keras"],
     "--weights is not a valid .keras file"),
    (["--out={tmp}/out", "--weights={tmp}"], "--weights: it is a directory"),
    (["--out={tmp}/out", "--weights="], "--weights is empty"),
    (["--out={tmp}/out", "--data="], "--data is empty"),
    (["--out={tmp}/out", "--seed=-1"], "flag --seed=-1: -1 is not an integer in the range"),
    (["--out={tmp}/out", "extra"], "unexpected arguments"),
])
def test_cli_checks_before_tensorflow(tmp_path, args, match):
    (tmp_path / "text.txt").write_text("text\n")
    (tmp_path / "text.keras").write_text("text\n")
    line = only_line(cli("--arch=lenet", *[a.format(tmp=tmp_path) for a in args]))
    assert match.format(tmp=tmp_path) in line
    assert sorted(os.listdir(tmp_path)) == ["text.keras", "text.txt"]  # no --out folder


def test_cli_no_dash_boolean_flag(tmp_path):
    (tmp_path / "lenet_dense.tflite").write_bytes(b"x")
    line = only_line(cli("--arch", "lenet", "--out", tmp_path, "--no-overwrite"))
    assert "Output files exist; pass --overwrite" in line


def test_cli_data_must_fit_the_model(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.random((4, 5), np.float32),
             y_train=np.zeros(4, np.int64), x_test=rng.random((4, 5), np.float32),
             y_test=np.zeros(4, np.int64))
    line = only_line(cli("--arch=lenet", f"--data={tmp_path / 'd.npz'}",
                         f"--out={tmp_path / 'out'}"))
    assert "--data: the inputs in x_train do not fit the model. Expected: shape (N, 28, 28, 1)" \
        in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("labels, shown", [
    (np.arange(4) % 16 + 8, "range [8, 11]"),  # 10 classes: 10 and 11 are outside
    (np.array([0.0, 1.5, 2.0, 3.0]), "first values [0.0, 1.5, 2.0, 3.0]"),
    (np.zeros((4, 10)), "shape (4, 10)"),  # one-hot
])
def test_cli_labels_must_be_class_indices(tmp_path, labels, shown):
    """Was: a 65-line TensorFlow traceback after the import (exit 1)."""
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 28, 28, 1), np.float32),
             y_train=labels, x_test=np.zeros((4, 28, 28, 1), np.float32),
             y_test=np.zeros(4, np.int64))
    line = only_line(cli("--arch=lenet", f"--data={tmp_path / 'd.npz'}",
                         f"--out={tmp_path / 'out'}"))
    assert "--data: y_train must hold one class label per input, whole numbers in [0, 10)" \
        in line and shown in line
    assert not (tmp_path / "out").exists()


def _cli_on_saved_model(tmp_path, script):
    """Runs `script` (Keras 3; saves a model to sys.argv[1]) in its own process, then the CLI
    with --arch=lenet --weights=<that file>; returns the CLI's one error line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    env.pop("TF_USE_LEGACY_KERAS", None)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.keras")], check=True,
                   capture_output=True, env=env, timeout=300)
    return only_line(cli("--arch=lenet", f"--weights={tmp_path / 'm.keras'}",
                         f"--out={tmp_path / 'out'}"))


def test_cli_error_after_tensorflow_is_one_line(tmp_path):
    # a LeNet-like model whose conv1 is 3x3: the widths fit, the shapes only fail once the
    # tf_keras model is built, after the TensorFlow import
    script = (
        "import keras, sys\n"
        "L = keras.layers\n"
        "i = keras.Input((28, 28, 1))\n"
        "x = L.MaxPooling2D(2, name='pool1')(L.Conv2D(2, 3, name='conv1')(i))\n"
        "x = L.MaxPooling2D(2, name='pool2')(L.Conv2D(3, 5, name='conv2')(x))\n"
        "o = L.Dense(10, name='ip2')(L.Dense(8, name='ip1')(L.Flatten(name='flatten')(x)))\n"
        "keras.Model(i, o).save(sys.argv[1])\n")
    line = _cli_on_saved_model(tmp_path, script)
    assert "--weights: the shapes of layer 'conv1' do not fit the rebuilt architecture" in line
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]  # no empty --out folder left behind


def test_cli_weights_with_layers_the_architecture_lacks(tmp_path):
    # a ResNet-32 file under --arch resnet20 built the 20 layers it found and dropped the
    # rest without a word; here: a LeNet with one more Dense layer than --arch lenet has
    script = (
        "import keras, sys\n"
        "from examples.models import lenet\n"
        "m = lenet()\n"
        "o = keras.layers.Dense(10, name='ip3')(m.output)\n"
        "keras.Model(m.input, o).save(sys.argv[1])\n")
    line = _cli_on_saved_model(tmp_path, script)
    assert "layers with weights that the rebuilt 'lenet' does not have" in line
    assert "['ip3']" in line
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_cli_without_tfmot_names_the_extra(tmp_path):
    script = ("import runpy, sys\n"
              "sys.modules['tensorflow_model_optimization'] = None\n"
              "sys.argv = ['tflite_bench.baselines'] + sys.argv[1:]\n"
              "runpy.run_module('tflite_bench.baselines', run_name='__main__')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_USE_LEGACY_KERAS", None)
    p = subprocess.run([sys.executable, "-c", script, "--arch=lenet",
                        f"--out={tmp_path / 'out'}"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    line = only_line(p)
    assert "need tensorflow-model-optimization and tf-keras" in line and ".[bench]" in line
    assert not (tmp_path / "out").exists()


def test_file_names_keep_the_sparsity_apart():
    from tflite_bench.baselines import _file_names

    assert _file_names("lenet", 0.75)["elementwise"] == "lenet_sparsity75.tflite"
    assert _file_names("lenet", 0.115)["elementwise"] != _file_names("lenet", 0.125)[
        "elementwise"]  # both were "sparsity12"
    assert _file_names("lenet", 0.07)["elementwise_sparseflag"] == \
        "lenet_sparsity7_sparseflag.tflite"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_that_appears_while_converting_is_kept_without_overwrite(tmp_path, overwrite):
    """Found by probing. Was: the outputs were checked before the (long) tfmot run, then
    written with overwrite forced on, so a file created meanwhile was silently replaced."""
    from tflite_bench import baselines

    baselines.FLAGS.unparse_flags()
    baselines.FLAGS(["baselines", "--arch=lenet", f"--out={tmp_path}"]
                    + (["--overwrite"] if overwrite else []))
    try:
        (tmp_path / "baselines.json").write_text("precious")  # appeared during the run
        contents = {str(tmp_path / "a.tflite"): b"new", str(tmp_path / "baselines.json"): b"{}"}
        if overwrite:
            baselines._write_all(str(tmp_path), False, contents)
            assert (tmp_path / "baselines.json").read_bytes() == b"{}"
        else:
            with pytest.raises(FileExistsError, match="The output file exists"):
                baselines._write_all(str(tmp_path), False, contents)
            assert os.listdir(tmp_path) == ["baselines.json"]  # all or none
            assert (tmp_path / "baselines.json").read_text() == "precious"
    finally:
        baselines.FLAGS.unparse_flags()
