"""Writes the demo models: LeNet 20-50-500-10 and LeNet 3-12-500-10 with random weights, as
float32 .tflite (batch 1), to compare their latency with `python -m tflite_bench`.

    python -m tflite_bench.demo --out DIR [--seed 0] [--overwrite]
    python -m tflite_bench DIR/lenet_20_50.tflite DIR/lenet_3_12.tflite --threads 1,2

Imports TensorFlow and Keras 3 (this is not a timing process). Conversion goes through a
SavedModel with a fixed batch-1 input signature. Errors print one line and exit with code 2.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import flags

from tflite_bench.baselines import _normalize

FLAGS = flags.FlagValues()
flags.DEFINE_string("out", None, "Output folder.", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the random weights.", flag_values=FLAGS)
flags.DEFINE_bool("overwrite", False, "Replace existing files.", flag_values=FLAGS)

MODELS = {"lenet_20_50.tflite": (20, 50), "lenet_3_12.tflite": (3, 12)}


def export_float32(model, path):
    """Converts a Keras 3 model to a float32 batch-1 .tflite file, written atomically.

    Args:
        model: a built Keras 3 model with one input.
        path: destination .tflite path.

    Example:

    >>> export_float32(examples.models.lenet(), "lenet.tflite")  # doctest: +SKIP
    """
    import tensorflow as tf

    from tflite_bench.report import atomic_write

    with tempfile.TemporaryDirectory() as d:
        spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
        model.export(d, format="tf_saved_model", input_signature=[spec], verbose=False)
        data = tf.lite.TFLiteConverter.from_saved_model(d).convert()
    atomic_write(path, data, overwrite=True)


def main(argv=None):
    """Entry point; returns the exit code."""
    argv = sys.argv if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv[1:]):
        print(__doc__)
        print(FLAGS.get_help())
        return 0
    try:
        FLAGS(_normalize(argv))
    except flags.Error as e:
        sys.stderr.write(f"tflite_bench.demo: error: {str(e).splitlines()[0]}\n")
        return 2
    if not FLAGS.out:
        sys.stderr.write("tflite_bench.demo: error: --out is required.\n")
        return 2
    paths = {n: os.path.join(FLAGS.out, n) for n in MODELS}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not FLAGS.overwrite:
        sys.stderr.write(f"tflite_bench.demo: error: the output exists; pass --overwrite. "
                         f"Received: {existing[0]}\n")
        return 2
    os.makedirs(FLAGS.out, exist_ok=True)
    import keras

    from examples.models import lenet

    for name, filters in MODELS.items():
        keras.utils.set_random_seed(FLAGS.seed)
        export_float32(lenet(filters=filters), paths[name])
        print(paths[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
