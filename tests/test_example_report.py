"""Tests of examples/report.py (ReportMixin.write / results, plots) and of the command line
examples/common.py records, on a fake pipeline: no training, no TFLite files."""

import dataclasses
import json
import os
import sys
import types
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from examples import common, lenet, report, resnet  # noqa: E402
from examples.pipeline import Pipeline  # noqa: E402
from examples.report import ReportMixin  # noqa: E402

pytest.importorskip("matplotlib")


def _model(conv="conv1", dense="ip1"):
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, name=conv)(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name=dense)(x))


class FakePipeline(ReportMixin):
    """What write() / results() read of a Pipeline; log() keeps the lines."""

    def __init__(self, out_dir, model=None, threads=(1,)):
        self.cfg = types.SimpleNamespace(out_dir=str(out_dir), threads=threads, seed=0)
        self.recipe = types.SimpleNamespace(name="lenet")
        self.dataset = "fashion_mnist"
        self.stem = "lenet_fashion_mnist"
        self.dense = self.zeroed = model if model is not None else _model()
        self.lines = []

    def log(self, msg):
        self.lines.append(msg)


def _row(latency, filters, accuracy=0.9):
    return {"accuracy": accuracy, "params": 100, "macs": 1000, "latency_us": latency.get(1),
            "latency_us_by_threads": latency, "file_bytes": 2048,
            "filters_per_layer": filters, "val_accuracy": None}


def _results(filters, latency_int8=None, command="python -m examples.lenet --quick"):
    return {"command": command, "accuracy_change": None, "tfmot": None,
            "baseline": _row({1: 100.0}, filters),
            "ssl": _row({1: 50.0}, {name: n - 1 for name, n in filters.items()}),
            "ssl_int8": _row(latency_int8 or {1: 40.0}, {})}


def _files(directory):
    return sorted(f for f in os.listdir(directory) if not f.startswith("."))


ALL_FILES = ["lenet_fashion_mnist.json", "lenet_fashion_mnist.md",
             "lenet_fashion_mnist_conv1.png", "lenet_fashion_mnist_filters.png",
             "lenet_fashion_mnist_latency.png"]


def test_dollar_signs_in_layer_names_are_drawn_literally(tmp_path, capsys):
    """Was: ValueError from matplotlib's math text after the JSON and .md were written (the
    PNGs missing): "cost$_$" is a valid Keras layer name."""
    pipeline = FakePipeline(tmp_path, _model(conv="cost$_$", dense="a$b$c"))
    pipeline.write(_results({"cost$_$": 3, "a$b$c": 2}))
    assert _files(tmp_path) == ALL_FILES
    with open(tmp_path / "lenet_fashion_mnist.json", encoding="utf-8") as f:
        assert json.load(f)["baseline"]["filters_per_layer"] == {"cost$_$": 3, "a$b$c": 2}


def test_a_second_write_notes_every_file_it_replaces(tmp_path, capsys):
    """Was: the JSON and .md were noted, the three PNGs replaced silently, and the last line
    named the JSON and .md only."""
    first = FakePipeline(tmp_path)
    first.write(_results({"conv1": 3, "ip1": 2}))
    stem = os.path.join(str(tmp_path), "lenet_fashion_mnist")
    wrote = f"wrote {stem}.json, .md, _filters.png, _latency.png, _conv1.png"
    assert first.lines == [wrote]
    second = FakePipeline(tmp_path)
    second.write(_results({"conv1": 3, "ip1": 2}))
    assert second.lines == [
        f"replacing {stem}.json, .md (written by an earlier run)",
        f"replacing {stem}_filters.png, _latency.png, _conv1.png (written by an earlier run)",
        wrote]


def test_nan_is_null_in_the_json_and_a_dash_in_the_table(tmp_path, capsys):
    """Was: a bare NaN token in the JSON (strict parsers reject it) and "nan" / "nanx" in
    the table."""
    pipeline = FakePipeline(tmp_path, threads=(1, 2))
    results = _results({"conv1": 3, "ip1": 2}, latency_int8={1: float("nan"), 2: 30.0})
    results["speedup"] = np.float32("nan")
    pipeline.write(results)

    def strict(token):
        raise AssertionError(f"non-standard JSON token {token}")

    with open(tmp_path / "lenet_fashion_mnist.json", encoding="utf-8") as f:
        written = json.load(f, parse_constant=strict)
    assert written["speedup"] is None
    assert written["ssl_int8"]["latency_us_by_threads"] == {"1": None, "2": 30.0}
    assert written["ssl_int8"]["latency_us"] is None
    out = capsys.readouterr().out
    md = (tmp_path / "lenet_fashion_mnist.md").read_text(encoding="utf-8")
    row = "| SSL thinned (int8) | 90.00% | 100 | 1,000 | - | 30.0 | - | 2.0 |"
    assert row in out.splitlines() and row in md.splitlines()
    assert "nan" not in out.lower() and "nan" not in md.lower()
    assert report.finite_or_none({"a": [np.float64("inf"), (1.0, float("nan"))]}) == {
        "a": [None, (1.0, None)]}


def test_results_have_none_where_the_json_has_null(tmp_path, monkeypatch):
    """results(), what run() returns, had NaN where the JSON now has null; its command is
    the argv set by main(), not sys.argv."""
    paths = {}
    for key in ("dense", "ssl", "ssl_int8"):
        paths[key] = str(tmp_path / f"{key}.tflite")
        open(paths[key], "wb").close()
    y = np.array([0, 1, 1, 0])
    monkeypatch.setattr(report, "need", lambda *a: lambda path, x: {"out": np.eye(2)[y]})
    pipeline = FakePipeline(tmp_path)
    model = types.SimpleNamespace(layers=[], predict=lambda x, **kw: np.eye(2)[y])
    pipeline.dense = pipeline.thinned = model
    pipeline.cfg = dataclasses.make_dataclass("Cfg", ["seed", "dataset"])(0, "fashion_mnist")
    x = np.zeros((4, 2))
    pipeline.data = types.SimpleNamespace(x_test=x, y_test=y, x_val=x, y_val=y, source="here",
                                          x_unused=x[:0], y_unused=y[:0])
    pipeline.tflite, pipeline.tfmot, pipeline.timings = paths, None, {}
    pipeline.thin_max_abs_diff = pipeline.tflite_max_abs_diff = 0.0
    pipeline.bench_result = {"models": [
        {"path": path, "threads": 1, "median_us": float("nan") if key == "ssl" else 10.0,
         "p10_us": 1.0, "p90_us": float("nan"), "params": 5, "macs": 7}
        for key, path in paths.items()]}
    pipeline.argv = ["/somewhere/examples/lenet.py", "--quick", "--out_dir=a b"]
    results = pipeline.results()
    assert results["ssl"]["latency_us"] is None and results["speedup"] is None
    assert results["ssl"]["latency_p10_p90_us"] == {1: (1.0, None)}
    assert results["command"] == "python -m examples.lenet --quick '--out_dir=a b'"
    assert results["unused_accuracy_change"] is None  # all training images were used


@pytest.mark.parametrize("command, expected", [
    ("python -m examples.lenet --quick", "Command: `python -m examples.lenet --quick`"),
    ("python -m examples.lenet '--ssl_layers=`x`'",
     "Command: `` python -m examples.lenet '--ssl_layers=`x`' ``"),
    ("python -m x '--a=``'", "Command: ``` python -m x '--a=``' ```"),
])
def test_a_backtick_in_the_command_stays_inline_code(tmp_path, capsys, command, expected):
    """Was: `...`x`...` ended the code span at the first backtick of the command."""
    FakePipeline(tmp_path).write(_results({"conv1": 3, "ip1": 2}, command=command))
    md = (tmp_path / "lenet_fashion_mnist.md").read_text(encoding="utf-8")
    assert expected in md.splitlines()
    markdown_it = pytest.importorskip("markdown_it")
    tokens = markdown_it.MarkdownIt().parseInline(expected)[0].children
    assert [t.content for t in tokens if t.type == "code_inline"] == [command]


def test_a_command_over_several_lines_is_a_fenced_block():
    """A newline in an argument: "# ..." on the next line would be a heading, not code."""
    block = report.markdown_code("python -m x '--a=1\n# b'")
    assert block == "\n\n```\npython -m x '--a=1\n# b'\n```"


def test_long_layer_names_are_shortened_in_the_plots_only(tmp_path, capsys):
    """Was: a 250-character name ran off the filters plot ("Tight layout not applied")."""
    long = "block_" + "x" * 238 + "_conv"
    pipeline = FakePipeline(tmp_path, _model(conv=long))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline.write(_results({long: 3, "ip1": 2}))
    assert not [str(w.message) for w in caught if "layout" in str(w.message)]
    assert _files(tmp_path) == ALL_FILES
    assert report.plot_label(long) == "block_xxxxx\u2026xxxxxxx_conv"
    assert len(report.plot_label(long)) == 24 and report.plot_label("conv1") == "conv1"
    with open(tmp_path / "lenet_fashion_mnist.json", encoding="utf-8") as f:
        assert long in json.load(f)["ssl"]["filters_per_layer"]
    assert long in (tmp_path / "lenet_fashion_mnist.md").read_text(encoding="utf-8")


def _capture_command(monkeypatch):
    """common.Pipeline replaced by one whose run() keeps the report's command."""
    commands = []

    class Recorder(Pipeline):
        def run(self):
            commands.append(self.command())

    monkeypatch.setattr(common, "Pipeline", Recorder)
    return commands


def test_main_records_the_argv_it_parsed(tmp_path, monkeypatch):
    """Was: sys.argv (here pytest's command line) when main() got its own argv."""
    commands = _capture_command(monkeypatch)
    argv = ["lenet", "--quick", f"--out_dir={tmp_path}", "--seed=3"]
    assert common.main(lenet.RECIPE, argv) == 0
    assert commands == [f"python -m examples.lenet --quick --out_dir={tmp_path} --seed=3"]


def test_the_resnet_depth_flag_stays_in_the_recorded_command(tmp_path, monkeypatch):
    """examples.resnet parses --resnet_depth itself and hands main() the rest: the command
    recorded is still the whole of sys.argv."""
    commands = _capture_command(monkeypatch)
    argv = [resnet.__file__, "--resnet_depth=32", "--quick", f"--out_dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    assert resnet._run(argv) == 0
    assert commands == [f"python -m examples.resnet --resnet_depth=32 --quick "
                        f"--out_dir={tmp_path}"]
