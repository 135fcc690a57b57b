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

from tflite_bench import _cli
from tflite_bench._cli import UsageError, normalize

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


def run(argv):
    """Writes the two demo models; returns the exit code (bad input: UsageError)."""
    FLAGS.unparse_flags()
    try:
        FLAGS(normalize(argv))
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    if not FLAGS.out:
        raise UsageError("--out is required.")
    paths = {n: os.path.join(FLAGS.out, n) for n in MODELS}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not FLAGS.overwrite:
        raise UsageError(f"the output exists; pass --overwrite. Received: {existing[0]}")
    os.makedirs(FLAGS.out, exist_ok=True)
    import keras

    from examples.models import lenet

    for name, filters in MODELS.items():
        keras.utils.set_random_seed(FLAGS.seed)
        export_float32(lenet(filters=filters), paths[name])
        print(paths[name])
    return 0


def main(argv=None):
    """Entry point; returns the exit code."""
    return _cli.main("tflite_bench.demo", __doc__, FLAGS, run, argv)


if __name__ == "__main__":
    sys.exit(main())
