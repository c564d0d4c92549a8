#!/usr/bin/env python3
"""A TCP relay that delays every byte, for benchmarks on a kernel without netem.

    delay_relay.py LISTEN_PORT UPSTREAM_HOST:PORT [--delay-ms MS] [--control-port PORT]

Listens on 127.0.0.1:LISTEN_PORT and relays each connection to UPSTREAM,
holding every piece of data MS milliseconds (default 5) in each direction
before passing it on: 2 x MS of round-trip time on top of the link's. Order
is kept and a slow reader slows the writer (each direction buffers at most
4 MiB). With --control-port, a connection to 127.0.0.1:PORT is answered
with one line: the bytes the upstream has sent so far (what clients
fetched, headers included). Prints "ready" on stdout once listening; runs
until killed.
"""
import argparse
import asyncio
import sys
import time

CHUNK = 64 << 10
QUEUE = 64  # pieces buffered per direction: at most 64 x 64 KiB


class Counter:
    """Bytes the upstream has sent through the relay."""

    def __init__(self):
        self.down = 0


async def pump(reader, writer, delay, counter, downstream):
    """Copies reader to writer, each piece held `delay` seconds."""
    queue = asyncio.Queue(QUEUE)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if downstream:
                    counter.down += len(data)
                await queue.put((time.monotonic() + delay, data))
        except (ConnectionError, OSError):
            pass
        await queue.put((time.monotonic() + delay, b""))

    async def write_side():
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass

    await asyncio.gather(read_side(), write_side())


async def handle(client_r, client_w, upstream, delay, counter):
    host, port = upstream
    try:
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(
            pump(client_r, server_w, delay, counter, False),
            pump(server_r, client_w, delay, counter, True),
        )
    finally:
        for w in (client_w, server_w):
            w.close()


async def control(_reader, writer, counter):
    writer.write(b"%d\n" % counter.down)
    await writer.drain()
    writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("upstream")
    ap.add_argument("--delay-ms", type=float, default=5.0)
    ap.add_argument("--control-port", type=int)
    args = ap.parse_args()
    host, _, port = args.upstream.rpartition(":")
    if not host or not port.isdigit():
        sys.exit("delay_relay.py: UPSTREAM is HOST:PORT")
    upstream = (host, int(port))
    delay = args.delay_ms / 1000.0
    counter = Counter()
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, delay, counter), "127.0.0.1", args.port)
    servers = [server]
    if args.control_port:
        servers.append(await asyncio.start_server(
            lambda r, w: control(r, w, counter), "127.0.0.1", args.control_port))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
