"""The Layer-Peeled Model (Fang, He, Long & Su, PNAS 2021) and two ways to solve it.

Peeling off all layers but the last, the features ``h_{k,i}`` of the n_k examples of class k
become free variables, and weight decay becomes norm budgets. With classifiers ``w_1..w_K``:

    minimise   (1/N) sum_k sum_{i<=n_k} CE(W h_{k,i}, k)
    subject to (1/K) sum_k ||w_k||^2 <= E_W,   (1/K) sum_k (1/n_k) sum_i ||h_{k,i}||^2 <= E_H,

with ``N = sum_k n_k`` and ``CE(z, k) = log sum_j exp(z_j) - z_k``. The loss is convex in each
``h_{k,i}`` and the constraint averages within a class, so replacing a class's features by their
mean never increases the objective and keeps the constraint (Jensen): at the optimum the features
of a class can be taken equal, ``h_{k,i} = h_k``. Both solvers use this reduction, so the problem
has 2K vectors in R^p:

    minimise (1/N) sum_k n_k CE(W h_k, k)  s.t.  ||W||_F^2 <= K E_W,  ||H||_F^2 <= K E_H.

* :func:`solve_lpm`: the nonconvex problem itself, by projected gradient descent with Nesterov
  momentum, batched over random restarts in float64 (torch).
* :func:`solve_lpm_convex`: the semidefinite relaxation over the (2K, 2K) Gram matrix
  ``X = [W; H][W; H]^T``. The logits ``w_j . h_k = X[j, K+k]`` are linear in X, so the loss is a
  log-sum-exp of affine functions (convex), the budgets are traces, and dropping ``rank X <= p``
  leaves a convex problem (cvxpy). It is exact (same optimal value) when p >= 2K, since then
  every PSD 2K x 2K matrix is a Gram of 2K vectors in R^p; otherwise its value is a lower bound.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .etf import etf_gram
from .profiles import torch_threads


@dataclass
class LPMSolution:
    """A solution of the Layer-Peeled Model with class-constant features.

    gram: (2K, 2K) Gram of ``[w_1..w_K, h_1..h_K]`` (classifiers first, then class features).
    objective: mean cross-entropy over the N samples at the solution.
    w_norms, h_norms: (K,) norms; w_cosines, h_cosines: (K, K) cosine matrices.
    W, H: (K, p) factors (for the SDP, a factorisation of ``gram``; None if unavailable).
    info: solver details (restart objectives, status, seconds, ...).
    """

    gram: np.ndarray
    objective: float
    w_norms: np.ndarray
    h_norms: np.ndarray
    w_cosines: np.ndarray
    h_cosines: np.ndarray
    W: np.ndarray | None = None
    H: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        return self.gram.shape[0] // 2

    @property
    def wh_cosines(self) -> np.ndarray:
        """(K, K) cosines between classifier j (rows) and class feature k (columns)."""
        K = self.K
        return self.gram[:K, K:] / np.outer(self.w_norms, self.h_norms).clip(1e-300)


def _check_inputs(class_sizes: Sequence[int], E_W: float, E_H: float, p: int | None = None) -> np.ndarray:
    n = np.asarray(class_sizes, dtype=np.float64)
    if n.ndim != 1 or n.size < 2:
        raise ValueError(f"class_sizes must list K >= 2 class sizes, got {list(np.atleast_1d(class_sizes))}")
    if not np.all(n > 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"class sizes must be positive, got {n.tolist()}")
    if not (E_W > 0 and E_H > 0):
        raise ValueError(f"budgets E_W and E_H must be positive, got E_W={E_W}, E_H={E_H}")
    if p is not None and p < 1:
        raise ValueError(f"feature dimension p must be at least 1, got {p}")
    return n


def lpm_objective(gram: np.ndarray, class_sizes: Sequence[int]) -> float:
    """Mean cross-entropy over the N samples for a (2K, 2K) Gram of ``[W; H]``."""
    n = np.asarray(class_sizes, dtype=np.float64)
    K = n.size
    logits = np.asarray(gram)[:K, K:].T  # row k: logits of class-k features, (w_j . h_k)_j
    m = logits.max(1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(logits - m).sum(1)))
    return float(n @ (lse - np.diag(logits)) / n.sum())


def solution_from_gram(gram: np.ndarray, class_sizes: Sequence[int], W: np.ndarray | None = None,
                       H: np.ndarray | None = None, info: dict | None = None) -> LPMSolution:
    """Norms, cosines and objective of a (2K, 2K) Gram of ``[W; H]``."""
    gram = 0.5 * (np.asarray(gram, dtype=np.float64) + np.asarray(gram, dtype=np.float64).T)
    K = gram.shape[0] // 2
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    cos = gram / np.outer(norms, norms).clip(1e-300)
    return LPMSolution(gram=gram, objective=lpm_objective(gram, class_sizes), w_norms=norms[:K],
                       h_norms=norms[K:], w_cosines=cos[:K, :K], h_cosines=cos[K:, K:], W=W, H=H,
                       info=info or {})


def etf_solution_gram(K: int, E_W: float, E_H: float) -> np.ndarray:
    """The balanced LPM's minimiser (Fang et al., Thm 3): W and H are ETFs with ``h_k`` parallel to ``w_k``.

    Returns the (2K, 2K) Gram ``s s^T (x) E`` with ``s = (sqrt(E_W), sqrt(E_H))`` and ``E`` the
    unit-norm ETF Gram ``K/(K-1)(I - 11^T/K)``: ``||w_k||^2 = E_W``, ``||h_k||^2 = E_H``.
    """
    E = etf_gram(K).numpy()
    s = np.array([[np.sqrt(E_W)], [np.sqrt(E_H)]])
    return np.kron(s @ s.T, E)


def balanced_optimal_value(K: int, E_W: float, E_H: float) -> float:
    """Closed-form optimal LPM loss for balanced classes: ``log(1 + (K-1) exp(-K sqrt(E_W E_H)/(K-1)))``."""
    return float(np.log1p((K - 1) * np.exp(-K * np.sqrt(E_W * E_H) / (K - 1))))


def scaled_gram(gram: np.ndarray, E_W: float, E_H: float) -> np.ndarray:
    """Divide the W-block by E_W, the H-block by E_H and the cross blocks by sqrt(E_W E_H).

    For the balanced minimiser the result is ``[[E, E], [E, E]]`` with E the unit ETF Gram.
    """
    K = gram.shape[0] // 2
    s = np.concatenate([np.full(K, np.sqrt(E_W)), np.full(K, np.sqrt(E_H))])
    return np.asarray(gram) / np.outer(s, s)


def _project(V: torch.Tensor, radius_sq: float) -> torch.Tensor:
    """Project each restart's (K, p) matrix onto the Frobenius ball ``||V||_F^2 <= radius_sq``."""
    norm = V.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]
    return V * torch.clamp(radius_sq ** 0.5 / norm, max=1.0)


def _batched_loss(W: torch.Tensor, H: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(R,) objectives. W, H: (R, K, p); weights: (K,) n_k/N."""
    logits = H @ W.transpose(1, 2)  # (R, K features, K classifiers)
    ce = torch.logsumexp(logits, dim=2) - logits[:, labels, labels]
    return ce @ weights


def solve_lpm(class_sizes: Sequence[int], p: int, E_W: float, E_H: float, restarts: int = 5,
              steps: int = 4000, seed: int = 0, device: torch.device | str | None = None,
              lr: float | None = None, tol: float = 1e-13) -> LPMSolution:
    """Solve the (nonconvex) Layer-Peeled Model directly; return the best of ``restarts`` runs.

    Projected gradient descent with Nesterov momentum on ``(W, H)``, both (K, p), all restarts in
    one batched float64 computation; after each step W and H are projected onto their budget balls
    ``||W||_F^2 <= K E_W`` and ``||H||_F^2 <= K E_H``. Features are taken equal within a class (see
    the module docstring), and the loss weights class k by ``n_k / N``.

    Args:
        class_sizes: K >= 2 positive class sizes n_k.
        p: feature dimension.
        E_W, E_H: positive budgets.
        restarts: random initialisations run side by side.
        steps: maximum gradient steps; stops earlier when the objective changes by less than ``tol``.
        seed: seeds the initialisations.
        device: torch device (default CPU).
        lr: step size (default ``0.5 / (K sqrt(E_W E_H) + K max(E_W, E_H))``-scaled, see code).
    Returns:
        :class:`LPMSolution` of the restart with the smallest objective; ``info`` holds all objectives.
    Raises:
        ValueError: K < 2, a non-positive class size or budget, p < 1, restarts < 1.
    """
    n = _check_inputs(class_sizes, E_W, E_H, p)
    if restarts < 1 or steps < 1:
        raise ValueError(f"restarts and steps must be at least 1, got {restarts}, {steps}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch_threads(1, dev):
        return _solve_lpm(n, p, E_W, E_H, restarts, steps, seed, dev, lr, tol)


def _solve_lpm(n: np.ndarray, p: int, E_W: float, E_H: float, restarts: int, steps: int, seed: int,
               dev: torch.device, lr: float | None, tol: float) -> LPMSolution:
    K = n.size
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(restarts, K, p, generator=g, dtype=torch.float64).to(dev)
    H = torch.randn(restarts, K, p, generator=g, dtype=torch.float64).to(dev)
    rw, rh = K * E_W, K * E_H
    W, H = _project(W, rw * 1e-2), _project(H, rh * 1e-2)  # start small, inside the balls
    labels = torch.arange(K, device=dev)
    weights = torch.as_tensor(n / n.sum(), dtype=torch.float64, device=dev)
    # The loss's Hessian in the logits is at most 1/2 in norm times the class weight; the logits
    # are bilinear in (W, H), so the curvature in W is at most ~ max_k w_k ||h_k||^2 <= K E_H, etc.
    step = lr if lr is not None else 1.0 / max(rw, rh) / float(weights.max()) * 0.5
    # Per-restart adaptive step (grow by 1.25 on success, halve and drop momentum on failure):
    # the curvature shrinks with the loss, so a fixed step would stall when the budgets are large.
    eta = torch.full((restarts, 1, 1), step, dtype=torch.float64, device=dev)
    Wp, Hp = W.clone(), H.clone()
    with torch.no_grad():
        cur = _batched_loss(W, H, labels, weights)
    done_steps = 0
    stall = 0
    for t in range(1, steps + 1):
        Wy = (W + 0.9 * (W - Wp)).requires_grad_(True)
        Hy = (H + 0.9 * (H - Hp)).requires_grad_(True)
        gW, gH = torch.autograd.grad(_batched_loss(Wy, Hy, labels, weights).sum(), (Wy, Hy))
        with torch.no_grad():
            Wn, Hn = _project(Wy - eta * gW, rw), _project(Hy - eta * gH, rh)
            new = _batched_loss(Wn, Hn, labels, weights)
            ok = new <= cur
            okb = ok[:, None, None]
            Wp, Hp = W, H  # a rejected step leaves W unchanged, hence no momentum next time
            W, H = torch.where(okb, Wn, W), torch.where(okb, Hn, H)
            gain = torch.where(ok, (cur - new) / cur.clamp_min(1e-300), torch.zeros_like(cur))
            cur = torch.where(ok, new, cur)
            eta = torch.where(okb, eta * 1.25, eta * 0.5).clamp(max=1e12)
        done_steps = t
        stall = stall + 1 if float(gain.max()) <= tol else 0
        if stall >= 50:
            break
    with torch.no_grad():
        final = _batched_loss(W, H, labels, weights)
    best = int(final.argmin())
    Wb, Hb = W[best].cpu().numpy(), H[best].cpu().numpy()
    F = np.concatenate([Wb, Hb])
    info = {"solver": "projected Nesterov gradient", "restart_objectives": final.cpu().tolist(),
            "steps": done_steps, "seconds": time.perf_counter() - t0}
    return solution_from_gram(F @ F.T, n, W=Wb, H=Hb, info=info)


def solve_lpm_convex(class_sizes: Sequence[int], E_W: float, E_H: float, solver: str | None = None,
                     verbose: bool = False, **solver_options) -> LPMSolution:
    """Solve the semidefinite relaxation of the Layer-Peeled Model with cvxpy.

    Variable: ``X`` (2K, 2K) PSD, the Gram of ``[w_1..w_K, h_1..h_K]``. Objective
    ``(1/N) sum_k n_k (log_sum_exp_j X[j, K+k] - X[k, K+k])``; constraints
    ``trace(X[:K, :K]) <= K E_W`` and ``trace(X[K:, K:]) <= K E_H``. The rank of X is free, so the
    optimal value is a lower bound for every feature dimension p and equals the LPM's when p >= 2K.

    Args:
        class_sizes: K >= 2 positive class sizes; E_W, E_H: positive budgets.
        solver: a cvxpy solver name (default CLARABEL if installed, else SCS).
        solver_options: passed to the solver (default for CLARABEL: gap and feasibility
            tolerances 1e-10, so the Gram is accurate well beyond 1e-3).
    Returns:
        :class:`LPMSolution`; ``W``, ``H`` are a factorisation of the optimal Gram (rank <= 2K),
        ``info`` holds the solver, its status and its reported optimal value.
    """
    import cvxpy as cp

    n = _check_inputs(class_sizes, E_W, E_H)
    K = n.size
    if solver is None:
        solver = "CLARABEL" if "CLARABEL" in cp.installed_solvers() else "SCS"
    t0 = time.perf_counter()
    X = cp.Variable((2 * K, 2 * K), PSD=True)
    weights = n / n.sum()
    losses = [cp.log_sum_exp(X[:K, K + k]) - X[k, K + k] for k in range(K)]
    objective = cp.Minimize(sum(float(weights[k]) * losses[k] for k in range(K)))
    constraints = [cp.trace(X[:K, :K]) <= K * E_W, cp.trace(X[K:, K:]) <= K * E_H]
    problem = cp.Problem(objective, constraints)
    if solver == "CLARABEL" and not solver_options:
        solver_options = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    with warnings.catch_warnings():  # "optimal_inaccurate" is reported in info["status"] instead
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        problem.solve(solver=solver, verbose=verbose, **solver_options)
    if X.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"the SDP solver {solver} failed with status {problem.status!r}")
    gram = 0.5 * (X.value + X.value.T)
    evals, evecs = np.linalg.eigh(gram)
    evals = np.clip(evals, 0.0, None)
    F = evecs * np.sqrt(evals)  # (2K, 2K) factor with F F^T = gram (up to clipping)
    info = {"solver": solver, "status": problem.status, "solver_value": float(problem.value),
            "rank": int((evals > 1e-6 * evals.max()).sum()), "seconds": time.perf_counter() - t0}
    return solution_from_gram(gram, n, W=F[:K], H=F[K:], info=info)


# ----------------------------------------------------------------------------- the chapter's experiment


def minority_summary(sol: LPMSolution, minority: Sequence[int], zero_tol: float = 1e-3) -> dict:
    """Mean pairwise cosine of the minority classifiers (nan when their norms vanish, i.e. fall below
    ``zero_tol`` times the largest norm: a direction is then meaningless), and the
    ratio of mean minority to mean majority classifier norm."""
    minority = list(minority)
    majority = [k for k in range(sol.K) if k not in minority]
    norms = sol.w_norms
    C = sol.w_cosines[np.ix_(minority, minority)]
    off = C[~np.eye(len(minority), dtype=bool)]
    cos = float(off.mean()) if norms[minority].min() > zero_tol * norms.max() else float("nan")
    return {"minority_cosine": cos, "norm_ratio": float(norms[minority].mean() / norms[majority].mean())}


def _row(sol: LPMSolution, **keys) -> dict:
    return {**keys, "objective": sol.objective, "w_norms": sol.w_norms, "h_norms": sol.h_norms,
            "seconds": sol.info.get("seconds")}


def run(profile: str, device: torch.device, progress: bool = True) -> dict:
    """The chapter's numbers (``python -m utils.reproduce lpm``): small SDPs and batched descents.

    Returns ``{"runs": rows, "balanced": {...}, "budgets": [...], "dimension": [...], "imbalanced": [...]}``
    with rows tagged by ``part``. The problem is small in both profiles; ``full`` adds larger K
    and more imbalance ratios.
    """
    from .etf import etf_distance
    from .train import progress_bar

    K = 4 if profile == "quick" else 10
    out: dict = {"runs": []}
    # 1. balanced: both solvers, against the closed form
    sizes = [50] * K
    direct, sdp = solve_lpm(sizes, 2 * K, 1.0, 1.0, device=device), solve_lpm_convex(sizes, 1.0, 1.0)
    out["balanced"] = {"K": K, "E_W": 1.0, "E_H": 1.0, "closed_form": balanced_optimal_value(K, 1.0, 1.0),
                       "direct": _row(direct, gram=direct.gram), "sdp": _row(sdp, gram=sdp.gram),
                       "max_gram_difference": float(np.abs(direct.gram - sdp.gram).max()),
                       "etf_distance_W": etf_distance(torch.as_tensor(direct.W)),
                       "etf_distance_H": etf_distance(torch.as_tensor(direct.H))}
    out["runs"].append({"part": "balanced", "K": K, "direct_objective": direct.objective,
                        "sdp_objective": sdp.objective, "closed_form": out["balanced"]["closed_form"],
                        "max_gram_difference": out["balanced"]["max_gram_difference"]})
    # 2. budgets: the minimiser stays an ETF; the loss depends on E_W E_H only
    budgets = [0.25, 0.5, 1.0, 2.0, 4.0] if profile == "quick" else [0.1, 0.25, 0.5, 1, 2, 4, 8, 16]
    out["budgets"] = []
    for E_W in progress_bar(budgets, "budgets", progress):
        for E_H in budgets:
            sol = solve_lpm(sizes, 2 * K, E_W, E_H, restarts=3, device=device)
            row = {"part": "budgets", "E_W": E_W, "E_H": E_H, "objective": sol.objective,
                   "closed_form": balanced_optimal_value(K, E_W, E_H),
                   "etf_distance_W": etf_distance(torch.as_tensor(sol.W)),
                   "etf_distance_H": etf_distance(torch.as_tensor(sol.H)),
                   "self_duality_cos": float(np.diag(sol.wh_cosines).mean())}
            out["budgets"].append(row)
            out["runs"].append(row)
    # 3. feature dimension: the relaxation is tight once p >= K - 1 here, loose below
    out["dimension"] = []
    for p in range(1, 2 * K + 1):
        sol = solve_lpm(sizes, p, 1.0, 1.0, restarts=5, device=device)
        row = {"part": "dimension", "p": p, "direct_objective": sol.objective, "sdp_objective": sdp.objective}
        out["dimension"].append(row)
        out["runs"].append(row)
    # 4. imbalance: K_A majority classes of n_A examples, K_B minority classes of n_A / R examples
    KA = KB = 5 if profile == "quick" else 5
    ratios = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] if profile == "quick" else \
        [1, 2, 3, 5, 7, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 3000, 10000]
    out["imbalanced"] = []
    for E in progress_bar([1.0, 5.0, 10.0], "imbalance", progress):
        for R in ratios:
            sizes_R = [R] * KA + [1] * KB
            sol = solve_lpm_convex(sizes_R, E, E)
            row = {"part": "imbalanced", "K_A": KA, "K_B": KB, "ratio": R, "E_W": E, "E_H": E,
                   "sdp_objective": sol.objective, **minority_summary(sol, range(KA, KA + KB))}
            if R in (1, 10, 1000):  # check the relaxation against the direct solver (p = 2K: exact)
                direct_R = solve_lpm(sizes_R, 2 * (KA + KB), E, E, device=device)
                row["direct_objective"] = direct_R.objective
                row["max_gram_difference"] = float(np.abs(direct_R.gram - sol.gram).max())
            out["imbalanced"].append(row)
            out["runs"].append(row)
    return out
