"""The command line `python -m tflite_bench`: outputs, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ai_edge_litert import schema_py_generated as fb

from tests.bench_helpers import OPS, T, build_tflite, fc_model, install_fake_adb
from tflite_bench import _cli, report
from tflite_bench.runner import ENTRY_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "bench")


def cli(*args, env=None):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "tflite_bench", *map(str, args)],
                          capture_output=True, text=True, env=e, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return {"big": fc_model(d / "big.tflite", 64, 32), "small": fc_model(d / "small.tflite", 64, 8),
            "dir": d}


def one_line_error(p):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    return lines


def test_full_run_writes_outputs(models, tmp_path):
    p = cli(models["big"], models["small"], "--threads", "1,2", "--runs", "8", "--warmup", "1",
            "--round-size", "4", "--json", tmp_path / "o.json", "--markdown", tmp_path / "o.md",
            "--plot", tmp_path / "o.png", "--resamples", "20")
    assert p.returncode == 0, p.stderr
    assert "100%" in p.stderr  # the progress bar
    r = json.loads((tmp_path / "o.json").read_text())
    assert [tuple(e) for e in r["models"]] == [ENTRY_KEYS] * 4
    assert r["settings"]["runs"] == 8 and r["settings"]["threads"] == [1, 2]
    assert r["settings"]["workers_imported_tensorflow"] is False
    md = (tmp_path / "o.md").read_text()
    assert md == p.stdout
    assert "| small.tflite | 2 |" in md
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    # no silent overwrite
    q = cli(models["big"], "--runs", "2", "--json", tmp_path / "o.json")
    (line,) = one_line_error(q)
    assert "The output file exists; pass --overwrite" in line


def test_bad_models_are_refused_before_the_run(models, tmp_path):
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"garbage" * 10)
    p = cli(models["big"], tmp_path / "missing.tflite", corrupt, models["small"], "--runs", "4",
            "--warmup", "0", "--noprogress", "--json", tmp_path / "o.json")
    (line,) = one_line_error(p)
    assert line.startswith("tflite_bench: error: 2 models cannot be used: ")
    assert "missing.tflite: No such .tflite file" in line
    assert "corrupt.tflite: The file is not a TFLite flatbuffer" in line
    assert p.stdout == ""  # nothing was measured
    assert sorted(os.listdir(tmp_path)) == ["corrupt.tflite"]


def test_typo_in_a_model_path_writes_nothing(models, tmp_path):
    # review item 1: the typo was reported, but OUT.json was written (and the rerun refused)
    out = tmp_path / "OUT.json"
    p = cli("--runs=5", "--noprogress", f"--json={out}", models["big"],
            models["dir"] / "typo.tflite")
    (line,) = one_line_error(p)
    assert "typo.tflite: No such .tflite file" in line
    assert not out.exists() and p.stdout == ""
    p = cli("--runs=5", "--noprogress", f"--json={out}", models["big"], models["small"])
    assert p.returncode == 0, p.stderr
    assert len(json.loads(out.read_text())["models"]) == 2


def test_model_failing_at_run_time_writes_nothing(models, tmp_path):
    bad = _bad_alloc_model(tmp_path / "bad_alloc.tflite")
    p = cli("--runs=5", "--warmup=0", "--noprogress", "--json", tmp_path / "o.json",
            "--markdown", tmp_path / "o.md", models["small"], bad)
    (line,) = one_line_error(p)
    assert "bad_alloc.tflite: " in line and "nothing written: --json, --markdown" in line
    assert "| small.tflite | 1 |" in p.stdout  # the others are measured and shown
    assert "| bad_alloc.tflite | 1 | error: " in p.stdout
    assert sorted(os.listdir(tmp_path)) == ["bad_alloc.tflite"]


def _bad_alloc_model(path):
    """A flatbuffer that model_info reads but that fails in allocate_tensors."""
    opts = fb.FullyConnectedOptionsT()
    return build_tflite(
        path, [((1, 8), T.FLOAT32), ((4, 9), T.FLOAT32, np.ones((4, 9), np.float32)),
               ((1, 4), T.FLOAT32)],
        [(OPS.FULLY_CONNECTED, [0, 1, -1], [2], fb.BuiltinOptions.FullyConnectedOptions,
          opts)], [0], [2])


@pytest.mark.parametrize("args, match", [
    (["--bogus"], "Unknown command line flag 'bogus'"),
    (["--threads", "a"], "--threads takes comma-separated integers"),
    (["--threads", "0"], "--threads must be positive"),
    (["--runs", "0"], "flag --runs=0"),
    (["--kernels", "gpu"], "flag --kernels=gpu"),
    (["--adb"], "--adb needs --benchmark_binary"),
    (["--cores", "0,4096"], "--cores must be cores this process may run on"),
    (["--json", "/no/such/dir/o.json"], "The output folder does not exist"),
    (["--seed=-5"], "flag --seed=-5: -5 is not an integer in the range [0, 4294967295]"),
])
def test_usage_errors(models, args, match):
    (line,) = one_line_error(cli(models["big"], *args))
    assert match in line


def test_plot_without_matplotlib_is_refused_before_measuring(models, tmp_path):
    """Was: the whole benchmark ran, then a traceback, and no JSON either."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib (simulated)')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(fake.parent), ROOT]))
    p = subprocess.run([sys.executable, "-m", "tflite_bench", str(models["small"]), "--runs=3",
                        "--noprogress", f"--json={tmp_path / 'o.json'}",
                        f"--plot={tmp_path / 'o.png'}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    (line,) = one_line_error(p)
    assert line.startswith("tflite_bench: error: --plot needs matplotlib")
    assert p.stdout == "" and sorted(os.listdir(tmp_path)) == ["fake"]


def test_no_model():
    (line,) = one_line_error(cli())
    assert "No model given" in line


def test_no_xnnpack_means_builtin_kernels(models, tmp_path):
    p = cli(models["small"], "--no-xnnpack", "--runs", "2", "--warmup", "0", "--noprogress",
            "--json", tmp_path / "o.json")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "o.json").read_text())["settings"]["kernels"] == "builtin"


def test_parse_log(tmp_path):
    p = cli("--parse-log", os.path.join(DATA, "benchmark_model_percentiles.log"),
            "--json", tmp_path / "o.json")
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "o.json").read_text())
    assert r["settings"]["source"] == "benchmark_model"
    assert [e["name"] for e in r["models"]] == ["lenet_dense.tflite", "lenet_thin.tflite"]
    assert "| lenet_thin.tflite | 4 |" in p.stdout


def test_parse_log_errors(tmp_path):
    (line,) = one_line_error(cli("--parse-log", os.path.join(DATA,
                                                             "benchmark_model_failed.log")))
    assert "no 'Inference timings in us' line" in line
    (line,) = one_line_error(cli("--parse-log", tmp_path / "none.log"))
    assert "--parse_log" in line and "No such file" in line


def test_adb_without_adb(models, tmp_path):
    env = {"PATH": str(tmp_path)}  # no adb on PATH
    (line,) = one_line_error(cli(models["big"], "--adb", "--benchmark_binary", models["big"],
                                 env=env))
    assert "adb was not found on PATH" in line


def test_help():
    p = cli("--help")
    assert p.returncode == 0 and "--threads" in p.stdout and "python -m tflite_bench" in p.stdout


def test_pinned_cores(models, tmp_path):
    p = cli(models["small"], "--cores", "0", "--runs", "2", "--warmup", "0", "--noprogress",
            "--json", tmp_path / "o.json")
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "o.json").read_text())["settings"]
    assert s["cores"] == [0]
    if hasattr(os, "sched_setaffinity"):
        assert s["worker_affinity"] == [0]


def test_adb_with_fake_device(models, tmp_path):
    env = install_fake_adb(tmp_path)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"fake")
    p = cli(models["big"], models["small"], "--adb", "--benchmark-binary", binary,
            "--threads", "1,4", "--runs", "50", "--warmup", "5", "--json", tmp_path / "o.json",
            env=env)
    assert p.returncode == 0, p.stderr
    r = json.loads((tmp_path / "o.json").read_text())
    assert [(e["name"], e["threads"]) for e in r["models"]] == [
        ("big.tflite", 1), ("big.tflite", 4), ("small.tflite", 1), ("small.tflite", 4)]
    assert r["models"][2]["speedup_vs_first"] == 4.0
    assert "--num_runs=50 --warmup_runs=5" in (tmp_path / "adb.log").read_text()


# Output paths: every one is checked before the benchmark (review item 2).

@pytest.mark.parametrize("args, match", [
    (["--json=/proc/x"], "No file can be created in the output folder '/proc'"),
    (["--json={tmp}/a.json", "--markdown=/proc/x"], "Received: --markdown='/proc/x'"),
    (["--plot=/proc/x.png"], "Received: --plot='/proc/x.png'"),
    (["--json={tmp}/same.out", "--markdown={tmp}/./same.out"],
     "--json and --markdown name the same file"),
    (["--json={tmp}/d", "--overwrite"], "--json is an existing directory"),
    (["--json={tmp}/d"], "--json is an existing directory"),
    (["--markdown={tmp}/new/"], "--markdown ends with a path separator"),
    (["--json={model}", "--overwrite"], "--json is also an input of this run"),
])
def test_output_paths_checked_before_the_run(models, tmp_path, args, match):
    (tmp_path / "d").mkdir()
    args = [a.format(tmp=tmp_path, model=models["small"]) for a in args]
    p = cli("--runs=5", "--noprogress", models["small"], *args)
    (line,) = one_line_error(p)
    assert match in line and ".tmp-" not in line
    assert p.stdout == ""  # refused before the benchmark
    assert os.listdir(tmp_path) == ["d"]


def test_failed_write_removes_what_the_run_wrote(models, tmp_path, monkeypatch, capsys):
    from tflite_bench import __main__ as bench

    real_replace, real_link = os.replace, os.link

    def refusing(real):  # the Markdown file cannot be put into place (new: linked)
        def publish(src, dst):
            if str(dst).endswith(".md"):
                raise PermissionError(13, "Permission denied")
            return real(src, dst)
        return publish

    monkeypatch.setattr(report.os, "replace", refusing(real_replace))
    monkeypatch.setattr(report.os, "link", refusing(real_link))
    (tmp_path / "old.json").write_text("old")
    code = bench.main(["tflite_bench", str(models["small"]), "--runs=5", "--warmup=0",
                       "--noprogress", f"--json={tmp_path / 'o.json'}",
                       f"--markdown={tmp_path / 'o.md'}", f"--plot={tmp_path / 'o.png'}"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "| small.tflite | 1 |" in out  # the table is printed before the files are written
    (line,) = err.strip().splitlines()
    assert line.startswith("tflite_bench: error: Cannot write the output file (Permission "
                           "denied). Received: path=") and "o.md" in line
    assert os.listdir(tmp_path) == ["old.json"]  # o.json was written, then removed again


def test_write_files_is_all_or_nothing(tmp_path):
    (tmp_path / "keep.md").write_text("old")
    with pytest.raises(FileNotFoundError, match=r"Received: path='/proc/x'") as e:
        report.write_files({tmp_path / "a.json": "{}", tmp_path / "keep.md": "new",
                            "/proc/x": b"x"}, overwrite=True)
    assert ".tmp-" not in str(e.value)
    assert os.listdir(tmp_path) == ["keep.md"] and (tmp_path / "keep.md").read_text() == "old"


def test_write_files_restores_replaced_files_when_a_later_one_fails(tmp_path, monkeypatch):
    """With overwrite, a.json is replaced first; when keep.md then cannot be replaced, a.json
    gets its old content back (was: lost), new.png is removed, no backup is left behind."""
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "keep.md").write_text("old md")
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith("keep.md") and ".old-" not in str(src):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(report.os, "replace", failing)
    with pytest.raises(PermissionError, match=r"Cannot write the output file.*keep.md"):
        report.write_files({tmp_path / "new.png": b"png", tmp_path / "a.json": "new a",
                            tmp_path / "keep.md": "new md"}, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["a.json", "keep.md"]
    assert (tmp_path / "a.json").read_text() == "old a"
    assert (tmp_path / "keep.md").read_text() == "old md"
    monkeypatch.setattr(report.os, "replace", real)
    report.write_files({tmp_path / "a.json": "new a", tmp_path / "keep.md": "new md"},
                       overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["a.json", "keep.md"]
    assert (tmp_path / "a.json").read_text() == "new a"


# Empty values (review item 3).

@pytest.mark.parametrize("args, match", [
    (["--json=", "--markdown=", "--plot="], "--json is empty. Expected: a file path"),
    (["--markdown="], "--markdown is empty"),
    (["--plot="], "--plot is empty"),
    (["--threads="], "--threads is empty"),
    (["--cores="], "--cores is empty"),
])
def test_empty_values_are_refused(models, args, match):
    (line,) = one_line_error(cli("--runs=5", "--noprogress", models["small"], *args))
    assert match in line


def test_empty_parse_log_is_refused():
    (line,) = one_line_error(cli("--parse-log="))
    assert "--parse_log is empty" in line


# Duplicates (review item 5).

def test_same_model_twice_is_refused(models, tmp_path):
    same = os.path.join(os.path.dirname(models["small"]), ".", "small.tflite")
    for args in ([models["small"], models["small"]], [models["small"], same]):
        p = cli("--runs=5", "--noprogress", "--json", tmp_path / "o.json", *args)
        (line,) = one_line_error(p)
        assert "A model is given twice" in line and p.stdout == ""
    assert not (tmp_path / "o.json").exists()


def test_repeated_thread_count_is_refused(models):
    (line,) = one_line_error(cli("--runs=5", "--threads=1,1", models["small"]))
    assert "--threads lists 1 more than once" in line


def test_benchmark_api_refuses_duplicates(models):
    from tflite_bench import benchmark

    with pytest.raises(ValueError, match="lists the same model more than once"):
        benchmark([models["small"], str(models["small"])], runs=2)
    with pytest.raises(ValueError, match="lists a thread count more than once"):
        benchmark([models["small"]], threads=(1, 1), runs=2)


# Messages (review item 6).

def test_bad_cores_names_cores(models):
    (line,) = one_line_error(cli("--runs=5", "--cores=1,x", models["small"]))
    assert "--cores takes comma-separated integers. Received: --cores=1,x" in line
    assert "--threads" not in line


def test_no_dash_boolean_flags(models, tmp_path):
    (tmp_path / "o.json").write_text("old")
    p = cli("--runs=5", "--warmup=0", "--no-progress", "--no-overwrite", models["small"],
            "--json", tmp_path / "o.json")
    (line,) = one_line_error(p)  # --no-overwrite is understood: the file is refused
    assert "The output file exists; pass --overwrite" in line
    p = cli("--runs=5", "--warmup=0", "--no-progress", models["small"])
    assert p.returncode == 0, p.stderr
    assert "%" not in p.stderr  # no progress bar


def test_normalize_maps_no_dash_only_for_boolean_flags():
    from tflite_bench import demo
    from tflite_bench.__main__ import _normalize

    argv = ["p", "--no-progress", "--no_overwrite", "--no-runs", "--no-xnnpack", "--round-size=3",
            "--no-such-flag", "x.tflite", "--", "--no-progress"]
    assert _normalize(argv) == [
        "p", "--noprogress", "--nooverwrite", "--no_runs", "--kernels=builtin", "--round_size=3",
        "--no_such_flag", "x.tflite", "--", "--no-progress"]
    assert _cli.normalize(["p", "--no-progress"]) == ["p", "--no_progress"]  # no FlagValues
    fv = flags.FlagValues()
    flags.DEFINE_bool("verbose", True, "", flag_values=fv)
    flags.DEFINE_bool("no_verbose_log", False, "", flag_values=fv)  # a flag named no_...
    assert _cli.normalize(["p", "--no-verbose", "--no-verbose-log"], flag_values=fv) == [
        "p", "--noverbose", "--no_verbose_log"]
    # tflite_bench.demo keeps working, and takes --no-overwrite
    demo.FLAGS.unparse_flags()
    demo.FLAGS(_cli.normalize(["demo", "--out=x", "--no-overwrite"], flag_values=demo.FLAGS))
    assert demo.FLAGS.overwrite is False and demo.FLAGS.out == "x"
    demo.FLAGS.unparse_flags()


# A log without timings (review item 7).

def test_parse_log_without_timing_is_refused(tmp_path):
    log = tmp_path / "init_only.log"
    log.write_text("INFO: Graph: [/data/local/tmp/m.tflite]\n"
                   "INFO: Inference timings in us: Init: 5000\n")
    p = cli("--parse-log", log, "--json", tmp_path / "o.json", "--plot", tmp_path / "o.png")
    (line,) = one_line_error(p)
    assert "no inference time for run 1 of 1 (graph /data/local/tmp/m.tflite)" in line
    assert "Expected: 'Inference (avg): N'" in line
    assert sorted(os.listdir(tmp_path)) == ["init_only.log"]


def test_a_model_the_schema_reader_chokes_on_is_one_line(models, monkeypatch, capsys):
    """A corrupt flatbuffer can fail deep in the schema reader (IndexError, ...), not with
    OSError / ValueError: still one line, exit 2, before any work."""
    import tflite_bench.__main__ as cli_main

    def choke(path):
        raise IndexError("list index out of range")

    monkeypatch.setattr(cli_main, "model_info", choke)
    code = cli_main.main(["tflite_bench", str(models["big"]), "--runs", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "not a readable .tflite flatbuffer (IndexError: list index out of range)" in err[0]
