"""The rules benchmark's bookkeeping: steps that commit answer tokens vs the EOS tail, and the
confidence-by-left-neighbour table, on hand-made step records."""
from types import SimpleNamespace

import pytest

from benchmarks.diffusion import answer_steps, neighbour_confidence, parallel_repeats, pick_configs, pick_prompts
from benchmarks.diffusion_quality import heldout_prompts

EOS = {2}


def _trace(final_ids, states, confs=None):
    steps = [{"state": st, "conf": c, "score": c} for st, c in zip(states, confs or [[None] * len(s) for s in states])]
    return SimpleNamespace(final_ids=final_ids, steps=steps)


def test_answer_steps_leave_out_steps_that_only_commit_the_eos_tail():
    # answer = 3 tokens + EOS (answer_len counts the EOS: 4); positions 4, 5 are the tail
    final = [10, 11, 12, 2, 2, 2]
    states = [
        ["mask", "mask", "mask", "mask", "new", "new"],          # tail only
        ["new", "mask", "mask", "mask", "committed", "committed"],
        ["committed", "new", "new", "new", "committed", "committed"],
    ]
    assert answer_steps(_trace(final, states), EOS) == (4, 2)
    # no EOS at all: every position is answer
    assert answer_steps(_trace([10, 11], [["new", "mask"], ["committed", "new"]]), EOS) == (2, 2)


def test_parallel_repeats_counts_multi_commit_steps_and_their_loop_tokens():
    # answer "5 6 7 8 9 | 5 6 7 8 9" + EOS + tail: the second copy repeats a 5-gram
    final = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 2, 2]
    N, C, M = "new", "committed", "mask"
    states = [
        [N] + [M] * 10 + [N],                           # one answer token (+ a tail position): not parallel
        [C, N, N, N, N] + [M] * 6 + [C],                # 4 answer tokens of the first copy at once
        [C] * 5 + [N, N, N] + [M] * 3 + [C],            # 3 of the second copy at once: loop tokens
        [C] * 8 + [N, M, M, C],                         # one
        [C] * 9 + [N, N, C],                            # the copy's last token with the answer's EOS (counted, as in answer_steps)
    ]
    assert parallel_repeats(_trace(final, states), EOS, n=5) == (9, 4)
    # no repeat: parallel commits, none of them loop tokens
    assert parallel_repeats(_trace([5, 6, 7, 2], [[N, N, N, N]]), EOS, n=5) == (4, 0)


def test_neighbour_confidence_splits_by_the_left_neighbour_state():
    states = [["committed", "mask", "mask", "mask"], ["committed", "committed", "mask", "mask"]]
    confs = [[None, 0.95, 0.2, 0.1], [None, None, 0.5, 0.92]]
    nc = neighbour_confidence([_trace([1, 2, 3, 4], states, confs)])
    med_t, share_t, n_t = nc["after_text"]
    med_m, share_m, n_m = nc["after_mask"]
    assert n_t == 2 and n_m == 3  # (0.95, 0.5) after text; (0.2, 0.1, 0.92) after [MASK]
    assert abs(med_t - 0.725) < 1e-9 and share_t == 0.5
    assert abs(med_m - 0.2) < 1e-9 and abs(share_m - 1 / 3) < 1e-9


def test_mixed_prompts_alternate_long_and_one_line():
    p = pick_prompts("mixed", 4)
    assert p[0::2] == heldout_prompts(2, seed=23) and p[1::2] == heldout_prompts(3, seed=23, short=True)[:2]
    assert pick_prompts("short", 3) == heldout_prompts(3, seed=23, short=True)
    assert len(pick_prompts("formulaic", 2)) == 2


def test_threshold_sweep_rows_follow_the_chosen_configs():
    rows = pick_configs("0,5", "0.95, 0.8")
    assert [r[0] for r in rows] == ["low_confidence, 1 token/step", "threshold 0.9 (Fast-dLLM)",
                                    "threshold 0.95", "threshold 0.8"]
    assert rows[-1][1] == {"rule": "threshold", "threshold": 0.8} and rows[-1][2] == "full"
    assert len(pick_configs()) == 12
    with pytest.raises(ValueError, match="outside"):
        pick_configs("", "1.5")


def test_offset_gives_prompts_disjoint_from_the_first_ones():
    first, fresh = pick_prompts("mixed", 12), pick_prompts("mixed", 12, offset=12)
    assert len(fresh) == 12 and not set(first) & set(fresh)
    assert pick_prompts("mixed", 24) == first + fresh
