"""ssl_keras: Structured Sparsity Learning (Wen et al., NIPS 2016) for Keras 3.

Public API (everything else is internal):

    GroupLasso                      group Lasso (filters, channels, shapes, borders, depth)
    group_norms, Structure          per-group L2 norms of a kernel
    removable_groups                the coupled channel groups of a model, as plain data
    register_layer, LayerSpec, Kind, WeightSlice   declare how a user layer couples channels
    thin, thinning_plan, apply_plan  rebuild a group-sparse model as a smaller dense model
    zero_groups, ConstantAdd        the zeroed reference model; the constant layer thin may add
    count_params, count_macs, summarize   sizes before / after thinning
    export_tflite, evaluate_tflite, predict_tflite, ExportReport   verified TFLite export
    apply_ssl, strip_ssl, StructuredSparsity, SSLModel   put a layer / model under group Lasso
    freeze_zero_groups; ssl_keras.callbacks   SparsityMonitor, ZeroSmallGroups, ProximalGroupLasso
    reestimate_batchnorm            BatchNorm moving statistics recomputed after SSL / zeroing
"""

from ssl_keras._quiet import import_tensorflow_quietly

import_tensorflow_quietly()

from ssl_keras import callbacks
from ssl_keras.callbacks import freeze_zero_groups, reestimate_batchnorm
from ssl_keras.graph import Kind, LayerSpec, WeightSlice, register_layer, removable_groups
from ssl_keras.regularizers import GroupLasso
from ssl_keras.report import count_macs, count_params, summarize
from ssl_keras.structures import Structure, group_norms
from ssl_keras.thin import ConstantAdd, apply_plan, thin, thinning_plan, zero_groups
from ssl_keras.wrap import SSLModel, StructuredSparsity, apply_ssl, strip_ssl

__version__ = "0.1.0"

# ssl_keras.export is imported on first use, not here: `python -m ssl_keras.export` (its command
# line) would otherwise find the module already imported and run it twice (runpy warning).
_LAZY_EXPORT = ("ExportReport", "evaluate_tflite", "export_tflite", "predict_tflite")


def __getattr__(name):
    if name in _LAZY_EXPORT:
        from ssl_keras import export

        return getattr(export, name)
    raise AttributeError(f"module 'ssl_keras' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_EXPORT))

__all__ = [
    "ExportReport",
    "evaluate_tflite",
    "export_tflite",
    "predict_tflite",
    "GroupLasso",
    "Kind",
    "LayerSpec",
    "WeightSlice",
    "register_layer",
    "removable_groups",
    "Structure",
    "group_norms",
    "thin",
    "thinning_plan",
    "apply_plan",
    "zero_groups",
    "ConstantAdd",
    "count_params",
    "count_macs",
    "summarize",
    "apply_ssl",
    "strip_ssl",
    "StructuredSparsity",
    "SSLModel",
    "callbacks",
    "freeze_zero_groups",
    "reestimate_batchnorm",
]
