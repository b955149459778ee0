"""Inference speed on SmolLM2-135M, CPU: prefill throughput (batch 8 x 256 tokens) and greedy generation
(batch 8, 64-token prompts, 32 new tokens) for MoSEs in TIL against peft LoRA r=8 unmerged and merged, and
the merged export of a task-routed MoSEs task against the base model, in fp32 and under bf16 autocast (as
runs with precision bf16 generate). Ratios are within this run: each model against its reference in the same
precision, and each model in bf16 against itself in fp32.

    python benchmarks/inference.py [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import random_lora, write_results
from tqdm import tqdm

from moses import MoSEsConfig, get_moses_model
from moses.models import load_model
from moses.precision import autocast

BATCH, PREFILL, PROMPT, NEW = 8, 256, 64, 32


def lora(base, merged: bool):
    model = random_lora(base)
    return model.merge_and_unload() if merged else model


def moses(base, routing: str, merged: bool = False):
    model = get_moses_model(base, MoSEsConfig(routing=routing))
    model.add_task("bench")
    with torch.no_grad():
        for _, layer in model.moses_layers():
            layer.own_B[0].normal_(0, 0.01)
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--precisions", default="fp32,bf16")
    precisions = parser.parse_args().precisions.split(",")
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

    def prefill(model, precision):
        def call():
            with autocast(precision, "cpu"):
                model(input_ids=long_ids, use_cache=False)
        return call

    def generate(model, precision):
        def call():
            with autocast(precision, "cpu"):
                model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                               min_new_tokens=NEW, do_sample=False, pad_token_id=0)
        return call

    for model in models.values():  # warm-up
        for precision in precisions:
            prefill(model, precision)()
            generate(model, precision)()
    seconds = {(name, p): {"prefill": [], "generate": []} for name in models for p in precisions}
    for _ in tqdm(range(ROUNDS), desc="rounds"):
        for name, model in models.items():
            for precision in precisions:
                seconds[name, precision]["prefill"].append(timed(prefill(model, precision)))
                seconds[name, precision]["generate"].append(timed(generate(model, precision)))
    rows = []
    pairs_to_report = [((name, p), (reference, p)) for p in precisions for name, reference in REFERENCES.items()]
    if "fp32" in precisions and "bf16" in precisions:  # bf16 against fp32, model by model
        pairs_to_report += [((name, "bf16"), (name, "fp32")) for name in models]
    for (name, precision), (reference, ref_precision) in pairs_to_report:
        row = {"model": name, "precision": precision, "against": f"{reference} {ref_precision}"}
        for kind, tokens in (("prefill", BATCH * PREFILL), ("generate", BATCH * NEW)):
            pairs = zip(seconds[name, precision][kind], seconds[reference, ref_precision][kind], strict=True)
            ratios = [r / c for c, r in pairs]  # throughput ratio = inverse time ratio
            row[f"{kind} tok/s"] = tokens / statistics.median(seconds[name, precision][kind])
            row[f"{kind} ratio"] = statistics.median(ratios)
            row[f"{kind} ratio range"] = f"{min(ratios):.3f}-{max(ratios):.3f}"
        rows.append(row)
    write_results("inference", {"batch": BATCH, "prefill_tokens": PREFILL, "prompt_tokens": PROMPT,
                                "new_tokens": NEW, "rounds": ROUNDS,
                                "seconds": {f"{n} {p}": v for (n, p), v in seconds.items()}}, rows, list(rows[0]),
                  notes="SmolLM2-135M, CPU, float32 weights; bf16 rows under torch.autocast. "
                  f"Prefill: batch {BATCH} x {PREFILL} tokens. Greedy generation: "
                  f"batch {BATCH}, {PROMPT}-token prompts, {NEW} new tokens with KV cache. All models are timed in "
                  f"turn, {ROUNDS} rounds; a ratio is throughput against the reference in the same round, median over "
                  "rounds (range beside it). Targets: MoSEs TIL >= 0.90x unmerged LoRA; task-routed merged export >= "
                  "0.98x base.")

if __name__ == "__main__":
    main()
