"""Request validation, in one place: every check the engine makes on what a caller sends.

Each failure is an `InvalidQuery` whose message starts with the field (`seeds[0].weight: must
be finite and > 0`), or a `LimitExceeded` for a request over a configured limit. Checks that
need the stored data (unknown users, unknown attributes, unknown segments) are made where
the data is read, with the same field names.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

import numpy as np

from ._attrs import PREDICTED
from ._config import Limits
from ._errors import InvalidQuery, LimitExceeded
from ._types import Filter, LookalikeQuery, PredictQuery, Profile


class Validator:
    """Checks requests against `limits`; `dim` is the length of a user vector."""

    def __init__(self, limits: Limits, dim: int) -> None:
        self.limits = limits
        self.dim = dim

    # ------------------------------------------------------------ profiles

    def profiles(self, profiles: Sequence[Profile], field: str = "profiles") -> None:
        lim = self.limits
        if not profiles:
            raise InvalidQuery(field, "at least one profile is required")
        if len(profiles) > lim.max_batch_users:
            raise LimitExceeded(field, len(profiles), lim.max_batch_users)
        for i, p in enumerate(profiles):
            self._profile(p, f"{field}[{i}]")

    def _profile(self, p: Profile, where: str) -> None:
        lim = self.limits
        self.user_id(p.user_id, f"{where}.user_id")
        if len(p.texts) > lim.max_texts_per_user:
            raise LimitExceeded(f"{where}.texts", len(p.texts), lim.max_texts_per_user)
        for j, t in enumerate(p.texts):
            size = len(t.text.encode("utf-8", "surrogatepass"))
            if size > lim.max_text_bytes:
                raise LimitExceeded(f"{where}.texts[{j}].text (bytes)", size, lim.max_text_bytes)
            if not t.text.strip():
                raise InvalidQuery(f"{where}.texts[{j}].text", "must not be empty")
            if not (math.isfinite(t.weight) and t.weight > 0):
                raise InvalidQuery(f"{where}.texts[{j}].weight", "must be finite and > 0")
            if t.timestamp < 0:
                raise InvalidQuery(f"{where}.texts[{j}].timestamp", "must be >= 0")
        if len(p.attributes) > lim.max_attributes_per_user:
            raise LimitExceeded(
                f"{where}.attributes", len(p.attributes), lim.max_attributes_per_user
            )
        for name, value in p.attributes.items():
            if not name or len(name) > 128:
                raise InvalidQuery(f"{where}.attributes", "names must be 1 to 128 characters")
            if name.startswith(PREDICTED):
                raise InvalidQuery(
                    f"{where}.attributes[{name!r}]",
                    f"names starting with {PREDICTED!r} are the models' answers, not stored",
                )
            if value is None:
                raise InvalidQuery(
                    f"{where}.attributes[{name!r}]",
                    "an attribute value needs one of number, text, flag",
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidQuery(f"{where}.attributes[{name!r}]", "must be finite")
            if isinstance(value, str) and len(value) > 1024:
                raise InvalidQuery(f"{where}.attributes[{name!r}]", "at most 1024 characters")
        if p.vector:
            self._vector(p.vector, f"{where}.vector")

    def _vector(self, blob: bytes, field: str) -> None:
        if len(blob) != 4 * self.dim:
            raise InvalidQuery(
                field,
                f"must be {self.dim} float32 values ({4 * self.dim} bytes), got {len(blob)} bytes",
            )
        with np.errstate(all="ignore"):
            v = np.frombuffer(blob, dtype="<f4").astype(np.float64)
            norm = float(np.linalg.norm(v)) if np.isfinite(v).all() else math.nan
        if not (math.isfinite(norm) and norm > 0):
            raise InvalidQuery(field, "must be finite and not all zero")

    # ------------------------------------------------------------ ids

    def user_id(self, user_id: str, field: str) -> None:
        if not user_id:
            raise InvalidQuery(field, "must not be empty")
        if len(user_id.encode("utf-8", "surrogatepass")) > self.limits.max_user_id_bytes:
            raise InvalidQuery(field, f"must be at most {self.limits.max_user_id_bytes} bytes")
        if not (user_id.isascii() and user_id.isprintable()) and any(
            unicodedata.category(c) in ("Cc", "Cs") for c in user_id
        ):
            raise InvalidQuery(field, "must not contain control characters or lone surrogates")

    def ids(self, user_ids: Sequence[str], field: str) -> None:
        if len(user_ids) > self.limits.max_ids_per_request:
            raise LimitExceeded(field, len(user_ids), self.limits.max_ids_per_request)
        for i, u in enumerate(user_ids):
            self.user_id(u, f"{field}[{i}]")

    # ------------------------------------------------------------ filters and queries

    def filters(self, filters: Sequence[Filter]) -> None:
        if len(filters) > self.limits.max_filters:
            raise LimitExceeded("filters", len(filters), self.limits.max_filters)
        for i, f in enumerate(filters):
            where = f"filters[{i}]"
            if not f.attribute:
                raise InvalidQuery(f"{where}.attribute", "must not be empty")
            kinds = (f.equals is not None) + (f.any_of is not None) + f.is_range
            if kinds != 1:
                raise InvalidQuery(where, "needs exactly one of equals, range, any_of")
            if f.is_range:
                for name in ("gte", "gt", "lte", "lt"):
                    v = getattr(f, name)
                    if v is not None and not math.isfinite(v):
                        raise InvalidQuery(f"{where}.range.{name}", "must be finite")
            values = [f.equals] if f.equals is not None else list(f.any_of or ())
            if f.any_of is not None and not values:
                raise InvalidQuery(f"{where}.any_of", "must list at least one value")
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise InvalidQuery(where, "values must be finite")
            if not 0.0 <= f.min_confidence <= 1.0:  # NaN fails too
                raise InvalidQuery(f"{where}.min_confidence", "must be in [0, 1]")

    def predict(self, q: PredictQuery) -> None:
        if not (q.user_ids or q.profiles):
            raise InvalidQuery("user_ids", "give at least one user id or profile")
        if q.user_ids:
            self.ids(q.user_ids, "user_ids")
        if q.profiles:
            self.profiles(q.profiles)
        users, most = len(q.user_ids) + len(q.profiles), self.limits.max_batch_users
        if users > most:
            raise LimitExceeded("user_ids + profiles", users, most)
        if not 1 <= q.max_tags <= 100:
            raise InvalidQuery("max_tags", "must be in 1..100")
        if not math.isfinite(q.min_tag_score):
            raise InvalidQuery("min_tag_score", "must be finite")

    def query(self, q: LookalikeQuery, max_k: int, beyond: str = "") -> None:
        """A lookalike query for a call that returns at most `max_k` users (`beyond`: what
        to say to a caller who asks for more)."""
        lim = self.limits
        if q.k is not None and q.k > max_k:
            raise InvalidQuery("k", f"must be at most {max_k}{beyond}")
        if not q.seeds:
            raise InvalidQuery("seeds", "at least one seed (user id or text) is required")
        if len(q.seeds) > lim.max_seeds:
            raise LimitExceeded("seeds", len(q.seeds), lim.max_seeds)
        for i, s in enumerate(q.seeds):
            if (s.user_id is None) == (s.text is None):
                raise InvalidQuery(f"seeds[{i}]", "needs exactly one of user_id or text")
            if s.user_id is not None:
                self.user_id(s.user_id, f"seeds[{i}].user_id")
            elif not (s.text or "").strip():
                raise InvalidQuery(f"seeds[{i}].text", "must not be empty")
            else:
                size = len((s.text or "").encode("utf-8", "surrogatepass"))
                if size > lim.max_text_bytes:
                    raise LimitExceeded(f"seeds[{i}].text (bytes)", size, lim.max_text_bytes)
            if not (math.isfinite(s.weight) and s.weight > 0):
                raise InvalidQuery(f"seeds[{i}].weight", "must be finite and > 0")
        if (q.k is None) == (q.fraction is None):
            raise InvalidQuery("k", "give exactly one of k or fraction")
        if q.k is not None and q.k < 1:
            raise InvalidQuery("k", "must be at least 1")
        if q.fraction is not None and not (math.isfinite(q.fraction) and 0 < q.fraction <= 1):
            raise InvalidQuery("fraction", "must be in (0, 1]")
        if not (math.isfinite(q.negative_weight) and q.negative_weight >= 0):
            raise InvalidQuery("negative_weight", "must be finite and >= 0")
        if q.min_score is not None and not math.isfinite(q.min_score):
            raise InvalidQuery("min_score", "must be finite")
        self.ids(q.negative_user_ids, "negative_user_ids")
        self.ids(q.exclude_user_ids, "exclude_user_ids")
        self.filters(q.filters)
