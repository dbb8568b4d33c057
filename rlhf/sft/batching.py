"""Demonstrations as policy rows, and the SFT loss on their response tokens only.

An example is encoded as every step encodes a prompt and a response (``rlhf.encoding``: the chat
template with the generation prompt, or the plain-text prompt, its last ``prompt_sequence_length``
tokens; the response's first ``target_sequence_length`` tokens, EOS included), and laid out as every
LoRA-policy step lays it out (``rlhf.policy_training.rows``: ``[left-padded prompt | right-padded
response]``, PPO's passes).
So SFT teaches exactly the continuation PPO later samples, and the loss has no term for a prompt
token: only the response positions are projected to the vocabulary at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from rlhf import encoding
from rlhf.data.canonical import SFTExample, prompt_messages
from rlhf.policy_training.rows import PolicyRows, policy_rows, response_logprobs


@dataclass
class EncodedExample:
    prompt: list[int]
    response: list[int]


@dataclass
class EncodeStats:
    examples: int = 0
    truncated_prompts: int = 0
    truncated_responses: int = 0


def encode_examples(tokenizer, examples: Sequence[SFTExample], prompt_sequence_length: int,
                    target_sequence_length: int, use_chat_template: Optional[bool] = None,
                    instruction: str = "") -> tuple[list[EncodedExample], EncodeStats]:
    """Token ids of every example; ``instruction`` applies to rows without their own."""
    stats = EncodeStats(examples=len(examples))
    out = []
    for ex in examples:
        if instruction and not ex.instruction:
            ex = dataclasses.replace(ex, instruction=instruction)
        prompt = encoding.encode_prompt(tokenizer, prompt_messages(ex), use_chat_template)
        response = encoding.encode_response(tokenizer, ex.response)
        stats.truncated_prompts += len(prompt) > prompt_sequence_length
        stats.truncated_responses += len(response) > target_sequence_length
        out.append(EncodedExample(prompt[-prompt_sequence_length:],
                                  encoding.encode_response(tokenizer, ex.response, target_sequence_length)))
    return out, stats


def collate(examples: Sequence[EncodedExample], pad_id: int, device=None) -> PolicyRows:
    return policy_rows([e.prompt for e in examples], [e.response for e in examples], pad_id, device)


def response_nll(model, rows: PolicyRows) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood of the response tokens ``[B]``, response token counts ``[B]``)
    under the model's active adapter. The SFT loss of a step is Σ nll / Σ tokens over the step: a
    token-level mean, so long answers weigh by their length as in plain next-token training."""
    logprobs, tokens = response_logprobs(model, rows)
    return -logprobs, tokens
