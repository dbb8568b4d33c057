"""Reward model: learns a scalar score from pairwise preferences (the stand-in for human labelers).

Modules: ``config`` (RewardConfig: every setting, CLI flags and component parameters),
``data`` (canonical or raw preference data, held-out split), ``batching`` (tokenization,
length-bucketed batches, the shared-prompt layout), ``modeling`` (LoRA sequence classifier, rewards
at the last token), ``losses`` (Bradley–Terry with margin and centering), ``metrics`` (accuracy,
precision/recall/F1, ROC AUC, margin, confusion matrix), ``train`` (the entry point, a table of
contents), ``setup`` (data, tokenizer, model, optimizer), ``trainer`` (the loop, checkpoints, resume,
the non-finite guard; the run directory itself is ``rlhf.rundir``, shared with PPO), ``outputs``
(the model directory), ``scorer`` (RewardScorer for evaluation and anyone else).

Output directory layout (``rlhf train-reward --output-dir DIR`` / the component's Model artifact)::

    DIR/
      reward_model.json          # written last: base_model (the reference as given), base_model_resolved,
                                 # architecture, prompt_sequence_length, target_sequence_length,
                                 # use_chat_template, instruction, normalization {mean, std, pairs},
                                 # lora {r, alpha, dropout, target_modules}, metrics, format
      adapter_config.json        # peft LoRA config (task SEQ_CLS, modules_to_save ["score"])
      adapter_model.safetensors  # LoRA A/B of the trunk + the trained score head
      score_head.safetensors     # the score head alone: {"weight": [1, hidden]} (and "bias" if any)
      tokenizer.json, tokenizer_config.json, chat_template.jinja
      metrics.json               # final metrics (also in reward_model.json) + confusion matrices
      metrics.jsonl              # per-step history
      tensorboard/               # event files (unless --tensorboard-dir points elsewhere)
      checkpoints/step-NNNNNNNN/ # for resume (rlhf.checkpoint)
      merged/                    # only with --save-merged-model: base + adapter merged, HF format

Loading it:

- Scoring: ``rlhf.reward.scorer.RewardScorer(DIR).score(conversations, responses)``.
- Hugging Face: ``PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
  base, num_labels=1), DIR)``.
- PPO on a shared base (one copy of the weights): the adapter's LoRA tensors use the same module
  names under a causal LM (``base_model.model.model.layers...``), so the adapter can be loaded as a
  second adapter on the policy's trunk (``model.load_adapter(DIR, adapter_name="reward")``; the
  ``score`` entry is the head) with ``score_head.safetensors`` applied to the trunk's final hidden
  states.

How a reward is computed (train, scorer and PPO must agree): the input is the prompt tokens
(``rlhf.encoding.encode_prompt``: chat template with generation prompt when ``use_chat_template``,
else the canonical plain-text prompt; last ``prompt_sequence_length`` tokens), then the response
tokens and EOS (``encode_response``: first ``target_sequence_length`` tokens); the reward is the
score head applied to the last token's final hidden state (``rlhf.reward.modeling.score_sequences``
takes any padding). Normalized reward: ``(r − mean) / std`` with ``normalization`` above.
"""
