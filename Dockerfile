# syntax=docker/dockerfile:1
# steward-server: one binary, one service per subcommand (auth | admin | commands | migrate).
# Build: docker build -t steward-server:dev .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# protoc is vendored (protoc-bin-vendored); no system packages are needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p steward-server \
 && install -D -m 0755 target/release/steward-server /out/steward-server

# glibc + CA certificates, no shell; same Debian release as the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/steward-server /usr/local/bin/steward-server
USER 10001:10001
# 50051: gRPC (TLS when server.tls is set); 8081: plaintext health for probes (server.health_listen).
EXPOSE 50051 8081
ENTRYPOINT ["steward-server"]
