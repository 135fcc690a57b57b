"""One table for several runs of an example (seeds): `python -m examples.summary RESULTS...`.

A single run's accuracy change is resolved only to about +-0.4 points by a 10,000-image test
set (the 95% interval each example prints), and the seed moves it by as much: the spread over
seeds is what a recipe should be judged on. This reads the JSON files the examples write
(`<out_dir>/<name>_<dataset>.json`, or folders holding them) and prints, per example and
dataset and recipe, one row per run and a mean row: the float32 TFLite accuracies, the test
accuracy change with its 95% interval, the validation accuracy change (what a choice between
recipes should go by: the test set only reports), the change on the training images
`--max_train` left unused (when the runs have them), the widths, the MAC ratio and the
1-thread speedup. The mean row's interval is a t-interval over the runs.

Runs whose settings differ besides the seed are different recipes: each gets its own table,
headed by its settings, so that unlike runs are never averaged together. Every recipe after
the first (the recipe of the first run given) is then compared with the first one seed by
seed: its accuracy changes minus the first recipe's, on the test and on the validation set,
with the mean difference and its t-interval over the seeds both have.

Example:
    for s in 0 1 2; do python -m examples.mlp --seed=$s --out_dir=runs/s$s; done
    python -m examples.summary runs/s0 runs/s1 runs/s2 --within=0.3
    for s in 0 1 2; do python -m examples.mlp --seed=$s --filters=0.02 --out_dir=runs/f$s; done
    python -m examples.summary runs/s* runs/f*      # two recipes, compared seed by seed
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys

from absl import flags

from examples.config import ADDED_SETTINGS
from examples.util import HELP_FLAGS, print_help
from tflite_bench._cli import normalize

# Config settings that differ between the seeds of one recipe without changing the recipe.
_PER_RUN = ("seed", "out_dir", "fresh", "verbose", "runs", "warmup", "threads", "tfmot",
            "steps_per_execution",  # speed only: the same weights (tests/test_examples.py)
            "onednn")  # TensorFlow's CPU kernels: the same recipe, other round-off
_REQUIRED = ("example", "dataset", "config", "baseline", "ssl", "accuracy_change")


class SummaryError(ValueError):
    """Bad input: printed as one line, exit status 2."""


def _flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    flags.DEFINE_float("within", None, "Also count the runs whose test accuracy change is at "
                       "least minus this many points (e.g. 0.3: a target of 'within 0.3 points "
                       "of the dense baseline').", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_enum("format", "table", ["table", "json"], "table: Markdown tables; json: the "
                      "rows and means as JSON.", flag_values=fv)
    return fv


def find_results(paths: list[str]) -> dict[str, dict]:
    """{path: results} of the result JSON files named by `paths`: files (checked to be an
    example's), or folders whose `*.json` files (not in sub-folders: the phase checkpoints
    live there) are example results; each file read once."""
    found = {}
    for path in paths:
        if os.path.isdir(path):
            names = sorted(glob.glob(os.path.join(glob.escape(path), "*.json")))
            results = {os.path.abspath(n): _read_or_none(n) for n in names}
            results = {n: r for n, r in results.items()
                       if r is not None and all(key in r for key in _REQUIRED)}
            if not results:
                raise SummaryError(f"No example results in the folder {path!r}. Expected the "
                                   "<name>_<dataset>.json an example writes to its --out_dir. "
                                   f"Received: a folder without one")
            found.update((n, r) for n, r in results.items() if n not in found)
        elif os.path.isfile(path):
            name = os.path.abspath(path)
            if name not in found:
                found[name] = load(path)
        else:
            raise SummaryError(f"No such file or folder. Expected an example's results JSON or "
                               f"its --out_dir. Received: {path!r}")
    return found


def _read_or_none(path: str) -> dict | None:
    try:
        return _read(path)
    except SummaryError:
        return None


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise SummaryError(f"Cannot read {path!r} ({' '.join(str(e).split())[:100]}). Expected "
                           "the JSON an example writes.") from None
    return value if isinstance(value, dict) else {}


def load(path: str) -> dict:
    """One run's results, checked to be an example's."""
    value = _read(path)
    missing = [key for key in _REQUIRED if key not in value]
    if missing:
        raise SummaryError(f"{path!r} is not an example's results JSON. Expected the keys "
                           f"{list(_REQUIRED)}. Received: a JSON without {missing}")
    return value


def _widths(result: dict) -> str:
    """"7-16-128-10"; for residual models (layers named `<stage>_block<k>_<conv>`, as the
    examples' ResNets), how many blocks thin() removed; else how many layers it kept."""
    base, thin = result["baseline"]["filters_per_layer"], result["ssl"]["filters_per_layer"]
    if len(base) <= 8 and set(thin) == set(base):
        return "-".join(str(thin[name]) for name in base)
    blocks = {name.rsplit("_", 1)[0] for name in base if "_block" in name}
    if blocks:
        kept = {name.rsplit("_", 1)[0] for name in thin if "_block" in name}
        return f"{len(blocks - kept)} of {len(blocks)} blocks removed"
    return f"{len(thin)} of {len(base)} layers"


def row(result: dict, path: str) -> dict:
    """The figures of one run that the table shows."""
    change = result["accuracy_change"] or {}
    unused = result.get("unused_accuracy_change") or {}
    dense_val, ssl_val = result["baseline"].get("val_accuracy"), result["ssl"].get("val_accuracy")
    return {
        "path": path,
        "seed": result["config"].get("seed"),
        "dense_accuracy": result["baseline"].get("accuracy"), "dense_val_accuracy": dense_val,
        "ssl_accuracy": result["ssl"].get("accuracy"),
        "change": change.get("change"), "change_ci95": change.get("ci95"),
        "val_change": None if dense_val is None or ssl_val is None else ssl_val - dense_val,
        "unused_change": unused.get("change"), "unused_change_ci95": unused.get("ci95"),
        "unused_images": unused.get("images"),
        "widths": _widths(result),
        "mac_ratio": result.get("mac_ratio"),
        "speedup": result.get("speedup"),
        "speedup_ci95": result.get("speedup_ci_1thread"),
    }


def _settings(result: dict) -> dict:
    """The recipe's settings of one run: its config without the per-run ones, the settings
    added to the examples since it was made read as their old behaviour."""
    config = {**ADDED_SETTINGS, **result["config"]}
    return {k: v for k, v in config.items() if k not in _PER_RUN}


def differing_settings(settings: list[dict]) -> dict:
    """{setting: [value per run]} for the settings (`_settings` of each run) that differ."""
    keys = sorted({k for s in settings for k in s})
    return {k: [s.get(k) for s in settings] for k in keys
            if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1}


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def mean_ci95(values) -> list[float] | None:
    """The two-sided 95% t-interval of the mean of `values` (None values left out), or None
    with fewer than two values or without scipy. Over seeds it measures how far the recipe's
    mean moves with the seed; every run here is scored on the same test images, so it does not
    include how the test set itself was sampled (each run's own interval does)."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    try:
        from scipy import stats
    except ImportError:  # scipy comes with the test extra (jax, tfmot); the table still prints
        return None
    mean, sem = statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return [mean - half, mean + half]


def _paired(first: list[dict], rows: list[dict]) -> dict:
    """`rows` (one recipe) minus `first` (the first recipe), seed by seed: the seeds that each
    of the two has exactly once."""
    def once(xs):
        seeds = [x["seed"] for x in xs]
        return {x["seed"]: x for x in xs if x["seed"] is not None and seeds.count(x["seed"]) == 1}
    mine, theirs = once(rows), once(first)
    pairs = [(mine[seed], theirs[seed]) for seed in sorted(set(mine) & set(theirs))]
    out = {"seeds": [x["seed"] for x, _ in pairs]}
    for key in ("change", "val_change"):
        diffs = [None if x[key] is None or y[key] is None else x[key] - y[key]
                 for x, y in pairs]
        out[f"{key}_diff"] = diffs
        out[f"mean_{key}_diff"] = _mean(diffs)
        out[f"mean_{key}_diff_ci95"] = mean_ci95(diffs)
    # the same dense accuracies (test and validation) in both runs of a seed: as when one dense
    # checkpoint is copied into both out_dirs, and then the difference is the thinned models'
    out["same_dense_accuracy"] = [
        (x["dense_accuracy"], x["dense_val_accuracy"]) == (y["dense_accuracy"],
                                                          y["dense_val_accuracy"])
        for x, y in pairs]
    return out


def summarize(results: list[dict], paths: list[str], within: float | None = None) -> list[dict]:
    """One summary per (example, dataset, recipe), in the order the runs were given: its rows,
    means, the settings that set it apart from the other recipes of its example and dataset,
    and, for every recipe after the first, its paired differences to the first."""
    groups = {}
    for result, path in zip(results, paths, strict=True):
        groups.setdefault((result["example"], result["dataset"]), []).append((result, path))
    out = []
    for (example, dataset), members in groups.items():
        settings = [_settings(r) for r, _ in members]
        differing = differing_settings(settings)
        recipes = {}
        for (result, path), setting in zip(members, settings, strict=True):
            recipe = {k: setting.get(k) for k in differing}
            recipes.setdefault(json.dumps(recipe, sort_keys=True), (recipe, []))[1].append(
                (result, path))
        first_rows = None
        for recipe, runs in recipes.values():
            rows = sorted((row(r, p) for r, p in runs),
                          key=lambda x: (x["seed"] is None, x["seed"], x["path"]))
            means = {k: _mean(x[k] for x in rows) for k in (
                "dense_accuracy", "ssl_accuracy", "change", "val_change", "unused_change",
                "mac_ratio", "speedup")}
            changes = [x["change"] for x in rows if x["change"] is not None]
            summary = {"example": example, "dataset": dataset, "recipe": recipe,
                       "runs": len(rows), "rows": rows, "mean": means,
                       "mean_change_ci95": mean_ci95(changes),
                       "mean_val_change_ci95": mean_ci95(x["val_change"] for x in rows),
                       "change_range": [min(changes), max(changes)] if changes else None}
            if within is not None:
                summary["within"] = within
                summary["runs_within"] = sum(c >= -within / 100 - 1e-12 for c in changes)
            if first_rows is None:
                first_rows = rows
            else:
                summary["paired"] = _paired(first_rows, rows)
            out.append(summary)
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _pts(v, ci=None) -> str:
    if v is None:
        return "-"
    text = f"{100 * v:+.2f}"
    return text + (f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else "")


def _x(v, ci=None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _recipe_text(recipe: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in recipe.items())


def table(summary: dict) -> str:
    """The Markdown table of one summary, with its notes and its paired comparison."""
    rows = summary["rows"]
    unused = any(x["unused_change"] is not None for x in rows)
    val = any(x["val_change"] is not None for x in rows)
    head = ["seed", "dense", "SSL thinned", "test change (points) [95%]"]
    head += ["validation change"] if val else []
    head += ["unused-images change [95%]"] if unused else []
    head += ["widths", "fewer MACs", "speedup 1T [95%]"]
    title = f"{summary['example']} on {summary['dataset']}"
    if summary["recipe"]:
        title += f" with {_recipe_text(summary['recipe'])}"
    lines = [f"{title}, {summary['runs']} run(s):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in rows:
        cells = [str(x["seed"]), _pct(x["dense_accuracy"]), _pct(x["ssl_accuracy"]),
                 _pts(x["change"], x["change_ci95"])]
        cells += [_pts(x["val_change"])] if val else []
        cells += [_pts(x["unused_change"], x["unused_change_ci95"])] if unused else []
        cells += [x["widths"], _x(x["mac_ratio"]), _x(x["speedup"], x["speedup_ci95"])]
        lines.append("| " + " | ".join(cells) + " |")
    m = summary["mean"]
    cells = ["mean", _pct(m["dense_accuracy"]), _pct(m["ssl_accuracy"]),
             _pts(m["change"], summary["mean_change_ci95"])]
    cells += [_pts(m["val_change"], summary["mean_val_change_ci95"])] if val else []
    cells += [_pts(m["unused_change"])] if unused else []
    cells += ["", _x(m["mac_ratio"]), _x(m["speedup"])]
    lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if summary["change_range"]:
        low, high = summary["change_range"]
        notes.append(f"Test change from {_pts(low)} to {_pts(high)} points.")
    if "within" in summary:
        notes.append(f"Within {summary['within']:g} points of the dense baseline (test set): "
                     f"{summary['runs_within']} of {summary['runs']} runs.")
    if summary["mean_change_ci95"]:
        notes.append("The mean row's intervals are 95% t-intervals over the runs: how far the "
                     "mean moves with the seed on these test images; each run's own interval "
                     "is over the test images.")
    if unused:
        notes.append("Unused images: training images that --max_train left out, as many as "
                     "the test images; no phase trained on them.")
    notes.append("Speedups were measured in each run's own benchmark; compare them side by "
                 "side (python -m tflite_bench) before reading small differences.")
    text = "\n".join(lines + [""] + notes)
    if "paired" in summary:
        text += "\n\n" + _paired_table(summary["paired"], summary["recipe"])
    return text


def _paired_table(paired: dict, recipe: dict) -> str:
    if not paired["seeds"]:
        return "No seed that both this recipe and the first one ran once: nothing to pair."
    lines = [f"Paired with the first recipe, seed by seed ({_recipe_text(recipe)} minus the "
             "first recipe's accuracy changes, points):", "",
             "| seed | test change difference | validation change difference |",
             "|---|---|---|"]
    for i, seed in enumerate(paired["seeds"]):
        lines.append(f"| {seed} | {_pts(paired['change_diff'][i])} | "
                     f"{_pts(paired['val_change_diff'][i])} |")
    lines.append(f"| mean [95%] | "
                 f"{_pts(paired['mean_change_diff'], paired['mean_change_diff_ci95'])} | "
                 f"{_pts(paired['mean_val_change_diff'], paired['mean_val_change_diff_ci95'])} |")
    same = paired["same_dense_accuracy"]
    if all(same):
        note = ("Both runs of every seed have the same dense test and validation accuracies, "
                "as when one dense checkpoint is copied into both --out_dir folders: the "
                "differences are then the thinned models' alone.")
    else:
        seeds = ", ".join(str(s) for s, ok in zip(paired["seeds"], same, strict=True)
                          if not ok)
        note = (f"The two runs of seed(s) {seeds} have different dense accuracies: their "
                "differences include the dense models' own spread (copy one dense checkpoint "
                "into both --out_dir folders to pair the thinned models alone).")
    return "\n".join(lines + ["", note])


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    fv = _flags()
    if any(a in HELP_FLAGS for a in argv[1:]):
        print_help((__doc__ or "").strip() + "\n\n" + fv.get_help(
            include_special_flags=False).replace("examples.summary:", "Flags:"))
        return 0
    try:
        paths = fv(normalize(argv, flag_values=fv))[1:]
        if not paths:
            raise SummaryError("Expected one or more results JSON files or --out_dir folders "
                               "of the examples. Received: none")
        found = find_results(paths)
    except (flags.Error, SummaryError) as e:
        print(f"summary: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    summaries = summarize(list(found.values()), list(found), fv.within)
    try:
        if fv.format == "json":
            print(json.dumps(summaries, indent=1))
        else:
            print("\n\n".join(table(s) for s in summaries))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
