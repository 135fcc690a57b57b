"""Border bands of conv kernels: zeroing the bands below threshold, cropping zero borders.

Internal to `ssl_keras.thin`: `_border_zeros` adds to the plan's zero list, `_crop_kernel`
makes the smaller kernel with explicit ZeroPadding / Cropping before the conv.
"""

from __future__ import annotations

import numpy as np

from ssl_keras._thin_model import _is_conv


def _border_zeros(name, kernel, threshold) -> list[dict]:
    """Zero entries for the outer rows / columns (any spatial axis) of a conv kernel whose
    nested border band (the outer d rows of one side, all channels and filters) has norm <=
    threshold; at least one row of every axis stays."""
    out, kernel = [], kernel.copy()
    for a in range(kernel.ndim - 2):
        rows = np.sum(np.square(kernel, dtype=np.float64),
                      axis=tuple(b for b in range(kernel.ndim) if b != a))
        k = len(rows)
        top = min(int(np.sum(np.sqrt(np.cumsum(rows)) <= threshold)), k - 1)
        bottom = min(int(np.sum(np.sqrt(np.cumsum(rows[::-1])) <= threshold)), k - 1 - top)
        for index in (list(range(top)), list(range(k - bottom, k))):
            if index:
                out.append({"layer": name, "weight": "kernel", "axis": a, "index": index,
                            "why": "borders"})
                where = [slice(None)] * kernel.ndim
                where[a] = index
                kernel[tuple(where)] = 0
    return out


def _same_pads(size, k, stride, dilation):
    """(before, after) zero padding of TensorFlow's 'same' along one axis."""
    effective = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _crop_kernel(layer, kernel, keep):
    """Crops zero border rows / columns of a conv kernel: (keep, config, before) or None.

    A border slice of the kernel that is zero for every kept filter and channel is removed;
    the padding becomes explicit (ZeroPadding / Cropping before the conv, then 'valid') so that
    every output position still reads the same inputs. Zero positions inside the kernel stay.
    """
    cls = type(layer)
    if not _is_conv(cls) or len(layer._inbound_nodes) != 1:
        return None
    if getattr(layer, "data_format", None) == "channels_first":
        return None  # the explicit padding / cropping layers assume channels last
    shape = layer._inbound_nodes[0].input_tensors[0].shape
    rank = kernel.ndim - 2
    if layer.padding not in ("valid", "same", "causal") or any(d is None for d in shape[1:-1]):
        return None
    for axis, idx in keep.get("kernel", {}).items():  # the kept channels and filters only
        kernel = np.take(kernel, idx, axis=int(axis))
    if not np.any(kernel):
        return None
    spatial, pads, crops, new_k = {}, [], [], []
    for a in range(rank):
        nz = np.flatnonzero(np.any(kernel != 0, axis=tuple(i for i in range(kernel.ndim)
                                                             if i != a)))
        k, d, stride = kernel.shape[a], layer.dilation_rate[a], layer.strides[a]
        top, bottom = int(nz[0]), int(k - 1 - nz[-1])
        if layer.padding == "same":
            pt, pb = _same_pads(shape[1 + a], k, stride, d)
        elif layer.padding == "causal":
            pt, pb = (k - 1) * d, 0
        else:
            pt, pb = 0, 0
        pt, pb = pt - top * d, pb - bottom * d
        pads.append((max(pt, 0), max(pb, 0)))
        crops.append((max(-pt, 0), max(-pb, 0)))
        new_k.append(k - top - bottom)
        if top or bottom:
            spatial[str(a)] = list(range(top, k - bottom))
    if not spatial:
        return None
    before = []
    suffix = f"{rank}D"
    if any(p != (0, 0) for p in pads):
        before.append({"class": f"ZeroPadding{suffix}", "name": f"{layer.name}_pad",
                       "padding": pads[0] if rank == 1 else pads})
    if any(c != (0, 0) for c in crops):
        before.append({"class": f"Cropping{suffix}", "name": f"{layer.name}_crop",
                       "cropping": crops[0] if rank == 1 else crops})
    return spatial, {"kernel_size": new_k, "padding": "valid"}, before
