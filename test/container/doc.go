// Package container tests sidecar as a container image: the repository's
// Dockerfile built with podman, run with `podman run` and played as
// Kubernetes manifests with `podman kube play`.
//
// The tests need podman, runc and catatonit (`apt-get install podman runc
// catatonit`; .ci/run does it). Without a working podman they fail, saying
// what to install; SIDECAR_SKIP_CONTAINER_TESTS=1 skips them instead.
// Every podman command runs with a containers.conf of this package's own
// (TestMain writes it: nofile/nproc ulimits runc may set, runtime runc) and
// with --network host: the machines this runs on have no bridge networking
// and no registry, so the image is built from a local Go image made from
// the test machine's own toolchain (localhost/go-local:test) on a scratch
// runtime base.
//
// Helpers for tests of this package (all in _test.go files):
//
//   - sidecarImage(t) string builds the Dockerfile into localhost/sidecar:test
//     once per test binary (later calls return at once) and returns the
//     reference; goLocalImage(t) makes the Go build image if missing.
//   - kubePlay(t, manifestYAML) *pod plays a manifest from an empty directory
//     (`podman kube play --network host --replace`); the test's cleanup
//     always removes the pod, logging its containers' output if the test
//     failed. dropPorts(manifest) strips the ports: lists that host
//     networking rejects. pod.container(name), pod.stop(t, grace) (SIGTERM,
//     SIGKILL after grace), pod.down(t).
//   - runContainer(t, image, args...) *running runs `podman run --rm
//     --network host` attached, with its output captured (waitLine,
//     output, waitCode: the exit code); it embeds its container.
//   - container (a name): inspect, proc (host PID, PID in its namespace, UIDs
//     from /proc), logs, waitExit.
//   - fetch, waitStatus (probe an URL until it answers a status),
//     keepAliveClient and drainKeepAlive (stop while keep-alive clients run;
//     no request may fail).
//   - podman(t, timeout, args...) runs any other podman command.
package container
