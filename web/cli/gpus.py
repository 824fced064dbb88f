"""`localjobs gpus`: the machine's GPUs, which step holds each, and which steps wait and why."""

from __future__ import annotations

from collections.abc import Callable

import click

from web.cli.common import client_options, json_option
from web.cli.connect import Api
from web.cli.render import console, print_json, table


@click.command()
@json_option
@client_options
def gpus(connect: Callable[[], Api], as_json: bool) -> int:
    """GPUs the daemon schedules on, their holders, and the GPU steps waiting."""
    usage = connect().get("/apis/localjobs/v1/gpus")
    if as_json:
        print_json(usage)
        return 0
    out = console()
    if not usage["gpus"]:
        out.print("no GPUs (none found by NVML; LOCALJOBS_GPUS declares them)")
    else:
        grid = table("GPU", "UUID", "NAME", "HELD BY")
        for gpu in usage["gpus"]:
            holder = gpu["held_by"]
            held = f"{holder['workspace']}/{holder['job']}/{holder['step']}" if holder else "free"
            grid.add_row(str(gpu["index"]), gpu["uuid"], gpu["name"], held)
        out.print(grid)
    for wait in usage["waiting"]:
        out.print(f"{wait['workspace']}/{wait['job']}/{wait['step']}: {wait['reason']}")
    return 0
