"""Where a training step's time goes: torch.profiler over a few SmolLM2-135M steps of one adapter (forward,
backward, AdamW), ops sorted by self CPU time. The tool behind issue 12's "profile it, don't guess".

    python benchmarks/profile_step.py --adapter moses --shape 8x64 --precision bf16 [--steps 3] [--task 2]

`--task k` ends k tasks first, so the profiled task borrows from k earlier ones (MoSEs R2 routes only then).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import MOSES_OPTIONS, training_adapter

from moses.data.loss import answer_loss
from moses.models import load_model
from moses.precision import autocast


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", default="moses", choices=["lora-r8", *MOSES_OPTIONS])
    parser.add_argument("--shape", default="8x64", help="batch x tokens")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--task", type=int, default=2, help="tasks ended before the profiled one (MoSEs)")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    batch_size, tokens = (int(v) for v in args.shape.split("x"))
    torch.manual_seed(0)
    base, _ = load_model("smollm2-135m")
    model, groups = training_adapter(args.adapter, base, 1e-3, args.task)
    optimizer = torch.optim.AdamW(groups)
    ids = torch.randint(0, base.config.vocab_size, (batch_size, tokens))
    labels = ids.clone()
    labels[:, : tokens - min(32, tokens // 2)] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model.train()

    def step() -> None:
        with autocast(args.precision, "cpu"):
            loss, _ = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    began = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"{args.adapter} {args.shape} {args.precision}: {(time.perf_counter() - began) / args.steps:.3f} s per "
          "step under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
