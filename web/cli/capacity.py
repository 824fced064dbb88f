"""`localjobs capacity` (the machine's CPUs, memory and GPUs, what is in use, which steps wait
and why) and `localjobs gpus` (each GPU and the step holding it)."""

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


@click.command()
@json_option
@client_options
def capacity(connect: Callable[[], Api], as_json: bool) -> int:
    """What the daemon admits steps against, what running steps hold, and who waits for what."""
    usage = connect().get("/apis/localjobs/v1/capacity")
    if as_json:
        print_json(usage)
        return 0
    out = console()
    grid = table("", "TOTAL", "IN USE", "FREE")
    for kind, show in (("cpus", _number), ("memory_bytes", _bytes), ("gpus", _number)):
        amounts = usage[kind]
        grid.add_row(kind.split("_")[0].upper(), *(show(amounts[k]) for k in ("total", "in_use", "free")))
    out.print(grid)
    for hold in usage["held"]:
        gpus = ",".join(str(g["index"]) for g in hold["gpus"])
        needs = hold["needs"]
        parts = [
            f"{_number(needs['cpus'])} CPUs" if needs["cpus"] else "",
            _bytes(needs["memory_bytes"]) if needs["memory_bytes"] else "",
        ]
        parts.append(f"GPUs {gpus}" if gpus else "")
        out.print(
            f"{hold['workspace']}/{hold['job']}/{hold['step']} holds {', '.join(p for p in parts if p)}"
        )
    for wait in usage["waiting"]:
        out.print(f"{wait['workspace']}/{wait['job']}/{wait['step']}: {wait['reason']}")
    return 0


def _number(value: float) -> str:
    return f"{value:g}"


def _bytes(count: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count:g} B"
