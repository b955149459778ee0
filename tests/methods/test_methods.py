"""Every method on the same tiny run, plus each baseline's defining property."""

import json

import pytest
import torch

from moses.errors import ConfigError
from moses.methods import METHODS, make_method
from moses.methods.o_lora import orthogonality_loss
from moses.runner.run import run

from conftest import assert_one_error_line, build, random_batch, run_interrupted_in_second_task, tiny_config

QUIET = {"echo": lambda *_: None}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_and_resumes_from_its_checkpoint(name, tiny_model_dir, tmp_path, monkeypatch):
    config = tiny_config(tiny_model_dir, tmp_path / name, method=name, epochs=2)
    results = run(config, **QUIET)
    assert results["completed"] == 2 and len(results["R"]) == 2
    assert results["capacity"] is not None
    if METHODS[name].uses_task_id:  # isolation: earlier tasks are untouched (TIL)
        assert results["metrics"]["BWT"] == 0.0
    # resume from the first checkpoint reproduces the second stage exactly
    run_interrupted_in_second_task(tiny_config(tiny_model_dir, tmp_path / "again", method=name, epochs=2), monkeypatch)
    resumed = run(tiny_config(tiny_model_dir, tmp_path / "again", method=name, epochs=2), resume=True, **QUIET)
    assert resumed["R"] == results["R"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_two_tasks_under_bf16(name, tiny_model_dir, tmp_path):
    """Under bf16 the runner's forwards use bf16 copies of the frozen weights (`frozen_weights_cast`); a
    method's own losses and task set-up (O-LoRA's orthogonality, EWC, InfLoRA's subspace) still see fp32."""
    results = run(tiny_config(tiny_model_dir, tmp_path / name, method=name, epochs=1, precision="bf16"), **QUIET)
    assert results["completed"] == 2 and results["precision"] == "bf16"


def test_seq_lora_is_peft_lora(tiny_model_dir):
    """The baseline's adapter is peft's LoRA with the configured rank and scaling, numerically."""
    from peft import LoraConfig, get_peft_model

    from moses.models import load_model

    method = make_method("seq-lora", {"r": 4, "alpha": 8})
    base, tokenizer = load_model(tiny_model_dir)
    model = method.prepare(base, tokenizer)
    with torch.no_grad():
        for p in method.lora_parameters():
            p.normal_(0, 0.1)
    reference_base, _ = load_model(tiny_model_dir)
    reference = get_peft_model(reference_base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj",
                                                                                             "v_proj", "o_proj"]))
    reference.load_state_dict({k.replace(".t0.", ".default."): v for k, v in model.state_dict().items()})
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
        layer = reference.base_model.model.model.layers[0].self_attn.q_proj
        x = torch.randn(3, layer.in_features)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        by_hand = layer.base_layer(x) + (8 / 4) * x @ a.T @ b.T
        torch.testing.assert_close(layer(x), by_hand)


def test_o_lora_loss_zero_for_orthogonal_and_positive_otherwise():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj"]), adapter_name="t0")
    model.add_adapter("t1", LoraConfig(r=2, target_modules=["q_proj"]))
    eye = torch.eye(32)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_A") and "t0" in getattr(module, "lora_A", {}):
                module.lora_A["t0"].weight.copy_(eye[:2])
                module.lora_A["t1"].weight.copy_(eye[2:4] * 3)
    assert orthogonality_loss(model, ["t0"], "t1").item() == 0.0
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_A") and "t1" in getattr(module, "lora_A", {}):
                module.lora_A["t1"].weight[0, 0] = 0.5
    assert orthogonality_loss(model, ["t0"], "t1").item() == pytest.approx(0.5 * 2)  # two layers


def test_ewc_penalty_zero_at_anchor_and_growing_away(tiny_model_dir):
    from moses.data.demo import demo_stream
    from moses.models import load_model

    method = make_method("ewc", {"lam": 10.0, "fisher_examples": 4})
    base, tokenizer = load_model(tiny_model_dir)
    method.prepare(base, tokenizer)
    assert method.penalty() is None
    with torch.no_grad():  # a non-zero B, so A's gradient (and its Fisher) is non-zero too
        for p in method.lora_parameters():
            p.normal_(0, 0.1)
    method.on_task_end(demo_stream(n_train=4)[0], 0)
    assert method.penalty().item() == 0.0
    params = list(method.named_lora().values())
    penalties = []
    for step in (0.01, 0.1, 1.0):
        with torch.no_grad():
            saved = [p.clone() for p in params]
            for p in params:
                p.add_(step)
        penalties.append(method.penalty().item())
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    assert 0 < penalties[0] < penalties[1] < penalties[2]
    assert penalties[2] == pytest.approx(100 * penalties[1], rel=1e-3)  # quadratic


def test_replay_buffer_holds_the_configured_counts():
    from moses.data.demo import demo_stream

    method = make_method("replay", {"per_task": 5})
    alive, size = demo_stream(n_train=16)
    assert method.training_examples(alive, 0, [alive, size]) == alive.train
    method.on_task_end(alive, 0)
    mixed = method.training_examples(size, 1, [alive, size])
    assert len(mixed) == 16 + 5 and all(e in alive.train for e in mixed[16:])
    method.on_task_end(size, 1)
    assert {k: len(v) for k, v in method.buffer.items()} == {"alive": 5, "size": 5}


def test_multitask_trains_once_on_the_union():
    from moses.data.demo import demo_stream

    method = make_method("multitask")
    stream = demo_stream(n_train=8)
    assert method.training_examples(stream[0], 0, stream) == []
    assert len(method.training_examples(stream[1], 1, stream)) == 16


@pytest.mark.parametrize("name", ["multitask", "zero-shot"])
def test_untrained_rows_reuse_the_zero_shot_answers_exactly(name, tiny_model_dir, tmp_path, monkeypatch):
    """Before its first training example the model is the base model: the runner copies the zero-shot row's
    answers instead of generating them again, and they equal what generating gives."""
    from moses.runner import run as run_module

    calls = []
    real = run_module.evaluate_task
    monkeypatch.setattr(run_module, "evaluate_task", lambda *a, **k: calls.append(a[2].name) or real(*a, **k))
    reused = run(tiny_config(tiny_model_dir, tmp_path / "reused", method=name, zero_shot=True), **QUIET)
    assert calls == ["alive", "size"] + (["alive", "size"] if name == "multitask" else [])  # zero-shot row first
    monkeypatch.setattr(METHODS[name], "base_until_trained", False)
    generated = run(tiny_config(tiny_model_dir, tmp_path / "generated", method=name, zero_shot=True), **QUIET)
    assert reused["R"] == generated["R"] and reused["R"][0][0] == reused["zero_shot"][0]
    if name == "multitask":  # its first rows are the untrained model: no forgetting to measure
        assert reused["metrics"]["BWT"] is None and reused["metrics"]["forgetting"] is None
    else:
        assert reused["metrics"]["BWT"] == 0.0
    assert (tmp_path / "reused" / "predictions.jsonl").read_text() == (
        tmp_path / "generated" / "predictions.jsonl").read_text()


def test_moe_lora_never_freezes(tiny_model_dir, tmp_path):
    results = run(tiny_config(tiny_model_dir, tmp_path, method="moe-lora"), **QUIET)
    from moses.adapter import MoSEsModel
    from moses.models import load_model

    base, _ = load_model(tiny_model_dir)
    model = MoSEsModel.from_pretrained(base, tmp_path / "checkpoints" / "01-size")
    assert model.tasks == ["shared"] and model.training_task == "shared"
    assert model.moses_config.ownership == "entries" and model.moses_config.rank == 4  # one shared R1-style pool
    assert all(not la.frozen_A.any() for _, la in model.moses_layers())
    assert results["capacity"]["stored_bytes"] > 0


def test_method_options_are_checked():
    with pytest.raises(ConfigError, match="unknown option"):
        make_method("replay", {"per_tsk": 3})
    with pytest.raises(ConfigError, match="tail='guess'"):
        make_method("moses", {"tail": "guess"})
    with pytest.raises(ConfigError, match="task_density"):
        make_method("moe-lora", {"task_density": 0.5})


@pytest.mark.parametrize("name", ["moses", "replay"])
def test_lr_option_replaces_the_run_lr_for_any_method(name, tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path, method=name, epochs=1, lr=0.001,
                         options_by_method={name: {"lr": 0.05}})
    run(config, **QUIET)
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert logged and {entry["lr"] for entry in logged} == {0.05}
    with pytest.raises(ConfigError, match="lr=-1"):
        make_method(name, {"lr": -1})


def test_random_batch_helper_is_deterministic():
    assert torch.equal(random_batch(1)["input_ids"], random_batch(1)["input_ids"])


@pytest.mark.parametrize("name", ["lora-per-task", "o-lora"])
def test_lora_fresh_init_gradient_aligns_each_new_adapter(tiny_model_dir, name):
    """fresh_init="gradient" for the LoRA baselines (the control of MoSEs' own option): every new adapter's A
    spans the top right-singular vectors of the base weight's gradient on the task's first batch, computed
    here on an unwrapped base model; B stays 0; earlier adapters are untouched; inflora refuses it."""
    from moses.data.collate import training_batch
    from moses.data.demo import demo_stream
    from moses.data.loss import answer_loss
    from moses.methods.base import FIRST_BATCH
    from moses.models import load_model

    method = make_method(name, {"r": 2, "fresh_init": "gradient"})
    method.prepare(*load_model(tiny_model_dir))
    stream = demo_stream(n_train=8)
    method.on_task_start(stream[0], 0)
    method.on_task_end(stream[0], 0)
    first = {n: p.detach().clone() for n, p in method.model.named_parameters() if ".t0." in n}
    method.on_task_start(stream[1], 1)
    assert all(torch.equal(p, first[n]) for n, p in method.model.named_parameters() if ".t0." in n)
    # the base model's gradient: lora-per-task starts task 2 from it (o-lora with task 1's adapter on, so
    # there only B = 0 and the norm are checked)
    reference, tokenizer = load_model(tiny_model_dir)
    batch = training_batch(tokenizer, stream[1].train[:FIRST_BATCH], method.max_prompt_tokens,
                           method.max_answer_tokens)
    answer_loss(reference, batch)[0].backward()
    checked = 0
    for module_name, module in method.model.named_modules():
        if not (isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and "t1" in module.lora_A):
            continue
        a = module.lora_A["t1"].weight
        assert torch.equal(module.lora_B["t1"].weight, torch.zeros_like(module.lora_B["t1"].weight))
        torch.testing.assert_close(a.norm(dim=1), torch.full((2,), 3 ** -0.5), atol=1e-5, rtol=0)
        if name == "lora-per-task":
            grad = reference.get_submodule(module_name.split("base_model.model.")[-1]).weight.grad
            top = torch.linalg.svd(grad, full_matrices=False)[2][:2]
            torch.testing.assert_close((a @ top.T).abs() * 3 ** 0.5, torch.eye(2), atol=1e-3, rtol=0)
        checked += 1
    assert checked > 0
    with pytest.raises(ConfigError, match="fresh_init"):
        make_method("inflora", {"fresh_init": "gradient"})
    with pytest.raises(ConfigError, match="fresh_init"):
        make_method("seq-lora", {"fresh_init": "svd"})


def test_inflora_basis_keeps_the_threshold_of_the_input_energy():
    from moses.methods.inflora import grow_basis, projected_covariance

    torch.manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6))
    covariance = rotation @ torch.diag(torch.tensor([50.0, 30.0, 10.0, 6.0, 3.0, 1.0])) @ rotation.T
    basis = grow_basis(None, covariance, threshold=0.85, limit=6)  # 50+30 = 80% < 85% <= 90%: three directions
    assert basis.shape == (6, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(basis @ basis.T, rotation[:, :3] @ rotation[:, :3].T, atol=1e-5, rtol=0)
    residual = projected_covariance(covariance, basis)
    torch.testing.assert_close(residual @ basis, torch.zeros(6, 3), atol=1e-4, rtol=0)
    assert grow_basis(basis, covariance, threshold=0.85, limit=6) is basis  # already captured: nothing added
    assert grow_basis(None, covariance, threshold=1.0, limit=4).shape == (6, 4)  # room kept for later tasks


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inflora_fixes_a_orthogonal_to_earlier_tasks_and_trains_only_b(tiny_model_dir, precision):
    """Also under bf16 autocast, as an accelerate-prepared model runs every forward: the input covariances
    and the subspace stay fp32 (a bf16 covariance once broke the second task's start)."""
    from moses.data.demo import demo_stream
    from moses.models import load_model

    method = make_method("inflora", {"r": 2, "threshold": 0.9})
    method.prepare(*load_model(tiny_model_dir))
    stream = demo_stream(n_train=8)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        method.on_task_start(stream[0], 0)
        method.on_task_end(stream[0], 0)
        method.on_task_start(stream[1], 1)
    assert all(c.dtype == torch.float32 for c in method.covariances.values())
    assert all(b.dtype == torch.float32 for b in method.bases.values())
    assert {n.split(".lora_")[1].split(".")[0] for n, p in method.model.named_parameters() if p.requires_grad} \
        == {"B"}
    assert all(".t1." in n for n, p in method.model.named_parameters() if p.requires_grad)
    for name, module in method.lora_modules("t1").items():
        a_new, basis = module.lora_A["t1"].weight, method.bases[name]
        assert 0 < basis.shape[1] < basis.shape[0]
        torch.testing.assert_close(a_new @ a_new.T, torch.eye(2), atol=1e-4, rtol=0)
        assert (a_new @ basis).abs().max() < 1e-3  # reads only directions task 0's inputs leave out
        assert (module.lora_A["t0"].weight @ basis).norm() > 0.5  # task 0's own A lies in its subspace


@pytest.mark.parametrize(("name", "damaged", "message"), [
    ("inflora", "inflora_bases.safetensors", "inflora_bases.safetensors: missing or corrupt"),
    ("o-lora", "adapter_tasks.json", "adapter_tasks.json: missing or malformed"),
])
def test_damaged_lora_checkpoint_is_one_line_exit_2(name, damaged, message, tiny_model_dir, tmp_path, capsys):
    from moses.cli import main
    from moses.errors import CheckpointError
    from moses.models import load_model

    run(tiny_config(tiny_model_dir, tmp_path, method=name, epochs=1), **QUIET)
    checkpoint = tmp_path / "checkpoints" / "01-size"
    (checkpoint / damaged).write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert main(["eval", str(tmp_path)]) == 2  # the run's manifest catches it first
    assert_one_error_line(capsys.readouterr().err, f"not usable ({damaged} does not match its checksum)")
    with pytest.raises(CheckpointError, match=message):  # and the method's own loader names the file too
        make_method(name).load(*load_model(tiny_model_dir), checkpoint)
