"""apply_ssl / strip_ssl: put a Keras layer or model under group Lasso, and take it off again.

- `apply_ssl(layer, ...)` returns a `StructuredSparsity` wrapper: the layer, unchanged, whose
  kernels carry a `GroupLasso` (filters, channels, shapes, borders, depth).
- `apply_ssl(model, ..., coupled=False)` returns a clone of the model (weights copied) in which
  every supported layer is wrapped: the method's per-layer groups.
- `apply_ssl(model, ..., coupled=True)` (default) returns an `SSLModel`: the same wrapped clone,
  plus one group norm per coupled group of `ssl_keras.removable_groups(model)` (a channel: the
  producer's filter, its BatchNorm entries and every consumer's input channel, across layers)
  and, with `depth`, one norm per residual branch.
- `strip_ssl(model)` returns a plain Keras model: the original layer classes, the trained
  weights, no group Lasso.

Wrappers keep the name of the layer they wrap, so layer names, output names and `layers=`
keys stay the same before and after `apply_ssl` / `strip_ssl`.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from keras import ops

from ssl_keras._groups_check import validate_groups
from ssl_keras._thin_model import (
    copy_layer,
    layer_config,
    rebuilds_own_layers,
    refresh_states,
)
from ssl_keras._wrap_coupled import CoupledTerms, _current_value
from ssl_keras._wrap_groups import (
    _check_depth_applies,
    _coefficients_for,
    _coupled_groups,
    _depth_groups,
    _settings,
)
from ssl_keras._wrap_groups import residual_branches as residual_branches  # public
from ssl_keras._wrap_layer import (
    StructuredSparsity,
    _Penalty,
    _registered,
    kernel_specs,
)
from ssl_keras.graph import check_layers_in_one_model
from ssl_keras.graph import find_layer as find_layer  # importable from here as before
from ssl_keras.registry import _layer_summary
from ssl_keras.registry import lookup as lookup  # importable from here as before
from ssl_keras.regularizers import GroupLasso as GroupLasso  # importable from here as before
from ssl_keras.regularizers import _validate_epsilon


@keras.saving.register_keras_serializable(package="ssl_keras")
class SSLModel(keras.Model):
    """A functional model whose losses include one group norm per coupled group.

    `loss += sum_g coefficient_g * sqrt(sum of squares of every slice of g + epsilon)`: a
    coupled group (a channel, with all the weights that live and die with it across layers,
    or a residual branch) is driven to zero as a whole. The groups are plain data (the format
    of docs/groups-format.md with a "coefficient" per group, penalised slices only) and are
    saved with the model.

    Build it with `apply_ssl(model, coupled=True)`; it is a Keras functional model otherwise.

    Args:
        *args, **kwargs: as `keras.Model(inputs, outputs, name=...)`.
        ssl_groups: the coupled groups, a list of dicts with "id", "coefficient", "slices";
            checked against the model when it is built or loaded (`validate_groups`, no
            "role" needed), so that a malformed group fails here, not at the first loss.
        ssl_epsilon: added under every square root, > 0.

    Raises:
        ValueError: if `ssl_epsilon` or a group of `ssl_groups` is malformed (naming the
            group and the slice, what was expected and what was received).
    """

    _from_config_depth = 0  # > 0 while from_config rebuilds a model (it sets the groups after)

    def __init__(self, *args, ssl_groups=None, ssl_epsilon=1e-8, **kwargs):
        ssl_epsilon = _validate_epsilon(ssl_epsilon, "ssl_epsilon")
        super().__init__(*args, **kwargs)
        if ssl_groups is None and not SSLModel._from_config_depth:
            warnings.warn(
                f"SSLModel '{self.name}' was built without `ssl_groups`, so its loss has no "
                "coupled group Lasso. keras.models.clone_model builds a clone this way: set "
                "`clone.ssl_groups = model.ssl_groups` after cloning (the layer names are "
                "kept), or pass ssl_groups=[] for a model that has none on purpose.",
                UserWarning,
                stacklevel=2,
            )
        self.ssl_groups = ssl_groups
        self.ssl_epsilon = ssl_epsilon
        self.ssl_penalty_gradient = True

    @property
    def ssl_groups(self) -> list[dict]:
        """The coupled groups. Assigning new ones checks them against the model (as the
        constructor does) and makes the next loss use them."""
        return self._ssl_groups

    def __setattr__(self, name, value):
        if name == "ssl_groups":  # to the setter as given (Keras would wrap it in a tracker)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @ssl_groups.setter
    def ssl_groups(self, groups):
        self._ssl_groups = _validate_ssl_groups(groups, self)
        self._ssl_terms = None
        # A traced train / test step holds the old terms: trace again.
        self.train_function = self.test_function = None

    def ssl_coupled_terms(self) -> CoupledTerms | None:
        if not self.ssl_groups:
            return None
        if self._ssl_terms is None:
            self._ssl_terms = CoupledTerms(self, self.ssl_groups)
        return self._ssl_terms

    def ssl_coupled_loss(self):
        """The coupled group-Lasso term (a scalar tensor of `keras.config.floatx()`, which
        Keras adds the other losses in), 0 without groups. Computed in float32 (float64 when
        floatx is float64), whatever the variables' dtypes."""
        floatx = keras.config.floatx()
        terms = self.ssl_coupled_terms()
        if terms is None:
            return ops.zeros((), dtype=floatx)
        dtype = "float64" if floatx == "float64" else "float32"
        sums = terms.square_sums(read=_current_value, dtype=dtype)
        norms = ops.sqrt(sums + self.ssl_epsilon)
        loss = ops.sum(ops.convert_to_tensor(terms.coefficients, dtype=dtype) * norms)
        loss = ops.cast(loss, floatx)
        return loss if self.ssl_penalty_gradient else ops.stop_gradient(loss)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; if it raises while `ProximalGroupLasso` has the penalty's
        gradient switched off (an interrupted fit skips `on_train_end`), the gradient is
        switched back on, so that the next fit does not silently train without it."""
        try:
            return super().fit(*args, **kwargs)
        finally:
            if getattr(self, "_ssl_proximal_switched", False):
                self._ssl_proximal_switched = False
                set_penalty_gradient(self, True)
                self.train_function = None

    def _get_regularization_losses(self):
        losses = super()._get_regularization_losses()
        if self.ssl_groups and self.trainable:
            losses.append(self.ssl_coupled_loss())
        return losses

    def get_config(self):
        config = super().get_config()
        config["ssl_groups"] = self.ssl_groups
        config["ssl_epsilon"] = self.ssl_epsilon
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        groups = config.pop("ssl_groups", [])
        # Functional from_config rebuilds the model with inputs / outputs / name only, so
        # the SSL arguments are validated and set here, as the constructor would (the groups
        # once the model exists, since they are checked against its layers).
        epsilon = _validate_epsilon(config.pop("ssl_epsilon", 1e-8), "ssl_epsilon")
        SSLModel._from_config_depth += 1
        try:
            model = super().from_config(config, custom_objects=custom_objects)
        finally:
            SSLModel._from_config_depth -= 1
        model.ssl_groups = groups
        model.ssl_epsilon = epsilon
        model.ssl_penalty_gradient = True
        return model


def _validate_ssl_groups(groups, model) -> list[dict]:
    """`validate_groups(groups, model, need_role=False)`, and a "coefficient" on every group.

    validate_groups checks a "coefficient" only when present (thin and the callbacks have
    their own); every group of an SSLModel is a norm in its loss, so it needs one.
    """
    if groups is None:
        return []
    groups = validate_groups(groups, model, need_role=False, argument="ssl_groups")
    for group in groups:
        if "coefficient" not in group:
            raise ValueError(
                f"Group {group['id']!r}: every group of `ssl_groups` needs a 'coefficient' "
                "(the finite number >= 0 its norm is multiplied by in the loss). "
                f"Received keys: {list(group)}"
            )
        # The loss penalises every slice of every group; the callbacks skip blocked groups
        # and unpenalised slices. Such groups would be penalised but never zeroed: refuse.
        if group.get("blocked") is not None:
            raise ValueError(
                f"Group {group['id']!r}: `ssl_groups` must not hold blocked groups (they can "
                "never be removed, so the loss must not push them to zero). Expected "
                f"blocked=None. Received: blocked={group['blocked']!r}"
            )
        for k, piece in enumerate(group["slices"]):
            if not piece.get("penalize", True):
                raise ValueError(
                    f"Group {group['id']!r}, slices[{k}] ({piece['layer']}/{piece['weight']}): "
                    "`ssl_groups` holds only the penalised slices (apply_ssl drops the others). "
                    f"Expected penalize=True or no 'penalize'. Received: "
                    f"penalize={piece['penalize']!r}"
                )
    return _plain_data(groups)


def _plain_data(value):
    """`value` with NumPy arrays, integers, floats and bools as Python lists and numbers: the
    groups are saved in the model's config as JSON and read back by the same checks."""
    if isinstance(value, dict):
        return {k: _plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain_data(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def set_penalty_gradient(model, enabled: bool) -> bool:
    """Turns the gradient of every SSL penalty of `model` on or off (the loss value stays).

    Used by ProximalGroupLasso: with the proximal step doing the shrinkage, the loss must not
    also push the groups with the subgradient. The train function is traced with the setting
    in force, so the caller rebuilds it. Returns whether any setting changed.
    """
    changed = False
    owners = [layer for layer in model._flatten_layers(include_self=True)
              if isinstance(layer, (StructuredSparsity, SSLModel))]
    owners += hand_placed_group_lassos(model)
    for owner in owners:
        if owner.ssl_penalty_gradient != enabled:
            owner.ssl_penalty_gradient = enabled
            changed = True
    return changed


def hand_placed_group_lassos(model) -> list[GroupLasso]:
    """The GroupLasso regularisers that a user put on `model`'s weights (not apply_ssl's).

    `keras.layers.Conv2D(..., kernel_regularizer=GroupLasso(...))`, also under an apply_ssl
    wrapper (which keeps the layer's own regulariser beside its own). Each instance once.
    """
    found = []
    for _, _, regularizer in hand_placed_weights(model):
        if not any(regularizer is seen for seen in found):
            found.append(regularizer)
    return found


def hand_placed_weights(model) -> list[tuple]:
    """`(layer name, variable, GroupLasso)` for every weight of `model` that carries a
    hand-placed GroupLasso (see hand_placed_group_lassos), in layer order; frozen layers'
    too (was: trainable weights only, so a frozen layer vanished from the callbacks' groups;
    the callbacks leave frozen variables as they are)."""
    found = {}  # id(variable) -> entry; layers come outer first, so the owner's name wins
    for layer in model._flatten_layers(include_self=False):
        for variable in layer.weights:
            regularizer = getattr(variable, "regularizer", None)
            if isinstance(regularizer, _Penalty):
                regularizer = regularizer.own
            if isinstance(regularizer, GroupLasso):
                found[id(variable)] = (layer.name, variable, regularizer)
    return list(found.values())


def _clone_layer(layer):
    return copy_layer(layer)


def _check_model(model, argument="to_wrap"):
    if isinstance(model, keras.Sequential):
        if not model.built or getattr(model, "_functional", None) is None:
            raise ValueError(
                f"Sequential model '{model.name}' is not built: it has no input shape, so "
                "its layers have no weights to copy or group. Start it with "
                f"`keras.Input(shape)` or call it on data first. Received: {argument}="
                f"{model.name!r}"
            )
        return
    if isinstance(model, keras.Model) and isinstance(
            model, keras.src.models.functional.Functional):
        return
    if isinstance(model, keras.Model):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model (class {type(model).__name__}): it has "
            "no graph of layers to clone and analyse. Build it as a Sequential or functional "
            "model, or put `ssl_keras.GroupLasso(...)` on each layer's kernel_regularizer "
            f"by hand. Received: {argument}={type(model).__name__}"
        )


def _copy_weights(source, target) -> None:
    for layer in source.layers:
        if not layer.weights:
            continue
        target.get_layer(layer.name).set_weights(layer.get_weights())
    refresh_states(target)


def _model_layers_by_name(model) -> dict:
    return {layer.name: layer for layer in model.layers}


@rebuilds_own_layers
def apply_ssl(to_wrap, filters=0.0, channels=0.0, shapes=0.0, depth=0.0, coupled=True,
              layers=None, borders=0.0):
    """Puts a layer or a whole model under the group Lasso of Structured Sparsity Learning.

    Given a layer, returns `StructuredSparsity(layer, filters, channels, shapes, depth,
    borders)`.

    Given a Sequential or functional model, returns a new model (the input is not modified)
    with the same layers, names and weights, in which every supported layer (Dense, Conv*,
    Conv*Transpose, DepthwiseConv*, SeparableConv*) is a `StructuredSparsity` wrapper;
    pass-through layers (BatchNormalization, pooling, activations, Add, Flatten, ...) are
    cloned as they are, and any other layer with weights raises an error (declare a custom
    layer with `ssl_keras.register_layer` to have it kept as it is).

    - `coupled=False`: the method's per-layer groups; each wrapper adds
      `filters * sum ||filter|| + channels * sum ||channel|| + shapes * sum ||shape||
      + borders * sum ||border band|| + depth * ||kernel||`. Returns the same model type as
      the input.
    - `coupled=True`: returns an `SSLModel`. Every non-blocked group of
      `ssl_keras.removable_groups(model)` (one channel: the producer's filter, its BatchNorm
      gamma, every consumer's input channel, across layers) is penalised with ONE norm over
      all its penalised slices, with coefficient `filters` (the largest among its producer
      layers) `+ channels` (the largest among its consumer layers). `shapes` and `borders` stay per
      layer (shape and border groups are not coupled). `depth` adds one norm per residual
      branch (each operand of an Add except the one with the fewest weight layers, the
      shortcut), so that training
      can switch a whole block off: the gamma and beta of the BatchNorm that ends the branch
      (its kernels, which BatchNorm normalises, are zeroed with it: "zero_with"), or, for a
      branch without a final BatchNorm, all its kernels and BatchNorm gammas; its
      coefficient is `depth` or `layers[<add layer name>]["depth"]`.

    Args:
        to_wrap: a Keras layer, a Sequential model or a functional model.
        filters: coefficient of the filter-wise groups, >= 0.
        channels: coefficient of the channel-wise groups, >= 0.
        shapes: coefficient of the shape-wise groups, >= 0.
        depth: coefficient of the depth groups (whole kernel; residual branch when coupled:
            then a depth that penalises nothing, in a model without residual branches
            or in `layers` on a layer that is not an Add, raises).
        coupled: one norm per coupled group across layers (models only).
        layers: a dict from layer name to a dict of coefficients that overrides the global
            ones for that layer (missing keys take the global values), or to None to leave
            the layer unpenalised. Models only.
        borders: coefficient of the nested border bands of Conv1D/2D/3D kernels (the
            outer 1, 2, ... rows / columns of each side, across channels and filters): zero
            border rows / columns are cropped by `thin`, so the kernel gets smaller.

    Returns:
        A `StructuredSparsity` layer around a copy of the layer (same config and weights), or
        a new model (an `SSLModel` when `coupled=True`); `to_wrap` is not modified.

    Example:
    >>> ssl_model = apply_ssl(model, filters=1e-4, channels=1e-4)
    >>> ssl_model.compile("sgd", "mse"); ssl_model.fit(x, y)
    >>> plain = strip_ssl(ssl_model)
    """
    if isinstance(to_wrap, keras.Model):
        return _apply_to_model(to_wrap, filters, channels, shapes, depth, coupled, layers,
                               borders)
    if isinstance(to_wrap, keras.layers.Layer):
        if layers is not None:
            raise ValueError(
                "`layers` selects layers of a model; it cannot be used when wrapping a "
                f"single layer. Received: layers={layers!r}"
            )
        _warn_double_group_lasso("the layer", {to_wrap.name: to_wrap}, {}, stacklevel=4)
        copy = _clone_layer(to_wrap)  # the penalty attaches to variables: not to_wrap's
        if to_wrap.built:
            copy.build_from_config(to_wrap.get_build_config())
            copy.set_weights(to_wrap.get_weights())
            refresh_states(copy)
        return StructuredSparsity(copy, filters=filters, channels=channels, shapes=shapes,
                                  depth=depth, borders=borders)
    raise ValueError(
        "`to_wrap` must be a Keras layer, a Sequential model or a functional model. "
        f"Received: to_wrap={to_wrap!r} (of type {type(to_wrap).__name__})"
    )


def _warn_double_group_lasso(owner, by_name, overrides, stacklevel) -> None:
    """Warns about layers apply_ssl wraps whose kernels carry a GroupLasso of their own."""
    twice = []
    for name, layer in by_name.items():
        specs = kernel_specs(layer)
        if specs is None or overrides.get(name, 0) is None or not layer.built:
            continue
        if any(isinstance(getattr(getattr(layer, attribute), "regularizer", None), GroupLasso)
               for attribute, *_ in specs):
            twice.append(name)
    if twice:
        remedy = ("wrap a copy of the layer without its regulariser" if owner == "the layer"
                  else "build the model without those regularisers, or pass "
                  f"layers={{{', '.join(f'{n!r}: None' for n in twice)}}} to leave these "
                  "layers to their own")
        warnings.warn(
            f"Layers {twice} of {owner} already carry a GroupLasso regulariser; "
            "apply_ssl adds its own groups on top, so their kernels are penalised twice "
            "(ProximalGroupLasso then shrinks them twice per step too). Expected one of the "
            f"two: {remedy}.",
            UserWarning,
            stacklevel=stacklevel,
        )


def _apply_to_model(model, filters, channels, shapes, depth, coupled, layers, borders):
    _check_model(model)
    check_layers_in_one_model(model)  # the clone would untie such a layer's weights
    if not isinstance(coupled, bool):
        raise ValueError(f"`coupled` must be a bool. Received: coupled={coupled!r}")
    if isinstance(model, SSLModel) or any(
            isinstance(layer, StructuredSparsity) for layer in model.layers):
        raise ValueError(
            f"Model '{model.name}' already holds StructuredSparsity layers; call "
            "`strip_ssl(model)` first. Received: to_wrap=" + repr(model.name)
        )
    defaults, overrides = _settings(layers, filters, channels, shapes, depth, borders)
    by_name = _model_layers_by_name(model)
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise ValueError(
            f"`layers` names layers that are not in model '{model.name}': {unknown}. "
            f"Expected names among {sorted(by_name)}. Received: layers keys={sorted(overrides)}"
        )
    for name, layer in by_name.items():
        known = kernel_specs(layer) is not None or _registered(layer)
        if isinstance(layer, keras.Model) and layer.weights and \
                overrides.get(name, 0) is not None:
            raise ValueError(
                f"Layer '{name}' is a nested model ({type(layer).__name__}): apply_ssl does "
                "not descend into nested models (and thin keeps the groups inside them). "
                "Expected a flat model: call the nested model's layers directly, e.g. "
                "`keras.Model(backbone.input, head(backbone.output))` for a backbone, or "
                f"pass `layers={{{name!r}: None}}` to keep it as it is, unpenalised. "
                f"Received: layer={name!r} ({type(layer).__name__})"
            )
        if not known and layer.weights and overrides.get(name, 0) is not None:
            cls = type(layer).__name__
            raise ValueError(
                f"Layer '{name}' of class {cls} has weights but apply_ssl does not know how to "
                "group them: neither its class nor a base class is registered in ssl_keras. "
                f"Supported: {_layer_summary()} and their subclasses, listed by "
                "ssl_keras.registry.registered_classes(). Register it, e.g. "
                f"`ssl_keras.register_layer({cls}, ssl_keras.LayerSpec("
                "ssl_keras.Kind.BLOCK, reason='custom layer'))` to keep it unpenalised with "
                "the channels that reach it never removed (ssl_keras.registry describes the "
                f"other kinds), or pass `layers={{{name!r}: None}}` to keep it as it is, "
                f"unpenalised. Received: layer={name!r} ({cls})"
            )

    _warn_double_group_lasso(f"model '{model.name}'", by_name, overrides, stacklevel=5)

    def per_layer(name):
        values = dict(_coefficients_for(name, defaults, overrides))
        if coupled:
            values["filters"] = values["channels"] = values["depth"] = 0.0
        return values

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        clone = _clone_layer(layer)
        if kernel_specs(layer) is None:
            return clone
        return StructuredSparsity(clone, **per_layer(layer.name), name=layer.name)

    wrapped = keras.models.clone_model(model, clone_function=clone_function)
    _copy_weights(model, wrapped)
    if not coupled:
        return wrapped
    groups = _coupled_groups(model, defaults, overrides)
    depth_groups = _depth_groups(wrapped, defaults, overrides)
    _check_depth_applies(model, layers, defaults, overrides, depth_groups)
    groups += depth_groups
    if isinstance(wrapped, keras.Sequential):
        inputs, outputs = wrapped.inputs[0], wrapped.outputs[0]
    else:
        inputs, outputs = wrapped.input, wrapped.output
    result = SSLModel(inputs=inputs, outputs=outputs, name=model.name,
                      ssl_groups=groups)
    return result


@rebuilds_own_layers
def strip_ssl(model):
    """Returns a plain copy of `model`: original layer classes, same weights, no apply_ssl groups.

    Every `StructuredSparsity` wrapper is replaced by a fresh copy of the layer it wraps (same
    name, same config, same weights); an `SSLModel` becomes a plain functional model. A
    regulariser the layer had in its own config (L2, or a `GroupLasso` placed by hand) stays.
    The input is not modified. The result is ready for `thin()` and export.

    Args:
        model: a model from `apply_ssl` (or any Sequential / functional model), or a
            `StructuredSparsity` layer.

    Returns:
        A new model of the input's type (`keras.Model` for an `SSLModel`), or a new layer.

    Example:
    >>> plain = strip_ssl(ssl_model)
    >>> [type(l).__name__ for l in plain.layers]
    """
    if isinstance(model, StructuredSparsity):
        inner = _clone_layer(model.ssl_inner_layer)
        if model.ssl_inner_layer.built:
            inner.build_from_config(model.ssl_inner_layer.get_build_config())
            inner.set_weights(model.ssl_inner_layer.get_weights())
            refresh_states(inner)
        return inner
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a Keras model or a StructuredSparsity layer. "
            f"Received: model={model!r} (of type {type(model).__name__})"
        )
    _check_model(model, argument="model")
    check_layers_in_one_model(model)  # the clone would untie such a layer's weights

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if isinstance(layer, StructuredSparsity):
            inner = layer.ssl_inner_layer
            config = layer_config(inner)
            config["name"] = layer.name
            return copy_layer(inner, config)
        return _clone_layer(layer)

    if isinstance(model, SSLModel):
        plain_view = keras.Model(model.input, model.output, name=model.name)
        stripped = keras.models.clone_model(plain_view, clone_function=clone_function)
        if model.compiled:
            stripped.compile_from_config(model.get_compile_config())
    else:
        stripped = keras.models.clone_model(model, clone_function=clone_function)
    _copy_weights(model, stripped)
    return stripped
