"""synth_data.py: the openai backend against a real `transformers serve`, kill and restart, retries,
bad settings, and the default pipeline feeding dpo.py."""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import (
    ENV,
    ROOT,
    assert_one_line_exit_2,
    free_port,
    read_jsonl,
    run,
    run_in_process,
    run_script,
    write_jsonl,
)

SCRIPT = "synth_data.py"
QUIET = ["progress_bar=false", "test_data="]


class Server:
    """`transformers serve` on 127.0.0.1 with the tiny model; `requests()` counts the completions it answered."""

    def __init__(self, model, log):
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}/v1"
        with open(log, "w") as log_file:  # the server holds its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    "transformers",
                    "serve",
                    model,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "info",
                    "--device",
                    "cpu",
                ],
                cwd=ROOT,
                env={**ENV, "HF_HUB_CACHE": str(log.parent / "hub")},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)

    def requests(self) -> int:
        return len(re.findall(r'"POST /v1/chat/completions HTTP/1.1" 200', self.log.read_text()))


@pytest.fixture(scope="module")
def server(sft_model, tmp_path_factory):
    served = Server(sft_model, tmp_path_factory.mktemp("serve") / "serve.log")
    yield served
    served.proc.kill()
    served.proc.wait()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """60 distinct requests of the example task, with their reference calls."""
    rows, seen = [], set()
    for row in read_jsonl(f"{ROOT}/data/examples/chat_train.jsonl"):
        request = row["messages"][-2]["content"]
        if request not in seen and len(rows) < 60:
            seen.add(request)
            rows.append({"messages": row["messages"][-2:]})
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


def openai_args(server, sft_model, prompts, out):
    return [
        f"data={prompts}",
        f"output_dir={out}",
        "backend=openai",
        f"base_url={server.url}",
        f"model={sft_model}",
        "concurrency=8",
        "stages=[responses]",
        "num_samples=2",
        "max_new_tokens=24",
        *QUIET,
    ]


def one_row_per_prompt_and_sample(out, prompts):
    rows = read_jsonl(out / "responses.jsonl")  # read_jsonl fails on a torn line
    requests = [r["messages"][-2]["content"] for r in read_jsonl(prompts)]
    assert [r["messages"][-2]["content"] for r in rows] == [q for q in requests for _ in range(2)]
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)


@pytest.mark.xdist_group("transformers_serve")  # one worker starts the server both use
@pytest.mark.e2e
def test_openai_backend_against_transformers_serve(tmp_path, server, sft_model, prompts):
    out = tmp_path / "out"
    before = server.requests()
    result = run_script(SCRIPT, *openai_args(server, sft_model, prompts, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert server.requests() - before == 120
    assert "requests 120, cache hits 0, answered 120, failed or unfinished 0" in result.stdout
    one_row_per_prompt_and_sample(out, prompts)
    again = run_script(SCRIPT, *openai_args(server, sft_model, prompts, out))  # a rerun is served from the cache
    assert again.returncode == 0 and "cache hits 120, answered 0" in again.stdout
    assert server.requests() - before == 120


@pytest.mark.xdist_group("transformers_serve")  # one worker starts the server both use
@pytest.mark.e2e
def test_sigkill_mid_run_resends_no_finished_request(tmp_path, server, sft_model, prompts):
    out = tmp_path / "out"
    args = openai_args(server, sft_model, prompts, out)
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    db, deadline = out / "requests.sqlite", time.time() + 120

    def finished():
        try:
            with sqlite3.connect(db) as con:
                return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0

    while finished() < 30:
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept, sent = finished(), server.requests()
    assert 30 <= kept < 120 and not (out / "responses.jsonl").exists()
    result = run_script(SCRIPT, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert server.requests() - sent == 120 - kept  # only the unfinished requests went out again
    assert f"cache hits {kept}, answered {120 - kept}" in result.stdout
    one_row_per_prompt_and_sample(out, prompts)
    assert not [p for p in os.listdir(out) if ".tmp" in p]


class Flaky(BaseHTTPRequestHandler):
    """An OpenAI-style endpoint that answers `fail_first` requests with 500/429, then succeeds, then fails
    every request from `fail_after` on."""

    fail_first, fail_after, seen = 0, 10**9, 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._send(200, {"object": "list", "data": []})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen += 1
        n = type(self).seen
        if n <= self.fail_first or n > self.fail_after:
            return self._send(429 if n % 2 else 500, {"error": {"message": "busy"}})
        content = body["messages"][-1]["content"]
        # a judge's question gets a score that varies; anything else an answer that names the request number
        text = str(n % 10) if content.startswith("Rate") else f"answer {n} to {content}"
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
        )

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def flaky():
    handler = type("Handler", (Flaky,), {"seen": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.mark.e2e
@pytest.mark.parametrize("recovers", [True, False])
def test_openai_backend_retries_then_completes_or_fails_in_one_line(tmp_path, flaky, recovers):
    handler, url = flaky
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"request {i}"} for i in range(10)])
    if recovers:
        handler.fail_first = 3  # the first request fails three times, then every request succeeds
    else:
        handler.fail_after = 4  # four answers, then the endpoint never recovers
    out = tmp_path / "out"
    args = [
        f"data={data}",
        f"output_dir={out}",
        "backend=openai",
        f"base_url={url}",
        "model=m",
        "concurrency=1",
        "retries=3",
        "stages=[responses]",
        "num_samples=1",
        *QUIET,
    ]
    result = run_script(SCRIPT, *args)
    if recovers:
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(read_jsonl(out / "responses.jsonl")) == 10 and handler.seen == 13
    else:
        assert_one_line_exit_2(result, f"{url} failed a request after 3 retries (HTTP 500", out)
        assert "run again to continue" in result.stderr
        assert "answered 4, failed or unfinished 6" in result.stdout
        with sqlite3.connect(out / "requests.sqlite") as con:
            assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 4  # what finished is kept


@pytest.mark.e2e
def test_llm_judge_scores_answers_on_the_same_endpoint(tmp_path, flaky):
    handler, url = flaky
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"request {i}"} for i in range(6)])
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        f"data={data}",
        f"output_dir={out}",
        "backend=openai",
        f"base_url={url}",
        "model=m",
        "concurrency=1",
        "stages=[preferences]",
        "num_samples=3",
        "judge=llm",
        "judge_model=m",
        *QUIET,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert handler.seen == 36  # 18 answers, then 18 judgements
    pairs = read_jsonl(out / "preferences.jsonl")
    assert 1 <= len(pairs) <= 6 and all(p["chosen"] != p["rejected"] for p in pairs)
    assert "requests 36, cache hits 0, answered 36" in result.stdout


class ToolServer(Flaky):
    """An OpenAI-style endpoint for rows with tools; it keeps every request body. A request offered tools is answered
    with a call (play_music with the request's last word on an odd seed, a wrong artist on an even one), a request
    that ends with a tool result with a short text."""

    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        last = body["messages"][-1]
        if last["role"] == "tool":
            message = {"role": "assistant", "content": "Now playing."}
        else:
            artist = last["content"].split()[-1] if body["seed"] % 2 else "Nobody"
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{body['seed']}",
                        "type": "function",
                        "function": {"name": "play_music", "arguments": json.dumps({"artist": artist})},
                    }
                ],
            }
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
        )


@pytest.fixture()
def tool_server():
    handler = type("Handler", (ToolServer,), {"bodies": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_openai_backend_offers_the_tools_and_keeps_the_calls(tmp_path, tool_server):
    """Rows with tools: the endpoint gets the row's tools (and earlier calls with JSON-text arguments, as the API
    takes them); the written rows keep the tools and the returned calls (arguments as objects, ids kept), pairs
    are judged by the example verifier's tool rule, and every written row passes sft_chat.py's and dpo.py's checks."""
    from common.chat.rows import chat_row_problem
    from common.preference import preference_row_problem
    from tests.test_synthesis import ADELE, RESULT, TOOLS, USER, calls, tool_call

    handler, url = tool_server
    artists = ["Adele", "Sade", "Shakira", "Queen"]
    rows = [
        {"tools": TOOLS, "messages": [{"role": "user", "content": f"Play {a}"}, calls(tool_call(artist=a))]}
        for a in artists
    ]
    data = write_jsonl(tmp_path / "tools.jsonl", rows)
    after_call = write_jsonl(
        tmp_path / "after_call.jsonl", [{"tools": json.dumps(TOOLS), "messages": [USER, ADELE, RESULT]}]
    )
    common = ["backend=openai", f"base_url={url}", "model=m", "concurrency=4", *QUIET]
    pairs_run = run_in_process(
        SCRIPT, f"data={data}", f"output_dir={tmp_path / 'pairs'}", "stages=[preferences]", *common
    )
    reply_run = run_in_process(
        SCRIPT, f"data={after_call}", f"output_dir={tmp_path / 'reply'}", "stages=[responses]", "num_samples=1", *common
    )
    assert pairs_run.returncode == 0 and reply_run.returncode == 0, pairs_run.stderr + reply_run.stderr
    assert len(handler.bodies) == 4 * 4 + 1 and all(body["tools"] == TOOLS for body in handler.bodies)
    assert handler.bodies[-1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"artist": "Adele"}'

    pairs = read_jsonl(tmp_path / "pairs" / "preferences.jsonl")
    assert pairs and all(preference_row_problem(pair) is None and pair["tools"] == TOOLS for pair in pairs)
    for pair in pairs:
        artist = pair["prompt"][-1]["content"].split()[-1]
        (chosen,), (rejected,) = pair["chosen"], pair["rejected"]
        assert chosen["tool_calls"][0]["function"]["arguments"] == {"artist": artist}
        assert rejected["tool_calls"][0]["function"]["arguments"] == {"artist": "Nobody"}
        assert chosen["tool_calls"][0]["id"].startswith("call_")
    (reply,) = read_jsonl(tmp_path / "reply" / "responses.jsonl")
    assert reply["messages"][-1] == {"role": "assistant", "content": "Now playing."} and chat_row_problem(reply) is None


@pytest.mark.e2e
@pytest.mark.parametrize("style", ["self_instruct", "magpie"])
def test_instructions_then_responses(tmp_path, sft_model, prompts, style):
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        f"model={sft_model}",
        f"data={prompts}",
        f"output_dir={out}",
        "stages=[instructions,responses]",
        f"instruction_style={style}",
        "num_instructions=10",
        "num_samples=1",
        "max_new_tokens=24",
        *QUIET,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "data_report.json") as f:
        report = json.load(f)
    requests = [r["messages"] for r in read_jsonl(out / "instructions.jsonl")]
    assert report["instructions"] == {"asked": 30, "kept": len(requests)} and 1 <= len(requests) <= 10
    assert all(len(m) == 1 and m[0]["role"] == "user" and m[0]["content"] for m in requests)
    responses = read_jsonl(out / "responses.jsonl")
    assert [r["messages"][:1] for r in responses] == requests and all(
        r["messages"][1]["role"] == "assistant" for r in responses
    )


@pytest.mark.e2e
def test_new_requests_carry_the_tools_their_seeds_share(tmp_path, sft_model):
    """Seed rows that all list the same tools: the new requests carry them, the hf backend offers them with each
    prompt, and the responses are chat rows sft_chat.py reads."""
    from common.chat.rows import chat_row_problem

    seeds = write_jsonl(tmp_path / "seeds.jsonl", read_jsonl(f"{ROOT}/data/examples/tools_train.jsonl")[:20])
    out = tmp_path / "out"
    result = run_in_process(
        SCRIPT,
        f"model={sft_model}",
        f"data={seeds}",
        f"output_dir={out}",
        "stages=[instructions,responses]",
        "num_instructions=3",
        "num_samples=1",
        "max_new_tokens=24",
        *QUIET,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tools = read_jsonl(seeds)[0]["tools"]
    assert all(r["tools"] == tools and len(r["messages"]) == 1 for r in read_jsonl(out / "instructions.jsonl"))
    responses = read_jsonl(out / "responses.jsonl")
    assert responses and all(r["tools"] == tools and chat_row_problem(r) is None for r in responses)


@pytest.mark.e2e
def test_reward_model_judge(tmp_path, sft_model, prompts):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        f"model={sft_model}",
        f"data={prompts}",
        f"output_dir={out}",
        "stages=[preferences]",
        "judge=reward_model",
        f"judge_model={tmp_path / 'rm'}",
        "num_samples=3",
        "temperature=1.5",
        "max_new_tokens=24",
        *QUIET,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "data_report.json") as f:
        report = json.load(f)["preferences"]
    assert report["prompts"] == 60 and report["samples"] == 180 and 1 <= report["pairs"] <= 60
    assert len(read_jsonl(out / "preferences.jsonl")) == report["pairs"]


@pytest.mark.e2e
def test_clean_stage_alone(tmp_path):
    out = tmp_path / "out"
    result = run_script(
        SCRIPT,
        f"data={ROOT}/tests/data/clean_corpus.jsonl",
        f"output_dir={out}",
        "stages=[clean]",
        f"data_cache_dir={tmp_path / 'cache'}",
        *QUIET,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_jsonl(out / "clean.jsonl")) == 67 and "cleaning: 81 rows in, 67 kept" in result.stdout


@pytest.mark.e2e
def test_missing_sft_output_says_what_to_run(tmp_path):
    # From a folder with no outputs/sft_chat/final, the default model is missing.
    result = run([sys.executable, os.path.join(ROOT, SCRIPT)], cwd=tmp_path)
    assert_one_line_exit_2(
        result, "model folder not found: outputs/sft_chat/final (run `accelerate launch sft_chat.py` first", tmp_path
    )


@pytest.mark.xdist_group("default_sft_chat")  # the worker that makes the shared run uses it
@pytest.mark.e2e
def test_default_pipeline_pairs_pass_and_fail_the_verifier_and_dpo_trains_on_them(tmp_path, default_sft_chat):
    sys.path.insert(0, f"{ROOT}/data/examples")
    from verify import verify

    rows = read_jsonl(f"{ROOT}/data/examples/chat_train.jsonl")[:400]
    data = write_jsonl(tmp_path / "train400.jsonl", rows)
    out = tmp_path / "synth"
    result = run_script(SCRIPT, f"model={default_sft_chat}", f"data={data}", f"output_dir={out}", "progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    pairs = read_jsonl(out / "preferences.jsonl")
    assert len(pairs) >= 5, result.stdout
    references = {r["messages"][-2]["content"]: r for r in rows}
    for pair in pairs:
        row = references[pair["prompt"][-1]["content"]]
        assert verify(row, pair["chosen"][0]["content"]) and not verify(row, pair["rejected"][0]["content"])
    with open(out / "data_report.json") as f:
        report = json.load(f)
    assert report["preferences"]["prompts"] == 400 and report["cleaning"]["rows_out"] == len(pairs)
    dpo = run_script(
        "dpo.py",
        f"model={default_sft_chat}",
        f"data={out / 'preferences.jsonl'}",
        f"output_dir={tmp_path / 'dpo'}",
        f"ref_cache_dir={tmp_path / 'cache'}",
        "max_steps=4",
        "eval_fraction=0",
        "test_data=",
        "exact_match_data=",
        "progress_bar=false",
    )
    assert dpo.returncode == 0, dpo.stderr[-3000:]
    assert (tmp_path / "dpo" / "final" / "model.safetensors").exists()
