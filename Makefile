# Container images: build, push and test them. See containers/Dockerfile and the README's
# "Container images" section.
#
#   make images                          build rlhf-cpu and rlhf-gpu, tagged with the version
#   make push-images REGISTRY=us-central1-docker.pkg.dev/PROJECT/REPO
#   make test-container                  CI's container tier: CPU image with podman + components in it
#   make test-gpu-image                  the trainer image on a GPU machine (not part of every CI run)
#   make lock                            re-pin containers/constraints.txt from the working venv

PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
ENGINE ?= $(if $(shell command -v podman 2>/dev/null),podman,docker)
# Same registry as the compiled pipeline: RLHF_IMAGE_REGISTRY, else components/image.py's default.
REGISTRY ?= $(RLHF_IMAGE_REGISTRY)
CPU_BASE_IMAGE ?= debian:bookworm-slim
GPU_BASE_IMAGE ?= pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
# Extra build flags, e.g. BUILD_ARGS="--build-arg PIP_CERT=/run/ca.crt -v /etc/ssl/certs/ca-certificates.crt:/run/ca.crt:ro"
BUILD_ARGS ?=
# How the engine gives a container the GPUs (podman with CDI: --device nvidia.com/gpu=all).
GPU_RUN_ARGS ?= $(if $(filter podman,$(ENGINE)),--device nvidia.com/gpu=all,--gpus all)

# The image names come from components/image.py, the module the pipeline takes them from, so the
# tags pushed here are the ones a compiled pipeline references: {REGISTRY}/rlhf-{kind}:{version}.
image_name = $(shell $(if $(REGISTRY),RLHF_IMAGE_REGISTRY=$(REGISTRY)) RLHF_$(1)_IMAGE= python3 -c \
	'from components.image import image; print(image("$(2)"))')
CPU_IMAGE := $(call image_name,CPU,cpu)
GPU_IMAGE := $(call image_name,GPU,gpu)
BUILD = $(ENGINE) build -f containers/Dockerfile $(BUILD_ARGS)

.PHONY: images image-cpu image-gpu push-images test-container test-gpu-image lock check-lock

images: image-cpu image-gpu

image-cpu:
	$(BUILD) --target cpu --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) -t $(CPU_IMAGE) .

image-gpu:
	$(BUILD) --target gpu --build-arg BASE_IMAGE=$(GPU_BASE_IMAGE) -t $(GPU_IMAGE) .

push-images: images
	$(ENGINE) push $(CPU_IMAGE)
	$(ENGINE) push $(GPU_IMAGE)

test-container:
	PYTHON=$(PYTHON) bash .ci/container_test.sh

# The trainer image on a machine with an NVIDIA GPU (NVIDIA Container Toolkit, or CDI for podman):
# real training steps on CUDA inside it, then (the tests drive podman) the KFP component tests.
test-gpu-image: image-gpu
	$(ENGINE) run --rm -i $(GPU_RUN_ARGS) --network none $(GPU_IMAGE) python3 - <containers/gpu_smoke.py
ifeq ($(ENGINE),podman)
	RLHF_TEST_IMAGE=$(GPU_IMAGE) $(PYTHON) -m pytest -m container tests/test_container.py -q \
		-k "component or invalid"
else
	@echo "the KFP component tests drive podman: install it to run them against $(GPU_IMAGE)"
endif

lock:
	$(PYTHON) containers/lock.py

check-lock:
	$(PYTHON) containers/lock.py --check
