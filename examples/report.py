"""The report of an examples' run: results dict, table on stdout, JSON / Markdown, plots.

`ReportMixin` holds the report methods of `examples.pipeline.Pipeline` (`run()` ends with
`results()` and `write()`); they read what the pipeline and its steps set: `cfg`, `recipe`,
`dataset`, `data`, `dense`, `zeroed`, `thinned`, `tflite`, `tfmot`, `bench_result`,
`thin_max_abs_diff`, `tflite_max_abs_diff`, `timings`, `stem` and `log()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
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


class ReportMixin:
    """The report steps of `Pipeline` (results, table, write, plots)."""

    def _entries(self, path: str) -> dict:
        """The benchmark entries of one .tflite file, by thread count."""
        return {int(m["threads"]): m for m in self.bench_result["models"]
                if os.path.abspath(m["path"]) == os.path.abspath(path)}

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
        return {
            "example": self.recipe.name,
            "dataset": self.dataset,
            "requested_dataset": self.cfg.dataset,
            "data_source": data.source,
            "command": " ".join(
                [f"python -m examples.{os.path.splitext(os.path.basename(sys.argv[0]))[0]}",
                 *sys.argv[1:]]),
            "config": cfg,
            "baseline": rows["baseline"],
            "ssl": rows["ssl"],
            "ssl_int8": rows["ssl_int8"],
            "tfmot": tfmot,
            "speedup": speedup[1],  # --threads includes 1 (config)
            "speedup_by_threads": speedup,
            "mac_ratio": rows["baseline"]["macs"] / rows["ssl"]["macs"],
            "accuracy_change": change,
            "speedup_ci_1thread": self._entries(self.tflite["ssl"]).get(1, {}).get("speedup_ci"),
            "machine": self.bench_result.get("machine"),
            "thin_max_abs_diff": self.thin_max_abs_diff,
            "tflite_max_abs_diff": self.tflite_max_abs_diff,
            "phase_seconds": self.timings,
        }

    def _accuracy_change(self, base, other) -> dict:
        """The thinned float32 file's test accuracy minus the dense one's (`base` / `other`:
        per test image, is the file's top-1 right), with a paired bootstrap 95% interval: how
        far the change is resolved by this test set."""
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
            cells = [label, f"{100 * r['accuracy']:.2f}%",
                     f"{r['params']:,}" if r["params"] is not None else "-",
                     f"{r['macs']:,}" if r["macs"] is not None else "-"]
            cells += [f"{lat[t]:.1f}" if t in lat else "-" for t in threads]
            cells.append(f"{base[1] / lat[1]:.2f}x" if 1 in lat and 1 in base else "-")
            cells.append(f"{r['file_bytes'] / 1024:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def write(self, results: dict) -> None:
        table = self.table(results)
        print(table, flush=True)
        val = (results["baseline"].get("val_accuracy"), results["ssl"].get("val_accuracy"))
        val_line = (None if None in val else f"Validation accuracy (Keras): dense "
                    f"{100 * val[0]:.2f}%, SSL thinned {100 * val[1]:.2f}%")
        if val_line:
            print(val_line, flush=True)
        change = results.get("accuracy_change")
        change_line = None if change is None else (
            f"Test accuracy change (SSL thinned - dense, float32 TFLite): "
            f"{100 * change['change']:+.2f} points, 95% interval [{100 * change['ci95'][0]:+.2f}, "
            f"{100 * change['ci95'][1]:+.2f}] (paired bootstrap over the {change['images']:,} "
            f"test images; {change['only_dense_right']} right only for dense, "
            f"{change['only_thinned_right']} only for thinned)")
        if change_line:
            print(change_line, flush=True)
        out = self.cfg.out_dir
        json_path = os.path.join(out, f"{self.stem}.json")
        md_path = os.path.join(out, f"{self.stem}.md")
        for path in (json_path, md_path):
            if os.path.exists(path):
                self.log(f"replacing {path} (written by an earlier run)")
        atomic_write_text(json_path, json.dumps(results, indent=1, default=str))
        md = [f"# {self.recipe.name} on {self.dataset}", "",
              f"Command: `{results['command']}`", "", table, "",
              f"Filters/units per layer: dense {results['baseline']['filters_per_layer']}"
              f" -> SSL {results['ssl']['filters_per_layer']}", ""]
        for line in (val_line, change_line):
            if line:
                md += [line, ""]
        atomic_write_text(md_path, "\n".join(md))
        try:
            self.plots(results)
        except ImportError as e:
            self.log(f"plots skipped: matplotlib missing ({e}); install the plot extra")
        self.log(f"wrote {json_path} and {md_path}")

    def plots(self, results: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = self.cfg.out_dir
        before = results["baseline"]["filters_per_layer"]
        after = results["ssl"]["filters_per_layer"]
        names = list(before)
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3))
        idx = np.arange(len(names))
        ax.bar(idx - 0.2, [before[n] for n in names], 0.4, label="dense")
        ax.bar(idx + 0.2, [after.get(n, 0) for n in names], 0.4, label="SSL thinned")
        ax.set_xticks(idx, names, rotation=30)
        ax.set_ylabel("filters / units")
        ax.legend()
        fig.tight_layout()
        _save_fig(fig, os.path.join(out, f"{self.stem}_filters.png"))
        plt.close(fig)

        labels, values = [], []
        for key in ("baseline", "ssl", "ssl_int8", "tfmot"):
            r = results.get(key)
            if r is None:
                continue
            for t, v in sorted(r["latency_us_by_threads"].items()):
                labels.append(f"{key}\n{t}T")
                values.append(v)
        fig, ax = plt.subplots(figsize=(0.8 * len(labels) + 2, 3))
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_ylabel("median latency (us), batch 1")
        fig.tight_layout()
        _save_fig(fig, os.path.join(out, f"{self.stem}_latency.png"))
        plt.close(fig)

        first = _first_conv(self.dense)
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
                ax.set_title(f"{_first_conv(model).name} filters, {title}", fontsize=8)
                ax.axis("off")
            fig.tight_layout()
            _save_fig(fig, os.path.join(out, f"{self.stem}_conv1.png"))
            plt.close(fig)


def _first_conv(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return layer
    return None


def _save_fig(fig, path: str) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110), suffix=".png")
