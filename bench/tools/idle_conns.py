#!/usr/bin/env python3
"""Open N HTTP/1.1 keep-alive connections, send one GET on each, read the
response, then hold them idle until stdin is closed (or --hold seconds).

Prints "READY <ok> <failed>" on stdout once every connection has either
finished its first exchange or failed. Used by bench/run's memory scenario.
"""
import argparse
import asyncio
import resource
import sys


async def one(host, port, sem, held, counts):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(r.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            held.append((r, w))
            counts[0] += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            counts[1] += 1
            if counts[1] <= 3:
                print(f"conn failed: {e!r}", file=sys.stderr)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--parallel", type=int, default=100)
    ap.add_argument("--hold", type=float, default=120.0)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.n + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    sem = asyncio.Semaphore(a.parallel)
    held, counts = [], [0, 0]
    await asyncio.gather(*(one(a.host, a.port, sem, held, counts) for _ in range(a.n)))
    print(f"READY {counts[0]} {counts[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    try:
        await asyncio.wait_for(stdin_closed, a.hold)
    except asyncio.TimeoutError:
        pass
    for _, w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
