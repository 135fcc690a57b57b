"""The measurement commands under benchmarks/: bad input, and one small run of lenet_widths."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "benchmarks.lenet_widths", *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--widths=20-50"], "--widths must be a comma-separated list of conv1-conv2-ip1 positive "
                         "integers, e.g. 20-50-500,5-26-105. Received: '20-50'"),
    (["--widths=20-0-500"], "Received: '20-0-500'"),
    (["--widths=4-16-64,4-16-64"], "--widths lists a width twice. Received: 4-16-64,4-16-64"),
    (["--runs=3"], "--runs must be >= 10. Received: 3"),
    (["--threads=x"], "--threads must be positive integers. Received: ['x']"),
])
def test_lenet_widths_bad_input_is_one_line_exit_2(args, message):
    proc = _run(*args, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmarks.lenet_widths: error: ")
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
