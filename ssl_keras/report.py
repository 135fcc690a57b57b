"""Parameter and multiply-accumulate (MAC) counts, and a before/after table for `thin`.

MACs per layer, for one example (batch 1), with `out` the output's spatial positions:

| layer                         | MACs                                            |
|-------------------------------|-------------------------------------------------|
| Dense                         | in * units * (positions of the leading axes)    |
| Conv1D/2D/3D                  | prod(kernel_size) * c_in / groups * filters * out |
| DepthwiseConv1D/2D            | prod(kernel_size) * c_in * depth_multiplier * out |
| SeparableConv1D/2D            | depthwise part + c_in * depth_multiplier * filters * out |
| Conv1D/2D/3DTranspose         | prod(kernel_size) * c_in * filters * in (input positions) |
| TimeDistributed(layer)        | the layer's MACs on one step * steps             |
| a nested functional / Sequential model | the sum of its layers (listed as `outer/inner`) |
| anything else                 | 0 (pooling, BatchNorm, activations, adds are not counted) |

Channels are read from the axis `data_format` names (channels_first: axis 1).
"""

from __future__ import annotations

import keras
import numpy as np


def _inner(layer):
    """The layer an apply_ssl wrapper (`StructuredSparsity`) holds; any other layer itself."""
    from ssl_keras._wrap_layer import StructuredSparsity

    return layer.ssl_inner_layer if isinstance(layer, StructuredSparsity) else layer


def _shape(tensor_shape):
    """The shape with unknown sizes as None (the batch axis included)."""
    return [int(d) if d is not None else None for d in tensor_shape]


def _calls(model, prefix: str = ""):
    """(path, layer, input shape, output shape, nested) for every call of a layer in `model`'s
    graph; a nested functional / Sequential model is listed (nested=True) and so are its own
    layers, under `outer/inner` paths."""
    from ssl_keras._thin_model import _graph, _nodes
    from ssl_keras.graph import _is_graph_model

    out = []
    for node in _nodes(_graph(model)):
        op = node.operation
        if not isinstance(op, keras.layers.Layer) or not node.input_tensors:
            continue
        path = prefix + op.name
        nested = _is_graph_model(op)
        out.append((path, op, _shape(node.input_tensors[0].shape),
                    _shape(node.outputs[0].shape), nested))
        if nested:
            out += _calls(op, path + "/")
    return out


def layer_macs(layer, input_shape, output_shape) -> int:
    """The MACs of one call of `layer` for one example (see the module table).

    Args:
        layer: a Keras layer (a `StructuredSparsity` wrapper counts as its inner layer).
        input_shape: its input shape, batch axis included.
        output_shape: its output shape, batch axis included.

    Returns:
        An int (0 for layers without a kernel).

    Example:
    >>> layer_macs(keras.layers.Dense(3), (None, 4), (None, 3))
    12
    """
    from ssl_keras._thin_model import _is_conv, _is_depthwise, _is_separable, _is_transpose

    layer = _inner(layer)
    cls = type(layer)
    if isinstance(layer, keras.layers.TimeDistributed):
        steps = input_shape[1]
        if steps is None:
            return layer_macs(layer.layer, [None, *input_shape[1:]], [None, *output_shape[1:]])
        inner = layer_macs(layer.layer, [None, *input_shape[2:]], [None, *output_shape[2:]])
        return int(inner * steps)
    if not (isinstance(layer, keras.layers.Dense) or _is_conv(cls) or _is_depthwise(cls)
            or _is_separable(cls) or _is_transpose(cls)):
        return 0
    if any(d is None for d in (*input_shape[1:], *output_shape[1:])):
        raise ValueError(
            "count_macs needs the sizes a layer's MACs depend on. Received: input shape "
            f"{tuple(input_shape)}, output shape {tuple(output_shape)} at layer "
            f"{layer.name!r}; build the model with a fixed input size.")
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        # channels on axis 1: move them last, the counts below read them there
        input_shape = [input_shape[0], *input_shape[2:], input_shape[1]]
        output_shape = [output_shape[0], *output_shape[2:], output_shape[1]]
    cin = input_shape[-1]
    out_pos = int(np.prod(output_shape[1:-1], dtype=np.int64))
    if isinstance(layer, keras.layers.Dense):
        return int(cin * layer.units * int(np.prod(input_shape[1:-1], dtype=np.int64)))
    k = int(np.prod(getattr(layer, "kernel_size", (1,)), dtype=np.int64))
    if _is_separable(cls):
        dm = layer.depth_multiplier
        return int(k * cin * dm * out_pos + cin * dm * layer.filters * out_pos)
    if _is_depthwise(cls):
        return int(k * cin * layer.depth_multiplier * out_pos)
    if _is_transpose(cls):
        in_pos = int(np.prod(input_shape[1:-1], dtype=np.int64))
        return int(k * cin * layer.filters * in_pos)
    if _is_conv(cls):
        return int(k * cin // getattr(layer, "groups", 1) * layer.filters * out_pos)
    return 0


def count_params(model: keras.Model) -> int:
    """The number of weights of `model` (trainable and not), as `model.count_params()`.

    Example:
    >>> count_params(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
    15
    """
    if not isinstance(model, keras.Model):
        raise ValueError("`model` must be a Keras model. Received: "
                         f"model={model!r} (of type {type(model).__name__})")
    if not model.built:
        raise ValueError(f"Model '{model.name}' is not built: it has no weights to count yet. "
                         "Expected a model with a known input shape (start it with "
                         "keras.Input(...)).")
    return int(sum(int(np.prod(v.shape, dtype=np.int64)) for v in model.weights))


def count_macs(model: keras.Model, per_layer: bool = False):
    """The MACs of one forward pass of `model` for one example (batch 1).

    Args:
        model: a functional or Sequential model with static input shapes (a model from
            `apply_ssl` counts as its stripped model).
        per_layer: also return `{layer name: MACs}`.

    Returns:
        The total as an int, or `(total, per-layer dict)` when `per_layer`.

    Example:
    >>> count_macs(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]))
    12
    """
    if not isinstance(per_layer, (bool, np.bool_)):
        raise ValueError("`per_layer` must be a bool (also return the per-layer MACs). "
                         f"Received: per_layer={per_layer!r}")
    table, nested = {}, []
    for path, layer, ins, outs, is_model in _calls(model):
        if is_model:
            nested.append(path)
            continue
        table[path] = table.get(path, 0) + layer_macs(layer, ins, outs)
    total = int(sum(table.values()))
    leaves = dict(table)
    for path in dict.fromkeys(nested):  # a nested model: the sum of its layers' calls
        table[path] = int(sum(v for k, v in leaves.items() if k.startswith(path + "/")))
    return (total, table) if per_layer else total


def _width(layer):
    layer = _inner(layer)
    for attr in ("filters", "units", "output_dim"):  # output_dim: an Embedding's features
        value = getattr(layer, attr, None)
        if isinstance(value, int):
            return value
    return None


def _io_widths(model):
    """({layer: input channels}, {layer: output channels}) in one pass over the graph; the
    output channels serve layers without `filters` / `units` (DepthwiseConv2D)."""
    def channels(layer, shape):
        first = getattr(layer, "data_format", None) == "channels_first"
        return shape[1] if first else shape[-1]

    calls = _calls(model)
    return ({path: channels(layer, ins) for path, layer, ins, _, _ in calls},
            {path: channels(layer, outs) for path, layer, _, outs, _ in calls})


def _ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"


def summarize(original: keras.Model, thinned: keras.Model, print_fn=print) -> str:
    """Prints and returns a table of widths, parameters and MACs before and after thinning.

    One row per layer of `original` with a kernel, and per Embedding (its vocabulary as the
    input, its output features as the width): input channels and filters / units before
    -> after ("removed" for a layer the thinned model no longer has), its MACs before and
    after; then the totals of parameters and MACs with their reduction factors.

    Args:
        original: the model before `thin` (a model from `apply_ssl` is shown as its layers).
        thinned: the model `thin` returned.
        print_fn: where the table goes (None: do not print).

    Returns:
        The table, a string.

    Example:
    >>> text = summarize(model, ssl_keras.thin(model))
    """
    if print_fn is not None and not callable(print_fn):
        raise ValueError("`print_fn` must be callable (e.g. print, or a logger's info) or None. "
                         f"Received: print_fn={print_fn!r}")
    for name, value in (("original", original), ("thinned", thinned)):
        if not isinstance(value, keras.Model):
            raise ValueError(f"`{name}` must be a keras.Model. Received: {name}={value!r} (of "
                             f"type {type(value).__name__})")
    macs0, per0 = count_macs(original, per_layer=True)
    macs1, per1 = count_macs(thinned, per_layer=True)
    (in0, out0), (in1, out1) = _io_widths(original), _io_widths(thinned)
    names1 = {layer.name: layer for layer in thinned.layers}
    rows = [("layer", "class", "in", "out", "MACs", "MACs after")]
    for layer in original.layers:
        embedding = isinstance(_inner(layer), keras.layers.Embedding)
        if not embedding and (layer.name not in per0 or
                              not any(v.name.endswith("kernel") for v in layer.weights)):
            continue
        new = names1.get(layer.name)
        before = _width(layer) or out0.get(layer.name)
        # an Embedding's input is token ids: its "in" is the vocabulary, which thin keeps
        ins = ((_inner(layer).input_dim,) * 2 if embedding else
               (in0[layer.name], None if new is None else in1.get(layer.name)))
        if new is None:
            io = (f"{ins[0]} -> removed", f"{before} -> removed")
        else:
            io = (f"{ins[0]} -> {ins[1]}", f"{before} -> {_width(new) or out1.get(layer.name)}")
        rows.append((layer.name, type(_inner(layer)).__name__, *io,
                     f"{per0.get(layer.name, 0):,}", f"{per1.get(layer.name, 0):,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    p0, p1 = count_params(original), count_params(thinned)
    lines += [
        "",
        f"parameters: {p0:,} -> {p1:,} ({_ratio(p0, p1)} fewer)",
        f"MACs:       {macs0:,} -> {macs1:,} ({_ratio(macs0, macs1)} fewer)",
    ]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
