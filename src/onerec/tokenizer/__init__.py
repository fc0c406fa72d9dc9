"""Semantic IDs: residual k-means (RQ-Kmeans) over item content vectors.

``kmeans`` holds the clustering primitives (Lloyd's k-means and OneRec V1's balanced k-means);
``rq`` turns them into an L-level tokenizer with a unique extra level, metrics and save/load.

The function ``kmeans`` is deliberately not re-exported here: a package attribute named
``kmeans`` would shadow the submodule (``import onerec.tokenizer.kmeans`` would yield the
function). Import it as ``from onerec.tokenizer.kmeans import kmeans``.
"""

from onerec.tokenizer.kmeans import (
    assignment_cost,
    balanced_kmeans,
    balanced_kmeans_reference,
    balanced_sizes,
    inertia,
    kmeans_plus_plus,
    nearest_centroid,
    nearest_centroid_reference,
)
from onerec.tokenizer.rq import (
    ResidualKMeansTokenizer,
    RQFit,
    add_unique_level,
    code_metrics,
    reconstruction_metrics,
    residual_decode,
    residual_encode,
    residual_kmeans,
)

__all__ = [
    "RQFit",
    "ResidualKMeansTokenizer",
    "add_unique_level",
    "assignment_cost",
    "balanced_kmeans",
    "balanced_kmeans_reference",
    "balanced_sizes",
    "code_metrics",
    "inertia",
    "kmeans_plus_plus",
    "nearest_centroid",
    "nearest_centroid_reference",
    "reconstruction_metrics",
    "residual_decode",
    "residual_encode",
    "residual_kmeans",
]
