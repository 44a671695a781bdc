# syntax=docker/dockerfile:1
# The connections service: a release build in the Rust image, run from a
# small Debian image as an unprivileged user.
#   docker build -t connections .
#   docker run --rm -e CONNECTIONS_DATABASE_URL=postgres://... connections
# (compose.yaml runs it with PostgreSQL, NATS and two replicas.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The health probe: a small Rust gRPC health client from crates.io, so that
# HEALTHCHECK asks grpc.health.v1.Health/Check (SERVING only once migrations
# are done and while the database answers), not merely whether a port is open.
# Its prost-build would compile protoc with cmake; Debian's protoc is enough.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/* \
    && PROTOC_NO_VENDOR=1 PROTOC=/usr/bin/protoc \
       cargo install --locked grpc_health_probe --version 1.0.1 --root /opt/probe
COPY . .
# Cache mounts keep the registry and the build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin connections \
    && cp target/release/connections /usr/local/bin/connections

FROM debian:bookworm-slim
# ca-certificates: TLS to PostgreSQL, NATS or an OTLP collector.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/connections --create-home connections
COPY --from=build /usr/local/bin/connections /usr/local/bin/connections
COPY --from=build /opt/probe/bin/grpc_health_probe /usr/local/bin/grpc_health_probe
USER 10001:10001
# The default SQLite file (connections.db) lands here; use PostgreSQL for
# anything that must outlive the container.
WORKDIR /var/lib/connections
# Off loopback the server requires an API token to exist (see the README,
# Security): create one with `connections token create` against the same
# database before the first start.
ENV CONNECTIONS_LISTEN=0.0.0.0:50051
EXPOSE 50051
# Assumes the default port; change both together. `--service=` asks for the
# server as a whole (the probe's own default is not the empty name).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["grpc_health_probe", "--addr=http://127.0.0.1:50051", "--service="]
ENTRYPOINT ["connections"]
CMD ["serve"]
