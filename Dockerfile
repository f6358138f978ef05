# upload-reconciler: the `reconcile` binary in a small image whose default command is the daemon.
#
#   docker build -t upload-reconciler .
#   docker run --rm -p 9187:9187 -e DATABASE_URL=... -e RECONCILE_STORAGE__BUCKET=uploads \
#     -e RECONCILE_EVENTS__QUEUE_URL=... upload-reconciler                 # reconcile daemon
#   docker run --rm -e DATABASE_URL=... upload-reconciler --dry-run --format table   # one sweep
#
# Configuration comes from the environment (RECONCILE_<SECTION>__<KEY>, DATABASE_URL, the AWS
# variables) or from a mounted file named by RECONCILE_CONFIG. The image holds no configuration.

# The crate needs Rust >= 1.94.1 (aws-sdk-s3's rust-version). The builder's Debian release must
# not be newer than the runtime's (glibc), so both are bookworm.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /build

# 1. Dependencies only, cached until Cargo.toml or Cargo.lock change. Cargo.toml names a lib,
#    a bin, a [[test]] (tests/it/main.rs) and a [[bench]] (bench/sweep.rs): stub every target
#    so the manifest resolves, then build the dependency graph of the binary.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bench tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > bench/sweep.rs \
    && touch tests/it/main.rs \
    && cargo build --release --locked --bin reconcile \
    && rm -rf src

# 2. The crate itself. migrations/ is embedded at compile time (sqlx::migrate!). The stubs'
#    artifacts are removed so cargo cannot mistake them for the real crate whatever the mtimes.
COPY src ./src
COPY migrations ./migrations
RUN rm -rf target/release/.fingerprint/upload-reconciler-* \
           target/release/deps/upload_reconciler-* target/release/deps/libupload_reconciler-* \
           target/release/deps/reconcile-* target/release/reconcile \
    && cargo build --release --locked --bin reconcile \
    && ./target/release/reconcile --version

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to AWS and to a Postgres server that requires it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 reconcile \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin reconcile
COPY --from=builder /build/target/release/reconcile /usr/local/bin/reconcile

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The daemon serves /metrics, /healthz and /readyz here; the program's own default is
# 127.0.0.1:9187, unreachable from outside a container.
ENV RECONCILE_SERVER__LISTEN=0.0.0.0:9187
EXPOSE 9187
# The daemon handles SIGTERM itself (it finishes the batches and jobs in hand, then exits 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["reconcile"]
CMD ["daemon"]
