"""`gorl fit` as a user runs it: a real short run, bring-your-own env, and bad input."""

import csv
from pathlib import Path

import pytest

from gorl.cli import expand_defaults
from gorl.config_check import check_argv

from tests.conftest import CONF, ROOT, run_gorl


def _metrics(run_dir: Path) -> list[dict]:
    (path,) = run_dir.glob("runs/gorl/version_*/metrics.csv")
    return list(csv.DictReader(path.open()))


def test_smoke_fit_writes_checkpoint_metrics_and_prints_final_return(smoke_fit):
    tmp_path, res = smoke_fit  # `gorl fit --config conf/smoke.yaml` as typed, shared with other tests
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
    # What `gorl fit` writes is what the policy API and `gorl export` read (tests/test_inference.py
    # exports a checkpoint saved in-process).
    from gorl import load_policy

    assert load_policy(ckpt).stage == 2


def test_python_dash_m_and_print_config(tmp_path):
    res = run_gorl("fit", "--config", str(CONF / "smoke.yaml"), "--model.encoder.lr", "3e-4", "--print_config", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "lr: 0.0003" in res.stdout and "task: toy-bandit" in res.stdout


def test_interpolation_in_configs(tmp_path, gorl_in_process):
    cfg = tmp_path / "interp.yaml"
    cfg.write_text(f"model:\n  env: {CONF / 'env' / 'toy-bandit.yaml'}\n  loop:\n    stages: [128]\n    eval_every: ${{model.loop.stages[0]}}\n")
    res = gorl_in_process("fit", "--config", str(CONF / "smoke.yaml"), "--config", str(cfg), "--print_config")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "eval_every: 128" in res.stdout


def test_bring_your_own_env_config_runs(gorl_in_process):
    res = gorl_in_process(  # in this process: the `gorl fit` command itself is the smoke test's
        "fit", "--config", str(CONF / "smoke.yaml"),
        "--model.env.factory", "tests.test_envs:make_point_env",
        "--model.env.factory_kwargs", "{horizon: 5}",
        "--model.env.num_envs", "4", "--model.env.eval_envs", "2",
        "--model.loop.stages", "[128, 64]", "--model.loop.eval_max_steps", "5",
        "--model.refinement.transitions", "64",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "decoder fitted" in res.stdout + res.stderr


# Errors past the quick checks need torch, Lightning and the env stack (seconds of imports in a
# fresh process): one of them (--model.env.num_envs abc) runs as the user types it, these in this process.
IN_PROCESS = {"--model.encoder.init_args.lr", "--model.refinement.steps", "--model.decoder", "--model.loop.stages"}


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model.env.task", "cheetah-fly"], "unknown dm_control task 'cheetah-fly'; valid tasks: acrobot-swingup"),
        (["--model.encoder.lrr", "1"], "unknown option --model.encoder.lrr: EncoderModule takes no argument 'lrr'; did you mean lr?"),
        (["--model.decoder.init_args.hiden", "[8]"], "FlowDecoder takes no argument 'hiden'; did you mean hidden?"),
        (["--model.env.num_envs", "abc"], "model.env.num_envs: expected int, got 'abc'"),
        (["--model.encoder.init_args.lr", "fast"], "model.encoder.lr: expected float or list[float], got 'fast'"),
        (["--model.refinement.batch_size", "many"], "model.refinement.batch_size: expected int, got 'many'"),
        (["--model.refinement.steps", "many"], "model.refinement.steps: expected int or list[int | None], got 'many'"),  # a per-refit setting
        (["--model.decoder", "gorl.decoders.Nope"], "valid: gorl.decoders.IdentityDecoder"),
        (["--model.loop.stages", "[]"], "loop.stages must be a non-empty list"),
        (["--trainer.max_epochz", "3"], "unknown option --trainer.max_epochz; did you mean --trainer.max_epochs?"),
        (["--model.loop.stagez", "[3]"], "unknown option --model.loop.stagez; did you mean --model.loop.stages?"),
        (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero_exit(request, tmp_path, args, expected):
    cmd = ("fit", "--config", str(CONF / "smoke.yaml"), *args)
    if args[0] in IN_PROCESS:
        res = request.getfixturevalue("gorl_in_process")(*cmd)
    else:
        res = run_gorl(*cmd, cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    err_lines = [line for line in res.stderr.splitlines() if line.startswith("gorl: error:")]
    assert len(err_lines) == 1 and expected in err_lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


def test_validate_without_a_checkpoint_and_bare_fit_are_errors(tmp_path, gorl_in_process):
    # validate used to score the untrained policy and exit 0; bare fit started the 180M-frame paper plan.
    # Both are refused before the heavy imports (test_help_and_quick_config_errors_import_no_torch);
    # validate here in this process (tests/test_observability.py runs `gorl validate` as the user
    # types it), bare fit as the user types it.
    res = gorl_in_process("validate", "--config", str(CONF / "smoke.yaml"))
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
        # The quick checks before the parser accept every shipped config too (no false alarms).
        check_argv("fit", expand_defaults(["--config", str(path)]))


def test_config_keys_are_current():
    """gorl/config_keys.py is what the parser accepts today: regenerate with python -m gorl.config_check --write."""
    import gorl.config_keys
    from gorl.config_check import build_schema, render

    assert Path(gorl.config_keys.__file__).read_text() == render(build_schema())


@pytest.mark.parametrize("args", [
    ["--trainer.max_epochz", "3"], ["--model.loop.stagez", "[3]"], ["--model.env.task", "cheetah-fly"],
    ["--model.encoder.lrr", "1"], ["--model.encoder.init_args.lrr", "1"], ["--model.decoder.hiden", "[8]"],
    ["--config", "BAD_KEY"], ["--config", "BAD_INIT_ARG"],
    ["--model.env.num_envs", "abc"], ["--model.refinement.batch_size", "many"], ["--model.refinement.steps", "many"], ["--model.refinement.warm_start", "maybe"], ["--curves", "maybe"], ["--model.loop.eval_every", "[1, 2]"],
    ["--config", "BAD_TYPE"],
])
def test_quick_checks_reject_only_what_the_parser_rejects(tmp_path, args):
    """Each input the light checks refuse (in a fraction of a second) is refused by the full parser
    as well: run both on it."""
    import contextlib
    import io

    from gorl.config_check import full_parser
    from gorl.errors import GoRLError

    (tmp_path / "bad_key.yaml").write_text("model:\n  loop:\n    stagess: [3]\n")
    (tmp_path / "bad_type.yaml").write_text("model:\n  refinement:\n    transitions: lots\n")
    (tmp_path / "bad_init_arg.yaml").write_text("model:\n  encoder:\n    class_path: gorl.encoders.EncoderModule\n    init_args:\n      lrr: 1\n")
    args = [str(tmp_path / f"{a.lower()}.yaml") if a.startswith("BAD_") else a for a in args]
    argv = expand_defaults(["--config", str(CONF / "smoke.yaml"), *args])
    with pytest.raises(GoRLError):
        check_argv("fit", argv)
    parser = full_parser()
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(BaseException) as info:
        cfg = parser.parse_args(["fit", *argv])
        init = parser.instantiate_classes(cfg)  # the task is checked when the system is built
        init.fit.model.setup("fit")
    import argparse

    assert isinstance(info.value, (argparse.ArgumentError, GoRLError)), repr(info.value)


def test_help_lists_only_working_subcommands_each_with_a_line(tmp_path):
    res = run_gorl("--help", cwd=tmp_path, timeout=120)
    assert res.returncode == 0
    listed = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("  ") and len(line.split()) > 1}
    assert {"fit", "validate", "bench", "export"} <= set(listed) and "test" not in listed and "predict" not in listed
    for name in ("test", "predict"):
        res = run_gorl(name, "--config", str(CONF / "smoke.yaml"), cwd=tmp_path, timeout=120)
        assert res.returncode == 2 and res.stderr.strip() == f"gorl: error: unknown subcommand {name!r}; valid: fit, validate, bench, export (gorl --help)"


def test_help_and_quick_config_errors_import_no_torch(tmp_path):
    """gorl --help, gorl export --help and the quick config checks answer before torch, Lightning or
    an env is imported (the import alone is seconds; benchmarks/cli_latency.py measures the calls)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom gorl.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "heavy = sorted(m for m in ('torch', 'lightning', 'torchrl', 'dm_control', 'jax') if m in sys.modules)\n"
             "print('HEAVY', heavy)\n")
    cases = [["--help"], ["export", "--help"], ["fit"], ["fit", "--config", str(CONF / "smoke.yaml"), "--trainer.max_epochz", "3"],
             ["fit", "--config", str(CONF / "smoke.yaml"), "--model.env.task", "cheetah-fly"],
             ["fit", "--config", str(CONF / "hopper.yaml"), "--model.encoder.init_args.lrr", "1"], ["fit", "--config", "nope.yaml"],
             ["fit", "--config", str(CONF / "smoke.yaml"), "--model.env.num_envs", "abc"], ["validate", "--config", str(CONF / "smoke.yaml")]]
    for args in cases:
        res = subprocess.run([sys.executable, "-c", probe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        assert "HEAVY []" in res.stdout, (args, res.stdout[-500:], res.stderr[-1000:])
