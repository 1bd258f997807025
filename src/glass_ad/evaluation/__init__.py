"""Evaluation: metrics, the streaming evaluator, `glass test`, pictures."""
