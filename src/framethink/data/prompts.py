"""Prompt templates (docs/data.md, "Prompts").

The strings are data in `framethink/templates/prompts.yaml`, quoted exactly as the reference code
has them. Templates: `video-r1` (RL training), `video-r1-eval` (evaluation and CoT generation wording),
`tinyllava-r1` and `option` (answer with the letter directly).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from framethink.data.records import Record
from framethink.errors import ConfigError

@dataclass(frozen=True)
class PromptTemplate:
    """One named template: `choices` inlines MC options ({problem}, {options}), `prompt` wraps the
    question ({Question}), `suffix` maps each problem type it formats to the text appended after."""

    name: str
    choices: str
    prompt: str
    suffix: dict[str, str]


@cache
def _data() -> dict:
    text = resources.files("framethink").joinpath("templates/prompts.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def get_template(name: str) -> PromptTemplate:
    """The named template; unknown names raise ConfigError listing the known ones."""
    templates = _data()["templates"]
    if name not in templates:
        raise ConfigError(f"unknown prompt template {name!r}; known: {', '.join(templates)}")
    return PromptTemplate(name=name, **templates[name])


def sft_system() -> str:
    """The explicit system message of Video-R1's CoT SFT (docs/data.md, "Prompts")."""
    return _data()["sft_system"]


def format_question(record: Record, template: str) -> str:
    """The user text for a record (docs/data.md, "Prompts"): the question (MC options inlined as the template says),
    wrapped by the template's prompt, then the suffix of the record's problem type."""
    tpl = get_template(template)
    if record.problem_type not in tpl.suffix:
        raise ConfigError(f"prompt template {template!r} formats only {', '.join(tpl.suffix)} records; "
                          f"{record.origin or record.id} is {record.problem_type!r}")
    question = record.question
    if record.problem_type == "multiple choice" and record.options:  # no options: the question already lists them
        question = tpl.choices.format(problem=record.question, options="\n".join(record.options))
    return tpl.prompt.format(Question=question) + tpl.suffix[record.problem_type]


def build_messages(record: Record, template: str, *, system: str | None = None) -> list[dict]:
    """Qwen content-list chat messages for one record: an optional system message, then one user turn
    holding the media placeholder (video, image or none) and the text of `format_question`."""
    media = [] if record.media_kind == "text" else [{"type": record.media_kind}]  # "video" or "image"
    user = {"role": "user", "content": [*media, {"type": "text", "text": format_question(record, template)}]}
    if system is None:
        return [user]
    return [{"role": "system", "content": [{"type": "text", "text": system}]}, user]


def sft_target(record: Record) -> str:
    """The CoT-SFT assistant text `process + "\\n" + solution` (docs/data.md, "Prompts")."""
    if record.cot is None:
        raise record.error("process", "an SFT record needs a <think> process")
    return record.cot + "\n" + record.solution
