"""Grader for the example function-calling task: exact string match.

synth_data.py uses it as its verifier: verifier="data/examples/verify.py:verify".
"""


def exact_match(prediction: str, reference: str) -> bool:
    """True when the prediction equals the reference call, ignoring surrounding whitespace."""
    return prediction.strip() == reference.strip()


def verify(row: dict, answer: str) -> bool:
    """synth_data.py's verifier: is the answer the row's reference (its last assistant turn, or its completion)?"""
    reference = row["messages"][-1]["content"] if "messages" in row else row["completion"]
    return exact_match(answer, reference)
