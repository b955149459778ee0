"""The training loop: the same for every method. Methods choose the parameters and add losses through
their hooks; accelerate handles devices, processes and gradient accumulation."""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from moses import faults
from moses.data.collate import training_batch
from moses.data.loss import answer_loss
from moses.data.stream import Example
from moses.errors import TrainingError
from moses.precision import frozen_weights_cast

if TYPE_CHECKING:
    from accelerate import Accelerator

    from moses.methods.base import Method
    from moses.runner.config import RunConfig


def train_task(model, tokenizer, examples: list[Example], method: Method, config: RunConfig,
               accelerator: Accelerator, seed: int, description: str = "train") -> list[dict]:
    """`config.epochs` seeded-shuffled passes over `examples` with a fresh AdamW over the method's groups,
    the gradient norm clipped to `config.max_grad_norm` when set. Returns one log row per optimizer step:
    loss, learning rate, seconds. A non-finite loss or gradient norm stops the task before its optimizer
    step (TrainingError naming the step): the weights stay as the last good step left them."""
    if not examples:  # e.g. zero-shot, or multitask before the last stage
        return []
    optimizer = torch.optim.AdamW(method.param_groups(method.lr or config.lr), weight_decay=config.weight_decay)
    trained_parameters = [p for group in optimizer.param_groups for p in group["params"]]
    trained, optimizer = accelerator.prepare(model, optimizer)
    order = random.Random(seed)
    micro_batches = -(-len(examples) // config.batch_size)
    steps = config.epochs * -(-micro_batches // config.grad_accum)
    log: list[dict] = []
    losses: list[float] = []
    trained.train()
    began = time.perf_counter()
    with tqdm(total=steps, desc=description, leave=False, disable=not accelerator.is_local_main_process) as bar:
        for _ in range(config.epochs):
            shuffled = examples[:]
            order.shuffle(shuffled)
            for start in range(0, len(shuffled), config.batch_size):
                # data parallel: each process takes its share of the batch (DDP averages the gradients); a
                # process left without examples runs one with weight 0, as every process must join backward
                chunk = shuffled[start:start + config.batch_size]
                shard = chunk[accelerator.process_index::accelerator.num_processes]
                batch = training_batch(tokenizer, shard or chunk[:1], config.max_prompt_tokens,
                                       config.max_answer_tokens)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.accumulate(trained):
                    # the forward only (autocast): a method's extra loss may read frozen weights in fp32
                    with frozen_weights_cast(trained, method.precision):  # the frozen base's bf16 casts, made once
                        loss, outputs = answer_loss(trained, batch)
                    extra = method.extra_loss(batch, outputs)
                    if extra is not None:
                        loss = loss + extra
                    accelerator.backward(loss if shard else loss * 0)
                    weighted = torch.stack([loss.detach() * len(shard), loss.new_tensor(float(len(shard)))])
                    loss_sum, count = accelerator.reduce(weighted, reduction="sum").tolist()
                    losses.append(loss_sum / count)  # the batch's loss over every process's examples
                    step = len(log) + 1
                    if not math.isfinite(losses[-1]):
                        raise TrainingError(f"{description}: the loss is {losses[-1]} at step {step} of {steps}; "
                                            "lower --lr or set --max-grad-norm, then rerun with --resume (the "
                                            "tasks finished before this one are kept)")
                    faults.reached("train-step")
                    if accelerator.sync_gradients:
                        method.before_optimizer_step()
                        if config.max_grad_norm is not None:
                            norm = float(accelerator.clip_grad_norm_(trained_parameters, config.max_grad_norm))
                            if not math.isfinite(norm):
                                raise TrainingError(f"{description}: the gradient norm is {norm} at step {step} "
                                                    f"of {steps}; lower --lr, then rerun with --resume")
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    mean_loss = sum(losses) / len(losses)
                    log.append({"step": len(log), "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"],
                                "seconds": time.perf_counter() - began})
                    losses, began = [], time.perf_counter()
                    bar.set_postfix(loss=f"{mean_loss:.3f}")
                    bar.update()
    trained.eval()
    # prepare's autocast wrapper of forward stays: accelerate prepares a model once (a second prepare of the
    # same model is a no-op), so it serves every task; evaluation autocasts explicitly (runner/evaluate.py)
    accelerator.free_memory()
    return log
