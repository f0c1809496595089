"""`tradebus deadletters list | replay | purge`: tasks that failed past their retries."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from bus.cli.common import EXIT_USAGE, CliContext, CliError, JsonOption, console, print_json

deadletters_app = typer.Typer(help="Tasks that failed past their retries: list, replay, purge.", no_args_is_help=True)

IdsArgument = Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (default: all).")]

_LIST_COLUMNS = ("id", "route", "task", "attempts", "reason")


def register(app: typer.Typer) -> None:
    app.add_typer(deadletters_app, name="deadletters")


@deadletters_app.command("list")
def dl_list(
    ctx: typer.Context,
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="At most this many.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List dead letters, oldest first."""
    from bus.core.keys import Keys
    from bus.dispatch.deadletters import list_dead_letters

    obj: CliContext = ctx.obj
    client = obj.client()
    try:
        items = [asdict(d) for d in list_dead_letters(client, Keys(obj.settings.key_prefix), count=count)]
    finally:
        client.close()
    if as_json:
        print_json({"dead_letters": items})
        return
    t = Table(title=f"dead letters ({len(items)})", title_justify="left")
    for c in _LIST_COLUMNS:
        t.add_column(c)
    for d in items:
        t.add_row(*(str(d.get(c, "")) for c in _LIST_COLUMNS))
    console.print(t)


@deadletters_app.command("replay")
def dl_replay(ctx: typer.Context, ids: IdsArgument = None, as_json: JsonOption = False) -> None:
    """Send dead-lettered tasks to their queues again (and remove them from the list)."""
    from bus.core.keys import Keys
    from bus.dispatch import deadletters
    from bus.dispatch.dispatcher import Dispatcher

    obj: CliContext = ctx.obj
    client = obj.client()
    keys = Keys(obj.settings.key_prefix)
    dispatcher = Dispatcher.from_settings(obj.settings).attach(client, keys)
    try:
        replayed = list(deadletters.replay(client, keys, dispatcher, ids=ids or None))
    finally:
        dispatcher.close()
        client.close()
    n = len(replayed)
    if as_json:
        print_json({"replayed": n, "ids": replayed})
        return
    console.print(f"replayed {n} dead letter(s)")


@deadletters_app.command("purge")
def dl_purge(
    ctx: typer.Context,
    ids: IdsArgument = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Purge all without asking.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete dead letters (all of them needs --yes)."""
    from bus.core.keys import Keys
    from bus.dispatch import deadletters

    obj: CliContext = ctx.obj
    if not ids and not yes:
        raise CliError("purging every dead letter needs --yes (or give the ids to purge)", EXIT_USAGE)
    client = obj.client()
    try:
        n = deadletters.purge(client, Keys(obj.settings.key_prefix), ids=ids or None)
    finally:
        client.close()
    if as_json:
        print_json({"purged": n})
        return
    console.print(f"purged {n} dead letter(s)")
