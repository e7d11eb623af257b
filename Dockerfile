# sidecar: the Node.js cluster primary in Go, as a container entrypoint.
#
#   docker build -t sidecar .
#   docker build --build-arg VERSION="$(git describe --tags --always)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" -t sidecar .
#
# sidecar is PID 1 itself (it reaps and forwards signals): no init.
# The base images are build arguments with public defaults; any Go image of
# at least go.mod's version and any runtime image work (scratch too: the
# CA certificates and the nonroot user come with the image). The build
# stage's RUN lines are exec form, so the Go image needs no shell.

ARG GO_IMAGE=golang:1.26
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0
# Dependencies first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN ["go", "mod", "download"]
COPY . .
ARG VERSION=dev
# RUN in exec form expands no variables: the version reaches the linker
# through GOFLAGS, which ENV expands (and the go command unquotes).
ENV GOFLAGS="-trimpath '-ldflags=-s -w -X main.version=${VERSION}'"
RUN ["go", "build", "-o", "/out/sidecar", "./cmd/sidecar"]

FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sidecar" \
      org.opencontainers.image.description="Node.js cluster-compatible master in Go: binds the port, runs N workers, hands them connections, respawns crashes, drains on SIGTERM" \
      org.opencontainers.image.source="https://github.com/sidecar-project/sidecar" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The users of distroless's static image (root, nobody, nonroot 65532).
COPY deploy/image/rootfs/etc/passwd deploy/image/rootfs/etc/group /etc/
COPY --from=build /out/sidecar /sidecar
USER 65532:65532
# Traffic (--listen) and admin (--admin-addr: /metrics, /livez, /readyz).
EXPOSE 8080 9901
ENTRYPOINT ["/sidecar"]
