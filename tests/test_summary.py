"""examples.summary: one table for several runs (seeds) of an example."""

import json

import pytest

from examples import summary


def _result(seed, dense, ssl, change_ci=(-0.01, 0.0), unused=None, macs=2.0, speedup=5.0,
            example="lenet", dataset="fashion_mnist", **config):
    widths = {"conv1": 20, "conv2": 50, "ip1": 500, "ip2": 10}
    return {
        "example": example, "dataset": dataset,
        "config": {"seed": seed, "out_dir": f"runs/s{seed}", "filters": 0.015, **config},
        "baseline": {"accuracy": dense, "filters_per_layer": widths},
        "ssl": {"accuracy": ssl, "filters_per_layer": {**widths, "conv1": 7, "conv2": 16}},
        "accuracy_change": {"change": ssl - dense, "ci95": list(change_ci), "images": 10000},
        "unused_accuracy_change": None if unused is None else {
            "change": unused, "ci95": [unused - 0.004, unused + 0.004], "images": 10000},
        "mac_ratio": macs, "speedup": speedup, "speedup_ci_1thread": [speedup - 0.1, speedup],
    }


def _write(tmp_path, name, value):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return str(path)


def test_table_rows_means_and_counts(tmp_path, capsys):
    # seeds written out of order; a folder and a file; the folder's checkpoint config.json
    # (no example keys) is not a result; steps_per_execution (speed only; runs before it have
    # none) does not split the recipe
    a = _write(tmp_path, "s1/lenet_fashion_mnist.json", _result(1, 0.9101, 0.9070, unused=0.002,
                                                               steps_per_execution=32))
    _write(tmp_path, "s1/lenet_fashion_mnist/config.json", {"seed": 1})
    b = _write(tmp_path, "s0/lenet_fashion_mnist.json", _result(0, 0.9089, 0.9042, unused=-0.001,
                                                               macs=4.0, speedup=6.0))
    assert summary.main(["summary", str(tmp_path / "s1"), b, a, "--within=0.4"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "lenet on fashion_mnist, 2 run(s):"  # a given twice: one run
    assert lines[4] == ("| 0 | 90.89% | 90.42% | -0.47 [-1.00, +0.00] | -0.10 [-0.50, +0.30] "
                        "| 7-16-500-10 | 4.00x | 6.00x [5.90, 6.00] |")
    assert lines[5].startswith("| 1 | 91.01% | 90.70% | -0.31 [-1.00, +0.00] | +0.20 ")
    # the mean's t-interval over 2 runs: -0.39 +- 12.706 x 0.08 (changes -0.47, -0.31)
    assert lines[6] == ("| mean | 90.95% | 90.56% | -0.39 [-1.41, +0.63] | +0.05 |  | 3.00x "
                        "| 5.50x |")
    assert "Test change from -0.47 to -0.31 points." in out
    assert "Within 0.4 points of the dense baseline (test set): 1 of 2 runs." in out
    assert "Settings that differ" not in out


def test_json_groups_by_example_and_recipe(tmp_path, capsys):
    files = [_write(tmp_path, f"{i}.json", r) for i, r in enumerate([
        _result(0, 0.9, 0.9, filters=0.015), _result(1, 0.9, 0.89, filters=0.02),
        _result(0, 0.8, 0.81, example="mlp", widths=None)])]
    assert summary.main(["summary", *files, "--format=json", "--within=0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    # unlike runs are not averaged: two lenet recipes, in the order given
    assert [(s["example"], s["recipe"], s["runs"]) for s in out] == [
        ("lenet", {"filters": 0.015}, 1), ("lenet", {"filters": 0.02}, 1), ("mlp", {}, 1)]
    assert [s["runs_within"] for s in out] == [1, 0, 1]  # -1.0 misses 0.5
    assert out[1]["mean"]["change"] == pytest.approx(-0.01)
    assert out[0]["mean"]["unused_change"] is None and out[0]["mean_change_ci95"] is None
    assert out[1]["paired"]["seeds"] == []  # seed 1 against seed 0: nothing to pair
    assert "paired" not in out[0] and "paired" not in out[2]
    assert summary.main(["summary", files[1], files[0]]) == 0
    text = capsys.readouterr().out
    assert text.startswith("lenet on fashion_mnist with filters=0.02, 1 run(s):")
    assert "lenet on fashion_mnist with filters=0.015, 1 run(s):" in text
    assert "nothing to pair" in text


def _with_val(result, dense_val, ssl_val):
    result["baseline"]["val_accuracy"], result["ssl"]["val_accuracy"] = dense_val, ssl_val
    return result


def test_recipes_are_compared_seed_by_seed(tmp_path, capsys):
    base = [_with_val(_result(s, 0.90, 0.90 - d), 0.91, 0.91 - v)
            for s, d, v in [(0, 0.004, 0.003), (1, 0.005, 0.002), (2, 0.003, 0.004)]]
    # the other recipe: better by 0.1, 0.2 and 0.3 points; seed 2's dense model differs;
    # seed 3 has no partner
    other = [_with_val(_result(s, dense, 0.90 - d + g, max_channels_ramp=0.67, round_down=1),
                       0.91, 0.91 - v)
             for s, dense, d, v, g in [(0, 0.90, 0.004, 0.003, 0.001),
                                       (1, 0.90, 0.005, 0.002, 0.002),
                                       (2, 0.899, 0.003, 0.004, 0.003 - 0.001),
                                       (3, 0.90, 0.0, 0.0, 0.0)]]
    files = [_write(tmp_path, f"a{i}.json", r) for i, r in enumerate(base)]
    files += [_write(tmp_path, f"b{i}.json", r) for i, r in enumerate(other)]
    assert summary.main(["summary", *files, "--format=json"]) == 0
    first, second = json.loads(capsys.readouterr().out)
    # the first recipe's configs have no round_down or max_channels_ramp (saved before they
    # existed): read as what those runs did (round_down 1, no ramp), so only the ramp differs
    assert all("round_down" not in r["config"] for r in base)
    assert first["recipe"] == {"max_channels_ramp": None} and first["runs"] == 3
    assert second["recipe"] == {"max_channels_ramp": 0.67} and second["runs"] == 4
    assert first["mean"]["val_change"] == pytest.approx(-0.003)
    low, high = first["mean_change_ci95"]  # changes -0.4, -0.5, -0.3 points
    assert (low + high) / 2 == pytest.approx(-0.004)
    assert high - low == pytest.approx(2 * 4.302653 * 0.001 / 3 ** 0.5, rel=1e-5)
    paired = second["paired"]
    assert paired["seeds"] == [0, 1, 2]
    assert paired["change_diff"] == pytest.approx([0.001, 0.002, 0.003])
    assert paired["val_change_diff"] == pytest.approx([0.0, 0.0, 0.0])
    assert paired["mean_change_diff"] == pytest.approx(0.002)
    assert paired["mean_change_diff_ci95"] == pytest.approx(
        [0.002 - 4.302653 * 0.001 / 3 ** 0.5, 0.002 + 4.302653 * 0.001 / 3 ** 0.5], rel=1e-5)
    assert paired["same_dense_accuracy"] == [True, True, False]
    assert summary._settings(_result(5, 0.9, 0.9)) == summary._settings(
        _result(5, 0.9, 0.9, round_down=1, max_channels=None, max_channels_ramp=None))
    assert summary.main(["summary", *files]) == 0
    text = capsys.readouterr().out
    assert "| mean [95%] | +0.20 [-0.05, +0.45] | +0.00 [+0.00, +0.00] |" in text
    assert "The two runs of seed(s) 2 have different dense accuracies" in text
    assert "| 0 | 90.00% | 89.60% | -0.40 [-1.00, +0.00] | -0.30 | 7-16-500-10 |" in text


def test_deep_models_show_the_layers_kept():
    r = _result(0, 0.9, 0.9)
    r["baseline"]["filters_per_layer"] = {f"c{i}": 16 for i in range(20)}
    r["ssl"]["filters_per_layer"] = {f"c{i}": 16 for i in range(14)}
    assert summary.row(r, "x")["widths"] == "14 of 20 layers"


def test_residual_models_show_the_blocks_removed():
    """The examples' ResNet names (`stage1_block2_conv1`): blocks, not layers, are counted.
    Was: "16 of 22 layers" for a ResNet-20 without its 3 stage-1 blocks."""
    base = {"conv0": 16, "fc": 10}
    for stage in (1, 2, 3):
        for block in (1, 2, 3):
            base.update({f"stage{stage}_block{block}_conv{i}": 16 for i in (1, 2)})
    base["stage2_block1_proj"] = 32
    thin = {k: v for k, v in base.items() if not k.startswith("stage1_")}
    r = _result(0, 0.9, 0.9)
    r["baseline"]["filters_per_layer"], r["ssl"]["filters_per_layer"] = base, thin
    assert summary.row(r, "x")["widths"] == "3 of 9 blocks removed"
    thin.pop("stage3_block2_conv2")  # one conv of a block gone is not the block removed
    assert summary.row(r, "x")["widths"] == "3 of 9 blocks removed"


@pytest.mark.parametrize("args, match", [
    ([], "Expected one or more results JSON files"),
    (["nothere.json"], "No such file or folder"),
    (["{dir}"], "No example results in the folder"),
    (["{bad}"], "Cannot read"),
    (["{other}"], "is not an example's results JSON"),
    (["{ok}", "--within=-1"], "flag --within=-1"),
    (["{ok}", "--format=csv"], "flag --format=csv"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, match):
    (tmp_path / "empty").mkdir()
    names = {"dir": str(tmp_path / "empty"), "bad": str(tmp_path / "bad.json"),
             "other": _write(tmp_path, "other.json", {"seed": 0}),
             "ok": _write(tmp_path, "ok.json", _result(0, 0.9, 0.9))}
    (tmp_path / "bad.json").write_text("{not json")
    args = [a.format(**names) for a in args]
    assert summary.main(["summary", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("summary: error: ") and match in err[0], err
    assert captured.out == ""


def test_help(capsys):
    assert summary.main(["summary", "--help"]) == 0
    out = capsys.readouterr().out
    assert "python -m examples.summary" in out and "--within" in out
