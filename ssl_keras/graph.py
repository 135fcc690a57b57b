"""The channel-dependency graph of a functional or Sequential Keras model.

`removable_groups(model)` finds the coupled groups of a model: sets of channels that live and
die together (a filter, the BatchNorm entries after it, the input-channel slices of every layer
that reads it, the other operands of an Add, the rows of a Dense kernel after a Flatten). The
result is plain data, in the format of docs/groups-format.md, shared by `apply_ssl` (what to
penalise together) and `thin` (what to remove together).

How it works (Torch-Pruning's two rules on a union-find):

- every channel of every tensor is an "atom"; a producer (Dense, Conv, ...) creates one new
  atom per output channel, the model inputs and the outputs of layers that cannot be analysed
  create atoms that can never be removed;
- a tensor's "layout" lists, for each position of its last axis, the atom that lives there:
  pass-through layers copy it, Concatenate concatenates, Flatten tiles it `H * W` times
  (channel `c` of `(H, W, C)` sits at positions `c, c + C, ...`), DepthwiseConv2D repeats each
  atom `depth_multiplier` times;
- merges (Add, Multiply, ...) and the several calls of a shared layer unite atoms position by
  position; the union-find classes are the groups;
- each atom collects its weight slices (producer, tied, consumer), the layers it flows through
  and the reasons that block its removal (a blocking or unregistered layer, the model output).

A layer with an attribute `ssl_inner_layer` (the StructuredSparsity wrapper) is analysed as
that inner layer under the wrapper's name. Nested functional / Sequential models are inlined,
their layers named "outer/inner"; a layer with weights used in two of them (inside a nested
model and outside it) is refused (`check_layers_in_one_model`: every copy would untie it).

Masks are not channels: a call's `mask=` (and `*_mask=`) argument without the channel axis is
left out of its inputs, and the calls that only compute masks (an Embedding's `not_equal`,
the `logical_or` of a merge layer) get no layout; the channels they read are blocked. A
PRODUCER / TIED layer that `thin` cannot rebuild with fewer channels (a registered custom
class) blocks the channels it touches, so that `apply_ssl` penalises only what thin removes.
"""

from __future__ import annotations

import collections
import dataclasses

import keras
import numpy as np
from keras.src.ops.numpy import OnesLike, ZerosLike

from ssl_keras._thin_plan import _layer_block_reason
from ssl_keras.registry import (
    Kind,
    LayerSpec,
    WeightSlice,
    activation_reason,
    lookup,
    overridden_call,
    register_layer,
    undeclared_weights,
    unregistered_message,
)

# The registry's public names are re-exported here so that ssl_keras/__init__.py imports the
# whole graph API from one module.
__all__ = [
    "Kind",
    "LayerSpec",
    "WeightSlice",
    "find_layer",
    "layer_channels",
    "register_layer",
    "removable_groups",
]

_ROLE_ORDER = {"producer": 0, "producer_bias": 1, "tied": 2, "consumer": 3}


def _functional(model, name: str):
    """The Functional graph behind a Functional or Sequential model, or an error."""
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(
                f"The Sequential model '{name}' is not built, so it has no graph yet. Expected a "
                "Sequential model that starts with keras.Input(shape) or has been called once. "
                f"Received: model.built={model.built}"
            )
        return graph
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        return model
    raise ValueError(
        "The channel-dependency graph needs a functional or Sequential model (a graph of "
        f"layers). Received: model '{name}' of class {type(model).__name__}, a subclassed "
        "model whose call() cannot be analysed. Regularise its layers one by one instead, "
        "e.g. Conv2D(..., kernel_regularizer=ssl_keras.GroupLasso(filters=1e-4)), or rebuild "
        "it with the functional API."
    )


def _is_graph_model(op) -> bool:
    return isinstance(op, keras.Sequential) or (
        isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth")
    )


def _ordered_nodes(graph) -> list:
    """The graph's non-input nodes in execution order; within one depth, in layer order."""
    rank = {id(op): i for i, op in enumerate(graph._operations)}
    nodes = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        level = [n for n in graph._nodes_by_depth[depth]
                 if not n.is_input and n.operation is not None]
        level.sort(key=lambda n: (rank.get(id(n.operation), len(rank)),
                                  _node_index(n)))
        nodes.extend(level)
    return nodes


def _node_index(node) -> int:
    for i, other in enumerate(node.operation._inbound_nodes):
        if other is node:
            return i
    return 0


def _channels(tensor) -> int:
    shape = tensor.shape
    if len(shape) < 2:
        return 1
    return shape[-1] if isinstance(shape[-1], int) else 0


def _block_size(value, layer) -> int:
    if isinstance(value, int):
        return value
    size = getattr(layer, value, None)
    if not isinstance(size, int) or size < 1:
        raise ValueError(
            f"The spec of {type(layer).__name__} reads the attribute `{value}` as a block size, "
            f"but the layer has no positive integer `{value}`. Received: {value}={size!r}"
        )
    return size


@dataclasses.dataclass
class _Call:
    path: str
    cls: str
    inputs: list
    outputs: list


class _Graph:
    """The union-find of channel atoms and what each atom owns; see the module docstring."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.parent: list[int] = []
        self.space: list[tuple[str, str, int]] = []  # atom -> (source path, kind, channel)
        self.slices = collections.defaultdict(list)
        self.blocks = collections.defaultdict(list)
        self.late_blocks = collections.defaultdict(list)
        self.through = collections.defaultdict(list)
        self.unsafe = collections.defaultdict(list)
        self.canon_in: dict[str, np.ndarray] = {}
        self.canon_out: dict[str, np.ndarray] = {}
        self.calls: list[_Call] = []

    # ------------------------------------------------------------------ union-find
    def new_atoms(self, source: str, kind: str, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.space.extend((source, kind, c) for c in range(n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo

    def tie(self, x: np.ndarray, y: np.ndarray) -> bool:
        if len(x) != len(y):
            return False
        for a, b in zip(x, y, strict=True):
            self.union(a, b)
        return True

    # ------------------------------------------------------------------ traversal
    def run(self, model, prefix: str, inputs: list) -> list:
        graph = _functional(model, prefix.rstrip("/") or model.name)
        layouts = {}
        for tensor, layout in zip(graph.inputs, inputs, strict=True):
            layouts[id(tensor)] = layout
        nodes = _ordered_nodes(graph)
        masks = _mask_nodes(graph, nodes)
        for node in nodes:
            if id(node) in masks:
                self.mask(node, prefix, layouts, masks[id(node)])
                continue
            tensors = _channel_inputs(node)
            if any(id(t) not in layouts for t in tensors):
                continue
            ins = [layouts[id(t)] for t in tensors]
            outs = self.node(node, prefix, ins)
            for tensor, layout in zip(node.outputs, outs, strict=True):
                layouts[id(tensor)] = layout
        return [layouts[id(t)] for t in graph.outputs]

    def node(self, node, prefix: str, ins: list) -> list:
        op = node.operation
        path = prefix + op.name
        if _is_graph_model(op):
            outs = self.run(op, path + "/", ins)
        else:
            outs = self.layer(op, path, node, ins)
        self.calls.append(_Call(path, type(op).__name__, ins, outs))
        return outs

    def mask(self, node, prefix: str, layouts: dict, reader: str) -> None:
        """A call that only computes a mask (Embedding(mask_zero=True)'s `not_equal`, the
        masks a merge layer combines): its output carries no channels, and the channels it
        reads stay (a mask read off a removed channel would change with it). `zeros_like` /
        `ones_like` read a tensor's shape, not its channels (Concatenate broadcasts a step
        mask to each input's shape with them, then reduces it over the channels with `any`)."""
        op = node.operation
        if isinstance(op, _SHAPE_ONLY):
            return
        path = prefix + op.name
        for t in node.input_tensors:
            for a in layouts.get(id(t), ()):
                self.blocks[int(a)].append(
                    f"is read by '{path}', which computes the mask of '{prefix + reader}'")

    def block(self, ins: list, node, path: str, reason: str) -> list:
        for layout in ins:
            for a in layout:
                self.blocks[int(a)].append(reason)
        return [self.new_atoms(path, "opaque", _channels(t)) for t in node.outputs]

    def layer(self, op, path: str, node, ins: list) -> list:
        layer = getattr(op, "ssl_inner_layer", op)
        found = lookup(layer)
        if found is None:
            message = unregistered_message(path, layer)
            if self.strict:
                raise ValueError(message)
            return self.block(ins, node, path, (
                f"reaches unregistered layer '{path}' (class {type(layer).__name__}): register "
                "it with ssl_keras.register_layer, or pass strict=True for the full message"))
        registered, spec = found
        shapes = [t.shape for t in _channel_inputs(node)]
        reason = overridden_call(layer, registered)
        if reason is None and spec.check is not None:
            reason = spec.check(layer, shapes)
        if reason is None and spec.kind is Kind.BLOCK:
            reason = spec.reason
        if reason is None and not isinstance(op, keras.layers.Layer):
            reason = _constant_operands(node)
        if reason is None and spec.kind in _ONE_INPUT and len(ins) != 1:
            reason = f"expects one input tensor, received {len(ins)}"
        if reason is None and spec.kind in _WEIGHTLESS and isinstance(op, keras.layers.Layer):
            width = len(ins[0]) if ins else 0
            per_channel = sorted({v.name for v in op.weights if width > 1 and width in v.shape})
            if per_channel:  # a scalar weight (a learnable Swish beta) is fine
                reason = (f"registered as {spec.kind.name} but owns per-channel weights "
                          f"{per_channel} (an axis of size {width}), which would not be sliced "
                          "with the channels: declare them as Kind.TIED slices")
        if reason is None and spec.kind in (Kind.PRODUCER, Kind.TIED):
            reason = undeclared_weights(layer, spec)
        if reason is not None:
            return self.block(ins, node, path,
                              f"reaches {type(layer).__name__} '{path}' ({reason})")
        outs = _HANDLERS[spec.kind](self, spec, layer, path, node, ins)
        act = activation_reason(getattr(layer, "activation", None)) if (
            spec.kind is Kind.PRODUCER and outs) else None
        if act is not None:  # its own filters only: its input channels stay removable
            for a in outs[0]:  # listed after the other reasons ("reaches model output")
                self.late_blocks[int(a)].append(
                    f"is activated by {type(layer).__name__} '{path}' ({act})")
        if outs is None or len(outs) != len(node.outputs) or any(
            len(o) != _channels(t) for o, t in zip(outs, node.outputs, strict=True)
        ):
            return self.block(ins, node, path, (
                f"reaches {type(layer).__name__} '{path}' (its channels do not line up with its "
                "inputs: check its LayerSpec)"))
        rebuild = _rebuild_reason(layer, spec)
        if rebuild is not None:  # analysed, but thin would keep every channel it touches
            for layout in (*ins, *outs):
                for a in layout:
                    self.blocks[int(a)].append(rebuild)
        if spec.kind is not Kind.PRODUCER:
            for layout in outs:
                for a in layout:
                    self.through[int(a)].append(path)
                    if not spec.affine_safe:
                        self.unsafe[int(a)].append(path)
        return outs

    # ------------------------------------------------------------------ slices
    def add_slices(self, layer, path: str, atoms, specs, role: str) -> None:
        names = {v.name for v in layer.weights}
        for ws in specs:
            if ws.weight not in names:
                if ws.optional:
                    continue
                raise ValueError(
                    f"Layer '{path}' (class {type(layer).__name__}) has no weight named "
                    f"'{ws.weight}', which its LayerSpec names. Expected one of {sorted(names)}. "
                    f"Received: {ws!r}"
                )
            size = _block_size(ws.block, layer)
            for i, a in enumerate(atoms):
                index = tuple(range(i * size, (i + 1) * size))
                self.slices[int(a)].append((path, ws.weight, ws.axis, role, ws.penalize, index))

    def canonical_input(self, path: str, x: np.ndarray) -> bool:
        """Ties the inputs of every call of a shared layer that owns input slices."""
        if path not in self.canon_in:
            self.canon_in[path] = x
            return True
        return self.tie(self.canon_in[path], x)


# Operations whose output depends on their input's shape only.
_SHAPE_ONLY = (ZerosLike, OnesLike)
_ONE_INPUT = {Kind.PRODUCER, Kind.TIED, Kind.PASSTHROUGH, Kind.GLOBAL_POOL, Kind.FLATTEN}
# Kinds whose layers keep no per-channel weights (a layer that has some is blocked).
_WEIGHTLESS = {Kind.PASSTHROUGH, Kind.GLOBAL_POOL, Kind.MERGE_TIE, Kind.CONCAT, Kind.FLATTEN}


def _is_mask_argument(name: str) -> bool:
    """A keyword argument that holds a mask: Keras's `mask=` (which it fills in itself from
    the inputs' masks) and the `*_mask=` of attention layers."""
    return name == "mask" or name.endswith("_mask")


def _split_inputs(node) -> tuple[list, list]:
    """(channel inputs, masks) of a call. Masks are the tensors of its mask keyword arguments
    without a channel axis (a lower rank than its first input: `(batch, steps)` beside
    `(batch, steps, channels)`); a mask with one stays a channel input."""
    masked = [k for k in node.arguments.kwargs if _is_mask_argument(k)]
    if not masked:
        return list(node.input_tensors), []
    first = next((t for t in keras.tree.flatten(node.arguments.args)
                  if isinstance(t, keras.KerasTensor)), None)
    rank = len(first.shape) if first is not None else 0
    kwargs, masks = dict(node.arguments.kwargs), []
    for k in masked:
        tensors = [t for t in keras.tree.flatten(kwargs[k]) if isinstance(t, keras.KerasTensor)]
        if all(len(t.shape) < rank for t in tensors):
            masks.extend(tensors)
            del kwargs[k]
    ins = [t for t in keras.tree.flatten((node.arguments.args, kwargs))
           if isinstance(t, keras.KerasTensor)]
    return ins, masks


def _channel_inputs(node) -> list:
    """The KerasTensors a call reads channels from: its positional arguments and keyword
    arguments other than masks (see `_split_inputs`), in the order of `node.input_tensors`."""
    return _split_inputs(node)[0]


def _mask_nodes(graph, nodes) -> dict:
    """{id(node): name of a layer whose mask it computes} for the calls whose outputs are
    used only as masks, directly or through other such calls (Keras records the operations
    of `compute_mask` in the graph: `not_equal` for an Embedding with mask_zero=True)."""
    uses = collections.defaultdict(list)  # id(tensor) -> [(reading node, as a mask)]
    for node in nodes:
        ins, masks = _split_inputs(node)
        for t in ins:
            uses[id(t)].append((node, False))
        for t in masks:
            uses[id(t)].append((node, True))
    outputs = {id(t) for t in graph.outputs}
    found = {}
    for node in reversed(nodes):  # readers first
        reader = None
        for t in node.outputs:
            if id(t) in outputs:
                break
            ok = True
            for user, as_mask in uses.get(id(t), ()):
                if as_mask:
                    reader = reader or user.operation.name
                elif id(user) in found:
                    reader = reader or found[id(user)]
                else:
                    ok = False
            if not ok:
                break
        else:
            if reader is not None:
                found[id(node)] = reader
    return found


def _rebuild_reason(layer, spec: LayerSpec) -> str | None:
    """Why thin cannot rebuild a PRODUCER / TIED layer that owns slices with fewer channels
    (a registered class outside the ones thin slices), or None."""
    if spec.kind not in (Kind.PRODUCER, Kind.TIED):
        return None
    names = {v.name for v in layer.weights}
    if not any(ws.weight in names for ws in (*spec.consumes, *spec.produces, *spec.tied)):
        return None  # nothing to slice: thin copies it as it is
    return _layer_block_reason(layer)


def _constant_operands(node) -> str | None:
    """Operations (`x + y`, `x * w`) with a constant array operand cannot be sliced here."""
    for arg in list(node.arguments.args) + list(node.arguments.kwargs.values()):
        if isinstance(arg, keras.KerasTensor):
            continue
        if np.ndim(arg) > 0:
            return "has a constant array operand"
    return None


def _producer(g: _Graph, spec: LayerSpec, layer, path: str, node, ins):
    x = ins[0]
    first_call = path not in g.canon_in
    if not g.canonical_input(path, x):
        return None
    if first_call:
        g.add_slices(layer, path, x, spec.consumes, "consumer")
    if path not in g.canon_out:
        out = g.new_atoms(path, "producer", _channels(node.outputs[0]))
        g.add_slices(layer, path, out, spec.produces, "producer")
        g.add_slices(layer, path, out, spec.bias, "producer_bias")
        g.canon_out[path] = out
    return [g.canon_out[path]]


def _tied(g: _Graph, spec: LayerSpec, layer, path: str, node, ins):
    x = ins[0]
    first_call = path not in g.canon_in
    if not g.canonical_input(path, x):
        return None
    if first_call:
        g.add_slices(layer, path, x, spec.tied, "tied")
    return [np.repeat(x, _block_size(spec.expand, layer))]


def _passthrough(g: _Graph, spec: LayerSpec, layer, path: str, node, ins):
    return [ins[0]]


def _merge(g: _Graph, spec: LayerSpec, layer, path: str, node, ins):
    n = _channels(node.outputs[0])
    full = [x for x in ins if len(x) == n]
    if not full:
        return None
    for x in ins:
        if len(x) == n:
            g.tie(full[0], x)
        elif len(x) == 1:
            g.blocks[int(x[0])].append(
                f"broadcast over all channels by {type(layer).__name__} '{path}'")
        else:
            return None
    return [full[0]]


def _concat(g: _Graph, spec: LayerSpec, layer, path: str, node, ins):
    rank = len(node.outputs[0].shape)
    axis = getattr(layer, "axis", -1)
    if axis % rank == rank - 1:
        return [np.concatenate(ins)]
    return _merge(g, spec, layer, path, node, ins)


def _flatten(g: _Graph, spec: LayerSpec, layer, path: str, node, ins):
    shape = node.input_tensors[0].shape
    spatial = shape[1:-1]
    if any(not isinstance(d, int) for d in spatial):
        return None
    return [np.tile(ins[0], int(np.prod(spatial, dtype=np.int64)))]


_HANDLERS = {
    Kind.PRODUCER: _producer,
    Kind.TIED: _tied,
    Kind.PASSTHROUGH: _passthrough,
    Kind.GLOBAL_POOL: _passthrough,
    Kind.MERGE_TIE: _merge,
    Kind.CONCAT: _concat,
    Kind.FLATTEN: _flatten,
}
assert set(_HANDLERS) | {Kind.BLOCK} == set(Kind)


# ---------------------------------------------------------------------- shared layers


def check_layers_in_one_model(model) -> None:
    """Raises a ValueError when a layer with weights is used in more than one model of
    `model`: inside a nested model and outside it, in two nested models, or inside a layer
    that holds other layers (`TimeDistributed(d)`) and beside it.

    Keras ties such a layer (one set of weights), but every copy ssl_keras makes
    (`apply_ssl`, `strip_ssl`, `zero_groups`, `thin`; `keras.models.clone_model` too) copies
    a nested model, or a holding layer, as a unit from its config, with new layers: the copy
    would hold the weights twice, untied. The graph, too, would see two layers
    ("sub/shd" and "shd"). A layer shared within one model, and a nested model called
    several times (a Siamese network), are fine.
    """
    places = {}  # id(layer) -> (layer, [where it is used])
    seen = set()

    def note(layer, where):
        entry = places.setdefault(id(layer), (layer, []))
        if where not in entry[1]:
            entry[1].append(where)

    def visit(container, scope):
        if id(container) in seen:
            return
        seen.add(id(container))
        graph = _functional(container, scope or container.name)
        here = (f"inside the nested model '{scope}'" if scope else
                f"in model '{container.name}'")
        for op in graph._operations:
            if not isinstance(op, keras.layers.Layer) or isinstance(
                    op, keras.layers.InputLayer):
                continue
            if _is_graph_model(op):
                note(op, here)
                visit(op, f"{scope}/{op.name}" if scope else op.name)
                continue
            for layer in op._flatten_layers(include_self=True):
                note(layer, here if layer is op else
                     f"inside layer '{op.name}' ({type(op).__name__}) {here}")

    visit(model, "")
    for layer, where in places.values():
        if len(where) > 1 and layer.weights:
            used = " and ".join(where) if len(where) == 2 else ", ".join(where)
            raise ValueError(
                f"Layer '{layer.name}' (class {type(layer).__name__}) is used "
                f"{'both ' if len(where) == 2 else ''}{used}. Keras shares its weights between "
                "these uses, but ssl_keras copies a nested model (or a layer holding other "
                "layers) as a unit, from its config, so the copy would hold this layer's "
                "weights twice, no longer tied (keras.models.clone_model does the same), and "
                "the coupled groups would treat its uses as two layers. Expected every layer "
                "with weights to be called within one model only: flatten the model (call the "
                "nested model's layers directly in the outer one), or give each model a layer "
                f"of its own. Received: model '{model.name}', in which layer '{layer.name}' "
                f"is used in {len(where)} places."
            )


# ---------------------------------------------------------------------- assembly


def _analyse(model, strict: bool):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a keras.Model (functional or Sequential). Received: model={model!r}"
        )
    graph = _functional(model, model.name)
    check_layers_in_one_model(model)
    g = _Graph(strict)
    inputs = []
    for tensor in graph.inputs:
        name = tensor._keras_history.operation.name
        atoms = g.new_atoms(name, "input", _channels(tensor))
        inputs.append(atoms)
    outputs = g.run(model, "", inputs)
    for tensor, layout in zip(graph.outputs, outputs, strict=True):
        name = tensor._keras_history.operation.name
        for a in layout:
            g.blocks[int(a)].append(f"reaches model output '{name}'")
    return g, _assemble(g)


def _assemble(g: _Graph):
    members = collections.defaultdict(list)
    for a in range(len(g.parent)):
        members[g.find(a)].append(a)
    groups, ids = [], {}
    for root in sorted(members):
        atoms = members[root]
        producers = [a for a in atoms if g.space[a][1] == "producer"]
        if not producers:
            continue
        source, _, channel = g.space[producers[0]]
        gid = f"{source}:{channel}"
        ids[root] = gid
        reasons = []
        for a in atoms:
            src, kind, _ = g.space[a]
            if kind == "input":
                reasons.append(f"tied to model input '{src}'")
            elif kind == "opaque":
                reasons.append(f"tied to the output of '{src}', which is not analysed")
            reasons.extend(g.blocks.get(a, ()))
        for a in atoms:
            reasons.extend(g.late_blocks.get(a, ()))
        reasons = list(dict.fromkeys(reasons))
        merged = {}
        for a in atoms:
            for layer, weight, axis, role, penalize, index in g.slices.get(a, ()):
                key = (layer, weight, axis, role, penalize)
                merged.setdefault(key, set()).update(index)
        slices = [
            {"layer": k[0], "weight": k[1], "axis": k[2], "index": sorted(v), "role": k[3],
             "penalize": k[4]}
            for k, v in sorted(merged.items(), key=lambda kv: _ROLE_ORDER[kv[0][3]])
        ]
        through = list(dict.fromkeys(p for a in atoms for p in g.through.get(a, ())))
        unsafe = list(dict.fromkeys(p for a in atoms for p in g.unsafe.get(a, ())))
        groups.append({
            "id": gid,
            "source": source,
            "channel": channel,
            "members": [{"layer": g.space[a][0], "channel": g.space[a][2]} for a in producers],
            "slices": slices,
            "through": through,
            "affine_safe": not unsafe,
            "blocked": reasons[0] if reasons else None,
            "reasons": reasons,
        })
    g.ids = ids
    return groups


def removable_groups(model: keras.Model, strict: bool = False) -> list[dict]:
    """Returns the coupled channel groups of a functional or Sequential model, as plain data.

    One entry per coupled group (channels that must be removed together), in the format of
    docs/groups-format.md: `id`, `source`, `channel`, `slices` (every weight slice that lives
    and dies with the channel, each with `layer`, `weight`, `axis`, `index`, `role`,
    `penalize`) and `blocked` (None, or why the group must not be removed), plus:

    - `members`: every producer `{"layer", "channel"}` of the group (an Add of conv_a and
      conv_b makes conv_a:3 and conv_b:3 one group);
    - `through`: the layers without own output channels that the group flows through, in
      graph order (BatchNorm, ReLU, pooling, Add, Flatten, ...);
    - `affine_safe`: False when the way goes through a layer that does not keep a constant
      channel constant (zero padding, Multiply): the constant of a zeroed filter then cannot
      be folded into the consumers' bias;
    - `reasons`: every blocking reason (`blocked` is the first one).

    Groups made only of model-input channels or of outputs of unanalysable layers are left
    out (they have no producer to remove). Channels that reach a model output, a BLOCK layer
    (LayerNormalization, Reshape, attention, ...) or an unregistered layer are blocked.

    Args:
        model: a functional or Sequential Keras model (built); nested models are inlined and
            their layers named "outer/inner".
        strict: raise a ValueError on the first unregistered layer, instead of blocking the
            groups that reach it.

    Returns:
        A list of dicts (JSON-serialisable), ordered by producer and channel.

    Raises:
        ValueError: for a layer with weights used in two models (inside a nested model and
            outside it): see `check_layers_in_one_model`.

    Example:
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
    >>> x = keras.layers.ReLU(name="relu")(x)
    >>> outputs = keras.layers.Conv2D(2, 3, name="conv2")(x)
    >>> groups = removable_groups(keras.Model(inputs, outputs))
    >>> groups[0]["id"], groups[0]["blocked"], [s["layer"] for s in groups[0]["slices"]]
    ('conv1:0', None, ['conv1', 'conv1', 'conv2'])
    """
    return _analyse(model, strict)[1]


def layer_channels(model: keras.Model, strict: bool = False) -> list[dict]:
    """For the converter: per layer call, the group of each channel of its inputs and outputs.

    Returns one dict per layer call, in graph order (a shared layer appears once per call; a
    nested model appears after its own layers, which are named "outer/inner"):

        {"layer": "block1_add", "class": "Add",
         "inputs":  [["conv_a:0", "conv_a:1", ...], ["conv_a:0", ...]],
         "outputs": [["conv_a:0", "conv_a:1", ...]]}

    Masks are left out: a call's mask arguments, and the calls that only compute masks.

    Each inner list has one entry per position of the tensor's last axis: the `id` of the
    group (as in `removable_groups`) that lives there, or None for a channel that belongs to
    no group (a model input channel, the output of an unanalysable layer). After a Flatten a
    group id appears at every position its channel occupies; after DepthwiseConv2D with
    `depth_multiplier=m` it appears m times in a row.

    Args:
        model: a functional or Sequential Keras model.
        strict: as in `removable_groups`.

    Returns:
        A list of dicts, plain data.
    """
    g, _ = _analyse(model, strict)

    def names(layout):
        return [g.ids.get(g.find(int(a))) for a in layout]

    return [
        {"layer": c.path, "class": c.cls, "inputs": [names(x) for x in c.inputs],
         "outputs": [names(x) for x in c.outputs]}
        for c in g.calls
    ]


def find_layer(model: keras.Model, path: str):
    """Returns the layer named `path` ("outer/inner" inside nested models) of `model`."""
    current = model
    parts = path.split("/")
    for i, part in enumerate(parts):
        try:
            current = current.get_layer(part)
        except (ValueError, AttributeError):
            raise ValueError(
                f"No layer '{part}' in '{'/'.join(parts[:i]) or model.name}'. Expected a layer "
                f"path as written in removable_groups. Received: path={path!r}"
            ) from None
    return current

