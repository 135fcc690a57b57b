"""examples.batches: every epoch a new seeded order, resumable, with a known length."""

import keras
import numpy as np
import pytest

from examples.batches import shuffled_batches


def _orders(dataset, callback, epochs):
    """The labels each epoch yields, epoch by epoch, as model.fit would draw them."""
    out = []
    for e in epochs:
        callback.on_epoch_begin(e)
        out.append(np.concatenate([np.asarray(y) for _, y in dataset]))
    return out


def test_every_epoch_is_a_new_permutation_fixed_by_the_seed():
    x = np.arange(103, dtype=np.float32).reshape(-1, 1)
    y = np.arange(103)
    ds, cb = shuffled_batches(x, y, 10, seed=(3, 1))
    orders = _orders(ds, cb, range(3))
    for o in orders:
        assert sorted(o.tolist()) == list(range(103))
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    assert not np.array_equal(orders[0], np.arange(103))
    again = _orders(*shuffled_batches(x, y, 10, seed=(3, 1)), range(3))
    for a, b in zip(orders, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = _orders(*shuffled_batches(x, y, 10, seed=(3, 2)), range(1))
    assert not np.array_equal(orders[0], other[0])


def test_images_stay_with_their_targets_and_batches_have_the_size():
    x = np.arange(50, dtype=np.float32).reshape(-1, 1, 1) * 2.0
    y = np.stack([np.arange(50), -np.arange(50)], axis=1).astype(np.float32)
    ds, cb = shuffled_batches(x, y, 16, seed=0)
    assert int(ds.cardinality()) == 4
    cb.on_epoch_begin(0)
    sizes = []
    for xb, yb in ds:
        sizes.append(len(xb))
        np.testing.assert_array_equal(np.asarray(xb)[:, 0, 0], 2.0 * np.asarray(yb)[:, 0])
        np.testing.assert_array_equal(np.asarray(yb)[:, 1], -np.asarray(yb)[:, 0])
    assert sizes == [16, 16, 16, 2]


class _Recorder(keras.Model):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def train_step(self, data):
        self.seen.append(np.asarray(data[1]))
        return {"n": 0.0}


def _fit_orders(initial_epoch, epochs=3):
    x = np.arange(40, dtype=np.float32).reshape(-1, 1)
    y = np.arange(40)
    inputs = keras.Input((1,))
    model = _Recorder(inputs, keras.layers.Dense(1)(inputs))
    model.compile(run_eagerly=True)
    ds, cb = shuffled_batches(x, y, 8, seed=7)
    model.fit(ds, epochs=epochs, initial_epoch=initial_epoch, callbacks=[cb], verbose=0,
              shuffle=False)
    seen = np.concatenate(model.seen)
    return seen.reshape(epochs - initial_epoch, 40)


def test_fit_reshuffles_and_a_resumed_fit_sees_the_same_epochs():
    full = _fit_orders(0)
    assert not np.array_equal(full[0], full[1])
    assert not np.array_equal(full[1], full[2])
    resumed = _fit_orders(2)
    np.testing.assert_array_equal(resumed[0], full[2])


@pytest.mark.parametrize("x_len, y_len, batch, match", [
    (5, 4, 2, "same number of images"),
    (0, 0, 2, "at least one image"),
    (5, 5, 0, "batch_size >= 1"),
])
def test_bad_input_is_a_clear_error(x_len, y_len, batch, match):
    with pytest.raises(ValueError, match=match):
        shuffled_batches(np.zeros((x_len, 1), np.float32), np.zeros(y_len), batch, seed=0)
