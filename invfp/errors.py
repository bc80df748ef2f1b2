"""The invfp error hierarchy.

Every error invfp raises on purpose derives from :class:`InvfpError`; the CLI turns
these into a one-line message and a non-zero exit code. Errors about bad values also
derive from :class:`ValueError` so that ordinary Python code can catch them as such.
"""

from __future__ import annotations


class InvfpError(Exception):
    """Base class of all errors raised by invfp on purpose."""

    exit_code: int = 1


class ConfigError(InvfpError, ValueError):
    """A component or command was given an invalid parameter value."""

    exit_code = 2


class InputError(InvfpError, ValueError):
    """Input data (structures, fingerprints, files) is malformed or inconsistent."""

    exit_code = 2


class PluginError(InvfpError):
    """A plugin is broken: it failed to load or implements a hook that does not exist."""


class UnknownComponentError(InvfpError, KeyError):
    """No component of that kind is registered under that name."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(PluginError):
    """Two plugins registered the same component name for the same kind."""


class DataError(InvfpError):
    """A data set could not be made, read or cached."""


class ModelLoadError(InvfpError):
    """A saved model directory is missing, incomplete, incompatible or tampered with."""


class OptionalDependencyError(InvfpError, ImportError):
    """A component needs an optional dependency that is not installed."""

    def __init__(self, package: str, extra: str, component: str) -> None:
        super().__init__(
            f"{component} needs the optional package {package!r}; install it with "
            f"`pip install 'invfp[{extra}]'`"
        )
        self.package = package
        self.extra = extra
