"""python -m tflite_bench.demo: bad input (one line, exit 2, nothing created), the missing
`examples` package, and a small real run."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "tflite_bench.demo"


def _env_without_repo_root():
    """The environment minus any PYTHONPATH entry naming the repository root: the editable
    install maps ssl_keras and tflite_bench only, so `examples` is then not importable."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and os.path.realpath(p) != os.path.realpath(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(kept)
    return env


def _run(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", PROG, *args], cwd=cwd,
                          env=env or {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"{PROG}: error: ")
    return lines[0]


def test_missing_examples_is_one_line_exit_2_and_creates_nothing(tmp_path):
    env = _env_without_repo_root()
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; import tflite_bench; "
         "print(u.find_spec('examples') is None)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    # The situation under test: tflite_bench is installed, the examples package is not found
    # (an editable install maps only ssl_keras and tflite_bench).
    if probe.stdout.strip() != "True":
        pytest.skip("examples is importable outside the repository here (not an editable "
                    f"install of ssl_keras): {probe.stdout.strip()} {probe.stderr[-300:]}")
    out = tmp_path / "out" / "nested"
    line = _one_error_line(_run(f"--out={out}", cwd=tmp_path, env=env, timeout=120))
    assert "examples/models.py" in line and "No module named 'examples'" in line
    assert "from the repository root" in line and "python -m tflite_bench.demo --out DIR" in line
    assert f"Received: working directory {tmp_path}" in line
    assert sorted(os.listdir(tmp_path)) == []  # neither out/ nor out/nested


@pytest.mark.parametrize("args, message", [
    ([], "--out is required. Expected: python -m tflite_bench.demo --out DIR"),
    (["--out=OUT", "extra"], "unexpected arguments. Expected: python -m tflite_bench.demo "
                             "--out DIR [--seed 0] [--overwrite]. Received: ['extra']"),
    (["--out=OUT", "--seed=abc"], "flag --seed=abc: invalid literal for int()"),
    (["--out=OUT", "--seed=-1"], "flag --seed=-1: -1 is not an integer in the range"),
    (["--out=OUT", "--nosuch"], "Unknown command line flag 'nosuch'"),
    (["--out=FILE"], "--out must be a folder (existing or to create). Received: --out=FILE, "
                     "which is a file"),
    (["--out=FILE/a/b"], "--out must be a folder (existing or to create). Received: "
                         "--out=FILE/a/b, which lies under the file FILE"),
])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, args, message):
    (tmp_path / "file").write_text("keep")
    subst = {"OUT": str(tmp_path / "out"), "FILE": str(tmp_path / "file")}
    for key, value in subst.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    line = _one_error_line(_run(*args, timeout=120))
    assert message in line
    assert sorted(os.listdir(tmp_path)) == ["file"]
    assert (tmp_path / "file").read_text() == "keep"


def test_existing_output_is_refused_and_kept(tmp_path):
    (tmp_path / "lenet_3_12.tflite").write_bytes(b"keep")
    line = _one_error_line(_run(f"--out={tmp_path}", timeout=120))
    assert line == (f"{PROG}: error: the output exists; pass --overwrite. Received: "
                    f"{tmp_path / 'lenet_3_12.tflite'}")
    assert sorted(os.listdir(tmp_path)) == ["lenet_3_12.tflite"]
    assert (tmp_path / "lenet_3_12.tflite").read_bytes() == b"keep"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_in_place_of_a_model_is_refused_before_converting(tmp_path, monkeypatch,
                                                                   capsys, overwrite):
    from tflite_bench import demo

    monkeypatch.setattr(demo, "to_float32_tflite", lambda model: pytest.fail("converted"))
    (tmp_path / "lenet_3_12.tflite").mkdir()
    assert demo.main([PROG, f"--out={tmp_path}", *overwrite]) == 2
    assert capsys.readouterr().err == (
        f"{PROG}: error: a model file would replace a folder. Expected: --out without "
        f"lenet_20_50.tflite, lenet_3_12.tflite folders in it. Received: "
        f"{tmp_path / 'lenet_3_12.tflite'}\n")
    assert os.listdir(tmp_path) == ["lenet_3_12.tflite"]


def test_a_failed_conversion_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    from tflite_bench import demo

    calls = []

    def convert(model):
        calls.append(model.name)
        if len(calls) == 2:
            raise ValueError("conversion failed")
        return b"tflite"

    monkeypatch.setattr(demo, "to_float32_tflite", convert)
    out = tmp_path / "a" / "b"
    assert demo.main([PROG, f"--out={out}"]) == 2
    assert len(calls) == 2
    assert capsys.readouterr().err == f"{PROG}: error: conversion failed\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_that_appears_while_converting_is_kept_without_overwrite(
        tmp_path, monkeypatch, capsys, overwrite):
    """Found by probing. Was: the files were checked before converting, then written with
    overwrite forced on, so one created meanwhile was silently replaced."""
    from tflite_bench import demo

    def convert(model):
        (tmp_path / "lenet_3_12.tflite").write_bytes(b"precious")
        return b"tflite"

    monkeypatch.setattr(demo, "to_float32_tflite", convert)
    code = demo.main([PROG, f"--out={tmp_path}", *(["--overwrite"] if overwrite else [])])
    err = capsys.readouterr().err
    if overwrite:
        assert code == 0 and err == ""
        assert (tmp_path / "lenet_3_12.tflite").read_bytes() == b"tflite"
        assert (tmp_path / "lenet_20_50.tflite").read_bytes() == b"tflite"
    else:
        assert code == 2 and err.startswith(f"{PROG}: error: The output file exists")
        assert err.count("\n") == 1
        assert os.listdir(tmp_path) == ["lenet_3_12.tflite"]  # both or neither
        assert (tmp_path / "lenet_3_12.tflite").read_bytes() == b"precious"


def test_writes_the_two_lenets_quietly(tmp_path):
    from tflite_bench import count_macs, model_info

    out = tmp_path / "models"
    proc = _run(f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [str(out / "lenet_20_50.tflite"),
                                        str(out / "lenet_3_12.tflite")]
    assert "oneDNN" not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    assert sorted(os.listdir(out)) == ["lenet_20_50.tflite", "lenet_3_12.tflite"]
    assert count_macs(str(out / "lenet_20_50.tflite")) == 2_293_000
    assert count_macs(str(out / "lenet_3_12.tflite")) == 201_800
    assert model_info(str(out / "lenet_3_12.tflite"))["inputs"] == [
        {"shape": [1, 28, 28, 1], "dtype": "float32"}]
