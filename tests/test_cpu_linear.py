"""engine/cpu_linear.py: oneDNN-packed linears on a float32 CPU model agree with F.linear, follow weight
changes, leave autograd and other dtypes on the ordinary path, and keep the model's parameters as they were."""
import pytest
import torch
from torch import nn

from engine import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this torch build has no oneDNN linear")


def packed(lin: nn.Linear) -> nn.Linear:
    holder = nn.Sequential(lin)
    assert cpu_linear.install(holder) == 1
    assert type(lin) is cpu_linear.PackedLinear
    return lin


@pytest.mark.parametrize("rows", [1, 2, 5, 17, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_agrees_with_f_linear(rows, bias):
    torch.manual_seed(rows)
    lin = nn.Linear(96, 160, bias=bias)
    x = torch.randn(1, rows, 96)
    ref = nn.functional.linear(x, lin.weight, lin.bias)
    packed(lin)
    with torch.no_grad():
        got = lin(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(lin.weight, torch.zeros_like(lin.weight))


def test_a_changed_weight_is_seen():
    torch.manual_seed(0)
    lin = packed(nn.Linear(32, 48, bias=False))
    x = torch.randn(3, 32)
    with torch.no_grad():
        first = lin(x)
        lin.weight.mul_(2.0)             # in place (an optimizer step, a LoRA merge)
        second = lin(x)
        lin.weight = nn.Parameter(torch.randn(48, 32))   # replaced
        third = lin(x)
    assert torch.allclose(second, 2 * first, rtol=1e-5, atol=1e-5)
    assert torch.allclose(third, x @ lin.weight.T, rtol=1e-5, atol=1e-5)


def test_a_packed_model_can_be_deep_copied():
    """engine/diffusion/adapters.py builds a diffusion model as a deep copy of the loaded one."""
    import copy
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    cpu_linear.install(m)
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref = m(x)                        # packs
        twin = copy.deepcopy(m)
        assert all(type(t) is cpu_linear.PackedLinear and "_dlab_packed" not in t.__dict__ for t in twin)
        twin[0].weight.add_(1.0)
        assert torch.allclose(m(x), ref) and not torch.allclose(twin(x), ref)


def test_autograd_and_other_dtypes_take_the_ordinary_path():
    torch.manual_seed(0)
    lin = packed(nn.Linear(16, 8))
    x = torch.randn(4, 16, requires_grad=True)
    lin(x).sum().backward()              # training through the module still works
    assert x.grad is not None and lin.weight.grad is not None
    assert "_dlab_packed" not in lin.__dict__
    with torch.no_grad():
        y = lin(torch.randn(4, 16, dtype=torch.float64).float())
        assert "_dlab_packed" in lin.__dict__ and y.shape == (4, 8)
    bf = nn.Sequential(nn.Linear(16, 8).to(torch.bfloat16))
    assert cpu_linear.install(bf) == 0 and type(bf[0]) is nn.Linear


def test_off_switch_and_size_cap(monkeypatch):
    m = nn.Sequential(nn.Linear(8, 8))
    monkeypatch.setenv("DECODING_LAB_ONEDNN_LINEAR", "0")
    assert cpu_linear.install(m) == 0 and type(m[0]) is nn.Linear
    monkeypatch.delenv("DECODING_LAB_ONEDNN_LINEAR")
    monkeypatch.setattr(cpu_linear, "MAX_BYTES", 100)
    assert cpu_linear.install(m) == 0 and type(m[0]) is nn.Linear


def test_the_embedded_model_is_packed_and_unchanged(embedded_lm):
    """The loaded model's linears are packed, tied weights stay tied, and stock() gives the plain modules back for
    a block (benchmarks run HF generate on them)."""
    lm = embedded_lm
    mods = [m for m in lm.model.modules() if isinstance(m, nn.Linear)]
    assert mods and all(type(m) is cpu_linear.PackedLinear for m in mods)
    assert lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    ids = lm.encode("Name three animals.")
    with torch.no_grad():
        a = lm.model(ids).logits[0, -1]
        with cpu_linear.stock(lm.model):
            assert all(type(m) is nn.Linear for m in mods)
            b = lm.model(ids).logits[0, -1]
    assert all(type(m) is cpu_linear.PackedLinear for m in mods)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4) and int(a.argmax()) == int(b.argmax())
