"""The Lessons page's content: one lesson per family, each a few parts. A part is a short explanation and a
recorded step that shows its point, found in a shipped trace (examples/lessons/*.json, made by
examples/make_examples.py with the embedded model) by a small function, so regenerating a trace keeps
every part on a step that still shows what it says. No model is needed to teach from them.

(~320 lines, one file on purpose: the lessons are content, each part beside the finder it uses.)

A part's `find(steps, trace)` returns the step index; `figures(steps, cur, trace)` the plotly figures
(or HTML strings) to show large; `look` is what the class should look at, for the presenter to read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from viz import ar as v_ar
from viz import beam as v_beam
from viz import cad as v_cad
from viz import cautious as v_caut
from viz import contrastive as v_con
from viz import diffusion as v_dif
from viz import grammar as v_gram
from viz import jacobi as v_jac
from viz import kv as v_kv
from viz import speculative as v_spec

TRACES = Path(__file__).resolve().parent.parent / "examples" / "lessons"


@dataclass(frozen=True)
class Part:
    title: str
    text: str                    # static markdown (ours, never from a trace)
    trace: str                   # examples/lessons/<trace>.json
    find: Callable               # (steps, trace) -> step index
    figures: Callable            # (steps, cur, trace) -> list of figures / HTML strings
    look: str = ""


@dataclass(frozen=True)
class Lesson:
    key: str
    title: str
    page: str                    # the live page to try it on
    parts: tuple = field(default_factory=tuple)


# ---- finders ------------------------------------------------------------------------------------------------
def first(steps, trace) -> int:
    return 0


def last(steps, trace) -> int:
    return len(steps) - 1


def least_confident(steps, trace) -> int:
    return min(range(len(steps)), key=lambda i: steps[i].get("prob") if steps[i].get("prob") is not None else 1.0)


def most_cut_by_warpers(steps, trace) -> int:
    """The step where top-p / temperature moved the most probability mass among the candidates."""
    def moved(s):
        return sum(abs((c.get("p_raw") or 0) - (c.get("p_warped") or 0)) for c in s.get("candidates", []))
    return max(range(len(steps)), key=lambda i: moved(steps[i]))


def _status_count(step, status) -> int:
    return sum(1 for n in step.get("nodes", []) if n.get("status") == status)


def most_accepted(steps, trace) -> int:
    return max(range(len(steps)), key=lambda i: steps[i].get("accepted_len", 0))


def rejected_and_corrected(steps, trace) -> int:
    """A round whose draft was rejected at its first token: the target's own token replaces it."""
    for i, s in enumerate(steps):
        if s.get("draft_len", 0) > 0 and s.get("accepted_len", 0) == 0 and _status_count(s, "rejected"):
            return i
    return most_accepted(steps, trace)


def resampled(steps, trace) -> int:
    """A sampled round where a drafted token was rejected (u > p/q) and the correction was resampled."""
    for i, s in enumerate(steps):
        if _status_count(s, "rejected") and _status_count(s, "resampled"):
            return i
    return 0


def biggest_tree(steps, trace) -> int:
    return max(range(len(steps)), key=lambda i: len(steps[i].get("nodes", [])))


def first_disagreement(steps, trace) -> int:
    """The first step where the evicted cache's next token differs from the full cache's."""
    for i, s in enumerate(steps):
        q = s.get("quality") or {}
        if q.get("agree") is False:
            return i
    return len(steps) - 1


def most_committed(steps, trace) -> int:
    return max(range(len(steps)), key=lambda i: (steps[i].get("committed", 0), -i))


def most_pool_accepted(steps, trace) -> int:
    return max(range(len(steps)), key=lambda i: (steps[i].get("accepted_len", 0), -i))


def middle(steps, trace) -> int:
    return len(steps) // 2


def parallel_answer_commit(steps, trace) -> int:
    """The first step after the first that commits two or more tokens of the answer (not end-of-text)."""
    eos = set(trace.meta.get("eos_ids") or [])
    for i, s in enumerate(steps):
        if i == 0:
            continue
        texts = [s["texts"][p] for p in s.get("new_positions", [])]
        if sum(1 for t in texts if t not in eos and "<|" not in t) >= 2:
            return i
    return 0


def beam_leader_changed(steps, trace) -> int:
    """The first step at which the best beam no longer extends the step before's best beam (a beam that was
    behind took the lead), else the middle step."""
    for i in range(1, len(steps)):
        beams = steps[i].get("beams") or []
        if beams and beams[0].get("parent") not in (0, -1):
            return i
    return len(steps) // 2


def contrastive_off_greedy(steps, trace) -> int:
    for i, s in enumerate(steps):
        if v_con.differs(s):
            return i
    return 0


def context_changed_choice(steps, trace) -> int:
    for i, s in enumerate(steps):
        if "changed" in (s.get("events") or []):
            return i
    return 0


def most_trials(steps, trace) -> int:
    return max(range(len(steps)), key=lambda i: (steps[i].get("n_trials", 1), -i))


def most_removed_mass(steps, trace) -> int:
    return max(range(len(steps)), key=lambda i: ((steps[i].get("grammar") or {}).get("removed_mass") or 0, -i))


# ---- the lessons ------------------------------------------------------------------------------------------
def _watched_layer(steps):
    layers = v_kv.watched_layers(steps)
    return layers[0] if layers else None


LESSONS = (
    Lesson("autoregressive", "Autoregressive decoding: one forward, one token", "Autoregressive", (
        Part("One step = one forward pass",
             "The model reads the prompt and everything written so far, and gives a probability to every token "
             "of its vocabulary. Greedy decoding takes the most probable one. One forward pass, one token.",
             "ar_greedy", first, lambda st, c, t: [v_ar.candidates_figure(st[c])],
             "The tallest bar is the token that was written. The others were possible too."),
        Part("Confident and uncertain tokens",
             "Some tokens are nearly certain (the end of a word), others are a real choice (the start of a "
             "phrase). The chart shows the chosen token's probability and the entropy of the distribution at "
             "every step; the marked step is the least confident one of this answer.",
             "ar_greedy", least_confident, lambda st, c, t: [v_ar.prob_entropy_figure(st, c)],
             "Where probability drops and entropy rises, a different sample could change the whole answer."),
        Part("Sampling: temperature and top-p",
             "Sampling draws the token instead of taking the top one. Temperature flattens or sharpens the "
             "distribution; top-p keeps only the most probable tokens whose mass reaches p and renormalises. "
             "This step is where the warpers moved the most probability.",
             "ar_sampled", most_cut_by_warpers, lambda st, c, t: [v_ar.candidates_figure(st[c])],
             "Compare the raw and warped bars: cut tokens drop to zero, the kept ones grow."),
    )),
    Lesson("speculative", "Speculative decoding: draft cheaply, verify in one pass", "Speculative", (
        Part("Draft, then verify everything in one forward pass",
             "A drafter (here: copying from the prompt) proposes several tokens. The target model scores all of "
             "them in ONE forward pass; every token that equals what the target would have chosen is accepted, "
             "and the target adds its own next token (blue). Same output as greedy decoding, fewer passes.",
             "spec_greedy", most_accepted, lambda st, c, t: [v_spec.tree_figure(st[c]), v_spec.stream_html(st, c)],
             "Green tokens were accepted; the blue one is the target's bonus token."),
        Part("A rejected draft",
             "When the first drafted token is not what the target would choose, the whole draft is thrown "
             "away (red) and the target's own token (blue) is appended: the round still makes one token of "
             "progress, like plain decoding.",
             "spec_greedy", rejected_and_corrected, lambda st, c, t: [v_spec.tree_figure(st[c])],
             "Red = rejected. Everything after a rejection is never looked at (grey)."),
        Part("Sampling: accept with probability min(1, p/q)",
             "With sampling, a drafted token x is accepted when a uniform draw u <= p(x)/q(x) (target over "
             "draft probability). At the first rejection the correction is drawn from the leftover mass "
             "max(0, p - q): the output is distributed exactly as sampling from the target.",
             "spec_sampled", resampled,
             lambda st, c, t: [v_spec.tree_figure(st[c]), _table(v_spec.round_table(st[c]))],
             "Find the rejected node: its u was larger than p/q. The orange token was resampled."),
        Part("The tree attention mask",
             "A tree of drafts is verified in one pass too: each drafted token may look at the prompt and at "
             "its own ancestors only. Rows are queries, columns the drafted tokens they may see.",
             "spec_sampled", biggest_tree, lambda st, c, t: [v_spec.mask_figure(st[c]), v_spec.tree_figure(st[c])],
             "Siblings cannot see each other: each branch is its own hypothesis."),
        Part("Tokens per target forward",
             "tau counts the tokens a round commits, bonus included (plain decoding: 1.00). It is the speedup in "
             "target passes; wall-clock speedup also pays for the drafter.",
             "spec_sampled", last, lambda st, c, t: [v_spec.acceptance_figure(st, c)],
             "Rounds where the draft is rejected early commit one token; good rounds commit several."),
    )),
    Lesson("kv", "KV-cache eviction: what is kept, and what it costs", "KV_Cache", (
        Part("The cache really shrinks",
             "Every token the model has read leaves keys and values in every layer. With a budget, the cache "
             "keeps at most that many entries per layer and head: memory stays flat while the text grows.",
             "kv_eviction", last, lambda st, c, t: [v_kv.memory_figure({"h2o": st[: c + 1]})],
             "The full cache grows with every token; the evicted one stops at the budget."),
        Part("Who is kept: heavy hitters and the recent window",
             "H2O keeps the most recent tokens plus the 'heavy hitters': tokens that received the most attention "
             "so far. Each row is a step, each column a position of the text.",
             "kv_eviction", last,
             lambda st, c, t: [v_kv.eviction_map_figure(st[: c + 1], _watched_layer(st), 0, cursor=c)]
             if _watched_layer(st) is not None else [],
             "Red columns were evicted for good; green ones survived every eviction so far."),
        Part("An eviction that changes the next token",
             "Evicting is not free. At this step the full cache and the evicted cache disagree on the next "
             "token: something the model needed was dropped.",
             "kv_eviction", first_disagreement,
             lambda st, c, t: [v_kv.tokens_html(st, c), v_kv.agreement_figure({"h2o": st[: c + 1]})],
             "The underlined token is where the choices differ (hover it for the full cache's choice)."),
    )),
    Lesson("jacobi", "Jacobi and lookahead: guessing the future in parallel", "Jacobi_Lookahead", (
        Part("Guess a block, refine every guess at once",
             "Jacobi decoding guesses 8 future tokens, then runs ONE forward over all of them and replaces every "
             "guess by the model's prediction given the guesses before it. Tokens that stop changing are "
             "committed. The output is exactly the greedy one.",
             "jacobi_blocks", most_committed, lambda st, c, t: [v_jac.trajectory_grid(st, c, t.final_ids)],
             "Rows are iterations. Left of the black staircase every token is final."),
        Part("Why it rarely beats plain decoding here",
             "A guess can only become right once the token before it is right, so a change travels one position "
             "per iteration. The dependency graph shows that chain; its length sets the number of iterations. "
             "On this small model guesses almost never land early: about 1 token per forward.",
             "jacobi_blocks", most_committed, lambda st, c, t: [v_jac.dependency_graph(st, c)],
             "The thick chain is the critical path: every link is one forward pass."),
        Part("Lookahead: keep the n-grams the guesses produce",
             "Lookahead decoding runs a 2-D window of Jacobi guesses, keeps the n-grams they produce in a pool, "
             "and verifies pool n-grams that start with the last token in the same forward pass.",
             "lookahead_pool", most_pool_accepted, lambda st, c, t: [v_jac.lookahead_window_figure(st[c], t.final_ids)],
             "Green: tokens accepted from the pool this step, several per forward."),
    )),
    Lesson("diffusion", "Diffusion language models: fill in the blanks", "Diffusion", (
        Part("Everything starts masked",
             "A masked diffusion model writes the whole answer at once: it starts from [MASK] tokens, predicts "
             "every position at each step, and commits some of the predictions.",
             "diffusion_one", first, lambda st, c, t: [v_dif.denoising_grid(st, c)],
             "Dark grey = still masked. The faint words are the model's current guesses under the masks."),
        Part("One token per step, most confident first",
             "LLaDA's low_confidence rule commits the k most confident predictions per step (here one): the "
             "answer appears in the order the model is surest of, not left to right.",
             "diffusion_one", middle, lambda st, c, t: [v_dif.confidence_figure(st[c]), v_dif.denoising_grid(st, c)],
             "Green = committed this step; light blue = committed earlier."),
        Part("Parallel commits: everything above the threshold",
             "Fast-dLLM's threshold rule commits every prediction whose confidence clears the threshold (0.7 "
             "here), at least one per step: fewer steps, at the risk of committing two guesses that do not fit "
             "together.",
             "diffusion_threshold", parallel_answer_commit,
             lambda st, c, t: [v_dif.confidence_figure(st[c]), v_dif.denoising_grid(st, c)],
             "Several green cells in one row: one forward pass, several answer tokens."),
    )),
)
LESSONS = LESSONS + (
    Lesson("search", "Search and structure: choosing other than the likeliest token", "Search", (
        Part("Beam search keeps several answers alive",
             "Greedy decoding commits to the likeliest token at every step. Beam search keeps the best 4 partial "
             "answers by total log-probability; each is extended by every token and the best 4 continuations "
             "survive. A beam that was behind can take the lead later: the answer greedy would never find.",
             "search_beam", beam_leader_changed, lambda st, c, t: [v_beam.tree_figure(st, c)],
             "Green lines go on to the current beams; grey leaves were considered and pruned."),
        Part("Contrastive search: confidence against repetition",
             "Contrastive search scores each of the k likeliest tokens by (1 - alpha) x its probability minus alpha x "
             "how similar its hidden state is to everything already written. Here the likeliest token lost to a "
             "less likely one that says something new.",
             "search_contrastive", contrastive_off_greedy, lambda st, c, t: [v_con.candidates_figure(st[c])],
             "Orange diamond: greedy's choice; blue star: the one taken. The dashed line is equal score."),
        Part("Context-aware decoding follows the evidence",
             "The context says the Eiffel Tower was moved to Rome. Reading it, the small model still leans to its "
             "prior (Paris). Context-aware decoding subtracts alpha x the prediction WITHOUT the context, so what "
             "the context changed is amplified.",
             "search_cad", context_changed_choice,
             lambda st, c, t: [v_cad.step_figure(st[c]), v_cad.run_figure(st, c)],
             "Blue: with the context; grey: without it; green: what the decoder chose from."),
        Part("Cautious decoding: think more where unsure",
             "Where the next-token entropy is high, cautious next-token prediction runs several trials to the next "
             "punctuation and keeps the one with the lowest perplexity; where the model is sure it writes one "
             "token. The entropy sets the number of trials.",
             "search_cautious", most_trials,
             lambda st, c, t: [v_caut.trials_figure(st[c]), v_caut.entropy_figure(st, c, 0.01, 1.5)],
             "Green: the trial kept. Bigger dots: steps that ran more trials."),
        Part("A grammar decides which tokens may come next",
             "Constrained decoding masks every token the grammar (here a JSON schema) does not allow. The output "
             "always parses, but the mask can remove most of what the model wanted: that removed probability is "
             "the distortion 'Grammar-Aligned Decoding' is about.",
             "search_grammar", most_removed_mass,
             lambda st, c, t: [v_gram.candidates_figure(st[c]), v_gram.run_figure(st, c)],
             "Red: tokens the model wanted that the grammar blocked."),
    )),
)
BY_KEY = {lesson.key: lesson for lesson in LESSONS}


def _table(rows: list[dict]):
    import pandas as pd
    return pd.DataFrame(rows)
