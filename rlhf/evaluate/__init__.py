"""Evaluation of a tuned policy against its base: bulk inference on held-out prompts, reward-model and
independent-judge scores, KL from the base, ROUGE-L, a reward-hacking alarm, and a self-contained report.

Entry point: `rlhf.evaluate.run.evaluate(EvalConfig(...))`; the CLI is `rlhf evaluate`.
"""
