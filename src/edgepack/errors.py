"""The exception hierarchy. Library code raises these; only the CLI turns them into messages and exit codes.

Exit codes: 2 for bad input or a stage that cannot run (the user must change something), 1 for a parity or
verification failure (the artifact was built but must not ship).
"""


class EdgepackError(Exception):
    """Base class. The message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(EdgepackError):
    """A recipe, device profile or other YAML/JSON config is invalid. Carries every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(f"{source}: {self.problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{source}: {len(self.problems)} problems\n{lines}")


class RecipeError(ConfigError):
    """A quantization recipe is invalid or unknown."""


class CheckpointError(EdgepackError):
    """A checkpoint cannot be found, is unsafe to load, corrupt, or of an unsupported architecture."""


class ExportError(EdgepackError):
    """An export backend failed or cannot honour the request."""


class ArtifactError(EdgepackError):
    """An export folder has no artifacts, or one cannot be read or run."""


class ParityError(EdgepackError):
    """An export's outputs drifted past the recipe's thresholds."""

    exit_code = 1


class ManifestError(EdgepackError):
    """A manifest or bundle is malformed."""


class VerifyError(EdgepackError):
    """A bundle failed verification (digest mismatch, missing file, secret found)."""

    exit_code = 1
