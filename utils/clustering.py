"""Clustering with a similarity matrix, with baselines and a label-swap-invariant accuracy.

Used by the local-elasticity chapter: the rows of a relative-similarity matrix, or a kernel
(the kernelised similarity / NTK), are clustered and compared with K-means on raw pixels.
All functions take tensors or arrays and return numpy integer labels ``(N,)``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.decomposition import PCA


def _numpy(A) -> np.ndarray:
    return A.detach().cpu().double().numpy() if isinstance(A, torch.Tensor) else np.asarray(A, dtype=np.float64)


def _check_square(S: np.ndarray, name: str) -> None:
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {S.shape}")
    if not np.isfinite(S).all():
        raise ValueError(f"{name} has non-finite entries")


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"number of clusters must be in 1..{n}, got {k}")


def clustering_accuracy(labels_true, labels_pred) -> float:
    """Fraction of points correctly clustered under the best matching of cluster ids to classes.

    The matching is found by the Hungarian algorithm on the contingency table, so the score is
    invariant to any relabelling (permutation) of the predicted clusters.

    Args:
        labels_true: (N,) integer class labels; labels_pred: (N,) integer cluster ids.
    """
    t, p = np.asarray(_numpy(labels_true), dtype=np.int64), np.asarray(_numpy(labels_pred), dtype=np.int64)
    if t.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(f"labels must be two non-empty (N,) arrays of equal length, got {t.shape} and {p.shape}")
    _, t_idx = np.unique(t, return_inverse=True)
    _, p_idx = np.unique(p, return_inverse=True)
    table = np.zeros((p_idx.max() + 1, t_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (p_idx, t_idx), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / t.size)


def kmeans_rows(S, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """K-means on the rows of a similarity matrix S: (N, N) -> (N,) labels (each point described
    by its similarity to all the others)."""
    S = _numpy(S)
    _check_square(S, "similarity matrix")
    _check_k(k, S.shape[0])
    return KMeans(k, n_init=n_init, random_state=seed).fit_predict(S)


def spectral_clusters(S, k: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering with the (symmetrised, non-negative part of) S as affinity: (N, N) -> (N,)."""
    S = _numpy(S)
    _check_square(S, "similarity matrix")
    _check_k(k, S.shape[0])
    A = np.clip(0.5 * (S + S.T), 0.0, None)
    return SpectralClustering(k, affinity="precomputed", random_state=seed,
                              assign_labels="kmeans").fit_predict(A)


def kernel_kmeans(K, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 100) -> np.ndarray:
    """Kernel K-means (Lloyd iterations in the feature space of the kernel K), best of ``n_init`` starts.

    The squared distance of point i to cluster c is ``K_ii - 2 mean_{j in c} K_ij + mean_{j,l in c} K_jl``.

    Args:
        K: (N, N) symmetric positive semi-definite kernel matrix.
    Returns:
        (N,) labels minimising the within-cluster sum of squares among the starts.
    """
    K = _numpy(K)
    _check_square(K, "kernel matrix")
    n = K.shape[0]
    _check_k(k, n)
    K = 0.5 * (K + K.T)
    rng = np.random.default_rng(seed)
    diag = np.diag(K)
    best, best_cost = None, np.inf
    for _ in range(n_init):
        labels = rng.integers(0, k, n)
        for _ in range(max_iter):
            onehot = np.eye(k)[labels]  # (N, k)
            sizes = np.maximum(onehot.sum(0), 1)
            cross = K @ onehot / sizes  # (N, k)
            within = np.einsum("ic,ij,jc->c", onehot, K, onehot) / sizes ** 2
            dist = diag[:, None] - 2 * cross + within[None]
            dist[:, onehot.sum(0) == 0] = np.inf
            new = dist.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
        cost = dist[np.arange(n), labels].sum()
        if cost < best_cost:
            best, best_cost = labels.copy(), cost
    return best


def pixel_kmeans(X, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Baseline: K-means on the raw (flattened) inputs. X: (N, ...) -> (N,) labels."""
    X = _numpy(X).reshape(len(X), -1)
    _check_k(k, X.shape[0])
    return KMeans(k, n_init=n_init, random_state=seed).fit_predict(X)


def pca_kmeans(X, k: int, components: int = 50, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """Baseline: K-means on the top ``components`` principal components of the inputs. X: (N, ...) -> (N,)."""
    X = _numpy(X).reshape(len(X), -1)
    _check_k(k, X.shape[0])
    if not 1 <= components <= min(X.shape):
        raise ValueError(f"components must be in 1..{min(X.shape)}, got {components}")
    Z = PCA(components, random_state=seed).fit_transform(X)
    return KMeans(k, n_init=n_init, random_state=seed).fit_predict(Z)
