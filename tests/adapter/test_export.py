"""Export of one task as a standard peft LoRA: peft (the reference) loads it and reproduces MoSEs' TIL logits."""

import copy
import json

import pytest
import torch
from peft import PeftModel

from moses import MoSEsConfig, get_moses_model
from moses.errors import TaskError

from conftest import build, random_batch, train_task

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


def test_token_routed_and_unfinished_tasks_cannot_be_exported(tmp_path):
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2))
    train_task(model, "a", steps=1)
    with pytest.raises(TaskError, match="token-routed.*routing='task'"):
        model.export_task_lora("a", tmp_path)
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2, routing="task"))
    model.add_task("a")
    with pytest.raises(TaskError, match="still being trained"):
        model.export_task_lora("a", tmp_path)
    with pytest.raises(TaskError, match="unknown task 'b'"):
        model.export_task_lora("b", tmp_path)
