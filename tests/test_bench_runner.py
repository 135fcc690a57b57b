"""tflite_bench.runner: statistics (NumPy oracle), the paired bootstrap, MAC ratios, and the
side-by-side benchmark on tiny hand-built models (schema, error entries; no timing
assertions)."""

import json
import os

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb

from tests.bench_helpers import build_tflite, fc_model
from tflite_bench import benchmark, model_info, summarize
from tflite_bench.report import plot_png, to_markdown, write_outputs
from tflite_bench.runner import (
    ENTRY_KEYS,
    add_ratios,
    display_names,
    machine_info,
    speedup_ci,
)

TOP_KEYS = {"schema_version", "machine", "settings", "models"}
NUMERIC = ("size_bytes", "params", "macs", "threads", "median_us", "p10_us", "p90_us",
           "mean_us", "std_us", "min_us", "runs", "init_ms", "first_us", "speedup_vs_first",
           "mac_ratio_vs_first", "efficiency")


def test_summarize_matches_numpy():
    t = np.random.default_rng(3).gamma(2.0, 10.0, 57)
    s = summarize(list(t))
    assert s["median_us"] == pytest.approx(np.median(t))
    assert s["p10_us"] == pytest.approx(np.percentile(t, 10))
    assert s["p90_us"] == pytest.approx(np.percentile(t, 90))
    assert s["mean_us"] == pytest.approx(t.mean())
    assert s["std_us"] == pytest.approx(t.std())
    assert s["min_us"] == pytest.approx(t.min())
    assert s["runs"] == 57


def test_summarize_empty():
    with pytest.raises(ValueError, match="No times to summarize"):
        summarize([])


def test_speedup_ci_contains_true_ratio_and_is_ordered():
    rng = np.random.default_rng(0)
    base = [list(100 + rng.normal(0, 2, 10)) for _ in range(20)]
    other = [list(50 + rng.normal(0, 1, 10)) for _ in range(20)]
    lo, hi = speedup_ci(base, other, resamples=300, seed=1)
    assert lo <= hi
    assert lo < 2.0 < hi
    point = np.median(np.concatenate(base)) / np.median(np.concatenate(other))
    assert lo <= point <= hi


def test_speedup_ci_paired_rounds_cancel_shared_noise():
    # every round is slowed by the same factor for both models: the paired ratio is exact
    factors = np.linspace(1.0, 3.0, 12)
    base = [[200.0 * f] * 5 for f in factors]
    other = [[100.0 * f] * 5 for f in factors]
    lo, hi = speedup_ci(base, other, resamples=200)
    assert lo == pytest.approx(2.0, rel=0.15) and hi == pytest.approx(2.0, rel=0.15)


def test_speedup_ci_errors():
    with pytest.raises(ValueError, match="same, non-zero number of rounds. Received: 2 and 1"):
        speedup_ci([[1.0], [1.0]], [[1.0]])
    with pytest.raises(ValueError, match=r"`confidence` must be in \(0, 1\). Received"):
        speedup_ci([[1.0]], [[1.0]], confidence=1.5)


def test_add_ratios_oracle():
    e = add_ratios([
        {"path": "a", "threads": 1, "macs": 1000, "speedup_vs_first": 1.0},
        {"path": "a", "threads": 2, "macs": 1000, "speedup_vs_first": 1.0},
        {"path": "b", "threads": 1, "macs": 250, "speedup_vs_first": 3.0},
        {"path": "b", "threads": 2, "macs": 250, "speedup_vs_first": None},
    ])
    assert e[2]["mac_ratio_vs_first"] == 4.0 and e[2]["efficiency"] == 0.75
    assert e[3]["mac_ratio_vs_first"] == 4.0 and "efficiency" not in e[3]


def test_machine_info_keys():
    m = machine_info()
    assert {"cpu", "cores", "python", "litert"} <= set(m)
    assert m["cores"] >= 1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("runner")
    big = fc_model(d / "big.tflite", 64, 32, seed=1)
    small = fc_model(d / "small.tflite", 64, 8, seed=2)
    # weights (4, 9) against an input of 8: fails in allocate_tensors
    opts = fb.FullyConnectedOptionsT()
    bad = build_tflite(
        d / "bad_alloc.tflite",
        [((1, 8), fb.TensorType.FLOAT32),
         ((4, 9), fb.TensorType.FLOAT32, np.ones((4, 9), np.float32)),
         ((1, 4), fb.TensorType.FLOAT32)],
        [(fb.BuiltinOperator.FULLY_CONNECTED, [0, 1, -1], [2],
          fb.BuiltinOptions.FullyConnectedOptions, opts)], [0], [2])
    corrupt = d / "corrupt.tflite"
    corrupt.write_bytes(b"\0\0\0\0TFL3" + b"\xff" * 20)
    return {"big": big, "small": small, "bad": bad, "corrupt": corrupt, "dir": d}


@pytest.fixture(scope="module")
def result(models):
    return benchmark([models["big"], models["small"]], threads=(1, 2), runs=12, warmup=2,
                     round_size=4, progress=False, resamples=50)


def test_result_schema(result, models):
    assert set(result) == TOP_KEYS
    assert result["schema_version"] == 1
    assert {"cpu", "cores", "python", "litert"} <= set(result["machine"])
    s = result["settings"]
    assert s["threads"] == [1, 2] and s["runs"] == 12 and s["warmup"] == 2
    assert s["rounds"] == 3 and s["kernels"] == "xnnpack"
    assert s["workers_imported_tensorflow"] is False
    entries = result["models"]
    assert [(e["name"], e["threads"]) for e in entries] == [
        ("big.tflite", 1), ("big.tflite", 2), ("small.tflite", 1), ("small.tflite", 2)]
    for e in entries:
        assert tuple(e) == ENTRY_KEYS
        assert e["error"] is None
        for k in NUMERIC:
            assert isinstance(e[k], (int, float)), k
        assert e["runs"] == 12
        assert e["p10_us"] <= e["median_us"] <= e["p90_us"]
        assert len(e["speedup_ci"]) == 2 and e["speedup_ci"][0] <= e["speedup_ci"][1]
    assert entries[0]["speedup_vs_first"] == 1.0
    assert entries[2]["macs"] == 64 * 8 and entries[0]["macs"] == 64 * 32
    assert entries[2]["mac_ratio_vs_first"] == 4.0
    assert entries[2]["params"] == 64 * 8 + 8
    assert entries[2]["speedup_vs_first"] == pytest.approx(
        entries[0]["median_us"] / entries[2]["median_us"])
    assert entries[2]["efficiency"] == pytest.approx(entries[2]["speedup_vs_first"] / 4.0)
    json.loads(json.dumps(result))  # serialisable as is


def test_failures_are_reported_and_others_measured(models):
    r = benchmark([models["big"], models["corrupt"], models["bad"],
                   models["dir"] / "missing.tflite", models["small"]], threads=(1,), runs=4,
                  warmup=0, round_size=2, progress=False, resamples=20)
    by = {e["name"]: e for e in r["models"]}
    assert "corrupt TFLite flatbuffer" in by["corrupt.tflite"]["error"]
    assert "No such .tflite file" in by["missing.tflite"]["error"]
    assert "ValueError" in by["bad_alloc.tflite"]["error"] or \
        "RuntimeError" in by["bad_alloc.tflite"]["error"]
    assert by["bad_alloc.tflite"]["median_us"] is None
    assert by["small.tflite"]["error"] is None and by["small.tflite"]["runs"] == 4
    assert by["small.tflite"]["speedup_vs_first"] is not None


def test_failed_baseline_gives_no_speedup(models):
    r = benchmark([models["dir"] / "missing.tflite", models["small"]], runs=2, warmup=0,
                  progress=False, resamples=10)
    assert r["models"][1]["error"] is None
    assert r["models"][1]["speedup_vs_first"] is None


def test_reference_kernels_and_int_inputs(tmp_path):
    # an int8 ADD model runs with random int8 inputs under the reference kernels
    T = fb.TensorType
    p = build_tflite(tmp_path / "add.tflite",
                     [((1, 3), T.INT32), ((1, 3), T.INT32), ((1, 3), T.INT32)],
                     [(fb.BuiltinOperator.ADD, [0, 1], [2], fb.BuiltinOptions.AddOptions,
                       fb.AddOptionsT())], [0, 1], [2])
    r = benchmark([p], runs=3, warmup=0, kernels="reference", progress=False)
    assert r["models"][0]["error"] is None and r["settings"]["kernels"] == "reference"


@pytest.mark.parametrize("kwargs, match", [
    ({"paths": "one.tflite"}, "non-empty list of .tflite paths"),
    ({"paths": []}, "non-empty list of .tflite paths"),
    ({"threads": (0,)}, "`threads` must be a list of positive integers. Received: "
                        "threads=\\(0,\\)"),
    ({"runs": 0}, "`runs` and `round_size` must be integers >= 1"),
    ({"warmup": -1}, "`warmup` an integer >= 0"),
    ({"kernels": "gpu"}, "`kernels` must be one of"),
    ({"cores": []}, "`cores` must be a non-empty list"),
    # found by probing: were run as something else, or failed after the measurements
    ({"threads": "12"}, "`threads` must be a list of positive integers. Received: "
                        "threads='12'"),
    ({"threads": [1.5]}, "Received: threads=\\[1.5\\]"),
    ({"runs": 2.5}, "Received: runs=2.5"),
    ({"seed": -5}, "`seed` must be an integer in \\[0, 2\\*\\*32\\)"),
    ({"resamples": 0}, "`resamples` must be an integer >= 1. Received: resamples=0"),
    ({"confidence": 1.5}, "`confidence` must be a number in \\(0, 1\\). Received: "
                          "confidence=1.5"),
    ({"cores": [9999]}, "`cores` must be cores this process may run on"),
])
def test_benchmark_argument_errors(kwargs, match):
    args = {"paths": ["a.tflite"], **kwargs}
    with pytest.raises(ValueError, match=match):
        benchmark(**args, progress=False)


def test_display_names_tell_same_named_files_apart():
    assert display_names(["/a/x/m.tflite", "/b/x/m.tflite", "/b/y.tflite"]) == {
        "/a/x/m.tflite": "a/x/m.tflite", "/b/x/m.tflite": "b/x/m.tflite",
        "/b/y.tflite": "y.tflite"}


def test_same_file_names_in_two_folders_get_their_own_rows_and_bars(tmp_path, monkeypatch):
    """Was: two rows both named m.tflite, and one bar in the plot (matched by file name)."""
    for d, units in (("d1", 16), ("d2", 4)):
        (tmp_path / d).mkdir()
        fc_model(tmp_path / d / "m.tflite", 16, units, seed=1)
    r = benchmark([tmp_path / "d1" / "m.tflite", tmp_path / "d2" / "m.tflite"], runs=3,
                  warmup=0, progress=False, resamples=20)
    assert [e["name"] for e in r["models"]] == ["d1/m.tflite", "d2/m.tflite"]
    md = to_markdown(r)
    assert "| d1/m.tflite | 1 |" in md and "| d2/m.tflite | 1 |" in md
    import matplotlib.axes

    bars = []
    real = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda self, x, h, *a, **k: bars.append(len(x)) or real(self, x, h,
                                                                                *a, **k))
    plot_png(r)
    assert sum(bars) == 2


def test_markdown_and_plot(result, tmp_path):
    md = to_markdown(result)
    lines = md.splitlines()
    assert lines[2].startswith("| model | threads | median us")
    assert len([x for x in lines if x.startswith("| big.tflite") or
                x.startswith("| small.tflite")]) == 4
    assert "4.00" in md  # the MAC ratio of small vs big
    png = plot_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "r.json"
    write_outputs(result, json_path=out, markdown_path=tmp_path / "r.md",
                  plot_path=tmp_path / "r.png")
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(FileExistsError, match="The output file exists; pass --overwrite"):
        write_outputs(result, json_path=out)
    out.chmod(0o640)
    write_outputs(result, json_path=out, overwrite=True)
    assert out.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    with pytest.raises(FileNotFoundError, match="The output folder does not exist"):
        write_outputs(result, json_path=tmp_path / "no" / "r.json")


def test_markdown_shows_errors():
    r = {"machine": {}, "settings": {}, "models": [
        {"path": "x.tflite", "threads": 1, "error": "boom"}]}
    assert "| x.tflite | 1 | error: boom |" in to_markdown(r)


def test_markdown_escapes_pipes_and_names_the_interval():
    # a "|" in a file name or an error (a string input's dtype "|S0") shifted the columns;
    # confidence 0.995 was labelled "100% CI"
    r = {"machine": {}, "settings": {"confidence": 0.995}, "models": [
        {"path": "a|b.tflite", "threads": 1, "error": "dtype=|S0"},
        {"path": "c.tflite", "threads": 1, "median_us": 5.0}]}
    lines = to_markdown(r).splitlines()
    assert "speedup (99.5% CI)" in lines[2]
    cells = [len(line.replace("\\|", "").split("|")) for line in lines[2:]]
    assert len(set(cells)) == 1, lines
    assert "| a\\|b.tflite | 1 | error: dtype=\\|S0 |" in lines[4]


def test_corrupt_model_is_an_error_entry_not_an_exception(tmp_path):
    # an operator input that names a tensor the file does not have: model_info raised
    # IndexError, which benchmark() let through instead of reporting the model's error
    good = fc_model(tmp_path / "good.tflite", 8, 4)
    bad = build_tflite(
        tmp_path / "bad.tflite",
        [((1, 8), fb.TensorType.FLOAT32), ((1, 4), fb.TensorType.FLOAT32)],
        [(fb.BuiltinOperator.FULLY_CONNECTED, [0, 7, -1], [1],
          fb.BuiltinOptions.FullyConnectedOptions, fb.FullyConnectedOptionsT())], [0], [1])
    with pytest.raises(ValueError, match="not a valid TFLite model .*IndexError"):
        model_info(bad)
    r = benchmark([good, bad], runs=4, warmup=1, round_size=2, progress=False, resamples=20)
    assert r["models"][0]["error"] is None and r["models"][0]["median_us"] > 0
    assert "not a valid TFLite model" in r["models"][1]["error"]
    with pytest.raises(IsADirectoryError, match="not a directory"):
        model_info(tmp_path)


def test_inputs_with_dynamic_non_batch_dimensions_are_refused():
    # allocate_tensors makes a (-1, -1, -1, 3) input (1, 1, 1, 3): timed on a 1x1 image
    from tflite_bench._worker import _random_inputs

    dynamic = {"name": "x", "shape": np.array([1, 1, 1, 3]), "dtype": np.float32,
               "shape_signature": np.array([-1, -1, -1, 3])}
    with pytest.raises(ValueError, match="dynamic dimension other than the batch"):
        _random_inputs([dynamic], 0)
    batch_only = dict(dynamic, shape_signature=np.array([-1, 1, 1, 3]))
    assert _random_inputs([batch_only], 0)[0].shape == (1, 1, 1, 3)


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, tflite_bench; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'matplotlib', "
            "'tensorflow_model_optimization') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_integer_ids_stay_inside_a_small_embedding_table(tmp_path):
    """Random int32 ids are drawn below the smallest GATHER table dimension (was: [0, 10],
    and a 4-row Embedding failed with 'gather index out of bounds')."""
    import keras

    import ssl_keras

    ids = keras.Input((5,), dtype="int32", name="ids")
    x = keras.layers.Flatten()(keras.layers.Embedding(4, 3)(ids))
    path = tmp_path / "emb4.tflite"
    ssl_keras.export_tflite(keras.Model(ids, keras.layers.Dense(2)(x)), path)
    r = benchmark([path], runs=3, warmup=0, progress=False, resamples=20)
    assert r["models"][0]["error"] is None and r["models"][0]["median_us"] > 0


def test_a_single_round_gives_no_speedup_interval(models):
    """Was: a zero-width interval [x, x] from resampling one round."""
    r = benchmark([models["big"], models["small"]], runs=4, round_size=10, warmup=0,
                  progress=False, resamples=20)
    base, other = r["models"]
    assert base["speedup_ci"] == [1.0, 1.0] and other["speedup_ci"] is None
    assert other["speedup_vs_first"] > 0
    assert "| small.tflite | 1 |" in to_markdown(r)


def test_threads_may_be_a_generator(models):
    r = benchmark([models["small"]], threads=(t for t in (1, 2)), runs=3, warmup=0,
                  progress=False, resamples=10)
    assert [e["threads"] for e in r["models"]] == [1, 2]


def test_write_files_takes_the_longest_names(tmp_path):
    """A file name of 239-251 bytes (4-byte characters too) gets a temporary name within the file
    system's 255-byte limit (was: the whole name, then its first 64 characters, plus a prefix
    and suffix)."""
    from tflite_bench.report import write_files

    for name in ("b" * 236 + ".md", "\U0001F600" * 62 + ".md"):  # 4 bytes per character
        write_files({tmp_path / name: "x"})
        assert (tmp_path / name).read_text() == "x"
    assert len(list(tmp_path.iterdir())) == 2


def test_progress_redraws_on_a_terminal_and_writes_lines_elsewhere():
    """Found by probing: the bar's carriage returns went into log files too."""
    import io

    from tflite_bench.runner import _Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, tty = io.StringIO(), Terminal()
    for stream in (log, tty):
        bar = _Progress(40, True, stream)
        for i in range(40):
            bar.step(1, f"model {i}")
    assert "\r" not in log.getvalue()
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[0].startswith("[") and "  0%" not in lines[0]
    assert lines[-1].startswith("[" + "#" * 30 + "] 100% model 39")
    assert tty.getvalue().count("\r") == 40 and tty.getvalue().endswith("\n")


def test_speedup_ci_is_a_ratio_of_medians():
    """Found by mutation testing: means instead of medians passed every test. One outlier per
    round moves a mean, not a median: every resample gives 100 / 50."""
    base = [[100.0] * 9 + [10000.0] for _ in range(10)]
    other = [[50.0] * 10 for _ in range(10)]
    assert speedup_ci(base, other, resamples=100) == [2.0, 2.0]


def test_speedup_ci_is_the_central_percentile_interval_of_paired_round_resamples():
    """Found by mutation testing: a 90% interval passed as a 95% one. The oracle: resample
    round indices with replacement (numpy's default_rng(seed).integers), pool those rounds of
    both models, ratio of medians, the 2.5th and 97.5th percentiles."""
    r = np.random.default_rng(3)
    base = [list(100 + r.normal(0, 5, 4)) for _ in range(8)]
    other = [list(50 + r.normal(0, 5, 4)) for _ in range(8)]
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(500):
        idx = rng.integers(0, 8, 8)
        ratios.append(np.median(np.concatenate([base[i] for i in idx]))
                      / np.median(np.concatenate([other[i] for i in idx])))
    want = np.quantile(ratios, [0.025, 0.975])
    np.testing.assert_allclose(speedup_ci(base, other, resamples=500, seed=0), want)
