"""Fallback flags shared by the commands that write a manifest (``export``, ``demo``, ...).

Use: decorate the command with ``@fallback_options``, then ``fallback = fallback_from_cli(**kwargs)``
(None when no fallback flag was given: the manifest then records the device-only default).
"""

from __future__ import annotations

from pathlib import Path

import click

from edgepack.config import read_data
from edgepack.errors import ConfigError
from edgepack.fallback import MODES, POLICIES, fallback_from_data, merge

_OPTIONS = [
    click.option("--fallback-config", "fallback_config", type=click.Path(dir_okay=False),
                 help="Fallback YAML/JSON file (see examples/fallback.yaml); flags below override it."),
    click.option("--fallback-mode", type=click.Choice(MODES), help="When requests go to the cloud."),
    click.option("--fallback-model", help="Cloud model (hub id owner/name); default: the exported model."),
    click.option("--cloud-twin", type=click.Choice(["same", "larger"]),
                 help="The cloud model is the exported one unquantized (same) or a larger sibling."),
    click.option("--providers", help=f"{'|'.join(POLICIES)}, or an ordered list: groq=10,together (=timeout s)."),
    click.option("--fallback-endpoint", help="Inference Providers base URL (default https://router.huggingface.co/v1)."),
    click.option("--fallback-auth", type=click.Choice(["proxy", "user_oauth"]), help="How the app authenticates."),
    click.option("--proxy-url", help="Your backend's URL (auth proxy): it adds the token and X-HF-Bill-To."),
    click.option("--bill-to", help="Organisation billed for cloud requests (X-HF-Bill-To)."),
    click.option("--fallback-retries", type=int, help="Retries per provider on 429/5xx."),
    click.option("--fallback-timeout", type=float, help="Per-attempt timeout, seconds."),
    click.option("--fallback-deadline", type=float, help="Overall deadline per request, seconds."),
    click.option("--fallback-stream/--no-fallback-stream", default=None, help="Stream cloud answers (SSE)."),
    click.option("--cloud/--no-cloud", "cloud_allowed", default=None, help="Whether the cloud may be used at all."),
]  # fmt: skip
FALLBACK_PARAMS = (
    "fallback_config", "fallback_mode", "fallback_model", "cloud_twin", "providers", "fallback_endpoint",
    "fallback_auth", "proxy_url", "bill_to", "fallback_retries", "fallback_timeout", "fallback_deadline",
    "fallback_stream", "cloud_allowed",
)  # fmt: skip


def fallback_options(fn):
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def fallback_from_cli(**kwargs):
    """A validated ``Fallback`` from the flags (over the file, if given), or None if no flag was given."""
    values = {k: kwargs.get(k) for k in FALLBACK_PARAMS}
    if all(v is None for v in values.values()):
        return None
    base, source = {}, "command-line fallback flags"
    if values["fallback_config"]:
        path = Path(values["fallback_config"])
        base, source = read_data(path) or {}, f"{path} + flags"
    return fallback_from_data(merge(base, _overrides(values, source)), source)


def _overrides(v: dict, source: str) -> dict:
    out: dict = {}
    _put(out, ("mode",), v["fallback_mode"])
    _put(out, ("model", "id"), v["fallback_model"])
    _put(out, ("model", "twin"), v["cloud_twin"])
    if v["providers"]:
        out.setdefault("model", {}).update(_providers(v["providers"], source))
    _put(out, ("endpoint",), v["fallback_endpoint"])
    if v["fallback_auth"] or v["proxy_url"]:
        _put(out, ("auth", "kind"), v["fallback_auth"] or "proxy")
        _put(out, ("auth", "proxy_url"), v["proxy_url"])
    _put(out, ("bill_to",), v["bill_to"])
    _put(out, ("retries", "count"), v["fallback_retries"])
    _put(out, ("attempt_timeout_s",), v["fallback_timeout"])
    _put(out, ("deadline_s",), v["fallback_deadline"])
    _put(out, ("stream",), v["fallback_stream"])
    _put(out, ("privacy", "cloud_allowed"), v["cloud_allowed"])
    return out


def _put(out: dict, path: tuple[str, ...], value) -> None:
    if value is None:
        return
    for key in path[:-1]:
        out = out.setdefault(key, {})
    out[path[-1]] = value


def _providers(text: str, source: str) -> dict:
    """``fastest`` -> a policy; ``groq=10,together`` -> an ordered provider list with optional timeouts."""
    if text in POLICIES:
        return {"policy": text, "providers": []}
    providers, problems = [], []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, timeout = item.partition("=")
        try:
            providers.append({"id": name, **({"timeout_s": float(timeout)} if timeout else {})})
        except ValueError:
            problems.append(f"--providers: timeout of {name!r} must be a number of seconds, got {timeout!r}")
    if problems:
        raise ConfigError(source, problems)
    return {"policy": None, "providers": providers}
