"""The architectures of the method's experiments, as functional Keras models.

Each builder takes the Keras module to build with (`keras`, Keras 3, by default; `tf_keras`
for the tfmot baseline, which only accepts Keras 2 models), so that the baseline is the very
same architecture.

- lenet:   Caffe's LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500 + ReLU, fc 10).
- mlp:     784-500-300-10 with ReLU.
- convnet: Caffe's cifar10_full (conv 32-32-64 5x5, pooling, fc 10), without its LRN layers
           (Keras has no LRN layer; docs/results-log.md, ConvNet section).
- resnet:  the CIFAR ResNet of He et al. (depth 6n+2: 20, 32, ...), BatchNorm, identity
           shortcuts and 1x1 projection shortcuts where the width or stride changes.
"""

from __future__ import annotations


def _keras(module):
    if module is None:
        import keras

        return keras
    return module


def lenet(input_shape=(28, 28, 1), num_classes=10, filters=(20, 50), units=500, keras=None):
    """Caffe's LeNet-5: conv1 20 5x5, max pool 2, conv2 50 5x5, max pool 2, ip1 500, ip2 10."""
    k = _keras(keras)
    L = k.layers
    inputs = k.Input(input_shape, name="input")
    x = L.Conv2D(filters[0], 5, name="conv1")(inputs)
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(filters[1], 5, name="conv2")(x)
    x = L.MaxPooling2D(2, name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(units, activation="relu", name="ip1")(x)
    outputs = L.Dense(num_classes, name="ip2")(x)
    return k.Model(inputs, outputs, name="lenet")


def mlp(input_shape=(28, 28, 1), num_classes=10, units=(500, 300), keras=None):
    """The method's MLP: 784-500-300-10, ReLU."""
    k = _keras(keras)
    L = k.layers
    inputs = k.Input(input_shape, name="input")
    x = L.Flatten(name="flatten")(inputs)
    for i, n in enumerate(units, start=1):
        x = L.Dense(n, activation="relu", name=f"fc{i}")(x)
    outputs = L.Dense(num_classes, name=f"fc{len(units) + 1}")(x)
    return k.Model(inputs, outputs, name="mlp")


def convnet(input_shape=(32, 32, 3), num_classes=10, filters=(32, 32, 64), keras=None):
    """Caffe's cifar10_full ConvNet without LRN: three 5x5 convs with pooling, then fc 10."""
    k = _keras(keras)
    L = k.layers
    inputs = k.Input(input_shape, name="input")
    x = L.Conv2D(filters[0], 5, padding="same", name="conv1")(inputs)
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(filters[1], 5, padding="same", activation="relu", name="conv2")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same", name="pool2")(x)
    x = L.Conv2D(filters[2], 5, padding="same", activation="relu", name="conv3")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same", name="pool3")(x)
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(num_classes, name="ip1")(x)
    return k.Model(inputs, outputs, name="convnet")


def resnet(depth=20, input_shape=(32, 32, 3), num_classes=10, widths=(16, 32, 64), keras=None):
    """CIFAR ResNet (He et al. 2016), depth = 6n + 2. Blocks are named stage{s}_block{b}_*."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"`depth` must be 6n + 2 with n >= 1. Received: depth={depth}")
    n = (depth - 2) // 6
    k = _keras(keras)
    L = k.layers
    inputs = k.Input(input_shape, name="input")
    x = L.Conv2D(widths[0], 3, padding="same", use_bias=False, name="conv0")(inputs)
    x = L.BatchNormalization(name="bn0")(x)
    x = L.ReLU(name="relu0")(x)
    in_width = widths[0]
    for s, width in enumerate(widths, start=1):
        for b in range(1, n + 1):
            p = f"stage{s}_block{b}"
            stride = 2 if (s > 1 and b == 1) else 1
            y = L.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                         name=f"{p}_conv1")(x)
            y = L.BatchNormalization(name=f"{p}_bn1")(y)
            y = L.ReLU(name=f"{p}_relu1")(y)
            y = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"{p}_conv2")(y)
            y = L.BatchNormalization(name=f"{p}_bn2")(y)
            if stride != 1 or in_width != width:
                x = L.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{p}_proj")(x)
                x = L.BatchNormalization(name=f"{p}_proj_bn")(x)
            x = L.Add(name=f"{p}_add")([x, y])
            x = L.ReLU(name=f"{p}_relu2")(x)
            in_width = width
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(num_classes, name="fc")(x)
    return k.Model(inputs, outputs, name=f"resnet{depth}")


BUILDERS = {"lenet": lenet, "mlp": mlp, "convnet": convnet, "resnet20": resnet,
            "resnet32": lambda **kw: resnet(depth=32, **kw)}
