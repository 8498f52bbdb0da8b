package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Namespace holds the rules of the channels of one namespace: the part of
// a channel name before its first ':'. Later options (history, presence)
// join these fields, each with a default that keeps today's behaviour.
type Namespace struct {
	// AnonymousSubscribe lets every connection subscribe, anonymous ones
	// included, without a channels claim. Default false.
	AnonymousSubscribe bool
	// ClientPublish lets clients publish (where their token allows); false
	// keeps publishing to backends, through the HTTP API. Default true.
	ClientPublish bool
	// HistorySet says the file gave history_size or history_ttl for the
	// namespace (or its default); otherwise the node's defaults,
	// RELAY_HISTORY_SIZE and RELAY_HISTORY_TTL, apply. History is on when
	// HistorySize (messages) and HistoryTTL (kept after the last publish)
	// are both positive.
	HistorySet  bool
	HistorySize int
	HistoryTTL  time.Duration
	// Presence keeps the list of the connections subscribed to each
	// channel (docs/PROTOCOL.md, "Presence"). Default false.
	Presence bool
	// JoinLeave sends join and leave pushes to the protocol-mode
	// subscribers of each channel; it needs Presence. Default false.
	JoinLeave bool
	// PresenceLeaveGrace is how long a user whose last connection left a
	// channel may come back without a leave and a join. Default
	// DefaultPresenceLeaveGrace.
	PresenceLeaveGrace time.Duration
}

// DefaultPresenceLeaveGrace is the presence_leave_grace of a namespace
// that sets none: long enough for a client closed by a draining node, or
// changing networks, to reconnect.
const DefaultPresenceLeaveGrace = 5 * time.Second

// defaultNamespace is the rule of channels without a namespace and of
// namespaces not listed, unless the file says otherwise.
var defaultNamespace = Namespace{ClientPublish: true, PresenceLeaveGrace: DefaultPresenceLeaveGrace}

// Namespaces are the namespace rules of a node. The zero value, and nil,
// apply the default rules to every channel. It is immutable.
type Namespaces struct {
	def    Namespace
	byName map[string]Namespace
	set    bool // def was read from a file
}

// For returns the rules of channel.
func (ns *Namespaces) For(channel string) Namespace {
	if ns == nil {
		return defaultNamespace
	}
	if name, _, ok := strings.Cut(channel, ":"); ok {
		if n, ok := ns.byName[name]; ok {
			return n
		}
	}
	if ns.set {
		return ns.def
	}
	return defaultNamespace
}

// AnyAnonymous reports whether anonymous connections may subscribe to
// some channel.
func (ns *Namespaces) AnyAnonymous() bool {
	if ns.For("").AnonymousSubscribe {
		return true
	}
	if ns != nil {
		for _, n := range ns.byName {
			if n.AnonymousSubscribe {
				return true
			}
		}
	}
	return false
}

// namespaceFile is the file's form of a Namespace: absent fields take the
// default's value.
type namespaceFile struct {
	AnonymousSubscribe *bool          `yaml:"anonymous_subscribe"`
	ClientPublish      *bool          `yaml:"client_publish"`
	HistorySize        *int           `yaml:"history_size"`
	HistoryTTL         *time.Duration `yaml:"history_ttl"`
	Presence           *bool          `yaml:"presence"`
	JoinLeave          *bool          `yaml:"join_leave"`
	PresenceLeaveGrace *time.Duration `yaml:"presence_leave_grace"`
}

func (f *namespaceFile) apply(base Namespace) Namespace {
	if f == nil {
		return base
	}
	if f.AnonymousSubscribe != nil {
		base.AnonymousSubscribe = *f.AnonymousSubscribe
	}
	if f.ClientPublish != nil {
		base.ClientPublish = *f.ClientPublish
	}
	if f.HistorySize != nil {
		base.HistorySet, base.HistorySize = true, *f.HistorySize
	}
	if f.HistoryTTL != nil {
		base.HistorySet, base.HistoryTTL = true, *f.HistoryTTL
	}
	if f.Presence != nil {
		base.Presence = *f.Presence
	}
	if f.JoinLeave != nil {
		base.JoinLeave = *f.JoinLeave
	}
	if f.PresenceLeaveGrace != nil {
		base.PresenceLeaveGrace = *f.PresenceLeaveGrace
	}
	return base
}

// ReadNamespaces reads the namespace rules of the YAML or JSON file at
// path (docs/AUTH.md has an example):
//
//	default:           # channels without a namespace, and namespaces not listed
//	  client_publish: true
//	namespaces:
//	  news:
//	    anonymous_subscribe: true
//	    client_publish: false
//	    history_size: 100   # messages; 0 = no history
//	    history_ttl: 10m
//	    presence: true      # who is subscribed, with join and leave pushes
//	    join_leave: true
//	    presence_leave_grace: 5s
//
// Unknown fields are errors, so that a typo does not open a namespace.
func ReadNamespaces(path string) (*Namespaces, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseNamespaces(b)
}

// ParseNamespaces parses namespace rules as ReadNamespaces reads them.
func ParseNamespaces(b []byte) (*Namespaces, error) {
	var f struct {
		Default    *namespaceFile            `yaml:"default"`
		Namespaces map[string]*namespaceFile `yaml:"namespaces"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	ns := &Namespaces{def: f.Default.apply(defaultNamespace), set: true, byName: make(map[string]Namespace)}
	if err := ns.def.check(); err != nil {
		return nil, fmt.Errorf("default: %w", err)
	}
	for name, n := range f.Namespaces {
		if name == "" || strings.ContainsAny(name, ":*") || strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r > '~' }) {
			return nil, fmt.Errorf("namespace %q: want a name without ':', '*' or spaces", name)
		}
		ns.byName[name] = n.apply(ns.def)
		if err := ns.byName[name].check(); err != nil {
			return nil, fmt.Errorf("namespace %q: %w", name, err)
		}
	}
	return ns, nil
}

func (n Namespace) check() error {
	if err := n.checkHistory(); err != nil {
		return err
	}
	if n.JoinLeave && !n.Presence {
		return errors.New("join_leave: true needs presence: true")
	}
	if n.PresenceLeaveGrace < 0 {
		return fmt.Errorf("presence_leave_grace %v: want 0 (leave at once) or more, such as 5s", n.PresenceLeaveGrace)
	}
	return nil
}

func (n Namespace) checkHistory() error {
	if n.HistorySize < 0 || n.HistoryTTL < 0 || (n.HistoryTTL > 0 && n.HistoryTTL < time.Millisecond) {
		return fmt.Errorf("history_size %d, history_ttl %v: want 0 (off) or more messages, and 0 (off) or at least 1ms such as 10m", n.HistorySize, n.HistoryTTL)
	}
	return nil
}
