"""The page around the sections: escaping, inline CSS and JS, the colour scale, links.

Everything is inline. A Content-Security-Policy in the page forbids loading anything that is not
inline or a ``data:`` URI, so even a mistake cannot make the opened report reach the network.
Text that happens to contain a URL (a config value) has its ``://`` broken by a zero-width space,
so the file holds no URL at all.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;
background:#fafafa}
header{background:#24303c;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .meta{font-size:12px;opacity:.8;margin-top:4px}
nav{position:sticky;top:0;background:#eef1f4;padding:6px 24px;border-bottom:1px solid #d5dbe1;
z-index:2;font-size:13px}
nav a{margin-right:14px;color:#24527a;text-decoration:none}
main{padding:8px 24px 40px}section{margin:22px 0}
h2{font-size:18px;border-bottom:1px solid #d5dbe1;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}p.note{font-size:12px;color:#555;margin:4px 0}
table{border-collapse:collapse;font-size:12.5px;background:#fff}
th,td{border:1px solid #d5dbe1;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#eef1f4}td.name,th.name{text-align:left;white-space:nowrap}
td .paper{display:block;font-size:10.5px;color:#444}
.badge{display:inline-block;font-size:10px;padding:0 4px;border-radius:3px;margin-left:4px;
background:#dde6f0;color:#234}
.badge.ref{background:#fde9b8}.badge.proto{background:#d7f0d7}
.charts{display:flex;flex-wrap:wrap;gap:8px}
svg.chart{background:#fff;border:1px solid #d5dbe1}svg text{font-size:10px;fill:#333}
svg .title{font-size:11px;font-weight:600;text-anchor:middle}
svg .tick{text-anchor:middle;fill:#555;font-size:9px}
svg .label{text-anchor:middle;font-size:10px}svg .frame{fill:none;stroke:#999}svg .grid{stroke:#eee}
svg .chance{stroke:#bbb;stroke-dasharray:3 3}svg .marker{stroke:#555;stroke-dasharray:4 3}
svg .legend{font-size:10px}
table.gallery td{text-align:center;padding:3px}
table.gallery img{display:block;margin:auto;image-rendering:auto}
.outcome{display:block;font-size:10.5px;margin-top:2px;border-radius:3px}
.outcome.hit{background:#d7f0d7}.outcome.miss{background:#f8d0d0}
.outcome.false_alarm{background:#fbe3c3}
.outcome.correct_normal{background:#e6ecf2}
.filters button{font-size:12px;margin-right:4px;border:1px solid #b8c2cc;background:#fff;
border-radius:3px;cursor:pointer}
.filters button.on{background:#24527a;color:#fff}
details{text-align:left}
details pre{max-height:360px;overflow:auto;background:#f4f6f8;padding:6px;font-size:11px;
text-align:left}
.hidden{display:none}select{font-size:13px}
"""

JS = """
(function(){
  function show(group, value){
    document.querySelectorAll('[data-metric-group="'+group+'"]').forEach(function(el){
      var on = el.getAttribute('data-metric') === value;
      el.classList.toggle('hidden', !on); el.classList.toggle('active', on);
    });
  }
  document.querySelectorAll('select.metric-select').forEach(function(sel){
    sel.addEventListener('change', function(){ show(sel.getAttribute('data-group'), sel.value); });
  });
  document.querySelectorAll('.filters').forEach(function(box){
    var table = document.getElementById(box.getAttribute('data-table'));
    box.querySelectorAll('button').forEach(function(btn){
      btn.addEventListener('click', function(){
        box.querySelectorAll('button').forEach(function(b){ b.classList.remove('on'); });
        btn.classList.add('on');
        var want = btn.getAttribute('data-outcome');
        table.querySelectorAll('tbody tr').forEach(function(row){
          var outcomes = ' ' + row.getAttribute('data-outcomes') + ' ';
          var has = want === 'all' || outcomes.indexOf(' ' + want + ' ') >= 0;
          row.classList.toggle('hidden', !has);
        });
      });
    });
  });
})();
"""


def esc(text: object) -> str:
    """HTML-escape ``text`` and break any ``scheme://`` so the page holds no URL.

    Args:
        text: anything printable.
    """
    return html.escape(str(text), quote=True).replace("://", ":&#8203;//")


def fmt_number(value: float | None, digits: int = 1) -> str:
    """A number for a table cell; ``-`` for missing values.

    Args:
        value: the number.
        digits: decimals.
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def fmt_bytes(value: int | None) -> str:
    """Bytes as MiB / GiB; ``-`` when unknown.

    Args:
        value: a byte count.
    """
    if value is None:
        return "-"
    if value >= 1 << 30:
        return f"{value / (1 << 30):.2f} GiB"
    return f"{value / (1 << 20):.0f} MiB"


def scale_color(value: float | None, low: float, high: float, higher_is_better: bool = True) -> str:
    """A light background colour from red (worst) through yellow to green (best) of the table.

    Args:
        value: the cell's value (None: no colour).
        low: the table's smallest value.
        high: the table's largest value.
        higher_is_better: whether large values are good.
    """
    if value is None or not math.isfinite(value):
        return ""
    t = 0.5 if high <= low else (value - low) / (high - low)
    if not higher_is_better:
        t = 1.0 - t
    return f"background:hsl({t * 120:.0f},70%,82%)"


def relative_href(target: Path, report_file: Path) -> str:
    """A relative link from the report to ``target`` (a run directory), percent-encoded.

    Args:
        target: the linked file or folder.
        report_file: where the report is written.
    """
    rel = os.path.relpath(Path(target).resolve(), Path(report_file).resolve().parent)
    href = quote(Path(rel).as_posix())
    return href + "/" if Path(target).is_dir() else href


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    attrs: str = "",
    name_columns: int = 1,
    row_attrs: Sequence[str] | None = None,
) -> str:
    """A table from already-escaped cell HTML.

    Args:
        headers: header cells (escaped here).
        rows: rows of cell HTML (not escaped here).
        attrs: attributes of the ``<table>`` tag.
        name_columns: how many leading columns are left-aligned names.
        row_attrs: attributes per body row.
    """
    head = "".join(
        f'<th class="name">{esc(h)}</th>' if i < name_columns else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        extra = f" {row_attrs[r]}" if row_attrs else ""
        cells = "".join(
            f'<td class="name">{c}</td>' if i < name_columns else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr{extra}>{cells}</tr>")
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def details(summary: str, content_html: str) -> str:
    """A collapsed block.

    Args:
        summary: the visible line (escaped here).
        content_html: what opens (HTML).
    """
    return f"<details><summary>{esc(summary)}</summary>{content_html}</details>"


def page(title: str, meta: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document.

    Args:
        title: the page title (escaped here).
        meta: a line under the title (escaped here).
        sections: (anchor id, heading, body HTML) per section.
    """
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>{content}</section>'
        for anchor, heading, content in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><div class="meta">{esc(meta)}</div></header>'
        f"<nav>{nav}</nav><main>{body}</main><script>{JS}</script></body></html>\n"
    )
