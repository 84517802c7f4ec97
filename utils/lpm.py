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
  leaves a convex problem (cvxpy). Its value is a lower bound for every p, and exact (the LPM's
  optimal value) once p >= K: the loss sees only the (K, K) block ``Z = X[:K, K:] = W H^T``, and for a
  PSD X, ``||Z||_* <= sqrt(tr X[:K, :K] tr X[K:, K:])``, so with ``Z = U S V^T`` the factors
  ``W = c U S^(1/2)``, ``H = V S^(1/2) / c`` in R^(K x K) (``c^2 = sqrt(E_W / E_H)``) meet both budgets.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .claims import Claim
from .etf import etf_gram
from .experiment import JsonResult
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


def check_budgets(E_W: float, E_H: float) -> None:
    """Raise ``ValueError`` unless both budgets are finite and positive.

    An infinite budget has no minimiser (the infimum of the loss is 0, approached as the norms
    grow), so no solver can return a meaningful answer for it."""
    for name, value in (("E_W", E_W), ("E_H", E_H)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"budget {name} must be a finite positive number, got {value!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"budgets E_W and E_H must be finite and positive, got {name}={value}; "
                             "with an infinite budget the loss has infimum 0 and no minimiser")


def cvxpy_solve(problem, solver: str | None = None, verbose: bool = False, **options) -> str:
    """Solve a cvxpy ``problem`` by the one solver-selection path of the LPM chapters; return its solver.

    ``solver=None`` picks CLARABEL (interior point, tolerances 1e-10) when cvxpy has it, else SCS
    (``eps=1e-9``); when the chosen solver raises ``cvxpy.SolverError`` or ends without an optimal
    status, SCS is tried once more. ``options`` replace the default tolerances of the named solver.

    Raises:
        RuntimeError: no solver reached an (possibly inaccurate) optimum; names the status.
    """
    import cvxpy as cp

    installed = cp.installed_solvers()
    first = solver or ("CLARABEL" if "CLARABEL" in installed else "SCS")
    defaults = {"CLARABEL": {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10},
                "SCS": {"eps": 1e-9, "max_iters": 200000}}
    tries = [(first, options or defaults.get(first, {}))]
    if first != "SCS" and solver is None and "SCS" in installed:
        tries.append(("SCS", defaults["SCS"]))
    error = None
    for name, opts in tries:
        try:
            with warnings.catch_warnings():  # "optimal_inaccurate" is reported by the status instead
                warnings.simplefilter("ignore")
                problem.solve(solver=name, verbose=verbose, **opts)
        except cp.SolverError as err:
            error = err
            continue
        if problem.status in ("optimal", "optimal_inaccurate"):
            return name
    raise RuntimeError(f"the convex LPM could not be solved (tried {[t[0] for t in tries]}): "
                       f"status {problem.status!r}{f', {error}' if error else ''}")


def _check_inputs(class_sizes: Sequence[int], E_W: float, E_H: float, p: int | None = None) -> np.ndarray:
    n = np.asarray(class_sizes, dtype=np.float64)
    if n.ndim != 1 or n.size < 2:
        raise ValueError(f"class_sizes must list K >= 2 class sizes, got {list(np.atleast_1d(class_sizes))}")
    if not np.all(n > 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"class sizes must be positive, got {n.tolist()}")
    check_budgets(E_W, E_H)
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
        ValueError: K < 2, a non-positive class size, a non-finite or non-positive budget, p < 1,
            restarts < 1.
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
    optimal value is a lower bound for every feature dimension p and equals the LPM's when p >= K
    (module docstring).

    Args:
        class_sizes: K >= 2 positive class sizes; E_W, E_H: positive budgets.
        solver: a cvxpy solver name (default: :func:`cvxpy_solve`'s choice, CLARABEL if installed,
            else SCS, with SCS as the fallback).
        solver_options: passed to the solver (default for CLARABEL: gap and feasibility
            tolerances 1e-10, so the Gram is accurate well beyond 1e-3).
    Raises:
        ValueError: K < 2, a non-positive class size, a non-finite or non-positive budget.
        RuntimeError: no solver reached an optimum.
    Returns:
        :class:`LPMSolution`; ``W``, ``H`` are a factorisation of the optimal Gram (rank <= 2K),
        ``info`` holds the solver, its status and its reported optimal value.
    """
    import cvxpy as cp

    n = _check_inputs(class_sizes, E_W, E_H)
    K = n.size
    t0 = time.perf_counter()
    X = cp.Variable((2 * K, 2 * K), PSD=True)
    weights = n / n.sum()
    losses = [cp.log_sum_exp(X[:K, K + k]) - X[k, K + k] for k in range(K)]
    objective = cp.Minimize(sum(float(weights[k]) * losses[k] for k in range(K)))
    constraints = [cp.trace(X[:K, :K]) <= K * E_W, cp.trace(X[K:, K:]) <= K * E_H]
    problem = cp.Problem(objective, constraints)
    used = cvxpy_solve(problem, solver, verbose, **solver_options)
    gram = 0.5 * (X.value + X.value.T)
    evals, evecs = np.linalg.eigh(gram)
    evals = np.clip(evals, 0.0, None)
    F = evecs * np.sqrt(evals)  # (2K, 2K) factor with F F^T = gram (up to clipping)
    info = {"solver": used, "status": problem.status, "solver_value": float(problem.value),
            "rank": int((evals > 1e-6 * evals.max()).sum()), "seconds": time.perf_counter() - t0}
    return solution_from_gram(gram, n, W=F[:K], H=F[K:], info=info)


# ----------------------------------------------------------------------------- the chapter's experiment

EXPERIMENT = "lpm"
PAPER_BUDGETS = (1.0, 5.0)  # (E_W, E_H) of Fang et al.'s minority-collapse figures (K = 10, K_A = 5)


@dataclass(frozen=True)
class Config:
    """The LPM chapter's numerical experiments (no data, no network: small optimisation problems).

    K: classes of the balanced part; budgets: grid of E_W and of E_H values; restarts, steps:
    of the direct solver; K_A, K_B: majority and minority classes of the imbalanced part;
    ratios: its imbalance ratios R; imbalance_budgets: its (E_W, E_H) pairs, the paper's first;
    check_ratios: where the direct solver (at p = K and p = 2K) checks the relaxation.
    """

    profile: str
    K: int
    budgets: tuple[float, ...]
    restarts: int
    steps: int
    K_A: int
    K_B: int
    ratios: tuple[float, ...]
    imbalance_budgets: tuple[tuple[float, float], ...]
    check_ratios: tuple[float, ...]
    seed: int = 0

    @classmethod
    def for_profile(cls, profile: str, smoke: bool = False) -> "Config":
        from .experiment import check_profile

        check_profile(profile)
        pairs = (PAPER_BUDGETS, (1.0, 1.0), (5.0, 5.0))
        if smoke:
            return cls(profile, K=3, budgets=(0.5, 2.0), restarts=2, steps=300, K_A=2, K_B=2,
                       ratios=(1.0, 10.0, 100.0), imbalance_budgets=(PAPER_BUDGETS,), check_ratios=(10.0,))
        if profile == "quick":
            return cls(profile, K=4, budgets=(0.25, 0.5, 1.0, 2.0, 4.0), restarts=5, steps=4000, K_A=5, K_B=5,
                       ratios=tuple(float(r) for r in np.round(np.logspace(0, 4, 17), 3)),
                       imbalance_budgets=pairs, check_ratios=(1.0, 10.0, 1000.0))
        if profile == "full":
            return cls(profile, K=10, budgets=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0), restarts=5, steps=4000,
                       K_A=5, K_B=5, ratios=tuple(float(r) for r in np.round(np.logspace(0, 4, 33), 3)),
                       imbalance_budgets=pairs, check_ratios=(1.0, 3.0, 10.0, 100.0, 1000.0))
        # paper: the paper's K = 10, K_A = 5 at its budgets, a fine grid in R, more restarts
        return cls(profile, K=10, budgets=(0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0), restarts=10, steps=8000,
                   K_A=5, K_B=5, ratios=tuple(float(r) for r in np.round(np.logspace(0, 4, 65), 3)),
                   imbalance_budgets=pairs, check_ratios=(1.0, 3.0, 10.0, 30.0, 100.0, 1000.0, 10000.0))

    def peak_memory_bytes(self) -> int:
        """(restarts, 2K, 2K) float64 iterates and gradients, and the SDP's dense (2K)^2 blocks: kilobytes."""
        K = max(self.K, self.K_A + self.K_B)
        return int(64 * self.restarts * (2 * K) ** 2 * 8 + 200 * (2 * K) ** 4 * 8) + 2**20

    def expected_seconds(self) -> float:
        """Measured on the 2-core CPU: ~0.15 s per direct solve, ~0.05 s per SDP of K = 10."""
        direct = len(self.budgets) ** 2 + 2 * self.K + 2 * len(self.check_ratios) * len(self.imbalance_budgets) + 1
        sdp = len(self.ratios) * len(self.imbalance_budgets) + 1
        return 0.15 * direct * self.steps / 4000 * self.restarts / 5 + 0.06 * sdp + 2.0


@dataclass
class Result(JsonResult):
    """Everything the chapter shows.

    balanced: K, budgets, closed form, both solvers' objectives and Grams, their largest Gram
        difference, distances of W and H to an ETF.
    budgets: one row per (E_W, E_H): objective, closed form, ETF distances, cos(w_k, h_k).
    dimension: one row per feature dimension p = 1..2K: the direct solver's objective and Gram,
        the SDP's objective.
    imbalanced: one row per (E_W, E_H, R): the SDP's objective, minority-classifier cosine, norm
        ratio; at ``check_ratios`` the direct solver's objective at p = K and p = 2K.
    thresholds: one row per (E_W, E_H): the collapse threshold R* of the symmetric program.
    """

    config: dict
    balanced: dict
    budgets: list
    dimension: list
    imbalanced: list
    thresholds: list


def minority_classifier_cosine(gram: np.ndarray, num_majority: int, zero_tol: float = 1e-3) -> float:
    """Mean pairwise cosine of the minority classifiers ``w_{K_A+1..K}`` of a (2K, 2K) Gram of ``[W; H]``.

    NaN when their norms vanish (below ``zero_tol`` times the largest classifier norm: a
    direction is then meaningless)."""
    from .metrics import mean_off_diagonal

    K = gram.shape[0] // 2
    G = torch.as_tensor(np.asarray(gram)[:K, :K])
    norms = G.diagonal().clamp_min(0).sqrt()
    if norms[num_majority:].min() <= zero_tol * norms.max():
        return float("nan")
    C = G / torch.outer(norms, norms)
    return mean_off_diagonal(C[num_majority:, num_majority:])


def _norm_ratio(sol: LPMSolution, num_majority: int) -> float:
    return float(sol.w_norms[num_majority:].mean() / sol.w_norms[:num_majority].mean())


def run(config: Config, device: torch.device, progress: bool = True) -> Result:
    """The chapter's numbers (``python -m utils.reproduce lpm``): small SDPs and batched descents."""
    from .etf import etf_distance
    from .minority_collapse import collapse_threshold
    from .train import progress_bar

    c = config
    K = c.K
    sizes = [50] * K
    direct = solve_lpm(sizes, 2 * K, 1.0, 1.0, restarts=c.restarts, steps=c.steps, seed=c.seed, device=device)
    sdp = solve_lpm_convex(sizes, 1.0, 1.0)
    balanced = {"K": K, "E_W": 1.0, "E_H": 1.0, "closed_form": balanced_optimal_value(K, 1.0, 1.0),
                "etf_gram": etf_solution_gram(K, 1.0, 1.0),
                "direct": {"objective": direct.objective, "gram": direct.gram, "w_norms": direct.w_norms,
                           "h_norms": direct.h_norms, "seconds": direct.info["seconds"]},
                "sdp": {"objective": sdp.objective, "gram": sdp.gram, "seconds": sdp.info["seconds"],
                        "solver": sdp.info["solver"]},
                "max_gram_difference": float(np.abs(direct.gram - sdp.gram).max()),
                "max_etf_gram_difference": float(np.abs(direct.gram - etf_solution_gram(K, 1.0, 1.0)).max()),
                "etf_distance_W": etf_distance(torch.as_tensor(direct.W)),
                "etf_distance_H": etf_distance(torch.as_tensor(direct.H))}
    budgets = []
    for E_W in progress_bar(c.budgets, "budgets", progress):
        for E_H in c.budgets:
            sol = solve_lpm(sizes, 2 * K, E_W, E_H, restarts=c.restarts, steps=c.steps, seed=c.seed, device=device)
            budgets.append({"E_W": E_W, "E_H": E_H, "objective": sol.objective,
                            "closed_form": balanced_optimal_value(K, E_W, E_H),
                            "max_etf_gram_difference": float(np.abs(
                                scaled_gram(sol.gram, E_W, E_H) - scaled_gram(etf_solution_gram(K, E_W, E_H), E_W, E_H)
                            ).max()),
                            "etf_distance_W": etf_distance(torch.as_tensor(sol.W)),
                            "etf_distance_H": etf_distance(torch.as_tensor(sol.H)),
                            "self_duality_cos": float(np.diag(sol.wh_cosines).mean())})
    dimension = []
    for p in range(1, 2 * K + 1):
        sol = solve_lpm(sizes, p, 1.0, 1.0, restarts=c.restarts, steps=c.steps, seed=c.seed, device=device)
        dimension.append({"p": p, "direct_objective": sol.objective, "sdp_objective": sdp.objective,
                          "gram": sol.gram})
    KA, KB = c.K_A, c.K_B
    imbalanced, thresholds = [], []
    for E_W, E_H in progress_bar(c.imbalance_budgets, "imbalance", progress):
        thresholds.append({"E_W": E_W, "E_H": E_H, "threshold": collapse_threshold(KA + KB, KA, E_W, E_H)})
        for R in c.ratios:
            sizes_R = [R] * KA + [1.0] * KB
            sol = solve_lpm_convex(sizes_R, E_W, E_H)
            row = {"E_W": E_W, "E_H": E_H, "ratio": R, "sdp_objective": sol.objective,
                   "minority_cosine": minority_classifier_cosine(sol.gram, KA), "norm_ratio": _norm_ratio(sol, KA)}
            if R in c.check_ratios:
                for p in (KA + KB, 2 * (KA + KB)):
                    d = solve_lpm(sizes_R, p, E_W, E_H, restarts=c.restarts, steps=c.steps, seed=c.seed,
                                  device=device)
                    row[f"direct_objective_p{'K' if p == KA + KB else '2K'}"] = d.objective
            imbalanced.append(row)
    return Result(config=dataclasses.asdict(c), balanced=balanced, budgets=budgets, dimension=dimension,
                  imbalanced=imbalanced, thresholds=thresholds)


# ----------------------------------------------------------------------------- claims

def _relaxation_gap(r: dict) -> float:
    """Largest |direct - SDP| over the runs with p >= K (balanced: every p >= K; imbalanced: p = K, 2K)."""
    K = r["balanced"]["K"]
    gaps = [abs(d["direct_objective"] - d["sdp_objective"]) for d in r["dimension"] if d["p"] >= K]
    for row in r["imbalanced"]:
        gaps += [abs(row[k] - row["sdp_objective"]) for k in ("direct_objective_pK", "direct_objective_p2K") if k in row]
    return float(max(gaps))


CLAIMS = [
    Claim(id="lpm.etf", chapter=EXPERIMENT,
          statement="For balanced classes the LPM's minimiser is the simplex ETF: W and H form the same ETF, "
                    "h_k parallel to w_k, at the budgets' norms.",
          source="Fang, He, Long & Su (PNAS 2021), Theorem 3", paper_value="Gram of [W; H] = the ETF's (proved)",
          criterion="largest |Gram(direct minimiser) - Gram(ETF)| <= 1e-3, at E_W = E_H = 1 and at every "
                    "(E_W, E_H) of the budget grid (there scaled by the budgets)",
          check=lambda r: float(max([r["balanced"]["max_etf_gram_difference"]]
                                    + [b["max_etf_gram_difference"] for b in r["budgets"]])),
          holds=lambda m: m <= 1e-3),
    Claim(id="lpm.relaxation", chapter=EXPERIMENT,
          statement="The convex (semidefinite) relaxation has the same optimal value as the nonconvex LPM "
                    "once the feature dimension p is at least K.",
          source="Fang et al. (2021), section on the convex relaxation of the LPM (the program solved for "
                 "their Fig. 3)",
          paper_value="the relaxation is equivalent to the LPM when p >= K (proved)",
          criterion="largest |direct - SDP| optimal value <= 1e-6 over balanced p >= K and imbalanced p in {K, 2K}",
          check=_relaxation_gap, holds=lambda m: m <= 1e-6),
    Claim(id="lpm.closed_form", chapter=EXPERIMENT,
          statement="The balanced optimum is log(1 + (K-1) exp(-K sqrt(E_W E_H)/(K-1))): it depends on the "
                    "budgets only through E_W E_H.",
          source="Fang et al. (2021), Theorem 3 (the balanced minimiser)",
          paper_value="not stated as a number: it is the loss of Theorem 3's minimiser (ETF, ||w_k||^2 = E_W, "
                      "||h_k||^2 = E_H), evaluated here",
          criterion="largest relative difference |direct optimum - closed form| / closed form over the "
                    "(E_W, E_H) grid <= 1e-6 (relative: at the full profile's largest budgets the loss itself is ~1e-7)",
          check=lambda r: float(max(abs(b["objective"] - b["closed_form"]) / b["closed_form"] for b in r["budgets"])),
          holds=lambda m: m <= 1e-6),
]


# ----------------------------------------------------------------------------- figures

def _names(K: int) -> list[str]:
    return [f"w{k + 1}" for k in range(K)] + [f"h{k + 1}" for k in range(K)]


def _gram_panel(ax, fig, G, title: str, K: int, vmax: float | None = None) -> None:
    from .plotting import gram_heatmap

    im = gram_heatmap(ax, G, title, _names(K), vmax=vmax, colorbar=False)
    ax.set_xlabel("vector j of [W; H]")
    ax.set_ylabel("vector i of [W; H]")
    fig.colorbar(im, ax=ax, shrink=0.8, label="inner product (unitless)")


def plot_balanced_gram(result: Result | dict):
    """The direct solver's Gram of [W; H], the ETF prediction and their difference (balanced, E_W = E_H = 1)."""
    from .plotting import subplots

    r = result.to_json() if hasattr(result, "to_json") else result
    bal = r["balanced"]
    K = bal["K"]
    G, target = np.asarray(bal["direct"]["gram"]), np.asarray(bal["etf_gram"])
    from .plotting import gram_heatmap

    fig, axes = subplots(1, 3, width=9, height=3.3, layout="constrained")
    for ax, M, title, vmax in ((axes[0, 0], G, "LPM minimiser (direct)", 1.5),
                               (axes[0, 1], target, "prediction (ETF, h_k ∥ w_k)", 1.5),
                               (axes[0, 2], G - target, "difference", None)):
        im = gram_heatmap(ax, M, title, _names(K), vmax=vmax, colorbar=False)
        ax.set_xlabel("vector j of [W; H]")
        ax.set_ylabel("vector i of [W; H]" if ax is axes[0, 0] else "")
        if ax is not axes[0, 0]:
            fig.colorbar(im, ax=ax if ax is axes[0, 2] else axes[0, :2], shrink=0.8, label="inner product (unitless)")
    return fig


def draw_dimension(result: Result | dict, p: int):
    """One frame of the feature-dimension explorer: the direct solver's Gram at dimension p and
    its optimal value against p (a matplotlib ``Figure``, no pyplot state)."""
    from matplotlib.figure import Figure

    from .plotting import PALETTE, gram_heatmap, label, use_book_style

    use_book_style()
    r = result.to_json() if hasattr(result, "to_json") else result
    K = r["balanced"]["K"]
    rows = r["dimension"]
    row = next(d for d in rows if d["p"] == p)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_g, ax_v = fig.subplots(1, 2, width_ratios=[1.0, 1.2])
    im = gram_heatmap(ax_g, np.asarray(row["gram"]), f"Gram of [W; H] at p = {p}", _names(K), vmax=1.5,
                      colorbar=False)
    ax_g.set_xlabel("vector j of [W; H]")
    ax_g.set_ylabel("vector i of [W; H]")
    fig.colorbar(im, ax=ax_g, shrink=0.8, label="inner product (unitless)")
    ps = [d["p"] for d in rows]
    ax_v.plot(ps, [d["direct_objective"] for d in rows], "o-", color=PALETTE[0], label="direct solver at dimension p")
    ax_v.axhline(rows[0]["sdp_objective"], color=PALETTE[1], ls="--", label="SDP relaxation (no rank limit)")
    ax_v.axvline(K - 1, color="0.5", ls=":", label="p = K - 1 (an ETF fits)")
    ax_v.plot([p], [row["direct_objective"]], "o", ms=11, mfc="none", mec="k", mew=2)
    ax_v.set_yscale("log")
    label(ax_v, "feature dimension p", "optimal mean cross-entropy (nats, log scale)",
          f"balanced, K = {K}, E_W = E_H = 1")
    ax_v.legend(loc="upper right")
    return fig


def plot_budgets(result: Result | dict):
    """Optimal loss over the (E_W, E_H) grid, and against sqrt(E_W E_H) with the closed form."""
    from .plotting import PALETTE, label, subplots

    r = result.to_json() if hasattr(result, "to_json") else result
    K = r["balanced"]["K"]
    bud = r["budgets"]
    Es = sorted({b["E_W"] for b in bud})
    grid = np.array([[next(b["objective"] for b in bud if b["E_W"] == a and b["E_H"] == c) for c in Es] for a in Es])
    fig, axes = subplots(1, 2, width=9, height=3.6)
    ax = axes[0, 0]
    im = ax.imshow(np.log10(grid), origin="lower", cmap="viridis")
    ax.set_xticks(range(len(Es)), [f"{e:g}" for e in Es])
    ax.set_yticks(range(len(Es)), [f"{e:g}" for e in Es])
    ax.grid(False)
    fig.colorbar(im, ax=ax, shrink=0.8, label="log10 optimal loss (log10 nats)")
    label(ax, "feature budget E_H (unitless)", "classifier budget E_W (unitless)", "optimal loss over the budget grid")
    ax = axes[0, 1]
    prod = np.array([b["E_W"] * b["E_H"] for b in bud])
    ax.semilogy(np.sqrt(prod), [b["objective"] for b in bud], "o", label="direct solver, every (E_W, E_H)")
    s = np.linspace(np.sqrt(prod.min()), np.sqrt(prod.max()), 100)
    ax.semilogy(s, [balanced_optimal_value(K, x ** 2, 1.0) for x in s], "-", color=PALETTE[1], label="closed form")
    label(ax, "sqrt(E_W E_H) (unitless)", "optimal mean cross-entropy (nats, log scale)",
          "the loss depends on E_W E_H only")
    ax.legend()
    return fig


def plot_imbalanced(result: Result | dict):
    """Minority-classifier cosine and minority/majority norm ratio of the SDP against R, one colour
    per (E_W, E_H), with each budget's collapse threshold R* dashed."""
    from .plotting import PALETTE, label, subplots

    r = result.to_json() if hasattr(result, "to_json") else result
    imb = r["imbalanced"]
    cfg = r["config"]
    K = cfg["K_A"] + cfg["K_B"]
    fig, axes = subplots(1, 2, width=9, height=3.8)
    pairs = [(t["E_W"], t["E_H"], t["threshold"]) for t in r["thresholds"]]
    for i, (E_W, E_H, thr) in enumerate(pairs):
        rows = [x for x in imb if x["E_W"] == E_W and x["E_H"] == E_H]
        R = [x["ratio"] for x in rows]
        tag = f"E_W = {E_W:g}, E_H = {E_H:g}" + (" (paper)" if (E_W, E_H) == PAPER_BUDGETS else "")
        axes[0, 0].semilogx(R, [x["minority_cosine"] for x in rows], "o-", ms=3, color=PALETTE[i], label=tag)
        axes[0, 1].semilogx(R, [x["norm_ratio"] for x in rows], "o-", ms=3, color=PALETTE[i], label=tag)
        if thr is not None and math.isfinite(thr):
            for ax in axes[0]:
                ax.axvline(thr, color=PALETTE[i], ls="--", lw=1)
    axes[0, 0].axhline(-1 / (K - 1), color="0.4", ls=":", label="balanced ETF value -1/(K-1)")
    label(axes[0, 0], "imbalance ratio R = n_A / n_B (log scale)", "mean cosine between minority classifiers",
          f"minority classifiers merge (K_A = {cfg['K_A']}, K_B = {cfg['K_B']}; dashed: R*)")
    label(axes[0, 1], "imbalance ratio R = n_A / n_B (log scale)", "mean ‖w‖ minority / majority (unitless)",
          "minority classifiers shrink")
    axes[0, 0].legend(fontsize=8, loc="center", bbox_to_anchor=(0.64, 0.6))
    return fig


def network_cosines(nc_results: dict) -> list[dict]:
    """Pairwise cosines of the trained networks of a stored neural-collapse run, for comparison with
    the LPM's balanced optimum ``-1/(K-1)``.

    Args:
        nc_results: a ``results/neural_collapse_*.json`` dict; every run in ``runs`` whose last
            history record holds the (K, K) matrices ``cos_means`` (centred class means) and
            ``cos_classifiers`` is used.
    Returns:
        one dict per run: ``name``, ``K``, ``epoch``, ``train_accuracy``, ``means`` and
        ``classifiers`` (the K(K-1) off-diagonal cosines, lists), their means ``mean_cos_means`` and
        ``mean_cos_classifiers``, and ``etf`` = -1/(K-1).
    Raises:
        ValueError: no run carries the cosine matrices.
    """
    from .metrics import mean_off_diagonal

    out = []
    for run in nc_results.get("runs", []):
        last = run["history"][-1] if run.get("history") else {}
        if "cos_means" not in last or "cos_classifiers" not in last:
            continue
        cm = np.asarray(last["cos_means"], dtype=float)
        cw = np.asarray(last["cos_classifiers"], dtype=float)
        K = cm.shape[0]
        off = ~np.eye(K, dtype=bool)
        out.append({"name": run.get("name", "network"), "K": K, "epoch": last.get("epoch"),
                    "train_accuracy": last.get("train_accuracy"),
                    "means": cm[off].tolist(), "classifiers": cw[off].tolist(),
                    "mean_cos_means": mean_off_diagonal(cm), "mean_cos_classifiers": mean_off_diagonal(cw),
                    "etf": -1.0 / (K - 1)})
    if not out:
        raise ValueError("no run in these neural-collapse results records cos_means and cos_classifiers; "
                         "pass a results/neural_collapse_*.json made by utils.reproduce")
    return out


def plot_network_comparison(nc_results: dict):
    """Histograms of the pairwise cosines of each trained network's centred class means and
    classifiers (:func:`network_cosines`), with the LPM optimum -1/(K-1) dashed."""
    from .plotting import label, subplots

    nets = network_cosines(nc_results)
    fig, axes = subplots(1, len(nets), width=4.2 * len(nets), height=3.4)
    for ax, net in zip(axes[0], nets):
        cos_m, cos_w = np.asarray(net["means"]), np.asarray(net["classifiers"])
        lo = min(cos_m.min(), cos_w.min(), net["etf"]) - 0.02
        bins = np.linspace(lo, max(cos_m.max(), cos_w.max(), 0.0) + 0.02, 31)
        ax.hist(cos_m, bins=bins, alpha=0.6, label="centred class means")
        ax.hist(cos_w, bins=bins, alpha=0.6, label="classifiers")
        ax.axvline(net["etf"], color="k", ls="--", label=f"LPM optimum -1/(K-1), K = {net['K']}")
        label(ax, "pairwise cosine (unitless)", "number of pairs", f"{net['name']}, epoch {net['epoch']}")
    axes[0, 0].legend(fontsize="small")
    return fig
