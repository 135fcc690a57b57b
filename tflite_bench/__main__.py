"""Command line: side-by-side CPU latency of .tflite models.

    python -m tflite_bench MODEL.tflite [MODEL2.tflite ...] --threads 1,2 --runs 200 \\
        --warmup 20 --json out.json --markdown out.md --plot out.png

    python -m tflite_bench dense.tflite thin.tflite --adb --benchmark_binary ./benchmark_model
    python -m tflite_bench --parse_log phone.log [dense.tflite thin.tflite] --json out.json

Flags may be spelled with dashes or underscores (--parse-log, --parse_log). `--no-xnnpack`
is `--kernels=builtin`. The first model is the baseline. The table is printed on stdout.
Bad input (unknown flag, bad value, missing or corrupt model, a model that fails to load)
prints one line per problem on stderr and exits with code 2; the other models are still
measured and reported.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from tflite_bench import _cli, device, report, runner
from tflite_bench._cli import UsageError
from tflite_bench._worker import KERNELS

FLAGS = flags.FlagValues()
flags.DEFINE_list("threads", ["1"], "Thread counts, comma-separated.", flag_values=FLAGS)
flags.DEFINE_integer("runs", 200, "Timed invokes per model and thread count.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("warmup", 20, "Untimed invokes after the first one.", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer("round_size", 10, "Invokes per model per interleaved round.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum("kernels", "xnnpack", list(KERNELS),
                  "xnnpack (default delegate), builtin (no XNNPACK) or reference kernels.",
                  flag_values=FLAGS)
flags.DEFINE_list("cores", None, "Core ids to pin the workers to (default: all allowed).",
                  flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of inputs, round order and bootstrap.", flag_values=FLAGS)
flags.DEFINE_integer("resamples", 1000, "Bootstrap resamples of the speedup interval.",
                     lower_bound=10, flag_values=FLAGS)
flags.DEFINE_float("confidence", 0.95, "Coverage of the speedup interval.", lower_bound=0.5,
                   upper_bound=0.999, flag_values=FLAGS)
flags.DEFINE_string("json", None, "Write the JSON result here.", flag_values=FLAGS)
flags.DEFINE_string("markdown", None, "Write the Markdown table here.", flag_values=FLAGS)
flags.DEFINE_string("plot", None, "Write a PNG bar chart here.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace existing output files.", flag_values=FLAGS)
flags.DEFINE_bool("progress", True, "Draw a progress bar on stderr.", flag_values=FLAGS)
flags.DEFINE_bool("adb", False, "Run on an Android device with benchmark_model over adb.",
                  flag_values=FLAGS)
flags.DEFINE_string("benchmark_binary", None, "benchmark_model binary for --adb.",
                    flag_values=FLAGS)
flags.DEFINE_string("adb_serial", None, "Device serial for --adb (adb -s).", flag_values=FLAGS)
flags.DEFINE_string("parse_log", None, "Import a benchmark_model log taken elsewhere; the "
                    "model arguments (optional) give MACs by file name.", flag_values=FLAGS)


def _normalize(argv):
    return _cli.normalize(argv, aliases={"no_xnnpack": "kernels=builtin"})


def _parse(argv):
    FLAGS.unparse_flags()  # back to defaults, so that run() can be called again
    try:
        rest = FLAGS(_normalize(argv))[1:]
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    try:
        threads = [int(t) for t in FLAGS.threads]
        cores = [int(c) for c in FLAGS.cores] if FLAGS.cores else None
    except ValueError:
        raise UsageError(f"--threads and --cores take comma-separated integers. Received: "
                         f"--threads={','.join(FLAGS.threads)}") from None
    if cores and hasattr(os, "sched_getaffinity") and not set(cores) <= os.sched_getaffinity(0):
        raise UsageError(f"--cores must be cores this process may run on "
                         f"({sorted(os.sched_getaffinity(0))}). Received: --cores={cores}")
    if any(t < 1 for t in threads):
        raise UsageError(f"--threads must be positive. Received: --threads={threads}")
    if not rest and not FLAGS.parse_log:
        raise UsageError("No model given. Expected: python -m tflite_bench MODEL.tflite "
                         "[MODEL2.tflite ...] [flags]")
    if FLAGS.adb and not FLAGS.benchmark_binary:
        raise UsageError("--adb needs --benchmark_binary PATH (a benchmark_model binary built "
                         "for the device).")
    try:
        report.check_outputs([FLAGS.json, FLAGS.markdown, FLAGS.plot], FLAGS.overwrite)
    except (FileExistsError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    return rest, threads, cores


def run(argv):
    """Runs the command line; returns (exit code, result dict or None)."""
    paths, threads, cores = _parse(argv)
    if FLAGS.parse_log:
        try:
            with open(FLAGS.parse_log, encoding="utf-8", errors="replace") as f:
                text = f.read()
            result = device.parse_log(text, local_models=paths)
        except (OSError, ValueError) as e:
            raise UsageError(f"--parse_log {FLAGS.parse_log}: {' '.join(str(e).split())}") \
                from None
    elif FLAGS.adb:
        try:
            result = device.run_adb(paths, FLAGS.benchmark_binary, threads, FLAGS.runs,
                                    FLAGS.warmup, xnnpack=FLAGS.kernels == "xnnpack",
                                    serial=FLAGS.adb_serial)
        except (device.AdbError, FileNotFoundError) as e:
            raise UsageError(" ".join(str(e).split())) from None
    else:
        result = runner.benchmark(paths, threads=threads, runs=FLAGS.runs,
                                  warmup=FLAGS.warmup, round_size=FLAGS.round_size,
                                  kernels=FLAGS.kernels, cores=cores, seed=FLAGS.seed,
                                  progress=FLAGS.progress, resamples=FLAGS.resamples,
                                  confidence=FLAGS.confidence)
    report.write_outputs(result, FLAGS.json, FLAGS.markdown, FLAGS.plot, FLAGS.overwrite)
    sys.stdout.write(report.to_markdown(result))
    errors = {}
    for e in result["models"]:
        if e.get("error"):
            errors.setdefault(e["path"], e["error"])
    for path, err in errors.items():
        sys.stderr.write(f"tflite_bench: error: {path}: {err}\n")
    return (2 if errors else 0), result


def main(argv=None):
    """Entry point; returns the process exit code."""
    return _cli.main("tflite_bench", __doc__, FLAGS, lambda a: run(a)[0], argv)


if __name__ == "__main__":
    sys.exit(main())
