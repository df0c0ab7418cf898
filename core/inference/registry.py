"""The model registry: every task and its ordered fallback chain.

Built-in tasks are below; ``INFERQ_TASKS`` adds tasks or replaces a task's chain, e.g.
``{"sentiment": {"chain": [{"tier": "primary", "adapter": "pkg.mod:Class"}, ...]}}``.
Torch-free on purpose: the API imports this to validate task names and must never pull in
torch. Tiers name their adapter as "module:Class" and are imported only when a worker loads them.

``INFERQ_RUNTIME`` swaps the built-in torch tiers for their ONNX Runtime twins (``auto`` decides
per machine, see ``onnx_transformer.choose_runtime``); a chain set in ``INFERQ_TASKS`` runs the
adapters it names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Literal

from core.config import get_settings
from core.inference.onnx_transformer import runtime_for

Tier = Literal["primary", "fallback", "rules"]  # also declared in core.config.TierConfig


@dataclass(frozen=True)
class TierSpec:
    tier: Tier
    adapter: str  # "module:Class"; the class has load(device=...) -> adapter with predict()


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    chain: tuple[TierSpec, ...]
    # What a result carries: label/score/scores, entities or embedding (schemas.jobs.ResultOut).
    outputs: tuple[str, ...] = ("label", "score", "scores")
    # The labels a result's `label` (or an entity's) can take; () where they are open-ended.
    # Literals here because the API must not import the adapters; tests hold them equal to them.
    labels: tuple[str, ...] = ()


# Lingua's languages (the langid primary serves all of them), by ISO 639-1 code.
LANGID_LABELS = (
    "af", "ar", "az", "be", "bg", "bn", "bs", "ca", "cs", "cy", "da", "de", "el", "en", "eo",
    "es", "et", "eu", "fa", "fi", "fr", "ga", "gu", "he", "hi", "hr", "hu", "hy", "id", "is",
    "it", "ja", "ka", "kk", "ko", "la", "lg", "lt", "lv", "mi", "mk", "mn", "mr", "ms", "nb",
    "nl", "nn", "pa", "pl", "pt", "ro", "ru", "sk", "sl", "sn", "so", "sq", "sr", "st", "sv",
    "sw", "ta", "te", "th", "tl", "tn", "tr", "ts", "uk", "ur", "vi", "xh", "yo", "zh", "zu",
)  # fmt: skip
# en_core_web_sm's entity labels (OntoNotes 5).
NER_LABELS = (
    "CARDINAL", "DATE", "EVENT", "FAC", "GPE", "LANGUAGE", "LAW", "LOC", "MONEY", "NORP",
    "ORDINAL", "ORG", "PERCENT", "PERSON", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART",
)  # fmt: skip


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="sentiment",
            description="Binary sentiment (negative/positive) of English text.",
            chain=(
                TierSpec("primary", "core.inference.transformer:SentimentTransformer"),
                TierSpec("fallback", "core.inference.light:TfidfSentiment"),
                TierSpec("rules", "core.inference.rules:VaderSentiment"),
            ),
            labels=("negative", "positive"),
        ),
        TaskSpec(
            name="topic",
            description="News topic of English text: world, sports, business or sci_tech "
            "(AG News's four sections).",
            chain=(
                TierSpec("primary", "core.inference.topic:TopicTransformer"),
                TierSpec("fallback", "core.inference.topic:TfidfTopic"),
            ),
            labels=("world", "sports", "business", "sci_tech"),
        ),
        TaskSpec(
            name="embed",
            description="384-d L2-normalised sentence embeddings (all-MiniLM-L6-v2).",
            chain=(TierSpec("primary", "core.inference.transformer:SentenceEmbedder"),),
            outputs=("embedding",),
        ),
        TaskSpec(
            name="ner",
            description="Named entities of English text (spaCy en_core_web_sm): text, label and "
            "character offsets into the input as sent. No fallback: a failure is reported.",
            chain=(TierSpec("primary", "core.inference.ner:SpacyEntities"),),
            outputs=("entities",),
            labels=NER_LABELS,
        ),
        TaskSpec(
            name="langid",
            description="Language of a text as an ISO 639-1 code, with the top 3 scores.",
            chain=(
                TierSpec("primary", "core.inference.langid:LinguaLangId"),
                TierSpec("fallback", "core.inference.langid:FastTextLangId"),
                # Decides only scripts that name one language; Latin text gets no answer here.
                TierSpec("rules", "core.inference.langid_rules:ScriptLangId"),
            ),
            labels=LANGID_LABELS,
        ),
    )
}


# The ONNX Runtime twin of each built-in torch tier that has one.
ONNX_TWINS = {
    "core.inference.transformer:SentimentTransformer": (
        "core.inference.onnx_transformer:OnnxSentimentTransformer"
    ),
    "core.inference.transformer:SentenceEmbedder": (
        "core.inference.onnx_transformer:OnnxSentenceEmbedder"
    ),
}


def _on_onnx(spec: TaskSpec) -> TaskSpec:
    chain = tuple(
        replace(tier, adapter=ONNX_TWINS.get(tier.adapter, tier.adapter)) for tier in spec.chain
    )
    return replace(spec, chain=chain)


def all_tasks() -> dict[str, TaskSpec]:
    """The built-in tasks on the configured runtime, with the configured ones laid over them."""
    configured = {
        name: TaskSpec(
            name=name,
            description=config.description,
            chain=tuple(TierSpec(tier.tier, tier.adapter) for tier in config.chain),
            # A configured chain for a built-in task answers in that task's shape.
            **(
                {"outputs": TASKS[name].outputs, "labels": TASKS[name].labels}
                if name in TASKS
                else {}
            ),
        )
        for name, config in get_settings().tasks.items()
    }
    builtin = TASKS
    if runtime_for(get_settings()) == "onnx":
        builtin = {name: _on_onnx(spec) for name, spec in TASKS.items()}
    return {**builtin, **configured}


def task_names() -> frozenset[str]:
    return frozenset(all_tasks())


def get_task(name: str) -> TaskSpec:
    return all_tasks()[name]


def adapter_class(tier: TierSpec) -> Any:
    """The adapter class of a tier. Adapter modules import torch only inside load()."""
    module_name, class_name = tier.adapter.split(":")
    return getattr(importlib.import_module(module_name), class_name)


@cache
def tier_version(task: str, tier: str) -> str | None:
    """A tier's model version from its files alone: what the cache keys on, known to the API
    without loading the model. None for an adapter that cannot tell without loading."""
    spec = next(t for t in get_task(task).chain if t.tier == tier)
    current_version = getattr(adapter_class(spec), "current_version", None)
    return str(current_version()) if current_version is not None else None
