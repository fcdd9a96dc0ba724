"""A static HTML report of a segment model: a 2-D map of users, one card per segment.

    out_dir/
      map.png                  fit-sample users in 2-D (UMAP, cosine; PCA below 50 points),
                               coloured by segment, outliers light grey, ids at the medians
      segment-<id>.png         the segment's attribute profile as small charts
      index.html               version, build stats, the map, the cards (largest first)

The page needs no network, no JavaScript and no server: open index.html from the folder.
Every string that comes from data (keywords, user ids, attribute values, ids) is
HTML-escaped. Matplotlib is imported inside `write_report` (importing this module stays
cheap) and used through its object API on the Agg canvas: no pyplot, no global backend
switch, no window, safe inside the gRPC server. Each file is written to a temporary name
and renamed, and index.html is written last, so a complete index.html means a complete
report.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._report_page import attribute_spread, html_page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from audience.index._segments import Segment, SegmentModel

log = logging.getLogger("audience.server")

_UMAP_MIN_POINTS = 50  # below this UMAP's 15-neighbour graph is meaningless: PCA instead
_OUTLIER_COLOUR = "#d0d0d0"
_CJK_FONTS = (  # the first installed ones join the fallback list, so CJK text renders
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Microsoft YaHei",
    "SimHei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Droid Sans Fallback",
    "AR PL UMing CN",
)
_MAX_PANELS = 12  # attribute panels per card; more are counted, not drawn
_MAX_VALUES = 6  # categorical values per panel
_MAX_LABEL_CHARS = 18  # category labels in a panel are cut to this
_LEGEND_MAX = 30  # segments named in the map's legend (the largest)


def _legend_label(seg: Segment) -> str:
    return _cut(f"{seg.segment_id}  {seg.name}" if seg.name else seg.segment_id, 40)


def write_report(
    model: SegmentModel, out_dir: Path, *, max_map_points: int = 5000, seed: int = 0
) -> Path:
    """Write the report of `model` into `out_dir` (created if missing); return index.html.

    max_map_points: at most this many fit-sample users are drawn on the map (a random,
    seeded sample). seed: drives the sample and the UMAP layout, so a report is repeatable.
    """
    if max_map_points < 1:
        raise ValueError(f"max_map_points: must be >= 1, got {max_map_points}")
    t0 = time.perf_counter()
    log.info("Report - Start")
    from matplotlib import rc_context

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    segments = sorted(model.segments, key=lambda s: (-s.size, s.segment_id))
    colours = _segment_colours(segments)
    files = _card_files(segments)

    with rc_context(_rc()), warnings.catch_warnings():
        # Missing glyphs (no CJK font installed) draw as boxes; the warning would quote the
        # user's text, so it is silenced along with UMAP's chatter about n_jobs and seeds.
        warnings.filterwarnings("ignore", message=r"(?s).*missing from font")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"umap\b")
        _save_figure(_map_figure(model, colours, max_map_points, seed), out_dir / "map.png")
        order = list(attribute_spread(segments))  # most distinctive first; flat ones left out
        for seg in segments:
            fig = _card_figure(seg, colours[seg.label], order)
            _save_figure(fig, out_dir / files[seg.segment_id])

    page = html_page(model, segments, colours, files)
    index = out_dir / "index.html"
    _write_atomically(index, page.encode("utf-8"))
    log.info("Report - Completed: %d segments in %.1f s", len(segments), time.perf_counter() - t0)
    return index


# ---------------------------------------------------------------------- files


def _card_files(segments: Sequence[Segment]) -> dict[str, str]:
    """segment_id -> file name, safe on any file system and unique even after cleaning."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for seg in segments:
        stem = "segment-" + (re.sub(r"[^A-Za-z0-9._-]", "_", seg.segment_id) or "_")
        name, i = f"{stem}.png", 1
        while name.lower() in used:  # case-insensitive file systems collide too
            i += 1
            name = f"{stem}-{i}.png"
        used.add(name.lower())
        names[seg.segment_id] = name
    return names


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_figure(fig: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _write_atomically(path, buf.getvalue())


def _rc() -> dict[str, Any]:
    """Matplotlib settings for the report: DejaVu Sans, then any installed CJK font."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return {
        "font.family": ["DejaVu Sans", *(f for f in _CJK_FONTS if f in installed)],
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.fonttype": "none",
    }


# ---------------------------------------------------------------------- colours


def _palette(n: int) -> list[str]:
    """n colours: tab20's dark shades, then its light ones (greys left out), then cycle."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab = [to_hex(c) for c in colormaps["tab20"].colors]
    grey = {"#7f7f7f", "#c7c7c7"}  # too close to the outliers' grey
    base = [c for c in tab[0::2] + tab[1::2] if c not in grey]
    return [base[i % len(base)] for i in range(n)]


def _segment_colours(segments: Sequence[Segment]) -> dict[int, str]:
    """label -> hex colour; the largest segments get the most distinct colours."""
    return {seg.label: c for seg, c in zip(segments, _palette(len(segments)))}


# ---------------------------------------------------------------------- map


def _embed_2d(coords: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """(n, 2) layout of the rows and the method's name: UMAP from 50 points, else PCA."""
    n = len(coords)
    if n >= _UMAP_MIN_POINTS:
        from audience.index._segments import umap_cosine

        xy = umap_cosine(coords, n_components=2, n_neighbors=15, random_state=seed)
        return np.asarray(xy, dtype=np.float64), "UMAP (cosine)"
    return _pca_2d(coords), "PCA"


def _pca_2d(coords: np.ndarray) -> np.ndarray:
    """The first two principal components (numpy SVD); zero-padded when fewer exist."""
    x = np.asarray(coords, dtype=np.float64).reshape(len(coords), -1)
    out = np.zeros((len(x), 2))
    if len(x) < 2 or x.shape[1] == 0:
        return out
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(2, len(s))
    out[:, :k] = u[:, :k] * s[:k]
    return out


def _map_figure(model: SegmentModel, colours: dict[int, str], max_points: int, seed: int) -> Figure:
    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    coords = np.asarray(model.fit_coords)
    labels = np.asarray(model.fit_labels)
    n_total = len(coords)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(n_total, size=min(n_total, max_points), replace=False))
    coords, labels = coords[take], labels[take]

    fig = Figure(figsize=(12, 7.5))
    ax = fig.add_subplot()
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    if len(coords) == 0:
        ax.text(
            0.5, 0.5, "no users in the fit sample", ha="center", va="center", transform=ax.transAxes
        )
        return fig

    xy, method = _embed_2d(coords, seed)
    size = float(np.clip(6000 / len(xy), 3, 30))  # marker area, pt^2: denser -> smaller
    # Labels without a segment (none by construction) are drawn as outliers.
    known = np.isin(labels, list(colours))
    out = ~known
    ax.scatter(
        xy[out, 0],
        xy[out, 1],
        s=size * 0.6,
        c=_OUTLIER_COLOUR,
        linewidths=0,
        label="outliers",
        rasterized=True,
    )
    halo = [patheffects.withStroke(linewidth=3, foreground="white")]
    for label, colour in colours.items():
        mine = labels == label
        if not mine.any():
            continue
        ax.scatter(
            xy[mine, 0], xy[mine, 1], s=size, c=colour, linewidths=0, alpha=0.8, rasterized=True
        )
    # Ids after every point, so no later segment paints over an earlier one's name.
    for seg in model.segments:
        mine = labels == seg.label
        if seg.label not in colours or not mine.any():
            continue
        # Just above the median: a tight segment stays visible under its name.
        ax.annotate(
            seg.segment_id,
            tuple(np.median(xy[mine], axis=0)),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
            fontweight="bold",
            color="black",
            path_effects=halo,
        )
    handles = [
        Line2D([], [], marker="o", ls="", color=colours[s.label], label=_legend_label(s))
        for s in sorted(model.segments, key=lambda s: -s.size)[:_LEGEND_MAX]
        if s.label in colours
    ]
    handles.append(Line2D([], [], marker="o", ls="", color=_OUTLIER_COLOUR, label="outliers"))
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False
    )
    n_out = int(out.sum())
    ax.set_title(
        f"{len(xy):,} of {n_total:,} fit-sample users, {method}; "
        f"{len(colours)} segments, {n_out:,} outliers shown in grey",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- cards


def _card_figure(seg: Segment, colour: str, order: Sequence[str] | None = None) -> Figure:
    """The segment's attribute profile: one small panel per attribute, two per row, the
    attributes in `order` (those that tell segments apart, most first; None: all)."""
    from matplotlib.figure import Figure

    profile = seg.attribute_profile if isinstance(seg.attribute_profile, dict) else {}
    title = f"{seg.segment_id}: {seg.size:,} users ({seg.share * 100:.1f}%)"
    if profile.get("withheld") is True:
        return _message_card(
            title, colour, "attribute profile withheld", str(profile.get("reason") or "")
        )
    names = [k for k, v in profile.items() if isinstance(v, dict)]
    flat = [k for k in names if order is not None and k not in order]
    if order is not None:
        names = [k for k in order if k in names]
    if not names:
        why = f"left out, the same in every segment: {', '.join(flat)}" if flat else ""
        return _message_card(title, colour, "no attributes that set segments apart", why)
    shown, hidden = names[:_MAX_PANELS], len(names) - _MAX_PANELS
    ncols = 1 if len(shown) == 1 else 2
    nrows = math.ceil(len(shown) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 0.7 + 2.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, shown):
        entry = profile[name]
        kind = entry.get("type")
        count = entry.get("count")
        head = _cut(str(name), 28) + (f"  (n={count:,})" if isinstance(count, int) else "")
        ax.set_title(head, fontsize=9, loc="left")
        if kind == "categorical":
            _categorical_panel(ax, entry, colour)
        elif kind == "numeric":
            _numeric_panel(ax, entry, colour)
        else:
            _panel_message(ax, "unsupported attribute type")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    _card_title(fig, title, colour)
    notes = [f"+{hidden} more attributes not shown"] if hidden > 0 else []
    notes += [f"left out, the same in every segment: {', '.join(flat)}"] if flat else []
    if notes:
        fig.text(
            0.99,
            0.005,
            "; ".join(notes),
            ha="right",
            va="bottom",
            fontsize=8,
            color="#666666",
        )
    fig.tight_layout(rect=(0, 0.02, 1, 1 - 0.45 / fig.get_figheight()), h_pad=1.5)
    return fig


def _message_card(title: str, colour: str, message: str, detail: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 1.8))
    ax = fig.add_subplot()
    _panel_message(ax, message, detail)
    _card_title(fig, title, colour)
    return fig


def _card_title(fig: Figure, title: str, colour: str) -> None:
    from matplotlib.patches import Rectangle

    w, h = fig.get_size_inches()  # the swatch is a 0.16 in square whatever the card size
    y = 1 - 0.22 / h
    fig.add_artist(
        Rectangle(
            (0.08 / w, y - 0.08 / h), 0.16 / w, 0.16 / h, color=colour, transform=fig.transFigure
        )
    )
    fig.text(0.32 / w, y, title, ha="left", va="center", fontsize=11, fontweight="bold")


def _panel_message(ax: Any, message: str, detail: str = "") -> None:
    ax.set_axis_off()
    ax.text(
        0.5,
        0.55,
        message,
        ha="center",
        va="center",
        fontsize=11,
        color="#777777",
        style="italic",
        transform=ax.transAxes,
    )
    if detail:
        ax.text(
            0.5,
            0.3,
            _cut(detail, 60),
            ha="center",
            va="center",
            fontsize=8,
            color="#999999",
            transform=ax.transAxes,
        )


def _categorical_panel(ax: Any, entry: dict, colour: str) -> None:
    """Top values: the segment's share beside the population's, as paired bars."""
    values = [v for v in entry.get("values") or [] if isinstance(v, dict)][:_MAX_VALUES]
    if not values:
        _panel_message(
            ax,
            "no data" if not entry.get("count") else "withheld",
            "" if not entry.get("count") else "every value is too rare to show",
        )
        return
    names = [_cut(str(v.get("value")), _MAX_LABEL_CHARS) for v in values]
    seg = np.array([_num(v.get("share")) for v in values], dtype=float)
    pop = np.array([_num(v.get("population_share")) for v in values], dtype=float)
    y = np.arange(len(values))
    ax.barh(y - 0.2, np.nan_to_num(seg) * 100, height=0.4, color=colour, label="segment")
    ax.barh(y + 0.2, np.nan_to_num(pop) * 100, height=0.4, color="#bbbbbb", label="population")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    top = np.nanmax(np.concatenate([seg, pop, [0.01]])) * 100
    ax.set_xlim(0, top * 1.15)
    ax.xaxis.set_major_formatter("{x:.0f}%")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="lower right", frameon=False)


def _numeric_panel(ax: Any, entry: dict, colour: str) -> None:
    """A box from q1/median/q3 with min-max whiskers, and the population median."""
    stats = {k: _num(entry.get(k)) for k in ("min", "q1", "median", "q3", "max", "mean")}
    pop_median = _num(entry.get("population_median"))
    if entry.get("withheld") or any(math.isnan(stats[k]) for k in ("q1", "median", "q3")):
        withheld = entry.get("withheld") or entry.get("count")
        _panel_message(
            ax, "withheld" if withheld else "no data", "too few members have it" if withheld else ""
        )
        return
    lo = stats["min"] if not math.isnan(stats["min"]) else stats["q1"]
    hi = stats["max"] if not math.isnan(stats["max"]) else stats["q3"]
    ax.plot([lo, hi], [0, 0], color="#555555", linewidth=1, zorder=1)
    ax.plot([lo, lo], [-0.12, 0.12], color="#555555", linewidth=1)
    ax.plot([hi, hi], [-0.12, 0.12], color="#555555", linewidth=1)
    ax.barh(
        0,
        stats["q3"] - stats["q1"],
        left=stats["q1"],
        height=0.45,
        color=colour,
        alpha=0.85,
        zorder=2,
    )
    ax.plot([stats["median"]] * 2, [-0.225, 0.225], color="black", linewidth=2, zorder=3)
    span = [v for v in (lo, hi, pop_median) if not math.isnan(v)]
    pad = (max(span) - min(span)) * 0.08 or 1.0
    left, right = min(span) - pad, max(span) + pad
    if not math.isnan(pop_median):
        ax.axvline(pop_median, color="#d62728", linestyle="--", linewidth=1, zorder=4)
        on_right = pop_median > (left + right) / 2  # keep the label inside the panel
        ax.text(
            pop_median,
            0.45,
            "population median " if on_right else " population median",
            color="#d62728",
            fontsize=7,
            ha="right" if on_right else "left",
            va="center",
        )
    ax.set_ylim(-0.6, 0.6)
    ax.set_xlim(left, right)
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="x", labelsize=7)
    note = f"median {_fmt(stats['median'])}, IQR {_fmt(stats['q1'])}–{_fmt(stats['q3'])}"
    if not math.isnan(stats["mean"]):
        note += f", mean {_fmt(stats['mean'])}"
    ax.set_title(note, fontsize=7, color="#444444", loc="right")


def _num(x: Any) -> float:
    """A finite float, or NaN for None / non-numbers / inf."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return math.nan
    x = float(x)
    return x if math.isfinite(x) else math.nan


def _fmt(x: float) -> str:
    return f"{x:,.4g}" if abs(x) < 1e6 else f"{x:.3g}"


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
