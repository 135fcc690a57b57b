"""The measurement commands under benchmarks/: bad input, --help without TensorFlow's start-up
lines, and small runs of lenet_widths and layer_times."""

import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(*args, timeout=300, command="benchmarks.lenet_widths"):
    return subprocess.run([sys.executable, "-m", command, *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


_WIDTHS, _TIMES = "benchmarks.lenet_widths", "benchmarks.layer_times"


@pytest.mark.parametrize("command, args, message", [
    (_WIDTHS, ["--widths=20-50"], "--widths must be a comma-separated list of conv1-conv2-ip1 "
                                  "positive integers, e.g. 20-50-500,5-26-105. Received: '20-50'"),
    (_WIDTHS, ["--widths=20-0-500"], "Received: '20-0-500'"),
    (_WIDTHS, ["--widths=4-16-64,4-16-64"],
     "--widths lists a width twice. Received: 4-16-64,4-16-64"),
    (_WIDTHS, ["--runs=3"], "--runs must be >= 10. Received: 3"),
    (_WIDTHS, ["--threads=x"], "--threads must be positive integers. Received: ['x']"),
    (_WIDTHS, ["--nosuch"], "Unknown command line flag 'nosuch'"),
    (_TIMES, [], "expected one .keras model file. Received: []"),
    (_TIMES, ["a.keras", "b.keras"],
     "expected one .keras model file. Received: ['a.keras', 'b.keras']"),
    (_TIMES, ["missing.keras"], "the model file 'missing.keras' does not exist."),
    (_TIMES, ["tests/__init__.py", "--runs=3"], "--runs must be >= 10. Received: 3"),
])
def test_bad_input_is_one_line_exit_2(command, args, message):
    proc = _run(*args, timeout=120, command=command)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: ")
    assert message in lines[0]


def test_lenet_widths_refuses_existing_json(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("keep")
    proc = _run(f"--json={out}", timeout=120)
    assert proc.returncode == 2 and "refusing to overwrite" in proc.stderr
    assert out.read_text() == "keep"


@pytest.mark.slow
def test_lenet_widths_small_run(tmp_path):
    out = tmp_path / "r.json"
    proc = _run("--widths=20-50-500,4-16-64", "--runs=10", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 4-16-64 | 1 |" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["widths"] for r in rows] == ["20-50-500", "4-16-64"]
    assert rows[0]["macs"] == 2_293_000  # the dense LeNet's MACs, as in RESULTS.md
    assert rows[1]["macs"] < rows[0]["macs"] and rows[1]["median_us"] > 0


def _chain_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.MaxPooling2D(name="pool"),
                             keras.layers.Flatten(name="flat"), keras.layers.Dense(3, name="fc")])


def _branchy_model():
    import keras

    inputs = keras.Input((6,))
    a = keras.layers.Dense(4, name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(inputs)
    return keras.Model(inputs, keras.layers.Add(name="add")([a, b]))


def test_layer_times_chain_layers_accepts_chains_and_names_the_first_break():
    import keras

    from benchmarks.layer_times import chain_layers

    assert [layer.name for layer in chain_layers(_chain_model())] == ["conv", "pool", "flat",
                                                                     "fc"]
    inputs = keras.Input((6,))
    functional = keras.Model(inputs, keras.layers.Dense(2, name="y")(
        keras.layers.Dense(4, name="x")(inputs)))
    assert [layer.name for layer in chain_layers(functional)] == ["x", "y"]
    with pytest.raises(ValueError, match=r"Received: layer 'b' \(Dense\) does not take the "
                                         r"output of 'a'"):
        chain_layers(_branchy_model())
    shared = keras.layers.Dense(6, name="twice")
    inputs = keras.Input((6,))
    with pytest.raises(ValueError, match=r"layer 'twice' \(Dense\) with 2 calls"):
        chain_layers(keras.Model(inputs, shared(shared(inputs))))


def test_layer_times_refuses_a_model_that_is_not_a_chain(tmp_path):
    path = tmp_path / "branchy.keras"
    _branchy_model().save(path)
    proc = _run(str(path), "--runs=10", timeout=120, command="benchmarks.layer_times")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("benchmarks.layer_times: error: layer_times needs a chain: every "
                         "layer is called once, on the previous layer's output. Received: "
                         "layer 'b' (Dense) does not take the output of 'a'")


@pytest.mark.slow
def test_layer_times_small_run(tmp_path):
    path, out = tmp_path / "chain.keras", tmp_path / "r.json"
    _chain_model().save(path)
    proc = _run(str(path), "--runs=10", f"--json={out}", command="benchmarks.layer_times")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| conv | Conv2D | 1 |" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["layer"] for r in rows] == ["conv", "pool", "flat", "fc"]
    # MACs of the cuts: conv 10*10*4*9, then fc adds 5*5*4*3 (pooling and flatten add none).
    assert [r["cut_macs"] for r in rows] == [3600, 3600, 3600, 3900]
    assert rows[0]["layer_us"] is None and all(r["layer_us"] is not None for r in rows[1:])
    assert rows[-1]["layer_us"] == pytest.approx(rows[-1]["cut_median_us"]
                                                 - rows[-2]["cut_median_us"])


@pytest.mark.parametrize("command, first", [
    ("benchmarks.lenet_widths", "TFLite latency of LeNet-5 at the widths SSL can leave"),
    ("benchmarks.layer_times", "Where a chain model's TFLite latency goes"),
    ("benchmarks.round_to", "Which `thin(..., round_to=N)` gives the best TFLite latency"),
    ("benchmarks.thin_time", "Wall time of ssl_keras.thin on keras.applications.ResNet50"),
])
def test_help_prints_the_docstring_and_the_flags(command, first):
    proc = _run("--help", timeout=120, command=command)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(first)
    assert "Flags:" in proc.stdout and "--json" in proc.stdout


_COMMANDS = sorted(f"benchmarks.{n[:-3]}" for n in os.listdir(os.path.join(ROOT, "benchmarks"))
                   if n.endswith(".py") and n[0].isalpha())


@pytest.mark.parametrize("command", _COMMANDS)
def test_help_prints_no_tensorflow_start_up_lines(command):
    """`--help` imports no TensorFlow, so stderr stays empty: keras imported before ssl_keras
    prints TensorFlow's pre-logging lines whatever TF_CPP_MIN_LOG_LEVEL says."""
    with open(os.path.join(ROOT, *command.split(".")) + ".py", encoding="utf-8") as f:
        first = ast.get_docstring(ast.parse(f.read())).splitlines()[0]
    proc = _run("--help", timeout=120, command=command)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # absl's app.run exits 1 on --help
    assert proc.stderr == ""
    assert proc.stdout.startswith(first) and "--json" in proc.stdout


def test_help_covers_the_absl_app_commands():
    assert {"benchmarks.export_modes", "benchmarks.regularizer_overhead"} <= set(_COMMANDS)
