#!/usr/bin/env python3
"""Listener fan-out: Cooper's listener websocket against mosquitto (websockets listener,
paho-mqtt clients), in the same run, with the same shapes (DESIGN §8). Started by
bench/listen/run.sh, which starts both servers; see the header of run.sh for the workloads.

    python3 bench/listen/bench.py main --cooper URL --mqtt HOST:PORT [options]
    python3 bench/listen/bench.py worker CONFIG_JSON        (subscriber process, internal)

Client structure (identical for both systems): the subscribers live in W worker processes,
each one asyncio event loop with one readiness callback per socket, and a message is
timestamped (time.monotonic_ns, CLOCK_MONOTONIC, shared by all processes) in the callback
that hands it to the application, then parsed as JSON for its key:
  - Cooper: websockets' sans-I/O ClientProtocol on an asyncio Protocol; the key is the
    change frame's doc_id (d<k>).
  - mosquitto: paho-mqtt Client(transport="websockets") driven by the same event loop through
    paho's socket callbacks (loop_read/loop_write on readiness); the key is the payload's _id.
The publisher lives in the main process: aiohttp (one keep-alive connection) for Cooper,
paho-mqtt on the same event loop for mosquitto. Latency = receive time - acknowledgement
time (HTTP response parsed; PUBACK handled for QoS 1; packet written for QoS 0), not clamped:
a delivery that overtakes the acknowledgement counts negative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

now = time.monotonic_ns

FIRST = ["Ann", "Bob", "Chloe", "Dmitri", "Eve", "Farid", "Grace", "Hiro"]
LAST = ["Martin", "Dubois", "Smith", "Okafor", "Tanaka", "Novak", "Rossi", "Kim"]
CITIES = ["Paris", "Lyon", "Berlin", "Lagos", "Osaka", "Prague", "Milan", "Seoul"]
TAGS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]
WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "elit", "sed", "magna"]


def pick(xs, n):
    return xs[n % len(xs)]


def doc(k: int) -> bytes:
    """Document k: ~300 bytes of nested JSON holding /users/<k>/name = "Ann <k>" (so its
    Cooper topic is users/<k>/name/Ann <k>; mosquitto gets it on topic users/<k>/name)."""
    last = pick(LAST, k * 7 + 3)
    bio = " ".join(pick(WORDS, k + j) for j in (0, 1, 2, 3, 5))
    d = {
        "_id": f"d{k}",
        "kind": "bench",
        "users": {
            str(k): {
                "name": f"Ann {k}",
                "email": f"ann.{last.lower()}{k}@example.org",
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
    return json.dumps(d, separators=(",", ":")).encode()


def log(*a):
    print(f"[bench.py {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_busy() -> float:
    """CPU seconds all processes of the machine used (every core), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def cpu_pid(pid: int | None) -> float:
    if not pid:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


# =============================================================================================
# Subscriber worker process


class Sink:
    """Receive times per key, shared by the subscribers of one worker."""

    def __init__(self, out):
        self.out = out
        self.n = 0  # subscribers of this worker
        self.recv: dict[int, list[int]] = {}
        self.burst: tuple[int, int] | None = None
        self.burst_total = 0
        self.disorder = 0  # a key not greater than the subscriber's previous one
        self.lagged = 0
        self.errors: list[str] = []
        self.disconnects = 0
        self.other = 0

    def deliver(self, sub, key: int, t: int):
        if key <= sub.last:
            self.disorder += 1
        sub.last = key
        lst = self.recv.get(key)
        if lst is None:
            lst = self.recv[key] = []
        lst.append(t)
        b = self.burst
        if b is None:
            if len(lst) == self.n:
                self.out({"ev": "done", "k": key})
        elif b[0] <= key < b[1]:
            self.burst_total += 1
            if self.burst_total == self.n * (b[1] - b[0]):
                self.out({"ev": "burst_done"})

    def error(self, text: str):
        if len(self.errors) < 20:
            self.errors.append(text)


class CooperSub(asyncio.Protocol):
    """One listener websocket (websockets' sans-I/O protocol on an asyncio transport)."""

    def __init__(self, uri, sink: Sink, subscribe: bytes):
        from websockets.client import ClientProtocol

        self.p = ClientProtocol(uri, max_size=None)
        self.sink = sink
        self.subscribe = subscribe
        self.ready = asyncio.get_running_loop().create_future()
        self.last = -1
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
                    self.p.send_text(self.subscribe)
            elif ev.opcode is Opcode.TEXT:
                t = now()
                m = json.loads(ev.data)
                op = m.get("op")
                if op == "change":
                    self.sink.deliver(self, int(m["doc_id"][1:]), t)
                elif op == "subscribed":
                    if not self.ready.done():
                        self.ready.set_result(True)
                elif op == "lagged":
                    self.sink.lagged += 1
                    self.sink.error(f"lagged: {m}")
                elif op == "error":
                    self.fail(f"error frame: {m}")
                else:
                    self.sink.other += 1
        self.flush()

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


class BufferedWebsocket:
    """A drop-in for paho-mqtt's websocket transport that reads the socket in large chunks.

    paho's own wrapper (paho.mqtt.client._WebsocketWrapper) re-parses the websocket frame
    header and makes a recv() system call for every piece paho asks for (the packet type
    byte, each remaining-length byte, the rest): 3-5 system calls and Python frame parsing
    per MQTT message, where the Cooper client makes one recv() per readiness event for however
    many frames arrived. With BENCH_PAHO_WS=buffered (the default) paho gets this subclass
    instead: one recv(256 KiB) per call when its buffer is empty, every complete frame
    decoded at once, paho served from the buffer; pending() tells the reader callback to keep
    calling loop_read() while decoded bytes remain. The MQTT protocol handling is paho's.
    """

    base = None  # paho's _WebsocketWrapper, set by install()

    @classmethod
    def install(cls):
        import paho.mqtt.client as mqtt

        base = mqtt._WebsocketWrapper

        class Buffered(base):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)  # the blocking HTTP upgrade, as paho does it
                self._raw = bytearray()
                self._payload = bytearray()
                self._ppos = 0
                self._eof = False

            def pending(self) -> int:
                return len(self._payload) - self._ppos

            def recv(self, length: int) -> bytes:
                if self._ppos >= len(self._payload):
                    self._payload.clear()
                    self._ppos = 0
                    if not self._fill():
                        return b""
                end = self._ppos + length
                out = bytes(self._payload[self._ppos : end])
                self._ppos += len(out)
                return out

            def _fill(self) -> bool:
                """Reads and decodes until some payload is buffered; False at EOF."""
                while not self._payload:
                    if self._eof:
                        return False
                    data = self._socket.recv(262144)  # BlockingIOError when none
                    if not data:
                        self._eof = True
                        self.connected = False
                        return False
                    self._raw += data
                    self._decode()
                return True

            def _decode(self):
                raw, pos, n = self._raw, 0, len(self._raw)
                while n - pos >= 2:
                    b1, b2 = raw[pos], raw[pos + 1]
                    opcode, masked, ln, h = b1 & 0x0F, b2 & 0x80, b2 & 0x7F, 2
                    if ln == 126:
                        if n - pos < 4:
                            break
                        ln, h = int.from_bytes(raw[pos + 2 : pos + 4], "big"), 4
                    elif ln == 127:
                        if n - pos < 10:
                            break
                        ln, h = int.from_bytes(raw[pos + 2 : pos + 10], "big"), 10
                    mask = None
                    if masked:
                        if n - pos < h + 4:
                            break
                        mask, h = raw[pos + h : pos + h + 4], h + 4
                    if n - pos < h + ln:
                        break
                    payload = raw[pos + h : pos + h + ln]
                    if mask is not None:
                        payload = bytearray(c ^ mask[i % 4] for i, c in enumerate(payload))
                    pos += h + ln
                    if opcode in (base.OPCODE_BINARY, base.OPCODE_CONTINUATION):
                        self._payload += payload
                    elif opcode == base.OPCODE_PING:
                        self._socket.send(self._create_frame(base.OPCODE_PONG, bytearray(payload), 0))
                    elif opcode == base.OPCODE_CONNCLOSE:
                        self._eof = True
                        self.connected = False
                        try:
                            self._socket.send(self._create_frame(base.OPCODE_CONNCLOSE, bytearray(payload), 0))
                        except OSError:
                            pass
                if pos:
                    del raw[:pos]

        cls.base = base
        mqtt._WebsocketWrapper = Buffered


def paho_attach(client, loop):
    """Drives a connected paho-mqtt client from an asyncio loop (paho's socket callbacks:
    loop_read/loop_write on readiness, as paho's own asyncio example does)."""
    sock = client.socket()

    def read():
        rc = client.loop_read()
        s = client.socket()
        while rc == 0 and s is not None and s.pending():
            rc = client.loop_read()
            s = client.socket()

    def reg_write(c, u, s):
        loop.add_writer(s, c.loop_write)

    def unreg_write(c, u, s):
        loop.remove_writer(s)

    def close(c, u, s):
        loop.remove_reader(s)
        loop.remove_writer(s)

    client.on_socket_close = close
    client.on_socket_register_write = reg_write
    client.on_socket_unregister_write = unreg_write
    loop.add_reader(sock, read)
    if client.want_write():
        loop.add_writer(sock, client.loop_write)
    if sock.pending():
        loop.call_soon(read)


def paho_client(client_id: str):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        transport="websockets",
        clean_session=True,
    )
    c.max_queued_messages_set(0)
    return c


async def paho_connect(clients, host: str, port: int, threads: int = 64):
    """Connects paho clients (paho's connect() blocks through the websocket upgrade, which
    mosquitto 2.0.11 answers only on a ~200 ms tick) in a thread pool, then hands each to the
    event loop. The CONNECT packet is written by connect() itself (no callbacks yet)."""
    import concurrent.futures

    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futs = []
        for c in clients:
            fut = loop.run_in_executor(pool, lambda c=c: c.connect(host, port, keepalive=120))
            fut.add_done_callback(lambda f, c=c: f.exception() is None and paho_attach(c, loop))
            futs.append(fut)
        await asyncio.gather(*futs)


class MqttSub:
    """One paho-mqtt subscriber over websockets."""

    def __init__(self, client_id: str, qos: int, sink: Sink, loop):
        self.sink = sink
        self.qos = qos
        self.last = -1
        self.ready = loop.create_future()
        c = self.c = paho_client(client_id)
        c.on_connect = self.on_connect
        c.on_subscribe = self.on_subscribe
        c.on_message = self.on_message
        c.on_disconnect = self.on_disconnect

    def on_connect(self, client, userdata, flags, rc, props):
        if rc.is_failure:
            self.fail(f"connect: {rc}")
        else:
            client.subscribe("users/+/name", qos=self.qos)

    def on_subscribe(self, client, userdata, mid, rcs, props):
        if any(r.is_failure for r in rcs):
            self.fail(f"subscribe: {rcs}")
        elif not self.ready.done():
            self.ready.set_result(True)

    def on_message(self, client, userdata, msg):
        t = now()
        m = json.loads(msg.payload)
        self.sink.deliver(self, int(m["_id"][1:]), t)

    def on_disconnect(self, client, userdata, flags, rc, props):
        self.sink.disconnects += 1
        self.fail(f"disconnected: {rc}")

    def fail(self, why):
        self.sink.error(why)
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))

    def close(self):
        self.c.on_disconnect = None
        try:
            self.c.disconnect()
            self.c.loop_write()
        except Exception:  # noqa: BLE001 - best effort at the end
            pass


async def worker(cfg: dict):
    loop = asyncio.get_running_loop()
    out_fd = sys.stdout.fileno()

    def out(obj):
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        while data:
            n = os.write(out_fd, data)
            data = data[n:]

    sink = Sink(out)
    n = cfg["n"]
    subs = []
    t0 = now()
    if cfg["system"] == "cooper":
        from websockets.uri import parse_uri

        uri = parse_uri(cfg["url"])
        frame = json.dumps(
            {
                "op": "subscribe",
                "id": 1,
                "filters": [cfg["filter"]],
                "since": "now",
                "include_docs": cfg["include_docs"],
            }
        ).encode()
        for i in range(0, n, 100):
            batch = []
            for _ in range(i, min(n, i + 100)):
                s = CooperSub(uri, sink, frame)
                batch.append(loop.create_connection(lambda s=s: s, uri.host, uri.port))
                subs.append(s)
            await asyncio.gather(*batch)
    else:
        if cfg["paho_ws"] == "buffered":
            BufferedWebsocket.install()
        host, port = cfg["mqtt"].rsplit(":", 1)
        subs = [MqttSub(f"sub-{os.getpid()}-{i}", cfg["qos"], sink, loop) for i in range(n)]
        await paho_connect([s.c for s in subs], host, int(port))

        async def misc():
            while True:
                await asyncio.sleep(1)
                for s in subs:
                    s.c.loop_misc()

        misc_task = loop.create_task(misc())  # noqa: F841 - keepalive pings
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
        if c == "burst":
            sink.burst = (cmd["k0"], cmd["k1"])
            sink.burst_total = 0
        elif c == "status":
            total = sum(len(v) for v in sink.recv.values())
            out({"ev": "status", "total": total})
        elif c == "collect":
            cpu = cpu_self()
            rep = {
                "ev": "data",
                "cpu_s": cpu - cpu_mark,
                "disorder": sink.disorder,
                "lagged": sink.lagged,
                "disconnects": sink.disconnects,
                "other": sink.other,
                "errors": sink.errors,
            }
            cpu_mark = cpu
            if cmd.get("summary"):
                k0, k1 = cmd["k0"], cmd["k1"]
                times = [t for k, v in sink.recv.items() if k0 <= k < k1 for t in v]
                rep["count"] = len(times)
                rep["first"] = min(times) if times else None
                rep["last"] = max(times) if times else None
            else:
                rep["recv"] = {str(k): v for k, v in sink.recv.items()}
            sink.recv = {}
            sink.burst = None
            sink.errors = []
            out(rep)
        elif c == "quit":
            break
    for s in subs:
        s.close()
    await asyncio.sleep(0.2)


# =============================================================================================
# Main process: publisher and orchestration


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    i = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))  # nearest rank
    return s[i]


class Workers:
    """W subscriber processes that share N subscriptions."""

    def __init__(self):
        self.procs = []
        self.replies: list[asyncio.Queue] = []
        self.done_count: dict[int, int] = {}
        self.waiters: dict[int, asyncio.Future] = {}
        self.burst_done = 0
        self.burst_fut: asyncio.Future | None = None
        self.active = 0

    async def start(self, cfg: dict, n: int, procs: int):
        procs = max(1, min(procs, n))
        shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        for share in shares:
            c = dict(cfg, n=share)
            p = await asyncio.create_subprocess_exec(
                sys.executable,
                os.path.abspath(__file__),
                "worker",
                json.dumps(c),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
            )
            q: asyncio.Queue = asyncio.Queue()
            self.procs.append(p)
            self.replies.append(q)
            asyncio.get_running_loop().create_task(self._read(p, q))
        self.active = len(self.procs)
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
                if c == self.active and k in self.waiters and not self.waiters[k].done():
                    self.waiters[k].set_result(None)
            elif ev == "burst_done":
                self.burst_done += 1
                if self.burst_done == self.active and self.burst_fut and not self.burst_fut.done():
                    self.burst_fut.set_result(None)
            else:
                await q.put(m)

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        for p in self.procs:
            p.stdin.write(data)

    def expect(self, k) -> asyncio.Future:
        f = asyncio.get_running_loop().create_future()
        if self.done_count.get(k, 0) == self.active:
            f.set_result(None)
        self.waiters[k] = f
        return f

    def expect_burst(self, k0, k1) -> asyncio.Future:
        self.burst_done = 0
        self.burst_fut = asyncio.get_running_loop().create_future()
        self.send({"cmd": "burst", "k0": k0, "k1": k1})
        return self.burst_fut

    async def ask(self, obj) -> list[dict]:
        self.send(obj)
        for p in self.procs:
            await p.stdin.drain()
        return [await asyncio.wait_for(q.get(), 120) for q in self.replies]

    async def wait_progress(self, fut, stall_s: float, limit_s: float) -> bool:
        """Waits for fut; gives up when the deliveries stop progressing for stall_s."""
        start = time.monotonic()
        last, last_change = -1, time.monotonic()
        while not fut.done():
            try:
                await asyncio.wait_for(asyncio.shield(fut), 1.0)
                break
            except asyncio.TimeoutError:
                pass
            total = sum(r["total"] for r in await self.ask({"cmd": "status"}))
            if total != last:
                last, last_change = total, time.monotonic()
            if time.monotonic() - last_change > stall_s or time.monotonic() - start > limit_s:
                return False
        return True

    async def stop(self):
        self.send({"cmd": "quit"})
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 10)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()


class CooperPub:
    name = "cooper"

    def __init__(self, url: str, burst_mode: str, burst_conc: int):
        import aiohttp

        self.url = url.rstrip("/")
        self.burst_mode = burst_mode
        self.burst_conc = burst_conc
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(1, burst_conc), force_close=False)
        )
        self.headers = {"Content-Type": "application/json"}
        self.write_errors: list[str] = []

    async def setup(self):
        async with self.session.put(f"{self.url}/barrels/bench") as r:
            if r.status not in (201, 412):
                raise RuntimeError(f"PUT /barrels/bench: {r.status} {await r.text()}")
        async with self.session.get(f"{self.url}/") as r:
            self.version = (await r.json()).get("version", "?")

    def sub_cfg(self, include_docs: bool) -> dict:
        ws = "ws" + self.url[len("http"):]
        return {
            "system": "cooper",
            "url": f"{ws}/barrels/bench/listen",
            "filter": "users/+/name/#",
            "include_docs": include_docs,
        }

    async def write(self, k: int) -> int:
        async with self.session.put(
            f"{self.url}/barrels/bench/docs/d{k}", data=doc(k), headers=self.headers
        ) as r:
            body = await r.read()
            t = now()
            if r.status != 201:
                self.write_errors.append(f"PUT d{k}: {r.status} {body[:200]!r}")
        return t

    async def burst(self, k0: int, k1: int) -> tuple[int, int]:
        """Publishes keys k0..k1 as fast as possible; (start, all acknowledged)."""
        if self.burst_mode == "bulk":
            body = b'{"docs":[' + b",".join(doc(k) for k in range(k0, k1)) + b"]}"
            t0 = now()
            async with self.session.post(
                f"{self.url}/barrels/bench/_bulk_docs", data=body, headers=self.headers
            ) as r:
                res = await r.read()
                t1 = now()
                if r.status not in (200, 201):
                    self.write_errors.append(f"_bulk_docs: {r.status} {res[:200]!r}")
                else:
                    bad = [x for x in json.loads(res) if "error" in x]
                    if bad:
                        self.write_errors.append(f"_bulk_docs: {len(bad)} failed, {bad[0]}")
            return t0, t1
        payloads = {k: doc(k) for k in range(k0, k1)}
        queue = list(range(k0, k1))
        queue.reverse()

        async def one():
            while queue:
                k = queue.pop()
                async with self.session.put(
                    f"{self.url}/barrels/bench/docs/d{k}", data=payloads[k], headers=self.headers
                ) as r:
                    b = await r.read()
                    if r.status != 201:
                        self.write_errors.append(f"PUT d{k}: {r.status} {b[:200]!r}")

        t0 = now()
        await asyncio.gather(*(one() for _ in range(self.burst_conc)))
        return t0, now()

    async def close(self):
        await self.session.close()


class MqttPub:
    def __init__(self, hostport: str, qos: int, paho_ws: str):
        self.hostport = hostport
        self.paho_ws = paho_ws
        self.qos = qos
        self.name = f"mosq-q{qos}"
        self.write_errors: list[str] = []
        self.acks: dict[int, int] = {}
        self.waiting: dict[int, asyncio.Future] = {}

    async def setup(self):
        loop = asyncio.get_running_loop()
        host, port = self.hostport.rsplit(":", 1)
        c = self.c = paho_client(f"pub-{os.getpid()}-{self.qos}")
        c.max_inflight_messages_set(65535)
        connected = loop.create_future()
        c.on_connect = lambda cl, u, f, rc, p: connected.done() or connected.set_result(rc)
        c.on_publish = self.on_publish
        c.on_disconnect = lambda cl, u, f, rc, p: self.write_errors.append(f"disconnected: {rc}")
        await paho_connect([c], host, int(port))
        rc = await asyncio.wait_for(connected, 30)
        if rc.is_failure:
            raise RuntimeError(f"publisher connect: {rc}")

        async def misc():
            while True:
                await asyncio.sleep(1)
                c.loop_misc()

        self.misc = loop.create_task(misc())

    def sub_cfg(self, include_docs: bool) -> dict:
        return {"system": "mqtt", "mqtt": self.hostport, "qos": self.qos, "paho_ws": self.paho_ws}

    def on_publish(self, client, userdata, mid, rc, props):
        t = now()
        f = self.waiting.pop(mid, None)
        if f is not None:
            f.set_result(t)
        else:
            self.acks[mid] = t

    def _publish(self, k: int, payload: bytes) -> asyncio.Future:
        info = self.c.publish(f"users/{k}/name", payload, qos=self.qos)
        if info.rc != 0:
            self.write_errors.append(f"publish {k}: rc {info.rc}")
        f = asyncio.get_running_loop().create_future()
        if info.mid in self.acks:
            f.set_result(self.acks.pop(info.mid))
        else:
            self.waiting[info.mid] = f
        return f

    async def write(self, k: int) -> int:
        return await self._publish(k, doc(k))

    async def burst(self, k0: int, k1: int) -> tuple[int, int]:
        payloads = [(k, doc(k)) for k in range(k0, k1)]
        t0 = now()
        futs = [self._publish(k, p) for k, p in payloads]
        acks = await asyncio.gather(*futs)
        return t0, max(acks)

    async def close(self):
        self.misc.cancel()
        self.c.disconnect()
        await asyncio.sleep(0.1)


class Run:
    def __init__(self, a):
        self.a = a
        self.key = a.key_base
        self.res: dict[tuple[str, str], float] = {}
        self.info: dict[str, list[str]] = {}
        self.notes: list[str] = []

    def keys(self, n):
        k0 = self.key
        self.key += n
        return k0, self.key

    def note(self, system, text):
        self.info.setdefault(system, []).append(text)

    async def phase(self, pub, label: str, n: int, m: int, k_burst: int):
        a = self.a
        sysname = pub.name
        w = Workers()
        procs = 1 if n == 1 else a.procs
        connect_s = await w.start(pub.sub_cfg(a.include_docs), n, procs)
        spids = [p.pid for p in w.procs]
        log(f"{label} {sysname}: {n} subscriber(s) in {len(spids)} process(es), connected in {connect_s:.1f} s")

        # Sequential writes: each waits for its acknowledgement and for its last delivery.
        # The first WARMUP ones are not counted.
        k0, k1 = self.keys(a.warmup + m)
        acks: dict[int, int] = {}
        rtt: dict[int, float] = {}
        sent: dict[int, int] = {}
        timeouts = 0
        srv0, pub0, all0, wall0 = cpu_pid(a.pids.get(sysname)), cpu_self(), cpu_busy(), now()
        for k in range(k0, k1):
            fut = w.expect(k)
            sent[k] = now()
            acks[k] = await pub.write(k)
            rtt[k] = (acks[k] - sent[k]) / 1e6
            try:
                await asyncio.wait_for(fut, a.delivery_timeout)
            except asyncio.TimeoutError:
                timeouts += 1
                if timeouts >= 5:
                    self.note(sysname, f"{label}: 5 writes not fully delivered within {a.delivery_timeout} s; phase cut at key {k}")
                    break
            w.waiters.pop(k, None)
            if a.gap_ms:
                await asyncio.sleep(a.gap_ms / 1000)
        wall = (now() - wall0) / 1e9
        srv_cpu, pub_cpu = cpu_pid(a.pids.get(sysname)) - srv0, cpu_self() - pub0
        all_cpu = cpu_busy() - all0
        reps = await w.ask({"cmd": "collect"})
        recv: dict[int, list[int]] = {}
        for r in reps:
            for k, v in r["recv"].items():
                recv.setdefault(int(k), []).extend(v)
        lat, completion, missing, extra = [], [], 0, 0
        lat_send, completion_send = [], []
        counted = [k for k in range(k0 + a.warmup, k1) if k in acks]
        for k in counted:
            ts = recv.get(k, [])
            missing += max(0, n - len(ts))
            extra += max(0, len(ts) - n)
            lat.extend((t - acks[k]) / 1e6 for t in ts)
            lat_send.extend((t - sent[k]) / 1e6 for t in ts)
            if len(ts) >= n:
                completion.append((max(ts) - acks[k]) / 1e6)
                completion_send.append((max(ts) - sent[k]) / 1e6)
        sub_cpu = sum(r["cpu_s"] for r in reps)
        self.res[(sysname, f"{label}.p50")] = pct(lat, 50)
        self.res[(sysname, f"{label}.p99")] = pct(lat, 99)
        self.res[(sysname, f"{label}.fanout_p99")] = pct(completion, 99)
        self.res[(sysname, f"{label}.send_p50")] = pct(lat_send, 50)
        self.res[(sysname, f"{label}.send_p99")] = pct(lat_send, 99)
        self.res[(sysname, f"{label}.fanout_send_p99")] = pct(completion_send, 99)
        self.res[(sysname, f"{label}.ack_p50")] = pct([rtt[k] for k in counted], 50)
        self.res[(sysname, f"{label}.ack_p99")] = pct([rtt[k] for k in counted], 99)
        self.res[(sysname, f"{label}.neg")] = 100 * sum(1 for x in lat if x < 0) / max(1, len(lat))
        self.res[(sysname, f"{label}.min")] = min(lat) if lat else float("nan")
        self.check(sysname, label, reps, missing, extra)
        self.cpu(sysname, f"{label} sequential ({len(counted)} writes)", wall, srv_cpu, sub_cpu, pub_cpu, all_cpu, len(lat))
        log(
            f"  sequential: {len(counted)} writes, latency p50 {pct(lat, 50):.3f} ms p99 {pct(lat, 99):.3f} ms,"
            f" fan-out completion p99 {pct(completion, 99):.3f} ms, missing {missing}"
        )

        # Burst: K documents as fast as possible; until every subscriber has all of them.
        if k_burst > 0:
            await asyncio.sleep(0.2)
            b0, b1 = self.keys(k_burst)
            fut = w.expect_burst(b0, b1)
            for p in w.procs:
                await p.stdin.drain()
            await asyncio.sleep(0.1)
            srv0, pub0, all0, wall0 = cpu_pid(a.pids.get(sysname)), cpu_self(), cpu_busy(), now()
            t_start, t_acked = await pub.burst(b0, b1)
            complete = await w.wait_progress(fut, a.stall_s, a.burst_limit_s)
            wall = (now() - wall0) / 1e9
            srv_cpu, pub_cpu = cpu_pid(a.pids.get(sysname)) - srv0, cpu_self() - pub0
            all_cpu = cpu_busy() - all0
            reps = await w.ask({"cmd": "collect", "summary": True, "k0": b0, "k1": b1})
            count = sum(r["count"] for r in reps)
            last = max((r["last"] for r in reps if r["last"] is not None), default=None)
            expected = n * k_burst
            if last is not None:
                span = (last - t_start) / 1e9
                self.res[(sysname, f"{label}.burst_mps")] = count / span
                self.res[(sysname, f"{label}.burst_s")] = span
            self.res[(sysname, f"{label}.burst_ack_s")] = (t_acked - t_start) / 1e9
            if not complete:
                self.note(sysname, f"{label} burst: stopped waiting (no progress for {a.stall_s} s or over {a.burst_limit_s} s)")
            self.check(sysname, f"{label} burst", reps, max(0, expected - count), max(0, count - expected))
            sub_cpu = sum(r["cpu_s"] for r in reps)
            self.cpu(sysname, f"{label} burst ({k_burst} docs x {n})", wall, srv_cpu, sub_cpu, pub_cpu, all_cpu, count)
            self.res[(sysname, f"{label}.burst_srv_us")] = 1e6 * srv_cpu / max(1, count)
            self.res[(sysname, f"{label}.burst_sub_us")] = 1e6 * sub_cpu / max(1, count)
            log(
                f"  burst: {count}/{expected} deliveries in {self.res.get((sysname, f'{label}.burst_s'), float('nan')):.3f} s"
                f" = {self.res.get((sysname, f'{label}.burst_mps'), float('nan')):.0f} msg/s"
                f" (all acknowledged after {(t_acked - t_start) / 1e9:.3f} s)"
            )
        await w.stop()
        if pub.write_errors:
            self.note(sysname, f"{label}: write errors: {len(pub.write_errors)}, first: {pub.write_errors[0]}")
            pub.write_errors.clear()

    def check(self, sysname, label, reps, missing, extra):
        lagged = sum(r["lagged"] for r in reps)
        disorder = sum(r["disorder"] for r in reps)
        disc = sum(r["disconnects"] for r in reps)
        errors = [e for r in reps for e in r["errors"]]
        parts = []
        if missing:
            parts.append(f"{missing} deliveries missing")
        if extra:
            parts.append(f"{extra} duplicate deliveries")
        if disorder:
            parts.append(f"{disorder} out of order")
        if lagged:
            parts.append(f"{lagged} lagged")
        if disc:
            parts.append(f"{disc} disconnects")
        if errors:
            parts.append(f"errors: {errors[:2]}")
        if parts:
            self.note(sysname, f"{label}: " + ", ".join(parts))

    def cpu(self, sysname, what, wall, srv, sub, pub, all_cpu, deliveries):
        d = max(1, deliveries)
        others = max(0.0, all_cpu - srv - sub - pub)
        self.notes.append(
            f"  {sysname:<8} {what:<34} {wall:7.2f} s  server {100 * srv / wall:4.0f}% {1e6 * srv / d:5.1f} us/msg"
            f"  subscribers {100 * sub / wall:4.0f}% {1e6 * sub / d:5.1f} us/msg  publisher {100 * pub / wall:4.0f}%"
            f"  other processes {100 * others / wall:4.0f}%  load1 {os.getloadavg()[0]:.2f}"
        )


def fmt(v, digits=3):
    if v is None or v != v:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def table(run: Run, systems: list[str], a, versions: str, elapsed: float):
    r = run.res
    C = "cooper"
    ref = f"mosq-q{a.compare_qos}"
    others = [s for s in systems if s != C]
    n = a.n
    rows = [
        # key, label, better (lower/higher), target
        ("a.p50", "(a) N=1     latency p50 (ms)", "low", None),
        ("a.p99", "(a) N=1     latency p99 (ms)", "low", ("abs", 2.0)),
        ("a.ack_p50", "(a) N=1     write -> ack p50 (ms) [context]", "low", None),
        ("a.send_p99", "(a) N=1     latency from write start p99 (ms) [context]", "low", None),
        ("a.burst_mps", f"(a) N=1     burst delivered msg/s ({a.k_burst_a} docs)", "high", None),
        ("b.p50", f"(b) N={n}  latency p50 (ms)", "low", None),
        ("b.p99", f"(b) N={n}  latency p99 (ms)", "low", None),
        ("b.ack_p50", f"(b) N={n}  write -> ack p50 (ms) [context]", "low", None),
        ("b.send_p99", f"(b) N={n}  latency from write start p99 (ms) [context]", "low", None),
        ("b.fanout_send_p99", f"(b) N={n}  fan-out completion from write start p99 (ms) [context]", "low", None),
        ("b.fanout_p99", f"(b) N={n}  fan-out completion p99 (ms)", "low", ("ref", None)),
        ("b.burst_mps", f"(b) N={n}  burst delivered msg/s ({a.k_burst_b} docs)", "high", ("ref", None)),
        ("b.burst_s", f"(b) N={n}  burst: last delivery after (s)", "low", None),
        ("b.burst_ack_s", f"(b) N={n}  burst: all writes acked after (s)", "low", None),
        ("b.burst_srv_us", f"(b) N={n}  burst: server CPU per delivery (us)", "low", None),
        ("b.burst_sub_us", f"(b) N={n}  burst: subscriber CPU per delivery (us)", "low", None),
    ]
    cols = [C] + others
    w0 = 62
    head = f"{'figure':<{w0}}" + "".join(f"{c:>12}" for c in cols)
    head += "".join(f"{'cooper/' + o.split('-')[1]:>12}" for o in others)
    head += f"  {'target':<22}{'result':<6}"
    lines = [head, "-" * len(head)]
    verdicts = []
    for key, label, better, target in rows:
        vals = [r.get((c, key)) for c in cols]
        line = f"{label:<{w0}}" + "".join(f"{fmt(v):>12}" for v in vals)
        cv = r.get((C, key))
        for o in others:
            ov = r.get((o, key))
            # A ratio of latencies that can be negative (delivery before the ack) means nothing.
            ok_vals = cv is not None and ov is not None and cv == cv and ov == ov and cv > 0 and ov > 0
            line += f"{fmt(cv / ov, 2) if ok_vals else '-':>12}"
        tgt, res = "", ""
        if target is not None:
            if target[0] == "abs":
                tgt = f"<= {target[1]:g} ms"
                ok = cv is not None and cv == cv and cv <= target[1]
            else:
                rv = r.get((ref, key))
                tgt = f"{'<=' if better == 'low' else '>='} {ref}"
                ok = (
                    cv is not None and rv is not None and cv == cv and rv == rv
                    and (cv <= rv if better == "low" else cv >= rv)
                )
            res = "PASS" if ok else "FAIL"
            verdicts.append(ok)
        line += f"  {tgt:<22}{res:<6}"
        lines.append(line)
    print()
    print(f"Listener fan-out, Cooper vs mosquitto: {versions}")
    print(
        f"{len(doc(a.key_base))}-{len(doc(run.key - 1))}-byte documents; Cooper filter users/+/name/# (include_docs={str(a.include_docs).lower()}),"
        f" mosquitto filter users/+/name; targets compared with {ref}"
        f" (QoS {a.compare_qos} publish{' acknowledged by PUBACK' if a.compare_qos else ''}, QoS {a.compare_qos} subscriptions)"
    )
    print(
        f"(a) {a.m_a} sequential writes, 1 subscriber; (b) {a.m_b} sequential writes, {n} subscribers in"
        f" {a.procs} process(es); each sequential write waits for its ack and its last delivery,"
        f" then {a.gap_ms} ms; {a.warmup} warm-up writes not counted"
    )
    print(
        f"Cooper burst: {'one _bulk_docs of all docs' if a.cooper_burst == 'bulk' else f'PUTs on {a.burst_conc} connections'};"
        f" mosquitto burst: back-to-back publishes (QoS 1: all in flight, then every PUBACK)"
    )
    print(
        f"Clients (Python, same structure for both): subscribers in asyncio worker processes, Cooper's on"
        f" websockets' sans-I/O protocol, mosquitto's paho-mqtt ({a.paho_ws} websocket transport);"
        f" publisher: aiohttp (Cooper), paho-mqtt (mosquitto)"
    )
    print("\n".join(lines))
    for s in cols:
        for key, what in (("a.neg", "(a)"), ("b.neg", "(b)")):
            v = r.get((s, key))
            if v:
                print(f"note: {s} {what}: {v:.1f}% of deliveries arrived before the write's acknowledgement (min {fmt(r.get((s, key[0] + '.min')))} ms)")
    for s in cols:
        for t in run.info.get(s, []):
            print(f"note: {s}: {t}")
    print(f"Wall time and CPU per phase ({os.cpu_count()} cores, 100% = one core; server = the cooper or mosquitto"
          " process; us/msg = CPU time per delivery; other processes = the rest of the machine):")
    print("\n".join(run.notes))
    print(
        f"load average at the start: {' '.join(f'{x:.2f}' for x in a.load_start)}, at the end:"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}; bench.py ran {elapsed:.0f} s"
    )
    print(f"RESULT {'PASS' if all(verdicts) else 'FAIL'}")
    return all(verdicts)


async def main(a):
    started = time.monotonic()
    a.load_start = os.getloadavg()
    systems = (["cooper"] if "cooper" in a.systems else []) + (
        [f"mosq-q{q}" for q in a.qos] if "mosquitto" in a.systems else []
    )
    pubs = {}
    if "cooper" in a.systems:
        pubs["cooper"] = CooperPub(a.cooper, a.cooper_burst, a.burst_conc)
    for q in a.qos if "mosquitto" in a.systems else []:
        pubs[f"mosq-q{q}"] = MqttPub(a.mqtt, q, a.paho_ws)
    if a.paho_ws == "buffered":
        BufferedWebsocket.install()
    for p in pubs.values():
        await p.setup()
    run = Run(a)
    try:
        # (b) runs the reference first, so that a load that grows during the run (other jobs
        # on the machine) does not favour Cooper in the comparison the targets are about.
        ref = f"mosq-q{a.compare_qos}"
        order_b = [s for s in systems if s == ref] + [s for s in systems if s != ref]
        for label, n, m, kb, order in (
            ("a", 1, a.m_a, a.k_burst_a, systems),
            ("b", a.n, a.m_b, a.k_burst_b, order_b),
        ):
            for s in order:
                await run.phase(pubs[s], label, n, m, kb)
    finally:
        for p in pubs.values():
            await p.close()
    import paho.mqtt
    import websockets
    import aiohttp

    versions = (
        f"cooper {getattr(pubs.get('cooper'), 'version', '-')}, {a.mosquitto_version}; Python {sys.version.split()[0]},"
        f" paho-mqtt {paho.mqtt.__version__}, websockets {websockets.__version__}, aiohttp {aiohttp.__version__}"
    )
    ok = table(run, systems, a, versions, time.monotonic() - started)
    return 0 if ok or not a.strict else 1


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cooper", required=True, help="Cooper base URL")
    ap.add_argument("--mqtt", required=True, help="mosquitto websockets HOST:PORT")
    ap.add_argument("--cooper-pid", type=int)
    ap.add_argument("--mosquitto-pid", type=int)
    ap.add_argument("--mosquitto-version", default="mosquitto")
    ap.add_argument("--n", type=int, default=1000, help="subscribers in (b)")
    ap.add_argument("--procs", type=int, default=2, help="subscriber processes in (b)")
    ap.add_argument("--m-a", type=int, default=2000, help="sequential writes in (a)")
    ap.add_argument("--m-b", type=int, default=200, help="sequential writes in (b)")
    ap.add_argument("--k-burst-a", type=int, default=1000)
    ap.add_argument("--k-burst-b", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--gap-ms", type=float, default=2.0)
    ap.add_argument("--qos", type=lambda s: [int(x) for x in s.split(",")], default=[1, 0])
    ap.add_argument("--compare-qos", type=int, default=1)
    ap.add_argument("--include-docs", type=lambda s: s not in ("0", "false", "no"), default=True)
    ap.add_argument("--paho-ws", choices=["buffered", "stock"], default="buffered")
    ap.add_argument("--cooper-burst", choices=["bulk", "put"], default="bulk")
    ap.add_argument("--burst-conc", type=int, default=16)
    ap.add_argument("--delivery-timeout", type=float, default=5.0)
    ap.add_argument("--stall-s", type=float, default=10.0)
    ap.add_argument("--burst-limit-s", type=float, default=120.0)
    ap.add_argument("--systems", type=lambda s: s.split(","), default=["cooper", "mosquitto"])
    ap.add_argument("--key-base", type=int, default=1000, help="first document number")
    ap.add_argument("--strict", action="store_true")
    a = ap.parse_args(sys.argv[2:])
    a.pids = {"cooper": a.cooper_pid}
    for q in a.qos:
        a.pids[f"mosq-q{q}"] = a.mosquitto_pid
    return a


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        asyncio.run(worker(json.loads(sys.argv[2])))
    elif len(sys.argv) >= 2 and sys.argv[1] == "main":
        sys.exit(asyncio.run(main(parse())))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
