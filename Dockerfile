# Slim image that runs `compress`. CPU by default; for CUDA:
#   docker build --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 --build-arg ORT=onnxruntime-gpu \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t compress:cuda .
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG ORT=onnxruntime
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1

RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && \
      rm -rf /var/lib/apt/lists/*; fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY compress ./compress
# torch first, from the CPU (or CUDA) index, pinned; then the package with the chosen ONNX Runtime build.
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0 && \
    pip install -c constraints.txt ".[plot]" && \
    if [ "${ORT}" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install -c constraints.txt ${ORT}; fi

WORKDIR /work
ENTRYPOINT ["compress"]
CMD ["--help"]
