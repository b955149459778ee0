"""Reading R2, "dedicated subexperts": each task owns whole new subexperts, borrows old ones through its
router and a transfer gate; the spec's invariants hold, and a new task starts at delta 0."""

import pytest
import torch

from moses import MoSEsConfig, MoSEsModel, get_moses_model
from moses.errors import ConfigError, TaskError

from conftest import build, random_batch, train_steps, train_task

PROBE = random_batch(seed=321, batch=2, length=8)


def dedicated_config(**overrides) -> MoSEsConfig:
    return MoSEsConfig(**{"num_subexperts": 6, "top_k": 2, "rank": 2, "ownership": "subexperts",
                          "new_subexperts": 2, "transfer_lr_scale": 1.0,
                          **overrides})


def probe(model, task=None):
    if task is not None:
        model.set_task(task)
    with torch.no_grad():
        return model(input_ids=PROBE["input_ids"]).logits


@pytest.mark.parametrize("router_input", ["hidden", "subexperts"])
def test_dedicated_subexperts_keep_old_tasks_and_start_at_zero(arch, router_input):
    base = build(arch)
    with torch.no_grad():
        base_logits = base(input_ids=PROBE["input_ids"]).logits
    model = get_moses_model(base, dedicated_config(router_input=router_input))
    recorded, owned = {}, []
    for t, name in enumerate(["t1", "t2", "t3"]):
        model.add_task(name)
        assert torch.equal(probe(model), base_logits)  # own B = 0 and transfer gate 0: every task starts at 0
        losses = train_steps(model, steps=5, seed=t)
        model.end_task()
        assert losses[-1] < losses[0]
        recorded[name] = probe(model, name)
        owned.append({n: [p.detach().clone() for p in la.task_parameters(t)] for n, la in model.moses_layers()})
    for name, logits in recorded.items():
        assert torch.equal(probe(model, name), logits)  # invariant 1
    for n, la in model.moses_layers():
        for t in (0, 1):  # tasks t1, t2's subexperts, routers and gates: frozen and untouched by t3 (invariant 2)
            pairs = zip(la.task_parameters(t), owned[t][n], strict=True)
            assert all(not p.requires_grad and torch.equal(p, q) for p, q in pairs)
        assert la.transfer_gates[1].item() != 0.0 and la.transfer_gates[0].item() == 0.0  # t1 has none to borrow
        assert la.routers[0].numel() == 0 and la.routers[2].shape[0] == 4  # t3 may borrow t1's and t2's 4
    capacity = model.capacity()
    assert capacity["used_fraction"] == 1.0
    assert [t["owned_entries"] for t in capacity["tasks"]] == [capacity["pool_entries"] // 3] * 3
    train_task(model, "t4", steps=2, seed=3)  # past num_subexperts / new_subexperts = 3 tasks: no limit
    assert model.tasks == ["t1", "t2", "t3", "t4"]
    for name, logits in recorded.items():
        assert torch.equal(probe(model, name), logits)


@pytest.mark.parametrize("router_input,routing,top_k", [("subexperts", "token", 2), ("hidden", "token", 2),
                                                          ("hidden", "task", 2), ("subexperts", "token", 5)])
def test_pool_forward_equals_the_masked_reference_and_serves_mixed_batches(router_input, routing, top_k):
    """R2 computes every task on the whole pool (no mask products): each task's delta equals the masked
    per-subexpert reference, with the later tasks' trained subexperts present in the pool, and one mixed
    batch (tasks 1, 3, 2, none) equals each task run alone."""
    model = get_moses_model(build("llama"), dedicated_config(router_input=router_input, routing=routing,
                                                             top_k=top_k))  # 5: more than tasks 1, 2 can borrow
    for t, name in enumerate(["t1", "t2", "t3"]):
        train_task(model, name, steps=3, seed=t)
    x = torch.randn(2, 5, next(la for _, la in model.moses_layers()).in_features,
                    generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        for _, layer in model.moses_layers():
            for task in range(3):
                torch.testing.assert_close(layer.adapter_delta(x, task), layer.reference_delta(x, task),
                                           rtol=1e-5, atol=1e-6)
    batch = random_batch(seed=9, batch=4, length=6)
    alone = {name: probe_ids(model, name, batch["input_ids"]) for name in ("t1", "t2", "t3")}
    with torch.no_grad():
        base = model(input_ids=batch["input_ids"], task_ids=torch.full((4,), -1)).logits  # -1: no adapter
        mixed = model(input_ids=batch["input_ids"], task_ids=torch.tensor([0, 2, 1, -1])).logits
    for row, name in enumerate(["t1", "t3", "t2"]):
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=1e-5, atol=1e-5)
    assert torch.equal(mixed[3], base[3])
    with torch.no_grad():  # a batch of the first task alone: nothing to borrow anywhere
        first = model(input_ids=batch["input_ids"], task_ids=torch.zeros(4, dtype=torch.long)).logits
    torch.testing.assert_close(first, alone["t1"], rtol=1e-5, atol=1e-5)
    with pytest.raises(TaskError, match="task 3 is not stored"):
        next(la for _, la in model.moses_layers()).adapter_delta(x, 3)


def probe_ids(model, task, input_ids):
    model.set_task(task)
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_dedicated_gates_borrow_top_k_of_the_old_subexperts():
    model = get_moses_model(build("llama"), dedicated_config())
    for name in ("a", "b"):
        train_task(model, name, steps=2)
    model.add_task("c")
    layer = next(la for _, la in model.moses_layers())
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    gates = layer.dedicated_gates(logits, task=2)  # task 2 owns 4, 5 and may borrow from 0-3
    gate = layer.transfer_gates[2]
    assert torch.equal(gates[0, 4:], torch.ones(2))
    expected = torch.tensor([0.5, 2.0]).softmax(0) * gate
    assert torch.allclose(gates[0, [3, 2]], expected) and gates[0, 0] == 0 and gates[0, 1] == 0


def test_dedicated_round_trip_and_errors(tmp_path):
    model = get_moses_model(build("qwen2"), dedicated_config(router_init="previous", transfer_lr_scale=10.0))
    train_task(model, "a", steps=3)
    train_task(model, "b", steps=3, seed=1)
    model.add_task("c")
    first = next(la for _, la in model.moses_layers())
    previous = first.routers[1]
    assert torch.equal(first.routers[2][: previous.shape[0], : previous.shape[1]], previous)  # router_init
    transfer = next(g for g in model.optimizer_param_groups(1e-3) if g["name"] == "transfer")
    assert transfer["lr"] == pytest.approx(1e-2) and transfer["params"][0] is first.transfer_gates[2]
    train_steps(model, steps=2, seed=2)
    model.end_task()
    model.save_pretrained(tmp_path)
    loaded = MoSEsModel.from_pretrained(build("qwen2"), tmp_path)
    for task in ("a", "b", "c"):
        assert torch.equal(probe(loaded, task), probe(model, task))
    with pytest.raises(ConfigError, match="new_subexperts"):
        MoSEsConfig(num_subexperts=4, new_subexperts=5)
    with pytest.raises(ConfigError, match="ownership"):
        MoSEsConfig(ownership="tasks")
    with pytest.raises(ConfigError, match="router_init"):
        MoSEsConfig(router_init="mean")


def test_own_init_previous_starts_from_the_previous_task():
    model = get_moses_model(build("llama"), dedicated_config(own_init="previous"))
    model.add_task("a")
    train_steps(model, steps=5, seed=0)
    model.end_task()
    ended = probe(model, "a")
    model.add_task("b")
    assert torch.equal(probe(model), ended)  # b starts as a (its copies on, a's own borrowed with gate 0)
    train_steps(model, steps=5, seed=1)
    model.end_task()
    assert torch.equal(probe(model, "a"), ended) and not torch.equal(probe(model, "b"), ended)
    with pytest.raises(ConfigError, match="own_init"):
        MoSEsConfig(own_init="mean")
    with pytest.raises(ConfigError, match="own_init='previous': needs ownership='subexperts'"):
        MoSEsConfig(own_init="previous", ownership="entries")


def test_own_init_best_keeps_the_start_with_the_lowest_loss():
    """Three tasks: b memorises batch 1, c memorises batch 2; task d, whose loss is b's batch, starts from b's
    own subexperts (lower loss than fresh or a's or c's); task e, scored by a constant, keeps fresh (ties go
    to fresh, delta 0)."""
    base = build("llama")
    with torch.no_grad():
        base_logits = base(input_ids=PROBE["input_ids"]).logits
    model = get_moses_model(base, dedicated_config(num_subexperts=10, own_init="best"))
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        train_task(model, name, steps=6, seed=seed)
    target = random_batch(1000 + 1)  # the batch train_steps(seed=1) memorised: task b's
    model.add_task("d")

    def loss_on_b_batch() -> torch.Tensor:
        return model(**target).loss

    losses = {}
    for source in (None, "a", "b", "c"):
        model.start_own_subexperts(source)
        losses[source] = loss_on_b_batch().item()
    assert min(losses, key=losses.get) == "b"
    assert model.choose_own_init(loss_on_b_batch) == 1 and model.own_init_sources[3] == 1
    assert loss_on_b_batch().item() == pytest.approx(losses["b"])
    layer = next(la for _, la in model.moses_layers())
    assert torch.equal(layer.own_A[3], layer.own_A[1]) and torch.equal(layer.own_B[3], layer.own_B[1])
    train_steps(model, steps=2, seed=3)  # the copies train; b's originals stay frozen
    assert not torch.equal(layer.own_B[3], layer.own_B[1])
    model.end_task()
    model.add_task("e")
    assert model.choose_own_init(lambda: torch.tensor(1.0)) is None  # nothing beats fresh
    assert torch.equal(layer.own_B[4], torch.zeros_like(layer.own_B[4]))
    assert torch.equal(probe(model), base_logits)  # fresh: the task starts at delta 0
    model.end_task()
    assert [t["own_init_from"] for t in model.capacity()["tasks"]] == [None, None, None, "b", None]
    with pytest.raises(TaskError, match="needs ownership='subexperts' and a task being trained"):
        model.start_own_subexperts("a")


def test_saved_file_holds_what_exists_and_capacity_counts_its_bytes(tmp_path):
    """R2 writes each task's own subexperts, and routers and gates from task 1 on: no scores, no masks, no
    untrained slots; capacity()'s stored_bytes are the sizes of the files written."""
    from safetensors.torch import load_file

    model = get_moses_model(build("llama"), dedicated_config())
    train_task(model, "a", steps=1)
    train_task(model, "b", steps=1, seed=1)
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "adapter_model.safetensors"))
    kinds = {key.rsplit(".", 2)[-2] + "." + key.rsplit(".", 1)[-1] for key in state}
    assert kinds == {"own_A.0", "own_B.0", "own_A.1", "own_B.1", "routers.1", "transfer_gates.1"}
    layers = len(list(model.moses_layers()))
    expected = sum(p.numel() for _, la in model.moses_layers() for t in (0, 1) for p in la.task_parameters(t))
    assert sum(v.numel() for v in state.values()) == expected - layers * 1  # task 0's gate (its router is empty)
    assert model.capacity()["stored_bytes"] == sum(f.stat().st_size for f in tmp_path.iterdir())
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(build("llama"), LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    lora.save_pretrained(tmp_path / "lora")  # one LoRA of the rank a task owns (2 subexperts of rank 2)
    lora_bytes = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    router_bytes = 4 * (state["routers.1"].numel() + state["transfer_gates.1"].numel())
    assert (tmp_path / "adapter_model.safetensors").stat().st_size <= 2 * lora_bytes + router_bytes


@pytest.mark.parametrize("arch_name", ["llama", "gpt2"])
def test_fresh_init_gradient_aligns_a_with_the_full_weight_gradient(arch_name):
    """fresh_init="gradient": a fresh task's own A spans the top right-singular vectors of the base weight's
    gradient on the given batch (computed here on an unwrapped copy of the base model), rows at norm 1/sqrt(3);
    B stays 0 (delta 0), earlier tasks' subexperts and the base weights are untouched, and with own_init
    "previous" the copied start is restored."""
    reference = build(arch_name)
    batch = random_batch(7)
    reference.zero_grad()
    reference(**batch).loss.backward()
    model = get_moses_model(build(arch_name), dedicated_config(fresh_init="gradient", own_init="previous"))
    train_task(model, "a", steps=3)
    before = {n: (la.own_A[0].detach().clone(), la.own_B[0].detach().clone()) for n, la in model.moses_layers()}
    model.add_task("b")  # own_init="previous": b starts as a copy of a's own subexperts
    model.align_fresh_subexperts(lambda: model(**batch).loss)
    for name, layer in model.moses_layers():
        base_weight = layer.base_layer.weight
        assert base_weight.grad is None and not base_weight.requires_grad
        assert torch.equal(layer.own_A[0], before[name][0])  # a's own subexperts are untouched
        assert torch.equal(layer.own_A[1], layer.own_A[0])  # and b's start is their copy again
        assert torch.equal(layer.own_B[1], layer.own_B[0])
        fresh = layer._fresh_own_A[1].reshape(4, -1)  # b's fresh start: 2 subexperts of rank 2
        grad = dict(reference.named_parameters())[name + ".weight"].grad
        if arch_name == "gpt2":
            grad = grad.T  # Conv1D stores [d_in, d_out]
        top = torch.linalg.svd(grad, full_matrices=False)[2][:4]
        assert torch.allclose(fresh.norm(dim=1), torch.full((4,), 3 ** -0.5), atol=1e-5)
        assert torch.allclose((fresh @ top.T).abs() * 3 ** 0.5, torch.eye(4), atol=1e-3)  # same top subspace
    assert model.own_init_sources[1] == 0
    model.start_own_subexperts(None)  # the fresh start: aligned A, B 0, so delta 0
    layer = next(la for _, la in model.moses_layers())
    assert torch.equal(layer.own_A[1], layer._fresh_own_A[1])
    assert torch.equal(layer.own_B[1], torch.zeros_like(layer.own_B[1]))
    with torch.no_grad():
        assert torch.equal(probe(model), build(arch_name)(input_ids=PROBE["input_ids"]).logits)
    with pytest.raises(ConfigError, match="fresh_init='gradient': needs ownership='subexperts'"):
        MoSEsConfig(fresh_init="gradient", ownership="entries")
    with pytest.raises(ConfigError, match="fresh_init"):
        MoSEsConfig(fresh_init="svd")
