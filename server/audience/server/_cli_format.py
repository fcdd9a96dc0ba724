"""What the `audience` CLI prints for people (every command also has `--json` for scripts):
aligned fields, lists joined, floats rounded, long texts cut."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._report_page import tightness

TEXT_CHARS = 100  # a stored text is shown up to this many characters
TOP_VALUES = 3  # categorical values shown per attribute in a segment card


def number(x: Any) -> str:
    """A number for people: integers as such, others to 3 significant digits."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:.3g}"


def percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def cut(text: str, n: int = TEXT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def fields(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """`key: value` lines with the keys aligned; sequences joined, empty ones as "none"."""
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    out = []
    for key, value in pairs:
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) if value else "none"
        elif isinstance(value, float):
            value = number(value)
        out.append(f"{key + ':':<{width + 1}} {value}")
    return out


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Columns padded to their widest cell; the last column is not padded."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = []
    for r in [list(header), *rows]:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1])] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return lines


def stats(s: Any) -> list[str]:
    return fields(
        [
            ("users", number(s.users)),
            ("indexed", number(s.indexed)),
            ("index", s.index_type),
            ("generation", s.generation),
            ("sequence", s.sequence),
            ("model", s.model),
            ("dimension", s.dimension),
            ("from texts", s.text_dimension),  # the leading dimensions; the rest, attributes
            ("lexical model", s.lexical_model),
            ("lexical documents", number(s.lexical_documents)),
            ("lexical weight", number(round(s.lexical_weight, 3))),
            ("attributes", list(s.attributes)),
            ("data dir", s.data_dir),
            ("warnings", list(s.warnings)),
            *_replication(s.replication),
        ]
    )


def _replication(r: Any) -> list[tuple[str, Any]]:
    if r is None:
        return []
    if r.role == "primary":
        published = f"generation {r.generation}" if r.generation else "nothing yet"
        out = [("role", f"primary, publishing to {r.source}"), ("published", published)]
    else:
        served = (
            f"generation {r.generation}, {number(round(r.lag_s, 1))} s old"
            if r.generation
            else "waiting for a first generation"
        )
        out = [("role", f"read replica of {r.source}"), ("serving", served)]
        if r.primary:
            out.append(("primary", r.primary))
    return out + ([("replication error", r.last_error)] if r.last_error else [])


def segment_rows(segments: Sequence[Any]) -> list[str]:
    return table(
        ["segment", "users", "share", "status", "keywords"],
        [
            (s.segment_id, number(s.size), percent(s.share), s.status, ", ".join(s.keywords[:8]))
            for s in segments
        ],
    )


def segment_tree(tree: Any) -> list[str]:
    """The groups, segments and their parts as an indented tree, coarsest first."""
    nodes = {s.segment_id: s for s in tree.nodes()}
    out = [
        f"{tree.model_version}: {len(tree.segments)} segments in "
        f"{plural(len(tree.groups), 'group')}, with {plural(len(tree.parts), 'part')} below them"
    ]
    if tree.method:
        out.append(f"found by {tree.method}: {tree.method_reason}")

    def draw(node: Any, depth: int) -> None:
        name = f" {node.name}" if node.name else ""
        out.append(
            f"{'  ' * depth}{node.segment_id}  {number(node.size)} ({percent(node.share)}){name}"
        )
        for child in node.children:
            draw(nodes[child], depth + 1)

    for top in tree.top_level():
        draw(top, 0)
    return out


def segment_card(s: Any, tree: Any = None) -> list[str]:
    """One segment for people: size, keywords, the attributes that set it apart, exemplars."""
    kind = {"group": "group of segments", "part": "part of a segment"}.get(s.kind, "segment")
    out = [
        f"{s.segment_id} ({kind}): {s.name or '(no name)'}",
        f"  {number(s.size)} users ({percent(s.share)}), {s.status}"
        + (f" from {', '.join(s.parents)}" if s.parents and s.status != "kept" else ""),
        f"  keywords:  {', '.join(s.keywords) or '(withheld or none)'}",
        f"  in the tree: under {s.parent_id or '(top level)'}"
        + (f"; holds {', '.join(s.children)}" if s.children else ""),
        f"  {tightness(s.cohesion)}: members' mean similarity to its centre "
        f"{number(round(s.cohesion, 2))}",
    ]
    if tree is not None and tree.method:
        out.append(f"  segments found by {tree.method}: {tree.method_reason}")
    profile = s.attribute_profile or {}
    if profile.get("withheld"):
        out.append(f"  attributes: withheld ({profile.get('reason', 'small segment')})")
    else:
        lines = [_attribute_line(name, entry) for name, entry in profile.items()]
        scored = sorted((line for line in lines if line), key=lambda x: -x[0])
        if scored:
            out.append("  attributes, most distinctive first:")
            out += [f"    {text}" for _, text in scored]
    out.append(f"  exemplars: {', '.join(s.exemplar_user_ids) or 'none'}")
    return out


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _attribute_line(name: str, entry: dict) -> tuple[float, str] | None:
    """(how much it sets the segment apart, the line) for one attribute's profile."""
    if entry.get("withheld") or not entry.get("count"):
        return None
    if entry.get("type") == "numeric":
        med, pop = entry.get("median"), entry.get("population_median")
        if med is None:
            return None
        spread = (entry.get("q3") or med) - (entry.get("q1") or med) or 1.0
        gap = abs(med - pop) / spread if pop is not None else 0.0
        return gap, (
            f"{name}: median {number(med)} (everyone: {number(pop)}), "
            f"middle half {number(entry.get('q1'))}..{number(entry.get('q3'))}"
        )
    values = entry.get("values") or []
    if not values:
        return None
    shown = ", ".join(
        f"{v['value']} {percent(v['share'])} (x{number(round(v['lift'], 2))})"
        for v in values[:TOP_VALUES]
    )
    top_lift = max(abs(math.log(max(v["lift"], 1e-9))) for v in values[:TOP_VALUES])
    return top_lift, f"{name}: {shown}"


def user(record: Any, memberships: Sequence[Any]) -> list[str]:
    p = record.profile
    out = fields(
        [
            ("user", p.user_id),
            ("attributes", [f"{k}={number(v)}" for k, v in sorted(p.attributes.items())]),
            (
                "segment",
                ", ".join(
                    (m.segment_id + (f", part {m.part_id}" if m.part_id else ""))
                    if not m.outlier
                    else "outlier (no segment)"
                    for m in memberships
                )
                or "(no segments built)",
            ),
            ("texts", len(p.texts)),
        ]
    )
    out += [f"  {i}. {cut(t.text)}" for i, t in enumerate(p.texts[:10], 1)]
    if len(p.texts) > 10:
        out.append(f"  ... and {len(p.texts) - 10} more")
    return out


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _took(job: Any) -> str:
    end = job.finished_at or time.time()
    return f"{end - job.created_at:,.1f}s" if job.created_at else "-"


def _at(job: Any) -> str:
    if job.done:
        return job.error or "-"
    count = f" {number(job.stage_done)}/{number(job.stage_total)}" if job.stage_total else ""
    return job.stage + count + (" (cancelling)" if job.cancel_requested else "")


def job_rows(jobs: Sequence[Any]) -> list[str]:
    return table(
        ["job", "kind", "state", "started", "took", "stage or outcome"],
        [
            (j.job_id, j.kind, j.state.lower(), _when(j.created_at), _took(j), cut(_at(j), 70))
            for j in jobs
        ],
    )


def job_result(job: Any) -> str:
    r = job.result
    if job.kind == "rebuild-index" and r is not None:
        return f"rebuilt: {r.users} users, generation {r.generation}, {r.seconds:.1f}s"
    if job.kind == "build-segments" and r is not None:
        return (
            f"segments {r.model_version}: {r.segments} segments over {r.users} users "
            f"({plural(r.groups, 'group')} above them, {plural(r.parts, 'part')} below), "
            f"{100 * r.outlier_share:.1f}% outliers, "
            f"{r.seconds:.1f}s" + (f"\nfound by {r.method}: {r.method_reason}" if r.method else "")
        )
    if job.kind == "fit-predictors" and r is not None:
        fitted = ", ".join(p.attribute for p in r.predictors) or "none"
        lines = [f"fitted {plural(len(r.predictors), 'model')} ({fitted}) in {r.seconds:.1f}s"]
        lines += [f"skipped {why}" for why in r.skipped]
        return "\n".join(lines) + "\nsee their quality with `audience predict list`"
    return f"{job.job_id} {job.state.lower()}"


def job_card(job: Any) -> list[str]:
    pairs = [
        ("job", job.job_id),
        ("kind", job.kind),
        ("state", job.state.lower() + (" (cancel requested)" if job.cancel_requested else "")),
        ("started", _when(job.created_at)),
        ("took" if job.done else "running for", _took(job)),
    ]
    if not job.done:
        pairs.append(("stage", _at(job)))
    if job.result is not None:
        pairs.append(("result", job_result(job)))
    if job.error:
        pairs.append(("error", f"{job.error_code}: {job.error}"))
    return fields(pairs)


def quality(q: Any) -> list[str]:
    """An AudienceQuality in two to four lines."""
    tight = []  # only an estimate made with its audience has the audience's own figures
    if q.background_cohesion:
        tight = [
            f"users in the seeds' interests (estimated precision): {q.interest_share:.0%} "
            f"(random users: {q.background_interest_share:.0%})",
            f"fit to the seeds' interests {q.interest_fit:.2f} (random users: "
            f"{q.background_interest_fit:.2f}); audience cohesion {q.cohesion:.2f} (two random "
            f"users: {q.background_cohesion:.2f})",
        ]
    return tight + [
        f"held-out seeds expected within this audience: {q.heldout_recall:.0%} "
        f"({q.reach:.2%} of the eligible users)",
        f"lift over random: x{q.lift_at_1:.1f} at 1%, x{q.lift_at_5:.1f} at 5%, "
        f"x{q.lift_at_10:.1f} at 10% reach ({q.heldout_seeds} seeds held out in turn)",
    ]


def diagnostics(d: Any) -> list[str]:
    """SeedDiagnostics as a card."""
    lines = [
        f"{d.seeds} seeds, cohesion {d.cohesion:.2f} (two random users: "
        f"{d.background_cohesion:.2f})",
        f"interests: {len(d.interests)}",
    ]
    for n, interest in enumerate(d.interests, 1):
        words = ", ".join(interest.keywords) or "-"
        lines.append(
            f"  {n}. {len(interest.seeds)} seeds ({interest.share:.0%}), cohesion "
            f"{interest.cohesion:.2f}: {words}"
        )
        lines.append(f"     seeds: {', '.join(interest.seeds[:12])}")
    if d.outliers:
        lines.append(f"outliers (fit no interest): {', '.join(d.outliers)}")
    if d.quality is not None:
        lines.append(f"quality of {d.strategy}:")
        lines += ["  " + line for line in quality(d.quality)]
    lines.append(f"auto would use: {d.suggested_strategy}")
    lines += [f"warning: {w}" for w in d.warnings]
    return lines
