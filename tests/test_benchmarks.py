"""The measurement commands under benchmarks/: bad input, --help without TensorFlow's start-up
lines, and small runs of lenet_widths and layer_times."""

import ast
import importlib
import json
import os
import subprocess
import sys
import zipfile

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
    (_TIMES, ["a.keras", "--quantize=int4"],
     "flag --quantize=int4: value should be one of <float32|float16|dynamic|int8>"),
])
def test_bad_input_is_one_line_exit_2(command, args, message):
    proc = _run(*args, timeout=120, command=command)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: ")
    assert message in lines[0]


class _WorkStarted(Exception):
    """Raised by the stubbed work of a command: it got past its checks."""


def _work(*args, **kwargs):
    raise _WorkStarted


def _in_process(command, args, monkeypatch, capsys, stub=("run", "measure")):
    """Runs `command`'s main([command, *args]) in this process, with its work (`stub`)
    replaced by `_work`, which raises _WorkStarted: a command that starts the work fails the
    test. Returns the exit code and the lines on stderr."""
    module = importlib.import_module(command)
    for name in stub:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _work)
    module.FLAGS.unparse_flags()
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.main([command, *args])
    finally:
        module.FLAGS.unparse_flags()
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def _assert_one_line(code, lines, command, message):
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), lines
    assert message in lines[0]


@pytest.fixture
def model_file(tmp_path):
    """A file that passes layer_times' model file check (a zip with config.json), so that the
    flags are what the command refuses; never loaded (the work is stubbed)."""
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return str(path)


_ROUND, _THIN = "benchmarks.round_to", "benchmarks.thin_time"
_MODES, _OVERHEAD = "benchmarks.export_modes", "benchmarks.regularizer_overhead"
_NO_POSITIONALS = "expected no positional arguments, only flags (--name=value). Received: "


@pytest.mark.parametrize("command, args, message", [
    (_WIDTHS, ["stray_arg", "--runs=10"], _NO_POSITIONALS + "['stray_arg']"),
    (_ROUND, ["stray_arg"], _NO_POSITIONALS + "['stray_arg']"),
    (_THIN, ["--repeats=1", "stray_arg"], _NO_POSITIONALS + "['stray_arg']"),
    (_MODES, ["stray_arg", "two"], _NO_POSITIONALS + "['stray_arg', 'two']"),
    (_OVERHEAD, ["stray_arg"], _NO_POSITIONALS + "['stray_arg']"),
    (_WIDTHS, ["--", "--runs=10"], _NO_POSITIONALS + "['--runs=10']"),
])
def test_stray_positional_arguments_are_refused_before_the_work(command, args, message,
                                                                monkeypatch, capsys):
    _assert_one_line(*_in_process(command, args, monkeypatch, capsys), command, message)


def test_layer_times_refuses_a_second_positional_before_the_work(model_file, monkeypatch,
                                                                 capsys):
    _assert_one_line(*_in_process(_TIMES, [model_file, "stray_arg"], monkeypatch, capsys),
                     _TIMES, f"expected one .keras model file. Received: ['{model_file}', "
                             "'stray_arg']")


_ALL = [_WIDTHS, _ROUND, _THIN, _MODES, _OVERHEAD, _TIMES]
_WITH_OUT_DIR = [_WIDTHS, _ROUND, _MODES, _TIMES]


def _args(command, model_file, *args):
    return [model_file, *args] if command == _TIMES else list(args)


@pytest.mark.parametrize("command", _ALL)
@pytest.mark.parametrize("case", ["no_parent", "directory", "empty", "parent_is_file"])
def test_json_path_is_checked_before_the_work(command, case, tmp_path, model_file,
                                              monkeypatch, capsys):
    (tmp_path / "file").write_text("keep")
    json_path, message = {
        "no_parent": (f"{tmp_path}/nodir/r.json",
                      f"its directory '{tmp_path}/nodir' does not exist"),
        "directory": (str(tmp_path), f"--json '{tmp_path}' is a directory"),
        "empty": ("", "--json must be the path of a new JSON file. Received: ''"),
        "parent_is_file": (f"{tmp_path}/file/r.json",
                           f"its directory '{tmp_path}/file' is not a directory"),
    }[case]
    code, lines = _in_process(command, _args(command, model_file, f"--json={json_path}"),
                              monkeypatch, capsys)
    _assert_one_line(code, lines, command, message)
    assert sorted(os.listdir(tmp_path)) == ["file", "m.keras"]
    assert (tmp_path / "file").read_text() == "keep"


@pytest.mark.parametrize("command", _WITH_OUT_DIR)
@pytest.mark.parametrize("case", ["file", "not_empty", "empty", "under_a_file", "proc"])
def test_out_dir_is_checked_before_the_work(command, case, tmp_path, model_file, monkeypatch,
                                            capsys):
    if case == "proc" and not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    (tmp_path / "file").write_text("keep")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.tflite").write_text("keep")
    out_dir, message = {
        "file": (f"{tmp_path}/file", "is a file, not a directory"),
        "not_empty": (f"{tmp_path}/full", "is not empty; refusing to overwrite files in it"),
        "empty": ("", "--out_dir must be a directory path"),
        "under_a_file": (f"{tmp_path}/file/new", f"cannot be created: '{tmp_path}/file' is a "
                                                 "file"),
        "proc": ("/proc/ssl_keras_test/x", "--out_dir '/proc/ssl_keras_test/x' cannot be "
                                           "created"),
    }[case]
    code, lines = _in_process(command, _args(command, model_file, f"--out_dir={out_dir}"),
                              monkeypatch, capsys)
    _assert_one_line(code, lines, command, message)
    assert sorted(os.listdir(tmp_path)) == ["file", "full", "m.keras"]
    assert os.listdir(tmp_path / "full") == ["old.tflite"]


@pytest.mark.parametrize("command", _WITH_OUT_DIR)
def test_json_and_out_dir_must_differ(command, tmp_path, model_file, monkeypatch, capsys):
    same = f"{tmp_path}/out"
    code, lines = _in_process(command, _args(command, model_file, f"--json={same}",
                                              f"--out_dir={same}"), monkeypatch, capsys)
    _assert_one_line(code, lines, command, f"--json and --out_dir are the same path '{same}'")
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def _failing_run(out_dir, *args):
    with open(os.path.join(out_dir, "half.tflite"), "w") as f:
        f.write("x")
    raise RuntimeError("the run failed")


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_run_leaves_the_out_dir_as_it_found_it(existing, tmp_path, monkeypatch):
    """The work fails after writing a file: a --out_dir this run created (with its new
    parents) is removed; an existing empty one is left, empty."""
    import benchmarks.lenet_widths as module

    out_dir = tmp_path / "old" if existing else tmp_path / "new" / "sub"
    if existing:
        out_dir.mkdir()
    monkeypatch.setattr(module, "run", _failing_run)
    module.FLAGS.unparse_flags()
    try:
        with pytest.raises(RuntimeError, match="the run failed"):
            module.main([_WIDTHS, "--widths=4-16-64", "--runs=10", f"--out_dir={out_dir}"])
    finally:
        module.FLAGS.unparse_flags()
    assert os.listdir(tmp_path) == (["old"] if existing else [])
    if existing:
        assert os.listdir(out_dir) == []


def test_a_json_write_that_fails_at_the_end_is_one_line(tmp_path, capsys):
    from benchmarks._util import write_json

    with pytest.raises(SystemExit) as exit_info:
        write_json("benchmarks.x", str(tmp_path / "gone" / "r.json"), {"rows": []})
    lines = capsys.readouterr().err.strip().splitlines()
    _assert_one_line(exit_info.value.code, lines, "benchmarks.x",
                     f"could not write --json '{tmp_path}/gone/r.json' (FileNotFoundError: ")
    assert lines[0].endswith("the results are printed above.")


def _zip(path, **files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name.replace("_", "."), text)
    return path


@pytest.mark.parametrize("case, received", [
    ("tflite", "'{tmp}/dense.tflite'"),
    ("text", "'{tmp}/text.keras', which is not a zip archive"),
    ("directory", "'{tmp}/dir.keras', a directory"),
    ("zip_without_config", "'{tmp}/other.keras', a zip archive without config.json"),
])
def test_layer_times_refuses_a_file_that_is_not_a_keras_model(case, received, tmp_path,
                                                              monkeypatch, capsys):
    path = {
        "tflite": _zip(tmp_path / "dense.tflite", config_json="{}"),
        "text": tmp_path / "text.keras",
        "directory": tmp_path / "dir.keras",
        "zip_without_config": _zip(tmp_path / "other.keras", weights_h5="x"),
    }[case]
    if case == "text":
        path.write_text("not a model")
    if case == "directory":
        path.mkdir()
    code, lines = _in_process(_TIMES, [str(path), f"--out_dir={tmp_path}/new"], monkeypatch,
                              capsys)
    _assert_one_line(code, lines, _TIMES, 'expected a .keras model file (as written by '
                     'model.save("m.keras")). Received: ' + received.format(tmp=tmp_path))
    assert not (tmp_path / "new").exists()


def test_layer_times_refuses_a_keras_file_that_does_not_load(tmp_path, monkeypatch, capsys):
    path = _zip(tmp_path / "bad.keras", config_json="{not json")
    code, lines = _in_process(_TIMES, [str(path), f"--out_dir={tmp_path}/new"], monkeypatch,
                              capsys)
    _assert_one_line(code, lines, _TIMES, f"could not load the model '{path}' (JSONDecodeError")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command, args, message", [
    # empty lists
    (_WIDTHS, ["--widths="], "--widths must list at least one conv1-conv2-ip1 width, e.g. "
                             "20-50-500,5-26-105. Received: ''"),
    (_ROUND, ["--round_to="], "--round_to must list at least one integer >= 1, e.g. 1,4,8. "
                              "Received: ''"),
    (_OVERHEAD, ["--models="], "--models must be a non-empty comma-separated list, e.g. "
                               "lenet,resnet20. Received: ''"),
    (_WIDTHS, ["--threads="], "--threads must be positive integers. Received: []"),
    # counts
    (_MODES, ["--train=0"], "--train must be >= --calibration + 8 = 208 (the calibration "
                            "images and the 8 held-out check images come from the training "
                            "images). Received: --train=0, --calibration=200"),
    (_MODES, ["--train=100", "--calibration=100"], "--train must be >= --calibration + 8 = 108"),
    (_MODES, ["--test=-1"], "--test must be >= 1 (test images). Received: -1"),
    (_MODES, ["--test=0"], "--test must be >= 1 (test images). Received: 0"),
    (_MODES, ["--calibration=0"],
     "--calibration must be >= 1 (training images for int8 calibration). Received: 0"),
    (_MODES, ["--epochs=0"], "--epochs must be >= 1 (training epochs). Received: 0"),
    (_MODES, ["--seed=-1"], "--seed must be in [0, 4294967295]. Received: -1"),
    (_OVERHEAD, ["--rounds=0", "--warmup=0"],
     "--rounds must be >= 1 (timed steps of each model). Received: 0"),
    (_OVERHEAD, ["--warmup=-1"],
     "--warmup must be >= 0 (untimed steps of each model first). Received: -1"),
    (_OVERHEAD, ["--batch_size=0"],
     "--batch_size must be >= 1 (images per training step). Received: 0"),
    (_ROUND, ["--seed=-1"], "--seed must be in [0, 4294967295]. Received: -1"),
    (_THIN, ["--seed=-1"], "--seed must be in [0, 4294967295]. Received: -1"),
    # values listed twice
    (_ROUND, ["--round_to=4,4"], "--round_to lists a value twice; expected each once. "
                                 "Received: 4,4"),
    (_ROUND, ["--round_to=4,04"], "--round_to lists a value twice"),
    (_OVERHEAD, ["--models=lenet,lenet"], "--models lists 'lenet' twice; expected each value "
                                          "once. Received: lenet,lenet"),
    (_WIDTHS, ["--widths=5-26-105,5-26-105"], "--widths lists a width twice. Received: "
                                              "5-26-105,5-26-105"),
    (_WIDTHS, ["--threads=1,2,1"], "--threads lists a thread count twice; expected each once. "
                                   "Received: 1,2,1"),
])
def test_bad_flag_values_are_refused_before_the_work(command, args, message, monkeypatch,
                                                      capsys):
    """Empty lists, out-of-range counts and values listed twice: one line, exit 2."""
    _assert_one_line(*_in_process(command, args, monkeypatch, capsys), command, message)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.parametrize("flag, asked, has", [("train", 70000, 60000), ("test", 20000, 10000)])
def test_export_modes_refuses_more_images_than_fashion_mnist_has(flag, asked, has, tmp_path,
                                                                 monkeypatch, capsys):
    code, lines = _in_process(_MODES, [f"--{flag}={asked}", f"--out_dir={tmp_path}/new"],
                              monkeypatch, capsys)
    _assert_one_line(code, lines, _MODES, f"--{flag} asks for {asked} images but the "
                                          f"Fashion-MNIST {flag} split")
    assert f"has {has}. Received: --{flag}={asked}" in lines[0]
    assert not (tmp_path / "new").exists()


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
    """In one line, before --out_dir is created."""
    path = tmp_path / "branchy.keras"
    _branchy_model().save(path)
    proc = _run(str(path), "--runs=10", f"--out_dir={tmp_path}/new", timeout=120,
                command="benchmarks.layer_times")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "benchmarks.layer_times: error: layer_times needs a chain: every layer is called "
        "once, on the previous layer's output. Received: layer 'b' (Dense) does not take the "
        "output of 'a'"]
    assert sorted(os.listdir(tmp_path)) == ["branchy.keras"]


@pytest.mark.slow
def test_layer_times_small_run(tmp_path):
    path, out = tmp_path / "chain.keras", tmp_path / "r.json"
    _chain_model().save(path)
    proc = _run(str(path), "--runs=10", f"--json={out}", f"--out_dir={tmp_path}/new/cuts",
                command="benchmarks.layer_times")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(os.listdir(tmp_path / "new" / "cuts")) == 4  # created with its parent, kept
    assert "| conv | Conv2D | 1 |" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["layer"] for r in rows] == ["conv", "pool", "flat", "fc"]
    # MACs of the cuts: conv 10*10*4*9, then fc adds 5*5*4*3 (pooling and flatten add none).
    assert [r["cut_macs"] for r in rows] == [3600, 3600, 3600, 3900]
    assert rows[0]["layer_us"] is None and all(r["layer_us"] is not None for r in rows[1:])
    assert rows[-1]["layer_us"] == pytest.approx(rows[-1]["cut_median_us"]
                                                 - rows[-2]["cut_median_us"])


@pytest.mark.slow
def test_layer_times_int8_cuts(tmp_path):
    path, out = tmp_path / "chain.keras", tmp_path / "r.json"
    _chain_model().save(path)
    proc = _run(str(path), "--runs=10", "--quantize=int8", f"--json={out}",
                f"--out_dir={tmp_path}/cuts", command="benchmarks.layer_times")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["quantize"] == "int8" and len(result["rows"]) == 4
    from ai_edge_litert.interpreter import Interpreter

    for name in sorted(os.listdir(tmp_path / "cuts")):
        interpreter = Interpreter(model_path=str(tmp_path / "cuts" / name))
        (detail,) = interpreter.get_input_details()
        assert str(detail["dtype"].__name__) == "int8", name  # full-integer cuts


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
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
    assert proc.stdout.startswith(first) and "--json" in proc.stdout


def test_the_help_test_covers_every_command():
    assert {"benchmarks.export_modes", "benchmarks.regularizer_overhead",
            "benchmarks.layer_times"} <= set(_COMMANDS)


def test_layer_times_loads_a_thinned_model_with_ssl_keras_layers(tmp_path):
    """A thinned model holds ConstantAdd layers, which only load once ssl_keras is imported
    (was: "could not load the model", exit 2, in a fresh process)."""
    import keras

    import ssl_keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = ssl_keras.ConstantAdd((8, 8, 4), name="add")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv2")(x))
    path = tmp_path / "thinned.keras"
    model.save(path)
    p = _run(str(path), "--runs=10", command=_TIMES)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| add | ConstantAdd |" in p.stdout


# --------------------------------------------------------------------------------------------
# Stubbed work: what the commands do around the export and the timing, without either.


def _fake_benchmark(calls, errors=()):
    """A stand-in for tflite_bench.benchmark: records its arguments in `calls`; the models at
    the indices in `errors` fail ("worker died"), model k's median is 10 * (k + 1) us."""
    def benchmark(paths, threads=(1,), runs=200, progress=True, **kwargs):
        calls.append({"paths": list(paths), "threads": list(threads), "runs": runs,
                      "progress": progress})
        models = []
        for k, p in enumerate(paths):
            for t in threads:
                error = "worker died" if k in errors else None
                models.append({"path": p, "name": os.path.basename(p), "threads": t,
                               "macs": 10 * (k + 1), "median_us": None if error
                               else 10.0 * (k + 1), "error": error, "speedup_vs_first": None,
                               "speedup_ci": None, "mac_ratio_vs_first": None,
                               "efficiency": None})
        return {"models": models, "machine": {}}
    return benchmark


def _fake_export(model, path, **kwargs):
    """A stand-in for ssl_keras.export_tflite: an empty file, no conversion."""
    import types

    with open(path, "wb"):
        pass
    return types.SimpleNamespace(path=os.path.abspath(path), max_abs_diff=0.0)


def _main(command, args, monkeypatch, capsys, **stubs):
    """Runs `command`'s main([command, *args]) in this process with `stubs` (name -> object)
    set on its module and TensorFlow's quiet import skipped. Returns (exit code or None,
    stdout, stderr lines)."""
    module = importlib.import_module(command)
    monkeypatch.setattr(module, "quiet_tensorflow", lambda: None, raising=False)
    for name, value in stubs.items():
        monkeypatch.setattr(module, name, value)
    module.FLAGS.unparse_flags()
    code = None
    try:
        module.main([command, *args])
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:  # a test failure, not the end of the test session
        code = "KeyboardInterrupt"
    finally:
        module.FLAGS.unparse_flags()
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def _save(model, path):
    model.save(path)
    return str(path)


def _varlen_model():
    import keras

    inputs = keras.Input((None, 4), name="tokens")
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def _identity_model():
    import keras

    inputs = keras.Input((4,))
    return keras.Model(inputs, inputs)


def _bad_scope_model():
    import keras

    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3, name="a|b")(inputs))


@pytest.mark.parametrize("build, message", [
    (_varlen_model, "export_tflite needs static input shapes (only the batch may be None). "
                    "Received: input 'tokens' with shape (None, None, 4)"),
    (_identity_model, "layer_times needs at least one layer after the model's input. "
                      "Received: a model whose output is its input"),
    (_bad_scope_model, "whose name scopes allow only letters, digits and _ . \\ / > - in a "
                       "layer's name. Received: layer 'a|b' (Dense)"),
])
def test_layer_times_refuses_a_model_it_cannot_export_before_the_work(build, message, tmp_path,
                                                                      monkeypatch, capsys):
    """A variable-length input, no layer after the input, a layer name TensorFlow refuses
    as a scope: one line, exit 2, --out_dir not created (were: tracebacks in the work)."""
    path = _save(build(), tmp_path / "m.keras")
    code, _, lines = _main(_TIMES, [path, "--runs=10", f"--out_dir={tmp_path}/new"],
                           monkeypatch, capsys, run=_work)
    _assert_one_line(code, lines, _TIMES, message)
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def _embedding_model():
    import keras

    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(10, 4, name="embed")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def test_layer_times_calibration_data_suits_the_input():
    import keras
    import numpy as np

    from benchmarks.layer_times import calibration_data

    model = _embedding_model()
    ids = calibration_data(model, model.layers[1:])
    assert ids.shape == (64, 5) and ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < 10 and len(np.unique(ids)) > 1
    inputs = keras.Input((3,), dtype="int64")
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    small = calibration_data(other, other.layers[1:])
    assert small.dtype == np.int64 and set(np.unique(small)) == {0, 1}
    chain = _chain_model()
    floats = calibration_data(chain, chain.layers)
    assert floats.dtype == np.float32 and floats.shape == (64, 12, 12, 1)
    assert 0 <= floats.min() and floats.max() < 1


def test_layer_times_int8_on_an_integer_input(tmp_path, monkeypatch, capsys):
    """Embedding ids as int8 calibration data (was: uniform [0, 1) floats for an int32
    input, a traceback). The cuts are really exported; the timing is stubbed."""
    import tflite_bench

    calls = []
    monkeypatch.setattr(tflite_bench, "benchmark", _fake_benchmark(calls))
    path = _save(_embedding_model(), tmp_path / "embed.keras")
    code, out, _ = _main(_TIMES, [path, "--runs=10", "--quantize=int8",
                                  f"--out_dir={tmp_path}/cuts"], monkeypatch, capsys)
    assert code is None
    assert sorted(os.listdir(tmp_path / "cuts")) == ["cut_00_embed.tflite", "cut_01_flat.tflite",
                                                     "cut_02_fc.tflite"]
    assert "| fc | Dense | 1 |" in out
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tmp_path / "cuts" / "cut_02_fc.tflite"))
    (detail,) = interpreter.get_input_details()
    assert detail["dtype"].__name__ == "int32"  # the ids stay integers
    (detail,) = interpreter.get_output_details()
    assert detail["dtype"].__name__ == "int8"  # full-integer cut


def test_layer_times_cut_file_names_are_bounded(tmp_path, monkeypatch, capsys):
    """A 260-character layer name (was: OSError File name too long)."""
    import keras

    import ssl_keras
    import tflite_bench

    monkeypatch.setattr(ssl_keras, "export_tflite", _fake_export)
    monkeypatch.setattr(tflite_bench, "benchmark", _fake_benchmark([]))
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="L" * 260)(inputs)
    path = _save(keras.Model(inputs, keras.layers.Dense(2, name="d2")(x)), tmp_path / "m.keras")
    code, out, _ = _main(_TIMES, [path, "--runs=10", f"--out_dir={tmp_path}/cuts"],
                         monkeypatch, capsys)
    assert code is None
    assert sorted(os.listdir(tmp_path / "cuts")) == [f"cut_00_{'L' * 40}.tflite",
                                                     "cut_01_d2.tflite"]
    assert f"| {'L' * 260} | Dense | 1 |" in out

    from benchmarks.layer_times import cut_file_name

    assert cut_file_name(3, "a b/c>d") == "cut_03_a_b_c_d.tflite"


def test_layer_times_table_after_a_failed_cut(tmp_path, monkeypatch, capsys):
    """A cut that was not timed: its row and the next layer's cost are "-", the error is
    under the table; only the first cut carries the fixed cost (was: the next layer shown
    as a first cut, with its whole median)."""
    import ssl_keras
    import tflite_bench

    monkeypatch.setattr(ssl_keras, "export_tflite", _fake_export)
    monkeypatch.setattr(tflite_bench, "benchmark", _fake_benchmark([], errors=(1,)))
    path = _save(_chain_model(), tmp_path / "chain.keras")
    out_json = tmp_path / "r.json"
    code, out, _ = _main(_TIMES, [path, "--runs=10", f"--json={out_json}"], monkeypatch, capsys)
    assert code is None
    lines = out.splitlines()
    assert lines[2] == "| conv | Conv2D | 1 | 10 | 10.0 | 10.0 (with the fixed cost) | 25% |"
    assert lines[3] == "| pool | MaxPooling2D | 1 | 20 | - | - | - |"
    assert lines[4] == "| flat | Flatten | 1 | 30 | 30.0 | - | - |"
    assert lines[5] == "| fc | Dense | 1 | 40 | 40.0 | 10.0 | 25% |"
    assert out.count("with the fixed cost") == 1
    assert "- the cut up to 'pool' (1 thread(s)) was not timed: worker died" in lines
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["layer_us"] for r in rows] == [None, None, None, 10.0]
    assert [r["error"] for r in rows] == [None, "worker died", None, None]
    assert [r["cut"] for r in rows] == [0, 1, 2, 3]


def test_layer_times_names_the_layer_of_a_cut_that_does_not_export(tmp_path, monkeypatch,
                                                                   capsys):
    import ssl_keras

    def refuse(model, path, **kwargs):
        raise ValueError("no such op\nmore")

    monkeypatch.setattr(ssl_keras, "export_tflite", refuse)
    path = _save(_chain_model(), tmp_path / "chain.keras")
    code, _, lines = _main(_TIMES, [path, "--runs=10", f"--out_dir={tmp_path}/new"],
                           monkeypatch, capsys)
    assert code == 2
    assert lines[-1] == ("benchmarks.layer_times: error: could not export the cut up to the "
                         "Conv2D layer 'conv' (ValueError: no such op); expected a chain whose "
                         "prefixes export_tflite converts.")
    assert sorted(os.listdir(tmp_path)) == ["chain.keras"]


def _tiny_resnet50(weights=None, input_shape=None):
    """A stand-in for keras.applications.ResNet50: conv-BN-ReLU-conv-BN, Add, pool, dense."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    y = keras.layers.BatchNormalization(name="bn2")(y)
    x = keras.layers.Add()([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


def _thin_time(monkeypatch, capsys, tmp_path, thin=None):
    import keras

    import ssl_keras

    monkeypatch.setattr(keras.applications, "ResNet50", _tiny_resnet50)
    if thin is not None:
        monkeypatch.setattr(ssl_keras, "thin", thin)
    return _main(_THIN, ["--input_size=32", f"--json={tmp_path}/r.json"], monkeypatch, capsys)


def test_thin_time_prints_progress_and_passes_its_check(tmp_path, monkeypatch, capsys):
    code, out, lines = _thin_time(monkeypatch, capsys, tmp_path)
    assert code is None
    assert lines == [f"benchmarks.thin_time: {s}" for s in (
        "building ResNet50 (32x32) and zeroing groups", "timing removable_groups",
        "timing thinning_plan", "timing apply_plan", "timing thin (1/1)",
        "checking thin against zero_groups")]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["max_abs_diff"] <= result["tolerance"]
    assert "max |thin - zeroed|" in out


def test_thin_time_fails_when_thin_differs_from_zeroed(tmp_path, monkeypatch, capsys):
    """Exceeding the allowed difference is exit code 1 with one error line, after the
    figures and the JSON (was: printed next to "allowed", exit 0)."""
    import ssl_keras

    real_thin = ssl_keras.thin

    def wrong_thin(model, **kwargs):
        small = real_thin(model, **kwargs)
        kernel = small.get_layer("fc").kernel
        kernel.assign(kernel.numpy() + 1.0)
        return small

    code, out, lines = _thin_time(monkeypatch, capsys, tmp_path, thin=wrong_thin)
    assert code == 1
    assert lines[-1].startswith("benchmarks.thin_time: error: max |thin - zeroed| must be <= ")
    assert lines[-1].endswith("; the figures are printed above.")
    assert not any(line.startswith("benchmarks.thin_time: error") for line in lines[:-1])
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["max_abs_diff"] > result["tolerance"]
    assert f"max |thin - zeroed| = {result['max_abs_diff']:.3g}" in out


def _round_to(monkeypatch, capsys, tmp_path, thin=None):
    import ssl_keras
    import tflite_bench

    calls = []
    monkeypatch.setattr(ssl_keras, "export_tflite", _fake_export)
    monkeypatch.setattr(tflite_bench, "benchmark", _fake_benchmark(calls))
    if thin is not None:
        monkeypatch.setattr(ssl_keras, "thin", thin)
    code, out, lines = _main(_ROUND, ["--round_to=4", "--runs=10", f"--json={tmp_path}/r.json"],
                             monkeypatch, capsys)
    return code, out, lines, calls


def test_round_to_reports_keras_macs_and_checks_thin(tmp_path, monkeypatch, capsys):
    """keras_macs and the differences are in the rows (were: computed, never output); the
    thinned model must match the dense one; progress on stderr (was: silent)."""
    code, out, lines, calls = _round_to(monkeypatch, capsys, tmp_path)
    assert code is None
    assert [c["progress"] for c in calls] == [True]
    assert lines == ["benchmarks.round_to: building ResNet-20 and zeroing groups",
                     "benchmarks.round_to: thinning with round_to=4",
                     "benchmarks.round_to: exporting 1/2: resnet20_dense.tflite",
                     "benchmarks.round_to: exporting 2/2: resnet20_round_to_4.tflite"]
    result = json.loads((tmp_path / "r.json").read_text())
    dense, thinned = result["rows"]
    assert dense["thin_max_abs_diff"] is None
    assert 0 <= thinned["thin_max_abs_diff"] <= result["tolerance"]
    assert thinned["keras_macs"] < dense["keras_macs"]
    assert dense["export_max_abs_diff"] == 0.0
    assert "| model | threads | conv widths | max abs diff vs dense | MACs |" in out


def test_round_to_fails_when_thin_changes_the_function(tmp_path, monkeypatch, capsys):
    """max |thinned - dense| above the allowed difference: exit code 1, one error line, once
    the table and the JSON are out."""
    import keras

    import ssl_keras

    real_thin = ssl_keras.thin

    def wrong_thin(model, **kwargs):
        small = real_thin(model, **kwargs)
        dense = [layer for layer in small.layers if isinstance(layer, keras.layers.Dense)][-1]
        dense.kernel.assign(dense.kernel.numpy() + 1.0)
        return small

    code, out, lines, _ = _round_to(monkeypatch, capsys, tmp_path, thin=wrong_thin)
    assert code == 1
    assert lines[-1].startswith("benchmarks.round_to: error: max |round_to_4 - dense| (Keras "
                                "outputs) must be <= ")
    assert (tmp_path / "r.json").exists() and "| round_to_4 | 1 |" in out


def test_export_modes_shows_training_and_export_progress_on_stderr(tmp_path, monkeypatch,
                                                                   capsys):
    """Keras' progress bar and a line per mode on stderr (was: verbose=0, silent); stdout
    holds only the table."""
    import types

    import numpy as np

    import ssl_keras

    rng = np.random.default_rng(0)
    data = types.SimpleNamespace(
        x_train=rng.random((16, 28, 28, 1), dtype=np.float32), y_train=rng.integers(0, 10, 16),
        x_test=rng.random((4, 28, 28, 1), dtype=np.float32), y_test=rng.integers(0, 10, 4),
        source="stub")
    monkeypatch.setattr(ssl_keras, "export_tflite", lambda model, path, quantize=None, **k:
                        types.SimpleNamespace(quantize=quantize or "float32", size_bytes=1,
                                              max_abs_diff=0.0, op_counts={}))
    monkeypatch.setattr(ssl_keras, "predict_tflite",
                        lambda path, x: {"output_0": np.zeros((len(x), 10), np.float32)})
    monkeypatch.setattr(ssl_keras, "evaluate_tflite", lambda path, x, y: 0.5)
    code, out, lines = _main(_MODES, ["--train=16", "--calibration=4", "--test=4"],
                             monkeypatch, capsys, load_data=lambda: data)
    assert code is None, lines
    assert lines[0] == "benchmarks.export_modes: training LeNet-5 on 16 images, 1 epoch(s)"
    assert any("loss" in line for line in lines[1:-4])  # Keras' progress bar
    assert lines[-4:] == [f"benchmarks.export_modes: exporting and scoring {k}/4: {m}"
                          for k, m in enumerate(["float32", "float16", "dynamic", "int8"], 1)]
    assert out.startswith("LeNet-5 on Fashion-MNIST") and "loss" not in out


def test_regularizer_overhead_progress_is_on_stderr(monkeypatch, capsys):
    code, out, lines = _main(_OVERHEAD, ["--models=lenet", "--rounds=2", "--warmup=0",
                                         "--batch_size=2"], monkeypatch, capsys)
    assert code is None
    assert lines[0] == "benchmarks.regularizer_overhead: lenet: building, compiling and " \
                       "warming up both copies"
    assert lines[1] == "benchmarks.regularizer_overhead: lenet: timing 2 interleaved rounds"
    assert "2/2" in "\n".join(lines[2:])  # Keras' progress bar
    assert out.startswith("| model | layers with GroupLasso |") and "2/2" not in out


def test_lenet_widths_prints_a_line_per_export(monkeypatch, capsys):
    import ssl_keras
    import tflite_bench

    monkeypatch.setattr(ssl_keras, "export_tflite", _fake_export)
    monkeypatch.setattr(tflite_bench, "benchmark", _fake_benchmark([]))
    code, out, lines = _main(_WIDTHS, ["--widths=4-16-64,8-16-64", "--runs=10"], monkeypatch,
                             capsys)
    assert code is None
    assert lines == ["benchmarks.lenet_widths: exporting 1/2: LeNet 4-16-64",
                     "benchmarks.lenet_widths: exporting 2/2: LeNet 8-16-64"]
    assert "| 8-16-64 | 1 |" in out


_STUB_WORK = """
import sys
sys.argv = [{command!r}, *{args!r}]
module = __import__({command!r}, fromlist=["main"])

def work(*args, **kwargs):  # the work's first TensorFlow call, as in a real run
    import tensorflow as tf
    tf.config.list_physical_devices()
    raise SystemExit(0)

for name in ("run", "measure", "load_data"):
    if hasattr(module, name):
        setattr(module, name, work)
module.main()
"""


@pytest.mark.parametrize("command", _ALL)
def test_no_tensorflow_lines_on_stderr_before_the_work(command, tmp_path):
    """TensorFlow's C++ lines ("failed call to cuInit") ignore TF_CPP_MIN_LOG_LEVEL: every
    command imports TensorFlow quietly before its work (was: only layer_times)."""
    args = []
    if command == _TIMES:
        args = [_save(_chain_model(), tmp_path / "chain.keras")]
    script = _STUB_WORK.format(command=command, args=args)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines()
            if not line.startswith(f"{command}: ")] == []


def _interrupt(*args, **kwargs):
    """The work, interrupted (Ctrl-C) after writing a file in its directory, if it has one."""
    out_dir = args[0] if args else None
    if isinstance(out_dir, str) and os.path.isdir(out_dir):
        with open(os.path.join(out_dir, "half.tflite"), "w") as f:
            f.write("x")
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", _ALL)
def test_ctrl_c_is_one_line_and_exit_130(command, tmp_path, model_file, monkeypatch, capsys):
    """Ctrl-C in the work: `command: interrupted`, exit code 130, what the run wrote in
    --out_dir removed (was: a traceback)."""
    stubs = {name: _interrupt for name in ("run", "measure")
             if hasattr(importlib.import_module(command), name)}
    if command == _MODES:
        stubs["load_data"] = lambda: None
    if command == _TIMES:
        stubs["load_chain"] = lambda path: (None, [])
    args = _args(command, model_file)
    if command in _WITH_OUT_DIR:
        args.append(f"--out_dir={tmp_path}/new")
    code, _, lines = _main(command, args, monkeypatch, capsys, **stubs)
    assert code == 130
    assert lines == [f"{command}: interrupted"]
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_flags_may_be_spelled_with_dashes(monkeypatch, capsys):
    """As tflite_bench's commands take them (found by probing)."""
    code, lines = _in_process("benchmarks.round_to", ["--round-to=1,0"], monkeypatch, capsys)
    assert (code, lines) == (2, ["benchmarks.round_to: error: --round_to values must be >= 1. "
                                 "Received: ['1', '0']"])
