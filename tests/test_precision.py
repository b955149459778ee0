"""Mixed precision: which one `auto` picks, and the adapter's invariants under bf16 autocast."""

import pytest
import torch

from moses import MoSEsConfig, get_moses_model
from moses.errors import ConfigError
from moses.machine import cpu_model, describe_machine
from moses.precision import autocast, cpu_bf16_flags, frozen_weights_cast, resolve_precision

from conftest import VOCAB, build, random_batch, train_steps

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme sse2 avx2 avx512f {extra} avx512vl
bogomips\t: 4792.81
"""


def test_cpu_bf16_flags_from_cpuinfo(tmp_path):
    with_bf16, without = tmp_path / "with", tmp_path / "without"
    with_bf16.write_text(CPUINFO.format(extra="avx512_bf16 amx_bf16"))
    without.write_text(CPUINFO.format(extra="avx512bw"))
    assert cpu_bf16_flags(with_bf16) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(without) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []


def test_machine_description(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra="avx512_bf16"))
    assert cpu_model(cpuinfo) == "AMD EPYC 9R14"
    facts = describe_machine("cpu")
    assert facts["torch_threads"] == torch.get_num_threads() and facts["torch"] == torch.__version__
    assert facts["cpu_bf16"] == cpu_bf16_flags() and "gpu" not in facts


def test_resolve_precision(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("fp32", "cpu")[0] == "fp32"
    assert resolve_precision("bf16", "cpu")[0] == "bf16"
    monkeypatch.setattr("moses.precision.cpu_bf16_flags", lambda: ["avx512_bf16"])
    assert resolve_precision("auto", "cpu") == ("bf16", "the CPU has avx512_bf16")
    monkeypatch.setattr("moses.precision.cpu_bf16_flags", lambda: [])
    assert resolve_precision("auto", "cpu")[0] == "fp32"
    assert resolve_precision("auto", "mps")[0] == "fp32"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    assert resolve_precision("auto", "cpu")[0] == "bf16" and resolve_precision("fp32", "cpu")[0] == "fp32"
    with pytest.raises(ConfigError, match="precision='fp16'"):
        resolve_precision("fp16", "cpu")


def probe_logits(model, task):
    model.set_task(task)
    with torch.no_grad(), autocast("bf16", "cpu"):
        return model(input_ids=random_batch(seed=5, batch=2, length=8)["input_ids"]).logits


def train_under_autocast(model, name, seed, steps=4):
    model.add_task(name)
    model.train()
    optimizer = torch.optim.AdamW(model.optimizer_param_groups(5e-2))
    batch = random_batch(100 + seed)
    for _ in range(steps):
        with autocast("bf16", "cpu"):
            loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.end_task()


def test_bf16_training_keeps_fp32_masters_and_the_invariants():
    model = get_moses_model(build("llama"), MoSEsConfig(num_subexperts=4, top_k=2, rank=2))
    train_under_autocast(model, "t1", seed=0)
    ended = probe_logits(model, "t1")
    assert ended.dtype == torch.bfloat16  # autocast did run the forward in bf16
    first = {n: [p.detach().clone() for p in la.task_parameters(0)] for n, la in model.moses_layers()}
    train_under_autocast(model, "t2", seed=1)
    assert torch.equal(probe_logits(model, "t1"), ended)  # TIL output of the ended task: bit-identical
    moved = 0
    for name, layer in model.moses_layers():
        for param in (*layer.task_parameters(0), *layer.task_parameters(1)):
            assert param.dtype == torch.float32  # master weights stay fp32
        assert all(torch.equal(p, q) for p, q in zip(layer.task_parameters(0), first[name], strict=True))
        moved += int(layer.own_B[1].count_nonzero())
    assert moved > 0  # the second task did train its own subexperts


def tied_llama():
    """A tiny MoSEs Llama whose LM head is tied to its embedding (as SmolLM2's), seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return get_moses_model(LlamaForCausalLM(config).eval(), MoSEsConfig(rank=2))


def tied_llama_with_an_ended_task():
    model = tied_llama()
    model.add_task("t1")
    train_steps(model, steps=3)
    model.end_task()
    model.add_task("t2")  # a training task: its subexpert is trainable
    model.set_task("t1")
    return model.eval()


def test_frozen_weights_cast_is_bit_identical_and_restores_the_fp32_weights():
    model = tied_llama_with_an_ended_task()
    base = model.model
    q_proj = base.model.layers[0].self_attn.q_proj.base_layer
    originals = {"q": q_proj.weight, "embed": base.model.embed_tokens.weight}
    assert base.lm_head.weight is originals["embed"]  # tied
    batch = random_batch(seed=3, batch=2, length=8)
    with torch.no_grad(), autocast("bf16", "cpu"):
        expected = model(input_ids=batch["input_ids"]).logits
        expected_tokens = model.generate(input_ids=batch["input_ids"], max_new_tokens=5, do_sample=False)
        with frozen_weights_cast(model, "bf16") as swapped:
            assert swapped == 2 * 7 + 1  # q/k/v/o/gate/up/down of both layers and the LM head; no biases
            assert q_proj.weight.dtype == torch.bfloat16 and base.lm_head.weight.dtype == torch.bfloat16
            assert base.model.embed_tokens.weight is originals["embed"]  # the embedding stays fp32
            logits = model(input_ids=batch["input_ids"]).logits
            tokens = model.generate(input_ids=batch["input_ids"], max_new_tokens=5, do_sample=False)
    assert torch.equal(logits, expected) and torch.equal(tokens, expected_tokens)
    assert q_proj.weight is originals["q"] and q_proj.weight.dtype == torch.float32
    assert base.lm_head.weight is originals["embed"]  # the tie is back
    for _, layer in model.moses_layers():  # the adapter (master weights, trainable or not) is not touched
        assert all(p.dtype == torch.float32 for t in (0, 1) for p in layer.task_parameters(t))


def test_frozen_weights_cast_keeps_one_copy_until_the_weight_changes():
    model = tied_llama_with_an_ended_task()
    q_proj = model.model.model.layers[0].self_attn.q_proj.base_layer
    original = q_proj.weight
    with frozen_weights_cast(model, "fp32") as swapped:  # fp32: nothing to do
        assert swapped == 0 and q_proj.weight is original
    with frozen_weights_cast(model, "bf16"):
        first = q_proj.weight.data_ptr()
    with frozen_weights_cast(model, "bf16"):
        assert q_proj.weight.data_ptr() == first  # the cast is made once
    with torch.no_grad():
        original.mul_(2)
    with frozen_weights_cast(model, "bf16"):
        assert q_proj.weight.data_ptr() != first  # a changed weight is cast again
        assert torch.equal(q_proj.weight, original.detach().to(torch.bfloat16))


def test_training_with_frozen_weights_cast_is_bit_identical():
    """The runner trains inside `frozen_weights_cast` under bf16: same gradients, so the same adapter."""
    trained = []
    for precast in (False, True):
        model = tied_llama()
        model.add_task("t1")
        model.train()
        optimizer = torch.optim.AdamW(model.optimizer_param_groups(5e-2))
        batch = random_batch(7)
        for _ in range(3):
            with frozen_weights_cast(model, "bf16" if precast else "fp32"), autocast("bf16", "cpu"):
                loss = model(**batch).loss
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
        trained.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert trained[0].keys() == trained[1].keys() and trained[0]
    for name, value in trained[0].items():
        assert torch.equal(value, trained[1][name]), name
