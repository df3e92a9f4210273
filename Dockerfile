# syntax=docker/dockerfile:1
# follow-service: one image for every role (serve, worker, migrate, seed, token, reconcile).
#   docker build -t follow-service .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e REDIS_URL=... -e FOLLOW_JWT_SECRET=... follow-service

# ---- build ----------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, in a layer of their own: it is rebuilt only when a manifest or Cargo.lock
# changes, not on every source edit. Stub sources stand in for the real ones meanwhile (cargo does not
# need the [[test]] target's file to build the binary). The workspace's other member, the benchmark,
# only needs its manifest and a stub to load: the image builds the service alone (-p follow-service).
COPY Cargo.toml Cargo.lock ./
COPY follow-bench/Cargo.toml ./follow-bench/
RUN --mount=type=cache,id=follow-service-cargo-registry,target=/usr/local/cargo/registry \
    mkdir -p src follow-bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > follow-bench/src/main.rs \
    && cargo build --release --locked -p follow-service \
    && rm -rf src

# The crate itself. `migrations/` is compiled into the binary (embed_migrations!). Touching the entry
# points makes cargo rebuild the crate rather than trust the stubs' fingerprints (COPY keeps mtimes).
COPY src ./src
COPY migrations ./migrations
COPY assets ./assets
RUN --mount=type=cache,id=follow-service-cargo-registry,target=/usr/local/cargo/registry \
    touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p follow-service \
    && install -D -m 0755 target/release/follow-service /out/follow-service

# ---- run ------------------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 follow \
    && useradd --system --uid 10001 --gid follow --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin follow

COPY --from=builder /out/follow-service /usr/local/bin/follow-service

# Numeric ids, so that orchestrators can verify runAsNonRoot.
USER 10001:10001
ENV FOLLOW_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Liveness is GET /healthz, readiness GET /readyz (PostgreSQL and Redis reachable); the orchestrator
# probes them (see docker-compose.yml), as the `worker` role serves no HTTP.
ENTRYPOINT ["follow-service"]
CMD ["serve"]
