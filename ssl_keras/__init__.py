"""ssl_keras: Structured Sparsity Learning (Wen et al., NIPS 2016) for Keras 3.

Public API (everything else is internal):

    GroupLasso                      group Lasso regulariser (filters, channels, shapes, depth)
    group_norms, Structure          per-group L2 norms of a kernel
    removable_groups                the coupled channel groups of a model, as plain data
    register_layer, LayerSpec, Kind, WeightSlice   declare how a user layer couples channels
"""

from ssl_keras.graph import Kind, LayerSpec, WeightSlice, register_layer, removable_groups
from ssl_keras.regularizers import GroupLasso
from ssl_keras.structures import Structure, group_norms

__version__ = "0.1.0"

__all__ = [
    "GroupLasso",
    "Kind",
    "LayerSpec",
    "WeightSlice",
    "register_layer",
    "removable_groups",
    "Structure",
    "group_norms",
]
