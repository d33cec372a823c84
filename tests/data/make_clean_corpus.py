"""Writes clean_corpus.jsonl and clean_eval.jsonl: chat rows with known plants for tests/test_cleaning.py.

    python tests/data/make_clean_corpus.py

Plants (the test asserts these exact counts): 5 exact duplicates (2 differ only in Unicode form or
spacing), 4 near duplicates (one or two words edited in ~150), 3 rows contaminated by clean_eval.jsonl,
4 rows with PII (kept, scrubbed), 2 refusals, 1 repeated-lines answer, 1 symbol-heavy answer, 1 answer
empty after normalisation. The other 60 rows are clean and must all survive.
"""

import json
import random
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parent
rng = random.Random(7)
VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprstvz" for b in "aeiou" for c in "lmnrst"]


def text(n):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def chat(user, answer):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


clean = [chat(text(12), text(150)) for _ in range(60)]
evals = [chat(text(30), text(20)) for _ in range(5)]
rows = list(clean)
rows += [json.loads(json.dumps(clean[i])) for i in range(3)]  # exact copies
spaced = json.loads(json.dumps(clean[3]))
spaced["messages"][1]["content"] = "  " + spaced["messages"][1]["content"].replace(" ", "  \t", 5) + "\n"
rows.append(spaced)
accented = chat("café " + clean[4]["messages"][0]["content"], clean[4]["messages"][1]["content"])
clean[4] = accented
rows[4] = accented
rows.append(json.loads(json.dumps(accented).replace("caf\\u00e9", unicodedata.normalize("NFD", "café"))))
for i, edits in ((10, 1), (11, 1), (12, 2), (13, 2)):  # near duplicates
    words = clean[i]["messages"][1]["content"].split()
    for j in rng.sample(range(len(words)), edits):
        words[j] = rng.choice(VOCAB)
    rows.append(chat(clean[i]["messages"][0]["content"], " ".join(words)))
for i in range(3):  # contaminated: a 13-word span of an eval prompt inside the answer
    span = " ".join(evals[i]["messages"][0]["content"].split()[5:18])
    rows.append(chat(text(10), text(40) + " " + span + " " + text(40)))
pii = [
    "write to jane.doe@example.com about it",
    "call +1 415-555-0132 tonight",
    "the server is 192.168.10.24",
    "use key sk-abcdefghijklmnopqrstuvwxyz123456",
]
for note in pii:
    rows.append(chat(text(12), text(60) + " " + note + " " + text(60)))
rows.append(chat(text(12), "As an AI language model, I cannot do that. " + text(20)))
rows.append(chat(text(12), "I'm sorry, but I can't help with this request."))
rows.append(chat(text(12), "\n".join(["same line again"] * 6 + [text(5)])))
rows.append(chat(text(12), "# " * 30 + text(20)))
rows.append(chat(text(12), " \n\t "))
with open(OUT / "clean_corpus.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
with open(OUT / "clean_eval.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in evals)
print(f"{len(rows)} rows")
