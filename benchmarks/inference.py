"""Inference speed on SmolLM2-135M, CPU: prefill throughput (batch 8 x 256 tokens) and greedy generation
(batch 8, 64-token prompts, 32 new tokens) for MoSEs in TIL against peft LoRA r=8 unmerged and merged, and
the merged export of a task-routed MoSEs task against the base model. Ratios are within this run.

    python benchmarks/inference.py
"""

from __future__ import annotations

import copy

import torch
from common import median_seconds, write_results

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


@torch.no_grad()
def measure(model, vocab: int) -> dict:
    model.eval()
    generator = torch.Generator().manual_seed(0)
    long_ids = torch.randint(0, vocab, (BATCH, PREFILL), generator=generator)
    prompt = torch.randint(0, vocab, (BATCH, PROMPT), generator=generator)
    prefill_s = median_seconds(lambda: model(input_ids=long_ids, use_cache=False), repeats=5)
    generate_s = median_seconds(lambda: model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                                       max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                                       pad_token_id=0), repeats=3)
    return {"prefill_tokens_per_s": BATCH * PREFILL / prefill_s, "generate_tokens_per_s": BATCH * NEW / generate_s}


def main() -> None:
    torch.manual_seed(0)
    base, _ = load_model("smollm2-135m")
    vocab = base.config.vocab_size
    builds = {
        "base": lambda b: b,
        "lora-r8 unmerged": lambda b: lora(b, merged=False),
        "lora-r8 merged": lambda b: lora(b, merged=True),
        "moses token TIL": lambda b: moses(b, "token"),
        "moses task TIL": lambda b: moses(b, "task"),
        "moses task merged": lambda b: moses(b, "task", merged=True),
    }
    runs = {name: measure(build(copy.deepcopy(base)), vocab) for name, build in builds.items()}
    for name, run in runs.items():
        print(name, run)
    rows = []
    for name, run in runs.items():
        reference = "base" if name in ("base", "moses task merged", "lora-r8 merged") else "lora-r8 unmerged"
        ref = runs[reference]
        rows.append({"model": name, "prefill tok/s": run["prefill_tokens_per_s"],
                     "generate tok/s": run["generate_tokens_per_s"], "against": reference,
                     "prefill ratio": run["prefill_tokens_per_s"] / ref["prefill_tokens_per_s"],
                     "generate ratio": run["generate_tokens_per_s"] / ref["generate_tokens_per_s"]})
    write_results("inference", {"batch": BATCH, "prefill_tokens": PREFILL, "prompt_tokens": PROMPT,
                                "new_tokens": NEW, "runs": runs}, rows, list(rows[0]),
                  notes=f"SmolLM2-135M, CPU, float32. Prefill: batch {BATCH} x {PREFILL} tokens, median of 5. Greedy "
                  f"generation: batch {BATCH}, {PROMPT}-token prompts, {NEW} new tokens with KV cache, median of 3. "
                  "Targets: MoSEs TIL >= 0.90x unmerged LoRA; task-routed merged export >= 0.98x base.")


if __name__ == "__main__":
    main()
