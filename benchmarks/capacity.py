"""Capacity growth over a 20-task stream on a 2-layer Llama with SmolLM2-135M's projection shapes: stored
bytes of MoSEs reading R1 (c = 0.1 and 0.3; routers on the hidden state or on subexpert features) against
per-task LoRAs of the same active rank, and the fitted growth exponent (bytes ~ tasks^b).

    python benchmarks/capacity.py
"""

from __future__ import annotations

import itertools
import math

import torch
from common import write_results
from transformers import LlamaConfig, LlamaForCausalLM

from moses import MoSEsConfig, get_moses_model

TASKS, STEPS = 20, 4


def grow(density: float, router_input: str) -> list[dict]:
    torch.manual_seed(0)
    # SmolLM2-135M's projection shapes (hidden 576, 9 query / 3 key-value heads of 64), 2 layers instead of 30:
    # every ratio below is per layer, so the layer count does not change it
    config = LlamaConfig(vocab_size=256, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64)
    moses_config = MoSEsConfig(ownership="entries", rank=4, task_density=density, router_input=router_input)  # R1
    model = get_moses_model(LlamaForCausalLM(config), moses_config)
    history = []
    for t in range(TASKS):
        model.add_task(f"task{t}")
        model.train()
        optimizer = torch.optim.AdamW(model.optimizer_param_groups(1e-2))
        generator = torch.Generator().manual_seed(t)
        ids = torch.randint(0, 256, (4, 16), generator=generator)
        for _ in range(STEPS):
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.end_task()
        cap = model.capacity()
        history.append({"tasks": t + 1, "used_fraction": cap["used_fraction"],
                        "stored_bytes_raw": cap["stored_bytes_raw"],
                        "stored_bytes_compressed": cap["stored_bytes_compressed"],
                        "lora_per_task_bytes": cap["lora_per_task_bytes"],
                        "owned_entries": cap["tasks"][-1]["owned_entries"]})
    return history


def exponent(history: list[dict], key: str) -> float:
    """Least-squares slope of log(bytes) on log(tasks)."""
    xs = [math.log(h["tasks"]) for h in history]
    ys = [math.log(h[key]) for h in history]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    rows, payload = [], {"tasks": TASKS, "steps_per_task": STEPS, "runs": {}}
    for density, router_input in itertools.product((0.1, 0.3), ("hidden", "subexperts")):
        history = grow(density, router_input)
        last = history[-1]
        row = {"c": density, "router input": router_input, "used % after 20": 100 * last["used_fraction"],
               "MoSEs bytes (raw masks)": last["stored_bytes_raw"],
               "MoSEs bytes (LZMA masks)": last["stored_bytes_compressed"],
               "20 LoRAs bytes": last["lora_per_task_bytes"],
               "ratio raw": last["stored_bytes_raw"] / last["lora_per_task_bytes"],
               "ratio LZMA": last["stored_bytes_compressed"] / last["lora_per_task_bytes"],
               "exponent MoSEs": exponent(history, "stored_bytes_raw"),
               "exponent LoRAs": exponent(history, "lora_per_task_bytes")}
        rows.append(row)
        payload["runs"][f"c={density},router_input={router_input}"] = {"summary": row, "history": history}
    write_results("capacity", payload, rows, list(rows[0]),
                  notes=f"{TASKS} tasks of {STEPS} AdamW steps on a 2-layer Llama with SmolLM2-135M's shapes, MoSEs "
                  "N=8, top-2, r=4 on q/k/v/o; per-task LoRAs of rank top_k * r = 8. Target: ratio <= 0.40 after 20 "
                  "tasks.")


if __name__ == "__main__":
    main()
