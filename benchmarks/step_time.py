"""Training step time and peak memory on SmolLM2-135M, batch 8 x 256 tokens, CPU: MoSEs (N=8, top-2, r=4,
q/k/v/o) against peft LoRA r=8 (same active rank) and r=32 (same pool rank). Each adapter runs in its own
process so its peak memory is its own; ratios are against LoRA r=8 measured in the same run.

    python benchmarks/step_time.py [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import PeakRSS, write_results

ADAPTERS = ("lora-r8", "lora-r32", "moses")
BATCH, TOKENS, ANSWER = 8, 256, 32


def wrap(name: str, base):
    if name == "moses":
        from moses import MoSEsConfig, get_moses_model

        model = get_moses_model(base, MoSEsConfig())
        model.add_task("bench")
        return model, model.optimizer_param_groups(3e-4)
    from peft import LoraConfig, get_peft_model

    rank = int(name.removeprefix("lora-r"))
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    return model, [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0, "lr": 3e-4}]


def one(name: str, steps: int) -> dict:
    import torch

    from moses.models import load_model
    from moses.runner.train import answer_loss

    torch.manual_seed(0)
    base, _ = load_model("smollm2-135m")
    model, groups = wrap(name, base)
    optimizer = torch.optim.AdamW(groups)
    ids = torch.randint(0, base.config.vocab_size, (BATCH, TOKENS))
    labels = ids.clone()
    labels[:, : TOKENS - ANSWER] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    model.train()

    def step() -> float:
        began = time.perf_counter()
        loss, _ = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - began

    step()  # warm-up
    baseline = PeakRSS.current()
    with PeakRSS() as peak:
        times = [step() for _ in range(steps)]
    trainable = sum(p.numel() for g in groups for p in g["params"])
    return {"adapter": name, "median_step_s": statistics.median(times), "step_times_s": times,
            "peak_rss_bytes": peak.peak, "rss_before_steps_bytes": baseline, "trainable_parameters": trainable}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", choices=ADAPTERS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps)))
        return
    runs = {}
    for name in ADAPTERS:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        run = runs[name]
        print(f"{name}: median step {run['median_step_s']:.2f}s, peak {run['peak_rss_bytes'] / 2**30:.2f} GiB",
              file=sys.stderr)
    ref = runs["lora-r8"]
    rows = [{"adapter": n, "median step s": r["median_step_s"],
             "step / LoRA r8": r["median_step_s"] / ref["median_step_s"], "peak GiB": r["peak_rss_bytes"] / 2**30,
             "peak / LoRA r8": r["peak_rss_bytes"] / ref["peak_rss_bytes"],
             "trainable params": r["trainable_parameters"]} for n, r in runs.items()]
    write_results("step_time", {"batch": BATCH, "tokens": TOKENS, "answer_tokens": ANSWER, "runs": runs}, rows,
                  list(rows[0]), notes=f"SmolLM2-135M (GGUF, float32), CPU, batch {BATCH} x {TOKENS} tokens (loss on "
                  f"the last {ANSWER}), AdamW, median of {args.steps} steps after one warm-up. Targets: MoSEs / "
                  "LoRA r8 <= 1.10 for step time and peak memory.")


if __name__ == "__main__":
    main()
