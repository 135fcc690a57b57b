"""Where a chain model's TFLite latency goes: every prefix of the model, timed side by side.

    python -m benchmarks.layer_times model.keras [--runs 300 --threads 1 --json out.json
                                                  --out_dir dir --quantize int8]

For a Keras model whose layers form a chain (Sequential, or a functional model in which
every layer has one input and feeds the next one, such as the examples' LeNet and MLP), the
model cut after each layer (its layers up to that one, same weights) is exported to .tflite
(ssl_keras.export_tflite, float32 outputs verified; `--quantize` as export_tflite's
`quantize`, full-integer int8 calibrated on 64 seeded uniform [0, 1) inputs, which set the
scales but not the work) and all the cuts are timed interleaved with tflite_bench.benchmark
(LiteRT, XNNPACK, batch 1). A layer's cost is its cut's median
minus the previous cut's: differences of medians, so a layer that costs less than the noise
can show a small negative figure. The first cut's figure includes the interpreter's fixed
cost of an invoke. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import os
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from benchmarks._util import (  # noqa: E402
    check_latency_flags,
    define_latency_flags,
    fail,
    fmt,
    parse_flags,
    run_and_report,
)

FLAGS = flags.FlagValues()
define_latency_flags(FLAGS, runs=300, unit="cut")
flags.DEFINE_enum("quantize", "float32", ["float32", "float16", "dynamic", "int8"],
                  "The cuts' TFLite precision (export_tflite's quantize).", flag_values=FLAGS)

COMMAND = "benchmarks.layer_times"


def _parse(argv):
    rest = parse_flags(COMMAND, FLAGS, argv, __doc__, positionals=1,
                       expected="expected one .keras model file")
    path = rest[1]
    threads = check_latency_flags(COMMAND, FLAGS.runs, FLAGS.threads, FLAGS.json,
                                  FLAGS.out_dir)
    check_model_file(path)
    return path, threads


def check_model_file(path: str) -> None:
    """Fails in one line unless `path` is a Keras 3 .keras file (a zip archive with the
    model's config.json, as written by `model.save("m.keras")`)."""
    expected = 'expected a .keras model file (as written by model.save("m.keras"))'
    if not os.path.exists(path):
        fail(COMMAND, f"the model file {path!r} does not exist.")
    if os.path.isdir(path):
        fail(COMMAND, f"{expected}. Received: {path!r}, a directory")
    if not path.endswith(".keras"):
        fail(COMMAND, f"{expected}. Received: {path!r}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as e:
        fail(COMMAND, f"{expected}. Received: {path!r}, which is not a zip archive ({e})")
    except OSError as e:
        fail(COMMAND, f"the model file {path!r} cannot be read ({e.strerror}); {expected}.")
    if "config.json" not in names:
        fail(COMMAND, f"{expected}. Received: {path!r}, a zip archive without config.json")


def load_chain(path: str):
    """The model at `path` and its chain of layers (chain_layers), before any work: a model
    that does not load, or is not a chain, is one line (exit 2)."""
    from tflite_bench._cli import quiet_stderr

    with quiet_stderr():  # TensorFlow's C++ lines ignore TF_CPP_MIN_LOG_LEVEL here
        import tensorflow as tf

        tf.config.list_physical_devices()  # "failed call to cuInit" on a machine without GPU
    import keras
    from absl import logging

    import ssl_keras  # noqa: F401 - registers ConstantAdd, SSLModel, GroupLasso for loading

    logging.set_verbosity(logging.WARNING)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # whatever Keras raises, the input file is bad
        first = (str(e).strip().splitlines() or [""])[0][:300]
        fail(COMMAND, f"could not load the model {path!r} ({type(e).__name__}: {first}); "
                      "expected a .keras model file that keras.saving.load_model reads.")
    try:
        return model, chain_layers(model)
    except ValueError as e:
        fail(COMMAND, str(e))


def chain_layers(model) -> list:
    """The layers of `model` after its input, in order, if they form a chain.

    Raises:
        ValueError: if the model has several inputs or outputs, or a layer that does not
            take exactly the previous layer's output (a branch or a merge).
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            "layer_times needs a model with one input and one output. Received: "
            f"{len(model.inputs)} inputs, {len(model.outputs)} outputs")
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(model, keras.Sequential):  # a chain by construction
        return layers
    previous, before = model.inputs[0], "the model's input"
    for layer in layers:
        nodes = layer._inbound_nodes
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
            got = (f"{len(nodes)} calls" if len(nodes) != 1
                   else f"{len(nodes[0].input_tensors)} inputs")
            raise ValueError(
                "layer_times needs a chain: every layer is called once, on the previous "
                f"layer's output. Received: layer '{layer.name}' ({type(layer).__name__}) "
                f"with {got}")
        if nodes[0].input_tensors[0] is not previous:
            raise ValueError(
                "layer_times needs a chain: every layer is called once, on the previous "
                f"layer's output. Received: layer '{layer.name}' ({type(layer).__name__}) "
                f"does not take the output of {before}")
        previous, before = layer.output, f"'{layer.name}'"
    if previous is not model.outputs[0]:
        raise ValueError("layer_times needs a chain that ends in the model's output. "
                         f"Received: last layer '{layers[-1].name}' is not the output")
    return layers


def run(out_dir, path, model, layers, threads):
    import keras

    import ssl_keras
    import tflite_bench
    # The cuts call the same layers (same weights) on a new input: a Sequential model's
    # layers have several graph nodes, and this works for both kinds of chain.
    x = inputs = keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)
    outputs = []
    for layer in layers:
        x = layer(x)
        outputs.append(x)
    quantize = None if FLAGS.quantize == "float32" else FLAGS.quantize
    calibration = None
    if quantize == "int8":
        import numpy as np

        shape = tuple(model.inputs[0].shape[1:])
        calibration = np.random.default_rng(0).uniform(size=(64, *shape)).astype("float32")
    paths, names = [], {}
    for k, (layer, output) in enumerate(zip(layers, outputs, strict=True)):
        cut = keras.Model(inputs, output)
        target = os.path.join(out_dir, f"cut_{k:02d}_{layer.name}.tflite")
        report = ssl_keras.export_tflite(cut, target, quantize=quantize,
                                         representative_data=calibration)
        paths.append(target)
        names[report.path] = (layer.name, type(layer).__name__)
    result = tflite_bench.benchmark(paths, threads=threads, runs=FLAGS.runs, progress=True)
    rows, previous = [], {}
    for e in result["models"]:
        name, kind = names.get(e["path"], (e["name"], ""))
        before = previous.get(e["threads"])
        rows.append({"layer": name, "class": kind, "threads": e["threads"],
                     "cut_macs": e["macs"], "cut_median_us": e["median_us"],
                     "layer_us": None if before is None or e["median_us"] is None
                     else e["median_us"] - before,
                     "error": e["error"]})
        previous[e["threads"]] = e["median_us"]
    total = {r["threads"]: r["cut_median_us"] for r in rows}
    for r in rows:  # the first cut's share includes the fixed cost of an invoke
        own = r["cut_median_us"] if r["layer_us"] is None else r["layer_us"]
        r["share"] = None if own is None or not total[r["threads"]] else own / total[r["threads"]]
    return {"model": path, "runs": FLAGS.runs, "quantize": FLAGS.quantize,
            "machine": result.get("machine"), "rows": rows}


def table(result) -> str:
    lines = ["| layer | class | threads | MACs so far | cut median us | layer us | share |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        first = r["layer_us"] is None
        lines.append(
            f"| {r['layer']} | {r['class']} | {r['threads']} | {fmt(r['cut_macs'], ',')} | "
            f"{fmt(r['cut_median_us'], '.1f')} | "
            f"{fmt(r['cut_median_us'] if first else r['layer_us'], '.1f')}"
            f"{' (with the fixed cost)' if first else ''} | {fmt(r['share'], '.0%')} |")
    return "\n".join(lines)


def main(argv=None):
    path, threads = _parse(sys.argv if argv is None else argv)
    model, layers = load_chain(path)
    run_and_report(COMMAND, lambda out_dir: run(out_dir, path, model, layers, threads), table,
                   FLAGS.out_dir, FLAGS.json)


if __name__ == "__main__":
    main()
