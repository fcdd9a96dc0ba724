"""`audience export lookalike ... --out FILE` and `audience export segment ID --out FILE`:
an audience or a segment streamed from the server into CSV (.csv, .csv.gz) or Parquet
(.parquet), with chosen stored attributes as columns; for audiences of millions (the file is
written in row groups of ROWS users as they arrive, never held whole)."""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._cli_commands import _client, lookalike_query, names

ROWS = 50_000  # users per Parquet row group / between two progress updates


def cmd_export_lookalike(args: argparse.Namespace) -> int:
    attrs = names(args.attrs)
    query = lookalike_query(args, attrs)
    with _client(args) as client:
        users = client.stream_lookalikes(query)
        expected = args.k if args.fraction is None else None
        return _export(args, users, "score", attrs, expected)


def cmd_export_segment(args: argparse.Namespace) -> int:
    attrs = names(args.attrs)
    with _client(args) as client:
        size = client.get_segment(args.segment_id).size  # NOT_FOUND before a file is made
        users = client.stream_segment_members(args.segment_id, include_attributes=attrs)
        return _export(args, users, "strength", attrs, size)


def _export(
    args: argparse.Namespace, users: Iterable[Any], score: str, attrs: list[str], expected: Any
) -> int:
    out: Path = args.out
    kind = _kind(out)
    t0 = time.perf_counter()
    partial = out.with_name(out.name + ".partial")
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=expected, unit="users", desc=out.name, disable=None)  # off in logs
    writer = (
        ParquetRows(partial, score, attrs) if kind == "parquet" else CsvRows(partial, score, attrs)
    )
    written = 0
    try:
        batch: list[Any] = []
        for user in users:
            batch.append(user)
            if len(batch) >= ROWS:
                writer.write(batch)
                written += len(batch)
                if bar is not None:
                    bar.update(len(batch))
                batch = []
        writer.write(batch)
        written += len(batch)
        if bar is not None:
            bar.update(len(batch))
        writer.close()
        partial.replace(out)  # a file at `out` is always whole
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    size = out.stat().st_size
    print(f"wrote {written:,} users to {out} ({kind}, {size / 1e6:,.1f} MB) in {seconds:.1f}s")
    for name, lost in getattr(writer, "dropped", {}).items():
        if lost:
            print(
                f"warning: {lost:,} values of {name} were text in a column typed as numbers "
                "(from the first rows) and are left empty; export to .csv to keep them",
                file=sys.stderr,
            )
    if written == 0:
        print("warning: the audience is empty; the file has the header only", file=sys.stderr)
    return 0


def _kind(out: Path) -> str:
    name = out.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ValueError(f"--out: {out.name} is neither .csv, .csv.gz nor .parquet")


class CsvRows:
    def __init__(self, path: Path, score: str, attrs: Sequence[str]) -> None:
        gz = path.name.endswith(".csv.gz.partial")
        self._file = gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(["user_id", score, *attrs])
        self._attrs = attrs

    def write(self, users: Sequence[Any]) -> None:
        self._csv.writerows(
            [u.user_id, repr(u.score), *(_cell((u.attributes or {}).get(a)) for a in self._attrs)]
            for u in users
        )

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ParquetRows:
    """user_id (string), the score (float32, as served), then each attribute: float64 when
    the first values seen are numbers, else string (text met later in a number column is
    counted in `dropped` and said)."""

    def __init__(self, path: Path, score: str, attrs: Sequence[str]) -> None:
        self._path, self._score, self._attrs = path, score, list(attrs)
        self._writer: Any = None
        self._numeric: dict[str, bool] = {}
        self.dropped: dict[str, int] = {}  # text values met in a column typed as numbers

    def write(self, users: Sequence[Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            for a in self._attrs:
                seen = [(u.attributes or {}).get(a) for u in users]
                self._numeric[a] = all(
                    isinstance(v, (int, float)) and not isinstance(v, bool)
                    for v in seen
                    if v is not None
                )
            fields = [pa.field("user_id", pa.string()), pa.field(self._score, pa.float32())]
            fields += [
                pa.field(a, pa.float64() if self._numeric[a] else pa.string()) for a in self._attrs
            ]
            self._writer = pq.ParquetWriter(self._path, pa.schema(fields))
        columns = {
            "user_id": [u.user_id for u in users],
            self._score: [u.score for u in users],
        }
        for a in self._attrs:
            values = [(u.attributes or {}).get(a) for u in users]
            if self._numeric[a]:
                columns[a] = [v if isinstance(v, (int, float)) else None for v in values]
                lost = sum(1 for v in values if v is not None and not isinstance(v, (int, float)))
                self.dropped[a] = self.dropped.get(a, 0) + lost
            else:
                columns[a] = [None if v is None else str(v) for v in values]
        self._writer.write_table(pa.table(columns, schema=self._writer.schema))

    def close(self) -> None:
        if self._writer is None:  # nothing came: an empty file with the columns asked
            self.write([])
        self._writer.close()
