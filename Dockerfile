# bids_vlm, a BIDS-App. CPU image by default:
#     docker build -t bids_vlm .
# CUDA image (PyTorch's CUDA wheels carry the CUDA libraries; run with --gpus all):
#     docker build -t bids_vlm:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# Weights baked in at build time (python -m bids_vlm.cli.bake; running never downloads); the image's
# default --models is what it baked:
#     docker build -t bids_vlm --build-arg MODELS="clip-vit-b-32 clip-vit-b-16" .
# Checkpoints you have (no hub access): put them in weights/<model>/ (see weights/README.md).
# BASE_IMAGE: any image with Python >= 3.11 as `python` (the same for every stage).
ARG BASE_IMAGE=python:3.11-slim
ARG MODELS="clip-vit-b-32"

# ---- build: a virtual environment with bids_vlm and its dependencies ----
FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch and torchvision together from the index that picks the CPU or the CUDA build, then held
# by a constraints file: the project's install cannot swap them for PyPI's (CUDA) builds. Modes
# are set in the layer that writes the files (a later chmod would copy them into a new layer).
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch>=2.6" "torchvision>=0.21" \
    && pip freeze --all > /opt/venv/pip-freeze.txt \
    && grep -E "^(torch|torchvision)==" /opt/venv/pip-freeze.txt > /opt/venv/torch-constraints.txt \
    && find /opt/venv ! -perm -a+r -exec chmod a+rX {} +
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY bids_vlm ./bids_vlm
COPY workflows ./workflows
RUN pip install --no-cache-dir --constraint /opt/venv/torch-constraints.txt . \
    && find /opt/venv ! -perm -a+r -exec chmod a+rX {} +

# ---- weights: the models named in MODELS, in the layout bids_vlm reads ----
FROM build AS weights
ARG MODELS
ENV HF_HOME=/opt/bids_vlm/hf
# local checkpoints, used instead of the hub for the models that have a folder there
COPY weights /tmp/weights
RUN python -m bids_vlm.cli.bake --models ${MODELS} --dest /opt/bids_vlm/models --from-dir /tmp/weights \
    && mkdir -p /opt/bids_vlm/hf /opt/bids_vlm/templateflow && chmod -R a+rX /opt/bids_vlm

# ---- runtime: the environment, the weights, a non-root user; nothing is downloaded ----
FROM ${BASE_IMAGE} AS runtime
ARG MODELS
COPY --from=build /opt/venv /opt/venv
COPY --from=weights /opt/bids_vlm /opt/bids_vlm
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash bids_vlm
# No templateflow template is needed: the atlases ship in bids_vlm/data/atlases (a test checks
# that no module uses templateflow); TEMPLATEFLOW_HOME points at a read-only folder all the same.
# BIDS_VLM_DEFAULT_MODELS: the models baked in are the default of --models.
ENV PATH=/opt/venv/bin:$PATH \
    BIDS_VLM_MODEL_DIR=/opt/bids_vlm/models \
    BIDS_VLM_DEFAULT_MODELS=${MODELS} \
    HF_HOME=/opt/bids_vlm/hf \
    TEMPLATEFLOW_HOME=/opt/bids_vlm/templateflow \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["bids_vlm"]
