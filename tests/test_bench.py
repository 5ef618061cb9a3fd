"""`gorl bench`: a 2 methods x 1 task x 2 seeds matrix on the toy task writes one results file, a
table and a figure, and a second call skips the finished runs."""

import json
import subprocess
import sys

from tests.conftest import CONF, ROOT

TINY = ["--model.encoder.critic_hidden", "[32,32]", "--model.encoder.actor_hidden", "[16,16]", "--model.encoder.unroll", "8",
        "--model.encoder.epochs", "2", "--model.encoder.minibatch_size", "64", "--model.env.num_envs", "16",
        "--model.env.eval_envs", "8", "--model.loop.eval_max_steps", "10", "--model.refinement.epochs", "2",
        "--model.refinement.batch_size", "128"]


def _bench(out, *extra):
    cmd = [sys.executable, "-m", "gorl", "bench", "--methods", "ppo", "gorl-flow", "--tasks", "toy-bandit", "--seeds", "0", "1",
           "--budget", "384", "--eval-every", "128", "--decoder-data", "1.0", "--base", str(CONF / "smoke.yaml"),
           "--out", str(out), *extra, "--override", *TINY]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_bench_matrix_writes_results_table_and_figure_and_resumes(tmp_path):
    res = _bench(tmp_path, "--jobs", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    runs = {(r["method"], r["task"], r["seed"]) for r in results["runs"]}
    assert runs == {(m, "toy-bandit", s) for m in ("ppo", "gorl-flow") for s in (0, 1)}
    gorl = [r for r in results["runs"] if r["method"] == "gorl-flow"]
    assert all(r["decoder_data_frames"] >= 2 * 384 for r in gorl)  # two refinements, data on top of the budget
    assert all(r["curve"] and r["curve"][-1][0] >= 384 for r in results["runs"])
    table = (tmp_path / "results.md").read_text()
    assert "| toy-bandit | ppo |" in table and "| toy-bandit | gorl-flow |" in table
    assert (tmp_path / "figure.png").stat().st_size > 1000
    again = _bench(tmp_path)
    assert again.returncode == 0 and again.stdout.count("done already") == 4


def test_bench_rejects_unknown_method_and_task(tmp_path):
    for args, expected in ((["--methods", "nope"], "unknown method 'nope'"), (["--tasks", "cheetah-fly"], "unknown task 'cheetah-fly'")):
        res = subprocess.run([sys.executable, "-m", "gorl", "bench", *args, "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert res.returncode != 0 and expected in res.stderr.strip().splitlines()[-1]
