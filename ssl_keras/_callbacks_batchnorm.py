"""BatchNorm moving statistics recomputed from data (`reestimate_batchnorm`).

Internal to `ssl_keras.callbacks`, which re-exports `reestimate_batchnorm` (also
`ssl_keras.reestimate_batchnorm`).
"""

from __future__ import annotations

import keras

from ssl_keras._callbacks_groups import _sync_jax, _validate_steps


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
