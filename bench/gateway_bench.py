"""Channel gateway webhook benchmark, with raw JetStream publishing as the same-run baseline.

Starts nats-server, PostgreSQL and the gateway's web process (`python -m parley_channel_gateway web`,
gunicorn) on free ports, connects one Messenger channel, then:

1. sends signed Messenger webhooks (one message each, distinct mids) at a fixed rate (default 250/s for 10 s)
   and reports the acknowledgement latency p50/p99 (measured from each request's scheduled send time, so
   queueing counts);
2. ramps the fixed rate up in steps and reports the highest rate the gateway sustains (every answer 200,
   achieved >= 95% of the target, p50 <= 25 ms: no runaway queue; each step also prints its p99);
3. measures raw JetStream publish-ack latency at the same fixed rate and the highest publish rate (nats-py,
   the library the gateway uses), and prints both side by side with their ratio.

Traffic goes only to 127.0.0.1. Run: `python -m bench gateway` (or `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

APP_SECRET = "bench-app-secret"
PAGE_ID = "100200300400500"
PSID_BASE = 7_000_000_000


@dataclass
class Run:
    target_rate: float
    sent: int
    ok: int
    errors: int
    elapsed: float
    latencies: list[float]

    @property
    def achieved(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000


# -- a minimal keep-alive HTTP/1.1 client (cheap on CPU, so the gateway gets the cores) --------------------------------


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            self.writer.close()
            self.writer = None
        return status


def webhook_request(port: int, n: int) -> bytes:
    mid = f"m_bench_{uuid.uuid4().hex}_{n}"
    item = {"sender": {"id": str(PSID_BASE + n % 5000)}, "recipient": {"id": PAGE_ID},
            "timestamp": 1735725600000 + n, "message": {"mid": mid, "text": f"benchmark message {n}"}}  # fmt: skip
    body = json.dumps({"object": "page", "entry": [{"id": PAGE_ID, "time": 1, "messaging": [item]}]}).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (
        f"POST /webhooks/messenger HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def open_loop(port: int, rate: float, duration: float, connections: int = 64) -> Run:
    """Requests scheduled at a fixed rate; latency from the scheduled time to the answer."""
    total = int(rate * duration)
    requests = [webhook_request(port, i) for i in range(total)]
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Conn("127.0.0.1", port))
    latencies: list[float] = []
    counts = {"ok": 0, "err": 0}
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        scheduled = start + i / rate
        conn = await pool.get()
        try:
            status = await conn.request(requests[i])
        except (OSError, asyncio.IncompleteReadError):
            conn.writer = None
            status = 0
        finally:
            pool.put_nowait(conn)
        if status == 200:
            counts["ok"] += 1
            latencies.append(time.perf_counter() - scheduled)
        else:
            counts["err"] += 1

    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _ in range(connections):
        conn = pool.get_nowait()
        if conn.writer is not None:
            conn.writer.close()
    return Run(rate, total, counts["ok"], counts["err"], elapsed, latencies)


# -- the raw JetStream baseline --


async def raw_publish(nats_url: str, rate: float | None, duration: float, concurrency: int = 64) -> Run:
    """Publish-and-ack with nats-py: at a fixed rate, or (rate None) as fast as `concurrency` in-flight allow."""
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    subject = "bench_raw.data"
    await js.add_stream(name="BENCH_RAW", subjects=["bench_raw.>"], duplicate_window=120)
    payload = b"x" * 600  # about the size of an InboundEvent for a short text message
    latencies: list[float] = []
    counts = {"ok": 0, "err": 0}

    async def one(scheduled: float) -> None:
        try:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": uuid.uuid4().hex}, timeout=5)
            counts["ok"] += 1
            latencies.append(time.perf_counter() - scheduled)
        except Exception:
            counts["err"] += 1

    start = time.perf_counter()
    if rate is not None:
        total = int(rate * duration)
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
    else:
        total = 0
        deadline = start + duration

        async def loop() -> None:
            nonlocal total
            while time.perf_counter() < deadline:
                total += 1
                await one(time.perf_counter())

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await js.delete_stream("BENCH_RAW")
    await nc.close()
    return Run(rate or 0, total, counts["ok"], counts["err"], elapsed, latencies)


# -- set-up --


async def prepare(database_url: str, settings_env: dict[str, str]) -> None:
    from parley_channel_gateway.config import Settings
    from parley_channel_gateway.crypto import SecretBox
    from parley_channel_gateway.providers import Providers
    from parley_channel_gateway.repository import Repository
    from parley_channel_gateway.service import ChannelService, validate_credentials
    from parley_kit import db

    await db.run_migrations("parley_channel_gateway", database_url)
    settings = Settings(database_url=database_url, channel_gateway_encryption_key=settings_env["key"])
    engine = db.create_engine(database_url, pool_size=1)
    providers = Providers(settings.channel_gateway_graph_api_url, settings.channel_gateway_telegram_api_url)
    service = ChannelService(Repository(db.session_factory(engine)), SecretBox(settings_env["key"]), providers, "")
    creds = validate_credentials("messenger", {"page_id": PAGE_ID, "page_access_token": "EAAGbenchtoken0123456789"})
    await service.connect("bench-space", "bench", creds)
    await providers.aclose()
    await engine.dispose()


def wait_ready(port: int, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the gateway web process did not become ready")


def tree_cpu(root_pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) of `root_pid` and its children (the gunicorn master and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(entry) == root_pid or int(fields[1]) == root_pid:
            user += int(fields[11]) / ticks
            system += int(fields[12]) / ticks
    return user, system


def _parent(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def report(name: str, run: Run) -> str:
    return (
        f"{name:<44} sent {run.sent:>6}  ok {run.ok:>6}  errors {run.errors:>4}  "
        f"rate {run.achieved:>7.0f}/s  p50 {run.pct(0.50):>6.2f} ms  p99 {run.pct(0.99):>6.2f} ms"
    )


def sustained(run: Run) -> bool:
    """The gateway keeps up: every answer 200, >= 95% of the offered rate, and no runaway queue (p50 <= 25 ms)."""
    return run.errors == 0 and run.achieved >= 0.95 * run.target_rate and run.pct(0.50) <= 25.0


def main(argv: list[str]) -> None:
    from cryptography.fernet import Fernet
    from parley_kit.local.servers import NatsServer, PostgresServer, free_port

    parser = argparse.ArgumentParser(prog="python -m bench gateway")
    parser.add_argument("--rate", type=float, default=250.0, help="fixed rate, requests/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds at the fixed rate")
    parser.add_argument("--step-duration", type=float, default=4.0, help="seconds per ramp step")
    parser.add_argument("--steps", default="500,750,1000,1250,1500,1750,2000,2500,3000")
    parser.add_argument("--workers", default="4", help="gunicorn workers of the web process")
    parser.add_argument("--py-spy", default="", help="py-spy binary: profile one web worker during the fixed-rate run")
    args = parser.parse_args(argv)

    data = Path(tempfile.mkdtemp(prefix="parley-gateway-bench-"))
    os.chmod(data, 0o755)
    nats_server = NatsServer(data / "nats").start()
    pg = PostgresServer(data / "pg", durable=False).start()
    web = None
    try:
        database_url = pg.create_database("channel_gateway_bench")
        key = Fernet.generate_key().decode()
        asyncio.run(prepare(database_url, {"key": key}))
        port = free_port()
        env = {
            **os.environ,
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_NATS_URL": nats_server.url,
            "PARLEY_HTTP_PORT": str(port),
            "PARLEY_CHANNEL_GATEWAY_ENCRYPTION_KEY": key,
            "PARLEY_CHANNEL_GATEWAY_META_APP_SECRET": APP_SECRET,
            "PARLEY_CHANNEL_GATEWAY_HTTP_WORKERS": args.workers,
            "PARLEY_LOG_LEVEL": "WARNING",
            "OTEL_SDK_DISABLED": "false",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log = open(data / "web.log", "wb")  # noqa: SIM115
        web = subprocess.Popen([sys.executable, "-m", "parley_channel_gateway", "web"], env=env, stdout=log, stderr=log)
        wait_ready(port)
        asyncio.run(open_loop(port, 200, 2))  # warm-up: connections, channel cache, JIT-less but warm imports

        print(
            f"gateway web process: gunicorn, {args.workers} asyncio workers; nats-server, PostgreSQL "
            f"and this client on the same machine ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
        )
        spy = None
        if args.py_spy:
            worker = next(int(e) for e in os.listdir("/proc") if e.isdigit() and _parent(int(e)) == web.pid)
            spy = subprocess.Popen(
                [args.py_spy, "record", "-p", str(worker), "-d", str(max(1, int(args.duration))), "-r", "200",
                 "--nonblocking", "-f", "raw", "-o", str(data / "web.folded")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        cpu_before = tree_cpu(web.pid)
        fixed = asyncio.run(open_loop(port, args.rate, args.duration))
        user, system = (after - before for after, before in zip(tree_cpu(web.pid), cpu_before, strict=True))
        per = 1000 / max(fixed.ok, 1)
        print(report(f"signed Messenger webhook @ {args.rate:.0f}/s", fixed))
        busy = (user + system) / fixed.elapsed * 100
        print(f"  web process CPU per webhook: {(user + system) * per:.2f} ms (user {user * per:.2f}, system "
              f"{system * per:.2f}; master and workers, {busy:.0f}% of a core)")  # fmt: skip
        if spy is not None:
            spy.wait(60)
            print(f"  py-spy profile of one worker (collapsed stacks): {data / 'web.folded'}")
        best: Run | None = None
        for step in [float(s) for s in args.steps.split(",") if s]:
            run = asyncio.run(open_loop(port, step, args.step_duration, connections=128))
            print(report(f"  ramp step @ {step:.0f}/s", run) + ("" if sustained(run) else "   <- not sustained"))
            if not sustained(run):
                break
            best = run

        raw_fixed = asyncio.run(raw_publish(nats_server.url, args.rate, args.duration))
        print(report(f"raw JetStream publish+ack @ {args.rate:.0f}/s", raw_fixed))
        raw_max = asyncio.run(raw_publish(nats_server.url, None, args.step_duration))
        print(report("raw JetStream publish+ack, 64 in flight (max)", raw_max))

        print()
        print(f"webhook ack latency @ {args.rate:.0f}/s: p50 {fixed.pct(0.5):.2f} ms, p99 {fixed.pct(0.99):.2f} ms "
              f"(raw publish p50 {raw_fixed.pct(0.5):.2f} ms, p99 {raw_fixed.pct(0.99):.2f} ms; "
              f"ratio p99 {fixed.pct(0.99) / raw_fixed.pct(0.99):.1f}x)")  # fmt: skip
        best_rate = best.target_rate if best else 0.0
        print(f"highest sustained webhook rate: {best_rate:.0f}/s (raw publish max {raw_max.achieved:.0f}/s; "
              f"ratio {best_rate / raw_max.achieved if raw_max.achieved else 0:.2f})")  # fmt: skip
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        print(f"targets: p99 <= 25 ms @ 250/s: {'met' if fixed.pct(0.99) <= 25 else 'NOT met'}; "
              f">= 1000 webhooks/s: {'met' if best_rate >= 1000 else 'NOT met'}")  # fmt: skip
        sys.stdout.flush()
    finally:
        if web is not None:
            web.send_signal(signal.SIGTERM)
            try:
                web.wait(20)
            except subprocess.TimeoutExpired:
                web.kill()
        pg.stop()
        nats_server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
