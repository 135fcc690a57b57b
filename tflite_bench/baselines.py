"""Command line: tfmot magnitude-pruning baselines as .tflite files.

    python -m tflite_bench.baselines --arch lenet --sparsity 0.9 [--weights MODEL.keras]
        [--filters 3,12] [--data data.npz --steps 100] [--kinds elementwise,2of4] --out DIR
        [--overwrite]

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

--kinds chooses the pruned files (default: all four); the dense file is always written. A kind
left out is neither pruned nor fine-tuned nor converted: the examples ask for `elementwise`
only.

Without --data the pruning is one-shot (masks computed once from the magnitudes, no
fine-tuning): the point is the latency at a given sparsity, not the accuracy. With --data
(.npz with x_train, y_train, x_test, y_test) the pruned model is fine-tuned --steps steps and
test accuracies are reported. Errors print one line and exit with code 2: the flags (--out a
folder or a folder to create in an existing folder, --filters two positive integers, --weights
a .keras file, --data the arrays the model takes) are checked before TensorFlow is imported;
the files are written only once all are converted, and a failed run leaves no --out folder it
created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile

from absl import flags

from tflite_bench import _cli
from tflite_bench._cli import UsageError, normalize
from tflite_bench.baselines_api import ARCHS

FLAGS = flags.FlagValues()
# The pruned files, in the order they are written (the dense file is always written too).
KINDS = ("elementwise", "elementwise_sparseflag", "2of4", "2of4_sparseflag")
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
flags.DEFINE_integer("seed", 0, "Random seed.",
                     lower_bound=0, upper_bound=2 ** 32 - 1, flag_values=FLAGS)
flags.DEFINE_list("kinds", list(KINDS), "The pruned files to write, among "
                  f"{', '.join(KINDS)}.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "Output folder.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace the files of --out that this run writes; "
                  "other files (an earlier run's other --kinds) are left as they are, and "
                  "baselines.json lists this run's files only.", flag_values=FLAGS)

USAGE = "python -m tflite_bench.baselines --arch lenet --sparsity 0.9 --out DIR"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _file_names(arch, sparsity):
    pct = f"{round(sparsity * 100, 4):g}"  # 11.5, not 12 (0.115 and 0.125 were one name)
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
    used = set()
    for layer in model.layers:
        n = len(layer.get_weights())
        if not n:
            continue
        used.update(f"{layer.name}/{i}" for i in range(n))
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
    unused = sorted({key.rsplit("/", 1)[0] for key in weights
                     if "/" in key and key not in used})
    if unused:  # e.g. a ResNet-32 file under --arch resnet20: its extra blocks dropped
        raise UsageError(
            "--weights: the .keras model has layers with weights that the rebuilt "
            f"{model.name!r} does not have (another architecture or depth?). Received: "
            f"{unused[:8]}"
            + (f" and {len(unused) - 8} more" if len(unused) > 8 else ""))


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


def _accuracy(model, data):
    if data is None:
        return None
    logits = model.predict(data["x_test"], verbose=0, batch_size=256)
    return float((logits.argmax(-1) == data["y_test"].reshape(-1)).mean())


def _check_out(out):
    """Refuses, before any work, an --out that is not a folder or a folder to create in an
    existing folder, or where no file can be created. Returns True if it must be created."""
    from tflite_bench.report import _probe_folder

    got = f"Received: --out={out}"
    if not out:
        raise UsageError("--out is empty. Expected: a folder (existing, or one to create in an "
                         "existing folder). Received: --out=''")
    path = os.path.abspath(out)
    if os.path.isdir(path):
        folder, create = path, False
    elif os.path.lexists(path):
        raise UsageError(f"--out is a file. Expected: a folder (existing, or one to create in "
                         f"an existing folder). {got}")
    else:
        folder, create = os.path.dirname(path), True
        if not os.path.isdir(folder):
            what = "is a file" if os.path.exists(folder) else "does not exist"
            raise UsageError(f"--out: its parent folder {folder} {what}. Expected: a folder "
                             f"(existing, or one to create in an existing folder). {got}")
    try:
        _probe_folder(folder, got)
    except OSError as e:
        raise UsageError(f"--out: {_cli.one_line(e)}") from None
    return create


def _check_filters(values, arch):
    """--filters as a tuple of two positive ints (LeNet's conv widths), or None."""
    if values is None:
        return None
    given = f"--filters={','.join(values)}"
    if arch != "lenet":
        raise UsageError(f"--filters is for --arch lenet. Received: --arch={arch}")
    try:
        filters = tuple(int(v) for v in values)
    except ValueError:
        filters = ()
    if len(filters) != 2 or any(f < 1 for f in filters):
        raise UsageError(f"--filters takes two positive integers, the widths of conv1 and conv2. "
                         f"Expected: e.g. --filters=3,12. Received: {given}")
    return filters


def _check_kinds(values):
    """--kinds as a tuple in KINDS order, each once; refuses an empty or unknown kind."""
    given = f"--kinds={','.join(values)}"
    unknown = [v for v in values if v not in KINDS]
    if unknown or not values:
        raise UsageError(f"--kinds takes one or more of {', '.join(KINDS)}, separated by "
                         f"commas. Received: {given}")
    return tuple(k for k in KINDS if k in values)


def _check_weights(path):
    """Refuses a --weights that is not a Keras model file, before any work."""
    if path is None:
        return
    got = f"Received: --weights={path}"
    if not path:
        raise UsageError("--weights is empty. Expected: a Keras 3 .keras file. Received: "
                         "--weights=''")
    if not os.path.isfile(path):
        what = "it is a directory" if os.path.isdir(path) else "no such file"
        raise UsageError(f"--weights: {what}. Expected: a Keras 3 .keras file. {got}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        ok = head == _HDF5_SIGNATURE  # a legacy .h5 model, which Keras 3 still loads
        if not ok and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                ok = "config.json" in z.namelist()
    except (OSError, zipfile.BadZipFile) as e:
        raise UsageError(f"--weights: cannot read the file ({_cli.one_line(e)}). {got}") \
            from None
    if not ok:
        raise UsageError(f"--weights is not a valid .keras file. Expected: a Keras 3 model "
                         f"saved with model.save('name.keras') (a zip archive holding "
                         f"config.json). {got}")


def _load_data(path, np):
    """The --data arrays, or None."""
    if path is None:
        return None
    got = f"Received: --data={path}"
    if not path:
        raise UsageError("--data is empty. Expected: an .npz with x_train, y_train, x_test, "
                         "y_test. Received: --data=''")
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, AttributeError, TypeError,
            zipfile.BadZipFile) as e:
        raise UsageError(f"--data must be an .npz with x_train, y_train, x_test, y_test. "
                         f"{got} ({_cli.one_line(e)})") from None
    for part in ("train", "test"):
        x, y = data[f"x_{part}"], data[f"y_{part}"]
        if x.ndim < 2 or not len(x) or len(x) != len(y):
            raise UsageError(f"--data: x_{part} must be a batch of inputs with one label each "
                             f"in y_{part}. Received: --data={path} with x_{part} of shape "
                             f"{x.shape}, y_{part} of shape {y.shape}")
    return data


def _default_param(builder, name):
    """The default of a builder's argument (`input_shape` as a tuple, `num_classes`), or None
    if its signature does not say."""
    import inspect

    try:
        param = inspect.signature(builder).parameters.get(name)
    except (TypeError, ValueError):
        return None
    if param is None or param.default is param.empty:
        return None
    return tuple(param.default) if name == "input_shape" else param.default


def run(argv):
    """Runs the command line; returns the manifest dict.

    Every input is checked before TensorFlow is imported; nothing is written (and no --out
    folder is created) unless every model was built and converted.
    """
    FLAGS.unparse_flags()
    try:
        rest = FLAGS(normalize(argv, flag_values=FLAGS))
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments. Expected: {USAGE}. Received: {rest[1:]}")
    if FLAGS.arch is None or FLAGS.out is None:
        raise UsageError(f"--arch and --out are required. Expected: {USAGE}")
    arch, sparsity, out = FLAGS.arch, FLAGS.sparsity, FLAGS.out
    create_out = _check_out(out)
    filters = _check_filters(FLAGS.filters, arch)
    _check_weights(FLAGS.weights)
    kinds = _check_kinds(FLAGS.kinds)
    names = {k: v for k, v in _file_names(arch, sparsity).items() if k in ("dense", *kinds)}
    paths = {k: os.path.join(out, v) for k, v in names.items()}
    manifest_path = os.path.join(out, "baselines.json")
    existing = [p for p in [*paths.values(), manifest_path] if os.path.lexists(p)]
    if existing and not FLAGS.overwrite:
        raise UsageError(f"Output files exist; pass --overwrite to replace them. Received: "
                         f"{existing[0]}")
    directories = [p for p in existing if os.path.isdir(p)]
    if directories:
        raise UsageError(f"An output file of --out is an existing directory. Expected: no "
                         f"directory of that name in --out. Received: {directories[0]}")
    try:
        from examples.models import BUILDERS
    except ImportError as e:
        raise UsageError(f"The architectures come from examples/models.py, which is not "
                         f"importable here (run from the repository root): {e}") from None
    import numpy as np

    data = _load_data(FLAGS.data, np)
    weights = _dump_keras3_weights(FLAGS.weights) if FLAGS.weights else None
    kwargs = _builder_kwargs(arch, weights)
    if filters is not None:
        if weights is not None and kwargs["filters"] != filters:
            raise UsageError(f"--filters does not match the conv widths of --weights "
                             f"{kwargs['filters']}. Expected: no --filters with --weights (the "
                             f"widths are read from the weights), or the same widths. "
                             f"Received: --filters={','.join(FLAGS.filters)}")
        kwargs["filters"] = filters
    input_shape = kwargs.get("input_shape") or _default_param(BUILDERS[arch], "input_shape")
    if data is not None and input_shape is not None:
        for part in ("x_train", "x_test"):
            if tuple(data[part].shape[1:]) != tuple(input_shape):
                raise UsageError(f"--data: the inputs in {part} do not fit the model. Expected: "
                                 f"shape (N, {', '.join(map(str, input_shape))}). Received: "
                                 f"{data[part].shape}")
    classes = kwargs.get("num_classes") or _default_param(BUILDERS[arch], "num_classes")
    if data is not None and classes is not None:
        for part in ("y_train", "y_test"):
            y = np.asarray(data[part])
            numeric = y.dtype.kind in "biuf" and y.size
            if (not numeric or y.ndim != 1 or not np.all(np.isfinite(y))
                    or np.any(y != np.round(y)) or y.min() < 0 or y.max() >= classes):
                got = (f"first values {y.reshape(-1)[:5].tolist()}, range [{y.min()}, "
                       f"{y.max()}]" if numeric else f"dtype {y.dtype}, {y.size} values")
                raise UsageError(f"--data: {part} must hold one class label per input, whole "
                                 f"numbers in [0, {classes}) (the model has {classes} "
                                 f"classes). Received: shape {y.shape}, {got}")

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    with _cli.quiet_stderr():  # TensorFlow's C++ lines ignore TF_CPP_MIN_LOG_LEVEL here
        import tensorflow as tf  # (not through ssl_keras: this process stays Keras-2 only)

        tf.config.list_physical_devices()  # "failed call to cuInit" on a machine without GPU
        try:
            import tensorflow_model_optimization as tfmot
            import tf_keras
        except ImportError as error:
            raise UsageError(
                "the tfmot baselines need tensorflow-model-optimization and tf-keras (pip "
                "install -e .[bench]). Received: "
                f"{type(error).__name__}: {str(error).splitlines()[0]}") from error

    tf.random.set_seed(FLAGS.seed)
    np.random.seed(FLAGS.seed)
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
                "steps": FLAGS.steps if data is not None else 0, "kinds": list(kinds),
                "dense_accuracy": _accuracy(dense, data), "files": []}

    def record(kind, model, skipped, achieved):
        score = _accuracy(model, data)  # the Keras model's: one for both conversions
        for flag in (False, True):
            key = kind + ("_sparseflag" if flag else "")
            if key not in kinds:
                continue
            pending[paths[key]] = _to_tflite(tf, model, input_shape, flag)
            manifest["files"].append({
                "kind": key, "file": names[key], "path": paths[key],
                "size_bytes": len(pending[paths[key]]),
                "kernel_sparsity": achieved, "experimental_sparsity_flag": flag,
                "not_pruned_layers": skipped, "accuracy": score})

    pending = {paths["dense"]: _to_tflite(tf, dense, input_shape, False)}
    manifest["files"].append({"kind": "dense", "file": names["dense"], "path": paths["dense"],
                              "size_bytes": len(pending[paths["dense"]]),
                              "kernel_sparsity": _kernel_sparsity(dense),
                              "experimental_sparsity_flag": False, "not_pruned_layers": [],
                              "accuracy": manifest["dense_accuracy"]})
    for kind, extra in (("elementwise", {}), ("2of4", {"sparsity_m_by_n": (2, 4)})):
        if kind not in kinds and f"{kind}_sparseflag" not in kinds:
            continue  # not asked for: not pruned, fine-tuned or converted
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
    pending[manifest_path] = (json.dumps(manifest, indent=2) + "\n").encode()
    _write_all(out, create_out, pending)  # nothing is written before everything converted
    return manifest


def _write_all(out, create_out, contents):
    """Writes `contents` ({path: bytes}) into --out, all or none; a folder created here is
    removed again if the writing fails."""
    from tflite_bench.report import write_files

    if create_out:
        try:
            os.mkdir(out)
        except OSError as e:
            raise UsageError(f"--out: cannot create the folder ({e.strerror or e}). Received: "
                             f"--out={out}") from None
    try:
        # existing files were refused up front; one that appeared since is refused here
        write_files(contents, overwrite=FLAGS.overwrite)
    except BaseException:
        if create_out:
            try:
                os.rmdir(out)
            except OSError:
                pass
        raise


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
