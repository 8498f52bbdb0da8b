// Package deploytest checks Relay's deployment files: it renders the
// kustomize base and overlays, validates docker-compose.yml, and runs the
// compose stack end to end against local stand-in images.
package deploytest
