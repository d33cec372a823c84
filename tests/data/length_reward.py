"""A reward for tests that needs no trained model: it varies with the completion, so every group has a signal."""


def reward(row, completion):
    return float(len(completion) % 3)
