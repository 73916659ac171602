"""One typed run config: dataclass defaults, a TOML file, `--set section.key=value` overrides and
Flower's flat run_config all resolve to the same `RunConfig`, parsed once per entry point.

Keys are written kebab-case in TOML and on the command line (`train.learning-rate`); snake_case is
accepted too. Unknown keys and wrong types raise `ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.config import DataConfig
from common.errors import ConfigError
from common.sections import (  # noqa: F401 - re-exported: `from common.config import TrainConfig`
    FINETUNE,
    OPTIMIZERS,
    TASKS,
    CompressionConfig,
    ModelConfig,
    OutputConfig,
    PrivacyConfig,
    TaskConfig,
    TrainConfig,
)
from common.sections_federation import STRATEGIES, FederationConfig, SimulationConfig  # noqa: F401

@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    def __post_init__(self) -> None:
        if self.model.pooling == "auto" and self.privacy.dp:  # the coordinator and every site
            self.model.pooling = "mean"  # build the same model from the same config
        if self.model.finetune == "full" and self.model.lora_variant == "ffa":
            raise ConfigError("model.lora-variant = \"ffa\" needs model.finetune = \"lora\": "
                              "set one of them differently")
        if self.federation.min_sites > self.simulation.sites:
            raise ConfigError(
                f"federation.min-sites = {self.federation.min_sites} exceeds simulation.sites = "
                f"{self.simulation.sites}: lower min-sites or add sites")

    # ---- conversions -------------------------------------------------------------------------
    @property
    def ffa(self) -> bool:
        """Whether FFA-LoRA is in force (explicitly, or by default because DP is on)."""
        if self.model.finetune != "lora":
            return False
        return self.model.lora_variant == "ffa" or (self.model.lora_variant == "auto" and self.privacy.dp)

    def to_nested(self) -> dict[str, dict[str, Any]]:
        """Nested dict with kebab-case keys (the TOML and pyproject form)."""
        return {sec.name: {f.name.replace("_", "-"): getattr(getattr(self, sec.name), f.name)
                           for f in dataclasses.fields(getattr(self, sec.name))}
                for sec in dataclasses.fields(self)}

    def to_flat(self) -> dict[str, Any]:
        """Flower's flat run_config form: {"section.key": scalar}."""
        return {f"{s}.{k}": v for s, kv in self.to_nested().items() for k, v in kv.items()}

    def to_toml(self, *, table_prefix: str = "") -> str:
        """TOML of every key, one [section] table each (`table_prefix` e.g. "tool.flwr.app.config."
        for pyproject's mirror, scripts/sync_pyproject.py)."""
        lines = []
        for sec, kv in self.to_nested().items():
            lines.append(f"[{table_prefix}{sec}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in kv.items()]
            lines.append("")
        return "\n".join(lines)

    def hash(self) -> str:
        """Stable hash of the resolved config (the run directory and checkpoints carry it).
        Where the run is written and whether it is being resumed do not change the run."""
        flat = {k: v for k, v in self.to_flat().items() if not k.startswith("output.")}
        blob = json.dumps(flat, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig)}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert `value` (from TOML or a CLI string) to `typ`, or raise ConfigError."""
    if isinstance(typ, types.UnionType):
        options = [t for t in typing.get_args(typ) if t is not type(None)]
        for option in options[:-1]:  # int | str (train.batch-size = 32 or "auto"): first that fits
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        typ = options[-1]
    from_cli = isinstance(value, str) and typ is not str
    if typ is bool:
        if isinstance(value, bool):
            return value
        if from_cli and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli:
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_cli:
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key `{key}` = {value!r} has the wrong type: expected "
                      f"{typ.__name__}, e.g. `{key}={_example(typ)}`")


def _example(typ: type) -> str:
    return {bool: "true", int: "3", float: "0.001", str: '"text"'}.get(typ, "...")


def _norm(key: str) -> str:
    return key.strip().replace("-", "_")


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" Did you mean `{close[0].replace('_', '-')}`?" if close else ""


def from_flat(flat: dict[str, Any], *, base: RunConfig | None = None,
              origin: str = "config") -> RunConfig:
    """Apply {"section.key": value} on top of `base` (defaults when None), validating everything."""
    sections = _sections()
    values: dict[str, dict[str, Any]] = {
        name: dataclasses.asdict(getattr(base, name)) if base else {} for name in sections}
    for raw_key, value in flat.items():
        sec, _, key = _norm(raw_key).partition(".")
        if sec not in sections or not key:
            raise ConfigError(
                f"unknown config key `{raw_key}` in {origin}: keys look like `section.key` with "
                f"section one of {', '.join(sections)}.{_suggest(sec, list(sections))}")
        hints = typing.get_type_hints(sections[sec])
        if key not in hints:
            valid = ", ".join(k.replace("_", "-") for k in hints)
            raise ConfigError(f"unknown config key `{raw_key}` in {origin}.{_suggest(key, list(hints))}"
                              f" Valid keys of [{sec}]: {valid}")
        values[sec][key] = _coerce(f"{sec}.{key.replace('_', '-')}", value, hints[key])
    try:
        return RunConfig(**{name: cls(**values[name]) for name, cls in sections.items()})
    except TypeError as err:  # pragma: no cover - dataclass signature mismatch
        raise ConfigError(f"invalid config in {origin}: {err}") from err


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into the flat form, with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the path passed to --config")
    try:
        nested = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid TOML ({err}): fix the line it names") from err
    flat: dict[str, Any] = {}
    for sec, kv in nested.items():
        if not isinstance(kv, dict):
            raise ConfigError(f"config file {path}: top-level key `{sec}` must be a [section] table, "
                              f"e.g. [train] with learning-rate = 0.001 below it")
        for k, v in kv.items():
            if isinstance(v, (dict, list)):
                raise ConfigError(f"config file {path}: `{sec}.{k}` must be a scalar; write lists as "
                                  "comma-separated strings")
            flat[f"{sec}.{k}"] = v
    return flat


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """Parse `--set section.key=value` pairs (values stay strings; typed later)."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} is not key=value: write e.g. --set train.learning-rate=0.001")
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def resolve(config_file: str | Path | None = None, sets: list[str] | None = None) -> RunConfig:
    """The CLI's single parse: defaults <- TOML file <- --set overrides."""
    cfg = RunConfig()
    if config_file:
        cfg = from_flat(load_toml(config_file), base=cfg, origin=str(config_file))
    if sets:
        cfg = from_flat(parse_sets(sets), base=cfg, origin="--set")
    return cfg


def from_run_config(run_config: dict[str, Any]) -> RunConfig:
    """The ServerApp's and ClientApp's parse of Flower's flat run_config: once per distinct
    config (every mod and handler of a message, and every message of a run, share it). The
    result is a copy, so a caller cannot alter what the next one gets."""
    return copy.deepcopy(_parse_run_config(tuple(sorted(dict(run_config).items()))))


@functools.lru_cache(maxsize=8)
def _parse_run_config(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return from_flat(dict(items), origin="Flower run_config")
