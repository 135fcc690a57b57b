"""Training batches for model.fit: a new seeded order every epoch, no tf.data autotuning.

`shuffled_batches(x, y, batch_size, seed)` returns a tf.data.Dataset of (x, y) batches and a
Keras callback that must be in the same fit's callbacks: at each epoch's start it tells the
dataset the epoch, and epoch `e` sees the images in the order
`tf.random.experimental.stateless_shuffle(range(n), seed=(k, e))`, `k` a number drawn from
`seed` (an int, or ints such as (run seed, phase)). So every epoch has its own order, a seed
gives the same orders on every run, and a run that BackupAndRestore resumes
at epoch `e` sees what an uninterrupted run sees from there.

Why not `model.fit(x, y, shuffle=True)`, which the examples used until 2026-11-27:

- Keras 3.15's array adapter on TensorFlow draws each epoch's order with `tf.random.shuffle`
  inside the dataset. Once a global seed is set (`keras.utils.set_random_seed`, as every
  seeded run does), each epoch's new iterator restarts that op from the same state, so every
  epoch trained on the same batches in the same order (checked: the first batch of epochs
  1, 2 and 3 held the same labels).
- Keras builds that dataset with tf.data's autotuning on. On the 2-core AMD machine, destroying
  the previous epoch's iterator at the start of many epochs (13 of the 30 of one LeNet main
  job) waited 5-15 s for the autotuner's thread (py-spy: the main thread in
  `~IteratorResource`, waiting in `UnboundedThreadPool::LogicalThreadWrapper`). Eight epochs
  of the thinned LeNet on 54,000 random images took 125.3 s that way and 105.4 s with
  autotuning off, which this dataset turns off (docs/results-log.md, "Every epoch its own batch
  order").
"""

from __future__ import annotations

import numpy as np


def shuffled_batches(x, y, batch_size: int, seed):
    """(dataset, callback): batches of (x[i], y[i]) in a new order each epoch (see module).

    Args:
        x, y: arrays with the same first dimension (y: labels, or any per-image targets).
        batch_size: images per batch; the last batch of an epoch holds the rest.
        seed: an int or a sequence of ints (numpy.random.SeedSequence entropy); epoch `e`'s
            order depends on (seed, e) only.

    Returns:
        The dataset (cardinality: batches per epoch, so progress bars know the total) and a
        `keras.callbacks.Callback` to pass to the same `fit`, which sets the epoch.
    """
    import keras
    import tensorflow as tf

    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y must have the same number of images; received "
                         f"len(x)={n}, len(y)={len(y)}.")
    if n == 0 or batch_size < 1:
        raise ValueError(f"Expected at least one image and batch_size >= 1; received "
                         f"{n} images, batch_size={batch_size}.")
    steps = -(-n // batch_size)
    stream = int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="shuffle_epoch")
    images = tf.constant(np.asarray(x))
    targets = tf.constant(np.asarray(y))

    def order(_):
        key = tf.stack([tf.constant(stream, tf.int64), epoch.read_value()])
        return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), key)

    dataset = (tf.data.Dataset.from_tensors(0).map(order)
               .flat_map(lambda i: tf.data.Dataset.from_tensor_slices(i).batch(batch_size))
               .map(lambda i: (tf.gather(images, i), tf.gather(targets, i)))
               .prefetch(2)
               .apply(tf.data.experimental.assert_cardinality(steps)))
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    dataset = dataset.with_options(options)

    class SetEpoch(keras.callbacks.Callback):
        """Sets the dataset's epoch before Keras makes that epoch's iterator."""

        def on_epoch_begin(self, e, logs=None):
            epoch.assign(e)

    return dataset, SetEpoch()
