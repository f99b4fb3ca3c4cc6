"""Evaluation: win rates of personalized answers against the base model's, per user split.

Plan (users, shots, questions, methods) -> batch inference on Ray Data -> judging in both
orders -> stats -> report.json / report.md / plots. See docs/evaluation.md.
"""
