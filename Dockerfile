# Hadron's image: `hadron` and git on a small Debian, as a non-root user.
# NOT built or tested here (no Docker on the development machines): the
# chart and flux/ are validated offline, this file is not.
#
#   docker build -t registry.example.com/acme/hadron:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p hadron && strip target/release/hadron

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/hadron hadron \
 && mkdir -p /var/lib/hadron && chown hadron:hadron /var/lib/hadron
COPY --from=build /src/target/release/hadron /usr/local/bin/hadron
USER 10001:10001
ENV HADRON_DATA_DIR=/var/lib/hadron HADRON_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hadron"]
CMD ["serve", "--no-watch"]
