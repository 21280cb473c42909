"""Model spec -> tokenizer, base model and a fresh trainable member per ensemble model.

Weights load through safetensors (transformers falls back to ``torch.load(weights_only=True)``
for old checkpoints); ``trust_remote_code`` stays off unless the user asks.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from memaudit.config import ModelConfig
from memaudit.errors import MemauditError

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(spec: str = "auto") -> torch.device:
    if spec == "cuda" and not torch.cuda.is_available():
        raise MemauditError("--device cuda: no CUDA device is available (use --device cpu)")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        # The paper trained in bf16; on CPU float32 is faster and exact.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return _DTYPES[spec]


def _not_found(name: str, why: str) -> MemauditError:
    return MemauditError(
        f"--model: cannot load '{name}': {why}. Point --model at a local directory holding "
        "config.json, the tokenizer and safetensors weights (one saved with save_pretrained, "
        "or fetched beforehand with `hf download MODEL --local-dir DIR`)"
    )


def _hub_reachable() -> bool:
    try:
        socket.getaddrinfo("huggingface.co", 443)
        return True
    except OSError:
        return False


def resolve_source(name: str) -> tuple[str, bool]:
    """(name, local_files_only): a local directory, a cached Hub model, or a Hub download.

    Fails fast instead of letting the Hub client retry for a minute when there is no network.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or path.exists()
    if looks_local:
        raise _not_found(name, "no such directory")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name, True
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or not _hub_reachable():
        raise _not_found(
            name,
            "not a local directory, not in the Hugging Face cache, and the "
            "Hub is not reachable (offline)",
        )
    return name, False


def _quiet() -> None:
    # Progress bars of weight loading would break the one-line error and our own progress.
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    disable_progress_bars()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _quiet()
    source, local_only = resolve_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=local_only
        )
    except (OSError, ValueError) as exc:
        raise _not_found(name, _first_line(exc)) from None
    if tok.pad_token_id is None:
        # Padding is always masked out; eos is a safe stand-in for models without a pad token.
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _load_errors() -> tuple[type[BaseException], ...]:
    import pickle

    from safetensors import SafetensorError

    return (OSError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError)


_LOAD_ERRORS = _load_errors()


def load_base_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    _quiet()
    source, local_only = resolve_source(cfg.name)
    has_safetensors = Path(source).is_dir() and any(Path(source).glob("*.safetensors"))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
            local_files_only=local_only,
            # Never unpickle when safetensors weights exist; transformers loads any .bin
            # fallback with torch.load(weights_only=True).
            use_safetensors=True if has_safetensors else None,
        )
    except _LOAD_ERRORS as exc:
        # A corrupt safetensors file, or a pickled checkpoint holding more than tensors
        # (torch.load(weights_only=True) refuses it: nothing is executed).
        raise _not_found(cfg.name, _first_line(exc)) from None
    model.to(device)
    fast_activations(model)
    if cfg.finetune == "lora":
        model = _wrap_lora(model, cfg)
    return model


def fast_activations(model) -> int:
    """Swap transformers' NewGELUActivation (GPT-Neo, GPT-2: eight elementwise ops, each a pass
    over the activations forward and backward) for the fused GELUTanh kernel, the same function
    (transformers: "equivalent ... but much faster", equal up to rounding). Measured: about 10%
    of a training step of the tiny GPT-Neo on CPU. Returns the number of modules swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


LORA_INIT_SEED = 0


def _wrap_lora(model, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets) if cfg.lora_targets else None,
        task_type="CAUSAL_LM",
    )
    try:
        # peft draws the adapters' initialisation (lora_A) from torch's global generator: seeded
        # here, so that every process, rerun, resume and worker builds the same starting point
        # (members differ only by their subsets and data order), and the caller's RNG is kept.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(LORA_INIT_SEED)
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise MemauditError(f"--lora-targets: {str(exc).splitlines()[0][:200]}") from None


def max_positions(cfg: ModelConfig) -> int | None:
    """The model's context length, from its config alone (before any weights load)."""
    from transformers import AutoConfig

    source, local_only = resolve_source(cfg.name)
    try:
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=cfg.trust_remote_code, local_files_only=local_only
        )
    except (OSError, ValueError) as exc:
        raise _not_found(cfg.name, _first_line(exc)) from None
    return config_positions(config)


def config_positions(config) -> int | None:
    """A model config's context length (its position table), or None if it names none."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


class MemberFactory:
    """Hands out the same starting point for every ensemble member.

    The base (and, for LoRA, the adapter initialisation) is snapshotted once; each member
    restores it in place, so members differ only by their subset and seeded data order, and no
    second copy of a large base model is ever loaded.
    """

    def __init__(self, model) -> None:
        self.model = model
        # Trainable parameters and buffers (BatchNorm statistics change in training too).
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._buffers = dict(model.named_buffers())
        self._snapshot = {
            n: t.detach().clone() for n, t in (*self._params.items(), *self._buffers.items())
        }
        self.n_trainable = sum(p.numel() for p in self._params.values())
        self.n_params = sum(p.numel() for p in model.parameters())
        # Bytes of the trained weights: what each forked worker's copy of them costs.
        self.trainable_bytes = sum(p.numel() * p.element_size() for p in self._params.values())

    @torch.no_grad()
    def fresh(self):
        for name, tensor in (*self._params.items(), *self._buffers.items()):
            tensor.copy_(self._snapshot[name])
        self.model.train()
        return self.model
