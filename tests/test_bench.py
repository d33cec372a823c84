"""Each benchmark script runs end to end on a tiny setting (the real runs take minutes; BENCHMARKS.md)."""

import json
import re

import pytest
from conftest import run_script

pytestmark = pytest.mark.e2e  # every test here runs a script end to end


def results(workdir) -> dict:
    with open(workdir / "results.jsonl", encoding="utf-8") as f:
        return {r["variant"]: r for r in map(json.loads, f)}


@pytest.mark.parametrize("script, epochs", [("bench/sft_vs_trl.py", 1), ("bench/dpo_vs_trl.py", 2)])
def test_side_by_side_benchmark_measures_both_variants(tmp_path, script, epochs):
    result = run_script(script, "--tiny", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    runs = results(tmp_path)
    assert set(runs) == {"trl", "ours"}
    for run in runs.values():
        assert len(run["epoch_s"]) == epochs and all(s > 0 for s in run["epoch_s"])
        assert 0 < run["trained_tokens"] <= run["tokens"] <= run["padded_tokens"]
        assert run["peak_rss_mb"] > 100 and run["rows"] == 16
    table = [line for line in result.stdout.splitlines() if line.startswith("| trl |") or line.startswith("| ours |")]
    assert len(table) == 2 and all(re.search(r"\d+(\.\d+)?% \|", line) for line in table)  # MFU columns
    if script == "bench/sft_vs_trl.py":
        assert runs["ours"]["padded_tokens"] == runs["ours"]["tokens"]  # packed: no padding
        assert runs["ours"]["trained_tokens"] < runs["trl"]["trained_tokens"]  # assistant turns only


@pytest.mark.parametrize(
    "script, args, expect",
    [
        ("bench/batching_cpu.py", ["--long_tail", "8", "--strategies", "packed"], r'"strategy": "packed"'),
        ("bench/attention_cpu.py", ["--shape", "tiny", "--documents", "4", "--repeats", "1"], r"loss \d+\.\d+ both"),
        ("bench/cleaning_throughput.py", ["--rows", "1000"], r"every step: 1000 rows .* kept 980"),
        (
            "bench/synth_load.py",
            ["--prompts", "10", "--samples", "2", "--concurrency", "8", "--max_new_tokens", "4"],
            r'"served": 20, "rows": 20, "every_prompt_sample_once": true',
        ),
    ],
)
def test_other_benchmarks_run(tmp_path, script, args, expect):
    result = run_script(script, *args, *(["--workdir", str(tmp_path)] if script == "bench/synth_load.py" else []))
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(expect, result.stdout), result.stdout


def test_prep_benchmark_measures_ours_and_trl(tmp_path):
    result = run_script("bench/prep_vs_trl.py", "--tiny", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    runs = results(tmp_path)
    assert set(runs) == {"ours", "ours_rerun", "trl_1proc", "trl_2proc"}
    for run in runs.values():
        assert run["rows"] == 300 and run["prep_s"] > 0 and run["wall_s"] > run["prep_s"] and run["tokens"] > 0
        assert run["peak_rss_main_mb"] > 100 and run["peak_rss_mb"] >= run["peak_rss_main_mb"]
    assert runs["ours"]["tokens"] == runs["ours_rerun"]["tokens"]
    assert runs["trl_1proc"]["tokens"] == runs["trl_2proc"]["tokens"]
    table = [
        line for line in result.stdout.splitlines() if re.match(r"\| (ours|ours_rerun|trl_\dproc) \| 300 \|", line)
    ]
    assert len(table) == 4 and all(re.search(r"\| [\d,.]+ \|$", line) for line in table)  # wall s, the last column
    assert re.search(r"ours prepares [\d.]+x as fast as trl_1proc", result.stdout)


def test_preference_margins_benchmark_scores_both_ways_alike(tmp_path):
    from tests.real_tokenizers import tiny_model_folder

    model = tiny_model_folder("qwen2.5", tmp_path)
    result = run_script("bench/preference_margins.py", "--model", model, "--rows", "6")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"prompt once: 6 pairs in [\d.]+ s\nwhole sequences: 6 pairs in [\d.]+ s", result.stdout)
    assert float(re.search(r"largest margin difference (\S+)", result.stdout).group(1)) < 1e-4
