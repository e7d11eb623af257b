// Package health serves Kubernetes probes in the style of kube-apiserver's
// healthz: a probe is a list of named checks; GET /readyz runs them all,
// /readyz?verbose lists each as "[+]name ok" or "[-]name failed", and
// /readyz/<name> runs one. A failure is HTTP 503; its reason goes to the
// log, not to the body.
package health

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"

	"k8s.io/klog/v2"
)

// Check is one named condition of a probe.
type Check interface {
	Name() string
	Check(r *http.Request) error
}

// NamedCheck makes a Check of a function.
func NamedCheck(name string, f func(r *http.Request) error) Check { return namedCheck{name, f} }

type namedCheck struct {
	name string
	f    func(*http.Request) error
}

func (c namedCheck) Name() string                { return c.name }
func (c namedCheck) Check(r *http.Request) error { return c.f(r) }

// Probe is a named set of checks served under /<name>.
type Probe struct {
	name   string
	checks []Check
}

// NewProbe returns the probe name ("livez", "readyz") made of checks.
func NewProbe(name string, checks ...Check) *Probe { return &Probe{name: name, checks: checks} }

// Install serves the probe on mux at /<name> and /<name>/<check>, and the
// same under each alias (such as /healthz and /healthz/<check>).
func (p *Probe) Install(mux *http.ServeMux, aliases ...string) {
	for _, path := range append([]string{"/" + p.name}, aliases...) {
		mux.Handle(path, p.handler(p.checks))
		for _, c := range p.checks {
			mux.Handle(path+"/"+c.Name(), p.handler([]Check{c}))
		}
	}
}

// Passes runs every check with r and reports whether all pass.
func (p *Probe) Passes(r *http.Request) bool {
	for _, c := range p.checks {
		if c.Check(r) != nil {
			return false
		}
	}
	return true
}

func (p *Probe) handler(checks []Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var out bytes.Buffer
		var failed, reasons []string
		for _, c := range checks {
			if err := c.Check(r); err != nil {
				failed = append(failed, c.Name())
				reasons = append(reasons, c.Name()+": "+err.Error())
				fmt.Fprintf(&out, "[-]%s failed\n", c.Name())
				continue
			}
			fmt.Fprintf(&out, "[+]%s ok\n", c.Name())
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		verbose := r.URL.Query().Has("verbose")
		if len(failed) > 0 {
			klog.InfoS("Probe failed", "probe", p.name, "failed", strings.Join(failed, ","), "reasons", strings.Join(reasons, "; "))
			w.WriteHeader(http.StatusServiceUnavailable)
			if verbose {
				out.WriteString(p.name + " check failed\n")
				w.Write(out.Bytes())
			} else {
				fmt.Fprintf(w, "%s check failed\n", p.name)
			}
			return
		}
		if verbose {
			out.WriteString(p.name + " check passed\n")
			w.Write(out.Bytes())
			return
		}
		w.Write([]byte("ok"))
	})
}
