"""The aio-pika peer of `warren-bench`: the hand-rolled Python consumer (and publisher) that
warren is compared with, written from the seeds' pattern (aio-pika, a topic exchange, a durable
queue with a dead-letter exchange, `message.process(requeue=True)`).

It is run by `warren-bench --side peer` / `--baseline peer` as `peer --child SPEC`, exactly where
warren's own side would run `warren-bench --child SPEC`: the parent has declared the throwaway
topology (topic exchange, direct dead-letter exchange, durable work queue with
`x-dead-letter-exchange`), filled the backlog or started the simulated upstream, and deletes it
all afterwards. The peer checks that the exchanges and queue exist (passive declares, as warren's
worker does), does its scenario, and prints one JSON line with the same fields as warren's child:
messages, secs, msgs_per_sec, latency (p50/p99/max µs, where meaningful), cpu_us_per_msg (its own
getrusage user + sys) and peak_rss_kib (VmHWM).

Per message it does what warren's worker with the `log` handler does: parse the JSON, dispatch
on the type to a handler that logs at info (off, as warren runs with RUST_LOG=warn), ack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import resource
import sys
import time
from typing import Any, Awaitable, Callable, Optional

import aio_pika
import aiormq
from aio_pika import DeliveryMode, IncomingMessage, Message
from websockets.asyncio.client import connect as ws_connect

log = logging.getLogger("pf-rabbitmq-agent")

# The same constants as crates/warren-bench/src/lib.rs.
EVENT_TYPE = "bench.tick"
PIPELINE_WINDOW = 256
PIPELINE_PREFETCH = 100
RUN_LIMIT = 600.0
TOPICS = ["market.*", "wallet.*", "escrow.*", "job.*"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# ── what a side measures about itself ────────────────────────────────────────────────────────


def now_us() -> int:
    return time.time_ns() // 1000


def cpu_time() -> float:
    """User + system CPU seconds of this process so far (getrusage(RUSAGE_SELF))."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_kib() -> int:
    """This process's peak resident set, KiB (VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentiles(samples: list[int]) -> Optional[dict[str, int]]:
    """Nearest-rank p50, p99 and max, as crates/warren-bench/src/stats.rs computes them."""
    if not samples:
        return None
    samples.sort()
    n = len(samples)

    def rank(p: float) -> int:
        i = min(max(math.ceil(p * n), 1), n)
        return samples[i - 1]

    return {"p50_us": rank(0.50), "p99_us": rank(0.99), "max_us": samples[-1]}


class Tally:
    """Counts handled messages and their latencies; `done` is set at the target. The same
    interval as warren's `Tally`: from `start()` (or the first hit) to the target-th hit."""

    def __init__(self, target: int, record_latency: bool) -> None:
        self.target = target
        self.count = 0
        self.first: Optional[float] = None
        self.last: Optional[float] = None
        self.latencies: list[int] = []
        self.record_latency = record_latency
        self.done = asyncio.Event()
        self.progress = asyncio.Event()
        self.peak_in_flight: Optional[int] = None

    def start(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def hit(self, sent_us: int) -> None:
        now = time.perf_counter()
        self.start()
        if self.record_latency and sent_us > 0:
            self.latencies.append(max(now_us() - sent_us, 0))
        self.count += 1
        self.progress.set()
        if self.count == self.target:
            self.last = now
            self.done.set()

    async def admit(self, i: int, max_in_flight: int) -> None:
        """Waits until message `i` may be published: until fewer than `max_in_flight` of the
        `i` before it are still to be counted (warren's `Tally::admit`). 0: no bound."""
        while max_in_flight > 0 and i - self.count >= max_in_flight:
            self.progress.clear()
            await self.progress.wait()
        self.peak_in_flight = max(self.peak_in_flight or 0, i + 1 - self.count)

    async def wait(self, what: str) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), RUN_LIMIT)
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"peer {what}: {self.count} of {self.target} messages in {RUN_LIMIT:.0f}s"
            ) from None

    def result(self, cpu_before: float) -> dict[str, Any]:
        cpu = cpu_time() - cpu_before
        first = self.first if self.first is not None else time.perf_counter()
        last = self.last if self.last is not None else time.perf_counter()
        secs = max(last - first, 1e-6)
        return {
            "side": "peer",
            "messages": self.count,
            "secs": secs,
            "msgs_per_sec": self.count / secs,
            "latency": percentiles(self.latencies),
            "cpu_us_per_msg": cpu * 1e6 / max(self.count, 1),
            "peak_rss_kib": peak_rss_kib(),
            **({"peak_in_flight": self.peak_in_flight} if self.peak_in_flight is not None else {}),
        }


# ── bench messages, the same bytes as crates/warren-bench/src/lib.rs `message_body` ────────────────────────


def ulid() -> str:
    n = ((time.time_ns() // 1_000_000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))


def message_body(size: int, sent_us: int) -> bytes:
    head = (
        f'{{"eventId":"{ulid()}","type":"{EVENT_TYPE}","agentId":"bench",'
        f'"ts":{max(sent_us // 1000, 1)},"payload":{{"sent_us":{sent_us},"pad":"'
    )
    pad = max(size - (len(head) + 3), 0)
    return (head + "x" * pad + '"}}').encode()


# ── the consumer: the seeds' on_message, counted ─────────────────────────────────────────────


async def handle_tick(payload: dict) -> None:
    log.info("Tick: %s @ %s", payload.get("pair"), payload.get("price"))


async def handle_candle(payload: dict) -> None:
    log.info("Candle close: %s O=%s C=%s", payload.get("pair"), payload.get("open"), payload.get("close"))


async def handle_wallet(event: dict) -> None:
    log.info("Wallet: %s %s", event["type"], event.get("payload"))


async def handle_escrow(event: dict) -> None:
    log.info("Escrow: %s %s", event["type"], event.get("payload"))


async def handle_job(event: dict) -> None:
    log.info("Job: %s %s", event["type"], event.get("payload"))


async def handle_bench(event: dict) -> None:
    log.info("Bench: %s %s", event["type"], event.get("eventId"))


async def dispatch(event: dict) -> None:
    etype = event.get("type", "")
    if etype == "market.tick":
        await handle_tick(event.get("payload") or {})
    elif etype == "market.candle":
        await handle_candle(event.get("payload") or {})
    elif etype.startswith("wallet."):
        await handle_wallet(event)
    elif etype.startswith("escrow."):
        await handle_escrow(event)
    elif etype.startswith("job."):
        await handle_job(event)
    elif etype.startswith("bench."):
        await handle_bench(event)


def counted(tally: Tally) -> Callable[[IncomingMessage], Awaitable[None]]:
    async def on_message(message: IncomingMessage) -> None:
        # Acks on a clean exit, nacks with requeue on an exception (the seeds' pattern).
        async with message.process(requeue=True):
            event = json.loads(message.body)
            log.info("Processing: %s eventId=%s", event.get("type", ""), event.get("eventId", "")[:8])
            await dispatch(event)
            payload = event.get("payload")
            sent = payload.get("sent_us", 0) if isinstance(payload, dict) else 0
            tally.hit(sent if isinstance(sent, int) else 0)

    return on_message


async def consume(
    connection: aio_pika.abc.AbstractRobustConnection, spec: dict, prefetch: int, tally: Tally
) -> aio_pika.abc.AbstractChannel:
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.get_queue(spec["queue"], ensure=True)
    await queue.consume(counted(tally))
    return channel


# ── the publisher: the seeds' publish_event, with a confirm window ───────────────────────────


class Confirms:
    """At most `window` publishes awaiting their confirm; each confirm checked."""

    def __init__(self, window: int, tally: Optional[Tally]) -> None:
        self.slots = asyncio.Semaphore(max(window, 1))
        self.pending: set[asyncio.Future] = set()
        self.errors: list[BaseException] = []
        self.tally = tally

    async def publish(
        self, exchange: aio_pika.abc.AbstractExchange, message: Message, key: str, sent: int
    ) -> None:
        await self.reserve()
        self.send(exchange, message, key, sent)

    async def reserve(self) -> None:
        """Waits for a free slot in the window; `send` then uses it."""
        if self.errors:
            raise self.errors[0]
        await self.slots.acquire()

    def send(
        self, exchange: aio_pika.abc.AbstractExchange, message: Message, key: str, sent: int
    ) -> None:
        """Publishes in a slot taken by `reserve`."""
        fut = asyncio.ensure_future(exchange.publish(message, routing_key=key, mandatory=True))
        self.pending.add(fut)
        fut.add_done_callback(lambda f: self._settle(f, sent))

    def _settle(self, fut: asyncio.Future, sent: int) -> None:
        self.pending.discard(fut)
        self.slots.release()
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None and not isinstance(fut.result(), aiormq.spec.Basic.Ack):
            exc = RuntimeError(f"peer publish: not confirmed: {fut.result()!r}")
        if exc is not None:
            self.errors.append(exc)
        elif self.tally is not None:
            self.tally.hit(sent)

    async def drain(self) -> None:
        while self.pending:
            await asyncio.wait(set(self.pending))
        if self.errors:
            raise self.errors[0]


async def pace(start: float, i: int, rate: Optional[float]) -> None:
    if rate and rate > 0:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def publish_all(
    exchange: aio_pika.abc.AbstractExchange,
    spec: dict,
    window: int,
    confirms_tally: Optional[Tally],
    handled: Optional[Tally] = None,
) -> None:
    confirms = Confirms(window, confirms_tally)
    max_in_flight = spec["scenario"].get("max_in_flight", 0)
    start = time.monotonic()
    for i in range(spec["messages"]):
        await pace(start, i, spec.get("rate"))
        if handled is not None:
            await handled.admit(i, max_in_flight)
        # Stamped once the window has room, as warren's and the raw loop's publishers do: the
        # latency starts at the publish, not before the wait for a confirm.
        await confirms.reserve()
        sent = now_us()
        message = Message(
            message_body(spec["size"], sent),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
        )
        confirms.send(exchange, message, EVENT_TYPE, sent)
    await confirms.drain()


async def forward(spec: dict, exchange: aio_pika.abc.AbstractExchange) -> None:
    """The seeds' bridge: read the upstream WebSocket, publish each event by its type."""
    headers = {"Authorization": "Bearer bench", "X-Agent-Id": "bench"}
    confirms = Confirms(PIPELINE_WINDOW, None)
    async with ws_connect(
        spec["upstream"], additional_headers=headers, proxy=None, ping_interval=20, ping_timeout=10
    ) as ws:
        await ws.send(
            json.dumps({"action": "subscribe", "resumeFrom": spec["resume_from"], "topics": TOPICS})
        )
        async for raw in ws:
            if not isinstance(raw, str):
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            message = Message(
                raw.encode(),
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=event.get("eventId", ""),
            )
            await confirms.publish(exchange, message, event.get("type", "unknown"), 0)
    await confirms.drain()


# ── the scenarios ────────────────────────────────────────────────────────────────────────────


async def run(spec: dict) -> dict[str, Any]:
    scenario = spec["scenario"]
    kind = scenario["kind"]
    if kind == "retry":
        raise ValueError("peer: no retry scenario (the seeds' pattern requeues; it has no retry tiers)")
    has_latency = kind in ("publish", "saturation", "latency")
    tally = Tally(spec["messages"], has_latency)
    cpu_before = cpu_time()
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    connection = await aio_pika.connect_robust(url)
    try:
        check = await connection.channel()
        exchange = await check.get_exchange(spec["exchange"], ensure=True)
        await check.get_exchange(spec["dead_letter_exchange"], ensure=True)
        await check.get_queue(spec["queue"], ensure=True)
        if kind == "publish":
            cpu_before = cpu_time()
            tally.start()
            await publish_all(exchange, spec, scenario["window"], tally)
        elif kind == "consume":
            await consume(connection, spec, scenario["prefetch"], tally)
            await tally.wait("consume")
        elif kind in ("saturation", "latency"):
            await consume(connection, spec, PIPELINE_PREFETCH, tally)
            tally.start()
            await publish_all(exchange, spec, PIPELINE_WINDOW, None, tally)
            await tally.wait(kind)
        elif kind == "endtoend":
            await consume(connection, spec, PIPELINE_PREFETCH, tally)
            tally.start()
            forwarder = asyncio.ensure_future(forward(spec, exchange))
            waiter = asyncio.ensure_future(tally.wait("e2e"))
            done, _ = await asyncio.wait({forwarder, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                forwarder.result()
                raise RuntimeError("peer e2e: the upstream ended early")
            forwarder.cancel()
            await asyncio.gather(forwarder, return_exceptions=True)
            waiter.result()
        else:
            raise ValueError(f"peer: unknown scenario {kind!r}")
        return tally.result(cpu_before)
    finally:
        await connection.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] != "--child":
        print("usage: peer --child SPEC (run by `warren-bench --side peer`)", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("PEER_LOG", "WARNING").upper())
    try:
        result = asyncio.run(run(json.loads(argv[2])))
    except Exception as e:  # one line on stderr, as warren's child does
        print(f"peer: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
