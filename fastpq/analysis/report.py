"""A self-contained HTML report of a :class:`~fastpq.core.result.PQResult`.

:func:`write_report` writes ``index.html`` — tables and matplotlib plots, the plots embedded as
base64 PNG, no external file, script or font — next to ``per_class.csv`` and ``result.json``.
With per-image records (``per_image=True``) the page adds PQ by segment size, the error
breakdown and the worst images (:mod:`fastpq.analysis.breakdown`). Also ``fastpq report`` on the command
line. Needs matplotlib (``pip install fastpq[report]``), used through its Agg canvas only (no
pyplot state, no display).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from fastpq.analysis import breakdown
from fastpq.core.result import SPLITS, PQResult

_INSTALL_HINT = "fastpq's HTML report needs matplotlib: pip install fastpq[report]"
_THING, _STUFF = "#1f77b4", "#ff7f0e"
_COST_COLOURS = {"low_iou": "#9467bd", "missed": "#d62728", "spurious": "#8c564b",
                 "wrong_class": "#e377c2", "low_overlap": "#7f7f7f"}
_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px 40px;
       color: #222; max-width: 1200px; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 32px;
     border-bottom: 1px solid #ccc; padding-bottom: 4px; }
p.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 9px; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: 13px; }
"""


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header, rows, text_columns=(0,)) -> str:
    def cell(tag, k, value):
        cls = ' class="text"' if k in text_columns else ""
        return f"<{tag}{cls}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", k, h) for k, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", k, v) for k, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def _scored(result: PQResult) -> list:
    return [r for r in result.per_class.values() if r.tp + r.fp + r.fn > 0]


def _class_bars(result: PQResult) -> str:
    rows = sorted(_scored(result), key=lambda r: r.pq)
    fig = _figure(9, 0.9 + 0.17 * max(len(rows), 1))
    ax = fig.add_subplot()
    ax.barh(range(len(rows)), [100 * r.pq for r in rows],
            color=[_THING if r.isthing else _STUFF for r in rows])
    ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlim(0, 100)
    ax.set_xlabel("PQ (%)")
    ax.set_title("PQ per class (blue: things, orange: stuff)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig, "PQ per class, sorted")


def _sq_rq_scatter(result: PQResult) -> str:
    rows = _scored(result)
    fig = _figure(6, 5)
    ax = fig.add_subplot()
    for level in (0.2, 0.4, 0.6, 0.8):
        rq_axis = [r / 100 for r in range(math.ceil(100 * level), 101)]
        ax.plot([100 * r for r in rq_axis], [100 * level / r for r in rq_axis],
                color="#bbb", lw=0.8, ls="--")
        ax.annotate(f"PQ {100 * level:.0f}", (100, 100 * level), fontsize=7, color="#888",
                    ha="right", va="bottom")
    for isthing, colour, label in ((True, _THING, "things"), (False, _STUFF, "stuff")):
        pts = [r for r in rows if r.isthing == isthing]
        ax.scatter([100 * r.rq for r in pts], [100 * r.sq for r in pts], s=18, c=colour,
                   label=label, alpha=0.8)
    for r in sorted((r for r in rows if r.tp), key=lambda r: r.pq)[:6]:
        ax.annotate(r.name, (100 * r.rq, 100 * r.sq), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    unmatched = sum(1 for r in rows if r.tp == 0)
    if unmatched:
        ax.annotate(f"{unmatched} classes without a match", (0, 0), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlim(0, 102)
    ax.set_ylim(0, 102)
    ax.set_xlabel("RQ (%)")
    ax.set_ylabel("SQ (%)")
    ax.set_title("SQ vs RQ per class (dashed: equal PQ)")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig, "SQ against RQ per class")


def _size_plot(sizes: dict) -> str:
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot()
    names = list(sizes)
    for k, (key, colour) in enumerate((("pq", "#2ca02c"), ("sq", "#1f77b4"), ("rq", "#ff7f0e"))):
        values = [100 * getattr(sizes[n].all, key) for n in names]
        ax.bar([i + (k - 1) * 0.27 for i in range(len(names))], values, width=0.27,
               color=colour, label=key.upper())
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title("PQ, SQ, RQ by segment size")
    ax.legend(fontsize=8)
    return _png(fig, "PQ by segment size")


def _error_plot(errors) -> str:
    fig = _figure(6.5, 2.6)
    ax = fig.add_subplot()
    names = [name for name, _ in SPLITS]
    for i, name in enumerate(names):
        parts = errors.splits[name]
        left = 100 * (1 - sum(parts.values()))
        ax.barh(i, left, color="#2ca02c", label="PQ" if i == 0 else None)
        for kind, colour in _COST_COLOURS.items():
            ax.barh(i, 100 * parts[kind], left=left, color=colour,
                    label=kind.replace("_", " ") if i == 0 else None)
            left += 100 * parts[kind]
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of a perfect score")
    ax.set_title("Where PQ goes: PQ + the cost of each error kind = 100")
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    return _png(fig, "PQ and the cost of each error kind")


def _worst_plot(worst: list) -> str:
    fig = _figure(6, 0.8 + 0.28 * max(len(worst), 1))
    ax = fig.add_subplot()
    labels = [f"#{r.index} ({r.image_id})" if r.image_id is not None else f"#{r.index}"
              for r in worst]
    ax.barh(range(len(worst)), [100 * r.pq for r in worst], color="#d62728")
    ax.set_yticks(range(len(worst)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("image PQ (%)")
    ax.set_title("Worst images")
    return _png(fig, "the images with the lowest PQ")


def render_report(result: PQResult, *, title: str = "Panoptic Quality report",
                  worst: int = 10) -> str:
    """The report page as one HTML string (see :func:`write_report`).

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{result.n_images} images, {len(result.categories)} categories, '
             f"metric {html.escape(result.metric)}, {html.escape(result.convention)} rules</p>",
             "<h2>Summary</h2>",
             _table(["", "PQ", "SQ", "RQ", "N"],
                    [[name, _pct(s.pq), _pct(s.sq), _pct(s.rq), s.n]
                     for name, s in ((n, result.split(n)) for n, _ in SPLITS)])]
    has_records = result.per_image is not None
    sizes = breakdown.by_size(result) if has_records else None
    plots = [_sq_rq_scatter(result)] + ([_size_plot(sizes)] if sizes else [])
    parts += ["<h2>Classes: SQ against RQ" + (", and size" if sizes else "") + "</h2>",
              f'<div class="row">{"".join(plots)}</div>']
    if sizes:
        parts += ["<h2>By segment size</h2>",
                  '<p class="note">COCO area ranges: small &lt; 32², medium &lt; 96², large. '
                  "Matches and false negatives by ground-truth area, false positives by "
                  "predicted area.</p>",
                  _table(["size", "PQ", "SQ", "RQ", "N", "TP", "FP", "FN"],
                         [[name, _pct(r.pq), _pct(r.sq), _pct(r.rq), r.all.n, int(r.tp.sum()),
                           int(r.fp.sum()), int(r.fn.sum())] for name, r in sizes.items()])]
        errors = breakdown.error_breakdown(result)
        parts += ["<h2>Errors</h2>",
                  '<p class="note">Each row adds up to 100 − PQ. low IoU: 1 − IoU of the '
                  "matches; missed: ground truth no prediction of its class overlaps; "
                  "spurious: predictions overlapping no ground truth of their class; wrong "
                  "class: IoU &gt; 0.5 with a segment of another class; low overlap: overlaps "
                  "its class but never above IoU 0.5.</p>",
                  _error_plot(errors),
                  _table(["split", "PQ"] + [k.replace("_", " ") for k in breakdown.COST_KINDS],
                         [[name, _pct(result.split(name).pq)]
                          + [_pct(errors.splits[name][k]) for k in breakdown.COST_KINDS]
                          for name, _ in SPLITS])]
        worst_records = breakdown.worst_images(result, worst)
        parts += ["<h2>Worst images</h2>", _worst_plot(worst_records),
                  _table(["index", "image id", "PQ", "SQ", "RQ", "N", "TP", "FP", "FN"],
                         [[r.index, r.image_id, _pct(r.pq), _pct(r.sq), _pct(r.rq), r.n,
                           sum(c["tp"] for c in r.per_class.values()),
                           sum(c["fp"] for c in r.per_class.values()),
                           sum(c["fn"] for c in r.per_class.values())]
                          for r in worst_records], text_columns=(1,))]
    else:
        parts.append('<p class="note">Evaluate with per_image=True for PQ by size, the error '
                     "breakdown and the worst images.</p>")
    parts += ["<h2>By supercategory</h2>",
              _table(["supercategory", "PQ", "SQ", "RQ", "N"],
                     [[name or "(none)", _pct(s.pq), _pct(s.sq), _pct(s.rq), s.n]
                      for name, s in breakdown.by_supercategory(result).items() if s.n])]
    rows = sorted(_scored(result), key=lambda r: r.pq)
    parts += ["<h2>Per class</h2>", _class_bars(result),
              _table(["id", "name", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN"],
                     [[r.category_id, r.name, "thing" if r.isthing else "stuff", _pct(r.pq),
                       _pct(r.sq), _pct(r.rq), r.tp, r.fp, r.fn] for r in rows],
                     text_columns=(1, 2))]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_report(result: PQResult, out_dir, *, title: str = "Panoptic Quality report",
                 worst: int = 10) -> Path:
    """Write the report into ``out_dir`` (created if needed).

    Files: ``index.html`` (self-contained), ``per_class.csv`` (:meth:`PQResult.to_csv`) and
    ``result.json`` (:meth:`PQResult.to_dict`, plus the per-image records under
    ``"per_image"`` when there are any).

    Parameters
    ----------
    result : PQResult
    out_dir : str or path
    title : str
    worst : int
        How many of the lowest-PQ images to list.

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    """
    page = render_report(result, title=title, worst=worst)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.html").write_text(page, encoding="utf-8")
    result.to_csv(out / "per_class.csv")
    data = result.to_dict()
    if result.per_image is not None:
        data["per_image"] = [r.as_dict() for r in result.per_image]
    (out / "result.json").write_text(json.dumps(data, default=str), encoding="utf-8")
    return out / "index.html"
