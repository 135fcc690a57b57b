"""Command line: tfmot magnitude-pruning baselines as .tflite files.

    python -m tflite_bench.baselines --arch lenet --sparsity 0.9 [--weights MODEL.keras]
        [--filters 3,12] [--data data.npz --steps 100] --out DIR [--overwrite]

Runs in its own process: tfmot only works with tf_keras and switches the process to Keras 2.
The architecture is rebuilt with the builder of examples/models.py and `keras=tf_keras`, so
the baseline is the very same network. With --weights, a Keras 3 .keras file's weights are
dumped by layer name in a separate Keras 3 process and set by name here; the layer widths are
read from the weights' shapes (or --filters for LeNet).

Writes to DIR, for ARCH and sparsity S (in percent):
    ARCH_dense.tflite               the unpruned model (same weights)
    ARCH_sparsityS.tflite           element-wise magnitude pruning at S
    ARCH_sparsityS_sparseflag.tflite  the same, converted with Optimize.EXPERIMENTAL_SPARSITY
    ARCH_2of4.tflite                2:4 (m-by-n) pruning
    ARCH_2of4_sparseflag.tflite     the same, with EXPERIMENTAL_SPARSITY
    baselines.json                  manifest: files, measured weight sparsity, pruning mode,
                                    accuracies when --data is given

Without --data the pruning is one-shot (masks computed once from the magnitudes, no
fine-tuning): the point is the latency at a given sparsity, not the accuracy. With --data
(.npz with x_train, y_train, x_test, y_test) the pruned model is fine-tuned --steps steps and
test accuracies are reported. Errors print one line and exit with code 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import flags

from tflite_bench import _cli
from tflite_bench._cli import UsageError, normalize
from tflite_bench.baselines_api import ARCHS

FLAGS = flags.FlagValues()
flags.DEFINE_enum("arch", None, list(ARCHS), "Architecture (examples/models.py).",
                  flag_values=FLAGS)
flags.DEFINE_float("sparsity", 0.9, "Element-wise sparsity, in (0, 1).", lower_bound=0.01,
                   upper_bound=0.99, flag_values=FLAGS)
flags.DEFINE_string("weights", None, "Keras 3 .keras model to start from.", flag_values=FLAGS)
flags.DEFINE_list("filters", None, "LeNet conv widths, e.g. 3,12.", flag_values=FLAGS)
flags.DEFINE_string("data", None, ".npz with x_train, y_train, x_test, y_test.",
                    flag_values=FLAGS)
flags.DEFINE_integer("steps", 100, "Fine-tuning steps with --data.", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Fine-tuning batch size.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output folder.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace existing files in --out.", flag_values=FLAGS)




def _file_names(arch, sparsity):
    pct = round(sparsity * 100)
    return {
        "dense": f"{arch}_dense.tflite",
        "elementwise": f"{arch}_sparsity{pct}.tflite",
        "elementwise_sparseflag": f"{arch}_sparsity{pct}_sparseflag.tflite",
        "2of4": f"{arch}_2of4.tflite",
        "2of4_sparseflag": f"{arch}_2of4_sparseflag.tflite",
    }


def _dump_keras3_weights(path):
    """Runs tflite_bench._keras3_weights in a Keras 3 process; returns {key: array}."""
    import numpy as np

    if not os.path.isfile(path):
        raise UsageError(f"--weights: no such file. Received: --weights={path}")
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as d:
        npz = os.path.join(d, "weights.npz")
        p = subprocess.run([sys.executable, "-m", "tflite_bench._keras3_weights", path, npz],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["?"])[-1]
            raise UsageError(f"--weights: could not load {path} with Keras 3: {tail}")
        with np.load(npz) as z:
            return {k: z[k] for k in z.files}


def _builder_kwargs(arch, weights):
    """Layer widths (and input shape / classes) of the builder, read from dumped weights."""
    kw = {}
    if weights is None:
        return kw
    kw["input_shape"] = tuple(int(d) for d in weights["__input_shape__"])

    def out(name):
        key = f"{name}/0"
        if key not in weights:
            raise UsageError(f"--weights: the model has no layer {name!r} with weights, so it "
                             f"is not a {arch} of examples/models.py. Layers with weights: "
                             f"{sorted({k.split('/')[0] for k in weights} - {'__input_shape__'})}")
        return int(weights[key].shape[-1])

    if arch == "lenet":
        kw.update(filters=(out("conv1"), out("conv2")), units=out("ip1"),
                  num_classes=out("ip2"))
    elif arch == "mlp":
        n = sum(1 for k in weights if k.startswith("fc") and k.endswith("/0"))
        kw.update(units=tuple(out(f"fc{i}") for i in range(1, n)), num_classes=out(f"fc{n}"))
    elif arch == "convnet":
        kw.update(filters=(out("conv1"), out("conv2"), out("conv3")), num_classes=out("ip1"))
    else:  # resnet: stage widths from the first block of each stage
        kw.update(widths=tuple(out(f"stage{s}_block1_conv2") for s in (1, 2, 3)),
                  num_classes=out("fc"))
    return kw


def _set_weights(model, weights):
    for layer in model.layers:
        n = len(layer.get_weights())
        if not n:
            continue
        arrays = [weights.get(f"{layer.name}/{i}") for i in range(n)]
        if any(a is None for a in arrays):
            raise UsageError(f"--weights: no weights for layer {layer.name!r} in the .keras "
                             "model.")
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(a.shape) for a in arrays] != expected:
            raise UsageError(
                f"--weights: the shapes of layer {layer.name!r} do not fit the rebuilt "
                f"architecture (a thinned model with per-layer widths the builder cannot "
                f"express?). Expected: {expected}. Received: {[a.shape for a in arrays]}")
        layer.set_weights(arrays)


def _kernel_sparsity(model):
    zeros = total = 0
    for layer in model.layers:
        for w in layer.weights:
            if "kernel" in w.name:
                v = w.numpy()
                zeros += int((v == 0).sum())
                total += v.size
    return zeros / total if total else 0.0


def _to_tflite(tf, model, input_shape, sparse_flag):
    fn = tf.function(lambda x: model(x, training=False))
    cf = fn.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], model)
    if sparse_flag:
        conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return conv.convert()


def _atomic_write(path, data):
    from tflite_bench.report import atomic_write

    atomic_write(path, data, overwrite=True)  # existing files were refused up front


def _accuracy(model, data):
    if data is None:
        return None
    logits = model.predict(data["x_test"], verbose=0, batch_size=256)
    return float((logits.argmax(-1) == data["y_test"].reshape(-1)).mean())


def run(argv):
    """Runs the command line; returns the manifest dict."""
    FLAGS.unparse_flags()
    try:
        FLAGS(normalize(argv))
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    if FLAGS.arch is None or FLAGS.out is None:
        raise UsageError("--arch and --out are required. Expected: python -m "
                         "tflite_bench.baselines --arch lenet --sparsity 0.9 --out DIR")
    arch, sparsity, out = FLAGS.arch, FLAGS.sparsity, FLAGS.out
    names = _file_names(arch, sparsity)
    paths = {k: os.path.join(out, v) for k, v in names.items()}
    manifest_path = os.path.join(out, "baselines.json")
    existing = [p for p in [*paths.values(), manifest_path] if os.path.exists(p)]
    if existing and not FLAGS.overwrite:
        raise UsageError(f"Output files exist; pass --overwrite to replace them. Received: "
                         f"{existing[0]}")
    import numpy as np

    data = None
    if FLAGS.data:
        try:
            with np.load(FLAGS.data) as z:
                data = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, KeyError, ValueError) as e:
            raise UsageError(f"--data must be an .npz with x_train, y_train, x_test, y_test. "
                             f"Received: --data={FLAGS.data} ({e})") from None
    weights = _dump_keras3_weights(FLAGS.weights) if FLAGS.weights else None
    kwargs = _builder_kwargs(arch, weights)
    if FLAGS.filters:
        if arch != "lenet":
            raise UsageError(f"--filters is for --arch lenet. Received: --arch={arch}")
        kwargs["filters"] = tuple(int(f) for f in FLAGS.filters)

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    try:
        from examples.models import BUILDERS
    except ImportError as e:
        raise UsageError(f"The architectures come from examples/models.py, which is not "
                         f"importable here (run from the repository root): {e}") from None

    tf.random.set_seed(FLAGS.seed)
    np.random.seed(FLAGS.seed)
    os.makedirs(out, exist_ok=True)
    dense = BUILDERS[arch](keras=tf_keras, **kwargs)
    if weights is not None:
        _set_weights(dense, weights)
    input_shape = tuple(dense.input_shape[1:])
    sparsity_api = tfmot.sparsity.keras
    prunable = (tf_keras.layers.Conv2D, tf_keras.layers.Dense)
    manifest = {"arch": arch, "builder_kwargs": {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in kwargs.items()},
                "weights": FLAGS.weights, "sparsity": sparsity,
                "pruning": ("fine-tuned" if data is not None and FLAGS.steps else "one-shot")
                + " tfmot magnitude pruning (prune_low_magnitude, ConstantSparsity)",
                "steps": FLAGS.steps if data is not None else 0,
                "dense_accuracy": _accuracy(dense, data), "files": []}

    def record(kind, model, skipped, achieved):
        for flag in (False, True):
            key = kind + ("_sparseflag" if flag else "")
            pending[paths[key]] = _to_tflite(tf, model, input_shape, flag)
            manifest["files"].append({
                "kind": key, "file": names[key], "path": paths[key],
                "size_bytes": len(pending[paths[key]]),
                "kernel_sparsity": achieved, "experimental_sparsity_flag": flag,
                "not_pruned_layers": skipped, "accuracy": _accuracy(model, data)})

    pending = {paths["dense"]: _to_tflite(tf, dense, input_shape, False)}
    manifest["files"].append({"kind": "dense", "file": names["dense"], "path": paths["dense"],
                              "size_bytes": len(pending[paths["dense"]]),
                              "kernel_sparsity": _kernel_sparsity(dense),
                              "experimental_sparsity_flag": False, "not_pruned_layers": [],
                              "accuracy": manifest["dense_accuracy"]})
    for kind, extra in (("elementwise", {}), ("2of4", {"sparsity_m_by_n": (2, 4)})):
        skipped = []
        target = 0.5 if extra else sparsity
        schedule = sparsity_api.ConstantSparsity(target, begin_step=0, frequency=1)

        def clone_fn(layer, extra=extra, schedule=schedule, skipped=skipped):
            fresh = layer.__class__.from_config(layer.get_config())
            if not isinstance(layer, prunable):
                return fresh
            try:  # wrap a copy: the wrapper would otherwise prune the dense model in place
                return sparsity_api.prune_low_magnitude(fresh, pruning_schedule=schedule,
                                                        **extra)
            except (ValueError, TypeError) as e:  # e.g. 2:4 on a too-small dimension
                skipped.append(f"{layer.name}: {' '.join(str(e).split())[:160]}")
                return fresh

        model = tf_keras.models.clone_model(dense, clone_function=clone_fn)
        for layer in model.layers:  # the wrapper adds mask / threshold / step weights
            inner = getattr(layer, "layer", layer)
            src = dense.get_layer(inner.name).get_weights()
            if src:
                inner.set_weights(src)
        finetune = data is not None and FLAGS.steps > 0
        lr = 1e-4 if finetune else 0.0
        model.compile(optimizer=tf_keras.optimizers.SGD(lr) if not finetune else
                      tf_keras.optimizers.Adam(lr),
                      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if finetune:
            n = len(data["x_train"])
            idx = np.random.default_rng(FLAGS.seed).integers(0, n, FLAGS.steps
                                                             * FLAGS.batch_size)
            x, y = data["x_train"][idx], data["y_train"][idx]
        else:  # one step with learning rate 0: the masks are computed, the weights kept
            x = np.zeros((1, *input_shape), np.float32)
            y = np.zeros((1,), np.int64)
        model.fit(x, y, batch_size=FLAGS.batch_size if finetune else 1, epochs=1, verbose=0,
                  callbacks=[sparsity_api.UpdatePruningStep()])
        stripped = sparsity_api.strip_pruning(model)
        record(kind, stripped, skipped, _kernel_sparsity(stripped))
    for path, content in pending.items():  # nothing is written before everything converted
        _atomic_write(path, content)
    _atomic_write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _run_and_print(argv):
    manifest = run(argv)
    for f in manifest["files"]:
        acc = "" if f["accuracy"] is None else f", accuracy {f['accuracy']:.4f}"
        print(f"{f['path']}: {f['size_bytes']} bytes, kernel sparsity "
              f"{f['kernel_sparsity']:.3f}{acc}")
    print(f"pruning: {manifest['pruning']}; manifest: "
          f"{os.path.join(FLAGS.out, 'baselines.json')}")
    return 0


def main(argv=None):
    """Entry point; returns the exit code."""
    return _cli.main("tflite_bench.baselines", __doc__, FLAGS, _run_and_print, argv)


if __name__ == "__main__":
    sys.exit(main())
