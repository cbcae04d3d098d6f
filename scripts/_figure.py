"""What the figure scripts of the docs share: their command line over run directories, a headless
pyplot, and writing the figure."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_args(doc: str, out: str, smooth: int, smooth_help: str, extra=None) -> argparse.Namespace:
    """``runs ... --out PNG --smooth N`` (plus what ``extra(parser)`` adds), parsed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--smooth", type=int, default=smooth, help=smooth_help)
    if extra is not None:
        extra(ap)
    return ap.parse_args()


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on a CI machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: Path) -> None:
    """Lay ``fig`` out and write it to ``out`` (its folder created)."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")
