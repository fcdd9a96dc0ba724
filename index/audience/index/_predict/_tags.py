"""Zero-shot interest tags: a user carries a tag when the user's texts are closer to the tag's
name than an ordinary user's are.

The tag names are encoded as a user whose only text is the name would be (semantic and
lexical channels, `ProfileEncoder.term_vectors`); a user's similarity to a tag is the cosine
of the text channels; it is then set against the same similarity over a background sample of
users (z = (cosine - mean) / sd), since raw cosines differ from one tag to the next by the
word alone ("python" is close to every programming title). Tags with z at least
`min_score` are returned, highest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._types import TagScore
from ._model import text_features

DEFAULT_MAX_TAGS = 5
DEFAULT_MIN_SCORE = 1.0  # standard deviations above an ordinary user


def tag_scores(
    users: np.ndarray, tags: np.ndarray, background: np.ndarray, text_dims: int
) -> tuple[np.ndarray, np.ndarray]:
    """(z, cosine), each (users, tags): user and tag vectors compared on their text channels,
    z against the background users' cosines to the same tag."""
    u, t = text_features(users, text_dims), text_features(tags, text_dims)
    b = text_features(background, text_dims)
    cosine = u @ t.T
    reference = b @ t.T
    mean, sd = reference.mean(axis=0), reference.std(axis=0) + 1e-6
    return (cosine - mean) / sd, cosine


def top_tags(
    names: Sequence[str],
    z: np.ndarray,
    cosine: np.ndarray,
    max_tags: int = DEFAULT_MAX_TAGS,
    min_score: float = DEFAULT_MIN_SCORE,
) -> list[tuple[TagScore, ...]]:
    """Per user, up to `max_tags` tags whose z is at least `min_score`, highest first."""
    out = []
    for row_z, row_c in zip(z, cosine):
        order = np.argsort(-row_z)[:max_tags]
        out.append(
            tuple(
                TagScore(names[j], round(float(row_z[j]), 3), round(float(row_c[j]), 4))
                for j in order
                if row_z[j] >= min_score
            )
        )
    return out
