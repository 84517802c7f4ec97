"""Layer-Peeled Model: both solvers find the simplex ETF for balanced classes and agree."""
from __future__ import annotations

import numpy as np
import pytest

from utils.lpm import (balanced_optimal_value, etf_solution_gram, lpm_objective, scaled_gram, solve_lpm,
                       solve_lpm_convex)


@pytest.mark.parametrize("K,p,E_W,E_H", [(4, 8, 1.0, 1.0), (5, 4, 2.0, 0.5), (3, 6, 0.5, 3.0)])
def test_balanced_solvers_return_etf_and_agree(K, p, E_W, E_H):
    sizes = [20] * K
    direct = solve_lpm(sizes, p, E_W, E_H, restarts=4, seed=1)
    sdp = solve_lpm_convex(sizes, E_W, E_H)
    target = scaled_gram(etf_solution_gram(K, E_W, E_H), E_W, E_H)
    assert np.abs(scaled_gram(direct.gram, E_W, E_H) - target).max() < 1e-3
    assert np.abs(scaled_gram(sdp.gram, E_W, E_H) - target).max() < 1e-3
    assert np.abs(direct.gram - sdp.gram).max() < 1e-3
    best = balanced_optimal_value(K, E_W, E_H)
    assert direct.objective == pytest.approx(best, abs=1e-7)
    assert sdp.objective == pytest.approx(best, abs=1e-6)
    np.testing.assert_allclose(direct.w_norms, np.sqrt(E_W), atol=1e-4)
    np.testing.assert_allclose(direct.h_norms, np.sqrt(E_H), atol=1e-4)
    np.testing.assert_allclose(np.diag(direct.wh_cosines), 1.0, atol=1e-4)  # self-duality


def test_sdp_is_a_relaxation_and_exact_when_p_at_least_2K():
    sizes = [30, 30, 5, 5]
    sdp = solve_lpm_convex(sizes, 1.0, 1.0)
    low = solve_lpm(sizes, 1, 1.0, 1.0, restarts=4)  # p = 1 < K-1: rank-one Gram, strictly worse
    assert sdp.objective <= low.objective + 1e-8 and low.objective > sdp.objective + 1e-2
    full = solve_lpm(sizes, 8, 1.0, 1.0, restarts=4)  # p = 2K
    assert full.objective == pytest.approx(sdp.objective, abs=1e-6)
    assert np.abs(full.gram - sdp.gram).max() < 1e-3


def test_objective_from_gram_matches_direct_factors():
    sol = solve_lpm([10, 4, 7], 3, 1.5, 0.7, restarts=2, steps=50)
    F = np.concatenate([sol.W, sol.H])
    assert lpm_objective(F @ F.T, [10, 4, 7]) == pytest.approx(sol.objective, rel=1e-12)
    assert (sol.w_norms ** 2).mean() <= 1.5 + 1e-9 and (sol.h_norms ** 2).mean() <= 0.7 + 1e-9


@pytest.mark.parametrize("sizes,p,E_W,E_H,match", [
    ([10], 4, 1.0, 1.0, "K >= 2"), ([10, 0], 4, 1.0, 1.0, "positive"), ([10, -3], 4, 1.0, 1.0, "positive"),
    ([10, 10], 4, 0.0, 1.0, "budgets"), ([10, 10], 4, 1.0, -1.0, "budgets"), ([10, 10], 0, 1.0, 1.0, "dimension")])
def test_bad_inputs_raise(sizes, p, E_W, E_H, match):
    with pytest.raises(ValueError, match=match):
        solve_lpm(sizes, p, E_W, E_H)
    if match != "dimension":
        with pytest.raises(ValueError, match=match):
            solve_lpm_convex(sizes, E_W, E_H)


@pytest.mark.parametrize("E_W,E_H", [(float("inf"), 1.0), (1.0, float("inf")), (float("nan"), 1.0)])
def test_infinite_budgets_raise_instead_of_a_wrong_answer(E_W, E_H):
    """With E_W = inf the infimum of the loss is 0 and has no minimiser: no solver may return a value."""
    with pytest.raises(ValueError, match="finite and positive"):
        solve_lpm([5, 5], 4, E_W, E_H)
    with pytest.raises(ValueError, match="finite and positive"):
        solve_lpm_convex([5, 5], E_W, E_H)
    from utils import minority_collapse as mc
    with pytest.raises(ValueError, match="finite and positive"):
        mc.solve_symmetric_lpm(10, 5, 10.0, E_W, E_H)


def test_one_solver_path_falls_back_to_scs_without_clarabel(monkeypatch):
    """Without CLARABEL both the full SDP and the reduced program use SCS, and agree."""
    import cvxpy as cp

    from utils import minority_collapse as mc
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["SCS"])
    mc._solve_symmetric_cached.cache_clear()
    try:
        full = solve_lpm_convex([3.0, 3.0, 1.0, 1.0], 1.0, 1.0)
        assert full.info["solver"] == "SCS"
        sym = mc.solve_symmetric_lpm(4, 2, 3.0, 1.0, 1.0)
        assert sym.objective == pytest.approx(full.objective, abs=1e-4)
    finally:
        mc._solve_symmetric_cached.cache_clear()


def test_minority_classifier_cosine_uses_the_shared_metrics():
    from utils.lpm import minority_classifier_cosine
    K = 4
    G = etf_solution_gram(K, 1.0, 1.0)
    assert minority_classifier_cosine(G, 2) == pytest.approx(-1 / (K - 1), abs=1e-12)
    G0 = G.copy()
    G0[2:4, :] = 0
    G0[:, 2:4] = 0
    assert np.isnan(minority_classifier_cosine(G0, 2))  # vanished minority classifiers: no direction


# ----------------------------------------------------------------------------- claims

def _result(etf_diff=1e-6, gap=1e-9, closed=1e-9, K=4, grid_etf_diff=1e-7, closed_form=0.2):
    return {"balanced": {"K": K, "max_etf_gram_difference": etf_diff},
            "dimension": [{"p": p, "direct_objective": 0.5 + (gap if p >= K else 0.1), "sdp_objective": 0.5}
                          for p in range(1, 2 * K + 1)],
            "imbalanced": [{"sdp_objective": 0.3, "direct_objective_pK": 0.3 + gap, "direct_objective_p2K": 0.3}],
            "budgets": [{"objective": closed_form + closed, "closed_form": closed_form,
                         "max_etf_gram_difference": grid_etf_diff}]}


def test_claim_lpm_etf_both_verdicts():
    from utils import claims
    c = claims.get("lpm.etf")
    assert c.holds(c.check(_result(etf_diff=2e-4))) and not c.holds(c.check(_result(etf_diff=5e-3)))
    assert not c.holds(c.check(_result(grid_etf_diff=5e-3)))      # the budget grid counts too


def test_claim_lpm_relaxation_both_verdicts():
    from utils import claims
    c = claims.get("lpm.relaxation")
    assert c.check(_result(gap=1e-9)) == pytest.approx(1e-9)  # p < K (gap 0.1) is not counted
    assert c.holds(c.check(_result(gap=1e-9))) and not c.holds(c.check(_result(gap=1e-4)))


def test_claim_lpm_closed_form_both_verdicts():
    from utils import claims
    c = claims.get("lpm.closed_form")
    assert c.holds(c.check(_result(closed=1e-8))) and not c.holds(c.check(_result(closed=1e-3)))
    # relative: a loss of 1e-7 missed by 1e-7 fails, though the absolute difference is tiny
    assert not c.holds(c.check(_result(closed=1e-7, closed_form=1e-7)))


def test_network_cosines_reads_the_stored_neural_collapse_runs():
    """Off-diagonal cosines of each run's last record; the ETF's -1/(K-1) is the reference."""
    import numpy as np
    K = 4
    etf = np.full((K, K), -1 / (K - 1))
    np.fill_diagonal(etf, 1.0)
    run = {"name": "net", "history": [{"epoch": 1}, {"epoch": 9, "train_accuracy": 1.0,
                                                      "cos_means": etf.tolist(), "cos_classifiers": etf.tolist()}]}
    from utils import lpm
    (net,) = lpm.network_cosines({"runs": [run, {"name": "no matrices", "history": [{"epoch": 9}]}]})
    assert net["K"] == K and net["epoch"] == 9 and len(net["means"]) == K * (K - 1)
    assert net["mean_cos_means"] == pytest.approx(-1 / 3) and net["etf"] == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="cos_means"):
        lpm.network_cosines({"runs": [{"name": "x", "history": [{"epoch": 1}]}]})
