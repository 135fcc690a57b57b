"""BatchNorm moving statistics recomputed from data (`reestimate_batchnorm`).

Internal to `ssl_keras.callbacks`, which re-exports `reestimate_batchnorm` (also
`ssl_keras.reestimate_batchnorm`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ssl_keras._callbacks_groups import _sync_jax, _validate_steps

_ACCEPTED = ("a NumPy array (one input), a list or tuple of arrays (one per input), a dict of "
             "arrays keyed by input name, a tf.data.Dataset or a generator / iterable of "
             "batches")


def reestimate_batchnorm(model, x, batch_size=128, max_batches=None) -> int:
    """Recomputes every BatchNorm layer's moving mean and variance from `x`.

    Group Lasso changes the weights under a BatchNorm at every step, and zeroing groups
    changes them at once; the moving statistics (momentum 0.99) then describe an older
    network, and the inference-mode model can be far worse than the training-mode one. This
    runs the model in training mode over the batches of `x` (forward passes only: no
    gradient, no other weight changes) with the momentum of each batch set so that the
    moving statistics become the average of the batch statistics, each batch weighted by its
    number of samples:

    `moving_mean = mean_k batch_mean_k`, `moving_variance = mean_k batch_variance_k`.

    `x` takes what `model.predict` takes:

    - in-memory data: a NumPy array (or tensor) for one input, a list or tuple of arrays
      (one per input, in the order of `model.inputs`) or a dict of arrays keyed by input
      name. It is cut into full batches of `batch_size` samples (the samples left over are
      not used, so that every batch weighs the same; one batch of everything if there are
      fewer than `batch_size` samples).
    - batched data: a `tf.data.Dataset`, a `keras.utils.PyDataset`, or a Python generator /
      iterable of batches. Each element is `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`
      as in `fit` (only `x` is used; give several inputs as `((a, b), y)` or a dict). The
      batches are used as they come: `batch_size` does not apply; a dataset that repeats
      forever needs `max_batches`. A generator is consumed.

    The model's BatchNorm statistics are updated in place (as `fit` does); the momentum of
    every layer is restored afterwards. If anything fails (bad data, an error in the model,
    non-finite statistics, an interrupt), the statistics are put back as they were. Frozen
    (trainable=False) BatchNorm layers and models without BatchNorm are left as they are.

    Args:
        model: a Keras model.
        x: input data (see above), at least one sample; every value used must be finite
            (NaN or inf raise a ValueError: in-memory data before any statistic changes, a
            Dataset or generator at the batch that holds them, with the statistics restored).
        batch_size: samples per forward pass for in-memory data, >= 1 (use the training
            batch size).
        max_batches: use at most this many batches, >= 1, or None for all of `x`.

    Returns:
        The number of BatchNorm layers updated.

    Example:
    >>> plain = ssl_keras.zero_groups(strip_ssl(ssl_model), 1e-3)
    >>> reestimate_batchnorm(plain, x_train, batch_size=128)
    >>> reestimate_batchnorm(plain, train_dataset, max_batches=200)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a Keras model. Received: model={model!r} "
                         f"(of type {type(model).__name__})")
    batch_size = _validate_steps(batch_size, "batch_size")
    if max_batches is not None:
        max_batches = _validate_steps(max_batches, "max_batches")
    batches = _batches(model, x, batch_size, max_batches)  # checks in-memory data now
    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return 0
    _sync_jax(model)
    momenta = [layer.momentum for layer in layers]
    saved = [(ops.convert_to_numpy(layer.moving_mean),
              ops.convert_to_numpy(layer.moving_variance)) for layer in layers]
    try:
        seen = 0
        for inputs, n in batches:
            for layer in layers:
                layer.momentum = seen / (seen + n)  # the running average, by samples
            model(inputs, training=True)
            seen += n
        if seen == 0:
            raise ValueError(f"`x` must yield at least one batch with samples. Received: "
                             f"x={_short(x)} (of type {type(x).__name__}) with no samples")
        for layer in layers:
            if not (_all_finite(layer.moving_mean) and _all_finite(layer.moving_variance)):
                raise ValueError(
                    f"The recomputed moving statistics of BatchNorm layer '{layer.name}' are "
                    "not finite although the data is: the model's weights hold NaN / inf or "
                    "its activations overflow. The previous statistics are kept.")
    except BaseException:
        for layer, (mean, variance) in zip(layers, saved, strict=True):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
        raise
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    _sync_jax(model)
    return len(layers)


def _short(value, limit=80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_array(value) -> bool:
    if isinstance(value, np.ndarray) or ops.is_tensor(value):
        return True
    return (hasattr(value, "shape") and hasattr(value, "__array__")
            and not isinstance(value, (str, bytes)))


def _model_inputs(model):
    """The number of inputs of a model that declares them (functional, built Sequential)."""
    try:
        return len(model.inputs)
    except (AttributeError, TypeError, ValueError):
        return None


def _array(value, label):
    """One input's samples: a NumPy array or a backend tensor, at least 1-D."""
    if not _is_array(value):
        raise TypeError(f"{label} must be an array (a NumPy array or a tensor). "
                        f"Received: {_short(value)} (of type {type(value).__name__})")
    if not isinstance(value, np.ndarray) and not ops.is_tensor(value):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and value.dtype == object:
        raise TypeError(f"{label} must be a numeric array. Received: an array of dtype object "
                        f"{_short(value)}")
    if len(value.shape) == 0:
        raise ValueError(f"{label} must have a batch dimension (samples first). Received: "
                         f"{_short(value)} of shape ()")
    return value


def _inputs(x, where=""):
    """`x` as the model takes it (one array, a list or a dict of arrays) and its
    (label, array) pairs."""
    if isinstance(x, dict):
        if not x:
            raise ValueError(f"`x`{where} must hold at least one input. Received: x={{}}")
        arrays = {k: _array(v, f"`x[{k!r}]`{where}") for k, v in x.items()}
        return arrays, [(f"`x[{k!r}]`{where}", a) for k, a in arrays.items()]
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"`x`{where} must hold at least one input. Received: x={x!r}")
        for i, v in enumerate(x):
            if not _is_array(v):
                raise TypeError(
                    f"`x`{where} is a {type(x).__name__}: a list or tuple must hold one array "
                    "per model input (convert nested Python lists with np.asarray). "
                    f"Received: x[{i}]={_short(v)} (of type {type(v).__name__})")
        arrays = [_array(v, f"`x[{i}]`{where}") for i, v in enumerate(x)]
        named = [(f"`x[{i}]`{where}", a) for i, a in enumerate(arrays)]
        return (arrays if len(arrays) > 1 else arrays[0]), named
    array = _array(x, f"`x`{where}")
    return array, [(f"`x`{where}", array)]


def _samples(named, where="") -> int:
    counts = [int(a.shape[0]) for _, a in named]
    if len(set(counts)) > 1:
        listed = ", ".join(f"{label} with {n}" for (label, _), n in zip(named, counts,
                                                                       strict=True))
        raise ValueError(f"Every input of `x`{where} must have the same number of samples. "
                         f"Received: {listed}")
    return counts[0]


def _check_count(model, x, named, where="") -> None:
    expected = _model_inputs(model)
    if expected is None or isinstance(x, dict) or len(named) == expected:
        return
    rule = "a list or tuple is one array per input"
    if where:
        rule += "; a batch is x, (x,), (x, y) or (x, y, sample_weight)"
    raise ValueError(
        f"Model '{model.name}' takes {expected} input(s), but `x`{where} holds {len(named)} "
        f"array(s) ({rule}). Received: {', '.join(label for label, _ in named)}")


def _all_finite(array) -> bool:
    try:
        dtype = keras.backend.standardize_dtype(array.dtype)
    except (ValueError, TypeError):  # strings and other non-numeric dtypes
        return True
    if "float" not in dtype:
        return True
    if isinstance(array, np.ndarray):
        return bool(np.all(np.isfinite(array)))
    return bool(ops.convert_to_numpy(ops.all(ops.isfinite(array))))


def _check_finite(named, stop=None) -> None:
    for label, array in named:
        if not _all_finite(array if stop is None else array[:stop]):
            raise ValueError(f"{label} must hold finite values only (it is used to compute "
                             "the BatchNorm statistics). Received: NaN or inf in "
                             + ("the samples used" if stop is not None else "its values"))


def _batches(model, x, batch_size, max_batches):
    """The (inputs, samples) batches of `x`; in-memory data is checked here, at once."""
    if isinstance(x, (dict, list, tuple)) or _is_array(x):
        inputs, named = _inputs(x)
        _check_count(model, x, named)
        n = _samples(named)
        if n == 0:
            raise ValueError("`x` must hold at least one sample. Received: x with 0 samples")
        count = max(n // batch_size, 1)  # full batches only: every batch weighs the same
        if max_batches is not None:
            count = min(count, max_batches)
        size = min(batch_size, n)
        _check_finite(named, stop=count * size)
        return _array_batches(inputs, count, size)
    if not hasattr(x, "__iter__") or isinstance(x, (str, bytes)):
        raise TypeError(f"`x` must be {_ACCEPTED}. Received: x={_short(x)} "
                        f"(of type {type(x).__name__})")
    if max_batches is None and _infinite(x):
        raise ValueError("`x` yields batches forever (a repeated dataset): give `max_batches` "
                         "to use that many. Received: max_batches=None")
    return _iterable_batches(model, x, max_batches)


def _array_batches(inputs, count, size):
    for k in range(count):
        if isinstance(inputs, dict):
            yield {key: a[k * size:(k + 1) * size] for key, a in inputs.items()}, size
        elif isinstance(inputs, list):
            yield [a[k * size:(k + 1) * size] for a in inputs], size
        else:
            yield inputs[k * size:(k + 1) * size], size


def _infinite(x) -> bool:
    if isinstance(x, keras.utils.PyDataset):
        try:
            return x.num_batches is None
        except NotImplementedError:
            return False
    if type(x).__module__.startswith("tensorflow") and callable(getattr(x, "cardinality", None)):
        return int(x.cardinality()) == -1  # tf.data.INFINITE_CARDINALITY
    return False


def _iterable_batches(model, x, max_batches):
    used = 0
    for index, element in enumerate(x):
        where = f" (batch {index})"
        data = tuple(element) if isinstance(element, list) else element
        if isinstance(data, tuple):
            if not 1 <= len(data) <= 3:
                raise ValueError(
                    f"Each batch of `x` must be x, (x,), (x, y) or (x, y, sample_weight). "
                    f"Received: a tuple of {len(data)} elements{where}")
            data = data[0]
        inputs, named = _inputs(data, where)
        _check_count(model, data, named, where)
        n = _samples(named, where)
        if n == 0:
            continue  # an empty batch has no statistics
        _check_finite(named)
        used += 1
        yield inputs, n
        if max_batches is not None and used >= max_batches:
            return  # do not draw another batch from the iterator
