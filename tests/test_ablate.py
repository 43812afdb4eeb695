"""Ablations: shipped grids and their research numbers, precedence, a tiny ablation killed and
resumed, --only, --report and the errors a user can make."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from climain import cli
from conftest import ROOT, tiny_overrides

from hmdbattn import ablate
from hmdbattn.errors import ConfigError
from hmdbattn.report import millions

CONFIGS = ROOT / "configs"
TIMING = ("clips_per_s", "clips_per_s_std")
# A command line that registers `ablate` itself, whether or not cli/__init__ imports it yet.
MAIN = "import hmdbattn.cli.ablate; from hmdbattn.cli import main; main()"

# The research's tables (seed README): label, CNN params, attention params.
RESEARCH = {
    "depth": [
        ("8 CNN blocks + 1 Cross Attention + 6 Self Attention", "31.3M", "28.6M"),
        ("8 CNN blocks + 1 Cross Attention + 2 Self Attention", "31.3M", "11.8M"),
        ("8 CNN blocks + 1 Cross Attention + 1 Self Attention", "31.3M", "7.6M"),
        ("Baseline - R(2+1)D", "31.3M", "0"),  # the research printed 31.5M: fc included
    ],
    "cnn": [
        ("8 CNN blocks + 1 Cross Attention + 1 Self Attention", "31.3M", "7.6M"),
        ("7 CNN blocks + 1 Cross Attention + 1 Self attention", "17.1M", "7.6M"),
        ("6 CNN blocks + 1 Cross Attention + 6 Self attention", "7.8M", "28.6M"),
        ("4 CNN blocks + 1 Cross Attention + 6 Self attention", "1.9M", "28.6M"),
        ("4 CNN blocks + 2 Cross Attention + 12 Self attention", "1.9M", "57.2M"),
        ("Baseline - R(2+1)D", "31.3M", "0"),
    ],
    "attention": [
        ("8 CNN blocks + 1 Cross Attention + 1 Self Attention", "31.3M", "7.6M"),
        ("8 CNN blocks + 1 Cross Attention", "31.3M", "3.4M"),
        ("8 CNN blocks + 1 Self attention", "31.3M", "4.2M"),
    ],
}

TINY_GRID = """
title = "tiny"

[[variant]]
label = "Pool baseline"
set = { model.head = "pool" }

[[variant]]
label = "1 Cross + 1 Self"
set = { model.head = "perceiver", model.cross_layers = 1, model.self_layers = 1 }
"""


def set_args(root: Path, out: Path, **extra: object) -> list[str]:
    """TINY overrides (plus `extra`; None drops a key) as --set options."""
    args = []
    for key, value in tiny_overrides(root, out, **extra).items():
        if value is None:
            continue
        args += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def write_grid(folder: Path, text: str = TINY_GRID, name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def rows_without_timing(folder: Path) -> list[dict]:
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    rows = json.loads((folder / "results.json").read_text())["rows"]
    return strip(rows)  # type: ignore[return-value]


# --------------------------------------------------------------------------- shipped grids


@pytest.mark.parametrize("name", sorted(RESEARCH))
def test_dry_run_reproduces_the_research_parameter_columns(capsys, name) -> None:
    start = time.perf_counter()
    code, out, err = cli(
        capsys, "ablate", "--grid", name, "--config", CONFIGS / "hmdb51.toml", "--dry-run", "--json"
    )
    assert code == 0, err
    assert time.perf_counter() - start < 30  # meta device: no weights, no data
    rows = json.loads(out)
    got = [
        (r["label"], millions(r["params"]["cnn"]), ablate.params_text(r["params"]["attention"]))
        for r in rows
    ]
    assert got == RESEARCH[name]
    assert all(isinstance(r["params"]["cnn"], int) for r in rows)
    assert all(isinstance(r["params"]["attention"], int) for r in rows)
    code, out, _ = cli(capsys, "ablate", "--grid", name, "--dry-run")  # the grid's own base
    assert code == 0 and out.startswith("| Architecture | CNN params | Attention params")


@pytest.mark.parametrize("config", ["hmdb51.toml", "synthetic.toml"])
def test_every_shipped_grid_resolves(config) -> None:
    grids = ablate.shipped_grids()
    assert set(grids) >= set(RESEARCH)
    for name, path in grids.items():
        grid = ablate.read_grid(path)
        ablation = ablate.load_ablation(grid, CONFIGS / config)
        assert ablation.folder.name == f"ablate-{name}"
        assert [r.variant.label for r in ablation.runs] == [v.label for v in grid.variants]
        for run in ablation.runs:
            # The variant's own settings win over the config file (synthetic has 1 block).
            for key, value in run.variant.overrides.items():
                section, _, field = key.partition(".")
                actual = getattr(getattr(run.config, section), field)
                actual = str(actual) if isinstance(actual, Path) else actual  # model.init
                assert actual == value, (name, key)
            assert run.run_dir.parent == ablation.folder


def test_find_grid_by_name_or_path(tmp_path, monkeypatch) -> None:
    assert ablate.find_grid("depth") == CONFIGS / "grids" / "depth.toml"
    path = write_grid(tmp_path)
    assert ablate.find_grid(str(path)) == path
    monkeypatch.chdir(tmp_path)  # shipped grids are found beside the package, not via cwd
    assert ablate.find_grid("cnn").name == "cnn.toml"
    with pytest.raises(ConfigError, match="no such grid file"):
        ablate.find_grid("missing/grid.toml")


# --------------------------------------------------------------------------- resolving


def test_precedence_file_then_variant_then_command_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "base.toml").write_text(
        "[model]\ncnn_blocks = 3\nlatent_dim = 64\nnum_latents = 4\n"
    )
    path = write_grid(
        tmp_path / "grids",
        'base = "base.toml"\nseeds = [0, 5]\n[[variant]]\nlabel = "A b"\n'
        "set = { model.cnn_blocks = 2, model.latent_dim = 96, model.num_latents = 6 }\n",
    )
    (tmp_path / "grids" / "base.toml").unlink(missing_ok=True)  # found one folder up
    monkeypatch.setenv("HMDBATTN_MODEL__LATENT_DIM", "48")  # environment: above the file only
    grid = ablate.read_grid(path)
    ablation = ablate.load_ablation(grid, None, ["model.num_latents=7", "train.out_dir=/x"])
    runs = ablation.runs
    assert [r.run_dir for r in runs] == [
        Path("/x/ablate-tiny/a-b-seed0"),
        Path("/x/ablate-tiny/a-b-seed5"),
    ]
    assert [r.config.train.seed for r in runs] == [0, 5]
    model = runs[0].config.model
    assert (model.cnn_blocks, model.latent_dim, model.num_latents) == (2, 96, 7)
    assert any("model.num_latents" in note for note in ablation.notes)
    with pytest.raises(ConfigError, match="seeds"):
        ablate.load_ablation(grid, None, ["train.seed=3"])


def test_grid_problems_are_reported_together(tmp_path) -> None:
    path = write_grid(
        tmp_path,
        'seeds = [1, 1]\nextra = 1\n[[variant]]\nlabel = "A"\nset = { model.cnn_block = 3 }\n'
        '[[variant]]\nlabel = "a"\nset = { train.out_dir = "x" }\ncomment = "?"\n',
    )
    with pytest.raises(ConfigError) as exc:
        ablate.read_grid(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: 6 problems")
    for part in (
        "unknown top-level key 'extra'",
        "seeds: expected a list of distinct integers",
        "variant 'A': unknown key 'model.cnn_block'; did you mean model.cnn_blocks?",
        "variant 'a': unknown key 'comment'",
        "variant 'a': train.out_dir is decided by the ablation",
        "variant 'a': same folder name 'a' as 'A'",
    ):
        assert part in message


def test_invalid_values_name_each_variant_and_source(tmp_path) -> None:
    path = write_grid(
        tmp_path,
        '[[variant]]\nlabel = "deep"\nset = { model.cnn_blocks = 9 }\n'
        '[[variant]]\nlabel = "ok"\nset = { model.cnn_blocks = 2 }\n'
        '[[variant]]\nlabel = "wide"\nset = { model.self_layers = 99 }\n',
    )
    with pytest.raises(ConfigError) as exc:
        ablate.load_ablation(ablate.read_grid(path), None, ["model.latent_dim=64"])
    message = str(exc.value)
    assert message.startswith(f"{path}: 2 problems")
    assert "variant 'deep'" in message and "variant 'wide'" in message and "'ok'" not in message
    assert "model.cnn_blocks: Input should be less than or equal to 8 (got 9) [variant set]" in (
        message
    )


# --------------------------------------------------------------------------- results


def test_seeds_are_summarised_as_mean_and_std() -> None:
    done = [
        ablate.RunResult("done", 2, 1, {"train_loss": 1.0, "val_loss": 2.0, "val_acc": 0.5}),
        ablate.RunResult("done", 2, 2, {"train_loss": 3.0, "val_loss": 2.0, "val_acc": 0.7}),
    ]
    row = {
        "label": "x",
        "status": "done",
        "params": {"cnn": 31_300_125, "attention": 0},
        "gmacs": 40.519,
        **ablate.aggregate(done),
    }
    columns, cells = ablate.table_cells([row])
    assert "Status" not in columns
    assert cells[0][:4] == ["x", "2 ± 1.414", "2 ± 0", "0.6000 ± 0.1414"]
    assert cells[0][4:] == ["31.3M", "0", "40.52", "–"]


def test_changed_model_settings_block_a_resume(tmp_path) -> None:
    path = write_grid(tmp_path, '[[variant]]\nlabel = "v"\nset = { model.cnn_blocks = 2 }\n')
    grid = ablate.read_grid(path)
    run = ablate.load_ablation(grid, None, [f"train.out_dir={tmp_path}"]).runs[0]
    assert ablate.decide(run) == ("start", None)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "last.pt").write_bytes(b"")
    (run.run_dir / "config.toml").write_text(run.config.to_toml())
    assert ablate.decide(run) == ("resume", None)
    other = ablate.load_ablation(grid, None, [f"train.out_dir={tmp_path}", "model.latent_dim=64"])
    action, error = ablate.decide(other.runs[0])
    assert action == "resume" and error is not None and "model.latent_dim" in error


# --------------------------------------------------------------------------- end to end


def test_killed_ablation_resumes_to_the_same_table(capsys, tiny_dataset, tmp_path) -> None:
    # Epochs come from the variants here (no --set train.epochs): 1 for the first, 2 for the
    # second, which is killed once its first epoch is checkpointed.
    text = TINY_GRID.replace('"pool" }', '"pool", train.epochs = 1 }')
    grid = write_grid(
        tmp_path / "grid", text.replace("self_layers = 1 }", "self_layers = 1, train.epochs = 2 }")
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["ablate", "--grid", grid]
    code, out, err = cli(capsys, *args, *set_args(tiny_dataset, whole, **{"train.epochs": None}))
    assert code == 0, err
    assert out.splitlines()[0].startswith("| Architecture | Train loss | Val loss | Val Acc |")
    assert "Status" not in out and "| Pool baseline |" in out
    folder = killed / "ablate-tiny"
    first, second = folder / "pool-baseline", folder / "1-cross-1-self"
    command = [sys.executable, "-c", MAIN, *map(str, args)]
    command += set_args(tiny_dataset, killed, **{"train.epochs": None})
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (second / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (first / "result.json").exists()
    assert not (second / "result.json").exists(), "the kill came too late to interrupt the run"
    kept = {
        f: ((first / f).stat().st_mtime_ns, (first / f).read_bytes())
        for f in ("best.pt", "metrics.jsonl")
    }
    code, out, err = cli(capsys, *command[3:])
    assert code == 0, err
    assert "resuming '1 Cross + 1 Self'" in err
    assert "training 'Pool baseline'" not in err
    assert {f: ((first / f).stat().st_mtime_ns, (first / f).read_bytes()) for f in kept} == kept
    rows = rows_without_timing(folder)
    assert [r["epochs"] for row in rows for r in row["runs"]] == [1, 2]
    assert rows == rows_without_timing(whole / "ablate-tiny")
    assert (folder / "results.md").read_text().startswith("| Architecture |")
    assert (folder / "results.csv").read_text().startswith("label,status,")


def test_only_and_report(capsys, tiny_dataset, tmp_path) -> None:
    grid = write_grid(tmp_path / "grid")
    sets = set_args(tiny_dataset, tmp_path, **{"train.epochs": 1})
    code, out, err = cli(capsys, "ablate", "--grid", grid, "--only", "pool-baseline", *sets)
    assert code == 0, err
    folder = tmp_path / "ablate-tiny"
    assert (folder / "pool-baseline" / "result.json").exists()
    assert not (folder / "1-cross-1-self").exists()
    code, out, err = cli(capsys, "ablate", "--grid", grid, "--report", "--json", *sets)
    assert code == 0, err
    pool, attn = json.loads(out)
    assert pool["status"] == "done" and 0 <= pool["val_acc"] <= 1 and pool["train_loss"] > 0
    assert pool["params"]["attention"] == 0 and pool["params"]["cnn"] > 0
    assert attn["status"] == "pending" and "val_acc" not in attn
    assert attn["params"]["attention"] > 0
    code, out, _ = cli(capsys, "ablate", "--grid", grid, "--report", *sets)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("| Status |")
    assert lines[2].endswith("| done |") and lines[3].endswith("| pending |")
    assert (folder / "results.md").read_text() == out
    assert json.loads((folder / "results.json").read_text())["rows"] == [pool, attn]


def test_cli_errors_are_one_line_without_traceback(capsys, tmp_path) -> None:
    code, _, err = cli(capsys, "ablate", "--grid", "nope", "--dry-run")
    assert code == 2 and "unknown grid; shipped grids: " in err
    assert all(name in err for name in RESEARCH) and "Traceback" not in err
    bad = write_grid(tmp_path, '[[variant]]\nlabel = "Odd one"\nset = { model.colour = 1 }\n')
    code, _, err = cli(capsys, "ablate", "--grid", bad, "--dry-run")
    assert code == 2 and "Traceback" not in err
    assert str(bad) in err and "variant 'Odd one'" in err and "model.colour" in err
    code, _, err = cli(capsys, "ablate", "--grid", "depth", "--only", "9 CNN blocks", "--dry-run")
    assert code == 1 and "no such variant" in err and "Baseline - R(2+1)D" in err
    code, _, err = cli(capsys, "ablate", "--grid", "depth", "--report", "--dry-run")
    assert code == 1 and "choose one" in err


def test_a_missing_init_checkpoint_names_the_command_that_makes_it(
    capsys, tiny_dataset, tmp_path
) -> None:
    missing = tmp_path / "nowhere" / "last.pt"
    text = (
        TINY_GRID
        + f"""
[[variant]]
label = "From pretraining"
set = {{ model.head = "perceiver", model.init = "{missing}" }}
needs = "hmdbattn pretrain --config make-it.toml"
"""
    )
    grid = write_grid(tmp_path / "grid", text)
    sets = set_args(tiny_dataset, tmp_path, **{"train.epochs": 1})
    code, _, err = cli(capsys, "ablate", "--grid", grid, *sets)
    assert code == 1
    assert f"model.init {missing} does not exist yet" in err
    assert "make it with `hmdbattn pretrain --config make-it.toml`" in err
    folder = tmp_path / "ablate-tiny"
    assert (folder / "pool-baseline" / "result.json").exists()  # the others went on
    assert (folder / "1-cross-1-self" / "result.json").exists()
    assert not (folder / "from-pretraining" / "last.pt").exists()
