"""Materialise a stage's modules from the meta device: seeded random weights or a safetensors file.

Seeded weights are a pure function of (global seed, canonical parameter name): each tensor is drawn
on the CPU in float32 from its own generator, so a rank holding ``model.layers.3`` builds exactly
the tensors the unsplit reference builds for it, whatever else the rank holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ppplan.executor.spec import ExecutorError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["canonical_names", "materialise", "param_seed", "seeded_tensor", "stage_param_names"]


def param_seed(seed: int, name: str) -> int:
    """The generator seed of parameter ``name`` under global ``seed`` (63-bit, stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seeded_tensor(seed: int, name: str, shape: Sequence[int], std: float, kind: str) -> torch.Tensor:
    """A float32 CPU tensor for parameter ``name``.

    Args:
        seed: global seed of the run.
        name: canonical (first) qualified parameter name, e.g. ``model.layers.0.mlp.up_proj.weight``.
        shape: tensor shape.
        std: standard deviation of matrices (the config's ``initializer_range``).
        kind: ``"matrix"`` (normal(0, std)), ``"norm"`` (1 + normal(0, std): non-trivial scales) or
            ``"bias"`` (normal(0, std)).
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(param_seed(seed, name))
    t = torch.empty(tuple(shape), dtype=torch.float32)
    t.normal_(0.0, std, generator=g)
    if kind == "norm":
        t.add_(1.0)
    return t


def canonical_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) → its first qualified name (tied weights share the name of their first use)."""
    return {id(p): n for n, p in model.named_parameters()}


def _owners(model: nn.Module, module_names: Iterable[str]) -> list[tuple[nn.Module, str, str, nn.Parameter]]:
    """(owner module, attribute, full name, parameter) of every parameter under ``module_names``."""
    mods = dict(model.named_modules())
    out = []
    for mname in module_names:
        if mname not in mods:
            raise ExecutorError(
                "plan.stages.modules",
                rule=f"{mname!r} is not a module of {type(model).__name__} "
                "(the plan was made for another model or transformers version)",
            )
        for sub_name, sub in mods[mname].named_modules(prefix=mname):
            for leaf, p in sub.named_parameters(recurse=False, remove_duplicate=False):
                out.append((sub, leaf, f"{sub_name}.{leaf}", p))
    return out


def stage_param_names(model: nn.Module, module_names: Iterable[str]) -> list[str]:
    """Canonical names of the parameters a stage holding ``module_names`` must load."""
    canon = canonical_names(model)
    return sorted({canon[id(p)] for _, _, _, p in _owners(model, module_names)})


def _kind(owner: nn.Module, leaf: str, p: nn.Parameter) -> str:
    if p.dim() >= 2:
        return "matrix"
    if leaf == "bias":
        return "bias"
    return "norm" if "norm" in type(owner).__name__.lower() else "bias"


def materialise(
    model: nn.Module,
    module_names: Sequence[str],
    *,
    seed: int,
    std: float,
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: Path | None = None,
) -> int:
    """Give the parameters under ``module_names`` real storage on ``device``; the rest stay on meta.

    Args:
        model: the model built on the meta device.
        module_names: the stage's modules (plan contract), e.g. ``["model.layers.2", "model.norm"]``.
        seed: global seed for random weights (ignored with ``checkpoint``).
        std: standard deviation of random matrices.
        device: where the stage runs.
        dtype: parameter dtype on ``device``.
        checkpoint: a ``.safetensors`` file or a folder of them; only the stage's tensors are read.

    Returns:
        Bytes of parameters materialised (shared tensors counted once).

    Raises:
        ExecutorError: a module not in the model, a tensor missing from the checkpoint or with
            another shape.
    """
    canon = canonical_names(model)
    owners = _owners(model, module_names)
    needed = sorted({canon[id(p)] for *_, p in owners})
    loaded = _read_checkpoint(checkpoint, needed, model) if checkpoint is not None else {}
    made: dict[str, nn.Parameter] = {}
    nbytes = 0
    for owner, leaf, _full, p in owners:
        name = canon[id(p)]
        if name not in made:
            if checkpoint is not None:
                t = loaded[name]
                if tuple(t.shape) != tuple(p.shape):
                    raise ExecutorError(
                        "checkpoint",
                        rule=f"tensor {name!r} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}",
                    )
            else:
                t = seeded_tensor(seed, name, p.shape, std, _kind(owner, leaf, p))
            made[name] = nn.Parameter(t.to(device=device, dtype=dtype), requires_grad=False)
            nbytes += made[name].numel() * made[name].element_size()
        setattr(owner, leaf, made[name])
    # buffers (e.g. rotary inv_freq) are recomputed by the stage runtime, not loaded
    return nbytes


def _checkpoint_files(checkpoint: Path) -> list[Path]:
    if checkpoint.is_dir():
        files = sorted(checkpoint.glob("*.safetensors"))
        if not files:
            raise ExecutorError("checkpoint", rule=f"folder {str(checkpoint)!r} holds no *.safetensors file")
        return files
    if not checkpoint.is_file():
        raise ExecutorError("checkpoint", rule=f"{str(checkpoint)!r} is neither a .safetensors file nor a folder")
    return [checkpoint]


def _read_checkpoint(checkpoint: Path, names: list[str], model: nn.Module) -> dict[str, torch.Tensor]:
    """Read only ``names`` (plus tied aliases) from the checkpoint, key by key."""
    from safetensors import safe_open  # lazy: only a checkpoint run needs safetensors

    tied_alias = {}
    causal_lm = cast("PreTrainedModel", model)  # built by build_meta_model
    out_emb, in_emb = causal_lm.get_output_embeddings(), causal_lm.get_input_embeddings()
    if out_emb is not None and out_emb.weight is in_emb.weight:
        # a checkpoint of a tied model may store only one of the two names
        mods = {id(m): n for n, m in model.named_modules()}
        tied_alias[f"{mods[id(in_emb)]}.weight"] = f"{mods[id(out_emb)]}.weight"
    want = set(names)
    out: dict[str, torch.Tensor] = {}
    for f in _checkpoint_files(checkpoint):
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            keys = set(fh.keys())
            for name in list(want):
                key = name if name in keys else tied_alias.get(name)
                if key is not None and key in keys:
                    out[name] = fh.get_tensor(key)
                    want.discard(name)
        if not want:
            break
    if want:
        missing = sorted(want)
        raise ExecutorError(
            "checkpoint",
            rule=f"{str(checkpoint)!r} lacks {len(missing)} tensor(s) this stage needs, e.g. {missing[:3]} "
            "(keys must use the model's own parameter names)",
        )
    return out
