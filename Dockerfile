# syntax=docker/dockerfile:1
# Multi-stage build of a static warren binary (musl) into an image with nothing else in it.
#   docker build -t warren .
#   docker run --rm warren --help

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
# The demo embeds topology/warren.toml (include_str!), so it is part of the build context.
COPY topology ./topology
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
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
