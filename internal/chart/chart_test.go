package chart

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/codefleet/codefleet/internal/backend"
	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/quotaflags"
	"github.com/codefleet/codefleet/pkg/quota"
)

var rel = Release{Name: "cf", Namespace: "fleet"}

// Names of the objects as rendered for rel.
const (
	workerName     = "cf-codefleet-worker"
	dispatcherName = "cf-codefleet-dispatcher"
	fleetConfig    = "cf-codefleet-fleet"
)

var (
	loadOnce sync.Once
	loaded   *Chart
	loadErr  error
)

func load(t testing.TB) *Chart {
	t.Helper()
	loadOnce.Do(func() {
		dir, err := Dir()
		if err != nil {
			loadErr = err
			return
		}
		loaded, loadErr = Load(dir)
	})
	if loadErr != nil {
		t.Fatal(loadErr)
	}
	return loaded
}

func values(t testing.TB, text string) map[string]any {
	t.Helper()
	v, err := ParseValues(text)
	if err != nil {
		t.Fatalf("values: %v\n%s", err, text)
	}
	return v
}

func render(t testing.TB, text string) *Rendered {
	t.Helper()
	r, err := load(t).Render(rel, values(t, text))
	if err != nil {
		t.Fatalf("render: %v\nvalues:\n%s", err, text)
	}
	return r
}

func renderErr(t testing.TB, text string) error {
	t.Helper()
	_, err := load(t).Render(rel, values(t, text))
	return err
}

func get[T any](t testing.TB, r *Rendered, name string) *T {
	t.Helper()
	v, err := Get[T](r, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// container returns a pod's container or init container by name.
func container(t testing.TB, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

func worker(t testing.TB, r *Rendered) (*appsv1.StatefulSet, corev1.Container) {
	t.Helper()
	sts := get[appsv1.StatefulSet](t, r, workerName)
	return sts, container(t, sts.Spec.Template.Spec, "worker")
}

func dispatcher(t testing.TB, r *Rendered) (*appsv1.Deployment, corev1.Container) {
	t.Helper()
	d := get[appsv1.Deployment](t, r, dispatcherName)
	return d, container(t, d.Spec.Template.Spec, "dispatcher")
}

// flag returns the value of --name=value in args.
func flag(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func wantFlag(t testing.TB, args []string, name, want string) {
	t.Helper()
	if v, ok := flag(args, name); !ok || v != want {
		t.Errorf("--%s: got %q (given: %v), want %q; args %q", name, v, ok, want, args)
	}
}

func noFlag(t testing.TB, args []string, name string) {
	t.Helper()
	if v, ok := flag(args, name); ok {
		t.Errorf("--%s=%s given, want none; args %q", name, v, args)
	}
}

func mount(c corev1.Container, volume string) (corev1.VolumeMount, bool) {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m, true
		}
	}
	return corev1.VolumeMount{}, false
}

func volume(spec corev1.PodSpec, name string) (corev1.Volume, bool) {
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return corev1.Volume{}, false
}

func envVar(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// scenarios are the deployments the chart must render, lint clean and match the binaries in.
var scenarios = map[string]string{
	"docker-dind": ``,
	"docker-dind-volumeclaim-archive": `
docker:
  dind:
    storage: {type: volumeClaim, size: 50Gi, storageClassName: fast}
    sandboxImage:
      source: archive
      archive:
        volume: {persistentVolumeClaim: {claimName: sandbox-images, readOnly: true}}
        file: sandbox.tar
`,
	"docker-socket": `docker: {mode: socket}`,
	"daytona":       `{worker: {backend: daytona}, daytona: {apiKey: dtn_test}}`,
	"daytona-existing-secret": `
worker: {backend: daytona}
daytona: {existingSecret: daytona-account, existingSecretKey: key, existingSecretTenantsKey: tenants}
`,
	"no-metrics":     `metrics: {enabled: false}`,
	"servicemonitor": `metrics: {serviceMonitor: {enabled: true, labels: {release: prometheus}}}`,
	"hpa":            `dispatcher: {autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 12, targetMemoryUtilizationPercentage: 80}}`,
	"networkpolicy":  `networkPolicy: {enabled: true}`,
	"egress": `
worker:
  egress:
    allow: ["pypi.org:443", "files.pythonhosted.org:443", "*.example.org:8443"]
    tenants: {acme: ["git.acme.example:443", "10.1.2.3:5432"], locked: []}
networkPolicy: {enabled: true}
`,
	"networkpolicy-daytona-no-metrics": `
networkPolicy: {enabled: true}
metrics: {enabled: false}
worker: {backend: daytona}
daytona: {apiKey: dtn_test}
`,
	"nats-creds-tls": `
nats:
  url: tls://nats-0.nats:4222,tls://nats-1.nats:4222
  kvReplicas: 3
  creds: {existingSecret: fleet-nats, key: worker.creds}
  tls:
    ca: {existingSecret: fleet-nats-tls}
    client: {existingSecret: fleet-nats-tls}
`,
	"nats-user-password": `nats: {user: fleet, password: {value: s3cret}}`,
	"nats-token":         `nats: {token: {existingSecret: fleet-nats, key: token}}`,
	"nats-nkey-inline-tls": `
nats:
  nkey: {value: SUAEXAMPLE}
  tls:
    ca: {value: "-----BEGIN CERTIFICATE-----"}
    client: {cert: "-----BEGIN CERTIFICATE-----", key: "-----BEGIN PRIVATE KEY-----"}
`,
	// Every value that gives a flag, set.
	"every-flag-docker": `
worker:
  maxConcurrentRuns: 8
  maxConcurrentCreates: 2
  createTimeout: 1m
  queueDepth: 4
  reapInterval: 5s
  heartbeatInterval: 500ms
  destroyOnShutdown: true
  maxOutput: 128KiB
  allowedImages: ["python:3.12", "node:22"]
  sandbox: {user: "1000:1000", workdir: /work, capAdd: [CHOWN, SETUID], readonlyRootfs: true, runtime: runsc, cpus: 0.5}
dispatcher:
  relayOverhead: 1m
  closeTimeout: 30s
  quotas: {maxSandboxes: 20, maxRuns: 8, tenants: {acme: {max_sandboxes: 100}, internal: {max_sandboxes: 0, max_runs: 0}}}
`,
	"every-flag-daytona": `
worker: {backend: daytona, sandbox: {image: "snapshot:py"}}
daytona:
  apiKey: dtn_test
  apiUrl: https://daytona.example/api
  target: eu
  tenants: '{"acme": {"api_key": "${acme_key}"}}'
  networkBlockAll: true
  autoStop: 15
  startTimeout: 2m
`,
	"long-dotted-names": `fullnameOverride: a.very-long.release-name-that-goes-on-and-on-x`,
}

func scenarioNames() []string {
	names := make([]string, 0, len(scenarios))
	for n := range scenarios {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TestScenariosRenderStrictly renders every scenario: each object decodes strictly into its
// API type (Render fails otherwise) and the SDK's linter reports nothing above info.
func TestScenariosRenderStrictly(t *testing.T) {
	for _, name := range scenarioNames() {
		t.Run(name, func(t *testing.T) {
			r := render(t, scenarios[name])
			kinds := map[string]int{}
			for _, o := range r.Objects {
				kinds[o.Kind]++
			}
			if kinds["StatefulSet"] != 1 || kinds["Deployment"] != 1 || kinds["ConfigMap"] != 1 {
				t.Errorf("objects %v: want one StatefulSet, Deployment and ConfigMap", kinds)
			}
			if r.Notes == "" {
				t.Error("NOTES.txt rendered nothing")
			}
			msgs, err := load(t).Lint(rel, values(t, scenarios[name]))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				if m.Severity > support.InfoSev {
					t.Errorf("lint: %s", m)
				} else {
					t.Logf("lint: %s", m)
				}
			}
		})
	}
}

// TestStrictDecodeRefusesUnknownFields: the decoder itself, on objects a template could
// produce by mistake.
func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	for name, doc := range map[string]string{
		"misspelt field":   "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndatas: {a: b}\n",
		"nested unknown":   "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{name: c, image: i, arg: [x]}]}}}\n",
		"wrong type":       "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: \"80\"}]}\n",
		"duplicate key":    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n",
		"unknown kind":     "apiVersion: v1\nkind: Pod2\nmetadata: {name: x}\n",
		"wrong group kind": "apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n",
	} {
		if _, err := decode(doc); err == nil {
			t.Errorf("%s: decoded without error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if _, err := decode("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n"); err != nil {
		t.Errorf("a good ConfigMap: %v", err)
	}
}

// TestWorkerStatefulSet: the worker's id is its pod name, given by --id from the downward
// API; the typed values become its flags.
func TestWorkerStatefulSet(t *testing.T) {
	r := render(t, `
worker:
  replicas: 3
  capacity: 64
  warmPool: 8
  idleTTL: 15m
  drainTimeout: 45s
  maxOutput: 1MiB
  maxFileSize: 64MiB
  allowedImages: ["python:3.12", "node:22"]
  sandbox: {memory: 1GiB, pidsLimit: 512, cpus: 0.5}
  extraArgs: [--log-level=debug]
  extraEnv: [{name: CODEFLEET_REAP_INTERVAL, value: 20s}]
`)
	sts, c := worker(t, r)
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", sts.Spec.Replicas)
	}
	if sts.Spec.ServiceName != workerName {
		t.Errorf("serviceName %q, want the headless Service %s", sts.Spec.ServiceName, workerName)
	}
	get[corev1.Service](t, r, workerName)
	wantFlag(t, c.Args, "id", "$(POD_NAME)")
	pod, ok := envVar(c, "POD_NAME")
	if !ok || pod.ValueFrom == nil || pod.ValueFrom.FieldRef == nil || pod.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("POD_NAME %+v, want the pod's metadata.name", pod)
	}
	env, err := r.Environment(c, Pod{Name: workerName + "-2", Namespace: "fleet"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := flag(c.Args, "id"); Expand(id, env) != workerName+"-2" {
		t.Errorf("--id expands to %q, want the pod name", Expand(id, env))
	}
	for name, want := range map[string]string{
		"backend": "docker", "capacity": "64", "warm-pool": "8", "idle-ttl": "15m", "max-life": "24h", "drain-timeout": "45s",
		"max-output": "1MiB", "max-file-size": "64MiB", "allowed-images": "python:3.12,node:22", "memory": "1GiB", "cpus": "0.5",
		"pids-limit": "512", "network": "none", "image": "codefleet-sandbox:bookworm", "http-addr": ":9464",
	} {
		wantFlag(t, c.Args, name, want)
	}
	// Values left null are the binary's default: not given.
	for _, name := range []string{"max-concurrent-runs", "queue-depth", "reap-interval", "destroy-on-shutdown", "readonly-rootfs", "runtime", "cap-add", "user"} {
		noFlag(t, c.Args, name)
	}
	if c.Args[len(c.Args)-1] != "--log-level=debug" {
		t.Errorf("extraArgs not last: %q", c.Args)
	}
	if e, ok := envVar(c, "CODEFLEET_REAP_INTERVAL"); !ok || e.Value != "20s" {
		t.Errorf("extraEnv: %+v", c.Env)
	}
	// The fleet's shared settings come from its ConfigMap, the same for the dispatchers.
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != fleetConfig {
		t.Errorf("envFrom %+v, want the fleet ConfigMap", c.EnvFrom)
	}
	for k, want := range map[string]string{"CODEFLEET_NATS_URL": "nats://nats:4222", "CODEFLEET_KV_REPLICAS": "1", "CODEFLEET_PREFIX": "codefleet", "CODEFLEET_HEARTBEAT_TTL": "3s"} {
		if env[k] != want {
			t.Errorf("%s=%q, want %q", k, env[k], want)
		}
	}
	if e := sts.Spec.Template.Spec.EnableServiceLinks; e == nil || *e {
		t.Error("enableServiceLinks is not false: Services would pass CODEFLEET_* variables")
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %s, want Parallel", sts.Spec.PodManagementPolicy)
	}
	// Big numbers print as integers, not 1e+06.
	r = render(t, `worker: {capacity: 1000000}`)
	_, c = worker(t, r)
	wantFlag(t, c.Args, "capacity", "1000000")
}

// TestDinD: the Docker-in-Docker sidecar is privileged, starts before the worker and stops
// after it (a native sidecar), and shares the socket directory with the worker at the same
// path; its socket is in a volume of both.
func TestDinD(t *testing.T) {
	r := render(t, `docker: {socketDir: /run/cf/sockets}`)
	sts, w := worker(t, r)
	spec := sts.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "dind" {
		t.Fatalf("init containers %v, want the dind sidecar alone", spec.InitContainers)
	}
	dind := spec.InitContainers[0]
	if dind.RestartPolicy == nil || *dind.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("dind is not a native sidecar (restartPolicy: Always): it would stop with the worker, before its drain")
	}
	if dind.SecurityContext == nil || dind.SecurityContext.Privileged == nil || !*dind.SecurityContext.Privileged {
		t.Error("dind is not privileged")
	}
	if dind.StartupProbe == nil || dind.StartupProbe.Exec == nil {
		t.Error("dind has no startup probe: the worker would start before the daemon answers")
	}
	if !slices.Contains(dind.Args, "--host=unix:///run/dind/docker.sock") || slices.ContainsFunc(dind.Args, func(a string) bool { return strings.Contains(a, "tcp://") }) {
		t.Errorf("dind args %q: want the unix socket only", dind.Args)
	}
	wantFlag(t, w.Args, "docker-host", "unix:///run/dind/docker.sock")
	wantFlag(t, w.Args, "socket-dir", "/run/cf/sockets")
	for _, v := range []struct{ volume, path string }{{"dind-socket", "/run/dind"}, {"sandbox-sockets", "/run/cf/sockets"}} {
		mw, ok1 := mount(w, v.volume)
		md, ok2 := mount(dind, v.volume)
		if !ok1 || !ok2 || mw.MountPath != v.path || md.MountPath != v.path {
			t.Errorf("volume %s: worker at %q (%v), dind at %q (%v), want both at %s", v.volume, mw.MountPath, ok1, md.MountPath, ok2, v.path)
		}
		if vol, ok := volume(spec, v.volume); !ok || vol.EmptyDir == nil {
			t.Errorf("volume %s: %+v, want an emptyDir", v.volume, vol)
		}
	}
	if m, ok := mount(dind, "docker-data"); !ok || m.MountPath != "/var/lib/docker" {
		t.Error("dind has no storage volume at /var/lib/docker")
	}
	if vol, ok := volume(spec, "docker-data"); !ok || vol.EmptyDir == nil || vol.EmptyDir.SizeLimit.String() != "20Gi" {
		t.Errorf("docker-data %+v, want a 20Gi emptyDir", vol)
	}
	if _, ok := mount(w, "docker-data"); ok {
		t.Error("the worker mounts the daemon's storage")
	}
	if w.SecurityContext.Privileged != nil && *w.SecurityContext.Privileged {
		t.Error("the worker container is privileged")
	}
	if sts.Annotations["codefleet.io/sandboxes-survive-restart"] != "false" {
		t.Errorf("annotations %v: want sandboxes-survive-restart false with emptyDir storage", sts.Annotations)
	}

	// Storage on a claim per worker, the sandbox image loaded from an archive.
	r = render(t, scenarios["docker-dind-volumeclaim-archive"])
	sts, w = worker(t, r)
	spec = sts.Spec.Template.Spec
	if _, ok := volume(spec, "docker-data"); ok {
		t.Error("docker-data is a pod volume with storage volumeClaim")
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Name != "docker-data" ||
		*sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName != "fast" ||
		sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().String() != "50Gi" {
		t.Errorf("volumeClaimTemplates %+v, want docker-data of 50Gi on fast", sts.Spec.VolumeClaimTemplates)
	}
	if sts.Annotations["codefleet.io/sandboxes-survive-restart"] != "true" {
		t.Errorf("annotations %v: want sandboxes-survive-restart true with a claim", sts.Annotations)
	}
	if len(spec.InitContainers) != 2 || spec.InitContainers[1].Name != "load-sandbox-image" {
		t.Fatalf("init containers %v, want dind then load-sandbox-image", spec.InitContainers)
	}
	load := spec.InitContainers[1]
	if load.RestartPolicy != nil {
		t.Error("load-sandbox-image is a sidecar: the worker must wait for it to finish")
	}
	if !slices.Equal(load.Command[2:], []string{"load", "--input", "/sandbox-image/sandbox.tar"}) {
		t.Errorf("load command %q", load.Command)
	}
	if vol, ok := volume(spec, "sandbox-image"); !ok || vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != "sandbox-images" {
		t.Errorf("sandbox-image volume %+v", vol)
	}
	if err := renderErr(t, `docker: {dind: {sandboxImage: {source: archive}}}`); err == nil || !strings.Contains(err.Error(), "docker.dind.sandboxImage.archive.volume") {
		t.Errorf("an archive without a volume: %v", err)
	}
}

// TestNodeSocket: the node's socket and the socket directory are hostPaths, the directory at
// the same path in the worker as on the node; nothing is privileged.
func TestNodeSocket(t *testing.T) {
	r := render(t, `docker: {mode: socket, socketDir: /run/cf/sockets, socket: {hostPath: /run/docker.sock}}`)
	sts, w := worker(t, r)
	spec := sts.Spec.Template.Spec
	if len(spec.InitContainers) != 0 {
		t.Errorf("init containers %v, want none", spec.InitContainers)
	}
	sock, ok := volume(spec, "docker-socket")
	if !ok || sock.HostPath == nil || sock.HostPath.Path != "/run/docker.sock" || *sock.HostPath.Type != corev1.HostPathSocket {
		t.Errorf("docker-socket %+v, want the node's socket", sock)
	}
	if m, _ := mount(w, "docker-socket"); m.MountPath != "/var/run/docker.sock" {
		t.Errorf("socket mounted at %q", m.MountPath)
	}
	wantFlag(t, w.Args, "docker-host", "unix:///var/run/docker.sock")
	dir, ok := volume(spec, "sandbox-sockets")
	if !ok || dir.HostPath == nil || dir.HostPath.Path != "/run/cf/sockets" || *dir.HostPath.Type != corev1.HostPathDirectoryOrCreate {
		t.Errorf("sandbox-sockets %+v, want the node's /run/cf/sockets", dir)
	}
	if m, _ := mount(w, "sandbox-sockets"); m.MountPath != "/run/cf/sockets" {
		t.Errorf("socket directory mounted at %q, want the node's path", m.MountPath)
	}
	wantFlag(t, w.Args, "socket-dir", "/run/cf/sockets")
	if w.SecurityContext.Privileged != nil && *w.SecurityContext.Privileged {
		t.Error("the worker is privileged")
	}
	if sts.Annotations["codefleet.io/sandboxes-survive-restart"] != "true" {
		t.Errorf("annotations %v", sts.Annotations)
	}
}

// TestDaytona: the API key comes from a Secret (the chart's or an existing one), never in the
// args; no Docker volume; the worker runs as non-root.
func TestDaytona(t *testing.T) {
	r := render(t, scenarios["every-flag-daytona"])
	sts, w := worker(t, r)
	spec := sts.Spec.Template.Spec
	wantFlag(t, w.Args, "backend", "daytona")
	wantFlag(t, w.Args, "image", "snapshot:py")
	wantFlag(t, w.Args, "daytona-api-url", "https://daytona.example/api")
	wantFlag(t, w.Args, "daytona-target", "eu")
	wantFlag(t, w.Args, "daytona-auto-stop", "15")
	for _, name := range []string{"docker-host", "socket-dir", "memory", "daytona-api-key"} {
		noFlag(t, w.Args, name)
	}
	if len(spec.Volumes) != 0 || len(spec.InitContainers) != 0 {
		t.Errorf("volumes %v, init containers %v: want none", spec.Volumes, spec.InitContainers)
	}
	key, ok := envVar(w, "CODEFLEET_DAYTONA_API_KEY")
	if !ok || key.Value != "" || key.ValueFrom == nil || key.ValueFrom.SecretKeyRef == nil {
		t.Fatalf("CODEFLEET_DAYTONA_API_KEY %+v, want a secretKeyRef", key)
	}
	if ref := key.ValueFrom.SecretKeyRef; ref.Name != "cf-codefleet-daytona" || ref.Key != "api-key" {
		t.Errorf("key from %s/%s", ref.Name, ref.Key)
	}
	env, err := r.Environment(w, Pod{Name: workerName + "-0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if env["CODEFLEET_DAYTONA_API_KEY"] != "dtn_test" || env["CODEFLEET_DAYTONA_TENANTS"] != `{"acme": {"api_key": "${acme_key}"}}` {
		t.Errorf("resolved env %v", env)
	}
	psc := spec.SecurityContext
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || *psc.RunAsUser != 65532 {
		t.Errorf("pod security context %+v, want non-root 65532", psc)
	}

	// An existing Secret: the chart makes none.
	r = render(t, scenarios["daytona-existing-secret"])
	_, w = worker(t, r)
	if _, err := Get[corev1.Secret](r, "cf-codefleet-daytona"); err == nil {
		t.Error("the chart made a Daytona Secret beside the existing one")
	}
	key, _ = envVar(w, "CODEFLEET_DAYTONA_API_KEY")
	tenants, _ := envVar(w, "CODEFLEET_DAYTONA_TENANTS")
	if key.ValueFrom.SecretKeyRef.Name != "daytona-account" || key.ValueFrom.SecretKeyRef.Key != "key" || tenants.ValueFrom.SecretKeyRef.Key != "tenants" {
		t.Errorf("key %+v, tenants %+v", key.ValueFrom.SecretKeyRef, tenants.ValueFrom)
	}
	env, err = r.Environment(w, Pod{Name: "x"}, map[string]map[string][]byte{"daytona-account": {"key": []byte("dtn_existing"), "tenants": []byte("{}")}})
	if err != nil || env["CODEFLEET_DAYTONA_API_KEY"] != "dtn_existing" {
		t.Errorf("resolved %v, %v", env, err)
	}
	if _, err := r.Environment(w, Pod{Name: "x"}, nil); err == nil {
		t.Error("a reference to a Secret that does not exist resolved")
	}

	for values, want := range map[string]string{
		`worker: {backend: daytona}`: "daytona: the workers need an API key",
		`{worker: {backend: daytona}, daytona: {existingSecret: a, apiKey: b}}`: "daytona: set existingSecret or apiKey",
	} {
		if err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", values, err, want)
		}
	}
}

// TestProbes: both daemons serve on --http-addr, the port named http; liveness is /healthz and
// readiness /readyz on it, wherever http.port puts it.
func TestProbes(t *testing.T) {
	for _, port := range []int{9464, 8081} {
		r := render(t, "http: {port: "+strconv.Itoa(port)+"}")
		_, w := worker(t, r)
		_, d := dispatcher(t, r)
		for _, c := range []corev1.Container{w, d} {
			wantFlag(t, c.Args, "http-addr", ":"+strconv.Itoa(port))
			if len(c.Ports) != 1 || c.Ports[0].Name != "http" || int(c.Ports[0].ContainerPort) != port {
				t.Errorf("%s ports %+v, want http %d", c.Name, c.Ports, port)
			}
			for _, p := range []struct {
				probe *corev1.Probe
				kind  string
				path  string
			}{{c.LivenessProbe, "liveness", "/healthz"}, {c.ReadinessProbe, "readiness", "/readyz"}} {
				if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromString("http") {
					t.Errorf("%s %s probe %+v, want GET %s on http", c.Name, p.kind, p.probe, p.path)
				}
			}
		}
		if w.StartupProbe == nil || w.StartupProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("worker startup probe %+v", w.StartupProbe)
		}
		svc := get[corev1.Service](t, r, workerName)
		if svc.Spec.ClusterIP != "None" || svc.Spec.Ports[0].Name != "metrics" || int(svc.Spec.Ports[0].Port) != port || svc.Spec.Ports[0].TargetPort != intstr.FromString("http") {
			t.Errorf("worker Service %+v", svc.Spec)
		}
	}
}

// TestDispatcherLockedDown: non-root, read-only root file system, no capability, no privilege
// escalation, the runtime's seccomp profile, no service account token.
func TestDispatcherLockedDown(t *testing.T) {
	r := render(t, ``)
	dep, c := dispatcher(t, r)
	spec := dep.Spec.Template.Spec
	psc, sc := spec.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatal("no security context")
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod security context %+v, want non-root", psc)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccomp %+v", psc.SeccompProfile)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root file system writable")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("privilege escalation allowed")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities %+v, want ALL dropped", sc.Capabilities)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("a service account token is mounted")
	}
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		t.Error("service links on")
	}
	if *dep.Spec.Replicas != 2 {
		t.Errorf("replicas %d", *dep.Spec.Replicas)
	}
	pdb := get[policyv1.PodDisruptionBudget](t, r, dispatcherName)
	if pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.Selector.MatchLabels["app.kubernetes.io/component"] != "dispatcher" {
		t.Errorf("pdb %+v", pdb.Spec)
	}
	wantFlag(t, c.Args, "name", "$(POD_NAME)")
}

// TestDispatcherQuotas: dispatcher.quotas become the quota flags, the tenants one JSON object
// the dispatcher's own parser takes; without quotas no quota flag is given (unlimited).
func TestDispatcherQuotas(t *testing.T) {
	_, c := dispatcher(t, render(t, ``))
	for _, name := range []string{"tenant-max-sandboxes", "tenant-max-runs", "tenant-quotas"} {
		noFlag(t, c.Args, name)
	}
	_, c = dispatcher(t, render(t, `
dispatcher:
  quotas: {maxSandboxes: 20, maxRuns: 8, tenants: {acme: {max_sandboxes: 100}, internal: {max_sandboxes: 0, max_runs: 0}}}
`))
	wantFlag(t, c.Args, "tenant-max-sandboxes", "20")
	wantFlag(t, c.Args, "tenant-max-runs", "8")
	tenants, _ := flag(c.Args, "tenant-quotas")
	fs := config.New("dispatcher", io.Discard)
	var q quotaflags.Options
	q.Register(fs)
	if err := fs.Parse([]string{"--tenant-max-sandboxes=20", "--tenant-max-runs=8", "--tenant-quotas=" + tenants}); err != nil {
		t.Fatal(err)
	}
	limits, err := q.Limits()
	if err != nil {
		t.Fatalf("the dispatcher refuses the chart's --tenant-quotas=%s: %v", tenants, err)
	}
	if limits.For("acme") != (quota.Limit{MaxSandboxes: 100, MaxRuns: 8}) || limits.For("internal") != (quota.Limit{}) || limits.For("other") != (quota.Limit{MaxSandboxes: 20, MaxRuns: 8}) {
		t.Errorf("quotas from the chart: %+v", limits)
	}
}

// TestWorkerSecurity: with Docker the worker is root (the daemon's socket is root's), with
// every capability dropped, no escalation and a read-only root file system; values may loosen
// or tighten it.
func TestWorkerSecurity(t *testing.T) {
	for _, name := range []string{"docker-dind", "docker-socket"} {
		sts, c := worker(t, render(t, scenarios[name]))
		sc, psc := c.SecurityContext, sts.Spec.Template.Spec.SecurityContext
		if *psc.RunAsUser != 0 || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: pod security context %+v", name, psc)
		}
		if !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("%s: security context %+v", name, sc)
		}
	}
	sts, c := worker(t, render(t, `worker: {podSecurityContext: {runAsUser: 1000, fsGroup: 999}, securityContext: {capabilities: {add: [DAC_OVERRIDE]}}}`))
	psc := sts.Spec.Template.Spec.SecurityContext
	if *psc.RunAsUser != 1000 || *psc.FSGroup != 999 || psc.SeccompProfile == nil {
		t.Errorf("merged pod security context %+v", psc)
	}
	if !slices.Equal(c.SecurityContext.Capabilities.Add, []corev1.Capability{"DAC_OVERRIDE"}) || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("merged security context %+v", c.SecurityContext)
	}
}

// TestNetworkPolicy: off by default; on, each component may reach NATS and DNS (workers the
// Daytona API too, with that backend) and be reached only on the http port by scrapers.
func TestNetworkPolicy(t *testing.T) {
	if len(All[networkingv1.NetworkPolicy](render(t, ``))) != 0 {
		t.Error("a NetworkPolicy by default")
	}
	ports := func(rule networkingv1.NetworkPolicyEgressRule) []string {
		var ps []string
		for _, p := range rule.Ports {
			ps = append(ps, string(*p.Protocol)+"/"+p.Port.String())
		}
		return ps
	}
	check := func(t *testing.T, r *Rendered, daytona, metrics bool) {
		for _, component := range []string{"dispatcher", "worker"} {
			np := get[networkingv1.NetworkPolicy](t, r, "cf-codefleet-"+component)
			if np.Spec.PodSelector.MatchLabels["app.kubernetes.io/component"] != component || np.Spec.PodSelector.MatchLabels["app.kubernetes.io/instance"] != "cf" {
				t.Errorf("%s: podSelector %v", component, np.Spec.PodSelector)
			}
			if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{"Ingress", "Egress"}) {
				t.Errorf("%s: policyTypes %v", component, np.Spec.PolicyTypes)
			}
			var got [][]string
			for _, e := range np.Spec.Egress {
				got = append(got, ports(e))
			}
			want := [][]string{{"TCP/4222"}, {"UDP/53", "TCP/53"}}
			if daytona && component == "worker" {
				want = append(want, []string{"TCP/443"})
			}
			if !slices.EqualFunc(got, want, slices.Equal) {
				t.Errorf("%s: egress ports %v, want %v", component, got, want)
			}
			if np.Spec.Egress[0].To[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "nats" {
				t.Errorf("%s: NATS egress to %+v", component, np.Spec.Egress[0].To)
			}
			if !metrics {
				if len(np.Spec.Ingress) != 0 {
					t.Errorf("%s: ingress %+v, want none", component, np.Spec.Ingress)
				}
				continue
			}
			if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].Ports) != 1 || np.Spec.Ingress[0].Ports[0].Port.String() != "http" ||
				np.Spec.Ingress[0].From[0].PodSelector.MatchLabels["app.kubernetes.io/name"] != "prometheus" {
				t.Errorf("%s: ingress %+v, want the http port from prometheus", component, np.Spec.Ingress)
			}
		}
	}
	t.Run("docker", func(t *testing.T) { check(t, render(t, scenarios["networkpolicy"]), false, true) })
	t.Run("daytona-no-metrics", func(t *testing.T) { check(t, render(t, scenarios["networkpolicy-daytona-no-metrics"]), true, false) })
	t.Run("no-scrapers", func(t *testing.T) {
		r := render(t, `networkPolicy: {enabled: true, metricsFrom: []}`)
		check(t, r, false, false)
		if !strings.Contains(r.Notes, "no scraper can reach /metrics") {
			t.Errorf("NOTES say nothing of it:\n%s", r.Notes)
		}
	})
	t.Run("extra-egress", func(t *testing.T) {
		r := render(t, `networkPolicy: {enabled: true, extraEgress: [{to: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: 5000}]}]}`)
		np := get[networkingv1.NetworkPolicy](t, r, workerName)
		if last := np.Spec.Egress[len(np.Spec.Egress)-1]; last.To[0].IPBlock.CIDR != "10.1.0.0/16" {
			t.Errorf("extra egress %+v", last)
		}
	})
}

// TestMetricsAndServiceMonitor: metrics give the dispatchers a Service and the pods scrape
// annotations; the ServiceMonitor selects both Services' metrics port.
func TestMetricsAndServiceMonitor(t *testing.T) {
	r := render(t, ``)
	if len(All[monitoringv1.ServiceMonitor](r)) != 0 {
		t.Error("a ServiceMonitor by default")
	}
	d, _ := dispatcher(t, r)
	if d.Spec.Template.Annotations["prometheus.io/port"] != "9464" {
		t.Errorf("annotations %v", d.Spec.Template.Annotations)
	}
	get[corev1.Service](t, r, dispatcherName)

	r = render(t, scenarios["no-metrics"])
	if _, err := Get[corev1.Service](r, dispatcherName); err == nil {
		t.Error("a dispatcher Service without metrics")
	}
	d, _ = dispatcher(t, r)
	if _, ok := d.Spec.Template.Annotations["prometheus.io/scrape"]; ok {
		t.Error("scrape annotations without metrics")
	}

	r = render(t, scenarios["servicemonitor"])
	sm := get[monitoringv1.ServiceMonitor](t, r, "cf-codefleet")
	if sm.Labels["release"] != "prometheus" {
		t.Errorf("labels %v", sm.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("endpoints %+v", sm.Spec.Endpoints)
	}
	// The selector picks exactly the two metrics Services.
	var selected []string
	for _, svc := range All[corev1.Service](r) {
		match := true
		for k, v := range sm.Spec.Selector.MatchLabels {
			match = match && svc.Labels[k] == v
		}
		for _, e := range sm.Spec.Selector.MatchExpressions {
			match = match && slices.Contains(e.Values, svc.Labels[e.Key])
		}
		if match && svc.Spec.Ports[0].Name == "metrics" {
			selected = append(selected, svc.Name)
		}
	}
	sort.Strings(selected)
	if !slices.Equal(selected, []string{dispatcherName, workerName}) {
		t.Errorf("the ServiceMonitor selects %v", selected)
	}
	if err := renderErr(t, `metrics: {enabled: false, serviceMonitor: {enabled: true}}`); err == nil || !strings.Contains(err.Error(), "needs metrics.enabled") {
		t.Errorf("a ServiceMonitor without metrics: %v", err)
	}
}

// TestAutoscaling: the HPA scales the dispatchers' Deployment, which then gives no replicas.
func TestAutoscaling(t *testing.T) {
	r := render(t, `dispatcher: {autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 12}}`)
	hpa := get[autoscalingv2.HorizontalPodAutoscaler](t, r, dispatcherName)
	if hpa.Spec.ScaleTargetRef.Kind != "Deployment" || hpa.Spec.ScaleTargetRef.Name != dispatcherName || *hpa.Spec.MinReplicas != 3 || hpa.Spec.MaxReplicas != 12 {
		t.Errorf("hpa %+v", hpa.Spec)
	}
	if len(hpa.Spec.Metrics) != 1 || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU || *hpa.Spec.Metrics[0].Resource.Target.AverageUtilization != 70 {
		t.Errorf("metrics %+v", hpa.Spec.Metrics)
	}
	if d, _ := dispatcher(t, r); d.Spec.Replicas != nil {
		t.Errorf("the Deployment gives replicas %d beside the HPA", *d.Spec.Replicas)
	}
	if len(All[autoscalingv2.HorizontalPodAutoscaler](render(t, ``))) != 0 {
		t.Error("an HPA by default")
	}
	for values, want := range map[string]string{
		`dispatcher: {autoscaling: {enabled: true}, resources: {requests: {cpu: null}}}`: "needs dispatcher.resources.requests.cpu",
		`dispatcher: {autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 4}}`:     "minReplicas is above maxReplicas",
	} {
		if err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", values, err, want)
		}
	}
}

// TestNATSAuth: files come from Secrets mounted into both daemons and named by their flags;
// the password and the token are variables from Secrets, never in the args.
func TestNATSAuth(t *testing.T) {
	const dir = "/etc/codefleet/nats"
	both := func(t *testing.T, r *Rendered, fn func(t *testing.T, spec corev1.PodSpec, c corev1.Container)) {
		sts, w := worker(t, r)
		d, c := dispatcher(t, r)
		fn(t, sts.Spec.Template.Spec, w)
		fn(t, d.Spec.Template.Spec, c)
	}
	t.Run("creds-tls", func(t *testing.T) {
		r := render(t, scenarios["nats-creds-tls"])
		env, _ := r.Environment(corev1.Container{EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: fleetConfig}}}}}, Pod{}, nil)
		if env["CODEFLEET_NATS_URL"] != "tls://nats-0.nats:4222,tls://nats-1.nats:4222" || env["CODEFLEET_KV_REPLICAS"] != "3" {
			t.Errorf("fleet config %v", env)
		}
		both(t, r, func(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
			wantFlag(t, c.Args, "nats-creds", dir+"/nats.creds")
			wantFlag(t, c.Args, "nats-tls-ca", dir+"/ca.crt")
			wantFlag(t, c.Args, "nats-tls-cert", dir+"/tls.crt")
			wantFlag(t, c.Args, "nats-tls-key", dir+"/tls.key")
			if m, ok := mount(c, "nats-auth"); !ok || m.MountPath != dir || !m.ReadOnly {
				t.Errorf("%s: mount %+v", c.Name, m)
			}
			vol, ok := volume(spec, "nats-auth")
			if !ok || vol.Projected == nil {
				t.Fatalf("%s: volume %+v", c.Name, vol)
			}
			// The files are root's: a dispatcher (65532) reads them only if others may.
			if m := vol.Projected.DefaultMode; m == nil || *m&0o004 == 0 || *m&0o222 != 0 {
				t.Errorf("%s: files of mode %o, want readable by any user and writable by none", c.Name, *m)
			}
			var files []string
			for _, s := range vol.Projected.Sources {
				files = append(files, s.Secret.Name+":"+s.Secret.Items[0].Key+"->"+s.Secret.Items[0].Path)
			}
			want := []string{"fleet-nats:worker.creds->nats.creds", "fleet-nats-tls:ca.crt->ca.crt", "fleet-nats-tls:tls.crt->tls.crt", "fleet-nats-tls:tls.key->tls.key"}
			if !slices.Equal(files, want) {
				t.Errorf("%s: files %v, want %v", c.Name, files, want)
			}
		})
		if _, err := Get[corev1.Secret](r, "cf-codefleet-nats"); err == nil {
			t.Error("a chart Secret beside the existing ones")
		}
	})
	t.Run("user-password", func(t *testing.T) {
		r := render(t, scenarios["nats-user-password"])
		both(t, r, func(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
			wantFlag(t, c.Args, "nats-user", "fleet")
			noFlag(t, c.Args, "nats-password")
			env, err := r.Environment(c, Pod{Name: "p"}, nil)
			if err != nil || env["CODEFLEET_NATS_PASSWORD"] != "s3cret" {
				t.Errorf("%s: env %v, %v", c.Name, env, err)
			}
			if _, ok := volume(spec, "nats-auth"); ok {
				t.Errorf("%s: a NATS volume with no file", c.Name)
			}
		})
	})
	t.Run("token", func(t *testing.T) {
		r := render(t, scenarios["nats-token"])
		both(t, r, func(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
			e, ok := envVar(c, "CODEFLEET_NATS_TOKEN")
			if !ok || e.ValueFrom.SecretKeyRef.Name != "fleet-nats" || e.ValueFrom.SecretKeyRef.Key != "token" {
				t.Errorf("%s: token %+v", c.Name, e)
			}
			noFlag(t, c.Args, "nats-token")
		})
	})
	t.Run("inline", func(t *testing.T) {
		r := render(t, scenarios["nats-nkey-inline-tls"])
		s := get[corev1.Secret](t, r, "cf-codefleet-nats")
		if string(s.Data["nkey.seed"]) != "SUAEXAMPLE" || string(s.Data["tls.key"]) != "-----BEGIN PRIVATE KEY-----" || len(s.Data) != 4 {
			t.Errorf("chart Secret %v", s.Data)
		}
		both(t, r, func(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
			wantFlag(t, c.Args, "nats-nkey", dir+"/nkey.seed")
			vol, _ := volume(spec, "nats-auth")
			for _, src := range vol.Projected.Sources {
				if src.Secret.Name != "cf-codefleet-nats" {
					t.Errorf("%s: file from %s", c.Name, src.Secret.Name)
				}
			}
		})
	})
	for values, want := range map[string]string{
		`nats: {token: {value: t}, creds: {existingSecret: c}}`: "give one way to log in",
		`nats: {password: {value: p}}`:                          "nats.user and nats.password go together",
		`nats: {user: u}`:                                       "nats.user and nats.password go together",
		`nats: {creds: {existingSecret: c, value: v}}`:          "nats.creds: set existingSecret or value, not both",
		`nats: {tls: {client: {cert: c}}}`:                      "cert and key go together",
		`nats: {tls: {client: {existingSecret: s, key: k}}}`:    "set existingSecret or cert and key",
	} {
		if err := renderErr(t, values); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", values, err, want)
		}
	}
}

// TestNames: a release name with dots or a long one still gives valid worker ids (pod names
// of [a-z0-9-]) and a StatefulSet name the controller can label its pods with.
func TestNames(t *testing.T) {
	r := render(t, scenarios["long-dotted-names"])
	sts := All[appsv1.StatefulSet](r)[0]
	if len(sts.Name) > 52 || strings.Contains(sts.Name, ".") {
		t.Errorf("StatefulSet name %q: want at most 52 characters and no dot", sts.Name)
	}
	id := sts.Name + "-99"
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`).MatchString(id) {
		t.Errorf("worker id %q is not [A-Za-z0-9_-]", id)
	}
	r2, err := load(t).Render(Release{Name: "team.fleet", Namespace: "x"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sts := All[appsv1.StatefulSet](r2)[0]; sts.Name != "team-fleet-codefleet-worker" {
		t.Errorf("StatefulSet of release team.fleet: %q", sts.Name)
	}
}

// TestSchemaRefuses: values.schema.json refuses wrong types, unknown names and impossible
// values before anything renders, naming the field.
func TestSchemaRefuses(t *testing.T) {
	for _, tc := range []struct{ values, field string }{
		{`dispatcher: {replicas: "two"}`, "/dispatcher/replicas"},
		{`dispatcher: {replicas: -1}`, "/dispatcher/replicas"},
		{`dispatcher: {replicas: 0}`, "/dispatcher/replicas"},
		{`worker: {replicas: 0}`, "/worker/replicas"},
		{`worker: {backend: kubernetes}`, "/worker/backend"},
		{`worker: {capacity: 0}`, "/worker/capacity"},
		{`worker: {capacity: 2.5}`, "/worker/capacity"},
		{`worker: {warmPool: -1}`, "/worker/warmPool"},
		{`worker: {idleTTL: 30 minutes}`, "/worker/idleTTL"},
		{`worker: {drainTimeout: 30}`, "/worker/drainTimeout"},
		{`worker: {sandbox: {memory: lots}}`, "/worker/sandbox/memory"},
		{`worker: {capactiy: 3}`, "capactiy"},
		{`docker: {mode: tcp}`, "/docker/mode"},
		{`docker: {dind: {storage: {type: hostPath}}}`, "/docker/dind/storage/type"},
		{`fleet: {prefix: acme.cf}`, "/fleet/prefix"},
		{`fleet: {heartbeatTTL: soon}`, "/fleet/heartbeatTTL"},
		{`fleet: {logLevel: loud}`, "/fleet/logLevel"},
		{`nats: {kvReplicas: 0}`, "/nats/kvReplicas"},
		{`nats: {url: "127.0.0.1:4222"}`, "/nats/url"},
		{`http: {port: 70000}`, "/http/port"},
		{`dispatcher: {autoscaling: {enabled: "yes"}}`, "/dispatcher/autoscaling/enabled"},
		{`dispatcher: {pdb: {maxUnavailable: 0}}`, "/dispatcher/pdb/maxUnavailable"},
		{`dispatcher: {quotas: {maxRuns: -1}}`, "/dispatcher/quotas/maxRuns"},
		{`dispatcher: {quotas: {tenants: {acme: {max_sandbox: 3}}}}`, "max_sandbox"},
		{`dispatcher: {quotas: {tenants: {a.b: {max_runs: 3}}}}`, "invalid propertyName 'a.b'"},
		{`worker: {egress: {allow: [pypi.org]}}`, "/worker/egress/allow/0"},
		{`worker: {egress: {tenants: {acme: pypi.org:443}}}`, "/worker/egress/tenants/acme"},
		{`worker: {egress: {tenants: {a.b: []}}}`, "'a.b' does not match pattern"},
		{`replicas: 3`, "additional properties 'replicas'"},
		{`natsUrl: nats://x:4222`, "additional properties 'natsUrl'"},
	} {
		err := renderErr(t, tc.values)
		if err == nil {
			t.Errorf("%s: accepted", tc.values)
			continue
		}
		if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v\nwant a schema error naming %s", tc.values, err, tc.field)
		}
	}
}

// binaryFlags builds the worker and the dispatcher and reads their --help: the flags they take
// and the variables they read.
func binaryFlags(t *testing.T) map[string]struct{ flags, vars map[string]bool } {
	t.Helper()
	root := filepath.Join(load(t).dir, "..", "..")
	bin := t.TempDir()
	// The flags of integration/'s build, so that the two share the build cache.
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin+string(filepath.Separator), "./cmd/worker", "./cmd/dispatcher")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	flagLine := regexp.MustCompile(`^\s+--([a-z][a-z0-9-]*)\b(.*)$`)
	varName := regexp.MustCompile(`\$([A-Z][A-Z0-9_]*)`)
	res := map[string]struct{ flags, vars map[string]bool }{}
	for _, name := range []string{"worker", "dispatcher"} {
		out, err := exec.Command(filepath.Join(bin, name), "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --help: %v\n%s", name, err, out)
		}
		fv := struct{ flags, vars map[string]bool }{map[string]bool{}, map[string]bool{}}
		for _, line := range strings.Split(string(out), "\n") {
			m := flagLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			fv.flags[m[1]] = true
			for _, v := range varName.FindAllStringSubmatch(m[2], -1) {
				fv.vars[v[1]] = true
			}
		}
		if !fv.flags["nats-url"] || !fv.vars["CODEFLEET_NATS_URL"] {
			t.Fatalf("%s --help: no --nats-url $CODEFLEET_NATS_URL found in\n%s", name, out)
		}
		res[name] = fv
	}
	return res
}

// TestFlagsExistInBinaries: every --flag the chart puts in the daemons' args and every
// variable it gives them (its own, the fleet ConfigMap's) is one the binary takes: a chart
// that drifts from the binaries fails here before any pod would.
func TestFlagsExistInBinaries(t *testing.T) {
	bins := binaryFlags(t)
	seen := map[string]bool{}
	for _, name := range scenarioNames() {
		r := render(t, scenarios[name])
		w := container(t, All[appsv1.StatefulSet](r)[0].Spec.Template.Spec, "worker")
		d := container(t, All[appsv1.Deployment](r)[0].Spec.Template.Spec, "dispatcher")
		for _, c := range []corev1.Container{w, d} {
			bin := bins[c.Name]
			for _, a := range c.Args {
				if !strings.HasPrefix(a, "--") {
					t.Errorf("%s: %s arg %q is not --flag=value", name, c.Name, a)
					continue
				}
				f, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if !bin.flags[f] {
					t.Errorf("%s: %s has no flag --%s (arg %q)", name, c.Name, f, a)
				}
				seen[c.Name+" --"+f] = true
			}
			env, err := r.Environment(c, Pod{Name: "p-0"}, map[string]map[string][]byte{
				"fleet-nats": {"worker.creds": nil, "token": nil}, "fleet-nats-tls": {}, "daytona-account": {"key": nil, "tenants": nil},
			})
			if err != nil {
				t.Errorf("%s: %s env: %v", name, c.Name, err)
			}
			for v := range env {
				if v == "POD_NAME" { // only expanded into --id and --name by the kubelet
					continue
				}
				if !bin.vars[v] {
					t.Errorf("%s: %s reads no variable %s", name, c.Name, v)
				}
				seen[c.Name+" $"+v] = true
			}
		}
	}
	// The scenarios cover the flags they are meant to.
	for _, want := range []string{
		"worker --id", "worker --http-addr", "worker --capacity", "worker --docker-host", "worker --socket-dir", "worker --cap-add",
		"worker --daytona-api-url", "worker --daytona-auto-stop", "worker --nats-creds", "worker --nats-nkey", "worker --nats-tls-ca",
		"worker --nats-tls-cert", "worker --nats-tls-key", "worker --nats-user", "dispatcher --relay-overhead", "dispatcher --http-addr",
		"dispatcher --tenant-max-sandboxes", "dispatcher --tenant-max-runs", "dispatcher --tenant-quotas",
		"worker $CODEFLEET_NATS_PASSWORD", "dispatcher $CODEFLEET_NATS_TOKEN", "worker $CODEFLEET_DAYTONA_API_KEY",
		"worker $CODEFLEET_DAYTONA_TENANTS", "dispatcher $CODEFLEET_PREFIX", "worker $CODEFLEET_KV_REPLICAS",
		"worker --egress-allow", "worker --egress-tenants",
	} {
		if !seen[want] {
			t.Errorf("no scenario renders %s", want)
		}
	}
}

// TestExpand: $(VAR) as the kubelet expands it in args and variables.
func TestExpand(t *testing.T) {
	env := map[string]string{"POD_NAME": "w-0", "EMPTY": ""}
	for in, want := range map[string]string{
		"--id=$(POD_NAME)":       "--id=w-0",
		"$(POD_NAME)$(POD_NAME)": "w-0w-0",
		"$$(POD_NAME)":           "$(POD_NAME)",
		"$(NOPE) stays":          "$(NOPE) stays",
		"x$(EMPTY)y":             "xy",
		"$ and $(unclosed":       "$ and $(unclosed",
		"cost: 5$":               "cost: 5$",
	} {
		if got := Expand(in, env); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEgress: worker.egress becomes --egress-allow and --egress-tenants, which the worker's
// flags take as they are; with NetworkPolicies on, a Docker worker may dial the allowlists'
// ports for its sandboxes (any port when an entry says *).
func TestEgress(t *testing.T) {
	r := render(t, scenarios["egress"])
	_, c := worker(t, r)
	wantFlag(t, c.Args, "egress-allow", "pypi.org:443,files.pythonhosted.org:443,*.example.org:8443")
	wantFlag(t, c.Args, "egress-tenants", `{"acme":["git.acme.example:443","10.1.2.3:5432"],"locked":[]}`)
	var b backend.Options
	fs := config.New("worker", io.Discard)
	b.Register(fs)
	allow, _ := flag(c.Args, "egress-allow")
	tenants, _ := flag(c.Args, "egress-tenants")
	if err := fs.Parse([]string{"--egress-allow=" + allow, "--egress-tenants=" + tenants}); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(); err != nil {
		t.Fatalf("the worker refuses the chart's egress flags: %v", err)
	}
	if e := b.Docker.Egress; len(e.Allow) != 3 || len(e.For("acme")) != 2 || len(e.For("locked")) != 0 {
		t.Errorf("egress as the worker reads it: %+v", e)
	}

	np := get[networkingv1.NetworkPolicy](t, r, workerName)
	last := np.Spec.Egress[len(np.Spec.Egress)-1]
	var ports []string
	for _, p := range last.Ports {
		ports = append(ports, string(*p.Protocol)+"/"+p.Port.String())
	}
	if want := []string{"TCP/443", "TCP/8443", "TCP/5432"}; !slices.Equal(ports, want) || last.To[0].IPBlock.CIDR != "0.0.0.0/0" || !slices.Equal(last.To[0].IPBlock.Except, []string{"169.254.0.0/16"}) {
		t.Errorf("sandboxes' egress rule: ports %v to %+v, want %v anywhere but link-local", ports, last.To, want)
	}
	if np := get[networkingv1.NetworkPolicy](t, r, dispatcherName); len(np.Spec.Egress) != 2 {
		t.Errorf("the dispatchers get the sandboxes' egress too: %+v", np.Spec.Egress)
	}

	r = render(t, `{worker: {egress: {tenants: {acme: ["10.0.0.0/8:*"]}}}, networkPolicy: {enabled: true}}`)
	np = get[networkingv1.NetworkPolicy](t, r, workerName)
	if last := np.Spec.Egress[len(np.Spec.Egress)-1]; len(last.Ports) != 0 || last.To[0].IPBlock == nil {
		t.Errorf("an entry for any port: %+v, want no port restriction", last)
	}
	for _, v := range []string{``, `worker: {egress: {tenants: {locked: []}}}`} {
		_, c := worker(t, render(t, v+"\nnetworkPolicy: {enabled: true}"))
		noFlag(t, c.Args, "egress-allow")
		if np := get[networkingv1.NetworkPolicy](t, render(t, v+"\nnetworkPolicy: {enabled: true}"), workerName); len(np.Spec.Egress) != 2 {
			t.Errorf("%q: the worker may dial for its sandboxes: %+v", v, np.Spec.Egress)
		}
	}
}
