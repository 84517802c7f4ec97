"""Interactive views of minority collapse: live ipywidgets for a kernel, frames for the website.

* :class:`LPMFigure` is one matplotlib figure (classifier cosine heatmap, a 2-D view of the
  classifiers, the minority-cosine-vs-R curve) whose artists are updated in place by
  :meth:`LPMFigure.update`; it is rendered to PNG bytes.
* :func:`lpm_explorer` (Jupyter, Colab) wires a log-scale R slider, a K_A selector and an
  ``E_W * E_H`` slider to that figure; the PNG goes into one ``ipywidgets.Image``, so a move
  swaps the pixels of one image: no flicker, no stacked outputs.  :func:`training_browser` does
  the same for real-training results by R.
* :func:`draw_lpm` and :func:`draw_training_run` draw one frame each for
  ``utils.explorable.explorable``, which shows a live slider in a kernel and precomputed frames
  on the website.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine as PlacedLayout

from .minority_collapse import PAPER_E_H, PAPER_E_W, collapse_threshold, solve_symmetric_lpm
from .plotting import PALETTE, use_book_style

MAJORITY_COLOR, MINORITY_COLOR = PALETTE[0], PALETTE[1]
PAPER_ENERGY = PAPER_E_W * PAPER_E_H  # only E_W * E_H matters; the paper's E_W = 1, E_H = 5


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def classifier_coordinates(gram_w: np.ndarray, num_majority: int) -> np.ndarray:
    """(K, 2) coordinates of K classifiers in a fixed plane, from their Gram matrix alone.

    The classifiers are embedded canonically as the rows of the symmetric square root
    ``G^{1/2}`` of ``gram_w`` (a (K, K) Gram matrix ``W W^T``; the rows have exactly these inner
    products) and projected on two fixed unit directions of R^K: x, the axis from the minority
    mean to the majority mean (``1_A/K_A - 1_B/K_B``), and y, a linear ramp over the classes within
    each group (zero-sum in each group), which spreads the classes of a group apart unless they
    coincide.  The view changes smoothly with R, and collapsed minority classifiers share a point.
    """
    K = gram_w.shape[0]
    evals, evecs = np.linalg.eigh((gram_w + gram_w.T) / 2)
    root = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    x = np.where(np.arange(K) < num_majority, 1.0 / num_majority, -1.0 / (K - num_majority))
    y = np.zeros(K)
    for lo, hi in ((0, num_majority), (num_majority, K)):
        y[lo:hi] = np.arange(hi - lo) - (hi - lo - 1) / 2
    directions = np.stack([x / np.linalg.norm(x), y / max(np.linalg.norm(y), 1e-12)], 1)
    return root @ directions


class LPMFigure:
    """The symmetric LPM's classifier geometry at one (R, K_A, E_W * E_H), redrawn in place.

    Args:
        num_classes: K.
        ratios: (n,) R values of the minority-cosine curve.
        width, height: figure size in inches.
    """

    def __init__(self, num_classes: int = 10, ratios: Sequence[float] | None = None, width: float = 11.5,
                 height: float = 3.6):
        if num_classes < 3:
            raise ValueError(f"need K >= 3 classes, got {num_classes}")
        use_book_style()
        self.K = num_classes
        self.ratios = np.logspace(0, 4, 41) if ratios is None else np.asarray(ratios, dtype=float)
        self.fig = Figure(figsize=(width, height), layout="constrained")
        self.ax_gram, self.ax_view, self.ax_curve = self.fig.subplots(1, 3, width_ratios=[1.0, 1.0, 1.3])
        K = num_classes
        self.image = self.ax_gram.imshow(np.eye(K), cmap="RdBu_r", vmin=-1, vmax=1)
        self.fig.colorbar(self.image, ax=self.ax_gram, shrink=0.8, label="cosine (unitless)")
        self.ax_gram.grid(False)
        self.ax_gram.set_xticks(range(K))
        self.ax_gram.set_yticks(range(K))
        self.ax_gram.set_xlabel("classifier j (majority first)")
        self.ax_gram.set_ylabel("classifier i")
        self.split_lines = [self.ax_gram.axhline(0, color="k", lw=0.8), self.ax_gram.axvline(0, color="k", lw=0.8)]
        self.segments = {g: LineCollection([], colors=c, linewidths=1.6) for g, c in
                         (("majority", MAJORITY_COLOR), ("minority", MINORITY_COLOR))}
        for g, lc in self.segments.items():
            self.ax_view.add_collection(lc)
        self.tips = {g: self.ax_view.plot([], [], "o", color=c, label=g)[0] for g, c in
                     (("majority", MAJORITY_COLOR), ("minority", MINORITY_COLOR))}
        self.ax_view.set_aspect("equal", adjustable="box")
        self.ax_view.legend(loc="upper left")
        self.ax_view.set_xlabel("majority-minority axis (units of sqrt(E_W))")
        self.ax_view.set_ylabel("within-group spread (units of sqrt(E_W))")
        self.curve, = self.ax_curve.plot([], [], color=MINORITY_COLOR, label="minority classifiers")
        self.point, = self.ax_curve.plot([], [], "o", color="k", ms=7, zorder=5)
        self.threshold_line = self.ax_curve.axvline(1, color="0.4", ls="--", lw=1.2, label="collapse threshold")
        self.ax_curve.axhline(1, color="0.7", lw=0.8)
        self.ax_curve.set_xscale("log")
        self.ax_curve.set_xlim(self.ratios[0], self.ratios[-1])
        self.ax_curve.set_ylim(-0.3, 1.08)
        self.ax_curve.set_xlabel("imbalance ratio R = n_A / n_B (log scale)")
        self.ax_curve.set_ylabel("minority classifier cosine (unitless)")
        self.ax_curve.legend(loc="lower right")
        self._curves: dict[tuple[int, float], tuple[np.ndarray, float]] = {}
        self.state: tuple[float, int, float] | None = None

    def curve_for(self, num_majority: int, energy: float) -> tuple[np.ndarray, float]:
        """(minority cosines on ``self.ratios``, collapse threshold), cached per (K_A, E_W * E_H)."""
        key = (num_majority, round(float(energy), 12))
        if key not in self._curves:
            e = math.sqrt(energy)
            cos = np.array([solve_symmetric_lpm(self.K, num_majority, R, e, e).minority_cosine for R in self.ratios])
            self._curves[key] = (cos, collapse_threshold(self.K, num_majority, e, e, max_ratio=1e8, rel_precision=1e-3))
        return self._curves[key]

    def update(self, ratio: float, num_majority: int, energy: float) -> None:
        """Re-solve the LPM at (R, K_A, E_W * E_H) with E_W = E_H, and move every artist."""
        K, KA = self.K, num_majority
        e = math.sqrt(energy)
        sol = solve_symmetric_lpm(K, KA, ratio, e, e)
        self.image.set_data(sol.w_cosines)
        for line in self.split_lines:
            (line.set_ydata if line is self.split_lines[0] else line.set_xdata)([KA - 0.5, KA - 0.5])
        coords = classifier_coordinates(sol.gram[:K, :K] / e, KA)
        for group, rows in (("majority", coords[:KA]), ("minority", coords[KA:])):
            self.segments[group].set_segments([[(0.0, 0.0), tuple(p)] for p in rows])
            self.tips[group].set_data(rows[:, 0], rows[:, 1])
        lim = 1.15 * max(float(np.abs(coords).max()), 1e-3)
        self.ax_view.set_xlim(-lim, lim)
        self.ax_view.set_ylim(-lim, lim)
        cos, threshold = self.curve_for(KA, energy)
        self.curve.set_data(self.ratios, cos)
        self.point.set_data([ratio], [sol.minority_cosine])
        shown = threshold if math.isfinite(threshold) else self.ratios[-1] * 10
        self.threshold_line.set_xdata([shown, shown])
        thr = f"{threshold:.3g}" if math.isfinite(threshold) else "> 1e8"
        self.ax_gram.set_title(f"classifier cosines, R = {ratio:.3g}")
        self.ax_view.set_title(f"the {K} classifiers, K_A = {KA}")
        self.ax_curve.set_title(f"LPM, E_W·E_H = {energy:.3g}: threshold R* = {thr}")
        self.state = (ratio, KA, energy)

    def png(self, dpi: int = 80) -> bytes:
        """The current figure as PNG bytes (the layout is computed on the first call, then kept fixed,
        which halves the cost of later redraws and keeps the panels from shifting)."""
        out = figure_png(self.fig, dpi)
        if self.fig.get_layout_engine() is not None and not isinstance(self.fig.get_layout_engine(), PlacedLayout):
            self.fig.set_layout_engine("none")
        return out


def explorer_settings(num_classes: int = 10, ratio: float = 10.0, num_majority: int | None = None,
                      energy: float = PAPER_ENERGY) -> dict:
    """Validated settings of :func:`lpm_explorer`: K_A defaults to ``K // 2`` (at most K - 2, so that
    two minority classes have a cosine), and the R slider spans 1..10^max(4, ceil(log10 R)) so the
    requested R is on it.

    Raises:
        ValueError: K < 3, K_A outside 1..K-2, R < 1 or not finite, E_W * E_H not finite and positive.
    """
    K = int(num_classes)
    if K < 3:
        raise ValueError(f"the explorer needs K >= 3 classes (two minority classes have a cosine), got K = {K}")
    KA = min(max(1, K // 2), K - 2) if num_majority is None else int(num_majority)
    if not 1 <= KA <= K - 2:
        raise ValueError(f"K_A = {KA} must lie in 1..K-2 = 1..{K - 2} (at least two minority classes)")
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"imbalance ratio R must be a finite number >= 1, got {ratio}")
    if not (math.isfinite(energy) and energy > 0):
        raise ValueError(f"E_W * E_H must be finite and positive, got {energy}")
    decades = max(4, math.ceil(math.log10(ratio) - 1e-12))
    return {"num_classes": K, "num_majority": KA, "ratio": float(ratio), "energy": float(energy),
            "max_decades": decades}


def lpm_explorer(num_classes: int = 10, ratio: float = 10.0, num_majority: int | None = None,
                 energy: float = PAPER_ENERGY, dpi: int = 80):
    """ipywidgets explorer of the LPM: log-scale R slider, K_A selector, ``E_W * E_H`` slider.

    Defaults: K = 10, K_A = K // 2, and the paper's budget E_W * E_H = 1 * 5. Returns an
    ``ipywidgets.VBox``; every change re-solves the symmetric LPM and replaces the pixels of one
    ``Image`` widget.  Needs a running kernel (Jupyter, Colab). Bad settings raise ``ValueError``
    (:func:`explorer_settings`).
    """
    import ipywidgets as widgets

    cfg = explorer_settings(num_classes, ratio, num_majority, energy)
    K, KA, top = cfg["num_classes"], cfg["num_majority"], cfg["max_decades"]
    fig = LPMFigure(K, ratios=np.logspace(0, top, 10 * top + 1))
    fig.update(cfg["ratio"], KA, cfg["energy"])
    image = widgets.Image(value=fig.png(dpi), format="png")
    r_slider = widgets.FloatLogSlider(value=cfg["ratio"], base=10, min=0, max=top, step=0.05, description="R",
                                      continuous_update=False, readout_format=".3g")
    ka_select = widgets.Dropdown(options=list(range(1, K - 1)), value=KA, description="K_A")
    e_slider = widgets.FloatLogSlider(value=cfg["energy"], base=10, min=min(-1, math.floor(math.log10(energy))),
                                      max=max(2, math.ceil(math.log10(energy))), step=0.05, description="E_W·E_H",
                                      continuous_update=False, readout_format=".3g")
    timing = widgets.Label()

    def redraw(_change=None) -> None:
        import time

        start = time.perf_counter()
        fig.update(r_slider.value, ka_select.value, e_slider.value)
        image.value = fig.png(dpi)
        timing.value = f"re-solved and redrawn in {time.perf_counter() - start:.2f} s"

    for control in (r_slider, ka_select, e_slider):
        control.observe(redraw, names="value")
    return widgets.VBox([widgets.HBox([r_slider, ka_select, e_slider]), image, timing])


class TrainingFigure:
    """Classifier cosines and per-class test accuracy of one trained network, redrawn in place.

    Args:
        rows: result rows of ``utils.minority_collapse`` (each with ``w_cosines``,
            ``per_class_accuracy``, ``name``, ``minority_accuracy``, ``w_minority_cosine``).
        num_majority: K_A.
    """

    def __init__(self, rows: Sequence[dict], num_majority: int = 5, width: float = 9.0, height: float = 3.4):
        use_book_style()
        self.rows, self.KA = list(rows), num_majority
        K = len(self.rows[0]["per_class_accuracy"])
        self.fig = Figure(figsize=(width, height), layout="constrained")
        self.ax_gram, self.ax_acc = self.fig.subplots(1, 2, width_ratios=[1.0, 1.3])
        self.image = self.ax_gram.imshow(np.eye(K), cmap="RdBu_r", vmin=-1, vmax=1)
        self.fig.colorbar(self.image, ax=self.ax_gram, shrink=0.8, label="cosine (unitless)")
        self.ax_gram.grid(False)
        self.ax_gram.set_xticks(range(K))
        self.ax_gram.set_yticks(range(K))
        self.ax_gram.axhline(num_majority - 0.5, color="k", lw=0.8)
        self.ax_gram.axvline(num_majority - 0.5, color="k", lw=0.8)
        self.ax_gram.set_xlabel("classifier j (majority first)")
        self.ax_gram.set_ylabel("classifier i")
        colors = [MAJORITY_COLOR] * num_majority + [MINORITY_COLOR] * (K - num_majority)
        self.bars = self.ax_acc.bar(range(K), np.zeros(K), color=colors)
        self.ax_acc.set_ylim(0, 1.05)
        self.ax_acc.set_xticks(range(K))
        self.ax_acc.set_xlabel("class (0-4 majority, blue; 5-9 minority, orange)")
        self.ax_acc.set_ylabel("test accuracy (fraction)")

    def update(self, index: int) -> None:
        """Show run ``index``."""
        row = self.rows[index]
        self.image.set_data(np.asarray(row["w_cosines"]))
        for bar, acc in zip(self.bars, row["per_class_accuracy"]):
            bar.set_height(acc)
        self.ax_gram.set_title(f"{row['name']}: classifier cosines")
        self.ax_acc.set_title(f"minority cosine {row['w_minority_cosine']:.2f}, "
                              f"minority accuracy {row['minority_accuracy']:.2f}")

    def png(self, dpi: int = 80) -> bytes:
        return figure_png(self.fig, dpi)


def training_browser(rows: Sequence[dict], num_majority: int = 5, dpi: int = 80):
    """ipywidgets browser of real-training results: a selection slider over the runs (by R)."""
    import ipywidgets as widgets

    fig = TrainingFigure(rows, num_majority)
    fig.update(0)
    image = widgets.Image(value=fig.png(dpi), format="png")
    names = [r["name"] for r in rows]
    slider = widgets.SelectionSlider(options=names, value=names[0], description="run",
                                     layout=widgets.Layout(width="60%"))

    def redraw(_change=None) -> None:
        fig.update(names.index(slider.value))
        image.value = fig.png(dpi)

    slider.observe(redraw, names="value")
    return widgets.VBox([slider, image])


# --------------------------------------------------------------------------- explorable frames

def draw_lpm(ratio: float, num_classes: int = 10, num_majority: int = 5, energy: float = PAPER_ENERGY) -> Figure:
    """The :class:`LPMFigure` at one R (a new ``Figure``, for ``utils.explorable.explorable``)."""
    fig = LPMFigure(num_classes)
    fig.update(float(ratio), num_majority, energy)
    return fig.fig


def draw_training_run(rows: Sequence[dict], index: int, num_majority: int = 5) -> Figure:
    """The :class:`TrainingFigure` of run ``index`` (a new ``Figure``, for ``utils.explorable.explorable``)."""
    fig = TrainingFigure(rows, num_majority)
    fig.update(index)
    return fig.fig
