"""Time one move of the minority-collapse LPM explorer on the CPU: re-solve + redraw + PNG.

    python benchmarks/minority_widgets.py [--moves 20]

A move changes R (one new solve, cached curve), K_A or E_W * E_H (new solve and a new
minority-cosine curve with its collapse threshold).  Prints CPU and wall seconds per move:
what ``utils.widgets.lpm_explorer`` does on every slider change, minus the widget transport.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.widgets import PAPER_ENERGY, LPMFigure  # noqa: E402


def time_moves(moves: list[tuple[float, int, float]], dpi: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """(cpu seconds, wall seconds) per move of an :class:`LPMFigure` through ``moves`` of (R, K_A, E)."""
    fig = LPMFigure(10)
    fig.update(10.0, 5, PAPER_ENERGY)
    fig.png(dpi)  # first draw: fonts, layout
    cpu, wall = [], []
    for R, KA, E in moves:
        c0, w0 = time.process_time(), time.perf_counter()
        fig.update(R, KA, E)
        fig.png(dpi)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return np.array(cpu), np.array(wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    r_moves = [(float(10 ** rng.uniform(0, 4)), 5, PAPER_ENERGY) for _ in range(args.moves)]
    ka_moves = [(30.0, int(k), PAPER_ENERGY) for k in rng.permutation(np.arange(1, 9))]
    e_moves = [(30.0, 5, float(10 ** rng.uniform(0, 2))) for _ in range(args.moves // 2)]
    for name, moves in (("R slider", r_moves), ("K_A selector", ka_moves), ("E_W*E_H slider", e_moves)):
        cpu, wall = time_moves(moves)
        print(f"{name:<15} {len(moves):>3} moves: CPU {cpu.mean():.3f} s/move (max {cpu.max():.3f}), "
              f"wall {wall.mean():.3f} s/move (max {wall.max():.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
