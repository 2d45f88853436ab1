"""Trained draft heads (issue 25): Medusa and EAGLE-1/2 modules, their checkpoint loaders and drafters.

Greedy == autoregressive greedy with untrained (random:SEED) heads for every tree shape, the draft
distributions equal a from-scratch recomputation (the heads' own KV bookkeeping), sampling keeps the target's
distribution, checkpoints in both layouts load, and every mismatch or unsafe file is refused by name."""
from __future__ import annotations

import json
import os
import pickle
from collections import Counter

import pytest
import torch

from engine import run, schema
from engine.methods import MethodError
from engine.methods.speculative import heads as H
from engine.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_thread_module")

PROMPT = "Once upon a time there was a"
N = 16
SHAPES = ["chain", "2.2.2", "[[0],[1],[0,0],[0,1],[0,0,0],[1,0]]", "dynamic"]


def opts(drafter, tree="chain", k=3, **kw):
    return {"drafter": drafter, "tree": tree, "num_assistant_tokens": k, "heads": "random:0", **kw}


@pytest.fixture(scope="module")
def ar_ref(tiny_lm):
    return run.run(tiny_lm, "ar", PROMPT, max_new_tokens=N).final_ids


# ---- greedy equivalence -------------------------------------------------------------------------

@pytest.mark.parametrize("drafter", ["medusa", "eagle"])
@pytest.mark.parametrize("tree", SHAPES, ids=["chain", "2.2.2", "choices", "dynamic"])
def test_greedy_equals_autoregressive_tiny(tiny_lm, ar_ref, drafter, tree):
    tr = run.run(tiny_lm, "speculative", PROMPT, max_new_tokens=N, options=opts(drafter, tree))
    assert tr.final_ids == ar_ref
    s = tr.extra["summary"]
    assert s["lossless"] is True and s["drafter"] == drafter and s["trained"] is False
    assert s["target_forwards"] == len(tr.steps) + 1          # the drafter's prefill + one per round
    assert s["drafted_tokens"] > 0 and s["accepted_tokens"] > 0  # compaction of accepted nodes exercised
    schema.check_steps(tr.steps)
    prefix = "medusa head" if drafter == "medusa" else "eagle step"
    for st in tr.steps:
        for n in st["nodes"][1:-1]:
            assert n["proposer"] == f"{prefix} {n['depth']}"


def test_greedy_equals_autoregressive_embedded(embedded_lm):
    p = "List three colours."
    ref = run.run(embedded_lm, "ar", p, max_new_tokens=N).final_ids
    for drafter, tree in (("medusa", "[[0],[1],[0,0]]"), ("eagle", "dynamic")):
        tr = run.run(embedded_lm, "speculative", p, max_new_tokens=N, options=opts(drafter, tree),
                     record=False)
        assert tr.final_ids == ref, drafter


@pytest.mark.parametrize("drafter", ["eagle", "medusa"])
def test_shipped_heads_greedy_equals_autoregressive_embedded(embedded_lm, drafter):
    """The trained heads in models/ (heads=trained, the default): token for token == AR greedy with a chain,
    a static tree and the dynamic tree, and they were trained: more than one token per round on a chat prompt
    (random heads score ~1.0)."""
    from engine.methods.speculative.head_drafters import shipped_heads
    if not os.path.isdir(shipped_heads(drafter)):
        pytest.fail(f"{shipped_heads(drafter)} is missing: the trained {drafter} heads ship in models/")
    p, n = "Write a short story about a lighthouse keeper.", 24
    ref = run.run(embedded_lm, "ar", p, max_new_tokens=n).final_ids
    for tree in ("chain", "2.2.2", "dynamic"):
        o = {"drafter": drafter, "tree": tree, "num_assistant_tokens": 4}
        tr = run.run(embedded_lm, "speculative", p, max_new_tokens=n, options=o, record=True)
        assert tr.final_ids == ref, (drafter, tree)
        s = tr.extra["summary"]
        assert s["heads"] == "trained (shipped)" and s["trained"] is True
        tau = s["tau"]
        print(f"{drafter} {tree}: tau {tau:.2f}")
        assert tau > 1.2, (drafter, tree, tau)
        assert all(n["proposer"] for st in tr.steps for n in st["nodes"][1:-1])


def test_shipped_heads_load_fast_and_check_the_target(embedded_lm, tiny_lm):
    """Loading the shipped heads (uncached) takes well under a second; on another target they are refused by
    name before any forward."""
    import time
    from engine.methods.speculative import head_drafters as HD
    for kind in ("eagle", "medusa"):
        path = HD.shipped_heads(kind)
        with H._CACHE_LOCK:
            H._CACHE.clear()
        t0 = time.perf_counter()
        mod = H.load_eagle(path, embedded_lm) if kind == "eagle" else H.load_medusa(path, embedded_lm)
        dt = time.perf_counter() - t0
        print(f"{kind} heads load {dt * 1000:.0f} ms")
        assert mod is not None and dt < 3.0
        with pytest.raises(MethodError, match="hidden|vocab|layer"):
            run.prepare(tiny_lm, "speculative", PROMPT, max_new_tokens=4,
                        options={"drafter": kind, "heads": "trained"})


# ---- the drafts are what the heads compute from scratch -----------------------------------------------

def features(lm, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def eagle_path_q(lm, head, seq: list[int], path_tokens: list[int]) -> torch.Tensor:
    """The EAGLE head's distribution after committed `seq` + drafted `path_tokens`, computed causally from scratch."""
    f = features(lm, seq)
    L = len(seq)
    with torch.inference_mode():
        feats, toks = f[:L - 1], seq[1:]
        for t in path_tokens:                          # autoregressive on its own features
            out = head_forward(head, lm, feats, toks)
            feats, toks = torch.cat([feats, out[-1:]]), toks + [t]
        out = head_forward(head, lm, feats, toks)
        return lm.model.lm_head(out[-1]).float().softmax(-1)


def head_forward(head, lm, feats, toks):
    from transformers import DynamicCache
    n = len(toks)
    mask = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)[None, None]
    emb = lm.model.model.embed_tokens(torch.tensor([toks]))
    return head(feats[None], emb, torch.arange(n)[None], mask, DynamicCache())[0]


def recorded_trees(monkeypatch, cls) -> list:
    """Every tree the drafter proposes, with its full-precision q (the step records round to 1e-6)."""
    trees, orig = [], cls.propose

    def propose(self, ctx):
        t = orig(self, ctx)
        trees.append((list(ctx.seq), t))
        return t
    monkeypatch.setattr(cls, "propose", propose)
    return trees


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(a, b) + 1e-9


def sharp_eagle(lm):
    """An untrained head whose attention is far from uniform (N(0, 0.02) weights attend almost evenly, so a wrong
    position or mask would go unseen)."""
    head = H.random_eagle(lm, 0)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(10)
    return head


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["2.2.2", "dynamic"])
def test_eagle_drafts_equal_from_scratch(tiny_lm, monkeypatch, tree):
    """Every drafted node's q equals the head run causally from scratch over the committed pairs (features from
    a plain target forward) and the node's drafted ancestors: the head's cache, positions and tree mask are right."""
    from engine.methods.speculative.head_drafters import EagleDrafter
    lm = tiny_lm
    head = sharp_eagle(lm)
    monkeypatch.setattr(H, "random_eagle", lambda lm, seed: head)
    trees = recorded_trees(monkeypatch, EagleDrafter)
    run.run(lm, "speculative", PROMPT, max_new_tokens=10, options=opts("eagle", tree, k=3), record=False)
    checked = 0
    for seq, t in trees:
        for i, n in enumerate(t.nodes[1:], 1):
            path = [t.nodes[a].token for a in t.ancestors(n.parent)[:-1]][::-1]
            q = eagle_path_q(lm, head, seq, path)
            assert close(float(q[n.token]), n.q), (len(seq), i)
            checked += 1
    assert checked > 10 and len(trees) > 1


def test_medusa_drafts_equal_from_scratch(tiny_lm, monkeypatch):
    from engine.methods.speculative.head_drafters import MedusaDrafter
    lm = tiny_lm
    trees = recorded_trees(monkeypatch, MedusaDrafter)
    run.run(lm, "speculative", PROMPT, max_new_tokens=10, options=opts("medusa", "2.2", k=3), record=False)
    heads = H.random_medusa(lm, 0, num_heads=3)
    for seq, t in trees:
        f = features(lm, seq)[-2]             # the row that predicted the root
        with torch.inference_mode():
            q = heads(f).float().softmax(-1)
        for n in t.nodes[1:]:
            assert close(float(q[n.depth - 1, n.token]), n.q)
    assert len(trees) > 1


# ---- sampling is lossless with untrained heads ----------------------------------------------------------

@pytest.fixture(scope="module")
def exact3(tiny_lm):
    import tests.test_speculative_sampling as tss
    ids = tiny_lm.encode(tss.PROMPT, chat=False)[0].tolist()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tss, "T", 3)              # three tokens: the first round drafts two levels
        return ids, tss.exact_distribution(tiny_lm, ids)


@pytest.mark.slow
@pytest.mark.parametrize("o", [opts("medusa", "2.2", k=2), opts("eagle", "chain", k=2), opts("eagle", "dynamic", k=2)],
                         ids=["medusa-2.2", "eagle-chain", "eagle-dynamic"])
def test_sampling_preserves_target_distribution(tiny_lm, exact3, o):
    import tests.test_speculative_sampling as tss
    _, p = exact3
    runs = 400
    counts, statuses = Counter(), Counter()
    for seed in range(runs):
        tr = run.run(tiny_lm, "speculative", tss.PROMPT, max_new_tokens=3, chat=False, options=o,
                     sampling=SamplingConfig(seed=seed, **tss.CFG), record=seed < 60)
        counts[tuple(tr.final_ids)] += 1
        for st in tr.steps:
            statuses.update(n["status"] for n in st.get("nodes", []))
            if st["tree_size"]:
                assert st["stochastic"] is True
    emp = {k: v / runs for k, v in counts.items()}
    bound = tss.null_bound(p, runs)
    assert tss.tv(emp, p) < bound, (tss.tv(emp, p), bound)
    assert statuses["accepted"] > 0 and statuses["rejected"] > 0


# ---- checkpoints ----------------------------------------------------------------------------------

def medusa_ckpt(d, hidden=64, vocab=None, heads=3, layers=1, fmt="pt", prefix="", seed=5):
    vocab = vocab or _VOCAB[0]
    torch.manual_seed(seed)
    mod = H.MedusaHeads(hidden, vocab, heads, layers)
    sd = {prefix + k: v for k, v in mod.medusa_head.state_dict().items()}
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"medusa_num_heads": heads, "medusa_num_layers": layers, "base_model_name_or_path": "tiny"}, f)
    if fmt == "pt":
        torch.save(sd, os.path.join(d, "medusa_lm_head.pt"))
    else:
        from safetensors.torch import save_file
        save_file(sd, os.path.join(d, "model.safetensors"))
    return mod, sd


_VOCAB = [0]     # the tiny model's vocabulary, set by the fixture below


@pytest.fixture(scope="module", autouse=True)
def _vocab(tiny_lm):
    _VOCAB[0] = tiny_lm.model.get_output_embeddings().weight.shape[0]


def eagle_ckpt(lm, d, fmt="safetensors", hidden=None, drop=(), config_edit=None, seed=7):
    cfg = H.head_config(lm, 1)
    torch.manual_seed(seed)
    head = H.EagleHead(cfg)
    sd = dict(head.state_dict())
    for k in drop:
        sd.pop(k)
    os.makedirs(d, exist_ok=True)
    c = cfg.to_dict()
    c["architectures"] = ["LlamaForCausalLM"]
    if config_edit:
        c.update(config_edit)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f)
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, os.path.join(d, "model.safetensors"))
    else:
        torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    return head, sd


@pytest.mark.slow
@pytest.mark.parametrize("fmt,prefix", [("pt", ""), ("safetensors", "medusa_head.")])
def test_medusa_checkpoint_loads_and_decodes(tiny_lm, ar_ref, tmp_path, fmt, prefix):
    mod, _ = medusa_ckpt(tmp_path / "m", fmt=fmt, prefix=prefix)
    assert "0.0.linear.weight" in mod.medusa_head.state_dict() and "0.1.weight" in mod.medusa_head.state_dict()
    got = H.load_medusa(str(tmp_path / "m"), tiny_lm)
    h = torch.randn(64)
    with torch.inference_mode():
        assert torch.allclose(got(h), mod(h), atol=1e-6)
    tr = run.run(tiny_lm, "speculative", PROMPT, max_new_tokens=N,
                 options=opts("medusa", "2.2", heads=str(tmp_path / "m")))
    assert tr.final_ids == ar_ref and tr.extra["summary"]["trained"] is True
    assert tr.extra["summary"]["medusa_heads"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_eagle_checkpoint_loads_and_decodes(tiny_lm, ar_ref, tmp_path, fmt):
    head, sd = eagle_ckpt(tiny_lm, tmp_path / "e", fmt=fmt)
    assert {"fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight", "layers.0.mlp.down_proj.weight",
            "layers.0.post_attention_layernorm.weight"} <= set(sd)
    assert "layers.0.input_layernorm.weight" not in sd          # EAGLE's layer 0 has no input norm
    got = H.load_eagle(str(tmp_path / "e"), tiny_lm)
    feats, toks = torch.randn(5, 64), [5, 9, 11, 3, 7]
    with torch.inference_mode():
        assert torch.allclose(head_forward(got, tiny_lm, feats, toks), head_forward(head, tiny_lm, feats, toks),
                              atol=1e-5)
    tr = run.run(tiny_lm, "speculative", PROMPT, max_new_tokens=N,
                 options=opts("eagle", "dynamic", heads=str(tmp_path / "e")))
    assert tr.final_ids == ar_ref and tr.extra["summary"]["trained"] is True


def test_medusa_mismatches_are_named(tiny_lm, tmp_path):
    medusa_ckpt(tmp_path / "h", hidden=32)
    with pytest.raises(MethodError, match="hidden size 32; this model's hidden size is 64"):
        H.load_medusa(str(tmp_path / "h"), tiny_lm)
    medusa_ckpt(tmp_path / "v", vocab=1000)
    with pytest.raises(MethodError, match="vocabulary of 1000 tokens"):
        H.load_medusa(str(tmp_path / "v"), tiny_lm)
    _, sd = medusa_ckpt(tmp_path / "k")
    sd.pop("1.0.linear.bias")
    torch.save(sd, tmp_path / "k" / "medusa_lm_head.pt")
    with pytest.raises(MethodError, match=r"missing keys: 1\.0\.linear\.bias"):
        H.load_medusa(str(tmp_path / "k"), tiny_lm)
    sd["extra.weight"] = torch.zeros(1)
    sd["1.0.linear.bias"] = torch.zeros(64)
    torch.save(sd, tmp_path / "k" / "medusa_lm_head.pt")
    with pytest.raises(MethodError, match="unexpected keys: extra.weight"):
        H.load_medusa(str(tmp_path / "k"), tiny_lm)


def test_eagle_mismatches_are_named(tiny_lm, tmp_path):
    eagle_ckpt(tiny_lm, tmp_path / "c", config_edit={"hidden_size": 128})
    with pytest.raises(MethodError, match="hidden size 128 .config.json.; this model's hidden size is 64"):
        H.load_eagle(str(tmp_path / "c"), tiny_lm)
    eagle_ckpt(tiny_lm, tmp_path / "v", config_edit={"vocab_size": 1000})
    with pytest.raises(MethodError, match="vocabulary of 1000 tokens"):
        H.load_eagle(str(tmp_path / "v"), tiny_lm)
    eagle_ckpt(tiny_lm, tmp_path / "m", drop=("layers.0.mlp.down_proj.weight",))
    with pytest.raises(MethodError, match=r"missing keys: layers\.0\.mlp\.down_proj\.weight"):
        H.load_eagle(str(tmp_path / "m"), tiny_lm)
    eagle_ckpt(tiny_lm, tmp_path / "f", drop=("fc.weight",))
    with pytest.raises(MethodError, match="missing key fc.weight"):
        H.load_eagle(str(tmp_path / "f"), tiny_lm)
    eagle_ckpt(tiny_lm, tmp_path / "h", config_edit={"num_key_value_heads": 4})   # k/v projections twice as big
    with pytest.raises(MethodError, match=r"k_proj.weight has shape \[32, 64\], expected \[64, 64\]"):
        H.load_eagle(str(tmp_path / "h"), tiny_lm)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_pickle_with_code_is_refused(tiny_lm, tmp_path):
    flag = str(tmp_path / "code_ran")
    d = tmp_path / "evil"
    d.mkdir()
    with open(d / "medusa_lm_head.pt", "wb") as f:
        pickle.dump({"0.0.linear.weight": _Evil(flag)}, f)
    for load in (H.load_medusa, H.load_eagle):
        with pytest.raises(MethodError, match="weights_only=True"):
            load(str(d), tiny_lm)
    assert not os.path.exists(flag)


def count_forwards(lm):
    calls = []
    h = lm.model.model.register_forward_pre_hook(lambda *a, **k: calls.append(1))
    return calls, h


@pytest.mark.parametrize("o,msg", [
    (opts("medusa", heads=""), "needs heads"),
    (opts("eagle", heads="random:x"), "random:SEED"),
    (opts("eagle", heads="random:-1"), "random:SEED"),
    (opts("medusa", heads="/no/such/dir"), "No draft-head checkpoint"),
])
def test_bad_options_refused_before_any_forward(tiny_lm, o, msg):
    calls, h = count_forwards(tiny_lm)
    try:
        with pytest.raises(MethodError, match=msg):
            run.run(tiny_lm, "speculative", "Hello", max_new_tokens=4, options=o)
    finally:
        h.remove()
    assert not calls


def test_mismatched_checkpoint_refused_before_any_forward(tiny_lm, tmp_path):
    medusa_ckpt(tmp_path / "h", hidden=32)
    eagle_ckpt(tiny_lm, tmp_path / "e", drop=("fc.bias", "layers.0.self_attn.o_proj.weight"))
    calls, h = count_forwards(tiny_lm)
    try:
        with pytest.raises(MethodError, match="hidden size 32"):
            run.prepare(tiny_lm, "speculative", "Hello", max_new_tokens=4, options=opts("medusa", heads=str(tmp_path / "h")))
        with pytest.raises(MethodError, match="o_proj"):
            run.prepare(tiny_lm, "speculative", "Hello", max_new_tokens=4, options=opts("eagle", heads=str(tmp_path / "e")))
    finally:
        h.remove()
    assert not calls


# ---- the lab's own trained-head files (training/heads_train.py's save functions) ------------------

def test_lab_medusa_layout_shared_lm_head(tiny_lm, ar_ref, tmp_path):
    from training.heads_train import save_medusa
    mod = H.random_medusa(tiny_lm, 3, num_heads=3, num_layers=2)
    save_medusa(mod, tmp_path / "m", {"note": "test"}, tiny_lm)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["shared_lm_head"] is True and cfg["target_num_hidden_layers"] == tiny_lm.model.config.num_hidden_layers
    got = H.load_medusa(str(tmp_path / "m"), tiny_lm)
    assert got.num_heads == 3 and got.num_layers == 2
    # the final module of every head is the target's own LM head, not a copy
    assert all(seq[-1] is tiny_lm.model.get_output_embeddings() for seq in got.medusa_head)
    h = torch.randn(64)
    with torch.inference_mode():
        assert torch.allclose(got(h), mod(h), atol=1e-2)        # stored as float16
    tr = run.run(tiny_lm, "speculative", PROMPT, max_new_tokens=N,
                 options=opts("medusa", "2.2", heads=str(tmp_path / "m")))
    assert tr.final_ids == ar_ref and tr.extra["summary"]["trained"] is True


def test_lab_layouts_name_every_mismatch(tiny_lm, tmp_path):
    from safetensors.torch import load_file, save_file
    from training.heads_train import save_eagle, save_medusa
    save_medusa(H.random_medusa(tiny_lm, 3, num_heads=2), tmp_path / "m", {}, tiny_lm)
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "target_num_hidden_layers": 30, "target_model": "SmolLM2"}))
    with pytest.raises(MethodError, match=r"trained on the features of a 30-layer model \('SmolLM2'\); this model has 2 layers"):
        H.load_medusa(str(tmp_path / "m"), tiny_lm)
    cfg_path.write_text(json.dumps(cfg))
    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    sd["1.0.linear.weight"] = torch.zeros(64, 32, dtype=torch.float16)
    save_file(sd, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(MethodError, match=r"1\.0\.linear\.weight has shape \[64, 32\], expected \[64, 64\]"):
        H.load_medusa(str(tmp_path / "m"), tiny_lm)
    sd.pop("1.0.linear.weight")
    save_file(sd, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(MethodError, match=r"missing keys: 1\.0\.linear\.weight"):
        H.load_medusa(str(tmp_path / "m"), tiny_lm)
    head = H.random_eagle(tiny_lm, 1)
    save_eagle(head, tmp_path / "e", {}, tiny_lm)
    assert isinstance(H.load_eagle(str(tmp_path / "e"), tiny_lm), H.EagleHead)
    c = json.loads((tmp_path / "e" / "config.json").read_text())
    (tmp_path / "e" / "config.json").write_text(json.dumps({**c, "target_num_hidden_layers": 30}))
    with pytest.raises(MethodError, match="30-layer model"):
        H.load_eagle(str(tmp_path / "e"), tiny_lm)
