package testenv

import (
	"os/exec"
	"testing"
)

const pythonHint = "Python's websockets module not found: install it with `apt-get install python3-websockets` (make test does this when run as root)"

// Python returns a python3 that can import websockets (Debian's
// python3-websockets), or fails t with an install hint.
func Python(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if path, err := exec.LookPath(p); err == nil {
			if exec.Command(path, "-c", "import websockets").Run() == nil {
				return path
			}
		}
	}
	t.Fatal(pythonHint)
	return ""
}
