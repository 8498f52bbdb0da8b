//go:build compose

package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// installHint tells what a machine without Docker needs; the compose test
// fails with it rather than skipping.
const installHint = "the compose end-to-end test needs a running Docker engine, docker-compose and debootstrap: " +
	"as root run internal/deploytest/prepare.sh (apt-get install -y docker.io docker-compose debootstrap; systemctl start docker)"

// dockerEnv is the environment of every docker and docker-compose command:
// Debian's client first on PATH (a newer client elsewhere on PATH fails
// without buildx once BuildKit is on) and the classic builder.
func dockerEnv() []string {
	env := []string{}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "DOCKER_BUILDKIT=") ||
			strings.HasPrefix(kv, "COMPOSE_DOCKER_CLI_BUILD=") || strings.HasPrefix(kv, "RELAY_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"PATH=/usr/bin:/usr/sbin:/bin:/sbin:"+os.Getenv("PATH"),
		"DOCKER_BUILDKIT=0",
		"COMPOSE_DOCKER_CLI_BUILD=0",
	)
}

// command runs name with args and returns its combined output; an error
// carries the output.
type command struct {
	dir   string
	env   []string
	stdin io.Reader
	// timeout bounds the command; 0 means 2 minutes.
	timeout time.Duration
}

func (c command) run(ctx context.Context, name string, args ...string) (string, error) {
	timeout := c.timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.dir
	cmd.Env = append(dockerEnv(), c.env...)
	cmd.Stdin = c.stdin
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s (after %v): %w\n%s", name, strings.Join(args, " "),
			time.Since(start).Round(time.Millisecond), err, tail(out.String(), 4000))
	}
	return out.String(), nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// docker runs Debian's docker client.
func docker(ctx context.Context, args ...string) (string, error) {
	return command{}.run(ctx, dockerBin(), args...)
}

func dockerBin() string {
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	return "docker"
}

// requireDocker fails the test with an install hint unless an engine
// answers and the tools are there.
func requireDocker(t *testing.T) {
	t.Helper()
	for _, tool := range []string{dockerBin(), "docker-compose", "debootstrap"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := os.Stat("/usr/sbin/" + tool); err != nil {
				t.Fatalf("%s not found: %s", tool, installHint)
			}
		}
	}
	out, err := command{timeout: 30 * time.Second}.run(t.Context(), dockerBin(), "version", "--format", "{{.Server.Version}}")
	if err != nil {
		t.Fatalf("no Docker engine answers: %v\n%s", err, installHint)
	}
	t.Logf("docker engine %s", strings.TrimSpace(out))
}

func imageExists(ctx context.Context, tag string) bool {
	_, err := docker(ctx, "image", "inspect", "--format", "{{.Id}}", tag)
	return err == nil
}
