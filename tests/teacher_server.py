"""A local teacher server for the tests: a transformers model behind the part of vLLM's OpenAI-compatible server that
distill.py uses (vLLM and llama.cpp cannot be built on these CPU machines). It answers GET /v1/models and POST
/v1/completions as `vllm serve MODEL --max-logprobs K` does: a prompt given as text or token ids (one or a list),
echo, logprobs=k (refused above --max-logprobs), return_tokens_as_token_ids ("token_id:N"), one greedy token;
token_logprobs and top_logprobs hold None for the first prompt token, and each top_logprobs entry holds the top k
tokens and the one actually there. --no-logprobs answers with logprobs null, as a server that ignores them does.

    python tests/teacher_server.py MODEL_FOLDER PORT [--max-logprobs K] [--no-logprobs]
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def echoed(model, tokenizer, ids: list[int], k: int, as_ids: bool) -> tuple[int, dict]:
    """The greedy next token after ids, and vLLM's echo log-probs of ids and that token."""
    with torch.no_grad():
        logps = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    nxt = int(logps[-1].argmax())
    seq = [*ids, nxt]

    def name(i):
        return f"token_id:{i}" if as_ids else tokenizer.decode([i])

    token_logprobs, top_logprobs = [None], [None]
    for i in range(1, len(seq)):
        row = logps[i - 1]
        best = row.topk(k).indices.tolist()
        token_logprobs.append(row[seq[i]].item())
        top_logprobs.append({name(t): max(row[t].item(), -9999.0) for t in [*best, seq[i]]})
    return nxt, {
        "tokens": [name(i) for i in seq],
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": [0] * len(seq),
    }


def serve(folder: str, port: int, max_logprobs: int, with_logprobs: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    lock = Lock()

    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                return self.reply(200, {"object": "list", "data": [{"id": folder, "object": "model", "created": 0}]})
            self.reply(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.rstrip("/") != "/v1/completions":
                return self.reply(404, {"error": {"message": "not found"}})
            k = body.get("logprobs")
            if k is not None and k > max_logprobs:
                message = f"Requested sample logprobs of {k}, which is greater than max allowed: {max_logprobs}"
                return self.reply(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
            prompts = body["prompt"]
            if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
                prompts = [prompts]
            choices = []
            for index, prompt in enumerate(prompts):
                ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else prompt
                with lock:
                    nxt, logprobs = echoed(model, tokenizer, ids, k or 0, body.get("return_tokens_as_token_ids", False))
                text = (tokenizer.decode(ids) if body.get("echo") else "") + tokenizer.decode([nxt])
                keep = with_logprobs and k is not None and body.get("echo")
                choices.append({"index": index, "text": text, "logprobs": logprobs if keep else None,
                                "finish_reason": "length"})  # fmt: skip
            self.reply(200, {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": folder,
                             "choices": choices, "usage": {"prompt_tokens": 0, "completion_tokens": 1,
                                                           "total_tokens": 1}})  # fmt: skip

        def log_message(self, *args):
            pass

    print(f"serving {folder} on 127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("port", type=int)
    parser.add_argument("--max-logprobs", type=int, default=20)
    parser.add_argument("--no-logprobs", action="store_true")
    args = parser.parse_args()
    sys.exit(serve(args.folder, args.port, args.max_logprobs, not args.no_logprobs))
