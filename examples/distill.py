"""Knowledge distillation in the fine-tuning phase (--distill), targets packed as [label, logits].

Keras passes one target array to the loss, so the dense model's logits travel beside the label:
`distillation_targets` builds the packed targets once, `distillation_loss` and `packed_accuracy`
read them.
"""

from __future__ import annotations

import numpy as np


def distillation_loss(alpha: float, temperature: float):
    """Knowledge distillation (Hinton et al. 2015) for targets packed as [label, logits...].

    `y_true[:, 0]` is the integer label, `y_true[:, 1:]` the teacher's logits; the loss is
    `(1 - alpha) * CE(label, student) + alpha * T^2 * KL(softmax(teacher / T) ||
    softmax(student / T))`.
    """
    from keras import ops

    def loss(y_true, logits):
        import keras

        label = ops.cast(y_true[:, 0], "int32")
        ce = keras.losses.sparse_categorical_crossentropy(label, logits, from_logits=True)
        teacher = ops.log_softmax(y_true[:, 1:] / temperature)
        student = ops.log_softmax(logits / temperature)
        kl = ops.sum(ops.exp(teacher) * (teacher - student), axis=-1)
        return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl

    return loss


def packed_accuracy(y_true, logits):
    """Accuracy against the label column of packed distillation targets."""
    from keras import ops

    label = ops.cast(y_true[:, 0], "int32")
    return ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), label), "float32")


packed_accuracy.__name__ = "accuracy"


def distillation_targets(teacher, data):
    """[label, teacher's logits] per training / validation image (teacher: the dense model)."""

    def pack(x, y):
        logits = teacher.predict(x, batch_size=256, verbose=0) if len(x) else \
            np.zeros((0, 1), np.float32)
        return np.concatenate([np.asarray(y, np.float32).reshape(-1, 1),
                               logits.astype(np.float32)], axis=1)

    return pack(data.x_train, data.y_train), pack(data.x_val, data.y_val)
