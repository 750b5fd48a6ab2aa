"""Quantization recipes: typed, backend-agnostic data under ``recipes/*.yaml``.

A recipe says *what* precision each weight gets, never *how* a backend packs it. Backends translate it
(``edgepack.backends.*``) and report any rule they cannot honour.

Precedence, in one sentence: the token embedding follows ``embedding`` and the output projection follows
``lm_head``; every other linear layer takes the first rule whose ``match`` glob matches its module name, and a
layer no rule matches keeps the recipe's ``dtype``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgepack.config import Strict, load, shipped_or_path
from edgepack.errors import RecipeError
from edgepack.paths import shipped_dir

Bits = Literal[4, 8, 16, 32]


class WeightQuant(Strict):
    """How one weight tensor is stored. bits 16/32 mean a float dtype; 4/8 an integer format."""

    bits: Bits
    group_size: int | None = Field(None, description="block size along the input dim; null = per channel")
    symmetric: bool = True
    format: Literal["linear", "palette"] = "linear"
    activations: Literal["none", "int8_dynamic"] = "none"

    @model_validator(mode="after")
    def _check(self) -> WeightQuant:
        problems = []
        if self.group_size is not None and (self.group_size < 8 or self.group_size & (self.group_size - 1)):
            problems.append(f"group_size must be a power of two >= 8 or null, got {self.group_size}")
        if self.bits >= 16 and (self.group_size is not None or self.format != "linear"):
            problems.append("group_size and format apply only to 4- and 8-bit weights")
        if self.bits >= 16 and self.activations != "none":
            problems.append("int8_dynamic activations need 4- or 8-bit weights")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_float(self) -> bool:
        return self.bits >= 16

    def describe(self) -> str:
        if self.is_float:
            return f"fp{self.bits}"
        group = f"g{self.group_size}" if self.group_size else "per-channel"
        kind = "palette" if self.format == "palette" else ("sym" if self.symmetric else "asym")
        act = "+int8 dyn act" if self.activations == "int8_dynamic" else ""
        return f"int{self.bits} {group} {kind}{act}"


class Method(Strict):
    """How the integer codes are found (``edgepack.codes``). Every backend packs the same codes."""

    name: Literal["rtn", "gptq"] = Field("rtn", description="rtn: round to nearest; gptq: calibrated (GPTQ)")
    clip_search: bool = Field(False, description="search each group's clipping (scale) for the least error")
    act_order: bool = Field(True, description="gptq: visit columns by decreasing activation")
    damping: float = Field(0.01, gt=0, lt=1, description="gptq: fraction of mean(diag H) added to the diagonal")
    samples: int = Field(128, ge=1, le=4096, description="gptq: calibration windows")
    seq_len: int = Field(256, ge=16, le=8192, description="gptq: tokens per calibration window")

    @model_validator(mode="after")
    def _check(self) -> Method:
        fields = type(self).model_fields
        gptq_only = [k for k in ("act_order", "damping", "samples", "seq_len") if getattr(self, k) != fields[k].default]
        if self.name == "rtn" and gptq_only:
            raise ValueError(f"{', '.join(gptq_only)} apply only to method gptq")
        return self

    @property
    def calibrated(self) -> bool:
        return self.name == "gptq"

    def describe(self) -> str:
        if self.name == "rtn":
            return "rtn" + (" + clip search" if self.clip_search else "")
        extras = [f"{self.samples}x{self.seq_len} tokens", f"damping {self.damping:g}"]
        extras += ["act-order"] * self.act_order + ["clip search"] * self.clip_search
        return f"gptq ({', '.join(extras)})"


class Rule(Strict):
    match: str = Field(description="glob against the module's name, e.g. 'model.layers.*.mlp.*'")
    weights: WeightQuant


class ParityThresholds(Strict):
    """What an export of this recipe must meet against the fp32 reference (checked by ``edgepack parity``)."""

    max_abs_diff: float | None = Field(None, ge=0)
    min_cosine: float | None = Field(None, ge=-1, le=1)
    min_top1: float | None = Field(None, ge=0, le=1, description="fraction of positions whose argmax agrees")
    min_top5_overlap: float | None = Field(None, ge=0, le=1)
    max_kl: float | None = Field(None, ge=0, description="mean KL(reference || export), nats")
    min_greedy_agreement: float | None = Field(None, ge=0, le=1, description="fraction of greedy tokens that agree")


def check_thresholds(thresholds: dict | None) -> ParityThresholds:
    """Overrides of a recipe's thresholds (``--min-top1`` and friends), checked before anything runs."""
    from edgepack.config import validate
    from edgepack.errors import ConfigError

    given = {k: v for k, v in (thresholds or {}).items() if v is not None}
    try:
        return validate(ParityThresholds, given, "parity thresholds")
    except ConfigError as exc:  # name them as the command line does
        raise ConfigError("parity thresholds", [f"--{p.replace('_', '-')}" for p in exc.problems]) from None


class Recipe(Strict):
    name: str
    description: str = ""
    dtype: Literal["float32", "float16"] = "float32"
    rules: list[Rule] = Field(default_factory=list)
    embedding: WeightQuant | None = Field(None, description="null = keep at dtype")
    lm_head: WeightQuant | None = Field(None, description="null = keep at dtype")
    method: Method = Method()
    parity: ParityThresholds = ParityThresholds()

    def for_module(self, name: str) -> WeightQuant | None:
        """The quantization a linear module gets, per the precedence rule in the module docstring."""
        if name == "lm_head" or name.endswith(".lm_head"):
            return self.lm_head
        if name.endswith("embed_tokens"):
            return self.embedding
        for rule in self.rules:
            if fnmatch.fnmatchcase(name, rule.match):
                return rule.weights
        return None

    def settings(self):
        """(where, WeightQuant) for each setting the recipe states: each rule, the embedding, the lm_head."""
        for rule in self.rules:
            yield f"rule {rule.match!r}", rule.weights
        if self.embedding is not None:
            yield "embedding", self.embedding
        if self.lm_head is not None:
            yield "lm_head", self.lm_head

    @property
    def weight_bits(self) -> int:
        """The smallest bit width any linear rule uses (what a manifest reports as the artifact's bits)."""
        bits = [r.weights.bits for r in self.rules] or [16 if self.dtype == "float16" else 32]
        return min(bits)

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def codes_digest(self) -> str:
        """What decides the integer codes (rules, embedding, lm_head, method): not the name, dtype or thresholds."""
        import hashlib

        return hashlib.sha256(self.model_dump_json(include={"rules", "embedding", "lm_head", "method"}).encode()).hexdigest()

    @property
    def quantizes(self) -> bool:
        """True when some weight gets integer codes."""
        return any(not q.is_float and q.format == "linear" for _, q in self.settings())

    def symmetric_variant(self) -> Recipe:
        """This recipe with every integer setting symmetric: what a backend without zero points (XNNPACK) gets."""
        def sym(q: WeightQuant | None):
            return q if q is None or q.is_float else q.model_copy(update={"symmetric": True})

        rules = [r.model_copy(update={"weights": sym(r.weights)}) for r in self.rules]
        return self.model_copy(update={"rules": rules, "embedding": sym(self.embedding), "lm_head": sym(self.lm_head)})


def recipes_dir() -> Path:
    return shipped_dir("recipes")


def available() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or any recipe file by path."""
    path = shipped_or_path(name_or_path, recipes_dir(), "recipe", RecipeError)
    return load(Recipe, path, RecipeError)
