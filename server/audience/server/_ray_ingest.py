"""`audience ingest --engine ray`: read the files and embed the texts on Ray, then load the
result into the server, which does no model work for those texts.

    files --(Ray Data: one read task per file, the local ingest's own RowReader)--> rows
          --(groupby user id)--> one row per user: texts in file order, last attributes
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from audience.client import AudienceClient, EncoderExport, Profile, Text, UpsertResult

from ._ingest import ColumnMap, IngestReport, RowReader, newest_texts, read_rows

USERS_PER_ENCODE = 64  # users per actor call (their texts go to the model together)
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
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)


def _read_file(item: dict[str, Any], *, cols: ColumnMap, fmt: str, delimiter: str | None):
    """Ray Data flat_map: the rows of one file, read as the local ingest reads them."""
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


def _user(group: Any, *, max_texts: int | None) -> dict[str, list]:
    """Ray Data map_groups: one user's rows (pandas) -> one row, as group_profiles makes it."""
    rows = group.sort_values("order")
    report = IngestReport(
        rows=len(rows),
        skipped_rows=int(rows["skipped_rows"].sum()),
        unparsed_times=int(rows["unparsed_times"].sum()),
        empty_texts=int(rows["empty_texts"].sum()),
    )
    examples = [e for lst in rows["time_examples"] for e in lst][:3]
    uid = rows["uid"].iloc[0]
    texts: list[Text] = []
    attrs: dict[str, Any] = {}
    for t, w, s, a in zip(rows["texts"], rows["weights"], rows["stamps"], rows["attrs"]):
        texts += [Text(x, weight=float(wx), timestamp=int(sx)) for x, wx, sx in zip(t, w, s)]
        attrs.update(json.loads(a))
    if uid:  # rows without an id come as one group: counted, not stored
        texts = newest_texts(texts, max_texts, report)
    out = {f"n_{k}": [getattr(report, k)] for k in COUNTERS}
    out.update(
        uid=[uid],
        texts=[[t.text for t in texts]],
        weights=[[t.weight for t in texts]],
        stamps=[[t.timestamp for t in texts]],
        attrs=[json.dumps(attrs, ensure_ascii=False)],
        time_examples=[examples],
    )
    return out


class TextVectorActor:
    """Ray Data actor: the server's encoder, loaded once; adds each user's text vector."""

    def __init__(self, export: Any) -> None:
        import ray

        from audience.index import BatchTextEncoder, TextItem

        self._item = TextItem
        self._workdir = tempfile.TemporaryDirectory(prefix="audience-encoder-")
        self._encoder = BatchTextEncoder(ray.get(export), Path(self._workdir.name))

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
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress and sys.stderr.isatty()
    context.print_on_execution_start = False
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = workers or max(1, cpus)
    # Two stages: read and group (cheap) with every CPU, then embed with every CPU; in one
    # streaming pipeline the actor pool would hold the CPUs the reads and the shuffle wait for.
    users = (
        ray.data.from_items([{"path": str(p.absolute()), "file": i} for i, p in enumerate(files)])
        .flat_map(_read_file, fn_kwargs={"cols": cols, "fmt": fmt, "delimiter": delimiter})
        .groupby("uid", num_partitions=max(2, 4 * cpus))
        .map_groups(_user, fn_kwargs={"max_texts": max_texts_per_user}, batch_format="pandas")
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
