package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mobycontainer "github.com/moby/moby/api/types/container"
	"github.com/nats-io/nats.go"
	"github.com/testcontainers/testcontainers-go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/codefleet/codefleet/internal/chart"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
)

// TestChartPodsRun: the Helm chart's pods, as rendered for the Docker backend on the node's
// socket, run. The worker StatefulSet's and the dispatcher Deployment's containers are started
// as the kubelet would start them (their image, args with $(VAR) expanded, their environment
// with the fleet ConfigMap, the chart's NATS Secret and the downward API's pod name resolved,
// their hostPath mounts and the files of their Secret volumes, user, read-only root and dropped
// capabilities) beside a NATS server that wants TLS with a client certificate and the user and
// password the chart passes; a conversation runs through them, on the unix socket channel
// through the shared socket directory, and every probe the chart names answers 200 on its port
// and path. A chart whose flags, variables or mounts do not fit the binaries fails here.
func TestChartPodsRun(t *testing.T) {
	f := newFleet(t)
	password := "pw-" + strings.ReplaceAll(testutil.RunID, "-", "")
	pki := testutil.MakeTLS(t, "nats")
	tlsDir := filepath.Dir(pki.CA)
	pem := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	f.nats = append(f.nats, f.start(runTag+"-nats", imageNATS, []string{"nats"}, "Server is ready",
		[]string{"-js", "-sd", "/data", "-n", "nats", "--user", "fleet", "--pass", password,
			"--tlsverify", "--tlscert", "/tls/server.pem", "--tlskey", "/tls/server-key.pem", "--tlscacert", "/tls/ca.pem"},
		testcontainers.WithExposedPorts("4222/tcp"),
		testcontainers.WithHostConfigModifier(func(hc *mobycontainer.HostConfig) {
			hc.Binds = append(hc.Binds, tlsDir+":/tls:ro")
		})))

	dir, err := chart.Dir()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := chart.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	workerRepo, workerTag, _ := strings.Cut(imageWorker, ":")
	dispatcherRepo, dispatcherTag, _ := strings.Cut(imageDispatcher, ":")
	values, err := chart.ParseValues(fmt.Sprintf(`
nats:
  url: tls://nats:4222
  user: fleet
  password: {value: %q}
  tls: {ca: {value: %q}, client: {cert: %q, key: %q}}
fleet: {logLevel: debug}
docker: {mode: socket, socketDir: %q}
worker:
  replicas: 1
  capacity: 8
  image: {repository: %q, tag: %q}
  sandbox: {image: %q}
dispatcher:
  image: {repository: %q, tag: %q}
`, password, pem(pki.CA), pem(pki.ClientCert), pem(pki.ClientKey), socketDir, workerRepo, workerTag, testutil.SandboxImage(), dispatcherRepo, dispatcherTag))
	if err != nil {
		t.Fatal(err)
	}
	// The release is named after the run, so that the worker's id (its pod name) starts with
	// runTag and its sandboxes are cleaned up with the run's.
	const namespace = "codefleet"
	r, err := ch.Render(chart.Release{Name: runTag, Namespace: namespace}, values)
	if err != nil {
		t.Fatal(err)
	}
	sts := chart.All[appsv1.StatefulSet](r)
	deps := chart.All[appsv1.Deployment](r)
	if len(sts) != 1 || len(deps) != 1 {
		t.Fatalf("%d StatefulSets and %d Deployments rendered, want one each", len(sts), len(deps))
	}
	workerPod := sts[0].Name + "-0"
	w, wc := f.startPod(r, sts[0].Spec.Template.Spec, "worker", chart.Pod{Name: workerPod, Namespace: namespace}, "worker started")
	d, dc := f.startPod(r, deps[0].Spec.Template.Spec, "dispatcher", chart.Pod{Name: deps[0].Name + "-5d4f8c7b9-x2k4q", Namespace: namespace}, "dispatcher started")

	nc, err := nats.Connect(f.natsURL(), nats.UserInfo("fleet", password), nats.MaxReconnects(-1),
		nats.RootCAs(pki.CA), nats.ClientCert(pki.ClientCert, pki.ClientKey))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	conv := c.Conversation("chart-" + testutil.RunID)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first, err := conv.Run(ctx, "echo from-the-chart > kept.txt; cat kept.txt", "bash", nil)
	if err != nil || first.Error != nil || first.ExitCode != 0 || first.Output != "from-the-chart\n" || first.Sandbox == nil || !first.Sandbox.Created {
		t.Fatalf("first run: %s, %v; want a new sandbox saying from-the-chart", describe(first), err)
	}
	// The worker's id is its pod name: --id=$(POD_NAME) from the downward API.
	if first.Sandbox.Worker != workerPod {
		t.Errorf("the run went to worker %q, want the pod name %q", first.Sandbox.Worker, workerPod)
	}
	second, err := conv.Run(ctx, "print(open('kept.txt').read().strip().upper())", "python", nil)
	if err != nil || second.Error != nil || second.Output != "FROM-THE-CHART\n" || second.Sandbox.Created || second.Sandbox.ID != first.Sandbox.ID {
		t.Errorf("second run: %s, %v; want the same sandbox and its file", describe(second), err)
	}
	// The socket directory the chart mounts at the same path as on the node carries the
	// worker's channel to the sandbox.
	if logs := f.logsOf(w); !strings.Contains(logs, `"transport":"socket"`) {
		t.Errorf("the worker's sandbox is not on the socket channel: the chart's socket directory is not shared with the daemon")
	}
	if _, err := conv.Close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}

	for _, p := range []struct {
		ctr  *testcontainers.DockerContainer
		c    corev1.Container
		user string
	}{{w, wc, "0:0"}, {d, dc, "65532:65532"}} {
		checkProbes(t, p.ctr, p.c)
		// They ran locked down as the chart says (and the harness did apply it).
		info, err := p.ctr.Inspect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.Config.User != p.user || !info.HostConfig.ReadonlyRootfs || !slices.Equal(info.HostConfig.CapDrop, []string{"ALL"}) {
			t.Errorf("%s ran as user %q, read-only root %v, capabilities dropped %v; want %s, true, ALL",
				p.c.Name, info.Config.User, info.HostConfig.ReadonlyRootfs, info.HostConfig.CapDrop, p.user)
		}
	}
}

// startPod starts a pod's container as the kubelet would, on the fleet's network, and waits for
// log. It refuses what it cannot do faithfully (init containers, volumes other than hostPath,
// Secret and projected Secrets).
func (f *fleet) startPod(r *chart.Rendered, spec corev1.PodSpec, name string, pod chart.Pod, log string) (*testcontainers.DockerContainer, corev1.Container) {
	t := f.t
	t.Helper()
	if len(spec.InitContainers) > 0 {
		t.Fatalf("%s: the pod has init containers, which are not run here", pod.Name)
	}
	var c corev1.Container
	for _, x := range spec.Containers {
		if x.Name == name {
			c = x
		}
	}
	if c.Name == "" {
		t.Fatalf("%s: no container %s", pod.Name, name)
	}
	env, err := r.Environment(c, pod, nil)
	if err != nil {
		t.Fatalf("%s: %v", pod.Name, err)
	}
	expand := func(ss []string) []string {
		out := make([]string, len(ss))
		for i, s := range ss {
			out[i] = chart.Expand(s, env)
		}
		return out
	}
	args := expand(c.Args)
	t.Logf("%s: %s %q", pod.Name, c.Image, args)

	var binds []string
	for _, m := range c.VolumeMounts {
		var v *corev1.Volume
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == m.Name {
				v = &spec.Volumes[i]
			}
		}
		if v == nil || m.SubPath != "" {
			t.Fatalf("%s: volume mount %+v: no such volume, or a subPath", pod.Name, m)
		}
		var src string
		switch {
		case v.HostPath != nil:
			src = v.HostPath.Path
		case v.Secret != nil || v.Projected != nil:
			src = secretVolume(t, r, spec, *v)
		default:
			t.Fatalf("%s: volume %s (%+v): only hostPath and Secret volumes are run here", pod.Name, m.Name, v)
		}
		bind := src + ":" + m.MountPath
		if m.ReadOnly {
			bind += ":ro"
		}
		binds = append(binds, bind)
	}

	// The security context: the container's over the pod's.
	psc, sc := spec.SecurityContext, c.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	uid, gid, nonRoot := psc.RunAsUser, psc.RunAsGroup, psc.RunAsNonRoot
	if sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc.RunAsGroup != nil {
		gid = sc.RunAsGroup
	}
	if sc.RunAsNonRoot != nil {
		nonRoot = sc.RunAsNonRoot
	}
	var user string
	if uid != nil {
		user = strconv.FormatInt(*uid, 10)
		if gid != nil {
			user += ":" + strconv.FormatInt(*gid, 10)
		}
	}
	if nonRoot != nil && *nonRoot && (uid == nil || *uid == 0) {
		t.Fatalf("%s: runAsNonRoot with user %v: the kubelet would refuse to start it", pod.Name, uid)
	}
	var exposed []string
	for _, p := range c.Ports {
		exposed = append(exposed, fmt.Sprintf("%d/%s", p.ContainerPort, strings.ToLower(string(p.Protocol))))
	}
	opts := []testcontainers.ContainerCustomizer{
		testcontainers.WithEnv(env),
		testcontainers.WithExposedPorts(exposed...),
		testcontainers.WithConfigModifier(func(cfg *mobycontainer.Config) {
			cfg.Hostname = pod.Name
			cfg.User = user
			if len(c.Command) > 0 {
				cfg.Entrypoint = expand(c.Command)
			}
		}),
		testcontainers.WithHostConfigModifier(func(hc *mobycontainer.HostConfig) {
			hc.Binds = append(hc.Binds, binds...)
			hc.ReadonlyRootfs = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
			hc.Privileged = sc.Privileged != nil && *sc.Privileged
			if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
				hc.SecurityOpt = append(hc.SecurityOpt, "no-new-privileges")
			}
			if caps := sc.Capabilities; caps != nil {
				for _, c := range caps.Drop {
					hc.CapDrop = append(hc.CapDrop, string(c))
				}
				for _, c := range caps.Add {
					hc.CapAdd = append(hc.CapAdd, string(c))
				}
			}
			if mem := c.Resources.Limits.Memory(); !mem.IsZero() {
				hc.Memory = mem.Value()
			}
		}),
	}
	return f.start(pod.Name, c.Image, nil, log, args, opts...), c
}

// secretVolume writes the files of a Secret or projected Secret volume into a directory, as
// the kubelet does: owned by root (group fsGroup, if the pod has one), each with its item's
// mode, else the volume's defaultMode, else 0644.
func secretVolume(t *testing.T, r *chart.Rendered, spec corev1.PodSpec, v corev1.Volume) string {
	t.Helper()
	type source struct {
		name  string
		items []corev1.KeyToPath
	}
	var sources []source
	mode := int32(0o644)
	if v.Secret != nil {
		sources = []source{{v.Secret.SecretName, v.Secret.Items}}
		if v.Secret.DefaultMode != nil {
			mode = *v.Secret.DefaultMode
		}
	} else {
		for _, p := range v.Projected.Sources {
			if p.Secret == nil {
				t.Fatalf("volume %s: only Secrets are projected here: %+v", v.Name, p)
			}
			sources = append(sources, source{p.Secret.Name, p.Secret.Items})
		}
		if v.Projected.DefaultMode != nil {
			mode = *v.Projected.DefaultMode
		}
	}
	gid := 0
	if spec.SecurityContext != nil && spec.SecurityContext.FSGroup != nil {
		gid = int(*spec.SecurityContext.FSGroup)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, src := range sources {
		s, err := chart.Get[corev1.Secret](r, src.name)
		if err != nil {
			t.Fatalf("volume %s: %v", v.Name, err)
		}
		items := src.items
		if len(items) == 0 {
			for k := range s.Data {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			data, ok := s.Data[it.Key]
			if !ok {
				t.Fatalf("volume %s: Secret %s has no key %s", v.Name, src.name, it.Key)
			}
			m := mode
			if it.Mode != nil {
				m = *it.Mode
			}
			file := filepath.Join(dir, it.Path)
			if err := os.WriteFile(file, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(file, 0, gid); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, os.FileMode(m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// checkProbes sends each of a container's probes to the port and path the chart names and
// wants 200 (the readiness probe within a few seconds: the worker is ready once it serves).
func checkProbes(t *testing.T, ctr *testcontainers.DockerContainer, c corev1.Container) {
	t.Helper()
	probes := map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe}
	for _, kind := range []string{"startup", "liveness", "readiness"} {
		p := probes[kind]
		if p == nil {
			if kind != "startup" {
				t.Errorf("%s: no %s probe", c.Name, kind)
			}
			continue
		}
		if p.HTTPGet == nil {
			t.Errorf("%s: %s probe %+v is not an HTTP GET", c.Name, kind, p)
			continue
		}
		port := p.HTTPGet.Port.IntValue()
		if p.HTTPGet.Port.Type == intstr.String {
			port = 0
			for _, cp := range c.Ports {
				if cp.Name == p.HTTPGet.Port.StrVal {
					port = int(cp.ContainerPort)
				}
			}
		}
		if port == 0 {
			t.Errorf("%s: %s probe on port %s, which the container does not name", c.Name, kind, p.HTTPGet.Port.String())
			continue
		}
		ep, err := ctr.PortEndpoint(context.Background(), fmt.Sprintf("%d/tcp", port), "http")
		if err != nil {
			t.Errorf("%s: %s probe: port %d: %v", c.Name, kind, port, err)
			continue
		}
		url := ep + p.HTTPGet.Path
		testutil.Eventually(t, 15*time.Second, func() error {
			if err := testutil.WantStatus(url, http.StatusOK); err != nil {
				return fmt.Errorf("%s probe: %w", kind, err)
			}
			return nil
		})
		t.Logf("%s: %s probe GET %s (container port %d): 200", c.Name, kind, p.HTTPGet.Path, port)
	}
}
