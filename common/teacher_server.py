"""A teacher behind an OpenAI-compatible server: its top-k log-probs at each answer position of the sequences the
student wrote, asked through /v1/completions as vLLM's server (`vllm serve MODEL --max-logprobs K`) answers it: the
prompt as token ids, echo with logprobs, and return_tokens_as_token_ids so every token comes back as "token_id:N".
A server without those (one that ignores logprobs, or echoes no prompt log-probs, or names tokens by text) is
refused at start in one line, as is one that reads text as other token ids than the student's tokenizer."""

import os

import openai
import torch

from common.errors import UserError

# A probe text with spaces, digits, punctuation, quotes and a non-ASCII word: two tokenizers that agree on it agree
# on the example tasks' text
PROBE = 'Text Hugo at 10:45am: "on my way, 12.5% late" -> café (3 items)'


class TeacherServer:
    def __init__(self, url: str, top_k: int, timeout: float = 600.0):
        self.url, self.top_k = url, top_k
        key = os.environ.get("OPENAI_API_KEY") or "none"  # vLLM asks for one only when started with --api-key
        self.client = openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=3)
        models = self._call(lambda: self.client.models.list().data)
        if not models:
            raise UserError(f"teacher server {url} serves no model")
        self.model = models[0].id

    def _call(self, request):
        try:
            return request()
        except openai.APIConnectionError as e:
            raise UserError(f"teacher server {self.url}: cannot connect ({e.__cause__ or e})") from None
        except openai.APIError as e:
            raise UserError(f"teacher server {self.url}: {e}") from None

    def _echoed(self, prompt) -> list:
        """The log-probs the server echoes for prompt (one text or a list of token-id rows), one per row."""
        reply = self._call(
            lambda: self.client.completions.create(
                model=self.model,
                prompt=prompt,
                max_tokens=1,
                echo=True,
                logprobs=self.top_k,
                temperature=1.0,
                extra_body={"return_tokens_as_token_ids": True},
            )
        )
        rows = [c.logprobs for c in sorted(reply.choices, key=lambda c: c.index)]
        for row in rows:
            if row is None or not row.top_logprobs or not row.tokens:
                raise UserError(
                    f"teacher server {self.url} ({self.model}) returns no log-probs for the prompt: it must answer "
                    "/v1/completions with echo=true and logprobs=k, as vLLM's server does"
                )
            if not row.tokens[0].startswith("token_id:"):
                raise UserError(
                    f"teacher server {self.url} ({self.model}) names tokens by text ({row.tokens[0]!r}), not by id: "
                    "it must honour return_tokens_as_token_ids, as vLLM's server does"
                )
        return rows

    def check_vocabulary(self, tokenizer, student: str) -> None:
        """The server reads a probe text and every token the student's tokenizer added (chat tokens) as the student
        does, so the ids the student sends name the same tokens to the teacher. Also the first request: a server
        that returns no usable log-probs stops here, before any training."""
        text = " ".join([PROBE, *tokenizer.get_added_vocab()])
        served = [_token_id(t) for t in self._echoed(text)[0].tokens[:-1]]  # the last one is the generated token
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ours not in (served, served[1:]) and served != tokenizer(text)["input_ids"]:  # [1:]: a BOS it added
            raise UserError(
                f"teacher server {self.url} ({self.model}) and student {student} tokenize text differently "
                f"(ids {served[:8]}... against {ours[:8]}...): distillation needs one vocabulary"
            )

    def answer_logprobs(self, rows: list[list[int]], prompt_lengths: list[int], width: int):
        """For each row (prompt then answer ids, no padding) and each answer position up to width: the teacher's
        top-k token ids, their log-probs, and the log-prob of the token the student wrote there. Tensors of shape
        (rows, width, k), (rows, width, k) and (rows, width); positions past a row's answer and entries the server
        left out hold id 0 and log-prob -inf."""
        ids = torch.zeros(len(rows), width, self.top_k, dtype=torch.long)
        top = torch.full((len(rows), width, self.top_k), float("-inf"))
        actual = torch.full((len(rows), width), float("-inf"))
        for r, (row, start, echoed) in enumerate(zip(rows, prompt_lengths, self._echoed(rows), strict=True)):
            for j in range(len(row) - start):
                position = start + j  # top_logprobs[i] is the distribution that predicts token i
                best = sorted(echoed.top_logprobs[position].items(), key=lambda kv: -kv[1])[: self.top_k]
                ids[r, j, : len(best)] = torch.tensor([_token_id(t) for t, _ in best])
                top[r, j, : len(best)] = torch.tensor([lp for _, lp in best])
                actual[r, j] = echoed.token_logprobs[position]
        return ids, top, actual


def _token_id(token: str) -> int:
    return int(token.removeprefix("token_id:"))
