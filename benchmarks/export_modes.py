"""LeNet-5 exported in every TFLite mode: file size, agreement with Keras, test accuracy.

    python -m benchmarks.export_modes [--train 5000 --test 1000 --epochs 1 --json out.json]

LeNet-5 (examples/models.py, 20-50-500-10) is trained for `--epochs` on a seeded
`--train`-image subset of Fashion-MNIST (examples/datasets.py, the Debian package offline),
so that int8 calibration sees real activations. It is then exported with
`ssl_keras.export_tflite` as float32, float16, dynamic and int8 (calibrated on
`--calibration` training images; the 8 training images after them are the built-in check's
held-out inputs in every mode). For each mode the table gives the file size, the built-in
check's max |tflite - keras| (those 8 images), the max and 99th percentile of |tflite - keras|
over the `--test` test images, how often the top-1 class equals Keras', and the top-1
accuracy of the .tflite file on them (ssl_keras.evaluate_tflite) next to the Keras model's.
No timings: see tflite_bench for latency.
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from benchmarks._util import (  # noqa: E402
    check_int,
    check_outputs,
    check_seed,
    fail,
    interruptible,
    parse_flags,
    quiet_tensorflow,
    run_and_report,
    step,
)

COMMAND = "benchmarks.export_modes"
FLAGS = flags.FlagValues()
flags.DEFINE_integer("train", 5000, "Training images (a seeded subset of Fashion-MNIST); at "
                     "least --calibration + 8.", flag_values=FLAGS)
flags.DEFINE_integer("test", 1000, "Test images for the accuracy and the test-set |diff|.",
                     flag_values=FLAGS)
flags.DEFINE_integer("epochs", 1, "Training epochs.", flag_values=FLAGS)
flags.DEFINE_integer("calibration", 200, "Training images used for int8 calibration.",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the subset, the initial weights and the shuffle.",
                     flag_values=FLAGS)
flags.DEFINE_string("out_dir", None, "Keep the .tflite files in this new or empty directory "
                    "(default: a temp dir).", flag_values=FLAGS)
flags.DEFINE_string("json", None, "Write the results as JSON to this new file.",
                    flag_values=FLAGS)

MODES = (None, "float16", "dynamic", "int8")
# The images after the calibration ones that the built-in check holds out (export_tflite's
# num_verify_samples default).
VERIFY = 8


def _parse(argv) -> None:
    """Every flag, checked before any work (one line, exit 2 on the first bad one)."""
    parse_flags(COMMAND, FLAGS, argv, __doc__)
    check_int(COMMAND, "epochs", FLAGS.epochs, 1, what="training epochs")
    check_int(COMMAND, "calibration", FLAGS.calibration, 1,
              what="training images for int8 calibration")
    if FLAGS.train < FLAGS.calibration + VERIFY:
        fail(COMMAND, f"--train must be >= --calibration + {VERIFY} = "
                      f"{FLAGS.calibration + VERIFY} (the calibration images and the "
                      f"{VERIFY} held-out check images come from the training images). "
                      f"Received: --train={FLAGS.train}, --calibration={FLAGS.calibration}")
    check_int(COMMAND, "test", FLAGS.test, 1, what="test images")
    check_seed(COMMAND, FLAGS.seed)
    check_outputs(COMMAND, FLAGS.json, FLAGS.out_dir)


def load_data():
    """The Fashion-MNIST subset, read before any work: a missing dataset, or fewer images
    than --train / --test ask for, is one line (exit 2)."""
    from examples import datasets

    try:
        data = datasets.load("fashion_mnist", validation_split=0.0, seed=FLAGS.seed,
                             max_train=FLAGS.train, max_test=FLAGS.test, allow_download=False)
    except (OSError, ValueError) as e:
        fail(COMMAND, f"could not load Fashion-MNIST ({type(e).__name__}: "
                      f"{str(e).splitlines()[0]})")
    for name, asked, got in (("train", FLAGS.train, len(data.x_train)),
                             ("test", FLAGS.test, len(data.x_test))):
        if got < asked:
            fail(COMMAND, f"--{name} asks for {asked} images but the Fashion-MNIST {name} "
                          f"split ({data.source}) has {got}. Received: --{name}={asked}")
    return data


def run(out_dir: str, data) -> dict:
    import keras
    import numpy as np

    from examples import models
    from examples.batches import shuffled_batches
    from ssl_keras import evaluate_tflite, export_tflite, predict_tflite

    keras.utils.set_random_seed(FLAGS.seed)
    model = models.lenet(input_shape=data.x_train.shape[1:])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    step(COMMAND, f"training LeNet-5 on {len(data.x_train)} images, {FLAGS.epochs} epoch(s)")
    # A new seeded order every epoch: fit(x, y, shuffle=True) repeats one order in every epoch
    # of a seeded run on Keras 3.15 (examples/batches.py).
    batches, set_epoch = shuffled_batches(data.x_train, data.y_train, 64, FLAGS.seed)
    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bar; stdout has the table
        model.fit(batches, epochs=FLAGS.epochs, verbose=1, callbacks=[set_epoch], shuffle=False)
    keras_logits = model.predict(data.x_test, batch_size=256, verbose=0)
    keras_accuracy = float(np.mean(keras_logits.argmax(-1) == data.y_test))
    # The 8 images after the calibration ones are the held-out inputs of the built-in check.
    calibration = data.x_train[: FLAGS.calibration + VERIFY]
    rows = []
    for k, mode in enumerate(MODES):
        path = os.path.join(out_dir, f"lenet_{mode or 'float32'}.tflite")
        step(COMMAND, f"exporting and scoring {k + 1}/{len(MODES)}: {mode or 'float32'}")
        report = export_tflite(model, path, quantize=mode, representative_data=calibration,
                               num_calibration_samples=FLAGS.calibration, overwrite=True)
        tflite_logits = predict_tflite(path, data.x_test)["output_0"]
        rows.append({
            "mode": report.quantize,
            "size_bytes": report.size_bytes,
            "verify_max_abs_diff": report.max_abs_diff,
            "test_max_abs_diff": float(np.abs(tflite_logits - keras_logits).max()),
            "test_p99_abs_diff": float(np.quantile(np.abs(tflite_logits - keras_logits), 0.99)),
            "top1_agreement": float(np.mean(tflite_logits.argmax(-1) == keras_logits.argmax(-1))),
            "max_abs_logit": float(np.abs(keras_logits).max()),
            "tflite_accuracy": evaluate_tflite(path, data.x_test, data.y_test),
            "keras_accuracy": keras_accuracy,
            "op_counts": report.op_counts,
        })
    return {"model": "lenet 20-50-500-10", "dataset": data.source, "train_images": FLAGS.train,
            "test_images": len(data.x_test), "epochs": FLAGS.epochs,
            "calibration_images": FLAGS.calibration, "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"LeNet-5 on Fashion-MNIST ({result['train_images']} training images, "
        f"{result['epochs']} epoch(s); {result['test_images']} test images; Keras accuracy "
        f"{result['rows'][0]['keras_accuracy']:.4f}; max |keras logit| "
        f"{result['rows'][0]['max_abs_logit']:.3g})",
        "",
        "| mode | size (bytes) | max abs diff, check (8 imgs) | max abs diff, test set "
        "| p99 abs diff, test set | top-1 = Keras | TFLite accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['mode']} | {row['size_bytes']} | {row['verify_max_abs_diff']:.3g} "
            f"| {row['test_max_abs_diff']:.3g} | {row['test_p99_abs_diff']:.3g} "
            f"| {row['top1_agreement']:.3f} | {row['tflite_accuracy']:.4f} |"
        )
    return "\n".join(lines)


@interruptible(COMMAND)
def main(argv=None):
    _parse(sys.argv if argv is None else argv)
    quiet_tensorflow()
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # no SavedModel INFO lines under absl
    data = load_data()
    run_and_report(COMMAND, lambda out_dir: run(out_dir, data), markdown, FLAGS.out_dir,
                   FLAGS.json)


if __name__ == "__main__":
    main()
