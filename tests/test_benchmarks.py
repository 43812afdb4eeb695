"""Smoke tests of the benchmark scripts: each runs at a tiny size on the CPU and prints its figures.

The scripts run as a user runs them (``python benchmarks/<name>.py``, in a subprocess), on one
small cached dataset made once for the module. Sizes: 1 CNN block, 4x16x16 clips, a narrow
attention head, one timed round: seconds each. The figures themselves mean nothing at this size;
what is checked is that every section and the final ratio line come out, with numbers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
NUMBER = r"\d+(?:\.\d+)?"
# A narrow head and tiny clips: every code path, a fraction of a second a step.
TINY = [
    "--device", "cpu", "--blocks", "1", "--frames", "4", "--crop", "16", "--batch", "2",
    "--steps", "1", "--warmup", "1", "--threads", "1",
    "--set", "model.num_latents=8", "--set", "model.latent_dim=32",
    "--set", "model.latent_heads=2", "--set", "model.latent_dim_head=16",
    "--set", "model.cross_dim_head=16", "--set", "model.num_freq_bands=2",
]  # fmt: skip


def run_script(name: str, *args: str | Path, timeout: float = 120) -> str:
    """Run benchmarks/<name> with `args`; its stdout (the test fails on a non-zero exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HMDBATTN_")}
    done = subprocess.run(
        [sys.executable, str(BENCH / name), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def ratio_line(output: str) -> str:
    """The last line, which must be the ratio line."""
    last = output.strip().splitlines()[-1]
    assert last.startswith("ratios: "), f"last line is not the ratio line: {last!r}"
    return last


def table_rows(output: str) -> list[list[str]]:
    """The words of every line that starts with a head's name."""
    return [
        line.split() for line in output.splitlines() if re.match(r"(pool|hmdb51|largest) ", line)
    ]


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 320x240 videos cached at 128x171, as the benchmarks make them."""
    sys.path.insert(0, str(BENCH))
    try:
        from common import ensure_dataset
    finally:
        sys.path.remove(str(BENCH))
    return ensure_dataset(tmp_path_factory.mktemp("bench") / "data", videos=8)


@pytest.fixture(scope="module")
def train_run(bench_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("train") / "train_step.json"
    stdout = run_script(
        "train_step.py", *TINY,
        "--heads", "pool,hmdb51,largest", "--variants", "fp32,bf16,fp32-cl",
        "--target", "--target-size", "1x4x16", "--target-steps", "2",
        "--root", bench_data, "--workers", "1", "--loader-clips", "8",
        "--loader-seconds", "0.2", "--loop-steps", "2", "--json", out,
    )  # fmt: skip
    return stdout, out


@pytest.fixture(scope="module")
def eval_run(bench_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("eval") / "eval_step.json"
    stdout = run_script(
        "eval_step.py", *TINY,
        "--heads", "pool,hmdb51,largest", "--root", bench_data, "--loader-clips", "6",
        "--json", out,
    )  # fmt: skip
    return stdout, out


def test_train_step_prints_its_figures(train_run: tuple[str, Path]) -> None:
    stdout, out = train_run
    for pattern in (
        rf"hmdb51/pool step: {NUMBER} \(target <= 1\.08\) (met|MISSED)",
        rf"loader cpu ms/clip: {NUMBER} \(target < 2 ms\) (met|MISSED)",
        rf"JPEG decode alone {NUMBER}",
        rf"loader clips/s: {NUMBER} with 1 workers",
        rf"data wait: {NUMBER}% of step time \(target < 5%\) (met|MISSED)",
        rf"full/features step: {NUMBER}x faster \(target >= 20x\) (met|MISSED)",
    ):
        assert re.search(pattern, stdout), f"no {pattern!r} in:\n{stdout}"
    # The matrix: 3 heads x 3 variants, each with a peak memory figure (Linux: RSS growth).
    rows = [
        line.split() for line in stdout.splitlines() if re.match(r"(pool|hmdb51|largest) ", line)
    ]
    table = [r for r in rows if r[1] in ("fp32", "bf16", "fp32-cl")]
    assert len(table) == 9, stdout
    line = ratio_line(stdout)
    for name in ("hmdb51/pool step", "largest/pool", "bf16/fp32", "channels-last/contiguous",
                 "loader/model clips/s", "data wait/step time",
                 "full/features step"):  # fmt: skip
        assert re.search(rf"{re.escape(name)} {NUMBER}x", line), line
    assert "compile/eager n/a" in line  # no compile variant asked for
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 9
    assert all(r["peak_mib"] and r["peak_mib"] > 0 for r in report["rows"])
    assert report["target"]["clock"] == "cpu"
    assert set(report["loader"]["cpu_ms_per_clip"]) >= {"total", "batch", "decode", "transform"}
    assert 0 <= report["loop"]["wait_share"] < 1
    features = report["features"]
    assert features["head"] == "hmdb51" and features["full_ms_per_step"] > 0
    speedup = features["full_ms_per_step"] / features["features_ms_per_step"]
    assert features["speedup"] == pytest.approx(speedup, rel=1e-9)


def test_eval_step_prints_its_figures(eval_run: tuple[str, Path]) -> None:
    stdout, out = eval_run
    rows = [
        line.split() for line in stdout.splitlines() if re.match(r"(pool|hmdb51|largest) ", line)
    ]
    assert len(rows) == 3 * 2 * 2, stdout  # heads x precisions x crops
    for crops in (1, 3):
        assert re.search(rf"eval loader cpu ms/clip, {crops} crop\(s\): {NUMBER}", stdout), stdout
    line = ratio_line(stdout)
    for name in ("3-crop/1-crop", "hmdb51/pool", "largest/pool", "bf16/fp32"):
        assert re.search(rf"{re.escape(name)} {NUMBER}x", line), line
    report = json.loads(out.read_text())
    assert {r["crops"] for r in report["rows"]} == {1, 3}


def test_gpu_summary_gathers_both_reports(
    train_run: tuple[str, Path], eval_run: tuple[str, Path], tmp_path: Path
) -> None:
    """What gpu.sh does last: gpu.json and summary.txt from the two scripts' JSON."""
    for _, out in (train_run, eval_run):
        (tmp_path / out.name).write_text(out.read_text())
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_summary import write_summary
    finally:
        sys.path.remove(str(BENCH))
    figures = write_summary(tmp_path)
    assert set(figures["checks"]) == {
        "data_wait_share",
        "data_wait_under_5pct",
        "hmdb51_pool_step_ratio",
    }
    assert json.loads((tmp_path / "gpu.json").read_text())["checks"] == figures["checks"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "data wait" in summary and "train ratios: " in summary and "eval ratios: " in summary


def gpu_commands() -> list[tuple[str, list[str]]]:
    """The benchmark scripts gpu.sh runs, each with its arguments (shell variables filled in)."""
    text = (BENCH / "gpu.sh").read_text().replace("\\\n", " ")
    values = {"$BATCH": "32", "$DATA": "/data", "$WORKERS": "8", "$OUT": "/out"}
    commands = []
    for line in text.splitlines():
        match = re.search(r"benchmarks/(\w+\.py) (.*?)(?:2>&1|\|)", line)
        if match:
            args = match[2]
            for name, value in values.items():
                args = args.replace(f'"{name}', value).replace(name, value)
            commands.append((match[1], shlex.split(args.replace('"', ""))))
    return commands


def test_gpu_script_is_valid_and_passes_known_options() -> None:
    """gpu.sh cannot run here (no GPU): check its syntax and every option it passes."""
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
    commands = gpu_commands()
    assert [name for name, _ in commands] == ["train_step.py", "eval_step.py", "pretrain_step.py"]
    sys.path.insert(0, str(BENCH))
    try:
        import eval_step
        import pretrain_step
        import train_step
    finally:
        sys.path.remove(str(BENCH))
    scripts = {"train_step.py": train_step, "eval_step.py": eval_step}
    scripts["pretrain_step.py"] = pretrain_step
    for name, args in commands:
        parsed = scripts[name].parse_args(args)  # argparse exits on an unknown option
        assert parsed.device == "cuda" and parsed.json is not None


def test_loader_prints_its_table_and_speedups(bench_data: Path) -> None:
    """benchmarks/loader.py on the module's 8 videos, 0.1 s a row, preprocess in-process."""
    args = ["--videos", "8", "--seconds", "0.1", "--root", bench_data, "--workers", "0"]
    stdout = run_script("loader.py", *args)
    rows = re.findall(rf"^(cache|video|pyav) +([02]) +({NUMBER}) +({NUMBER})$", stdout, re.M)
    assert [(source, workers) for source, workers, _, _ in rows] == [
        ("cache", "0"), ("video", "0"), ("pyav", "0"), ("cache", "2"), ("video", "2"),
    ], stdout  # fmt: skip
    assert all(float(rate) > 0 and float(ms) > 0 for _, _, rate, ms in rows), stdout
    # torchcodec runs, or says in one line why it cannot (it is not a dependency)
    torchcodec = rf"^torchcodec +0 +({NUMBER} +{NUMBER}|-- +-- +unavailable: .+)$"
    assert len(re.findall(torchcodec, stdout, re.M)) == 1, stdout
    for pattern in (
        rf"^preprocess: {NUMBER} frames/s in this process \({NUMBER} CPU ms/frame",
        rf"^decode alone: {NUMBER} frames/s on one core \({NUMBER} CPU ms/frame\)",
        rf"^video / pyav floor: {NUMBER}x CPU time per clip \(target <= 1.15: (met|MISSED)\)$",
        rf"^cache CPU ms per clip: read {NUMBER}, JPEG decode {NUMBER}, the "
        rf"rest {NUMBER}$",
        rf"^crop / flip / normalise on this CPU: {NUMBER} ms/clip",
        r"^cache over the best on-the-fly source \((video|pyav|torchcodec)\), CPU time per "
        r"clip: target 10x (met|MISSED), stretch 15x (met|missed)$",
    ):
        assert re.search(pattern, stdout, re.M), f"no {pattern!r} in:\n{stdout}"
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"speedup: {NUMBER}", last), stdout
    # The cache over the best (least CPU per clip) on-the-fly row of the same clips.
    reader = {source: float(ms) for source, workers, _, ms in rows if workers == "0"}
    tc = re.search(rf"^torchcodec +0 +{NUMBER} +({NUMBER})$", stdout, re.M)
    best = min([reader["video"], reader["pyav"], *([float(tc[1])] if tc else [])])
    assert float(last.split()[1]) == pytest.approx(best / reader["cache"], rel=0.02, abs=0.06)


def test_predict_prints_cold_start_floor_and_ratio() -> None:
    """benchmarks/predict.py with a tiny model it trains itself, one round."""
    stdout = run_script("predict.py", "--tiny", "--repeats", "1", timeout=300)
    for pattern in (
        rf"trained a tiny model in {NUMBER} s",
        r"clip: 5 s 320x240 30 fps AVI, 5 window\(s\)",  # 1 s windows over 5 s
        rf"predict cold start \(process start to first result\): {NUMBER} s",
        rf"floor \(torch \+ torchvision \+ one forward of the model\): {NUMBER} s",
        rf"    forward +{NUMBER} s",
    ):
        assert re.search(pattern, stdout), f"no {pattern!r} in:\n{stdout}"
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"ratio: {NUMBER}", last), stdout
    assert float(last.split()[1]) > 0


# The pretraining rows at the tiny size, with a narrow decoder too.
PRETRAIN_TINY = [*TINY, "--set", "pretrain.decoder_dim=16", "--set", "pretrain.decoder_heads=2"]
PRETRAIN_ROWS = ["train", "video-pixels", "video-ema", "tokens"]


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("pretrain") / "pretrain_step.json"
    return run_script("pretrain_step.py", *PRETRAIN_TINY, "--json", out), out


def test_pretrain_step_prints_each_objective_against_the_train_step(
    pretrain_run: tuple[str, Path],
) -> None:
    """benchmarks/pretrain_step.py: a row per objective, each timed against the train step."""
    stdout, out = pretrain_run
    rows = table_rows(stdout)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("hmdb51", row, "fp32") for row in PRETRAIN_ROWS
    ], stdout
    for words in rows:  # ms/step, CPU ms, clips/s, peak MiB, x train: all numbers
        assert all(re.fullmatch(NUMBER, w) for w in words[3:]) and len(words) == 8, words
    assert rows[0][-1] == "1.000", stdout  # the baseline against itself
    assert re.fullmatch(
        rf"ratios: video-pixels/train {NUMBER}x, video-ema/train {NUMBER}x, "
        rf"tokens/train {NUMBER}x",
        ratio_line(stdout),
    ), stdout
    report = json.loads(out.read_text())
    assert [r["row"] for r in report["rows"]] == PRETRAIN_ROWS
    assert all(r["peak_mib"] > 0 and r["clips_per_s"] > 0 for r in report["rows"])
    assert set(report["ratios"]) == {"video-pixels/train", "video-ema/train", "tokens/train"}


def test_pretrain_step_rows_are_the_pretrain_configs_objectives() -> None:
    """Each row runs its objective with configs/hmdb51-pretrain.toml's optimiser."""
    sys.path.insert(0, str(BENCH))
    try:
        import pretrain_step
        from common import Size
    finally:
        sys.path.remove(str(BENCH))
    size = Size(8, 16, 112, 32)
    configs = {row: pretrain_step.row_config("hmdb51", row, size, {}) for row in PRETRAIN_ROWS}
    objectives = {row: (c.pretrain.mode, c.pretrain.target) for row, c in configs.items()}
    assert objectives["video-pixels"] == ("video", "pixels")
    assert objectives["video-ema"] == ("video", "ema")
    assert objectives["tokens"][0] == "tokens"
    for c in configs.values():
        assert (c.train.optimizer, c.train.grad_clip, c.data.batch_size) == ("adamw", 1.0, 32)
        assert (c.model.cnn_blocks, c.data.crop_size, c.model.pretrained) == (8, 112, False)
    assert configs["video-ema"].pretrain.patch_size == 16  # the stride at 8 blocks


def test_pretrain_step_refuses_a_crop_the_cnn_stride_does_not_divide() -> None:
    """A crop the token grid cannot take: one line naming it, no traceback."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "pretrain_step.py"), "--device", "cpu", "--crop", "56"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip() == (
        "--crop 56: pretraining needs a multiple of the CNN's spatial stride 16 at 8 blocks, "
        "e.g. 64"
    ), done.stderr


def test_gpu_summary_gathers_the_pretrain_rows(
    pretrain_run: tuple[str, Path], tmp_path: Path
) -> None:
    """summary.txt has a line per pretraining row and the pretraining ratios."""
    (tmp_path / "pretrain_step.json").write_text(pretrain_run[1].read_text())
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_summary import write_summary
    finally:
        sys.path.remove(str(BENCH))
    figures = write_summary(tmp_path)
    assert figures["pretrain_step"]["ratios"].keys() >= {"tokens/train"}
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    rows = [line.split()[:4] for line in lines if line.startswith("pretrain hmdb51 ")]
    assert [r[2] for r in rows] == PRETRAIN_ROWS, lines
    ratios = next(line for line in lines if line.startswith("pretrain ratios: "))
    assert re.fullmatch(
        rf"pretrain ratios: video-pixels/train {NUMBER}x, video-ema/train {NUMBER}x, "
        rf"tokens/train {NUMBER}x",
        ratios,
    ), ratios


def test_export_prints_latency_cold_start_and_ratios() -> None:
    """benchmarks/export.py at the tiny size, one head, one round."""
    stdout = run_script("export.py", "--tiny", "--heads", "pool", "--repeats", "1", timeout=300)
    for pattern in (
        rf"== pool: 1 blocks, 4x16x16, 51 classes; ONNX {NUMBER} MiB, exported in {NUMBER} s",
        *(rf"{r} +batch {b}: +{NUMBER} ms/clip wall" for r in ("PyTorch", "ONNX Runtime")
          for b in (1, 4)),
        rf"predict --checkpoint best.pt +{NUMBER} s",
        rf"predict --model best.onnx +{NUMBER} s",
    ):  # fmt: skip
        assert re.search(pattern, stdout), f"no {pattern!r} in:\n{stdout}"
    line = ratio_line(stdout)
    for name in ("pool latency torch/onnx b1", "pool latency torch/onnx b4",
                 "pool cold start checkpoint/onnx"):  # fmt: skip
        assert re.search(rf"{re.escape(name)} {NUMBER}x", line), line
