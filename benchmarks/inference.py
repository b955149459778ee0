"""Inference speed on SmolLM2-135M, CPU: prefill throughput (batch 8 x 256 tokens) and greedy generation
(batch 8, 64-token prompts, 32 new tokens) for MoSEs in TIL against peft LoRA r=8 unmerged and merged, and
the merged export of a task-routed MoSEs task against the base model. Ratios are within this run.

    python benchmarks/inference.py
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from common import write_results
from tqdm import tqdm

from moses import MoSEsConfig, get_moses_model
from moses.models import load_model

BATCH, PREFILL, PROMPT, NEW = 8, 256, 64, 32


def lora(base, merged: bool):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return model.merge_and_unload() if merged else model


def moses(base, routing: str, merged: bool = False):
    model = get_moses_model(base, MoSEsConfig(routing=routing))
    model.add_task("bench")
    with torch.no_grad():
        for _, layer in model.moses_layers():
            layer.lora_B.normal_(0, 0.01)
    model.end_task()
    model.set_task("bench")
    return model.merge_task("bench") if merged else model


REFERENCES = {"base": "base", "lora-r8 unmerged": "lora-r8 unmerged", "lora-r8 merged": "base",
              "moses token TIL": "lora-r8 unmerged", "moses task TIL": "lora-r8 unmerged", "moses task merged": "base"}
ROUNDS = 5  # every model once per round, in turn; ratios are taken within a round, then the median


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


@torch.no_grad()
def main() -> None:
    torch.manual_seed(0)
    base, _ = load_model("smollm2-135m")
    builds = {
        "base": lambda b: b,
        "lora-r8 unmerged": lambda b: lora(b, merged=False),
        "lora-r8 merged": lambda b: lora(b, merged=True),
        "moses token TIL": lambda b: moses(b, "token"),
        "moses task TIL": lambda b: moses(b, "task"),
        "moses task merged": lambda b: moses(b, "task", merged=True),
    }
    models = {name: build(copy.deepcopy(base)).eval() for name, build in builds.items()}
    generator = torch.Generator().manual_seed(0)
    long_ids = torch.randint(0, base.config.vocab_size, (BATCH, PREFILL), generator=generator)
    prompt = torch.randint(0, base.config.vocab_size, (BATCH, PROMPT), generator=generator)

    def prefill(model):
        return lambda: model(input_ids=long_ids, use_cache=False)

    def generate(model):
        return lambda: model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                                      min_new_tokens=NEW, do_sample=False, pad_token_id=0)

    for model in models.values():  # warm-up
        prefill(model)()
        generate(model)()
    seconds = {name: {"prefill": [], "generate": []} for name in models}
    for _ in tqdm(range(ROUNDS), desc="rounds"):
        for name, model in models.items():
            seconds[name]["prefill"].append(timed(prefill(model)))
            seconds[name]["generate"].append(timed(generate(model)))
    rows = []
    for name, reference in REFERENCES.items():
        row = {"model": name, "against": reference}
        for kind, tokens in (("prefill", BATCH * PREFILL), ("generate", BATCH * NEW)):
            pairs = zip(seconds[name][kind], seconds[reference][kind], strict=True)
            ratios = [r / c for c, r in pairs]  # throughput ratio = inverse time ratio
            row[f"{kind} tok/s"] = tokens / statistics.median(seconds[name][kind])
            row[f"{kind} ratio"] = statistics.median(ratios)
            row[f"{kind} ratio range"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
        rows.append(row)
    write_results("inference", {"batch": BATCH, "prefill_tokens": PREFILL, "prompt_tokens": PROMPT,
                                "new_tokens": NEW, "rounds": ROUNDS, "seconds": seconds}, rows, list(rows[0]),
                  notes=f"SmolLM2-135M, CPU, float32. Prefill: batch {BATCH} x {PREFILL} tokens. Greedy generation: "
                  f"batch {BATCH}, {PROMPT}-token prompts, {NEW} new tokens with KV cache. All models are timed in "
                  f"turn, {ROUNDS} rounds; a ratio is throughput against the reference in the same round, median over "
                  "rounds (range beside it). Targets: MoSEs TIL >= 0.90x unmerged LoRA; task-routed merged export >= "
                  "0.98x base.")

if __name__ == "__main__":
    main()
