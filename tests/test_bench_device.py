"""tflite_bench.device: parsing benchmark_model logs (samples in tests/data/bench) and the adb
flow (a fake adb script stands in for the device; a real device test is skipped where adb or
a device is missing)."""

import glob
import os
import shutil
import subprocess

import pytest

from tests.bench_helpers import fc_model, install_fake_adb
from tflite_bench import parse_log
from tflite_bench.device import AdbError, parse_runs, run_adb
from tflite_bench.runner import ENTRY_KEYS

DATA = os.path.join(os.path.dirname(__file__), "data", "bench")


def _read(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return f.read()


def test_parse_runs_recent_format():
    runs = parse_runs(_read("benchmark_model_percentiles.log"))
    assert len(runs) == 2
    r = runs[0]
    assert r["graph"] == "/data/local/tmp/tflite_bench/lenet_dense.tflite"
    assert r["threads"] == 4 and r["num_runs"] == 200 and r["warmup_runs"] == 20
    assert r["use_xnnpack"] == "1"
    # the inference stat line, not the warmup one
    assert (r["count"], r["avg"], r["std"], r["min"], r["max"]) == (5954, 166.9, 11, 150, 402)
    assert (r["p5"], r["median"], r["p95"]) == (154, 165, 185)
    assert (r["init_us"], r["first_us"], r["warmup_avg_us"], r["inference_avg_us"]) == (
        3512, 612, 172.4, 166.9)
    assert runs[1]["graph"].endswith("lenet_thin.tflite") and runs[1]["median"] == 33


def test_parse_runs_old_format():
    (r,) = parse_runs(_read("benchmark_model_no_percentiles.log"))
    assert r["graph"] == "/data/local/tmp/mobilenet_v1_1.0_224.tflite"
    assert r["threads"] == 1 and r["num_runs"] == 50 and r["count"] == 50
    assert r["avg"] == 79732 and r["median"] is None
    assert r["init_us"] == 38467 and r["inference_avg_us"] == 79760.9
    assert r["first_us"] is None


def test_failed_log_is_rejected():
    with pytest.raises(ValueError, match="no 'Inference timings in us' line"):
        parse_runs(_read("benchmark_model_failed.log"))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(DATA, "*.log"))))
def test_every_sample_parses_or_is_rejected(path):
    text = open(path, encoding="utf-8").read()
    if path.endswith("_failed.log"):
        with pytest.raises(ValueError):
            parse_log(text)
    else:
        result = parse_log(text)
        assert all(tuple(e)[:len(ENTRY_KEYS)] == ENTRY_KEYS for e in result["models"])


def test_parse_log_result_with_local_models(tmp_path):
    dense = fc_model(tmp_path / "lenet_dense.tflite", 64, 32)
    thin = fc_model(tmp_path / "lenet_thin.tflite", 64, 8)
    r = parse_log(_read("benchmark_model_percentiles.log"), local_models=[dense, thin],
                  machine={"device": "test"})
    assert r["settings"]["source"] == "benchmark_model"
    assert r["settings"]["speedup_basis"] == "median"
    assert r["settings"]["kernels"] == "xnnpack" and r["settings"]["threads"] == [4]
    d, t = r["models"]
    assert d["macs"] == 64 * 32 and t["macs"] == 64 * 8
    assert d["median_us"] == 165 and d["mean_us"] == 166.9 and d["init_ms"] == 3.512
    assert d["p10_us"] is None and d["p5_us"] == 154
    assert t["speedup_vs_first"] == pytest.approx(165 / 33)
    assert t["mac_ratio_vs_first"] == 4.0
    assert t["efficiency"] == pytest.approx(165 / 33 / 4.0)
    assert d["speedup_ci"] is None  # one run per model: no interval


def test_parse_log_mean_basis_without_percentiles():
    r = parse_log(_read("benchmark_model_no_percentiles.log"))
    assert r["settings"]["speedup_basis"] == "mean"
    assert r["models"][0]["speedup_vs_first"] == 1.0
    assert r["models"][0]["macs"] is None


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    for name, value in install_fake_adb(tmp_path).items():
        monkeypatch.setenv(name, value)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    return {"log": tmp_path / "adb.log", "binary": binary, "dir": tmp_path}


def test_run_adb_with_fake_device(fake_adb):
    d = fake_adb["dir"]
    big = fc_model(d / "big.tflite", 32, 16)
    small = fc_model(d / "small.tflite", 32, 4)
    broken = fc_model(d / "broken.tflite", 8, 2)
    r = run_adb([big, small, broken], fake_adb["binary"], threads=(1, 2), runs=200, warmup=20)
    calls = fake_adb["log"].read_text().splitlines()
    assert any(c.startswith("push") and c.endswith("/benchmark_model") for c in calls)
    runs = [c for c in calls if "--graph=" in c]
    assert len(runs) == 6
    assert all("--num_runs=200" in c and "--warmup_runs=20" in c and "--use_xnnpack=true" in c
               for c in runs)
    assert r["machine"]["device"] == "FakePhone"
    assert r["settings"]["source"] == "benchmark_model (adb)"
    assert r["settings"]["kernels"] == "xnnpack" and r["settings"]["runs"] == 200
    ok = [e for e in r["models"] if not e["error"]]
    assert [(e["name"], e["threads"]) for e in ok] == [
        ("big.tflite", 1), ("big.tflite", 2), ("small.tflite", 1), ("small.tflite", 2)]
    assert ok[0]["path"] == str(big)  # local paths reported
    assert ok[2]["speedup_vs_first"] == 4.0 and ok[2]["mac_ratio_vs_first"] == 4.0
    failed = [e for e in r["models"] if e["error"]]
    assert len(failed) == 2 and "exit code 1" in failed[0]["error"]


def test_run_adb_no_device(fake_adb, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_STATE", "unknown")
    m = fc_model(fake_adb["dir"] / "m.tflite", 4, 2)
    with pytest.raises(AdbError, match="No device is ready.*Received: state='unknown'"):
        run_adb([m], fake_adb["binary"])


def test_run_adb_missing_adb(tmp_path):
    m = fc_model(tmp_path / "m.tflite", 4, 2)
    with pytest.raises(AdbError, match="adb was not found on PATH. Received: adb="):
        run_adb([m], m, adb="no-such-adb-binary")


def test_run_adb_missing_binary(fake_adb):
    m = fc_model(fake_adb["dir"] / "m.tflite", 4, 2)
    with pytest.raises(FileNotFoundError, match="No such file. Received: path="):
        run_adb([m], fake_adb["dir"] / "nope")


def _real_device():
    if shutil.which("adb") is None:
        return False
    try:
        p = subprocess.run(["adb", "get-state"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.stdout.strip() == "device"


@pytest.mark.skipif(not _real_device(), reason="adb or an Android device is missing")
@pytest.mark.skipif(not os.environ.get("BENCHMARK_MODEL_BINARY"),
                    reason="set BENCHMARK_MODEL_BINARY to a benchmark_model built for the device")
def test_real_device(tmp_path):
    m = fc_model(tmp_path / "m.tflite", 64, 16)
    r = run_adb([m], os.environ["BENCHMARK_MODEL_BINARY"], runs=20, warmup=2)
    assert r["models"][0]["error"] is None and r["models"][0]["mean_us"] > 0
