"""Opening a data dir: whatever a crash or a settings change left, bring it to a state that
can be served, and say what was repaired.

    lock        the data dir's LOCK, first: a second server on it fails at once, naming the
                first one's pid
    store       SQLite opens (its WAL replays committed writes); the attribute schema is the
                one given, else the one the data dir was last opened with
    encoder     the model; the saved lexical model (refitted when damaged, of another size,
                or missing once the store holds `lexical_min_users`)
    vectors     stored vectors made under other settings are made again: embedded again when
                the model or text settings changed, else recombined (a crash mid-way is
                finished here, next start)
    erasures    recorded erasures that the store (a restored copy), the saved segment models
                or the snapshots have not applied yet (see _erasure.py)
    catalog     ids, attributes, the newest good index generation brought up to date, the
                segment model (see Catalog.load)
    check       every stored vector against its checksum, in the background: a finding is
                logged and listed in warnings (`audience check` names and repairs them)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import _erasure as erasure
from ._catalog import LEXICAL_DIR, STORE_FILE, Catalog
from ._check import check_in_background
from ._config import EngineConfig
from ._durable import DataDirLock
from ._encode import (
    LexicalModel,
    LexicalModelError,
    ProfileEncoder,
    TextEmbedder,
    Vocabulary,
    make_embedder,
)
from ._refit import fit_lexical, reencode_store
from ._store import ProfileStore
from ._types import Progress

log = logging.getLogger("audience.index")


@dataclass
class Opened:
    config: EngineConfig  # with the data dir's attribute schema filled in
    catalog: Catalog
    encoder: ProfileEncoder


def open_data_dir(
    config: EngineConfig,
    embedder: TextEmbedder | None = None,
    progress: Progress | None = None,
) -> Opened:
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(data_dir)  # before anything is read: one server per data dir
    try:
        return _open(config, embedder, progress, lock)
    except BaseException:
        lock.release()
        raise


def _open(
    config: EngineConfig,
    embedder: TextEmbedder | None,
    progress: Progress | None,
    lock: DataDirLock,
) -> Opened:
    data_dir = config.data_dir
    log.info("Engine - Opening data dir %s", data_dir)
    store = ProfileStore(data_dir / STORE_FILE)
    if config.attributes is None:  # keep the schema this data dir was last opened with
        config = config.with_attributes_json(store.get_meta("attributes") or "[]")
    store.set_meta("attributes", config.attributes_json())
    embedder = embedder or make_embedder(config)
    warnings: list[str] = []
    lexical = _saved_lexical(config, warnings)
    vocabulary = Vocabulary(config.attributes or (), store.vocabulary())
    encoder = ProfileEncoder(config, embedder, vocabulary, lexical)
    catalog = Catalog(config, store, encoder.dim, lock)
    catalog.warnings += warnings
    catalog.warnings += getattr(embedder, "warnings", ())  # e.g. a re-exported model

    count = store.count()
    if config.lexical_dim and encoder.lexical is None and count >= config.lexical_min_users:
        encoder = encoder.with_lexical(fit_lexical(store, config, data_dir / LEXICAL_DIR, progress))
    if count and store.get_meta("text_fingerprint") != encoder.text_fingerprint:
        log.warning("Engine - model or text settings changed; embedding all texts again")
        reencode_store(store, encoder, reembed=True, progress=progress)
    elif count and store.get_meta("vector_fingerprint") != encoder.fingerprint:
        log.warning("Engine - vector settings or lexical model changed; recombining vectors")
        reencode_store(store, encoder, reembed=False, progress=progress)
    store.set_meta("text_fingerprint", encoder.text_fingerprint)
    store.set_meta("vector_fingerprint", encoder.fingerprint)
    erasure.apply_at_open(catalog)  # a restored copy, or a crash before the copies had them
    catalog.load(encoder.fingerprint, progress)
    check_in_background(store, catalog.warnings)  # every stored vector, while serving
    return Opened(config, catalog, encoder)


def _saved_lexical(config: EngineConfig, warnings: list[str]) -> LexicalModel | None:
    """The saved lexical model when it is intact and of the configured size."""
    if not config.lexical_dim:
        return None
    try:
        lexical = LexicalModel.load(config.data_dir / LEXICAL_DIR)
    except LexicalModelError as exc:
        log.error("Lexical - %s; refitting it from the store", exc)
        warnings.append(f"{exc}; refitted from the store")
        return None
    if lexical is not None and lexical.dim != config.lexical_dim:
        log.warning(
            "Lexical - saved model has %d dims, not %d; refitting", lexical.dim, config.lexical_dim
        )
        return None
    return lexical
