"""dllm_lesson: the small library behind the diffusion-language-model course.

The notebooks import everything from here; each function's docstring names the notebook
that teaches it. Heavy modules load lazily, so ``import dllm_lesson`` is quick.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "loading", "model_path": "loading", "SHIPPED": "loading",
    "generate": "sampling", "decode_steps": "sampling", "Step": "sampling",
    "build_corpus": "data", "load_chat_dataset": "data",
    "build_tokenizer": "tokenizer",
    "TrainConfig": "training", "train": "training",
    "setup": "viz",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dllm_lesson' has no attribute {name!r}")
