"""One size cap for every user file, checked before reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppplan.core.errors import PpplanError
from ppplan.profiler.files import MAX_INPUT_ENV, max_input_bytes, read_input_text


def test_reads_a_small_file(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text('{"a": 1}')
    assert read_input_text(f, "costs") == '{"a": 1}'


def test_refuses_devices_and_folders(tmp_path: Path) -> None:
    with pytest.raises(PpplanError, match="not a regular file") as info:
        read_input_text("/dev/zero", "profile")
    assert info.value.field == "profile" and info.value.value == "/dev/zero"
    with pytest.raises(PpplanError, match="not a regular file"):
        read_input_text(tmp_path, "profile")
    with pytest.raises(PpplanError, match="cannot read"):
        read_input_text(tmp_path / "missing.json", "profile")


def test_refuses_a_file_above_the_cap_without_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "big.json"
    with f.open("wb") as fh:  # sparse: 5 GB on paper, nothing on disk
        fh.truncate(5 * 10**9)
    with pytest.raises(PpplanError, match=r"5,000,000,000 bytes, above the 67,108,864-byte limit"):
        read_input_text(f, "profile")
    monkeypatch.setenv(MAX_INPUT_ENV, "10")
    small = tmp_path / "s.json"
    small.write_text("0123456789ab")
    with pytest.raises(PpplanError, match="above the 10-byte limit"):
        read_input_text(small, "plan")


def test_cap_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_INPUT_ENV, "lots")
    with pytest.raises(PpplanError, match=MAX_INPUT_ENV):
        max_input_bytes()


def test_refuses_binary(tmp_path: Path) -> None:
    f = tmp_path / "b.json"
    f.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PpplanError, match="not UTF-8"):
        read_input_text(f, "config")


def test_profile_and_config_readers_use_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppplan.core.profile import ProfileError
    from ppplan.profiler.configs import ModelConfigError, load_model_config
    from ppplan.profiler.profile_file import load_profile

    src = Path(__file__).resolve().parent.parent / "ppplan" / "profiler" / "presets" / "tiny-llama.json"
    cfg = tmp_path / "config.json"
    cfg.write_text(src.read_text())
    assert load_model_config(str(cfg)).raw["model_type"] == "llama"
    monkeypatch.setenv(MAX_INPUT_ENV, "100")
    with pytest.raises(ModelConfigError, match=f"above the 100-byte limit \\({MAX_INPUT_ENV}\\)"):
        load_model_config(str(cfg))
    with pytest.raises(ModelConfigError, match="above the 100-byte limit"):
        load_model_config(str(tmp_path))  # a folder: its config.json
    with pytest.raises(ProfileError, match="above the 100-byte limit"):
        load_profile(cfg)
    assert load_model_config("tiny-llama").name == "tiny-llama"  # package data is not a user file
