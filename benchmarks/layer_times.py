"""Where a chain model's TFLite latency goes: every prefix of the model, timed side by side.

    python -m benchmarks.layer_times model.keras [--runs 300 --threads 1 --json out.json
                                                  --out_dir dir --quantize int8]

For a Keras model whose layers form a chain (Sequential, or a functional model in which
every layer has one input and feeds the next one, such as the examples' LeNet and MLP), the
model cut after each layer (its layers up to that one, same weights) is exported to .tflite
(ssl_keras.export_tflite, float32 outputs verified; `--quantize` as export_tflite's
`quantize`, full-integer int8 calibrated on 64 seeded inputs, which set the scales but not the
work: uniform [0, 1) for a float input, ids in [0, input_dim) for an input an Embedding reads,
0 or 1 for another integer input) and all the cuts are timed interleaved with
tflite_bench.benchmark (LiteRT, XNNPACK, batch 1). A layer's cost is its cut's median
minus the previous cut's: differences of medians, so a layer that costs less than the noise
can show a small negative figure. The first cut's figure includes the interpreter's fixed
cost of an invoke. A cut that could not be timed shows "-" for itself and the next layer, and
its error under the table. The input must have a static shape apart from the batch. Not a
test: timings depend on the machine and its load.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from benchmarks._util import (  # noqa: E402
    check_latency_flags,
    define_latency_flags,
    fail,
    fmt,
    interruptible,
    parse_flags,
    quiet_tensorflow,
    run_and_report,
    step,
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
    quiet_tensorflow()  # TensorFlow's C++ lines ignore TF_CPP_MIN_LOG_LEVEL
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
        layers = chain_layers(model)
        check_exportable(model, layers)
    except ValueError as e:
        fail(COMMAND, str(e))
    return model, layers


# TensorFlow's rule for the name scopes the export opens with the layers' names.
_SCOPE_NAME = re.compile(r"[A-Za-z0-9_.\\/>-]*")


def check_exportable(model, layers) -> None:
    """What export_tflite needs of every cut, checked before any work.

    Raises:
        ValueError: if the input's shape is not static apart from the batch, its dtype is not
            a float or integer one, or a layer's name is not a valid TensorFlow name scope.
    """
    from ssl_keras._export_inputs import _input_struct, _static_shapes

    _static_shapes(_input_struct(model))  # export_tflite's own: static shapes, dtypes
    for layer in layers:
        if not _SCOPE_NAME.fullmatch(layer.name):
            raise ValueError(
                "layer_times exports every cut with TensorFlow, whose name scopes allow only "
                "letters, digits and _ . \\ / > - in a layer's name. Received: layer "
                f"{layer.name!r} ({type(layer).__name__})")


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
    if not layers:
        raise ValueError("layer_times needs at least one layer after the model's input. "
                         "Received: a model whose output is its input")
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


def calibration_data(model, layers, count: int = 64, seed: int = 0):
    """`count` seeded inputs for int8 calibration (and the export's check), suited to the
    input: token ids in [0, input_dim) when the first layer is an Embedding (in the input's
    dtype), 0 or 1 for another integer input (valid for any lookup or encoding layer), else
    uniform [0, 1) floats."""
    import keras
    import numpy as np

    tensor = model.inputs[0]
    shape, dtype = (count, *tuple(tensor.shape[1:])), str(tensor.dtype)
    rng = np.random.default_rng(seed)
    if isinstance(layers[0], keras.layers.Embedding):
        return rng.integers(0, int(layers[0].input_dim), shape).astype(dtype)
    if dtype.startswith(("int", "uint")):
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.uniform(size=shape).astype("float32")


def cut_file_name(k: int, name: str) -> str:
    """The file of the cut after layer `name`, the `k`-th: a bounded, portable name (other
    characters than letters, digits, _ . - become _, at most 40 of them kept); the index
    keeps the names distinct."""
    return f"cut_{k:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:40]}.tflite"


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
    samples = None  # calibration, and the check's inputs for an integer input in any mode
    if quantize == "int8" or not str(inputs.dtype).startswith(("float", "bfloat")):
        samples = calibration_data(model, layers)
    paths, cuts = [], {}
    for k, (layer, output) in enumerate(zip(layers, outputs, strict=True)):
        step(COMMAND, f"exporting cut {k + 1}/{len(layers)} (up to layer '{layer.name}')")
        cut = keras.Model(inputs, output)
        target = os.path.join(out_dir, cut_file_name(k, layer.name))
        try:
            ssl_keras.export_tflite(cut, target, quantize=quantize,
                                    representative_data=samples)
        except Exception as e:  # whatever the conversion raises: name the cut, one line
            first = (str(e).strip().splitlines() or [""])[0][:300]
            fail(COMMAND, f"could not export the cut up to the {type(layer).__name__} layer "
                          f"'{layer.name}' ({type(e).__name__}: {first}); expected a chain "
                          "whose prefixes export_tflite converts.")
        paths.append(target)
        cuts[target] = k
    result = tflite_bench.benchmark(paths, threads=threads, runs=FLAGS.runs, progress=True)
    medians = {}
    for e in result["models"]:
        medians[cuts[e["path"]], e["threads"]] = e["median_us"]
    rows = []
    for e in result["models"]:
        k, t = cuts[e["path"]], e["threads"]
        layer = layers[k]
        before = None if k == 0 else medians[k - 1, t]
        rows.append({"layer": layer.name, "class": type(layer).__name__, "cut": k,
                     "threads": t, "cut_macs": e["macs"], "cut_median_us": e["median_us"],
                     "layer_us": None if before is None or e["median_us"] is None
                     else e["median_us"] - before,
                     "error": e["error"]})
    rows.sort(key=lambda r: (r["threads"], r["cut"]))
    total = {t: medians.get((len(layers) - 1, t)) for t in threads}
    for r in rows:  # the first cut's share includes the fixed cost of an invoke
        own = r["cut_median_us"] if r["cut"] == 0 else r["layer_us"]
        r["share"] = None if own is None or not total[r["threads"]] else own / total[r["threads"]]
    return {"model": path, "runs": FLAGS.runs, "quantize": FLAGS.quantize,
            "machine": result.get("machine"), "rows": rows}


def table(result) -> str:
    """The Markdown table; a cut that could not be timed shows "-" (and the next layer, whose
    cost is unknown too), with its error in a note under the table."""
    lines = ["| layer | class | threads | MACs so far | cut median us | layer us | share |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for r in result["rows"]:
        own = r["cut_median_us"] if r["cut"] == 0 else r["layer_us"]
        fixed = " (with the fixed cost)" if r["cut"] == 0 and own is not None else ""
        lines.append(
            f"| {r['layer']} | {r['class']} | {r['threads']} | {fmt(r['cut_macs'], ',')} | "
            f"{fmt(r['cut_median_us'], '.1f')} | {fmt(own, '.1f')}{fixed} | "
            f"{fmt(r['share'], '.0%')} |")
        if r["error"]:
            notes.append(f"- the cut up to '{r['layer']}' ({r['threads']} thread(s)) was not "
                         f"timed: {' '.join(str(r['error']).split())}")
    if notes:
        lines += ["", "Cuts that failed (\"-\": unknown):", *notes]
    return "\n".join(lines)


@interruptible(COMMAND)
def main(argv=None):
    path, threads = _parse(sys.argv if argv is None else argv)
    model, layers = load_chain(path)
    run_and_report(COMMAND, lambda out_dir: run(out_dir, path, model, layers, threads), table,
                   FLAGS.out_dir, FLAGS.json)


if __name__ == "__main__":
    main()
