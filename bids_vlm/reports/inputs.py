"""The participant report's account of its inputs: the analysis units left out before the
graph, and what each run's stimulus timeline shows (:mod:`bids_vlm.inputs.timeline_summary`)."""
from __future__ import annotations

import html


def skipped_units(skipped) -> str:
    """A warning listing the analysis units left out, and why."""
    if not skipped:
        return ""
    items = "".join(f"<li>{html.escape(u)}: {html.escape(why)}</li>" for u, why in skipped.items())
    return f"<div class='warning'><p>Analysis units skipped:</p><ul>{items}</ul></div>"


def timeline_table(timelines: dict) -> str:
    """Per run: what its timeline shows (:mod:`bids_vlm.inputs.timeline_summary`)."""
    if not timelines:
        return ""
    head = ("<tr><th>run</th><th>samples</th><th>image</th><th>video frame</th><th>text</th>"
            "<th>blank</th><th>distinct images / videos / texts</th><th>media time shown</th>"
            "</tr>")
    rows = []
    for run, s in timelines.items():
        media = ", ".join(f"{n} {a:g}-{b:g} s" for n, (a, b, _) in s["video_time"].items())
        cells = [run, s["samples"], s["image"], s["video_frame"], s["text"], s["blank"],
                 f"{s['distinct_images']} / {s['distinct_videos']} / {s['distinct_texts']}",
                 media or "-"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<h3>Stimulus timeline</h3><table class='summary'>" + head + "".join(rows) +
            "</table>")
