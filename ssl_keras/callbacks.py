"""Training callbacks of Structured Sparsity Learning.

- `SparsityMonitor`: per layer, how many removable groups are below a threshold, in the logs
  (History) every epoch, as TensorBoard scalars, and as a table at the end of training.
- `ZeroSmallGroups`: sets groups whose norm is below a threshold to exactly zero (the method's
  reference recipe).
- `ProximalGroupLasso`: group soft-thresholding after each optimizer step,
  `w_g <- w_g * max(0, 1 - lr * lambda / ||w_g||)`, exact zeros during training.
- `freeze_zero_groups(model)`: a callback that keeps the groups that are zero now at exactly
  zero while everything else trains (fine-tuning).
- `reestimate_batchnorm(model, x)`: recomputes the BatchNorm moving statistics from data
  (after group Lasso has changed the weights under them, or after zeroing groups).

The groups come from the model: the `StructuredSparsity` wrappers (per-layer groups of every
structure with a non-zero coefficient) and, for an `SSLModel`, its coupled channel groups and
residual-branch groups. A plain model can be given `groups=` (the output of
`ssl_keras.removable_groups(model)`, or the `ssl_groups` of an SSLModel); without it, a plain
model is analysed with `removable_groups` plus the per-layer filter, channel and shape groups
of every supported layer.

Weights are changed with `variable.assign` between steps, which works with the TensorFlow
backend (MirroredStrategy included) and the JAX backend (the callbacks sync the JAX state).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from ssl_keras.structures import (
    Structure,
    border_bands,
    border_sizes,
    group_size,
    reduction_axes,
)
from ssl_keras.wrap import (
    CoupledTerms,
    SSLModel,
    StructuredSparsity,
    kernel_specs,
    set_penalty_gradient,
)

__all__ = [
    "FreezeZeroGroups",
    "ProximalGroupLasso",
    "SparsityMonitor",
    "ZeroSmallGroups",
    "freeze_zero_groups",
    "reestimate_batchnorm",
]


def _validate_threshold(value, name="threshold") -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative finite float. Received: {name}={value!r}"
        )
    return float(value)


def _validate_steps(value, name) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
    return value


class _StructureSet:
    """The groups of one structure of one kernel (per-layer groups).

    BORDERS groups are bands `(axis, indices)` (`border_bands`), nested and overlapping:
    `scale` applies their factors one band after the other, smaller bands first (the factors
    come from the norms before the step, so for these overlapping groups a proximal step is
    an approximation of the exact one).
    """

    def __init__(self, layer, variable, structure, in_axis, out_axis, coefficient,
                 normalize=False):
        structure = Structure.parse(structure)
        self.layer = layer
        self.label = f"{layer}/{structure.value}"
        self.variable = variable
        shape = tuple(variable.shape)
        self.bands = None
        if structure is Structure.BORDERS:
            self.bands = border_bands(shape, in_axis, out_axis)
            sizes = border_sizes(shape, in_axis, out_axis)
            self.coefficient = float(coefficient) * (np.sqrt(sizes) if normalize else 1.0)
        else:
            self.axes = reduction_axes(structure, len(shape), in_axis, out_axis)
            size = group_size(structure, shape, in_axis, out_axis)
            self.coefficient = float(coefficient) * (math.sqrt(size) if normalize else 1.0)
        self.labels = None

    def values(self) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(self.variable))

    def norms(self, values=None) -> np.ndarray:
        x = self.values() if values is None else values
        if self.bands is not None:
            return np.array([np.sqrt(np.sum(np.square(_band(x, band), dtype=np.float64)))
                             for band in self.bands], dtype=np.float64)
        return np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=self.axes)).reshape(-1)

    def scale(self, factors: np.ndarray, values=None) -> None:
        if np.all(factors == 1.0):
            return
        x = self.values() if values is None else values
        if self.bands is not None:
            x = x.copy()
            for band, factor in zip(self.bands, factors, strict=True):
                if factor != 1.0:
                    where = _band_index(x.ndim, band)
                    x[where] = (x[where] * factor).astype(x.dtype)
            self.variable.assign(x)
            return
        kept = [1 if a in self.axes else n for a, n in enumerate(x.shape)]
        self.variable.assign((x * np.reshape(factors, kept)).astype(x.dtype))


def _band_index(ndim, band) -> tuple:
    axis, index = band
    where = [slice(None)] * ndim
    where[axis] = list(index)
    return tuple(where)


def _band(x, band):
    return x[_band_index(x.ndim, band)]


class _CoupledSet:
    """Groups spanning layers (coupled channels, residual branches), by CoupledTerms.

    A group may list "zero_with" slices (the kernels of a residual branch whose final
    BatchNorm gamma and beta are the group): they are not penalised, but set to zero whenever
    the group's factor is 0, so that a switched-off branch is also removable by thin().
    """

    def __init__(self, terms: CoupledTerms, coefficients, labels, companions=None,
                 model=None):
        self.terms = terms
        self.coefficient = np.asarray(coefficients, dtype=np.float64)
        self.labels = list(labels)
        self.label = None
        self.companions = {}  # group index -> [(variable, axis, index)]
        for g, slices in (companions or {}).items():
            self.companions[g] = [_companion(model, s) for s in slices]

    def values(self) -> list[np.ndarray]:
        return self.terms.values()

    def norms(self, values=None) -> np.ndarray:
        return self.terms.norms(values)

    def scale(self, factors: np.ndarray, values=None) -> None:
        factors = np.asarray(factors, dtype=np.float64)
        self.terms.scale(factors, values)
        for g, slices in self.companions.items():
            if factors[g] != 0.0:
                continue
            for variable, axis, index in slices:
                x = np.asarray(ops.convert_to_numpy(variable))
                where = [slice(None)] * x.ndim
                where[axis] = index
                if np.any(x[tuple(where)]):
                    x = x.copy()
                    x[tuple(where)] = 0
                    variable.assign(x)


def _companion(model, piece: dict) -> tuple:
    from ssl_keras._wrap_coupled import _variable

    variable = _variable(model, piece["layer"], piece["weight"])
    axis = int(piece["axis"]) % len(variable.shape)
    return variable, axis, np.asarray(piece["index"], dtype=np.int64)


def _wrapper_sets(model) -> list:
    sets = []
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, StructuredSparsity):
            continue
        for variable, regularizer in layer.ssl_penalized_weights():
            for structure, coefficient in regularizer.coefficients().items():
                found = _StructureSet(layer.name, variable, structure, regularizer.in_axis,
                                      regularizer.out_axis, coefficient, regularizer.normalize)
                if found.bands != []:  # a Dense kernel has no border bands
                    sets.append(found)
    return sets


def _plain_sets(model) -> list:
    sets = []
    for layer in model._flatten_layers(include_self=False):
        inner = layer.ssl_inner_layer if isinstance(layer, StructuredSparsity) else layer
        specs = kernel_specs(inner)
        if specs is None or not inner.built:
            continue
        for attribute, in_axis, out_axis, _ in specs:
            for structure in (Structure.FILTERS, Structure.CHANNELS, Structure.SHAPES,
                              Structure.BORDERS):
                found = _StructureSet(layer.name, getattr(inner, attribute), structure,
                                      in_axis, out_axis, 0.0)
                if found.bands != []:
                    sets.append(found)
    return sets


def _normalize_groups(groups, coefficient) -> list[dict]:
    """removable_groups / ssl_groups entries -> {"id", "layer", "kind", "coefficient", "slices"}."""
    if not isinstance(groups, (list, tuple)):
        raise ValueError(
            "`groups` must be a list of group dicts (the output of "
            f"ssl_keras.removable_groups(model)). Received: groups={groups!r}"
        )
    out = []
    for group in groups:
        if not isinstance(group, dict) or "slices" not in group or "id" not in group:
            raise ValueError(
                "Every entry of `groups` must be a dict with 'id' and 'slices' (see "
                f"docs/groups-format.md). Received: {group!r}"
            )
        if group.get("blocked"):
            continue
        slices = [s for s in group["slices"] if s.get("penalize", True)]
        if not slices:
            continue
        value = group.get("coefficient", 0.0) if coefficient is None else coefficient
        label = group.get("layer") or str(group.get("source", group["id"])).split("/")[0]
        entry = {"id": group["id"], "layer": label, "kind": group.get("kind", "channel"),
                 "coefficient": float(value), "slices": slices}
        if group.get("zero_with"):
            entry["zero_with"] = group["zero_with"]
        out.append(entry)
    return out


def _coupled_set(model, groups) -> _CoupledSet | None:
    if not groups:
        return None
    terms = CoupledTerms(model, groups)
    companions = {g: group["zero_with"] for g, group in enumerate(groups)
                  if group.get("zero_with")}
    return _CoupledSet(terms, [g["coefficient"] for g in groups],
                       [f"{g['layer']}/{g['kind']}" for g in groups], companions, model)


def group_sets(model, groups=None, coefficient=None, fallback=True) -> list:
    """Collects the groups that the callbacks act on (internal).

    Args:
        model: the model being trained.
        groups: coupled groups as plain data, or None to read them from the model.
        coefficient: overrides every group's lambda (ProximalGroupLasso).
        fallback: analyse a plain model (removable_groups + per-layer structures) when it
            carries no SSL groups.
    """
    if coefficient is not None:
        coefficient = _validate_threshold(coefficient, "coefficient")
    if groups is not None:
        found = [_coupled_set(model, _normalize_groups(groups, coefficient))]
        return [s for s in found if s is not None]
    sets = _wrapper_sets(model)
    if isinstance(model, SSLModel) and model.ssl_groups:
        sets.append(_coupled_set(model, _normalize_groups(model.ssl_groups, coefficient)))
    if coefficient is not None:
        for s in sets:
            if isinstance(s, _StructureSet):
                s.coefficient = coefficient
    if sets or not fallback:
        return [s for s in sets if s is not None]
    from ssl_keras.graph import removable_groups

    sets = _plain_sets(model)
    coupled = _coupled_set(model, _normalize_groups(removable_groups(model), coefficient))
    if coupled is not None:
        sets.append(coupled)
    if coefficient is not None:
        for s in sets:
            if isinstance(s, _StructureSet):
                s.coefficient = coefficient
    return sets


def _sync_jax(model) -> None:
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def _current_learning_rate(optimizer) -> float:
    """The learning rate of the step just taken (schedules evaluated at iterations - 1)."""
    schedule = getattr(optimizer, "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        step = max(int(ops.convert_to_numpy(optimizer.iterations)) - 1, 0)
        return float(ops.convert_to_numpy(schedule(step)))
    return float(ops.convert_to_numpy(optimizer.learning_rate))


def _zero_below(sets, threshold) -> int:
    zeroed = 0
    for s in sets:
        values = s.values()
        norms = s.norms(values)
        small = norms < threshold
        factors = np.where(small, 0.0, 1.0)
        # Groups already exactly zero need no write.
        zeroed += int(np.sum(small & (norms > 0)))
        if np.any(small & (norms > 0)):
            s.scale(factors, values)
    return zeroed


def sparsity_summary(sets, threshold) -> dict[str, tuple[int, int]]:
    """{label: (groups below threshold, groups)} over every group set (internal)."""
    out = {}
    for s in sets:
        below = s.norms() < threshold
        labels = [s.label] * len(below) if s.labels is None else s.labels
        for label, small in zip(labels, below, strict=True):
            zero, total = out.get(label, (0, 0))
            out[label] = (zero + int(small), total + 1)
    return out


class SparsityMonitor(keras.callbacks.Callback):
    """Logs, per layer and structure, how many removable groups are below a threshold.

    Every epoch it adds to the logs (and so to `History.history`):
    `ssl/<layer>/<structure>/zero` (count), `ssl/<layer>/<structure>/fraction`, and the totals
    `ssl/zero_groups` and `ssl/zero_fraction`. Structures are "filters", "channels", "shapes",
    "depth" for per-layer groups; "channel" (a coupled channel group, under its source layer)
    and "depth" (a residual branch, under its Add layer) for an SSLModel. With `log_dir`, the
    same figures are written as TensorBoard scalars. At the end of training, a table is
    printed (and kept in `self.table`).

    Args:
        threshold: a group whose L2 norm is below it counts as zero, >= 0.
        log_dir: a directory for TensorBoard scalars, or None.
        groups: plain-data groups for a plain model (see the module doc), or None.
        verbose: print the table at the end of training.

    Example:
    >>> monitor = SparsityMonitor(threshold=1e-4)
    >>> history = ssl_model.fit(x, y, epochs=3, callbacks=[monitor])
    >>> history.history["ssl/zero_fraction"]
    """

    def __init__(self, threshold=1e-4, log_dir=None, groups=None, verbose=True):
        super().__init__()
        self.threshold = _validate_threshold(threshold)
        if log_dir is not None and not isinstance(log_dir, (str, bytes)) and not hasattr(
                log_dir, "__fspath__"):
            raise ValueError(
                f"`log_dir` must be a path or None. Received: log_dir={log_dir!r}")
        self.log_dir = log_dir
        self.groups = groups
        self.verbose = bool(verbose)
        self.summary = {}
        self.table = ""
        self._sets = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._sets = group_sets(self.model, self.groups)
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
        if logs is not None:
            logs.update(values)
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
            print(f"Group sparsity (norm < {self.threshold:g}):\n{self.table}")
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ZeroSmallGroups(keras.callbacks.Callback):
    """Sets every group whose L2 norm is below `threshold` to exactly zero.

    The reference recipe of the method (after the updates, small groups are treated as
    removed). Runs every `every_n_steps` training steps and at the end of training.

    Args:
        threshold: groups with `||w_g|| < threshold` are set to zero, >= 0.
        every_n_steps: how often, in training steps, >= 1.
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
        self._step = 0

    def on_train_begin(self, logs=None):
        self._sets = group_sets(self.model, self.groups)
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_n_steps == 0:
            _sync_jax(self.model)
            self.zeroed += _zero_below(self._sets, self.threshold)

    def on_train_end(self, logs=None):
        _sync_jax(self.model)
        self.zeroed += _zero_below(self._sets, self.threshold)


class ProximalGroupLasso(keras.callbacks.Callback):
    """Group soft-thresholding after every optimizer step: exact zeros during training.

    For every group g with coefficient `lambda_g` and the learning rate `lr` of the step just
    taken (a schedule is evaluated at that step):

    `w_g <- w_g * max(0, 1 - lr * lambda_g / ||w_g||)`

    The coefficients are read from the model (the wrappers' GroupLasso, the SSLModel's coupled
    groups) unless `coefficient` is given. This is proximal gradient descent: for the length
    of the fit, the group Lasso of a model from `apply_ssl` stays in the reported loss but
    its gradient is switched off (the train function is rebuilt at the start and the end of
    training), so the optimizer follows the data loss only and this step applies the
    penalty. Where one weight is in several groups (filters and channels of one kernel, a
    channel and a residual branch), the shrinkages are applied one after the other.

    If the fit raises (KeyboardInterrupt, an error in another callback), Keras skips
    `on_train_end`; an `SSLModel` (apply_ssl with coupled=True) switches the gradient back on
    itself, a plain model of `StructuredSparsity` wrappers needs
    `ssl_keras.wrap.set_penalty_gradient(model, True)` and `model.train_function = None`.

    Args:
        coefficient: one lambda for every group, >= 0, or None to read them from the model
            (required for a plain model).
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

    def on_train_begin(self, logs=None):
        self._sets = group_sets(self.model, self.groups, self.coefficient, fallback=False)
        if not self._sets and self.groups is None:
            raise ValueError(
                f"Model '{self.model.name}' carries no SSL groups to shrink. Wrap it with "
                "ssl_keras.apply_ssl(...), or pass groups=ssl_keras.removable_groups(model) "
                "and coefficient=... . Received: groups=None"
            )
        if not any(np.any(np.asarray(s.coefficient) > 0) for s in self._sets):
            raise ValueError(
                "Every group has coefficient 0: the proximal step would do nothing. Give "
                f"`coefficient` > 0 or non-zero coefficients to apply_ssl. Received: "
                f"coefficient={self.coefficient!r}"
            )
        self._switched = set_penalty_gradient(self.model, False)
        if self._switched:
            # SSLModel.fit switches the gradient back on if the fit raises before
            # on_train_end (a model of wrappers only has no such hook: see the docstring).
            self.model._ssl_proximal_switched = True
            self.model.make_train_function(force=True)

    def on_train_batch_end(self, batch, logs=None):
        _sync_jax(self.model)
        lr = _current_learning_rate(self.model.optimizer)
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

    Made by `freeze_zero_groups(model, threshold)`: the groups whose norm is below `threshold`
    are set to zero at the start of training and multiplied by 0 after every step (a mask),
    everything else trains.

    Args:
        model: the model to fine-tune (the groups are measured on it now).
        threshold: a group with norm below it is frozen at zero, >= 0.
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
            small = s.norms() < self.threshold
            if np.any(small):
                self._frozen.append((s, np.where(small, 0.0, 1.0)))
                self.frozen_groups += int(np.sum(small))
        self._target = model

    def _apply(self):
        for s, mask in self._frozen:
            s.scale(mask)

    def on_train_begin(self, logs=None):
        if self.model is not None and self.model is not self._target:
            raise ValueError(
                "This FreezeZeroGroups callback was made for model "
                f"'{self._target.name}' but is used to train model '{self.model.name}'. "
                "Call freeze_zero_groups() on the model you fit."
            )
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        _sync_jax(self.model)
        self._apply()


def freeze_zero_groups(model, threshold=1e-4, groups=None) -> FreezeZeroGroups:
    """A callback for fine-tuning: groups that are zero now stay exactly zero.

    The groups are those of the model (wrappers, SSLModel) or `groups`; for a plain model
    (e.g. after `strip_ssl`) the coupled channel groups of `removable_groups(model)` and the
    per-layer filter, channel and shape groups of every supported layer.

    Args:
        model: the model that will be fitted.
        threshold: a group with norm below it is frozen at zero, >= 0.
        groups: plain-data groups, or None.

    Returns:
        A `FreezeZeroGroups` callback to pass to `model.fit`.

    Example:
    >>> plain = strip_ssl(ssl_keras.zero_groups(ssl_model, 1e-4))
    >>> plain.compile("sgd", "mse")
    >>> plain.fit(x, y, callbacks=[freeze_zero_groups(plain, 1e-4)])
    """
    return FreezeZeroGroups(model, threshold, groups)


def reestimate_batchnorm(model, x, batch_size=128, max_batches=None) -> int:
    """Recomputes every BatchNorm layer's moving mean and variance from `x`.

    Group Lasso changes the weights under a BatchNorm at every step, and zeroing groups
    changes them at once; the moving statistics (momentum 0.99) then describe an older
    network, and the inference-mode model can be far worse than the training-mode one. This
    runs the model in training mode over `x` in batches (forward passes only: no gradient,
    no other weight changes) with the momentum of batch k set to k / (k + 1), so that the
    moving statistics become the average of the batch statistics:

    `moving_mean = mean_k batch_mean_k`, `moving_variance = mean_k batch_variance_k`.

    The model's BatchNorm statistics are updated in place (as `fit` does); the momentum of
    every layer is restored afterwards. Frozen (trainable=False) BatchNorm layers and
    models without BatchNorm are left as they are.

    Args:
        model: a Keras model.
        x: input data (a NumPy array or a list of arrays for several inputs), at least one
            sample.
        batch_size: samples per forward pass, >= 1 (use the training batch size).
        max_batches: use at most this many batches, >= 1, or None for all of `x`.

    Returns:
        The number of BatchNorm layers updated.

    Example:
    >>> plain = ssl_keras.zero_groups(strip_ssl(ssl_model), 1e-3)
    >>> reestimate_batchnorm(plain, x_train, batch_size=128)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a Keras model. Received: model={model!r} "
                         f"(of type {type(model).__name__})")
    batch_size = _validate_steps(batch_size, "batch_size")
    if max_batches is not None:
        max_batches = _validate_steps(max_batches, "max_batches")
    inputs = list(x) if isinstance(x, (list, tuple)) else [x]
    n = len(inputs[0]) if inputs and hasattr(inputs[0], "__len__") else 0
    if n == 0:
        raise ValueError("`x` must hold at least one sample. Received: x with 0 samples")
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return 0
    batches = max(n // batch_size, 1)  # full batches only: every batch weighs the same
    if max_batches is not None:
        batches = min(batches, max_batches)
    momenta = [layer.momentum for layer in layers]
    try:
        for k in range(batches):
            for layer in layers:
                layer.momentum = k / (k + 1)
            chunk = [a[k * batch_size:(k + 1) * batch_size] for a in inputs]
            model(chunk if len(chunk) > 1 else chunk[0], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    _sync_jax(model)
    return len(layers)
