"""Tests of ssl_keras.registry: specs, their validation, registration and MRO lookup."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
from keras import layers as L  # noqa: E402

import ssl_keras  # noqa: E402
from ssl_keras import registry  # noqa: E402
from ssl_keras.registry import Kind, LayerSpec, WeightSlice  # noqa: E402


class MyLayer(keras.layers.Layer):
    def call(self, x):
        return x


def test_public_names():
    assert ssl_keras.register_layer is registry.register_layer
    assert ssl_keras.LayerSpec is LayerSpec and ssl_keras.Kind is Kind
    assert ssl_keras.WeightSlice is WeightSlice


def test_lookup_follows_the_mro():
    class MyDense(L.Dense):
        pass

    assert registry.lookup(MyDense) == (L.Dense, registry.lookup(L.Dense)[1])
    assert registry.lookup(MyDense(2))[0] is L.Dense
    assert registry.lookup(MyLayer) is None
    assert registry.lookup(L.Conv2D)[1].kind is Kind.PRODUCER
    assert registry.lookup(L.BatchNormalization)[1].kind is Kind.TIED


def test_every_kind_is_used_by_a_builtin():
    kinds = {registry.lookup(c)[1].kind for c in registry.builtin_classes()}
    assert kinds == set(Kind)
    assert set(registry.builtin_classes()) <= set(registry.registered_classes())


def test_register_and_subclass_override(clean_registry):
    registry.register_layer(MyLayer, LayerSpec(Kind.PASSTHROUGH))

    class Child(MyLayer):
        pass

    assert registry.lookup(Child)[0] is MyLayer
    spec = LayerSpec(Kind.BLOCK, reason="mine")
    registry.register_layer(Child, spec)
    assert registry.lookup(Child) == (Child, spec)
    registry.register_layer(MyLayer, LayerSpec(Kind.BLOCK, reason="x"), overwrite=True)
    assert registry.lookup(MyLayer)[1].kind is Kind.BLOCK
    assert MyLayer in registry.registered_classes()
    assert MyLayer not in registry.builtin_classes()


def test_register_errors(clean_registry):
    with pytest.raises(ValueError, match=r"`cls` must be a layer class.*Received: cls=3"):
        registry.register_layer(3, LayerSpec(Kind.PASSTHROUGH))
    with pytest.raises(ValueError, match=r"`cls` must be a layer class.*Received: cls=<class "
                       r"'int'>"):
        registry.register_layer(int, LayerSpec(Kind.PASSTHROUGH))
    with pytest.raises(ValueError, match=r"`spec` must be an ssl_keras.registry.LayerSpec.*"
                       r"Received: spec='passthrough'"):
        registry.register_layer(MyLayer, "passthrough")
    with pytest.raises(ValueError, match=r"Dense is already registered. Pass overwrite=True"):
        registry.register_layer(L.Dense, LayerSpec(Kind.PASSTHROUGH))


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight=""), r"`weight` must be a non-empty variable name.*Received: weight=''"),
    (dict(weight="k", axis=1.5), r"`axis` must be an integer. Received: axis=1.5"),
    (dict(weight="k", axis=True), r"`axis` must be an integer. Received: axis=True"),
    (dict(weight="k", axis=0, block=0), r"`block` must be a positive integer.*block=0"),
    (dict(weight="k", axis=0, block=""), r"`block` must be a positive integer.*block=''"),
    (dict(weight="k", penalize="yes"), r"`penalize` must be a bool. Received: penalize='yes'"),
    (dict(weight="k", optional=1), r"`optional` must be a bool. Received: optional=1"),
])
def test_weight_slice_validation(kwargs, match):
    kwargs.setdefault("axis", 0)
    with pytest.raises(ValueError, match=match):
        WeightSlice(**kwargs)


_K = WeightSlice("kernel", -1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="block", reason="r"), r"`kind` must be a member of .*Kind.*Received: "
                                     r"kind='block'"),
    (dict(kind=Kind.PRODUCER), r"A PRODUCER spec needs.*Received: produces=\(\)"),
    (dict(kind=Kind.PRODUCER, produces=("kernel",)), r"`produces` must be a tuple of "
                                                     r"WeightSlice"),
    (dict(kind=Kind.TIED, produces=(_K,)), r"only meaningful for Kind.PRODUCER"),
    (dict(kind=Kind.PASSTHROUGH, tied=(_K,)), r"`tied` and `expand` are only meaningful for "
                                              r"Kind.TIED"),
    (dict(kind=Kind.PASSTHROUGH, expand=2), r"only meaningful for Kind.TIED"),
    (dict(kind=Kind.BLOCK), r"A BLOCK spec needs a `reason`.*Received: reason=None"),
    (dict(kind=Kind.PASSTHROUGH, reason="r"), r"`reason` is only meaningful for Kind.BLOCK"),
    (dict(kind=Kind.PASSTHROUGH, check=3), r"`check` must be callable. Received: check=3"),
    (dict(kind=Kind.PRODUCER, produces=None), r"`produces` must be a tuple of WeightSlice\. "
                                              r"Received: produces=None"),
    (dict(kind=Kind.TIED, expand=None), r"`expand` must be a positive integer or the name"),
    (dict(kind=Kind.TIED, expand=0), r"`expand` must be .*Received: expand=0"),
    (dict(kind=Kind.BLOCK, reason=5), r"`reason` must be a string. Received: reason=5"),
    (dict(kind=Kind.PASSTHROUGH, affine_safe="no"), r"`affine_safe` must be a bool"),
])
def test_layer_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerSpec(**kwargs)


def test_layer_spec_accepts_a_single_slice():
    spec = LayerSpec(Kind.PRODUCER, produces=_K)
    assert spec.produces == (_K,)


def test_unregistered_message_names_everything():
    message = registry.unregistered_message("outer/mine", MyLayer())
    assert "Layer 'outer/mine' (class test_registry.MyLayer)" in message or \
        "Layer 'outer/mine' (class tests.test_registry.MyLayer)" in message
    assert "Supported classes" in message and "registered layer classes (e.g. Dense" in message
    assert "registered_classes()" in message and len(message) < 600  # no list of ~85 names
    assert "ssl_keras.register_layer(MyLayer, ssl_keras.LayerSpec(" in message


def test_block_size_attribute_must_exist(clean_registry):
    from ssl_keras.graph import removable_groups

    class Scaled(MyLayer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), name="w")

        def call(self, x):
            return x * self.w

    # registered itself: a subclass that overrides call() does not inherit a spec
    registry.register_layer(Scaled, LayerSpec(
        Kind.TIED, tied=(WeightSlice("w", 0),), expand="multiplier"))
    inputs = keras.Input((3,))
    x = Scaled(name="s")(L.Dense(2, name="d")(inputs))
    model = keras.Model(inputs, L.Dense(1)(x))
    with pytest.raises(ValueError, match=r"reads the attribute `multiplier` as a block size.*"
                       r"Received: multiplier=None"):
        removable_groups(model)


def test_docstring_examples(clean_registry):
    import doctest

    from ssl_keras import _registry_spec, graph

    for module in (registry, _registry_spec, graph):
        result = doctest.testmod(module, extraglobs={"keras": keras}, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, (module.__name__, result)


@pytest.mark.parametrize("name", ["tflite_bench.runner", "examples.report", "examples.datasets",
                                  "ssl_keras.structures", "ssl_keras.regularizers"])
def test_self_contained_docstring_examples_of_other_modules(name):
    """The modules whose docstring examples run on their own (found by mutation testing: the
    speedup interval's example was never run)."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, (name, result)


def test_numpy_bools_are_bools():
    import numpy as np

    assert WeightSlice("k", 0, penalize=np.True_).penalize is True
    assert LayerSpec(Kind.PASSTHROUGH, affine_safe=np.False_).affine_safe is False
