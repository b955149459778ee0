"""Where greedy decoding spends its time: torch.profiler over generation on SmolLM2-135M (CPU) with MoSEs
(token routing, TIL) and with peft LoRA r=8 unmerged; the top operators by self CPU time.

    python benchmarks/profile_generate.py
"""

from __future__ import annotations

import copy

import torch
from common import RESULTS
from inference import lora, moses
from torch.profiler import ProfilerActivity, profile

from moses.models import load_model

BATCH, PROMPT, NEW = 8, 64, 16


@torch.no_grad()
def profile_model(model, vocab: int) -> str:
    prompt = torch.randint(0, vocab, (BATCH, PROMPT), generator=torch.Generator().manual_seed(0))

    def generate():
        model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                       min_new_tokens=NEW, do_sample=False, pad_token_id=0)

    generate()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main() -> None:
    base, _ = load_model("smollm2-135m")
    vocab = base.config.vocab_size
    report = []
    builds = (("moses token TIL", lambda b: moses(b, "token")), ("lora-r8 unmerged", lambda b: lora(b, False)))
    for name, build in builds:
        report.append(f"## {name}: batch {BATCH}, {PROMPT}-token prompts, {NEW} new tokens\n\n```\n"
                      f"{profile_model(build(copy.deepcopy(base)), vocab)}\n```\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_generate.md").write_text("# profile_generate\n\n" + "\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
