"""`python -m ssl_keras.thin_cli`: thin a saved .keras model from the command line."""

import json
import os
import subprocess
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import ssl_keras  # noqa: E402
from ssl_keras import thin_cli  # noqa: E402
from tests.architectures import zero_filters  # noqa: E402
from tests.cli_helpers import run_main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _net():
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 2), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(12, 3, activation="relu", name="conv2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(20, activation="relu", name="fc1")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc2")(x), name="net")
    zero_filters(model, "conv1", [1, 4, 6])
    zero_filters(model, "conv2", [0, 5])
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("thin_cli") / "net.keras"
    _net().save(path)
    return path


def _cli(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, "ssl_keras.thin_cli", thin_cli.main, *args)


def test_thins_saves_and_writes_the_plan(saved, tmp_path, monkeypatch, capsys):
    out, plan_path = tmp_path / "small.keras", tmp_path / "plan.json"
    code, stdout, stderr = _cli(monkeypatch, capsys, saved, out, "--plan", plan_path)
    assert code == 0, stderr
    assert "conv1  Conv2D  2 -> 2      8 -> 5" in stdout
    assert "thin reproduces the zeroed model: max |difference|" in stdout
    model = keras.saving.load_model(saved)
    small = keras.saving.load_model(out)
    assert small.get_layer("conv1").filters == 5 and small.get_layer("conv2").filters == 10
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 2)).astype("float32")
    want = np.asarray(ssl_keras.zero_groups(model)(x))
    np.testing.assert_allclose(np.asarray(small(x)), want, atol=1e-5 * (1 + np.abs(want).max()))
    plan = json.loads(plan_path.read_text())
    again = ssl_keras.apply_plan(ssl_keras.zero_groups(model), plan)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(small(x)), atol=1e-6)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "small.keras"]


def test_max_channels(saved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "small.keras"
    code, stdout, stderr = _cli(monkeypatch, capsys, saved, out, "--json",
                                '--max_channels={"conv2": 5}', "--round_down=2")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["max_channels"] == {"conv2": 5} and report["max_abs_difference"] < 1e-5
    # conv2: 10 live filters capped at 5, then cut to 4 (a multiple of 2); conv1's 5 -> 4
    assert keras.saving.load_model(out).get_layer("conv2").filters == 4
    code, _, stderr = _cli(monkeypatch, capsys, saved, tmp_path / "x.keras",
                           "--max_channels=many")
    assert code == 2 and "--max_channels must be an integer >= 1" in stderr
    # null is "no cap" as in the examples, and {} names no layer (was: null refused here and
    # {} refused by the examples; found by probing)
    # dashed flag names, as tflite_bench takes them
    code, _, stderr = _cli(monkeypatch, capsys, saved, tmp_path / "d.keras",
                           '--max-channels={"conv2": 5}', "--round-down=2", "--no-crop-kernels")
    assert code == 0, stderr
    assert keras.saving.load_model(tmp_path / "d.keras").get_layer("conv2").filters == 4
    for value in ("null", "{}"):
        code, stdout, stderr = _cli(monkeypatch, capsys, saved, tmp_path / "n.keras", "--json",
                                    f"--max_channels={value}", "--overwrite")
        assert code == 0, stderr
        assert keras.saving.load_model(tmp_path / "n.keras").get_layer("conv2").filters == 10


def test_round_down_round_to_and_json(saved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "small.keras"
    code, stdout, stderr = _cli(monkeypatch, capsys, saved, out, "--json",
                                '--round_down={"conv2": 4}', "--round_to", "3")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["round_down"] == {"conv2": 4} and report["round_to"] == 3
    assert report["params"][1] < report["params"][0] and report["max_abs_difference"] < 1e-5
    small = keras.saving.load_model(out)
    # conv2: 10 live filters cut to 8 (a multiple of 4), then 9 (a multiple of 3, one zeroed
    # filter kept); conv1's 5 rounded up to 6
    assert small.get_layer("conv2").filters == 9
    assert small.get_layer("conv1").filters == 6


def test_bad_input_is_one_line_exit_2_and_writes_nothing(saved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.keras"
    existing = tmp_path / "exists.keras"
    existing.write_bytes(b"x")
    text = tmp_path / "notes.keras"
    text.write_text("not a zip")
    cases = {
        "usage:": [saved],
        "No such model file": [tmp_path / "missing.keras", out],
        "must be a Keras .keras file": [text, out],
        "already exists; pass --overwrite": [saved, existing],
        "OUT must end in .keras": [saved, tmp_path / "o.h5"],
        "OUT must name a file before its .keras suffix": [saved, tmp_path / ".keras"],
        "--plan must name a file before its .json suffix": [saved, out, "--plan",
                                                           tmp_path / ".json"],
        "OUT must be in an existing, writable directory": [saved, tmp_path / "no" / "o.keras"],
        "OUT is the input model itself": [saved, saved, "--overwrite"],
        "--plan must end in .json": [saved, out, "--plan", tmp_path / "p.txt"],
        "--round_to must be an integer >= 1 or a JSON object": [saved, out, "--round_to=abc"],
        # the library's messages in the flags' terms
        "--round_to must be an integer >= 1": [saved, out, "--round_to=0"],
        "--round_down names layers the model does not have": [saved, out,
                                                              '--round_down={"nope": 2}'],
        "--max_channels must be an integer >= 1 (no width is left above it)": [
            saved, out, "--max_channels=0"],
        "--threshold must be a finite number >= 0": [saved, out, "--threshold=-1"],
        "Unknown command line flag 'bogus'": [saved, out, "--bogus"],
    }
    for message, args in cases.items():
        code, stdout, stderr = _cli(monkeypatch, capsys, *args)
        assert code == 2, (message, stderr)
        assert stderr.count("\n") == 1 and message in stderr and "Traceback" not in stderr, (
            message, stderr)
        assert stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.keras", "notes.keras"]
    assert existing.read_bytes() == b"x" and zipfile.is_zipfile(saved)
    code, stdout, _ = _cli(monkeypatch, capsys, "--help")
    assert code == 0 and "python -m ssl_keras.thin_cli MODEL.keras OUT.keras" in stdout


def test_overwrite_replaces_and_keeps_the_mode(saved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "small.keras"
    out.write_bytes(b"old")
    out.chmod(0o640)
    code, _, stderr = _cli(monkeypatch, capsys, saved, out, "--overwrite")
    assert code == 0, stderr
    assert zipfile.is_zipfile(out) and out.stat().st_mode & 0o777 == 0o640


def test_command_line_in_a_subprocess_is_quiet(saved, tmp_path):
    """`python -m ssl_keras.thin_cli` prints its table and nothing of TensorFlow's start-up
    (no runpy warning either: the module is not imported by the package); an empty
    TF_CPP_MIN_LOG_LEVEL counts as unset (was: TensorFlow's C++ lines came back)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="")
    env["PYTHONPATH"] = REPO
    out = tmp_path / "small.keras"
    command = [sys.executable, "-m", "ssl_keras.thin_cli", str(saved), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert "parameters:" in done.stdout and out.exists()


def test_no_overwrite_even_when_the_file_appears_while_thinning(saved, tmp_path, monkeypatch,
                                                                capsys):
    """Found by probing. Was: OUT checked, then os.replace: a file another writer created in
    between was replaced, a dangling symlink too; and a failed second file (--plan) left the
    first one behind."""
    out, plan = tmp_path / "small.keras", tmp_path / "plan.json"
    real = thin_cli._keras_bytes

    def racing(model, folder):
        plan.write_text("another writer's")  # appears after the checks, before the writes
        return real(model, folder)

    monkeypatch.setattr(thin_cli, "_keras_bytes", racing)
    code, stdout, stderr = _cli(monkeypatch, capsys, saved, out, "--plan", plan)
    assert code == 2 and stdout == "" and "pass --overwrite to replace it" in stderr, stderr
    assert plan.read_text() == "another writer's" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # no temporary files
    monkeypatch.setattr(thin_cli, "_keras_bytes", real)
    dangling = tmp_path / "dangling.keras"
    dangling.symlink_to(tmp_path / "nowhere.keras")
    code, _, stderr = _cli(monkeypatch, capsys, saved, dangling)
    assert code == 2 and "--overwrite" in stderr and dangling.is_symlink()


def test_long_file_names_and_integer_inputs(tmp_path, monkeypatch, capsys):
    """Found by probing. Was: a legal 246-byte name failed on the temporary name (plus a
    prefix and suffix); integer inputs crashed thin (float probes fed to an Embedding /
    CategoryEncoding)."""
    ids = keras.Input((6,), dtype="int32", name="ids")
    tokens = keras.layers.Embedding(3, 4, name="embed")(ids)  # ids must stay below 3
    encoded = keras.layers.CategoryEncoding(5, output_mode="one_hot")(ids)
    x = keras.layers.Concatenate()([keras.layers.Flatten()(tokens),
                                    keras.layers.Flatten()(encoded)])
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(x)
    net = keras.Model(ids, keras.layers.Dense(2, name="out")(hidden))
    zero_filters(net, "hidden", [0, 3])
    model_path = tmp_path / "ids.keras"
    net.save(model_path)
    out = tmp_path / ("b" * 240 + ".keras")
    code, stdout, stderr = _cli(monkeypatch, capsys, model_path, out)
    assert code == 0, stderr
    assert "random ids ids in [0, 2)" in stdout  # not only Embeddings read them: 0 / 1
    assert keras.saving.load_model(out).get_layer("hidden").units == 4
    small = ssl_keras.thin(net)  # the library call the command line makes
    x = np.random.default_rng(0).integers(0, 3, (4, 6)).astype("int32")
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(ssl_keras.zero_groups(net)(x)),
                               atol=1e-6)


def test_models_the_command_cannot_load_say_what_to_do(tmp_path, monkeypatch, capsys):
    """Found by probing: a Lambda model got Keras's advice to pass safe_mode=False "to the
    loading function", which no flag allows; a custom class got a bare deserialisation error."""

    inp = keras.Input((4,))
    lam = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2.0)(inp)))
    lam.save(tmp_path / "lambda.keras")
    code, stdout, stderr = _cli(monkeypatch, capsys, tmp_path / "lambda.keras",
                                tmp_path / "o.keras")
    assert (code, stdout, stderr.count("\n")) == (2, "", 1), stderr
    assert "holds Python code (a Lambda layer)" in stderr
    assert "keras.saving.load_model(path, safe_mode=False)" in stderr

    @keras.saving.register_keras_serializable(package="probe_only")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    custom = keras.Model(inp, keras.layers.Dense(2)(Scale()(inp)))
    custom.save(tmp_path / "custom.keras")
    keras.saving.get_custom_objects().pop("probe_only>Scale")
    code, stdout, stderr = _cli(monkeypatch, capsys, tmp_path / "custom.keras",
                                tmp_path / "o.keras")
    assert (code, stdout, stderr.count("\n")) == (2, "", 1), stderr
    assert "A custom layer must be importable to load" in stderr
    assert not (tmp_path / "o.keras").exists()
