"""Every printed engine flag is one the engine accepts.

(a) Always: each vLLM/SGLang flag and value of the exports is checked against golden tables taken
    from the engines' own parsers (tests/data/engines/, written by ``scripts/engine_golden.py golden``
    in the engines' venv); TensorRT-LLM keys against the LlmArgs fields read from its source.
(b) Marker ``engines``, where ``.venv-engines`` exists (see /work/shared/ENGINES.md; not in CI): the
    real parsers run on the exported arguments in a subprocess, vLLM's scheduler, cache and parallel
    configs are built from them, and both engines' ``get_pp_indices`` read the exported partition.
"""

from __future__ import annotations

import functools
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ppplan.partitioner.exports import export_plan
from tests.test_exports import MODEL, PLANS, REAL, real_plan

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "engines"
ENGINES_PY = ROOT / ".venv-engines" / "bin" / "python"
VERSIONS = {"vllm": "0.33.0", "sglang": "0.5.23"}
PREFIX = {"vllm": ["vllm", "serve"], "sglang": ["python", "-m", "sglang.launch_server", "--model-path"]}


@functools.cache
def golden(engine: str) -> dict[str, Any]:
    """The flag table of one engine version."""
    if engine == "trtllm":
        return dict(json.loads((GOLDEN / "trtllm-llm_args.json").read_text()))
    return dict(json.loads((GOLDEN / f"{engine}-{VERSIONS[engine]}.json").read_text())["flags"])


def _value_problem(name: str, value: str | None, spec: dict[str, Any]) -> str | None:
    if value is None:
        return f"{name}: no value"
    if spec["choices"] is not None and value not in spec["choices"]:
        return f"{name} {value}: not one of {spec['choices']}"
    kind = spec["type"]
    try:
        if kind == "int" or (kind == "int_or_auto" and value != "auto"):
            int(value)
        elif kind == "float":
            float(value)
    except ValueError:
        return f"{name} {value}: not {kind}"
    return None


def golden_problems(engine: str, args: list[str]) -> list[str]:
    """What the engine's parser would refuse or warn about in ``args`` (flags only, no positional)."""
    table = golden(engine)
    problems: list[str] = []
    dests: set[str] = set()
    i = 0
    while i < len(args):
        name, eq, text = args[i].partition("=")
        value: str | None = text
        spec = table.get(name) if name.startswith("--") else None
        if spec is None:
            problems.append(f"{name}: not a {engine} flag" if name.startswith("--") else f"stray value {name!r}")
            i += 1
            continue
        if spec["deprecated"]:
            problems.append(f"{name}: deprecated in {engine} {VERSIONS[engine]}")
        if spec["dest"] in dests:
            problems.append(f"{name}: given twice")
        dests.add(spec["dest"])
        if spec["takes_value"]:
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else None
                i += 1
            if problem := _value_problem(name, value, spec):
                problems.append(problem)
        elif eq:
            problems.append(f"{name}: a switch given a value")
        i += 1
    return problems


def all_exports() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, plan, exports) of the hand-built plans and the planner's."""
    out = [(n, p, export_plan(p, MODEL)) for n, p in PLANS.items()]
    return out + [(n, real_plan(n), real_plan(n)["exports"]) for n in REAL]


def launches(ex: dict[str, Any], engine: str) -> list[dict[str, Any]]:
    """The launches that start the engine (Ray workers run `ray start` only)."""
    return [e for e in ex[engine]["per_node"] if e["args"]]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_exported_flags_are_in_the_golden_tables(engine: str) -> None:
    checked = 0
    for name, _, ex in all_exports():
        for e in launches(ex, engine):
            assert golden_problems(engine, e["args"]) == [], (name, e["args"])
            words = shlex.split(e["command"].split(" && ")[-1])
            n = len(PREFIX[engine])
            assert words[:n] == PREFIX[engine] and words[n + 1 :] == e["args"], (name, e["command"])
            checked += 1
    assert checked >= len(PLANS) + len(REAL)


def test_golden_check_refuses_what_the_parsers_refuse() -> None:
    """The check is not vacuous: an unknown flag, a bad choice, a non-number, a deprecated flag."""
    assert golden_problems("vllm", ["--max-num-sequences", "3"])[0] == "--max-num-sequences: not a vllm flag"
    assert golden_problems("vllm", ["--max-num-seqs", "x"]) == ["--max-num-seqs x: not int"]
    assert golden_problems("vllm", ["--quantization", "int4"])[0].startswith("--quantization int4: not one of")
    assert golden_problems("sglang", ["--kv-cache-dtype", "fp8"])[0].startswith("--kv-cache-dtype fp8: not one of")
    assert golden_problems("sglang", ["--enable-dp-attention"]) == [
        "--enable-dp-attention: deprecated in sglang 0.5.23"
    ]
    assert golden_problems("sglang", ["--tp-size", "2", "--tensor-parallel-size", "2"]) == [
        "--tensor-parallel-size: given twice"
    ]


def test_golden_tables_name_their_versions() -> None:
    for engine, version in VERSIONS.items():
        body = json.loads((GOLDEN / f"{engine}-{version}.json").read_text())
        assert body["version"] == version and len(body["flags"]) > 100
    assert "pp_partition" in golden("trtllm")["llm_args"]


def test_trtllm_keys_are_llm_args_fields() -> None:
    g = golden("trtllm")
    for name, _, ex in all_exports():
        args = ex["trtllm"]["llm_args"]
        assert set(args) <= set(g["llm_args"]), name
        kv = args.get("kv_cache_config", {})
        assert set(kv) <= set(g["kv_cache_config"]), name
        assert kv.get("dtype", "auto") in g["kv_cache_config.dtype"]
        assert 0 <= kv.get("free_gpu_memory_fraction", 0.5) <= 1
        assert args["max_num_tokens"] >= args["max_batch_size"]


def test_vllm_token_budget_covers_the_batch() -> None:
    """vLLM's SchedulerConfig refuses max_num_batched_tokens < max_num_seqs."""
    plan = PLANS["single"] | {"degrees": PLANS["single"]["degrees"] | {"micro_batch_size": 4000}}
    ex = export_plan(plan, MODEL)["vllm"]
    args = ex["args"]
    seqs = int(args[args.index("--max-num-seqs") + 1])
    assert seqs == 8000 and int(args[args.index("--max-num-batched-tokens") + 1]) == seqs
    assert any("--max-num-batched-tokens 8000, not the planned 4096" in n for n in ex["notes"])


def _layer_ranges(partition: list[int]) -> list[list[int]]:
    ends = [sum(partition[: k + 1]) for k in range(len(partition))]
    return [[e - n, e] for e, n in zip(ends, partition, strict=True)]


def _cases() -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]]:
    cases, meta = [], []
    for name, plan, ex in all_exports():
        for engine in ("vllm", "sglang"):
            for e in launches(ex, engine):
                cases.append(
                    {
                        "engine": engine,
                        "model": MODEL,
                        "args": e["args"],
                        "env": e["env"],
                        "pp": plan["degrees"]["pp"],
                        "layers": sum(plan["partition"]),
                        "expect": {"vllm": ["max_num_seqs", "max_model_len", "pipeline_parallel_size"]}.get(
                            engine, ["tp_size", "pp_size", "max_running_requests", "context_length", "ep_size"]
                        ),
                    }
                )
                meta.append((name, plan, ex, e))
    return cases, meta


@pytest.mark.engines
@pytest.mark.slow
def test_real_parsers_accept_the_exports() -> None:
    """vLLM 0.33.0 and SGLang 0.5.23 parse every launch; the configs vLLM builds from the values
    validate; both engines' get_pp_indices give the plan's layer ranges from the exported variable."""
    if not ENGINES_PY.exists():
        pytest.skip(f"no engines venv at {ENGINES_PY} (see /work/shared/ENGINES.md)")
    cases, meta = _cases()
    done = subprocess.run(
        [str(ENGINES_PY), str(ROOT / "scripts" / "engine_golden.py"), "check"],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    results = json.loads(done.stdout)
    assert len(results) == len(cases)
    for case, res, (name, plan, ex, e) in zip(cases, results, meta, strict=True):
        where = (name, case["engine"], e["node_rank"], res)
        assert res["ok"], where
        d = plan["degrees"]
        parsed = res["parsed"]
        pp = d["pp"]
        if case["engine"] == "vllm":
            assert res["config_errors"] == [], where
            assert parsed["pipeline_parallel_size"] == pp and parsed["max_model_len"] == plan["workload"]["context"]
            if "--distributed-executor-backend" not in e["args"]:
                instance = [x for x in ex["vllm"]["per_node"] if x["instance"] == e["instance"]]
                assert res["world_size"] == sum(len(x["local_gpus"]) for x in instance), where
                assert res["local_world_size"] == len(e["local_gpus"]), where
        else:
            # SGLang's --tp-size counts a stage's GPUs; the plan's degrees.tp is the attention TP
            stage_gpus = d["tp"] * d.get("attention_dp", 1)
            assert (parsed["tp_size"], parsed["pp_size"]) == (stage_gpus, pp), where
            assert parsed["max_running_requests"] == d["micro_batches"] * d["micro_batch_size"], where
            assert parsed["ep_size"] == d.get("ep", 1), where
        if pp > 1:
            assert res["pp_indices"] == _layer_ranges(plan["partition"]), where
