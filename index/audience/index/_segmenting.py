"""A segment build from the engine's side: a snapshot of the indexed users under the read
lock, the build with no lock held (writes go on; users written after the snapshot are placed
on demand until the next build), then the model saved and swapped in under the writer lock.
Members' profiles read their stored attributes and, for an attribute a member has no stored
value of, the served model's answer as `predicted.NAME`.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _erasure as erasure
from ._catalog import SEGMENTS_DIR, Catalog
from ._config import EngineConfig
from ._durable import disk_full_as
from ._encode import ProfileEncoder
from ._rwlock import EngineLocks
from ._segments import (
    Placer,
    Population,
    SegmentBuild,
    SegmentBuilder,
    SegmentParams,
    with_text_dims,
)
from ._types import Progress


def build_and_serve(
    catalog: Catalog,
    encoder: ProfileEncoder,
    config: EngineConfig,
    locks: EngineLocks,
    params: SegmentParams | None,
    progress: Progress | None,
    placer: Placer | None,
) -> SegmentBuild:
    c = catalog
    params = with_text_dims(params or SegmentParams(), encoder.text_dims, encoder.attr_dims)
    builder = SegmentBuilder(params, min_group_size=config.segment_min_group_size, placer=placer)
    with locks.read():
        iids, vectors = c.all_user_vectors()
        previous, seq, user_id = c.segments, c.store.sequence, dict(c.uid_of.items())

    def texts(iids: Sequence[int]) -> dict[int, tuple[list, dict]]:
        """Stored texts and attributes, and the predicted values of users with no stored
        one (as predicted.NAME), so that profiles show both."""
        rows = c.store.texts_and_attributes(iids)
        with locks.read():
            guessed = c.attrs.predicted_of(list(rows)) if c.predictors else {}
        return {i: (t, {**a, **guessed.get(i, {})}) for i, (t, a) in rows.items()}

    users = Population(iids, vectors, user_id, texts, seq, encoder.term_vectors)
    model = builder.build(users, previous, progress)
    del users, vectors
    with locks.writer:  # no delete between the check of exemplars and the save
        gone = {u for s in model.by_id.values() for u in s.exemplar_user_ids}
        erasure.withdraw_from_served(model, {u for u in gone if u not in c.iid_of})
        with disk_full_as("segments not saved; the previous model is still served"):
            model.save(config.data_dir / SEGMENTS_DIR)
        membership_of = c.membership_of(model)
        with locks.write():
            c.serve_segments(model, membership_of)
    return SegmentBuild.of(model)
