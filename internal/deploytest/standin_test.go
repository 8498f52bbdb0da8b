//go:build compose

package deploytest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// The machines that run this test reach no image registry, so the images
// the deployment files name are stood in for by images built here from
// Debian's packages and the host's Go toolchain, then tagged under the
// upstream names the Dockerfile and docker-compose.yml use (tagUpstream),
// so that the files run unchanged. They are cached in the engine by tag;
// bump an image's revision when its recipe changes.
const (
	debianRev     = "v1"
	golangRev     = "v4"
	runtimeRev    = "v2"
	redisRev      = "v2"
	nginxRev      = "v2"
	prometheusRev = "v1"
)

// standinLabel marks a stand-in image; its value names the recipe. An
// image under an upstream name without it is the real one and is used as
// it is.
const standinLabel = "org.relay-pubsub.standin"

// standins are the images that stand in for the upstream ones.
type standins struct {
	debian     string // base of the others (debootstrap minbase)
	golang     string // for GO_IMAGE (golang:1.26-bookworm)
	runtime    string // for RUNTIME_IMAGE (distroless static, nonroot)
	redis      string // for redis:7-alpine
	nginx      string // for nginx:1.27-alpine (with wget, as busybox has)
	prometheus string // for prom/prometheus (Debian's prometheus package)
}

// buildStandins builds the stand-in images that are missing.
func buildStandins(t *testing.T, ctx context.Context) standins {
	t.Helper()
	goVersion, goroot := hostGo(t)
	s := standins{
		debian:     "relay-standin/debian:bookworm-" + debianRev,
		golang:     "relay-standin/golang:" + strings.TrimPrefix(goVersion, "go") + "-" + golangRev,
		runtime:    "relay-standin/distroless-static:nonroot-" + runtimeRev,
		redis:      "relay-standin/redis:" + redisRev,
		nginx:      "relay-standin/nginx:" + nginxRev,
		prometheus: "relay-standin/prometheus:" + prometheusRev,
	}
	// The host compiles the stand-in Go image's std cache while
	// debootstrap runs.
	gocache := t.TempDir()
	stdDone := make(chan error, 1)
	if imageExists(ctx, s.golang) {
		stdDone <- nil
	} else {
		go func() {
			stdDone <- timedErr(t, "host std build cache", func() error { return hostStdCache(ctx, gocache) })
		}()
	}
	debErr := timedErr(t, "stand-in "+s.debian, func() error { return buildDebian(t, ctx, s.debian) })
	if err := errors.Join(debErr, <-stdDone); err != nil {
		t.Fatal(err)
	}

	var g errgroup.Group
	g.Go(func() error {
		return timedErr(t, "stand-in "+s.golang, func() error { return buildGolang(ctx, s, goVersion, goroot, gocache) })
	})
	g.Go(func() error {
		return timedErr(t, "stand-in "+s.runtime, func() error { return buildRuntime(ctx, s.runtime) })
	})
	g.Go(func() error {
		return timedErr(t, "stand-in "+s.redis, func() error { return buildRedis(ctx, s) })
	})
	g.Go(func() error {
		return timedErr(t, "stand-in "+s.nginx, func() error { return buildNginx(ctx, s) })
	})
	g.Go(func() error {
		return timedErr(t, "stand-in "+s.prometheus, func() error { return buildPrometheus(ctx, s) })
	})
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return s
}

// tagUpstream tags each stand-in under the upstream name the deployment
// files use for it (up maps upstream name to stand-in), unless the real
// image is there: then the real one runs.
func tagUpstream(t *testing.T, ctx context.Context, up map[string]string) {
	t.Helper()
	for upstream, standin := range up {
		out, err := docker(ctx, "image", "inspect", "--format", "{{json .Config.Labels}}", upstream)
		if err == nil {
			var labels map[string]string
			json.Unmarshal([]byte(out), &labels)
			if labels[standinLabel] == "" {
				t.Logf("%s: the upstream image is present; it runs instead of a stand-in", upstream)
				continue
			}
		}
		if _, err := docker(ctx, "tag", standin, upstream); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: stand-in %s", upstream, standin)
	}
}

var timedMu sync.Mutex

func timedErr(t *testing.T, what string, f func() error) error {
	start := time.Now()
	err := f()
	timedMu.Lock()
	defer timedMu.Unlock()
	t.Logf("%s: %v", what, time.Since(start).Round(100*time.Millisecond))
	return err
}

func hostGo(t *testing.T) (version, goroot string) {
	t.Helper()
	out, err := exec.Command(goTool(), "env", "GOVERSION", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("go env GOVERSION GOROOT = %q", out)
	}
	return f[0], f[1]
}

// aptMirror returns the Debian mirror the host's apt uses for bookworm.
func aptMirror() string {
	if b, err := os.ReadFile("/etc/apt/sources.list.d/debian.sources"); err == nil {
		for _, stanza := range strings.Split(string(b), "\n\n") {
			var uris string
			bookworm := false
			for _, line := range strings.Split(stanza, "\n") {
				k, v, _ := strings.Cut(line, ":")
				switch strings.TrimSpace(k) {
				case "URIs":
					uris = strings.TrimSpace(v)
				case "Suites":
					for _, s := range strings.Fields(v) {
						bookworm = bookworm || s == "bookworm"
					}
				}
			}
			if bookworm && uris != "" {
				return strings.Fields(uris)[0]
			}
		}
	}
	if f, err := os.Open("/etc/apt/sources.list"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 3 && fields[0] == "deb" {
				i := 1
				if strings.HasPrefix(fields[1], "[") {
					for i < len(fields) && !strings.HasSuffix(fields[i], "]") {
						i++
					}
					i++
				}
				if i+1 < len(fields) && fields[i+1] == "bookworm" {
					return fields[i]
				}
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// buildDebian makes a minimal Debian root with debootstrap and imports it.
func buildDebian(t *testing.T, ctx context.Context, tag string) error {
	if imageExists(ctx, tag) {
		return nil
	}
	dir, err := os.MkdirTemp("", "relay-standin-debian-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "root")
	mirror := aptMirror()
	if _, err := (command{timeout: 5 * time.Minute}).run(ctx, "debootstrap", "--variant=minbase", "bookworm", root, mirror); err != nil {
		return fmt.Errorf("debootstrap (mirror %s): %w", mirror, err)
	}
	// As in Debian's official images: no services start during apt-get
	// install, and no package caches.
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/policy-rc.d"), []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return err
	}
	os.RemoveAll(filepath.Join(root, "var/cache/apt/archives"))
	os.MkdirAll(filepath.Join(root, "var/cache/apt/archives/partial"), 0o755)

	pr, pw := io.Pipe()
	tarCmd := exec.CommandContext(ctx, "tar", "--numeric-owner", "-C", root, "-c", ".")
	tarCmd.Stdout = pw
	var tarErr bytes.Buffer
	tarCmd.Stderr = &tarErr
	if err := tarCmd.Start(); err != nil {
		return err
	}
	go func() { pw.CloseWithError(tarCmd.Wait()) }()
	_, err = command{stdin: pr}.run(ctx, dockerBin(), "import", "--change", `CMD ["bash"]`, "-", tag)
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("docker import: %w (tar: %s)", err, tarErr.String())
	}
	return nil
}

// tarStream writes a tar archive (a build context or a root to import)
// straight into a docker command's standard input.
type tarStream struct {
	tw *tar.Writer
}

// pipeTar runs docker with args, its standard input the archive that
// fill writes.
func pipeTar(ctx context.Context, timeout time.Duration, fill func(*tarStream) error, args ...string) error {
	pr, pw := io.Pipe()
	go func() {
		ts := &tarStream{tw: tar.NewWriter(pw)}
		err := fill(ts)
		if err == nil {
			err = ts.tw.Close()
		}
		pw.CloseWithError(err)
	}()
	_, err := command{stdin: pr, timeout: timeout}.run(ctx, dockerBin(), args...)
	pr.CloseWithError(errors.New("docker exited")) // unblock the writer
	return err
}

// dockerBuild builds tag from the context fill writes.
func dockerBuild(ctx context.Context, tag string, fill func(*tarStream) error) error {
	return pipeTar(ctx, 10*time.Minute, fill, "build", "-q", "-t", tag, "-")
}

func (c *tarStream) file(name string, mode int64, data []byte) error {
	if err := c.tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := c.tw.Write(data)
	return err
}

func (c *tarStream) dir(name string, mode int64, uid int) error {
	return c.tw.WriteHeader(&tar.Header{Name: name + "/", Mode: mode, Uid: uid, Gid: uid, ModTime: time.Unix(0, 0), Typeflag: tar.TypeDir})
}

// dirs adds each directory, mode 0755, owned by root.
func (c *tarStream) dirs(names ...string) error {
	for _, n := range names {
		if err := c.dir(n, 0o755, 0); err != nil {
			return err
		}
	}
	return nil
}

// tree adds the directory src under name, keeping symlinks; everything
// is owned by root.
func (c *tarStream) tree(name, src string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(filepath.Join(name, rel))
		if d.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := c.tw.WriteHeader(h); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(c.tw, f)
		return err
	})
}

// buildGolang: the Debian stand-in plus the host's Go toolchain and CA
// bundle (to reach the Go module proxy over TLS; installing Debian's
// ca-certificates afterwards would rebuild the bundle without it).
//
// Unlike the upstream image it carries a build cache of the standard
// library compiled as the Dockerfile compiles (static, -trimpath),
// compiled on the host (same toolchain; it hits when the host's GOROOT
// is /usr/local/go like the image's, and is merely unused otherwise): the classic
// builder has no cache mounts, and this saves about 70 s on every
// rebuild of the app image on a 2-core machine. Everything is one COPY:
// each layer the engine commits costs 10-25 s on fuse-overlayfs.
func buildGolang(ctx context.Context, s standins, goVersion, goroot, gocache string) error {
	if imageExists(ctx, s.golang) {
		return nil
	}
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		return fmt.Errorf("host CA bundle: %w", err)
	}
	dockerfile := fmt.Sprintf(`FROM %s
LABEL `+standinLabel+`=golang-`+golangRev+`
ENV GOLANG_VERSION=%s GOTOOLCHAIN=local GOPATH=/go \
    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /go
COPY rootfs/ /
`, s.debian, strings.TrimPrefix(goVersion, "go"))
	return dockerBuild(ctx, s.golang, func(c *tarStream) error {
		if err := c.file("Dockerfile", 0o644, []byte(dockerfile)); err != nil {
			return err
		}
		if err := c.dirs("rootfs", "rootfs/etc", "rootfs/etc/ssl", "rootfs/etc/ssl/certs", "rootfs/usr", "rootfs/usr/local"); err != nil {
			return err
		}
		if err := c.file("rootfs/etc/ssl/certs/ca-certificates.crt", 0o644, ca); err != nil {
			return err
		}
		if err := c.dir("rootfs/root", 0o700, 0); err != nil {
			return err
		}
		if err := c.dirs("rootfs/root/.cache"); err != nil {
			return err
		}
		if err := c.tree("rootfs/root/.cache/go-build", gocache); err != nil {
			return err
		}
		return c.tree("rootfs/usr/local/go", goroot)
	})
}

// hostStdCache compiles the standard library on the host into a fresh
// build cache in dir, with the flags of the Dockerfile's go build.
func hostStdCache(ctx context.Context, dir string) error {
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "std")
	cmd.Env = append(os.Environ(), "GOCACHE="+dir, "CGO_ENABLED=0", "GOFLAGS=", "GOENV=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build std: %v\n%s", err, out)
	}
	return nil
}

// buildRuntime imports a root like distroless static's: no shell, no
// package manager; users root and nonroot (65532), CA bundle, /tmp.
func buildRuntime(ctx context.Context, tag string) error {
	if imageExists(ctx, tag) {
		return nil
	}
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		return fmt.Errorf("host CA bundle: %w", err)
	}
	fill := func(c *tarStream) error {
		for _, err := range []error{
			c.dir("etc", 0o755, 0),
			c.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")),
			c.file("etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")),
			c.dir("etc/ssl", 0o755, 0),
			c.dir("etc/ssl/certs", 0o755, 0),
			c.file("etc/ssl/certs/ca-certificates.crt", 0o644, ca),
			c.dir("tmp", 0o1777, 0),
			c.dir("home", 0o755, 0),
			c.dir("home/nonroot", 0o700, 65532),
			c.dir("root", 0o700, 0),
		} {
			if err != nil {
				return err
			}
		}
		return nil
	}
	return pipeTar(ctx, 2*time.Minute, fill, "import",
		"--change", "LABEL "+standinLabel+"=distroless-static-"+runtimeRev,
		"--change", "USER 65532:65532",
		"--change", "WORKDIR /home/nonroot",
		"--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		"-", tag)
}

// redisEntrypoint does what the official image's does for our command
// line: no config file, so no protected mode, and listen on all addresses.
const redisEntrypoint = `#!/bin/sh
set -e
if [ "${1#-}" != "$1" ]; then
	set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
	shift
	exec redis-server "$@" --protected-mode no --bind 0.0.0.0
fi
exec "$@"
`

func buildRedis(ctx context.Context, s standins) error {
	if imageExists(ctx, s.redis) {
		return nil
	}
	dockerfile := fmt.Sprintf(`FROM %s
LABEL `+standinLabel+`=redis-`+redisRev+`
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
`, s.debian)
	return dockerBuild(ctx, s.redis, func(c *tarStream) error {
		if err := c.file("Dockerfile", 0o644, []byte(dockerfile)); err != nil {
			return err
		}
		return c.file("docker-entrypoint.sh", 0o755, []byte(redisEntrypoint))
	})
}

func buildNginx(ctx context.Context, s standins) error {
	if imageExists(ctx, s.nginx) {
		return nil
	}
	dockerfile := fmt.Sprintf(`FROM %s
LABEL `+standinLabel+`=nginx-`+nginxRev+`
RUN apt-get update && apt-get install -y --no-install-recommends nginx wget \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
`, s.debian)
	return dockerBuild(ctx, s.nginx, func(c *tarStream) error {
		return c.file("Dockerfile", 0o644, []byte(dockerfile))
	})
}

// buildPrometheus: Debian's prometheus package laid out as the upstream
// image is (binary /bin/prometheus, data in /prometheus, user nobody).
func buildPrometheus(ctx context.Context, s standins) error {
	if imageExists(ctx, s.prometheus) {
		return nil
	}
	dockerfile := fmt.Sprintf(`FROM %s
LABEL `+standinLabel+`=prometheus-`+prometheusRev+`
RUN apt-get update && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
`, s.debian)
	return dockerBuild(ctx, s.prometheus, func(c *tarStream) error {
		return c.file("Dockerfile", 0o644, []byte(dockerfile))
	})
}
