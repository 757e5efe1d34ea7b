"""Rebuild the shipped planning-unit descriptions of the bundled presets.

``ppplan plan <preset>`` then needs neither torch nor transformers at run time. The test
``tests/test_presets.py`` checks every shipped file against a fresh meta-device build.

Usage: python scripts/build_preset_specs.py
"""

from __future__ import annotations

import json
from pathlib import Path

from ppplan.profiler.analytic import SPEC_VERSION
from ppplan.profiler.configs import list_presets, load_model_config
from ppplan.profiler.models import describe_model

OUT = Path(__file__).resolve().parent.parent / "ppplan" / "profiler" / "presets" / "specs"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for p in list_presets():
        cfg = load_model_config(p.name)
        spec = describe_model(cfg)
        body = {"config_hash": cfg.config_hash, "spec_version": SPEC_VERSION, "spec": spec.model_dump(mode="json")}
        (OUT / f"{p.name}.json").write_text(json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"{p.name}: {spec.total_params / 1e9:.3f} B params, {spec.num_layers} layers")


if __name__ == "__main__":
    main()
