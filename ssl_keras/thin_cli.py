"""`python -m ssl_keras.thin_cli`: thin a saved Keras model from the command line.

    python -m ssl_keras.thin_cli MODEL.keras OUT.keras [--threshold 1e-4] [--round_to 16]
        [--round_down 16] [--max_channels '{"conv2": 16}'] [--nocrop_kernels]
        [--plan PLAN.json] [--overwrite] [--json]

Loads MODEL (a model from `apply_ssl`, or any functional / Sequential model), zeroes its groups
at or below --threshold (`zero_groups`, with --max_channels and --round_down), builds the
thinned model (`thin`, with --round_to), checks that it reproduces the zeroed model on random
inputs, prints the `summarize` table and the check (or, with --json, one JSON object) and saves
OUT atomically. --round_to / --round_down / --max_channels take an integer or a JSON dict
{layer name: integer}. --plan also writes the thinning plan (`thinning_plan`) as JSON. Bad
input: one line on stderr, exit 2; nothing is written unless everything succeeded, and no file
is replaced without --overwrite.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import keras
import numpy as np

from ssl_keras._cli import check_output, in_flag_terms, load_keras_file, run

PROG = "ssl_keras.thin_cli"
# The exactness contract: max |thin(x) - zeroed(x)| <= RTOL * (1 + max |zeroed(x)|).
RTOL = 1e-5


def _fail(message: str):
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _flag_values():
    """The command line's absl flags, in a private FlagValues (no clash with global flags)."""
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_float("threshold", 1e-4, "Groups whose L2 norm is at or below this are zeroed "
                       "and removed.", flag_values=fv)
    flags.DEFINE_string("round_to", "1", "Keep every thinned width a multiple of this (an "
                        "integer, or a JSON dict {layer: integer}); keeps zeroed channels, "
                        "exactly. It rounds up after --max_channels / --round_down, so it can "
                        "keep a width above --max_channels.", flag_values=fv)
    flags.DEFINE_string("round_down", "1", "Before thinning, also zero the weakest live groups "
                        "of every layer with more than this many channels until its width is a "
                        "multiple of it (an integer or a JSON dict); changes the outputs: "
                        "fine-tune afterwards.", flag_values=fv)
    flags.DEFINE_string("max_channels", None, "Before thinning, also zero the weakest live "
                        "groups of every layer above this many channels until this many are "
                        "left (an integer or a JSON dict; null: no cap, the default); changes "
                        "the outputs: fine-tune afterwards.", flag_values=fv)
    flags.DEFINE_boolean("crop_kernels", True, "Crop zero border rows / columns of conv "
                         "kernels.", flag_values=fv)
    flags.DEFINE_string("plan", None, "Also write the thinning plan (JSON) to this file: the "
                        "plan of the zeroed model (zero_groups(MODEL, --threshold, "
                        "--round_down, --max_channels)), which apply_plan takes.",
                        flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "Replace existing output files.", flag_values=fv)
    flags.DEFINE_boolean("json", False, "Print the report as one JSON object.", flag_values=fv)
    return fv


def _multiple(flag: str, text: str):
    """--round_to / --round_down / --max_channels: an integer, or a JSON object {layer
    name: integer}."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        _fail(f"--{flag} must be an integer >= 1 or a JSON object {{layer name: integer}}. "
              f"Received: --{flag}={text!r}")
    return value


def _check_out(path: str, what: str, suffix: str, overwrite: bool, model_path: str):
    try:
        check_output(path, what, model_path, overwrite, suffix=suffix)
    except ValueError as error:
        _fail(str(error))


def _load_model(path):
    try:
        return load_keras_file(path)
    except ValueError as error:
        _fail(str(error))


def _max_difference(model, small, zeroed) -> tuple[float, float, str]:
    """max |small(x) - zeroed(x)|, max |zeroed(x)| on 8 random inputs, and what they were."""
    from ssl_keras._export_inputs import _input_struct, _random_samples, _unflatten

    struct = _input_struct(model)
    samples, described = _random_samples(model, struct, 8, seed=0, unknown_ids=2)
    x = _unflatten(struct, samples)
    want = [np.asarray(a, np.float64) for a in keras.tree.flatten(zeroed(x))]
    got = [np.asarray(a, np.float64) for a in keras.tree.flatten(small(x))]
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
    scale = max(float(np.max(np.abs(w))) for w in want)
    return diff, scale, described


def _keras_bytes(model, folder: str) -> bytes:
    """The .keras archive of `model` (saved through a temporary file in `folder`)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".thin_cli-", suffix=".keras")
    os.close(fd)
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp)


def _main(argv, FLAGS):
    if len(argv) != 3:
        _fail("usage: python -m ssl_keras.thin_cli MODEL.keras OUT.keras [--threshold T] "
              f"[--round_to N] [--round_down N] [--max_channels N] [--plan PLAN.json] "
              "[--overwrite]. "
              f"Received: {argv[1:]}")
    model_path, out_path = argv[1], argv[2]
    round_to, round_down = _multiple("round_to", FLAGS.round_to), _multiple(
        "round_down", FLAGS.round_down)
    max_channels = (None if FLAGS.max_channels is None
                    or FLAGS.max_channels.strip() in ("", "null")
                    else _multiple("max_channels", FLAGS.max_channels))
    _check_out(out_path, "OUT", ".keras", FLAGS.overwrite, model_path)
    if FLAGS.plan is not None:
        _check_out(FLAGS.plan, "--plan", ".json", FLAGS.overwrite, model_path)
        if os.path.abspath(FLAGS.plan) == os.path.abspath(out_path):
            _fail(f"--plan and OUT name the same file. Received: {out_path!r}")
    from ssl_keras import report
    from ssl_keras.thin import apply_plan, thinning_plan, zero_groups

    model = _load_model(model_path)
    try:
        zeroed = zero_groups(model, FLAGS.threshold, round_down=round_down,
                             max_channels=max_channels)
        plan = thinning_plan(zeroed, FLAGS.threshold, round_to, crop_kernels=FLAGS.crop_kernels)
        small = apply_plan(zeroed, plan)
        diff, scale, described = _max_difference(model, small, zeroed)
    except ValueError as error:
        _fail(in_flag_terms(str(error)))
    if not diff <= RTOL * (1 + scale):  # NaN fails too
        _fail(f"The thinned model does not reproduce the zeroed model: max |difference| "
              f"{diff:.3g} on 8 random inputs ({described}), allowed {RTOL} * (1 + "
              f"{scale:.3g}). Nothing was written; please report this model.")
    table = report.summarize(model, small, print_fn=None)
    from tflite_bench.report import write_files  # all files or none, atomically

    contents = {out_path: None}
    if FLAGS.plan is not None:
        contents[FLAGS.plan] = json.dumps(plan, indent=1)
    try:
        contents[out_path] = _keras_bytes(small, os.path.dirname(os.path.abspath(out_path)))
        write_files(contents, overwrite=FLAGS.overwrite)
    except OSError as error:  # FileExistsError included: nothing of this run is left
        _fail(in_flag_terms(str(error)))
    if FLAGS.json:
        print(json.dumps({
            "model": model_path, "out": out_path, "plan": FLAGS.plan,
            "threshold": FLAGS.threshold, "round_to": round_to, "round_down": round_down,
            "max_channels": max_channels,
            "params": [report.count_params(model), report.count_params(small)],
            "macs": [report.count_macs(model), report.count_macs(small)],
            "max_abs_difference": diff, "checked_on": described,
        }))
    else:
        print(table)
        print(f"thin reproduces the zeroed model: max |difference| {diff:.2e} on 8 random "
              f"inputs ({described}); wrote {out_path}"
              + (f" and {FLAGS.plan}" if FLAGS.plan else ""))


def main(argv=None):
    """`python -m ssl_keras.thin_cli` (`argv`: as `ssl_keras.export.main`)."""
    run(__doc__, _flag_values(), _main, _fail, argv)


if __name__ == "__main__":
    main()
