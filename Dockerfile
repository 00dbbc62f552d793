# The HarmonyDB node image: the `harmonydb` binary on Debian slim.
# Build from the repository root: docker build -t harmonydb:latest .
# (compose/docker-compose.yml builds it with `up --build`.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin harmonydb \
    && cp target/release/harmonydb /usr/local/bin/harmonydb

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/harmonydb /usr/local/bin/harmonydb
# A user of its own: the node needs no privilege, only its data directory.
RUN useradd --system --uid 10001 --home-dir /var/lib/harmonydb harmonydb \
    && mkdir -p /var/lib/harmonydb \
    && chown harmonydb:harmonydb /var/lib/harmonydb
USER harmonydb
# The data directory is a volume so a container can be replaced without
# losing the node's WAL and page file.
VOLUME ["/var/lib/harmonydb"]
ENV HARMONYDB_DATA_DIR=/var/lib/harmonydb \
    HARMONYDB_HTTP_ADDR=0.0.0.0:8080 \
    HARMONYDB_TCP_ADDR=0.0.0.0:7070
EXPOSE 8080 7070
ENTRYPOINT ["/usr/local/bin/harmonydb"]
CMD ["serve"]
