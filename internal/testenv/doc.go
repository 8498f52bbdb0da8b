// Package testenv is the harness every package's tests share: free loopback
// ports, private redis-server instances (alone, or a Sentinel set-up of a
// master, a replica and three sentinels), built relay processes and the
// Python websockets client. A missing dependency fails the test with an
// install hint; it never skips.
package testenv
