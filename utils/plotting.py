"""One figure style for the whole book."""
from __future__ import annotations

from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

# Colour-blind-safe palette (Okabe & Ito), used in this order across chapters.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
BOOK_STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.constrained_layout.use": True,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "image.cmap": "RdBu_r",
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    mpl.rcParams.update(BOOK_STYLE)


def subplots(nrows: int = 1, ncols: int = 1, width: float | None = None, height: float | None = None,
             **kwargs):
    """``plt.subplots`` in the book style, sized ``(width, height)`` inches (default 4.2 x 3.4 per panel)."""
    use_book_style()
    size = (width or 4.2 * ncols, height or 3.4 * nrows)
    return plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kwargs)


def label(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Label both axes (with units, in the caller's text) and optionally the panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)


def gram_heatmap(ax, G: np.ndarray, title: str, labels: Sequence[str] | None = None,
                 vmax: float | None = None, colorbar: bool = True, colorbar_label: str = "value"):
    """Symmetric heatmap of a Gram/cosine matrix with a centred colour scale and a labelled colour bar
    (``colorbar_label``, e.g. ``"cosine (unitless)"``)."""
    G = np.asarray(G)
    vmax = float(np.abs(G).max()) if vmax is None else vmax
    im = ax.imshow(G, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title(title)
    ax.grid(False)
    ticks = np.arange(G.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    if labels is not None:
        ax.set_xticklabels(labels, rotation=90)
        ax.set_yticklabels(labels)
    ax.set_xlabel("index j")
    ax.set_ylabel("index i")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label=colorbar_label)
    return im
