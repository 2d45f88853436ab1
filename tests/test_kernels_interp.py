"""Triton kernels vs their torch references, run by Triton's CPU interpreter (TRITON_INTERPRET=1).

Triton reads TRITON_INTERPRET when it is imported (its own library functions are jitted then), and
loading a transformers model imports triton, so these tests cannot switch the interpreter on inside
a shared pytest session: `make test` runs this module as a second pytest process with the variable
set (`make test-interp`, or by hand `TRITON_INTERPRET=1 pytest -m interp tests/test_kernels_interp.py`),
each test reported on its own.
Tolerances are absolute, against the reference computed in fp32 from the same (rounded) inputs:
  attention outputs: fp32 1e-5, fp16 2e-3, bf16 2e-2; attention mass: 1e-5 (fp32 in every dtype,
  which only moves q and k by their rounding); confidence: probabilities 1e-5, entropy 1e-4.
"""
from __future__ import annotations

import os

import pytest
import torch
from transformers import DynamicCache

from kernels import confidence as C
from kernels import decode_attention as DA
from engine import attention
from kernels import dispatch as KD
from kernels import tree_attention as TA

if os.environ.get("TRITON_INTERPRET") == "1":
    import triton  # noqa: F401 -- under the interpreter (make test-interp) a missing triton is a failure, not a skip
else:
    pytest.importorskip("triton")
# DECODING_LAB_KERNEL_DEVICE=cuda (benchmarks/gpu_check.py): the kernel-vs-reference tests compiled on a GPU
DEVICE = os.environ.get("DECODING_LAB_KERNEL_DEVICE", "cpu")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and DEVICE == "cpu",
                                reason="needs TRITON_INTERPRET=1 from process start: make test-interp")

ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def kernel_path(monkeypatch):
    monkeypatch.delenv(KD.FORCE_TORCH_ENV, raising=False)


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


# ---------------------------------------------------------------------------------------------
# trees

def chain(t):
    return list(range(-1, t - 1))


def bushy(t):  # binary heap shape: node i's parent is (i - 1) // 2
    return [-1] + [(i - 1) // 2 for i in range(1, t)]


def forest(t):  # every node a root: each sees the prefix and itself only
    return [-1] * t


def random_tree(t, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-1] + [int(torch.randint(-1, i, (1,), generator=g)) for i in range(1, t)]


def lookahead_like(t):
    """Not a tree: a visibility pattern (each token sees itself and every third earlier token,
    like lookahead's window diagonals), given as a bool [T, T] matrix."""
    i = torch.arange(t)
    return (i[:, None] >= i[None, :]) & ((i[:, None] - i[None, :]) % 3 == 0)


TREES = {"chain": chain, "bushy": bushy, "forest": forest, "random": random_tree, "pattern": lookahead_like}


def test_ancestor_bitmask_matches_matrix():
    parents = torch.tensor(random_tree(70, seed=3))  # 3 words per row, bit 31 used
    anc = TA.ancestor_matrix(parents)
    # brute force: walk up from every node
    for i in range(70):
        seen, j = {i}, int(parents[i])
        while j >= 0:
            seen.add(j)
            j = int(parents[j])
        assert set(torch.nonzero(anc[i]).flatten().tolist()) == seen
    words = TA.pack_bits(anc)
    assert words.dtype == torch.int32 and words.shape == (70, 3)
    unpacked = ((words.to(torch.int64).unsqueeze(-1) >> torch.arange(32)) & 1).reshape(70, 96)[:, :70].bool()
    assert torch.equal(unpacked, anc)
    tree = KD.Tree.from_parents(parents)
    assert tree.depths()[0] == 0 and int(tree.depths().max()) == int(anc.sum(-1).max()) - 1
    assert KD.Tree.from_parents(chain(5)).chain and not KD.Tree.from_parents(bushy(5)).chain


@pytest.mark.parametrize("parents", [[0, 0], [-1, 1], [-1, 2, 0], [-2]])
def test_bad_parents_rejected(parents):
    with pytest.raises(ValueError):
        TA.as_parents(parents, len(parents))


TREE_SHAPES = [  # (B, Hq, Hkv, prefix P, tree nodes T, head dim D)
    (1, 2, 2, 0, 1, 16),      # one node, no prefix, MHA
    (1, 3, 1, 7, 5, 16),      # GQA 3, odd lengths
    (2, 4, 1, 13, 9, 32),     # GQA 4, batch 2
    (1, 8, 2, 37, 33, 24),    # T > 32 (two bitmask words), head dim not a power of two
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("shape", TREE_SHAPES, ids=str)
def test_tree_attention_kernel_matches_reference(shape, tree, dtype):
    b, hq, hkv, p, t, d = shape
    q, k, v = rand(b, hq, t, d, dtype=dtype, seed=1), rand(b, hkv, p + t, d, dtype=dtype, seed=2), \
        rand(b, hkv, p + t, d, dtype=dtype, seed=3)
    if tree == "pattern":
        vis = lookahead_like(t)
        ref = TA.tree_attention_torch(q.float(), k.float(), v.float(), p, visibility=vis)
        kw, structure = dict(ancestors=TA.pack_bits(vis)), KD.Tree.from_visibility(vis)
    else:
        parents = TREES[tree](t)
        ref = TA.tree_attention_torch(q.float(), k.float(), v.float(), p, parents)
        kw, structure = dict(parents=parents), parents
    # small tiles (several per row); prefix split in 16-key ranges (P = 37: three splits + merge)
    out = TA.tree_attention_triton(q, k, v, p, block_n=16, split_len=16, **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref, atol=ATOL[dtype], rtol=0)
    via_dispatch = KD.tree_attention(q, k, v, p, structure)
    torch.testing.assert_close(via_dispatch.float(), ref, atol=ATOL[dtype], rtol=0)


def test_tree_attention_sees_only_ancestors():
    """Changing a non-ancestor's key/value must not move a node's output; changing an ancestor's must."""
    b, hq, hkv, p, t, d = 1, 4, 2, 6, 7, 16
    q, k, v = rand(b, hq, t, d, seed=1), rand(b, hkv, p + t, d, seed=2), rand(b, hkv, p + t, d, seed=3)
    parents = [-1, 0, 0, 1, 1, 2, -1]         # node 3's ancestors: 1, 0
    base = TA.tree_attention_triton(q, k, v, p, parents)
    v2 = v.clone()
    v2[:, :, p + 2] += 5.0                    # node 2: not an ancestor of 3, an ancestor of 5
    out = TA.tree_attention_triton(q, k, v2, p, parents)
    assert torch.equal(out[:, :, 3], base[:, :, 3]) and torch.equal(out[:, :, 6], base[:, :, 6])
    assert not torch.allclose(out[:, :, 5], base[:, :, 5])
    v3 = v.clone()
    v3[:, :, 1] += 5.0                        # a prefix entry: everyone sees it
    out = TA.tree_attention_triton(q, k, v3, p, parents)
    assert all(not torch.allclose(out[:, :, i], base[:, :, i]) for i in range(t))


def test_tree_attention_shape_errors():
    q, k = rand(1, 4, 3, 16), rand(1, 2, 9, 16)
    with pytest.raises(ValueError, match="prefix"):
        KD.tree_attention(q, k, k, 5, chain(3))   # 5 + 3 != 9
    with pytest.raises(ValueError, match="grouped"):
        KD.tree_attention(rand(1, 3, 3, 16), k, k, 6, chain(3))


# ---------------------------------------------------------------------------------------------
# decode attention + mass

DECODE_SHAPES = [  # (B, Hq, Hkv, queries Tq, keys S, D, split length)
    (1, 4, 4, 1, 5, 16, None),    # GQA 1, fewer keys than a tile
    (2, 6, 2, 1, 77, 32, 16),     # GQA 3, five splits, odd length
    (1, 8, 2, 1, 130, 64, 32),    # GQA 4
    (1, 12, 4, 5, 50, 24, 16),    # a causal window of 5 queries (SnapKV-style), D not a power of two
    (1, 16, 1, 5, 40, 16, 16),    # 80 rows per KV head: two row blocks
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=str)
def test_decode_attention_with_mass_matches_reference(shape, dtype):
    b, hq, hkv, tq, s, d, split = shape
    q, k, v = rand(b, hq, tq, d, dtype=dtype, seed=4), rand(b, hkv, s, d, dtype=dtype, seed=5), \
        rand(b, hkv, s, d, dtype=dtype, seed=6)
    ref_out, ref_mass = DA.decode_attention_torch(q.float(), k.float(), v.float())
    out, mass = DA.decode_attention_triton(q, k, v, split_len=split, block_n=16)
    assert out.dtype == dtype and mass.dtype == torch.float32 and mass.shape == (b, hkv, s)
    torch.testing.assert_close(out.float(), ref_out, atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(mass, ref_mass, atol=1e-5, rtol=0)
    # every query row's probabilities sum to one: a KV head's mass sums to its G * Tq rows
    torch.testing.assert_close(mass.sum(-1), torch.full((b, hkv), float(hq // hkv * tq)), atol=1e-4, rtol=0)
    if tq > 1:  # the last key is seen only by the last query of each head
        torch.testing.assert_close(mass[..., -1], ref_mass[..., -1], atol=1e-6, rtol=0)


def test_decode_default_split_and_dispatch():
    q, k, v = rand(1, 9, 1, 64, seed=7), rand(1, 3, 300, 64, seed=8), rand(1, 3, 300, 64, seed=9)
    out, mass = KD.decode_attention_with_mass(q, k, v)
    ref_out, ref_mass = DA.decode_attention_torch(q, k, v)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(mass, ref_mass, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# confidence

CONF_SHAPES = [  # (logits shape, temperature, vocab tile)
    ((3, 50), 1.0, 16),           # four tiles, the last one partial
    ((2, 5, 1000), 0.7, 128),     # leading dims kept
    ((4, 4099), 1.5, None),       # vocab not a power of two, one tile of 4096 + a tail
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CONF_SHAPES, ids=str)
def test_confidence_matches_reference(case, dtype):
    shape, temp, block = case
    x = (rand(*shape, seed=10) * 4).to(dtype)
    x[..., 3] = float("-inf")     # a suppressed token (e.g. a banned id): probability exactly 0
    ids = torch.randint(0, shape[-1], shape[:-1], generator=torch.Generator().manual_seed(12))
    ids.view(-1)[0] = 3           # the suppressed token: probability 0
    ref = C.confidence_torch(x, temp, ids)
    got = C.confidence_triton(x, temp, ids, block_v=block)
    assert got.max_prob.shape == shape[:-1] and got.argmax.dtype == torch.int64
    torch.testing.assert_close(got.max_prob, ref.max_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.margin, ref.margin, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.entropy, ref.entropy, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.token_prob, ref.token_prob, atol=1e-6, rtol=1e-4)
    assert float(got.token_prob.view(-1)[0]) == 0.0
    assert torch.equal(got.argmax, (x.float() / temp).argmax(-1))
    via_dispatch = KD.confidence(x, temp)
    assert via_dispatch.token_prob is None
    torch.testing.assert_close(via_dispatch.entropy, ref.entropy, atol=1e-4, rtol=0)


def test_confidence_full_llada_vocab_and_ties():
    x = rand(2, 126464, seed=11) * 3
    x[1, 5000] = x[1, 90000] = x[1].max() + 2.0   # tied maximum in two different tiles
    ref, got = C.confidence_torch(x, 1.0), C.confidence_triton(x, 1.0)
    torch.testing.assert_close(got.max_prob, ref.max_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.entropy, ref.entropy, atol=1e-4, rtol=0)
    assert got.argmax.tolist() == [int(x[0].argmax()), 5000]       # first of the tied maxima
    assert float(got.margin[1]) == 0.0


def test_confidence_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        KD.confidence(rand(2, 10), 0.0)
    with pytest.raises(ValueError, match="ids"):
        KD.confidence(rand(2, 10), 1.0, ids=torch.tensor([1, 10]))


# ---------------------------------------------------------------------------------------------
# dispatcher

def test_lab_attention_keeps_bidirectional_modules_bidirectional():
    """A non-causal attention module (a diffusion LM's) must not get the causal kernel path."""
    class Module:
        is_causal, layer_idx, num_key_value_groups = False, 0, 2
    q, k = rand(1, 4, 6, 16, seed=1), rand(1, 2, 6, 16, seed=2)
    out, _ = KD.lab_attention_forward(Module(), q, k, k, None, scaling=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, k, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=0)
    Module.is_causal = True
    causal, _ = KD.lab_attention_forward(Module(), q, k, k, None, scaling=0.25)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, k, scale=0.25, enable_gqa=True, is_causal=True)
    torch.testing.assert_close(causal, ref.transpose(1, 2), atol=1e-5, rtol=0)


def test_backend_selection(monkeypatch):
    x = torch.zeros(2)
    assert KD.backend(x) == "triton" and KD.enabled("cpu")          # interpreter on (fixture)
    monkeypatch.setenv(KD.FORCE_TORCH_ENV, "1")
    assert KD.backend(x) == "torch" and not KD.enabled("cuda")
    monkeypatch.delenv(KD.FORCE_TORCH_ENV)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert KD.backend(x) == "torch" and not KD.enabled("cpu") and KD.enabled("cuda")


# ---------------------------------------------------------------------------------------------
# the engine through the kernels (tiny random Llama, GQA 2)

@pytest.fixture(scope="module")
def lm():
    from tests.conftest import make_tiny_lm
    return make_tiny_lm(seed=1)


class Spy:
    """Counts calls of a kernel wrapper, so a test knows the Triton path really ran."""
    def __init__(self, monkeypatch, module, name):
        self.calls, original = 0, getattr(module, name)

        def wrapped(*a, **kw):
            self.calls += 1
            return original(*a, **kw)
        monkeypatch.setattr(module, name, wrapped)


PROMPT = "The quick brown fox"


@pytest.mark.parametrize("force_torch", [False, True], ids=["triton-interpreter", "torch-reference"])
def test_engine_greedy_unchanged_with_lab_attention(lm, monkeypatch, force_torch):
    from engine import run
    want = run.run(lm, "ar", PROMPT, max_new_tokens=16).final_ids
    if force_torch:
        monkeypatch.setenv(KD.FORCE_TORCH_ENV, "1")
    spy = Spy(monkeypatch, TA, "tree_attention_triton")
    before = lm.model.config._attn_implementation
    with attention.kernels(lm.model):
        # per call, in this thread: the shared model's config is not switched
        assert lm.model.config._attn_implementation == before or attention.installed(lm.model)
        got = run.run(lm, "ar", PROMPT, max_new_tokens=16).final_ids
    assert attention.original(lm.model) == "sdpa"
    assert got == want
    layers = lm.model.config.num_hidden_layers
    assert spy.calls == (0 if force_torch else layers * len(want))


def test_engine_decode_with_attention_mass(lm, monkeypatch):
    """Greedy decoding through decode_attention_with_mass: same tokens as AR, and each layer's
    mass equals eager attention's probabilities summed over the group's heads."""
    from engine import run
    want = run.run(lm, "ar", PROMPT, max_new_tokens=12).final_ids
    spy = Spy(monkeypatch, DA, "decode_attention_triton")
    cfg = lm.model.config
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    ids = lm.encode(PROMPT)
    cache, got = DynamicCache(), []
    with torch.inference_mode(), attention.kernels(lm.model):
        logits = lm.model(input_ids=ids, past_key_values=cache).logits[0, -1]
        for _ in range(12):
            tok = int(logits.argmax())
            got.append(tok)
            masses = {}
            out = lm.model(input_ids=torch.tensor([[tok]]), past_key_values=cache, attention_mass=masses)
            logits = out.logits[0, -1]
    assert got == want
    assert spy.calls == 12 * cfg.num_hidden_layers
    assert sorted(masses) == list(range(cfg.num_hidden_layers))
    seq = ids.shape[1] + 12
    # the last step's masses against eager attention (output_attentions) on the same sequence
    full = torch.cat([ids, torch.tensor([got])], dim=1)
    previous = cfg._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            eager = lm.model(input_ids=full, output_attentions=True).attentions
    finally:
        lm.model.set_attn_implementation(previous)
    for layer, mass in masses.items():
        assert mass.shape == (1, cfg.num_key_value_heads, seq)
        ref = eager[layer][:, :, -1, :].reshape(1, cfg.num_key_value_heads, group, seq).sum(2)
        torch.testing.assert_close(mass, ref, atol=1e-5, rtol=0)


def test_engine_tree_verification_matches_dense_mask(lm, monkeypatch):
    """One forward over a token tree through the kernel gives the logits of the dense-mask SDPA
    forward, and the greedy path through the tree reproduces AR's tokens."""
    from engine import run
    want = run.run(lm, "ar", PROMPT, max_new_tokens=6).final_ids
    ids = lm.encode(PROMPT)
    p = ids.shape[1] - 1     # cache the prompt but its last token; the tree hangs off the cache
    # root = the prompt's last token; a chain of AR's next tokens, each with a wrong sibling
    wrong = [(t + 17) % lm.model.config.vocab_size for t in want[:4]]
    tokens = [int(ids[0, -1]), want[0], wrong[0], want[1], wrong[1], want[2], wrong[2], want[3]]
    parents = [-1, 0, 0, 1, 1, 3, 3, 5]
    tree = KD.Tree.from_parents(parents)
    tree_ids = torch.tensor([tokens])
    positions = tree.position_ids(p)

    def forward(**kw):
        cache = DynamicCache()
        with torch.inference_mode():
            lm.model(input_ids=ids[:, :p], past_key_values=cache)
            return lm.model(input_ids=tree_ids, position_ids=positions, past_key_values=cache, **kw).logits[0]

    ref = forward(attention_mask=tree.dense_mask(p)[None, None])     # sdpa, 4D mask used as given
    spy = Spy(monkeypatch, TA, "tree_attention_triton")
    with attention.kernels(lm.model):
        got = forward(tree_parents=tree)
    assert spy.calls == 2 * lm.model.config.num_hidden_layers   # the prefix forward (causal) + the tree
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    with attention.kernels(lm.model):
        same = forward(tree_visibility=tree.ancestry)            # the same pattern given as a matrix
        masked = forward(attention_mask=tree.dense_mask(p)[None, None])   # a caller's 4D mask: SDPA
        with pytest.raises(ValueError, match="not both"):
            forward(tree_parents=tree, attention_mask=tree.dense_mask(p)[None, None])
    torch.testing.assert_close(same, got, atol=1e-6, rtol=0)
    torch.testing.assert_close(masked, ref, atol=1e-6, rtol=0)
    # greedy walk: from the root, follow the child whose token is the argmax of its parent
    node, accepted = 0, []
    while True:
        nxt = int(got[node].argmax())
        accepted.append(nxt)
        child = [i for i in range(len(tokens)) if parents[i] == node and tokens[i] == nxt]
        if not child:
            break
        node = child[0]
    assert accepted == want[:len(accepted)] and len(accepted) == 5   # 4 accepted + the bonus token


def test_benchmark_script_smoke(capsys):
    """benchmarks/kernels.py end to end on tiny CPU shapes (the script's logic, not its timings)."""
    from benchmarks import kernels as bench
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    for title in ("tree-verification attention", "decode attention", "confidence", "model forward"):
        assert title in out
    assert "nan" not in out


# ---------------------------------------------------------------------------------------------
# the methods the app exposes, through the kernels (what runs on CUDA), against their torch paths

def _both_paths(monkeypatch, fn):
    """fn() once with the kernels forced off (torch path) and once through the interpreter."""
    monkeypatch.setenv(KD.FORCE_TORCH_ENV, "1")
    ref = fn()
    monkeypatch.delenv(KD.FORCE_TORCH_ENV)
    return ref, fn()


def test_kv_method_uses_the_mass_kernel(lm, monkeypatch):
    from engine import run
    opts = {"policy": "h2o", "budget": 8, "compare_full": False, "watch_layers": "all"}
    spy = Spy(monkeypatch, DA, "decode_attention_triton")
    ref, got = _both_paths(monkeypatch, lambda: run.run(lm, "kv", PROMPT, max_new_tokens=12, options=opts))
    assert spy.calls > 0
    assert got.final_ids == ref.final_ids
    kept = lambda tr: [{li: v["kept"] for li, v in s["layers"].items()} for s in tr.steps if "layers" in s]
    assert kept(got) and kept(got) == kept(ref)  # the same entries evicted in every layer and head


def test_lookahead_uses_the_tree_kernel(lm, monkeypatch):
    from engine import run
    spy = Spy(monkeypatch, TA, "tree_attention_triton")
    prompt = "one two three one two three one two three one two"
    ref, got = _both_paths(monkeypatch, lambda: run.run(lm, "lookahead", prompt, max_new_tokens=12))
    assert spy.calls > 0
    assert got.final_ids == ref.final_ids == run.run(lm, "ar", prompt, max_new_tokens=12).final_ids


@pytest.mark.parametrize("opts", [{"drafter": "prompt_lookup"}, {"drafter": "token_recycling", "tree": "2.2.2"},
                                  {"drafter": "early_exit", "tree": "dynamic", "exit_layer": 1}],
                         ids=["chain", "static-tree", "dynamic-tree"])
def test_speculative_uses_the_tree_kernel(lm, monkeypatch, opts):
    from engine import run
    spy = Spy(monkeypatch, TA, "tree_attention_triton")
    prompt = "one two three one two three one two three one two"
    ref, got = _both_paths(monkeypatch, lambda: run.run(lm, "speculative", prompt, max_new_tokens=12, options=opts))
    assert spy.calls > 0
    assert got.final_ids == ref.final_ids == run.run(lm, "ar", prompt, max_new_tokens=12).final_ids


@pytest.mark.parametrize("rule", ["low_confidence", "topk_margin", "entropy", "threshold", "credit"])
def test_diffusion_uses_the_confidence_kernel(monkeypatch, rule):
    from engine import run
    from engine.diffusion.adapters import DiffusionAdapter
    from tests.conftest import make_tiny_lm
    m = make_tiny_lm(seed=3)
    with torch.no_grad():  # peaked distributions: a random model's are near-uniform, so its entropies tie in fp32
        m.model.lm_head.weight.mul_(40)
    m.diffusion = DiffusionAdapter(m.model, 16, shift=False, bidirectional=True, name="tiny-bidir", eos_ids=m.eos_ids)
    spy = Spy(monkeypatch, C, "confidence_triton")
    opts = {"rule": rule, "steps": 6, "gen_length": 12, "block_length": 4, "stop_at_eos": False,
            "threshold": 0.05}
    ref, got = _both_paths(monkeypatch, lambda: run.run(m, "diffusion", "Once upon a time", max_new_tokens=12,
                                                        options=opts))
    assert spy.calls > 0
    assert got.final_ids == ref.final_ids
    assert [s.get("new_ids") for s in got.steps] == [s.get("new_ids") for s in ref.steps]  # same order of commits
