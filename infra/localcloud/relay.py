"""TCP relays from the containers' bridge to the stack's loopback servers.

`sam local` runs the functions in containers, which reach this machine only on the Docker
bridge's host address (172.17.0.1 on the default bridge), never on its 127.0.0.1. The
stack's servers listen on loopback only, and binding them to every interface would expose
them to the network. So for each port a function calls (the AWS endpoint, the model,
Redis), a relay listens on the bridge's address, which only this machine and its
containers reach, and pipes each connection to the same port on 127.0.0.1.

    python -m localcloud relay --listen 172.17.0.1 --to 127.0.0.1 --ports 4566 8009
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

log = logging.getLogger(__name__)
_CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _relay_one(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, host: str, port: int
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError as e:
        log.warning("relay to %s:%d: %s", host, port, e)
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
    finally:
        for w in (client_w, server_w):
            with contextlib.suppress(Exception):
                w.close()


async def serve(listen: str, to: str, ports: list[int]) -> None:
    servers = []
    for port in ports:

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter, p: int = port) -> None:
            await _relay_one(r, w, to, p)

        servers.append(await asyncio.start_server(handle, listen, port))
        log.info("relaying %s:%d -> %s:%d", listen, port, to, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready")
    await stop.wait()
    for server in servers:
        server.close()


def run(listen: str, to: str, ports: list[int]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(message)s")
    asyncio.run(serve(listen, to, ports))
    return 0
