"""Validation and read access for thinning: the graph, its nodes, weights and layer kinds.

Internal to `ssl_keras.thin`; `ssl_keras.report` reads the graph and the layer kinds here too.
"""

from __future__ import annotations

import functools
import re

import keras
import numpy as np
from keras import ops

from ssl_keras.regularizers import _finite, _is_real

KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def own_layers_scope():
    """A context in which Keras's safe mode is off, so that copies of the caller's own layers
    (clone_model, from_config) can rebuild `Lambda` layers.

    Safe mode guards the *loading* of files: Keras refuses to rebuild a Python lambda from a
    config unless told otherwise. Use it only around copies of an in-memory model's own
    layers, whose functions are already loaded; never around data from elsewhere (a plan
    read from JSON: `apply_plan` keeps safe mode on for what the plan supplies).
    """
    from keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(False)


def layer_config(layer) -> dict:
    """`layer.get_config()`, with the layer's name in it.

    A custom layer whose get_config() does not start from `super().get_config()` leaves the
    name out, and `from_config` then gives the copy another name: every look-up by name in
    the copied model (weights, groups, plans) fails. The name is added.
    """
    config = layer.get_config()
    if "name" not in config:
        config = {**config, "name": layer.name}
    return config


def copy_layer(layer, config=None):
    """`type(layer).from_config(config or layer_config(layer))`, named as `layer` (see
    layer_config); a clear error if the class cannot take its own name back. A Lambda is
    rebuilt around its own function (see _copy_lambda)."""
    config = layer_config(layer) if config is None else config
    if isinstance(layer, keras.layers.Lambda):
        return _copy_lambda(layer, config)
    try:
        return type(layer).from_config(config)
    except TypeError as e:
        if "name" not in str(e) or "name" in layer.get_config():
            raise
        # Its __init__ does not take a name: the copy is fine if it names itself the same.
        copy = type(layer).from_config({k: v for k, v in config.items() if k != "name"})
        if copy.name == layer.name:
            return copy
        raise ValueError(
            f"Layer '{layer.name}' (class {type(layer).__name__}) cannot be copied under its "
            "name: its get_config() leaves 'name' out and its __init__ does not take it, so "
            f"the copy is named '{copy.name}'. Expected a get_config() that starts from "
            "`config = super().get_config()` (or an __init__ that passes **kwargs to the base "
            f"Layer). Received: {e}"
        ) from e


def _copy_lambda(layer, config):
    """A copy of a Lambda layer that calls the same function objects.

    `Lambda.from_config` rebuilds a Python lambda from its bytecode without the globals it
    reads (`keras.ops...` in the body: NameError when the copy is called) and cannot find a
    named function that is not registered as a Keras object; the copy here needs neither.
    """
    return type(layer)(
        layer.function, output_shape=layer._output_shape, mask=layer.mask,
        arguments=dict(layer.arguments), name=config.get("name", layer.name),
        dtype=config.get("dtype", layer.dtype_policy),
        trainable=config.get("trainable", layer.trainable),
    )


def refresh_states(obj):
    """Recomputes what layers derive from their weights when Keras loads them, and returns
    `obj` (a model or a layer).

    A Normalization layer normalises with mean and variance tensors that `finalize_state()`
    computes from its weights; Keras calls it when it loads weights, but `set_weights` does
    not, so a copy filled with `set_weights` would normalise with the statistics it was built
    with (0 and 1): every copy made here is refreshed.
    """
    layers = (obj._flatten_layers(include_self=True) if hasattr(obj, "_flatten_layers")
              else [obj])
    for layer in layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    return obj


def rebuilds_own_layers(fn):
    """Runs `fn` inside `own_layers_scope()`: for functions that copy only the model they are
    given (apply_ssl, strip_ssl, thin, zero_groups)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with own_layers_scope():
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------
# Validation and model access


def _check_threshold(threshold):
    if not _is_real(threshold) or not _finite(threshold) or threshold < 0:
        raise ValueError(
            "`threshold` must be a finite number >= 0 (group norms at most `threshold` are "
            f"treated as zero). Received: threshold={threshold!r}"
        )
    return float(threshold)


def _check_round_to(round_to, name="round_to"):
    """An int >= 1, or a dict {layer name: int >= 1} (layers not named: 1); else an error."""
    def ok(n):
        return not isinstance(n, bool) and isinstance(n, (int, np.integer)) and n >= 1

    if isinstance(round_to, dict):
        if all(isinstance(k, str) and ok(v) for k, v in round_to.items()):
            return {k: int(v) for k, v in round_to.items()}
    elif ok(round_to):
        return int(round_to)
    what = {"round_to": "every thinned width is kept a multiple of it",
            "max_channels": "no width is left above it"}.get(
        name, "every width above it is cut to a multiple of it")
    other = "no cap" if name == "max_channels" else "1"
    raise ValueError(
        f"`{name}` must be an integer >= 1 ({what}), "
        f"or a dict mapping layer names to such integers (other layers: {other}). "
        f"Received: {name}={round_to!r}"
    )


def _plain(model):
    """A model from `apply_ssl` (an SSLModel, or StructuredSparsity wrappers) as plain layers.

    thin reads and rebuilds plain layers only: such a model is stripped first (a copy, with
    the same weights and layer names); any other model is returned as it is.
    """
    from ssl_keras.wrap import SSLModel, StructuredSparsity, strip_ssl

    if isinstance(model, SSLModel) or (
            isinstance(model, keras.Model)
            and any(isinstance(layer, StructuredSparsity) for layer in model.layers)):
        return strip_ssl(model)
    return model


def _graph(model):
    """The functional graph of `model` (a Sequential's inner functional model)."""
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(
                "thin, zero_groups, thinning_plan and the counts need a built Sequential "
                "model with a known input shape (start it with keras.Input(...)). Received: "
                f"model={model.name!r}, not built."
            )
        return graph
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a functional or Sequential Keras model. Received: "
            f"model={model!r} (of type {type(model).__name__})"
        )
    if not isinstance(model, Functional):
        raise ValueError(
            "thin, zero_groups, thinning_plan and the counts support functional and "
            "Sequential Keras models only: a subclassed model's "
            "call() cannot be analysed or rebuilt. Rebuild it with the functional API. "
            f"Received: model={model.name!r} of class {type(model).__name__}"
        )
    return model


def _layers(graph):
    return [op for op in graph.operations if isinstance(op, keras.layers.Layer)]


def _weight_keys(layer) -> list[str]:
    """The keys of `layer`'s weights in the weight dicts, in `layer.weights` order.

    The short names (kernel, bias, gamma, ...), which the groups use, when they are unique in
    the layer; otherwise (a layer with sublayers: Bidirectional, attention, a custom block)
    `<name>#<position>`, so that two `kernel`s never overwrite each other. Weights created
    without a name are called `variable_<n>` by Keras, with a process-wide counter, so a copy
    of the layer has other names: they are keyed `variable#<position>`. Groups never name
    the weights of such a layer (it is not registered, so the channels reaching it block).
    """
    names = [v.name for v in layer.weights]
    unnamed = [bool(_UNNAMED.fullmatch(n)) for n in names]
    if len(set(names)) == len(names) and not any(unnamed):
        return names
    return [f"{'variable' if auto else n}#{i}"
            for i, (n, auto) in enumerate(zip(names, unnamed, strict=True))]


_UNNAMED = re.compile(r"variable(_\d+)?")


def _read_weights(graph):
    """{layer: {weight key (`_weight_keys`): float array}}; raises on NaN / inf."""
    weights = {}
    for layer in _layers(graph):
        if isinstance(layer, keras.Model):
            continue
        arrays = {}
        for key, var in zip(_weight_keys(layer), layer.weights, strict=True):
            value = np.asarray(ops.convert_to_numpy(var))
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(
                    f"Layer {layer.name!r} has NaN or inf values in its weight {var.name!r}: "
                    "thin needs finite weights. Received: "
                    f"{int(np.sum(~np.isfinite(value)))} non-finite values of {value.size}."
                )
            arrays[key] = value
        if arrays:
            weights[layer.name] = arrays
    return weights


def _slice_norm(weights, s, cache=None):
    """The L2 norm of a group slice; `cache` (a dict for this `weights`) keeps the per-index
    sums of squares of every (layer, weight, axis) already seen."""
    w = weights.get(s["layer"], {}).get(s["weight"])
    if w is None:
        return 0.0
    if cache is None:
        return float(np.linalg.norm(np.take(w, s["index"], axis=s["axis"]).astype(np.float64)))
    axis = s["axis"] % w.ndim
    key = (s["layer"], s["weight"], axis)
    sums = cache.get(key)
    if sums is None:
        sums = np.sum(np.square(w, dtype=np.float64),
                      axis=tuple(a for a in range(w.ndim) if a != axis))
        cache[key] = sums
    return float(np.sqrt(np.sum(sums[np.asarray(s["index"], dtype=int)])))


def _zeroed_weights(weights, zero):
    """A copy of `weights` with the `zero` entries set to 0 (each array copied once)."""
    out = {name: dict(ws) for name, ws in weights.items()}
    copied = set()
    for z in zero:
        key = (z["layer"], z["weight"])
        if key not in copied:
            out[key[0]][key[1]] = out[key[0]][key[1]].copy()
            copied.add(key)
        w = out[key[0]][key[1]]
        if z.get("axis") is None:
            w[...] = 0
        else:
            idx = [slice(None)] * w.ndim
            idx[z["axis"]] = np.asarray(z["index"], dtype=int)
            w[tuple(idx)] = 0
    return out


def _copy_with_weights(model, weights):
    """A clone of `model` carrying `weights` ({layer: {name: array}})."""
    clone = keras.models.clone_model(model, clone_function=copy_layer)
    for layer in clone.layers:
        if layer.name in weights:
            layer.set_weights([weights[layer.name][k] for k in _weight_keys(layer)])
        elif layer.weights:
            src = model.get_layer(layer.name)
            layer.set_weights(src.get_weights())
    return refresh_states(clone)


def _is_kernel_layer(layer):
    return any(v.name in KERNEL_NAMES for v in layer.weights)


def _nodes(graph):
    """The graph's non-input nodes in execution order."""
    out = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                out.append(node)
    return out


def _node_inputs(node):
    return list(node.input_tensors)


# ---------------------------------------------------------------------------------------------
# Layer kinds (through the MRO)


@functools.cache
def _is_conv(cls):
    from keras.src.layers.convolutional.base_conv import BaseConv

    return issubclass(cls, BaseConv) and not _is_transpose(cls)


@functools.cache
def _is_transpose(cls):
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose

    return issubclass(cls, BaseConvTranspose)


@functools.cache
def _is_separable(cls):
    from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv

    return issubclass(cls, BaseSeparableConv)


@functools.cache
def _is_depthwise(cls):
    from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv

    return issubclass(cls, BaseDepthwiseConv)
