"""The training loop: the same for every method; methods only choose parameters and add losses."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from moses.data.collate import training_batch
from moses.data.stream import Example


def train_on_examples(model, tokenizer, examples: list[Example], param_groups: list[dict], *, epochs: int = 1,
                      batch_size: int = 8, seed: int = 0, max_prompt_tokens: int = 320, max_answer_tokens: int = 64,
                      extra_loss: Callable[[dict, object], torch.Tensor | None] | None = None,
                      description: str = "train") -> list[dict]:
    """Fresh AdamW over `param_groups`, `epochs` passes over seeded-shuffled `examples`; returns a log row
    per step (loss, seconds)."""
    optimizer = torch.optim.AdamW(param_groups)
    device = next(model.parameters()).device
    order = random.Random(seed)
    log = []
    model.train()
    steps = epochs * -(-len(examples) // batch_size)
    with tqdm(total=steps, desc=description, leave=False) as bar:
        for _ in range(epochs):
            shuffled = examples[:]
            order.shuffle(shuffled)
            for start in range(0, len(shuffled), batch_size):
                began = time.perf_counter()
                batch = training_batch(tokenizer, shuffled[start:start + batch_size], max_prompt_tokens,
                                       max_answer_tokens)
                batch = {k: v.to(device) for k, v in batch.items()}
                outputs = model(**batch)
                loss = outputs.loss
                extra = extra_loss(batch, outputs) if extra_loss else None
                if extra is not None:
                    loss = loss + extra
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                log.append({"loss": loss.item(), "seconds": time.perf_counter() - began})
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    model.eval()
    return log
