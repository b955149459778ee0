"""Adapters saved by the pool layout of moses 0.2.0 (commit 07cd552, tests/fixtures/legacy_pool) load into the
per-task layout and give the logits they gave when saved; saved again, they are smaller and still equal."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moses import MoSEsModel

from conftest import build, random_batch

FIXTURES = Path(__file__).parent.parent / "fixtures" / "legacy_pool"
PROBE = random_batch(seed=99, batch=2, length=8)


def logits_of(model: MoSEsModel) -> dict[str, torch.Tensor]:
    """What make_legacy_pool.py recorded: each task alone (TIL), then a mixed batch (c, a)."""
    model.eval()
    out = {}
    with torch.no_grad():
        for task in ("a", "b", "c"):
            model.set_task(task)
            out[f"til.{task}"] = model(input_ids=PROBE["input_ids"], attention_mask=PROBE["attention_mask"]).logits
        out["mixed"] = model(input_ids=PROBE["input_ids"], task_ids=["c", "a"]).logits
    return out


@pytest.mark.parametrize("variant", ["r2_token", "r2_hidden_task", "r1_entries"])
def test_pool_layout_adapter_loads_to_the_logits_it_was_saved_with(variant, tmp_path):
    folder = FIXTURES / variant
    expected = load_file(str(folder / "expected_logits.safetensors"))
    model = MoSEsModel.from_pretrained(build("llama"), folder)
    assert model.tasks == ["a", "b", "c"]
    got = logits_of(model)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=f"{variant} {key}")
    model.save_pretrained(tmp_path)
    resaved = MoSEsModel.from_pretrained(build("llama"), tmp_path)
    for key, value in logits_of(resaved).items():
        assert torch.equal(value, got[key])
    old, new = (d / "adapter_model.safetensors" for d in (folder, tmp_path))
    if variant.startswith("r2"):  # no untrained slots, scores or masks any more
        assert new.stat().st_size < old.stat().st_size / 2
        assert not any("scores" in k or "mask" in k for k in load_file(str(new)))
    assert model.capacity()["stored_bytes"] == sum(f.stat().st_size for f in tmp_path.iterdir())
