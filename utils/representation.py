"""Few-shot learning via a learned representation (Du, Hu, Kakade, Lee & Lei, ICLR 2021): chapter 7.

Two experiments on the paper's linear model (:mod:`utils.representation_math` holds the pieces):

* **Diversity.** ``T`` source tasks with ``n1`` samples each teach a ``k``-dimensional
  representation; a target task with ``n2`` samples is then fitted in it and compared with least
  squares on the target alone, for diverse sources and for sources that all use one direction.
* **Bypassing the 1/T barrier.** The paper's rate ``sigma^2 (kd / (n1 T) + k / n2)`` says the
  representation error falls with the *pooled* source sample size ``n1 T``, not with ``T`` alone
  (analyses that treat tasks as i.i.d. draws, e.g. Maurer, Pontil & Romera-Paredes 2016, have a
  term of order ``1/sqrt(T)`` or ``1/T`` that no ``n1`` removes).  We vary ``n1`` at fixed ``T`` and
  ``T`` at fixed ``n1 T`` and measure the learned span's error, the mean ``sin^2`` of the principal
  angles to ``span B*``, against ``sigma^2 k (d - k) / (n1 T)``: the local (Fisher) prediction for
  well-conditioned heads with ``Theta Theta^T = (T/k) I_k``, ``Theta = [theta_1..theta_T]`` (``k x T``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .claims import Claim
from .experiment import JsonResult, check_profile
from .plotting import PALETTE, label, subplots
from .profiles import torch_threads
from .representation_math import (DTYPE, SourceTasks, excess_risk, fit_in_representation, fit_target_only,
                                  learn_representation, make_tasks, principal_angles, sample_target)
from .train import progress_bar

EXPERIMENT = "representation"
PAPER = "Du, Hu, Kakade, Lee & Lei, ICLR 2021"


@dataclass(frozen=True)
class Config:
    """Sizes of both experiments.  ``d``, ``k``, ``noise``: the model; ``num_tasks``, ``n_per_task``,
    ``n_targets``: the diversity experiment; ``fixed_tasks`` x ``n1_values``: the ``n1`` sweep at fixed
    ``T``; ``pooled_samples`` with ``T`` in ``task_values``: the ``T`` sweep at fixed ``n1 T``;
    ``rate_targets``: target sizes ``n2`` fitted in each representation of the ``n1`` sweep."""

    d: int = 100
    k: int = 5
    noise: float = 0.5
    seeds: int = 5
    max_iter: int = 50
    num_tasks: int = 200
    n_per_task: int = 25
    n_targets: tuple[int, ...] = (5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500)
    fixed_tasks: int = 10
    n1_values: tuple[int, ...] = (200, 400, 800, 1600, 3200)
    pooled_samples: int = 8000
    task_values: tuple[int, ...] = (10, 20, 40, 80, 160)
    rate_targets: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)

    @classmethod
    def for_profile(cls, profile: str, smoke: bool = False) -> "Config":
        """``quick``: 5 seeds; ``full``: 20 seeds, 400 diverse tasks and a wider ``n1`` sweep;
        ``paper``: the full sizes with 50 seeds (all of it is CPU linear algebra)."""
        check_profile(profile)
        if smoke:
            return cls(d=12, k=2, seeds=2, max_iter=5, num_tasks=10, n_per_task=6, n_targets=(3, 20),
                       fixed_tasks=4, n1_values=(20, 40), pooled_samples=80, task_values=(4, 8),
                       rate_targets=(5, 20))
        if profile == "quick":
            return cls()
        wide = dict(seeds=20, max_iter=100, num_tasks=400,
                    n_targets=(5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000),
                    n1_values=(100, 200, 400, 800, 1600, 3200), pooled_samples=16000,
                    task_values=(10, 20, 40, 80, 160, 320))
        return cls(**wide) if profile == "full" else cls(**{**wide, "seeds": 50})

    def peak_memory_bytes(self) -> int:
        """The largest source set held at once (inputs and per-task Gram matrices, float64), the
        ``dk x dk`` ALS normal matrix, times 3 for temporaries."""
        tasks_x_n = max(self.num_tasks * self.n_per_task, self.fixed_tasks * max(self.n1_values),
                        self.pooled_samples)
        grams = max(self.num_tasks, self.fixed_tasks, max(self.task_values)) * self.d ** 2
        normal = (self.d * self.k) ** 2
        return int(3 * 8 * self.seeds * (tasks_x_n * self.d + grams + normal))

    def expected_seconds(self) -> float:
        """About 2 CPU seconds per 5 seeds for each sweep, measured on the 2-core quick machine."""
        sweeps = 2 + len(self.n1_values) + len(self.task_values)
        return 0.3 * sweeps * self.seeds * (self.max_iter / 50)


@dataclass
class Result(JsonResult):
    """Everything the chapter shows.  ``runs``: diversity rows ``{method, diverse, n_target, seed,
    excess_risk}``; ``oracle``: the same fits in the true ``B*``; ``angles``/``angle_target``/
    ``iterations``/``converged``/``objective`` keyed ``diverse``/``non_diverse``; ``rate``: rows
    ``{sweep ("n1" or "T"), T, n1, seed, sin2 (mean sin^2 of the principal angles), predicted,
    target_sin2 (sin^2 of w* to span B-hat)}``; ``rate_risk``: target rows of the ``n1`` sweep
    ``{n1, n_target, seed, method, excess_risk}``."""

    config: dict
    runs: list = field(default_factory=list)
    oracle: list = field(default_factory=list)
    angles: dict = field(default_factory=dict)
    angle_target: dict = field(default_factory=dict)
    iterations: dict = field(default_factory=dict)
    converged: dict = field(default_factory=dict)
    objective: dict = field(default_factory=dict)
    rate: list = field(default_factory=list)
    rate_risk: list = field(default_factory=list)


def predicted_error(noise: float, d: int, k: int, n1: int, T: int) -> float:
    """``sigma^2 k (d - k) / (n1 T)``: the mean ``sin^2`` of the principal angles of the ERM's span to
    first order, for heads with ``Theta Theta^T = (T/k) I_k`` (each of the ``k (d - k)`` tangent
    directions is estimated from ``n1 T / k`` effective samples; average over the ``k`` angles)."""
    return noise ** 2 * k * (d - k) / (n1 * T)


def target_fits(B: torch.Tensor, tasks: SourceTasks, n_targets: Sequence[int], salt: int = 0) -> list[dict]:
    """Target excess risk for each ``n2``: in the learned ``B``, on the target alone, in the true ``B*``."""
    rows, w_star = [], tasks.w_target
    for j, n2 in enumerate(n_targets):
        seeds = [1_000_003 * (j + 1) + 7919 * salt + s for s in tasks.seeds]
        X2, y2 = sample_target(w_star, int(n2), tasks.noise, seeds)
        risks = {"learned_representation": fit_in_representation(B, X2, y2), "target_only": fit_target_only(X2, y2),
                 "true_representation": fit_in_representation(tasks.B_true, X2, y2)}
        for method, w in risks.items():
            rows += [{"method": method, "n_target": int(n2), "seed": s, "excess_risk": float(v)}
                     for s, v in zip(tasks.seeds, excess_risk(w, w_star).tolist())]
    return rows


def run(config: Config, device: torch.device, progress: bool = True) -> Result:
    """Both experiments (see the module docstring), batched over seeds, in float64."""
    with torch_threads(1, device):
        return _run(config, torch.device(device), progress)


def _run(cfg: Config, device: torch.device, progress: bool) -> Result:
    seeds = list(range(cfg.seeds))
    out = Result(config=asdict(cfg))
    for diverse in (True, False):
        tasks = make_tasks(cfg.d, cfg.k, cfg.num_tasks, cfg.n_per_task, diverse, cfg.noise, seeds, device)
        learned = learn_representation(tasks.X, tasks.y, cfg.k, max_iter=cfg.max_iter)
        key = "diverse" if diverse else "non_diverse"
        for row in target_fits(learned.B, tasks, cfg.n_targets):
            (out.oracle if row["method"] == "true_representation" else out.runs).append({**row, "diverse": diverse})
        out.angles[key] = principal_angles(learned.B, tasks.B_true).tolist()
        out.angle_target[key] = principal_angles(learned.B, tasks.w_target.unsqueeze(-1))[..., 0].tolist()
        out.iterations[key], out.converged[key], out.objective[key] = (learned.iterations, learned.converged,
                                                                       learned.objective)
    jobs = [("n1", cfg.fixed_tasks, n1) for n1 in cfg.n1_values]
    jobs += [("T", T, cfg.pooled_samples // T) for T in cfg.task_values]
    for i, (sweep, T, n1) in enumerate(progress_bar(jobs, desc="rate sweeps", enabled=progress)):
        job_seeds = [10_000 * (i + 1) + s for s in seeds]
        tasks = make_tasks(cfg.d, cfg.k, T, n1, True, cfg.noise, job_seeds, device, balanced=True)
        learned = learn_representation(tasks.X, tasks.y, cfg.k, max_iter=cfg.max_iter)
        sin2 = torch.sin(principal_angles(learned.B, tasks.B_true)) ** 2
        target_sin2 = torch.sin(principal_angles(learned.B, tasks.w_target.unsqueeze(-1))[..., 0]) ** 2
        pred = predicted_error(cfg.noise, cfg.d, cfg.k, n1, T)
        out.rate += [{"sweep": sweep, "T": T, "n1": n1, "seed": s, "sin2": float(v), "predicted": pred,
                      "target_sin2": float(t), "converged": bool(c)}
                     for s, v, t, c in zip(seeds, sin2.mean(-1).tolist(), target_sin2.tolist(), learned.converged)]
        if sweep == "n1":
            out.rate_risk += [{**r, "n1": n1, "seed": seeds[job_seeds.index(r["seed"])]}
                              for r in target_fits(learned.B, tasks, cfg.rate_targets, salt=i)]
        del tasks, learned
    return out


# --------------------------------------------------------------------------- summaries (pure)
def median_risk(rows: Sequence[dict], method: str, diverse: bool, n_target: int) -> float:
    """Median over seeds of ``excess_risk`` among ``rows`` matching method/diverse/n_target."""
    vals = [r["excess_risk"] for r in rows
            if r["method"] == method and r["diverse"] == diverse and r["n_target"] == n_target]
    if not vals:
        raise ValueError(f"no rows for method={method!r}, diverse={diverse}, n_target={n_target}")
    return float(np.median(vals))


def risk_curve(rows: Sequence[dict], method: str, **match: Any) -> dict[str, list[float]]:
    """Median and quartiles over seeds of ``excess_risk`` against ``n_target`` for rows of ``method``
    whose other fields equal ``match`` (e.g. ``diverse=True`` or ``n1=400``)."""
    chosen = [r for r in rows if r["method"] == method and all(r[k] == v for k, v in match.items())]
    if not chosen:
        raise ValueError(f"no rows for method={method!r}, {match}")
    out: dict[str, list[float]] = {"n_target": [], "median": [], "q25": [], "q75": []}
    for n2 in sorted({r["n_target"] for r in chosen}):
        q = np.quantile([r["excess_risk"] for r in chosen if r["n_target"] == n2], [0.25, 0.5, 0.75])
        for name, v in zip(("n_target", "q25", "median", "q75"), (n2, *q)):
            out[name].append(float(v))
    return out


def rate_summary(results: dict, sweep: str) -> list[dict]:
    """Per setting of one sweep (``"n1"`` or ``"T"``): ``{T, n1, predicted, median, q25, q75}`` of the
    mean ``sin^2``, sorted by ``n1`` (the ``n1`` sweep) or ``T`` (the ``T`` sweep)."""
    rows = [r for r in results["rate"] if r["sweep"] == sweep]
    if not rows:
        raise ValueError(f"no rate rows for sweep {sweep!r}; expected 'n1' or 'T'")
    key = "n1" if sweep == "n1" else "T"
    out = []
    for v in sorted({r[key] for r in rows}):
        mine = [r for r in rows if r[key] == v]
        q = np.quantile([r["sin2"] for r in mine], [0.25, 0.5, 0.75])
        out.append({"T": mine[0]["T"], "n1": mine[0]["n1"], "predicted": mine[0]["predicted"],
                    "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])})
    return out


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


def _advantage(results: dict, diverse: bool, n2: int = 20) -> float:
    return (median_risk(results["runs"], "target_only", diverse, n2)
            / median_risk(results["runs"], "learned_representation", diverse, n2))


def _bypass(results: dict) -> dict:
    s = rate_summary(results, "n1")
    return {"slope": loglog_slope([r["n1"] for r in s], [r["median"] for r in s]),
            "T": s[0]["T"], "n1_range": s[-1]["n1"] / s[0]["n1"], "error_fall": s[0]["median"] / s[-1]["median"]}


def _pooling(results: dict) -> dict:
    s = rate_summary(results, "T")
    med = [r["median"] for r in s]
    return {"max_over_min": max(med) / min(med), "T_range": s[-1]["T"] / s[0]["T"],
            "median_over_predicted": float(np.median([r["median"] / r["predicted"] for r in s]))}


CLAIMS = [
    Claim(id="rep.diversity", chapter=EXPERIMENT,
          statement="A representation learned from diverse sources lets the target learn from 20 samples with "
                    "at least 5x less excess risk than least squares on the target alone; sources that all use "
                    "one direction, with a target outside their span, hurt the target: it does worse than "
                    "least squares on its own.",
          source=f"{PAPER}, Theorem 4.1 and Section 4 (diversity assumption)",
          paper_value="excess risk O(sigma^2 (kd/(n1 T) + k/n2)) under diverse, well-conditioned sources, "
                      "against sigma^2 d/n2 for the target alone; no transfer without diversity",
          criterion="median target-only / learned-representation excess risk at n2 = 20: >= 5 (diverse) "
                    "and < 1 (non-diverse)",
          check=lambda r: {"diverse": _advantage(r, True), "non_diverse": _advantage(r, False)},
          holds=lambda m: m["diverse"] >= 5 and m["non_diverse"] < 1),
    Claim(id="rep.bypass", chapter=EXPERIMENT,
          statement="At a fixed number of source tasks T the learned representation's error keeps falling as "
                    "1/n1 as each task grows: the pooled n1 T samples count, with no floor set by T.",
          source=f"{PAPER}, Theorem 4.1 and the discussion of the Omega(1/T) barrier (Section 1)",
          paper_value="representation term sigma^2 kd/(n1 T): falls as 1/n1 at fixed T, bypassing the "
                      "Omega(1/T) barrier of i.i.d.-task analyses",
          criterion="log-log slope of the median mean-sin^2 of the principal angles against n1 at fixed T "
                    "in [-1.3, -0.7]",
          check=_bypass, holds=lambda m: -1.3 <= m["slope"] <= -0.7),
    Claim(id="rep.pooling", chapter=EXPERIMENT,
          statement="At a fixed pooled source sample size n1 T the learned representation's error changes by "
                    "less than 1.5x however the samples are split into tasks: many small tasks teach about as "
                    "much as a few large ones.",
          source=f"{PAPER}, Theorem 4.1 (the bound depends on n1 and T only through n1 T)",
          paper_value="all n1 T source samples are pooled: the representation term is sigma^2 kd/(n1 T)",
          criterion="median mean-sin^2 varies by at most 1.5x over the T sweep at fixed n1 T",
          check=_pooling, holds=lambda m: m["max_over_min"] <= 1.5),
]


# --------------------------------------------------------------------------- figures
def plot_risk_panels(results: dict, title_suffix: str = ""):
    """Target excess risk against ``n2``: learned representation, target only, true representation,
    for diverse (left) and non-diverse (right) sources; medians with quartile bands."""
    c = results["config"]
    sigma2, d, k = c["noise"] ** 2, c["d"], c["k"]
    fig, axes = subplots(1, 2, width=9.0, height=4.2, sharey=True)
    for ax, diverse in zip(axes[0], (True, False)):
        curves = [("learned_representation", results["runs"], "learned representation $\\hat B$ (k dims)", 0, "-"),
                  ("target_only", results["runs"], "target only, least squares (d dims)", 1, "-"),
                  ("true_representation", results["oracle"], "true representation $B^\\star$ (benchmark)", 2, "--")]
        for method, rows, name, color, style in curves:
            cv = risk_curve(rows, method, diverse=diverse)
            ax.plot(cv["n_target"], cv["median"], style, marker="o", color=PALETTE[color], label=name)
            ax.fill_between(cv["n_target"], cv["q25"], cv["q75"], color=PALETTE[color], alpha=0.18, lw=0)
        n = np.geomspace(min(cv["n_target"]), max(cv["n_target"]), 50)
        ax.plot(n, sigma2 * k / n, ":", color="0.35", label="$\\sigma^2 k/n_2$")
        ax.plot(n, sigma2 * d / n, "-.", color="0.35", label="$\\sigma^2 d/n_2$")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 3e3)
        for v in (k, d):
            ax.axvline(v, color="0.7", lw=0.8)
        cond = "diverse sources" if diverse else "non-diverse sources\n(target outside their span)"
        label(ax, "target samples $n_2$ (log scale)", "excess risk $\\|\\hat w - w^\\star\\|^2$ (log scale)",
              cond + title_suffix)
        ax.title.set_fontsize(9)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=7)
    return fig


def plot_angles(results: dict):
    """Principal angles between the learned and the true span, and the target predictor's angle."""
    k = results["config"]["k"]
    fig, axes = subplots(1, 1, width=7.5, height=3.8)
    ax = axes[0, 0]
    for i, (key, name) in enumerate((("diverse", "diverse"), ("non_diverse", "non-diverse"))):
        angles = np.degrees(np.array(results["angles"][key]))
        target = np.degrees(np.array(results["angle_target"][key]))
        jitter = np.linspace(-0.15, 0.15, angles.shape[0])
        for j in range(k):
            ax.plot(j + 1 + jitter, angles[:, j], "o", color=PALETTE[i], ms=4, label=name if j == 0 else None)
        ax.plot(k + 1.5 + jitter, target, "^", color=PALETTE[i], ms=5)
    ax.set_xticks(list(range(1, k + 1)) + [k + 1.5])
    ax.set_xticklabels([str(j) for j in range(1, k + 1)] + ["$w^\\star$"])
    ax.set_ylim(-3, 93)
    label(ax, "principal angle index (ascending), and the target predictor", "angle to the learned span (degrees)",
          "span of $\\hat B$ against span of $B^\\star$")
    ax.legend(loc="center left")
    return fig


def plot_als_convergence(results: dict):
    """Relative decrease of the source objective per ALS iteration, every seed."""
    fig, axes = subplots(1, 1, width=6.5, height=3.6)
    ax = axes[0, 0]
    for i, (key, name) in enumerate((("diverse", "diverse"), ("non_diverse", "non-diverse"))):
        obj = np.array(results["objective"][key])
        decrease = (obj[:, :-1] - obj[:, 1:]) / obj[:, :-1]
        for s in range(obj.shape[0]):
            ax.semilogy(np.arange(1, obj.shape[1]), np.maximum(decrease[s], 1e-17), color=PALETTE[i], alpha=0.7,
                        label=name if s == 0 else None)
    label(ax, "ALS iteration", "relative decrease of the objective (log scale)", "convergence of the source ERM")
    ax.legend()
    return fig


def plot_rate(results: dict, title_suffix: str = ""):
    """Left: representation error against the predicted ``sigma^2 k (d-k)/(n1 T)`` for both sweeps, with
    the prediction ``y = x``.  Right: the ``T`` sweep at fixed ``n1 T`` against ``T``, with a ``1/T`` line
    (the shape an i.i.d.-task bound would force) for comparison.  ``title_suffix`` is appended to both
    panel titles (e.g. ``" (full run)"``)."""
    c = results["config"]
    fig, axes = subplots(1, 2, width=9.0, height=3.8)
    ax = axes[0, 0]
    xs = []
    for i, (sweep, name) in enumerate((("n1", f"vary $n_1$ at $T = {c['fixed_tasks']}$"),
                                       ("T", f"vary $T$ at $n_1T = {c['pooled_samples']}$"))):
        s = rate_summary(results, sweep)
        x = np.array([r["predicted"] for r in s])
        xs += list(x)
        ax.errorbar(x, [r["median"] for r in s], yerr=[[r["median"] - r["q25"] for r in s],
                                                       [r["q75"] - r["median"] for r in s]],
                    fmt="os"[i], color=PALETTE[i], label=name, capsize=2)
    grid = np.geomspace(min(xs) / 1.5, max(xs) * 1.5, 20)
    ax.plot(grid, grid, "--", color="0.35", label="prediction $\\sigma^2k(d-k)/(n_1T)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    label(ax, "$\\sigma^2 k(d-k)/(n_1 T)$ (log scale)", "mean $\\sin^2$ of the principal angles (log scale)",
          "error of the learned span" + title_suffix)
    ax = axes[0, 1]
    s = rate_summary(results, "T")
    T = np.array([r["T"] for r in s], float)
    ax.errorbar(T, [r["median"] for r in s], yerr=[[r["median"] - r["q25"] for r in s],
                                                   [r["q75"] - r["median"] for r in s]],
                fmt="s", color=PALETTE[1], capsize=2, label="measured")
    ax.plot(T, [r["predicted"] for r in s], "--", color="0.35", label="prediction (depends on $n_1T$ only)")
    ax.plot(T, s[0]["median"] * T[0] / T, ":", color=PALETTE[3], label="shape $1/T$ (for comparison)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    label(ax, "number of source tasks $T$ (log scale)", "mean $\\sin^2$ of the principal angles (log scale)",
          f"fixed $n_1 T = {c['pooled_samples']}$" + title_suffix)
    return fig


def plot_fewshot_at(results: dict, n1: int):
    """Target excess risk against ``n2`` with the representation learned from ``T`` tasks of ``n1``
    samples (the ``n1`` sweep), and the floor ``sin^2`` of the target's angle to the learned span."""
    from matplotlib.figure import Figure
    c = results["config"]
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for method, name, color, style in (("learned_representation", "learned representation", 0, "-"),
                                       ("target_only", "target only", 1, "-"),
                                       ("true_representation", "true representation $B^\\star$", 2, "--")):
        cv = risk_curve(results["rate_risk"], method, n1=n1)
        ax.plot(cv["n_target"], cv["median"], style, marker="o", color=PALETTE[color], label=name)
    floor = np.median([r["target_sin2"] for r in results["rate"] if r["sweep"] == "n1" and r["n1"] == n1])
    ax.axhline(floor, color=PALETTE[3], ls=":", label="floor: $\\sin^2\\angle(w^\\star, \\hat B)$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 10)
    ax.legend(loc="lower left", fontsize=8)
    label(ax, "target samples $n_2$ (log scale)", "target excess risk (log scale)",
          f"T = {c['fixed_tasks']} source tasks of n1 = {n1} samples")
    return fig
