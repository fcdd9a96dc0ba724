"""The admin CLI through its entry point, against a real server."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audience.client import AudienceClient, Profile
from audience.server._cli import main
from conftest import TOPICS


def rows() -> list[dict]:
    """Two rows per user (one text each), as a file of posts would have them."""
    out = []
    for t, texts in TOPICS.items():
        for i, text in enumerate(texts):
            uid = f"{t}-{i}"
            for j, post in enumerate((text, texts[(i + 1) % len(texts)])):
                out.append(
                    {
                        "uid": uid,
                        "post": post,
                        "age": str(20 + i),
                        "gender": "f" if i % 2 else "m",
                        "day": f"2024-01-{10 + j:02d}",
                    }
                )
    return out


def write(path: Path, fmt: str) -> Path:
    data = rows()
    if fmt == "tsv.gz":
        with gzip.open(path, "wt", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]), delimiter="\t")
            w.writeheader()
            w.writerows(data)
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    else:
        pq.write_table(pa.Table.from_pylist(data), path)
    return path


def test_ingest_every_format_then_lookalike(server, tmp_path: Path, capsys) -> None:
    target = f"127.0.0.1:{server.port}"
    for fmt in ("csv", "tsv.gz", "jsonl", "parquet"):
        path = write(tmp_path / f"posts.{fmt}", fmt)
        code = main(
            [
                "ingest",
                str(path),
                "--target",
                target,
                "--id-col",
                "uid",
                "--text-col",
                "post",
                "--attr",
                "age:number",
                "--attr",
                "gender",
                "--time-col",
                "day",
                "--no-progress",
            ]
        )
        assert code == 0, fmt
        out = capsys.readouterr()
        assert "upserted 18 users" in out.out, (fmt, out)
        assert "36 rows -> 18 users, 36 texts" in out.err
        assert "unparsed times" not in out.err  # said only when some did not parse
    record = server.engine.get_user("cook-2")
    assert len(record.profile.texts) == 2  # two rows grouped into one profile
    assert record.profile.attributes == {"age": 22.0, "gender": "m"}
    assert record.profile.texts[0].timestamp > 0

    assert main(["lookalike", "--target", target, "--seed", "code-0", "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [u["user_id"].split("-")[0] for u in result["users"]] == ["code"] * 3
    exact = ["--exact", "--search-effort", "300"]  # accepted; a flat index is exact anyway
    assert (
        main(["lookalike", "--target", target, "--seed", "code-0", "-k", "3", "--json", *exact])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == result
    assert (
        main(
            [
                "lookalike",
                "--target",
                target,
                "--seed-text",
                "football",
                "-k",
                "2",
                "--filter",
                "gender=f",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "ball-" in table and "of 9 eligible users" in table

    assert main(["stats", "--target", target, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 18 and stats["indexed"] == 18
    assert main(["stats", "--target", target]) == 0
    human = capsys.readouterr().out
    assert "users:" in human and "attributes:" in human and "age, gender" in human
    assert "(" not in human  # no Python tuples
    weight = next(line for line in human.splitlines() if line.startswith("lexical weight"))
    assert len(weight.split(":")[1].strip()) <= 5  # rounded for people
    assert main(["rebuild-index", "--target", target]) == 0
    assert "rebuilt: 18 users" in capsys.readouterr().out
    assert main(["snapshot", "--target", target]) == 0
    assert "snapshot of generation" in capsys.readouterr().out


def test_cli_errors_are_clear(server, tmp_path: Path, capsys) -> None:
    target = f"127.0.0.1:{server.port}"
    assert main(["lookalike", "--target", target, "--seed", "ghost"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    path = write(tmp_path / "p.csv", "csv")
    assert (
        main(["ingest", str(path), "--target", target, "--id-col", "nope", "--text-col", "post"])
        == 2
    )
    assert "columns not in the file" in capsys.readouterr().err


def test_segments_commands(server, tmp_path: Path, capsys) -> None:
    from test_segments import population

    target = f"127.0.0.1:{server.port}"
    with AudienceClient(target) as c:
        c.upsert_users(population(30))
    assert main(["segments", "list", "--target", target]) == 2
    assert "segments build" in capsys.readouterr().err  # FAILED_PRECONDITION says how
    assert (
        main(
            [
                "segments",
                "build",
                "--target",
                target,
                "--reducer",
                "pca",
                "--min-cluster-size",
                "10",
            ]
        )
        == 0
    )
    assert "3 segments over 90 users (1 group above them, " in capsys.readouterr().out
    assert main(["segments", "list", "--target", target, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 3 and sum(s["size"] for s in listed) <= 90
    sid = listed[0]["segment_id"]
    assert main(["segments", "list", "--target", target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["segment", "users", "share", "status", "keywords"]
    assert len(lines) == 4 and lines[1].startswith("seg-")
    assert main(["segments", "list", "--target", target, "--ids"]) == 0
    assert capsys.readouterr().out.split() == [s["segment_id"] for s in listed]
    assert main(["segments", "show", sid, "--target", target]) == 0
    card = capsys.readouterr().out
    assert card.startswith(f"{sid} (segment): ") and f"  {listed[0]['size']} users (" in card
    assert "keywords:" in card and "exemplars:" in card and "{" not in card
    assert "in the tree: under grp-" in card
    assert main(["segments", "list", "--target", target, "--tree"]) == 0
    drawn = capsys.readouterr().out.splitlines()
    assert "3 segments in 1 group, with " in drawn[0] and drawn[1].startswith("grp-0001 ")
    assert sum(line.startswith("  seg-") for line in drawn) == 2  # two under the group
    assert main(["segments", "build", "--target", target, "--target-segments", "3"]) == 0
    built = capsys.readouterr().out
    assert "\nfound by " in built and "neighbour agreement" in built
    assert main(["segments", "show", sid, "--target", target]) == 0
    assert "segments found by " in capsys.readouterr().out
    assert main(["segments", "show", sid, "--target", target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["segment_id"] == sid
    assert main(["users", "show", "cook-0", "--target", target]) == 0
    shown = capsys.readouterr().out
    assert "user:" in shown and "cook-0" in shown and "texts:" in shown
    assert main(["users", "show", "cook-0", "--target", target, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["user_id"] == "cook-0" and doc["segments"]
    assert (
        main(
            [
                "lookalike",
                "--target",
                target,
                "--seed",
                "cook-0",
                "-k",
                "5",
                "--segment",
                sid,
                "--json",
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)["users"]) == 5
    out = tmp_path / "report"
    data_dir = str(server.config.engine.data_dir)
    assert main(["segments", "report", "--data-dir", data_dir, "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert sid in page and (out / "map.png").exists()


def test_mistakes_are_caught_where_they_are_made(server, tmp_path: Path, capsys) -> None:
    """A value no user has warns (naming the closest ones), a range written the common way
    names the right syntax, and a misspelt flag shows the subcommand's usage."""
    target = f"127.0.0.1:{server.port}"
    path = write(tmp_path / "p.csv", "csv")
    ingest = ["ingest", str(path), "--target", target, "--id-col", "uid", "--text-col", "post"]
    attrs = ["--attr", "age:number", "--attr", "gender", "--no-progress"]
    assert main([*ingest, *attrs]) == 0
    capsys.readouterr()
    with AudienceClient(target) as c:
        c.upsert_users([Profile("x-1", texts=["a cup of tea"], attributes={"gender": "female"})])

    seed = ["lookalike", "--target", target, "--seed", "code-0", "-k", "3"]
    assert main([*seed, "--filter", "gender=femal"]) == 0
    err = capsys.readouterr().err
    assert "femal" in err and "'female'" in err, err
    assert main([*seed, "--filter", "gender=femal", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any("female" in w for w in doc["warnings"]), doc

    assert main([*seed, "--filter", "age=20-29"]) == 2
    err = capsys.readouterr().err
    assert "20..29" in err and "age" in err, err

    with pytest.raises(SystemExit) as exit_:
        main(["lookalike", "--target", target, "--seed", "code-0", "--k", "10"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: audience lookalike"), err
    assert "--k" in err
