"""The conversion steps of `export_tflite`: float32 rebuild, SavedModel -> TFLite, check.

Internal to `ssl_keras.export` (which re-exports `QUANTIZE_MODES` and `rebuild_float32`):
mixed-precision models rebuilt in float32, argument checks, the converter run on a
SavedModel with a static input signature, and the .tflite outputs compared with Keras.
It must not import `ssl_keras.export` (run as `python -m ssl_keras.export`).
"""

from __future__ import annotations

import tempfile
import warnings

import keras
import numpy as np

from ssl_keras import _tflite
from ssl_keras._export_inputs import _input_dtypes, _input_names, _static_shapes, _unflatten
from ssl_keras._quiet import c_stderr_silenced
from ssl_keras._thin_model import copy_layer, layer_config, refresh_states
from ssl_keras.regularizers import _finite, _is_real

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


# ------------------------------------------------------------------------- float32 rebuild


def _float32_config(config):
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and _is_mixed(value):
                out[key] = "float32"
            else:
                out[key] = _float32_config(value)
        return out
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def _is_mixed(dtype) -> bool:
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name", "")
    return isinstance(dtype, str) and dtype.startswith("mixed_")


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _reduced_precision_layers(model) -> list[str]:
    """Names of the layers (InputLayer aside: it computes nothing) that compute in another
    dtype than their float32 variables."""
    return [
        layer.name for layer in _all_layers(model)
        if hasattr(layer, "dtype_policy") and layer.dtype_policy.variable_dtype == "float32"
        and layer.dtype_policy.compute_dtype != "float32"
        and not isinstance(layer, keras.layers.InputLayer)
    ]


def _needs_float32(model) -> bool:
    return bool(_reduced_precision_layers(model))


def rebuild_float32(model):
    """A copy of a mixed-precision model computing in float32, with the same weights.

    mixed_float16 / mixed_bfloat16 models do not convert to TFLite builtin ops (Conv2D and
    MatMul in float16 need Select TF ops). The variables of such models are float32 already,
    so the copy has the same weights exactly.

    Args:
        model: a functional or Sequential Keras model.

    Returns:
        A new model; `model` is not modified.
    """

    from ssl_keras.graph import _is_graph_model, check_layers_in_one_model

    if _is_graph_model(model):  # a subclassed model fails in clone_model below, with its error
        check_layers_in_one_model(model)  # the clone would untie such a layer's weights

    def clone(layer):
        return copy_layer(layer, _float32_config(layer_config(layer)))

    # Under a global mixed policy, clone_model makes the InputLayers (and any layer it
    # creates without a config) in that policy: clone under float32.
    from ssl_keras.wrap import SSLModel

    if isinstance(model, SSLModel):  # a plain view: a cloned SSLModel lacks its ssl_groups
        model = keras.Model(model.input, model.output, name=model.name)
    policy = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("float32")
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except Exception as error:
        raise ValueError(
            "Could not rebuild the mixed-precision model in float32 for TFLite; rebuild it "
            "yourself with keras.mixed_precision.set_global_policy('float32'). "
            f"Received: model={model.name!r}, error={str(error).splitlines()[0]!r}"
        ) from error
    finally:
        keras.config.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    refresh_states(copy)
    left = _reduced_precision_layers(copy)
    if left:
        raise ValueError(
            "The model still has layers computing in reduced precision after the float32 "
            "rebuild (their configs do not take a float32 dtype); rebuild the model under "
            "keras.mixed_precision.set_global_policy('float32'). "
            f"Received: model={model.name!r}, layers={left}"
        )
    return copy


# -------------------------------------------------------------------------------- convert


def _validate(quantize, representative_data, batch_size, num_calibration_samples,
              num_verify_samples):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`quantize` must be one of {list(QUANTIZE_MODES)}. Received: quantize={quantize!r}"
        )
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "quantize='int8' needs `representative_data` to calibrate the activation ranges. "
            "Received: representative_data=None"
        )
    for name, value in (("batch_size", batch_size),
                        ("num_calibration_samples", num_calibration_samples),
                        ("num_verify_samples", num_verify_samples)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")


def _validate_flags(verify, overwrite, allow_select_ops, atol, seed):
    """The flags and numbers of `export_tflite`, checked before any conversion work."""
    for name, value in (("verify", verify), ("overwrite", overwrite),
                        ("allow_select_ops", allow_select_ops)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(
                f"`{name}` must be a bool (True or False). Received: {name}={value!r} "
                f"of type {type(value).__name__}"
            )
    if not _is_real(atol) or not _finite(atol) or atol < 0:
        raise ValueError(f"`atol` must be a finite number >= 0. Received: atol={atol!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0. Received: seed={seed!r}")


def _convert(model, struct, batch_size, quantize, calibration, allow_select_ops) -> bytes:
    """The .tflite bytes, converted with a static batch of `batch_size`. With batch 1, if the
    converter fails, once more with an unknown batch (the file's inputs are then batch 1 by
    default, with -1 in their shape signature): TensorFlow 2.21's converter fails on a static
    batch of 1 for a 1-channel Conv1D feeding an Add ('tf.Transpose' rank mismatch), which
    thin can produce."""
    try:
        return _convert_with(model, struct, batch_size, batch_size, quantize, calibration,
                             allow_select_ops)
    except _ConversionError as error:
        if batch_size != 1:
            raise ValueError(str(error)) from None
        try:
            return _convert_with(model, struct, None, batch_size, quantize, calibration,
                                 allow_select_ops)
        except _ConversionError:
            raise ValueError(str(error)) from None


class _ConversionError(Exception):
    """The converter failed (other than for Select TF ops, which is a ValueError at once)."""


def _convert_with(model, struct, spec_batch, batch_size, quantize, calibration,
                  allow_select_ops) -> bytes:
    import tensorflow as tf

    names, shapes, dtypes = _input_names(struct), _static_shapes(struct), _input_dtypes(struct)
    specs = [tf.TensorSpec((spec_batch, *s), tf.as_dtype(d), name=n)
             for n, s, d in zip(names, shapes, dtypes, strict=True)]
    with tempfile.TemporaryDirectory(prefix="ssl_keras_export_") as saved_model:
        model.export(saved_model, format="tf_saved_model",
                     input_signature=[_unflatten(struct, specs)], verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantize == "int8"
               else tf.lite.OpsSet.TFLITE_BUILTINS]
        if allow_select_ops:
            ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
        converter.target_spec.supported_ops = ops
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            usable = len(calibration[0]) // batch_size * batch_size
            if usable == 0:
                raise ValueError(
                    f"int8 calibration needs at least batch_size={batch_size} samples. "
                    f"Received: {len(calibration[0])} samples"
                )

            def representative_dataset():
                for start in range(0, usable, batch_size):
                    yield {n: a[start:start + batch_size]
                           for n, a in zip(names, calibration, strict=True)}

            converter.representative_dataset = representative_dataset
        try:
            with warnings.catch_warnings(), c_stderr_silenced():  # "fully_quantize: 0, ..."
                warnings.simplefilter("ignore")  # tf.lite.Interpreter deprecation (calibration)
                return converter.convert()
        except Exception as error:
            message = str(error)
            if "ERROR_NEEDS_FLEX_OPS" in message or "TF Select ops" in message:
                found = _tflite.select_ops_from_error(message)
                raise ValueError(
                    "The model needs TensorFlow ops that TFLite has no builtin kernel for"
                    + (" with int8 quantisation" if quantize == "int8" else "")
                    + f": {', '.join(found) or 'see the converter log'}. Replace those layers, "
                    "or pass allow_select_ops=True (the app then needs the Flex delegate). "
                    f"Received: model={model.name!r}, quantize={quantize!r}"
                ) from None
            first = next((line for line in message.splitlines() if "error" in line.lower()),
                         message.splitlines()[0] if message else type(error).__name__)
            raise _ConversionError(
                f"TFLite conversion failed: {first.strip()[:500]}. "
                f"Received: model={model.name!r}, quantize={quantize!r}"
            ) from error


def _keras_outputs(model, x) -> dict:
    try:
        y = model(x, training=False)
    except ValueError:
        raise
    except Exception as error:  # TensorFlow's InvalidArgumentError (an id out of range) ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            "The Keras model failed on the verification inputs (an id outside an Embedding's "
            "[0, input_dim), or data of another kind than the model reads?). Received: "
            f"model={model.name!r}, error={type(error).__name__}: {first[:300]}") from None
    if isinstance(y, dict):
        return {k: np.asarray(keras.ops.convert_to_numpy(v), np.float32) for k, v in y.items()}
    ys = y if isinstance(y, (list, tuple)) else [y]
    return {f"output_{i}": np.asarray(keras.ops.convert_to_numpy(v), np.float32)
            for i, v in enumerate(ys)}


def _non_finite(outputs: dict) -> dict:
    """Output name -> count of NaN / inf values, for the outputs that have any."""
    counts = {k: int(np.size(v) - np.count_nonzero(np.isfinite(v))) for k, v in outputs.items()}
    return {k: c for k, c in counts.items() if c}


def _keras_reference(model, struct, samples, verified_on):
    """The Keras model's outputs on the verification samples; they must be finite.

    Run before the conversion, so that a model with NaN / inf outputs (NaN weights, say)
    fails fast, and not with a meaningless "max |diff| = nan" after it.
    """
    want = _keras_outputs(model, _unflatten(struct, samples))
    bad = _non_finite(want)
    if bad:
        raise ValueError(
            "The Keras model's own outputs are not finite (NaN or inf) on the "
            f"{len(samples[0])} verification samples ({verified_on}), so the TFLite model "
            "cannot be compared with them; check the model's weights for NaN / inf, or pass "
            "verify=False to export it unverified. Nothing was written. "
            f"Received: model={model.name!r}, non-finite values per output={bad}"
        )
    return want


def _verify(model, struct, content, samples, quantize, atol, want=None):
    names = _input_names(struct)
    if want is None:
        want = _keras_reference(model, struct, samples, "given samples")
    interpreter = _tflite.make_interpreter(model_content=content)
    got = _tflite.run(interpreter, dict(zip(names, samples, strict=True)))
    if sorted(got) != sorted(want):
        raise RuntimeError(
            "The TFLite outputs do not match the Keras model's outputs by name. "
            f"Received: tflite={sorted(got)}, keras={sorted(want)}"
        )
    bad = _non_finite(got)
    if bad:
        raise ValueError(
            f"The {quantize or 'float32'} TFLite model gives non-finite outputs (NaN or inf) "
            f"where the Keras model's are finite, over {len(samples[0])} samples. Nothing "
            f"was written. Received: model={model.name!r}, non-finite values per output={bad}"
        )
    diffs = {k: float(np.max(np.abs(got[k] - want[k]))) for k in want}
    scales = {k: float(np.max(np.abs(want[k]))) for k in want}
    # relative to each output's own size, as thin's contract: float32 rounding grows with it
    # (one scale for all outputs let a head of values ~1e5 cover a wrong softmax head)
    worst = [k for k in sorted(want) if not diffs[k] <= atol * (1 + scales[k])]
    if quantize is None and worst:
        k = worst[0]
        raise ValueError(
            f"The float32 TFLite model disagrees with the Keras model: output {k!r} max |diff| "
            f"= {diffs[k]:.3g} > atol * (1 + max |Keras output|) = {atol:g} * (1 + "
            f"{scales[k]:.3g}) over {len(samples[0])} samples. Nothing was written. Received: "
            f"model={model.name!r}, outputs off={worst}"
        )
    return max(diffs.values()), max(scales.values())
