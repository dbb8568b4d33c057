"""An existing Hugging Face sequence classifier (a sentiment or toxicity model, say) as a reward or
an evaluation score: a model directory with ``config.json`` (its ``id2label`` names the classes) and
safetensors weights, given as a local or ``gs://`` directory or an alias, and no
``reward_model.json`` (that is a model trained by ``rlhf train-reward``: ``RewardScorer``).

It runs frozen, with its own tokenizer, on the **response alone**: an off-the-shelf text classifier
was trained on texts, not on prompt-response pairs. The reward is the ``positive_label`` class's
logit or log-probability (``reward_from``); ``probabilities`` gives that class's probability.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from rlhf import models
from rlhf.reward.classifier import positive_index, positive_probability, reward_from_logits
from rlhf.reward.scorer import Scores

MAX_LENGTH = 512  # tokens of a response the classifier reads, when its tokenizer sets no limit


class ClassifierScorer:
    """A frozen Hugging Face sequence classifier scoring responses for class ``positive_label``."""

    def __init__(self, ref: str, positive_label: str, reward_from: str = "logit", device=None, dtype=None,
                 batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        path = models.resolve_model(ref)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        device = models.pick_device(device) if device is None or isinstance(device, str) else device
        dtype = models.parse_dtype(dtype) or models.default_dtype(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, use_safetensors=True)
        if self.tokenizer.pad_token is None:  # decoder classifiers: pool at the last real token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        config = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.positive = positive_index(self.labels, positive_label, f"the classifier {ref}")
        self.reward_from, self.batch_size = reward_from, batch_size
        limit = getattr(self.tokenizer, "model_max_length", None) or MAX_LENGTH
        self.max_length = min(limit, MAX_LENGTH) if limit > 100_000 else limit  # "no limit" is a huge int
        self.mean, self.std = 0.0, 1.0

    @torch.no_grad()
    def logits(self, responses: Sequence[str]) -> np.ndarray:
        """[N, classes] for the responses, batched."""
        out = np.empty((len(responses), len(self.labels)))
        # An empty response is read as the end-of-text token: a batch of only empty responses would
        # otherwise be zero tokens long, which the model cannot run.
        empty = self.tokenizer.eos_token or ""
        for start in range(0, len(responses), self.batch_size):
            texts = [text or empty for text in responses[start:start + self.batch_size]]
            batch = self.tokenizer(texts, padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            out[start:start + len(batch["input_ids"])] = self.model(**batch).logits.float().cpu().numpy()
        return out

    def score_messages(self, messages: Sequence[Sequence[dict]], responses: Sequence[str],
                       ended: Optional[Sequence[bool]] = None) -> Scores:
        """Rewards of the responses (the prompts are not read; the signature is ``RewardScorer``'s)."""
        if len(messages) != len(responses):
            raise ValueError("need one prompt per response")
        logits = torch.from_numpy(self.logits(responses))
        raw = reward_from_logits(logits, self.positive, self.reward_from).double().numpy()
        return Scores(raw=raw, normalized=raw, probability=positive_probability(logits, self.positive))

    def score_rows(self, rows: Sequence, responses: Sequence[str]) -> Scores:
        """Rewards for canonical rows, as ``RewardScorer.score_rows`` (the classifier reads the responses)."""
        return self.score_messages(self.row_messages(rows), responses)

    def row_messages(self, rows: Sequence) -> list[list[dict]]:
        """No prompts: the classifier reads the responses alone."""
        return [[] for _ in rows]

    def probabilities(self, messages: Sequence[Sequence[dict]], responses: Sequence[str]) -> np.ndarray:
        """P(positive_label) of each response."""
        return self.score_messages(messages, responses).probability


