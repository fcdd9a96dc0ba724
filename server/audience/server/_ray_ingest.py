"""`audience ingest --engine ray`: read the files and embed the texts on Ray, then load the
result into the server, which does no model work for those texts.

    files --(Ray Data: one read task per file, the local ingest's own RowReader)--> rows
          --(groupby a hash of the user id, then by user inside each bucket)--> one row per
             user: texts in file order, the last attributes
          --(map_batches, an actor pool: the server's encoder export, loaded once per actor)-->
             the user's pooled text vector
          --(this process: the client, batches of users)--> UpsertUsers with text vectors

The encoder comes from the server (GetEncoder): its settings, its ONNX export and the text
fingerprint; workers never fetch a model from a hub, and the server refuses vectors made with
any other fingerprint. The server then stores exactly what a local ingest of the same file
stores (texts, attributes, text vectors; lexical channel and attributes computed there).

A failed worker is restarted by Ray and its batch done again; the upload is by user id, so a
rerun after a failure (a driver killed, say) stores every user once, the last run's texts.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from audience.client import AudienceClient, EncoderExport, Profile, Text, UpsertResult

from ._ingest import ColumnMap, IngestReport, RowReader, newest_texts, read_rows

USERS_PER_ENCODE = 64  # users per actor call (their texts go to the model together)
BUCKET_BYTES = 32 << 20  # input bytes per group of users (Ray Data map_groups)
COUNTERS = ("rows", "skipped_rows", "unparsed_times", "empty_texts", "dropped_texts", "texts")


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address`, or start a local one (None); reuse one this
    process has already joined."""
    import ray

    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
        return
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    except RuntimeError as exc:  # e.g. its GCS did not start in time: once more, from scratch
        logging.getLogger("audience.server").warning("Ray - a local Ray did not start (%s); "
                                                     "trying once more", exc)  # fmt: skip
        ray.shutdown()
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)


def _read_file(
    item: dict[str, Any], *, cols: ColumnMap, fmt: str, delimiter: str | None, buckets: int
):
    """Ray Data flat_map: the rows of one file, read as the local ingest reads them, each
    with the bucket of its user (a stable hash: every row of a user lands in one bucket)."""
    path, file_no = Path(item["path"]), int(item["file"])
    for row_no, raw in enumerate(read_rows(path, fmt, delimiter)):
        report = IngestReport()
        reader = RowReader(cols, report)
        if row_no == 0:
            reader.check_columns(raw)
        read = reader.read(raw)
        uid, texts, attrs = read if read is not None else ("", [], {})
        yield {
            "uid": uid,
            "bucket": zlib.crc32(uid.encode("utf-8", "surrogatepass")) % buckets,
            "order": file_no * (1 << 40) + row_no,  # file order, across files
            "texts": [t.text for t in texts],
            "weights": [1.0 if t.weight is None else t.weight for t in texts],
            "stamps": [t.timestamp for t in texts],
            "attrs": json.dumps(attrs, ensure_ascii=False),
            "skipped_rows": report.skipped_rows,
            "unparsed_times": report.unparsed_times,
            "empty_texts": report.empty_texts,
            "time_examples": report.time_examples,
        }


def _users(rows: dict[str, np.ndarray], *, max_texts: int | None) -> dict[str, list]:
    """Ray Data map_groups over a bucket: every user in it -> one row each, as
    group_profiles makes it (texts in file order, the last attributes)."""
    out: dict[str, list] = {f"n_{k}": [] for k in COUNTERS}
    out.update(uid=[], first=[], texts=[], weights=[], stamps=[], attrs=[], time_examples=[])
    first: dict[str, int] = {}
    texts: dict[str, list[Text]] = {}
    attrs: dict[str, dict] = {}
    reports: dict[str, IngestReport] = {}
    for i in np.argsort(rows["order"], kind="stable"):  # file order
        uid = str(rows["uid"][i])
        first.setdefault(uid, int(rows["order"][i]))
        report = reports.setdefault(uid, IngestReport())
        report.rows += 1
        report.skipped_rows += int(rows["skipped_rows"][i])
        report.unparsed_times += int(rows["unparsed_times"][i])
        report.empty_texts += int(rows["empty_texts"][i])
        report.time_examples += [str(e) for e in rows["time_examples"][i]]
        texts.setdefault(uid, []).extend(
            Text(str(x), weight=float(w), timestamp=int(t))
            for x, w, t in zip(rows["texts"][i], rows["weights"][i], rows["stamps"][i])
        )
        attrs.setdefault(uid, {}).update(json.loads(rows["attrs"][i]))
    for uid, report in reports.items():
        user_texts = newest_texts(texts[uid], max_texts, report) if uid else []
        for k in COUNTERS:  # rows without an id (uid "") are counted, not stored
            out[f"n_{k}"].append(getattr(report, k))
        out["uid"].append(uid)
        out["first"].append(first[uid])
        out["texts"].append([t.text for t in user_texts])
        out["weights"].append([t.weight for t in user_texts])
        out["stamps"].append([t.timestamp for t in user_texts])
        out["attrs"].append(json.dumps(attrs[uid], ensure_ascii=False))
        out["time_examples"].append(report.time_examples[:3])
    return out


class TextVectorActor:
    """Ray Data actor: the server's encoder, loaded once; adds each user's text vector."""

    def __init__(self, export: Any) -> None:
        import ray

        from audience.index import BatchTextEncoder, TextItem

        self._item = TextItem
        # Ray ends its actors without running finalizers: the export's files go as soon as
        # the encoder has read them (they leaked 57 MB per actor and ingest into /tmp).
        with tempfile.TemporaryDirectory(prefix="audience-encoder-") as workdir:
            self._encoder = BatchTextEncoder(ray.get(export), Path(workdir))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        users = [
            [self._item(str(t), float(w), int(s)) for t, w, s in zip(ts, ws, ss)]
            for ts, ws, ss in zip(batch["texts"], batch["weights"], batch["stamps"])
        ]
        batch["text_vector"] = np.array(self._encoder.text_vectors(users), dtype=object)
        return batch


def _profiles(batches: Iterator[dict[str, Any]], report: IngestReport) -> Iterator[Profile]:
    for batch in batches:
        for i in range(len(batch["uid"])):
            for k in COUNTERS:
                setattr(report, k, getattr(report, k) + int(batch[f"n_{k}"][i]))
            for example in batch["time_examples"][i]:
                if len(report.time_examples) < 3 and example not in report.time_examples:
                    report.time_examples.append(str(example))
            uid = str(batch["uid"][i])
            if not uid:
                continue
            report.users += 1
            texts = [
                Text(str(t), weight=float(w), timestamp=int(s))
                for t, w, s in zip(batch["texts"][i], batch["weights"][i], batch["stamps"][i])
            ]
            yield Profile(
                uid,
                texts=texts,
                attributes=json.loads(batch["attrs"][i]),
                text_vector=bytes(batch["text_vector"][i]),
            )


class _Counted:
    """An iterator with a length, so that the upload's progress bar has a total."""

    def __init__(self, items: Iterator[Profile], n: int) -> None:
        self._items, self._n = items, n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Profile]:
        return self._items


def ray_ingest(
    client: AudienceClient,
    files: list[Path],
    cols: ColumnMap,
    *,
    fmt: str = "auto",
    delimiter: str | None = None,
    max_texts_per_user: int | None = None,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[UpsertResult, IngestReport]:
    """Ingest `files` into the server behind `client` with Ray (see the module docstring)."""
    import ray

    for path in files:  # a wrong column is told here, before any worker starts
        first = next(read_rows(path, fmt, delimiter), None)
        if first is not None:
            RowReader(cols, IngestReport()).check_columns(first)
    export = client.get_encoder()
    connect(address)
    context = ray.data.DataContext.get_current()  # this process's: restored at the end
    saved = (context.enable_progress_bars, context.print_on_execution_start)
    try:
        context.enable_progress_bars = progress and sys.stderr.isatty()
        context.print_on_execution_start = False
        return _run(client, files, cols, export, fmt, delimiter, max_texts_per_user,
                    workers, batch_size, progress)  # fmt: skip
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved


def _run(client, files, cols, export, fmt, delimiter, max_texts, workers, batch_size,
         progress) -> tuple[UpsertResult, IngestReport]:  # fmt: skip
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = workers or max(1, cpus)
    # Two stages: read and group (cheap) with every CPU, then embed with every CPU; in one
    # streaming pipeline the actor pool would hold the CPUs the reads and the shuffle wait for.
    # Grouped by bucket, not by user: a few large groups (about 32 MB of input each, at
    # least 2 per CPU) grouped inside by user, instead of a Python call per user.
    size = sum(p.stat().st_size for p in files)
    buckets = max(2 * cpus, size // BUCKET_BYTES + 1)
    read = {"cols": cols, "fmt": fmt, "delimiter": delimiter, "buckets": buckets}
    users = (
        ray.data.from_items([{"path": str(p.absolute()), "file": i} for i, p in enumerate(files)])
        .flat_map(_read_file, fn_kwargs=read)
        .groupby("bucket", num_partitions=min(buckets, 200))
        .map_groups(_users, fn_kwargs={"max_texts": max_texts}, batch_format="numpy")
        .sort("first")  # users in the order a local ingest sends them (see below)
        .materialize()
    )
    export_ref = ray.put(_as_index_export(export))  # once in the object store, not per actor
    ds = users.map_batches(
        TextVectorActor,
        fn_constructor_kwargs={"export": export_ref},
        batch_size=USERS_PER_ENCODE,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
    )
    # Sent in that order, users take the same internal ids and categorical attribute slots
    # as with a local ingest of the same files: the stored result is the same. A dataset
    # carries the context it was made with (a copy), so the order is asked of its own: set on
    # DataContext.get_current() here it was not seen, and the actor pool's batches came back
    # in the order they finished (a flaky test: gender's two slots swapped).
    ds.context.execution_options.preserve_order = True
    report = IngestReport()
    profiles = _Counted(
        _profiles(ds.iter_batches(batch_size=batch_size, batch_format="numpy"), report),
        users.count(),  # rows without an id make one more: a bar that ends just short
    )
    result = client.upsert_users(
        profiles,
        batch_size=batch_size,
        progress=progress,
        text_fingerprint=export.text_fingerprint,
    )
    return result, report


def _as_index_export(export: EncoderExport) -> Any:
    from audience.index import EncoderExport as IndexExport

    return IndexExport(dict(export.settings), export.text_fingerprint, dict(export.files))


def describe_cluster() -> str:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return f"Ray: {len(nodes)} node(s), {cpus} CPUs"
