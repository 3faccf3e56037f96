"""Options and error handling shared by the `omnisift-edge` commands, declared once."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from omnisift_edge.errors import UsageError


def _user_errors(func=None, *, interrupted: str = "interrupted"):
    """Turn UsageError into click's one-line error (exit 1); Ctrl-C into `interrupted` (exit 130).

    A user-fixable OSError (full disk, permissions, a path through a file) is one line too.
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except UsageError as exc:
                raise click.ClickException(str(exc)) from None
            except OSError as exc:
                from omnisift_edge.paths import filesystem_error

                error = filesystem_error(exc)
                if error is None:
                    raise
                raise click.ClickException(str(error)) from None
            except KeyboardInterrupt:
                click.echo(interrupted, err=True)
                sys.exit(130)

        return wrapper

    return decorate(func) if func is not None else decorate


def _options(*decorators):
    """Several click options as one decorator (applied in the order listed)."""

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def model_options(*, compressor_help: str = "Selector checkpoint (safetensors/pt) overriding the one in the model folder."):
    """--model, --compressor, --compressor-heads, --model-seed: where the model comes from (model.load.ModelSource)."""
    return _options(
        click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
                     help="Local Qwen2.5-Omni folder (full, thinker-only or OmniSIFT). Default: the embedded tiny model."),
        click.option("--compressor", type=click.Path(path_type=Path), default=None, help=compressor_help),
        click.option("--compressor-heads", type=int, default=None,
                     help="Attention heads of the selector (not in the weights). Default: recorded by train, "
                          "else the folder's, else 8."),
        click.option("--model-seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the embedded default model (used without --model)."),
    )


def resolution_option(default: str):
    return click.option("--resolution", default=default, show_default=True, help="Frame HxW, multiples of 28.")


def _targets() -> list[str]:
    from omnisift_edge.engines.presets import TARGETS

    return list(TARGETS)


def built_target(ctx, param, value):
    """Click callback for a --target/--engine naming built engines: a preset, or `sm_XY` (what `build
    --target auto` records on a GPU without a preset); anything else is refused before the export is read,
    so no message suggests building a target that does not exist."""
    import re

    from omnisift_edge.engines.presets import PRESETS

    if value is None or value in PRESETS or re.fullmatch(r"sm_\d+", value):
        return value
    raise click.ClickException(f"unknown --target {value!r}; engines are built for one of {', '.join(PRESETS)} "
                             "(or sm_XY, what build --target auto records on a GPU without a preset)")


def _precisions() -> list[str]:
    from omnisift_edge.engines.presets import PRECISIONS

    return list(PRECISIONS)


def _parse_ratios(ratio: float | None, ratios: str | None) -> tuple[float, ...]:
    """--ratio or --ratios (never both, never an empty list); neither: the default 0.25."""
    if ratio is not None and ratios is not None:
        raise UsageError("give --ratio or --ratios, not both (put every ratio in --ratios, e.g. --ratios 1,0.25)")
    if ratios is None:
        return (0.25,) if ratio is None else (ratio,)
    try:
        values = [float(v) for v in ratios.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--ratios must be numbers separated by commas, like 1,0.5,0.25 (got {ratios!r})") from None
    if not values:
        raise UsageError(f"--ratios needs at least one number, like 1,0.5,0.25 (got {ratios!r})")
    return tuple(values)
