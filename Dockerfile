# syntax=docker/dockerfile:1
#
# One image, two binaries: cdc-consumer and edge-gateway. Workloads pick theirs with `command:`
# (k8s/base), e.g. `docker run IMAGE edge-gateway` or `docker run IMAGE cdc-consumer migrate`.
# Why one image: both services are built by one `cargo build` from one Cargo.lock and must agree
# on the event encoding in `shared` (MessagePack on NATS, KV layout); one tag to build, scan, sign
# and promote keeps them at the same version. The cost is one unused binary per pod (a few MB).
#
#   docker build -t datastream:dev .

# Builder: the same toolchain as development and CI. Its Debian release (bookworm, glibc 2.36)
# must match the runtime image's (distroless debian12) because the binaries link glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The project's release build command, unchanged (scripts/build-release); the cache mounts only
# speed up rebuilds, and the binaries are copied out of the cached target dir to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    scripts/build-release /out

# Runtime: glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
# migrations/ is compiled into cdc-consumer (build.rs): the two binaries are all there is.
COPY --from=build /out/cdc-consumer /out/edge-gateway /usr/local/bin/
# distroless "nonroot": uid/gid 65532. Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 3000/tcp HTTP (WebSocket, SSE, API, /metrics of the gateway), 4433/udp WebTransport,
# 9090/tcp consumer metrics and health.
EXPOSE 3000/tcp 4433/udp 9090/tcp
