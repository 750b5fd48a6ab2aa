"""The cloud fallback: typed, validated config for when a request cannot (or should not) run on the device.

The cloud side is Hugging Face Inference Providers: one OpenAI-compatible API (``POST {endpoint}/chat/completions``)
where a suffix on the model id picks the provider (``:fastest``, ``:cheapest``, ``:preferred`` or
``:<provider-id>``). A fallback config never holds a token: the app either calls its own ``proxy`` (which adds
the token and ``X-HF-Bill-To``) or signs the user in with Hugging Face OAuth (scope ``inference-api``).

Sources, later wins: defaults, a YAML/JSON file, command-line flags. Every problem is reported at once.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from edgepack.config import Strict, read_data, validate
from edgepack.errors import ConfigError
from edgepack.secrets import scan_data

DEFAULT_ENDPOINT = "https://router.huggingface.co/v1"
MODES = ("prefer_on_device", "on_device_only", "prefer_cloud", "cloud_only")
POLICIES = ("fastest", "cheapest", "preferred")
THERMAL_STATES = ("nominal", "fair", "serious", "critical")  # iOS ProcessInfo.ThermalState order
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@functools.cache
def provider_ids() -> tuple[str, ...]:
    """The providers a fallback may name: those the installed huggingface_hub serves chat completions from (its
    per-provider task table, which it keeps in step with the router), less ``openai``, which huggingface_hub
    calls directly with an OpenAI key, never through the router. Derived, not copied: a hand-kept list drifted."""
    from huggingface_hub.inference._providers import PROVIDERS

    return tuple(sorted(p for p, tasks in PROVIDERS.items() if "conversational" in tasks and p != "openai"))


class Provider(Strict):
    id: str
    timeout_s: float | None = Field(None, gt=0, description="per-attempt timeout for this provider")

    @field_validator("id")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in provider_ids():
            raise ValueError(f"unknown provider {value!r}; known providers: {', '.join(provider_ids())}")
        return value


class CloudModel(Strict):
    id: str | None = Field(None, description="hub id without suffix; null = the exported model (twin 'same')")
    twin: Literal["same", "larger"] = Field(
        "same", description="the exported model unquantized, or a sibling"
    )
    policy: Literal["fastest", "cheapest", "preferred"] | None = None
    providers: list[Provider] = Field(default_factory=list, description="ordered; tried in turn")

    @field_validator("providers", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # "groq" is short for {"id": "groq"}.
        return [{"id": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("id")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if ":" in value:
            raise ValueError(
                f"{value!r}: put the provider policy in 'policy' or 'providers', not a ':' suffix"
            )
        if not _HUB_ID.match(value):
            raise ValueError(f"{value!r} is not a hub model id (owner/name)")
        return value

    @model_validator(mode="after")
    def _one_policy(self) -> CloudModel:
        if self.policy and self.providers:
            raise ValueError("set either 'policy' or 'providers', not both")
        if self.twin == "larger" and not self.id:
            raise ValueError("twin 'larger' needs the sibling's hub id in 'id'")
        return self

    def candidates(self, model_id: str, default_timeout: float) -> list[dict]:
        """The model strings to try, in order, each with its per-attempt timeout."""
        if not self.providers:
            return [{"model": f"{model_id}:{self.policy or 'fastest'}", "timeout_s": default_timeout}]
        return [
            {"model": f"{model_id}:{p.id}", "timeout_s": p.timeout_s or default_timeout}
            for p in self.providers
        ]


class Triggers(Strict):
    """What sends a request off the device. Hard blockers (the device cannot serve) and soft ones (it should not)."""

    context_overflow: bool = Field(True, description="prompt + requested tokens beyond the on-device context")
    low_memory: bool = Field(True, description="free memory below the artifact's estimated peak")
    no_artifact: bool = Field(True, description="no artifact fits this device")
    runtime_error: bool = Field(True, description="the on-device runtime failed")
    not_downloaded: bool = Field(True, description="the artifact is not on the device yet")
    thermal_state: Literal["fair", "serious", "critical"] | None = Field(
        "serious", description="fall back at this thermal state or worse; null = never"
    )
    low_power_mode: bool = True
    battery_below: float | None = Field(
        0.2, ge=0, le=1, description="battery fraction (not charging); null = never"
    )


class Retries(Strict):
    count: int = Field(2, ge=0, le=10, description="retries per provider after the first attempt")
    backoff_s: float = Field(0.5, ge=0, le=60)
    backoff_multiplier: float = Field(2.0, ge=1, le=10)
    max_backoff_s: float = Field(8.0, ge=0, le=300)
    statuses: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504])
    honour_retry_after: bool = True

    @field_validator("statuses")
    @classmethod
    def _retryable(cls, value: list[int]) -> list[int]:
        bad = [s for s in value if s != 429 and not 500 <= s <= 599]
        if bad:
            raise ValueError(f"only 429 and 5xx are retryable, got {bad}")
        return sorted(set(value))


class Auth(Strict):
    kind: Literal["proxy", "user_oauth"]
    proxy_url: str | None = Field(
        None, description="the app's backend; it adds the HF token and X-HF-Bill-To"
    )
    scope: Literal["inference-api"] = "inference-api"

    @model_validator(mode="after")
    def _check(self) -> Auth:
        if self.kind == "proxy" and not self.proxy_url:
            raise ValueError("auth kind 'proxy' needs proxy_url (your backend's OpenAI-compatible base URL)")
        if self.kind == "user_oauth" and self.proxy_url:
            raise ValueError("proxy_url applies only to auth kind 'proxy'")
        if self.proxy_url:
            _check_url(self.proxy_url)
        return self


class Privacy(Strict):
    cloud_allowed: bool = True
    history_leaves_device: bool = Field(False, description="may earlier turns of the conversation be sent")


class Fallback(Strict):
    mode: Literal["prefer_on_device", "on_device_only", "prefer_cloud", "cloud_only"] = "prefer_on_device"
    triggers: Triggers = Triggers()
    endpoint: str = DEFAULT_ENDPOINT
    model: CloudModel = CloudModel()
    retries: Retries = Retries()
    attempt_timeout_s: float = Field(20.0, gt=0, le=600)
    deadline_s: float = Field(60.0, gt=0, le=3600, description="overall, retries and providers included")
    stream: bool = True
    auth: Auth | None = None
    bill_to: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][\w.-]*$", description="org billed (X-HF-Bill-To)"
    )
    privacy: Privacy = Privacy()

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _check_url(value)

    @model_validator(mode="after")
    def _coherent(self) -> Fallback:
        problems = []
        if self.uses_cloud and self.auth is None:
            problems.append(
                f"mode {self.mode} calls the cloud: set auth.kind to 'proxy' (with proxy_url) or 'user_oauth'"
            )
        if not self.privacy.cloud_allowed and self.mode in ("prefer_cloud", "cloud_only"):
            problems.append(f"mode {self.mode} contradicts privacy.cloud_allowed: false")
        if self.deadline_s < self.attempt_timeout_s:
            problems.append(
                f"deadline_s ({self.deadline_s}) is shorter than attempt_timeout_s ({self.attempt_timeout_s})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def uses_cloud(self) -> bool:
        return self.mode != "on_device_only" and self.privacy.cloud_allowed

    def to_manifest(self, exported_model_id: str | None, family_default: str | None = None) -> dict:
        """The manifest's fallback section: this config plus the resolved cloud model and its candidates.

        The cloud model: ``model.id`` when set, else the exported model's hub id, else ``family_default`` (an
        instruct model of the same family that providers serve; ``model.id_source`` says which)."""
        data = self.model_dump(mode="json")
        model_id, source = self.cloud_model(exported_model_id, family_default)
        if self.uses_cloud and model_id is None:
            hint = f"model.id: the exported model {exported_model_id!r} is not a hub id; name the cloud model"
            raise ConfigError("fallback", [f"{hint} with --fallback-model owner/name"])
        data["model"]["id"] = model_id
        data["model"]["id_source"] = source
        if source == "family_default":
            data["model"]["twin"] = "larger"  # a sibling, not the exported model itself
        if not self.model.providers:
            data["model"]["policy"] = self.model.policy or "fastest"
        data["candidates"] = (
            self.model.candidates(model_id, self.attempt_timeout_s) if self.uses_cloud else []
        )
        return data

    def cloud_model(self, exported: str | None, family_default: str | None) -> tuple[str | None, str | None]:
        """(hub id, where it came from: config | checkpoint | family_default), or (None, None)."""
        if self.model.id:
            return self.model.id, "config"
        if exported and _HUB_ID.match(exported):
            return exported, "checkpoint"
        if family_default:
            return family_default, "family_default"
        return None, None  # a local folder's "id" is a name, not a hub id: no cloud model to name


def default() -> Fallback:
    """What an export's manifest carries when no fallback was configured: the device first, the Inference
    Providers router when it cannot serve (the context overflows, memory is low, no artifact fits, ...), the user
    signed in with Hugging Face OAuth (no token in the app). ``--fallback-mode on_device_only`` opts out."""
    return Fallback(mode="prefer_on_device", auth=Auth(kind="user_oauth"))


def disabled() -> Fallback:
    """On-device only: the device serves every request or none."""
    return Fallback(mode="on_device_only", privacy=Privacy(cloud_allowed=False))


def _check_url(value: str) -> str:
    url = urlparse(value)
    if url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK):
        if url.username or url.password or url.query:
            raise ValueError(f"{value!r}: no credentials or query strings in URLs")
        return value.rstrip("/")
    raise ValueError(f"{value!r} must be an https URL (http only for loopback testing)")


def fallback_from_data(data: Any, source: str) -> Fallback:
    """Validate parsed YAML/JSON; token-like values are reported together with every other problem."""
    secrets = [
        f"{f.where}: looks like a {f.kind} {f.excerpt}; never put a token in a fallback config (use auth.kind "
        "'proxy' or 'user_oauth')"
        for f in scan_data(data)
    ]
    try:
        fallback = validate(Fallback, data, source)
    except ConfigError as exc:
        raise ConfigError(source, secrets + exc.problems) from None
    if secrets:
        raise ConfigError(source, secrets)
    return fallback


def load_fallback(path: str | Path) -> Fallback:
    path = Path(path)
    return fallback_from_data(read_data(path), str(path))


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` (from flags) into ``base`` (from a file)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out
