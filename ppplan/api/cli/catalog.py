"""``ppplan models`` and ``ppplan gpus``: the bundled presets and the GPU catalog."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ppplan.api.cli.common import console, user_errors
from ppplan.core.gpus import list_gpus
from ppplan.profiler.analytic import model_spec
from ppplan.profiler.configs import list_presets

__all__ = ["commands"]

commands = typer.Typer()


@commands.command()
@user_errors
def models(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the bundled model presets."""
    rows: list[dict[str, Any]] = []
    for p in list_presets():
        s = model_spec(p.name)
        rows.append(
            {
                "name": p.name,
                "model_type": s.model_type,
                "layers": s.num_layers,
                "params": s.total_params,
                "active_params": s.active_params,
                "published_params": p.published_params,
                "hf_repo": p.hf_repo,
                "attention": sorted({u.attention for u in s.decoder_units}),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    t = Table(title="bundled presets (configs only, no weights)")
    for c in ("name", "type", "layers", "params", "active", "published", "attention", "repo"):
        t.add_column(c, justify="right" if c in ("layers", "params", "active", "published") else "left")
    for r in rows:
        pub = f"{r['published_params'] / 1e9:.1f}B" if r["published_params"] else "-"
        t.add_row(
            r["name"],
            r["model_type"],
            str(r["layers"]),
            f"{r['params'] / 1e9:.2f}B",
            f"{r['active_params'] / 1e9:.2f}B",
            pub,
            ",".join(r["attention"]),
            r["hf_repo"] or "-",
        )
    console.print(t)


@commands.command()
@user_errors
def gpus(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the GPU catalog (vendor datasheet figures)."""
    cat = list_gpus()
    if as_json:
        print(json.dumps([g.model_dump() for g in cat], indent=1))
        return
    t = Table(title="GPU catalog (dense peaks; link bandwidth per direction)")
    for c in ("name", "HBM GiB", "HBM TB/s", "bf16 TFLOP/s", "fp8 TFLOP/s", "intra GB/s", "inter GB/s", "aliases"):
        t.add_column(c, justify="left" if c in ("name", "aliases") else "right")
    for g in cat:
        fp8 = g.flops.get("fp8")
        t.add_row(
            g.name,
            f"{g.hbm_gib:.0f}",
            f"{g.hbm_bw / 1e12:.2f}",
            f"{g.flops['bf16'] / 1e12:.0f}",
            f"{fp8 / 1e12:.0f}" if fp8 else "-",
            f"{g.nvlink_bw / 1e9:.0f}",
            f"{g.network_bw / 1e9:.1f}",
            ", ".join(g.aliases),
        )
    console.print(t)
