"""Profiles: the three names, every profile's code path executed at smoke scale, memory budgets."""
import pytest
import torch

from utils import claims, reproduce
from utils.checkpoint import Checkpoint
from utils.profiles import BUDGETS, PROFILES, get_profile

EXPERIMENTS = sorted(reproduce.EXPERIMENTS)


def test_get_profile(monkeypatch):
    monkeypatch.delenv("BOOK_PROFILE", raising=False)
    assert get_profile("paper") == "paper"
    assert get_profile(None) in ("quick", "full")          # paper is never chosen automatically
    monkeypatch.setenv("BOOK_PROFILE", "Paper ")
    assert get_profile(None) == "paper"
    with pytest.raises(ValueError, match=r"'huge'.*quick.*full.*paper"):
        get_profile("huge")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_module_follows_the_chapter_pattern(experiment):
    mod = reproduce.module(experiment)
    for name in ("Config", "run", "CLAIMS", "EXPERIMENT"):
        assert hasattr(mod, name), f"utils module of {experiment} lacks {name}"
    assert mod.EXPERIMENT == experiment
    for profile in PROFILES:
        cfg = mod.Config.for_profile(profile)
        assert cfg.expected_seconds() > 0
        with pytest.raises(Exception):  # frozen
            cfg.__setattr__(next(iter(cfg.__dataclass_fields__)), None)
    with pytest.raises(ValueError, match="quick"):
        mod.Config.for_profile("huge")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_full_profile_fits_a_t4(experiment):
    """Estimated peak memory of each full configuration (parameters, activations, kernels) <= 12 GB."""
    cfg = reproduce.config(experiment, "full")
    assert 0 < cfg.peak_memory_bytes() <= BUDGETS["full"]["memory_bytes"], \
        f"{experiment} full needs about {cfg.peak_memory_bytes() / 2**30:.1f} GiB"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_profile_path_runs_at_smoke_scale(experiment, profile, tmp_path, monkeypatch):
    """Each profile's code path executes (toy sizes, CPU), round-trips through JSON, and every claim
    of that profile can be evaluated on it (a verdict, not missing data)."""
    monkeypatch.setenv("BOOK_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setattr("utils.checkpoint.DEFAULT_DIR", tmp_path)
    results = reproduce.reproduce(experiment, profile, torch.device("cpu"), progress=False, smoke=True)
    mod = reproduce.module(experiment)
    again = mod.Result.from_json(results).to_json()
    assert again == {k: v for k, v in results.items() if k in again}
    rows = claims.evaluate_results(experiment, results, profile)
    missing = [r["id"] + ": " + r.get("error", "") for r in rows if r["status"] == "missing"]
    assert not missing, f"claims that cannot read the {profile} results: {missing}"


def test_checkpoint_resumes_training(tmp_path):
    """fit saves its state and a second call resumes from it to the same parameters."""
    from utils.train import fit
    torch.manual_seed(0)
    X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))

    def model():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    reference = model()
    fit(reference, X, y, 6, optimizer="momentum", lr=0.05, batch_size=16, progress=False, milestones=(3,))
    ck = Checkpoint(tmp_path, every_seconds=1e-9)
    interrupted = model()
    fit(interrupted, X, y, 4, optimizer="momentum", lr=0.05, batch_size=16, progress=False, milestones=(3,),
        checkpoint=ck, checkpoint_key="job")
    assert ck.load_state("job")["epoch"] == 3
    resumed = model()
    hist = fit(resumed, X, y, 6, optimizer="momentum", lr=0.05, batch_size=16, progress=False, milestones=(3,),
               checkpoint=ck, checkpoint_key="job")
    assert hist.epoch == [1, 2, 3, 4, 5, 6]
    for a, b in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    ck.record("job", {"done": True})
    assert Checkpoint(tmp_path).done("job") == {"done": True} and ck.load_state("job") is None
