package chart

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Pod is what the kubelet knows of a pod that the downward API hands to its containers.
type Pod struct {
	Name      string
	Namespace string
}

// Environment returns a container's environment as the kubelet would make it from the rendered
// objects: the variables of envFrom first (ConfigMaps and Secrets, with their prefixes), then
// env in order, each value's $(VAR) references expanded; ConfigMap, Secret and downward API
// references are resolved. A reference to an object or key that was not rendered is an error,
// unless the reference is optional; so is a Secret the chart expects to exist already, which
// the caller passes in secrets (name to data).
func (r *Rendered) Environment(c corev1.Container, pod Pod, secrets map[string]map[string][]byte) (map[string]string, error) {
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := Get[corev1.ConfigMap](r, from.ConfigMapRef.Name)
			if err != nil {
				if isOptional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom: %w", err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := r.secretData(from.SecretRef.Name, secrets)
			if err != nil {
				if isOptional(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom: %w", err)
			}
			data = map[string]string{}
			for k, v := range s {
				data[k] = string(v)
			}
		default:
			return nil, fmt.Errorf("envFrom of %s: neither a ConfigMap nor a Secret", c.Name)
		}
		for k, v := range data {
			env[from.Prefix+k] = v
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = Expand(e.Value, env)
			continue
		}
		v, ok, err := r.valueFrom(e, pod, secrets)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			env[e.Name] = v
		}
	}
	return env, nil
}

func isOptional(b *bool) bool { return b != nil && *b }

// secretData is a rendered Secret's data, with stringData folded in, or the caller's.
func (r *Rendered) secretData(name string, secrets map[string]map[string][]byte) (map[string][]byte, error) {
	if data, ok := secrets[name]; ok {
		return data, nil
	}
	s, err := Get[corev1.Secret](r, name)
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{}
	for k, v := range s.Data {
		data[k] = v
	}
	for k, v := range s.StringData {
		data[k] = []byte(v)
	}
	return data, nil
}

// valueFrom resolves one variable's valueFrom; ok is false for an optional reference to
// nothing (the variable is then not set).
func (r *Rendered) valueFrom(e corev1.EnvVar, pod Pod, secrets map[string]map[string][]byte) (string, bool, error) {
	from := e.ValueFrom
	switch {
	case from.FieldRef != nil:
		switch from.FieldRef.FieldPath {
		case "metadata.name":
			return pod.Name, true, nil
		case "metadata.namespace":
			return pod.Namespace, true, nil
		}
		return "", false, fmt.Errorf("field %s is not resolved here", from.FieldRef.FieldPath)
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := Get[corev1.ConfigMap](r, ref.Name)
		if err != nil {
			return "", false, optional(ref.Optional, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			return "", false, optional(ref.Optional, fmt.Errorf("ConfigMap %s has no key %s", ref.Name, ref.Key))
		}
		return v, true, nil
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		data, err := r.secretData(ref.Name, secrets)
		if err != nil {
			return "", false, optional(ref.Optional, err)
		}
		v, ok := data[ref.Key]
		if !ok {
			return "", false, optional(ref.Optional, fmt.Errorf("Secret %s has no key %s", ref.Name, ref.Key))
		}
		return string(v), true, nil
	}
	return "", false, fmt.Errorf("unsupported valueFrom")
}

func optional(opt *bool, err error) error {
	if isOptional(opt) {
		return nil
	}
	return err
}

// Expand expands $(VAR) references in s with env as the kubelet does in a container's
// command, args and variables: $$ is a literal $, and a reference to a variable that is not
// set is left as it is.
func Expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
