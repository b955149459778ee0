"""Greedy generation under bf16 autocast with and without `precision.frozen_weights_cast` (the frozen
projections computing with a bf16 copy of their weights made once, instead of autocast casting them at
every decoding step), on SmolLM2-135M, CPU. Models: peft LoRA r=8 unmerged and MoSEs (the package default,
reading R2, on its third task, TIL), both with frozen base weights as in a run's evaluation. Shapes: batch
x prompt tokens x new tokens. The two modes take turns within each round; a ratio is the time without the
cast copies over the time with them, median over rounds. Every pair's tokens are compared (bit-identical
math: the copy is autocast's own cast).

    python benchmarks/precast.py [--rounds 3] [--shapes 1x64x32,8x64x32,16x64x16,8x256x1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import random_lora, write_results

from moses import MoSEsConfig, get_moses_model
from moses.models import load_model
from moses.precision import autocast, frozen_weights_cast

SHAPES = "1x64x32,8x64x32,16x64x16,8x256x1"


def moses_model(base):
    model = get_moses_model(base, MoSEsConfig())
    for k in range(3):
        model.add_task(f"task-{k}")
        with torch.no_grad():
            for _, layer in model.moses_layers():
                layer.own_B[k].normal_(0, 0.01)
                if k:
                    layer.transfer_gates[k].fill_(0.2)
        model.end_task()
    model.set_task("task-2")
    return model


@torch.no_grad()
def generate(model, ids: torch.Tensor, new_tokens: int, precast: bool) -> torch.Tensor:
    with autocast("bf16", "cpu"), frozen_weights_cast(model, "bf16" if precast else "fp32"):
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, use_cache=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default=SHAPES, help="batch x prompt tokens x new tokens, comma-separated")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    torch.manual_seed(0)
    models = {}
    for name, build in (("lora-r8 unmerged", random_lora), ("moses TIL", moses_model)):
        base, _ = load_model("smollm2-135m")
        models[name] = build(base).eval()
    inputs = {shape: torch.randint(0, 49152, shape[:2], generator=torch.Generator().manual_seed(1))
              for shape in shapes}
    seconds = {(m, s, p): [] for m in models for s in shapes for p in (False, True)}
    identical = {(m, s): True for m in models for s in shapes}
    for model in models.values():  # warm-up: the first call of each shape, and the cast copies
        for shape in shapes:
            generate(model, inputs[shape], shape[2], True)
    for round_ in range(args.rounds):
        for name, model in models.items():
            for shape in shapes:
                outputs = {}
                for precast in (False, True) if round_ % 2 == 0 else (True, False):
                    began = time.perf_counter()
                    outputs[precast] = generate(model, inputs[shape], shape[2], precast)
                    seconds[(name, shape, precast)].append(time.perf_counter() - began)
                identical[(name, shape)] &= torch.equal(outputs[False], outputs[True])
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    rows, payload = [], []
    for name in models:
        for shape in shapes:
            without, with_ = seconds[(name, shape, False)], seconds[(name, shape, True)]
            ratios = [a / b for a, b in zip(without, with_, strict=True)]
            row = {"model": name, "batch x prompt x new": "x".join(map(str, shape)),
                   "s without": statistics.median(without), "s with": statistics.median(with_),
                   "without / with": statistics.median(ratios),
                   "range": f"{min(ratios):.3f}-{max(ratios):.3f}",
                   "same tokens": "yes" if identical[(name, shape)] else "NO"}
            rows.append(row)
            payload.append({**row, "seconds_without": without, "seconds_with": with_})
    notes = ("SmolLM2-135M, CPU, bf16 autocast; frozen base weights (peft LoRA r=8 unmerged; MoSEs R2 on its "
             f"third task, TIL). {args.rounds} rounds, the two modes in turn (order alternating by round); "
             "'without / with' is the median over rounds of the time without the cast copies over the time "
             "with them (above 1: the copies are faster). 'same tokens': every round's outputs equal.")
    write_results("precast", {"rounds": args.rounds, "torch": torch.__version__, "rows": payload}, rows,
                  ["model", "batch x prompt x new", "s without", "s with", "without / with", "range",
                   "same tokens"], notes)


if __name__ == "__main__":
    main()
