"""Minority collapse (Fang, He, Long & Su, PNAS 2021): what the Layer-Peeled Model predicts for
imbalanced classes, and what training does.

* **Measures** (pure functions): mean pairwise cosine and mean norm of the minority and of the
  majority classifiers ``w_k`` and class-mean features ``h_k``, the budgets ``E_W``, ``E_H`` a
  trained network spends, per-class test accuracy.
* **The symmetric Layer-Peeled Model.**  With ``K_A`` majority classes of ``n_A`` examples and
  ``K_B = K - K_A`` minority classes of ``n_B = n_A / R``, the convex (semidefinite) relaxation of
  the LPM is invariant under permuting the majority classes among themselves and the minority
  classes among themselves, so an optimal Gram matrix of ``[w_1..w_K, h_1..h_K]`` exists that
  takes one value per *pattern* (same class or not, which group).  Block-diagonalising that
  structured ``2K x 2K`` matrix along the group means and the within-group contrasts reduces its
  PSD constraint to one 4x4 and two 2x2 PSD blocks: 16 scalars whatever ``K``, solved in
  milliseconds (:func:`solve_symmetric_lpm`).  Only ``E_W * E_H`` matters (``W -> sW``,
  ``H -> H/s`` keeps the logits).  The paper's budgets are ``E_W = 1``, ``E_H = 5``.
* **Training** on Fashion-MNIST at several ``R`` and oversampling rates: ``quick`` trains small
  MLPs for all runs as one batched model through :func:`utils.train.fit`; ``full`` a small
  convolutional network per run (GPU); ``paper`` VGG-11 with the paper's schedule, checkpointed.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .claims import Claim
from .experiment import JsonResult, check_profile, mlp_memory_bytes
from .imbalance import imbalanced_indices, oversampling_repeats
from .lpm import PAPER_BUDGETS, check_budgets, cvxpy_solve
from .models import BatchedMLP
from .metrics import class_means, cosine_matrix, mean_off_diagonal
from .profiles import torch_threads

EXPERIMENT = "minority_collapse"
PAPER_E_W, PAPER_E_H = PAPER_BUDGETS  # Fang et al.'s budgets: E_W = 1, E_H = 5
COLLAPSE_TOL = 1e-3  # minority cosine above 1 - COLLAPSE_TOL counts as collapsed
DEGENERATE_NORM = 1e-6  # minority ||w||^2 below this fraction of E_W: all minority classifiers ~ 0


# --------------------------------------------------------------------------- measures

def group_cosine(V: torch.Tensor) -> float:
    """Mean pairwise cosine of the rows of V: (m, d) (``metrics.mean_off_diagonal`` of
    ``metrics.cosine_matrix``); NaN for a single row."""
    return mean_off_diagonal(cosine_matrix(V)) if V.shape[0] >= 2 else float("nan")


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
    return {f"{prefix}_minority_cosine": group_cosine(mino), f"{prefix}_majority_cosine": group_cosine(maj),
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


def network_budgets(W: torch.Tensor, H: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The LPM budgets a trained network spends: ``E_W = (1/K) sum_k ||w_k||^2`` and
    ``E_H = (1/K) sum_k (1/n_k) sum_i ||h_{k,i}||^2`` (raw penultimate features, as the logits
    ``W h`` use them). W: (K, d) classifier; H: (N, d) features; y: (N,) labels."""
    K = W.shape[0]
    sq, _ = class_means((H.to(torch.float64) ** 2).sum(1, keepdim=True), y, K)
    return float((W.to(torch.float64) ** 2).sum(1).mean()), float(sq.mean())


def minority_collapse_measures(W: torch.Tensor, H: torch.Tensor, y_train: torch.Tensor,
                               predictions: torch.Tensor, y_test: torch.Tensor,
                               num_majority: int) -> dict:
    """All measures of one trained network.

    Args:
        W: (K, d) last-layer classifier.
        H: (N, d) penultimate features of the training examples; y_train: (N,) their labels.
        predictions: (M,) predicted test labels; y_test: (M,) true test labels.
        num_majority: K_A (majority classes are ``0..K_A-1``).
    Returns:
        ``w_*``: classifier geometry; ``h_*``: class means centred by the **global sample mean**
        (Fang et al.'s definition; at large R it is dominated by the majority classes);
        ``hbar_*``: class means centred by the mean of the class means (neural collapse's
        convention); ``E_W``, ``E_H`` (:func:`network_budgets`), ``E_H_centred`` (the same for the
        features minus the global sample mean); ``minority_accuracy`` and
        ``majority_accuracy`` (test, averaged over classes); ``per_class_accuracy`` (a list).
    """
    K = W.shape[0]
    means, counts = class_means(H, y_train, K)
    global_mean = (counts @ means) / counts.sum()
    acc = per_class_accuracy(predictions, y_test, K)
    E_W, E_H = network_budgets(W, H, y_train)
    E_H_centred = network_budgets(W, H.to(torch.float64) - global_mean, y_train)[1]
    return {**group_geometry(W, num_majority, "w"),
            **group_geometry(means - global_mean, num_majority, "h"),
            **group_geometry(means - means.mean(0), num_majority, "hbar"),
            "E_W": E_W, "E_H": E_H, "E_H_centred": E_H_centred,
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
    check_budgets(E_W, E_H)


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
    ``(1/K) sum ||h_k||^2 <= E_H``, relaxed to its Gram matrix (exact when d >= K; see :mod:`utils.lpm`).  Cached per
    argument tuple; about 2 ms per new ``R`` on a CPU.

    Raises:
        ValueError: K < 2, K_A outside 1..K-1, R < 1, or budgets that are not finite and positive.
        RuntimeError: no solver reached an optimum.
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
    cvxpy_solve(problem)  # the one solver path of the LPM chapters (CLARABEL, else SCS)
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


def lpm_sweep(ratios: Sequence[float], num_classes: int = 10, num_majority: int = 5, E_W: float = PAPER_E_W,
              E_H: float = PAPER_E_H, solver: str = "symmetric", **solver_kwargs) -> np.ndarray:
    """Minority cosine of the LPM at each imbalance ratio (1.0 where the minority classifiers vanish).

    Args:
        ratios: imbalance ratios R >= 1.
        solver: ``"symmetric"`` (this module's reduced convex program), ``"convex"``
            (``utils.lpm.solve_lpm_convex`` on the full Gram matrix) or ``"nonconvex"``
            (``utils.lpm.solve_lpm``, gradient descent on W and H with restarts, p = 2K).
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
        sizes = [float(R)] * num_majority + [1.0] * (num_classes - num_majority)
        if solver == "convex":
            sol = lpm.solve_lpm_convex(sizes, E_W, E_H, **solver_kwargs)
        else:
            sol = lpm.solve_lpm(sizes, 2 * num_classes, E_W, E_H, **solver_kwargs)
        cos = lpm.minority_classifier_cosine(sol.gram, num_majority, zero_tol=math.sqrt(DEGENERATE_NORM))
        out.append(1.0 if math.isnan(cos) else cos)
    return np.array(out)


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



# --------------------------------------------------------------------------- training: batched MLPs (quick)

def batched_mlp(runs: int, in_dim: int, width: int, depth: int, num_classes: int, seed: int = 0) -> BatchedMLP:
    """``runs`` independent ReLU MLPs ``d -> width (x depth) -> K`` as one :class:`utils.models.BatchedMLP`.

    He-uniform hidden layers with zero biases, a PyTorch-style classifier without bias (as in the LPM),
    no BatchNorm; run ``r`` is drawn from a generator seeded with ``seed + r``.
    """
    if depth < 1:
        raise ValueError(f"depth (hidden layers) must be at least 1, got {depth}")
    return BatchedMLP(runs, in_dim, width, depth - 1, num_classes, batchnorm=False, init="he_hidden",
                      classifier_bias=False, seeds=[seed + r for r in range(runs)])


class PooledRuns(torch.nn.Module):
    """What :func:`utils.train.fit` trains: a :class:`BatchedMLP` fed from one index table.

    ``fit`` shuffles and batches the rows of a (L, runs) table of example indices; row i, column
    r names the example that run r sees at position i (each run's own imbalanced, possibly
    oversampled, pool; see :func:`run_table`).  ``forward`` gathers those examples from ``data``
    (N, d) and returns (runs, B, K) logits.
    """

    def __init__(self, net: BatchedMLP, data: torch.Tensor):
        super().__init__()
        self.net = net
        self.data = data

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.net(self.data[rows.T])


def batched_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Sum over runs of each run's mean cross-entropy: outputs (runs, B, K); targets (B, runs)."""
    return F.cross_entropy(outputs.flatten(0, 1), targets.T.flatten(), reduction="sum") / targets.shape[0]


def run_table(pools: Sequence[torch.Tensor], seed: int = 0) -> torch.Tensor:
    """(L, runs) index table, L the longest pool: column r repeats seeded permutations of
    ``pools[r]`` (example indices, oversampled ones repeated) to length L, so that an epoch of
    ``fit`` over the rows shows every run each of its examples about ``L / len(pool)`` times."""
    g = torch.Generator().manual_seed(seed)
    L = max(len(p) for p in pools)
    cols = [torch.cat([p[torch.randperm(len(p), generator=g)] for _ in range(math.ceil(L / len(p)))])[:L]
            for p in pools]
    return torch.stack(cols, 1)


@dataclass(frozen=True)
class RunSpec:
    """One training run: imbalance ratio and minority oversampling factor (1 = none)."""

    ratio: float
    oversample: int = 1

    @property
    def name(self) -> str:
        return f"R={self.ratio:g}" + (f", oversampled x{self.oversample}" if self.oversample > 1 else "")


def _pool(y: torch.Tensor, spec: RunSpec, n_majority: int, num_majority: int, K: int, seed: int):
    idx = imbalanced_indices(y, n_majority, spec.ratio, num_majority, K, seed=seed).cpu()
    if spec.oversample > 1:
        return idx, idx.repeat_interleave(oversampling_repeats(y[idx].cpu(), range(num_majority, K), spec.oversample))
    return idx, idx


def train_imbalanced_batched(specs: Sequence[RunSpec], X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor,
                             y_test: torch.Tensor, n_majority: int, num_majority: int = 5, width: int = 256,
                             depth: int = 2, steps: int = 8000, batch_size: int = 128, lr: float = 0.05,
                             weight_decay: float = 5e-3, seed: int = 0, progress: bool = True) -> list[dict]:
    """Train one MLP per spec, all side by side through :func:`utils.train.fit`, and measure each.

    Every run draws its imbalanced training set from (X, y) with the same seed (nested subsets);
    all take ``steps`` SGD-momentum steps of ``batch_size`` (about ``steps * batch_size / L``
    epochs of the longest pool), the learning rate divided by 10 at 1/3 and 2/3.

    Args:
        X: (N, d) flattened training inputs, y: (N,) labels in 0..K-1 (at least n_A per class).
        X_test: (M, d), y_test: (M,) test set.
    Returns:
        One row per spec: ``ratio``, ``oversample``, ``name``, ``n_minority``, ``train_accuracy``,
        ``w_cosines`` and the measures of :func:`minority_collapse_measures`.
    """
    from .train import fit

    K = int(y.max()) + 1
    device = X.device
    subsets, pools = zip(*[_pool(y, s, n_majority, num_majority, K, seed) for s in specs])
    table = run_table(pools, seed).to(device)
    epochs = max(1, round(steps * batch_size / table.shape[0]))
    # seven 256-wide networks side by side: two threads take 2/3 of one thread's time (measured)
    with torch_threads(None, device):
        net = batched_mlp(len(specs), X.shape[1], width, depth, K, seed=seed).to(device)
        fit(PooledRuns(net, X), table, y[table], epochs, optimizer="momentum", lr=lr, weight_decay=weight_decay,
            milestones=[epochs // 3, 2 * epochs // 3], batch_size=batch_size, seed=seed, progress=progress,
            loss_fn=batched_cross_entropy, desc="batched training")
        rows = []
        with torch.no_grad():
            test_pred = net(X_test).argmax(-1)
            H_all = net.penultimate(X)  # (runs, N, width)
            for r, (s, idx) in enumerate(zip(specs, subsets)):
                idx = idx.to(device)
                H, W = H_all[r, idx], net.weights[-1][r].T
                rows.append(_row(s, W, H, y[idx], test_pred[r], y_test, num_majority, K))
    return rows


def _row(spec: RunSpec, W, H, y_train, test_pred, y_test, num_majority: int, K: int) -> dict:
    train_acc = float(((H @ W.T).argmax(-1) == y_train).float().mean())
    return {"ratio": spec.ratio, "oversample": spec.oversample, "name": spec.name,
            "n_minority": int((y_train >= num_majority).sum()) // (K - num_majority), "train_accuracy": train_acc,
            **minority_collapse_measures(W, H, y_train, test_pred, y_test, num_majority),
            "w_cosines": cosine_matrix(W).tolist()}


# --------------------------------------------------------------------------- training: convolutional networks

def train_imbalanced_convnet(spec: RunSpec, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor,
                             y_test: torch.Tensor, n_majority: int, num_majority: int = 5,
                             architecture: str = "vgg11", epochs: int = 350, steps: int | None = None,
                             width: int = 128,
                             lr: float = 0.1, weight_decay: float = 5e-4, batch_size: int = 128, seed: int = 0,
                             progress: bool = True, checkpoint=None) -> dict:
    """One run of a convolutional network through :func:`utils.train.fit`: SGD momentum 0.9,
    learning rate divided by 10 at 1/3 and 2/3 of the epochs (the paper: VGG-11, lr 0.1,
    weight decay 5e-4, batch 128, 350 epochs).

    Args:
        X: (N, C, s, s) training images, y: (N,) labels; X_test, y_test: the test split.
        width: penultimate width of the ``small_cnn``.
        steps: when given, the number of epochs is ``steps * batch_size / (oversampled set size)``
            instead of ``epochs`` (so runs of different sizes take the same number of steps).
        checkpoint: a :class:`utils.checkpoint.Checkpoint` (the paper profile resumes from it).
    """
    from . import convnets  # only the full and paper profiles need the convolutional networks
    from .train import fit

    K = int(y.max()) + 1
    idx = imbalanced_indices(y, n_majority, spec.ratio, num_majority, K, seed=seed)
    Xs, ys = X[idx], y[idx]
    repeats = oversampling_repeats(ys, range(num_majority, K), spec.oversample) if spec.oversample > 1 else None
    pool = int(repeats.sum()) if repeats is not None else len(ys)
    if steps is not None:
        epochs = max(1, round(steps * batch_size / pool))
    torch.manual_seed(seed)
    extra = {"image_size": X.shape[-1], "width": width} if architecture == "small_cnn" else {}
    model = convnets.build(architecture, in_channels=X.shape[1], num_classes=K, **extra).to(X.device)
    fit(model, Xs, ys, epochs=epochs, optimizer="momentum", lr=lr, weight_decay=weight_decay,
        milestones=[epochs // 3, 2 * epochs // 3], batch_size=batch_size, seed=seed, progress=progress,
        repeats=repeats, desc=spec.name, checkpoint=checkpoint, checkpoint_key=spec.name)
    model.eval()
    with torch.no_grad():
        H = model.penultimate(Xs)
        pred = torch.cat([model(X_test[i:i + 2048]).argmax(-1) for i in range(0, len(X_test), 2048)])
    W = model.classifier.weight.detach()
    return {**_row(spec, W, H, ys, pred, y_test, num_majority, K), "epochs": epochs}


# --------------------------------------------------------------------------- the experiment

@dataclass(frozen=True)
class Config:
    """One profile of the chapter.

    LPM part: ``K``, ``K_A``; ``lpm_budgets``: (E_W, E_H) pairs, the paper's (1, 5) first;
    ``lpm_ratios``: the R grid of the curves; ``check_ratios``: where the reduced program is
    checked against the full SDP and against gradient descent on (W, H) (``gradient_steps`` steps).
    Training part: ``model`` (``batched_mlp``, ``small_cnn`` or ``vgg11``) on Fashion-MNIST at
    ``resize`` x ``resize``; ``n_majority`` images per majority class; plain runs at ``ratios``
    and, at the largest ratio, runs oversampled by each of ``oversample``; ``steps`` per run
    (None: ``epochs``), SGD momentum 0.9 at ``lr``, ``weight_decay``, batch ``batch_size``.
    """

    profile: str
    model: str
    n_majority: int
    ratios: tuple[float, ...]
    oversample: tuple[int, ...]
    resize: int
    width: int
    depth: int
    steps: int | None
    epochs: int
    lr: float
    weight_decay: float
    lpm_ratios: tuple[float, ...]
    check_ratios: tuple[float, ...]
    batch_size: int = 128
    test_per_class: int | None = None
    K: int = 10
    K_A: int = 5
    lpm_budgets: tuple[tuple[float, float], ...] = (PAPER_BUDGETS, (1.0, 1.0), (5.0, 5.0))
    gradient_steps: int = 4000
    seed: int = 0

    @classmethod
    def for_profile(cls, profile: str, smoke: bool = False) -> "Config":
        check_profile(profile)
        grid = tuple(float(r) for r in np.round(np.logspace(0, 5, 61), 4))
        if profile == "quick":
            c = cls(profile, model="batched_mlp", n_majority=600, ratios=(1.0, 10.0, 100.0, 600.0),
                    oversample=(10, 100, 600), resize=14, width=256, depth=2, steps=7000, epochs=0, lr=0.05,
                    weight_decay=5e-3, lpm_ratios=grid, check_ratios=(1.0, 3.0, 10.0, 30.0, 100.0))
        elif profile == "full":
            c = cls(profile, model="small_cnn", n_majority=5000, ratios=(1.0, 10.0, 100.0, 1000.0),
                    oversample=(10, 100, 1000), resize=28, width=128, depth=0, steps=8000, epochs=0, lr=0.05,
                    weight_decay=5e-4, lpm_ratios=grid, check_ratios=(1.0, 3.0, 10.0, 30.0, 100.0, 1000.0))
        else:  # the paper's protocol: VGG-11, 350 epochs, lr 0.1 / 10 at 1/3 and 2/3, weight decay 5e-4
            c = cls(profile, model="vgg11", n_majority=6000, ratios=(1.0, 10.0, 100.0, 1000.0),
                    oversample=(10, 100, 1000), resize=32, width=512, depth=0, steps=None, epochs=350, lr=0.1,
                    weight_decay=5e-4, lpm_ratios=grid, check_ratios=(1.0, 3.0, 10.0, 30.0, 100.0, 1000.0))
        if smoke:
            small = 4 if c.model == "vgg11" else 20  # VGG-11 on a CPU: a handful of images
            c = dataclasses.replace(c, n_majority=small, ratios=(1.0, float(small)), oversample=(small,),
                                    resize=min(c.resize, 16 if c.model != "vgg11" else 32),
                                    width=min(c.width, 16), steps=None if c.steps is None else 4, epochs=1,
                                    test_per_class=2 if c.model == "vgg11" else 5, lpm_ratios=(1.0, 10.0, 100.0), check_ratios=(10.0,),
                                    lpm_budgets=(PAPER_BUDGETS,), gradient_steps=300)
        return c

    @property
    def specs(self) -> list[RunSpec]:
        top = max(self.ratios)
        return [RunSpec(R) for R in self.ratios] + [RunSpec(top, int(o)) for o in self.oversample]

    def peak_memory_bytes(self) -> int:
        """Training data and test set on the device plus the model's parameters, optimiser state and activations."""
        N = self.K * self.n_majority
        data = 4 * (N + 10000) * self.resize ** 2
        if self.model == "batched_mlp":
            return data + mlp_memory_bytes(len(self.specs), self.batch_size, [self.resize ** 2] + [self.width] *
                                           self.depth + [self.K], eval_rows=N + 10000, optimizer_copies=1)
        # conv nets: parameters x 3 (weights, gradients, momentum) and the activations of a 2048-image
        # evaluation chunk (VGG-11: ~150k floats per 32x32 image; the small CNN: ~40k per 28x28 image)
        params, per_image = (9.3e6, 1.5e5) if self.model == "vgg11" else (0.45e6, 4e4)
        return int(data + 4 * 3 * params + 4 * 2048 * per_image * 1.5)

    def expected_seconds(self) -> float:
        """quick: ~1.3e-3 CPU-s per run per step (measured); full: ~3 ms per step of the small CNN on a
        T4; paper: ~25 s per VGG-11 epoch of 60k images on one GPU."""
        runs = len(self.specs)
        if self.model == "batched_mlp":
            return 5.0 + 1.3e-3 * runs * (self.steps or 0) * (self.width / 256) ** 2
        if self.model == "small_cnn":
            return 20.0 + 3e-3 * runs * (self.steps or 0)
        sizes = [self.K_A * self.n_majority + (self.K - self.K_A) * self.n_majority / s.ratio * s.oversample
                 for s in self.specs]
        return 25.0 * self.epochs * sum(sizes) / 60000


@dataclass
class Result(JsonResult):
    """Everything the chapter shows.

    lpm: the LPM curves (minority cosine against R per budget pair), thresholds, threshold against K_A.
    checks: the reduced program against the full SDP and gradient descent, per R (paper budget).
    runs: one row per training run (:func:`_row`).
    lpm_at_network: the LPM at the budgets (E_W, E_H) of the trained networks: per plain run, and a
        curve over R at the geometric mean of those budgets.
    """

    config: dict
    lpm: dict
    checks: list
    runs: list
    lpm_at_network: dict


def lpm_results(config: Config) -> dict:
    """LPM curves (minority cosine vs R) and collapse thresholds for each (E_W, E_H) of the config,
    and the threshold against K_A at the paper's budgets."""
    K, KA = config.K, config.K_A
    curves, thresholds = [], []
    for E_W, E_H in config.lpm_budgets:
        curves.append(lpm_sweep(config.lpm_ratios, K, KA, E_W, E_H).tolist())
        thresholds.append(collapse_threshold(K, KA, E_W, E_H))
    ka_values = list(range(1, K - 1))
    ka_thresholds = [collapse_threshold(K, ka, PAPER_E_W, PAPER_E_H) for ka in ka_values]
    return {"K": K, "K_A": KA, "ratios": list(config.lpm_ratios), "budgets": [list(b) for b in config.lpm_budgets],
            "minority_cosine": curves, "thresholds": thresholds,
            "threshold_vs_K_A": {"E_W": PAPER_E_W, "E_H": PAPER_E_H, "K_A": ka_values, "thresholds": ka_thresholds}}


def solver_checks(config: Config, device: torch.device) -> list[dict]:
    """The reduced program's minority cosine against the full SDP and gradient descent (p = 2K), paper budgets."""
    R = list(config.check_ratios)
    args = (config.K, config.K_A, PAPER_E_W, PAPER_E_H)
    reduced = lpm_sweep(R, *args)
    full = lpm_sweep(R, *args, solver="convex")
    grad = lpm_sweep(R, *args, solver="nonconvex", restarts=3, steps=config.gradient_steps, device=device)
    return [{"ratio": r, "reduced": float(a), "full_sdp": float(b), "gradient": float(g)}
            for r, a, b, g in zip(R, reduced, full, grad)]


def training_runs(config: Config, device: torch.device, progress: bool = True) -> list[dict]:
    """Train every run of ``config.specs`` on Fashion-MNIST and measure it (see :class:`Config`)."""
    from .data import load_dataset

    c = config
    X, y = load_dataset("fashion-mnist", train=True, device=device, resize=c.resize,
                        per_class=c.n_majority if c.model == "batched_mlp" or c.test_per_class else None, seed=c.seed)
    Xt, yt = load_dataset("fashion-mnist", train=False, device=device, resize=c.resize, per_class=c.test_per_class,
                          seed=c.seed)
    if c.model == "batched_mlp":
        return train_imbalanced_batched(c.specs, X.flatten(1), y, Xt.flatten(1), yt, c.n_majority, c.K_A,
                                        width=c.width, depth=c.depth, steps=c.steps, batch_size=c.batch_size,
                                        lr=c.lr, weight_decay=c.weight_decay, seed=c.seed, progress=progress)
    checkpoint = None
    if c.profile == "paper":
        from .checkpoint import Checkpoint
        checkpoint = Checkpoint.for_experiment(EXPERIMENT, "paper")
    rows = []
    for s in c.specs:
        if checkpoint is not None and checkpoint.done(s.name) is not None:
            rows.append(checkpoint.done(s.name))
            continue
        row = train_imbalanced_convnet(s, X, y, Xt, yt, c.n_majority, c.K_A, architecture=c.model, epochs=c.epochs,
                                       steps=c.steps, width=c.width, lr=c.lr, weight_decay=c.weight_decay, batch_size=c.batch_size,
                                       seed=c.seed, progress=progress, checkpoint=checkpoint)
        rows.append(checkpoint.record(s.name, row) if checkpoint is not None else row)
    return rows


def lpm_at_network(config: Config, rows: Sequence[dict]) -> dict:
    """The LPM's prediction at the budgets the trained networks spend (:func:`network_budgets`).

    Per plain run: the LPM minority cosine at the run's R and (E_W, E_H), and at (E_W, E_H_centred)
    (features minus their global mean, which removes the component all classes share); and a
    curve over R at the geometric mean of each budget over the plain runs.
    """
    K, KA = config.K, config.K_A
    plain = [r for r in rows if r["oversample"] == 1]
    per_run = []
    for r in plain:
        per_run.append({"ratio": r["ratio"], "E_W": r["E_W"], "E_H": r["E_H"], "E_H_centred": r["E_H_centred"],
                        "minority_cosine": solve_symmetric_lpm(K, KA, r["ratio"], r["E_W"], r["E_H"]).minority_cosine,
                        "minority_cosine_centred": solve_symmetric_lpm(K, KA, r["ratio"], r["E_W"],
                                                                       r["E_H_centred"]).minority_cosine,
                        "threshold": collapse_threshold(K, KA, r["E_W"], r["E_H"], rel_precision=1e-2),
                        "threshold_centred": collapse_threshold(K, KA, r["E_W"], r["E_H_centred"], rel_precision=1e-2)})
    gmean = lambda key: float(np.exp(np.mean([np.log(r[key]) for r in plain])))  # noqa: E731
    E_W, E_H, E_Hc = gmean("E_W"), gmean("E_H"), gmean("E_H_centred")
    return {"per_run": per_run, "E_W": E_W, "E_H": E_H, "E_H_centred": E_Hc, "ratios": list(config.lpm_ratios),
            "minority_cosine": lpm_sweep(config.lpm_ratios, K, KA, E_W, E_H).tolist(),
            "minority_cosine_centred": lpm_sweep(config.lpm_ratios, K, KA, E_W, E_Hc).tolist(),
            "threshold": collapse_threshold(K, KA, E_W, E_H, rel_precision=1e-2),
            "threshold_centred": collapse_threshold(K, KA, E_W, E_Hc, rel_precision=1e-2)}


def run(config: Config, device: torch.device, progress: bool = True) -> Result:
    """``python -m utils.reproduce minority_collapse``: the LPM at the paper's budgets, the solver
    checks, the training runs and the LPM at the networks' own budgets."""
    lpm_part = lpm_results(config)
    checks = solver_checks(config, device)
    rows = training_runs(config, device, progress)
    return Result(config=dataclasses.asdict(config), lpm=lpm_part, checks=checks, runs=rows,
                  lpm_at_network=lpm_at_network(config, rows))


# --------------------------------------------------------------------------- claims

def _plain_run(r: dict, ratio: float) -> dict:
    return next(x for x in r["runs"] if x["ratio"] == ratio and x["oversample"] == 1)


def _check_trained(r: dict) -> dict:
    K = r["config"]["K"]
    top = _plain_run(r, max(r["config"]["ratios"]))
    one = _plain_run(r, 1.0)
    return {"minority_cosine_top_R": top["w_minority_cosine"], "minority_accuracy_top_R": top["minority_accuracy"],
            "R1_gap_to_etf": abs(one["w_minority_cosine"] + 1 / (K - 1))}


def _check_oversampling(r: dict) -> dict:
    top = max(r["config"]["ratios"])
    over = max((x for x in r["runs"] if x["ratio"] == top and x["oversample"] > 1), key=lambda x: x["oversample"])
    return {"oversample": over["oversample"], "minority_cosine": over["w_minority_cosine"],
            "minority_accuracy": over["minority_accuracy"]}


CLAIMS = [
    Claim(id="mc.threshold", chapter=EXPERIMENT,
          statement="In the LPM with K = 10, K_A = 5 and the paper's budgets E_W = 1, E_H = 5, the minority "
                    "classifiers become identical beyond a finite imbalance ratio R* between 10 and 15.",
          source="Fang, He, Long & Su (PNAS 2021), Fig. 3 (the convex relaxation solved numerically at "
                 "K = 10, K_A = 5, E_W = 1, E_H = 5); Theorem 5 proves the R -> infinity limit only",
          paper_value="the minority cosine reaches 1 at a finite R (read off Fig. 3; no number in the text)",
          criterion="10 <= R* <= 15 (smallest R with minority cosine > 1 - 1e-3)",
          check=lambda r: r["lpm"]["thresholds"][[tuple(b) for b in r["lpm"]["budgets"]].index(PAPER_BUDGETS)],
          holds=lambda m: 10 <= m <= 15),
    Claim(id="mc.trained", chapter=EXPERIMENT,
          statement="Trained to its terminal phase, a network's minority classifiers collapse at a large "
                    "imbalance ratio (cosine near 1, minority test accuracy near zero), while at R = 1 they "
                    "form the simplex (cosine -1/(K-1)).",
          source="Fang et al. (2021), Fig. 4 (VGG and ResNet networks on Fashion-MNIST and CIFAR-10)",
          paper_value="minority cosine → 1 and minority test accuracy → 0 as R grows to 1000",
          criterion="at the largest R: minority cosine >= 0.9 and minority accuracy <= 0.15; "
                    "at R = 1: |cosine + 1/(K-1)| <= 0.05",
          check=_check_trained,
          holds=lambda m: m["minority_cosine_top_R"] >= 0.9 and m["minority_accuracy_top_R"] <= 0.15
          and m["R1_gap_to_etf"] <= 0.05, fails_in=("full",),
          reason="with a small CNN, 5,000 images per majority class, 8,000 SGD steps and weight decay 5e-4 (the "
                 "full run), the minority classifiers move towards each other as R grows (cosine -0.09, 0.01, 0.09 and "
                 "0.51 at R = 1, 10, 100 and 1000) and the minority test accuracy falls to 0.13, but the cosine stays "
                 "far below 0.9. The LPM at the norms this network ends with predicts no collapse at any ratio up to "
                 "1e5, so the partial merging is the network's, not the model's; the quick run (an MLP at ten times the "
                 "weight decay) reaches 0.94."),
    Claim(id="mc.oversampling", chapter=EXPERIMENT,
          statement="Oversampling the minority classes at the largest imbalance ratio separates their "
                    "classifiers again and recovers part of their test accuracy.",
          source="Fang et al. (2021), the oversampling experiments at R = 1000 (Fig. 6)",
          paper_value="oversampling restores separated minority classifiers and lifts minority accuracy",
          criterion="oversampled at the largest R (largest rate): minority cosine < 0.3 and minority accuracy > 0.4",
          check=_check_oversampling,
          holds=lambda m: m["minority_cosine"] < 0.3 and m["minority_accuracy"] > 0.4),
]


# --------------------------------------------------------------------------- figures

def _as_dict(result) -> dict:
    return result.to_json() if hasattr(result, "to_json") else result


def _budget_label(E_W: float, E_H: float) -> str:
    return f"E_W = {E_W:g}, E_H = {E_H:g}" + (" (paper)" if (E_W, E_H) == tuple(PAPER_BUDGETS) else "")


def plot_lpm_curves(result):
    """Left: the LPM's minority cosine against R per budget pair, thresholds dashed. Right: R* against K_A."""
    from .plotting import PALETTE, label, subplots

    lp = _as_dict(result)["lpm"]
    fig, axes = subplots(1, 2, width=9, height=4.6)
    ax = axes[0, 0]
    for i, ((E_W, E_H), cos, thr) in enumerate(zip(lp["budgets"], lp["minority_cosine"], lp["thresholds"])):
        ax.plot(lp["ratios"], cos, color=PALETTE[i], label=_budget_label(E_W, E_H) + f": R* = {thr:.3g}")
        if math.isfinite(thr):
            ax.axvline(thr, color=PALETTE[i], ls="--", lw=1)
    ax.axhline(-1 / (lp["K"] - 1), color="0.5", ls=":", label="simplex value -1/(K-1)")
    ax.set_xscale("log")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, fontsize=7)
    label(ax, "imbalance ratio R (log scale)", "minority classifier cosine (unitless)",
          f"LPM, K = {lp['K']}, K_A = {lp['K_A']} (dashed: thresholds R*)")
    ax = axes[0, 1]
    tk = lp["threshold_vs_K_A"]
    ax.plot(tk["K_A"], tk["thresholds"], "o-", color=PALETTE[0])
    ax.set_yscale("log")
    label(ax, "number of majority classes K_A", "collapse threshold R* (log scale)",
          f"threshold against K_A ({_budget_label(tk['E_W'], tk['E_H'])})")
    return fig


def plot_training(result, stored: dict | None = None):
    """Per run: minority and majority classifier cosines against R with the LPM on the same axes (at the
    paper's budgets and at the networks' own budgets), and the test accuracies. ``stored``: a stored
    results dict (e.g. the full profile's) drawn as a second row."""
    from .plotting import PALETTE, label, subplots

    panels = [(_as_dict(result), "this run")] + ([(stored, f"stored {stored.get('profile', '')} run")] if stored else [])
    fig, axes = subplots(len(panels), 2, width=9, height=5.6 * len(panels))
    for (r, title), (ax, ax_acc) in zip(panels, axes):
        plain = [x for x in r["runs"] if x["oversample"] == 1]
        R = [x["ratio"] for x in plain]
        lp, net = r["lpm"], r["lpm_at_network"]
        paper = [tuple(b) for b in lp["budgets"]].index(tuple(PAPER_BUDGETS))
        ax.plot(lp["ratios"], lp["minority_cosine"][paper], color="0.55", ls=":", label="LPM, paper's budgets")
        ax.plot(net["ratios"], net["minority_cosine"], color=PALETTE[2], ls="--",
                label=f"LPM at the networks' budgets (E_W = {net['E_W']:.3g}, E_H = {net['E_H']:.3g})")
        ax.plot(net["ratios"], net["minority_cosine_centred"], color=PALETTE[3], ls="-.",
                label=f"LPM at E_W = {net['E_W']:.3g}, centred E_H = {net['E_H_centred']:.3g}")
        ax.plot([p["ratio"] for p in net["per_run"]], [p["minority_cosine"] for p in net["per_run"]], "D",
                mfc="none", color=PALETTE[2], ms=8, label="LPM at each run's own budgets")
        ax.plot([p["ratio"] for p in net["per_run"]], [p["minority_cosine_centred"] for p in net["per_run"]], "v",
                mfc="none", color=PALETTE[3], ms=8, label="the same, centred E_H")
        ax.plot(R, [x["w_minority_cosine"] for x in plain], "o-", color=PALETTE[1], label="network: minority classifiers")
        ax.plot(R, [x["w_majority_cosine"] for x in plain], "s-", color=PALETTE[0], label="network: majority classifiers")
        ax.set_xscale("log")
        ax.set_xlim(0.7, max(R) * 2)
        ax.set_ylim(-0.3, 1.05)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7)
        label(ax, "imbalance ratio R (log scale)", "mean pairwise cosine (unitless)", f"{title}: classifiers")
        ax_acc.plot(R, [x["minority_accuracy"] for x in plain], "o-", color=PALETTE[1], label="minority classes (test)")
        ax_acc.plot(R, [x["majority_accuracy"] for x in plain], "s-", color=PALETTE[0], label="majority classes (test)")
        ax_acc.plot(R, [x["train_accuracy"] for x in plain], "^:", color="0.4", label="training accuracy")
        ax_acc.set_xscale("log")
        ax_acc.set_ylim(0, 1.02)
        ax_acc.legend(loc="lower left", fontsize=8)
        label(ax_acc, "imbalance ratio R (log scale)", "accuracy (fraction)", f"{title}: accuracy")
    return fig


def plot_features(result):
    """Minority class-mean cosine against R, centred by the global sample mean (the paper) and by the
    mean of the class means, with the classifiers' cosine for comparison."""
    from .plotting import PALETTE, label, subplots

    r = _as_dict(result)
    plain = [x for x in r["runs"] if x["oversample"] == 1]
    R = [x["ratio"] for x in plain]
    fig, axes = subplots(1, 1, width=6.5, height=3.8)
    ax = axes[0, 0]
    ax.plot(R, [x["h_minority_cosine"] for x in plain], "o-", color=PALETTE[1],
            label="class means − global sample mean (paper)")
    ax.plot(R, [x["hbar_minority_cosine"] for x in plain], "s--", color=PALETTE[3],
            label="class means − mean of class means")
    ax.plot(R, [x["w_minority_cosine"] for x in plain], "^:", color="0.4", label="classifiers")
    ax.set_xscale("log")
    ax.legend(loc="upper left", fontsize=8)
    label(ax, "imbalance ratio R (log scale)", "mean minority cosine (unitless)", "minority features: two centrings")
    return fig


def plot_oversampling(result):
    """At the largest R: minority classifier cosine and test accuracies against the oversampling rate
    (rate 1 = no oversampling), with the balanced run (R = 1) for reference."""
    from .plotting import PALETTE, label, subplots

    r = _as_dict(result)
    top = max(r["config"]["ratios"])
    rows = sorted([x for x in r["runs"] if x["ratio"] == top], key=lambda x: x["oversample"])
    rate = [x["oversample"] for x in rows]
    one = _plain_run(r, 1.0)
    fig, axes = subplots(1, 2, width=9, height=3.6)
    ax = axes[0, 0]
    ax.plot(rate, [x["w_minority_cosine"] for x in rows], "o-", color=PALETTE[1], label=f"R = {top:g}")
    ax.axhline(one["w_minority_cosine"], color="0.4", ls=":", label="balanced run (R = 1)")
    ax.set_xscale("log")
    ax.legend()
    label(ax, "oversampling rate (log scale)", "minority classifier cosine (unitless)", "classifiers separate again")
    ax = axes[0, 1]
    ax.plot(rate, [x["minority_accuracy"] for x in rows], "o-", color=PALETTE[1], label="minority classes")
    ax.plot(rate, [x["majority_accuracy"] for x in rows], "s-", color=PALETTE[0], label="majority classes")
    ax.axhline(one["minority_accuracy"], color=PALETTE[1], ls=":", label="minority, balanced run (R = 1)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    label(ax, "oversampling rate (log scale)", "test accuracy (fraction)", f"test accuracy at R = {top:g}")
    return fig
