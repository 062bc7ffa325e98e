"""Single-file HTML pages: inline CSS, figures as embedded PNGs, no scripts and nothing fetched, so a report
opens anywhere (mail, an air-gapped cluster, a CI artifact) and looks the same."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

from reprocls.files import atomic_write_text

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 10px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
.subtitle{color:#5b6475;margin:0 0 18px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:10px 14px;min-width:130px}
.card .label{font-size:.8em;color:#5b6475;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:1.25em;font-weight:600;margin-top:2px}
.verdict{border-radius:8px;padding:12px 16px;margin:14px 0;font-weight:600}
.verdict.good{background:#e5f5ea;border:1px solid #7cc596}.verdict.warn{background:#fff6e0;border:1px solid #e8c060}
.verdict.bad{background:#fdeaea;border:1px solid #e08a8a}
table{border-collapse:collapse;background:#fff;font-size:.92em;margin:6px 0}
th,td{border:1px solid #d8dce3;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
figure{margin:8px 0;background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:8px;display:inline-block}
figure img{max-width:100%;height:auto;display:block}figcaption{color:#5b6475;font-size:.88em;margin-top:4px}
pre{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:10px;overflow-x:auto;font-size:.85em}
details summary{cursor:pointer;color:#2b5cab}
.bar{display:inline-block;height:10px;background:#4a7bd0;border-radius:2px;vertical-align:middle}
"""


class Markup(str):
    """HTML built by these helpers (a bar, a link) that table() puts in a cell as is instead of escaping it."""


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def png_data_uri(source: bytes | str | Path | Any) -> str:
    """A data: URI for PNG bytes, a PNG file, or a matplotlib figure (rendered here, then closed to free its memory)."""
    if hasattr(source, "savefig"):
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        try:
            source.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(source)
        data = buffer.getvalue()
    elif isinstance(source, (str, Path)):
        data = Path(source).read_bytes()
    else:
        data = bytes(source)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(source: bytes | str | Path | Any, caption: str = "", alt: str = "") -> str:
    """An embedded image with an optional caption."""
    text = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(source)}" alt="{escape(alt or caption)}">{text}</figure>'


def table(rows: Sequence[Sequence[Any]], *, header: bool = True, numeric_columns: Sequence[int] = ()) -> str:
    """Rows of cells as an HTML table; the first row is the header unless header=False. Cells are escaped unless
    they are Markup."""
    if not rows:
        return "<p><em>nothing to show</em></p>"
    lines = ['<div class="scroll"><table>']
    for index, row in enumerate(rows):
        tag = "th" if header and index == 0 else "td"
        cells = []
        for column, cell in enumerate(row):
            cls = ' class="num"' if tag == "td" and column in numeric_columns else ""
            content = cell if isinstance(cell, Markup) else escape(cell)
            cells.append(f"<{tag}{cls}>{content}</{tag}>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table></div>")
    return "\n".join(lines)


def bar(fraction: float, *, width: int = 140) -> Markup:
    """A horizontal bar `fraction` (0..1, clipped; NaN draws nothing) of `width` pixels, for a table cell."""
    share = 0.0 if fraction != fraction else min(max(fraction, 0.0), 1.0)
    return Markup(f'<span class="bar" style="width:{share * width:.1f}px"></span>')


def paragraph(text: str) -> str:
    """Escaped prose between sections' figures and tables."""
    return f"<p>{escape(text)}</p>"


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Headline numbers as a row of labelled cards."""
    body = "".join(f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div></div>'
                   for label, value in items)
    return f'<div class="cards">{body}</div>'


def verdict(text: str, tone: str = "good") -> str:
    """A coloured banner: tone is good, warn or bad."""
    return f'<div class="verdict {escape(tone)}">{escape(text)}</div>'


def code(text: str, *, collapsed: bool = False, summary: str = "show") -> str:
    """Preformatted text (a config, an environment), optionally folded away."""
    block = f"<pre>{escape(text)}</pre>"
    return f"<details><summary>{escape(summary)}</summary>{block}</details>" if collapsed else block


def page(title: str, sections: Sequence[tuple[str, str]], *, subtitle: str = "", intro: str = "") -> str:
    """A whole HTML document: a title, an optional intro block, then (heading, html) sections."""
    parts = [f"<h1>{escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="subtitle">{escape(subtitle)}</p>')
    if intro:
        parts.append(intro)
    for heading, body in sections:
        parts.append(f"<section><h2>{escape(heading)}</h2>\n{body}\n</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n")


def write_page(path: str | Path, document: str) -> Path:
    """Write atomically, so an interrupted write never leaves half a report."""
    return atomic_write_text(path, document)
