"""Writes two LeNet-5 variants as float32 .tflite files, to time them with tflite_bench.

    cd REPO && python -m tflite_bench.demo --out DIR [--seed 0] [--overwrite]
    python -m tflite_bench DIR/lenet_20_50.tflite DIR/lenet_3_12.tflite --threads 1,2

Writes exactly two files into DIR (created if missing) and prints their paths:
    DIR/lenet_20_50.tflite   LeNet 20-50-500-10 (conv 20, conv 50, fc 500, fc 10), 2,293,000 MACs
    DIR/lenet_3_12.tflite    LeNet 3-12-500-10 (conv widths 3 and 12), 201,800 MACs
Both are examples/models.py's `lenet` (28x28x1 input) with untrained random weights (Keras'
initialisers, seeded with --seed), converted to float32 with batch size 1 through a
SavedModel and TFLiteConverter (no quantization, no verification against Keras).

The architecture comes from examples/models.py, which is not installed (setup.py installs
ssl_keras and tflite_bench only): run the command from the repository root. It imports
TensorFlow and Keras 3 (this is not a timing process). Existing files are refused unless
--overwrite; both models are converted before either is written, and a failed run removes the
files and folders it created. Errors print one line and exit with code 2.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import flags

from tflite_bench import _cli
from tflite_bench._cli import UsageError, normalize

FLAGS = flags.FlagValues()
flags.DEFINE_string("out", None, "Output folder (created if missing).", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the random weights.",
                     lower_bound=0, upper_bound=2 ** 32 - 1, flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace existing files.", flag_values=FLAGS)

MODELS = {"lenet_20_50.tflite": (20, 50), "lenet_3_12.tflite": (3, 12)}
USAGE = "python -m tflite_bench.demo --out DIR [--seed 0] [--overwrite]"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def to_float32_tflite(model) -> bytes:
    """Converts a Keras 3 model with one input to a float32 batch-1 .tflite flatbuffer."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as d:
        spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
        model.export(d, format="tf_saved_model", input_signature=[spec], verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(d).convert()


def _check_out(out):
    """Refuses an --out that is a file or lies under one, before any work."""
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        what = "is a file" if parent == os.path.abspath(out) else f"lies under the file {parent}"
        raise UsageError(f"--out must be a folder (existing or to create). Received: --out={out}"
                         f", which {what}")


def _import_lenet():
    """examples.models.lenet, or a UsageError saying where to run the command from."""
    try:
        from examples.models import lenet
    except ImportError as e:
        where = (f"the repository root ({ROOT})"
                 if os.path.isfile(os.path.join(ROOT, "examples", "models.py"))
                 else "the root of a checkout of the repository")
        raise UsageError(
            f"the demo models come from examples/models.py, which is not importable here ({e}; "
            f"setup.py does not install the examples package). Expected: run `{USAGE}` from "
            f"{where}. Received: working directory {os.getcwd()}") from None
    return lenet


def _make_folder(out):
    """Creates `out` and its missing parents; returns the folders created, innermost first."""
    created, d = [], os.path.abspath(out)
    while not os.path.exists(d):
        created.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        _remove(created)
        raise UsageError(f"--out: cannot create the folder ({e.strerror or e}). Expected: a "
                         f"folder that can be created. Received: --out={out}") from None
    return created


def _remove(paths):
    """Removes the files and empty folders in `paths` (in order), ignoring those that fail."""
    for p in paths:
        try:
            if os.path.isdir(p):
                os.rmdir(p)
            else:
                os.remove(p)
        except OSError:
            pass


def run(argv):
    """Writes the two demo models; returns the exit code (bad input: UsageError)."""
    FLAGS.unparse_flags()
    try:
        rest = FLAGS(normalize(argv, flag_values=FLAGS))
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments. Expected: {USAGE}. Received: {rest[1:]}")
    if not FLAGS.out:
        raise UsageError(f"--out is required. Expected: {USAGE}")
    _check_out(FLAGS.out)
    paths = {n: os.path.join(FLAGS.out, n) for n in MODELS}
    folders = [p for p in paths.values() if os.path.isdir(p)]
    if folders:
        raise UsageError(f"a model file would replace a folder. Expected: --out without "
                         f"{', '.join(MODELS)} folders in it. Received: {folders[0]}")
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not FLAGS.overwrite:
        raise UsageError(f"the output exists; pass --overwrite. Received: {existing[0]}")
    lenet = _import_lenet()
    created = _make_folder(FLAGS.out)  # before TensorFlow: a bad --out fails in one line, fast
    try:
        _cli.import_tensorflow()  # its start-up and cuInit lines ignore the log level
        import keras

        from tflite_bench.report import write_files

        data = {}
        for name, filters in MODELS.items():
            keras.utils.set_random_seed(FLAGS.seed)
            data[name] = to_float32_tflite(lenet(filters=filters))
        # nothing is written before both are converted; both or neither; a file that
        # appeared while converting is refused too (FileExistsError: one line, exit 2)
        write_files({paths[name]: content for name, content in data.items()},
                    overwrite=FLAGS.overwrite)
    except BaseException:  # no half-made output: write_files removed its new files, and
        _remove(created)  # the new folders go here
        raise
    for name in MODELS:
        print(paths[name])
    return 0


def main(argv=None):
    """Entry point; returns the exit code."""
    return _cli.main("tflite_bench.demo", __doc__, FLAGS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
