"""AG2's path for `make bench`: docker-py's exec_run into containers started as AG2 starts them.

Run by bench/main.go with Debian's /usr/bin/python3 (package python3-docker). It reads one JSON
request a line on stdin and answers one JSON line on stdout; latencies are microseconds, raw
(bench/main.go computes every percentile). Each sandbox below is what AG2's DockerSandbox
(autogen/beta/extensions/docker/sandbox.py) does, minus what a run does not touch:

- start: docker.from_env() per sandbox, then containers.run(image, command=["sh", "-c",
  "mkdir -p /workspace && sleep infinity"], detach=True, network_mode="none", mem_limit="512m",
  cpu_quota=None, user=None, environment={}, auto_remove=True, working_dir="/workspace");
- run: asyncio.wait_for(asyncio.to_thread(container.exec_run, argv, stderr=True, stdout=True,
  workdir="/workspace"), 60), then the output decoded with errors="replace" and stripped;
  argv is [python, "-c", code] or ["bash", "-c", code] (CodeAdapter's inline runners);
- stream (AG2's newer DockerSandbox.stream): asyncio.to_thread(container.exec_run, argv,
  stderr=True, stdout=True, workdir="/workspace", stream=True), then each chunk of its
  generator fetched with asyncio.to_thread(next, ...) under asyncio.wait_for(..., 60) and
  yielded to the caller as it comes;
- put_file: a tar of the one file built in memory (tarfile, a TarInfo of the file's name and
  size), then asyncio.to_thread(container.put_archive, "/workspace", tar);
- get_file: asyncio.to_thread(container.get_archive, "/workspace/<name>"), the tar's chunks
  joined in memory, the file extracted from it with tarfile;
- close: container.stop(timeout=1), which auto_remove turns into a removal.

Two differences, both stated in docs/benchmarks.md: python is "python3" (the bench uses the
sandbox image, which has no "python"; AG2's default image python:3.12-slim has it), and the
default executor has a thread for every conversation of the load test (asyncio's default,
min(32, CPUs + 4), would let only 6 exec_runs run at once on 2 CPUs).

Requests:
  {"op": "start", "n": N}                                  -> {"ids": [...]} (N sandboxes in all)
  {"op": "run", "sandbox": I, "lang": L, "code": C, "n": N, "pace_ms": P}
                                                           -> {"lat_us": [...]} (P ms untimed before each)
  {"op": "load", "sandboxes": K, "lang": L, "code": C, "seconds": S}
                                                           -> {"lat_us": [...], "elapsed_s": E}
  {"op": "first", "lang": L, "code": C}                    -> {"lat_us": [t]} (a new sandbox: its start and
                                                              first run timed, then its close, untimed)
  {"op": "stream", "sandbox": I, "lang": L, "code": C}     -> {"first_us": f, "total_us": t, "delays_us": [...]}
      (the snippet streamed; f: from the call's start to the first chunk in the caller, t: to the
      generator's end; each complete line of output is a time.time() the snippet printed, and
      delays_us has, for each, the time.time() when it reached the caller less that value)
  {"op": "files", "sandbox": I, "path": P, "bytes": B}     -> {"put_us": p, "get_us": g}
      (B random bytes, made off the clock, put at P under the workspace with put_file, then got
      back with get_file, each timed whole; the SHA-256s are compared off the clock, a mismatch is
      an error)
  {"op": "close"}                                          -> {} (stops every sandbox, then exits)
"""

import asyncio
import concurrent.futures
import hashlib
import io
import json
import os
import tarfile
import sys
import threading
import time

import docker

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "codefleet-sandbox:bookworm"
WORKDIR = "/workspace"
TIMEOUT = 60
THREADS = 64  # threads of the default executor: one per conversation of the load test, and more
INTERPRETERS = {"python": ["python3", "-c"], "bash": ["bash", "-c"]}


class Sandbox:
    """One AG2 DockerSandbox: its own client and long-lived container."""

    def __init__(self):
        self.client = docker.from_env()
        self.container = self.client.containers.run(
            IMAGE,
            command=["sh", "-c", f"mkdir -p {WORKDIR} && sleep infinity"],
            detach=True,
            network_mode="none",
            mem_limit="512m",
            cpu_quota=None,
            user=None,
            environment={},
            auto_remove=True,
            working_dir=WORKDIR,
        )

    async def run(self, lang, code):
        argv = [*INTERPRETERS[lang], code]
        result = await asyncio.wait_for(
            asyncio.to_thread(self.container.exec_run, argv, stderr=True, stdout=True, workdir=WORKDIR),
            timeout=TIMEOUT,
        )
        output = result.output if isinstance(result.output, bytes) else b"".join(result.output or [])
        return output.decode(errors="replace").strip(), result.exit_code or 0

    async def stream(self, lang, code):
        argv = [*INTERPRETERS[lang], code]
        result = await asyncio.to_thread(
            self.container.exec_run, argv, stderr=True, stdout=True, workdir=WORKDIR, stream=True
        )
        chunks = result.output

        def next_chunk():
            try:
                chunk = next(chunks)
            except StopIteration:
                return None
            return chunk if isinstance(chunk, bytes) else bytes(chunk)

        while True:
            chunk = await asyncio.wait_for(asyncio.to_thread(next_chunk), timeout=TIMEOUT)
            if chunk is None:
                return
            yield chunk

    async def put_file(self, name, content):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo(name=name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
        if not await asyncio.to_thread(self.container.put_archive, WORKDIR, buf.getvalue()):
            raise RuntimeError(f"put_archive {name}: refused")

    async def get_file(self, name):
        chunks, _stat = await asyncio.to_thread(self.container.get_archive, f"{WORKDIR}/{name}")
        raw = b"".join(chunks)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tf:
            f = tf.extractfile(tf.getmember(name))
            if f is None:
                raise FileNotFoundError(name)
            return f.read()

    def close(self):
        try:
            self.container.stop(timeout=1)
        except docker.errors.NotFound:
            pass
        self.client.close()


async def timed_run(sandbox, lang, code):
    start = time.perf_counter_ns()
    output, exit_code = await sandbox.run(lang, code)
    took = (time.perf_counter_ns() - start) // 1000
    if exit_code != 0:
        raise RuntimeError(f"{lang} {code!r}: exit {exit_code}: {output}")
    return took


async def timed_stream(sandbox, lang, code):
    first, partial, delays = None, b"", []
    start = time.perf_counter_ns()
    async for chunk in sandbox.stream(lang, code):
        now = time.time()
        if first is None:
            first = (time.perf_counter_ns() - start) // 1000
        partial += chunk
        *lines, partial = partial.split(b"\n")
        for line in lines:
            delays.append(round((now - float(line)) * 1e6))
    total = (time.perf_counter_ns() - start) // 1000
    if partial.strip():
        raise RuntimeError(f"stream: output after the last line: {partial[:200]!r}")
    return {"first_us": first or total, "total_us": total, "delays_us": delays}


async def timed_files(sandbox, name, size):
    content = os.urandom(size)
    start = time.perf_counter_ns()
    await sandbox.put_file(name, content)
    put = (time.perf_counter_ns() - start) // 1000
    start = time.perf_counter_ns()
    got = await sandbox.get_file(name)
    get = (time.perf_counter_ns() - start) // 1000
    if hashlib.sha256(got).digest() != hashlib.sha256(content).digest():
        raise RuntimeError(f"files: {len(got)} bytes came back, not the {size} put")
    return {"put_us": put, "get_us": get}


async def serve():
    sandboxes = []
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=THREADS))
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            req = json.loads(line)
            op = req["op"]
            if op == "start":
                while len(sandboxes) < req["n"]:
                    sandboxes.append(await asyncio.to_thread(Sandbox))
                reply = {"ids": [s.container.id for s in sandboxes]}
            elif op == "run":
                sandbox, lat = sandboxes[req["sandbox"]], []
                for _ in range(req["n"]):
                    await asyncio.sleep(req["pace_ms"] / 1000)
                    lat.append(await timed_run(sandbox, req["lang"], req["code"]))
                reply = {"lat_us": lat}
            elif op == "load":
                k = req["sandboxes"]
                deadline = time.monotonic() + req["seconds"]
                lat = []

                async def conversation(sandbox):
                    while time.monotonic() < deadline:
                        lat.append(await timed_run(sandbox, req["lang"], req["code"]))

                start = time.monotonic()
                await asyncio.gather(*(conversation(s) for s in sandboxes[:k]))
                reply = {"lat_us": lat, "elapsed_s": time.monotonic() - start}
            elif op == "first":
                start = time.perf_counter_ns()
                sandbox = await asyncio.to_thread(Sandbox)
                output, exit_code = await sandbox.run(req["lang"], req["code"])
                took = (time.perf_counter_ns() - start) // 1000
                await asyncio.to_thread(sandbox.close)  # off the clock, done before the next variant
                if exit_code != 0:
                    raise RuntimeError(f"first run: exit {exit_code}: {output}")
                reply = {"lat_us": [took]}
            elif op == "stream":
                reply = await timed_stream(sandboxes[req["sandbox"]], req["lang"], req["code"])
            elif op == "files":
                reply = await timed_files(sandboxes[req["sandbox"]], req["path"], req["bytes"])
            elif op == "close":
                break
            else:
                raise ValueError(f"unknown op {op!r}")
            print(json.dumps(reply), flush=True)
    finally:
        threads = [threading.Thread(target=s.close) for s in sandboxes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print("{}", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(serve())
    except Exception as e:  # one line the harness shows
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)
