"""Command line: side-by-side CPU latency of .tflite models.

    python -m tflite_bench MODEL.tflite [MODEL2.tflite ...] --threads 1,2 --runs 200 \\
        --warmup 20 --json out.json --markdown out.md --plot out.png

    python -m tflite_bench dense.tflite thin.tflite --adb --benchmark_binary ./benchmark_model
    python -m tflite_bench --parse_log phone.log [dense.tflite thin.tflite] --json out.json

Flags may be spelled with dashes or underscores (--parse-log, --parse_log). `--no-xnnpack`
is `--kernels=builtin`. The first model is the baseline. The table is printed on stdout.
Every input (flags, models, output paths) is checked before the work: bad input (unknown
flag, bad value, a missing, corrupt or repeated model, an output path that cannot be written)
prints one line on stderr and exits with code 2. A model that passes the checks but fails to
load or run does not stop the others: they are measured and the table is printed, then one
error line, exit code 2, and no output file is written. Output files are written atomically,
all or none; existing files are refused unless --overwrite.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from tflite_bench import _cli, device, report, runner
from tflite_bench._cli import UsageError
from tflite_bench._worker import KERNELS
from tflite_bench.model_info import model_info

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
flags.DEFINE_integer("seed", 0, "Seed of inputs, round order and bootstrap.", lower_bound=0,
                     upper_bound=2 ** 32 - 1, flag_values=FLAGS)
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
    return _cli.normalize(argv, aliases={"no_xnnpack": "kernels=builtin"}, flag_values=FLAGS)


def _int_list(name, values):
    """The integers of a comma-separated list flag; one-line errors name the flag."""
    given = f"--{name}={','.join(values)}"
    if not values:
        raise UsageError(f"--{name} is empty. Expected: comma-separated integers, e.g. "
                         f"--{name}=1,2. Received: {given}")
    try:
        ints = [int(v) for v in values]
    except ValueError:
        raise UsageError(f"--{name} takes comma-separated integers. Received: {given}") \
            from None
    dup = sorted({v for v in ints if ints.count(v) > 1})
    if dup:
        raise UsageError(f"--{name} lists {', '.join(map(str, dup))} more than once. Expected: "
                         f"distinct values. Received: {given}")
    return ints


def _check_models(paths, by_name):
    """Refuses, before any work, model paths that are given twice or cannot be read.

    `by_name`: file names must differ too (--adb pushes the models into one device folder,
    --parse_log matches the log's graphs to the models by file name).
    """
    seen, names = {}, {}
    for p in paths:
        if not p:
            raise UsageError("A model path is empty. Expected: .tflite paths. Received: ''")
        real = os.path.realpath(p)
        if real in seen:
            raise UsageError(f"A model is given twice. Expected: each model once (the "
                             f"timings of a model given twice would be pooled). Received: "
                             f"{seen[real]!r} and {p!r}")
        seen[real] = p
        name = os.path.basename(p)
        if by_name and name in names:
            why = ("--parse_log matches the log's graphs to the models by file name"
                   if FLAGS.parse_log is not None else
                   "--adb copies the models into one folder on the device")
            raise UsageError(f"Two models have the file name {name!r}: {why}. Expected: "
                             f"distinct file names. Received: {names[name]!r}, {p!r}")
        names[name] = p
    errors = []
    for p in paths:
        try:
            model_info(p)
        except (OSError, ValueError) as e:
            errors.append(f"{p}: {_cli.one_line(e)}")
        except Exception as e:  # a corrupt flatbuffer fails deep in the schema reader
            errors.append(f"{p}: not a readable .tflite flatbuffer ({type(e).__name__}: "
                          f"{_cli.one_line(e)})")
    if len(errors) == 1:
        raise UsageError(errors[0])
    if errors:
        raise UsageError(f"{len(errors)} models cannot be used: " + "; ".join(errors))


def _parse(argv):
    FLAGS.unparse_flags()  # back to defaults, so that run() can be called again
    try:
        rest = FLAGS(_normalize(argv))[1:]
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    threads = _int_list("threads", FLAGS.threads)
    if any(t < 1 for t in threads):
        raise UsageError(f"--threads must be positive. Received: --threads={threads}")
    cores = None if FLAGS.cores is None else _int_list("cores", FLAGS.cores)
    if cores and hasattr(os, "sched_getaffinity") and not set(cores) <= os.sched_getaffinity(0):
        raise UsageError(f"--cores must be cores this process may run on "
                         f"({sorted(os.sched_getaffinity(0))}). Received: --cores={cores}")
    if FLAGS.parse_log is not None:
        if FLAGS.adb:
            raise UsageError("--parse_log and --adb exclude each other. Expected: one of them "
                             "(--parse_log reads a log taken elsewhere, --adb runs on a device)."
                             " Received: both")
        if not FLAGS.parse_log:
            raise UsageError("--parse_log is empty. Expected: the path of a benchmark_model "
                             "log. Received: --parse_log=''")
        if not os.path.isfile(FLAGS.parse_log):
            what = "It is a directory" if os.path.isdir(FLAGS.parse_log) else "No such file"
            raise UsageError(f"--parse_log: {what}. Expected: the path of a benchmark_model log "
                             f"file. Received: --parse_log={FLAGS.parse_log}")
    elif not rest:
        raise UsageError("No model given. Expected: python -m tflite_bench MODEL.tflite "
                         "[MODEL2.tflite ...] [flags]")
    if FLAGS.adb:
        if not FLAGS.benchmark_binary:
            raise UsageError("--adb needs --benchmark_binary PATH (a benchmark_model binary "
                             "built for the device).")
        if not os.path.isfile(FLAGS.benchmark_binary):
            raise UsageError(f"--benchmark_binary: no such file. Expected: a benchmark_model "
                             f"binary built for the device. Received: --benchmark_binary="
                             f"{FLAGS.benchmark_binary}")
    _check_models(rest, by_name=FLAGS.adb or FLAGS.parse_log is not None)
    inputs = [*rest, *([FLAGS.parse_log] if FLAGS.parse_log else [])]
    if FLAGS.adb and FLAGS.benchmark_binary:
        inputs.append(FLAGS.benchmark_binary)
    try:
        report.check_outputs(_outputs(), FLAGS.overwrite, inputs=inputs)
    except (OSError, ValueError) as e:
        raise UsageError(_cli.one_line(e)) from None
    if FLAGS.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib, which is not installed. Expected: pip "
                             "install 'ssl_keras[plot]' (or matplotlib), or no --plot. "
                             f"Received: --plot={FLAGS.plot}") from None
    return rest, threads, cores


def _outputs():
    return {"--json": FLAGS.json, "--markdown": FLAGS.markdown, "--plot": FLAGS.plot}


def run(argv):
    """Runs the command line; returns (exit code, result dict or None).

    Every input is checked before the work. The table is printed first; the output files are
    written only if every model was measured (a failed run writes none).
    """
    paths, threads, cores = _parse(argv)
    if FLAGS.parse_log is not None:
        try:
            with open(FLAGS.parse_log, encoding="utf-8", errors="replace") as f:
                text = f.read()
            result = device.parse_log(text, local_models=paths)
        except (OSError, ValueError) as e:
            raise UsageError(f"--parse_log {FLAGS.parse_log}: {_cli.one_line(e)}") from None
    elif FLAGS.adb:
        try:
            result = device.run_adb(paths, FLAGS.benchmark_binary, threads, FLAGS.runs,
                                    FLAGS.warmup, xnnpack=FLAGS.kernels == "xnnpack",
                                    serial=FLAGS.adb_serial)
        except (device.AdbError, FileNotFoundError) as e:
            raise UsageError(_cli.one_line(e)) from None
    else:
        result = runner.benchmark(paths, threads=threads, runs=FLAGS.runs,
                                  warmup=FLAGS.warmup, round_size=FLAGS.round_size,
                                  kernels=FLAGS.kernels, cores=cores, seed=FLAGS.seed,
                                  progress=FLAGS.progress, resamples=FLAGS.resamples,
                                  confidence=FLAGS.confidence)
    sys.stdout.write(report.to_markdown(result))
    sys.stdout.flush()
    errors = {}
    for e in result["models"]:
        if e.get("error"):
            errors.setdefault(e["path"], e["error"])
    if errors:
        requested = [flag for flag, p in _outputs().items() if p is not None]
        note = (f" (the other models were measured; nothing written: "
                f"{', '.join(requested)})" if requested else "")
        msg = "; ".join(f"{p}: {_cli.one_line(err)}" for p, err in errors.items())
        if len(errors) > 1:
            msg = f"{len(errors)} models failed: {msg}"
        sys.stderr.write(f"tflite_bench: error: {msg}{note}\n")
        return 2, result
    report.write_outputs(result, FLAGS.json, FLAGS.markdown, FLAGS.plot, FLAGS.overwrite)
    return 0, result


def main(argv=None):
    """Entry point; returns the process exit code."""
    return _cli.main("tflite_bench", __doc__, FLAGS, lambda a: run(a)[0], argv)


if __name__ == "__main__":
    sys.exit(main())
