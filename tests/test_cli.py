"""`gorl fit` as a user runs it: a real short run, bring-your-own env, and bad input."""

import csv
from pathlib import Path

import pytest

from tests.conftest import CONF, ROOT, run_gorl


def _metrics(run_dir: Path) -> list[dict]:
    (path,) = run_dir.glob("runs/gorl/version_*/metrics.csv")
    return list(csv.DictReader(path.open()))


def test_smoke_fit_writes_checkpoint_metrics_and_prints_final_return(tmp_path):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt"))
    rows = _metrics(tmp_path)
    assert any(r.get("eval/return") for r in rows) and any(r.get("encoder/loss") for r in rows)
    assert "final eval/return" in res.stdout + res.stderr
    # No third-party noise on a plain run (TorchRL's InitTracker FutureWarning, Lightning's pytree
    # deprecation and cloud-logger advert): warnings there would be about the user's run.
    assert "Warning" not in res.stderr and "Tip:" not in res.stdout + res.stderr, res.stderr[-3000:]
    import torch

    (ckpt,) = tmp_path.glob("runs/gorl/version_0/checkpoints/last.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert state["state_dict"]["encoder.obs_norm.count"] > 0  # running obs statistics travel with the weights
    assert state["gorl_loop"]["state"]["phase"] == "done"


def test_python_dash_m_and_print_config(tmp_path):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--model.encoder.lr", "3e-4", "--print_config", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "lr: 0.0003" in res.stdout and "task: toy-bandit" in res.stdout


def test_interpolation_in_configs(tmp_path):
    cfg = tmp_path / "interp.yaml"
    cfg.write_text(f"model:\n  env: {CONF / 'env' / 'toy-bandit.yaml'}\n  loop:\n    stages: [128]\n    eval_every: ${{model.loop.stages[0]}}\n")
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--config", str(cfg), "--print_config", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "eval_every: 128" in res.stdout


def test_bring_your_own_env_config_runs(tmp_path):
    res = run_gorl(
        "fit", "--config", str(CONF / "smoke.yaml"),
        "--model.env.factory", "tests.test_envs:make_point_env",
        "--model.env.factory_kwargs", "{horizon: 5}",
        "--model.env.num_envs", "4", "--model.env.eval_envs", "2",
        "--model.loop.stages", "[128, 64]", "--model.loop.eval_max_steps", "5",
        "--model.refinement.transitions", "64",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "decoder fitted" in res.stdout + res.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.env.task", "cheetah-fly"], "unknown dm_control task 'cheetah-fly'; valid tasks: acrobot-swingup"),
        (["--model.encoder.lrr", "1"], "model.encoder: Option 'lrr' is not accepted"),
        (["--model.env.num_envs", "abc"], "model.env.num_envs: expected int, got 'abc'"),
        (["--model.encoder.init_args.lr", "fast"], "model.encoder.lr: expected float or list[float], got 'fast'"),
        (["--model.refinement.steps", "many"], "model.refinement.steps: expected int, got 'many'"),
        (["--model.decoder", "gorl.decoders.Nope"], "valid: gorl.decoders.IdentityDecoder"),
        (["--model.loop.stages", "[]"], "loop.stages must be a non-empty list"),
        (["--trainer.max_epochz", "3"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path, args, expected):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), *args, cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    err_lines = [line for line in res.stderr.splitlines() if line.startswith("gorl: error:")]
    assert len(err_lines) == 1 and expected in err_lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


def test_validate_without_a_checkpoint_and_bare_fit_are_errors(tmp_path):
    # validate used to score the untrained policy and exit 0; bare fit started the 180M-frame paper plan.
    res = run_gorl("validate", "--config", str(CONF / "smoke.yaml"), cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("gorl: error: gorl validate scores a trained policy: give --ckpt_path")
    res = run_gorl("fit", cwd=tmp_path, timeout=120)
    line = res.stderr.strip()
    assert res.returncode == 2 and line.startswith("gorl: error: no --config") and "180,000,000 env frames" in line and "conf/quickstart.yaml" in line
    assert not (tmp_path / "runs").exists()


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  env: [\n")
    res = run_gorl("fit", "--config", str(bad), cwd=tmp_path, timeout=120)
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1].startswith("gorl: error:")


def test_every_experiment_config_parses():
    """Each top-level conf/*.yaml resolves (part files found, keys and types valid) as users run it."""
    import contextlib
    import io

    from gorl.cli import main

    configs = sorted(CONF.glob("*.yaml")) + sorted((CONF / "recipes" / "arxiv_v1").glob("*.yaml"))
    configs = [p for p in configs if not p.name.startswith(("encoder_", "decoder_", "refinement"))]  # parts, not runs
    assert len(configs) >= 25
    for path in configs:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(path), "--print_config"])
        assert exit_info.value.code in (0, None), path


def test_help_lists_only_working_subcommands_each_with_a_line(tmp_path):
    res = run_gorl("--help", cwd=tmp_path, timeout=120)
    assert res.returncode == 0
    listed = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("  ") and len(line.split()) > 1}
    assert {"fit", "validate", "bench", "export"} <= set(listed) and "test" not in listed and "predict" not in listed
    for name in ("test", "predict"):
        res = run_gorl(name, "--config", str(CONF / "smoke.yaml"), cwd=tmp_path, timeout=120)
        assert res.returncode == 2 and res.stderr.strip() == f"gorl: error: unknown subcommand {name!r}; valid: fit, validate, bench, export (gorl --help)"
