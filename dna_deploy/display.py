"""What a person sees: one table-cell formatter (CLI and report alike) and one way to save a plot."""

from __future__ import annotations

from pathlib import Path


def format_value(v) -> str:
    """One cell of a table, for the CLI and the report alike."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(format_value(x) for x in v)
    return str(v)


def new_figure(figsize=(6, 4), *, ncols: int = 1):
    """(figure, axes) on the non-interactive backend, so plots work without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize)


def save_figure(fig, png: str | Path, *, dpi: int = 110) -> Path:
    """Save atomically (temp file + rename) and close the figure."""
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = png.with_name(f".{png.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(png)
    return png
