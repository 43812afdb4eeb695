"""`report.quiet()`, the one switch for silence: progress bars and stderr messages follow it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hmdbattn.cli.synthesize  # noqa: F401  (registers the command)
from hmdbattn.cli import app
from hmdbattn.data.download import byte_progress, fetch_kinetics_weights
from hmdbattn.report import err_console, progress, quiet


def synthesize(root: Path) -> tuple[str, str]:
    """`hmdbattn synthesize --json` of a tiny dataset in-process: (stdout, stderr)."""
    args = ["synthesize", "--root", str(root), "--classes", "2", "--videos-per-class", "3"]
    args += ["--seconds", "0.5", "--size", "32x24", "--fps", "5", "--workers", "0", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_inside_quiet_a_command_writes_nothing_on_stderr(tmp_path: Path) -> None:
    loud_out, loud_err = synthesize(tmp_path / "loud")
    with quiet():
        quiet_out, quiet_err = synthesize(tmp_path / "quiet")
    assert "synthetic videos" in loud_err and "6/6" in loud_err
    assert quiet_err == ""
    # stdout is untouched: the same summary apart from the root
    assert json.loads(quiet_out)["synthetic"] == json.loads(loud_out)["synthetic"]


def test_quiet_nests_and_restores_the_console() -> None:
    assert not err_console.quiet
    with quiet():
        with quiet():
            assert err_console.quiet
        assert err_console.quiet
    assert not err_console.quiet
    with pytest.raises(RuntimeError), quiet():
        raise RuntimeError("an error inside the block")
    assert not err_console.quiet


def test_every_kind_of_bar_follows_the_switch() -> None:
    with quiet():
        assert progress().disable
        with byte_progress() as bar:
            assert bar is None
    assert not progress().disable
    with byte_progress() as bar:
        assert bar is not None


def test_torchvision_weights_bar_follows_the_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.hub
    from torchvision.models.video import R2Plus1D_18_Weights

    shown: list[object] = []

    def record(self: object, **kwargs: object) -> dict:
        shown.append(kwargs["progress"])
        return {}

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(R2Plus1D_18_Weights, "get_state_dict", record)
    with quiet():
        fetch_kinetics_weights()
    fetch_kinetics_weights()
    assert shown == [False, True]
