"""The claims ledger: what the book asserts about each paper, and whether its runs bear it out.

A :class:`Claim` is one sentence about a paper's finding with a number that decides it: the
paper's value and where it comes from (figure, table, section), a human-readable criterion, a
pure ``check(results) -> measured`` on a run's results (the ``Result.to_json()`` dict that
:mod:`utils.reproduce` stores) and a verdict ``holds(measured) -> bool``.  ``expected=False``
marks a finding the book shows does *not* reproduce at the stated scale; its ``reason`` says
why.  ``fails_in`` does the same for some profiles only (a finding the quick run shows that the
larger ``full`` run does not).  Honest failures stay in the ledger.

Each chapter module lists its claims in ``CLAIMS``; :func:`all_claims` collects them.  A chapter
notebook ends with :func:`report`, which shows the chapter's table and raises
:class:`ClaimFailure` when an expected claim fails, so the book build fails with it.

Command line::

    python -m utils.claims --profile quick --run --json     # run every chapter's quick experiment
    python -m utils.claims --profile full --stored          # read results/<experiment>_full.json
    python -m utils.claims --chapter equi_separation --run  # one chapter, a readable table

With ``--run``, experiments run in parallel processes (``--jobs``, default: one per CPU core, at
most 4), each on one thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import re
import sys
from typing import Any, Callable, Mapping, Sequence

from .profiles import PROFILES
from .tables import HTMLTable, format_value

ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


class ClaimFailure(AssertionError):
    """An expected claim failed on a run: a change broke one of the book's findings."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """One finding of a paper, as the book states and checks it.

    Attributes:
        id: ``"<chapter>.<name>"``, e.g. ``"es.law"``.
        chapter: the experiment it is checked on (``utils.reproduce.EXPERIMENTS``), e.g.
            ``"equi_separation"``.
        statement: one sentence for readers.
        source: the paper and the figure/table/section the number comes from.
        paper_value: the paper's number or qualitative finding, as the paper gives it.
        criterion: the decision rule in words, e.g. ``"Pearson(l, log D_l) <= -0.95"``.
        check: ``check(results) -> measured``; ``results`` is a run's ``to_json()`` dict; the
            measured value is a number, or a small dict of numbers (JSON types).
        holds: ``holds(measured) -> bool``, the verdict.
        expected: False for a finding that does not reproduce at the stated scale.
        reason: why it does not (required when ``expected`` is False or ``fails_in`` is set).
        fails_in: profiles whose runs show the finding does not reproduce although ``expected`` is
            True for the others, e.g. ``("full",)``; ``reason`` then says what those runs found.
        profiles: the profiles whose runs measure this claim (a ``full``-only claim is not
            evaluated on the ``quick`` run).
    """

    id: str
    chapter: str
    statement: str
    source: str
    paper_value: str
    criterion: str
    check: Callable[[Mapping[str, Any]], Any]
    holds: Callable[[Any], bool]
    expected: bool = True
    reason: str = ""
    profiles: tuple[str, ...] = PROFILES
    fails_in: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.id):
            raise ValueError(f"claim id {self.id!r} must look like 'chapter.name' (lower case, digits, _)")
        for name in ("chapter", "statement", "source", "paper_value", "criterion"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"claim {self.id}: {name} must not be empty")
        if not self.expected and not self.reason.strip():
            raise ValueError(f"claim {self.id}: expected=False needs a reason saying why it does not reproduce")
        unknown = set(self.profiles) - set(PROFILES)
        if unknown or not self.profiles:
            raise ValueError(f"claim {self.id}: profiles must be a non-empty subset of {PROFILES}, got {self.profiles}")
        if self.fails_in:
            if not set(self.fails_in) <= set(self.profiles):
                raise ValueError(f"claim {self.id}: fails_in {self.fails_in} must name profiles the claim is "
                                 f"measured in, {self.profiles}")
            if not self.expected:
                raise ValueError(f"claim {self.id}: fails_in is for a claim expected elsewhere; with "
                                 "expected=False it does not reproduce in any profile already")
            if not self.reason.strip():
                raise ValueError(f"claim {self.id}: fails_in needs a reason saying what those runs found")

    def expected_in(self, profile: str) -> bool:
        """Whether the finding is expected to hold on a ``profile`` run."""
        return self.expected and profile not in self.fails_in

    def evaluate(self, results: Mapping[str, Any] | None, profile: str) -> dict[str, Any]:
        """One ledger row for this claim on ``results`` of a ``profile`` run (None: not run yet).

        ``status`` is one of ``holds``, ``fails``, ``missing`` (the results lack what the check
        reads), ``not measured`` (the claim is not checked in this profile) and ``not run``.
        """
        row = {"id": self.id, "chapter": self.chapter, "statement": self.statement, "source": self.source,
               "paper_value": self.paper_value, "criterion": self.criterion, "expected": self.expected_in(profile),
               "reason": self.reason, "profile": profile, "measured": None, "holds": None}
        if results is None:
            return {**row, "status": "not run"}
        row.update({k: results.get(k) for k in ("device", "seconds", "commit", "date") if k in results})
        if profile not in self.profiles:
            return {**row, "status": "not measured"}
        try:
            measured = self.check(results)
        except (KeyError, IndexError, TypeError, StopIteration) as err:
            return {**row, "status": "missing", "error": f"{type(err).__name__}: {err}"}
        holds = bool(self.holds(measured))
        return {**row, "measured": _plain(measured), "holds": holds, "status": "holds" if holds else "fails"}


def _plain(value: Any) -> Any:
    from .experiment import jsonable
    value = jsonable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def is_failure(row: Mapping[str, Any]) -> bool:
    """An expected claim that was measured and did not hold (or whose data were missing)."""
    return bool(row["expected"]) and row["status"] in ("fails", "missing")


# ---------------------------------------------------------------------------------------------
# The registry: every chapter module's CLAIMS
# ---------------------------------------------------------------------------------------------
def experiments() -> dict[str, str]:
    from .reproduce import EXPERIMENTS
    return EXPERIMENTS


def chapter_claims(experiment: str) -> list[Claim]:
    """The claims of one experiment (its module's ``CLAIMS``), in the order the chapter lists them."""
    exps = experiments()
    if experiment not in exps:
        raise ValueError(f"unknown chapter {experiment!r}; choose one of {sorted(exps)}")
    module = importlib.import_module(exps[experiment].split(":")[0])
    claims = list(getattr(module, "CLAIMS", ()))
    wrong = [c.id for c in claims if c.chapter != experiment]
    if wrong:
        raise ValueError(f"claims {wrong} are listed in {experiment}'s module but name another chapter")
    return claims


def all_claims() -> list[Claim]:
    """Every chapter's claims; ids are unique across the book."""
    claims = [c for name in experiments() for c in chapter_claims(name)]
    seen: set[str] = set()
    for c in claims:
        if c.id in seen:
            raise ValueError(f"claim id {c.id!r} is used twice")
        seen.add(c.id)
    return claims


def get(claim_id: str) -> Claim:
    """The claim with this id (``ValueError`` listing the ids when there is none)."""
    for c in all_claims():
        if c.id == claim_id:
            return c
    raise ValueError(f"no claim {claim_id!r}; the ledger has {[c.id for c in all_claims()]}")


def stored_results(experiment: str, profile: str) -> dict | None:
    from .reproduce import load_results
    return load_results(experiment, profile)


def evaluate_results(experiment: str, results: Mapping[str, Any] | Any | None, profile: str) -> list[dict]:
    """Ledger rows of one experiment's claims on ``results`` (a dict or a ``Result``)."""
    if results is not None and hasattr(results, "to_json"):
        results = results.to_json()
    return [c.evaluate(results, profile) for c in chapter_claims(experiment)]


def assert_claims(rows: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`ClaimFailure` naming every expected claim that failed."""
    bad = [r for r in rows if is_failure(r)]
    if bad:
        lines = [f"{r['id']} ({r['profile']}): {r['status']}; criterion: {r['criterion']}; measured: "
                 f"{format_value(r['measured'])}{'; ' + r['error'] if r.get('error') else ''}" for r in bad]
        raise ClaimFailure("expected claims failed:\n  " + "\n  ".join(lines))


# ---------------------------------------------------------------------------------------------
# Presentation
# ---------------------------------------------------------------------------------------------
def verdict(row: Mapping[str, Any]) -> str:
    """A short verdict for a table cell."""
    status = row["status"]
    if status == "holds":
        return "✓ holds" if row["expected"] else "✓ holds (registered as not reproducing)"
    if status == "fails":
        return "✗ fails" if row["expected"] else "✗ does not reproduce (as registered)"
    return {"missing": "✗ not in results", "not measured": "not measured at this scale",
            "not run": "not run yet"}[status]


def _measured_cell(row: Mapping[str, Any] | None) -> str:
    if row is None or row["status"] == "not run":
        return "not run yet"
    if row["status"] == "not measured":
        return "not measured at this scale"
    if row["status"] == "missing":
        return "✗ not in results"
    mark = "✓" if row["holds"] else "✗" if row["expected"] else "✗ (as registered)"
    where = ", ".join(x for x in (str(row.get("device", "") or "").split(",")[0],
                                  str(row.get("date", "") or "")[:10]) if x)
    return f"{mark} {format_value(row['measured'])}" + (f" ({where})" if where else "")


def chapter_table(experiment: str, results: Mapping[str, Any] | Any, profile: str) -> tuple[HTMLTable, list[dict]]:
    """The chapter's "What this chapter reproduces" table and its rows for this run.

    Columns: claim, the paper's value (source), this run's value and verdict, and the stored
    ``full`` and ``paper`` runs where committed.
    """
    rows = evaluate_results(experiment, results, profile)
    stored = {p: evaluate_results(experiment, stored_results(experiment, p), p)
              for p in ("full", "paper") if p != profile}
    header = ["claim", "paper (source)", "criterion", f"this run ({profile})", "verdict",
              *[f"stored {p}" for p in stored]]
    body = []
    for i, r in enumerate(rows):
        elsewhere = [p for p in stored if not stored[p][i]["expected"] and stored[p][i]["status"] != "not run"]
        note = (f" Not expected to reproduce here: {r['reason']}" if not r["expected"] else
                f" Does not reproduce in the stored {' and '.join(elsewhere)} run: {r['reason']}" if elsewhere else "")
        body.append([f"{r['id']}: {r['statement']}{note}", f"{r['paper_value']} ({r['source']})", r["criterion"],
                     format_value(r["measured"]) if r["status"] in ("holds", "fails") else verdict(r),
                     verdict(r), *[_measured_cell(stored[p][i]) for p in stored]])
    return HTMLTable(header, body), rows


def report(experiment: str, results: Mapping[str, Any] | Any, profile: str) -> None:
    """Show the chapter's claims table (in a notebook) and fail on an expected claim that fails.

    Raises:
        ClaimFailure: an expected claim failed or its data were missing from ``results``.
    """
    table, rows = chapter_table(experiment, results, profile)
    try:
        from IPython.display import display
        display(table)
    except ImportError:  # pragma: no cover - IPython is a dependency of the book
        print(table)
    assert_claims(rows)


def _limit_threads(n: int) -> None:
    """Worker-process initialiser: every chapter run in this process uses at most ``n`` threads."""
    from .profiles import THREADS_ENV
    os.environ[THREADS_ENV] = str(n)
    import torch
    torch.set_num_threads(n)


def _run_one(name: str, profile: str, device, progress: bool) -> dict:
    from .reproduce import reproduce
    return reproduce(name, profile, device, progress=progress)


def ledger_rows(profile: str, run: bool = False, chapter: str | None = None, device=None,
                progress: bool = False, jobs: int = 1) -> list[dict]:
    """Ledger rows for ``profile``: from a fresh run of each experiment (``run=True``) or from the
    stored ``results/<experiment>_<profile>.json`` (``"not run"`` where none is stored).

    ``jobs > 1`` runs that many experiments at once in separate processes, each limited to
    ``cores // jobs`` CPU threads (``$BOOK_TORCH_THREADS``); rows keep the order.
    """
    names = [n for n in ([chapter] if chapter else list(experiments())) if chapter_claims(n)]
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if not run:
        results = [stored_results(n, profile) for n in names]
    elif jobs == 1 or len(names) == 1:
        results = [_run_one(n, profile, device, progress) for n in names]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        threads = max(1, (os.cpu_count() or 1) // jobs)      # no more threads than cores in all
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_limit_threads, initargs=(threads,)) as pool:
            results = list(pool.map(_run_one, names, [profile] * len(names), [device] * len(names),
                                    [False] * len(names)))
    return [row for name, res in zip(names, results) for row in evaluate_results(name, res, profile)]


def ledger_table(profiles: Sequence[str] = PROFILES) -> HTMLTable:
    """The whole book's ledger from the stored results: one row per claim, one column per profile."""
    per_profile = {p: {r["id"]: r for r in ledger_rows(p)} for p in profiles}
    body = []
    for c in all_claims():
        expected = ("" if c.expected and not c.fails_in else
                    f" (registered as not reproducing: {c.reason})" if not c.expected else
                    f" (registered as not reproducing in the {' and '.join(c.fails_in)} profile: {c.reason})")
        body.append([c.id, c.statement + expected, f"{c.paper_value} ({c.source})", c.criterion,
                     *[_measured_cell(per_profile[p].get(c.id)) for p in profiles]])
    return HTMLTable(["id", "claim", "paper (source)", "criterion", *profiles], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--run", action="store_true", help="run each chapter's experiment now")
    how.add_argument("--stored", action="store_true", help="read results/<experiment>_<profile>.json (default)")
    parser.add_argument("--chapter", default=None, help="one experiment, e.g. equi_separation")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON list of rows")
    parser.add_argument("--jobs", type=int, default=None,
                        help="experiments run at once with --run (default: the number of CPU cores, at most 4)")
    args = parser.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else max(1, min(4, os.cpu_count() or 1))
    if args.device and args.device.startswith("cuda"):
        jobs = 1 if args.jobs is None else jobs  # one GPU: one experiment at a time
    rows = ledger_rows(args.profile, run=args.run, chapter=args.chapter, device=args.device, jobs=jobs)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        body = [[r["id"], format_value(r["measured"]), verdict(r), r["criterion"]] for r in rows]
        print(HTMLTable(["id", "measured", "verdict", "criterion"], body))
    failed = [r["id"] for r in rows if is_failure(r)]
    if failed:
        print(f"expected claims that failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
