package node

import (
	"encoding/hex"
	"testing"

	"github.com/coder/websocket"
)

func TestFrameHeader(t *testing.T) {
	tests := []struct {
		typ  websocket.MessageType
		n    int
		want string
	}{
		{websocket.MessageText, 0, "8100"},
		{websocket.MessageText, 125, "817d"},
		{websocket.MessageBinary, 126, "827e007e"},
		{websocket.MessageBinary, 65535, "827effff"},
		{websocket.MessageText, 65536, "817f0000000000010000"},
	}
	for _, tt := range tests {
		if got := hex.EncodeToString(appendFrameHeader(nil, tt.typ, tt.n)); got != tt.want {
			t.Errorf("appendFrameHeader(%v, %d) = %s, want %s", tt.typ, tt.n, got, tt.want)
		}
	}
}
