"""Export of one task as a standard peft LoRA: peft (the reference) loads it and reproduces MoSEs' TIL logits."""

import copy
import json

import pytest
import torch
from peft import PeftModel

from moses import MoSEsConfig, get_moses_model
from moses.errors import TaskError

from conftest import build, random_batch, train_steps, train_task

PROBE = random_batch(seed=77, batch=2, length=9)


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=PROBE["input_ids"], **kwargs).logits


@pytest.mark.parametrize("ownership", ["entries", "subexperts"])
def test_exported_task_through_peft_equals_moses_til(arch, ownership, tmp_path):
    options = {"num_subexperts": 6, "top_k": 2, "rank": 2, "routing": "task", "ownership": ownership}
    if ownership == "subexperts":
        options["new_subexperts"] = 2
    base = build(arch)
    pristine = copy.deepcopy(base)
    model = get_moses_model(base, MoSEsConfig(**options))
    for t, name in enumerate(["a", "b", "c"]):
        train_task(model, name, steps=4, seed=t)
    for name in ("a", "c"):
        model.set_task(name)
        expected = logits(model)
        out = model.export_task_lora(name, tmp_path / name)
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["lora_alpha"] == config["r"]
        assert config["fan_in_fan_out"] == (arch == "gpt2")
        peft_model = PeftModel.from_pretrained(copy.deepcopy(pristine), str(out)).eval()
        torch.testing.assert_close(logits(peft_model), expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(logits(pristine), expected, atol=1e-4)  # the task did change the model


def test_every_task_of_a_default_run_that_borrows_nothing_exports_exactly(arch, tmp_path):
    """Token routing (the default): task 1 and a later task whose transfer gates are 0 are one LoRA each; a task
    that borrows mixes per token, and its export is refused with the way out."""
    base = build(arch)
    pristine = copy.deepcopy(base)
    model = get_moses_model(base, MoSEsConfig(num_subexperts=4, top_k=2, rank=2))
    for t, name in enumerate(["a", "b"]):
        train_task(model, name, steps=4, seed=t)
    model.add_task("c")  # trained with its transfer gates held at 0: it borrows nothing
    for _, layer in model.moses_layers():
        layer.transfer_gates[2].requires_grad_(False)

    train_steps(model, steps=4, seed=2)
    model.end_task()
    for name in ("a", "c"):
        model.set_task(name)
        out = model.export_task_lora(name, tmp_path / name)
        peft_model = PeftModel.from_pretrained(copy.deepcopy(pristine), str(out)).eval()
        torch.testing.assert_close(logits(peft_model), logits(model), atol=1e-5, rtol=1e-4)
    assert any(float(layer.transfer_gates[1]) != 0 for _, layer in model.moses_layers())
    with pytest.raises(TaskError, match="token-routed.*--approximate"):
        model.export_task_lora("b", tmp_path / "b")


def test_unfinished_and_unknown_tasks_cannot_be_exported(tmp_path):
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2, routing="task"))
    model.add_task("a")
    with pytest.raises(TaskError, match="still being trained"):
        model.export_task_lora("a", tmp_path)
    with pytest.raises(TaskError, match="unknown task 'b'"):
        model.export_task_lora("b", tmp_path)


def test_approximate_export_folds_the_mean_routing_over_the_prompts(tmp_path):
    """A token-routed task that borrows: its mean gates over the given prompts (own subexperts 1, borrowed ones
    summing to the transfer gate) folded into one LoRA, delta W = (alpha/r) sum_i mean(g_i) B_i A_i per layer."""
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2))
    for t, name in enumerate(["a", "b", "c"]):
        train_task(model, name, steps=4, seed=t)
    prompts = [random_batch(seed=s, batch=1, length=5 + s)["input_ids"][0] for s in range(4)]
    mean = model.mean_task_gates("c", prompts)
    factors = {}
    for module, layer in model.moses_layers():
        gates = mean[module]
        assert gates.shape == (3,) and gates[2] == 1.0  # c reads a's and b's subexperts and its own
        assert float(gates[:2].sum()) == pytest.approx(float(layer.transfer_gates[2]), rel=1e-5)
        a, b = layer.subexperts(2)
        factors[module] = torch.einsum("n,nor,nri->oi", gates, b, a) * layer.scaling
        assert layer.gate_record is None  # recording stops with the call
    out = model.export_task_lora("c", tmp_path / "c", mean_gates=mean)
    from safetensors.torch import load_file

    state = load_file(str(out / "adapter_model.safetensors"))
    for module, expected in factors.items():
        lora_a = state[f"base_model.model.{module}.lora_A.weight"]
        lora_b = state[f"base_model.model.{module}.lora_B.weight"]
        torch.testing.assert_close(lora_b @ lora_a, expected, rtol=1e-5, atol=1e-7)
    exact = model.mean_task_gates("a", prompts)  # task a borrows nothing: no gates to record, exact export
    assert exact == {}
    with pytest.raises(TaskError, match="no prompts"):
        model.mean_task_gates("c", [])
