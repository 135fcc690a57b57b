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

import math

import keras
import numpy as np
from keras import ops

from ssl_keras.graph import find_layer
from ssl_keras.registry import lookup
from ssl_keras.regularizers import GroupLasso, _validate_coefficient

_COEFFICIENTS = ("filters", "channels", "shapes", "borders", "depth")
# Border bands only where thin() crops them (Conv1D/2D/3D); elsewhere they would shrink
# weights that no converter removes.
_NO_BORDERS = ("filters", "channels", "shapes", "depth")

# Layer class -> the kernels that carry group Lasso: (attribute, in_axis, out_axis, which
# coefficients apply). Looked up through the MRO, so subclasses of these are supported.
_KERNELS = (
    (keras.layers.Conv1DTranspose, (("kernel", -1, -2, _NO_BORDERS),)),
    (keras.layers.Conv2DTranspose, (("kernel", -1, -2, _NO_BORDERS),)),
    (keras.layers.Conv3DTranspose, (("kernel", -1, -2, _NO_BORDERS),)),
    (keras.layers.SeparableConv1D, (
        ("depthwise_kernel", -2, -1, ("channels", "shapes", "depth")),
        ("pointwise_kernel", -2, -1, ("filters", "channels", "depth")),
    )),
    (keras.layers.SeparableConv2D, (
        ("depthwise_kernel", -2, -1, ("channels", "shapes", "depth")),
        ("pointwise_kernel", -2, -1, ("filters", "channels", "depth")),
    )),
    # Depthwise: one channel is at once an input and an output channel; "filters" and
    # "channels" both act on the channel groups (with the larger of the two coefficients).
    (keras.layers.DepthwiseConv1D, (("kernel", -2, -1, ("depthwise", "shapes", "depth")),)),
    (keras.layers.DepthwiseConv2D, (("kernel", -2, -1, ("depthwise", "shapes", "depth")),)),
    (keras.layers.Conv1D, (("kernel", -2, -1, _COEFFICIENTS),)),
    (keras.layers.Conv2D, (("kernel", -2, -1, _COEFFICIENTS),)),
    (keras.layers.Conv3D, (("kernel", -2, -1, _COEFFICIENTS),)),
    (keras.layers.Dense, (("kernel", -2, -1, _COEFFICIENTS),)),
)

# Layers that hold no kernel to penalise and are left as they are by apply_ssl(model).
_PASS_THROUGH = (
    keras.layers.InputLayer, keras.layers.BatchNormalization, keras.layers.Activation,
    keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU,
    keras.layers.Softmax, keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply,
    keras.layers.Average, keras.layers.Maximum, keras.layers.Minimum,
    keras.layers.Concatenate, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute,
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D,
    keras.layers.UpSampling1D, keras.layers.UpSampling2D, keras.layers.UpSampling3D,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D, keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D, keras.layers.GlobalAveragePooling3D,
    keras.layers.Rescaling, keras.layers.Identity,
)


def _supported_names() -> list[str]:
    return [cls.__name__ for cls, _ in _KERNELS]


def kernel_specs(layer) -> tuple | None:
    """The (attribute, in_axis, out_axis, coefficients) of `layer`'s kernels, or None."""
    for cls in type(layer).__mro__:
        for known, specs in _KERNELS:
            if cls is known:
                return specs
    return None


def _check_coefficients(values: dict, where: str = "") -> dict[str, float]:
    out = {}
    for name in _COEFFICIENTS:
        label = f"{where}{name}"
        out[name] = _validate_coefficient(values.get(name, 0.0), label)
    return out


class _Penalty:
    """The group Lasso of one variable (plus the layer's own regulariser, e.g. L2).

    While `owner.ssl_penalty_gradient` is False (set by ProximalGroupLasso for the length of
    a fit), the group Lasso is still in the loss value but contributes no gradient: the
    proximal step applies it instead.
    """

    def __init__(self, owner, regularizer, own=None):
        self.owner = owner
        self.regularizer = regularizer
        self.own = own

    def __call__(self, x):
        loss = self.regularizer(x)
        if not self.owner.ssl_penalty_gradient:
            loss = ops.stop_gradient(loss)
        return loss if self.own is None else self.own(x) + loss


@keras.saving.register_keras_serializable(package="ssl_keras")
class StructuredSparsity(keras.layers.Wrapper):
    """A layer under group Lasso: the layer's outputs, plus the group norms of its kernels.

    The wrapped layer computes exactly what it computes alone; each kernel gets a `GroupLasso`
    (on top of any regulariser it already has), so `model.losses` gains, per kernel,

    `filters * sum_n ||W[..., :, n]|| + channels * sum_c ||W[..., c, :]||
     + shapes * sum_{s, c} ||W[s..., c, :]|| + borders * sum_bands ||band|| + depth * ||W||`
    (the border bands: see `GroupLasso`)

    Supported: Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose (in_axis=-1, out_axis=-2),
    DepthwiseConv1D/2D (filters and channels both act on the channel groups, with the larger
    coefficient), SeparableConv1D/2D (depthwise kernel: channels, shapes; pointwise kernel:
    filters, channels), and their subclasses.

    Args:
        layer: the Keras layer to wrap.
        filters: coefficient of the filter-wise groups, >= 0.
        channels: coefficient of the channel-wise groups, >= 0.
        shapes: coefficient of the shape-wise groups, >= 0.
        depth: coefficient of the whole-kernel group, >= 0.
        borders: coefficient of the nested border bands of a Conv1D/2D/3D kernel (thin()
            crops zero border rows / columns; other layers ignore it), >= 0.
        normalize: multiply each group norm by sqrt(group size) (classic group Lasso).
        epsilon: added under every square root, > 0.
        **kwargs: Layer arguments; `name` defaults to the wrapped layer's name.

    Example:
    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)),
    ...     StructuredSparsity(keras.layers.Conv2D(20, 5), filters=1e-4, channels=1e-4),
    ...     keras.layers.Flatten(),
    ...     keras.layers.Dense(10),
    ... ])
    """

    def __init__(self, layer, filters=0.0, channels=0.0, shapes=0.0, depth=0.0, borders=0.0,
                 normalize=False, epsilon=1e-8, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "`layer` must be a Keras layer instance. "
                f"Received: layer={layer!r} (of type {type(layer).__name__})"
            )
        if isinstance(layer, StructuredSparsity):
            raise ValueError(
                f"Layer '{layer.name}' is already wrapped by StructuredSparsity; wrap the "
                f"inner layer once. Received: layer={layer.name!r}"
            )
        if kernel_specs(layer) is None:
            raise ValueError(
                f"Layer '{layer.name}' of class {type(layer).__name__} has no kernel that "
                f"group Lasso knows how to group. Expected one of {_supported_names()} (or a "
                "subclass). For another layer, put `GroupLasso(...)` on its kernel "
                f"regularizer by hand. Received: layer={type(layer).__name__}"
            )
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        coefficients = _check_coefficients({"filters": filters, "channels": channels,
                                            "shapes": shapes, "borders": borders,
                                            "depth": depth})
        self.filters = coefficients["filters"]
        self.channels = coefficients["channels"]
        self.shapes = coefficients["shapes"]
        self.borders = coefficients["borders"]
        self.depth = coefficients["depth"]
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool. Received: normalize={normalize!r}")
        self.normalize = normalize
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"`epsilon` must be a finite float > 0. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        self._penalties = {}
        self.ssl_penalty_gradient = True

    @property
    def ssl_inner_layer(self):
        """The wrapped layer (what the graph and thin() analyse under the wrapper's name)."""
        return self.layer

    def ssl_regularizers(self) -> dict[str, GroupLasso]:
        """The group Lasso of each kernel attribute with a non-zero coefficient."""
        values = {"filters": self.filters, "channels": self.channels, "shapes": self.shapes,
                  "borders": self.borders, "depth": self.depth,
                  "depthwise": max(self.filters, self.channels)}
        out = {}
        for attribute, in_axis, out_axis, names in kernel_specs(self.layer):
            kwargs = {}
            for name in names:
                target = "channels" if name == "depthwise" else name
                kwargs[target] = values[name]
            if not any(kwargs.values()):
                continue
            out[attribute] = GroupLasso(**kwargs, normalize=self.normalize,
                                        epsilon=self.epsilon, in_axis=in_axis,
                                        out_axis=out_axis)
        return out

    def ssl_penalized_weights(self) -> list[tuple]:
        """(variable, GroupLasso) for every penalised kernel of the built layer."""
        if not self.built:
            return []
        return [(getattr(self.layer, a), r) for a, r in self._penalties.items()]

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        self._attach()
        self.built = True

    def _attach(self):
        if self._penalties:
            return
        self._penalties = self.ssl_regularizers()
        for attribute, regularizer in self._penalties.items():
            variable = getattr(self.layer, attribute)
            variable.regularizer = _Penalty(self, regularizer, variable.regularizer)

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "channels": self.channels,
                       "shapes": self.shapes, "borders": self.borders, "depth": self.depth,
                       "normalize": self.normalize, "epsilon": self.epsilon})
        return config


def _variable(model, layer_path: str, weight: str):
    """The variable `weight` of the layer at `layer_path` ("outer/inner") in `model`."""
    try:
        layer = find_layer(model, layer_path)
    except ValueError:
        raise ValueError(
            f"The group refers to layer '{layer_path}', which is not in model "
            f"'{model.name}'. Received: layer={layer_path!r}"
        ) from None
    if isinstance(layer, StructuredSparsity):
        layer = layer.ssl_inner_layer
    for variable in layer.weights:
        if variable.name == weight:
            return variable
    raise ValueError(
        f"Layer '{layer_path}' has no weight named '{weight}'. Expected one of "
        f"{[v.name for v in layer.weights]}. Received: weight={weight!r}"
    )


def _current_value(variable):
    scope = keras.src.backend.get_stateless_scope()
    symbolic = keras.src.backend.common.symbolic_scope.in_symbolic_scope()
    if keras.src.backend.in_stateless_scope() and not symbolic:
        value = scope.get_current_value(variable)
        if value is not None:
            return value
    return variable


class CoupledTerms:
    """The coupled groups of a model as matrices: per (variable, axis), `M @ square_sums`.

    For every distinct (layer, weight, axis) of the groups' slices, `matrix[g, i]` is 1 when
    position `i` along `axis` belongs to group `g`; the square sum of group `g` is
    `sum_terms matrix[g] @ sum_{other axes} W**2`.
    """

    def __init__(self, model, groups):
        self.groups = groups
        self.coefficients = np.array([g["coefficient"] for g in groups], dtype=np.float32)
        keyed = {}
        for g_index, group in enumerate(groups):
            for piece in group["slices"]:
                variable = _variable(model, piece["layer"], piece["weight"])
                rank = len(variable.shape)
                axis = piece["axis"]
                if not isinstance(axis, int) or not -rank <= axis < rank:
                    raise ValueError(
                        f"Group '{group['id']}': axis {axis} is out of range for weight "
                        f"'{piece['layer']}/{piece['weight']}' of rank {rank}. "
                        f"Received: axis={axis!r}"
                    )
                axis %= rank
                key = (piece["layer"], piece["weight"], axis)
                if key not in keyed:
                    keyed[key] = (variable, axis, np.zeros(
                        (len(groups), variable.shape[axis]), dtype=np.float32))
                index = np.asarray(piece["index"], dtype=np.int64)
                if index.size and (index.min() < 0 or index.max() >= variable.shape[axis]):
                    raise ValueError(
                        f"Group '{group['id']}': index out of range for axis {axis} of "
                        f"'{piece['layer']}/{piece['weight']}' (size "
                        f"{variable.shape[axis]}). Received: index={piece['index']!r}"
                    )
                keyed[key][2][g_index, index] = 1.0
        self.terms = list(keyed.values())
        # The same membership as (group, position) pairs, for the NumPy side; a variable
        # may appear in several terms (a Dense kernel as producer and as consumer).
        self._pairs = [np.nonzero(matrix) for _, _, matrix in self.terms]
        self._variables = []
        self._slot = []
        slot_of = {}  # id(variable) -> its index in self._variables
        for variable, _, _ in self.terms:
            if id(variable) not in slot_of:
                slot_of[id(variable)] = len(self._variables)
                self._variables.append(variable)
            self._slot.append(slot_of[id(variable)])

    def square_sums(self, read=lambda v: v):
        """Per-group square sums as a keras.ops tensor."""
        total = None
        for variable, axis, matrix in self.terms:
            x = ops.cast(read(variable), "float32")
            axes = tuple(a for a in range(len(x.shape)) if a != axis)
            per_index = ops.sum(ops.square(x), axis=axes) if axes else ops.square(x)
            part = ops.matmul(ops.convert_to_tensor(matrix), per_index)
            total = part if total is None else total + part
        return total

    def values(self) -> list[np.ndarray]:
        """The current value of every variable of the groups, NumPy."""
        return [np.asarray(ops.convert_to_numpy(v)) for v in self._variables]

    def norms(self, values=None) -> np.ndarray:
        """Per-group L2 norms, NumPy, without epsilon."""
        values = self.values() if values is None else values
        sums = np.zeros(len(self.groups), dtype=np.float64)
        for (_, axis, _), (groups, positions), slot in zip(self.terms, self._pairs,
                                                            self._slot, strict=True):
            x = values[slot]
            axes = tuple(a for a in range(x.ndim) if a != axis)
            per_index = np.sum(np.square(x, dtype=np.float64), axis=axes)
            sums += np.bincount(groups, weights=per_index[positions], minlength=len(sums))
        return np.sqrt(sums)

    def scale(self, factors: np.ndarray, values=None) -> None:
        """Multiplies every slice of group g by factors[g] (in place, on the variables)."""
        values = self.values() if values is None else values
        multipliers = [None] * len(self._variables)
        for (_, axis, matrix), (groups, positions), slot in zip(
                self.terms, self._pairs, self._slot, strict=True):
            # A position may belong to several groups (a channel and a residual branch):
            # their factors multiply.
            per_index = np.ones(matrix.shape[1], dtype=np.float64)
            np.multiply.at(per_index, positions, factors[groups])
            if np.all(per_index == 1.0):
                continue
            shape = [1] * values[slot].ndim
            shape[axis] = -1
            per_index = per_index.reshape(shape)
            old = multipliers[slot]
            multipliers[slot] = per_index if old is None else old * per_index
        for variable, x, multiplier in zip(self._variables, values, multipliers, strict=True):
            if multiplier is not None:
                variable.assign((x * multiplier).astype(x.dtype))


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
        ssl_groups: the coupled groups, a list of dicts with "id", "coefficient", "slices".
        ssl_epsilon: added under every square root, > 0.
    """

    def __init__(self, *args, ssl_groups=None, ssl_epsilon=1e-8, **kwargs):
        super().__init__(*args, **kwargs)
        self.ssl_groups = list(ssl_groups or [])
        self.ssl_epsilon = float(ssl_epsilon)
        self.ssl_penalty_gradient = True
        self._ssl_terms = None

    def ssl_coupled_terms(self) -> CoupledTerms | None:
        if not self.ssl_groups:
            return None
        if self._ssl_terms is None:
            self._ssl_terms = CoupledTerms(self, self.ssl_groups)
        return self._ssl_terms

    def ssl_coupled_loss(self):
        """The coupled group-Lasso term (a scalar tensor), 0 without groups."""
        terms = self.ssl_coupled_terms()
        if terms is None:
            return ops.convert_to_tensor(0.0)
        sums = terms.square_sums(read=_current_value)
        norms = ops.sqrt(sums + self.ssl_epsilon)
        loss = ops.sum(ops.convert_to_tensor(terms.coefficients) * norms)
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
        epsilon = config.pop("ssl_epsilon", 1e-8)
        model = super().from_config(config, custom_objects=custom_objects)
        model.ssl_groups = list(groups)
        model.ssl_epsilon = float(epsilon)
        model._ssl_terms = None
        model.ssl_penalty_gradient = True
        return model


def set_penalty_gradient(model, enabled: bool) -> bool:
    """Turns the gradient of every SSL penalty of `model` on or off (the loss value stays).

    Used by ProximalGroupLasso: with the proximal step doing the shrinkage, the loss must not
    also push the groups with the subgradient. The train function is traced with the setting
    in force, so the caller rebuilds it. Returns whether any setting changed.
    """
    changed = False
    owners = [layer for layer in model._flatten_layers(include_self=True)
              if isinstance(layer, (StructuredSparsity, SSLModel))]
    for owner in owners:
        if owner.ssl_penalty_gradient != enabled:
            owner.ssl_penalty_gradient = enabled
            changed = True
    return changed


def _settings(layers, filters, channels, shapes, depth, borders) -> tuple[dict, dict]:
    """Validates the global coefficients and the `layers=` overrides."""
    defaults = _check_coefficients({"filters": filters, "channels": channels, "shapes": shapes,
                                    "borders": borders, "depth": depth})
    if layers is None:
        return defaults, {}
    if not isinstance(layers, dict):
        raise ValueError(
            "`layers` must be a dict from layer name to a dict of coefficients (or None to "
            f"leave the layer unpenalised). Received: layers={layers!r}"
        )
    overrides = {}
    for name, value in layers.items():
        if value is None:
            overrides[name] = None
            continue
        if not isinstance(value, dict):
            raise ValueError(
                f"`layers['{name}']` must be a dict of coefficients ({list(_COEFFICIENTS)}) "
                f"or None. Received: layers[{name!r}]={value!r}"
            )
        unknown = sorted(set(value) - set(_COEFFICIENTS))
        if unknown:
            raise ValueError(
                f"`layers['{name}']` has unknown keys {unknown}. Expected keys among "
                f"{list(_COEFFICIENTS)}. Received: layers[{name!r}]={value!r}"
            )
        overrides[name] = _check_coefficients({**defaults, **value}, where=f"layers[{name!r}].")
    return defaults, overrides


def _coefficients_for(name, defaults, overrides) -> dict[str, float]:
    if name in overrides:
        value = overrides[name]
        return dict.fromkeys(_COEFFICIENTS, 0.0) if value is None else value
    return defaults


def _clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


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


def _model_layers_by_name(model) -> dict:
    return {layer.name: layer for layer in model.layers}


def apply_ssl(to_wrap, filters=0.0, channels=0.0, shapes=0.0, depth=0.0, coupled=True,
              layers=None, borders=0.0):
    """Puts a layer or a whole model under the group Lasso of Structured Sparsity Learning.

    Given a layer, returns `StructuredSparsity(layer, filters, channels, shapes, depth,
    borders)`.

    Given a Sequential or functional model, returns a new model (the input is not modified)
    with the same layers, names and weights, in which every supported layer (Dense, Conv*,
    Conv*Transpose, DepthwiseConv*, SeparableConv*) is a `StructuredSparsity` wrapper;
    pass-through layers (BatchNormalization, pooling, activations, Add, Flatten, ...) are
    cloned as they are, and any other layer with weights raises an error.

    - `coupled=False`: the method's per-layer groups; each wrapper adds
      `filters * sum ||filter|| + channels * sum ||channel|| + shapes * sum ||shape||
      + borders * sum ||border band|| + depth * ||kernel||`. Returns the same model type as
      the input.
    - `coupled=True`: returns an `SSLModel`. Every non-blocked group of
      `ssl_keras.removable_groups(model)` (one channel: the producer's filter, its BatchNorm
      gamma, every consumer's input channel, across layers) is penalised with ONE norm over
      all its penalised slices, with coefficient `filters` (of the group's source layer)
      `+ channels` (the largest among its consumer layers). `shapes` and `borders` stay per
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
        depth: coefficient of the depth groups (whole kernel; residual branch when coupled).
        coupled: one norm per coupled group across layers (models only).
        layers: a dict from layer name to a dict of coefficients that overrides the global
            ones for that layer (missing keys take the global values), or to None to leave
            the layer unpenalised. Models only.
        borders: coefficient of the nested border bands of Conv1D/2D/3D kernels (the
            outer 1, 2, ... rows / columns of each side, across channels and filters): zero
            border rows / columns are cropped by `thin`, so the kernel gets smaller.

    Returns:
        A `StructuredSparsity` layer, or a new model (an `SSLModel` when `coupled=True`).

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
        return StructuredSparsity(to_wrap, filters=filters, channels=channels, shapes=shapes,
                                  depth=depth, borders=borders)
    raise ValueError(
        "`to_wrap` must be a Keras layer, a Sequential model or a functional model. "
        f"Received: to_wrap={to_wrap!r} (of type {type(to_wrap).__name__})"
    )


def _apply_to_model(model, filters, channels, shapes, depth, coupled, layers, borders):
    _check_model(model)
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
        known = kernel_specs(layer) is not None or isinstance(layer, _PASS_THROUGH) \
            or lookup(layer) is not None
        if not known and layer.weights and overrides.get(name, 0) is not None:
            raise ValueError(
                f"Layer '{name}' of class {type(layer).__name__} has weights but apply_ssl does "
                f"not know how to group them. Supported: {_supported_names()} (or subclasses); "
                f"pass-through: BatchNormalization, pooling, activations, merges, reshapes. "
                f"Pass `layers={{{name!r}: None}}` to keep it as it is, unpenalised. "
                f"Received: layer={name!r} ({type(layer).__name__})"
            )

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
    groups += _depth_groups(wrapped, defaults, overrides)
    if isinstance(wrapped, keras.Sequential):
        inputs, outputs = wrapped.inputs[0], wrapped.outputs[0]
    else:
        inputs, outputs = wrapped.input, wrapped.output
    result = SSLModel(inputs=inputs, outputs=outputs, name=model.name,
                      ssl_groups=groups)
    return result


def _coupled_groups(model, defaults, overrides) -> list[dict]:
    """removable_groups(model) as penalised groups with a coefficient (blocked ones skipped)."""
    settings = [defaults] + [v for v in overrides.values() if v is not None]
    if not any(v["filters"] or v["channels"] for v in settings):
        return []
    from ssl_keras.graph import removable_groups

    out = []
    for group in removable_groups(model):
        if group.get("blocked"):
            continue
        slices = [{k: s[k] for k in ("layer", "weight", "axis", "index")}
                  for s in group["slices"] if s.get("penalize")]
        if not slices:
            continue
        top = lambda path: path.split("/")[0]
        producer = {top(s["layer"]) for s in group["slices"] if s["role"] == "producer"}
        consumers = {top(s["layer"]) for s in group["slices"] if s["role"] == "consumer"}
        filt = max((_coefficients_for(n, defaults, overrides)["filters"] for n in producer),
                   default=0.0)
        chan = max((_coefficients_for(n, defaults, overrides)["channels"] for n in consumers),
                   default=0.0)
        coefficient = filt + chan
        if coefficient == 0.0:
            continue
        out.append({"id": group["id"], "kind": "channel", "layer": top(group["source"]),
                    "coefficient": coefficient, "slices": slices})
    return out


def _history(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def _ancestors(tensor) -> set[int]:
    seen, stack = set(), [tensor]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        _, node = _history(x)
        stack.extend(keras.tree.flatten(node.input_tensors))
    return seen


def residual_branches(model) -> list[dict]:
    """The operands of every Add of a functional model, with the layers on each branch.

    A branch is every layer between the tensors all operands share (the block's input) and
    the operand. Returns a list of {"add": name, "operand": i, "layers": [names]}.
    """
    out = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Add):
            continue
        for node in layer._inbound_nodes:
            operands = keras.tree.flatten(node.input_tensors)
            if len(operands) < 2:
                continue
            common = set.intersection(*[_ancestors(t) for t in operands])
            for i, operand in enumerate(operands):
                names, seen, stack = [], set(), [operand]
                while stack:
                    x = stack.pop()
                    if id(x) in common or id(x) in seen:
                        continue
                    seen.add(id(x))
                    operation, parent = _history(x)
                    if operation.name not in names:
                        names.append(operation.name)
                    stack.extend(keras.tree.flatten(parent.input_tensors))
                out.append({"add": layer.name, "operand": i, "layers": names[::-1]})
    return out


def _depth_slices(model, names) -> list[dict]:
    slices = []
    for name in names:
        layer = model.get_layer(name)
        inner = layer.ssl_inner_layer if isinstance(layer, StructuredSparsity) else layer
        if isinstance(layer, StructuredSparsity):
            attributes = [spec[0] for spec in kernel_specs(inner)]
        elif isinstance(inner, keras.layers.BatchNormalization) and inner.scale:
            attributes = ["gamma"]
        else:
            continue
        for attribute in attributes:
            variable = getattr(inner, attribute)
            slices.append({"layer": name, "weight": variable.name, "axis": 0,
                           "index": list(range(variable.shape[0]))})
    return slices


def _operand_batchnorm(model, branch):
    """The BatchNormalization whose output is the branch's Add operand, or None.

    Layers without weights (activations) between that BatchNorm and the Add are looked
    through: with gamma = beta = 0 they receive 0.
    """
    for name in reversed(branch["layers"]):
        layer = model.get_layer(name)
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer if (layer.scale or layer.center) else None
        if layer.weights:
            return None
    return None


def _depth_groups(wrapped, defaults, overrides) -> list[dict]:
    """One group per residual branch (every Add operand but the shortcut).

    A branch that ends in BatchNormalization is penalised through that layer's gamma and beta
    only: BatchNorm divides by the batch's standard deviation, so the branch's kernels (and
    the earlier gammas) can shrink without changing the training-mode output; penalising them
    only drives them towards BatchNorm's epsilon while the moving statistics lag behind (the
    inference-mode network breaks). With gamma = beta = 0 the branch outputs exactly 0 in both
    modes; its kernels are then listed under "zero_with": the callbacks zero them together
    with the group, so that thin() drops the branch. A branch without a final BatchNorm is
    penalised on all its kernels and BatchNorm gammas.
    """
    by_add = {}
    for branch in residual_branches(wrapped):
        by_add.setdefault(branch["add"], []).append(branch)
    out = []
    for add, branches in by_add.items():
        coefficient = _coefficients_for(add, defaults, overrides)["depth"]
        if coefficient == 0.0:
            continue
        weighted = [(b, _depth_slices(wrapped, b["layers"])) for b in branches]
        shortcut = min(range(len(weighted)),
                       key=lambda i: len({s["layer"] for s in weighted[i][1]}))
        for i, (branch, slices) in enumerate(weighted):
            if i == shortcut or not slices:
                continue
            group = {"id": f"depth:{add}:{branch['operand']}", "kind": "depth",
                     "layer": add, "coefficient": coefficient, "slices": slices}
            bn = _operand_batchnorm(wrapped, branch)
            if bn is not None:
                params = [v for v, on in ((bn.gamma, bn.scale), (bn.beta, bn.center)) if on]
                group["slices"] = [{"layer": bn.name, "weight": v.name, "axis": 0,
                                    "index": list(range(v.shape[0]))} for v in params]
                group["zero_with"] = [s for s in slices if s["layer"] != bn.name]
            out.append(group)
    return out


def strip_ssl(model):
    """Returns a plain copy of `model`: original layer classes, same weights, no group Lasso.

    Every `StructuredSparsity` wrapper is replaced by a fresh copy of the layer it wraps (same
    name, same config, same weights); an `SSLModel` becomes a plain functional model. The
    input is not modified. The result is ready for `thin()` and export.

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
        return inner
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a Keras model or a StructuredSparsity layer. "
            f"Received: model={model!r} (of type {type(model).__name__})"
        )
    _check_model(model, argument="model")

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer
        if isinstance(layer, StructuredSparsity):
            inner = layer.ssl_inner_layer
            config = inner.get_config()
            config["name"] = layer.name
            return inner.__class__.from_config(config)
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
