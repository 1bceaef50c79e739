"""The command line of every entry point: `python jobs/<name>.py key=value ...` (or
`python -m jobs.<name> ...`), parsed here and nowhere else.

Each value is converted to its declared type by `e2e.typed.from_text` (not by fire, which would
turn `1e6` into a float and `1,2` into a tuple); an unknown key fails with the list of valid
ones, and `run` turns a `ConfigError` into one line on stderr and exit status 1. Each entry
point takes the fields of its own options dataclass; `submit.py`'s and `stage.py`'s (run options,
grid axes, config fields) are `jobs.plan.options`. Imports no room of `jobs/`: every room's main
and every entry point stands on it.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable
from typing import Any

from e2e.typed import ConfigError, from_text


def split_tokens(tokens, positional: bool = False) -> tuple[list[tuple[str, str]], list[str]]:
    """(key, text) pairs of `key=value` tokens (a leading `--` is dropped), and the bare tokens
    when the entry point takes positional values (else a bare token is an error)."""
    pairs, bare = [], []
    for token in map(str, tokens):
        key, sep, text = token.partition("=")
        if sep and not key.strip():
            raise ConfigError(f"argument {token!r} has no key")
        if not sep:
            if positional:
                bare.append(token)
                continue
            raise ConfigError(f"argument {token!r} is not key=value")
        pairs.append((key.strip().lstrip("-"), text))
    return pairs, bare


def parse_options(tokens, cls: type, positional: str | None = None) -> Any:
    """The options dataclass `cls` from `key=value` tokens; with `positional`, bare tokens
    fill that (tuple) field."""
    types_ = typing.get_type_hints(cls)
    pairs, bare = split_tokens(tokens, positional is not None)
    values: dict[str, Any] = {}
    for key, text in pairs:
        if key not in types_:
            raise ConfigError(f"unknown key {key!r}; valid keys: {sorted(types_)}")
        values[key] = from_text(types_[key], text, key)
    if bare:
        values[positional] = values.get(positional, ()) + tuple(bare)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing {', '.join(f'{m}=' for m in missing)}")
    return cls(**values)


class StepIncomplete(RuntimeError):
    """A step wrote what it could; the message says in one line what it could not (the job
    then exits 1, so SLURM and a shell see it)."""


def run(main: Callable[..., Any]) -> None:
    """Runs an entry point `main(*tokens)` through fire; bad input is one line, no traceback.

    Without fire, the arguments go to `main` as they are: the host side of
    `slurm/array.sbatch` runs `jobs.plan.containers` under the node's plain python3 (standard
    library only, which is all this module and `e2e.config` need)."""
    try:
        import fire
    except ImportError:
        fire = None
    # `--key=value` is `key=value`: handed to fire as a flag it would be dropped from `main`
    argv = [a[2:] if a.startswith("--") and "=" in a else a for a in sys.argv[1:]]
    if argv in (["--help"], ["-h"]):  # the entry point's own docstring, not fire's
        print((sys.modules[main.__module__].__doc__ or "").strip())
        return
    try:
        if fire is None:
            main(*argv)
        else:
            fire.Fire(main, command=argv)
    except (ConfigError, OSError, StepIncomplete) as e:  # bad input, a root that cannot be
        sys.exit(f"error: {e}")                          # written, or a part left undone
