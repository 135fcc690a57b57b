"""Tests of the examples: the LeNet --quick run end to end, flags, resume checks, errors."""

import dataclasses
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from examples import common, convnet, datasets, lenet, mlp, models, resnet
from examples.config import UsageError, config_from_flags, define_flags
from examples.distill import distillation_loss
from examples.pipeline import PHASES, Pipeline
from examples.util import StepUnavailableError, atomic_write_text, need

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_FASHION = os.path.isdir(datasets.DEBIAN_FASHION_MNIST)


def _main(argv, capsys):
    code = common.main(lenet.RECIPE, ["lenet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FASHION, reason="needs the Debian package dataset-fashion-mnist")
def test_lenet_quick_end_to_end(tmp_path, capsys):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # the examples turn TensorFlow's oneDNN kernels on
    cmd = [sys.executable, "-m", "examples.lenet", "--quick", f"--out_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| SSL thinned (float32) |" in proc.stdout

    with open(tmp_path / "lenet_fashion_mnist_quick.json", encoding="utf-8") as f:
        result = json.load(f)
    assert result["dataset"] == "fashion_mnist"
    assert result["config"]["onednn"] is True
    assert "TensorFlow's oneDNN CPU kernels: on (TF_ENABLE_ONEDNN_OPTS='1')" in proc.stdout
    # the tfmot step asks tflite_bench.baselines for the element-wise file only
    assert sorted(os.listdir(tmp_path / "lenet_fashion_mnist_quick" / "tfmot")) == [
        "baselines.json", "lenet_dense.tflite",
        os.path.basename(result["tfmot"]["tflite"])]
    for key in ("baseline", "ssl"):
        for field in ("accuracy", "params", "macs", "latency_us"):
            assert result[key][field] is not None and result[key][field] > 0, (key, field)
    assert "filters_per_layer" in result["ssl"] and "tfmot" in result
    assert result["speedup"] > 0
    assert set(result["baseline"]["latency_us_by_threads"]) == {"1", "2"}

    dense, thin = result["baseline"]["filters_per_layer"], result["ssl"]["filters_per_layer"]
    assert dense["conv1"] == 20 and dense["conv2"] == 50
    assert sum(thin.values()) < sum(dense.values()), (dense, thin)
    assert result["ssl"]["params"] < result["baseline"]["params"]
    assert result["ssl"]["macs"] < result["baseline"]["macs"]
    # --quick is a rough result, not a smoke test only: both models learn (10 classes; it
    # printed 85.05% -> 82.85% here), and every layer but the output loses units.
    assert result["baseline"]["accuracy"] > 0.6 and result["ssl"]["accuracy"] > 0.6
    assert all(thin[k] < dense[k] for k in ("conv1", "conv2", "ip1")), (dense, thin)

    # The thinned float32 TFLite file computes what the fine-tuned (thinned) Keras model does.
    import keras

    work = tmp_path / "lenet_fashion_mnist_quick"
    stripped = keras.saving.load_model(work / "finetune.keras", compile=False)
    assert not any("StructuredSparsity" in type(layer).__name__ for layer in stripped.layers)
    quick = lenet.RECIPE.quick
    data = datasets.load("fashion_mnist", max_train=quick["max_train"], max_test=64, seed=0)
    x = data.x_test[:64]
    expected = stripped.predict(x, verbose=0)
    from ssl_keras import predict_tflite

    (got,) = predict_tflite(str(work / "ssl_thinned_float32.tflite"), x).values()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert result["tflite_max_abs_diff"] < 1e-4 and result["thin_max_abs_diff"] < 1e-4
    # The validation accuracy in the JSON is the fine-tuned model's on the run's split.
    from examples.report import accuracy

    assert result["ssl"]["val_accuracy"] == pytest.approx(
        accuracy(stripped, data.x_val, data.y_val))
    assert 0.0 <= result["baseline"]["val_accuracy"] <= 1.0
    assert "Validation accuracy (Keras): dense " in proc.stdout
    # The table's accuracies are the float32 files' on the run's test images, as
    # ssl_keras.evaluate_tflite computes them.
    from ssl_keras import evaluate_tflite

    images = quick["max_test"]
    test = datasets.load("fashion_mnist", max_train=quick["max_train"], max_test=images, seed=0,
                         max_unused=images)  # as the pipeline: as many as the test images
    for key, name in (("baseline", "dense_float32"), ("ssl", "ssl_thinned_float32")):
        assert result[key]["accuracy"] == pytest.approx(evaluate_tflite(
            str(work / f"{name}.tflite"), test.x_test, test.y_test))
    # The accuracy change and its interval: the images that only one model gets right.
    change = result["accuracy_change"]
    assert change["images"] == images
    assert change["change"] == pytest.approx(result["ssl"]["accuracy"]
                                             - result["baseline"]["accuracy"], abs=1e-9)
    assert change["change"] == pytest.approx(
        (change["only_thinned_right"] - change["only_dense_right"]) / images)
    assert change["ci95"][0] <= change["change"] <= change["ci95"][1]
    assert "Test accuracy change (SSL thinned - dense, float32 TFLite): " in proc.stdout
    # --max_train left training images unused: the same change on as many of them as there
    # are test images, a second sample that no phase trained on.
    unused = result["unused_accuracy_change"]
    assert unused["images"] == images == len(test.x_unused)
    for key, name in (("baseline", "dense_float32"), ("ssl", "ssl_thinned_float32")):
        assert result[key]["unused_accuracy"] == pytest.approx(evaluate_tflite(
            str(work / f"{name}.tflite"), test.x_unused, test.y_unused))
    assert unused["change"] == pytest.approx(result["ssl"]["unused_accuracy"]
                                             - result["baseline"]["unused_accuracy"], abs=1e-9)
    assert f"Accuracy change on {images:,} training images that --max_train left unused" \
        in proc.stdout
    # examples.summary reads the run's folder: one run, its figures as the JSON has them.
    from examples import summary

    capsys.readouterr()
    assert summary.main(["summary", str(tmp_path), "--format=json"]) == 0
    (one,) = json.loads(capsys.readouterr().out)
    assert (one["example"], one["runs"], one["rows"][0]["seed"]) == ("lenet", 1, 0)
    assert one["mean"]["change"] == change["change"]
    assert one["mean"]["unused_change"] == unused["change"]
    assert one["rows"][0]["val_change"] == pytest.approx(
        result["ssl"]["val_accuracy"] - result["baseline"]["val_accuracy"], abs=1e-12)
    assert one["rows"][0]["widths"] == "-".join(str(v) for v in thin.values())

    for suffix in ("_filters.png", "_latency.png", "_conv1.png", ".md"):
        assert (tmp_path / f"lenet_fashion_mnist_quick{suffix}").stat().st_size > 0

    # A second run resumes from the phase checkpoints instead of training again.
    proc = subprocess.run(cmd + ["--notfmot", "--runs=10", "--warmup=1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for phase in PHASES:
        assert f"phase {phase}: resuming from" in proc.stdout


@pytest.mark.parametrize("argv, match", [
    (["--epochs=0"], r"--epochs must be >= 1. Received: --epochs=0"),
    (["--threads=1,x"], r"--threads must be a comma-separated list"),
    (["--threads=0"], r"--threads must be a comma-separated list"),
    (["--lr=-1"], r"--lr must be > 0"),
    (["--filters=0", "--channels=0"], r"At least one of --filters"),
    (["--validation_split=1.5"], r"--validation_split must be in \[0, 1\)"),
    (["--max_train=-3"], r"--max_train must be >= 0"),
    (["--dataset=svhn"], r"flag --dataset=svhn"),
    (["--nosuchflag"], r"Unknown command line flag 'nosuchflag'"),
    (["--ssl_layers={conv1"],
     r"--ssl_layers must be JSON \(.*\)\. Received: --ssl_layers='\{conv1'"),
    (["--ssl_layers=[1]"], r"--ssl_layers must map layer names to null or to \{structure"),
    (['--ssl_layers={"conv1": 2}'], r"--ssl_layers must map layer names"),
    (['--ssl_layers={"conv1": {"filter": 2}}'], r"structures among \('filters'"),
    (['--ssl_layers={"conv1": {"filters": -1}}'], r"Received: --ssl_layers="),
    (["--lr_schedule=step"], r"flag --lr_schedule=step"),
    (["--borders=-0.1"], r"--borders must be >= 0. Received: --borders=-0.1"),
    (["--distill=1.5"], r"--distill must be in \[0, 1\]. Received: --distill=1.5"),
    (["--distill_temperature=0"], r"--distill_temperature must be > 0"),
    (["--threads=2"], r"--threads must include 1: .* Received: --threads='2'"),
    (["--round_to=0"], r"--round_to must be an integer >= 1 or JSON mapping layer names to "
                       r"integers >= 1, e\.g\. 8 or '\{\"conv2\": 16\}'\. Received: "
                       r"--round_to='0'"),
    (["--round_to=eight"], r"Received: --round_to='eight'"),
    (["--round_to=2.5"], r"Received: --round_to='2\.5'"),
    (['--round_to={"conv2": 0}'], r"Received: --round_to='\{\"conv2\": 0\}'"),
    (['--round_to={"conv2": true}'], r"Received: --round_to="),
    (["--round_to=[]"], r"Received: --round_to='\[\]'"),
    (["stray"], r"unexpected arguments \(every setting is a --flag; see --help\)\. "
                r"Received: \['stray'\]"),
    (["--out_dir="], r"--out_dir must not be empty .* Received: --out_dir=''"),
    (["--data_dir="], r"--data_dir must not be empty"),
    (["--out_dir=/dev/null"], r"--out_dir must be a folder\. Received: --out_dir='/dev/null', "
                              r"a file"),
    (["--filters=nan"], r"--filters must be a finite number\. Received: --filters=nan"),
    (["--lr=inf"], r"--lr must be a finite number\. Received: --lr=inf"),
    (["--distill_temperature=inf"], r"--distill_temperature must be a finite number"),
    # found by probing: each trained, then stopped with a traceback
    (["--round_down=0"], r"--round_down must be an integer >= 1 or JSON mapping layer names "
                         r"to integers >= 1, e\.g\. 8 or '\{\"conv2\": 16\}'\. Received: "
                         r"--round_down='0'"),
    (["--seed=-1"], r"--seed must be in \[0, 2\*\*32\)\. Received: --seed=-1"),
    (["--seed=4294967296"], r"--seed must be in \[0, 2\*\*32\)"),
    (["--threads=1,1"], r"--threads must be a comma-separated list of different positive"),
    (['--ssl_layers={"conv1": {"filters": 1e999}}'], r"finite multiplier >= 0"),
    (['--ssl_layers={"conv1": {"filters": NaN}}'], r"finite multiplier >= 0"),
])
def test_bad_flags_print_one_line_and_exit_2(capsys, argv, match):
    code, err = _main(argv, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("lenet: error: ")
    assert __import__("re").search(match, err[0]), err


def test_help_lists_the_flags_and_exits_0(capsys, tmp_path):
    out = subprocess.run([sys.executable, "-m", "examples.lenet", "--help",
                          f"--out_dir={tmp_path}"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("LeNet-5 (Caffe")  # the example's docstring
    assert "--filters: Filter-wise" in out.stdout and "(default: '0.012')" in out.stdout
    ramp = out.stdout.split("  --max_channels_ramp: ")[1].split("\n  --")[0]
    assert "(default: '0.67')" in ramp
    assert '(default: \'{"conv1": 7, "conv2": 16, "ip1": 128}\')' in out.stdout
    assert "\nFlags:\n" in out.stdout and "examples." not in out.stdout.split("Flags:")[1]
    assert "--flagfile" not in out.stdout  # absl's own flags stay out
    assert os.listdir(tmp_path) == []  # nothing ran


def test_resnet_help_lists_its_depth_flag(tmp_path):
    out = subprocess.run([sys.executable, "-m", "examples.resnet", "--help"],
                         capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert "--resnet_depth: ResNet depth" in out.stdout and "--depth: Depth-wise" in out.stdout


def test_missing_data_dir_is_one_line_exit_2(capsys, tmp_path):
    code, err = _main([f"--out_dir={tmp_path}", f"--data_dir={tmp_path / 'none'}"], capsys)
    assert code == 2 and len(err) == 1
    assert "`data_dir` is not a directory" in err[0]


def test_resnet_depth_flag_errors():
    proc = subprocess.run([sys.executable, "-m", "examples.resnet", "--resnet_depth=21"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("resnet: error: --resnet_depth must be 6n + 2 with n >= 1 "
                                   "(20, 32, ...). Received: --resnet_depth=21")
    assert resnet._split_depth_flag(["x", "--resnet_depth=32", "--quick"]) == (32, ["x", "--quick"])


def test_quick_overrides_only_flags_not_given():
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", "--quick", "--ssl_epochs=3"])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.quick and cfg.max_train == 10000 and cfg.epochs == 3
    assert cfg.ssl_epochs == 3  # given explicitly: --quick does not override it
    assert cfg.threads == (1, 2)


@pytest.mark.parametrize("flag, key", [
    ("--filters=0.5", "filters"),
    # thin() runs before the fine-tuning phase, so round_to decides its checkpoint too.
    ("--round_to=8", "round_to"),
])
def test_resume_refuses_other_settings(tmp_path, flag, key):
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--out_dir={tmp_path}"])
    first = Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))
    first._prepare_work_dir()
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--out_dir={tmp_path}", flag])
    second = Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))
    with pytest.raises(UsageError, match=rf"other settings.*'{key}'.*Pass --fresh"):
        second._prepare_work_dir()
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--out_dir={tmp_path}", "--filters=0.5", "--fresh"])
    Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))._prepare_work_dir()
    with open(tmp_path / "lenet_fashion_mnist" / "config.json", encoding="utf-8") as f:
        assert json.load(f)["filters"] == 0.5


def test_resume_refuses_checkpoints_trained_on_one_repeated_batch_order(tmp_path):
    """Checkpoints from before examples.batches (their config.json has no batch_order) read as
    the one-order training they had, not as today's; resuming from them needs --fresh."""
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--out_dir={tmp_path}"])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.batch_order == "per_epoch" and cfg.training_key()["batch_order"] == "per_epoch"
    first = Pipeline(lenet.RECIPE, cfg)
    first._prepare_work_dir()
    path = tmp_path / "lenet_fashion_mnist" / "config.json"
    old = json.loads(path.read_text())
    del old["batch_order"]
    path.write_text(json.dumps(old))
    with pytest.raises(UsageError, match=r"other settings.*'batch_order': \('one_order', "
                                         r"'per_epoch'\).*Pass --fresh"):
        Pipeline(lenet.RECIPE, cfg)._prepare_work_dir()


def test_need_names_the_missing_piece():
    with pytest.raises(StepUnavailableError,
                       match=r"Step 'thin' needs ssl_keras.no_such_name, which this checkout"):
        need("ssl_keras", "no_such_name", "thin")
    with pytest.raises(StepUnavailableError, match=r"cannot be imported"):
        need("ssl_keras_missing_module", "thin", "thin")


def test_atomic_write_replaces_whole_file(tmp_path):
    path = str(tmp_path / "a.txt")
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert open(path, encoding="utf-8").read() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary file left behind


def test_atomic_write_gives_files_the_usual_mode(tmp_path):
    """New files get 0666 less the umask, replaced files keep their mode (was: mkstemp's
    0600, so results and checkpoints were readable by their owner only)."""
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "a.txt")
        atomic_write_text(path, "one")
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
        os.chmod(path, 0o640)
        atomic_write_text(path, "two")
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o640)
    finally:
        os.umask(old)


def test_pipeline_reestimates_batchnorm_and_logs_validation_accuracy(tmp_path, capsys):
    import types

    import keras

    fv = define_flags(resnet.recipe(20))
    fv(["resnet", f"--out_dir={tmp_path}", "--batch_size=16"])
    pipeline = Pipeline(resnet.recipe(20), config_from_flags(fv, resnet.recipe(20)))
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 2.0, size=(40, 3)).astype("float32")
    y = (x[:, 0] > 1.0).astype("int64")
    pipeline.data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x[:8], y_val=y[:8])
    keras.utils.set_random_seed(4)
    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Model(inputs, keras.layers.Dense(2)(bn(inputs)))
    pipeline._reestimate_batchnorm(model, "ssl")
    # 40 // 16 = 2 full batches: the moving mean is the mean of the 2 batch means.
    np.testing.assert_allclose(bn.moving_mean.numpy(), x[:32].mean(0), rtol=1e-5)
    out = capsys.readouterr().out
    assert "phase ssl: BatchNorm statistics of 1 layers re-estimated on 2 training batches; " \
           "validation accuracy " in out
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    pipeline._reestimate_batchnorm(plain, "ssl")  # no BatchNorm: nothing done, nothing logged
    assert capsys.readouterr().out == ""


def _zero_and_thin_a_small_lenet(cfg):
    """Pipeline.zero() on an apply_ssl LeNet 6-10-20 (threshold 1e-4), then thin; checks
    that thin reproduces the zeroed model and returns the thinned model."""
    import keras

    import ssl_keras

    pipeline = Pipeline(lenet.RECIPE, cfg)
    keras.utils.set_random_seed(0)
    pipeline.ssl = ssl_keras.apply_ssl(models.lenet(filters=(6, 10), units=20), filters=1e-3)
    pipeline.cfg = dataclasses.replace(pipeline.cfg, threshold=1e-4)
    pipeline.zero()
    small = ssl_keras.thin(pipeline.zeroed, 1e-4)
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(small(x), pipeline.zeroed(x), atol=1e-5)
    return small


def test_round_down_flag_reaches_zero_groups(tmp_path):
    """--round_down cuts the zeroed model's widths to multiples before thin (ConvNet's
    default: 16); thin of that model stays exact."""
    assert convnet.RECIPE.defaults["round_down"] == 16
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--out_dir={tmp_path}", '--round_down={"conv2": 4}'])
    small = _zero_and_thin_a_small_lenet(config_from_flags(fv, lenet.RECIPE))
    assert small.get_layer("conv2").filters == 8 and small.get_layer("conv1").filters == 6


def test_max_channels_flag_reaches_zero_groups(tmp_path):
    """--max_channels caps widths by group norm before thin (LeNet's default: conv1 7, conv2
    16, ip1 128); other recipes: no cap; thin of the capped model stays exact."""
    assert lenet.RECIPE.defaults["max_channels"] == {"conv1": 7, "conv2": 16, "ip1": 128}
    fv = define_flags(mlp.RECIPE)
    fv(["mlp"])
    assert config_from_flags(fv, mlp.RECIPE).max_channels is None
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--out_dir={tmp_path}", '--max_channels={"conv2": 7}'])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.training_key()["max_channels"] == {"conv2": 7}
    small = _zero_and_thin_a_small_lenet(cfg)
    assert small.get_layer("conv2").filters == 7 and small.get_layer("conv1").filters == 6
    for flag in ("max_channels", "round_to", "round_down"):  # {} names no layer, as in the
        fv = define_flags(lenet.RECIPE)  # library and thin_cli (was refused here)
        fv(["lenet", f"--{flag}={{}}"])
        assert getattr(config_from_flags(fv, lenet.RECIPE), flag) == {}
    for bad in ("0", '{"conv2": 0}', "[16]"):
        fv = define_flags(lenet.RECIPE)
        fv(["lenet", f"--max_channels={bad}"])
        with pytest.raises(UsageError, match="--max_channels must be an integer >= 1"):
            config_from_flags(fv, lenet.RECIPE)


def test_max_channels_ramp_reaches_the_budget_during_ssl(tmp_path):
    """--max_channels_ramp: the SSL phase itself ends at the --max_channels widths
    (WidthBudget), so zero() cuts nothing more; bad values are usage errors."""
    import types

    import keras

    import ssl_keras

    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--out_dir={tmp_path}", '--max_channels={"conv2": 4, "ip1": 6}',
        "--max_channels_ramp=0.5", "--ssl_epochs=2", "--batch_size=8", "--zero_every=2",
        "--threshold=1e-4", "--verbose=0", "--ssl_layers={}"])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.training_key()["max_channels_ramp"] == 0.5
    pipeline = Pipeline(lenet.RECIPE, cfg)
    pipeline._prepare_work_dir()
    rng = np.random.default_rng(0)
    pipeline.data = types.SimpleNamespace(
        x_train=rng.normal(size=(32, 28, 28, 1)).astype("float32"),
        y_train=rng.integers(0, 10, 32), x_val=np.zeros((0, 28, 28, 1), "float32"),
        y_val=np.zeros((0,), "int64"))
    keras.utils.set_random_seed(0)
    pipeline.dense = models.lenet(filters=(6, 10), units=20)
    pipeline.train_ssl()  # 8 steps: the budget is reached at step 4
    zeroed = ssl_keras.zero_groups(ssl_keras.strip_ssl(pipeline.ssl), 1e-4)
    small = ssl_keras.thin(zeroed, 1e-4)
    assert small.get_layer("conv2").filters == 4 and small.get_layer("ip1").units == 6
    assert small.get_layer("conv1").filters == 6
    for flags_, message in (
            (["--max_channels_ramp=-0.1"],
             r"must be in \(0, 1\] \(a fraction of the SSL phase\), or 0"),
            (["--max_channels_ramp=1.5"], r"must be in \(0, 1\]"),
            (["--max_channels=null", "--max_channels_ramp=0.5"], "needs --max_channels"),
            (["--max_channels_ramp=0.5", "--proximal"], "cannot be combined with --proximal")):
        fv = define_flags(lenet.RECIPE)
        fv(["lenet", *flags_])
        with pytest.raises(UsageError, match=message):
            config_from_flags(fv, lenet.RECIPE)


@pytest.mark.parametrize("flags_, ramp", [
    ([], 0.67),  # the LeNet recipe's default
    (["--max_channels_ramp=0"], None),
    (["--max_channels_ramp=0.5"], 0.5),
    (["--max_channels=null"], None),  # no caps: the recipe's ramp has nothing to ramp to
    (["--proximal"], None),  # proximal steps: no zeroing steps to cut with
    (['--max_channels={"conv2": 8}'], 0.67),
])
def test_the_lenet_recipe_ramps_to_its_caps_unless_told_otherwise(flags_, ramp):
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", *flags_])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.max_channels_ramp == ramp and cfg.training_key()["max_channels_ramp"] == ramp
    fv = define_flags(mlp.RECIPE)
    fv(["mlp", "--proximal"] if "--proximal" in flags_ else ["mlp"])
    assert config_from_flags(fv, mlp.RECIPE).max_channels_ramp is None  # no ramp by default


def test_ssl_layers_flag_replaces_the_recipes_multipliers():
    fv = define_flags(lenet.RECIPE)
    fv(["lenet"])
    assert config_from_flags(fv, lenet.RECIPE).ssl_layers == lenet.RECIPE.ssl_layers
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", '--ssl_layers={"conv1": {"filters": 3}, "ip2": null}'])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.ssl_layers == {"conv1": {"filters": 3}, "ip2": None}
    assert cfg.training_key()["ssl_layers"] == cfg.ssl_layers  # a resumed run must match it
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", "--filters=0", "--channels=0", "--borders=0.2",
        '--ssl_layers={"conv2": {"borders": 1.5}}'])
    cfg = config_from_flags(fv, lenet.RECIPE)  # borders alone is a valid SSL run
    assert cfg.borders == 0.2 and cfg.training_key()["borders"] == 0.2
    assert cfg.ssl_layers == {"conv2": {"borders": 1.5}}


def test_lr_schedule_cosine_decays_over_the_phase():
    import keras

    fv = define_flags(lenet.RECIPE)
    fv(["lenet", "--batch_size=10"])
    pipeline = Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))
    pipeline.data = types.SimpleNamespace(x_train=np.zeros((95, 1)))  # 10 steps/epoch
    schedule = pipeline._schedule(keras, 0.1, epochs=2)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(20)) == pytest.approx(0.0, abs=1e-7)  # 2 epochs of 10 steps
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", "--lr_schedule=constant"])
    pipeline = Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))
    assert pipeline._schedule(keras, 0.1, epochs=2) == 0.1


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FASHION, reason="needs the Debian package dataset-fashion-mnist")
def test_lenet_quick_frozen_finetune_then_thin(tmp_path):
    """--nofinetune_thinned: fine-tune the zeroed model with frozen groups, thin afterwards;
    with --distill (the fine-tuning learns from the dense model's logits)."""
    # TF_ENABLE_ONEDNN_OPTS set by the user is kept: here, the oneDNN kernels off
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
    cmd = [sys.executable, "-m", "examples.lenet", "--quick", f"--out_dir={tmp_path}",
           "--nofinetune_thinned", "--distill=0.5", "--notfmot", "--threads=1", "--runs=5",
           "--warmup=1",
           # A smoke test of the mechanics: 2,000 images, one epoch per phase, coefficients
           # large enough to zero groups in 28 SSL steps.
           "--max_train=2000", "--max_test=500", "--epochs=1", "--ssl_epochs=1",
           "--finetune_epochs=1", "--filters=2.5", "--channels=2.5"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TensorFlow's oneDNN CPU kernels: off (TF_ENABLE_ONEDNN_OPTS='0')" in proc.stdout
    assert "phase finetune: the zeroed model, zero groups frozen" in proc.stdout
    assert "phase finetune: distillation from the dense model, alpha=0.5, T=4.0" in proc.stdout
    with open(tmp_path / "lenet_fashion_mnist_quick.json", encoding="utf-8") as f:
        result = json.load(f)
    assert result["thin_max_abs_diff"] < 1e-4 and result["tflite_max_abs_diff"] < 1e-4
    assert result["config"]["onednn"] is False
    import keras

    work = tmp_path / "lenet_fashion_mnist_quick"
    finetuned = keras.saving.load_model(work / "finetune.keras", compile=False)
    thinned = keras.saving.load_model(work / "thinned.keras", compile=False)
    assert finetuned.get_layer("conv1").filters == 20  # full size, zero groups frozen
    assert thinned.get_layer("conv1").filters == result["ssl"]["filters_per_layer"]["conv1"]
    assert result["ssl"]["params"] < result["baseline"]["params"]


def test_distillation_loss_matches_numpy_oracle():
    rng = np.random.default_rng(0)
    labels = np.array([0, 2, 1, 2])
    teacher = rng.normal(size=(4, 3)) * 3
    student = rng.normal(size=(4, 3)) * 3
    packed = np.concatenate([labels[:, None], teacher], 1).astype("float32")
    alpha, t = 0.7, 4.0

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ce = -log_softmax(student)[np.arange(4), labels]
    p = np.exp(log_softmax(teacher / t))
    kl = (p * (log_softmax(teacher / t) - log_softmax(student / t))).sum(1)
    want = (1 - alpha) * ce + alpha * t * t * kl
    got = distillation_loss(alpha, t)(packed, student.astype("float32"))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    # alpha 0 is plain cross-entropy; the student equal to the teacher has KL 0.
    np.testing.assert_allclose(
        np.asarray(distillation_loss(0.0, t)(packed, student.astype("float32"))), ce,
        rtol=1e-5)
    same = distillation_loss(1.0, t)(packed, teacher.astype("float32"))
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-5)


@pytest.mark.parametrize("value, expected", [("1", 1), ("8", 8), ('{"conv2": 16}', {"conv2": 16}),
                                             (' {"conv1": 8, "ip1": 4} ', {"conv1": 8, "ip1": 4})])
def test_round_to_flag_takes_thins_two_forms(value, expected):
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", f"--round_to={value}"])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.round_to == expected and cfg.training_key()["round_to"] == expected


@pytest.mark.skipif(not HAVE_FASHION, reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.parametrize("flag, shown", [('--round_to={"conv3": 8}', "--round_to"),
                                         ('--round_down={"conv3": 8}', "--round_down"),
                                         ('--ssl_layers={"conv3": null}', "--ssl_layers")])
def test_unknown_layer_names_fail_before_training(tmp_path, capsys, flag, shown):
    code, err = _main([flag, f"--out_dir={tmp_path}", "--max_train=500"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0] == (f"lenet: error: {shown} names layers that lenet does not have or that "
                      "have no kernel to prune. Expected names among ['conv1', 'conv2', "
                      "'ip1', 'ip2']. Received: ['conv3']")
    assert not os.listdir(tmp_path)  # nothing trained, nothing written


@pytest.mark.skipif(not HAVE_FASHION, reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.parametrize("flag", ['--ssl_layers={"flatten": {"filters": 1}}',
                                  '--round_to={"pool1": 8}', '--round_down={"input": 16}'])
def test_layer_names_without_a_kernel_fail_before_training(tmp_path, capsys, flag):
    # were accepted silently; --ssl_layers then trained without the recipe's multipliers
    code, err = _main([flag, f"--out_dir={tmp_path}", "--max_train=500"], capsys)
    assert code == 2 and len(err) == 1 and "have no kernel to prune" in err[0]
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(not HAVE_FASHION, reason="needs the Debian package dataset-fashion-mnist")
@pytest.mark.parametrize("flags_, message", [
    (["--depth=0.5"], "lenet: error: --depth penalises residual branches, and lenet has no Add "
                      "layer. Expected --depth=0 (or an architecture with residual blocks: "
                      "examples.resnet). Received: --depth=0.5"),
    (["--ssl_layers={\"conv2\": {\"filters\": 1, \"depth\": 1}}"],
     "lenet: error: --ssl_layers gives a depth multiplier to layers that are not Add layers: "
     "depth groups are residual branches, keyed by their Add. Expected depth on names among "
     "(none). Received: ['conv2']")])
def test_a_depth_that_penalises_nothing_fails_before_training(tmp_path, capsys, flags_,
                                                              message):
    # Found by a docs audit: --depth as the only coefficient on LeNet (no Add) passed the
    # "at least one coefficient" check and trained the SSL phase with no penalty at all
    code, err = _main([*flags_, f"--out_dir={tmp_path}", "--max_train=500"], capsys)
    assert (code, err) == (2, [message])
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(not HAVE_FASHION, reason="needs the Debian package dataset-fashion-mnist")
def test_the_layer_name_check_does_not_change_the_dense_models_initial_weights(tmp_path):
    import keras

    def first_weights(argv):
        fv = define_flags(lenet.RECIPE)
        fv(["lenet", f"--out_dir={tmp_path}", "--max_train=500", *argv])
        pipeline = Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))
        keras.utils.set_random_seed(pipeline.cfg.seed)
        pipeline.load_data()
        pipeline._check_layer_names(keras)
        model = lenet.RECIPE.build(input_shape=pipeline.data.input_shape,
                                   num_classes=pipeline.data.num_classes)
        return [np.array(w) for w in model.get_weights()]

    plain, checked = first_weights([]), first_weights(['--round_to={"conv2": 8}'])
    assert all(np.array_equal(a, b) for a, b in zip(plain, checked, strict=True))


def test_accuracy_change_ci_is_the_paired_bootstrap():
    from examples.report import accuracy_change_ci

    same = np.arange(200) % 3 != 0
    assert accuracy_change_ci(same, same) == (0.0, 0.0)  # no image changes: no spread
    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.9
    other = base.copy()
    other[rng.choice(400, 30, replace=False)] ^= True  # 30 images change their verdict
    low, high = accuracy_change_ci(base, other, resamples=4000)
    change = other.mean() - base.mean()
    assert low < change < high and high - low > 0.02
    # The same interval as resampling image indices explicitly (up to Monte Carlo noise).
    index = rng.integers(0, 400, size=(4000, 400))
    naive = np.percentile(other[index].mean(1) - base[index].mean(1), [2.5, 97.5])
    np.testing.assert_allclose([low, high], naive, atol=0.006)
    with pytest.raises(ValueError, match=r"same length\. Received: shapes \(3,\) and \(2,\)"):
        accuracy_change_ci(np.ones(3, bool), np.ones(2, bool))


def test_accuracy_change_ci_has_a_95_percent_width():
    """Found by mutation testing: a 90% interval passed the test above (its tolerance is wider
    than the difference). 100 of 1,000 images lost: sd of the change sqrt(0.09 / 1000), a 95%
    interval about 2 x 1.96 sd wide, a 90% one 2 x 1.64 sd."""
    from examples.report import accuracy_change_ci

    base = np.ones(1000, bool)
    other = np.arange(1000) % 10 != 0
    low, high = accuracy_change_ci(base, other, resamples=4000)
    sd = np.sqrt(0.1 * 0.9 / 1000)
    assert 2 * 1.8 * sd < high - low < 2 * 2.2 * sd


def _fit_data(n, batch_size, validation=0):
    """(data, cfg) for examples.pipeline._fit: n seeded 4-feature images, 2 classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = rng.integers(0, 2, n)
    data = types.SimpleNamespace(x_train=x, y_train=y, x_val=x[:validation],
                                 y_val=y[:validation])
    return data, types.SimpleNamespace(batch_size=batch_size, verbose=0, seed=0)


def test_a_diverged_phase_stops_with_the_learning_rate_named(tmp_path):
    import keras

    from examples.pipeline import _fit

    rng = np.random.default_rng(0)
    data, cfg = _fit_data(64, 16, validation=8)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(1e30),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    backup = str(tmp_path / "backup_dense")
    with pytest.raises(UsageError, match=r"Training diverged: the loss was nan in epoch 1 of "
                                         r"5\. .*smaller learning rate than --x_lr=1e\+30"):
        _fit(keras, model, data, cfg, 5, backup, "--x_lr=1e+30")
    assert not os.path.exists(backup)  # no backup of the diverged weights to resume from
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
    assert len(_fit(keras, model, data, cfg, 2, backup, "--x_lr=0.01").history["loss"]) == 2


def test_steps_per_execution_trains_the_same_weights(tmp_path, capsys):
    """--steps_per_execution (the dense and fine-tuning phases) is a speed setting: the same
    batches, the same updates, a different number of steps per compiled call. So it is not
    in training_key (a run resumes across it), and must not change a weight: checked here
    with BatchNorm, momentum, a cosine schedule and a step count (7 per epoch) it does not
    divide."""
    import keras

    from examples.pipeline import _compile, _fit

    data, cfg = _fit_data(53, 8)
    weights = []
    for steps in (1, 3, 32):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                                  keras.layers.BatchNormalization(),
                                  keras.layers.Activation("relu"), keras.layers.Dense(2)])
        _compile(keras, model, "sgd", keras.optimizers.schedules.CosineDecay(0.1, 14),
                 steps_per_execution=steps)
        assert model.steps_per_execution == steps
        start = model.get_weights()
        _fit(keras, model, data, cfg, 2, str(tmp_path / f"s{steps}" / "backup_dense"), "--lr")
        weights.append(model.get_weights())
        # every array trained (BatchNorm's moving statistics included)
        assert not any(np.array_equal(a, b) for a, b in zip(start, weights[-1], strict=True))
    for other in weights[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(weights[0], other, strict=True))
    fv = define_flags(lenet.RECIPE)
    fv(["lenet", "--steps_per_execution=4", f"--out_dir={tmp_path}"])
    cfg = config_from_flags(fv, lenet.RECIPE)
    assert cfg.steps_per_execution == 4 and "steps_per_execution" not in cfg.training_key()
    code, err = _main(["--steps_per_execution=0", f"--out_dir={tmp_path}"], capsys)
    assert (code, err) == (2, ["lenet: error: --steps_per_execution must be >= 1. Received: "
                               "--steps_per_execution=0"])


def test_ssl_phase_steps_per_execution_cuts_at_the_same_steps(tmp_path):
    """The SSL phase runs gcd(--steps_per_execution, --zero_every, steps per epoch) steps per
    compiled call: WidthBudget cuts at the same optimizer steps, so the weights are the same
    bit for bit as with one step per call (here 12 steps per epoch, --zero_every=4: 4 of 32;
    32 steps per call would cut at steps 12 and 24 instead of every 4th)."""
    import types

    import keras

    import ssl_keras

    rng = np.random.default_rng(0)
    data = types.SimpleNamespace(
        x_train=rng.normal(size=(48, 28, 28, 1)).astype("float32"),
        y_train=rng.integers(0, 10, 48), x_val=np.zeros((0, 28, 28, 1), "float32"),
        y_val=np.zeros((0,), "int64"))
    trained = {}
    for steps in ("1", "32", "32 --proximal"):
        fv = define_flags(lenet.RECIPE)
        extra = ["--proximal", "--max_channels_ramp=0"] if "proximal" in steps else []
        fv(["lenet", f"--out_dir={tmp_path / steps.replace(' ', '')}",
            '--max_channels={"conv2": 4, "ip1": 6}', "--max_channels_ramp=0.5",
            "--ssl_epochs=2", "--batch_size=4", "--zero_every=4", "--threshold=1e-4",
            "--verbose=0", "--ssl_layers={}", "--filters=0.01", "--channels=0.01",
            f"--steps_per_execution={steps.split()[0]}", *extra])
        pipeline = Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))
        pipeline._prepare_work_dir()
        pipeline.data = data
        keras.utils.set_random_seed(0)
        pipeline.dense = models.lenet(filters=(6, 10), units=20)
        pipeline.train_ssl()
        trained[steps] = pipeline.ssl
    assert trained["1"].steps_per_execution == 1
    assert trained["32"].steps_per_execution == 4
    assert trained["32 --proximal"].steps_per_execution == 1  # a proximal step after each
    one, four = (ssl_keras.strip_ssl(trained[k]).get_weights() for k in ("1", "32"))
    assert all(np.array_equal(a, b) for a, b in zip(one, four, strict=True))
    small = ssl_keras.thin(ssl_keras.zero_groups(ssl_keras.strip_ssl(trained["32"]), 1e-4),
                           1e-4)
    assert small.get_layer("conv2").filters == 4 and small.get_layer("ip1").units == 6


def test_unreadable_data_is_one_line_and_exit_2(tmp_path, capsys):
    """datasets.load's ValueErrors (a truncated IDX file, an empty training split) reach the
    command line as one line. Were: a traceback and exit 1."""
    from tests.test_datasets import _fake_idx_dir

    data = tmp_path / "data"
    data.mkdir()
    _fake_idx_dir(str(data), compress=False)
    images = data / datasets.IDX_FILES["x_train"]
    images.write_bytes(images.read_bytes()[:-100])
    code, err = _main([f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("lenet: error: data: IDX file is truncated or corrupt")
    code, err = _main(["--validation_split=0.99", "--max_train=50",
                       f"--out_dir={tmp_path / 'out2'}"], capsys)
    assert code == 2 and len(err) == 1  # without the Debian package: the dataset is missing
    if HAVE_FASHION:
        assert err == ["lenet: error: data: The validation split leaves no training images. "
                       "Received: validation_split=0.99 of 50 images"]


def test_ssl_layers_may_name_the_add_layers_of_depth_groups(tmp_path):
    # a residual branch's depth coefficient is keyed by its Add layer's name; the check of
    # layer names must let those through (and nothing else without a kernel)
    import keras

    rec = resnet.recipe(8)
    for ssl_layers, ok in (('{"stage1_block1_add": {"depth": 2.0}}', True),
                           ('{"stage1_block1_relu2": {"depth": 2.0}}', False)):
        fv = define_flags(rec)
        fv(["resnet8", f"--out_dir={tmp_path}", f"--ssl_layers={ssl_layers}"])
        pipeline = Pipeline(rec, config_from_flags(fv, rec))
        pipeline.data = types.SimpleNamespace(input_shape=(16, 16, 1), num_classes=10)
        if ok:
            pipeline._check_layer_names(keras)
        else:
            with pytest.raises(UsageError, match="have no kernel to prune"):
                pipeline._check_layer_names(keras)


def test_non_finite_weights_after_a_finite_loss_stop_the_phase(tmp_path):
    # --lr=1: the epoch's logged loss was finite (5e27) but the weights were NaN; the phase
    # was saved and the next phase failed, naming its own learning rate
    import keras

    from examples.pipeline import _fit

    data, cfg = _fit_data(32, 32)

    class PoisonLastStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.layers[0].kernel.assign(np.full((4, 2), np.nan, "float32"))

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(UsageError, match=r"Training diverged: the weights \['[^']*/kernel'\] "
                                         r"are not finite after epoch 1 of 1 .*--lr=1"):
        _fit(keras, model, data, cfg, 1, str(tmp_path / "backup_dense"), "--lr=1",
             [PoisonLastStep()])
    assert not os.path.exists(tmp_path / "backup_dense")  # nothing of the phase to resume from


def test_an_unreadable_backup_names_the_folder_to_delete(tmp_path):
    import keras

    from examples.pipeline import _fit

    data, cfg = _fit_data(32, 16)

    def model():
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        m.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    class Stop(keras.callbacks.Callback):  # a kill after epoch 2's backup
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    backup = tmp_path / "backup_ssl"
    with pytest.raises(KeyboardInterrupt):
        _fit(keras, model(), data, cfg, 4, str(backup), "--ssl_lr=0.01", [Stop()])
    latest = backup / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:100])  # killed while writing the last backup
    history = _fit(keras, model(), data, cfg, 4, str(backup), "--ssl_lr=0.01")
    assert len(history.history["loss"]) == 3  # resumed from the backup before: epoch 2 of 4
    # neither copy readable: one line naming the folder (was: a traceback on every rerun)
    _fit_killed = pytest.raises(KeyboardInterrupt)
    with _fit_killed:
        _fit(keras, model(), data, cfg, 4, str(backup), "--ssl_lr=0.01", [Stop()])
    for name in os.listdir(backup):
        if name.endswith(".h5") or name.endswith(".bkp"):
            (backup / name).write_bytes(b"broken")
    with pytest.raises(UsageError, match=r"The ssl phase's backup in .*backup_ssl cannot be "
                                         r"read .*delete .*backup_ssl to restart this phase"):
        _fit(keras, model(), data, cfg, 4, str(backup), "--ssl_lr=0.01")


def test_an_unreadable_settings_file_and_a_killed_runs_leftovers(tmp_path):
    def pipeline():
        fv = define_flags(lenet.RECIPE)
        fv(["lenet", f"--out_dir={tmp_path}"])
        return Pipeline(lenet.RECIPE, config_from_flags(fv, lenet.RECIPE))

    work = tmp_path / "lenet_fashion_mnist"
    work.mkdir()
    (work / "config.json").write_text("{not json")  # was: JSONDecodeError traceback
    with pytest.raises(UsageError, match=r"The settings file of the checkpoints, .*config.json, "
                                         r"cannot be read .*Pass --fresh"):
        pipeline()._prepare_work_dir()
    (work / "config.json").write_text(json.dumps({"unknown_setting": 1}))
    with pytest.raises(UsageError, match=r"'unknown_setting': \(1, None\)"):  # was: {}
        pipeline()._prepare_work_dir()
    (work / "config.json").unlink()
    (work / ".tmp_abc.keras").write_text("an atomic save a SIGKILL interrupted")
    (work / "tfmot_data.npz").write_text("the tfmot step's images, Ctrl-C")
    (work / "dense.keras").write_text("a finished phase")
    pipeline()._prepare_work_dir()
    assert sorted(os.listdir(work)) == ["config.json", "dense.keras"]


def test_images_the_architecture_cannot_take_are_one_line(tmp_path, capsys):
    from tests.test_datasets import _write_idx

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for key, name in datasets.IDX_FILES.items():
        n = 40 if "train" in key else 10
        array = (rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) if key.startswith("x")
                 else rng.integers(0, 10, n, dtype=np.uint8))
        _write_idx(str(data / name), array, False)
    code, err = _main([f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("lenet: error: data: lenet cannot take images of shape (8, 8, 1)")


def test_flags_may_be_spelled_with_dashes(tmp_path, capsys):
    """As tflite_bench's commands take them (found by probing: --finetune-epochs was an
    unknown flag here, --round-size a known one there)."""
    code, err = _main(["--finetune-epochs=-1", "--no-tfmot", f"--out_dir={tmp_path}"], capsys)
    assert (code, err) == (2, ["lenet: error: --finetune_epochs must be >= 1. Received: "
                               "--finetune_epochs=-1"])
    depth, rest = resnet._split_depth_flag(["resnet", "--resnet-depth=32", "--quick"])
    assert depth == 32 and rest == ["resnet", "--quick"]
