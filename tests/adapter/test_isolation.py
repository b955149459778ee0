"""No forgetting under the optimizers people use: an ended task's TIL logits stay bit-identical while a later
task trains with AdamW (weight decay 0.1; foreach and fused), SGD with momentum and weight decay, or
transformers' Adafactor, handed every parameter of the model as a naive loop does, with a fresh optimizer or
the same one carried over; through a plain loop, `transformers.Trainer` and the runner; in fp32 and under
bf16 autocast. Isolation is structural (an ended task's parameters have requires_grad=False and no gradient),
and the last test shows the check does see a leak when that structure is broken by hand."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from transformers.optimization import Adafactor

from moses import MoSEsConfig, MoSEsModel, get_moses_model
from moses.precision import autocast

from conftest import build, random_batch

PROBE = random_batch(seed=404, batch=2, length=8)
OPTIMIZERS = {
    "adamw-foreach": lambda params: torch.optim.AdamW(params, lr=5e-2, weight_decay=0.1, foreach=True),
    "adamw-fused": lambda params: torch.optim.AdamW(params, lr=5e-2, weight_decay=0.1, fused=True),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=5e-2, momentum=0.9, weight_decay=0.1),
    "adafactor": lambda params: Adafactor(params, lr=5e-2, weight_decay=0.1, scale_parameter=False,
                                          relative_step=False, warmup_init=False),
}


def precision_context(precision: str):
    return autocast("bf16", "cpu") if precision == "bf16" else contextlib.nullcontext()


def til_logits(model: MoSEsModel, task: str, precision: str) -> torch.Tensor:
    model.set_task(task)
    model.eval()
    with torch.no_grad(), precision_context(precision):
        return model(input_ids=PROBE["input_ids"], attention_mask=PROBE["attention_mask"]).logits


def train(model: MoSEsModel, optimizer, seed: int, precision: str, steps: int = 4) -> None:
    model.train()
    batch = random_batch(500 + seed)
    for _ in range(steps):
        with precision_context(precision):
            loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def new_parameters(model: MoSEsModel, optimizer) -> list[torch.nn.Parameter]:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [p for p in model.parameters() if id(p) not in held]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "reused"])
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_ended_tasks_stay_bit_identical_under_any_optimizer(optimizer_name, reuse, precision):
    make = OPTIMIZERS[optimizer_name]
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2))
    recorded: dict[str, torch.Tensor] = {}
    optimizer = None
    for t, name in enumerate(["a", "b", "c"]):
        model.add_task(name)
        if optimizer is None or not reuse:
            optimizer = make(list(model.parameters()))  # everything, frozen base and frozen tasks included
        else:  # the same optimizer, its state for the earlier tasks kept, and the new task's parameters added
            optimizer.add_param_group({"params": new_parameters(model, optimizer)})
        train(model, optimizer, seed=t, precision=precision)
        model.end_task()
        recorded[name] = til_logits(model, name, precision)
        for done in recorded:
            assert torch.equal(til_logits(model, done, precision), recorded[done]), (name, done)
    assert not torch.equal(recorded["a"], recorded["c"])  # the tasks did learn something different


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("optim", ["adamw_torch", "adafactor"])
def test_trainer_keeps_ended_tasks_and_its_columns(optim, precision, tmp_path):
    """`transformers.Trainer` as is (remove_unused_columns left on), weight decay 0.1, one Trainer per task."""
    from transformers import Trainer, TrainingArguments

    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2))
    recorded: dict[str, torch.Tensor] = {}
    for t, name in enumerate(["a", "b"]):
        model.add_task(name)
        batch = random_batch(600 + t, batch=4)
        dataset = [{key: value[i] for key, value in batch.items()} for i in range(4)]
        args = TrainingArguments(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=2,
                                 learning_rate=5e-2, weight_decay=0.1, optim=optim, bf16=precision == "bf16",
                                 use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, seed=t)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        Trainer(model=model, args=args, train_dataset=dataset).train()
        moved = [p for p, q in zip((p for p in model.parameters() if p.requires_grad), before, strict=True)
                 if not torch.equal(p, q)]
        assert moved  # the Trainer did train the task (it received the columns)
        model.end_task()
        recorded[name] = til_logits(model, name, precision)
    assert torch.equal(til_logits(model, "a", precision), recorded["a"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_runner_with_weight_decay_keeps_the_first_task(tiny_model_dir, tmp_path, precision):
    """`moses run` with AdamW weight decay 0.1: task 1's TIL logits from the checkpoint after task 1 equal
    those from the final checkpoint."""
    from moses.cli import main
    from moses.models import load_model

    run = tmp_path / "run"
    assert main(["run", "--model", tiny_model_dir, "--n-train", "8", "--n-test", "2", "--epochs", "2",
                 "--batch-size", "4", "--device", "cpu", "--precision", precision, "--weight-decay", "0.1",
                 "--lr", "0.05", "--output", str(run)]) == 0
    checkpoints = sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    first, last = (MoSEsModel.from_pretrained(load_model(tiny_model_dir)[0], checkpoint)
                   for checkpoint in (checkpoints[0], checkpoints[-1]))
    task = first.tasks[0]
    assert len(last.tasks) == 2 and last.tasks[0] == task
    assert torch.equal(til_logits(first, task, precision), til_logits(last, task, precision))
    assert not torch.equal(til_logits(last, last.tasks[1], precision), til_logits(last, task, precision))
    per_task = json.loads((run / "results.json").read_text())["trainable_parameters_per_task"]
    layers = [layer for _, layer in last.moses_layers()]  # task 0 trains its subexperts; task 1 also a router, gate
    assert per_task == [sum(la.own_A[0].numel() + la.own_B[0].numel() for la in layers),
                        sum(p.numel() for la in layers for p in la.task_parameters(1))]


def test_the_check_sees_a_leak_when_isolation_is_broken_by_hand():
    """Sensitivity of the tests above: hand an ended task's parameters back to training (requires_grad and a
    zero gradient, as some frameworks materialise) and AdamW's weight decay moves its logits."""
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2))
    model.add_task("a")
    train(model, OPTIMIZERS["adamw-foreach"](list(model.parameters())), seed=0, precision="fp32")
    model.end_task()
    recorded = til_logits(model, "a", "fp32")
    model.add_task("b")
    for _, layer in model.moses_layers():
        for param in layer.task_parameters(0):
            param.requires_grad_(True)
            param.grad = torch.zeros_like(param)
    optimizer = OPTIMIZERS["adamw-foreach"](list(model.parameters()))
    optimizer.step()  # weight decay alone
    assert not torch.equal(til_logits(model, "a", "fp32"), recorded)
