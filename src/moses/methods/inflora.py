"""InfLoRA (Liang & Li, CVPR 2024): each task's LoRA down-projection A is fixed before training to the
principal directions of the task's layer inputs, after projecting away the input subspace of earlier tasks;
only the up-projection B trains. So the new branch reads (mostly) directions the old tasks do not use, and
at inference every adapter is on with no task id.

The earlier tasks' subspace is kept per layer as an orthonormal basis grown with the GPM rule (Saha et al.
2021): after a task, add the fewest residual principal directions that make the basis capture `threshold`
of that task's input energy. Simplification: a task's inputs are measured once, before it trains (with A
fixed and B zero the new branch does not change them then); the paper's DualGPM variant is not built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from moses.data.collate import training_batch
from moses.data.stream import Example, Task
from moses.errors import CheckpointError, ConfigError
from moses.io import atomic_write
from moses.methods.lora import StackedLoRAMethod

BASES_FILE = "inflora_bases.safetensors"


def projected_covariance(covariance: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """(I - U U^T) C (I - U U^T): the input covariance with the earlier tasks' subspace U removed."""
    if basis is None or basis.shape[1] == 0:
        return covariance
    residual = covariance - basis @ (basis.T @ covariance)
    return residual - (residual @ basis) @ basis.T


Eigen = tuple[torch.Tensor, torch.Tensor]


def residual_eigen(covariance: torch.Tensor, basis: torch.Tensor | None) -> Eigen:
    """Eigenvalues (descending, >= 0) and eigenvectors (columns, in the same order) of the covariance with
    the earlier tasks' subspace removed."""
    values, vectors = torch.linalg.eigh(projected_covariance(covariance, basis).double())
    return values.flip(0).clamp_min(0), vectors.flip(1).to(covariance.dtype)


def grow_basis(basis: torch.Tensor | None, covariance: torch.Tensor, threshold: float, limit: int,
               eigen: Eigen | None = None) -> torch.Tensor:
    """GPM: add residual principal directions until the basis captures `threshold` of the energy trace(C);
    at most `limit` columns in all (room must stay for later tasks' A). `eigen`: `residual_eigen` of the
    same covariance and basis, when it was computed already."""
    dim = covariance.shape[0]
    values, vectors = eigen if eigen is not None else residual_eigen(covariance, basis)
    basis = covariance.new_zeros(dim, 0) if basis is None else basis
    total = torch.trace(covariance).item()
    captured = torch.trace(basis.T @ covariance @ basis).item() if basis.shape[1] else 0.0
    needed = threshold * total - captured
    if needed <= 0 or total <= 0:
        return basis
    cumulative = torch.cumsum(values, 0)
    k = int(torch.searchsorted(cumulative, torch.tensor(needed, dtype=cumulative.dtype)).item()) + 1
    k = min(k, limit - basis.shape[1], dim - basis.shape[1])
    return torch.cat([basis, vectors[:, :max(k, 0)]], dim=1)


class InfLoRAMethod(StackedLoRAMethod):
    """Options: the LoRA ones, `threshold` (share of each task's input energy its subspace keeps, GPM's
    epsilon) and `batch_size` (examples per forward pass while measuring inputs)."""

    name = "inflora"
    extra_defaults = {"threshold": 0.97, "batch_size": 8}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["fresh_init"] != "uniform":
            raise ConfigError("inflora option fresh_init: InfLoRA sets each A from its task's inputs (uniform only)")
        threshold = self.options["threshold"]
        if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ConfigError(f"inflora option threshold={threshold!r}: must be in (0, 1]")
        self.bases: dict[str, torch.Tensor] = {}  # LoRA-wrapped module name -> (d_in, k) orthonormal columns
        self.covariances: dict[str, torch.Tensor] = {}  # of the task being trained
        self.eigens: dict[str, Eigen] = {}  # of its residual covariances: A at task start, the basis at its end

    def lora_modules(self, adapter: str) -> dict[str, nn.Module]:
        return {name: module for name, module in self.model.named_modules()
                if isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and adapter in module.lora_A}

    @torch.no_grad()
    def input_covariances(self, examples: list[Example], modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """X^T X of each module's inputs over the examples' real (unpadded) tokens."""
        sums: dict[str, torch.Tensor] = {}
        mask: list[torch.Tensor] = []

        def hook(name):
            def record(module, args):
                x = args[0].detach().float()[mask[0].bool()]  # (real tokens, d_in)
                with torch.autocast(x.device.type, enabled=False):  # a bf16 forward: still an fp32 sum
                    sums[name] = sums.get(name, 0) + x.T @ x
            return record

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
        device = self.device
        size = self.options["batch_size"]
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(examples), size):
                batch = training_batch(self.tokenizer, examples[start:start + size], self.max_prompt_tokens,
                                       self.max_answer_tokens)
                mask[:] = [batch["attention_mask"].to(device)]
                self.model(input_ids=batch["input_ids"].to(device), attention_mask=mask[0],
                           position_ids=batch["position_ids"].to(device))
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        return sums

    def on_task_start(self, task: Task, index: int) -> None:
        super().on_task_start(task, index)
        adapter = self.adapters[-1]
        modules = self.lora_modules(adapter)
        self.covariances = self.input_covariances(task.train, modules)
        with torch.autocast(self.device.type, enabled=False):  # the subspace algebra in fp32 (and fp64)
            self.eigens = {name: residual_eigen(self.covariances[name], self.bases.get(name)) for name in modules}
        for name, module in modules.items():
            weight = module.lora_A[adapter].weight  # (r, d_in): the r leading residual directions
            with torch.no_grad():
                weight.copy_(self.eigens[name][1][:, : weight.shape[0]].T.to(weight))
            weight.requires_grad_(False)

    def on_task_end(self, task: Task, index: int) -> None:
        rank = self.options["r"]
        for name, covariance in self.covariances.items():
            limit = covariance.shape[0] - rank  # keep room for the next task's A
            with torch.autocast(self.device.type, enabled=False):
                self.bases[name] = grow_basis(self.bases.get(name), covariance, self.options["threshold"], limit,
                                              self.eigens[name])
        self.covariances, self.eigens = {}, {}

    def activate_all(self, trainable: str | None) -> None:
        super().activate_all(trainable)
        for name in self.adapters:  # every A is fixed: only the new B trains
            for module in self.lora_modules(name).values():
                module.lora_A[name].weight.requires_grad_(False)

    def save(self, directory: Path) -> None:
        super().save(directory)
        state = {name: basis.contiguous() for name, basis in self.bases.items()}
        atomic_write(directory / BASES_FILE, lambda tmp: save_file(state, str(tmp)))

    def load(self, model: nn.Module, tokenizer, directory: Path) -> nn.Module:
        path = directory / BASES_FILE
        try:
            self.bases = load_file(str(path))
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{path}: missing or corrupt ({err})") from None
        return super().load(model, tokenizer, directory)

    def capacity(self) -> dict[str, Any]:
        basis_bytes = sum(b.numel() * b.element_size() for b in self.bases.values())
        stored = super().capacity()
        dims = [b.shape[1] for b in self.bases.values()]
        return {**stored, "stored_bytes": stored["stored_bytes"] + basis_bytes, "subspace_bytes": basis_bytes,
                "subspace_dims_mean": sum(dims) / len(dims) if dims else 0.0}
