// Package chart loads the Helm chart of helm/codefleet with the Helm SDK, renders it as
// `helm install` would, and decodes every object it renders strictly into the Kubernetes API's
// Go types (k8s.io/api; the Prometheus Operator's for a ServiceMonitor): a field unknown to the
// type, a misspelt one or a value of the wrong type is an error, where the API server would
// drop or refuse it only at install. It also runs the SDK's linter (`helm lint`).
//
// Its tests check what a user relies on in the rendered objects; integration/ starts the
// rendered containers. No cluster and no helm binary are needed.
package chart

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// KubeVersion is the Kubernetes version the chart is rendered and linted for: the oldest it
// supports (Chart.yaml's kubeVersion), native sidecars being the newest feature it uses.
const KubeVersion = "v1.29.0"

// ErrNotFound is returned by Get when no rendered object has the type and name asked for.
var ErrNotFound = errors.New("no such object")

// Release names the release a chart is rendered as.
type Release struct {
	Name      string
	Namespace string
}

// Chart is a loaded chart.
type Chart struct {
	dir   string
	chart *chart.Chart
}

// Object is one rendered object.
type Object struct {
	// Template is the template file it came from, e.g. codefleet/templates/services.yaml.
	Template   string
	APIVersion string
	Kind       string
	Name       string
	// Value points at the decoded object: *appsv1.StatefulSet, *corev1.Secret, ...
	Value any
}

// Rendered is what a chart renders to.
type Rendered struct {
	Objects []Object
	// Notes is NOTES.txt as rendered, which helm prints after an install.
	Notes string
}

// Dir finds the chart's directory, helm/codefleet, in the current directory or above it (a
// test runs in its package's directory).
func Dir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		dir := filepath.Join(d, "helm", "codefleet")
		if _, err := os.Stat(filepath.Join(dir, "Chart.yaml")); err == nil {
			return dir, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("helm/codefleet/Chart.yaml not found in %s or above", wd)
		}
	}
}

// Load loads the chart in dir.
func Load(dir string) (*Chart, error) {
	ch, err := loader.LoadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", dir, err)
	}
	return &Chart{dir: dir, chart: ch}, nil
}

// ParseValues reads values given as YAML, as in a values file given to `helm install -f`.
func ParseValues(text string) (map[string]any, error) {
	v, err := chartutil.ReadValues([]byte(text))
	if err != nil {
		return nil, err
	}
	return v.AsMap(), nil
}

// capabilities are those of the cluster rendered for: KubeVersion, the built-in API versions
// and the Prometheus Operator's.
func capabilities() (*chartutil.Capabilities, error) {
	kv, err := chartutil.ParseKubeVersion(KubeVersion)
	if err != nil {
		return nil, err
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	caps.APIVersions = append(chartutil.VersionSet{"monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor"}, caps.APIVersions...)
	return caps, nil
}

// Render renders the chart with values over its values.yaml, as `helm install` does: the
// values are checked against values.schema.json first (an error names the field), a template
// that reads a value missing from values.yaml fails (the engine's strict mode, stricter than
// helm's), then every object is decoded strictly into its API type and its metadata checked.
func (c *Chart) Render(rel Release, values map[string]any) (*Rendered, error) {
	caps, err := capabilities()
	if err != nil {
		return nil, err
	}
	top, err := chartutil.ToRenderValues(c.chart, values, chartutil.ReleaseOptions{
		Name: rel.Name, Namespace: rel.Namespace, IsInstall: true, Revision: 1,
	}, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Engine{Strict: true}.Render(c.chart, top)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	r := &Rendered{}
	var errs []error
	for _, name := range names {
		base := filepath.Base(name)
		switch {
		case strings.HasPrefix(base, "_"):
			continue
		case base == "NOTES.txt":
			r.Notes = files[name]
			continue
		}
		for i, doc := range splitManifests(files[name]) {
			obj, err := decode(doc)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s (document %d): %w", name, i+1, err))
				continue
			}
			obj.Template = name
			r.Objects = append(r.Objects, obj)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, r.checkNames()
}

// Lint runs the Helm SDK's linter (`helm lint`) with values over values.yaml and returns its
// messages.
func (c *Chart) Lint(rel Release, values map[string]any) ([]support.Message, error) {
	kv, err := chartutil.ParseKubeVersion(KubeVersion)
	if err != nil {
		return nil, err
	}
	return lint.AllWithKubeVersion(c.dir, values, rel.Namespace, kv).Messages, nil
}

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitManifests cuts a rendered file into its YAML documents, dropping empty ones (a
// template that renders nothing, or only comments).
func splitManifests(s string) []string {
	var docs []string
	for _, d := range separator.Split(s, -1) {
		var content bool
		for _, line := range strings.Split(d, "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				content = true
				break
			}
		}
		if content {
			docs = append(docs, d)
		}
	}
	return docs
}

// kinds are the object types the chart may render, by apiVersion and kind.
var kinds = map[string]func() any{
	"v1/ConfigMap":                            func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                               func() any { return new(corev1.Secret) },
	"v1/Service":                              func() any { return new(corev1.Service) },
	"v1/ServiceAccount":                       func() any { return new(corev1.ServiceAccount) },
	"apps/v1/Deployment":                      func() any { return new(appsv1.Deployment) },
	"apps/v1/StatefulSet":                     func() any { return new(appsv1.StatefulSet) },
	"autoscaling/v2/HorizontalPodAutoscaler":  func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"policy/v1/PodDisruptionBudget":           func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return new(networkingv1.NetworkPolicy) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(monitoringv1.ServiceMonitor) },
}

// decode decodes one YAML document strictly: duplicate keys, unknown fields and wrong types
// are errors.
func decode(doc string) (Object, error) {
	js, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return Object{}, fmt.Errorf("yaml: %w", err)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return Object{}, fmt.Errorf("type: %w", err)
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return Object{}, fmt.Errorf("unexpected object %s %s", tm.APIVersion, tm.Kind)
	}
	v := newObj()
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Object{}, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	m, ok := v.(metav1.Object)
	if !ok {
		return Object{}, fmt.Errorf("%s has no metadata", tm.Kind)
	}
	return Object{APIVersion: tm.APIVersion, Kind: tm.Kind, Name: m.GetName(), Value: v}, nil
}

// checkNames checks what the API server would check first: every object has a valid name
// (a DNS label for a Service, else a DNS subdomain), valid labels, and no two objects of one
// kind share a name.
func (r *Rendered) checkNames() error {
	var errs []error
	seen := map[string]bool{}
	for _, o := range r.Objects {
		key := o.Kind + "/" + o.Name
		if seen[key] {
			errs = append(errs, fmt.Errorf("%s: two objects %s", o.Template, key))
		}
		seen[key] = true
		check := validation.IsDNS1123Subdomain
		if o.Kind == "Service" {
			check = validation.IsDNS1035Label
		}
		for _, msg := range check(o.Name) {
			errs = append(errs, fmt.Errorf("%s: %s name %q: %s", o.Template, o.Kind, o.Name, msg))
		}
		m := o.Value.(metav1.Object)
		for k, v := range m.GetLabels() {
			for _, msg := range append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...) {
				errs = append(errs, fmt.Errorf("%s: %s label %s=%s: %s", o.Template, key, k, v, msg))
			}
		}
	}
	return errors.Join(errs...)
}

// Get returns the rendered object of type T named name.
func Get[T any](r *Rendered, name string) (*T, error) {
	for _, o := range r.Objects {
		if v, ok := o.Value.(*T); ok && o.Name == name {
			return v, nil
		}
	}
	var zero T
	return nil, fmt.Errorf("%T %q: %w", zero, name, ErrNotFound)
}

// All returns the rendered objects of type T.
func All[T any](r *Rendered) []*T {
	var all []*T
	for _, o := range r.Objects {
		if v, ok := o.Value.(*T); ok {
			all = append(all, v)
		}
	}
	return all
}
