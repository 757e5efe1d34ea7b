"""First-run paper cuts of the CLI: hand-edited plan files, numeric ranges, --version, a closed
stdout, the first line of ``ppplan run``. Every case is one line and an exit status, never a
traceback."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ppplan.api.cli import EXIT_BROKEN_PIPE, app, main
from ppplan.api.cli import run as cli_run
from ppplan.executor.spec import RankFailedError
from ppplan.partitioner.plan import Plan
from ppplan.partitioner.request import PlanRequest
from ppplan.partitioner.validate import validate_plan
from ppplan.profiler.resolve import plan_request

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """The console-script entry point (usage errors are one line there), its exit status and stderr."""
    monkeypatch.setattr(sys, "argv", ["ppplan", *args])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return int(info.value.code or 0), captured.err


def run(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args))
    # an exception other than the exit itself is what the user would see as a traceback
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    text = res.stdout + res.stderr
    assert "Traceback" not in text, text
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def plan_dict() -> dict[str, Any]:
    """A valid 4-stage plan (llama-3.1-8b, TP 1 × PP 4) as a JSON dict."""
    p = plan_request(PlanRequest(model="llama-3.1-8b", gpus="4xH100", tp=1, pp=4))
    return p.model_dump(mode="json")


def _write(tmp_path: Path, data: Any, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# --- ppplan validate -------------------------------------------------------------------------


def _edit(plan: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(plan)
    *head, last = path.split(".")
    d: Any = out
    for key in head:
        d = d[int(key)] if isinstance(d, list) else d[key]
    d[int(last) if isinstance(d, list) else last] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("schedule.cycle_ms", 0, "schedule.cycle_ms: 0.0 must be a finite number > 0"),
        ("degrees.replicas", 0, "degrees.replicas: 0 must be an integer"),
        ("stages", [], "stages: empty"),
        ("exports", {"vllm": {}}, "exports.vllm.env.VLLM_PP_LAYER_PARTITION: None"),
        ("degrees.tp", -1, "degrees.tp: -1 must be an integer"),
        pytest.param("degrees.micro_batches", 10**400, "degrees.micro_batches", id="huge-int"),
        ("workload.concurrency", 10**30, "workload.concurrency"),
        ("stages.0.memory.total_gib", float("nan"), "stages[0].memory.total_gib"),
        ("stages.1.times.busy_ms", 1e400, "stages[1].times.busy_ms"),
        ("partition", [], "partition: empty"),
        ("exports", {"vllm": {"env": "[bold]x[/]"}}, "exports.vllm.env.VLLM_PP_LAYER_PARTITION"),
    ],
)
def test_validate_reports_hand_edits_as_problems(
    tmp_path: Path, plan_dict: dict[str, Any], path: str, value: Any, needle: str
) -> None:
    """cycle_ms 0, replicas 0, stages [], exports {"vllm": {}} were tracebacks; a negative tp passed."""
    code, stdout, _ = run("validate", str(_write(tmp_path, _edit(plan_dict, path, value))))
    assert code == 1, stdout
    assert needle in stdout, stdout
    assert all(line.startswith("problem: ") for line in stdout.splitlines())


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b"{}", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe", b'{"schema_version": 1', b"null"],
    ids=["list", "empty", "deep", "not-utf8", "truncated", "null"],
)
def test_validate_refuses_a_file_that_is_not_a_plan_with_exit_2(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    code, _, stderr = run("validate", str(path))
    assert code == 2 and stderr.startswith("error: plan_file:"), stderr
    assert len(stderr.strip().splitlines()) == 1


def test_validate_reads_through_the_capped_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, stderr = run("validate", str(tmp_path))
    assert code == 2 and "is not a regular file" in stderr
    path = _write(tmp_path, {"x": "y" * 200})
    monkeypatch.setenv("PPPLAN_MAX_INPUT_BYTES", "100")
    code, _, stderr = run("validate", str(path))
    assert code == 2 and "above the 100-byte limit" in stderr


def test_validate_re_derives_a_hand_edited_cut(tmp_path: Path, plan_dict: dict[str, Any]) -> None:
    """The README's `validate` re-derives: the edited cut's stage ranges are derived and the stale
    stage entries named; what needs the profile is said, not silently skipped."""
    code, stdout, _ = run("validate", str(_write(tmp_path, plan_dict)))
    assert code == 0 and "consistent" in stdout and "re-derived:" in stdout and "need the profile" in stdout
    old = list(plan_dict["partition"])
    new = [old[0] + 1, *old[1:-1], old[-1] - 1]  # one layer moved from the last stage to the first
    code, stdout, _ = run("validate", str(_write(tmp_path, _edit(plan_dict, "partition", new))))
    assert code == 1
    flat = " ".join(stdout.split())
    assert f"partition: {new} differs from the cut the stage entries describe {old}" in flat
    bounds, first = [], 0
    for n in new:
        bounds.append(f"{first}–{first + n - 1}")
        first += n
    assert f"decoder layers {', '.join(bounds)}" in flat
    assert f"stages[0].decoder_layers: [0, {old[0] - 1}], partition says [0, {new[0] - 1}]" in flat
    # a time edited without its schedule is found by recomputing the schedule from the stages
    slow = _edit(plan_dict, "stages.3.times.busy_ms", plan_dict["stages"][3]["times"]["busy_ms"] * 10)
    code, stdout, _ = run("validate", str(_write(tmp_path, slow)))
    assert code == 1 and "schedule.cycle_ms" in stdout and "stages[3].times.busy_ms" in stdout


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0, -1, 10**400, 2**63, 1e308, float("inf"), float("nan"), -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["[bold]", "[/]", "3", "-1", "nan"]),
    st.lists(st.integers(min_value=-3, max_value=40), max_size=5),
    st.just({}),
    st.just([]),
    st.just({"vllm": {}}),
)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d[:3]):
            out += _paths(v, (*prefix, i))
    return out


def _corrupt(plan: dict[str, Any], path: tuple[Any, ...], how: str, junk: Any) -> dict[str, Any]:
    out = copy.deepcopy(plan)
    parent: Any = out
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "delete":
        del parent[key]
    elif how == "scale" and isinstance(parent[key], int | float) and not isinstance(parent[key], bool):
        try:
            parent[key] = parent[key] * junk if isinstance(junk, int | float) else -parent[key]
        except OverflowError:  # a float times 10**400
            parent[key] = junk
    else:
        parent[key] = junk
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_corruptions_of_a_plan_never_raise(plan_dict: dict[str, Any], data: st.DataObject) -> None:
    """Whatever a hand edit does to a valid plan, validation answers with problems (or refuses the
    file as not a plan), never an exception."""
    plan = plan_dict
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_paths(plan)))
        how = data.draw(st.sampled_from(["replace", "delete", "scale"]))
        plan = _corrupt(plan, path, how, data.draw(_JUNK))
    try:
        Plan.model_validate(plan)
    except ValueError:  # pydantic's ValidationError: `ppplan validate` exits 2 for such a file
        return
    problems = validate_plan(plan)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)


def test_validate_of_random_corruptions_through_the_cli(tmp_path: Path, plan_dict: dict[str, Any]) -> None:
    """The command itself: exit 0, 1 or 2 and never a traceback for a sample of corruptions."""
    paths = _paths(plan_dict)
    for i, path in enumerate(paths[:: max(1, len(paths) // 60)]):
        for junk in (0, -1, None, "[/]", float("nan"), {}, []):
            code, _, _ = run("validate", str(_write(tmp_path, _corrupt(plan_dict, path, "replace", junk), f"{i}.json")))
            assert code in (0, 1, 2)


# --- --version, a closed stdout ------------------------------------------------------------------


def test_version() -> None:
    code, stdout, _ = run("--version")
    assert code == 0 and stdout.startswith("ppplan ") and len(stdout.split()) == 2


@pytest.mark.parametrize(
    "args", [["gpus", "--json"], ["plan", "tiny-llama", "--gpus", "2xH100", "--no-save", "--export", "vllm"]]
)
def test_a_closed_stdout_ends_quietly(args: list[str]) -> None:
    """`ppplan plans export … | head` printed `error: file: Broken pipe` (or Python's exit-time
    BrokenPipeError): now nothing on stderr and the exit status of a tool killed by SIGPIPE."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write
    try:
        res = subprocess.run(
            [sys.executable, "-m", "ppplan", *args], stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120
        )
    finally:
        os.close(w)
    assert res.stderr == "" and res.returncode == EXIT_BROKEN_PIPE, (res.returncode, res.stderr)


# --- ranges on numeric options -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = plan_request(PlanRequest(model="tiny-llama", gpus="2xH100", tp=1, pp=2))
    path = tmp_path_factory.mktemp("run") / "tiny.json"
    path.write_text(p.model_dump_json())
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--new-tokens", "1000000000"], "new_tokens: Invalid value for '--new-tokens'"),
        (["--prompt-tokens", "0"], "prompt_tokens"),
        (["--micro-batch-size", "100000"], "micro_batch_size"),
        (["--timeout", "nan"], "timeout: Invalid value for '--timeout': nan must be a finite number > 0"),
        (["--timeout", "0"], "timeout"),
        (["--timeout", "1e9"], "at most 86400"),
        (["--seed", "-1"], "seed"),
        (["--nnodes", "0"], "nnodes"),
        (["--nnodes", "2", "--node-rank", "2"], "node_rank: 2 must be below --nnodes 2"),
    ],
)
def test_run_options_have_ranges(
    tiny_plan: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, stderr = run_main(capsys, monkeypatch, "run", str(tiny_plan), *args)
    assert code == 2 and needle in " ".join(stderr.split()), stderr


def test_plan_workload_beyond_the_run_bound_is_refused(tmp_path: Path, tiny_plan: Path) -> None:
    """A plan's own output_tokens (up to 10^7) was run to the end: the run's bound applies to it too."""
    data = json.loads(tiny_plan.read_text())
    data["workload"]["output_tokens"] = 10_000_000
    data["cluster"]["gpu"] = "CPU"  # the plan's own workload is used on a device of its kind
    code, _, stderr = run("run", str(_write(tmp_path, data)), "--no-check")
    assert code == 2 and "new_tokens: must be an integer in 1..32,768" in " ".join(stderr.split()), stderr


def test_run_prints_what_it_starts_before_loading_torch(tiny_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(*_a: object, **_kw: object) -> None:
        raise RankFailedError("rank 0 (stage 0) failed: boom")

    monkeypatch.setattr(cli_run, "run_plan", failing_run)
    code, _, stderr = run("run", str(tiny_plan))
    assert code == 1
    first, *rest = stderr.strip().splitlines()
    assert first.startswith("ppplan run: plan ") and "TP 1 × PP 2" in first and "2 rank(s) on cpu" in first
    assert "run failed" in " ".join(rest)


def test_run_plan_file_goes_through_the_capped_reader(tmp_path: Path) -> None:
    code, _, stderr = run("run", "/dev/zero")
    assert code == 2 and "plan" in stderr
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, _, stderr = run("run", str(deep))
    assert code == 2 and "not valid JSON" in stderr


@pytest.mark.parametrize(
    ("units", "args", "needle"),
    [
        (100_000, ["--stages", "4"], "time: 100,000 units exceed the maximum of 2,048"),
        (2048, ["--stages", "1000"], "stages: 1000 stages × 2,048² units"),
        (6, ["--stages", "0"], "stages"),
        (6, ["--stages", "2", "--time-limit", "0"], "time_limit"),
        (6, ["--stages", "2", "--time-limit", "nan"], "time_limit"),
        (6, ["--stages", "2", "--memory-limit", "-5"], "memory_limit"),
        (6, ["--stages", "2", "--memory-limit", "inf"], "memory_limit"),
    ],
)
def test_partition_options_and_problem_size_have_ranges(
    tmp_path: Path,
    units: int,
    args: list[str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10^5 units tried to allocate 75 GiB; now the size is refused before the solver starts."""
    costs = _write(tmp_path, {"time": [1.0] * units}, "costs.json")
    code, stderr = run_main(capsys, monkeypatch, "partition", "--costs", str(costs), *args)
    assert code == 2 and needle in " ".join(stderr.split()), stderr


def test_partition_costs_go_through_the_capped_reader(tmp_path: Path) -> None:
    code, _, stderr = run("partition", "--costs", str(tmp_path), "--stages", "1")
    assert code == 2 and "is not a regular file" in stderr
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, _, stderr = run("partition", "--costs", str(deep), "--stages", "1")
    assert code == 2 and "not valid JSON" in stderr


@pytest.mark.parametrize("value", ["nan", "0", "-1", "1e9"])
def test_profile_budget_has_a_range(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, stderr = run_main(capsys, monkeypatch, "profile", "tiny-llama", "--device", "cpu", "--budget-seconds", value)
    assert code == 2 and "budget_seconds" in stderr


def test_infeasible_tiny_preset_is_one_line() -> None:
    """The issue's reproduction: an IndexError inside the infeasibility explanation."""
    code, _, stderr = run("plan", "tiny-llama", "--gpus", "1xL4", "--concurrency", "1000000", "--no-save")
    assert code == 2 and stderr.startswith("error: gpus: does not fit: tiny-llama")
