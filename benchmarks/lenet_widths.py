"""TFLite latency of LeNet-5 at the widths SSL can leave, side by side with the dense model.

    python -m benchmarks.lenet_widths [--widths 20-50-500,5-26-105,4-32-64 --runs 300
                                       --threads 1 --json out.json --out_dir dir]

Each width `c1-c2-u` is examples.models.lenet(filters=(c1, c2), units=u) with random weights
(latency does not depend on the values), exported to float32 .tflite (ssl_keras.export_tflite,
outputs verified) and timed interleaved with tflite_bench.benchmark (LiteRT, XNNPACK, batch
1); the first width is the reference of the speedups. Printed per model: MACs, median latency,
speedup, MAC ratio and efficiency = speedup / MAC ratio. It answers "which thinned widths are
cheap on this CPU": two models with the same MACs need not take the same time (consistent
with XNNPACK computing output channels in SIMD blocks). Not a test: timings depend on the
machine and its load.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from benchmarks._util import (  # noqa: E402
    LATENCY_COLUMNS,
    check_latency_flags,
    define_latency_flags,
    fail,
    interruptible,
    markdown_table,
    parse_flags,
    quiet_tensorflow,
    run_and_report,
    step,
)

DEFAULT_WIDTHS = ["20-50-500", "4-16-64", "8-16-64", "16-16-64", "4-32-64", "8-32-64",
                  "5-26-105", "6-32-100", "8-24-100", "8-32-128", "8-32-256", "8-40-100",
                  "16-32-100"]

FLAGS = flags.FlagValues()
flags.DEFINE_list("widths", DEFAULT_WIDTHS, "LeNet widths conv1-conv2-ip1; the first is the "
                  "reference.", flag_values=FLAGS)
define_latency_flags(FLAGS, runs=300)

COMMAND = "benchmarks.lenet_widths"


def parse_widths(values):
    """['20-50-500', ...] -> [(20, 50, 500), ...]; exits 2 on anything else (an empty list, a
    width twice)."""
    if not values:
        fail(COMMAND, "--widths must list at least one conv1-conv2-ip1 width, e.g. "
                      "20-50-500,5-26-105. Received: ''")
    out = []
    for value in values:
        parts = value.split("-")
        try:
            triple = tuple(int(p) for p in parts)
        except ValueError:
            triple = ()
        if len(triple) != 3 or min(triple) < 1:
            fail(COMMAND, "--widths must be a comma-separated list of conv1-conv2-ip1 positive "
                          f"integers, e.g. 20-50-500,5-26-105. Received: {value!r}")
        out.append(triple)
    if len(set(out)) != len(out):
        fail(COMMAND, f"--widths lists a width twice. Received: {','.join(values)}")
    return out


def _parse(argv):
    parse_flags(COMMAND, FLAGS, argv, __doc__)
    widths = parse_widths(FLAGS.widths)
    threads = check_latency_flags(COMMAND, FLAGS.runs, FLAGS.threads, FLAGS.json,
                                  FLAGS.out_dir)
    return widths, threads


def run(out_dir, widths, threads):
    from absl import logging

    import ssl_keras
    import tflite_bench
    from examples.models import lenet

    logging.set_verbosity(logging.WARNING)
    paths, names = [], {}
    for k, (c1, c2, units) in enumerate(widths):
        name = f"{c1}-{c2}-{units}"
        path = os.path.join(out_dir, f"lenet_{c1}_{c2}_{units}.tflite")
        step(COMMAND, f"exporting {k + 1}/{len(widths)}: LeNet {name}")
        ssl_keras.export_tflite(lenet(filters=(c1, c2), units=units), path)
        paths.append(path)
        names[path] = name
    result = tflite_bench.benchmark(paths, threads=threads, runs=FLAGS.runs, progress=True)
    rows = [{"widths": names.get(e["path"], e["name"]), "threads": e["threads"],
             "macs": e["macs"], "median_us": e["median_us"], "speedup": e["speedup_vs_first"],
             "speedup_ci": e["speedup_ci"], "mac_ratio": e["mac_ratio_vs_first"],
             "efficiency": e["efficiency"], "error": e["error"]} for e in result["models"]]
    return {"runs": FLAGS.runs, "machine": result.get("machine"), "rows": rows}


def table(result):
    return markdown_table(result["rows"], [("widths", "widths", ""), ("threads", "threads", ""),
                                           *LATENCY_COLUMNS])


@interruptible(COMMAND)
def main(argv=None):
    widths, threads = _parse(sys.argv if argv is None else argv)
    quiet_tensorflow()
    run_and_report(COMMAND, lambda out_dir: run(out_dir, widths, threads), table, FLAGS.out_dir,
                   FLAGS.json)


if __name__ == "__main__":
    main()
