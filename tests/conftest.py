import contextlib
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": ROOT,
}
ENV.pop("WANDB_PROJECT", None)
# The lanes run on pytest-xdist, one worker per core the run may use (pytest.ini: -n auto). Each worker keeps to
# its own core, and the scripts it starts inherit that (common/distributed.py sizes torch's threads from it), so
# two trainings side by side take one core each instead of fighting over both (two-thread processes on two cores
# run about 5x slower each).
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {_cores[int(WORKER.removeprefix("gw")) % len(_cores)]})


def pytest_collection_modifyitems(config, items):
    """Runs marked slow first: under xdist a worker takes the next test as it frees up, so no worker is left
    running a long one alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_xdist_auto_num_workers(config):
    """-n auto: the cores this process may use (xdist's own count reads the host's cores inside a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Settings that make the built-in tiny model train in seconds.
FAST = ["num_epochs=1", "max_steps=6", "logging_steps=2", "save_steps=3", "eval_steps=3", "progress_bar=false"]


def run(args, cwd=ROOT, env=None, timeout=600):
    """Run a command from the repository root; returns the CompletedProcess with text output. An `accelerate
    launch` without a port takes a free one, so distributed runs on two xdist workers never meet on 29500."""
    if args[:2] == ["accelerate", "launch"] and "--main_process_port" not in args:
        args = [*args[:2], "--main_process_port", "0", *args[2:]]
    return subprocess.run(args, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def run_script(script, *params, env=None, timeout=600):
    return run([sys.executable, os.path.join(ROOT, script), *params], env=env, timeout=timeout)


def run_in_process(script, *params):
    """`python script params...` in this process: the same entry points (resolve, then main) without an
    interpreter start, for tables of runs that stop before training. Returns a CompletedProcess."""
    import contextlib
    import importlib
    import io

    from common.params import resolve

    module = importlib.import_module(script.removesuffix(".py"))
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module.main(resolve(module.PARAMS, module.RULES, list(params)))
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess([script, *params], code, out.getvalue(), err.getvalue())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def teacher_server(folder, *flags):
    """tests/teacher_server.py (vLLM's completions protocol over a real transformers model) serving folder on a free
    port while the block runs: its /v1 URL."""
    import openai

    port = free_port()
    server = subprocess.Popen([sys.executable, "tests/teacher_server.py", str(folder), str(port), *flags], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    try:
        for _ in range(240):
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert server.poll() is None, "the teacher server exited"
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait()


class OpenAIStub(BaseHTTPRequestHandler):
    """An OpenAI-style chat endpoint whose answer depends only on the request (its last message and seed), so
    reruns get the same rows; it records each request's Authorization header."""

    seen_keys: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._send({"object": "list", "data": []})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen_keys.append(self.headers.get("Authorization", ""))
        text = f"answer {body.get('seed', 0) % 1000} to {body['messages'][-1]['content'][:40]}"
        self._send(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    def _send(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def openai_stub():
    """(the handler class, whose seen_keys lists every request's Authorization header; the base_url)."""
    import threading
    from http.server import ThreadingHTTPServer

    handler = type("Handler", (OpenAIStub,), {"seen_keys": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def prepare_params(tmp_path, data: list, **more) -> dict:
    """PARAMS for common.prepare.prepare alone: the data sources given, no held-out data, cleaning off, one process,
    the cache under tmp_path; `more` overrides any of them."""
    from common.cleaning import CLEAN_DEFAULTS

    return {
        "data": data,
        "eval_data": [],
        "eval_fraction": 0.0,
        "test_data": "",
        "max_length": 512,
        "packing": False,
        "batch_size": None,
        "seed": 0,
        "on_bad_rows": "error",
        "num_proc": 1,
        "clean": dict(CLEAN_DEFAULTS, enabled=False),
        "data_cache_dir": str(tmp_path / "cache"),
        "progress_bar": False,
        **more,
    }


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def trained_spans(tokenizer, row):
    """The decoded runs of tokens that carry a loss in a data_preview.jsonl row."""
    spans, current = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=False):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans + ([tokenizer.decode(current)] if current else [])


def assert_one_line_exit_2(result, message, out):
    """The bad-input contract: exit status 2, one `error:` line holding message, no traceback, no final/."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (out / "final").exists()


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def once_per_session(tmp_path_factory, name, make):
    """make(folder) -> JSON-able result, run once per test session: under xdist every worker runs its own session
    fixtures, so the first worker to ask makes it in the folder all workers share, and the others wait and reuse."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if WORKER else root
    folder, done = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            folder.mkdir()
            done.write_text(json.dumps(make(folder)))
    return json.loads(done.read_text())


def _finished(result):
    return {"args": result.args, "returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture(scope="session")
def default_sft_chat_run(tmp_path_factory):
    """`accelerate launch sft_chat.py` on the embedded default, run once for every test that needs it:
    (final/ path, the CompletedProcess, seconds)."""

    def make(folder):
        start = time.time()
        result = run(["accelerate", "launch", "sft_chat.py", f"output_dir={folder / 'out'}", "progress_bar=false"])
        return {"final": str(folder / "out" / "final"), "seconds": time.time() - start, **_finished(result)}

    made = once_per_session(tmp_path_factory, "default_sft_chat", make)
    result = subprocess.CompletedProcess(made["args"], made["returncode"], made["stdout"], made["stderr"])
    return Path(made["final"]), result, made["seconds"]


@pytest.fixture(scope="session")
def default_sft_chat(default_sft_chat_run):
    final, result, _ = default_sft_chat_run
    assert result.returncode == 0, result.stderr[-3000:]
    return str(final)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """A briefly trained sft_chat.py output: its tokenizer carries the chat tokens and template."""

    def make(folder):
        result = run_script("sft_chat.py", *FAST, f"output_dir={folder / 'out'}", "test_data=", "max_steps=20")
        return {"final": str(folder / "out" / "final"), **_finished(result)}

    made = once_per_session(tmp_path_factory, "sft", make)
    assert made["returncode"] == 0, made["stderr"][-3000:]
    return made["final"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
