"""The examples' settings: `Recipe` (what one example trains), its flags, and `Config` (one run).

`define_flags(recipe)` defines every flag on a fresh FlagValues with the recipe's defaults;
`config_from_flags` applies `--quick`, checks every value (a bad one raises UsageError, which
`examples.common.main` prints as one line, exit status 2) and returns the frozen Config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable

from absl import flags

from examples import datasets

# Settings added to the examples after runs were saved without them, and the value that means
# what those runs did: a resumed run's checkpoint settings and examples.summary's recipes read
# a missing one as this.
ADDED_SETTINGS = {"round_down": 1, "max_channels": None, "max_channels_ramp": None,
                  "batch_order": "one_order"}
# The order of the training batches (examples/batches.py): a new seeded order every epoch
# since 2026-11-27; "one_order", model.fit(x, y, shuffle=True), repeated one order in every
# epoch of a seeded run. Not a flag: recorded so that resuming and examples.summary tell
# runs of the two apart.
BATCH_ORDER = "per_epoch"


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What one example trains, and its defaults.

    Attributes:
        name: the example's name ("lenet"); results go to `<out_dir>/<name>_<dataset>.*`.
        build: `build(input_shape=..., num_classes=...) -> keras.Model`.
        defaults: flag defaults for the full run (see `define_flags` for the names).
        quick: flag overrides applied by `--quick`.
        tfmot_arch: the `--arch` of `python -m tflite_bench.baselines`, or None.
        dataset_kwargs: extra arguments of `datasets.load` by dataset name
            ({"fashion_mnist": {"pad_to": 32}}).
        fallback_dataset: the dataset used (with a message) when `--dataset` cannot be
            loaded offline, or None to fail.
        ssl_layers: per-layer multipliers of the coefficient flags, `{layer: {"filters": 2.0}}`
            (the reference code's per-layer multipliers), or None: every layer takes the
            flags as they are. A layer mapped to None is not penalised.
    """

    name: str
    build: Callable
    defaults: dict
    quick: dict
    tfmot_arch: str | None = None
    dataset_kwargs: dict = dataclasses.field(default_factory=dict)
    fallback_dataset: str | None = None
    ssl_layers: dict | None = None


# ---------------------------------------------------------------------------------------------
# Flags


def define_flags(recipe: Recipe) -> flags.FlagValues:
    """Defines the examples' flags on a fresh FlagValues, with the recipe's defaults."""
    d = {
        "dataset": "fashion_mnist", "data_dir": None, "max_train": 0, "max_test": 0,
        "validation_split": 0.1, "epochs": 8, "ssl_epochs": 4, "finetune_epochs": 3,
        "lr": 0.01, "ssl_lr": 0.01, "finetune_lr": 0.001, "optimizer": "sgd",
        "ssl_momentum": 0.0, "steps_per_execution": 32,
        "batch_size": 64, "filters": 0.0, "channels": 0.0, "shapes": 0.0, "borders": 0.0,
        "depth": 0.0, "proximal": False, "zero_every": 100, "threshold": 1e-3, "round_to": 1,
        "round_down": 1, "max_channels": None, "max_channels_ramp": None,
        "seed": 0,
        "lr_schedule": "cosine", "finetune_thinned": True, "ssl_layers": None,
        "distill": 0.0, "distill_temperature": 4.0,
        "out_dir": "results",
        "threads": "1,2", "runs": 300, "warmup": 30, "tfmot": True, "fresh": False,
        "verbose": 1,
    }
    d.update(recipe.defaults)
    quick = " ".join(f"--{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                     for k, v in recipe.quick.items())
    fv = flags.FlagValues()
    D = flags
    D.DEFINE_enum("dataset", d["dataset"], list(datasets.DATASETS), "The dataset.", flag_values=fv)
    D.DEFINE_string("data_dir", d["data_dir"], "A directory with the dataset's files (IDX or "
                    "CIFAR-10 batches); when given, the only source. Default: the Debian package "
                    "dataset-fashion-mnist (Fashion-MNIST), then keras.datasets.",
                    flag_values=fv)
    D.DEFINE_integer("max_train", d["max_train"], "Use at most this many training images "
                     "(0: all).", flag_values=fv)
    D.DEFINE_integer("max_test", d["max_test"], "Use the first N test images (0: all).",
                     flag_values=fv)
    D.DEFINE_float("validation_split", d["validation_split"], "Held-out fraction of the "
                   "training images.", flag_values=fv)
    D.DEFINE_integer("epochs", d["epochs"], "Epochs of dense training.", flag_values=fv)
    D.DEFINE_integer("ssl_epochs", d["ssl_epochs"], "Epochs with group Lasso.", flag_values=fv)
    D.DEFINE_integer("finetune_epochs", d["finetune_epochs"], "Epochs of fine-tuning: of the "
                     "thinned model (with --nofinetune_thinned, of the zeroed model with its "
                     "zero groups frozen).", flag_values=fv)
    D.DEFINE_float("lr", d["lr"], "Learning rate of dense training.", flag_values=fv)
    D.DEFINE_float("ssl_lr", d["ssl_lr"], "Learning rate of the SSL phase.", flag_values=fv)
    D.DEFINE_float("ssl_momentum", d["ssl_momentum"], "SGD momentum of the SSL phase. 0 by "
                   "default: momentum carries the group Lasso subgradient past the proximal "
                   "step, so that groups oscillate around zero instead of reaching it.",
                   flag_values=fv)
    D.DEFINE_float("finetune_lr", d["finetune_lr"], "Learning rate of fine-tuning.",
                   flag_values=fv)
    D.DEFINE_enum("optimizer", d["optimizer"], ["sgd", "adam"], "Optimizer of dense training "
                  "and fine-tuning. sgd: SGD with momentum 0.9 (the method's recipe); adam: "
                  "Adam. The SSL phase: SGD with --ssl_momentum, or Adam with adam.",
                  flag_values=fv)
    D.DEFINE_enum("lr_schedule", d["lr_schedule"], ["cosine", "constant"], "Learning rate of "
                  "dense training and fine-tuning: cosine decay to 0 over the phase, or "
                  "constant. The SSL phase always has a constant rate.", flag_values=fv)
    D.DEFINE_boolean("finetune_thinned", d["finetune_thinned"], "Fine-tune the thinned model "
                     "(removed groups are gone, so they cannot grow back). Off: fine-tune the "
                     "zeroed full-size model with its zero groups frozen, then thin.",
                     flag_values=fv)
    D.DEFINE_float("distill", d["distill"], "Fine-tune with knowledge distillation from the "
                   "dense model: the weight alpha in [0, 1] of T^2 * KL(teacher || student) at "
                   "temperature --distill_temperature against (1 - alpha) * cross-entropy "
                   "(0: cross-entropy only).", flag_values=fv)
    D.DEFINE_float("distill_temperature", d["distill_temperature"], "Softmax temperature of "
                   "--distill.", flag_values=fv)
    D.DEFINE_string("ssl_layers", d["ssl_layers"], "Per-layer multipliers of the coefficient "
                    "flags as JSON, '{\"conv1\": {\"filters\": 2.5}}' (a layer mapped to null "
                    "is not penalised); replaces the example's own. Default: the example's.",
                    flag_values=fv)
    D.DEFINE_integer("batch_size", d["batch_size"], "Batch size.", flag_values=fv)
    D.DEFINE_integer("steps_per_execution", d["steps_per_execution"], "Training steps per "
                     "call of Keras's compiled train function (compile(steps_per_execution="
                     "...)): the same weights, less per-step overhead; progress bars and "
                     "TerminateOnNaN see every N-th step. The SSL phase runs the largest "
                     "number that divides this, --zero_every and its steps per epoch (its "
                     "callbacks cut at multiples of --zero_every), one with --proximal; "
                     "--nofinetune_thinned fine-tunes one step per call (its callback acts "
                     "after every step).", flag_values=fv)
    D.DEFINE_float("filters", d["filters"], "Filter-wise (neuron-wise) group Lasso coefficient.",
                   flag_values=fv)
    D.DEFINE_float("channels", d["channels"], "Channel-wise group Lasso coefficient.",
                   flag_values=fv)
    D.DEFINE_float("shapes", d["shapes"], "Shape-wise group Lasso coefficient.", flag_values=fv)
    D.DEFINE_float("borders", d["borders"], "Group Lasso coefficient of the conv kernels' nested "
                   "border bands: thin() crops zero border rows / columns (5x5 -> 3x3).",
                   flag_values=fv)
    D.DEFINE_float("depth", d["depth"], "Depth-wise group Lasso "
                   "coefficient: one group per residual branch (each operand of an Add but the "
                   "shortcut), so that SSL can switch whole residual blocks off. For "
                   "architectures with residual branches (the ResNet example); elsewhere an error.",
                   flag_values=fv)
    D.DEFINE_boolean("proximal", d["proximal"], "Proximal group soft-thresholding after each "
                     "step of the SSL phase (exact zeros; a Python step per batch, several "
                     "times slower). Off: groups below --threshold are zeroed every "
                     "--zero_every steps.", flag_values=fv)
    D.DEFINE_integer("zero_every", d["zero_every"], "Without --proximal: zero the groups below "
                     "--threshold every this many steps of the SSL phase.", flag_values=fv)
    D.DEFINE_float("threshold", d["threshold"], "Groups whose L2 norm is at or below this are "
                   "zeroed and removed.", flag_values=fv)
    D.DEFINE_string("round_to", json.dumps(d["round_to"]), "thin() keeps every width a multiple of "
                    "this (e.g. 16, the output-channel block of XNNPACK's float32 kernels on the "
                    "x86 CPU here; benchmarks.lenet_widths measures it), or of a per-layer "
                    "multiple given as JSON, e.g. '{\"conv2\": 16}' (the other layers: 1).",
                    flag_values=fv)
    D.DEFINE_string("round_down", json.dumps(d["round_down"]), "Before thinning, zero the "
                    "weakest live groups of every layer that keeps more than this many "
                    "channels until its width is a multiple of it (zero_groups(round_down=)); "
                    "fine-tuning follows. An integer, or per-layer JSON as --round_to.",
                    flag_values=fv)
    D.DEFINE_string("max_channels", json.dumps(d["max_channels"]), "Before thinning, zero the "
                    "weakest live groups of every layer that keeps more than this many channels "
                    "until this many are left (zero_groups(max_channels=); before "
                    "--round_down): a width budget. null (no cap), an integer, or per-layer "
                    "JSON as --round_to, e.g. '{\"conv2\": 16}'.", flag_values=fv)
    D.DEFINE_float("max_channels_ramp", d["max_channels_ramp"], "Reach --max_channels during "
                   "the SSL phase instead of only after it: the allowed widths shrink from the "
                   "full ones to --max_channels over this fraction of the SSL steps (a cubic "
                   "schedule, ssl_keras.callbacks.WidthBudget), cutting the weakest groups every "
                   "--zero_every steps while training goes on. In (0, 1]; needs --max_channels "
                   "and not --proximal (given either, a recipe's default ramp is off). 0 or "
                   "unset: the cut is made once, after SSL.", flag_values=fv)
    D.DEFINE_integer("seed", d["seed"], "Random seed.", flag_values=fv)
    D.DEFINE_string("out_dir", d["out_dir"], "Where results and checkpoints go.", flag_values=fv)
    D.DEFINE_string("threads", d["threads"], "Comma-separated thread counts of the latency "
                    "benchmark.", flag_values=fv)
    D.DEFINE_integer("runs", d["runs"], "Timed runs per model and thread count.", flag_values=fv)
    D.DEFINE_integer("warmup", d["warmup"], "Untimed warm-up runs.", flag_values=fv)
    D.DEFINE_boolean("tfmot", d["tfmot"], "Also build the tfmot element-wise pruning baseline "
                     "(needs the bench extra).", flag_values=fv)
    D.DEFINE_boolean("fresh", d["fresh"], "Ignore (delete) the checkpoints of an earlier run "
                     "instead of resuming from them.", flag_values=fv)
    D.DEFINE_integer("verbose", d["verbose"], "Keras fit verbosity (1: progress bars).",
                     flag_values=fv)
    D.DEFINE_boolean("quick", False, "A small run for CI: fewer images and epochs (the flags "
                     "not given take " + quick + ").",
                     flag_values=fv)
    return fv


@dataclasses.dataclass(frozen=True)
class Config:
    """The validated settings of one run (flags after --quick)."""

    dataset: str
    data_dir: str | None
    max_train: int
    max_test: int
    validation_split: float
    epochs: int
    ssl_epochs: int
    finetune_epochs: int
    lr: float
    ssl_lr: float
    ssl_momentum: float
    finetune_lr: float
    optimizer: str
    lr_schedule: str
    finetune_thinned: bool
    ssl_layers: dict | None
    distill: float
    distill_temperature: float
    batch_size: int
    steps_per_execution: int
    filters: float
    channels: float
    shapes: float
    borders: float
    depth: float
    proximal: bool
    zero_every: int
    threshold: float
    round_to: int | dict
    round_down: int | dict
    max_channels: int | dict | None
    max_channels_ramp: float | None
    seed: int
    out_dir: str
    threads: tuple
    runs: int
    warmup: int
    tfmot: bool
    fresh: bool
    verbose: int
    quick: bool
    batch_order: str = BATCH_ORDER
    # TensorFlow's oneDNN CPU kernels in this process (examples/util.onednn_enabled; set by
    # Pipeline.run, None before): the same recipe, other round-off, so not a training_key
    # setting; a resumed run's earlier phases may have run with the other setting.
    onednn: bool | None = None

    def training_key(self) -> dict:
        """The settings that decide the checkpoints (a resumed run must match them)."""
        keys = ("dataset", "data_dir", "max_train", "max_test", "validation_split", "epochs",
                "ssl_epochs", "finetune_epochs", "lr", "ssl_lr", "ssl_momentum", "finetune_lr",
                "optimizer", "lr_schedule", "finetune_thinned", "ssl_layers", "distill",
                "distill_temperature",
                "batch_size", "filters", "channels", "shapes", "borders", "depth", "proximal",
                "zero_every", "threshold", "round_to", "round_down", "max_channels",
                "max_channels_ramp", "batch_order", "seed")
        return {k: getattr(self, k) for k in keys}


def config_from_flags(fv: flags.FlagValues, recipe: Recipe) -> Config:
    """Builds the Config from parsed flags; --quick overrides the flags not given explicitly."""
    values = {name: fv[name].value for name in fv}
    if values["quick"]:
        for key, value in recipe.quick.items():
            if not fv[key].present:
                values[key] = value
    try:
        threads = tuple(int(t) for t in str(values["threads"]).split(",") if t.strip())
    except ValueError:
        threads = ()
    if not threads or any(t < 1 for t in threads) or len(set(threads)) != len(threads):
        raise UsageError("--threads must be a comma-separated list of different positive "
                         f"integers. Received: --threads={values['threads']!r}")
    if 1 not in threads:
        raise UsageError("--threads must include 1: the results' latency and speedup are "
                         f"at 1 thread, batch 1. Received: --threads={values['threads']!r}")
    values["threads"] = threads
    values["ssl_layers"] = _ssl_layers(values["ssl_layers"], recipe)
    values["round_to"] = _round_to(values["round_to"])
    values["round_down"] = _round_to(values["round_down"], "--round_down")
    values["max_channels"] = (None if str(values["max_channels"]).strip() in ("", "null")
                              else _round_to(values["max_channels"], "--max_channels"))
    for name in ("epochs", "ssl_epochs", "finetune_epochs", "batch_size", "steps_per_execution",
                 "runs", "zero_every"):
        if values[name] < 1:
            raise UsageError(f"--{name} must be >= 1. Received: --{name}={values[name]}")
    if not 0 <= values["seed"] < 2 ** 32:
        raise UsageError(f"--seed must be in [0, 2**32). Received: --seed={values['seed']}")
    for name in ("max_train", "max_test", "warmup"):
        if values[name] < 0:
            raise UsageError(f"--{name} must be >= 0 (0: all). Received: --{name}={values[name]}")
    for name in ("lr", "ssl_lr", "finetune_lr", "threshold"):
        if not values[name] > 0:
            raise UsageError(f"--{name} must be > 0. Received: --{name}={values[name]}")
    for name in ("filters", "channels", "shapes", "borders", "depth"):
        if values[name] < 0:
            raise UsageError(f"--{name} must be >= 0. Received: --{name}={values[name]}")
    if not any(values[n] > 0 for n in ("filters", "channels", "shapes", "borders", "depth")):
        raise UsageError("At least one of --filters, --channels, --shapes, --borders, --depth "
                         "must be > 0. Received: all zero")
    ramp = values["max_channels_ramp"]
    if ramp is not None and not fv["max_channels_ramp"].present and (
            values["max_channels"] is None or values["proximal"]):
        # the recipe's ramp belongs to its caps and its subgradient steps: --max_channels=null
        # or --proximal given on the command line turn it off, as --max_channels_ramp=0 does
        ramp = None
    if ramp == 0:
        ramp = None
    values["max_channels_ramp"] = ramp
    if ramp is not None:
        if not 0 < ramp <= 1:
            raise UsageError(f"--max_channels_ramp must be in (0, 1] (a fraction of the SSL "
                             f"phase), or 0 (off). Received: --max_channels_ramp={ramp}")
        if values["max_channels"] is None:
            raise UsageError("--max_channels_ramp needs --max_channels (the widths it "
                             "ramps to). Received: --max_channels=null")
        if values["proximal"]:
            raise UsageError("--max_channels_ramp cuts groups with the zeroing steps of the "
                             "subgradient recipe; it cannot be combined with --proximal. "
                             "Received: --proximal")
    if not 0 <= values["distill"] <= 1:
        raise UsageError(f"--distill must be in [0, 1]. Received: --distill={values['distill']}")
    if not values["distill_temperature"] > 0:
        raise UsageError("--distill_temperature must be > 0. "
                         f"Received: --distill_temperature={values['distill_temperature']}")
    if not 0 <= values["ssl_momentum"] < 1:
        raise UsageError("--ssl_momentum must be in [0, 1). "
                         f"Received: --ssl_momentum={values['ssl_momentum']}")
    if not 0 <= values["validation_split"] < 1:
        raise UsageError("--validation_split must be in [0, 1). "
                         f"Received: --validation_split={values['validation_split']}")
    for name, value in values.items():  # the range checks above let inf through
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name} must be a finite number. Received: --{name}={value}")
    for name in ("out_dir", "data_dir"):
        if values.get(name) is not None and not str(values[name]).strip():
            raise UsageError(f"--{name} must not be empty (leave the flag out for the "
                             f"default). Received: --{name}=''")
    _check_out_dir(values["out_dir"])
    fields = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in fields})


def _check_out_dir(out_dir: str) -> None:
    """--out_dir: an existing folder, or one that can be made (its nearest existing parent
    is a writable folder), before anything is trained."""
    path = os.path.abspath(out_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out_dir must be a folder. Received: --out_dir={out_dir!r}, a file")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out_dir must be a folder this user can write to (or create). "
                         f"Received: --out_dir={out_dir!r} ({parent!r} is not writable)")


def _round_to(text, flag: str = "--round_to") -> int | dict:
    """--round_to / --round_down / --max_channels: an integer >= 1, or JSON {layer name:
    integer >= 1}."""
    text = str(text).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None

    def positive_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if positive_int(value) or (isinstance(value, dict) and all(
            isinstance(k, str) and positive_int(v) for k, v in value.items())):
        return value  # {} names no layer, as in the library and thin_cli
    raise UsageError(
        f"{flag} must be an integer >= 1 or JSON mapping layer names to integers >= 1, "
        f"e.g. 8 or '{{\"conv2\": 16}}'. Received: {flag}={text!r}")


def _ssl_layers(text: str | None, recipe: Recipe) -> dict | None:
    """The per-layer multipliers: --ssl_layers parsed and checked, else the recipe's."""
    if text is None or not text.strip():
        return recipe.ssl_layers
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--ssl_layers must be JSON ({e}). Received: --ssl_layers={text!r}") \
            from None
    kinds = ("filters", "channels", "shapes", "borders", "depth")
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and (v is None or (isinstance(v, dict) and all(
            key in kinds and isinstance(m, (int, float)) and not isinstance(m, bool)
            and math.isfinite(m) and m >= 0
            for key, m in v.items())))
        for k, v in value.items())
    if not ok:
        raise UsageError(
            "--ssl_layers must map layer names to null or to {structure: finite multiplier >= 0} "
            "with "
            f"structures among {kinds}, e.g. '{{\"conv1\": {{\"filters\": 2.5}}}}'. "
            f"Received: --ssl_layers={text!r}")
    return value
