# Relay container image: a static binary on a distroless, non-root base.
#
#   docker build -t relay:local --build-arg VERSION=$(git describe --always --dirty) .
#
# Both base images can be swapped with --build-arg (the end-to-end test in
# internal/deploytest builds local stand-ins, since its machines reach no
# registry). Works with the classic builder and with BuildKit.
ARG GO_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
# Dependencies first, so that a source change reuses this layer.
# (go.* also matches when go.sum does not exist yet.)
COPY go.* ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/relay ./cmd/relay

FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="relay" \
      org.opencontainers.image.description="Horizontally scaled WebSocket pub/sub node" \
      org.opencontainers.image.source="https://github.com/relay-pubsub/relay" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/relay /relay
# Numeric, so that it works on bases without /etc/passwd (distroless
# "nonroot" is 65532) and so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENV RELAY_ADDR=:8080
EXPOSE 8080
# Exec form: the final image needs no shell. The binary checks /healthz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/relay", "healthcheck"]
# SIGTERM starts the drain (readiness off, connections closed with 1012
# spread over RELAY_DRAIN_SECONDS); give the container longer than that
# to stop (compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/relay"]
CMD ["serve"]
