"""MoSEsModel on tiny Llama, Qwen2 and GPT-2: the spec's invariants after three trained tasks."""

import pytest
import torch

from moses import MoSEsConfig, MoSEsLayer, get_moses_model
from moses.adapter.masks import top_c_mask
from moses.errors import ConfigError, TaskError

from conftest import R1, build, random_batch, train_task

PROBE = random_batch(seed=777, batch=2, length=8)


def logits(model, task):
    model.set_task(task)
    with torch.no_grad():
        return model(input_ids=PROBE["input_ids"]).logits


def small_config(**overrides) -> MoSEsConfig:
    return MoSEsConfig(**{**R1, "num_subexperts": 4, "top_k": 2, "rank": 2, "task_density": 0.3, **overrides})


def test_wraps_attention_projections_and_freezes_base(arch):
    model = get_moses_model(build(arch), small_config())
    names = [name for name, _ in model.moses_layers()]
    expected = 4 if arch != "gpt2" else 2  # GPT-2: fused c_attn and the attention c_proj
    assert len(names) == 2 * expected
    assert all(isinstance(m, MoSEsLayer) for _, m in model.moses_layers())
    base_params = [p for n, p in model.named_parameters() if "base_layer" in n or "embed" in n or "wte" in n]
    assert base_params and not any(p.requires_grad for p in base_params)
    if arch == "gpt2":
        assert not any("mlp" in n for n in names)


def test_untrained_adapter_equals_base_model(arch):
    base = build(arch)
    with torch.no_grad():
        expected = base(input_ids=PROBE["input_ids"]).logits
    model = get_moses_model(base, small_config())
    model.add_task("a")
    assert torch.equal(logits(model, "a"), expected)


@pytest.fixture(params=["llama", "qwen2", "gpt2"])
def three_tasks(request):
    """Train three tasks, recording each task's outputs and frozen pool when it ended."""
    model = get_moses_model(build(request.param), small_config())
    recorded, frozen_pool, used = {}, [], []
    for t, name in enumerate(["t1", "t2", "t3"]):
        losses = train_task(model, name, steps=5, seed=t)
        assert losses[-1] < losses[0], f"{name} did not train: {losses}"
        recorded[name] = logits(model, name)
        frozen_pool.append({n: (*(w.clone() for w in la.stored_pool()), la.frozen_A.clone(), la.frozen_B.clone())
                            for n, la in model.moses_layers()})  # the pool as the tasks read it
        used.append(model.capacity()["used_fraction"])
    return model, recorded, frozen_pool, used


def test_invariant1_earlier_tasks_bit_identical(three_tasks):
    model, recorded, _, _ = three_tasks
    for name, expected in recorded.items():
        assert torch.equal(logits(model, name), expected), name
    assert not torch.equal(recorded["t1"], recorded["t3"])  # the tasks did learn different things


def test_invariant2_frozen_entries_untouched_and_zero_gradient(three_tasks):
    model, _, frozen_pool, _ = three_tasks
    # entries frozen after task i are bit-identical at the end of every later task
    for before, after in zip(frozen_pool, frozen_pool[1:], strict=False):
        for name, (a0, b0, fa, fb) in before.items():
            a1, b1, _, _ = after[name]
            assert torch.equal(a0[fa], a1[fa]) and torch.equal(b0[fb], b1[fb])
    # and a new task's gradient is exactly 0 under M_{t-1}, while free entries do get gradient
    model.add_task("t4")
    model.train()
    model(**random_batch(5)).loss.backward()
    free_grad = 0.0
    for _, la in model.moses_layers():
        assert torch.all(la.lora_A.grad[la.frozen_A] == 0) and torch.all(la.lora_B.grad[la.frozen_B] == 0)
        free_grad += la.lora_B.grad[~la.frozen_B].abs().sum().item()
    assert free_grad > 0


def test_invariant3_capacity_grows_within_budget(three_tasks):
    model, _, _, used = three_tasks
    c = model.moses_config.task_density
    assert all(a <= b for a, b in zip(used, used[1:], strict=False))
    assert all(u <= min(1.0, (t + 1) * c) + 1e-9 for t, u in enumerate(used))
    capacity = model.capacity()
    for task in capacity["tasks"]:
        assert task["owned_entries"] <= c * capacity["pool_entries"]
        assert task["owned_entries"] + task["reused_entries"] == task["active_entries"]
    assert sum(t["owned_entries"] for t in capacity["tasks"]) == capacity["used_entries"]
    reuse = capacity["reuse_matrix"]  # who owns the entries each task reads
    for t, (row, task) in enumerate(zip(reuse, capacity["tasks"], strict=True)):
        assert sum(row) == task["active_entries"] and row[t] == task["owned_entries"]
        assert all(row[s] <= capacity["tasks"][s]["owned_entries"] for s in range(t))
    assert any(reuse[t][s] > 0 for t in range(1, 3) for s in range(t))  # later tasks do read earlier weights


def test_old_routers_frozen_and_optimizer_groups(three_tasks):
    model, _, _, _ = three_tasks
    model.add_task("t4")
    groups = model.optimizer_param_groups(1e-3)
    assert {g["name"] for g in groups} == {"pool", "scores", "router"}
    by_name = {g["name"]: g for g in groups}
    assert by_name["scores"]["weight_decay"] == 0.0 and "weight_decay" not in by_name["pool"]  # the optimizer's
    decayed = {g["name"]: g.get("weight_decay") for g in model.optimizer_param_groups(1e-3, weight_decay=0.1)}
    assert decayed == {"pool": 0.1, "scores": 0.0, "router": None}  # router: router_weight_decay, else the optimizer's
    router_ids = {id(p) for g in groups if g["name"] == "router" for p in g["params"]}
    for _, la in model.moses_layers():
        assert [r.requires_grad for r in la.routers] == [False, False, False, True]
        assert id(la.routers[3]) in router_ids and id(la.routers[0]) not in router_ids


def test_mixed_batch_equals_per_task_runs(three_tasks):
    model, recorded, _, _ = three_tasks
    ids = PROBE["input_ids"]
    batch = torch.cat([ids[:1], ids[1:], ids[:1]])
    with torch.no_grad():
        mixed = model(input_ids=batch, task_ids=["t1", "t3", "t2"]).logits
    torch.testing.assert_close(mixed[0], recorded["t1"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], recorded["t3"][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[2], recorded["t2"][0], rtol=1e-5, atol=1e-5)


def test_generate_with_task_ids(three_tasks):
    model, _, _, _ = three_tasks
    prompt = PROBE["input_ids"][:1]
    outs = {}
    for name in ("t1", "t3"):
        model.set_task(name)
        outs[name] = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    mixed = model.generate(input_ids=torch.cat([prompt, prompt]), task_ids=["t1", "t3"], max_new_tokens=4,
                           do_sample=False, pad_token_id=0)
    assert torch.equal(mixed[0], outs["t1"][0]) and torch.equal(mixed[1], outs["t3"][0])


def trained_llama(steps: int):
    """(base model, its MoSEs model after one task, the base model's logits before wrapping)."""
    base = build("llama")
    with torch.no_grad():
        expected = base(input_ids=PROBE["input_ids"]).logits
    model = get_moses_model(base, small_config())
    train_task(model, "a", steps=steps)
    return base, model, expected


def test_disable_adapter_gives_base_model():
    _, model, expected = trained_llama(steps=3)
    assert not torch.equal(logits(model, "a"), expected)
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(model(input_ids=PROBE["input_ids"]).logits, expected)


def test_errors_are_clear():
    model = get_moses_model(build("llama"), small_config())
    with pytest.raises(TaskError, match="no task being trained"):
        model.end_task()
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        model.set_task("nope")
    train_task(model, "a", steps=1)
    with pytest.raises(TaskError, match="already exists and is frozen"):
        model.add_task("a")
    model.set_task("a")
    model.train()
    with pytest.raises(TaskError, match="'a' is frozen"):
        model(**random_batch(0))
    with pytest.raises(TaskError, match="call add_task"):
        model.optimizer_param_groups(1e-3)
    model.add_task("b")
    with pytest.raises(TaskError, match="still being trained"):
        model.add_task("c")
    with pytest.raises(TaskError, match="unknown task 'zzz'"):
        model(**random_batch(0), task_ids=["a", "zzz", "b"])


def test_unload_restores_the_base_model():
    base, model, expected = trained_llama(steps=2)
    restored = model.unload()
    assert restored is base and not any(isinstance(m, MoSEsLayer) for m in restored.modules())
    with torch.no_grad():
        assert torch.equal(restored(input_ids=PROBE["input_ids"]).logits, expected)


def test_config_matching_nothing_is_an_error():
    with pytest.raises(ConfigError, match="matches no"):
        get_moses_model(build("llama"), small_config(target_modules=["nonexistent"]))


def test_regex_targets():
    model = get_moses_model(build("llama"), small_config(target_modules=r".*\.0\.self_attn\.(q|v)_proj"))
    assert sorted(n.rsplit(".", 1)[-1] for n, _ in model.moses_layers()) == ["q_proj", "v_proj"]


@pytest.mark.parametrize("field,value", [
    ("num_subexperts", 0), ("top_k", 9), ("rank", 1.5), ("task_density", 0.0), ("task_density", 1.2),
    ("mask_granularity", "row"), ("routing", "expert"), ("target_modules", []), ("dropout", 1.0),
    ("load_balance_coef", -1), ("alpha", -2), ("scores", "stale"), ("score_lr_scale", 0),
    ("router_input", "tokens"), ("free_share", 1.5),
])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"MoSEsConfig.{field}="):
        MoSEsConfig(**{field: value})


def test_load_balance_loss_is_added_when_enabled():
    model = get_moses_model(build("llama"), small_config(load_balance_coef=0.5))
    model.add_task("a")
    model.train()
    batch = random_batch(3)
    out = model(**batch)
    with model.disable_adapter():
        plain = model.model(**batch).loss
    aux = model.aux_loss()
    assert aux is not None and aux.item() >= 0.5 - 1e-6  # N * sum f P >= 1 for any routing
    torch.testing.assert_close(out.loss, plain + aux)


def test_merge_task_for_task_routing():
    model = get_moses_model(build("llama"), small_config(routing="task"))
    train_task(model, "a", steps=3)
    train_task(model, "b", steps=3, seed=1)
    merged = model.merge_task("a")
    assert not any(isinstance(m, MoSEsLayer) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=PROBE["input_ids"]).logits, logits(model, "a"),
                                   rtol=1e-4, atol=1e-5)
    token_model = get_moses_model(build("llama"), small_config())
    train_task(token_model, "a", steps=1)
    with pytest.raises(TaskError, match="routing='task'"):
        token_model.merge_task("a")


def test_fresh_scores_give_later_tasks_new_entries():
    model = get_moses_model(build("llama"), small_config(scores="fresh"))
    for t in range(3):
        train_task(model, f"t{t}", steps=2, seed=t)
    owned = [t["owned_entries"] for t in model.capacity()["tasks"]]
    pool = model.capacity()["pool_entries"]
    assert all(o > 0.1 * pool for o in owned[1:]), owned


@pytest.mark.parametrize("granularity", ["tensor", "subexpert"])
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_free_share_reserves_trainable_entries_at_task_start(granularity, share):
    model = get_moses_model(build("llama"), small_config(free_share=share, mask_granularity=granularity))
    train_task(model, "a", steps=2)
    model.add_task("b")
    for _, la in model.moses_layers():
        for scores, frozen in ((la.scores_A, la.frozen_A), (la.scores_B, la.frozen_B)):
            mask = top_c_mask(scores, la.density, la.per_subexpert)
            kept = int(mask.sum())
            free = int((mask & ~frozen).sum())
            rows = scores.shape[0] if la.per_subexpert else 1
            expected = rows * round(share * kept / rows)
            assert free >= expected, (free, expected)
            if share == 0.0:
                assert free == 0  # persistent scores alone: the pitfall the option exists for


def test_capacity_reports_bytes():
    model = get_moses_model(build("llama"), small_config())
    train_task(model, "a", steps=2)
    cap = model.capacity()
    assert cap["mask_bytes_raw"] == sum((la.lora_A.numel() + 7) // 8 + (la.lora_B.numel() + 7) // 8
                                        for _, la in model.moses_layers())
    assert cap["stored_bytes_raw"] == cap["pool_bytes"] + cap["mask_bytes_raw"] + cap["router_bytes"]
    assert cap["pool_bytes"] == 4 * cap["used_entries"]
    assert cap["mask_bytes_compressed"] > 0


def test_subexpert_feature_routers_are_small_and_keep_old_tasks(tmp_path):
    from moses import MoSEsModel

    model = get_moses_model(build("qwen2"), small_config(router_input="subexperts"))
    train_task(model, "a", steps=4)
    first = logits(model, "a")
    train_task(model, "b", steps=4, seed=1)
    assert torch.equal(logits(model, "a"), first) and not torch.equal(logits(model, "b"), first)
    for _, layer in model.moses_layers():
        assert layer.routers[0].shape == (4, 4 * 2)  # N x N*r, not N x d_in
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(MoSEsModel.from_pretrained(build("qwen2"), tmp_path), "a"), first)


def test_how_far_masks_move_is_measured():
    still = get_moses_model(build("llama"), small_config())
    moving = get_moses_model(build("llama"), small_config(score_lr_scale=100.0))
    for t, name in enumerate(["t1", "t2"]):
        train_task(still, name, steps=3, lr=1e-9, seed=t)
        train_task(moving, name, steps=3, seed=t)
    assert [t["mask_moved"] for t in still.capacity()["tasks"]] == [0.0, 0.0]  # no learning: masks stay
    moved = [t["mask_moved"] for t in moving.capacity()["tasks"]]
    assert all(0.0 < m <= 1.0 for m in moved)
