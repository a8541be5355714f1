# The image the KubeRay manifests in k8s/ name (wan-serve:0.1.0): Ray 2.60.0 on CUDA 12 with this
# project installed. Build it from the repository root:
#   docker build -t registry.example.com/wan-serve:0.1.0 .
# Ray in the image must match the cluster's rayVersion (k8s/rayservice.yaml) and this project's
# ray[serve] pin; the tag names the Python (3.11) that the project is tested on.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/wan-serve

# torch first and pinned, as the Makefile does: the CUDA 12 wheel of the version the project is tested with.
RUN pip install --no-cache-dir torch==2.13.0

COPY --chown=ray:users . .

# Editable, so the variant configs (configs/) and migrations are read from this folder; the gpu
# extra adds bitsandbytes for the int8 and nf4 memory modes.
RUN pip install --no-cache-dir -e ".[gpu]"

# The model store is a persistent volume mounted here (k8s/model-store.yaml), so a new GPU node
# does not download tens of GB again; scratch files stay in the pod.
ENV WAN_SERVE_MODEL_DIR=/models \
    WAN_SERVE_CONFIGS_DIR=/home/ray/wan-serve/configs \
    WAN_SERVE_DATA_DIR=/home/ray/wan-serve-data \
    RAY_USAGE_STATS_ENABLED=0
