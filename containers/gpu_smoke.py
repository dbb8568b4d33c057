"""Smoke test of the trainer image on a GPU, run inside it by `make test-gpu-image` (no network).

The baked default model takes real optimizer steps on CUDA in bf16 (the trainers' setting) and its
loss on the batch must fall; a CUDA base without a working GPU stack, or an image without the model,
fails here.
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf import __version__, models

if not torch.cuda.is_available():
    sys.exit("no CUDA device visible in the container: run it with the GPUs passed in "
             "(docker --gpus all, podman --device nvidia.com/gpu=all)")
path = models.resolve_model()  # the baked smollm2-135m-instruct; no hub is reachable here
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda")
batch = tok(["The quick brown fox jumps over the lazy dog."] * 4, return_tensors="pt").to("cuda")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
losses = []
for _ in range(5):
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
print(f"rlhf {__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}) on "
      f"{torch.cuda.get_device_name()}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
if not losses[-1] < losses[0]:
    sys.exit(f"the loss did not fall on the GPU: {losses}")
