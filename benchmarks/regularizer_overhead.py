"""Training step-time overhead of GroupLasso(filters, channels) on every conv / dense layer.

    python -m benchmarks.regularizer_overhead [--rounds 60 --models lenet,resnet20]

For each architecture two copies are compiled (same weights, same optimizer): one plain, one
with GroupLasso(filters=1e-4, channels=1e-4) as the kernel regulariser of every Conv/Dense
layer. Their train steps are timed interleaved (plain, regularised, plain, ...) so that machine
noise falls on both alike; the figure is the ratio of median step times. Not a test: timings
vary with the machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from benchmarks._util import (  # noqa: E402
    check_int,
    check_json_path,
    check_list,
    fail,
    interruptible,
    parse_flags,
    quiet_tensorflow,
    step,
    write_json,
)

COMMAND = "benchmarks.regularizer_overhead"
FLAGS = flags.FlagValues()
flags.DEFINE_list("models", ["lenet", "resnet20"], "Architectures: lenet, resnet20.",
                  flag_values=FLAGS)
flags.DEFINE_integer("rounds", 60, "Interleaved timing rounds (one step of each model).",
                     flag_values=FLAGS)
flags.DEFINE_integer("warmup", 5, "Untimed steps per model first.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Batch size of a training step.", flag_values=FLAGS)
flags.DEFINE_string("json", None, "Write the results as JSON to this new file.",
                    flag_values=FLAGS)

SETUPS = {
    "lenet": lambda models: models.lenet(input_shape=(28, 28, 1)),
    "resnet20": lambda models: models.resnet(depth=20, input_shape=(32, 32, 3)),
}


def _with_group_lasso(model):
    import keras

    from ssl_keras import GroupLasso

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            config["kernel_regularizer"] = GroupLasso(filters=1e-4, channels=1e-4)
        return layer.__class__.from_config(config)

    regularised = keras.models.clone_model(model, clone_function=clone)
    regularised.set_weights(model.get_weights())
    return regularised


def measure(name: str) -> dict:
    import keras
    import numpy as np

    from examples import models

    step(COMMAND, f"{name}: building, compiling and warming up both copies")
    keras.utils.set_random_seed(0)
    plain = SETUPS[name](models)
    regularised = _with_group_lasso(plain)
    n_regularised = sum(len(layer.losses) > 0 for layer in regularised.layers)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(FLAGS.batch_size,) + tuple(plain.input_shape[1:])).astype("float32")
    y = rng.integers(0, 10, size=(FLAGS.batch_size,))
    for m in (plain, regularised):
        m.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(FLAGS.warmup):
            m.train_on_batch(x, y)
    times = {"plain": [], "group_lasso": []}
    step(COMMAND, f"{name}: timing {FLAGS.rounds} interleaved rounds")
    with contextlib.redirect_stdout(sys.stderr):  # the bar on stderr, the table on stdout
        progress = keras.utils.Progbar(FLAGS.rounds, unit_name="round")
    for r in range(FLAGS.rounds):
        order = [("plain", plain), ("group_lasso", regularised)]
        if r % 2:
            order.reverse()
        for key, m in order:
            start = time.perf_counter()
            m.train_on_batch(x, y)
            times[key].append(time.perf_counter() - start)
        with contextlib.redirect_stdout(sys.stderr):
            progress.update(r + 1)
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratios = np.array(times["group_lasso"]) / np.array(times["plain"])
    return {
        "model": name,
        "regularised_layers": n_regularised,
        "batch_size": FLAGS.batch_size,
        "rounds": FLAGS.rounds,
        "plain_median_ms": 1e3 * med["plain"],
        "group_lasso_median_ms": 1e3 * med["group_lasso"],
        "overhead": med["group_lasso"] / med["plain"] - 1.0,
        "roundwise_ratio_p10_p90": [float(np.percentile(ratios, 10)),
                                    float(np.percentile(ratios, 90))],
    }


def _parse(argv) -> None:
    """Every flag, checked before any work (one line, exit 2 on the first bad one)."""
    parse_flags(COMMAND, FLAGS, argv, __doc__)
    check_list(COMMAND, "models", FLAGS.models, "lenet,resnet20")
    unknown = [m for m in FLAGS.models if m not in SETUPS]
    if unknown:
        fail(COMMAND, f"--models: unknown model {unknown[0]!r}; expected one of "
                      f"{sorted(SETUPS)}.")
    check_int(COMMAND, "rounds", FLAGS.rounds, 1, what="timed steps of each model")
    check_int(COMMAND, "warmup", FLAGS.warmup, 0, what="untimed steps of each model first")
    check_int(COMMAND, "batch_size", FLAGS.batch_size, 1, what="images per training step")
    check_json_path(COMMAND, FLAGS.json)


@interruptible(COMMAND)
def main(argv=None):
    _parse(sys.argv if argv is None else argv)
    quiet_tensorflow()
    rows = [measure(name) for name in FLAGS.models]
    print("| model | layers with GroupLasso | step, plain (ms) | step, GroupLasso (ms) "
          "| overhead | round-wise ratio p10-p90 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["roundwise_ratio_p10_p90"]
        print(f"| {r['model']} | {r['regularised_layers']} | {r['plain_median_ms']:.2f} | "
              f"{r['group_lasso_median_ms']:.2f} | {100 * r['overhead']:+.1f}% | "
              f"{lo:.2f}-{hi:.2f} |")
    if FLAGS.json:
        write_json(COMMAND, FLAGS.json, rows)


if __name__ == "__main__":
    main()
