"""The HTML of the segment report (see _report.py): version, build stats, the map, one card
per segment. Every string that comes from data is HTML-escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

if TYPE_CHECKING:
    from audience.index._segments import Segment, SegmentModel

_MAX_EXEMPLARS = 20  # exemplar user ids listed per card

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
        f'<p class="muted">Model version <code>{_e(model.version)}</code> · '
        f"{len(segments):,} segments · fit sample of {n_fit:,} users, {n_out:,} outliers</p>",
        "</header>",
        "<section>",
        "<h2>Build</h2>",
        _stats_table(model.stats),
        "</section>",
        "<section>",
        "<h2>Map</h2>",
        '<img class="map" src="map.png" alt="2-D map of the fit-sample users, '
        'coloured by segment">',
        "</section>",
        "<section>",
        "<h2>Segments</h2>",
    ]
    if not segments:
        parts.append('<p class="muted">No segments.</p>')
    parts += [_card_html(s, colours[s.label], files[s.segment_id]) for s in segments]
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
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


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


def _card_html(seg: Segment, colour: str, file: str) -> str:
    sid = _e(seg.segment_id)
    status = str(seg.status or "new")
    parents = [p for p in seg.parents or [] if p != seg.segment_id]
    lineage = ", ".join(f"<code>{_e(p)}</code>" for p in parents)
    facts = [
        ("size", f"{seg.size:,}"),
        ("share", f"{seg.share * 100:.1f}%"),
        ("persistence", f"{seg.persistence:.3f}"),
        ("cohesion", f"{seg.cohesion:.3f}"),
    ]
    out = [
        f'<article class="card" id="{sid}">',
        f'<h3><span class="swatch" style="background:{_e(colour)}"></span>'
        f'<code>{sid}</code><span class="status status-{_e(status)}">{_e(status)}</span>'
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
