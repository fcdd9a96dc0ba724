"""The HTML of the segment report (see _report.py), for marketers: a summary table first (name,
size, share, top keywords, the attributes that most set each segment apart, by lift), the
segment tree, the map with its legend, one card per segment; build internals last, folded
away. Attributes are ordered by how much they tell segments apart, and one that moves in no
segment (lift within 10%, median within 10%) is left out and named as such. Every string
that comes from data is HTML-escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

if TYPE_CHECKING:
    from audience.index._segments import Segment, SegmentModel

_MAX_EXEMPLARS = 20  # exemplar user ids listed per card
_FLAT = 0.1  # an attribute whose lifts stay within 1 +- this in every segment tells nothing
_MIN_SHARE = 0.05  # a value held by fewer members is not called distinctive
_Z = 3.5  # a move chance explains less often than once in ~4,000 (many values are tested)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC",
       "PingFang SC", "Microsoft YaHei", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; color: #222; background: #fafafa; line-height: 1.45; }
h1 { margin: 0 0 .2rem; font-size: 1.6rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92em; }
.muted { color: #666; }
table.stats { border-collapse: collapse; font-size: .9rem; }
table.stats td, table.stats th { border: 1px solid #ddd; padding: .2rem .6rem;
       text-align: left; vertical-align: top; }
table.stats th { background: #f0f0f0; font-weight: 600; }
img { max-width: 100%; height: auto; }
.map { background: #fff; border: 1px solid #ddd; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 1rem 1.2rem;
        margin: 1rem 0; }
.card h3 { margin: 0 0 .5rem; font-size: 1.2rem; display: flex; align-items: center;
           gap: .5rem; flex-wrap: wrap; }
.swatch { display: inline-block; width: .9rem; height: .9rem; border-radius: 3px; }
.status { font-size: .75rem; font-weight: 600; padding: .1rem .5rem; border-radius: 1rem;
          background: #eee; color: #444; }
.status-new { background: #e3f2fd; color: #0d47a1; }
.status-kept { background: #e8f5e9; color: #1b5e20; }
.status-split { background: #fff3e0; color: #e65100; }
.status-merged { background: #f3e5f5; color: #4a148c; }
.facts { display: flex; flex-wrap: wrap; gap: .3rem 1.5rem; margin: 0 0 .6rem; }
.facts div dt { display: inline; color: #666; }
.facts div dd { display: inline; margin: 0 0 0 .3rem; font-weight: 600; }
.kw { display: flex; flex-wrap: wrap; gap: .3rem; margin: .3rem 0 .8rem; padding: 0;
      list-style: none; }
.kw li { background: #f1f3f4; border-radius: 1rem; padding: .1rem .6rem; font-size: .9rem; }
.exemplars { font-size: .85rem; margin-top: .5rem; word-break: break-all; }
table.summary { border-collapse: collapse; width: 100%; background: #fff; font-size: .9rem; }
table.summary td, table.summary th { border-bottom: 1px solid #e4e4e4; padding: .35rem .5rem;
       text-align: left; vertical-align: top; }
table.summary th { background: #f0f0f0; }
td.num { text-align: right; white-space: nowrap; }
ul.tree, ul.tree ul { list-style: none; margin: 0; padding-left: 1.3rem; }
ul.tree { padding-left: 0; }
ul.tree li { margin: .15rem 0; }
ul.tree .group { font-weight: 600; }
ul.tree .part { font-size: .9em; }
details { margin-top: 2rem; }
summary { cursor: pointer; color: #444; }
ul.tree details { margin-top: 0; }
ul.tree details > summary { color: inherit; }
"""


def _e(value: Any) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def html_page(
    model: SegmentModel,
    segments: Sequence[Segment],
    colours: dict[int, str],
    files: dict[str, str],
) -> str:
    n_fit = len(model.fit_labels)
    n_out = int(np.sum(np.asarray(model.fit_labels) < 0))
    users = int(model.stats.get("users", 0)) if isinstance(model.stats, dict) else 0
    spread = attribute_spread(segments)
    choice = (model.stats or {}).get("choice") or {}
    how = f" Found by {_e(choice['method'])}: {_e(choice.get('reason', ''))}." if choice else ""
    groups = list(getattr(model, "groups", []) or [])
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Audience segments: {_e(model.version)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>Audience segments</h1>",
        f"<p>{len(segments):,} segments"
        + (f" in {len(groups):,} groups" if groups else "")
        + (f" over {users:,} users" if users else "")
        + f", {_e(_share(model))} outliers (users like no segment enough to join one).{how}</p>",
        f'<p class="muted">Model version <code>{_e(model.version)}</code>. Each segment is '
        "named by its top keywords; <em>tight</em> segments hold users who write about the "
        "same thing, <em>loose</em> ones share a theme more broadly. Lift: how much more "
        "common a value is in the segment than among all users (x2 = twice as common).</p>",
        "</header>",
        "<section>",
        "<h2>Summary</h2>",
        _summary_table(segments, colours, spread),
        "</section>",
    ]
    if groups:
        parts += ["<section>", "<h2>Segment tree</h2>", _tree_html(model, colours), "</section>"]
    parts += [
        "<section>",
        "<h2>Map</h2>",
        '<img class="map" src="map.png" alt="2-D map of the fit-sample users, '
        'coloured by segment, with a legend">',
        "</section>",
        "<section>",
        "<h2>Segments</h2>",
    ]
    if not segments:
        parts.append('<p class="muted">No segments.</p>')
    parts += [_card_html(s, colours[s.label], files[s.segment_id], spread) for s in segments]
    parts.append("</section>")
    gone = [e for e in model.lineage or [] if isinstance(e, dict) and e.get("status") == "gone"]
    if gone:
        parts += ["<section>", "<h2>Gone since the previous build</h2>", "<ul>"]
        for entry in gone:
            heirs = ", ".join(f"<code>{_e(c)}</code>" for c in entry.get("children") or [])
            parts.append(
                f"<li><code>{_e(entry.get('segment_id'))}</code>"
                + (f" → {heirs}" if heirs else " (no successor)")
                + "</li>"
            )
        parts += ["</ul>", "</section>"]
    parts += [
        "<details>",
        f"<summary>Build details (for operators; fit sample {n_fit:,} users, "
        f"{n_out:,} outliers)</summary>",
        _stats_table(model.stats),
        "</details>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _share(model: SegmentModel) -> str:
    stats = model.stats if isinstance(model.stats, dict) else {}
    share = stats.get("outlier_share")
    return f"{100 * float(share):.1f}%" if isinstance(share, (int, float)) else "some"


def tightness(cohesion: float) -> str:
    """Cohesion (members' mean cosine to the centre, 0..1) in a word."""
    return "tight" if cohesion >= 0.5 else "medium" if cohesion >= 0.3 else "loose"


def attribute_spread(segments: Sequence[Segment]) -> dict[str, float]:
    """attribute -> how far it moves across segments (the largest |lift - 1| of a value, or
    relative change of a median), most distinctive first. Only moves that chance does not
    explain count (z >= 3.5 against the population's share or median): an attribute that
    moves nowhere, like a star sign, is left out."""
    spread: dict[str, float] = {}
    for seg in segments:
        profile = seg.attribute_profile if isinstance(seg.attribute_profile, dict) else {}
        for name, entry in profile.items():
            if isinstance(entry, dict):
                moves = [effect for effect, _, _ in _moves(entry)]
                spread[name] = max([spread.get(name, 0.0), *moves])
    kept = {k: v for k, v in spread.items() if v > _FLAT}
    return dict(sorted(kept.items(), key=lambda kv: -kv[1]))


def _moves(entry: dict) -> list[tuple[float, float, str]]:
    """(effect, lift or ratio, value) of each value (or the median) that moved beyond chance:
    effect = |lift - 1| for a value held by 5% of the members, |median / population's - 1|
    for a number; z from the binomial (a share) or the quartiles (a median)."""
    count = entry.get("count") or 0
    if entry.get("withheld") or not count:
        return []
    if entry.get("type") == "numeric":
        med, pop = entry.get("median"), entry.get("population_median")
        if med is None or pop is None:
            return []
        sd = max((entry.get("q3") or med) - (entry.get("q1") or med), 1e-9) / 1.35
        z = abs(med - pop) / (sd / count**0.5)
        ratio = med / pop if pop else 1.0
        return [(abs(ratio - 1.0), ratio, "median")] if z >= _Z else []
    out = []
    for v in entry.get("values") or []:
        share, pop = float(v.get("share") or 0), float(v.get("population_share") or 0)
        if share < _MIN_SHARE or not 0 < pop < 1:
            continue
        z = abs(share - pop) / (pop * (1 - pop) / count) ** 0.5
        lift = float(v.get("lift") or 1.0)
        if z >= _Z:
            out.append((abs(lift - 1.0), lift, str(v.get("value"))))
    return out


def distinctive(seg: Segment, spread: dict[str, float], top: int = 2) -> list[str]:
    """The segment's most distinctive attribute values, as short phrases."""
    profile = seg.attribute_profile if isinstance(seg.attribute_profile, dict) else {}
    found: list[tuple[float, str]] = []
    for name in spread:
        entry = profile.get(name)
        if not isinstance(entry, dict):
            continue
        for effect, lift, value in _moves(entry):
            if value == "median":
                pop = entry["population_median"]
                text = f"{name} median {entry['median']:g} (all: {pop:g})"
                if effect > _FLAT:
                    found.append((effect, text))
            elif lift >= 1 + 2 * _FLAT:
                found.append((effect, f"{name} {value} x{lift:.1f}"))
    found.sort(key=lambda x: -x[0])
    return [text for _, text in found[:top]]


def _summary_table(
    segments: Sequence[Segment], colours: dict[int, str], spread: dict[str, float]
) -> str:
    if not segments:
        return '<p class="muted">No segments.</p>'
    head = (
        "<tr><th></th><th>segment</th><th>users</th><th>share</th><th>top keywords</th>"
        "<th>stands out by</th><th>how alike</th></tr>"
    )
    rows = []
    for s in segments:
        rows.append(
            f'<tr><td><span class="swatch" style="background:{_e(colours[s.label])}"></span></td>'
            f'<td><a href="#{_e(s.segment_id)}">{_e(s.name or s.segment_id)}</a><br>'
            f'<code class="muted">{_e(s.segment_id)}</code></td>'
            f'<td class="num">{s.size:,}</td><td class="num">{s.share * 100:.1f}%</td>'
            f"<td>{_e(', '.join(s.keywords[:5])) or '–'}</td>"
            f"<td>{_e('; '.join(distinctive(s, spread))) or '–'}</td>"
            f"<td>{tightness(s.cohesion)}</td></tr>"
        )
    return f'<table class="summary">{head}{"".join(rows)}</table>'


def _tree_html(model: SegmentModel, colours: dict[int, str]) -> str:
    """Groups, segments and their parts as nested lists, coarsest first; a segment's parts
    folded under it."""
    nodes = {s.segment_id: s for s in model.nodes()}

    def item(node: Segment) -> str:
        swatch = (
            f'<span class="swatch" style="background:{_e(colours[node.label])}"></span> '
            if node.kind == "segment" and node.label in colours
            else ""
        )
        text = (
            f'<span class="{_e(node.kind)}">{swatch}{_e(node.name or node.segment_id)}</span> '
            f'<span class="muted">{node.size:,} users ({node.share * 100:.1f}%) · '
            f"<code>{_e(node.segment_id)}</code></span>"
        )
        kids = [nodes[c] for c in node.children if c in nodes]
        inner = "<ul>" + "".join(item(k) for k in kids) + "</ul>" if kids else ""
        if kids and node.kind == "segment":  # its parts, folded: the line opens them
            folded = sum(1 for p in model.parts if not p.children and _under(p, node, nodes))
            text += f' <span class="muted">· {folded} parts</span>'
            return f"<li><details><summary>{text}</summary>{inner}</details></li>"
        return f"<li>{text}{inner}</li>"

    top = [s for s in nodes.values() if not s.parent_id]
    top.sort(key=lambda s: -s.size)
    return '<ul class="tree">' + "".join(item(t) for t in top) + "</ul>"


def _under(node: Segment, above: Segment, nodes: dict[str, Segment]) -> bool:
    """Whether `node` lies below `above` in the tree."""
    at = node.parent_id
    while at:
        if at == above.segment_id:
            return True
        at = nodes[at].parent_id if at in nodes else ""
    return False


def _stats_table(stats: Any) -> str:
    rows = _flatten(stats) if isinstance(stats, dict) else []
    if not rows:
        return '<p class="muted">No build statistics recorded.</p>'
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="stats">{body}</table>'


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, display value) rows; nested dicts become dotted keys."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, _display(v)))
    return rows


def _display(v: Any) -> str:
    if isinstance(v, float) or isinstance(v, np.floating):
        return f"{float(v):.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_display(x) for x in v)
    return str(v)


def _card_html(seg: Segment, colour: str, file: str, spread: dict[str, float]) -> str:
    sid = _e(seg.segment_id)
    status = str(seg.status or "new")
    parents = [p for p in seg.parents or [] if p != seg.segment_id]
    lineage = ", ".join(f"<code>{_e(p)}</code>" for p in parents)
    facts = [
        ("users", f"{seg.size:,}"),
        ("share", f"{seg.share * 100:.1f}%"),
        ("members are", f"{tightness(seg.cohesion)} (similarity {seg.cohesion:.2f})"),
        ("in group", seg.parent_id or "–"),
    ]
    standout = "; ".join(distinctive(seg, spread, top=4))
    out = [
        f'<article class="card" id="{sid}">',
        f'<h3><span class="swatch" style="background:{_e(colour)}"></span>'
        f"{_e(seg.name or seg.segment_id)} <code>{sid}</code>"
        f'<span class="status status-{_e(status)}">{_e(status)}</span>'
        + (
            f'<span class="muted" style="font-size:.85rem;font-weight:400">from {lineage}</span>'
            if lineage
            else ""
        )
        + "</h3>",
        '<dl class="facts">'
        + "".join(f"<div><dt>{k}</dt><dd>{_e(v)}</dd></div>" for k, v in facts)
        + "</dl>",
    ]
    if seg.keywords:
        out.append('<ul class="kw">' + "".join(f"<li>{_e(k)}</li>" for k in seg.keywords) + "</ul>")
    else:
        out.append('<p class="muted">No keywords.</p>')
    if standout:
        out.append(f'<p><span class="muted">Stands out by:</span> {_e(standout)}</p>')
    out.append(f'<img src="{_e(quote(file))}" alt="Attribute profile of {sid}" loading="lazy">')
    ids = list(seg.exemplar_user_ids or [])
    if ids:
        more = len(ids) - _MAX_EXEMPLARS
        listed = ", ".join(f"<code>{_e(u)}</code>" for u in ids[:_MAX_EXEMPLARS])
        out.append(
            f'<p class="exemplars"><span class="muted">Exemplar users:</span> {listed}'
            + (f' <span class="muted">(+{more:,} more)</span>' if more > 0 else "")
            + "</p>"
        )
    out.append("</article>")
    return "\n".join(out)
