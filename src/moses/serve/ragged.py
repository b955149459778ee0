"""Decoding attention over each row's own keys: `transformers`' SDPA attention, except that a decoding step
of a left-padded batch attends each group of rows of similar prompt length over its own span of the cache.

A batch decodes into one cache as wide as its longest prompt (plus the answer), and SDPA computes every row
over that whole width, its left padding masked but still read: a mixed server batch of prompts from 36 to
427 tokens computes about 3.6x the keys the prompts hold, and the 15 decoding steps of 16 such requests spent
2.1 of their 5.9 s in SDPA (torch.profiler, one thread). Measured on a 2-core AVX2 CPU
(benchmarks/ragged_decode.py, 2 threads), no gain shows through this machine's noise: full-width over ragged
decoding time was a median 1.04 over 6 rounds (0.76 to 1.81 by round; 1.12 in an earlier run of 3), and
whole batches of 16-token answers, mostly prefill, were unchanged (benchmarks/results/prefill.md). It stays
on because it computes the same scores (tests/serve/test_ragged.py) and skips only masked keys.

The rows of a batch are sorted by prompt length (`Engine`), so groups of similar length are contiguous rows,
and each group's keys and values are views of the cache: nothing is copied. The idea is vLLM's paged attention
(no padding in decoding) within the dense cache of `transformers`.

Registered as an attention implementation through `transformers`' AttentionInterface (and SDPA's mask under
the same name), so `model.set_attn_implementation(RAGGED_SDPA)` switches it on; prefill and batches of one row
are plain SDPA."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

RAGGED_SDPA = "moses_ragged_sdpa"
SLACK = 1.25  # a group's longest span is at most this many times its shortest (as the prefill's buckets) ...
SMALL = 64  # ... or at most this many keys longer: another SDPA call per layer costs more than reading them

_last_plan: list = [None, None]  # (the mask of the last forward, its groups): every layer of a step shares one


def row_groups(spans: list[int], slack: float = SLACK, small: int = SMALL) -> list[tuple[int, int]]:
    """Contiguous row ranges [begin, end) of rows whose spans (keys each attends to, sorted longest first)
    are within `slack` times or `small` keys of the range's first: each range attends over its first row's
    span."""
    groups: list[tuple[int, int]] = []
    begin = 0
    for row in range(1, len(spans) + 1):
        if row == len(spans) or (spans[row] * slack < spans[begin] and spans[begin] - spans[row] > small):
            groups.append((begin, row))
            begin = row
    return groups


def decode_plan(attention_mask: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    """(first row, end row, first key, end key) per group of a decoding step's boolean mask [B, 1, 1, K], or
    None where grouping does not pay (one group spanning nearly every key, or rows not sorted longest first)."""
    if _last_plan[0] is attention_mask:
        return _last_plan[1]
    valid = attention_mask[:, 0, -1, :]
    width = valid.shape[-1]
    first = valid.int().argmax(dim=-1)  # each row's first key (left padding before it)
    end = width - int(valid.flip(-1).int().argmax(dim=-1).min())  # after the last key any row attends to
    firsts = first.tolist()
    spans = [end - f for f in firsts]
    plan = None
    if spans == sorted(spans, reverse=True) and valid.any(dim=-1).all():
        groups = row_groups(spans)
        plan = [(begin, stop, firsts[begin], end) for begin, stop in groups]
        if len(groups) == 1 and end - firsts[0] >= 0.9 * width:
            plan = None
    _last_plan[0], _last_plan[1] = attention_mask, plan
    return plan


def ragged_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """SDPA, with a decoding step (one query token) of a padded batch computed group by group."""
    if (query.shape[2] != 1 or query.shape[0] == 1 or attention_mask is None
            or attention_mask.dtype != torch.bool or attention_mask.shape[2] != 1):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    plan = decode_plan(attention_mask)
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [sdpa_attention_forward(module, query[a:b], key[a:b, :, s:e], value[a:b, :, s:e],
                                      attention_mask[a:b, :, :, s:e], **kwargs)[0] for a, b, s, e in plan]
    return torch.cat(outputs), None


AttentionInterface.register(RAGGED_SDPA, ragged_sdpa_attention)
AttentionMaskInterface.register(RAGGED_SDPA, sdpa_mask)
