"""Prefill in length buckets, decode together: the same answers as one padded `generate`, for less prefill."""

import pytest
import torch

from moses import MoSEsConfig, get_moses_model
from moses.serve.prefill import bucketed_prefill, cache_argument, length_buckets, padded_ratio, should_bucket

from conftest import VOCAB, build, left_padded, train_task


def test_length_buckets_cover_every_row_once_within_the_slack():
    lengths = [300, 36, 40, 420, 83, 1, 290, 35, 2, 95]
    buckets = length_buckets(lengths, slack=1.25)
    assert sorted(r for b in buckets for r in b) == list(range(len(lengths)))
    for bucket in buckets:
        assert max(lengths[r] for r in bucket) <= 1.25 * min(lengths[r] for r in bucket)
    firsts = [min(lengths[r] for r in b) for b in buckets]
    assert firsts == sorted(firsts) and len(buckets) == 6  # [1] [2] [35 36 40] [83 95] [290 300] [420]
    assert padded_ratio([10, 10]) == 1.0 and padded_ratio([1, 3]) == 1.5
    assert not should_bucket(torch.ones(4, 7)) and not should_bucket(torch.tensor([[0, 1, 1]]))
    assert should_bucket(torch.tensor([[0, 0, 0, 1], [1, 1, 1, 1]]))  # 8 tokens computed for 5


@pytest.fixture(params=["llama", "gpt2"])
def two_task_model(request):
    model = get_moses_model(build(request.param), MoSEsConfig(num_subexperts=4, rank=2))
    for seed, name in enumerate(("a", "b")):
        train_task(model, name, seed=seed)
    return model.eval()


@pytest.mark.parametrize("room", [6, None], ids=["static", "dynamic"])
def test_bucketed_prefill_gives_the_answers_and_scores_of_one_padded_generate(two_task_model, room):
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in (3, 30, 1, 12, 28, 4)]
    batch = left_padded(prompts)
    task_ids = torch.tensor([0, 1, 1, -1, 0, 1])  # two tasks and the base model in one batch
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "output_scores": True,
               "return_dict_in_generate": True}
    with torch.no_grad():
        plain = two_task_model.generate(**batch, task_ids=task_ids, **options)
        width = batch["input_ids"].shape[1]
        cache = bucketed_prefill(two_task_model, batch["input_ids"], batch["attention_mask"], task_ids, room)
        assert cache.get_seq_length() == width - 1
        keys = cache.layers[0].keys
        bucketed = two_task_model.generate(**batch, task_ids=task_ids, **{cache_argument(): cache}, **options)
        assert cache.get_seq_length() == width + 5
        if room is not None:  # decoded in place into the preallocated cache: the same tensor, now full
            assert cache.layers[0].keys is keys and keys.shape[2] == width + 6
        noisy = bucketed_prefill(two_task_model, batch["input_ids"], batch["attention_mask"], task_ids, room)
        noisy.layers[0].keys.add_(torch.randn_like(noisy.layers[0].keys))
        disturbed = two_task_model.generate(**batch, task_ids=task_ids, **{cache_argument(): noisy}, **options)
        alone = [two_task_model.generate(**left_padded([p]), task_ids=task_ids[i:i + 1], **options)
                 for i, p in enumerate(prompts)]
    assert torch.equal(bucketed.sequences, plain.sequences)
    assert not torch.allclose(disturbed.scores[0], plain.scores[0])  # generate did continue from the given cache
    for step, (ours, theirs) in enumerate(zip(bucketed.scores, plain.scores, strict=True)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, msg=f"step {step}")
        for i, single in enumerate(alone):  # and what each prompt gives without any padding
            torch.testing.assert_close(ours[i], single.scores[step][0], rtol=1e-4, atol=1e-4)


def test_bucketed_prefill_of_one_token_prompts_is_an_empty_cache(two_task_model):
    batch = left_padded([[5], [7]])
    cache = bucketed_prefill(two_task_model, batch["input_ids"], batch["attention_mask"], torch.tensor([0, 1]))
    assert cache.get_seq_length() == 0


def test_a_cache_that_does_not_hold_the_whole_prefix_is_refused():
    """A sliding-window layer keeps only the window: its cache cannot be merged, and the caller prefills as usual."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, sliding_window=4)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    batch = left_padded([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [5, 6]])
    assert bucketed_prefill(model, batch["input_ids"], batch["attention_mask"]) is None
    wide = MistralForCausalLM(MistralConfig(**{**config.to_dict(), "sliding_window": None})).eval()
    assert bucketed_prefill(wide, batch["input_ids"], batch["attention_mask"]).get_seq_length() == 9
