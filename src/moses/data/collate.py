"""Tokenisation for training (loss on answer tokens only) and for generation (left padding)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from moses.data.stream import Example, Task

IGNORE = -100


def cut_prompt(ids: list[int], max_tokens: int) -> list[int]:
    """At most `max_tokens` of a prompt's token ids, cut in the middle: its first and last halves are kept, so
    the instruction and options at its start and the question and "Answer:" cue at its end survive a long
    passage (LongBench's rule, github.com/THUDM/LongBench pred.py)."""
    if len(ids) <= max_tokens:
        return ids
    head = max_tokens // 2
    return ids[:head] + ids[len(ids) - (max_tokens - head):]


def answer_token_budget(tokenizer, task: Task) -> int:
    """New tokens to generate for `task`: its own `max_new_tokens`, or when that is None the longest answer of
    any of its splits in tokens (a label task needs no more)."""
    if task.max_new_tokens is not None:
        return task.max_new_tokens
    answers = {e["answer"] for split in (task.train, task.eval, task.test) for e in split}
    return max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def encode_example(tokenizer, example: Example, max_prompt_tokens: int,
                   max_answer_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels). A long prompt is cut by `cut_prompt`; the answer from the right, then EOS, so
    the model learns to stop."""
    ids = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    prompt = cut_prompt(ids, max_prompt_tokens)
    answer = tokenizer(example["answer"], add_special_tokens=False)["input_ids"][:max_answer_tokens]
    answer = answer + [tokenizer.eos_token_id]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def training_batch(tokenizer, examples: list[Example], max_prompt_tokens: int = 320,
                   max_answer_tokens: int = 64) -> dict[str, torch.Tensor]:
    """Left-padded batch with explicit position ids; labels are -100 on prompt and padding.

    Left padding puts every answer in the last positions, so the loss needs the LM head only there
    (`answer_loss` asks the model for those logits alone)."""
    encoded = [encode_example(tokenizer, e, max_prompt_tokens, max_answer_tokens) for e in examples]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in encoded])
    labels = torch.tensor([[IGNORE] * (width - len(lab)) + lab for _, lab in encoded])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in encoded])
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids(attention),
            "labels": labels}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token (left padding must not shift them)."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)


def longest_first(tokenizer, prompts: list[str], max_prompt_tokens: int) -> list[int]:
    """The indices of `prompts` from the longest (as cut) to the shortest: batches taken in this order pad each
    prompt to about its own length, not to the longest of a random batch."""
    if not prompts:
        return []
    lengths = [min(len(ids), max_prompt_tokens) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return sorted(range(len(prompts)), key=lambda i: -lengths[i])


def generation_batches(tokenizer, prompts: list[str], batch_size: int, max_prompt_tokens: int,
                       device: torch.device | str) -> Iterator[dict[str, torch.Tensor]]:
    """`generation_batch` over consecutive slices of `prompts`, moved to `device`."""
    for start in range(0, len(prompts), batch_size):
        batch = generation_batch(tokenizer, prompts[start:start + batch_size], max_prompt_tokens)
        yield {k: v.to(device) for k, v in batch.items()}


def generation_batch(tokenizer, prompts: list[str], max_prompt_tokens: int = 320) -> dict[str, torch.Tensor]:
    """Left-padded prompts, cut like training prompts (`cut_prompt`)."""
    ids = [cut_prompt(tokenizer(p, add_special_tokens=False)["input_ids"], max_prompt_tokens)
           for p in prompts]
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    return {"input_ids": input_ids, "attention_mask": attention}
