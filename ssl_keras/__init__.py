"""ssl_keras: Structured Sparsity Learning (Wen et al., NIPS 2016) for Keras 3.

Public API (everything else is internal):

    GroupLasso                      group Lasso regulariser (filters, channels, shapes, depth)
    group_norms, Structure          per-group L2 norms of a kernel
"""

from ssl_keras.regularizers import GroupLasso
from ssl_keras.structures import Structure, group_norms

__version__ = "0.1.0"

__all__ = [
    "GroupLasso",
    "Structure",
    "group_norms",
]
