"""Backups through the real server and the CLI: a restore on a fresh data dir answers as the
original did, a damaged backup is refused, and a user erased after the backup stays erased."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_segments import population

from audience.client import AudienceClient, NotFound
from audience.server._cli import main


def answers(client: AudienceClient, users: list[str]) -> dict:
    out = {}
    for seed in ("ball-1", "code-2", "cook-3"):
        found = client.find_lookalikes(seed_ids=[seed], k=25)
        out[seed] = [(u.user_id, round(u.score, 5)) for u in found.users]
    out["segments"] = sorted(
        (m.user_id, m.segment_id, round(m.strength, 4)) for m in client.get_user_segments(users)
    )
    out["list"] = [(s.segment_id, s.size, s.exemplar_user_ids) for s in client.list_segments()]
    return out


def test_backup_restore_answers_alike_and_honours_erasure(
    start_server, tmp_path: Path, capsys
) -> None:
    original = start_server(data_dir=tmp_path / "data")
    target = f"127.0.0.1:{original.port}"
    with AudienceClient(target, timeout=120) as client:
        client.upsert_users(population(25))
        client.rebuild_index()  # a lexical model, so that it is backed up too
        client.build_segments(reducer="pca", min_cluster_size=10)
        erased = client.list_segments()[0].exemplar_user_ids[0]

        backup = tmp_path / "elsewhere" / "backup-1"
        assert main(["backup", "--target", target, "--out", str(backup)]) == 0
        assert f"at {backup}" in capsys.readouterr().out
        manifest = json.loads((backup / "BACKUP.json").read_text())
        names = set(manifest["files"])
        assert "profiles.sqlite3" in names and "segments/CURRENT" in names
        assert any(n.startswith("index/gen-") for n in names)
        assert any(n.startswith("lexical/") for n in names)
        assert main(["backup", "--target", target, "--out", str(backup)]) == 2  # not empty
        assert "not an empty directory" in capsys.readouterr().err

        client.delete_users([erased])  # after the backup
        remaining = [p.user_id for p in population(25) if p.user_id != erased]
        before = answers(client, remaining)

    restored = tmp_path / "restored"
    assert main(["restore", str(backup), "--data-dir", str(restored)]) == 0
    out = capsys.readouterr().out
    assert "verified and restored" in out and "1 erasures recorded" in out
    server = start_server(data_dir=restored)
    with AudienceClient(f"127.0.0.1:{server.port}") as copy:
        assert answers(copy, remaining) == before  # lookalikes and segments alike
        with pytest.raises(NotFound):
            copy.get_user(erased)
        assert all(erased not in s.exemplar_user_ids for s in copy.list_segments())
        assert copy.stats().users == 74


def test_a_damaged_or_incomplete_backup_is_refused(start_server, tmp_path: Path, capsys):
    server = start_server(data_dir=tmp_path / "data")
    target = f"127.0.0.1:{server.port}"
    with AudienceClient(target) as client:
        client.upsert_users(population(8))
    good = tmp_path / "backup"
    assert main(["backup", "--target", target, "--out", str(good)]) == 0
    capsys.readouterr()

    def broken(name: str, damage) -> str:
        copy = tmp_path / f"broken-{name}"
        shutil.copytree(good, copy)
        damage(copy)
        assert main(["restore", str(copy), "--data-dir", str(tmp_path / f"new-{name}")]) == 2
        assert not (tmp_path / f"new-{name}").exists()  # nothing copied
        return capsys.readouterr().err

    def flip(copy: Path) -> None:
        gen = next((copy / "index").glob("gen-*.faiss"))
        data = bytearray(gen.read_bytes())
        data[len(data) // 2] ^= 0xFF
        gen.write_bytes(bytes(data))

    assert "checksum mismatch" in broken("flip", flip)
    assert "profiles.sqlite3: missing" in broken(
        "missing", lambda c: (c / "profiles.sqlite3").unlink()
    )

    def edit(copy: Path) -> None:
        doc = json.loads((copy / "BACKUP.json").read_text())
        doc["users"] += 1
        (copy / "BACKUP.json").write_text(json.dumps(doc))

    assert "manifest is damaged" in broken("manifest", edit)
    assert main(["restore", str(good), "--data-dir", str(tmp_path / "ok")]) == 0
