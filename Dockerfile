# syntax=docker/dockerfile:1
# Multi-stage build of a static warren binary (musl) into an image with nothing else in it.
#   docker build -t warren .
#   docker run --rm warren --help

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# Dependencies first, so source edits do not rebuild them: the workspace's manifests with stub
# sources.
COPY Cargo.toml Cargo.lock ./
COPY crates/warren-sim/Cargo.toml crates/warren-sim/
COPY crates/warren-bench/Cargo.toml crates/warren-bench/
RUN mkdir -p src crates/warren-sim/src crates/warren-bench/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs crates/warren-sim/src/lib.rs \
    && echo 'fn main() {}' > crates/warren-bench/src/main.rs && touch crates/warren-bench/src/lib.rs \
    && cargo build --release --locked -p warren \
    && rm -rf src crates/warren-sim/src crates/warren-bench/src
# The demo embeds topology/warren.toml (include_str!), so it is part of the build context.
COPY topology ./topology
COPY src ./src
COPY crates ./crates
RUN touch src/main.rs src/lib.rs crates/warren-sim/src/lib.rs \
    && cargo build --release --locked -p warren \
    && cp target/release/warren /warren \
    && mkdir -p /state

FROM scratch
COPY --from=build /warren /warren
# The bridge's cursor lives here (a volume in docker-compose.yml); owned by the runtime user.
COPY --from=build --chown=65532:65532 /state /state
COPY topology /topology
ENV WARREN_TOPOLOGY=/topology/warren.toml
USER 65532:65532
ENTRYPOINT ["/warren"]
CMD ["--help"]
