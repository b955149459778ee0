"""save_pretrained / from_pretrained: bit-exact round trips and clear errors for bad directories."""

import json

import pytest
import torch
from safetensors.torch import load_file

from moses import MoSEsConfig, MoSEsModel, get_moses_model
from moses.errors import CheckpointError

from conftest import R1, build, random_batch, train_task

PROBE = random_batch(seed=99, batch=2, length=8)["input_ids"]


def config(**overrides) -> MoSEsConfig:
    return MoSEsConfig(**{**R1, "num_subexperts": 4, "top_k": 2, "rank": 2, **overrides})


def outputs(model, task):
    model.set_task(task)
    with torch.no_grad():
        return model(input_ids=PROBE).logits


@pytest.fixture
def saved(tmp_path, arch):
    model = get_moses_model(build(arch), config())
    train_task(model, "a", steps=3)
    train_task(model, "b", steps=3, seed=1)
    model.save_pretrained(tmp_path / "adapter")
    return arch, model, tmp_path / "adapter"


def test_round_trip_is_bit_exact(saved):
    arch, model, directory = saved
    assert {p.name for p in directory.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                    "moses_tasks.json"}
    loaded = MoSEsModel.from_pretrained(build(arch), directory)
    assert loaded.tasks == ["a", "b"] and loaded.moses_config == model.moses_config
    for task in ("a", "b"):
        assert torch.equal(outputs(loaded, task), outputs(model, task))
    assert loaded.capacity() == model.capacity()
    # training continues after loading exactly as it would have without the round trip
    for m in (model, loaded):
        torch.manual_seed(5)
        train_task(m, "c", steps=2, seed=2)
    assert torch.equal(outputs(loaded, "c"), outputs(model, "c"))


def test_masks_are_stored_bit_packed(saved):
    _, model, directory = saved
    state = load_file(str(directory / "adapter_model.safetensors"))
    name, layer = next(iter(model.moses_layers()))
    packed = state[f"{name}.mask_A.0"]
    assert packed.dtype == torch.uint8 and packed.numel() == (layer.lora_A.numel() + 7) // 8


def test_mid_task_checkpoint_resumes_training(tmp_path):
    model = get_moses_model(build("llama"), config())
    train_task(model, "a", steps=2)
    model.add_task("b")
    model.save_pretrained(tmp_path)
    loaded = MoSEsModel.from_pretrained(build("llama"), tmp_path)
    assert loaded.training_task == "b"
    groups = loaded.optimizer_param_groups(1e-3)
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_other_config_is_rejected(saved):
    arch, _, directory = saved
    with pytest.raises(CheckpointError, match="saved with another config.*rank: saved 2, given 4"):
        MoSEsModel.from_pretrained(build(arch), directory, config=config(rank=4))


def edit_saved_config(directory, **changes) -> None:
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_edited_config_mismatching_weights_is_rejected(saved):
    arch, _, directory = saved
    edit_saved_config(directory, num_subexperts=8)
    with pytest.raises(CheckpointError, match="adapter_model.safetensors.*shape"):
        MoSEsModel.from_pretrained(build(arch), directory)


def test_other_base_model_is_rejected(saved):
    arch, _, directory = saved
    other = "gpt2" if arch != "gpt2" else "llama"
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        MoSEsModel.from_pretrained(build(other), directory)


def test_truncated_weights_are_rejected(saved):
    arch, _, directory = saved
    path = directory / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: corrupt or truncated"):
        MoSEsModel.from_pretrained(build(arch), directory)


@pytest.mark.parametrize("filename,content,message", [
    ("adapter_config.json", "{not json", "adapter_config.json: malformed JSON at line 1"),
    ("adapter_config.json", '{"peft_type": "LORA"}', "not a MoSEs adapter config"),
    ("adapter_config.json", None, "adapter_config.json: file not found"),
    ("moses_tasks.json", '{"tasks": "a"}', "moses_tasks.json: expected"),
    ("adapter_model.safetensors", None, "adapter_model.safetensors: file not found"),
])
def test_broken_directory_files(saved, filename, content, message):
    arch, _, directory = saved
    if content is None:
        (directory / filename).unlink()
    else:
        (directory / filename).write_text(content)
    with pytest.raises(CheckpointError, match=message):
        MoSEsModel.from_pretrained(build(arch), directory)


def test_bad_value_in_saved_config_names_file_and_field(saved):
    arch, _, directory = saved
    edit_saved_config(directory, top_k=0)
    with pytest.raises(CheckpointError, match="adapter_config.json: MoSEsConfig.top_k=0"):
        MoSEsModel.from_pretrained(build(arch), directory)


def test_config_saved_before_r2_became_the_default_loads_as_r1(saved):
    """An adapter_config.json written before these fields existed has no ownership, router_input or own_init
    keys: it loads under the defaults it was saved with (reading R1), not under today's R2 defaults."""
    arch, model, directory = saved
    path = directory / "adapter_config.json"
    data = json.loads(path.read_text())
    for key in ("ownership", "router_input", "own_init"):
        del data[key]
    path.write_text(json.dumps(data))
    loaded = MoSEsModel.from_pretrained(build(arch), directory)
    assert loaded.moses_config.ownership == "entries" and loaded.moses_config.own_init == "fresh"
    assert torch.equal(outputs(loaded, "b"), outputs(model, "b"))
    assert MoSEsConfig().ownership == "subexperts" and MoSEsConfig().own_init == "best"
    assert MoSEsConfig(ownership="entries").own_init == "fresh"
