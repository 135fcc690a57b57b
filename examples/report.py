"""The report of an examples' run: results dict, table on stdout, JSON / Markdown, plots.

`ReportMixin` holds the report methods of `examples.pipeline.Pipeline` (`run()` ends with
`results()` and `write()`); they read what the pipeline and its steps set: `cfg`, `recipe`,
`dataset`, `data`, `dense`, `zeroed`, `thinned`, `tflite`, `tfmot`, `bench_result`,
`thin_max_abs_diff`, `tflite_max_abs_diff`, `timings`, `stem`, `log()` and `argv` (the
command line `examples.common.main` parsed; None: sys.argv).

Non-finite numbers (a NaN latency, say) are None in the results, null in the JSON and "-" in
the table; layer names are drawn literally in the plots (no matplotlib math text for `$`) and
long ones shortened there, never in the JSON / Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import sys

import numpy as np

from examples.util import StepUnavailableError, atomic_write, atomic_write_text, need


def accuracy(model, x, y, batch_size=256) -> float | None:
    """Top-1 accuracy of a Keras model on (x, y); None when there are no images."""
    if not len(x):
        return None
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def accuracy_change_ci(correct_base, correct_other, resamples=2000, confidence=0.95,
                       seed=0) -> tuple[float, float]:
    """Paired bootstrap interval of mean(correct_other) - mean(correct_base).

    Both models are scored on the same images, so the images are resampled together: a
    resample's change is (images only `other` gets right - images only `base` gets right) /
    n. Drawing those two counts from a multinomial is the same bootstrap without
    materialising resamples x n indices.

    Args:
        correct_base, correct_other: per image, whether each model's top-1 is right (bool).
        resamples: bootstrap resamples. confidence: e.g. 0.95. seed: of the resampling.

    Returns:
        (low, high) of the accuracy change, as fractions.

    Example:
    >>> lo, hi = accuracy_change_ci(np.ones(100, bool), np.arange(100) % 10 != 0)
    >>> bool(lo < -0.1 < hi)
    True
    """
    base = np.asarray(correct_base, bool)
    other = np.asarray(correct_other, bool)
    if base.shape != other.shape or base.ndim != 1 or not len(base):
        raise ValueError("Expected two non-empty 1-D arrays of the same length. Received: "
                         f"shapes {base.shape} and {other.shape}")
    n = len(base)
    p = np.array([np.sum(other & ~base), np.sum(base & ~other)], float) / n
    counts = np.random.default_rng(seed).multinomial(n, [p[0], p[1], 1.0 - p.sum()],
                                                     size=resamples)
    changes = (counts[:, 0] - counts[:, 1]) / n
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(changes, [tail, 100 - tail])
    return float(low), float(high)


def units_per_layer(model) -> dict:
    """Output filters / units of every Conv and Dense layer, by layer name."""
    import keras

    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            out[layer.name] = int(layer.units)
        elif isinstance(layer, keras.layers.Conv2D):  # SeparableConv2D etc. subclass BaseConv
            out[layer.name] = int(layer.filters)
    return out


def finite_or_none(value):
    """`value` with every NaN / infinite float (in dicts, lists, tuples) replaced by None:
    what the JSON holds (strict parsers reject the bare NaN / Infinity tokens).

    Example:
    >>> finite_or_none({"a": float("nan"), "b": [1.5, float("inf")], "c": (2, None)})
    {'a': None, 'b': [1.5, None], 'c': (2, None)}
    """
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(finite_or_none(v) for v in value)
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _finite(value) -> bool:
    """Whether `value` is a number to show: not None, NaN or infinite."""
    return value is not None and math.isfinite(value)


def _number(value, fmt: str) -> str:
    """`value` formatted with `fmt`, or "-" when it is None, NaN or infinite."""
    return format(value, fmt) if _finite(value) else "-"


def markdown_code(text: str) -> str:
    """`text` as Markdown code that stays valid: a code span whose fence is one backtick
    longer than the longest run of backticks in `text` (CommonMark), or, for text over
    several lines (which could start a heading inside a span), a fenced code block.

    Example:
    >>> markdown_code("a `b` c")
    '`` a `b` c ``'
    """
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    if "\n" in text or "\r" in text:
        fence = "`" * max(3, longest + 1)
        return f"\n\n{fence}\n{text}\n{fence}"
    if not longest:
        return f"`{text}`"
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}"  # the spaces: text may start or end with a backtick


def plot_label(name: str, limit: int = 24) -> str:
    """A layer name for a plot: at most `limit` characters (an ellipsis in the middle)."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return name[:head] + "\u2026" + name[len(name) - (limit - 1 - head):]


def command_line(argv) -> str:
    """The command that ran, from the argv main() parsed: `python -m examples.<module> ...`,
    the arguments quoted for a shell.

    Example:
    >>> command_line(["/src/examples/lenet.py", "--quick", "--out_dir=my results"])
    "python -m examples.lenet --quick '--out_dir=my results'"
    """
    argv = list(argv)
    module = os.path.splitext(os.path.basename(argv[0]))[0]
    return " ".join([f"python -m examples.{module}", *map(shlex.quote, argv[1:])])


class ReportMixin:
    """The report steps of `Pipeline` (results, table, write, plots)."""

    argv = None  # set by examples.common.main: the command line it parsed; None: sys.argv

    def _entries(self, path: str) -> dict:
        """The benchmark entries of one .tflite file, by thread count."""
        return {int(m["threads"]): m for m in self.bench_result["models"]
                if os.path.abspath(m["path"]) == os.path.abspath(path)}

    def command(self) -> str:
        """The command of this run (`argv`, or sys.argv when not set), for the report."""
        return command_line(sys.argv if self.argv is None else self.argv)

    def results(self) -> dict:
        predict_tflite = need("ssl_keras.export", "predict_tflite", "report")
        data = self.data
        rows = {}
        correct = {}  # per .tflite file: is its top-1 right, per test image (one run each)

        def row(path, keras_model=None):
            (logits,) = predict_tflite(path, data.x_test).values()
            correct[path] = np.argmax(logits, axis=-1) == data.y_test
            entries = self._entries(path)
            errors = [e["error"] for e in entries.values() if e.get("error")]
            if errors:
                raise StepUnavailableError(f"Step 'bench' failed for {path}: {errors[0]}")
            lat = {t: float(e["median_us"]) for t, e in entries.items()}
            first = next(iter(entries.values()))
            r = {
                "accuracy": float(np.mean(correct[path])),
                "params": int(first["params"]), "macs": int(first["macs"]),
                "latency_us": lat.get(1), "latency_us_by_threads": lat,
                "latency_p10_p90_us": {t: (e["p10_us"], e["p90_us"])
                                       for t, e in entries.items()},
                "file_bytes": os.path.getsize(path), "tflite": path,
            }
            if keras_model is not None:
                r["keras_accuracy"] = accuracy(keras_model, data.x_test, data.y_test)
                r["val_accuracy"] = accuracy(keras_model, data.x_val, data.y_val)
            return r

        rows["baseline"] = row(self.tflite["dense"], self.dense)
        rows["ssl"] = row(self.tflite["ssl"], self.thinned)
        change = self._accuracy_change(correct[self.tflite["dense"]],
                                       correct[self.tflite["ssl"]])
        unused_change = None
        if len(data.x_unused):  # --max_train left training images that no phase used
            right = {}
            for key in ("baseline", "ssl"):
                (logits,) = predict_tflite(rows[key]["tflite"], data.x_unused).values()
                right[key] = np.argmax(logits, axis=-1) == data.y_unused
                rows[key]["unused_accuracy"] = float(np.mean(right[key]))
            unused_change = self._accuracy_change(right["baseline"], right["ssl"])
        rows["ssl"]["filters_per_layer"] = units_per_layer(self.thinned)
        rows["baseline"]["filters_per_layer"] = units_per_layer(self.dense)
        rows["ssl_int8"] = row(self.tflite["ssl_int8"])
        speedup = {t: base1_t / rows["ssl"]["latency_us_by_threads"][t]
                   for t, base1_t in rows["baseline"]["latency_us_by_threads"].items()}
        tfmot = None
        if self.tfmot and self.tfmot.get("tflite"):
            tfmot = row(self.tfmot["tflite"])
            tfmot.update(self.tfmot)
        cfg = dataclasses.asdict(self.cfg)
        return finite_or_none({
            "example": self.recipe.name,
            "dataset": self.dataset,
            "requested_dataset": self.cfg.dataset,
            "data_source": data.source,
            "command": self.command(),
            "config": cfg,
            "baseline": rows["baseline"],
            "ssl": rows["ssl"],
            "ssl_int8": rows["ssl_int8"],
            "tfmot": tfmot,
            "speedup": speedup[1],  # --threads includes 1 (config)
            "speedup_by_threads": speedup,
            "mac_ratio": rows["baseline"]["macs"] / rows["ssl"]["macs"],
            "accuracy_change": change,
            "unused_accuracy_change": unused_change,
            "speedup_ci_1thread": self._entries(self.tflite["ssl"]).get(1, {}).get("speedup_ci"),
            "machine": self.bench_result.get("machine"),
            "thin_max_abs_diff": self.thin_max_abs_diff,
            "tflite_max_abs_diff": self.tflite_max_abs_diff,
            "phase_seconds": self.timings,
        })

    def _accuracy_change(self, base, other) -> dict:
        """The thinned float32 file's accuracy minus the dense one's (`base` / `other`: per
        image, is the file's top-1 right), with a paired bootstrap 95% interval: how far the
        change is resolved by these images (the test set, or the unused training images)."""
        low, high = accuracy_change_ci(base, other, seed=self.cfg.seed)
        return {"change": float(other.mean() - base.mean()), "ci95": [low, high],
                "images": len(base), "only_dense_right": int(np.sum(base & ~other)),
                "only_thinned_right": int(np.sum(other & ~base))}

    def table(self, results: dict) -> str:
        threads = self.cfg.threads
        head = ["model", "accuracy", "params", "MACs"]
        head += [f"latency {t}T (us)" for t in threads] + ["speedup 1T", "file (KB)"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        base = results["baseline"]["latency_us_by_threads"]
        for label, key in (("dense baseline (float32)", "baseline"),
                           ("SSL thinned (float32)", "ssl"), ("SSL thinned (int8)", "ssl_int8"),
                           ("tfmot element-wise (float32)", "tfmot")):
            r = results.get(key)
            if r is None:
                lines.append(f"| {label} | not run | | |" + " |" * (len(threads) + 2))
                continue
            lat = r["latency_us_by_threads"]
            cells = [label, f"{100 * r['accuracy']:.2f}%" if _finite(r["accuracy"]) else "-",
                     _number(r["params"], ","), _number(r["macs"], ",")]
            cells += [_number(lat.get(t), ".1f") for t in threads]
            cells.append(f"{base[1] / lat[1]:.2f}x" if _finite(base.get(1))
                         and _finite(lat.get(1)) and lat[1] else "-")
            cells.append(f"{r['file_bytes'] / 1024:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def write(self, results: dict) -> None:
        table = self.table(results)
        print(table, flush=True)
        val = (results["baseline"].get("val_accuracy"), results["ssl"].get("val_accuracy"))
        val_line = (None if None in val else f"Validation accuracy (Keras): dense "
                    f"{100 * val[0]:.2f}%, SSL thinned {100 * val[1]:.2f}%")
        change = results.get("accuracy_change")
        change_line = None if change is None else (
            f"Test accuracy change (SSL thinned - dense, float32 TFLite): "
            f"{_change_text(change)} (paired bootstrap over the {change['images']:,} "
            f"test images; {change['only_dense_right']} right only for dense, "
            f"{change['only_thinned_right']} only for thinned)")
        unused = results.get("unused_accuracy_change")
        unused_line = None if unused is None else (
            f"Accuracy change on {unused['images']:,} training images that --max_train left "
            f"unused (no phase trained on them; float32 TFLite): {_change_text(unused)} (dense "
            f"{100 * results['baseline']['unused_accuracy']:.2f}%, SSL thinned "
            f"{100 * results['ssl']['unused_accuracy']:.2f}%)")
        notes = [line for line in (val_line, change_line, unused_line) if line]
        for line in notes:
            print(line, flush=True)
        out = self.cfg.out_dir
        json_path = os.path.join(out, f"{self.stem}.json")
        md_path = os.path.join(out, f"{self.stem}.md")
        self._note_replacing([json_path, md_path])
        atomic_write_text(json_path, json.dumps(finite_or_none(results), indent=1, default=str,
                                                allow_nan=False))
        md = [f"# {self.recipe.name} on {self.dataset}", "",
              f"Command: {markdown_code(results['command'])}", "", table, "",
              f"Filters/units per layer: dense {results['baseline']['filters_per_layer']}"
              f" -> SSL {results['ssl']['filters_per_layer']}", ""]
        for line in notes:
            md += [line, ""]
        atomic_write_text(md_path, "\n".join(md))
        written = [json_path, md_path]
        try:
            written += self.plots(results)
        except ImportError as e:
            self.log(f"plots skipped: matplotlib missing ({e}); install the plot extra")
        self.log(f"wrote {self._paths_text(written)}")

    def _paths_text(self, paths: list[str]) -> str:
        """`paths` in one short line: the first in full, the others after the report's
        common prefix (`out_dir/stem`): "results/lenet.json, .md, _filters.png"."""
        prefix = os.path.join(self.cfg.out_dir, self.stem)
        return ", ".join(p[len(prefix):] if i and p.startswith(prefix) else p
                         for i, p in enumerate(paths))

    def _note_replacing(self, paths: list[str]) -> None:
        """Logs which of `paths` exist already (and are about to be replaced)."""
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            self.log(f"replacing {self._paths_text(existing)} (written by an earlier run)")

    def plots(self, results: dict) -> list[str]:
        """Writes the filters, latency and (with a Conv2D) first-layer plots; returns their
        paths. Layer names are drawn literally and shortened (`plot_label`)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = self.cfg.out_dir
        first = _first_conv(self.dense)
        paths = [os.path.join(out, f"{self.stem}_{kind}.png")
                 for kind in ("filters", "latency", "conv1")[:3 if first is not None else 2]]
        self._note_replacing(paths)
        text = {"parse_math": False}  # "$" in a layer name is not math text
        before = results["baseline"]["filters_per_layer"]
        after = results["ssl"]["filters_per_layer"]
        names = list(before)
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3))
        idx = np.arange(len(names))
        ax.bar(idx - 0.2, [before[n] for n in names], 0.4, label="dense")
        ax.bar(idx + 0.2, [after.get(n, 0) for n in names], 0.4, label="SSL thinned")
        ax.set_xticks(idx, [plot_label(n) for n in names], rotation=30, ha="right",
                      rotation_mode="anchor", **text)
        ax.set_ylabel("filters / units")
        ax.legend()
        fig.tight_layout()
        _save_fig(fig, paths[0])
        plt.close(fig)

        labels, values = [], []
        for key in ("baseline", "ssl", "ssl_int8", "tfmot"):
            r = results.get(key)
            if r is None:
                continue
            for t, v in sorted(r["latency_us_by_threads"].items()):
                labels.append(f"{key}\n{t}T" + ("" if _finite(v) else "\nn/a"))
                values.append(v if _finite(v) else 0.0)
        fig, ax = plt.subplots(figsize=(0.8 * len(labels) + 2, 3))
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_ylabel("median latency (us), batch 1")
        fig.tight_layout()
        _save_fig(fig, paths[1])
        plt.close(fig)

        if first is not None:
            fig, axes = plt.subplots(2, 1, figsize=(8, 2.2))
            for ax, model, title in ((axes[0], self.dense, "dense"),
                                     (axes[1], self.zeroed, "SSL (zero filters blank)")):
                k = np.asarray(_first_conv(model).kernel)  # (kh, kw, c_in, n)
                tiles = [k[:, :, 0, i] for i in range(k.shape[-1])]
                vmax = max(float(np.max(np.abs(k))), 1e-12)
                pad = np.full((k.shape[0], 1), np.nan)
                row_img = np.concatenate([np.concatenate([t, pad], axis=1) for t in tiles], 1)
                ax.imshow(row_img, cmap="bwr", vmin=-vmax, vmax=vmax)
                ax.set_title(f"{plot_label(_first_conv(model).name, 60)} filters, {title}",
                             fontsize=8, **text)
                ax.axis("off")
            fig.tight_layout()
            _save_fig(fig, paths[2])
            plt.close(fig)
        return paths


def _change_text(change: dict) -> str:
    """"-0.47 points, 95% interval [-0.84, -0.10]" of an `_accuracy_change` dict."""
    low, high = change["ci95"]
    return (f"{100 * change['change']:+.2f} points, 95% interval [{100 * low:+.2f}, "
            f"{100 * high:+.2f}]")


def _first_conv(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer
    return None


def _save_fig(fig, path: str) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=".png")
