"""The steps of one examples' run: `Pipeline(recipe, cfg).run()`, from the data to the report.

Data, dense training, SSL, zeroing, thinning and fine-tuning of the thinned model (with
`--nofinetune_thinned`: fine-tuning of the zeroed model, then thinning), TFLite export, the
tfmot baseline (in its own process) and the benchmark, in that order (examples/common.py
describes each step).
Every phase saves its model to `<out_dir>/<name>_<dataset>/` and a run resumes from the last
finished one. The report methods come from `examples.report.ReportMixin`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from examples import datasets
from examples.batches import shuffled_batches
from examples.config import ADDED_SETTINGS, Config, Recipe, UsageError
from examples.distill import distillation_loss, distillation_targets, packed_accuracy
from examples.report import ReportMixin, accuracy, units_per_layer
from examples.util import StepUnavailableError, atomic_save, atomic_write_text, need, onednn_enabled

PHASES = ("dense", "ssl", "finetune")
BN_BATCHES = 20  # training batches over which BatchNorm statistics are re-estimated


def _optimizer(keras, kind: str, lr, momentum: float = 0.9):
    if kind == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(lr, momentum=momentum)


def _compile(keras, model, kind: str, lr, momentum: float = 0.9, steps_per_execution: int = 1,
             loss=None, metrics=("accuracy",)):
    """compile with the examples' optimizer; the loss defaults to cross-entropy on logits."""
    model.compile(
        optimizer=_optimizer(keras, kind, lr, momentum),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
        steps_per_execution=steps_per_execution,
    )


def _phase_of(backup: str) -> str:
    """The phase whose in-phase backup folder this is: <work>/backup_ssl -> "ssl"."""
    return os.path.basename(backup).replace("backup_", "")


def _backup_and_restore(keras, backup: str):
    """keras BackupAndRestore keeping the backup before the last (double_checkpoint: a
    backup half-written when the run was killed falls back to it); a backup that still
    cannot be read is a UsageError naming the folder to delete (was: a traceback on every
    rerun, until --fresh deleted the finished phases too)."""
    phase = _phase_of(backup)

    class Backup(keras.callbacks.BackupAndRestore):
        def on_train_begin(self, logs=None):
            try:
                super().on_train_begin(logs)
            except (OSError, ValueError, KeyError) as e:
                raise UsageError(
                    f"The {phase} phase's backup in {backup} cannot be read (the run was "
                    f"killed while writing it? {type(e).__name__}: "
                    f"{' '.join(str(e).split())[:100]}). Expected a readable backup or none: "
                    f"delete {backup} to restart this phase; the finished phases are kept."
                ) from None

    return Backup(backup, double_checkpoint=True)


def _fit(keras, model, data, cfg: Config, epochs: int, backup: str, lr_flag: str,
         callbacks=(), targets=None):
    """model.fit on the training images; `targets` = (train, validation) replaces the labels.

    Stops at the first batch whose loss is NaN or infinite (keras TerminateOnNaN) and raises
    UsageError naming `lr_flag` (e.g. "--finetune_lr=0.02"), the phase's learning rate: a
    diverged phase would otherwise train on for its remaining epochs and fail later, in the
    export's TFLite check, with a message about the conversion.
    """
    y_train, y_val = targets if targets is not None else (data.y_train, data.y_val)
    phase = _phase_of(backup)
    # A new order every epoch, seeded by the run's seed and the phase (examples/batches.py:
    # fit(x, y, shuffle=True) repeated one order in every epoch of a seeded run).
    batches, set_epoch = shuffled_batches(data.x_train, y_train, cfg.batch_size,
                                          (cfg.seed, PHASES.index(phase)))
    callbacks = [set_epoch, _backup_and_restore(keras, backup),
                 keras.callbacks.TerminateOnNaN(), *callbacks]
    validation = (data.x_val, y_val) if len(data.x_val) else None
    history = model.fit(batches, epochs=epochs, validation_data=validation,
                        validation_batch_size=cfg.batch_size, callbacks=callbacks,
                        verbose=cfg.verbose, shuffle=False)  # the dataset shuffles
    losses = history.history.get("loss", [])
    bad = [v.path for v in model.weights
           if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
    if (losses and not np.isfinite(losses[-1])) or bad:
        what = (f"the loss was {losses[-1]} in epoch {len(losses)} of {epochs}"
                if losses and not np.isfinite(losses[-1]) else
                f"the weights {bad[:3]} are not finite after epoch {len(losses)} of {epochs} "
                f"(last logged loss {losses[-1] if losses else None})")
        raise UsageError(
            f"Training diverged: {what}. Expected finite values; try a smaller learning rate "
            f"than {lr_flag} (nothing of this phase was saved)."
        )
    return history


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


# ---------------------------------------------------------------------------------------------
# The pipeline


class Pipeline(ReportMixin):
    """Runs one recipe with one Config; `run()` returns the results dict (also written)."""

    def __init__(self, recipe: Recipe, cfg: Config):
        self.recipe = recipe
        self.cfg = cfg
        self.dataset = cfg.dataset  # the dataset used: the fallback when --dataset is offline
        self.timings = {}

    @property
    def stem(self) -> str:
        return f"{self.recipe.name}_{self.dataset}{'_quick' if self.cfg.quick else ''}"

    @property
    def work(self) -> str:
        return os.path.join(self.cfg.out_dir, self.stem)

    def log(self, msg: str) -> None:
        print(f"[{self.recipe.name}] {msg}", flush=True)

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    # -- bookkeeping -------------------------------------------------------------------------

    def _prepare_work_dir(self) -> None:
        key_path = self.path("config.json")
        key = {**self.cfg.training_key(), "dataset": self.dataset}
        if self.cfg.fresh and os.path.isdir(self.work):
            self.log(f"--fresh: deleting the checkpoints in {self.work}")
            shutil.rmtree(self.work)
        try:
            os.makedirs(self.work, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out_dir: cannot create {self.work!r} ({e.strerror or e}). "
                             f"Expected a folder that can be created. Received: "
                             f"--out_dir={self.cfg.out_dir!r}") from None
        if os.path.exists(key_path):
            try:
                with open(key_path, encoding="utf-8") as f:
                    old = {**ADDED_SETTINGS, **json.load(f)}
            except (OSError, ValueError, TypeError) as e:
                raise UsageError(
                    f"The settings file of the checkpoints, {key_path}, cannot be read "
                    f"({' '.join(str(e).split())[:100]}). Expected the JSON this example "
                    "wrote. Pass --fresh to retrain, or another --out_dir.") from None
            if old != json.loads(json.dumps(key)):
                diff = {k: (old.get(k), key.get(k)) for k in sorted({*key, *old})
                        if old.get(k) != key.get(k)}
                raise UsageError(
                    f"The checkpoints in {self.work} were trained with other settings "
                    f"(setting: (checkpoint, now)) {diff}. Expected the same settings to "
                    "resume. Pass --fresh to retrain, or another --out_dir."
                )
        else:
            atomic_write_text(key_path, json.dumps(key, indent=1))
        # what a killed run left: atomic writes' temporary files, the tfmot step's images
        stale = [n for n in os.listdir(self.work)
                 if n.startswith(".tmp_") or n == "tfmot_data.npz"]
        for name in stale:
            path = self.path(name)
            if os.path.isfile(path):
                os.remove(path)
        if stale:
            self.log(f"removed {len(stale)} file(s) an interrupted run left in {self.work}")

    def _phase(self, name: str, train: Callable):
        """Loads `<name>.keras` when an earlier run finished the phase, else trains it."""
        import keras

        path = self.path(f"{name}.keras")
        if os.path.exists(path):
            self.log(f"phase {name}: resuming from {path}")
            return keras.saving.load_model(path, compile=False)
        start = time.time()
        model = train()
        atomic_save(model, path)
        self.timings[name] = round(time.time() - start, 1)
        return model

    # -- steps -------------------------------------------------------------------------------

    def load_data(self):
        cfg = self.cfg

        def load(name):
            try:
                return datasets.load(
                    name, data_dir=cfg.data_dir, validation_split=cfg.validation_split,
                    seed=cfg.seed, max_train=cfg.max_train or None,
                    max_test=cfg.max_test or None,
                    # a second held-out sample, as large as the test set (--max_test)
                    max_unused=cfg.max_test or 10000,
                    **self.recipe.dataset_kwargs.get(name, {}))
            except ValueError as e:  # unreadable files, bad labels, an empty split: one line
                raise UsageError(f"data: {' '.join(str(e).split())}") from None

        try:
            self.data = load(cfg.dataset)
        except datasets.DatasetNotFoundError as e:
            fallback = self.recipe.fallback_dataset
            if fallback is None or fallback == cfg.dataset or cfg.data_dir:
                raise  # --data_dir names the data: no other dataset instead
            self.log(f"data: {cfg.dataset} is not available ({str(e)[:160]}...); "
                     f"using {fallback} instead")
            self.dataset = fallback
            self.data = load(fallback)
        d = self.data
        unused = f", unused training images {len(d.x_unused)}" if len(d.x_unused) else ""
        self.log(f"data: {self.dataset} from {d.source}: train {len(d.x_train)}, "
                 f"validation {len(d.x_val)}, test {len(d.x_test)}{unused}, "
                 f"shape {d.input_shape}")

    def _build(self):
        """The recipe's architecture for the data; images it cannot take are a UsageError
        (8x8 IDX images gave Keras's "output size would be zero or negative" traceback)."""
        try:
            return self.recipe.build(input_shape=self.data.input_shape,
                                     num_classes=self.data.num_classes)
        except ValueError as e:
            raise UsageError(
                f"data: {self.recipe.name} cannot take images of shape {self.data.input_shape}"
                f" from {self.data.source} ({' '.join(str(e).split())[:160]}). Expected the "
                "dataset's own image size.") from None

    def train_dense(self):
        import keras

        cfg = self.cfg

        def train():
            self.log(f"phase dense: {cfg.epochs} epochs, {cfg.optimizer} lr={cfg.lr} "
                     f"({cfg.lr_schedule})")
            model = self._build()
            _compile(keras, model, cfg.optimizer, self._schedule(keras, cfg.lr, cfg.epochs),
                     steps_per_execution=cfg.steps_per_execution)
            _fit(keras, model, self.data, cfg, cfg.epochs, self.path("backup_dense"),
                 f"--lr={cfg.lr}")
            # The baseline gets the same treatment as the SSL model (a fair comparison).
            self._reestimate_batchnorm(model, "dense")
            return model

        self.dense = self._phase("dense", train)

    def train_ssl(self):
        import keras

        cfg = self.cfg
        apply_ssl = need("ssl_keras.wrap", "apply_ssl", "ssl")

        def train():
            self.log(f"phase ssl: {cfg.ssl_epochs} epochs, lr={cfg.ssl_lr} momentum="
                     f"{cfg.ssl_momentum}, filters={cfg.filters}"
                     f" channels={cfg.channels} shapes={cfg.shapes} borders={cfg.borders}"
                     f" depth={cfg.depth}"
                     f" proximal={cfg.proximal}")
            layers = None
            if cfg.ssl_layers is not None:
                layers = {name: None if mult is None else
                          {k: getattr(cfg, k) * m for k, m in mult.items()}
                          for name, mult in cfg.ssl_layers.items()}
                self.log(f"phase ssl: per-layer coefficients {layers}")
            model = apply_ssl(self.dense, filters=cfg.filters, channels=cfg.channels,
                              shapes=cfg.shapes, depth=cfg.depth, borders=cfg.borders,
                              coupled=True, layers=layers)
            # Keras calls the callbacks once per compiled call. The zeroing / width cuts act
            # at multiples of --zero_every: with steps per call that divide both it and the
            # epoch (LeNet: 4), they act at the same steps as with one, so the weights are
            # the same. The proximal step acts after every step: one per call.
            per_epoch = self._steps_per_epoch()
            steps = 1 if cfg.proximal else math.gcd(cfg.steps_per_execution, cfg.zero_every,
                                                    per_epoch)
            _compile(keras, model, cfg.optimizer, cfg.ssl_lr, cfg.ssl_momentum,
                     steps_per_execution=steps)
            callbacks = [need("ssl_keras.callbacks", "SparsityMonitor", "ssl")(
                threshold=cfg.threshold, verbose=cfg.verbose > 0)]
            if cfg.proximal:
                callbacks.append(
                    need("ssl_keras.callbacks", "ProximalGroupLasso", "ssl")())
            elif cfg.max_channels_ramp is not None:  # the width budget reached during SSL
                total = cfg.ssl_epochs * per_epoch
                end = max(1, round(cfg.max_channels_ramp * total))
                self.log(f"phase ssl: --max_channels={json.dumps(cfg.max_channels)} reached "
                         f"gradually by step {end} of {total} (WidthBudget)")
                callbacks.append(need("ssl_keras.callbacks", "WidthBudget", "ssl")(
                    cfg.max_channels, end_step=end, every_n_steps=cfg.zero_every,
                    threshold=cfg.threshold))
            else:  # the reference recipe: subgradient, small groups set to zero now and then
                callbacks.append(need("ssl_keras.callbacks", "ZeroSmallGroups", "ssl")(
                    cfg.threshold, every_n_steps=cfg.zero_every))
            _fit(keras, model, self.data, cfg, cfg.ssl_epochs, self.path("backup_ssl"),
                 f"--ssl_lr={cfg.ssl_lr}", callbacks)
            self._reestimate_batchnorm(model, "ssl")
            return model

        self.ssl = self._phase("ssl", train)

    def _check_layer_names(self, keras) -> None:
        """--ssl_layers and a per-layer --round_to / --round_down / --max_channels must name
        layers of the architecture, and --depth needs residual branches: checked before any
        training (apply_ssl and thin would say so only after it)."""
        cfg = self.cfg
        named = {flag: value if isinstance(value, dict) else {}
                 for flag, value in (("--round_to", cfg.round_to),
                                     ("--round_down", cfg.round_down),
                                     ("--max_channels", cfg.max_channels))}
        if cfg.ssl_layers is not self.recipe.ssl_layers:  # given on the command line
            named["--ssl_layers"] = cfg.ssl_layers or {}
        if not any(named.values()) and not cfg.depth:
            return
        model = self._build()
        # That model drew its weights from the seeded generator: seed again, so that the
        # dense model starts from the same weights with and without the check.
        keras.utils.set_random_seed(cfg.seed)
        # layers with a kernel (and, for --ssl_layers, the Add layers whose name keys a
        # residual branch's depth coefficient): a pool / flatten / input layer has no groups
        # or width, and naming one in --ssl_layers silently dropped the recipe's multipliers
        kernels = {layer.name for layer in model.layers
                   if getattr(layer, "kernel", None) is not None}
        adds = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)}
        for flag, names in named.items():
            layers = sorted(kernels | adds if flag == "--ssl_layers" else kernels)
            unknown = sorted(set(names) - set(layers))
            if unknown:
                raise UsageError(f"{flag} names layers that {self.recipe.name} does not have "
                                 "or that have no kernel to prune. Expected names among "
                                 f"{layers}. Received: {unknown}")
        # depth groups are residual branches, keyed by their Add (apply_ssl would refuse a
        # depth that penalises nothing, but only after dense training)
        misplaced = sorted(name for name, mult in (named.get("--ssl_layers") or {}).items()
                           if mult and mult.get("depth") and name not in adds)
        if misplaced:
            raise UsageError(f"--ssl_layers gives a depth multiplier to layers that are not "
                             f"Add layers: depth groups are residual branches, keyed by their "
                             f"Add. Expected depth on names among {sorted(adds) or '(none)'}. "
                             f"Received: {misplaced}")
        if cfg.depth and not adds:
            raise UsageError(f"--depth penalises residual branches, and {self.recipe.name} has "
                             "no Add layer. Expected --depth=0 (or an architecture with "
                             f"residual blocks: examples.resnet). Received: --depth={cfg.depth}")

    def _steps_per_epoch(self) -> int:
        """Training steps in one epoch (the last batch holds the rest)."""
        return -(-len(self.data.x_train) // self.cfg.batch_size)

    def _schedule(self, keras, lr: float, epochs: int):
        """The learning rate of a phase: `lr`, or cosine decay from it over the phase."""
        if self.cfg.lr_schedule == "constant":
            return lr
        steps = epochs * self._steps_per_epoch()
        return keras.optimizers.schedules.CosineDecay(lr, max(steps, 1))

    def zero(self):
        """zero_groups(strip_ssl(ssl)) with BatchNorm re-estimated: deterministic, not saved."""
        zero_groups = need("ssl_keras.thin", "zero_groups", "finetune")
        strip_ssl = need("ssl_keras.wrap", "strip_ssl", "finetune")
        # strip first: the zeroed groups are then exactly the groups thin() removes.
        self.zeroed = zero_groups(strip_ssl(self.ssl), self.cfg.threshold,
                                  round_down=self.cfg.round_down,
                                  max_channels=self.cfg.max_channels)
        if self.cfg.max_channels is not None:
            self.log(f"zero: --max_channels={json.dumps(self.cfg.max_channels)}: the weakest "
                     "live groups beyond it zeroed too")
        if self.cfg.round_down != 1:
            self.log(f"zero: --round_down={json.dumps(self.cfg.round_down)}: the weakest live "
                     "groups zeroed too, so that each width is a multiple")
        self._reestimate_batchnorm(self.zeroed, "finetune (after zeroing)")

    def _thin_checked(self, model):
        """thin(model), checked against `model` on 256 test images (max |difference|)."""
        thin = need("ssl_keras.thin", "thin", "thin")
        thinned = thin(model, threshold=self.cfg.threshold, round_to=self.cfg.round_to)
        x = self.data.x_test[:256]
        ref = model.predict(x, verbose=0)
        got = thinned.predict(x, verbose=0)
        self.thin_max_abs_diff = float(np.max(np.abs(ref - got)))
        self.log(f"thin: {units_per_layer(self.dense)} -> {units_per_layer(thinned)}; "
                 f"max |thinned - zeroed| on {len(x)} test images = {self.thin_max_abs_diff:.2e}")
        return thinned

    def finetune(self):
        import keras

        cfg = self.cfg
        self.zero()
        if cfg.finetune_thinned:
            # thin before fine-tuning: the check compares thin() with the zeroed model it
            # came from, and the small model fine-tunes several times faster.
            start = self._thin_checked(self.zeroed)
        else:
            start = self.zeroed
        freeze = None if cfg.finetune_thinned else need(
            "ssl_keras.callbacks", "freeze_zero_groups", "finetune")

        def train():
            what = "the thinned model" if cfg.finetune_thinned else \
                "the zeroed model, zero groups frozen"
            self.log(f"phase finetune: {what}, {cfg.finetune_epochs} epochs, "
                     f"lr={cfg.finetune_lr} ({cfg.lr_schedule})")
            model = keras.models.clone_model(start)
            model.set_weights(start.get_weights())
            schedule = self._schedule(keras, cfg.finetune_lr, cfg.finetune_epochs)
            # freeze_zero_groups masks the weights after every step: one step per call
            steps = cfg.steps_per_execution if freeze is None else 1
            targets = None
            if cfg.distill > 0:
                self.log(f"phase finetune: distillation from the dense model, alpha="
                         f"{cfg.distill}, T={cfg.distill_temperature}")
                targets = distillation_targets(self.dense, self.data)
                _compile(keras, model, cfg.optimizer, schedule, steps_per_execution=steps,
                         loss=distillation_loss(cfg.distill, cfg.distill_temperature),
                         metrics=[packed_accuracy])
            else:
                _compile(keras, model, cfg.optimizer, schedule, steps_per_execution=steps)
            callbacks = [] if freeze is None else [freeze(model, cfg.threshold)]
            _fit(keras, model, self.data, cfg, cfg.finetune_epochs,
                 self.path("backup_finetune"), f"--finetune_lr={cfg.finetune_lr}", callbacks,
                 targets)
            if targets is not None:  # saved with the examples' usual loss, not the closure
                _compile(keras, model, cfg.optimizer, cfg.finetune_lr)
            self._reestimate_batchnorm(model, "finetune")
            return model

        self.finetuned = self._phase("finetune", train)

    def _reestimate_batchnorm(self, model, phase: str) -> None:
        """Recomputes the BatchNorm moving statistics from the training images (if any BN).

        Group Lasso (and zeroing) changes the weights under every BatchNorm faster than its
        moving statistics follow (momentum 0.99): the inference-mode model can then be far
        worse than the training-mode one (ResNet-20: 9% validation accuracy instead of 79%).
        """
        import keras

        if not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in model._flatten_layers(include_self=False)):
            return
        reestimate = need("ssl_keras.callbacks", "reestimate_batchnorm", "ssl")
        data = self.data
        before = accuracy(model, data.x_val, data.y_val)
        count = reestimate(model, data.x_train, batch_size=self.cfg.batch_size,
                           max_batches=BN_BATCHES)
        after = accuracy(model, data.x_val, data.y_val)
        self.log(f"phase {phase}: BatchNorm statistics of {count} layers re-estimated on "
                 f"{min(BN_BATCHES, max(len(data.x_train) // self.cfg.batch_size, 1))} "
                 f"training batches; validation accuracy {_pct(before)} -> {_pct(after)}")

    def thin(self):
        if self.cfg.finetune_thinned:
            self.thinned = self.finetuned
        else:
            self.thinned = self._thin_checked(self.finetuned)
        atomic_save(self.thinned, self.path("thinned.keras"))

    def export(self):
        export_tflite = need("ssl_keras.export", "export_tflite", "export")
        predict_tflite = need("ssl_keras.export", "predict_tflite", "export")
        rep = self.data.x_train[:200]
        self.tflite = {
            "dense": self.path("dense_float32.tflite"),
            "ssl": self.path("ssl_thinned_float32.tflite"),
            "ssl_int8": self.path("ssl_thinned_int8.tflite"),
        }
        # The work directory belongs to this run: its .tflite files are regenerated each time.
        for key, model, quantize in (("dense", self.dense, None), ("ssl", self.thinned, None),
                                     ("ssl_int8", self.thinned, "int8")):
            report = export_tflite(model, self.tflite[key], quantize=quantize,
                                   representative_data=rep, overwrite=True)
            self.log(f"export: {self.tflite[key]} ({report.size_bytes} bytes, max |tflite - "
                     f"keras| on {report.verified_samples} samples = {report.max_abs_diff:.2e})")
        x = self.data.x_test[:100]
        (outputs,) = predict_tflite(self.tflite["ssl"], x).values()
        self.tflite_max_abs_diff = float(np.max(np.abs(
            outputs - self.finetuned.predict(x, verbose=0))))
        self.log(f"export: max |thinned float32 TFLite - finetuned Keras| on 100 test images = "
                 f"{self.tflite_max_abs_diff:.2e}")

    def tfmot_baseline(self, sparsity: float):
        """Runs `python -m tflite_bench.baselines` in its own process (tfmot needs Keras 2).

        Element-wise magnitude pruning of the dense model at `sparsity` (the SSL model's
        parameter sparsity), fine-tuned on a training subset; the float32 .tflite of the
        pruned model is benchmarked beside the others.
        """
        self.tfmot = None
        if not self.cfg.tfmot or self.recipe.tfmot_arch is None:
            self.log("tfmot: skipped (--notfmot or no tf_keras architecture)")
            return
        out = self.path("tfmot")
        os.makedirs(out, exist_ok=True)
        npz = self.path("tfmot_data.npz")
        n = min(len(self.data.x_train), 10000)
        np.savez(npz, x_train=self.data.x_train[:n], y_train=self.data.y_train[:n],
                 x_test=self.data.x_test, y_test=self.data.y_test)
        steps = 50 if self.cfg.quick else 300
        cmd = [sys.executable, "-m", "tflite_bench.baselines", "--arch", self.recipe.tfmot_arch,
               "--sparsity", f"{min(max(sparsity, 0.01), 0.99):.4f}", "--weights",
               self.path("dense.keras"), "--data", npz, "--steps", str(steps),
               "--kinds", "elementwise", "--out", out, "--overwrite"]
        self.log("tfmot: python " + " ".join(cmd[1:]))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        finally:  # Ctrl-C too: the 35 MB of images are not left behind
            os.remove(npz)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise StepUnavailableError(
                f"Step 'tfmot' failed: python -m tflite_bench.baselines exited with "
                f"{proc.returncode}: {last}. Pass --notfmot to skip the baseline.")
        with open(os.path.join(out, "baselines.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        files = [e for e in manifest["files"] if e["kind"] == "elementwise"]
        if not files:
            raise StepUnavailableError(
                "Step 'tfmot' failed: tflite_bench.baselines listed no 'elementwise' file in "
                f"{out}/baselines.json. Pass --notfmot to skip the baseline.")
        entry = files[0]
        self.tfmot = {"command": "python " + " ".join(cmd[1:]),
                      "tflite": entry["path"], "target_sparsity": sparsity,
                      "kernel_sparsity": entry["kernel_sparsity"],
                      "pruning": manifest.get("pruning"), "steps": steps}
        self.log(f"tfmot: {entry['path']}, kernel sparsity {entry['kernel_sparsity']:.3f}")

    def bench(self):
        benchmark = need("tflite_bench", "benchmark", "bench")
        paths = [self.tflite["dense"], self.tflite["ssl"], self.tflite["ssl_int8"]]
        if self.tfmot and self.tfmot.get("tflite"):
            paths.append(self.tfmot["tflite"])
        self.bench_result = benchmark(paths, threads=self.cfg.threads, runs=self.cfg.runs,
                                      warmup=self.cfg.warmup, progress=self.cfg.verbose == 1)
        atomic_write_text(self.path("bench.json"), json.dumps(self.bench_result, indent=1))

    def run(self) -> dict:
        t0 = time.time()
        import keras

        keras.utils.set_random_seed(self.cfg.seed)
        self.cfg = dataclasses.replace(self.cfg, onednn=onednn_enabled())
        self.log("TensorFlow's oneDNN CPU kernels: "
                 + {True: "on", False: "off", None: "unknown"}[self.cfg.onednn]
                 + f" (TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '')!r})")
        self.load_data()
        self._check_layer_names(keras)
        self._prepare_work_dir()
        self.train_dense()
        self.train_ssl()
        self.finetune()
        self.thin()
        self.export()
        count_params = need("tflite_bench", "count_params", "tfmot")
        sparsity = 1.0 - count_params(self.tflite["ssl"]) / count_params(self.tflite["dense"])
        self.tfmot_baseline(sparsity)
        self.bench()
        results = self.results()
        results["seconds"] = round(time.time() - t0, 1)
        self.write(results)
        return results
