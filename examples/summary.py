"""One table for several runs of an example (seeds): `python -m examples.summary RESULTS...`.

A single run's accuracy change is resolved only to about +-0.4 points by a 10,000-image test
set (the 95% interval each example prints), and the seed moves it by as much: the spread over
seeds is what a recipe should be judged on. This reads the JSON files the examples write
(`<out_dir>/<name>_<dataset>.json`, or folders holding them) and prints, per example and
dataset, one row per run and a mean row: the float32 TFLite accuracies, the test accuracy
change with its 95% interval, the change on the training images `--max_train` left unused
(when the runs have them), the widths, the MAC ratio and the 1-thread speedup. Settings that
differ between the runs besides the seed are listed under the table, so that unlike runs are
not averaged unnoticed.

Example:
    for s in 0 1 2; do python -m examples.mlp --seed=$s --out_dir=runs/s$s; done
    python -m examples.summary runs/s0 runs/s1 runs/s2 --within=0.3
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys

from absl import flags

from examples.util import HELP_FLAGS, print_help
from tflite_bench._cli import normalize

# Config settings that differ between the seeds of one recipe without changing the recipe.
_PER_RUN = ("seed", "out_dir", "fresh", "verbose", "runs", "warmup", "threads", "tfmot")
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
    return {
        "path": path,
        "seed": result["config"].get("seed"),
        "dense_accuracy": result["baseline"].get("accuracy"),
        "ssl_accuracy": result["ssl"].get("accuracy"),
        "change": change.get("change"), "change_ci95": change.get("ci95"),
        "unused_change": unused.get("change"), "unused_change_ci95": unused.get("ci95"),
        "unused_images": unused.get("images"),
        "widths": _widths(result),
        "mac_ratio": result.get("mac_ratio"),
        "speedup": result.get("speedup"),
        "speedup_ci95": result.get("speedup_ci_1thread"),
    }


def differing_settings(results: list[dict]) -> dict:
    """{setting: [value per run]} for the settings that differ, besides the per-run ones."""
    keys = sorted({k for r in results for k in r["config"]} - set(_PER_RUN))
    return {k: [r["config"].get(k) for r in results] for k in keys
            if len({json.dumps(r["config"].get(k), sort_keys=True) for r in results}) > 1}


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(results: list[dict], paths: list[str], within: float | None = None) -> list[dict]:
    """One summary per (example, dataset): its rows, means and differing settings."""
    groups = {}
    for result, path in zip(results, paths, strict=True):
        groups.setdefault((result["example"], result["dataset"]), []).append((result, path))
    out = []
    for (example, dataset), members in groups.items():
        rows = sorted((row(r, p) for r, p in members),
                      key=lambda x: (x["seed"] is None, x["seed"], x["path"]))
        means = {k: _mean(x[k] for x in rows) for k in (
            "dense_accuracy", "ssl_accuracy", "change", "unused_change", "mac_ratio",
            "speedup")}
        changes = [x["change"] for x in rows if x["change"] is not None]
        summary = {"example": example, "dataset": dataset, "runs": len(rows), "rows": rows,
                   "mean": means,
                   "change_range": [min(changes), max(changes)] if changes else None,
                   "differing_settings": differing_settings([r for r, _ in members])}
        if within is not None:
            summary["within"] = within
            summary["runs_within"] = sum(c >= -within / 100 - 1e-12 for c in changes)
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


def table(summary: dict) -> str:
    """The Markdown table of one summary, with its notes."""
    unused = any(x["unused_change"] is not None for x in summary["rows"])
    head = ["seed", "dense", "SSL thinned", "test change (points) [95%]"]
    head += ["unused-images change [95%]"] if unused else []
    head += ["widths", "fewer MACs", "speedup 1T [95%]"]
    lines = [f"{summary['example']} on {summary['dataset']}, {summary['runs']} run(s):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in summary["rows"]:
        cells = [str(x["seed"]), _pct(x["dense_accuracy"]), _pct(x["ssl_accuracy"]),
                 _pts(x["change"], x["change_ci95"])]
        cells += [_pts(x["unused_change"], x["unused_change_ci95"])] if unused else []
        cells += [x["widths"], _x(x["mac_ratio"]), _x(x["speedup"], x["speedup_ci95"])]
        lines.append("| " + " | ".join(cells) + " |")
    m = summary["mean"]
    cells = ["mean", _pct(m["dense_accuracy"]), _pct(m["ssl_accuracy"]), _pts(m["change"])]
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
    if unused:
        notes.append("Unused images: training images that --max_train left out, as many as "
                     "the test images; no phase trained on them.")
    if summary["differing_settings"]:
        diff = "; ".join(f"{k}: {', '.join(json.dumps(v) for v in vals)}"
                         for k, vals in summary["differing_settings"].items())
        notes.append(f"Settings that differ between the runs (besides the seed): {diff}.")
    notes.append("Speedups were measured in each run's own benchmark; compare them side by "
                 "side (python -m tflite_bench) before reading small differences.")
    return "\n".join(lines + [""] + notes)


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
