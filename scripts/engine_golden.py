"""The engines' own argument parsers, for tests/test_engine_parsers.py. Runs in the engines' venv
(.venv-engines, see /work/shared/ENGINES.md), never in the project's environment.

    .venv-engines/bin/python scripts/engine_golden.py golden   # rewrite tests/data/engines/*.json
    .venv-engines/bin/python scripts/engine_golden.py check    # JSON cases on stdin -> results on stdout

``golden`` records every flag of ``vllm serve`` and ``sglang.launch_server`` (does it take a value,
of what type, which choices, is it deprecated); for vLLM flags whose values are checked only when the
engine config is built (``--quantization``, ``--kv-cache-dtype``, backends) the choices come from the
``Literal`` types vLLM validates them against. ``check`` parses launch argument lists with the real
parsers (vLLM: ``make_arg_parser``, the ``vllm serve`` parser; SGLang: ``prepare_server_args``),
builds vLLM's ``ParallelConfig`` for each node, and runs both engines' ``get_pp_indices`` with the
exported partition variable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import io
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "engines"
_TYPES = {"int": "int", "human_readable_int": "int", "float": "float", "human_readable_int_or_auto": "int_or_auto"}


@functools.cache
def _vllm_parser() -> argparse.ArgumentParser:
    from vllm.entrypoints.common.cli_args import (  # lazy: slow engine import
        make_arg_parser,
    )
    from vllm.utils.argparse_utils import (  # lazy: slow engine import
        FlexibleArgumentParser,
    )

    return make_arg_parser(FlexibleArgumentParser())


def _sglang_parser() -> argparse.ArgumentParser:
    from sglang.srt.server_args import ServerArgs  # lazy: slow engine import

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser


def _vllm_literal_choices() -> dict[str, list[str]]:
    from vllm.config.cache import CacheDType  # lazy: slow engine import
    from vllm.config.parallel import (  # lazy: slow engine import
        All2AllBackend,
        DataParallelBackend,
        DistributedExecutorBackend,
    )
    from vllm.model_executor.layers.quantization import (  # lazy: slow engine import
        QuantizationMethods,
    )

    return {
        "--quantization": list(typing.get_args(QuantizationMethods)),
        "--kv-cache-dtype": list(typing.get_args(CacheDType)),
        "--distributed-executor-backend": list(typing.get_args(DistributedExecutorBackend)),
        "--data-parallel-backend": list(typing.get_args(DataParallelBackend)),
        "--all2all-backend": list(typing.get_args(All2AllBackend)),
    }


def _flags(parser: argparse.ArgumentParser, extra_choices: dict[str, list[str]]) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for act in parser._actions:
        if not act.option_strings or isinstance(act, argparse._HelpAction):
            continue
        takes_value = act.nargs != 0
        tname = getattr(act.type, "__name__", None) if act.type is not None else "str"
        deprecated = "Deprecated" in type(act).__name__ or str(act.help or "").lstrip("(").startswith("Deprecated")
        for opt in act.option_strings:
            if not opt.startswith("--"):
                continue
            choices = list(act.choices) if act.choices is not None else extra_choices.get(opt)
            flags[opt] = {
                "dest": act.dest,
                "takes_value": takes_value,
                "type": _TYPES.get(str(tname), "str") if takes_value else None,
                "choices": sorted(str(c) for c in choices) if choices is not None else None,
                "deprecated": deprecated,
            }
    return dict(sorted(flags.items()))


def golden() -> None:
    """Write the golden flag tables of the installed engines."""
    OUT.mkdir(parents=True, exist_ok=True)
    for engine, parser, extra, source in (
        ("vllm", _vllm_parser(), _vllm_literal_choices(), "vllm.entrypoints.common.cli_args.make_arg_parser"),
        ("sglang", _sglang_parser(), {}, "sglang.srt.server_args.ServerArgs.add_cli_args"),
    ):
        version = importlib.metadata.version(engine)
        body = {
            "engine": engine,
            "version": version,
            "parser": source,
            "generated_by": "scripts/engine_golden.py golden",
            "flags": _flags(parser, extra),
        }
        path = OUT / f"{engine}-{version}.json"
        path.write_text(json.dumps(body, indent=1) + "\n")
        print(f"{path}: {len(body['flags'])} flags")


def _check_vllm(case: dict[str, Any]) -> dict[str, Any]:
    from vllm.config.parallel import ParallelConfig  # lazy: slow engine import
    from vllm.distributed import utils as dist_utils  # lazy: slow engine import

    parser = _vllm_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args([case["model"], *case["args"]])
    except SystemExit:
        return {"ok": False, "error": err.getvalue().strip().splitlines()[-1:]}
    parsed = {k: getattr(ns, k) for k in case.get("expect", {})}
    out: dict[str, Any] = {"ok": True, "parsed": parsed, "config_errors": _vllm_configs(ns)}
    if ns.distributed_executor_backend != "ray":
        pc = ParallelConfig(
            tensor_parallel_size=ns.tensor_parallel_size,
            pipeline_parallel_size=ns.pipeline_parallel_size,
            data_parallel_size=ns.data_parallel_size,
            enable_expert_parallel=ns.enable_expert_parallel,
            nnodes=ns.nnodes,
            node_rank=ns.node_rank,
            master_addr=ns.master_addr,
            master_port=ns.master_port,
        )
        out["world_size"] = pc.world_size * pc.data_parallel_size
        out["local_world_size"] = out["world_size"] // pc.nnodes
        # ranks are DP-major, then PP, then TP (vLLM's rank layout); this node's first rank
        out["first_rank"] = ns.node_rank * out["local_world_size"]
    out["pp_indices"] = _pp_indices(dist_utils.get_pp_indices, "VLLM_PP_LAYER_PARTITION", case)
    return out


def _vllm_configs(ns: argparse.Namespace) -> list[str]:
    """Build the configs vLLM validates these values in (the model's own config needs its files)."""
    from vllm.config.cache import CacheConfig  # lazy: slow engine import
    from vllm.config.scheduler import SchedulerConfig  # lazy: slow engine import
    from vllm.model_executor.layers.quantization import (  # lazy: slow engine import
        DEPRECATED_QUANTIZATION_METHODS,
        QUANTIZATION_METHODS,
    )

    errors = []
    builders = [
        lambda: SchedulerConfig(
            max_model_len=ns.max_model_len,
            is_encoder_decoder=False,
            max_num_batched_tokens=ns.max_num_batched_tokens,
            max_num_seqs=ns.max_num_seqs,
        ),
        lambda: CacheConfig(cache_dtype=ns.kv_cache_dtype, gpu_memory_utilization=ns.gpu_memory_utilization),
    ]
    # ModelConfig._verify_quantization's check (the rest of ModelConfig needs the model's files)
    if ns.quantization is not None and ns.quantization not in QUANTIZATION_METHODS:
        errors.append(f"quantization {ns.quantization!r} is not one of {QUANTIZATION_METHODS}")
    if ns.quantization in DEPRECATED_QUANTIZATION_METHODS:
        errors.append(f"quantization {ns.quantization!r} is deprecated")
    for build in builders:
        try:
            build()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


def _check_sglang(case: dict[str, Any]) -> dict[str, Any]:
    from sglang.srt.distributed import (  # lazy: slow engine import
        utils as dist_utils,
    )
    from sglang.srt.server_args import (  # lazy: slow engine import
        prepare_server_args,
    )

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            sa = prepare_server_args(["--model-path", case["model"], *case["args"]])
    except SystemExit:
        return {"ok": False, "error": err.getvalue().strip().splitlines()[-1:]}
    except Exception as exc:  # a value rejected after parsing
        return {"ok": False, "error": [f"{type(exc).__name__}: {exc}"]}
    parsed = {k: getattr(sa, k, None) for k in case.get("expect", {})}
    return {
        "ok": True,
        "parsed": parsed,
        "pp_indices": _pp_indices(dist_utils.get_pp_indices, "SGLANG_PP_LAYER_PARTITION", case),
    }


def _pp_indices(fn: Any, var: str, case: dict[str, Any]) -> list[list[int]] | str:
    """The engine's [start, end) layers per pipeline rank with the exported variable set."""
    env = case["env"]
    old = os.environ.get(var)
    os.environ[var] = env[var]
    try:
        pp, layers = case["pp"], case["layers"]
        return [list(fn(layers, r, pp)) for r in range(pp)]
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old


def check() -> None:
    """Parse each case of stdin's JSON list ({engine, model, args, env, pp, layers, expect})."""
    cases = json.load(sys.stdin)
    results = []
    with contextlib.redirect_stdout(sys.stderr):  # the engines log to stdout
        for case in cases:
            fn = _check_vllm if case["engine"] == "vllm" else _check_sglang
            results.append(fn(case))
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    {"golden": golden, "check": check}[sys.argv[1] if len(sys.argv) > 1 else "golden"]()
