module github.com/sidecar-project/sidecar

go 1.26.8

require (
	github.com/oklog/run v1.2.0
	golang.org/x/sys v0.49.0
	k8s.io/klog/v2 v2.140.0
)

require github.com/go-logr/logr v1.4.1 // indirect
