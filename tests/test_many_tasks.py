"""No task limit: an adapter grows to 20 tasks on the defaults (num_subexperts=8, one new subexpert per task),
every old task's TIL logits stay bit-identical across the growth, the save and a load into a fresh base
model, and the serving engine answers every task as `generate` with its task id does."""

import torch

from moses import MoSEsConfig, MoSEsModel, get_moses_model
from moses.models import load_model
from moses.serve import Engine, GenerationRequest

from conftest import random_batch, train_steps

TASKS = [f"task-{i:02d}" for i in range(20)]
PROBE = random_batch(seed=2020, batch=2, length=6)


def til(model: MoSEsModel, task: str) -> torch.Tensor:
    model.set_task(task)
    with torch.no_grad():
        return model(input_ids=PROBE["input_ids"]).logits


def test_twenty_tasks_grow_save_load_and_serve(tiny_model_dir, tmp_path):
    config = MoSEsConfig()
    assert config.num_subexperts // config.new_subexperts < len(TASKS)  # past the old limit of 8
    base, tokenizer = load_model(tiny_model_dir)
    model = get_moses_model(base, config)
    recorded = {}
    for i, name in enumerate(TASKS):
        model.add_task(name)
        train_steps(model, steps=2, lr=5e-2, seed=i)
        model.end_task()
        recorded[name] = til(model, name)
    for name in TASKS:
        assert torch.equal(til(model, name), recorded[name]), name
    assert len(next(layer for _, layer in model.moses_layers()).own_A) == 20
    model.save_pretrained(tmp_path / "adapter")
    assert model.capacity()["stored_bytes"] == sum(f.stat().st_size for f in (tmp_path / "adapter").iterdir())
    loaded = MoSEsModel.from_pretrained(load_model(tiny_model_dir)[0], tmp_path / "adapter")
    assert loaded.tasks == TASKS
    for name in TASKS:
        assert torch.equal(til(loaded, name), recorded[name]), name

    engine = Engine(loaded, tokenizer, tiny_model_dir, precision="fp32")
    prompts, tasks = ["the cat is", "a stone"], [0, 19]
    results = engine.generate([GenerationRequest(prompt=p, task=TASKS[t], max_tokens=5, temperature=0.0,
                                                 ignore_eos=True) for p, t in zip(prompts, tasks, strict=True)])
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = loaded.generate(**batch, task_ids=torch.tensor(tasks), max_new_tokens=5, min_new_tokens=5,
                              do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = [tokenizer.decode(row, skip_special_tokens=True) for row in out[:, batch["input_ids"].shape[1]:]]
    assert [r.text for r in results] == expected
    assert [r.task for r in results] == [TASKS[0], TASKS[19]]
