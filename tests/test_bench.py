"""`gorl bench`: a 2 methods x 1 task x 2 seeds matrix on the toy task writes one results file, a
table and a figure, and a second call skips the finished runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import CONF, ROOT

TINY = ["--model.encoder.critic_hidden", "[32,32]", "--model.encoder.actor_hidden", "[16,16]", "--model.encoder.unroll", "8",
        "--model.encoder.epochs", "2", "--model.encoder.minibatch_size", "64", "--model.env.num_envs", "16",
        "--model.env.eval_envs", "8", "--model.loop.eval_max_steps", "10", "--model.refinement.steps", "4", "--model.refinement.val_every", "2",
        "--model.refinement.batch_size", "128"]


def _bench_args(out, args, override=()):
    cmd = [sys.executable, "-m", "gorl", "bench", "--tasks", "toy-bandit", "--decoder-data", "1.0", "--base", str(CONF / "smoke.yaml"),
           "--out", str(out), *args, "--override", *TINY, *override]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _bench(out, *extra):
    return _bench_args(out, ["--methods", "ppo", "gorl-flow", "--seeds", "0", "1", "--budget", "384", "--eval-every", "128", *extra])


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


def test_an_interrupted_run_resumes_from_its_checkpoint_and_keeps_its_curve(tmp_path):
    """Kill a bench run's `gorl fit` mid-run; the next `gorl bench` resumes it from last.ckpt and the
    results join the killed part's curve (up to the checkpoint) with the resumed part's."""
    args = ["--methods", "ppo", "--seeds", "0", "--budget", "1024", "--eval-every", "128"]
    extra = ["--checkpoint.every_frames", "128"]
    ref = _bench_args(tmp_path / "ref", args, extra)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "ref" / "ppo_toy-bandit" / "seed0"
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())["runs"][0]["curve"]
    cmd = [a.replace(str(tmp_path / "ref"), str(tmp_path / "cut")) for a in json.loads((run / "done.json").read_text())["command"]]

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if "[gorl] stage 0 | frames 512" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    cut = tmp_path / "cut" / "ppo_toy-bandit" / "seed0"
    assert not (cut / "done.json").exists() and (cut / "checkpoints" / "last.ckpt").exists()

    again = _bench_args(tmp_path / "cut", args, extra)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    got = json.loads((tmp_path / "cut" / "results.json").read_text())["runs"][0]
    (upto,) = got["resumed_from"]
    frames = [f for f, _ in got["curve"]]
    assert frames == sorted(set(frames)) and frames[-1] == 1024 and 384 <= upto < 1024
    # The killed part ran with the same seed as the reference, so its points are the reference's.
    assert [p for p in got["curve"] if p[0] <= upto] == [p for p in reference if p[0] <= upto]
    assert (cut / "metrics.part0.csv").exists()
    # The analysis readers (the notebooks, the bench figure) see the same joined curve.
    from gorl.analysis import eval_points, load_metrics

    xs, ys = eval_points(load_metrics(cut))
    assert [(float(x), float(y)) for x, y in zip(xs, ys)] == [(float(f), float(r)) for f, r in got["curve"]]


def test_every_named_method_resolves_to_a_valid_config():
    """A recipe whose overrides do not parse (a renamed key, a missing encoder file) fails here, not
    an hour into a matrix."""
    import contextlib
    import io

    import pytest

    from gorl.bench import METHODS, run_args
    from gorl.cli import main

    for name, method in METHODS.items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(CONF / "bench.yaml"), *run_args(method, "cheetah-run", 1e6, 0.1, 1e5), "--print_config"])
        assert exit_info.value.code in (0, None), name
        assert "task: cheetah-run" in buf.getvalue(), name


def test_study_presets_resolve_and_run_a_few_iterations(tmp_path, capsys):
    """Every call of the study presets (and the schedule check beside them) names known methods and parses; each method's run resolves
    through the CLI; and the study preset really runs (a tiny budget, refits of 4 steps)."""
    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import learning

    from gorl import bench
    from gorl.cli import main as gorl_main

    for name in ("study", "study-hopper", "boundary", "schedule"):
        preset = learning.PRESETS[name]
        for call in preset if isinstance(preset[0], list) else [preset]:
            args = bench.parser().parse_args(call)
            assert name == "schedule" or (args.stages and abs(sum(args.stages) - 1) < 1e-6)
            for method in args.methods:
                _, recipe = bench.method_from_arg(method)
                run = bench.run_args(recipe, args.tasks[0], args.budget, args.decoder_data, args.eval_every,
                                     tuple(args.stages) if args.stages else None)
                with pytest.raises(SystemExit) as done:
                    gorl_main(["fit", "--config", str(CONF / "bench.yaml"), *run, *args.override, "--print_config"])
                assert done.value.code in (None, 0), (name, method)
                capsys.readouterr()
    # The paper-scale presets: whole recipes with the GPU layers, each resolving through the CLI, seed 0 of every method first.
    for name in ("paper-hopper", "paper-hopper-wide"):
        args = bench.parser().parse_args(learning.PRESETS[name])
        assert args.seed_major and [r.split("=")[0] for r in args.recipes] == ["gorl-fm", "ppo", "gorl-diffusion"]
        for arg in args.recipes:
            _, recipe = bench.recipe_from_arg(arg.replace("=conf/", f"={CONF}/"), [str(ROOT / layer) for layer in args.layers])
            assert bench.recipe_task(recipe.recipe) == "hopper-stand" and sum(bench.recipe_stages(recipe.recipe)) == 180e6
            with pytest.raises(SystemExit) as done:
                gorl_main(["fit", *bench.run_args(recipe, "", 0, 0, 0), "--print_config"])
            assert done.value.code in (None, 0), (name, arg)
            printed = capsys.readouterr().out
            envs = 16384 if name.endswith("wide") else 2048
            assert "backend: mjx" in printed and "device: cuda" in printed and f"num_envs: {envs}" in printed, printed[printed.find("  env:"):][:300]
    # --archive too, or the tiny run would join the real study's archive in benchmarks/logs/.
    cmd = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "study", "--methods", "gorl-diffusion-cleanrl", "--seeds", "0",
           "--budget", "12288", "--eval-every", "1e9", "--jobs", "1", "--out", str(tmp_path), "--archive", str(tmp_path / "archive"),
           "--override", "--model.env.eval_envs", "2", "--model.loop.eval_max_steps", "20", "--model.refinement.steps", "4",
           "--model.encoder.epochs", "1"]
    # One torch thread, as `gorl bench --jobs N>1` gives each run: with --jobs 1 the run gets a
    # thread per core, and on cores shared with other work its updates slowed down many times over
    # (the update threads wait for each other); what this test runs is the preset, not the threading.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    log = (tmp_path / "gorl-diffusion-cleanrl_cheetah-run" / "seed0" / "gorl.log").read_text()
    assert log.count("starts at eval return") == 2 and "| stage | initial | best | final |" in log
    assert "| cheetah-run | gorl-diffusion-cleanrl | 2 |" in (tmp_path / "results.md").read_text()


def test_an_archive_carries_finished_and_unfinished_runs_to_a_fresh_out_and_refuses_other_settings(tmp_path):
    """`--archive` is how a matrix longer than one session continues on a fresh clone: finished runs
    come back as done, an unfinished one (archived by `--snapshot` with its checkpoint) resumes, and
    an archived run made with other settings stops the matrix with one line instead of joining it."""
    import shutil

    args = ["--methods", "ppo", "--seeds", "0", "--budget", "384", "--eval-every", "128"]
    first = _bench_args(tmp_path / "a", [*args, "--archive", str(tmp_path / "arch")])
    assert first.returncode == 0, first.stderr[-3000:]
    kept = tmp_path / "arch" / "ppo_toy-bandit" / "seed0"
    assert {"done.json", "metrics.csv", "gorl.log", "config.yaml", "signature.json"} <= {p.name for p in kept.iterdir()}
    assert not (kept / "checkpoints").exists()  # a finished run's record is small: no checkpoint
    final = json.loads((tmp_path / "a" / "results.json").read_text())["runs"][0]["final_return"]

    fresh = _bench_args(tmp_path / "b", [*args, "--archive", str(tmp_path / "arch")])
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "restored from" in fresh.stdout and "done already" in fresh.stdout
    assert json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]["final_return"] == final

    other = _bench_args(tmp_path / "c", ["--methods", "ppo", "--seeds", "0", "--budget", "512", "--eval-every", "128",
                                         "--archive", str(tmp_path / "arch")])
    assert other.returncode != 0 and "made with other settings" in other.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "c" / "ppo_toy-bandit").exists()

    # A run stopped between its plan's end and its done.json (its last checkpoint is the end): the
    # snapshot archives it as unfinished, and a later call records it as finished without training.
    shutil.copytree(tmp_path / "a", tmp_path / "d")
    (tmp_path / "d" / "ppo_toy-bandit" / "seed0" / "done.json").unlink()
    assert (tmp_path / "d" / "ppo_toy-bandit" / "seed0" / "checkpoints" / "last.ckpt").is_file()
    # ... and killed: its part never wrote its end line, so the snapshot records its time instead.
    log = tmp_path / "d" / "ppo_toy-bandit" / "seed0" / "gorl.log"
    log.write_text("".join(line for line in log.read_text().splitlines(True) if not line.startswith("# part ended")))
    snap = _bench_args(tmp_path / "d", [*args, "--archive", str(tmp_path / "arch2"), "--snapshot"])
    assert snap.returncode == 0 and "archived to" in snap.stdout, snap.stderr[-3000:]
    assert (tmp_path / "arch2" / "ppo_toy-bandit" / "seed0" / "checkpoints" / "last.ckpt").is_file()
    assert "# part stopped" in (tmp_path / "arch2" / "ppo_toy-bandit" / "seed0" / "gorl.log").read_text()
    resumed = _bench_args(tmp_path / "e", [*args, "--archive", str(tmp_path / "arch2")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "unfinished, from its last checkpoint" in resumed.stdout and "its last checkpoint is the end of its plan" in resumed.stdout
    assert "resuming from" not in resumed.stdout
    assert json.loads((tmp_path / "e" / "results.json").read_text())["runs"][0]["final_return"] == final
    # Finished now, the archive holds its record and no longer a checkpoint.
    assert (tmp_path / "arch2" / "ppo_toy-bandit" / "seed0" / "done.json").exists()
    assert not (tmp_path / "arch2" / "ppo_toy-bandit" / "seed0" / "checkpoints").exists()
    # Its wall time is its one part's, recorded by the snapshot from its last checkpoint (no part ran after it).
    done = json.loads((tmp_path / "arch2" / "ppo_toy-bandit" / "seed0" / "done.json").read_text())
    assert len(done["wall_parts_s"]) == 1 and done["wall_parts_missing"] == 0
    assert done["wall_s"] == sum(done["wall_parts_s"]) and done["wall_parts_s"][0] > 0


def test_a_single_stage_run_is_cut_at_the_gorl_stage_boundaries_for_the_per_stage_table():
    """PPO's rows in the per-stage table cover the frames GoRL spends on each stage: a window ends
    with the first evaluation at or past the boundary, as a GoRL stage does."""
    from gorl.bench import stage_table, window_records

    curve = [(0.0, 0.0), (100_352.0, 10.0), (200_704.0, 30.0), (301_056.0, 20.0), (401_408.0, 25.0)]
    got = window_records(curve, [199_999.0, 300_000.0])
    assert [(w["best"], w["final"]) for w in got] == [(30.0, 30.0), (20.0, 20.0), (25.0, 25.0)]
    assert all(w["initial"] is None for w in got)
    table = stage_table({("ppo", "toy"): [{"curve": curve, "stages": [{"stage": 0}]}]}, [199_999.0, 300_000.0])
    assert "| toy | ppo | frames 0–0.2M | - | 30.0 | 30.0 | - |" in table
    assert stage_table({("ppo", "toy"): [{"curve": curve, "stages": [{"stage": 0}]}]}) == ""  # no GoRL beside it: no windows


def test_a_matrix_of_whole_recipes_stops_at_its_time_limit_and_continues_from_the_archive(tmp_path):
    """--recipes runs whole configs (their own plan and task) with --layers on top; --stop-after
    stops the running fit as Ctrl-C would (checkpoint, closing line), archives every run's state,
    says where each stands and exits 3; the same command again resumes from the archive."""
    recipe = tmp_path / "long.yaml"
    recipe.write_text(f"defaults: [{CONF / 'smoke.yaml'}]\nmodel:\n  loop:\n    stages: [1.0e7]\n    eval_every: 256\n")
    layer = tmp_path / "layer.yaml"
    layer.write_text("checkpoint:\n  every_frames: 128\ncurves: false\n")
    archive, cmd = tmp_path / "archive", None

    def bench(out: str, minutes: str):
        nonlocal cmd
        cmd = [sys.executable, "-m", "gorl", "bench", "--recipes", f"long={recipe}", "--layers", str(layer), "--seeds", "0",
               "--out", str(tmp_path / out), "--archive", str(archive), "--stop-after", minutes]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)

    first = bench("machine1", "0.3")  # long enough for the fit to start training and checkpoint
    assert first.returncode == 3, first.stdout[-2000:] + first.stderr[-2000:]
    run = archive / "long_toy-bandit" / "seed0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and "stopped at the --stop-after limit" in (run / "gorl.log").read_text()
    status = (archive / "status.md").read_text()
    assert "| long | toy-bandit | 0 | unfinished |" in status
    frames = float(status.split("| long | toy-bandit | 0 | unfinished | ")[1].split(" |")[0].replace(",", ""))
    assert frames > 0
    # Another machine, a fresh --out: the run continues from the archived checkpoint.
    second = bench("machine2", "0.15")
    assert second.returncode == 3 and "restored from" in second.stdout and "resuming from" in second.stdout, second.stdout[-2000:]
    later = float((archive / "status.md").read_text().split("| long | toy-bandit | 0 | unfinished | ")[1].split(" |")[0].replace(",", ""))
    assert later >= frames  # a second part stopped before its first row adds none
    assert json.loads((run / "signature.json").read_text())[:2] == ["--config", str(recipe)]


def test_speed_settings_are_not_part_of_an_archived_runs_identity():
    """A later device command may switch CUDA graphs or evaluation lanes on or off (its GPU check
    decides): the archived run continues rather than being refused as made with other settings."""
    from gorl.bench import Method, identity_overrides, parser, run_signature

    plain = parser().parse_args(["--recipes", "x=y.yaml", "--override", "--model.encoder.lr", "1e-3"])
    fast = parser().parse_args(["--recipes", "x=y.yaml", "--override", "--model.speed.step_graphs", "true", "--model.encoder.lr", "1e-3",
                                "--model.loop.eval_lanes=3", "--model.speed.cuda_graphs", "false"])
    method = Method([], recipe=["y.yaml"])
    assert run_signature(method, "t", 0, plain) == run_signature(method, "t", 0, fast)
    assert identity_overrides(["--model.loop.eval_every", "5", "--model.speed.compile", "true"]) == ["--model.loop.eval_every", "5"]


def test_device_files_fit_the_devices_return_limits_and_unpack_checked(tmp_path):
    """An archive tree several folders deep comes back from the device as a few files no more than
    2 folders down (benchmarks/device_files.py); too large, it comes back without its checkpoints
    and the checkpoints already here are kept; a cut part is refused."""
    import hashlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import device_files

    src = tmp_path / "paper_hopper"
    run = src / "gorl-fm_hopper-stand" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.csv").write_text("step,loop/frames\n0,1\n")
    ckpt = os.urandom(3 << 20)  # incompressible, as weights are
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt)
    out = tmp_path / "OUT"
    assert device_files.pack(src, out, "paper_hopper", part_bytes=1 << 20) == 0
    files = sorted(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and f.stat().st_size <= 1 << 20 or f.suffix == ".json" for f in files)
    assert all(device_files.NAME.match(f.name) for f in files) and len(files) == 5  # 4 parts of 1 MiB + the manifest
    home = tmp_path / "repo_logs"
    device_files.unpack(files, home)
    assert (home / "paper_hopper" / "gorl-fm_hopper-stand" / "seed0" / "checkpoints" / "last.ckpt").read_bytes() == ckpt

    # Over the limit: the records come back, the checkpoints stay as they are here.
    (run / "metrics.csv").write_text("step,loop/frames\n0,1\n1,2\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(os.urandom(3 << 20))
    assert device_files.pack(src, out, "paper_hopper", part_bytes=1 << 20, max_parts=2) == 2
    files = sorted(out.iterdir())
    assert len(files) == 2 and json.loads((out / "paper_hopper.json").read_text())["checkpoints_left_out"]
    device_files.unpack(files, home)
    got = home / "paper_hopper" / "gorl-fm_hopper-stand" / "seed0"
    assert (got / "metrics.csv").read_text().count("\n") == 3 and (got / "checkpoints" / "last.ckpt").read_bytes() == ckpt

    part = out / "paper_hopper.tgz.0"
    part.write_bytes(part.read_bytes()[:-10])
    try:
        device_files.unpack(sorted(out.iterdir()), home)
    except SystemExit as err:
        assert "SHA-256" in str(err)
    else:
        raise AssertionError("a cut part was unpacked")
    assert hashlib.sha256(ckpt).hexdigest() == hashlib.sha256((got / "checkpoints" / "last.ckpt").read_bytes()).hexdigest()


def test_the_device_command_stops_in_its_time_and_hands_back_the_whole_archive(tmp_path):
    """benchmarks/gpu_paper_runs.sh, as one device command (here on the CPU, with a tiny recipe in
    place of the preset's): it trains for what its TOTAL seconds leave after its checks, stops the
    fit cleanly, archives the run with this command's logs, and leaves in $OUT only what the device
    returns (at most 8 files, 2 folders down); unpacked here, the archive holds the checkpoint, the
    status and the results page so far."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import device_files

    recipe = tmp_path / "long.yaml"
    recipe.write_text(f"defaults: [{CONF / 'smoke.yaml'}]\nmodel:\n  loop:\n    stages: [1.0e7]\n    eval_every: 256\n")
    layer = tmp_path / "layer.yaml"
    layer.write_text("checkpoint:\n  every_frames: 128\ncurves: false\n")
    out, archive = tmp_path / "OUT", tmp_path / "archive"
    env = {**os.environ, "OUT": str(out), "ARCHIVE": str(archive), "TOTAL": "80", "RESERVE": "25", "STOP_GRACE": "10",
           "STEP_GRAPHS": "false", "EVAL_LANES": "0", "GORL_COMMIT": "testcommit",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "BENCH_ARGS": f"--recipes long={recipe} --layers {layer} --seeds 0 --out {tmp_path / 'runs'}"}
    t0 = time.time()
    res = subprocess.run(["bash", "benchmarks/gpu_paper_runs.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert time.time() - t0 < 80 + 20  # its own budget, with the slack of a shared CPU
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 and device_files.NAME.match(p.name) for p in files)
    assert {p.name for p in files} >= {"paper_hopper.json", "paper_hopper.tgz.0", "status.md"}
    home = tmp_path / "here"
    top = device_files.unpack([p for p in files if p.name.startswith("paper_hopper.")], home)
    run = top / "long_toy-bandit" / "seed0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and "# commit testcommit" in (run / "gorl.log").read_text()
    assert not (top / "speed.env").exists()  # given, not decided by a GPU check here: nothing for the next command to reuse
    (logs,) = (top / "device_commands").iterdir()
    assert "training for" in (logs / "bench.log").read_text()
    assert "| long | toy-bandit | 0 | unfinished |" in (top / "status.md").read_text()
    results = (top / "results.md").read_text()
    assert "0 of 1 runs finished" in results and "| long | toy-bandit | 0 | unfinished, stage 0 |" in results and "testcommit" in results


def test_a_failed_run_stops_the_matrix_with_every_runs_state_archived(tmp_path):
    """A run that fails after its first checkpoint (here the refit-data quality gate) ends the
    matrix with one line, exit 1, its checkpoint and the status archived: nothing of it is lost."""
    recipe = tmp_path / "gated.yaml"
    recipe.write_text(f"defaults: [{CONF / 'smoke.yaml'}]\nmodel:\n  refinement:\n    min_data_return: 1.0e9\n")
    archive = tmp_path / "archive"
    cmd = [sys.executable, "-m", "gorl", "bench", "--recipes", f"gated={recipe}", "--seeds", "0", "--out", str(tmp_path / "runs"),
           "--archive", str(archive)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("gorl bench: error: gated toy-bandit seed 0 failed")
    assert "archived in" in res.stderr.strip().splitlines()[-1]
    assert (archive / "gated_toy-bandit" / "seed0" / "checkpoints" / "last.ckpt").is_file()
    assert "Matrix stopped: gated toy-bandit seed 0 failed" in (archive / "status.md").read_text()
    assert "| gated | toy-bandit | 0 | unfinished" in (archive / "results.md").read_text()


def test_resumed_parts_join_at_the_checkpoints_iteration_and_a_cut_checkpoint_never_replaces_a_good_one(tmp_path):
    """A run resumed mid-refit (every row of a refit has the same frame count) joins its parts at
    the checkpoint's loop iteration, each step once; and archiving a run whose last.ckpt a kill cut
    short keeps the good checkpoint archived before it."""
    import torch

    from gorl.analysis.io import run_rows
    from gorl.bench import archive_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.part0.csv").write_text("step,loop/frames\n" + "".join(f"{s},100\n" for s in range(1, 11)))
    (run / "metrics.csv").write_text("step,loop/frames\n" + "".join(f"{s},100\n" for s in range(7, 13)))
    (run / "resumed.json").write_text(json.dumps([{"frames": 100.0, "iteration": 6}]))
    assert [int(r["step"]) for r in run_rows(run / "metrics.csv")] == list(range(1, 13))
    (run / "resumed.json").write_text(json.dumps([100.0]))  # a record from before: frames only, as then
    assert len(run_rows(run / "metrics.csv")) == 16

    (run / "checkpoints").mkdir()
    good = {"gorl_loop": {"state": {"frames": 64, "iteration": 4}}}
    dest = tmp_path / "archive" / "run"
    (dest / "checkpoints").mkdir(parents=True)
    torch.save(good, dest / "checkpoints" / "last.ckpt")
    torch.save({"gorl_loop": {"state": {"frames": 96, "iteration": 6}}}, run / "checkpoints" / "last.ckpt")
    (run / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:40])  # cut by a kill
    assert archive_run(run, dest, ["sig"], checkpoint=True)
    assert torch.load(dest / "checkpoints" / "last.ckpt", weights_only=True) == good
    assert (dest / "metrics.csv").is_file()


def test_the_results_page_is_written_while_a_resumed_part_has_no_row_yet(tmp_path):
    """A matrix stopped while a resumed run's new part has written no row (its metrics so far are
    its earlier parts') still writes its results page and figure, that run's row from its earlier
    parts: a stop must never fail on its report (it would lose its exit code 3)."""
    from gorl.bench import METHODS, parser, write_results

    out = tmp_path / "runs"
    header = "step,loop/frames,loop/stage,eval/return\n"
    resumed = out / "ppo_toy-bandit" / "seed0"
    resumed.mkdir(parents=True)
    (resumed / "metrics.part0.csv").write_text(header + "1,128,0,1.5\n2,256,0,2.5\n")
    (resumed / "resumed.json").write_text(json.dumps([{"frames": 256.0, "iteration": 2}]))
    running = out / "ppo_toy-bandit" / "seed1"
    running.mkdir(parents=True)
    (running / "metrics.csv").write_text(header + "1,128,0,1.0\n2,256,0,3.0\n")
    args = parser().parse_args(["--methods", "ppo", "--seeds", "0", "1", "--out", str(out)])
    args.argv = ["--methods", "ppo"]
    write_results(args, {"ppo": METHODS["ppo"]}, [("ppo", "toy-bandit", 0), ("ppo", "toy-bandit", 1)], out)
    page = (out / "results.md").read_text()
    assert "| ppo | toy-bandit | 0 | unfinished (no checkpoint), stage 0 | 256 | 2.5 |" in page
    assert "| ppo | toy-bandit | 1 | unfinished (no checkpoint), stage 0 | 256 | 3 |" in page
    assert (out / "figure.png").stat().st_size > 1000
