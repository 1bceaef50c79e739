#!/usr/bin/env bash
# Builds containers/e2e-sae-hpc.sif on a cluster login node from the repository's Dockerfile.
#   BASE_IMAGE: a CUDA PyTorch image whose torch matches the pin (torch==2.13.0), or any Python
#   3.10+ image (pip then installs the CUDA torch wheel from PyPI).
# Needs podman (or docker: set ENGINE=docker) and apptainer. Apptainer cannot run on the
# development machine, so this script is exercised on clusters only; CI builds the same
# Dockerfile with podman and runs the cells in it.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-podman}
BASE_IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim-bookworm}
"$ENGINE" build --build-arg BASE_IMAGE="$BASE_IMAGE" -t e2e-sae-hpc .
"$ENGINE" save --format docker-archive -o containers/e2e-sae-hpc.tar e2e-sae-hpc
apptainer build --force containers/e2e-sae-hpc.sif containers/e2e-sae-hpc.def
echo "built containers/e2e-sae-hpc.sif: python jobs/submit.py grid=paper (container=apptainer is the paper grid's default)"
