"""synth_data.py's openai backend under load: `transformers serve` on 127.0.0.1, 2,000 requests at concurrency 64.

    python bench/synth_load.py                                        # 500 prompts x 4 samples, concurrency 64
    python bench/synth_load.py --prompts 10 --samples 2 --concurrency 8   # the smoke test's setting

Every request must be answered exactly once: the server's access log counts the completions it served, and
responses.jsonl must hold one row per prompt and sample. The synth_data process's resident memory is
sampled every 0.2 s; the figures show whether it grows with the number of requests finished. The served
model is a random 2-layer Llama with the chat tokens (answers are noise; the load is real).
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, log: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "w") as log_file:  # the server holds its own copy of the descriptor
        proc = subprocess.Popen(
            [
                "transformers",
                "serve",
                model,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
                "--log-level",
                "info",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"transformers serve did not start; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)


def main() -> None:
    import psutil

    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--workdir", default="outputs/bench/synth_load")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    model, data, out = (os.path.join(args.workdir, name) for name in ("model", "prompts.jsonl", "out"))
    workload.build_model(model, "tiny", 512)
    workload.write_jsonl(
        data, [{"messages": [{"role": "user", "content": f"request {i}: play song {i}"}]} for i in range(args.prompts)]
    )
    if os.path.exists(os.path.join(out, "requests.sqlite")):  # a rerun must send every request again
        os.remove(os.path.join(out, "requests.sqlite"))
    server, url = start_server(model, os.path.join(args.workdir, "serve.log"))
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "synth_data.py",
                f"data={data}",
                f"output_dir={out}",
                "backend=openai",
                f"base_url={url}",
                f"model={model}",
                f"concurrency={args.concurrency}",
                "stages=[responses]",
                f"num_samples={args.samples}",
                f"max_new_tokens={args.max_new_tokens}",
                "test_data=",
                "progress_bar=false",
                f"data_cache_dir={os.path.join(args.workdir, 'data_cache')}",
            ],
            cwd=workload.ROOT,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        watched, samples = psutil.Process(proc.pid), []
        while proc.poll() is None:
            try:
                samples.append((time.perf_counter() - started, watched.memory_info().rss / 2**20))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        output = proc.communicate()[0]
        elapsed = time.perf_counter() - started
        server_rss = psutil.Process(server.pid).memory_info().rss / 2**20
    finally:
        server.terminate()
        server.wait()
    if proc.returncode != 0:
        raise SystemExit(f"synth_data.py failed:\n{output[-3000:]}")
    with open(os.path.join(args.workdir, "serve.log")) as f:
        served = len(re.findall(r'"POST /v1/chat/completions HTTP/1.1" 200', f.read()))
    with open(os.path.join(out, "responses.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    wanted = args.prompts * args.samples
    per_prompt = {}
    for row in rows:
        per_prompt[row["messages"][0]["content"]] = per_prompt.get(row["messages"][0]["content"], 0) + 1
    quarters = [max((rss for t, rss in samples if t <= elapsed * q / 4), default=0) for q in (1, 2, 3, 4)]
    result = dict(
        requests=wanted,
        served=served,
        rows=len(rows),
        every_prompt_sample_once=set(per_prompt.values()) == {args.samples} and len(per_prompt) == args.prompts,
        concurrency=args.concurrency,
        seconds=round(elapsed, 1),
        requests_per_s=round(wanted / elapsed, 1),
        synth_peak_rss_mb=round(max(rss for _, rss in samples)),
        synth_peak_rss_mb_by_quarter=[round(q) for q in quarters],
        server_rss_mb_at_end=round(server_rss),
    )
    print(json.dumps(result))
    if not (served == wanted == len(rows) and result["every_prompt_sample_once"]):
        raise SystemExit("not every request was answered exactly once")


if __name__ == "__main__":
    main()
