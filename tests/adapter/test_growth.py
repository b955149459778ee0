"""Borrowing chosen by loss (router_init="best") and growth by need (growth="loss"): a task reads the earlier
subexperts that fit its first batch best, and adds subexperts of its own only when that start is not good
enough; a task that only borrows stores its router and gate, nothing else, and behaves like any other task
(frozen when ended, saved and loaded, mixed batches, exact export)."""

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from moses import MoSEsConfig, MoSEsModel, get_moses_model
from moses.errors import CheckpointError, ConfigError, TaskError

from conftest import build, random_batch, train_steps, train_task

PROBE = random_batch(seed=55, batch=3, length=8)


def growth_config(**overrides) -> MoSEsConfig:
    return MoSEsConfig(**{"rank": 2, "routing": "task", "router_init": "best", "new_subexperts": 1,
                          "transfer_lr_scale": 1.0, **overrides})


def logits(model, task=None, **kwargs):
    if task is not None:
        model.set_task(task)
    with torch.no_grad():
        return model(input_ids=PROBE["input_ids"], **kwargs).logits


def batch_loss(model, seed):
    batch = random_batch(1000 + seed)
    return lambda: model(**batch).loss


def add_and_choose(model, name, seed):
    model.add_task(name)
    return model.choose_borrowed(batch_loss(model, seed))


def test_the_chosen_start_is_the_lowest_first_batch_loss_and_reads_that_task():
    model = get_moses_model(build("llama"), growth_config())
    train_task(model, "a", steps=6, seed=0)
    train_task(model, "b", steps=6, seed=1)
    source = add_and_choose(model, "c", seed=1)  # c's first batch is b's training batch
    losses = model.task_list.start_losses[2]
    assert set(losses) == {"none", "a", "b"} and source == 1 and losses["b"] == min(losses.values())
    with torch.no_grad():
        assert float(batch_loss(model, 1)()) == pytest.approx(losses["b"], rel=1e-6)  # the start kept
    for _, layer in model.moses_layers():
        gates = layer.dedicated_gates(layer.dedicated_logits(None, 2), 2)
        assert gates[1] > 0.99 and gates[2] == 1.0 and layer.transfer_gates[2].item() == 1.0
    assert model.task_list.read_from == [None, None, 1] and model.task_list.grew == [True, True, True]


def test_borrowing_nothing_wins_when_no_earlier_task_helps():
    model = get_moses_model(build("llama"), growth_config())
    train_task(model, "a", steps=6, seed=0)
    base = logits(model, "a")
    model.add_task("b")
    drawn = [la.routers[1].detach().clone() for _, la in model.moses_layers()]
    with torch.no_grad():
        for _, layer in model.moses_layers():  # a's subexperts made useless for b: a large random B
            layer.own_B[0].normal_(0, 5.0)
    source = model.choose_borrowed(batch_loss(model, 3))
    assert source is None and model.task_list.start_losses[1]["none"] < model.task_list.start_losses[1]["a"]
    assert all(la.transfer_gates[1].item() == 0.0 for _, la in model.moses_layers())
    assert all(torch.equal(la.routers[1], d) for (_, la), d in zip(model.moses_layers(), drawn, strict=True))
    assert not torch.equal(base, logits(model, "b"))  # b starts as the base model, not as a


def test_a_task_that_only_borrows_trains_its_routing_alone_and_stores_only_that(tmp_path):
    model = get_moses_model(build("llama"), growth_config(growth="loss", growth_threshold=1e9))
    train_task(model, "a", steps=6, seed=0)
    train_task(model, "b", steps=6, seed=1)
    frozen = {n: [p.detach().clone() for t in (0, 1) for p in la.task_parameters(t)] for n, la in model.moses_layers()}
    add_and_choose(model, "c", seed=1)
    assert model.task_list.grew == [True, True, False]
    assert [t["own_subexperts"] for t in model.capacity()["tasks"]] == [1, 1]  # ended tasks only
    groups = {g["name"]: g["params"] for g in model.optimizer_param_groups(1e-2)}
    layers = [la for _, la in model.moses_layers()]
    assert "subexperts" not in groups and len(groups["transfer"]) == 2 * len(layers)  # gate and logits per layer
    assert model.trainable_parameter_counts()[0] == sum(la.routers[2].numel() + 1 for la in layers)
    before = logits(model)
    losses = train_steps(model, steps=6, lr=5e-2, seed=1)
    model.end_task()
    assert losses[-1] < losses[0] and not torch.equal(before, logits(model, "c"))
    for name, la in model.moses_layers():
        assert la.own_counts() == [1, 1, 0] and la.readable_subexperts(2) == 2
        assert all(torch.equal(p, q) for p, q in zip([p for t in (0, 1) for p in la.task_parameters(t)],
                                                     frozen[name], strict=True))
    train_task(model, "d", steps=3, seed=3)  # after a task that owns nothing: d borrows a's and b's
    assert all(la.routers[3].shape == (2,) for la in layers)
    x = torch.randn(2, 4, layers[0].in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for layer in layers:
            for task in range(4):
                torch.testing.assert_close(layer.adapter_delta(x, task), layer.reference_delta(x, task),
                                           rtol=1e-5, atol=1e-6)
    capacity = model.capacity()
    records = [(t["own_subexperts"], t["read_from"]) for t in capacity["tasks"]]
    assert records[:3] == [(1, None), (1, None), (0, "b")] and records[3][0] == 1
    assert capacity["subexperts_per_projection"] == 3
    gates = capacity["gate_matrix"]  # c reads b (and a little of a), owns nothing; a borrows nothing
    assert gates[0] == [1.0] and gates[2][2] == 0.0 and gates[2][1] > 0.9 and gates[3][3] == 1.0
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert not any(".own_A.2" in k or ".own_B.2" in k for k in saved) and "routers.2" in saved
    assert model.capacity()["stored_bytes"] == sum(f.stat().st_size for f in tmp_path.iterdir())
    loaded = MoSEsModel.from_pretrained(build("llama"), tmp_path)
    assert loaded.task_list.grew == [True, True, False, True]
    alone = {name: logits(model, name) for name in ("a", "b", "c", "d")}
    for name in alone:
        assert torch.equal(logits(loaded, name), alone[name])
    mixed = logits(loaded, task_ids=torch.tensor([2, 3, 0]))
    for row, name in enumerate(["c", "d", "a"]):
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=1e-5, atol=1e-5)


def test_a_task_that_only_borrows_exports_as_one_exact_lora(tmp_path):
    base = build("qwen2")
    pristine = copy.deepcopy(base)
    model = get_moses_model(base, growth_config(growth="loss", growth_threshold=1e9))
    train_task(model, "a", steps=4, seed=0)
    add_and_choose(model, "b", seed=0)
    train_steps(model, steps=3, seed=0)
    model.end_task()
    out = model.export_task_lora("b", tmp_path / "b")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(pristine), str(out)).eval()
    torch.testing.assert_close(logits(peft_model), logits(model, "b"), atol=1e-5, rtol=1e-4)


def test_growth_threshold_zero_always_grows():
    model = get_moses_model(build("llama"), growth_config(growth="loss", growth_threshold=0.0))
    for t, name in enumerate(["a", "b", "c"]):
        if t:
            add_and_choose(model, name, seed=t)
        else:
            model.add_task(name)
        train_steps(model, steps=2, seed=t)
        model.end_task()
    assert model.task_list.grew == [True, True, True]
    assert next(la for _, la in model.moses_layers()).own_counts() == [1, 1, 1]


def test_growth_options_are_checked_and_misuse_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="routing='task'"):
        MoSEsConfig(router_init="best")
    with pytest.raises(ConfigError, match="growth"):
        MoSEsConfig(growth="loss")
    with pytest.raises(ConfigError, match="own_init"):
        MoSEsConfig(routing="task", router_init="best", own_init="best")
    with pytest.raises(ConfigError, match="growth_threshold"):
        growth_config(growth="loss", growth_threshold=-1.0)
    assert growth_config().own_init == "fresh" and MoSEsConfig().own_init == "best"
    model = get_moses_model(build("llama"), MoSEsConfig(routing="task"))
    model.add_task("a")
    with pytest.raises(TaskError, match="router_init='best'"):
        model.choose_borrowed(lambda: torch.tensor(0.0))
    layer = next(la for _, la in model.moses_layers())
    with pytest.raises(TaskError, match="not the first"):
        layer.drop_own_subexperts(0)
    grown = get_moses_model(build("llama"), growth_config(growth="loss", growth_threshold=1e9))
    train_task(grown, "a", steps=2)
    add_and_choose(grown, "b", seed=0)
    grown.end_task()
    grown.save_pretrained(tmp_path)
    path = tmp_path / "moses_tasks.json"
    tasks = json.loads(path.read_text())
    assert tasks["grew"] == [True, False]
    path.write_text(json.dumps({**tasks, "grew": [False, False]}))  # the first task always owns subexperts
    with pytest.raises(CheckpointError, match="'grew'"):
        MoSEsModel.from_pretrained(build("llama"), tmp_path)
