"""Named starting points for `so8t train --preset NAME`; any field can still be overridden.

Each preset is one YAML file in this folder (`<name>.yaml`, its reasons in its comments), read
by the same loader and key check as a user's `--config` file: an unknown key is an error that
names the file and the key, with the closest TrainConfig field. A preset file may start from
another with `base: NAME` (read here only; the file's own keys replace the base's). Every
preset also builds a valid TrainConfig when it is loaded, so a broken preset fails at import,
naming its file. `PRESETS` is a read-only mapping; `preset(name)` returns a fresh copy.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from so8t.config import ConfigError, TrainConfig, check_keys, from_dict, load_yaml

PRESET_DIR = Path(__file__).parent
DEFAULT_PRESET = "cpu-quick"  # `so8t train` without --preset or --config


def load_preset_file(path: str | Path, known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """One preset file's values (its `base:` preset's values under them), checked as a --config file is."""
    path = Path(path)
    values = load_yaml(path)
    base = values.pop("base", None) if isinstance(values, dict) else None
    check_keys(TrainConfig, values, str(path))  # the same check, message and hint as --config
    if base is not None:
        if known is None or base not in known:
            raise ConfigError(f"{path}: base: unknown preset {base!r}; available: {', '.join(known or {})}")
        values = {**copy.deepcopy(dict(known[base])), **values}
    from_dict(TrainConfig, values, str(path))  # every value is valid, not only every key
    return values


def _load_all(folder: Path) -> dict[str, Mapping[str, Any]]:
    """Every `*.yaml` in the folder; presets with a `base:` after the others (one level)."""
    files = sorted(folder.glob("*.yaml"), key=lambda f: f.stem)
    raw = {f.stem: load_yaml(f) for f in files}
    order = sorted(files, key=lambda f: isinstance(raw[f.stem], dict) and "base" in raw[f.stem])
    loaded: dict[str, Mapping[str, Any]] = {}
    for f in order:
        loaded[f.stem] = types.MappingProxyType(load_preset_file(f, loaded))
    return {f.stem: loaded[f.stem] for f in files}


PRESETS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(_load_all(PRESET_DIR))


def preset(name: str) -> dict[str, Any]:
    try:
        return copy.deepcopy(dict(PRESETS[name]))
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
