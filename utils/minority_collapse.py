"""Minority collapse: what the Layer-Peeled Model predicts for imbalanced classes, and what training does.

Three parts:

* **Measures** (pure functions): mean pairwise cosine and mean norm of the minority and of the
  majority classifiers ``w_k`` and class-mean features ``h_k``; per-class test accuracy averaged
  over each group.
* **The symmetric Layer-Peeled Model.**  With ``K_A`` majority classes of ``n_A`` examples and
  ``K_B = K - K_A`` minority classes of ``n_B = n_A / R``, the convex (semidefinite) relaxation of
  the LPM (Fang et al., 2021) is invariant under permuting the majority classes among themselves
  and the minority classes among themselves, so an optimal Gram matrix of ``[w_1..w_K, h_1..h_K]``
  exists that takes one value per *pattern* (same class or not, which group).  Block-diagonalising
  that structured ``2K x 2K`` matrix along the group means and the within-group contrasts reduces
  its PSD constraint to one 4x4 and two 2x2 PSD blocks: a problem with 16 scalars whatever ``K``,
  solved in milliseconds (:func:`solve_symmetric_lpm`).  Only ``E_W * E_H`` matters (rescaling
  ``W -> sW``, ``H -> H/s`` keeps the logits).
* **Training** on Fashion-MNIST at several ``R`` side by side: the quick profile trains small MLPs
  for all ``R`` (and oversampling) as one batched computation with a leading run dimension; the
  full profile follows the paper's protocol with VGG-11 (GPU).
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .imbalance import class_sizes, imbalanced_indices, oversampling_repeats
from .metrics import cosine_matrix
from .profiles import torch_threads
from .train import progress_bar

COLLAPSE_TOL = 1e-3  # minority cosine above 1 - COLLAPSE_TOL counts as collapsed
DEGENERATE_NORM = 1e-6  # minority ||w||^2 below this fraction of E_W: all minority classifiers ~ 0


# --------------------------------------------------------------------------- measures

def mean_pairwise_cosine(V: torch.Tensor | np.ndarray) -> float:
    """Mean cosine over the distinct pairs of rows of V: (m, d), m >= 2. Zero rows give NaN."""
    V = torch.as_tensor(np.asarray(V) if not isinstance(V, torch.Tensor) else V).to(torch.float64)
    if V.dim() != 2 or V.shape[0] < 2:
        raise ValueError(f"need at least two row vectors (m, d), got shape {tuple(V.shape)}")
    C = cosine_matrix(V)
    m = V.shape[0]
    return float((C.sum() - C.diagonal().sum()) / (m * (m - 1)))


def group_geometry(V: torch.Tensor, num_majority: int, prefix: str) -> dict[str, float]:
    """Cosines and norms of the rows of V: (K, d), split into majority rows ``:K_A`` and minority rows.

    Returns ``{prefix}_minority_cosine``, ``{prefix}_majority_cosine`` (NaN for a group of one),
    ``{prefix}_minority_norm``, ``{prefix}_majority_norm`` (mean Euclidean norms).
    """
    K = V.shape[0]
    if not 1 <= num_majority <= K - 1:
        raise ValueError(f"K_A = {num_majority} must lie in 1..K-1 = 1..{K - 1}")
    V = V.detach().to(torch.float64)
    maj, mino = V[:num_majority], V[num_majority:]
    cos = lambda M: mean_pairwise_cosine(M) if M.shape[0] >= 2 else float("nan")  # noqa: E731
    return {f"{prefix}_minority_cosine": cos(mino), f"{prefix}_majority_cosine": cos(maj),
            f"{prefix}_minority_norm": float(mino.norm(dim=1).mean()),
            f"{prefix}_majority_norm": float(maj.norm(dim=1).mean())}


def per_class_accuracy(predictions: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) fraction of correct predictions per class. predictions, y: (N,) labels."""
    if predictions.shape != y.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(y.shape)} differ in shape")
    correct = torch.bincount(y[predictions == y], minlength=num_classes).to(torch.float64)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no test examples")
    return correct / counts


def minority_collapse_measures(W: torch.Tensor, H: torch.Tensor, y_train: torch.Tensor,
                               predictions: torch.Tensor, y_test: torch.Tensor,
                               num_majority: int) -> dict[str, float]:
    """All measures of one trained network.

    Args:
        W: (K, d) last-layer classifier.
        H: (N, d) penultimate features of the training examples; y_train: (N,) their labels.
        predictions: (M,) predicted test labels; y_test: (M,) true test labels.
        num_majority: K_A (majority classes are ``0..K_A-1``).
    Returns:
        ``w_*`` classifier and ``h_*`` class-mean geometry (means centred by their average, as in
        neural collapse), ``minority_accuracy``/``majority_accuracy`` (test, averaged over classes)
        and ``per_class_accuracy`` (a list).
    """
    K = W.shape[0]
    H = H.to(torch.float64)
    counts = torch.bincount(y_train, minlength=K).to(H)
    if (counts == 0).any():
        raise ValueError(f"classes {torch.nonzero(counts == 0).flatten().tolist()} have no training examples")
    means = torch.zeros(K, H.shape[1], dtype=H.dtype, device=H.device).index_add_(0, y_train, H) / counts[:, None]
    acc = per_class_accuracy(predictions, y_test, K)
    return {**group_geometry(W, num_majority, "w"),
            **group_geometry(means - means.mean(0), num_majority, "h"),
            "minority_accuracy": float(acc[num_majority:].mean()),
            "majority_accuracy": float(acc[:num_majority].mean()),
            "per_class_accuracy": acc.tolist()}


# --------------------------------------------------------------------------- the symmetric LPM

@dataclass
class SymmetricLPMSolution:
    """Optimum of the symmetric convex LPM.

    Attributes:
        gram: (2K, 2K) Gram matrix of ``[w_1..w_K, h_1..h_K]`` (majority classes first).
        objective: optimal mean cross-entropy.
        minority_cosine, majority_cosine: cosine between two distinct classifiers of the group
            (minority: 1.0 where the minority classifiers all vanish, see ``degenerate``).
        minority_norm, majority_norm: ``||w_k||`` in each group.
        degenerate: True where ``||w_minority||^2 < 1e-6 E_W`` (all minority classifiers ~ 0, i.e.
            equal: collapsed, with an undefined cosine reported as 1).
        status: the solver's status.
    """

    gram: np.ndarray
    objective: float
    minority_cosine: float
    majority_cosine: float
    minority_norm: float
    majority_norm: float
    degenerate: bool
    status: str

    @property
    def w_cosines(self) -> np.ndarray:
        """(K, K) cosines between classifiers."""
        K = self.gram.shape[0] // 2
        G = self.gram[:K, :K]
        d = np.sqrt(np.clip(np.diag(G), 1e-300, None))
        return G / np.outer(d, d)


def _check_lpm_args(num_classes: int, num_majority: int, ratio: float, E_W: float, E_H: float) -> None:
    if num_classes < 2:
        raise ValueError(f"need K >= 2 classes, got {num_classes}")
    if not 1 <= num_majority <= num_classes - 1:
        raise ValueError(f"K_A = {num_majority} must lie in 1..K-1 = 1..{num_classes - 1}")
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"imbalance ratio R must be a finite number >= 1, got {ratio}")
    if not (E_W > 0 and E_H > 0):
        raise ValueError(f"energy budgets must be positive, got E_W={E_W}, E_H={E_H}")


@functools.lru_cache(maxsize=64)
def _symmetric_problem(num_classes: int, num_majority: int):
    """The reduced convex program for (K, K_A), built once with cvxpy parameters (DPP: fast re-solves).

    Variables: S4 (4x4 PSD) is the Gram matrix restricted to the normalised group-mean directions
    ``(1_A/sqrt(K_A), 1_B/sqrt(K_B))`` of W and of H; SA, SB (2x2 PSD) are the (W, H) blocks on the
    within-group contrasts (multiplicities K_A - 1 and K_B - 1).
    """
    import cvxpy as cp

    KA, KB = num_majority, num_classes - num_majority
    s = math.sqrt(KA * KB)
    S4 = cp.Variable((4, 4), PSD=True)
    SA = cp.Variable((2, 2), PSD=True) if KA > 1 else None
    SB = cp.Variable((2, 2), PSD=True) if KB > 1 else None
    sa = (lambda i, j: SA[i, j]) if SA is not None else (lambda i, j: 0.0)  # noqa: E731
    sb = (lambda i, j: SB[i, j]) if SB is not None else (lambda i, j: 0.0)  # noqa: E731
    weight_A, weight_B = cp.Parameter(nonneg=True), cp.Parameter(nonneg=True)
    E_W, E_H = cp.Parameter(pos=True), cp.Parameter(pos=True)
    p_A = (S4[0, 2] + (KA - 1) * sa(0, 1)) / KA  # w_k . h_k, k majority
    p_B = (S4[1, 3] + (KB - 1) * sb(0, 1)) / KB  # w_k . h_k, k minority
    # logit gaps of a majority example: other majority classes (q_A - p_A = -SA01), minority classes
    gaps_A = [cp.Constant(0.0)] + ([math.log(KA - 1) - sa(0, 1)] if KA > 1 else []) \
        + [math.log(KB) + S4[1, 2] / s - p_A]
    gaps_B = [cp.Constant(0.0)] + ([math.log(KB - 1) - sb(0, 1)] if KB > 1 else []) \
        + [math.log(KA) + S4[0, 3] / s - p_B]
    objective = weight_A * cp.log_sum_exp(cp.hstack(gaps_A)) + weight_B * cp.log_sum_exp(cp.hstack(gaps_B))
    constraints = [(S4[0, 0] + (KA - 1) * sa(0, 0) + S4[1, 1] + (KB - 1) * sb(0, 0)) / num_classes <= E_W,
                   (S4[2, 2] + (KA - 1) * sa(1, 1) + S4[3, 3] + (KB - 1) * sb(1, 1)) / num_classes <= E_H]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    return problem, (weight_A, weight_B, E_W, E_H), (S4, SA, SB)


def _expand_gram(S4: np.ndarray, SA: np.ndarray | None, SB: np.ndarray | None, KA: int, KB: int) -> np.ndarray:
    """The (2K, 2K) Gram matrix of [W; H] from the reduced blocks (inverse of the block-diagonalisation)."""
    SA = np.zeros((2, 2)) if SA is None else SA
    SB = np.zeros((2, 2)) if SB is None else SB
    s = math.sqrt(KA * KB)
    K = KA + KB

    def group_block(mean_part: float, contrast: float, n: int) -> np.ndarray:
        # n x n matrix with eigenvalue mean_part on 1/sqrt(n) and contrast on its complement
        return contrast * np.eye(n) + (mean_part - contrast) / n * np.ones((n, n))

    G = np.zeros((2 * K, 2 * K))
    for u, v in ((0, 0), (0, 1), (1, 0), (1, 1)):  # u, v: 0 = W, 1 = H
        AA = group_block(S4[2 * u, 2 * v], SA[u, v], KA)
        BB = group_block(S4[2 * u + 1, 2 * v + 1], SB[u, v], KB)
        G[u * K:u * K + KA, v * K:v * K + KA] = AA
        G[u * K + KA:(u + 1) * K, v * K + KA:(v + 1) * K] = BB
        G[u * K:u * K + KA, v * K + KA:(v + 1) * K] = S4[2 * u, 2 * v + 1] / s
        G[u * K + KA:(u + 1) * K, v * K:v * K + KA] = S4[2 * u + 1, 2 * v] / s
    return (G + G.T) / 2


def solve_symmetric_lpm(num_classes: int, num_majority: int, ratio: float, E_W: float = 1.0,
                        E_H: float = 1.0) -> SymmetricLPMSolution:
    """Solve the convex LPM with ``K_A`` majority classes of weight ``R`` and ``K - K_A`` of weight 1.

    The LPM: minimise ``(1/N) sum_k n_k CE(W h_k, k)`` over ``W`` and one feature ``h_k`` per class
    (optimal features are equal within a class) s.t. ``(1/K) sum ||w_k||^2 <= E_W`` and
    ``(1/K) sum ||h_k||^2 <= E_H``, relaxed to its Gram matrix (exact when d >= 2K).  Cached per
    argument tuple; about 2 ms per new ``R`` on a CPU.

    Raises:
        ValueError: K < 2, K_A outside 1..K-1, R < 1, or non-positive budgets.
    """
    _check_lpm_args(num_classes, num_majority, ratio, E_W, E_H)
    return _solve_symmetric_cached(int(num_classes), int(num_majority), float(ratio), float(E_W), float(E_H))


@functools.lru_cache(maxsize=4096)
def _solve_symmetric_cached(K: int, KA: int, ratio: float, E_W: float, E_H: float) -> SymmetricLPMSolution:
    problem, (weight_A, weight_B, EW, EH), (S4, SA, SB) = _symmetric_problem(K, KA)
    KB = K - KA
    total = KA * ratio + KB
    weight_A.value, weight_B.value = KA * ratio / total, KB / total
    EW.value, EH.value = E_W, E_H
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "solution may be inaccurate" near the collapse threshold
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        if problem.status not in ("optimal", "optimal_inaccurate"):
            problem.solve(solver="SCS", eps=1e-9, max_iters=100000)
    if problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"symmetric LPM solve failed ({problem.status}) for K={K}, K_A={KA}, R={ratio}")
    S4v = S4.value
    SAv = SA.value if SA is not None else None
    SBv = SB.value if SB is not None else None
    G = _expand_gram(S4v, SAv, SBv, KA, KB)
    a_w, b_w = G[0, 0], (G[0, 1] if KA > 1 else np.nan)
    c_w, d_w = G[KA, KA], (G[KA, KA + 1] if KB > 1 else np.nan)
    degenerate = bool(c_w < DEGENERATE_NORM * E_W)
    minority_cos = 1.0 if degenerate else float(np.clip(d_w / c_w, -1, 1))
    return SymmetricLPMSolution(gram=G, objective=float(problem.value), minority_cosine=minority_cos,
                                majority_cosine=float(np.clip(b_w / a_w, -1, 1)),
                                minority_norm=float(math.sqrt(max(c_w, 0.0))),
                                majority_norm=float(math.sqrt(max(a_w, 0.0))),
                                degenerate=degenerate, status=problem.status)


def lpm_sweep(ratios: Sequence[float], num_classes: int = 10, num_majority: int = 5, E_W: float = 1.0,
              E_H: float = 1.0, solver: str = "symmetric", **solver_kwargs) -> np.ndarray:
    """Minority cosine of the LPM at each imbalance ratio.

    Args:
        ratios: imbalance ratios R >= 1.
        solver: ``"symmetric"`` (this module's reduced convex program), ``"convex"``
            (``utils.lpm.solve_lpm_convex`` on the full Gram matrix) or ``"nonconvex"``
            (``utils.lpm.solve_lpm``, gradient descent on W and H with restarts).
        solver_kwargs: passed to the ``utils.lpm`` solvers.
    Returns:
        (len(ratios),) minority cosines.
    """
    if solver == "symmetric":
        return np.array([solve_symmetric_lpm(num_classes, num_majority, R, E_W, E_H).minority_cosine
                         for R in ratios])
    if solver not in ("convex", "nonconvex"):
        raise ValueError(f"unknown solver {solver!r}; choose 'symmetric', 'convex' or 'nonconvex'")
    from . import lpm  # the Layer-Peeled Model chapter's general solvers

    out = []
    for R in ratios:
        _check_lpm_args(num_classes, num_majority, R, E_W, E_H)
        KB = num_classes - num_majority
        sizes = [float(R)] * num_majority + [1.0] * KB
        if solver == "convex":
            sol = lpm.solve_lpm_convex(sizes, E_W, E_H, **solver_kwargs)
        else:
            sol = lpm.solve_lpm(sizes, 2 * num_classes, E_W, E_H, **solver_kwargs)
        out.append(minority_cosine_from_gram(np.asarray(sol.gram), num_majority, E_W))
    return np.array(out)


def minority_cosine_from_gram(gram: np.ndarray, num_majority: int, E_W: float = 1.0) -> float:
    """Mean pairwise cosine of the minority classifiers from a (2K, 2K) Gram of ``[W; H]``
    (1.0 where they all vanish, ``||w||^2 < 1e-6 E_W``, as in :class:`SymmetricLPMSolution`)."""
    K = gram.shape[0] // 2
    G = gram[num_majority:K, num_majority:K]
    diag = np.diag(G)
    if diag.mean() < DEGENERATE_NORM * E_W:
        return 1.0
    d = np.sqrt(np.clip(diag, 1e-300, None))
    C = G / np.outer(d, d)
    m = G.shape[0]
    return float((C.sum() - np.trace(C)) / (m * (m - 1)))


def collapse_threshold(num_classes: int = 10, num_majority: int = 5, E_W: float = 1.0, E_H: float = 1.0,
                       tol: float = COLLAPSE_TOL, max_ratio: float = 1e8, rel_precision: float = 1e-3) -> float:
    """Smallest R whose LPM minority cosine exceeds ``1 - tol`` (bisection in log R; the cosine is
    non-decreasing in R).  ``inf`` when even ``max_ratio`` does not collapse; 1.0 if R = 1 already does.

    Raises:
        ValueError: ``K - K_A < 2`` (one minority class has no pairwise cosine) or bad arguments.
    """
    if num_classes - num_majority < 2:
        raise ValueError(f"need at least two minority classes for a minority cosine, got K - K_A = "
                         f"{num_classes - num_majority}")
    collapsed = lambda R: solve_symmetric_lpm(num_classes, num_majority, R, E_W, E_H).minority_cosine > 1 - tol  # noqa: E731
    if collapsed(1.0):
        return 1.0
    if not collapsed(max_ratio):
        return math.inf
    lo, hi = 0.0, math.log(max_ratio)
    while hi - lo > rel_precision:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if collapsed(math.exp(mid)) else (mid, hi)
    return math.exp(hi)


# --------------------------------------------------------------------------- training (quick profile)

class BatchedMLP(torch.nn.Module):
    """``runs`` independent ReLU MLPs ``d -> width -> ... -> K`` evaluated as one batched computation.

    Parameters carry a leading run dimension, so one optimiser step updates every run and the
    runs stay independent (their losses are summed; no parameter is shared).  The classifier has
    no bias, as in the LPM.
    """

    def __init__(self, runs: int, in_dim: int, width: int, depth: int, num_classes: int, seed: int = 0):
        super().__init__()
        if min(runs, in_dim, width, depth, num_classes) < 1:
            raise ValueError(f"need positive runs, in_dim, width, depth, num_classes; got "
                             f"{runs}, {in_dim}, {width}, {depth}, {num_classes}")
        g = torch.Generator().manual_seed(seed)
        dims = [in_dim] + [width] * depth
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = math.sqrt(6.0 / d_in)  # He-uniform
            self.weights.append(torch.nn.Parameter((torch.rand(runs, d_in, d_out, generator=g) * 2 - 1) * bound))
            self.biases.append(torch.nn.Parameter(torch.zeros(runs, 1, d_out)))
        bound = 1.0 / math.sqrt(width)
        self.classifier = torch.nn.Parameter((torch.rand(runs, width, num_classes, generator=g) * 2 - 1) * bound)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """x: (runs, B, d) inputs -> (runs, B, width) features."""
        for W, b in zip(self.weights, self.biases):
            x = torch.relu(torch.baddbmm(b, x, W))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (runs, B, d) inputs -> (runs, B, K) logits."""
        return torch.bmm(self.penultimate(x), self.classifier)


def _run_batches(pools: list[torch.Tensor], steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """(steps, runs, B) example indices: run r walks epochs of shuffled ``pools[r]`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for pool in pools:
        need = steps * batch_size
        perms = [pool[torch.randperm(len(pool), generator=g)] for _ in range(math.ceil(need / len(pool)))]
        out.append(torch.cat(perms)[:need].view(steps, batch_size))
    return torch.stack(out, 1)


@dataclass
class RunSpec:
    """One training run: imbalance ratio and minority oversampling factor (1 = none)."""

    ratio: float
    oversample: int = 1

    @property
    def name(self) -> str:
        return f"R={self.ratio:g}" + (f", oversampled x{self.oversample}" if self.oversample > 1 else "")


def train_imbalanced_batched(specs: Sequence[RunSpec], X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor,
                             y_test: torch.Tensor, n_majority: int, num_majority: int = 5, width: int = 128,
                             depth: int = 2, steps: int = 3000, batch_size: int = 128, lr: float = 0.05,
                             weight_decay: float = 5e-4, seed: int = 0, progress: bool = True) -> list[dict]:
    """Train one MLP per spec, all runs side by side, and measure minority collapse in each.

    Every run draws its imbalanced training set from (X, y) with the same seed (nested subsets) and
    takes the same number of SGD-momentum steps; the learning rate is divided by 10 at 1/3 and 2/3.

    Args:
        X: (N, d) flattened training inputs, y: (N,) labels in 0..K-1 (at least n_A per class).
        X_test: (M, d), y_test: (M,) test set.
    Returns:
        One row per spec: ``ratio``, ``oversample``, ``name``, ``n_minority``, ``train_accuracy``,
        and the measures of :func:`minority_collapse_measures`.
    """
    K = int(y.max()) + 1
    device = X.device
    subsets = [imbalanced_indices(y, n_majority, s.ratio, num_majority, K, seed=seed).cpu() for s in specs]
    pools = []
    for s, idx in zip(specs, subsets):
        reps = oversampling_repeats(y[idx].cpu(), range(num_majority, K), s.oversample) if s.oversample > 1 else None
        pools.append(idx.repeat_interleave(reps) if reps is not None else idx)
    batches = _run_batches(pools, steps, batch_size, seed).to(device)
    with torch_threads(1, device):  # small batched matrices: one thread is faster
        return _train_and_measure(specs, subsets, batches, X, y, X_test, y_test, num_majority, K, width, depth,
                                  steps, batch_size, lr, weight_decay, seed, progress)


def _train_and_measure(specs, subsets, batches, X, y, X_test, y_test, num_majority, K, width, depth, steps,
                       batch_size, lr, weight_decay, seed, progress) -> list[dict]:
    """The batched training loop and the measures of :func:`train_imbalanced_batched`."""
    device = X.device
    torch.manual_seed(seed)
    model = BatchedMLP(len(specs), X.shape[1], width, depth, K, seed=seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[steps // 3, 2 * steps // 3], gamma=0.1)
    for step in progress_bar(range(steps), desc="batched training", enabled=progress):
        idx = batches[step]  # (runs, B)
        logits = model(X[idx])
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="sum") / batch_size
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    rows = []
    with torch.no_grad():
        test_pred = model(X_test.expand(len(specs), *X_test.shape)).argmax(-1)
        H_all = model.penultimate(X.expand(len(specs), *X.shape))  # (runs, N, width)
        for r, (s, idx) in enumerate(zip(specs, subsets)):
            idx = idx.to(device)
            H = H_all[r, idx]
            train_acc = float(((H @ model.classifier[r]).argmax(-1) == y[idx]).float().mean())
            measures = minority_collapse_measures(model.classifier[r].T, H, y[idx], test_pred[r], y_test, num_majority)
            rows.append({"ratio": s.ratio, "oversample": s.oversample, "name": s.name,
                         "n_minority": int((y[idx] >= num_majority).sum()) // (K - num_majority),
                         "train_accuracy": train_acc, **measures,
                         "w_cosines": cosine_matrix(model.classifier[r].T).tolist()})
    return rows


# --------------------------------------------------------------------------- training (full profile)

def train_imbalanced_convnet(spec: RunSpec, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor,
                             y_test: torch.Tensor, n_majority: int = 6000, num_majority: int = 5,
                             architecture: str = "vgg11", epochs: int = 350, seed: int = 0,
                             progress: bool = True) -> dict:
    """The paper's protocol for one run: VGG-11 (or ResNet-18) on 32x32 images, SGD momentum 0.9,
    lr 0.1 divided by 10 at 1/3 and 2/3 of the epochs, weight decay 5e-4, batch 128.  For a GPU.

    Args:
        X: (N, 1, 32, 32) training images, y: (N,) labels; X_test, y_test: the test split.
    """
    from . import convnets  # imported here: only the full profile needs the convolutional networks
    from .train import fit

    K = int(y.max()) + 1
    idx = imbalanced_indices(y, n_majority, spec.ratio, num_majority, K, seed=seed)
    Xs, ys = X[idx], y[idx]
    repeats = oversampling_repeats(ys, range(num_majority, K), spec.oversample) if spec.oversample > 1 else None
    torch.manual_seed(seed)
    model = convnets.build(architecture, in_channels=X.shape[1], num_classes=K).to(X.device)
    history = fit(model, Xs, ys, epochs=epochs, optimizer="momentum", lr=0.1, weight_decay=5e-4,
                  milestones=[epochs // 3, 2 * epochs // 3], batch_size=128, seed=seed, progress=progress,
                  repeats=repeats, desc=spec.name)
    model.eval()
    with torch.no_grad():
        H = model.penultimate(Xs)
        pred = torch.cat([model(X_test[i:i + 2048]).argmax(-1) for i in range(0, len(X_test), 2048)])
    W = model.classifier.weight.detach()
    return {"ratio": spec.ratio, "oversample": spec.oversample, "name": spec.name,
            "n_minority": int((ys >= num_majority).sum()) // (K - num_majority),
            "train_accuracy": history.accuracy[-1],
            **minority_collapse_measures(W, H, ys, pred, y_test, num_majority),
            "w_cosines": cosine_matrix(W).tolist()}


# --------------------------------------------------------------------------- experiment

QUICK = {"n_majority": 3000, "resize": 14, "width": 128, "depth": 2, "steps": 3000, "lr": 0.05}
FULL = {"n_majority": 6000, "resize": 32, "architecture": "vgg11", "epochs": 350}
RATIOS = (1, 10, 100, 1000)
LPM_ENERGIES = (4.0, 9.0, 25.0)  # E_W * E_H values of the LPM curves (E_W = E_H = sqrt)


def lpm_results(num_classes: int = 10, num_majority: int = 5, energies: Sequence[float] = LPM_ENERGIES,
                ratios: np.ndarray | None = None) -> dict:
    """LPM curves (minority cosine vs R) and collapse thresholds for each ``E_W * E_H``, plus the
    threshold against ``K_A`` at the middle energy."""
    ratios = np.logspace(0, 5, 61) if ratios is None else np.asarray(ratios)
    curves, thresholds = [], []
    for E in energies:
        e = math.sqrt(E)
        curves.append(lpm_sweep(ratios, num_classes, num_majority, e, e).tolist())
        thresholds.append(collapse_threshold(num_classes, num_majority, e, e))
    mid = math.sqrt(energies[len(energies) // 2])
    ka_values = list(range(1, num_classes - 1))
    ka_thresholds = [collapse_threshold(num_classes, ka, mid, mid) for ka in ka_values]
    return {"K": num_classes, "K_A": num_majority, "ratios": ratios.tolist(), "energies": list(energies),
            "minority_cosine": curves, "thresholds": thresholds,
            "threshold_vs_K_A": {"energy": energies[len(energies) // 2], "K_A": ka_values,
                                 "thresholds": ka_thresholds}}


def training_runs(profile: str, device: torch.device, progress: bool = True) -> tuple[list[dict], dict]:
    """Train at R in {1, 10, 100, 1000} and with oversampling (x R) at R = 1000 on Fashion-MNIST,
    K_A = 5.  Quick: the MLPs of :func:`train_imbalanced_batched` on 14x14 images, side by side on a
    CPU; full: the paper's protocol (:func:`train_imbalanced_convnet`, GPU).  Returns (rows, config)."""
    from .data import load_dataset

    specs = [RunSpec(R) for R in RATIOS] + [RunSpec(RATIOS[-1], oversample=int(RATIOS[-1]))]
    if profile == "quick":
        cfg = QUICK
        X, y = load_dataset("fashion-mnist", train=True, device=device, resize=cfg["resize"],
                            per_class=cfg["n_majority"], seed=0)
        Xt, yt = load_dataset("fashion-mnist", train=False, device=device, resize=cfg["resize"])
        rows = train_imbalanced_batched(specs, X.flatten(1), y, Xt.flatten(1), yt, cfg["n_majority"],
                                        width=cfg["width"], depth=cfg["depth"], steps=cfg["steps"],
                                        lr=cfg["lr"], progress=progress)
    elif profile == "full":
        cfg = FULL
        X, y = load_dataset("fashion-mnist", train=True, device=device, resize=cfg["resize"])
        Xt, yt = load_dataset("fashion-mnist", train=False, device=device, resize=cfg["resize"])
        rows = [train_imbalanced_convnet(s, X, y, Xt, yt, cfg["n_majority"], architecture=cfg["architecture"],
                                         epochs=cfg["epochs"], progress=progress) for s in specs]
    else:
        raise ValueError(f"unknown profile {profile!r}; choose 'quick' or 'full'")
    return rows, {**cfg, "K": 10, "K_A": 5, "ratios": list(RATIOS)}


def run(profile: str, device: torch.device, progress: bool = True) -> dict:
    """``python -m utils.reproduce minority_collapse``: the LPM sweep (:func:`lpm_results`) and the
    training runs (:func:`training_runs`)."""
    rows, config = training_runs(profile, device, progress)
    return {"runs": rows, "config": config, "lpm": lpm_results()}
