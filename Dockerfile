# syntax=docker/dockerfile:1
# attrib: a release build in a Rust image, run from a slim Debian image.
#   docker build -t attrib:local .
#   docker run --rm attrib:local replay --help
# docker-compose.yml uses it with a Kafka broker; see docs/kafka.md.

FROM rust:1-bookworm AS build
# cmake builds the bundled librdkafka (rdkafka's cmake-build feature); the
# image already has gcc, make, perl (vendored OpenSSL) and zlib headers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep crates and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin attrib \
    && cp target/release/attrib /usr/local/bin/attrib

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin attrib
COPY --from=build /usr/local/bin/attrib /usr/local/bin/attrib
USER attrib
ENTRYPOINT ["/usr/local/bin/attrib"]
CMD ["run"]
