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
  {"op": "close"}                                          -> {} (stops every sandbox, then exits)
"""

import asyncio
import concurrent.futures
import json
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
