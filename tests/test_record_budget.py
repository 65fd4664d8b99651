"""Recording settings whose trajectory would not fit in memory are refused before training
(a ResourceError naming the stage and the settings), not by NumPy mid-run (MemoryError)."""
from __future__ import annotations

import pytest

import refimpl as ri
from refimpl.errors import ResourceError
from refimpl.train import TrainConfig


@pytest.mark.parametrize("kw, what", [
    (dict(T0=3000, T=5, record_points=10**12), "T0=3000"),                       # sparse schedule
    (dict(T0=5, T=10**12, record_dense_limit=10**12), "T=1000000000000"),         # every step
])
def test_huge_recordings_are_resource_errors(kw, what):
    ds = ri.generate(6, 20, seed=4)
    with pytest.raises(ResourceError, match=what):
        ri.train_two_stage(ds, progress=False, **kw)
    with pytest.raises(ResourceError, match="trajectory rows"):
        TrainConfig(**kw).resolved(6)


def test_recording_budget_follows_the_memory_limit(monkeypatch):
    """The default schedule (2001 rows a stage) passes under a 1 MiB limit and fails under 100 KiB:
    the check counts rows times the bytes of a row (224), nothing else."""
    monkeypatch.setenv("REFIMPL_MAX_MEMORY", "1M")
    TrainConfig(T0=2000, T=2000).resolved(6)
    monkeypatch.setenv("REFIMPL_MAX_MEMORY", "100K")
    with pytest.raises(ResourceError, match="2001 trajectory rows"):
        TrainConfig(T0=2000, T=2000).resolved(6)
