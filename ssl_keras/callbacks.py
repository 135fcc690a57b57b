"""Training callbacks of Structured Sparsity Learning.

- `SparsityMonitor`: per layer, how many removable groups are at or below a threshold (the
  norm over all of a group's penalised slices, what ZeroSmallGroups zeroes), every epoch (the
  totals in the logs, every figure in `monitor.history` and as TensorBoard scalars), and as a
  table at the end of training.
- `ZeroSmallGroups`: sets groups whose norm is at or below a threshold to exactly zero (the
  method's reference recipe).
- `WidthBudget`: ZeroSmallGroups that also cuts named layers to a width budget, gradually
  over a number of steps (the weakest groups first), so that the network adapts to the cut.
- `ProximalGroupLasso`: group soft-thresholding after each optimizer step,
  `w_g <- w_g * max(0, 1 - lr * lambda / ||w_g||)`, exact zeros during training.
- `freeze_zero_groups(model)`: a callback that keeps the groups that are zero now at exactly
  zero while everything else trains (fine-tuning).
- `reestimate_batchnorm(model, x)`: recomputes the BatchNorm moving statistics from data
  (after group Lasso has changed the weights under them, or after zeroing groups).

The groups come from the model: the `StructuredSparsity` wrappers (per-layer groups of every
structure with a non-zero coefficient), the `GroupLasso` regularisers placed by hand
(`kernel_regularizer=GroupLasso(...)`, the same per-layer groups; subclassed models included,
once built) and, for an `SSLModel`, its coupled channel groups and residual-branch groups. A
plain model can be given `groups=` (the output of
`ssl_keras.removable_groups(model)`, or the `ssl_groups` of an SSLModel); without it, a plain
model is analysed with `removable_groups` plus the per-layer filter, channel, shape and border
groups of every supported layer.

Weights are changed with `variable.assign` between steps, which works with the TensorFlow
backend (MirroredStrategy included) and the JAX backend (the callbacks sync the JAX state).
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
from keras import ops

from ssl_keras._callbacks_batchnorm import reestimate_batchnorm as reestimate_batchnorm
from ssl_keras._callbacks_groups import (
    _finite,
    _is_real,
    _sync_jax,
    _validate_steps,
    _validate_threshold,
    _zero_below,
    group_sets,
    sparsity_summary,
)
from ssl_keras._thin_model import _check_round_to

# The structures / wrap names were importable from here before the split (not the callbacks'
# API); only set_penalty_gradient is used below.
from ssl_keras.structures import Structure as Structure
from ssl_keras.structures import border_bands as border_bands
from ssl_keras.structures import border_sizes as border_sizes
from ssl_keras.structures import group_size as group_size
from ssl_keras.structures import reduction_axes as reduction_axes
from ssl_keras.wrap import CoupledTerms as CoupledTerms
from ssl_keras.wrap import SSLModel as SSLModel
from ssl_keras.wrap import StructuredSparsity as StructuredSparsity
from ssl_keras.wrap import kernel_specs as kernel_specs
from ssl_keras.wrap import set_penalty_gradient

__all__ = [
    "FreezeZeroGroups",
    "ProximalGroupLasso",
    "SparsityMonitor",
    "WidthBudget",
    "ZeroSmallGroups",
    "freeze_zero_groups",
    "reestimate_batchnorm",
]


def _iterations(model, fallback: int) -> int:
    """The optimizer's step count (Keras calls batch callbacks once per `steps_per_execution`
    steps, so the callbacks count steps with it, not their calls); `fallback` for a model
    without an optimizer (a callback driven by hand)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return fallback
    return int(ops.convert_to_numpy(optimizer.iterations))


def _learning_rate_sum(optimizer, first: int, end: int) -> float:
    """The sum of the learning rates of the steps `first` .. `end - 1` (a schedule evaluated
    at each step, as the optimizer did).

    A LossScaleOptimizer (mixed_float16) holds the schedule in its inner optimizer. With
    `gradient_accumulation_steps=N` the optimizer counts micro-steps: update k is taken at
    micro-step (k + 1) * N - 1 and evaluates the schedule there.
    """
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    schedule = getattr(optimizer, "_learning_rate", None)
    n = getattr(optimizer, "gradient_accumulation_steps", None) or 1
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return float(sum(ops.convert_to_numpy(schedule((step + 1) * n - 1))
                         for step in range(first, end)))
    return float(ops.convert_to_numpy(optimizer.learning_rate)) * (end - first)


class SparsityMonitor(keras.callbacks.Callback):
    """Logs, per layer and structure, how many removable groups are at or below a threshold.

    Every epoch it records `ssl/<layer>/<structure>/zero` (count),
    `ssl/<layer>/<structure>/fraction`, and the totals `ssl/zero_groups` and
    `ssl/zero_fraction` in `self.history` (figure -> list, one value per epoch, as Keras'
    `History.history`). The totals also go into the epoch logs (so into the progress bar,
    `History.history` and every later callback); the per-layer figures too with
    `per_layer_logs=True` (off by default: the examples' depth-wise ResNet-20 has 18 of
    them, which made every epoch line of the progress bar about 1,300 characters long).
    Structures are "filters", "channels", "shapes", "borders", "depth" for per-layer groups
    (a plain model's Dense kernels list "channels" only: their "shapes" are the same rows);
    "channel" (a coupled channel group, under its source layer) and "depth" (a residual
    branch, under its Add layer) for an SSLModel. With `log_dir`, every figure is written as
    a TensorBoard scalar. At the end of training, a table is printed (and kept in
    `self.table`).

    Args:
        threshold: a group whose L2 norm (over all its penalised slices) is at or below it
            counts as zero, >= 0. `thin` removes these and also a coupled group whose
            producer slices alone (or consumer slices alone) are at or below it, so a model
            zeroed by hand can thin further than the count says.
        log_dir: a directory for TensorBoard scalars, or None.
        groups: plain-data groups for a plain model (see the module doc), or None.
        verbose: print the table at the end of training.
        per_layer_logs: put the per-layer figures into the epoch logs too, not only into
            `self.history` and TensorBoard.

    Example:
    >>> monitor = SparsityMonitor(threshold=1e-4)
    >>> history = ssl_model.fit(x, y, epochs=3, callbacks=[monitor])
    >>> history.history["ssl/zero_fraction"]
    >>> monitor.history["ssl/conv1/channel/zero"]   # an SSLModel's coupled groups of conv1
    """

    def __init__(self, threshold=1e-4, log_dir=None, groups=None, verbose=True,
                 per_layer_logs=False):
        super().__init__()
        self.threshold = _validate_threshold(threshold)
        if not isinstance(per_layer_logs, (bool, np.bool_)):
            raise ValueError("`per_layer_logs` must be a bool. Received: "
                             f"per_layer_logs={per_layer_logs!r}")
        self.per_layer_logs = bool(per_layer_logs)
        if log_dir is not None and not isinstance(log_dir, (str, bytes)) and not hasattr(
                log_dir, "__fspath__"):
            raise ValueError(
                f"`log_dir` must be a path or None. Received: log_dir={log_dir!r}")
        if log_dir is not None and os.path.exists(log_dir) and not os.path.isdir(log_dir):
            raise ValueError(
                "`log_dir` must be a directory (TensorBoard writes event files into it), or a "
                f"path where one can be created. Received: log_dir={log_dir!r}, a file")
        self.log_dir = log_dir
        self.groups = groups
        if not isinstance(verbose, (bool, int, np.bool_, np.integer)):
            raise ValueError("`verbose` must be a bool (print the table at the end of "
                             f"training). Received: verbose={verbose!r}")
        self.verbose = bool(verbose)
        self.summary = {}
        self.table = ""
        self.history = {}
        self._sets = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._sets = group_sets(self.model, self.groups)
        self.history = {}
        if self.log_dir is not None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_epoch_end(self, epoch, logs=None):
        _sync_jax(self.model)
        self.summary = sparsity_summary(self._sets, self.threshold)
        values = {}
        for label, (zero, total) in self.summary.items():
            values[f"ssl/{label}/zero"] = float(zero)
            values[f"ssl/{label}/fraction"] = zero / total if total else 0.0
        zero = sum(z for z, _ in self.summary.values())
        total = sum(t for _, t in self.summary.values())
        values["ssl/zero_groups"] = float(zero)
        values["ssl/zero_fraction"] = zero / total if total else 0.0
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)
        if logs is not None:
            logs.update(values if self.per_layer_logs else
                        {k: values[k] for k in ("ssl/zero_groups", "ssl/zero_fraction")})
        if self._writer is not None:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            # tf.summary.scalar needs the tensorboard package; this is what it writes.
            metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            with self._writer.as_default():
                for key, value in values.items():
                    tf.summary.write(key, tf.constant(value, tf.float32), step=epoch,
                                     metadata=metadata)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._sets is None:
            return
        _sync_jax(self.model)
        self.summary = sparsity_summary(self._sets, self.threshold)
        width = max([len("layer/structure")] + [len(k) for k in self.summary])
        lines = [f"{'layer/structure':<{width}}  {'groups':>7}  {'zero':>7}  {'fraction':>8}"]
        for label, (zero, total) in self.summary.items():
            lines.append(f"{label:<{width}}  {total:>7d}  {zero:>7d}  {zero / total:>8.3f}")
        zero = sum(z for z, _ in self.summary.values())
        total = sum(t for _, t in self.summary.values())
        fraction = zero / total if total else 0.0
        lines.append(f"{'total':<{width}}  {total:>7d}  {zero:>7d}  {fraction:>8.3f}")
        self.table = "\n".join(lines)
        if self.verbose:
            print(f"Group sparsity (norm <= {self.threshold:g}):\n{self.table}")
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ZeroSmallGroups(keras.callbacks.Callback):
    """Sets every group whose L2 norm is at or below `threshold` to exactly zero.

    The reference recipe of the method (after the updates, small groups are treated as
    removed). Runs when the optimizer's step count reaches a multiple of `every_n_steps`, and
    at the end of every fit: a fit resumed by BackupAndRestore (or a second fit) zeroes at the
    same steps as one uninterrupted fit, plus once where the first fit ended (so the two agree
    exactly when it ended on a multiple of `every_n_steps`).

    Args:
        threshold: groups with `||w_g|| <= threshold` are set to zero, >= 0.
        every_n_steps: how often, in optimizer steps, >= 1 (with steps_per_execution=N,
            at the first callback call after each multiple).
        groups: plain-data groups for a plain model, or None.

    Example:
    >>> ssl_model.fit(x, y, callbacks=[ZeroSmallGroups(1e-4, every_n_steps=10)])
    """

    def __init__(self, threshold=1e-4, every_n_steps=1, groups=None):
        super().__init__()
        self.threshold = _validate_threshold(threshold)
        self.every_n_steps = _validate_steps(every_n_steps, "every_n_steps")
        self.groups = groups
        self.zeroed = 0
        self._sets = None
        self._steps = self._done = self._begin = 0

    def on_train_begin(self, logs=None):
        self._sets = group_sets(self.model, self.groups)
        self._steps, self._done = 0, None

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = _iterations(self.model, self._steps)
        if self._done is None:  # the first batch: after every on_train_begin (a restore)
            self._done = self._begin // self.every_n_steps

    def on_train_batch_end(self, batch, logs=None):
        # The step count after this call (steps_per_execution=N: N steps further); zeroing
        # at its multiples of every_n_steps (was: counted from the start of each fit, so a
        # resumed SSL phase zeroed at other steps than an uninterrupted one).
        self._steps = max(_iterations(self.model, self._begin + 1), self._begin)
        if self._steps // self.every_n_steps > self._done:
            self._done = self._steps // self.every_n_steps
            _sync_jax(self.model)
            self._zero()

    def on_train_end(self, logs=None):
        _sync_jax(self.model)
        self._zero()

    def _zero(self) -> None:
        self.zeroed += _zero_below(self._sets, self.threshold)


class WidthBudget(ZeroSmallGroups):
    """ZeroSmallGroups that also brings layers down to a width budget, gradually.

    `zero_groups(max_channels=)` cuts a layer to its budget after training, by the groups'
    norms; the network then has only fine-tuning to recover. This callback reaches the same
    budget *during* the SSL phase instead (gradual pruning, as tfmot's PolynomialDecay
    schedule, but of whole groups): at every zeroing step the allowed width of each named
    layer is

        cap(t) = M + (W - M) * (1 - p) ** power,   p = (t - begin_step) / (end_step - begin_step)

    rounded up and clipped to [M, W] (W: the layer's number of groups, M: its budget), and
    the weakest live groups beyond it are set to zero (by the norm group Lasso shrinks, the
    one ZeroSmallGroups compares with `threshold`). Training goes on between cuts, so the
    rest of the network adapts while the budget tightens; the group Lasso keeps shrinking the
    weak groups the next cuts take. After `end_step` the budget stays at M. Groups below
    `threshold` are zeroed as in ZeroSmallGroups first.

    A layer's width counts the groups `zero_groups` counts: those of `removable_groups(model)`
    with an output channel in it (a channel an Add ties to several convolutions counts in
    each of them; cut for one, it narrows them all). Groups are ranked by the norm of their
    penalisable slices (zero_groups ranks a channel under a BatchNorm by its gamma instead).
    Blocked channels, the output layer and layers inside nested models take no budget.
    Steps and resumption are as in ZeroSmallGroups (the cap depends on the step count only).
    Zeroed groups are not frozen: one that grows back above the cap is cut again at the next
    step. Follow with `zero_groups(..., max_channels=)`, which makes the cut exact.

    Args:
        max_channels: {layer name: width >= 1} (other layers: no budget), or an int for
            every layer with channel groups.
        end_step: the optimizer step at which the budget is reached, > begin_step.
        begin_step: the step at which the budget starts to tighten, >= 0.
        every_n_steps: how often, in optimizer steps, to zero and cut, >= 1.
        threshold: groups with `||w_g|| <= threshold` are zeroed (and do not count), >= 0.
        power: the schedule's exponent, > 0 (3: most of the cut early, as Zhu & Gupta; 1:
            linear).
        groups: the groups the threshold zeroing acts on, as in ZeroSmallGroups (the budget
            always uses `removable_groups(model)`).

    Attributes:
        widths: {layer name: live groups after the last cut}.
        cut: how many times the budget set a group to zero (not the threshold; a group that
            grew back above the cap and was cut again counts again).

    Example:
    >>> budget = WidthBudget({"conv2": 16}, end_step=3000, every_n_steps=100, threshold=1e-3)
    >>> ssl_model.fit(x, y, epochs=6, callbacks=[budget])
    >>> capped = ssl_keras.zero_groups(ssl_model, 1e-3, max_channels={"conv2": 16})
    >>> small = ssl_keras.thin(capped, 1e-3)
    """

    def __init__(self, max_channels, end_step, begin_step=0, every_n_steps=100,
                 threshold=1e-4, power=3.0, groups=None):
        super().__init__(threshold, every_n_steps, groups)
        self.max_channels = _check_round_to(max_channels, "max_channels")  # as zero_groups
        if not isinstance(begin_step, (int, np.integer)) or \
                isinstance(begin_step, (bool, np.bool_)) or begin_step < 0:
            raise ValueError(
                f"`begin_step` must be an integer >= 0. Received: begin_step={begin_step!r}")
        self.begin_step = int(begin_step)
        self.end_step = _validate_steps(end_step, "end_step")
        if self.end_step <= self.begin_step:
            raise ValueError(
                "`end_step` must be greater than `begin_step` (the budget tightens between "
                f"them). Received: begin_step={begin_step}, end_step={end_step}")
        if not _is_real(power) or not _finite(power) or power <= 0:
            raise ValueError(f"`power` must be a finite number > 0. Received: power={power!r}")
        self.power = float(power)
        self.widths = {}
        self.cut = 0
        self._terms = self._layers = None
        self._names = []

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._terms, self._layers = _budget_groups(self.model)
        names = self.max_channels if isinstance(self.max_channels, dict) else self._layers
        unknown = sorted(set(names) - set(self._layers))
        # graph order: the layers are cut in it (see _zero)
        order = {layer.name: i for i, layer in enumerate(self.model.layers)}
        self._names = sorted(set(names) & set(self._layers), key=lambda n: order.get(n, -1))
        if unknown:
            raise ValueError(
                "`max_channels` names layers without removable output channels in this model "
                "(an output layer, a layer whose channels are blocked, a layer inside a nested "
                f"model, or no such layer). Expected names among {sorted(self._layers)}. "
                f"Received: {unknown}")

    def cap(self, layer: str, step: int) -> int:
        """The width allowed to `layer` at optimizer step `step` (once training has begun:
        the widths come from the model)."""
        if self._layers is None or layer not in self._layers:
            raise ValueError(
                "`cap` needs a layer with a budget of the model being trained (the callback "
                f"reads the layers' widths when training begins). Expected one of "
                f"{sorted(self._layers or [])}. Received: layer={layer!r}")
        width = len(self._layers[layer])
        target = (self.max_channels[layer] if isinstance(self.max_channels, dict)
                  else self.max_channels)
        if target >= width:
            return width
        p = min(max((step - self.begin_step) / (self.end_step - self.begin_step), 0.0), 1.0)
        return int(min(width, target + np.ceil((width - target) * (1.0 - p) ** self.power)))

    def _zero(self) -> None:
        super()._zero()
        if self._terms is None:
            return
        # layers in graph order, norms read again after each cut: a cut zeroes consumer
        # slices of earlier layers' groups too, and a group tied to several layers (an Add)
        # counts in each, so a cut for one layer also narrows the others
        for layer in self._names:
            members = self._layers[layer]
            norms = self._terms.norms()
            live = [g for g in members if norms[g] > self.threshold]
            cap = self.cap(layer, self._steps)
            self.widths[layer] = min(len(live), cap)
            if len(live) <= cap:
                continue
            live.sort(key=lambda g: (norms[g], g))
            factors = np.ones(len(norms))
            factors[live[:len(live) - cap]] = 0.0
            self._terms.scale(factors)
            self.cut += len(live) - cap


def _budget_groups(model):
    """(CoupledTerms over the penalisable slices of the removable groups, {layer name: [group
    indices]}) from `removable_groups(model)`, the groups zero_groups cuts: every group with a
    producer slice in a layer counts in that layer's width (a group an Add ties to several
    convolutions counts in each). Blocked groups, the model's output layer (no groups) and
    layers inside nested models (thin does not narrow them) take no budget."""
    from ssl_keras.graph import removable_groups

    groups, layers = [], {}
    for group in removable_groups(model):
        producers = {s["layer"] for s in group["slices"] if s["role"] == "producer"
                     and "/" not in s["layer"]}
        slices = [s for s in group["slices"] if s.get("penalize")]
        if group.get("blocked") or not producers or not slices:
            continue
        for layer in producers:
            layers.setdefault(layer, []).append(len(groups))
        groups.append({"id": group["id"], "coefficient": 0.0, "slices": slices})
    return (CoupledTerms(model, groups) if groups else None), layers


def _warn_unless_plain_sgd(optimizer) -> None:
    """The proximal step is plain SGD's (w <- prox(w - lr * gradient)); other optimizers get a
    warning: the shrinkage lr * lambda does not match their step, and momentum carries
    weights off the zeros the step sets, so groups do not settle at zero."""
    if optimizer is None:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    momentum = float(getattr(inner, "momentum", 0.0) or 0.0)
    if isinstance(inner, keras.optimizers.SGD) and momentum == 0.0:
        return
    what = (f"SGD with momentum={momentum:g}" if isinstance(inner, keras.optimizers.SGD)
            else type(inner).__name__)
    warnings.warn(
        f"ProximalGroupLasso after {what}: the proximal step is plain SGD's (it shrinks by "
        "lr * lambda after a step of lr * gradient); with this optimizer the shrinkage does "
        "not match its steps, and momentum moves weights off the zeros it sets, so groups "
        "oscillate around zero instead of staying there. Compile the SSL phase with "
        "keras.optimizers.SGD(lr) (momentum 0), or use ZeroSmallGroups.", stacklevel=3)


class ProximalGroupLasso(keras.callbacks.Callback):
    """Group soft-thresholding after every optimizer step: exact zeros during training.

    For every group g with coefficient `lambda_g` and the learning rate `lr` of the step just
    taken (a schedule is evaluated at that step):

    `w_g <- w_g * max(0, 1 - lr * lambda_g / ||w_g||)`

    The coefficients are read from the model (the wrappers' GroupLasso, GroupLasso
    regularisers placed by hand, the SSLModel's coupled groups) unless `coefficient` is given.
    This is proximal gradient descent: for the length of the fit, the group Lasso stays in
    the reported loss but its gradient is switched off (the train function is rebuilt at
    the start and the end of training), so the optimizer follows the data loss only and this
    step applies the penalty. Within one set of groups the factors come from the norms before
    the step; where one weight is in groups of several sets (filters and channels of one
    kernel, a channel and a residual branch), the sets are applied one after the other.
    With `compile(steps_per_execution=N)` Keras calls the callback once per N steps:
    the N shrinkages are applied together then (with each step's learning rate), and a
    warning says so.

    If the fit raises (KeyboardInterrupt, an error in another callback), Keras skips
    `on_train_end`; an `SSLModel` (apply_ssl with coupled=True) switches the gradient back on
    itself, a plain model (of `StructuredSparsity` wrappers or with GroupLasso placed by hand)
    needs `ssl_keras.wrap.set_penalty_gradient(model, True)` and
    `model.train_function = None`.

    Args:
        coefficient: one lambda for every group, >= 0, or None to read them from the model
            (required for a plain model given `groups=`).
        groups: plain-data groups for a plain model, or None.

    Example:
    >>> ssl_model.fit(x, y, callbacks=[ProximalGroupLasso()])
    """

    def __init__(self, coefficient=None, groups=None):
        super().__init__()
        self.coefficient = (None if coefficient is None
                            else _validate_threshold(coefficient, "coefficient"))
        self.groups = groups
        self._sets = None
        self._switched = False
        self._last = 0

    def on_train_begin(self, logs=None):
        self._sets = group_sets(self.model, self.groups, self.coefficient, fallback=False)
        if not self._sets and self.groups is None:
            raise ValueError(
                f"Model '{self.model.name}' carries no SSL groups to shrink. Wrap it with "
                "ssl_keras.apply_ssl(...), put ssl_keras.GroupLasso(...) on its layers' "
                "kernel_regularizer, or pass groups=ssl_keras.removable_groups(model) "
                "and coefficient=... . Received: groups=None"
            )
        if not any(np.any(np.asarray(s.coefficient) > 0) for s in self._sets):
            raise ValueError(
                "Every group has coefficient 0: the proximal step would do nothing. Give "
                f"`coefficient` > 0 or non-zero coefficients to apply_ssl. Received: "
                f"coefficient={self.coefficient!r}"
            )
        every = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if every > 1:
            warnings.warn(
                f"ProximalGroupLasso: the model runs {every} steps per execution "
                f"(compile(steps_per_execution={every})), and Keras calls callbacks once per "
                "execution: the group soft-thresholding of those steps is applied together, "
                "after the last of them (the same total shrinkage, delayed). Compile with "
                "steps_per_execution=1 for a proximal step after every optimizer step.",
                stacklevel=2,
            )
        _warn_unless_plain_sgd(self.model.optimizer)
        self._switched = set_penalty_gradient(self.model, False)
        if self._switched:
            # SSLModel.fit switches the gradient back on if the fit raises before
            # on_train_end (a model of wrappers only has no such hook: see the docstring).
            self.model._ssl_proximal_switched = True
            self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        self._last = _iterations(self.model, 0)

    def on_train_batch_end(self, batch, logs=None):
        _sync_jax(self.model)
        now = _iterations(self.model, self._last + 1)
        if now <= self._last:
            return
        # The steps of this call: one, or steps_per_execution of them (read around the call,
        # so a BackupAndRestore that restores the step count later is no jump). Their
        # shrinkages compose to one with the summed step sizes (exact when the data gradient
        # between them is left aside: a delayed proximal step, see on_train_begin).
        lr = _learning_rate_sum(self.model.optimizer, self._last, now)
        for s in self._sets:
            values = s.values()
            norms = s.norms(values)
            shrink = lr * np.asarray(s.coefficient, dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                factors = np.where(norms > 0, np.maximum(0.0, 1.0 - shrink / norms), 0.0)
            factors = np.where(np.asarray(s.coefficient) > 0, factors, 1.0)
            factors = np.broadcast_to(factors, norms.shape)
            s.scale(factors, values)

    def on_train_end(self, logs=None):
        if self._switched:
            set_penalty_gradient(self.model, True)
            self.model.train_function = None  # the next fit traces with the gradient back
            self.model._ssl_proximal_switched = False
            self._switched = False


class FreezeZeroGroups(keras.callbacks.Callback):
    """Keeps the groups that were zero when it was created at exactly zero.

    Made by `freeze_zero_groups(model, threshold)`: the groups whose norm is at or below
    `threshold` are set to zero at the start of training and multiplied by 0 after every step
    (a mask), everything else trains.

    Args:
        model: the model to fine-tune (the groups are measured on it now).
        threshold: a group with norm at or below it is frozen at zero, >= 0.
        groups: plain-data groups for a plain model, or None.
    """

    def __init__(self, model, threshold=1e-4, groups=None):
        super().__init__()
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a Keras model. Received: model={model!r} "
                f"(of type {type(model).__name__})"
            )
        self.threshold = _validate_threshold(threshold)
        self._sets = group_sets(model, groups)
        self._frozen = []
        self.frozen_groups = 0
        for s in self._sets:
            small = s.norms() <= self.threshold
            if np.any(small):
                self._frozen.append((s, np.where(small, 0.0, 1.0)))
                self.frozen_groups += int(np.sum(small))
        self._target = model

    def _apply(self):
        for s, mask in self._frozen:
            s.scale(mask)

    def on_train_begin(self, logs=None):
        if self.model is not None and self.model is not self._target:
            same = self.model.name == self._target.name
            raise ValueError(
                "This FreezeZeroGroups callback was made for model "
                f"'{self._target.name}' but is used to train "
                + (f"another model of the same name (id {id(self.model):#x}, not "
                   f"{id(self._target):#x}). " if same else f"model '{self.model.name}'. ")
                + "Call freeze_zero_groups() on the model you fit."
            )
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        _sync_jax(self.model)
        self._apply()


def freeze_zero_groups(model, threshold=1e-4, groups=None) -> FreezeZeroGroups:
    """A callback for fine-tuning: groups that are zero now stay exactly zero.

    The groups are those of the model (wrappers, SSLModel) or `groups`; for a plain model
    (e.g. after `strip_ssl`) the coupled channel groups of `removable_groups(model)` and the
    per-layer filter, channel, shape and border groups of every supported layer.

    Args:
        model: the model that will be fitted.
        threshold: a group with norm at or below it is frozen at zero, >= 0.
        groups: plain-data groups, or None.

    Returns:
        A `FreezeZeroGroups` callback to pass to `model.fit`.

    Example:
    >>> plain = strip_ssl(ssl_keras.zero_groups(ssl_model, 1e-4))
    >>> plain.compile("sgd", "mse")
    >>> plain.fit(x, y, callbacks=[freeze_zero_groups(plain, 1e-4)])
    """
    return FreezeZeroGroups(model, threshold, groups)
