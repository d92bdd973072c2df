"""`--config path.py:variant` and `--config.KEY=VALUE` overrides for ml_collections configs."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections

from v2t_jax.errors import V2TError


class ConfigError(V2TError, ValueError):
    pass


def load(spec: str) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"v2t_config_{Path(path).stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise ConfigError(f"config file {path} is not a Python file (configs/inverter.py:VARIANT is one)")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # a config file is the user's code: a syntax error, a failed import, ...
        raise ConfigError(f"config file {path} does not load ({_brief(e)}); fix it") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path} has no get_config()")
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    except Exception as e:
        raise ConfigError(f"{path}: get_config({arg!r}) failed ({_brief(e)})") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict")
    return config


def _brief(e: BaseException) -> str:
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} at line {e.lineno}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _parse(raw: str, current, key: str):
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={raw}: expected true or false")
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--config.{key}={raw}: expected a {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, (list, str)):
        value = tuple(value) if isinstance(value, list) else (value,)
    if type(value) is not type(current):
        raise ConfigError(f"--config.{key}={raw}: expected a {type(current).__name__}, got {type(value).__name__}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """overrides: ["--config.a.b=value", ...]."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ConfigError(f"unrecognised argument {item!r}; overrides look like --config.KEY=VALUE")
        key, _, raw = item[len("--config.") :].partition("=")
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
            if i < len(parts) - 1:
                node = node[part]
        current = node[parts[-1]]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"config key {key!r} is a group; set one of its fields")
        node[parts[-1]] = _parse(raw, current, key)
    return config
