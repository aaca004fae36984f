"""load_model / model_path: shipped names, local folders, hub ids and their errors.

The shipped folders are simulated: a random tiny ModernBERT is copied under a temporary
CHECKPOINT_ROOT for each test.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from dllm_lesson import loading as models
from dllm_lesson.loading import BrokenModelError, ModelNotFoundError, load_model, model_path

SHIPPED = ("tiny-bert", "tiny-dllm", "tiny-duo", "tiny-duo-dcd", "tiny-ar")
REAL_ROOT = models.CHECKPOINT_ROOT


@pytest.fixture
def shipped_root(tmp_path, tiny_modernbert_dir, monkeypatch):
    """A fresh checkpoint root holding the tiny model under every shipped name."""
    root = tmp_path / "checkpoints"
    for name in SHIPPED:
        shutil.copytree(tiny_modernbert_dir, root / name)
    monkeypatch.setattr(models, "CHECKPOINT_ROOT", root)
    return root


@pytest.fixture
def hub_offline(monkeypatch):
    """Offline hub, whatever the environment says (no retries, no downloads)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _ids(tokenizer, text="The capital of France is Paris."):
    return torch.tensor([tokenizer(text)["input_ids"]])  # (1, L)


def assert_names_embedded_models(message: str):
    for name in SHIPPED:
        assert name in message, f"{name} missing from: {message}"


# -- shipped names ---------------------------------------------------------------------
def test_shipped_constant():
    assert models.SHIPPED == SHIPPED
    assert REAL_ROOT.name == "checkpoints" and REAL_ROOT.parent.name == "dllm_lesson"


def test_load_shipped_matches_plain_transformers(shipped_root):
    from transformers import AutoModelForMaskedLM

    model, tok = load_model("tiny-dllm", device="cpu")
    assert not model.training
    assert type(model).__name__ == "ModernBertForMaskedLM"
    assert tok is not None and tok.mask_token_id == 4 and tok.chat_template
    ref = AutoModelForMaskedLM.from_pretrained(str(shipped_root / "tiny-dllm")).eval()
    ids = _ids(tok)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (1, L, V)
        expected = ref(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_model_path(shipped_root):
    assert model_path("tiny-duo") == shipped_root / "tiny-duo"
    # check=False: the path of a folder that does not exist yet (build-models writes it)
    shutil.rmtree(shipped_root / "tiny-bert")
    assert model_path("tiny-bert", check=False) == shipped_root / "tiny-bert"
    with pytest.raises(BrokenModelError, match="build-models"):
        model_path("tiny-bert")


def test_model_path_unknown_name_lists_shipped():
    with pytest.raises(ModelNotFoundError) as info:
        model_path("tiny-gpt")
    assert_names_embedded_models(str(info.value))
    with pytest.raises(ValueError, match="Did you mean 'tiny-dllm'"):
        model_path("tiny-dlm")


def test_default_device_is_best_available(shipped_root):
    model, _ = load_model("tiny-bert")
    expected = ("cuda" if torch.cuda.is_available() else
                "mps" if torch.backends.mps.is_available() else "cpu")
    assert next(model.parameters()).device.type == expected


def test_dtype_argument(shipped_root):
    model, _ = load_model("tiny-bert", device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_model("tiny-bert", device="cpu", dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    model, _ = load_model("tiny-bert", device="cpu")
    assert next(model.parameters()).dtype == torch.float32  # as saved


# -- damaged shipped folders --------------------------------------------------------------
@pytest.mark.parametrize("damage", ["no_config", "no_weights", "truncated_weights",
                                    "no_folder"])
def test_damaged_shipped_folder(shipped_root, damage):
    folder = shipped_root / "tiny-dllm"
    if damage == "no_config":
        (folder / "config.json").unlink()
    elif damage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif damage == "truncated_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:1000])
    else:
        shutil.rmtree(folder)
    with pytest.raises(BrokenModelError) as info:
        load_model("tiny-dllm", device="cpu")
    message = str(info.value)
    assert "build-models" in message and "reinstall" in message
    assert str(folder) in message


def test_damaged_shipped_tokenizer(shipped_root):
    (shipped_root / "tiny-bert" / "tokenizer.json").write_text("{not json")
    with pytest.raises(BrokenModelError, match="build-models"):
        load_model("tiny-bert", device="cpu")


# -- local folders ------------------------------------------------------------------------
def test_local_folder_without_tokenizer(tmp_path, tiny_modernbert_dir, course_tokenizer):
    folder = tmp_path / "model_only"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_modernbert_dir / f, folder / f)
    model, tok = load_model(folder, device="cpu")
    assert tok is None
    with torch.no_grad():
        assert model(input_ids=_ids(course_tokenizer)).logits.shape[-1] == len(
            course_tokenizer)


def test_local_folder_errors(tmp_path, tiny_modernbert_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BrokenModelError, match="config.json") as info:
        load_model(empty, device="cpu")
    assert "build-models" not in str(info.value)  # not a shipped model: no rebuild advice
    with pytest.raises(ValueError, match="folder"):
        load_model(tiny_modernbert_dir / "config.json", device="cpu")


def test_missing_local_path_offline(tmp_path, hub_offline):
    with pytest.raises(ModelNotFoundError) as info:
        load_model(str(tmp_path / "no" / "such" / "run"), device="cpu")
    assert "no folder" in str(info.value)
    assert_names_embedded_models(str(info.value))


# -- hub ids ------------------------------------------------------------------------------
def test_unknown_id_offline_names_embedded_models(hub_offline):
    with pytest.raises(ModelNotFoundError) as info:
        load_model("nobody-xyz/not-a-model", device="cpu")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert_names_embedded_models(message)
    assert "answerdotai/ModernBERT-base" in message
    assert "tommyp111/modernbert-dllm-tulu" in message
    assert "internet" in message


def test_typo_of_shipped_name_suggests_it(hub_offline):
    with pytest.raises(ModelNotFoundError, match="Did you mean 'tiny-duo'"):
        load_model("tiny_duo", device="cpu")


@pytest.mark.parametrize("error", ["oserror", "http", "validation"])
def test_hub_failures_become_one_error(monkeypatch, error):
    import transformers
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    def fail(*args, **kwargs):
        if error == "oserror":
            raise OSError("We couldn't connect to the hub")
        if error == "http":
            response = SimpleNamespace(headers={}, request=None, status_code=404)
            raise HfHubHTTPError("404 Client Error: Repository Not Found",
                                 response=response)
        raise HFValidationError("Repo id must use alphanumeric chars")

    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", fail)
    with pytest.raises(ModelNotFoundError) as info:
        load_model("someone/some-model", device="cpu")
    assert_names_embedded_models(str(info.value))


def test_hub_id_goes_through_auto_classes(monkeypatch, tiny_modernbert_dir):
    """A (cached) hub id: AutoModelForMaskedLM / AutoTokenizer are called with the id, and
    a tokenizer with no chat template gets the course's."""
    import transformers

    from dllm_lesson.tokenizer import CHAT_TEMPLATE

    real_model = transformers.AutoModelForMaskedLM.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained
    real_config = transformers.AutoConfig.from_pretrained
    calls = []

    def config_from_hub(name, *args, **kwargs):
        if name != "answerdotai/ModernBERT-base":  # transformers' own call, from a folder
            return real_config(name, *args, **kwargs)
        calls.append(("config", name))
        return real_config(str(tiny_modernbert_dir))

    def model_from_hub(name, *args, **kwargs):
        calls.append(("model", name))
        return real_model(str(tiny_modernbert_dir))

    def tok_from_hub(name, *args, **kwargs):
        calls.append(("tokenizer", name))
        tok = real_tok(str(tiny_modernbert_dir))
        tok.chat_template = None
        return tok

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config_from_hub)
    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained",
                        model_from_hub)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tok_from_hub)
    model, tok = load_model("answerdotai/ModernBERT-base", device="cpu")
    assert calls == [("config", "answerdotai/ModernBERT-base"),
                     ("model", "answerdotai/ModernBERT-base"),
                     ("tokenizer", "answerdotai/ModernBERT-base")]
    assert not model.training
    assert tok.chat_template == CHAT_TEMPLATE


def test_causal_folder_loads_as_causal_lm(tmp_path):
    """A causal LM's folder (tiny-ar's kind) loads through AutoModelForCausalLM, and the
    compact masked ModernBERT backend refuses it with one clear message."""
    from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM

    from dllm_lesson.loading import is_causal

    conf = ModernBertDecoderConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=64, pad_token_id=0,
                                   bos_token_id=1, eos_token_id=2)
    ModernBertDecoderForCausalLM(conf).save_pretrained(tmp_path)
    model, tok = load_model(tmp_path, device="cpu")
    assert type(model).__name__ == "ModernBertDecoderForCausalLM" and tok is None
    assert is_causal(model.config)
    assert model(input_ids=torch.tensor([[3, 4, 5]])).logits.shape == (1, 3, 64)
    with pytest.raises(ValueError, match="causal .* backend='transformers'"):
        load_model(tmp_path, device="cpu", backend="lesson")


# -- bad arguments ------------------------------------------------------------------------
def test_bad_arguments(shipped_root):
    with pytest.raises(ValueError, match="backend"):
        load_model("tiny-bert", backend="jax")
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-bert", dtype="float42")
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-bert", dtype=torch.int64)
    with pytest.raises(ValueError, match="device"):
        load_model("tiny-bert", device="gpu")
    with pytest.raises(ValueError, match="name_or_path"):
        load_model(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            load_model("tiny-bert", device="cuda")


# -- the lesson backend (dllm_lesson.modernbert, written separately) --------------------------
def test_lesson_backend_matches_transformers(shipped_root):
    pytest.importorskip("dllm_lesson.modernbert")
    hf_model, tok = load_model("tiny-dllm", device="cpu")
    lesson_model, tok2 = load_model("tiny-dllm", device="cpu", backend="lesson")
    assert type(lesson_model).__name__ == "ModernBert"
    assert not lesson_model.training and tok2 is not None
    ids = _ids(tok)
    with torch.no_grad():
        torch.testing.assert_close(lesson_model(input_ids=ids).logits,
                                   hf_model(input_ids=ids).logits, rtol=0, atol=1e-4)


# -- the real shipped models, once build-models has written them -------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_real_shipped_model(name):
    folder = REAL_ROOT / name
    if not folder.exists():
        pytest.skip(f"{name} not built yet (python -m dllm_lesson build-models)")
    model, tok = load_model(name, device="cpu")
    assert tok is not None and tok.mask_token_id is not None
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert size <= 10 * 2**20, f"{name} is {size / 2**20:.1f} MB (limit 10 MB)"
    assert (folder / "README.md").is_file(), "every shipped model has a model card"
    ids = _ids(tok)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (1, L, V)
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
