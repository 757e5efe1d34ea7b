"""Executor unit tests (one process): weights, stage layout, workload, re-cut, rows, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ppplan.core.profile import Efficiency
from ppplan.executor.calibration import fit_stage_measurements, predict_stage_seconds, profile_for_plan
from ppplan.executor.recut import parse_partition, recut
from ppplan.executor.reference import reference_outputs
from ppplan.executor.report import store_rows
from ppplan.executor.run import check_runnable, model_name_of
from ppplan.executor.spec import CHECK_WORKLOAD, ExecutorError, RunSpec, Workload, resolve_workload
from ppplan.executor.stage import build_stage, stage_layout
from ppplan.executor.weights import materialise, param_seed, stage_param_names
from ppplan.partitioner.request import PlanRequest
from ppplan.profiler.calibrate import apply_calibration
from ppplan.profiler.configs import load_model_config
from ppplan.profiler.models import build_hf_config, build_meta_model
from ppplan.profiler.resolve import plan_request

CPU = torch.device("cpu")


def _plan(model: str = "tiny-llama", gpus: str = "2xCPU", pp: int = 2, **kw: object) -> dict:
    req = PlanRequest(model=model, gpus=gpus, pp=pp, tp=1, prompt_tokens=16, output_tokens=8, concurrency=4, **kw)
    return plan_request(req).model_dump(mode="json")


def _meta(name: str = "tiny-llama") -> torch.nn.Module:
    return build_meta_model(build_hf_config(load_model_config(name)))


def test_seeded_weights_do_not_depend_on_the_stage() -> None:
    a, _ = build_stage(
        "tiny-llama",
        ["model.embed_tokens", "model.layers.0", "model.layers.1"],
        seed=3,
        device=CPU,
        dtype=torch.float32,
    )
    b, _ = build_stage("tiny-llama", ["model.layers.1", "model.layers.2"], seed=3, device=CPU, dtype=torch.float32)
    c, _ = build_stage("tiny-llama", ["model.layers.1"], seed=4, device=CPU, dtype=torch.float32)
    wa = a.layers[1].self_attn.q_proj.weight
    assert torch.equal(wa, b.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(wa, c.layers[0].self_attn.q_proj.weight)
    assert param_seed(0, "x") != param_seed(0, "y")
    # norms are around 1, matrices around 0
    assert abs(float(a.layers[0].input_layernorm.weight.mean()) - 1) < 0.05


def test_a_stage_materialises_only_its_modules() -> None:
    model = _meta()
    nbytes = materialise(model, ["model.layers.2"], seed=0, std=0.02, device=CPU, dtype=torch.float32)
    assert model.model.layers[2].mlp.up_proj.weight.device == CPU
    assert model.model.layers[1].mlp.up_proj.weight.is_meta
    assert model.lm_head.weight.is_meta
    assert nbytes == sum(p.numel() * 4 for p in model.model.layers[2].parameters())


def test_safetensors_checkpoint_loads_only_the_stage_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    full = _meta()
    materialise(full, ["model", "lm_head"], seed=11, std=0.02, device=CPU, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in full.state_dict().items() if "rotary" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    part = _meta()
    names = stage_param_names(part, ["model.layers.3", "model.norm", "lm_head"])
    assert all(n.startswith(("model.layers.3.", "model.norm.", "lm_head.")) for n in names)
    materialise(
        part,
        ["model.layers.3", "model.norm", "lm_head"],
        seed=0,
        std=0.02,
        device=CPU,
        dtype=torch.float32,
        checkpoint=tmp_path,
    )
    assert torch.equal(part.lm_head.weight, state["lm_head.weight"])
    assert torch.equal(part.model.layers[3].self_attn.k_proj.weight, state["model.layers.3.self_attn.k_proj.weight"])
    assert part.model.embed_tokens.weight.is_meta
    # a checkpoint lacking a stage tensor is refused with the tensor's name
    del state["model.norm.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ExecutorError, match=r"model\.norm\.weight"):
        materialise(
            _meta(),
            ["model.norm"],
            seed=0,
            std=0.02,
            device=CPU,
            dtype=torch.float32,
            checkpoint=tmp_path / "model.safetensors",
        )


def test_stage_layout_reads_the_module_contract() -> None:
    model = _meta()
    lay = stage_layout(model, ["model.layers.2", "model.layers.3", "model.norm", "lm_head"], 4)
    assert lay.layers == (2, 3) and lay.head == "lm_head" and lay.tail == ("model.norm",) and lay.embed is None
    with pytest.raises(ExecutorError, match="not contiguous"):
        stage_layout(model, ["model.layers.1", "model.layers.3"], 4)
    with pytest.raises(ExecutorError, match="is not a module"):
        stage_layout(model, ["model.layers.9"], 4)
    with pytest.raises(ExecutorError, match="final norm must share the last stage"):
        stage_layout(model, ["model.layers.3", "model.norm"], 4)


def test_workload_comes_from_the_plan_or_a_check_workload() -> None:
    cpu_plan = _plan()
    wl, why = resolve_workload(cpu_plan, "cpu")
    assert (wl.prompt_tokens, wl.new_tokens) == (16, 8) and "plan's workload" in why
    gpu_plan = _plan(gpus="2xH100")
    wl, why = resolve_workload(gpu_plan, "cpu", new_tokens=3)
    assert wl.prompt_tokens == CHECK_WORKLOAD["prompt_tokens"] and wl.new_tokens == 3
    assert wl.micro_batches == gpu_plan["degrees"]["micro_batches"] and "H100" in why
    with pytest.raises(
        ExecutorError, match=r"new_tokens: must be an integer in 1\.\.32,768 \(a bounded run\) \(got 0\)"
    ):
        Workload(prompt_tokens=4, new_tokens=0, micro_batches=1, micro_batch_size=1)
    with pytest.raises(ExecutorError, match="device: 'tpu'"):
        RunSpec(plan_path="x", device="tpu")  # type: ignore[arg-type]


def test_refusals_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan()
    if not torch.cuda.is_available():
        with pytest.raises(ExecutorError, match="device: 'cuda' requested but torch sees no CUDA GPU"):
            check_runnable(plan, "cuda")
    changed = json.loads(json.dumps(plan))
    changed["model"]["config_hash"] = "0" * 64
    with pytest.raises(ExecutorError, match="config changed since planning"):
        model_name_of(changed)


def test_recut_moves_layers_and_keeps_the_module_contract() -> None:
    plan = _plan()
    cut = recut(plan, [1, 3])
    assert cut["partition"] == [1, 3]
    assert cut["stages"][0]["modules"] == ["model.embed_tokens", "model.layers.0"]
    assert cut["stages"][1]["modules"] == [
        "model.layers.1",
        "model.layers.2",
        "model.layers.3",
        "model.norm",
        "lm_head",
    ]
    assert cut["stages"][1]["units"] == [2, 5] and cut["stages"][1]["decoder_layers"] == [1, 3]
    assert cut["stages"][1]["times"]["decode_ms"] > cut["stages"][0]["times"]["decode_ms"]
    assert parse_partition("2,2") == [2, 2]
    for bad, msg in (([1, 1, 2], "PP 2"), ([0, 4], "without decoder layers"), ([1, 2], "sums to 3")):
        with pytest.raises(ExecutorError, match=msg):
            recut(plan, bad)
    with pytest.raises(ExecutorError, match="partition: 'a,b'"):
        parse_partition("a,b")


def _fake_report(plan: dict, dec: list[float], pre_per_prompt: list[float], b: int, P: int) -> dict:
    stages = []
    for i, (d, p) in enumerate(zip(dec, pre_per_prompt, strict=True)):
        ph = lambda s: {"median_step_s": s, "steps": 4, "wait_s": 0.01, "bytes_sent": 1024, "peak_bytes": 10}  # noqa: E731
        stages.append({"index": i, "measured": {"prefill": ph(p * b), "decode": ph(d)}})
    return {
        "workload": {"micro_batch_size": b, "prompt_tokens": P, "new_tokens": 8, "micro_batches": 2},
        "stages": stages,
    }


def test_store_rows_fit_the_store_schema() -> None:
    from ppplan.api.store.repo import MeasurementCreate

    plan = _plan()
    rows = store_rows(_fake_report(plan, [1e-3, 2e-3], [3e-3, 4e-3], 2, 16), "run-x")
    assert len(rows) == 4
    for r in rows:
        MeasurementCreate.model_validate(r)
    pre = next(r for r in rows if r["phase"] == "prefill" and r["stage"] == 1)
    assert pre["tokens"] == 32 and pre["compute_s"] == pytest.approx(8e-3) and pre["wait_s"] == pytest.approx(0.0025)


@pytest.mark.parametrize(
    "true", [Efficiency(compute=5.0, memory=0.01, overhead_s=0.0), Efficiency(compute=0.5, memory=0.5, overhead_s=5e-4)]
)
def test_calibration_from_stage_times_recovers_the_cut(tmp_path: Path, true: Efficiency) -> None:
    """Stage times generated by a known efficiency: the fit reproduces the cut that efficiency implies,
    which differs from the uncalibrated cut (a model with a heavy LM head: vocab 16384, 8 layers)."""
    cfg = json.loads(
        (Path(__file__).resolve().parent.parent / "ppplan" / "profiler" / "presets" / "tiny-llama.json").read_text()
    )
    cfg.update(num_hidden_layers=8, vocab_size=16384)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    req = PlanRequest(model=str(tmp_path), gpus="2xCPU", pp=2, tp=1, prompt_tokens=32, output_tokens=16, concurrency=8)
    plan = plan_request(req).model_dump(mode="json")
    base = profile_for_plan(plan)
    truth = apply_calibration(base, "CPU", true)
    want = plan_request(req, truth).partition
    assert want != plan["partition"]
    b = plan["degrees"]["micro_batch_size"]
    dec = predict_stage_seconds(plan, truth, phase="decode", tokens=b, context=32 + 8)
    # one batched prefill forward of b prompts per stage (the report stores per-prompt times × b)
    pre = predict_stage_seconds(plan, truth, phase="prefill", tokens=32, context=32, batch=b)
    rows = store_rows(_fake_report(plan, dec, [x / b for x in pre], b, 32), "synthetic")
    cal, eff, _ = fit_stage_measurements(plan, rows, base, source="test")
    assert plan_request(req, cal).partition == want
    assert eff.fit_error["all"] < 0.1


def test_gpu_script_prepares_an_uneven_8b_shaped_plan(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_gpu_executor", "scripts/run_gpu_executor.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    plan = mod.prepare(tmp_path, 4, "2xH100", 128, 8, 4)
    assert len(set(plan["partition"])) == 2 and sum(plan["partition"]) == 4
    assert plan["model"]["hidden_size"] == 4096 and plan["model"]["vocab_size"] == 128256
    assert json.loads((tmp_path / "plan.json").read_text())["partition"] == plan["partition"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-moe"])
def test_reference_decode_reads_its_cache(name: str) -> None:
    """Decoding over the KV cache equals recomputing the whole sequence: a cache keyword the installed
    transformers silently drops would make every decode step attend to its new token alone (and the
    pipeline, calling layers the same way, would agree with that wrong reference)."""
    wl = {"micro_batches": 1, "micro_batch_size": 2, "prompt_tokens": 7, "new_tokens": 5}
    cached = reference_outputs(name, workload=wl, seed=3, dtype="float32", device="cpu", checkpoint=None)
    full = reference_outputs(name, workload=wl, seed=3, dtype="float32", device="cpu", checkpoint=None, use_cache=False)
    assert torch.equal(cached["tokens"], full["tokens"])
    assert float((cached["logits"] - full["logits"]).abs().max()) < 1e-4
    assert float(cached["logits"][..., 1:, :].std()) > 0  # steps differ: a real comparison, not zeros


def _outputs(tokens: list[list[int]], logits: list[list[list[float]]]) -> dict[str, torch.Tensor]:
    return {"tokens": torch.tensor([tokens]), "logits": torch.tensor([logits])}


def test_compare_accepts_a_divergence_only_at_a_near_tie() -> None:
    from ppplan.executor.reference import compare

    tol = 1e-4  # float32
    ref = _outputs([[1, 0]], [[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]])
    same = compare(ref, ref, "float32")
    assert same.passed and same.tokens_equal and same.compared_steps == 2 and same.first_divergence_step is None
    # a near-tie at step 0: token 2 instead of 1, within tolerance in both runs; later steps not compared
    tie = _outputs([[2, 2]], [[[0.0, 2.0, 2.0 + tol / 2], [0.0, 0.0, 9.0]]])
    tie_ref = _outputs([[1, 0]], [[[0.0, 2.0 + tol / 2, 2.0], [3.0, 0.0, 0.0]]])
    r = compare(tie, tie_ref, "float32")
    assert r.passed and not r.tokens_equal and r.diverged_at_near_tie == 1 and r.first_divergence_step == 0
    assert r.compared_steps == 1 and r.logits_max_abs_diff <= tol
    # a divergence with a clear winner in the reference is a failure
    wrong = _outputs([[2, 0]], [[[0.0, 2.0, 2.5], [3.0, 0.0, 0.0]]])
    r = compare(wrong, ref, "float32")
    assert not r.passed and r.diverged_otherwise == 1
    # equal tokens but logits off by more than the tolerance before any divergence
    off = _outputs([[1, 0]], [[[0.0, 2.0, 1.0], [3.0, 0.01, 0.0]]])
    r = compare(off, ref, "float32")
    assert not r.passed and r.tokens_equal and r.logits_max_abs_diff > tol


def test_compare_low_precision_tolerance_scales_with_the_logits() -> None:
    """bf16: 4 ulps of the step's largest |logit| (0.125 at |logit| in [4, 8)), never below 5e-2."""
    from ppplan.executor.reference import compare

    ref = _outputs([[0]], [[[6.0, 1.0, -2.0]]])
    near = _outputs([[0]], [[[6.0 - 0.12, 1.0, -2.0]]])
    far = _outputs([[0]], [[[6.0 - 0.13, 1.0, -2.0]]])
    assert compare(near, ref, "bfloat16").passed and compare(near, ref, "bfloat16").tolerance == 0.125
    assert not compare(far, ref, "bfloat16").passed
    small = _outputs([[0]], [[[0.5, 0.1, 0.0]]])
    assert compare(_outputs([[0]], [[[0.5 - 0.049, 0.1, 0.0]]]), small, "bfloat16").passed  # the 5e-2 floor
    assert not compare(near, ref, "float32").passed  # float32 stays absolute


def test_a_failed_run_names_the_root_cause_rank_first(tmp_path: Path) -> None:
    """The launcher SIGTERMs the survivors once a rank dies: the SIGKILLed rank is the cause and comes
    first, whatever the rank numbers; then ranks that waited on it; SIGTERMed ranks last."""
    from types import SimpleNamespace

    from ppplan.executor.launch import _describe_failure

    spec = SimpleNamespace(tp=1)
    exc = SimpleNamespace(
        failures={
            0: SimpleNamespace(exitcode=-15, timestamp=1_000_002),
            1: SimpleNamespace(exitcode=-9, timestamp=1_000_001),
            2: SimpleNamespace(exitcode=-15, timestamp=1_000_001),
        }
    )
    msg = _describe_failure(exc, 3, 0, spec, tmp_path)  # type: ignore[arg-type]
    parts = msg.split("; ")
    assert parts[0] == "rank 1 (stage 1) failed: killed by SIGKILL", msg
    assert parts[1].startswith("rank 2 (stage 2) failed: killed by SIGTERM")
    assert parts[2].startswith("rank 0 (stage 0) failed: killed by SIGTERM")
    # a rank that failed on its own (error exit) precedes one that was only terminated, earlier or not
    exc = SimpleNamespace(
        failures={0: SimpleNamespace(exitcode=-15, timestamp=5), 3: SimpleNamespace(exitcode=1, timestamp=9)}
    )
    assert _describe_failure(exc, 4, 0, spec, tmp_path).startswith("rank 3 (stage 3) failed: exit status 1")  # type: ignore[arg-type]


def test_run_workload_is_bounded() -> None:
    with pytest.raises(ExecutorError, match=r"new_tokens: must be an integer in 1\.\.32,768"):
        Workload(prompt_tokens=4, new_tokens=1_000_000_000, micro_batches=1, micro_batch_size=1)
