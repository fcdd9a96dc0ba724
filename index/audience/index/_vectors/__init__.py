"""Vector indexes behind one interface, and their on-disk generations.

Vectors are L2-normalised, so the inner product is the cosine similarity. Ids are the
store's int64 iids. Filters reach the search as a bitmap over iids (faiss IDSelectorBitmap),
so filtering happens inside the search, not by over-fetching.

Index kinds:
  flat      exact (IndexFlatIP under IndexIDMap2); the default below `ann_threshold` users.
  hnsw      HNSW graph over the vectors in half precision (fp16: half the memory, scores
            within ~1e-3 of float32). FAISS's HNSW cannot remove, so a removed or replaced
            user is a tombstone (its id in the id map set to -1, which no selector accepts)
            until the graph is compacted (rebuilt) at a save.
  hnsw-f32  the same graph over float32 vectors.
  hnsw-sq8  the same graph over 8-bit scalar-quantized vectors (a quarter of float32).
  ivf-pq    inverted lists of product-quantized codes (IndexIVFPQ; removes natively):
            the smallest, at some cost in recall; nprobe per query.
A filter that leaves few users is answered exactly over those users (ANN graphs lose recall
when most nodes are filtered out).

    _base.py         VectorIndex (what the engine needs from a kind), IndexOptions
    _flat.py         the exact kind
    _ann.py          the approximate kinds (HNSW, IVF-PQ)
    _build.py        build_index / read_index by kind
    _generations.py  index generations on disk (manifest with sha256, newest good one loads)
    _policy.py       IndexPolicy: the kind for N users, its options, when a rebuild is due
"""

from ._ann import HnswIndex, IvfPqIndex
from ._base import IndexOptions, VectorIndex
from ._build import build_index, read_index
from ._flat import FlatIndex
from ._generations import Generations, Manifest
from ._policy import IndexPolicy

__all__ = [
    "FlatIndex",
    "Generations",
    "HnswIndex",
    "IndexOptions",
    "IndexPolicy",
    "IvfPqIndex",
    "Manifest",
    "VectorIndex",
    "build_index",
    "read_index",
]
