"""RDI and AUX in the kernel regime: a wide two-layer network in the NTK parametrisation, its
empirical neural tangent kernel, and kernel ridge regression (Hu, Li & Yu, ICLR 2020, Sec. 4-5).

The paper's central step is that, for a wide network trained by gradient descent, both
regularisers of :mod:`utils.noisy_labels` become kernel ridge regression with ridge ``lambda^2``:

    f(x) = f0(x) + Theta(x, X) (Theta(X, X) + lambda^2 I)^{-1} (Y - f0(X)),

with ``Theta`` the empirical NTK at the initialisation and ``f0`` the network at initialisation.
This module holds the pure pieces that check it inside a network (not only a linear model):

* :class:`NTKNet`: ``f(x) = A^T relu(W x / sqrt(d)) / sqrt(m)`` with ``W`` (m, d) and ``A`` (m, K)
  standard normal and both trained (the NTK parametrisation of Jacot et al. 2018);
* :func:`ntknet_tangent_kernel`: its exact tangent kernel for K outputs, an (N K, N' K) matrix, in closed
  form: the same numbers as the book's generic :func:`utils.kernels.module_ntk` (reshaped
  ``permute(0, 2, 1, 3)``; the unit tests check it), but it never forms per-example Jacobians of
  ``K x m (d + K)`` entries, so it costs ~0.1 s instead of ~50 CPU-s at m = 1024 and stays usable
  at the widths of the ``full``/``paper`` profiles (m = 65,536: a 2 GB Jacobian per input);
* :func:`kernel_ridge`: the kernel-ridge prediction above;
* :func:`train_to_convergence`: RDI or AUX through :func:`utils.train.fit` (full-batch heavy ball).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .train import fit


class NTKNet(nn.Module):
    """Two-layer ReLU network in the NTK parametrisation, ``(N, d) -> (N, K)``.

    ``f(x) = A^T relu(W x / sqrt(d)) / sqrt(m)``; ``W``: (m, d), ``A``: (m, K), entries N(0, 1) drawn
    from a CPU generator seeded with ``seed``.  As ``m`` grows its tangent kernel stays O(1) and
    gradient descent moves it less and less away from its linearisation.
    """

    def __init__(self, in_dim: int, width: int, num_classes: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__()
        if min(in_dim, width, num_classes) < 1:
            raise ValueError(f"need positive in_dim, width and num_classes, got {in_dim}, {width}, {num_classes}")
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(width, in_dim, generator=g, dtype=dtype).to(device))
        self.A = nn.Parameter(torch.randn(width, num_classes, generator=g, dtype=dtype).to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, ...) -> (N, K)."""
        x = x.flatten(1)
        h = x @ self.W.t() / math.sqrt(x.shape[1])
        return torch.relu(h) @ self.A / math.sqrt(self.W.shape[0])


@torch.no_grad()
def ntknet_tangent_kernel(net: NTKNet, X: torch.Tensor, Z: torch.Tensor | None = None) -> torch.Tensor:
    """The exact tangent kernel ``<grad_theta f_c(x), grad_theta f_c'(z)>`` of :class:`NTKNet`.

    Args:
        X: (N, ...) inputs; Z: (N', ...) inputs (default ``X``).
    Returns:
        (N K, N' K) matrix, rows indexed by ``(example, output)`` with the output fastest:
        ``Theta[(i,c),(j,c')] = delta_cc' <relu(h_i), relu(h_j)>/m
        + (x_i . z_j / d) sum_r A_rc A_rc' 1[h_ir > 0] 1[h'_jr > 0] / m``
        (the first term from ``A``, the second from ``W``).
    """
    Z = X if Z is None else Z
    x, z = X.flatten(1), Z.flatten(1)
    d, m, K = x.shape[1], net.W.shape[0], net.A.shape[1]
    hx, hz = x @ net.W.t() / math.sqrt(d), z @ net.W.t() / math.sqrt(d)
    from_A = torch.relu(hx) @ torch.relu(hz).t() / m                          # (N, N')
    gx = ((hx > 0).to(x.dtype)[:, None, :] * net.A.t()[None]).reshape(-1, m)   # (N K, m)
    gz = ((hz > 0).to(x.dtype)[:, None, :] * net.A.t()[None]).reshape(-1, m)   # (N' K, m)
    from_W = (gx @ gz.t() / m).view(len(x), K, len(z), K) * (x @ z.t() / d)[:, None, :, None]
    eye = torch.eye(K, dtype=x.dtype, device=x.device)
    return (from_W + from_A[:, None, :, None] * eye[None, :, None, :]).reshape(len(x) * K, len(z) * K)


def kernel_ridge(K_train: torch.Tensor, K_cross: torch.Tensor, residual: torch.Tensor, lam: float) -> torch.Tensor:
    """``K_cross (K_train + lam^2 I)^{-1} residual``: the change kernel ridge regression predicts.

    Args:
        K_train: (N K, N K) kernel on the training inputs; K_cross: (N' K, N K) kernel between new
            and training inputs; residual: (N, K) targets minus the initial outputs ``Y - f0(X)``.
        lam: ridge ``lambda > 0`` (the regularisers' lambda; the ridge is ``lambda^2``).
    Returns:
        (N', K) predicted change of the outputs, to add to ``f0`` at the new inputs.
    """
    if not lam > 0:
        raise ValueError(f"lambda must be positive for kernel ridge regression, got {lam}")
    n = K_train.shape[0]
    sol = torch.linalg.solve(K_train + lam ** 2 * torch.eye(n, dtype=K_train.dtype, device=K_train.device),
                             residual.reshape(-1))
    return (K_cross @ sol).view(-1, residual.shape[1])


def train_to_convergence(method: str, X: torch.Tensor, y: torch.Tensor, width: int, lam: float, steps: int,
                         lr: float, num_classes: int, seed: int = 0) -> NTKNet:
    """Train a fresh :class:`NTKNet` (seeded ``seed``) with RDI or AUX by full-batch heavy-ball GD.

    Both use :func:`utils.train.fit` with momentum 0.9 and one batch of all ``N`` examples: RDI with
    ``penalty=distance_to_init_penalty``, AUX with ``loss_fn=auxiliary_loss`` (offsets from zero).
    Args:
        method: ``"distance_to_init"`` or ``"auxiliary"``; X: (N, ...) inputs; y: (N,) labels.
        lr: step size; ``N / (sigma_max(Theta) + lambda^2)`` is safe and fast.
    """
    from .noisy_labels import auxiliary_loss, distance_to_init_penalty, squared_loss

    net = NTKNet(X[0].numel(), width, num_classes, seed=seed, dtype=X.dtype, device=X.device)
    n = X.shape[0]
    if method == "distance_to_init":
        opts = dict(loss_fn=squared_loss, penalty=distance_to_init_penalty(net, lam, n))
    elif method == "auxiliary":
        loss_fn, offsets = auxiliary_loss(n, num_classes, lam, device=X.device, dtype=X.dtype)
        opts = dict(loss_fn=loss_fn, extra_params=[offsets])
    else:
        raise ValueError(f"unknown method {method!r}; choose 'distance_to_init' or 'auxiliary'")
    fit(net, X, y, steps, optimizer="momentum", lr=lr, batch_size=n, progress=False, cuda_graph=False,
        desc=method, **opts)
    return net


def relative_gap(a: torch.Tensor, b: torch.Tensor, reference: torch.Tensor) -> float:
    """``||a - b||_F / ||reference||_F`` (reference: the size of the change kernel ridge predicts)."""
    return float((a - b).norm() / reference.norm().clamp_min(1e-30))
