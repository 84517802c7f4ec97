"""Pure mathematics of few-shot learning via a learned linear representation (Du, Hu, Kakade, Lee &
Lei, ICLR 2021): the task generator, the source ERM, the target fits, principal angles.
The chapter's experiment lives in :mod:`utils.representation`.

The model: inputs ``x ~ N(0, I_d)``, a shared representation ``B* in R^{d x k}`` with
orthonormal columns, and ``T`` source tasks ``y = theta_t^T B*^T x + noise``, ``n1`` samples each.

Stage 1 learns ``B`` from the sources by the paper's empirical risk minimisation

    min_{B in R^{d x k}, theta_1..theta_T in R^k}  sum_t || y_t - X_t B theta_t ||^2,

solved by alternating least squares (ALS): for fixed ``B`` each ``theta_t`` is an ordinary
least-squares problem in ``k`` unknowns; for fixed ``theta`` the objective is a least-squares
problem in ``vec(B)`` (``dk`` unknowns) whose normal matrix is ``sum_t (theta_t theta_t^T) kron
(X_t^T X_t)``.  Each step solves its block exactly, so the objective never increases, and every
fixed point is a stationary point of the ERM.  The objective depends on ``B`` only through the
product ``B theta_t``, so after each ``B``-step we replace ``B`` by the orthonormal ``Q`` of its QR
factorisation (``B theta = Q (R theta)``: same objective value, same column span), which keeps the
``theta``-step well conditioned.  ALS starts from the method-of-moments estimate (top-``k``
eigenvectors of ``sum y^2 x x^T``), which the paper also analyses.

Stage 2 fits the target task in the learned ``k``-dimensional space, ``w = B (X B)^+ y``, and
compares it against least squares on the target alone in ``d`` dimensions, ``w = X^+ y``
(minimum-norm interpolation when ``n2 < d``).  With isotropic inputs the excess risk of a linear
predictor ``w`` on the target is exactly ``E[(x^T w - x^T w*)^2] = ||w - w*||^2``.

Everything is batched over seeds (leading dimension ``S``) and computed in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .train import progress_bar

DTYPE = torch.float64


def _check_dims(d: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"representation dimension k must be at least 1, got k={k}")
    if k > d:
        raise ValueError(f"representation dimension k={k} must not exceed the input dimension d={d}")


def _check_samples(n: int, name: str) -> None:
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")


# --------------------------------------------------------------------------- task generator
@dataclass
class SourceTasks:
    """Source tasks and the target task's ground truth, batched over ``S`` seeds.

    Attributes:
        B_true: (S, d, k) ground-truth representation, orthonormal columns.
        theta: (S, T, k) source-task heads.
        X: (S, T, n1, d) source inputs.
        y: (S, T, n1) source labels.
        theta_target: (S, k) target head (unit norm).
        noise: label-noise standard deviation (sources and target).
        seeds: the seeds, one per batch entry.
    """
    B_true: torch.Tensor
    theta: torch.Tensor
    X: torch.Tensor
    y: torch.Tensor
    theta_target: torch.Tensor
    noise: float
    seeds: list[int]

    @property
    def w_target(self) -> torch.Tensor:
        """(S, d) the target task's true linear predictor ``B* theta_target``."""
        return torch.einsum("sdk,sk->sd", self.B_true, self.theta_target)


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def make_tasks(d: int, k: int, num_tasks: int, n_per_task: int, diverse: bool, noise: float,
               seeds: Sequence[int], device: torch.device | str = "cpu", balanced: bool = False) -> SourceTasks:
    """Draw ``T = num_tasks`` source tasks sharing a representation, one instance per seed.

    Diverse sources: ``theta_t`` are independent uniform unit vectors in ``R^k`` (for ``T >> k``
    the ``k x T`` matrix ``Theta = [theta_1..theta_T]`` is well conditioned:
    ``Theta Theta^T ~ (T/k) I_k``); the target head is another uniform unit vector.  Non-diverse
    sources: every ``theta_t = +-e_1`` (one direction); the target head is a uniform unit vector
    orthogonal to ``e_1``, i.e. it uses only directions outside the sources' span.

    Args:
        d: input dimension; k: representation dimension (``1 <= k <= d``).
        num_tasks: ``T``; n_per_task: ``n1`` samples per source task.
        diverse: which of the two source conditions above.
        noise: label-noise standard deviation ``sigma >= 0``.
        seeds: one instance per seed (independent ``torch.Generator``s, so a seed's draw does not
            depend on the other seeds in the batch).
        balanced: diverse sources only: whiten the drawn heads so that ``Theta Theta^T = (T/k) I_k``
            exactly (the paper's well-conditioned diversity assumption with condition number 1;
            the heads keep mean squared norm 1).  Needs ``T >= k``.
    """
    _check_dims(d, k)
    _check_samples(num_tasks, "num_tasks")
    _check_samples(n_per_task, "n_per_task (n1)")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    if not diverse and k < 2:
        raise ValueError("non-diverse sources need k >= 2 so that the target can leave their span")
    if len(seeds) < 1:
        raise ValueError("need at least one seed")
    if balanced and (not diverse or num_tasks < k):
        raise ValueError(f"balanced heads need diverse sources and num_tasks >= k={k}, got T={num_tasks}")
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in ("B", "theta", "X", "y", "target")}
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        B = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=DTYPE)).Q
        if diverse:
            theta = _unit_rows(torch.randn(num_tasks, k, generator=g, dtype=DTYPE))
            if balanced:
                evals, evecs = torch.linalg.eigh(theta.T @ theta)
                theta = theta @ (evecs * evals.rsqrt()) @ evecs.T * (num_tasks / k) ** 0.5
            target = _unit_rows(torch.randn(k, generator=g, dtype=DTYPE))
        else:
            signs = torch.randint(0, 2, (num_tasks,), generator=g).to(DTYPE) * 2 - 1
            theta = torch.zeros(num_tasks, k, dtype=DTYPE)
            theta[:, 0] = signs
            target = torch.randn(k, generator=g, dtype=DTYPE)
            target[0] = 0.0
            target = _unit_rows(target)
        X = torch.randn(num_tasks, n_per_task, d, generator=g, dtype=DTYPE)
        y = torch.einsum("tnd,dk,tk->tn", X, B, theta)
        y = y + noise * torch.randn(num_tasks, n_per_task, generator=g, dtype=DTYPE)
        for name, value in zip(parts, (B, theta, X, y, target)):
            parts[name].append(value)
    stack = {name: torch.stack(v).to(device) for name, v in parts.items()}
    return SourceTasks(stack["B"], stack["theta"], stack["X"], stack["y"], stack["target"],
                       float(noise), [int(s) for s in seeds])


def sample_target(w_target: torch.Tensor, n_target: int, noise: float, seeds: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n2 = n_target`` target samples ``y = w^T x + noise`` for each seed.

    Args:
        w_target: (S, d) true target predictors; seeds: S seeds (one generator each).
    Returns:
        X: (S, n2, d), y: (S, n2), float64 on ``w_target``'s device.
    """
    _check_samples(n_target, "n_target (n2)")
    S, d = w_target.shape
    if len(seeds) != S:
        raise ValueError(f"need one seed per target predictor: {len(seeds)} seeds for {S} predictors")
    Xs, eps = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        Xs.append(torch.randn(n_target, d, generator=g, dtype=DTYPE))
        eps.append(torch.randn(n_target, generator=g, dtype=DTYPE))
    X = torch.stack(Xs).to(w_target.device)
    y = torch.einsum("snd,sd->sn", X, w_target.to(DTYPE)) + noise * torch.stack(eps).to(w_target.device)
    return X, y


# --------------------------------------------------------------------------- stage 1: learn B
def spectral_init(X: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Method-of-moments estimate: top-``k`` eigenvectors of ``sum_{t,i} y_ti^2 x_ti x_ti^T``.

    Args:
        X: (S, T, n1, d) source inputs; y: (S, T, n1) labels.
    Returns:
        (S, d, k) orthonormal columns.
    """
    Xf = X.reshape(X.shape[0], -1, X.shape[-1])
    yf = y.reshape(y.shape[0], -1)
    moment = torch.einsum("sn,sni,snj->sij", yf ** 2, Xf, Xf)
    return torch.linalg.eigh(moment).eigenvectors[..., -k:].flip(-1)


def fit_heads(X: torch.Tensor, y: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The ``theta``-step: ``theta_t = argmin ||y_t - X_t B theta||^2`` for every task.

    Args:
        X: (S, T, n1, d) source inputs; y: (S, T, n1); B: (S, d, k).
    Returns:
        (S, T, k).
    """
    XB = X @ B.unsqueeze(1)                                             # (S, T, n1, k)
    A = XB.transpose(-1, -2) @ XB
    c = (XB.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)
    return torch.linalg.solve(A, c)


def fit_representation_step(G: torch.Tensor, r: torch.Tensor, theta: torch.Tensor,
                            jitter: float = 1e-13) -> torch.Tensor:
    """The ``B``-step: ``argmin_B sum_t ||y_t - X_t B theta_t||^2`` for fixed heads.

    The normal equations in ``vec(B)`` (index ``(i, a)`` for ``B[i, a]``) read
    ``sum_t G_t[i, j] theta_t[a] theta_t[b] B[j, b] = sum_t r_t[i] theta_t[a]``.  A relative
    ``jitter`` on the diagonal (default 1e-13 of its mean) keeps the Cholesky factorisation
    defined when the heads do not span ``R^k`` (non-diverse sources); it changes a well-posed
    solution only at the 1e-13 level.

    Args:
        G: (S, T, d, d); r: (S, T, d); theta: (S, T, k).
    Returns:
        (S, d, k) the minimiser (not orthonormalised).
    """
    S, T, d, _ = G.shape
    k = theta.shape[-1]
    outer = torch.einsum("sta,stb->stab", theta, theta).reshape(S, T, k * k)
    M = torch.bmm(outer.transpose(1, 2), G.reshape(S, T, d * d))           # (S, k*k, d*d)
    M = M.reshape(S, k, k, d, d).permute(0, 3, 1, 4, 2).reshape(S, d * k, d * k)
    rhs = torch.einsum("sti,sta->sia", r, theta).reshape(S, d * k, 1)
    scale = M.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(M.dtype).tiny)
    M = M + (jitter * scale)[:, None, None] * torch.eye(d * k, dtype=M.dtype, device=M.device)
    L = torch.linalg.cholesky(M)
    return torch.cholesky_solve(rhs, L).reshape(S, d, k)


@dataclass
class LearnedRepresentation:
    """Output of :func:`learn_representation`.

    Attributes:
        B: (S, d, k) learned representation, orthonormal columns.
        theta: (S, T, k) source heads in that basis.
        objective: (S, iterations + 1) nested list, the source ERM value
            ``sum_t ||y_t - X_t B theta_t||^2`` after each iteration (index 0: spectral start).
        iterations: ALS iterations run.
        converged: (S,) whether each seed met the stopping rule (else ``max_iter`` stopped it).
    """
    B: torch.Tensor
    theta: torch.Tensor
    objective: list[list[float]]
    iterations: int
    converged: list[bool]


def source_objective(X: torch.Tensor, y: torch.Tensor, B: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(S,) source ERM value ``sum_t ||y_t - X_t B theta_t||^2``.

    Args:
        X: (S, T, n1, d); y: (S, T, n1); B: (S, d, k); theta: (S, T, k).
    """
    w = torch.einsum("sdk,stk->std", B, theta)
    residual = y - (X @ w.unsqueeze(-1)).squeeze(-1)
    return (residual ** 2).sum((1, 2))


def learn_representation(X: torch.Tensor, y: torch.Tensor, k: int, max_iter: int = 200,
                         rtol: float = 1e-10, subspace_tol: float = 1e-10,
                         progress: bool = False) -> LearnedRepresentation:
    """Source ERM over ``B`` and the ``theta_t`` by alternating least squares, batched over seeds.

    Stops when, for every seed, the objective's relative decrease in one iteration is below
    ``rtol`` or the learned subspace moved by less than ``subspace_tol`` (Frobenius norm of the
    change of the projector ``B B^T``), or after ``max_iter`` iterations.

    Args:
        X: (S, T, n1, d) source inputs; y: (S, T, n1) labels; k: representation dimension.
    """
    if X.ndim != 4 or y.shape != X.shape[:3]:
        raise ValueError(f"expected X (S, T, n1, d) and y (S, T, n1); got {tuple(X.shape)}, {tuple(y.shape)}")
    _check_dims(X.shape[-1], k)
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    X, y = X.to(DTYPE), y.to(DTYPE)
    G = X.transpose(-1, -2) @ X
    r = torch.einsum("stnd,stn->std", X, y)
    B = spectral_init(X, y, k)
    theta = fit_heads(X, y, B)
    objective = [source_objective(X, y, B, theta)]
    it = 0
    done = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
    for it in progress_bar(range(1, max_iter + 1), desc="ALS", enabled=progress):
        B_new = torch.linalg.qr(fit_representation_step(G, r, theta)).Q
        moved = (B_new @ B_new.transpose(-1, -2) - B @ B.transpose(-1, -2)).flatten(1).norm(dim=1)
        B = B_new
        theta = fit_heads(X, y, B)
        objective.append(source_objective(X, y, B, theta))
        decrease = (objective[-2] - objective[-1]) / objective[-2].clamp_min(torch.finfo(DTYPE).tiny)
        done = (decrease < rtol) | (moved < subspace_tol)
        if bool(done.all()):
            break
    return LearnedRepresentation(B, theta, torch.stack(objective, 1).tolist(), it, done.tolist())


# --------------------------------------------------------------------------- stage 2: target
def fit_in_representation(B: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least squares in the learned space: ``w = B (X B)^+ y`` (minimum norm when ``n2 < k``).

    Args:
        B: (S, d, k); X: (S, n2, d); y: (S, n2).
    Returns:
        (S, d) target predictors.
    """
    theta = torch.linalg.pinv(X @ B) @ y.unsqueeze(-1)
    return (B @ theta).squeeze(-1)


def fit_target_only(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least squares on the target alone in ``d`` dimensions, ``w = X^+ y``: ordinary least squares
    for ``n2 >= d``, the minimum-norm interpolator for ``n2 < d``.

    Args:
        X: (S, n2, d); y: (S, n2).
    Returns:
        (S, d).
    """
    return (torch.linalg.pinv(X) @ y.unsqueeze(-1)).squeeze(-1)


def excess_risk(w: torch.Tensor, w_true: torch.Tensor) -> torch.Tensor:
    """(S,) excess risk on the target with ``x ~ N(0, I)``: ``E[(x^T(w - w*))^2] = ||w - w*||^2``."""
    return ((w - w_true) ** 2).sum(-1)


def principal_angles(B1: torch.Tensor, B2: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spans of ``B1`` and ``B2``.

    Accurate for small angles: angles below pi/4 come from the sines (singular values of
    ``(I - Q1 Q1^T) Q2``), the others from the cosines (singular values of ``Q1^T Q2``).

    Args:
        B1: (..., d, k1); B2: (..., d, k2) with full column rank.
    Returns:
        (..., min(k1, k2)).
    """
    if B1.shape[-2] != B2.shape[-2]:
        raise ValueError(f"subspaces live in different dimensions: {B1.shape[-2]} vs {B2.shape[-2]}")
    Q1 = torch.linalg.qr(B1.to(DTYPE)).Q
    Q2 = torch.linalg.qr(B2.to(DTYPE)).Q
    if Q1.shape[-1] < Q2.shape[-1]:
        Q1, Q2 = Q2, Q1
    m = Q2.shape[-1]
    cos = torch.linalg.svdvals(Q1.transpose(-1, -2) @ Q2).clamp(max=1.0)          # descending
    sin = torch.linalg.svdvals(Q2 - Q1 @ (Q1.transpose(-1, -2) @ Q2))[..., :m].flip(-1)  # ascending
    from_sin = torch.arcsin(sin.clamp(max=1.0))
    from_cos = torch.arccos(cos)
    return torch.where(sin < 2 ** -0.5, from_sin, from_cos)
