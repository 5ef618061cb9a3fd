"""Reading configs without torch: ``defaults:`` expansion, and the quick checks of unknown keys and
unknown tasks, answered in well under a second.

The full check of a ``gorl fit`` config is jsonargparse's, and it needs the classes the config
names, so Lightning, torch, TorchRL and the env stack are imported first: several seconds on a
small machine before a typo is reported. The commonest mistakes need none of that: a misspelt key
(``--model.loop.stagez``, ``max_epochz:`` in a YAML file) or task (``cheetah-fly``). This module
checks those against :mod:`gorl.config_keys`, a list of every key the CLI's parser accepts and every
dm_control task, generated from the real parser (``python -m gorl.config_check --write``;
``tests/test_cli.py`` fails when the list is out of date).

It only ever rejects what the parser would reject too (a test runs both on the same inputs): a
key below a part whose keys depend on a class (``model.encoder``, ``trainer.logger``, ...) or a
group given as a file path is left to the parser, which also checks every type.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from gorl.errors import ConfigError, GoRLError

_NOT_KEYS = {"config", "print_config", "help", "c", "h"}


def _config_defaults(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """The configs ``path`` builds on (its ``defaults:`` list, recursively, bases first)."""
    import yaml

    path = path.resolve()
    if path in seen:
        raise GoRLError(f"config {path}: its defaults form a cycle ({' -> '.join(str(p) for p in seen + (path,))})")
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError as err:
        raise GoRLError(f"config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    bases = data.get("defaults") if isinstance(data, dict) else None
    if bases is None:
        return []
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise GoRLError(f"config {path}: defaults must be a list of config paths, got {bases!r}")
    out: list[Path] = []
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise GoRLError(f"config {path}: defaults entry {base!r} does not exist ({base_path})")
        out += _config_defaults(base_path, seen + (path,)) + [base_path]
    return out


def expand_defaults(argv: list[str]) -> list[str]:
    """``--config X`` where X has ``defaults: [A, B]`` becomes ``--config A --config B --config X
    --defaults null`` (each base expanded the same way first). The trailing ``--defaults null``
    keeps the saved ``config.yaml`` of a run self-contained: it already holds the merged values."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value, step = argv[i + 1], 2
        elif arg.startswith("--config="):
            value, step = arg.split("=", 1)[1], 1
        if value is None:
            out.append(arg)
            i += 1
            continue
        bases = _config_defaults(Path(value))
        for base in bases:
            out += ["--config", str(base)]
        out += ["--config", value] + (["--defaults", "null"] if bases else [])
        i += step
    return out


class _Keys:
    def __init__(self, schema: dict[str, list[str]]) -> None:
        self.groups, self.leaves, self.open = set(schema["groups"]), set(schema["leaves"]), tuple(schema["open"])
        self.scalars: dict[str, str] = dict(schema.get("scalars", {}))

    def check_value(self, key: str, value: Any, where: str = "") -> None:
        """A value that cannot be the plain ``int``, ``float`` or ``bool`` ``key`` takes (a word where a
        number goes, a list where one value goes), in the parser's words; anything else passes."""
        kind = self.scalars.get(key)
        if kind is None or value is None or isinstance(value, (int, float)):
            return
        base = kind.split(" or ")[0]  # "int or list[int | None]": a value, or a list the parser checks
        if base != kind and (isinstance(value, list) or (isinstance(value, str) and value.lstrip().startswith("["))):
            return
        if isinstance(value, str):
            if "${" in value:
                return
            if base in ("int", "float"):
                try:
                    float(value)
                    return
                except ValueError:
                    pass
            elif value.lower() in ("true", "false", "yes", "no", "on", "off"):
                return
        raise ConfigError(f"{where}{key}: expected {kind}, got {value!r}")

    def known(self, key: str) -> bool:
        return key in self.groups or key in self.leaves or any(key == o or key.startswith(o + ".") for o in self.open)

    def hint(self, key: str, prefix: str = "") -> str:
        close = difflib.get_close_matches(key, sorted(self.groups | self.leaves | set(self.open)), n=1, cutoff=0.75)
        return f"; did you mean {prefix}{close[0]}?" if close else ""


def _load_yaml(path: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory, not a YAML file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML ({str(err).splitlines()[0]})") from None


def _inline(data: dict, prefix: str, base: Path, inlinable: set[str]) -> dict:
    """``data`` with each group or class value given as a YAML file path (``env: ../env/x.yaml``,
    relative to the config that names it, as jsonargparse resolves it) replaced by that file's keys."""
    out = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if key in inlinable and isinstance(value, str) and value.endswith((".yaml", ".yml")):
            path = base / value if (base / value).is_file() else Path(value)
            if path.is_file():
                loaded = _load_yaml(str(path))
                value = _inline(loaded, key + ".", path.parent, inlinable) if isinstance(loaded, dict) else value
        elif key in inlinable and isinstance(value, dict):
            value = _inline(value, key + ".", base, inlinable)
        out[name] = value
    return out


def _walk(data: dict, prefix: str, keys: _Keys, where: str) -> None:
    for name, value in data.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str):
            raise ConfigError(f"{where}: key {name!r} is not a name")
        if key in keys.groups:
            if isinstance(value, dict):
                _walk(value, key + ".", keys, where)
        elif not keys.known(key):
            raise ConfigError(f"{where}: unknown key {key}{keys.hint(key)}")
        else:
            keys.check_value(key, value, f"{where}: ")


def _cli_options(argv: list[str]) -> list[tuple[str, str | None]]:
    """``(key, value)`` of each ``--key value`` / ``--key=value`` in ``argv`` (value None if absent)."""
    out = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--":
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        out.append((key.rstrip("+"), value if (eq or value is not None) else None))
    return out


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def check_argv(subcommand: str, argv: list[str]) -> None:
    """Raise :class:`~gorl.errors.ConfigError` for an unknown key or task in ``gorl <subcommand> argv``.

    ``argv`` is the expanded argument list (:func:`gorl.cli.expand_defaults`: every ``--config``
    file named, bases first). Anything not certain to be wrong passes, for the parser to judge.
    """
    from gorl import config_keys

    schema = config_keys.SCHEMA.get(subcommand)
    if schema is None or any(a in ("-h", "--help", "--print_config") or a.startswith("--print_config=") for a in argv):
        return
    keys = _Keys(schema)
    merged: dict = {}
    configs: list[tuple[str, dict]] = []
    options = _cli_options(argv)
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if path is None:
            continue
        data = _load_yaml(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of keys (model:, trainer:, ...), got {type(data).__name__}")
        data = _inline(data, "", Path(path).parent, keys.groups | set(config_keys.CLASS_PARAMS))
        _walk(data, "", keys, f"config {path}")
        _merge(merged, data)
        configs.append((path, data))
    import yaml

    for key, value in options:
        if key not in _NOT_KEYS and not key.endswith(".help") and not keys.known(key):
            raise ConfigError(f"unknown option --{key}{keys.hint(key, '--')}")
        if value is not None and key in keys.scalars:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            keys.check_value(key, parsed)
    for param in config_keys.CLASS_PARAMS:
        _check_init_args(param, merged, configs, options, config_keys.CLASSES)
    _check_task(merged, options, config_keys.TASKS)
    # validate with no checkpoint named is refused here, unless --video asks for something whose own
    # errors (no GL backend, a task without a camera) say more; the full parser then refuses it.
    named = {key for key, _ in options} | set(merged)
    if subcommand == "validate" and merged.get("ckpt_path") is None and not named & {"ckpt_path", "video"}:
        from gorl.errors import VALIDATE_NEEDS_CHECKPOINT, CheckpointError

        raise CheckpointError(VALIDATE_NEEDS_CHECKPOINT)


def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


_CLASS_KEYS = ("class_path", "init_args", "dict_kwargs", "help")


def _check_init_args(param: str, merged: dict, configs: list[tuple[str, dict]], options: list[tuple[str, str | None]],
                     classes: dict[str, list[str]]) -> None:
    """Keys given to ``param``'s class (``model.encoder``, ``model.decoder``), for GoRL's own classes.

    jsonargparse keeps only the arguments of the class finally chosen; a key is rejected here only
    when no class named for ``param`` anywhere in this call takes it, and only when every such class
    is one of GoRL's (a user's class is the parser's to check).
    """
    named = []
    for _, data in configs:
        value = _get(data, param)
        named.append(value.get("class_path") if isinstance(value, dict) else value)
    for key, value in options:
        if key in (param, f"{param}.class_path"):
            named.append(value)
    named = [n for n in named if n is not None]
    if not named or not all(isinstance(n, str) and n in classes for n in named):
        return
    accepted = set().union(*(classes[n] for n in named))
    where = " or ".join(sorted({n.rsplit(".", 1)[-1] for n in named}))
    for path, data in configs:
        value = _get(data, param)
        init_args = value.get("init_args") if isinstance(value, dict) else None
        for name in (init_args or {}) if isinstance(init_args, dict) else ():
            if name not in accepted:
                hint = difflib.get_close_matches(str(name), sorted(accepted), n=1, cutoff=0.7)
                raise ConfigError(f"config {path}: {param}.init_args.{name}: {where} takes no argument {name!r}"
                                  + (f"; did you mean {hint[0]}?" if hint else ""))
    for key, _ in options:
        if not key.startswith(param + "."):
            continue
        rest = key[len(param) + 1:].split(".")
        name = rest[1] if rest[0] == "init_args" and len(rest) > 1 else rest[0]
        if rest[0] in _CLASS_KEYS and rest[0] != "init_args":
            continue
        if name not in accepted:
            hint = difflib.get_close_matches(name, sorted(accepted), n=1, cutoff=0.7)
            raise ConfigError(f"unknown option --{key}: {where} takes no argument {name!r}" + (f"; did you mean {hint[0]}?" if hint else ""))


def resolved_value(argv: list[str], dotted: str) -> Any:
    """The value ``dotted`` (e.g. ``model.env.task``) gets from the ``--config`` files of ``argv``
    (expanded) and its ``--key value`` options, the last one winning; None if none sets it. Read
    without torch; a value given through interpolation is returned as written."""
    import yaml

    from gorl import config_keys

    inlinable = set(config_keys.SCHEMA["fit"]["groups"]) | set(config_keys.CLASS_PARAMS)
    merged: dict = {}
    value = None
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if path is not None:
            data = _load_yaml(path)
            if isinstance(data, dict):
                _merge(merged, _inline(data, "", Path(path).parent, inlinable))
                value = _get(merged, dotted)
    for key, given in _cli_options(argv):
        if key == dotted and given is not None:
            value = yaml.safe_load(given)
    return value


def _check_task(merged: dict, options: list[tuple[str, str | None]], tasks: list[str]) -> None:
    """The dm_control task, where the config names it plainly (not through a file, a factory or MJX)."""
    env = (merged.get("model") or {}).get("env") if isinstance(merged.get("model"), dict) else None
    env = dict(env) if isinstance(env, dict) else ({} if env is None else None)
    for key, value in options:
        if key in ("model", "model.env"):
            env = None  # a whole group from the command line: left to the parser
        elif key.startswith("model.env.") and env is not None and value is not None:
            env[key[len("model.env."):]] = value
    if env is None or env.get("factory") not in (None, "null") or env.get("backend", "dmc") != "dmc":
        return
    task = env.get("task", "cheetah-run")
    if isinstance(task, str) and task not in tasks and task != "toy-bandit" and "${" not in task:
        raise ConfigError(f"unknown dm_control task {task!r}; valid tasks: {', '.join(tasks)}")


# --- generating gorl/config_keys.py from the real parser (needs Lightning; tests and --write only) ---
def _is_dataclass_type(t: Any) -> bool:
    import dataclasses

    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _plain(t: Any) -> Any:
    """``Optional[X]`` / ``X | None`` -> ``X``; anything else unchanged."""
    import typing

    args = [a for a in typing.get_args(t) if a is not type(None)]
    origin = typing.get_origin(t)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return args[0] if len(args) == 1 else t
    return t


def _is_leaf_type(t: Any) -> bool:
    """Values of this type are plain data (numbers, strings, lists of them): no keys below them."""
    import typing

    t = _plain(t)
    origin = typing.get_origin(t)
    if origin is typing.Literal:
        return True
    if origin is not None:
        return origin in (list, tuple, typing.Union) and all(_is_leaf_type(a) for a in typing.get_args(t) if a is not type(None)) \
            or (str(origin) == "<class 'types.UnionType'>" and all(_is_leaf_type(a) for a in typing.get_args(t) if a is not type(None)))
    return t in (int, float, str, bool, type(None)) or getattr(t, "__module__", "") in ("pathlib", "datetime")


def _note_scalar(key: str, t: Any, schema: dict[str, Any]) -> None:
    """Keys of exactly ``int``, ``float`` or ``bool`` (or Optional of one), or of one of those or a
    list of them (the per-stage and per-refit settings): their values are checked too."""
    import typing

    if t in (int, float, bool):
        schema["scalars"][key] = t.__name__
        return
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if len(args) == 2 and args[0] in (int, float, bool) and typing.get_origin(args[1]) is list:
        schema["scalars"][key] = f"{args[0].__name__} or {args[1]}"  # as the parser names it: "int or list[int | None]"


def _expand(prefix: str, cls: type, schema: dict[str, Any]) -> None:
    import dataclasses
    import typing

    schema["groups"].add(prefix)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, t = f"{prefix}.{f.name}", _plain(hints[f.name])
        if _is_dataclass_type(t):
            _expand(key, t, schema)
        else:
            schema["leaves" if _is_leaf_type(t) else "open"].add(key)
            _note_scalar(key, t, schema)


def full_parser() -> Any:
    """The parser ``gorl fit`` / ``gorl validate`` build (subcommands included), without running it."""
    from gorl.lightning_cli import TRAINER_DEFAULTS, GoRLCLI, GoRLSaveConfig
    from gorl.system import GoRLSystem

    class _Stop(Exception):
        pass

    built: dict[str, Any] = {}

    class Probe(GoRLCLI):
        def parse_arguments(self, parser: Any, args: Any) -> None:
            built["parser"] = parser
            raise _Stop

    try:
        Probe(GoRLSystem, parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False}, trainer_defaults=TRAINER_DEFAULTS,
              seed_everything_default=0, save_config_callback=GoRLSaveConfig, args=["fit"])
    except _Stop:
        pass
    return built["parser"]


def build_schema() -> dict[str, Any]:
    """Every key of the ``fit`` and ``validate`` parsers, from the parser ``gorl fit`` builds."""
    from jsonargparse._actions import _ActionConfigLoad
    from jsonargparse._typehints import ActionTypeHint

    from gorl.envs.dmc import suite_tasks

    out: dict[str, Any] = {}
    for sub, parser in full_parser()._subcommands_action._name_parser_map.items():
        schema: dict[str, Any] = {"groups": set(), "leaves": set(), "open": set(), "scalars": {}}
        for action in parser._actions:
            dest = action.dest
            if dest in _NOT_KEYS or dest.endswith(".help"):
                continue
            if isinstance(action, _ActionConfigLoad):
                schema["groups"].add(dest)
            elif isinstance(action, ActionTypeHint):
                t = _plain(action._typehint)
                if _is_dataclass_type(t):
                    _expand(dest, t, schema)
                else:
                    schema["leaves" if _is_leaf_type(t) else "open"].add(dest)
                    _note_scalar(dest, t, schema)
            else:
                schema["leaves"].add(dest)
        scalars = dict(sorted(schema.pop("scalars").items()))
        out[sub] = {**{k: sorted(v) for k, v in schema.items()}, "scalars": scalars}
    return {"SCHEMA": out, "TASKS": suite_tasks(), "CLASS_PARAMS": list(CLASS_PARAMS), "CLASSES": _class_arguments()}


# Parameters whose value is one of a family of classes, and GoRL's own classes for them.
CLASS_PARAMS = ("model.encoder", "model.decoder", "model.first_decoder")
_GORL_CLASSES = ("gorl.encoders.EncoderModule", "gorl.encoders.LatentSAC", "gorl.baselines.FPO", "gorl.baselines.DPPO",
                 "gorl.decoders.IdentityDecoder", "gorl.decoders.FlowDecoder", "gorl.decoders.DiffusionDecoder")


def _class_arguments() -> dict[str, list[str]]:
    """The arguments jsonargparse accepts for each of GoRL's classes, under its public import path and
    the path of the module that defines it (configs use both)."""
    import importlib

    from jsonargparse import ArgumentParser

    out: dict[str, list[str]] = {}
    for path in _GORL_CLASSES:
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser()
        parser.add_class_arguments(cls, "x", skip={"obs_dim", "act_dim"})
        names = sorted({a.dest.split(".")[1] for a in parser._actions if a.dest.startswith("x.") and not a.dest.endswith(".help")})
        out[path] = out[f"{cls.__module__}.{cls.__qualname__}"] = names
    return dict(sorted(out.items()))


def render(built: dict[str, Any]) -> str:
    import pprint

    return ('"""Every key the ``gorl fit`` / ``gorl validate`` parser accepts, and every dm_control task.\n\n'
            "Generated by ``python -m gorl.config_check --write`` from the real parser; read by\n"
            ":mod:`gorl.config_check`. ``tests/test_cli.py`` fails when it is out of date.\n"
            '"""\n\n'
            f"SCHEMA = {pprint.pformat(built['SCHEMA'], width=120, compact=True)}\n\n"
            f"TASKS = {pprint.pformat(built['TASKS'], width=120, compact=True)}\n\n"
            f"CLASS_PARAMS = {built['CLASS_PARAMS']!r}\n\n"
            f"CLASSES = {pprint.pformat(built['CLASSES'], width=120, compact=True)}\n")


if __name__ == "__main__":
    import os

    os.environ.setdefault("MUJOCO_GL", "disabled")  # dm_control is imported for its task list; nothing renders
    target = Path(__file__).with_name("config_keys.py")
    text = render(build_schema())
    if "--write" in sys.argv[1:]:
        target.write_text(text)
        print(f"wrote {target}")
    else:
        sys.stdout.write(text)
