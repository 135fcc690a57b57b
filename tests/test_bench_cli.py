"""The command line `python -m tflite_bench`: outputs, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from tests.bench_helpers import fc_model, install_fake_adb
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


def test_bad_models_are_reported_and_others_measured(models, tmp_path):
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"garbage" * 10)
    p = cli(models["big"], tmp_path / "missing.tflite", corrupt, models["small"], "--runs", "4",
            "--warmup", "0", "--noprogress", "--json", tmp_path / "o.json")
    lines = one_line_error(p)
    assert len(lines) == 2
    assert "missing.tflite: No such .tflite file" in lines[0]
    assert "corrupt.tflite: The file is not a TFLite flatbuffer" in lines[1]
    r = json.loads((tmp_path / "o.json").read_text())
    assert [e["error"] is None for e in r["models"]] == [True, False, False, True]
    assert r["models"][3]["speedup_vs_first"] is not None


@pytest.mark.parametrize("args, match", [
    (["--bogus"], "Unknown command line flag 'bogus'"),
    (["--threads", "a"], "--threads and --cores take comma-separated integers"),
    (["--threads", "0"], "--threads must be positive"),
    (["--runs", "0"], "flag --runs=0"),
    (["--kernels", "gpu"], "flag --kernels=gpu"),
    (["--adb"], "--adb needs --benchmark_binary"),
    (["--cores", "0,4096"], "--cores must be cores this process may run on"),
    (["--json", "/no/such/dir/o.json"], "The output folder does not exist"),
])
def test_usage_errors(models, args, match):
    (line,) = one_line_error(cli(models["big"], *args))
    assert match in line


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
