"""The ``shoveling`` command: a running cache seen and handled from a shell.

Every subcommand is one function calling the public :class:`~shoveling_ray.Cache` API; errors
become one line on stderr and exit status 1, bad usage exit status 2 (argparse's), success 0.
Read commands take ``--json`` for programs. ``python -m shoveling_ray`` is the same program.

Connecting is bounded: ``ray.init`` was seen not to fail for minutes against an address where
nothing listens, so an explicit address is probed first and the connection attempt as a whole
gets :data:`CONNECT_TIMEOUT` seconds.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from .actors.coordinator import running_caches
from .cache import Cache
from .data.manifest import summaries
from .errors import ShovelingError
from .observe.display import COLUMNS, human_bytes, rows, text_table
from .settings import CONFIGURABLE, KV_KEYS, check_eviction, check_max_memory, check_replicas, parse_kv

#: Seconds the whole connection to the Ray cluster may take.
CONNECT_TIMEOUT = 30.0
#: Seconds a TCP probe of an explicit ``host:port`` address may take.
PROBE_TIMEOUT = 5.0


class CliError(Exception):
    """A failure to report as one line and exit status 1."""


def _probe(address: str) -> None:
    """Fail fast when nothing listens at an explicit ``host:port``."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: let ray.init judge it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        raise CliError(f"no Ray cluster at {address}: {exc}") from None


def connect(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect this process to the Ray cluster at ``address`` (``auto``: the one running here).

    Raises:
        CliError: nothing answers, or not within ``timeout`` seconds.
    """
    if address != "auto":
        _probe(address)
    outcome: dict[str, BaseException] = {}

    def attempt() -> None:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except BaseException as exc:  # reported by the caller
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, name="shoveling-connect", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CliError(f"no answer from a Ray cluster at {address} within {timeout:.0f} s")
    if "error" in outcome:
        text = str(outcome["error"]).strip()
        reason = text.splitlines()[0] if text else type(outcome["error"]).__name__
        raise CliError(f"cannot connect to a Ray cluster at {address}: {reason}")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


# -- subcommands: each calls the public API ------------------------------------------------


def cmd_caches(args: argparse.Namespace) -> None:
    names = running_caches()
    if args.json:
        _print_json(names)
    elif names:
        print("\n".join(names))


def cmd_status(args: argparse.Namespace) -> None:
    cache = Cache.attach(args.name)
    stats, endpoints, datasets = cache.stats(), cache.endpoints(), summaries(cache)
    if args.json:
        _print_json({"cache": args.name, "nodes": dict(stats), "endpoints": endpoints, "datasets": datasets})
        return
    nodes, ids = len(stats), sum(s["ids"] - s["copies"] for s in stats.values())
    replicas = next(iter(stats.values()))["replicas"]
    print(f"cache {args.name}: {nodes} node{'' if nodes == 1 else 's'}, {ids} ids, replicas {replicas}")
    print(text_table(COLUMNS, rows(stats)))
    for node, url in sorted(endpoints.items()):
        print(f"http {node}: {url}")
    if datasets:
        print(f"datasets: {len(datasets)}")
        print(_datasets_table(datasets))


def _datasets_table(datasets: dict[str, dict]) -> str:
    return text_table(("dataset", "rows", "bytes", "blocks"), [
        (name, f"{d['rows']:,}", human_bytes(d["bytes"]), str(d["blocks"])) for name, d in sorted(datasets.items())])


def cmd_ls(args: argparse.Namespace) -> None:
    cache = Cache.attach(args.name)
    if args.datasets:
        datasets = summaries(cache)
        if args.json:
            _print_json(datasets)
        elif datasets:
            print(_datasets_table(datasets))
        return
    ids = cache.scan_ids(args.prefix)  # streamed: a cache of millions of ids lists too
    if not args.json:
        for cache_id in ids:
            print(cache_id)
        return
    separator = "[\n  "  # the JSON list, written as it streams (as _print_json would lay it out)
    for cache_id in ids:
        print(separator + json.dumps(cache_id), end="")
        separator = ",\n  "
    print("[]" if separator.startswith("[") else "\n]")


def cmd_get(args: argparse.Namespace) -> None:
    value = Cache.attach(args.name).get(args.id)
    if isinstance(value, np.ndarray):
        if args.output is None:
            raise CliError(f"{args.id!r} holds a numpy array: save it with -o FILE (written as .npy)")
        with open(args.output, "wb") as out:
            np.save(out, value, allow_pickle=False)
    elif isinstance(value, bytes) and not args.json:
        if args.output is None:
            sys.stdout.buffer.write(value)
            sys.stdout.buffer.flush()
        else:
            with open(args.output, "wb") as out:
                out.write(value)
    else:  # msgpack values (and bytes under --json) print as JSON
        text = json.dumps(value, default=_json_default)
        if args.output is None:
            print(text)
        else:
            with open(args.output, "w") as out:
                out.write(text + "\n")


def cmd_put(args: argparse.Namespace) -> None:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(args.file, "rb") as source:
                data = source.read()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    Cache.attach(args.name).set(args.id, data)


def cmd_rm(args: argparse.Namespace) -> None:
    if not Cache.attach(args.name).delete(args.id):
        raise CliError(f"cache id {args.id!r} does not exist in cache {args.name!r}")


def cmd_drain(args: argparse.Namespace) -> None:
    moved = Cache.attach(args.name).drain(args.node_id)
    print(f"node {args.node_id} drained: {moved} ids moved to other nodes; it can be removed")


def cmd_config(args: argparse.Namespace) -> None:
    changes = {name: getattr(args, name) for name in CONFIGURABLE if getattr(args, name) is not None}
    cache = Cache.attach(args.name)
    cache.configure(**changes)
    stats = cache.stats()
    current = {node: {"max_memory": s["limit"], "eviction": s["policy"], "max_disk": s["disk_limit"],
                      "replicas": s["replicas"]} for node, s in stats.items()}
    if args.json:
        _print_json(current)
    else:
        body = [(node, str(c["max_memory"]), c["eviction"], str(c["max_disk"]), str(c["replicas"]))
                for node, c in sorted(current.items())]
        print(text_table(("node", "max_memory", "eviction", "max_disk", "replicas"), body))


def cmd_close(args: argparse.Namespace) -> None:
    Cache.attach(args.name).close()


# -- the parser ----------------------------------------------------------------------------


def _bytes_arg(text: str) -> int:
    try:
        return check_max_memory(int(text))  # type: ignore[return-value]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of bytes, got {text!r}") from exc


def _policy_arg(text: str) -> str:
    try:
        return check_eviction(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _switch_arg(text: str) -> bool:
    try:
        return parse_kv(KV_KEYS["http"], text.encode())  # type: ignore[return-value]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_arg(text: str) -> int:
    try:
        return check_replicas(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoveling",
        description="See and handle running shoveling_ray caches.",
        epilog="Exit status: 0 success, 1 error (one line on stderr), 2 bad usage.",
    )
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"),
                        help="Ray cluster address, as for ray.init (default: $RAY_ADDRESS or auto, the cluster running here)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable, help_: str, reads: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        if reads:
            p.add_argument("--json", action="store_true", help="print JSON for programs")
        return p

    command("caches", cmd_caches, "list the running caches", reads=True)
    p = command("status", cmd_status, "per node: ids, used / limit, disk, evictions, policy, Consul health; HTTP endpoints; datasets",
                reads=True)
    p.add_argument("name", help="cache name")
    p = command("ls", cmd_ls, "list a cache's ids (or its datasets)", reads=True)
    p.add_argument("name", help="cache name")
    p.add_argument("--prefix", default="", help="only ids starting with this")
    p.add_argument("--datasets", action="store_true", help="list the datasets (shoveling_ray.data) instead: rows, bytes, blocks")
    p = command("get", cmd_get, "write a value: bytes as they are, numpy as .npy (-o needed), others as JSON", reads=True)
    p.add_argument("name", help="cache name")
    p.add_argument("id", help="cache id")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p = command("put", cmd_put, "store a file's bytes (or stdin's, with -) under an id, replacing it")
    p.add_argument("name", help="cache name")
    p.add_argument("id", help="cache id")
    p.add_argument("file", help="a file, or - for standard input")
    p = command("rm", cmd_rm, "delete an id (exit 1 if it does not exist)")
    p.add_argument("name", help="cache name")
    p.add_argument("id", help="cache id")
    p = command("drain", cmd_drain, "move every id off a node before removing it")
    p.add_argument("name", help="cache name")
    p.add_argument("node_id", help="Ray node id (hex)")
    p = command("config", cmd_config, "show, or change for every node (Cache.configure), a cache's settings",
                reads=True)
    p.add_argument("name", help="cache name")
    p.add_argument("--max-memory", type=_bytes_arg, help="bytes each node's actor may hold")
    p.add_argument("--eviction", type=_policy_arg, help="spill | reject | lru")
    p.add_argument("--max-disk", type=_bytes_arg, help="bytes of spill files each node may hold")
    p.add_argument("--replicas", type=_positive_arg, help="nodes holding each id (copies are added or dropped to match)")
    p.add_argument("--http", type=_switch_arg, help="on | off: each node's read-only HTTP endpoint")
    p = command("close", cmd_close, "stop a cache and drop its data")
    p.add_argument("name", help="cache name")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit status."""
    args = build_parser().parse_args(argv)  # bad usage: exit 2
    try:
        connect(args.address)
        args.func(args)
    except (CliError, ShovelingError, TypeError, ValueError, OSError) as exc:  # OSError: -o / FILE
        print(f"shoveling: {exc}", file=sys.stderr)
        sys.stderr.flush()
        if any(t.name == "shoveling-connect" and t.is_alive() for t in threading.enumerate()):
            os._exit(1)  # a connection attempt still hangs in ray.init: do not wait for it
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
