"""Tokenisation for training (loss on answer tokens only) and for generation (left padding)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from moses.data.stream import Example

IGNORE = -100


def encode_example(tokenizer, example: Example, max_prompt_tokens: int,
                   max_answer_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels). The prompt is cut from the left so its final cue survives; the answer from the
    right, then EOS, so the model learns to stop."""
    prompt = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"][-max_prompt_tokens:]
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


def generation_batches(tokenizer, prompts: list[str], batch_size: int, max_prompt_tokens: int,
                       device: torch.device | str) -> Iterator[dict[str, torch.Tensor]]:
    """`generation_batch` over consecutive slices of `prompts`, moved to `device`."""
    for start in range(0, len(prompts), batch_size):
        batch = generation_batch(tokenizer, prompts[start:start + batch_size], max_prompt_tokens)
        yield {k: v.to(device) for k, v in batch.items()}


def generation_batch(tokenizer, prompts: list[str], max_prompt_tokens: int = 320) -> dict[str, torch.Tensor]:
    """Left-padded prompts, truncated from the left like training prompts."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_prompt_tokens:] for p in prompts]
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    return {"input_ids": input_ids, "attention_mask": attention}
