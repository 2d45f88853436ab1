"""Breakpoint events mean what their names say (issue 30): a diffusion step flags "remasked" only when a token
committed at an earlier step is masked again, not for the predictions a rule leaves masked."""
from types import SimpleNamespace

import pytest
import torch

from engine import run
from engine.methods.diffusion import step_record
from engine.runner import EVENTS, Breakpoint

MASK = 9


def fake_step(x, was_masked, committed):
    n = len(x)
    return SimpleNamespace(
        x=torch.tensor(x), was_masked=torch.tensor(was_masked), committed=torch.tensor(committed),
        x0=torch.tensor([5] * n), conf=torch.full((n,), 0.5), score=torch.full((n,), 0.5),
        candidates=torch.tensor(was_masked), threshold=None, k=1, block=0, block_range=(0, n), step_in_block=0,
        nfe=1, forwarded=n)


def test_predictions_left_masked_are_not_a_remask(tiny_lm):
    # two masked positions, one committed: the other stays masked (counted, not an event)
    rec = step_record(tiny_lm, fake_step([3, 5, MASK], [False, True, True], [False, True, False]), 0, MASK, 0.0)
    assert rec["remasked"] == 1 and rec["events"] == []
    assert Breakpoint("event", "remasked").hit(rec) is None


def test_a_committed_token_masked_again_is_a_remask(tiny_lm):
    # position 0 was committed before this step and is masked after it
    rec = step_record(tiny_lm, fake_step([MASK, 5, MASK], [False, True, True], [False, True, False]), 0, MASK, 0.0)
    assert rec["events"] == ["remasked"]
    assert Breakpoint("event", "remasked").hit(rec) == f"event: {EVENTS['remasked']}"
    assert EVENTS["remasked"] == "a committed token is remasked"


@pytest.mark.slow
def test_low_confidence_never_fires_the_remasked_event():
    from engine.diffusion.adapters import DiffusionAdapter
    from tests.conftest import make_tiny_lm
    lm = make_tiny_lm(seed=3)
    lm.diffusion = DiffusionAdapter(lm.model, 16, shift=False, bidirectional=True, name="tiny", eos_ids=lm.eos_ids)
    t = run.run(lm, "diffusion", "Once upon a time", max_new_tokens=8,
                options={"rule": "low_confidence", "block_length": 4, "steps": 4, "stop_at_eos": False})
    assert t.steps[0]["remasked"] > 0      # predictions left masked at step 0 ...
    assert all(s["events"] == [] for s in t.steps)   # ... and no committed token ever taken back
