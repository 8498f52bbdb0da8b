package testenv

// PID is the process ID of the relay, for tests that read its /proc
// entries (open file descriptors).
func (r *Relay) PID() int { return r.cmd.Process.Pid }
