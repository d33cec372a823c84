"""A SQLite cache of finished generation requests, so a killed synth_data.py run re-sends none of them.

The key is a hash of everything that decides an answer: backend, model, prompt, sampling settings and
the sample index. Each result is committed as it arrives (WAL journal), so a kill loses only the requests
that were still in flight.
"""

import hashlib
import json
import os
import sqlite3


def request_key(backend: str, model: str, prompt, sampling: dict, sample: int) -> str:
    content = json.dumps([backend, model, prompt, sampling, sample], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()


class RequestCache:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()

    def get_many(self, keys: list[str]) -> dict:
        found = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                (k, json.loads(v))
                for k, v in self.db.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", chunk)
            )
        return found

    def put(self, key: str, value: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO results VALUES (?, ?)", (key, json.dumps(value, ensure_ascii=False)))
        self.db.commit()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        self.db.close()
