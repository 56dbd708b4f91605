"""What the HTML pages (the report, explain) share: their style sheet, matplotlib figures as
PNG bytes, and PNGs embedded in a page so that it opens offline as one file."""

from __future__ import annotations

import base64
import html
import io

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;
color:#1d2433}
header{background:#1d2433;color:#fff;padding:24px 32px}header h1{margin:0 0 4px;font-size:24px}
header p{margin:0;opacity:.8}main{max-width:1100px;margin:0 auto;padding:24px 32px}
.cards{display:flex;gap:16px;flex-wrap:wrap;margin-bottom:24px}
.card{background:#fff;border-radius:10px;padding:16px 20px;box-shadow:0 1px 3px #0002;
min-width:150px}.card b{display:block;font-size:28px}.card span{color:#5b6475}
section{background:#fff;border-radius:10px;padding:16px 24px;margin-bottom:24px;
box-shadow:0 1px 3px #0002}section h2{margin-top:4px;font-size:18px}
img{max-width:100%;height:auto}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:4px 12px;text-align:right;border-bottom:1px solid #e3e6eb}th:first-child,
td:first-child{text-align:left}.low{color:#b00020;font-weight:600}
"""


def png_bytes(fig) -> bytes:
    """``fig`` drawn as a PNG (110 dpi, cropped to its content), then closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    """An <img> holding ``png`` itself (a data: URL)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
