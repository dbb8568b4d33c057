"""Score (prompt, response) pairs with a trained reward model, in batches.

    scorer = RewardScorer("gs://bucket/run/reward_model")
    scores = scorer.score([[{"role": "user", "content": "Hi"}]], ["Hello! How can I help?"])
    scores.raw, scores.normalized          # numpy arrays, one value per response

Prompts are encoded as during training (chat template or plain text, the same length limits and
instruction), responses get EOS, and the reward is read at the last token. ``normalized`` is
``(raw − mean) / std`` with the statistics saved at training time.

A classifier reward model (``reward_model_type`` classifier) scores the same way; its reward is the
positive class's logit or log-probability, as saved with it (``positive_label`` may name another
class). ``load_scorer`` also takes an existing Hugging Face sequence classifier (no
``reward_model.json``): ``rlhf.reward.hf_classifier.ClassifierScorer``.

A response cut off at a length limit (``ended=False`` in ``score_messages``) gets no EOS: a response
that ended has its EOS, as in training; one that did not is scored as it stands, which is how PPO's
shared-base reward path scores the policy's own tokens too.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from rlhf import encoding, models
from rlhf.data.canonical import Prompt, prompt_messages
from rlhf.reward import outputs
from rlhf.reward.batching import collate_sequences
from rlhf.reward.modeling import score_sequences


@dataclass
class Scores:
    raw: np.ndarray
    normalized: np.ndarray
    # A classifier's P(positive class), from the same forward pass; None for a pairwise model.
    probability: Optional[np.ndarray] = None


class RewardScorer:
    """A trained reward model ready to score.

    Args:
        model_dir: output of ``rlhf train-reward`` (local, /gcs/ or gs://).
        base_model: override the base model reference saved in ``reward_model.json`` (e.g. when
            the base was a local directory that has since moved).
        device, dtype: as ``rlhf.models.load_causal_lm``; default: CUDA if present, bf16 there.
        batch_size: sequences per forward pass.
    """

    def __init__(self, model_dir: str, base_model: Optional[str] = None, device=None, dtype=None,
                 batch_size: int = 16, positive_label: str = ""):
        from transformers import AutoTokenizer
        local = outputs.local_copy(model_dir)
        self.info = outputs.read_info(local)
        self.mean, self.std = outputs.normalization(self.info)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(local)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        pad = self.tokenizer.pad_token_id
        self.labels = self.info.get("labels") or None  # a classifier: class index -> name
        self.positive, self.reward_from = 0, "logit"
        if self.labels:
            from rlhf.reward.classifier import positive_index
            self.positive = positive_index(self.labels, positive_label or self.info["positive_label"],
                                           f"the classifier reward model {model_dir}")
            self.reward_from = self.info.get("reward_from") or "logit"
        if self.info.get("merged") and base_model is None:
            self.model = models.load_sequence_classifier(f"{local}/{self.info['merged']}", dtype=dtype,
                                                         device=device, pad_token_id=pad, labels=self.labels)
        else:
            from peft import PeftModel
            base = models.load_sequence_classifier(base_model or self.info["base_model"], dtype=dtype,
                                                   device=device, pad_token_id=pad, labels=self.labels)
            # Merged once here: inference then runs at the base model's speed.
            self.model = PeftModel.from_pretrained(base, local).merge_and_unload()
        self.model.eval()
        self.device = next(self.model.parameters()).device
        if local != model_dir:  # a downloaded gs:// copy: everything is in memory now
            shutil.rmtree(local, ignore_errors=True)

    def encode(self, messages: Sequence[dict], response: str, ended: bool = True) -> list[int]:
        """Prompt then response token ids; EOS after the response unless it was cut off (``ended``)."""
        ids = encoding.encode_prompt(self.tokenizer, messages, self.info["use_chat_template"],
                                   self.info["prompt_sequence_length"])
        return ids + encoding.encode_response(self.tokenizer, response, self.info["target_sequence_length"],
                                              add_eos=ended)

    def score(self, conversations: Sequence[Sequence[dict]], responses: Sequence[str]) -> Scores:
        """Rewards of ``responses[i]`` as the reply to ``conversations[i]`` (a list of messages;
        the instruction saved at training time, if any, is prepended to the first user turn)."""
        instruction = self.info.get("instruction") or None
        return self.score_rows([Prompt(list(c), instruction=instruction) for c in conversations], responses)

    def score_rows(self, rows: Sequence, responses: Sequence[str]) -> Scores:
        """Rewards for canonical rows (``Prompt``, ``EvalExample``, ``PreferencePair``); a row
        without its own instruction gets the one saved at training time, as in training."""
        return self.score_messages(self.row_messages(rows), responses)

    def row_messages(self, rows: Sequence) -> list[list[dict]]:
        """Each row's prompt as the reward model reads it: the row's own instruction, else the one
        saved at training time."""
        default = self.info.get("instruction") or None
        return [prompt_messages(r if r.instruction or not default else dataclasses.replace(r, instruction=default))
                for r in rows]

    @torch.no_grad()
    def logits(self, messages: Sequence[Sequence[dict]], responses: Sequence[str],
               ended: Optional[Sequence[bool]] = None) -> np.ndarray:
        """The score head's outputs at the last token: [N] for a pairwise model, [N, classes] for a
        classifier (arguments as ``score_messages``)."""
        ended = [True] * len(responses) if ended is None else list(ended)
        if not len(messages) == len(responses) == len(ended):
            raise ValueError("need one prompt (and one `ended`) per response")
        seqs = [self.encode(m, r, e) for m, r, e in zip(messages, responses, ended)]
        out = np.empty((len(seqs), len(self.labels)) if self.labels else len(seqs))
        order = np.argsort([len(s) for s in seqs], kind="stable")  # similar lengths, little padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = collate_sequences([seqs[i] for i in idx], self.tokenizer.pad_token_id)
            out[idx] = score_sequences(self.model, batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()
        return out

    def probabilities(self, messages: Sequence[Sequence[dict]], responses: Sequence[str]) -> np.ndarray:
        """A classifier's P(positive_label) of each response (prompts as ``score_messages``)."""
        if not self.labels:
            raise ValueError("a pairwise reward model has no class probabilities")
        return self.score_messages(messages, responses).probability

    def score_messages(self, messages: Sequence[Sequence[dict]], responses: Sequence[str],
                       ended: Optional[Sequence[bool]] = None) -> Scores:
        """Rewards for prompts given as final message lists (instruction already applied);
        ``ended[i]`` False: response i was cut off at a length limit, scored without EOS."""
        raw = self.logits(messages, responses, ended)
        probability = None
        if self.labels:
            from rlhf.reward.classifier import positive_probability, reward_from_logits
            logits = torch.from_numpy(raw)
            raw = reward_from_logits(logits, self.positive, self.reward_from).double().numpy()
            probability = positive_probability(logits, self.positive)
        return Scores(raw=raw, normalized=(raw - self.mean) / self.std, probability=probability)


def load_scorer(ref: str, positive_label: str = "", reward_from: str = "", device=None, dtype=None,
                batch_size: int = 16):
    """A scorer for ``ref``: a reward model trained by ``rlhf train-reward`` (``RewardScorer``; a
    classifier's saved ``positive_label`` and ``reward_from`` unless given) or an existing Hugging
    Face sequence classifier (``rlhf.reward.hf_classifier.ClassifierScorer``; ``positive_label``
    required). Both have ``score_messages``; classifiers ``probabilities`` too."""
    local = outputs.local_copy(ref)
    info = outputs.read_info(local)
    if info.get("reward_model_type") == "hf_classifier":
        from rlhf.reward.hf_classifier import ClassifierScorer
        return ClassifierScorer(local, positive_label, reward_from or "logit", device=device, dtype=dtype,
                                batch_size=batch_size)
    scorer = RewardScorer(local, device=device, dtype=dtype, batch_size=batch_size, positive_label=positive_label)
    if reward_from and scorer.labels:
        scorer.reward_from = reward_from
    return scorer
