# One image recipe for the five Sagashop services. The build argument SERVICE picks which binary
# the runtime image runs:
#
#   docker build --build-arg SERVICE=order-service -t sagashop/order-service .
#
# (docker-compose.yml passes SERVICE=order-service, payment-service, inventory-service,
# shipping-service and query-service.) The build stages do not depend on SERVICE: they compile
# every binary once, so the images share one cached build, and only the last stage differs.
#
# Stages:
#   chef     Rust toolchain + cargo-chef + what librdkafka's bundled C build needs
#   planner  reduces the workspace to a dependency "recipe" (changes only when manifests change)
#   builder  compiles the dependencies from the recipe (cached layer), then the workspace itself
#   runtime  debian slim, non-root, the service binary plus the `healthcheck` probe, the
#            `sagashop-dlq` dead-letter tool, the `sagashop-logs` log follower and the
#            `sagashop-ledger` ledger check
#
# Needs BuildKit (`RUN --mount=type=cache`): the default builder of Docker 23+, or
# DOCKER_BUILDKIT=1 on 18.09-20.10. No `# syntax=` line on purpose: the engine's built-in
# Dockerfile frontend handles this file, and a `# syntax=docker/dockerfile:1` line would make
# every build pull the frontend image from Docker Hub first (a build without registry access
# then fails before its first step; scripts/compose-lab.sh builds that way).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION
# rdkafka-sys builds librdkafka from source (mklove ./configure + make, a bash script) and links
# zlib through libz-sys (pkg-config finds zlib1g-dev; the binary then needs zlib1g at run time)
# and OpenSSL through openssl-sys (libssl-dev; libssl3 at run time): librdkafka's SASL/SCRAM,
# which the compose stack's Kafka requires, is built only with OpenSSL (rdkafka feature `ssl`).
# python3 is optional for librdkafka (version string, linker script) but keeps its build quiet.
# Debian package versions are not pinned (DL3008): a pinned version leaves the archive with the
# next point release and breaks the build; the base image tag pins the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        g++ \
        libssl-dev \
        make \
        pkg-config \
        python3 \
        zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml/Cargo.lock change. It must select the
# same packages as the `cargo build` below, so that both resolve the same dependency features.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --release --locked --recipe-path recipe.json \
        -p order-service \
        -p payment-service \
        -p inventory-service \
        -p shipping-service \
        -p query-service \
        -p healthcheck \
        -p shared
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked \
        -p order-service \
        -p payment-service \
        -p inventory-service \
        -p shipping-service \
        -p query-service \
        -p healthcheck \
        -p shared \
    && mkdir -p /out \
    && cp target/release/order-service \
          target/release/payment-service \
          target/release/inventory-service \
          target/release/shipping-service \
          target/release/query-service \
          target/release/healthcheck \
          target/release/sagashop-dlq \
          target/release/sagashop-logs \
          target/release/sagashop-ledger \
          /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# order-service | payment-service | inventory-service | shipping-service | query-service
ARG SERVICE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The binaries link libc, libm, libgcc_s (all in the base image), libz (zlib1g) and libssl and
# libcrypto (libssl3), both installed explicitly so that they stay there whatever the base image
# drops. No curl: see `healthcheck`.
# hadolint ignore=DL3008
RUN if [ -z "${SERVICE}" ]; then \
        echo "build with --build-arg SERVICE=<order-service|payment-service|inventory-service|shipping-service|query-service>" >&2; \
        exit 1; \
    fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sagashop \
    && useradd --system --uid 10001 --gid sagashop --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sagashop
COPY --from=builder /out/${SERVICE} /app/service
COPY --from=builder /out/healthcheck /app/healthcheck
# The dead-letter tool: `docker compose exec payment sagashop-dlq list payment`.
COPY --from=builder /out/sagashop-dlq /usr/local/bin/sagashop-dlq
# The log follower: `docker compose exec order sagashop-logs --order <id>`.
COPY --from=builder /out/sagashop-logs /usr/local/bin/sagashop-logs
# The ledger check (payment): `docker compose exec payment sagashop-ledger verify`.
COPY --from=builder /out/sagashop-ledger /usr/local/bin/sagashop-ledger
# Fail the build, not the container, if a shared library is missing from this image.
RUN ldd /app/service /app/healthcheck /usr/local/bin/sagashop-dlq /usr/local/bin/sagashop-logs /usr/local/bin/sagashop-ledger | tee /tmp/ldd.txt \
    && if grep 'not found' /tmp/ldd.txt; then \
        echo "a shared library the binaries need is missing from the runtime image" >&2; \
        exit 1; \
    fi \
    && rm /tmp/ldd.txt

LABEL org.opencontainers.image.title="sagashop-${SERVICE}" \
      org.opencontainers.image.description="Sagashop ${SERVICE}" \
      org.opencontainers.image.licenses="Apache-2.0"

# Containers must listen on every interface (the services default to 127.0.0.1). HTTP_PORT is
# the image's default; docker-compose.yml sets each service's own port (8081-8084).
ENV HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080
EXPOSE 8080
USER 10001:10001
WORKDIR /app
# Ready = database and Kafka reachable, every task running. `healthcheck` probes 127.0.0.1:$HTTP_PORT/health/ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["/app/healthcheck"]
# The service handles SIGTERM itself (graceful shutdown), so it can run as PID 1.
ENTRYPOINT ["/app/service"]
