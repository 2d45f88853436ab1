"""The engine's typed errors. Each carries a message meant for the person who gave the input.

    LabError                      any error the engine raises on purpose
      InputError (ValueError)     the input cannot be used: say what is wrong and what is allowed
        PromptError                 empty, too long, not text
        MethodError                 unknown method, impossible options
          OptionError                 one option: names it and its allowed values
        SamplingError               impossible sampling parameters
        TraceError                  a trace file that is malformed or not a trace
        ForkError                   a what-if fork that cannot be made (engine.fork re-exports it)
      ModelLoadError (RuntimeError) a model that cannot be loaded: why, and what to do

UI code catches `LabError` and shows its message; anything else is a bug, shown with an id
and logged with its traceback (ui.common.guard).
"""
from __future__ import annotations


class LabError(Exception):
    """An error the engine raises on purpose, with a readable message."""


class InputError(LabError, ValueError):
    """The input cannot be used."""


class PromptError(InputError):
    """The prompt cannot be decoded (empty, too long, not text)."""


class MethodError(InputError):
    """Impossible method parameters or an unusable configuration."""


class OptionError(MethodError):
    """One option's value is not allowed; the message names the option and the allowed values."""


class SamplingError(InputError):
    """Impossible sampling parameters."""


class TraceError(InputError):
    """A trace file is malformed or not a trace; the message says what is wrong."""


class ForkError(InputError):
    """A fork that cannot be made: the message says why and what is allowed."""


class ModelLoadError(LabError, RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def shorten(value, limit: int = 80) -> str:
    """repr() of a value, cut to `limit` characters, for error messages (never echo a huge input)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 12] + f"... ({len(text)} chars)"
