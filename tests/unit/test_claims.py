"""The claims ledger: registration rules, verdicts, the failure that stops the build, the CLI."""
import json
import sys
import types
from pathlib import Path

import pytest

from utils import claims, reproduce
from utils.claims import Claim, ClaimFailure

ROOT = Path(__file__).resolve().parents[2]


def _claim(**kw):
    base = dict(id="toy.small", chapter="toy", statement="The toy value is small.", source="Toy paper, Fig. 1",
                paper_value="0.01", criterion="value <= 0.1", check=lambda r: r["value"], holds=lambda v: v <= 0.1)
    return Claim(**{**base, **kw})


@pytest.fixture
def toy_experiment(monkeypatch):
    """A registered experiment 'toy' with two claims, one registered as not reproducing."""
    mod = types.ModuleType("toy_chapter")
    mod.CLAIMS = [_claim(), _claim(id="toy.large", statement="The paper's value is large.",
                                   check=lambda r: r["value"], holds=lambda v: v > 1, expected=False,
                                   reason="our runs are 100x shorter than the paper's")]
    monkeypatch.setitem(sys.modules, "toy_chapter", mod)
    monkeypatch.setattr(reproduce, "EXPERIMENTS", {"toy": "toy_chapter:run"})
    monkeypatch.setattr(reproduce, "load_results", lambda e, p="full": None)
    return mod


def test_claim_validation():
    with pytest.raises(ValueError, match="chapter.name"):
        _claim(id="NoDot")
    with pytest.raises(ValueError, match="source must not be empty"):
        _claim(source=" ")
    with pytest.raises(ValueError, match="needs a reason"):
        _claim(expected=False)
    with pytest.raises(ValueError, match="profiles"):
        _claim(profiles=("huge",))


def test_both_verdicts_and_missing_data():
    c = _claim()
    assert c.evaluate({"value": 0.05}, "quick")["status"] == "holds"
    assert c.evaluate({"value": 0.5}, "quick")["status"] == "fails"
    assert c.evaluate({}, "quick")["status"] == "missing"
    assert c.evaluate(None, "full")["status"] == "not run"
    assert _claim(profiles=("full",)).evaluate({"value": 0.5}, "quick")["status"] == "not measured"


def test_report_fails_the_build_when_an_expected_claim_fails(toy_experiment):
    claims.report("toy", {"value": 0.05}, "quick")          # holds; the unexpected one fails quietly
    with pytest.raises(ClaimFailure, match=r"toy.small \(quick\): fails"):
        claims.report("toy", {"value": 0.5}, "quick")       # a patched result breaks the finding
    with pytest.raises(ClaimFailure, match="not in results|missing"):
        claims.report("toy", {"other": 1}, "quick")


def test_chapter_table_shows_paper_value_and_verdict(toy_experiment):
    table, rows = claims.chapter_table("toy", {"value": 0.05}, "quick")
    html = table._repr_html_()
    assert "Toy paper, Fig. 1" in html and "✓ holds" in html and "does not reproduce" in html
    assert "not run yet" in html  # no stored full/paper file
    assert [r["status"] for r in rows] == ["holds", "fails"]


def test_a_finding_registered_as_failing_in_one_profile_only(toy_experiment, monkeypatch):
    with pytest.raises(ValueError, match="fails_in needs a reason"):
        _claim(fails_in=("full",))
    with pytest.raises(ValueError, match="must name profiles the claim is measured in"):
        _claim(fails_in=("paper",), profiles=("quick", "full"), reason="r")
    with pytest.raises(ValueError, match="expected=False"):
        _claim(fails_in=("full",), expected=False, reason="r")
    c = _claim(fails_in=("full",), reason="the full run's value is 0.5")
    assert c.expected_in("quick") and not c.expected_in("full")
    quick, full = c.evaluate({"value": 0.5}, "quick"), c.evaluate({"value": 0.5}, "full")
    assert claims.is_failure(quick) and not claims.is_failure(full)   # the quick run still guards it
    toy_experiment.CLAIMS = [c]
    monkeypatch.setattr(reproduce, "load_results", lambda e, p="full": {"value": 0.5} if p == "full" else None)
    table, rows = claims.chapter_table("toy", {"value": 0.05}, "quick")
    html = table._repr_html_()
    assert "Does not reproduce in the stored full run: the full run&#x27;s value is 0.5" in html
    assert "✗ (as registered) 0.5" in html
    claims.report("toy", {"value": 0.05}, "quick")                  # the stored full failure does not fail it
    with pytest.raises(ClaimFailure):
        claims.report("toy", {"value": 0.5}, "quick")
    assert "in the full profile" in claims.ledger_table(("quick", "full"))._repr_html_()


def test_duplicate_ids_are_refused(monkeypatch, toy_experiment):
    toy_experiment.CLAIMS = [_claim(), _claim()]
    with pytest.raises(ValueError, match="used twice"):
        claims.all_claims()


def test_cli_stored_json(toy_experiment, capsys):
    assert claims.main(["--profile", "full", "--stored", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in rows} == {"toy.small", "toy.large"}
    assert all(r["status"] == "not run" for r in rows)
    keys = {"id", "chapter", "statement", "source", "paper_value", "criterion", "expected", "profile",
            "measured", "holds"}
    assert keys <= set(rows[0])


def test_book_ledger():
    """Every chapter states at least three claims, 30 in all, each with a source and a paper value,
    and every claim id is exercised by a unit test."""
    every = claims.all_claims()
    by_chapter = {}
    for c in every:
        by_chapter.setdefault(c.chapter, []).append(c.id)
    missing = [e for e in reproduce.EXPERIMENTS if len(by_chapter.get(e, [])) < 3]
    assert not missing, f"chapters with fewer than three claims: {missing}"
    assert len(every) >= 30, f"only {len(every)} claims"
    tests = "".join(p.read_text() for p in (ROOT / "tests" / "unit").glob("test_*.py"))
    untested = [c.id for c in every if f'"{c.id}"' not in tests]
    assert not untested, f"claims whose check no unit test exercises: {untested}"


def test_parallel_run_keeps_rows_in_order(monkeypatch):
    """--run with jobs > 1 runs chapters in separate processes and returns rows in chapter order."""
    rows = claims.ledger_rows("quick", run=False, jobs=2)
    assert [r["chapter"] for r in rows] == sorted([r["chapter"] for r in rows],
                                                 key=list(reproduce.EXPERIMENTS).index)
    with pytest.raises(ValueError, match="jobs"):
        claims.ledger_rows("quick", run=True, jobs=0)
