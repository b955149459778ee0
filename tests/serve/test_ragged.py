"""Ragged decoding attention: each group of rows attends over its own span of the cache, with the scores of
plain SDPA over the whole padded width."""

import pytest
import torch

from moses import MoSEsConfig, get_moses_model
from moses.serve import ragged
from moses.serve.prefill import bucketed_prefill, cache_argument
from moses.serve.ragged import RAGGED_SDPA, decode_plan, row_groups

from conftest import VOCAB, build, left_padded, train_task


def test_row_groups_are_contiguous_ranges_within_the_slack_or_a_few_keys():
    spans = [420, 400, 300, 290, 95, 83, 40, 36, 2]
    groups = row_groups(spans, slack=1.25, small=8)
    assert groups == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)]
    assert row_groups(spans, slack=1.25, small=64) == [(0, 2), (2, 4), (4, 8), (8, 9)]  # 40 joins 95: 55 keys
    assert row_groups([7], slack=1.25) == [(0, 1)]


def test_a_plan_needs_rows_sorted_longest_first_and_padding_worth_skipping():
    def mask(starts: list[int], width: int = 300, end: int = 290) -> torch.Tensor:
        keys = torch.arange(width)
        return torch.stack([(keys >= s) & (keys < end) for s in starts])[:, None, None, :]

    assert decode_plan(mask([0, 100, 250], end=290)) == [(0, 1, 0, 290), (1, 2, 100, 290), (2, 3, 250, 290)]
    assert decode_plan(mask([250, 0, 100])) is None  # not sorted: rows of a group must be neighbours
    assert decode_plan(mask([0, 5, 10], end=300)) is None  # one group over nearly every key: plain SDPA


@pytest.fixture
def two_task_llama():
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, rank=2))
    for seed, name in enumerate(("a", "b")):
        train_task(model, name, seed=seed)
    return model.eval()


@pytest.mark.parametrize("room", [6, None], ids=["static", "dynamic"])
def test_ragged_decoding_gives_the_scores_of_padded_sdpa(two_task_llama, room, monkeypatch):
    monkeypatch.setattr(ragged, "row_groups", lambda spans: row_groups(spans, small=0))  # tiny prompts
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in (40, 28, 12, 6, 3)]
    batch = left_padded(prompts)  # longest first, as the engine sorts a batch
    task_ids = torch.tensor([0, 1, -1, 0, 1])
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "output_scores": True,
               "return_dict_in_generate": True, "task_ids": task_ids}
    base = two_task_llama.model
    plans = []
    monkeypatch.setattr(ragged, "decode_plan", lambda mask, plan=decode_plan: plans.append(plan(mask)) or plans[-1])

    def run(implementation: str):
        base.set_attn_implementation(implementation)
        cache = bucketed_prefill(two_task_llama, batch["input_ids"], batch["attention_mask"], task_ids, room)
        with torch.no_grad():
            return two_task_llama.generate(**batch, **{cache_argument(): cache}, **options)

    plain, ours = run("sdpa"), run(RAGGED_SDPA)
    assert plans and all(plan is not None and len(plan) == 5 for plan in plans)  # every step took the ragged path
    assert torch.equal(ours.sequences, plain.sequences)
    for step, (a, b) in enumerate(zip(ours.scores, plain.scores, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")
