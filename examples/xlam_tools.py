"""Chat SFT on xLAM / APIGen function-calling rows (Salesforce/xlam-function-calling-60k, gated on the hub).

Those rows are {"query", "tools", "answers"}, with tools and answers as JSON strings and parameters written as
{"city": {"type": "str", "description": ..., "default": ...}} rather than JSON schema. The row hook turns each
into an OpenAI / TRL tool-calling row: the query, then one assistant turn holding the answers as tool calls.
Everything else (overrides, dry run, resume, checkpoints, export, wandb) is sft_chat.py's.

    accelerate launch examples/xlam_tools.py model=Qwen/Qwen2.5-0.5B-Instruct chat_format=native \
        learning_rate=1e-5 num_epochs=1 max_length=2048
    accelerate launch examples/xlam_tools.py data=xlam_function_calling_60k.json dry_run=true
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: sft_chat, common

from common.params import resolve  # noqa: E402
from sft_chat import PARAMS as SFT_CHAT_PARAMS  # noqa: E402
from sft_chat import RULES, main  # noqa: E402

PARAMS = {
    **SFT_CHAT_PARAMS,
    "data": ["Salesforce/xlam-function-calling-60k"],
    "test_data": "",
    "output_dir": "outputs/xlam_tools",
}
JSON_TYPES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "list": "array",
    "tuple": "array",
    "set": "array",
    "dict": "object",
}


def json_schema(parameters: dict) -> dict:
    """xLAM parameters as a JSON schema object. A type is a Python one ("str", "List[str]", "str, optional",
    "Optional[int]"): its leading name gives the JSON type (none for others, such as "Any" or "Union[...]"),
    and a parameter is required unless it is optional or has a default."""
    properties, required = {}, []
    for name, spec in parameters.items():
        words = re.findall(r"\w+", spec.get("type", "").lower())
        kind = JSON_TYPES.get(next((w for w in words if w != "optional"), ""))
        rest = {key: value for key, value in spec.items() if key != "type"}  # description, default
        properties[name] = {"type": kind, **rest} if kind else rest
        if "optional" not in words and "default" not in spec:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def to_chat(row: dict) -> dict:
    """The row hook: an xLAM row as {"tools", "messages"}, the query answered by one turn of all its calls."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t.get("description", ""),
                "parameters": json_schema(t.get("parameters", {})),
            },
        }
        for t in json.loads(row["tools"])
    ]
    calls = [
        {"type": "function", "function": {"name": a["name"], "arguments": a["arguments"]}}
        for a in json.loads(row["answers"])
    ]
    return {
        "tools": tools,
        "messages": [
            {"role": "user", "content": row["query"]},
            {"role": "assistant", "content": "", "tool_calls": calls},
        ],
    }


if __name__ == "__main__":
    main(resolve(PARAMS, RULES), row_hook=to_chat)
