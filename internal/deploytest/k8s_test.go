package deploytest

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// rendered holds the objects of one kustomization, decoded into their
// k8s.io/api types.
type rendered struct {
	deployments  []*appsv1.Deployment
	statefulSets []*appsv1.StatefulSet
	services     []*corev1.Service
	configMaps   []*corev1.ConfigMap
	secrets      []*corev1.Secret
	namespaces   []*corev1.Namespace
	pdbs         []*policyv1.PodDisruptionBudget
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	ingresses    []*networkingv1.Ingress
}

// render runs kustomize (the library behind `kubectl apply -k`) on dir and
// strict-decodes every object: an unknown or misspelt field, a duplicate
// key or a kind this test does not know fails.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var r rendered
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		gvk := res.GetGvk()
		key := gvk.ApiVersion() + "/" + gvk.Kind
		var obj any
		switch key {
		case "apps/v1/Deployment":
			o := new(appsv1.Deployment)
			r.deployments, obj = append(r.deployments, o), o
		case "apps/v1/StatefulSet":
			o := new(appsv1.StatefulSet)
			r.statefulSets, obj = append(r.statefulSets, o), o
		case "v1/Service":
			o := new(corev1.Service)
			r.services, obj = append(r.services, o), o
		case "v1/ConfigMap":
			o := new(corev1.ConfigMap)
			r.configMaps, obj = append(r.configMaps, o), o
		case "v1/Secret":
			o := new(corev1.Secret)
			r.secrets, obj = append(r.secrets, o), o
		case "v1/Namespace":
			o := new(corev1.Namespace)
			r.namespaces, obj = append(r.namespaces, o), o
		case "policy/v1/PodDisruptionBudget":
			o := new(policyv1.PodDisruptionBudget)
			r.pdbs, obj = append(r.pdbs, o), o
		case "autoscaling/v2/HorizontalPodAutoscaler":
			o := new(autoscalingv2.HorizontalPodAutoscaler)
			r.hpas, obj = append(r.hpas, o), o
		case "networking.k8s.io/v1/Ingress":
			o := new(networkingv1.Ingress)
			r.ingresses, obj = append(r.ingresses, o), o
		default:
			t.Fatalf("%s: kind %s has no strict check here: add it to render", dir, key)
		}
		if err := yaml.UnmarshalStrict(y, obj); err != nil {
			t.Fatalf("%s: %s %s does not decode strictly: %v\n%s", dir, key, res.GetName(), err, y)
		}
	}
	return &r
}

func k8sDir(t *testing.T, rel string) string {
	return filepath.Join(repoRoot(t), "k8s", filepath.FromSlash(rel))
}

// overlay describes what differs between the kustomizations.
type overlay struct {
	dir string
	// external names the Secrets the overlay expects to exist in the
	// cluster rather than in the rendered output.
	external []string
	// replicas is the Deployment's replica count; 0 means unset (the HPA
	// owns it).
	replicas  int32
	namespace string
	image     string
}

var overlays = []overlay{
	{dir: "base", replicas: 3, image: "ghcr.io/relay-pubsub/relay:latest"},
	{dir: "overlays/dev", replicas: 3, namespace: "relay-dev", image: "relay:local"},
	{dir: "overlays/production", replicas: 0, namespace: "relay", image: "ghcr.io/relay-pubsub/relay:v0.1.0",
		external: []string{"relay-secrets", "relay-redis"}},
}

func TestKustomize(t *testing.T) {
	allowed := append(slices.Clone(relayVars(t)), nonRelayVars...)
	for _, o := range overlays {
		t.Run(strings.ReplaceAll(o.dir, "/", "_"), func(t *testing.T) {
			r := render(t, k8sDir(t, o.dir))
			checkRelay(t, o, r, allowed)
		})
	}
}

func checkRelay(t *testing.T, o overlay, r *rendered, allowed []string) {
	if len(r.deployments) != 1 || r.deployments[0].Name != "relay" {
		t.Fatalf("want one Deployment named relay, got %d", len(r.deployments))
	}
	d := r.deployments[0]
	spec := &d.Spec.Template.Spec
	podLabels := labels.Set(d.Spec.Template.Labels)

	// Replicas, rollout.
	switch {
	case o.replicas == 0 && d.Spec.Replicas != nil:
		t.Errorf("replicas = %d, want unset (the HPA owns it)", *d.Spec.Replicas)
	case o.replicas != 0 && (d.Spec.Replicas == nil || *d.Spec.Replicas != o.replicas):
		t.Errorf("replicas = %v, want %d", d.Spec.Replicas, o.replicas)
	}
	if ru := d.Spec.Strategy.RollingUpdate; d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType ||
		ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("strategy = %+v, want RollingUpdate with maxUnavailable 0", d.Spec.Strategy)
	}
	if o.namespace != "" {
		if d.Namespace != o.namespace {
			t.Errorf("namespace = %q, want %q", d.Namespace, o.namespace)
		}
		if !slices.ContainsFunc(r.namespaces, func(n *corev1.Namespace) bool {
			return n.Name == o.namespace && n.Labels["pod-security.kubernetes.io/enforce"] == "restricted"
		}) {
			t.Errorf("no Namespace %s enforcing the restricted Pod Security Standard", o.namespace)
		}
	}

	// Selector and labels.
	sel, err := metav1LabelSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(podLabels) {
		t.Fatalf("Deployment selector %v does not select its pod labels %v (%v)", d.Spec.Selector, podLabels, err)
	}

	for _, tsc := range spec.TopologySpreadConstraints {
		if s, err := metav1LabelSelector(tsc.LabelSelector); err != nil || s.Empty() || !s.Matches(podLabels) {
			t.Errorf("topologySpreadConstraint %s: selector %v does not select the pods", tsc.TopologyKey, tsc.LabelSelector)
		}
	}

	// The container.
	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" {
		t.Fatalf("ports = %+v, want one named http", c.Ports)
	}
	port := c.Ports[0].ContainerPort

	env := envOf(t, o, r, c)
	for name := range env {
		if !slices.Contains(allowed, name) {
			t.Errorf("env %s is not a variable relay knows (known: %v)", name, allowed)
		}
	}
	if addr, ok := env["RELAY_ADDR"]; !ok || !strings.HasSuffix(addr, ":"+strconv.Itoa(int(port))) {
		t.Errorf("RELAY_ADDR = %q, want the container port %d", addr, port)
	}
	if _, ok := env["RELAY_REDIS_URL"]; !ok && o.dir != "base" {
		t.Errorf("RELAY_REDIS_URL not set: nodes would not share messages")
	}
	if id := envVar(c, "RELAY_NODE_ID"); id == nil || id.ValueFrom == nil || id.ValueFrom.FieldRef == nil ||
		id.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("RELAY_NODE_ID should come from the pod name")
	}
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		t.Errorf("enableServiceLinks must be false: service links inject RELAY_* variables for a Service named relay")
	}

	// Probes on the container's port.
	checkProbe(t, "readinessProbe", c.ReadinessProbe, "/readyz", c, port)
	checkProbe(t, "livenessProbe", c.LivenessProbe, "/healthz", c, port)
	if c.StartupProbe != nil {
		checkProbe(t, "startupProbe", c.StartupProbe, "/healthz", c, port)
	}

	// Drain fits in the grace period.
	drain := 20 // the binary's default
	if v, ok := env["RELAY_DRAIN_SECONDS"]; ok {
		if drain, err = strconv.Atoi(v); err != nil {
			t.Fatalf("RELAY_DRAIN_SECONDS = %q: %v", v, err)
		}
	}
	preStop := int64(0)
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		t.Errorf("no preStop hook")
	} else if s := c.Lifecycle.PreStop.Sleep; s != nil {
		preStop = s.Seconds
	} else if e := c.Lifecycle.PreStop.Exec; e == nil || len(e.Command) == 0 || e.Command[0] != "/relay" {
		t.Errorf("preStop = %+v: the image has no shell; use sleep or exec /relay", c.Lifecycle.PreStop)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= preStop+int64(drain) {
		t.Errorf("terminationGracePeriodSeconds = %v, want more than preStop %d s + RELAY_DRAIN_SECONDS %d s", g, preStop, drain)
	}

	// Security and resources, for every pod in the overlay.
	checkPod(t, "Deployment relay", spec, true)
	for _, s := range r.statefulSets {
		checkPod(t, "StatefulSet "+s.Name, &s.Spec.Template.Spec, false)
	}

	// Metrics.
	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" ||
		ann["prometheus.io/port"] != strconv.Itoa(int(port)) {
		t.Errorf("scrape annotations = %v, want scrape, /metrics on port %d", ann, port)
	}

	// Image.
	if c.Image != o.image {
		t.Errorf("image = %q, want %q", c.Image, o.image)
	}
	if o.dir == "overlays/production" && strings.HasSuffix(c.Image, ":latest") {
		t.Errorf("image = %q: pin a release in production", c.Image)
	}

	// Service.
	svc := find(t, r.services, "relay")
	ssel := labels.SelectorFromSet(svc.Spec.Selector)
	if len(svc.Spec.Selector) == 0 || !ssel.Matches(podLabels) {
		t.Errorf("Service selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
	}
	for _, p := range svc.Spec.Ports {
		if p.TargetPort != intstr.FromString("http") && p.TargetPort != intstr.FromInt32(port) {
			t.Errorf("Service port %s targets %s, not the container port", p.Name, p.TargetPort.String())
		}
	}

	// PodDisruptionBudget.
	pdb := find(t, r.pdbs, "relay")
	psel, err := metav1LabelSelector(pdb.Spec.Selector)
	if err != nil || psel.Empty() || !psel.Matches(podLabels) {
		t.Errorf("PDB selector %v does not select the pods %v", pdb.Spec.Selector, podLabels)
	}
	if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
		t.Errorf("PDB sets neither maxUnavailable nor minAvailable")
	}

	// HorizontalPodAutoscaler.
	hpa := find(t, r.hpas, "relay")
	if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name || ref.APIVersion != "apps/v1" {
		t.Errorf("HPA targets %+v, want Deployment %s", ref, d.Name)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 3 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
		t.Errorf("HPA replicas %v..%d, want at least 3", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}
	if mu := pdb.Spec.MaxUnavailable; mu != nil && hpa.Spec.MinReplicas != nil && mu.IntValue() >= int(*hpa.Spec.MinReplicas) {
		t.Errorf("PDB maxUnavailable %s lets every pod go at once", mu.String())
	}
	if b := hpa.Spec.Behavior; b == nil || b.ScaleDown == nil {
		t.Errorf("HPA has no scale-down behaviour: scale-in makes clients reconnect, slow it down")
	}

	// Ingress, where there is one, routes to the Service and keeps
	// WebSocket connections open.
	for _, ing := range r.ingresses {
		for _, rule := range ing.Spec.Rules {
			for _, p := range rule.HTTP.Paths {
				if b := p.Backend.Service; b == nil || b.Name != svc.Name ||
					(b.Port.Name != "" && !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == b.Port.Name })) {
					t.Errorf("Ingress %s path %s: backend %+v is not the relay Service", ing.Name, p.Path, p.Backend)
				}
				// What is for operators stays off the public entry point.
				for _, private := range []string{"/metrics", "/readyz/details"} {
					prefix := p.PathType == nil || *p.PathType != networkingv1.PathTypeExact
					if private == p.Path || prefix && (p.Path == "/" || strings.HasPrefix(private, strings.TrimSuffix(p.Path, "/")+"/")) {
						t.Errorf("Ingress %s path %s routes %s: keep it off the public entry point", ing.Name, p.Path, private)
					}
				}
			}
		}
		for _, a := range []string{"proxy-read-timeout", "proxy-send-timeout"} {
			v, err := strconv.Atoi(ing.Annotations["nginx.ingress.kubernetes.io/"+a])
			if err != nil || v < 3600 {
				t.Errorf("Ingress %s: %s = %q, want at least 3600 s for WebSocket connections", ing.Name, a, ing.Annotations["nginx.ingress.kubernetes.io/"+a])
			}
		}
	}
	if o.dir == "overlays/production" && len(r.ingresses) == 0 {
		t.Errorf("production has no Ingress example")
	}
	if o.dir == "overlays/production" && len(r.secrets) != 0 {
		t.Errorf("production renders Secrets %v: keep them out of git", r.secrets[0].Name)
	}

	// dev: the Redis the nodes point at is there.
	if o.dir == "overlays/dev" {
		rs := find(t, r.services, "redis")
		if want := fmt.Sprintf("redis://%s:%d/", rs.Name, rs.Spec.Ports[0].Port); !strings.HasPrefix(env["RELAY_REDIS_URL"], want) {
			t.Errorf("RELAY_REDIS_URL = %q, want %s…", env["RELAY_REDIS_URL"], want)
		}
		ss := find(t, r.statefulSets, "redis")
		if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 1 || !labels.SelectorFromSet(rs.Spec.Selector).Matches(labels.Set(ss.Spec.Template.Labels)) {
			t.Errorf("redis: want one replica selected by the redis Service")
		}
		if args := strings.Join(ss.Spec.Template.Spec.Containers[0].Args, " "); !strings.Contains(args, "--appendonly yes") {
			t.Errorf("redis args %q: want --appendonly yes", args)
		}
	}
}

// envOf returns the container's environment as the kubelet would build it:
// envFrom first, then env. Values from Secrets and field refs are "".
// References to objects that the overlay neither renders nor lists as
// external fail.
func envOf(t *testing.T, o overlay, r *rendered, c corev1.Container) map[string]string {
	t.Helper()
	env := map[string]string{}
	secret := func(name string) *corev1.Secret {
		if slices.Contains(o.external, name) {
			return nil
		}
		return find(t, r.secrets, name)
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			for k, v := range find(t, r.configMaps, ef.ConfigMapRef.Name).Data {
				env[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			if s := secret(ef.SecretRef.Name); s != nil {
				for k := range s.StringData {
					env[ef.Prefix+k] = ""
				}
				for k := range s.Data {
					env[ef.Prefix+k] = ""
				}
			}
		}
	}
	for _, e := range c.Env {
		env[e.Name] = e.Value
		if e.ValueFrom == nil {
			continue
		}
		switch {
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := find(t, r.configMaps, ref.Name)
			if v, ok := cm.Data[ref.Key]; ok {
				env[e.Name] = v
			} else {
				t.Errorf("env %s: ConfigMap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if s := secret(ref.Name); s != nil {
				_, inString := s.StringData[ref.Key]
				_, inData := s.Data[ref.Key]
				if !inString && !inData {
					t.Errorf("env %s: Secret %s has no key %s", e.Name, ref.Name, ref.Key)
				}
			}
		}
	}
	return env
}

func envVar(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func checkProbe(t *testing.T, what string, p *corev1.Probe, path string, c corev1.Container, port int32) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s: want an httpGet probe on %s", what, path)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("%s path = %q, want %q", what, p.HTTPGet.Path, path)
	}
	switch pp := p.HTTPGet.Port; pp.Type {
	case intstr.String:
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == pp.StrVal && cp.ContainerPort == port }) {
			t.Errorf("%s port %q is not the container port %d", what, pp.StrVal, port)
		}
	default:
		if pp.IntVal != port {
			t.Errorf("%s port = %d, want %d", what, pp.IntVal, port)
		}
	}
}

// checkPod checks the restricted Pod Security Standard, plus a read-only
// root filesystem and resource requests and limits on every container.
func checkPod(t *testing.T, what string, spec *corev1.PodSpec, wantUser65532 bool) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod securityContext.runAsNonRoot must be true", what)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: runAsUser 0", what)
	}
	if wantUser65532 && (psc == nil || psc.RunAsUser == nil || *psc.RunAsUser != 65532) {
		t.Errorf("%s: runAsUser should be the image's 65532", what)
	}
	podSeccomp := psc != nil && psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s: host namespaces", what)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken should be false (no API access needed)", what)
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s/%s: no securityContext", what, c.Name)
			continue
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s/%s: allowPrivilegeEscalation must be false", what, c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s/%s: readOnlyRootFilesystem must be true", what, c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s/%s: privileged", what, c.Name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s/%s: capabilities must drop ALL and add none", what, c.Name)
		}
		if !podSeccomp && (sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
			t.Errorf("%s/%s: seccompProfile must be RuntimeDefault", what, c.Name)
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := c.Resources.Requests[res]
			lim, okLim := c.Resources.Limits[res]
			if !okReq || !okLim || req.IsZero() || lim.Cmp(req) < 0 {
				t.Errorf("%s/%s: %s request %v and limit %v: want both, limit ≥ request", what, c.Name, res, req.String(), lim.String())
			}
		}
	}
}

type named interface{ GetName() string }

func find[T named](t *testing.T, objs []T, name string) T {
	t.Helper()
	for _, o := range objs {
		if o.GetName() == name {
			return o
		}
	}
	var zero T
	t.Fatalf("no %T named %s in the rendered output", zero, name)
	return zero
}
