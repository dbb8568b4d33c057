"""The prompt/response encoding contract shared by the reward model, PPO and evaluation.

A response is scored exactly as the policy produced it: prompt tokens (chat template with the
generation prompt when the tokenizer has one, else the canonical plain-text prompt), then the
response tokens, then EOS. Every step encodes through these functions so the three never drift.
"""

from __future__ import annotations

from typing import Optional, Sequence


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: Sequence[dict], use_chat_template: Optional[bool] = None) -> str:
    """The prompt as text: the chat template with the generation prompt when the tokenizer has one
    (and ``use_chat_template`` is not False), else the canonical plain-text rendering.
    ``messages`` are ``canonical.prompt_messages(row)`` (instruction already prepended)."""
    from rlhf.data.canonical import Prompt, prompt_text
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    if use_chat_template:
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return prompt_text(Prompt(messages=list(messages)))


def encode_prompt(tokenizer, messages: Sequence[dict], use_chat_template: Optional[bool] = None,
                  max_length: Optional[int] = None) -> list[int]:
    """Prompt token ids. With a chat template the template supplies any BOS; otherwise the
    tokenizer's special tokens are added. ``max_length`` keeps the *last* tokens (the end of a
    conversation matters most, and the generation prompt must survive)."""
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    text = render_prompt(tokenizer, messages, use_chat_template)
    ids = tokenizer(text, add_special_tokens=not use_chat_template)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        ids = ids[len(ids) - max_length:]
    return list(ids)


def encode_response(tokenizer, response: str, max_length: Optional[int] = None, add_eos: bool = True) -> list[int]:
    """Response token ids as a policy would generate them: the text, then EOS (the policy stops at
    EOS, so a reward model trained this way scores finished responses the way PPO presents them).
    ``max_length`` keeps the first tokens, EOS included."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    if max_length is not None:
        ids = ids[: max(max_length - len(eos), 0)]
    return ids + eos
