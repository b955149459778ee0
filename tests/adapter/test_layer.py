"""The layer math: batched forward against the loop reference, and the N=1 case against peft's LoRA."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from moses import MoSEsConfig
from moses.adapter.layer import MoSEsLayer

from conftest import R1


def trained_layer(base: nn.Module, config: MoSEsConfig, seed: int = 0) -> MoSEsLayer:
    torch.manual_seed(seed)
    layer = MoSEsLayer(base, config)
    with torch.no_grad():  # non-zero B so every subexpert contributes
        layer.lora_B.normal_(0, 0.5)
    layer.add_task()
    layer.context.training = layer.context.active = 0
    return layer


@pytest.mark.parametrize("routing", ["token", "task"])
@pytest.mark.parametrize("granularity", ["tensor", "subexpert"])
@pytest.mark.parametrize("router_input", ["hidden", "subexperts"])
@pytest.mark.parametrize("n,k", [(8, 2), (4, 4), (16, 3)])
def test_batched_forward_equals_per_subexpert_loop(routing, granularity, router_input, n, k):
    """Invariant 5."""
    config = MoSEsConfig(ownership="entries", num_subexperts=n, top_k=k, rank=3, routing=routing,
                         mask_granularity=granularity, router_input=router_input)
    layer = trained_layer(nn.Linear(24, 20), config)
    x = torch.randn(3, 7, 24)
    torch.testing.assert_close(layer.adapter_delta(x, 0), layer.reference_delta(x, 0), rtol=1e-5, atol=1e-6)
    layer.end_task(0)
    layer.context.training = None
    torch.testing.assert_close(layer.adapter_delta(x, 0), layer.reference_delta(x, 0), rtol=1e-5, atol=1e-6)


def test_new_adapter_leaves_base_output_unchanged():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = MoSEsLayer(base, MoSEsConfig(**R1))
    layer.add_task()
    layer.context.training = layer.context.active = 0
    x = torch.randn(2, 5, 16)
    assert torch.equal(layer(x), base(x))


def test_only_top_k_subexperts_receive_gradient_per_token():
    config = MoSEsConfig(**R1, num_subexperts=6, top_k=2, rank=2, task_density=1.0)
    layer = trained_layer(nn.Linear(10, 8), config)
    x = torch.randn(1, 1, 10)  # one token
    layer.adapter_delta(x, 0).sum().backward()
    touched = layer.lora_A.grad.abs().sum(dim=(1, 2)) > 0
    assert int(touched.sum()) == 2


@pytest.mark.parametrize("layer_kind", ["linear", "conv1d"])
def test_single_subexpert_full_mask_equals_peft_lora(layer_kind):
    """Invariant 4: N = 1, top-k = 1, c = 1 is a plain LoRA layer with the same A and B (peft as oracle)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    d_in, d_out, r = 24, 18, 4
    base = nn.Linear(d_in, d_out) if layer_kind == "linear" else Conv1D(d_out, d_in)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = base

        def forward(self, x):
            return self.proj(x)

    config = MoSEsConfig(**R1, num_subexperts=1, top_k=1, rank=r, alpha=6.0, task_density=1.0, target_modules=["proj"])
    layer = trained_layer(base, config)
    lora_config = peft.LoraConfig(r=r, lora_alpha=6, target_modules=["proj"], fan_in_fan_out=layer_kind == "conv1d")
    reference = peft.get_peft_model(Holder(), lora_config)
    lora_layer = reference.base_model.model.proj
    with torch.no_grad():
        lora_layer.lora_A["default"].weight.copy_(layer.lora_A[0])
        lora_layer.lora_B["default"].weight.copy_(layer.lora_B[0])
    x = torch.randn(2, 5, d_in)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-6)


def test_layer_rejects_unsupported_module():
    with pytest.raises(TypeError, match="Embedding"):
        MoSEsLayer(nn.Embedding(4, 4), MoSEsConfig())


def test_load_balance_loss_is_minimal_for_uniform_routing():
    config = MoSEsConfig(**R1, num_subexperts=4, top_k=1, load_balance_coef=1.0)
    layer = trained_layer(nn.Linear(8, 8), config)
    uniform = torch.zeros(4, 4)
    skewed = torch.tensor([[5.0, 0, 0, 0]] * 4)
    balanced = layer.load_balance_loss(uniform, torch.arange(4).unsqueeze(1))
    collapsed = layer.load_balance_loss(skewed, torch.zeros(4, 1, dtype=torch.long))
    assert balanced.item() == pytest.approx(1.0)
    assert collapsed.item() > 1.5


def test_inference_weight_cache_follows_stored_value_changes():
    layer = trained_layer(nn.Linear(12, 10), MoSEsConfig(**R1, num_subexperts=4, rank=2))
    layer.end_task(0)
    layer.context.training = None
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)  # served from the cache
        mask_b = layer.task_mask(0)[1]
        layer.lora_B[mask_b] += 1.0  # the trainable pool: an ended task never reads it
        assert torch.equal(layer(x), first)
        layer.frozen_values_B[mask_b] += 1.0  # an in-place change of the stored values the task reads
        changed = layer(x)
    assert not torch.equal(changed, first)
    torch.testing.assert_close(changed, layer.base_layer(x) + layer.reference_delta(x, 0))
