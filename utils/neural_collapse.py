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


def measurement_grid(epochs: int, count: int, milestones: Sequence[int] = (), window: int = 0) -> list[int]:
    """:func:`measure_epochs` plus every epoch from ``m - 3`` to ``m + window`` around each
    learning-rate decay ``m`` (the lr falls after epoch ``m``), so the response to a decay is resolved."""
    if window < 0:
        raise ValueError(f"window must be >= 0 epochs, got {window}")
    pts = set(measure_epochs(epochs, count))
    if window:
        for m in milestones:
            pts.update(range(max(1, m - 3), min(epochs, m + window) + 1))
    return sorted(pts)


def out_of_span_fraction(W: torch.Tensor, M: torch.Tensor) -> float:
    """Fraction of ``||W||_F^2`` outside the row span of M.

    Args:
        W: (K, d) classifier rows; M: (K, d) centred class means (rank <= K-1).
    Returns:
        ``||W - W P||_F^2 / ||W||_F^2`` in [0, 1], P the orthogonal projector onto span(rows of M).
        0 when every classifier lies in the plane (K=3) or space of the means, as NC3 requires.
    """
    if W.shape != M.shape:
        raise ValueError(f"W and M must have the same shape (K, d), got {tuple(W.shape)} and {tuple(M.shape)}")
    W64, M64 = W.to(torch.float64), M.to(torch.float64)
    U, S, Vh = torch.linalg.svd(M64, full_matrices=False)
    basis = Vh[S > S.max() * 1e-10]
    inside = W64 @ basis.T
    total = float((W64 ** 2).sum())
    if total == 0:
        raise ValueError("W is zero: the fraction outside the span is undefined")
    return max(0.0, 1.0 - float((inside ** 2).sum()) / total)


def project_to_means_plane(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor, num_classes: int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coordinates, in an orthonormal basis of the span of the centred class means, of the centred
    features, the centred means and the classifiers (for a 2-D view when K = 3, 3-D when K = 4).

    Returns ``(features (N, K-1), means (K, K-1), classifiers (K, K-1))`` in float64. The part of
    W outside this span is dropped: :func:`out_of_span_fraction` says how much of ``||W||^2`` that is.
    """
    means, _ = class_means(H, y, num_classes)
    mu_G = means.mean(0, keepdim=True)
    M = means - mu_G
    K = M.shape[0]
    basis = torch.linalg.svd(M, full_matrices=False).Vh[:K - 1]  # (K-1, d)
    return (H.to(torch.float64) - mu_G) @ basis.T, M @ basis.T, W.to(torch.float64) @ basis.T


def _rounded(T: torch.Tensor, digits: int = 4) -> list:
    return torch.round(T.to(torch.float64).cpu(), decimals=digits).tolist()


def nc_callback(X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor | None, y_test: torch.Tensor | None,
                epochs_to_measure: list[int], num_classes: int, snapshot_epochs=(), cosines: bool = False
                ) -> Callable[[int, nn.Module], dict | None]:
    """A ``fit`` callback recording NC1-NC4 and accuracies on fixed sets at the given epochs.

    ``X, y``: the fixed training set the metrics use; ``X_test, y_test``: a test set (or None).
    The model must have ``penultimate(X)`` and a linear ``classifier``. With ``cosines=True`` each
    record also holds the (K, K) cosine matrices of the centred means (``cos_means``), of the
    classifiers (``cos_classifiers``), between them (``cos_cross[i][j] = cos(w_i, mu_j - mu_G)``),
    ``mean_cos_means`` (mean off-diagonal cosine) and ``out_of_span`` (:func:`out_of_span_fraction`).
    At ``snapshot_epochs`` it holds ``projection``: the view of :func:`project_to_means_plane`.
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
            record["test_accuracy"] = float(torch.cat([model(X_test[s:s + 2048]).argmax(1) for s in
                                                       range(0, X_test.shape[0], 2048)]).eq(y_test).float().mean())
        if cosines:
            M = centred_class_means(H, y, num_classes)
            cos_m = cosine_matrix(M)
            Wn = W.to(torch.float64) / W.to(torch.float64).norm(dim=1, keepdim=True)
            Mn = M / M.norm(dim=1, keepdim=True)
            record.update({"cos_means": _rounded(cos_m), "cos_classifiers": _rounded(cosine_matrix(W)),
                           "cos_cross": _rounded(Wn @ Mn.T), "mean_cos_means": mean_off_diagonal(cos_m),
                           "out_of_span": out_of_span_fraction(W, M)})
        if epoch in snapshots:
            feats, means, clf = project_to_means_plane(H, y, W, num_classes)
            record["projection"] = {"features": _rounded(feats, 3), "labels": y.cpu().tolist(),
                                    "means": _rounded(means), "classifiers": _rounded(clf)}
        return record

    return callback

# ----------------------------------------------------------------------------- experiment
import dataclasses  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Mapping, Sequence  # noqa: E402

from .claims import Claim  # noqa: E402
from .experiment import JsonResult, check_profile  # noqa: E402
from .metrics import mean_off_diagonal  # noqa: E402

EXPERIMENT = "neural_collapse"
FASHION_CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
GEOMETRY_CLASSES = (0, 2, 6)  # T-shirt, pullover, shirt (easily confused): drawn in the plane of their means
PAPER_WEIGHT_DECAY = 5e-4
# Time models for expected_seconds: effective FLOP/s of training (forward + backward = 3 forward
# passes, 2 FLOPs per multiply-accumulate) and a fixed cost per optimiser step, measured on one
# CPU thread of this project's machines and estimated for a T4 (fp32, cuDNN).
_CPU_FLOPS = {"mlp": 3e10, "conv": 1.4e10}
_GPU_FLOPS = 4e12
_STEP_SECONDS = {"cpu": 2e-3, "gpu": 1e-3}


@dataclass(frozen=True)
class NetworkSpec:
    """One training run: a network, its data and the paper's schedule shape.

    ``arch``: ``mlp`` (:class:`utils.models.FeatureMLP`, ``width`` x ``layer_num`` hidden blocks),
    ``small_cnn`` (``channels``, ``width``), ``vgg11`` or ``resnet18`` (:mod:`utils.convnets`).
    ``per_class``/``test_per_class``: images per class (None: all); ``resize``: side length (None:
    28); the lr is divided by 10 after epochs/3 and 2*epochs/3 (SGD, momentum 0.9, batch
    ``batch_size``); metrics at about ``measurements`` log-spaced epochs, plus every epoch in a
    ``dense_window`` after each decay, on all training images; ``classes``: a subset of labels;
    ``snapshots``: also store the plane view (K = 3) at each measured epoch.
    """

    name: str
    arch: str
    epochs: int
    lr: float
    weight_decay: float
    per_class: int | None = 100
    test_per_class: int | None = 100
    resize: int | None = None
    width: int = 256
    layer_num: int = 2
    channels: tuple[int, int] = (16, 32)
    batch_size: int = 128
    measurements: int = 14
    dense_window: int = 0
    classes: tuple[int, ...] | None = None
    snapshots: bool = False

    @property
    def kind(self) -> str:
        return "mlp" if self.arch == "mlp" else "conv"

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 10

    @property
    def milestones(self) -> list[int]:
        return [self.epochs // 3, 2 * self.epochs // 3]

    @property
    def image_size(self) -> int:
        return self.resize or 28

    def train_size(self) -> int:
        return self.num_classes * (self.per_class or 6000)

    def test_size(self) -> int:
        return self.num_classes * (self.test_per_class or 1000)

    def build(self) -> nn.Module:
        """The untrained network (seed the global RNG first)."""
        if self.arch == "mlp":
            from .models import FeatureMLP
            return FeatureMLP(self.image_size ** 2, self.width, self.layer_num, self.num_classes)
        from .convnets import build
        kwargs = ({"image_size": self.image_size, "width": self.width, "channels": self.channels}
                  if self.arch == "small_cnn" else {})
        return build(self.arch, 1, self.num_classes, **kwargs)

    def cost(self) -> dict[str, int]:
        from .convnets import cost_per_image
        return cost_per_image(self.build(), (1, self.image_size, self.image_size))


QUICK_MLP = NetworkSpec("mlp", "mlp", epochs=300, lr=0.05, weight_decay=5e-3, per_class=100, dense_window=10)
QUICK_CNN = NetworkSpec("small_cnn", "small_cnn", epochs=150, lr=0.1, weight_decay=5e-3, per_class=50,
                        width=128, channels=(16, 32))
FULL_VGG = NetworkSpec("vgg11", "vgg11", epochs=350, lr=0.05, weight_decay=PAPER_WEIGHT_DECAY, per_class=400,
                       test_per_class=200, resize=32, measurements=20, dense_window=5)
PAPER_NETS = tuple(NetworkSpec(a, a, epochs=350, lr=0.05, weight_decay=PAPER_WEIGHT_DECAY, per_class=None,
                               test_per_class=None, resize=32, measurements=30, dense_window=5)
                   for a in ("vgg11", "resnet18"))


def _geometry(head: NetworkSpec) -> NetworkSpec:
    """The quick MLP on three confusable classes, on the headline run's epoch grid, with snapshots."""
    return dataclasses.replace(QUICK_MLP, name="geometry_mlp", classes=GEOMETRY_CLASSES, epochs=head.epochs,
                               measurements=head.measurements, dense_window=0, snapshots=True)


def _smoke(spec: NetworkSpec) -> NetworkSpec:
    small = {"per_class": 2, "test_per_class": 2, "epochs": 2, "measurements": 2, "batch_size": 8,
             "dense_window": min(spec.dense_window, 1)}
    if spec.arch in ("mlp", "small_cnn"):
        small |= {"width": 16, "channels": (4, 8)}
    if spec.arch == "resnet18":  # all-convolutional: runs at 16x16 too (VGG-11's five poolings need 32)
        small |= {"resize": 16}
    return dataclasses.replace(spec, **small)


@dataclass(frozen=True)
class Config:
    """The neural-collapse experiment of one profile.

    ``networks``: the runs whose measurements the claims check (the first is the headline run);
    ``geometry``: the three-class MLP drawn in the plane of its class means; ``cpu_threads``:
    torch threads on a CPU (1: small matrix products run fastest single-threaded);
    ``checkpoint``: save and resume every run (``paper``).
    """

    profile: str
    networks: tuple[NetworkSpec, ...]
    geometry: NetworkSpec
    seed: int = 0
    cpu_threads: int | None = 1
    checkpoint: bool = False
    smoke: bool = False

    @classmethod
    def for_profile(cls, profile: str, smoke: bool = False) -> "Config":
        """``quick``: the MLP (weight decay 5e-3, 10x the paper's) and a small CNN (5e-3) on
        Fashion-MNIST subsets, on one CPU thread; ``full``: VGG-11 at 32x32 on 400 images per class
        with the paper's schedule and weight decay, plus the quick MLP; ``paper``: VGG-11 and
        ResNet-18 on the whole training set, the paper's protocol, checkpointed."""
        check_profile(profile)
        if profile == "quick":
            nets, threads = (QUICK_MLP, QUICK_CNN), 1
        elif profile == "full":
            nets, threads = (FULL_VGG, QUICK_MLP), None
        else:
            nets, threads = PAPER_NETS, None
        geo = _geometry(nets[0])
        if smoke:
            nets, geo = tuple(_smoke(s) for s in nets), _smoke(geo)
        return cls(profile, nets, geo, cpu_threads=threads, checkpoint=profile == "paper", smoke=smoke)

    def specs(self) -> tuple[NetworkSpec, ...]:
        return (*self.networks, self.geometry)

    def peak_memory_bytes(self) -> int:
        """Largest run: parameters x 4 (weights, gradients, momentum, CUDA-graph copies), saved
        activations of a batch (forward and backward), an evaluation chunk of 2048 images, the
        data on the device and the float64 features of the metrics; times 1.5 for slack."""
        peaks = []
        for s in self.specs():
            c = s.cost()
            pixels = s.image_size ** 2
            n_train, n_test = s.train_size(), s.test_size()
            d = 512 if s.arch in ("vgg11", "resnet18") else s.width
            b = 4 * (4 * c["parameters"] + 2 * s.batch_size * c["activations"]
                     + 3 * min(2048, n_train) * c["largest"] + (n_train + n_test) * pixels) \
                + 8 * 4 * n_train * d + 8 * n_train * s.num_classes
            peaks.append(int(1.5 * b))
        return max(peaks)

    def expected_seconds(self) -> float:
        """Training FLOPs / effective FLOP/s + a cost per step + the measurements (forward only),
        on the profile's machine (quick: one CPU thread; full and paper: one T4-class GPU)."""
        total = 0.0
        for s in self.specs():
            macs = s.cost()["macs"]
            on_gpu = self.profile != "quick" and not self.smoke
            rate = _GPU_FLOPS if on_gpu else _CPU_FLOPS[s.kind]
            steps = s.epochs * math.ceil(s.train_size() / s.batch_size)
            n_meas = len(measurement_grid(s.epochs, s.measurements, s.milestones, s.dense_window))
            flops = 6 * macs * s.train_size() * s.epochs + 2 * macs * (s.train_size() + s.test_size()) * n_meas
            total += flops / rate + steps * _STEP_SECONDS["gpu" if on_gpu else "cpu"]
        return total


@dataclass
class Result(JsonResult):
    """``config``: the Config as a dict; ``runs``: one dict per network of ``config.networks``
    (see :func:`train_network`); ``geometry``: the three-class run, with plane snapshots."""

    config: dict
    runs: list
    geometry: dict


def train_network(spec: NetworkSpec, device: torch.device, seed: int = 0, progress: bool = True,
                  checkpoint=None, checkpoint_key: str | None = None) -> dict:
    """Train ``spec``'s network past zero training error, measuring NC1-NC4 along the way.

    Returns a JSON-ready dict: ``name``, ``arch``, ``kind`` (mlp/conv), ``spec``, ``num_classes``,
    ``train_size``, ``milestones``, ``history`` (one record per measured epoch, see
    :func:`nc_callback`; metrics on all training images), ``train_loss`` and ``lr`` per epoch and
    ``tpt_epoch``, the first measured epoch with 100 % training accuracy (None if never).
    """
    from .data import load_dataset
    from .experiment import jsonable
    from .train import fit

    X, y = load_dataset("fashion-mnist", train=True, device=device, resize=spec.resize,
                        per_class=spec.per_class, classes=spec.classes, seed=seed)
    Xt, yt = load_dataset("fashion-mnist", train=False, device=device, resize=spec.resize,
                          per_class=spec.test_per_class, classes=spec.classes, seed=seed)
    K = spec.num_classes
    torch.manual_seed(seed)
    model = spec.build().to(device)
    when = measurement_grid(spec.epochs, spec.measurements, spec.milestones, spec.dense_window)
    callback = nc_callback(X, y, Xt, yt, when, K, snapshot_epochs=when if spec.snapshots else (), cosines=True)
    key = checkpoint_key or f"{spec.name}_seed{seed}"
    history = fit(model, X, y, spec.epochs, optimizer="momentum", lr=spec.lr, weight_decay=spec.weight_decay,
                  milestones=spec.milestones, gamma=0.1, batch_size=spec.batch_size, seed=seed,
                  progress=progress, callback=callback, desc=f"neural collapse: {spec.name}",
                  checkpoint=checkpoint, checkpoint_key=key)
    records = [r for r in history.extra if r]
    tpt = next((r["epoch"] for r in records if r["train_accuracy"] >= 1.0), None)
    return jsonable({"name": spec.name, "arch": spec.arch, "kind": spec.kind, "spec": spec,
                     "num_classes": K, "train_size": int(X.shape[0]), "milestones": spec.milestones,
                     "history": records, "train_loss": history.loss, "lr": history.lr, "tpt_epoch": tpt})


def run(config: Config, device: torch.device, progress: bool = True) -> Result:
    """Train every network of ``config`` (and the three-class geometry run); ``paper`` runs are
    checkpointed per network, so re-running the same command resumes."""
    import hashlib
    from .checkpoint import Checkpoint
    folder = config.profile + ("_smoke" if config.smoke else "")  # smoke rows never stand in for real ones
    ck = Checkpoint.for_experiment(EXPERIMENT, folder) if config.checkpoint else None
    out = []
    with torch_threads(config.cpu_threads, device):
        for spec in config.specs():
            # the key names the exact settings, so a changed spec is trained afresh, not read back
            key = f"{spec.name}_seed{config.seed}_{hashlib.sha1(repr(spec).encode()).hexdigest()[:10]}"
            row = ck.done(key) if ck is not None else None
            if row is None:
                row = train_network(spec, device, config.seed, progress, checkpoint=ck, checkpoint_key=key)
                if ck is not None:
                    ck.record(key, row)
            out.append(row)
    from .experiment import jsonable
    return Result(config=jsonable(config), runs=out[:-1], geometry=out[-1])


# ----------------------------------------------------------------------------- summaries


def nc1_ratio(run: Mapping[str, Any]) -> float:
    """NC1 at the last measured epoch / NC1 at the first (inf when the first is 0)."""
    first, last = run["history"][0]["nc1"], run["history"][-1]["nc1"]
    return last / first if first > 0 else math.inf


def etf_gap(run: Mapping[str, Any]) -> float:
    """Mean off-diagonal cosine of the centred class means at the last measured epoch + 1/(K-1)
    (0 for a simplex ETF; equal norms alone also give 0, because the centred means sum to zero)."""
    return run["history"][-1]["mean_cos_means"] + 1.0 / (run["num_classes"] - 1)


def decay_response(run: Mapping[str, Any], before: int = 3, after: int = 3) -> list[dict]:
    """For each lr decay m (lr / 10 after epoch m), the change of log10 NC1 per epoch over the
    ``before`` epochs up to m, the first ``after`` epochs after it, and the rest of the densely
    measured window. Needs every epoch from m - before to the window's end measured."""
    hist = {r["epoch"]: r["nc1"] for r in run["history"]}
    rows = []
    for m in run["milestones"]:
        dense = [e for e in range(m - before, m + 200) if e in hist]
        end = next((e for e in range(m - before, m + 200) if e not in hist), m + 200) - 1
        if m - before not in hist or m + after not in hist or end <= m + after:
            continue
        rate = lambda a, b: (math.log10(hist[b]) - math.log10(hist[a])) / (b - a)  # noqa: E731
        rows.append({"milestone": m, "before": rate(m - before, m), "right_after": rate(m, m + after),
                     "later": rate(m + after, end), "window_end": end, "points": len(dense)})
    return rows


def summary_rows(result: Mapping[str, Any]) -> list[dict]:
    """One row per network: NC1 first/last, their ratio, the NC2-NC4 measures at the end."""
    rows = []
    for r in result["runs"]:
        first, last = r["history"][0], r["history"][-1]
        rows.append({"network": r["name"], "images": r["train_size"], "wd": r["spec"]["weight_decay"],
                     "tpt": r["tpt_epoch"], "first": first["epoch"], "last": last["epoch"],
                     "nc1_first": first["nc1"], "nc1_last": last["nc1"], "ratio": nc1_ratio(r),
                     "mean_cos": last["mean_cos_means"], "etf": -1 / (r["num_classes"] - 1),
                     "equiang": last["equiangular_means"], "maxangle": last["maxangle_means"],
                     "nc3": last["nc3"], "nc4": last["nc4"], "train_acc": last["train_accuracy"],
                     "test_acc": last.get("test_accuracy")})
    return rows


SUMMARY_COLUMNS = {"network": "network", "images": "training images", "wd": "weight decay",
                   "tpt": "first epoch at 100 % train acc.", "nc1_first": "NC1 first", "nc1_last": "NC1 last",
                   "ratio": "NC1 last / first", "mean_cos": "mean cos of means", "etf": "ETF: -1/(K-1)",
                   "equiang": "std of cosines (NC2)", "nc3": "NC3", "nc4": "NC4 mismatch",
                   "test_acc": "test acc."}


# ----------------------------------------------------------------------------- claims


def nc1_tpt_ratio(run: Mapping[str, Any]) -> float:
    """NC1 at the last measured epoch / NC1 at the first measured epoch of the terminal phase (the
    first epoch with training accuracy 1); inf when the run never reached it or that NC1 is 0."""
    tpt = run.get("tpt_epoch")
    start = next((r["nc1"] for r in run["history"] if tpt is not None and r["epoch"] >= tpt), None)
    return run["history"][-1]["nc1"] / start if start else math.inf


def equiangularity_ratio(run: Mapping[str, Any]) -> float:
    """Std of the centred means' pairwise cosines at the last measured epoch / at the first."""
    first, last = run["history"][0]["equiangular_means"], run["history"][-1]["equiangular_means"]
    return last / first if first > 0 else math.inf


def _per_run(runs: Sequence[Mapping[str, Any]], measures: Mapping[str, Callable[[Mapping], float]]
             ) -> dict[str, float]:
    """``{"<run name>: <measure name>": value}`` for every run and measure, runs first."""
    return {f"{r['name']}: {name}": fn(r) for r in runs for name, fn in measures.items()}


def _nc1_measures(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return _per_run(runs, {"whole run": nc1_ratio, "terminal phase": nc1_tpt_ratio})


def _nc1_holds(measured: Mapping[str, float]) -> bool:
    """Whole-run ratio <= 1e-2 and terminal-phase ratio <= 1e-1 for every network measured."""
    return bool(measured) and all(v <= (1e-2 if k.endswith("whole run") else 1e-1) for k, v in measured.items())


def _etf_measures(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return _per_run(runs, {"mean-cosine gap": etf_gap, "equiangularity last/first": equiangularity_ratio})


def _etf_holds(measured: Mapping[str, float]) -> bool:
    """|mean cosine + 1/(K-1)| <= 0.03 and std of the cosines down at least 5-fold, every network."""
    return bool(measured) and all(abs(v) <= 0.03 if k.endswith("gap") else v <= 0.2 for k, v in measured.items())


def _by_kind(results: Mapping[str, Any], kind: str) -> list[dict]:
    return [r for r in results["runs"] if r["kind"] == kind]


def _all_within(limit: float, absolute: bool = False):
    def holds(measured: Mapping[str, float]) -> bool:
        return bool(measured) and all((abs(v) if absolute else v) <= limit for v in measured.values())
    return holds


CLAIMS = [
    Claim(id="nc.nc1", chapter=EXPERIMENT,
          statement="The within-class variability NC1 of an MLP's penultimate features falls by orders of magnitude "
                    "during training and keeps falling through the terminal phase, after the training error is 0.",
          source="Papyan, Han & Donoho (2020), Fig. 6",
          paper_value="Tr(Σ_W Σ_B⁺)/C decreases towards zero through the terminal phase (log scale), "
                      "for every network and dataset",
          criterion="MLP: NC1(last) ≤ 1e-2 × NC1(first measured epoch), and NC1(last) ≤ 1e-1 × NC1(first epoch of "
                    "the terminal phase)",
          check=lambda res: _nc1_measures([r for r in res["runs"] if r["name"] == "mlp"]),
          holds=_nc1_holds, profiles=("quick", "full"), fails_in=("full",),
          reason="for the MLP (100 images per class, 300 epochs, weight decay 5e-3; the full run) NC1 falls 350-fold "
                 "over the run, but not through the terminal phase: the training accuracy was first measured at 1 at "
                 "epoch 80, with NC1 already at 0.008; the network then lost it again (0.85-0.95 at epochs 97-100, NC1 back "
                 "up to 0.27) and regained it only at epoch 106, five epochs after the first learning-rate decay; NC1 "
                 "ended at 0.94 times its epoch-80 value "
                 "(0.14 times its value at epoch 106, from which the training accuracy stays 1)."),
    Claim(id="nc.nc1_conv", chapter=EXPERIMENT,
          statement="The same collapse of NC1 happens in convolutional networks, where the paper observed it.",
          source="Papyan, Han & Donoho (2020), Fig. 6 (VGG, ResNet, DenseNet)",
          paper_value="Tr(Σ_W Σ_B⁺)/C decreases towards zero through the terminal phase (log scale) for "
                      "VGG, ResNet and DenseNet on seven datasets",
          criterion="for every convolutional network of the run: NC1(last) ≤ 1e-2 × NC1(first measured epoch) and "
                    "≤ 1e-1 × NC1(first epoch of the terminal phase)",
          check=lambda res: _nc1_measures(_by_kind(res, "conv")),
          holds=_nc1_holds, fails_in=("full",),
          reason="VGG-11 on 400 images per class for 350 epochs (the full run): NC1 falls 515-fold over the "
                 "run, but the training accuracy is first measured at 1 at epoch 113 (0.991 at epoch 102), three "
                 "epochs before the first learning-rate decay; from there NC1 goes from 0.082 to 0.057 in the remaining "
                 "237 epochs (0.69 times; 0.075 to 0.057 once the rate is divided), not the tenfold fall the "
                 "criterion asks."),
    Claim(id="nc.etf", chapter=EXPERIMENT,
          statement="The centred class means approach a simplex ETF: their pairwise cosines average -1/(K-1) and "
                    "their spread around that value shrinks.",
          source="Papyan, Han & Donoho (2020), Figs. 3-4 (equiangularity and maximal angle)",
          paper_value="std of the cosines between centred means → 0 and their average → -1/(C-1) in the terminal phase",
          criterion="every network: |mean off-diagonal cosine + 1/(K-1)| ≤ 0.03 at the end, and the std of the "
                    "cosines at the end ≤ 0.2 × its value at the first measured epoch",
          check=lambda res: _etf_measures(res["runs"]),
          holds=_etf_holds),
    Claim(id="nc.ncc", chapter=EXPERIMENT,
          statement="The classifier's decision becomes the nearest-class-centre rule (NC4).",
          source="Papyan, Han & Donoho (2020), Fig. 7",
          paper_value="mismatch between the network and the nearest-class-centre rule → 0 in the terminal phase",
          criterion="fraction of training images where argmax(Wh+b) ≠ nearest class mean ≤ 0.01 at the end, "
                    "every network",
          check=lambda res: {r["name"]: r["history"][-1]["nc4"] for r in res["runs"]},
          holds=_all_within(0.01)),
]


# ----------------------------------------------------------------------------- figures


def _class_labels(run: Mapping[str, Any]) -> list[str]:
    classes = run["spec"].get("classes") or list(range(run["num_classes"]))
    return [FASHION_CLASSES[c] for c in classes]


def plot_history(run: Mapping[str, Any], title: str = ""):
    """NC1-NC4 and the accuracies against the epoch (log-log), terminal phase shaded, lr decays dotted.

    Args:
        run: one entry of ``Result.runs`` (or ``Result.geometry``).
    """
    import numpy as np
    from .plotting import PALETTE, label, subplots
    hist = run["history"]
    ep = np.array([r["epoch"] for r in hist])
    fig, axes = subplots(3, 2, width=8.5, height=9.0)
    panels = [
        ("accuracy", [("train_accuracy", "train"), ("test_accuracy", "test")], "accuracy (fraction)", False),
        ("NC1: within-class variability", [("nc1", "Tr(Σ_W Σ_B⁺)/K")], "NC1 (unitless, log)", True),
        ("NC2: equinorm", [("equinorm_means", "class means"), ("equinorm_classifiers", "classifiers")],
         "std/mean of norms (log)", True),
        ("NC2: equiangularity", [("equiangular_means", "class means"), ("equiangular_classifiers", "classifiers")],
         "std of cosines (log)", True),
        ("NC2: maximal angle", [("maxangle_means", "class means"), ("maxangle_classifiers", "classifiers")],
         "mean |cos + 1/(K-1)| (log)", True),
        ("NC3 and NC4", [("nc3", "NC3 self-duality"), ("nc4", "NC4 mismatch")], "value (unitless, log)", True),
    ]
    for ax, (name, series, ylab, logy) in zip(axes.flat, panels):
        for i, (key, legend) in enumerate(series):
            if key not in hist[0]:
                continue
            vals = np.array([r[key] for r in hist], dtype=float)
            if logy:
                vals = np.where(vals > 0, vals, np.nan)  # a zero (e.g. NC4) cannot be drawn on a log scale
            ax.plot(ep, vals, "o-", ms=2.5, color=PALETTE[i], label=legend)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if run["tpt_epoch"] is not None:
            ax.axvspan(run["tpt_epoch"], ep.max(), color="0.85", alpha=0.5, lw=0, label="terminal phase")
        for m in run["milestones"]:
            ax.axvline(m, color="0.4", ls=":", lw=1)
        label(ax, "epoch (log scale)", ylab, name)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_decays(run: Mapping[str, Any]):
    """NC1 at every epoch around each learning-rate decay (linear epoch axis, log NC1)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    from .plotting import PALETTE, label, subplots
    rows = decay_response(run)
    hist = {r["epoch"]: r["nc1"] for r in run["history"]}
    fig, axes = subplots(1, max(len(rows), 1), width=8.5, height=3.4)
    for ax, row in zip(axes[0], rows):
        m = row["milestone"]
        ep = np.array([e for e in range(m - 3, row["window_end"] + 1)])
        ax.plot(ep, [hist[e] for e in ep], "o-", ms=3, color=PALETTE[0], label="NC1")
        ax.axvline(m + 0.5, color="0.4", ls=":", lw=1, label="lr ÷ 10")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        label(ax, "epoch", "NC1 (unitless, log)", f"learning rate ÷ 10 after epoch {m}")
        ax.legend(loc="best", fontsize=8)
    return fig


def _heatmap(fig, ax, C, title: str, ticklabels: Sequence[str], xlabel: str, ylabel: str, colorbar: bool = True):
    im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.grid(False)
    ticks = list(range(len(ticklabels)))
    ax.set_xticks(ticks, ticklabels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, ticklabels, fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    if colorbar:
        fig.colorbar(im, ax=ax, shrink=0.8).set_label("cosine")
    return im


def plot_cosines(run: Mapping[str, Any], index: int = -1):
    """Cosine matrices at one measured epoch: centred class means, classifiers, the simplex ETF and
    cos(w_i, mu_j - mu_G), each with a labelled colour bar."""
    from .etf import etf_gram
    from .plotting import subplots
    rec = run["history"][index]
    names = _class_labels(run)
    K = run["num_classes"]
    fig, axes = subplots(2, 2, width=8.0, height=7.4)
    _heatmap(fig, axes[0, 0], rec["cos_means"], "centred class means", names, "class j", "class i")
    _heatmap(fig, axes[0, 1], rec["cos_classifiers"], "classifiers $w_k$", names, "class j", "class i")
    _heatmap(fig, axes[1, 0], etf_gram(K).numpy(), "simplex ETF", names,
             "class j", "class i")
    _heatmap(fig, axes[1, 1], rec["cos_cross"], "cos($w_i$, $\\mu_j-\\mu_G$) (NC3: diag. 1)", names,
             "class mean j", "classifier i")
    fig.suptitle(f"{run['name']}, epoch {rec['epoch']}")
    return fig


def _plane(ax, rec: Mapping[str, Any], names: Sequence[str], legend: bool = True) -> None:
    import numpy as np
    from .plotting import PALETTE
    P = rec["projection"]
    F, y3 = np.asarray(P["features"]), np.asarray(P["labels"])
    Mp, Wp = np.asarray(P["means"]), np.asarray(P["classifiers"])
    scale = np.linalg.norm(Mp, axis=1).mean() / max(np.linalg.norm(Wp, axis=1).mean(), 1e-300)
    Wp = Wp * scale  # one common factor: the in-plane directions and relative lengths are kept
    for k in range(len(Mp)):
        ax.scatter(*F[y3 == k].T, s=4, alpha=0.3, color=PALETTE[k], lw=0)
        ax.scatter(*Mp[k], s=70, color=PALETTE[k], edgecolor="k", zorder=3, label=names[k])
        ax.annotate("", xy=Wp[k], xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=PALETTE[k], lw=1.8))
    ax.plot(*np.vstack([Mp, Mp[:1]]).T, color="0.3", lw=0.8, ls="--")
    ax.set_aspect("equal", adjustable="datalim")
    ax.text(0.02, 0.02, f"NC3 = {rec['nc3']:.2f}\n{100 * rec['out_of_span']:.0f}% of ‖W‖² off this plane",
            transform=ax.transAxes, fontsize=8, va="bottom", bbox=dict(fc="white", ec="0.7", alpha=0.85))
    if legend:
        ax.legend(loc="upper right", fontsize=7, markerscale=0.6)
    ax.set_xlabel("coordinate 1 (feature units)", fontsize=9)
    ax.set_ylabel("coordinate 2 (feature units)", fontsize=9)
    ax.set_title(f"epoch {rec['epoch']}: NC1 = {rec['nc1']:.2g}", fontsize=10)


def plot_plane(geometry: Mapping[str, Any], epochs: Sequence[int] | None = None):
    """The three-class run in the plane of its centred class means at a few epochs (default: first,
    the one nearest 10 and the last): features (dots), means (large dots), classifier rows (arrows,
    their in-plane part, one common scale), with NC3 and the share of ||W||^2 outside the plane."""
    from .plotting import subplots
    hist = geometry["history"]
    if epochs is None:
        near10 = min(hist, key=lambda r: abs(r["epoch"] - 10))["epoch"]
        epochs = sorted({hist[0]["epoch"], near10, hist[-1]["epoch"]})
    recs = [r for r in hist if r["epoch"] in set(epochs)]
    fig, axes = subplots(1, len(recs), width=9.0, height=3.6)
    names = _class_labels(geometry)
    for i, (ax, rec) in enumerate(zip(axes[0], recs)):
        _plane(ax, rec, names, legend=i == 0)
    return fig


def geometry_frame(result: Mapping[str, Any], epoch: int):
    """One frame of the chapter's explorable figure at ``epoch``: the cosines of the centred means
    and cos(w_i, mu_j - mu_G) of the headline network, and the three-class plane view."""
    from matplotlib.figure import Figure
    from .plotting import use_book_style
    use_book_style()
    run, geo = result["runs"][0], result["geometry"]
    rec = min(run["history"], key=lambda r: abs(r["epoch"] - epoch))
    grec = min((r for r in geo["history"] if "projection" in r), key=lambda r: abs(r["epoch"] - epoch))
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    names = _class_labels(run)
    _heatmap(fig, axes[0], rec["cos_means"], f"{run['name']}: means", names, "class j", "class i", colorbar=False)
    im = _heatmap(fig, axes[1], rec["cos_cross"], "cos($w_i$, $\\mu_j-\\mu_G$)", names, "class mean j",
                  "classifier i", colorbar=False)
    fig.colorbar(im, ax=axes[:2], shrink=0.8).set_label("cosine")
    _plane(axes[2], grec, _class_labels(geo))
    fig.suptitle(f"epoch {rec['epoch']} ({run['name']}, 10 classes) and {grec['epoch']} (3-class MLP)", fontsize=10)
    return fig


def explorable_epochs(result: Mapping[str, Any], frames: int = 16) -> list[int]:
    """At most ``frames`` epochs of the three-class run's snapshots (first and last included)."""
    eps = [r["epoch"] for r in result["geometry"]["history"] if "projection" in r]
    if len(eps) <= frames:
        return eps
    idx = sorted({round(i * (len(eps) - 1) / (frames - 1)) for i in range(frames)})
    return [eps[i] for i in idx]
