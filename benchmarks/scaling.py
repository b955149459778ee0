"""One attention projection of SmolLM2's size (576 -> 576), batch 8 x 256 tokens: MoSEs forward time for
N = 2..64 subexperts and top-k 1, 2, 4 (r = 4), against a peft LoRA layer of the same active rank (k * r),
with the per-subexpert loop reference beside it.

    python benchmarks/scaling.py
"""

from __future__ import annotations

import torch
from common import interleaved_ratios, median_seconds, write_results
from torch import nn

from moses import MoSEsConfig
from moses.adapter.layer import MoSEsLayer

D, TOKENS, RANK = 576, 8 * 256, 4
ROUNDS = 7  # interleaved rounds of 5 calls each; the ratio is the median of the per-round ratios


def lora_layer(rank: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(D, D, bias=False)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(Holder(), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"]))
    return model.base_model.model.proj


def moses_layer(n: int, k: int) -> MoSEsLayer:
    layer = MoSEsLayer(nn.Linear(D, D, bias=False),  # reading R1: the dense stacked forward over all N
                       MoSEsConfig(ownership="entries", router_input="hidden", num_subexperts=n, top_k=k, rank=RANK))
    layer.add_task()
    layer.end_task(0)  # inference with a stored mask, as at test time
    layer.context.active = 0
    return layer


def flop_ratio(n: int, k: int) -> float:
    """Multiply-adds per token of MoSEs' dense stacked forward (base, every subexpert's down-projection fused
    with the router's N logits, every up-projection) over LoRA's of rank k*r: what the ratio would be if the
    CPU were compute-bound. All N subexperts are computed; the gates zero all but k of them afterwards."""
    base = D * D
    moses = base + D * (n * RANK + n) + n * RANK * D
    lora = base + 2 * D * k * RANK
    return moses / lora


@torch.no_grad()
def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(TOKENS, D)
    rows = []
    for k in (1, 2, 4):
        lora = lora_layer(k * RANK)
        for n in (2, 4, 8, 16, 32, 64):
            if k > n:
                continue
            layer = moses_layer(n, k)
            timed = interleaved_ratios(lambda: layer(x), lambda: lora(x), rounds=ROUNDS, repeats=5)  # noqa: B023
            lora_s = timed["reference_s"]
            loop_s = median_seconds(lambda: layer.base_layer(x) + layer.reference_delta(x, 0), repeats=5)  # noqa: B023
            rows.append({"top_k": k, "N": n, "LoRA rank": k * RANK, "LoRA ms": 1e3 * lora_s,
                         "MoSEs ms": 1e3 * timed["candidate_s"], "MoSEs / LoRA": timed["ratio"],
                         "ratio min": timed["ratio_min"], "ratio max": timed["ratio_max"],
                         "FLOP ratio": flop_ratio(n, k), "loop ms": 1e3 * loop_s,
                         "loop / LoRA": loop_s / lora_s})
    write_results("scaling", {"d": D, "tokens": TOKENS, "rank": RANK, "rows": rows}, rows, list(rows[0]),
                  notes=f"Forward of one {D}x{D} projection with its adapter on {TOKENS} tokens, CPU, no grad. MoSEs "
                  f"and LoRA are timed alternately, {ROUNDS} rounds of 5 calls; MoSEs / LoRA is the median of the "
                  "per-round ratios (min and max beside it); FLOP ratio: multiply-adds per token of the dense stacked "
                  "forward over LoRA's (the ratio a compute-bound CPU would show); loop: median of 5. Target: MoSEs / "
                  "LoRA <= 1.2 up to N = 16.")


if __name__ == "__main__":
    main()
