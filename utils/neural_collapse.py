"""Neural collapse (Papyan, Han & Donoho, 2020): metrics NC1-NC4 and the training experiment.

The metrics are pure functions of the penultimate features ``H`` (N, d), the labels ``y`` (N,),
and the last layer ``W`` (K, d), ``b`` (K,). All accumulate in float64.

* NC1, within-class variability: ``Tr(Sigma_W Sigma_B^+) / K`` with Papyan's between-class
  covariance ``Sigma_B = (1/K) sum_k (mu_k - mu_G)(mu_k - mu_G)^T`` (each class weighted 1/K) and
  ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``; computed by
  :func:`utils.metrics.within_between_trace` with ``weighting="uniform"`` (rank-(K-1) trick, no
  d x d pseudo-inverse). For balanced classes ``D = K * NC1``, where D is the separation fuzziness
  of He & Su (2023) (:func:`utils.metrics.separation_fuzziness`).
* NC2, convergence to a simplex ETF: equinorm (coefficient of variation of ``||mu_k - mu_G||`` and
  of ``||w_k||``), equiangularity (standard deviation of the pairwise cosines, k != l) and maximal
  angle (mean of ``|cos + 1/(K-1)|`` over k != l), for the centred means and for the classifiers.
* NC3, self-duality: ``|| W/||W||_F - M/||M||_F ||_F`` with M (K, d) the centred class means.
* NC4, nearest class centre: the fraction of samples where ``argmax_k (W h + b)_k`` differs from
  ``argmin_k ||h - mu_k||``.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn as nn

from .checks import check_classifier, check_features_labels, check_matrix
from .metrics import (ClassStats, _centred_residual_projection, _scatter_trace, class_means, class_stats,
                      cosine_matrix, separation_fuzziness, within_between_trace)
from .etf import etf_distance
from .profiles import torch_threads

# ----------------------------------------------------------------------------- metrics


def centred_class_means(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """(K, d) float64 class means minus their average ``mu_G`` (the mean of the class means)."""
    means, _ = class_means(H, y, num_classes)
    return means - means.mean(0, keepdim=True)


def nc1(H: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> float:
    """NC1 = Tr(Sigma_W Sigma_B^+)/K (Papyan's Sigma_B, classes weighted 1/K).

    Args:
        H: (N, d) features; y: (N,) integer labels in 0..K-1.
    Returns:
        NC1 as a non-negative float. For balanced classes it equals D/K, D the separation fuzziness.
    Raises:
        ValueError: bad shapes or labels, NaN/Inf features, coinciding class means
            (see :func:`utils.metrics.within_between_trace`).
    """
    stats = class_stats(H, y, num_classes, min_classes=2)
    C, Zc, _, _ = _centred_residual_projection(stats)
    return _scatter_trace(stats, C, Zc, "uniform") / stats.K


def _offdiag(C: torch.Tensor) -> torch.Tensor:
    K = C.shape[0]
    return C[~torch.eye(K, dtype=torch.bool, device=C.device)]


def _vectors(V, name: str = "V") -> torch.Tensor:
    """V (K, d) with K >= 2 finite rows, as float64."""
    return check_matrix(V, name, min_rows=2).to(torch.float64)


def cosines(V: torch.Tensor) -> torch.Tensor:
    """(K, K) cosine matrix of the rows of V (K, d), float64. Raises ValueError for a zero row."""
    V64 = _vectors(V)
    zero = torch.nonzero(V64.norm(dim=1) == 0).flatten().tolist()
    if zero:
        raise ValueError(f"rows {zero} of V are zero vectors, which have no direction: cosines are undefined")
    return cosine_matrix(V64)


def equinorm(V: torch.Tensor) -> float:
    """Coefficient of variation (std/mean) of the row norms of V (K, d); 0 for equal norms."""
    norms = _vectors(V).norm(dim=1)
    if float(norms.mean()) == 0.0:
        raise ValueError("all rows of V are zero: the coefficient of variation of their norms is undefined")
    return float(norms.std(unbiased=True) / norms.mean())


def equiangularity(V: torch.Tensor) -> float:
    """Standard deviation of the pairwise cosines ``cos(v_k, v_l)``, k != l; 0 for equal angles."""
    return float(_offdiag(cosines(V)).std(unbiased=True))


def max_angle(V: torch.Tensor) -> float:
    """Mean of ``|cos(v_k, v_l) + 1/(K-1)|`` over k != l; 0 for a simplex ETF."""
    C = cosines(V)
    return float((_offdiag(C) + 1.0 / (C.shape[0] - 1)).abs().mean())


def self_duality(W: torch.Tensor, M: torch.Tensor) -> float:
    """NC3: ``|| W/||W||_F - M/||M||_F ||_F`` for W and M both (K, d)."""
    W64, M64 = _vectors(W, "W"), _vectors(M, "M")
    if W64.shape != M64.shape:
        raise ValueError(f"W and M must have the same shape (K, d), got {tuple(W64.shape)} and {tuple(M64.shape)}")
    nW, nM = torch.linalg.matrix_norm(W64), torch.linalg.matrix_norm(M64)
    if nW == 0 or nM == 0:
        raise ValueError("W or M is all zero: self-duality compares directions and is undefined")
    return float(torch.linalg.matrix_norm(W64 / nW - M64 / nM))


def _ncc_from_projection(stats: ClassStats, C: torch.Tensor, Pc: torch.Tensor, logits: torch.Tensor) -> float:
    """Fraction of rows where ``argmax logits`` differs from the nearest class mean, with distances from
    the Gram expansion ``||h - mu_k||^2 = ||h - m||^2 - 2 (h - m).c_k + ||c_k||^2`` (mu_k = m + c_k,
    Pc = H C^T), so no (N, K, d) difference or cdist is formed."""
    m = stats.means.mean(0)
    score = -2.0 * (Pc - m @ C.T) + (C * C).sum(1)                  # ||h - mu_k||^2 - ||h - m||^2
    return float((logits.argmax(1) != score.argmin(1)).to(torch.float64).mean())


def _check_nc_inputs(H, y, W, b, num_classes):
    H, y, K = check_features_labels(H, y, num_classes, min_classes=2)
    W, b = check_classifier(W, b, H.shape[1], K)
    return H, y, K, W, b


def ncc_mismatch(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None,
                 num_classes: int | None = None) -> float:
    """NC4: fraction of samples where the classifier and the nearest class centre disagree.

    Args:
        H: (N, d) features; y: (N,) labels (used only for the class means); W: (K, d); b: (K,) or None.
    Raises:
        ValueError: W or b not matching the features and the K classes of y, NaN/Inf, bad labels.
    """
    H, y, K, W, b = _check_nc_inputs(H, y, W, b, num_classes)
    stats = class_stats(H, y, K, min_classes=2)
    C, _, Pc, logits = _centred_residual_projection(stats, extra=W)
    if b is not None:
        logits = logits + b.to(torch.float64)
    return _ncc_from_projection(stats, C, Pc, logits)


def nc_metrics(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None,
               num_classes: int | None = None) -> dict[str, float]:
    """All neural-collapse measures for features H (N, d), labels y (N,), classifier W (K, d), bias b (K,).

    Returns a dict with ``nc1``, ``fuzziness`` (He & Su's D; = K*NC1 for balanced classes),
    ``equinorm_means``, ``equinorm_classifiers``, ``equiangular_means``, ``equiangular_classifiers``,
    ``maxangle_means``, ``maxangle_classifiers``, ``etf_distance_means``, ``etf_distance_classifiers``,
    ``nc3`` (self-duality) and ``nc4`` (classifier vs nearest class centre).

    The class means are computed once and H is read twice in float64 row chunks (means, then one
    projection onto the centred means and W together); everything else works on K x K or (N, K) arrays.

    Raises:
        ValueError: W (K, d) or b (K,) not matching H (N, d) and the K classes of y, NaN/Inf entries,
            bad labels, coinciding class means.
    """
    H, y, K, W, b = _check_nc_inputs(H, y, W, b, num_classes)
    stats = class_stats(H, y, K, min_classes=2)
    C, Zc, Pc, logits = _centred_residual_projection(stats, extra=W)
    if b is not None:
        logits = logits + b.to(torch.float64)
    M = C  # centred class means, (K, d) float64
    return {
        "nc1": _scatter_trace(stats, C, Zc, "uniform") / K,
        "fuzziness": _scatter_trace(stats, C, Zc, "size"),
        "equinorm_means": equinorm(M), "equinorm_classifiers": equinorm(W),
        "equiangular_means": equiangularity(M), "equiangular_classifiers": equiangularity(W),
        "maxangle_means": max_angle(M), "maxangle_classifiers": max_angle(W),
        "etf_distance_means": etf_distance(M), "etf_distance_classifiers": etf_distance(W),
        "nc3": self_duality(W, M),
        "nc4": _ncc_from_projection(stats, C, Pc, logits),
    }


def last_layer(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, b)`` of ``model.classifier`` (an ``nn.Linear``)."""
    clf = model.classifier
    return clf.weight.detach(), (clf.bias.detach() if clf.bias is not None else None)


def measure_epochs(epochs: int, count: int) -> list[int]:
    """About ``count`` epochs in 1..epochs, log-spaced (dense early, when things change fast), last included."""
    if epochs < 1 or count < 1:
        raise ValueError(f"need epochs >= 1 and count >= 1, got {epochs}, {count}")
    pts = {1, epochs}
    for i in range(count):
        pts.add(int(round(math.exp(math.log(epochs) * i / max(count - 1, 1)))))
    return sorted(p for p in pts if 1 <= p <= epochs)


def nc_callback(X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor | None, y_test: torch.Tensor | None,
                epochs_to_measure: list[int], num_classes: int, snapshot_epochs=()
                ) -> Callable[[int, nn.Module], dict | None]:
    """A ``fit`` callback recording NC1-NC4 and accuracies on fixed sets at the given epochs
    (and, at ``snapshot_epochs``, the projection of :func:`project_to_means_plane`).

    ``X, y``: the fixed training subset the metrics use; ``X_test, y_test``: a test set (or None).
    The model must have ``penultimate(X)`` and a linear ``classifier``.
    """
    wanted = set(epochs_to_measure) | set(snapshot_epochs)
    snapshots = set(snapshot_epochs)

    def callback(epoch: int, model: nn.Module) -> dict | None:
        if epoch not in wanted:
            return None
        H = model.penultimate(X)
        W, b = last_layer(model)
        logits = H @ W.T + (0 if b is None else b)
        record = {"epoch": epoch, "train_accuracy": float((logits.argmax(1) == y).float().mean()),
                  **nc_metrics(H, y, W, b, num_classes)}
        if X_test is not None:
            record["test_accuracy"] = float((model(X_test).argmax(1) == y_test).float().mean())
        if epoch in snapshots:
            feats, means, clf = project_to_means_plane(H, y, W, num_classes)
            record["projection"] = {"features": feats.cpu().tolist(), "labels": y.cpu().tolist(),
                                    "means": means.cpu().tolist(), "classifiers": clf.cpu().tolist()}
        return record

    return callback

# ----------------------------------------------------------------------------- experiment

# The quick profile compresses the terminal phase into 300 epochs on 1000 images by a larger
# weight decay (5e-3 instead of the paper's 5e-4); small matrix products run fastest on one CPU
# thread (``cpu_threads``), which also keeps a shared machine responsive.
QUICK = {"dataset": "fashion-mnist", "arch": "mlp", "per_class": 100, "test_per_class": 100,
         "measure_per_class": None, "resize": None, "width": 256, "layer_num": 2, "epochs": 300,
         "lr": 0.05, "weight_decay": 5e-3, "batch_size": 128, "measurements": 14, "classes": None,
         "cpu_threads": 1}
FULL = {"dataset": "fashion-mnist", "arch": "vgg11", "per_class": None, "test_per_class": 1000,
        "measure_per_class": 1000, "resize": 32, "width": None, "layer_num": None, "epochs": 350,
        "lr": 0.05, "weight_decay": 5e-4, "batch_size": 128, "measurements": 30, "classes": None,
        "cpu_threads": None}
GEOMETRY_CLASSES = (0, 2, 6)  # T-shirt, pullover, shirt (easily confused): drawn in the plane of their means


def config_for(profile: str, **overrides) -> dict:
    """The experiment's settings for ``profile`` (``quick``: MLP on a balanced Fashion-MNIST subset
    on a CPU; ``full``: Papyan et al.'s protocol, VGG-11 at 32x32, SGD momentum 0.9, lr / 10 at
    1/3 and 2/3 of 350 epochs, weight decay 5e-4, batch 128, no augmentation), with overrides."""
    if profile not in ("quick", "full"):
        raise ValueError(f"profile must be 'quick' or 'full', got {profile!r}")
    cfg = dict(QUICK if profile == "quick" else FULL)
    unknown = set(overrides) - set(cfg) - {"seed"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    cfg.update(overrides)
    return cfg


def build_model(cfg: dict, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The network named by ``cfg["arch"]``: ``mlp`` (FeatureMLP), ``small_cnn``, ``vgg11`` or ``resnet18``."""
    if cfg["arch"] == "mlp":
        from .models import FeatureMLP
        return FeatureMLP(in_channels * image_size ** 2, cfg["width"], cfg["layer_num"], num_classes)
    from .convnets import build
    kwargs = {"image_size": image_size, "width": cfg["width"]} if cfg["arch"] == "small_cnn" else {}
    return build(cfg["arch"], in_channels, num_classes, **kwargs)


def train_and_track(cfg: dict, device: torch.device, seed: int = 0, progress: bool = True,
                    snapshot_epochs: tuple[int, ...] = ()) -> dict:
    """Train ``cfg``'s network past zero training error, recording NC metrics along the way.

    Returns ``{"config", "history": [per-measurement dicts], "train_loss": [per epoch],
    "final": {"means": (K, d), "W": (K, d), "b": (K,)} as lists, "tpt_epoch"}``, where
    ``tpt_epoch`` is the first measured epoch with 100 % training accuracy (None if never).
    At ``snapshot_epochs`` the record also holds ``projection``: the features, means and
    classifiers in the span of the centred means (:func:`project_to_means_plane`; for K <= 4).
    """
    with torch_threads(cfg.get("cpu_threads"), device):
        return _train_and_track(cfg, device, seed, progress, snapshot_epochs)


def _train_and_track(cfg: dict, device: torch.device, seed: int, progress: bool,
                     snapshot_epochs: tuple[int, ...]) -> dict:
    from .data import load_dataset
    from .train import fit

    X, y = load_dataset(cfg["dataset"], train=True, device=device, resize=cfg["resize"],
                        per_class=cfg["per_class"], classes=cfg["classes"], seed=seed)
    Xt, yt = load_dataset(cfg["dataset"], train=False, device=device, resize=cfg["resize"],
                          per_class=cfg["test_per_class"], classes=cfg["classes"], seed=seed)
    K = int(y.max()) + 1
    mpc = cfg.get("measure_per_class")
    if mpc is not None:  # a fixed, balanced training subset for the metrics
        g = torch.Generator().manual_seed(seed + 1)
        idx = torch.cat([torch.nonzero(y.cpu() == k).flatten()[torch.randperm(int((y == k).sum()), generator=g)[:mpc]]
                         for k in range(K)]).to(device)
        Xm, ym = X[idx], y[idx]
    else:
        Xm, ym = X, y
    torch.manual_seed(seed)
    model = build_model(cfg, X.shape[1], X.shape[-1], K).to(device)
    epochs = cfg["epochs"]
    when = sorted(set(measure_epochs(epochs, cfg["measurements"])) | set(snapshot_epochs))
    callback = nc_callback(Xm, ym, Xt, yt, when, K, snapshot_epochs)
    history = fit(model, X, y, epochs, optimizer="momentum", lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                  milestones=[epochs // 3, 2 * epochs // 3], gamma=0.1, batch_size=cfg["batch_size"],
                  seed=seed, progress=progress, callback=callback, desc="neural collapse")
    records = [r for r in history.extra if r]
    H = model.penultimate(Xm)
    W, b = last_layer(model)
    tpt = next((r["epoch"] for r in records if r["train_accuracy"] >= 1.0), None)
    return {"config": cfg, "num_classes": K, "history": records, "train_loss": history.loss,
            "lr": history.lr, "tpt_epoch": tpt,
            "final": {"means": class_means(H, ym, K)[0].cpu(), "W": W.cpu(), "b": None if b is None else b.cpu()}}


def project_to_means_plane(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor, num_classes: int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinates, in an orthonormal basis of the span of the centred class means, of the centred
    features, the centred means and the classifiers (for a 2-D view when K = 3, 3-D when K = 4).

    Returns ``(features (N, K-1), means (K, K-1), classifiers (K, K-1))`` in float64.
    """
    means, _ = class_means(H, y, num_classes)
    mu_G = means.mean(0, keepdim=True)
    M = means - mu_G
    K = M.shape[0]
    basis = torch.linalg.svd(M, full_matrices=False).Vh[:K - 1]  # (K-1, d)
    return (H.to(torch.float64) - mu_G) @ basis.T, M @ basis.T, W.to(torch.float64) @ basis.T


def geometry_run(device: torch.device, classes: tuple[int, ...] = GEOMETRY_CLASSES, seed: int = 0,
                 progress: bool = True, **overrides) -> dict:
    """The quick MLP on a 3- or 4-class subset, with the features, class means and classifiers
    projected onto the span of the centred means at epochs 1, 10 and the last (a 2-D view for K=3)."""
    if not 3 <= len(classes) <= 4:
        raise ValueError(f"the geometry view needs 3 or 4 classes, got {list(classes)}")
    cfg = config_for("quick", **({"classes": list(classes), "test_per_class": 100, "measurements": 8} | overrides))
    snaps = tuple(sorted({1, min(10, cfg["epochs"]), cfg["epochs"]}))
    out = train_and_track(cfg, device, seed=seed, progress=progress, snapshot_epochs=snaps)
    out["snapshots"] = [r for r in out["history"] if "projection" in r]
    out["history"] = [{k: v for k, v in r.items() if k != "projection"} for r in out["history"]]
    return out


def summarise(history: list[dict]) -> dict:
    """First-to-last ratios of the NC measures (``first / last``), the numbers the chapter quotes."""
    first, last = history[0], history[-1]
    keys = ("nc1", "equiangular_means", "equiangular_classifiers", "maxangle_means", "maxangle_classifiers",
            "nc3", "etf_distance_means")
    return {f"{k}_drop": first[k] / max(last[k], 1e-300) for k in keys} | {
        "first_epoch": first["epoch"], "last_epoch": last["epoch"],
        "final_train_accuracy": last["train_accuracy"], "final_test_accuracy": last.get("test_accuracy"),
        "final_nc4": last["nc4"]}


def run(profile: str, device: torch.device, progress: bool = True, **overrides) -> dict:
    """The chapter's experiment (``python -m utils.reproduce neural_collapse``).

    Returns ``{"runs": [one row per measured epoch], "summary", "config", "tpt_epoch", "train_loss",
    "lr", "final": {"means", "W", "b"}, "geometry": {"classes", "snapshots", "history"}}``. The
    3-class geometry view always uses the quick MLP (it is an illustration, not a measurement).
    """
    seed = overrides.pop("seed", 0)
    cfg = config_for(profile, **overrides)
    out = train_and_track(cfg, device, seed=seed, progress=progress)
    geo = geometry_run(device, seed=seed, progress=progress)
    return {"runs": out["history"], "summary": summarise(out["history"]), "config": cfg,
            "tpt_epoch": out["tpt_epoch"], "train_loss": out["train_loss"], "lr": out["lr"],
            "final": {k: v for k, v in out["final"].items() if v is not None},
            "geometry": {"classes": list(GEOMETRY_CLASSES), "snapshots": geo["snapshots"],
                         "history": geo["history"], "tpt_epoch": geo["tpt_epoch"]}}
