"""Tests of the validation of user-supplied coupled groups (ssl_keras/_groups_check.py).

Every malformed group is passed to each public entry point that takes `groups=` (thin,
thinning_plan, zero_groups, the callbacks through freeze_zero_groups) and must raise a
ValueError naming the group, the slice, what was expected and what was received.
"""

import copy
import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers as L  # noqa: E402

from examples.models import lenet, resnet  # noqa: E402
from ssl_keras import registry  # noqa: E402
from ssl_keras._groups_check import ROLES, validate_groups  # noqa: E402
from ssl_keras.callbacks import freeze_zero_groups  # noqa: E402
from ssl_keras.graph import removable_groups  # noqa: E402
from ssl_keras.thin import thin, thinning_plan, zero_groups  # noqa: E402
from ssl_keras.wrap import apply_ssl  # noqa: E402
from tests.architectures import (  # noqa: E402
    LAYER_CASES,
    conv_bn_relu_conv,
    zero_filters,
    zero_random_groups,
)

ENTRY_POINTS = {
    "thin": lambda model, groups: thin(model, groups=groups),
    "thinning_plan": lambda model, groups: thinning_plan(model, groups=groups),
    "zero_groups": lambda model, groups: zero_groups(model, groups=groups),
    "freeze_zero_groups": lambda model, groups: freeze_zero_groups(model, groups=groups),
}
THIN_ONLY = ("thin", "thinning_plan", "zero_groups")  # the callbacks do not read "role"


def _group():
    """A valid hand-written group of conv_bn_relu_conv (conv1 kernel is 3x3x3x6)."""
    return {
        "id": "conv1:3", "source": "conv1", "channel": 3, "blocked": None,
        "slices": [
            {"layer": "conv1", "weight": "kernel", "axis": -1, "index": [3], "role": "producer",
             "penalize": True},
            {"layer": "conv1", "weight": "bias", "axis": 0, "index": [3],
             "role": "producer_bias", "penalize": False},
            {"layer": "bn1", "weight": "gamma", "axis": 0, "index": [3], "role": "tied"},
            {"layer": "conv2", "weight": "kernel", "axis": -2, "index": [3], "role": "consumer"},
        ]}


def _set(path, value):
    """A function making `[group]` with the key at `path` set to `value` (or deleted)."""
    def make():
        groups = [_group()]
        *head, last = path
        target = groups
        for key in head:
            target = target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
        return groups
    return make


_DELETE = object()
S0 = (0, "slices", 0)
_S0 = r"Group 'conv1:3', slices\[0\] \(conv1/kernel\): "

# (name, make groups, message regex, entry points)
CASES = [
    ("not_a_list", lambda: "all",
     r"`groups` must be a list of group dicts .*Received: groups='all' \(of type str\)", None),
    ("group_not_a_dict", lambda: [["conv1:3"]],
     r"groups\[0\] must be a dict with 'id' and 'slices' .*Received: \['conv1:3'\] "
     r"\(of type list\)", None),
    ("missing_id", _set((0, "id"), _DELETE),
     r"groups\[0\] must be a dict with 'id' and 'slices' .*: missing \['id'\]\. "
     r"Received keys: \[", None),
    ("missing_slices", _set((0, "slices"), _DELETE),
     r"groups\[0\] must be a dict with 'id' and 'slices' .*: missing \['slices'\]", None),
    ("id_not_a_string", _set((0, "id"), 3),
     r"groups\[0\]: 'id' must be a string .*Received: id=3 \(of type int\)", None),
    ("duplicate_id", lambda: [_group(), _group()],
     r"Group 'conv1:3': ids must be unique\. Received: the same id at groups\[0\] and "
     r"groups\[1\]", None),
    ("slices_not_a_list", _set((0, "slices"), {"layer": "conv1"}),
     r"Group 'conv1:3': 'slices' must be a list of slice dicts\. Received: slices=\{", None),
    ("slice_not_a_dict", _set(S0, "conv1/kernel"),
     r"Group 'conv1:3', slices\[0\]: a slice must be a dict with keys \['layer', 'weight', "
     r"'axis', 'index'\]\. Received: 'conv1/kernel' \(of type str\)", None),
    ("missing_weight", _set((*S0, "weight"), _DELETE),
     r"Group 'conv1:3', slices\[0\]: missing key\(s\) \['weight'\]\. Expected keys "
     r"\['layer', 'weight', 'axis', 'index'.*\]\. Received keys: \['layer', 'axis'", None),
    ("missing_role", _set((*S0, "role"), _DELETE),
     r"Group 'conv1:3', slices\[0\]: missing key\(s\) \['role'\]\. Expected keys "
     r"\['layer', 'weight', 'axis', 'index', 'role'\]", THIN_ONLY),
    ("unknown_layer", _set((*S0, "layer"), "ghost"),
     r"Group 'conv1:3', slices\[0\] \(ghost/kernel\): the model '\w+' has no layer 'ghost'\. "
     r"Expected a layer name .*Received: layer='ghost'", None),
    ("unknown_nested_layer", _set((*S0, "layer"), "conv1/inner"),
     r"has no layer 'conv1/inner'\. Expected a layer name \('outer/inner' inside a nested "
     r"model\)\. Received: layer='conv1/inner'", None),
    ("layer_not_a_string", _set((*S0, "layer"), 1),
     r"Group 'conv1:3', slices\[0\]: 'layer' and 'weight' must be strings .*Received: "
     r"layer=1, weight='kernel'", None),
    ("unknown_weight", _set((*S0, "weight"), "gamma"),
     r"Group 'conv1:3', slices\[0\] \(conv1/gamma\): layer 'conv1' has no weight "
     r"'gamma'\. Expected one of \['bias', 'kernel'\]\. Received: weight='gamma'", None),
    ("bool_axis", _set((*S0, "axis"), True),
     _S0 + r"'axis' must be an integer \(not a bool\) in \[-4, 4\) for a weight of shape "
           r"\(3, 3, 3, 6\)\. Received: axis=True \(of type bool\)", None),
    ("float_axis", _set((*S0, "axis"), 1.0),
     _S0 + r"'axis' must be an integer .*Received: axis=1\.0 \(of type float\)", None),
    ("axis_too_large", _set((*S0, "axis"), 4),
     _S0 + r"'axis' must be an integer \(not a bool\) in \[-4, 4\) .*Received: axis=4 ", None),
    ("axis_too_negative", _set((*S0, "axis"), -5),
     _S0 + r"'axis' must be an integer .* in \[-4, 4\) .*Received: axis=-5 ", None),
    ("index_not_a_list", _set((*S0, "index"), 3),
     _S0 + r"'index' must be a list of positions along axis -1\. Received: index=3 "
           r"\(of type int\)", None),
    ("bool_index", _set((*S0, "index"), [True]),
     _S0 + r"'index' must list integers \(not bools\) in \[0, 6\) \(axis -1 of shape "
           r"\(3, 3, 3, 6\)\)\. Received: True \(of type bool\) in index=\[True\]", None),
    ("float_index", _set((*S0, "index"), [2, 3.0]),
     _S0 + r"'index' must list integers .*Received: 3\.0 \(of type float\) in "
           r"index=\[2, 3\.0\]", None),
    ("index_too_large", _set((*S0, "index"), [3, 6]),
     _S0 + r"'index' must list integers \(not bools\) in \[0, 6\) .*Received: 6 \(of type "
           r"int\) in index=\[3, 6\]", None),
    ("negative_index", _set((*S0, "index"), [-1]),
     _S0 + r"'index' must list integers .* in \[0, 6\) .*Received: -1 ", None),
    ("repeated_index", _set((*S0, "index"), [3, 1, 3]),
     _S0 + r"'index' must list each position once .*Received: \[3\] more than once in "
           r"index=\[3, 1, 3\]", None),
    ("unknown_role", _set((*S0, "role"), "producr"),
     _S0 + r"unknown 'role'\. Expected one of \['producer', 'producer_bias', 'tied', "
           r"'consumer'\]\. Received: role='producr'", None),
    ("penalize_not_a_bool", _set((*S0, "penalize"), "yes"),
     _S0 + r"'penalize' must be true or false\. Received: penalize='yes' \(of type str\)",
     None),
    ("blocked_not_a_string", _set((0, "blocked"), 1),
     r"Group 'conv1:3': 'blocked' must be None or a reason \(a string\)\. Received: "
     r"blocked=1 \(of type int\)", None),
    ("source_not_a_string", _set((0, "source"), None),
     r"Group 'conv1:3': 'source' must be a layer name \(a string\)\. Received: source=None",
     None),
    ("negative_coefficient", _set((0, "coefficient"), -1.0),
     r"Group 'conv1:3': 'coefficient' must be a finite number >= 0\. Received: "
     r"coefficient=-1\.0", None),
    ("zero_with_bad_layer", _set((0, "zero_with"), [
        {"layer": "ghost", "weight": "kernel", "axis": -1, "index": [0]}]),
     r"Group 'conv1:3', zero_with\[0\] \(ghost/kernel\): the model '\w+' has no layer "
     r"'ghost'", None),
]


@pytest.fixture(scope="module")
def model():
    return conv_bn_relu_conv()


# (case, entry point) pairs: a case limited to some entry points (`entries`) is not generated
# for the others (e.g. a missing role: the callbacks do not read roles; tested below).
_PAIRS = [pytest.param(entry, name, make, message, id=f"{name}-{entry}")
          for name, make, message, entries in CASES
          for entry in sorted(ENTRY_POINTS) if entries is None or entry in entries]


@pytest.mark.parametrize("entry, name, make, message", _PAIRS)
def test_malformed_groups_are_rejected(model, entry, name, make, message):
    with pytest.raises(ValueError, match=message) as info:
        ENTRY_POINTS[entry](model, make())
    text = str(info.value)
    assert "\n" not in text
    assert "Received" in text and re.search(r"[Ee]xpected|must", text)


def test_missing_role_is_accepted_by_the_callbacks(model):
    """SSLModel.ssl_groups have no roles: the callbacks take them (they do not read roles)."""
    groups = _set((*S0, "role"), _DELETE)()
    assert freeze_zero_groups(model, groups=groups).frozen_groups == 0


def test_the_hand_written_group_is_valid(model):
    groups = [_group()]
    assert validate_groups(groups, model) == groups
    assert set(ROLES) == {"producer", "producer_bias", "tied", "consumer"}


def test_validation_does_not_modify_the_groups(model):
    groups = [_group()]
    before = copy.deepcopy(groups)
    zero_groups(model, groups=groups)
    assert groups == before


# ----------------------------------------------------------- valid groups pass unchanged


def _nested():
    inner_in = keras.Input((5, 5, 4))
    y = L.Conv2D(3, 1, name="conv")(inner_in)
    inner = keras.Model(inner_in, L.ReLU(name="relu")(y), name="inner")
    inputs = keras.Input((5, 5, 3))
    x = L.Conv2D(4, 1, name="pre")(inputs)
    return keras.Model(inputs, L.Dense(2, name="post")(inner(x)))


@pytest.mark.parametrize("cls", registry.builtin_classes(), ids=lambda c: c.__qualname__)
def test_removable_groups_of_every_registered_class_pass(cls):
    keras.utils.set_random_seed(1)
    model = LAYER_CASES[cls]()
    groups = removable_groups(model)
    before = json.dumps(groups, sort_keys=True)
    assert validate_groups(groups, model) == groups
    assert json.dumps(groups, sort_keys=True) == before


@pytest.mark.parametrize("make", [lambda: lenet(filters=(3, 4), units=5), lambda: resnet(8),
                                  _nested], ids=["lenet", "resnet8", "nested"])
def test_removable_groups_of_models_pass(make):
    model = make()
    groups = removable_groups(model)
    assert validate_groups(groups, model) == groups
    round_trip = json.loads(json.dumps(groups))
    assert validate_groups(round_trip, model) == round_trip


def test_ssl_groups_pass_without_roles():
    """The groups an SSLModel stores (depth groups with "zero_with" included)."""
    keras.utils.set_random_seed(0)
    ssl = apply_ssl(resnet(8, widths=(4, 8, 8)), filters=0.1, depth=0.1)
    assert any(g.get("zero_with") for g in ssl.ssl_groups)
    assert validate_groups(ssl.ssl_groups, ssl, need_role=False) == ssl.ssl_groups
    freeze_zero_groups(ssl, groups=ssl.ssl_groups)
    with pytest.raises(ValueError, match=r"slices\[0\]: missing key\(s\) \['role'\]"):
        validate_groups(ssl.ssl_groups, ssl)


def test_thin_with_explicit_groups_matches_thin_without():
    keras.utils.set_random_seed(3)
    model = resnet(8, widths=(4, 8, 8))
    zero_random_groups(model, fraction=0.5, seed=3)
    groups = json.loads(json.dumps(removable_groups(model)))
    assert thinning_plan(model, groups=groups) == thinning_plan(model)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    small, reference = thin(model, groups=groups), thin(model)
    assert [w.shape for w in small.weights] == [w.shape for w in reference.weights]
    np.testing.assert_array_equal(np.asarray(small(x)), np.asarray(reference(x)))


def test_hand_written_group_still_thins():
    model = conv_bn_relu_conv()
    zero_filters(model, "conv1", [3])
    plan = thinning_plan(model, groups=[_group()])
    assert plan["groups"]["conv1:3"]["status"] == "removed"
    assert plan["layers"]["conv1"]["config"]["filters"] == 5
