"""The public API: the names `webscale` exports, `webscale.serve`, and users' own message types.

A user's handler lives next to the current directory (as `uvicorn --app-dir` and gunicorn find
it), declares its own dataclass message type, and gets messages decoded into it.
"""

from __future__ import annotations

import argparse
import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.client import connect

import webscale
from helpers import ServerProcess, client_ssl_context, raw_upgrade, wait_for

StartServer = Callable[..., ServerProcess]

HANDLERS = textwrap.dedent('''
    from __future__ import annotations

    from dataclasses import dataclass, field

    from webscale import ConnectionHandle


    @dataclass(slots=True)
    class Meta:
        firmware: str
        uptime_s: int = 0


    @dataclass(slots=True)
    class Reading:
        sensor: str
        value: float
        tags: list[str] = field(default_factory=list)


    @dataclass(slots=True)
    class Batch:
        device: str
        readings: list[Reading]
        meta: Meta | None = None


    @dataclass(slots=True)
    class Ping:
        device: str


    def on_message(handle: ConnectionHandle, msg: Batch) -> None:
        first = msg.readings[0]
        handle.send(f"{type(msg).__name__} {msg.device} {len(msg.readings)} "
                    f"{type(first.value).__name__} {first.tags} {msg.meta}")


    def on_anything(handle: ConnectionHandle, msg: object) -> None:
        handle.send(f"{type(msg).__name__} {msg.device}")
''')


def test_exported_names_exist() -> None:
    assert set(webscale.__all__) >= {"serve", "ConnectionHandle", "Config", "Request",
                                     "Response", "DecodeError", "Reject", "PeerCertificate",
                                     "Headers"}
    for name in webscale.__all__:
        assert getattr(webscale, name) is not None, name


def write_app(tmp_path: Path) -> None:
    package = tmp_path / "myapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "handlers.py").write_text(HANDLERS)


async def exchange(server: ServerProcess, *documents: str) -> list[str]:
    replies = []
    async with connect(server.url, ssl=client_ssl_context(server.cafile)) as ws:  # type: ignore[arg-type]
        for document in documents:
            await ws.send(document)
        for _ in documents:
            replies.append(str(await asyncio.wait_for(ws.recv(), 10)))
    return replies


GOOD = ('{"device": "pi-7", "extra": {"ignored": true}, "readings": ['
        '{"sensor": "t", "value": 21, "tags": ["a"]}, {"sensor": "h", "value": 0.5}]}')


def test_handler_next_to_cwd_gets_its_annotated_type(server_factory: StartServer,
                                                     tmp_path: Path) -> None:
    write_app(tmp_path)  # the server's working directory is tmp_path
    server = server_factory("--handler", "myapp.handlers:on_message")
    with_meta = GOOD.replace('"readings"', '"meta": {"firmware": "1.2"}, "readings"')
    replies = asyncio.run(exchange(server, GOOD, with_meta))
    # An int accepted for a float field (and stored as a float), unknown keys ignored,
    # defaults and nested optional dataclasses filled in.
    assert replies == ["Batch pi-7 2 float ['a'] None",
                       "Batch pi-7 2 float ['a'] Meta(firmware='1.2', uptime_s=0)"]
    wrong = ['{"device": "pi-7", "readings": [{"sensor": "t", "value": true}]}',
             '{"device": 7, "readings": []}', '{"readings": []}', "[1, 2]", "not json"]

    async def send_wrong() -> None:
        async with connect(server.url, ssl=client_ssl_context(server.cafile)) as ws:  # type: ignore[arg-type]
            for document in wrong:
                await ws.send(document)

    asyncio.run(send_wrong())
    wait_for(lambda: server.stats()["decode_errors"] == len(wrong), what="decode errors")
    assert server.stats()["messages_decoded"] == 2
    assert "readings[0].value: expected a number, got bool" in server.stderr()


def test_message_type_flag_overrides_the_annotation(server_factory: StartServer,
                                                    tmp_path: Path) -> None:
    write_app(tmp_path)
    server = server_factory("--handler", "myapp.handlers:on_anything",
                            "--message-type", "myapp.handlers:Ping")
    assert asyncio.run(exchange(server, '{"device": "pi-9", "seq": 4}')) == ["Ping pi-9"]


def test_missing_handler_module_is_a_clear_start_up_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "webscale", "serve", "--port", "0",
                             "--handler", "nosuchapp.handlers:on_message"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--handler 'nosuchapp.handlers:on_message'" in result.stderr
    assert "no module named 'nosuchapp'" in result.stderr


def test_serve_from_python(server_factory: StartServer, tmp_path: Path) -> None:
    write_app(tmp_path)
    (tmp_path / "run.py").write_text(textwrap.dedent('''
        import sys
        from pathlib import Path

        import webscale
        from myapp.handlers import on_message

        flags = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        raise SystemExit(webscale.serve(on_message, host=flags["--host"], port=0,
                                        cert=Path(flags["--cert"]), key=Path(flags["--key"]),
                                        admin=flags["--admin"]))
    '''))
    server = server_factory(command=[str(tmp_path / "run.py")])
    assert asyncio.run(exchange(server, GOOD))[0].startswith("Batch pi-7 2 float")


def test_serve_from_python_with_an_authorize_hook(server_factory: StartServer,
                                                  tmp_path: Path) -> None:
    (tmp_path / "run.py").write_text(textwrap.dedent('''
        import sys
        from pathlib import Path

        import webscale


        def check(request: webscale.Request) -> object:
            if request.path == "/deny":
                raise webscale.Reject(401, "no token")
            return f"device from {request.remote_address[0]}"


        def on_message(handle: webscale.ConnectionHandle, message: str | bytes) -> None:
            handle.send(f"{handle.identity}: {message!r}")


        flags = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        raise SystemExit(webscale.serve(on_message, authorize=check, host=flags["--host"],
                                        port=0, cert=Path(flags["--cert"]),
                                        key=Path(flags["--key"]), admin=flags["--admin"]))
    '''))
    server = server_factory(command=[str(tmp_path / "run.py")])
    assert asyncio.run(exchange(server, "hello")) == ["device from 127.0.0.1: 'hello'"]
    refused = raw_upgrade(server, "/deny")
    assert (refused.status, refused.body) == (401, b"no token\n")


def test_config_argv_repeats_repeatable_flags() -> None:
    """What `serve(..., workers=2)` gives its workers parses back into the same Config."""
    from webscale.api import config_argv
    from webscale.cli import _add_serve_flags, config_from_args

    config = webscale.Config(allowed_origin=("https://a.example", "https://b.example"),
                             authorize="myapp.auth:check", decode="none")
    argv = config_argv(config)
    assert argv.count("--allowed-origin") == 2
    parser = argparse.ArgumentParser()
    _add_serve_flags(parser)
    assert config_from_args(parser.parse_args(argv[1:])) == config
