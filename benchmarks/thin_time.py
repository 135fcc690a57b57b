"""Wall time of ssl_keras.thin on keras.applications.ResNet50 with half of its groups zeroed.

    python -m benchmarks.thin_time [--input_size 224 --fraction 0.5 --repeats 1 --json out.json]

ResNet50 is built without weights (random initialisation, 1000 classes), its BatchNorm
statistics and biases are made non-zero, and the producer slices of a random `fraction` of its
unblocked coupled groups are set to zero. Then `thin` is timed (it runs removable_groups,
thinning_plan and apply_plan); the three steps are also timed alone, and the equivalence with
`zero_groups(model)` is checked once: a max |thin - zeroed| above the allowed difference
(1e-5 * (1 + max |zeroed output|)) ends the command with an error, exit code 1, once the
figures are printed. Each step prints a progress line on stderr. Not a test: timings depend on
the machine and its load.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from benchmarks._util import (  # noqa: E402
    check_json_path,
    check_seed,
    check_within,
    fail,
    interruptible,
    offset_and_zero,
    parse_flags,
    quiet_tensorflow,
    step,
    write_json,
)

FLAGS = flags.FlagValues()
flags.DEFINE_integer("input_size", 224, "Input height and width of ResNet50.", flag_values=FLAGS)
flags.DEFINE_float("fraction", 0.5, "Share of the unblocked groups to zero, in (0, 1].",
                   flag_values=FLAGS)
flags.DEFINE_integer("repeats", 1, "Timed runs of thin (the median is reported).",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Seed of the zeroed groups and of the test input.",
                     flag_values=FLAGS)
flags.DEFINE_string("json", None, "Also write the figures as JSON to this new file.",
                    flag_values=FLAGS)


COMMAND = "benchmarks.thin_time"


def _fail(message):
    fail(COMMAND, message)


def _parse(argv):
    parse_flags(COMMAND, FLAGS, argv, __doc__)
    if FLAGS.input_size < 32:
        _fail(f"--input_size must be >= 32 (ResNet50 downsamples 32x). Received: "
              f"{FLAGS.input_size}")
    if not 0 < FLAGS.fraction <= 1:
        _fail(f"--fraction must be in (0, 1]. Received: {FLAGS.fraction}")
    if FLAGS.repeats < 1:
        _fail(f"--repeats must be >= 1. Received: {FLAGS.repeats}")
    check_seed(COMMAND, FLAGS.seed)
    check_json_path(COMMAND, FLAGS.json)


def run():
    import keras
    import numpy as np

    import ssl_keras
    from ssl_keras.thin import apply_plan, thinning_plan

    rng = np.random.default_rng(FLAGS.seed)
    size = FLAGS.input_size
    step(COMMAND, f"building ResNet50 ({size}x{size}) and zeroing groups")
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    groups = ssl_keras.removable_groups(model)
    n_zeroed = offset_and_zero(model, groups, FLAGS.fraction, rng)
    timings = {}
    step(COMMAND, "timing removable_groups")
    start = time.perf_counter()
    groups = ssl_keras.removable_groups(model)
    timings["removable_groups_s"] = time.perf_counter() - start
    step(COMMAND, "timing thinning_plan")
    start = time.perf_counter()
    plan = thinning_plan(model, groups=groups)
    timings["thinning_plan_s"] = time.perf_counter() - start
    step(COMMAND, "timing apply_plan")
    start = time.perf_counter()
    apply_plan(model, plan)
    timings["apply_plan_s"] = time.perf_counter() - start
    totals, cpu = [], []
    for i in range(FLAGS.repeats):
        step(COMMAND, f"timing thin ({i + 1}/{FLAGS.repeats})")
        start, start_cpu = time.perf_counter(), time.process_time()
        small = ssl_keras.thin(model)
        totals.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    step(COMMAND, "checking thin against zero_groups")
    x = rng.normal(size=(1, size, size, 3)).astype("float32")
    want = np.asarray(ssl_keras.zero_groups(model, groups=groups)(x))
    err = float(np.max(np.abs(np.asarray(small(x)) - want)))
    return {
        "model": "ResNet50", "input_size": size, "groups": len(groups),
        "groups_zeroed": n_zeroed, "cpu_count": len(os.sched_getaffinity(0)),
        **{k: round(v, 3) for k, v in timings.items()},
        "thin_s": round(float(np.median(totals)), 3),
        "thin_cpu_s": round(float(np.median(cpu)), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "params": [ssl_keras.count_params(model), ssl_keras.count_params(small)],
        "macs": [ssl_keras.count_macs(model), ssl_keras.count_macs(small)],
        "max_abs_diff": err, "tolerance": 1e-5 * (1 + float(np.max(np.abs(want)))),
    }


@interruptible(COMMAND)
def main(argv=None):
    _parse(sys.argv if argv is None else argv)
    quiet_tensorflow()
    result = run()
    print(f"ResNet50 {result['input_size']}x{result['input_size']}: {result['groups']} groups, "
          f"{result['groups_zeroed']} zeroed, {result['cpu_count']} CPUs")
    print(f"  removable_groups {result['removable_groups_s']:.2f} s, thinning_plan "
          f"{result['thinning_plan_s']:.2f} s, apply_plan {result['apply_plan_s']:.2f} s")
    print(f"  thin (all three) {result['thin_s']:.2f} s wall, {result['thin_cpu_s']:.2f} s CPU "
          f"(median of {FLAGS.repeats}; load average {result['load_average_1min']})")
    print(f"  params {result['params'][0]:,} -> {result['params'][1]:,}, MACs "
          f"{result['macs'][0]:,} -> {result['macs'][1]:,}")
    print(f"  max |thin - zeroed| = {result['max_abs_diff']:.3g} (allowed "
          f"{result['tolerance']:.3g})")
    if FLAGS.json:
        write_json(COMMAND, FLAGS.json, result)
    check_within(COMMAND, "max |thin - zeroed|", result["max_abs_diff"], result["tolerance"])


if __name__ == "__main__":
    main()
