"""The HTML plumbing of the reports: the page (its style, written atomically), a figure, and
a section drawn from one table."""
from __future__ import annotations

import html
from pathlib import Path

from bids_vlm.derivatives import atomic_path
from bids_vlm.reports.maps import save_figure as _save


def figure(path, out, caption):
    rel = Path(path).relative_to(out).as_posix()
    return (f"<figure><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table_section(heading, table, draw, fig_path, out, caption, note) -> list[str]:
    """A report section drawn from one table: ``<h3>heading</h3>``, then ``note`` when ``table``
    is empty, else the figure ``draw(table)`` saved at ``fig_path`` with ``caption``."""
    if not table.empty:
        _save(draw(table), fig_path)
    return [f"<h3>{heading}</h3>",
            f"<p>{note}</p>" if table.empty else figure(fig_path, out, caption)]


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:90%}"
         "table.summary th{text-align:left;padding-right:1em}.note{color:#8a4b00}"
         ".warning{color:#a00;border:2px solid #a00;padding:0.5em;background:#fff0f0}"
         ".wide{overflow-x:auto}table.drivers{border-collapse:collapse;font-size:90%}"
         "table.drivers td,table.drivers th{padding:0.1em 0.6em;border-bottom:1px solid #ddd}")


def write_html(path, title, body) -> Path:
    doc = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
           f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return Path(path)
