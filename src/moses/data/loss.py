"""The training loss of a batch laid out by `data/collate.py`: cross-entropy on the answer tokens only.
Below both the runner and the methods (EWC's Fisher uses it), so neither imports the other for it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moses.data.collate import IGNORE


def answer_loss(model, batch: dict[str, torch.Tensor]):
    """(mean cross-entropy over answer tokens, model outputs), as the causal-LM loss with `labels`, but the
    LM head runs only over the positions that predict answer tokens (`logits_to_keep`): with left-padded
    batches those are the last ones. Saves the vocabulary-sized logits of every prompt token."""
    labels = batch["labels"]
    answer_start = int((labels != IGNORE).float().argmax(dim=1).min())  # first labelled position in the batch
    keep = labels.shape[1] - answer_start + 1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = model(**inputs, logits_to_keep=keep)
    logits = outputs.logits[:, :-1]  # position p predicts token p + 1
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, answer_start:].reshape(-1),
                           ignore_index=IGNORE)
    return loss, outputs
