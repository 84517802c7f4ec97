"""The simplex equiangular tight frame (ETF) and a distance to it.

A simplex ETF is a set of K unit vectors whose pairwise cosines all equal -1/(K-1), the most
negative value K equal-norm vectors can share; its Gram matrix is ``K/(K-1) (I - 11^T/K)``.
Neural collapse (Papyan, Han & Donoho, 2020) says the centred class means and the classifiers
of a network trained past zero error approach (a scaled copy of) one.
"""
from __future__ import annotations

import torch

from .checks import check_matrix, check_positive_int


def etf_gram(K: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(K, K) Gram of a unit-norm simplex ETF: ``K/(K-1) (I - 11^T/K)``."""
    K = check_positive_int(K, "K", minimum=1)
    if K < 2:
        raise ValueError(f"a simplex ETF needs K >= 2 vectors, got K={K}")
    eye = torch.eye(K, dtype=dtype)
    return K / (K - 1) * (eye - torch.full((K, K), 1.0 / K, dtype=dtype))


def simplex_etf(K: int, d: int, seed: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """K unit vectors in R^d with all pairwise cosines -1/(K-1).

    Built from an orthonormal basis ``U`` (K, K-1) of the complement of the all-ones vector:
    the rows of ``sqrt(K/(K-1)) U`` have Gram ``K/(K-1)(I - 11^T/K)``. They are padded with zeros
    to dimension d and, when ``seed`` is given, rotated by a random orthogonal matrix.

    Args:
        K: number of vectors (classes), K >= 2; d: ambient dimension, d >= K-1.
    Returns:
        (K, d) tensor whose rows form the ETF (they sum to zero).
    """
    K, d = check_positive_int(K, "K", minimum=1), check_positive_int(d, "d", minimum=1)
    if K < 2:
        raise ValueError(f"a simplex ETF needs K >= 2 vectors, got K={K}")
    if d < K - 1:
        raise ValueError(f"a simplex ETF of K={K} vectors needs dimension d >= K-1 = {K - 1}, got d={d}")
    centred = torch.eye(K, dtype=dtype) - 1.0 / K
    U = torch.linalg.svd(centred).U[:, :K - 1]  # orthonormal basis of 1^perp
    V = torch.zeros(K, d, dtype=dtype)
    V[:, :K - 1] = (K / (K - 1)) ** 0.5 * U
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=dtype))
        V = V @ Q
    return V


def normalised_gram(V: torch.Tensor) -> torch.Tensor:
    """Gram ``V V^T`` (float64) divided by its Frobenius norm. V: (K, d) finite vectors as rows."""
    V64 = check_matrix(V, "V").to(torch.float64)
    G = V64 @ V64.T
    norm = torch.linalg.matrix_norm(G)
    if norm == 0:
        raise ValueError("all vectors are zero: the Gram matrix cannot be normalised")
    return G / norm


def etf_distance(V: torch.Tensor, center: bool = False) -> float:
    """Distance of a set of vectors to a (scaled, rotated) simplex ETF.

    ``|| G/||G||_F - E/||E||_F ||_F`` with ``G = V V^T`` and ``E`` the ETF Gram ``I - 11^T/K``.
    It is 0 exactly when the rows of V have equal norms and pairwise cosines -1/(K-1), i.e. are
    a scaled and rotated simplex ETF; it is invariant to scaling and to rotations of R^d.

    Args:
        V: (K, d) vectors as rows (e.g. class means, or the classifier W).
        center: subtract the mean of the rows first (use for class means).
    Returns:
        The distance as a Python float (between 0 and 2).
    """
    V64 = check_matrix(V, "V", min_rows=2).to(torch.float64)
    if center:
        V64 = V64 - V64.mean(0, keepdim=True)
    E = etf_gram(V64.shape[0]).to(V64.device)
    return float(torch.linalg.matrix_norm(normalised_gram(V64) - E / torch.linalg.matrix_norm(E)))
