"""Dumps a Keras 3 model's weights by layer name to .npz (run in its own Keras 3 process).

    python -m tflite_bench._keras3_weights MODEL.keras OUT.npz

A tf_keras (Keras 2) process cannot load a Keras 3 .keras file; the baselines command runs this
module in a separate process (with TF_USE_LEGACY_KERAS unset) and sets the weights by layer
name in the tf_keras model. Keys are "<layer name>/<i>" for the i-th weight of the layer, in
Keras' own order (kernel before bias); "__input_shape__" holds the model's input shape.
Custom objects of ssl_keras (GroupLasso) are registered by importing ssl_keras if available.
"""

from __future__ import annotations

import os
import sys


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: python -m tflite_bench._keras3_weights MODEL.keras OUT.npz\n")
        return 2
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import numpy as np

    try:
        import ssl_keras  # noqa: F401  registers GroupLasso for load_model
    except ImportError:
        pass
    import keras

    model = keras.models.load_model(argv[1], compile=False)
    arrays = {"__input_shape__": np.asarray(model.input_shape[1:], np.int64)}
    for layer in model.layers:
        for i, w in enumerate(layer.get_weights()):
            arrays[f"{layer.name}/{i}"] = w
    tmp = argv[2] + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
