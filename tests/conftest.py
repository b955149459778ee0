"""Tiny random-initialised models built from real transformers configs (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 97


# reading R1 (entry masks, router on the hidden state), for the tests of its mechanism; R2 is the default
R1 = {"ownership": "entries", "router_input": "hidden"}

def tiny_llama() -> torch.nn.Module:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def tiny_qwen2() -> torch.nn.Module:
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(config)


def tiny_gpt2() -> torch.nn.Module:
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config)


BUILDERS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}


def build(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[arch]().eval()


@pytest.fixture(params=sorted(BUILDERS))
def arch(request) -> str:
    return request.param


def left_padded(prompts: list[list[int]], pad: int = 0) -> dict[str, torch.Tensor]:
    """Token id lists as one left-padded generation batch."""
    width = max(len(p) for p in prompts)
    return {"input_ids": torch.tensor([[pad] * (width - len(p)) + p for p in prompts]),
            "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])}


def random_batch(seed: int, batch: int = 3, length: int = 10) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def train_steps(model, steps: int = 4, lr: float = 5e-2, seed: int = 0) -> list[float]:
    """Real optimisation steps of the training task on one batch of random tokens; returns the losses."""
    model.train()
    optimizer = torch.optim.AdamW(model.optimizer_param_groups(lr))
    losses = []
    batch = random_batch(1000 + seed)
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def train_task(model, name: str, steps: int = 4, lr: float = 5e-2, seed: int = 0) -> list[float]:
    """Add task `name`, memorise one batch of random tokens, end the task; returns the losses."""
    model.add_task(name)
    losses = train_steps(model, steps, lr, seed)
    model.end_task()
    return losses


def build_tiny_checkpoint(directory) -> str:
    """A tiny random Llama and a byte-level BPE tokenizer trained on the demo stream, saved as a local
    Hugging Face directory: the runner loads it like any real model, offline, in a second."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from moses.data.demo import demo_stream

    texts = [e["prompt"] + e["answer"] for task in demo_stream() for e in task.train + task.test]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def tiny_config(model_dir, output, **overrides):
    """A RunConfig of the demo stream on the tiny model: 8 train / 8 test examples, 2 steps per epoch."""
    from moses.runner.config import RunConfig

    settings = {"model": model_dir, "stream": "demo", "n_train": 8, "n_test": 8, "epochs": 4, "batch_size": 4,
                "lr": 5e-2, "device": "cpu", "precision": "fp32", "output": str(output), "method": "moses",
                "method_options": {}}
    return RunConfig(**{**settings, **overrides})


def run_interrupted_in_second_task(config, monkeypatch) -> None:
    """Run until the second task's training starts, then stop as Ctrl-C would."""
    from moses.runner import run as run_module
    from moses.runner.run import run

    real_train, calls = run_module.train_task, []

    def interrupt_second_task(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "train_task", interrupt_second_task)
        with pytest.raises(KeyboardInterrupt):
            run(config, echo=lambda *_: None)


def assert_one_error_line(err: str, message: str) -> None:
    """A user error on stderr: one `moses: error:` line holding `message`, no traceback; the only other
    output allowed is progress bars (tqdm lines, split by carriage returns)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("moses: error:")]
    others = [line for line in lines if line not in errors and "%|" not in line]
    assert "Traceback" not in err and len(errors) == 1 and message in errors[0] and not others, err
