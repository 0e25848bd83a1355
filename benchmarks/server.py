"""A fast local CCM server for the benchmarks: a bare asyncio Protocol on uvloop.

It answers ``GET /v2/accounts/{sid}/calls/{call_sid}`` with the seed document's
~1 KB success envelope (the call SID substituted), over HTTP/1.1 keep-alive,
optionally after ``--latency-ms``. ``GET /stats`` returns the requests served
and the server's own CPU seconds, so a run can show the server was not the
bottleneck. It prints ``READY <port>`` once listening.

    python benchmarks/server.py --port 0 [--latency-ms 100] [--cpu 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench group installs it
    uvloop = None  # type: ignore[assignment]

SAMPLE = {
    "request_id": "57ba69db00c0432e88a5ca6d644bbd40",
    "method": "GET",
    "http_code": 200,
    "metadata": None,
    "response": {
        "code": 200,
        "error_data": None,
        "status": "success",
        "data": {
            "call_sid": "@SID@",
            "direction": "outbound",
            "virtual_number": "+91804568XXXX",
            "call_state": "terminal",
            "call_status": "completed",
            "assigned_agent_details": {
                "user_id": "12898c52573645739e64864ad308f0a9",
                "user_name": "Sarthak XXXX",
                "contact_uri": "+9199531XXXXX",
                "group_id": None,
                "group_name": None,
                "status": "completed",
            },
            "customer_details": {
                "contact_name": "Sarthak XXXXX",
                "contact_uri": "+9199531XXXXX",
                "status": "completed",
            },
            "created_time": "2021-07-28T03:07:12+05:30",
            "updated_time": "2021-07-28T03:07:33+05:30",
            "start_time": "2021-07-28T03:07:18+05:30",
            "end_time": "2021-07-28T03:07:32+05:30",
            "total_duration": None,
            "total_talk_time": 7,
            "custom_field": "12130y124b2f142",
            "app_id": None,
            "app_name": None,
            "digits": None,
            "recordings": [
                {
                    "url": "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/XXXXX/"
                    "72827ead13a355d334338fXXXXXX.mp3"
                }
            ],
        },
    },
}
BEFORE, AFTER = json.dumps(SAMPLE).encode().split(b"@SID@")
STARTED = time.monotonic()


class Stats:
    requests = 0


def response_for(path: bytes) -> bytes:
    if path == b"/stats":
        cpu = os.times()
        body = json.dumps(
            {"requests": Stats.requests, "cpu_seconds": cpu.user + cpu.system}
        ).encode()
    else:
        Stats.requests += 1
        body = BEFORE + path.rsplit(b"/", 1)[-1] + AFTER
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


class Http(asyncio.Protocol):
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] - uvloop's is not asyncio's class

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            path = head.split(b" ", 2)[1]
            reply = response_for(path)
            if self.latency:
                asyncio.get_running_loop().call_later(self.latency, self.write, reply)
            else:
                self.write(reply)

    def write(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


async def serve(port: int, latency: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Http(latency), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    runner = uvloop.run if uvloop is not None else asyncio.run
    runner(serve(args.port, args.latency_ms / 1000))


if __name__ == "__main__":
    main()
