"""Find and load models: the shipped tiny ones, local folders and hub ids.

The course ships four tiny ModernBERT checkpoints in Hugging Face format, so every
notebook runs offline on a laptop CPU:

* ``tiny-bert``: BERT-style masked LM (15% masking) on the offline corpus;
* ``tiny-dllm``: ``tiny-bert`` fine-tuned as a masked diffusion LM (LLaDA), then SFT;
* ``tiny-duo``: fine-tuned from ``tiny-dllm`` with the Duo paper's uniform-state ELBO;
* ``tiny-duo-dcd``: ``tiny-duo`` after discrete consistency distillation (few-step Duo).

They live in ``dllm_lesson/checkpoints/<name>/`` and load with the ordinary
``AutoModelForMaskedLM.from_pretrained(model_path(name))``. :func:`load_model` takes the
same names, a local folder, or a hub id (``answerdotai/ModernBERT-base``,
``tommyp111/modernbert-dllm-tulu``) when there is internet::

    model, tokenizer = load_model("tiny-dllm")                      # offline default
    model, tokenizer = load_model("tommyp111/modernbert-dllm-tulu")  # the seed's model

Taught in ``00_welcome``.
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

#: The models that ship inside the package (built by ``python -m dllm_lesson build-models``)
SHIPPED = ("tiny-bert", "tiny-dllm", "tiny-duo", "tiny-duo-dcd", "tiny-ar")

#: One line per shipped model, for error messages and listings
SHIPPED_DESCRIPTIONS = {
    "tiny-bert": "BERT-style masked LM, 15% masking, trained on the offline corpus",
    "tiny-dllm": "masked diffusion LM (LLaDA recipe + SFT), fine-tuned from tiny-bert",
    "tiny-duo": "uniform-state diffusion LM (Duo's ELBO), fine-tuned from tiny-dllm",
    "tiny-duo-dcd": "tiny-duo distilled for few-step generation (Duo's DCD)",
    "tiny-ar": "autoregressive baseline: a causal decoder of tiny-dllm's shape and data",
}

#: Folder holding one sub-folder per shipped model. Read at call time, so tests can
#: point it somewhere else with ``monkeypatch.setattr(models, "CHECKPOINT_ROOT", path)``.
CHECKPOINT_ROOT = Path(__file__).resolve().parent / "checkpoints"

#: Hub ids that work with the course when there is internet
HUB_EXAMPLES = ("answerdotai/ModernBERT-base", "tommyp111/modernbert-dllm-tulu")

BACKENDS = ("transformers", "lesson")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
REBUILD_HINT = ("reinstall the package (pip install -e .) or rebuild the shipped models "
                "with: python -m dllm_lesson build-models")


class ModelNotFoundError(ValueError):
    """No model of that name: not shipped, not a local folder, and not on the hub (or
    the hub could not be reached). The message names the shipped models."""


class BrokenModelError(ModelNotFoundError):
    """A model folder lacks files (``config.json``, weights) or cannot be read."""


def _shipped_list() -> str:
    return "\n".join(f"  {name:<13} {SHIPPED_DESCRIPTIONS[name]}" for name in SHIPPED)


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, SHIPPED, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def model_path(name: str, check: bool = True) -> Path:
    """The folder of the shipped model ``name`` (``"tiny-bert"``, ``"tiny-dllm"``,
    ``"tiny-duo"``), in Hugging Face format.

    With ``check=True`` the folder must hold ``config.json`` and the weights, otherwise
    :class:`BrokenModelError` says how to repair the install. ``check=False`` just gives
    the path (``build-models`` writes there). Taught in ``00_welcome``.
    """
    if name not in SHIPPED:
        raise ModelNotFoundError(
            f"{name!r} is not a shipped model.{_suggestion(str(name))} "
            f"The shipped models are:\n{_shipped_list()}")
    path = Path(CHECKPOINT_ROOT) / name
    if check:
        _check_folder(path, shipped=True)
    return path


def _check_folder(path: Path, shipped: bool) -> None:
    """Raise :class:`BrokenModelError` unless ``path`` holds a config and weights."""
    missing = []
    if not path.is_dir():
        missing.append("the whole folder")
    else:
        if not (path / "config.json").is_file():
            missing.append("config.json")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            missing.append("the weights (" + " or ".join(WEIGHT_FILES) + ")")
    if missing:
        if shipped:
            raise BrokenModelError(
                f"the shipped model folder {path} is incomplete (missing: "
                f"{', '.join(missing)}). To repair it, {REBUILD_HINT}.")
        raise BrokenModelError(
            f"{path} is not a model folder (missing: {', '.join(missing)}). A model folder "
            "is what model.save_pretrained(folder) writes.")


def pick_device(device=None):
    """``device`` as a ``torch.device``; ``None`` picks cuda, then mps, then cpu.

    Taught in ``00_welcome``.
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1', 'mps' "
                         "or None (picks the best available)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch sees no CUDA GPU "
                         "(a CPU-only torch build?). Use device=None or 'cpu'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} asked for, but MPS is not available here. "
                         "Use device=None or 'cpu'.")
    return dev


_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16",
                  "half": "float16", "bf16": "bfloat16", "fp64": "float64",
                  "double": "float64"}


def _resolve_dtype(dtype):
    """``None`` (keep the checkpoint's dtype), a ``torch.dtype`` or a name like "bf16"."""
    import torch

    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    raise ValueError(f"unknown dtype {dtype!r}: use torch.float32, torch.bfloat16, "
                     "torch.float16 (or 'float32', 'bf16', ...) or None")


def _hub_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the hub could not give us this id"."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    except ImportError:  # older huggingface_hub
        try:
            from huggingface_hub.utils import HfHubHTTPError, HFValidationError
        except ImportError:
            return tuple(errors)
    return (*errors, HfHubHTTPError, HFValidationError)


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _not_found(name: str, cause: BaseException | None) -> ModelNotFoundError:
    if cause is None:  # a path to a folder that does not exist
        what = f"there is no folder {Path(name).expanduser().resolve()}."
    else:
        what = ("it is not a shipped model, not a local model folder, and the hub could "
                "not provide it (no internet, not in the local cache, or no such "
                f"repository).{_suggestion(name)}")
    reason = f"\n(The hub said: {type(cause).__name__}: {cause})" if cause else ""
    return ModelNotFoundError(
        f"could not load model {name!r}: {what}\n"
        f"Offline, use a shipped model, e.g. load_model('tiny-dllm'). They are:\n"
        f"{_shipped_list()}\n"
        f"With internet, pass a hub id such as {HUB_EXAMPLES[0]!r} or "
        f"{HUB_EXAMPLES[1]!r}. Without internet, export HF_HUB_OFFLINE=1 so that the "
        f"hub is not retried.{reason}")


def _load_tokenizer(source: str, local: Path | None, shipped: bool):
    """The folder's / hub repo's tokenizer with the course chat template, or ``None``."""
    from transformers import AutoTokenizer

    from .tokenizer import ensure_chat_template

    if local is not None:
        if not any((local / f).is_file() for f in TOKENIZER_FILES):
            return None
        try:
            tok = AutoTokenizer.from_pretrained(str(local))
        except Exception as e:  # noqa: BLE001 - any failure means a damaged folder
            hint = REBUILD_HINT if shipped else "save it again: tokenizer.save_pretrained"
            raise BrokenModelError(f"could not read the tokenizer in {local} "
                                   f"({type(e).__name__}: {e}); {hint}.") from e
        return ensure_chat_template(tok)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except _hub_errors() as e:
        warnings.warn(f"{source!r} loaded but its tokenizer did not ({e}); "
                      "returning tokenizer=None", stacklevel=3)
        return None
    return ensure_chat_template(tok)


def load_model(name_or_path: str | Path, device=None, dtype=None,
               backend: str = "transformers"):
    """Load a masked LM (or the causal baseline ``tiny-ar``) and its tokenizer:
    ``(model.eval(), tokenizer or None)``.

    ``name_or_path`` is a shipped model (``"tiny-bert"``, ``"tiny-dllm"``,
    ``"tiny-duo"``), a local folder written by ``save_pretrained``, or a hub id
    (``"answerdotai/ModernBERT-base"``, needs internet or the local cache).
    ``device=None`` picks cuda, then mps, then cpu; ``dtype=None`` keeps the
    checkpoint's dtype (float32 for the shipped models).
    ``backend="transformers"`` gives ``AutoModelForMaskedLM`` (``AutoModelForCausalLM``
    for a causal LM's folder, see :func:`is_causal`); ``backend="lesson"`` gives
    the library's compact :class:`dllm_lesson.modernbert.ModernBert` (same logits, plus a
    KV cache). Both answer ``model(input_ids=ids).logits``  # (B, L, V)
    The tokenizer has a chat template (the course's one if it had none); it is ``None``
    when the folder has no tokenizer files.
    Taught in ``00_welcome``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use 'transformers' (Hugging Face "
                         "AutoModelForMaskedLM) or 'lesson' (the course's ModernBert)")
    if not isinstance(name_or_path, (str, Path)):
        raise ValueError(f"name_or_path must be a model name, folder or hub id (a str), "
                         f"got {type(name_or_path).__name__}")
    device = pick_device(device)
    dtype = _resolve_dtype(dtype)
    name = str(name_or_path)

    shipped = name in SHIPPED
    local: Path | None = None
    if shipped:
        local = model_path(name)  # checks the folder
    elif Path(name).expanduser().is_dir():
        local = Path(name).expanduser()
        _check_folder(local, shipped=False)
    elif Path(name).expanduser().is_file():
        raise ValueError(f"{name!r} is a file: pass the folder that holds config.json and "
                         "the weights")
    elif _looks_like_path(name):
        raise _not_found(name, None)

    if local is not None:
        model = _load_local(local, backend, shipped)
    else:
        model = _load_hub(name, backend)
    model = model.to(device) if dtype is None else model.to(device=device, dtype=dtype)
    tokenizer = _load_tokenizer(name, local, shipped)
    return model.eval(), tokenizer


def is_causal(config) -> bool:
    """Is this model a causal (left-to-right) LM such as ``tiny-ar``, rather than a masked
    one? ``config`` is a transformers config (``model.config``) or a ``config.json`` dict."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    archs = get("architectures") or []
    return any(a.endswith("ForCausalLM") for a in archs) or \
        str(get("model_type", "")).endswith("decoder")


def _auto_class(config: dict):
    """``AutoModelForCausalLM`` for a causal LM's config, else ``AutoModelForMaskedLM``."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForCausalLM if is_causal(config) else AutoModelForMaskedLM


def _check_backend(config: dict, backend: str, name: str) -> None:
    if backend == "lesson" and is_causal(config):
        raise ValueError(f"{name} is a causal (autoregressive) LM; backend='lesson' is the "
                         "course's compact masked ModernBERT. Use backend='transformers'.")


def _lesson_class():
    try:
        from .modernbert import ModernBert
    except ImportError as e:
        raise ImportError("backend='lesson' needs dllm_lesson.modernbert.ModernBert, which "
                          f"could not be imported ({e}); use backend='transformers'") from e
    return ModernBert


def _load_local(path: Path, backend: str, shipped: bool):
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    _check_backend(config, backend, str(path))
    try:
        if backend == "lesson":
            return _lesson_class().from_pretrained(path)
        return _auto_class(config).from_pretrained(str(path))
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - a readable folder that fails to load is damaged
        hint = REBUILD_HINT if shipped else "write it again with model.save_pretrained"
        raise BrokenModelError(f"could not load the model in {path} "
                               f"({type(e).__name__}: {e}); {hint}.") from e


def _load_hub(name: str, backend: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name).to_dict()
        _check_backend(config, backend, name)
        hf_model = _auto_class(config).from_pretrained(name)
    except _hub_errors() as e:
        raise _not_found(name, e) from e
    if backend == "lesson":
        return _lesson_class().from_hf(hf_model)
    return hf_model


def model_backend(name) -> str:
    """``"transformers"`` for a causal LM (``tiny-ar``: the lesson backend is the masked
    ModernBERT), ``"lesson"`` for the others. Read from the folder's ``config.json``."""
    import json

    path = model_path(name) if str(name) in SHIPPED else Path(str(name)).expanduser()
    config = path / "config.json"
    if config.is_file():
        return "transformers" if is_causal(json.loads(config.read_text())) else "lesson"
    try:             # a hub id: its config, if the cache or the network has it
        from transformers import AutoConfig

        causal = is_causal(AutoConfig.from_pretrained(str(name)))
    except Exception:  # noqa: BLE001 - load_model reports a missing model clearly
        causal = False
    return "transformers" if causal else "lesson"
