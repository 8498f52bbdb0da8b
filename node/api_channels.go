package node

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// GET /api/channels: a survey over controlChannel. The node that takes the
// request subscribes to a reply channel of its own, publishes a survey
// request with it, and merges the answers: each node (itself included)
// answers with the subscriber counts of its channels that match the
// pattern. It waits until every member of the cluster (api_control.go)
// answered, or surveyTimeout passed: then the answer lists the members
// that did not answer as missing.

const (
	// surveyTimeout bounds the wait for the answers of a survey.
	surveyTimeout = 2 * time.Second
	// maxSurveyChannels bounds the channels one node answers with.
	maxSurveyChannels = 10_000
	// maxPatternLen bounds a channel pattern.
	maxPatternLen = protocol.MaxChannelLen
)

// surveyRequest asks every node for its channels.
type surveyRequest struct {
	// Reply is the channel the answers go to.
	Reply string `json:"reply"`
	// Pattern filters the channels: * matches any run of bytes; empty
	// matches every channel.
	Pattern string `json:"pattern,omitempty"`
}

// surveyAnswer is one node's answer to a survey.
type surveyAnswer struct {
	Node      string         `json:"node"`
	Channels  map[string]int `json:"channels"`
	Truncated bool           `json:"truncated,omitempty"`
}

// answerSurvey publishes the node's answer to req.
func (n *Node) answerSurvey(ctx context.Context, req surveyRequest) {
	if !strings.HasPrefix(req.Reply, surveyReplyPrefix) {
		n.log.Warn("control channel: a survey with a reply channel that is not one", "reply", req.Reply)
		return
	}
	counts, truncated := n.hub.counts(req.Pattern, maxSurveyChannels)
	payload, _ := json.Marshal(surveyAnswer{Node: n.id, Channels: counts, Truncated: truncated})
	ctx, cancel := context.WithTimeout(ctx, surveyTimeout)
	defer cancel()
	if err := n.broker.Publish(ctx, req.Reply, pubsub.Message{Origin: n.id, Payload: payload}); err != nil {
		n.log.Debug("survey answer failed", "err", err)
	}
}

// counts returns the subscriber counts of the hub's channels that match
// pattern, at most max of them, and whether there were more.
func (h *hub) counts(pattern string, max int) (map[string]int, bool) {
	h.mu.Lock()
	chans := make([]*hubChannel, 0, len(h.channels))
	for name, hc := range h.channels {
		if glob(pattern, name) {
			chans = append(chans, hc)
		}
	}
	h.mu.Unlock()
	truncated := len(chans) > max
	if truncated {
		chans = chans[:max]
	}
	counts := make(map[string]int, len(chans))
	for _, hc := range chans {
		hc.mu.RLock()
		if k := len(hc.subs); k > 0 {
			counts[hc.name] = k
		}
		hc.mu.RUnlock()
	}
	return counts, truncated
}

// glob reports whether name matches pattern, in which * matches any run
// of bytes and every other byte itself; an empty pattern matches all.
func glob(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == name
	}
	if !strings.HasPrefix(name, parts[0]) {
		return false
	}
	name = name[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(name, p)
		if i < 0 {
			return false
		}
		name = name[i+len(p):]
	}
	return strings.HasSuffix(name, last)
}

// surveyReplyPrefix starts the reply channel of a survey.
const surveyReplyPrefix = protocol.ReservedPrefix + ":reply:"

// channels runs GET /api/channels[?pattern=p].
func (a *api) channels(ctx context.Context, r *http.Request) (any, *apiError) {
	n := a.n
	pattern := r.URL.Query().Get("pattern")
	if err := checkPattern(pattern); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var answers []surveyAnswer
	more := make(chan struct{}, 1)
	reply := surveyReplyPrefix + n.id + ":" + rand.Text()
	stop, err := n.broker.Subscribe(ctx, reply, func(m pubsub.Message) {
		var ans surveyAnswer
		if json.Unmarshal(m.Payload, &ans) != nil || ans.Node == "" {
			return
		}
		mu.Lock()
		answers = append(answers, ans)
		mu.Unlock()
		select {
		case more <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return nil, a.controlError("api channels failed", err)
	}
	defer stop()
	expected := n.cluster.expected(n.id, time.Now())
	if err := n.publishControl(ctx, controlMessage{controlExtra: controlExtra{Survey: &surveyRequest{Reply: reply, Pattern: pattern}}}); err != nil {
		return nil, a.controlError("api channels failed", err)
	}
	timeout := time.NewTimer(surveyTimeout)
	defer timeout.Stop()
	res := &protocol.ChannelsResult{Channels: map[string]protocol.ChannelInfo{}, Nodes: []string{}}
	seen := map[string]bool{}
	for waiting := true; waiting; {
		select {
		case <-more:
		case <-timeout.C:
			waiting = false
		case <-ctx.Done():
			waiting = false
		}
		mu.Lock()
		got := answers
		answers = nil
		mu.Unlock()
		for _, ans := range got {
			if seen[ans.Node] {
				continue
			}
			seen[ans.Node] = true
			res.Nodes = append(res.Nodes, ans.Node)
			res.Truncated = res.Truncated || ans.Truncated
			for ch, k := range ans.Channels {
				info := res.Channels[ch]
				info.Subscribers += k
				res.Channels[ch] = info
			}
		}
		if !slices.ContainsFunc(expected, func(id string) bool { return !seen[id] }) {
			break
		}
	}
	slices.Sort(res.Nodes)
	for _, id := range expected {
		if !seen[id] {
			res.Missing = append(res.Missing, id)
		}
	}
	return res, nil
}

// checkPattern reports a channel pattern that is not channel-name bytes
// and *, or too long.
func checkPattern(p string) *apiError {
	if len(p) > maxPatternLen {
		return newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, "pattern is %d bytes; at most %d", len(p), maxPatternLen)
	}
	for i := 0; i < len(p); i++ {
		if p[i] != '*' && protocol.ValidChannel(string(p[i])) != nil {
			return newAPIError(http.StatusBadRequest, protocol.CodeBadRequest,
				"pattern has %q at byte %d; allowed are * and the bytes of channel names, A-Z a-z 0-9 _ - : . @ / =", p[i], i)
		}
	}
	return nil
}

// controlError is the answer of a request the broker could not take.
func (a *api) controlError(msg string, err error) *apiError {
	a.n.log.Debug(msg, "err", err)
	return newAPIError(http.StatusServiceUnavailable, protocol.CodeUnavailable, "the broker is unavailable, try again later")
}
