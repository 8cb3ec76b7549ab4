#!/usr/bin/env python3
"""GraphQL against the native interfaces of one Cooper node, in the same run (DESIGN §8).
Started by bench/graphql/run.sh, which builds and starts the node; see its header.

    python3 bench/graphql/bench.py main --url URL --pid PID [options]
    python3 bench/graphql/bench.py worker CONFIG_JSON        (subscriber process, internal)

1. Reads: BENCH_DOCS documents (r0..r<n-1>, ~300 bytes of nested JSON) loaded with _bulk_docs
   in batches of 1000, then wrk (16 connections) reading random ids, REST and GraphQL
   alternating (R G G R ... after a short warm-up of each), every answer checked by the Lua
   response hook (status 200, no "errors", the document present).
2. Subscription delivery latency, native listener websocket (filter users/+/name/#) against
   GraphQL subscriptions over /graphql/ws (graphql-transport-ws), N=1 and N=1000
   subscribers, the blocks of the two systems alternating L G G L (a fresh set of subscribers
   per block). Client structure (identical for both): W worker processes, each one asyncio
   event loop, one asyncio Protocol per websocket driving websockets' sans-I/O ClientProtocol;
   a message is timestamped (time.monotonic_ns, shared by all processes) as soon as its frame
   is decoded, then parsed as JSON for its document id. Neither carries the document (the
   listener subscribes without include_docs; the GraphQL selection is {seq docId}).
   Readiness: a subscriber is live once it has received a probe write (so a GraphQL
   subscription, which has no "subscribed" answer, is surely registered); the publisher
   writes probes until every subscriber is live, then warm-up writes (not counted), then M
   writes: HTTP PUT on one keep-alive connection (aiohttp), each waiting for its 201 (the ack
   time) and for its delivery to every subscriber, then a small gap.
   Latency = receive time - ack time (not clamped: a delivery that overtakes the ack counts
   negative); fan-out completion = last subscriber's receive time - ack time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import time

now = time.monotonic_ns

FIRST = ["Ann", "Bob", "Chloe", "Dmitri", "Eve", "Farid", "Grace", "Hiro"]
LAST = ["Martin", "Dubois", "Smith", "Okafor", "Tanaka", "Novak", "Rossi", "Kim"]
CITIES = ["Paris", "Lyon", "Berlin", "Lagos", "Osaka", "Prague", "Milan", "Seoul"]
TAGS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]
WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "elit", "sed", "magna"]

FILTER = "users/+/name/#"
GQL_SUBSCRIPTION = 'subscription{changes(barrel:"bench", filter:["users/+/name/#"]){seq docId}}'


def pick(xs, n):
    return xs[n % len(xs)]


def doc_obj(k: int, prefix: str = "d") -> dict:
    """Document k: ~300 bytes of nested JSON holding /users/<k>/name = "<first> <k>" (its
    topics include users/<k>/name/<first> <k>, which users/+/name/# matches)."""
    last = pick(LAST, k * 7 + 3)
    bio = " ".join(pick(WORDS, k + j) for j in (0, 1, 2, 3, 5))
    return {
        "_id": f"{prefix}{k}",
        "kind": "bench",
        "users": {
            str(k): {
                "name": f"{pick(FIRST, k)} {k}",
                "email": f"{pick(FIRST, k).lower()}.{last.lower()}{k}@example.org",
                "age": 18 + k % 70,
                "active": k % 2 == 0,
                "address": {
                    "street": f"{1 + k % 200} rue {pick(WORDS, k)}",
                    "city": pick(CITIES, k * 3),
                    "zip": f"{(k * 7919) % 100000:05d}",
                },
            }
        },
        "tags": [pick(TAGS, k), pick(TAGS, k + 1), pick(TAGS, k + 2)],
        "scores": [k % 100, (k % 100) + (k % 10) / 10, (k * 13) % 100],
        "profile": {"bio": bio, "since": 2000 + k % 25},
    }


def doc(k: int, prefix: str = "d") -> bytes:
    return json.dumps(doc_obj(k, prefix), separators=(",", ":")).encode()


def log(*a):
    print(f"[graphql bench.py {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_pid(pid: int | None) -> float:
    if not pid:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    i = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))  # nearest rank
    return s[i]


# =============================================================================================
# Subscriber worker process


class Sink:
    """Receive times per key, shared by the subscribers of one worker."""

    def __init__(self, out):
        self.out = out
        self.n = 0
        self.live = 0  # subscribers that received something
        self.recv: dict[int, list[int]] = {}
        self.disorder = 0
        self.lagged = 0
        self.errors: list[str] = []
        self.disconnects = 0
        self.other = 0

    def deliver(self, sub, key: int, t: int):
        if not sub.live:
            sub.live = True
            self.live += 1
            if self.live == self.n:
                self.out({"ev": "live"})
        if key <= sub.last:
            self.disorder += 1
        sub.last = key
        lst = self.recv.get(key)
        if lst is None:
            lst = self.recv[key] = []
        lst.append(t)
        if len(lst) == self.n:
            self.out({"ev": "done", "k": key})

    def error(self, text: str):
        if len(self.errors) < 20:
            self.errors.append(text)


class WsSub(asyncio.Protocol):
    """One websocket (websockets' sans-I/O ClientProtocol on an asyncio transport); the
    subclasses speak the listener protocol or graphql-transport-ws."""

    subprotocols: list[str] | None = None

    def __init__(self, uri, sink: Sink):
        from websockets.client import ClientProtocol

        self.p = ClientProtocol(uri, max_size=None, subprotocols=self.subprotocols)
        self.sink = sink
        self.ready = asyncio.get_running_loop().create_future()
        self.last = -1
        self.live = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.p.send_request(self.p.connect())
        self.flush()

    def flush(self):
        for data in self.p.data_to_send():
            if data:
                self.transport.write(data)
            else:
                self.transport.close()

    def data_received(self, data):
        from websockets.frames import Opcode
        from websockets.http11 import Response

        self.p.receive_data(data)
        for ev in self.p.events_received():
            if isinstance(ev, Response):
                if self.p.handshake_exc is not None:
                    self.fail(f"handshake: {self.p.handshake_exc}")
                else:
                    self.opened()
            elif ev.opcode is Opcode.TEXT:
                t = now()
                self.frame(json.loads(ev.data), t)
        self.flush()

    def send(self, obj):
        self.p.send_text(json.dumps(obj, separators=(",", ":")).encode())

    def set_ready(self):
        if not self.ready.done():
            self.ready.set_result(True)

    def fail(self, why: str):
        self.sink.error(why)
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))

    def connection_lost(self, exc):
        self.sink.disconnects += 1
        self.fail(f"connection lost: {exc}")

    def close(self):
        if self.transport is not None:
            self.transport.abort()


class ListenerSub(WsSub):
    """The native listener: subscribe frame, `subscribed`, then `change` frames."""

    def opened(self):
        self.send({"op": "subscribe", "id": 1, "filters": [FILTER], "since": "now"})

    def frame(self, m, t):
        op = m.get("op")
        if op == "change":
            self.sink.deliver(self, int(m["doc_id"][1:]), t)
        elif op == "subscribed":
            self.set_ready()
        elif op == "lagged":
            self.sink.lagged += 1
            self.sink.error(f"lagged: {m}")
        elif op == "error":
            self.fail(f"error frame: {m}")
        else:
            self.sink.other += 1


class GraphqlSub(WsSub):
    """graphql-transport-ws: connection_init, connection_ack, subscribe, then `next`."""

    subprotocols = ["graphql-transport-ws"]

    def opened(self):
        if self.p.subprotocol != "graphql-transport-ws":
            self.fail(f"server chose subprotocol {self.p.subprotocol!r}")
            return
        self.send({"type": "connection_init", "payload": {}})

    def frame(self, m, t):
        ty = m.get("type")
        if ty == "next":
            payload = m.get("payload") or {}
            ch = (payload.get("data") or {}).get("changes") or {}
            doc_id = ch.get("docId")
            if payload.get("errors"):
                self.sink.error(f"next with errors: {payload['errors']}")
            elif doc_id is None:  # LAGGED
                self.sink.lagged += 1
                self.sink.error(f"lagged: {m}")
            else:
                self.sink.deliver(self, int(doc_id[1:]), t)
        elif ty == "connection_ack":
            self.send({"id": "1", "type": "subscribe", "payload": {"query": GQL_SUBSCRIPTION}})
            self.set_ready()  # no answer to subscribe: liveness is checked with probes
        elif ty == "ping":
            self.send({"type": "pong"})
        elif ty == "pong":
            pass
        elif ty in ("error", "complete"):
            self.fail(f"{ty}: {m}")
        else:
            self.sink.other += 1


async def worker(cfg: dict):
    loop = asyncio.get_running_loop()
    out_fd = sys.stdout.fileno()

    def out(obj):
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        while data:
            n = os.write(out_fd, data)
            data = data[n:]

    from websockets.uri import parse_uri

    sink = Sink(out)
    n = cfg["n"]
    uri = parse_uri(cfg["url"])
    cls = ListenerSub if cfg["system"] == "listener" else GraphqlSub
    subs = []
    t0 = now()
    for i in range(0, n, 100):
        batch = []
        for _ in range(i, min(n, i + 100)):
            s = cls(uri, sink)
            batch.append(loop.create_connection(lambda s=s: s, uri.host, uri.port))
            subs.append(s)
        await asyncio.gather(*batch)
    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in subs)), 120)
    except Exception as e:  # noqa: BLE001
        out({"ev": "failed", "error": f"{e!r}; {sink.errors[:3]}"})
        return
    sink.n = n
    out({"ev": "ready", "n": n, "connect_s": (now() - t0) / 1e9})

    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu_mark = cpu_self()
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        c = cmd["cmd"]
        if c == "status":
            out({"ev": "status", "total": sum(len(v) for v in sink.recv.values()), "live": sink.live})
        elif c == "collect":
            cpu = cpu_self()
            out(
                {
                    "ev": "data",
                    "cpu_s": cpu - cpu_mark,
                    "disorder": sink.disorder,
                    "lagged": sink.lagged,
                    "disconnects": sink.disconnects,
                    "other": sink.other,
                    "errors": sink.errors,
                    "recv": {str(k): v for k, v in sink.recv.items()},
                }
            )
            cpu_mark = cpu
            sink.recv = {}
            sink.errors = []
        elif c == "quit":
            break
    for s in subs:
        s.close()
    await asyncio.sleep(0.2)


# =============================================================================================
# Main process


class Workers:
    """W subscriber processes that share N subscriptions."""

    def __init__(self):
        self.procs = []
        self.replies: list[asyncio.Queue] = []
        self.done_count: dict[int, int] = {}
        self.waiters: dict[int, asyncio.Future] = {}
        self.live = 0
        self.live_fut: asyncio.Future | None = None

    async def start(self, cfg: dict, n: int, procs: int) -> float:
        procs = max(1, min(procs, n))
        shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        self.live_fut = asyncio.get_running_loop().create_future()
        for share in shares:
            p = await asyncio.create_subprocess_exec(
                sys.executable,
                os.path.abspath(__file__),
                "worker",
                json.dumps(dict(cfg, n=share)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
            )
            q: asyncio.Queue = asyncio.Queue()
            self.procs.append(p)
            self.replies.append(q)
            asyncio.get_running_loop().create_task(self._read(p, q))
        infos = [await asyncio.wait_for(q.get(), 180) for q in self.replies]
        for i in infos:
            if i.get("ev") != "ready":
                raise RuntimeError(f"a subscriber worker failed: {i}")
        return max(i["connect_s"] for i in infos)

    async def _read(self, p, q):
        while True:
            line = await p.stdout.readline()
            if not line:
                await q.put({"ev": "exited"})
                return
            m = json.loads(line)
            ev = m["ev"]
            if ev == "done":
                k = m["k"]
                c = self.done_count[k] = self.done_count.get(k, 0) + 1
                if c == len(self.procs) and k in self.waiters and not self.waiters[k].done():
                    self.waiters[k].set_result(None)
            elif ev == "live":
                self.live += 1
                if self.live == len(self.procs) and not self.live_fut.done():
                    self.live_fut.set_result(None)
            else:
                await q.put(m)

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        for p in self.procs:
            p.stdin.write(data)

    def expect(self, k) -> asyncio.Future:
        f = asyncio.get_running_loop().create_future()
        if self.done_count.get(k, 0) == len(self.procs):
            f.set_result(None)
        self.waiters[k] = f
        return f

    async def ask(self, obj) -> list[dict]:
        self.send(obj)
        for p in self.procs:
            await p.stdin.drain()
        return [await asyncio.wait_for(q.get(), 120) for q in self.replies]

    async def stop(self):
        self.send({"cmd": "quit"})
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()


class Pub:
    """The publisher: PUTs on one keep-alive connection."""

    def __init__(self, url: str):
        import aiohttp

        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        self.headers = {"Content-Type": "application/json"}
        self.errors: list[str] = []

    async def write(self, k: int) -> int:
        async with self.session.put(
            f"{self.url}/barrels/bench/docs/d{k}", data=doc(k), headers=self.headers
        ) as r:
            body = await r.read()
            t = now()
            if r.status != 201:
                self.errors.append(f"PUT d{k}: {r.status} {body[:200]!r}")
        return t

    async def close(self):
        await self.session.close()


SYSTEMS = ("listener", "graphql")


class Run:
    def __init__(self, a):
        self.a = a
        self.key = a.key_base
        # (system, label) -> lists, accumulated over the blocks of that system
        self.lat: dict[tuple[str, str], list[float]] = {}
        self.completion: dict[tuple[str, str], list[float]] = {}
        self.acks: dict[tuple[str, str], list[float]] = {}
        self.lat_send: dict[tuple[str, str], list[float]] = {}
        self.completion_send: dict[tuple[str, str], list[float]] = {}
        self.res: dict[tuple[str, str], float] = {}
        self.notes: list[str] = []
        self.cpu_lines: list[str] = []
        self.blocks: list[str] = []

    def keys(self, n):
        k0 = self.key
        self.key += n
        return k0, self.key

    def sub_cfg(self, system: str) -> dict:
        ws = "ws" + self.a.url[len("http"):]
        path = "/barrels/bench/listen" if system == "listener" else "/graphql/ws"
        return {"system": system, "url": ws + path}

    async def block(self, pub: Pub, system: str, label: str, n: int, m: int):
        a = self.a
        w = Workers()
        procs = 1 if n == 1 else a.procs
        connect_s = await w.start(self.sub_cfg(system), n, procs)

        # Probes until every subscriber has received one (liveness), then warm-up writes.
        t_probe, probes = time.monotonic(), 0
        while not w.live_fut.done():
            k, _ = self.keys(1)
            await pub.write(k)
            probes += 1
            try:
                await asyncio.wait_for(asyncio.shield(w.live_fut), 0.05)
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - t_probe > 60:
                raise RuntimeError(f"{system} {label}: subscribers not live after 60 s")
        live_s = time.monotonic() - t_probe
        await asyncio.sleep(0.1)
        await w.ask({"cmd": "collect"})  # drop the probes' deliveries
        w.done_count.clear()

        load0 = os.getloadavg()[0]
        k0, k1 = self.keys(a.warmup + m)
        acks: dict[int, int] = {}
        sent: dict[int, int] = {}
        timeouts = 0
        srv0, pub0, wall0 = cpu_pid(a.pid), cpu_self(), now()
        for k in range(k0, k1):
            fut = w.expect(k)
            sent[k] = now()
            acks[k] = await pub.write(k)
            if k >= k0 + a.warmup:
                self.acks.setdefault((system, label), []).append((acks[k] - sent[k]) / 1e6)
            try:
                await asyncio.wait_for(fut, a.delivery_timeout)
            except asyncio.TimeoutError:
                timeouts += 1
                if timeouts >= 5:
                    self.notes.append(f"{system} {label}: 5 writes not fully delivered within {a.delivery_timeout} s; block cut at key {k}")
                    break
            w.waiters.pop(k, None)
            if a.gap_ms:
                await asyncio.sleep(a.gap_ms / 1000)
        wall = (now() - wall0) / 1e9
        srv_cpu, pub_cpu = cpu_pid(a.pid) - srv0, cpu_self() - pub0
        reps = await w.ask({"cmd": "collect"})
        await w.stop()
        recv: dict[int, list[int]] = {}
        for r in reps:
            for k, v in r["recv"].items():
                recv.setdefault(int(k), []).extend(v)
        lat = self.lat.setdefault((system, label), [])
        comp = self.completion.setdefault((system, label), [])
        lat_send = self.lat_send.setdefault((system, label), [])
        comp_send = self.completion_send.setdefault((system, label), [])
        missing = extra = 0
        counted = [k for k in range(k0 + a.warmup, k1) if k in acks]
        blat = []
        for k in counted:
            ts = recv.get(k, [])
            missing += max(0, n - len(ts))
            extra += max(0, len(ts) - n)
            blat.extend((t - acks[k]) / 1e6 for t in ts)
            lat_send.extend((t - sent[k]) / 1e6 for t in ts)
            if len(ts) >= n:
                comp.append((max(ts) - acks[k]) / 1e6)
                comp_send.append((max(ts) - sent[k]) / 1e6)
        lat.extend(blat)
        self.check(system, label, reps, missing, extra)
        sub_cpu = sum(r["cpu_s"] for r in reps)
        d = max(1, len(blat))
        self.cpu_lines.append(
            f"  {system:<8} N={n:<5} {len(counted):>4} writes {wall:6.2f} s  server {100 * srv_cpu / wall:4.0f}%"
            f" {1e6 * srv_cpu / d:6.1f} us/delivery  subscribers {100 * sub_cpu / wall:4.0f}% {1e6 * sub_cpu / d:6.1f} us/delivery"
            f"  publisher {100 * pub_cpu / wall:3.0f}%  load1 {load0:.2f}"
        )
        msg = (
            f"{label} {system}: N={n} in {len(w.procs)} process(es), connected {connect_s:.1f} s, live after"
            f" {probes} probe(s) {live_s:.2f} s; {len(counted)} writes: p50 {pct(blat, 50):.3f} ms p99"
            f" {pct(blat, 99):.3f} ms, missing {missing}"
        )
        self.blocks.append(msg)
        log(msg)

    def check(self, system, label, reps, missing, extra):
        parts = []
        for key, what in (("lagged", "lagged"), ("disorder", "out of order"), ("disconnects", "disconnects"), ("other", "unexpected frames")):
            v = sum(r[key] for r in reps)
            if v:
                parts.append(f"{v} {what}")
        if missing:
            parts.append(f"{missing} deliveries missing")
        if extra:
            parts.append(f"{extra} duplicate deliveries")
        errors = [e for r in reps for e in r["errors"]]
        if errors:
            parts.append(f"errors: {errors[:2]}")
        if parts:
            self.notes.append(f"{system} {label}: " + ", ".join(parts))

    def summarize(self):
        for (system, label), lat in self.lat.items():
            self.res[(system, f"{label}.p50")] = pct(lat, 50)
            self.res[(system, f"{label}.p99")] = pct(lat, 99)
            self.res[(system, f"{label}.count")] = len(lat)
            neg = sum(1 for x in lat if x < 0)
            if neg:
                self.notes.append(f"{system} {label}: {100 * neg / len(lat):.1f}% of deliveries arrived before the write's ack (min {min(lat):.3f} ms)")
        for (system, label), comp in self.completion.items():
            self.res[(system, f"{label}.fanout_p99")] = pct(comp, 99)
        for (system, label), lat in self.lat_send.items():
            self.res[(system, f"{label}.send_p50")] = pct(lat, 50)
            self.res[(system, f"{label}.send_p99")] = pct(lat, 99)
        for (system, label), comp in self.completion_send.items():
            self.res[(system, f"{label}.fanout_send_p99")] = pct(comp, 99)
        for (system, label), acks in self.acks.items():
            self.res[(system, f"{label}.ack_p50")] = pct(acks, 50)


# ---------------------------------------------------------------------------------------------
# Reads with wrk


async def load_docs(url: str, n: int, batch: int) -> float:
    import aiohttp

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{url}/barrels/bench") as r:
            if r.status not in (201, 412):
                raise RuntimeError(f"PUT /barrels/bench: {r.status} {await r.text()}")
        for b0 in range(0, n, batch):
            body = b'{"docs":[' + b",".join(doc(k, "r") for k in range(b0, min(n, b0 + batch))) + b"]}"
            async with s.post(
                f"{url}/barrels/bench/_bulk_docs", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                res = await r.read()
                if r.status not in (200, 201):
                    raise RuntimeError(f"_bulk_docs: {r.status} {res[:300]!r}")
                bad = [x for x in json.loads(res) if "error" in x]
                if bad:
                    raise RuntimeError(f"_bulk_docs: {len(bad)} failed, first {bad[0]}")
        # Check one of each.
        async with s.get(f"{url}/barrels/bench/docs/r{n - 1}") as r:
            if r.status != 200:
                raise RuntimeError(f"GET r{n - 1}: {r.status}")
        async with s.get(f"{url}/barrels/bench") as r:
            info = await r.json()
        if info.get("doc_count", n) < n:
            raise RuntimeError(f"barrel holds {info.get('doc_count')} documents, not {n}")
    return time.monotonic() - t0


def wrk(a, mode: str, seconds: float, script: str) -> dict:
    cmd = [
        a.wrk, f"-t{a.wrk_threads}", f"-c{a.conns}", f"-d{seconds:g}s", "--latency", "-s", script,
        a.url, "--", mode, str(a.docs), "bench",
    ]
    srv0, t0 = cpu_pid(a.pid), time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    srv = cpu_pid(a.pid) - srv0
    m = re.search(r"^WRKJSON (.*)$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["server_cpu"] = srv / wall
    r["server_us_per_req"] = 1e6 * srv / max(1, r["requests"])
    r["load1"] = os.getloadavg()[0]
    return r


def reads(a, run: Run, script: str):
    for mode in ("rest", "graphql"):
        r = wrk(a, mode, a.wrk_warmup, script)
        log(f"warm-up {mode}: {r['rps']:.0f} req/s")
    order = []
    for i in range(a.wrk_rounds):
        order += ["rest", "graphql"] if i % 2 == 0 else ["graphql", "rest"]
    tot = {m: {"requests": 0, "us": 0, "bad": 0, "p50": [], "p99": [], "rps": [], "cpu": [], "cpu_req": []} for m in ("rest", "graphql")}
    for mode in order:
        r = wrk(a, mode, a.wrk_seconds, script)
        bad = r["non200"] + r["gql_errors"] + r["no_doc"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
        t = tot[mode]
        t["requests"] += r["requests"]
        t["us"] += r["duration_us"]
        t["bad"] += bad
        t["p50"].append(r["lat_p50_us"] / 1000)
        t["p99"].append(r["lat_p99_us"] / 1000)
        t["rps"].append(r["rps"])
        t["cpu"].append(r["server_cpu"])
        t["cpu_req"].append(r["server_us_per_req"])
        msg = (
            f"wrk {mode:<7} {r['rps']:9.0f} req/s  p50 {r['lat_p50_us'] / 1000:.2f} ms p99 {r['lat_p99_us'] / 1000:.2f} ms"
            f"  answers checked {r['responses']}: non-200 {r['non200']}, GraphQL errors {r['gql_errors']}, no doc {r['no_doc']};"
            f" socket errors {r['connect'] + r['read'] + r['write'] + r['timeout']}; server CPU {100 * r['server_cpu']:.0f}% = {r['server_us_per_req']:.0f} us/req; load1 {r['load1']:.2f}"
        )
        run.blocks.append(msg)
        log(msg)
        if r["sample"]:
            run.notes.append(f"wrk {mode}: first bad answer: {r['sample']}")
    for mode, t in tot.items():
        run.res[(mode, "rps")] = t["requests"] / (t["us"] / 1e6)
        run.res[(mode, "p50")] = sum(t["p50"]) / len(t["p50"])
        run.res[(mode, "p99")] = max(t["p99"])
        run.res[(mode, "cpu")] = sum(t["cpu"]) / len(t["cpu"])
        run.res[(mode, "cpu_req")] = sum(t["cpu_req"]) / len(t["cpu_req"])
        run.res[(mode, "bad")] = t["bad"]
        run.res[(mode, "rounds")] = ", ".join(f"{x:.0f}" for x in t["rps"])
        if t["bad"]:
            run.notes.append(f"wrk {mode}: {t['bad']} bad answers or socket errors")
    # Diagnostics (not judged): what the GraphQL path costs without `body`, and with nothing.
    for mode in a.wrk_diag:
        r = wrk(a, mode, a.wrk_diag_seconds, script)
        bad = r["non200"] + r["gql_errors"] + r["no_doc"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
        run.res[(mode, "rps")] = r["rps"]
        run.res[(mode, "cpu_req")] = r["server_us_per_req"]
        msg = (
            f"wrk {mode:<11} {r['rps']:9.0f} req/s  p50 {r['lat_p50_us'] / 1000:.2f} ms p99 {r['lat_p99_us'] / 1000:.2f} ms"
            f"  bad answers {bad}; server CPU {100 * r['server_cpu']:.0f}% = {r['server_us_per_req']:.0f} us/req; load1 {r['load1']:.2f} [diagnostic]"
        )
        run.blocks.append(msg)
        log(msg)


# ---------------------------------------------------------------------------------------------
# Table


def fmt(v, digits=3):
    if v is None or v != v:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def table(run: Run, a, version: str, elapsed: float) -> bool:
    r = run.res
    verdicts = []
    w0 = 56
    head = f"{'figure':<{w0}}{'native':>11}{'GraphQL':>11}{'ratio':>8}  {'target':<12}{'result':<6}"
    lines = [head, "-" * len(head)]

    def ratio_of(nv, gv):
        if nv is not None and gv is not None and nv == nv and gv == gv and nv > 0 and gv > 0:
            return gv / nv
        return None

    def row(label, nv, gv, target=None, judge=True, force_fail=False):
        ratio = ratio_of(nv, gv)
        tgt, res = "", ""
        if target is not None:
            op, lim = target
            tgt = f"{op} {lim:g}"
            if not judge:
                res = "(n/a)"
            else:
                ok = ratio is not None and (ratio >= lim if op == ">=" else ratio <= lim) and not force_fail
                res = "PASS" if ok else "FAIL"
                verdicts.append(ok)
        rt = fmt(ratio, 2) if ratio is not None else "-"
        lines.append(f"{label:<{w0}}{fmt(nv):>11}{fmt(gv):>11}{rt:>8}  {tgt:<12}{res:<6}")

    bad = (r.get(("rest", "bad")) or 0) + (r.get(("graphql", "bad")) or 0)
    if ("rest", "rps") in r:
        row(f"reads, {a.conns} conns: GET doc vs doc(id) req/s", r.get(("rest", "rps")), r.get(("graphql", "rps")), (">=", 0.5), force_fail=bool(bad))
        row("  request latency p50 (ms, mean of rounds)", r.get(("rest", "p50")), r.get(("graphql", "p50")))
        row("  request latency p99 (ms, worst round)", r.get(("rest", "p99")), r.get(("graphql", "p99")))
        row("  server CPU per request (us)", r.get(("rest", "cpu_req")), r.get(("graphql", "cpu_req")))
        for mode, what in (("graphql-id", "doc(id){id rev}"), ("graphql-min", "{__typename}")):
            if (mode, "rps") in r:
                row(f"  [diag] GraphQL {what}: req/s", r.get(("rest", "rps")), r.get((mode, "rps")))
                row(f"  [diag] GraphQL {what}: server us/req", r.get(("rest", "cpu_req")), r.get((mode, "cpu_req")))
    L, G = "listener", "graphql"
    for label, n in (("a", 1), ("b", a.n)):
        cnt = f"{r.get((L, label + '.count'), 0):.0f}/{r.get((G, label + '.count'), 0):.0f}"
        ack_ratio = ratio_of(r.get((L, f"{label}.p99")), r.get((G, f"{label}.p99")))
        row(f"N={n}: latency p50, receive - 201 (ms)", r.get((L, f"{label}.p50")), r.get((G, f"{label}.p50")))
        row(f"N={n}: latency p99, receive - 201 (ms) [{cnt}]", r.get((L, f"{label}.p99")), r.get((G, f"{label}.p99")), ("<=", 1.5), judge=ack_ratio is not None)
        row(f"N={n}: latency p50, receive - PUT start (ms)", r.get((L, f"{label}.send_p50")), r.get((G, f"{label}.send_p50")))
        row(f"N={n}: latency p99, receive - PUT start (ms)", r.get((L, f"{label}.send_p99")), r.get((G, f"{label}.send_p99")), ("<=", 1.5), judge=ack_ratio is None)
        if n > 1:
            row(f"N={n}: fan-out completion p99, from 201 (ms)", r.get((L, f"{label}.fanout_p99")), r.get((G, f"{label}.fanout_p99")))
            row(f"N={n}: fan-out completion p99, from PUT start (ms)", r.get((L, f"{label}.fanout_send_p99")), r.get((G, f"{label}.fanout_send_p99")))
        row(f"N={n}: PUT -> 201 p50 (ms) [context]", r.get((L, f"{label}.ack_p50")), r.get((G, f"{label}.ack_p50")))

    print()
    print(f"GraphQL vs native interfaces, one Cooper node (cooper {version}); same run")
    print(
        f"reads: {a.docs} docs of {len(doc(0, 'r'))}-{len(doc(a.docs - 1, 'r'))} bytes, wrk {a.wrk_threads} threads"
        f" {a.conns} connections, {a.wrk_rounds} x {a.wrk_seconds:g} s per interface alternating (R G G R ...),"
        f" every answer checked (200, no \"errors\", doc present); req/s per round: REST [{r.get(('rest', 'rounds'))}]"
        f" GraphQL [{r.get(('graphql', 'rounds'))}]"
    )
    print(
        f"subscriptions: filter {FILTER}; native = /barrels/bench/listen, GraphQL = /graphql/ws"
        f" graphql-transport-ws {{seq docId}}; no documents in the events; blocks alternate L G G L ({a.blocks} per system);"
        f" N=1: {a.m_a} writes per system; N={a.n}: {a.m_b} writes per system, {a.procs} subscriber processes;"
        f" sequential PUTs, each waits for its 201 and its last delivery, then {a.gap_ms:g} ms;"
        f" {a.warmup} warm-up writes per block not counted"
    )
    print(
        "ratio = GraphQL / native. The latency target is judged on receive - 201 when both p99s are > 0,"
        " else (deliveries overtaking the 201) on receive - PUT start."
    )
    print("\n".join(lines))
    for t in run.notes:
        print(f"note: {t}")
    print("blocks:")
    for b in run.blocks:
        print(f"  {b}")
    print("CPU per subscription block (100% = one core):")
    print("\n".join(run.cpu_lines))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores); bench.py ran {elapsed:.0f} s")
    ok = all(verdicts)
    print(f"RESULT {'PASS' if ok else 'FAIL'}")
    return ok


async def main(a):
    import aiohttp

    started = time.monotonic()
    run = Run(a)
    log(f"loading {a.docs} documents (_bulk_docs, batches of {a.batch})")
    secs = await load_docs(a.url, a.docs, a.batch)
    log(f"loaded in {secs:.2f} s")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{a.url}/") as r:
            version = (await r.json()).get("version", "?")

    if not a.skip_reads:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk.lua")
        await asyncio.get_running_loop().run_in_executor(None, reads, a, run, script)

    pub = Pub(a.url)
    try:
        for label, n, m in (("a", 1, a.m_a), ("b", a.n, a.m_b)):
            per = [m // a.blocks + (1 if i < m % a.blocks else 0) for i in range(a.blocks)]
            order = []
            for i in range(a.blocks):
                order += [("listener", per[i]), ("graphql", per[i])] if i % 2 == 0 else [("graphql", per[i]), ("listener", per[i])]
            for system, mm in order:
                await run.block(pub, system, label, n, mm)
                await asyncio.sleep(0.3)
        if pub.errors:
            run.notes.append(f"publisher: {len(pub.errors)} write errors, first: {pub.errors[0]}")
    finally:
        await pub.close()
    run.summarize()
    ok = table(run, a, version, time.monotonic() - started)
    return 0 if ok or not a.strict else 1


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="Cooper base URL")
    ap.add_argument("--pid", type=int, help="the cooper process (for CPU figures)")
    ap.add_argument("--docs", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--wrk", default="wrk")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--wrk-seconds", type=float, default=10)
    ap.add_argument("--wrk-rounds", type=int, default=2, help="rounds per interface")
    ap.add_argument("--wrk-warmup", type=float, default=2)
    ap.add_argument("--wrk-diag", type=lambda s: [x for x in s.split(",") if x], default=["graphql-id", "graphql-min"])
    ap.add_argument("--wrk-diag-seconds", type=float, default=4)
    ap.add_argument("--skip-reads", action="store_true")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--m-a", type=int, default=1000)
    ap.add_argument("--m-b", type=int, default=100)
    ap.add_argument("--blocks", type=int, default=2, help="blocks per system per N (alternating)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--gap-ms", type=float, default=2.0)
    ap.add_argument("--delivery-timeout", type=float, default=5.0)
    ap.add_argument("--key-base", type=int, default=1000)
    ap.add_argument("--strict", action="store_true")
    return ap.parse_args(sys.argv[2:])


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        asyncio.run(worker(json.loads(sys.argv[2])))
    elif len(sys.argv) >= 2 and sys.argv[1] == "main":
        sys.exit(asyncio.run(main(parse())))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
