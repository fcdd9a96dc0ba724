"""Whole-store jobs that refit what user vectors are made of: the lexical model (fitted on a
sample of the stored texts), then every stored vector computed again."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ._catalog import LEXICAL_DIR
from ._config import EngineConfig
from ._encode import LexicalModel, ProfileEncoder, text_items
from ._store import ProfileStore
from ._types import Progress

log = logging.getLogger("audience.index")


def fit_lexical(
    store: ProfileStore,
    config: EngineConfig,
    directory: Path,
    progress: Progress | None = None,
) -> LexicalModel | None:
    """Fit the lexical model on (a sample of) the stored users and save it in `directory`;
    None when the texts are too few to fit one."""
    total = store.count()
    keep = min(1.0, config.lexical_max_fit_docs / max(total, 1))
    rng = np.random.default_rng(0)
    docs: list[str] = []
    for rows in store.iter_rows(batch=2000):
        for r in rows:
            if keep >= 1.0 or rng.random() < keep:
                docs.append("\n".join(t.text for t in text_items(r)))
        if progress:
            progress("lexical sample", min(len(docs), total), total)
    try:
        model = LexicalModel.fit(docs, dim=config.lexical_dim)
    except ValueError as exc:
        log.warning("Lexical - not fitted (%s); rebuild-index fits it later", exc)
        return None
    model.save(directory)
    return model


def with_refitted_lexical(
    encoder: ProfileEncoder,
    store: ProfileStore,
    config: EngineConfig,
    progress: Progress | None = None,
) -> ProfileEncoder:
    """`encoder` with its lexical model fitted again on the stored texts (saved in the data
    dir), or `encoder` itself when there is no lexical channel or nothing to fit it on."""
    if not config.lexical_dim or not store.count():
        return encoder
    lexical = fit_lexical(store, config, config.data_dir / LEXICAL_DIR, progress)
    return encoder.with_lexical(lexical or encoder.lexical)


def reencode_store(
    store: ProfileStore,
    encoder: ProfileEncoder,
    *,
    reembed: bool,
    progress: Progress | None = None,
) -> None:
    """Recompute every stored user vector with `encoder` (and text vector, if `reembed`).

    While this runs, the stored vectors are a mix of old and new: the fingerprints are
    cleared first and written last, so a crash here is finished by the next start.
    """
    store.set_meta("vector_fingerprint", "recomputing")
    if reembed:
        store.set_meta("text_fingerprint", "recomputing")
    total, done = store.count(), 0
    for rows in store.iter_rows(batch=512):
        again = encoder.reencode(rows, reembed=reembed)
        store.rewrite_vectors(again.updates, again.vocabulary)
        encoder.vocabulary.learn(again.vocabulary)
        done += len(rows)
        if progress:
            progress("embed" if reembed else "recombine", done, total)
    store.set_meta("text_fingerprint", encoder.text_fingerprint)
    store.set_meta("vector_fingerprint", encoder.fingerprint)
