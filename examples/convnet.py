"""Caffe's cifar10_full ConvNet (without LRN) with filter + channel SSL, end to end.

CIFAR-10 where it can be loaded (keras.datasets cache or `--data_dir` with the Python
batches); on a machine without internet it falls back to Fashion-MNIST zero-padded to
32x32x1, and the results file says which dataset was used. Widths are cut to multiples of 16
before fine-tuning (`--round_down=16`): XNNPACK computed 16 float32 channels at a time on the
x86 CPU measured here, so the 21-22 filters SSL leaves cost what 32 cost (docs/results-log.md).

Example:
    python -m examples.convnet
    python -m examples.convnet --dataset=cifar10 --data_dir=/data/cifar-10-batches-py
    python -m examples.convnet --quick
"""

import sys

from examples import models
from examples.common import Recipe, main

RECIPE = Recipe(
    name="convnet",
    build=models.convnet,
    defaults={"dataset": "cifar10", "max_train": 20000, "epochs": 6, "ssl_epochs": 4,
              "finetune_epochs": 6, "lr": 0.01, "ssl_lr": 0.01, "finetune_lr": 0.01,
              "filters": 0.04, "channels": 0.04, "threshold": 1e-3, "round_down": 16},
    quick={"max_train": 2000, "max_test": 500, "epochs": 1, "ssl_epochs": 1,
           "finetune_epochs": 1, "filters": 2.5, "channels": 2.5, "runs": 50, "warmup": 5,
           "verbose": 2},
    tfmot_arch="convnet",
    dataset_kwargs={"fashion_mnist": {"pad_to": 32}, "mnist": {"pad_to": 32}},
    fallback_dataset="fashion_mnist",
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
