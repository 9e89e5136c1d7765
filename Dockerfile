# GPU worker image for Dataflow (configs/dataflow_gpu.yaml): the Beam SDK image for the launcher's
# Python and Beam versions, with a CUDA build of torch. Dataflow installs the NVIDIA driver
# (worker_accelerator ...;install-nvidia-driver); the CUDA runtime comes with the torch wheel.
#
#   docker build -t us-central1-docker.pkg.dev/YOUR_PROJECT/qdedup/worker-gpu:0.1.0 .
#   docker push us-central1-docker.pkg.dev/YOUR_PROJECT/qdedup/worker-gpu:0.1.0
FROM apache/beam_python3.11_sdk:2.77.0

# CUDA torch first, so that installing qdedup does not pull the CPU wheel.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128

COPY setup.py README.md /opt/qdedup/
COPY pipelines /opt/qdedup/pipelines
COPY transforms /opt/qdedup/transforms
RUN pip install --no-cache-dir "/opt/qdedup[gcp]" && python -c "import pipelines.dedup, transforms.score"

# The Beam SDK harness stays the entrypoint (inherited from the base image: /opt/apache/beam/boot).
