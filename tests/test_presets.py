"""Presets build on the meta device with exact parameter counts, and the shipped descriptions match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppplan.profiler.analytic import SPEC_VERSION, model_spec
from ppplan.profiler.configs import ModelConfigError, list_presets, load_model_config
from ppplan.profiler.models import describe_model

SPECS = Path(__file__).resolve().parent.parent / "ppplan" / "profiler" / "presets" / "specs"
REQUIRED = [
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "qwen2.5-72b",
    "mixtral-8x7b",
    "deepseek-v3",
    "kimi-k2",
    "gpt-oss-120b",
    "gemma-3-27b",
    "tiny-llama",
    "tiny-moe",
]

# published totals; the tolerance says what the published figure rounds or includes
PUBLISHED = {
    "llama-3.1-8b": (8.03e9, 0.002),
    "llama-3.1-70b": (70.6e9, 0.002),
    "llama-3.1-405b": (405.9e9, 0.001),
    "qwen2.5-72b": (72.7e9, 0.001),
    "mixtral-8x7b": (46.7e9, 0.001),
    "deepseek-v3": (671e9, 0.001),  # main model; the 14B MTP module is not built
    "kimi-k2": (1.04e12, 0.015),  # "1.04T" is rounded; the checkpoint holds 1.0265e12
    "gpt-oss-120b": (116.8e9, 0.001),
    "gemma-3-27b": (27.4e9, 0.02),  # the published figure includes the 0.4B vision tower
}


def test_required_presets_exist() -> None:
    names = {p.name for p in list_presets()}
    assert set(REQUIRED) <= names


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_total_params_match_published(name: str) -> None:
    published, tol = PUBLISHED[name]
    spec = model_spec(name)
    assert spec.total_params == pytest.approx(published, rel=tol)


def test_active_params_of_moe() -> None:
    assert model_spec("deepseek-v3").active_params == pytest.approx(37e9, rel=0.02)
    assert model_spec("mixtral-8x7b").active_params + model_spec("mixtral-8x7b").units[0].params == pytest.approx(
        12.9e9, rel=0.01
    )
    assert model_spec("kimi-k2").active_params == pytest.approx(32e9, rel=0.02)


def test_units_layout() -> None:
    spec = model_spec("llama-3.1-70b")
    assert [u.kind for u in spec.units] == ["embed"] + ["decoder"] * 80 + ["head"]
    assert spec.units[0].modules == ["model.embed_tokens"]
    assert spec.units[1].modules == ["model.layers.0"]
    assert spec.units[-1].modules == ["model.norm", "lm_head"]
    assert sum(u.params for u in spec.units) == spec.total_params


def test_tied_embeddings_counted_once_but_copied_on_last_stage() -> None:
    spec = model_spec("gemma-3-27b")
    assert spec.tie_word_embeddings
    emb, head = spec.units[0], spec.units[-1]
    assert head.params == spec.hidden_size  # the final norm only
    assert head.weight_bytes["bf16"] == emb.weight_bytes["bf16"] + 2 * spec.hidden_size


def test_mla_and_sliding_attention_are_recognised() -> None:
    ds = model_spec("deepseek-v3")
    assert {u.attention for u in ds.decoder_units} == {"mla"}
    assert ds.units[1].kv_elems_per_token == 512 + 64 and not ds.units[1].kv_tp_shardable
    oss = model_spec("gpt-oss-120b")
    kinds = [u.attention for u in oss.decoder_units]
    assert kinds[:2] == ["sliding", "full"] and oss.units[1].window == 128
    gem = model_spec("gemma-3-27b")
    assert [u.attention for u in gem.decoder_units].count("full") == 10


@pytest.mark.parametrize("name", [p.name for p in list_presets()])
def test_shipped_spec_equals_fresh_build(name: str) -> None:
    data = json.loads((SPECS / f"{name}.json").read_text())
    cfg = load_model_config(name)
    assert data["config_hash"] == cfg.config_hash and data["spec_version"] == SPEC_VERSION
    fresh = describe_model(cfg).model_dump(mode="json")
    assert data["spec"] == fresh, "rerun scripts/build_preset_specs.py"


def test_local_config_path(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parent.parent / "ppplan" / "profiler" / "presets" / "tiny-llama.json"
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text(src.read_text())
    spec = model_spec(str(d))
    assert spec.name == "my-model" and spec.total_params == model_spec("tiny-llama").total_params


@pytest.mark.parametrize(
    ("value", "message"),
    [("no-such-model", "is neither a bundled preset nor an existing config file"), ("", "empty string")],
)
def test_unknown_model(value: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        load_model_config(value)


def test_bad_config_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match="not a readable JSON config"):
        load_model_config(str(bad))
    no_type = tmp_path / "notype.json"
    no_type.write_text('{"hidden_size": 4}')
    with pytest.raises(ModelConfigError, match="no string 'model_type'"):
        load_model_config(str(no_type))
    unknown = tmp_path / "unknown.json"
    unknown.write_text(
        '{"model_type": "definitely_not_a_model", "hidden_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 4, "vocab_size": 100}'
    )
    with pytest.raises(ModelConfigError, match="not known to this transformers"):
        model_spec(str(unknown))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 0}, "num_attention_heads 0 in .* must be an integer ≥ 1"),
        ({"num_key_value_heads": 3}, "num_key_value_heads 3 in .* must divide num_attention_heads"),
        ({"hidden_size": True}, "hidden_size True in .* must be an integer ≥ 1"),
        ({"num_hidden_layers": 10**9}, "num_hidden_layers 1000000000 .* exceeds 4096"),
        ({"vocab_size": None}, "has no vocab_size"),
        ({"num_experts_per_tok": 9, "num_local_experts": 8}, "num_experts_per_tok 9 .* exceeds the 8 experts"),
    ],
)
def test_nonsense_configs_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    src = Path(__file__).resolve().parent.parent / "ppplan" / "profiler" / "presets" / "tiny-llama.json"
    cfg = {**json.loads(src.read_text()), **change}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match="^model: .*" + message):
        load_model_config(str(tmp_path))


def _shadowing_folder(root: Path, name: str) -> None:
    """``root/name/config.json``: a config that differs from the preset ``name`` (2 layers)."""
    src = Path(__file__).resolve().parent.parent / "ppplan" / "profiler" / "presets" / "tiny-llama.json"
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({**json.loads(src.read_text()), "num_hidden_layers": 2}))


def test_presets_resolve_before_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _shadowing_folder(tmp_path, "llama-3.1-8b")
    _shadowing_folder(tmp_path, "my-model")
    monkeypatch.chdir(tmp_path)
    cfg = load_model_config("llama-3.1-8b")
    assert cfg.source == "preset:llama-3.1-8b" and cfg.raw["num_hidden_layers"] == 32
    assert load_model_config("./llama-3.1-8b").raw["num_hidden_layers"] == 2  # explicitly a path
    assert load_model_config("my-model/config.json").raw["num_hidden_layers"] == 2
    with pytest.raises(ModelConfigError, match=r"write it as a path \(\./my-model\)"):
        load_model_config("my-model")  # a bare word never reads the disk


def test_presets_resolve_before_paths_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from ppplan.api.app import create_app
    from ppplan.api.settings import Settings
    from ppplan.api.store.migrate import upgrade

    _shadowing_folder(tmp_path, "tiny-llama")
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'shadow.db'}"
    upgrade(url)
    with TestClient(create_app(Settings(database_url=url)), base_url="http://127.0.0.1") as c:
        r = c.post("/v1/plans", json={"model": "tiny-llama", "gpus": "1xL4", "prompt_tokens": 128, "output_tokens": 64})
    assert r.status_code == 201, r.text
    plan = r.json()["plan"]
    assert plan["model"]["num_layers"] == 4 and str(tmp_path) not in json.dumps(plan)


@pytest.mark.parametrize(
    "name", ["meta-llama/Llama-3.1-70B", "META-LLAMA/llama-3.1-70b", " Llama-3.1-70B ", "ＬＬＡＭＡ-3.1-70B"]
)
def test_hub_id_and_spellings_name_the_preset(name: str) -> None:
    cfg = load_model_config(name)
    assert cfg.name == "llama-3.1-70b" and cfg.source == "preset:llama-3.1-70b"


@pytest.mark.parametrize(
    ("value", "suggestion"),
    [("llama-3.1-8", "llama-3.1-8b"), ("lama-3.1-70b", "llama-3.1-70b"), ("kimi-k3", "kimi-k2")],
)
def test_near_miss_names_get_a_suggestion(value: str, suggestion: str) -> None:
    with pytest.raises(ModelConfigError, match=f"did you mean '{suggestion}'"):
        load_model_config(value)
