"""Recipes: typed configs loaded from YAML, with `key=value` overrides.

A recipe is data. Every key is a dataclass field below; an unknown key, a wrong type or a bad value
raises `ConfigError` naming the key before any model is loaded. The resolved config of every run is
saved next to its outputs (`config.yaml`), and loading that file alone reproduces the run.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from framethink.errors import ConfigError


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-3` as the number it is (YAML 1.1 wants `1.0e-3`; `optim.lr=1e-6`
    would otherwise be the string '1e-6')."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAMLLoader)


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: the model family's targets (docs/models.md)


@dataclass
class ModelConfig:
    path: str = ""
    dtype: str = "float32"  # float32 | bfloat16 | float16
    freeze_vision: bool = True  # the vision tower (frozen in TinyLLaVA-Video-R1; trained under ZeRO-3 in Video-R1: docs/method.md#recipes)
    freeze_connector: bool = False  # Qwen-VL merger / TinyLLaVA resampler
    freeze_lm: bool = False
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    train_file: str = ""
    root: str | None = None
    template: str = "video-r1"
    system: str | None = None
    frame_rule: str = "qwen"  # qwen | qwen3 | uniform (docs/inputs.md#frame-sampling)
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    num_frames: int = 16
    # pixel bounds per frame / image; None: the checkpoint's processor configs. Only families that resize by pixel
    # budget read them (Qwen-VL); set for another family they are an error (docs/models.md)
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None
    image_max_pixels: int | None = None
    image_min_pixels: int | None = None
    frame_cache_size: int = 256  # decoded clips kept in memory across epochs
    shuffle: bool = True


@dataclass
class RewardSpec:
    name: str = "accuracy"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RLConfig:
    algorithm: str = "tgrpo"  # grpo | tgrpo (docs/method.md#t-grpo)
    num_generations: int = 8
    num_shuffled: int = 4  # G~ = G/2 shuffled-frame completions per video prompt (T-GRPO)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 768
    beta: float = 0.04  # k3 KL weight; 0 loads no reference model
    # KL guards of the reference codes (docs/method.md#kl-guards): clamp ref - logp (Video-R1: 10) / the k3
    # value (TinyLLaVA: 100); none by default
    kl_log_ratio_clamp: float | None = None
    kl_clamp: float | None = None
    advantage: str = "grpo"  # grpo | dr_grpo | rloo (framethink.rl.advantages)
    loss: str = "grpo"  # grpo | dapo | gspo | gspo-token (framethink.rl.loss)
    # clip range 1 - epsilon .. 1 + epsilon_high; unset: the loss's own (grpo 0.2, dapo 0.2/0.28, gspo 3e-4/4e-4)
    epsilon: float | None = None
    epsilon_high: float | None = None
    num_iterations: int = 1  # inner updates per generation batch
    normalization: str | None = None  # sequence (GRPO) | constant (Dr. GRPO) | token (DAPO); unset: the loss's
    advantage_eps: float = 1e-4
    advantage_noise: float = 0.0  # TinyLLaVA: 0.02
    dynamic_sampling: bool = False  # DAPO: drop all-equal groups, refill with fresh prompts
    max_sampling_rounds: int = 3  # cap on the extra generation rounds of a step under dynamic sampling
    mask_truncated: bool = False  # DAPO: completions cut at max_new_tokens stay out of the loss
    temporal_alpha: float = 0.3
    temporal_mu: float = 0.8
    temporal_strict: bool = False  # paper's '>' instead of the code's '>='
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("accuracy"), RewardSpec("format")])


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"  # cosine | linear | constant (docs/method.md#learning-rate-horizon)
    # the schedule's horizon, separate from run.max_steps (a reference run may stop long before its schedule
    # ends): in optimiser steps, or in epochs of the training file; neither = run.max_steps
    schedule_steps: int | None = None
    schedule_epochs: float | None = None
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # of the schedule's horizon
    grad_clip: float = 5.0
    prompts_per_step: int = 4  # per process
    grad_accum: int = 1


@dataclass
class SFTConfig:
    train_file: str = ""  # CoT records (Video-R1-COT) or LLaVA conversations
    answer: str = "gold"  # gold | mask | random: what the answer slot teaches (framethink.sft.trainer)


@dataclass
class EvalConfig:
    test_file: str = ""
    temperature: float = 0.1
    top_p: float = 0.001
    max_new_tokens: int = 1024
    batch_size: int = 8


@dataclass
class RunConfig:
    out: str = "runs/train"
    max_steps: int = 100
    save_every: int = 50
    log_every: int = 1
    sample_every: int = 10
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    keep_checkpoints: int = 0  # keep the newest N checkpoints; 0 keeps all
    max_nonfinite_steps: int = 3  # consecutive skipped (non-finite) updates that stop the run; 0 never stops
    shared_filesystem: bool = True  # false: each node writes its own checkpoints and export (docs/multi-gpu.md)
    check_data: bool = True  # every record's media opens, checked before the model loads (--skip-data-check)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not of type {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (valid keys in {prefix or 'the top level'}: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested mapping in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = _parse_yaml(raw)


def read_recipe(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """A recipe file (none: an empty one) as a mapping, parsed as every recipe is (`1e-3` is a number), with
    `key=value` overrides applied; the caller types it with `from_dict`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        data = _parse_yaml(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path}: the top level must be a mapping")
    for override in overrides:
        apply_override(data, override)
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Load a recipe YAML, apply overrides, validate every key and value."""
    data = read_recipe(path, overrides)
    config = from_dict(TrainConfig, data)
    validate(config)
    return config


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.frame_rule": ("qwen", "uniform", "qwen3"),
    "rl.algorithm": ("grpo", "tgrpo"),
    "rl.normalization": ("sequence", "constant", "token"),  # or unset: the policy loss's own
    "optim.schedule": ("cosine", "linear", "constant"),
    "sft.answer": ("gold", "mask", "random"),
}
REPORT_BACKENDS = ("tensorboard", "wandb", "none")


def validate(config: TrainConfig) -> None:
    """Value checks that types alone cannot express."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is not None and value not in choices:  # None: an optional key left unset
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    rl = config.rl
    if rl.num_generations < 2:
        raise ConfigError("rl.num_generations: a group needs at least 2 completions")
    if rl.algorithm == "tgrpo" and rl.num_shuffled < 1:
        raise ConfigError("rl.num_shuffled: T-GRPO needs at least 1 shuffled completion")
    if rl.beta < 0:
        raise ConfigError("rl.beta: must be >= 0")
    if rl.max_sampling_rounds < 0:
        raise ConfigError("rl.max_sampling_rounds: must be >= 0")
    optim = config.optim
    if optim.schedule_steps is not None and optim.schedule_epochs is not None:
        raise ConfigError("optim.schedule_steps and optim.schedule_epochs both set: the horizon is one of them")
    if optim.schedule_steps is not None and optim.schedule_steps < 1:
        raise ConfigError(f"optim.schedule_steps: must be >= 1, got {optim.schedule_steps}")
    if optim.schedule_epochs is not None and optim.schedule_epochs <= 0:
        raise ConfigError(f"optim.schedule_epochs: must be > 0, got {optim.schedule_epochs}")
    for name in ("keep_checkpoints", "max_nonfinite_steps"):
        if getattr(config.run, name) < 0:
            raise ConfigError(f"run.{name}: must be >= 0, got {getattr(config.run, name)}")
    for backend in config.run.report_to:
        if backend not in REPORT_BACKENDS:
            raise ConfigError(f"run.report_to: {backend!r} is not one of {', '.join(REPORT_BACKENDS)}")
    from framethink.data.prompts import get_template
    from framethink.rewards import get_reward, reward_components
    from framethink.rl.advantages import get_advantage
    from framethink.rl.loss import get_policy_loss

    try:
        get_template(config.data.template)
    except ConfigError as err:
        raise ConfigError(f"data.template: {err}") from None
    for i, spec in enumerate(rl.rewards):
        try:
            inspect.signature(get_reward(spec.name)).bind(None, **spec.params)  # None: the completion group
        except (ConfigError, TypeError) as err:
            raise ConfigError(f"rl.rewards[{i}] ({spec.name}): {err}") from None
    for key, lookup in (("rl.advantage", get_advantage), ("rl.loss", get_policy_loss)):
        try:
            lookup(getattr(rl, key.split(".")[1]))
        except ConfigError as err:
            raise ConfigError(f"{key}: {err}") from None
    if rl.algorithm == "tgrpo" and not any("accuracy" in reward_components(s.name) for s in rl.rewards):
        raise ConfigError("rl.rewards: T-GRPO compares the accuracy of ordered and shuffled completions, and no "
                          "reward of the recipe reports one (add {name: accuracy})")


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
