"""tflite_bench: side-by-side CPU latency of .tflite models, with MACs, baselines and
on-device runs.

Light on purpose: importing it never imports TensorFlow (the timing workers must not, and the
examples import this package next to Keras).

Public API:

    benchmark(paths, threads=(1,), runs=200, warmup=20, ...) -> dict   latency, side by side
    count_macs(path), count_params(path), model_info(path)             from the flatbuffer
    parse_log(text, local_models=None) -> dict        a benchmark_model log, same structure
    run_adb(paths, binary, threads=(1,), ...) -> dict                  on an Android device
    to_markdown(result), plot_png(result), write_outputs(result, ...)  reports
    make_baselines(arch, sparsity, out, ...) -> dict   tfmot pruning baselines (subprocess)

Command lines: `python -m tflite_bench --help`, `python -m tflite_bench.baselines --help`.
"""

from tflite_bench.baselines_api import make_baselines
from tflite_bench.device import parse_log, run_adb
from tflite_bench.model_info import count_macs, count_params, model_info
from tflite_bench.report import plot_png, to_markdown, write_outputs
from tflite_bench.runner import benchmark, summarize

__all__ = [
    "benchmark",
    "count_macs",
    "count_params",
    "make_baselines",
    "model_info",
    "parse_log",
    "plot_png",
    "run_adb",
    "summarize",
    "to_markdown",
    "write_outputs",
]
