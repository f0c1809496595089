"""`tradebus schema`: the contracts other services read, as JSON Schema and AsyncAPI 3.0."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from bus.cli.common import EXIT_USAGE, CliContext, CliError, console


class Part(StrEnum):
    ALL = "all"
    JSON_SCHEMA = "json-schema"
    ASYNCAPI = "asyncapi"


def register(app: typer.Typer) -> None:
    app.command("schema")(schema)


def schema(
    ctx: typer.Context,
    only: Annotated[Part, typer.Option("--only", help="Print or write only this part.")] = Part.ALL,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the files into this directory instead of printing."),
    ] = None,
) -> None:
    """JSON Schema of every event type (custom ones included) and of the envelope, and the AsyncAPI 3.0
    document of the channels, log streams and Celery task messages (routes from TRADEBUS_ROUTES_FILE).

    --output DIR writes envelope.schema.json, <event type>.schema.json and asyncapi.json.
    """
    from bus.events.schema import json_schemas

    obj: CliContext = ctx.obj
    schemas = json_schemas() if only is not Part.ASYNCAPI else {}
    asyncapi = _asyncapi(obj) if only is not Part.JSON_SCHEMA else None
    if output is None:
        doc = {"json_schema": schemas, "asyncapi": asyncapi} if only is Part.ALL else asyncapi or schemas
        typer.echo(json.dumps(doc, indent=2))
        return
    files = {f"{name}.schema.json": doc for name, doc in schemas.items()}
    if asyncapi is not None:
        files["asyncapi.json"] = asyncapi
    if output.exists() and not output.is_dir():
        raise CliError(f"--output {str(output)!r} is not a directory", EXIT_USAGE)
    output.mkdir(parents=True, exist_ok=True)
    for name, doc in files.items():
        (output / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {len(files)} file(s) to {output}")


def _asyncapi(obj: CliContext) -> dict[str, Any]:
    from bus.dispatch.asyncapi import asyncapi_document
    from bus.dispatch.routing import RoutingTable

    settings = obj.settings
    routing = RoutingTable.from_file(settings.routes_file) if settings.routes_file else RoutingTable.default()
    return asyncapi_document(
        routing, key_prefix=settings.key_prefix, bus_url=settings.bus_url, broker_url=settings.broker_url
    )
