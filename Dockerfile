# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a slim Debian with
# only the binary, as an unprivileged user.
#   docker build -t rate-limiter .
#   docker run -p 8000:8000 -e REDIS_HOST=host.docker.internal rate-limiter

FROM rust:1.89-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/.fingerprint/rate-limiter-*
COPY src ./src
COPY lua ./lua
COPY static ./static
RUN cargo build --release --locked && strip target/release/rate-limiter

FROM debian:bookworm-slim AS runtime
# curl for the HEALTHCHECK; ca-certificates for a Redis reached over TLS later.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ratelimiter
COPY --from=build /src/target/release/rate-limiter /usr/local/bin/rate-limiter
# Envoy Gateway runs its rate limit Deployment as `/bin/ratelimit` (only the
# image can be swapped): the same binary under that name, which then
# defaults PORT to envoyproxy/ratelimit's 8080 (README "Behind Envoy
# Gateway"). The default entrypoint below is unchanged.
RUN ln -s /usr/local/bin/rate-limiter /usr/local/bin/ratelimit \
    && ln -sf /usr/local/bin/rate-limiter /bin/ratelimit
COPY rules.example.toml /etc/rate-limiter/rules.example.toml
USER 10001
# PORT is not set here: unset, it is 8000, or 8080 when run as
# /bin/ratelimit (Envoy Gateway's probes ask 8080).
ENV HOST=0.0.0.0 \
    GRPC_PORT=8081 \
    LOG_LEVEL=info
# 8000: HTTP; 8081: Envoy's rate limit service (gRPC).
EXPOSE 8000 8081
# Liveness only: /livez never calls Redis, so a Redis outage does not get the
# container restarted (the failure mode handles that).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/livez || exit 1
ENTRYPOINT ["/usr/local/bin/rate-limiter"]
