"""Predicting what users did not say: the engine's part that fits a model per attribute from
the users who have it (_predict/_fit.py), serves the models' answers as predicted columns
(filters on `predicted.NAME`, or stored-or-predicted), answers PredictAttributes for stored
users and for profiles not stored, and gives zero-shot interest tags (_predict/_tags.py).

Stored values are never touched: predictions live in columns of their own, recomputed from
the user vectors when a server starts and for every user written.

Locks: a fit reads a snapshot of the vectors and stored values under the read lock, fits
with no lock held (writes go on; the users written meanwhile are noted by the catalog), and
swaps the models in under the write lock, predicting for the users written meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ._background import BackgroundCache
from ._catalog import Catalog, document
from ._durable import read_sealed_json
from ._encode import ProfileEncoder, from_f32, text_items
from ._errors import InvalidQuery, PreconditionFailed
from ._jobs import JobRunner
from ._predict import (
    MAX_FIT_USERS,
    PREDICTORS_DIR,
    Answers,
    AttributeModel,
    Inputs,
    Loaded,
    NotPredictable,
    answer_all,
    answers,
    file_stem,
    fit_attribute,
    load_predictors,
    predict_into,
    tag_scores,
    text_features,
    top_tags,
)
from ._rwlock import EngineLocks
from ._types import (
    AttrValue,
    FitResult,
    PredictorInfo,
    PredictQuery,
    Progress,
    UserPrediction,
)

log = logging.getLogger("audience.index")

FIT_PREDICTORS = "fit-predictors"  # the job's kind
MAX_TAG_NAMES = 1000


def info(model: AttributeModel) -> PredictorInfo:
    q = model.quality
    return PredictorInfo(
        attribute=model.attribute,
        kind=model.kind,
        method=model.method + ("+terms" if model.terms else ""),
        classes=tuple(model.classes),
        users=q.users,
        accuracy=round(q.accuracy, 4),
        macro_f1=round(q.macro_f1, 4),
        majority_accuracy=round(q.majority_accuracy, 4),
        majority_macro_f1=round(q.majority_macro_f1, 4),
        calibration_error=round(q.calibration_error, 4),
        mae=round(q.mae, 4),
        baseline_mae=round(q.baseline_mae, 4),
        version=model.version,
        fitted_at=model.fitted_at,
        candidates=dict(q.candidates),
    )


class Predicting:
    def __init__(self, catalog: Catalog, data_dir: Path, locks: EngineLocks) -> None:
        self.catalog = catalog
        self.directory = data_dir / PREDICTORS_DIR
        self.locks = locks
        self.background = BackgroundCache()
        self._fitting = threading.Lock()

    # ------------------------------------------------------------ start

    def load(self, encoder: ProfileEncoder) -> Loaded:
        """(at open, before serving) Serve the saved models that are sound and fitted in this
        vector space, with their saved answers brought up to date (the users written since
        are answered from the store); the rest are named for a refit."""
        loaded = load_predictors(self.directory, encoder.fingerprint, self.catalog.warnings)
        c, models = self.catalog, list(loaded.models.values())
        for model in models:
            model.lexical = encoder.lexical
            loaded.answers[model.attribute].serve(c.attrs)
        since = min((m.answers_sequence for m in models), default=c.store.sequence)
        for rows in c.store.iter_rows(since_seq=since) if models else ():  # one scan for all
            for model in models:
                newer = [r for r in rows if r.seq > model.answers_sequence]
                if newer:
                    iids = np.array([r.iid for r in newer], np.int64)
                    vectors = np.stack([from_f32(r.vec) for r in newer])
                    docs = [document(text_items(r)) for r in newer]
                    predict_into(c.attrs, model, iids, vectors, lambda _, d=docs: d)
        c.predictors.update(loaded.models)
        return loaded

    def stale(self, encoder: ProfileEncoder) -> list[str]:
        """(under the write lock) Stop serving models fitted in another vector space (after a
        rebuild); their attributes, to refit."""
        c = self.catalog
        gone = [n for n, m in c.predictors.items() if m.fingerprint != encoder.fingerprint]
        for name in gone:
            del c.predictors[name]
            c.attrs.drop_predicted(name)
        return gone

    # ------------------------------------------------------------ fitting

    def fit(
        self,
        encoder: ProfileEncoder,
        attributes: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> FitResult:
        """Fit (again) the models of these attributes (none: every stored attribute that
        enough users have), save them and serve them."""
        if not self._fitting.acquire(blocking=False):
            raise PreconditionFailed("predictors are being fitted already")
        try:
            return self._fit(encoder, attributes, progress or (lambda *_: None))
        finally:
            self._fitting.release()

    def _fit(self, encoder: ProfileEncoder, attributes: Sequence[str], progress) -> FitResult:
        t0 = time.perf_counter()
        c = self.catalog
        with self.locks.read():
            known = set(c.attrs.names)
            missing = [a for a in attributes if a not in known]
            if missing:
                raise InvalidQuery("attributes", f"no stored user has {', '.join(missing)}")
            names = list(dict.fromkeys(attributes)) or sorted(known)
            iids, vectors = c.all_user_vectors()
            values = {n: c.attrs.stored(n, iids) for n in names}
            c.written_since_fit = set()
            sequence = c.store.sequence
        lexical = encoder.lexical
        fitted: list[AttributeModel] = []
        answered: list[Answers] = []
        skipped: list[str] = []
        for i, name in enumerate(names):
            stage = f"fit {name}"
            progress(stage, i, len(names))
            rows = np.array([j for j, v in enumerate(values[name]) if v is not None], np.int64)
            if len(rows) > MAX_FIT_USERS:  # a sample: its texts are all that is read
                rows = np.sort(np.random.default_rng(0).choice(rows, MAX_FIT_USERS, replace=False))
            labels: list[AttrValue] = [values[name][j] for j in rows]  # type: ignore[misc]
            dense = text_features(vectors[rows], encoder.text_dims)
            terms = lexical.tfidf(c.documents(iids[rows])) if lexical and len(rows) else None
            try:
                model = fit_attribute(
                    name,
                    Inputs(dense, terms),
                    labels,
                    text_dims=encoder.text_dims,
                    fingerprint=encoder.fingerprint,
                    tick=partial(progress, stage, i, len(names)),
                )
            except NotPredictable as exc:
                skipped.append(f"{name}: {exc}")
                continue
            model.lexical, model.answers_sequence = lexical, sequence
            before = c.predictors.get(name)
            model.version = before.version + 1 if before else self._version_on_disk(name) + 1
            answered.append(answer_all(model, iids, vectors, c.documents))  # no lock held
            model.save(self.directory, answered[-1].arrays())
            fitted.append(model)
            log.info(
                "Predict - %s fitted (%s, %d users) in %.1fs",
                name,
                model.method,
                model.quality.users,
                time.perf_counter() - t0,
            )
        del vectors
        progress("serve", 0, len(fitted))
        with self.locks.writer, self.locks.write():  # swapped in at once
            written, c.written_since_fit = c.written_since_fit or set(), None
            again = np.array(sorted(i for i in written if i in c.uid_of), np.int64)
            for answers_ in answered:
                answers_.serve(c.attrs)
                if len(again):  # users written during the fit: as they are now
                    predict_into(c.attrs, answers_.model, again, c.user_vectors, c.documents)
                c.predictors[answers_.model.attribute] = answers_.model
        progress("serve", len(fitted), len(fitted))
        seconds = time.perf_counter() - t0
        return FitResult(tuple(info(m) for m in fitted), tuple(skipped), round(seconds, 3))

    def _version_on_disk(self, name: str) -> int:
        try:
            doc, _ = read_sealed_json(self.directory / f"{file_stem(name)}.json")
            return int(doc.get("version", 0))
        except (OSError, ValueError, TypeError):
            return 0

    def refit_later(
        self,
        jobs: JobRunner,
        fit: Callable[[Sequence[str], Progress], FitResult],
        attributes: Sequence[str],
        everything: bool = False,
    ) -> None:
        """Refit these attributes' models (or every one) in a job of kind fit-predictors."""
        if not (attributes or everything):
            return
        try:
            jobs.start(FIT_PREDICTORS, partial(fit, () if everything else list(attributes)))
        except PreconditionFailed:  # a fit runs already; the next one picks them up
            log.warning("Predict - a fit is running; %s refitted by the next", list(attributes))

    # ------------------------------------------------------------ answering

    def predictors(self) -> list[PredictorInfo]:
        return [info(m) for _, m in sorted(self.catalog.predictors.items())]

    def models(self, attributes: Sequence[str]) -> list[AttributeModel]:
        served = self.catalog.predictors
        missing = [a for a in attributes if a not in served]
        if missing:
            fitted = ", ".join(sorted(served)) or "none yet"
            raise InvalidQuery(
                "attributes",
                f"no model predicts {', '.join(missing)} (fitted: {fitted}); "
                "fit one with `audience predict fit`",
            )
        return [served[a] for a in attributes] if attributes else list(served.values())

    def predict(self, encoder: ProfileEncoder, query: PredictQuery) -> list[UserPrediction]:
        """(under the read lock) Each user's predicted values (stored users by id first,
        then the profiles, encoded as an upsert would but not stored), and with `tags` (an
        empty list: the served segments' keywords) their zero-shot tags."""
        c = self.catalog
        user_ids, profiles, tags = query.user_ids, query.profiles, query.tags
        models = self.models(query.attributes)
        iids = c.known_iids(user_ids, "user_ids")
        stored: list[dict[str, AttrValue]] = []
        if iids:
            vectors = c.user_vectors(np.array(iids, np.int64))
            by_iid = c.store.attributes_of(iids)
            stored = [by_iid.get(i, {}) for i in iids]
        else:
            vectors = np.zeros((0, encoder.dim), np.float32)
        docs = c.documents(iids) if iids else []
        if profiles:
            profiles = encoder.derived(profiles)  # sentiment, when configured
            encoded = encoder.encode(profiles)
            vectors = np.vstack([vectors, encoded.vectors])
            stored += [dict(p.attributes) for p in profiles]
            docs += [document(p.texts) for p in profiles]
        ids = [*user_ids, *(p.user_id for p in profiles)]
        values = list(answers(models, vectors, docs, stored)) if len(vectors) else []
        user_tags: list[tuple] = [()] * len(ids)
        if tags is not None and len(ids):
            names = self._tag_names(tags)
            if names:
                z, cosine = tag_scores(
                    vectors,
                    encoder.term_vectors(names),
                    self.background.get(c).vectors,
                    encoder.text_dims,
                )
                user_tags = top_tags(names, z, cosine, query.max_tags, query.min_tag_score)
        return [
            UserPrediction(uid, tuple(v), tuple(t)) for uid, v, t in zip(ids, values, user_tags)
        ]

    def _tag_names(self, tags: Sequence[str]) -> list[str]:
        names = [t.strip() for t in tags if t.strip()]
        if not tags and self.catalog.segments is not None:  # the segments' keywords
            model = self.catalog.segments
            names = [k for s in model.by_id.values() for k in s.keywords[:3]]
        names = list(dict.fromkeys(names))
        if len(names) > MAX_TAG_NAMES:
            raise InvalidQuery("tags", f"at most {MAX_TAG_NAMES} tag names, not {len(names)}")
        return names
