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
                 "loader/model clips/s", "data wait/step time"):  # fmt: skip
        assert re.search(rf"{re.escape(name)} {NUMBER}x", line), line
    assert "compile/eager n/a" in line  # no compile variant asked for
    report = json.loads(out.read_text())
    assert len(report["rows"]) == 9
    assert all(r["peak_mib"] and r["peak_mib"] > 0 for r in report["rows"])
    assert report["target"]["clock"] == "cpu"
    assert set(report["loader"]["cpu_ms_per_clip"]) >= {"total", "item", "decode", "transform"}
    assert 0 <= report["loop"]["wait_share"] < 1


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
    assert [name for name, _ in commands] == ["train_step.py", "eval_step.py"]
    sys.path.insert(0, str(BENCH))
    try:
        import eval_step
        import train_step
    finally:
        sys.path.remove(str(BENCH))
    scripts = {"train_step.py": train_step, "eval_step.py": eval_step}
    for name, args in commands:
        parsed = scripts[name].parse_args(args)  # argparse exits on an unknown option
        assert parsed.device == "cuda" and parsed.json is not None


def test_loader_prints_its_table_and_speedups(bench_data: Path) -> None:
    """benchmarks/loader.py on the module's 8 cached videos, 0.1 s a row."""
    stdout = run_script("loader.py", "--videos", "8", "--seconds", "0.1", "--root", bench_data)
    rows = re.findall(rf"^(cache|video) +([02]) +({NUMBER}) +({NUMBER})$", stdout, re.M)
    assert [(source, workers) for source, workers, _, _ in rows] == [
        ("cache", "0"), ("cache", "2"), ("video", "0"), ("video", "2"),
    ], stdout  # fmt: skip
    assert all(float(rate) > 0 and float(ms) > 0 for _, _, rate, ms in rows), stdout
    assert re.search(rf"crop / flip / normalise on this CPU: {NUMBER} ms/clip", stdout), stdout
    *_, cpu, wall = stdout.strip().splitlines()
    assert re.fullmatch(rf"cpu speedup: {NUMBER}", cpu), stdout
    assert re.fullmatch(rf"speedup: {NUMBER}", wall), stdout


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
