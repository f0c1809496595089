"""The ``tradebus`` command: see and operate the bridge (``tradebus --help``).

Settings come from ``.env`` and the environment (REDIS_URL, CELERY_BROKER_URL, TRADEBUS_KEY_PREFIX...),
overridden by the options given before the command name. Errors end in one line on stderr and an exit
code: 0 ok, 1 something is wrong, 2 bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.2x vendors click; older ones use click itself
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover
    from click import exceptions as _cx  # type: ignore[no-redef]

from bus.cli.common import EXIT_PROBLEM, EXIT_USAGE, CliContext, err_console, error_message
from bus.config import debug_requested

app = typer.Typer(
    name="tradebus",
    help="tradebus: a Celery-integrated event bridge for trading systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis-url", help="Redis URL of the bus (overrides REDIS_URL).", show_default=False),
    ] = None,
    broker_url: Annotated[
        str | None,
        typer.Option(
            "--broker-url",
            help="Celery broker URL (overrides CELERY_BROKER_URL).",
            show_default=False,
        ),
    ] = None,
    key_prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Redis key prefix (overrides TRADEBUS_KEY_PREFIX).", show_default=False),
    ] = None,
    env_file: Annotated[Path, typer.Option("--env-file", help="Settings file read first.")] = Path(".env"),
) -> None:
    ctx.obj = CliContext(env_file=env_file, redis_url=redis_url, broker_url=broker_url, key_prefix=key_prefix)
    ctx.obj.load_event_types()


def _register() -> None:
    from bus.cli import deadletters, demo, doctor, events, observe, replay, routes, schema, state

    # the order `tradebus --help` lists them in
    for command_group in (events, replay, state, routes, deadletters, observe, doctor, schema, demo):
        command_group.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the command's exit code."""
    args = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="tradebus", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        err_console.print("tradebus: aborted")
        code = 130
    except _cx.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed already
            return _finish(argv, EXIT_USAGE)
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        _error_line(f"{e.format_message()}{hint}")
        code = EXIT_USAGE
    except _cx.ClickException as e:
        _error_line(e.format_message())
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as e:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if debug_requested():
            raise
        message, code = error_message(e)
        _error_line(message)
    return _finish(argv, code)


def _finish(argv: list[str] | None, code: int) -> int:
    if argv is None:
        sys.exit(code)
    return code


def _error_line(message: str) -> None:
    err_console.print(f"tradebus: error: {message}", markup=False, soft_wrap=True)


__all__ = ["app", "main", "EXIT_PROBLEM"]
