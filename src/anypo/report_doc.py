"""The report as a list of blocks, rendered to GitHub Markdown and to one self-contained HTML file.

The HTML has inline CSS and its PNG plots as base64 data URIs: no scripts, fonts or network, so it
opens from a file anywhere (and in a headless browser in the tests).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Doc:
    """A report as a list of blocks: ("h1"|"h2"|"p"|"code", text), ("table", header, rows), ("img", path, alt)."""

    blocks: list[tuple] = field(default_factory=list)

    def add(self, *block: Any) -> None:
        self.blocks.append(block)


def to_markdown(doc: Doc, base: Path) -> str:
    """The report as GitHub Markdown; images are relative links to their PNG files."""
    out = []
    for b in doc.blocks:
        if b[0] in ("h1", "h2"):
            out.append("#" * int(b[0][1]) + " " + b[1])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "code":
            out.append("```bash\n" + b[1] + "\n```")
        elif b[0] == "table":
            out.append("| " + " | ".join(b[1]) + " |\n|" + "---|" * len(b[1]))
            out[-1] += "".join("\n| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in b[2])
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1].relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3em .55em;text-align:right;white-space:nowrap}
th{background:#f1f3f5;text-align:center;white-space:normal;min-width:4.5em}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}code{background:#f1f3f5;padding:.05em .3em;border-radius:3px;font-size:.9em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;border-radius:4px}pre code{background:none;padding:0}
img{max-width:100%;display:block;margin:.6em 0}.ci{color:#666;font-size:.85em}
"""


def _inline_html(text: str) -> str:
    """Escape ``text`` and turn `code` spans and **bold** into tags."""
    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)


def _cell_html(text: str) -> str:
    """A table cell; ``mean [lo, hi]`` puts the interval on a second, smaller line to keep tables narrow."""
    m = re.fullmatch(r"(\S+) (\[[^\]]+\]|\(n=\d+\))", text)
    if m is None:
        return _inline_html(text)
    return f'{html.escape(m.group(1))}<br><span class="ci">{html.escape(m.group(2))}</span>'


def to_html(doc: Doc, title: str) -> str:
    """The report as one self-contained HTML file: inline CSS, PNG plots as base64 data URIs, no scripts."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in doc.blocks:
        if b[0] in ("h1", "h2"):
            out.append(f"<{b[0]}>{_inline_html(b[1])}</{b[0]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline_html(b[1])}</p>")
        elif b[0] == "code":
            out.append(f"<pre><code>{html.escape(b[1], quote=False)}</code></pre>")
        elif b[0] == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in row) + "</tr>" for row in b[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b[0] == "img":
            data = base64.b64encode(b[1].read_bytes()).decode("ascii")
            out.append(f'<img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
