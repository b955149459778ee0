"""Prefill a batch in length buckets, then decode it as one batch.

One left-padded prefill computes every prompt at the longest prompt's length. A server's batch mixes tasks whose
prompts differ by 10x (benchmarks/serve.py's four: 36 to 427 tokens on average), so at 16 requests that is about
4x the tokens the prompts hold; prefill is where a CPU spends its time on short answers. Here prompts of similar
length are prefilled together (all but each prompt's last token), their key/value caches are left-padded to the
batch's width with zeros that the attention mask hides, and `generate` continues from the merged cache, so the
decoding steps are still shared by the whole batch (the idea of vLLM's padding-free prefill, within the dense
KV cache of `transformers`).

The merged cache is preallocated for the whole answer (transformers' StaticLayer): a DynamicCache concatenates
every layer's keys and values at every decoding step (a whole batch of 16 mixed requests ran 1.14x faster
without it: the "dynamic cache" column of benchmarks/results/prefill.md)."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, StaticLayer

from moses.data.collate import position_ids

SLACK = 1.25  # a bucket's longest prompt is at most this many times its shortest
WORTH_IT = 1.5  # bucket only when one padded prefill would compute more than this many times the real tokens


def padded_ratio(lengths: list[int]) -> float:
    """Tokens one left-padded prefill computes over the tokens the prompts hold."""
    return max(lengths) * len(lengths) / max(sum(lengths), 1)


def length_buckets(lengths: list[int], slack: float = SLACK) -> list[list[int]]:
    """Row indices grouped by length, shortest first; a bucket's longest is at most `slack` x its shortest."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    buckets: list[list[int]] = []
    for row in order:
        if buckets and lengths[row] <= slack * max(lengths[buckets[-1][0]], 1):
            buckets[-1].append(row)
        else:
            buckets.append([row])
    return buckets


def should_bucket(attention_mask: torch.Tensor) -> bool:
    lengths = attention_mask.sum(dim=1).tolist()
    return len(lengths) > 1 and padded_ratio(lengths) > WORTH_IT


@torch.no_grad()
def bucketed_prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     task_ids: torch.Tensor | None = None, max_new_tokens: int | None = None) -> Cache | None:
    """The KV cache of every prompt but its last token, computed bucket by bucket and left-padded to the batch's
    width: a static cache with room for `max_new_tokens` more, or a DynamicCache when it is None.
    `generate(input_ids, attention_mask, max_new_tokens=..., **{cache_argument(): <this>})` then feeds only the
    last column.
    `model` is a MoSEsModel (its per-sample `task_ids` select each row's task) or a plain causal LM. None where
    a layer's cache does not hold the whole prefix (a sliding-window layer): the caller prefills as usual."""
    width = input_ids.shape[1]
    lengths = attention_mask.sum(dim=1).tolist()
    layers: list[StaticLayer] | None = None
    keep_one_logit = _supports_logits_to_keep(model)
    for rows in length_buckets(lengths):
        prefix = max(lengths[r] for r in rows) - 1  # the bucket's own width, without the last token
        if prefix <= 0:
            continue  # one-token (or empty) prompts: nothing to cache, their zero rows stay masked
        index = torch.tensor(rows, device=input_ids.device)
        mask = attention_mask[index, width - 1 - prefix: width - 1]
        kwargs = {"task_ids": task_ids[index]} if task_ids is not None else {}
        if keep_one_logit:  # only the cache is wanted: no vocabulary projection of every prefix position
            kwargs["logits_to_keep"] = 1
        out = model(input_ids=input_ids[index, width - 1 - prefix: width - 1], attention_mask=mask,
                    position_ids=position_ids(mask), use_cache=True, **kwargs)
        cache = getattr(out, cache_argument())
        if any(layer.keys is None or layer.keys.shape[2] != prefix for layer in cache.layers):
            return None
        if layers is None:
            capacity = width - 1 if max_new_tokens is None else width + max_new_tokens
            layers = [_static_layer(layer.keys, layer.values, len(lengths), capacity, width - 1)
                      for layer in cache.layers]
        for merged, layer in zip(layers, cache.layers, strict=True):
            merged.keys[index, :, width - 1 - prefix: width - 1] = layer.keys
            merged.values[index, :, width - 1 - prefix: width - 1] = layer.values
    if layers is None:  # every prompt is one token long
        return DynamicCache()
    if max_new_tokens is None:
        return DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in layers])
    return Cache(layers=layers)


def _supports_logits_to_keep(model) -> bool:
    """Whether the causal LM (under a MoSEsModel, its base) takes `logits_to_keep`, as `generate` asks."""
    check = getattr(model, "_supports_logits_to_keep", None)
    return bool(check and check())


def cache_argument() -> str:
    """`generate`'s keyword for a cache to continue from: `cache` in newer transformers (which deprecates the
    older name), `past_key_values` before."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def _static_layer(keys: torch.Tensor, values: torch.Tensor, batch: int, capacity: int, filled: int) -> StaticLayer:
    """A zeroed StaticLayer of `batch` rows and `capacity` positions (keys' heads, dims and dtype) that counts
    its first `filled` positions as cached: the next update writes after them."""
    layer = StaticLayer(max_cache_len=capacity)
    layer.lazy_initialization(keys.new_empty((batch, keys.shape[1], 0, keys.shape[3])),
                              values.new_empty((batch, values.shape[1], 0, values.shape[3])))
    layer.cumulative_length.fill_(filled)
    return layer
