"""Training step time and peak memory on SmolLM2-135M, batch 8 x 256 tokens, CPU: MoSEs (N=8, top-2, r=4,
q/k/v/o) against peft LoRA r=8 (same active rank) and r=32 (same pool rank). Each adapter runs in its own
process so its peak memory is its own; ratios are against LoRA r=8 measured in the same run.

    python benchmarks/step_time.py [--steps 5] [--rounds 3] [--precisions fp32,bf16] [--adapters lora-r8,moses]

Under bf16 the step runs in `torch.autocast` (moses.precision.autocast), as a run with precision bf16 does;
every ratio is against LoRA r=8 in fp32 from the same round.
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


def one(name: str, steps: int, precision: str) -> dict:
    import torch

    from moses.data.loss import answer_loss
    from moses.models import load_model
    from moses.precision import autocast

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
        with autocast(precision, "cpu"):
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
    return {"adapter": name, "precision": precision, "median_step_s": statistics.median(times), "step_times_s": times,
            "peak_rss_bytes": peak.peak, "rss_before_steps_bytes": baseline, "trainable_parameters": trainable}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--adapters", default=",".join(ADAPTERS))
    parser.add_argument("--one", choices=ADAPTERS)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.precision)))
        return
    precisions = args.precisions.split(",")
    names = [f"{a} {p}" for a in args.adapters.split(",") for p in precisions]
    if "lora-r8 fp32" not in names:
        raise SystemExit("the reference, lora-r8 in fp32, must be among --adapters and --precisions")
    rounds: list[dict[str, dict]] = []
    for round_index in range(args.rounds):  # the adapters take turns, so slow phases of the CPU hit all of them
        runs = {}
        for name in names:
            adapter, precision = name.split()
            out = subprocess.run([sys.executable, __file__, "--one", adapter, "--precision", precision,
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True)
            runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {round_index + 1}/{args.rounds} {name}: median step {runs[name]['median_step_s']:.2f}s, "
                  f"peak {runs[name]['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
        rounds.append(runs)

    def per_round(name: str, key: str, against: str | None = None) -> list[float]:
        return [r[name][key] / (r[against][key] if against else 1) for r in rounds]

    rows = []
    for name in names:
        step_ratios = per_round(name, "median_step_s", "lora-r8 fp32")
        rows.append({"adapter": name, "median step s": statistics.median(per_round(name, "median_step_s")),
                     "step / LoRA r8 fp32": statistics.median(step_ratios),
                     "per round": " ".join(f"{v:.3f}" for v in step_ratios),
                     "peak GiB": statistics.median(per_round(name, "peak_rss_bytes")) / 2**30,
                     "peak / LoRA r8 fp32": statistics.median(per_round(name, "peak_rss_bytes", "lora-r8 fp32")),
                     "trainable params": rounds[0][name]["trainable_parameters"]})
    write_results("step_time", {"batch": BATCH, "tokens": TOKENS, "answer_tokens": ANSWER, "rounds": rounds}, rows,
                  list(rows[0]), notes="SmolLM2-135M (GGUF, float32 weights; bf16 rows under torch.autocast), CPU, "
                  f"batch {BATCH} x {TOKENS} tokens (loss on "
                  f"the last {ANSWER}), AdamW. Each adapter runs in its own process (its peak memory is its own): one "
                  f"warm-up, then the median of {args.steps} steps; the adapters take turns for {args.rounds} rounds "
                  "and a ratio is the median of the per-round ratios. Targets: MoSEs / LoRA r8 <= 1.10 for step time "
                  "and peak memory.")

if __name__ == "__main__":
    main()
