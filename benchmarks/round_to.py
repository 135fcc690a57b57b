"""Which `thin(..., round_to=N)` gives the best TFLite latency per MAC on this CPU.

    python -m benchmarks.round_to [--round_to 1,4,8,16 --fraction 0.75 --runs 200
                                   --threads 1 --json out.json --out_dir dir]

ResNet-20 (examples/models.py, CIFAR 32x32x3) with non-zero BatchNorm statistics gets the
producer slices of a random `fraction` of its unblocked coupled groups zeroed. The dense model
and `thin(model, round_to=N)` for every N are exported to float32 .tflite
(ssl_keras.export_tflite, outputs verified) and timed side by side, interleaved, with
tflite_bench.benchmark (LiteRT, XNNPACK, batch 1). Printed per model: conv widths, max
|thinned - dense| of the Keras outputs on 8 seeded inputs (thin must not change the function:
above 1e-5 * (1 + max |dense output|) the command ends with an error, exit code 1, once the
figures are out), MACs, median latency, speedup over dense, MAC reduction and efficiency =
speedup / MAC reduction (1.0 means latency fell as much as MACs did; the latency per MAC
relative to dense is its inverse). The JSON rows also hold the Keras MACs (count_macs) and
export_tflite's max |tflite - keras|. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from benchmarks._util import (  # noqa: E402
    LATENCY_COLUMNS,
    check_latency_flags,
    check_seed,
    check_within,
    define_latency_flags,
    fail,
    interruptible,
    markdown_table,
    offset_and_zero,
    parse_flags,
    quiet_tensorflow,
    run_and_report,
    step,
)

FLAGS = flags.FlagValues()
flags.DEFINE_list("round_to", ["1", "4", "8", "16"], "Values of round_to to compare.",
                  flag_values=FLAGS)
flags.DEFINE_float("fraction", 0.75, "Share of the unblocked groups to zero, in (0, 1).",
                   flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the zeroed groups.", flag_values=FLAGS)
define_latency_flags(FLAGS, runs=200)


COMMAND = "benchmarks.round_to"


def _fail(message):
    fail(COMMAND, message)


def _ints(values, name):
    if not values:
        _fail(f"--{name} must list at least one integer >= 1, e.g. 1,4,8. Received: ''")
    try:
        out = [int(v) for v in values]
    except ValueError:
        _fail(f"--{name} must be a comma-separated list of integers. Received: {values}")
    if any(v < 1 for v in out):
        _fail(f"--{name} values must be >= 1. Received: {values}")
    if len(set(out)) != len(out):
        _fail(f"--{name} lists a value twice; expected each once. Received: {','.join(values)}")
    return out


def _parse(argv):
    parse_flags(COMMAND, FLAGS, argv, __doc__)
    values = _ints(FLAGS.round_to, "round_to")
    if not 0 < FLAGS.fraction < 1:
        _fail(f"--fraction must be in (0, 1). Received: {FLAGS.fraction}")
    check_seed(COMMAND, FLAGS.seed)
    threads = check_latency_flags(COMMAND, FLAGS.runs, FLAGS.threads, FLAGS.json,
                                  FLAGS.out_dir)
    return values, threads


def sparse_resnet20(fraction, seed):
    """ResNet-20 with non-zero BatchNorm statistics and `fraction` of its groups zeroed."""
    import numpy as np

    import ssl_keras
    from examples.models import resnet

    rng = np.random.default_rng(seed)
    model = resnet(20, input_shape=(32, 32, 3))
    offset_and_zero(model, ssl_keras.removable_groups(model), fraction, rng)
    return model


def _conv_widths(model):
    import keras

    return sorted({layer.filters for layer in model.layers
                   if isinstance(layer, keras.layers.Conv2D)})


def run(out_dir, values, threads):
    import numpy as np
    from absl import logging

    import ssl_keras
    import tflite_bench

    logging.set_verbosity(logging.WARNING)
    step(COMMAND, "building ResNet-20 and zeroing groups")
    model = sparse_resnet20(FLAGS.fraction, FLAGS.seed)
    x = np.random.default_rng(FLAGS.seed).normal(size=(8, 32, 32, 3)).astype("float32")
    want = np.asarray(model(x))
    tolerance = 1e-5 * (1 + float(np.max(np.abs(want))))
    models, thin_diff = {"dense": model}, {"dense": None}
    for n in values:
        step(COMMAND, f"thinning with round_to={n}")
        name = f"round_to_{n}"
        models[name] = ssl_keras.thin(model, round_to=n)
        thin_diff[name] = float(np.max(np.abs(np.asarray(models[name](x)) - want)))
    paths, info = [], {}
    for k, (name, m) in enumerate(models.items()):
        path = os.path.join(out_dir, f"resnet20_{name}.tflite")
        step(COMMAND, f"exporting {k + 1}/{len(models)}: {os.path.basename(path)}")
        report = ssl_keras.export_tflite(m, path)
        paths.append(path)
        info[path] = {"name": name, "keras_macs": ssl_keras.count_macs(m),
                      "conv_widths": _conv_widths(m), "thin_max_abs_diff": thin_diff[name],
                      "export_max_abs_diff": report.max_abs_diff}
    result = tflite_bench.benchmark(paths, threads=threads, runs=FLAGS.runs, progress=True)
    rows = []
    for e in result["models"]:
        extra = info[e["path"]]
        rows.append({"model": extra["name"], "threads": e["threads"],
                     "conv_widths": extra["conv_widths"], "keras_macs": extra["keras_macs"],
                     "thin_max_abs_diff": extra["thin_max_abs_diff"],
                     "export_max_abs_diff": extra["export_max_abs_diff"], "macs": e["macs"],
                     "median_us": e["median_us"], "speedup": e["speedup_vs_first"],
                     "speedup_ci": e["speedup_ci"], "mac_ratio": e["mac_ratio_vs_first"],
                     "efficiency": e["efficiency"], "error": e["error"]})
    return {"fraction": FLAGS.fraction, "seed": FLAGS.seed, "runs": FLAGS.runs,
            "tolerance": tolerance, "machine": result.get("machine"), "rows": rows}


def table(result):
    rows = [{**r, "widths": ",".join(str(w) for w in r["conv_widths"] or [])}
            for r in result["rows"]]
    return markdown_table(rows, [("model", "model", ""), ("threads", "threads", ""),
                                 ("conv widths", "widths", ""),
                                 ("max abs diff vs dense", "thin_max_abs_diff", ".2g"),
                                 *LATENCY_COLUMNS])


def check_thin_exact(result) -> None:
    """Once the figures are out: thin's outputs must match the dense model's (one line, exit
    code 1, naming the first model that does not)."""
    for r in result["rows"]:
        if r["model"] != "dense":
            check_within(COMMAND, f"max |{r['model']} - dense| (Keras outputs)",
                         r["thin_max_abs_diff"], result["tolerance"])


@interruptible(COMMAND)
def main(argv=None):
    values, threads = _parse(sys.argv if argv is None else argv)
    quiet_tensorflow()
    result = run_and_report(COMMAND, lambda out_dir: run(out_dir, values, threads), table,
                            FLAGS.out_dir, FLAGS.json)
    check_thin_exact(result)


if __name__ == "__main__":
    main()
