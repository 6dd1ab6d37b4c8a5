# Dockerfile -- thaw as an FC GPU custom container (or a plain `docker run` on CPU).
#
#   make model                                   # models/smollm2-135m-instruct.thaw
#   docker build -t thaw .                       # CUDA image (build with nvcc, run on the runtime image)
#   docker build -t thaw-cpu --build-arg BUILD_IMAGE=debian:12 --build-arg RUNTIME_IMAGE=debian:12 \
#                --build-arg CUDA=0 .            # CPU-only image, no CUDA anywhere
#   docker run --rm -p 9000:9000 thaw-cpu        # or: docker run --gpus all ... thaw
#   docker build --build-arg MODEL=models/other.thaw .   # bake a different snapshot
#
# Layer order is the point: the snapshot (hundreds of MB to GB) is its own layer, placed
# before the binary, so a code change re-pushes a few MB and FC's image cache keeps the
# weights. tests/test_deploy.py parses this file and runs its ENTRYPOINT/CMD as written.

ARG BUILD_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04
ARG RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# ---- build -----------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
ARG CUDA=1
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config ca-certificates \
      libmicrohttpd-dev libcjson-dev liblz4-dev libcurl4-openssl-dev libssl-dev libxxhash-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY snapshot/ snapshot/
COPY engine/ engine/
COPY runtime/ runtime/
# CUDA=1 builds the CUDA backend with nvcc (present only in the devel image).
RUN if [ "$CUDA" = 1 ]; then make -j"$(nproc)" CUDA=1 thaw; else make -j"$(nproc)" thaw; fi \
 && cp -L thaw /thaw && strip /thaw

# ---- run -------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Runtime libraries only (the same names on Debian 12 and Ubuntu 22.04), plus curl for
# HEALTHCHECK and ca-certificates for https:// and oss:// snapshots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libmicrohttpd12 libcjson1 liblz4-1 libcurl4 libxxhash0 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin thaw
WORKDIR /app

# The snapshot first, in its own layer (see the top of this file).
ARG MODEL=models/smollm2-135m-instruct.thaw
COPY --chown=root:root ${MODEL} /app/model.thaw
# Then the binary: the only layer a code change rebuilds.
COPY --from=build /thaw /app/thaw

# FC's defaults: listen on 0.0.0.0:$FC_CUSTOM_LISTEN_PORT (thaw serve reads it; 9000
# otherwise), load lazily under FC so the port answers at once and POST /initialize
# reports the load. Every flag is also a THAW_* variable; s.yaml may override them.
ENV THAW_MODEL=/app/model.thaw \
    THAW_HOST=0.0.0.0 \
    THAW_DEVICE=auto
USER thaw
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${FC_CUSTOM_LISTEN_PORT:-9000}/health" || exit 1
ENTRYPOINT ["/app/thaw", "serve"]
CMD []
