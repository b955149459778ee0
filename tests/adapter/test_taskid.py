"""TaIL: task prototypes from base-model prompt embeddings, inference in forward/generate, persistence."""

import pytest
import torch

from moses import MoSEsConfig, MoSEsModel, get_moses_model
from moses.adapter.taskid import TaskPrototypes
from moses.errors import TaskError

from conftest import build


def prompts(low: int, high: int, seed: int, n: int = 6) -> torch.Tensor:
    """Like real task prompts: a fixed instruction (its own token range per task), then random content."""
    generator = torch.Generator().manual_seed(seed)
    instruction = torch.arange(low, low + 6).expand(n, -1)
    return torch.cat([instruction, torch.randint(0, 97, (n, 4), generator=generator)], dim=1)


def trained_model():
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, rank=2))
    for name, (low, high) in {"low": (0, 40), "high": (50, 97)}.items():
        model.add_task(name)
        with torch.no_grad():  # give each task a distinct adapter so outputs differ by task
            for _, layer in model.moses_layers():
                layer.own_B[-1].normal_(0, 0.3)
        model.observe_prompts(prompts(low, high, seed=1))
        model.end_task()
    return model


def test_prototypes_pick_the_right_task():
    model = trained_model()
    test = torch.cat([prompts(0, 40, seed=2), prompts(50, 97, seed=3)])
    assert model.infer_tasks(test).tolist() == [0] * 6 + [1] * 6


def test_forward_and_generate_with_task_inference_equal_explicit_ids():
    model = trained_model()
    test = torch.cat([prompts(0, 40, seed=2, n=2), prompts(50, 97, seed=3, n=2)])
    with torch.no_grad():
        explicit = model(input_ids=test, task_ids=["low", "low", "high", "high"]).logits
        model.set_task_inference(True)
        inferred = model(input_ids=test).logits
    torch.testing.assert_close(inferred, explicit)
    generated = model.generate(input_ids=test, max_new_tokens=3, do_sample=False, pad_token_id=0)
    model.set_task_inference(False)
    reference = model.generate(input_ids=test, task_ids=["low", "low", "high", "high"], max_new_tokens=3,
                               do_sample=False, pad_token_id=0)
    assert torch.equal(generated, reference)


def test_prototypes_are_saved_with_the_adapter(tmp_path):
    model = trained_model()
    model.save_pretrained(tmp_path)
    loaded = MoSEsModel.from_pretrained(build("llama"), tmp_path)
    assert torch.equal(loaded.prototypes.sums, model.prototypes.sums)
    test = torch.cat([prompts(0, 40, seed=4), prompts(50, 97, seed=5)])
    assert torch.equal(loaded.infer_tasks(test), model.infer_tasks(test))


def test_errors_without_prototypes():
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, rank=2))
    with pytest.raises(TaskError, match="no task prototypes"):
        model.infer_tasks(prompts(0, 40, seed=0))
    with pytest.raises(TaskError, match="none is being trained"):
        model.observe_prompts(prompts(0, 40, seed=0))


def test_prototype_running_mean():
    protos = TaskPrototypes(3)
    protos.add(1, torch.tensor([[1.0, 0, 0], [3.0, 0, 0]]))
    assert protos.ready() == [1]
    assert protos.nearest(torch.tensor([[5.0, 0.1, 0]])).tolist() == [1]
    protos.add(0, torch.tensor([[0.0, 1.0, 0]]))
    assert protos.nearest(torch.tensor([[0.1, 2.0, 0], [2.0, 0, 0]])).tolist() == [0, 1]


def test_learned_keys_pick_the_right_task_and_are_saved(tmp_path):
    model = trained_model()
    assert all(model.prototypes.keys[t].norm() == pytest.approx(1.0) for t in range(2))  # fitted at end_task
    assert not model.prototypes.pending
    test = torch.cat([prompts(0, 40, seed=2), prompts(50, 97, seed=3)])
    assert model.infer_tasks(test, rule="keys").tolist() == [0] * 6 + [1] * 6
    model.save_pretrained(tmp_path)
    loaded = MoSEsModel.from_pretrained(build("llama"), tmp_path)
    assert torch.equal(loaded.prototypes.keys, model.prototypes.keys)
    loaded.set_task_inference(True, rule="keys")
    with torch.no_grad():
        explicit = loaded(input_ids=test[:2], task_ids=["low", "low"]).logits
        torch.testing.assert_close(loaded(input_ids=test[:2]).logits, explicit)


def test_pull_loss_decreases_and_key_aligns_with_the_mean_direction():
    protos = TaskPrototypes(8)
    generator = torch.Generator().manual_seed(7)  # not the key's own initial draw (seeded by the task index)
    direction = torch.nn.functional.normalize(torch.randn(8, generator=generator), dim=0)
    protos.add(0, direction + 0.1 * torch.randn(20, 8, generator=generator))
    losses = protos.fit_key(0)
    assert losses[-1] < 0.5 * losses[0]
    assert torch.dot(protos.keys[0], direction) > 0.95


def test_unknown_inference_rule_is_a_config_error():
    from moses.errors import ConfigError

    model = trained_model()
    with pytest.raises(ConfigError, match="rule 'nearest'"):
        model.set_task_inference(True, rule="nearest")
