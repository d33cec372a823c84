"""Grader for the example function-calling task: exact string match."""


def exact_match(prediction: str, reference: str) -> bool:
    """True when the prediction equals the reference call, ignoring surrounding whitespace."""
    return prediction.strip() == reference.strip()
